"""Tests of the Eq. (6) normalisations (losses.remap_farness) and of the existing-KD baselines
of Eqs. (21)-(22) (kd_baselines.response_kd, kd_baselines.feature_kd): hand-computed values and invariances."""
import math

import pytest
import torch

import kd_baselines
import losses
from conftest import identity_adapter


def test_log_farness_by_hand():
    # r_hat = 1 - s = (1, 0, 0.5) -> log(r_hat (1 - e) + e) / log(e), e = 1/64:
    # 0, 1, and log(0.5 * 63/64 + 1/64) / log(1/64) = log(0.5078125) / log(0.015625) = 0.162937.
    s = torch.tensor([0.0, 1.0, 0.5]).view(1, 1, 1, 3)
    out = losses.remap_farness(s, "log").flatten()
    torch.testing.assert_close(out, torch.tensor([0.0, 1.0, math.log(0.5078125) / math.log(1 / 64)]))
    assert abs(float(out[2]) - 0.162937) < 1e-5


def test_rank_farness_by_hand():
    # 5 pixels, s = (0, 0.3, 0.3, 1, 1): farther pixels 4, 2, 2, 0, 0 -> 1 - farther / 4.
    s = torch.tensor([[0.0, 0.3, 0.3, 1.0, 1.0]]).view(1, 1, 1, 5)
    torch.testing.assert_close(losses.remap_farness(s, "rank").flatten(), torch.tensor([0.0, 0.5, 0.5, 1.0, 1.0]))
    # Every map on its own: a batch of two maps ranks each separately.
    two = torch.cat([s, s.flip(-1)])
    torch.testing.assert_close(losses.remap_farness(two, "rank")[1].flatten(),
                               torch.tensor([1.0, 1.0, 0.5, 0.5, 0.0]))


@pytest.mark.parametrize("mode", losses.FARNESS_MODES)
def test_every_mode_is_affine_invariant_and_ordered(mode):
    gen = torch.Generator().manual_seed(0)
    depth = 1.0 + 79.0 * torch.rand(2, 1, 12, 20, generator=gen)
    r = 1.0 / depth
    s = losses.normalised_farness(r, mode)
    torch.testing.assert_close(losses.normalised_farness(3.7 * r + 0.2, mode), s, atol=1e-5, rtol=1e-5)
    assert s.min() >= 0.0 and s.max() <= 1.0
    # Farther pixels never get a smaller farness (monotone in depth).
    order = depth.flatten(1).argsort(dim=1)
    assert torch.all(s.flatten(1).gather(1, order).diff(dim=1) >= -1e-6)


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="farness mode"):
        losses.remap_farness(torch.zeros(1, 1, 2, 2), "quantile")


def view(values):
    """(1, 1, 1, 1, P) from a list: one view of P pixels."""
    return torch.tensor(values, dtype=torch.float32).view(1, 1, 1, 1, -1)


def test_aligned_teacher_depth_exact_fit():
    # r_hat = 1 - s = (1, 0.5, 0, 0.75); 1 / D* = 0.5 r_hat + 0.25 on the first three (LiDAR) pixels:
    # D* = 4/3, 2, 4. The fit recovers alpha = 0.5, beta = 0.25, so the fourth pixel (no LiDAR)
    # gets 1 / (0.5 * 0.75 + 0.25) = 1.6 m.
    s = view([0.0, 0.5, 1.0, 0.25])
    target = view([4 / 3, 2.0, 4.0, 0.0])
    depth, fitted = kd_baselines.aligned_teacher_depth(s, target, target > 0, 0.1, 80.0)
    torch.testing.assert_close(depth, view([4 / 3, 2.0, 4.0, 1.6]))
    assert fitted.flatten().tolist() == [True]


