"""The math of the method, Eqs. (1)-(20), pinned value by value.

Every function of the method is compared with a hand-computed value, or with an independent
restatement of its equation written here in numpy (float64) straight from the README's method
section, never by calling the project's own helper. The constants of the method are written out
as literals (alpha = 10, lambda = 0.85, percentiles 2 / 98, sigma = 1 / K, delta = 1.25^k, ...),
so that a changed constant, a reversed KL, a softmax over the wrong axis or a misplaced weight
changes a number that a test checks. `docs/sections/mathtests.md` lists the source mutations
these tests were run against and the test that fails on each.
"""
import math

import numpy as np
import pytest
import torch

import evaluate
import losses
import model
import rig
from model import Student, StudentConfig
from rig import ADJACENT_PAIRS, CAMERAS

D_MIN, D_MAX = 0.1, 80.0  # the depth range of the README's "Setting" (nuScenes)


def _rng(seed):
    return np.random.default_rng(seed)


def _t(x):
    return torch.from_numpy(np.asarray(x, dtype=np.float64))


def _np(x):
    return x.detach().double().cpu().numpy()


# ------------------------------------------------------------- references, from the equations

def ref_silog(pred, target, mask, alpha=10.0, lam=0.85):
    """Eq. (15): g = log D_hat - log D* on M (depths floored at 0.1 m), alpha sqrt(mean g^2 - lam mean(g)^2)."""
    g = np.log(np.maximum(pred[mask], 0.1)) - np.log(np.maximum(target[mask], 0.1))
    return alpha * math.sqrt(np.mean(g**2) - lam * np.mean(g) ** 2 + 1e-12)


def ref_chamfer(centers, target, mask):
    """Eq. (16): per view, mean_k min_p (c_k - D*_p)^2 + mean_p min_k (c_k - D*_p)^2, mean over views with M."""
    c = centers.reshape(-1, centers.shape[-1])  # (M, K)
    t = target.reshape(c.shape[0], -1)
    m = mask.reshape(c.shape[0], -1)
    per_view = []
    for ci, ti, mi in zip(c, t, m):
        if mi.any():
            d = (ci[:, None] - ti[mi][None, :]) ** 2  # (K, P)
            per_view.append(d.min(axis=1).mean() + d.min(axis=0).mean())
    return float(np.mean(per_view))


def ref_farness(r):
    """Eq. (6): s = 1 - clip((r - q_2) / (q_98 - q_2), 0, 1), percentiles per map (linear interpolation)."""
    flat = r.reshape(-1, r.shape[-2] * r.shape[-1])
    lo, hi = np.quantile(flat, 0.02, axis=1)[:, None], np.quantile(flat, 0.98, axis=1)[:, None]
    return (1.0 - np.clip((flat - lo) / (hi - lo), 0.0, 1.0)).reshape(r.shape)


def _softmax(z, axis):
    z = z - z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def _log_softmax(z, axis):
    z = z - z.max(axis=axis, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=axis, keepdims=True))


def ref_bin_probs(s, k, sigma=None):
    """Eq. (7): s (..., 1, H, W) -> P^T (..., K, H, W) = softmax_k(-(s - u_k)^2 / (2 sigma^2)),
    u_k = (k - 1/2) / K for k = 1..K, sigma = 1 / K by default."""
    sigma = 1.0 / k if sigma is None else sigma
    u = (np.arange(1, k + 1) - 0.5) / k
    z = -((s[..., 0, :, :, None] - u) ** 2) / (2.0 * sigma**2)  # (..., H, W, K)
    return np.moveaxis(_softmax(z, axis=-1), -1, -3)


def ref_adaptive_pool(x, out_hw):
    """Average over the cells of an adaptive grid: cell i spans [floor(i H / h), ceil((i + 1) H / h))."""
    big_h, big_w = x.shape[-2:]
    h, w = out_hw
    out = np.zeros(x.shape[:-2] + (h, w))
    for i in range(h):
        for j in range(w):
            r0, r1 = (i * big_h) // h, -((-(i + 1) * big_h) // h)
            c0, c1 = (j * big_w) // w, -((-(j + 1) * big_w) // w)
            out[..., i, j] = x[..., r0:r1, c0:c1].mean(axis=(-2, -1))
    return out


def ref_ckd(logits, centers, probs, target, mask, tau):
    """Eqs. (8)-(10): L_kd = tau^2 mean_p KL(P^T(p) || softmax(z(p) / tau)) with P^T average-pooled
    to the logit resolution; L_cross = SILog(sum_k P^T_k c_k, D*; M)."""
    cross = np.einsum("bnkhw,bnk->bnhw", probs, centers)[:, :, None]  # (B, N, 1, H, W)
    p = ref_adaptive_pool(probs, logits.shape[-2:])  # (B, N, K, h, w)
    log_q = _log_softmax(logits / tau, axis=2)
    log_p = np.log(np.where(p > 0, p, 1.0))
    kl = (p * (log_p - log_q)).sum(axis=2)  # (B, N, h, w)
    return {"kd": tau**2 * kl.mean(), "cross": ref_silog(cross, target, mask)}


def ref_border_tokens(feats, strip, grid):
    """Eq. (12): (left, right) tokens (B, N, g_h g_w, C), row-major over the grid, unit length."""
    w = feats.shape[-1]
    width = max(1, round(strip * w))
    out = []
    for part in (feats[..., :width], feats[..., w - width:]):
        pooled = ref_adaptive_pool(part, grid)  # (B, N, C, g_h, g_w)
        tokens = np.swapaxes(pooled.reshape(pooled.shape[:3] + (-1,)), -1, -2)  # (B, N, L, C)
        out.append(tokens / np.linalg.norm(tokens, axis=-1, keepdims=True))
    return tuple(out)


def ref_vrkd(student, teacher, pairs, tau):
    """Eqs. (13)-(14): R_nm = softmax over the L tokens of m (each row) of X_n X_m^T / tau, X_n the
    right strip of n, X_m the left strip of m; mean over pairs, batch and rows of KL(R^T || R^S)."""
    kls = []
    for n, m in pairs:
        rel = [_log_softmax(np.einsum("blc,bqc->blq", right[:, n], left[:, m]) / tau, axis=-1)
               for left, right in (teacher, student)]
        kls.append((np.exp(rel[0]) * (rel[0] - rel[1])).sum(axis=-1))  # (B, L)
    return float(np.mean(kls))


