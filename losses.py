"""Every loss of the method, as small pure functions in one file that imports only torch.

Copy this file alone into another project. Equation numbers refer to the README's method section
(the project's own formulation of the paper's abstract):
- `normalised_farness`, `remap_farness`  Eq. (6)  the teacher's scale-invariant farness s
- `farness_bin_probs`, `teacher_bin_probs`  Eq. (7)  the teacher's bin probabilities P^T
- `cross_depth`, `cross_interaction_kd`  Eqs. (8)-(11) CKD: the cross depth D_x, L_kd and L_cross
- `teacher_unclipped`       the pixels where Eq. (6) did not clip the teacher (used by Eq. 21)
- `border_tokens`         Eq. (12)  pooled, L2-normalised border-strip tokens of each view
- `border_similarity`     Eq. (13)  cosine similarities of adjacent border tokens (before tau_v)
- `relational_kd`         Eqs. (13)-(14) VRKD from border tokens
- `view_relational_kd`    Eqs. (12)-(14) VRKD from feature maps
- `silog`                 Eq. (15)  scale-invariant log loss, also L_cross of Eq. (9)
- `bin_chamfer`           Eq. (16)  bin centers <-> ground-truth depths
- `valid_mask`            the validity mask M, d_min < D* < d_max (losses and every metric)
- `LossConfig`, `objective` Eq. (17) the whole training objective, in fp32 even under autocast
The existing-KD approaches we compare with (Eqs. 21-23) are in `kd_baselines.py`, not here.

Shapes: B batch, N views, K bins, C channels, (H, W) ground-truth resolution, (h, w) a feature
or logit resolution. Depths are in meters. A `mask` is a bool tensor, True where a pixel counts.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# Eq. (6): percentiles that define the teacher's robust per-image disparity range.
FARNESS_Q_LO = 0.02
FARNESS_Q_HI = 0.98
# Eq. (6), mode "log": the inverse-depth ratio (farthest / nearest inside the percentile range)
# below which the log-disparity farness saturates at 1; 1/64 spans the 1.25-80 m range.
LOG_FARNESS_FLOOR = 1.0 / 64.0
FARNESS_MODES = ("affine", "log", "rank")  # the teacher normalisations of Eq. (6) (README, Eq. 6 study)
# Eq. (21): s within this of 0 or 1 counts as clipped by Eq. (6)'s percentiles (half a level of
# the teacher cache's 8-bit s, 255 levels): there the teacher has no depth of its own (the sky among them).
CLIPPED_EPS = 0.5 / 255
# Eq. (15): the SILog constants of AdaBins / BTS. alpha scales the loss to the range of the
# other terms; lambda = 0.85 weights the scale-invariant part (lambda = 1 is fully scale-invariant).
SILOG_ALPHA = 10.0
SILOG_LAMBDA = 0.85
# Smallest depth fed to a log, in meters (the d_min of the README's "Setting").
LOG_DEPTH_FLOOR = 0.1
# Keeps sqrt differentiable when the SILog variance is exactly 0 (loss <= 1e-5 there).
SQRT_EPS = 1e-12


def valid_mask(depth, min_depth, max_depth):
    """The validity mask M: True where min_depth < depth < max_depth (meters). Works on torch
    tensors and numpy arrays alike, so the losses and every metric of Eq. (18) share it."""
    return (depth > min_depth) & (depth < max_depth)


def normalised_farness(disparity, mode="affine"):
    """Affine-invariant normalised farness s, Eq. (6), from a teacher's relative disparity.

    disparity: (..., 1, H, W) relative inverse depth r ~ a / D + b, any a > 0 and b.
    r_hat = clip((r - q_lo) / (q_hi - q_lo), 0, 1) with the 2nd / 98th percentiles of each map;
    s = 1 - r_hat in [0, 1]: 0 nearest, 1 farthest (sky). Replacing r by a*r + b (a > 0) moves
    q_lo and q_hi the same way, so s does not change: the teacher's unknown scale is gone.
    mode: "affine" (s as above), "log" or "rank": see `remap_farness`.
    Returns s with the shape of `disparity`.
    """
    shape = disparity.shape
    r = disparity.reshape(-1, shape[-2] * shape[-1])  # (M, H*W)
    r = r if r.dtype == torch.float64 else r.float()
    q = torch.quantile(r, torch.tensor([FARNESS_Q_LO, FARNESS_Q_HI], device=r.device, dtype=r.dtype), dim=1)
    q_lo, q_hi = q[0, :, None], q[1, :, None]  # (M, 1) each
    r_hat = ((r - q_lo) / (q_hi - q_lo).clamp_min(torch.finfo(r.dtype).eps)).clamp(0.0, 1.0)
    return remap_farness((1.0 - r_hat).reshape(shape), mode)


def remap_farness(farness, mode):
    """Eq. (6) in another normalisation, from the affine farness s = 1 - r_hat: (..., 1, H, W) -> same.

    "affine": s itself; linear in inverse depth, so K uniform bins crowd the near range.
    "log":    s = log(r_hat (1 - e) + e) / log(e), e = LOG_FARNESS_FLOOR: linear in log inverse
              depth (log depth) where r_hat >> e, so the bins are uniform in log depth.
    "rank":   s = 1 - (number of pixels of the map farther than p, larger s) / (H W - 1): the
              per-image quantile; every bin holds the same share of pixels. Ties share the
              farthest value, so the sky stays at 1.
    All three are 0 at the nearest pixels, 1 at the farthest (sky) and unchanged by r -> a r + b.
    """
    if mode == "affine":
        return farness
    if mode == "log":
        r_hat = 1.0 - farness.float()
        return torch.log(r_hat * (1.0 - LOG_FARNESS_FLOOR) + LOG_FARNESS_FLOOR) / math.log(LOG_FARNESS_FLOOR)
    if mode == "rank":
        shape = farness.shape
        s = farness.reshape(-1, shape[-2] * shape[-1]).float()  # (M, H*W)
        not_farther = torch.searchsorted(torch.sort(s, dim=1).values, s, right=True)  # (M, H*W): s' <= s
        farther = s.shape[1] - not_farther
        return (1.0 - farther.float() / max(1, s.shape[1] - 1)).reshape(shape)
    raise ValueError(f"farness mode must be one of {FARNESS_MODES}, got {mode!r}")


def farness_bin_probs(farness, num_bins, sigma=None):
    """Teacher bin probabilities P^T from normalised farness s, Eq. (7).

    farness: (..., 1, H, W) in [0, 1], a constant (the teacher is frozen: no gradient flows
    into s). Returns (..., K, H, W), each pixel a distribution over
    K bins: P^T_k = softmax_k(-(s - u_k)^2 / (2 sigma^2)), u_k = (k - 1/2) / K, sigma = 1/K by
    default. Bin k means "the k-th slice of this scene's depth ordering", with no metric scale.
    """
    sigma = 1.0 / num_bins if sigma is None else sigma
    u = (torch.arange(num_bins, device=farness.device, dtype=torch.float32) + 0.5) / num_bins  # (K,)
    u = u.reshape((1,) * (farness.dim() - 3) + (num_bins, 1, 1))  # (..., K, 1, 1)
    # -(s - u_k)^2 / (2 sigma^2), computed in place on the one (..., K, H, W) temporary: P^T is
    # the largest tensor of a KD step, and this is ~40 % faster than the out-of-place chain.
    z = farness.float() - u
    z.mul_(z).mul_(-0.5 / sigma**2)
    return torch.softmax(z, dim=-3)  # (..., K, H, W)


def teacher_bin_probs(disparity, num_bins, sigma=None):
    """Scale-invariant teacher bin probabilities P^T, Eqs. (6)-(7), from raw teacher disparity.

    disparity: (..., 1, H, W) relative inverse depth. Returns (..., K, H, W) probabilities,
    unchanged (up to float rounding) when disparity becomes a * disparity + b with a > 0.
    """
    return farness_bin_probs(normalised_farness(disparity), num_bins, sigma)


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


def cross_depth(teacher_probs, centers):
    """Eq. (8): the cross depth D_x = sum_k P^T_k c_k, teacher probabilities (B, N, K, H, W) with student
    centers (B, N, K) in meters -> (B, N, 1, H, W) meters."""
    return torch.einsum("bnkhw,bnk->bnhw", teacher_probs, centers).unsqueeze(2)


def teacher_unclipped(farness):
    """The pixels where the teacher's farness s (Eq. 6) was not clipped: 0 < s < 1 (up to CLIPPED_EPS),
    (..., 1, H, W) -> bool. Clipped pixels (the sky, the 2 % farthest and nearest) have no depth of their own."""
    return (farness > CLIPPED_EPS) & (farness < 1.0 - CLIPPED_EPS)


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
    cross = cross_depth(teacher_probs, centers)  # (B, N, 1, H, W)
    # Eq. (9): P^T is a constant (the teacher is frozen), so the gradient of L_cross flows only
    # through the centers c: into the bin-width MLP and, through GAP of the bottleneck (Eq. 2),
    # into the encoder; never into the logit head or the decoder. The centers learn the metric
    # depth of each of the teacher's slices from the ground truth: the metric scale.
    loss_cross = silog(cross, target, mask)

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


def full_resolution_farness(farness, size):
    """The teacher's farness s at the ground truth's size (H, W): (B, N, 1, h, w) -> (B, N, 1, H, W).
    A coarser s (the teacher cache stores it at the logit stride) is upsampled bilinearly."""
    farness = farness.float()
    if farness.shape[-2:] == tuple(size):
        return farness
    return F.interpolate(farness.flatten(0, 1), size=tuple(size), mode="bilinear",
                         align_corners=False).unflatten(0, farness.shape[:2])


def objective(out, target, cfg, farness=None, teacher_tokens=None, omega=None):
    """The training objective, Eq. (17):
    L = L_si + beta L_bins + lambda_ckd (L_kd + lambda_x L_cross) + lambda_vr L_VRKD.

    out: the student's outputs, {'depth' (B, N, 1, H, W) m, 'logits' (B, N, K, h, w),
        'centers' (B, N, K) m, 'features' (B, N, C, h', w')}.
    target: (B, N, 1, H, W) sparse ground truth D* in meters, 0 where there is none (a sample
        without any, an unlabelled image, gets only the teacher's terms L_kd and L_VRKD).
    cfg: a LossConfig.
    farness: (B, N, 1, H, W) the teacher's normalised farness s of Eq. (6), affine mode; needed
        when cfg.lambda_ckd > 0. P^T of Eq. (7) is built from it here, in cfg.teacher_norm. A
        coarser s (B, N, 1, h, w) is first upsampled (`full_resolution_farness`).
    teacher_tokens: (left, right) border tokens of the teacher, each (B, N, L, C_T), from
        `border_tokens` (Eq. 12), or their `border_similarity` (B, |A|, L, L); needed when
        cfg.lambda_vr > 0.
    omega: None, or bool (B, N, 1, H, W), True where a pixel counts (False on the ego car's body):
        the pixels Omega of the dense terms, Eq. (10), and of the student's token pooling, Eq. (12).
        The teacher's tokens must be pooled with the same omega. The supervised terms keep the
        mask M of the ground truth.
    Every term is computed in float32 with autocast off, whatever precision the forward ran in:
    the einsums of Eqs. (5), (8) and (13) lose too much in bf16.
    Returns (scalar loss, {term name: detached float32 scalar}) with the terms 'si', 'bins' and,
    when switched on, 'kd', 'cross', 'vr'.
    """
    with torch.autocast(target.device.type, enabled=False):
        out = {k: v.float() for k, v in out.items()}
        target = target.float()
        mask = valid_mask(target, cfg.min_depth, cfg.max_depth)  # M
        terms = {"si": silog(out["depth"], target, mask)}  # Eq. (15)
        with torch.set_grad_enabled(torch.is_grad_enabled() and cfg.beta_bins > 0):  # beta = 0: logged only
            terms["bins"] = bin_chamfer(out["centers"], target, mask)  # Eq. (16)
        loss = terms["si"] + cfg.beta_bins * terms["bins"] if cfg.beta_bins > 0 else terms["si"]
        if cfg.lambda_ckd > 0:
            k = out["logits"].shape[2]
            s = remap_farness(full_resolution_farness(farness, target.shape[-2:]), cfg.teacher_norm)  # Eq. (6)
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
    return loss, {k: v.detach() for k, v in terms.items()}