def test_aligned_teacher_depth_least_squares_and_clamp():
    # Points (r_hat, 1/D*) = (0, 1), (1, 1), (1, 0.5): least squares beta = 1, alpha = -0.25.
    # A pixel with r_hat = 0.5 -> 1 / 0.875 m. r_hat = 5 (outside) -> disparity -0.25 -> clamped
    # to 1 / 80 -> 80 m.
    s = view([1.0, 0.0, 0.0, 0.5, -4.0])
    target = view([1.0, 1.0, 2.0, 0.0, 0.0])
    depth, _ = kd_baselines.aligned_teacher_depth(s, target, target > 0, 0.1, 80.0)
    torch.testing.assert_close(depth.flatten()[3:], torch.tensor([1 / 0.875, 80.0]))
    assert not bool(kd_baselines.aligned_teacher_depth(s, target, target > 0, 0.1, 80.0)[1].any())  # alpha < 0
    # A view with a single LiDAR point has no alignment.
    _, fitted = kd_baselines.aligned_teacher_depth(s, view([1.0, 0, 0, 0, 0]), view([1.0, 0, 0, 0, 0]) > 0, 0.1, 80.0)
    assert fitted.flatten().tolist() == [False]


def test_response_kd_is_dense_silog_against_the_aligned_teacher():
    s = torch.cat([view([0.0, 0.5, 1.0, 0.25]), view([0.0, 0.5, 1.0, 0.25])], dim=1)  # (1, 2, 1, 1, 4)
    target = torch.cat([view([4 / 3, 2.0, 4.0, 0.0]), view([1.0, 0.0, 0.0, 0.0])], dim=1)  # view 2: 1 point
    teacher = view([4 / 3, 2.0, 4.0, 1.6])
    # Student twice the teacher on view 1 (every pixel, LiDAR or not), anything on view 2 (no fit):
    # g = log 2 everywhere it counts -> 10 sqrt(g^2 - 0.85 g^2) = 10 sqrt(0.15) log 2.
    pred = torch.cat([2.0 * teacher, view([7.0, 7.0, 3.0, 9.0])], dim=1)
    loss = kd_baselines.response_kd(pred, s, target, target > 0, 0.1, 80.0)
    assert float(loss) == pytest.approx(10.0 * math.sqrt(0.15) * math.log(2.0), rel=1e-5)
    # omega (DDAD's ego-car mask) drops pixels from Omega: wrong only where masked -> the same loss
    wrong = pred.clone()
    wrong[..., 0, 3] = 50.0  # view 1, pixel 3 far off, but masked out
    omega = torch.ones_like(pred, dtype=torch.bool)
    omega[..., 3] = False
    masked = kd_baselines.response_kd(wrong, s, target, target > 0, 0.1, 80.0, omega)
    assert float(masked) == pytest.approx(10.0 * math.sqrt(0.15) * math.log(2.0), rel=1e-5)
    assert float(kd_baselines.response_kd(wrong, s, target, target > 0, 0.1, 80.0)) > float(loss) + 0.1


def test_feature_kd_by_hand():
    # One token on the teacher's 1 x 1 grid; the student's 2 x 2 constant map resizes to it.
    student = torch.tensor([1.0, 0.0]).view(1, 1, 2, 1, 1).expand(1, 1, 2, 2, 2)
    adapter = identity_adapter(2)
    for teacher, expected in (([3.0, 0.0], 0.0), ([0.0, 0.5], 2.0), ([1.0, 1.0], 2.0 - math.sqrt(2.0))):
        t = torch.tensor(teacher).view(1, 1, 2, 1, 1)
        assert float(kd_baselines.feature_kd(student, t, adapter).detach()) == pytest.approx(expected, abs=1e-6)


def test_feature_kd_trains_the_adapter_and_the_student():
    gen = torch.Generator().manual_seed(0)
    student = torch.randn(2, 6, 8, 6, 10, generator=gen, requires_grad=True)  # C_S = 8 on 6 x 10
    teacher = torch.randn(2, 6, 5, 3, 5, generator=gen)  # C_T = 5 on the 3 x 5 token grid
    adapter = torch.nn.Conv2d(8, 5, 1)
    loss = kd_baselines.feature_kd(student, teacher, adapter)
    loss.backward()
    assert 0.0 < float(loss.detach()) < 4.0
    assert adapter.weight.grad.abs().sum() > 0 and student.grad.abs().sum() > 0


