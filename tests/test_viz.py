"""Tests of the pictures (viz.py): the colour map and its bar in meters, camera names on the tiles,
the 'no ground truth' legend, the bird's-eye view's metre grid and scale, training curves (and
curves.png after a tiny training run), the interval chart and ablation.png's numbers. Figures are
checked through their artists before rasterising, and through their pixels after."""
import json
import math
import os

import numpy as np
import pytest
from matplotlib import colormaps
from PIL import Image

import train
import viz
from benchmarks import ablation
from rig import CAMERAS
from synthetic import camera_rig

SIZE = (24, 40)  # (H, W) of the hand-made depth maps: small, so every figure renders fast


def texts(figure):
    """Every string a Figure shows: its own texts, its axes' texts and titles, its legends'."""
    found = [t.get_text() for t in figure.texts]
    for ax in figure.axes:
        found += [t.get_text() for t in ax.texts] + [ax.get_title()]
    return found + [t.get_text() for legend in figure.legends for t in legend.get_texts()]


def colour_bar(figure):
    """The colour-bar axes of a depth figure."""
    (bar,) = [ax for ax in figure.axes if ax.get_label() == "colour bar"]
    return bar


def ramp(near=2.0, far=60.0, size=SIZE):
    """A depth map (H, W) meters from `near` (left) to `far` (right), the same on every row."""
    return np.broadcast_to(np.linspace(near, far, size[1]), size).copy()


def test_colorize_is_magma_in_inverse_depth_and_no_depth_gets_the_legend_colour():
    depth = ramp()
    depth[:, 5] = 0.0  # a column without (ground-truth) depth
    rgb = viz.colorize(depth, (1 / 60.0, 1 / 2.0))
    assert rgb.dtype == np.uint8 and rgb.shape == SIZE + (3,)
    assert (rgb[:, 5] == viz.NO_DEPTH_COLOR).all()
    magma = colormaps["magma"]
    assert np.array_equal(rgb[0, 0], magma(1.0, bytes=True)[:3])  # nearest: the bright end
    assert np.array_equal(rgb[0, -1], magma(0.0, bytes=True)[:3])  # farthest: the dark end
    middle = (1 / depth[0, 20] - 1 / 60.0) / (1 / 2.0 - 1 / 60.0)  # linear in inverse depth
    assert np.abs(rgb[0, 20].astype(int) - magma(middle, bytes=True)[:3]).max() <= 1
    luminance = rgb[0].astype(float) @ [0.299, 0.587, 0.114]
    assert (np.diff(np.delete(luminance, 5)) <= 0).all()  # farther is never brighter


def test_inverse_depth_range_is_robust_and_never_empty():
    depth = np.full((10, 10), 20.0)
    depth[0, 0] = 0.5  # one very near pixel: above the 95th percentile, it does not set the top
    lo, hi = viz.inverse_depth_range([depth, np.zeros((3, 3))])
    assert lo == pytest.approx(1 / 20.0) and hi == pytest.approx(1 / 20.0 * (1 + viz.MIN_RELATIVE_RANGE))
    assert viz.inverse_depth_range([ramp(2.0, 60.0)])[1] < 1 / 2.0


def test_nice_values():
    assert viz.nice_values(3, 60) == [5, 10, 20, 50]
    assert viz.nice_values(0.3, 0.6, range(1, 10)) == pytest.approx([0.3, 0.4, 0.5, 0.6])


@pytest.mark.parametrize("near, far, gap", [(2.0, 80.0, 0.05), (1.6, 80.0, 0.3), (10.3, 11.8, 0.2), (0.1, 200.0, 0.05)])
def test_depth_ticks_are_round_meters_in_range_and_apart(near, far, gap):
    lo, hi = 1 / far, 1 / near
    ticks = viz.depth_ticks((lo, hi), gap)
    assert len(ticks) >= 2 and ticks == sorted(ticks)
    assert all(near <= d <= far for d in ticks)
    place = (1 / np.asarray(ticks) - lo) / (hi - lo)
    assert (np.abs(np.diff(place)) >= gap - 1e-12).all()
    if far / near > 10:  # a wide range is labelled with 1-2-5 depths and single digits only
        assert all(round(d / 10 ** math.floor(math.log10(d)), 6) in range(1, 10) for d in ticks)


