"""The camera ring and its geometry, shared by every dataset, the metrics and the pictures.

Defines
- `CAMERAS` and `ADJACENT_PAIRS`: the ring order and the overlap pairs A of the README's method
  section ("Setting"), used by the view-relational KD, Eqs. (12)-(14), and by Eq. (20).
- `MIN_DEPTH`, `MAX_DEPTH`: the default depth range d_min, d_max of Eqs. (3) and (18)
  (nuScenes and the synthetic world; a dataset may declare its own, see `data.depth_range`).
- `render_sparse_depth`: camera-frame points -> sparse depth map, nearest point wins (how the
  LiDAR ground truth D* is made, for the synthetic LiDAR, nuScenes and DDAD alike).
- `scale_intrinsics`: intrinsics of a resized image.
- `encode_points`, `decode_points`, `CACHE_SUBPIXEL`: the compressed cache of projected LiDAR
  points that every real-data loader keeps (nuScenes, DDAD).
- `quaternion_matrix`: the rotation of a unit quaternion (w, x, y, z), the calibration format of
  nuScenes and DDAD.
- `back_project`, `project`, `sample_depth`: pixels -> ego-frame points -> pixels of another
  camera, and the depth there: the lifting of Eq. (20), the bird's-eye figure and point clouds.

Conventions: camera frame x right, y down, z forward; ego frame x forward, y left, z up;
pixel (v, u) covers [u, u + 1) x [v, v + 1), so its center is (u + 0.5, v + 0.5).
"""
import numpy as np

# Ring order of the README's "Setting": clockwise seen from above, starting at the front.
# (nuScenes names; other datasets map their cameras onto this order, e.g. DDAD's 01, 06, 08, 09, 07, 05.)
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
# Cache encoding of one projected point: u, v as uint16 in units of 1/CACHE_SUBPIXEL native pixel
# (nuScenes 1600 * 32 = 51,200 and DDAD 1936 * 32 = 61,952, both < 2**16), z as float16 (relative
# rounding under 2**-11: 4 cm at 80 m, 10 cm at 200 m, about the LiDARs' range accuracy). 6 bytes a
# point before compression, ~2.7 after on nuScenes (`encode_points`).
CACHE_SUBPIXEL = 32


def quaternion_matrix(q):
    """(3, 3) float64 rotation of the Hamilton quaternion q = (w, x, y, z), either sign, normalised here."""
    w, x, y, z = np.asarray(q, dtype=np.float64) / np.linalg.norm(np.asarray(q, dtype=np.float64))
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                     [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                     [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])


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
    k = np.asarray(intrinsics, dtype=np.float64)
    x, y = pts[:, 0], pts[:, 1]  # written out, not pts @ k.T: no BLAS call, whose idle threads
    # would spin beside a one-core DataLoader worker (the loader's CPU time doubled with them)
    u = np.floor((k[0, 0] * x + k[0, 1] * y + k[0, 2] * z) / z).astype(np.int64)  # column; centers at +0.5
    v = np.floor((k[1, 0] * x + k[1, 1] * y + k[1, 2] * z) / z).astype(np.int64)
    inside = (u >= 0) & (u < width) & (v >= 0) & (v < height)
    u, v, z = u[inside], v[inside], z[inside]
    # Write far to near, so that the nearest point in each pixel is written last and wins.
    order = np.argsort(-z, kind="stable")
    depth[v[order], u[order]] = z[order]
    return depth


def unproject_pixels(uvz, intrinsics):
    """Cached points (P, 3) (u, v, z) (pixel coordinates and z-depth in meters) -> (P, 3) points
    in the camera frame, X = z K^-1 (u, v, 1), for pinhole intrinsics (3, 3) (upper triangular,
    K[2, 2] = 1). Written out element by element: a loader worker calls it per view, and any BLAS
    or LAPACK call (np.linalg.inv, @) wakes numpy's BLAS threads, whose spinning doubled the
    loader's CPU time beside a one-core worker."""
    k = np.asarray(intrinsics, dtype=np.float64)
    if k[1, 0] != 0 or k[2, 0] != 0 or k[2, 1] != 0 or k[2, 2] != 1:
        raise ValueError(f"intrinsics must be upper triangular with K[2, 2] = 1, got {k.tolist()}")
    u, v, z = np.asarray(uvz, dtype=np.float64).T
    y = (v - k[1, 2]) / k[1, 1]  # K^-1 (u, v, 1) by back substitution
    x = (u - k[0, 2] - k[0, 1] * y) / k[0, 0]
    return np.stack([x * z, y * z, z], axis=1)


def scale_intrinsics(intrinsics, sx, sy):
    """Intrinsics (..., 3, 3) of an image resized by sx horizontally and sy vertically."""
    k = np.array(intrinsics, dtype=np.float64, copy=True)
    k[..., 0, :] *= sx
    k[..., 1, :] *= sy
    return k


