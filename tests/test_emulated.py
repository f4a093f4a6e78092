"""Tests of emulated.py (each error of the emulated teacher, pinned alone) and of
evaluate.affine_invariant_metrics (the Depth Anything zero-shot protocol)."""
import math

import numpy as np
import pytest
import torch

import emulated
from evaluate import affine_invariant_metrics

H, W, F_PX, CAM_HEIGHT = 24, 40, 20.0, 1.5  # a pinhole camera 1.5 m above a flat ground


def ground_and_box(box_depth=8.0, box_cols=(10, 18), second_box=None):
    """(1, 1, H, W): sky above the horizon row H/2, a ground plane below (z = f h / (v - H/2)),
    and fronto-parallel boxes (constant z) standing on the ground, rows 6 .. their foot."""
    depth = torch.zeros(1, 1, H, W)
    v = torch.arange(H, dtype=torch.float32) + 0.5
    below = v > H / 2
    depth[0, 0, below, :] = (F_PX * CAM_HEIGHT / (v[below] - H / 2))[:, None]
    for z, (c0, c1) in [(box_depth, box_cols)] + ([] if second_box is None else [second_box]):
        foot = H / 2 + F_PX * CAM_HEIGHT / z  # the row where the box meets the ground
        rows = (v > 6) & (v < foot)
        depth[0, 0, rows, c0:c1] = z
    return depth


def draws(depth):
    """The generator draws of `emulated_disparity`, restated: a, b, warp field, piece noise."""
    gen = torch.Generator().manual_seed(emulated.content_seed(depth[0, 0]))
    lo, hi = torch.tensor(emulated.EMULATED_SCALE_RANGE).log()
    a = torch.exp(lo + (hi - lo) * torch.rand((), generator=gen))
    b = emulated.EMULATED_SHIFT_RANGE[0] + (emulated.EMULATED_SHIFT_RANGE[1] - emulated.EMULATED_SHIFT_RANGE[0]) \
        * torch.rand((), generator=gen)
    torch.rand((1, 1) + emulated.EMULATED_WARP_GRID, generator=gen)
    return a, b, torch.randn(H * W, generator=gen)


def only(monkeypatch, **amounts):
    """Switch every error of (b)-(d) off except those given."""
    monkeypatch.setattr(emulated, "EMULATED_WARP", amounts.get("warp", 0.0))
    monkeypatch.setattr(emulated, "EMULATED_ORDER", amounts.get("order", 0.0))
    monkeypatch.setattr(emulated, "EMULATED_FAR_DEPTH", amounts.get("far", math.inf))


def test_segments_split_a_box_from_the_ground_it_stands_on():
    depth = ground_and_box()
    labels = emulated.depth_segments(depth)[0, 0]
    sky = depth[0, 0] == 0
    assert torch.all(labels[sky] == -1)
    pieces = set(labels.unique().tolist()) - {-1}
    assert len(pieces) == 2  # the ground and the box, though they touch at the box's foot
    box = labels[8, 12]
    assert box >= 0 and torch.all(labels[7:10, 11:17] == box)
    assert labels[H - 1, 0] >= 0 and labels[H - 1, 0] != box
    assert box == int(torch.nonzero(labels.flatten() == box)[0])  # the label: its smallest flat index
    # Each map on its own: a batch gives the same labels as one map alone.
    batch = torch.cat([ground_and_box(box_depth=5.0), depth])
    assert torch.equal(emulated.depth_segments(batch)[1, 0], labels)


def test_no_error_is_exact_affine_inverse_depth(monkeypatch):
    only(monkeypatch)
    depth = ground_and_box()
    r = emulated.emulated_disparity(depth, emulated.depth_segments(depth), strength=1.0, blur_sigma=0.0)
    a, b, _ = draws(depth)
    sky = depth == 0
    torch.testing.assert_close(r[~sky], a / depth[~sky] + b)
    assert torch.all(r[sky] == b)


