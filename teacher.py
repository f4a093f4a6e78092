"""The frozen teacher: relative inverse depth r(p) and backbone features for Eqs. (6)-(7) and (12)-(14).

The teacher of the README's method section is Depth Anything V2 (DA-V2): it predicts a relative
inverse depth r ~ a / D + b, right only up to an unknown per-image scale a > 0 and shift b.
`losses.teacher_bin_probs` turns r into the scale-invariant bin probabilities P^T of
Eqs. (6)-(7); the teacher's last-layer features are the tokens of the view-relational KD,
Eqs. (12)-(14). The teacher is frozen: never trained, always run under `torch.inference_mode()`.

Defines
- `load_teacher`: a DA-V2 checkpoint (Hugging Face id or local folder) -> `DepthAnythingTeacher`;
  raises `TeacherUnavailable` (one line, no hub traceback) when offline or weights are missing.
- `build_random_teacher`: the same architectures with random weights, for timing without weights.
- `EmulatedTeacher`: the synthetic world's default teacher, a relative-depth model's output made from its dense depth.
- `build_teacher`: the name given to `--teacher` -> one of the above; `teacher_name`: its `name`
  without building it (the key of the teacher cache, `cache.py`).
Every teacher is called as `teacher(images, depth_dense=None)` with images (M, 3, H, W) float in
[0, 1] and returns {'disparity': (M, 1, H, W) float32 relative inverse depth, 'features':
(M, C, h, w) float32}. Its `name` identifies its outputs (the key of the teacher cache).
"""
import functools
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

import emulated
import losses
from checkpoint import HUB_ID, hub_offline  # the hub's id form and offline flag, shared with the student
from cli import InputError
from model import IMAGENET_MEAN, IMAGENET_STD  # the same statistics DA-V2 normalises with

# Pre-processing of DA-V2, from the `preprocessor_config.json` of the depth-anything/*-hf
# checkpoints (DPTImageProcessor): ImageNet mean/std, bicubic resampling (resample=3), sides
# rounded to multiples of the patch size (ensure_multiple_of=14), size 518.
DEFAULT_LONG_SIDE = 518  # 37 patches of 14 px: the DA-V2 training resolution
DINOV2_PATCH = 14  # patch size of every DINOv2 ViT-*/14 backbone, in pixels

# Hugging Face ids of the relative-depth DA-V2 checkpoints. Licences (DA-V2 README, LICENSE):
# Small is Apache-2.0; Base and Large are CC-BY-NC-4.0 (non-commercial).
TEACHER_IDS = {size: f"depth-anything/Depth-Anything-V2-{size.title()}-hf" for size in ("small", "base", "large")}
# Architectures of the TEACHER_IDS checkpoints, from their config.json (as DA-V2's run.py);
# out_indices: 1-based DINOv2 blocks fed to the DPT neck (stage 0 is the patch embedding).
TEACHER_ARCHS = {
    "small": dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, out_indices=(3, 6, 9, 12),
                  neck_hidden_sizes=(48, 96, 192, 384), fusion_hidden_size=64),
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, out_indices=(3, 6, 9, 12),
                 neck_hidden_sizes=(96, 192, 384, 768), fusion_hidden_size=128),
    "large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, out_indices=(5, 12, 18, 24),
                  neck_hidden_sizes=(256, 512, 1024, 1024), fusion_hidden_size=256),
}
DINOV2_IMAGE_SIZE = 518  # image_size of the DA-V2 backbones: a 37 x 37 grid of position embeddings

# EmulatedTeacher (its errors and their amounts are in emulated.py):
EMULATED_NUM_BINS = 64  # K of its P^T feature maps (StudentConfig's default K; Eq. 13 lets them differ)
EMULATED_FEATURES_GRID = (12, 20)  # (h, w) of its features: stride 8 at the default 96 x 160 images


class TeacherUnavailable(InputError):
    """The foundation-model teacher cannot be loaded (offline, not cached, or no weights)."""


class FrozenTeacher(nn.Module):
    """A teacher that stays frozen: no parameter requires grad and `.train()` keeps it in eval."""

    def __init__(self):
        super().__init__()
        self.eval()

    def train(self, mode=True):
        """Ignore `mode`: a frozen teacher is never in training mode (no dropout, fixed norms)."""
        return super().train(False)


