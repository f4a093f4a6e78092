"""The ablation of the README (`python benchmark.py ablation`): which terms of Eq. (17) help, the
existing-KD baselines of Eqs. (21)-(22) and Eq. (23), beside the teacher's own error (zeroshot.py).

    python benchmark.py ablation                          # demo budget: 300 steps, seeds 0-4
    python benchmark.py ablation --device cuda --jobs 8   # the same on a GPU box, 8 runs at a time
    python benchmark.py ablation --no-train               # tabulate the runs finished so far
    python benchmark.py ablation --split val --seeds 100 101 --settings ...   # a study on the validation split

Each row (SETTINGS) trains the same student for the same steps and is scored on the synthetic test
split (val: for choices; writes val.json, never test.json); table.md gives per row mean +- std over
seeds (benchmarks/stats.py) and the paired differences to the baseline (CKD + VRKD also to response
KD) with 95 % t-intervals, ablation.png draws them, bev.png one test sample from above. A finished
run is reused only if every training flag it saved equals the row's (RUN_LOCAL aside). `--jobs N`
renders the worlds first (one process per core), then runs N runs side by side. Training is fp32
by default (`--amp off`, TF32 off on CUDA), so CPU and GPU runs compare.
"""
import argparse
import json
import os
import time

import numpy as np
import torch

import evaluate
import train
from checkpoint import read_checkpoint
from cli import InputError, atomic_path, write_text
from data import build_dataset
from model import load_checkpoint
from sampling import StepSampler
from synthetic import SPLIT_LENGTHS, SyntheticSurround, render_cache_path
from teacher import build_teacher
from viz import bev_figure, interval_chart, save_png
from benchmarks.stats import T_975, cell, paired_interval  # noqa: F401 (T_975: ablation.T_975)
from benchmarks.zeroshot import teacher_error

# Rows of the table: the train.py flags of each setting; every other flag keeps its default.
# Listed in the order they run within a seed (the comparisons of the goal first).
SUPERVISED = ["--lambda-ckd", "0", "--lambda-vr", "0"]
DEFAULT_SETTINGS = {"baseline": SUPERVISED, "response KD": SUPERVISED + ["--lambda-rkd", "1"],
                    "CKD + VRKD": [], "+CKD": ["--lambda-vr", "0"], "+VRKD": ["--lambda-ckd", "0"],
                    "feature KD": SUPERVISED + ["--lambda-fkd", "1"]}
TERMS = {name: DEFAULT_SETTINGS[name] for name in ("baseline", "+CKD", "+VRKD", "CKD + VRKD")}
EXTRA_SETTINGS = {**{f"{name}, convex upsampling": flags + ["--upsample", "convex"] for name, flags in TERMS.items()},
                  # the first student design, decoding to stride 2 (see `speed`): is the faster default as accurate?
                  "baseline, stride-2 decoder": SUPERVISED + ["--decoder-channels", "256", "128", "64", "32"],
                  # the light student (README, "Speed"): what the faster encoder costs in accuracy
                  "baseline, light encoder": SUPERVISED + ["--encoder", "regnet_x_400mf"]}
# Eq. (23) study: the method plus response KD everywhere (Eq. 21) or off the LiDAR pixels (r = 0, 1).
METHOD_PLUS_RKD = {"CKD + VRKD + RKD": ["--lambda-rkd", "1"],
                   "CKD + VRKD + off-LiDAR RKD": ["--lambda-rkd", "1", "--rkd-off-lidar", "0"],
                   "CKD + VRKD + off-LiDAR RKD r1": ["--lambda-rkd", "1", "--rkd-off-lidar", "1"]}
