"""Every training loss of the method, as small pure functions that import only torch.

Copy this file and `teacher_bins.py` into another project as they are. Equation numbers refer to the README's method
section (the project's own formulation of the paper's abstract):
- `silog`                 Eq. (15)  scale-invariant log loss, also L_cross of Eq. (9)
- `bin_chamfer`           Eq. (16)  bin centers <-> ground-truth depths
- `normalised_farness`, `remap_farness`, `farness_bin_probs`, `teacher_bin_probs`: Eqs. (6)-(7),
  the teacher's scale-invariant bin probabilities P^T, defined in `teacher_bins.py` (torch only)
  and imported here
- `cross_interaction_kd`  Eqs. (8)-(11) CKD: L_kd and L_cross
- `border_tokens`         Eq. (12)  pooled, L2-normalised border-strip tokens of each view
- `border_similarity`     Eq. (13)  cosine similarities of adjacent border tokens (before tau_v)
- `relational_kd`         Eqs. (13)-(14) VRKD from border tokens
- `view_relational_kd`    Eqs. (12)-(14) VRKD from feature maps
- `aligned_teacher_depth`, `response_kd`  Eq. (21) response KD on the metric-aligned teacher
- `feature_kd`            Eq. (22)  feature KD (FitNets) through a 1x1 adapter
- `lidar_neighbourhood`, `response_kd(..., lidar_radius=r)`  Eq. (23) response KD off the LiDAR pixels
- `valid_mask`            the validity mask M, d_min < D* < d_max (losses and every metric)
- `LossConfig`, `objective` Eq. (17) the whole training objective, in fp32 even under autocast

Shapes: B batch, N views, K bins, C channels, (H, W) ground-truth resolution, (h, w) a feature
or logit resolution. Depths are in meters. A `mask` is a bool tensor, True where a pixel counts.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from teacher_bins import (FARNESS_MODES, FARNESS_Q_HI, FARNESS_Q_LO, LOG_FARNESS_FLOOR,  # noqa: F401 (Eqs. 6-7)
                          farness_bin_probs, normalised_farness, remap_farness, teacher_bin_probs)

# Eq. (15): the SILog constants of AdaBins / BTS. alpha scales the loss to the range of the
# other terms; lambda = 0.85 weights the scale-invariant part (lambda = 1 is fully scale-invariant).
SILOG_ALPHA = 10.0
SILOG_LAMBDA = 0.85
# Smallest depth fed to a log, in meters (the d_min of the README's "Setting").
LOG_DEPTH_FLOOR = 0.1
# Eq. (21): a view's alignment exists when var(r_hat) over its LiDAR pixels exceeds this (r_hat in [0, 1]).
FIT_MIN_DET = 1e-8
# Keeps sqrt differentiable when the SILog variance is exactly 0 (loss <= 1e-5 there).
SQRT_EPS = 1e-12


def valid_mask(depth, min_depth, max_depth):
    """The validity mask M: True where min_depth < depth < max_depth (meters). Works on torch
    tensors and numpy arrays alike, so the losses and every metric of Eq. (18) share it."""
    return (depth > min_depth) & (depth < max_depth)


def silog(pred, target, mask, alpha=SILOG_ALPHA, lam=SILOG_LAMBDA):
    """Scale-invariant log loss, Eq. (15): alpha * sqrt(mean(g^2) - lam * mean(g)^2).

    pred, target: (..., H, W) depth in meters (any leading dims, e.g. (B, N, 1, H, W)).
    mask: bool, same shape; True on pixels with ground truth (the M of the README).
    g = log pred - log target over all masked pixels of the batch (as AdaBins does).
    Returns a scalar; 0 when pred == target on the mask. With no valid pixel it returns a
    zero that still carries pred's graph.
    """
    if not mask.any():
        return pred.sum() * 0.0
    g = torch.log(pred[mask].clamp_min(LOG_DEPTH_FLOOR)) - torch.log(target[mask].clamp_min(LOG_DEPTH_FLOOR))
    variance = (g.pow(2).mean() - lam * g.mean().pow(2)).clamp_min(0.0)
    return alpha * torch.sqrt(variance + SQRT_EPS)


def _valid_points(target, mask):
    """Pack each map's valid depths to the front: (M, H, W) -> values, valid, both (M, P)."""
    m = target.shape[0]
    valid = mask.reshape(m, -1)  # (M, H*W)
    values = target.reshape(m, -1).masked_fill(~valid, 0.0)  # masked-out values never enter a distance
    count = int(valid.sum(dim=1).max())
    order = torch.argsort(valid.to(torch.uint8), dim=1, descending=True, stable=True)[:, :count]
    return values.gather(1, order), valid.gather(1, order)  # (M, P), (M, P)


