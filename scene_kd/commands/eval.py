"""`scene-kd eval RUN`: mIoU / mAcc of the fused, distilled and ensemble features against ground truth."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import tyro

from scene_kd.commands._common import emit


@dataclass
class Args:
    """Evaluate a run's features against its ground-truth labels (vocabulary = the class names present);
    writes RUN/eval.json and RUN/plots/confusion.png."""

    run: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="RUN")]
    """Run folder (after `scene-kd fuse`, optionally `scene-kd distill`)."""
    sources: tuple[str, ...] = ()
    """Feature sources to score (fused, distilled, ensemble); default: all the field has."""
    force: bool = False
    """Recompute even when eval.json is current."""
    json: bool = False
    """Print one JSON object."""


def main(args: Args) -> int:
    from scene_kd.pipeline import eval_stage

    result = dict(eval_stage(args.run, force=args.force, sources=list(args.sources) or None).summary)
    human = None
    if not args.json:
        lines = [f"{args.run}: {len(result['vocabulary'])} classes, {result['points']:,} points, "
                 f"coverage {100 * result['coverage']:.1f} % (teacher {result.get('teacher')})"]
        if result.get("teacher_note"):
            lines.append(f"  note: {result['teacher_note']}")
        for src in ("fused", "distilled", "ensemble"):
            if src in result:
                r = result[src]
                unc = "" if r.get("acc_uncovered") is None else f"  acc(uncovered) {r['acc_uncovered']:.3f}"
                lines.append(f"  {src:<10} mIoU {r['miou'] or 0:.3f}  mAcc {r['macc'] or 0:.3f}{unc}")
        best = result[result["best"]]["per_class"]
        lines.append(f"  per class ({result['best']}): " + ", ".join(
            f"{k} {v:.2f}" if v is not None else f"{k} -" for k, v in best.items()))
        human = "\n".join(lines)
    emit(result, args.json, human)
    return 0
