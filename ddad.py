"""DDAD: six 1936 x 1216 cameras, ground truth D* from the LIDAR datum, read without TRI's dgp.

Defines `DDADSurround` (DDAD samples as surround samples, the format of `data.py`), the ring
order of DDAD's cameras (`DDAD_CAMERAS`), its splits, input size and depth range, and the
optional self-occlusion masks Omega of Eqs. (10) and (12). It reads dgp's JSON files with `json`
alone: `ddad.json` (a SceneDataset), each `scene_<sha1>.json` (a Scene) and
`calibration/<key>.json` (a SampleCalibration); keys are snake_case, 64-bit integers and map
keys are strings, datums are found by key and sensor names compared without case.

Ground truth as dgp's `get_depth_from_point_cloud` makes it: the LIDAR datum's points go to the
world with the LIDAR datum's pose, then into the camera with the camera datum's pose (both
sensor -> world at their own time, so the ego motion between the two is compensated), and
u = fx x / z + cx, v = fy y / z + cy; a point lands in pixel (int(v), int(u)), int() truncating
toward zero as dgp does, and needs z > 0. Where points share a pixel the nearest wins (dgp keeps
the last in file order). Projected points are cached compressed (`rig.encode_points`).
"""
import hashlib
import json
import os

import numpy as np
import torch
from PIL import Image

from cli import DatasetError, atomic_path
from rig import (CACHE_SUBPIXEL, decode_points, encode_points, quaternion_matrix, render_sparse_depth,
                 scale_intrinsics, unproject_pixels)

# DDAD's cameras in the ring order of rig.CAMERAS (clockwise seen from above, from the front):
# front, front-right, back-right, back, back-left, front-left (DDAD's sensor figure; the yaws of
# the optical axes in the calibrations are about 3, -52, -124, 180, 124 and 53 degrees).
DDAD_CAMERAS = ("CAMERA_01", "CAMERA_06", "CAMERA_08", "CAMERA_09", "CAMERA_07", "CAMERA_05")
DDAD_LIDAR = "LIDAR"  # the merged point cloud of the four Luminar-H2 scanners, in the vehicle frame
# The six cameras and the LiDAR are synchronised at 10 Hz (DDAD's README): every camera frame of train and
# val is a sample with its point cloud, so DDAD has no unlabelled camera frames (data.build_unlabelled).
DDAD_RATE_HZ = 10
DDAD_INDEX = "ddad.json"
# Split name -> its key in ddad.json's scene_splits (dgp's DatasetSplit enum: TRAIN 0, VAL 1).
# The test split (2) has no ground truth.
DDAD_SPLITS = {"train": "0", "val": "1"}
DDAD_IMAGE_SIZE = (384, 640)  # (H, W) network input of SurroundDepth and VFDepth on DDAD
DDAD_DEPTH_RANGE = (0.1, 200.0)  # meters: SurroundDepth's evaluation range on DDAD, Eqs. (3), (18)
# A self-occlusion mask keeps at least this share of its view: the ego car covers at most 45 % of
# a DDAD view (VFDepth's hand-drawn masks), so a mask keeping less is taken to be inverted.
MASK_MIN_KEEP = 0.5
MASK_SUFFIXES = (".png", "_mask.png")  # DIR/CAMERA_01.png, or VFDepth's DIR/CAMERA_01_mask.png


def _read_json(path, what, fix):
    """A JSON file -> dict; a missing or unreadable file is a one-line DatasetError."""
    if not os.path.isfile(path):
        raise DatasetError(f"{path}: {what} not found ; {fix}")
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as error:
        raise DatasetError(f"{path}: {what} does not load ({error.__class__.__name__}) ; {fix}") from None


def _pose(record):
    """(4, 4) float64 sensor -> parent transform of a dgp Pose {'translation': {x, y, z},
    'rotation': {qw, qx, qy, qz}} (Hamilton quaternion, either sign); absent fields are 0."""
    t, r = record.get("translation", {}), record.get("rotation", {})
    pose = np.eye(4)
    pose[:3, :3] = quaternion_matrix([float(r.get(k, 0.0)) for k in ("qw", "qx", "qy", "qz")])
    pose[:3, 3] = [float(t.get(k, 0.0)) for k in ("x", "y", "z")]
    return pose


def _intrinsics(record):
    """(3, 3) pixel intrinsics of a dgp CameraIntrinsics; skew is ignored, as dgp's depth does."""
    fx, fy, cx, cy = (float(record.get(k, 0.0)) for k in ("fx", "fy", "cx", "cy"))
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


