"""The math of the existing-KD baselines and of our change, Eqs. (21)-(23), pinned value by value.

As in `tests/test_math.py`: every function of `kd_baselines.py` is compared with a hand-computed
value (written out in the test's docstring) or with an independent restatement of its equation,
written here in numpy (float64) straight from the README's method section and never calling the
helper it checks: `ref_aligned_teacher` (the least-squares fit of (21) by np.linalg.lstsq, the
clamp in disparity), `ref_neighbourhood` (N_r(M) of (23) by loops over windows), `ref_response_kd`,
`ref_feature_kd` (FitNets, (22), with the bilinear resize `ref_resize` of the protocol tests). The
constants are literals here: SILog alpha = 10, lambda = 0.85, log floor 0.1 m; the fit exists when
var(r_hat) over M exceeds 1e-8; FitNets' mean is over tokens of the squared distance summed over channels.
"""
import math

import numpy as np
import pytest
import torch

import kd_baselines
import losses
from conftest import identity_adapter
from test_math_protocol import ref_resize

D_MIN, D_MAX = 0.1, 80.0


def _t(x, dtype=torch.float32):
    return torch.from_numpy(np.asarray(x, dtype=np.float64)).to(dtype)


def _np(x):
    return x.detach().double().cpu().numpy()


# ------------------------------------------------------------- references, from the equations

def ref_silog(pred, target, mask):
    """Eq. (15): g = log D_hat - log D* on the mask (depths floored at 0.1 m), 10 sqrt(mean g^2 - 0.85 mean(g)^2);
    0 without a pixel."""
    if not mask.any():
        return 0.0
    g = np.log(np.maximum(pred[mask], 0.1)) - np.log(np.maximum(target[mask], 0.1))
    return 10.0 * math.sqrt(max(np.mean(g**2) - 0.85 * np.mean(g) ** 2, 0.0) + 1e-12)


def ref_aligned_teacher(s, target, mask, d_min, d_max):
    """Eq. (21), view by view: r_hat = 1 - s; (alpha, beta) = argmin over M of sum (alpha r_hat + beta - 1/D*)^2
    (np.linalg.lstsq); the fit exists when M has >= 2 pixels, var(r_hat over M) > 1e-8 and alpha > 0;
    D_T = 1 / clip(alpha r_hat + beta, 1 / d_max, 1 / d_min). -> D_T (B, N, 1, H, W), fitted (B, N)."""
    s, target, mask = (np.asarray(a, dtype=np.float64) for a in (s, target, mask))
    mask = mask.astype(bool)
    depth, fitted = np.zeros_like(s), np.zeros(s.shape[:2], dtype=bool)
    for b in range(s.shape[0]):
        for n in range(s.shape[1]):
            x, m = 1.0 - s[b, n], mask[b, n]
            if m.sum() >= 2 and np.var(x[m]) > 1e-8:
                design = np.stack([x[m], np.ones(int(m.sum()))], axis=1)
                (alpha, beta), *_ = np.linalg.lstsq(design, 1.0 / target[b, n][m], rcond=None)
                fitted[b, n] = alpha > 0
                depth[b, n] = 1.0 / np.clip(alpha * x + beta, 1.0 / d_max, 1.0 / d_min)
    return depth, fitted


def ref_neighbourhood(mask, r):
    """N_r(M) of Eq. (23): pixel (i, j) is in it when a pixel of M lies within max(|di|, |dj|) <= r."""
    mask = np.asarray(mask, dtype=bool)
    out = np.zeros_like(mask)
    h, w = mask.shape[-2:]
    for i in range(h):
        for j in range(w):
            out[..., i, j] = mask[..., max(0, i - r):i + r + 1, max(0, j - r):j + r + 1].any(axis=(-2, -1))
    return out


