"""The native-resolution evaluation protocol (`docs/PROTOCOL.md`, steps 1-4), pinned value by value.

`evaluate.evaluate_predictions(..., native=True)` and `protocol.py` score Eq. (18) the way
SurroundDepth does: the prediction (input size) is resized bilinearly (align_corners=False, no
antialiasing) to each camera's native ground truth, then clamped to [d_min, d_max]; only pixels with
d_min < D* < d_max count; per-image metrics are averaged per camera, then over the cameras; `--flip`
averages with the prediction of the flipped images, flipped back. Each test below writes one of
these steps out by hand (values in its comment) or restates it in numpy (`ref_resize`,
`ref_metrics`, `ref_protocol`), never calling the helper it checks, on small datasets built here
that have `native_depth` (no dataroot, no devkit: these tests take about a second).
"""
import math

import numpy as np
import pytest
import torch

import evaluate
import protocol
from rig import CAMERAS

N = len(CAMERAS)
D_MIN, D_MAX = 0.1, 80.0  # nuScenes' range (README, "Setting")


# ------------------------------------------------------------- references, from the protocol's text

def _axis_taps(n_in, n_out):
    """1-D bilinear resampling with align_corners=False, written out: output pixel i samples the input
    at x = (i + 1/2) n_in / n_out - 1/2 (pixel centers line up), x < 0 taken as 0, and the two input
    pixels floor(x) and floor(x) + 1 (the last one repeated at the far edge) weigh 1 - frac and frac.
    No antialiasing: a downscale reads two input pixels only. -> (i0, i1, frac) arrays of length n_out."""
    i0, i1, frac = [], [], []
    for i in range(n_out):
        x = max((i + 0.5) * n_in / n_out - 0.5, 0.0)
        lo = min(int(math.floor(x)), n_in - 1)
        i0.append(lo)
        i1.append(min(lo + 1, n_in - 1))
        frac.append(x - lo)
    return np.array(i0), np.array(i1), np.array(frac)


def ref_resize(img, size):
    """Bilinear resize (align_corners=False, no antialias) of the last two axes of img to size = (H, W),
    from the taps of `_axis_taps` (rows, then columns), in float64."""
    img = np.asarray(img, dtype=np.float64)
    (r0, r1, fr), (c0, c1, fc) = _axis_taps(img.shape[-2], size[0]), _axis_taps(img.shape[-1], size[1])
    rows = (1 - fr)[:, None] * img[..., r0, :] + fr[:, None] * img[..., r1, :]  # (..., H, w)
    return (1 - fc) * rows[..., c0] + fc * rows[..., c1]


def ref_metrics(pred, gt, d_min=D_MIN, d_max=D_MAX, median_scaling=False):
    """Eq. (18) of one image (monodepth2's code, restated): pixels d_min < D* < d_max; median scaling
    before the clamp; the clamp to [d_min, d_max]; delta < 1.25^k. Adds 'num_pixels'. None if no pixel."""
    valid = (gt > d_min) & (gt < d_max)
    if not valid.any():
        return None
    p, g = np.asarray(pred, dtype=np.float64)[valid], np.asarray(gt, dtype=np.float64)[valid]
    if median_scaling:
        p = p * np.median(g) / np.median(p)
    p = np.clip(p, d_min, d_max)
    ratio = np.maximum(g / p, p / g)
    return {"abs_rel": np.mean(np.abs(g - p) / g), "sq_rel": np.mean((g - p) ** 2 / g),
            "rmse": np.sqrt(np.mean((g - p) ** 2)), "rmse_log": np.sqrt(np.mean((np.log(g) - np.log(p)) ** 2)),
            "a1": np.mean(ratio < 1.25), "a2": np.mean(ratio < 1.25**2), "a3": np.mean(ratio < 1.25**3),
            "num_pixels": int(valid.sum())}


