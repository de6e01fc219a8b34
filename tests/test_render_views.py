"""View planning by ground sampling distance, the plan summary, and per-view culling."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from scene_kd.errors import SceneKDError
from scene_kd.render.config import RenderConfig
from scene_kd.render.cull import (
    build_point_grid,
    render_point_view_culled,
    view_point_indices,
    visible_points_culled,
)
from scene_kd.render.points import estimate_point_radii, visible_in_view
from scene_kd.render.stage import render_point_view
from scene_kd.render.views import MAX_DENSITY, coverage_report, plan_views, plan_views_with_summary
from scene_kd.scene.types import PointCloud


def flat_tile(size: float = 1000.0, n: int = 20000, seed: int = 0) -> PointCloud:
    """Points on a gently undulating plane of ``size`` x ``size`` metres with a few 10 m boxes."""
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, size, (n, 2))
    z = 0.5 * np.sin(xy[:, 0] / 50.0)
    box = (np.floor(xy / (size / 5)) % 2 == 0).all(1) & (rng.random(n) < 0.5)
    z[box] += 10.0
    labels = box.astype(np.int32)
    return PointCloud(xyz=np.c_[xy, z], labels=labels, label_names={0: "ground", 1: "building"})


def open_ground(size: float, n: int, seed: int = 0) -> PointCloud:
    """Points on a gently undulating plane of ``size`` x ``size`` metres, nothing on it: what frames a point sees it."""
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, size, (n, 2))
    return PointCloud(xyz=np.c_[xy, 0.5 * np.sin(xy[:, 0] / 50.0)], labels=np.zeros(n, dtype=np.int32),
                      label_names={0: "ground"})


def test_gsd_levels_follow_the_extent():
    scene = flat_tile()
    cams, summary = plan_views_with_summary(scene, RenderConfig())  # 512 px, gsd (1.0, 0.3, 0.1), obliques 0.2
    levels = summary["levels"]
    assert [lv["kind"] for lv in levels] == ["nadir", "nadir", "nadir", "oblique"]
    assert [lv["gsd_m"] for lv in levels] == [1.0, 0.3, 0.1, 0.2]
    nadir = levels[:3]
    assert nadir[0]["views"] < nadir[1]["views"] < nadir[2]["views"]
    # 1 km at 0.1 m/px: usable footprint (512 - 2 * 10) * 0.1 = 49.2 m, 20 % overlap -> 26 x 26 views
    assert nadir[2]["grid"] == [26, 26] and nadir[2]["views"] == 676
    for lv in nadir:  # measured metres per pixel on the scene agree with the plan
        assert lv["gsd_seen_m"] == pytest.approx(lv["gsd_m"], rel=0.05)
    assert summary["views"] == len(cams) == sum(lv["views"] for lv in levels)
    assert summary["megapixels"] == pytest.approx(len(cams) * 512 * 512 / 1e6, abs=1e-3)
    # the fixed plan keeps 30 views whatever the extent: its finest level is far coarser
    old_cams, old = plan_views_with_summary(scene, RenderConfig(preset="aerial-fixed"))
    assert len(old_cams) == 30 and min(lv["gsd_seen_m"] for lv in old["levels"][:3]) > 0.6
    assert all(lv["gsd_m"] is None for lv in old["levels"])


def test_small_scenes_clamp_and_merge_levels():
    scene = flat_tile(size=40.0, n=4000)
    cams, summary = plan_views_with_summary(scene, RenderConfig(min_views=0))  # the extent-driven plan
    gsds = [lv["gsd_m"] for lv in summary["levels"] if lv["kind"] == "nadir"]
    # 1.0 and 0.3 m/px are both coarser than the 40 m square needs (40 / 492 * 1.2 = 0.098 m/px): one level
    assert len(gsds) == 1 and gsds[0] == pytest.approx(40 / 492 * 1.2, rel=0.05)
    assert summary["levels"][0]["views"] == 1
    assert sorted({c.level for c in cams}) == [0, 1]


def test_small_scenes_get_min_views_per_point():
    scene = open_ground(60.0, 7200)
    cfg = RenderConfig()  # min_views 14
    sparse_cams, sparse = plan_views_with_summary(scene, replace(cfg, min_views=0))  # the extent-driven plan
    cams, summary = plan_views_with_summary(scene, cfg)
    assert sparse["views_per_point"] < cfg.min_views <= summary["views_per_point"]
    # measured the way lifting sees (z-buffered, occlusion-tested): the median point is seen >= min_views times
    assert coverage_report(scene, sparse_cams, cfg)["seen_min_views"] < 0.5
    covered = coverage_report(scene, cams, cfg)
    assert covered["seen_min_views"] >= 0.5 and covered["seen_1"] == 1.0
    # every level keeps its GSD (planned and seen) and gets several views: density 2, so a level that fitted one
    # view gets 2 x 2 and the obliques 8 headings at each of 2 x 2 look-at points
    assert [lv["gsd_m"] for lv in summary["levels"]] == [lv["gsd_m"] for lv in sparse["levels"]]
    assert sparse["levels"][0]["views"] == 1 and summary["levels"][0]["views"] == 4
    for lv, before in zip(summary["levels"], sparse["levels"], strict=True):
        assert lv["views"] >= max(before["views"], 4) and lv["gsd_seen_m"] == pytest.approx(lv["gsd_m"], rel=0.05)
    assert sparse["levels"][-1]["headings"] == 4 and summary["levels"][-1]["headings"] == 8
    assert len({c.name for c in cams}) == len(cams) <= 48
    # a target out of reach stops at MAX_DENSITY
    _, capped = plan_views_with_summary(scene, replace(cfg, min_views=10_000))
    assert capped["levels"][-1]["headings"] == 4 * MAX_DENSITY


def test_large_tiles_keep_the_extent_driven_plan():
    scene = flat_tile()  # 1 km square: 1442 views, a typical point framed by ~24 of them
    cams, summary = plan_views_with_summary(scene, RenderConfig())
    base = plan_views(scene, RenderConfig(min_views=0))
    assert summary["views_per_point"] >= RenderConfig().min_views
    assert len(cams) == len(base) == 1442
    assert [c.name for c in cams] == [c.name for c in base]


def test_bad_plan_settings_are_clear_errors():
    scene = flat_tile(size=100.0, n=2000)
    for bad in (dict(gsd=()), dict(gsd=(0.1, 0.0)), dict(gsd=(float("nan"),)), dict(overlap=0.95),
                dict(oblique_gsd=-1.0), dict(min_views=-1)):
        with pytest.raises(SceneKDError):
            plan_views(scene, replace(RenderConfig(), **bad))
    with pytest.raises(SceneKDError, match="aerial-fixed"):
        plan_views(scene, replace(RenderConfig(), preset="nope"))
    assert not [c for c in plan_views(scene, RenderConfig(oblique_gsd=0.0)) if c.name.startswith("oblique")]


def test_culled_renders_equal_full_renders_and_see_fewer_points():
    from scene_kd.scene.synthetic import make_urban

    scene = make_urban(points=30000, seed=2)
    cfg = RenderConfig(width=160, height=120, gsd=(1.0, 0.3), oblique_gsd=0.4)
    xyz = torch.from_numpy(scene.xyz)
    radius = estimate_point_radii(xyz)
    grid = build_point_grid(xyz, points_per_cell=256)
    cams = plan_views(scene, cfg)
    fine = [c for c in cams if c.level == 1]
    assert len(fine) >= 4
    sizes = []
    for cam in cams[:: max(1, len(cams) // 10)] + fine[:3]:
        full = render_point_view(scene, cam, cfg, xyz, radius)
        culled, idx = render_point_view_culled(scene, cam, cfg, xyz, radius, grid)
        assert np.array_equal(full.ids, culled.ids) and np.array_equal(full.depth, culled.depth)
        assert np.array_equal(full.labels, culled.labels) and np.array_equal(full.rgb, culled.rgb)
        # every point drawn is among the culled indices
        assert np.isin(np.unique(full.ids[full.ids >= 0]), idx).all()
        if cam.level == 1:
            sizes.append(len(idx))
        vis, pix = visible_in_view(xyz, cam, full.depth, tolerance=0.25, border_px=10)
        cidx, cpix = visible_points_culled(xyz, cam, culled.depth, grid, tolerance=0.25, border_px=10)
        assert np.array_equal(np.flatnonzero(vis.numpy()), cidx) and torch.equal(pix[vis], cpix)
    assert max(sizes) < 0.6 * len(scene)  # a fine view reads a fraction of the tile
    # a camera looking away from the scene reads nothing
    away = cams[0]
    away = replace(away, world_to_cam=np.diag([1.0, -1.0, -1.0, 1.0]) @ away.world_to_cam)  # turned to look up
    assert len(view_point_indices(grid, away)) == 0
