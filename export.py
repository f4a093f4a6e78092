"""Deployment: the inference-form student as an ONNX file, checked against torch, and run by onnxruntime.

    python export.py --checkpoint outputs/demo/checkpoint.pt --out student.onnx [--data synthetic --sample 0]

Defines
- `DepthGraph`: the exported graph, views (N, 3, H, W) in [0, 1] -> metric depth (N, 1, H, W),
  Eqs. (1)-(5) of `Student.for_inference()` (BatchNorm folded), the number of views N dynamic;
- `export_onnx`: the graph to an ONNX file (opset ONNX_OPSET) with its metadata (training size,
  depth range, camera order, project version), `onnx_metadata` to read it back;
- `ort_session`: an onnxruntime CPU session with every graph optimisation and explicit threads;
- `OnnxStudent`: an exported file with the student's inference interface (`infer_images`), what
  `infer.py --onnx` and `benchmark.py speed` run, without building the torch model;
- the CLI: export, then run the file with onnxruntime on a real surround sample and compare its
  depth with the torch student's; above MAX_RELATIVE_DEVIATION nothing is written. With
  `--quantize int8` the checked fp32 file is quantized (quantize.py: QDQ, calibrated on the
  validation split), its depth deviation from torch reported, and its AbsRel (Eq. 18) on the test
  split compared with the fp32 student's; more than quantize.MAX_ABSREL_CHANGE apart, nothing is written.

    python export.py --checkpoint CKPT --out student-int8.onnx --quantize int8 [--calibration-samples 16]
"""
import argparse
import json
import os
import tempfile
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import quantize
from cli import PROJECT_VERSION, InputError, atomic_path, run_cli
from data import DATASETS, build_dataset, split_name
from model import Student, load_student
from rig import CAMERAS

ONNX_OPSET = 18  # >= 17 (LayerNormalization); what torch's exporter emits by default
MAX_RELATIVE_DEVIATION = 1e-3  # the largest |D_onnx - D_torch| / D_torch the check accepts
INPUT_NAME, OUTPUT_NAME = "images", "depth"
# int8 (--quantize int8; measured choices, README "Speed" and docs/DEPLOYMENT.md):
DEFAULT_CALIBRATION_SAMPLES = 16  # surround samples of the validation split (96 views; synthetic val has 32)
DEFAULT_CALIBRATION = "minmax"
DEFAULT_INT8_HEAD = "float-bins"  # the bin MLP quantized moves every bin center: 9 % mean depth deviation
DEFAULT_ACCURACY_SAMPLES = 64  # the whole synthetic test split


class ExportError(InputError):
    """An export that cannot be done or does not match torch; the one-line message names the file and the fix."""


class DepthGraph(nn.Module):
    """What the ONNX file computes: views (N, 3, H, W) in [0, 1] at the training size -> metric depth
    (N, 1, H, W) in meters, each view its own sample (as `Student.infer_images` runs them).

    With the default bilinear upsampling, Eq. (5) is evaluated as sum_k e_k c_k / sum_k e_k with
    e_k = exp(z_k - max_j z_j): the softmax of Eq. (4) written out, equal up to float rounding.
    onnxruntime runs a Softmax over the channel axis of an NCHW tensor through two transposes; on
    the 6 x 64 x 88 x 160 logits of a 352 x 640 surround frame it took 256 ms, this form 35 ms (2 CPU
    threads). The student's own depth path is then unused and the exporter drops it. A convex-
    upsampling student is exported with its own depth path.
    """

    def __init__(self, student: Student):
        super().__init__()
        self.student = student

    def forward(self, images):
        out = self.student(images[:, None])  # (N, 1, 3, H, W): N samples of one view each
        if self.student.upsample_head is not None:
            return out["depth"][:, 0]
        logits, centers = out["logits"][:, 0], out["centers"][:, 0]  # (N, K, h, w), (N, K)
        weights = torch.exp(logits - logits.amax(dim=1, keepdim=True))  # Eq. (4) before normalising
        depth = (weights * centers[:, :, None, None]).sum(1, keepdim=True) / weights.sum(1, keepdim=True)  # Eq. (5)
        return F.interpolate(depth, size=images.shape[-2:], mode="bilinear", align_corners=False)  # (N, 1, H, W)