def test_tile_scale():
    assert viz.tile_scale(80) == 3.0 and viz.tile_scale(240) == 1.0  # whole factors up to MIN_TILE_WIDTH
    assert viz.tile_scale(1600) == pytest.approx(viz.MAX_TILE_WIDTH / 1600)
    assert viz.tile_scale(1600, max_width=None) == 1.0


def test_rig_rows_lay_the_tiles_out_like_the_rig():
    rows = viz.rig_rows(list(range(6)), names=[f"cam{n}" for n in range(6)])
    assert rows == [[("cam5", 5), ("cam0", 0), ("cam1", 1)], [("cam4", 4), ("cam3", 3), ("cam2", 2)]]


def test_sample_figure_names_cameras_has_a_metre_colour_bar_and_the_no_ground_truth_legend():
    rng = np.random.default_rng(0)
    images = rng.random((6, 3) + SIZE)
    pred = np.stack([ramp(2.0 + n, 60.0) for n in range(6)])[:, None]  # (6, 1, H, W)
    gt = np.where(rng.random(pred.shape) < 0.1, pred, 0.0)  # sparse
    figure = viz.sample_figure(images, pred, gt, "#3")
    shown = texts(figure)
    assert all(shown.count(camera) == 3 for camera in CAMERAS)  # image, prediction, ground truth
    assert {"#3 image", "#3 prediction", "#3 ground truth (sparse LiDAR)"} <= set(shown)
    bar = colour_bar(figure)
    assert bar.get_ylabel() == "depth (m)"
    labels = [float(t.get_text()) for t in bar.get_yticklabels()]  # meters, plain numbers
    positions = bar.get_yticks()
    assert len(labels) >= 3 and np.allclose(positions, 1 / np.asarray(labels))  # at their inverse depth
    order = np.argsort(positions)  # bottom to top: the depth falls, near is on top
    assert (np.diff(np.asarray(labels)[order]) < 0).all() and bar.get_ylim()[1] > bar.get_ylim()[0]
    (legend,) = figure.legends
    assert [t.get_text() for t in legend.get_texts()] == ["no ground truth"]
    assert np.allclose(legend.legend_handles[0].get_facecolor()[:3], np.asarray(viz.NO_DEPTH_COLOR) / 255)
    picture = viz.render(figure)
    assert (picture == viz.NO_DEPTH_COLOR).all(axis=-1).sum() > 100  # the drawn pixels carry the legend's colour


def test_surround_figure_colours_the_six_views_in_one_range():
    depths = [ramp(2.0 + 3 * n, 40.0 + 5 * n, size=(20 + n, 40)) for n in range(6)]  # sizes may differ
    figure = viz.surround_figure(depths)
    value_range = viz.inverse_depth_range(depths)
    tiles = {t.get_text(): t.axes for ax in figure.axes for t in ax.texts}
    assert set(tiles) == set(CAMERAS)
    for camera, depth in zip(CAMERAS, depths):
        assert np.array_equal(tiles[camera].images[0].get_array(), viz.colorize(depth, value_range))
    assert not figure.legends  # a prediction has depth everywhere


def test_depth_figure_keeps_the_resolution_and_draws_a_bar_beside_it():
    depth = ramp(size=(300, 500))
    figure = viz.depth_figure(depth, "a_CAM_FRONT")
    assert "a_CAM_FRONT" in texts(figure)
    picture = viz.render(figure)
    (ax,) = [a for a in figure.axes if a.images]
    box = ax.get_window_extent()
    assert (round(box.width), round(box.height)) == (500, 300)  # drawn 1:1, not resampled
    assert picture.shape[1] == 500 + 2 * viz.MARGIN + viz.BAR_STRIP
    assert colour_bar(figure).get_window_extent().x0 > box.x1  # the bar beside the depth


def test_bev_raster_puts_each_camera_where_it_looks():
    intrinsics, cam_to_ego = camera_rig(SIZE)
    raster = viz.bev_raster(np.full((6,) + SIZE, 10.0), intrinsics, cam_to_ego, extent=20.0, size=200)
    center = 100
    for n, colour in enumerate(viz.CAMERA_COLORS):
        rows, cols = np.nonzero((raster == colour).all(axis=-1))
        assert len(rows) > 10, CAMERAS[n]
    front = np.nonzero((raster == viz.CAMERA_COLORS[0]).all(axis=-1))
    back = np.nonzero((raster == viz.CAMERA_COLORS[3]).all(axis=-1))
    assert np.median(front[0]) < center - 40 and np.median(back[0]) > center + 40  # 10 m = 50 px ahead / behind
    assert (raster == viz.BEV_BACKGROUND).all(axis=-1).mean() > 0.5


