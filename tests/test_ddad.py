"""Tests of `ddad.DDADSurround` on the tiny DDAD dataroot of `ddad_fixture.py`.

The reference ground truth is computed here from the JSON files directly (json, pyquaternion):
the LIDAR datum's points to the world with the LIDAR datum's pose, then into the camera with the
camera datum's pose, pixel (int(v), int(u)) as dgp's `generate_depth_map`, the nearest point per
pixel. The loader's cache stores u, v in 1/32 px (floor(u) exact at the native size) and z as
float16 (Z_RTOL).
"""
import contextlib
import json
import os
import time

import numpy as np
import pytest
import torch
from pyquaternion import Quaternion

import data
import ddad
import ddad_fixture as fx
from conftest import hidden
from cli import DatasetError, InputError
from rig import ADJACENT_PAIRS, CAMERAS

SIZE = (76, 121)  # half the fixture's native size: pixel borders fall on native borders
Z_RTOL = 1e-3  # relative: the cache's float16 depth rounds by < 2**-11
MIN_WRONG_CHAIN_PX = 3  # px a known side-camera point must move under extrinsics alone (a real test)
MIN_SHARED_POINTS = 50  # LiDAR points an adjacent pair must both see
TRAIN_SAMPLES, VAL_SAMPLES = 12_650, 3_950  # DDAD's train and val samples (DDAD README)
DDAD_CACHE_BUDGET = 3e9  # bytes: the cache of train + val must stay within a few GB


@pytest.fixture(scope="session")
def dataroot(tmp_path_factory):
    return fx.build_dataroot(str(tmp_path_factory.mktemp("ddad")))


def make(dataroot, split="train", **kwargs):
    return ddad.DDADSurround(dataroot, split=split, image_size=kwargs.pop("image_size", SIZE), **kwargs)


@contextlib.contextmanager
def rewritten(path, change):
    """Rewrite a JSON file with change(obj) for the duration of a block."""
    with open(path) as f:
        text = f.read()
    obj = json.loads(text)
    change(obj)
    with open(path, "w") as f:
        json.dump(obj, f)
    try:
        yield path
    finally:
        with open(path, "w") as f:
            f.write(text)


def reference_sample(dataroot, split, index):
    """Straight from the JSON: (cloud (P, 3) LIDAR frame, {camera: (K, world_from_cam)}, world_from_lidar,
    {camera: image path}, {camera: extrinsic}) of sample `index` of a split."""
    with open(os.path.join(dataroot, "ddad.json")) as f:
        files = json.load(f)["scene_splits"][ddad.DDAD_SPLITS[split]]["filenames"]
    for name in files:
        with open(os.path.join(dataroot, name)) as f:
            scene = json.load(f)
        if index < len(scene["samples"]):
            break
        index -= len(scene["samples"])
    folder = os.path.dirname(os.path.join(dataroot, name))
    sample = scene["samples"][index]
    datums = {d["key"]: d for d in scene["data"] if d["key"] in sample["datum_keys"]}
    by_name = {d["id"]["name"].upper(): d["datum"] for d in datums.values()}
    with open(os.path.join(folder, "calibration", sample["calibration_key"] + ".json")) as f:
        calib = json.load(f)

    def matrix(pose):
        r, t = pose["rotation"], pose["translation"]
        m = np.eye(4)
        m[:3, :3] = Quaternion(r["qw"], r["qx"], r["qy"], r["qz"]).rotation_matrix
        m[:3, 3] = [t["x"], t["y"], t["z"]]
        return m

    lidar = by_name["LIDAR"]["point_cloud"]
    with np.load(os.path.join(folder, lidar["filename"])) as archive:
        cloud = archive["data"]
    if cloud.dtype.names:
        cloud = np.stack([cloud["X"], cloud["Y"], cloud["Z"]], axis=1)
    cams, paths, extrinsics = {}, {}, {}
    for name, k, e in zip(calib["names"], calib["intrinsics"], calib["extrinsics"]):
        if name.upper() in fx.CAMERA_RIG:
            image = by_name[name.upper()]["image"]
            cams[name.upper()] = (np.array([[k["fx"], 0, k["cx"]], [0, k["fy"], k["cy"]], [0, 0, 1]]),
                                  matrix(image["pose"]))
            paths[name.upper()] = os.path.join(folder, image["filename"])
            extrinsics[name.upper()] = matrix(e)
    return np.asarray(cloud[:, :3], dtype=np.float64), cams, matrix(lidar["pose"]), paths, extrinsics


