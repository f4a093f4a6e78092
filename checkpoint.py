"""Checkpoint files and model folders, read without running any code from them.

A trained student has two forms (README, "Share and load a trained student"; docs/RELIABILITY.md):
- the training checkpoint `OUT/checkpoint.pt`, for `train.py --resume`: a torch zip file holding
  only tensors and plain Python values (format CHECKPOINT_FORMAT, the StudentConfig and the args
  as dicts, weights, optimizer and GradScaler states, random streams as tensors, the step as an
  int). It is read with `torch.load(weights_only=True)`, which rebuilds tensors and containers only;
- the model folder `OUT/student/`, for everyone else, in the layout of the Hugging Face hub:
  `config.json` (the StudentConfig's fields, the camera order, the dataset, the project version)
  and `model.safetensors` (the weights, BatchNorm kept). It loads from a folder or a hub id.
Defines
- `CheckpointError`: a file or folder that cannot be loaded; the one-line message names it and the fix.
- `save_checkpoint` / `read_checkpoint`: the training checkpoint, written atomically, read safely;
  a file whose pickle asks for more than tensors and plain values is refused, and `pickle_globals`
  (which reads the pickle's opcodes, never runs them) says whether it is hostile or an older checkpoint.
- `write_model_folder` / `read_model_folder`, `model_folder` (a folder or a hub id -> a local
  folder), `push_model_folder` (publish a folder on the hub with a model card).
- `hub_offline`, `HUB_ID`: the Hugging Face offline flag and the form of a hub id (the teacher's too).
Imports only cli.py of the project; model.py builds the Student from what these return.
"""
import io
import json
import os
import pickle
import pickletools
import re
import warnings
import zipfile

import torch

from cli import PROJECT_VERSION, InputError, atomic_path, write_text

# Layout of the training checkpoint. 2: it carries this "format" key and is checked to hold only
# tensors and plain values when written. Checkpoints without the key (format 1, written before
# it) have the same keys and values, so they are read as they are.
CHECKPOINT_FORMAT = 2
CHECKPOINT_KEYS = ("config", "model")  # what every checkpoint of a student holds (the rest: train.py's)
# Pickled objects an older or hand-edited checkpoint of this project may hold instead of plain
# values (an argparse namespace, a StudentConfig, numpy arrays). A file that asks only for these
# is named an older checkpoint; any other class or function makes it a hostile file.
OBJECT_GLOBALS = frozenset({"argparse.Namespace", "model.StudentConfig", "numpy.ndarray", "numpy.dtype",
                            "numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct",
                            "numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar"})
# Globals that torch.save itself writes and weights_only=True accepts: not worth naming in a message.
TORCH_GLOBAL_PREFIXES = ("torch.", "collections.OrderedDict", "_codecs.encode")
LEGACY_PICKLES = 4  # a pre-zip torch file is 4 pickles (magic number, protocol, system info, object)

# The model folder (Hugging Face layout). FOLDER_FORMAT is raised when config.json changes meaning.
CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"
STUDENT_FOLDER = "student"  # OUT/student: the model folder train.py writes beside OUT/checkpoint.pt
MODEL_TYPE = "fsmde-kd-student"  # config.json's "model_type": what tells our folder from another model's
FOLDER_FORMAT = 1
FOLDER_KEYS = ("model_type", "format", "cameras", "dataset", "project_version")  # beside the StudentConfig
# Licences of the datasets a student may be trained on (both CC BY-NC-SA 4.0: non-commercial); the
# weights carry them, so the model card of a published student states it. Hub licence identifiers.
DATASET_LICENCES = {"nuscenes": "cc-by-nc-sa-4.0", "ddad": "cc-by-nc-sa-4.0"}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # "owner/name"; else, not a folder = wrong path
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt")  # a name ending so is a missing file, never a hub id
FIX_PATH = "pass OUT/checkpoint.pt or OUT/student of a train.py run (python train.py --out OUT), or a hub id owner/name"


class CheckpointError(InputError):
    """A checkpoint or model folder that is missing, unreadable or refused; the message names it and the fix."""


