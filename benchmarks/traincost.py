"""What training on nuScenes costs: `python benchmark.py traincost` (README, "What it costs to train on nuScenes").

    python benchmark.py traincost [--teacher-mode live cache] [--batch-size 8] [--steps 20] [--workers N]

The data: a nuScenes-format dataroot of full-size 1600 x 900 photo-like JPEGs (`benchmarks/loading.py`:
the test fixture's layout, 4 keyframe samples, their LiDAR sweeps), read by train.py's loader
(`nusc.NuScenesSurround`, colour jitter on, at --image-size) over and over. Its tables are indexed
here from the JSON files (`TableSurround`), without nuscenes-devkit; what each item costs (JPEG
decoding, resizing, jitter, ground truth from the point cache) is the loader's own code.
The step: train.py's, in order: DataLoader (--workers, pinned memory, PREFETCH_BATCHES per worker),
the batch to the device, the teacher targets of Eqs. (6) and (12) (live: the DA-V2 Small
architecture with random weights, `teacher.build_random_teacher`, in --teacher-precision; cache:
`cache.CachedTargets` over a compact cache written first, `cache.write_cache`), the student forward
under autocast --amp, Eq. (17) in fp32 (`losses.objective`), backward, AdamW. CKD + VRKD, the default.
Each mode is timed three ways, side by side: the whole step with its loader; the loader alone; the
step alone on one batch held on the device. The slower of the last two sets the rate: the verdict
says loader-bound or GPU-bound. Reported: samples/s, peak GPU memory, and one epoch of nuScenes
train (NUSCENES_TRAIN_SAMPLES) at the measured rate.
"""
import argparse
import contextlib
import json
import os
import tempfile
import time

import torch
from PIL import Image

import losses
import train
from cache import CachedTargets, cache_folder, cache_key, distillation_targets, write_cache
from cli import write_text
from data import batch_to_device
from model import Student, StudentConfig
from nusc import NuScenesSurround, _index_sample
from teacher import DEFAULT_LONG_SIDE, build_random_teacher

NUSCENES_TRAIN_SAMPLES = 28130  # keyframe samples of nuScenes v1.0-trainval 'train' (README, "Data")
TEACHER_MODES = ("live", "cache")
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
VERSION = "v1.0-mini"  # the fixture's tables
SECONDS_PER_HOUR = 3600.0


class JsonTables:
    """A nuScenes table folder read with json alone: `get(table, token)`, `scene`, `dataroot`, and each
    sample's 'data' (channel -> its keyframe sample_data token), as the devkit's reverse index adds it:
    what `nusc._index_sample` asks of the devkit's NuScenes object."""

    def __init__(self, dataroot, version):
        self.dataroot = dataroot
        self.tables = {}
        for name in ("scene", "sample", "sample_data", "calibrated_sensor", "sensor", "ego_pose"):
            with open(os.path.join(dataroot, version, name + ".json")) as f:
                self.tables[name] = {record["token"]: record for record in json.load(f)}
        self.scene = list(self.tables["scene"].values())
        for record in self.tables["sample"].values():
            record.setdefault("data", {})
        for record in self.tables["sample_data"].values():
            if record["is_key_frame"]:
                calibration = self.get("calibrated_sensor", record["calibrated_sensor_token"])
                sensor = self.get("sensor", calibration["sensor_token"])
                self.get("sample", record["sample_token"])["data"][sensor["channel"]] = record["token"]

    def get(self, table, token):
        """The record `token` of `table`."""
        return self.tables[table][token]


class TableSurround(NuScenesSurround):
    """`NuScenesSurround` whose samples are every keyframe of every scene of the dataroot, indexed from
    the JSON tables (`JsonTables`) rather than by the devkit; items are loaded by the same code."""

    def _index(self, dataroot, version, split, lidar_sweeps):
        tables = JsonTables(dataroot, version)
        samples = []
        for scene in tables.scene:
            token = scene["first_sample_token"]
            while token:
                sample = tables.get("sample", token)
                samples.append(_index_sample(tables, sample, lidar_sweeps))
                token = sample["next"]
        return samples


class Repeated(torch.utils.data.Dataset):
    """`dataset` read round and round: item i is dataset[i % len(dataset)], `length` items."""

    def __init__(self, dataset, length):
        self.dataset, self.length = dataset, length

    def __len__(self):
        return self.length

    def __getitem__(self, index):
        return self.dataset[index % len(self.dataset)]


