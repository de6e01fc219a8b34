"""`scene-kd weights`: which pretrained weights files the teachers expect, where, and which are present."""

from __future__ import annotations

from dataclasses import dataclass

from scene_kd.commands._common import emit


@dataclass
class Args:
    """List the expected weights files (open_clip, SAM), where to put them, and what is found."""

    weights: str | None = None
    """Also look in this file/folder (as `scene-kd features --weights` would)."""
    json: bool = False
    """Print one JSON object."""


def main(args: Args) -> int:
    from scene_kd.runio import cache_dir
    from scene_kd.teachers.weights import weights_report

    rows = weights_report(args.weights)
    out = {"cache": str(cache_dir()), "weights": rows}
    human = None
    if not args.json:
        lines = [f"weights cache: {cache_dir()}  (set $SCENE_KD_CACHE to change)"]
        for r in rows:
            state = f"found {r['found']} ({r['size_mb']} MB)" if r["found"] else "MISSING"
            lines.append(f"  {r['kind']:<9} {r['model']:<9} {r['tag']:<22} {state}")
            if not r["found"]:
                lines.append(f"      place {r['accepted_names'][0]} at {r['expected']}\n      from {r['source']}")
        human = "\n".join(lines)
    emit(out, args.json, human)
    return 0
