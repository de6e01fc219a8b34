"""The whole pipeline: a loop over the stage registry (scene_kd/stages.py), each stage skipping when current.

``run_pipeline`` checks the teacher's requirements (weights, labels) before any stage runs, saves the resolved
config as RUN/config.yaml, then runs every enabled stage up to ``until``. The per-stage functions below run one
stage with only its config section (the verbs and tests use them); each returns a ``StageResult``.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

from scene_kd.config import PipelineConfig, resolve_config, save_config
from scene_kd.distill.config import DistillConfig
from scene_kd.lift.config import FuseConfig
from scene_kd.render.config import RenderConfig
from scene_kd.rundir import RunDir, StageContext, StageResult
from scene_kd.scene.io import load_scene
from scene_kd.scene.units import extent_summary
from scene_kd.stages import (
    DISTILL,
    EVAL,
    FEATURES,
    FUSE,
    RENDER,
    STAGE_NAMES,
    STAGES,
    run_stage,
    stage_by_name,
)
from scene_kd.teachers.config import ORACLE, ORACLE_NOTE, TeacherConfig
from scene_kd.teachers.cost import estimate_for_config
from scene_kd.teachers.stage import check_teacher_requirements, scene_has_classes

log = logging.getLogger(__name__)


def run_pipeline(
    scene: Any,
    run_dir: str | Path,
    cfg: PipelineConfig | None = None,
    *,
    force: bool = False,
    until: str | None = None,
    preview: bool = False,
    progress: bool = True,
    cost_key: str | None = None,
) -> dict[str, Any]:
    """Run every enabled stage on ``scene`` (a path or a loaded scene) into ``run_dir``; {stage: result}.

    The scene (or capture) is read and the teacher's requirements are checked before anything is written, so bad
    input leaves no run folder (missing weights raise MissingWeightsError with the links; the oracle on an
    unlabelled scene a SceneKDError). ``until`` stops after that stage; ``preview`` also writes the contact sheets.
    Before rendering it logs the plan and the teacher's expected time (the cost table's row for ``cost_key``, the
    config preset's name, else ``default``), and refuses (BudgetError) a plan over render.max_views /
    render.max_teacher_hours.
    """

    last = STAGE_NAMES.index(stage_by_name(until).name) if until else len(STAGES) - 1
    cfg = cfg or PipelineConfig()
    run = RunDir(Path(run_dir))
    capture = None
    if isinstance(scene, (str, Path)) and Path(scene).is_dir():  # a capture folder: photos + cameras + scene
        from scene_kd.scene.capture import load_capture

        capture = load_capture(scene)  # logs the layout it found
    loaded = (capture.scene if capture else load_scene(scene, units=cfg.input.units) if isinstance(scene, (str, Path))
              else scene)
    check_teacher_requirements(cfg.teacher, has_labels=scene_has_classes(loaded) or bool(capture and capture.labels))
    # only now, with the inputs read and the teacher's needs met, does the run folder appear
    run.root.mkdir(parents=True, exist_ok=True)
    save_config(run.root, cfg)
    if cfg.teacher.name == ORACLE:
        log.warning("teacher: %s - %s", ORACLE, ORACLE_NOTE)
    ctx = StageContext(scene=loaded, capture=capture, preview=preview, progress=progress,
                       on_plan=teacher_cost_hook(cfg.teacher, cost_key), cost_key=cost_key)

    results: dict[str, Any] = {"scene": extent_summary(loaded)}
    t0 = time.perf_counter()
    for stage in STAGES[: last + 1]:
        if stage is EVAL and not scene_has_classes(loaded):
            log.info("eval: skipped - the scene has no ground-truth labels to score against")
        elif stage.enabled(cfg):
            results[stage.name] = run_stage(stage, run, cfg, ctx, force=force)
    if capture is not None:
        results["capture"] = {"layout": capture.layout, "photos": len(capture.photos), "scene": str(capture.scene_path)}
    results["seconds"] = round(time.perf_counter() - t0, 3)
    return results


def teacher_cost_hook(teacher: TeacherConfig | None, preset: str | None = None) -> Any:
    """The render stage's ``on_plan``: plan counts -> the expected time of ``teacher`` on this machine's device
    (scene_kd/teachers/cost.py) as a dict with a "line" to print; None without a teacher."""
    if teacher is None:
        return None

    def on_plan(plan: dict[str, Any]) -> dict[str, Any]:
        cost = estimate_for_config(teacher, int(plan.get("views", 0)), float(plan.get("megapixels", 0.0)),
                                   preset=preset)
        return {**cost.as_dict(), "line": cost.describe()}

    return on_plan


def _with(section: str, value: Any) -> PipelineConfig:
    return dataclasses.replace(PipelineConfig(), **{section: value})


def render_stage(run_dir: str | Path, scene: Any, cfg: RenderConfig, *, force: bool = False,
                 preview: bool = False, capture: Any = None, teacher: TeacherConfig | None = None,
                 cost_key: str | None = None) -> StageResult:
    """Plan views (or take a capture's cameras and photos) and render ``scene`` into ``run_dir`` (see
    scene_kd/render/stage.py); with ``teacher``, the plan line also gives its expected time (the cost table's row
    for ``cost_key``, the config preset's name, else ``default``)."""
    return run_stage(RENDER, run_dir, _with("render", cfg), StageContext(scene=scene, capture=capture,
                                                                         preview=preview,
                                                                         on_plan=teacher_cost_hook(teacher, cost_key),
                                                                         cost_key=cost_key),
                     force=force)


def features_stage(run_dir: str | Path, cfg: TeacherConfig, *, force: bool = False,
                   preview: bool = False) -> StageResult:
    """Run the teacher over the run's renders (see scene_kd/teachers/stage.py)."""
    return run_stage(FEATURES, run_dir, _with("teacher", cfg), StageContext(preview=preview), force=force)


def fuse_stage(run_dir: str | Path, cfg: FuseConfig | None = None, *, force: bool = False) -> StageResult:
    """Fuse the run's mask embeddings onto its points / Gaussians (see scene_kd/lift/stage.py)."""
    return run_stage(FUSE, run_dir, _with("fuse", cfg or FuseConfig()), force=force)


def distill_stage(run_dir: str | Path, cfg: DistillConfig, *, force: bool = False, resume: bool = False,
                  progress: bool = True) -> StageResult:
    """Train the student (see scene_kd/distill/stage.py)."""
    return run_stage(DISTILL, run_dir, _with("distill", cfg), StageContext(resume=resume, progress=progress),
                     force=force)


def eval_stage(run_dir: str | Path, *, force: bool = False, sources: list[str] | None = None) -> StageResult:
    """Score the run's field against its ground truth with the run's query settings (see scene_kd/eval/stage.py)."""

    return run_stage(EVAL, run_dir, resolve_config(run_dir), StageContext(sources=tuple(sources) if sources else None),
                     force=force)
