"""Tests of `nusc_sweeps.NuScenesSweeps` and `data.build_unlabelled` on the camera sweeps of the tiny
nuScenes dataroot of `nuscenes_fixture.py`.

The reference frames are not found by the loader's rule: they are the fixture's construction (after
keyframe i, each camera fires CAMERA_SWEEP_US[i][j] after its own keyframe time, within SWEEP_JITTER_US;
DROPPED_SWEEP is missing), located by a plain walk of the JSON tables on disk (channel through
calibrated_sensor -> sensor, chains through 'next'). A test checks that the fixture tells the loader's
rule apart from the two simpler ones (the j-th sweep of each channel; the sweep nearest to CAM_FRONT's
time without the firing offset), so that a loader following either one fails.
"""
import json
import os
import re

import numpy as np
import pytest
import torch
from PIL import Image
from pyquaternion import Quaternion

import data
import nuscenes_fixture as fx
from cli import DatasetError, InputError
from conftest import hidden
from nusc import NuScenesSurround
from nusc_sweeps import NuScenesSweeps
from rig import CAMERAS

SIZE = (90, 160)  # (H, W): small and fast
SAME_FILE_MAE = 3.0  # grey levels: the loader (JPEG draft decoding) vs a full decode, both resized by PIL
OTHER_FILE_MAE = 20.0  # grey levels: another image of the same camera (random blocks) is this far at least
RED_TOL = 10  # grey levels around a camera's RED_LEVELS value


@pytest.fixture(scope="module")
def dataroot(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("nuscenes_sweeps"))
    fx.build_dataroot(root)
    return root


@pytest.fixture(scope="module")
def tables(dataroot):
    """{table name: {token: record}} read from the JSON files."""
    names = ("scene", "sample", "sample_data", "calibrated_sensor", "sensor")
    return {name: {r["token"]: r for r in json.load(open(os.path.join(dataroot, fx.VERSION, name + ".json")))}
            for name in names}


def make(dataroot, sweeps, split="mini_train", **kwargs):
    return NuScenesSweeps(dataroot, version=fx.VERSION, split=split, sweeps=sweeps, image_size=SIZE, **kwargs)


def channel_of(tables, record):
    return tables["sensor"][tables["calibrated_sensor"][record["calibrated_sensor_token"]]["sensor_token"]]["channel"]


def train_keyframes(tables):
    """Sample tokens of TRAIN_SCENE, in time order."""
    (scene,) = [s for s in tables["scene"].values() if s["name"] == fx.TRAIN_SCENE]
    tokens, token = [], scene["first_sample_token"]
    while token:
        tokens.append(token)
        token = tables["sample"][token]["next"]
    return tokens


def keyframe_record(tables, sample_token, channel):
    (record,) = [r for r in tables["sample_data"].values()
                 if r["sample_token"] == sample_token and r["is_key_frame"] and channel_of(tables, r) == channel]
    return record


def sweeps_after(tables, keyframe):
    """The non-keyframe records after a keyframe record along 'next', up to the next keyframe."""
    found, token = [], keyframe["next"]
    while token and not tables["sample_data"][token]["is_key_frame"]:
        found.append(tables["sample_data"][token])
        token = found[-1]["next"]
    return found


def expected(tables, sweeps):
    """(kept keyframe tokens, frames: lists of six sample_data records in CAMERAS order) by construction."""
    keyframes, frames = [], []
    for i, sample in enumerate(train_keyframes(tables)):
        slots = [j for j in range(len(fx.CAMERA_SWEEP_US[i])) if (i, j) != fx.DROPPED_SWEEP[:2]]
        if len(slots) < sweeps:
            continue
        keyframes.append(sample)
        for j in slots[:sweeps]:
            frame = []
            for channel in CAMERAS:
                key = keyframe_record(tables, sample, channel)
                due = key["timestamp"] + fx.CAMERA_SWEEP_US[i][j]
                (sweep,) = [r for r in sweeps_after(tables, key) if abs(r["timestamp"] - due) <= fx.SWEEP_JITTER_US]
                frame.append(sweep)
            frames.append(frame)
    return keyframes, frames


