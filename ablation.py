"""The ablation of the README (`python benchmark.py ablation`): which terms of Eq. (17) help.

    python benchmark.py ablation --steps 200 --seeds 0 1 2 --out outputs/ablation [--no-figure]

Each row trains the same student for the same steps with one setting of Eq. (17)
(lambda_ckd, lambda_vr), with bilinear and with convex upsampling, plus a stride-2 baseline;
evaluates it on the synthetic test split against sparse and dense ground truth; and the table
reports mean +- std over seeds of AbsRel, RMSE, delta1, the scale consistency of Eq. (19) and
the cross-view disagreement of Eq. (20). Finished runs are reused (after a check that their
decoder matches the setting), so an interrupted ablation resumes; a run whose test.json
predates Eq. (20) is re-evaluated from its checkpoint (no retraining). `--figure` (on by default) writes bev.png: the
bird's-eye view of one test sample, the first seed's baseline beside its CKD + VRKD and the
dense ground truth.
"""
import argparse
import json
import os

import numpy as np
import torch

import evaluate
import train
from cli import InputError, atomic_path, write_text
from data import build_dataset
from model import load_checkpoint
from rig import MAX_DEPTH, MIN_DEPTH
from teacher import build_teacher
from viz import bev_figure, save_png

# Rows of the table: the train.py flags that switch terms of Eq. (17) off; every other flag,
# lambda_ckd and lambda_vr included, keeps its default. The four terms are run with the default
# (bilinear) upsampling and again with convex upsampling; the last row decodes to stride 2.
TERMS = {"baseline": ["--lambda-ckd", "0", "--lambda-vr", "0"], "+CKD": ["--lambda-vr", "0"],
         "+VRKD": ["--lambda-ckd", "0"], "CKD + VRKD": []}
CONVEX = {f"{name}, convex upsampling": flags + ["--upsample", "convex"] for name, flags in TERMS.items()}
SETTINGS = {**TERMS, **CONVEX,
            # the first student design, decoding to stride 2 (see `speed`): is the faster default as accurate?
            "baseline, stride-2 decoder": TERMS["baseline"] + ["--decoder-channels", "256", "128", "64", "32"]}
COLUMNS = (("sparse", "abs_rel"), ("sparse", "rmse"), ("sparse", "a1"),
           ("dense", "abs_rel"), ("dense", "rmse"), ("dense", "a1"))
FIGURE_SETTINGS = ("baseline", "CKD + VRKD")  # the rows bev.png compares, beside the ground truth
FIGURE_SAMPLE = 0  # index of the synthetic test sample drawn in bev.png


def run_folder(name, seed, root):
    """The folder of one (setting, seed) run: checkpoint.pt, test.json, the training logs."""
    return os.path.join(root, f"{name.replace(' ', '').replace('+', 'plus_').replace(',', '_')}_seed{seed}")


_TEST_SETS = {}  # image size -> the rendered synthetic test split, shared by every run


def synthetic_test_split(image_size):
    """The synthetic test split at `image_size`, rendered once per process (64 samples)."""
    key = tuple(image_size)
    if key not in _TEST_SETS:
        test = build_dataset("synthetic", "test", image_size=key)
        _TEST_SETS[key] = [test[i] for i in range(len(test))]
    return _TEST_SETS[key]


def teacher_error(teacher, dataset, depth_range=(MIN_DEPTH, MAX_DEPTH)):
    """The teacher's zero-shot error on `dataset`, the Depth Anything protocol: every view's
    disparity aligned by `evaluate.affine_invariant_metrics` and scored against the dense and the
    sparse ground truth -> {'dense': metrics, 'sparse': metrics}, means over images."""
    rows = {"dense": [], "sparse": []}
    for item in dataset:
        out = teacher(item["images"], item["depth_dense"])  # the N views as a batch
        for kind, key in (("dense", "depth_dense"), ("sparse", "depth")):
            rows[kind] += [evaluate.affine_invariant_metrics(out["disparity"][n, 0], item[key][n, 0], *depth_range)
                           for n in range(item["images"].shape[0])]
    return {kind: evaluate.mean_metrics(r) for kind, r in rows.items()}


def teacher_zero_shot(argv=None):
    """`python benchmark.py teacher`: the emulated teacher's zero-shot error on a synthetic split."""
    p = argparse.ArgumentParser(description="Zero-shot error of a teacher, the Depth Anything way (affine-aligned).")
    p.add_argument("--teacher", default="emulated", help="'emulated' or 'emulated:S' (strength S)")
    p.add_argument("--split", default="val", choices=["val", "test"], help="synthetic split to score")
    p.add_argument("--json", default=None, help="also write the metrics here")
    args = p.parse_args(argv)
    dataset = build_dataset("synthetic", args.split)
    results = teacher_error(build_teacher(args.teacher), (dataset[i] for i in range(len(dataset))))
    for kind, m in results.items():
        print(f"{args.teacher} {args.split} ({len(dataset)} samples), vs {kind} ground truth: "
              f"AbsRel {m['abs_rel']:.4f}  RMSE {m['rmse']:.3f}  delta1 {m['a1']:.4f}")
    if args.json:
        write_text(args.json, json.dumps(results, indent=2))
    return results