SETTINGS = {**DEFAULT_SETTINGS, **EXTRA_SETTINGS, **METHOD_PLUS_RKD}
# The rows the table also pairs a row with, beyond the baseline (the comparisons of the goal).
REFERENCES = {"CKD + VRKD": ("response KD",), **{name: ("response KD", "CKD + VRKD") for name in METHOD_PLUS_RKD}}
# The seeds, fixed before any run: every one is used. Demo budget (300 steps): 0-4; the longer
# budgets (2x on the CPU, 4x on a GPU): 0-2. Studies on the validation split (choices of the method) use
# their own seeds, 100 and 101, so no test seed is ever seen by a choice.
DEMO_SEEDS = (0, 1, 2, 3, 4)
LONG_SEEDS = (0, 1, 2)
VAL_SEEDS = (100, 101)
# Flags that do not change what a run learns: a finished run is reused whatever their values.
RUN_LOCAL = ("out", "resume", "device", "workers", "val_every", "val_samples", "teacher_cache", "dataroot",
             "render_cache")
COLUMNS = (("sparse", "abs_rel"), ("sparse", "rmse"), ("sparse", "a1"),
           ("dense", "abs_rel"), ("dense", "rmse"), ("dense", "a1"))
FIGURE_SETTINGS = ("baseline", "CKD + VRKD")  # the rows bev.png compares, beside the ground truth
FIGURE_SAMPLE = 0  # index of the synthetic test sample drawn in bev.png


def slug(name):
    """A row or regime name as a folder name: 'CKD + VRKD, perfect teacher' -> 'CKDplus_VRKD_perfectteacher'."""
    return name.replace(" ", "").replace("+", "plus_").replace(",", "_")


def run_folder(name, seed, root):
    """The folder of one (setting, seed) run: checkpoint.pt, test.json (or val.json), the training logs."""
    return os.path.join(root, f"{slug(name)}_seed{seed}")


_SPLITS = {}  # (split, image size) -> the rendered synthetic split, shared by every run


def synthetic_split(split, image_size, render_cache=None):
    """The synthetic 'test' (64 samples) or 'val' (32) split at `image_size`, rendered once per
    process, or read from the render cache folder `render_cache` (see synthetic.SyntheticSurround)."""
    key = (split, tuple(image_size))
    if key not in _SPLITS:
        data = build_dataset("synthetic", split, image_size=key[1], cache_dir=render_cache)
        _SPLITS[key] = [data[i] for i in range(len(data))]
    return _SPLITS[key]


def expected_args(name, steps, seed, amp="off", flags=None):
    """The train.py args a (setting, seed) run must have saved, as plain JSON values; `flags`: the
    setting's train.py flags (default SETTINGS[name])."""
    flags = SETTINGS[name] if flags is None else flags
    args = vars(train.get_args(flags + ["--steps", str(steps), "--seed", str(seed), "--amp", amp]))
    return json.loads(json.dumps(args))


def check_args(saved, name, steps, seed, where, amp="off", flags=None):
    """Raise InputError unless every flag outside RUN_LOCAL of the run's saved args equals the
    setting's (a run trained before a flag existed lacks it, and does not match)."""
    want, have = expected_args(name, steps, seed, amp, flags), json.loads(json.dumps(saved))
    differ = sorted(k for k in set(want) | set(have) if k not in RUN_LOCAL and want.get(k) != have.get(k))
    if differ:
        shown = ", ".join(f"--{k.replace('_', '-')} {have.get(k)!r} (setting: {want.get(k)!r})" for k in differ[:4])
        raise InputError(f"{where}: trained with {shown}, not as the setting {name!r} asks ; delete the folder "
                         f"to re-train it")


