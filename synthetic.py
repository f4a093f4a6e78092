"""The synthetic surround benchmark: a procedural street seen by a six-camera rig and a LiDAR.

Defines `SyntheticSurround`, the embedded default dataset that runs anywhere (no download).
Each item is a fresh random world, deterministic given (split, index, seed), ray-cast with
numpy into the six cameras of `rig.CAMERAS` (the ring and overlap pairs A of the README's
"Setting"), with dense metric z-depth and sparse LiDAR-like ground truth D* (Eqs. 9, 15-19).

The world: textured ground (asphalt noise, lane markings, sidewalks), 10-40 objects (cars,
buildings, poles, tree trunks, pedestrians) with textures and Lambertian shading, haze and sky.
Objects stand all around the car, so they straddle camera borders and the overlaps of
adjacent cameras see the same surfaces.

The ground truth D*: a 16-beam spinning LiDAR on the roof casts its beams into the same world;
a camera pixel gets ground truth where a return lands in it and the camera sees that return
(the rendered depth agrees with the return's depth within LIDAR_VISIBLE_TOL). Its value is the
rendered z-depth of that pixel, so the sparse and the dense ground truth agree exactly.
"""
import os

import numpy as np
import torch

from cli import DatasetError, atomic_path
from rig import MAX_DEPTH, render_sparse_depth

# --- the rig (ego frame: x forward, y left, z up; origin on the ground below the car center) ---
CAM_YAW_DEG = (0.0, -55.0, -110.0, 180.0, 110.0, 55.0)  # in the order of rig.CAMERAS
CAM_HFOV_DEG = (70.0, 70.0, 70.0, 110.0, 70.0, 70.0)  # CAM_BACK is wide, as in nuScenes
CAM_HEIGHT = 1.5  # meters above the ground
# Mounting points on a 4.5 m x 1.8 m car, meters (front, corners, back).
CAM_XY = ((1.9, 0.0), (1.5, -0.8), (-1.2, -0.85), (-2.1, 0.0), (-1.2, 0.85), (1.5, 0.8))
CAR_LENGTH, CAR_WIDTH = 4.5, 1.8
# --- the LiDAR: a sparse 16-beam spinning scanner. It is sparser than nuScenes' HDL-32E so that
# at the 96 x 160 demo size ~4 % of the pixels get ground truth, as ~1-2 % do in nuScenes at
# 352 x 640 (the HDL-32E layout, 32 beams every 0.35 deg, would cover 19 % of the demo pixels).
LIDAR_POS = (0.0, 0.0, 1.9)  # on the roof, meters
LIDAR_BEAMS = 16
LIDAR_ELEV_DEG = (-30.0, 10.0)  # lowest and highest beam
LIDAR_AZIMUTH_STEP_DEG = 1.0  # degrees per firing
LIDAR_MAX_RANGE = MAX_DEPTH  # meters; no return beyond
LIDAR_VISIBLE_TOL = 0.05  # relative depth agreement for "the camera sees this return"
# --- the world ---
DEFAULT_IMAGE_SIZE = (96, 160)  # (H, W)
SPLIT_IDS = {"train": 0, "val": 1, "test": 2}  # part of the seed: splits never share a world
SPLIT_LENGTHS = {"train": 100_000, "val": 32, "test": 64}
NUM_OBJECTS = (10, 40)  # inclusive range of objects per world
HAZE_DISTANCE = 120.0  # meters; colour tends to the horizon colour as exp(-t / HAZE_DISTANCE)
SKY_TOP, SKY_HORIZON = np.array([0.35, 0.52, 0.85]), np.array([0.78, 0.85, 0.93])
NOISE_SIGMA = 0.01  # sensor noise on the rendered images, in [0, 1] units
# --- finite scenes (train.py --train-scenes N): a scene is one street the car drives along, seen in
# FRAMES_PER_SCENE frames FRAME_SPACING meters apart, as nuScenes keyframes (2 Hz) follow each other.
FRAMES_PER_SCENE = 4
FRAME_SPACING = 4.0  # meters driven between two frames: about 30 km/h at 2 Hz
SCENES_ID = 3  # part of the seed of scene worlds, beside SPLIT_IDS: they never repeat a world of the stream
# The renderer's version: raise it whenever a change here alters what an item holds, so that a
# render cache written by other code is never read (it lives in a folder named after it).
RENDER_VERSION = 1


