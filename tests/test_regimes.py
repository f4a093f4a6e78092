"""Tests of the data regimes of the evidence study (docs/EXPERIMENTS.md section 7): finite scenes and
unlabelled images (synthetic.py), the mixed batches (sampling.py), the train.py flags, self-aligned
response KD (Eq. 24, kd_baselines.py) and the regime map's bookkeeping (benchmarks/regime.py)."""
import argparse
import math

import numpy as np
import pytest
import torch

import kd_baselines
import options
import synthetic
import train
from sampling import MixedSampler, StepSampler, mixed_sampler, seed_of

SIZE = (32, 48)


def scene(**kw):
    return synthetic.SyntheticSurround("train", image_size=SIZE, seed=5, **kw)


def test_a_scene_is_one_world_seen_from_a_car_that_drives_forward():
    data = scene(scenes=2)
    assert len(data) == 2 * synthetic.FRAMES_PER_SCENE
    first, second = data[0], data[1]
    # Same world: the lidar pattern moves with the car, the images change; the rig does not.
    assert not torch.equal(first["images"], second["images"])
    assert torch.equal(first["intrinsics"], second["intrinsics"])
    assert torch.equal(first["cam_to_ego"], second["cam_to_ego"])
    # The back camera sees the street it left: looking back, things are farther at the next frame.
    back = synthetic.CAM_YAW_DEG.index(180.0)
    front = synthetic.CAM_YAW_DEG.index(0.0)

    def median(item, n):
        d = item["depth_dense"][n, 0]
        return float(d[d > 0].median())
    assert median(second, back) > median(first, back) and median(second, front) < median(first, front)


def test_render_sample_moves_the_cameras_and_the_lidar_by_ego_x():
    rng = np.random.default_rng(0)
    world = synthetic.make_world(rng, travel=8.0)
    world["boxes"], world["cylinders"] = [], []  # an empty street: the ground alone
    a = synthetic.render_sample(world, SIZE, np.random.default_rng(1), ego_x=0.0)
    b = synthetic.render_sample(world, SIZE, np.random.default_rng(1), ego_x=8.0)
    # On a flat ground plane every position sees the same depth: only the textures move.
    np.testing.assert_allclose(a[1], b[1], rtol=1e-9)
    assert np.array_equal(a[2] > 0, b[2] > 0)
    assert not np.allclose(a[0], b[0])


def test_scenes_keep_their_worlds_whatever_the_count_and_the_ego_lane_is_clear():
    assert torch.equal(scene(scenes=3)[5]["images"], scene(scenes=16)[5]["images"])
    assert torch.equal(scene(scenes=2, first_scene=1)[0]["images"],
                       scene(scenes=2)[synthetic.FRAMES_PER_SCENE]["images"])
    travel = (synthetic.FRAMES_PER_SCENE - 1) * synthetic.FRAME_SPACING
    for s in range(20):
        world = synthetic.make_world(np.random.default_rng([synthetic.SCENES_ID, 0, s]), travel=travel)
        for box in world["boxes"]:
            if box["kind"] == "car":
                x, y = box["center"][:2]
                in_lane = abs(y - 0.0) < synthetic.CAR_WIDTH / 2 + box["half"][1]
                assert not (in_lane and -synthetic.CAR_LENGTH < x < travel + synthetic.CAR_LENGTH)


def test_scene_worlds_differ_from_the_stream_and_the_default_stream_is_unchanged():
    assert not torch.equal(scene(scenes=1)[0]["images"], synthetic.SyntheticSurround("train", image_size=SIZE,
                                                                                       seed=5)[0]["images"])
    rng = np.random.default_rng([0, 5, 0])
    images, dense, *_ = synthetic.render_sample(synthetic.make_world(rng), SIZE, rng)
    item = synthetic.SyntheticSurround("train", image_size=SIZE, seed=5)[0]
    np.testing.assert_array_equal(item["depth_dense"].numpy(), dense.astype(np.float32))


def test_unlabelled_items_have_no_ground_truth_but_the_same_keys(tmp_path):
    labelled, unlabelled = scene(scenes=1), scene(scenes=1, labelled=False, cache_dir=str(tmp_path))
    a, b = labelled[2], unlabelled[2]
    assert set(a) == set(b) and all(a[k].shape == b[k].shape and a[k].dtype == b[k].dtype for k in a)
    assert float(b["depth"].abs().sum()) == 0.0 and float(a["depth"].abs().sum()) > 0.0
    assert torch.equal(a["depth_dense"], b["depth_dense"]) and torch.equal(a["images"], b["images"])
    # The cache names scene items by scene and frame, and reading it back gives the same item.
    path = synthetic.render_cache_path(str(tmp_path), "scenes", 5, SIZE, "0_2")
    assert torch.equal(scene(scenes=1, labelled=False, cache_dir=str(tmp_path))[2]["images"], b["images"])
    assert __import__("os").path.exists(path)
    with pytest.raises(IndexError):
        labelled[synthetic.FRAMES_PER_SCENE]
    with pytest.raises(ValueError):
        synthetic.SyntheticSurround("val", scenes=2)


