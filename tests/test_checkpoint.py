"""Checkpoints and model folders (checkpoint.py, model.py): nothing in a file runs when it is loaded.

- a hostile checkpoint (its pickle writes a file when unpickled) given to evaluate.py, infer.py,
  export.py, train.py --resume and the ablation's reuse of a run: one line, exit status 1, and the
  file never appears; a bare hostile pickle too; the hostile file does write it when unpickled;
- an older checkpoint that stores Python objects, a newer format, files that are no checkpoint:
  their one-line messages, pinned; a checkpoint without the format key (written before it) loads;
- what train.py writes: a checkpoint of tensors and plain values (format 2), and OUT/student/
  (config.json + model.safetensors) that a fresh process loads with identical outputs, and that
  infer.py runs from a copy of the code alone;
- a hub id resolves from a Hugging Face cache the test builds (HF_HUB_OFFLINE=1); an unknown id
  and a foreign folder end in one line; push_to_hub commits the folder and a model card.
"""
import argparse
import dataclasses
import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

import checkpoint
import cli
import evaluate
import infer
import train
from checkpoint import CheckpointError
from model import Student, StudentConfig, load_checkpoint, load_student, save_checkpoint
from rig import CAMERAS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--image-size", "32", "64", "--batch-size", "1", "--num-bins", "16", "--val-samples", "1", "--workers", "0",
        "--lambda-ckd", "0", "--lambda-vr", "0"]  # no teacher: what is tested is the files
SMALL = StudentConfig(num_bins=8, decoder_channels=(16, 8, 8), bin_hidden=8, image_size=(32, 64))
FIX = "pass OUT/checkpoint.pt or OUT/student of a train.py run (python train.py --out OUT), or a hub id owner/name"