def teacher_input_size(height, width, long_side=DEFAULT_LONG_SIDE, patch=DINOV2_PATCH):
    """(H, W) of the teacher input: long side `long_side`, both sides multiples of `patch`.

    Both sides are scaled by one factor and rounded to a multiple of `patch` (ensure_multiple_of).
    DA-V2's pipeline brings the SHORT side to 518 (1600 x 900 -> 924 x 518); we fix the long side
    (-> 518 x 294): ~3x fewer tokens per view, less detail; raise `long_side` to get it back.
    """
    scale = long_side / max(height, width)
    return tuple(max(patch, round(side * scale / patch) * patch) for side in (height, width))


def preprocess(images, size):
    """DA-V2 input from images (M, 3, H, W) float in [0, 1] -> (M, 3, *size), normalised.

    Bicubic resampling, as the DA-V2 checkpoints were trained and are served (cv2.INTER_CUBIC in
    DA-V2, PIL/torchvision BICUBIC in the Hugging Face processor); antialiased when shrinking, as
    the processor's torchvision backend does. The processors resample uint8 images, which clips
    bicubic overshoot, hence the clamp to [0, 1]. Then the ImageNet mean/std.
    """
    x = F.interpolate(images.float(), size=size, mode="bicubic", align_corners=False, antialias=True)
    mean, std = imagenet_stats(x.device)
    return (x.clamp(0.0, 1.0) - mean) / std  # (M, 3, h, w)


@functools.lru_cache(maxsize=None)
def imagenet_stats(device):
    """(mean, std) of IMAGENET_MEAN / IMAGENET_STD as (1, 3, 1, 1) tensors on `device`, made once per
    device: a later call copies nothing to the device (so `preprocess` can be captured in a CUDA graph)."""
    return (torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1),
            torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1))


class DepthAnythingTeacher(FrozenTeacher):
    """Frozen DA-V2 (transformers `DepthAnythingForDepthEstimation`): r(p) and last-layer features.

    model: a relative-depth DepthAnythingForDepthEstimation; name: the cache key of its outputs;
    long_side: the long side of the teacher input in pixels (rounded to a multiple of the patch).
    """

    def __init__(self, model, name, long_side=DEFAULT_LONG_SIDE):
        super().__init__()
        if getattr(model.config, "depth_estimation_type", "relative") != "relative":
            # Metric DA-V2 heads output depth in meters, not the inverse depth Eq. (6) expects.
            raise ValueError(f"{name}: a relative Depth Anything V2 checkpoint is needed, not a metric one")
        self.model = model.eval().requires_grad_(False)
        self.name = name
        self.long_side = long_side
        self.patch = model.config.patch_size
        self.feature_channels = model.config.backbone_config.hidden_size  # C_T of its 'features'

    def forward(self, images, depth_dense=None):
        """images (M, 3, H, W) float in [0, 1] -> {'disparity' (M, 1, H, W), 'features' (M, C, h, w)}.

        depth_dense is ignored (the signature is shared with EmulatedTeacher). 'disparity' is
        r(p) of Eq. (6), relative inverse depth (large = near), resized back to (H, W).
        'features' are the backbone's last-layer patch tokens on the (h, w) = input // 14 grid.
        Both are float32 ordinary tensors that do not require grad.
        """
        m, _, height, width = images.shape
        size = teacher_input_size(height, width, self.long_side, self.patch)
        gh, gw = size[0] // self.patch, size[1] // self.patch
        with torch.inference_mode():
            x = preprocess(images, size).to(self.model.dtype)  # (M, 3, h*14, w*14)
            out = self.model(pixel_values=x, output_hidden_states=True)
            # Bilinear back to (H, W): no overshoot (r stays >= 0, sky stays the minimum), and
            # align_corners=False inverts the input resize (half-pixel centers, as data.py).
            disparity = F.interpolate(out.predicted_depth.unsqueeze(1).float(), size=(height, width),
                                      mode="bilinear", align_corners=False)  # (M, 1, H, W)
            # Features: hidden_states[-1], the LAST DINOv2 block, with the backbone's final
            # LayerNorm that it applies to every map it hands the DPT neck (apply_layernorm=True).
            tokens = out.hidden_states[-1]  # (M, prefix + gh*gw, C)
            if getattr(self.model.config.backbone_config, "apply_layernorm", True):
                tokens = self.model.backbone.layernorm(tokens)
            patches = tokens[:, tokens.shape[1] - gh * gw:]  # drop CLS (and registers): (M, gh*gw, C)
            features = patches.transpose(1, 2).reshape(m, -1, gh, gw).float()  # (M, C, gh, gw)
        # Clones made outside inference mode are ordinary tensors the losses may use with autograd.
        return {"disparity": disparity.clone(), "features": features.clone()}


