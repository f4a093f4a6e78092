"""The dataset factory: a dataset name and split -> a torch Dataset of surround samples.

Defines `build_dataset`, `split_name` (which split plays train / val / test on each dataset),
`depth_range` (the d_min, d_max of Eqs. (3) and (18) on each dataset) and the default input
size of each dataset. The loaders themselves live in `synthetic.py`, `nusc.py` and `ddad.py`;
this file stands above them, so they never import it.

Every dataset returns one surround sample per item, a dict of float32 tensors:
    images      (N, 3, H, W) in [0, 1], N = 6 cameras in the ring order of `rig.CAMERAS`
                             (DDAD: CAMERA_01, 06, 08, 09, 07, 05; `ddad.DDAD_CAMERAS`)
    depth       (N, 1, H, W) sparse metric z-depth D* in meters, 0 where there is no point
    intrinsics  (N, 3, 3)    pixel intrinsics at (H, W)
    cam_to_ego  (N, 4, 4)    camera -> ego transform; camera x right, y down, z forward;
                             ego x forward, y left, z up (nuScenes conventions)
and the synthetic world adds `depth_dense` (N, 1, H, W), 0 for sky. nuScenes with
`augment=True` jitters `images` (the student's input) and adds `images_teacher` (N, 3, H, W),
the same images untouched, for the frozen teacher. DDAD with self-occlusion masks adds `omega`
(N, 1, H, W) bool, True where a pixel counts (False on the ego car), for Eqs. (10) and (12).
"""
from ddad import DDAD_DEPTH_RANGE, DDAD_IMAGE_SIZE, DDADSurround
from nusc import NUSCENES_IMAGE_SIZE, NUSCENES_SPLITS, NuScenesSurround
from rig import MAX_DEPTH, MIN_DEPTH
from synthetic import DEFAULT_IMAGE_SIZE as SYNTHETIC_IMAGE_SIZE
from synthetic import SyntheticSurround

DATASETS = ("synthetic", "nuscenes", "ddad")
# Default input size per dataset, (H, W): the synthetic demo size, SurroundDepth's nuScenes and DDAD sizes.
DEFAULT_IMAGE_SIZE = {"synthetic": SYNTHETIC_IMAGE_SIZE, "nuscenes": NUSCENES_IMAGE_SIZE, "ddad": DDAD_IMAGE_SIZE}
# Depth range (d_min, d_max) in meters per dataset, Eqs. (3) and (18): 0.1-80 m, DDAD 0.1-200 m.
DEPTH_RANGE = {"synthetic": (MIN_DEPTH, MAX_DEPTH), "nuscenes": (MIN_DEPTH, MAX_DEPTH), "ddad": DDAD_DEPTH_RANGE}


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
