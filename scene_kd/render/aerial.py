"""Aerial view planning: nadir grids at several ground sampling distances plus an oblique level (preset
``aerial``), the fixed-count plan (``aerial-fixed``), and how many views frame a point while planning.

See scene_kd/render/views.py for the presets and their geometry. Views of a grid that no point can reach are left
out before any camera is built (render/footprint.py), and a plan over ``cfg.max_views`` is refused with its
counts (BudgetError.plan, :func:`levels_plan`) before any camera is built either. Scenes are z-up in their local
frame; cameras are OpenCV pinholes.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from scene_kd.errors import BudgetError, SceneKDError
from scene_kd.render.config import RenderConfig
from scene_kd.render.footprint import views_seeing_points
from scene_kd.render.pinhole import bounds as _bounds
from scene_kd.render.pinhole import intrinsics, look_at
from scene_kd.render.points import pixel_index, project_points
from scene_kd.scene.types import Camera

log = logging.getLogger(__name__)

AERIAL_FOV_DEG = 60.0
LIFT_BORDER_PX = 10
"""Image border (pixels) that lifting and coverage ignore (OpenScene's 10 px); aerial grids tile the image less it."""


def plan_aerial_fixed(xyz: np.ndarray, cfg: RenderConfig) -> list[Camera]:
    """The fixed-count aerial plan (preset ``aerial-fixed``; see scene_kd/render/views.py's docstring)."""
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

    pts = torch.as_tensor(np.asarray(xyz[:: max(1, len(xyz) // max(1, sample))], dtype=np.float32))
    counts = torch.zeros(len(pts), dtype=torch.int32)
    for cam in cameras:
        uv, z = project_points(pts, cam)
        counts += (pixel_index(uv, z, cam.width, cam.height, LIFT_BORDER_PX) >= 0).to(torch.int32)
    return counts.numpy()


def typical_views(xyz: np.ndarray, cameras: list[Camera]) -> float:
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
    while density < MAX_DENSITY and cfg.min_views > 0 and typical_views(xyz, cams) < cfg.min_views:
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
