"""Tests of teacher.py: the real loading code on a tiny random Depth Anything V2, the frozen
contract, the one-line offline error, and the EmulatedTeacher of the synthetic world."""
import huggingface_hub.constants
import pytest
import torch
import torch.nn.functional as F

import emulated
import teacher as T
from conftest import TINY_HIDDEN, TINY_LONG_SIDE

@pytest.fixture(scope="module")
def tiny_teacher(tiny_folder):
    return T.load_teacher(tiny_folder, long_side=TINY_LONG_SIDE)


def test_real_loader_matches_transformers(tiny_folder, tiny_teacher):
    from transformers import AutoModelForDepthEstimation

    images = torch.rand(2, 3, 40, 72, generator=torch.Generator().manual_seed(1))
    out = tiny_teacher(images)

    # Independent pre-processing: long side 56, 40 * 56 / 72 = 31.1 -> 28 (nearest multiple of
    # 14), bicubic, ImageNet mean/std.
    size = (28, 56)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    resized = F.interpolate(images, size=size, mode="bicubic", align_corners=False, antialias=True)
    resized = resized.clamp(0, 1)
    model = AutoModelForDepthEstimation.from_pretrained(tiny_folder).eval()
    with torch.no_grad():
        direct = model(pixel_values=(resized - mean) / std).predicted_depth  # (2, 28, 56)
        expected = F.interpolate(direct[:, None], size=(40, 72), mode="bilinear", align_corners=False)
        unnormalised = model(pixel_values=resized).predicted_depth
        last = model.backbone(pixel_values=(resized - mean) / std).feature_maps[-1]  # (2, 1 + 8, 32)

    assert out["disparity"].shape == (2, 1, 40, 72) and out["disparity"].dtype == torch.float32
    assert out["disparity"].std() > 1e-4  # a meaningful comparison, not zeros against zeros
    torch.testing.assert_close(out["disparity"], expected, rtol=1e-4, atol=1e-5)
    # The comparison is sensitive to the pre-processing: skipping the normalisation changes it.
    assert not torch.allclose(direct, unnormalised, rtol=1e-3, atol=1e-4)

    # Features: the last block's patch tokens after the backbone LayerNorm, CLS dropped, on the
    # 2 x 4 patch grid, C = hidden size; equal to the backbone's deepest feature map.
    assert out["features"].shape == (2, TINY_HIDDEN, 28 // 14, 56 // 14)
    grid = last[:, 1:].transpose(1, 2).reshape(2, TINY_HIDDEN, 2, 4)
    torch.testing.assert_close(out["features"], grid, rtol=1e-4, atol=1e-5)


def test_input_size_keeps_aspect_and_patch_multiples():
    assert T.teacher_input_size(900, 1600) == (294, 518)  # nuScenes: 900 * 518 / 1600 = 291.4 -> 294
    assert T.teacher_input_size(96, 160) == (308, 518)  # 96 * 518 / 160 = 310.8 -> 308
    assert T.teacher_input_size(28, 28, long_side=28) == (28, 28)


def test_real_teacher_is_frozen(tiny_teacher):
    assert all(not p.requires_grad for p in tiny_teacher.parameters())
    tiny_teacher.train()  # e.g. a parent module switched to training mode
    assert not tiny_teacher.training and not tiny_teacher.model.training
    out = tiny_teacher(torch.rand(1, 3, 28, 42))
    assert not out["disparity"].requires_grad and not out["features"].requires_grad
    # Ordinary tensors, not inference tensors: they can enter the student's autograd graph.
    weight = torch.ones(1, requires_grad=True)
    (out["disparity"] * weight).sum().backward()
    assert weight.grad is not None


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No network at all, and an empty Hugging Face cache (huggingface_hub read the env at import)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))


def check_one_line_error(info, *words):
    message = str(info.value)
    assert "\n" not in message
    assert "local folder" in message and "--teacher" in message
    for word in words:
        assert word in message
    assert info.value.__cause__ is None and info.value.__suppress_context__  # raised from None


def test_offline_hub_id_gives_one_clear_error(offline):
    model_id = "depth-anything/Depth-Anything-V2-Small-hf"
    with pytest.raises(T.TeacherUnavailable) as info:
        T.load_teacher(model_id)
    check_one_line_error(info, model_id, "HF_HUB_OFFLINE")
    with pytest.raises(T.TeacherUnavailable) as info:
        T.load_teacher("small")  # the size name resolves to the same id
    check_one_line_error(info, model_id)


def test_missing_or_empty_folder_gives_one_clear_error(offline, tmp_path, tiny_folder):
    missing = tmp_path / "no-such-folder"
    with pytest.raises(T.TeacherUnavailable) as info:
        T.load_teacher(missing)
    check_one_line_error(info, str(missing), "no such folder")
    empty = tmp_path / "config-only"
    empty.mkdir()
    (empty / "config.json").write_text((tiny_folder / "config.json").read_text())
    with pytest.raises(T.TeacherUnavailable) as info:
        T.load_teacher(empty)
    check_one_line_error(info, "no Depth Anything config and model.safetensors weights")