def _calibration(path):
    """calibration/<key>.json -> {lower-case sensor name: (intrinsics (3, 3), extrinsic (4, 4))}."""
    calib = _read_json(path, "calibration", "re-extract the scene's calibration/ folder")
    names = calib.get("names", [])
    return {name.lower(): (_intrinsics(k), _pose(e))
            for name, k, e in zip(names, calib.get("intrinsics", []), calib.get("extrinsics", []))}


def _index_scene(scene_path):
    """One scene file -> a record per sample, in the scene's order: the file paths and transforms
    one item needs, as plain arrays (no JSON lives on in the dataset)."""
    scene = _read_json(scene_path, "scene file listed in ddad.json", "re-extract that scene's folder")
    folder = os.path.dirname(scene_path)
    datums = {d["key"]: d for d in scene.get("data", [])}
    calibrations, records = {}, []
    for index, sample in enumerate(scene.get("samples", [])):
        by_name = {}
        for key in sample.get("datum_keys", []):
            if key in datums:
                by_name[datums[key]["id"]["name"].lower()] = datums[key]
        calib_key = sample.get("calibration_key", "")
        calib_path = os.path.join(folder, "calibration", calib_key + ".json")
        if calib_key not in calibrations:
            calibrations[calib_key] = _calibration(calib_path)
        calib = calibrations[calib_key]
        lidar = by_name.get(DDAD_LIDAR.lower(), {}).get("datum", {}).get("point_cloud")
        if lidar is None:
            raise DatasetError(f"{scene_path}: sample {index} has no {DDAD_LIDAR} point cloud datum ; "
                               f"re-extract this scene")
        world_from_lidar = _pose(lidar.get("pose", {}))  # LIDAR -> world at the lidar's time
        record = {"scene": scene_path, "index": index, "image_files": [], "intrinsics": [], "cam_to_ego": [],
                  "cam_from_lidar": [], "lidar_file": os.path.join(folder, lidar["filename"])}
        for name in DDAD_CAMERAS:
            if name.lower() not in calib:
                raise DatasetError(f"{calib_path}: the calibration has no {name} ; DDAD needs all six cameras "
                                   f"({', '.join(DDAD_CAMERAS)}): re-extract this scene")
            image = by_name.get(name.lower(), {}).get("datum", {}).get("image")
            if image is None:
                raise DatasetError(f"{scene_path}: sample {index} has no {name} image datum ; re-extract this "
                                   f"scene (DDAD needs all six cameras)")
            intrinsics, extrinsic = calib[name.lower()]
            record["image_files"].append(os.path.join(folder, image["filename"]))
            record["intrinsics"].append(intrinsics)
            record["cam_to_ego"].append(extrinsic)  # camera -> vehicle, from the calibration
            # LIDAR -> world -> camera at the camera's time, with both datum poses (dgp's chain)
            record["cam_from_lidar"].append(np.linalg.inv(_pose(image.get("pose", {}))) @ world_from_lidar)
        for key in ("intrinsics", "cam_to_ego", "cam_from_lidar"):
            record[key] = np.stack(record[key])  # (N, 3, 3) or (N, 4, 4)
        # The cache key: every datum and the calibration that the projected points depend on.
        identity = "".join(sorted(sample.get("datum_keys", []))) + calib_key
        record["key"] = hashlib.sha1(identity.encode()).hexdigest()
        records.append(record)
    return records


def _native_size(path):
    """(H, W) of an image file, read from its header (dgp takes the depth-map size from it)."""
    if not os.path.isfile(path):
        raise DatasetError(f"{path}: camera image not found ; re-extract the DDAD archive (its rgb/ folders)")
    with Image.open(path) as image:
        return image.size[1], image.size[0]