def ref_protocol(preds, natives, d_min=D_MIN, d_max=D_MAX, median_scaling=False):
    """Steps 2-4 of docs/PROTOCOL.md with loops: preds[s][n] (H, W) input-size prediction, natives[s][n]
    (H0, W0) ground truth -> ({camera: metrics or None}, overall metrics): each prediction resized to
    its own camera's native size, Eq. (18) per image, mean over the images of a camera that have
    ground truth, then mean over the cameras that have any; images and pixels counted, not averaged."""
    cams = {}
    for n, cam in enumerate(CAMERAS):
        rows = [ref_metrics(ref_resize(p[n], nat[n].shape), nat[n], d_min, d_max, median_scaling)
                for p, nat in zip(preds, natives)]
        rows = [r for r in rows if r is not None]
        cams[cam] = None if not rows else {
            **{k: float(np.mean([r[k] for r in rows])) for k in evaluate.METRIC_KEYS},
            "num_images": len(rows), "num_pixels": sum(r["num_pixels"] for r in rows)}
    have = [c for c in cams.values() if c is not None]
    overall = {**{k: float(np.mean([c[k] for c in have])) for k in evaluate.METRIC_KEYS},
               "num_images": sum(c["num_images"] for c in have), "num_pixels": sum(c["num_pixels"] for c in have)}
    return cams, overall


class NativeSet(torch.utils.data.Dataset):
    """Surround samples with ground truth at each camera's own native size, and a fixed prediction.

    preds[s]: (N, H, W) the prediction at the input size (key 'pred', read back by the predictor
    `lambda b: b['pred']`); natives[s]: N arrays (H0_n, W0_n), 0 = no point; depth[s]: (N, H, W)
    the input-size ground truth (default: none)."""

    def __init__(self, preds, natives, depth=None):
        self.preds, self.natives = preds, natives
        self.depth = depth if depth is not None else [np.zeros_like(p) for p in preds]

    def __len__(self):
        return len(self.preds)

    def __getitem__(self, index):
        pred = torch.from_numpy(np.asarray(self.preds[index], dtype=np.float32))[:, None]  # (N, 1, H, W)
        return {"images": torch.zeros(N, 3, *pred.shape[-2:]), "pred": pred,
                "depth": torch.from_numpy(np.asarray(self.depth[index], dtype=np.float32))[:, None]}

    def native_depth(self, index):
        return [np.asarray(m, dtype=np.float32) for m in self.natives[index]]


def _score(dataset, **kwargs):
    return evaluate.evaluate_predictions(lambda b: b["pred"], dataset, "cpu", progress=False, native=True, **kwargs)


def _same(got, expected, rel=1e-5):
    for k in evaluate.METRIC_KEYS:
        assert got[k] == pytest.approx(expected[k], rel=rel, abs=1e-9), k
    assert (got["num_images"], got["num_pixels"]) == (expected["num_images"], expected["num_pixels"])


# ------------------------------------------------------------------- the resize, step 2, by hand

def test_ref_resize_is_torchs_bilinear_without_corners():
    """The numpy restatement itself against F.interpolate(bilinear, align_corners=False), up and down."""
    rng = np.random.default_rng(0)
    img = rng.uniform(1.0, 50.0, (2, 5, 8))
    for size in ((11, 19), (3, 4), (5, 3), (1, 1), (16, 8)):
        got = torch.nn.functional.interpolate(torch.from_numpy(img)[None], size=size, mode="bilinear",
                                              align_corners=False)[0].numpy()
        np.testing.assert_allclose(got, ref_resize(img, size), rtol=1e-12)