def test_offline_env_is_read_at_call_time(monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert not T.hub_offline()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # set after huggingface_hub was imported
    assert T.hub_offline()


def test_random_teacher_small_runs():
    teacher = T.build_random_teacher("small", long_side=28)
    assert teacher.name == "random-small@28"
    assert all(not p.requires_grad for p in teacher.parameters())
    out = teacher(torch.rand(1, 3, 28, 28))
    assert out["disparity"].shape == (1, 1, 28, 28)
    assert out["features"].shape == (1, 384, 2, 2)  # ViT-S/14: C = 384
    assert torch.isfinite(out["features"]).all()


def street_depth(m=2, h=24, w=40, seed=0):
    """(m, 1, h, w) depth in meters: a random smooth scene below, sky (0) in the top rows."""
    gen = torch.Generator().manual_seed(seed)
    coarse = 2.0 + 60.0 * torch.rand(m, 1, 3, 4, generator=gen)
    depth = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=True)
    depth[:, :, : h // 4] = 0.0
    return depth


def test_emulated_teacher_is_deterministic_and_batch_independent():
    teacher = T.EmulatedTeacher()
    depth = street_depth()
    images = torch.rand(2, 3, 24, 40)
    first, second = teacher(images, depth), teacher(torch.rand(2, 3, 24, 40), depth.clone())
    assert torch.equal(first["disparity"], second["disparity"])
    assert torch.equal(first["features"], second["features"])
    alone = teacher(images[1:], depth[1:])  # a cached single view equals its place in a batch
    assert torch.equal(alone["disparity"], first["disparity"][1:])
    other = teacher(images, street_depth(seed=1))
    assert not torch.allclose(other["disparity"], first["disparity"])


def test_emulated_teacher_sky_is_the_minimum():
    depth = street_depth()
    disparity = T.EmulatedTeacher()(None, depth)["disparity"]
    sky = depth == 0
    for i in range(depth.shape[0]):
        d, s = disparity[i], sky[i]
        assert torch.all(d[s] == d.min())
        assert d[~s].min() > d.min()


def test_emulated_teacher_monotone_without_distortion():
    # Depth grows from 2 m to 60 m along the width: r = a / D + b must fall strictly along it,
    # also after the edge blur (a blur with replicate padding keeps a monotone ramp monotone).
    ramp = torch.linspace(2.0, 60.0, 40).expand(3, 1, 16, 40).contiguous()
    disparity = T.EmulatedTeacher(strength=0.0)(None, ramp)["disparity"]
    assert torch.all(disparity[..., 1:] < disparity[..., :-1])


def test_emulated_teacher_warp_amount(monkeypatch):
    # Error (b) alone (the order and far-range errors off): r - b = a * (1 / D) * (1 + e(p)) with
    # |e| <= EMULATED_WARP * strength, so a * (1 + e) spans at most (1 + W) / (1 - W).
    monkeypatch.setattr(emulated, "EMULATED_ORDER", 0.0)
    monkeypatch.setattr(emulated, "EMULATED_FAR_DEPTH", float("inf"))
    depth = street_depth(m=1)
    sky = depth == 0
    warp = emulated.EMULATED_WARP
    for strength, lo, hi in ((0.0, 1.0, 1.0 + 1e-4), (1.0, 1.02, (1 + warp) / (1 - warp) + 1e-4)):
        r = T.EmulatedTeacher(strength=strength, blur_sigma=0.0)(None, depth)["disparity"]
        a_times_error = (r - r[sky].min())[~sky] * depth[~sky]  # a * (1 + e(p)), b removed
        spread = float(a_times_error.max() / a_times_error.min())
        assert lo <= spread <= hi, (strength, spread)


def test_emulated_teacher_shapes_and_features():
    teacher = T.EmulatedTeacher(features_grid=(6, 10), num_bins=16)
    out = teacher(torch.rand(3, 3, 24, 40), street_depth(m=3))
    assert out["disparity"].shape == (3, 1, 24, 40) and out["disparity"].dtype == torch.float32
    assert out["features"].shape == (3, 16, 6, 10)
    # Pooled P^T: every token is still a distribution over the K bins (Eq. 7).
    torch.testing.assert_close(out["features"].sum(dim=1), torch.ones(3, 6, 10))
    assert not out["features"].requires_grad
    assert teacher.name == "emulated2-s1-blur1.5-k16-g6x10"
    with pytest.raises(ValueError):
        teacher(torch.rand(1, 3, 24, 40))  # it needs the dense depth


def test_emulated_strength_from_the_teacher_name():
    assert T.build_teacher("emulated").strength == 1.0
    assert T.build_teacher("emulated:0.5").strength == 0.5
    assert T.build_teacher("emulated:0").name != T.build_teacher("emulated").name  # separate caches
    for bad in ("emulated:strong", "emulated:-1", "emulated:7"):
        with pytest.raises(T.InputError, match="emulated:S"):
            T.build_teacher(bad)


def test_a_folder_with_pickled_weights_only_is_refused(offline, tmp_path, tiny_folder):
    # The same tiny teacher saved as pytorch_model.bin (a pickle) instead of model.safetensors: refused in one
    # line, never unpickled.
    import shutil

    from safetensors.torch import load_file
    folder = tmp_path / "pickled"
    shutil.copytree(tiny_folder, folder)
    weights = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    torch.save(weights, str(folder / "pytorch_model.bin"))
    with pytest.raises(T.TeacherUnavailable, match="model.safetensors"):
        T.load_teacher(str(folder))
