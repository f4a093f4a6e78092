"""Evaluate a student checkpoint: depth metrics, scale and cross-view consistency, pictures.

Implements Eqs. (18)-(20) of the README's method section:
- (18) AbsRel, SqRel, RMSE, RMSElog, delta < 1.25^k on pixels with d_min < D* < d_max,
  metric (the default) or median-scaled; per image, averaged per camera, then over cameras;
- (19) scale consistency: rho = median(D*) / median(D_hat) per image, mean |log rho| and the
  std of log rho across the six views of each surround sample;
- (20) cross-view consistency: D_hat of view n back-projected to 3-D, projected into its
  neighbour m and compared with D_hat_m there, on pixels where both views see the same surface
  (`cross_view_consistency`; `back_project` is shared with the bird's-eye figure of viz.py).

    python evaluate.py --checkpoint outputs/demo/checkpoint.pt [--split test] [--median-scaling]
                       [--json out.json] [--out DIR] [--baseline]
    python evaluate.py --speed [the flags of `python benchmark.py speed`]

On synthetic data it scores against the sparse LiDAR ground truth (the protocol) and also
against the dense ground truth.
"""
import argparse
import json
import os
import sys

import numpy as np
import torch
from tqdm import tqdm

from data import ADJACENT_PAIRS, CAMERAS, MAX_DEPTH, MIN_DEPTH, build_dataset, run_cli, split_name

METRIC_KEYS = ("abs_rel", "sq_rel", "rmse", "rmse_log", "a1", "a2", "a3")
DELTA = 1.25  # threshold base of the delta accuracies a1, a2, a3 (Eq. 18)
NUM_FIGURES = 4  # surround samples drawn by --out
# Eq. (20), "both views see the same surface". With a dense reference (synthetic): its depths,
# reprojected the same way, agree within 1 % (the lookup of `sample_depth` is exact to ~1e-4
# there; sky, occluded points and depth edges miss by far more).
SAME_SURFACE_TOL = 0.01
# Without a reference (nuScenes): a point of view n that lands more than 20 % behind D_hat_m is
# taken as hidden in m (occluded), not as an error. A point in front of D_hat_m is never
# occlusion (m would have seen it), so it always counts. 20 % = the delta < 1.25 band of Eq. (18).
OCCLUSION_TOL = 0.2
# AbsRel is also pooled over NUM_BANDS vertical bands of the image, left to right: the overlaps
# of neighbouring views, where Eq. (20) is measured, lie in the outer bands.
NUM_BANDS = 8


def compute_depth_metrics(pred, gt, min_depth=MIN_DEPTH, max_depth=MAX_DEPTH, median_scaling=False):
    """Eq. (18) for one image: pred, gt (H, W) or any matching shape, meters, numpy or torch.

    Follows monodepth2 / SurroundDepth: pixels with min_depth < gt < max_depth; optional median
    scaling (pred * median(gt) / median(pred)); pred clamped to [min_depth, max_depth]; natural
    log. Returns {abs_rel, sq_rel, rmse, rmse_log, a1, a2, a3} as floats, or None when the image
    has no valid pixel.
    """
    pred = pred.detach().cpu().numpy() if torch.is_tensor(pred) else np.asarray(pred)
    gt = gt.detach().cpu().numpy() if torch.is_tensor(gt) else np.asarray(gt)
    valid = (gt > min_depth) & (gt < max_depth)
    if not valid.any():
        return None
    p, g = pred[valid].astype(np.float64), gt[valid].astype(np.float64)
    if median_scaling:
        p = p * np.median(g) / np.median(p)
    p = np.clip(p, min_depth, max_depth)
    ratio = np.maximum(g / p, p / g)
    return {"abs_rel": float(np.mean(np.abs(g - p) / g)), "sq_rel": float(np.mean((g - p) ** 2 / g)),
            "rmse": float(np.sqrt(np.mean((g - p) ** 2))),
            "rmse_log": float(np.sqrt(np.mean((np.log(g) - np.log(p)) ** 2))),
            "a1": float(np.mean(ratio < DELTA)), "a2": float(np.mean(ratio < DELTA**2)),
            "a3": float(np.mean(ratio < DELTA**3))}