def reference_uvz(cloud, k, world_from_cam, world_from_lidar):
    """(u, v, z) of LIDAR points in a camera, by the datum poses: world, then camera."""
    world = cloud @ world_from_lidar[:3, :3].T + world_from_lidar[:3, 3]
    cam_from_world = np.linalg.inv(world_from_cam)
    cam = world @ cam_from_world[:3, :3].T + cam_from_world[:3, 3]
    z = cam[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        return k[0, 0] * cam[:, 0] / z + k[0, 2], k[1, 1] * cam[:, 1] / z + k[1, 2], z


def reference_depth(u, v, z, height, width, nearest=True):
    """dgp's pixel rule (int() truncates toward zero; z > 0; inside), nearest or last point wins."""
    keep = (z > 0) & np.isfinite(u) & np.isfinite(v)
    col, row, z = u[keep].astype(int), v[keep].astype(int), z[keep]
    inside = (col >= 0) & (col < width) & (row >= 0) & (row < height)
    col, row, z = col[inside], row[inside], z[inside]
    depth = np.full(height * width, np.inf if nearest else 0.0)
    if nearest:
        np.minimum.at(depth, row * width + col, z)
        depth[np.isinf(depth)] = 0.0
    else:
        depth[row * width + col] = z  # numpy assigns in order: the last one stays
    return depth.reshape(height, width).astype(np.float32)


def yaw_deg(cam_to_ego):
    """Yaw of a camera's optical axis (its z) in the ego frame, degrees, + left."""
    axis = np.asarray(cam_to_ego)[:3, 2]
    return np.degrees(np.arctan2(axis[1], axis[0]))


def test_item_format_images_and_calibration(dataroot):
    dataset = make(dataroot)
    item = dataset[0]
    n, (h, w) = len(CAMERAS), SIZE
    assert set(item) == {"images", "depth", "intrinsics", "cam_to_ego"}
    for key, shape in {"images": (n, 3, h, w), "depth": (n, 1, h, w), "intrinsics": (n, 3, 3),
                       "cam_to_ego": (n, 4, 4)}.items():
        assert item[key].shape == shape and item[key].dtype == torch.float32, key
    assert (item["depth"] > 0).sum(dim=(1, 2, 3)).min() > 500  # every view has ground truth
    for i, name in enumerate(ddad.DDAD_CAMERAS):
        assert abs(item["images"][i, 0].mean().item() * 255 - fx.RED_LEVELS[name]) < 3, name  # view i is its file
        k = fx.intrinsics(name, fx.SMALL_SIZE) * np.array([[w / fx.SMALL_SIZE[1]], [h / fx.SMALL_SIZE[0]], [1.0]])
        np.testing.assert_allclose(item["intrinsics"][i].numpy(), k, rtol=1e-6)
        np.testing.assert_allclose(item["cam_to_ego"][i].numpy(), fx.extrinsic(name), atol=1e-6)


def test_ring_order_is_clockwise_from_the_front(dataroot):
    """The order, from the calibration alone: the first optical axis points ahead, and each next
    view turns clockwise seen from above (yaw decreasing), once around."""
    _, _, _, _, extrinsics = reference_sample(dataroot, "train", 0)
    yaws = [yaw_deg(extrinsics[name]) for name in ddad.DDAD_CAMERAS]
    assert abs(yaws[0]) < 10
    steps = [(yaws[(n + 1) % 6] - yaws[n] + 180) % 360 - 180 for n in range(6)]  # (-180, 180]
    assert all(-90 < s < 0 for s in steps), steps
    assert sum(steps) == pytest.approx(-360)
    item = make(dataroot)[0]
    np.testing.assert_allclose([yaw_deg(p) for p in item["cam_to_ego"].numpy()], yaws, atol=1e-4)


def test_adjacent_views_share_lidar_points_at_their_facing_borders(dataroot):
    """ADJACENT_PAIRS (n, m): the LiDAR points both views see lie in the right half of n and the
    left half of m, as the README's "Setting" says for every dataset."""
    cloud, cams, world_from_lidar, _, _ = reference_sample(dataroot, "train", 1)
    height, width = fx.SMALL_SIZE
    seen = []
    for name in ddad.DDAD_CAMERAS:
        u, v, z = reference_uvz(cloud, *cams[name], world_from_lidar)
        seen.append((u, (z > 0) & (u >= 0) & (u < width) & (v >= 0) & (v < height)))
    for n, m in ADJACENT_PAIRS:
        both = seen[n][1] & seen[m][1]
        assert both.sum() > MIN_SHARED_POINTS, (n, m)
        assert np.median(seen[n][0][both]) > width / 2 and np.median(seen[m][0][both]) < width / 2, (n, m)
    for n in range(6):  # views two apart share nothing: the ring has no shortcut
        assert not (seen[n][1] & seen[(n + 3) % 6][1]).any()


@pytest.mark.parametrize("split", ["train", "val"])
def test_depth_matches_the_straight_projection(dataroot, split, tmp_path):
    dataset = make(dataroot, split, cache_dir=str(tmp_path))
    h, w = SIZE
    for index in range(len(dataset)):
        cloud, cams, world_from_lidar, _, _ = reference_sample(dataroot, split, index)
        native = dataset.native_depth(index)
        depth = dataset[index]["depth"][:, 0].numpy()
        assert isinstance(native, list) and len(native) == 6
        for n, name in enumerate(ddad.DDAD_CAMERAS):
            u, v, z = reference_uvz(cloud, *cams[name], world_from_lidar)
            assert native[n].dtype == np.float32 and native[n].shape == fx.SMALL_SIZE
            ref = reference_depth(u, v, z, *fx.SMALL_SIZE)
            np.testing.assert_array_equal(native[n] > 0, ref > 0)
            np.testing.assert_allclose(native[n], ref, rtol=Z_RTOL)
            # dgp's last-point rule differs only in pixels that several points share.
            last = reference_depth(u, v, z, *fx.SMALL_SIZE, nearest=False)
            counts = np.zeros(fx.SMALL_SIZE, int)
            inside = (z > 0) & (u > -1) & (u < fx.SMALL_SIZE[1]) & (v > -1) & (v < fx.SMALL_SIZE[0])
            np.add.at(counts, (v[inside].astype(int), u[inside].astype(int)), 1)
            assert (counts[~np.isclose(last, ref)] > 1).all()
            # Half size: the points of the native map at half their coordinates (a point dgp puts in
            # column 0 from u in (-1, 0) stays in column 0). Every pixel border is a native one, so
            # the maps agree exactly (float16 aside).
            u, v, z = np.maximum(u[inside], 0), np.maximum(v[inside], 0), z[inside]
            half = reference_depth(u * w / fx.SMALL_SIZE[1], v * h / fx.SMALL_SIZE[0], z, h, w)
            half[half <= ddad.DDAD_DEPTH_RANGE[0]] = 0.0
            np.testing.assert_allclose(depth[n], half, rtol=Z_RTOL)


def test_known_points_land_on_their_pixels(dataroot):
    dataset = make(dataroot)
    h, w = SIZE
    moved = {}
    for scene, index, name, u, v, z in fx.KNOWN_POINTS:
        n = ddad.DDAD_CAMERAS.index(name)
        assert dataset.native_depth(index)[n][int(v), int(u)] == pytest.approx(z, rel=Z_RTOL), name
        col, row = int(u * w / fx.SMALL_SIZE[1]), int(v * h / fx.SMALL_SIZE[0])
        assert dataset[index]["depth"][n, 0, row, col].item() == pytest.approx(z, rel=Z_RTOL), name
        # Extrinsics alone (E^-1 X_lidar, no ego motion) would put the point elsewhere.
        cloud, cams, world_from_lidar, _, extrinsics = reference_sample(dataroot, "train", index)
        k, world_from_cam = cams[name]
        point = np.linalg.inv(world_from_lidar) @ world_from_cam @ np.append(z * np.linalg.inv(k) @ [u, v, 1], 1)
        cam = np.linalg.inv(extrinsics[name]) @ point
        moved[name] = np.hypot(*(k @ cam[:3] / cam[2])[:2] - np.array([u, v]))
    # The side cameras look across the motion: their near points move most.
    assert all(moved[name] > MIN_WRONG_CHAIN_PX for name in ("CAMERA_06", "CAMERA_07")), moved


def test_splits_come_from_ddad_json(dataroot):
    train, val = make(dataroot, "train"), make(dataroot, "val")
    assert len(train) == fx.SCENES[0][2] and len(val) == fx.SCENES[1][2]
    assert all("/000000/" in r["scene"] for r in train.samples) and all("/000150/" in r["scene"] for r in val.samples)
    assert [r["index"] for r in train.samples] == list(range(len(train)))  # the scene's sample order
    assert all(f.endswith(".jpg") for r in val.samples for f in r["image_files"])
    dataset = data.build_dataset("ddad", "val", image_size=SIZE, dataroot=dataroot)
    batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=2)))
    assert batch["images"].shape == (2, 6, 3) + SIZE
    assert [data.split_name("ddad", None, role) for role in ("train", "val", "test")] == ["train", "val", "val"]
    assert data.depth_range("ddad") == (0.1, 200.0) and data.DEFAULT_IMAGE_SIZE["ddad"] == (384, 640)