def ref_centers(widths, d_min, d_max):
    """Eq. (3): e_0 = d_min, e_k = d_min + (d_max - d_min) sum_{j<=k} w_j, c_k = (e_{k-1} + e_k) / 2."""
    edges = np.concatenate([np.full(widths.shape[:-1] + (1,), d_min),
                            d_min + (d_max - d_min) * np.cumsum(widths, axis=-1)], axis=-1)
    return 0.5 * (edges[..., :-1] + edges[..., 1:])


def ref_depth_metrics(pred, gt, d_min=D_MIN, d_max=D_MAX, median_scaling=False):
    """Eq. (18) on d_min < D* < d_max, optional median scaling, then the prediction clamped."""
    valid = (gt > d_min) & (gt < d_max)
    if not valid.any():
        return None
    p, g = pred[valid].astype(np.float64), gt[valid].astype(np.float64)
    if median_scaling:
        p = p * np.median(g) / np.median(p)
    p = np.clip(p, d_min, d_max)
    delta = np.maximum(g / p, p / g)
    return {"abs_rel": np.mean(np.abs(g - p) / g), "sq_rel": np.mean((g - p) ** 2 / g),
            "rmse": np.sqrt(np.mean((g - p) ** 2)), "rmse_log": np.sqrt(np.mean(np.log(g / p) ** 2)),
            "a1": np.mean(delta < 1.25), "a2": np.mean(delta < 1.25**2), "a3": np.mean(delta < 1.25**3)}


# --------------------------------------------------------------------------- SILog, Eq. (15)

# g = (log 2, 0): mean g^2 = (log 2)^2 / 2, mean(g)^2 = (log 2)^2 / 4, so
# L = 10 sqrt((log 2)^2 (1/2 - 0.85 / 4)) = 10 log 2 sqrt(0.2875) = 3.7165877
SILOG_LOG2 = 10 * math.log(2) * math.sqrt(0.2875)


def test_silog_hand_computed():
    pred, target = torch.tensor([[4.0, 3.0]], dtype=torch.float64), torch.tensor([[2.0, 3.0]], dtype=torch.float64)
    mask = torch.tensor([[True, True]])
    assert SILOG_LOG2 == pytest.approx(3.7165877, rel=1e-7)
    assert losses.silog(pred, target, mask).item() == pytest.approx(SILOG_LOG2, rel=1e-9)
    # explicit alpha and lambda: 2 sqrt((log 2)^2 (1/2 - 1/4)) = log 2
    assert losses.silog(pred, target, mask, alpha=2.0, lam=1.0).item() == pytest.approx(math.log(2), rel=1e-9)
    # the mask decides: with only the second pixel, g = 0 and L = 10 sqrt(1e-12) = 1e-5
    only = torch.tensor([[False, True]])
    assert losses.silog(pred, target, only).item() == pytest.approx(1e-5, rel=1e-6)


def test_silog_log_floor_is_a_tenth_of_a_meter():
    # pred 0.02 m is floored to 0.1 m: g = (log 0.1, 0) -> 10 log 10 sqrt(0.2875); target likewise
    mask = torch.tensor([True, True])
    pred, target = torch.tensor([0.02, 1.0], dtype=torch.float64), torch.tensor([1.0, 1.0], dtype=torch.float64)
    expected = 10 * math.log(10) * math.sqrt(0.2875)
    assert losses.silog(pred, target, mask).item() == pytest.approx(expected, rel=1e-9)
    assert losses.silog(target, pred, mask).item() == pytest.approx(expected, rel=1e-9)


def test_silog_matches_reference_on_surround_batch():
    rng = _rng(0)
    target = rng.uniform(0.5, 70.0, (2, 6, 1, 8, 12))
    pred = target * np.exp(rng.normal(0.2, 0.4, target.shape))
    mask = rng.random(target.shape) < 0.4
    got = losses.silog(_t(pred), _t(target), torch.from_numpy(mask)).item()
    assert got == pytest.approx(ref_silog(pred, target, mask), rel=1e-10)
    got = losses.silog(_t(pred), _t(target), torch.from_numpy(mask), alpha=3.0, lam=0.5).item()
    assert got == pytest.approx(ref_silog(pred, target, mask, 3.0, 0.5), rel=1e-10)


# ------------------------------------------------------------------- bin chamfer, Eq. (16)

def test_bin_chamfer_matches_reference():
    rng = _rng(1)
    centers = np.sort(rng.uniform(1, 60, (2, 3, 5)), axis=-1)
    target = rng.uniform(1, 60, (2, 3, 1, 4, 6))
    mask = rng.random(target.shape) < 0.3
    mask[0, 1] = False  # a view without ground truth does not count
    got = losses.bin_chamfer(_t(centers), _t(target), torch.from_numpy(mask)).item()
    assert got == pytest.approx(ref_chamfer(centers, target, mask), rel=1e-10)


# ------------------------------------------------------------ teacher P^T, Eqs. (6)-(7)

def test_normalised_farness_matches_reference():
    rng = _rng(2)
    r = rng.normal(0.0, 1.0, (2, 3, 1, 9, 11)) ** 3  # heavy tails: the clip matters
    s = losses.normalised_farness(_t(r))
    np.testing.assert_allclose(_np(s), ref_farness(r), rtol=0, atol=1e-12)
    assert (_np(s) == 0.0).any() and (_np(s) == 1.0).any()  # both clips are active


def test_bin_probs_hand_computed():
    # K = 2, sigma = 1 / 2, u = (1/4, 3/4), s = 0: logits -(1/16) / (1/2) = -1/8 and -(9/16) / (1/2)
    # = -9/8, one apart: P^T = (1 / (1 + e^-1), e^-1 / (1 + e^-1)) = (0.7310586, 0.2689414)
    p = losses.farness_bin_probs(torch.zeros(1, 1, 1), 2)[:, 0, 0]
    expected = 1.0 / (1.0 + math.exp(-1.0))
    assert expected == pytest.approx(0.7310586, rel=1e-7)
    assert p[0].item() == pytest.approx(expected, rel=1e-6)
    assert p[1].item() == pytest.approx(1.0 - expected, rel=1e-6)
    # sigma = 1: logits -1/32 and -9/32, P^T_1 = 1 / (1 + e^-1/4)
    p = losses.farness_bin_probs(torch.zeros(1, 1, 1), 2, sigma=1.0)[:, 0, 0]
    assert p[0].item() == pytest.approx(1.0 / (1.0 + math.exp(-0.25)), rel=1e-6)


@pytest.mark.parametrize("k,sigma", [(8, None), (5, 0.3)])
def test_bin_probs_match_reference(k, sigma):
    s = _rng(3).random((2, 3, 1, 5, 7))
    got = losses.farness_bin_probs(_t(s), k, sigma)
    assert got.shape == (2, 3, k, 5, 7)
    np.testing.assert_allclose(_np(got), ref_bin_probs(s, k, sigma), rtol=0, atol=2e-6)


