"""The device pipeline stage by stage (pipeline.py), the student beside DA-V2 Small at each one's best.

    python benchmark.py speed --device cuda [--stage-runs 20] [--stage-precisions fp32 bf16 fp16]

Each model runs the whole deployment path of `pipeline.DevicePipeline`: six native uint8 frames in
pinned host memory -> upload -> preprocess -> network -> resize out -> download -> depth in host
memory. The student's network is its inference form (BatchNorm folded, channels_last); DA-V2
Small's is the transformers model with its own bicubic resize and normalisation, attention through
PyTorch's scaled-dot-product attention (`attention` in the table), random weights. Each precision
is autocast; on CUDA each device stage is replayed from a CUDA graph where the capture works (the
`graph` column says so, or why not). Stage times come from CUDA events between the stages (the
wall clock on the CPU); 'whole' is the host's wall clock from the call to depth in host memory.
Medians of --stage-runs after warm-up. Ratios: DA-V2 over the student, network only and whole,
both at their best precision (the fastest of those measured) and both in fp32 (as before).
"""
import time

import numpy as np
import torch

from pipeline import START, STAGES, DevicePipeline, student_pipeline

STAGE_MODELS = ("student", "da-v2-small")
WHOLE = "whole"


class WallClock:
    """Stage clock on the CPU: the wall clock read at each mark (CPU stages are synchronous).
    The pipeline marks START before its first stage and each stage of STAGES once it is done."""

    def __init__(self, now=time.perf_counter):
        self.now, self.times = now, []

    def mark(self, stage):
        """`stage` has finished (START: the run begins; earlier marks are dropped)."""
        if stage == START:
            self.times = []
        self.times.append((stage, self._read()))

    def _read(self):
        return self.now()

    def _seconds(self, earlier, later):
        return later - earlier

    def laps(self):
        """{stage: seconds} of the last run: each mark minus the one before it."""
        return {name: self._seconds(self.times[i][1], t) for i, (name, t) in enumerate(self.times[1:])}


class EventClock(WallClock):
    """Stage clock on CUDA: at each mark an event recorded on the current stream (the pipeline's), so a
    lap is GPU time between the stages as issued; the laps are read once the last event has completed."""

    def _read(self):
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def _seconds(self, earlier, later):
        later.synchronize()
        return earlier.elapsed_time(later) / 1e3  # milliseconds -> seconds


def stage_seconds(pipeline, clock, runs, warmup, now=time.perf_counter):
    """Median seconds of each stage of `pipeline` (a DevicePipeline) over `runs` runs after `warmup`,
    from `clock` (WallClock or EventClock), and of the whole run on the host clock `now`
    -> {stage: seconds for each of STAGES, WHOLE: seconds}."""
    laps, whole = [], []
    for i in range(warmup + runs):
        start = now()
        pipeline.run(mark=clock.mark)
        end = now()
        if i >= warmup:
            laps.append(clock.laps())
            whole.append(end - start)
    out = {stage: float(np.median([lap[stage] for lap in laps])) for stage in STAGES}
    out[WHOLE] = float(np.median(whole))
    return out


def teacher_network(name, device, image_size):
    """DA-V2 `name` ('da-v2-small') with random weights -> (prepare, network, parameters in millions,
    attention implementation): its own resize and normalisation, and its network at the long side
    speed.py times it at (the student's long side rounded down to the 14 px patch)."""
    from teacher import DINOV2_PATCH, build_random_teacher, preprocess, teacher_input_size

    long_side = max(image_size) // DINOV2_PATCH * DINOV2_PATCH
    teacher = build_random_teacher(name.split("-")[-1], device, long_side=long_side)
    size = teacher_input_size(*image_size, long_side, DINOV2_PATCH)
    attention = getattr(teacher.model.backbone.config, "_attn_implementation", "eager")
    return (lambda views: preprocess(views, size), lambda x: teacher.model(pixel_values=x).predicted_depth[:, None],
            sum(p.numel() for p in teacher.parameters()) / 1e6, attention)


def build_pipeline(name, frame_shape, device, precision, image_size, graph):
    """The DevicePipeline of `name` (STAGE_MODELS) -> (pipeline, attention)."""
    from model import Student, StudentConfig

    if name == "student":
        torch.manual_seed(0)
        return student_pipeline(Student(StudentConfig(image_size=tuple(image_size))).eval(), frame_shape, device,
                                precision, graph), "-"
    prepare, network, _, attention = teacher_network(name, device, image_size)
    return DevicePipeline(prepare, network, frame_shape, device, precision, graph), attention