def one_line_error(call, *needles):
    """Run call(), expect a one-line DatasetError '<path>: <what> ; <fix>' naming every needle."""
    with pytest.raises(DatasetError) as error:
        call()
    message = str(error.value)
    assert "\n" not in message and " ; " in message, message
    for needle in needles:
        assert str(needle) in message, (needle, message)


def test_every_bad_dataroot_is_a_one_line_error(dataroot, tmp_path):
    missing = tmp_path / "no_ddad_here"
    one_line_error(lambda: make(str(missing)), missing, "ddad.json")
    one_line_error(lambda: make(str(tmp_path)), tmp_path / "ddad.json", "ddad_train_val")
    one_line_error(lambda: make(dataroot, "test"), "'test'", "train, val")
    train = make(dataroot, cache_dir=str(tmp_path / "cache"))
    with hidden(train.samples[0]["scene"]) as scene:
        one_line_error(lambda: make(dataroot), scene, "re-extract")
    with hidden(train.samples[1]["image_files"][2]) as image:
        one_line_error(lambda: train[1], image)
    with hidden(train.samples[2]["lidar_file"]) as cloud:
        one_line_error(lambda: train[2], cloud)
    folder = os.path.dirname(train.samples[0]["scene"])
    (calib,) = [os.path.join(folder, "calibration", f) for f in os.listdir(os.path.join(folder, "calibration"))]

    def drop_camera_07(obj):
        i = obj["names"].index("CAMERA_07")
        for key in ("names", "intrinsics", "extrinsics"):
            del obj[key][i]

    with rewritten(calib, drop_camera_07):
        one_line_error(lambda: make(dataroot), calib, "CAMERA_07")
    masks = fx.write_masks(str(tmp_path / "masks"))
    with hidden(os.path.join(masks, "CAMERA_08.png")) as mask:
        one_line_error(lambda: make(dataroot, masks=masks), mask)
    fx.write_masks(masks, share=0.6)  # zero on 60 %: inverted
    one_line_error(lambda: make(dataroot, masks=masks), "invert")