def ref_response_kd(pred, s, target, mask, d_min, d_max, omega=None, radius=None):
    """Eq. (21): SILog(D_hat, D_T) over every pixel of the fitted views (and of omega); Eq. (23) with
    radius r: the same, but only outside N_r(M)."""
    depth, fitted = ref_aligned_teacher(s, target, mask, d_min, d_max)
    pixels = np.broadcast_to(fitted[:, :, None, None, None], np.shape(pred)).copy()
    if omega is not None:
        pixels &= np.asarray(omega, dtype=bool)
    if radius is not None:
        pixels &= ~ref_neighbourhood(mask, radius)
    return ref_silog(np.asarray(pred, dtype=np.float64), depth, pixels)


def ref_feature_kd(student, teacher, weight, bias):
    """Eq. (22): x = W F' + b with F' the student features resized bilinearly to the teacher's grid, per
    token t of every view: || x_t / |x_t| - f_t / |f_t| ||^2 summed over channels; mean over all tokens."""
    resized = ref_resize(student, teacher.shape[-2:])  # (B, N, C_S, h_T, w_T)
    x = np.einsum("oc,bnchw->bnohw", weight, resized) + bias[None, None, :, None, None]
    x = x / np.linalg.norm(x, axis=2, keepdims=True)
    f = teacher / np.linalg.norm(teacher, axis=2, keepdims=True)
    return float(np.mean(np.sum((x - f) ** 2, axis=2)))


def view(values, shape=None):
    """(1, 1, 1, 1, P), or (1, 1, 1) + shape, from a list: one view."""
    return torch.tensor(values, dtype=torch.float32).view((1, 1, 1) + (shape or (1, -1)))


# ------------------------------------------------------------------------- Eq. (21), by hand

def test_aligned_teacher_clamps_both_ends_in_disparity_by_hand():
    """Eq. (21), the clamp of D_T: LiDAR (r_hat, 1/D*) = (0, 1), (1, 2) -> alpha = beta = 1 exactly.
    r_hat = 0.5 -> 1 / 1.5 m; r_hat = 20 (s = -19) -> disparity 21 > 1 / d_min = 10 -> d_min = 0.1 m;
    r_hat = -2 (s = 3) -> disparity -1 < 1 / 80 -> d_max = 80 m; r_hat = 9 -> disparity 10 = 1 / d_min -> 0.1 m.
    (Clamping the depth instead of the disparity would send the negative disparity to d_min.)"""
    s = view([1.0, 0.0, 0.5, -19.0, 3.0, -8.0])
    target = view([1.0, 0.5, 0.0, 0.0, 0.0, 0.0])
    depth, fitted = kd_baselines.aligned_teacher_depth(s, target, target > 0, D_MIN, D_MAX)
    torch.testing.assert_close(depth, view([1.0, 0.5, 1 / 1.5, 0.1, 80.0, 0.1]))
    assert fitted.shape == (1, 1, 1, 1, 1) and bool(fitted)
    assert not depth.requires_grad


def test_aligned_teacher_fits_in_inverse_depth_by_hand():
    """Eq. (21) fits 1 / D*, not D*: LiDAR (r_hat, D*) = (0, 1), (0.5, 2), (1, 4) m. In inverse depth the
    points (0, 1), (0.5, 0.5), (1, 0.25): least squares alpha = -0.75, beta = 23 / 24; at r_hat = 0.25
    the disparity is 23/24 - 3/16 = 37/48 -> D_T = 48/37 m. (A fit of D* itself, alpha = 3, beta = 5/6,
    would give 1.5833 m there.) Also: a pixel of M at r_hat 0.5 with 1/D* off the line pulls the fit;
    the same pixel outside M does not."""
    s = view([1.0, 0.5, 0.0, 0.75])
    target = view([1.0, 2.0, 4.0, 0.0])
    depth, _ = kd_baselines.aligned_teacher_depth(s, target, target > 0, D_MIN, D_MAX)
    assert float(depth[..., 3]) == pytest.approx(48 / 37, rel=1e-6)
    torch.testing.assert_close(depth.flatten()[:3], 1.0 / torch.tensor([23 / 24, 23 / 24 - 0.375, 23 / 24 - 0.75]))
    # A fourth LiDAR value (r_hat 0.25, D* 10 m) that M leaves out changes nothing.
    target_out = view([1.0, 2.0, 4.0, 10.0])
    mask = view([1.0, 1.0, 1.0, 0.0]) > 0
    depth_out, _ = kd_baselines.aligned_teacher_depth(s, target_out, mask, D_MIN, D_MAX)
    torch.testing.assert_close(depth_out, depth)


