"""A tiny nuScenes-format dataroot for the tests, loadable by `NuScenes(version='v1.0-mini')`.

`build_dataroot(root)` writes
- the 13 JSON tables of the devkit into root/v1.0-mini/, one map record and its mask PNG;
- two scenes named after real v1.0-mini scenes, TRAIN_SCENE (in 'mini_train') and VAL_SCENE
  (in 'mini_val'), two keyframe samples each;
- six 1600 x 900 JPEGs per sample (camera n has red level RED_LEVELS[n], so the tests can check
  the camera order) and one LIDAR_TOP .pcd.bin per sample (N x 5 float32), plus one earlier
  non-keyframe sweep before the second sample of TRAIN_SCENE, for lidar_sweeps=2;
- camera sweeps in TRAIN_SCENE (non-keyframe camera sample_data, JPEGs under sweeps/CAM_*/, each
  with its own ego pose), chained keyframe -> sweeps -> next keyframe per channel: CAMERA_SWEEP_US
  after each keyframe, one of them dropped by one camera (DROPPED_SWEEP), one sweep only after the
  last keyframe. Each camera keeps its keyframe's firing offset (up to +-CAMERA_DELAY_US), so the
  cameras of one sweep frame are as far apart as those of their keyframe and the nearest sweep in
  plain time is at times another frame's. Their calibrated_sensor records are their own, with
  SWEEP_FOCAL_SCALE longer focal lengths and other mounting angles than the keyframes';
- nuScenes-like calibration: cameras looking along their yaw at ~1.5 m, the LiDAR rotated by
  ~-90 deg about z (as LIDAR_TOP is), and ego poses that differ by a few cm and tenths of a
  degree between the LiDAR's and each camera's timestamp;
- KNOWN_POINTS: LiDAR points placed where a given camera must see them at a given pixel.
The LiDAR sees a synthetic street (ground plane, a wavy wall around the car, obstacles of random
distance and height) with the beam layout of the nuScenes HDL-32E, so that the cache size
measured on it approximates a real sample's.
"""
import hashlib
import json
import os

import numpy as np
from PIL import Image

from rig import quaternion_matrix

VERSION = "v1.0-mini"
TRAIN_SCENE = "scene-0061"  # in create_splits_scenes()['mini_train']
VAL_SCENE = "scene-0103"  # in create_splits_scenes()['mini_val']
SAMPLES_PER_SCENE = 2
IMAGE_WIDTH, IMAGE_HEIGHT = 1600, 900  # nuScenes camera resolution
JPEG_QUALITY = 20  # cheap to write and read; content does not matter beyond the red level
RED_LEVELS = (20, 60, 100, 140, 180, 220)  # red channel of camera n, in the order of CAMERAS

# Camera rig, rounded from the nuScenes calibration: yaw (deg, about ego z, 0 = forward, positive
# to the left), position in the ego frame (m), focal length and principal point (px).
CAMERA_RIG = {
    "CAM_FRONT": (0.0, (1.70, 0.02, 1.51), 1266.4, 816.3, 491.5),
    "CAM_FRONT_RIGHT": (-55.0, (1.55, -0.49, 1.50), 1260.8, 808.0, 495.3),
    "CAM_BACK_RIGHT": (-110.0, (1.03, -0.48, 1.56), 1259.5, 807.3, 501.2),
    "CAM_BACK": (180.0, (0.03, 0.00, 1.57), 809.2, 829.2, 481.8),
    "CAM_BACK_LEFT": (110.0, (1.04, 0.48, 1.56), 1256.7, 817.8, 451.9),
    "CAM_FRONT_LEFT": (55.0, (1.52, 0.49, 1.51), 1272.6, 826.6, 479.8),
}
# LIDAR_TOP calibration of nuScenes: ~-90 deg about z, on the roof.
LIDAR_ROTATION = (0.7077955119163518, -0.006492242056004365, 0.010646214713995808,
                  -0.7063073142877817)
