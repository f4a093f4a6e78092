"""What a relative-depth foundation model gets wrong, in named amounts: the synthetic world's teacher.

`teacher.EmulatedTeacher` turns the synthetic world's dense depth into what Depth Anything V2
(DA-V2) would output, r ~ a / D + b (the relative inverse depth of Eq. 6), with the errors such
a model makes. At strength S (`--teacher emulated:S`) each error is an amount below times S:
- (a) blurred depth edges: a Gaussian blur of the disparity (`EMULATED_BLUR_SIGMA` pixels, fixed);
- (b) low-frequency warps: 1 / D times 1 + EMULATED_WARP * S * e(p), e a coarse random field;
- (c) errors in the relative order of separate objects: each planar piece of the scene
  (`depth_segments`) gets its own factor exp(EMULATED_ORDER * S * n), n ~ N(0, 1), so two objects
  at similar depths can swap order while each surface stays smooth;
- (d) a compressed far range: r -> sqrt(r^2 + r_s^2), r_s = S / EMULATED_FAR_DEPTH: beyond about
  EMULATED_FAR_DEPTH / S meters every depth looks alike (the far range saturates).
Then the unknown per-image scale a and shift b of a relative model. The default S = 1 is
calibrated: the Depth Anything zero-shot protocol (`evaluate.affine_invariant_metrics`) scores
it near the published zero-shot KITTI numbers of Depth Anything V1/V2 Small (README, "The
calibrated teacher"; measured by `python benchmark.py teacher --split val`).

Defines `emulated_disparity`, `depth_segments`, `gaussian_blur`, `content_seed` and the amounts.
Shapes: (M, 1, H, W) depth maps in meters, 0 for sky (no ground truth).
"""
import hashlib

import torch
import torch.nn.functional as F

EMULATED_SCALE_RANGE = (0.5, 2.0)  # per-image scale a of r = a / D + b, drawn log-uniformly
EMULATED_SHIFT_RANGE = (0.0, 0.1)  # per-image shift b, uniform, in the units of a / D (1/m for a = 1)
EMULATED_BLUR_SIGMA = 1.5  # (a) pixels: Gaussian blur of the disparity, the soft edges of a DPT head
# (b)-(d) at strength 1. Calibrated together (README, "The calibrated teacher") so that the default
# teacher's affine-invariant AbsRel / delta1 on the synthetic val split match Depth Anything Small's
# zero-shot KITTI numbers (V1 ViT-S: 0.080 / 0.936).
EMULATED_WARP = 0.16  # (b) amplitude of the multiplicative low-frequency error
EMULATED_WARP_GRID = (3, 5)  # (b) coarse (rows, cols) random field, bilinearly upsampled
EMULATED_ORDER = 0.12  # (c) std of the log-disparity factor of each planar piece
EMULATED_FAR_DEPTH = 60.0  # (d) meters: the disparity saturates at 1 / EMULATED_FAR_DEPTH
# (c) A pixel lies inside a planar piece when the second differences of its inverse depth (0 on
# any plane, whose inverse z-depth is affine in the pixel coordinates) stay below this fraction
# of its inverse depth: creases (object on ground) and depth jumps exceed it by far.
SEGMENT_CREASE = 0.02


def gaussian_blur(x, sigma):
    """Separable Gaussian blur of (M, 1, H, W) with replicate padding (keeps monotone ramps monotone)."""
    radius = max(1, int(3.0 * sigma + 0.5))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    kernel = kernel / kernel.sum()  # (2r+1,)
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), kernel.view(1, 1, 1, -1))
    return F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), kernel.view(1, 1, -1, 1))