def test_aligned_teacher_two_points_suffice_and_one_does_not():
    """Eq. (21), which views have a fit: two LiDAR pixels with different r_hat are an exact fit
    ((r_hat, 1/D*) = (0, 1/4), (1, 1/2): alpha = 1/4, beta = 1/4; r_hat 0.5 -> 1 / 0.375 m); one pixel
    is not, two pixels at the same r_hat are not (no spread), whatever their depths, and neither is
    an exact fit with alpha < 0 (the teacher upside down)."""
    s = torch.cat([view([1.0, 0.0, 0.5]), view([1.0, 0.0, 0.5]), view([0.5, 0.5, 0.0]), view([1.0, 0.0, 0.5])],
                  dim=1)
    target = torch.cat([view([4.0, 2.0, 0.0]), view([2.0, 0.0, 0.0]), view([2.0, 4.0, 0.0]),
                        view([2.0, 4.0, 0.0])], dim=1)
    depth, fitted = kd_baselines.aligned_teacher_depth(s, target, target > 0, D_MIN, D_MAX)
    assert fitted.flatten().tolist() == [True, False, False, False]
    torch.testing.assert_close(depth[0, 0].flatten(), torch.tensor([4.0, 2.0, 1 / 0.375]))


def test_aligned_teacher_spread_threshold_is_a_variance_of_1e_8_by_hand():
    """Eq. (21), "spread in r_hat": the fit exists when var(r_hat) over M exceeds 1e-8 (det > 1e-8 n^2).
    100 LiDAR pixels, half at r_hat = 0 and half at r_hat = d (s = 1 - d, exact in float32):
    var = d^2 / 4. d = 2^-13: var = 2^-28 = 3.7e-9, no fit (a threshold of 1e-8 n, or det > 0,
    would fit); d = 2^-12: var = 2^-26 = 1.49e-8, a fit (a threshold of 1e-7 would not fit)."""
    half = torch.ones(50)
    target = view([5.0] * 50 + [4.0] * 50, (10, 10))
    for d, expected in ((2.0**-13, False), (2.0**-12, True)):
        s = torch.cat([half, half * (1.0 - d)]).view(1, 1, 1, 10, 10)
        assert float((1.0 - s).flatten()[50:].unique()) == d  # exact in float32
        _, fitted = kd_baselines.aligned_teacher_depth(s, target, target > 0, D_MIN, D_MAX)
        assert bool(fitted) is expected, d


# ------------------------------------------------------------------ Eq. (21), the restatement

def _batch(seed=0, b=2, n=4, h=6, w=8):
    """Random views for Eqs. (21) and (23): s partly outside [0, 1] (so both clamps of D_T act), LiDAR on
    ~30 % of the pixels with values on and outside the range, a view with no LiDAR (0, 1), one with a
    single LiDAR pixel (0, 2), one with a constant s on M (1, 3), and an omega mask."""
    rng = np.random.default_rng(seed)
    s = rng.uniform(-0.6, 1.4, (b, n, 1, h, w))
    target = rng.uniform(0.5, 70.0, (b, n, 1, h, w)) * (rng.random((b, n, 1, h, w)) < 0.3)
    target[0, 0, 0, 0, :4] = [D_MIN, D_MAX, 120.0, 0.05]  # on or outside the range: not in M
    target[0, 1] = 0.0
    target[0, 2] = 0.0
    target[0, 2, 0, 3, 3] = 12.0
    s[1, 3] = np.where(target[1, 3] > 0, 0.375, s[1, 3])
    # View (1, 0): 1 / D* = 8 r_hat + 0.02 (x 1.05 noise): far pixels with r_hat < 0 clamp to d_max,
    # near ones with r_hat > 1.25 to d_min (there D* < 0.1 m: such LiDAR pixels are out of M).
    noise = np.exp(rng.normal(0.0, 0.05, (1, h, w)))
    target[1, 0] = np.where(target[1, 0] > 0, noise / np.maximum(8.0 * (1.0 - s[1, 0]) + 0.02, 1e-3), 0.0)
    pred = np.exp(rng.uniform(math.log(0.05), math.log(100.0), (b, n, 1, h, w)))
    omega = rng.random((b, n, 1, h, w)) < 0.85
    mask = (target > D_MIN) & (target < D_MAX)
    return pred, s, target, mask, omega


