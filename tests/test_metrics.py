"""Tests of the evaluation metrics in evaluate.py, Eqs. (18)-(19).

- compute_depth_metrics: a hand-computed example (numbers written out below), masking by
  (min_depth, max_depth), clamping of the prediction, median scaling (applied before the clamp),
  numpy and torch inputs alike, None without a valid pixel;
- log_scale_ratio: log 2 when the prediction is half the ground truth;
- evaluate_predictions on a tiny in-memory dataset of six-view samples: a perfect predictor
  scores abs_rel 0, a1 1 and zero scale errors; scaling one view by 2 gives the log-rho
  statistics computed by hand; format_table renders one row per camera plus 'all'.
"""
import math

import numpy as np
import pytest
import torch

import evaluate
from rig import CAMERAS, MAX_DEPTH

# Hand-computed example. gt = 2, 4, 8, 10 m; pred = 2, 5.2, 4, 12 m.
#   |g - p| / g        = 0, 0.3, 0.5, 0.2               -> abs_rel = 1.0 / 4  = 0.25
#   (g - p)^2 / g      = 0, 1.44/4, 16/8, 4/10          -> sq_rel  = 2.76 / 4 = 0.69
#   (g - p)^2          = 0, 1.44, 16, 4                 -> rmse    = sqrt(5.36) = 2.3151674
#   log(g / p)^2       = 0, log(1.3)^2, log(2)^2, log(1.2)^2
#                      = 0, 0.0688350, 0.4804530, 0.0332412 -> rmse_log = sqrt(0.5825292 / 4) = 0.3816180
#   max(g/p, p/g)      = 1, 1.3, 2, 1.2:  < 1.25: 2 of 4; < 1.5625: 3 of 4; < 1.953125: 3 of 4
GT = [2.0, 4.0, 8.0, 10.0]
PRED = [2.0, 5.2, 4.0, 12.0]
EXPECTED = {"abs_rel": 0.25, "sq_rel": 0.69, "rmse": 2.3151674, "rmse_log": 0.3816180,
            "a1": 0.5, "a2": 0.75, "a3": 0.75}


def _check(got, expected, rel=1e-6):
    assert got is not None
    assert set(got) == set(evaluate.METRIC_KEYS)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=rel, abs=1e-9), key


def test_hand_computed_example():
    _check(evaluate.compute_depth_metrics(np.array(PRED), np.array(GT)), EXPECTED)


def test_hand_computed_example_as_image_float32():
    gt = np.array(GT, dtype=np.float32).reshape(2, 2)
    pred = np.array(PRED, dtype=np.float32).reshape(2, 2)
    _check(evaluate.compute_depth_metrics(pred, gt), EXPECTED, rel=1e-5)


def test_pixels_outside_min_max_are_ignored():
    # 0 (no ground truth), 0.05 (< min), 80 (not < max) and 200 (> max) do not count,
    # whatever is predicted there
    gt = np.array(GT + [0.0, 0.05, MAX_DEPTH, 200.0])
    pred = np.array(PRED + [30.0, 7.0, 1.0, 3.0])
    _check(evaluate.compute_depth_metrics(pred, gt), EXPECTED)
    # a narrower range keeps gt = 4 and 8 only: abs_rel = (0.3 + 0.5) / 2, ratios 1.3 and 2
    got = evaluate.compute_depth_metrics(np.array(PRED), np.array(GT), min_depth=3.0, max_depth=9.0)
    _check(got, {"abs_rel": 0.4, "a1": 0.0, "a2": 0.5, "a3": 0.5})


def test_prediction_is_clamped_to_the_range():
    # pred 1000 -> 80 at gt 10: |10 - 80| / 10 = 7; pred -5 -> 0.1 at gt 1: 0.9 / 1 = 0.9
    got = evaluate.compute_depth_metrics(np.array([1000.0, -5.0]), np.array([10.0, 1.0]))
    _check(got, {"abs_rel": (7.0 + 0.9) / 2, "rmse": math.sqrt((70.0**2 + 0.9**2) / 2), "a3": 0.0})
    assert math.isfinite(got["rmse_log"])


