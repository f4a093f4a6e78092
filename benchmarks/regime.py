"""The regime map (`python benchmark.py regime`): where a teacher helps, and the oracle ladder.

    python benchmark.py regime                                  # the map: every regime, 3 seeds, CPU
    python benchmark.py regime --device cuda --jobs 8 --seeds 0 1 2 3 4
    python benchmark.py regime --regimes "16 scenes + 64 unlabelled" --teachers calibrated perfect  # a ladder
    python benchmark.py regime --no-train                       # tabulate the runs finished so far

A regime is how much the student may learn from (train.py flags): the unlimited stream of fresh
worlds, or N finite labelled scenes (`--train-scenes N`), with or without M more unlabelled scenes
(`--unlabelled-scenes M`). In each regime every row trains the same student for the regime's
budget (`--budget default`: train.py's default steps of the regime, where the supervised baseline
has plateaued on the validation split; `--budget demo`: 300 steps) on fixed seeds, and is scored
on the synthetic test split (`--split val` for choices). The rows: the supervised baseline, the
existing-KD baselines (response KD, self-aligned on unlabelled images, Eq. 24; feature KD), +CKD,
+VRKD, CKD + VRKD, and the dense-ground-truth oracle (`--oracle-dense-gt`: what a perfect teacher
could give at most). The ladder's rungs are the teachers of the KD rows: `calibrated` (the
default emulated teacher) and `perfect` (`emulated:0`, a relative teacher with no error).
regime.md holds per regime the rows' mean +- std and the paired differences to the baseline (and
of CKD + VRKD to response KD and feature KD) with 95 % t-intervals; regime.png draws the paired
gain over the baseline against the regime, one line per row; regime.json keeps every result.
Runs are reused as `python benchmark.py ablation` reuses them (benchmarks/ablation.py).
"""
import argparse
import json
import os
import time

import numpy as np
import torch

import train
from benchmarks import ablation
from benchmarks.stats import cell, paired_interval
from cli import write_text
from synthetic import FRAMES_PER_SCENE, SyntheticSurround

SUPERVISED = ablation.SUPERVISED
# Regimes: the train.py flags of what the student learns from. Listed from the least labelled data up.
REGIMES = {"16 scenes": ["--train-scenes", "16"],
           "16 scenes + 64 unlabelled": ["--train-scenes", "16", "--unlabelled-scenes", "64"],
           "64 scenes": ["--train-scenes", "64"],
           "64 scenes + 256 unlabelled": ["--train-scenes", "64", "--unlabelled-scenes", "256"],
           "unlimited": []}
# Rows: the train.py flags of each; response KD aligns itself on unlabelled images (Eq. 24).
ROWS = {"baseline": SUPERVISED, "response KD": SUPERVISED + ["--lambda-rkd", "1"],
        "feature KD": SUPERVISED + ["--lambda-fkd", "1"], "+CKD": ["--lambda-vr", "0"], "+VRKD": ["--lambda-ckd", "0"],
        "CKD + VRKD": [], "dense oracle": SUPERVISED + ["--oracle-dense-gt"]}
TEACHERLESS = ("baseline", "dense oracle")  # rows that read no teacher: one run whatever the rung
# The baseline of a regime with unlabelled images is the baseline on its labelled scenes alone (it
# cannot use images without ground truth): the goal compares the method with it.
LABELLED_ONLY = {"16 scenes + 64 unlabelled": "16 scenes", "64 scenes + 256 unlabelled": "64 scenes"}
TEACHERS = {"calibrated": [], "perfect": ["--teacher", "emulated:0"]}  # the ladder's rungs (ii)-(iii)
DEMO_STEPS = 300  # --budget demo: the demo's budget
CPU_SEEDS, GPU_SEEDS = (0, 1, 2), (0, 1, 2, 3, 4)  # fixed before the runs (docs/EXPERIMENTS.md section 6)
# The comparisons of the goal: CKD + VRKD against the existing KD given the same images.
REFERENCES = {"CKD + VRKD": ("response KD", "feature KD")}
METRICS = (("sparse", "abs_rel"), ("dense", "abs_rel"), ("dense", "rmse"))


