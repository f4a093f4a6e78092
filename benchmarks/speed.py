"""The speed comparison of the README (`python benchmark.py speed`): student vs Depth Anything V2.

    python benchmark.py speed [--image-size 352 640] [--runs 5] [--precisions fp32 fp16] [--threads 2]

The student (its design steps, the inference form, and the exported file run by onnxruntime) and
the Depth Anything V2 Small and Base teachers (random weights: timing needs none), each in a fresh
process on the same device, on one surround frame: all six views in one batch. Each model is
timed twice: the network alone on its own input size, and from native 1600 x 900 uint8 frames in
host memory to depth at 1600 x 900 in host memory (resize in and out included). Warm-up, then the
median of --runs; frames per second of whole surround frames; parameters; peak memory. On the CPU
the clock is the wall clock; on CUDA, CUDA events after synchronising, in fp32 and autocast
fp16 (or bf16). onnxruntime runs on its CPU execution provider, every graph optimisation on, as
many intra-op threads as torch; the int8 row runs the same file quantized (quantize.py). Then the
cost of a training step: supervised vs CKD + VRKD from cached teacher targets vs with the teacher
run live, interleaved on the same batch. On CUDA, last, the device pipeline stage by stage
(pipeline.py, CUDA graphs; benchmarks/stages.py) beside DA-V2 Small at its best precision; --json
writes every row.
"""
import argparse
import contextlib
import json
import os
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

import losses
import train
from cli import write_text

SPEED_MODELS = ("student-stride2", "student", "student-convex", "student-channels-last", "student-fast",
                "student-onnxruntime", "student-int8-onnxruntime", "student-light-fast", "student-light-onnxruntime",
                "da-v2-small", "da-v2-base", "student-train-step")
ON_REQUEST = ("student-fast-convex",)  # what convex upsampling costs in the inference form
STUDENT_MODELS = SPEED_MODELS[:9] + ON_REQUEST
# What each student row is, so the table shows what each speed change bought:
# - student-stride2: the first design, a fourth decoder stage (256, 128, 64, 32) down to stride 2;
# - student: the default, three decoder stages (128, 64, 32) to stride 4, depth upsampled bilinearly;
# - student-convex: the same with learned convex upsampling (`model.convex_upsample`);
# - student-channels-last: the default in NHWC memory format;
# - student-fast: `Student.for_inference()`, BatchNorm folded into the convs and NHWC: what infer.py runs;
# - student-onnxruntime: the same exported by export.py and run by onnxruntime (`infer.py --onnx`);
# - student-int8-onnxruntime: that file quantized to int8 (quantize.py, `export.py --quantize int8`), calibrated
#   here on CALIBRATION_FRAMES random frames (the ranges change the numbers, not the work);
# - student-light-fast, student-light-onnxruntime: the same two with the light encoder (LIGHT_ENCODER);
# - student-fast-convex (not in the default list): the inference form with convex upsampling.
LIGHT_ENCODER = "regnet_x_400mf"
STRIDE2_DECODER = (256, 128, 64, 32)
NATIVE_SIZE = (900, 1600)  # (H, W) of a nuScenes camera image: the default where resize in starts and out ends
NUM_VIEWS = 6  # one surround frame, all views in one batch
PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}  # autocast dtype (None: off)
MODES = ("network only", "with resize in/out")
CALIBRATION_FRAMES = 2  # random surround frames that calibrate the int8 row's activation ranges
DEFAULT_STAGE_RUNS = {"cuda": 20, "cpu": 0}  # runs of the device-pipeline table (benchmarks/stages.py) per device


