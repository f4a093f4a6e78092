"""Tests of the device pipeline (pipeline.py) and its stage timing (benchmarks/stages.py), on the CPU.

- the pipeline's depth, from uint8 frames to depth at the frames' size, is the host path's
  (`Student.infer_images`): the preprocessing (uint8 -> float, antialiased resize) and the resize out
  are the same computation on the device; without CUDA it runs eagerly and says why;
- `PipelineStudent` (what infer.py runs on CUDA) returns what `Student.infer_images` returns, for
  images of several sizes, with one pipeline per shape;
- `run` marks the start and then every stage in order; `stage_seconds` turns the marks of a clock
  into per-stage medians and the whole (a fake timer, never a real one); `EventClock` reads CUDA
  events (with a stand-in for torch.cuda.Event);
- `format_stage_table`: each model at its best precision, and both in fp32 without graphs.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import pipeline
from benchmarks import stages
from model import Student, StudentConfig

SIZE = (64, 96)


def tiny_student():
    torch.manual_seed(0)
    return Student(StudentConfig(image_size=SIZE, num_bins=16)).eval()


def frames_of(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def test_pipeline_depth_is_the_host_paths_depth():
    student = tiny_student()
    frames = frames_of((6, 45, 80, 3))
    pipe = pipeline.student_pipeline(student, frames.shape, "cpu", precision="fp32")
    assert not pipe.graphed and pipe.fallback == "not CUDA"
    depth = pipe.run(frames)
    reference = np.stack(student.for_inference().infer_images(list(frames)))
    assert depth.shape == (6, 45, 80) and depth.dtype == np.float32
    np.testing.assert_allclose(depth, reference, rtol=1e-5)
    views = pipe.stages["preprocess"](torch.from_numpy(frames))  # the device preprocessing
    host = torch.cat([F.interpolate(torch.from_numpy(f.copy()).permute(2, 0, 1)[None].float() / 255.0, size=SIZE,
                                    mode="bilinear", align_corners=False, antialias=True) for f in frames])
    torch.testing.assert_close(views, host, rtol=0, atol=1e-6)
    low = torch.rand(6, 1, *SIZE)
    torch.testing.assert_close(pipe.stages["resize out"](low), F.interpolate(low, size=(45, 80), mode="bilinear",
                                                                            align_corners=False)[:, 0])
    again = pipe.run(frames_of((6, 45, 80, 3), seed=1))  # the same buffers, new frames
    assert not np.allclose(again, reference)


def test_pipeline_student_matches_student_infer_images():
    student = tiny_student()
    images = [frames_of((45, 80, 3), 1), frames_of((100, 70, 3), 2), frames_of((45, 80, 3), 3)]
    runner = pipeline.PipelineStudent(student, "cpu", precision="fp32")
    depths = runner.infer_images(images)
    for ours, theirs in zip(depths, student.for_inference().infer_images(images)):
        assert ours.shape == theirs.shape and ours.dtype == np.float32
        np.testing.assert_allclose(ours, theirs, rtol=1e-5)
    assert sorted(runner.pipelines) == [(1, 100, 70, 3), (2, 45, 80, 3)] and runner.cfg.image_size == SIZE
    assert runner.infer_images(images[:1])[0] is not depths[0]  # a copy, not the pinned buffer


def test_run_marks_the_start_then_every_stage_in_order():
    pipe = pipeline.student_pipeline(tiny_student(), (2, 32, 48, 3), "cpu", precision="fp32")
    marks = []
    pipe.run(frames_of((2, 32, 48, 3)), mark=marks.append)
    assert marks == [pipeline.START, *pipeline.STAGES]


class FakePipeline:
    """Marks the stages as DevicePipeline.run does; each stage advances the fake time by its duration."""

    def __init__(self, durations, time):
        self.durations, self.time = durations, time

    def run(self, mark):
        mark(pipeline.START)
        for stage in pipeline.STAGES:
            self.time[0] += self.durations.pop(0)
            mark(stage)
        self.time[0] += 0.5  # host time after the last mark (returning the array)


def test_stage_seconds_are_medians_of_the_laps_of_a_fake_timer():
    time = [0.0]
    # run 0 (warm-up) is slow; runs 1-3 take 1, 2, 3 s in the first stage and 10 s in every other
    durations = [100.0] * 5 + [1.0] + [10.0] * 4 + [2.0] + [10.0] * 4 + [3.0] + [10.0] * 4
    fake = FakePipeline(durations, time)
    result = stages.stage_seconds(fake, stages.WallClock(now=lambda: time[0]), runs=3, warmup=1,
                                  now=lambda: time[0])
    assert result["upload"] == 2.0 and all(result[s] == 10.0 for s in pipeline.STAGES[1:])
    assert result[stages.WHOLE] == pytest.approx(2.0 + 40.0 + 0.5)  # from the call to its return


def test_event_clock_reads_elapsed_time_between_events(monkeypatch):
    class Event:  # stands in for torch.cuda.Event: its "time" is when it was recorded
        clock = [0.0]

        def __init__(self, enable_timing=False):
            assert enable_timing

        def record(self):
            Event.clock[0] += 4.0
            self.at = Event.clock[0]

        def synchronize(self):
            pass

        def elapsed_time(self, later):
            return later.at - self.at  # milliseconds

    monkeypatch.setattr(torch.cuda, "Event", Event)
    clock = stages.EventClock()
    for stage in (pipeline.START, *pipeline.STAGES):
        clock.mark(stage)
    assert clock.laps() == {stage: pytest.approx(4e-3) for stage in pipeline.STAGES}


def row(model, precision, graph, network, whole):
    return {"model": model, "precision": precision, "graph": graph, "attention": "sdpa", "upload": 0.001,
            "preprocess": 0.001, "network": network, "resize out": 0.001, "download": 0.001, stages.WHOLE: whole}


def test_stage_table_ratios_at_the_best_precision_and_in_fp32():
    rows = [row("student", "bf16", "yes", 0.001, 0.004), row("student", "fp32", "yes", 0.002, 0.005),
            row("student", "fp32", "no (graph=False)", 0.0025, 0.030),
            row("da-v2-small", "bf16", "yes", 0.012, 0.020), row("da-v2-small", "fp32", "no (graph=False)", 0.020,
                                                                  0.050)]
    lines = stages.format_stage_table(rows)
    assert len([line for line in lines if line.startswith("| ")]) == 1 + len(rows)
    text = "\n".join(lines)
    assert "network only, each at its best: student 1.000 ms (bf16, graph yes), da-v2-small 12.000 ms" in text
    assert text.count(": 12.0x") == 1 and "both fp32 without CUDA graphs (as before): student 2.500 ms, " \
           "da-v2-small 20.000 ms: 8.0x" in text
    assert "end to end, host uint8 frames to host depth, each at its best: student 4.000 ms" in text
    assert ": 5.0x" in text
