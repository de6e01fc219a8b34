"""The fuse stage: RUN/{scene, views.json, renders/, masks/, features.safetensors} -> RUN/fused.safetensors +
RUN/field.safetensors/field.json.

``RUN/fused.safetensors``: ``coverage`` int32 [N] (views that gave each point / Gaussian a mask),
``coverage.<granularity>`` int32 [N] per granularity (e.g. ``coverage.level0``); metadata: teacher,
text_encoder, dim, kind, granularities, storage, config_hash.
The field holds the fused features (unit rows where covered, zero elsewhere) as ``features.fused`` (see
scene_kd/field.py): for points a mask mixture (sparse per-point weights over the mask embeddings, exact;
scene_kd/feature_store.py), for Gaussians dense float16 rows; the distill stage adds ``features.distilled``.
Mask ids at the pixels the render stage's RGB-D depth check marked (``RUN/photos/NNNN.depth_check.npz``,
scene_kd/render/photos.py) are dropped before lifting.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from scene_kd.errors import RunStateError, SceneKDError
from scene_kd.feature_store import as_rows
from scene_kd.field import FeatureField
from scene_kd.lift.config import FuseConfig
from scene_kd.lift.fuse import fuse_points
from scene_kd.lift.gaussians import lift_gaussians
from scene_kd.progress import counter
from scene_kd.render.photos import drop_disagreeing
from scene_kd.render.types import load_cameras
from scene_kd.rundir import RunDir, StageContext
from scene_kd.runio import load_tensors, read_json, save_tensors
from scene_kd.scene.runscene import load_run_scene, run_scene_meta

log = logging.getLogger(__name__)


class FuseStageConfig(Protocol):
    """The config section the fuse stage reads: ``fuse`` (a Protocol so lift/ never imports the config layer above
    it; :class:`scene_kd.config.PipelineConfig` has it)."""

    @property
    def fuse(self) -> FuseConfig: ...


_VERSION = "fuse-v1"


def _npz_array(path: Path, key: str, what: str) -> np.ndarray:
    if not path.exists():
        raise RunStateError(f"missing {path.parent.name}/{path.name}; run `scene-kd {what}` first", path=path.parent.parent)
    try:
        with np.load(path) as z:
            if key not in z.files:
                raise RunStateError(f"{path.parent.name}/{path.name} has no {key!r} array", path=path.parent.parent)
            return z[key]
    except (OSError, ValueError) as e:
        raise RunStateError(f"cannot read {path.parent.name}/{path.name} ({e})", path=path.parent.parent) from None


def _stream(run_dir: Path, order: list[int], folder: str, key: str, what: str) -> Iterator[np.ndarray]:
    for i in order:
        yield _npz_array(run_dir / folder / f"{i:04d}.npz", key, what)


def _masks(run_dir: Path, order: list[int]) -> Iterator[np.ndarray]:
    """The views' mask ids in ``order``, with the pixels the render stage's RGB-D depth check marked dropped
    (scene_kd/render/photos.py: the frame's own depth says the photo shows something else there)."""

    for i, m in zip(order, _stream(run_dir, order, "masks", "mask_ids", "features"), strict=True):
        yield drop_disagreeing(run_dir, i, m)


def load_features(run_dir: str | Path) -> tuple[np.ndarray, dict[str, Any]]:
    """(embeddings [M, D] float32, metadata) of RUN/features.safetensors, validated."""
    tensors, meta = load_tensors(Path(run_dir) / "features.safetensors")
    emb = tensors.get("embeddings")
    if emb is None:
        raise RunStateError("features.safetensors has no 'embeddings'; rerun `scene-kd features`", path=run_dir)
    if emb.ndim != 2 or emb.shape[0] == 0 or emb.shape[1] == 0:
        raise RunStateError(f"features.safetensors embeddings are {tuple(emb.shape)}, expected a non-empty [M, D]", path=run_dir)
    if "dim" in meta and int(meta["dim"]) != emb.shape[1]:
        raise RunStateError(f"features.safetensors says dim {meta['dim']} but its embeddings have {emb.shape[1]} columns",
                            path=run_dir)
    emb = emb.float().numpy()
    if not np.isfinite(emb).all():
        raise RunStateError("features.safetensors embeddings contain NaN or inf", path=run_dir)
    return emb, meta


def _fused_config_hash(run_dir: Path) -> str | None:
    """The config hash this run's fuse stage last wrote into fused.safetensors (and field.json), if any."""
    path = run_dir / "fused.safetensors"
    if not path.exists():
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            value = (f.metadata() or {}).get("config_hash")
        return json.loads(value) if value else None
    except Exception:  # unreadable: treat as not ours
        return None


class FuseStage:
    """Fuse the run's mask embeddings onto its points (or lift them onto its Gaussians); write fused + field.

    Raises RunStateError, writing nothing, when an input is missing or inconsistent or no point is covered.
    Summary: {"kind", "count", "covered", "coverage", "dim", "teacher", "text_encoder", "views", "granularities"}.
    """

    name = "fuse"
    section = "fuse"

    def enabled(self, cfg: FuseStageConfig) -> bool:
        return True

    def inputs(self, run: RunDir, cfg: FuseStageConfig) -> list[Path]:
        return [run.scene_tensors, run.scene_json, run.views, run.renders, run.masks, run.features]

    def outputs(self, run: RunDir, cfg: FuseStageConfig, ctx: StageContext) -> list[Path]:
        return [run.fused, run.field_tensors, run.field_json]

    def key(self, run: RunDir, cfg: FuseStageConfig, ctx: StageContext) -> Any:
        return [_VERSION, cfg.fuse]

    def compute(self, run: RunDir, cfg: FuseStageConfig, ctx: StageContext) -> dict[str, Any]:
        return _fuse(run, cfg.fuse, key=ctx.key, force=ctx.force)


FUSE = FuseStage()


def _fuse(run: RunDir, cfg: FuseConfig, *, key: str, force: bool) -> dict[str, Any]:
    import torch

    run_dir = run.root
    if not run_dir.is_dir():
        raise RunStateError("not a run folder", path=run_dir)
    t0 = time.perf_counter()
    scene_meta = run_scene_meta(run_dir)
    cameras = load_cameras(run_dir)
    if not cameras:
        raise RunStateError("views.json lists no cameras; rerun `scene-kd render`", path=run_dir)
    embeddings, fmeta = load_features(run_dir)
    dim = int(embeddings.shape[1])
    teacher, text_encoder = str(fmeta.get("teacher", "")), str(fmeta.get("text_encoder", ""))
    chash = key
    field_json = run.field_json
    own_hash = _fused_config_hash(run_dir)
    if field_json.exists() and not force:
        old = read_json(field_json)
        # a field this run's own fuse stage wrote earlier is stale output, replaced as its inputs changed;
        # a field from elsewhere (another teacher or text encoder, copied in) is refused unless forced
        stale_own = bool(own_hash) and old.get("config_hash") == own_hash
        mismatch = int(old.get("dim", dim)) != dim or bool(
            old.get("text_encoder") and text_encoder and old["text_encoder"] != text_encoder)
        if mismatch and not stale_own:
            raise RunStateError(
                f"field.safetensors holds {old.get('dim')}-dim features of text encoder {old.get('text_encoder')!r} "
                f"but features.safetensors has {dim}-dim features of {text_encoder!r}; rerun with --force to "
                "replace the field (its distilled features too)", path=run_dir)
    scene = load_run_scene(run_dir)
    order = sorted(range(len(cameras)), key=lambda i: (cameras[i].level, i))  # one granularity live at a time
    cams = [cameras[i] for i in order]
    masks = _masks(run_dir, order)
    with counter(len(cams), f"{'fuse' if scene.kind == 'points' else 'lift'} views") as advance:
        try:
            if scene.kind == "points":
                depths = _stream(run_dir, order, "renders", "depth", "render")
                feats, coverage, per_gran = fuse_points(scene.xyz, cams, depths, masks, embeddings, cfg,
                                                        normals=scene.normals, progress=advance, output="mixture")
            else:
                ids = _stream(run_dir, order, "renders", "topk_ids", "render")
                weights = _stream(run_dir, order, "renders", "topk_weights", "render")
                feats, coverage, per_gran = lift_gaussians(len(scene), cams, ids, weights, masks, embeddings, cfg,
                                                           progress=advance)
        except RunStateError:
            raise
        except SceneKDError as e:
            raise RunStateError(f"cannot fuse: {e}", path=run_dir) from None
    covered = int((coverage > 0).sum())
    if covered == 0:
        raise RunStateError("no point is covered by any mask in any view (check the views and the teacher's masks); "
                            "nothing written", path=run_dir)

    store = as_rows(feats.to(torch.float16) if isinstance(feats, torch.Tensor) else feats)
    per_gran_points = {k: int((v > 0).sum()) for k, v in per_gran.items()}
    save_tensors(run.fused,
                 {"coverage": coverage, **{f"coverage.{k}": v for k, v in per_gran.items()}},
                 {"teacher": teacher, "text_encoder": text_encoder, "dim": dim, "kind": scene.kind,
                  "granularities": sorted(per_gran), "storage": store.kind, "config_hash": chash})
    rgb = scene.rgb if scene.kind == "points" else scene.rgb_from_dc()
    field = FeatureField(
        positions=scene.xyz, origin=scene.origin, features={"fused": store}, teacher=teacher,
        text_encoder=text_encoder, dim=dim, kind=scene.kind, coverage=coverage.numpy(), rgb=rgb,
        labels=scene.labels, label_names=dict(scene.label_names), source_hash=str(scene_meta.get("source_hash") or ""),
        config_hash=chash,
    )
    field.save(run_dir)
    seconds = time.perf_counter() - t0
    summary = {
        "kind": scene.kind, "count": len(scene), "covered": covered, "coverage": covered / max(len(scene), 1),
        "dim": dim, "teacher": teacher, "text_encoder": text_encoder, "views": len(cams),
        "granularities": per_gran_points, "storage": store.kind, "stored_mib": round(store.nbytes() / 2**20, 1),
    }
    log.info("fused %s of %s %s (%.1f s)", f"{covered:,}", f"{len(scene):,}", scene.kind, seconds)
    return summary