def content_seed(depth):
    """A 63-bit seed from the bytes of one depth map (H, W): the same map always draws the same."""
    data = depth.detach().to("cpu", torch.float32).contiguous().numpy()
    digest = hashlib.blake2b(data.tobytes() + str(data.shape).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1  # manual_seed takes < 2**63


def inverse_depth(depth):
    """1 / D of (M, 1, H, W) meters, 0 where D <= 0 (sky)."""
    sky = depth <= 0
    return torch.where(sky, torch.zeros_like(depth), 1.0 / depth.clamp_min(torch.finfo(depth.dtype).tiny))


def depth_segments(depth, crease=SEGMENT_CREASE):
    """Planar pieces of depth maps, error (c): (M, 1, H, W) meters -> (M, 1, H, W) int64 labels.

    A pixel is inside a piece when |second difference of 1 / D| <= crease / D along both axes
    (image borders count as inside); 4-connected inside pixels form a piece, labelled by its
    smallest flat pixel index (so a label depends on that map alone). Sky and crease pixels: -1.
    Connected components by union of 4-neighbour edges with pointer jumping (no scipy).
    """
    m, _, h, w = depth.shape
    inv = inverse_depth(depth.float())
    inside = depth > 0
    d2x = inv[..., :, :-2] - 2.0 * inv[..., :, 1:-1] + inv[..., :, 2:]  # (M, 1, H, W - 2)
    d2y = inv[..., :-2, :] - 2.0 * inv[..., 1:-1, :] + inv[..., 2:, :]  # (M, 1, H - 2, W)
    inside[..., :, 1:-1] &= d2x.abs() <= crease * inv[..., :, 1:-1]
    inside[..., 1:-1, :] &= d2y.abs() <= crease * inv[..., 1:-1, :]
    # Edges between 4-neighbours that are both inside, as flat indices into the (M*H*W,) maps.
    index = torch.arange(m * h * w, device=depth.device).view(m, 1, h, w)
    pairs = [(index[..., :, :-1][inside[..., :, :-1] & inside[..., :, 1:]],
              index[..., :, 1:][inside[..., :, :-1] & inside[..., :, 1:]]),
             (index[..., :-1, :][inside[..., :-1, :] & inside[..., 1:, :]],
              index[..., 1:, :][inside[..., :-1, :] & inside[..., 1:, :]])]
    src, dst = torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])  # (E,) each
    # Union by hooking roots to the smaller root, then pointer jumping (Shiloach-Vishkin): a few rounds.
    parent = index.flatten()  # (M*H*W,): every pixel starts as its own root
    while True:
        low = torch.minimum(parent[src], parent[dst])  # (E,)
        hooked = parent.clone()
        hooked.scatter_reduce_(0, parent[src], low, reduce="amin")
        hooked.scatter_reduce_(0, parent[dst], low, reduce="amin")
        while True:  # compress every path to its root
            jumped = hooked[hooked]
            if torch.equal(jumped, hooked):
                break
            hooked = jumped
        if torch.equal(hooked, parent):
            break
        parent = hooked
    labels = parent.view(m, 1, h, w) - torch.arange(m, device=depth.device).view(m, 1, 1, 1) * (h * w)
    return torch.where(inside, labels, -1)  # the smallest flat index (H*W) of each piece in its map


def emulated_disparity(depth, segments, strength, blur_sigma=EMULATED_BLUR_SIGMA):
    """One depth map (1, 1, H, W) meters (0 sky) and its `depth_segments` -> r (1, 1, H, W).

    Errors (a)-(d) of the file docstring at `strength`, then r = a * (1 / D') + b. The draws
    come from a generator seeded by the map's bytes (`content_seed`), in a fixed order: scale a,
    shift b, warp field, one normal per possible piece label. Sky is exactly the minimum, b.
    """
    h, w = depth.shape[-2:]
    gen = torch.Generator().manual_seed(content_seed(depth[0, 0]))
    log_lo, log_hi = torch.tensor(EMULATED_SCALE_RANGE).log()
    a = torch.exp(log_lo + (log_hi - log_lo) * torch.rand((), generator=gen))
    b_lo, b_hi = EMULATED_SHIFT_RANGE
    b = b_lo + (b_hi - b_lo) * torch.rand((), generator=gen)
    field = 2.0 * torch.rand((1, 1) + EMULATED_WARP_GRID, generator=gen) - 1.0  # (1, 1, 3, 5)
    noise = torch.randn(h * w, generator=gen).to(depth.device)  # (H*W,): n of each piece label

    sky = depth <= 0
    inv = inverse_depth(depth)
    # (c) one factor per planar piece (creases keep 1): objects at similar depths may swap order.
    piece = torch.where(segments >= 0, noise[segments.clamp_min(0)], torch.zeros_like(inv))  # (1, 1, H, W)
    inv = inv * torch.exp(EMULATED_ORDER * strength * piece)
    # (d) far range: sqrt(r^2 + r_s^2) flattens every disparity below r_s (depths beyond 1 / r_s).
    inv = torch.where(sky, inv, torch.hypot(inv, torch.tensor(strength / EMULATED_FAR_DEPTH)))
    if blur_sigma > 0:
        inv = gaussian_blur(inv, blur_sigma)  # (a) soft edges, also into the sky border
    # (b) a smooth multiplicative error, low frequency.
    error = F.interpolate(field.to(depth.device), size=(h, w), mode="bilinear", align_corners=True)
    inv = inv * (1.0 + EMULATED_WARP * strength * error)  # (1, 1, H, W), still >= 0
    inv = inv.masked_fill(sky, 0.0)  # the sky is segmented cleanly: exactly the minimum
    return a.to(depth.device) * inv + b.to(depth.device)