def log_scale_ratio(pred, gt, min_depth=MIN_DEPTH, max_depth=MAX_DEPTH):
    """Eq. (19) for one image: log rho = log(median(D*) / median(D_hat)) on valid pixels, or None."""
    valid = (gt > min_depth) & (gt < max_depth)
    if not valid.any():
        return None
    return float(np.log(np.median(gt[valid]) / max(np.median(pred[valid]), min_depth)))


def back_project(depth, intrinsics, cam_to_ego):
    """Eq. (20), lifting: every pixel center of every view to a 3-D point in the ego frame.

    depth (N, H, W) z-depth in meters; intrinsics (N, 3, 3) pixel intrinsics at (H, W), pixel
    (v, u) covering [u, u + 1) x [v, v + 1) so its center is (u + 0.5, v + 0.5); cam_to_ego
    (N, 4, 4) (camera x right, y down, z forward). Returns (N, H, W, 3) ego points, meters.
    """
    depth = np.asarray(depth, dtype=np.float64)
    _, h, w = depth.shape
    v, u = np.mgrid[0:h, 0:w]
    centers = np.stack([u + 0.5, v + 0.5, np.ones((h, w))], axis=-1)  # (H, W, 3)
    rays = np.einsum("nij,hwj->nhwi", np.linalg.inv(intrinsics), centers)  # (N, H, W, 3), z = 1
    points = rays * depth[..., None]  # (N, H, W, 3) camera frame
    pose = np.asarray(cam_to_ego, dtype=np.float64)
    return np.einsum("nij,nhwj->nhwi", pose[:, :3, :3], points) + pose[:, None, None, :3, 3]


def project(points, intrinsics, cam_to_ego, height, width):
    """Eq. (20), projection: ego points (P, 3) into one camera (intrinsics (3, 3), cam_to_ego
    (4, 4)) -> z-depth (P,) meters, pixel coordinates (u, v) (P, 2) (pixel centers at
    i + 0.5; (0.5, 0.5) where outside), and a mask (P,) of points with z > 0 inside the image."""
    ego_to_cam = np.linalg.inv(cam_to_ego)
    cam = points @ ego_to_cam[:3, :3].T + ego_to_cam[:3, 3]  # (P, 3)
    z = cam[:, 2]
    front = z > 0
    uv = (cam @ np.asarray(intrinsics, dtype=np.float64).T)[:, :2] / np.where(front, z, 1.0)[:, None]  # (P, 2)
    inside = front & (uv[:, 0] >= 0) & (uv[:, 0] < width) & (uv[:, 1] >= 0) & (uv[:, 1] < height)
    return z, np.where(inside[:, None], uv, 0.5), inside


