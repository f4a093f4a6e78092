"""nuScenes camera sweeps as unlabelled surround frames: the 12 Hz camera images between the 2 Hz keyframes.

Defines `NuScenesSweeps` (for each keyframe sample of a split, K surround frames of camera sweeps, items
in the format of `data.py` with `depth` all 0: no LiDAR ground truth, only the teacher's terms act on
them) and `sweep_frames` (which sweeps make up the frames of one keyframe).

A sweep is a camera sample_data record with is_key_frame False. Each camera channel chains its records
in time ('prev', 'next'): keyframe -> sweep -> ... -> sweep -> next keyframe. The cameras run at 12 Hz
and fire as the LIDAR_TOP (20 Hz) crosses their field of view, 12 frames spread over 20 LiDAR turns:
a camera's frames are 50 or 100 ms apart, and within one turn the six cameras fire one after another,
up to a turn apart. Frames of one keyframe, from the sweeps of each channel between its keyframe and
its next keyframe:
1. the reference is the next CAM_FRONT sweep (in time order);
2. every other camera takes the sweep of its channel nearest in time to the reference's timestamp
   shifted by that camera's firing offset from CAM_FRONT on the keyframe (the same LiDAR turn; the
   unshifted nearest would take the previous turn's frame of a camera firing more than 25 ms after
   CAM_FRONT whenever its previous frame is 50 ms earlier);
3. a camera whose nearest sweep is more than SYNC_TOLERANCE_US from that time dropped this frame (it
   happens in nuScenes): the reference is skipped and the next one tried.
Frame j (1..K) is the j-th complete frame. A keyframe with fewer than K complete frames (the last of
a scene may have no sweep after it; cameras drop frames at times) gives none: every kept keyframe
gives exactly K frames, and the length is K x the number of kept keyframes.
"""
import os

import numpy as np
import torch

from cli import DatasetError
from nusc import NUSCENES_IMAGE_SIZE, CameraFrames, index_cameras, load_split, split_samples
from rig import CAMERAS

REFERENCE_CAMERA = "CAM_FRONT"  # the camera whose sweeps define the frames (rig.CAMERAS[0])
# nuScenes rates: cameras 12 Hz, keyframes 2 Hz, so 12 / 2 - 1 = 5 sweeps per camera between two keyframes
# (fewer where frames were dropped).
CAMERA_RATE_HZ, KEYFRAME_RATE_HZ = 12, 2
SWEEPS_PER_KEYFRAME = CAMERA_RATE_HZ // KEYFRAME_RATE_HZ - 1
# LIDAR_TOP turns at 20 Hz: a camera's frames are whole turns apart, so a sweep more than half a turn
# from the time a camera should fire belongs to another turn.
LIDAR_TURN_US = 50_000
SYNC_TOLERANCE_US = LIDAR_TURN_US // 2


def channel_sweeps(nusc, keyframe):
    """The sweeps after a keyframe camera sample_data record along its channel's 'next' chain, up to
    (without) the next keyframe or the end of the chain: a list of sample_data records, in time."""
    sweeps, token = [], keyframe["next"]
    while token:
        record = nusc.get("sample_data", token)
        if record["is_key_frame"]:
            break
        sweeps.append(record)
        token = record["next"]
    return sweeps


def sweep_frames(nusc, sample, max_frames):
    """The first `max_frames` complete surround frames of camera sweeps after keyframe `sample` (rules
    in the module docstring): a list of frames, each N sample_data records in rig.CAMERAS order."""
    keyframes = {channel: nusc.get("sample_data", sample["data"][channel]) for channel in CAMERAS}
    sweeps = {channel: channel_sweeps(nusc, keyframes[channel]) for channel in CAMERAS}
    frames = []
    for reference in sweeps[REFERENCE_CAMERA]:
        frame = []
        for channel in CAMERAS:
            # When this camera fires in the reference's LiDAR turn (microseconds): its offset on the keyframe.
            due = reference["timestamp"] + keyframes[channel]["timestamp"] - keyframes[REFERENCE_CAMERA]["timestamp"]
            nearest = min(sweeps[channel], key=lambda record: abs(record["timestamp"] - due), default=None)
            if nearest is None or abs(nearest["timestamp"] - due) > SYNC_TOLERANCE_US:
                break  # this camera dropped the frame
            frame.append(nearest)
        if len(frame) == len(CAMERAS):
            frames.append(frame)
        if len(frames) == max_frames:
            break
    return frames


