"""nuScenes: six 1600 x 900 cameras, ground truth D* from the LIDAR_TOP keyframe sweep.

Defines `NuScenesSurround` (keyframe samples as surround samples, the format of `data.py`), its
splits (`NUSCENES_SPLITS`), image decoding (`decode_image`: JPEG draft mode; `resize_image`: uint8
out), `render_points` (cached points -> D* at any size, also the native ground truth of
`NuScenesSurround.native_depth`) and the training colour jitter; `CameraFrames` (opening a split,
the camera part of an item), `index_cameras` and `split_samples` serve `nusc_sweeps.py` too.
Projected LiDAR points are cached compressed (`rig.encode_points`); a dataroot it cannot read ends
in a one-line `cli.DatasetError`.
Named `nusc.py`, not `nuscenes.py`, so that it never shadows the devkit's `nuscenes` package.
"""
import os

import numpy as np
import torch
from PIL import Image

from cli import DatasetError, atomic_path
from rig import (CACHE_SUBPIXEL, CAMERAS, MIN_DEPTH, decode_points, encode_points, quaternion_matrix,
                 render_sparse_depth, scale_intrinsics, unproject_pixels)

# Devkit version -> its splits in `nuscenes.utils.splits.create_splits_scenes()`. The full 'val'
# split (150 scenes, 6,019 keyframe samples) is the evaluation protocol of SurroundDepth.
NUSCENES_SPLITS = {"v1.0-trainval": ("train", "val"), "v1.0-mini": ("mini_train", "mini_val")}
NUSCENES_TRAIN_SPLITS = ("train", "mini_train")  # the only splits colour jitter is allowed on
NUSCENES_IMAGE_SIZE = (352, 640)  # (H, W) network input of SurroundDepth on nuScenes
LIDAR_CHANNEL = "LIDAR_TOP"
LIDAR_FIELDS = 5  # a .pcd.bin sweep is float32 (x, y, z, intensity, ring index) per point
# Colour jitter of monodepth2's training augmentation: brightness, contrast and saturation
# factors in [0.8, 1.2], hue shift in [-0.1, 0.1]. Photometric only: no geometry changes.
COLOR_JITTER = dict(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.1)


def _pose(record, inverse=False):
    """(4, 4) float64 transform of a table record: 'translation' (m), 'rotation' (w, x, y, z); with
    inverse, its inverse (the devkit's `transform_matrix`, in numpy: the tables need no devkit here)."""
    rotation, translation = quaternion_matrix(record["rotation"]), np.asarray(record["translation"], np.float64)
    pose = np.eye(4)
    if inverse:
        pose[:3, :3], pose[:3, 3] = rotation.T, -rotation.T @ translation
    else:
        pose[:3, :3], pose[:3, 3] = rotation, translation
    return pose


def _index_sample(nusc, sample, lidar_sweeps):
    """Everything one item needs from the devkit tables, as plain arrays (file paths, transforms).

    The transforms follow `NuScenesExplorer.map_pointcloud_to_image`: LiDAR -> ego at the sweep's
    time -> global -> ego at the camera's time -> camera. Each camera has its own timestamp, so
    its own ego pose.
    """
    cams = [nusc.get("sample_data", sample["data"][channel]) for channel in CAMERAS]
    record = {"token": sample["token"], **index_cameras(nusc, cams), "cam_from_global": [], "sweeps": []}
    for cam in cams:
        calib = nusc.get("calibrated_sensor", cam["calibrated_sensor_token"])
        ego = nusc.get("ego_pose", cam["ego_pose_token"])
        # global -> ego at the camera's timestamp -> camera, (4, 4)
        record["cam_from_global"].append(_pose(calib, inverse=True) @ _pose(ego, inverse=True))
    # The keyframe sweep, then up to lidar_sweeps - 1 earlier (non-keyframe) sweeps via 'prev',
    # as `LidarPointCloud.from_file_multisweep`; each keeps its own lidar -> global transform, so
    # all of them meet the cameras in the global frame (the keyframe's frame, through global).
    sweep = nusc.get("sample_data", sample["data"][LIDAR_CHANNEL])
    for _ in range(lidar_sweeps):
        calib = nusc.get("calibrated_sensor", sweep["calibrated_sensor_token"])
        ego = nusc.get("ego_pose", sweep["ego_pose_token"])
        global_from_lidar = _pose(ego) @ _pose(calib)  # lidar -> ego at sweep time -> global
        path = os.path.join(nusc.dataroot, sweep["filename"])
        record["sweeps"].append((path, global_from_lidar))
        if not sweep["prev"]:
            break  # the first sweep of the scene: fewer sweeps, as the devkit does
        sweep = nusc.get("sample_data", sweep["prev"])
    record["cam_from_global"] = np.stack(record["cam_from_global"])  # (N, 4, 4)
    return record


