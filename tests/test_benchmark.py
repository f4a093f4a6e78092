"""`benchmark.py speed` (speed.py) on a tiny input: a well-formed table with one row per model (not timed)."""
import re

import speed


def test_speed_prints_a_table_per_model(capsys):
    rows = speed.speed(["--image-size", "32", "64", "--runs", "1", "--warmup", "0",
                            "--models", "student", "student-fast", "da-v2-small", "student-train-step", "--train-size", "32", "64", "--train-runs", "1"])
    assert [r["model"] for r in rows] == ["student", "student-fast", "da-v2-small", "student-train-step"]
    assert all(r["median_s"] > 0 and r["params_m"] > 0 for r in rows)
    assert 20 < rows[2]["params_m"] < 30  # DA-V2 Small: ~24.8 M parameters
    out = capsys.readouterr().out
    table = [line for line in out.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + 4 + 1 + 3  # header, 4 models, training header, 3 modes
    # the ratio column is relative to the fast inference student (what infer.py runs)
    assert re.search(r"\| student-fast \| [\d.]+ \| [\d.]+ \| [\d.]+ \| -?\d+ \| 1\.00x \|", out)
    assert "kd, cached targets" in out and "supervised" in out



def test_data_benchmark_prints_both_loaders(tmp_path, capsys):
    """`benchmark.py data` on the fixture: both loaders, two rounds, three stages, the cache size."""
    import numpy as np

    import benchmark
    import loading
    import nuscenes_fixture

    nuscenes_fixture.build_dataroot(str(tmp_path))
    rate = benchmark.main(["data", "--dataroot", str(tmp_path), "--repeats", "1", "--image-size", "96", "160"])
    assert rate > 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| today") or line.startswith("| before")]
    assert len(rows) == 4 and all(len(r.strip("|").split("|")) == 6 for r in rows)
    assert "ground-truth cache:" in out and "kB per sample" in out
    assert "ddad:" in out  # timed, or one line saying why not
    photo = loading.photo_like(np.random.default_rng(0), 90, 160)
    assert photo.shape == (90, 160, 3) and photo.dtype == np.uint8
    assert photo.std() > 20 and np.abs(np.diff(photo.astype(float), axis=1)).max() > 50  # varied, with edges