def sample_depth(depth, uv):
    """Eq. (20), lookup: depth (H, W) meters at pixel coordinates uv (P, 2) -> (P,) meters and
    a mask (P,) of samples whose four neighbouring pixels all have depth > 0.

    Bilinear in inverse depth between the four nearest pixel centers (edge pixels repeated at
    the border): inverse depth is affine in (u, v) on a plane, so a planar surface is sampled
    exactly, where a nearest-pixel lookup is off by the depth change over half a pixel (~0.3 %
    on average on the synthetic overlaps at 96 x 160: ground at grazing angles).
    """
    h, w = depth.shape
    x, y = np.clip(uv[:, 0] - 0.5, 0, w - 1), np.clip(uv[:, 1] - 0.5, 0, h - 1)  # pixel-center grid
    x0, y0 = np.minimum(np.floor(x).astype(np.int64), w - 2), np.minimum(np.floor(y).astype(np.int64), h - 2)
    fx, fy = x - x0, y - y0
    corners = np.stack([depth[y0, x0], depth[y0, x0 + 1], depth[y0 + 1, x0], depth[y0 + 1, x0 + 1]])  # (4, P)
    weights = np.stack([(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy])  # (4, P)
    valid = (corners > 0).all(axis=0)
    inverse = (weights / np.where(corners > 0, corners, 1.0)).sum(axis=0)  # (P,) 1 / meters
    return 1.0 / inverse, valid


def cross_view_consistency(depth, intrinsics, cam_to_ego, pairs=ADJACENT_PAIRS, reference=None,
                           same_surface_tol=SAME_SURFACE_TOL, occlusion_tol=OCCLUSION_TOL):
    """Eq. (20) for one surround sample: how much adjacent views disagree about shared surfaces.

    depth (N, H, W) predicted z-depth D_hat in meters (numpy); intrinsics (N, 3, 3) at (H, W);
    cam_to_ego (N, 4, 4), see `back_project`. For each pair (n, m) in `pairs`, every pixel p of
    view n with D_hat_n(p) > 0 is back-projected to 3-D and projected into m, at depth z'(p)
    and pixel coordinates q(p); D_hat_m(q) is sampled by `sample_depth` (bilinear in inverse
    depth). Where z' > 0, q lies in m's image and D_hat_m > 0 around q, the relative
    disagreement is
        e(p) = max(z' / D_hat_m(q), D_hat_m(q) / z') - 1 = |z' - D_hat_m(q)| / min(z', D_hat_m(q)),
    symmetric in the two depths (a view scaled by s gives e ~ s - 1 whichever side it is on),
    and it counts only where both views see the same surface:
    - reference (N, H, W) dense ground truth in meters (0 = sky) given: the reference depth of
      p, reprojected the same way, lands in m and agrees with the reference depth of m there
      within `same_surface_tol` (relative, |z'_ref - D_m(q_ref)| <= tol D_m(q_ref)), both > 0.
      The mask is independent of the prediction.
    - reference None (real data): an occlusion test on the prediction itself, pixels with
      z' <= (1 + occlusion_tol) D_hat_m(q). Bias: where n puts a surface more than
      `occlusion_tol` behind m's depth, the disagreement is taken for occlusion and dropped, so
      the metric underestimates "too far in n" errors (those in front always count), and
      pixels that see different surfaces (occlusions near 20 %) leak in.
    Returns {'per_pair': {'CAM_n->CAM_m': {'mean_rel': mean e or None, 'num_pixels': int}},
    'mean_rel': mean over the pairs that have pixels (each overlap weighs the same) or None,
    'num_pixels': int, 'same_surface': 'reference' or 'occlusion test'}.
    """
    depth = np.asarray(depth, dtype=np.float64)
    n_views, h, w = depth.shape
    points = back_project(depth, intrinsics, cam_to_ego).reshape(n_views, h * w, 3)  # (N, H*W, 3)
    if reference is not None:
        reference = np.asarray(reference, dtype=np.float64)
        ref_points = back_project(reference, intrinsics, cam_to_ego).reshape(n_views, h * w, 3)
    per_pair = {}
    for n, m in pairs:
        z, uv, inside = project(points[n], intrinsics[m], cam_to_ego[m], h, w)
        target, sampled = sample_depth(depth[m], uv)  # D_hat_m(q), (H*W,)
        valid = inside & sampled & (depth[n].reshape(-1) > 0)
        if reference is None:
            same = z <= (1 + occlusion_tol) * target
        else:
            z_ref, uv_ref, inside_ref = project(ref_points[n], intrinsics[m], cam_to_ego[m], h, w)
            target_ref, sampled_ref = sample_depth(reference[m], uv_ref)
            same = (inside_ref & sampled_ref & (reference[n].reshape(-1) > 0)
                    & (np.abs(z_ref - target_ref) <= same_surface_tol * target_ref))
        keep = valid & same
        e = np.abs(z[keep] - target[keep]) / np.minimum(z[keep], target[keep])  # Eq. (20), (P_kept,)
        per_pair[f"{CAMERAS[n]}->{CAMERAS[m]}"] = {"mean_rel": float(e.mean()) if keep.any() else None,
                                                   "num_pixels": int(keep.sum())}
    means = [p["mean_rel"] for p in per_pair.values() if p["mean_rel"] is not None]
    return {"per_pair": per_pair, "mean_rel": float(np.mean(means)) if means else None,
            "num_pixels": sum(p["num_pixels"] for p in per_pair.values()),
            "same_surface": "occlusion test" if reference is None else "reference"}


def pool_cross_view(samples):
    """Eq. (20) over a dataset: per pair, the pixel-weighted mean of the per-sample results of
    `cross_view_consistency`; overall, the mean over pairs. None without samples."""
    if not samples:
        return None
    per_pair = {}
    for key in samples[0]["per_pair"]:
        rows = [s["per_pair"][key] for s in samples if s["per_pair"][key]["num_pixels"]]
        count = sum(r["num_pixels"] for r in rows)
        per_pair[key] = {"mean_rel": sum(r["mean_rel"] * r["num_pixels"] for r in rows) / count if count else None,
                         "num_pixels": count}
    means = [p["mean_rel"] for p in per_pair.values() if p["mean_rel"] is not None]
    return {"per_pair": per_pair, "mean_rel": float(np.mean(means)) if means else None,
            "num_pixels": sum(p["num_pixels"] for p in per_pair.values()),
            "same_surface": samples[0]["same_surface"]}


def mean_metrics(rows):
    """Average a list of metric dicts key by key (None rows are skipped); None if empty."""
    rows = [r for r in rows if r is not None]
    return {k: float(np.mean([r[k] for r in rows])) for k in METRIC_KEYS} if rows else None


@torch.inference_mode()
def evaluate_predictions(predict, dataset, device, median_scaling=False, progress=True, on_sample=None):
    """Score predict(batch) -> depth (1, N, 1, H, W) meters over `dataset`, one sample at a time.

    Returns {'per_camera': {camera: {'sparse': metrics, 'dense': metrics}}, 'all': {...},
    'scale': {'mean_abs_log_rho', 'std_log_rho_across_views'}, 'cross_view', 'num_samples'}.
    'dense' is there only when the dataset has depth_dense. 'cross_view' is Eq. (20) pooled by
    `pool_cross_view` (same surface from depth_dense when present, else the occlusion test),
    None when the samples carry no intrinsics / cam_to_ego. `on_sample(index, batch, depth)`
    sees every prediction (for figures). Per-image metrics are averaged per camera, then over
    cameras. 'column_bands' = {'ground_truth': 'dense' or 'sparse', 'abs_rel': NUM_BANDS
    floats, left to right}: metric AbsRel (never median-scaled) pooled over all pixels of every
    view and sample in each vertical band of the image.
    """
    loader = torch.utils.data.DataLoader(dataset, batch_size=1, num_workers=0)
    per_cam = {kind: [[] for _ in CAMERAS] for kind in ("sparse", "dense")}
    log_rho = []  # per sample: list of per-view log rho
    cross_view = []  # per sample: Eq. (20) from cross_view_consistency
    band_err, band_count = np.zeros(NUM_BANDS), np.zeros(NUM_BANDS)  # sums of |D_hat - D*| / D*, pixels
    for i, batch in enumerate(tqdm(loader, desc="eval", disable=not progress, dynamic_ncols=True)):
        batch = {k: v.to(device) for k, v in batch.items()}
        depth = predict(batch).float()  # (1, N, 1, H, W)
        if on_sample is not None:
            on_sample(i, batch, depth)
        pred = depth[0, :, 0].cpu().numpy()  # (N, H, W)
        for kind, key in (("sparse", "depth"), ("dense", "depth_dense")):
            if key in batch:
                gt = batch[key][0, :, 0].cpu().numpy()
                for n in range(len(CAMERAS)):
                    per_cam[kind][n].append(compute_depth_metrics(pred[n], gt[n], median_scaling=median_scaling))
        band_gt = batch.get("depth_dense", batch["depth"])[0, :, 0].cpu().numpy()  # (N, H, W)
        valid = (band_gt > MIN_DEPTH) & (band_gt < MAX_DEPTH)
        clipped = np.clip(pred, MIN_DEPTH, MAX_DEPTH)  # as compute_depth_metrics; metric, never median-scaled
        rel = np.where(valid, np.abs(clipped - band_gt) / np.where(valid, band_gt, 1.0), 0.0)
        band = np.arange(band_gt.shape[-1]) * NUM_BANDS // band_gt.shape[-1]  # column -> band
        band_err += np.bincount(band, rel.sum(axis=(0, 1)), NUM_BANDS)
        band_count += np.bincount(band, valid.sum(axis=(0, 1)), NUM_BANDS)
        gt = batch["depth"][0, :, 0].cpu().numpy()
        log_rho.append([r for r in (log_scale_ratio(pred[n], gt[n]) for n in range(len(CAMERAS))) if r is not None])
        if "intrinsics" in batch and "cam_to_ego" in batch:
            reference = batch["depth_dense"][0, :, 0].cpu().numpy() if "depth_dense" in batch else None
            cross_view.append(cross_view_consistency(pred, batch["intrinsics"][0].cpu().numpy(),
                                                     batch["cam_to_ego"][0].cpu().numpy(), reference=reference))
    kinds = [k for k in per_cam if any(r is not None for rows in per_cam[k] for r in rows)]
    cams = {cam: {k: mean_metrics(per_cam[k][n]) for k in kinds} for n, cam in enumerate(CAMERAS)}
    overall = {k: mean_metrics([cams[c][k] for c in CAMERAS]) for k in kinds}
    flat = [r for sample in log_rho for r in sample]
    scale = {"mean_abs_log_rho": float(np.mean(np.abs(flat))) if flat else None,
             "std_log_rho_across_views": float(np.mean([np.std(s) for s in log_rho if len(s) > 1]))
             if any(len(s) > 1 for s in log_rho) else None}
    bands = {"ground_truth": "dense" if "dense" in kinds else "sparse",
             "abs_rel": [float(e / c) if c else None for e, c in zip(band_err, band_count)]}
    return {"per_camera": cams, "all": overall, "scale": scale, "cross_view": pool_cross_view(cross_view),
            "column_bands": bands, "num_samples": len(log_rho)}


def evaluate_model(model, dataset, device, median_scaling=False, progress=True, on_sample=None):
    """`evaluate_predictions` for a Student (restored to its train/eval mode afterwards)."""
    was_training = model.training
    model.eval()
    try:
        return evaluate_predictions(lambda batch: model(batch["images"])["depth"], dataset, device,
                                    median_scaling, progress, on_sample)
    finally:
        model.train(was_training)


def per_camera_median(dataset, num_samples):
    """The best constant prediction: per-camera median of the sparse ground truth over the
    first `num_samples` items of `dataset` -> (N,) meters."""
    values = [[] for _ in CAMERAS]
    for i in range(min(num_samples, len(dataset))):
        depth = dataset[i]["depth"][:, 0].numpy()  # (N, H, W)
        for n in range(len(CAMERAS)):
            values[n].append(depth[n][(depth[n] > MIN_DEPTH) & (depth[n] < MAX_DEPTH)])
    return np.array([np.median(np.concatenate(v)) for v in values])


def format_table(results, title):
    """Markdown table: one row per camera and 'all', for every ground-truth kind."""
    lines = []
    for kind in results["all"]:
        lines += [f"### {title}: {kind} ground truth", "",
                  "| camera | " + " | ".join(METRIC_KEYS) + " |", "|---" * (len(METRIC_KEYS) + 1) + "|"]
        rows = [(c, results["per_camera"][c][kind]) for c in CAMERAS] + [("all", results["all"][kind])]
        lines += [f"| {c} | " + " | ".join(f"{m[k]:.4f}" for k in METRIC_KEYS) + " |" for c, m in rows if m]
        lines.append("")
    s = results["scale"]
    if s["mean_abs_log_rho"] is not None:
        lines.append(f"Scale consistency (Eq. 19): mean |log rho| = {s['mean_abs_log_rho']:.4f}, "
                     f"std of log rho across views = {s['std_log_rho_across_views']:.4f}")
    cv = results["cross_view"]
    if cv is not None and cv["mean_rel"] is not None:
        pairs = ", ".join(f"{k} {p['mean_rel']:.4f}" for k, p in cv["per_pair"].items() if p["mean_rel"] is not None)
        lines.append(f"Cross-view consistency (Eq. 20): mean relative disagreement = {cv['mean_rel']:.4f} over "
                     f"{cv['num_pixels']} pixels (same surface: {cv['same_surface']}); per pair: {pairs}")
    bands = results.get("column_bands")
    if bands and any(v is not None for v in bands["abs_rel"]):
        lines.append(f"Metric AbsRel by column band, left to right ({bands['ground_truth']} ground truth, all "
                     "pixels pooled): " + " ".join("-" if v is None else f"{v:.4f}" for v in bands["abs_rel"]))
    return "\n".join(lines) + "\n"


def get_args(argv=None):
    """The command line; every flag has help."""
    p = argparse.ArgumentParser(description="Evaluate a student checkpoint (Eqs. 18-20).")
    p.add_argument("--checkpoint", default="outputs/demo/checkpoint.pt", help="checkpoint written by train.py")
    p.add_argument("--data", default=None, choices=["synthetic", "nuscenes"], help="dataset (default: the checkpoint's)")
    p.add_argument("--dataroot", default=None, help="nuScenes root folder")
    p.add_argument("--version", default=None, choices=["v1.0-trainval", "v1.0-mini"], help="nuScenes version")
    p.add_argument("--split", default=None, help="split to score (default: test on synthetic, val / mini_val on nuScenes)")
    p.add_argument("--max-samples", type=int, default=None, help="score only the first this many samples")
    p.add_argument("--median-scaling", action="store_true", help="per-image median scaling (Eq. 18); default metric")
    p.add_argument("--baseline", action="store_true", help="also score the best constant: per-camera median training depth")
    p.add_argument("--json", default=None, help="write the results as JSON to this file")
    p.add_argument("--out", default=None, help="folder for metrics.md, metrics.json and figures")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    p.add_argument("--speed", action="store_true",
                   help="instead: student vs DA-V2 speed, as `python benchmark.py speed` (its flags follow)")
    return p.parse_args(argv)


def main(argv=None):
    from model import atomic_path, load_checkpoint
    from viz import sample_figure, save_png

    argv = sys.argv[1:] if argv is None else list(argv)
    if "--speed" in argv:  # the speed comparison lives with the other README benchmarks
        import benchmark
        return benchmark.speed([a for a in argv if a != "--speed"])
    args = get_args(argv)
    device = torch.device(args.device)
    model, ckpt = load_checkpoint(args.checkpoint, device)
    trained = ckpt.get("args", {})
    data = args.data or trained.get("data", "synthetic")
    version = args.version or trained.get("version", "v1.0-trainval")
    split = args.split or split_name(data, version, "test")
    options = dict(image_size=model.cfg.image_size, dataroot=args.dataroot or trained.get("dataroot"),
                   version=version)  # seed 0: the same val/test worlds whatever seed trained the model
    dataset = build_dataset(data, split, **options)
    if args.max_samples is not None:
        dataset = torch.utils.data.Subset(dataset, range(min(args.max_samples, len(dataset))))

    def draw(i, batch, depth):  # the first NUM_FIGURES samples, if --out is given
        if args.out and i < NUM_FIGURES:
            gt = batch.get("depth_dense", batch["depth"])[0].cpu().numpy()
            figure = sample_figure(batch["images"][0].cpu().numpy(), depth[0].cpu().numpy(), gt, f"#{i}")
            save_png(figure, os.path.join(args.out, f"sample_{i}.png"))

    results = {"checkpoint": args.checkpoint, "split": split, "median_scaling": args.median_scaling,
               "student": evaluate_model(model, dataset, device, args.median_scaling, on_sample=draw)}
    table = format_table(results["student"], f"student on {data} {split}")
    if args.baseline:
        train_split = split_name(data, version, "train")
        medians = per_camera_median(build_dataset(data, train_split, **options), num_samples=64)
        const = torch.tensor(medians, dtype=torch.float32, device=device).view(1, -1, 1, 1, 1)
        results["constant_baseline"] = evaluate_predictions(lambda b: const.expand_as(b["depth"]), dataset, device,
                                                            args.median_scaling)
        results["constant_baseline"]["medians"] = medians.tolist()
        table += "\n" + format_table(results["constant_baseline"], "constant (per-camera median training depth)")
    print(table)
    outputs = {args.json: json.dumps(results, indent=2)} if args.json else {}
    if args.out:
        outputs[os.path.join(args.out, "metrics.md")] = table
        outputs[os.path.join(args.out, "metrics.json")] = json.dumps(results, indent=2)
    for path, text in outputs.items():
        with atomic_path(path) as tmp, open(tmp, "w") as f:  # never a half-written file
            f.write(text)
    return results


if __name__ == "__main__":
    run_cli(main)