class WritesAFile:
    """Pickled, it becomes a call that writes `marker` when unpickled: the shape of a hostile checkpoint."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('ran')",)


class Evaluates:
    """Pickled, it becomes a call of eval: a second function from the same module as exec."""

    def __reduce__(self):
        return eval, ("1",)


def hostile_checkpoint(path, marker):
    """A file shaped like a student checkpoint whose weights, unpickled, write `marker`."""
    torch.save({"config": dataclasses.asdict(SMALL), "model": WritesAFile(marker), "step": 1,
                "args": {"data": "synthetic"}}, path)
    return str(path)


def small_student(seed=0):
    """SMALL with random weights and non-default BatchNorm statistics, so every saved tensor matters."""
    torch.manual_seed(seed)
    student = Student(SMALL)
    with torch.no_grad():
        for name, buf in student.state_dict().items():
            if "running_" in name:
                buf.add_(torch.rand(buf.shape))
    return student.eval()


def run_cli(args, cwd=ROOT, env=None):
    return subprocess.run([sys.executable] + args, cwd=cwd, capture_output=True, text=True, timeout=300, env=env)


def one_error_line(result):
    """The stderr of a script that refused its input: exactly one line `error: ...`, no traceback."""
    assert result.returncode == 1, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-2000:]
    return lines[0]


# --- 1. no code from files -------------------------------------------------------------------

def test_the_hostile_checkpoint_does_write_its_file_when_unpickled(tmp_path):
    """The fixture is really hostile: its pickle holds a call of exec, and that object, unpickled (in
    memory, never from the file), writes the marker."""
    marker = tmp_path / "ran"
    with zipfile.ZipFile(hostile_checkpoint(tmp_path / "evil.pt", marker)) as archive:
        data = archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))
    assert b"exec" in data and str(marker).encode() in data
    pickle.loads(pickle.dumps(WritesAFile(marker)))
    assert marker.read_text() == "ran"


@pytest.mark.parametrize("entry", ["evaluate", "infer", "export", "train --resume", "ablation"])
def test_every_entry_point_refuses_a_hostile_checkpoint_in_one_line(entry, tmp_path):
    marker = tmp_path / "ran"
    run = tmp_path / "run"
    if entry == "ablation":  # the run folder of (baseline, seed 0) under --out, as if a run were there
        run = tmp_path / "ablation" / "baseline_seed0"
    run.mkdir(parents=True)
    path = hostile_checkpoint(run / "checkpoint.pt", marker)
    Image.fromarray(np.zeros((32, 64, 3), np.uint8)).save(tmp_path / "image.png")
    args = {"evaluate": ["evaluate.py", "--checkpoint", path],
            "infer": ["infer.py", str(tmp_path / "image.png"), "--checkpoint", path, "--out", str(tmp_path / "o")],
            "export": ["export.py", "--checkpoint", path, "--out", str(tmp_path / "s.onnx")],
            "train --resume": ["train.py", "--resume", "--out", str(run)],
            "ablation": ["benchmark.py", "ablation", "--settings", "baseline", "--seeds", "0", "--steps", "1",
                         "--out", str(tmp_path / "ablation"), "--render-cache", "none", "--no-figure"]}[entry]
    line = one_error_line(run_cli(args))
    assert line == (f"error: {path}: refused, nothing in it was run: its pickle asks to run __builtin__.exec, and a "
                    f"student checkpoint holds only tensors and plain values ; {FIX}")
    assert not marker.exists()
    assert not (tmp_path / "s.onnx").exists() and not (tmp_path / "o").exists()


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_a_bare_hostile_pickle_is_refused_and_named(tmp_path, protocol):
    """Not a torch file at all: never unpickled; the globals it asks for are read from its opcodes
    (protocol 2: GLOBAL; 4 and 5: STACK_GLOBAL with memoized strings)."""
    marker, path = tmp_path / "ran", str(tmp_path / "evil.pt")
    with open(path, "wb") as f:
        pickle.dump({"config": WritesAFile(marker), "model": [WritesAFile(marker), Evaluates()]}, f, protocol=protocol)
    with open(path, "rb") as f:
        asked = checkpoint.pickle_globals(f)
    module = "__builtin__" if protocol < 3 else "builtins"
    assert asked == [f"{module}.exec", f"{module}.eval"]  # each function once, then from the memo
    with pytest.raises(CheckpointError) as err:
        load_student(path)
    assert str(err.value) == (f"{path}: refused, nothing in it was run: its pickle asks to run {module}.eval, "
                              f"{module}.exec, and a student checkpoint holds only tensors and plain values ; {FIX}")
    assert not marker.exists()


def test_an_older_checkpoint_that_stores_objects_gets_its_message(tmp_path):
    """A checkpoint of this project's keys whose args are an argparse namespace and whose config is a
    StudentConfig object (what a checkpoint pickling them would hold): not loaded, and the fix is named."""
    path = str(tmp_path / "old.pt")
    torch.save({"config": SMALL, "model": Student(SMALL).state_dict(), "step": 3,
                "args": argparse.Namespace(data="synthetic", steps=3)}, path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert str(err.value) == (f"{path}: an older checkpoint that stores Python objects (argparse.Namespace, "
                              "model.StudentConfig), which loading would have to run, so it was not loaded ; retrain "
                              "it, or convert a file you trust as docs/RELIABILITY.md (Checkpoint format) shows")
    with pytest.raises(SystemExit) as exit_:  # what the scripts print: the same line
        cli.run_cli(lambda: evaluate.main(["--checkpoint", path]))
    assert exit_.value.code == f"error: {err.value}"


def test_a_checkpoint_without_the_format_key_still_loads(tmp_path):
    """Format 1 (before the key): the same plain values, so it loads as it is, the CPU random
    stream as a bare tensor included."""
    student, path = small_student(), str(tmp_path / "v1.pt")
    torch.save({"config": dataclasses.asdict(SMALL), "model": student.state_dict(), "step": 5,
                "args": {"data": "synthetic"}, "rng": torch.get_rng_state()}, path)
    loaded, ckpt = load_checkpoint(path)
    assert ckpt["step"] == 5 and "format" not in ckpt and loaded.cfg == SMALL
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in student.state_dict().items())


@pytest.mark.parametrize("kind", ["newer", "text", "legacy torch", "no student", "safetensors"])
def test_files_that_are_not_a_checkpoint_end_in_one_line(tmp_path, kind):
    path = str(tmp_path / "file.pt")
    if kind == "newer":
        torch.save({"format": 3, "config": {}, "model": {}}, path)
    elif kind == "text":
        open(path, "w").write("hello\n")
    elif kind == "legacy torch":  # torch's pre-1.6 format: train.py never wrote it, and it is never unpickled
        torch.save({"config": {}, "model": {}}, path, _use_new_zipfile_serialization=False)
    elif kind == "no student":
        torch.save({"weights": torch.zeros(3)}, path)
    else:
        small_student().save_pretrained(tmp_path / "folder")
        shutil.copy(tmp_path / "folder" / "model.safetensors", path)
    with pytest.raises(CheckpointError) as err:
        load_student(path)
    expected = {"newer": f"{path}: checkpoint format 3, newer than this code reads (2) ; update the project's code",
                "text": f"{path}: not a checkpoint (not a torch zip file, as train.py writes) ; {FIX}",
                "legacy torch": f"{path}: not a checkpoint (not a torch zip file, as train.py writes) ; {FIX}",
                "no student": f"{path}: holds no student (found weights, need config and model) ; {FIX}",
                "safetensors": f"{path}: not a checkpoint (not a torch zip file, as train.py writes) ; {FIX}"}
    assert str(err.value) == expected[kind]


def test_save_checkpoint_refuses_objects_and_stamps_the_format(tmp_path):
    path = str(tmp_path / "c.pt")
    with pytest.raises(TypeError, match=r"payload\['args'\]: a Namespace is not a plain value"):
        save_checkpoint(path, {"config": {}, "model": {}, "args": argparse.Namespace(a=1)})
    with pytest.raises(TypeError, match=r"payload\['args'\]\['lr'\]: a float64 is not a plain value"):
        save_checkpoint(path, {"config": {}, "model": {}, "args": {"lr": np.float64(0.1)}})  # pickles as numpy's
    assert not os.path.exists(path)
    save_checkpoint(path, {"config": dataclasses.asdict(SMALL), "model": Student(SMALL).state_dict()})
    assert checkpoint.read_checkpoint(path)["format"] == checkpoint.CHECKPOINT_FORMAT == 2


# --- 2. the student as a model folder ------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 1-step training run: OUT/checkpoint.pt and OUT/student/."""
    out = tmp_path_factory.mktemp("run")
    train.main(TINY + ["--steps", "1", "--out", str(out)])
    return out