def build_dataroot(root, photo=True):
    """The nuScenes-format fixture (tests/nuscenes_fixture.py) in `root`, with photo-like 1600 x 900 JPEGs
    (benchmarks/loading.py) or, photo=False, its flat ones (fast to write: for tests)."""
    from benchmarks.loading import PHOTO_JPEG_QUALITY, fixture_module, photo_like

    fixture = fixture_module("nuscenes_fixture")
    if not photo:
        fixture.build_dataroot(root)
        return root
    fixture.build_dataroot(root, image_maker=lambda n, rng: Image.fromarray(
        photo_like(rng, fixture.IMAGE_HEIGHT, fixture.IMAGE_WIDTH)), quality=PHOTO_JPEG_QUALITY)
    return root


def make_step(model, optimizer, teacher, cfg, amp, teacher_precision, args, device):
    """One training step of train.py on a collated batch (targets from the batch's cache, or from the live
    `teacher` under autocast `teacher_precision`; the student under autocast `amp`) -> the loss (not
    synchronised)."""
    amp, teacher_amp = PRECISIONS[amp], PRECISIONS[teacher_precision]

    def autocast(dtype):
        return torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()

    def step(batch, on_device=False):
        batch = dict(batch) if on_device else batch_to_device(batch, device)
        farness, tokens = batch.pop("teacher_farness", None), batch.pop("teacher_similarity", None)
        if teacher is not None:
            with autocast(teacher_amp):
                farness, tokens = distillation_targets(teacher, batch, args.vr_strip, args.vr_grid)
        with autocast(amp):
            out = model(batch["images"])
        loss, _ = losses.objective(out, batch["depth"], cfg, farness, tokens)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss
    return step


