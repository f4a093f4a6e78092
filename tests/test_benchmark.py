"""`benchmark.py speed` (speed.py): the table on a tiny input (not timed), its ratios, and the clocks.

- one run prints a row per model and mode (network only, with resize in/out) with precision,
  threads and batch, the onnxruntime row included with its deviation from torch;
- `format_table`: each row's time over the fastest student of its precision and mode, and the
  teachers' slow-down in the summary lines, on hand-made rows;
- `timer_for`: the wall clock on the CPU; on CUDA, events recorded between two synchronisations
  (with a stand-in for torch.cuda, so that this runs without a GPU).
"""
import re

import pytest
import torch

from benchmarks import speed


def test_speed_prints_a_table_per_model_and_mode(capsys):
    rows = speed.speed(["--image-size", "32", "64", "--native-size", "45", "80", "--runs", "1", "--warmup", "0",
                        "--models", "student-fast",
                        "student-onnxruntime", "student-light-onnxruntime", "da-v2-small", "student-train-step",
                        "--train-size", "32", "64",
                        "--train-runs", "1"])
    models = ("student-fast", "student-onnxruntime", "student-light-onnxruntime", "da-v2-small")
    assert [(r["model"], r["mode"]) for r in rows] == [(m, mode) for m in models for mode in speed.MODES] + [
        ("student-train-step", speed.MODES[0])]
    assert all(r["median_s"] > 0 and r["params_m"] > 0 and r["precision"] == "fp32" for r in rows)
    assert all(r["threads"] == torch.get_num_threads() for r in rows)
    assert 20 < rows[6]["params_m"] < 30  # DA-V2 Small: ~24.8 M parameters
    assert rows[2]["params_m"] == pytest.approx(rows[0]["params_m"])  # the exported student: the same network
    assert rows[2]["deviation"] < 1e-3 and rows[4]["deviation"] < 1e-3  # onnxruntime vs torch, same weights
    assert rows[4]["params_m"] < 0.7 * rows[0]["params_m"]  # the light (RegNetX-400MF) student is smaller
    out = capsys.readouterr().out
    table = [line for line in out.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + 9 + 1 + 3  # header, 4 models x 2 modes + training step, training header, 3 modes
    assert all(line.count("|") == 12 for line in table[:10])  # 11 columns
    assert re.search(r"\| student-onnxruntime \| onnxruntime CPU EP, ORT_ENABLE_ALL \| fp32 \| network only \| "
                     r"\d+ \| 6 views \|", out)
    assert "student-onnxruntime vs the torch student" in out and "kd, cached targets" in out



def test_data_benchmark_prints_both_loaders(tmp_path, capsys):
    """`benchmark.py data` on the fixture: both loaders, two rounds, three stages, the cache size."""
    import numpy as np

    import benchmark
    from benchmarks import loading
    import nuscenes_fixture

    import ddad_fixture

    nuscenes_fixture.build_dataroot(str(tmp_path))
    ddad_root = ddad_fixture.build_dataroot(str(tmp_path / "ddad"))  # small: the default is full size
    rate = benchmark.main(["data", "--dataroot", str(tmp_path), "--ddad-root", ddad_root, "--repeats", "1",
                           "--image-size", "96", "160"])
    assert rate > 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| today") or line.startswith("| before")]
    assert len(rows) == 4 and all(len(r.strip("|").split("|")) == 6 for r in rows)
    assert "ground-truth cache:" in out and "kB per sample" in out
    assert re.search(r"ddad: [0-9.]+ samples/s", out)  # timed
    photo = loading.photo_like(np.random.default_rng(0), 90, 160)
    assert photo.shape == (90, 160, 3) and photo.dtype == np.uint8
    assert photo.std() > 20 and np.abs(np.diff(photo.astype(float), axis=1)).max() > 50  # varied, with edges


def row(model, seconds, mode=speed.MODES[0], precision="fp32", deviation=None):
    """A speed row as speed_child makes it."""
    return {"model": model, "runtime": "torch", "precision": precision, "mode": mode, "threads": 2,
            "median_s": seconds, "params_m": 1.0, "peak_mb": 10.0, "deviation": deviation}


def test_format_table_ratios_to_the_fastest_student_of_each_precision_and_mode():
    rows = [row("student-fast", 0.4), row("student-onnxruntime", 0.25, deviation=2e-6), row("da-v2-small", 3.0),
            row("da-v2-base", 7.5), row("student-fast", 0.8, mode=speed.MODES[1]),
            row("da-v2-small", 4.0, speed.MODES[1]),
            row("student-fast", 0.1, precision="fp16"), row("student-train-step", 0.05)]
    lines = speed.format_table(rows)
    ratios = [line.rstrip(" |").rsplit("| ", 1)[1] for line in lines[2:2 + len(rows)]]
    # network only fp32: fastest student 0.25 s; with resize: 0.8 s; fp16: 0.1 s; the training step is no student
    assert ratios == ["1.60x", "1.00x", "12.00x", "30.00x", "1.00x", "5.00x", "1.00x", "0.20x"]
    assert "fp32, network only: fastest student student-onnxruntime (torch) 0.250 s; slower by: da-v2-small 12.0x, " \
           "da-v2-base 30.0x" in lines
    assert ("fp32, with resize in/out: fastest student student-fast (torch) 0.800 s; slower by: da-v2-small 5.0x"
            in lines)
    assert any("max relative depth deviation 2.0e-06" in line for line in lines)


def test_timer_is_the_wall_clock_on_the_cpu():
    name, timed = speed.timer_for(torch.device("cpu"))
    assert name == "wall clock" and 0 <= timed(lambda: None) < 1


def test_cuda_timer_records_events_between_synchronisations(monkeypatch):
    log = []

    class Event:  # stands in for torch.cuda.Event
        def __init__(self, enable_timing=False):
            assert enable_timing
            self.name = "start" if not any(e.startswith("new") for e in log) else "end"
            log.append(f"new {self.name}")

        def record(self):
            log.append(f"record {self.name}")

        def elapsed_time(self, end):
            assert (self.name, end.name) == ("start", "end")
            return 250.0  # milliseconds

    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: log.append("synchronize"))
    name, timed = speed.timer_for(torch.device("cuda"))
    assert name == "CUDA events"
    assert timed(lambda: log.append("call")) == pytest.approx(0.25)  # seconds
    assert log[2:] == ["synchronize", "record start", "call", "record end", "synchronize"]
