"""Evaluate a student checkpoint: depth metrics, scale consistency, pictures.

Implements Eqs. (18)-(19) of the README's method section:
- (18) AbsRel, SqRel, RMSE, RMSElog, delta < 1.25^k on pixels with d_min < D* < d_max,
  metric (the default) or median-scaled; per image, averaged per camera, then over cameras;
- (19) scale consistency: rho = median(D*) / median(D_hat) per image, mean |log rho| and the
  std of log rho across the six views of each surround sample.

    python evaluate.py --checkpoint outputs/demo/checkpoint.pt [--split test] [--median-scaling]
                       [--json out.json] [--out DIR] [--baseline]

On synthetic data it scores against the sparse LiDAR ground truth (the protocol) and also
against the dense ground truth.
"""
import argparse
import json
import os

import numpy as np
import torch
from tqdm import tqdm

from data import CAMERAS, MAX_DEPTH, MIN_DEPTH, InputError, build_dataset

METRIC_KEYS = ("abs_rel", "sq_rel", "rmse", "rmse_log", "a1", "a2", "a3")
DELTA = 1.25  # threshold base of the delta accuracies a1, a2, a3 (Eq. 18)
NUM_FIGURES = 4  # surround samples drawn by --out


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


def mean_metrics(rows):
    """Average a list of metric dicts key by key (None rows are skipped); None if empty."""
    rows = [r for r in rows if r is not None]
    return {k: float(np.mean([r[k] for r in rows])) for k in METRIC_KEYS} if rows else None


@torch.inference_mode()
def evaluate_predictions(predict, dataset, device, median_scaling=False, progress=True, on_sample=None):
    """Score predict(batch) -> depth (1, N, 1, H, W) meters over `dataset`, one sample at a time.

    Returns {'per_camera': {camera: {'sparse': metrics, 'dense': metrics}}, 'all': {...},
    'scale': {'mean_abs_log_rho', 'std_log_rho_across_views'}, 'num_samples'}. 'dense' is
    there only when the dataset has depth_dense. `on_sample(index, batch, depth)` sees every
    prediction (for figures). Per-image metrics are averaged per camera, then over cameras.
    """
    loader = torch.utils.data.DataLoader(dataset, batch_size=1, num_workers=0)
    per_cam = {kind: [[] for _ in CAMERAS] for kind in ("sparse", "dense")}
    log_rho = []  # per sample: list of per-view log rho
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
        gt = batch["depth"][0, :, 0].cpu().numpy()
        log_rho.append([r for r in (log_scale_ratio(pred[n], gt[n]) for n in range(len(CAMERAS))) if r is not None])
    kinds = [k for k in per_cam if any(per_cam[k][0])]
    cams = {cam: {k: mean_metrics(per_cam[k][n]) for k in kinds} for n, cam in enumerate(CAMERAS)}
    overall = {k: mean_metrics([cams[c][k] for c in CAMERAS]) for k in kinds}
    flat = [r for sample in log_rho for r in sample]
    scale = {"mean_abs_log_rho": float(np.mean(np.abs(flat))) if flat else None,
             "std_log_rho_across_views": float(np.mean([np.std(s) for s in log_rho if len(s) > 1]))
             if any(len(s) > 1 for s in log_rho) else None}
    return {"per_camera": cams, "all": overall, "scale": scale, "num_samples": len(log_rho)}


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
    return "\n".join(lines) + "\n"


def get_args(argv=None):
    """The command line; every flag has help."""
    p = argparse.ArgumentParser(description="Evaluate a student checkpoint (Eqs. 18-19).")
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
    return p.parse_args(argv)


def main(argv=None):
    from model import load_checkpoint
    from viz import sample_figure, save_png

    args = get_args(argv)
    device = torch.device(args.device)
    model, ckpt = load_checkpoint(args.checkpoint, device)
    trained = ckpt.get("args", {})
    data = args.data or trained.get("data", "synthetic")
    version = args.version or trained.get("version", "v1.0-trainval")
    split = args.split or ("test" if data == "synthetic" else ("mini_val" if version == "v1.0-mini" else "val"))
    options = dict(image_size=model.cfg.image_size, dataroot=args.dataroot or trained.get("dataroot"),
                   version=version, seed=trained.get("seed", 0))
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
        train_split = "train" if data == "synthetic" else ("mini_train" if version == "v1.0-mini" else "train")
        medians = per_camera_median(build_dataset(data, train_split, **options), num_samples=64)
        const = torch.tensor(medians, dtype=torch.float32, device=device).view(1, -1, 1, 1, 1)
        results["constant_baseline"] = evaluate_predictions(lambda b: const.expand_as(b["depth"]), dataset, device,
                                                            args.median_scaling)
        results["constant_baseline"]["medians"] = medians.tolist()
        table += "\n" + format_table(results["constant_baseline"], "constant (per-camera median training depth)")
    print(table)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "metrics.md"), "w") as f:
            f.write(table)
        with open(os.path.join(args.out, "metrics.json"), "w") as f:
            json.dump(results, f, indent=2)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    try:
        main()
    except InputError as err:  # bad paths and files: one line that names the file and the fix
        raise SystemExit(f"error: {err}")
