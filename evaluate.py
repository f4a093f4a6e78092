"""Evaluate a student checkpoint: depth metrics, scale and cross-view consistency, pictures.

Implements Eqs. (18)-(20) of the README's method section:
- (18) AbsRel, SqRel, RMSE, RMSElog, delta < 1.25^k on pixels with d_min < D* < d_max,
  metric (the default) or median-scaled; per image, averaged per camera, then over cameras;
- (19) scale consistency: rho = median(D*) / median(D_hat) per image, mean |log rho| and the
  std of log rho across the six views of each surround sample;
- (20) cross-view consistency: D_hat of view n back-projected to 3-D, projected into its
  neighbour m and compared with D_hat_m there, on pixels where both views see the same surface
  (`cross_view_consistency`; the geometry is `rig.py`'s).

    python evaluate.py --checkpoint RUN/checkpoint.pt [--split test] [--median-scaling] [--flip] [--out DIR]

On nuScenes (any dataset with `native_depth`) Eq. (18) follows SurroundDepth by default: LiDAR
ground truth at each camera's native resolution, the prediction resized to it. On synthetic data it
scores against the sparse LiDAR and the dense ground truth, both at the input size.
"""
import argparse
import json
import os

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from cli import run_cli, write_text
from data import DATASETS, batch_to_device, build_dataset, depth_range, split_name
from losses import valid_mask
from protocol import WithNativeDepth, flip_averaged, has_native_depth
from rig import ADJACENT_PAIRS, CAMERAS, MAX_DEPTH, MIN_DEPTH, back_project, project, sample_depth

METRIC_KEYS = ("abs_rel", "sq_rel", "rmse", "rmse_log", "a1", "a2", "a3")
COUNT_KEYS = ("num_images", "num_pixels")  # images and ground-truth pixels scored, beside Eq. (18)
DELTA = 1.25  # threshold base of the delta accuracies a1, a2, a3 (Eq. 18)
NUM_FIGURES = 4  # surround samples drawn by --out
# Eq. (20), "both views see the same surface": the ground truth of view n, reprojected into m,
# agrees with m's ground truth there within 1 % (the lookup of `sample_depth` is exact to ~1e-4
# on a dense reference; sky, occluded points and depth edges miss by far more).
SAME_SURFACE_TOL = 0.01
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
    valid = valid_mask(gt, min_depth, max_depth)
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
    valid = valid_mask(gt, min_depth, max_depth)
    if not valid.any():
        return None
    return float(np.log(np.median(gt[valid]) / max(np.median(pred[valid]), min_depth)))


def affine_invariant_metrics(disparity, gt, min_depth=MIN_DEPTH, max_depth=MAX_DEPTH):
    """Eq. (18) of a relative-depth model's output, the Depth Anything zero-shot protocol (as MiDaS).

    disparity: (H, W) relative inverse depth r; gt: (H, W) ground-truth depth in meters. Per
    image, the least-squares scale s and shift t of s * r + t to 1 / D* over the valid pixels M
    (min_depth < D* < max_depth) align r in disparity space; the depth 1 / max(s r + t,
    1 / max_depth) is then scored as `compute_depth_metrics` scores a metric prediction. The dict
    also holds 'abs_rel_disparity': mean |s r + t - 1 / D*| / (1 / D*), AbsRel in disparity space,
    which is what the Depth Anything papers report (LiheYoung/Depth-Anything issue #174).
    Returns the dict, or None when the image has no valid pixel.
    """
    r = disparity.detach().cpu().numpy() if torch.is_tensor(disparity) else np.asarray(disparity)
    g = gt.detach().cpu().numpy() if torch.is_tensor(gt) else np.asarray(gt)
    valid = valid_mask(g, min_depth, max_depth)
    if not valid.any():
        return None
    r, g = r.astype(np.float64), g.astype(np.float64)
    design = np.stack([r[valid], np.ones(int(valid.sum()))], axis=1)  # (P, 2): s * r + t
    (s, t), *_ = np.linalg.lstsq(design, 1.0 / g[valid], rcond=None)
    in_disparity = float(np.mean(np.abs(s * r[valid] + t - 1.0 / g[valid]) * g[valid]))  # |r' - 1/D*| / (1/D*)
    aligned = np.maximum(s * r + t, 1.0 / max_depth)  # disparity floor: no depth beyond max_depth
    return {**compute_depth_metrics(1.0 / aligned, g, min_depth, max_depth), "abs_rel_disparity": in_disparity}

