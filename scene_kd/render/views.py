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
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scene_kd.errors import BudgetError, SceneKDError
from scene_kd.render.config import RenderConfig
from scene_kd.render.pinhole import bounds as _bounds
from scene_kd.render.pinhole import intrinsics, look_at  # noqa: F401 (public here too)
from scene_kd.scene.types import Camera

log = logging.getLogger(__name__)

PRESETS = ("aerial", "aerial-fixed", "orbit", "street", "cameras:FILE")
AERIAL_FOV_DEG = 60.0
STREET_FOV_DEG = 90.0
COVERAGE_TOLERANCE = 0.02
"""Relative depth tolerance of the coverage count (tighter than lifting's OpenScene 0.25, which at aerial
distances of ~100 m would accept points 25 m behind the visible surface)."""
LIFT_BORDER_PX = 10
"""Image border (pixels) that lifting and coverage ignore (OpenScene's 10 px); aerial grids tile the image less it."""
STREET_EYE_HEIGHT = 1.6
"""Street cameras, metres above the ground (scene units are assumed metric)."""


def _check_size(cfg: RenderConfig) -> None:
    if cfg.width <= 0 or cfg.height <= 0:
        raise SceneKDError(f"image size must be positive, got {cfg.width}x{cfg.height}")


def plan_aerial_fixed(xyz: np.ndarray, cfg: RenderConfig) -> list[Camera]:
    """The fixed-count aerial plan (preset ``aerial-fixed``; see the module docstring)."""
    lo, hi = _bounds(xyz)
    W, H = cfg.width, cfg.height
    K = intrinsics(W, H, AERIAL_FOV_DEG)
    tan_x, tan_y = 0.5 * W / K[0, 0], 0.5 * H / K[1, 1]
    ground = float(np.percentile(xyz[:, 2], 2)) if len(xyz) else 0.0
    surface = float(np.percentile(xyz[:, 2], 50)) if len(xyz) else 0.0  # what most nadir pixels see
    top = float(hi[2])
    extent = np.maximum(hi[:2] - lo[:2], 1e-3)
    cams: list[Camera] = []
    n_levels = max(1, int(cfg.levels))
    overlap = 1.15
    h0 = max(0.5 * overlap * extent[0] / tan_x, 0.5 * overlap * extent[1] / tan_y)
    for level in range(n_levels):
        h = h0 / (level + 1)  # ground sampling distance shrinks by 1 / (level + 1)
        footprint = 2 * h * np.array([tan_x, tan_y]) / overlap
        nx, ny = (max(1, math.ceil(e / f - 0.05)) for e, f in zip(extent, footprint, strict=True))
        cell = extent / np.array([nx, ny])
        z = max(surface + h, top + 0.25 * h + 1e-3)  # h above the typical surface, well above the roofs
        for iy in range(ny):
            for ix in range(nx):
                cx, cy = lo[0] + (ix + 0.5) * cell[0], lo[1] + (iy + 0.5) * cell[1]
                w2c = look_at(np.array([cx, cy, z]), np.array([cx, cy, z - 1.0]))
                cams.append(Camera(K=K, world_to_cam=w2c, width=W, height=H, level=level,
                                   name=f"aerial-L{level}-h{z - ground:.0f}-r{iy}c{ix}"))
    # oblique level: 45 deg down, 4 diagonal headings, at each cell of a 2 x 2 grid
    level = n_levels
    mid = float(np.percentile(xyz[:, 2], 50)) if len(xyz) else 0.0
    m = 2
    cell = extent / m
    reach = 0.5 * np.linalg.norm(cell) * 1.15
    dist = reach / min(tan_x, tan_y) + 0.5 * (top - ground)
    pitch = math.radians(45.0)
    for iy in range(m):
        for ix in range(m):
            target = np.array([lo[0] + (ix + 0.5) * cell[0], lo[1] + (iy + 0.5) * cell[1], 0.5 * (mid + ground)])
            for k, heading in enumerate((45.0, 135.0, 225.0, 315.0)):
                h = math.radians(heading)
                forward = np.array([math.cos(h) * math.cos(pitch), math.sin(h) * math.cos(pitch), -math.sin(pitch)])
                w2c = look_at(target - dist * forward, target)
                cams.append(Camera(K=K, world_to_cam=w2c, width=W, height=H, level=level,
                                   name=f"oblique-r{iy}c{ix}-h{int(heading)}-{k}"))
    return cams