def test_sensor_names_and_formats_of_dgp(dataroot):
    """Scene 000150 writes lower-case sensor names, .jpg images, 17-digit stems, a structured
    point array, shuffled datum keys and -q quaternions: it reads like scene 000000."""
    val = make(dataroot, "val")
    assert all(os.path.basename(f)[:-4].isdigit() and len(os.path.basename(f)) == 21
               for r in val.samples for f in r["image_files"])
    red = val[1]["images"][:, 0].mean(dim=(1, 2)).numpy() * 255
    np.testing.assert_allclose(red, [fx.RED_LEVELS[c] for c in ddad.DDAD_CAMERAS], atol=3)  # .jpg


def test_cache_first_and_later_loads_agree(dataroot, tmp_path, monkeypatch):
    first = make(dataroot, cache_dir=str(tmp_path))
    depth, native = first[1]["depth"], first.native_depth(1)
    assert os.listdir(tmp_path) == [first.samples[1]["key"] + ".npz"]

    def no_lidar(*args):
        raise AssertionError("the LIDAR datum was read again instead of the cache")

    monkeypatch.setattr(ddad, "_project", no_lidar)
    second = make(dataroot, cache_dir=str(tmp_path))
    assert torch.equal(second[1]["depth"], depth)
    assert all(np.array_equal(a, b) for a, b in zip(second.native_depth(1), native))
    assert make(dataroot).cache_dir == os.path.join(dataroot, "fsmde_cache", "ddad")