def test_aligned_teacher_matches_reference():
    """Eq. (21) on `_batch`: D_T of every fitted view equals the lstsq restatement; the views without a
    fit are exactly those with < 2 LiDAR pixels, a constant r_hat on them, or alpha <= 0."""
    _, s, target, mask, _ = _batch()
    depth, fitted = kd_baselines.aligned_teacher_depth(_t(s), _t(target), _t(mask).bool(), D_MIN, D_MAX)
    ref_depth, ref_fitted = ref_aligned_teacher(s, target, mask, D_MIN, D_MAX)
    assert fitted[..., 0, 0, 0].tolist() == ref_fitted.tolist()
    assert (~ref_fitted).sum() == 4 and not ref_fitted[0, 1] and not ref_fitted[0, 2] and not ref_fitted[1, 3]
    assert not ref_fitted[1, 2]  # random depths there: an exact lstsq fit with alpha < 0
    np.testing.assert_allclose(_np(depth)[ref_fitted], ref_depth[ref_fitted], rtol=1e-4)
    assert (ref_depth[ref_fitted] == D_MIN).any() and (ref_depth[ref_fitted] == D_MAX).any()  # both clamps act


@pytest.mark.parametrize("radius", [None, 0, 1, 2])
@pytest.mark.parametrize("use_omega", [False, True])
def test_response_kd_matches_reference(radius, use_omega):
    """Eqs. (21) and (23) on `_batch`: one SILog pooled over the pixels of all fitted views (dense, not only
    the LiDAR pixels), those of omega, and for (23) those outside N_r(M), against the restatement."""
    pred, s, target, mask, omega = _batch()
    omega = omega if use_omega else None
    got = kd_baselines.response_kd(_t(pred), _t(s), _t(target), _t(mask).bool(), D_MIN, D_MAX,
                                   None if omega is None else _t(omega).bool(), radius)
    expected = ref_response_kd(pred, s, target, mask, D_MIN, D_MAX, omega, radius)
    assert float(got) == pytest.approx(expected, rel=1e-4)


def test_response_kd_sends_no_gradient_to_the_teacher():
    """Eq. (21): D_T is a target. The gradient reaches D_hat, never the teacher's farness s."""
    pred, s, target, mask, _ = _batch(seed=1)
    pred_t, s_t = _t(pred).requires_grad_(), _t(s).requires_grad_()
    kd_baselines.response_kd(pred_t, s_t, _t(target), _t(mask).bool(), D_MIN, D_MAX).backward()
    assert pred_t.grad is not None and pred_t.grad.abs().sum() > 0
    assert s_t.grad is None
    depth, _ = kd_baselines.aligned_teacher_depth(s_t, _t(target), _t(mask).bool(), D_MIN, D_MAX)
    assert not depth.requires_grad


def test_response_kd_pools_views_not_averages_them_by_hand():
    """Eq. (21): one SILog over the pixels of all fitted views together. View 1 (exact fit, D_T = 4/3, 2, 4,
    1.6 m) predicted x 2 on its 4 pixels, view 2 (the same) x 1: g = (log 2) x 4, 0 x 4 ->
    10 sqrt(mean g^2 - 0.85 mean(g)^2) = 10 log 2 sqrt(1/2 - 0.85 / 4) = 10 log 2 sqrt(0.2875);
    the mean of the two views' own SILogs would be 10 sqrt(0.15) log 2 / 2."""
    s = torch.cat([view([0.0, 0.5, 1.0, 0.25])] * 2, dim=1)
    target = torch.cat([view([4 / 3, 2.0, 4.0, 0.0])] * 2, dim=1)
    teacher = view([4 / 3, 2.0, 4.0, 1.6])
    pred = torch.cat([2.0 * teacher, teacher], dim=1)
    got = kd_baselines.response_kd(pred, s, target, target > 0, D_MIN, D_MAX)
    assert float(got) == pytest.approx(10.0 * math.log(2.0) * math.sqrt(0.2875), rel=1e-5)


