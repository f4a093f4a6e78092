"""The deployment path on one device, end to end: uint8 camera frames in host memory -> metric depth
(Eq. 5) at the frames' resolution in host memory, every step between them on the device.

Stages (STAGES), run in order on one stream:
- upload: the frames (M, H0, W0, 3) uint8, as decoded, from pinned host memory into a device
  buffer, non-blocking (4x fewer bytes than float);
- preprocess: on the device, uint8 -> float in [0, 1], channels first, and the network's own
  resize (`prepare`; the student: bilinear, antialiased, to its training size, as
  `Student.infer_images` does on the host);
- network: the network on those views (the student's inference form: BatchNorm folded,
  channels_last), under autocast `precision` (bf16, fp16, or fp32) -> depth (M, 1, h, w) meters;
- resize out: depth -> (M, H0, W0) float32, bilinear, on the device;
- download: one copy into pinned host memory, then the stream is synchronised.
On CUDA the three device stages are each captured once in a CUDA graph (`torch.cuda.CUDAGraph`)
and replayed: one launch per stage instead of one per kernel (the student is launch-bound: README
"Speed"). On the CPU, or where a capture fails, the same functions run eagerly; `graphed` says
which and `fallback` why. Defines `DevicePipeline` (any prepare + network), `student_pipeline`,
and `PipelineStudent`, the student with `infer_images` on this path, what `infer.py` runs on CUDA.
"""
import contextlib

import numpy as np
import torch
import torch.nn.functional as F

STAGES = ("upload", "preprocess", "network", "resize out", "download")
START = "start"  # the mark before the first stage
PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}  # autocast dtype (None: off)
WARMUP_BEFORE_CAPTURE = 3  # eager runs on the side stream first: cuDNN picks its algorithms, the allocator settles
UINT8_MAX = 255.0


def to_views(frames):
    """Frames (M, H0, W0, 3) uint8 on any device -> views (M, 3, H0, W0) float32 in [0, 1]."""
    return frames.permute(0, 3, 1, 2).float().div_(UINT8_MAX)


def replayer(graph, out):
    """A stage that replays the captured `graph` and returns its static output `out` (its input is
    the static buffer the graph was captured on, so the argument is ignored)."""
    def replay(_):
        graph.replay()
        return out
    return replay


