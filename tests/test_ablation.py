"""Tests of ablation.py's statistics (sample std, paired t-intervals), its run-reuse check and
its table, on hand-made results (no training)."""
import math

import pytest

from benchmarks import ablation
from benchmarks import zeroshot
from cli import InputError


def fake(abs_rel, dense_abs_rel=0.1):
    """A results dict shaped like evaluate's, with the given sparse and dense AbsRel."""
    metrics = lambda a: {"abs_rel": a, "rmse": 10 * a, "a1": 1 - a}  # noqa: E731
    return {"all": {"sparse": metrics(abs_rel), "dense": metrics(dense_abs_rel)},
            "scale": {"mean_abs_log_rho": 0.1, "std_log_rho_across_views": 0.05}, "cross_view": {"mean_rel": 0.2}}


def test_cell_is_mean_and_sample_std():
    assert ablation.cell([1.0, 3.0]) == f"2.0000 ± {math.sqrt(2.0):.4f}"  # ddof = 1: sqrt(((1-2)^2 + (3-2)^2) / 1)
    assert ablation.cell([0.5]) == "0.5000"


def test_paired_interval_by_hand():
    # d = (1, 2, 3): mean 2, sample sd 1, n = 3 -> half-width t_{0.975, 2} / sqrt(3) = 4.303 / 1.7321.
    mean, half = ablation.paired_interval([1.0, 2.0, 4.0], [0.0, 0.0, 1.0])
    assert mean == pytest.approx(2.0) and half == pytest.approx(4.303 / math.sqrt(3.0))
    assert ablation.paired_interval([1.0], [0.5]) == (0.5, None)
    assert ablation.T_975[4] == 2.776  # the t table: 5 seeds, df = 4


def test_a_run_is_reused_only_if_every_training_flag_matches():
    saved = ablation.expected_args("response KD", 300, 2)
    ablation.check_args(dict(saved, out="elsewhere", workers=4, device="cuda"), "response KD", 300, 2, "run")
    for change in ({"lambda_rkd": 0.5}, {"seed": 3}, {"steps": 200}, {"teacher_norm": "rank"}):
        with pytest.raises(InputError, match="response KD"):
            ablation.check_args(dict(saved, **change), "response KD", 300, 2, "run")
    old = {k: v for k, v in saved.items() if k != "lambda_fkd"}  # a run from before the flag existed
    with pytest.raises(InputError, match="lambda-fkd"):
        ablation.check_args(old, "response KD", 300, 2, "run")


def test_table_reports_finished_seeds_and_paired_differences():
    runs = {("baseline", 0): fake(0.10, 0.20), ("baseline", 1): fake(0.12, 0.22),
            ("CKD + VRKD", 0): fake(0.09, 0.15), ("CKD + VRKD", 1): fake(0.10, 0.18),
            ("response KD", 0): fake(0.095, 0.16), ("response KD", 1): None}
    lines = ablation.ablation_table(runs, ["baseline", "response KD", "CKD + VRKD"], [0, 1])
    text = "\n".join(lines)
    assert "| response KD | 1 |" in text and "| baseline | 2 |" in text
    # CKD + VRKD - baseline, sparse AbsRel: d = (-0.01, -0.02): mean -0.015, sd 0.00707, t_{0.975,1} = 12.706.
    half = 12.706 * (0.01 / math.sqrt(2)) / math.sqrt(2)
    row = next(line for line in lines if line.startswith("| CKD + VRKD − baseline"))
    assert f"-0.0150 [{-0.015 - half:+.4f}, {-0.015 + half:+.4f}] (-13.6 %)" in row
    # Against response KD only seed 0 is paired: a difference, no interval.
    row = next(line for line in lines if line.startswith("| CKD + VRKD − response KD"))
    assert "| 1 |" in row and "-0.0050 n/a" in row


def test_teacher_bin_usage_by_hand():
    # One view, 4 rows x 6 columns at 2, 4, 10, 30, 31, 60 m; an exact teacher r = a / D + b.
    # Affine Eq. (6): s = 1 - (1/D - 1/60) / (1/2 - 1/60): 30 m -> 0.9655 and 31 m -> 0.9677 share
    # bin 61 of 64, 60 m -> bin 63. Far (> 20 m): 3 of 6 columns, in 2 bins; within-bin std of
    # log depth: bin 61 holds 8 of 24 pixels with std (log 31 - log 30) / 2, the others 0.
    # Rank: 30 and 31 m have 8 and 4 farther pixels -> s = 1 - 8/23, 1 - 4/23 -> bins 41 and 52.
    import torch

    from teacher import EmulatedTeacher

    depth = torch.tensor([2.0, 4.0, 10.0, 30.0, 31.0, 60.0]).expand(1, 1, 4, 6).contiguous()
    item = {"images": torch.zeros(1, 3, 4, 6), "depth_dense": depth}
    usage = zeroshot.teacher_bin_usage(EmulatedTeacher(strength=0.0, blur_sigma=0.0), [item], 64)
    std = (math.log(31.0) - math.log(30.0)) / 2 * math.sqrt(8 / 24)
    assert usage["affine"] == pytest.approx({"far_bins": 2, "far_share": 0.5, "log_depth_std": std}, rel=1e-4)
    assert usage["rank"] == pytest.approx({"far_bins": 3, "far_share": 0.5, "log_depth_std": 0.0}, abs=1e-6)


