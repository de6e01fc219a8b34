"""The render stage: scene -> RUN/{scene.safetensors, views.json, renders/NNNN.{rgb.png,npz}, plots/views.png}.

Points render with the z-buffer splatter (footprint from ``cfg.point_radius``, else estimated from the point
spacing); Gaussian splats with the Gaussian rasterizer (gsplat on CUDA, torch reference on CPU), where
``Render.ids`` is the top-weight Gaussian and ``topk_ids`` / ``topk_weights`` hold the 4 largest blend weights.
Coverage (occlusion-tested like lifting) is accumulated view by view and written into views.json.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from scene_kd.errors import BudgetError, SceneKDError
from scene_kd.progress import progress_bar
from scene_kd.render.backends import rasterize
from scene_kd.render.budget import announce_plan, count_plan
from scene_kd.render.config import RenderConfig
from scene_kd.render.coverage import COVERAGE_TOLERANCE, coverage_from_counts
from scene_kd.render.cull import build_point_grid, render_point_view_culled
from scene_kd.render.photos import capture_views, clear_photos, resolve_teacher_input, write_view_photo
from scene_kd.render.points import (
    estimate_point_radii,
    pixel_index,
    project_points,
    render_points,
    visible_in_view,
)
from scene_kd.render.types import Render, save_render
from scene_kd.render.views import plan_summary, plan_views_with_summary
from scene_kd.rundir import RunDir, StageContext
from scene_kd.runio import atomic_path, write_json
from scene_kd.scene.runscene import save_run_scene
from scene_kd.scene.types import Camera
from scene_kd.scene.units import InputConfig

log = logging.getLogger(__name__)


class _TeacherInput(Protocol):
    teacher_input: str


class RenderStageConfig(Protocol):
    """The config sections the render stage reads (:class:`scene_kd.config.PipelineConfig` has them): its own
    ``render`` section, the teacher's ``teacher_input`` (photos / renders / both decide which views are drawn) and
    the ``input`` section (the units a scene path is loaded in). A Protocol so that render/ never imports the
    config layer above it."""

    @property
    def render(self) -> RenderConfig: ...

    @property
    def input(self) -> InputConfig: ...

    @property
    def teacher(self) -> _TeacherInput: ...


GAUSSIAN_TOPK = 4
GAUSSIAN_MIN_ALPHA = 0.05
"""Gaussian pixels with less accumulated opacity than this count as empty (depth +inf, id -1)."""


def scene_fingerprint(scene: Any) -> str:
    """A cheap identity of the scene's contents: kind, count, origin and a hash of a strided sample of its arrays."""
    h = hashlib.sha256()
    h.update(f"{scene.kind}:{len(scene)}:{np.asarray(scene.origin).tolist()}".encode())
    step = max(1, len(scene) // 4096)
    names = ("xyz", "rgb", "normals", "labels", "instances") if scene.kind == "points" else (
        "means", "quats", "log_scales", "opacity_logits", "sh", "labels", "instances")
    for name in names:
        a = getattr(scene, name, None)
        if a is not None:
            h.update(name.encode())
            h.update(np.ascontiguousarray(np.asarray(a)[::step]).tobytes())
    return h.hexdigest()[:16]


def _check_scene(scene: Any) -> None:
    if len(scene) == 0:
        raise SceneKDError("cannot render: the scene has no points")
    if not np.isfinite(np.asarray(scene.xyz)).all():
        raise SceneKDError("cannot render: the scene has NaN/Inf coordinates")


def _views_source(preset: str, has_capture: bool, *, plan_used: bool) -> str:
    """What the views are, for views.json: the preset; "capture" (the capture's cameras only); or
    "capture+PRESET" (teacher_input both)."""
    if not has_capture:
        return str(preset)
    return f"capture+{preset}" if plan_used else "capture"


def _check_cameras_see_scene(xyz: torch.Tensor, cameras: list[Camera]) -> None:
    """SceneKDError when no camera has any point in front of it and inside its image."""

    sample = xyz[:: max(1, len(xyz) // 200_000)]
    for cam in cameras:
        uv, z = project_points(sample, cam)
        if bool((pixel_index(uv, z, cam.width, cam.height) >= 0).any()):
            return
    raise SceneKDError(f"none of the {len(cameras)} cameras sees any point of the scene "
                       "(all face away from it or look past it)")


def render_point_view(scene: Any, camera: Camera, cfg: RenderConfig, xyz: torch.Tensor,
                      radius: float | torch.Tensor) -> Render:

    return render_points(xyz, camera, rgb=scene.rgb, normals=scene.normals, labels=scene.labels,
                         instances=scene.instances, point_radius=radius, point_size_px=cfg.point_size_px,
                         background=tuple(cfg.background))


def render_gaussian_view(scene: Any, camera: Camera, cfg: RenderConfig, tensors: dict[str, torch.Tensor]) -> Render:
    bg = torch.tensor(cfg.background, dtype=torch.float32) / 255.0
    with torch.no_grad():
        out = rasterize(tensors["means"], tensors["quats"], tensors["log_scales"], tensors["opacity_logits"],
                        tensors["sh"], camera, topk=GAUSSIAN_TOPK, background=bg)
    alpha = out["alpha"].float().cpu().numpy()
    rgb = (out["rgb"].float().clamp(0, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8)
    topk_ids = out["topk_ids"].cpu().numpy().astype(np.int32)
    topk_w = out["topk_weights"].float().cpu().numpy()
    empty = alpha < GAUSSIAN_MIN_ALPHA
    depth = np.where(empty, np.inf, out["depth"].float().cpu().numpy()).astype(np.float32)
    ids = np.where(empty, -1, topk_ids[..., 0]).astype(np.int32)

    def gather(values):
        if values is None:
            return None
        res = np.full(ids.shape, -1, dtype=np.int32)
        res[ids >= 0] = np.asarray(values)[ids[ids >= 0]]
        return res

    return Render(camera=camera, rgb=rgb, depth=depth, ids=ids, labels=gather(scene.labels),
                  instances=gather(scene.instances), alpha=alpha.astype(np.float32), topk_ids=topk_ids,
                  topk_weights=topk_w.astype(np.float32))


def _radius_summary(radius: float | torch.Tensor) -> float | dict[str, float]:
    if isinstance(radius, torch.Tensor):
        return {"median": float(radius.median()), "min": float(radius.min()), "max": float(radius.max())}
    return float(radius)


def contact_sheet(renders: list[tuple[int, np.ndarray, Camera]], path: Path, *, thumb: int = 160, cols: int = 8) -> None:
    """A grid of thumbnails [view index, level, name] saved as PNG."""
    from PIL import Image, ImageDraw

    if not renders:
        return
    cols = min(cols, len(renders))
    rows = (len(renders) + cols - 1) // cols
    label_h = 14
    sheet = Image.new("RGB", (cols * thumb, rows * (thumb + label_h)), (30, 30, 30))
    draw = ImageDraw.Draw(sheet)
    for n, (i, rgb, cam) in enumerate(renders):
        im = Image.fromarray(rgb)
        im.thumbnail((thumb, thumb))
        x, y = (n % cols) * thumb, (n // cols) * (thumb + label_h)
        sheet.paste(im, (x + (thumb - im.width) // 2, y))
        draw.text((x + 2, y + thumb), f"{i} L{cam.level} {cam.name}"[:26], fill=(230, 230, 230))
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")


class RenderStage:
    """Plan views, render each, write views.json (+ coverage), renders/ and the run's copy of the scene.

    Summary: {"views", "levels", "coverage", "preset", "scene_kind", "teacher_work": {"views", "megapixels"}}
    (what the teacher will have to look at).
    """

    name = "render"
    section = "render"

    def enabled(self, cfg: RenderStageConfig) -> bool:
        return True

    def inputs(self, run: RunDir, cfg: RenderStageConfig) -> list[Path]:
        return []  # the scene is part of the key (its fingerprint)

    def outputs(self, run: RunDir, cfg: RenderStageConfig, ctx: StageContext) -> list[Path]:
        return ([run.views, run.scene_tensors, run.scene_json, run.renders] + ([run.views_png] if ctx.preview else [])
                + ([run.photos] if ctx.capture is not None else []))

    def key(self, run: RunDir, cfg: RenderStageConfig, ctx: StageContext) -> Any:
        capture = ctx.capture.fingerprint() if ctx.capture is not None else None
        both = cfg.teacher.teacher_input == "both"  # the capture's views and planned ones
        budgetless = dataclasses.replace(cfg.render, max_views=0, max_teacher_hours=0.0)  # refuses, never changes
        return [_VERSION, budgetless, scene_fingerprint(_scene(ctx, cfg))] + ([capture, both] if capture is not None else [])

    def compute(self, run: RunDir, cfg: RenderStageConfig, ctx: StageContext) -> dict[str, Any]:
        return _render(run, _scene(ctx, cfg), cfg.render, preview=ctx.preview, capture=ctx.capture,
                       teacher_input=cfg.teacher.teacher_input, on_plan=ctx.on_plan)


RENDER = RenderStage()
_VERSION = "render-v2"


def _scene(ctx: StageContext, cfg: RenderStageConfig) -> Any:
    """The context's scene, loaded once (in the units ``cfg.input`` says) when it is a path."""
    if isinstance(ctx.scene, (str, Path)):
        from scene_kd.scene.io import load_scene

        ctx.scene = load_scene(ctx.scene, units=cfg.input.units)
    if ctx.scene is None:
        raise SceneKDError("the render stage needs a scene")
    _check_scene(ctx.scene)
    return ctx.scene


def _render(run: RunDir, scene: Any, cfg: RenderConfig, *, preview: bool, capture: Any = None,
            teacher_input: str = "auto", on_plan: Any = None) -> dict[str, Any]:

    run_dir = run.root
    t0 = time.perf_counter()
    teacher_input = resolve_teacher_input(teacher_input, capture is not None)
    cameras = capture_views(capture, cfg.width, cfg.height) if capture is not None else []
    n_photos = len(cameras)
    plan: dict[str, Any] | None = None
    if capture is None or teacher_input == "both":
        try:
            planned, plan = plan_views_with_summary(scene, cfg)
        except BudgetError as e:  # refused by the planner before it built a camera
            announce_plan(e.plan or {}, cfg, on_plan)
            raise
        cameras += [dataclasses.replace(c, level=c.level + (1 if capture is not None else 0)) for c in planned]
    if not cameras:
        raise SceneKDError(f"view preset {cfg.preset!r} produced no cameras")
    teacher_cost = announce_plan(plan if plan is not None and capture is None else count_plan(cameras), cfg, on_plan)
    xyz = torch.from_numpy(np.ascontiguousarray(scene.xyz, dtype=np.float32))
    _check_cameras_see_scene(xyz, cameras)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_run_scene(run_dir, scene)

    radius: float | torch.Tensor = float(cfg.point_radius)
    tensors: dict[str, torch.Tensor] = {}
    grid = None
    if scene.kind == "points":
        if radius <= 0 and cfg.point_size_px <= 0:
            radius = estimate_point_radii(xyz)
        grid = build_point_grid(xyz)  # each view projects only the points in its frustum's cells
    else:
        tensors = {n: torch.from_numpy(np.asarray(getattr(scene, n), dtype=np.float32))
                   for n in ("means", "quats", "log_scales", "opacity_logits", "sh")}

    n_levels = max(c.level for c in cameras) + 1
    per_level = np.zeros((n_levels, len(scene)), dtype=np.int32)
    thumbs: list[tuple[int, np.ndarray, Camera]] = []
    psnrs: list[float | None] = [None] * len(cameras)
    disagree: list[int | None] = [None] * len(cameras)
    depth_tolerance = float(cfg.frame_depth_tolerance) if cfg.frame_depth_check else None
    with progress_bar(None) as progress:
        task = progress.add_task(f"render {len(cameras)} views", total=len(cameras))
        for i, cam in enumerate(cameras):
            if scene.kind == "points":
                render, idx = render_point_view_culled(scene, cam, cfg, xyz, radius, grid)
            else:
                render, idx = render_gaussian_view(scene, cam, cfg, tensors), None
            save_render(run_dir, i, render)
            if capture is not None and i < len(capture.cameras):
                psnrs[i], disagree[i] = write_view_photo(run_dir, i, capture, i, render,
                                                         depth_tolerance=depth_tolerance)
            if idx is None:
                vis, _ = visible_in_view(xyz, cam, render.depth, tolerance=COVERAGE_TOLERANCE)
                per_level[cam.level] += vis.numpy()
            elif len(idx):
                vis, _ = visible_in_view(xyz[idx], cam, render.depth, tolerance=COVERAGE_TOLERANCE)
                per_level[cam.level, idx] += vis.numpy()
            if preview:
                thumbs.append((i, render.rgb, cam))
            progress.advance(task)
    # drop renders left over from an earlier run with more views
    renders_dir = run.renders
    for p in renders_dir.glob("*"):
        stem = p.name.split(".")[0]
        if stem.isdigit() and int(stem) >= len(cameras):
            p.unlink()
    clear_photos(run_dir, len(capture.cameras) if capture is not None else 0)
    coverage = coverage_from_counts(per_level.sum(0), per_level, cameras, cfg.min_views)
    levels = sorted({c.level for c in cameras})
    if plan is None or capture is not None:  # per-level GSD and cost of the cameras actually rendered
        plan = plan_summary(scene, cameras, cfg)
    views_source = _views_source(cfg.preset, capture is not None, plan_used=n_photos < len(cameras))
    write_json(run.views, {
        "plan": plan, "teacher_cost": teacher_cost,
        "scene_kind": scene.kind, "preset": views_source, "cameras": [c.to_json() for c in cameras],
        "levels": levels, "coverage": coverage, "point_radius": _radius_summary(radius) if scene.kind == "points" else None,
        "photos": [i < n_photos for i in range(len(cameras))], "psnr": psnrs,
        "capture": None if capture is None else {"layout": capture.layout, "root": str(capture.root),
                                                 "frame": capture.frame},
        "depth_disagree": disagree,
    })
    if preview:
        contact_sheet(thumbs, run.views_png)
    checked = [d for d in disagree if d is not None]
    if checked:
        log.info("RGB-D depth check: %d of %d photo views checked, %s pixels disagree with the frame's depth "
                 "(their masks are not lifted)", len(checked), n_photos, f"{sum(checked):,}")
    seconds = time.perf_counter() - t0
    log.info("rendered %d views in %.1f s; %.1f%% of points seen >= 1x, %.1f%% >= 3x", len(cameras), seconds,
             100 * coverage["seen_1"], 100 * coverage["seen_3"])
    megapixels = sum(c.width * c.height for c in cameras) / 1e6
    finite = [p for p in psnrs if p is not None and np.isfinite(p)]
    return {"views": len(cameras), "levels": levels, "coverage": coverage,
            "preset": views_source,
            "photo_views": n_photos,
            "psnr_median": round(float(np.median(finite)), 3) if finite else None,
            "depth_disagree_pixels": None if all(d is None for d in disagree) else sum(d or 0 for d in disagree),
            "scene_kind": scene.kind, "plan": plan, "teacher_cost": teacher_cost,
            "teacher_work": {"views": len(cameras), "megapixels": round(megapixels, 3)}}