def test_native_resize_is_bilinear_without_corners_by_hand():
    """Step 2 by hand. Camera n predicts (1 x 2) [2, 4] (n + 1); its native ground truth is 1 x 4,
    [2, 2, 7, 0] (n + 1). Bilinear with align_corners=False samples the input at x = -1/4 (-> 0),
    1/4, 3/4, 5/4 (-> 1): the resized prediction is [2, 2.5, 3.5, 4] (n + 1). (align_corners=True
    gives [2, 8/3, 10/3, 4], nearest [2, 2, 4, 4], resizing 1 / D instead of D [2, 16/7, 16/5, 4].)
    On the 3 valid pixels: abs_rel = (0 + 0.5 / 2 + 3.5 / 7) / 3 = 1/4; sq_rel = (0 + 0.25 / 2 + 12.25 / 7)
    (n + 1) / 3 = 0.625 (n + 1); rmse = sqrt(12.5 / 3) (n + 1); rmse_log = sqrt((log^2 1.25 + log^2 2) / 3);
    ratios 1, 1.25, 2: a1 = 1/3 (1.25 is not < 1.25), a2 = a3 = 2/3. Over the cameras, rmse is
    sqrt(12.5 / 3) x mean(n + 1) = 3.5 sqrt(12.5 / 3): each camera is scored against its own map."""
    preds = [np.stack([[[2.0, 4.0]] for _ in range(N)]) * np.arange(1, N + 1)[:, None, None]]
    natives = [[np.array([[2.0, 2.0, 7.0, 0.0]]) * (n + 1) for n in range(N)]]
    res = _score(NativeSet(preds, natives))
    assert res["protocol"] == "native"
    log_mean = math.sqrt((math.log(1.25) ** 2 + math.log(2.0) ** 2) / 3)
    for n, cam in enumerate(CAMERAS):
        got = res["per_camera"][cam]["sparse"]
        expected = {"abs_rel": 0.25, "sq_rel": 0.625 * (n + 1), "rmse": math.sqrt(12.5 / 3) * (n + 1),
                    "rmse_log": log_mean, "a1": 1 / 3, "a2": 2 / 3, "a3": 2 / 3, "num_images": 1, "num_pixels": 3}
        _same(got, expected, rel=1e-6)
    assert res["all"]["sparse"]["rmse"] == pytest.approx(3.5 * math.sqrt(12.5 / 3), rel=1e-6)
    assert res["all"]["sparse"]["sq_rel"] == pytest.approx(0.625 * 3.5, rel=1e-6)
    assert (res["all"]["sparse"]["num_images"], res["all"]["sparse"]["num_pixels"]) == (N, 3 * N)


def test_native_resize_both_axes_by_hand():
    """Step 2 on both axes with a non-integer factor: [[2, 4], [6, 8]] (2 x 2) resized to 4 x 5 is the
    bilinear function 2 + 4 a + 2 b with row weights a = 0, 1/4, 3/4, 1 (x = -1/4, 1/4, 3/4, 5/4) and
    column weights b = 0, 1/10, 1/2, 9/10, 1 (x = (j + 1/2) 2/5 - 1/2 = -0.3, 0.1, 0.5, 0.9, 1.3).
    The ground truth is that map exactly on all 20 pixels: every error is 0 and a1 = 1. Any other
    resize (corners aligned: a = j/3, b = j/4; nearest; bicubic; rows and columns swapped) is not."""
    a, b = np.array([0.0, 0.25, 0.75, 1.0]), np.array([0.0, 0.1, 0.5, 0.9, 1.0])
    expected_map = 2.0 + 4.0 * a[:, None] + 2.0 * b[None, :]
    assert expected_map[1, 1] == pytest.approx(3.2) and expected_map[2, 3] == pytest.approx(6.8)
    pred = np.broadcast_to(np.array([[2.0, 4.0], [6.0, 8.0]]), (N, 2, 2))
    res = _score(NativeSet([pred], [[expected_map] * N]))
    for cam in CAMERAS:
        got = res["per_camera"][cam]["sparse"]
        assert got["abs_rel"] < 1e-7 and got["rmse"] < 1e-6 and got["a1"] == 1.0 and got["num_pixels"] == 20