def run_regime(row, regime):
    """The regime whose images a row trains on: the baseline of a regime with unlabelled images trains
    on its labelled scenes alone (LABELLED_ONLY)."""
    return LABELLED_ONLY.get(regime, regime) if row == "baseline" else regime


def row_flags(row, teacher, regime):
    """train.py flags of one row of the map: the row's, its teacher's (rows with a teacher), the regime's."""
    flags = ROWS[row] + ([] if row in TEACHERLESS else TEACHERS[teacher]) + REGIMES[run_regime(row, regime)]
    if row == "response KD" and "--unlabelled-scenes" in REGIMES[regime]:
        flags = flags + ["--rkd-self-align"]  # Eq. (24): no LiDAR to align on there
    return flags


def row_name(row, teacher):
    """The label of a row: 'CKD + VRKD' (calibrated teacher) or 'CKD + VRKD, perfect teacher'."""
    return row if row in TEACHERLESS or teacher == "calibrated" else f"{row}, {teacher} teacher"


def budget_steps(regime, budget):
    """Training steps of a regime: DEMO_STEPS, or train.py's default for the regime's flags."""
    if budget == "demo":
        return DEMO_STEPS
    return train.get_args(REGIMES[regime]).steps


def regime_folder(root, regime, steps):
    """The folder of one regime's runs at one budget under root."""
    return os.path.join(root, f"{ablation.slug(regime)}_{steps}steps")


def tasks(args):
    """Every run of the map: (regime, steps, row name, seed, flags, folder regime), seed-major within a
    regime; the folder regime is where the run lives (a baseline may be shared by two regimes)."""
    out = []
    for regime in args.regimes:
        steps = budget_steps(regime, args.budget)
        for seed in args.seeds:
            for row in args.rows:
                for teacher in ([args.teachers[0]] if row in TEACHERLESS else args.teachers):
                    out.append((regime, steps, row_name(row, teacher), seed, row_flags(row, teacher, regime),
                                run_regime(row, regime)))
    return out


def run_args(args, regime, steps):
    """The namespace ablation.run_one reads for the runs of one regime at `steps`."""
    return argparse.Namespace(out=regime_folder(args.out, regime, steps), steps=steps, split=args.split,
                              device=args.device, amp=args.amp, render_cache=args.render_cache)


def run_task(task, args, train_runs=True):
    """Train and score one run of the map (or read it, --no-train) -> its results dict, or None."""
    _, steps, name, seed, flags, folder_regime = task
    sub = run_args(args, folder_regime, steps)
    if train_runs:
        return ablation.run_one(name, seed, sub, flags)
    folder = ablation.run_folder(name, seed, sub.out)
    path = os.path.join(folder, f"{args.split}.json")
    if not os.path.exists(path):
        return None
    with open(os.path.join(folder, "args.json")) as f:
        ablation.check_args(json.load(f), name, steps, seed, folder, args.amp, flags)
    with open(path) as f:
        return json.load(f)


def scene_keys(regime, seeds):
    """The rendered items the runs of a finite-scene regime read: (seed, scenes, first_scene, index)."""
    flags = train.get_args(REGIMES[regime])
    if flags.train_scenes is None:
        return []
    total = flags.train_scenes + flags.unlabelled_scenes
    return [(seed, total, i) for seed in seeds for i in range(total * FRAMES_PER_SCENE)]


def render_scene(key, image_size, root):
    """Render item `index` of the first `scenes` scenes of `seed` into the render cache `root`."""
    seed, scenes, index = key
    SyntheticSurround("train", image_size=image_size, seed=seed, scenes=scenes, cache_dir=root)[index]