@pytest.mark.parametrize("sweeps", [1, 2])
def test_frames_are_the_right_sweep_files(dataroot, tables, sweeps):
    dataset = make(dataroot, sweeps)
    keyframes, frames = expected(tables, sweeps)
    # K = 1: both keyframes; K = 2: the last keyframe has one sweep only and is left out.
    assert len(keyframes) == (2 if sweeps == 1 else 1)
    assert dataset.keyframes == keyframes and len(dataset) == sweeps * len(keyframes) == len(frames)
    for index, frame in enumerate(frames):
        record = dataset.record(index)
        assert record["image_files"] == [os.path.join(dataroot, r["filename"]) for r in frame], index
        assert all("/sweeps/CAM_" in path for path in record["image_files"])
        np.testing.assert_array_equal(dataset.timestamps[index], [r["timestamp"] for r in frame])
    if sweeps == 2:  # keyframe 0's frames: its first and third sweep (CAM_BACK dropped the second)
        front = sweeps_after(tables, keyframe_record(tables, keyframes[0], "CAM_FRONT"))
        assert [f[0]["token"] for f in frames] == [front[0]["token"], front[2]["token"]]


def test_the_fixture_tells_the_rule_from_simpler_ones(tables):
    """Each simpler rule picks another file for some camera of the expected frames."""
    keyframes, frames = expected(tables, 2)
    key = {c: keyframe_record(tables, keyframes[0], c) for c in CAMERAS}
    sweeps = {c: sweeps_after(tables, key[c]) for c in CAMERAS}
    by_order = [[sweeps[c][j]["token"] for c in CAMERAS] for j in range(2)]  # the j-th sweep of each channel
    plain = [[min(sweeps[c], key=lambda r: abs(r["timestamp"] - f[0]["timestamp"]))["token"] for c in CAMERAS]
             for f in frames]  # nearest to CAM_FRONT's own time
    right = [[r["token"] for r in f] for f in frames]
    assert by_order != right and plain != right
    # The cameras of a frame fire at other times than CAM_FRONT (their keyframe's offsets), not at one instant.
    spread = [max(r["timestamp"] for r in f) - min(r["timestamp"] for r in f) for f in frames]
    assert min(spread) > fx.SWEEP_JITTER_US * 2