def test_native_clamp_comes_after_the_resize_by_hand():
    """Step 2: resized, then clamped. Camera 0 predicts [70, 100]: resized [70, 77.5, 92.5, 100],
    clamped [70, 77.5, 80, 80]; ground truth [70, 77.5, 79, 0] -> abs_rel = (1 / 79) / 3. (Clamped
    first, [70, 80] would resize to [70, 72.5, 77.5, 80].) Camera 1 predicts [0.02, 0.3]: resized
    [0.02, 0.09, 0.23, 0.3], clamped [0.1, 0.1, 0.23, 0.3]; ground truth [0.2, 0.1, 0.23, 0.3], where
    0.1 = d_min does not count -> abs_rel = (0.1 / 0.2) / 3 = 1/6, 3 pixels. The other cameras have
    no ground truth: the mean over cameras is over these two."""
    preds = np.ones((N, 1, 2))
    preds[0, 0], preds[1, 0] = [70.0, 100.0], [0.02, 0.3]
    natives = [np.zeros((1, 4)) for _ in range(N)]
    natives[0][0], natives[1][0] = [70.0, 77.5, 79.0, 0.0], [0.2, 0.1, 0.23, 0.3]
    res = _score(NativeSet([preds], [natives]))
    far, near = res["per_camera"][CAMERAS[0]]["sparse"], res["per_camera"][CAMERAS[1]]["sparse"]
    assert far["abs_rel"] == pytest.approx(1 / 79 / 3, rel=1e-5) and far["num_pixels"] == 3
    assert near["abs_rel"] == pytest.approx(1 / 6, rel=1e-5) and near["num_pixels"] == 3
    assert all(res["per_camera"][c]["sparse"] is None for c in CAMERAS[2:])
    assert res["all"]["sparse"]["abs_rel"] == pytest.approx((1 / 79 / 3 + 1 / 6) / 2, rel=1e-5)
    assert (res["all"]["sparse"]["num_images"], res["all"]["sparse"]["num_pixels"]) == (2, 6)


def test_native_pixels_are_strictly_inside_the_range_by_hand():
    """Step 3: of the native ground truth (0, 0.1, 0.1000001, 40, 79.9999, 80, 200) with a prediction of
    40 m everywhere, 3 pixels count (0.1000001, 40, 79.9999); num_pixels says 3, not the 6 non-zero
    ones. abs_rel = (|0.1000001 - 40| / 0.1000001 + 0 + 39.9999 / 79.9999) / 3."""
    gt = np.array([[0.0, 0.1, 0.1000001, 40.0, 79.9999, 80.0, 200.0]], dtype=np.float32)
    pred = np.full((N, 1, 7), 40.0)
    res = _score(NativeSet([pred], [[gt] * N]))
    g = gt[0, [2, 3, 4]].astype(np.float64)
    expected = np.mean(np.abs(g - 40.0) / g)
    got = res["per_camera"][CAMERAS[0]]["sparse"]
    assert got["num_pixels"] == 3 and got["abs_rel"] == pytest.approx(expected, rel=1e-6)


# ------------------------------------------------------ the whole path, against the restatement

def _native_case(seed=5, samples=3, size=(5, 8)):
    """Predictions over [0.05, 120] m (clamped on both sides), native maps of six different sizes
    per camera (up- and downscaled; (3, 4) and (2, 3) are smaller than the 5 x 8 input), ground
    truth on ~40 % of the pixels, values on and outside the range, and cameras without ground truth
    in some samples (camera 0 in samples 1 and 2, camera 3 in sample 0)."""
    rng = np.random.default_rng(seed)
    sizes = [(7, 11), (3, 4), (9, 5), (4, 13), (12, 12), (2, 3)]
    preds, natives, depth = [], [], []
    for s in range(samples):
        preds.append(np.exp(rng.uniform(math.log(0.05), math.log(120.0), (N,) + size)))
        depth.append(rng.uniform(1.0, 60.0, (N,) + size) * (rng.random((N,) + size) < 0.5))
        maps = []
        for n, hw in enumerate(sizes):
            m = rng.uniform(0.5, 70.0, hw) * (rng.random(hw) < 0.4)
            m.flat[:3] = [0.1, 80.0, 100.0]  # on or outside the range: never scored
            m.flat[3] = 50.0
            if (s, n) in ((1, 0), (2, 0), (0, 3)):
                m[:] = 0.0
            maps.append(m.astype(np.float32))
        natives.append(maps)
    return preds, natives, depth