def camera_rig(image_size=DEFAULT_IMAGE_SIZE):
    """Intrinsics (6, 3, 3) at image_size (H, W) and cam_to_ego (6, 4, 4) of the synthetic rig.

    Camera frame x right, y down, z forward; pixel i covers [i, i + 1), so the principal point
    of a centered camera is (W / 2, H / 2).
    """
    h, w = image_size
    intrinsics, cam_to_ego = np.zeros((6, 3, 3)), np.zeros((6, 4, 4))
    for n, (yaw, hfov, (x, y)) in enumerate(zip(CAM_YAW_DEG, CAM_HFOV_DEG, CAM_XY)):
        f = (w / 2) / np.tan(np.radians(hfov) / 2)  # square pixels: fx = fy
        intrinsics[n] = [[f, 0, w / 2], [0, f, h / 2], [0, 0, 1]]
        a = np.radians(yaw)
        forward, right, down = [np.cos(a), np.sin(a), 0], [np.sin(a), -np.cos(a), 0], [0, 0, -1]
        cam_to_ego[n, :3, :3] = np.stack([right, down, forward], axis=1)  # columns: cam axes in ego
        cam_to_ego[n, :3, 3] = [x, y, CAM_HEIGHT]
        cam_to_ego[n, 3, 3] = 1.0
    return intrinsics, cam_to_ego


def value_noise(x, y, scale, seed):
    """Smooth hash noise in [0, 1] at world coordinates x, y (any shape), cell size `scale` m."""
    x, y = np.asarray(x) / scale, np.asarray(y) / scale
    xi, yi = np.floor(x), np.floor(y)
    fx, fy = x - xi, y - yi
    fx, fy = fx * fx * (3 - 2 * fx), fy * fy * (3 - 2 * fy)  # smoothstep between lattice points

    def lattice(i, j):  # integer hash of a lattice point -> [0, 1)
        h = (i.astype(np.int64) * 374761393 + j.astype(np.int64) * 668265263 + seed * 2246822519) & 0xFFFFFFFF
        h = ((h ^ (h >> 13)) * 1274126177) & 0xFFFFFFFF
        return (h ^ (h >> 16)) / 2.0**32

    top = lattice(xi, yi) * (1 - fx) + lattice(xi + 1, yi) * fx
    bottom = lattice(xi, yi + 1) * (1 - fx) + lattice(xi + 1, yi + 1) * fx
    return top * (1 - fy) + bottom * fy