def test_cache_size_on_a_realistic_sample(tmp_path):
    """One fixture sample at DDAD's full 1936 x 1216 with a 47,040-point scan: the cache file's
    size, extrapolated to DDAD's 12,650 + 3,950 samples, stays within DDAD_CACHE_BUDGET."""
    root = fx.build_dataroot(str(tmp_path / "full"), native=fx.FULL_SIZE, scenes=(fx.SCENES[0][:2] + (1, ".png", 16),))
    dataset = make(root, cache_dir=str(tmp_path / "cache"))
    start = time.perf_counter()
    points = dataset.points(0)
    first = time.perf_counter() - start
    start = time.perf_counter()
    cached = dataset.points(0)
    later = time.perf_counter() - start
    assert all(len(p) > 1000 for p in points) and all(np.array_equal(a, b) for a, b in zip(points, cached))
    size = os.path.getsize(os.path.join(dataset.cache_dir, dataset.samples[0]["key"] + ".npz"))
    total = size * (TRAIN_SAMPLES + VAL_SAMPLES)
    print(f"\nDDAD cache: {sum(map(len, points))} projected points, {size} bytes "
          f"({size / sum(map(len, points)):.2f} B/point); first load (project + write) {first:.3f} s, "
          f"later load (read + decode) {later:.3f} s; extrapolated to {TRAIN_SAMPLES + VAL_SAMPLES} samples: "
          f"{total / 1e9:.2f} GB, {first * (TRAIN_SAMPLES + VAL_SAMPLES) / 60:.0f} min of first loads")
    assert total < DDAD_CACHE_BUDGET


def test_masks_become_omega(dataroot, tmp_path):
    masks = fx.write_masks(str(tmp_path / "masks"))
    item = make(dataroot, masks=masks)[0]
    omega = item["omega"]
    assert omega.dtype == torch.bool and omega.shape == (6, 1) + SIZE
    assert omega[0].all()  # CAMERA_01 sees no part of the car
    rows = omega[1:, 0].all(dim=-1)  # (5, H): which rows are kept
    cut = int(SIZE[0] * 0.75)
    assert rows[:, :cut].all() and not rows[:, cut + 1:].any()
    assert "omega" not in make(dataroot)[0]  # without masks nothing changes


def test_bev_figure_on_a_ddad_sample(dataroot):
    """viz.bev_raster on the ground truth of a DDAD sample: each camera's dots lie around the
    direction of its optical axis, front up, left to the left; bev_figure names DDAD's cameras."""
    import viz

    item = make(dataroot)[1]
    depth = item["depth"][:, 0].numpy()
    image = viz.bev_raster(depth, item["intrinsics"].numpy(), item["cam_to_ego"].numpy(), extent=40.0)
    figure = viz.bev_figure({"ground truth": depth}, item["intrinsics"].numpy(), item["cam_to_ego"].numpy(),
                            names=ddad.DDAD_CAMERAS)
    assert [t.get_text() for t in figure.legends[0].get_texts()] == list(ddad.DDAD_CAMERAS)
    assert image.shape == (viz.BEV_PANEL_SIZE, viz.BEV_PANEL_SIZE, 3)
    center = viz.BEV_PANEL_SIZE / 2
    for n, name in enumerate(ddad.DDAD_CAMERAS):
        rows, cols = np.nonzero((image == viz.CAMERA_COLORS[n]).all(axis=-1))
        assert len(rows) > 100, name
        angle = np.degrees(np.arctan2(center - np.median(cols), center - np.median(rows)))  # + left, 0 ahead
        assert abs((angle - fx.CAMERA_RIG[name][0] + 180) % 360 - 180) < 30, (name, angle)


