"""Pictures people can read: depth in a perceptual colour map with a colour bar in meters and each
camera named on its tile, the surround montage laid out like the rig, the bird's-eye view with a
metre grid and a scale, training curves, and charts of intervals.

Used by evaluate.py (sample_*.png), infer.py (per-image PNGs and surround montages), train.py
(curves.png) and the benchmarks (bev.png: the lifting of Eq. (20) from above; ablation.png and
regime.png: paired differences with 95 % intervals). Depth is coloured as inverse depth (near =
bright) in 'magma' over a robust range ending at the 95th percentile, as monodepth2 and DA-V2 do.
The only file that imports matplotlib (Figure and the Agg canvas, never pyplot or a display).
"""
import json
import math

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle
from matplotlib.ticker import MaxNLocator
from PIL import Image

from cli import atomic_path
from rig import CAMERAS, back_project
from synthetic import CAR_LENGTH, CAR_WIDTH

DEPTH_CMAP = "magma"  # perceptually uniform, dark (far) to bright (near); Depth-Anything-V2 uses Spectral_r
ROBUST_PERCENTILE = 95  # the top of the colour range, robust to a few very near pixels
MIN_RELATIVE_RANGE = 0.01  # a constant depth map still gets a colour range, 1 % of its inverse depth
NO_DEPTH_COLOR = (110, 150, 170)  # pixels without (ground-truth) depth: a grey blue, a hue magma never takes
# The rig seen from above, front on top (names of rig.CAMERAS; `rig_rows` fits any dataset's ring).
MONTAGE_LAYOUT = (("CAM_FRONT_LEFT", "CAM_FRONT", "CAM_FRONT_RIGHT"),
                  ("CAM_BACK_LEFT", "CAM_BACK", "CAM_BACK_RIGHT"))
# Bird's-eye view: one colour per camera in the order of rig.CAMERAS (the first six colours
# of matplotlib's "tab10" palette), a square panel per method, a dark background.
CAMERA_COLORS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75))
BEV_PANEL_SIZE = 320  # pixels per side of one panel (its raster is drawn 1:1)
BEV_BACKGROUND = (16, 16, 16)
EGO_FOOTPRINT = (CAR_LENGTH, CAR_WIDTH)  # (length, width) of the car drawn at the origin, meters
GRID_LINES = 4  # about this many metre-grid lines from the ego origin to a panel's edge
SCALE_LABEL_LIFT = 0.1  # the BEV scale bar's label sits this share of the bar's length above it
NICE_MANTISSAS = (1, 2, 5)  # grid spacings and colour-bar ticks are these times a power of ten
# Layout of every figure, in pixels (DPI pixels per inch) and points.
DPI = 100
FONT_SIZE = 8  # points: tick labels, tile names, legends
MIN_TILE_WIDTH = 240  # a narrower tile is enlarged by a whole factor, pixel-exact, so its name fits
MAX_TILE_WIDTH = 640  # a montage tile wider than this is shrunk (a 1600-pixel nuScenes view)
MARGIN, GAP, HEADER = 6, 2, 20  # figure border; between tiles; the band above a block with its title
BAR_STRIP, BAR_WIDTH = 125, 14  # the strip right of the tiles; the colour bar in it
LEGEND_HEIGHT = 28  # below the colour bar: the 'no ground truth' swatch
TICK_SPACING = 40  # pixels at least between two labelled ticks of the colour bar (an 8-point line: 11)
MIN_TICKS = 2  # a colour bar shows at least this many labelled depths
BEV_AXES_MARGIN = (44, 24, 36)  # left (tick labels), top (title), bottom (tick labels) of a BEV panel
BEV_LEGEND_WIDTH = 140  # the camera legend right of the panels
LOG_KEYS_NOT_TERMS = ("step", "lr", "time")  # keys of a metrics.jsonl training line that are no loss term
CURVE_POINTS = 200  # a training curve averages consecutive steps so that at most this many points show
CURVES_SIZE = (10.0, 3.6)  # inches of curves.png
CHART_WIDTH, CHART_ROW, CHART_FIXED = 7.0, 0.25, 1.4  # inches: interval chart width, per row and series, the rest
SERIES_OFFSET = 0.3  # vertical offset between the series of one row of an interval chart (rows 1 apart)


