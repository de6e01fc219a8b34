"""How well a set of views covers a scene: per-point visibility counts (occlusion-tested like lifting), overall and
per granularity level."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np
import torch

from scene_kd.render.config import RenderConfig
from scene_kd.render.points import decode_zbuffer, estimate_point_radii, visible_in_view, zbuffer_points
from scene_kd.scene.types import Camera

COVERAGE_TOLERANCE = 0.02
"""Relative depth tolerance of the coverage count (tighter than lifting's OpenScene 0.25, which at aerial
distances of ~100 m would accept points 25 m behind the visible surface)."""


def view_counts(
    xyz: np.ndarray | torch.Tensor,
    cameras: list[Camera],
    depths: list[np.ndarray] | None = None,
    *,
    point_radius: float | torch.Tensor = 0.0,
    point_size_px: float = 0.0,
    tolerance: float = COVERAGE_TOLERANCE,
    border_px: int = 10,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-point visibility counts: (total [N] int32, per camera level [L, N] int32 with L = max level + 1).

    Uses the renders' depth images when given, else z-buffers each view with the same footprint."""

    xyz_t = torch.as_tensor(np.asarray(xyz, dtype=np.float32))
    n_levels = max((c.level for c in cameras), default=0) + 1
    per_level = np.zeros((n_levels, len(xyz_t)), dtype=np.int32)
    for i, cam in enumerate(cameras):
        if depths is not None:
            depth = depths[i]
        else:
            zbuf = zbuffer_points(xyz_t, cam, point_radius=point_radius, point_size_px=point_size_px)
            depth = decode_zbuffer(zbuf, cam.height, cam.width)[0]
        vis, _ = visible_in_view(xyz_t, cam, depth, tolerance=tolerance, border_px=border_px)
        per_level[cam.level] += vis.numpy().astype(np.int32)
    return per_level.sum(0).astype(np.int32), per_level


def coverage_from_counts(total: np.ndarray, per_level: np.ndarray, cameras: list[Camera], min_views: int = 3) -> dict:
    """Coverage summary: fraction of points seen in >= 1, >= 3 and >= min_views views, overall and per level."""
    n = max(len(total), 1)
    views_per_level: dict[int, int] = defaultdict(int)
    for c in cameras:
        views_per_level[c.level] += 1
    levels = {}
    for level in range(per_level.shape[0]):
        if views_per_level.get(level, 0) == 0:
            continue
        levels[str(level)] = {"views": views_per_level[level], "seen_1": float((per_level[level] >= 1).sum() / n),
                              "seen_3": float((per_level[level] >= 3).sum() / n)}
    return {
        "points": int(len(total)), "views": len(cameras),
        "seen_1": float((total >= 1).sum() / n), "seen_3": float((total >= 3).sum() / n),
        "min_views": int(min_views), "seen_min_views": float((total >= min_views).sum() / n),
        "mean_views": float(total.mean()) if len(total) else 0.0, "tolerance": COVERAGE_TOLERANCE,
        "levels": levels,
    }


def coverage_report(scene: Any, cameras: list[Camera], cfg: RenderConfig, depths: list[np.ndarray] | None = None) -> dict:
    """Fraction of the scene's points seen (occlusion-tested like lifting) in >= 1 and >= 3 views, overall and per
    level. ``depths``: the views' depth images when already rendered (else each view is z-buffered here)."""

    radius: float | torch.Tensor = cfg.point_radius
    if depths is None and radius <= 0 and cfg.point_size_px <= 0:
        radius = estimate_point_radii(scene.xyz)
    total, per_level = view_counts(scene.xyz, cameras, depths, point_radius=radius, point_size_px=cfg.point_size_px)
    return coverage_from_counts(total, per_level, cameras, cfg.min_views)