def make_world(rng, travel=0.0):
    """A random street: the road layout and lists of boxes and vertical cylinders (meters).
    travel: meters the ego car drives forward (+x) in this world; its lane stays clear of cars."""
    world = {"road_y": rng.uniform(1.0, 2.5), "road_half": rng.uniform(5.0, 7.5),
             "seed": int(rng.integers(1 << 30)), "boxes": [], "cylinders": []}
    elev, azim = np.radians(rng.uniform(30, 70)), rng.uniform(0, 2 * np.pi)
    world["sun"] = np.array([np.cos(elev) * np.cos(azim), np.cos(elev) * np.sin(azim), np.sin(elev)])
    yc, hw = world["road_y"], world["road_half"]
    total = int(rng.integers(NUM_OBJECTS[0], NUM_OBJECTS[1] + 1))
    counts = rng.multinomial(total - 10, [0.35, 0.3, 0.1, 0.1, 0.15]) + [3, 4, 1, 1, 1]
    n_cars, n_buildings, n_poles, n_trees, n_people = counts

    def add_box(kind, x, y, length, width, height, yaw, color):
        world["boxes"].append(dict(kind=kind, center=np.array([x, y, height / 2]), yaw=yaw,
                                   half=np.array([length / 2, width / 2, height / 2]), color=color))

    lanes = [yc - 1.75, yc + 1.75, yc - hw + 1.2, yc + hw - 1.2]  # two driving lanes, two parked
    placed = []
    while len(placed) < n_cars:
        lane, x = lanes[int(rng.integers(4))], rng.uniform(-45, 45)
        if -(CAR_LENGTH + 1) < x < travel + CAR_LENGTH + 1 and abs(lane) < CAR_WIDTH + 0.5:
            continue  # that is where the ego car is, or drives
        if any(abs(x - px) < 6.0 and lane == pl for px, pl in placed):
            continue  # keep cars in a lane apart
        placed.append((x, lane))
        yaw = (0.0 if rng.random() < 0.5 else np.pi) + rng.normal(0, 0.05)
        add_box("car", x, lane + rng.normal(0, 0.2), rng.uniform(3.9, 5.0), rng.uniform(1.7, 2.0),
                rng.uniform(1.4, 1.7), yaw, rng.uniform(0.1, 0.9, 3))
    for _ in range(n_buildings):
        side = rng.choice([-1, 1])
        depth = rng.uniform(8, 15)
        y = yc + side * (hw + 3.0 + rng.uniform(0, 4) + depth / 2)
        add_box("building", rng.uniform(-60, 60), y, rng.uniform(8, 25), depth, rng.uniform(5, 25),
                rng.normal(0, 0.05), rng.uniform(0.45, 0.85) * np.array([1.0, 0.9, 0.8]))
    for _ in range(n_people):
        side = rng.choice([-1, 1])
        add_box("person", rng.uniform(-30, 30), yc + side * (hw + rng.uniform(0.5, 2.5)), 0.5, 0.6,
                rng.uniform(1.5, 1.9), rng.uniform(0, np.pi), rng.uniform(0.1, 0.9, 3))
    for kind, n, radius, height in (("pole", n_poles, (0.1, 0.2), (4, 8)), ("tree", n_trees, (0.2, 0.45), (3, 7))):
        for _ in range(n):
            side = rng.choice([-1, 1])
            center = np.array([rng.uniform(-50, 50), yc + side * (hw + rng.uniform(0.6, 2.5))])
            world["cylinders"].append(dict(kind=kind, center=center,
                                           radius=rng.uniform(*radius), height=rng.uniform(*height)))
    return world


def ray_box(origins, dirs, box):
    """Slab test of rays against an oriented box -> (t (R,), normal (R, 3) ego, local hit (R, 3))."""
    c, s = np.cos(-box["yaw"]), np.sin(-box["yaw"])
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])  # ego -> box axes
    o, d = (origins - box["center"]) @ rot.T, dirs @ rot.T  # (R, 3) each
    with np.errstate(divide="ignore", invalid="ignore"):
        t1, t2 = (-box["half"] - o) / d, (box["half"] - o) / d  # (R, 3)
    t_near, t_far = np.fmin(t1, t2), np.fmax(t1, t2)
    axis = np.nanargmax(np.where(np.isnan(t_near), -np.inf, t_near), axis=1)
    t_enter, t_exit = np.nanmax(t_near, axis=1), np.nanmin(t_far, axis=1)
    t = np.where((t_enter <= t_exit) & (t_enter > 0), t_enter, np.inf)
    normal_local = np.zeros_like(o)
    normal_local[np.arange(len(o)), axis] = -np.sign(d[np.arange(len(o)), axis])
    return t, normal_local @ rot, o + np.where(np.isfinite(t), t, 0)[:, None] * d + box["half"]