def index_cameras(nusc, cams):
    """The camera part of an item from N camera sample_data records (keyframes or sweeps), each with
    its own calibrated_sensor: image_files (N paths), image_sizes (N native (H0, W0)), intrinsics
    (N, 3, 3) float64 pixels at the native size, cam_to_ego (N, 4, 4) float64 (camera -> ego, meters)."""
    calibs = [nusc.get("calibrated_sensor", cam["calibrated_sensor_token"]) for cam in cams]
    return {"image_files": [os.path.join(nusc.dataroot, cam["filename"]) for cam in cams],
            "image_sizes": [(cam["height"], cam["width"]) for cam in cams],
            "intrinsics": np.stack([np.array(calib["camera_intrinsic"], dtype=np.float64) for calib in calibs]),
            "cam_to_ego": np.stack([_pose(calib) for calib in calibs])}


def _project_sweeps(record, dataroot):
    """LiDAR sweeps of a sample -> per camera (P_n, 3) float64 (u, v, z), z > 0, inside the image.

    u, v: continuous pixel coordinates at the native resolution (pixel i covers [i, i + 1));
    z: depth along the camera's optical axis, meters.
    """
    clouds = []
    for path, global_from_lidar in record["sweeps"]:
        if not os.path.isfile(path):
            raise DatasetError(f"missing LiDAR sweep {path}: extract the nuScenes 'samples' and "
                               f"'sweeps' archives into {dataroot} (or use lidar_sweeps=1)")
        scan = np.fromfile(path, dtype=np.float32).reshape(-1, LIDAR_FIELDS)  # (P, 5)
        # Beam by beam (stable: in firing order along each beam), so that neighbouring points
        # are neighbours in the image too; the cache compresses them better (`rig.encode_points`).
        scan = scan[np.argsort(scan[:, 4], kind="stable")]
        clouds.append((scan[:, :3].astype(np.float64), global_from_lidar))  # (P, 3)
    projected = []
    for n, (height, width) in enumerate(record["image_sizes"]):
        if max(height, width) * CACHE_SUBPIXEL >= 2**16:  # the uint16 cache encoding's limit
            raise DatasetError(f"camera images of {height}x{width} are too large for the cache: "
                               f"lower rig.CACHE_SUBPIXEL")
        uvz = []
        for xyz, global_from_lidar in clouds:
            cam_from_lidar = record["cam_from_global"][n] @ global_from_lidar  # (4, 4)
            cam = xyz @ cam_from_lidar[:3, :3].T + cam_from_lidar[:3, 3]  # (P, 3) camera frame
            cam = cam[cam[:, 2] > 0]
            pix = cam @ record["intrinsics"][n].T  # (P, 3)
            u, v, z = pix[:, 0] / cam[:, 2], pix[:, 1] / cam[:, 2], cam[:, 2]
            inside = (u >= 0) & (u < width) & (v >= 0) & (v < height)
            uvz.append(np.stack([u, v, z], axis=1)[inside])  # (P_in, 3)
        projected.append(np.concatenate(uvz))
    return projected


