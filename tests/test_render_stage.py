"""View planning, coverage, the render stage (skip / force / outputs) and `scene-kd render`."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from scene_kd.cli import main as cli_main
from scene_kd.errors import SceneKDError
from scene_kd.pipeline import render_stage
from scene_kd.render.config import RenderConfig
from scene_kd.render.types import iter_renders, load_cameras
from scene_kd.render.views import coverage_report, look_at, plan_views
from scene_kd.scene.types import GaussianSplats, PointCloud


def block_scene(n_ground: int = 6000, seed: int = 0) -> PointCloud:
    """A 40 x 30 m ground plane (label 1) with a 8 x 6 x 10 m building (label 2, walls + roof), in UTM-like
    coordinates so the origin matters."""
    rng = np.random.default_rng(seed)
    ground = np.c_[rng.uniform(0, 40, (n_ground, 2)) * [1, 0.75], np.zeros(n_ground)]
    ground = ground[~((np.abs(ground[:, 0] - 20) < 4) & (np.abs(ground[:, 1] - 15) < 3))]
    roof = np.c_[rng.uniform([16, 12], [24, 18], (600, 2)), np.full(600, 10.0)]
    walls = []
    for x0, x1, y0, y1 in ((16, 24, 12, 12), (16, 24, 18, 18), (16, 16, 12, 18), (24, 24, 12, 18)):
        t = rng.uniform(0, 1, (500, 2))
        walls.append(np.c_[x0 + (x1 - x0) * t[:, 0], y0 + (y1 - y0) * t[:, 0], 10 * t[:, 1]])
    building = np.vstack([roof, *walls])
    xyz = np.vstack([ground, building]) + [500000.0, 4000000.0, 100.0]
    labels = np.r_[np.ones(len(ground)), np.full(len(building), 2)].astype(np.int32)
    rgb = np.where(labels[:, None] == 1, [90, 140, 60], [180, 80, 60]).astype(np.uint8)
    return PointCloud.from_world(xyz, rgb=rgb, labels=labels, instances=labels * 10,
                                 label_names={1: "ground", 2: "building"})


SMALL = RenderConfig(width=64, height=48, gsd=(1.0, 0.6, 0.4), oblique_gsd=0.7)  # GSDs for 64-px views of a 40 m block


def test_aerial_plan_levels_and_geometry():
    scene = block_scene()
    cams = plan_views(scene, SMALL)
    levels = sorted({c.level for c in cams})
    assert levels == [0, 1, 2, 3]  # 3 nadir altitudes + the oblique level
    nadir = [c for c in cams if c.level < 3]
    alts = {c.level: c.center[2] for c in nadir}
    assert alts[0] > alts[1] > alts[2] > 10.0  # coarse to fine, all above the roof
    for c in nadir:
        assert np.allclose(c.world_to_cam[2, :3], [0, 0, -1])  # looking straight down
    oblique = [c for c in cams if c.level == 3]
    assert len(oblique) >= 4
    pitch = [np.degrees(np.arcsin(-c.world_to_cam[2, 2])) for c in oblique]
    assert np.allclose(pitch, 45.0, atol=1e-6)
    assert 14 <= len(cams) <= 60


def test_orbit_and_street_plans():
    scene = block_scene()
    orbit = plan_views(scene, replace(SMALL, preset="orbit"))
    assert sorted({c.level for c in orbit}) == [0, 1, 2]
    centre = (scene.xyz.min(0) + scene.xyz.max(0)) / 2
    for c in orbit:  # every orbit camera looks at the centre
        d = centre - c.center
        assert np.dot(c.world_to_cam[2, :3], d / np.linalg.norm(d)) > 0.999
    street = plan_views(scene, replace(SMALL, preset="street"))
    assert len(street) % 4 == 0 and len(street) >= 4
    for c in street:
        assert abs(c.world_to_cam[2, 2]) < 1e-9  # horizontal
        assert c.center[2] == pytest.approx(1.6, abs=0.2)  # 1.6 m above the ground (z = 0 local)
        inside = (np.abs(c.center[0] - 20) < 4) & (np.abs(c.center[1] - 15) < 3)
        assert not inside  # not inside the building


def test_coverage_report_counts_views():
    scene = block_scene()
    cams = plan_views(scene, SMALL)
    cov = coverage_report(scene, cams, SMALL)
    assert cov["views"] == len(cams) and cov["points"] == len(scene)
    assert cov["seen_1"] > 0.97 and cov["seen_3"] > 0.8
    assert set(cov["levels"]) == {"0", "1", "2", "3"}
    assert cov["levels"]["3"]["seen_1"] > cov["levels"]["2"]["seen_1"]  # obliques see the walls too
    one = coverage_report(scene, cams[:1], SMALL)
    assert one["seen_3"] == 0.0 and 0.3 < one["seen_1"] < 0.95


def test_render_stage_outputs_skip_and_force(tmp_path):
    scene = block_scene()
    run = tmp_path / "run"
    summary = render_stage(run, scene, SMALL, preview=True)
    assert not summary["skipped"] and summary["views"] >= 14
    views = json.loads((run / "views.json").read_text())
    assert views["scene_kind"] == "points" and views["preset"] == "aerial"
    assert views["levels"] == [0, 1, 2, 3] and len(views["cameras"]) == summary["views"]
    assert views["coverage"]["seen_1"] > 0.97
    assert (run / "scene.safetensors").exists() and (run / "plots" / "views.png").exists()
    n = 0
    for _i, r in iter_renders(run):
        n += 1
        assert r.rgb.shape == (48, 64, 3) and r.ids.shape == (48, 64)
        hit = r.ids >= 0
        assert np.array_equal(r.labels[hit], scene.labels[r.ids[hit]])
        assert np.array_equal(r.instances[hit], scene.instances[r.ids[hit]])
        assert np.isfinite(r.depth[hit]).all() and np.isinf(r.depth[~hit]).all()
    assert n == summary["views"]
    stages = json.loads((run / "stages.json").read_text())
    assert stages["render"]["summary"]["views"] == n
    mtime = (run / "renders" / "0000.npz").stat().st_mtime_ns
    again = render_stage(run, scene, SMALL)
    assert again["skipped"] and again["views"] == n
    assert (run / "renders" / "0000.npz").stat().st_mtime_ns == mtime
    forced = render_stage(run, scene, SMALL, force=True)
    assert not forced["skipped"]
    # a different config re-renders, and leftovers of the longer plan are removed
    fewer = render_stage(run, scene, replace(SMALL, gsd=(1.0,), min_views=0))
    assert not fewer["skipped"] and fewer["views"] < n
    assert not (run / "renders" / f"{n - 1:04d}.npz").exists()
    assert len(load_cameras(run)) == fewer["views"]


def test_render_stage_gaussians(tmp_path):
    rng = np.random.default_rng(0)
    n = 3000
    means = np.c_[rng.uniform(0, 20, (n, 2)), rng.uniform(0, 0.2, n)]
    splats = GaussianSplats(means=means, quats=np.tile([1.0, 0, 0, 0], (n, 1)),
                            log_scales=np.log(np.tile([0.3, 0.3, 0.05], (n, 1))), opacity_logits=np.full(n, 3.0),
                            sh=rng.uniform(-1, 1, (n, 1, 3)), labels=(means[:, 0] > 10).astype(np.int32))
    run = tmp_path / "g"
    summary = render_stage(run, splats, replace(SMALL, preset="aerial-fixed", levels=1))
    assert summary["views"] == 17  # 1 nadir + 16 oblique
    _, r = next(iter_renders(run))
    assert r.topk_ids.shape == (48, 64, 4) and r.alpha is not None
    hit = r.ids >= 0
    assert hit.mean() > 0.5
    assert np.array_equal(r.ids[hit], r.topk_ids[hit][:, 0])
    assert (r.topk_weights[..., 0] >= r.topk_weights[..., 1]).all()
    assert np.array_equal(r.labels[hit], splats.labels[r.ids[hit]])


def test_bad_inputs(tmp_path):
    scene = block_scene()
    with pytest.raises(SceneKDError, match="unknown view preset"):
        render_stage(tmp_path / "a", scene, replace(SMALL, preset="helicopter"))
    with pytest.raises(SceneKDError, match="image size"):
        render_stage(tmp_path / "b", scene, replace(SMALL, width=0))
    with pytest.raises(SceneKDError, match="no points"):
        render_stage(tmp_path / "c", scene.subset(np.zeros(len(scene), bool)), SMALL)
    # a camera file whose only camera looks away from the scene
    c2w = np.linalg.inv(look_at(np.array([20, 15, 50.0]), np.array([20, 15, 100.0])))
    c2w_gl = c2w @ np.diag([1, -1, -1, 1])  # OpenCV -> OpenGL axes
    c2w_gl[:3, 3] += scene.origin
    cams_file = tmp_path / "transforms.json"
    cams_file.write_text(json.dumps({"fl_x": 50, "fl_y": 50, "cx": 32, "cy": 24, "w": 64, "h": 48,
                                     "frames": [{"file_path": "a.png", "transform_matrix": c2w_gl.tolist()}]}))
    with pytest.raises(SceneKDError, match="sees any point"):
        render_stage(tmp_path / "d", scene, replace(SMALL, preset=f"cameras:{cams_file}"))
    # the same camera turned around is fine and used as given
    c2w = np.linalg.inv(look_at(np.array([20, 15, 50.0]), np.array([20, 15, 0.0])))
    c2w_gl = c2w @ np.diag([1, -1, -1, 1])
    c2w_gl[:3, 3] += scene.origin
    cams_file.write_text(json.dumps({"fl_x": 50, "fl_y": 50, "cx": 32, "cy": 24, "w": 64, "h": 48,
                                     "frames": [{"file_path": "a.png", "transform_matrix": c2w_gl.tolist()}]}))
    ok = render_stage(tmp_path / "e", scene, replace(SMALL, preset=f"cameras:{cams_file}"))
    assert ok["views"] == 1 and ok["coverage"]["seen_1"] > 0.5


def test_cli_render(tmp_path, capsys):
    from scene_kd.scene.io import save_scene

    path = tmp_path / "scene.ply"
    save_scene(block_scene(3000), path)
    run = tmp_path / "run"
    rc = cli_main(["render", str(path), "--out", str(run), "--views", "orbit", "--width", "48", "--height", "32",
                   "--levels", "1", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["views"] == 13 and out["preset"] == "orbit" and "coverage" in out
    assert json.loads((run / "views.json").read_text())["cameras"][0]["width"] == 48
    assert cli_main(["render", str(path), "--out", str(run), "--views", "nope"]) == 2
    assert "unknown view preset" in capsys.readouterr().err
    assert cli_main(["render", str(path), "--out", str(run), "--width", "0"]) == 2