def student_metadata(cfg):
    """The ONNX metadata of a student with config `cfg`: {key: JSON text}."""
    return {"image_size": json.dumps(list(cfg.image_size)), "depth_range": json.dumps([cfg.min_depth, cfg.max_depth]),
            "cameras": json.dumps(list(CAMERAS)), "project_version": json.dumps(PROJECT_VERSION),
            "io": json.dumps(f"{INPUT_NAME} (N, 3, H, W) float RGB in [0, 1] -> {OUTPUT_NAME} (N, 1, H, W) meters")}


def export_onnx(student, path):
    """Write `student.for_inference()` as DepthGraph to the ONNX file `path` (not atomic: the caller's
    job), opset ONNX_OPSET, the first axis dynamic, with `student_metadata`. Raises ExportError."""
    import onnx

    graph = DepthGraph(student.for_inference()).eval()
    example = torch.rand(len(CAMERAS), 3, *student.cfg.image_size)  # one surround frame
    try:
        torch.onnx.export(graph, (example,), path, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          opset_version=ONNX_OPSET, dynamo=True, external_data=False, verbose=False,
                          dynamic_shapes=({0: torch.export.Dim("views")},))
        proto = onnx.load(path)
        onnx.helper.set_model_props(proto, student_metadata(student.cfg))
        onnx.save(proto, path)
    except Exception as err:  # the exporter raises many kinds; the user gets one line
        raise ExportError(f"{path}: ONNX export failed ({err.__class__.__name__}: "
                          f"{(str(err).splitlines() or [''])[0][:160]}); check that onnx and onnxscript from "
                          "requirements.txt are installed") from None


