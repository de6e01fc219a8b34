"""The ``features`` stage: renders -> teacher -> ``RUN/masks/NNNN.npz`` + ``RUN/features.safetensors``.

Views whose (teacher cache key, render content hash) is in the feature cache ($SCENE_KD_CACHE/features) are
read from it without calling the teacher; the rest go through the teacher ``batch_size`` views at a time.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from scene_kd.errors import MissingWeightsError, RunStateError, SceneKDError
from scene_kd.progress import progress_bar
from scene_kd.render.photos import iter_teacher_renders, photos_for_teacher
from scene_kd.render.types import Render, load_cameras, load_render
from scene_kd.rundir import RunDir, StageContext
from scene_kd.runio import (
    atomic_path,
    config_hash,
    load_tensors,
    save_tensors,
)
from scene_kd.scene.labels import evaluation_classes
from scene_kd.teachers.base import Teacher, ViewMasks
from scene_kd.teachers.cache import FeatureCache, render_content_hash
from scene_kd.teachers.clip import resolve_clip_weights
from scene_kd.teachers.config import ORACLE, TeacherConfig, teacher_kwargs
from scene_kd.teachers.cost import estimate_for_config
from scene_kd.teachers.edge_blur import region_boundaries
from scene_kd.teachers.factory import create_teacher
from scene_kd.teachers.weights import (
    RANDOM,
    missing_weights_summary,
    parse_explicit,
    resolve_weights,
    sam_spec,
)

log = logging.getLogger(__name__)


class FeaturesStageConfig(Protocol):
    """The config section the features stage reads: ``teacher`` (a Protocol so teachers/ never imports the config
    layer above it; :class:`scene_kd.config.PipelineConfig` has it)."""

    @property
    def teacher(self) -> TeacherConfig: ...


PREVIEW_VIEWS = 8


def make_teacher(run_dir: str | Path, cfg: TeacherConfig) -> Teacher:
    """The teacher named by ``cfg`` with its config; the oracle also gets the run's class names."""
    kwargs = teacher_kwargs(cfg)
    if cfg.name == ORACLE:
        from scene_kd.scene.runscene import run_scene_meta

        try:
            names = run_scene_meta(run_dir).get("label_names", {})
        except RunStateError:
            names = {}
        kwargs["label_names"] = {int(k): v for k, v in names.items()}
    return create_teacher(cfg.name, **kwargs)


def scene_has_classes(scene: Any) -> bool:
    """Whether ``scene`` has ground-truth labels with at least one evaluable class (not only unclassified /
    noise / overlap codes): what the oracle teacher needs."""

    return scene.labels is not None and bool(evaluation_classes(scene.labels, scene.label_names)[0])


def check_teacher_requirements(cfg: TeacherConfig, *, has_labels: bool) -> None:
    """Raise, before any work, when the teacher cannot run: missing weights (one MissingWeightsError naming
    every missing file and where to put it) or, for the oracle, a scene without ground-truth classes."""
    if cfg.name == ORACLE:
        if not has_labels:
            raise SceneKDError("the oracle-labels teacher needs a labelled scene (ground-truth classes other than "
                               "unclassified / noise) and this scene has none; use --teacher clip-sam (real "
                               "weights) instead")
        return

    missing: list[MissingWeightsError] = []  # by the config's fields: a newly registered open_clip / SAM teacher too
    try:
        if hasattr(cfg, "clip_model"):
            resolve_clip_weights(cfg.clip_model, cfg.clip_pretrained, cfg.weights, download=cfg.download)
    except MissingWeightsError as e:
        missing.append(e)
    if hasattr(cfg, "sam_model"):
        mine = parse_explicit(cfg.weights, "sam")
        try:
            if mine != RANDOM:
                resolve_weights(sam_spec(cfg.sam_model), mine, download=cfg.download)
        except MissingWeightsError as e:
            missing.append(e)
    if missing:
        raise missing_weights_summary(missing, cfg.name, f"`scene-kd weights` lists every file\nto try without weights: "
                                      f"--teacher {ORACLE} (a test teacher for labelled scenes)")


