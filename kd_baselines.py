"""The existing knowledge-distillation approaches we compare the method with, Eqs. (21)-(23).

They are baselines, not the method (whose losses are all in `losses.py`), and are off by default:
- `aligned_teacher_depth`, `response_kd`  Eq. (21) response KD on the metric-aligned teacher
- `feature_kd`            Eq. (22)  feature KD (FitNets) through a 1x1 adapter
- `lidar_neighbourhood`, `response_kd(..., lidar_radius=r)`  Eq. (23) response KD off the LiDAR pixels
- `response_kd(..., self_align=True)`  Eq. (24) self-aligned response KD: on a view without LiDAR (an
  unlabelled image) the teacher is aligned to the student's own detached depth
- `BaselineConfig`, `baseline_objective`  the terms lambda_rkd L_rkd + lambda_fkd L_fkd that
  Eq. (17) gains when a baseline is switched on
Shapes and units as in `losses.py`: (B, N, 1, H, W) depth maps in meters, bool masks.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from losses import full_resolution_farness, silog, teacher_unclipped, valid_mask

# Eq. (21): a view's alignment exists when var(r_hat) over its LiDAR pixels exceeds this (r_hat in [0, 1]).
FIT_MIN_DET = 1e-8
TEACHER_PIXELS = ("all", "unclipped")  # the pixels response KD reads the teacher on (Eq. 21)


def aligned_teacher_depth(farness, target, mask, min_depth, max_depth):
    """The teacher made metric for response KD, Eq. (21): per view, the least-squares scale and shift.

    farness: (B, N, 1, H, W) the affine farness s of Eq. (6); r_hat = 1 - s is affine in the
        teacher's disparity r inside the 2-98 % percentile range (clipped outside), so aligning
        r_hat aligns r there.
    target, mask: (B, N, 1, H, W) sparse ground truth D* in meters and its mask M.
    Per view, (alpha, beta) = argmin sum_M (alpha r_hat + beta - 1 / D*)^2 (closed form);
    D_T = 1 / clamp(alpha r_hat + beta, 1 / max_depth, 1 / min_depth), in [min_depth, max_depth].
    Returns (D_T (B, N, 1, H, W) meters, fitted (B, N, 1, 1, 1) bool: views with >= 2 valid
    points, spread in r_hat and alpha > 0, the only views whose D_T means anything). No gradient.
    """
    # The sums in float64: n sxx - sx^2 cancels, and float32 rounding would leave a spread where there is none.
    x = (1.0 - farness.detach().double())
    w = mask.double()
    y = torch.where(mask, 1.0 / target.detach().double().clamp_min(min_depth), torch.zeros_like(x))
    n, sx, sy = w.sum(dim=(-3, -2, -1)), (w * x).sum(dim=(-3, -2, -1)), (w * y).sum(dim=(-3, -2, -1))  # (B, N)
    sxx, sxy = (w * x * x).sum(dim=(-3, -2, -1)), (w * x * y).sum(dim=(-3, -2, -1))
    det = n * sxx - sx * sx  # n^2 var(x): 0 when a view has < 2 points or a constant r_hat
    fitted = (n >= 2) & (det > FIT_MIN_DET * n * n)
    alpha = torch.where(fitted, (n * sxy - sx * sy) / torch.where(fitted, det, torch.ones_like(det)), 0.0)
    beta = torch.where(fitted, (sy - alpha * sx) / n.clamp_min(1.0), 0.0)
    fitted = fitted & (alpha > 0)  # r grows with 1 / D: a fit with alpha <= 0 would invert the teacher
    disparity = alpha[..., None, None, None] * x + beta[..., None, None, None]  # (B, N, 1, H, W)
    depth = 1.0 / disparity.clamp(1.0 / max_depth, 1.0 / min_depth)
    return depth.float(), fitted[..., None, None, None]


def lidar_neighbourhood(mask, radius):
    """N_r(M) of Eq. (23): every pixel within `radius` pixels of a LiDAR pixel, in the max norm.

    mask: bool (..., H, W), the LiDAR mask M. radius: int >= 0; 0 gives M itself, r > 0 dilates M
    by a (2r + 1) x (2r + 1) square. Returns bool, the shape of mask.
    """
    if radius == 0:
        return mask
    m = mask.reshape(-1, 1, *mask.shape[-2:]).float()  # (M, 1, H, W)
    return (F.max_pool2d(m, 2 * radius + 1, stride=1, padding=radius) > 0).reshape(mask.shape)


def response_kd(pred, farness, target, mask, min_depth, max_depth, omega=None, lidar_radius=None, self_align=False,
                teacher_pixels="all"):
    """Response KD with an aligned teacher, Eq. (21): L_rkd = SILog(D_hat, D_T; Omega), or off the
    LiDAR pixels, Eq. (23): L_off = SILog(D_hat, D_T; Omega minus N_r(M)).

    pred: (B, N, 1, H, W) student depth D_hat in meters. farness, target, mask, min_depth,
    max_depth: as `aligned_teacher_depth`, which makes the pseudo-depth D_T. Dense: every pixel
    Omega of every view whose alignment exists, not only LiDAR pixels (omega: optional bool
    (B, N, 1, H, W), False on pixels that never count, e.g. DDAD's ego car). The existing-KD
    baseline: the student copies the metric-aligned teacher, errors included.
    lidar_radius: None for Eq. (21); an int r >= 0 for Eq. (23): the LiDAR pixels and every pixel
    within r of one (`lidar_neighbourhood`) are left to L_si, so the teacher speaks only where the
    ground truth is silent. The alignment of D_T still uses the LiDAR pixels.
    self_align: Eq. (24): a view without a LiDAR fit (an unlabelled image) is aligned instead to the
    student's own depth, detached: (alpha, beta) = argmin sum (alpha r_hat + beta - 1 / D_hat)^2 over its
    pixels with s < 1 (the teacher's farthest class, sky, has no metric depth). The student then learns
    the teacher's shape at its own scale, never a scale from it.
    teacher_pixels: "all" (every pixel of a fitted view) or "unclipped": only pixels with 0 < s < 1, where
    Eq. (6) did not clip r_hat; the clipped ones (the sky and the 2 % farthest, the 2 % nearest) carry
    no depth of their own, and D_T puts the sky at the clamp d_max. Returns a scalar.
    """
    depth, fitted = aligned_teacher_depth(farness, target, mask, min_depth, max_depth)
    if self_align:  # Eq. (24)
        own = (farness < 1.0) if omega is None else (farness < 1.0) & omega
        own_depth, own_fit = aligned_teacher_depth(farness, pred.detach(), own, min_depth, max_depth)
        depth, fitted = torch.where(fitted, depth, own_depth), fitted | own_fit
    pixels = fitted.expand_as(pred) if omega is None else fitted.expand_as(pred) & omega
    if lidar_radius is not None:
        pixels = pixels & ~lidar_neighbourhood(mask, lidar_radius)  # Eq. (23)
    if teacher_pixels == "unclipped":
        pixels = pixels & teacher_unclipped(farness)
    elif teacher_pixels != "all":
        raise ValueError(f"teacher_pixels must be one of {TEACHER_PIXELS}, got {teacher_pixels!r}")
    return silog(pred, depth, pixels)


def feature_kd(student_feats, teacher_feats, adapter):
    """Feature KD (FitNets), Eq. (22): L_fkd = 1/|T| sum_t || x_t / |x_t| - f_t / |f_t| ||^2.

    student_feats: (B, N, C_S, h, w) the student's `features`; teacher_feats: (B, N, C_T, h_T, w_T).
    adapter: a module (e.g. a 1x1 conv C_S -> C_T) applied after the student features are
    resized (bilinear) to the teacher's token grid (h_T, w_T); x = adapter(...). Each token t
    (a pixel of the grid) is L2-normalised over channels on both sides, so the loss is 2 - 2 cos
    per token, averaged over all B N h_T w_T tokens. The adapter trains with the student and is
    dropped at inference. Returns a scalar in [0, 4].
    """
    b, n = student_feats.shape[:2]
    size = teacher_feats.shape[-2:]
    x = F.interpolate(student_feats.flatten(0, 1), size=size, mode="bilinear", align_corners=False)
    x = F.normalize(adapter(x), dim=1)  # (B*N, C_T, h_T, w_T)
    t = F.normalize(teacher_feats.flatten(0, 1).float().detach(), dim=1)
    return (x - t).pow(2).sum(dim=1).mean()


@dataclass
class BaselineConfig:
    """Weights of the existing-KD terms added to Eq. (17); all 0 (off) by default."""

    lambda_rkd: float = 0.0  # weight of response KD, Eq. (21); 0: off
    rkd_lidar_radius: int = None  # None: response KD on every pixel, Eq. (21); r >= 0: off N_r(M), Eq. (23)
    rkd_self_align: bool = False  # views without LiDAR: the teacher aligned to the student's depth, Eq. (24)
    rkd_teacher_pixels: str = "all"  # "unclipped": only pixels where Eq. (6) did not clip the teacher
    lambda_fkd: float = 0.0  # weight of feature KD, Eq. (22); 0: off

    @property
    def active(self):
        return self.lambda_rkd > 0 or self.lambda_fkd > 0


def baseline_objective(out, target, cfg, bcfg, farness=None, omega=None, teacher_features=None, adapter=None):
    """The baseline terms of Eq. (17): lambda_rkd L_rkd (Eq. 21, or Eq. 23's L_off with
    bcfg.rkd_lidar_radius set) + lambda_fkd L_fkd (Eq. 22), in float32 with autocast off.

    out, target, omega: as `losses.objective`; cfg: its `losses.LossConfig` (the depth range);
    bcfg: a BaselineConfig. farness: (B, N, 1, h, w) the teacher's affine farness s (Eq. 6),
    needed when bcfg.lambda_rkd > 0. teacher_features, adapter: (B, N, C_T, h_T, w_T) teacher
    features and the 1x1 adapter of Eq. (22), needed when bcfg.lambda_fkd > 0.
    Returns (scalar, {'rkd', 'fkd' when on: detached float32 scalars}); (0, {}) when all are off.
    """
    loss, terms = target.new_zeros(()), {}
    with torch.autocast(target.device.type, enabled=False):
        target = target.float()
        mask = valid_mask(target, cfg.min_depth, cfg.max_depth)  # M
        if bcfg.lambda_rkd > 0:
            s = full_resolution_farness(farness, target.shape[-2:])
            terms["rkd"] = response_kd(out["depth"].float(), s, target, mask, cfg.min_depth, cfg.max_depth,
                                       omega, bcfg.rkd_lidar_radius, bcfg.rkd_self_align,
                                       bcfg.rkd_teacher_pixels)  # Eqs. (21), (23), (24)
            loss = loss + bcfg.lambda_rkd * terms["rkd"]
        if bcfg.lambda_fkd > 0:
            terms["fkd"] = feature_kd(out["features"].float(), teacher_features, adapter)  # Eq. (22)
            loss = loss + bcfg.lambda_fkd * terms["fkd"]
    return loss, {k: v.detach() for k, v in terms.items()}