def test_training_writes_a_plain_checkpoint_and_the_model_folder(trained):
    ckpt = torch.load(trained / "checkpoint.pt", weights_only=True)
    checkpoint.check_plain(ckpt)  # tensors and plain values only
    assert ckpt["format"] == 2 and ckpt["step"] == 1 and isinstance(ckpt["args"], dict)
    assert set(ckpt["rng"]) == {"cpu", "cuda"} and isinstance(ckpt["rng"]["cpu"], torch.Tensor)
    assert sorted(os.listdir(trained / "student")) == ["config.json", "model.safetensors"]
    config = json.loads((trained / "student" / "config.json").read_text())
    assert config == {"model_type": "fsmde-kd-student", "format": 1, "encoder": "resnet18", "num_bins": 16,
                      "min_depth": 0.1, "max_depth": 80.0, "decoder_channels": [128, 64, 32], "feature_level": 1,
                      "bin_hidden": 256, "logit_scale": 8.0, "shared_bins": False, "upsample": "bilinear",
                      "image_size": [32, 64], "cameras": list(CAMERAS), "dataset": "synthetic",
                      "project_version": "0.1.0"}
    from safetensors.torch import load_file

    weights = load_file(trained / "student" / "model.safetensors")
    assert weights.keys() == ckpt["model"].keys()  # BatchNorm kept: running statistics and counters included
    assert any(k.endswith("running_var") for k in weights)
    assert all(torch.equal(weights[k], v) for k, v in ckpt["model"].items())


