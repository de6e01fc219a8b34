"""Imported cameras: transforms.json (OpenGL c2w) and COLMAP text/binary models, written here from known cameras."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from scene_kd.errors import SceneFormatError
from scene_kd.scene.cameras import load_cameras_file, load_colmap_points
from scene_kd.scene.types import Camera

ORIGIN = np.array([500000.0, 4100000.0, 20.0])


def rot_to_quat(R: np.ndarray) -> np.ndarray:
    """(w, x, y, z) of a rotation matrix (w >= 0)."""
    w = np.sqrt(max(0.0, 1 + R[0, 0] + R[1, 1] + R[2, 2])) / 2
    x = np.copysign(np.sqrt(max(0.0, 1 + R[0, 0] - R[1, 1] - R[2, 2])) / 2, R[2, 1] - R[1, 2])
    y = np.copysign(np.sqrt(max(0.0, 1 - R[0, 0] + R[1, 1] - R[2, 2])) / 2, R[0, 2] - R[2, 0])
    z = np.copysign(np.sqrt(max(0.0, 1 - R[0, 0] - R[1, 1] + R[2, 2])) / 2, R[1, 0] - R[0, 1])
    return np.array([w, x, y, z])


def look_at(center: np.ndarray, target: np.ndarray) -> np.ndarray:
    """OpenCV world_to_cam [4, 4] for a camera at ``center`` looking at ``target`` (z forward, y down)."""
    z = target - center
    z /= np.linalg.norm(z)
    x = np.cross(z, [0.0, 0.0, -1.0])
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    R = np.stack([x, y, z])
    w2c = np.eye(4)
    w2c[:3, :3], w2c[:3, 3] = R, -R @ center
    return w2c


def known_cameras() -> list[tuple[str, np.ndarray, tuple, np.ndarray]]:
    """(model, params, (w, h), world_to_cam in WORLD coordinates) for three cameras around ORIGIN."""
    out = []
    rng = np.random.default_rng(3)
    for i, (model, params) in enumerate(
        [
            ("PINHOLE", [800.0, 810.0, 320.0, 240.0]),
            ("SIMPLE_RADIAL", [900.0, 300.0, 200.0, 0.01]),
            ("OPENCV", [700.0, 705.0, 330.0, 250.0, 0.1, -0.05, 0.001, 0.002]),
        ]
    ):
        center = ORIGIN + rng.uniform(-50, 50, 3) + [0, 0, 30]
        out.append(
            (model, np.array(params), (640 + i, 480 + i), look_at(center, ORIGIN + rng.uniform(-5, 5, 3)))
        )
    return out


def expected_K(model, p):
    if model == "SIMPLE_RADIAL":
        return np.array([[p[0], 0, p[1]], [0, p[0], p[2]], [0, 0, 1]])
    return np.array([[p[0], 0, p[2]], [0, p[1], p[3]], [0, 0, 1]])


def write_colmap_text(folder, cams):
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "cameras.txt", "w") as f:
        f.write("# Camera list\n")
        for i, (model, p, (w, h), _) in enumerate(cams, start=1):
            f.write(f"{i} {model} {w} {h} {' '.join(repr(float(v)) for v in p)}\n")
    with open(folder / "images.txt", "w") as f:
        f.write("# Image list with two lines of data per image:\n")
        for i, (_, _, _, w2c) in enumerate(cams, start=1):
            q, t = rot_to_quat(w2c[:3, :3]), w2c[:3, 3]
            f.write(
                f"{i} {' '.join(repr(float(v)) for v in q)} {' '.join(repr(float(v)) for v in t)} {i} img_{i:03d}.jpg\n"
            )
            f.write("10.5 20.5 1 30.0 40.0 -1\n" if i == 1 else "\n")
    with open(folder / "points3D.txt", "w") as f:
        f.write(f"1 {ORIGIN[0] + 1.25} {ORIGIN[1] + 2.5} {ORIGIN[2]} 255 0 10 0.5 1 0\n")
        f.write(f"2 {ORIGIN[0] + 3.001} {ORIGIN[1]} {ORIGIN[2] + 7.5} 1 2 3 0.25 1 0 2 0\n")


def write_colmap_binary(folder, cams):
    ids = {"SIMPLE_PINHOLE": 0, "PINHOLE": 1, "SIMPLE_RADIAL": 2, "OPENCV": 4}
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "cameras.bin", "wb") as f:
        f.write(struct.pack("<Q", len(cams)))
        for i, (model, p, (w, h), _) in enumerate(cams, start=1):
            f.write(struct.pack("<iiQQ", i, ids[model], w, h) + struct.pack(f"<{len(p)}d", *p))
    with open(folder / "images.bin", "wb") as f:
        f.write(struct.pack("<Q", len(cams)))
        for i, (_, _, _, w2c) in enumerate(cams, start=1):
            q, t = rot_to_quat(w2c[:3, :3]), w2c[:3, 3]
            f.write(struct.pack("<i7di", i, *q, *t, i) + f"img_{i:03d}.jpg".encode() + b"\x00")
            f.write(
                struct.pack("<Q", 2) + struct.pack("<ddq", 1.0, 2.0, 1) + struct.pack("<ddq", 3.0, 4.0, -1)
            )
    with open(folder / "points3D.bin", "wb") as f:
        f.write(struct.pack("<Q", 2))
        f.write(struct.pack("<Q3d3Bd", 1, ORIGIN[0] + 1.25, ORIGIN[1] + 2.5, ORIGIN[2], 255, 0, 10, 0.5))
        f.write(struct.pack("<Q", 1) + struct.pack("<ii", 1, 0))
        f.write(struct.pack("<Q3d3Bd", 2, ORIGIN[0] + 3.001, ORIGIN[1], ORIGIN[2] + 7.5, 1, 2, 3, 0.25))
        f.write(struct.pack("<Q", 2) + struct.pack("<iiii", 1, 0, 2, 0))


def check_cameras(loaded: list[Camera], cams, origin):
    assert [c.name for c in loaded] == [f"img_{i:03d}.jpg" for i in range(1, len(cams) + 1)]
    for cam, (model, p, (w, h), w2c) in zip(loaded, cams, strict=True):
        assert (cam.width, cam.height) == (w, h)
        np.testing.assert_allclose(cam.K, expected_K(model, p), atol=1e-9)
        np.testing.assert_allclose(cam.world_to_cam[:3, :3], w2c[:3, :3], atol=1e-9)
        center_world = -w2c[:3, :3].T @ w2c[:3, 3]
        np.testing.assert_allclose(cam.center, center_world - origin, atol=1e-6)
        # a world point projects to the same pixel through the local camera
        p_world = ORIGIN + np.array([1.0, -2.0, 3.0])
        pc = cam.world_to_cam[:3, :3] @ (p_world - origin) + cam.world_to_cam[:3, 3]
        pw = w2c[:3, :3] @ p_world + w2c[:3, 3]
        np.testing.assert_allclose(pc, pw, atol=1e-6)


@pytest.mark.parametrize("kind", ["text", "binary"])
def test_colmap_models_known_cameras(tmp_path, kind):
    cams = known_cameras()
    folder = tmp_path / "proj" / "sparse" / "0"
    (write_colmap_text if kind == "text" else write_colmap_binary)(folder, cams)
    check_cameras(load_cameras_file(folder, origin=ORIGIN), cams, ORIGIN)
    check_cameras(load_cameras_file(tmp_path / "proj"), cams, np.zeros(3))  # project root, no origin
    pts = load_colmap_points(folder)
    np.testing.assert_allclose(
        pts.world_xyz(),
        [[ORIGIN[0] + 1.25, ORIGIN[1] + 2.5, ORIGIN[2]], [ORIGIN[0] + 3.001, ORIGIN[1], ORIGIN[2] + 7.5]],
        atol=1e-4,
    )
    np.testing.assert_array_equal(pts.rgb, [[255, 0, 10], [1, 2, 3]])
    np.testing.assert_array_equal(pts.extra["error"], np.array([0.5, 0.25], dtype=np.float32))


def test_colmap_truncated_binary_is_format_error(tmp_path):
    folder = tmp_path / "sparse"
    write_colmap_binary(folder, known_cameras())
    data = (folder / "images.bin").read_bytes()
    (folder / "images.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(SceneFormatError, match="corrupt COLMAP"):
        load_cameras_file(folder)


def test_transforms_json_opengl_to_opencv(tmp_path):
    cams = known_cameras()
    frames = []
    for i, (_, _, (w, h), w2c) in enumerate(cams, start=1):
        c2w_cv = np.linalg.inv(w2c)
        c2w_gl = c2w_cv @ np.diag([1.0, -1.0, -1.0, 1.0])
        frame = {"file_path": f"img_{i:03d}.jpg", "transform_matrix": c2w_gl.tolist()}
        if i == 2:  # per-frame intrinsics override the file's
            frame.update(fl_x=900.0, fl_y=900.0, cx=300.0, cy=200.0, w=w, h=h)
        frames.append(frame)
    meta = {
        "camera_model": "OPENCV",
        "fl_x": 800.0,
        "fl_y": 810.0,
        "cx": 320.0,
        "cy": 240.0,
        "w": 640,
        "h": 480,
        "k1": 0.0,
        "frames": frames,
    }
    path = tmp_path / "transforms.json"
    path.write_text(json.dumps(meta))
    loaded = load_cameras_file(path, origin=ORIGIN)
    assert [c.name for c in loaded] == ["img_001.jpg", "img_002.jpg", "img_003.jpg"]
    np.testing.assert_allclose(loaded[1].K, [[900, 0, 300], [0, 900, 200], [0, 0, 1]])
    assert (loaded[1].width, loaded[1].height) == (641, 481) and (loaded[0].width, loaded[0].height) == (
        640,
        480,
    )
    np.testing.assert_allclose(loaded[0].K, [[800, 0, 320], [0, 810, 240], [0, 0, 1]])
    for cam, (_, _, _, w2c) in zip(loaded, cams, strict=True):
        np.testing.assert_allclose(cam.world_to_cam[:3, :3], w2c[:3, :3], atol=1e-9)
        np.testing.assert_allclose(cam.center, -w2c[:3, :3].T @ w2c[:3, 3] - ORIGIN, atol=1e-6)
        # the scene centre lies in front of each camera (positive depth in OpenCV convention)
        assert (cam.world_to_cam[:3, :3] @ np.zeros(3) + cam.world_to_cam[:3, 3])[2] > 0


def test_transforms_json_camera_angle_x(tmp_path):
    meta = {
        "camera_angle_x": 2 * np.arctan(0.5),
        "w": 100,
        "h": 80,
        "frames": [{"file_path": "a.png", "transform_matrix": np.eye(4).tolist()}],
    }
    (tmp_path / "transforms.json").write_text(json.dumps(meta))
    (cam,) = load_cameras_file(tmp_path / "transforms.json")
    np.testing.assert_allclose(cam.K, [[100, 0, 50], [0, 100, 40], [0, 0, 1]])
    # identity OpenGL c2w looks down -z: in OpenCV the camera's z axis is world -z
    np.testing.assert_allclose(cam.world_to_cam[:3, :3], np.diag([1.0, -1.0, -1.0]))


@pytest.mark.parametrize("text", ["", "{", '{"frames": []}', '{"frames": [{"file_path": "a"}]}'])
def test_bad_transforms_json(tmp_path, text):
    (tmp_path / "transforms.json").write_text(text)
    with pytest.raises(SceneFormatError):
        load_cameras_file(tmp_path / "transforms.json")


def test_not_a_camera_source(tmp_path):
    with pytest.raises(SceneFormatError, match="not a COLMAP"):
        load_cameras_file(tmp_path)
    with pytest.raises(SceneFormatError, match="no such"):
        load_cameras_file(tmp_path / "nope.json")
