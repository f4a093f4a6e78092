"""Pictures: colour-mapped depth, the surround montage laid out like the rig, sample figures,
and the bird's-eye view of the six views fused in the ego frame.

Used by evaluate.py (the demo's figures), infer.py (per-image PNGs and the montage) and
benchmark.py ablation (`bev_figure`: the lifting of Eq. (20) drawn from above, methods side by side).
Depth is coloured as inverse depth (near = bright), over a robust range that ends at the
95th percentile (as monodepth2 and Depth-Anything-V2 colour their outputs).
"""
import numpy as np
from PIL import Image, ImageDraw

from cli import atomic_path
from rig import CAMERAS, back_project
from synthetic import CAR_LENGTH, CAR_WIDTH

# Anchor colours of a perceptually ordered dark-to-bright map (black, purple, red, orange,
# pale yellow); `colorize` interpolates linearly between them.
COLORMAP_ANCHORS = np.array([[0, 0, 4], [80, 18, 123], [182, 54, 121], [251, 136, 97], [252, 253, 191]], float)
ROBUST_PERCENTILE = 95  # the top of the colour range, robust to a few very near pixels
# Montage layout of the rig as seen from above, front on top: FL F FR over BL B BR (ring places,
# named as rig.CAMERAS; `montage` takes tiles in ring order, so any dataset's cameras fit).
MONTAGE_LAYOUT = (("CAM_FRONT_LEFT", "CAM_FRONT", "CAM_FRONT_RIGHT"),
                  ("CAM_BACK_LEFT", "CAM_BACK", "CAM_BACK_RIGHT"))
NO_DEPTH_COLOR = (40, 40, 40)  # pixels without (ground-truth) depth
# Bird's-eye view: one colour per camera in the order of rig.CAMERAS (the first six colours
# of matplotlib's "tab10" palette), a square panel per method, a dark background.
CAMERA_COLORS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75))
BEV_PANEL_SIZE = 320  # pixels per side of one panel
BEV_BACKGROUND = (16, 16, 16)
EGO_FOOTPRINT = (CAR_LENGTH, CAR_WIDTH)  # (length, width) of the car drawn at the origin, meters
TEXT_LINE = 11  # pixels per line of PIL's default bitmap font


def inverse_depth_range(depths):
    """Shared colour range (lo, hi) of inverse depth over a list of depth maps (meters)."""
    inv = np.concatenate([1.0 / d[d > 0] for d in depths if (d > 0).any()] or [np.ones(1)])
    return float(inv.min()), float(np.percentile(inv, ROBUST_PERCENTILE))


def colorize(depth, value_range=None):
    """Depth (H, W) meters, 0 = none -> RGB uint8 (H, W, 3), near bright and far dark."""
    depth = np.asarray(depth, dtype=np.float64)
    lo, hi = inverse_depth_range([depth]) if value_range is None else value_range
    valid = depth > 0
    x = np.clip((1.0 / np.where(valid, depth, 1.0) - lo) / max(hi - lo, 1e-12), 0, 1)
    pos = x * (len(COLORMAP_ANCHORS) - 1)
    i = np.minimum(pos.astype(int), len(COLORMAP_ANCHORS) - 2)
    frac = (pos - i)[..., None]
    rgb = COLORMAP_ANCHORS[i] * (1 - frac) + COLORMAP_ANCHORS[i + 1] * frac
    rgb[~valid] = NO_DEPTH_COLOR
    return rgb.astype(np.uint8)


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


def montage(tiles):
    """Six (H, W, 3) uint8 tiles in the order of rig.CAMERAS -> one (2H, 3W, 3) picture of
    the rig seen from above (front row FL F FR, back row BL B BR). Tiles may differ in size:
    each is resized to the first one's."""
    h, w = tiles[0].shape[:2]
    by_name = {name: np.asarray(Image.fromarray(t).resize((w, h))) for name, t in zip(CAMERAS, tiles)}
    return np.concatenate([np.concatenate([by_name[c] for c in row], axis=1) for row in MONTAGE_LAYOUT], axis=0)


def sample_figure(images, pred, gt, title=""):
    """A surround sample as three rig montages stacked: image, prediction, ground truth.

    images (6, 3, H, W) in [0, 1]; pred, gt (6, 1, H, W) meters (gt 0 where none; a sparse gt
    is dilated so it shows). All depth shares one colour range. Returns an RGB uint8 array.
    """
    pred, gt = np.asarray(pred)[:, 0], np.asarray(gt)[:, 0]
    sparse = (gt > 0).mean() < 0.5
    gt_show = [dilate_sparse(g) if sparse else g for g in gt]
    value_range = inverse_depth_range(list(gt_show) + list(pred))
    rows = [montage([to_uint8(im) for im in np.asarray(images)]),
            montage([colorize(p, value_range) for p in pred]),
            montage([colorize(g, value_range) for g in gt_show])]
    labels = ["image", "prediction", "ground truth" + (" (sparse LiDAR)" if sparse else " (dense)")]
    picture = Image.fromarray(np.concatenate(rows, axis=0))
    draw = ImageDraw.Draw(picture)
    step = rows[0].shape[0]
    for r, label in enumerate(labels):
        draw.text((4, r * step + 2), f"{title} {label}".strip(), fill=(255, 255, 255))
    return np.asarray(picture)