def _load_cloud(path):
    """(P, 3) float64 X, Y, Z of a LIDAR .npz, file order kept: its `data` array, (P, 4) X, Y, Z,
    INTENSITY, or a structured array with those fields (both as dgp reads them)."""
    if not os.path.isfile(path):
        raise DatasetError(f"{path}: point cloud not found ; re-extract the DDAD archive (its point_cloud/ folders)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            cloud = archive["data"]
    except (OSError, ValueError, KeyError) as error:
        raise DatasetError(f"{path}: point cloud does not load ({error.__class__.__name__}) ; re-extract it") from None
    if cloud.dtype.names is not None:
        return np.stack([cloud[k].reshape(-1) for k in ("X", "Y", "Z")], axis=1).astype(np.float64)
    return cloud.reshape(len(cloud), -1)[:, :3].astype(np.float64)


def _project(record):
    """The LIDAR points of a sample -> per camera (P_n, 3) float64 (u, v, z) at the native size.

    u, v: continuous pixel coordinates (pixel i covers [i, i + 1)), z: depth along the optical
    axis, meters, z > 0. Points with -1 < u < 0 (or v) are kept at u = 0: dgp's int() truncates
    them into column 0 (row 0), and so does every smaller resolution. File order is kept.
    """
    xyz = _load_cloud(record["lidar_file"])  # (P, 3) LIDAR frame
    projected = []
    for n, path in enumerate(record["image_files"]):
        height, width = _native_size(path)
        if max(height, width) * CACHE_SUBPIXEL >= 2**16:  # the uint16 cache encoding's limit
            raise DatasetError(f"{path}: {width}x{height} is too large for the point cache ; lower rig.CACHE_SUBPIXEL")
        cam_from_lidar = record["cam_from_lidar"][n]  # (4, 4)
        cam = xyz @ cam_from_lidar[:3, :3].T + cam_from_lidar[:3, 3]  # (P, 3) camera frame
        cam = cam[cam[:, 2] > 0]
        pix = cam @ record["intrinsics"][n].T  # (P, 3)
        u, v, z = pix[:, 0] / cam[:, 2], pix[:, 1] / cam[:, 2], cam[:, 2]
        inside = (u > -1) & (u < width) & (v > -1) & (v < height)  # 0 <= int(u) < W, 0 <= int(v) < H
        projected.append(np.stack([np.maximum(u, 0.0), np.maximum(v, 0.0), z], axis=1)[inside])  # (P_n, 3)
    return projected


def _load_masks(folder, image_size):
    """Self-occlusion masks, one image per camera in `folder` -> bool (N, 1, H, W) at image_size,
    True where a pixel counts (resized nearest from any size)."""
    if not os.path.isdir(folder):
        raise DatasetError(f"{folder}: mask folder not found ; pass the folder that holds CAMERA_01.png .. "
                           f"CAMERA_09.png (--ddad-masks)")
    height, width = image_size
    masks = []
    for name in DDAD_CAMERAS:
        paths = [os.path.join(folder, name + suffix) for suffix in MASK_SUFFIXES]
        path = next((p for p in paths if os.path.isfile(p)), None)
        if path is None:
            raise DatasetError(f"{paths[0]}: self-occlusion mask not found ; write one per camera, non-zero where "
                               f"a pixel counts, zero on the ego car (an all-white image where it shows nothing)")
        with Image.open(path) as image:
            keep = np.array(image.convert("L").resize((width, height), Image.Resampling.NEAREST)) > 0  # (H, W)
        if keep.mean() < MASK_MIN_KEEP:
            raise DatasetError(f"{path}: the mask keeps only {keep.mean():.0%} of the view ; non-zero must mark "
                               f"the pixels that count and zero the ego car: invert it")
        masks.append(keep[None])
    return torch.from_numpy(np.stack(masks))  # (N, 1, H, W)


class DDADSurround(torch.utils.data.Dataset):
    """DDAD samples as surround samples (format in data.py), views in the order of DDAD_CAMERAS.

    dataroot: the folder that holds ddad.json (the extracted ddad_train_val archive).
    split: 'train' or 'val' (the scene lists of ddad.json; the samples of a split come by
        scene, in the listed order, then in each scene's order, as dgp orders them).
    image_size: (H, W) output size in pixels; images are resized (bilinear, antialiased) and the
        intrinsics scaled to match.
    min_z: depth in meters below which LiDAR points are dropped from `depth` (d_min of Eq. 18).
    cache_dir: where the projected LiDAR points are cached, one compressed .npz per sample
        (default <dataroot>/fsmde_cache/ddad/); depth maps are rendered from it at load time.
    masks: None, or a folder with one self-occlusion mask per camera (CAMERA_01.png, or VFDepth's
        CAMERA_01_mask.png, any size: resized nearest): non-zero where a pixel counts, zero on
        the ego car. Items then carry `omega`, bool (N, 1, H, W), for the losses of Eqs. (10)
        and (12). Never used by the metrics.
    """

    def __init__(self, dataroot, split="train", image_size=DDAD_IMAGE_SIZE, min_z=DDAD_DEPTH_RANGE[0],
                 cache_dir=None, masks=None):
        if split not in DDAD_SPLITS:
            raise DatasetError(f"{dataroot}: unknown DDAD split {split!r} ; use one of {', '.join(DDAD_SPLITS)} "
                               f"(the test split has no ground truth)")
        if dataroot is None or not os.path.isdir(dataroot):
            raise DatasetError(f"{dataroot}: DDAD dataroot not found ; pass the folder that holds {DDAD_INDEX} "
                               f"(the extracted ddad_train_val archive) as --dataroot")
        index_path = os.path.join(dataroot, DDAD_INDEX)
        index = _read_json(index_path, "the DDAD scene index", f"pass the folder of the extracted ddad_train_val "
                                                              f"archive, which holds {DDAD_INDEX}")
        files = index.get("scene_splits", {}).get(DDAD_SPLITS[split], {}).get("filenames", [])
        if not files:
            raise DatasetError(f"{index_path}: lists no scene for split {split!r} ; re-extract the DDAD archive")
        self.samples = []
        for name in files:
            self.samples.extend(_index_scene(os.path.join(dataroot, name)))
        self.dataroot, self.image_size, self.min_z = dataroot, tuple(image_size), min_z
        self.cache_dir = cache_dir or os.path.join(dataroot, "fsmde_cache", "ddad")
        try:
            os.makedirs(self.cache_dir, exist_ok=True)
        except OSError:
            raise DatasetError(f"{self.cache_dir}: cannot create the cache folder ; pass a writable "
                               f"cache_dir") from None
        self.masks = _load_masks(masks, self.image_size) if masks else None

    def __len__(self):
        return len(self.samples)

    def points(self, index):
        """Per camera (P_n, 3) float64 (u, v, z) of sample `index`: native pixels and meters.

        Read from the cache, or projected from the LIDAR datum and cached (written to a
        temporary file, then renamed: DataLoader workers never read a half-written file).
        """
        record = self.samples[index]
        path = os.path.join(self.cache_dir, record["key"] + ".npz")
        if os.path.isfile(path):
            with np.load(path, allow_pickle=False) as cached:
                return decode_points(cached)
        arrays = encode_points(_project(record))
        with atomic_path(path) as tmp:  # tmp ends in .npz, so savez_compressed keeps the name
            np.savez_compressed(tmp, **arrays)
        return decode_points(arrays)  # what the next load reads: first and later loads agree

    def native_depth(self, index):
        """Ground truth of sample `index` at each camera's native resolution: a list of N float32
        arrays (H0, W0), z-depth in meters, 0 where no point lands; every point with z > 0
        counts (as dgp), and the nearest wins a shared pixel. From the cached points."""
        depths = []
        for path, k, uvz in zip(self.samples[index]["image_files"], self.samples[index]["intrinsics"],
                                self.points(index)):
            height, width = _native_size(path)
            depths.append(render_sparse_depth(unproject_pixels(uvz, k), k, height, width, min_z=0.0))
        return depths

    def _load_image(self, path):
        """(3, H, W) float32 in [0, 1] of a camera image resized to image_size, and its native (H, W)."""
        if not os.path.isfile(path):
            raise DatasetError(f"{path}: camera image not found ; re-extract the DDAD archive (its rgb/ folders)")
        height, width = self.image_size
        with Image.open(path) as image:
            native = (image.size[1], image.size[0])
            image = image.convert("RGB")
            if image.size != (width, height):
                image = image.resize((width, height), Image.Resampling.BILINEAR)  # antialiased when shrinking
            pixels = np.array(image)  # (H, W, 3) uint8
        return torch.from_numpy(pixels).permute(2, 0, 1).float() / 255.0, native  # (3, H, W)

    def __getitem__(self, index):
        record = self.samples[index]
        height, width = self.image_size
        images, depths, intrinsics = [], [], []
        for n, uvz in enumerate(self.points(index)):
            image, native = self._load_image(record["image_files"][n])
            images.append(image)
            k_native = record["intrinsics"][n]
            k = scale_intrinsics(k_native, width / native[1], height / native[0])  # (3, 3)
            depths.append(render_sparse_depth(unproject_pixels(uvz, k_native), k, height, width, self.min_z))
            intrinsics.append(k)
        item = {
            "images": torch.stack(images),  # (N, 3, H, W)
            "depth": torch.from_numpy(np.stack(depths)[:, None]),  # (N, 1, H, W)
            "intrinsics": torch.from_numpy(np.stack(intrinsics)).float(),  # (N, 3, 3)
            "cam_to_ego": torch.from_numpy(record["cam_to_ego"]).float(),  # (N, 4, 4)
        }
        if self.masks is not None:
            item["omega"] = self.masks  # (N, 1, H, W) bool, True where a pixel counts
        return item