def decode_image(path, native_size, size=None):
    """A camera image file -> RGB PIL image, decoded at the smallest JPEG scale that is still at
    least `size` (H, W) (PIL's draft mode: the DCT skips the detail a downscale would discard;
    1600 x 900 -> 800 x 450 for 352 x 640), or in full when size is None. Raises DatasetError
    when the file is not native_size (H0, W0), as its sample_data says."""
    image = Image.open(path)
    if image.size != (native_size[1], native_size[0]):
        image.close()
        raise DatasetError(f"camera image {path} is {image.size[0]}x{image.size[1]}, its sample_data "
                           f"says {native_size[1]}x{native_size[0]}: re-extract it")
    if size is not None:
        image.draft("RGB", (size[1], size[0]))  # JPEG only; a no-op on other formats
    with image:
        return image.convert("RGB")  # decodes


def resize_image(image, size):
    """RGB PIL image -> (3, H, W) uint8 tensor at size (H, W): bilinear, antialiased (PIL widens
    the kernel when it shrinks). Kept 8-bit: `data.batch_to_device` makes it float on the device."""
    height, width = size
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.BILINEAR)
    return torch.from_numpy(np.array(image)).permute(2, 0, 1)  # (3, H, W) uint8


def render_points(uvz, k_native, k, height, width, min_z=MIN_DEPTH):
    """Cached points (P, 3) (u, v, z) at the native resolution (intrinsics k_native) -> sparse
    depth (height, width) float32 meters for intrinsics k at that size; nearest point wins."""
    # Back to the camera frame, X = z K^-1 (u, v, 1), then `render_sparse_depth` at the output size.
    return render_sparse_depth(unproject_pixels(uvz, k_native), k, height, width, min_z)


class CameraFrames(torch.utils.data.Dataset):
    """What the nuScenes datasets share: opening a split's tables (one-line errors), and the camera part
    of an item, decoded, resized and jittered (`NuScenesSurround` adds the LiDAR depth;
    `nusc_sweeps.NuScenesSweeps` has none)."""

    def open_split(self, dataroot, version, split, image_size, augment):
        """Check the arguments and keep dataroot, image_size (H, W) and augment -> the tables folder. A bad
        argument or folder is a one-line DatasetError. The tables are read by `load_split`."""
        if version not in NUSCENES_SPLITS:
            raise DatasetError(f"unsupported nuScenes version {version!r}: use one of "
                               f"{', '.join(NUSCENES_SPLITS)}")
        if split not in NUSCENES_SPLITS[version]:
            fits = [v for v, splits in NUSCENES_SPLITS.items() if split in splits]
            hint = f" (split {split!r} belongs to {fits[0]})" if fits else ""
            raise DatasetError(f"split {split!r} does not fit nuScenes {version}: use one of "
                               f"{', '.join(NUSCENES_SPLITS[version])}{hint}")
        if augment and split not in NUSCENES_TRAIN_SPLITS:
            raise DatasetError(f"augment=True on split {split!r}: colour jitter is for training "
                               f"splits only ({', '.join(NUSCENES_TRAIN_SPLITS)})")
        if dataroot is None or not os.path.isdir(dataroot):
            raise DatasetError(f"nuScenes dataroot {dataroot} not found: pass the folder that "
                               f"holds {version}/, samples/, sweeps/ and maps/ as dataroot")
        table_dir = os.path.join(dataroot, version)
        if not os.path.isdir(table_dir):
            found = sorted(v for v in NUSCENES_SPLITS if os.path.isdir(os.path.join(dataroot, v)))
            raise DatasetError(f"nuScenes tables {table_dir} not found: extract the {version} "
                               f"metadata archive into {dataroot}, or pass a version it has "
                               f"({', '.join(found) or 'none'})")
        self.dataroot, self.image_size, self.augment = dataroot, tuple(image_size), augment
        if augment:
            from torchvision.transforms import ColorJitter

            self.jitter = ColorJitter(**COLOR_JITTER)
        return table_dir

    def _load_image(self, path, native_size):
        """(3, H, W) uint8 of a camera JPEG at image_size (`decode_image`, then `resize_image`)."""
        if not os.path.isfile(path):
            raise DatasetError(f"missing camera image {path}: extract the nuScenes 'samples' and "
                               f"'sweeps' archives into {self.dataroot}")
        return resize_image(decode_image(path, native_size, self.image_size), self.image_size)

    def cameras(self, record):
        """The camera part of the item of an `index_cameras` record: images (N, 3, H, W) uint8 (colour
        jittered per view when augmenting, then `images_teacher` holds them untouched), intrinsics
        (N, 3, 3) float32 pixels at image_size, cam_to_ego (N, 4, 4) float32; with the intrinsics at
        image_size as float64 (N, 3, 3), for rendering depth."""
        height, width = self.image_size
        images = [self._load_image(path, native) for path, native in zip(record["image_files"], record["image_sizes"])]
        k = np.stack([scale_intrinsics(k_native, width / native[1], height / native[0])
                      for k_native, native in zip(record["intrinsics"], record["image_sizes"])])  # (N, 3, 3)
        item = {"images": torch.stack(images),  # (N, 3, H, W) uint8
                "intrinsics": torch.from_numpy(k).float(),  # (N, 3, 3)
                "cam_to_ego": torch.from_numpy(record["cam_to_ego"]).float()}  # (N, 4, 4)
        if self.augment:
            item["images_teacher"] = item["images"]
            item["images"] = torch.stack([self.jitter(image) for image in images])  # per view
        return item, k