def ray_cylinder(origins, dirs, cyl):
    """Rays against a vertical cylinder standing on the ground -> (t (R,), normal (R, 3))."""
    o = origins[:, :2] - cyl["center"]
    d = dirs[:, :2]
    a, b, c = (d * d).sum(1), 2 * (o * d).sum(1), (o * o).sum(1) - cyl["radius"] ** 2
    disc = b * b - 4 * a * c
    with np.errstate(invalid="ignore", divide="ignore"):
        t = (-b - np.sqrt(disc)) / (2 * a)
    z = origins[:, 2] + t * dirs[:, 2]
    t = np.where((disc > 0) & (t > 0) & (z >= 0) & (z <= cyl["height"]), t, np.inf)
    hit = o + np.where(np.isfinite(t), t, 0)[:, None] * d
    normal = np.concatenate([hit / cyl["radius"], np.zeros((len(o), 1))], axis=1)
    return t, normal


def candidates(origin, unit, center, radius):
    """Indices of rays (unit directions (R, 3) from `origin`) that pass within `radius` of
    `center`: a cheap bounding-sphere cull before the exact intersection."""
    v = center - origin
    along = unit @ v  # (R,)
    near = (v @ v - along**2 <= radius**2) & (along > -radius)
    return np.nonzero(near | (v @ v <= radius**2))[0]


def cast(origin, dirs, world):
    """Nearest hit of rays from one origin (3,) along dirs (R, 3): t (R,), in units of |dirs|
    (z-depth when dirs have z_cam = 1), inf for sky, and the albedo (R, 3) and unit normal (R, 3)."""
    r = len(dirs)
    origins = np.broadcast_to(origin, dirs.shape)
    unit = dirs / np.linalg.norm(dirs, axis=1, keepdims=True)
    with np.errstate(divide="ignore"):
        t = np.where(dirs[:, 2] < 0, -origin[2] / dirs[:, 2], np.inf)  # the ground plane z = 0
    normal = np.tile([0.0, 0.0, 1.0], (r, 1))
    owner = np.full(r, -1)  # -1 ground, 0.. boxes, then cylinders
    local = np.zeros((r, 3))
    for i, box in enumerate(world["boxes"]):
        idx = candidates(origin, unit, box["center"], np.linalg.norm(box["half"]))
        tb, nb, lb = ray_box(origins[idx], dirs[idx], box)
        closer = tb < t[idx]
        idx = idx[closer]
        t[idx], owner[idx], normal[idx], local[idx] = tb[closer], i, nb[closer], lb[closer]
    for j, cyl in enumerate(world["cylinders"]):
        center = np.array([*cyl["center"], cyl["height"] / 2])
        idx = candidates(origin, unit, center, np.hypot(cyl["radius"], cyl["height"] / 2))
        tc, nc = ray_cylinder(origins[idx], dirs[idx], cyl)
        closer = tc < t[idx]
        idx = idx[closer]
        t[idx], owner[idx], normal[idx] = tc[closer], len(world["boxes"]) + j, nc[closer]
    hit = origins + np.where(np.isfinite(t), t, 0)[:, None] * dirs
    return t, albedo(hit, local, owner, world), normal