def reference_lookup(reference, uv):
    """Eq. (20), the ground truth at pixel coordinates uv (P, 2) of one view -> (P,) meters and a
    mask (P,) of usable samples. A dense reference (synthetic, > 50 % of pixels with depth) is
    sampled by `sample_depth`, bilinear in inverse depth; a sparse one (LiDAR) at the nearest pixel."""
    if (reference > 0).mean() > 0.5:
        return sample_depth(reference, uv)
    h, w = reference.shape
    u = np.clip(np.floor(uv[:, 0]).astype(np.int64), 0, w - 1)
    v = np.clip(np.floor(uv[:, 1]).astype(np.int64), 0, h - 1)
    value = reference[v, u]
    return value, value > 0


def cross_view_consistency(depth, intrinsics, cam_to_ego, reference, pairs=ADJACENT_PAIRS,
                           same_surface_tol=SAME_SURFACE_TOL):
    """Eq. (20) for one surround sample: how much adjacent views disagree about shared surfaces.

    depth (N, H, W) predicted z-depth D_hat in meters; reference (N, H, W) ground truth in meters,
    0 where there is none (dense, or sparse LiDAR); intrinsics (N, 3, 3) at (H, W); cam_to_ego
    (N, 4, 4), see `rig.back_project`.
    The compared pixels come from the ground truth alone, never from the prediction: pixel p of
    view n counts for the pair (n, m) when its ground-truth point X*(p) projects into m at pixel
    q*(p), at depth z*(p) > 0, and m's ground truth there (`reference_lookup`) agrees with z*(p)
    within `same_surface_tol` (relative): both views see the same surface at p and q*. There,
    the predicted point of p, back-projected from D_hat_n(p), has depth z'(p) in m's camera, and
        e(p) = max(z' / D_hat_m(q*), D_hat_m(q*) / z') - 1 = |z' - D_hat_m(q*)| / min(z', D_hat_m(q*)),
    symmetric in the two depths (a view scaled by s gives e ~ s - 1 whichever side it is on).
    D_hat_m(q*) is sampled by `rig.sample_depth`. A grossly wrong prediction is scored, not
    dropped. Returns {'per_pair': {'CAM_n->CAM_m': {'mean_rel': mean e or None, 'num_pixels':
    int}}, 'mean_rel': mean over the pairs that have pixels (each overlap weighs the same) or
    None, 'num_pixels': int}.
    """
    depth = np.asarray(depth, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    n_views, h, w = depth.shape
    points = back_project(depth, intrinsics, cam_to_ego).reshape(n_views, h * w, 3)  # (N, H*W, 3)
    ref_points = back_project(reference, intrinsics, cam_to_ego).reshape(n_views, h * w, 3)
    per_pair = {}
    for n, m in pairs:
        z_ref, uv_ref, inside_ref = project(ref_points[n], intrinsics[m], cam_to_ego[m], h, w)
        target_ref, found = reference_lookup(reference[m], uv_ref)
        keep = (inside_ref & found & (reference[n].reshape(-1) > 0)
                & (np.abs(z_ref - target_ref) <= same_surface_tol * target_ref))  # ground truth only
        ego_to_m = np.linalg.inv(cam_to_ego[m])
        z = (points[n] @ ego_to_m[2, :3] + ego_to_m[2, 3])[keep]  # z' in m's camera, (P_kept,)
        target = np.maximum(sample_depth(depth[m], uv_ref[keep])[0], MIN_DEPTH)  # D_hat_m(q*)
        z = np.maximum(z, MIN_DEPTH)  # a prediction behind m's camera is as wrong as the nearest depth
        e = np.abs(z - target) / np.minimum(z, target)  # Eq. (20), (P_kept,)
        per_pair[f"{CAMERAS[n]}->{CAMERAS[m]}"] = {"mean_rel": float(e.mean()) if keep.any() else None,
                                                   "num_pixels": int(keep.sum())}
    means = [p["mean_rel"] for p in per_pair.values() if p["mean_rel"] is not None]
    return {"per_pair": per_pair, "mean_rel": float(np.mean(means)) if means else None,
            "num_pixels": sum(p["num_pixels"] for p in per_pair.values())}


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
            "num_pixels": sum(p["num_pixels"] for p in per_pair.values())}