LIDAR_TRANSLATION = (0.985793, 0.0, 1.84019)
# HDL-32E beam layout: 32 beams from -30.67 to +10.67 deg, 1,085 firings per turn (~34,720 points).
BEAM_ELEVATIONS_DEG = np.linspace(-30.67, 10.67, 32)
FIRINGS_PER_TURN = 1085
MAX_RANGE = 70.0  # m, farther returns are dropped
WALL_HEIGHT = 6.0  # m above the ground; beams above it see the sky (no return)
RANGE_NOISE = 0.02  # m, LiDAR range noise
DROPOUT = 0.05  # fraction of returns lost
CLUTTER_FRACTION = 0.5  # share of azimuth segments with an obstacle
CLUTTER_DISTANCE = (8.0, 30.0)  # m, horizontal distance of an obstacle (beyond KNOWN_POINTS)
CLUTTER_HEIGHT = (0.5, 4.0)  # m, obstacle top above the ground
SAMPLE_PERIOD_US = 500_000  # keyframes at 2 Hz
SWEEP_PERIOD_US = 50_000  # LiDAR at 20 Hz
CAMERA_DELAY_US = 40_000  # cameras fire within +-40 ms of the keyframe, as the LiDAR sweeps
CAMERA_POSE_JITTER_M = 0.05  # ego pose at a camera's time vs the LiDAR's: up to 5 cm ...
CAMERA_POSE_JITTER_DEG = 0.5  # ... and 0.5 deg of yaw
SPEED = 8.0  # m/s of the ego car along its heading
FIRST_TIMESTAMP_US = 1532402927647951  # a nuScenes-like timestamp (us)
SCENE_GAP_US = 10**9  # the second scene is ~17 minutes later
SCENE_ORIGIN = (400.0, 1100.0, 0.0)  # m, global position near which the scenes start
LOCATION = "singapore-onenorth"
KNOWN_INTENSITY = 50.0  # intensity of the KNOWN_POINTS (unused by the loader)
SWEEP_BEFORE = (TRAIN_SCENE, 1)  # (scene, sample index) with an earlier non-keyframe sweep
# Camera sweeps of TRAIN_SCENE. nuScenes' cameras run at 12 Hz and fire as the 20 Hz LiDAR crosses them:
# 12 frames in 20 turns, so a camera's frames are 50 or 100 ms apart. After keyframe i each camera fires
# again CAMERA_SWEEP_US[i] after its own keyframe time, within +-SWEEP_JITTER_US; the last keyframe of the
# scene has one sweep after it.
CAMERA_SWEEP_US = ((100_000, 200_000, 250_000), (100_000,))
SWEEP_JITTER_US = 2_000
DROPPED_SWEEP = (0, 1, "CAM_BACK")  # (keyframe, sweep, camera): a frame dropped, as nuScenes' cameras do at times
SWEEP_FOCAL_SCALE = 1.01  # the sweeps' calibration: 1 % longer focal lengths, told apart from the keyframes'
SWEEP_SEED = 7  # the sweeps draw from their own generator: the keyframe data are what they were without them
CAMERAS_IN_ORDER = tuple(CAMERA_RIG)  # camera n of the fixture (RED_LEVELS[n])
CHANNELS = (*CAMERA_RIG, "LIDAR_TOP")
TABLES = ("attribute", "calibrated_sensor", "category", "ego_pose", "instance", "log", "map",
          "sample", "sample_annotation", "sample_data", "scene", "sensor", "visibility")

# (scene, sample index, camera, u, v, z): a LiDAR point that camera must see at continuous pixel
# (u, v) with depth z (m). Pixel centers, nearer than anything else the camera sees there.
KNOWN_POINTS = (
    (TRAIN_SCENE, 0, "CAM_FRONT", 1000.5, 600.5, 5.0),
    (TRAIN_SCENE, 0, "CAM_BACK_LEFT", 300.5, 500.5, 4.0),
)


def token(*parts):
    """A 32-hex-digit token like nuScenes', stable across runs."""
    return hashlib.md5("/".join(map(str, parts)).encode()).hexdigest()


def axis_quaternion(axis, degrees):
    """(w, x, y, z) of the rotation by `degrees` about the unit vector `axis`."""
    half = np.radians(degrees) / 2
    return np.concatenate([[np.cos(half)], np.sin(half) * np.asarray(axis, dtype=np.float64)])


def quaternion_product(*quaternions):
    """The Hamilton product q1 q2 ... (w, x, y, z): the rotations applied right to left."""
    out = np.array([1.0, 0.0, 0.0, 0.0])
    for w2, x2, y2, z2 in quaternions:
        w1, x1, y1, z1 = out
        out = np.array([w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2, w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
                        w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2, w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2])
    return out


# Camera -> ego at yaw 0: camera x right = -y_ego, y down = -z_ego, z forward = x_ego.
CAMERA_BASE = (0.5, -0.5, 0.5, -0.5)


