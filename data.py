"""The dataset factory: a dataset name and split -> a torch Dataset of surround samples.

Defines `build_dataset`, `build_unlabelled` (the images without ground truth added to a training
split: synthetic scenes, nuScenes camera sweeps; DDAD has none), `split_name` (which split plays
train / val / test on each dataset), `depth_range` (the d_min, d_max of Eqs. (3) and (18) on each
dataset), the default input size and the camera names (`CAMERA_NAMES`) of each dataset, and
`batch_to_device` (a batch on the device, images made float there). The loaders themselves live
in `synthetic.py`, `nusc.py`, `nusc_sweeps.py` and `ddad.py`; this file stands above them, so they
never import it.

Every dataset returns one surround sample per item, a dict of tensors:
    images      (N, 3, H, W), N = 6 cameras in the ring order of `rig.CAMERAS` (DDAD: CAMERA_01,
                06, 08, 09, 07, 05; `ddad.DDAD_CAMERAS`): uint8 in [0, 255] from nuScenes
                (decoded photos stay 8-bit until the batch is on the device), float32 in [0, 1]
                from DDAD and the synthetic renderer; `batch_to_device` makes either float32 in
                [0, 1], the models' input
    depth       (N, 1, H, W) sparse metric z-depth D* in meters, 0 where there is no point
    intrinsics  (N, 3, 3)    pixel intrinsics at (H, W)
    cam_to_ego  (N, 4, 4)    camera -> ego transform; camera x right, y down, z forward;
                             ego x forward, y left, z up (nuScenes conventions)
(depth, intrinsics, cam_to_ego float32), and the synthetic world adds `depth_dense` (N, 1, H, W),
0 for sky. nuScenes with `augment=True` jitters `images` (the student's input) and adds
`images_teacher` (N, 3, H, W), the same images untouched, for the frozen teacher. DDAD with
self-occlusion masks adds `omega` (N, 1, H, W) bool, True where a pixel counts (False on the ego
car), for Eqs. (10) and (12). A dataset with ground truth at a native camera resolution above
the input size (nuScenes, DDAD) also has `native_depth(index)`: N float32 arrays (H0, W0) in
meters, the evaluation protocol's D*.
"""
import torch

from cli import InputError
from ddad import DDAD_CAMERAS, DDAD_DEPTH_RANGE, DDAD_IMAGE_SIZE, DDAD_RATE_HZ, DDADSurround
from nusc import NUSCENES_IMAGE_SIZE, NUSCENES_SPLITS, NuScenesSurround
from nusc_sweeps import NuScenesSweeps
from rig import CAMERAS, MAX_DEPTH, MIN_DEPTH
from synthetic import DEFAULT_IMAGE_SIZE as SYNTHETIC_IMAGE_SIZE
from synthetic import SyntheticSurround

DATASETS = ("synthetic", "nuscenes", "ddad")
# Default input size per dataset, (H, W): the synthetic demo size, SurroundDepth's nuScenes and DDAD sizes.
DEFAULT_IMAGE_SIZE = {"synthetic": SYNTHETIC_IMAGE_SIZE, "nuscenes": NUSCENES_IMAGE_SIZE, "ddad": DDAD_IMAGE_SIZE}
# Depth range (d_min, d_max) in meters per dataset, Eqs. (3) and (18): 0.1-80 m, DDAD 0.1-200 m.
DEPTH_RANGE = {"synthetic": (MIN_DEPTH, MAX_DEPTH), "nuscenes": (MIN_DEPTH, MAX_DEPTH), "ddad": DDAD_DEPTH_RANGE}
# Camera names per dataset in the ring order of the views (the synthetic rig is named as nuScenes'):
# the model folder's config.json records them (checkpoint.py).
CAMERA_NAMES = {"synthetic": CAMERAS, "nuscenes": CAMERAS, "ddad": DDAD_CAMERAS}