def hub_offline():
    """True if HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set now or was when huggingface_hub loaded."""
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return bool(constants.HF_HUB_OFFLINE) or flag.strip().upper() in {"1", "ON", "YES", "TRUE"}


def check_plain(value, where="payload"):
    """Raise TypeError unless `value` is made of tensors, str, int, float, bool, None (exactly: a
    numpy float is a float but pickles as a numpy object), and dicts, lists and tuples of them: what
    torch.load(weights_only=True) reads back without running code."""
    if isinstance(value, dict):
        for key, item in value.items():
            check_plain(key, f"{where} key")
            check_plain(item, f"{where}[{key!r}]")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            check_plain(item, f"{where}[{i}]")
    elif not (value is None or isinstance(value, torch.Tensor) or type(value) in (str, int, float, bool)):
        raise TypeError(f"{where}: a {type(value).__name__} is not a plain value; store it as a dict, list or tensor")


def save_checkpoint(path, payload):
    """Write the training checkpoint `payload` (a dict of tensors and plain values, see check_plain)
    atomically to `path`, stamped with CHECKPOINT_FORMAT."""
    payload = {"format": CHECKPOINT_FORMAT, **payload}
    check_plain(payload)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def pickle_globals(stream, pickles=1):
    """The classes and functions ('module.name') the first `pickles` pickles of a binary stream ask
    for, in order. Reads the opcodes with pickletools and never runs them; stops at the first byte
    that is not a pickle (a legacy torch file's raw storages)."""
    found, pushed, memo = [], [], {}  # pushed: what each push op put on the stack, a str or None
    try:
        for _ in range(pickles):
            for op, arg, _ in pickletools.genops(stream):
                if op.name in ("GLOBAL", "INST"):  # protocols 0-3: "module name" inline
                    found.append(arg.replace(" ", "."))
                elif op.name == "STACK_GLOBAL":  # protocol 4: module and name are the two pushes before it
                    found.append(".".join(map(str, pushed[-2:])))
                if op.name == "MEMOIZE":  # memo[next index] = top of the stack; the stack is unchanged
                    memo[len(memo)] = pushed[-1] if pushed else None
                elif op.name in ("PUT", "BINPUT", "LONG_BINPUT"):
                    memo[arg] = pushed[-1] if pushed else None
                elif op.name in ("GET", "BINGET", "LONG_BINGET"):
                    pushed.append(memo.get(arg))
                else:
                    pushed.append(arg if isinstance(arg, str) and "UNICODE" in op.name else None)
    except (ValueError, EOFError):  # not (or no longer) a pickle
        pass
    return found