def test_world_keys_are_exactly_the_worlds_a_run_reads(tmp_path):
    import argparse
    import os

    import synthetic
    import train
    steps, seed = 3, 5
    train.main(["--steps", str(steps), "--seed", str(seed), "--image-size", "32", "64", "--lambda-ckd", "0",
                "--lambda-vr", "0", "--val-every", str(steps), "--val-samples", "1", "--workers", "0",
                "--render-cache", str(tmp_path / "worlds"), "--out", str(tmp_path / "run")])
    folder = os.path.dirname(synthetic.render_cache_path(str(tmp_path / "worlds"), "train", seed, (32, 64), 0))
    read = {int(name.split(".")[0]) for name in os.listdir(folder)}
    keys = ablation.world_keys(argparse.Namespace(seeds=[seed], steps=steps, split="test"))
    assert {i for split, s, i in keys if split == "train"} == read and len(read) == steps * 2
    assert {(split, s) for split, s, _ in keys} == {("train", seed), ("test", 0)}
    assert len([k for k in keys if k[0] == "test"]) == synthetic.SPLIT_LENGTHS["test"]
    # A study on the validation split reads the val worlds instead, never a test world.
    keys = ablation.world_keys(argparse.Namespace(seeds=[seed], steps=steps, split="val"))
    assert {(split, s) for split, s, _ in keys} == {("train", seed), ("val", 0)}
    assert len([k for k in keys if k[0] == "val"]) == synthetic.SPLIT_LENGTHS["val"]


def test_no_train_tabulates_only_runs_whose_flags_match(tmp_path):
    import argparse
    import json
    import os
    args = argparse.Namespace(out=str(tmp_path), steps=300, amp="off", split="test")
    folder = ablation.run_folder("+CKD", 1, str(tmp_path))
    os.makedirs(folder)
    with open(os.path.join(folder, "test.json"), "w") as f:
        json.dump(fake(0.1), f)
    with pytest.raises(InputError, match="without the args.json"):
        ablation.finished("+CKD", 1, args)
    saved = ablation.expected_args("+CKD", 300, 1)
    with open(os.path.join(folder, "args.json"), "w") as f:
        json.dump(dict(saved, device="cuda"), f)  # where it trained does not matter
    assert ablation.finished("+CKD", 1, args) == fake(0.1)
    assert ablation.run_device("+CKD", 1, str(tmp_path)) == "cuda"
    with open(os.path.join(folder, "args.json"), "w") as f:
        json.dump(dict(saved, lambda_vr=1.0), f)  # another setting's flags
    with pytest.raises(InputError, match="lambda-vr"):
        ablation.finished("+CKD", 1, args)
    assert ablation.finished("+VRKD", 1, args) is None  # not run


def test_a_val_study_never_reads_a_test_result(tmp_path):
    import argparse
    import json
    import os
    folder = ablation.run_folder("+CKD", 1, str(tmp_path))
    os.makedirs(folder)
    with open(os.path.join(folder, "args.json"), "w") as f:
        json.dump(ablation.expected_args("+CKD", 300, 1), f)
    with open(os.path.join(folder, "test.json"), "w") as f:
        json.dump(fake(0.1), f)
    val = argparse.Namespace(out=str(tmp_path), steps=300, amp="off", split="val")
    assert ablation.finished("+CKD", 1, val) is None
    with open(os.path.join(folder, "val.json"), "w") as f:
        json.dump(fake(0.2), f)
    assert ablation.finished("+CKD", 1, val) == fake(0.2)
    assert ablation.finished("+CKD", 1, argparse.Namespace(**dict(vars(val), split="test"))) == fake(0.1)


def test_the_method_plus_rkd_rows_are_paired_with_the_method_and_response_kd():
    names = ["baseline", "response KD", "CKD + VRKD", "CKD + VRKD + off-LiDAR RKD"]
    runs = {(n, s): fake(0.1 + 0.01 * i + 0.001 * s) for i, n in enumerate(names) for s in (0, 1)}
    text = "\n".join(ablation.ablation_table(runs, names, [0, 1]))
    for ref in ("baseline", "response KD", "CKD + VRKD"):
        assert f"| CKD + VRKD + off-LiDAR RKD − {ref} | 2 |" in text
    assert "| CKD + VRKD − CKD + VRKD" not in text