@dataclass(frozen=True)
class LevelPlan:
    """One granularity level of a plan: ``kind`` nadir | oblique, planned GSD (metres per pixel at the median surface
    for nadir levels, at the look-at point for obliques), the view grid (nx, ny), the camera height above the
    median surface (nadir) or distance to the look-at point (oblique), metres, and the headings per grid cell
    (1 for nadir; 4 x the plan's density for obliques)."""

    level: int
    kind: str
    gsd: float
    grid: tuple[int, int]
    distance: float
    headings: int = 1
    views: int = 0
    """Views kept: the grid's views (times headings) that can see any point (render/footprint.py)."""
    skipped: int = 0
    """Views of the grid left out because no point can be in their image."""


MAX_DENSITY = 4
"""The most an ``aerial`` plan densifies to reach ``cfg.min_views`` (density s: about s times the views per point)."""
FRAMING_SAMPLE = 4096
"""Points (a strided sample of the scene) on which :func:`framing_counts` counts views while planning."""


def _grid_centres(lo: float, extent: float, footprint: float, overlap: float, density: int = 1) -> np.ndarray:
    """Centres [n] of views of width ``footprint`` covering [lo, lo + extent] with at least ``overlap`` between
    neighbours; the first and last views are flush with the bounds (one centred view when it fits). At
    ``density`` s > 1 the step shrinks by sqrt(s) and there are at least ceil(sqrt(s)) views, spread over the
    extent (centres of equal parts) where it fits one view."""
    overlap = 1.0 - (1.0 - overlap) / math.sqrt(density)
    n_min = math.ceil(math.sqrt(density) - 1e-9)
    if extent <= footprint:
        return lo + (np.arange(n_min) + 0.5) * extent / n_min
    step = footprint * (1.0 - overlap)
    n = max(math.ceil((extent - footprint) / step - 1e-9) + 1, n_min)
    return lo + 0.5 * footprint + np.arange(n) * (extent - footprint) / (n - 1)


def _level_gsds(gsd: tuple[float, ...], fit: float) -> list[float]:
    """Coarse-to-fine GSDs: each clamped to ``fit`` (the GSD at which the extent fills one view), duplicates merged."""
    out: list[float] = []
    for g in sorted((float(g) for g in gsd), reverse=True):
        g = min(g, fit)
        if not out or g < out[-1] * 0.99:
            out.append(g)
    return out