def run_one(name, seed, args, flags=None):
    """Train (unless a checkpoint of all its steps is there) and evaluate (unless done, Eq. (20)
    included) one (setting, seed) -> the results dict of evaluate. Its saved args must match.
    flags: the setting's train.py flags (default SETTINGS[name])."""
    flags = SETTINGS[name] if flags is None else flags
    out = run_folder(name, seed, args.out)
    result_path, ckpt_path = os.path.join(out, f"{args.split}.json"), os.path.join(out, "checkpoint.pt")
    done = os.path.exists(ckpt_path) and read_checkpoint(ckpt_path)["step"] >= args.steps  # runs no code
    if not os.path.exists(result_path) and not done:
        command = flags + ["--steps", str(args.steps), "--seed", str(seed), "--val-every", str(args.steps),
                           "--teacher-cache", "none", "--out", out,  # the live teacher: exact targets
                           "--device", args.device, "--amp", args.amp]
        command += [] if args.render_cache is None else ["--render-cache", args.render_cache]
        if os.path.exists(ckpt_path):  # a run stopped part-way: continue it (train.py checks its flags)
            command.append("--resume")
        else:  # killed before its checkpoint (the only one is at the last step): its log is all there is
            for stale in ("metrics.jsonl", "args.json"):
                if os.path.exists(os.path.join(out, stale)):
                    os.remove(os.path.join(out, stale))
        train.main(command)
    model, ckpt = load_checkpoint(ckpt_path)  # loaded once: checked, then scored
    check_args(ckpt.get("args", {}), name, args.steps, seed, out, args.amp, flags)
    if os.path.exists(result_path):
        with open(result_path) as f:
            results = json.load(f)
        if "cross_view" in results:
            return results
    scored = synthetic_split(args.split, model.cfg.image_size, args.render_cache)
    device = torch.device(args.device)  # the forward on the training device; the metrics in numpy
    results = evaluate.evaluate_model(model.to(device), scored, device, progress=False)
    with atomic_path(result_path) as tmp, open(tmp, "w") as f:  # test.json (val.json) marks a finished run
        json.dump(results, f)
    return results


def world_keys(args):
    """Every synthetic world the runs of `args` read, as (split, seed, index): the scored split
    (args.split) and, per seed, the training items of StepSampler's first args.steps batches (the same
    for every row)."""
    keys = [(args.split, 0, i) for i in range(SPLIT_LENGTHS[args.split])]
    batch_size = train.get_args([]).batch_size
    for seed in args.seeds:
        sampler = StepSampler(SPLIT_LENGTHS["train"], batch_size, seed, 0, args.steps)
        keys += [("train", seed, i) for step in range(args.steps) for i in sampler.batch(step)]
    return list(dict.fromkeys(keys))


def render_world(key, image_size, root):
    """Render world `key` = (split, seed, index) at image_size into the render cache `root`."""
    split, seed, index = key
    SyntheticSurround(split, image_size=image_size, seed=seed, cache_dir=root)[index]


def exact_fp32(amp):
    """With --amp off, fp32 means fp32 on CUDA too (cuDNN would use TF32 for convolutions)."""
    if amp == "off":
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False


def start_job(threads, amp):
    """A worker process of --jobs: its share of the CPU threads, the run's precision, no inner bars."""
    torch.set_num_threads(threads)
    exact_fp32(amp)
    os.environ["TQDM_DISABLE"] = "1"


def run_in_pool(pairs, args):
    """The missing (setting, seed) runs in args.jobs processes: first every world they read is
    rendered once into the render cache, then the runs train and evaluate side by side (one
    device, args.jobs runs at a time) -> {(name, seed): results}."""
    import functools
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor  # not daemonic: a run's DataLoader may start workers

    from tqdm import tqdm
    size = tuple(train.get_args([]).image_size)
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    if args.render_cache is not None:  # numpy ray casting: one process per core
        keys = [k for k in world_keys(args) if not os.path.exists(render_cache_path(args.render_cache, *k[:2],
                                                                                     size, k[2]))]
        with ProcessPoolExecutor(os.cpu_count(), mp_context=mp.get_context("spawn"), initializer=start_job,
                                 initargs=(1, args.amp)) as pool:
            render = functools.partial(render_world, image_size=size, root=args.render_cache)
            for _ in tqdm(pool.map(render, keys, chunksize=4), total=len(keys), desc="render worlds"):
                pass
    with ProcessPoolExecutor(args.jobs, mp_context=mp.get_context("spawn"), initializer=start_job,
                             initargs=(threads, args.amp)) as pool:
        done = pool.map(functools.partial(run_pair, args=args), pairs)
        return dict(zip(pairs, tqdm(done, total=len(pairs), desc=f"runs ({args.jobs} at a time)")))