def depth_range(name):
    """(d_min, d_max) in meters of dataset `name`: the bin range of Eq. (3), the metric range of Eq. (18)."""
    return DEPTH_RANGE[name]


def split_name(data, version, role):
    """The split playing `role` ('train', 'val' or 'test') for a dataset and nuScenes version:
    the role itself on synthetic data; NUSCENES_SPLITS[version] on nuScenes; on DDAD 'train' or
    'val' (no test: val, whose 3,950 samples are the evaluation protocol)."""
    if data == "synthetic":
        return role
    if data == "ddad":
        return "train" if role == "train" else "val"
    return NUSCENES_SPLITS.get(version, NUSCENES_SPLITS["v1.0-trainval"])[0 if role == "train" else 1]


def build_dataset(name, split, image_size=None, dataroot=None, version=None, seed=0, **kwargs):
    """The surround dataset `name` ('synthetic', 'nuscenes' or 'ddad') for `split`.

    image_size: (H, W) in pixels, or None for the dataset's default.
    Synthetic splits are 'train', 'val', 'test'; nuScenes splits follow the devkit
    ('train', 'val' for v1.0-trainval; 'mini_train', 'mini_val' for v1.0-mini); DDAD splits
    are 'train' and 'val' of its ddad.json (version is ignored).
    Extra keyword arguments go to the dataset class.
    """
    size = {} if image_size is None else {"image_size": tuple(image_size)}
    if name == "synthetic":
        return SyntheticSurround(split=split, seed=seed, **size, **kwargs)
    if name == "nuscenes":
        return NuScenesSurround(dataroot, version=version or "v1.0-trainval", split=split, **size, **kwargs)
    if name == "ddad":
        return DDADSurround(dataroot, split=split, **size, **kwargs)
    raise ValueError(f"unknown dataset {name!r}: use one of {', '.join(DATASETS)}")


def build_unlabelled(name, split, image_size=None, dataroot=None, version=None, seed=0, scenes=0, first_scene=0,
                     sweeps=0, cache_dir=None):
    """The unlabelled images of a training split: items as `build_dataset`'s training items, with `depth` all 0.
    Synthetic: `scenes` finite scenes from scene `first_scene` on (SyntheticSurround, labelled=False).
    nuScenes: `sweeps` camera sweep frames per keyframe sample (nusc_sweeps.NuScenesSweeps, colour jitter on,
    as the training split). DDAD has none: an InputError says why."""
    size = {} if image_size is None else {"image_size": tuple(image_size)}
    if name == "synthetic":
        return SyntheticSurround(split=split, seed=seed, scenes=scenes, first_scene=first_scene, labelled=False,
                                 cache_dir=cache_dir, **size)
    if name == "nuscenes":
        return NuScenesSweeps(dataroot, version=version or "v1.0-trainval", split=split, sweeps=sweeps, augment=True,
                              **size)
    if name == "ddad":
        raise InputError(f"{dataroot or 'DDAD'}: DDAD has no unlabelled camera frames (train and val: the six "
                         f"cameras and the LiDAR synchronised at {DDAD_RATE_HZ} Hz, every frame a sample with its "
                         f"point cloud; the test archive: 3,080 single images with intrinsics only, the benchmark's) "
                         f"; train on DDAD without unlabelled images")
    raise ValueError(f"unknown dataset {name!r}: use one of {', '.join(DATASETS)}")


IMAGE_KEYS = ("images", "images_teacher")  # the image tensors of a sample (see the module docstring)
UINT8_MAX = 255.0  # an 8-bit image divided by this is in [0, 1]


def batch_to_device(batch, device):
    """A collated batch -> the same dict on `device`, with its images float32 in [0, 1]: uint8
    images are moved as bytes (4x less to copy than float) and divided by 255 there; float
    images (synthetic) are moved as they are."""
    out = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    for key in IMAGE_KEYS:
        if key in out and out[key].dtype == torch.uint8:
            out[key] = out[key].float().div_(UINT8_MAX)
    return out