def test_images_intrinsics_and_poses_are_each_sweeps_own(dataroot, tables):
    dataset = make(dataroot, 2)
    _, frames = expected(tables, 2)
    h, w = SIZE
    for index, frame in enumerate(frames):
        item, keyframe = dataset[index], dataset.keyframes[index // 2]
        for n, sweep in enumerate(frame):
            image = item["images"][n].permute(1, 2, 0).float().numpy()  # (H, W, 3)
            truth = np.asarray(Image.open(os.path.join(dataroot, sweep["filename"])).convert("RGB").resize(
                (w, h), Image.Resampling.BILINEAR), dtype=np.float32)
            assert np.abs(image - truth).mean() < SAME_FILE_MAE, (index, n)
            assert abs(image[..., 0].mean() - fx.RED_LEVELS[n]) < RED_TOL  # camera n's picture
            for other in sweeps_after(tables, keyframe_record(tables, keyframe, CAMERAS[n])):
                if other["token"] != sweep["token"]:
                    pixels = np.asarray(Image.open(os.path.join(dataroot, other["filename"])).convert("RGB").resize(
                        (w, h), Image.Resampling.BILINEAR), dtype=np.float32)
                    assert np.abs(image - pixels).mean() > OTHER_FILE_MAE  # so the check above can fail
            calib = tables["calibrated_sensor"][sweep["calibrated_sensor_token"]]
            k = np.array(calib["camera_intrinsic"]) * np.array([[w / fx.IMAGE_WIDTH], [h / fx.IMAGE_HEIGHT], [1.0]])
            np.testing.assert_allclose(item["intrinsics"][n].numpy(), k, rtol=1e-6)
            pose = np.eye(4)
            pose[:3, :3], pose[:3, 3] = Quaternion(calib["rotation"]).rotation_matrix, calib["translation"]
            np.testing.assert_allclose(item["cam_to_ego"][n].numpy(), pose, atol=1e-6)
            # The fixture's sweeps have a calibration of their own: a loader reading the keyframe's fails.
            key = keyframe_record(tables, keyframe, CAMERAS[n])
            key_calib = tables["calibrated_sensor"][key["calibrated_sensor_token"]]
            assert calib["camera_intrinsic"][0][0] == pytest.approx(
                key_calib["camera_intrinsic"][0][0] * fx.SWEEP_FOCAL_SCALE)
        assert torch.equal(item["depth"], torch.zeros(len(CAMERAS), 1, h, w))  # no LiDAR


@pytest.mark.parametrize("augment", [False, True])
def test_items_batch_with_labelled_training_items(dataroot, augment):
    labelled = NuScenesSurround(dataroot, version=fx.VERSION, split="mini_train", image_size=SIZE, augment=augment)
    unlabelled = make(dataroot, 2, augment=augment)
    a, b = labelled[0], unlabelled[1]
    keys = {"images", "depth", "intrinsics", "cam_to_ego"} | ({"images_teacher"} if augment else set())
    assert set(a) == set(b) == keys
    for key in a:
        assert (a[key].dtype, a[key].shape) == (b[key].dtype, b[key].shape), key
    batch = torch.utils.data.default_collate([a, b])
    assert batch["images"].shape == (2, len(CAMERAS), 3, *SIZE) and batch["depth"][1].eq(0).all()
    if augment:  # jitter on the student's input only; the teacher's is the plain image
        plain = make(dataroot, 2)[1]
        assert torch.equal(b["images_teacher"], plain["images"])
        assert (b["images"].float() - plain["images"].float()).abs().mean() > 1.0


def test_build_unlabelled_concatenates_after_the_training_split(dataroot):
    train = data.build_dataset("nuscenes", "mini_train", image_size=SIZE, dataroot=dataroot, version=fx.VERSION,
                               augment=True)
    extra = data.build_unlabelled("nuscenes", "mini_train", image_size=list(SIZE), dataroot=dataroot,
                                  version=fx.VERSION, sweeps=1)
    assert isinstance(extra, NuScenesSweeps) and extra.augment and len(extra) == 2
    mixed = torch.utils.data.ConcatDataset([train, extra])
    batch = next(iter(torch.utils.data.DataLoader(mixed, batch_sampler=[[0, len(train)]])))
    assert batch["depth"][0].gt(0).any() and batch["depth"][1].eq(0).all()
    assert set(batch) == {"images", "images_teacher", "depth", "intrinsics", "cam_to_ego"}


def one_line(call, error=DatasetError):
    """The one-line message `<path>: <what> ; <fix>` of the error call() raises."""
    with pytest.raises(error) as raised:
        call()
    message = str(raised.value)
    assert "\n" not in message and " ; " in message, message
    return message


def test_bad_inputs_are_one_line_errors(dataroot, tmp_path):
    assert one_line(lambda: make(dataroot, 0)).startswith(f"{dataroot}: sweeps=0")
    message = one_line(lambda: make(dataroot, 3))
    assert message.startswith(os.path.join(dataroot, fx.VERSION)) and "at most 2" in message and "sweeps=2" in message
    assert "no camera sweep" in one_line(lambda: make(dataroot, 1, split="mini_val"))  # the fixture's val has none
    with pytest.raises(DatasetError, match="augment"):
        make(dataroot, 1, split="mini_val", augment=True)
    folder = os.path.join(dataroot, "sweeps", "CAM_FRONT")
    with hidden(folder):  # a dataroot without the camera sweeps' files
        message = one_line(lambda: make(dataroot, 1))
        assert message.startswith(folder) and "'sweeps'" in message
    dataset = make(dataroot, 1)
    with hidden(dataset.record(1)["image_files"][4]) as path:  # one file missing: found when it is read
        with pytest.raises(DatasetError, match=re.escape(path)):
            dataset[1]
    message = one_line(lambda: data.build_unlabelled("ddad", "train", dataroot=str(tmp_path)), InputError)
    assert message.startswith(str(tmp_path)) and "10 Hz" in message and "point cloud" in message
    with pytest.raises(ValueError, match="unknown dataset"):
        data.build_unlabelled("kitti", "train")