def test_mixed_batches_hold_both_streams_in_a_fixed_ratio_and_resume_exactly():
    sampler = mixed_sampler(8, 20, 2, 3, seed=1, start_step=0, total_steps=12)
    assert isinstance(sampler, MixedSampler) and len(sampler) == 12
    batches = list(sampler)
    for keys in batches:
        indices = [i for _, i in keys]
        assert len(keys) == 5 and all(i < 8 for i in indices[:2]) and all(8 <= i < 28 for i in indices[2:])
    labelled = list(StepSampler(8, 2, 1, 0, 12))
    assert [k[:2] for k in batches] == labelled  # the labelled stream is the plain one
    unlabelled = list(StepSampler(20, 3, seed_of(1, 1), 0, 12))
    assert [[(s, i - 8) for s, i in k[2:]] for k in batches] == unlabelled
    assert list(mixed_sampler(8, 20, 2, 3, seed=1, start_step=5, total_steps=12)) == batches[5:]
    assert isinstance(mixed_sampler(8, 0, 2, 3, 1, 0, 12), StepSampler)


def test_train_flags_of_the_regimes(capsys):
    args = train.get_args(["--train-scenes", "16", "--unlabelled-scenes", "64"])
    assert options.unlabelled_batch(args) == 2 and options.finite_or_mixed(args)
    assert args.steps == options.default_steps("synthetic", 16)
    assert options.unlabelled_batch(train.get_args(["--train-scenes", "16", "--unlabelled-scenes", "4",
                                                  "--unlabelled-ratio", "1.5"])) == 3
    assert options.unlabelled_batch(train.get_args([])) == 0 and not options.finite_or_mixed(train.get_args([]))
    for bad in (["--unlabelled-scenes", "4"], ["--train-scenes", "0"], ["--data", "nuscenes", "--train-scenes", "4"],
                ["--unlabelled-sweeps", "2"], ["--rkd-self-align"], ["--train-scenes", "4", "--teacher-cache", "x"],
                ["--data", "ddad", "--oracle-dense-gt"]):
        with pytest.raises(SystemExit):
            train.get_args(bad)
    capsys.readouterr()


def test_default_steps_follow_the_listed_scene_budgets(monkeypatch):
    monkeypatch.setattr(options, "SCENE_STEPS", {16: 500, 64: 900})
    steps = [options.default_steps("synthetic", n) for n in (None, 4, 16, 17, 64, 1000)]
    assert steps == [300, 500, 500, 900, 900, 900]


def test_oracle_and_unlabelled_images_reach_the_loop(tmp_path, monkeypatch):
    seen = []
    real = train.losses.objective

    def spy(out, target, *a, **k):
        seen.append(target.clone())
        return real(out, target, *a, **k)
    monkeypatch.setattr(train.losses, "objective", spy)
    tiny = ["--image-size", "32", "64", "--num-bins", "8", "--val-samples", "1", "--workers", "0", "--steps", "1",
            "--train-scenes", "1", "--unlabelled-scenes", "1", "--render-cache", str(tmp_path / "cache")]
    train.main(tiny + ["--out", str(tmp_path / "a")])
    train.main(tiny + ["--out", str(tmp_path / "b"), "--oracle-dense-gt"])
    sparse, dense = seen
    assert sparse.shape[0] == 4  # 2 labelled + 2 unlabelled samples
    assert float(sparse[2:].abs().sum()) == 0.0 and float(sparse[:2].abs().sum()) > 0.0
    assert float((dense[2:] > 0).float().mean()) > 0.5  # the oracle sees dense depth on every image
    assert float((dense > 0).float().mean()) > 3 * float((sparse[:2] > 0).float().mean())


def view(values):
    return torch.tensor(values, dtype=torch.float32).reshape(1, 1, 1, 1, -1)