class NuScenesSweeps(CameraFrames):
    """Camera sweeps of a nuScenes split as unlabelled surround frames (rules in the module docstring).

    dataroot, version, split, image_size, augment: as `nusc.NuScenesSurround` (augment: training splits
        only; the untouched images are `images_teacher`).
    sweeps: K >= 1 frames per keyframe sample; keyframes with fewer complete frames are left out.
    Items: images (N, 3, H, W) uint8, intrinsics (N, 3, 3) and cam_to_ego (N, 4, 4) float32 from each
    sweep's own calibrated_sensor, depth (N, 1, H, W) float32 all 0 (no LiDAR), and images_teacher
    (N, 3, H, W) uint8 when augmenting: the keys, dtypes and shapes of NuScenesSurround's items.
    Item i is frame i % K + 1 of kept keyframe i // K (`keyframes[i // K]`, a sample token).
    The frames are kept as a few numpy arrays (no Python object per frame), so that DataLoader workers do
    not copy them page by page as they read them: about 0.7 kB per frame.
    """

    def __init__(self, dataroot, version="v1.0-trainval", split="train", sweeps=1,
                 image_size=NUSCENES_IMAGE_SIZE, augment=False):
        if sweeps < 1:
            raise DatasetError(f"{dataroot}: sweeps={sweeps} asks for no camera sweep frame ; use sweeps=1 or more "
                               f"(nuScenes has about {SWEEPS_PER_KEYFRAME} per keyframe)")
        table_dir = self.open_split(dataroot, version, split, image_size, augment)
        nusc, scene_names = load_split(dataroot, version, split)
        self.sweeps, self.keyframes, most = sweeps, [], 0
        files, sizes, times, calib_keys, calibrations = [], [], [], [], {}
        for sample in split_samples(nusc, scene_names):
            frames = sweep_frames(nusc, sample, sweeps)
            most = max(most, len(frames))
            if len(frames) < sweeps:
                continue
            self.keyframes.append(sample["token"])
            for cams in frames:
                key = tuple(cam["calibrated_sensor_token"] for cam in cams)
                if key not in calibrations:  # one per scene in nuScenes: kept once
                    cameras = index_cameras(nusc, cams)
                    calibrations[key] = (len(calibrations), cameras["intrinsics"], cameras["cam_to_ego"])
                calib_keys.append(calibrations[key][0])
                files.append([cam["filename"] for cam in cams])
                sizes.append([(cam["height"], cam["width"]) for cam in cams])
                times.append([cam["timestamp"] for cam in cams])
        if most == 0:
            raise DatasetError(f"{table_dir}: no camera sweep (non-keyframe CAM_* sample_data) after any keyframe "
                               f"of split {split!r} ; use tables that list the 12 Hz camera sweeps (every nuScenes "
                               f"release does), or train without unlabelled sweeps")
        if not self.keyframes:
            raise DatasetError(f"{table_dir}: no keyframe of split {split!r} has {sweeps} complete camera sweep "
                               f"frames (at most {most}) ; use sweeps={most} or fewer")
        self.files = np.array(files, dtype=np.bytes_)  # (F, N) paths relative to dataroot (nuScenes' are ASCII)
        self.native_sizes = np.array(sizes, dtype=np.int32)  # (F, N, 2) (H0, W0) pixels
        self.timestamps = np.array(times, dtype=np.int64)  # (F, N) microseconds
        self.calib_index = np.array(calib_keys, dtype=np.int32)  # (F,) into intrinsics, cam_to_ego
        self.intrinsics = np.stack([k for _, k, _ in calibrations.values()])  # (C, N, 3, 3) native pixels
        self.cam_to_ego = np.stack([pose for _, _, pose in calibrations.values()])  # (C, N, 4, 4)
        missing = [path for path in self.record(0)["image_files"] if not os.path.isfile(path)]
        if missing:  # checked on the first frame only: a partial sweeps/ folder fails on its first missing item
            raise DatasetError(f"{missing[0]}: camera sweep image not found ; extract the nuScenes 'sweeps' "
                               f"folders (sweeps/CAM_*) into {dataroot}, or train without unlabelled sweeps")

    def __len__(self):
        return len(self.files)

    def record(self, index):
        """Frame `index` as `nusc.index_cameras` gives it: image_files (N absolute paths), image_sizes
        (N native (H0, W0)), intrinsics (N, 3, 3) and cam_to_ego (N, 4, 4) float64."""
        calib = self.calib_index[index]
        return {"image_files": [os.path.join(self.dataroot, name.decode()) for name in self.files[index]],
                "image_sizes": [tuple(map(int, size)) for size in self.native_sizes[index]],
                "intrinsics": self.intrinsics[calib], "cam_to_ego": self.cam_to_ego[calib]}

    def __getitem__(self, index):
        cameras, _ = self.cameras(self.record(index))
        height, width = self.image_size
        return {"images": cameras.pop("images"),  # (N, 3, H, W) uint8
                "depth": torch.zeros(len(CAMERAS), 1, height, width),  # (N, 1, H, W) float32: no LiDAR
                **cameras}
