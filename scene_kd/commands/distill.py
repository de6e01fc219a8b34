"""`scene-kd distill RUN`: train the sparse-conv student on the run's fused features."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import tyro

from scene_kd.commands._common import emit


@dataclass
class Args:
    """Distil the run's fused features into a student (sparse-conv network on points, or a Gaussian feature
    field on splats) and add its features to RUN/field.*."""

    run: Annotated[str, tyro.conf.Positional]
    """Run folder (after `scene-kd fuse`)."""
    epochs: int | None = None
    """Training epochs (default: the run's config, else 20)."""
    config: str | None = None
    """Config preset or YAML file (default: RUN/config.yaml when present)."""
    student: str | None = None
    """sparseconv or gaussian-field (Gaussian scenes) (default: the config's, sparseconv)."""
    force: bool = False
    """Retrain even when the student is current."""
    resume: bool = False
    """Continue an interrupted training from RUN/student.ckpt.pt."""
    json: bool = False
    """Print one JSON object."""


def main(args: Args) -> int:
    from scene_kd.config import load_config
    from scene_kd.distill.stage import distill_stage
    from scene_kd.errors import SceneKDError

    run = Path(args.run)
    if not run.is_dir():
        raise SceneKDError("not a run folder", path=run)
    preset = args.config or (str(run / "config.yaml") if (run / "config.yaml").exists() else None)
    cfg = load_config(preset).distill
    if args.epochs is not None:
        if args.epochs < 1:
            raise SceneKDError("--epochs must be at least 1")
        cfg = dataclasses.replace(cfg, epochs=args.epochs)
    if args.student is not None:
        cfg = dataclasses.replace(cfg, student=args.student)
    summary = distill_stage(run, cfg, force=args.force, resume=args.resume, progress=not args.json)
    human = None
    if not args.json:
        if summary["skipped"]:
            human = f"{run}: student is current (use --force to retrain)"
        elif summary.get("student") == "gaussian-field":
            human = (f"{run}: Gaussian feature field for {summary['points']:,} Gaussians "
                     f"({summary['covered_points']:,} covered), {summary['steps']} steps on {summary['backend']}, "
                     f"loss {summary['first_loss']:.4f} -> {summary['final_loss']:.4f}, {summary['seconds']:.1f} s")
        else:
            human = (f"{run}: distilled {summary['points']:,} points ({summary['covered_points']:,} covered), "
                     f"voxel {summary['voxel_size']}, {summary['epochs']} epochs, loss {summary['final_loss']:.4f}, "
                     f"{summary['seconds']:.1f} s")
    emit(summary, args.json, human)
    return 0
