"""`scene-kd grasp RUN "red mug handle" [--json]`: where and how to grasp the named object."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import tyro

from scene_kd.commands._common import emit


@dataclass
class Args:
    """Find a grasp for a text query: position, orientation, approach, width and oriented box (world coordinates).

    Prints found=false with a reason (exit 1) when nothing in the scene is confidently relevant.
    """

    run: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="RUN")]
    """Run folder with a feature field."""
    query: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="QUERY")]
    """What to grasp, e.g. "red mug handle"."""
    source: str | None = None
    """Feature source: fused | distilled | ensemble | auto (default: the run's query config, else auto)."""
    min_relevancy: float = 0.6
    """Refuse when the best point's relevancy is below this (0.5 = no better than the negatives)."""
    margin: float = 0.01
    """Added to the closing extent to give the opening width (scene units)."""
    max_width: float | None = None
    """Refuse targets wider than the gripper opens (scene units)."""
    sensor: tuple[float, float, float] | None = None
    """World position of the sensor/robot; side approaches come from that side."""
    indices: bool = False
    """Include the target's point indices in the JSON."""
    json: bool = False
    """Print one JSON object."""


def main(args: Args) -> int:
    from scene_kd.apps.grasp.api import grasp_target
    from scene_kd.query.grasp import GraspConfig

    cfg = GraspConfig(min_relevancy=args.min_relevancy, margin=args.margin, max_width=args.max_width)
    g = grasp_target(args.run, args.query, cfg=cfg, source=args.source, sensor=args.sensor)
    out = g.to_json(with_indices=args.indices)
    human = None
    if not args.json:
        if g.found:
            fmt = lambda v: "[" + ", ".join(f"{x:.4f}" for x in v) + "]"  # noqa: E731
            human = "\n".join([
                f"{g.query!r}: {g.point_count} points, score {g.score:.3f}",
                f"  position    {fmt(g.position)}", f"  orientation {fmt(g.orientation_xyzw)} (xyzw)",
                f"  approach    {fmt(g.approach)} ({g.approach_kind}{'' if g.reachable else ', obstructed'})",
                f"  width       {g.width:.4f}", f"  box extent  {fmt(g.obb.extent)}",
            ])
        else:
            human = f"no target: {g.reason}"
    emit(out, args.json, human)
    return 0 if g.found else 1