def test_order_error_one_factor_per_piece(monkeypatch):
    # (c) alone: r - b = a / D * exp(ORDER * S * n_label), n the label's normal draw.
    only(monkeypatch, order=0.12)
    depth = ground_and_box(box_depth=8.0, second_box=(8.4, (24, 32)))
    labels = emulated.depth_segments(depth)
    r = emulated.emulated_disparity(depth, labels, strength=2.0, blur_sigma=0.0)
    a, b, noise = draws(depth)
    inside = labels >= 0
    factor = torch.exp(0.12 * 2.0 * noise[labels[inside]])
    torch.testing.assert_close(r[inside], a / depth[inside] * factor + b)
    creases = (labels < 0) & (depth > 0)
    torch.testing.assert_close(r[creases], a / depth[creases] + b)  # creases keep factor 1
    first, second = labels[0, 0, 8, 12], labels[0, 0, 8, 26]
    assert first != second  # two boxes, two independent factors


def test_far_range_saturates(monkeypatch):
    # (d) alone: r - b = a * sqrt(1 / D^2 + (S / FAR)^2): beyond FAR / S the disparity flattens.
    only(monkeypatch, far=60.0)
    depth = ground_and_box()
    r = emulated.emulated_disparity(depth, emulated.depth_segments(depth), strength=2.0, blur_sigma=0.0)
    a, b, _ = draws(depth)
    valid = depth > 0
    torch.testing.assert_close(r[valid], a * torch.sqrt(depth[valid] ** -2 + (2.0 / 60.0) ** 2) + b)
    # 100 m and 200 m: true disparities differ by 2x, the saturated ones by less than 10 %.
    sat = lambda d: math.sqrt(d ** -2 + (2.0 / 60.0) ** 2)  # noqa: E731
    assert sat(100.0) / sat(200.0) < 1.1


def test_blur_softens_a_depth_edge(monkeypatch):
    # (a) alone: a step from 5 m to 20 m becomes a ramp of several pixels, still monotone.
    only(monkeypatch)
    depth = torch.full((1, 1, 8, 30), 5.0)
    depth[..., 15:] = 20.0
    r = emulated.emulated_disparity(depth, emulated.depth_segments(depth), 1.0, blur_sigma=1.5)[0, 0, 4]
    steps = (r[:-1] - r[1:])  # >= 0: disparity falls left to right
    assert torch.all(steps >= -1e-7)
    assert int((steps > 1e-3 * steps.max()).sum()) >= 5  # spread over >= 5 pixel steps, not 1


def test_affine_invariant_metrics_by_hand():
    # Exact up to scale and shift in disparity: zero error.
    gt = np.array([[2.0, 5.0], [10.0, 40.0]])
    m = affine_invariant_metrics(3.0 / gt + 0.5, gt)
    assert m["abs_rel"] == pytest.approx(0.0, abs=1e-12) and m["a1"] == 1.0
    # Three valid pixels, 1 / D* = (1, 1, 0.5), r = (0, 1, 1): least squares s r + t gives t = 1,
    # s = -0.25 -> disparities (1, 0.75, 0.75) -> depths (1, 4/3, 4/3) vs (1, 1, 2):
    # |g - p| / g per pixel = 0, 1/3, (2 - 4/3) / 2 = 1/3, so AbsRel = 2/9.
    gt = np.array([[1.0, 1.0, 2.0, 0.0]])  # the last pixel has no ground truth
    m = affine_invariant_metrics(np.array([[0.0, 1.0, 1.0, 7.0]]), gt)
    assert m["abs_rel"] == pytest.approx(2.0 / 9.0)
    assert m["a1"] == pytest.approx(1.0 / 3.0)  # ratios 1, 4/3, 3/2: only the first < 1.25
    # In disparity space (the Depth Anything papers' AbsRel): |(1, 0.75, 0.75) - (1, 1, 0.5)| / (1, 1, 0.5)
    # = (0, 1/4, 1/2), mean 1/4.
    assert m["abs_rel_disparity"] == pytest.approx(0.25)
    assert affine_invariant_metrics(np.ones((2, 2)), np.zeros((2, 2))) is None


def test_error_grows_with_strength():
    depth = torch.cat([ground_and_box(), ground_and_box(box_depth=15.0, second_box=(16.0, (24, 34)))])
    labels = emulated.depth_segments(depth)
    errors = []
    for strength in (0.0, 1.0, 3.0):
        r = torch.cat([emulated.emulated_disparity(depth[i:i + 1], labels[i:i + 1], strength) for i in range(2)])
        errors.append(np.mean([affine_invariant_metrics(r[i, 0], depth[i, 0])["abs_rel"] for i in range(2)]))
    assert errors[0] < errors[1] < errors[2]
