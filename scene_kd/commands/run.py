"""`scene-kd run SCENE --out RUN`: every stage (render -> features -> fuse -> distill -> eval)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

import tyro

from scene_kd.commands._common import emit, registered_names
from scene_kd.distill.config import DistillConfig
from scene_kd.lift.config import FuseConfig
from scene_kd.query.config import QueryConfig
from scene_kd.render.config import RenderConfig
from scene_kd.scene.units import InputConfig
from scene_kd.teachers.config import ClipSamConfig, TeacherConfig

SECTIONS = ("input", "render", "teacher", "fuse", "distill", "query")


@registered_names
@dataclass
class Args:
    """Run the whole pipeline on a scene; each stage skips when its output is current (--force redoes).

    The teacher is clip-sam unless you choose another (--teacher {teachers}); its weights are checked before
    any work. Shortcuts: --teacher NAME, --views PRESET, --width/--height/--levels N, --label-flip F,
    --weights PATH, --epochs N (0: no student), --student NAME ({students}), --max-views N (the plan budget;
    the plan and its expected teacher time are printed before rendering), --units metre|foot|us-foot (a file
    without a CRS, or to override it; the pipeline works in metres).
    """

    scene: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="SCENE")]
    """Scene file (LAS/LAZ, PLY, PCD, NPY/TXT, 3DGS PLY, .splat) or a capture folder (photos + cameras + scene:
    COLMAP, nerfstudio, NeRF-synthetic, Inria 3DGS output, posed RGB-D; scene_kd/scene/capture.py)."""
    out: str
    """Run folder to write."""
    config: str | None = None
    """Preset: a YAML path or a shipped name (urban, indoor, splat, ci); its values are the defaults below."""
    until: str | None = None
    """Stop after this stage (render, features, fuse, distill, eval)."""
    preview: bool = False
    """Also write the contact sheets RUN/plots/views.png and masks.png."""
    force: bool = False
    """Redo every stage even when its output is current."""
    json: bool = False
    """Print one JSON object."""
    input: InputConfig = field(default_factory=InputConfig)
    render: RenderConfig = field(default_factory=RenderConfig)
    teacher: TeacherConfig = field(default_factory=ClipSamConfig)
    fuse: FuseConfig = field(default_factory=FuseConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    query: QueryConfig = field(default_factory=QueryConfig)


def main(args: Args) -> int:
    from scene_kd.commands._common import pipeline_config
    from scene_kd.pipeline import run_pipeline

    cfg = pipeline_config(args, SECTIONS)
    result = run_pipeline(args.scene, args.out, cfg, force=args.force, until=args.until, preview=args.preview,
                          progress=not args.json, cost_key=args.config)
    if "fuse" in result:
        from scene_kd.report import write_report

        result["report"] = str(write_report(args.out, []))
    human = None
    if not args.json:
        ev = result.get("eval") or {}
        lines = [f"run folder: {args.out}  ({result['seconds']:.1f} s, teacher {cfg.teacher.name})"]
        if result.get("capture"):
            cap = result["capture"]
            lines.append(f"  capture: {cap['layout']} layout, {cap['photos']} photos, scene {cap['scene']}")
        if result.get("scene"):
            from scene_kd.scene.units import extent_line

            lines.append(extent_line(result["scene"]))
        rd = result.get("render")
        for row in ((rd or {}).get("plan") or {}).get("levels", []) if rd is not None else []:
            if row.get("gsd_m") or row.get("gsd_seen_m"):
                lines.append(f"  level {row.get('level')}: {row.get('kind', '')} GSD "
                             f"{row.get('gsd_m') or row.get('gsd_seen_m')} m/px")
        if rd is not None and "teacher_work" in rd:
            tw = rd["teacher_work"]
            cost = rd.get("teacher_cost") or {}
            lines.append(f"  teacher work: {tw['views']} views, {tw['megapixels']:.1f} megapixels"
                         + (f"; expected {cost['line']}" if cost.get("line") else ""))
        for src in ("fused", "distilled", "ensemble"):
            if src in ev:
                lines.append(f"  {src:<10} mIoU {ev[src]['miou'] or 0:.3f}  mAcc {ev[src]['macc'] or 0:.3f}")
        if "coverage" in ev:
            lines.append(f"  coverage   {ev['coverage']:.3f}")
        lines += [f"  warning: {w}" for w in ev.get("warnings", ())]  # beside the scores they qualify
        if "eval" not in result and "fuse" in result:
            lines.append("  (no evaluation: the scene has no ground-truth labels)")
        if "report" in result:
            lines.append(f"  report: {result['report']}")
        human = "\n".join(lines)
    emit({k: (dict(v) if hasattr(v, "as_dict") else v) for k, v in result.items()}, args.json, human)
    return 0
