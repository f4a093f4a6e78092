"""A tiny DDAD dataroot in dgp's JSON schema, for the tests of ddad.py (written in about a second).

Two scenes (000000 in the train split, 000150 in val), a few samples each, the camera layout of
DDAD (the yaws, mounts and focal lengths of its calibrations), a car that drives along a curve
in absolute map coordinates, and one LIDAR cloud per sample (the 360-degree scan of a walled
yard: ground, walls and a parked box) that every camera, and both cameras of each adjacent
pair, sees. JSON as dgp writes it: snake_case keys, keys sorted, 64-bit integers and map keys
as strings, enum names, calibration and scene files named by the SHA-1 of their text. The
camera datums' poses are the LIDAR pose composed with the extrinsic, moved by the ego motion of
CAMERA_LEAD seconds (the cameras fire before the LiDAR), so extrinsics alone misplace points.
The scenes differ where dgp allows: .png or .jpg images, 16- or 17-digit file stems, a plain
(N, 4) or a structured point array, upper- or lower-case sensor names, shuffled datum lists.
"""
import hashlib
import json
import os

import numpy as np
from PIL import Image
from pyquaternion import Quaternion

FULL_SIZE = (1216, 1936)  # (H, W) of DDAD's images
SMALL_SIZE = (152, 242)  # 1/8 of it, for fast tests
# name: (yaw of the optical axis in degrees, + left; mount x, y, z in meters; fx at full size).
CAMERA_RIG = {
    "CAMERA_01": (3.0, (1.57, 0.27, 1.46), 2175.0),
    "CAMERA_05": (53.0, (1.58, 0.42, 1.47), 1060.0),
    "CAMERA_06": (-52.0, (1.59, -0.43, 1.45), 1058.0),
    "CAMERA_07": (124.0, (1.10, 0.43, 1.56), 1059.0),
    "CAMERA_08": (-124.0, (1.10, -0.46, 1.55), 1057.0),
    "CAMERA_09": (180.0, (0.15, 0.13, 1.53), 1063.0),
}
PRINCIPAL_POINT = (950.0, 605.0)  # (cx, cy) at full size, within DDAD's 928-966, 589-622
RED_LEVELS = {"CAMERA_01": 20, "CAMERA_05": 60, "CAMERA_06": 100, "CAMERA_07": 140, "CAMERA_08": 180,
              "CAMERA_09": 220}  # each camera's image is this red, to tell the views apart
# (folder, split key in ddad.json, samples, image extension, digits of the file stems)
SCENES = (("000000", "0", 3, ".png", 16), ("000150", "1", 2, ".jpg", 17))
SPEED = 13.0  # m/s: the LIDAR moves 1.3 m between samples, as in DDAD
YAW_RATE = 0.2  # rad/s: the car turns
CAMERA_LEAD = 0.009  # s: the cameras fire this long before the LIDAR
MAP_ORIGIN = (5123.4, -2261.4, -12.7)  # meters: absolute map coordinates, as DDAD's world frame
LIDAR_ORIGIN = (1.0, 0.0, 1.9)  # meters, vehicle frame: where the scan's rays start
SCAN_LINES = np.linspace(-20.0, 3.0, 24)  # elevation of each scan line, degrees
SCAN_COLUMNS = 1960  # azimuth steps per line: 24 x 1960 = 47,040 points, DDAD's ~47k
YARD = ((-45.0, 60.0), (-20.0, 25.0), (0.0, 8.0))  # vehicle-frame box whose walls and floor are hit
PARKED = ((6.0, 10.0), (-4.0, -2.2), (0.0, 1.5))  # a box near the car
# Points placed exactly: (scene, sample, camera, u, v, z) at the SMALL_SIZE native resolution,
# all in scene 000000, in front of the yard's walls, appended last to that sample's cloud.
KNOWN_POINTS = (
    ("000000", 1, "CAMERA_06", 40.3, 70.6, 2.0),
    ("000000", 1, "CAMERA_07", 200.7, 72.2, 2.5),
    ("000000", 1, "CAMERA_01", 121.5, 74.5, 6.0),
    ("000000", 2, "CAMERA_09", -0.4, 60.8, 4.0),  # u in (-1, 0): column 0, where dgp's int() puts it
    ("000000", 2, "CAMERA_05", 230.9, 80.1, 3.5),
)
CAMERA_TO_FORWARD = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])  # camera axes -> vehicle


def sha1(text):
    return hashlib.sha1(text.encode()).hexdigest()


def dump(obj):
    """JSON text as dgp writes it: keys sorted, indent 2."""
    return json.dumps(obj, indent=2, sort_keys=True)