def run_one(name, seed, args):
    """Train (unless done) and evaluate (unless done, Eq. (20) included) one (setting, seed)
    -> the results dict of evaluate."""
    out = run_folder(name, seed, args.out)
    result_path = os.path.join(out, "test.json")
    if not os.path.exists(result_path):
        train.main(SETTINGS[name] + ["--steps", str(args.steps), "--seed", str(seed),
                                     "--val-every", str(args.steps), "--out", out])
    model, _ = load_checkpoint(os.path.join(out, "checkpoint.pt"))  # loaded once: checked, then scored
    expected = train.get_args(SETTINGS[name])
    cfg = model.cfg
    if (cfg.upsample, list(cfg.decoder_channels)) != (expected.upsample, list(expected.decoder_channels)):
        raise InputError(f"{out}: trained with upsample={cfg.upsample}, decoder {list(cfg.decoder_channels)}, "
                         f"not as the setting {name!r} now asks; delete the folder to re-train it")
    if os.path.exists(result_path):
        with open(result_path) as f:
            results = json.load(f)
        if "cross_view" in results:
            return results
    test = synthetic_test_split(model.cfg.image_size)
    results = evaluate.evaluate_model(model, test, torch.device("cpu"), progress=False)
    with atomic_path(result_path) as tmp, open(tmp, "w") as f:  # test.json marks a finished run
        json.dump(results, f)
    return results


@torch.inference_mode()
def bev_comparison(names, seed, root):
    """bev.png's picture: `viz.bev_figure` of synthetic test sample FIGURE_SAMPLE as predicted
    by the (name, seed) runs under root, then its dense ground truth -> RGB uint8 array."""
    depths, sample = {}, None
    for name in names:
        model, _ = load_checkpoint(os.path.join(run_folder(name, seed, root), "checkpoint.pt"))
        model.eval()
        if sample is None:
            sample = build_dataset("synthetic", "test", image_size=model.cfg.image_size)[FIGURE_SAMPLE]
        depths[f"{name} (seed {seed})"] = model(sample["images"][None])["depth"][0, :, 0].numpy()  # (N, H, W)
    depths["ground truth (dense)"] = sample["depth_dense"][:, 0].numpy()
    return bev_figure(depths, sample["intrinsics"].numpy(), sample["cam_to_ego"].numpy())


def cell(values, digits=4):
    """'mean +- std' of a list of numbers."""
    return f"{np.mean(values):.{digits}f} ± {np.std(values):.{digits}f}"


def ablation(argv=None):
    """`python benchmark.py ablation`: the README's ablation table (and bev.png)."""
    p = argparse.ArgumentParser(description="Ablation of CKD and VRKD on the synthetic benchmark.")
    p.add_argument("--steps", type=int, default=300, help="training steps of every run")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of every setting")
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS), help="rows to run")
    p.add_argument("--out", default="outputs/ablation", help="folder of the runs, table.md and bev.png")
    p.add_argument("--figure", action=argparse.BooleanOptionalAction, default=True,
                   help="write bev.png: the first seed's baseline and CKD + VRKD (those of --settings) "
                        "and the dense ground truth, seen from above")
    args = p.parse_args(argv)
    header = (["setting"] + [f"{k} {m}" for k, m in COLUMNS]
              + ["mean abs log rho", "std log rho across views", "cross-view rel. disagreement (Eq. 20)"])
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    runs = {(name, s): None for s in args.seeds for name in args.settings}  # seed-major: early rows first
    for name, s in runs:
        runs[name, s] = run_one(name, s, args)
    for name in args.settings:
        runs_of = [runs[name, s] for s in args.seeds]
        cells = [cell([r["all"][k][m] for r in runs_of], 3 if m == "rmse" else 4) for k, m in COLUMNS]
        cells += [cell([r["scale"][k] for r in runs_of]) for k in ("mean_abs_log_rho", "std_log_rho_across_views")]
        cells.append(cell([r["cross_view"]["mean_rel"] for r in runs_of]))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    table = "\n".join(lines) + f"\n\n{args.steps} steps, seeds {args.seeds}, synthetic test split (64 samples).\n"
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write(table)
    print(table)
    names = [n for n in FIGURE_SETTINGS if n in args.settings]
    if args.figure and names:
        save_png(bev_comparison(names, args.seeds[0], args.out), os.path.join(args.out, "bev.png"))
