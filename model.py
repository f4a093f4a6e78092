"""The student: a light per-view depth network with adaptive bins and hybrid regression.

Implements Eqs. (1)-(5) of the README's method section:
- (1) F_n = Dec(Enc(I_n)): ResNet-18/34 or RegNetX-400MF encoder, U-Net decoder, per-pixel features;
- (2) bin widths w = softmax(MLP(GAP(bottleneck))), per view or shared by the surround sample;
- (3) metric bin edges and centers in [d_min, d_max];
- (4) per-pixel bin probabilities P^S = softmax(z), z = 1x1 conv of F (written as
  logit_scale x conv, see `Student`), at stride 4 with the default decoder;
- (5) hybrid regression D_hat = sum_k P^S_k c_k, upsampled to the input size.
Also defines `StudentConfig` (stored in every checkpoint), `Student.for_inference` (BatchNorm
folded, channels_last), `infer_image` (one image in, metric depth out at its own resolution),
the model folder (`Student.save_pretrained`, `from_pretrained` from a folder or a hub id,
`push_to_hub`), and the loaders the scripts call: `load_checkpoint` (train.py's checkpoint) and
`load_student` (a checkpoint, a model folder or a hub id). The files are read in checkpoint.py,
without running code from them; `save_checkpoint` and `CheckpointError` come from there.
"""
import copy
import os
import tempfile
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from torch.nn.utils.fusion import fuse_conv_bn_eval

from checkpoint import (CONFIG_NAME, FOLDER_KEYS, CheckpointError, folder_config, model_folder,  # noqa: F401
                        push_model_folder, read_checkpoint, read_model_folder, save_checkpoint, write_model_folder)
from rig import CAMERAS

# ImageNet statistics that torchvision's ResNet and RegNet weights were trained with.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Channels of the encoder stages used as skips, strides 2, 4, 8, 16, 32: the ResNets' stem and
# layer1..layer4; RegNetX-400MF's stem and trunk blocks 1-4 (torchvision), the light encoder
# (the whole student 2.2-3.8x faster in onnxruntime on 2 CPU cores, much less accurate; README, "Speed").
ENCODER_CHANNELS = {"resnet18": (64, 64, 128, 256, 512), "resnet34": (64, 64, 128, 256, 512),
                    "regnet_x_400mf": (32, 32, 64, 160, 400)}
ENCODER_WEIGHTS = {"resnet18": "ResNet18_Weights", "resnet34": "ResNet34_Weights",
                   "regnet_x_400mf": "RegNet_X_400MF_Weights"}  # torchvision's ImageNet weight enums
# The encoder downsamples by 32, so the input height and width must be multiples of it.
ENCODER_STRIDE = 32


@dataclass
class StudentConfig:
    """Hyperparameters of the student; a checkpoint stores them, so the model rebuilds from it."""

    encoder: str = "resnet18"  # a key of ENCODER_CHANNELS (torchvision): resnet18, resnet34, regnet_x_400mf
    num_bins: int = 64  # K, the number of adaptive depth bins (Eqs. 2-5)
    min_depth: float = 0.1  # d_min in meters (Eq. 3)
    max_depth: float = 80.0  # d_max in meters (Eq. 3)
    decoder_channels: tuple = (128, 64, 32)  # U-Net decoder at strides 16, 8, 4 (a 4th entry: stride 2)
    feature_level: int = 1  # which decoder stage is returned as `features` (1 = stride 8)
    bin_hidden: int = 256  # hidden width of the bin-width MLP (Eq. 2)
    logit_scale: float = 8.0  # z = logit_scale * conv1x1(F) (Eq. 4): a reparametrisation, see Student
    shared_bins: bool = False  # Eq. (2) option: one width vector per surround sample
    upsample: str = "bilinear"  # "bilinear" or "convex" (learned, `convex_upsample`) to the input size
    image_size: tuple = (96, 160)  # (H, W) the network was trained at; infer_image resizes to it

    def __post_init__(self):
        if self.encoder not in ENCODER_CHANNELS:
            raise ValueError(f"encoder must be one of {sorted(ENCODER_CHANNELS)}, got {self.encoder!r}")
        self.decoder_channels = tuple(self.decoder_channels)
        self.image_size = tuple(self.image_size)
        if self.upsample not in ("convex", "bilinear"):
            raise ValueError(f"upsample must be 'convex' or 'bilinear', got {self.upsample!r}")
        if not 1 <= len(self.decoder_channels) <= 4 or not 0 <= self.feature_level < len(self.decoder_channels):
            raise ValueError(f"--decoder-channels takes 1 to 4 widths (the encoder has 4 skips), and --feature-level "
                             f"must name one of its stages: got {len(self.decoder_channels)} widths and level "
                             f"{self.feature_level}")