def synchronize(device):
    """Wait for the device's queued work (CUDA); nothing on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_rate(batches, work, warmup, steps, batch_size, device):
    """Samples/s of work(batch) over `steps` batches of the iterator `batches`, after `warmup` untimed."""
    for _ in range(warmup):
        work(next(batches))
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        work(next(batches))
    synchronize(device)
    return steps * batch_size / (time.perf_counter() - start)


def measure(mode, dataset, teacher, args, device, teacher_precision="fp32"):
    """The three rates of one teacher mode (whole step, loader alone, step alone), the verdict, the peak
    GPU memory (MB) and the epoch time -> a row dict. teacher: the live teacher (None: targets in the items)."""
    torch.manual_seed(0)
    model = Student(StudentConfig(image_size=tuple(args.image_size))).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    step = make_step(model, optimizer, teacher, train.loss_config(args), args.amp, teacher_precision, args, device)
    items = Repeated(dataset, (args.warmup + args.steps) * args.batch_size)

    def loader():
        return iter(torch.utils.data.DataLoader(items, batch_size=args.batch_size, shuffle=False,
                                                num_workers=args.workers, pin_memory=device.type == "cuda",
                                                prefetch_factor=train.PREFETCH_BATCHES if args.workers else None,
                                                drop_last=True))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    whole = timed_rate(loader(), step, args.warmup, args.steps, args.batch_size, device)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    loading = timed_rate(loader(), lambda batch: None, args.warmup, args.steps, args.batch_size, device)
    held = batch_to_device(next(loader()), device)
    compute = timed_rate(iter(lambda: held, None), lambda batch: step(batch, on_device=True), args.warmup,
                         args.steps, args.batch_size, device)
    bound = "loader-bound" if loading < compute else ("GPU-bound" if device.type == "cuda" else "compute-bound")
    # The whole-step rate can exceed the loader's when the timed steps are fewer than the batches the workers
    # prefetched during the warm-up (workers x PREFETCH_BATCHES): a long run is held to the slower of the two.
    sustained = min(whole, loading, compute)
    return {"mode": mode, "teacher_precision": teacher_precision if teacher is not None else "-", "amp": args.amp,
            "samples_per_s": whole, "loader_samples_per_s": loading, "step_samples_per_s": compute, "verdict": bound,
            "sustained_samples_per_s": sustained, "peak_gpu_mb": peak,
            "epoch_hours": NUSCENES_TRAIN_SAMPLES / sustained / SECONDS_PER_HOUR}


def format_rows(rows, args, device):
    """The markdown table of the modes and a header line saying what ran."""
    lines = [f"Training step as train.py runs it (CKD + VRKD), nuScenes-format photo-like 1600 x 900 JPEGs -> "
             f"{args.image_size[0]} x {args.image_size[1]}, batch {args.batch_size} surround samples, {args.workers} "
             f"workers, student autocast {args.amp}, teacher DA-V2 Small architecture (random weights, long side "
             f"{args.teacher_long_side}); {device}; {args.steps} steps after {args.warmup} warm-up", "",
             "| teacher | teacher precision | samples/s (whole step) | loader alone (samples/s) | step alone "
             "(samples/s) | verdict | peak GPU memory (MB) | one epoch of nuScenes train (28,130 samples) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        peak = "-" if r["peak_gpu_mb"] is None else f"{r['peak_gpu_mb']:.0f}"
        lines.append(f"| {r['mode']} | {r['teacher_precision']} | {r['samples_per_s']:.2f} | "
                     f"{r['loader_samples_per_s']:.2f} | {r['step_samples_per_s']:.2f} | {r['verdict']} | {peak} | "
                     f"{r['epoch_hours']:.2f} h ({60 * r['epoch_hours']:.0f} min) |")
    return lines


def get_args(argv=None):
    """The command line of `benchmark.py traincost`; every flag has help."""
    p = argparse.ArgumentParser(description="Samples/s, peak memory and epoch time of training on nuScenes.")
    p.add_argument("--teacher-mode", nargs="+", default=list(TEACHER_MODES), choices=TEACHER_MODES,
                   help="live: the teacher runs in every step; cache: its targets are read from a cache")
    p.add_argument("--teacher-precision", nargs="+", default=["fp32"], choices=list(PRECISIONS),
                   help="autocast of the live teacher, one row each (train.py runs it in fp32)")
    p.add_argument("--amp", default="auto", choices=["auto", *PRECISIONS],
                   help="autocast of the student forward (auto: bf16 on CUDA, fp32 on the CPU, as train.py)")
    p.add_argument("--image-size", type=int, nargs=2, default=(352, 640), metavar=("H", "W"), help="input per view")
    p.add_argument("--batch-size", type=int, default=8, help="surround samples per step")
    p.add_argument("--steps", type=int, default=20, help="timed steps per measurement")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--workers", type=int, default=os.cpu_count(), help="DataLoader workers (default: the cores)")
    p.add_argument("--teacher-long-side", type=int, default=DEFAULT_LONG_SIDE,
                   help="long side of the teacher's input in pixels (train.py's: 518)")
    p.add_argument("--images", default="photo", choices=["photo", "flat"],
                   help="photo-like JPEGs (what a camera costs to decode) or the fixture's flat ones (tests)")
    p.add_argument("--dataroot", default=None, help="a nuScenes-format dataroot to read (default: one made here)")
    p.add_argument("--lr", type=float, default=3e-4, help="AdamW learning rate")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    p.add_argument("--json", default=None, help="also write the rows as JSON to this file")
    args = p.parse_args(argv)
    if min(args.batch_size, args.steps) < 1 or args.warmup < 0 or args.workers < 0:
        p.error("--batch-size and --steps must be >= 1, --warmup and --workers >= 0")
    if args.amp == "auto":  # bf16 convolutions on a CPU without bf16 units are emulated: many times slower
        args.amp = "bf16" if torch.device(args.device).type == "cuda" else "fp32"
    return args


def traincost(argv=None):
    """`python benchmark.py traincost`: print the table (and --json); returns the rows."""
    args = get_args(argv)
    device = torch.device(args.device)
    train_args = train.get_args(["--data", "nuscenes", "--version", VERSION, "--teacher", "random-small",
                                 "--image-size", *map(str, args.image_size)])
    for key in ("vr_strip", "vr_grid", "teacher", "data", "version", "seed", "beta_bins", "lambda_ckd",
                "lambda_cross", "tau", "sigma", "lambda_vr", "vr_tau", "vr_student", "teacher_norm"):
        setattr(args, key, getattr(train_args, key))
    args.ddad_masks = None
    with tempfile.TemporaryDirectory() as tmp:
        root = args.dataroot or build_dataroot(os.path.join(tmp, "nuscenes"), photo=args.images == "photo")
        dataset = TableSurround(root, VERSION, "mini_train", tuple(args.image_size), augment=True,
                                cache_dir=os.path.join(tmp, "points"))
        for index in range(len(dataset)):
            dataset.points(index)  # the ground-truth cache is written on the first load; time the later ones
        teacher = build_random_teacher("small", device, long_side=args.teacher_long_side)
        rows = []
        for mode in args.teacher_mode:
            if mode == "live":
                rows += [measure(mode, dataset, teacher, args, device, p) for p in args.teacher_precision]
                continue
            key = cache_key(args)
            folder = cache_folder(os.path.join(tmp, "teacher_cache"), key)
            write_cache(teacher, dataset, folder, key, len(dataset), device)
            rows.append(measure(mode, CachedTargets(dataset, folder, key), None, args, device))
    lines = format_rows(rows, args, device)
    print("\n".join(lines))
    if args.json:
        write_text(args.json, json.dumps({"rows": rows, "args": {k: v for k, v in vars(args).items()
                                                                 if isinstance(v, (int, float, str, list, tuple))}},
                                         indent=2))
    return rows