def test_objective_adds_the_baselines_with_their_weights():
    b, n, k, h, w = 1, 6, 4, 8, 12
    gen = torch.Generator().manual_seed(1)
    target = torch.where(torch.rand(b, n, 1, h, w, generator=gen) < 0.3,
                         1.0 + 20.0 * torch.rand(b, n, 1, h, w, generator=gen), torch.zeros(b, n, 1, h, w))
    out = {"depth": 1.0 + 20.0 * torch.rand(b, n, 1, h, w, generator=gen), "logits": torch.randn(b, n, k, h, w),
           "centers": torch.linspace(1, 20, k).expand(b, n, k), "features": torch.randn(b, n, 3, 4, 6)}
    farness = torch.rand(b, n, 1, h, w, generator=gen)
    feats, adapter = torch.randn(b, n, 5, 2, 3), torch.nn.Conv2d(3, 5, 1)
    cfg = losses.LossConfig(pairs=(), min_depth=0.1, max_depth=80.0, lambda_ckd=0.0, lambda_vr=0.0)
    bcfg = kd_baselines.BaselineConfig(lambda_rkd=0.5, lambda_fkd=2.0)
    assert bcfg.active and not kd_baselines.BaselineConfig().active
    loss, terms = kd_baselines.baseline_objective(out, target, cfg, bcfg, farness, None, feats, adapter)
    rkd = kd_baselines.response_kd(out["depth"], farness, target, target > 0, 0.1, 80.0)
    fkd = kd_baselines.feature_kd(out["features"], feats, adapter)
    torch.testing.assert_close(terms["rkd"], rkd)
    torch.testing.assert_close(loss, 0.5 * rkd + 2.0 * fkd)


def test_train_runs_both_baselines_and_keeps_the_adapter_out_of_the_model(tmp_path):
    import json

    import train
    from model import load_checkpoint

    tiny = ["--image-size", "64", "96", "--batch-size", "1", "--num-bins", "16", "--val-samples", "1",
            "--workers", "0", "--lambda-ckd", "0", "--lambda-vr", "0", "--lambda-rkd", "1", "--lambda-fkd", "1"]
    train.main(tiny + ["--steps", "2", "--out", str(tmp_path)])
    model, ckpt = load_checkpoint(str(tmp_path / "checkpoint.pt"))
    # The adapter: student feature channels (decoder stage 1: 64) -> the emulated teacher's K = 64.
    assert ckpt["adapter"]["weight"].shape == (64, 64, 1, 1)
    assert not any("adapter" in k for k in ckpt["model"])  # dropped at inference: not in the student
    logged = [json.loads(line) for line in open(tmp_path / "metrics.jsonl") if '"loss"' in line]
    assert all("rkd" in row and "fkd" in row and "kd" not in row for row in logged)
    train.main(["--out", str(tmp_path), "--resume", "--steps", "3", "--workers", "0"])  # restores the adapter
    assert load_checkpoint(str(tmp_path / "checkpoint.pt"))[1]["step"] == 3
    with pytest.raises(SystemExit):
        train.get_args(["--lambda-fkd", "1", "--teacher-cache", str(tmp_path)])


def test_lidar_neighbourhood_by_hand():
    mask = torch.zeros(1, 1, 1, 5, 7, dtype=torch.bool)
    mask[..., 2, 3] = True
    assert torch.equal(kd_baselines.lidar_neighbourhood(mask, 0), mask)
    ring = kd_baselines.lidar_neighbourhood(mask, 1)[0, 0, 0]
    assert int(ring.sum()) == 9 and bool(ring[1:4, 2:5].all())  # the 3 x 3 square around (2, 3)
    assert int(kd_baselines.lidar_neighbourhood(mask, 2).sum()) == 25  # 5 x 5, inside the 5 x 7 image