def albedo(hit, local, owner, world):
    """Surface colour (R, 3) in [0, 1] at ego-frame hit points: the textures of the world."""
    seed, yc, hw = world["seed"], world["road_y"], world["road_half"]
    x, y, z = hit[:, 0], hit[:, 1], hit[:, 2]
    # Ground: asphalt noise, lane markings, sidewalks with tiles, verges beyond.
    grain = 0.6 * value_noise(x, y, 0.15, seed) + 0.4 * value_noise(x, y, 2.0, seed + 1)
    color = (0.22 + 0.12 * grain)[:, None] * np.ones(3)
    off = np.abs(y - yc)
    marking = ((off < 0.08) & (np.mod(x, 9.0) < 3.0)) | (np.abs(off - (hw - 0.3)) < 0.08)
    color[marking] = 0.85
    walk = (off > hw) & (off < hw + 3.0)
    tiles = (np.mod(x, 1.0) < 0.04) | (np.mod(y, 1.0) < 0.04)
    color[walk] = (0.55 - 0.15 * tiles[walk] + 0.05 * grain[walk])[:, None]
    verge = off >= hw + 3.0
    color[verge] = np.array([0.25, 0.38, 0.18]) * (0.7 + 0.6 * grain[verge])[:, None]
    boxes = world["boxes"]
    for i, box in enumerate(boxes):
        m = owner == i
        if not m.any():
            continue
        lx, ly, lz = local[m].T  # meters from the box's corner, along its own axes
        h = 2 * box["half"][2]
        c = np.tile(box["color"], (m.sum(), 1))
        if box["kind"] == "car":
            c[(lz > 0.55 * h) & (lz < 0.9 * h)] = [0.12, 0.15, 0.2]  # windows
            c[lz < 0.25 * h] *= 0.35  # wheels and shadowed sill
        elif box["kind"] == "building":
            s = lx + ly  # position along whichever face was hit
            window = (np.mod(s, 2.5) > 0.7) & (np.mod(s, 2.5) < 1.8) & (np.mod(lz, 3.0) > 1.0) & (lz > 2.0)
            c[window] = [0.18, 0.22, 0.3]
        else:  # a person: lighter head
            c[lz > 0.85 * h] = [0.8, 0.65, 0.55]
        color[m] = c * (0.85 + 0.3 * value_noise(lx + 3 * ly, lz, 0.3, seed + 2 + i))[:, None]
    for j, cyl in enumerate(world["cylinders"]):
        m = owner == len(boxes) + j
        base = np.array([0.5, 0.5, 0.52]) if cyl["kind"] == "pole" else np.array([0.35, 0.24, 0.15])
        color[m] = base * (0.8 + 0.4 * value_noise(x[m] + y[m], z[m], 0.2, seed + 99))[:, None]
    return color


def shade(t, color, normal, dirs, world):
    """Lambertian shading, haze and sky for cast rays -> RGB (R, 3) in [0, 1]."""
    lambert = 0.35 + 0.65 * np.clip(normal @ world["sun"], 0.0, 1.0)  # ambient + diffuse
    rgb = color * lambert[:, None]
    unit = dirs / np.linalg.norm(dirs, axis=1, keepdims=True)
    elevation = np.clip(unit[:, 2], 0.0, 1.0)[:, None]
    sky = SKY_HORIZON + (SKY_TOP - SKY_HORIZON) * np.sqrt(elevation)
    dist = np.where(np.isfinite(t), t * np.linalg.norm(dirs, axis=1), np.inf)
    fog = np.exp(-dist / HAZE_DISTANCE)[:, None]  # 0 for sky
    return np.clip(rgb * fog + SKY_HORIZON * (1 - fog) * (fog > 0) + sky * (fog == 0), 0.0, 1.0)


def lidar_points(world, ego_x=0.0):
    """A LiDAR sweep (LIDAR_BEAMS beams) into the world from the car at x = ego_x -> (P, 3) world-frame
    hit points, meters (the world frame is the ego frame of the car at x = 0)."""
    elev = np.radians(np.linspace(*LIDAR_ELEV_DEG, LIDAR_BEAMS))
    azim = np.radians(np.arange(0.0, 360.0, LIDAR_AZIMUTH_STEP_DEG))
    el, az = np.meshgrid(elev, azim, indexing="ij")  # (beams, firings)
    dirs = np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)], -1).reshape(-1, 3)
    origin = np.array(LIDAR_POS) + [ego_x, 0.0, 0.0]
    t = cast(origin, dirs, world)[0]
    keep = t < LIDAR_MAX_RANGE
    return origin + t[keep, None] * dirs[keep]


