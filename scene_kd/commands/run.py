"""`scene-kd run SCENE --out RUN`: every stage (render -> features -> fuse -> distill -> eval)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import tyro

from scene_kd.commands._common import emit


@dataclass
class Args:
    """Run the whole pipeline on a scene; each stage skips when its output is current (--force redoes)."""

    scene: Annotated[str, tyro.conf.Positional]
    """Scene file (LAS/LAZ, PLY, PCD, NPY/TXT, 3DGS PLY, .splat)."""
    out: str
    """Run folder to write."""
    config: str | None = None
    """YAML preset: a path or a name in configs/ (urban, indoor, splat, ci)."""
    teacher: str | None = None
    """Override the teacher (oracle-labels, clip-sam, clip-grid)."""
    views: str | None = None
    """Override the view preset (aerial, orbit, street, cameras:FILE)."""
    label_flip: float | None = None
    """oracle-labels: fraction of masks given a wrong class."""
    epochs: int | None = None
    """Override distillation epochs (0 skips distillation)."""
    student: str | None = None
    """Override the student: sparseconv or gaussian-field (Gaussian scenes); enables distillation."""
    until: str | None = None
    """Stop after this stage (render, features, fuse, distill, eval)."""
    force: bool = False
    """Redo every stage even when its output is current."""
    json: bool = False
    """Print one JSON object."""


def main(args: Args) -> int:
    from scene_kd.config import load_config
    from scene_kd.pipeline import run_pipeline

    overrides: dict = {}
    if args.teacher:
        overrides.setdefault("teacher", {})["name"] = args.teacher
    if args.label_flip is not None:
        overrides.setdefault("teacher", {})["label_flip"] = args.label_flip
    if args.views:
        overrides.setdefault("render", {})["preset"] = args.views
    if args.epochs is not None:
        overrides["distill"] = {"epochs": args.epochs, "enabled": args.epochs > 0}
    if args.student:
        overrides.setdefault("distill", {}).update({"student": args.student, "enabled": True})
    cfg = load_config(args.config, overrides)
    result = run_pipeline(args.scene, args.out, cfg, force=args.force, until=args.until)
    human = None
    if not args.json:
        ev = result.get("eval") or {}
        lines = [f"run folder: {args.out}  ({result['seconds']:.1f} s)"]
        for src in ("fused", "distilled", "ensemble"):
            if src in ev:
                lines.append(f"  {src:<10} mIoU {ev[src]['miou']:.3f}  mAcc {ev[src]['macc']:.3f}")
        if "coverage" in ev:
            lines.append(f"  coverage   {ev['coverage']:.3f}")
        human = "\n".join(lines)
    emit(result, args.json, human)
    return 0