# ---------------------------------------------------------------------------- Eq. (23)

@pytest.mark.parametrize("radius", [0, 1, 2, 3])
def test_lidar_neighbourhood_matches_reference(radius):
    """N_r(M) of Eq. (23), the max-norm neighbourhood, on random masks of several views (pixels at the
    borders and corners included; H != W, so rows and columns cannot be swapped)."""
    rng = np.random.default_rng(radius)
    mask = rng.random((2, 3, 1, 7, 10)) < 0.08
    mask[0, 0, 0, 0, 0] = mask[0, 1, 0, 6, 9] = True
    mask[1, 2] = False
    got = kd_baselines.lidar_neighbourhood(torch.from_numpy(mask), radius)
    assert got.dtype == torch.bool and got.shape == mask.shape
    np.testing.assert_array_equal(got.numpy(), ref_neighbourhood(mask, radius))


def test_lidar_neighbourhood_is_a_square_by_hand():
    """N_r(M) by hand: one LiDAR pixel at (1, 5) of a 4 x 7 view, r = 2: rows 0-3 (all 4 of them), columns
    3-6 (clipped at the right border): 16 pixels, corners (3, 3) and (0, 6) included (max norm 2), (1, 2)
    not (distance 3)."""
    mask = torch.zeros(1, 1, 1, 4, 7, dtype=torch.bool)
    mask[..., 1, 5] = True
    got = kd_baselines.lidar_neighbourhood(mask, 2)[0, 0, 0]
    expected = torch.zeros(4, 7, dtype=torch.bool)
    expected[:, 3:7] = True
    assert torch.equal(got, expected)


def test_off_lidar_alignment_still_reads_the_lidar_by_hand():
    """Eq. (23): the pixels near LiDAR leave the loss, not the fit. A row of 6 pixels, LiDAR (r_hat, D*) =
    (1, 4/3), (0.5, 2), (0, 4) on the first three: alpha = 0.5, beta = 0.25 as in Eq. (21). r = 1 leaves
    pixels 4 and 5 to the loss, r_hat 0.25 and 0.75: D_T = 1 / 0.375 and 1 / 0.625 m."""
    s = view([0.0, 0.5, 1.0, 0.5, 0.75, 0.25])
    target = view([4 / 3, 2.0, 4.0, 0.0, 0.0, 0.0])
    depth, _ = kd_baselines.aligned_teacher_depth(s, target, target > 0, D_MIN, D_MAX)
    torch.testing.assert_close(depth[..., 4:].flatten(), torch.tensor([1 / 0.375, 1 / 0.625]))
    # The student 2x the teacher on pixel 4, 1x on pixel 5, anything on 0-3: g = (log 2, 0) ->
    # 10 log 2 sqrt(1/2 - 0.85 / 4) = 10 log 2 sqrt(0.2875).
    pred = depth * view([9.0, 9.0, 0.2, 5.0, 2.0, 1.0])
    got = kd_baselines.response_kd(pred, s, target, target > 0, D_MIN, D_MAX, lidar_radius=1)
    assert float(got) == pytest.approx(10.0 * math.log(2.0) * math.sqrt(0.2875), rel=1e-5)


# ---------------------------------------------------------------------------- Eq. (22)