def camera_rotation(yaw_deg, pitch_deg, roll_deg):
    """Camera -> ego quaternion (w, x, y, z): camera z (forward) along the yaw, x right, y down, tilted
    slightly (pitch about the camera's x, roll about its z, yaw about the ego's z)."""
    return quaternion_product(axis_quaternion((0, 0, 1), yaw_deg), CAMERA_BASE, axis_quaternion((1, 0, 0), pitch_deg),
                              axis_quaternion((0, 0, 1), roll_deg))


def rigid(record):
    """(4, 4) transform of a record with 'rotation' (w, x, y, z) and 'translation' (m)."""
    m = np.eye(4)
    m[:3, :3] = quaternion_matrix(record["rotation"])
    m[:3, 3] = record["translation"]
    return m


def lidar_scan(rng, density=1):
    """(P, 5) float32 LiDAR points (x, y, z, intensity, ring) in the LiDAR frame, firing order.

    density: the HDL-32E layout with `density` times the beams and the firings per turn
    (density**2 times the points): a dense LiDAR that puts many points in one pixel at 352 x 640.
    """
    beams = np.linspace(BEAM_ELEVATIONS_DEG[0], BEAM_ELEVATIONS_DEG[-1], len(BEAM_ELEVATIONS_DEG) * density)
    firings = FIRINGS_PER_TURN * density
    elevation = np.deg2rad(beams)[None, :]  # (1, B)
    azimuth = (np.arange(firings)[:, None] + rng.uniform()) * 2 * np.pi / firings
    height = LIDAR_TRANSLATION[2]  # the ground is this far below the LiDAR
    wall = 22.0 + 6.0 * np.sin(3 * azimuth) + 3.0 * np.cos(7 * azimuth)  # (F, 1) radius, 13-31 m
    ground = height / np.tan(-np.minimum(elevation, -1e-6))  # (1, 32) where a beam meets it
    horizontal = np.where(elevation < 0, np.minimum(ground, wall), wall)  # (F, 32)
    # Clutter (cars, poles, bushes): azimuth segments with an obstacle of random distance and
    # height, so depth jumps along a beam as in a street, not only on a smooth wall.
    edges = np.cumsum(rng.integers(3, 40, size=firings) * density)
    segment = np.searchsorted(edges, np.arange(firings), side="right")  # (F,)
    present = (rng.uniform(size=firings) < CLUTTER_FRACTION)[segment][:, None]  # (F, 1)
    distance = rng.uniform(*CLUTTER_DISTANCE, size=firings)[segment][:, None]
    top = rng.uniform(*CLUTTER_HEIGHT, size=firings)[segment][:, None]
    below_top = height + distance * np.tan(elevation) < top  # (F, 32) the beam meets the obstacle
    blocked = present & (distance < horizontal) & below_top
    horizontal = np.where(blocked, distance + rng.uniform(0, 0.3, horizontal.shape), horizontal)
    hit_height = height + horizontal * np.tan(elevation)  # above the ground
    distance = horizontal / np.cos(elevation) + rng.normal(0, RANGE_NOISE, horizontal.shape)
    kept = rng.uniform(size=horizontal.shape) > DROPOUT
    valid = (distance < MAX_RANGE) & (hit_height < WALL_HEIGHT) & kept  # (F, 32)
    x = distance * np.cos(elevation) * np.cos(azimuth)
    y = distance * np.cos(elevation) * np.sin(azimuth)
    z = distance * np.sin(elevation)
    ring = np.broadcast_to(np.arange(len(beams))[None], x.shape)
    intensity = rng.uniform(0, 100, x.shape)
    points = np.stack([x, y, z, intensity, ring], axis=-1)[valid]  # (P, 5)
    return points.astype(np.float32)


def camera_image(n, rng):
    """1600 x 900 RGB image of camera n: red RED_LEVELS[n], blocky green and blue."""
    small = rng.integers(0, 256, size=(9, 16, 3), dtype=np.uint8)
    small[..., 0] = RED_LEVELS[n]
    return Image.fromarray(small).resize((IMAGE_WIDTH, IMAGE_HEIGHT), Image.Resampling.NEAREST)


def write_file(root, relative, write):
    """Call write(path) for root/relative, creating its folder; returns relative."""
    path = os.path.join(root, relative)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write(path)
    return relative