def bin_chamfer(centers, target, mask):
    """Bin-center chamfer loss, Eq. (16), between {c_k} and {D*(p) : p in M}, per view.

    centers: (..., K) metric bin centers in meters, e.g. (B, N, K).
    target:  (..., 1, H, W) ground-truth depth in meters, leading dims as centers.
    mask:    bool, same shape as target.
    Both directions of the chamfer distance (AdaBins' bin-center density loss): every center
    near some ground-truth depth, and every ground-truth depth near some center. Averaged over
    views that have at least one valid pixel. Returns a scalar, 0 when the two sets are equal.
    """
    k = centers.shape[-1]
    c = centers.reshape(-1, k)  # (M, K)
    values, valid = _valid_points(target.reshape(c.shape[0], -1), mask.reshape(c.shape[0], -1))
    has_points = valid.any(dim=1)  # (M,)
    if not has_points.any():
        return centers.sum() * 0.0
    c, values, valid = c[has_points], values[has_points], valid[has_points]
    dist = (c[:, :, None] - values[:, None, :]).pow(2)  # (M, K, P)
    far = torch.finfo(dist.dtype).max
    # centers -> points: nearest valid point for each center (padding never wins).
    c_to_p = dist.masked_fill(~valid[:, None, :], far).amin(dim=2).mean(dim=1)  # (M,)
    # points -> centers: nearest center for each valid point, averaged over valid points.
    p_to_c = (dist.amin(dim=1) * valid).sum(dim=1) / valid.sum(dim=1)  # (M,)
    return (c_to_p + p_to_c).mean()


def cross_interaction_kd(logits, centers, teacher_probs, target, mask, tau=1.0, omega=None):
    """Cross-interaction knowledge distillation, Eqs. (8)-(11). Returns {'kd': L_kd, 'cross': L_cross}.

    logits:        (B, N, K, h, w) student bin logits z (Eq. 4).
    centers:       (B, N, K) student metric bin centers c in meters (Eq. 3).
    teacher_probs: (B, N, K, H, W) teacher bin probabilities P^T (Eq. 7), at ground-truth size.
    target, mask:  (B, N, 1, H, W) sparse ground truth D* in meters and its validity mask M.
    tau:           distillation temperature of Eq. (10).
    omega:         None (every pixel counts, the Omega of Eq. 10 is the whole image) or bool
                   (B, N, 1, H, W), True where a pixel counts (e.g. False on the ego car's body).

    The teacher knows the ordering (which bin) but not the scale; the ground truth knows the
    scale at sparse points. CKD crosses the two, and L_CKD = L_kd + lambda_x L_cross (Eq. 11)
    is formed by the caller.
    """
    # Eq. (8): cross depth = teacher probabilities weighted by the student's metric centers.
    cross_depth = torch.einsum("bnkhw,bnk->bnhw", teacher_probs, centers).unsqueeze(2)  # (B, N, 1, H, W)
    # Eq. (9): P^T is a constant (the teacher is frozen), so the gradient of L_cross flows only
    # through the centers c: into the bin-width MLP and, through GAP of the bottleneck (Eq. 2),
    # into the encoder; never into the logit head or the decoder. The centers learn the metric
    # depth of each of the teacher's slices from the ground truth: the metric scale.
    loss_cross = silog(cross_depth, target, mask)

    # Eq. (10): dense KL(P^T || softmax(z / tau)) at the logit resolution. Averaging P^T over
    # the pixels of each logit cell keeps a distribution. Because P^T is scale-invariant, this
    # term teaches the logit head the scene's depth ordering and nothing about meters.
    b, n, k, h, w = logits.shape
    log_q = torch.log_softmax(logits / tau, dim=2)  # (B, N, K, h, w)
    if omega is None:
        p_t = F.adaptive_avg_pool2d(teacher_probs.flatten(0, 1), (h, w)).reshape(b, n, k, h, w)
        kl = (torch.xlogy(p_t, p_t) - p_t * log_q).sum(dim=2, keepdim=True)  # (B, N, 1, h, w)
        return {"kd": tau**2 * kl.mean(), "cross": loss_cross}
    # Omega of Eq. (10) given: each logit cell weighs by the share of its pixels that count, and
    # P^T is averaged over those pixels only (a cell with none weighs 0).
    keep = omega.to(teacher_probs.dtype).flatten(0, 1)  # (B*N, 1, H, W)
    weight = F.adaptive_avg_pool2d(keep, (h, w))  # (B*N, 1, h, w) share of kept pixels
    p_t = F.adaptive_avg_pool2d(teacher_probs.flatten(0, 1) * keep, (h, w))  # (B*N, K, h, w)
    p_t = (p_t / torch.where(weight > 0, weight, 1.0)).reshape(b, n, k, h, w)
    kl = (torch.xlogy(p_t, p_t) - p_t * log_q).sum(dim=2, keepdim=True)  # (B, N, 1, h, w)
    weight = weight.reshape(b, n, 1, h, w)
    kd = (kl * weight).sum() / weight.sum().clamp_min(torch.finfo(kl.dtype).tiny)  # mean over Omega
    return {"kd": tau**2 * kd, "cross": loss_cross}


