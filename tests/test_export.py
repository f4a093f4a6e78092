"""Tests of export.py and `infer.py --onnx`: the ONNX round trip of the student (Eqs. 1-5).

- `DepthGraph` (Eq. 5 with the softmax written out) gives the student's depth, bilinear and convex;
- `python export.py` writes an opset >= 17 file with a dynamic first axis and the metadata, and its
  onnxruntime depth on a synthetic surround sample is within 1e-3 of torch;
- `OnnxStudent` matches the torch student for any number of views and through `infer_images`;
- `infer.py --onnx` writes the same files with the same depth as `infer.py --checkpoint`;
- a missing checkpoint, an unwritable output, an export failure and a failed check each end in one
  line, and leave no file behind.
"""
import json
import os
import shutil
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
from cli import PROJECT_VERSION, InputError
from model import Student, StudentConfig, load_checkpoint, save_checkpoint
from rig import CAMERAS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(image_size=(64, 96), num_bins=16)


def tiny_student(seed=0, **kwargs):
    """A small random student whose BatchNorms hold non-trivial running statistics (so folding matters)."""
    torch.manual_seed(seed)
    model = Student(StudentConfig(**{**TINY, **kwargs}))
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    return model.eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny checkpoint and its export by the CLI: (checkpoint path, onnx path, deviation, printed text)."""
    folder = tmp_path_factory.mktemp("export")
    model = tiny_student()
    ckpt, out = str(folder / "checkpoint.pt"), str(folder / "student.onnx")
    save_checkpoint(ckpt, {"config": asdict(model.cfg), "model": model.state_dict()})
    deviation = export.main(["--checkpoint", ckpt, "--out", out])
    return ckpt, out, deviation


@pytest.mark.parametrize("upsample", ["bilinear", "convex"])
def test_depth_graph_is_the_students_depth(upsample):
    model = tiny_student(upsample=upsample).for_inference()
    views = torch.rand(3, 3, 64, 96)
    with torch.inference_mode():
        reference = model(views[:, None])["depth"][:, 0]  # each view its own sample, (3, 1, 64, 96)
        depth = export.DepthGraph(model)(views)
    assert depth.shape == (3, 1, 64, 96)
    torch.testing.assert_close(depth, reference, rtol=1e-5, atol=1e-5)


def test_export_writes_a_checked_onnx_file_with_metadata(exported, capsys):
    _, out, deviation = exported
    assert 0 <= deviation <= export.MAX_RELATIVE_DEVIATION
    proto = onnx.load(out)
    onnx.checker.check_model(proto)
    assert proto.opset_import[0].version >= 17
    shapes = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in list(proto.graph.input) + list(proto.graph.output)}
    assert shapes["images"][1:] == [3, 64, 96] and shapes["depth"][1:] == [1, 64, 96]
    assert isinstance(shapes["images"][0], str) and shapes["images"][0] == shapes["depth"][0]  # dynamic N
    meta = {p.key: json.loads(p.value) for p in proto.metadata_props}
    assert meta["image_size"] == [64, 96] and meta["depth_range"] == [0.1, 80.0]
    assert meta["cameras"] == list(CAMERAS) and meta["project_version"] == PROJECT_VERSION
    assert not [f for f in os.listdir(os.path.dirname(out)) if f.startswith(".tmp-")]


def test_onnx_student_matches_torch_for_any_number_of_views(exported):
    ckpt, out, _ = exported
    student, _ = load_checkpoint(ckpt)
    runner = export.OnnxStudent(out)
    assert runner.cfg.image_size == (64, 96)
    for n in (1, 4):
        views = torch.rand(n, 3, 64, 96)
        depth = runner(views[None])["depth"]
        assert depth.shape == (1, n, 1, 64, 96)
        assert export.max_relative_deviation(depth[0], export.torch_depth(student, views)) < 1e-4
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, size + (3,), dtype=np.uint8) for size in [(45, 80), (100, 70)]]
    for ours, theirs in zip(runner.infer_images(images), student.for_inference().infer_images(images)):
        assert ours.shape == theirs.shape and ours.dtype == np.float32
        assert export.max_relative_deviation(ours, theirs) < 1e-4


def test_max_relative_deviation_is_relative():
    assert export.max_relative_deviation([2.0, 10.0], [2.0, 8.0]) == pytest.approx(0.25)
    assert export.max_relative_deviation([1.0], [1.0]) == 0.0


def test_infer_onnx_writes_what_the_checkpoint_writes(exported, tmp_path):
    ckpt, out, _ = exported
    src = tmp_path / "imgs"
    src.mkdir()
    rng = np.random.default_rng(1)
    for i, size in enumerate([(45, 80), (64, 96), (30, 120)]):
        Image.fromarray(rng.integers(0, 255, size + (3,), dtype=np.uint8)).save(src / f"im{i}.png")
    assert infer.main([str(src), "--checkpoint", ckpt, "--out", str(tmp_path / "torch")]) == 3
    assert infer.main([str(src), "--onnx", out, "--checkpoint", "nowhere.pt", "--out", str(tmp_path / "ort")]) == 3
    assert sorted(os.listdir(tmp_path / "torch")) == sorted(os.listdir(tmp_path / "ort"))
    for i in range(3):
        name = f"im{i}{infer.OUTPUT_SUFFIX}.npy"
        a, b = np.load(tmp_path / "torch" / name), np.load(tmp_path / "ort" / name)
        assert a.shape == b.shape and export.max_relative_deviation(b, a) < 1e-4


def test_errors_are_one_line_and_leave_nothing(exported, tmp_path, monkeypatch):
    ckpt, out, _ = exported
    with pytest.raises(InputError, match="no such checkpoint"):
        export.main(["--checkpoint", str(tmp_path / "none.pt"), "--out", str(tmp_path / "a.onnx")])
    (tmp_path / "file").write_text("")
    with pytest.raises(export.ExportError, match="cannot write it"):  # a folder that is a file
        export.main(["--checkpoint", ckpt, "--out", str(tmp_path / "file" / "a.onnx")])
    monkeypatch.setattr(export, "export_onnx", lambda student, path: shutil.copy(out, path))  # no second export
    monkeypatch.setattr(export, "max_relative_deviation", lambda *a: 0.5)
    with pytest.raises(export.ExportError, match="deviates from torch by 5.00e-01"):
        export.main(["--checkpoint", ckpt, "--out", str(tmp_path / "b.onnx")])

    def broken(*args, **kwargs):
        raise RuntimeError("unsupported operator\nmore detail")
    monkeypatch.undo()
    monkeypatch.setattr(torch.onnx, "export", broken)
    with pytest.raises(export.ExportError, match="ONNX export failed .RuntimeError: unsupported operator.;"):
        export.main(["--checkpoint", ckpt, "--out", str(tmp_path / "c.onnx")])
    assert sorted(os.listdir(tmp_path)) == ["file"]  # no output, no temporary file


def test_onnx_files_that_are_not_students_are_refused(tmp_path):
    with pytest.raises(export.ExportError, match="no such ONNX file"):
        export.OnnxStudent(str(tmp_path / "none.onnx"))
    (tmp_path / "junk.onnx").write_bytes(b"not a graph")
    with pytest.raises(export.ExportError, match="not a readable ONNX file"):
        export.OnnxStudent(str(tmp_path / "junk.onnx"))
    identity = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["images"], ["depth"])], "identity",
        [onnx.helper.make_tensor_value_info("images", onnx.TensorProto.FLOAT, ["n", 3, 4, 4])],
        [onnx.helper.make_tensor_value_info("depth", onnx.TensorProto.FLOAT, ["n", 3, 4, 4])]),
        opset_imports=[onnx.helper.make_opsetid("", 17)])
    onnx.save(identity, tmp_path / "identity.onnx")
    with pytest.raises(export.ExportError, match="no student metadata"):
        export.OnnxStudent(str(tmp_path / "identity.onnx"))


def test_export_cli_prints_one_line_for_a_missing_checkpoint(tmp_path):
    result = subprocess.run([sys.executable, "export.py", "--checkpoint", str(tmp_path / "none.pt"), "--out",
                             str(tmp_path / "a.onnx")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.strip().startswith("error: ") and len(result.stderr.strip().splitlines()) == 1
