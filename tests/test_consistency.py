"""Tests of the cross-view consistency metric, Eq. (20), in evaluate.py and of the bird's-eye
figure in viz.py, on synthetic surround samples at the default size (96 x 160).

- the dense ground truth, used as the prediction, is consistent (< 1e-3) with the dense and with
  the sparse reference, and the overlaps hold enough pixels for that to mean something;
- the compared pixels come from the ground truth only: a grossly wrong prediction is scored on
  exactly the same pixels, not dropped;
- scaling one view by 1.2 gives 0.2 on the pairs that include it (exactly 0.2 where it is the
  target view: the definition is max(a / b, b / a) - 1) and leaves the other pairs at ~0;
- wrong geometry is caught: poses with the rotation transposed match few pixels of the reference;
- evaluate_predictions reports 'cross_view' (pixel-weighted over samples per pair), pixels chosen
  by depth_dense when it is there and by the sparse depth when not; format_table shows it;
- bev_raster (the panels of bev_figure): points in every panel, front up and right on the right.
"""
import numpy as np
import pytest

import evaluate
import viz
from rig import ADJACENT_PAIRS, CAMERAS
from synthetic import SyntheticSurround

SCALE = 1.2  # the per-view scale error of the tests: 20 % too far


def pair_key(n, m):
    return f"{CAMERAS[n]}->{CAMERAS[m]}"


@pytest.fixture(scope="module")
def samples():
    """The first two synthetic test samples at the default size (96 x 160)."""
    data = SyntheticSurround("test", length=2)
    return [data[0], data[1]]


def geometry(sample):
    """(dense (N, H, W), intrinsics (N, 3, 3), cam_to_ego (N, 4, 4)) as numpy."""
    return (sample["depth_dense"][:, 0].numpy(), sample["intrinsics"].numpy(), sample["cam_to_ego"].numpy())


def test_ground_truth_is_consistent(samples):
    dense, k, pose = geometry(samples[0])
    res = evaluate.cross_view_consistency(dense, k, pose, reference=dense)
    assert set(res["per_pair"]) == {pair_key(n, m) for n, m in ADJACENT_PAIRS}
    assert res["mean_rel"] < 1e-3
    assert res["num_pixels"] > 3000  # several overlaps of ~1000 pixels each, not an empty mask
    with_pixels = [p for p in res["per_pair"].values() if p["num_pixels"]]
    assert len(with_pixels) >= 4 and all(p["mean_rel"] < 1e-3 for p in with_pixels)
    assert res["num_pixels"] == sum(p["num_pixels"] for p in res["per_pair"].values())
    # a sparse (LiDAR) reference: fewer pixels, chosen by the LiDAR points both views see
    sparse = samples[0]["depth"][:, 0].numpy()
    res = evaluate.cross_view_consistency(dense, k, pose, reference=sparse)
    assert res["mean_rel"] < 1e-2 and 20 < res["num_pixels"] < (sparse > 0).sum()


@pytest.mark.parametrize("factor", [3.0, 0.2])
def test_a_wrong_prediction_is_scored_on_the_same_pixels(samples, factor):
    """The pixel set of Eq. (20) depends on the ground truth only: a view predicted 3x too far
    (or 5x too near) is compared on exactly the pixels of a perfect prediction, and its pairs
    show the error (max(a / b, b / a) - 1 = 2 or 4), instead of dropping out."""
    dense, k, pose = geometry(samples[0])
    wrong = dense.copy()
    wrong[1] *= factor
    right = evaluate.cross_view_consistency(dense, k, pose, reference=dense)
    bad = evaluate.cross_view_consistency(wrong, k, pose, reference=dense)
    for key in right["per_pair"]:
        assert bad["per_pair"][key]["num_pixels"] == right["per_pair"][key]["num_pixels"], key
    expected = max(factor, 1 / factor) - 1
    pair = bad["per_pair"][pair_key(0, 1)]  # CAM_FRONT_RIGHT is the target view: exactly factor
    if pair["num_pixels"]:
        assert pair["mean_rel"] == pytest.approx(expected, rel=1e-2)
    touched = [bad["per_pair"][pair_key(n, m)] for n, m in ADJACENT_PAIRS if 1 in (n, m)]
    assert any(p["num_pixels"] for p in touched)
    assert all(p["mean_rel"] > 0.5 * expected for p in touched if p["num_pixels"])


@pytest.mark.parametrize("view", [0, 3])
@pytest.mark.parametrize("reference", ["dense", "sparse"])
def test_one_scaled_view_shows_in_its_pairs_only(samples, view, reference):
    dense, k, pose = geometry(samples[0])
    pred = dense.copy()
    pred[view] *= SCALE
    ref = dense if reference == "dense" else samples[0]["depth"][:, 0].numpy()
    res = evaluate.cross_view_consistency(pred, k, pose, reference=ref)
    for n, m in ADJACENT_PAIRS:
        pair = res["per_pair"][pair_key(n, m)]
        if pair["num_pixels"] == 0:
            continue
        if view == m:  # the target is scaled, the projected depths are not: exactly SCALE - 1
            assert pair["mean_rel"] == pytest.approx(SCALE - 1, abs=2e-3), (n, m)
        elif view == n:  # the source is scaled: its points move along its rays, ~SCALE - 1
            assert SCALE - 1 - 0.05 < pair["mean_rel"] < SCALE - 1 + 0.05, (n, m)
        else:
            assert pair["mean_rel"] < 1e-2, (n, m)
    touched = [pair_key(n, m) for n, m in ADJACENT_PAIRS if view in (n, m)]
    assert sum(res["per_pair"][key]["num_pixels"] > 0 for key in touched) >= 1