def border_tokens(feats, strip=0.25, grid=(4, 2), omega=None):
    """Border-strip tokens of every view, Eq. (12).

    feats: (B, N, C, h, w) per-view feature maps (any C, any h, w).
    strip: width of each border strip as a fraction of w (rho of Eq. 12).
    grid:  (g_h, g_w) pooling grid; L = g_h * g_w tokens per strip.
    omega: None, or bool (B, N, 1, H, W) at any resolution, True where a pixel counts: then each
        token is a masked average, every feature cell weighed by the share of its pixels that
        count (a token with no such pixel is 0, and stays 0 after normalising).
    Returns (left, right), each (B, N, L, C): the pooled left and right strips of every view,
    each token L2-normalised, so that only directions (not magnitudes or the basis) matter.
    """
    b, n, c, h, w = feats.shape
    width = max(1, round(strip * w))
    x = feats.flatten(0, 1)  # (B*N, C, h, w)
    keep = None if omega is None else F.adaptive_avg_pool2d(omega.to(x.dtype).flatten(0, 1), (h, w))  # (B*N, 1, h, w)
    tokens = []
    for side in (slice(0, width), slice(w - width, w)):  # left strip, right strip
        if keep is None:
            pooled = F.adaptive_avg_pool2d(x[..., side], grid)  # (B*N, C, g_h, g_w)
        else:  # masked average pooling: mean(omega x) / mean(omega) in every grid cell
            share = F.adaptive_avg_pool2d(keep[..., side], grid)  # (B*N, 1, g_h, g_w)
            pooled = F.adaptive_avg_pool2d(x[..., side] * keep[..., side], grid)  # (B*N, C, g_h, g_w)
            pooled = pooled / torch.where(share > 0, share, 1.0)  # no kept pixel: 0, and a zero gradient
        t = pooled.flatten(2).transpose(1, 2)  # (B*N, L, C)
        tokens.append(F.normalize(t, dim=-1).reshape(b, n, -1, c))  # (B, N, L, C)
    return tokens[0], tokens[1]


def border_similarity(tokens, pairs):
    """Eq. (13) before the temperature: the cosine similarities X_n X_m^T of every adjacent pair.

    tokens: (left, right) border tokens from `border_tokens`, each (B, N, L, C).
    pairs:  the adjacent pairs A, [(n, m), ...]: the right border of n faces the left of m.
    Returns (B, |A|, L, L): row i compares token i of n's right strip with every token of m's left.
    """
    left, right = tokens
    n_idx = torch.tensor([p[0] for p in pairs], device=left.device)
    m_idx = torch.tensor([p[1] for p in pairs], device=left.device)
    x_n, x_m = right[:, n_idx], left[:, m_idx]  # (B, |A|, L, C) each
    return torch.einsum("bplc,bpqc->bplq", x_n, x_m)  # (B, |A|, L, L)


