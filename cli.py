"""Plumbing shared by every script: one-line CLI errors and atomic file writes.

Defines
- `InputError`: bad user input (a path, a file, a name); its message names the file and the fix.
- `DatasetError`: an InputError raised by a dataset loader (nuScenes, DDAD) it cannot read as asked.
- `run_cli`: runs a script's `main` so that an InputError ends in one line, never a traceback.
- `atomic_path`: write to a temporary file beside the target, then rename it onto the target.
- `PROJECT_VERSION`: the version of this code, stamped into exported files (export.py).
Imports nothing of the project, so every file may import it.
"""
import contextlib
import os
import uuid

# The version of the project, stamped into every exported ONNX file (export.py); raise it when the
# exported graph or its metadata change meaning.
PROJECT_VERSION = "0.1.0"


class InputError(RuntimeError):
    """Bad user input (a path, a file, a name). The scripts print its one-line message,
    `error: <path>: <what> ; <fix>`, instead of a traceback."""


class DatasetError(InputError):
    """A dataset that cannot be read as asked; the one-line message names the path and the fix."""


def run_cli(main):
    """Run a script's `main`; bad input ends in one line that names the file and the fix
    (`error: ...`, exit status 1), never in a traceback."""
    try:
        main()
    except InputError as err:
        raise SystemExit(f"error: {err}") from None


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; on success rename it onto `path` (os.replace is
    atomic), on failure delete it. An interrupted write never leaves a half-written file.

    The temporary file is created with mode 0o666 through os.open, so the process umask applies
    as it would to open(); the umask itself is never read or changed (that would race between
    threads). Its name keeps the extension of `path` (np.savez and friends append theirs).
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".tmp-{uuid.uuid4().hex}{os.path.splitext(path)[1]}")
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text(path, text):
    """Write `text` to `path` atomically (tables, JSON, args)."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write(text)
