"""The teacher cache and the CKD/VRKD training terms.

`cache.py` stores s of Eq. (6) average-pooled to the logit stride in 8 bits, and the teacher's
border similarities of Eq. (13). Training from it gives the live teacher's loss terms within
stated tolerances (measured at 64 x 96, the coarsest case: a logit cell covers the most scene):
L_VRKD exactly (fp32 similarities), L_kd within KD_RTOL, L_cross within CROSS_RTOL (s is
upsampled bilinearly from the stride-4 cells, which smooths it at depth edges), and 8 bits lose
nothing that matters (QUANT_RTOL against the same pooled s in float32). Caches are checked
against the run's key and found by train.py on their own.
"""
import json
import os

import pytest
import torch
import torch.nn.functional as F

import cache
import losses
import train
from cli import InputError
from model import Student, StudentConfig
from synthetic import SyntheticSurround

CACHE_SIZE = ["--image-size", "64", "96"]
SIZE = CACHE_SIZE + ["--num-bins", "16"]
KD_RTOL = 0.02  # L_kd (Eq. 10), cached vs live
CROSS_RTOL = 0.05  # L_cross (Eq. 9), cached vs live
QUANT_RTOL = 2e-3  # every term, 8-bit vs float32 pooled s
RUN = ["--steps", "2", "--batch-size", "1", "--val-samples", "1", "--workers", "0"]


def only_folder(root):
    (folder,) = [os.path.join(root, d) for d in os.listdir(root)]
    return folder


def test_cached_targets_give_the_same_losses(tmp_path):
    cache.main(["--num-samples", "2", "--cache-root", str(tmp_path)] + CACHE_SIZE)
    folder = only_folder(tmp_path)
    assert "emulated" in folder and "64x96" in folder and "seed0" in folder  # the key is in the name
    args = train.get_args(SIZE)
    cached = cache.CachedTargets(SyntheticSurround("train", image_size=(64, 96)), folder, cache.cache_key(args))
    assert len(cached) == 2
    torch.manual_seed(0)
    model = Student(StudentConfig(num_bins=16, image_size=(64, 96)))
    live_teacher = cache.build_teacher("emulated")
    cfg = train.loss_config(args)
    for i in range(2):
        batch = {k: v[None] for k, v in cached[i].items()}
        out = model(batch["images"])
        farness, tokens = cache.distillation_targets(live_teacher, batch, args.vr_strip, args.vr_grid)
        pooled = F.avg_pool2d(farness[0], cache.CACHE_STRIDE)[None]  # (1, N, 1, 16, 24)
        assert batch["teacher_farness"].shape == pooled.shape
        torch.testing.assert_close(batch["teacher_farness"], pooled, atol=0.5 / cache.FARNESS_LEVELS, rtol=0)
        _, live = losses.objective(out, batch["depth"], cfg, farness, tokens)
        _, from_cache = losses.objective(out, batch["depth"], cfg, batch["teacher_farness"],
                                         batch["teacher_similarity"])
        _, unquantised = losses.objective(out, batch["depth"], cfg, pooled, tokens)
        assert set(live) == set(from_cache) == {"si", "bins", "kd", "cross", "vr"}
        assert from_cache["vr"].item() == pytest.approx(live["vr"].item(), rel=1e-5)
        assert from_cache["kd"].item() == pytest.approx(live["kd"].item(), rel=KD_RTOL)
        assert from_cache["cross"].item() == pytest.approx(live["cross"].item(), rel=CROSS_RTOL)
        for k in live:
            assert from_cache[k].item() == pytest.approx(unquantised[k].item(), rel=QUANT_RTOL), k


def test_cache_resumes_and_rejects_a_missing_folder(tmp_path):
    cache.main(["--num-samples", "1", "--cache-root", str(tmp_path)] + CACHE_SIZE)
    folder = only_folder(tmp_path)
    first = os.stat(cache.cache_file(folder, 0)).st_mtime_ns
    cache.main(["--num-samples", "2", "--cache-root", str(tmp_path)] + CACHE_SIZE)
    assert os.stat(cache.cache_file(folder, 0)).st_mtime_ns == first  # not recomputed
    assert os.path.exists(cache.cache_file(folder, 1))
    key = cache.cache_key(train.get_args(SIZE))
    with pytest.raises(InputError, match="no teacher cache"):
        cache.CachedTargets(SyntheticSurround("train"), str(tmp_path / "nothing"), key)


def test_a_cache_of_another_seed_is_refused_in_one_line(tmp_path):
    cache.main(["--num-samples", "1", "--cache-root", str(tmp_path)] + CACHE_SIZE)
    folder = only_folder(tmp_path)
    with pytest.raises(InputError) as error:  # made for --seed 0: other synthetic worlds than --seed 1's
        train.main(SIZE + RUN + ["--seed", "1", "--teacher-cache", folder, "--out", str(tmp_path / "run")])
    message = str(error.value)
    assert "\n" not in message and "seed 0" in message and "seed 1" in message and "python cache.py" in message
    meta = json.load(open(os.path.join(folder, "meta.json")))
    assert {k: meta[k] for k in cache.cache_key(train.get_args(SIZE))} == cache.cache_key(train.get_args(SIZE))
    json.dump({**meta, "grid": [2, 2]}, open(os.path.join(folder, "meta.json"), "w"))
    with pytest.raises(InputError, match="grid"):
        train.main(SIZE + RUN + ["--teacher-cache", folder, "--out", str(tmp_path / "run")])


def test_training_finds_its_cache_and_runs_no_teacher(tmp_path, monkeypatch, capsys):
    root = str(tmp_path / "c")
    cache.main(["--num-samples", "2", "--cache-root", root] + CACHE_SIZE)
    monkeypatch.setattr(train, "DEFAULT_CACHE_ROOT", root)

    def no_teacher(*args, **kwargs):
        raise AssertionError("a cached run must not build a teacher")

    monkeypatch.setattr(train, "build_teacher", no_teacher)
    assert train.main(SIZE + RUN + ["--out", str(tmp_path / "auto")]) is not None  # --teacher-cache auto
    assert f"teacher cache: using {only_folder(root)}" in capsys.readouterr().err
    assert train.main(SIZE + RUN + ["--teacher-cache", only_folder(root), "--out", str(tmp_path / "explicit")])
    for flags in (["--teacher-cache", "none"], ["--seed", "1"]):  # off, or no cache made for this run
        with pytest.raises(AssertionError, match="must not build a teacher"):
            train.main(SIZE + RUN + flags + ["--out", str(tmp_path / "live")])


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
    _, tokens = cache.distillation_targets(cache.build_teacher("emulated"), batch, args.vr_strip, args.vr_grid)
    out = model(batch["images"])
    args.beta_bins = 0.0  # whatever the default: no chamfer term either
    # no LiDAR: only L_VRKD acts
    out_loss, terms = losses.objective(out, batch["depth"] * 0, train.loss_config(args), None, tokens)
    assert terms["vr"] > 0
    out_loss.backward()
    head = model.logit_head.weight.grad
    reached = head is not None and head.abs().sum() > 0
    assert reached == (source == "probs")
    assert model.reduce[0][0].weight.grad.abs().sum() > 0  # the decoder, in both cases