def checkpoint_globals(path):
    """pickle_globals of a checkpoint file: of data.pkl in a torch zip file, else of the file's first pickles."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]
            return pickle_globals(io.BytesIO(archive.read(names[0]))) if names else []
    with open(path, "rb") as f:
        return pickle_globals(f, LEGACY_PICKLES)


def refusal(path):
    """The one-line CheckpointError for a file whose pickle needs more than tensors and plain values,
    from the globals it asks for (read, not run): an older checkpoint if it asks only for
    OBJECT_GLOBALS, else a refused file that names what it would run."""
    asked = sorted({g for g in checkpoint_globals(path) if not g.startswith(TORCH_GLOBAL_PREFIXES)})
    named = ", ".join(asked[:4]) + (", ..." if len(asked) > 4 else "")
    if asked and set(asked) <= OBJECT_GLOBALS:
        return CheckpointError(f"{path}: an older checkpoint that stores Python objects ({named}), which loading "
                               "would have to run, so it was not loaded ; retrain it, or convert a file you trust "
                               "as docs/RELIABILITY.md (Checkpoint format) shows")
    what = f"asks to run {named}" if asked else "asks for more than tensors and plain values"
    return CheckpointError(f"{path}: refused, nothing in it was run: its pickle {what}, and a student checkpoint "
                           f"holds only tensors and plain values ; {FIX_PATH}")


def read_checkpoint(path):
    """The training checkpoint at `path` -> its dict, read with torch.load(weights_only=True) on the
    CPU: no code in the file runs. Raises CheckpointError (one line) for a missing file, a file that
    is not a torch zip file, a pickle that asks for objects (hostile, or an older checkpoint), a
    newer format, or a dict without a student."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such checkpoint ; {FIX_PATH}")
    if not zipfile.is_zipfile(path):  # train.py writes torch's zip format; nothing else is unpickled
        if any(not g.startswith(TORCH_GLOBAL_PREFIXES) for g in checkpoint_globals(path)):
            raise refusal(path)
        raise CheckpointError(f"{path}: not a checkpoint (not a torch zip file, as train.py writes) ; {FIX_PATH}")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols: the user gets one line
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise refusal(path) from None
    except Exception as err:  # a truncated or foreign file: one line, not a traceback
        raise CheckpointError(f"{path}: not a readable student checkpoint ({err.__class__.__name__}: "
                              f"{(str(err).splitlines() or [''])[0][:120]}) ; re-run train.py to write it") from None
    if not isinstance(ckpt, dict) or not all(k in ckpt for k in CHECKPOINT_KEYS):
        keys = ", ".join(map(str, list(ckpt)[:4])) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{path}: holds no student (found {keys or 'nothing'}, need "
                              f"{' and '.join(CHECKPOINT_KEYS)}) ; {FIX_PATH}")
    version = ckpt.get("format", 1)
    if not isinstance(version, int) or version > CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: checkpoint format {version!r}, newer than this code reads "
                              f"({CHECKPOINT_FORMAT}) ; update the project's code")
    return ckpt


def write_model_folder(folder, config, state):
    """Write the model folder: model.safetensors (`state`, name -> tensor) first, then config.json
    (`config`, a JSON-able dict), each atomically, so a folder with a config.json is complete."""
    from safetensors.torch import save_file

    with atomic_path(os.path.join(folder, WEIGHTS_NAME)) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, tmp, metadata={"format": "pt"})
    write_text(os.path.join(folder, CONFIG_NAME), json.dumps(config, indent=2) + "\n")


def folder_config(student_config, dataset, cameras):
    """config.json of a student: its StudentConfig as a dict, the camera names in ring order, the
    dataset it was trained on (None: not said) and the project version."""
    as_json = {k: list(v) if isinstance(v, tuple) else v for k, v in student_config.items()}
    return {"model_type": MODEL_TYPE, "format": FOLDER_FORMAT, **as_json, "cameras": list(cameras),
            "dataset": dataset, "project_version": PROJECT_VERSION}


def read_model_folder(folder):
    """A model folder -> (config dict of config.json, weights name -> tensor on the CPU). JSON and
    safetensors only: nothing in the folder runs. Raises CheckpointError (one line)."""
    from safetensors.torch import load_file

    config_path, weights_path = os.path.join(folder, CONFIG_NAME), os.path.join(folder, WEIGHTS_NAME)
    if not (os.path.isfile(config_path) and os.path.isfile(weights_path)):
        raise CheckpointError(f"{folder}: holds no {CONFIG_NAME} and {WEIGHTS_NAME}, so it is not a model folder "
                              f"; {FIX_PATH}")
    try:
        with open(config_path) as f:
            config = json.load(f)
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{config_path}: not readable JSON ({err.__class__.__name__}) ; write the folder "
                              "again with Student.save_pretrained") from None
    if not isinstance(config, dict) or config.get("model_type") != MODEL_TYPE:
        found = config.get("model_type") if isinstance(config, dict) else type(config).__name__
        raise CheckpointError(f"{config_path}: not the config of an FSMDE-KD student (model_type {found!r}) ; "
                              f"{FIX_PATH}")
    if not isinstance(config.get("format"), int) or config["format"] > FOLDER_FORMAT:
        raise CheckpointError(f"{config_path}: folder format {config.get('format')!r}, newer than this code reads "
                              f"({FOLDER_FORMAT}) ; update the project's code")
    try:
        state = load_file(weights_path)
    except Exception as err:  # safetensors raises its own SafetensorError, or OSError
        raise CheckpointError(f"{weights_path}: not readable safetensors ({err.__class__.__name__}: "
                              f"{(str(err).splitlines() or [''])[0][:120]}) ; write the folder again") from None
    return config, state