def stage_rows(models, precisions, native_size, image_size, device, runs, warmup, num_views, eager_fp32=True):
    """Time every model of `models` in every precision -> rows {model, precision, graph, attention, stage
    seconds..., whole}. With eager_fp32, on CUDA, also each model in fp32 without graphs (the path before them)."""
    device = torch.device(device)
    frame_shape = (num_views, *native_size, 3)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, frame_shape, dtype=np.uint8)
    rows = []
    for name in models:
        settings = [(p, True) for p in precisions] + ([("fp32", False)] if eager_fp32 and device.type == "cuda" else [])
        for precision, graph in settings:
            pipe, attention = build_pipeline(name, frame_shape, device, precision, image_size, graph)
            pipe.host_in.copy_(torch.from_numpy(frames))  # the frames are in pinned memory, as a decoder leaves them
            clock = EventClock() if device.type == "cuda" else WallClock()
            seconds = stage_seconds(pipe, clock, runs, warmup)
            graphed = "yes" if pipe.graphed else f"no ({pipe.fallback})"
            rows.append({"model": name, "precision": precision, "graph": graphed,
                         "attention": attention, **seconds})
            del pipe
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows


def best(rows, model, key):
    """The row of `model` with the smallest `key` (a stage or WHOLE) among its graphed-or-not rows."""
    return min((r for r in rows if r["model"] == model), key=lambda r: r[key])


def format_stage_table(rows):
    """Markdown lines: one row per model and setting with each stage in ms, then the ratios."""
    lines = ["| model | precision | CUDA graph | attention | " + " | ".join(f"{s} (ms)" for s in STAGES)
             + f" | {WHOLE} (ms) | frames/s |", "|" + "---|" * (len(STAGES) + 6)]
    for r in rows:
        cells = " | ".join(f"{1e3 * r[s]:.3f}" for s in STAGES)
        lines.append(f"| {r['model']} | {r['precision']} | {r['graph']} | {r['attention']} | {cells} | "
                     f"{1e3 * r[WHOLE]:.3f} | {1 / r[WHOLE]:.1f} |")
    lines.append("")
    models = list(dict.fromkeys(r["model"] for r in rows))
    if len(models) < 2:
        return lines
    student, teacher = models[0], models[1]
    for key, what in (("network", "network only"), (WHOLE, "end to end, host uint8 frames to host depth")):
        s, t = best(rows, student, key), best(rows, teacher, key)
        lines.append(f"{what}, each at its best: {student} {1e3 * s[key]:.3f} ms ({s['precision']}, graph "
                     f"{s['graph']}), {teacher} {1e3 * t[key]:.3f} ms ({t['precision']}, graph {t['graph']}): "
                     f"{t[key] / s[key]:.1f}x")
        fp32 = [(r, q) for r in rows if r["model"] == student and r["precision"] == "fp32" and r["graph"] != "yes"
                for q in rows if q["model"] == teacher and q["precision"] == "fp32" and q["graph"] != "yes"]
        if fp32:
            r, q = fp32[0]
            lines.append(f"{what}, both fp32 without CUDA graphs (as before): {student} {1e3 * r[key]:.3f} ms, "
                         f"{teacher} {1e3 * q[key]:.3f} ms: {q[key] / r[key]:.1f}x")
    return lines


def pipeline_deviation(native_size, image_size, device, precision, num_views):
    """Max and mean relative deviation of the student pipeline's depth (`precision`, graphs on CUDA) from
    the fp32 host path `Student.for_inference().infer_images` on one random frame of each view."""
    from model import Student, StudentConfig
    from quantize import relative_deviation

    torch.manual_seed(0)
    student = Student(StudentConfig(image_size=tuple(image_size))).eval()
    frames = np.random.default_rng(1).integers(0, 256, (num_views, *native_size, 3), dtype=np.uint8)
    reference = np.stack(student.for_inference().infer_images(list(frames)))
    depth = student_pipeline(student, frames.shape, device, precision).run(frames)
    return relative_deviation(depth, reference)