def test_train_evaluate_infer_and_teacher_cache_on_ddad(dataroot, tiny_folder, tmp_path):
    import cache
    import evaluate
    import infer
    import train

    masks = fx.write_masks(str(tmp_path / "masks"))
    data_flags = ["--data", "ddad", "--dataroot", dataroot, "--image-size", "64", "96", "--teacher", str(tiny_folder)]
    run = ["--no-pretrained", "--num-bins", "16", "--steps", "1", "--batch-size", "1", "--val-samples", "1",
           "--workers", "0"]
    cache.main(["--num-samples", "1", "--cache-root", str(tmp_path / "cache"), "--ddad-masks", masks] + data_flags)
    (folder,) = [tmp_path / "cache" / d for d in os.listdir(tmp_path / "cache")]
    assert "_masked" in folder.name and len(list(folder.glob("0*"))) == 1
    train.main(data_flags + run + ["--ddad-masks", masks, "--teacher-cache", str(folder), "--out", str(tmp_path / "c")])
    unmasked = cache.get_args(data_flags)  # the same run without masks
    with pytest.raises(InputError, match="masks"):  # a masked cache for an unmasked run
        cache.CachedTargets(make(dataroot), str(folder), cache.cache_key(unmasked))
    train.main(data_flags + run + ["--ddad-masks", masks, "--out", str(tmp_path / "live")])  # teacher in the loop
    checkpoint = str(tmp_path / "live" / "checkpoint.pt")
    results = evaluate.main(["--checkpoint", checkpoint, "--data", "ddad", "--dataroot", dataroot,
                             "--split", "val", "--out", str(tmp_path / "eval")])
    assert results["split"] == "val" and results["student"]["num_samples"] == fx.SCENES[1][2]
    assert np.isfinite(results["student"]["all"]["sparse"]["abs_rel"])  # 1 step: finite, not good
    defaults = evaluate.main(["--checkpoint", checkpoint, "--max-samples", "1"])  # the checkpoint's data and dataroot
    assert defaults["split"] == "val" and defaults["student"]["num_samples"] == 1
    from model import load_checkpoint

    model, _ = load_checkpoint(checkpoint)
    assert (model.cfg.min_depth, model.cfg.max_depth) == (0.1, 200.0)  # DDAD's range, not 80 m
    # infer.py on the six images of a val sample, listed as DDAD stores them (rgb/CAMERA_XX/<time>.jpg)
    listing = tmp_path / "sample.txt"
    listing.write_text("\n".join(make(dataroot, "val").samples[0]["image_files"]))
    assert infer.main([str(listing), "--checkpoint", checkpoint, "--out", str(tmp_path / "infer")]) == 6
    written = sorted(os.listdir(tmp_path / "infer"))
    assert "surround_depth.png" in written
    assert sorted(f[:9].upper() for f in written if f.endswith(".npy")) == sorted(
        ddad.DDAD_CAMERAS)  # six distinct outputs, named by their camera folder (camera_01_<time>_depth.npy)


def test_train_defaults_on_ddad_and_masks_need_ddad(capsys):
    import cache
    import train

    args = train.get_args(["--data", "ddad"])
    assert args.image_size == [384, 640] and args.pretrained is True and args.steps == 30000
    assert args.teacher == "depth-anything/Depth-Anything-V2-Small-hf" and args.ddad_masks is None
    assert train.loss_config(args).max_depth == 200.0
    for get_args in (train.get_args, cache.get_args):
        with pytest.raises(SystemExit):
            get_args(["--data", "nuscenes", "--ddad-masks", "masks"])
        assert "--ddad-masks needs --data ddad" in capsys.readouterr().err