@pytest.mark.parametrize("median_scaling", [False, True])
def test_native_protocol_matches_the_restatement(median_scaling):
    """Steps 2-4 as a whole on `_native_case`: every metric and count, per camera and over cameras,
    equals `ref_protocol` (resize, clamp, strict mask, median scaling per image before the clamp,
    per-camera then over-camera means). A flat mean over all images would differ: camera 0 has
    ground truth in one sample of three."""
    preds, natives, depth = _native_case()
    res = _score(NativeSet(preds, natives, depth), median_scaling=median_scaling)
    cams, overall = ref_protocol(preds, natives, median_scaling=median_scaling)
    for cam in CAMERAS:
        _same(res["per_camera"][cam]["sparse"], cams[cam])
    _same(res["all"]["sparse"], overall)
    assert cams[CAMERAS[0]]["num_images"] == 1 and cams[CAMERAS[3]]["num_images"] == 2
    flat = np.mean([ref_metrics(ref_resize(p[n], nat[n].shape), nat[n], median_scaling=median_scaling)["abs_rel"]
                    for p, nat in zip(preds, natives) for n in range(N) if (nat[n] > 0).any()])
    assert abs(flat - overall["abs_rel"]) > 1e-3  # the restatement does tell the two averagings apart


def test_native_protocol_leaves_eqs_19_and_the_bands_at_the_input_size():
    """Eq. (19) and the column bands read the input-size ground truth under both protocols: only the
    sparse Eq. (18) scores change with native=True."""
    preds, natives, depth = _native_case(seed=6)
    data = NativeSet(preds, natives, depth)
    native = _score(data)
    at_input = evaluate.evaluate_predictions(lambda b: b["pred"], data, "cpu", progress=False, native=False)
    assert native["scale"] == at_input["scale"] and native["column_bands"] == at_input["column_bands"]
    assert native["scale"]["mean_abs_log_rho"] is not None
    assert native["all"]["sparse"]["num_pixels"] != at_input["all"]["sparse"]["num_pixels"]
    assert at_input["protocol"] == "input"


def test_native_depth_follows_subset_indices():
    """Step 1 under torch Subsets: item i of Subset(d, [2, 0]) is scored against d.native_depth(2), then
    d.native_depth(0) (`protocol.base_dataset`), and `has_native_depth` sees through the Subset."""
    preds, natives, depth = _native_case(seed=7)
    data = NativeSet(preds, natives, depth)
    subset = torch.utils.data.Subset(data, [2, 0])
    assert protocol.has_native_depth(subset) and protocol.has_native_depth(data)
    assert not protocol.has_native_depth(torch.utils.data.Subset(data, []))
    assert not protocol.has_native_depth([{"images": None}])
    assert protocol.base_dataset(torch.utils.data.Subset(subset, [1]), 0) == (data, 0)
    res = _score(subset)
    cams, overall = ref_protocol([preds[2], preds[0]], [natives[2], natives[0]])
    for cam in CAMERAS:
        _same(res["per_camera"][cam]["sparse"], cams[cam])
    _same(res["all"]["sparse"], overall)
    item = protocol.WithNativeDepth(subset)[0]
    assert all(np.array_equal(a, b) for a, b in zip(item["depth_native"], natives[2]))
    assert torch.equal(item["pred"], data[2]["pred"])


# ---------------------------------------------------------------------------------- --flip