def mean_metrics(rows):
    """Average a list of metric dicts key by key (None rows are skipped); None if empty. The
    counts 'num_images' (1 per row without one) and, where the rows carry it, 'num_pixels' are
    summed, not averaged."""
    rows = [r for r in rows if r is not None]
    if not rows:
        return None
    counts = {"num_images": sum(r.get("num_images", 1) for r in rows)}
    if all("num_pixels" in r for r in rows):
        counts["num_pixels"] = sum(r["num_pixels"] for r in rows)
    keys = list(METRIC_KEYS) + [k for k in rows[0] if k not in METRIC_KEYS and k not in counts
                                and all(k in r for r in rows)]  # e.g. 'abs_rel_disparity'
    return {**{k: float(np.mean([r[k] for r in rows])) for k in keys}, **counts}


def _scored(pred, gt, depth_range, median_scaling):
    """Eq. (18) of one image plus 'num_pixels', the ground-truth pixels it scored; None without any."""
    metrics = compute_depth_metrics(pred, gt, *depth_range, median_scaling)
    if metrics is not None:
        metrics["num_pixels"] = int(valid_mask(gt, *depth_range).sum())
    return metrics


@torch.inference_mode()
def evaluate_predictions(predict, dataset, device, median_scaling=False, progress=True, on_sample=None,
                         depth_range=(MIN_DEPTH, MAX_DEPTH), native=False, workers=0):
    """Score predict(batch) -> depth (1, N, 1, H, W) meters over `dataset`, one sample at a time.

    Returns {'per_camera': {camera: {'sparse': metrics, 'dense': metrics}}, 'all': {...},
    'scale': {'mean_abs_log_rho', 'std_log_rho_across_views'}, 'cross_view', 'num_samples',
    'protocol'}. Each metrics dict holds Eq. (18) and the counts 'num_images' and 'num_pixels'
    (ground-truth pixels scored). native=True (the dataset must have `native_depth`, see
    `has_native_depth`) is the SurroundDepth protocol: 'sparse' is scored against the ground
    truth at each camera's native resolution (H0, W0), the prediction resized to it bilinearly;
    else at the input size (H, W). 'dense' is there only when the dataset has depth_dense.
    'cross_view' is Eq. (20) pooled by `pool_cross_view` (pixels chosen by depth_dense when
    present, else by the sparse depth), None when the samples carry no intrinsics / cam_to_ego.
    Eqs. (19), (20) and the column bands use the input-size ground truth under both protocols.
    depth_range: (d_min, d_max) in meters of the dataset, the mask M of Eq. (18). `on_sample(index,
    batch, depth)` sees every prediction (for figures). Per-image metrics are averaged per camera,
    then over cameras. 'column_bands' = {'ground_truth': 'dense' or 'sparse', 'abs_rel': NUM_BANDS
    floats, left to right}: metric AbsRel (never median-scaled) pooled over all pixels of every
    view and sample in each vertical band of the image. workers: DataLoader worker processes.
    """
    # batch_size=None: items come one by one (native maps may differ in size); a batch axis is added below.
    loader = torch.utils.data.DataLoader(WithNativeDepth(dataset) if native else dataset, batch_size=None,
                                         num_workers=workers)
    per_cam = {kind: [[] for _ in CAMERAS] for kind in ("sparse", "dense")}
    log_rho = []  # per sample: list of per-view log rho
    cross_view = []  # per sample: Eq. (20) from cross_view_consistency
    band_err, band_count = np.zeros(NUM_BANDS), np.zeros(NUM_BANDS)  # sums of |D_hat - D*| / D*, pixels
    for i, item in enumerate(tqdm(loader, desc="eval", disable=not progress, dynamic_ncols=True)):
        native_gt = item.pop("depth_native", None)  # N tensors (H0, W0) under the native protocol
        batch = batch_to_device({k: v[None] for k, v in item.items()}, device)
        depth = predict(batch).float()  # (1, N, 1, H, W)
        if on_sample is not None:
            on_sample(i, batch, depth)
        pred = depth[0, :, 0].cpu().numpy()  # (N, H, W)
        for n in range(len(CAMERAS)):
            if native_gt is not None:  # the prediction resized to the native ground truth
                gt = native_gt[n].numpy()
                full = F.interpolate(depth[:, n], size=gt.shape, mode="bilinear", align_corners=False)
                per_cam["sparse"][n].append(_scored(full[0, 0].cpu().numpy(), gt, depth_range, median_scaling))
            else:
                per_cam["sparse"][n].append(_scored(pred[n], batch["depth"][0, n, 0].cpu().numpy(),
                                                    depth_range, median_scaling))
            if "depth_dense" in batch:
                per_cam["dense"][n].append(_scored(pred[n], batch["depth_dense"][0, n, 0].cpu().numpy(),
                                                   depth_range, median_scaling))
        band_gt = batch.get("depth_dense", batch["depth"])[0, :, 0].cpu().numpy()  # (N, H, W)
        valid = valid_mask(band_gt, *depth_range)
        clipped = np.clip(pred, *depth_range)  # as compute_depth_metrics; metric, never median-scaled
        rel = np.where(valid, np.abs(clipped - band_gt) / np.where(valid, band_gt, 1.0), 0.0)
        band = np.arange(band_gt.shape[-1]) * NUM_BANDS // band_gt.shape[-1]  # column -> band
        band_err += np.bincount(band, rel.sum(axis=(0, 1)), NUM_BANDS)
        band_count += np.bincount(band, valid.sum(axis=(0, 1)), NUM_BANDS)
        gt = batch["depth"][0, :, 0].cpu().numpy()
        rhos = (log_scale_ratio(pred[n], gt[n], *depth_range) for n in range(len(CAMERAS)))
        log_rho.append([r for r in rhos if r is not None])
        if "intrinsics" in batch and "cam_to_ego" in batch:
            cross_view.append(cross_view_consistency(pred, batch["intrinsics"][0].cpu().numpy(),
                                                     batch["cam_to_ego"][0].cpu().numpy(), band_gt))
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
            "column_bands": bands, "num_samples": len(log_rho), "protocol": "native" if native else "input"}