def test_self_aligned_response_kd_by_hand():
    # Eq. (24) on one view without LiDAR: s = (0, 0.5, 0.75, 1), r_hat = (1, 0.5, 0.25, 0). The student's
    # depth (1, 2, 4, 10) has 1 / D = r_hat on the pixels with s < 1, so alpha = 1, beta = 0 and
    # D_T = (1, 2, 4, 80) (the sky pixel, disparity 0, at the clamp d_max). SILog over the view's pixels:
    # g = (0, 0, 0, log(10 / 80)).
    s, pred = view([0.0, 0.5, 0.75, 1.0]), view([1.0, 2.0, 4.0, 10.0]).requires_grad_()
    none = torch.zeros_like(s)
    assert float(kd_baselines.response_kd(pred, s, none, none > 0, 0.1, 80.0)) == 0.0  # Eq. (21): no fit, nothing
    loss = kd_baselines.response_kd(pred, s, none, none > 0, 0.1, 80.0, self_align=True)
    g = torch.tensor([0.0, 0.0, 0.0, math.log(10.0 / 80.0)])
    expected = 10.0 * math.sqrt(float(g.pow(2).mean() - 0.85 * g.mean().pow(2)))
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    # The alignment is detached: the gradient is SILog's against the fixed D_T.
    loss.backward()
    ref = view([1.0, 2.0, 4.0, 10.0]).requires_grad_()
    kd_baselines.silog(ref, view([1.0, 2.0, 4.0, 80.0]), torch.ones_like(ref, dtype=torch.bool)).backward()
    torch.testing.assert_close(pred.grad, ref.grad)


def test_self_alignment_leaves_views_with_lidar_to_their_lidar_fit():
    s = torch.cat([view([0.0, 0.5, 1.0, 0.25]), view([0.0, 0.5, 0.75, 0.25])], dim=1)  # (1, 2, 1, 1, 4)
    target = torch.cat([view([4 / 3, 2.0, 4.0, 0.0]), view([0.0, 0.0, 0.0, 0.0])], dim=1)
    pred = torch.cat([view([4 / 3, 2.0, 4.0, 1.6]), view([1.0, 2.0, 4.0, 4 / 3])], dim=1)  # view 1: 1 / r_hat
    # View 0 is fitted on its LiDAR (D_T = (4/3, 2, 4, 1.6)), view 1 on its own depth: both exact, loss ~ 0.
    assert float(kd_baselines.response_kd(pred, s, target, target > 0, 0.1, 80.0, self_align=True)) < 1e-4
    wrong = pred * torch.cat([torch.full_like(view([0] * 4), 2.0), torch.ones_like(view([0] * 4))], dim=1)
    # Doubling view 0 is seen (its fit is the LiDAR's), doubling view 1 would not be (it aligns to itself).
    assert float(kd_baselines.response_kd(wrong, s, target, target > 0, 0.1, 80.0, self_align=True)) > 1.0
    doubled = pred * torch.cat([torch.ones_like(view([0] * 4)), torch.full_like(view([0] * 4), 2.0)], dim=1)
    assert float(kd_baselines.response_kd(doubled, s, target, target > 0, 0.1, 80.0, self_align=True)) < 1e-4


def test_regime_map_shares_the_labelled_baseline_and_pairs_the_goal_rows():
    from benchmarks import regime
    args = argparse.Namespace(regimes=["16 scenes", "16 scenes + 64 unlabelled"], rows=list(regime.ROWS),
                              teachers=["calibrated", "perfect"], budget="demo", seeds=[0], out="o")
    todo = regime.tasks(args)
    base = [t for t in todo if t[2] == "baseline"]
    assert len(base) == 2 and base[0][4] == base[1][4] and {t[5] for t in base} == {"16 scenes"}
    rkd = [t for t in todo if t[0] == "16 scenes + 64 unlabelled" and t[2] == "response KD"][0]
    assert "--rkd-self-align" in rkd[4] and "--unlabelled-scenes" in rkd[4]
    assert [t for t in todo if t[2] == "CKD + VRKD, perfect teacher"][0][4][-4:-2] == ["--teacher", "emulated:0"] or \
        "emulated:0" in [t for t in todo if t[2] == "CKD + VRKD, perfect teacher"][0][4]
    assert regime.references("CKD + VRKD, perfect teacher") == ["baseline", "response KD, perfect teacher",
                                                                "feature KD, perfect teacher"]
    assert regime.references("+CKD") == ["baseline"] and regime.references("baseline") == []


def test_response_kd_on_unclipped_teacher_pixels_by_hand():
    # The exact-fit view of test_baselines: s = (0, 0.5, 1, 0.25), LiDAR on the first three, D_T = (4/3, 2, 4, 1.6).
    # "unclipped" keeps 0 < s < 1: pixels 1 and 3. The student 2x the teacher on pixel 1, 3x on pixel 3,
    # and wildly off on the clipped pixels 0 and 2, which must not count.
    s, target = view([0.0, 0.5, 1.0, 0.25]), view([4 / 3, 2.0, 4.0, 0.0])
    pred = view([4 / 3, 2.0, 4.0, 1.6]) * view([50.0, 2.0, 0.01, 3.0])
    loss = kd_baselines.response_kd(pred, s, target, target > 0, 0.1, 80.0, teacher_pixels="unclipped")
    g = torch.log(torch.tensor([2.0, 3.0]))
    assert float(loss) == pytest.approx(10.0 * math.sqrt(float(g.pow(2).mean() - 0.85 * g.mean().pow(2))), rel=1e-5)
    assert float(kd_baselines.response_kd(pred, s, target, target > 0, 0.1, 80.0)) > float(loss) + 1.0
    with pytest.raises(ValueError):
        kd_baselines.response_kd(pred, s, target, target > 0, 0.1, 80.0, teacher_pixels="some")


