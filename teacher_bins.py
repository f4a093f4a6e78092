"""The teacher's side of the method: scale-invariant teacher bin probabilities, Eqs. (6)-(7).

A relative-depth teacher predicts r ~ a / D + b with unknown a > 0 and b. Its normalised farness
s (Eq. 6) does not change with a or b, and P^T (Eq. 7) puts each pixel into K soft bins of the
scene's depth ordering. Imports only torch; `losses.py` uses it for CKD (Eqs. 8-11) and response
KD (Eq. 21), the teachers for their token maps.
- `normalised_farness`  Eq. (6)   affine-invariant normalisation of teacher disparity
- `remap_farness`       Eq. (6)   the log-disparity and rank normalisations (README, Eq. 6 study)
- `farness_bin_probs`   Eq. (7)   P^T from s
- `teacher_bin_probs`   Eqs. (6)-(7) P^T from raw disparity
Shapes: (..., 1, H, W) maps, K bins.
"""
import math

import torch

# Eq. (6): percentiles that define the teacher's robust per-image disparity range.
FARNESS_Q_LO = 0.02
FARNESS_Q_HI = 0.98
# Eq. (6), mode "log": the inverse-depth ratio (farthest / nearest inside the percentile range)
# below which the log-disparity farness saturates at 1; 1/64 spans the 1.25-80 m range.
LOG_FARNESS_FLOOR = 1.0 / 64.0
FARNESS_MODES = ("affine", "log", "rank")  # the teacher normalisations of Eq. (6) (README, Eq. 6 study)


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