def inverse_depth_range(depths):
    """Shared colour range (lo, hi) in 1/m of inverse depth over a list of depth maps (meters, 0 = none):
    the minimum to the ROBUST_PERCENTILE, at least MIN_RELATIVE_RANGE wide."""
    inv = np.concatenate([1.0 / d[d > 0] for d in depths if (d > 0).any()] or [np.ones(1)])
    lo = float(inv.min())
    return lo, max(float(np.percentile(inv, ROBUST_PERCENTILE)), lo * (1 + MIN_RELATIVE_RANGE))


def colorize(depth, value_range=None):
    """Depth (H, W) meters, 0 = none -> RGB uint8 (H, W, 3) in DEPTH_CMAP, near bright and far dark;
    pixels without depth get NO_DEPTH_COLOR. value_range: (lo, hi) inverse depth, 1/m."""
    depth = np.asarray(depth, dtype=np.float64)
    lo, hi = inverse_depth_range([depth]) if value_range is None else value_range
    valid = depth > 0
    x = np.clip((1.0 / np.where(valid, depth, 1.0) - lo) / max(hi - lo, 1e-12), 0, 1)
    rgb = colormaps[DEPTH_CMAP](x, bytes=True)[..., :3]
    rgb[~valid] = NO_DEPTH_COLOR
    return rgb


def nice_values(lo, hi, mantissas=NICE_MANTISSAS):
    """The numbers m * 10^k (m in mantissas: 1, 2, 5 by default) in [lo, hi], 0 < lo, ascending."""
    powers = range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1)
    values = (float(f"{m}e{k}") for k in powers for m in mantissas)  # decimal: 0.6, not 6 * 0.1
    return sorted(v for v in values if lo <= v <= hi)


def depth_ticks(value_range, min_gap):
    """Colour-bar ticks in meters for the inverse-depth range (lo, hi) 1/m: the round depths 1-2-5 times
    a power of ten, then 1-9 times one, then (if fewer than MIN_TICKS fit) the multiples of a 1-2-5 step,
    each kept while it stays at least min_gap (a fraction of the bar, which is linear in 1/depth) from
    every tick kept before -> depths ascending."""
    lo, hi = value_range
    near, far = 1.0 / hi, 1.0 / max(lo, 1e-12)
    place = lambda d: (1.0 / d - lo) / max(hi - lo, 1e-12)  # noqa: E731  (0 bottom, far; 1 top, near)
    kept = []

    def keep(candidates):  # greedy, in the order given
        kept.extend(round(float(d), 6) for d in candidates if all(abs(place(d) - place(k)) >= min_gap for k in kept))

    keep(nice_values(near, far))
    keep(nice_values(near, far, range(1, 10)))
    if len(kept) < MIN_TICKS:  # a narrow range: multiples of a step that fits MIN_TICKS times (a decade
        step = nice_values((far - near) / (10 * MIN_TICKS), (far - near) / MIN_TICKS)[-1]  # holds one)
        keep(np.arange(math.ceil(near / step), math.floor(far / step) + 1) * step)
    return sorted(kept)


def dilate_sparse(depth, radius=1):
    """Sparse depth (H, W) -> each point drawn as a (2r+1)^2 square, so it shows in a figure."""
    out = depth.copy()
    h, w = depth.shape
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            shifted = np.zeros_like(depth)
            shifted[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
                depth[max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)]
            out = np.where((out == 0) & (shifted > 0), shifted, out)
    return out


def to_uint8(image):
    """Image (3, H, W) or (H, W, 3), float in [0, 1] or already uint8 (nuScenes samples are) ->
    (H, W, 3) uint8."""
    image = np.asarray(image)
    if image.shape[0] == 3 and image.shape[-1] != 3:
        image = image.transpose(1, 2, 0)
    if image.dtype == np.uint8:
        return np.ascontiguousarray(image)
    return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)


