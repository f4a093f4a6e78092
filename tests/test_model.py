"""Tests of model.py: the student of Eqs. (1)-(5), its inference helper and checkpoint I/O.

- forward shapes for N = 6 and N = 1 views; logits at stride 4 with the default three decoder
  stages, stride 2 with four; the resnet34 option builds;
- for_inference (BatchNorm folded, channels_last) gives the same outputs as the eval model
  and has no BatchNorm left;
- bin centers (Eq. 3) strictly increasing inside [d_min, d_max]; uniform widths -> uniform centers;
- hybrid regression (Eq. 5) is the explicit per-pixel sum_k softmax(z)_k c_k, and the model's
  depth is that map upsampled;
- shared_bins: one set of centers per surround sample (Eq. 2 option);
- infer_image: any-size uint8 image -> (H0, W0) float32 depth in range;
- input size not a multiple of 32 -> ValueError;
- load_checkpoint: missing / corrupt file -> CheckpointError naming the path; save + load
  round-trips weights and config;
- build_encoder(pretrained=True) offline -> one-line RuntimeError mentioning --pretrained.
"""
import dataclasses
import os
import urllib.error

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import model
from model import Student, StudentConfig

SMALL = dict(num_bins=8, decoder_channels=(32, 16, 16, 8), bin_hidden=16)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return Student(StudentConfig(**SMALL, image_size=(64, 64))).eval()


@pytest.fixture(scope="module")
def shared_net():
    torch.manual_seed(1)
    return Student(StudentConfig(**SMALL, shared_bins=True)).eval()


@pytest.mark.parametrize("b,n", [(1, 6), (2, 1)])
def test_forward_shapes(net, b, n):
    h, w = 32, 64
    with torch.no_grad():
        out = net(torch.rand(b, n, 3, h, w, generator=_gen(0)))
    k, c = SMALL["num_bins"], SMALL["decoder_channels"][net.cfg.feature_level]
    assert out["depth"].shape == (b, n, 1, h, w)
    assert out["logits"].shape == (b, n, k, h // 2, w // 2)
    assert out["centers"].shape == (b, n, k)
    assert out["features"].shape == (b, n, c, h // 8, w // 8)
    assert all(torch.isfinite(v).all() for v in out.values())


def test_default_decoder_predicts_logits_at_stride_4():
    cfg = StudentConfig(num_bins=8, bin_hidden=16)
    assert len(cfg.decoder_channels) == 3
    with torch.no_grad():
        out = Student(cfg).eval()(torch.rand(1, 2, 3, 32, 64, generator=_gen(0)))
    assert out["logits"].shape == (1, 2, 8, 8, 16)
    assert out["depth"].shape == (1, 2, 1, 32, 64)
    assert out["features"].shape[-2:] == (4, 8)  # feature_level 1: stride 8 either way


def test_logit_scale_multiplies_the_logits_and_nothing_else():
    torch.manual_seed(4)
    one = Student(StudentConfig(num_bins=8, bin_hidden=16, logit_scale=1.0)).eval()
    eight = Student(StudentConfig(num_bins=8, bin_hidden=16, logit_scale=8.0)).eval()
    eight.load_state_dict(one.state_dict())  # same weights, only the scale differs
    x = torch.rand(1, 2, 3, 32, 64, generator=_gen(6))
    with torch.no_grad():
        a, b = one(x), eight(x)
    torch.testing.assert_close(b["logits"], 8.0 * a["logits"])
    torch.testing.assert_close(b["centers"], a["centers"])
    torch.testing.assert_close(b["features"], a["features"])
    assert not torch.allclose(b["depth"], a["depth"])  # sharper P^S, another expectation (Eq. 5)


@pytest.mark.parametrize("encoder", ["resnet18", "regnet_x_400mf"])
def test_for_inference_same_outputs_without_batchnorm(encoder):
    torch.manual_seed(3)
    slow = Student(StudentConfig(encoder=encoder, num_bins=8, bin_hidden=16))
    for m in slow.modules():  # BatchNorm statistics far from the identity, so folding matters
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1, generator=_gen(1))
            m.running_var.uniform_(0.5, 2.0, generator=_gen(2))
            m.weight.data.uniform_(0.5, 1.5, generator=_gen(3))
            m.bias.data.uniform_(-0.5, 0.5, generator=_gen(4))
    slow.eval()
    fast = slow.for_inference()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in slow.modules())  # the original is untouched
    x = torch.rand(1, 6, 3, 64, 96, generator=_gen(5))
    with torch.no_grad():
        a, b = slow(x), fast(x)
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-4 * a[key].abs().max().item())


