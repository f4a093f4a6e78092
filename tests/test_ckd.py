"""The teacher cache and the CKD/VRKD training terms: `teacher.py --cache` followed by training
with the cache gives the same losses as running the teacher, within fp16 tolerance."""
import os

import pytest
import torch

import losses
import teacher
import train
from model import Student, StudentConfig
from synthetic import SyntheticSurround

CACHE_SIZE = ["--image-size", "64", "96"]
SIZE = CACHE_SIZE + ["--num-bins", "16"]


def test_cached_targets_give_the_same_losses(tmp_path):
    teacher.main(["--cache", "--num-samples", "2", "--cache-root", str(tmp_path)] + CACHE_SIZE)
    (folder,) = [tmp_path / d for d in os.listdir(tmp_path)]
    assert "emulated" in folder.name and "64x96" in folder.name  # keyed by teacher and size
    cached = teacher.CachedTargets(SyntheticSurround("train", image_size=(64, 96)), str(folder))
    assert len(cached) == 2
    args = train.get_args(SIZE)
    torch.manual_seed(0)
    model = Student(StudentConfig(num_bins=16, image_size=(64, 96)))
    live_teacher = teacher.build_teacher("emulated")
    for i in range(2):
        batch = {k: v[None] for k, v in cached[i].items()}
        out = model(batch["images"])
        farness, tokens = teacher.distillation_targets(live_teacher, batch, args.vr_strip, args.vr_grid)
        cfg = train.loss_config(args)
        _, live = losses.objective(out, batch["depth"], cfg, farness, tokens)
        _, from_cache = losses.objective(out, batch["depth"], cfg, batch["teacher_farness"],
                                         (batch["teacher_left"], batch["teacher_right"]))
        assert set(live) == {"si", "bins", "kd", "cross", "vr"}
        for k in live:
            assert from_cache[k].item() == pytest.approx(live[k].item(), rel=2e-3, abs=1e-4), k
        torch.testing.assert_close(batch["teacher_farness"], farness, atol=1e-3, rtol=0)  # fp16 of s in [0, 1]


def test_cache_resumes_and_rejects_a_missing_folder(tmp_path):
    teacher.main(["--cache", "--num-samples", "1", "--cache-root", str(tmp_path)] + CACHE_SIZE)
    (folder,) = [tmp_path / d for d in os.listdir(tmp_path)]
    first = (folder / "0000000.pt").stat().st_mtime_ns
    teacher.main(["--cache", "--num-samples", "2", "--cache-root", str(tmp_path)] + CACHE_SIZE)
    assert (folder / "0000000.pt").stat().st_mtime_ns == first  # not recomputed
    assert (folder / "0000001.pt").exists()
    with pytest.raises(teacher.InputError, match="no teacher cache"):
        teacher.CachedTargets(SyntheticSurround("train"), str(tmp_path / "nothing"))


def test_training_with_the_cache_runs_no_teacher(tmp_path, monkeypatch):
    teacher.main(["--cache", "--num-samples", "2", "--cache-root", str(tmp_path / "c")] + CACHE_SIZE)
    (folder,) = [tmp_path / "c" / d for d in os.listdir(tmp_path / "c")]

    def no_teacher(*args, **kwargs):
        raise AssertionError("a cached run must not build a teacher")

    monkeypatch.setattr(train, "build_teacher", no_teacher)
    model = train.main(SIZE + ["--steps", "2", "--batch-size", "1", "--val-samples", "1", "--workers", "0",
                               "--teacher-cache", str(folder), "--out", str(tmp_path / "run")])
    assert model is not None


def test_baseline_uses_no_teacher_terms(tmp_path, monkeypatch):
    monkeypatch.setattr(train, "build_teacher", lambda *a, **k: pytest.fail("the baseline needs no teacher"))
    train.main(SIZE + ["--steps", "1", "--batch-size", "1", "--val-samples", "1", "--workers", "0",
                       "--lambda-ckd", "0", "--lambda-vr", "0", "--out", str(tmp_path)])
    line = (tmp_path / "metrics.jsonl").read_text().splitlines()[0]
    assert '"kd"' not in line and '"vr"' not in line and '"si"' in line


@pytest.mark.parametrize("source", ["features", "probs"])
def test_vrkd_gradient_reaches_the_chosen_student_tokens(source):
    """--vr-student features: L_VRKD reaches the decoder but not the logit head (its features feed
    the head, not the other way); probs: the tokens are softmax(z), so it reaches the logit head."""
    args = train.get_args(SIZE + ["--lambda-ckd", "0", "--vr-student", source])
    torch.manual_seed(0)
    model = Student(StudentConfig(num_bins=16, image_size=(64, 96)))
    batch = {k: v[None] for k, v in SyntheticSurround("train", image_size=(64, 96))[0].items()}
    _, tokens = teacher.distillation_targets(teacher.build_teacher("emulated"), batch, args.vr_strip, args.vr_grid)
    out = model(batch["images"])
    args.beta_bins = 0.0  # whatever the default: no chamfer term either
    out_loss, terms = losses.objective(out, batch["depth"] * 0, train.loss_config(args), None, tokens)  # no LiDAR: only L_VRKD acts
    assert terms["vr"] > 0
    out_loss.backward()
    head = model.logit_head.weight.grad
    reached = head is not None and head.abs().sum() > 0
    assert reached == (source == "probs")
    assert model.reduce[0][0].weight.grad.abs().sum() > 0  # the decoder, in both cases