def tile_scale(width, min_width=MIN_TILE_WIDTH, max_width=MAX_TILE_WIDTH):
    """How much a tile `width` pixels wide is scaled in a figure: a whole factor up to min_width,
    down to max_width (None: never down), else 1."""
    if width < min_width:
        return float(math.ceil(min_width / width))
    return max_width / width if max_width is not None and width > max_width else 1.0


def rig_rows(tiles, names=CAMERAS):
    """Six tiles in the order of rig.CAMERAS -> the rows of the rig seen from above, front row
    FL F FR, back row BL B BR, as [[(camera name, tile)]] (names: the cameras' names in ring order)."""
    place = {camera: (name, tile) for camera, name, tile in zip(CAMERAS, names, tiles)}
    return [[place[camera] for camera in row] for row in MONTAGE_LAYOUT]


def _axes_px(fig, rect):
    """An axes at the pixel rectangle rect = (left, top, width, height) of `fig`."""
    width, height = fig.get_size_inches() * fig.dpi
    x, y, w, h = rect
    return fig.add_axes((x / width, 1 - (y + h) / height, w / width, h / height))


def _colour_bar(fig, rect, value_range):
    """The depth colour bar at pixel rect: linear in inverse depth, ticks in meters, near on top."""
    cax = _axes_px(fig, rect)
    cax.set_label("colour bar")
    bar = fig.colorbar(ScalarMappable(Normalize(*value_range), colormaps[DEPTH_CMAP]), cax=cax, extend="max")
    ticks = depth_ticks(value_range, TICK_SPACING / rect[3])
    bar.set_ticks([1.0 / d for d in ticks], labels=[f"{d:g}" for d in ticks])
    bar.ax.tick_params(labelsize=FONT_SIZE)
    bar.set_label("depth (m)", fontsize=FONT_SIZE)


def tile_figure(blocks, value_range=None, legend=None, max_width=MAX_TILE_WIDTH):
    """Blocks of named tiles, one under the other, each under its title, with a colour bar in meters
    beside the depth blocks.

    blocks: [(title, rows, is_depth)], rows [[(name or None, RGB uint8 (h, w, 3))]]: every tile is drawn
    at the first one's size times `tile_scale`, its name in its top-left corner. value_range: the (lo, hi)
    inverse depth (1/m) of the depth tiles' colours, None for no bar; legend: the label of
    NO_DEPTH_COLOR under the bar, or None -> Figure.
    """
    h0, w0 = blocks[0][1][0][0][1].shape[:2]
    scale = tile_scale(w0, max_width=max_width)
    th, tw = round(h0 * scale), round(w0 * scale)
    cols = max(len(row) for _, rows, _ in blocks for row in rows)
    width = 2 * MARGIN + cols * tw + (cols - 1) * GAP + (BAR_STRIP if value_range is not None else 0)
    tops, bottoms, y = [], [], MARGIN
    for _, rows, _ in blocks:
        tops.append(y)
        y += HEADER + len(rows) * (th + GAP)
        bottoms.append(y - GAP)
    height = y - GAP + MARGIN
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, facecolor="white")
    for (title, rows, _), top in zip(blocks, tops):
        fig.text(MARGIN / width, 1 - (top + HEADER / 2) / height, title, va="center",
                 fontsize=FONT_SIZE + 1, weight="bold")
        for r, row in enumerate(rows):
            for c, (name, tile) in enumerate(row):
                ax = _axes_px(fig, (MARGIN + c * (tw + GAP), top + HEADER + r * (th + GAP), tw, th))
                ax.imshow(tile, interpolation="nearest", aspect="auto")
                ax.set_axis_off()
                if name:
                    ax.text(0.02, 0.97, name, transform=ax.transAxes, ha="left", va="top", color="white",
                            fontsize=FONT_SIZE, bbox=dict(facecolor="black", alpha=0.6, pad=1.5, linewidth=0))
    if value_range is not None:
        depth = [i for i, block in enumerate(blocks) if block[2]]
        top, bottom = tops[depth[0]] + HEADER, bottoms[depth[-1]] - (LEGEND_HEIGHT if legend else 0)
        left = width - MARGIN - BAR_STRIP + 2 * GAP
        _colour_bar(fig, (left, top, BAR_WIDTH, bottom - top), value_range)
        if legend:
            swatch = Patch(facecolor=np.asarray(NO_DEPTH_COLOR) / 255, edgecolor="black", linewidth=0.5, label=legend)
            fig.legend(handles=[swatch], loc="lower left", frameon=False, fontsize=FONT_SIZE, borderaxespad=0,
                       handlelength=1.2, handletextpad=0.5,
                       bbox_to_anchor=(left / width, 1 - bottoms[depth[-1]] / height))
    return fig


