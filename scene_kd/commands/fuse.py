"""`scene-kd fuse RUN`: fuse the teacher's mask embeddings onto the run's points / Gaussians."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

import tyro

from scene_kd.commands._common import emit
from scene_kd.lift.config import FuseConfig

SECTIONS = ("fuse",)
RUN_CONFIG_BASE = "run"


@dataclass
class Args:
    """Fuse mask embeddings onto points (sample-balanced across granularities) or lift them onto Gaussians;
    writes RUN/fused.safetensors and RUN/field.safetensors + field.json."""

    run: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="RUN")]
    """Run folder (after `scene-kd render` and `scene-kd features`)."""
    config: str | None = None
    """Preset (a YAML path or a shipped name) whose `fuse:` section replaces the run's."""
    force: bool = False
    """Redo the fusion even when its output is current (also replaces a field of another feature dim)."""
    json: bool = False
    """Print one JSON object."""
    fuse: FuseConfig = field(default_factory=FuseConfig)


def main(args: Args) -> int:
    from scene_kd.commands._common import pipeline_config
    from scene_kd.config import save_config
    from scene_kd.errors import RunStateError
    from scene_kd.pipeline import fuse_stage
    from scene_kd.rundir import RunDir

    if not RunDir(args.run).root.is_dir():
        raise RunStateError("not a run folder", path=args.run)
    cfg = pipeline_config(args, SECTIONS, args.run)
    save_config(args.run, cfg)
    summary = fuse_stage(args.run, cfg.fuse, force=args.force)
    human = None
    if not args.json:
        state = "up to date (skipped)" if summary.skipped else f"done in {summary.seconds:.1f} s"
        lines = [f"{args.run}: fuse {state}",
                 f"  {summary['covered']:,} of {summary['count']:,} {summary['kind']} covered "
                 f"({100 * summary['coverage']:.1f} %), dim {summary['dim']}, teacher {summary['teacher']}"]
        for k, v in (summary.get("granularities") or {}).items():
            lines.append(f"  {k:<16} {v:>12,} covered")
        human = "\n".join(lines)
    emit(dict(summary), args.json, human)
    return 0
