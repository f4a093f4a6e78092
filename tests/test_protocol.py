"""The SurroundDepth protocol of `evaluate.py` (protocol.py) on the tiny nuScenes dataroot.

The reference is written here from scratch: the devkit's projection chain at the native
1600 x 900 (`test_nuscenes.devkit_points`, nearest point wins), the student's own one-image call
`Student.infer_images` on the JPEGs (it resizes the depth back to 1600 x 900 bilinearly), Eq. (18)
per image, averaged per camera, then over the six cameras. evaluate.py loads the images through
the dataset instead (JPEG draft decoding, PIL's antialiased bilinear resize), where
`infer_images` decodes in full and resizes with torch: the two inputs differ by about one grey
level, so the scores agree within INPUT_RTOL, not to the last digit. The ground truth itself
(the native maps and the pixel counts) agrees exactly.

The dataroot has a dense LiDAR (4x the beams, 4x the firings): at 96 x 160, ~6 points fall in
one input pixel and the nearest wins, so re-rendering the ground truth at the input size (the old
protocol) and scoring at the native resolution give clearly different numbers.
"""
import numpy as np
import pytest
import torch
from PIL import Image

import evaluate
import nuscenes_fixture as fx
import nusc
from model import Student, StudentConfig
from rig import CAMERAS, MAX_DEPTH, MIN_DEPTH
from test_nuscenes import devkit_points, reference_depth

SIZE = (96, 160)  # a small input: fast, and far from the native 900 x 1600
DENSITY = 4  # dense LiDAR: 16 x the points of the HDL-32E layout
INPUT_RTOL = 0.02  # relative: the dataset's and infer_images' input images differ by ~1 grey level
A1_ATOL = 0.005  # a1 is a share of pixels: half a percent of them may cross 1.25 with the input
MIN_PROTOCOL_GAP = 0.05  # relative AbsRel gap between the input-size and the native protocols, dense LiDAR


@pytest.fixture(scope="module")
def dense_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("nuscenes_dense"))
    fx.build_dataroot(root, density=DENSITY)
    return root


@pytest.fixture(scope="module")
def devkit(dense_root):
    from nuscenes.nuscenes import NuScenes

    return NuScenes(version=fx.VERSION, dataroot=dense_root, verbose=False)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return Student(StudentConfig(num_bins=16, image_size=SIZE, min_depth=MIN_DEPTH, max_depth=MAX_DEPTH)).eval()


@pytest.fixture(scope="module")
def val_set(dense_root):
    return nusc.NuScenesSurround(dense_root, version=fx.VERSION, split="mini_val", image_size=SIZE)


@pytest.fixture(scope="module")
def devkit_gt(val_set, devkit):
    """{(sample index, camera index): (900, 1600) nearest-wins depth of the devkit's projection}."""
    return {(i, n): reference_depth(*devkit_points(devkit, record["token"], channel), *record["image_sizes"][n])
            for i, record in enumerate(val_set.samples) for n, channel in enumerate(CAMERAS)}


def reference(dataset, devkit_gt, model):
    """For flip False and True: per-camera mean AbsRel, RMSE and a1 over the dataset, the overall
    mean over cameras, and the (images, pixels) counts per camera, written out without evaluate.py."""
    per_camera = {flip: {c: [] for c in CAMERAS} for flip in (False, True)}
    counts = {c: [0, 0] for c in CAMERAS}
    for index, record in enumerate(dataset.samples):
        for n, channel in enumerate(CAMERAS):
            image = np.array(Image.open(record["image_files"][n]).convert("RGB"))  # (900, 1600, 3)
            plain, mirrored = model.infer_images([image, image[:, ::-1]])
            gt = devkit_gt[index, n]
            valid = (gt > MIN_DEPTH) & (gt < MAX_DEPTH)
            for flip, pred in ((False, plain), (True, 0.5 * (plain + mirrored[:, ::-1]))):
                g, p = gt[valid], np.clip(pred[valid], MIN_DEPTH, MAX_DEPTH)
                per_camera[flip][channel].append([np.mean(np.abs(g - p) / g), np.sqrt(np.mean((g - p) ** 2)),
                                                  np.mean(np.maximum(g / p, p / g) < 1.25)])
            counts[channel][0] += 1
            counts[channel][1] += int(valid.sum())
    out = {}
    for flip, rows in per_camera.items():
        cams = {c: np.mean(r, axis=0) for c, r in rows.items()}
        out[flip] = cams, np.mean(list(cams.values()), axis=0), counts
    return out


