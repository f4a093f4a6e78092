"""The teacher's own error (`python benchmark.py teacher`): the emulated teacher's zero-shot
accuracy, the Depth Anything way, and where the K teacher bins of Eq. (7) put the scene's depth.

    python benchmark.py teacher --split val     # calibration (README: "The emulated teacher")
    python benchmark.py teacher --split test --json outputs/teacher_test.json

`teacher_error` also gives the ablation table its teacher rows (ablation.py).
"""
import argparse
import json

import numpy as np
import torch

import evaluate
import kd_baselines
import losses
from cli import write_text
from data import build_dataset
from rig import MAX_DEPTH, MIN_DEPTH
from teacher import build_teacher


def teacher_error(teacher, dataset, depth_range=(MIN_DEPTH, MAX_DEPTH)):
    """The teacher's error on `dataset`. 'dense', 'sparse': the Depth Anything zero-shot protocol,
    every view's disparity aligned by `evaluate.affine_invariant_metrics` to that ground truth.
    'lidar_aligned': the pseudo-depth D_T of response KD (Eq. 21: aligned on the sparse LiDAR
    points of each view, as in training) scored against the dense ground truth. Means over images."""
    rows = {"dense": [], "sparse": [], "lidar_aligned": []}
    for item in dataset:
        out = teacher(item["images"], item["depth_dense"])  # the N views as a batch
        for kind, key in (("dense", "depth_dense"), ("sparse", "depth")):
            rows[kind] += [evaluate.affine_invariant_metrics(out["disparity"][n, 0], item[key][n, 0], *depth_range)
                           for n in range(item["images"].shape[0])]
        sparse = item["depth"]
        pseudo, fitted = kd_baselines.aligned_teacher_depth(losses.normalised_farness(out["disparity"]), sparse,
                                                      losses.valid_mask(sparse, *depth_range), *depth_range)
        rows["lidar_aligned"] += [evaluate.compute_depth_metrics(pseudo[n, 0], item["depth_dense"][n, 0], *depth_range)
                                  for n in range(sparse.shape[0]) if fitted[n].all()]
    return {kind: evaluate.mean_metrics(r) for kind, r in rows.items()}


FAR_RANGE = 20.0  # meters: "beyond ~20 m everything falls into the last few bins" (README, Eq. 6 study)


def teacher_bin_usage(teacher, dataset, num_bins, depth_range=(MIN_DEPTH, MAX_DEPTH)):
    """Where the teacher's K bins of Eq. (7) live, per normalisation of Eq. (6): each valid dense
    pixel goes to bin floor(s K) of its farness s -> {mode: {'far_bins': bins holding the pixels
    beyond FAR_RANGE, 'far_share': their share of the valid pixels, 'log_depth_std': pixel-weighted
    std of log D* within a bin (how much a bin index says about depth)}}, means over images."""
    stats = {mode: [] for mode in losses.FARNESS_MODES}
    for item in dataset:
        out = teacher(item["images"], item["depth_dense"])
        depth = item["depth_dense"]  # (N, 1, H, W)
        valid = losses.valid_mask(depth, *depth_range)
        for mode in losses.FARNESS_MODES:
            s = losses.normalised_farness(out["disparity"], mode)
            bins = (s * num_bins).long().clamp_max(num_bins - 1)  # (N, 1, H, W)
            for n in range(depth.shape[0]):
                b, d, v = bins[n][valid[n]], depth[n][valid[n]].log(), valid[n]
                far = depth[n][v] > FAR_RANGE
                count = torch.bincount(b, minlength=num_bins).clamp_min(1)
                mean = torch.bincount(b, d, minlength=num_bins) / count
                spread = torch.bincount(b, (d - mean[b]) ** 2, minlength=num_bins) / count  # (K,)
                stats[mode].append((len(b[far].unique()), float(far.float().mean()),
                                    float((spread[b].sum() / len(b)).sqrt())))
    return {mode: dict(zip(("far_bins", "far_share", "log_depth_std"), np.mean(rows, axis=0).tolist()))
            for mode, rows in stats.items()}


def teacher_zero_shot(argv=None):
    """`python benchmark.py teacher`: the emulated teacher's zero-shot error on a synthetic split."""
    p = argparse.ArgumentParser(description="Zero-shot error of a teacher, the Depth Anything way (affine-aligned).")
    p.add_argument("--teacher", default="emulated", help="'emulated' or 'emulated:S' (strength S)")
    p.add_argument("--split", default="val", choices=["val", "test"], help="synthetic split to score")
    p.add_argument("--num-bins", type=int, default=64, help="K of the teacher bins of Eq. (7) (train.py --num-bins)")
    p.add_argument("--json", default=None, help="also write the metrics here")
    args = p.parse_args(argv)
    dataset = build_dataset("synthetic", args.split)
    results = teacher_error(build_teacher(args.teacher), (dataset[i] for i in range(len(dataset))))
    for kind, m in results.items():
        in_disparity = f"  AbsRel in disparity space {m['abs_rel_disparity']:.4f}" if "abs_rel_disparity" in m else ""
        print(f"{args.teacher} {args.split} ({len(dataset)} samples), {kind} (vs dense if lidar_aligned): "
              f"AbsRel {m['abs_rel']:.4f}  RMSE {m['rmse']:.3f}  delta1 {m['a1']:.4f}{in_disparity}")
    usage = teacher_bin_usage(build_teacher(args.teacher), (dataset[i] for i in range(len(dataset))), args.num_bins)
    for mode, u in usage.items():
        print(f"Eq. (6) {mode:>6}: pixels beyond {FAR_RANGE:g} m ({100 * u['far_share']:.1f} %) fill "
              f"{u['far_bins']:.1f} of {args.num_bins} bins; within-bin std of log depth {u['log_depth_std']:.4f}")
    if args.json:
        write_text(args.json, json.dumps({**results, "bins": usage}, indent=2))
    return results