def load_teacher(name_or_path, device="cpu", dtype=None, long_side=DEFAULT_LONG_SIDE):
    """A frozen DA-V2 teacher from a Hugging Face id, a size name ('small', ...) or a local folder.

    dtype: e.g. torch.float16 for the weights (None: as saved). With HF_HUB_OFFLINE set the
    network is never tried. Raises TeacherUnavailable (one line) when it cannot be loaded.
    """
    from transformers import AutoModelForDepthEstimation

    source = TEACHER_IDS.get(name_or_path, str(name_or_path))
    local = os.path.isdir(os.path.expanduser(source))
    source = os.path.expanduser(source) if local else source
    offline = hub_offline()
    try:
        model = AutoModelForDepthEstimation.from_pretrained(  # safetensors only: loading runs no code from a file
            source, local_files_only=local or offline, use_safetensors=True,
            **({} if dtype is None else {"dtype": dtype}))
    except OSError:  # hub errors, offline mode, missing folder or weights: all are OSErrors
        if local:
            reason = "the folder holds no Depth Anything config and model.safetensors weights"
        elif not HUB_ID.match(source):
            reason = "no such folder"
        elif offline:
            reason = "HF_HUB_OFFLINE is set and it is not in the Hugging Face cache"
        else:
            reason = "it could not be downloaded (no internet?)"
        raise TeacherUnavailable(
            f"teacher {source!r} unavailable: {reason}. Pass a local folder instead, e.g. --teacher "
            f"/path/to/Depth-Anything-V2-Small-hf (made by `hf download {TEACHER_IDS['small']} --local-dir "
            f"/path/to/Depth-Anything-V2-Small-hf` or by save_pretrained)") from None
    name = teacher_name(source, long_side)  # cache key: checkpoint and size
    if dtype not in (None, torch.float32, "float32"):
        name += "-" + str(dtype).replace("torch.", "")
    return DepthAnythingTeacher(model, name, long_side).to(device)


def build_random_teacher(name, device="cpu", long_side=DEFAULT_LONG_SIDE, seed=0):
    """DA-V2 'small', 'base' or 'large' with random weights (seeded): the real cost, no weights needed."""
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation

    arch = TEACHER_ARCHS[name]
    backbone = dict(model_type="dinov2", hidden_size=arch["hidden_size"],
                    num_hidden_layers=arch["num_hidden_layers"],
                    num_attention_heads=arch["num_attention_heads"],
                    out_indices=list(arch["out_indices"]),
                    patch_size=DINOV2_PATCH, image_size=DINOV2_IMAGE_SIZE, reshape_hidden_states=False)
    config = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=arch["hidden_size"],
                                 patch_size=DINOV2_PATCH, neck_hidden_sizes=list(arch["neck_hidden_sizes"]),
                                 fusion_hidden_size=arch["fusion_hidden_size"])
    with torch.random.fork_rng(devices=[]):  # leave the caller's random stream untouched
        torch.manual_seed(seed)
        model = DepthAnythingForDepthEstimation(config)
    return DepthAnythingTeacher(model, f"random-{name}@{long_side}", long_side).to(device)