def test_grid_spacing_is_a_round_step_with_enough_lines():
    assert viz.grid_spacing(40.0) == 10.0 and viz.grid_spacing(100.0) == 20.0 and viz.grid_spacing(5.0) == 1.0
    for extent in (7.0, 40.0, 80.0, 200.0):
        assert extent / viz.grid_spacing(extent) >= viz.GRID_LINES


def test_bev_figure_has_a_metre_grid_a_scale_and_named_cameras():
    intrinsics, cam_to_ego = camera_rig(SIZE)
    depth = np.full((6,) + SIZE, 10.0)
    figure = viz.bev_figure({"a": depth, "b": depth}, intrinsics, cam_to_ego, extent=40.0)
    panels = [ax for ax in figure.axes if ax.images]
    assert [ax.get_title() for ax in panels] == ["a", "b"]
    for ax in panels:
        assert np.allclose(np.diff(sorted(ax.get_xticks())), 10.0) and np.allclose(np.diff(ax.get_yticks()), 10.0)
        assert all(line.get_visible() for line in ax.get_xgridlines() + ax.get_ygridlines())  # the metre grid
        assert "10 m" in [t.get_text() for t in ax.texts]  # the scale bar
        (bar,) = [line for line in ax.get_lines() if line.get_linewidth() == 2]
        assert abs(np.diff(bar.get_xdata())[0]) == pytest.approx(10.0)  # as long as its label says
    assert [t.get_text() for t in figure.legends[0].get_texts()] == list(CAMERAS)
    assert viz.render(figure).shape[:2] == (sum(viz.BEV_AXES_MARGIN[1:]) + viz.BEV_PANEL_SIZE,
                                            2 * (viz.BEV_AXES_MARGIN[0] + viz.BEV_PANEL_SIZE) + viz.MARGIN
                                            + viz.BEV_LEGEND_WIDTH)


def test_binned_averages_a_long_curve_to_at_most_the_points_asked():
    steps, values = viz.binned(np.arange(1, 1001), np.arange(1000.0), points=200)
    assert len(steps) == len(values) == 200
    assert steps[0] == pytest.approx(3.0) and values[0] == pytest.approx(2.0)  # steps 1-5, values 0-4
    assert viz.binned([1, 2], [5.0, 6.0])[1].tolist() == [5.0, 6.0]  # short: as it is


def test_curves_figure_draws_every_logged_term_and_the_validation_abs_rel():
    records = [{"step": s, "lr": 1e-3, "loss": 2.0 / s, "si": 1.0 / s, "vr": 0.1, "time": 0.0} for s in (1, 2, 3)]
    records += [{"step": 3, "val": {"abs_rel": 0.2, "rmse": 3.0}}, {"step": 1, "rkd": 0.5, "loss": 1.0}]
    loss_ax, val_ax = viz.curves_figure(records).axes
    assert [line.get_label() for line in loss_ax.get_lines()] == ["loss", "si", "vr", "rkd"]
    assert loss_ax.get_yscale() == "log"
    assert val_ax.get_lines()[0].get_ydata().tolist() == [0.2]


def test_train_writes_curves_png_at_every_validation(tmp_path):
    out = tmp_path / "run"
    train.main(["--steps", "2", "--val-every", "1", "--image-size", "32", "64", "--num-bins", "16", "--batch-size",
                "1", "--val-samples", "1", "--workers", "0", "--out", str(out)])
    picture = Image.open(out / "curves.png")
    assert picture.size == tuple(round(x * viz.DPI) for x in viz.CURVES_SIZE)
    records = viz.read_log(out / "metrics.jsonl")
    logged = [k for k in records[0] if k not in viz.LOG_KEYS_NOT_TERMS]
    loss_ax, val_ax = viz.curves_figure(records).axes
    assert [line.get_label() for line in loss_ax.get_lines()] == logged == ["loss", "si", "bins", "kd", "cross", "vr"]
    assert len(val_ax.get_lines()[0].get_xdata()) == 2  # one point per validation
    assert not [f for f in os.listdir(out) if f.startswith(".tmp-")]