def evaluate_model(model, dataset, device, median_scaling=False, progress=True, on_sample=None, native=False,
                   flip=False, workers=0):
    """`evaluate_predictions` for a Student (restored to its train/eval mode afterwards), over
    the depth range the student was trained for (its StudentConfig's d_min, d_max); flip: the
    test-time flip averaging of `flip_averaged`."""
    def predict(batch):
        return model(batch["images"])["depth"]  # (B, N, 1, H, W) meters

    was_training = model.training
    model.eval()
    try:
        return evaluate_predictions(flip_averaged(predict) if flip else predict, dataset, device,
                                    median_scaling, progress, on_sample,
                                    (model.cfg.min_depth, model.cfg.max_depth), native, workers)
    finally:
        model.train(was_training)


def per_camera_median(dataset, num_samples, depth_range=(MIN_DEPTH, MAX_DEPTH)):
    """A constant predictor: the per-camera median of the sparse ground truth over the first
    `num_samples` items of `dataset` -> (N,) meters. (A reference point, not the constant that
    minimises AbsRel.)"""
    values = [[] for _ in CAMERAS]
    for i in range(min(num_samples, len(dataset))):
        depth = dataset[i]["depth"][:, 0].numpy()  # (N, H, W)
        for n in range(len(CAMERAS)):
            values[n].append(depth[n][valid_mask(depth[n], *depth_range)])
    return np.array([np.median(np.concatenate(v)) for v in values])


def format_table(results, title):
    """Markdown table: one row per camera and 'all', for every ground-truth kind, with the number
    of images and of ground-truth pixels scored."""
    lines = []
    for kind in results["all"]:
        at = " at the native resolution" if kind == "sparse" and results.get("protocol") == "native" else ""
        lines += [f"### {title}: {kind} ground truth{at}", "",
                  "| camera | " + " | ".join(METRIC_KEYS + COUNT_KEYS) + " |",
                  "|---" * (len(METRIC_KEYS) + len(COUNT_KEYS) + 1) + "|"]
        rows = [(c, results["per_camera"][c][kind]) for c in CAMERAS] + [("all", results["all"][kind])]
        lines += [f"| {c} | " + " | ".join([f"{m[k]:.4f}" for k in METRIC_KEYS] + [str(m[k]) for k in COUNT_KEYS])
                  + " |" for c, m in rows if m]
        lines.append("")
    s = results["scale"]
    if s["mean_abs_log_rho"] is not None:
        lines.append(f"Scale consistency (Eq. 19): mean |log rho| = {s['mean_abs_log_rho']:.4f}, "
                     f"std of log rho across views = {s['std_log_rho_across_views']:.4f}")
    cv = results["cross_view"]
    if cv is not None and cv["mean_rel"] is not None:
        pairs = ", ".join(f"{k} {p['mean_rel']:.4f}" for k, p in cv["per_pair"].items() if p["mean_rel"] is not None)
        lines.append(f"Cross-view consistency (Eq. 20): mean relative disagreement = {cv['mean_rel']:.4f} over "
                     f"{cv['num_pixels']} pixels chosen by the ground truth; per pair: {pairs}")
    bands = results.get("column_bands")
    if bands and any(v is not None for v in bands["abs_rel"]):
        lines.append(f"Metric AbsRel by column band, left to right ({bands['ground_truth']} ground truth, all "
                     "pixels pooled): " + " ".join("-" if v is None else f"{v:.4f}" for v in bands["abs_rel"]))
    return "\n".join(lines) + "\n"