def test_teacher_memo_returns_exactly_what_the_teacher_gives_and_runs_it_once_per_item():
    from cache import TeacherMemo, teacher_pass
    from teacher import build_teacher
    teacher = build_teacher("emulated")
    items = [scene(scenes=1)[i] for i in range(3)]
    calls = []

    class Counting(torch.nn.Module):
        def forward(self, images, depth_dense=None):
            calls.append(images.shape[0])
            return teacher(images, depth_dense)
    memo = TeacherMemo(Counting())
    batch = lambda ids: {**torch.utils.data.default_collate([items[i] for i in ids]),  # noqa: E731
                         "index": torch.tensor(ids)}
    first = memo(batch([0, 1]))
    again = memo(batch([1, 2, 0]))
    assert calls == [12, 6]  # 2 samples x 6 views, then only item 2's views
    direct = teacher_pass(teacher, batch([1, 2, 0]))
    assert all(torch.equal(a, b) for a, b in zip(again, direct))
    assert torch.equal(first[0][1], again[0][0])


def test_an_inverting_fit_is_no_fit():
    # LiDAR depths that grow with r_hat (the teacher says near where the LiDAR says far): alpha < 0, so the
    # view has no D_T, and self-alignment on a student that inverts the teacher gives none either.
    s, target = view([0.0, 0.5, 1.0, 0.25]), view([1.0, 2.0, 4.0, 0.0])  # r_hat = (1, 0.5, 0) vs 1/D = (1, .5, .25)
    _, fitted = kd_baselines.aligned_teacher_depth(s, target, target > 0, 0.1, 80.0)
    assert bool(fitted.all())
    _, inverted = kd_baselines.aligned_teacher_depth(s, view([4.0, 2.0, 1.0, 0.0]), target > 0, 0.1, 80.0)
    assert not bool(inverted.any())
    none = torch.zeros_like(s)
    assert float(kd_baselines.response_kd(view([4.0, 2.0, 1.0, 3.0]), view([0.0, 0.5, 0.75, 0.25]), none, none > 0,
                                          0.1, 80.0, self_align=True)) == 0.0


def test_regime_table_pairs_each_row_with_the_baseline_by_hand(tmp_path):
    from benchmarks import regime
    args = argparse.Namespace(regimes=["16 scenes + 64 unlabelled"], rows=["baseline", "CKD + VRKD", "response KD"],
                              teachers=["calibrated"], budget="demo", seeds=[0, 1], out=str(tmp_path))

    def result(sparse, dense):
        return {"all": {"sparse": {"abs_rel": sparse, "rmse": 2.0}, "dense": {"abs_rel": dense, "rmse": 4.0}}}
    key = ("16 scenes + 64 unlabelled", 300)
    runs = {key + ("baseline", 0): result(0.10, 0.20), key + ("baseline", 1): result(0.12, 0.20),
            key + ("CKD + VRKD", 0): result(0.09, 0.16), key + ("CKD + VRKD", 1): result(0.11, 0.18),
            key + ("response KD", 0): result(0.10, 0.17), key + ("response KD", 1): result(0.12, 0.17)}
    # CKD + VRKD - baseline, sparse: differences -0.01, -0.01 -> mean -0.01, sd 0 -> -0.01 / 0.11 = -9.1 % +- 0.
    mean, half, n = regime.paired_gain(runs, *key, "CKD + VRKD", "baseline", [0, 1], "sparse", "abs_rel")
    assert n == 2 and mean == pytest.approx(-100 * 0.01 / 0.11) and half == pytest.approx(0.0, abs=1e-9)
    # dense: -0.04, -0.02 -> mean -0.03 (-15 %), sd 0.01414 -> half 12.706 * 0.01414 / sqrt(2) = 0.12706 (63.5 %).
    mean, half, _ = regime.paired_gain(runs, *key, "CKD + VRKD", "baseline", [0, 1], "dense", "abs_rel")
    assert mean == pytest.approx(-15.0)
    assert half == pytest.approx(100 * 12.706 * 0.02 / 2 ** 0.5 / 2 ** 0.5 / 0.2, rel=1e-4)
    lines = "\n".join(regime.regime_table(runs, args))
    assert "-15.0 ± 63.5 % vs baseline" in lines and "vs response KD" in lines
    regime.write_regime_figure(runs, args, str(tmp_path / "regime.png"))
    assert (tmp_path / "regime.png").stat().st_size > 1000
