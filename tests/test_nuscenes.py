"""Tests of `nusc.NuScenesSurround` on the tiny nuScenes dataroot of `nuscenes_fixture.py`.

The reference ground truth is computed here with the devkit's own chain (`LidarPointCloud`,
`pyquaternion.Quaternion`, `view_points`, step by step as `map_pointcloud_to_image`) and an
independent nearest-wins rendering. The points are cast to float64 before the chain: in
float32 the devkit holds them in global coordinates (~1 km, steps of 6e-5 m) and is itself off
by up to ~0.02 px. Two tolerances separate the loader from that reference, both far below a
pixel: float rounding (FLOAT_TOL; from_file_multisweep keeps one float32 step), and the cache,
which stores u, v in 1/32 px and z as float16 (CACHE_TOL, Z_RTOL).
"""
import os

import numpy as np
import pytest
import torch

import data
import nusc as loader  # the module; `nusc` names the devkit's NuScenes object below
from conftest import hidden
import nuscenes_fixture as fx
import rig

NATIVE = (fx.IMAGE_HEIGHT, fx.IMAGE_WIDTH)
FLOAT_TOL = 1e-3  # px: float rounding, ~1e-4 px at most in the LiDAR frame's float32
CACHE_TOL = 1.0 / rig.CACHE_SUBPIXEL  # native px: the cache's u, v quantisation step
Z_RTOL = 1e-3  # relative: the cache's float16 depth rounds by < 2**-11
MIN_WRONG_CHAIN_PX = 3  # px a known point must move under the wrong ego pose (a real test)
MIN_POINTS_PER_VIEW = 1000  # the fixture's LiDAR puts >3,000 points in every view
TRAINVAL_SAMPLES = 34_149  # keyframe samples of v1.0-trainval (28,130 train + 6,019 val)
TRAINVAL_CACHE_BUDGET = 3e9  # bytes: the cache must stay within a few GB for trainval


@pytest.fixture(scope="session")
def dataroot(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("nuscenes"))
    fx.build_dataroot(root)
    return root


@pytest.fixture(scope="session")
def nusc(dataroot):
    from nuscenes.nuscenes import NuScenes

    return NuScenes(version=fx.VERSION, dataroot=dataroot, verbose=False)


def make(dataroot, split="mini_train", **kwargs):
    """The loader on the fixture."""
    return loader.NuScenesSurround(dataroot, version=fx.VERSION, split=split, **kwargs)


def devkit_points(nusc, sample_token, channel, image_size=NATIVE, nsweeps=1):
    """(u, v, z) float64 of the sample's LiDAR points in camera `channel`, z > 0, by the devkit.

    u, v are continuous pixel coordinates at image_size (intrinsics scaled to it).
    """
    from nuscenes.utils.data_classes import LidarPointCloud
    from nuscenes.utils.geometry_utils import view_points
    from pyquaternion import Quaternion

    sample = nusc.get("sample", sample_token)
    lidar = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
    cam = nusc.get("sample_data", sample["data"][channel])
    if nsweeps == 1:
        pc = LidarPointCloud.from_file(os.path.join(nusc.dataroot, lidar["filename"]))
    else:  # earlier sweeps brought into the keyframe's LiDAR frame; min_distance=0 keeps all
        pc, _ = LidarPointCloud.from_file_multisweep(nusc, sample, "LIDAR_TOP", "LIDAR_TOP",
                                                     nsweeps=nsweeps, min_distance=0.0)
    pc.points = pc.points.astype(np.float64)  # float32 would lose ~1e-4 m in global coordinates
    # The four steps of NuScenesExplorer.map_pointcloud_to_image.
    cs = nusc.get("calibrated_sensor", lidar["calibrated_sensor_token"])
    pc.rotate(Quaternion(cs["rotation"]).rotation_matrix)
    pc.translate(np.array(cs["translation"]))
    pose = nusc.get("ego_pose", lidar["ego_pose_token"])
    pc.rotate(Quaternion(pose["rotation"]).rotation_matrix)
    pc.translate(np.array(pose["translation"]))
    pose = nusc.get("ego_pose", cam["ego_pose_token"])
    pc.translate(-np.array(pose["translation"]))
    pc.rotate(Quaternion(pose["rotation"]).rotation_matrix.T)
    cs = nusc.get("calibrated_sensor", cam["calibrated_sensor_token"])
    pc.translate(-np.array(cs["translation"]))
    pc.rotate(Quaternion(cs["rotation"]).rotation_matrix.T)
    points = pc.points[:3, pc.points[2] > 0]  # (3, P) in front of the camera
    scale = np.diag([image_size[1] / cam["width"], image_size[0] / cam["height"], 1.0])
    uv = view_points(points, scale @ np.array(cs["camera_intrinsic"]), normalize=True)  # (3, P)
    return uv[0].astype(np.float64), uv[1].astype(np.float64), points[2].astype(np.float64)


