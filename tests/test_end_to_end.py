"""End to end on tiny synthetic data: train a few steps, checkpoint, evaluate, infer, resume;
and the one-line errors of bad input (missing checkpoint, corrupt image, empty folder)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import evaluate
import infer
import train
import viz
from cli import InputError
from rig import CAMERAS
from model import load_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--image-size", "64", "96", "--batch-size", "1", "--num-bins", "16", "--val-samples", "1", "--workers", "0"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 4-step training run of the full method (CKD + VRKD, emulated teacher)."""
    out = tmp_path_factory.mktemp("run")
    train.main(TINY + ["--steps", "4", "--val-every", "2", "--out", str(out)])
    return out


def test_training_writes_checkpoint_args_and_log(run):
    model, ckpt = load_checkpoint(str(run / "checkpoint.pt"))
    assert ckpt["step"] == 4 and ckpt["config"]["num_bins"] == 16
    assert tuple(model.cfg.image_size) == (64, 96)
    assert json.loads((run / "args.json").read_text())["steps"] == 4
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_lines = [x for x in lines if "loss" in x]
    assert [x["step"] for x in train_lines] == [1, 2, 3, 4]
    assert all(k in train_lines[0] for k in ("si", "bins", "kd", "cross", "vr"))  # each term logged
    assert sum("val" in x for x in lines) == 2
    assert not [f for f in os.listdir(run) if f.startswith(".tmp-")]  # atomic save left no temp file