def sample_figure(images, pred, gt, title="", names=CAMERAS):
    """A surround sample as three rig montages stacked: image, prediction, ground truth; one colour
    bar in meters for all depth, every tile named by its camera, a legend for 'no ground truth'.

    images (6, 3, H, W) in [0, 1] (or uint8); pred, gt (6, 1, H, W) meters (gt 0 where none; a sparse
    gt is dilated so it shows) -> Figure.
    """
    pred, gt = np.asarray(pred)[:, 0], np.asarray(gt)[:, 0]
    sparse = (gt > 0).mean() < 0.5
    gt_show = [dilate_sparse(g) if sparse else g for g in gt]
    value_range = inverse_depth_range(list(gt_show) + list(pred))
    blocks = [(f"{title} image".strip(), rig_rows([to_uint8(im) for im in np.asarray(images)], names), False),
              (f"{title} prediction".strip(), rig_rows([colorize(p, value_range) for p in pred], names), True),
              (f"{title} ground truth ({'sparse LiDAR' if sparse else 'dense'})".strip(),
               rig_rows([colorize(g, value_range) for g in gt_show], names), True)]
    return tile_figure(blocks, value_range, legend="no ground truth")


def surround_figure(depths, names=CAMERAS, title="predicted depth"):
    """Six depth maps (H, W) meters in the order of rig.CAMERAS (sizes may differ) -> Figure: the rig
    montage in one colour range, each tile named, a colour bar in meters."""
    value_range = inverse_depth_range(list(depths))
    return tile_figure([(title, rig_rows([colorize(d, value_range) for d in depths], names), True)], value_range)


def depth_figure(depth, title):
    """One depth map (H, W) meters -> Figure: it at its own resolution (a small one enlarged by a whole
    factor), `title` above, a colour bar in meters beside it (robust range, ROBUST_PERCENTILE)."""
    value_range = inverse_depth_range([depth])
    return tile_figure([(title, [[(None, colorize(depth, value_range))]], True)], value_range, max_width=None)


def bev_raster(depth, intrinsics, cam_to_ego, extent=40.0, size=BEV_PANEL_SIZE):
    """The N views lifted to 3-D and seen from above -> RGB uint8 (size, size, 3): every pixel with
    depth > 0 is one dot in its camera's colour (CAMERA_COLORS), on BEV_BACKGROUND.

    depth (N, H, W) meters, 0 = none; intrinsics (N, 3, 3) at (H, W); cam_to_ego (N, 4, 4). The raster
    spans [-extent, extent] meters around the ego origin, ego x forward up, y left to the left;
    points outside it are dropped.
    """
    depth = np.asarray(depth, dtype=np.float64)
    scale = size / (2 * extent)  # pixels per meter
    points = back_project(depth, intrinsics, cam_to_ego)  # (N, H, W, 3) ego, meters
    camera = np.broadcast_to(np.arange(len(depth))[:, None, None], depth.shape)  # (N, H, W)
    row = np.floor((extent - points[..., 0]) * scale).astype(np.int64)  # x forward -> up
    col = np.floor((extent - points[..., 1]) * scale).astype(np.int64)  # y left -> left
    keep = (depth > 0) & (row >= 0) & (row < size) & (col >= 0) & (col < size)
    raster = np.empty((size, size, 3), dtype=np.uint8)
    raster[:] = BEV_BACKGROUND
    raster[row[keep], col[keep]] = np.asarray(CAMERA_COLORS, dtype=np.uint8)[camera[keep]]
    return raster