def reference_depth(u, v, z, height, width, min_z=loader.MIN_DEPTH):
    """(height, width) nearest-wins depth of points (u, v, z); pixel i covers [i, i + 1)."""
    iu, iv = np.floor(u).astype(np.int64), np.floor(v).astype(np.int64)
    keep = (z > min_z) & (iu >= 0) & (iu < width) & (iv >= 0) & (iv < height)
    depth = np.full(height * width, np.inf)
    np.minimum.at(depth, iv[keep] * width + iu[keep], z[keep])
    depth[np.isinf(depth)] = 0.0
    return depth.reshape(height, width)


def assert_depth_from_points(depth, u, v, z, tol, min_z=loader.MIN_DEPTH):
    """Check a loader depth map against reference points (u, v, z) at its resolution.

    tol (px): how far a reference point may be from the pixel the loader put it in.
    1) every point more than tol inside a pixel left a depth there, no farther than itself
       (the pixel has ground truth; the nearest point wins);
    2) every nonzero depth is the depth of a point within tol of that pixel;
    3) almost every pixel equals the reference rendering (up to Z_RTOL): only points within tol
       of a pixel border (a share of ~4 tol: two borders, each point affecting two pixels) may
       move to the neighbouring pixel.
    """
    height, width = depth.shape
    keep = z > min_z * (1 + Z_RTOL)
    u, v, z = u[keep], v[keep], z[keep]
    iu, iv = np.floor(u).astype(np.int64), np.floor(v).astype(np.int64)
    fu, fv = u - iu, v - iv
    clear = ((fu > tol) & (fu < 1 - tol) & (fv > tol) & (fv < 1 - tol)
             & (iu >= 0) & (iu < width) & (iv >= 0) & (iv < height))
    found = depth[iv[clear], iu[clear]]
    assert clear.sum() > MIN_POINTS_PER_VIEW, "too few points to test"
    assert (found > 0).all(), f"{(found == 0).sum()} LiDAR points left no depth"
    assert (found <= z[clear] * (1 + Z_RTOL)).all(), "a farther point won a pixel"
    explained = np.zeros(depth.shape, dtype=bool)
    for du in (-tol, tol):
        for dv in (-tol, tol):
            ju, jv = np.floor(u + du).astype(np.int64), np.floor(v + dv).astype(np.int64)
            ok = (ju >= 0) & (ju < width) & (jv >= 0) & (jv < height)
            ok[ok] &= np.abs(depth[jv[ok], ju[ok]] - z[ok]) <= Z_RTOL * z[ok]
            explained[jv[ok], ju[ok]] = True
    assert explained[depth > 0].all(), f"{(~explained[depth > 0]).sum()} depths from nowhere"
    ref = reference_depth(u, v, z, height, width, min_z)
    differ = ~np.isclose(depth, ref, rtol=Z_RTOL, atol=0.0)
    allowed = (0.001 + 4 * tol) * (ref > 0).sum()
    assert differ.sum() <= allowed, f"{differ.sum()} of {(ref > 0).sum()} pixels differ"


def test_item_format_camera_order_and_calibration(dataroot, nusc):
    size = (90, 160)
    dataset = make(dataroot, image_size=size)
    item = dataset[0]
    n, (h, w) = len(loader.CAMERAS), size
    assert set(item) == {"images", "depth", "intrinsics", "cam_to_ego"}
    expected = {"images": (n, 3, h, w), "depth": (n, 1, h, w), "intrinsics": (n, 3, 3),
                "cam_to_ego": (n, 4, 4)}
    for key, shape in expected.items():
        dtype = torch.uint8 if key == "images" else torch.float32  # photos stay 8-bit until on the device
        assert item[key].shape == shape and item[key].dtype == dtype, key
    assert (item["depth"] >= 0).all() and (item["depth"] > 0).sum() > 0
    sample = nusc.get("sample", dataset.samples[0]["token"])
    for i, channel in enumerate(loader.CAMERAS):
        # Camera i is the JPEG whose red level the fixture set for camera i.
        red = item["images"][i, 0].float().mean().item()
        assert abs(red - fx.RED_LEVELS[i]) < 10, (channel, red)
        cam = nusc.get("sample_data", sample["data"][channel])
        cs = nusc.get("calibrated_sensor", cam["calibrated_sensor_token"])
        k = np.array(cs["camera_intrinsic"]) * np.array([[w / 1600], [h / 900], [1.0]])
        np.testing.assert_allclose(item["intrinsics"][i].numpy(), k, rtol=1e-6)
        cam_to_ego = item["cam_to_ego"][i].numpy()
        np.testing.assert_allclose(cam_to_ego[:3, 3], cs["translation"], atol=1e-6)
        np.testing.assert_allclose(cam_to_ego[3], [0, 0, 0, 1])
        # The optical axis (camera z) points along the camera's yaw in the ego frame.
        yaw = np.deg2rad(fx.CAMERA_RIG[channel][0])
        np.testing.assert_allclose(cam_to_ego[:3, 2], [np.cos(yaw), np.sin(yaw), 0], atol=0.03)


