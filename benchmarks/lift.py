"""Fusion speed: streamed sparse (point x mask) fusion vs a naive per-view dense accumulation, same inputs.

Scene: points on a synthetic city heightfield (ground + box buildings), 512x512 views at 3 altitudes (nadir with
a small random tilt), depth images from our z-buffer renderer, 2 mask levels per view (8x8 and 4x4 blocks),
random unit embeddings. Timed: fusion only (inputs in memory). Both paths use the same visibility test and
weights; the baseline builds a dense [N, M_view] weight matrix per view and multiplies it (then the same
per-granularity normalisation), and its output is checked against ours.

Default: 200k points x 20 views (< 90 s here); ``--full``: 1M points x 60 views (issue target: fusion <= 20 s).
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import torch


def make_inputs(n_points: int, n_views: int, *, size: int = 512, dim: int = 64, seed: int = 0):
    from scene_kd.render.points import render_points
    from scene_kd.scene.types import Camera

    rng = np.random.default_rng(seed)
    extent = 200.0
    xy = rng.uniform(0, extent, (n_points, 2))
    cells = 10
    heights = np.where(rng.random((cells, cells)) < 0.35, rng.uniform(6, 30, (cells, cells)), 0.0)
    cx = np.minimum((xy[:, 0] / extent * cells).astype(int), cells - 1)
    cy = np.minimum((xy[:, 1] / extent * cells).astype(int), cells - 1)
    xyz = np.c_[xy, heights[cx, cy]].astype(np.float32)
    cams = []
    levels = 3
    for v in range(n_views):
        level = v * levels // n_views
        h = (220.0, 140.0, 90.0)[level]
        f = size / 2 / np.tan(np.radians(30)) if level == 0 else size / 2 / np.tan(np.radians(25))
        c = rng.uniform(40, 160, 2)
        a, b = rng.uniform(-0.25, 0.25, 2)
        Rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
        Ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
        R = Rx @ Ry @ np.diag([1.0, -1.0, -1.0])
        T = np.eye(4)
        T[:3, :3] = R
        T[:3, 3] = -R @ np.array([c[0], c[1], h])
        K = np.array([[f, 0, size / 2], [0, f, size / 2], [0, 0, 1.0]])
        cams.append(Camera(K=K, world_to_cam=T, width=size, height=size, level=level))
    depths, masks, offset = [], [], 0
    for cam in cams:
        depths.append(torch.from_numpy(render_points(xyz, cam, point_size_px=3).depth))
        fine = np.arange(64).reshape(8, 8).repeat(size // 8, 0).repeat(size // 8, 1)
        coarse = 64 + np.arange(16).reshape(4, 4).repeat(size // 4, 0).repeat(size // 4, 1)
        masks.append(torch.from_numpy(np.stack([fine, coarse]).astype(np.int32) + offset))
        offset += 80
    emb = torch.nn.functional.normalize(torch.from_numpy(rng.standard_normal((offset, dim))).float(), dim=1)
    return torch.from_numpy(xyz), cams, depths, masks, emb


def naive_dense_fusion(xyz, cams, depths, masks, emb, cfg):
    """Baseline: per view a dense [N, M_view] weight matrix, W @ E accumulated per granularity."""
    from scene_kd.lift.fuse import _view_weights, normalise_rows
    from scene_kd.render.points import visible_in_view

    n = xyz.shape[0]
    acc: dict[int, torch.Tensor] = {}
    coverage = torch.zeros(n, dtype=torch.int32)
    for cam, depth, mask in zip(cams, depths, masks, strict=True):
        vis, pix = visible_in_view(xyz, cam, depth, tolerance=cfg.depth_tolerance, border_px=cfg.border_px)
        idx = vis.nonzero().squeeze(1)
        m = mask.reshape(mask.shape[0], -1)[:, pix[idx]].T.long()  # [n_vis, L]
        lo, hi = int(mask.min()), int(mask.max())
        w = _view_weights(xyz[idx], pix[idx], depth, cam, cfg, None)
        W = torch.zeros(n, hi - lo + 1)
        for lvl in range(m.shape[1]):
            W[idx, m[:, lvl] - lo] += w
        a = acc.setdefault(cam.level, torch.zeros(n, emb.shape[1]))
        a += W @ emb[lo : hi + 1]
        coverage[idx] += 1
    total = sum(normalise_rows(a) for a in acc.values()) / len(acc)
    return normalise_rows(total), coverage


def run(full: bool = False) -> dict:
    from scene_kd.lift.config import FuseConfig
    from scene_kd.lift.fuse import fuse_points

    n_points, n_views = (1_000_000, 60) if full else (200_000, 20)
    t0 = time.perf_counter()
    xyz, cams, depths, masks, emb = make_inputs(n_points, n_views)
    gen_s = time.perf_counter() - t0
    cfg = FuseConfig()
    t0 = time.perf_counter()
    feats, coverage, per = fuse_points(xyz, cams, depths, masks, emb, cfg)
    ours_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref, ref_cov = naive_dense_fusion(xyz, cams, depths, masks, emb, cfg)
    naive_s = time.perf_counter() - t0
    return {
        "points": n_points, "views": n_views, "image": "512x512", "mask_levels": 2, "dim": int(emb.shape[1]),
        "granularities": len(per), "threads": torch.get_num_threads(),
        "covered_fraction": round(float((coverage > 0).float().mean()), 4),
        "mean_views_per_point": round(float(coverage.float().mean()), 2),
        "input_generation_s": round(gen_s, 2),
        "fuse_s": round(ours_s, 3),
        "naive_dense_s": round(naive_s, 3),
        "speedup_vs_naive_dense": round(naive_s / ours_s, 2),
        "points_x_views_per_s": round(n_points * n_views / ours_s),
        "max_abs_diff_vs_naive": float((feats - ref).abs().max()),
        "coverage_equal": bool(torch.equal(coverage, ref_cov)),
        "target_full_s": 20.0,
    }


if __name__ == "__main__":
    print(json.dumps(run(full="--full" in sys.argv[1:]), indent=2))