def framing_counts(xyz: np.ndarray, cameras: list[Camera], sample: int = FRAMING_SAMPLE) -> np.ndarray:
    """Views framing each point [n] of a strided sample of at most ``sample`` of the points [N, 3]: in front of the
    camera and inside the image less LIFT_BORDER_PX (what lifting uses), with no occlusion test - an upper bound
    of :func:`view_counts`, cheap enough to plan with (each camera projects ``sample`` points)."""
    from scene_kd.render.points import pixel_index, project_points

    pts = torch.as_tensor(np.asarray(xyz[:: max(1, len(xyz) // max(1, sample))], dtype=np.float32))
    counts = torch.zeros(len(pts), dtype=torch.int32)
    for cam in cameras:
        uv, z = project_points(pts, cam)
        counts += (pixel_index(uv, z, cam.width, cam.height, LIFT_BORDER_PX) >= 0).to(torch.int32)
    return counts.numpy()


def _typical_views(xyz: np.ndarray, cameras: list[Camera]) -> float:
    """Views framing the median point (:func:`framing_counts`)."""
    return float(np.median(framing_counts(xyz, cameras))) if len(xyz) and cameras else 0.0


@dataclass(frozen=True)
class _Site:
    """What the aerial planner needs of a scene: xy bounds, extent, heights (2nd percentile, median, top) and the
    GSD at which the extent fits one view."""

    lo: np.ndarray
    extent: np.ndarray
    ground: float
    surface: float
    top: float
    fit: float


def _usable_px(cfg: RenderConfig) -> list[int]:
    """Image width and height less LIFT_BORDER_PX on each side: the pixels that count for lifting."""
    return [max(n - 2 * LIFT_BORDER_PX, (n + 1) // 2) for n in (cfg.width, cfg.height)]


def _site(xyz: np.ndarray, cfg: RenderConfig) -> _Site:
    usable = _usable_px(cfg)
    lo, hi = _bounds(xyz)
    extent = np.maximum(hi[:2] - lo[:2], 1e-3)
    ground, surface = (float(v) for v in np.percentile(xyz[:, 2], [2, 50]))
    fit = float(max(extent[0] / usable[0], extent[1] / usable[1])) * (1.0 + cfg.overlap)
    return _Site(lo[:2], extent, ground, surface, float(hi[2]), fit)


def _aerial_at_density(site: _Site, cfg: RenderConfig, density: int, xyz: np.ndarray | None = None,
                       max_views: int = 0) -> tuple[list[Camera], list[LevelPlan]]:
    """The aerial plan at ``density`` s >= 1: nadir and oblique look-at grids with a per-axis step shrunk by
    sqrt(s) and at least ceil(sqrt(s)) views per axis (:func:`_grid_centres`), obliques from 4 s evenly spaced
    headings starting at 45 deg; s = 1 is the extent-driven plan. With ``xyz``, views that cannot see any point
    (render/footprint.py) are left out. ``max_views`` > 0: a plan of more views raises BudgetError (with the plan's
    counts as ``.plan``) before any camera is built."""
    from scene_kd.render.footprint import views_seeing_points

    W, H = cfg.width, cfg.height
    K = intrinsics(W, H, AERIAL_FOV_DEG)
    f = float(K[0, 0])
    usable = _usable_px(cfg)
    lo, extent, surface = site.lo, site.extent, site.surface
    # one group per (level, heading): the views of a group differ by an xy shift only
    groups: list[tuple[LevelPlan, np.ndarray, np.ndarray, list[tuple[float, Any, np.ndarray]]]] = []
    for level, g in enumerate(_level_gsds(tuple(cfg.gsd), site.fit)):
        z = max(surface + g * f, site.top + 2.0)
        xs, ys = (_grid_centres(lo[i], extent[i], g * usable[i], cfg.overlap, density) for i in (0, 1))
        eye = np.array([0.0, 0.0, z])
        groups.append((LevelPlan(level, "nadir", g, (len(xs), len(ys)), z - surface), xs, ys,
                       [(0.0, lambda cx, cy, z=z: (np.array([cx, cy, z]), np.array([cx, cy, z - 1.0])), eye)]))
    if cfg.oblique_gsd > 0:
        level = len(groups)
        g = min(float(cfg.oblique_gsd), site.fit)
        dist = g * f
        pitch = math.radians(45.0)
        xs, ys = (_grid_centres(lo[i], extent[i], g * usable[i], cfg.overlap, density) for i in (0, 1))
        tz = 0.5 * (surface + site.ground)
        headings = [45.0 + k * 90.0 / density for k in range(4 * density)]
        views = []
        for heading in headings:
            a = math.radians(heading)
            fwd = np.array([math.cos(a) * math.cos(pitch), math.sin(a) * math.cos(pitch), -math.sin(pitch)])
            views.append((heading, lambda cx, cy, fwd=fwd: (np.array([cx, cy, tz]) - dist * fwd,
                                                             np.array([cx, cy, tz])), fwd))
        groups.append((LevelPlan(level, "oblique", g, (len(xs), len(ys)), dist, len(headings)), xs, ys, views))

    def camera(lp: LevelPlan, make: Any, cx: float, cy: float, name: str) -> Camera:
        eye, target = make(cx, cy)
        return Camera(K=K, world_to_cam=look_at(eye, target), width=W, height=H, level=lp.level, name=name)

    keeps = []  # per group, per heading: [ny, nx] bool
    for lp, xs, ys, views in groups:
        keeps.append([views_seeing_points(xyz, camera(lp, make, xs[0], ys[0], ""), xs, ys) if xyz is not None
                      else np.ones((len(ys), len(xs)), bool) for _, make, _ in views])
    levels = [dataclasses.replace(lp, views=int(sum(k.sum() for k in keep)),
                                  skipped=int(sum(k.size - k.sum() for k in keep)))
              for (lp, *_), keep in zip(groups, keeps, strict=True)]
    total = sum(lp.views for lp in levels)
    if max_views > 0 and total > max_views:
        raise BudgetError(f"{total:,} views planned", plan=levels_plan(cfg, levels))
    cams: list[Camera] = []
    for (lp, xs, ys, views), keep in zip(groups, keeps, strict=True):
        for iy, cy in enumerate(ys):
            for ix, cx in enumerate(xs):
                for (heading, make, _), k in zip(views, keep, strict=True):
                    if not k[iy, ix]:
                        continue
                    name = (f"aerial-L{lp.level}-g{lp.gsd:.3g}-r{iy}c{ix}" if lp.kind == "nadir" else
                            f"oblique-g{lp.gsd:.3g}-r{iy}c{ix}-h{int(heading) % 360}")
                    cams.append(camera(lp, make, cx, cy, name))
    return cams, levels


def levels_plan(cfg: RenderConfig, levels: list[LevelPlan]) -> dict[str, Any]:
    """A plan's counts from its LevelPlans alone (no cameras): {"preset", "views", "megapixels", "skipped_empty",
    "levels": [{"level", "kind", "gsd_m", "views", "megapixels", "grid", "headings", "skipped_empty"}]}."""
    mp = cfg.width * cfg.height / 1e6
    rows = [{"level": lp.level, "kind": lp.kind, "gsd_m": round(lp.gsd, 4), "views": lp.views,
             "megapixels": round(lp.views * mp, 3), "grid": list(lp.grid), "headings": lp.headings,
             "skipped_empty": lp.skipped} for lp in levels]
    views = sum(lp.views for lp in levels)
    return {"preset": str(cfg.preset), "views": views, "megapixels": round(views * mp, 3),
            "skipped_empty": sum(lp.skipped for lp in levels), "levels": rows}


def plan_aerial_levels(xyz: np.ndarray, cfg: RenderConfig) -> tuple[list[Camera], list[LevelPlan]]:
    """The ``aerial`` preset: (cameras, one LevelPlan per level). Nadir level at GSD g: camera height
    h = g * W / (2 tan(hfov / 2)) above the median surface (at least 2 m above the highest point), views on a
    grid whose usable footprints (the image less LIFT_BORDER_PX on each side, times g) cover the extent with
    ``cfg.overlap``. Oblique level: pitch 45 deg, 4 diagonal headings, look-at
    points on a grid of the same spacing at ``cfg.oblique_gsd``, distance g * W / (2 tan(hfov / 2)).

    When fewer than ``cfg.min_views`` views frame the median point (:func:`framing_counts`; small scenes, whose
    coarse levels merge into one view), the plan densifies in whole steps - density s = 2, 3, ... up to
    MAX_DENSITY: every grid (nadir and oblique look-at points) with a per-axis step / sqrt(s) and at least
    ceil(sqrt(s)) views per axis, obliques from 4 s headings - until they do; every level keeps its GSD. Whole
    steps because fusion weighs each level equally: at s = 2 even a level that fitted one view gets 2 x 2 views.
    Raises SceneKDError for a non-positive GSD, an overlap outside [0, 0.9] or a negative min_views."""
    if not cfg.gsd or any(not (float(g) > 0 and math.isfinite(float(g))) for g in cfg.gsd):
        raise SceneKDError(f"render.gsd must be positive metres per pixel, got {cfg.gsd!r}")
    if not (cfg.oblique_gsd >= 0 and math.isfinite(cfg.oblique_gsd)):
        raise SceneKDError(f"render.oblique_gsd must be >= 0 (0 = no obliques), got {cfg.oblique_gsd}")
    if not 0.0 <= cfg.overlap <= 0.9:
        raise SceneKDError(f"render.overlap must be in [0, 0.9], got {cfg.overlap}")
    if cfg.min_views < 0:
        raise SceneKDError(f"render.min_views must be >= 0 (0 = the extent-driven plan), got {cfg.min_views}")
    site = _site(xyz, cfg)
    density = 1
    budget = int(getattr(cfg, "max_views", 0) or 0)
    cams, levels = _aerial_at_density(site, cfg, density, xyz, budget)  # BudgetError: refused before any camera
    while density < MAX_DENSITY and cfg.min_views > 0 and _typical_views(xyz, cams) < cfg.min_views:
        try:
            cams, levels = _aerial_at_density(site, cfg, density + 1, xyz, budget)
        except BudgetError as e:  # densify only as far as the budget allows; the extent-driven plan fits it
            log.warning("aerial plan: densifying x%d would plan %s views, over render.max_views %d; kept x%d (%d "
                        "views)", density + 1, f"{e.plan['views']:,}", budget, density, len(cams))
            break
        density += 1
    if density > 1:
        log.info("aerial plan densified x%d to %d views so that >= %d views frame a typical point", density,
                 len(cams), cfg.min_views)
    skipped = sum(lp.skipped for lp in levels)
    if skipped:
        log.info("aerial plan: %s grid views left out: no point can be in their image", f"{skipped:,}")
    return cams, levels


def plan_aerial(xyz: np.ndarray, cfg: RenderConfig) -> list[Camera]:
    """The ``aerial`` preset's cameras (see :func:`plan_aerial_levels`)."""
    return plan_aerial_levels(xyz, cfg)[0]


def seen_gsd(xyz: np.ndarray, cam: Camera, sample: int = 20000) -> float | None:
    """Median metres per pixel over the points [N, 3] a camera sees (depth / focal length, no occlusion test,
    a strided sample of at most ``sample`` points); None when it sees none."""
    from scene_kd.render.points import pixel_index, project_points

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
            "views_per_point": _typical_views(xyz, cameras), "min_views": int(cfg.min_views),
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
    from scene_kd.render.points import decode_zbuffer, visible_in_view, zbuffer_points

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
    from scene_kd.render.points import estimate_point_radii

    radius: float | torch.Tensor = cfg.point_radius
    if depths is None and radius <= 0 and cfg.point_size_px <= 0:
        radius = estimate_point_radii(scene.xyz)
    total, per_level = view_counts(scene.xyz, cameras, depths, point_radius=radius, point_size_px=cfg.point_size_px)
    return coverage_from_counts(total, per_level, cameras, cfg.min_views)