def test_resume_continues_exactly(tmp_path, monkeypatch):
    """A 4-step run killed after its step-2 checkpoint, then resumed == 4 steps straight."""
    straight, resumed = tmp_path / "a", tmp_path / "b"
    args = TINY + ["--steps", "4", "--val-every", "2"]
    train.main(args + ["--out", str(straight)])

    schedule = train.one_cycle_lr

    def crash_at_step_2(step, total, max_lr):  # the job dies while starting step 3
        if step == 2:
            raise KeyboardInterrupt
        return schedule(step, total, max_lr)

    monkeypatch.setattr(train, "one_cycle_lr", crash_at_step_2)
    with pytest.raises(KeyboardInterrupt):
        train.main(args + ["--out", str(resumed)])
    assert torch.load(resumed / "checkpoint.pt", weights_only=True)["step"] == 2
    monkeypatch.setattr(train, "one_cycle_lr", schedule)
    train.main(args + ["--out", str(resumed), "--resume"])

    a = torch.load(straight / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(resumed / "checkpoint.pt", weights_only=True)["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)
    def losses_of(run):
        return [x["loss"] for x in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in x]
    assert len(losses_of(resumed)) == 4
    assert losses_of(straight) == pytest.approx(losses_of(resumed), rel=1e-6)


def test_resume_takes_the_run_flags_from_the_checkpoint(tmp_path, capsys):
    """Resuming without the original --image-size/--num-bins (or with others) continues the
    checkpoint's run; only flags such as --steps come from the command line."""
    out = str(tmp_path / "run")
    train.main(TINY + ["--steps", "1", "--seed", "3", "--out", out])
    capsys.readouterr()
    model = train.main(["--steps", "2", "--out", out, "--resume", "--workers", "0", "--val-samples", "1",
                        "--image-size", "96", "160", "--seed", "5"])
    assert "--image-size" in capsys.readouterr().err
    saved = torch.load(os.path.join(out, "checkpoint.pt"), weights_only=True)
    assert saved["step"] == 2 and model.cfg.image_size == (64, 96)
    assert saved["args"]["image_size"] == [64, 96] and saved["args"]["num_bins"] == 16
    assert saved["args"]["seed"] == 3 and saved["args"]["batch_size"] == 1 and saved["args"]["steps"] == 2


def test_resume_keeps_the_runs_steps_and_the_models_config(tmp_path):
    """Without --steps a resumed run keeps its own schedule (not the default 300); args saved
    before a model flag existed take it from the checkpoint's StudentConfig."""
    out = str(tmp_path / "run")
    train.main(TINY + ["--steps", "3", "--val-every", "1", "--upsample", "convex", "--out", out])
    path = os.path.join(out, "checkpoint.pt")
    ckpt = torch.load(path, weights_only=True)
    ckpt["step"] = 2  # as if it had stopped after step 2
    del ckpt["args"]["upsample"]  # as if written before --upsample existed
    torch.save(ckpt, path)
    model = train.main(["--out", out, "--resume", "--workers", "0"])
    saved = torch.load(path, weights_only=True)
    assert saved["step"] == 3 and saved["args"]["steps"] == 3
    assert model.cfg.upsample == "convex" and saved["args"]["upsample"] == "convex"


def test_evaluate_cli_writes_table_json_and_figures(run, tmp_path):
    out = tmp_path / "eval"
    results = evaluate.main(["--checkpoint", str(run / "checkpoint.pt"), "--max-samples", "2", "--baseline",
                             "--out", str(out), "--json", str(tmp_path / "r.json")])
    student = results["student"]
    assert set(student["all"]) == {"sparse", "dense"}
    assert set(student["per_camera"]) == set(CAMERAS)
    assert 0 < student["all"]["sparse"]["abs_rel"] < 10
    assert len(results["constant_baseline"]["medians"]) == 6
    assert "| all |" in (out / "metrics.md").read_text()
    assert json.loads((tmp_path / "r.json").read_text())["split"] == "test"
    figure = Image.open(out / "sample_0.png")  # 3 montages of 2x3 views, enlarged, a colour bar beside them
    assert figure.size[0] > 3 * 96 * viz.tile_scale(96) and figure.size[1] > 3 * 2 * 64 * viz.tile_scale(96)


def test_infer_writes_npy_png_and_montage_and_skips_bad_files(run, tmp_path):
    src = tmp_path / "imgs"
    src.mkdir()
    rng = np.random.default_rng(0)
    for cam in CAMERAS:  # nuScenes-style names -> a surround montage
        Image.fromarray(rng.integers(0, 255, (45, 80, 3), dtype=np.uint8)).save(src / f"n008__{cam}__1.jpg")
    (src / "broken.jpg").write_bytes(b"not a jpeg")
    (src / "notes.txt").write_text("hello")
    out = tmp_path / "out"
    assert infer.main([str(src), "--checkpoint", str(run / "checkpoint.pt"), "--out", str(out)]) == 6
    depth = np.load(out / f"n008__CAM_FRONT__1{infer.OUTPUT_SUFFIX}.npy")
    assert depth.shape == (45, 80) and depth.dtype == np.float32 and (depth > 0).all()
    assert Image.open(out / f"surround{infer.OUTPUT_SUFFIX}.png").size[0] > 3 * 80 * viz.tile_scale(80)
    assert Image.open(out / f"n008__CAM_FRONT__1{infer.OUTPUT_SUFFIX}.png").size[0] > 80 * viz.tile_scale(80)
    assert sorted(os.listdir(src)) == sorted([f"n008__{c}__1.jpg" for c in CAMERAS] + ["broken.jpg", "notes.txt"])
    # Writing into the input folder: its own outputs are skipped on the second run, inputs untouched.
    before = {f: (src / f).read_bytes() for f in os.listdir(src)}
    assert infer.main([str(src), "--checkpoint", str(run / "checkpoint.pt"), "--out", str(src)]) == 6
    assert infer.main([str(src), "--checkpoint", str(run / "checkpoint.pt"), "--out", str(src)]) == 6
    assert all((src / f).read_bytes() == b for f, b in before.items())


def test_infer_accepts_a_file_and_a_txt_list(run, tmp_path):
    image = tmp_path / "a.png"
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(image)
    (tmp_path / "list.txt").write_text("a.png\n")
    for source in (image, tmp_path / "list.txt"):
        assert infer.main([str(source), "--checkpoint", str(run / "checkpoint.pt"), "--out", str(tmp_path / "o")]) == 1


def test_bad_input_errors(run, tmp_path):
    with pytest.raises(InputError, match="missing.pt"):
        evaluate.main(["--checkpoint", str(tmp_path / "missing.pt")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no readable image"):
        infer.main([str(tmp_path / "empty"), "--checkpoint", str(run / "checkpoint.pt")])
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(InputError, match="no readable image"):
        infer.main([str(tmp_path / "bad.jpg"), "--checkpoint", str(run / "checkpoint.pt")])
    with pytest.raises(InputError, match="no such file"):
        infer.main([str(tmp_path / "nowhere"), "--checkpoint", str(run / "checkpoint.pt")])


@pytest.mark.parametrize("command", [["infer.py", "{tmp}/empty"], ["evaluate.py", "--checkpoint", "{tmp}/none.pt"],
                                     ["train.py", "--resume", "--out", "{tmp}/fresh"]])
def test_cli_prints_one_line_not_a_traceback(command, tmp_path):
    (tmp_path / "empty").mkdir()
    cmd = [sys.executable] + [c.format(tmp=tmp_path) for c in command]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().startswith("error: ") and len(result.stderr.strip().splitlines()) == 1


def test_infer_batches_give_the_same_depth_as_single_images(run, tmp_path):
    src = tmp_path / "imgs"
    src.mkdir()
    rng = np.random.default_rng(1)
    for i, size in enumerate([(45, 80), (60, 60), (32, 96)]):  # mixed sizes in one batch
        Image.fromarray(rng.integers(0, 255, size + (3,), dtype=np.uint8)).save(src / f"im{i}.png")
    ckpt = str(run / "checkpoint.pt")
    assert infer.main([str(src), "--checkpoint", ckpt, "--out", str(tmp_path / "b1"), "--batch-size", "1"]) == 3
    assert infer.main([str(src), "--checkpoint", ckpt, "--out", str(tmp_path / "b3"), "--batch-size", "3"]) == 3
    for i in range(3):
        one = np.load(tmp_path / "b1" / f"im{i}{infer.OUTPUT_SUFFIX}.npy")
        three = np.load(tmp_path / "b3" / f"im{i}{infer.OUTPUT_SUFFIX}.npy")
        np.testing.assert_allclose(one, three, rtol=1e-4)


@pytest.mark.parametrize("flags", [["--decoder-channels", "64", "32", "16", "8", "4"],
                                   ["--feature-level", "3"]])  # 5 stages; level 3 of the 3 default stages
def test_decoder_flags_are_checked_before_training(flags, capsys):
    with pytest.raises(SystemExit):
        train.get_args(flags)
    assert "--decoder-channels takes 1 to 4 widths" in capsys.readouterr().err
    assert train.get_args(["--decoder-channels", "64", "32", "16", "8", "--feature-level", "3"]).feature_level == 3