def grid_spacing(extent):
    """Meters between two lines of the BEV grid: the largest 1-2-5 step with >= GRID_LINES lines
    between the ego origin and the edge `extent` meters away."""
    return nice_values(extent / GRID_LINES / 10, extent / GRID_LINES)[-1]  # a decade holds a 1-2-5 step


def bev_figure(depths_by_name, intrinsics, cam_to_ego, extent=40.0, names=CAMERAS):
    """Bird's-eye view of the six views lifted to 3-D and fused in the ego frame, one panel per
    method side by side: a picture of what Eq. (20) measures (do neighbours' points coincide?).

    depths_by_name: {title: depth (N, H, W) meters, 0 = none}; intrinsics (N, 3, 3) at (H, W);
    cam_to_ego (N, 4, 4). Each panel is `bev_raster` over [-extent, extent] meters, drawn 1:1 with a
    metre grid (`grid_spacing`), metre ticks, a scale bar and the ego car; the camera legend
    (names: ring order, rig.CAMERAS or e.g. ddad.DDAD_CAMERAS) on the right -> Figure.
    """
    left, top, bottom = BEV_AXES_MARGIN
    step, size = grid_spacing(extent), BEV_PANEL_SIZE
    width = len(depths_by_name) * (left + size) + MARGIN + BEV_LEGEND_WIDTH
    fig = Figure(figsize=(width / DPI, (top + size + bottom) / DPI), dpi=DPI, facecolor="white")
    lines = np.arange(-math.floor(extent / step) * step, extent + step / 2, step)
    for i, (title, depth) in enumerate(depths_by_name.items()):
        ax = _axes_px(fig, (left + i * (left + size), top, size, size))
        ax.imshow(bev_raster(depth, intrinsics, cam_to_ego, extent), extent=(extent, -extent, -extent, extent),
                  interpolation="nearest")
        ax.set_xticks(lines)
        ax.set_yticks(lines)
        ax.tick_params(labelsize=FONT_SIZE - 1)
        ax.grid(True, color="white", alpha=0.25, linewidth=0.5)
        ax.set_title(title, fontsize=FONT_SIZE + 1)
        ax.set_xlabel("y, left (m)", fontsize=FONT_SIZE, labelpad=1)
        ax.set_ylabel("x, forward (m)" if i == 0 else "", fontsize=FONT_SIZE, labelpad=1)
        length, car_width = EGO_FOOTPRINT
        ax.add_patch(Rectangle((-car_width / 2, -length / 2), car_width, length, fill=False, edgecolor="white"))
        x0, y0 = -extent + step / 2, -extent + step / 2  # the scale bar: half a step from the bottom-right corner
        ax.plot([x0 + step, x0], [y0, y0], color="white", linewidth=2)
        ax.text(x0 + step / 2, y0 + SCALE_LABEL_LIFT * step, f"{step:g} m", color="white", ha="center",
                va="bottom", fontsize=FONT_SIZE)
    handles = [Patch(color=np.asarray(c) / 255, label=name) for c, name in zip(CAMERA_COLORS, names)]
    fig.legend(handles=handles, loc="upper right", frameon=False, fontsize=FONT_SIZE, title="camera",
               title_fontsize=FONT_SIZE, bbox_to_anchor=(1.0, 1 - top / fig.bbox.height))
    return fig


