"""int8 on the CPU: the exported student (export.py) statically quantized by onnxruntime, QDQ format.

    python export.py --checkpoint CKPT --out student-int8.onnx --quantize int8   # the CLI lives in export.py

Defines
- `CalibrationViews`: onnxruntime's calibration reader over surround samples of a dataset (the
  validation split): one call -> the six views (6, 3, H, W) float32 in [0, 1] of one sample;
- `head_nodes`: the nodes of the depth head of an exported graph (the bin-logit conv, Eqs. (4)-(5)
  and the bilinear upsampling; with `bins`, also the bin MLP of Eqs. (2)-(3)), which may stay float;
- `quantize_int8`: an fp32 ONNX file -> an int8 QDQ file (weights int8, per channel or per tensor;
  activations uint8), calibrated with MinMax, Entropy or Percentile, its metadata kept and marked;
- `quantized_nodes`: how many QuantizeLinear / DequantizeLinear nodes a file holds;
- `relative_deviation`: max, mean and 99th percentile of |D - D_ref| / D_ref;
- `compare_accuracy`: Eq. (18) of the fp32 torch student and of an ONNX file on the same samples.
The int8 graph computes the same function as the fp32 one (export.DepthGraph) with convolutions and
matrix products in 8 bits; what that costs in depth and in AbsRel is measured, not assumed
(README, "Speed"; docs/DEPLOYMENT.md).
"""
import json
import os

import numpy as np
import torch

from data import UINT8_MAX

QUANTIZE_CHOICES = ("none", "int8")
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")  # onnxruntime's CalibrationMethod names, lower case
HEAD_CHOICES = ("quantized", "float", "float-bins")  # --int8-head: what of the depth head stays float
MAX_ABSREL_CHANGE = 0.01  # the int8 file is refused when its AbsRel is more than 1 % (relative) from the fp32 one
DEVIATION_PERCENTILE = 99  # besides max and mean, the 99th percentile of the per-pixel relative deviation
LOGIT_HEAD_WEIGHT = "logit_head.weight"  # the initializer of the bin-logit conv of Eq. (4) (`Student.logit_head`)
POOL_OP = "ReduceMean"  # the global average pooling of Eq. (2), where the bin MLP starts


class CalibrationViews:
    """onnxruntime CalibrationDataReader over `indices` of `dataset`: each get_next() -> {input_name:
    the sample's views (N, 3, H, W) float32 in [0, 1]} (uint8 images divided by 255), then None."""

    def __init__(self, dataset, indices, input_name):
        self.dataset, self.indices, self.input_name = dataset, list(indices), input_name
        self.position = 0

    def get_next(self):
        """The next sample's views as the graph's input, or None after the last."""
        if self.position >= len(self.indices):
            return None
        images = self.dataset[self.indices[self.position]]["images"]  # (N, 3, H, W)
        self.position += 1
        views = images.float() / UINT8_MAX if images.dtype == torch.uint8 else images.float()
        return {self.input_name: np.ascontiguousarray(views.numpy())}

    def rewind(self):
        """Start again from the first sample (onnxruntime may read the data twice)."""
        self.position = 0


def downstream(graph, tensors):
    """Names of the nodes of `graph` that read any of `tensors`, directly or through other nodes."""
    reached, names, frontier = set(tensors), set(), True
    while frontier:
        frontier = False
        for node in graph.node:
            if node.name not in names and reached.intersection(node.input):
                names.add(node.name)
                reached.update(node.output)
                frontier = True
    return names


def head_nodes(proto, bins=False):
    """The nodes of the depth head of an exported student (ModelProto): the bin-logit conv of
    Eq. (4) and every node after it (Eq. (5) and the upsampling); with bins=True also the global
    pooling of Eq. (2) and everything after it (the bin MLP, Eq. (3)). -> set of node names."""
    convs = [n for n in proto.graph.node if n.op_type == "Conv" and any(i.endswith(LOGIT_HEAD_WEIGHT) for i in n.input)]
    if len(convs) != 1:
        raise ValueError(f"expected one Conv reading *{LOGIT_HEAD_WEIGHT}, found {len(convs)}: not a student graph")
    names = {convs[0].name} | downstream(proto.graph, convs[0].output)
    if bins:
        pools = [n for n in proto.graph.node if n.op_type == POOL_OP]
        names |= {n.name for n in pools} | downstream(proto.graph, [o for n in pools for o in n.output])
    return names