def render_sample(world, image_size, rng, ego_x=0.0):
    """Images (6, 3, H, W), dense depth (6, 1, H, W), sparse depth (6, 1, H, W), rig, seen by the car
    at x = ego_x meters along the street (cam_to_ego stays relative to the car)."""
    h, w = image_size
    intrinsics, cam_to_ego = camera_rig(image_size)
    ego = np.array([ego_x, 0.0, 0.0])
    v, u = np.mgrid[0:h, 0:w]
    pix = np.stack([u + 0.5, v + 0.5, np.ones_like(u)], -1).reshape(-1, 3).astype(np.float64)  # pixel centers
    dirs = np.stack([pix @ np.linalg.inv(k).T @ pose[:3, :3].T  # z_cam = 1: t is z-depth
                     for k, pose in zip(intrinsics, cam_to_ego)])  # (6, H*W, 3) in ego
    hits = [cast(pose[:3, 3] + ego, d, world) for pose, d in zip(cam_to_ego, dirs)]
    t, color, normal = (np.concatenate(parts) for parts in zip(*hits))  # (6*H*W, ...)
    dirs = dirs.reshape(-1, 3)
    rgb = shade(t, color, normal, dirs, world) + rng.normal(0, NOISE_SIGMA, color.shape)
    images = np.clip(rgb, 0, 1).reshape(6, h, w, 3).transpose(0, 3, 1, 2)
    dense = np.where(t <= MAX_DEPTH, t, 0.0).reshape(6, 1, h, w)
    # Sparse ground truth: pixels where a LiDAR return lands and the camera sees it.
    points = lidar_points(world, ego_x)
    sparse = np.zeros_like(dense)
    for n, (k, pose) in enumerate(zip(intrinsics, cam_to_ego)):
        p_cam = (points - pose[:3, 3] - ego) @ pose[:3, :3]  # world -> camera frame, (P, 3)
        hits = render_sparse_depth(p_cam, k, h, w)
        seen = (hits > 0) & (np.abs(hits - dense[n, 0]) <= LIDAR_VISIBLE_TOL * dense[n, 0])
        sparse[n, 0][seen] = dense[n, 0][seen]
    return images, dense, sparse, intrinsics, cam_to_ego