def run_pair(pair, args):
    """run_one for a (setting, seed) pair (a picklable task of run_in_pool)."""
    return run_one(*pair, args)


def finished(name, seed, args):
    """The test.json (val.json) results of a finished (setting, seed) run under args.out, or None. Its saved
    args.json must match the setting (check_args), as a run that trains here must."""
    folder = run_folder(name, seed, args.out)
    path = os.path.join(folder, f"{args.split}.json")
    if not os.path.exists(path):
        return None
    if not os.path.exists(os.path.join(folder, "args.json")):
        raise InputError(f"{folder}: {args.split}.json without the args.json of its run ; delete the folder to "
                         "re-train it")
    with open(os.path.join(folder, "args.json")) as f:
        check_args(json.load(f), name, args.steps, seed, folder, args.amp)
    with open(path) as f:
        return json.load(f)


def run_device(name, seed, root):
    """The --device a finished run trained on (from its args.json), e.g. 'cpu' or 'cuda'."""
    with open(os.path.join(run_folder(name, seed, root), "args.json")) as f:
        return torch.device(json.load(f)["device"]).type


def train_minutes(name, seed, root):
    """Wall-clock minutes of a run's training, from the times in its metrics.jsonl (None if absent)."""
    path = os.path.join(run_folder(name, seed, root), "metrics.jsonl")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        times = [row["time"] for row in map(json.loads, f) if "time" in row]
    return (times[-1] - times[0]) * len(times) / max(1, len(times) - 1) / 60.0 if len(times) > 1 else None


@torch.inference_mode()
def bev_comparison(names, seed, root):
    """bev.png's picture: `viz.bev_figure` of synthetic test sample FIGURE_SAMPLE as predicted
    by the (name, seed) runs under root, then its dense ground truth -> Figure."""
    depths, sample = {}, None
    for name in names:
        model, _ = load_checkpoint(os.path.join(run_folder(name, seed, root), "checkpoint.pt"))
        model.eval()
        if sample is None:
            sample = build_dataset("synthetic", "test", image_size=model.cfg.image_size)[FIGURE_SAMPLE]
        depths[f"{name} (seed {seed})"] = model(sample["images"][None])["depth"][0, :, 0].numpy()  # (N, H, W)
    depths["ground truth (dense)"] = sample["depth_dense"][:, 0].numpy()
    return bev_figure(depths, sample["intrinsics"].numpy(), sample["cam_to_ego"].numpy())


# The metrics of the paired table: (ground truth, key, lower is better).
PAIRED = (("sparse", "abs_rel", True), ("dense", "abs_rel", True), ("sparse", "rmse", True),
          ("dense", "rmse", True), ("sparse", "a1", False), ("dense", "a1", False))
CHART_METRICS = (("sparse", "abs_rel"), ("dense", "abs_rel"))  # the series of ablation.png


def metric_of(results, kind, key):
    """One number of an evaluate results dict: ('sparse'|'dense', key), or Eq. (19) / (20)."""
    if kind == "scale":
        return results["scale"][key]
    if kind == "cross_view":
        return results["cross_view"]["mean_rel"]
    return results["all"][kind][key]


def paired_lines(runs, pairs, seeds):
    """Markdown rows of the paired differences: for each (row, reference) in pairs, over the seeds
    both finished: mean difference, its 95 % interval, and the mean difference in % of the reference."""
    lines = []
    for name, ref in pairs:
        both = [s for s in seeds if runs.get((name, s)) and runs.get((ref, s))]
        if len(both) == 0:
            continue
        cells = []
        for kind, key, _ in PAIRED:
            a = [metric_of(runs[name, s], kind, key) for s in both]
            b = [metric_of(runs[ref, s], kind, key) for s in both]
            mean, half = paired_interval(a, b)
            ci = f"[{mean - half:+.4f}, {mean + half:+.4f}]" if half is not None else "n/a"
            cells.append(f"{mean:+.4f} {ci} ({100 * mean / np.mean(b):+.1f} %)")
        lines.append(f"| {name} − {ref} | {len(both)} | " + " | ".join(cells) + " |")
    return lines