def model_folder(source, revision=None):
    """A model folder or a Hugging Face hub id ('owner/name', at `revision`, default main) -> the
    local folder that holds config.json and model.safetensors: the folder itself, or the hub's
    snapshot in the Hugging Face cache, downloaded unless HF_HUB_OFFLINE is set. Only those two
    files are fetched. Raises CheckpointError (one line) as the teacher's loading does."""
    if os.path.isdir(source):
        return source
    if os.path.exists(source):
        raise CheckpointError(f"{source}: a file, not a model folder ; pass the folder that holds {CONFIG_NAME} "
                              f"and {WEIGHTS_NAME}, or load a training checkpoint with model.load_checkpoint")
    if not HUB_ID.match(source) or source.endswith(CHECKPOINT_SUFFIXES):
        raise CheckpointError(f"{source}: no such checkpoint, model folder or hub id ; {FIX_PATH}")
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    offline = hub_offline()
    try:
        paths = [hf_hub_download(source, name, revision=revision, local_files_only=offline)
                 for name in (CONFIG_NAME, WEIGHTS_NAME)]
    except (OSError, ValueError, EntryNotFoundError) as err:  # hub errors are OSErrors; a bad id a ValueError
        if offline:
            reason = "HF_HUB_OFFLINE is set and it is not in the Hugging Face cache"
        elif isinstance(err, RepositoryNotFoundError):
            reason = "no such model on the Hugging Face hub (or it is private: log in with `hf auth login`)"
        elif isinstance(err, RevisionNotFoundError):
            reason = f"the hub model has no revision {revision!r}"
        elif isinstance(err, EntryNotFoundError):
            reason = f"the hub model holds no {CONFIG_NAME} and {WEIGHTS_NAME}, so it is not a student"
        else:
            reason = "it could not be downloaded (no internet?)"
        raise CheckpointError(f"{source}: not a folder here, and as a hub id: {reason} ; pass a local model "
                              f"folder (OUT/student), or fetch it into the cache on a connected machine with "
                              f"`hf download {source}`") from None
    return os.path.dirname(paths[0])


def model_card(config, repo_id):
    """The README.md of a published student: hub metadata (licence of its dataset, task) and how to load it."""
    licence = DATASET_LICENCES.get(config.get("dataset"))
    h, w = config["image_size"]
    header = (f"license: {licence}\n" if licence else "") + "pipeline_tag: depth-estimation\ntags:\n- fsmde-kd\n"
    note = (f"Trained on {config['dataset']}: the weights carry its licence, CC BY-NC-SA 4.0 (non-commercial).\n"
            if licence else "")
    return (f"---\n{header}---\n\n# FSMDE-KD student ({config['encoder']}, trained on {config.get('dataset')})\n\n"
            f"Metric depth in meters ({config['min_depth']:g}-{config['max_depth']:g} m) for each of six surround "
            f"cameras ({', '.join(config['cameras'])}), input {h} x {w}, from the FSMDE-KD reference code:\n\n"
            f"```python\nfrom model import Student\nstudent = Student.from_pretrained(\"{repo_id}\")\n```\n\n{note}")


def push_model_folder(folder, repo_id, private=None, token=None):
    """Publish a model folder on the Hugging Face hub as `repo_id` (created if needed): config.json,
    model.safetensors and a model card (README.md, `model_card`), in one commit -> the commit info."""
    from huggingface_hub import CommitOperationAdd, HfApi

    config, _ = read_model_folder(folder)  # never publish a folder that does not load
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=os.path.join(folder, name))
                  for name in (CONFIG_NAME, WEIGHTS_NAME)]
    operations.append(CommitOperationAdd(path_in_repo="README.md",
                                         path_or_fileobj=model_card(config, repo_id).encode()))
    return api.create_commit(repo_id, operations, commit_message=f"FSMDE-KD student, trained on {config['dataset']}")