FRESH_PROCESS = """
import sys, torch
from model import Student
student = Student.from_pretrained(sys.argv[1])
assert not student.training
with torch.no_grad():
    torch.save(student(torch.load(sys.argv[2], weights_only=True))["depth"], sys.argv[3])
"""


def test_a_trained_student_round_trips_through_the_folder_in_a_fresh_process(trained, tmp_path):
    model, _ = load_checkpoint(str(trained / "checkpoint.pt"))
    images = torch.rand(1, 6, 3, 32, 64, generator=torch.Generator().manual_seed(0))
    torch.save(images, tmp_path / "images.pt")
    result = run_cli(["-c", FRESH_PROCESS, str(trained / "student"), str(tmp_path / "images.pt"),
                      str(tmp_path / "depth.pt")])
    assert result.returncode == 0, result.stderr[-2000:]
    with torch.no_grad():
        assert torch.equal(torch.load(tmp_path / "depth.pt", weights_only=True), model(images)["depth"])


def test_infer_runs_from_the_folder_in_a_copy_of_the_code_alone(trained, tmp_path):
    """`infer.py --checkpoint OUT/student img_dir/` in a folder holding only the project's .py files
    (no outputs/, no training state): the same depth as from the training checkpoint."""
    clone = tmp_path / "clone"
    clone.mkdir()
    for name in os.listdir(ROOT):
        if name.endswith(".py"):
            shutil.copy(os.path.join(ROOT, name), clone / name)
    shutil.copytree(trained / "student", clone / "student")
    images = tmp_path / "img_dir"
    images.mkdir()
    rng = np.random.default_rng(0)
    for cam in CAMERAS[:2]:
        Image.fromarray(rng.integers(0, 255, (45, 80, 3), dtype=np.uint8)).save(images / f"{cam}.png")
    result = run_cli(["infer.py", "--checkpoint", "student", str(images), "--out", str(tmp_path / "a"),
                      "--device", "cpu"], cwd=clone)
    assert result.returncode == 0, result.stderr[-2000:]
    assert infer.main(["--checkpoint", str(trained / "checkpoint.pt"), str(images), "--out", str(tmp_path / "b"),
                       "--device", "cpu"]) == 2
    for cam in CAMERAS[:2]:
        a, b = (np.load(tmp_path / d / f"{cam}_depth.npy") for d in "ab")
        assert a.shape == (45, 80)
        np.testing.assert_array_equal(a, b)


def hub_cache(root, repo_id, folder, revision="0123456789abcdef0123456789abcdef01234567"):
    """A Hugging Face hub cache under `root` holding `folder` as model `repo_id` at `revision`, in the
    layout huggingface_hub writes: blobs/<sha256>, snapshots/<rev>/<file> -> ../../blobs/<sha256>, refs/main."""
    repo = root / f"models--{repo_id.replace('/', '--')}"
    (repo / "blobs").mkdir(parents=True)
    (repo / "snapshots" / revision).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    for name in os.listdir(folder):
        data = (folder / name).read_bytes()
        blob = hashlib.sha256(data).hexdigest()
        (repo / "blobs" / blob).write_bytes(data)
        os.symlink(os.path.join("..", "..", "blobs", blob), repo / "snapshots" / revision / name)


def test_a_hub_id_resolves_from_the_local_cache_offline(tmp_path):
    folder = tmp_path / "student"
    small_student(seed=3).save_pretrained(folder, dataset="synthetic")
    hub_cache(tmp_path / "hf" / "hub", "fsmde/tiny-student", folder)
    image = tmp_path / "image.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(image)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
           "HF_HUB_CACHE": str(tmp_path / "hf" / "hub")}
    result = run_cli(["infer.py", str(image), "--checkpoint", "fsmde/tiny-student", "--out", str(tmp_path / "hub"),
                      "--device", "cpu"], env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    expected = Student.from_pretrained(str(folder)).for_inference().infer_image(np.asarray(Image.open(image)))
    np.testing.assert_allclose(np.load(tmp_path / "hub" / "image_depth.npy"), expected, rtol=1e-6, atol=0)


@pytest.fixture
def offline_hub(monkeypatch, tmp_path):
    """HF_HUB_OFFLINE and an empty Hugging Face cache (huggingface_hub read the env at import)."""
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))