@pytest.mark.parametrize("scale", [3.7, 0.25, 1e-3])
def test_median_scaling_makes_uniformly_scaled_prediction_perfect(scale):
    gt = np.random.default_rng(0).uniform(1.0, 60.0, size=(12, 20))
    got = evaluate.compute_depth_metrics(gt * scale, gt, median_scaling=True)
    _check(got, {"abs_rel": 0.0, "sq_rel": 0.0, "rmse": 0.0, "rmse_log": 0.0, "a1": 1.0, "a2": 1.0, "a3": 1.0})
    assert got["abs_rel"] < 1e-9
    plain = evaluate.compute_depth_metrics(gt * scale, gt)
    assert plain["abs_rel"] > 0.2 and plain["a1"] < 1.0


def test_numpy_and_torch_inputs_agree():
    rng = np.random.default_rng(1)
    gt = rng.uniform(0.0, 90.0, size=(6, 9)).astype(np.float32)
    pred = (gt * rng.uniform(0.7, 1.4, size=gt.shape)).astype(np.float32)
    for median_scaling in (False, True):
        a = evaluate.compute_depth_metrics(pred, gt, median_scaling=median_scaling)
        b = evaluate.compute_depth_metrics(torch.from_numpy(pred), torch.from_numpy(gt), median_scaling=median_scaling)
        c = evaluate.compute_depth_metrics(torch.from_numpy(pred).requires_grad_(True), torch.from_numpy(gt),
                                           median_scaling=median_scaling)
        assert a == b == c
        assert all(isinstance(v, float) for v in a.values())


def test_no_valid_pixel_gives_none():
    assert evaluate.compute_depth_metrics(np.ones((3, 4)), np.zeros((3, 4))) is None
    assert evaluate.compute_depth_metrics(torch.ones(3, 4), torch.full((3, 4), 500.0)) is None
    assert evaluate.log_scale_ratio(np.ones((3, 4)), np.zeros((3, 4))) is None


def test_log_scale_ratio():
    gt = np.random.default_rng(2).uniform(1.0, 70.0, size=(10, 16))
    assert evaluate.log_scale_ratio(gt / 2, gt) == pytest.approx(math.log(2), rel=1e-12)
    assert evaluate.log_scale_ratio(gt * 3, gt) == pytest.approx(-math.log(3), rel=1e-12)
    # only valid ground-truth pixels count: medians of gt = 2, 4, 8, 10 (valid) are 6
    gt = np.array([2.0, 4.0, 8.0, 10.0, 0.0, 0.0, 500.0])
    pred = np.array([3.0, 3.0, 3.0, 3.0, 99.0, 99.0, 99.0])
    assert evaluate.log_scale_ratio(pred, gt) == pytest.approx(math.log(6.0 / 3.0), rel=1e-12)


# ------------------------------------------------------------------- evaluate_predictions

def _fake_dataset(num_samples=3, h=8, w=12, seed=0, blind_front=False):
    g = torch.Generator().manual_seed(seed)
    items = []
    for _ in range(num_samples):
        dense = torch.rand(len(CAMERAS), 1, h, w, generator=g) * 38 + 1.0  # 2x stays < 80 m
        mask = torch.rand(dense.shape, generator=g) < 0.3
        mask[:, :, 0, 0] = True  # every view has ground truth
        if blind_front:
            mask[0] = False
        items.append({"images": torch.rand(len(CAMERAS), 3, h, w, generator=g),
                      "depth": dense * mask, "depth_dense": dense})
    return items


