"""`scene-kd distill RUN`: train the student on the run's fused features."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

import tyro

from scene_kd.commands._common import emit
from scene_kd.distill.config import DistillConfig

SECTIONS = ("distill",)
RUN_CONFIG_BASE = "run"


@dataclass
class Args:
    """Distil the run's fused features into a student (sparse-conv network on points, or a Gaussian feature
    field on splats) and add its features to RUN/field.*. Shortcuts: --epochs N, --student NAME."""

    run: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="RUN")]
    """Run folder (after `scene-kd fuse`)."""
    config: str | None = None
    """Preset (a YAML path or a shipped name) whose `distill:` section replaces the run's."""
    force: bool = False
    """Retrain even when the student is current."""
    resume: bool = False
    """Continue an interrupted training from RUN/student.ckpt.pt."""
    json: bool = False
    """Print one JSON object."""
    distill: DistillConfig = field(default_factory=DistillConfig)


def main(args: Args) -> int:
    from scene_kd.commands._common import pipeline_config
    from scene_kd.config import save_config
    from scene_kd.distill.config import STUDENTS
    from scene_kd.errors import SceneKDError
    from scene_kd.pipeline import distill_stage
    from scene_kd.rundir import RunDir

    if not RunDir(args.run).root.is_dir():
        raise SceneKDError("not a run folder", path=args.run)
    if args.distill.epochs < 1:
        raise SceneKDError("--distill.epochs must be at least 1")
    cfg = pipeline_config(args, SECTIONS, args.run)
    save_config(args.run, cfg)
    summary = distill_stage(args.run, cfg.distill, force=args.force, resume=args.resume, progress=not args.json)
    human = None
    if not args.json:
        if summary.skipped:
            human = f"{args.run}: student is current (use --force to retrain)"
        else:
            human = f"{args.run}: {STUDENTS.create(summary['student']).describe(summary, summary.seconds)}"
    emit(dict(summary), args.json, human)
    return 0
