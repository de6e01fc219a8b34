"""The distill stage: RUN/field.* (fused) -> student -> RUN/student.safetensors + student.json (sparse-conv
point student) or RUN/gaussian_field.safetensors (Gaussian feature field), and the field re-saved with
``features["distilled"]`` beside the fused ones. Which student, what it reads and writes, and how it trains
come from the registry ``STUDENTS`` (scene_kd/distill/config.py; the students are in
scene_kd/distill/students.py)."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Protocol

from scene_kd.distill.config import STUDENTS, DistillConfig
from scene_kd.distill.students import Student
from scene_kd.errors import RunStateError, SceneKDError
from scene_kd.field import FeatureField
from scene_kd.rundir import RunDir, StageContext
from scene_kd.runio import read_json

log = logging.getLogger(__name__)


class DistillStageConfig(Protocol):
    """The config section the distill stage reads: ``distill`` (a Protocol so distill/ never imports the config
    layer above it; :class:`scene_kd.config.PipelineConfig` has it)."""

    @property
    def distill(self) -> DistillConfig: ...


SCENE_WORDS = {"points": "point-cloud", "gaussians": "Gaussian-splat"}


def student_kind(cfg: DistillConfig, scene_kind: str) -> str:
    """The student this config trains on a scene of ``scene_kind`` ("points" or "gaussians"). SceneKDError for
    an unregistered student (listing the registered ones) or one that does not train on this kind of scene."""
    student: Student = STUDENTS.create(cfg.student)
    if scene_kind not in student.scene_kinds:
        fits = [e.name for e in STUDENTS if scene_kind in STUDENTS.create(e.name).scene_kinds]
        needs = " or ".join(SCENE_WORDS.get(k, k) for k in student.scene_kinds)
        raise SceneKDError(f"the {cfg.student} student needs a {needs} scene; this run's scene is {scene_kind}"
                           + (f" (use student: {fits[0]})" if fits else ""))
    return cfg.student


def distill_settings(cfg: DistillConfig, kind: str) -> DistillConfig:
    """The settings that change the student: less device, threads and prediction tiling, and less the other
    students' own sections (their registered configs nested in ``cfg``, reset to defaults)."""
    settings = dataclasses.replace(cfg, enabled=True, predict_points=0, device="-", cpu_threads=0, student=kind)
    others = tuple(e.config for e in STUDENTS if e.name != kind and e.config is not DistillConfig)
    resets = {f.name: type(v)() for f in dataclasses.fields(cfg) if isinstance(v := getattr(cfg, f.name), others)}
    return dataclasses.replace(settings, **resets)


def _scene_kind(run: RunDir) -> str:
    """"points" or "gaussians": what the run's field holds."""

    return str(read_json(run.field_json).get("kind", "points"))


class DistillStage:
    """Train the student on the run's fused field and add its predictions to the field (``features.distilled``).

    ``ctx.resume`` continues an interrupted training from RUN/student.ckpt.pt. Raises RunStateError for an
    unknown student, a missing or unusable field (no fused features, no covered points) or a
    corrupted/mismatched checkpoint; nothing is written before training has succeeded.
    """

    name = "distill"
    section = "distill"

    def enabled(self, cfg: DistillStageConfig) -> bool:
        return cfg.distill.enabled

    def _student(self, run: RunDir, cfg: DistillStageConfig, *, scene: bool = False) -> Student:
        try:
            if scene:
                student_kind(cfg.distill, _scene_kind(run))
            return STUDENTS.create(cfg.distill.student)
        except SceneKDError as e:
            raise RunStateError(str(e), path=run.root) from None

    def inputs(self, run: RunDir, cfg: DistillStageConfig) -> list[Path]:
        return [run.fused, run.scene_tensors, *self._student(run, cfg).inputs(run)]

    def outputs(self, run: RunDir, cfg: DistillStageConfig, ctx: StageContext) -> list[Path]:
        return self._student(run, cfg).outputs(run)

    def key(self, run: RunDir, cfg: DistillStageConfig, ctx: StageContext) -> Any:
        return [_VERSION, distill_settings(cfg.distill, cfg.distill.student)]

    def compute(self, run: RunDir, cfg: DistillStageConfig, ctx: StageContext) -> dict[str, Any]:
        student = self._student(run, cfg, scene=True)
        field = FeatureField.load(run.root)
        if "fused" not in field.features:
            raise RunStateError("field has no fused features; run `scene-kd fuse` first", path=run.root)
        return student.train(run.root, field, cfg.distill, ctx.key, resume=ctx.resume and not ctx.force,
                             progress=ctx.progress)


DISTILL = DistillStage()
_VERSION = "distill-v4"  # v3: student.json input contract, attribute dropout; v4: world-anchored grids
