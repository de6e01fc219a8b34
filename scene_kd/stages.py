"""The stage protocol: the stage order, and the one function that runs a stage.

A stage (``Stage``) names its config section, its input and output files in the run folder, a key (what of the
config and context changes its result) and a ``compute``. :func:`run_stage` applies one staleness rule to all:
a stage is current when its record in ``RUN/stages.json`` has the same key - a hash of the stage's config key
and of the content identity of each of its inputs (the upstream outputs) - and its outputs are intact.
Otherwise it computes, records its outputs' identities, and forgets every stage after it. ``STAGES`` is the
order; ``scene_kd/pipeline.py`` loops over it. Imports point one way: this module imports the stages, never
the other way round.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from scene_kd.config import PipelineConfig
from scene_kd.distill.stage import DISTILL
from scene_kd.errors import RunStateError, SceneKDError
from scene_kd.eval.stage import EVAL
from scene_kd.lift.stage import FUSE
from scene_kd.render.stage import RENDER
from scene_kd.rundir import RunDir, StageContext, StageRecords, StageResult
from scene_kd.runio import config_hash, peak_rss_mb
from scene_kd.teachers.stage import FEATURES

log = logging.getLogger(__name__)


class Stage(Protocol):
    name: str
    section: str | None
    """The PipelineConfig section the stage reads (None: none)."""

    def enabled(self, cfg: PipelineConfig) -> bool: ...

    def inputs(self, run: RunDir, cfg: PipelineConfig) -> list[Path]: ...

    def outputs(self, run: RunDir, cfg: PipelineConfig, ctx: StageContext) -> list[Path]: ...

    def key(self, run: RunDir, cfg: PipelineConfig, ctx: StageContext) -> Any: ...

    def compute(self, run: RunDir, cfg: PipelineConfig, ctx: StageContext) -> dict[str, Any]: ...


STAGES: tuple[Stage, ...] = (RENDER, FEATURES, FUSE, DISTILL, EVAL)
STAGE_NAMES: tuple[str, ...] = tuple(s.name for s in STAGES)


def stage_by_name(name: str) -> Stage:
    for s in STAGES:
        if s.name == name:
            return s
    raise SceneKDError(f"unknown stage {name!r}; choose one of {', '.join(STAGE_NAMES)}")


def stage_key(stage: Stage, run: RunDir, cfg: PipelineConfig, ctx: StageContext) -> str:
    """The stage's key: its config key + the content identity of each input (None for a missing input)."""
    records = StageRecords(run)
    inputs = {run.rel(p): records.identity(p) for p in stage.inputs(run, cfg)}
    return config_hash(stage.name, stage.key(run, cfg, ctx), inputs)


def is_current(stage: Stage, run: RunDir, cfg: PipelineConfig, ctx: StageContext, key: str | None = None) -> bool:
    records = StageRecords(run)
    rec = records.get(stage.name)
    if not rec or rec.get("key") != (key or stage_key(stage, run, cfg, ctx)):
        return False
    if any(not p.exists() for p in stage.outputs(run, cfg, ctx)):
        return False
    return records.outputs_intact(stage.name, list(STAGE_NAMES[STAGE_NAMES.index(stage.name) + 1:]))


def run_stage(stage: Stage, run: RunDir | str | Path, cfg: PipelineConfig, ctx: StageContext | None = None, *,
              force: bool = False, before_compute: Callable[[], None] | None = None) -> StageResult:
    """Run ``stage`` unless it is current (``force`` reruns it); record it; forget every stage after it.

    ``before_compute`` runs only when the stage is about to compute. Returns a StageResult whose summary has
    the same keys whether the stage ran or was skipped.
    """
    run = run if isinstance(run, RunDir) else RunDir(Path(run))
    ctx = ctx or StageContext()
    if stage.inputs(run, cfg) and not run.root.is_dir():
        raise RunStateError("not a run folder", path=run.root)
    records = StageRecords(run)
    key = stage_key(stage, run, cfg, ctx)
    if not force and is_current(stage, run, cfg, ctx, key):
        rec = records.get(stage.name) or {}
        log.debug("%s: current (key %s)", stage.name, key)
        return StageResult(stage.name, True, float(rec.get("seconds") or 0.0), dict(rec.get("summary") or {}))
    if before_compute is not None:
        before_compute()
    run.root.mkdir(parents=True, exist_ok=True)
    ctx.key, ctx.force = key, force
    t0 = time.perf_counter()
    summary = stage.compute(run, cfg, ctx)
    seconds = time.perf_counter() - t0
    later = list(STAGE_NAMES[STAGE_NAMES.index(stage.name) + 1:])
    records.drop([stage.name, *later])
    records.write(stage.name, key, stage.outputs(run, cfg, ctx), seconds, peak_rss_mb(), summary)
    return StageResult(stage.name, False, round(seconds, 3), summary)
