"""Tests of synthetic.py (the procedural surround benchmark) and rig.render_sparse_depth.

- determinism: an item is a function of (split, index, seed), and different ones differ;
- item keys, shapes, dtypes and value ranges; intrinsics equal camera_rig at the item's size;
- the rig: camera order, adjacent pairs, orthonormal right-handed cam_to_ego, CAM_FRONT looks
  along ego +x, CAM_FRONT_RIGHT to the right (-y), the ring runs clockwise, every adjacent pair
  overlaps by >= 10 degrees, and the right border of camera n faces the left part of n + 1;
- geometry of the renders: below the horizon nothing is farther than the ground plane; a pixel
  of camera n back-projected with its dense depth and projected into its neighbour m lands on
  the same surface there (and would not with transposed rotations);
- the sparse LiDAR ground truth equals the dense depth at its pixels, with a plausible coverage;
- unproject_pixels is z K^-1 (u, v, 1) (with skew) and inverts the projection;
- render_sparse_depth: nearest point wins, points behind / too near / outside are dropped, a
  point lands in pixel (floor(u), floor(v));
- the render cache: an item read back equals the rendered one exactly, its path names split,
  seed, size, index and RENDER_VERSION, a broken file is a one-line error.
"""
import os

import numpy as np
import pytest
import torch

import synthetic
from cli import DatasetError
from rig import ADJACENT_PAIRS, CAMERAS, MAX_DEPTH, MIN_DEPTH, render_sparse_depth, unproject_pixels

SIZE = (48, 80)


@pytest.fixture(scope="module")
def item():
    return synthetic.SyntheticSurround("val", image_size=SIZE)[0]


# ---------------------------------------------------------------------------- determinism

def test_same_split_index_seed_gives_identical_tensors():
    a = synthetic.SyntheticSurround("test", image_size=SIZE, seed=3)[5]
    b = synthetic.SyntheticSurround("test", image_size=SIZE, seed=3)[5]
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("other", [("train", 0, 0), ("val", 1, 0), ("val", 0, 1)],
                         ids=["split", "index", "seed"])
def test_different_split_index_or_seed_gives_a_different_world(item, other):
    split, index, seed = other
    b = synthetic.SyntheticSurround(split, image_size=SIZE, seed=seed)[index]
    assert not torch.equal(item["images"], b["images"])
    assert (item["depth_dense"] - b["depth_dense"]).abs().mean().item() > 0.1
    # the rig is the same for every world
    assert torch.equal(item["cam_to_ego"], b["cam_to_ego"])


def test_bad_split_rejected():
    with pytest.raises(ValueError, match="split"):
        synthetic.SyntheticSurround("validation")


# ----------------------------------------------------------------------- keys and ranges

def test_item_keys_shapes_dtypes_ranges(item):
    h, w = SIZE
    shapes = {"images": (6, 3, h, w), "depth": (6, 1, h, w), "depth_dense": (6, 1, h, w),
              "intrinsics": (6, 3, 3), "cam_to_ego": (6, 4, 4)}
    assert set(item) == set(shapes)
    for key, shape in shapes.items():
        assert item[key].shape == shape, key
        assert item[key].dtype == torch.float32, key
        assert torch.isfinite(item[key]).all(), key
    assert item["images"].min() >= 0 and item["images"].max() <= 1
    assert item["images"].std() > 0.05  # not a blank picture
    for key in ("depth", "depth_dense"):
        assert item[key].min() >= 0 and item[key].max() <= MAX_DEPTH
    dense = item["depth_dense"]
    assert (dense > 0).float().mean() > 0.5  # mostly surfaces, some sky
    assert (dense == 0).any()  # the sky
    k, pose = synthetic.camera_rig(SIZE)
    assert torch.allclose(item["intrinsics"], torch.tensor(k, dtype=torch.float32))
    assert torch.allclose(item["cam_to_ego"], torch.tensor(pose, dtype=torch.float32))


def test_nothing_below_the_horizon_is_farther_than_the_ground(item):
    """A camera at CAM_HEIGHT looking horizontally: the ray of row v hits the ground at z-depth
    CAM_HEIGHT * f / (v + 0.5 - c_y); objects can only be nearer."""
    h, w = SIZE
    dense = item["depth_dense"][:, 0].numpy()
    k = item["intrinsics"].numpy()
    for n in range(6):
        f, cy = k[n, 1, 1], k[n, 1, 2]
        rows = np.arange(h)
        below = rows + 0.5 - cy > 1.0
        ground_z = synthetic.CAM_HEIGHT * f / (rows[below] + 0.5 - cy)  # (rows,)
        d = dense[n][below]
        assert np.all(d > 0), CAMERAS[n]
        assert np.all(d <= ground_z[:, None] * (1 + 1e-4)), CAMERAS[n]
        # most of the bottom row is the ground itself, at exactly that depth
        assert np.mean(np.abs(d[-1] - ground_z[-1]) < 1e-3 * ground_z[-1]) > 0.3


