"""Grasp geometry (scene_kd.query.grasp) on point sets built here: boxes on a table with known relevancy."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from scene_kd.errors import SceneKDError
from scene_kd.query.grasp import GraspConfig, find_grasp, voxel_components


def box_surface(center, extent, yaw=0.0, spacing=0.005, rng=None):
    """Points on the five visible faces (no bottom) of a box [center, extent] rotated by yaw about z."""
    rng = rng or np.random.default_rng(0)
    ex, ey, ez = extent
    area = ex * ey + 2 * (ex * ez + ey * ez)
    n = int(area / spacing**2)
    face = rng.choice(5, size=n, p=np.array([ex * ey, ex * ez, ex * ez, ey * ez, ey * ez]) / area)
    u, v = rng.random(n), rng.random(n)
    p = np.empty((n, 3))
    p[:, 0] = (u - 0.5) * ex
    p[:, 1] = (v - 0.5) * ey
    p[:, 2] = np.where(face == 0, ez / 2, (v - 0.5) * ez)
    side = face >= 1
    p[side & (face == 1), 1] = -ey / 2
    p[side & (face == 2), 1] = ey / 2
    p[face >= 3, 1] = (v[face >= 3] - 0.5) * ey
    p[face >= 3, 2] = (u[face >= 3] - 0.5) * ez
    p[face == 3, 0] = -ex / 2
    p[face == 4, 0] = ex / 2
    p[(face == 1) | (face == 2), 2] = (v[(face == 1) | (face == 2)] - 0.5) * ez
    R = Rotation.from_euler("z", yaw).as_matrix()
    return p @ R.T + np.asarray(center)


def table(size=0.6, spacing=0.01):
    g = np.arange(-size / 2, size / 2, spacing)
    x, y = np.meshgrid(g, g)
    return np.stack([x.ravel(), y.ravel(), np.zeros(x.size)], axis=1)


def inside(point, center, extent, yaw=0.0, tol=1e-6):
    R = Rotation.from_euler("z", yaw).as_matrix()
    local = R.T @ (np.asarray(point) - np.asarray(center))
    return bool(np.all(np.abs(local) <= np.asarray(extent) / 2 + tol))


def scene_with(boxes, rel_values, rng_seed=0):
    rng = np.random.default_rng(rng_seed)
    parts, rel = [table()], [np.full(len(table()), 0.3)]
    for (center, extent, yaw), r in zip(boxes, rel_values, strict=False):
        pts = box_surface(center, extent, yaw, rng=rng)
        parts.append(pts)
        rel.append(np.clip(r + rng.normal(0, 0.02, len(pts)), 0, 1))
    return np.concatenate(parts), np.concatenate(rel)


@pytest.mark.parametrize("yaw", [0.0, 0.6, np.pi / 2])
def test_top_grasp_on_box_closes_across_smallest_extent(yaw):
    center, extent = np.array([0.1, -0.05, 0.05]), np.array([0.06, 0.12, 0.10])
    xyz, rel = scene_with([(center, extent, yaw)], [0.9])
    cfg = GraspConfig(margin=0.01)
    g = find_grasp(xyz, rel, query="box", cfg=cfg)
    assert g.found and g.approach_kind == "top" and g.reachable
    assert inside(g.position, center, extent, yaw)
    assert np.allclose(g.approach, [0, 0, -1])
    # closing along the box's short (x) axis in its own frame
    short_axis = Rotation.from_euler("z", yaw).as_matrix()[:, 0]
    assert abs(np.dot(g.closing, short_axis)) > 0.99
    assert extent.min() <= g.width <= extent.min() + cfg.margin + 0.005
    # pose quaternion encodes the gripper frame (x = y × z, y = closing, z = approach)
    R = Rotation.from_quat(g.orientation_xyzw).as_matrix()
    assert np.allclose(R[:, 2], g.approach, atol=1e-6) and np.allclose(R[:, 1], g.closing, atol=1e-6)
    # OBB covers the box
    assert np.allclose(sorted(g.obb.extent), sorted(extent), atol=0.01)
    assert np.allclose(g.obb.center, center, atol=0.01)
    # surface normal at the top points up
    assert g.normal[2] > 0.9
    assert 0.85 < g.score <= 1.0 and g.point_count > 100


def test_world_coordinates_use_the_origin():
    center, extent = np.array([0.0, 0.0, 0.04]), np.array([0.05, 0.08, 0.08])
    xyz, rel = scene_with([(center, extent, 0.0)], [0.9])
    origin = np.array([870200.0, 6617083.0, 120.0])
    local = find_grasp(xyz, rel, query="a")
    world = find_grasp(xyz, rel, query="a", origin=origin)
    assert np.allclose(np.array(world.position) - origin, local.position, atol=1e-6)
    assert np.allclose(np.array(world.obb.center) - origin, local.obb.center, atol=1e-6)


def test_largest_cluster_wins_over_a_smaller_relevant_one():
    big = (np.array([-0.15, 0.0, 0.05]), np.array([0.08, 0.14, 0.10]), 0.0)
    small = (np.array([0.2, 0.15, 0.02]), np.array([0.03, 0.03, 0.04]), 0.0)
    xyz, rel = scene_with([big, small], [0.9, 0.9])
    g = find_grasp(xyz, rel, query="thing")
    assert g.found and inside(g.position, big[0], big[1])


def test_low_relevancy_is_refused_not_guessed():
    xyz, rel = scene_with([(np.array([0, 0, 0.05]), np.array([0.05, 0.05, 0.1]), 0.0)], [0.52])
    g = find_grasp(xyz, rel, query="giraffe")
    assert not g.found and g.position is None
    assert "no confident target" in g.reason and "giraffe" in g.reason
    assert g.to_json()["found"] is False


def test_tiny_cluster_is_refused():
    xyz = table()
    rel = np.full(len(xyz), 0.2)
    rel[:3] = 0.95
    g = find_grasp(xyz, rel, query="speck", cfg=GraspConfig(min_points=8))
    assert not g.found and "only 3 point" in g.reason


def test_blocked_top_gives_side_approach_from_the_sensor_side():
    center, extent = np.array([0.0, 0.0, 0.05]), np.array([0.05, 0.12, 0.10])
    xyz, rel = scene_with([(center, extent, 0.0)], [0.9])
    # a shelf just above the object
    g2 = np.arange(-0.1, 0.1, 0.01)
    sx, sy = np.meshgrid(g2, g2)
    shelf = np.stack([sx.ravel(), sy.ravel(), np.full(sx.size, 0.13)], axis=1)
    xyz = np.concatenate([xyz, shelf])
    rel = np.concatenate([rel, np.full(len(shelf), 0.3)])
    sensor = np.array([0.0, -1.0, 0.3])
    g = find_grasp(xyz, rel, query="box", sensor=sensor, cfg=GraspConfig(clearance=0.1))
    assert g.found and g.approach_kind == "side" and g.reachable
    assert abs(g.approach[2]) < 1e-9 and g.approach[1] > 0.99  # horizontal, pointing away from the sensor
    assert inside(g.position, center, extent)


def test_max_width_refuses_objects_too_wide():
    xyz, rel = scene_with([(np.array([0, 0, 0.05]), np.array([0.2, 0.25, 0.1]), 0.0)], [0.9])
    g = find_grasp(xyz, rel, query="tray", cfg=GraspConfig(max_width=0.08))
    assert not g.found and "wider" in g.reason


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(SceneKDError, match="empty"):
        find_grasp(np.zeros((0, 3)), np.zeros(0), query="x")
    with pytest.raises(SceneKDError, match="relevancy has 2 values for 3 points"):
        find_grasp(np.zeros((3, 3)), np.zeros(2), query="x")
    with pytest.raises(SceneKDError, match="NaN"):
        find_grasp(np.zeros((3, 3)), np.full(3, np.nan), query="x")


def test_voxel_components_separates_gaps_and_joins_touching_voxels():
    a = np.array([[0, 0, 0], [0.1, 0, 0], [0.2, 0.1, 0]])
    b = a + np.array([1.0, 0, 0])
    comp = voxel_components(np.concatenate([a, b]), voxel_size=0.1)
    assert len(set(comp[:3])) == 1 and len(set(comp[3:])) == 1 and comp[0] != comp[3]