def relational_kd(student_tokens, teacher_tokens, pairs, tau=0.1):
    """View-relational KD, Eqs. (13)-(14), from border tokens.

    student_tokens, teacher_tokens: (left, right) pairs as returned by `border_tokens`, each
        (B, N, L, C_S) and (B, N, L, C_T); C_S and C_T may differ, L must match. The teacher's
        may also be given as its `border_similarity` (B, |A|, L, L) (what the teacher cache stores).
    pairs: the adjacent pairs A, [(n, m), ...]: the right border of n faces the left of m.
    tau:   temperature tau_v of the relation softmax (Eq. 13).
    Returns L_VRKD = mean over pairs, batch and rows of KL(R^T_nm[i] || R^S_nm[i]); 0 when
    the student's relations equal the teacher's.
    """
    # Eq. (13): row i of R_nm is a distribution over the L tokens of m, for token i of n.
    teacher_sim = teacher_tokens if torch.is_tensor(teacher_tokens) else border_similarity(teacher_tokens, pairs)
    log_r_t = torch.log_softmax(teacher_sim / tau, dim=-1).detach()  # (B, |A|, L, L)
    log_r_s = torch.log_softmax(border_similarity(student_tokens, pairs) / tau, dim=-1)
    # Eq. (14): row-wise KL(R^T || R^S), averaged over rows i, pairs (n, m) and the batch.
    kl = (log_r_t.exp() * (log_r_t - log_r_s)).sum(dim=-1)  # (B, |A|, L)
    return kl.mean()


def view_relational_kd(student_feats, teacher_feats, pairs, strip=0.25, grid=(4, 2), tau=0.1):
    """View-relational KD, Eqs. (12)-(14), from feature maps.

    student_feats: (B, N, C_S, h_S, w_S); teacher_feats: (B, N, C_T, h_T, w_T). Channels and
    sizes may differ: each side becomes L x L relation matrices, which do not depend on C.
    pairs, strip, grid, tau: as in `border_tokens` and `relational_kd`. Returns a scalar.
    """
    return relational_kd(border_tokens(student_feats, strip, grid),
                         border_tokens(teacher_feats, strip, grid), pairs, tau)


def aligned_teacher_depth(farness, target, mask, min_depth, max_depth):
    """The teacher made metric for response KD, Eq. (21): per view, the least-squares scale and shift.

    farness: (B, N, 1, H, W) the affine farness s of Eq. (6); r_hat = 1 - s is affine in the
        teacher's disparity r inside the 2-98 % percentile range (clipped outside), so aligning
        r_hat aligns r there.
    target, mask: (B, N, 1, H, W) sparse ground truth D* in meters and its mask M.
    Per view, (alpha, beta) = argmin sum_M (alpha r_hat + beta - 1 / D*)^2 (closed form);
    D_T = 1 / clamp(alpha r_hat + beta, 1 / max_depth, 1 / min_depth), in [min_depth, max_depth].
    Returns (D_T (B, N, 1, H, W) meters, fitted (B, N, 1, 1, 1) bool: views with >= 2 valid
    points and spread in r_hat, the only views whose D_T means anything). No gradient.
    """
    x = (1.0 - farness.float()).detach()
    w = mask.float()
    y = torch.where(mask, 1.0 / target.float().clamp_min(min_depth), torch.zeros_like(x))
    n, sx, sy = w.sum(dim=(-3, -2, -1)), (w * x).sum(dim=(-3, -2, -1)), (w * y).sum(dim=(-3, -2, -1))  # (B, N)
    sxx, sxy = (w * x * x).sum(dim=(-3, -2, -1)), (w * x * y).sum(dim=(-3, -2, -1))
    det = n * sxx - sx * sx  # n^2 var(x): 0 when a view has < 2 points or a constant r_hat
    fitted = (n >= 2) & (det > FIT_MIN_DET * n * n)
    alpha = torch.where(fitted, (n * sxy - sx * sy) / torch.where(fitted, det, torch.ones_like(det)), 0.0)
    beta = torch.where(fitted, (sy - alpha * sx) / n.clamp_min(1.0), 0.0)
    disparity = alpha[..., None, None, None] * x + beta[..., None, None, None]  # (B, N, 1, H, W)
    depth = 1.0 / disparity.clamp(1.0 / max_depth, 1.0 / min_depth)
    return depth, fitted[..., None, None, None]


def lidar_neighbourhood(mask, radius):
    """N_r(M) of Eq. (23): every pixel within `radius` pixels of a LiDAR pixel, in the max norm.

    mask: bool (..., H, W), the LiDAR mask M. radius: int >= 0; 0 gives M itself, r > 0 dilates M
    by a (2r + 1) x (2r + 1) square. Returns bool, the shape of mask.
    """
    if radius == 0:
        return mask
    m = mask.reshape(-1, 1, *mask.shape[-2:]).float()  # (M, 1, H, W)
    return (F.max_pool2d(m, 2 * radius + 1, stride=1, padding=radius) > 0).reshape(mask.shape)


