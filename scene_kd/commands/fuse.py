"""`scene-kd fuse RUN`: fuse the teacher's mask embeddings onto the run's points / Gaussians."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import tyro

from scene_kd.commands._common import emit


@dataclass
class Args:
    """Fuse mask embeddings onto points (sample-balanced across granularities) or lift them onto Gaussians;
    writes RUN/fused.safetensors and RUN/field.safetensors + field.json."""

    run: Annotated[str, tyro.conf.Positional]
    """Run folder (after `scene-kd render` and `scene-kd features`)."""
    config: str | None = None
    """YAML config (a path or a name in configs/); default: the run's config.yaml, else built-in defaults."""
    force: bool = False
    """Redo the fusion even when its output is current (also replaces a field of another feature dim)."""
    json: bool = False
    """Print one JSON object."""


def fuse_config_for(run: str, config: str | None):
    """The FuseConfig to use: --config, else RUN/config.yaml, else defaults."""
    from pathlib import Path

    from scene_kd.config import load_config

    if config:
        return load_config(config).fuse
    run_cfg = Path(run) / "config.yaml"
    return load_config(run_cfg).fuse if run_cfg.exists() else load_config(None).fuse


def main(args: Args) -> int:
    from scene_kd.lift.stage import fuse_stage

    summary = fuse_stage(args.run, fuse_config_for(args.run, args.config), force=args.force)
    human = None
    if not args.json:
        state = "up to date (skipped)" if summary.get("skipped") else f"done in {summary.get('seconds', 0):.1f} s"
        lines = [f"{args.run}: fuse {state}",
                 f"  {summary.get('covered', 0):,} of {summary.get('count', 0):,} {summary.get('kind', 'points')} covered "
                 f"({100 * summary.get('coverage', 0):.1f} %), dim {summary.get('dim')}, teacher {summary.get('teacher')}"]
        for k, v in (summary.get("granularities") or {}).items():
            lines.append(f"  {k:<16} {v:>12,} covered")
        human = "\n".join(lines)
    emit(summary, args.json, human)
    return 0