def read_log(path):
    """metrics.jsonl of train.py -> its records, a list of dicts ({step, lr, loss, <terms>...} and
    {step, val: {abs_rel, ...}})."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def binned(steps, values, points=CURVE_POINTS):
    """Consecutive (step, value) pairs averaged in at most `points` groups of about equal size ->
    (steps, values) float arrays: a long noisy curve drawn readably."""
    steps, values = np.asarray(steps, dtype=float), np.asarray(values, dtype=float)
    groups = min(len(steps), points)
    starts = np.arange(groups) * len(steps) // groups  # first index of each group
    counts = np.diff(np.append(starts, len(steps)))
    return np.add.reduceat(steps, starts) / counts, np.add.reduceat(values, starts) / counts


def curves_figure(records):
    """Training curves from metrics.jsonl records -> Figure: left, each loss term (and the total of
    Eq. 17) against the step on a log scale, one line per logged term; right, the validation AbsRel."""
    train = [r for r in records if "loss" in r]
    val = [r for r in records if "val" in r]
    terms = list(dict.fromkeys(k for r in train for k in r if k not in LOG_KEYS_NOT_TERMS))
    fig = Figure(figsize=CURVES_SIZE, dpi=DPI, layout="constrained", facecolor="white")
    loss_ax, val_ax = fig.subplots(1, 2, width_ratios=(3, 2))
    for term in terms:
        rows = [r for r in train if term in r]
        steps, values = binned([r["step"] for r in rows], [r[term] for r in rows])
        loss_ax.plot(steps, values, label=term, linewidth=2.0 if term == "loss" else 1.0)
    loss_ax.set_yscale("log")
    window = math.ceil(len(train) / CURVE_POINTS) if train else 1
    loss_ax.set_title("training loss (Eq. 17) and its unweighted terms"
                      + (f", mean of {window} steps" if window > 1 else ""), fontsize=FONT_SIZE + 1)
    loss_ax.legend(fontsize=FONT_SIZE, ncols=2)
    val_ax.plot([r["step"] for r in val], [r["val"]["abs_rel"] for r in val], marker="o", markersize=3)
    val_ax.set_title("validation AbsRel (sparse ground truth)", fontsize=FONT_SIZE + 1)
    val_ax.set_ylabel("AbsRel", fontsize=FONT_SIZE)
    for ax in (loss_ax, val_ax):
        ax.set_xlabel("step", fontsize=FONT_SIZE)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
        ax.tick_params(labelsize=FONT_SIZE)
        ax.grid(True, alpha=0.3)
    return fig


def write_curves(log_path, png_path):
    """OUT/metrics.jsonl -> OUT/curves.png (curves_figure), written atomically."""
    save_png(curves_figure(read_log(log_path)), png_path)


def interval_chart(labels, means, lows, highs, unit, title, series=None):
    """Estimates with their intervals, one row per label, a dashed line at 0 (the reference).

    labels: R row names, top to bottom; means, lows, highs: (R,) or (R, S) for S series (series: their
    S names, drawn side by side within a row), in `unit`; a NaN low/high draws the mean alone (no
    interval) -> Figure.
    """
    means, lows, highs = (np.asarray(a, dtype=float).reshape(len(labels), -1) for a in (means, lows, highs))
    rows, count = np.arange(len(labels)), means.shape[1]
    fig = Figure(figsize=(CHART_WIDTH, CHART_FIXED + CHART_ROW * len(labels) * count), dpi=DPI,
                 layout="constrained", facecolor="white")
    ax = fig.subplots()
    ax.axvline(0.0, color="grey", linestyle="--", linewidth=1)
    for s in range(count):
        m = means[:, s]
        err = np.nan_to_num(np.stack([m - lows[:, s], highs[:, s] - m]), nan=0.0)
        ax.errorbar(m, rows + (s - (count - 1) / 2) * SERIES_OFFSET, xerr=err, fmt="o", capsize=3,
                    label=None if series is None else series[s])
    ax.set_yticks(rows, labels=labels, fontsize=FONT_SIZE)
    ax.set_ylim(len(labels) - 0.5, -0.5)  # the first label on top
    ax.set_xlabel(unit, fontsize=FONT_SIZE)
    fig.suptitle(title, fontsize=FONT_SIZE + 1)  # over the whole width: the row labels take much of it
    ax.tick_params(axis="x", labelsize=FONT_SIZE)
    ax.grid(True, axis="x", alpha=0.3)
    if series is not None:
        fig.legend(loc="outside lower center", ncols=count, fontsize=FONT_SIZE, frameon=False)
    return fig


def render(fig):
    """A Figure drawn by the Agg canvas -> RGB uint8 (H, W, 3)."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def save_png(picture, path):
    """Write a Figure or an RGB uint8 array (H, W, 3) as PNG atomically (never half-written)."""
    array = render(picture) if isinstance(picture, Figure) else picture
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")

