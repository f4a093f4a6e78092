"""The speed comparison of the README (`python benchmark.py speed`): student vs Depth Anything V2.

    python benchmark.py speed [--image-size 352 640] [--runs 5] [--train-runs 5]

The student and the Depth Anything V2 Small and Base teachers (random weights: timing needs
none) on one surround frame, each in a fresh process on the same device: median latency after
warm-up, frames per second, parameters, peak memory and the ratio to the student. Then the cost
of a training step: supervised vs CKD + VRKD from cached teacher targets vs with the teacher
run live, interleaved on the same batch.
"""
import argparse
import os

import numpy as np
import torch

import losses
import train

SPEED_MODELS = ("student-stride2", "student", "student-convex", "student-channels-last", "student-fast",
                "da-v2-small", "da-v2-base", "student-train-step")
STUDENT_MODELS = SPEED_MODELS[:5] + ("student-fast-convex",)  # the last: on request, what convex costs
# What each student row is, so the table shows what each speed change bought:
# - student-stride2: the first design, a fourth decoder stage (256, 128, 64, 32) down to stride 2;
# - student: the default, three decoder stages (128, 64, 32) to stride 4, depth upsampled bilinearly;
# - student-convex: the same with learned convex upsampling (`model.convex_upsample`);
# - student-channels-last: the default in NHWC memory format;
# - student-fast: `Student.for_inference()`, BatchNorm folded into the convs and NHWC: what
#   infer.py runs, and the reference of the ratio column;
# - student-fast-convex (not in the default list): the same with convex upsampling.
STRIDE2_DECODER = (256, 128, 64, 32)


def build_for_speed(name, image_size, device):
    """A model with random weights and its call on one surround frame (1, 6, 3, H, W)."""
    from model import Student, StudentConfig
    from teacher import DINOV2_PATCH, build_random_teacher

    if name in STUDENT_MODELS:
        decoder = STRIDE2_DECODER if name == "student-stride2" else StudentConfig.decoder_channels
        upsample = "convex" if name.endswith("-convex") else StudentConfig.upsample
        model = Student(StudentConfig(image_size=tuple(image_size), decoder_channels=decoder,
                                      upsample=upsample)).to(device).eval()
        if name == "student-channels-last":  # NHWC activations: faster convolutions, same weights
            model = model.to(memory_format=torch.channels_last)
        if name.startswith("student-fast"):
            model = model.for_inference()
        return model, lambda x: model(x)["depth"]
    if name == "student-train-step":  # one supervised optimizer step (Eqs. 15-16), batch of one frame
        model = Student(StudentConfig(image_size=tuple(image_size))).to(device).train()
        optimizer = torch.optim.AdamW(model.parameters())
        args = train.get_args(["--lambda-ckd", "0", "--lambda-vr", "0"])

        def step(x):
            with torch.inference_mode(False), torch.enable_grad():
                target = torch.rand(x.shape[:2] + (1,) + x.shape[-2:], device=x.device) * 80  # stand-in D*
                target = target * (torch.rand_like(target) < 0.02)  # ~2 % of the pixels, as LiDAR
                loss, _ = losses.objective(model(x.clone()), target, train.loss_config(args))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        return model, step
    long_side = max(image_size) // DINOV2_PATCH * DINOV2_PATCH  # 640 -> 630: the size DA-V2 is run at here
    model = build_random_teacher(name.split("-")[-1], device, long_side=long_side)
    return model, lambda x: model(x.flatten(0, 1))["disparity"]


def current_rss_mb():
    """Resident memory of this process now, MB (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def speed_child(name, image_size, runs, warmup, device, queue):
    """In a fresh process: build `name`, time `runs` forward passes after `warmup`, measure peak memory."""
    import resource
    import time

    device = torch.device(device)
    base_rss = current_rss_mb()
    model, call = build_for_speed(name, image_size, device)
    x = torch.rand(1, 6, 3, *image_size, device=device)
    times = []
    with torch.inference_mode():
        for i in range(warmup + runs):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            call(x)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= warmup:
                times.append(time.perf_counter() - t)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20
    else:  # peak resident memory of this process above what it held before building the model
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base_rss
    queue.put({"model": name, "median_s": float(np.median(times)), "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
               "peak_mb": peak, "runs": runs})


def speed(argv=None):
    """`python benchmark.py speed`: student vs DA-V2 Small/Base on one surround frame, one device."""
    import multiprocessing as mp

    p = argparse.ArgumentParser(description="Latency, FPS, parameters and peak memory, side by side.")
    p.add_argument("--image-size", type=int, nargs=2, default=(352, 640), metavar=("H", "W"), help="input per view")
    p.add_argument("--models", nargs="+", default=list(SPEED_MODELS), choices=SPEED_MODELS + STUDENT_MODELS[5:],
                   help="models to time (student-fast-convex on request)")
    p.add_argument("--runs", type=int, default=5, help="timed runs per model (the median is reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs first")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    p.add_argument("--train-size", type=int, nargs=2, default=(96, 160), metavar=("H", "W"),
                   help="input per view of the training-step timing (synthetic batch of 2)")
    p.add_argument("--train-runs", type=int, default=5, help="timed training steps per mode (0: skip)")
    args = p.parse_args(argv)
    ctx = mp.get_context("spawn")  # a fresh process per model: its peak memory is its own
    rows = []
    for name in args.models:
        queue = ctx.Queue()
        child = ctx.Process(target=speed_child, args=(name, tuple(args.image_size), args.runs, args.warmup, args.device, queue))
        child.start()
        rows.append(queue.get())
        child.join()
    ref = next((r for r in rows if r["model"] == "student-fast"), None) or next((r for r in rows if r["model"] == "student"), None)
    student = ref["median_s"] if ref else None
    h, w = args.image_size
    lines = [f"6 x {h} x {w}, batch of one surround frame, {args.device}, {torch.get_num_threads()} threads, "
             f"median of {args.runs} runs after {args.warmup} warm-up", "",
             f"| model | median latency per frame (s) | frames/s | parameters (M) | peak memory (MB) | time / {ref['model'] if ref else 'student'} |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        ratio = f"{r['median_s'] / student:.2f}x" if student else "-"
        lines.append(f"| {r['model']} | {r['median_s']:.3f} | {1 / r['median_s']:.2f} | {r['params_m']:.1f} | "
                     f"{r['peak_mb']:.0f} | {ratio} |")
    if args.train_runs > 0:
        steps = train_step_times(tuple(args.train_size), 2, args.train_runs, torch.device(args.device))
        lines += ["", f"Training step, synthetic {args.train_size[0]} x {args.train_size[1]}, batch 2 surround samples, "
                  f"median of {args.train_runs} interleaved runs", "", "| step | median (s) | / supervised |", "|---|---|---|"]
        lines += [f"| {m} | {t:.3f} | {t / steps['supervised']:.2f}x |" for m, t in steps.items()]
    print("\n".join(lines))
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
