"""Property tests of losses.py: every loss of the method, checked against the math it encodes.

- silog (Eq. 15): zero on a perfect prediction, positive otherwise, blind outside the mask,
  scale-invariant with lambda = 1.
- bin_chamfer (Eq. 16): zero when the centers are the set of valid depths, positive when shifted,
  blind to masked-out pixels and to views without ground truth.
- normalised_farness / teacher_bin_probs (Eqs. 6-7): invariant to r -> a r + b (a > 0),
  distributions per pixel, s in [0, 1], nearest pixel in bin 0, farthest in the last bin.
- cross_interaction_kd (Eqs. 8-11): L_kd = 0 when the student logits are log P^T, L_cross only
  reaches the centers, L_cross = 0 when the teacher's one-hot bins have the ground-truth centers.
- border_tokens / relational_kd / view_relational_kd (Eqs. 12-14): zero on equal features,
  invariant to channel permutations, orthogonal rotations and the channel count, positive on
  mismatched features, differentiable w.r.t. the student, pairs from rig.ADJACENT_PAIRS.
- With a real (small) Student, the gradient of L_cross reaches the bin MLP and not the logit
  head, and the gradient of L_kd the logit head and not the bin MLP.
"""
import math

import pytest
import torch

import losses
from rig import ADJACENT_PAIRS, CAMERAS


def _gen(seed):
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- silog (Eq. 15)

def _depth_pair(seed=0, shape=(2, 6, 1, 8, 12), dtype=torch.float64):
    g = _gen(seed)
    target = torch.rand(shape, generator=g, dtype=dtype) * 40 + 1.0  # 1..41 m, above the log floor
    pred = target * torch.exp(0.3 * torch.randn(shape, generator=g, dtype=dtype))
    mask = torch.rand(shape, generator=g) < 0.3
    return pred, target, mask


def test_silog_zero_on_perfect_prediction():
    _, target, mask = _depth_pair(dtype=torch.float32)
    assert losses.silog(target.clone(), target, mask).item() < 1e-4


def test_silog_positive_on_wrong_prediction():
    pred, target, mask = _depth_pair()
    assert losses.silog(pred, target, mask).item() > 0.1