class DevicePipeline:
    """uint8 frames of one fixed shape (M, H0, W0, 3) in host memory -> depth (M, H0, W0) float32 meters
    in host memory, through STAGES on `device`.

    prepare: views (M, 3, H0, W0) float in [0, 1] on the device -> the network's input;
    network: that input -> depth (M, 1, h, w) meters (any float dtype);
    precision: a key of PRECISIONS, the autocast of the network stage; graph: capture the device
    stages in CUDA graphs (CUDA only). Call `run()` after writing the frames into `host_in` (a camera
    driver or decoder can write there directly), or `run(frames)` to copy them in first (a host copy).
    The depth returned is the pinned buffer `host_out`, valid until the next call.
    """

    def __init__(self, prepare, network, frame_shape, device, precision="bf16", graph=True):
        self.device, self.precision = torch.device(device), precision
        self.prepare, self.network = prepare, network
        cuda = self.device.type == "cuda"
        m, h0, w0, _ = frame_shape
        self.host_in = torch.empty(frame_shape, dtype=torch.uint8, pin_memory=cuda)
        self.host_out = torch.empty((m, h0, w0), dtype=torch.float32, pin_memory=cuda)
        self.frames = torch.empty(frame_shape, dtype=torch.uint8, device=self.device)
        self.stream = torch.cuda.Stream(self.device) if cuda else None
        self.stages = {"preprocess": self._preprocess, "network": self._network, "resize out": self._resize_out}
        self.graphed, self.fallback = False, "not CUDA" if not cuda else ("graph=False" if not graph else None)
        if self.fallback is None:
            try:
                with self._on_stream():
                    self.stages = self._capture()
                self.graphed = True
            except RuntimeError as err:  # a model that cannot be captured runs eagerly, and says why
                self.fallback = f"capture failed: {(str(err).splitlines() or [''])[0][:120]}"

    def _on_stream(self):
        """Context: the pipeline's stream current (CUDA), nothing elsewhere."""
        return torch.cuda.stream(self.stream) if self.stream is not None else contextlib.nullcontext()

    def _preprocess(self, frames):
        return self.prepare(to_views(frames))

    def _network(self, views):
        dtype = PRECISIONS[self.precision]
        autocast = (torch.autocast(self.device.type, dtype=dtype, cache_enabled=False)  # no cached casts in a graph
                    if dtype else contextlib.nullcontext())
        with torch.inference_mode(), autocast:
            return self.network(views)

    def _resize_out(self, depth):
        size = tuple(self.frames.shape[1:3])
        return F.interpolate(depth.float(), size=size, mode="bilinear", align_corners=False)[:, 0]  # (M, H0, W0)

    def _capture(self):
        """Capture preprocess, network and resize out, each in its own CUDA graph, on static buffers
        -> {stage: fn} that replays the graph and returns its static output."""
        replays, x = {}, self.frames
        for name, fn in list(self.stages.items()):
            with torch.inference_mode():
                for _ in range(WARMUP_BEFORE_CAPTURE):
                    fn(x)
                self.stream.synchronize()
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, stream=self.stream):
                    out = fn(x)
            replays[name] = replayer(graph, out)
            x = out
        return replays

    def run(self, frames=None, mark=None):
        """frames: (M, H0, W0, 3) uint8 array or tensor to copy into `host_in` first (None: it is there)
        -> depth (M, H0, W0) float32 numpy, meters (the pinned `host_out`: copy it to keep it).
        mark(stage): called with START, then after each stage of STAGES is issued, on the pipeline's stream
        (a stage clock of benchmarks/stages.py)."""
        mark = mark or (lambda stage: None)
        if frames is not None:
            self.host_in.copy_(torch.as_tensor(np.asarray(frames)))
        with self._on_stream(), torch.inference_mode():
            mark(START)
            self.frames.copy_(self.host_in, non_blocking=True)
            mark(STAGES[0])
            x = self.frames
            for name in STAGES[1:4]:
                x = self.stages[name](x)
                mark(name)
            self.host_out.copy_(x, non_blocking=True)
            if self.stream is not None:
                self.stream.synchronize()
            mark(STAGES[4])
        return self.host_out.numpy()


def student_pipeline(student, frame_shape, device, precision="bf16", graph=True):
    """A DevicePipeline of `student` (a model.Student; its inference form is built here): frames of
    `frame_shape` (M, H0, W0, 3) -> depth, each view its own sample as in `Student.infer_images`."""
    fast = student.for_inference().to(device)
    size = tuple(fast.cfg.image_size)

    def prepare(views):  # as Student.infer_images: bilinear, antialiased when shrinking
        x = F.interpolate(views, size=size, mode="bilinear", align_corners=False, antialias=True)
        return x.contiguous(memory_format=torch.channels_last)

    def network(x):
        return fast(x[:, None])["depth"][:, 0]  # (M, 1, H, W)

    return DevicePipeline(prepare, network, frame_shape, device, precision, graph)


class PipelineStudent:
    """A Student with `infer_images` on the device pipeline: one DevicePipeline (graphs captured once)
    per shape of batch met, images of one size batched together. `cfg` is the student's."""

    def __init__(self, student, device, precision="bf16", graph=True):
        self.student, self.device, self.precision, self.graph = student.eval(), torch.device(device), precision, graph
        self.cfg = student.cfg
        self.pipelines = {}  # (M, H0, W0, 3) -> DevicePipeline

    def infer_images(self, images):
        """Images, each (H0, W0, 3) uint8 array or PIL image, any sizes -> list of depth maps (H0, W0)
        float32 meters, as `Student.infer_images` returns them."""
        arrays = [np.asarray(image, dtype=np.uint8) for image in images]
        depths = [None] * len(arrays)
        for shape in dict.fromkeys(a.shape for a in arrays):
            index = [i for i, a in enumerate(arrays) if a.shape == shape]
            key = (len(index),) + shape
            if key not in self.pipelines:
                self.pipelines[key] = student_pipeline(self.student, key, self.device, self.precision, self.graph)
            out = self.pipelines[key].run(np.stack([arrays[i] for i in index]))
            for k, i in enumerate(index):
                depths[i] = out[k].copy()
        return depths

    def infer_image(self, image):
        """One image (H0, W0, 3) uint8 -> depth (H0, W0) float32 meters."""
        return self.infer_images([image])[0]