def test_feature_kd_resizes_bilinearly_without_corners_by_hand():
    """Eq. (22), the resize to the teacher's grid: student tokens (1, 0), (0, 1) on a 1 x 2 grid, teacher
    (1, 0) on all 4 tokens of a 1 x 4 grid. Bilinear (align_corners=False) gives (1, 0), (3/4, 1/4),
    (1/4, 3/4), (0, 1): cosines 1, 3 / sqrt 10, 1 / sqrt 10, 0; mean of 2 - 2 cos = 1.5 - 2 / sqrt 10
    = 0.8675445. (align_corners=True: 1.5 - 1.5 / sqrt 5 = 0.8292; nearest: 1; a sum over tokens: 3.47.)"""
    student = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).view(1, 1, 2, 1, 2)
    teacher = torch.tensor([1.0, 0.0]).view(1, 1, 2, 1, 1).expand(1, 1, 2, 1, 4)
    got = kd_baselines.feature_kd(student, teacher, identity_adapter(2))
    assert float(got.detach()) == pytest.approx(1.5 - 2.0 / math.sqrt(10.0), rel=1e-6)


def test_feature_kd_normalises_each_token_over_channels_by_hand():
    """Eq. (22), the normalisation: two views, one token each, C = 2. View 1: student (3, 4), teacher (4, 3):
    unit vectors (0.6, 0.8), (0.8, 0.6), distance^2 0.08. View 2: student (0, 2), teacher (5, 0): 2.
    Mean over the 2 tokens: 1.04. (Normalised over the views instead: other numbers; a mean over
    channels instead of the sum: 0.52.) Scaling a teacher token by any positive factor changes nothing."""
    student = torch.tensor([[3.0, 4.0], [0.0, 2.0]]).view(1, 2, 2, 1, 1)
    teacher = torch.tensor([[4.0, 3.0], [5.0, 0.0]]).view(1, 2, 2, 1, 1)
    adapter = identity_adapter(2)
    assert float(kd_baselines.feature_kd(student, teacher, adapter).detach()) == pytest.approx(1.04, rel=1e-6)
    scaled = teacher * torch.tensor([0.01, 70.0]).view(1, 2, 1, 1, 1)
    assert float(kd_baselines.feature_kd(student, scaled, adapter).detach()) == pytest.approx(1.04, rel=1e-6)


@pytest.mark.parametrize("grids", [((6, 10), (3, 5)), ((7, 11), (3, 4)), ((2, 3), (5, 7))])
def test_feature_kd_matches_reference(grids):
    """Eq. (22) against the restatement: a random 1x1 adapter C_S = 4 -> C_T = 3 (weights and bias),
    B = 2, N = 3, the student grid resized down (by 2, by a non-integer factor: no antialiasing) or up
    to the teacher's; the mean is over all B N h_T w_T tokens."""
    (h, w), (h_t, w_t) = grids
    rng = np.random.default_rng(h * w)
    student, teacher = rng.normal(size=(2, 3, 4, h, w)), rng.normal(size=(2, 3, 3, h_t, w_t))
    adapter = torch.nn.Conv2d(4, 3, 1)
    with torch.no_grad():
        adapter.weight.copy_(_t(rng.normal(size=(3, 4, 1, 1))))
        adapter.bias.copy_(_t(rng.normal(size=3)))
    got = kd_baselines.feature_kd(_t(student), _t(teacher), adapter)
    expected = ref_feature_kd(student, teacher, _np(adapter.weight)[:, :, 0, 0], _np(adapter.bias))
    assert float(got.detach()) == pytest.approx(expected, rel=1e-5)


def test_feature_kd_adapter_sees_the_resized_features_and_the_teacher_no_gradient():
    """Eq. (22): the adapter A runs on the student features already resized to the teacher's grid (a
    1x1 conv commutes with the resize, so here it is a module that records its input); the teacher is
    a constant (no gradient), the student and the adapter train."""
    seen = []

    class Recording(torch.nn.Conv2d):
        def forward(self, x):
            seen.append(tuple(x.shape))
            return super().forward(x)

    gen = torch.Generator().manual_seed(0)
    student = torch.randn(2, 3, 4, 6, 10, generator=gen, requires_grad=True)
    teacher = torch.randn(2, 3, 5, 3, 4, generator=gen, requires_grad=True)
    adapter = Recording(4, 5, 1)
    kd_baselines.feature_kd(student, teacher, adapter).backward()
    assert seen == [(6, 4, 3, 4)]  # B N views on the teacher's 3 x 4 grid
    assert teacher.grad is None
    assert student.grad.abs().sum() > 0 and adapter.weight.grad.abs().sum() > 0


