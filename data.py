"""Surround-camera data: the rig conventions shared by every dataset, and the dataset factory.

Defines
- `CAMERAS` and `ADJACENT_PAIRS`: the ring order and the overlap pairs A of the README's
  method section ("Setting"), used by the view-relational KD, Eqs. (12)-(14), and by the
  cross-view consistency metric, Eq. (20).
- `MIN_DEPTH`, `MAX_DEPTH`: the depth range d_min, d_max of Eqs. (3) and (18).
- `render_sparse_depth`: camera-frame points -> sparse depth map, nearest point wins
  (how LiDAR ground truth D* is made, for the synthetic LiDAR and for nuScenes alike).
- `build_dataset`: name + split -> a torch Dataset of surround samples.

Every dataset returns one surround sample per item, a dict of float32 tensors:
    images      (N, 3, H, W) in [0, 1], N = 6 cameras in the order of `CAMERAS`
    depth       (N, 1, H, W) sparse metric z-depth D* in meters, 0 where there is no point
    intrinsics  (N, 3, 3)    pixel intrinsics at (H, W)
    cam_to_ego  (N, 4, 4)    camera -> ego transform; camera x right, y down, z forward;
                             ego x forward, y left, z up (nuScenes conventions)
and the synthetic world adds `depth_dense` (N, 1, H, W), 0 for sky.
The synthetic world lives in `synthetic.py`.
"""
import numpy as np

# Ring order of the README's "Setting": clockwise seen from above, starting at the front.
CAMERAS = (
    "CAM_FRONT",
    "CAM_FRONT_RIGHT",
    "CAM_BACK_RIGHT",
    "CAM_BACK",
    "CAM_BACK_LEFT",
    "CAM_FRONT_LEFT",
)
# The overlap pairs A: the right border of camera n sees what the left border of n+1 sees.
ADJACENT_PAIRS = tuple((n, (n + 1) % len(CAMERAS)) for n in range(len(CAMERAS)))

# Depth range d_min..d_max of Eqs. (3) and (18): the nuScenes evaluation cap of SurroundDepth.
MIN_DEPTH = 0.1
MAX_DEPTH = 80.0


def render_sparse_depth(points_cam, intrinsics, height, width, min_z=MIN_DEPTH):
    """Sparse depth map D* from 3-D points in a camera frame (the LiDAR ground truth).

    points_cam: (P, 3) float, meters, camera frame (x right, y down, z forward).
    intrinsics: (3, 3) pixel intrinsics at (height, width).
    Returns (height, width) float32 z-depth in meters, 0 where no point lands. Points with
    z <= min_z or outside the image are dropped; where several land in one pixel, the nearest
    one wins.
    """
    points_cam = np.asarray(points_cam, dtype=np.float64)
    depth = np.zeros((height, width), dtype=np.float32)
    z = points_cam[:, 2]
    front = z > min_z
    pts, z = points_cam[front], z[front]
    uvw = pts @ np.asarray(intrinsics, dtype=np.float64).T  # (P, 3)
    u = np.floor(uvw[:, 0] / z).astype(np.int64)  # pixel column; pixel centers at +0.5
    v = np.floor(uvw[:, 1] / z).astype(np.int64)
    inside = (u >= 0) & (u < width) & (v >= 0) & (v < height)
    u, v, z = u[inside], v[inside], z[inside]
    # Write far to near, so that the nearest point in each pixel is written last and wins.
    order = np.argsort(-z, kind="stable")
    depth[v[order], u[order]] = z[order]
    return depth


def scale_intrinsics(intrinsics, sx, sy):
    """Intrinsics (..., 3, 3) of an image resized by sx horizontally and sy vertically."""
    k = np.array(intrinsics, dtype=np.float64, copy=True)
    k[..., 0, :] *= sx
    k[..., 1, :] *= sy
    return k


def build_dataset(name, split, image_size=None, dataroot=None, version=None, seed=0, **kwargs):
    """The surround dataset `name` ('synthetic' or 'nuscenes') for `split`.

    image_size: (H, W) in pixels, or None for the dataset's default.
    Synthetic splits are 'train', 'val', 'test'; nuScenes splits follow the devkit
    ('train', 'val' for v1.0-trainval; 'mini_train', 'mini_val' for v1.0-mini).
    Extra keyword arguments go to the dataset class.
    """
    if name == "synthetic":
        from synthetic import SyntheticSurround  # the procedural world, see synthetic.py

        size = {} if image_size is None else {"image_size": tuple(image_size)}
        return SyntheticSurround(split=split, seed=seed, **size, **kwargs)
    if name == "nuscenes":
        size = {} if image_size is None else {"image_size": tuple(image_size)}
        return NuScenesSurround(dataroot, version=version or "v1.0-trainval", split=split,
                                **size, **kwargs)
    raise ValueError(f"unknown dataset {name!r}: use 'synthetic' or 'nuscenes'")