def build_for_speed(name, image_size, device, onnx_path=None):
    """A model with random weights -> dict of `call` (its network on its own input, views (6, 3, h, w)),
    `prepare` (views (6, 3, H0, W0) in [0, 1] on `device` -> that input), `params_m` (millions) and
    `runtime`. The onnxruntime students run the file `onnx_path` (see `export_for_speed`)."""
    from export import OnnxStudent
    from model import Student, StudentConfig
    from teacher import DINOV2_PATCH, build_random_teacher, preprocess, teacher_input_size

    def resize_in(x):  # as Student.infer_images: bilinear, antialiased when shrinking
        return F.interpolate(x, size=tuple(image_size), mode="bilinear", align_corners=False, antialias=True)

    if name.endswith("onnxruntime"):
        runner = OnnxStudent(onnx_path, threads=torch.get_num_threads())
        return {"call": lambda x: runner(x[None])["depth"][0], "prepare": resize_in, "params_m": None,
                "runtime": "onnxruntime CPU EP, ORT_ENABLE_ALL" + (", int8 QDQ" if "-int8" in name else "")}
    if name in STUDENT_MODELS or name == "student-train-step":
        decoder = STRIDE2_DECODER if name == "student-stride2" else StudentConfig.decoder_channels
        upsample = "convex" if name.endswith("-convex") else StudentConfig.upsample
        model = Student(StudentConfig(encoder=encoder_of(name), image_size=tuple(image_size),
                                      decoder_channels=decoder, upsample=upsample)).to(device).eval()
        params = sum(p.numel() for p in model.parameters()) / 1e6
        if name == "student-channels-last":  # NHWC activations: faster convolutions, same weights
            model = model.to(memory_format=torch.channels_last)
        if "-fast" in name:
            model = model.for_inference()
        if name == "student-train-step":
            return {"call": train_step_call(model.train()), "prepare": resize_in, "params_m": params,
                    "runtime": "torch, training step"}
        return {"call": lambda x: model(x[None])["depth"][0], "prepare": resize_in, "params_m": params,
                "runtime": "torch"}
    long_side = max(image_size) // DINOV2_PATCH * DINOV2_PATCH  # 640 -> 630: the size DA-V2 is run at here
    teacher = build_random_teacher(name.split("-")[-1], device, long_side=long_side)
    size = teacher_input_size(*image_size, long_side, DINOV2_PATCH)
    return {"call": lambda x: teacher.model(pixel_values=x).predicted_depth[:, None],  # (6, 1, h, w)
            "prepare": lambda x: preprocess(x, size),  # its own resize (bicubic) and normalisation
            "params_m": sum(p.numel() for p in teacher.parameters()) / 1e6, "runtime": "torch"}


def encoder_of(name):
    """The encoder of a student row: LIGHT_ENCODER for the '-light' rows, else the default."""
    from model import StudentConfig
    return LIGHT_ENCODER if "-light" in name else StudentConfig.encoder


def export_for_speed(image_size, folder, encoder, int8=False):
    """Export a random-weight student (`encoder`) with export.py into `folder`, here rather than in the timed process
    (so the exporter's memory is not counted); with int8, quantize it (quantize.py, calibrated on
    CALIBRATION_FRAMES random frames) -> (path, parameters in millions, max relative deviation of
    onnxruntime's depth from the torch student's on one random frame)."""
    from export import DEFAULT_INT8_HEAD, INPUT_NAME, OnnxStudent, export_onnx, max_relative_deviation, torch_depth
    from model import Student, StudentConfig
    from quantize import CalibrationViews, quantize_int8

    torch.manual_seed(0)
    student = Student(StudentConfig(encoder=encoder, image_size=tuple(image_size))).eval()
    path = os.path.join(folder, f"student_{encoder}.onnx")
    export_onnx(student, path)
    if int8:
        frames = [{"images": torch.rand(NUM_VIEWS, 3, *image_size)} for _ in range(CALIBRATION_FRAMES)]
        reader = CalibrationViews(frames, range(len(frames)), INPUT_NAME)
        quantize_int8(path, path.replace(".onnx", "-int8.onnx"), reader, head=DEFAULT_INT8_HEAD)  # as export.py
        path = path.replace(".onnx", "-int8.onnx")
    x = torch.rand(NUM_VIEWS, 3, *image_size)
    deviation = max_relative_deviation(OnnxStudent(path)(x[None])["depth"][0], torch_depth(student, x))
    return path, sum(p.numel() for p in student.parameters()) / 1e6, deviation


def train_step_call(model):
    """One supervised optimizer step (Eqs. 15-16) of `model` on views (6, 3, H, W): a batch of one frame."""
    optimizer = torch.optim.AdamW(model.parameters())
    args = train.get_args(["--lambda-ckd", "0", "--lambda-vr", "0"])

    def step(x):
        with torch.inference_mode(False), torch.enable_grad():
            x = x[None].clone()  # (1, 6, 3, H, W)
            target = torch.rand(x.shape[:2] + (1,) + x.shape[-2:], device=x.device) * 80  # stand-in D*
            target = target * (torch.rand_like(target) < 0.02)  # ~2 % of the pixels, as LiDAR
            loss, _ = losses.objective(model(x), target, train.loss_config(args))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return step