def add_static_tables(tables, root):
    """Sensors, one category, attribute, the visibility levels, the map record and its mask."""
    for channel in CHANNELS:
        modality = "lidar" if channel == "LIDAR_TOP" else "camera"
        tables["sensor"].append({"token": token("sensor", channel), "channel": channel,
                                 "modality": modality})
    tables["category"].append({"token": token("category", "car"), "name": "vehicle.car",
                               "description": "Passenger car."})
    tables["attribute"].append({"token": token("attribute", "moving"), "name": "vehicle.moving",
                                "description": "Vehicle is moving."})
    for i, level in enumerate(("0-40", "40-60", "60-80", "80-100")):
        tables["visibility"].append({"token": str(i + 1), "level": f"v{level}",
                                     "description": f"visibility of whole object is {level}%"})
    map_token = token("map", LOCATION)
    mask = Image.fromarray(np.zeros((20, 20), dtype=np.uint8))
    filename = write_file(root, f"maps/{map_token}.png", mask.save)
    tables["map"].append({"token": map_token, "category": "semantic_prior", "log_tokens": [],
                          "filename": filename})


def add_calibration(tables, scene_name, rng, channels=CHANNELS, focal_scale=1.0):
    """One calibrated_sensor record per channel for the scene; returns channel -> record.
    focal_scale multiplies the cameras' focal lengths."""
    calib = {}
    for channel in channels:
        if channel == "LIDAR_TOP":
            rotation, translation, intrinsic = LIDAR_ROTATION, LIDAR_TRANSLATION, []
        else:
            yaw, translation, focal, cx, cy = CAMERA_RIG[channel]
            pitch, roll = rng.uniform(-1.0, 1.0, size=2)  # mounting tolerance, deg
            rotation = camera_rotation(yaw, pitch, roll)
            focal = focal * focal_scale
            intrinsic = [[focal, 0.0, cx], [0.0, focal, cy], [0.0, 0.0, 1.0]]
        calib[channel] = {"token": token("calibrated_sensor", scene_name, channel),
                          "sensor_token": token("sensor", channel),
                          "translation": list(translation),
                          "rotation": [float(q) for q in rotation],
                          "camera_intrinsic": intrinsic}
        tables["calibrated_sensor"].append(calib[channel])
    return calib


def add_ego_pose(tables, scene_name, name, t_us, drive, rng, jitter_m=0.0, jitter_deg=0.0):
    """Ego pose at t_us on the straight drive (origin, heading, start); returns the record.

    jitter perturbs it a little: the cameras fire at other times than the LiDAR, so their ego
    poses differ from the LiDAR's by a few cm and tenths of a degree.
    """
    origin, heading, start_us = drive
    along = SPEED * (t_us - start_us) * 1e-6 * np.array([np.cos(heading), np.sin(heading), 0.0])
    position = origin + along + rng.uniform(-1, 1, 3) * jitter_m * np.array([1.0, 1.0, 0.2])
    yaw_jitter = axis_quaternion((0, 0, 1), rng.uniform(-1, 1) * jitter_deg)
    pitch_jitter = axis_quaternion((0, 1, 0), rng.uniform(-1, 1) * jitter_deg / 3)
    rotation = quaternion_product(axis_quaternion((0, 0, 1), np.degrees(heading)), yaw_jitter, pitch_jitter)
    record = {"token": token("ego_pose", scene_name, name, t_us), "timestamp": int(t_us),
              "rotation": rotation.tolist(), "translation": position.tolist()}
    tables["ego_pose"].append(record)
    return record


def sample_data(scene_name, name, sample_token, t_us, pose, calib, filename, key_frame=True):
    """A sample_data record (prev and next are linked later, per channel)."""
    camera = filename.endswith(".jpg")
    return {"token": token("sample_data", scene_name, name, t_us), "sample_token": sample_token,
            "ego_pose_token": pose["token"], "calibrated_sensor_token": calib["token"],
            "timestamp": int(t_us), "fileformat": "jpg" if camera else "pcd",
            "is_key_frame": key_frame, "height": IMAGE_HEIGHT if camera else 0,
            "width": IMAGE_WIDTH if camera else 0, "filename": filename}