@pytest.mark.parametrize("size, tol", [
    (NATIVE, FLOAT_TOL),
    ((225, 400), FLOAT_TOL),  # 1/4 scale: pixel borders on the cache's 1/32 px grid
    ((352, 640), CACHE_TOL * 352 / 900 + FLOAT_TOL),  # 900 / 352 px borders are not
])
def test_depth_matches_devkit_projection(dataroot, nusc, size, tol):
    for split in ("mini_train", "mini_val"):
        dataset = make(dataroot, split=split, image_size=size)
        for index in range(len(dataset)):
            depth = dataset[index]["depth"][:, 0].numpy()  # (N, H, W)
            for n, channel in enumerate(loader.CAMERAS):
                u, v, z = devkit_points(nusc, dataset.samples[index]["token"], channel, size)
                assert_depth_from_points(depth[n], u, v, z, tol)


def test_known_points_land_on_their_pixel(dataroot, nusc):
    from pyquaternion import Quaternion

    for size in (NATIVE, (352, 640)):
        dataset = make(dataroot, image_size=size)
        sy, sx = size[0] / NATIVE[0], size[1] / NATIVE[1]
        for scene, index, channel, u, v, z in fx.KNOWN_POINTS:
            assert scene == fx.TRAIN_SCENE
            n = loader.CAMERAS.index(channel)
            depth = dataset[index]["depth"][n, 0].numpy()
            row, col = int(np.floor(v * sy)), int(np.floor(u * sx))
            assert depth[row, col] == pytest.approx(z, rel=Z_RTOL), (channel, size)
    # The fixture can tell the chains apart: with the LiDAR's ego pose for the camera (a wrong
    # chain), a known point would land pixels away from where it must.
    for scene, index, channel, u, v, z in fx.KNOWN_POINTS:
        sample = nusc.get("sample", dataset.samples[index]["token"])
        lidar = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
        cam = nusc.get("sample_data", sample["data"][channel])
        pose_cam = nusc.get("ego_pose", cam["ego_pose_token"])
        pose_lidar = nusc.get("ego_pose", lidar["ego_pose_token"])
        shift = np.linalg.norm(np.subtract(pose_cam["translation"], pose_lidar["translation"]))
        relative = Quaternion(pose_cam["rotation"]).inverse * Quaternion(pose_lidar["rotation"])
        angle = relative.degrees
        focal = fx.CAMERA_RIG[channel][2]
        assert focal * max(shift / z, np.deg2rad(abs(angle))) > MIN_WRONG_CHAIN_PX, channel


def test_splits_select_their_scenes(dataroot, nusc):
    for split, scene in (("mini_train", fx.TRAIN_SCENE), ("mini_val", fx.VAL_SCENE)):
        dataset = make(dataroot, split=split)
        assert len(dataset) == fx.SAMPLES_PER_SCENE
        for record in dataset.samples:
            sample = nusc.get("sample", record["token"])
            assert nusc.get("scene", sample["scene_token"])["name"] == scene
    dataset = data.build_dataset("nuscenes", "mini_val", image_size=(90, 160), dataroot=dataroot,
                                 version=fx.VERSION)
    assert len(dataset) == fx.SAMPLES_PER_SCENE
    batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=2)))
    assert batch["images"].shape == (2, len(loader.CAMERAS), 3, 90, 160)


def one_line_error(call, *needles):
    """Run call(), expect a one-line DatasetError that mentions every needle."""
    with pytest.raises(loader.DatasetError) as error:
        call()
    message = str(error.value)
    assert "\n" not in message
    for needle in needles:
        assert str(needle) in message, (needle, message)


def test_mismatched_split_is_a_clear_error(dataroot):
    one_line_error(lambda: make(dataroot, split="val"), "'val'", fx.VERSION, "mini_train")
    one_line_error(lambda: loader.NuScenesSurround(dataroot, version="v1.0-trainval",
                                                 split="mini_val"), "'mini_val'", "v1.0-mini")
    one_line_error(lambda: make(dataroot, split="mini_val", augment=True), "augment")