def test_off_lidar_response_kd_leaves_the_lidar_pixels_to_the_ground_truth():
    # Eq. (23) on the view of the exact-fit test: LiDAR at pixels 0-2, the teacher's D_T = (4/3, 2, 4, 1.6).
    s, target = view([0.0, 0.5, 1.0, 0.25]), view([4 / 3, 2.0, 4.0, 0.0])
    teacher = view([4 / 3, 2.0, 4.0, 1.6])
    mask = target > 0
    # The student 3x off on the LiDAR pixels, 2x the teacher on the one pixel without LiDAR:
    # Eq. (23) with r = 0 sees pixel 3 only, g = log 2 -> 10 sqrt(0.15) log 2; Eq. (21) sees all four.
    pred = teacher * view([3.0, 3.0, 3.0, 2.0])
    loss = kd_baselines.response_kd(pred, s, target, mask, 0.1, 80.0, lidar_radius=0)
    assert float(loss) == pytest.approx(10.0 * math.sqrt(0.15) * math.log(2.0), rel=1e-5)
    g = torch.log(torch.tensor([3.0, 3.0, 3.0, 2.0]))
    everywhere = 10.0 * math.sqrt(float(g.pow(2).mean() - 0.85 * g.mean().pow(2)))
    assert float(kd_baselines.response_kd(pred, s, target, mask, 0.1, 80.0)) == pytest.approx(everywhere, rel=1e-5)
    # r = 1 also drops pixel 3 (next to LiDAR pixel 2): nothing is left, the loss is a zero.
    assert float(kd_baselines.response_kd(pred, s, target, mask, 0.1, 80.0, lidar_radius=1)) == 0.0


def test_off_lidar_gradient_reaches_exactly_the_pixels_off_the_neighbourhood():
    gen = torch.Generator().manual_seed(3)
    h, w = 9, 11
    target = torch.zeros(1, 1, 1, h, w)
    target[..., 4, 1:10:2] = 5.0 + 10.0 * torch.rand(5, generator=gen)  # one LiDAR row, every 2nd column
    s = torch.rand(1, 1, 1, h, w, generator=gen)
    pred = (1.0 + 20.0 * torch.rand(1, 1, 1, h, w, generator=gen)).requires_grad_()
    kd_baselines.response_kd(pred, s, target, target > 0, 0.1, 80.0, lidar_radius=1).backward()
    reached = pred.grad[0, 0, 0] != 0
    assert not reached[3:6].any()  # rows 3-5: the LiDAR row and its 1-pixel neighbourhood
    assert reached[:3].all() and reached[6:].all()


def test_objective_passes_the_radius_of_eq_23():
    gen = torch.Generator().manual_seed(2)
    target = torch.where(torch.rand(1, 6, 1, 8, 12, generator=gen) < 0.2,
                         1.0 + 20.0 * torch.rand(1, 6, 1, 8, 12, generator=gen), torch.zeros(1, 6, 1, 8, 12))
    out = {"depth": 1.0 + 20.0 * torch.rand(1, 6, 1, 8, 12, generator=gen), "logits": torch.randn(1, 6, 4, 8, 12),
           "centers": torch.linspace(1, 20, 4).expand(1, 6, 4), "features": torch.randn(1, 6, 3, 4, 6)}
    farness = torch.rand(1, 6, 1, 8, 12, generator=gen)
    cfg = losses.LossConfig(pairs=(), min_depth=0.1, max_depth=80.0, lambda_ckd=0.0, lambda_vr=0.0)
    bcfg = kd_baselines.BaselineConfig(lambda_rkd=1.0, rkd_lidar_radius=1)
    _, terms = kd_baselines.baseline_objective(out, target, cfg, bcfg, farness)
    off = kd_baselines.response_kd(out["depth"], farness, target, target > 0, 0.1, 80.0, lidar_radius=1)
    torch.testing.assert_close(terms["rkd"], off)
    assert float((off - kd_baselines.response_kd(out["depth"], farness, target, target > 0, 0.1, 80.0)).abs()) > 1e-3


def test_train_refuses_a_radius_without_response_kd(capsys):
    import train
    for flags in (["--rkd-off-lidar", "0"], ["--lambda-rkd", "1", "--rkd-off-lidar", "-1"]):
        with pytest.raises(SystemExit):
            train.get_args(flags)
        assert "--rkd-off-lidar needs" in capsys.readouterr().err
    assert train.baseline_config(train.get_args(["--lambda-rkd", "1", "--rkd-off-lidar", "2"])).rkd_lidar_radius == 2