def timer_for(device):
    """-> (name, timed): timed(fn) runs fn() once and returns its seconds. CPU: the wall clock around the
    call. CUDA: CUDA events recorded around it, after synchronising before and after, so that no earlier
    work is counted and all of this call's kernels are."""
    if device.type == "cuda":
        def timed(fn):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(device)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            return start.elapsed_time(end) / 1e3  # milliseconds -> seconds
        return "CUDA events", timed

    def timed(fn):
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t
    return "wall clock", timed


def median_seconds(fn, runs, warmup, timed):
    """Median seconds of `runs` calls of fn after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    return float(np.median([timed(fn) for _ in range(runs)]))


def resident_mb(field):
    """A memory line of this process from /proc/self/status in MB: "VmRSS" now, "VmHWM" its peak. (Not
    getrusage's ru_maxrss, which a spawned process inherits from its parent's size.)"""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":")) / 1024  # kB -> MB


def peak_mb(device, base_mb):
    """Peak memory so far, MB: CUDA, the allocator's peak since the last reset; CPU, the process's peak
    resident memory above `base_mb` (monotone: a later mode's peak includes the earlier ones')."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resident_mb("VmHWM") - base_mb


def speed_child(name, image_size, native_size, runs, warmup, device, precisions, threads, onnx_path, queue):
    """In a fresh process: build `name`, time it in each precision and mode (MODES) -> queue.put(rows)."""
    if threads:
        torch.set_num_threads(threads)
    device = torch.device(device)
    base_mb = resident_mb("VmRSS")
    built = build_for_speed(name, image_size, device, onnx_path)
    timer, timed = timer_for(device)
    net_input = built["prepare"](torch.rand(NUM_VIEWS, 3, *image_size, device=device))
    frames = torch.randint(0, 256, (NUM_VIEWS, *native_size, 3), dtype=torch.uint8)  # host memory, as decoded

    def full():  # native frames in host memory -> depth at the native size in host memory
        x = frames.to(device).permute(0, 3, 1, 2).float() / 255  # (6, 3, H0, W0)
        depth = built["call"](built["prepare"](x))  # (6, 1, h, w)
        return F.interpolate(depth.float(), size=native_size, mode="bilinear", align_corners=False).cpu()

    rows = []
    for precision in precisions:
        if precision != "fp32" and (name == "student-train-step" or "onnxruntime" in built["runtime"]):
            continue  # autocast is a torch inference feature
        autocast = (torch.autocast(device.type, dtype=PRECISIONS[precision]) if PRECISIONS[precision]
                    else contextlib.nullcontext())
        for mode, fn in zip(MODES, (lambda: built["call"](net_input), full)):
            if mode != MODES[0] and name == "student-train-step":
                continue
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            with torch.inference_mode(), autocast:
                seconds = median_seconds(fn, runs, warmup, timed)
            rows.append({"model": name, "runtime": built["runtime"], "precision": precision, "mode": mode,
                         "threads": torch.get_num_threads(), "median_s": seconds, "params_m": built["params_m"],
                         "peak_mb": peak_mb(device, base_mb), "deviation": None,
                         "device": device.type, "timer": timer})
    queue.put(rows)


def is_student(row):
    """An inference row of the student (not a teacher, not a training step)."""
    return row["model"].startswith("student") and row["model"] != "student-train-step"