def response_kd(pred, farness, target, mask, min_depth, max_depth, omega=None, lidar_radius=None):
    """Response KD with an aligned teacher, Eq. (21): L_rkd = SILog(D_hat, D_T; Omega), or off the
    LiDAR pixels, Eq. (23): L_off = SILog(D_hat, D_T; Omega minus N_r(M)).

    pred: (B, N, 1, H, W) student depth D_hat in meters. farness, target, mask, min_depth,
    max_depth: as `aligned_teacher_depth`, which makes the pseudo-depth D_T. Dense: every pixel
    Omega of every view whose alignment exists, not only LiDAR pixels (omega: optional bool
    (B, N, 1, H, W), False on pixels that never count, e.g. DDAD's ego car). The existing-KD
    baseline: the student copies the metric-aligned teacher, errors included.
    lidar_radius: None for Eq. (21); an int r >= 0 for Eq. (23): the LiDAR pixels and every pixel
    within r of one (`lidar_neighbourhood`) are left to L_si, so the teacher speaks only where the
    ground truth is silent. The alignment of D_T still uses the LiDAR pixels. Returns a scalar.
    """
    depth, fitted = aligned_teacher_depth(farness, target, mask, min_depth, max_depth)
    pixels = fitted.expand_as(pred) if omega is None else fitted.expand_as(pred) & omega
    if lidar_radius is not None:
        pixels = pixels & ~lidar_neighbourhood(mask, lidar_radius)  # Eq. (23)
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
class LossConfig:
    """Hyperparameters of Eq. (17). The defaults are the project's (README, "Ablation").

    pairs: the adjacent views A of Eq. (12), e.g. `rig.ADJACENT_PAIRS`.
    min_depth, max_depth: d_min, d_max in meters, which define the validity mask M.
    """

    pairs: tuple
    min_depth: float
    max_depth: float
    beta_bins: float = 0.0  # beta, weight of the bin chamfer of Eq. (16); AdaBins uses 0.1
    lambda_ckd: float = 0.1  # weight of L_CKD in Eq. (17); 0 turns CKD off
    lambda_cross: float = 1.0  # lambda_x, weight of L_cross inside L_CKD, Eq. (11)
    tau: float = 1.0  # temperature of the bin KD, Eq. (10)
    sigma: float = None  # width of the teacher's soft bins, Eq. (7); None: 1 / K
    lambda_vr: float = 1.0  # weight of L_VRKD in Eq. (17); 0 turns VRKD off
    vr_strip: float = 0.25  # border strip width ratio rho, Eq. (12)
    vr_grid: tuple = (4, 2)  # (g_h, g_w) token grid per strip, Eq. (12)
    vr_tau: float = 0.1  # temperature tau_v of the relation softmax, Eq. (13)
    vr_student: str = "features"  # student tokens of Eq. (12): "features" or "probs" (P^S)
    teacher_norm: str = "affine"  # normalisation of Eq. (6) behind P^T of Eq. (7): FARNESS_MODES
    lambda_rkd: float = 0.0  # weight of response KD, Eq. (21); 0: off (an existing-KD baseline)
    rkd_lidar_radius: int = None  # None: response KD on every pixel, Eq. (21); r >= 0: off N_r(M), Eq. (23)
    lambda_fkd: float = 0.0  # weight of feature KD, Eq. (22); 0: off (an existing-KD baseline)


