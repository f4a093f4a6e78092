"""Tests of the cross-view consistency metric, Eq. (20), in evaluate.py and of the bird's-eye
figure in viz.py, on synthetic surround samples at the default size (96 x 160).

- the dense ground truth, used as the prediction, is consistent (< 1e-3) with and without the
  reference mask, and the overlaps hold enough pixels for that to mean something;
- scaling one view by 1.2 gives 0.2 on the pairs that include it (exactly 0.2 where it is the
  target view: the definition is max(a / b, b / a) - 1) and leaves the other pairs at ~0;
- wrong geometry is caught: poses with the rotation transposed match few pixels against the
  reference, and disagree by far more than 20 % without it;
- evaluate_predictions reports 'cross_view' (pixel-weighted over samples per pair), with the
  reference mask when depth_dense is there and the occlusion test when not; format_table shows it;
- bev_figure: one panel per entry, points in every panel, front up and right on the right.
"""
import numpy as np
import pytest

import evaluate
import viz
from data import ADJACENT_PAIRS, CAMERAS
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
    assert res["same_surface"] == "reference"
    assert res["mean_rel"] < 1e-3
    assert res["num_pixels"] > 3000  # several overlaps of ~1000 pixels each, not an empty mask
    with_pixels = [p for p in res["per_pair"].values() if p["num_pixels"]]
    assert len(with_pixels) >= 4 and all(p["mean_rel"] < 1e-3 for p in with_pixels)
    assert res["num_pixels"] == sum(p["num_pixels"] for p in res["per_pair"].values())
    # without reference: the occlusion test alone keeps as many pixels and stays ~0
    res = evaluate.cross_view_consistency(dense, k, pose)
    assert res["same_surface"] == "occlusion test"
    assert res["mean_rel"] < 1e-2 and res["num_pixels"] > 3000


@pytest.mark.parametrize("view", [0, 3])
@pytest.mark.parametrize("with_reference", [True, False])
def test_one_scaled_view_shows_in_its_pairs_only(samples, view, with_reference):
    dense, k, pose = geometry(samples[0])
    pred = dense.copy()
    pred[view] *= SCALE
    res = evaluate.cross_view_consistency(pred, k, pose, reference=dense if with_reference else None)
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
    bad = evaluate.cross_view_consistency(dense, k, wrong)
    assert bad["mean_rel"] > 0.5  # and the points land on unrelated surfaces


def test_evaluate_predictions_reports_cross_view(samples):
    def predict(batch):  # CAM_BACK 20 % too far
        depth = batch["depth_dense"].clone()
        depth[:, 3] *= SCALE
        return depth

    res = evaluate.evaluate_predictions(predict, samples, "cpu", progress=False)
    cv = res["cross_view"]
    assert cv["same_surface"] == "reference"
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

    # no dense ground truth: the occlusion test decides what counts
    sparse_only = [{k: v for k, v in samples[0].items() if k != "depth_dense"}]
    dense = samples[0]["depth_dense"][None]  # (1, N, 1, H, W)
    res = evaluate.evaluate_predictions(lambda b: dense, sparse_only, "cpu", progress=False)
    assert res["cross_view"]["same_surface"] == "occlusion test"
    assert res["cross_view"]["mean_rel"] < 1e-2
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
    image = viz.bev_figure(panels, k, pose, extent=40.0)
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
