"""Tests of pointcloud.py and `infer.py --sample I --ply`: the fused six-view point cloud.

- a known depth map gives the known ego points (hand-computed for a front and a back camera),
  colours and camera indices, every k-th pixel with --ply-stride, no point where depth is 0;
- the .ply file parses back with a reader written from the format alone (header, vertex count,
  property types, byte size);
- `infer.py --sample 0 --ply` on a synthetic sample writes a cloud whose points project back to
  their own pixel centers at the predicted depth (`rig.project`, the other half of Eq. (20));
- --ply without --sample, and a sample out of range, end in one line.
"""
from dataclasses import asdict

import numpy as np
import pytest
import torch

import infer
from cli import InputError
from model import Student, StudentConfig, save_checkpoint
from pointcloud import PLY_VERTEX, surround_points, write_ply
from rig import CAMERAS, project
from synthetic import camera_rig

H, W, F, CX, CY = 4, 6, 10.0, 3.0, 2.0  # a tiny pinhole camera: focal 10 px, principal point at the center
# Front camera at (1, 0, 1.5) looking along ego +x; back camera at (-2, 0, 1.5) looking along -x.
# cam_to_ego columns are the camera axes (x right, y down, z forward) in the ego frame (x fwd, y left, z up).
FRONT = [[0, 0, 1, 1.0], [-1, 0, 0, 0.0], [0, -1, 0, 1.5], [0, 0, 0, 1]]
BACK = [[0, 0, -1, -2.0], [1, 0, 0, 0.0], [0, -1, 0, 1.5], [0, 0, 0, 1]]


def read_ply(path):
    """A minimal binary little-endian .ply reader, from the format alone -> (header lines, vertex array)."""
    types = {"float": "<f4", "uchar": "u1"}
    with open(path, "rb") as f:
        header = []
        while not header or header[-1] != "end_header":
            header.append(f.readline().decode("ascii").rstrip("\n"))
        body = f.read()
    fields = [(line.split()[2], types[line.split()[1]]) for line in header if line.startswith("property ")]
    count = int(next(line for line in header if line.startswith("element vertex")).split()[2])
    vertices = np.frombuffer(body, dtype=np.dtype(fields))
    assert len(vertices) == count and len(body) == count * np.dtype(fields).itemsize
    return header, vertices


def known_scene():
    """Two views: the front one 5 m away everywhere except pixel (0, 0) (no depth), the back one 3 m."""
    depth = np.stack([np.full((H, W), 5.0), np.full((H, W), 3.0)])
    depth[0, 0, 0] = 0.0
    images = np.zeros((2, H, W, 3), np.uint8)
    images[..., 0] = np.arange(2)[:, None, None] * 100 + np.arange(H * W).reshape(H, W)  # red: camera, pixel
    images[..., 2] = 7
    intrinsics = np.array([[[F, 0, CX], [0, F, CY], [0, 0, 1]]] * 2)
    return depth, images, intrinsics, np.array([FRONT, BACK], float)


def test_a_known_depth_map_gives_the_known_points():
    cloud = surround_points(*known_scene())
    assert cloud.dtype == PLY_VERTEX and len(cloud) == 2 * H * W - 1  # the pixel without depth is dropped
    front, back = cloud[cloud["camera"] == 0], cloud[cloud["camera"] == 1]
    # Front pixel (v, u) = (1, 2): center (2.5, 1.5); camera x = (2.5 - 3) / 10 * 5 = -0.25, y = -0.25, z = 5;
    # ego = (1 + z, -x, 1.5 - y) = (6, 0.25, 1.75). It is the 8th front pixel (row 1, column 2), minus the dropped one.
    p = front[1 * W + 2 - 1]
    assert (p["x"], p["y"], p["z"]) == pytest.approx((6.0, 0.25, 1.75))
    assert (p["red"], p["green"], p["blue"]) == (1 * W + 2, 0, 7)
    # Back pixel (v, u) = (3, 5): center (5.5, 3.5); x = 2.5 / 10 * 3 = 0.75, y = 1.5 / 10 * 3 = 0.45, z = 3;
    # ego = (-2 - z, x, 1.5 - y) = (-5, 0.75, 1.05).
    q = back[3 * W + 5]
    assert (q["x"], q["y"], q["z"]) == pytest.approx((-5.0, 0.75, 1.05))
    assert q["red"] == 100 + 3 * W + 5
    assert np.allclose(front["x"], 6.0) and np.allclose(back["x"], -5.0)  # planes z = 5 and z = 3 of each camera