def test_teacher_bin_probs_matches_reference():
    r = 1.0 / _rng(4).uniform(1.0, 60.0, (1, 2, 1, 10, 12))
    got = losses.teacher_bin_probs(_t(r), 6)
    np.testing.assert_allclose(_np(got), ref_bin_probs(ref_farness(r), 6), rtol=0, atol=2e-6)


def test_teacher_bin_probs_passes_sigma_on():
    r = 1.0 / _rng(19).uniform(1.0, 60.0, (1, 1, 1, 6, 8))
    got = losses.teacher_bin_probs(_t(r), 4, sigma=0.4)
    np.testing.assert_allclose(_np(got), ref_bin_probs(ref_farness(r), 4, 0.4), rtol=0, atol=2e-6)


# ------------------------------------------------------------------- CKD, Eqs. (8)-(11)

def test_ckd_hand_computed():
    # one pixel, K = 2, same resolution. P^T = (1/2, 1/2), z = (2, 0), tau = 2: softmax(z / 2) =
    # (q, 1 - q) with q = 1 / (1 + e^-1); L_kd = 4 (1/2 log(1/2 / q) + 1/2 log(1/2 / (1 - q)))
    #                                          = -2 (log 4 + log(q (1 - q))) = 0.4804580
    q = 1.0 / (1.0 + math.exp(-1.0))
    expected = -2.0 * (math.log(4.0) + math.log(q * (1.0 - q)))
    assert expected == pytest.approx(0.4804580, rel=1e-6)
    probs = torch.full((1, 1, 2, 1, 1), 0.5, dtype=torch.float64)
    logits = torch.tensor([2.0, 0.0], dtype=torch.float64).reshape(1, 1, 2, 1, 1)
    centers = torch.tensor([[[2.0, 6.0]]], dtype=torch.float64)
    target, mask = torch.full((1, 1, 1, 1, 1), 4.0, dtype=torch.float64), torch.ones(1, 1, 1, 1, 1, dtype=torch.bool)
    out = losses.cross_interaction_kd(logits, centers, probs, target, mask, tau=2.0)
    assert out["kd"].item() == pytest.approx(expected, rel=1e-9)
    # one-hot P^T = (1, 0) against uniform q at tau = 3: 9 log 2
    onehot = torch.tensor([1.0, 0.0], dtype=torch.float64).reshape(1, 1, 2, 1, 1)
    out = losses.cross_interaction_kd(torch.zeros_like(logits), centers, onehot, target, mask, tau=3.0)
    assert out["kd"].item() == pytest.approx(9.0 * math.log(2.0), rel=1e-9)


def test_ckd_cross_depth_uses_teacher_probs_and_student_centers():
    # P^T = (1/4, 3/4) everywhere, centers (2, 6): D_x = 0.5 + 4.5 = 5 m. Against D* = (5, 10):
    # g = (0, -log 2), the SILog of the hand example above.
    probs = torch.tensor([0.25, 0.75], dtype=torch.float64).reshape(1, 1, 2, 1, 1).expand(1, 1, 2, 1, 2)
    centers = torch.tensor([[[2.0, 6.0]]], dtype=torch.float64)
    target = torch.tensor([5.0, 10.0], dtype=torch.float64).reshape(1, 1, 1, 1, 2)
    mask = torch.ones(1, 1, 1, 1, 2, dtype=torch.bool)
    out = losses.cross_interaction_kd(torch.zeros(1, 1, 2, 1, 2, dtype=torch.float64), centers, probs, target, mask)
    assert out["cross"].item() == pytest.approx(SILOG_LOG2, rel=1e-9)


@pytest.mark.parametrize("hw,tau", [((4, 6), 2.0), ((3, 4), 0.5), ((8, 12), 1.0)])
def test_ckd_matches_reference(hw, tau):
    rng = _rng(5)
    k, big = 6, (8, 12)
    probs = ref_bin_probs(rng.random((2, 2, 1) + big), k)
    logits = 3.0 * rng.normal(size=(2, 2, k) + hw)
    centers = np.sort(rng.uniform(1, 60, (2, 2, k)), axis=-1)
    target = rng.uniform(1, 60, (2, 2, 1) + big)
    mask = rng.random(target.shape) < 0.4
    got = losses.cross_interaction_kd(_t(logits), _t(centers), _t(probs), _t(target), torch.from_numpy(mask), tau)
    ref = ref_ckd(logits, centers, probs, target, mask, tau)
    assert got["kd"].item() == pytest.approx(ref["kd"], rel=1e-9)
    assert got["cross"].item() == pytest.approx(ref["cross"], rel=1e-9)


# ------------------------------------------------------------------ VRKD, Eqs. (12)-(14)

def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _tokens(right_n, left_m, seed=0):
    """(left, right) of 2 views, each (1, 2, L, C): right strip of view 0 and left strip of view 1
    given, the two strips that pair (0, 1) does not use filled with noise."""
    noise = _unit(_rng(seed).normal(size=(2,) + np.shape(right_n)))
    left = np.stack([noise[0], left_m])[None]
    right = np.stack([right_n, noise[1]])[None]
    return _t(left), _t(right)


def test_relational_kd_hand_computed_symmetric_case():
    # teacher: X_n = X_m = I, student: X_m swapped. tau = 1/2: R^T rows (p, 1 - p), R^S rows
    # (1 - p, p), p = 1 / (1 + e^-2); KL per row = (2 p - 1) log(p / (1 - p)) = 2 tanh(1) = 1.5231883
    eye, swap = np.eye(2), np.eye(2)[::-1]
    teacher, student = _tokens(eye, eye, 1), _tokens(eye, swap, 2)
    got = losses.relational_kd(student, teacher, [(0, 1)], tau=0.5).item()
    assert got == pytest.approx(2.0 * math.tanh(1.0), rel=1e-9)
    assert got == pytest.approx(1.5231883, rel=1e-7)


