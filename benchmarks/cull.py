"""Per-view culling: time to render the finest aerial views of a 1 km^2 tile from all points vs. from the points
each view's frustum touches (scene_kd.render.cull), same run, identical outputs checked.

    .venv/bin/python benchmarks/cull.py [--points 2000000] [--views 5]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from scene_kd.render.config import RenderConfig
from scene_kd.render.cull import build_point_grid, render_point_view_culled
from scene_kd.render.stage import render_point_view
from scene_kd.render.views import plan_views_with_summary
from scene_kd.scene.types import PointCloud


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--points", type=int, default=2_000_000)
    ap.add_argument("--views", type=int, default=5)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 1000, (args.points, 2)).astype(np.float32)
    z = (0.5 * np.sin(xy[:, 0] / 50.0)).astype(np.float32)
    scene = PointCloud(xyz=np.c_[xy, z], labels=np.zeros(args.points, np.int32))
    del xy, z
    cfg = RenderConfig()
    cams, summary = plan_views_with_summary(scene, cfg)
    fine = [c for c in cams if c.level == 2]
    picks = [fine[i] for i in np.linspace(0, len(fine) - 1, args.views).astype(int)]
    xyz = torch.from_numpy(scene.xyz)
    radius = 0.3
    t0 = time.perf_counter()
    grid = build_point_grid(xyz)
    t_grid = time.perf_counter() - t0
    full_s, cull_s, seen = [], [], []
    for cam in picks:
        time.sleep(0.3)
        t0 = time.perf_counter()
        a = render_point_view(scene, cam, cfg, xyz, radius)
        full_s.append(time.perf_counter() - t0)
        time.sleep(0.3)
        t0 = time.perf_counter()
        b, idx = render_point_view_culled(scene, cam, cfg, xyz, radius, grid)
        cull_s.append(time.perf_counter() - t0)
        seen.append(len(idx))
        assert np.array_equal(a.ids, b.ids) and np.array_equal(a.depth, b.depth)
    out = {"points": args.points, "plan_views": summary["views"], "plan_megapixels": summary["megapixels"],
           "finest_level_views": len(fine), "grid_build_s": round(t_grid, 3), "grid_cells": len(grid.lo),
           "full_render_s_median": round(float(np.median(full_s)), 4),
           "culled_render_s_median": round(float(np.median(cull_s)), 4),
           "speedup": round(float(np.median(full_s) / np.median(cull_s)), 1),
           "points_per_view_median": int(np.median(seen)), "identical": True}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