def test_evaluate_predictions_perfect_predictor():
    data = _fake_dataset()
    res = evaluate.evaluate_predictions(lambda b: b["depth_dense"], data, "cpu", progress=False)
    assert res["num_samples"] == 3
    assert set(res["per_camera"]) == set(CAMERAS)
    assert set(res["all"]) == {"sparse", "dense"}
    for kind in ("sparse", "dense"):
        for metrics in [res["all"][kind]] + [res["per_camera"][c][kind] for c in CAMERAS]:
            assert metrics["abs_rel"] == pytest.approx(0.0, abs=1e-7)
            assert metrics["rmse"] == pytest.approx(0.0, abs=1e-5)
            assert metrics["a1"] == 1.0
    assert res["scale"]["mean_abs_log_rho"] == pytest.approx(0.0, abs=1e-7)
    assert res["scale"]["std_log_rho_across_views"] == pytest.approx(0.0, abs=1e-7)


def test_evaluate_predictions_one_view_scaled():
    data = _fake_dataset()

    def predict(batch):
        depth = batch["depth_dense"].clone()
        depth[:, 2] *= 2.0  # CAM_BACK_RIGHT predicts twice too far: log rho = -log 2 there
        return depth

    res = evaluate.evaluate_predictions(predict, data, "cpu", progress=False)
    # per sample log rho = (0, 0, -log 2, 0, 0, 0): population std log(2) * sqrt(5) / 6 = 0.2583207,
    # mean |log rho| = log(2) / 6 = 0.1155245
    assert res["scale"]["std_log_rho_across_views"] == pytest.approx(0.2583207, rel=1e-5)
    assert res["scale"]["mean_abs_log_rho"] == pytest.approx(0.1155245, rel=1e-5)
    cams = res["per_camera"]
    assert cams["CAM_BACK_RIGHT"]["dense"]["abs_rel"] == pytest.approx(1.0, rel=1e-6)
    assert cams["CAM_BACK_RIGHT"]["dense"]["a1"] == 0.0
    assert cams["CAM_FRONT"]["dense"]["abs_rel"] == pytest.approx(0.0, abs=1e-7)
    # 'all' averages the cameras: abs_rel (1 + 5 * 0) / 6, a1 5 / 6
    assert res["all"]["dense"]["abs_rel"] == pytest.approx(1.0 / 6, rel=1e-5)
    assert res["all"]["sparse"]["a1"] == pytest.approx(5.0 / 6, rel=1e-6)
    # median scaling removes the per-view scale error from the depth metrics
    res = evaluate.evaluate_predictions(predict, data, "cpu", median_scaling=True, progress=False)
    assert res["all"]["dense"]["abs_rel"] == pytest.approx(0.0, abs=1e-6)


def test_evaluate_predictions_without_dense_ground_truth():
    data = [{k: v for k, v in item.items() if k != "depth_dense"} for item in _fake_dataset(2)]
    res = evaluate.evaluate_predictions(lambda b: b["depth"].clamp_min(1.0), data, "cpu", progress=False)
    assert set(res["all"]) == {"sparse"}
    assert res["all"]["sparse"]["abs_rel"] == pytest.approx(0.0, abs=1e-7)


def test_evaluate_predictions_front_camera_without_ground_truth():
    data = _fake_dataset(2, blind_front=True)
    res = evaluate.evaluate_predictions(lambda b: b["depth_dense"], data, "cpu", progress=False)
    assert "sparse" in res["all"]
    assert res["per_camera"]["CAM_FRONT"]["sparse"] is None
    assert res["per_camera"]["CAM_BACK"]["sparse"]["a1"] == 1.0


