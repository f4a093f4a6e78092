"""The ablation of the README's results: baseline, +CKD, +VRKD, CKD + VRKD, over seeds.

    python ablation.py --steps 300 --seeds 0 1 2 --out outputs/ablation

Each row trains the same student for the same steps with one setting of Eq. (17)
(lambda_ckd, lambda_vr), evaluates it on the synthetic test split against sparse and dense
ground truth, and the table reports mean +- std over seeds of AbsRel, RMSE, delta1 and the
scale consistency of Eq. (19). Finished runs are reused, so an interrupted ablation resumes.
"""
import argparse
import json
import os

import numpy as np
import torch

import evaluate
import train
from data import build_dataset
from model import load_checkpoint

# Rows of the table: name -> (lambda_ckd, lambda_vr) of Eq. (17).
SETTINGS = {"baseline": (0.0, 0.0), "+CKD": (1.0, 0.0), "+VRKD": (0.0, 1.0), "CKD + VRKD": (1.0, 1.0)}
COLUMNS = (("sparse", "abs_rel"), ("sparse", "rmse"), ("sparse", "a1"),
           ("dense", "abs_rel"), ("dense", "rmse"), ("dense", "a1"))


def run_one(name, seed, args):
    """Train (unless done) and evaluate one (setting, seed) -> the results dict of evaluate."""
    out = os.path.join(args.out, f"{name.replace(' ', '').replace('+', 'plus_')}_seed{seed}")
    result_path = os.path.join(out, "test.json")
    if os.path.exists(result_path):
        with open(result_path) as f:
            return json.load(f)
    ckd, vr = SETTINGS[name]
    train.main(["--steps", str(args.steps), "--seed", str(seed), "--lambda-ckd", str(ckd), "--lambda-vr", str(vr),
                "--val-every", str(args.steps), "--out", out])
    model, _ = load_checkpoint(os.path.join(out, "checkpoint.pt"))
    test = build_dataset("synthetic", "test", image_size=model.cfg.image_size)
    results = evaluate.evaluate_model(model, test, torch.device("cpu"), progress=False)
    with open(result_path, "w") as f:
        json.dump(results, f)
    return results


def cell(values, digits=4):
    """'mean +- std' of a list of numbers."""
    return f"{np.mean(values):.{digits}f} ± {np.std(values):.{digits}f}"


def main(argv=None):
    p = argparse.ArgumentParser(description="Ablation of CKD and VRKD on the synthetic benchmark.")
    p.add_argument("--steps", type=int, default=300, help="training steps of every run")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of every setting")
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS), help="rows to run")
    p.add_argument("--out", default="outputs/ablation", help="folder of the runs and table.md")
    args = p.parse_args(argv)
    header = ["setting"] + [f"{k} {m}" for k, m in COLUMNS] + ["mean abs log rho", "std log rho across views"]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    runs = {(name, s): None for s in args.seeds for name in args.settings}  # seed-major: early rows first
    for name, s in runs:
        runs[name, s] = run_one(name, s, args)
    for name in args.settings:
        runs_of = [runs[name, s] for s in args.seeds]
        cells = [cell([r["all"][k][m] for r in runs_of], 3 if m == "rmse" else 4) for k, m in COLUMNS]
        cells += [cell([r["scale"][k] for r in runs_of]) for k in ("mean_abs_log_rho", "std_log_rho_across_views")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    table = "\n".join(lines) + f"\n\n{args.steps} steps, seeds {args.seeds}, synthetic test split (64 samples).\n"
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write(table)
    print(table)


if __name__ == "__main__":
    main()