def conv_block(c_in, c_out):
    """3x3 conv + BatchNorm + ReLU: the unit of the U-Net decoder of Eq. (1)."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                         nn.ReLU(inplace=True))


def bins_to_centers(widths, min_depth, max_depth):
    """Eq. (3): widths (..., K) on the simplex -> metric bin centers (..., K) in meters."""
    edges = min_depth + (max_depth - min_depth) * torch.cumsum(widths, dim=-1)  # e_1..e_K
    edges = F.pad(edges, (1, 0), value=min_depth)  # (..., K + 1): e_0 = d_min
    return 0.5 * (edges[..., :-1] + edges[..., 1:])


def hybrid_depth(logits, centers):
    """Eqs. (4)-(5): logits (..., K, h, w) and centers (..., K) -> depth (..., 1, h, w) meters."""
    probs = torch.softmax(logits, dim=-3)  # Eq. (4), (..., K, h, w)
    return torch.einsum("...khw,...k->...hw", probs, centers).unsqueeze(-3)  # Eq. (5)


def convex_upsample(depth, weight_logits):
    """Learned upsampling by a factor s: depth (M, 1, h, w) meters and weight_logits (M, 6 s, h, w)
    logits -> depth (M, 1, s h, s w) meters.

    Each output pixel is a convex combination of the 3x3 coarse depths around its coarse pixel,
    as RAFT upsamples flow, with separable weights: sub-row i of a coarse pixel mixes its three
    rows with a_i = softmax(weight_logits[0:3s]), sub-column k its three columns with b_k =
    softmax(weight_logits[3s:6s]), and pixel (i, k) takes weight a_i[y] b_k[x] on neighbour (y, x). The
    weights are >= 0 and sum to 1. Channel order: row weights a_i[y] at c = y s + i, column
    weights b_k[x] at c = 3 s + x s + k. Separable weights need 6 s weight channels instead of
    RAFT's 9 s^2 (24 vs 144 at s = 4); with them the convex student runs within 1-2 % of the
    bilinear one at 6 x 352 x 640 (README, "Speed").
    A convex combination of hybrid depths is the hybrid depth (Eq. 5) of the same combination
    of the bin probabilities P^S, since the centers are per image: so this is Eq. (5) at full
    resolution with P^S upsampled, at the cost of one channel instead of K. The border is
    replicated, so an edge pixel never mixes in zeros."""
    m, _, h, w = depth.shape
    s = weight_logits.shape[1] // 6
    if (weight_logits.shape[1] != 6 * s or s < 1 or weight_logits.shape[0] != m
            or weight_logits.shape[-2:] != depth.shape[-2:]):
        raise ValueError(f"convex_upsample: weight_logits {tuple(weight_logits.shape)} must be (M, 6 s, h, w) "
                         f"for depth {tuple(depth.shape)}")
    weights = torch.softmax(weight_logits.contiguous().view(m, 2, 3, s, h, w), dim=2)  # over 3 rows / 3 columns
    rows, cols = weights[:, 0], weights[:, 1]  # (M, 3, s, h, w): a_i[y], b_k[x]
    patches = F.unfold(F.pad(depth, (1, 1, 1, 1), mode="replicate"), 3).view(m, 3, 3, h, w)  # [y, x]
    mixed = torch.einsum("mxkhw,myxhw->mykhw", cols, patches)  # (M, 3, s, h, w): each row mixed across x
    up = torch.einsum("myihw,mykhw->mikhw", rows, mixed)  # (M, s, s, h, w): sub-pixel (i, k)
    return up.permute(0, 3, 1, 4, 2).reshape(m, 1, h * s, w * s)


def build_encoder(name, pretrained):
    """A torchvision ResNet or RegNet without its classifier; ImageNet weights if `pretrained`."""
    weights = getattr(torchvision.models, ENCODER_WEIGHTS[name]).IMAGENET1K_V1 if pretrained else None
    try:
        net = getattr(torchvision.models, name)(weights=weights)
    except (OSError, RuntimeError) as err:  # urllib's URLError is an OSError
        raise RuntimeError(
            f"could not download ImageNet weights for {name} ({err.__class__.__name__}): run "
            f"without --pretrained, or put {weights.url.rsplit('/', 1)[-1]} into "
            f"{torch.hub.get_dir()}/checkpoints") from None
    net.fc = nn.Identity()
    return net


class Student(nn.Module):
    """Per-view ResNet (or RegNet) U-Net with adaptive bins and hybrid regression, Eqs. (1)-(5)."""

    def __init__(self, cfg: StudentConfig, pretrained=False):
        super().__init__()
        self.cfg = cfg
        self.encoder = build_encoder(cfg.encoder, pretrained)
        enc = ENCODER_CHANNELS[cfg.encoder]
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        # U-Net decoder (Eq. 1): at each stage reduce, upsample x2, concatenate the skip, fuse.
        self.reduce, self.fuse = nn.ModuleList(), nn.ModuleList()
        c_prev = enc[-1]
        for c_out, c_skip in zip(cfg.decoder_channels, enc[-2::-1]):
            self.reduce.append(conv_block(c_prev, c_out))
            self.fuse.append(conv_block(c_out + c_skip, c_out))
            c_prev = c_out
        # Eq. (4): bin logits z, a 1x1 conv of the last decoder features (stride 4 with the
        # default three decoder stages; a fourth stage would decode to stride 2 at ~2x the cost).
        # The conv's output is multiplied by cfg.logit_scale. The network can express nothing
        # new (it is the conv with its weights scaled); the initial logits are larger and they
        # learn faster: Adam moves each weight by about the learning rate per step, so with
        # scale 1 the logits grow too slowly for P^S to become as sharp as the teacher's P^T
        # (Eq. 10) in a short schedule. Measured after 200 steps of CKD: mean entropy of P^S
        # 3.9 nats with scale 1 (uniform: 4.2), 2.6 with scale 8; P^T has 1.45 (README, "Ablation").
        self.logit_head = nn.Conv2d(c_prev, cfg.num_bins, 1)
        # Eq. (5) at full resolution. Default: the stride-s depth is upsampled bilinearly. Option
        # (upsample="convex"): by `convex_upsample`, whose 6 s weights per coarse pixel a small
        # head predicts from the same features, so depth edges can stay sharp where bilinear
        # upsampling blurs them across s pixels. Measured (README, "Ablation"): convex helps
        # the supervised baseline, but not CKD + VRKD on sparse AbsRel, hence not the default.
        stride = ENCODER_STRIDE // 2 ** len(cfg.decoder_channels)
        self.upsample_head = (nn.Sequential(nn.Conv2d(c_prev, c_prev, 3, padding=1), nn.ReLU(inplace=True),
                                            nn.Conv2d(c_prev, 6 * stride, 1))
                              if cfg.upsample == "convex" else None)
        # Eq. (2): bin widths from the globally pooled bottleneck.
        self.bin_mlp = nn.Sequential(nn.Linear(enc[-1], cfg.bin_hidden), nn.ReLU(inplace=True),
                                     nn.Linear(cfg.bin_hidden, cfg.num_bins))

    def encode(self, x):
        """Encoder stages of x (M, 3, H, W) normalised: 5 maps at strides 2, 4, 8, 16, 32, with
        ENCODER_CHANNELS[cfg.encoder] channels."""
        e = self.encoder
        if self.cfg.encoder.startswith("regnet"):  # stem (stride 2), then the four trunk stages
            maps = [e.stem(x)]
            for stage in e.trunk_output:
                maps.append(stage(maps[-1]))
            return maps
        s2 = e.relu(e.bn1(e.conv1(x)))
        s4 = e.layer1(e.maxpool(s2))
        s8 = e.layer2(s4)
        s16 = e.layer3(s8)
        return [s2, s4, s8, s16, e.layer4(s16)]

    def forward(self, images):
        """images (B, N, 3, H, W) in [0, 1], H and W multiples of 32 -> dict of
        depth (B, N, 1, H, W) meters, logits (B, N, K, H/s, W/s) with s = 32 / 2**len(decoder_channels)
        (s = 4 by default), centers (B, N, K) meters, features (B, N, C, H/f, W/f) with
        f = 16 / 2**feature_level (8 by default): the decoder stage VRKD distills (Eq. 12)."""
        b, n, _, h, w = images.shape
        if h % ENCODER_STRIDE or w % ENCODER_STRIDE:
            raise ValueError(f"image size {h}x{w} must be a multiple of {ENCODER_STRIDE}")
        x = (images.flatten(0, 1) - self.mean) / self.std  # (B*N, 3, H, W)
        skips = self.encode(x)
        y = skips[-1]  # (B*N, C_32, H/32, W/32), the bottleneck (512 channels for a ResNet)
        stages = []
        for reduce, fuse, skip in zip(self.reduce, self.fuse, skips[-2::-1]):
            y = F.interpolate(reduce(y), size=skip.shape[-2:], mode="nearest")
            y = fuse(torch.cat([y, skip], dim=1))
            stages.append(y)
        logits = self.cfg.logit_scale * self.logit_head(y).unflatten(0, (b, n))  # (B, N, K, H/s, W/s)

        pooled = skips[-1].mean(dim=(2, 3)).unflatten(0, (b, n))  # GAP, (B, N, C_32)
        if self.cfg.shared_bins:  # one metric scale for the whole surround sample
            pooled = pooled.mean(dim=1, keepdim=True).expand(-1, n, -1)
        widths = torch.softmax(self.bin_mlp(pooled), dim=-1)  # Eq. (2), (B, N, K)
        centers = bins_to_centers(widths, self.cfg.min_depth, self.cfg.max_depth)  # Eq. (3)

        depth = hybrid_depth(logits, centers).flatten(0, 1)  # Eqs. (4)-(5), (B*N, 1, H/s, W/s)
        if self.upsample_head is not None:
            depth = convex_upsample(depth, self.upsample_head(y))  # (B*N, 1, H, W)
        else:
            depth = F.interpolate(depth, size=(h, w), mode="bilinear", align_corners=False)
        features = stages[self.cfg.feature_level].unflatten(0, (b, n))  # (B, N, C, h', w')
        return {"depth": depth.unflatten(0, (b, n)), "logits": logits, "centers": centers,
                "features": features}

    def for_inference(self):
        """A copy of the model for fast inference, in eval mode, with the same outputs (up to
        float rounding):
        - every BatchNorm is folded into the convolution just before it (torch's own
          `fuse_conv_bn_eval`: w' = w * gamma / sqrt(var + eps), b' = beta + (b - mean) * ...),
          so inference runs one op where training ran two;
        - weights and activations are channels_last (NHWC), which oneDNN/cuDNN convolve faster.
        Folding is valid here because, in every module of this network (the ResNet stem and
        blocks, RegNet's conv-BN-activation units, `conv_block`), a BatchNorm registered right after
        a Conv2d is applied to exactly that conv's output. `benchmark.py speed` measures what this buys."""
        fast = copy.deepcopy(self).eval()
        for module in list(fast.modules()):
            names = list(module._modules)
            for conv_name, bn_name in zip(names, names[1:]):
                conv, bn = module._modules[conv_name], module._modules[bn_name]
                if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                    module._modules[conv_name] = fuse_conv_bn_eval(conv, bn)
                    module._modules[bn_name] = nn.Identity()
        return fast.to(memory_format=torch.channels_last)

    def infer_image(self, image):
        """One image (H0, W0, 3) uint8 array or PIL image -> metric depth (H0, W0) float32 meters."""
        return self.infer_images([image])[0]

    @torch.inference_mode()
    def infer_images(self, images):
        """Images, each (H0, W0, 3) uint8 array or PIL image, any sizes -> list of metric depth
        maps (H0, W0) float32 meters, in one batch.

        Each image is resized to the training size `cfg.image_size` (so the field of view per
        pixel matches training) and run as one view, in eval mode (BatchNorm uses its running
        statistics); each depth map is resized back to its image's (H0, W0).
        """
        was_training = self.training
        self.eval()
        batch, sizes = [], []
        for image in images:
            x = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)  # (3, H0, W0)
            x = x.to(self.mean.device, torch.float32)[None] / 255.0
            sizes.append(x.shape[-2:])
            batch.append(F.interpolate(x, size=self.cfg.image_size, mode="bilinear", align_corners=False,
                                       antialias=True))
        depth = self(torch.cat(batch)[:, None])["depth"][:, 0]  # (M, 1, H, W)
        self.train(was_training)
        return [F.interpolate(d[None], size=tuple(s), mode="bilinear", align_corners=False)[0, 0].float().cpu().numpy()
                for d, s in zip(depth, sizes)]

    @classmethod
    def from_pretrained(cls, source, device="cpu", revision=None):
        """A trained student from a model folder or a Hugging Face hub id 'owner/name' (downloaded
        into the Hugging Face cache; with HF_HUB_OFFLINE set, read from it) -> Student in eval mode
        on `device`, BatchNorm kept (`for_inference` derives the fast form). No code in the files runs."""
        return student_from_folder(source, device, revision)[0]

    def save_pretrained(self, folder, dataset=None, cameras=CAMERAS):
        """Write the model folder: config.json (StudentConfig, the ring order of `cameras`, the training
        `dataset`, the project version) and model.safetensors (the weights, BatchNorm kept), atomically."""
        if not any(isinstance(m, nn.BatchNorm2d) for m in self.modules()):
            raise ValueError("save_pretrained: this is the inference form (BatchNorm folded); save the student itself")
        write_model_folder(folder, folder_config(asdict(self.cfg), dataset, cameras), self.state_dict())

    def push_to_hub(self, repo_id, dataset=None, cameras=CAMERAS, private=None, token=None):
        """Publish the model folder (save_pretrained) and a model card on the Hugging Face hub as
        `repo_id` ('owner/name'; needs a login, `hf auth login`, or `token`) -> the commit info."""
        with tempfile.TemporaryDirectory() as tmp:
            self.save_pretrained(tmp, dataset, cameras)
            return push_model_folder(tmp, repo_id, private, token)


