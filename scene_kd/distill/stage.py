"""The distill stage: RUN/field.* (fused) -> student -> RUN/student.safetensors + student.json, and the field
re-saved with ``features["distilled"]`` beside the fused ones."""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from scene_kd.distill.config import DistillConfig
from scene_kd.errors import RunStateError
from scene_kd.runio import Stages, config_hash, peak_rss_mb

log = logging.getLogger(__name__)

OUTPUTS = ["student.safetensors", "student.json", "field.safetensors", "field.json"]
CHECKPOINT = "student.ckpt.pt"


def distill_hash(cfg: DistillConfig, run_dir: Path, field_config_hash: str) -> str:
    """Config hash of this stage: its settings (less those that do not change the result) + its input's identity."""
    settings = dataclasses.replace(cfg, enabled=True, predict_points=0, device="-", cpu_threads=0)
    fuse_rec = Stages(run_dir)._read().get("fuse", {})
    return config_hash(settings, field_config_hash, fuse_rec.get("config_hash", ""))


def distill_stage(run_dir: str | Path, cfg: DistillConfig, *, force: bool = False, resume: bool = False,
                  progress: bool = True) -> dict[str, Any]:
    """Train the student on the run's fused field and add its predictions to the field.

    Skips when the outputs are current (same config and same fused input) unless ``force``; ``resume``
    continues an interrupted training from ``RUN/student.ckpt.pt``. Raises RunStateError for a missing or
    unusable field (no fused features, no covered points) or a corrupted/mismatched checkpoint; nothing is
    written before training has succeeded.
    """
    from scene_kd.distill.train import predict, save_student, train_student
    from scene_kd.field import FeatureField

    run_dir = Path(run_dir)
    field = FeatureField.load(run_dir)
    if "fused" not in field.features:
        raise RunStateError("field has no fused features; run `scene-kd fuse` first", path=run_dir)
    stages = Stages(run_dir)
    chash = distill_hash(cfg, run_dir, field.config_hash)
    if not force and "distilled" in field.features and stages.is_current("distill", chash, OUTPUTS):
        return {"skipped": True, "config_hash": chash}

    t0 = time.perf_counter()
    rgb, intensity = field.rgb, _run_scene_intensity(run_dir, len(field))
    model, history = train_student(
        field.positions, field.features["fused"], field.coverage, rgb, cfg, intensity=intensity,
        checkpoint=run_dir / CHECKPOINT, resume=resume and not force, progress=progress,
    )
    distilled = predict(model, field.positions, rgb, intensity, max_points=cfg.predict_points, device=cfg.device,
                        progress=progress, threads=cfg.cpu_threads)
    if distilled.shape != (len(field), field.dim):
        raise RunStateError(f"student predicted {tuple(distilled.shape)}, field needs ({len(field)}, {field.dim})")
    seconds = time.perf_counter() - t0
    summary = {
        "skipped": False, "config_hash": chash, "points": len(field), "covered_points": history["covered_points"],
        "voxel_size": history["spec"]["voxel_size"], "epochs": len(history["loss"]),
        "final_loss": history["loss"][-1] if history["loss"] else None, "steps": history["steps"],
        "points_per_second": history["points_per_second"], "seconds": round(seconds, 3),
    }
    save_student(run_dir, model, config=cfg, extra={
        "teacher": field.teacher, "text_encoder": field.text_encoder, "field_config_hash": field.config_hash,
        "distill_config_hash": chash, "history": {k: v for k, v in history.items() if k != "spec"},
    })
    field.features["distilled"] = distilled.to(dtype=field.features["fused"].dtype)
    field.extra_meta["distill_config_hash"] = chash
    field.save(run_dir)
    stages.record("distill", chash, seconds, peak_rss_mb(), voxel_size=summary["voxel_size"],
                  final_loss=summary["final_loss"])
    from scene_kd.pipeline import STAGES

    stages.invalidate_after("distill", list(STAGES))
    return summary


def _run_scene_intensity(run_dir: Path, n: int) -> np.ndarray | None:
    """Intensity from RUN/scene.safetensors when the run's scene has it for exactly these points."""
    if not (run_dir / "scene.safetensors").exists():
        return None
    from scene_kd.runio import load_tensors

    try:
        tensors, _ = load_tensors(run_dir / "scene.safetensors")
    except RunStateError:
        return None
    inten = tensors.get("intensity")
    if inten is None or inten.shape[0] != n:
        return None
    return inten.numpy()