def ort_session(path, threads=None):
    """An onnxruntime session on the CPU execution provider: every graph optimisation on
    (ORT_ENABLE_ALL), `threads` intra-op threads (default: torch's, so both runtimes get the same)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1  # one graph, run op after op
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def onnx_metadata(session):
    """The metadata of an exported student from its session -> {key: value}; ExportError if it has none."""
    props = session.get_modelmeta().custom_metadata_map
    if "image_size" not in props:
        raise ExportError("the ONNX file carries no student metadata (image_size); write it with export.py")
    return {key: json.loads(value) for key, value in props.items()}


class OnnxStudent:
    """An ONNX file written by export.py, run by onnxruntime on the CPU, with the inference interface
    of `Student`: `infer_images` / `infer_image` are Student's own methods, so the resize in (to the
    training size in the metadata) and out (to each image's size) are the same code as the torch
    path; only the network runs in onnxruntime. No torch model is built."""

    training = False  # what Student.infer_images saves and restores

    def __init__(self, path, threads=None):
        if not os.path.isfile(path):
            raise ExportError(f"{path}: no such ONNX file; write one with "
                              f"`python export.py --checkpoint CKPT --out {path}`")
        try:
            self.session = ort_session(path, threads)
        except Exception as err:  # onnxruntime's own error types: one line
            raise ExportError(f"{path}: not a readable ONNX file ({(str(err).splitlines() or [''])[0][:160]}); "
                              "write it again with export.py") from None
        self.metadata = onnx_metadata(self.session)
        self.cfg = SimpleNamespace(image_size=tuple(self.metadata["image_size"]))
        self.mean = torch.zeros(1)  # Student.infer_images puts its input on self.mean.device: the CPU

    def eval(self):
        """Nothing to switch: the graph is the inference form."""
        return self

    def train(self, mode=True):
        """Nothing to switch: the graph is the inference form."""
        return self

    def __call__(self, images):
        """images (B, N, 3, H, W) in [0, 1] at the training size -> {'depth': (B, N, 1, H, W) meters}."""
        views = np.ascontiguousarray(images.flatten(0, 1).float().cpu().numpy())  # (B*N, 3, H, W)
        depth = self.session.run([OUTPUT_NAME], {INPUT_NAME: views})[0]  # (B*N, 1, H, W)
        return {"depth": torch.from_numpy(depth).unflatten(0, tuple(images.shape[:2]))}

    infer_images = Student.infer_images
    infer_image = Student.infer_image


def max_relative_deviation(depth, reference):
    """max |depth - reference| / reference over all pixels (reference > 0, meters)."""
    depth, reference = np.asarray(depth, np.float64), np.asarray(reference, np.float64)
    return float(np.max(np.abs(depth - reference) / reference))


def torch_depth(student, views):
    """The torch student's depth of views (N, 3, H, W) in [0, 1], each its own sample -> (N, 1, H, W) meters."""
    with torch.inference_mode():
        return student.eval()(views[:, None])["depth"][:, 0].numpy()


def get_args(argv=None):
    """The command line; every flag has help."""
    p = argparse.ArgumentParser(description="Export a student checkpoint to ONNX and check it against torch.")
    p.add_argument("--checkpoint", default="outputs/demo/checkpoint.pt",
                   help="a checkpoint.pt written by train.py, a model folder (OUT/student: config.json + "
                        "model.safetensors) or a Hugging Face hub id owner/name")
    p.add_argument("--out", default="student.onnx", help="the ONNX file to write")
    p.add_argument("--data", default="synthetic", choices=DATASETS, help="dataset of the surround sample of the check")
    p.add_argument("--dataroot", default=None, help="root folder of --data (nuScenes: holds samples/, v1.0-*/)")
    p.add_argument("--version", default="v1.0-trainval", choices=["v1.0-trainval", "v1.0-mini"],
                   help="nuScenes version")
    p.add_argument("--sample", type=int, default=0, help="index of the surround sample in the test split")
    p.add_argument("--quantize", default="none", choices=quantize.QUANTIZE_CHOICES,
                   help="int8: write a statically quantized file (onnxruntime QDQ) for the CPU")
    p.add_argument("--calibration-samples", type=int, default=DEFAULT_CALIBRATION_SAMPLES,
                   help="int8: surround samples of the validation split the activation ranges are calibrated on")
    p.add_argument("--calibration", default=DEFAULT_CALIBRATION, choices=quantize.CALIBRATION_METHODS,
                   help="int8: how the activation ranges are chosen from the calibration samples")
    p.add_argument("--per-channel", action=argparse.BooleanOptionalAction, default=True,
                   help="int8: one weight scale per output channel (--no-per-channel: one per tensor)")
    p.add_argument("--int8-head", default=DEFAULT_INT8_HEAD, choices=quantize.HEAD_CHOICES,
                   help="int8: quantized, or float: the bin-logit conv, Eqs. (4)-(5) and the upsampling stay fp32; "
                        "float-bins: the bin MLP of Eqs. (2)-(3) too")
    p.add_argument("--accuracy-samples", type=int, default=DEFAULT_ACCURACY_SAMPLES,
                   help="int8: test samples on which AbsRel of int8 and fp32 is compared (0: skip the check)")
    args = p.parse_args(argv)
    if args.calibration_samples < 1 or args.accuracy_samples < 0:
        p.error("--calibration-samples must be >= 1 and --accuracy-samples >= 0")
    return args


def check_fp32(student, views, path, name):
    """Export `student` to `path` and compare onnxruntime's depth on `views` (N, 3, H, W) with torch's
    -> the max relative deviation; ExportError naming the file `name` above MAX_RELATIVE_DEVIATION (NaN too)."""
    export_onnx(student, path)
    deviation = max_relative_deviation(OnnxStudent(path)(views[None])["depth"][0], torch_depth(student, views))
    if not deviation <= MAX_RELATIVE_DEVIATION:
        raise ExportError(f"{name}: onnxruntime depth deviates from torch by {deviation:.2e} (max "
                          f"relative) > {MAX_RELATIVE_DEVIATION:g}; nothing was written, report the versions")
    return deviation


def export_int8(args, student, views, tmp):
    """--quantize int8: the checked fp32 export quantized into `tmp` (quantize.quantize_int8, calibrated on
    the validation split), its depth on `views` compared with torch, and its AbsRel with the fp32 student's
    on --accuracy-samples test samples -> {'deviation', 'fp32_deviation', 'accuracy'}; ExportError when
    the AbsRel differs by more than quantize.MAX_ABSREL_CHANGE (relative, either way)."""
    options = dict(image_size=student.cfg.image_size, dataroot=args.dataroot, version=args.version)
    val = build_dataset(args.data, split_name(args.data, args.version, "val"), **options)
    with tempfile.TemporaryDirectory() as folder:
        fp32_path = os.path.join(folder, "student-fp32.onnx")
        fp32_deviation = check_fp32(student, views, fp32_path, args.out)
        reader = quantize.CalibrationViews(val, range(min(args.calibration_samples, len(val))), INPUT_NAME)
        quantize.quantize_int8(fp32_path, tmp, reader, args.per_channel, args.calibration, args.int8_head)
    runner = OnnxStudent(tmp)
    result = {"deviation": quantize.relative_deviation(runner(views[None])["depth"][0], torch_depth(student, views)),
              "fp32_deviation": fp32_deviation, "accuracy": None}
    if args.accuracy_samples:
        test = build_dataset(args.data, split_name(args.data, args.version, "test"), **options)
        test = torch.utils.data.Subset(test, range(min(args.accuracy_samples, len(test))))
        result["accuracy"] = quantize.compare_accuracy(student, runner, test, (student.cfg.min_depth,
                                                                               student.cfg.max_depth))
        fp32, int8 = (result["accuracy"][k]["all"]["sparse"]["abs_rel"] for k in ("fp32", "onnx"))
        if not abs(int8 / fp32 - 1) <= quantize.MAX_ABSREL_CHANGE:  # either way: another model, not the student
            raise ExportError(f"{args.out}: int8 sparse AbsRel {int8:.4f} is {100 * (int8 / fp32 - 1):+.1f} % from the "
                              f"fp32 student's {fp32:.4f} (limit {100 * quantize.MAX_ABSREL_CHANGE:g} % either way); "
                              "nothing was written, try --calibration percentile or more --calibration-samples")
    return result


def print_int8(args, result, num_views):
    """The int8 report: QDQ nodes, depth deviation from torch, AbsRel of fp32 and int8."""
    q, dq = quantize.quantized_nodes(args.out)
    dev = result["deviation"]
    print(f"int8 QDQ ({q} QuantizeLinear, {dq} DequantizeLinear), calibrated on {args.calibration_samples} "
          f"{args.data} validation samples ({args.calibration}, per-channel {args.per_channel}, head {args.int8_head})")
    print(f"int8 vs torch fp32 on {args.data} test sample {args.sample} ({num_views} views): relative depth deviation "
          f"max {dev['max']:.2e}, mean {dev['mean']:.2e}, p{quantize.DEVIATION_PERCENTILE} "
          f"{dev[f'p{quantize.DEVIATION_PERCENTILE}']:.2e} (the fp32 file: max {result['fp32_deviation']:.2e})")
    if result["accuracy"] is None:
        print("AbsRel not compared (--accuracy-samples 0)")
        return
    for kind in result["accuracy"]["fp32"]["all"]:
        fp32, int8 = (result["accuracy"][k]["all"][kind]["abs_rel"] for k in ("fp32", "onnx"))
        print(f"{kind} AbsRel on {result['accuracy']['fp32']['num_samples']} {args.data} test samples: fp32 (torch) "
              f"{fp32:.4f}, int8 {int8:.4f} ({100 * (int8 / fp32 - 1):+.2f} %)")


def main(argv=None):
    """Export, check with onnxruntime, write atomically; returns the max relative deviation (with --quantize
    int8: the dict of `export_int8`)."""
    args = get_args(argv)
    student, _ = load_student(args.checkpoint)
    split = split_name(args.data, args.version, "test")
    dataset = build_dataset(args.data, split, image_size=student.cfg.image_size, dataroot=args.dataroot,
                            version=args.version)
    views = dataset[args.sample]["images"]  # (N, 3, H, W): a real input for the check
    if views.dtype == torch.uint8:
        views = views.float() / quantize.UINT8_MAX
    try:
        with atomic_path(args.out) as tmp:
            if args.quantize == "int8":
                result = export_int8(args, student, views, tmp)
            else:
                result = check_fp32(student, views, tmp, args.out)
    except OSError as err:
        raise ExportError(f"{args.out}: cannot write it ({err.strerror or err}); "
                          "pass --out in a writable folder") from None
    h, w = student.cfg.image_size
    print(f"{args.out}: opset {ONNX_OPSET}, N x 3 x {h} x {w} -> N x 1 x {h} x {w} meters, "
          f"{os.path.getsize(args.out) / 2**20:.1f} MB")
    if args.quantize == "int8":
        print_int8(args, result, len(views))
    else:
        print(f"onnxruntime vs torch on {args.data} {split} sample {args.sample} ({len(views)} views): "
              f"max relative deviation {result:.2e} (limit {MAX_RELATIVE_DEVIATION:g})")
    return result


if __name__ == "__main__":
    run_cli(main)