# ---------------------------------------------------------------------------------- the rig

def _yaw_hfov(size=SIZE):
    k, pose = synthetic.camera_rig(size)
    forward = pose[:, :3, 2]  # camera z axis in the ego frame
    yaw = np.degrees(np.arctan2(forward[:, 1], forward[:, 0]))
    hfov = np.degrees(2 * np.arctan((size[1] / 2) / k[:, 0, 0]))
    return yaw, hfov


def _wrap(deg):
    return (np.asarray(deg) + 180.0) % 360.0 - 180.0


def test_camera_order_and_pairs():
    assert CAMERAS == ("CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_BACK_RIGHT", "CAM_BACK",
                       "CAM_BACK_LEFT", "CAM_FRONT_LEFT")
    assert tuple(ADJACENT_PAIRS) == ((0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (5, 0))


def test_cam_to_ego_rotations_orthonormal_right_handed():
    _, pose = synthetic.camera_rig(SIZE)
    assert pose.shape == (6, 4, 4)
    r = pose[:, :3, :3]
    assert np.allclose(r.transpose(0, 2, 1) @ r, np.eye(3), atol=1e-12)
    assert np.allclose(np.linalg.det(r), 1.0)
    assert np.allclose(pose[:, 3], [0, 0, 0, 1])
    assert np.allclose(pose[:, 2, 3], synthetic.CAM_HEIGHT)
    # square pixels, principal point at the image center (pixel i covers [i, i + 1))
    k, _ = synthetic.camera_rig(SIZE)
    assert np.allclose(k[:, 0, 0], k[:, 1, 1])
    assert np.allclose(k[:, :2, 2], [SIZE[1] / 2, SIZE[0] / 2])
    assert np.allclose(k[:, 2], [0, 0, 1]) and np.allclose(k[:, 0, 1], 0) and np.allclose(k[:, 1, 0], 0)
    # camera y (down) is ego -z for every camera: they all look horizontally
    assert np.allclose(r[:, :, 1], [0, 0, -1])


def test_front_and_front_right_directions():
    _, pose = synthetic.camera_rig(SIZE)
    assert np.allclose(pose[0, :3, 2], [1, 0, 0])  # CAM_FRONT looks along ego +x
    assert np.allclose(pose[0, :3, 0], [0, -1, 0])  # and its image x (right) is ego -y
    fr = pose[1, :3, 2]
    assert fr[1] < -0.5 and fr[0] > 0  # CAM_FRONT_RIGHT: forward and to the right (-y)
    assert pose[3, 0, 2] < -0.99  # CAM_BACK looks backwards
    assert pose[5, 1, 2] > 0.5  # CAM_FRONT_LEFT looks left (+y)


def test_ring_is_clockwise_and_adjacent_pairs_overlap():
    yaw, hfov = _yaw_hfov()
    assert np.allclose(hfov, synthetic.CAM_HFOV_DEG)
    for n, m in ADJACENT_PAIRS:
        assert _wrap(yaw[m] - yaw[n]) < 0, (n, m)  # clockwise seen from above (z up)
        right_edge_n = yaw[n] - hfov[n] / 2
        left_edge_m = yaw[m] + hfov[m] / 2
        overlap = _wrap(left_edge_m - right_edge_n)
        assert 10.0 <= overlap < min(hfov[n], hfov[m]), (n, m, overlap)
    # together the six cameras see all around
    grid = np.arange(-180.0, 180.0, 0.5)
    seen = np.zeros_like(grid, dtype=bool)
    for n in range(6):
        seen |= np.abs(_wrap(grid - yaw[n])) <= hfov[n] / 2
    assert seen.all()


def _project(points_ego, k, pose):
    """Ego points (P, 3) -> pixel (u, v) floats and camera z (P,) of one camera."""
    p_cam = (points_ego - pose[:3, 3]) @ pose[:3, :3]
    uvw = p_cam @ k.T
    with np.errstate(divide="ignore", invalid="ignore"):
        return uvw[:, 0] / uvw[:, 2], uvw[:, 1] / uvw[:, 2], p_cam[:, 2]


def test_right_border_of_n_faces_left_part_of_next_camera():
    h, w = SIZE
    k, pose = synthetic.camera_rig(SIZE)
    yaw, hfov = _yaw_hfov()
    for n, m in ADJACENT_PAIRS:
        azimuth = np.radians(yaw[n] - hfov[n] / 2 + 1.0)  # 1 degree inside n's right edge
        point = pose[n, :3, 3] + 30.0 * np.array([np.cos(azimuth), np.sin(azimuth), 0.0])
        u, v, z = _project(point[None], k[n], pose[n])
        assert z[0] > 0 and 0.9 * w < u[0] < w and 0 <= v[0] < h, (n, u[0])
        u, v, z = _project(point[None], k[m], pose[m])
        assert z[0] > 0 and 0 <= u[0] < 0.35 * w and 0 <= v[0] < h, (n, m, u[0])
        prev = (n - 1) % 6  # the other neighbour, on n's left, does not see it
        u, v, z = _project(point[None], k[prev], pose[prev])
        assert not (z[0] > 0 and 0 <= u[0] < w), (n, prev)


def _cross_view_agreement(item, transpose=False, tol=0.05):
    """Back-project every dense pixel of camera n, project into its neighbour m; returns
    (number of pixels landing in m, fraction agreeing within tol among those that m does not
    see occluded by something nearer, pixels per pair)."""
    k = item["intrinsics"].double().numpy()
    pose = item["cam_to_ego"].double().numpy().copy()
    if transpose:
        pose[:, :3, :3] = pose[:, :3, :3].transpose(0, 2, 1)
    dense = item["depth_dense"][:, 0].double().numpy()
    h, w = dense.shape[-2:]
    agree = visible = 0
    per_pair = []
    for n, m in ADJACENT_PAIRS:
        v, u = np.nonzero(dense[n] > 0)
        z = dense[n][v, u]
        pix = np.stack([u + 0.5, v + 0.5, np.ones_like(u)], 1).astype(np.float64)  # pixel centers
        p_cam = (pix @ np.linalg.inv(k[n]).T) * z[:, None]
        p_ego = p_cam @ pose[n, :3, :3].T + pose[n, :3, 3]
        um, vm, zm = _project(p_ego, k[m], pose[m])
        inside = (zm > 0.5) & (um >= 0) & (um < w) & (vm >= 0) & (vm < h)
        zm = zm[inside]
        dm = dense[m][np.floor(vm[inside]).astype(int), np.floor(um[inside]).astype(int)]
        occluded = (dm > 0) & (dm < (1 - tol) * zm)  # m sees something nearer: allowed
        ok = np.abs(dm - zm) <= tol * zm
        agree += ok.sum()
        visible += (~occluded).sum()
        per_pair.append(int(inside.sum()))
    return visible, agree / max(visible, 1), per_pair


@pytest.mark.parametrize("index", [0, 1])
def test_dense_depths_agree_across_adjacent_views(index):
    item = synthetic.SyntheticSurround("test", image_size=(64, 96))[index]
    visible, fraction, per_pair = _cross_view_agreement(item)
    print(f"cross-view agreement, test[{index}]: {fraction:.3f} of {visible} pixels; per pair {per_pair}")
    assert min(per_pair) > 20  # every adjacent pair overlaps in the images
    assert fraction > 0.85
    # the test is discriminative: with transposed rotations the geometry falls apart
    _, wrong, _ = _cross_view_agreement(item, transpose=True)
    assert wrong < 0.3


# ------------------------------------------------------------------------- sparse LiDAR

def test_sparse_depth_equals_dense_and_coverage():
    item = synthetic.SyntheticSurround("val", image_size=synthetic.DEFAULT_IMAGE_SIZE)[2]
    sparse, dense = item["depth"], item["depth_dense"]
    hit = sparse > 0
    assert torch.equal(sparse[hit], dense[hit])
    coverage = hit.float().mean().item()
    per_view = hit.flatten(1).float().mean(1)
    print(f"sparse LiDAR coverage at {synthetic.DEFAULT_IMAGE_SIZE}: {100 * coverage:.2f} % "
          f"(per view {[round(100 * c, 2) for c in per_view.tolist()]})")
    assert 0.01 <= coverage <= 0.08  # the 16-beam scanner: 1-5 % of the demo pixels (README: 3.2-4.1 %)
    assert torch.all(per_view > 0)  # every camera gets some ground truth
    assert sparse.min() >= 0 and sparse[hit].min() > MIN_DEPTH and sparse.max() <= MAX_DEPTH


# ------------------------------------------------------------------- render_sparse_depth

K = np.array([[50.0, 0.0, 40.0], [0.0, 50.0, 24.0], [0.0, 0.0, 1.0]])


def test_render_sparse_depth_lands_at_floor_uv():
    # u = 50 * 1.27 / 5 + 40 = 52.7, v = 50 * (-0.53) / 5 + 24 = 18.7 -> pixel (18, 52)
    depth = render_sparse_depth(np.array([[1.27, -0.53, 5.0]]), K, 48, 80)
    assert depth.shape == (48, 80) and depth.dtype == np.float32
    assert depth[18, 52] == pytest.approx(5.0)
    assert np.count_nonzero(depth) == 1
    # exactly on a pixel boundary u = 12.0 -> column 12; just below -> column 11
    d = render_sparse_depth(np.array([[(12.0 - 40) * 10 / 50, 0.0, 10.0]]), K, 48, 80)
    assert d[24, 12] == pytest.approx(10.0)
    d = render_sparse_depth(np.array([[(11.99 - 40) * 10 / 50, 0.0, 10.0]]), K, 48, 80)
    assert d[24, 11] == pytest.approx(10.0)


@pytest.mark.parametrize("order", [(0, 1, 2), (2, 1, 0), (1, 0, 2)])
def test_render_sparse_depth_nearest_wins(order):
    ray = np.array([0.3, 0.1, 1.0])
    points = np.stack([ray * 20.0, ray * 7.0, ray * 12.0])[list(order)]
    depth = render_sparse_depth(points, K, 48, 80)
    assert np.count_nonzero(depth) == 1
    assert depth.max() == pytest.approx(7.0)


def test_render_sparse_depth_drops_behind_near_and_outside():
    points = np.array([
        [0.0, 0.0, -5.0],  # behind the camera (projects inside the image if not dropped)
        [0.0, 0.0, 0.05],  # closer than min_z
        [100.0, 0.0, 5.0],  # u far right of the image
        [-9.0, 0.0, 5.0],  # u = -50
        [0.0, 5.0, 5.0],  # v below the image
        [0.0, -5.0, 5.0],  # v above the image
        [(80.0 - 40) * 5 / 50, 0.0, 5.0],  # u = 80.0 exactly: one past the last column
    ])
    assert np.count_nonzero(render_sparse_depth(points, K, 48, 80)) == 0
    keep = np.array([[(79.9 - 40) * 5 / 50, 0.0, 5.0]])  # u = 79.9: the last column
    d = render_sparse_depth(np.concatenate([points, keep]), K, 48, 80)
    assert np.count_nonzero(d) == 1 and d[24, 79] == pytest.approx(5.0)


def test_render_cache_returns_exactly_the_rendered_item_and_is_read_back(tmp_path, monkeypatch):
    fresh = synthetic.SyntheticSurround("train", image_size=SIZE, seed=4)[3]
    cached = synthetic.SyntheticSurround("train", image_size=SIZE, seed=4, cache_dir=str(tmp_path))
    first = cached[3]  # renders and writes
    path = synthetic.render_cache_path(str(tmp_path), "train", 4, SIZE, 3)
    assert os.path.exists(path) and len(os.listdir(os.path.dirname(path))) == 1  # no temporary left
    monkeypatch.setattr(synthetic, "render_sample", lambda *a: pytest.fail("rendered again"))
    again = cached[3]  # read back, not rendered
    for key in fresh:
        assert fresh[key].dtype == again[key].dtype == torch.float32
        assert torch.equal(fresh[key], first[key]) and torch.equal(fresh[key], again[key]), key


def test_render_cache_path_names_everything_an_item_depends_on():
    base = ("root", "train", 0, (96, 160), 7)
    paths = {synthetic.render_cache_path(*base), synthetic.render_cache_path("root", "val", 0, (96, 160), 7),
             synthetic.render_cache_path("root", "train", 1, (96, 160), 7),
             synthetic.render_cache_path("root", "train", 0, (64, 160), 7),
             synthetic.render_cache_path("root", "train", 0, (96, 160), 8)}
    assert len(paths) == 5
    assert f"v{synthetic.RENDER_VERSION}" in synthetic.render_cache_path(*base).split(os.sep)


def test_unreadable_render_cache_item_is_one_line_error(tmp_path):
    path = synthetic.render_cache_path(str(tmp_path), "test", 0, SIZE, 0)
    os.makedirs(os.path.dirname(path))
    with open(path, "wb") as f:
        f.write(b"half a file")
    with pytest.raises(DatasetError, match="delete it to render it again"):
        synthetic.SyntheticSurround("test", image_size=SIZE, cache_dir=str(tmp_path))[0]


def test_unproject_pixels_is_z_times_inverse_intrinsics_and_round_trips():
    k = np.array([[500.0, 3.0, 320.5], [0.0, 480.0, 176.25], [0.0, 0.0, 1.0]])  # with skew
    rng = np.random.default_rng(0)
    uvz = np.stack([rng.uniform(0, 640, 50), rng.uniform(0, 352, 50), rng.uniform(1, 80, 50)], axis=1)
    points = unproject_pixels(uvz, k)
    expected = uvz[:, 2:] * (np.linalg.inv(k) @ np.stack([uvz[:, 0], uvz[:, 1], np.ones(50)])).T
    np.testing.assert_allclose(points, expected, rtol=1e-12, atol=1e-9)
    back = points @ k.T  # project again: (u z, v z, z)
    np.testing.assert_allclose(back[:, :2] / back[:, 2:], uvz[:, :2], rtol=1e-12)
    with pytest.raises(ValueError, match="upper triangular"):
        unproject_pixels(uvz, k.T)