def format_table(rows):
    """The speed table (markdown) and, per precision and mode, how many times slower than the fastest
    student each teacher is -> list of lines."""
    fastest = {}
    for r in rows:
        key = (r["precision"], r["mode"])
        if is_student(r) and (key not in fastest or r["median_s"] < fastest[key]["median_s"]):
            fastest[key] = r
    lines = ["| model | runtime | precision | pre/post-processing | threads | batch | median per surround frame (s) "
             "| frames/s | parameters (M) | peak memory (MB) | time / fastest student |", "|" + "---|" * 11]
    for r in rows:
        best = fastest.get((r["precision"], r["mode"]))
        ratio = f"{r['median_s'] / best['median_s']:.2f}x" if best else "-"
        prepost = "training step" if r["model"] == "student-train-step" else r["mode"]
        lines.append(f"| {r['model']} | {r['runtime']} | {r['precision']} | {prepost} | {r['threads']} | "
                     f"{NUM_VIEWS} views | {r['median_s']:.3f} | {1 / r['median_s']:.2f} | {r['params_m']:.1f} | "
                     f"{r['peak_mb']:.0f} | {ratio} |")
    lines.append("")
    for (precision, mode), best in fastest.items():
        slower = [f"{r['model']} {r['median_s'] / best['median_s']:.1f}x" for r in rows
                  if r["model"].startswith("da-v2") and (r["precision"], r["mode"]) == (precision, mode)]
        lines.append(f"{precision}, {mode}: fastest student {best['model']} ({best['runtime']}) "
                     f"{best['median_s']:.3f} s" + (f"; slower by: {', '.join(slower)}" if slower else ""))
    lines += [f"{r['model']} vs the torch student (same weights, one random frame): max relative depth "
              f"deviation {r['deviation']:.1e}" for r in rows if r["deviation"] is not None and r["mode"] == MODES[0]]
    return lines


def speed(argv=None):
    """`python benchmark.py speed`: the students vs DA-V2 Small/Base on one surround frame, one device."""
    import multiprocessing as mp

    p = argparse.ArgumentParser(description="Latency, FPS, parameters and peak memory, side by side.")
    p.add_argument("--image-size", type=int, nargs=2, default=(352, 640), metavar=("H", "W"), help="input per view")
    p.add_argument("--models", nargs="+", default=list(SPEED_MODELS), choices=SPEED_MODELS + ON_REQUEST,
                   help="models to time (student-fast-convex on request)")
    p.add_argument("--runs", type=int, default=5, help="timed runs per model and mode (the median is reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs first")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    p.add_argument("--precisions", nargs="+", default=None, choices=list(PRECISIONS),
                   help="torch precisions, autocast for fp16/bf16 (default: fp32 on the CPU, fp32 and fp16 on CUDA)")
    p.add_argument("--native-size", type=int, nargs=2, default=NATIVE_SIZE, metavar=("H", "W"),
                   help="camera frames the resize in starts from and the resize out returns to (nuScenes)")
    p.add_argument("--threads", type=int, default=None, help="torch and onnxruntime CPU threads (default: torch's)")
    p.add_argument("--train-size", type=int, nargs=2, default=(96, 160), metavar=("H", "W"),
                   help="input per view of the training-step timing (synthetic batch of 2)")
    p.add_argument("--train-runs", type=int, default=5, help="timed training steps per mode (0: skip)")
    p.add_argument("--stage-runs", type=int, default=None,
                   help="timed runs of the device pipeline stage by stage, student beside DA-V2 Small "
                        "(benchmarks/stages.py; default 20 on CUDA, 0 = skip on the CPU)")
    p.add_argument("--stage-precisions", nargs="+", default=["fp32", "bf16", "fp16"], choices=list(PRECISIONS),
                   help="precisions of the stage table (each also fp32 without CUDA graphs)")
    p.add_argument("--json", default=None, help="also write every row of the tables as JSON to this file")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    precisions = args.precisions or (["fp32", "fp16"] if device.type == "cuda" else ["fp32"])
    if args.threads:
        torch.set_num_threads(args.threads)
    ctx = mp.get_context("spawn")  # a fresh process per model: its peak memory is its own
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        exported = {n: export_for_speed(args.image_size, folder, encoder_of(n), int8="-int8" in n)
                    for n in args.models if n.endswith("onnxruntime")}  # name -> (path, params, deviation)
        for name in args.models:
            queue = ctx.Queue()
            onnx = exported.get(name)
            on = "cpu" if onnx else args.device  # onnxruntime: the CPU execution provider
            child = ctx.Process(target=speed_child, args=(name, tuple(args.image_size), tuple(args.native_size),
                                                          args.runs, args.warmup, on, precisions, args.threads,
                                                          onnx and onnx[0], queue))
            child.start()
            for row in queue.get():
                if onnx:
                    row.update(params_m=onnx[1], deviation=onnx[2])
                rows.append(row)
            child.join()
    (h, w), (nh, nw) = args.image_size, args.native_size
    lines = [f"{NUM_VIEWS} x {h} x {w} per surround frame, all views in one batch; {args.device}; median of "
             f"{args.runs} runs after {args.warmup} warm-up; timer: {timer_for(device)[0]}"
             + (" (onnxruntime on the CPU: wall clock)" if device.type == "cuda" else ""),
             f"with resize in/out: from {nw} x {nh} (W x H) uint8 frames in host memory to {nw} x {nh} depth in "
             "host memory", ""] + format_table(rows)
    if args.train_runs > 0:
        steps = train_step_times(tuple(args.train_size), 2, args.train_runs, device)
        lines += ["", f"Training step, synthetic {args.train_size[0]} x {args.train_size[1]}, batch 2 surround "
                  f"samples, median of {args.train_runs} interleaved runs", "", "| step | median (s) | / supervised |",
                  "|---|---|---|"]
        lines += [f"| {m} | {t:.3f} | {t / steps['supervised']:.2f}x |" for m, t in steps.items()]
    stage_runs = DEFAULT_STAGE_RUNS.get(device.type, 0) if args.stage_runs is None else args.stage_runs
    stage_table = []
    if stage_runs > 0:
        from benchmarks import stages

        stage_table = stages.stage_rows(stages.STAGE_MODELS, args.stage_precisions, tuple(args.native_size),
                                        tuple(args.image_size), device, stage_runs, args.warmup, NUM_VIEWS)
        deviation = stages.pipeline_deviation(tuple(args.native_size), tuple(args.image_size), device, "bf16",
                                              NUM_VIEWS)
        lines += ["", f"Device pipeline stage by stage (pipeline.py): {NUM_VIEWS} uint8 frames of {nw} x {nh} in "
                  f"pinned host memory -> depth in host memory; {args.device}; median of {stage_runs} runs after "
                  f"{args.warmup} warm-up", ""] + stages.format_stage_table(stage_table)
        lines.append(f"student pipeline (bf16) vs the fp32 host path (Student.infer_images), one random frame: "
                     f"relative depth deviation max {deviation['max']:.1e}, mean {deviation['mean']:.1e}")
    print("\n".join(lines))
    if args.json:
        write_text(args.json, json.dumps({"rows": rows, "stages": stage_table}, indent=2))
    return rows


