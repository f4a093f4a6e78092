"""The user's main commands on nuScenes, end to end on the tiny dataroot of nuscenes_fixture.py:
`cache.py` (the teacher cache; its size per sample at 352 x 640), `train.py --data nuscenes` (with the
cache and with a live teacher loaded from a local Depth Anything V2 folder) and `evaluate.py` on the checkpoint."""
import os

import pytest
import torch

import cache
import evaluate
import nuscenes_fixture as fx
import train

CACHE_BUDGET = 150_000  # bytes per 6-view sample at 352 x 640: <= 5 GB for the 28,130 nuScenes train samples


@pytest.fixture(scope="module")
def dataroot(tmp_path_factory):
    root = tmp_path_factory.mktemp("nuscenes")
    fx.build_dataroot(root)
    return root


def test_cache_train_and_evaluate_on_nuscenes(dataroot, tiny_folder, tmp_path):
    data = ["--data", "nuscenes", "--dataroot", str(dataroot), "--version", "v1.0-mini", "--image-size", "64", "96",
            "--teacher", str(tiny_folder)]
    common = data + ["--no-pretrained", "--num-bins", "16"]
    cache.main(["--num-samples", "2", "--cache-root", str(tmp_path / "cache")] + data)
    (folder,) = [tmp_path / "cache" / d for d in os.listdir(tmp_path / "cache")]
    assert len([f for f in os.listdir(folder) if f.endswith(".npz")]) == 2
    run_args = ["--steps", "2", "--batch-size", "1", "--val-samples", "1", "--workers", "0"]
    train.main(common + run_args + ["--teacher-cache", str(folder), "--out", str(tmp_path / "cached")])
    train.main(common + run_args + ["--out", str(tmp_path / "live")])  # the teacher runs in the loop
    results = evaluate.main(["--checkpoint", str(tmp_path / "live" / "checkpoint.pt"), "--max-samples", "2"])
    assert results["split"] == "mini_val"
    assert set(results["student"]["all"]) == {"sparse"}  # nuScenes has no dense ground truth
    assert 0 < results["student"]["all"]["sparse"]["abs_rel"] < 10


def test_pretrained_default_is_on_for_nuscenes_only():
    assert train.get_args(["--data", "nuscenes"]).pretrained is True
    assert train.get_args([]).pretrained is False
    assert train.get_args(["--data", "nuscenes"]).image_size == [352, 640]
    assert train.get_args(["--data", "nuscenes"]).teacher == "depth-anything/Depth-Anything-V2-Small-hf"


def test_cache_size_at_352x640(dataroot, tiny_folder, tmp_path):
    """The compact cache of a 6-view sample at SurroundDepth's 352 x 640 stays within budget."""
    folder = cache.main(["--num-samples", "2", "--cache-root", str(tmp_path), "--data", "nuscenes", "--dataroot",
                         str(dataroot), "--version", "v1.0-mini", "--teacher", str(tiny_folder)])
    sizes = [os.path.getsize(cache.cache_file(folder, i)) for i in range(2)]
    assert all(0 < size <= CACHE_BUDGET for size in sizes), sizes


def test_uint8_sample_images_are_drawn_as_they_are(dataroot):
    """nuScenes samples hold uint8 images; the pictures (infer.py --sample, viz) must not treat them as
    floats in [0, 1] (every pixel above 1 would turn white)."""
    import numpy as np

    import viz
    from nusc import NuScenesSurround
    image = NuScenesSurround(str(dataroot), "v1.0-mini", "mini_val", (64, 96))[0]["images"][0]  # (3, H, W)
    assert image.dtype == torch.uint8 and image.max() > 1
    drawn = viz.to_uint8(image.numpy())
    assert drawn.dtype == np.uint8 and np.array_equal(drawn, image.permute(1, 2, 0).numpy())
    assert np.array_equal(viz.to_uint8((image.float() / 255).numpy()), drawn)  # float in [0, 1]: the same