def objective(out, target, cfg, farness=None, teacher_tokens=None, omega=None, teacher_features=None,
              adapter=None):
    """The training objective, Eq. (17):
    L = L_si + beta L_bins + lambda_ckd (L_kd + lambda_x L_cross) + lambda_vr L_VRKD,
    plus the existing-KD baselines lambda_rkd L_rkd (Eq. 21) + lambda_fkd L_fkd (Eq. 22), off by default
    (with cfg.rkd_lidar_radius set, L_rkd is Eq. (23)'s L_off).

    out: the student's outputs, {'depth' (B, N, 1, H, W) m, 'logits' (B, N, K, h, w),
        'centers' (B, N, K) m, 'features' (B, N, C, h', w')}.
    target: (B, N, 1, H, W) sparse ground truth D* in meters, 0 where there is none.
    cfg: a LossConfig.
    farness: (B, N, 1, H, W) the teacher's normalised farness s of Eq. (6), affine mode; needed
        when cfg.lambda_ckd > 0 or cfg.lambda_rkd > 0. P^T of Eq. (7) is built from it here, in
        cfg.teacher_norm. A coarser s (B, N, 1, h, w) (the teacher cache stores it at the logit
        stride) is first upsampled bilinearly to (H, W).
    teacher_tokens: (left, right) border tokens of the teacher, each (B, N, L, C_T), from
        `border_tokens` (Eq. 12), or their `border_similarity` (B, |A|, L, L); needed when
        cfg.lambda_vr > 0.
    omega: None, or bool (B, N, 1, H, W), True where a pixel counts (False on the ego car's body):
        the pixels Omega of the dense terms, Eq. (10), and of the student's token pooling, Eq. (12).
        The teacher's tokens must be pooled with the same omega (`cache.distillation_targets`).
        The supervised terms keep the mask M of the ground truth.
    teacher_features, adapter: (B, N, C_T, h_T, w_T) teacher features and the 1x1 adapter of
        Eq. (22); needed when cfg.lambda_fkd > 0.
    Every term is computed in float32 with autocast off, whatever precision the forward ran in:
    the einsums of Eqs. (5), (8) and (13) lose too much in bf16.
    Returns (scalar loss, {term name: detached float32 scalar}) with the terms 'si', 'bins' and,
    when switched on, 'kd', 'cross', 'vr', 'rkd', 'fkd'.
    """
    with torch.autocast(target.device.type, enabled=False):
        out = {k: v.float() for k, v in out.items()}
        target = target.float()
        mask = valid_mask(target, cfg.min_depth, cfg.max_depth)  # M
        terms = {"si": silog(out["depth"], target, mask)}  # Eq. (15)
        with torch.set_grad_enabled(torch.is_grad_enabled() and cfg.beta_bins > 0):  # beta = 0: logged only
            terms["bins"] = bin_chamfer(out["centers"], target, mask)  # Eq. (16)
        loss = terms["si"] + cfg.beta_bins * terms["bins"] if cfg.beta_bins > 0 else terms["si"]
        if farness is not None:
            farness = farness.float()
            if farness.shape[-2:] != target.shape[-2:]:  # a cached, coarse s: back to (H, W)
                farness = F.interpolate(farness.flatten(0, 1), size=target.shape[-2:], mode="bilinear",
                                        align_corners=False).unflatten(0, farness.shape[:2])  # (B, N, 1, H, W)
        if cfg.lambda_ckd > 0:
            k = out["logits"].shape[2]
            s = remap_farness(farness, cfg.teacher_norm)  # Eq. (6) in cfg's normalisation
            probs = farness_bin_probs(s, k, cfg.sigma)  # Eq. (7), (B, N, K, H, W)
            ckd = cross_interaction_kd(out["logits"], out["centers"], probs, target, mask, cfg.tau, omega)
            terms.update(ckd)
            loss = loss + cfg.lambda_ckd * (ckd["kd"] + cfg.lambda_cross * ckd["cross"])  # Eq. (11)
        if cfg.lambda_vr > 0:
            feats = out["features"] if cfg.vr_student == "features" else torch.softmax(out["logits"], dim=2)
            student_tokens = border_tokens(feats, cfg.vr_strip, tuple(cfg.vr_grid), omega)  # Eq. (12)
            teacher_tokens = (teacher_tokens.float() if torch.is_tensor(teacher_tokens)
                              else tuple(t.float() for t in teacher_tokens))
            terms["vr"] = relational_kd(student_tokens, teacher_tokens, cfg.pairs, cfg.vr_tau)  # Eq. (14)
            loss = loss + cfg.lambda_vr * terms["vr"]
        if cfg.lambda_rkd > 0:
            terms["rkd"] = response_kd(out["depth"], farness, target, mask, cfg.min_depth, cfg.max_depth,
                                       omega, cfg.rkd_lidar_radius)  # Eq. (21), or Eq. (23) off the LiDAR
            loss = loss + cfg.lambda_rkd * terms["rkd"]
        if cfg.lambda_fkd > 0:
            terms["fkd"] = feature_kd(out["features"], teacher_features, adapter)  # Eq. (22)
            loss = loss + cfg.lambda_fkd * terms["fkd"]
    return loss, {k: v.detach() for k, v in terms.items()}