def pose_json(matrix, flip=False):
    """(4, 4) -> dgp Pose JSON; flip writes -q (both signs occur in DDAD)."""
    q = Quaternion(matrix=matrix[:3, :3], atol=1e-9, rtol=1e-9)
    q = -q if flip else q
    return {"rotation": {"qw": q.w, "qx": q.x, "qy": q.y, "qz": q.z},
            "translation": dict(zip("xyz", (float(c) for c in matrix[:3, 3])))}


def extrinsic(name):
    """(4, 4) camera -> vehicle of a camera of CAMERA_RIG."""
    yaw, mount, _ = CAMERA_RIG[name]
    c, s = np.cos(np.deg2rad(yaw)), np.sin(np.deg2rad(yaw))
    pose = np.eye(4)
    pose[:3, :3] = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]) @ CAMERA_TO_FORWARD
    pose[:3, 3] = mount
    return pose


def intrinsics(name, native):
    """(3, 3) pixel intrinsics of a camera at native (H, W)."""
    scale = native[1] / FULL_SIZE[1]
    fx = CAMERA_RIG[name][2] * scale
    return np.array([[fx, 0.0, PRINCIPAL_POINT[0] * scale], [0.0, fx, PRINCIPAL_POINT[1] * scale], [0.0, 0.0, 1.0]])


