"""`benchmark.py traincost` (benchmarks/traincost.py): what training on nuScenes costs, on a tiny size.

- `TableSurround` indexes the tables from the JSON files alone, and its samples are the devkit's
  (`NuScenesSurround`) record for record, so its items are the training loader's;
- two steps at 64 x 96 run the whole training step with the live teacher and with the cache, and
  the table has samples/s, the loader and the step alone, the verdict and the epoch time (not timed:
  speed goes into the table, never into an assert);
- `cuda_check.sh` refuses to run without CUDA unless SMOKE=1.
"""
import json
import os
import subprocess

import numpy as np
import pytest

import benchmark
import nuscenes_fixture
from benchmarks import traincost
from nusc import NuScenesSurround

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--image-size", "64", "96", "--batch-size", "2", "--steps", "2", "--warmup", "1", "--workers", "0",
        "--images", "flat", "--teacher-long-side", "56"]


def test_table_index_is_the_devkits(tmp_path):
    nuscenes_fixture.build_dataroot(str(tmp_path))
    ours = traincost.TableSurround(str(tmp_path), "v1.0-mini", "mini_train", (64, 96))
    theirs = NuScenesSurround(str(tmp_path), "v1.0-mini", "mini_train", (64, 96))
    assert len(ours) == 2 * nuscenes_fixture.SAMPLES_PER_SCENE  # every scene: the tables hold two
    by_token = {r["token"]: r for r in ours.samples}
    for record in theirs.samples:
        mine = by_token[record["token"]]
        assert mine["image_files"] == record["image_files"] and mine["image_sizes"] == record["image_sizes"]
        for key in ("intrinsics", "cam_to_ego", "cam_from_global"):
            np.testing.assert_allclose(mine[key], record[key], rtol=0, atol=1e-12)
        assert [s[0] for s in mine["sweeps"]] == [s[0] for s in record["sweeps"]]


def test_traincost_runs_the_whole_step_live_and_cached(tmp_path, capsys):
    out = tmp_path / "traincost.json"
    rows = benchmark.main(["traincost", *TINY, "--device", "cpu", "--json", str(out)])
    assert [r["mode"] for r in rows] == ["live", "cache"] and rows[0]["teacher_precision"] == "fp32"
    for r in rows:
        assert min(r["samples_per_s"], r["loader_samples_per_s"], r["step_samples_per_s"]) > 0
        slowest = min(r["samples_per_s"], r["loader_samples_per_s"], r["step_samples_per_s"])
        assert r["sustained_samples_per_s"] == slowest
        assert r["epoch_hours"] == pytest.approx(traincost.NUSCENES_TRAIN_SAMPLES / slowest / 3600)
        assert r["verdict"] in ("loader-bound", "compute-bound") and r["peak_gpu_mb"] is None
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + len(rows) and all(line.count("|") == 9 for line in table)  # header and a row each
    assert json.loads(out.read_text())["rows"][1]["mode"] == "cache"


def test_cuda_check_needs_cuda_or_smoke(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "SMOKE": "0"}
    env["PYTHON"] = os.path.join(tmp_path, "nocuda")
    with open(env["PYTHON"], "w") as f:
        f.write("#!/bin/sh\nexit 1\n")  # an interpreter that sees no CUDA device
    os.chmod(env["PYTHON"], 0o755)
    done = subprocess.run(["bash", "benchmarks/cuda_check.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2 and done.stderr.startswith("error: no CUDA device")