def run_pool(todo, args):
    """The runs of `todo` in args.jobs processes, after rendering every scene they read once."""
    import functools
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    from tqdm import tqdm
    size = tuple(train.get_args([]).image_size)
    keys = list(dict.fromkeys(k for regime in args.regimes for k in scene_keys(regime, args.seeds)))
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    if args.render_cache is not None and keys:
        with ProcessPoolExecutor(os.cpu_count(), mp_context=mp.get_context("spawn"), initializer=ablation.start_job,
                                 initargs=(1, args.amp)) as pool:
            render = functools.partial(render_scene, image_size=size, root=args.render_cache)
            for _ in tqdm(pool.map(render, keys, chunksize=8), total=len(keys), desc="render scenes"):
                pass
    unique = list({(t[5], t[1], t[2], t[3]): t for t in todo}.values())  # a shared baseline trains once
    with ProcessPoolExecutor(args.jobs, mp_context=mp.get_context("spawn"), initializer=ablation.start_job,
                             initargs=(threads, args.amp)) as pool:
        done = pool.map(functools.partial(run_task, args=args), unique)
        results = dict(zip([(t[5],) + t[1:4] for t in unique],
                           tqdm(done, total=len(unique), desc=f"runs ({args.jobs} at a time)")))
    return {t[:4]: results[(t[5],) + t[1:4]] for t in todo}


def metric(results, kind, key):
    """One number of an evaluate results dict."""
    return results["all"][kind][key]


def paired_gain(runs, regime, steps, name, ref, seeds, kind, key):
    """Paired difference of `name` to `ref` over the seeds both finished, in % of the reference's mean
    -> (mean %, half-width % of the 95 % t-interval or None, number of seeds)."""
    both = [s for s in seeds if runs.get((regime, steps, name, s)) and runs.get((regime, steps, ref, s))]
    if not both:
        return None, None, 0
    a = [metric(runs[regime, steps, name, s], kind, key) for s in both]
    b = [metric(runs[regime, steps, ref, s], kind, key) for s in both]
    mean, half = paired_interval(a, b)
    scale = 100.0 / float(np.mean(b))
    return mean * scale, None if half is None else half * scale, len(both)


def references(name):
    """The rows `name` is paired with: the baseline, and for CKD + VRKD the existing KD with the same teacher."""
    if name == "baseline":
        return []
    row, _, teacher = name.partition(", ")
    return ["baseline"] + [f"{ref}, {teacher}" if teacher else ref for ref in REFERENCES.get(row, ())]


def regime_table(runs, args):
    """regime.md's lines: per regime, the rows' mean +- std and their paired gains (%)."""
    lines = []
    names = list(dict.fromkeys(t[2] for t in tasks(args)))
    for regime in args.regimes:
        steps = budget_steps(regime, args.budget)
        lines += [f"### {regime} ({steps} steps)", "",
                  "| row | seeds | sparse AbsRel | dense AbsRel | dense RMSE (m) | Δ sparse AbsRel | Δ dense AbsRel "
                  "| Δ dense RMSE |", "|---" * 8 + "|"]
        for name in names:
            done = [runs[regime, steps, name, s] for s in args.seeds if runs.get((regime, steps, name, s))]
            if not done:
                continue
            cells = [cell([metric(r, k, m) for r in done], 3 if m == "rmse" else 4) for k, m in METRICS]
            gains = []
            for kind, key in METRICS:
                parts = []
                for ref in references(name):
                    mean, half, _ = paired_gain(runs, regime, steps, name, ref, args.seeds, kind, key)
                    if mean is not None:
                        ci = f" ± {half:.1f}" if half is not None else ""
                        parts.append(f"{mean:+.1f}{ci} % vs {ref}")
                gains.append("; ".join(parts) or "-")
            lines.append(f"| {name} | {len(done)} | " + " | ".join(cells + gains) + " |")
        lines.append("")
    return lines