def known_point_in_lidar(u, v, z, cam_calib, cam_pose, lidar_calib, lidar_pose):
    """(3,) LiDAR-frame position of the point camera pixel (u, v) sees at depth z.

    camera -> ego (camera time) -> global -> ego (LiDAR time) -> LiDAR: the inverse of the
    chain the loader must follow, written independently of it.
    """
    k = np.array(cam_calib["camera_intrinsic"])
    x_cam = np.append(z * np.linalg.solve(k, [u, v, 1.0]), 1.0)  # (4,) homogeneous
    lidar_from_cam = (np.linalg.inv(rigid(lidar_calib)) @ np.linalg.inv(rigid(lidar_pose))
                      @ rigid(cam_pose) @ rigid(cam_calib))
    return (lidar_from_cam @ x_cam)[:3]


def add_camera_sweeps(tables, root, scene, i, n, key_t, sample_token, calib, rng, image_maker, quality):
    """The sweeps of camera n after its keyframe of sample i, taken at key_t (us): their ego poses and
    images; returns their sample_data records, in time. scene: (name, logfile, drive)."""
    scene_name, logfile, drive = scene
    channel, records = CAMERAS_IN_ORDER[n], []
    for j, after in enumerate(CAMERA_SWEEP_US[i]):
        if (i, j, channel) == DROPPED_SWEEP:
            continue
        t_us = key_t + after + int(rng.integers(-SWEEP_JITTER_US, SWEEP_JITTER_US + 1))
        pose = add_ego_pose(tables, scene_name, channel, t_us, drive, rng,
                            jitter_m=CAMERA_POSE_JITTER_M, jitter_deg=CAMERA_POSE_JITTER_DEG)
        image = (image_maker or camera_image)(n, rng)
        filename = write_file(root, f"sweeps/{channel}/{logfile}__{channel}__{t_us}.jpg",
                              lambda path: image.save(path, quality=quality))
        records.append(sample_data(scene_name, channel, sample_token, t_us, pose, calib, filename, False))
    return records


