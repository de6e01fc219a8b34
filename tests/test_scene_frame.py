"""Up axis and robust bounds for captures without cameras (scene_kd/render/scene_frame.py)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

from scene_kd.render.scene_frame import (
    estimate_scene_frame,
    gaussian_normals_and_weights,
    push_out_of_dense,
)
from scene_kd.scene.synthetic import as_splats, make_tabletop


@pytest.fixture(scope="module")
def splats():
    scene, _ = make_tabletop(seed=2, points=8000)
    return as_splats(scene, seed=2)


def _rotated(splats, R: Rotation, floaters: int, rng):
    means = R.apply(splats.xyz.astype(np.float64))
    q = splats.quats.astype(np.float64)
    quats = (R * Rotation.from_quat(q[:, [1, 2, 3, 0]])).as_quat()[:, [3, 0, 1, 2]]
    log_scales, logits = splats.log_scales, splats.opacity_logits
    if floaters:
        span = np.ptp(means, axis=0).max()
        far = rng.normal(0, 4 * span, (floaters, 3)) + means.mean(0)
        means = np.concatenate([means, far])
        quats = np.concatenate([quats, Rotation.random(floaters, random_state=1).as_quat()[:, [3, 0, 1, 2]]])
        log_scales = np.concatenate([log_scales, np.full((floaters, 3), np.log(0.05), np.float32)])
        logits = np.concatenate([logits, np.full(floaters, -2.0, np.float32)])
    return means, quats, log_scales, logits


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_up_axis_of_a_rotated_tabletop_with_floaters(splats, seed):
    rng = np.random.default_rng(seed)
    R = Rotation.random(random_state=seed)
    means, quats, log_scales, logits = _rotated(splats, R, floaters=len(splats) // 20, rng=rng)
    normals, w = gaussian_normals_and_weights(quats, log_scales, logits)
    frame = estimate_scene_frame(means, normals=normals, weights=w)
    true_up = R.apply([0.0, 0.0, 1.0])
    assert np.degrees(np.arccos(np.clip(frame.up @ true_up, -1, 1))) < 10
    clean_n, clean_w = gaussian_normals_and_weights(*_rotated(splats, R, 0, rng)[1:])
    clean = estimate_scene_frame(means[: len(splats)], normals=clean_n, weights=clean_w)
    assert abs(frame.radius - clean.radius) < 0.25 * clean.radius  # floaters do not set the orbit radius
    assert np.linalg.norm(frame.center - clean.center) < 0.25 * clean.radius
    naive = np.linalg.norm(np.ptp(means, axis=0)) / 2
    assert frame.radius < 0.5 * naive  # what the min/max bounds would have used


def test_point_cloud_with_normals_is_z_up():
    scene, _ = make_tabletop(seed=0, points=6000)
    frame = estimate_scene_frame(scene.xyz, normals=scene.normals)
    assert frame.up @ np.array([0, 0, 1.0]) > 0.98


def test_camera_is_pushed_out_of_dense_gaussians():
    rng = np.random.default_rng(0)
    cloud = rng.normal(0, 1, (5000, 3))
    tree = cKDTree(cloud)
    pos = push_out_of_dense(np.array([0.5, 0, 0]), np.zeros(3), tree, probe=0.3, max_factor=10)
    assert len(tree.query_ball_point(pos, 0.3)) == 0 and np.linalg.norm(pos) > 0.5
    outside = np.array([20.0, 0, 0])
    assert np.allclose(push_out_of_dense(outside, np.zeros(3), tree, probe=0.3), outside)


def test_orbit_views_of_a_rotated_splat_capture_look_down_its_up_axis(splats):
    from scene_kd.render.config import RenderConfig
    from scene_kd.render.views import plan_views
    from scene_kd.scene.types import GaussianSplats

    R = Rotation.random(random_state=7)
    means, quats, log_scales, logits = _rotated(splats, R, floaters=len(splats) // 20, rng=np.random.default_rng(7))
    n = len(means)
    scene = GaussianSplats(means=means.astype(np.float32), quats=quats.astype(np.float32), log_scales=log_scales,
                           opacity_logits=logits, sh=np.zeros((n, 1, 3), np.float32), origin=np.zeros(3))
    cams = plan_views(scene, RenderConfig(preset="orbit", width=64, height=64, levels=1))
    top = next(c for c in cams if c.name.endswith("top"))
    forward = np.asarray(top.world_to_cam)[2, :3]  # OpenCV: the camera looks along +z of its frame
    assert forward @ R.apply([0.0, 0.0, -1.0]) > np.cos(np.radians(10))
    tree = cKDTree(means[: len(splats)])
    for c in cams:  # no camera sits inside the object's Gaussians
        centre = -np.asarray(c.world_to_cam)[:3, :3].T @ np.asarray(c.world_to_cam)[:3, 3]
        assert not tree.query_ball_point(centre, 0.01)