def test_silog_ignores_pixels_outside_the_mask():
    pred, target, mask = _depth_pair()
    before = losses.silog(pred, target, mask)
    g = _gen(1)
    changed = torch.where(mask, pred, torch.rand(pred.shape, generator=g, dtype=pred.dtype) * 70 + 0.2)
    changed_target = torch.where(mask, target, torch.rand(pred.shape, generator=g, dtype=pred.dtype) * 70)
    assert not torch.equal(changed, pred)
    after = losses.silog(changed, changed_target, mask)
    assert after.item() == pytest.approx(before.item(), rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("scale", [0.5, 1.7, 3.0])
def test_silog_lambda_one_is_scale_invariant(scale):
    pred, target, mask = _depth_pair()
    a = losses.silog(pred, target, mask, lam=1.0)
    b = losses.silog(pred * scale, target, mask, lam=1.0)
    assert a.item() > 0.1
    assert b.item() == pytest.approx(a.item(), rel=1e-6)
    # the default lambda = 0.85 is not scale-invariant: it does see the global scale
    assert losses.silog(pred * scale, target, mask).item() != pytest.approx(
        losses.silog(pred, target, mask).item(), rel=1e-3)


# ----------------------------------------------------------------------- bin_chamfer (Eq. 16)

def _chamfer_case(k=8, h=6, w=10, seed=0):
    """Centers (1, 2, K) and a target whose valid pixels hold exactly those K depths (per view)."""
    g = _gen(seed)
    centers = torch.sort(torch.rand(1, 2, k, generator=g) * 70 + 1, dim=-1).values
    target = torch.rand(1, 2, 1, h, w, generator=g) * 80  # junk everywhere ...
    mask = torch.zeros(1, 2, 1, h, w, dtype=torch.bool)
    for n in range(2):  # ... except K valid pixels per view carrying exactly the centers
        idx = torch.randperm(h * w, generator=g)[:k]
        target[0, n, 0].view(-1)[idx] = centers[0, n]
        mask[0, n, 0].view(-1)[idx] = True
    return centers, target, mask


def test_bin_chamfer_zero_on_equal_sets():
    centers, target, mask = _chamfer_case()
    assert losses.bin_chamfer(centers, target, mask).item() < 1e-6


def test_bin_chamfer_zero_with_repeated_depths_and_different_counts():
    centers, target, mask = _chamfer_case()
    # view 1 gets extra valid pixels that repeat its centers: the *set* is unchanged
    free = (~mask[0, 1, 0]).nonzero()[:5]
    for i, (v, u) in enumerate(free):
        target[0, 1, 0, v, u] = centers[0, 1, i % centers.shape[-1]]
        mask[0, 1, 0, v, u] = True
    assert losses.bin_chamfer(centers, target, mask).item() < 1e-6


@pytest.mark.parametrize("shift", [0.5, 2.0])
def test_bin_chamfer_positive_when_shifted(shift):
    centers, target, mask = _chamfer_case()
    loss = losses.bin_chamfer(centers + shift, target, mask).item()
    # both directions see the shift (nearest neighbours are at distance <= shift, ~shift here)
    assert 0 < loss <= 2 * shift**2 + 1e-4


def test_bin_chamfer_both_directions_hand_computed():
    """centers {1, 2} vs depths {1, 2, 5}: centers->points 0, points->centers (0 + 0 + 9) / 3 = 3.
    centers {1, 2, 10} vs depths {1, 2}: centers->points (0 + 0 + 64) / 3, points->centers 0."""
    target = torch.tensor([1.0, 2.0, 5.0, 7.0]).reshape(1, 1, 1, 2, 2)
    mask = torch.tensor([True, True, True, False]).reshape(1, 1, 1, 2, 2)
    got = losses.bin_chamfer(torch.tensor([[[1.0, 2.0]]]), target, mask)
    assert got.item() == pytest.approx(3.0, rel=1e-6)
    mask = torch.tensor([True, True, False, False]).reshape(1, 1, 1, 2, 2)
    got = losses.bin_chamfer(torch.tensor([[[1.0, 2.0, 10.0]]]), target, mask)
    assert got.item() == pytest.approx(64.0 / 3, rel=1e-6)


def test_bin_chamfer_ignores_masked_pixels_and_empty_views():
    centers, target, mask = _chamfer_case()
    base = losses.bin_chamfer(centers + 1.0, target, mask)
    junk = torch.where(mask, target, torch.full_like(target, 3.3))
    assert losses.bin_chamfer(centers + 1.0, junk, mask).item() == pytest.approx(base.item(), rel=1e-6)
    # a third view without any valid pixel does not count, whatever its centers
    centers3 = torch.cat([centers, torch.full((1, 1, centers.shape[-1]), 50.0)], dim=1)
    target3 = torch.cat([target, torch.rand(1, 1, *target.shape[2:]) * 80], dim=1)
    mask3 = torch.cat([mask, torch.zeros(1, 1, *mask.shape[2:], dtype=torch.bool)], dim=1)
    assert losses.bin_chamfer(centers3 + 1.0, target3, mask3).item() == pytest.approx(base.item(), rel=1e-6)


def test_bin_chamfer_two_views_hand_computed():
    """View 0: centers {1, 2, 3} vs depths {1, 2.5, 3}: 0.25 / 3 each way. View 1: centers
    {4, 5, 6} vs the single depth 4.5: (0.25 + 0.25 + 2.25) / 3 + 0.25. Mean over views = 2 / 3."""
    centers = torch.tensor([[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]])
    target, mask = torch.zeros(1, 2, 1, 2, 3), torch.zeros(1, 2, 1, 2, 3, dtype=torch.bool)
    target[0, 0, 0, 0] = torch.tensor([1.0, 2.5, 3.0])
    mask[0, 0, 0, 0] = True
    target[0, 1, 0, 1, 2], mask[0, 1, 0, 1, 2] = 4.5, True
    assert losses.bin_chamfer(centers, target, mask).item() == pytest.approx(2.0 / 3.0, rel=1e-6)


@pytest.mark.parametrize("fill", [float("inf"), float("nan")])
def test_bin_chamfer_ignores_non_finite_masked_pixels(fill):
    centers = torch.tensor([[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]])
    target, mask = torch.zeros(1, 2, 1, 2, 3), torch.zeros(1, 2, 1, 2, 3, dtype=torch.bool)
    target[0, 0, 0, 0] = torch.tensor([1.0, 2.5, 3.0])
    mask[0, 0, 0, 0] = True
    target[0, 1, 0, 1, 2], mask[0, 1, 0, 1, 2] = 4.5, True
    target = torch.where(mask, target, torch.full_like(target, fill))  # e.g. "no LiDAR" as NaN
    assert losses.bin_chamfer(centers, target, mask).item() == pytest.approx(2.0 / 3.0, rel=1e-6)


def test_bin_chamfer_gradient_reaches_centers():
    centers, target, mask = _chamfer_case()
    c = (centers + 1.0).requires_grad_(True)
    losses.bin_chamfer(c, target, mask).backward()
    assert c.grad is not None and c.grad.abs().sum() > 0


# ----------------------------------------------- normalised_farness, teacher_bin_probs (6-7)

def _disparity(seed=0, shape=(2, 3, 1, 16, 24), dtype=torch.float32):
    g = _gen(seed)
    depth = torch.rand(shape, generator=g, dtype=torch.float64) * 60 + 1.0
    return (1.0 / depth).to(dtype)  # inverse depth: a = 1, b = 0


@pytest.mark.parametrize("a,b", [(0.5, 0.0), (3.0, -2.0), (40.0, 7.0), (0.05, 0.3), (2.0, 10.0), (25.0, 100.0)])
def test_teacher_bin_probs_affine_invariant(a, b):
    r = _disparity()
    ref = losses.teacher_bin_probs(r, 8)
    moved = losses.teacher_bin_probs(a * r + b, 8)
    assert (moved - ref).abs().max().item() < 1e-5
    s_ref, s_moved = losses.normalised_farness(r), losses.normalised_farness(a * r + b)
    assert (s_moved - s_ref).abs().max().item() < 1e-5


@pytest.mark.parametrize("a,b", [(2.0, 1e4), (1.0, 1e5)])
def test_teacher_bin_probs_affine_invariant_large_offset_float64(a, b):
    r = _disparity(dtype=torch.float64)
    ref = losses.teacher_bin_probs(r, 8)
    moved = losses.teacher_bin_probs(a * r + b, 8)  # exact enough in float64 (eps * 1e5 ~ 1e-11)
    assert (moved - ref).abs().max().item() < 1e-5


def test_teacher_bin_probs_is_a_distribution_and_farness_in_unit_interval():
    r = _disparity() * 7 - 3
    s = losses.normalised_farness(r)
    assert s.shape == r.shape
    assert s.min().item() >= 0.0 and s.max().item() <= 1.0
    p = losses.teacher_bin_probs(r, 16)
    assert p.shape == (2, 3, 16, 16, 24)
    assert p.min().item() >= 0.0
    assert torch.allclose(p.sum(dim=2), torch.ones(2, 3, 16, 24), atol=1e-5)


def test_normalised_farness_uses_2nd_and_98th_percentiles():
    # r = 0, 1, ..., 99: q_lo = 0.02 * 99 = 1.98, q_hi = 0.98 * 99 = 97.02 (linear interpolation)
    r = torch.arange(100, dtype=torch.float32).reshape(1, 1, 10, 10)
    s = losses.normalised_farness(r).flatten()
    assert s[50].item() == pytest.approx(1 - (50 - 1.98) / (97.02 - 1.98), abs=1e-6)
    assert s[97].item() == pytest.approx(1 - (97 - 1.98) / 95.04, abs=1e-6)
    assert s[98].item() == 0.0 and s[99].item() == 0.0  # above q_hi: clipped to "nearest"
    assert s[0].item() == 1.0 and s[1].item() == 1.0  # below q_lo: clipped to "farthest"
    assert 0.0 < s[2].item() < 1.0
    # a sky-like outlier barely moves the others: the percentiles are robust
    r2 = r.clone()
    r2.view(-1)[0] = -1e6
    assert (losses.normalised_farness(r2).flatten()[1:] - s[1:]).abs().max().item() < 0.03


def test_farness_bin_probs_bin_centers_and_symmetry():
    k = 8
    u = (torch.arange(k, dtype=torch.float32) + 0.5) / k  # u_k = (k - 1/2) / K, 1-based k
    p = losses.farness_bin_probs(u.reshape(1, 1, 1, k), k)  # (1, K, 1, K): pixel j has s = u_j
    assert torch.equal(p[0, :, 0].argmax(dim=0), torch.arange(k))
    # on the boundary s = j / K between bins j-1 and j both are equally likely
    edge = losses.farness_bin_probs(torch.tensor([3.0 / k]).reshape(1, 1, 1), k)[:, 0, 0]
    assert edge[2].item() == pytest.approx(edge[3].item(), rel=1e-5)
    assert edge.argmax().item() in (2, 3)
    # mirror symmetry: P(1 - s) is P(s) with the bins reversed
    s = torch.rand(1, 1, 5, 7, generator=_gen(21))
    assert torch.allclose(losses.farness_bin_probs(1 - s, k), losses.farness_bin_probs(s, k).flip(1), atol=1e-6)
    # sigma = 1 / K by default: the peak bin is clearly preferred but not one-hot
    assert 0.3 < p[0, 0, 0, 0].item() < 0.95


def test_nearest_pixel_in_first_bin_farthest_in_last():
    r = _disparity()
    k = 8
    s = losses.normalised_farness(r)
    p = losses.teacher_bin_probs(r, k)
    flat_r, flat_s = r.flatten(0, 2).flatten(1), s.flatten(0, 2).flatten(1)  # (M, H*W)
    flat_bin = p.argmax(dim=2).flatten(0, 1).flatten(1)  # (M, H*W)
    near, far = flat_r.argmax(dim=1), flat_r.argmin(dim=1)
    rows = torch.arange(flat_r.shape[0])
    assert torch.all(flat_s[rows, near] == 0.0)
    assert torch.all(flat_s[rows, far] == 1.0)
    assert torch.all(flat_bin[rows, near] == 0)
    assert torch.all(flat_bin[rows, far] == k - 1)
    # and farness orders pixels as depth does (larger disparity -> not farther)
    order = flat_r[0].argsort(descending=True)
    assert torch.all(flat_s[0, order].diff() >= 0)


# ----------------------------------------------------------- cross_interaction_kd (Eqs. 8-11)

def _ckd_case(seed=0, b=1, n=2, k=8, h=8, w=12):
    g = _gen(seed)
    probs = losses.teacher_bin_probs(_disparity(seed, (b, n, 1, h, w)), k)
    centers = torch.sort(torch.rand(b, n, k, generator=g) * 60 + 1, dim=-1).values
    target = torch.rand(b, n, 1, h, w, generator=g) * 60 + 1
    mask = torch.rand(b, n, 1, h, w, generator=g) < 0.4
    return probs, centers, target, mask


def test_ckd_kd_zero_when_student_logits_are_teacher_log_probs():
    probs, centers, target, mask = _ckd_case()
    logits = torch.log(probs)  # same resolution: the pooling is the identity
    out = losses.cross_interaction_kd(logits, centers, probs, target, mask, tau=1.0)
    assert abs(out["kd"].item()) < 1e-6
    # a shift of all logits of a pixel does not change the softmax either
    out = losses.cross_interaction_kd(logits + 5.0, centers, probs, target, mask, tau=1.0)
    assert abs(out["kd"].item()) < 1e-6


def test_ckd_kd_positive_otherwise_and_pools_to_logit_resolution():
    probs, centers, target, mask = _ckd_case()
    g = _gen(3)
    logits = torch.randn(probs.shape, generator=g)
    assert losses.cross_interaction_kd(logits, centers, probs, target, mask)["kd"].item() > 1e-3
    # at half resolution the teacher is average-pooled: log of the pooled P^T gives 0 again
    pooled = torch.nn.functional.avg_pool2d(probs.flatten(0, 1), 2).unflatten(0, probs.shape[:2])
    out = losses.cross_interaction_kd(torch.log(pooled), centers, probs, target, mask)
    assert abs(out["kd"].item()) < 1e-6
    assert losses.cross_interaction_kd(torch.log(pooled).flip(2), centers, probs, target, mask)["kd"].item() > 1e-3


def test_ckd_kd_matches_explicit_formula_with_temperature():
    """Eq. (10) written out: tau^2 * mean_p sum_k P^T_k (log P^T_k - log softmax(z / tau)_k)."""
    probs, centers, target, mask = _ckd_case()
    logits = torch.randn(probs.shape, generator=_gen(14)) * 3
    tau = 2.0
    q = torch.softmax(logits / tau, dim=2)
    explicit = tau**2 * (probs * (probs.log() - q.log())).sum(dim=2).mean()
    got = losses.cross_interaction_kd(logits, centers, probs, target, mask, tau=tau)["kd"]
    assert got.item() == pytest.approx(explicit.item(), rel=1e-4)
    # logits = tau * log P^T are perfect at temperature tau
    perfect = losses.cross_interaction_kd(tau * probs.log(), centers, probs, target, mask, tau=tau)["kd"]
    assert abs(perfect.item()) < 1e-5


def test_ckd_cross_gradient_reaches_centers_only():
    probs, centers, target, mask = _ckd_case()
    logits = torch.randn(probs.shape, generator=_gen(4)).requires_grad_(True)
    c = centers.clone().requires_grad_(True)
    out = losses.cross_interaction_kd(logits, c, probs, target, mask)
    g_logits, g_centers = torch.autograd.grad(out["cross"], [logits, c], allow_unused=True)
    assert g_logits is None or g_logits.abs().max().item() == 0.0
    assert g_centers is not None and g_centers.abs().sum().item() > 0
    g_logits, g_centers = torch.autograd.grad(out["kd"], [logits, c], allow_unused=True)
    assert g_logits is not None and g_logits.abs().sum().item() > 0
    assert g_centers is None or g_centers.abs().max().item() == 0.0


def test_ckd_cross_zero_when_teacher_bins_carry_the_ground_truth():
    b, n, k, h, w = 1, 2, 8, 8, 12
    g = _gen(7)
    centers = torch.sort(torch.rand(b, n, k, generator=g) * 60 + 1, dim=-1).values
    bins = torch.randint(0, k, (b, n, h, w), generator=g)
    probs = torch.nn.functional.one_hot(bins, k).permute(0, 1, 4, 2, 3).float()  # (B, N, K, H, W)
    target = torch.gather(centers[..., None, None].expand(b, n, k, h, w), 2, bins[:, :, None])
    mask = torch.rand(b, n, 1, h, w, generator=g) < 0.5
    out = losses.cross_interaction_kd(torch.zeros(b, n, k, h, w), centers, probs, target, mask)
    assert out["cross"].item() < 1e-4
    out = losses.cross_interaction_kd(torch.zeros(b, n, k, h, w), centers.flip(-1), probs, target, mask)
    assert out["cross"].item() > 0.1


# ------------------------------------------------------------- view-relational KD (12-14)

def _feats(seed=0, b=2, c=8, h=8, w=16, dtype=torch.float64):
    return torch.randn(b, len(CAMERAS), c, h, w, generator=_gen(seed), dtype=dtype)


def test_adjacent_pairs_are_the_ring():
    assert tuple(ADJACENT_PAIRS) == ((0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (5, 0))


def test_border_tokens_shapes_and_unit_norm():
    left, right = losses.border_tokens(_feats(), strip=0.25, grid=(4, 2))
    assert left.shape == right.shape == (2, 6, 8, 8)
    assert torch.allclose(left.norm(dim=-1), torch.ones(2, 6, 8, dtype=left.dtype))
    # the left strip is the first quarter of the columns, the right strip the last quarter
    f = torch.zeros(1, 6, 3, 8, 16, dtype=torch.float64)
    f[..., 0, :, :4] = 1.0  # channel 0 lives in the left strip only
    f[..., 1, :, 12:] = 1.0  # channel 1 lives in the right strip only
    f[..., 2, :, 4:12] = 1.0  # channel 2 lives in the middle only
    left, right = losses.border_tokens(f, strip=0.25, grid=(4, 2))
    assert torch.allclose(left[..., 0], torch.ones(1, 6, 8, dtype=torch.float64))
    assert torch.allclose(right[..., 1], torch.ones(1, 6, 8, dtype=torch.float64))


def test_vrkd_zero_on_equal_features():
    f = _feats()
    assert abs(losses.view_relational_kd(f, f.clone(), ADJACENT_PAIRS).item()) < 1e-9


def test_vrkd_positive_on_mismatched_features():
    assert losses.view_relational_kd(_feats(0), _feats(1), ADJACENT_PAIRS).item() > 1e-2


def _random_orthogonal(c_out, c_in, seed):
    q, _ = torch.linalg.qr(torch.randn(c_out, c_in, generator=_gen(seed), dtype=torch.float64))
    return q  # (c_out, c_in) with orthonormal columns


def test_vrkd_invariant_to_channel_permutation_rotation_and_count():
    student, teacher = _feats(0), _feats(1)
    ref = losses.view_relational_kd(student, teacher, ADJACENT_PAIRS).item()
    assert ref > 1e-2
    perm = torch.randperm(student.shape[2], generator=_gen(2))
    rot = _random_orthogonal(8, 8, 3)
    embed = _random_orthogonal(32, 8, 4)
    variants = {
        "permuted": student[:, :, perm],
        "rotated": torch.einsum("dc,bnchw->bndhw", rot, student),
        "zero-padded": torch.cat([student, torch.zeros_like(student)], dim=2),
        "embedded in C=32": torch.einsum("dc,bnchw->bndhw", embed, student),
    }
    for name, s in variants.items():
        got = losses.view_relational_kd(s, teacher, ADJACENT_PAIRS).item()
        assert got == pytest.approx(ref, abs=1e-5), name
    # teacher with C = 8 and a student carrying the same features in C = 32: no loss
    assert abs(losses.view_relational_kd(variants["embedded in C=32"], student, ADJACENT_PAIRS).item()) < 1e-5
    # and the rotation must be a rotation: a generic linear map does change the relations
    generic = torch.randn(8, 8, generator=_gen(5), dtype=torch.float64)
    skewed = torch.einsum("dc,bnchw->bndhw", generic, student)
    assert abs(losses.view_relational_kd(skewed, student, ADJACENT_PAIRS).item()) > 1e-3


def test_vrkd_uses_right_border_of_n_against_left_border_of_m():
    teacher = _feats(0)
    student = teacher.clone()
    # the middle columns are never part of a strip: changing them changes nothing
    student[..., 5:11] = torch.randn(student[..., 5:11].shape, generator=_gen(6), dtype=student.dtype)
    assert abs(losses.view_relational_kd(student, teacher, ADJACENT_PAIRS).item()) < 1e-9
    # only pair (0, 1): the left strip of view 0 and the right strip of view 1 are not used
    student = teacher.clone()
    student[:, 0, :, :, :4] = torch.randn(student[:, 0, :, :, :4].shape, generator=_gen(7), dtype=student.dtype)
    student[:, 1, :, :, 12:] = torch.randn(student[:, 1, :, :, 12:].shape, generator=_gen(8), dtype=student.dtype)
    assert abs(losses.view_relational_kd(student, teacher, [ADJACENT_PAIRS[0]]).item()) < 1e-9
    student[:, 1, :, :, :4] += 1.0 * torch.randn(student[:, 1, :, :, :4].shape, generator=_gen(9), dtype=student.dtype)
    assert losses.view_relational_kd(student, teacher, [ADJACENT_PAIRS[0]]).item() > 1e-3


def test_vrkd_gradient_reaches_student_not_teacher():
    student = _feats(0).requires_grad_(True)
    teacher = _feats(1).requires_grad_(True)
    loss = losses.view_relational_kd(student, teacher, ADJACENT_PAIRS)
    g_s, g_t = torch.autograd.grad(loss, [student, teacher], allow_unused=True)
    assert g_s is not None and g_s.abs().sum().item() > 0
    assert g_t is None or g_t.abs().max().item() == 0.0


def test_relational_kd_from_tokens_matches_feature_version():
    student, teacher = _feats(0, c=8), _feats(1, c=16)
    direct = losses.view_relational_kd(student, teacher, ADJACENT_PAIRS, tau=0.2)
    tokens = losses.relational_kd(losses.border_tokens(student), losses.border_tokens(teacher),
                                  ADJACENT_PAIRS, tau=0.2)
    assert direct.item() == pytest.approx(tokens.item(), rel=1e-12)
    assert math.isfinite(direct.item()) and direct.item() > 0


# ------------------------------------------------------- gradients through a real Student

@pytest.fixture(scope="module")
def student_terms():
    """A real (small) Student on a (1, 2, 3, 64, 64) input, its CKD terms, and its heads."""
    from model import Student, StudentConfig

    torch.manual_seed(0)
    net = Student(StudentConfig(num_bins=8, decoder_channels=(32, 16, 16, 8), bin_hidden=16))
    out = net(torch.rand(1, 2, 3, 64, 64, generator=_gen(11)))
    b, n, k, h, w = out["logits"].shape
    probs = losses.teacher_bin_probs(_disparity(12, (b, n, 1, 64, 64)), k)
    g = _gen(13)
    target = torch.rand(b, n, 1, 64, 64, generator=g) * 40 + 2
    mask = torch.rand(b, n, 1, 64, 64, generator=g) < 0.3
    terms = losses.cross_interaction_kd(out["logits"], out["centers"], probs, target, mask)
    heads = {name: p for name, p in net.named_parameters() if name.split(".")[0] in ("bin_mlp", "logit_head")}
    assert len(heads) == 6  # bin_mlp: 2 x (weight, bias); logit_head: weight, bias
    return terms, heads


def _reached(loss, params):
    """Which parameters get a nonzero gradient from `loss` (the graph is kept for the next call)."""
    grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True, retain_graph=True)
    return {name: (g is not None and g.abs().sum().item() > 0) for name, g in zip(params, grads)}


def test_student_gradients_cross_reaches_bin_mlp_not_logit_head(student_terms):
    terms, heads = student_terms
    reached = _reached(terms["cross"], heads)
    assert all(reached[name] for name in reached if name.startswith("bin_mlp."))
    assert not any(reached[name] for name in reached if name.startswith("logit_head."))


def test_student_gradients_kd_reaches_logit_head_not_bin_mlp(student_terms):
    terms, heads = student_terms
    reached = _reached(terms["kd"], heads)
    assert all(reached[name] for name in reached if name.startswith("logit_head."))
    assert not any(reached[name] for name in reached if name.startswith("bin_mlp."))


# ------------------------------------------- self-occlusion masks Omega (Eqs. 10, 12, 17)

def _objective_case(seed=0, b=1, n=6, k=8, h=16, w=24):
    """Student outputs at the logit stride 4, teacher farness and tokens, a LossConfig."""
    g = _gen(seed)
    out = {"logits": torch.randn(b, n, k, h // 4, w // 4, generator=g),
           "centers": torch.sort(torch.rand(b, n, k, generator=g) * 60 + 1, dim=-1).values,
           "depth": torch.rand(b, n, 1, h, w, generator=g) * 60 + 1,
           "features": torch.randn(b, n, 5, h // 2, w // 2, generator=g)}
    target = torch.where(torch.rand(b, n, 1, h, w, generator=g) < 0.3, torch.rand(b, n, 1, h, w, generator=g) * 60 + 1,
                         torch.zeros(()))
    farness = torch.rand(b, n, 1, h, w, generator=g)
    tokens = losses.border_tokens(torch.randn(b, n, 7, h // 4, w // 4, generator=g), 0.25, (4, 2))
    cfg = losses.LossConfig(pairs=ADJACENT_PAIRS, min_depth=0.1, max_depth=200.0)
    return out, target, farness, tokens, cfg


def test_omega_all_true_changes_nothing():
    out, target, farness, tokens, cfg = _objective_case()
    everything = torch.ones_like(target, dtype=torch.bool)
    loss, terms = losses.objective(out, target, cfg, farness, tokens)
    loss_all, terms_all = losses.objective(out, target, cfg, farness, tokens, everything)
    assert torch.equal(loss, loss_all) and all(torch.equal(terms[k], terms_all[k]) for k in terms)
    feats = out["features"]
    for a, b in zip(losses.border_tokens(feats), losses.border_tokens(feats, omega=everything)):
        assert torch.equal(a, b)


def test_masked_kd_is_the_mean_over_kept_cells_of_pooled_kept_teacher():
    """Eq. (10) with Omega restated: each logit cell's P^T averages the kept pixels of the cell,
    and its KL weighs by the share of kept pixels; the mean divides by the total weight."""
    probs, centers, target, mask = _ckd_case(h=8, w=12)
    logits = torch.randn(1, 2, 8, 4, 6, generator=_gen(21))
    omega = torch.rand(1, 2, 1, 8, 12, generator=_gen(22)) < 0.6
    got = losses.cross_interaction_kd(logits, centers, probs, target, mask, omega=omega)["kd"]
    cells = probs.unflatten(3, (4, 2)).unflatten(5, (6, 2))  # (B, N, K, 4, 2, 6, 2)
    keep = omega.float().unflatten(3, (4, 2)).unflatten(5, (6, 2))
    count = keep.sum(dim=(4, 6))  # (B, N, 1, 4, 6)
    p_t = (cells * keep).sum(dim=(4, 6)) / count.clamp_min(1)  # (B, N, K, 4, 6)
    q = torch.log_softmax(logits, dim=2)
    kl = (torch.xlogy(p_t, p_t) - p_t * q).sum(dim=2, keepdim=True)
    explicit = (kl * count).sum() / count.sum()
    assert got.item() == pytest.approx(explicit.item(), rel=1e-5)


def test_masked_pixels_do_not_reach_the_dense_terms():
    """Whatever the teacher and the features say on the masked pixels (the ego car), Eq. (10)
    and the student's tokens of Eq. (12) stay the same; without the mask they change."""
    out, target, farness, tokens, cfg = _objective_case()
    omega = torch.ones_like(target, dtype=torch.bool)
    omega[..., 12:, :] = False  # the bottom quarter: the car's bonnet
    other_farness = farness.clone()
    other_farness[..., 12:, :] = 1.0 - other_farness[..., 12:, :]
    other = dict(out, features=out["features"].clone())
    other["features"][..., 6:, :] += 5.0  # feature rows 6.. cover image rows 12..
    target = torch.zeros_like(target)  # no LiDAR: only the dense terms act
    _, masked = losses.objective(out, target, cfg, farness, tokens, omega)
    _, changed = losses.objective(other, target, cfg, other_farness, tokens, omega)
    assert masked["kd"].item() == pytest.approx(changed["kd"].item(), rel=1e-6)
    assert masked["vr"].item() == pytest.approx(changed["vr"].item(), rel=1e-6)
    _, plain = losses.objective(out, target, cfg, farness, tokens)
    _, plain_changed = losses.objective(other, target, cfg, other_farness, tokens)
    assert plain["kd"].item() != pytest.approx(plain_changed["kd"].item(), rel=1e-3)
    assert plain["vr"].item() != pytest.approx(plain_changed["vr"].item(), rel=1e-3)


def test_masked_border_tokens_average_the_kept_cells():
    """Eq. (12) with Omega: a token is the mean of the kept feature cells of its grid cell."""
    f = _feats(b=1, h=8, w=16)
    omega = torch.ones(1, 6, 1, 16, 32, dtype=torch.bool)
    omega[..., 8:, :] = False  # feature rows 4..7: the lower half of the grid cells 2, 3 of 4 rows
    omega[..., 4:6, :] = False  # feature row 2: half of grid row 1 (rows 2, 3)
    left, _ = losses.border_tokens(f, strip=0.25, grid=(4, 2), omega=omega)
    strip = f[..., :4]  # (1, 6, C, 8, 4) left strip; grid cells of 2 x 2 features
    expected = torch.stack([strip[..., 0:2, 0:2].mean(dim=(-1, -2)), strip[..., 0:2, 2:4].mean(dim=(-1, -2)),
                            strip[..., 3, 0:2].mean(dim=-1), strip[..., 3, 2:4].mean(dim=-1)], dim=2)  # (1, 6, 4, C)
    expected = torch.nn.functional.normalize(expected, dim=-1)
    assert torch.allclose(left[:, :, :4], expected, atol=1e-12)
    assert (left[:, :, 4:] == 0).all()  # grid rows 2, 3 lie on the car: no kept pixel, a zero token


def test_masked_objective_has_finite_gradients_where_whole_tokens_are_masked():
    """A token cell with no kept pixel is 0 and passes a zero gradient (not 0 * inf = NaN)."""
    out, target, farness, tokens, cfg = _objective_case()
    out = {k: v.clone().requires_grad_(True) for k, v in out.items()}
    omega = torch.ones_like(target, dtype=torch.bool)
    omega[..., 8:, :] = False  # the lower half: whole grid rows of every strip
    loss, terms = losses.objective(out, target, cfg, farness, tokens, omega)
    loss.backward()
    assert all(torch.isfinite(v.grad).all() for v in out.values() if v.grad is not None)
    assert out["features"].grad[..., 4:, :].abs().max() == 0  # no gradient from the car's pixels
    assert out["features"].grad[..., :4, :].abs().max() > 0