def encode_points(projected):
    """Per camera (P_n, 3) (u, v, z) -> compact arrays for the cache, ~2.7 bytes a point zipped.

    projected: per camera (P_n, 3) float64 (u, v, z): native pixel coordinates, 0 <= u, v <
    max(H, W) <= 2**16 / CACHE_SUBPIXEL, and z-depth in meters. u, v become uint16 in
    1/CACHE_SUBPIXEL px, z the bits of its float16. When points come in scan order (each loader
    keeps its LiDAR's order, e.g. along each beam), consecutive values are close: their
    differences, split into high and low byte planes, are mostly small and repetitive, which
    deflate packs twice as tight as the raw values.
    """
    uvz = np.concatenate(projected)  # (P, 3)
    columns = np.stack([
        np.floor(uvz[:, 0] * CACHE_SUBPIXEL).astype(np.uint16),
        np.floor(uvz[:, 1] * CACHE_SUBPIXEL).astype(np.uint16),
        uvz[:, 2].astype(np.float16).view(np.uint16),
    ])  # (3, P)
    # uint16 differences wrap around mod 2**16; the cumulative sum in `decode_points` undoes them.
    deltas = np.diff(columns, axis=1, prepend=np.zeros((3, 1), dtype=np.uint16))  # (3, P)
    return {
        "planes": np.stack([deltas >> 8, deltas & 0xFF]).astype(np.uint8),  # (2, 3, P) high, low
        "counts": np.array([len(p) for p in projected], dtype=np.int64),  # (N,)
    }


def decode_points(arrays):
    """Cache arrays -> per camera (P_n, 3) float64 (u, v, z), u, v at the center of their cell.

    The center keeps floor(u) exact at the native resolution, and keeps every point off the
    pixel borders of resolutions whose borders fall on the 1/32 px grid (e.g. 640 or 400 of 1600).
    """
    planes = arrays["planes"].astype(np.uint16)  # (2, 3, P)
    columns = np.cumsum((planes[0] << 8) | planes[1], axis=1, dtype=np.uint16)  # (3, P)
    uv = (columns[:2].T.astype(np.float64) + 0.5) / CACHE_SUBPIXEL  # (P, 2)
    z = columns[2].view(np.float16).astype(np.float64)  # (P,)
    uvz = np.concatenate([uv, z[:, None]], axis=1)  # (P, 3)
    return np.split(uvz, np.cumsum(arrays["counts"])[:-1])


def back_project(depth, intrinsics, cam_to_ego):
    """Eq. (20), lifting: every pixel center of every view to a 3-D point in the ego frame.

    depth (N, H, W) z-depth in meters; intrinsics (N, 3, 3) pixel intrinsics at (H, W), pixel
    (v, u) covering [u, u + 1) x [v, v + 1) so its center is (u + 0.5, v + 0.5); cam_to_ego
    (N, 4, 4) (camera x right, y down, z forward). Returns (N, H, W, 3) ego points, meters.
    """
    depth = np.asarray(depth, dtype=np.float64)
    n, h, w = depth.shape
    v, u = np.mgrid[0:h, 0:w]
    points = np.stack([unproject_pixels(np.stack([u.ravel() + 0.5, v.ravel() + 0.5, d.ravel()], axis=1), k)
                       for d, k in zip(depth, intrinsics)]).reshape(n, h, w, 3)  # camera frame, pixel centers
    pose = np.asarray(cam_to_ego, dtype=np.float64)
    return np.einsum("nij,nhwj->nhwi", pose[:, :3, :3], points) + pose[:, None, None, :3, 3]


def project(points, intrinsics, cam_to_ego, height, width):
    """Eq. (20), projection: ego points (P, 3) into one camera (intrinsics (3, 3), cam_to_ego
    (4, 4)) -> z-depth (P,) meters, pixel coordinates (u, v) (P, 2) (pixel centers at
    i + 0.5; (0.5, 0.5) where outside), and a mask (P,) of points with z > 0 inside the image."""
    ego_to_cam = np.linalg.inv(cam_to_ego)
    cam = points @ ego_to_cam[:3, :3].T + ego_to_cam[:3, 3]  # (P, 3)
    z = cam[:, 2]
    front = z > 0
    uv = (cam @ np.asarray(intrinsics, dtype=np.float64).T)[:, :2] / np.where(front, z, 1.0)[:, None]  # (P, 2)
    inside = front & (uv[:, 0] >= 0) & (uv[:, 0] < width) & (uv[:, 1] >= 0) & (uv[:, 1] < height)
    return z, np.where(inside[:, None], uv, 0.5), inside


def sample_depth(depth, uv):
    """Eq. (20), lookup: depth (H, W) meters at pixel coordinates uv (P, 2) -> (P,) meters and
    a mask (P,) of samples whose four neighbouring pixels all have depth > 0.

    Bilinear in inverse depth between the four nearest pixel centers (edge pixels repeated at
    the border): inverse depth is affine in (u, v) on a plane, so a planar surface is sampled
    exactly, where a nearest-pixel lookup is off by the depth change over half a pixel (~0.3 %
    on average on the synthetic overlaps at 96 x 160: ground at grazing angles).
    """
    h, w = depth.shape
    x, y = np.clip(uv[:, 0] - 0.5, 0, w - 1), np.clip(uv[:, 1] - 0.5, 0, h - 1)  # pixel-center grid
    x0, y0 = np.minimum(np.floor(x).astype(np.int64), w - 2), np.minimum(np.floor(y).astype(np.int64), h - 2)
    fx, fy = x - x0, y - y0
    corners = np.stack([depth[y0, x0], depth[y0, x0 + 1], depth[y0 + 1, x0], depth[y0 + 1, x0 + 1]])  # (4, P)
    weights = np.stack([(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy])  # (4, P)
    valid = (corners > 0).all(axis=0)
    inverse = (weights / np.where(corners > 0, corners, 1.0)).sum(axis=0)  # (P,) 1 / meters
    return 1.0 / inverse, valid