class NuScenesSurround(CameraFrames):
    """nuScenes keyframe samples as surround samples (format in the module docstring).

    dataroot: the nuScenes folder holding <version>/, samples/, sweeps/, maps/.
    version: 'v1.0-trainval' (splits 'train', 'val') or 'v1.0-mini' ('mini_train', 'mini_val').
    image_size: (H, W) output size in pixels; images are decoded in JPEG draft mode, resized
        (bilinear, antialiased) and returned as uint8; the intrinsics are scaled to match.
    min_z: depth in meters below which LiDAR points are dropped (d_min of Eq. (18)).
    lidar_sweeps: K LIDAR_TOP sweeps per sample, the keyframe and the K - 1 sweeps before it, for
        denser training ground truth. Evaluation must use 1: the keyframe sweep alone is the
        SurroundDepth protocol, and earlier sweeps smear moving objects.
    cache_dir: where the projected LiDAR points are cached, one compressed .npz per sample
        (default <dataroot>/fsmde_cache/<version>/); depth maps are rendered from it at load time.
    augment: colour jitter (COLOR_JITTER) on each view of the student's input; training splits
        only. The untouched images are returned too, as `images_teacher`.
    """

    def __init__(self, dataroot, version="v1.0-trainval", split="train",
                 image_size=NUSCENES_IMAGE_SIZE, min_z=MIN_DEPTH, lidar_sweeps=1, cache_dir=None,
                 augment=False):
        if lidar_sweeps < 1:
            raise DatasetError(f"lidar_sweeps={lidar_sweeps}: use 1 (the keyframe) or more")
        table_dir = self.open_split(dataroot, version, split, image_size, augment)
        self.samples = self._index(dataroot, version, split, lidar_sweeps)
        if not self.samples:
            raise DatasetError(f"no scene of split {split!r} in {table_dir}: check the version")
        self.min_z, self.lidar_sweeps = min_z, lidar_sweeps
        cache_dir = cache_dir or os.path.join(dataroot, "fsmde_cache", version)
        self.cache_dir = os.path.join(cache_dir, f"sweeps{lidar_sweeps}")
        try:
            os.makedirs(self.cache_dir, exist_ok=True)
        except OSError:
            raise DatasetError(f"cannot create the cache folder {self.cache_dir}: pass a writable "
                               f"cache_dir") from None

    def _index(self, dataroot, version, split, lidar_sweeps):
        """The samples of the scenes of `split`, each indexed by `_index_sample`, read through the devkit
        (`load_split`; a subclass may index the JSON tables itself). Only plain arrays are kept: no devkit
        object lives on in the dataset, so DataLoader workers neither copy nor pickle the tables."""
        nusc, scene_names = load_split(dataroot, version, split)
        return [_index_sample(nusc, sample, lidar_sweeps) for sample in split_samples(nusc, scene_names)]

    def __len__(self):
        return len(self.samples)

    def points(self, index):
        """Per camera (P_n, 3) float64 (u, v, z) of sample `index`: native pixels and meters.

        Read from the cache, or projected from the sweeps and cached (written to a temporary
        file, then renamed: DataLoader workers never read a half-written file).
        """
        record = self.samples[index]
        path = os.path.join(self.cache_dir, record["token"] + ".npz")
        if os.path.isfile(path):
            with np.load(path, allow_pickle=False) as cached:
                return decode_points(cached)
        arrays = encode_points(_project_sweeps(record, self.dataroot))
        with atomic_path(path) as tmp:  # tmp ends in .npz, so savez_compressed keeps the name
            np.savez_compressed(tmp, **arrays)
        return decode_points(arrays)  # what the next load reads: first and later loads agree

    def native_depth(self, index):
        """Sparse ground truth D* of sample `index` at each camera's native resolution: a list of
        N float32 arrays (H0, W0), meters, 0 = no point; nearest point wins (the evaluation
        protocol of SurroundDepth, `evaluate.py`). Rendered from the cached points, like `depth`."""
        record = self.samples[index]
        return [render_points(uvz, k, k, *native, self.min_z)
                for native, k, uvz in zip(record["image_sizes"], record["intrinsics"], self.points(index))]

    def __getitem__(self, index):
        record = self.samples[index]
        points = self.points(index)  # before the images: a missing LiDAR sweep is reported first
        cameras, k = self.cameras(record)
        depths = [render_points(uvz, k_native, k_n, *self.image_size, self.min_z)
                  for uvz, k_native, k_n in zip(points, record["intrinsics"], k)]
        return {"images": cameras.pop("images"),  # (N, 3, H, W) uint8
                "depth": torch.from_numpy(np.stack(depths)[:, None]),  # (N, 1, H, W) float32 meters, 0 = none
                **cameras}


def load_split(dataroot, version, split):
    """The devkit's tables of a checked dataroot (`CameraFrames.open_split`) -> (NuScenes object, the scene
    names of `split`); tables that do not load are a one-line DatasetError."""
    from nuscenes.nuscenes import NuScenes  # devkit: heavy (matplotlib, cv2), imported on use
    from nuscenes.utils.splits import create_splits_scenes

    try:
        nusc = NuScenes(version=version, dataroot=dataroot, verbose=False)
    except (AssertionError, OSError, KeyError, ValueError) as error:  # bad JSON: ValueError
        message = str(error).replace("\n", " ")
        raise DatasetError(f"nuScenes tables in {os.path.join(dataroot, version)} do not load ({message}): "
                           f"re-extract the {version} metadata archive") from None
    return nusc, set(create_splits_scenes()[split])


def split_samples(nusc, scene_names):
    """The keyframe sample records of the scenes named `scene_names`, scene by scene (in the order of
    the scene table), in time order within a scene ('next')."""
    for scene in nusc.scene:
        token = scene["first_sample_token"] if scene["name"] in scene_names else ""
        while token:
            sample = nusc.get("sample", token)
            yield sample
            token = sample["next"]
