"""Tests of `export.py --quantize int8` (quantize.py) and of `infer.py --onnx` on the int8 file.

- the written file is QDQ: it holds QuantizeLinear / DequantizeLinear pairs, its metadata says int8
  and keeps the student's (so OnnxStudent and infer.py read it as they read the fp32 file);
- its depth deviates from the torch student's by a bounded amount, reported by the CLI;
- the AbsRel of int8 and fp32 are both computed on the test samples, and a file whose AbsRel is
  more than quantize.MAX_ABSREL_CHANGE from the fp32 one is refused, nothing written;
- `head_nodes` finds the bin-logit conv and everything after it (and the bin MLP with bins=True),
  and `--int8-head float` leaves exactly those nodes unquantized;
- the calibration reader gives float views in [0, 1], uint8 images included;
- bad input ends in one line.
"""
import json
import os
import subprocess
import sys
from dataclasses import asdict

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

import export
import infer
import quantize
from model import load_checkpoint, save_checkpoint
from synthetic import SyntheticSurround
from viz import to_uint8
from test_export import ROOT, tiny_student

INT8_FLAGS = ["--quantize", "int8", "--calibration-samples", "2", "--accuracy-samples", "2"]
# A random tiny student's int8 depth stays within a few percent of its fp32 depth (measured: mean 0.6 %,
# max 2.5 %); the bounds leave room for other onnxruntime builds while failing a broken quantization.
MAX_MEAN_DEVIATION = 0.03
MAX_DEVIATION = 0.15


@pytest.fixture(scope="module")
def int8(tmp_path_factory):
    """A tiny checkpoint and its int8 export by the CLI: (checkpoint, onnx path, result, printed text)."""
    folder = tmp_path_factory.mktemp("int8")
    model = tiny_student()
    ckpt, out = str(folder / "checkpoint.pt"), str(folder / "student-int8.onnx")
    save_checkpoint(ckpt, {"config": asdict(model.cfg), "model": model.state_dict()})
    result = export.main(["--checkpoint", ckpt, "--out", out] + INT8_FLAGS)
    return ckpt, out, result


