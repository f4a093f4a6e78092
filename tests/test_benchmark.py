"""`benchmark.py speed` on a tiny input: a well-formed table with one row per model (not timed)."""
import re

import benchmark


def test_speed_prints_a_table_per_model(capsys):
    rows = benchmark.speed(["--image-size", "32", "64", "--runs", "1", "--warmup", "0",
                            "--models", "student", "da-v2-small", "student-train-step", "--train-size", "32", "64", "--train-runs", "1"])
    assert [r["model"] for r in rows] == ["student", "da-v2-small", "student-train-step"]
    assert all(r["median_s"] > 0 and r["params_m"] > 0 for r in rows)
    assert 20 < rows[1]["params_m"] < 30  # DA-V2 Small: ~24.8 M parameters
    out = capsys.readouterr().out
    table = [line for line in out.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + 3 + 1 + 3  # header, 3 models, training header, 3 modes
    assert re.search(r"\| student \| [\d.]+ \| [\d.]+ \| [\d.]+ \| -?\d+ \| 1\.00x \|", out)
    assert "kd, cached targets" in out and "supervised" in out