def validate_view_masks(vm: ViewMasks, render: Render, dim: int, where: str) -> None:
    ids = np.asarray(vm.mask_ids)
    h, w = render.rgb.shape[:2]
    if ids.ndim != 3 or ids.shape[1:] != (h, w):
        raise SceneKDError(f"{where}: teacher returned mask_ids of shape {ids.shape}, expected [L, {h}, {w}]")
    m = vm.num_masks
    if vm.embeddings.ndim != 2 or vm.embeddings.shape[1] != dim:
        raise SceneKDError(f"{where}: teacher returned embeddings {tuple(vm.embeddings.shape)}, expected [M, {dim}]")
    if len(vm.mask_level) != m or (ids.size and (ids.max() >= m or ids.min() < -1)):
        raise SceneKDError(f"{where}: teacher mask ids / levels do not match its {m} embeddings")
    if m and not torch.isfinite(vm.embeddings).all():
        raise SceneKDError(f"{where}: teacher returned non-finite embeddings")


class FeaturesStage:
    """Run the teacher over every render: RUN/masks/NNNN.npz + RUN/features.safetensors.

    Summary: {"teacher", "text_encoder", "dim", "views", "masks", "levels", "cached_views", "teacher_seconds",
    "masks_per_s"[, "model_seconds"]}.
    """

    name = "features"
    section = "teacher"

    def enabled(self, cfg: FeaturesStageConfig) -> bool:
        return True

    def inputs(self, run: RunDir, cfg: FeaturesStageConfig) -> list[Path]:
        return [run.views, run.renders, run.scene_json, run.photos]

    def outputs(self, run: RunDir, cfg: FeaturesStageConfig, ctx: StageContext) -> list[Path]:
        return [run.features, run.masks] + ([run.masks_png] if ctx.preview else [])

    def key(self, run: RunDir, cfg: FeaturesStageConfig, ctx: StageContext) -> Any:
        teacher = make_teacher(run.root, cfg.teacher)
        return [_VERSION, getattr(teacher, "cache_key", None) or teacher_kwargs(cfg.teacher), cfg.teacher.name,
                cfg.teacher.teacher_input]

    def compute(self, run: RunDir, cfg: FeaturesStageConfig, ctx: StageContext) -> dict[str, Any]:
        return _features(run, cfg.teacher, preview=ctx.preview, key=ctx.key, cost_key=ctx.cost_key)


FEATURES = FeaturesStage()
_VERSION = "features-v2"


@dataclass
class EncodedViews:
    """What the teacher (or the feature cache) gave for every view: one ViewMasks per view, the views taken from
    the cache, seconds inside the teacher, and the rgb of the preview views."""

    results: list[ViewMasks | None]
    cached: int = 0
    teacher_seconds: float = 0.0
    preview_rgb: dict[int, np.ndarray] = dataclass_field(default_factory=dict)


def _features(run: RunDir, cfg: TeacherConfig, *, preview: bool, key: str,
              cost_key: str | None = None) -> dict[str, Any]:
    """The features stage: plan (views, teacher, cache) -> encode every view -> write masks/ + features ->
    preview; returns the summary."""
    t0 = time.perf_counter()
    n, teacher, cache, use_photos = _plan_features(run, cfg)
    expected = _expected_cost(run, cfg, n, cost_key)
    preview_idx = set(np.linspace(0, n - 1, min(n, PREVIEW_VIEWS)).round().astype(int).tolist()) if preview else set()
    enc = _encode_views(run, teacher, cache, use_photos, n, max(1, cfg.batch_size), preview_idx)
    summary = write_outputs(run.root, enc.results, teacher, key)
    if preview:
        shown = sorted(enc.preview_rgb)
        write_preview(run.masks_png, [enc.preview_rgb[i] for i in shown],
                      [np.asarray(enc.results[i].mask_ids) for i in shown],  # type: ignore[union-attr]
                      [enc.results[i].embeddings for i in shown])  # type: ignore[union-attr]
    summary.update(photo_views=sum(use_photos), cached_views=enc.cached, teacher_seconds=round(enc.teacher_seconds, 3),
                   masks_per_s=round(summary["masks"] / enc.teacher_seconds, 2) if enc.teacher_seconds > 0 else None)
    summary["expected_teacher_s"] = expected.total_s  # the cost model's figure, beside the measured one
    if hasattr(teacher, "model_seconds"):
        summary["model_seconds"] = round(teacher.model_seconds(), 3)
    log.info("features: %d masks over %d views (%s) in %.1f s", summary["masks"], n, teacher.name,
             time.perf_counter() - t0)
    return summary


def _expected_cost(run: RunDir, cfg: TeacherConfig, n: int, cost_key: str | None = None) -> Any:
    """Log the teacher's expected time over the run's ``n`` views (teachers/cost.py; the row of ``cost_key``, the
    config preset's name, else ``default``) before it starts."""

    mp = sum(c.width * c.height for c in load_cameras(run.root)) / 1e6
    cost = estimate_for_config(cfg, n, mp, preset=cost_key)
    log.info("features: %d views, %.1f MP; expected %s (cached views are faster)", n, mp, cost.describe())
    return cost