def test_relational_kd_hand_computed_direction():
    # teacher X_m tokens equal: R^T rows (1/2, 1/2). Student X_n = X_m = I at tau = 1/2: rows
    # (p, 1 - p), p = 1 / (1 + e^-2). KL(R^T || R^S) = -log 2 - 1/2 log(p (1 - p)) = 0.4337808
    # (the reversed KL(R^S || R^T) would be p log 2p + (1 - p) log 2(1 - p) = 0.3278133)
    p = 1.0 / (1.0 + math.exp(-2.0))
    expected = -math.log(2.0) - 0.5 * math.log(p * (1.0 - p))
    assert expected == pytest.approx(0.4337808, rel=1e-6)
    same = np.array([[1.0, 0.0], [1.0, 0.0]])
    teacher, student = _tokens(np.eye(2), same, 3), _tokens(np.eye(2), np.eye(2), 4)
    assert losses.relational_kd(student, teacher, [(0, 1)], tau=0.5).item() == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("shape,strip,grid", [((8, 16), 0.25, (4, 2)), ((7, 13), 0.2, (3, 2)),
                                              ((6, 10), 0.3, (2, 3))])
def test_border_tokens_match_reference(shape, strip, grid):
    feats = _rng(6).normal(size=(2, 3, 5) + shape)
    left, right = losses.border_tokens(_t(feats), strip, grid)
    ref_left, ref_right = ref_border_tokens(feats, strip, grid)
    np.testing.assert_allclose(_np(left), ref_left, rtol=0, atol=1e-12)
    np.testing.assert_allclose(_np(right), ref_right, rtol=0, atol=1e-12)


def test_border_tokens_hand_computed_order():
    # one channel plus a constant: the token of grid cell (i, j) has direction (value, 1). Columns
    # 0-1 of an 4 x 8 map form the left strip (rho = 1/4), 6-7 the right one; with a 2 x 2 grid
    # each cell is one row pair and one column. Row-major order: (0, 0), (0, 1), (1, 0), (1, 1).
    value = np.arange(32, dtype=np.float64).reshape(4, 8)
    feats = np.stack([value, np.ones((4, 8))])[None, None]  # (1, 1, 2, 4, 8)
    left, right = losses.border_tokens(_t(feats), 0.25, (2, 2))
    # left cells: mean of rows {0, 1} x column {0}: (0 + 8) / 2 = 4; column 1: 5; rows {2, 3}: 20, 21
    ratios = _np(left[0, 0, :, 0] / left[0, 0, :, 1])
    np.testing.assert_allclose(ratios, [4.0, 5.0, 20.0, 21.0], rtol=1e-12)
    ratios = _np(right[0, 0, :, 0] / right[0, 0, :, 1])
    np.testing.assert_allclose(ratios, [10.0, 11.0, 26.0, 27.0], rtol=1e-12)
    np.testing.assert_allclose(_np(left.norm(dim=-1)), np.ones((1, 1, 4)), rtol=1e-12)


@pytest.mark.parametrize("tau", [0.1, 0.7])
def test_view_relational_kd_matches_reference(tau):
    rng = _rng(7)
    student = rng.normal(size=(2, 6, 4, 8, 16))
    teacher = rng.normal(size=(2, 6, 7, 6, 12)) + 0.5  # another channel count and size
    got = losses.view_relational_kd(_t(student), _t(teacher), ADJACENT_PAIRS, strip=0.25, grid=(4, 2), tau=tau)
    ref = ref_vrkd(ref_border_tokens(student, 0.25, (4, 2)), ref_border_tokens(teacher, 0.25, (4, 2)),
                   ADJACENT_PAIRS, tau)
    assert got.item() == pytest.approx(ref, rel=1e-9)


def test_relational_kd_averages_over_pairs():
    # pair (0, 1) as in the direction test, pair (1, 0) with equal relations (KL 0): the mean halves
    p = 1.0 / (1.0 + math.exp(-2.0))
    expected = -math.log(2.0) - 0.5 * math.log(p * (1.0 - p))
    same = np.array([[1.0, 0.0], [1.0, 0.0]])
    (t_left, t_right), (s_left, s_right) = _tokens(np.eye(2), same, 3), _tokens(np.eye(2), np.eye(2), 4)
    t_left[0, 0], t_right[0, 1] = s_left[0, 0], s_right[0, 1]  # the strips of pair (1, 0) agree
    got = losses.relational_kd((s_left, s_right), (t_left, t_right), [(0, 1), (1, 0)], tau=0.5).item()
    assert got == pytest.approx(expected / 2.0, rel=1e-9)


# ------------------------------------------------------------------ validity mask M

def test_valid_mask_is_strict_on_both_ends():
    depth = np.array([0.0, 0.1, 0.1000001, 40.0, 79.9999, 80.0, 200.0])
    expected = [False, False, True, True, True, False, False]
    assert losses.valid_mask(depth, 0.1, 80.0).tolist() == expected
    assert losses.valid_mask(torch.from_numpy(depth), 0.1, 80.0).tolist() == expected


# ------------------------------------------------------------------------ objective, Eq. (17)

def _objective_case(seed=8, b=1, n=6, k=5):
    rng = _rng(seed)
    out = {"depth": rng.uniform(0.5, 60, (b, n, 1, 8, 12)), "logits": 2.0 * rng.normal(size=(b, n, k, 4, 6)),
           "centers": np.sort(rng.uniform(1, 60, (b, n, k)), axis=-1), "features": rng.normal(size=(b, n, 3, 8, 16))}
    target = rng.uniform(1, 70, (b, n, 1, 8, 12)) * (rng.random((b, n, 1, 8, 12)) < 0.5)
    target[0, 0, 0, 0, :4] = [0.1, 80.0, 120.0, 0.05]  # on or outside the range: not in M
    farness = rng.random((b, n, 1, 8, 12))
    teacher = tuple(_unit(rng.normal(size=(b, n, 6, 9))) for _ in range(2))  # L = g_h g_w = 6 tokens
    return out, target, farness, teacher


def _reference_terms(out, target, farness, teacher, cfg):
    mask = (target > cfg.min_depth) & (target < cfg.max_depth)
    k = out["logits"].shape[2]
    ckd = ref_ckd(out["logits"], out["centers"], ref_bin_probs(farness, k, cfg.sigma), target, mask, cfg.tau)
    feats = out["features"] if cfg.vr_student == "features" else _softmax(out["logits"], axis=2)
    vr = ref_vrkd(ref_border_tokens(feats, cfg.vr_strip, cfg.vr_grid), teacher, cfg.pairs, cfg.vr_tau)
    return {"si": ref_silog(out["depth"], target, mask), "bins": ref_chamfer(out["centers"], target, mask),
            "kd": ckd["kd"], "cross": ckd["cross"], "vr": vr}


def _run_objective(out, target, farness, teacher, cfg):
    t_out = {key: _t(v) for key, v in out.items()}
    return losses.objective(t_out, _t(target), cfg, None if farness is None else _t(farness),
                            None if teacher is None else tuple(_t(x) for x in teacher))