def paired_chart(runs, settings, seeds):
    """ablation.png beside table.md: each row's paired difference to the baseline (seeds both finished)
    in % of the baseline's mean, with its 95 % t-interval (NaN: one seed), per CHART_METRICS ->
    `viz.interval_chart` Figure, or None when no row pairs with the baseline."""
    labels, cells = [], []
    for name in settings:
        both = [s for s in seeds if name != "baseline" and runs.get((name, s)) and runs.get(("baseline", s))]
        for metric in CHART_METRICS if both else ():
            ref = [metric_of(runs["baseline", s], *metric) for s in both]
            mean, half = paired_interval([metric_of(runs[name, s], *metric) for s in both], ref)
            half = np.nan if half is None else half
            cells.append(100 / np.mean(ref) * np.array([mean, mean - half, mean + half]))
        labels += [f"{name} − baseline (n = {len(both)})"] if both else []  # n: the seeds paired
    if not labels:
        return None
    v = np.array(cells).reshape(len(labels), len(CHART_METRICS), 3)  # (rows, metrics, mean / low / high)
    return interval_chart(labels, v[..., 0], v[..., 1], v[..., 2], "% of the baseline (negative: lower error)",
                          f"Paired difference to the baseline, seeds {list(seeds)} (95 % t-interval)",
                          series=[f"{kind} {key}" for kind, key in CHART_METRICS])