def test_int8_file_is_qdq_with_the_students_metadata(int8):
    _, out, _ = int8
    q, dq = quantize.quantized_nodes(out)
    assert q > 10 and dq > 10  # activations and weights of the convolutions
    proto = onnx.load(out)
    convs = [n.input[1] for n in proto.graph.node if n.op_type == "Conv"]
    dequantized = {o for n in proto.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    float_convs = [w for w in convs if w not in dequantized]  # the default keeps the head float: its one conv
    assert len(convs) > 10 and len(float_convs) == 1 and float_convs[0].endswith(quantize.LOGIT_HEAD_WEIGHT)
    meta = {p.key: json.loads(p.value) for p in proto.metadata_props}
    assert meta["precision"] == "int8" and meta["image_size"] == [64, 96]
    assert meta["quantization"]["format"] == "QDQ" and meta["quantization"]["calibration"] == export.DEFAULT_CALIBRATION
    assert meta["quantization"]["head"] == export.DEFAULT_INT8_HEAD and meta["quantization"]["float_nodes"] > 0
    assert not [f for f in os.listdir(os.path.dirname(out)) if f.startswith(".tmp-")]


def test_int8_deviation_is_bounded_and_accuracy_compared(int8, capsys):
    ckpt, out, result = int8
    dev = result["deviation"]
    assert 0 < dev["mean"] <= dev["p99"] <= dev["max"] <= MAX_DEVIATION and dev["mean"] <= MAX_MEAN_DEVIATION
    assert result["fp32_deviation"] <= export.MAX_RELATIVE_DEVIATION
    acc = result["accuracy"]
    assert acc["fp32"]["num_samples"] == acc["onnx"]["num_samples"] == 2
    fp32, int8_abs_rel = (acc[k]["all"]["sparse"]["abs_rel"] for k in ("fp32", "onnx"))
    assert abs(int8_abs_rel / fp32 - 1) <= quantize.MAX_ABSREL_CHANGE
    assert int8_abs_rel != fp32  # the quantized file is really another computation
    student, _ = load_checkpoint(ckpt)
    views = SyntheticSurround("test", image_size=(64, 96))[1]["images"]  # another sample than the CLI's
    again = quantize.relative_deviation(export.OnnxStudent(out)(views[None])["depth"][0],
                                        export.torch_depth(student, views))
    assert again["mean"] <= MAX_MEAN_DEVIATION


def test_infer_onnx_runs_the_int8_file(int8, tmp_path):
    ckpt, out, _ = int8
    src = tmp_path / "imgs"
    src.mkdir()
    views = SyntheticSurround("test", image_size=(64, 96))[2]["images"]  # images like the calibration's
    for i in range(2):
        Image.fromarray(to_uint8(views[i].numpy())).save(src / f"im{i}.png")
    assert infer.main([str(src), "--checkpoint", ckpt, "--out", str(tmp_path / "torch")]) == 2
    assert infer.main([str(src), "--onnx", out, "--out", str(tmp_path / "int8")]) == 2
    for i in range(2):
        name = f"im{i}{infer.OUTPUT_SUFFIX}.npy"
        a, b = np.load(tmp_path / "torch" / name), np.load(tmp_path / "int8" / name)
        assert a.shape == b.shape and quantize.relative_deviation(b, a)["mean"] <= MAX_MEAN_DEVIATION


def test_head_nodes_are_the_logit_conv_and_what_follows(tmp_path):
    path = str(tmp_path / "fp32.onnx")
    export.export_onnx(tiny_student(), path)
    proto = onnx.load(path)
    by_name = {n.name: n for n in proto.graph.node}
    head = quantize.head_nodes(proto)
    ops = sorted(by_name[n].op_type for n in head)
    assert ops.count("Conv") == 1 and "Exp" in ops and "Resize" in ops and "MatMul" not in ops
    assert any(by_name[n].output[0] == export.OUTPUT_NAME for n in head)  # down to the depth output
    with_bins = quantize.head_nodes(proto, bins=True)
    assert head < with_bins and {"MatMul", "Softmax", "CumSum"} <= {by_name[n].op_type for n in with_bins}
    encoder_convs = [n for n in proto.graph.node if n.op_type == "Conv" and n.name not in with_bins]
    assert len(encoder_convs) == sum(n.op_type == "Conv" for n in proto.graph.node) - 1

    calibration = quantize.CalibrationViews([{"images": torch.rand(6, 3, 64, 96)}] * 2, range(2), "images")
    out = str(tmp_path / "float-head.onnx")
    quantize.quantize_int8(path, out, calibration, head="float")
    quantized = onnx.load(out)
    logit_conv = [n for n in quantized.graph.node if n.op_type == "Conv"
                  and any(i.endswith(quantize.LOGIT_HEAD_WEIGHT) for i in n.input)]
    assert len(logit_conv) == 1  # its weight is the float initializer, not a DequantizeLinear output
    assert json.loads({p.key: p.value for p in quantized.metadata_props}["quantization"])["head"] == "float"
    with pytest.raises(ValueError, match="not a student graph"):
        quantize.head_nodes(onnx.helper.make_model(onnx.helper.make_graph([], "empty", [], [])))


def test_calibration_views_are_float_in_unit_range():
    items = [{"images": torch.full((6, 3, 4, 4), 255, dtype=torch.uint8)}, {"images": torch.zeros(6, 3, 4, 4)}]
    reader = quantize.CalibrationViews(items, [0, 1], "images")
    first = reader.get_next()["images"]
    assert first.dtype == np.float32 and first.shape == (6, 3, 4, 4) and first.max() == 1.0
    assert reader.get_next()["images"].max() == 0.0 and reader.get_next() is None
    reader.rewind()
    assert reader.get_next()["images"].max() == 1.0


def test_relative_deviation_by_hand():
    dev = quantize.relative_deviation([2.0, 10.0, 4.0, 4.0], [2.0, 8.0, 4.0, 5.0])
    assert dev["max"] == pytest.approx(0.25) and dev["mean"] == pytest.approx((0.25 + 0.2) / 4)


def test_an_int8_file_that_loses_accuracy_is_refused(int8, tmp_path, monkeypatch):
    ckpt, _, _ = int8
    worse = {"all": {"sparse": {"abs_rel": 0.2}}, "num_samples": 2}
    better = {"all": {"sparse": {"abs_rel": 0.1}}, "num_samples": 2}
    monkeypatch.setattr(quantize, "compare_accuracy", lambda *a: {"fp32": better, "onnx": worse})
    out = tmp_path / "refused.onnx"
    with pytest.raises(export.ExportError, match=r"int8 sparse AbsRel 0.2000 is \+100.0 % .* nothing was written"):
        export.main(["--checkpoint", ckpt, "--out", str(out)] + INT8_FLAGS)
    assert os.listdir(tmp_path) == []  # no output, no temporary file


def test_int8_bad_input_ends_in_one_line(tmp_path):
    result = subprocess.run([sys.executable, "export.py", "--checkpoint", str(tmp_path / "none.pt"), "--out",
                             str(tmp_path / "a.onnx")] + INT8_FLAGS, cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.strip().startswith("error: ") and len(result.stderr.strip().splitlines()) == 1
    with pytest.raises(SystemExit):
        export.get_args(["--quantize", "int8", "--calibration-samples", "0"])