def _plan_features(run: RunDir, cfg: TeacherConfig) -> tuple[int, Teacher, FeatureCache, list[bool]]:
    """(views, the teacher, its feature cache, which views feed the teacher a photo); RunStateError when the
    run lists no views."""
    n = len(load_cameras(run.root))
    if n == 0:
        raise RunStateError("views.json lists no views; nothing for the teacher to see", path=run.root)
    teacher = make_teacher(run.root, cfg)
    cache = FeatureCache(getattr(teacher, "cache_key", None) or config_hash(teacher.name, teacher_kwargs(cfg)))
    return n, teacher, cache, photos_for_teacher(run.root, cfg.teacher_input)


def _encode_views(run: RunDir, teacher: Teacher, cache: FeatureCache, use_photos: list[bool], n: int,
                  batch_size: int, preview_idx: set[int]) -> EncodedViews:
    """Every view's masks: from the cache where its content was seen before, else from the teacher in batches
    of ``batch_size`` views (the photo where the view has one, render/photos.py)."""
    enc = EncodedViews(results=[None] * n)
    pending: list[tuple[int, str, Render]] = []
    done_masks = 0
    with progress_bar(None, columns=("views", "{task.fields[rate]}")) as progress:
        task = progress.add_task(f"features ({teacher.name})", total=n, rate="")
        for i, r in iter_teacher_renders(run.root, use_photos):
            if i in preview_idx:
                enc.preview_rgb[i] = r.rgb
            h = render_content_hash(r)
            hit = cache.get(h)
            if hit is not None:
                validate_view_masks(hit, r, int(teacher.dim), f"cached view {i:04d}")
                enc.results[i], enc.cached = hit, enc.cached + 1
                progress.update(task, advance=1)
                continue
            pending.append((i, h, r))
            if len(pending) >= batch_size or i == n - 1:
                done_masks += _process_batch(teacher, cache, pending, enc)
                progress.update(task, advance=len(pending),
                                rate=f"{done_masks / max(enc.teacher_seconds, 1e-9):.1f} masks/s")
                pending.clear()
        if pending:
            done_masks += _process_batch(teacher, cache, pending, enc)
            progress.update(task, advance=len(pending))
    return enc


def _process_batch(teacher: Teacher, cache: FeatureCache, pending: list[tuple[int, str, Render]],
                   enc: EncodedViews) -> int:
    """Run the teacher on one batch of views, validate and cache each result; returns the masks it made."""
    if hasattr(teacher, "load"):
        teacher.load()  # model loading is not teacher time
    t = time.perf_counter()
    vms = teacher.encode_views([r for _, _, r in pending])
    enc.teacher_seconds += time.perf_counter() - t
    if len(vms) != len(pending):
        raise SceneKDError(f"teacher {teacher.name} returned {len(vms)} results for {len(pending)} views")
    for (i, h, r), vm in zip(pending, vms, strict=True):
        validate_view_masks(vm, r, int(teacher.dim), f"view {i:04d}")
        cache.put(h, vm)
        enc.results[i] = vm
    return sum(vm.num_masks for vm in vms)


def write_outputs(run_dir: Path, results: list[ViewMasks | None], teacher: Teacher, chash: str) -> dict[str, Any]:
    """masks/NNNN.npz (global rows) and features.safetensors, each written atomically."""
    offset, embs, views, levels, areas = 0, [], [], [], []
    n_levels = max((np.asarray(vm.mask_ids).shape[0] for vm in results if vm is not None), default=0)
    masks_dir = run_dir / "masks"
    masks_dir.mkdir(parents=True, exist_ok=True)
    for i, vm in enumerate(results):
        assert vm is not None
        ids = np.asarray(vm.mask_ids, np.int32)
        m = vm.num_masks
        glob = np.where(ids >= 0, ids + offset, -1).astype(np.int32)
        with atomic_path(masks_dir / f"{i:04d}.npz") as tmp:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, mask_ids=glob)
        area = np.bincount(ids[ids >= 0].ravel(), minlength=m)[:m] if m else np.zeros(0, np.int64)
        embs.append(vm.embeddings.detach().float().cpu())
        views.append(np.full(m, i, np.int32))
        levels.append(np.asarray(vm.mask_level, np.int32))
        areas.append(area.astype(np.int32))
        offset += m
    for stale in masks_dir.glob("*.npz"):
        if stale.stem.isdigit() and int(stale.stem) >= len(results):
            stale.unlink()
    dim = int(teacher.dim)
    emb = torch.cat(embs) if embs else torch.zeros(0, dim)
    text_id = getattr(teacher, "text_encoder_id", None) or teacher.text_encoder.id
    meta = {"teacher": teacher.name, "text_encoder": text_id, "dim": dim, "config_hash": chash,
            "levels": n_levels, "views": len(results)}
    save_tensors(run_dir / "features.safetensors", {
        "embeddings": emb.contiguous(), "mask_view": np.concatenate(views), "mask_level": np.concatenate(levels),
        "mask_area": np.concatenate(areas)}, meta)
    return {**meta, "masks": int(emb.shape[0])}