def ablation_table(runs, settings, seeds, teacher=None):
    """The markdown tables of `ablation` from {(name, seed): results or None}: per-row mean ± std
    over the seeds that finished, the teacher's zero-shot row, and the paired differences."""
    header = (["setting", "seeds"] + [f"{k} {m}" for k, m in COLUMNS]
              + ["mean abs log rho (Eq. 19)", "std log rho across views (Eq. 19)", "cross-view rel. (Eq. 20)"])
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for name in settings:
        done = [runs[name, s] for s in seeds if runs.get((name, s))]
        if not done:
            continue
        cells = [cell([metric_of(r, k, m) for r in done], 3 if m == "rmse" else 4) for k, m in COLUMNS]
        cells += [cell([metric_of(r, "scale", k) for r in done])
                  for k in ("mean_abs_log_rho", "std_log_rho_across_views")]
        cells.append(cell([metric_of(r, "cross_view", None) for r in done]))
        lines.append(f"| {name} | {len(done)} | " + " | ".join(cells) + " |")
    if teacher is not None:
        cells = [f"{teacher[k][m]:.{3 if m == 'rmse' else 4}f}" for k, m in COLUMNS]
        lines.append("| teacher, affine-aligned per image (zero-shot protocol) | - | " + " | ".join(cells)
                     + " | - | - | - |")
        cells = [f"{teacher['lidar_aligned'][m]:.{3 if m == 'rmse' else 4}f}" if k == "dense" else "-"
                 for k, m in COLUMNS]
        lines.append("| teacher aligned on each view's LiDAR points (the target of Eq. 21) | - | " + " | ".join(cells)
                     + " | - | - | - |")
    pairs = [(n, "baseline") for n in settings if n != "baseline"]
    for ref in ("response KD", "CKD + VRKD"):
        pairs += [(n, ref) for n in settings if ref in REFERENCES.get(n, ()) and ref in settings]
    header = ["difference", "seeds"] + [f"{k} {m}" for k, m, _ in PAIRED]
    lines += ["", "Paired differences over seeds: mean [95 % t-interval] (% of the reference). "
              "Negative AbsRel / RMSE and positive delta1 favour the first row.", "",
              "| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    return lines + paired_lines(runs, pairs, seeds)


def ablation(argv=None):
    """`python benchmark.py ablation`: the README's ablation table (and bev.png)."""
    p = argparse.ArgumentParser(description="Ablation of CKD and VRKD, with the existing-KD baselines, on the "
                                            "synthetic benchmark.")
    p.add_argument("--steps", type=int, default=300, help="training steps of every run")
    p.add_argument("--seeds", type=int, nargs="+", default=list(DEMO_SEEDS),
                   help=f"seeds of every setting (fixed in advance: {list(DEMO_SEEDS)} at 300 steps, "
                        f"{list(LONG_SEEDS)} at 1200)")
    p.add_argument("--settings", nargs="+", default=list(DEFAULT_SETTINGS), choices=list(SETTINGS),
                   help="rows to run, in this order within each seed")
    p.add_argument("--out", default="outputs/ablation", help="folder of the runs, table.md, ablation.png and bev.png")
    p.add_argument("--split", default="test", choices=["test", "val"],
                   help="synthetic split that scores the runs (val: for choices of the method, seeds "
                        f"{list(VAL_SEEDS)})")
    p.add_argument("--train", action=argparse.BooleanOptionalAction, default=True,
                   help="train and evaluate the missing runs (--no-train: tabulate the finished ones only)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="torch device of the training and of the evaluation forward")
    p.add_argument("--amp", default="off", choices=["off", "bf16", "fp16"],
                   help="autocast of the training; off (fp32, TF32 off) makes CPU and CUDA runs comparable")
    p.add_argument("--jobs", type=int, default=1,
                   help="runs side by side, each in its own process with its share of the CPU threads (a GPU "
                        "box: 8); the worlds are rendered first, one process per core")
    p.add_argument("--render-cache", default="outputs/render_cache",
                   help="folder where the synthetic worlds are kept, rendered once for all rows of a seed "
                        "('none': render them in every run)")
    p.add_argument("--figure", action=argparse.BooleanOptionalAction, default=True,
                   help="write bev.png: the first seed's baseline and CKD + VRKD (those of --settings) "
                        "and the dense ground truth, seen from above")
    args = p.parse_args(argv)
    args.render_cache = None if args.render_cache == "none" else args.render_cache
    exact_fp32(args.amp)
    start = time.time()
    runs = {(name, s): None for s in args.seeds for name in args.settings}  # seed-major: early rows first
    if args.train and args.jobs > 1:
        runs.update(run_in_pool(list(runs), args))
    for name, s in runs:
        runs[name, s] = runs[name, s] or (run_one(name, s, args) if args.train else finished(name, s, args))
    teacher_name = train.get_args([]).teacher
    teacher = teacher_error(build_teacher(teacher_name),
                            synthetic_split(args.split, train.get_args([]).image_size, args.render_cache))
    minutes = [m for m in (train_minutes(n, s, args.out) for n, s in runs if runs[n, s]) if m is not None]
    devices = sorted({run_device(n, s, args.out) for n, s in runs if runs[n, s]})
    lines = ablation_table(runs, args.settings, args.seeds, teacher)
    table = "\n".join(lines) + (
        f"\n\n{args.steps} steps, seeds {args.seeds} (finished runs per row in the 'seeds' column), synthetic "
        f"{args.split} split ({SPLIT_LENGTHS[args.split]} samples), teacher {teacher_name}, trained on "
        f"{' and '.join(devices) or '-'} with autocast {args.amp}. Training time of the {len(minutes)} finished runs: "
        f"{sum(minutes):.0f} min ({np.mean(minutes) if minutes else 0:.1f} min per run); this table took "
        f"{(time.time() - start) / 60:.0f} min.\n")
    write_text(os.path.join(args.out, "table.md"), table)
    chart = paired_chart(runs, args.settings, args.seeds)
    if chart is not None:
        save_png(chart, os.path.join(args.out, "ablation.png"))
    print(table)
    names = [n for n in FIGURE_SETTINGS if n in args.settings and runs.get((n, args.seeds[0]))
             and os.path.exists(os.path.join(run_folder(n, args.seeds[0], args.out), "checkpoint.pt"))]
    if args.figure and args.split == "test" and len(names) == len(FIGURE_SETTINGS):
        save_png(bev_comparison(names, args.seeds[0], args.out), os.path.join(args.out, "bev.png"))