def get_args(argv=None):
    """The command line; every flag has help."""
    p = argparse.ArgumentParser(description="Evaluate a student checkpoint (Eqs. 18-20).")
    p.add_argument("--checkpoint", default="outputs/demo/checkpoint.pt",
                   help="a checkpoint.pt written by train.py, a model folder (OUT/student: config.json + "
                        "model.safetensors) or a Hugging Face hub id owner/name")
    p.add_argument("--data", default=None, choices=DATASETS, help="dataset (default: the checkpoint's)")
    p.add_argument("--dataroot", default=None, help="nuScenes or DDAD root folder (default: the checkpoint's)")
    p.add_argument("--version", default=None, choices=["v1.0-trainval", "v1.0-mini"], help="nuScenes version")
    p.add_argument("--split", default=None,
                   help="split to score (default: test on synthetic, val / mini_val on nuScenes, val on DDAD)")
    p.add_argument("--max-samples", type=int, default=None, help="score only the first this many samples")
    p.add_argument("--median-scaling", action="store_true", help="per-image median scaling (Eq. 18); default metric")
    p.add_argument("--protocol", default="native", choices=["native", "input"],
                   help="native (default): LiDAR ground truth at each camera's native resolution, the prediction "
                        "resized to it (SurroundDepth; datasets without native ground truth, e.g. synthetic, score "
                        "at the input size); input: ground truth re-rendered at the input size")
    p.add_argument("--flip", action="store_true", help="average with the prediction of the flipped images (test-time)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (0: load in the main process)")
    p.add_argument("--baseline", action="store_true", help="also score the per-camera median training depth")
    p.add_argument("--json", default=None, help="write the results as JSON to this file")
    p.add_argument("--out", default=None, help="folder for metrics.md, metrics.json and figures")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    return p.parse_args(argv)


def main(argv=None):
    from model import load_student
    from viz import sample_figure, save_png

    args = get_args(argv)
    device = torch.device(args.device)
    model, trained = load_student(args.checkpoint, device)  # the training args as far as known
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

    native = args.protocol == "native" and has_native_depth(dataset)
    results = {"checkpoint": args.checkpoint, "split": split, "median_scaling": args.median_scaling, "flip": args.flip,
               "student": evaluate_model(model, dataset, device, args.median_scaling, on_sample=draw, native=native,
                                         flip=args.flip, workers=args.workers)}
    table = format_table(results["student"], f"student on {data} {split}")
    if args.baseline:
        train_split = split_name(data, version, "train")
        medians = per_camera_median(build_dataset(data, train_split, **options), 64, depth_range(data))
        const = torch.tensor(medians, dtype=torch.float32, device=device).view(1, -1, 1, 1, 1)
        results["constant_baseline"] = evaluate_predictions(lambda b: const.expand_as(b["depth"]), dataset, device,
                                                            args.median_scaling, depth_range=depth_range(data),
                                                            native=native, workers=args.workers)
        results["constant_baseline"]["medians"] = medians.tolist()
        table += "\n" + format_table(results["constant_baseline"], "constant (per-camera median training depth)")
    print(table)
    outputs = {args.json: json.dumps(results, indent=2)} if args.json else {}
    if args.out:
        outputs[os.path.join(args.out, "metrics.md")] = table
        outputs[os.path.join(args.out, "metrics.json")] = json.dumps(results, indent=2)
    for path, text in outputs.items():
        write_text(path, text)  # never a half-written file
    return results


if __name__ == "__main__":
    run_cli(main)