class EmulatedTeacher(FrozenTeacher):
    """A stand-in for a relative-depth foundation model, made from the dense synthetic depth.

    Its disparity is `emulated.emulated_disparity`: inverse depth with blurred edges, a
    low-frequency warp, per-object order errors and a compressed far range, all scaled by
    `strength` (1: calibrated to Depth Anything Small's zero-shot error, see emulated.py), then
    a random per-image scale a > 0 and shift b; sky (depth 0) at exactly the lowest disparity b.
    Its features are its own P^T maps (Eq. 7) average-pooled to `features_grid`: the tokens of
    Eqs. (12)-(14) for a teacher without a backbone (the README's "Where a teacher has no
    features"). The randomness is seeded by each depth map's bytes, so the same map gives the
    same output whatever the batch, and a cached run equals an uncached one.
    """

    def __init__(self, strength=1.0, features_grid=EMULATED_FEATURES_GRID, num_bins=EMULATED_NUM_BINS,
                 blur_sigma=emulated.EMULATED_BLUR_SIGMA):
        super().__init__()
        if not 0.0 <= strength * emulated.EMULATED_WARP < 1.0:
            raise ValueError(f"strength must be in [0, {1.0 / emulated.EMULATED_WARP:g}) so that 1 + e > 0")
        self.strength = strength
        self.features_grid = tuple(features_grid)
        self.num_bins = num_bins
        self.feature_channels = num_bins  # C_T of its 'features': pooled P^T
        self.blur_sigma = blur_sigma
        gh, gw = self.features_grid
        # "emulated2": the error model with (c) and (d); a new name keeps old caches apart.
        self.name = f"emulated2-s{strength:g}-blur{blur_sigma:g}-k{num_bins}-g{gh}x{gw}"

    def forward(self, images, depth_dense=None):
        """images (M, 3, H, W) (unused), depth_dense (M, 1, H, W) meters, 0 for sky ->
        {'disparity' (M, 1, H, W), 'features' (M, K, gh, gw) pooled P^T of Eqs. (6)-(7)}."""
        if depth_dense is None:
            raise ValueError("EmulatedTeacher needs depth_dense (the synthetic world's dense depth)")
        with torch.inference_mode():
            depth = depth_dense.float()
            segments = emulated.depth_segments(depth)  # (M, 1, H, W): each map on its own
            # One image at a time: each draws from its own seed, and P^T (K x H x W) stays small.
            disparity = torch.cat([emulated.emulated_disparity(depth[i:i + 1], segments[i:i + 1], self.strength,
                                                                self.blur_sigma) for i in range(depth.shape[0])])
            features = torch.cat([
                F.adaptive_avg_pool2d(losses.teacher_bin_probs(disparity[i:i + 1], self.num_bins),
                                      self.features_grid)  # (1, K, gh, gw)
                for i in range(depth.shape[0])])
        return {"disparity": disparity.clone(), "features": features.clone()}  # ordinary tensors


def default_teacher(data):
    """The teacher `--teacher auto` means on dataset `data`: emulated on the synthetic world (no
    weights there), Depth Anything V2 Small on real data."""
    return "emulated" if data == "synthetic" else TEACHER_IDS["small"]


def teacher_name(name, long_side=DEFAULT_LONG_SIDE):
    """The `name` of the teacher `build_teacher(name)` builds, without loading any weights."""
    if name == "emulated" or name.startswith("emulated:"):
        return build_teacher(name).name  # no weights: cheap
    if name.startswith("random-") and name[len("random-"):] in TEACHER_ARCHS:
        return f"{name}@{long_side}"
    source = TEACHER_IDS.get(name, str(name))
    return f"{os.path.basename(os.path.normpath(os.path.expanduser(source)))}@{long_side}"  # checkpoint and size


def build_teacher(name, device="cpu", long_side=DEFAULT_LONG_SIDE):
    """The teacher named by `--teacher`: 'emulated' (or 'emulated:S', strength S), 'random-small'
    (or -base, -large) for timing, a size ('small', 'base', 'large'), a Hugging Face id, or a
    local DA-V2 folder."""
    if name == "emulated" or name.startswith("emulated:"):
        try:  # EmulatedTeacher checks the range itself
            return EmulatedTeacher(float(name.partition(":")[2] or 1.0)).to(device)
        except ValueError:
            raise InputError(f"--teacher {name}: the emulated teacher's strength S in 'emulated:S' must be "
                             f"a number in [0, {1 / emulated.EMULATED_WARP:g})") from None
    if name.startswith("random-") and name[len("random-"):] in TEACHER_ARCHS:
        return build_random_teacher(name[len("random-"):], device, long_side)
    return load_teacher(name, device, long_side=long_side)