def test_feature_kd_reads_a_bf16_teacher_in_float32():
    """Eq. (22) in float32 whatever the teacher's precision: bf16 teacher features give the loss of the
    same values cast to float32, to float32 rounding."""
    gen = torch.Generator().manual_seed(4)
    student = torch.randn(1, 2, 4, 5, 6, generator=gen)
    teacher = torch.randn(1, 2, 3, 5, 6, generator=gen).bfloat16()
    adapter = torch.nn.Conv2d(4, 3, 1)
    got = kd_baselines.feature_kd(student, teacher, adapter)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, kd_baselines.feature_kd(student, teacher.float(), adapter), rtol=1e-6, atol=0)


# ------------------------------------------------------------------- Eq. (17) with the baselines

OBJ_MIN, OBJ_MAX = 0.5, 60.0  # a depth range other than the defaults, so that the config's range must be used


def _objective_case(seed=3, b=1, n=6, h=8, w=12):
    rng = np.random.default_rng(seed)
    target = rng.uniform(0.2, 70.0, (b, n, 1, h, w)) * (rng.random((b, n, 1, h, w)) < 0.3)
    target[0, 0, 0, 0, :4] = [OBJ_MIN, OBJ_MAX, 120.0, 0.3]  # in target > 0, not in M
    target[0, 1, 0, 2, :5] = [150.0, 90.0, 70.0, 200.0, 300.0]
    out = {"depth": rng.uniform(0.2, 70.0, (b, n, 1, h, w)), "logits": rng.normal(size=(b, n, 4, h, w)),
           "centers": np.sort(rng.uniform(1, 60, (b, n, 4)), axis=-1), "features": rng.normal(size=(b, n, 3, 4, 6))}
    farness = rng.uniform(-0.3, 1.3, (b, n, 1, h // 4, w // 4))  # coarse, as the teacher cache stores it
    # View 2: 1 / D* = 3 r_hat + 0.01 (x 1.05 noise) on the upsampled farness, so D_T reaches both ends of the range.
    r_hat = 1.0 - ref_resize(farness[0, 2], (h, w))
    lidar = target[0, 2] > 0
    target[0, 2] = np.where(lidar, np.exp(rng.normal(0.0, 0.05, r_hat.shape)) / np.maximum(3.0 * r_hat + 0.01, 1e-3),
                            0.0)
    omega = rng.random((b, n, 1, h, w)) < 0.8
    teacher = rng.normal(size=(b, n, 5, 2, 3))
    return out, target, farness, omega, teacher


@pytest.mark.parametrize("radius", [None, 1])
def test_baseline_objective_matches_reference(radius):
    """The terms Eq. (17) gains: lambda_rkd L_rkd + lambda_fkd L_fkd with lambda_rkd = 0.5, lambda_fkd = 2,
    against the restatements on the config's range (0.5-60 m): M = the strict range d_min < D* < d_max
    (not D* > 0, nor 0.1-80 m), D_T clamped to it, the coarse farness
    upsampled bilinearly (align_corners=False) to the ground truth, omega and r passed on. Run under
    bf16 autocast with bf16 outputs: every term in float32, equal to the float32 restatement of the
    same (bf16-rounded) values, and detached."""
    out, target, farness, omega, teacher = _objective_case()
    adapter = torch.nn.Conv2d(3, 5, 1)
    weight, bias = _np(adapter.weight)[:, :, 0, 0], _np(adapter.bias)
    t_out = {k: _t(v, torch.bfloat16) for k, v in out.items()}
    t_out["depth"].requires_grad_()
    rounded = {k: _np(v) for k, v in t_out.items()}  # what the bf16 outputs hold, in float64
    cfg = losses.LossConfig(pairs=(), min_depth=OBJ_MIN, max_depth=OBJ_MAX, lambda_ckd=0.0, lambda_vr=0.0)
    bcfg = kd_baselines.BaselineConfig(lambda_rkd=0.5, rkd_lidar_radius=radius, lambda_fkd=2.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, terms = kd_baselines.baseline_objective(t_out, _t(target), cfg, bcfg, _t(farness), _t(omega).bool(),
                                                      _t(teacher, torch.bfloat16), adapter)
    s_full = ref_resize(farness, target.shape[-2:])
    mask = (target > OBJ_MIN) & (target < OBJ_MAX)
    teacher_depth = ref_aligned_teacher(s_full, target, mask, OBJ_MIN, OBJ_MAX)[0][0, 2]
    assert teacher_depth.min() == OBJ_MIN and teacher_depth.max() == OBJ_MAX  # both ends of D_T's clamp act
    rkd = ref_response_kd(rounded["depth"], s_full, target, mask, OBJ_MIN, OBJ_MAX, omega, radius)
    fkd = ref_feature_kd(rounded["features"], _np(_t(teacher, torch.bfloat16)), weight, bias)
    assert terms["rkd"].dtype == terms["fkd"].dtype == loss.dtype == torch.float32
    assert not terms["rkd"].requires_grad and loss.requires_grad
    assert float(terms["rkd"]) == pytest.approx(rkd, rel=1e-4)
    assert float(terms["fkd"]) == pytest.approx(fkd, rel=1e-5)
    assert float(loss.detach()) == pytest.approx(0.5 * rkd + 2.0 * fkd, rel=1e-4)
    # M and the range matter here: fitting on every D* > 0 (120, 150, 200 m ...), or on 0.1-80 m, gives another loss.
    for other in ((target > 0, OBJ_MIN, OBJ_MAX), ((target > D_MIN) & (target < D_MAX), D_MIN, D_MAX)):
        assert abs(ref_response_kd(rounded["depth"], s_full, target, *other, omega, radius) - rkd) > 1e-3


def test_baseline_objective_terms_present_per_weight():
    """Only the terms whose weight is > 0 exist; both weights 0 add nothing (and need no teacher)."""
    out, target, farness, omega, teacher = _objective_case()
    t_out = {k: _t(v) for k, v in out.items()}
    cfg = losses.LossConfig(pairs=(), min_depth=OBJ_MIN, max_depth=OBJ_MAX, lambda_ckd=0.0, lambda_vr=0.0)
    loss, terms = kd_baselines.baseline_objective(t_out, _t(target), cfg, kd_baselines.BaselineConfig())
    assert float(loss) == 0.0 and terms == {}
    _, terms = kd_baselines.baseline_objective(t_out, _t(target), cfg, kd_baselines.BaselineConfig(lambda_rkd=1.0),
                                               _t(farness))
    assert set(terms) == {"rkd"}
    _, terms = kd_baselines.baseline_objective(t_out, _t(target), cfg, kd_baselines.BaselineConfig(lambda_fkd=1.0),
                                               teacher_features=_t(teacher), adapter=torch.nn.Conv2d(3, 5, 1))
    assert set(terms) == {"fkd"}


def test_aligned_teacher_sees_no_spread_in_a_constant_r_hat_that_float32_cannot_store():
    # One view of 2 x 10 pixels: the LiDAR row all at s = 0.3 (r_hat = 0.7, not a float32 dyadic), the other row
    # s = linspace(0, 1). No spread in r_hat over the LiDAR pixels: no fit, whatever float32 rounding says.
    s = torch.stack([torch.full((10,), 0.3), torch.linspace(0, 1, 10)]).reshape(1, 1, 1, 2, 10)
    target = torch.zeros(1, 1, 1, 2, 10)
    target[..., 0, :] = torch.tensor([5, 9, 6, 14, 7, 5.5, 12, 8, 6.5, 10])
    _, fitted = kd_baselines.aligned_teacher_depth(s, target, target > 0, 0.1, 80.0)
    assert not bool(fitted.any())