def test_resnet34_builds_and_runs():
    m = Student(StudentConfig(encoder="resnet34", **SMALL)).eval()
    assert len(m.encoder.layer3) == 6  # resnet34 has 6 blocks in layer3, resnet18 has 2
    with torch.no_grad():
        out = m(torch.rand(1, 1, 3, 32, 32, generator=_gen(1)))
    assert out["depth"].shape == (1, 1, 1, 32, 32)


def test_regnet_encoder_gives_five_stages_at_their_strides_and_channels():
    m = Student(StudentConfig(encoder="regnet_x_400mf", **SMALL)).eval()
    x = torch.rand(2, 3, 64, 96, generator=_gen(1))
    maps = m.encode(x)
    assert [t.shape[1] for t in maps] == list(model.ENCODER_CHANNELS["regnet_x_400mf"])
    assert [(t.shape[2], t.shape[3]) for t in maps] == [(64 // s, 96 // s) for s in (2, 4, 8, 16, 32)]
    with torch.no_grad():
        out = m(x[None])
    assert out["depth"].shape == (1, 2, 1, 64, 96) and m.bin_mlp[0].in_features == 400
    # The bin widths (Eq. 2) read the stride-32 stage: a change there moves the centers.
    m.encoder.trunk_output.block4[-1].f.c[1].bias.data += 1.0  # the last block's last BatchNorm shifts the bottleneck
    with torch.no_grad():
        assert not torch.allclose(m(x[None])["centers"], out["centers"])


def test_unknown_encoder_rejected():
    with pytest.raises(ValueError, match="encoder"):
        StudentConfig(encoder="resnet50")


def test_centers_increasing_and_in_range(net):
    with torch.no_grad():
        out = net(torch.rand(2, 3, 3, 32, 32, generator=_gen(2)))
    c = out["centers"]
    assert torch.all(c.diff(dim=-1) > 0)
    assert c.min().item() > net.cfg.min_depth and c.max().item() < net.cfg.max_depth
    # and the depth, a convex combination of the centers, is in range too
    assert out["depth"].min().item() >= net.cfg.min_depth and out["depth"].max().item() <= net.cfg.max_depth


def test_bins_to_centers_uniform_and_edges():
    k, lo, hi = 5, 0.1, 80.0
    c = model.bins_to_centers(torch.full((2, k), 1.0 / k, dtype=torch.float64), lo, hi)
    expected = lo + (torch.arange(k, dtype=torch.float64) + 0.5) * (hi - lo) / k
    assert torch.allclose(c, expected.expand(2, k), atol=1e-9)
    # a width vector concentrated on one bin: that center is mid-range, the others at the ends
    w = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)
    assert torch.allclose(model.bins_to_centers(w, 0.0, 10.0), torch.tensor([0.0, 5.0, 10.0], dtype=torch.float64))


def test_hybrid_depth_is_explicit_sum():
    g = _gen(3)
    logits = torch.randn(2, 3, 4, 5, 6, generator=g, dtype=torch.float64)
    centers = torch.rand(2, 3, 4, generator=g, dtype=torch.float64) * 50
    got = model.hybrid_depth(logits, centers)
    assert got.shape == (2, 3, 1, 5, 6)
    probs = torch.softmax(logits, dim=2)
    for b in range(2):
        for n in range(3):
            for y in (0, 4):
                for x in (0, 2, 5):
                    explicit = sum(probs[b, n, k, y, x] * centers[b, n, k] for k in range(4))
                    assert got[b, n, 0, y, x].item() == pytest.approx(explicit.item(), rel=1e-12)


@pytest.mark.parametrize("upsample", ["bilinear", "convex"])
def test_model_depth_is_upsampled_hybrid_regression(upsample):
    torch.manual_seed(5)
    net = Student(StudentConfig(**SMALL, upsample=upsample)).eval()
    with torch.no_grad():
        x = torch.rand(1, 2, 3, 64, 64, generator=_gen(4))
        out = net(x)
        probs = torch.softmax(out["logits"], dim=2)
        explicit = (probs * out["centers"][..., None, None]).sum(dim=2, keepdim=True).flatten(0, 1)  # (B*N, 1, h, w)
        if upsample == "bilinear":
            up = F.interpolate(explicit, size=(64, 64), mode="bilinear", align_corners=False)
        else:  # recompute the last decoder features to get the mask the model used
            feats = []
            handle = net.logit_head.register_forward_hook(lambda m, i, o: feats.append(i[0]))
            net(x)
            handle.remove()
            up = model.convex_upsample(explicit, net.upsample_head(feats[0]))
    assert torch.allclose(out["depth"], up.unflatten(0, (1, 2)), rtol=1e-5, atol=1e-5)


def _random_mask(m, s, h, w, seed):
    return 3.0 * torch.randn(m, 6 * s, h, w, generator=_gen(seed))


def test_convex_upsample_with_a_center_mask_is_nearest():
    depth = 80.0 * torch.rand(2, 1, 5, 7, generator=_gen(0))
    mask = torch.zeros(2, 6 * 4, 5, 7)
    mask[:, 4:8] = mask[:, 16:20] = 100.0  # the middle row and column of the 3x3: the pixel itself
    up = model.convex_upsample(depth, mask)
    assert up.shape == (2, 1, 20, 28)
    torch.testing.assert_close(up, F.interpolate(depth, scale_factor=4, mode="nearest"))


def test_convex_upsample_is_a_convex_combination_of_the_3x3_neighbours():
    depth = 1.0 + 79.0 * torch.rand(1, 1, 6, 8, generator=_gen(1))
    up = model.convex_upsample(depth, _random_mask(1, 2, 6, 8, seed=2))
    padded = F.pad(depth, (1, 1, 1, 1), mode="replicate")
    lo = -F.max_pool2d(-padded, 3, stride=1)  # (1, 1, 6, 8): min over each 3x3 neighbourhood
    hi = F.max_pool2d(padded, 3, stride=1)
    near = lambda t: F.interpolate(t, scale_factor=2, mode="nearest")  # noqa: E731
    assert (up >= near(lo) - 1e-4).all() and (up <= near(hi) + 1e-4).all()
    assert not torch.allclose(up, near(depth))  # it does mix neighbours
    const = torch.full((1, 1, 6, 8), 7.5)  # the border is replicated, so no zeros leak in
    torch.testing.assert_close(model.convex_upsample(const, _random_mask(1, 2, 6, 8, seed=3)),
                               torch.full((1, 1, 12, 16), 7.5))


@pytest.mark.parametrize("y,x", [(0, 2), (2, 0), (1, 0), (0, 1)])
def test_convex_upsample_one_hot_weights_pick_that_neighbour(y, x):
    """Row weight on neighbour row y and column weight on neighbour column x, for every
    sub-pixel: output pixel (Y s + i, X s + k) is coarse pixel (Y + y - 1, X + x - 1), edges
    replicated. Pins the channel order (rows c = y s + i, columns 3 s + x s + k) and the layout."""
    s, h, w = 2, 4, 5
    depth = torch.arange(h * w, dtype=torch.float32).view(1, 1, h, w)
    mask = torch.zeros(1, 6 * s, h, w)
    mask[:, y * s:(y + 1) * s] = 100.0
    mask[:, 3 * s + x * s:3 * s + (x + 1) * s] = 100.0
    up = model.convex_upsample(depth, mask)[0, 0]
    for row in range(h * s):
        for col in range(w * s):
            src_y = min(max(row // s + y - 1, 0), h - 1)
            src_x = min(max(col // s + x - 1, 0), w - 1)
            assert up[row, col].item() == pytest.approx(depth[0, 0, src_y, src_x].item(), abs=1e-4)


def test_convex_upsample_sub_pixels_land_in_place():
    """Different weights per sub-pixel: sub-row i of a coarse pixel takes neighbour row i (s = 3),
    so the three output rows of coarse row Y read coarse rows Y - 1, Y, Y + 1."""
    s, h, w = 3, 4, 4
    depth = torch.arange(h * w, dtype=torch.float32).view(1, 1, h, w)
    mask = torch.zeros(1, 6 * s, h, w)
    for i in range(s):
        mask[:, i * s + i] = 100.0  # row weight of sub-row i on neighbour row y = i
    mask[:, 3 * s + s:3 * s + 2 * s] = 100.0  # every sub-column on the middle column
    up = model.convex_upsample(depth, mask)[0, 0]
    for row in range(h * s):
        src_y = min(max(row // s + row % s - 1, 0), h - 1)
        assert up[row, 5].item() == pytest.approx(depth[0, 0, src_y, 5 // s].item(), abs=1e-4)


def test_convex_upsample_rejects_a_wrong_mask():
    with pytest.raises(ValueError, match="must be"):
        model.convex_upsample(torch.rand(1, 1, 4, 4), torch.rand(1, 10, 4, 4))


def test_convex_upsample_commutes_with_hybrid_regression():
    """Upsampling D = sum_k P_k c_k equals Eq. (5) with every P_k upsampled by the same weights."""
    logits = torch.randn(1, 8, 4, 6, generator=_gen(4))
    centers = torch.sort(80.0 * torch.rand(8, generator=_gen(5))).values
    mask = _random_mask(1, 4, 4, 6, seed=6)
    depth_up = model.convex_upsample(model.hybrid_depth(logits, centers), mask)
    probs = torch.softmax(logits, dim=1)
    probs_up = torch.cat([model.convex_upsample(probs[:, k:k + 1], mask) for k in range(8)], dim=1)
    torch.testing.assert_close(probs_up.sum(dim=1), torch.ones(1, 16, 24))  # still distributions
    torch.testing.assert_close(depth_up, (probs_up * centers[:, None, None]).sum(dim=1, keepdim=True))


def test_convex_head_gets_gradient_and_bilinear_has_none():
    torch.manual_seed(6)
    x = torch.rand(1, 2, 3, 32, 64, generator=_gen(7))
    convex = Student(StudentConfig(num_bins=8, bin_hidden=16, upsample="convex"))
    convex(x)["depth"].mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in convex.upsample_head.parameters())
    bilinear = Student(StudentConfig(num_bins=8, bin_hidden=16, upsample="bilinear"))
    assert bilinear.upsample_head is None
    assert len(list(bilinear.parameters())) == len(list(convex.parameters())) - 4


def test_old_checkpoint_without_upsample_loads_as_bilinear(tmp_path):
    cfg = StudentConfig(**SMALL, upsample="bilinear")
    config = dataclasses.asdict(cfg)
    del config["upsample"]  # written before the option existed
    path = str(tmp_path / "old.pt")
    model.save_checkpoint(path, {"config": config, "model": Student(cfg).state_dict()})
    loaded, _ = model.load_checkpoint(path)
    assert loaded.cfg.upsample == "bilinear" and loaded.upsample_head is None


def test_shared_bins_same_for_all_views_of_a_sample(shared_net):
    images = torch.rand(2, 6, 3, 32, 32, generator=_gen(5))
    images[1] = images[1] ** 3  # a darker second sample: a different surround image
    with torch.no_grad():
        c = shared_net(images)["centers"]  # (2, 6, K)
    assert torch.equal(c[:, :1].expand_as(c), c)
    assert (c[0, 0] - c[1, 0]).abs().max().item() > 1e-6
    # without the option, views of one sample get their own centers
    torch.manual_seed(1)
    per_view = Student(StudentConfig(**SMALL, shared_bins=False)).eval()
    with torch.no_grad():
        c = per_view(images)["centers"]
    assert (c[0, 0] - c[0, 1]).abs().max().item() > 1e-6


def test_infer_image_any_size(net):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(50, 77, 3), dtype=np.uint8)
    depth = net.infer_image(image)
    assert isinstance(depth, np.ndarray)
    assert depth.shape == (50, 77) and depth.dtype == np.float32
    assert np.all(np.isfinite(depth))
    assert depth.min() >= net.cfg.min_depth and depth.max() <= net.cfg.max_depth


def test_infer_image_leaves_a_training_model_unchanged():
    torch.manual_seed(2)
    m = Student(StudentConfig(**SMALL, image_size=(64, 64)))
    m.train()
    state = {k: v.clone() for k, v in m.state_dict().items()}
    image = np.random.default_rng(1).integers(0, 256, size=(40, 70, 3), dtype=np.uint8)
    depth = m.infer_image(image)
    assert m.training  # the caller's mode is kept
    for key, value in m.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert np.allclose(depth, m.eval().infer_image(image), rtol=1e-5, atol=1e-5)


def test_size_not_multiple_of_32_raises(net):
    with pytest.raises(ValueError, match="multiple of 32"):
        net(torch.rand(1, 1, 3, 48, 64))
    with pytest.raises(ValueError, match="multiple of 32"):
        net(torch.rand(1, 1, 3, 64, 70))


# ----------------------------------------------------------------------------- checkpoints

def test_load_checkpoint_missing_path(tmp_path):
    path = str(tmp_path / "nowhere" / "checkpoint.pt")
    with pytest.raises(model.CheckpointError) as err:
        model.load_checkpoint(path)
    assert path in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("content", [np.random.default_rng(0).bytes(2048), b""], ids=["random", "empty"])
def test_load_checkpoint_corrupt_file(tmp_path, content):
    path = str(tmp_path / "corrupt.pt")
    with open(path, "wb") as f:
        f.write(content)
    with pytest.raises(model.CheckpointError) as err:
        model.load_checkpoint(path)
    assert path in str(err.value)
    assert "\n" not in str(err.value)


def test_load_checkpoint_wrong_payload(tmp_path):
    path = str(tmp_path / "foreign.pt")
    torch.save({"weights": torch.zeros(3)}, path)
    with pytest.raises(model.CheckpointError, match="foreign.pt"):
        model.load_checkpoint(path)


def test_load_checkpoint_error_without_message(tmp_path, monkeypatch):
    path = str(tmp_path / "huge.pt")
    with open(path, "wb") as f:
        f.write(b"x")

    def out_of_memory(*args, **kwargs):
        raise MemoryError()  # what a garbled length field in a large file can produce

    monkeypatch.setattr(torch, "load", out_of_memory)
    with pytest.raises(model.CheckpointError, match="huge.pt"):
        model.load_checkpoint(path)


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(7)
    cfg = StudentConfig(**SMALL, shared_bins=True, image_size=(64, 96))
    src = Student(cfg)
    with torch.no_grad():  # make the BatchNorm running statistics non-default too
        for name, buf in src.state_dict().items():
            if "running_" in name:
                buf.add_(torch.rand(buf.shape, generator=_gen(8)))
    path = str(tmp_path / "run" / "checkpoint.pt")
    model.save_checkpoint(path, {"config": dataclasses.asdict(cfg), "model": src.state_dict(), "step": 3})
    assert os.path.isfile(path)
    assert [p for p in os.listdir(tmp_path / "run")] == ["checkpoint.pt"]  # no temporary left behind
    dst, ckpt = model.load_checkpoint(path)
    assert dst.cfg == cfg and ckpt["step"] == 3
    assert not dst.training
    ref, got = src.state_dict(), dst.state_dict()
    assert ref.keys() == got.keys()
    for key in ref:
        assert torch.equal(ref[key], got[key]), key
    images = torch.rand(1, 2, 3, 32, 64, generator=_gen(9))
    with torch.no_grad():
        assert torch.equal(src.eval()(images)["depth"], dst(images)["depth"])


# ------------------------------------------------------------------------ offline encoder

def test_build_encoder_pretrained_offline(monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    # torchvision binds the function by name at import time: patch that binding too
    import torchvision.models._api as tv_api
    monkeypatch.setattr(tv_api, "load_state_dict_from_url", offline, raising=False)
    with pytest.raises(RuntimeError) as err:
        model.build_encoder("resnet18", pretrained=True)
    message = str(err.value)
    assert "--pretrained" in message
    assert "\n" not in message
    assert "resnet18" in message