@pytest.mark.parametrize("vr_student", ["features", "probs"])
def test_objective_every_weight_multiplies_its_own_term(vr_student):
    out, target, farness, teacher = _objective_case()
    cfg = losses.LossConfig(pairs=ADJACENT_PAIRS, min_depth=D_MIN, max_depth=D_MAX, beta_bins=0.3, lambda_ckd=0.7,
                            lambda_cross=1.9, tau=2.0, sigma=0.15, lambda_vr=2.3, vr_strip=0.375, vr_grid=(2, 3),
                            vr_tau=0.2, vr_student=vr_student)
    loss, terms = _run_objective(out, target, farness, teacher, cfg)
    ref = _reference_terms(out, target, farness, teacher, cfg)
    assert set(terms) == set(ref)
    for key in ref:
        assert terms[key].dtype == torch.float32
        assert terms[key].item() == pytest.approx(ref[key], rel=2e-5), key
    expected = ref["si"] + 0.3 * ref["bins"] + 0.7 * (ref["kd"] + 1.9 * ref["cross"]) + 2.3 * ref["vr"]
    assert loss.item() == pytest.approx(expected, rel=2e-5)


def test_objective_terms_present_per_weight():
    out, target, farness, teacher = _objective_case()
    base = dict(pairs=ADJACENT_PAIRS, min_depth=D_MIN, max_depth=D_MAX, vr_grid=(2, 3))
    ref = _reference_terms(out, target, farness, teacher, losses.LossConfig(**base))
    # the supervised baseline: lambda_ckd = lambda_vr = beta = 0; nothing of the teacher is needed
    cfg = losses.LossConfig(**base, beta_bins=0.0, lambda_ckd=0.0, lambda_vr=0.0)
    loss, terms = _run_objective(out, target, None, None, cfg)
    assert set(terms) == {"si", "bins"}
    assert terms["bins"].item() == pytest.approx(ref["bins"], rel=2e-5)  # logged, not added
    assert loss.item() == pytest.approx(ref["si"], rel=2e-5)
    cfg = losses.LossConfig(**base, beta_bins=0.0, lambda_ckd=0.5, lambda_vr=0.0)
    loss, terms = _run_objective(out, target, farness, None, cfg)
    assert set(terms) == {"si", "bins", "kd", "cross"}
    assert loss.item() == pytest.approx(ref["si"] + 0.5 * (ref["kd"] + ref["cross"]), rel=2e-5)  # lambda_x = 1
    cfg = losses.LossConfig(**base, beta_bins=0.0, lambda_ckd=0.0, lambda_vr=0.4)
    loss, terms = _run_objective(out, target, None, teacher, cfg)
    assert set(terms) == {"si", "bins", "vr"}
    assert loss.item() == pytest.approx(ref["si"] + 0.4 * ref["vr"], rel=2e-5)


def test_objective_beta_zero_sends_no_gradient_to_the_centers():
    out, target, _, _ = _objective_case()
    base = dict(pairs=ADJACENT_PAIRS, min_depth=D_MIN, max_depth=D_MAX, lambda_ckd=0.0, lambda_vr=0.0)
    for beta, reached in ((0.0, False), (0.25, True)):
        t_out = {key: _t(v).requires_grad_(True) for key, v in out.items()}
        loss, _ = losses.objective(t_out, _t(target), losses.LossConfig(**base, beta_bins=beta))
        grad = torch.autograd.grad(loss, t_out["centers"], allow_unused=True)[0]
        assert (grad is not None and grad.abs().sum().item() > 0) == reached, beta


def test_objective_in_float32_under_bf16_autocast():
    """Under CPU bf16 autocast the Student runs in bf16, and every term of Eq. (17) is float32 and
    equals the fp32 objective of the same outputs cast to float32."""
    torch.manual_seed(0)
    net = Student(StudentConfig(num_bins=8, decoder_channels=(32, 16, 16, 8), bin_hidden=16)).eval()
    pairs = ((0, 1), (1, 0))
    images = torch.rand(1, 2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    rng = _rng(9)
    target = torch.from_numpy(rng.uniform(1, 70, (1, 2, 1, 64, 64)) * (rng.random((1, 2, 1, 64, 64)) < 0.3)).float()
    farness = torch.from_numpy(rng.random((1, 2, 1, 64, 64))).float()
    teacher = tuple(torch.from_numpy(_unit(rng.normal(size=(1, 2, 8, 6)))).to(torch.bfloat16) for _ in range(2))
    cfg = losses.LossConfig(pairs=pairs, min_depth=D_MIN, max_depth=D_MAX, beta_bins=0.1, tau=2.0)
    with torch.no_grad(), torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        out = net(images)
        loss, terms = losses.objective(out, target, cfg, farness, teacher)
    assert out["logits"].dtype == torch.bfloat16 and out["features"].dtype == torch.bfloat16
    with torch.no_grad():
        ref_loss, ref_terms = losses.objective({k: v.float() for k, v in out.items()}, target, cfg, farness, teacher)
    assert set(terms) == {"si", "bins", "kd", "cross", "vr"}
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-6)
    for key, value in terms.items():
        assert value.dtype == torch.float32, key
        assert value.item() == pytest.approx(ref_terms[key].item(), rel=1e-6, abs=1e-7), key


# ------------------------------------------------------------------- student, Eqs. (1)-(5)

def test_bins_to_centers_hand_computed():
    # widths (1/2, 1/4, 1/4) on [1, 9] m: edges 1, 5, 7, 9 -> centers 3, 6, 8
    got = model.bins_to_centers(torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64), 1.0, 9.0)
    np.testing.assert_allclose(_np(got), [3.0, 6.0, 8.0], rtol=1e-12)
    widths = _softmax(_rng(10).normal(size=(2, 3, 7)), axis=-1)
    got = model.bins_to_centers(_t(widths), 0.5, 200.0)
    np.testing.assert_allclose(_np(got), ref_centers(widths, 0.5, 200.0), rtol=1e-12)


def test_hybrid_depth_matches_reference():
    rng = _rng(11)
    logits, centers = rng.normal(size=(2, 3, 5, 4, 6)), rng.uniform(1, 60, (2, 3, 5))
    got = model.hybrid_depth(_t(logits), _t(centers))
    ref = np.einsum("bnkhw,bnk->bnhw", _softmax(logits, axis=2), centers)[:, :, None]
    np.testing.assert_allclose(_np(got), ref, rtol=1e-12)