def ego_pose(t):
    """(4, 4) vehicle -> world at time t (s): a curve in absolute map coordinates."""
    heading = 0.3 + YAW_RATE * t
    distance = SPEED * t  # arc length; the curve's chord is close enough for a fixture
    pose = np.eye(4)
    c, s = np.cos(heading), np.sin(heading)
    pose[:3, :3] = [[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]
    pose[:3, 3] = np.add(MAP_ORIGIN, [distance * np.cos(heading), distance * np.sin(heading), 0.0])
    return pose


def _box_hits(origin, dirs, box, inside):
    """Ray parameter t of each ray's exit from (inside) or entry into (outside) an axis-aligned box."""
    lo, hi = np.array([b[0] for b in box]), np.array([b[1] for b in box])
    with np.errstate(divide="ignore", invalid="ignore"):
        t1, t2 = (lo - origin) / dirs, (hi - origin) / dirs  # (P, 3)
    near, far = np.nanmax(np.minimum(t1, t2), axis=1), np.nanmin(np.maximum(t1, t2), axis=1)
    if inside:
        return far
    return np.where((near <= far) & (near > 0), near, np.inf)


def scan(rng):
    """(47,040, 4) X, Y, Z, INTENSITY in the vehicle frame: four scanners of 90 degrees each,
    line by line, in firing order."""
    points = []
    for sensor in range(4):
        azimuth = np.deg2rad(sensor * 90.0 + np.arange(SCAN_COLUMNS // 4) * 360.0 / SCAN_COLUMNS)
        for elevation in np.deg2rad(SCAN_LINES):
            el = elevation + rng.normal(0.0, 1e-3, len(azimuth))
            dirs = np.stack([np.cos(el) * np.cos(azimuth), np.cos(el) * np.sin(azimuth), np.sin(el)], axis=1)
            t = np.minimum(_box_hits(np.array(LIDAR_ORIGIN), dirs, YARD, True),
                           _box_hits(np.array(LIDAR_ORIGIN), dirs, PARKED, False))
            xyz = np.array(LIDAR_ORIGIN) + t[:, None] * dirs
            points.append(np.concatenate([xyz, rng.uniform(0, 1, (len(xyz), 1))], axis=1))
    return np.concatenate(points)


def known_lidar_points(folder, sample, native, world_from_lidar, world_from_cam):
    """The KNOWN_POINTS of one sample, in its LIDAR frame: (P, 4) with intensity 1."""
    rows = []
    for scene, index, name, u, v, z in KNOWN_POINTS:
        if (scene, index) == (folder, sample):
            cam = z * np.linalg.inv(intrinsics(name, native)) @ [u, v, 1.0]  # camera frame
            lidar = np.linalg.inv(world_from_lidar) @ world_from_cam[name] @ np.append(cam, 1.0)
            rows.append(np.append(lidar[:3], 1.0))
    return np.array(rows).reshape(-1, 4)


def build_dataroot(root, native=SMALL_SIZE, scenes=SCENES):
    """Write the dataroot under `root`; images are native (H, W). Returns `root`."""
    rng = np.random.default_rng(0)
    splits = {}
    for number, (folder, split, num_samples, ext, digits) in enumerate(scenes):
        scene_dir = os.path.join(root, folder)
        upper = number == 0  # scene 000150 writes sensor names in lower case
        names = ["LIDAR"] + sorted(CAMERA_RIG)
        names = names if upper else [n.lower() for n in names]
        calibration = {"names": names,
                       "intrinsics": [dict(cx=0.0, cy=0.0, fx=0.0, fy=0.0, skew=0.0)] + [
                           dict(cx=k[0, 2], cy=k[1, 2], fx=k[0, 0], fy=k[1, 1], skew=0.0)
                           for k in (intrinsics(n, native) for n in sorted(CAMERA_RIG))],
                       "extrinsics": [pose_json(np.eye(4))] + [pose_json(extrinsic(n), flip=i % 2 == 1)
                                                               for i, n in enumerate(sorted(CAMERA_RIG))]}
        text = dump(calibration)
        calib_key = sha1(text)
        os.makedirs(os.path.join(scene_dir, "calibration"))
        with open(os.path.join(scene_dir, "calibration", calib_key + ".json"), "w") as f:
            f.write(text)
        data, samples = [], []
        for i in range(num_samples):
            t_lidar = 10.0 * number + 0.1 * i
            stamp = 10**(digits - 1) + int(t_lidar * 1e6) + 1_000_000 * number
            world_from_lidar = ego_pose(t_lidar)
            world_from_cam = {n: ego_pose(t_lidar - CAMERA_LEAD) @ extrinsic(n) for n in CAMERA_RIG}
            keys = []
            for name in ["LIDAR"] + sorted(CAMERA_RIG):
                key = sha1(f"{folder}/{name}/{i}")
                keys.append(key)
                sensor = name if upper else name.lower()
                stem = str(stamp - (int(CAMERA_LEAD * 1e6) if name != "LIDAR" else 0))
                if name == "LIDAR":
                    cloud = np.concatenate([scan(rng), known_lidar_points(folder, i, native, world_from_lidar,
                                                                          world_from_cam)])
                    filename = f"point_cloud/{sensor}/{stem}.npz"
                    write_cloud(os.path.join(scene_dir, filename), cloud, structured=not upper)
                    datum = {"point_cloud": {"annotations": {}, "filename": filename, "metadata": {},
                                             "point_fields": [], "point_format": ["X", "Y", "Z", "INTENSITY"],
                                             "pose": pose_json(world_from_lidar, flip=i == 1)}}
                else:
                    filename = f"rgb/{sensor}/{stem}{ext}"
                    write_image(os.path.join(scene_dir, filename), native, RED_LEVELS[name])
                    datum = {"image": {"annotations": {}, "channels": 3, "filename": filename, "height": native[0],
                                       "metadata": {}, "pose": pose_json(world_from_cam[name], flip=i == 2),
                                       "width": native[1]}}
                data.append({"datum": datum, "key": key, "next_key": "", "prev_key": "",
                             "id": {"index": str(i), "log": f"log_{folder}", "name": sensor,
                                    "timestamp": f"2019-06-27T12:00:{i:02d}.{stamp % 1000000:06d}Z"}})
            samples.append({"calibration_key": calib_key, "datum_keys": keys[::-1] if i % 2 else keys,
                            "id": {"index": str(i), "log": f"log_{folder}", "name": "",
                                   "timestamp": f"2019-06-27T12:00:{i:02d}.000000Z"}, "metadata": {}})
        order = np.random.default_rng(number).permutation(len(data))  # datums are found by key only
        scene = {"data": [data[j] for j in order], "description": "", "log": f"log_{folder}", "metadata": {},
                 "name": folder, "ontologies": {}, "samples": samples}
        text = dump(scene)
        filename = f"{folder}/scene_{sha1(text)}.json"
        with open(os.path.join(root, filename), "w") as f:
            f.write(text)
        splits.setdefault(split, {"filenames": []})["filenames"].append(filename)
    index = {"metadata": {"name": "DDAD-fixture", "version": "1"}, "scene_splits": splits}
    with open(os.path.join(root, "ddad.json"), "w") as f:
        f.write(dump(index))
    return root


def write_cloud(path, cloud, structured):
    """A LIDAR .npz: 'data' (N, 4) float64, or a structured array with X, Y, Z, INTENSITY."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if structured:
        array = np.zeros(len(cloud), dtype=[(k, np.float64) for k in ("X", "Y", "Z", "INTENSITY")])
        for j, k in enumerate(("X", "Y", "Z", "INTENSITY")):
            array[k] = cloud[:, j]
        cloud = array
    np.savez_compressed(path, data=cloud)


def write_image(path, native, red):
    """A flat image of the given red level at native (H, W)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image = np.zeros(native + (3,), dtype=np.uint8)
    image[..., 0], image[..., 1] = red, np.linspace(0, 255, native[1], dtype=np.uint8)[None]
    Image.fromarray(image).save(path)


def write_masks(folder, native=SMALL_SIZE, share=0.25):
    """Self-occlusion masks: every camera but CAMERA_01 loses its bottom `share` of rows."""
    os.makedirs(folder, exist_ok=True)
    for name in CAMERA_RIG:
        mask = np.full(native, 255, dtype=np.uint8)
        if name != "CAMERA_01":
            mask[int(native[0] * (1 - share)):] = 0
        Image.fromarray(mask).save(os.path.join(folder, name + ".png"))
    return folder
