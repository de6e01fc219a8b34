"""View planning: cameras at several granularities for a scene, and how well they cover it.

Scenes are z-up in their local frame (LAS/LAZ, the synthetic scenes). Cameras are OpenCV pinholes
(x right, y down, z forward). Presets:

* ``aerial``: levels by ground sampling distance (GSD, metres per pixel at the median surface; ``cfg.gsd``, coarse
  to fine = level 0, 1, ...): each level is a nadir grid whose view count follows from the extent, the image size
  and ``cfg.overlap`` (a 1 km square at 0.1 m/px, 512 px, 20 % overlap: 26 x 26 views), plus one oblique level
  (index = number of nadir levels) at ``cfg.oblique_gsd``: 45 deg down-looking views from 4 diagonal headings at each
  cell of a grid spaced like a nadir level of that GSD, so every facade of an axis-aligned city faces two of them.
  On a small scene, whose coarse levels merge into one view, that extent-driven plan frames a typical point in
  too few views to outvote a teacher's wrong masks; then the plan densifies (denser, shifted grids, obliques from
  more headings, every level at its GSD) until ``cfg.min_views`` views frame the median point.
  :func:`plan_aerial_levels` also returns each level's GSD, view count and megapixels (the teacher's work).
* ``aerial-fixed``: the earlier plan, whatever the extent: nadir grids at ``cfg.levels`` altitudes (level 0 = one
  view of the whole extent at altitude h0, level l at h0 / (l + 1), on a grid with 15 % overlap) plus 16 obliques
  on a 2 x 2 grid. 3 levels, square-ish scene -> 1 + 4 + 9 + 16 = 30 views (on a 1 km tile: 0.77 m/px at best).
* ``orbit``: ``cfg.levels`` radii (the whole bounding sphere in view at level 0, then x0.7, x0.5), each with
  6 headings at 20 deg and 6 at 50 deg elevation (staggered) plus one top view -> 13 views per level.
* ``street``: up to 10 positions on open ground (grid cells with no structure above 0.5 m) in the inner 70 % of
  the extent, spread out by farthest-point sampling, cameras 1.6 m above the ground looking horizontally at 4 headings (90 deg FOV);
  a single level 0.
* ``cameras:FILE``: cameras imported from transforms.json / COLMAP, used as given (or scaled to a requested
  image size, intrinsics scaled with it).

Modules: this one dispatches the presets, plans street views and summarises a plan (:func:`plan_summary`);
render/aerial.py plans the aerial grids, render/orbit.py the orbits, render/footprint.py finds the grid views no
point can reach, render/coverage.py counts how often each point is seen and render/budget.py states a plan and
refuses one over the budget. Their public names stay importable from here.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scene_kd.errors import SceneKDError
from scene_kd.render.aerial import (  # noqa: F401 (public here too: callers plan views from this module)
    AERIAL_FOV_DEG,
    FRAMING_SAMPLE,
    LIFT_BORDER_PX,
    MAX_DENSITY,
    LevelPlan,
    framing_counts,
    levels_plan,
    plan_aerial,
    plan_aerial_fixed,
    plan_aerial_levels,
    typical_views,
)
from scene_kd.render.config import RenderConfig
from scene_kd.render.coverage import (  # noqa: F401 (public here too)
    COVERAGE_TOLERANCE,
    coverage_from_counts,
    coverage_report,
    view_counts,
)
from scene_kd.render.pinhole import bounds as _bounds
from scene_kd.render.pinhole import intrinsics, look_at  # noqa: F401 (public here too)
from scene_kd.render.points import pixel_index, project_points
from scene_kd.scene.types import Camera

PRESETS = ("aerial", "aerial-fixed", "orbit", "street", "cameras:FILE")
STREET_FOV_DEG = 90.0
STREET_EYE_HEIGHT = 1.6
"""Street cameras, metres above the ground (scene units are assumed metric)."""


def _check_size(cfg: RenderConfig) -> None:
    if cfg.width <= 0 or cfg.height <= 0:
        raise SceneKDError(f"image size must be positive, got {cfg.width}x{cfg.height}")



def seen_gsd(xyz: np.ndarray, cam: Camera, sample: int = 20000) -> float | None:
    """Median metres per pixel over the points [N, 3] a camera sees (depth / focal length, no occlusion test,
    a strided sample of at most ``sample`` points); None when it sees none."""

    pts = torch.as_tensor(np.asarray(xyz[:: max(1, len(xyz) // sample)], dtype=np.float32))
    uv, z = project_points(pts, cam)
    inside = pixel_index(uv, z, cam.width, cam.height) >= 0
    if not bool(inside.any()):
        return None
    return float(z[inside].median()) / float(cam.K[0, 0])


def plan_summary(scene: Any, cameras: list[Camera], cfg: RenderConfig,
                 levels: list[LevelPlan] | None = None) -> dict[str, Any]:
    """What a plan costs and resolves, for views.json and ``render --json``: {"views", "megapixels" (the teacher's
    input), "views_per_point" (views framing the median point, :func:`framing_counts`), "min_views" (the aerial
    planner's target for it), "levels": [{"level", "kind", "gsd_m" (planned, None for presets without one),
    "gsd_seen_m" (median over the points the level's first views see), "views", "megapixels", "grid", "headings"
    (obliques per grid cell), "skipped_empty" (grid views left out: no point in their image)}], "skipped_empty"}."""
    xyz = np.asarray(scene.xyz, dtype=np.float32)
    by_level: dict[int, list[Camera]] = defaultdict(list)
    for c in cameras:
        by_level[c.level].append(c)
    planned = {lp.level: lp for lp in levels or []}
    rows = []
    for level in sorted(by_level):
        cams = by_level[level]
        probe = cams[:: max(1, len(cams) // 8)]  # a few views spread over the level
        seen = [g for g in (seen_gsd(xyz, c) for c in probe) if g is not None]
        lp = planned.get(level)
        rows.append({"level": level, "kind": lp.kind if lp else _kind_of(cams[0]),
                     "gsd_m": round(lp.gsd, 4) if lp else None,
                     "gsd_seen_m": round(float(np.median(seen)), 4) if seen else None,
                     "views": len(cams), "megapixels": round(sum(c.width * c.height for c in cams) / 1e6, 3),
                     "grid": list(lp.grid) if lp else None, "headings": lp.headings if lp else None,
                     "skipped_empty": lp.skipped if lp else 0})
    return {"preset": str(cfg.preset), "views": len(cameras),
            "megapixels": round(sum(c.width * c.height for c in cameras) / 1e6, 3),
            "views_per_point": typical_views(xyz, cameras), "min_views": int(cfg.min_views),
            "skipped_empty": sum(lp.skipped for lp in levels or []), "levels": rows}


def _kind_of(cam: Camera) -> str:
    name = cam.name.split("-", 1)[0]
    return {"aerial": "nadir", "oblique": "oblique", "orbit": "orbit", "street": "street"}.get(name, "camera")


def plan_views_with_summary(scene: Any, cfg: RenderConfig) -> tuple[list[Camera], dict[str, Any]]:
    """(cameras, :func:`plan_summary`) for any preset; the summary carries planned GSDs for ``aerial``."""
    levels = None
    if str(cfg.preset) == "aerial":
        _check_size(cfg)
        xyz = np.asarray(scene.xyz, dtype=np.float32)
        if len(xyz) == 0 or not np.isfinite(xyz).all():
            plan_views(scene, cfg)  # raises the usual error
        cameras, levels = plan_aerial_levels(xyz, cfg)
    else:
        cameras = plan_views(scene, cfg)
    return cameras, plan_summary(scene, cameras, cfg, levels)


def _farthest_points(candidates: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """Indices of k candidates [M, 2] spread out by farthest-point sampling (start: nearest the centroid)."""
    if len(candidates) <= k:
        return np.arange(len(candidates))
    chosen = [int(np.argmin(np.linalg.norm(candidates - candidates.mean(0), axis=1)))]
    d = np.linalg.norm(candidates - candidates[chosen[0]], axis=1)
    for _ in range(k - 1):
        i = int(np.argmax(d))
        chosen.append(i)
        d = np.minimum(d, np.linalg.norm(candidates - candidates[i], axis=1))
    return np.array(chosen)


def plan_street(xyz: np.ndarray, cfg: RenderConfig, positions: int = 10) -> list[Camera]:
    lo, hi = _bounds(xyz)
    extent = np.maximum(hi[:2] - lo[:2], 1e-3)
    cell = max(float(extent.max()) / 40.0, 1.0)
    ij = np.floor((xyz[:, :2] - lo[:2]) / cell).astype(np.int64)
    nx, ny = (np.floor(extent / cell).astype(np.int64) + 1)
    inside = (ij >= 0).all(1) & (ij[:, 0] < nx) & (ij[:, 1] < ny)
    flat = ij[inside, 0] * ny + ij[inside, 1]
    z = xyz[inside, 2].astype(np.float64)
    zmin = np.full(nx * ny, np.inf)
    zmax = np.full(nx * ny, -np.inf)
    np.minimum.at(zmin, flat, z)
    np.maximum.at(zmax, flat, z)
    occupied = np.isfinite(zmin)
    if not occupied.any():
        raise SceneKDError("street views: no points inside the scene bounds")
    ground_level = np.percentile(zmin[occupied], 10)
    # open ground: only low points in the cell, and the cell floor near the scene's ground
    open_cells = occupied & (zmax - zmin < 0.5) & (zmin < ground_level + 2.0)
    if not open_cells.any():
        open_cells = occupied & (zmin <= np.percentile(zmin[occupied], 20))
    # keep away from the scene's edge (cameras there look out at nothing): the inner 70 % when possible
    ci, cj = np.divmod(np.arange(nx * ny), ny)
    inner = (np.abs((ci + 0.5) / nx - 0.5) < 0.35) & (np.abs((cj + 0.5) / ny - 0.5) < 0.35)
    idx = np.flatnonzero(open_cells & inner)
    if len(idx) == 0:
        idx = np.flatnonzero(open_cells)
    centres = np.stack([lo[0] + (idx // ny + 0.5) * cell, lo[1] + (idx % ny + 0.5) * cell], axis=1)
    pick = _farthest_points(centres, positions)
    W, H = cfg.width, cfg.height
    K = intrinsics(W, H, STREET_FOV_DEG)
    cams: list[Camera] = []
    for p in pick:
        eye = np.array([centres[p, 0], centres[p, 1], zmin[idx[p]] + STREET_EYE_HEIGHT])
        for heading in (0.0, 90.0, 180.0, 270.0):
            h = math.radians(heading)
            target = eye + np.array([math.cos(h), math.sin(h), 0.0])
            cams.append(Camera(K=K, world_to_cam=look_at(eye, target), width=W, height=H, level=0,
                               name=f"street-{len(cams) // 4}-h{int(heading)}"))
    return cams


def requested_size(cfg: RenderConfig) -> tuple[int, int] | None:
    """(width, height) asked for in ``cfg``, or None when both are RenderConfig's defaults (then imported
    cameras keep their own size). A size equal to the defaults cannot be told from no request: pass
    ``camera_size`` to :func:`plan_views` for that."""
    default = RenderConfig()
    if (cfg.width, cfg.height) == (default.width, default.height):
        return None
    return int(cfg.width), int(cfg.height)


def plan_views(scene: Any, cfg: RenderConfig, *, camera_size: tuple[int, int] | None = None) -> list[Camera]:
    """Cameras for ``scene`` (PointCloud or GaussianSplats) following ``cfg.preset``; ``Camera.level`` is the
    granularity (0 = coarsest). Raises SceneKDError for an empty scene, a zero-size image or an unknown preset.

    ``cameras:FILE`` cameras are used at their own size (a nerfstudio transforms.json's in the frame the scene is
    in: transforms.json's, the original one of its applied_transform, or dataparser_transforms.json's) unless a
    size is requested (``camera_size``, or a cfg.width/height other than the defaults): then their intrinsics are
    scaled to it
    (scene_kd.scene.cameras.scale_to_size; a size of another aspect ratio is refused)."""
    preset = str(cfg.preset)
    xyz = np.asarray(scene.xyz, dtype=np.float32)
    if len(xyz) == 0:
        raise SceneKDError("cannot plan views: the scene has no points")
    if not np.isfinite(xyz).all():
        raise SceneKDError("cannot plan views: the scene has NaN/Inf coordinates")
    if preset.startswith("cameras:"):
        path = preset.split(":", 1)[1]
        if not path:
            raise SceneKDError("--views cameras:FILE needs a file, e.g. cameras:transforms.json")
        if not Path(path).exists():
            raise SceneKDError("camera file not found", path=path)
        from scene_kd.scene.cameras import camera_source, load_cameras_file

        source = camera_source(Path(path))
        if source.name == "transforms.json":
            from scene_kd.scene.capture import nerfstudio_cameras  # nerfstudio: applied/dataparser frames

            cams = nerfstudio_cameras(source, scene)[0]
        else:
            cams = list(load_cameras_file(path, origin=scene.origin))
        if not cams:
            raise SceneKDError("camera file holds no cameras", path=path)
        for c in cams:
            if c.width <= 0 or c.height <= 0:
                raise SceneKDError(f"camera {c.name!r} has zero-size image {c.width}x{c.height}", path=path)
        size = camera_size if camera_size is not None else requested_size(cfg)
        if size is not None:
            from scene_kd.scene.cameras import scale_to_size

            _check_size(cfg)
            cams = scale_to_size(cams, *size)
        return cams
    _check_size(cfg)
    planners = {"aerial": plan_aerial, "aerial-fixed": plan_aerial_fixed, "street": plan_street}
    if preset == "orbit":
        from scene_kd.render.orbit import orbit_frame, plan_orbit

        return plan_orbit(xyz, cfg, *orbit_frame(scene, cfg))
    if preset not in planners:
        raise SceneKDError(f"unknown view preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    return planners[preset](xyz, cfg)