def test_format_table_rows():
    data = _fake_dataset(2)
    res = evaluate.evaluate_predictions(lambda b: b["depth_dense"], data, "cpu", progress=False)
    table = evaluate.format_table(res, "perfect")
    lines = table.splitlines()
    for kind, gt in (("sparse", "depth"), ("dense", "depth_dense")):
        start = lines.index(f"### perfect: {kind} ground truth")
        header, rule = lines[start + 2], lines[start + 3]
        assert header == "| camera | " + " | ".join(evaluate.METRIC_KEYS + evaluate.COUNT_KEYS) + " |"
        assert rule.count("|") == header.count("|") and set(rule) <= set("|-")
        rows = lines[start + 4:start + 4 + len(CAMERAS) + 1]
        names = [r.split("|")[1].strip() for r in rows]
        assert names == list(CAMERAS) + ["all"]
        for r in rows:
            cells = [c.strip() for c in r.strip("|").split("|")]
            assert len(cells) == len(evaluate.METRIC_KEYS) + len(evaluate.COUNT_KEYS) + 1
            assert float(cells[1 + evaluate.METRIC_KEYS.index("a1")]) == 1.0
        # the counts: 2 images per camera (12 in all) and the ground-truth pixels scored
        counts = [[int(c) for c in r.strip("|").split("|")[-2:]] for r in rows]
        pixels = [sum(int((item[gt][n] > 0).sum()) for item in data) for n in range(len(CAMERAS))]
        assert counts == [[2, p] for p in pixels] + [[12, sum(pixels)]]
        assert lines[start + 4 + len(CAMERAS) + 1] == ""
    assert "std of log rho across views = 0.0000" in table


def test_column_bands_locate_the_error():
    """Zero in every band for a perfect predictor; an error put only in the first two columns
    of a 16-column image shows only in band 0 (8 bands of 2 columns), with its exact size."""
    data = _fake_dataset(2, w=16)
    perfect = evaluate.evaluate_predictions(lambda b: b["depth_dense"], data, "cpu", progress=False)
    assert perfect["column_bands"]["ground_truth"] == "dense"
    assert perfect["column_bands"]["abs_rel"] == pytest.approx([0.0] * evaluate.NUM_BANDS, abs=1e-7)

    def left_edge_far(batch):
        depth = batch["depth_dense"].clone()
        depth[..., :2] *= 1.25  # 25 % too far in the two leftmost columns of every view
        return depth

    bands = evaluate.evaluate_predictions(left_edge_far, data, "cpu", progress=False)["column_bands"]["abs_rel"]
    assert bands[0] == pytest.approx(0.25, rel=1e-5)
    assert bands[1:] == pytest.approx([0.0] * (evaluate.NUM_BANDS - 1), abs=1e-7)
    sparse_only = [{k: v for k, v in item.items() if k != "depth_dense"} for item in data]
    res = evaluate.evaluate_predictions(lambda b: 2.0 * b["depth"], sparse_only, "cpu", progress=False)
    assert res["column_bands"]["ground_truth"] == "sparse"  # without dense ground truth: the LiDAR pixels
    assert res["column_bands"]["abs_rel"] == pytest.approx([1.0] * evaluate.NUM_BANDS, rel=1e-6)
    assert "Metric AbsRel by column band, left to right (sparse" in evaluate.format_table(res, "t")


def test_mean_metrics_sums_counts_only_where_every_row_has_them():
    """Rows from compute_depth_metrics (no pixel count, e.g. the teacher rows of the ablation) average
    without a 'num_pixels'; rows that carry counts get them summed, not averaged."""
    gt = np.array([[2.0, 4.0], [8.0, 0.0]])
    a = evaluate.compute_depth_metrics(gt * 1.1, gt)
    b = evaluate.compute_depth_metrics(gt * 0.5, gt)
    mean = evaluate.mean_metrics([a, b, None])
    assert mean["abs_rel"] == pytest.approx((0.1 + 0.5) / 2) and mean["num_images"] == 2
    assert "num_pixels" not in mean
    counted = evaluate.mean_metrics([{**a, "num_pixels": 3}, {**b, "num_pixels": 5}])
    assert counted["num_pixels"] == 8 and counted["abs_rel"] == pytest.approx(0.3)