def add_scene(tables, root, s, scene_name, rng, density=1, image_maker=None, quality=JPEG_QUALITY, sweep_rng=None):
    """Scene s: its log, calibration, samples, ego poses, images and sweeps (see `build_dataroot`);
    camera sweeps too, drawn from sweep_rng, unless it is None."""
    logfile = f"n015-2018-07-2{s}-11-22-45+0800"
    log_token = token("log", scene_name)
    tables["log"].append({"token": log_token, "logfile": logfile, "vehicle": "n015",
                          "date_captured": f"2018-07-2{s}", "location": LOCATION})
    tables["map"][0]["log_tokens"].append(log_token)
    calib = add_calibration(tables, scene_name, rng)
    start_us = FIRST_TIMESTAMP_US + s * SCENE_GAP_US
    drive = (np.array(SCENE_ORIGIN) + np.append(rng.uniform(-50, 50, 2), 0.0),
             rng.uniform(-np.pi, np.pi), start_us)  # origin (m), heading (rad), start time
    samples = [token("sample", scene_name, i) for i in range(SAMPLES_PER_SCENE)]
    chains = {channel: [] for channel in CHANNELS}  # sample_data records per channel, in time
    if sweep_rng is not None:
        sweep_calib = add_calibration(tables, scene_name + "/sweeps", sweep_rng, CAMERA_RIG, SWEEP_FOCAL_SCALE)
    for i, sample_token in enumerate(samples):
        t_us = start_us + i * SAMPLE_PERIOD_US
        tables["sample"].append({
            "token": sample_token, "timestamp": t_us, "scene_token": token("scene", scene_name),
            "prev": samples[i - 1] if i > 0 else "",
            "next": samples[i + 1] if i + 1 < SAMPLES_PER_SCENE else ""})
        if (scene_name, i) == SWEEP_BEFORE:  # an earlier non-keyframe sweep, for lidar_sweeps=2
            sweep_t = t_us - SWEEP_PERIOD_US
            pose = add_ego_pose(tables, scene_name, "LIDAR_TOP", sweep_t, drive, rng)
            filename = f"sweeps/LIDAR_TOP/{logfile}__LIDAR_TOP__{sweep_t}.pcd.bin"
            write_file(root, filename, lidar_scan(rng, density).tofile)
            chains["LIDAR_TOP"].append(sample_data(scene_name, "LIDAR_TOP", sample_token, sweep_t,
                                                   pose, calib["LIDAR_TOP"], filename, False))
        lidar_pose = add_ego_pose(tables, scene_name, "LIDAR_TOP", t_us, drive, rng)
        points = lidar_scan(rng, density)
        for n, channel in enumerate(CAMERA_RIG):
            cam_t = t_us + int(rng.integers(-CAMERA_DELAY_US, CAMERA_DELAY_US))
            pose = add_ego_pose(tables, scene_name, channel, cam_t, drive, rng,
                                jitter_m=CAMERA_POSE_JITTER_M, jitter_deg=CAMERA_POSE_JITTER_DEG)
            image = (image_maker or camera_image)(n, rng)
            filename = write_file(root, f"samples/{channel}/{logfile}__{channel}__{cam_t}.jpg",
                                  lambda path: image.save(path, quality=quality))
            chains[channel].append(sample_data(scene_name, channel, sample_token, cam_t, pose,
                                               calib[channel], filename))
            if sweep_rng is not None:  # a sweep's sample is the keyframe after it (the last one at the end)
                chains[channel] += add_camera_sweeps(tables, root, (scene_name, logfile, drive), i, n, cam_t,
                                                     samples[min(i + 1, SAMPLES_PER_SCENE - 1)],
                                                     sweep_calib[channel], sweep_rng, image_maker, quality)
            for scene, index, known_channel, u, v, z in KNOWN_POINTS:
                if (scene, index, known_channel) == (scene_name, i, channel):
                    xyz = known_point_in_lidar(u, v, z, calib[channel], pose,
                                               calib["LIDAR_TOP"], lidar_pose)
                    extra = np.array([[*xyz, KNOWN_INTENSITY, 0.0]], dtype=np.float32)
                    points = np.vstack([points, extra])  # (P + 1, 5)
        filename = write_file(root, f"samples/LIDAR_TOP/{logfile}__LIDAR_TOP__{t_us}.pcd.bin",
                              points.tofile)
        chains["LIDAR_TOP"].append(sample_data(scene_name, "LIDAR_TOP", sample_token, t_us,
                                               lidar_pose, calib["LIDAR_TOP"], filename))
    for chain in chains.values():
        for j, record in enumerate(chain):  # link each channel's records in time order
            record["prev"] = chain[j - 1]["token"] if j > 0 else ""
            record["next"] = chain[j + 1]["token"] if j + 1 < len(chain) else ""
            tables["sample_data"].append(record)
    tables["scene"].append({
        "token": token("scene", scene_name), "log_token": log_token,
        "nbr_samples": SAMPLES_PER_SCENE, "first_sample_token": samples[0],
        "last_sample_token": samples[-1], "name": scene_name,
        "description": "Tiny test scene, driving straight."})
    # One annotated car, so that the annotation tables are not empty.
    annotation, instance = token("annotation", scene_name), token("instance", scene_name)
    tables["instance"].append({
        "token": instance, "category_token": token("category", "car"), "nbr_annotations": 1,
        "first_annotation_token": annotation, "last_annotation_token": annotation})
    tables["sample_annotation"].append({
        "token": annotation, "sample_token": samples[0], "instance_token": instance,
        "visibility_token": "4", "attribute_tokens": [token("attribute", "moving")],
        "translation": (drive[0] + (10.0, 0.0, 1.0)).tolist(), "size": [1.9, 4.6, 1.7],
        "rotation": [1.0, 0.0, 0.0, 0.0], "prev": "", "next": "",
        "num_lidar_pts": 10, "num_radar_pts": 0})


def build_dataroot(root, seed=0, density=1, image_maker=None, quality=JPEG_QUALITY):
    """Write the tiny dataroot into `root`; returns the tables, name -> list of records.

    density: LiDAR density (`lidar_scan`); image_maker(n, rng) -> the PIL image of camera n
    (default `camera_image`); quality: JPEG quality of the camera images.
    """
    rng, sweep_rng = np.random.default_rng(seed), np.random.default_rng([seed, SWEEP_SEED])
    tables = {name: [] for name in TABLES}
    add_static_tables(tables, root)
    for s, scene_name in enumerate((TRAIN_SCENE, VAL_SCENE)):
        add_scene(tables, root, s, scene_name, rng, density, image_maker, quality,
                  sweep_rng if scene_name == TRAIN_SCENE else None)
    os.makedirs(os.path.join(root, VERSION), exist_ok=True)
    for name, records in tables.items():
        with open(os.path.join(root, VERSION, name + ".json"), "w") as f:
            json.dump(records, f)
    return tables