def test_stride_keeps_every_kth_pixel_along_rows_and_columns():
    depth, images, intrinsics, poses = known_scene()
    full = surround_points(depth, images, intrinsics, poses)
    strided = surround_points(depth, images, intrinsics, poses, stride=2)
    # Kept pixels: rows 0, 2 and columns 0, 2, 4 of each view (6 per view), minus the front (0, 0) without depth.
    assert len(strided) == 2 * 6 - 1
    kept = [(n, v, u) for n in range(2) for v in (0, 2) for u in (0, 2, 4) if (n, v, u) != (0, 0, 0)]
    expected = [full[(full["camera"] == n) & (full["red"] == n * 100 + v * W + u)][0] for n, v, u in kept]
    assert np.array_equal(strided, np.array(expected, dtype=PLY_VERTEX))


def test_ply_header_vertex_count_and_values_parse_back(tmp_path):
    cloud = surround_points(*known_scene())
    write_ply(tmp_path / "cloud.ply", cloud)
    header, vertices = read_ply(tmp_path / "cloud.ply")
    assert header[:2] == ["ply", "format binary_little_endian 1.0"]
    assert f"element vertex {len(cloud)}" in header
    assert [line for line in header if line.startswith("property")] == [
        "property float x", "property float y", "property float z", "property uchar red", "property uchar green",
        "property uchar blue", "property uchar camera"]
    assert np.array_equal(vertices, cloud)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny random student checkpoint at 64 x 96."""
    torch.manual_seed(0)
    model = Student(StudentConfig(image_size=(64, 96), num_bins=16))
    path = str(tmp_path_factory.mktemp("ckpt") / "checkpoint.pt")
    save_checkpoint(path, {"config": asdict(model.cfg), "model": model.state_dict()})
    return path


def test_infer_sample_writes_a_cloud_that_projects_back_to_its_pixels(checkpoint, tmp_path):
    ckpt, out = checkpoint, tmp_path / "out"
    assert infer.main(["--sample", "0", "--ply", "--ply-stride", "2", "--checkpoint", ckpt, "--out", str(out)]) == 6
    header, cloud = read_ply(out / "synthetic_test_0_points.ply")
    assert f"element vertex {6 * 32 * 48}" in header  # every 2nd pixel of 64 x 96 in each of the 6 views
    assert np.bincount(cloud["camera"]).tolist() == [32 * 48] * 6
    assert (out / "surround_depth.png").exists()
    intrinsics, cam_to_ego = camera_rig((64, 96))
    v, u = np.mgrid[0:64:2, 0:96:2]
    for n, cam in enumerate(CAMERAS):
        depth = np.load(out / f"synthetic_test_0_{cam}{infer.OUTPUT_SUFFIX}.npy")[::2, ::2]
        points = cloud[cloud["camera"] == n]
        xyz = np.stack([points["x"], points["y"], points["z"]], axis=1).astype(np.float64)
        z, uv, inside = project(xyz, intrinsics[n], cam_to_ego[n], 64, 96)
        assert inside.all()
        np.testing.assert_allclose(z, depth.ravel(), rtol=1e-5)
        np.testing.assert_allclose(uv, np.stack([u.ravel() + 0.5, v.ravel() + 0.5], axis=1), atol=1e-3)


def test_ply_needs_a_sample_a_valid_index_and_a_positive_stride(checkpoint, tmp_path):
    with pytest.raises(InputError, match="needs calibration"):
        infer.main([str(tmp_path), "--ply", "--checkpoint", checkpoint])
    with pytest.raises(InputError, match="has samples 0-63"):  # the synthetic test split holds 64
        infer.main(["--sample", "64", "--checkpoint", checkpoint, "--out", str(tmp_path)])
    with pytest.raises(InputError, match="must be >= 1"):
        infer.main(["--sample", "0", "--ply", "--ply-stride", "0", "--checkpoint", checkpoint])
    assert list(tmp_path.iterdir()) == []