def train_step_times(image_size, batch_size, runs, device):
    """Median seconds of one optimizer step, interleaved on the same batch: supervised (Eq. 17 with
    lambda_ckd = lambda_vr = 0), CKD + VRKD with cached teacher targets, and with the emulated
    teacher run live. Returns {mode: seconds}."""
    import time

    from model import Student, StudentConfig
    from synthetic import SyntheticSurround
    from cache import FARNESS_LEVELS, compact_targets, distillation_targets
    from teacher import build_teacher

    items = [SyntheticSurround("train", image_size=image_size)[i] for i in range(batch_size)]
    batch = {k: torch.stack([it[k] for it in items]).to(device) for k in items[0]}
    kd_args = train.get_args(["--image-size", *map(str, image_size)])
    sup_args = train.get_args(["--image-size", *map(str, image_size), "--lambda-ckd", "0", "--lambda-vr", "0"])
    teacher = build_teacher("emulated", device=device)
    compact = compact_targets(*distillation_targets(teacher, batch, kd_args.vr_strip, kd_args.vr_grid))
    cached = (compact["farness"][:, :, None].float() / FARNESS_LEVELS, compact["similarity"])  # what the cache holds
    model = Student(StudentConfig(image_size=tuple(image_size))).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)

    def step(mode):
        farness, tokens = (None, None) if mode == "supervised" else cached
        if mode == "kd, live emulated teacher":
            farness, tokens = distillation_targets(teacher, batch, kd_args.vr_strip, kd_args.vr_grid)
        cfg = train.loss_config(sup_args if mode == "supervised" else kd_args)
        loss, _ = losses.objective(model(batch["images"]), batch["depth"], cfg, farness, tokens)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    modes = ("supervised", "kd, cached targets", "kd, live emulated teacher")
    times = {m: [] for m in modes}
    for i in range(runs + 1):  # the first round warms up
        for m in modes:
            t = time.perf_counter()
            step(m)
            if i > 0:
                times[m].append(time.perf_counter() - t)
    return {m: float(np.median(v)) for m, v in times.items()}