def regime(argv=None):
    """`python benchmark.py regime`: the regime map and the oracle ladder (regime.md, regime.png, regime.json)."""
    p = argparse.ArgumentParser(description="Where a teacher helps: paired gains over the supervised baseline "
                                            "across regimes of labelled and unlabelled data (synthetic).")
    p.add_argument("--regimes", nargs="+", default=list(REGIMES), choices=list(REGIMES), help="regimes to run")
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS), help="rows to run in each regime")
    p.add_argument("--teachers", nargs="+", default=["calibrated"], choices=list(TEACHERS),
                   help="teachers of the KD rows, the ladder's rungs (perfect: emulated:0)")
    p.add_argument("--budget", default="default", choices=["default", "demo"],
                   help="steps of each regime: train.py's default for it (the baseline's plateau) or 300")
    p.add_argument("--seeds", type=int, nargs="+", default=list(CPU_SEEDS),
                   help=f"training seeds, fixed in advance: {list(CPU_SEEDS)} on the CPU, {list(GPU_SEEDS)} on a GPU")
    p.add_argument("--split", default="test", choices=["test", "val"], help="split that scores the runs")
    p.add_argument("--out", default="outputs/regime", help="folder of the runs, regime.md, regime.png, regime.json")
    p.add_argument("--train", action=argparse.BooleanOptionalAction, default=True,
                   help="train and score the missing runs (--no-train: tabulate the finished ones)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="device of the training")
    p.add_argument("--amp", default="off", choices=["off", "bf16", "fp16"], help="autocast of the training (off: fp32)")
    p.add_argument("--jobs", type=int, default=1, help="runs side by side, each in its own process")
    p.add_argument("--render-cache", default="outputs/render_cache", help="folder of the rendered worlds ('none')")
    args = p.parse_args(argv)
    args.render_cache = None if args.render_cache == "none" else args.render_cache
    ablation.exact_fp32(args.amp)
    start = time.time()
    todo = tasks(args)
    runs = {t[:4]: None for t in todo}
    if args.train and args.jobs > 1:
        runs.update(run_pool(todo, args))
    for t in todo:
        runs[t[:4]] = runs[t[:4]] or run_task(t, args, args.train)
    lines = regime_table(runs, args)
    lines.append(f"Seeds {args.seeds}, synthetic {args.split} split, budget {args.budget}, teachers {args.teachers}, "
                 f"autocast {args.amp}; Δ: paired difference in % of the reference, ± the 95 % t-interval's "
                 f"half-width. This table took {(time.time() - start) / 60:.0f} min.")
    write_text(os.path.join(args.out, "regime.md"), "\n".join(lines) + "\n")
    write_text(os.path.join(args.out, "regime.json"),
               json.dumps([{"regime": k[0], "steps": k[1], "row": k[2], "seed": k[3], "results": v}
                           for k, v in runs.items() if v], indent=1))
    write_regime_figure(runs, args, os.path.join(args.out, "regime.png"))
    print("\n".join(lines))


def write_regime_figure(runs, args, path):
    """regime.png: the paired change (%) of every row against the baseline, sparse and dense AbsRel, with
    95 % intervals, one line per (regime, row) (`viz.interval_chart`)."""
    from viz import interval_chart, save_png
    names = [n for n in dict.fromkeys(t[2] for t in tasks(args)) if n != "baseline"]
    labels, means, lows, highs = [], [], [], []
    for regime in args.regimes:
        steps = budget_steps(regime, args.budget)
        for name in names:
            gains = [paired_gain(runs, regime, steps, name, "baseline", args.seeds, kind, key)
                     for kind, key in METRICS[:2]]
            points = [g[:2] for g in gains]
            if all(m is None for m, _ in points):
                continue
            label = f"{regime}: {name}" if len(args.regimes) > 1 else name
            labels.append(f"{label} ({gains[0][2]} paired seeds)")
            means.append([np.nan if m is None else m for m, _ in points])
            lows.append([np.nan if m is None or h is None else m - h for m, h in points])
            highs.append([np.nan if m is None or h is None else m + h for m, h in points])
    if labels:
        title = f"change against the supervised baseline, {', '.join(args.regimes)} (seeds planned: {args.seeds})"
        save_png(interval_chart(labels, means, lows, highs, "AbsRel change (%), lower is better", title,
                                series=["sparse AbsRel", "dense AbsRel"]), path)