@pytest.mark.parametrize("shared", [False, True])
def test_student_forward_matches_reference(shared):
    """Eqs. (2)-(5) recomputed from the network's own intermediate maps: z = logit_scale * conv1x1(F),
    w = softmax(MLP(GAP(bottleneck))) (GAP over all views with shared_bins), centers by Eq. (3),
    D_hat = sum_k softmax(z)_k c_k, bilinearly upsampled."""
    torch.manual_seed(2)
    cfg = StudentConfig(num_bins=6, decoder_channels=(16, 8), bin_hidden=8, logit_scale=3.0, shared_bins=shared,
                        min_depth=0.5, max_depth=50.0)
    net = Student(cfg).double().eval()
    seen = {}
    hooks = [net.encoder.layer4.register_forward_hook(lambda m, i, o: seen.update(bottleneck=o)),
             net.logit_head.register_forward_hook(lambda m, i, o: seen.update(feats=i[0]))]
    images = torch.rand(2, 3, 3, 64, 64, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    with torch.no_grad():
        out = net(images)
        for h in hooks:
            h.remove()
        weight, bias = net.logit_head.weight[:, :, 0, 0], net.logit_head.bias
        logits = 3.0 * (torch.einsum("kc,mchw->mkhw", weight, seen["feats"]) + bias[:, None, None])
        pooled = seen["bottleneck"].mean(dim=(2, 3)).reshape(2, 3, -1)  # GAP, (B, N, 512)
        if shared:
            pooled = pooled.mean(dim=1, keepdim=True).expand(-1, 3, -1)
        widths = _softmax(_np(net.bin_mlp(pooled)), axis=-1)
    np.testing.assert_allclose(_np(out["logits"]), _np(logits).reshape(out["logits"].shape), rtol=1e-10, atol=1e-10)
    centers = ref_centers(widths, 0.5, 50.0)
    np.testing.assert_allclose(_np(out["centers"]), centers, rtol=1e-10)
    coarse = np.einsum("bnkhw,bnk->bnhw", _softmax(_np(out["logits"]), axis=2), centers)
    up = torch.nn.functional.interpolate(_t(coarse), size=(64, 64), mode="bilinear", align_corners=False)
    np.testing.assert_allclose(_np(out["depth"][:, :, 0]), _np(up), rtol=1e-10)


def test_convex_upsample_matches_reference():
    """Output pixel (Y s + i, X s + k) = sum_{y, x} a_i[y] b_k[x] D_pad[Y + y, X + x], a_i = softmax_y
    of channels y s + i, b_k = softmax_x of channels 3 s + x s + k, borders replicated."""
    rng, s, h, w = _rng(12), 2, 3, 4
    depth, logits = rng.uniform(1, 60, (1, 1, h, w)), 2.0 * rng.normal(size=(1, 6 * s, h, w))
    got = _np(model.convex_upsample(_t(depth), _t(logits)))[0, 0]
    pad = np.pad(depth[0, 0], 1, mode="edge")
    for yy in range(h):
        for xx in range(w):
            for i in range(s):
                for k in range(s):
                    a = _softmax(logits[0, [y * s + i for y in range(3)], yy, xx], axis=0)
                    b = _softmax(logits[0, [3 * s + x * s + k for x in range(3)], yy, xx], axis=0)
                    expected = (a[:, None] * b[None, :] * pad[yy:yy + 3, xx:xx + 3]).sum()
                    assert got[yy * s + i, xx * s + k] == pytest.approx(expected, rel=1e-12)


# ---------------------------------------------------------------------- metrics, Eq. (18)

def test_delta_thresholds_are_strict_powers_of_1_25():
    # ratios exactly 1.25, 1.25^2 = 1.5625 and 1.25^3 = 1.953125 (all exact in binary), both sides of 1,
    # and one between each pair of thresholds
    gt = np.array([4.0, 16.0, 32.0, 10.0, 10.0, 10.0, 10.0, 10.0])
    pred = np.array([5.0, 25.0, 62.5, 7.0, 17.0, 6.0, 12.0, 10.0])
    # max(g/p, p/g): 1.25, 1.5625, 1.953125, 1.428571, 1.7, 1.666667, 1.2, 1
    got = evaluate.compute_depth_metrics(pred, gt)
    assert got["a1"] == pytest.approx(2 / 8)  # 1.2, 1
    assert got["a2"] == pytest.approx(4 / 8)  # + 1.25, 1.428571
    assert got["a3"] == pytest.approx(7 / 8)  # + 1.5625, 1.7, 1.666667 (1.953125 is not < 1.953125)


def test_depth_metrics_match_reference():
    rng = _rng(13)
    gt = rng.uniform(0.0, 100.0, (20, 30)) * (rng.random((20, 30)) < 0.5)
    gt[0, :3] = [D_MIN, D_MAX, 0.1000001]  # the ends of the range are out, just inside is in
    pred = np.clip(gt * np.exp(rng.normal(0.1, 0.5, gt.shape)), 0.01, 150.0)
    pred[1, :4] = [0.01, 0.05, 120.0, 500.0]  # clamped
    gt[1, :4] = [5.0, 7.0, 30.0, 60.0]
    for median_scaling in (False, True):
        got = evaluate.compute_depth_metrics(pred, gt, median_scaling=median_scaling)
        ref = ref_depth_metrics(pred, gt, median_scaling=median_scaling)
        for key in evaluate.METRIC_KEYS:
            assert got[key] == pytest.approx(ref[key], rel=1e-12), (key, median_scaling)


def test_median_scaling_hand_computed_before_the_clamp():
    # pred (1, 2, 3), gt (2, 4, 9): factor median(gt) / median(pred) = 4 / 2 -> (2, 4, 6): abs_rel = (3 / 9) / 3
    got = evaluate.compute_depth_metrics(np.array([1.0, 2.0, 3.0]), np.array([2.0, 4.0, 9.0]), median_scaling=True)
    assert got["abs_rel"] == pytest.approx(1.0 / 9.0, rel=1e-12)
    # pred all below d_min: scaled first (x 1000 -> exact), clamped after
    got = evaluate.compute_depth_metrics(np.array([0.01, 0.02, 0.04]), np.array([10.0, 20.0, 40.0]),
                                         median_scaling=True)
    assert got["abs_rel"] == pytest.approx(0.0, abs=1e-12)


# --------------------------------------------------------------- scale consistency, Eq. (19)

def test_log_scale_ratio_hand_computed():
    gt, pred = np.array([2.0, 4.0, 9.0, 0.0]), np.array([1.0, 1.0, 3.0, 50.0])  # medians 4 and 1
    assert evaluate.log_scale_ratio(pred, gt) == pytest.approx(math.log(4.0), rel=1e-12)
    # a median prediction below d_min counts as d_min: log(1 / 0.1)
    assert evaluate.log_scale_ratio(np.full(3, 0.01), np.ones(3)) == pytest.approx(math.log(10.0), rel=1e-12)


def _dataset(factors, h=4, w=5, seed=14, blind=(), noise=0.2):
    """Samples of six views; the prediction (key 'pred') is the dense depth times factors[s][n] and
    a per-pixel log-normal noise of std `noise`. Views (s, n) in `blind` have no sparse ground truth."""
    rng = _rng(seed)
    items = []
    for s, row in enumerate(factors):
        dense = rng.uniform(1.0, 30.0, (len(CAMERAS), 1, h, w))
        jitter = np.exp(rng.normal(0.0, noise, dense.shape))
        sparse = dense * (rng.random(dense.shape) < 0.5)
        sparse[:, 0, 0, 0] = dense[:, 0, 0, 0]
        for n in (n for s_b, n in blind if s_b == s):
            sparse[n] = 0.0
        pred = dense * jitter * np.asarray(row)[:, None, None, None]
        items.append({"images": torch.zeros(len(CAMERAS), 3, h, w), "depth": _t(sparse).float(),
                      "depth_dense": _t(dense).float(), "pred": _t(pred).float()})
    return items


def test_scale_consistency_hand_computed():
    # noise-free: sample 0 all views x 2 (log rho = -log 2 each, std 0); sample 1 views x (1/2, 1, 1, 1, 1, 2):
    # log rho = (l, 0, 0, 0, 0, -l), std sqrt(2 l^2 / 6) = l / sqrt 3. Mean of stds: l / (2 sqrt 3);
    # mean |log rho| over all 12 views: 8 l / 12.
    factors = [[2.0] * 6, [0.5, 1, 1, 1, 1, 2]]
    data = _dataset(factors, noise=0.0)
    res = evaluate.evaluate_predictions(lambda b: b["pred"], data, "cpu", progress=False)
    l2 = math.log(2.0)
    assert res["scale"]["std_log_rho_across_views"] == pytest.approx(l2 / (2 * math.sqrt(3)), rel=1e-6)
    assert res["scale"]["mean_abs_log_rho"] == pytest.approx(8 * l2 / 12, rel=1e-6)


def test_evaluate_predictions_per_camera_then_over_cameras():
    """Per-image Eq. (18), averaged per camera over the images that have ground truth, then over
    cameras; CAM_FRONT has sparse ground truth in one sample of three, so a flat mean differs."""
    data = _dataset([[1.0] * 6, [1.3] * 6, [0.8] * 6], blind=[(1, 0), (2, 0)])
    res = evaluate.evaluate_predictions(lambda b: b["pred"], data, "cpu", progress=False)
    for kind, key in (("sparse", "depth"), ("dense", "depth_dense")):
        per_cam = []
        for n, cam in enumerate(CAMERAS):
            rows = [ref_depth_metrics(_np(d["pred"][n]), _np(d[key][n])) for d in data]
            rows = [r for r in rows if r is not None]
            per_cam.append({k: np.mean([r[k] for r in rows]) for k in evaluate.METRIC_KEYS})
            for k in evaluate.METRIC_KEYS:
                assert res["per_camera"][cam][kind][k] == pytest.approx(per_cam[-1][k], rel=1e-5, abs=1e-9)
        for k in evaluate.METRIC_KEYS:
            assert res["all"][kind][k] == pytest.approx(np.mean([c[k] for c in per_cam]), rel=1e-5, abs=1e-9)


# ------------------------------------------------------------ cross-view consistency, Eq. (20)

def _two_cameras(h=8, w=16):
    """Two cameras with the same orientation, f = 10 px, principal point (8, 4); camera 1 sits
    2 m to the right of camera 0. A wall at z = 10 m: pixel column u of view 0 shows in view 1 at
    u + 0.5 - f B / z = u - 1.5 (pixel coordinates), inside for u >= 2: 8 x 14 = 112 pixels."""
    k = np.array([[10.0, 0.0, 8.0], [0.0, 10.0, 4.0], [0.0, 0.0, 1.0]])
    pose = np.stack([np.eye(4), np.eye(4)])
    pose[1, 0, 3] = 2.0
    return np.stack([k, k]), pose, np.full((2, h, w), 10.0)


@pytest.mark.parametrize("a,b", [(1.5, 1.0), (1.0, 1.5), (1.0, 0.8), (0.5, 2.0)])
def test_cross_view_consistency_hand_computed(a, b):
    """View 0 predicts the wall at 10 a, view 1 at 10 b: every compared pixel has z' = 10 a and
    D_hat_1 = 10 b, so e = max(a / b, b / a) - 1, whichever view is wrong."""
    intrinsics, pose, wall = _two_cameras()
    pred = wall * np.array([a, b])[:, None, None]
    res = evaluate.cross_view_consistency(pred, intrinsics, pose, wall, pairs=((0, 1),))
    pair = res["per_pair"][f"{CAMERAS[0]}->{CAMERAS[1]}"]
    assert pair["num_pixels"] == 112 and res["num_pixels"] == 112
    assert pair["mean_rel"] == pytest.approx(max(a / b, b / a) - 1.0, rel=1e-9)
    assert res["mean_rel"] == pytest.approx(pair["mean_rel"], rel=1e-12)


def test_cross_view_consistency_pixel_set_from_ground_truth():
    """View 0 predicts 10 (1 + u / 10) in column u, view 1 the truth: e = u / 10 on the kept
    columns u = 2..15, mean 0.85 (0.75 if columns 0 and 1 were kept too)."""
    intrinsics, pose, wall = _two_cameras()
    pred = wall.copy()
    pred[0] *= 1.0 + np.arange(16) / 10.0
    res = evaluate.cross_view_consistency(pred, intrinsics, pose, wall, pairs=((0, 1),))
    assert res["mean_rel"] == pytest.approx(0.85, rel=1e-9)
    assert res["num_pixels"] == 112


def test_cross_view_consistency_each_overlap_weighs_the_same():
    """Pairs (0, 1) (112 pixels, e = 1/2) and (0, 0) (view 0 with itself: all 128 pixels, e = 0):
    the sample's mean_rel is the mean over pairs, 1/4 (pixel-weighted it would be 56 / 240)."""
    intrinsics, pose, wall = _two_cameras()
    pred = wall * np.array([1.5, 1.0])[:, None, None]
    res = evaluate.cross_view_consistency(pred, intrinsics, pose, wall, pairs=((0, 1), (0, 0)))
    assert res["per_pair"][f"{CAMERAS[0]}->{CAMERAS[0]}"]["num_pixels"] == 128
    assert res["mean_rel"] == pytest.approx(0.25, rel=1e-9)
    assert res["num_pixels"] == 240


def test_pool_cross_view_is_pixel_weighted_per_pair():
    """Over samples, a pair's mean is weighted by its pixels: (0.1 x 10 + 0.4 x 30) / 40 = 0.325; a
    sample where the pair has no pixel does not count; overall, the mean over the pairs with pixels."""
    def sample(a, b):
        return {"per_pair": {"A": {"mean_rel": a[0], "num_pixels": a[1]}, "B": {"mean_rel": b[0], "num_pixels": b[1]}}}

    res = evaluate.pool_cross_view([sample((0.1, 10), (None, 0)), sample((0.4, 30), (0.2, 5)),
                                    sample((None, 0), (0.6, 15))])
    assert res["per_pair"]["A"] == {"mean_rel": pytest.approx(0.325, rel=1e-12), "num_pixels": 40}
    assert res["per_pair"]["B"]["mean_rel"] == pytest.approx((0.2 * 5 + 0.6 * 15) / 20, rel=1e-12)
    assert res["mean_rel"] == pytest.approx((0.325 + 0.5) / 2, rel=1e-12)
    assert res["num_pixels"] == 60


# ------------------------------------------------------------------------- camera geometry

def _rotation(seed):
    q, _ = np.linalg.qr(_rng(seed).normal(size=(3, 3)))
    return q * np.sign(np.linalg.det(q))


def test_back_project_matches_pinhole_restatement():
    k = np.array([[10.0, 0.0, 8.0], [0.0, 20.0, 4.0], [0.0, 0.0, 1.0]])
    pose = np.eye(4)
    pose[:3, :3], pose[:3, 3] = _rotation(15), [1.0, -2.0, 0.5]
    depth = _rng(16).uniform(1, 50, (1, 3, 5))
    got = rig.back_project(depth, k[None], pose[None])[0]
    for v in range(3):
        for u in range(5):
            d = depth[0, v, u]
            cam = np.array([(u + 0.5 - 8.0) / 10.0 * d, (v + 0.5 - 4.0) / 20.0 * d, d])
            np.testing.assert_allclose(got[v, u], pose[:3, :3] @ cam + pose[:3, 3], rtol=1e-12)
    # by hand, identity pose: pixel (0, 0) at 10 m -> ((0.5 - 8) / 10 * 10, (0.5 - 4) / 20 * 10, 10)
    np.testing.assert_allclose(rig.back_project(np.full((1, 1, 1), 10.0), k[None], np.eye(4)[None])[0, 0, 0],
                               [-7.5, -1.75, 10.0], rtol=1e-12)


def test_project_inverts_back_project_and_bounds_are_half_open():
    k = np.array([[10.0, 0.0, 8.0], [0.0, 20.0, 4.0], [0.0, 0.0, 1.0]])
    pose = np.eye(4)
    pose[:3, :3], pose[:3, 3] = _rotation(17), [0.3, 0.2, -1.0]
    depth = _rng(18).uniform(1, 50, (1, 3, 5))
    points = rig.back_project(depth, k[None], pose[None]).reshape(-1, 3)
    z, uv, inside = rig.project(points, k, pose, 3, 5)
    v, u = np.mgrid[0:3, 0:5]
    np.testing.assert_allclose(z, depth.reshape(-1), rtol=1e-12)
    np.testing.assert_allclose(uv, np.stack([u.ravel() + 0.5, v.ravel() + 0.5], axis=1), rtol=1e-12)
    assert inside.all()
    # identity camera: u = 10 x / z + 8, v = 20 y / z + 4. u = 0 is in, u = 16 (= W) is out, behind is out
    pts = np.array([[-8.0, 0.0, 10.0], [8.0, 0.0, 10.0], [7.9, 0.0, 10.0], [0.0, 0.0, -5.0], [0.0, -2.0, 10.0]])
    z, uv, inside = rig.project(pts, k, np.eye(4), 8, 16)
    assert inside.tolist() == [True, False, True, False, True]
    np.testing.assert_allclose(uv[[0, 2, 4]], [[0.0, 4.0], [15.9, 4.0], [8.0, 0.0]], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(uv[[1, 3]], 0.5)


def test_sample_depth_bilinear_in_inverse_depth():
    depth = np.array([[2.0, 4.0], [2.0, 4.0]])
    # midway between the centers (0.5, .) and (1.5, .): 1 / (0.5 / 2 + 0.5 / 4) = 8 / 3 (not 3)
    value, valid = rig.sample_depth(depth, np.array([[1.0, 0.5], [1.25, 1.0], [0.2, 0.2], [1.9, 1.9]]))
    np.testing.assert_allclose(value, [8.0 / 3.0, 1.0 / (0.25 / 2 + 0.75 / 4), 2.0, 4.0], rtol=1e-12)
    assert valid.all()
    depth[1, 1] = 0.0  # a corner without depth makes the sample unusable
    assert rig.sample_depth(depth, np.array([[1.0, 1.0]]))[1].tolist() == [False]


def test_render_sparse_depth_nearest_point_wins():
    k = np.array([[10.0, 0.0, 2.0], [0.0, 10.0, 2.0], [0.0, 0.0, 1.0]])
    # pixel = floor(10 x / z + 2), floor(10 y / z + 2) on a 4 x 4 image
    points = np.array([[0.0, 0.0, 5.0],  # (2, 2), far
                       [0.0, 0.0, 3.0],  # (2, 2), near: wins whatever the order
                       [0.0, 0.0, 8.0],  # (2, 2), farther
                       [0.07, 0.0, 1.0],  # u = 2.7 -> column 2, row 2 ... at 1 m: nearest of all
                       [-0.15, -0.15, 1.0],  # u = v = 0.5 -> (0, 0)
                       [0.0, 0.0, 0.1],  # z = d_min exactly: dropped
                       [1.0, 0.0, 2.0]])  # u = 7: outside
    for order in ([0, 1, 2, 3, 4, 5, 6], [3, 2, 1, 0, 6, 5, 4]):
        got = rig.render_sparse_depth(points[order], k, 4, 4)
        expected = np.zeros((4, 4), dtype=np.float32)
        expected[2, 2], expected[0, 0] = 1.0, 1.0
        np.testing.assert_array_equal(got, expected)
    got = rig.render_sparse_depth(points[:3], k, 4, 4)
    assert got[2, 2] == 3.0 and (got > 0).sum() == 1