def quantize_int8(fp32_path, out_path, reader, per_channel=True, method="minmax", head="quantized"):
    """Quantize the fp32 ONNX file `fp32_path` into `out_path` (QDQ: QuantizeLinear/DequantizeLinear
    pairs around each quantized op, which onnxruntime fuses into int8 kernels): weights int8
    (per output channel with per_channel), activations uint8 (onnxruntime's U8S8, its fast form on
    x86), scales from `reader` (a `CalibrationViews`) by `method` (CALIBRATION_METHODS); `head`
    (HEAD_CHOICES): 'float' keeps `head_nodes` in fp32, 'float-bins' also the bin MLP. The file's
    metadata is kept, with 'precision' and 'quantization' added. Not atomic: the caller's job."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = out_path + ".prep.onnx"
    try:
        quant_pre_process(fp32_path, prepared, skip_symbolic_shape=True)  # shapes, fusions first (onnxruntime's advice)
        proto = onnx.load(prepared)  # node names after the fusions: what nodes_to_exclude must name
        excluded = sorted(head_nodes(proto, bins=head == "float-bins")) if head != "quantized" else []
        quantize_static(prepared, out_path, reader, quant_format=QuantFormat.QDQ, per_channel=per_channel,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_exclude=excluded,
                        calibrate_method=getattr(CalibrationMethod, {"minmax": "MinMax"}.get(method, method.title())))
    finally:
        if os.path.exists(prepared):
            os.remove(prepared)
    quantized = onnx.load(out_path)
    props = {p.key: p.value for p in onnx.load(fp32_path).metadata_props}
    props["precision"] = json.dumps("int8")
    props["quantization"] = json.dumps({"format": "QDQ", "weights": "int8", "activations": "uint8",
                                        "per_channel": per_channel, "calibration": method, "head": head,
                                        "float_nodes": len(excluded)})
    onnx.helper.set_model_props(quantized, props)
    onnx.save(quantized, out_path)


def quantized_nodes(path):
    """(QuantizeLinear count, DequantizeLinear count) of the ONNX file `path`."""
    import onnx

    ops = [n.op_type for n in onnx.load(path).graph.node]
    return ops.count("QuantizeLinear"), ops.count("DequantizeLinear")


def relative_deviation(depth, reference):
    """|depth - reference| / reference over all pixels (reference > 0, meters) -> {'max', 'mean', 'p99'}."""
    rel = np.abs(np.asarray(depth, np.float64) - np.asarray(reference, np.float64)) / np.asarray(reference, np.float64)
    return {"max": float(rel.max()), "mean": float(rel.mean()), f"p{DEVIATION_PERCENTILE}":
            float(np.percentile(rel, DEVIATION_PERCENTILE))}


def compare_accuracy(student, runner, dataset, depth_range):
    """Eq. (18) on `dataset` (sparse and, where there is one, dense ground truth, at the input size) of
    the fp32 torch student and of `runner` (an export.OnnxStudent) -> {'fp32': results, 'onnx': results},
    each as `evaluate.evaluate_predictions` returns it."""
    from evaluate import evaluate_predictions

    cpu = torch.device("cpu")
    fp32 = evaluate_predictions(lambda batch: student(batch["images"])["depth"], dataset, cpu, progress=False,
                                depth_range=depth_range)
    onnx = evaluate_predictions(lambda batch: runner(batch["images"])["depth"], dataset, cpu, progress=False,
                                depth_range=depth_range)
    return {"fp32": fp32, "onnx": onnx}