def test_native_depth_is_the_devkit_projection(val_set, devkit_gt):
    for index in range(len(val_set)):
        maps = val_set.native_depth(index)
        assert len(maps) == len(CAMERAS)
        for n in range(len(CAMERAS)):
            assert maps[n].shape == (fx.IMAGE_HEIGHT, fx.IMAGE_WIDTH) and maps[n].dtype == np.float32
            np.testing.assert_allclose(maps[n], devkit_gt[index, n], rtol=1e-3, atol=0)  # the cache's float16


def test_evaluate_equals_the_reference(val_set, devkit_gt, model):
    expected = reference(val_set, devkit_gt, model)
    for flip in (False, True):
        cams, overall, counts = expected[flip]
        results = evaluate.evaluate_model(model, val_set, "cpu", progress=False, native=True, flip=flip)
        assert results["protocol"] == "native"
        for c in CAMERAS:
            got = results["per_camera"][c]["sparse"]
            assert [got["num_images"], got["num_pixels"]] == counts[c]  # the same pixels are scored
            assert [got["abs_rel"], got["rmse"], got["a1"]] == pytest.approx(cams[c], rel=INPUT_RTOL, abs=A1_ATOL)
        got = results["all"]["sparse"]
        assert [got["abs_rel"], got["rmse"], got["a1"]] == pytest.approx(overall, rel=INPUT_RTOL, abs=A1_ATOL)
        assert got["num_pixels"] == sum(n for _, n in counts.values())


def test_flip_averages_the_flipped_prediction(val_set, model):
    dataset = val_set
    seen = {}
    evaluate.evaluate_model(model, torch.utils.data.Subset(dataset, [0]), "cpu", progress=False, flip=True,
                            on_sample=lambda i, batch, depth: seen.update(batch=batch, depth=depth))
    images = seen["batch"]["images"]  # (1, N, 3, H, W) float in [0, 1], as the model saw them
    with torch.no_grad():
        plain, flipped = model(images)["depth"], model(images.flip(-1))["depth"].flip(-1)
    torch.testing.assert_close(seen["depth"], 0.5 * (plain + flipped))
    assert not torch.allclose(plain, flipped, rtol=1e-3)  # the flip does change the prediction


def test_dense_lidar_input_size_and_native_protocols_differ(val_set, model):
    dataset = val_set
    depth = dataset[0]["depth"]
    native = dataset.native_depth(0)
    # Several points per input pixel: the input-size map keeps the nearest, the native one most of them.
    points = sum(len(p) for p in dataset.points(0))
    assert points > 4 * int((depth > 0).sum())
    assert sum(int((m > 0).sum()) for m in native) > 4 * int((depth > 0).sum())
    first = torch.utils.data.Subset(dataset, [0])
    at_input = evaluate.evaluate_model(model, first, "cpu", progress=False, native=False)["all"]["sparse"]
    at_native = evaluate.evaluate_model(model, first, "cpu", progress=False, native=True)["all"]["sparse"]
    gap = abs(at_input["abs_rel"] - at_native["abs_rel"]) / at_native["abs_rel"]
    assert gap > MIN_PROTOCOL_GAP, (at_input["abs_rel"], at_native["abs_rel"])
    assert at_native["num_pixels"] > 4 * at_input["num_pixels"]


def test_cli_scores_natively_by_default(dense_root, model, tmp_path):
    from dataclasses import asdict

    from model import save_checkpoint

    path = str(tmp_path / "checkpoint.pt")
    save_checkpoint(path, {"config": asdict(model.cfg), "model": model.state_dict(),
                           "args": {"data": "nuscenes", "version": fx.VERSION, "dataroot": dense_root}})
    native = evaluate.main(["--checkpoint", path, "--max-samples", "1", "--json", str(tmp_path / "r.json")])
    assert native["student"]["protocol"] == "native" and native["flip"] is False
    at_input = evaluate.main(["--checkpoint", path, "--max-samples", "1", "--protocol", "input"])
    assert at_input["student"]["protocol"] == "input"
    assert native["student"]["all"]["sparse"]["num_pixels"] > at_input["student"]["all"]["sparse"]["num_pixels"]
    assert "num_pixels" in (tmp_path / "r.json").read_text()