def test_transposed_rotation_is_caught(samples):
    dense, k, pose = geometry(samples[0])
    wrong = pose.copy()
    wrong[:, :3, :3] = pose[:, :3, :3].transpose(0, 2, 1)  # ego -> camera used as camera -> ego
    right = evaluate.cross_view_consistency(dense, k, pose, reference=dense)
    bad = evaluate.cross_view_consistency(dense, k, wrong, reference=dense)
    assert bad["num_pixels"] < 0.1 * right["num_pixels"]  # the reference no longer agrees with itself


def test_evaluate_predictions_reports_cross_view(samples):
    def predict(batch):  # CAM_BACK 20 % too far
        depth = batch["depth_dense"].clone()
        depth[:, 3] *= SCALE
        return depth

    res = evaluate.evaluate_predictions(predict, samples, "cpu", progress=False)
    cv = res["cross_view"]
    singles = []
    for sample in samples:
        dense, k, pose = geometry(sample)
        pred = dense.copy()
        pred[3] *= SCALE
        singles.append(evaluate.cross_view_consistency(pred, k, pose, reference=dense))
    for key, pair in cv["per_pair"].items():  # per pair: pixel-weighted over the samples
        rows = [s["per_pair"][key] for s in singles]
        assert pair["num_pixels"] == sum(r["num_pixels"] for r in rows)
        if pair["num_pixels"]:
            weighted = sum(r["mean_rel"] * r["num_pixels"] for r in rows if r["num_pixels"]) / pair["num_pixels"]
            assert pair["mean_rel"] == pytest.approx(weighted, rel=1e-9)
    assert cv["mean_rel"] == pytest.approx(np.mean([p["mean_rel"] for p in cv["per_pair"].values()
                                                    if p["mean_rel"] is not None]), rel=1e-9)
    assert cv["per_pair"][pair_key(2, 3)]["mean_rel"] == pytest.approx(SCALE - 1, abs=2e-3)
    assert cv["per_pair"][pair_key(0, 1)]["mean_rel"] < 1e-3
    table = evaluate.format_table(res, "back scaled")
    assert f"Cross-view consistency (Eq. 20): mean relative disagreement = {cv['mean_rel']:.4f}" in table
    assert f"{pair_key(2, 3)} 0.2000" in table

    # no dense ground truth: the sparse depth chooses the pixels
    sparse_only = [{k: v for k, v in samples[0].items() if k != "depth_dense"}]
    dense = samples[0]["depth_dense"][None]  # (1, N, 1, H, W)
    res = evaluate.evaluate_predictions(lambda b: dense, sparse_only, "cpu", progress=False)
    assert res["cross_view"]["mean_rel"] < 1e-2 and res["cross_view"]["num_pixels"] > 20
    # no rig (intrinsics, cam_to_ego): no Eq. (20), and no line in the table
    no_rig = [{k: v for k, v in s.items() if k not in ("intrinsics", "cam_to_ego")} for s in samples[:1]]
    res = evaluate.evaluate_predictions(lambda b: b["depth_dense"], no_rig, "cpu", progress=False)
    assert res["cross_view"] is None
    assert "Eq. 20" not in evaluate.format_table(res, "no rig")


def test_bev_figure_panels_and_orientation(samples):
    dense, k, pose = geometry(samples[0])
    scaled = dense.copy()
    scaled[0] *= SCALE
    panels = {"ground truth": dense, "front scaled": scaled, "sparse": samples[0]["depth"][:, 0].numpy()}
    image = np.concatenate([viz.bev_raster(depth, k, pose, extent=40.0) for depth in panels.values()], axis=1)
    size = viz.BEV_PANEL_SIZE
    assert image.dtype == np.uint8 and image.shape == (size, len(panels) * size, 3)
    colors = np.asarray(viz.CAMERA_COLORS)
    for i in range(len(panels)):
        panel = image[:, i * size:(i + 1) * size]
        of_camera = (panel[:, :, None, :] == colors).all(axis=-1)  # (S, S, N): pixel has camera n's colour
        assert of_camera.any(axis=-1).sum() > 500, i  # points drawn, not only background and text
        front_rows, back_rows = np.nonzero(of_camera[:, :, 0])[0], np.nonzero(of_camera[:, :, 3])[0]
        assert np.median(front_rows) < size / 2 < np.median(back_rows), i  # ego x forward is up
        right_cols = np.nonzero(of_camera[:, :, 1])[1]  # CAM_FRONT_RIGHT
        assert np.median(right_cols) > size / 2, i  # ego y left is to the left