def test_flip_averaged_by_hand():
    """`--flip`: D = (predict(I) + flip_w(predict(flip_w(I)))) / 2, flipped along the width only. With
    predict(I) = I + (column index)^2 on a 2 x 3 image with rows [1, 2, 3] and [10, 20, 30]:
    predict(I) = [1, 3, 7], [10, 21, 34]; the flipped image [3, 2, 1], [30, 20, 10] predicts
    [3, 3, 5], [30, 21, 14], flipped back [5, 3, 3], [14, 21, 30]; the mean is [3, 3, 5], [12, 21, 32].
    (Without flipping back: [2, 3, 6], [20, 21, 24]; flipping the rows instead changes it too.)"""
    image = torch.tensor([[1.0, 2.0, 3.0], [10.0, 20.0, 30.0]]).view(1, 1, 1, 2, 3)
    batch = {"images": image.clone(), "other": 7}

    def predict(b):
        return b["images"] + torch.arange(3.0) ** 2

    got = protocol.flip_averaged(predict)(batch)
    torch.testing.assert_close(got.view(2, 3), torch.tensor([[3.0, 3.0, 5.0], [12.0, 21.0, 32.0]]))
    assert torch.equal(batch["images"], image) and batch["other"] == 7  # the batch itself is left alone


class TinyDepthNet(torch.nn.Module):
    """A stand-in for the Student with what evaluate_model uses: cfg.min_depth / cfg.max_depth and
    model(images)['depth'] (B, N, 1, H, W) in meters, here 0.2 + 60 sigmoid(3 x 3 conv of the image):
    predictions beyond both ends of a 0.5-40 m range, and not symmetric under a horizontal flip."""

    def __init__(self, min_depth, max_depth):
        super().__init__()
        self.cfg = type("Cfg", (), {"min_depth": min_depth, "max_depth": max_depth})()
        self.conv = torch.nn.Conv2d(3, 1, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(1, 3, 3, 3, generator=torch.Generator().manual_seed(3)))

    def forward(self, images):
        depth = 0.2 + 60.0 * torch.sigmoid(self.conv(images.flatten(0, 1)))
        return {"depth": depth.unflatten(0, images.shape[:2])}


def test_evaluate_model_flip_native_and_the_models_range():
    """evaluate_model(native=True, flip=True): the prediction is the flip average of the model's own
    outputs (restated here with torch.flip), resized and scored by `ref_protocol` over the depth range
    the model was trained for (its cfg: 0.5-40 m, so the ground truth at 40-70 m does not count and
    predictions beyond 40 m are clamped), in eval mode, and the model's mode is restored."""
    size = (6, 10)
    model = TinyDepthNet(0.5, 40.0).train()
    images = torch.rand(1, N, 3, *size, generator=torch.Generator().manual_seed(1))
    seen = []
    model.register_forward_pre_hook(lambda module, args: seen.append(module.training))

    class Images(NativeSet):
        def __getitem__(self, index):
            return {**super().__getitem__(index), "images": images[index]}

    rng = np.random.default_rng(2)
    natives = [[rng.uniform(0.2, 70.0, (9, 17)) * (rng.random((9, 17)) < 0.5) for _ in range(N)]]
    data = Images([np.zeros((N,) + size)], natives)
    res = evaluate.evaluate_model(model, data, "cpu", progress=False, native=True, flip=True)
    assert seen == [False, False] and model.training
    with torch.no_grad():
        plain = model(images)["depth"][:, :, 0].double().numpy()  # (1, N, H, W)
        mirrored = model(images.flip(-1))["depth"][:, :, 0].flip(-1).double().numpy()
    assert plain.max() > 40.0 and plain.min() < 40.0
    cams, overall = ref_protocol(list(0.5 * (plain + mirrored)), natives, 0.5, 40.0)
    for cam in CAMERAS:
        _same(res["per_camera"][cam]["sparse"], cams[cam])
    _same(res["all"]["sparse"], overall)
    no_flip, _ = ref_protocol(list(plain), natives, 0.5, 40.0)
    assert abs(no_flip[CAMERAS[0]]["abs_rel"] - cams[CAMERAS[0]]["abs_rel"]) > 1e-3  # the flip shows
    wide, _ = ref_protocol(list(0.5 * (plain + mirrored)), natives, D_MIN, D_MAX)
    assert wide[CAMERAS[0]]["num_pixels"] > cams[CAMERAS[0]]["num_pixels"]  # the range shows
