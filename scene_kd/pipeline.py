"""The whole pipeline: render -> features -> fuse -> distill -> eval, each stage skipping when current.

Stage functions (one per stage, each ``(run_dir, cfg, *, force) -> dict`` summary):
  scene_kd.render.stage.render_stage(run_dir, scene, cfg: RenderConfig, *, force=False)
  scene_kd.teachers.stage.features_stage(run_dir, cfg: TeacherConfig, *, force=False)
  scene_kd.lift.stage.fuse_stage(run_dir, cfg: FuseConfig, *, force=False)
  scene_kd.distill.stage.distill_stage(run_dir, cfg: DistillConfig, *, force=False)
  scene_kd.eval.stage.eval_stage(run_dir, *, force=False)
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from scene_kd.config import PipelineConfig, dump_config
from scene_kd.errors import SceneKDError
from scene_kd.runio import atomic_path

STAGES = ("render", "features", "fuse", "distill", "eval")


def run_pipeline(
    scene: str | Path,
    run_dir: str | Path,
    cfg: PipelineConfig | None = None,
    *,
    force: bool = False,
    until: str | None = None,
    preview: bool = False,
) -> dict[str, Any]:
    """Run every stage on ``scene`` into ``run_dir``; returns {stage: summary}.

    ``until`` stops after that stage; ``preview`` also writes the contact sheets (plots/views.png, plots/masks.png).
    """
    from scene_kd.scene.io import load_scene

    if until is not None and until not in STAGES:
        raise SceneKDError(f"unknown stage {until!r}; choose one of {', '.join(STAGES)}")
    cfg = cfg or PipelineConfig()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(run_dir / "config.yaml") as tmp:
        tmp.write_text(dump_config(cfg))
    last = STAGES.index(until) if until else len(STAGES) - 1
    results: dict[str, Any] = {}
    t0 = time.perf_counter()

    from scene_kd.render.stage import render_stage

    # once a stage really runs, every later stage's inputs are new: they rerun and replace their outputs
    redo = force

    def ran(summary: dict[str, Any]) -> dict[str, Any]:
        nonlocal redo
        redo = redo or not summary.get("skipped", False)
        return summary

    results["render"] = ran(render_stage(run_dir, load_scene(scene), cfg.render, force=redo, preview=preview))
    if last >= 1:
        from scene_kd.teachers.stage import features_stage

        results["features"] = ran(features_stage(run_dir, cfg.teacher, force=redo, preview=preview))
    if last >= 2:
        from scene_kd.lift.stage import fuse_stage

        results["fuse"] = ran(fuse_stage(run_dir, cfg.fuse, force=redo))
    if last >= 3 and cfg.distill.enabled:
        from scene_kd.distill.stage import distill_stage

        results["distill"] = ran(distill_stage(run_dir, cfg.distill, force=redo))
    if last >= 4:
        from scene_kd.eval.stage import eval_stage

        results["eval"] = ran(eval_stage(run_dir, force=redo))
    results["seconds"] = round(time.perf_counter() - t0, 3)
    return results