class SyntheticSurround(torch.utils.data.Dataset):
    """The synthetic six-camera benchmark; item i of a split is always the same world.

    split: 'train', 'val' or 'test' (disjoint seeds). image_size: (H, W), any size.
    seed: a global seed; length: items per split (default SPLIT_LENGTHS).
    cache_dir: None, or a folder where each rendered item is kept (`render_cache_path`) and read
    back instead of rendering it again: the rows of an ablation share their worlds.
    scenes: None (every item a fresh world: the unlimited stream), or a number of finite scenes
    (training only): item i is frame i % FRAMES_PER_SCENE of scene first_scene + i // FRAMES_PER_SCENE,
    the car FRAME_SPACING m further along the street at each frame. Scene s is the same world
    whatever `scenes` and `first_scene` (the 16 scenes of a seed are the first 16 of its 64).
    labelled: False makes every item an unlabelled image: `depth` is all 0 (no LiDAR).
    Items: images (6, 3, H, W) in [0, 1]; depth, depth_dense (6, 1, H, W) meters, 0 = none;
    intrinsics (6, 3, 3); cam_to_ego (6, 4, 4); all float32 tensors, cameras as rig.CAMERAS.
    `depth_dense` is what the world is: the emulated teacher and the benchmark's dense oracle read
    it, a student never does (an unlabelled item keeps it for them).
    """

    def __init__(self, split="train", image_size=DEFAULT_IMAGE_SIZE, seed=0, length=None, cache_dir=None,
                 scenes=None, first_scene=0, labelled=True):
        if split not in SPLIT_IDS:
            raise ValueError(f"synthetic split must be one of {sorted(SPLIT_IDS)}, got {split!r}")
        if scenes is not None and (split != "train" or scenes < 1 or first_scene < 0):
            raise ValueError(f"finite scenes are a training set: split 'train', scenes >= 1, got {split!r}, {scenes}")
        self.split, self.image_size, self.seed = split, tuple(image_size), seed
        self.scenes, self.first_scene, self.labelled = scenes, first_scene, labelled
        if scenes is not None:
            self.length = scenes * FRAMES_PER_SCENE
        else:
            self.length = SPLIT_LENGTHS[split] if length is None else length
        self.cache_dir = cache_dir

    def __len__(self):
        return self.length

    def render(self, index):
        """Item `index` as the renderer makes it -> images (6, 3, H, W), dense depth (6, 1, H, W) float32 and
        the bool mask (6, 1, H, W) of the pixels with LiDAR ground truth."""
        if self.scenes is None:
            rng = np.random.default_rng([SPLIT_IDS[self.split], self.seed, index])
            world, frame_rng, ego_x = make_world(rng), rng, 0.0
        else:
            scene, frame = self.first_scene + index // FRAMES_PER_SCENE, index % FRAMES_PER_SCENE
            world = make_world(np.random.default_rng([SCENES_ID, self.seed, scene]),
                               travel=(FRAMES_PER_SCENE - 1) * FRAME_SPACING)
            frame_rng, ego_x = np.random.default_rng([SCENES_ID, self.seed, scene, frame]), frame * FRAME_SPACING
        images, dense, sparse, _, _ = render_sample(world, self.image_size, frame_rng, ego_x)
        return images.astype(np.float32), dense.astype(np.float32), sparse > 0

    def cache_name(self, index):
        """(split, file stem) of item `index` in the render cache: scene items are named by scene and frame."""
        if self.scenes is None:
            return self.split, index
        scene, frame = self.first_scene + index // FRAMES_PER_SCENE, index % FRAMES_PER_SCENE
        return "scenes", f"{scene}_{frame}"

    def __getitem__(self, index):
        if not 0 <= index < self.length:
            raise IndexError(f"item {index} of {self.length}")
        path = None
        if self.cache_dir is not None:
            split, stem = self.cache_name(index)
            path = render_cache_path(self.cache_dir, split, self.seed, self.image_size, stem)
        if path is not None and os.path.exists(path):
            images, dense, seen = read_rendered(path)
        else:
            images, dense, seen = self.render(index)
            if path is not None:
                with atomic_path(path) as tmp:  # a concurrent reader sees the whole file or none
                    np.savez(tmp, images=images, dense=dense, seen=np.packbits(seen))
        if not self.labelled:
            seen = np.zeros_like(seen)
        intrinsics, cam_to_ego = camera_rig(self.image_size)
        as_tensor = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))  # noqa: E731
        return {"images": as_tensor(images), "depth": as_tensor(np.where(seen, dense, 0.0)),
                "depth_dense": as_tensor(dense), "intrinsics": as_tensor(intrinsics),
                "cam_to_ego": as_tensor(cam_to_ego)}


def render_cache_path(root, split, seed, image_size, index):
    """Where item `index` of (split, seed) at image_size (H, W) is kept under a render cache `root`:
    one .npz per item, in a folder named after everything the item depends on (RENDER_VERSION too).
    Finite scenes use split 'scenes' and index '<scene>_<frame>'."""
    h, w = image_size
    return os.path.join(root, f"v{RENDER_VERSION}", f"{split}_seed{seed}_{h}x{w}", f"{index}.npz")


def read_rendered(path):
    """A cached item -> images (6, 3, H, W) float32, dense depth (6, 1, H, W) float32 meters and the
    boolean mask (6, 1, H, W) of the pixels with sparse ground truth, which holds the dense depth
    there (render_sample draws it so). Exactly the arrays the renderer made."""
    try:
        with np.load(path, allow_pickle=False) as f:
            images, dense = f["images"], f["dense"]
            seen = np.unpackbits(f["seen"], count=dense.size).reshape(dense.shape).astype(bool)
    except (OSError, ValueError, KeyError) as e:
        raise DatasetError(f"{path}: unreadable render cache item ({e}) ; delete it to render it again") from None
    return images, dense, seen
