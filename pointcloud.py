"""The fused surround point cloud: six depth maps lifted to the ego frame, written as a .ply file.

Defines `surround_points` (every kept pixel of every view -> an ego-frame point with its colour and
camera index, by `rig.back_project`: the lifting of Eq. (20) and of the bird's-eye figure) and
`write_ply` / `PLY_VERTEX` (the file format). `infer.py --sample I --ply` writes one per sample.

The .ply is binary little-endian, written with plain numpy: one structured array and a text
header, 16 bytes per point (a 352 x 640 surround frame, 1.35 M points, is 21.6 MB; as ASCII it
would be ~3x larger and slower to read). MeshLab, CloudCompare and Open3D read the format; the
extra `camera` property (0-5 in the order of rig.CAMERAS) shows as a scalar field where supported
and is ignored elsewhere. A library would add a dependency for the ten lines below.
"""
import numpy as np

from cli import atomic_path
from rig import CAMERAS, back_project

# One vertex: position in meters (ego frame: x forward, y left, z up), colour, camera index.
PLY_VERTEX = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1"),
                       ("camera", "u1")])
PLY_TYPES = {"<f4": "float", "u1": "uchar"}  # numpy type -> .ply property type
PLY_COMMENT = f"fused surround point cloud, ego frame x forward y left z up, meters; camera: {' '.join(CAMERAS)}"


def surround_points(depth, images, intrinsics, cam_to_ego, stride=1):
    """Lift every `stride`-th pixel (along rows and columns) of every view with depth > 0 to the ego frame.

    depth (N, H, W) z-depth in meters; images (N, H, W, 3) uint8; intrinsics (N, 3, 3) at (H, W);
    cam_to_ego (N, 4, 4). Returns a structured array (P,) of PLY_VERTEX: x, y, z (ego, meters), the
    pixel's colour and its camera index n, views in order, pixels row by row.
    """
    points = back_project(depth, intrinsics, cam_to_ego)[:, ::stride, ::stride]  # (N, H', W', 3) ego, meters
    depth = np.asarray(depth)[:, ::stride, ::stride]  # (N, H', W'): pixel (v, u) = (stride i, stride j)
    keep = depth > 0
    cloud = np.empty(int(keep.sum()), dtype=PLY_VERTEX)
    for axis, name in enumerate("xyz"):
        cloud[name] = points[..., axis][keep]
    colors = np.asarray(images)[:, ::stride, ::stride][keep]  # (P, 3)
    cloud["red"], cloud["green"], cloud["blue"] = colors[:, 0], colors[:, 1], colors[:, 2]
    cloud["camera"] = np.broadcast_to(np.arange(len(depth))[:, None, None], depth.shape)[keep]
    return cloud


def write_ply(path, cloud):
    """Write a PLY_VERTEX array (P,) as a binary little-endian .ply file, atomically."""
    header = ["ply", "format binary_little_endian 1.0", f"comment {PLY_COMMENT}", f"element vertex {len(cloud)}"]
    header += [f"property {PLY_TYPES[cloud.dtype[name].str.replace('|', '')]} {name}" for name in cloud.dtype.names]
    header.append("end_header")
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(("\n".join(header) + "\n").encode("ascii"))
        f.write(np.ascontiguousarray(cloud, dtype=PLY_VERTEX).tobytes())