def build_student(config, state, where):
    """A Student from a StudentConfig as a dict and its weights (name -> tensor) -> Student on the CPU,
    eval mode. Raises CheckpointError (one line, naming `where`) if they do not fit together."""
    try:
        model = Student(StudentConfig(**config))
        model.load_state_dict(state)
    except (TypeError, ValueError, KeyError, RuntimeError) as err:  # unknown fields, wrong shapes or keys
        raise CheckpointError(f"{where}: its config and weights do not make a student ({err.__class__.__name__}: "
                              f"{(str(err).splitlines() or [''])[0][:120]}) ; write it again with this code") from None
    return model.eval()


def load_checkpoint(path, device="cpu"):
    """Read a checkpoint written by train.py (checkpoint.read_checkpoint: tensors and plain values
    only) -> (Student in eval mode on `device`, the checkpoint's dict)."""
    ckpt = read_checkpoint(path)
    return build_student(ckpt["config"], ckpt["model"], path).to(device), ckpt


def student_from_folder(source, device="cpu", revision=None):
    """A model folder or hub id -> (Student in eval mode on `device`, its config.json as a dict)."""
    folder = model_folder(source, revision)
    config, state = read_model_folder(folder)
    known = {f.name for f in fields(StudentConfig)}
    unknown = sorted(set(config) - known - set(FOLDER_KEYS))
    if unknown:
        raise CheckpointError(f"{os.path.join(folder, CONFIG_NAME)}: unknown keys {', '.join(unknown[:4])} "
                              "(written by a newer version?) ; update the project's code")
    student = build_student({k: v for k, v in config.items() if k in known}, state, source)
    return student.to(device), config


def load_student(source, device="cpu"):
    """What `--checkpoint` of evaluate.py, infer.py and export.py names: a training checkpoint file, a
    model folder (OUT/student) or a Hugging Face hub id -> (Student in eval mode on `device`, the
    training args as far as known: all of a checkpoint's, only {'data': dataset} of a folder)."""
    if os.path.isfile(source):
        model, ckpt = load_checkpoint(source, device)
        return model, ckpt.get("args", {})
    model, config = student_from_folder(source, device)
    return model, {} if config.get("dataset") is None else {"data": config["dataset"]}