def test_interval_chart_draws_means_and_intervals_one_row_per_label():
    figure = viz.interval_chart(["a", "b"], [[1.0, -2.0], [3.0, 0.5]], [[0.0, -3.0], [2.0, np.nan]],
                                [[2.0, -1.0], [4.0, np.nan]], "% of the baseline", "t", series=["x", "y"])
    (ax,) = figure.axes
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a", "b"] and ax.get_ylim()[0] > ax.get_ylim()[1]
    assert ax.get_xlabel() == "% of the baseline" and "t" in texts(figure)
    first, second = ax.containers  # one errorbar per series
    assert first.lines[0].get_xdata().tolist() == [1.0, 3.0] and second.lines[0].get_xdata().tolist() == [-2.0, 0.5]
    segments = first.lines[2][0].get_segments()  # the x intervals of series x
    assert [tuple(s[:, 0]) for s in segments] == [(0.0, 2.0), (2.0, 4.0)]
    widths = [abs(s[1, 0] - s[0, 0]) for s in second.lines[2][0].get_segments()]
    assert widths == [2.0, 0.0]  # NaN: the mean alone
    assert [t.get_text() for t in figure.legends[0].get_texts()] == ["x", "y"]


def test_ablation_chart_holds_the_paired_differences_in_percent_of_the_baseline():
    def fake(abs_rel, dense):
        metrics = lambda a: {"abs_rel": a, "rmse": 10 * a, "a1": 1 - a}  # noqa: E731
        return {"all": {"sparse": metrics(abs_rel), "dense": metrics(dense)}}

    runs = {("baseline", 0): fake(0.10, 0.20), ("baseline", 1): fake(0.12, 0.22),
            ("CKD + VRKD", 0): fake(0.09, 0.15), ("CKD + VRKD", 1): fake(0.10, 0.18),
            ("response KD", 0): fake(0.095, 0.16), ("response KD", 1): None}
    figure = ablation.paired_chart(runs, ["baseline", "response KD", "CKD + VRKD"], [0, 1])
    (ax,) = figure.axes
    assert [t.get_text() for t in ax.get_yticklabels()] == ["response KD − baseline (n = 1)",
                                                           "CKD + VRKD − baseline (n = 2)"]
    sparse, dense = ax.containers
    # CKD + VRKD - baseline, sparse AbsRel: d = (-0.01, -0.02), mean -0.015 = -13.6 % of 0.11, half-width
    # t_{0.975, 1} sd / sqrt(2); response KD: seed 0 alone, -0.005 of 0.10 = -5 %, no interval.
    half = 12.706 * (0.01 / math.sqrt(2)) / math.sqrt(2) / 0.11 * 100
    assert sparse.lines[0].get_xdata() == pytest.approx([-5.0, -0.015 / 0.11 * 100])
    low, high = sparse.lines[2][0].get_segments()[1][:, 0]
    assert (low, high) == pytest.approx((-0.015 / 0.11 * 100 - half, -0.015 / 0.11 * 100 + half))
    assert dense.lines[0].get_xdata() == pytest.approx([-20.0, -0.045 / 0.21 * 100])
    assert ablation.paired_chart({("baseline", 0): fake(0.1, 0.2)}, ["baseline"], [0]) is None


def test_save_png_writes_figures_and_arrays_atomically(tmp_path):
    viz.save_png(viz.depth_figure(ramp(), "x"), tmp_path / "f.png")
    viz.save_png(np.zeros((4, 6, 3), np.uint8), tmp_path / "a.png")
    assert Image.open(tmp_path / "a.png").size == (6, 4) and Image.open(tmp_path / "f.png").mode == "RGB"
    assert sorted(os.listdir(tmp_path)) == ["a.png", "f.png"]
    assert viz.render(viz.depth_figure(ramp(), "x")).dtype == np.uint8


def test_read_log_reads_every_line(tmp_path):
    lines = [{"step": 1, "loss": 1.0}, {"step": 1, "val": {"abs_rel": 0.3}}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert viz.read_log(tmp_path / "metrics.jsonl") == lines
    viz.write_curves(tmp_path / "metrics.jsonl", tmp_path / "curves.png")
    assert Image.open(tmp_path / "curves.png").size[0] > 0