def bev_figure(depths_by_name, intrinsics, cam_to_ego, extent=40.0, names=CAMERAS):
    """Bird's-eye view of the six views lifted to 3-D and fused in the ego frame, one panel per
    method side by side: a picture of what Eq. (20) measures (do neighbours' points coincide?).

    depths_by_name: {title: depth (N, H, W) meters, 0 = none}; intrinsics (N, 3, 3) at (H, W);
    cam_to_ego (N, 4, 4). Each panel spans [-extent, extent] meters around the ego origin, ego
    x forward up the picture and y left to the left; every pixel with depth > 0 is one dot,
    coloured by its camera (CAMERA_COLORS, legend in the first panel); points outside the
    panel are dropped. names: the legend's camera names in ring order (rig.CAMERAS, or e.g.
    ddad.DDAD_CAMERAS on DDAD). Returns (BEV_PANEL_SIZE, len(depths_by_name) * BEV_PANEL_SIZE, 3) uint8.
    """
    scale = BEV_PANEL_SIZE / (2 * extent)  # pixels per meter
    colors = np.asarray(CAMERA_COLORS, dtype=np.uint8)
    panels = []
    for title, depth in depths_by_name.items():
        depth = np.asarray(depth, dtype=np.float64)
        points = back_project(depth, intrinsics, cam_to_ego)  # (N, H, W, 3) ego, meters
        camera = np.broadcast_to(np.arange(len(depth))[:, None, None], depth.shape)  # (N, H, W)
        row = np.floor((extent - points[..., 0]) * scale).astype(np.int64)  # x forward -> up
        col = np.floor((extent - points[..., 1]) * scale).astype(np.int64)  # y left -> left
        keep = (depth > 0) & (row >= 0) & (row < BEV_PANEL_SIZE) & (col >= 0) & (col < BEV_PANEL_SIZE)
        panel = np.empty((BEV_PANEL_SIZE, BEV_PANEL_SIZE, 3), dtype=np.uint8)
        panel[:] = BEV_BACKGROUND
        panel[row[keep], col[keep]] = colors[camera[keep]]
        picture = Image.fromarray(panel)
        draw = ImageDraw.Draw(picture)
        half_l, half_w = EGO_FOOTPRINT[0] / 2 * scale, EGO_FOOTPRINT[1] / 2 * scale
        center = BEV_PANEL_SIZE / 2
        draw.rectangle((center - half_w, center - half_l, center + half_w, center + half_l), outline=(255, 255, 255))
        draw.text((4, 2), title, fill=(255, 255, 255))
        if not panels:  # the legend, once
            for n, name in enumerate(names):
                draw.text((4, 2 + TEXT_LINE * (n + 1)), name, fill=CAMERA_COLORS[n])
        draw.line((BEV_PANEL_SIZE - 1, 0, BEV_PANEL_SIZE - 1, BEV_PANEL_SIZE), fill=(90, 90, 90))  # separator
        panels.append(np.asarray(picture))
    return np.concatenate(panels, axis=1)


def save_png(array, path):
    """Write an RGB uint8 array as PNG atomically (never half-written)."""
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


def regime_figure(regimes, series, path):
    """The regime map's picture: for each panel (e.g. 'dense AbsRel'), the paired gain of every row over
    the baseline (%, negative is better) against the regime, with its 95 % interval as an error bar.
    regimes: x labels; series: {panel: {row: [(mean %, half-width % or None) or (None, None) per regime]}}."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(series), figsize=(6.5 * len(series), 4.8), squeeze=False)
    x = np.arange(len(regimes))
    for ax, (panel, rows) in zip(axes[0], series.items()):
        for i, (name, points) in enumerate(rows.items()):
            shift = (i - (len(rows) - 1) / 2) * 0.06  # side by side, so the bars do not hide each other
            keep = [j for j, (m, _) in enumerate(points) if m is not None]
            means = [points[j][0] for j in keep]
            errors = [points[j][1] or 0.0 for j in keep]
            ax.errorbar(x[keep] + shift, means, yerr=errors, marker="o", capsize=3, label=name)
        ax.axhline(0.0, color="black", linewidth=0.8)
        ax.set_xticks(x, regimes, rotation=20, ha="right")
        ax.set_ylabel(f"{panel}: change vs supervised baseline (%)")
        ax.set_title(f"{panel} (lower is better; 95 % intervals)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