def test_bad_inputs_are_clear_errors(dataroot, tmp_path):
    missing = tmp_path / "no_nuscenes_here"
    one_line_error(lambda: make(str(missing)), missing)
    one_line_error(lambda: data.build_dataset("nuscenes", "train", dataroot=None), "dataroot")
    one_line_error(lambda: loader.NuScenesSurround(dataroot, version="v1.0-trainval"),
                   os.path.join(dataroot, "v1.0-trainval"), fx.VERSION)
    dataset = make(dataroot, image_size=(90, 160), cache_dir=str(tmp_path / "cache"))
    record = dataset.samples[1]
    with hidden(record["sweeps"][0][0]) as sweep:  # first: later loads read the cache
        one_line_error(lambda: dataset[1], sweep)
    with hidden(record["image_files"][3]) as image:
        one_line_error(lambda: dataset[1], image)
    two = make(dataroot, lidar_sweeps=2, cache_dir=str(tmp_path / "cache"))
    with hidden(two.samples[1]["sweeps"][1][0]) as earlier_sweep:
        assert "/sweeps/" in earlier_sweep
        one_line_error(lambda: two.points(1), earlier_sweep, "lidar_sweeps=1")


def test_cache_is_written_once_then_read(dataroot, tmp_path, monkeypatch):
    first = make(dataroot, image_size=(225, 400), cache_dir=str(tmp_path))
    depth = first[1]["depth"]
    assert os.listdir(tmp_path / "sweeps1") == [first.samples[1]["token"] + ".npz"]

    def no_lidar(*args):
        raise AssertionError("the LiDAR was read again instead of the cache")

    monkeypatch.setattr(loader, "_project_sweeps", no_lidar)
    second = make(dataroot, image_size=(225, 400), cache_dir=str(tmp_path))
    assert torch.equal(second[1]["depth"], depth)
    default = make(dataroot)
    assert default.cache_dir == os.path.join(dataroot, "fsmde_cache", fx.VERSION, "sweeps1")


def test_cache_round_trip_and_size(dataroot, tmp_path):
    """Encoding keeps floor(u), floor(v) at native resolution and z to float16; size in budget."""
    dataset = make(dataroot, cache_dir=str(tmp_path))
    projected = loader._project_sweeps(dataset.samples[0], dataroot)
    decoded = rig.decode_points(rig.encode_points(projected))
    for exact, cached in zip(projected, decoded):
        assert exact.shape == cached.shape and len(exact) > MIN_POINTS_PER_VIEW
        np.testing.assert_array_equal(np.floor(cached[:, :2]), np.floor(exact[:, :2]))
        assert np.abs(cached[:, :2] - exact[:, :2]).max() < CACHE_TOL
        np.testing.assert_allclose(cached[:, 2], exact[:, 2], rtol=Z_RTOL)
    sizes = []
    for index in range(len(dataset)):
        dataset.points(index)
        path = os.path.join(dataset.cache_dir, dataset.samples[index]["token"] + ".npz")
        sizes.append(os.path.getsize(path))
    assert np.mean(sizes) * TRAINVAL_SAMPLES < TRAINVAL_CACHE_BUDGET, sizes


def test_two_sweeps_add_the_earlier_sweep(dataroot, nusc, tmp_path):
    one = make(dataroot, lidar_sweeps=1, cache_dir=str(tmp_path))
    two = make(dataroot, lidar_sweeps=2, cache_dir=str(tmp_path))
    # Sample 1 of TRAIN_SCENE has an earlier sweep; sample 0 is the scene's first: no more points.
    counts = [[sum(map(len, ds.points(i))) for i in range(2)] for ds in (one, two)]
    assert counts[1][0] == counts[0][0]
    assert counts[1][1] > counts[0][1] * 1.5
    depth_one, depth_two = one[1]["depth"], two[1]["depth"]
    assert (depth_two > 0).sum() >= (depth_one > 0).sum()
    # And the accumulated ground truth is the devkit's from_file_multisweep, projected.
    token = two.samples[1]["token"]
    for n, channel in enumerate(loader.CAMERAS):
        u, v, z = devkit_points(nusc, token, channel, loader.NUSCENES_IMAGE_SIZE, nsweeps=2)
        assert_depth_from_points(depth_two[n, 0].numpy(), u, v, z,
                                 CACHE_TOL * 352 / 900 + FLOAT_TOL)


def test_augment_jitters_student_images_only(dataroot):
    size = (90, 160)
    plain = make(dataroot, image_size=size)[0]
    torch.manual_seed(0)
    augmented = make(dataroot, image_size=size, augment=True)[0]
    assert set(augmented) == set(plain) | {"images_teacher"}
    assert torch.equal(augmented["images_teacher"], plain["images"])
    assert augmented["images"].shape == plain["images"].shape
    assert augmented["images"].dtype == torch.uint8
    assert (augmented["images"].float() - plain["images"].float()).abs().mean() > 1.0  # jittered
    for key in ("depth", "intrinsics", "cam_to_ego"):
        assert torch.equal(augmented[key], plain[key]), key