def pca_colours(embeddings: torch.Tensor) -> np.ndarray:
    """[M, 3] float in [0, 1]: the embeddings' first 3 principal components, each stretched to 2-98th percentile."""
    x = embeddings.detach().double().cpu()
    if x.shape[0] == 0:
        return np.zeros((0, 3))
    x = x - x.mean(0, keepdim=True)
    _, vecs = torch.linalg.eigh(x.T @ x)
    comps = vecs[:, -3:].flip(1) if vecs.shape[1] >= 3 else torch.eye(x.shape[1], 3, dtype=x.dtype)
    y = (x @ comps).numpy()
    lo, hi = np.percentile(y, 2, axis=0), np.percentile(y, 98, axis=0)
    return np.clip((y - lo) / np.maximum(hi - lo, 1e-9), 0, 1)


def draw_masks(rgb: np.ndarray, ids: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """The render with each mask tinted by and outlined in its colour ([H, W, 3] uint8); ids [H, W] (-1 none)."""

    img = rgb.astype(np.float32) / 255.0
    has = ids >= 0
    col = np.zeros_like(img)
    col[has] = colours[ids[has]]
    edge = region_boundaries(ids) & has
    out = img * 0.6
    out[has] = img[has] * 0.55 + col[has] * 0.45
    out[edge] = col[edge]
    return (out * 255).round().astype(np.uint8)


def write_preview(path: Path, rgbs: list[np.ndarray], mask_ids: list[np.ndarray], embeddings: list[torch.Tensor]) -> Path:
    """Grid of renders with level-0 mask outlines coloured by a shared 3-component PCA of the mask embeddings."""
    from PIL import Image

    if not rgbs:
        raise SceneKDError("no views to preview")
    colours = pca_colours(torch.cat([e.float() for e in embeddings]))
    tiles, start = [], 0
    for rgb, ids, e in zip(rgbs, mask_ids, embeddings, strict=True):
        c = colours[start : start + e.shape[0]]
        start += e.shape[0]
        tiles.append(draw_masks(rgb, np.asarray(ids)[0], c) if ids.shape[0] else rgb)
    h = max(t.shape[0] for t in tiles)
    w = max(t.shape[1] for t in tiles)
    cols = min(4, len(tiles))
    rows = -(-len(tiles) // cols)
    sheet = np.full((rows * (h + 4), cols * (w + 4), 3), 255, np.uint8)
    for k, t in enumerate(tiles):
        r, c = divmod(k, cols)
        sheet[r * (h + 4) : r * (h + 4) + t.shape[0], c * (w + 4) : c * (w + 4) + t.shape[1]] = t
    with atomic_path(path) as tmp:
        Image.fromarray(sheet).save(tmp, format="PNG")
    return path


def write_preview_from_run(run_dir: str | Path) -> Path:
    """The preview from a finished features stage (reads masks/, features.safetensors and the renders)."""
    run_dir = Path(run_dir)
    tensors, _ = load_tensors(run_dir / "features.safetensors")
    emb, views = tensors["embeddings"], tensors["mask_view"].numpy()
    cams = load_cameras(run_dir)
    pick = np.unique(np.linspace(0, len(cams) - 1, min(len(cams), PREVIEW_VIEWS)).round().astype(int))
    rgbs, ids, embs = [], [], []
    for i in pick:
        rows = np.nonzero(views == i)[0]
        with np.load(run_dir / "masks" / f"{i:04d}.npz") as z:
            g = z["mask_ids"]
        first = int(rows[0]) if rows.size else 0
        ids.append(np.where(g >= 0, g - first, -1))
        embs.append(emb[rows])
        rgbs.append(load_render(run_dir, int(i), cams[i]).rgb)
    return write_preview(run_dir / "plots" / "masks.png", rgbs, ids, embs)