def test_unknown_ids_and_foreign_folders_end_in_one_line(offline_hub, tmp_path, tiny_folder):
    with pytest.raises(CheckpointError) as err:
        load_student("nobody/no-such-student")
    assert str(err.value) == ("nobody/no-such-student: not a folder here, and as a hub id: HF_HUB_OFFLINE is set and "
                              "it is not in the Hugging Face cache ; pass a local model folder (OUT/student), or "
                              "fetch it into the cache on a connected machine with "
                              "`hf download nobody/no-such-student`")
    missing = str(tmp_path / "run" / "checkpoint.pt")
    with pytest.raises(CheckpointError) as err:
        load_student(missing)
    assert str(err.value) == f"{missing}: no such checkpoint, model folder or hub id ; {FIX}"
    with pytest.raises(CheckpointError) as err:  # a run folder, not its student/
        load_student(str(tmp_path))
    assert str(err.value) == (f"{tmp_path}: holds no config.json and model.safetensors, so it is not a model folder "
                              f"; {FIX}")
    with pytest.raises(CheckpointError) as err:  # Depth Anything's folder: a config.json and safetensors, not ours
        load_student(str(tiny_folder))
    assert str(err.value) == (f"{tiny_folder / 'config.json'}: not the config of an FSMDE-KD student (model_type "
                              f"'depth_anything') ; {FIX}")


def test_save_and_load_pretrained_keep_every_tensor_and_the_config(tmp_path):
    student = small_student(seed=5)
    student.save_pretrained(tmp_path / "s", dataset="ddad", cameras=("A", "B"))
    loaded, trained_args = load_student(str(tmp_path / "s"))
    assert loaded.cfg == SMALL and not loaded.training and trained_args == {"data": "ddad"}
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in student.state_dict().items())
    config = json.loads((tmp_path / "s" / "config.json").read_text())
    assert config["cameras"] == ["A", "B"] and config["dataset"] == "ddad"
    with pytest.raises(ValueError, match="inference form"):
        student.for_inference().save_pretrained(tmp_path / "fast")
    config["format"] = 2  # a folder from a newer version
    (tmp_path / "s" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"folder format 2, newer than this code reads \(1\)"):
        Student.from_pretrained(str(tmp_path / "s"))


def test_push_to_hub_commits_the_folder_and_a_model_card(monkeypatch):
    import huggingface_hub

    calls = {}

    class FakeApi:  # records what would go to the hub
        def __init__(self, token=None):
            calls["token"] = token

        def create_repo(self, repo_id, private=None, exist_ok=False):
            calls["repo"] = (repo_id, private, exist_ok)

        def create_commit(self, repo_id, operations, commit_message):
            calls["files"] = {op.path_in_repo: op.path_or_fileobj for op in operations}
            calls["config"] = json.loads(open(calls["files"]["config.json"]).read())
            return "commit"

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    assert small_student().push_to_hub("me/student", dataset="nuscenes", private=True, token="t") == "commit"
    assert calls["repo"] == ("me/student", True, True) and calls["token"] == "t"
    assert sorted(calls["files"]) == ["README.md", "config.json", "model.safetensors"]
    assert calls["config"]["dataset"] == "nuscenes"
    card = calls["files"]["README.md"].decode()
    assert card.startswith("---\nlicense: cc-by-nc-sa-4.0\npipeline_tag: depth-estimation\n")
    assert 'Student.from_pretrained("me/student")' in card and "CC BY-NC-SA 4.0 (non-commercial)" in card
