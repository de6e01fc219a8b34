"""`scene-kd render SCENE --out RUN`: plan views at several granularities and render them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import tyro

from scene_kd.commands._common import emit
from scene_kd.render.config import RenderConfig
from scene_kd.scene.units import InputConfig

SECTIONS = ("render", "input")
RUN_CONFIG_BASE = "out"


@dataclass
class Args:
    """Plan views (aerial | orbit | street | cameras:FILE) and render them; writes RUN/views.json (cameras,
    levels, coverage) and RUN/renders/NNNN.{rgb.png,npz}; --preview adds the contact sheet RUN/plots/views.png.
    Shortcuts: --views PRESET, --width N, --height N, --levels N, --max-views N, --units metre|foot|us-foot (a
    file without a CRS, or to override it; the pipeline works in metres).
    Before rendering it prints the plan (views per level, megapixels) and the expected teacher time, and refuses a
    plan over the budget (render.max_views, default 2,000; render.max_teacher_hours)."""

    scene: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="SCENE")]
    """Scene file (LAS/LAZ, PLY, PCD, NPY/TXT, 3DGS PLY, .splat) or a capture folder (its cameras + photos)."""
    out: str
    """Run folder to write (an existing run's config.yaml gives the defaults)."""
    config: str | None = None
    """Preset (a YAML path or a shipped name) whose `render:` section is used."""
    preview: bool = False
    """Also write RUN/plots/views.png, a contact sheet of every view."""
    force: bool = False
    """Render again even when the run's renders are current."""
    json: bool = False
    """Print one JSON object."""
    render: RenderConfig = field(default_factory=RenderConfig)
    input: InputConfig = field(default_factory=InputConfig)


def main(args: Args) -> int:
    from scene_kd.commands._common import pipeline_config
    from scene_kd.config import save_config
    from scene_kd.pipeline import render_stage
    from scene_kd.scene.io import load_scene

    cfg = pipeline_config(args, SECTIONS, args.out)
    capture = None
    if Path(args.scene).is_dir():
        from scene_kd.scene.capture import load_capture

        capture = load_capture(args.scene)
    scene = capture.scene if capture is not None else load_scene(args.scene, units=cfg.input.units)
    summary = render_stage(args.out, scene, cfg.render, force=args.force, preview=args.preview, capture=capture,
                           teacher=cfg.teacher, cost_key=args.config)
    save_config(args.out, cfg)
    from scene_kd.scene.units import extent_line, extent_summary

    out = {**dict(summary), "scene": extent_summary(scene)}
    human = None
    if not args.json:
        cov = summary["coverage"]
        state = "up to date (skipped)" if summary.skipped else f"done in {summary.seconds:.1f} s"
        lines = [f"{args.out}: render {state}: {summary['views']} views ({summary['preset']}), "
                 f"{cov['points']:,} {'points' if summary['scene_kind'] == 'points' else 'Gaussians'}",
                 f"  seen in >= 1 view {100 * cov['seen_1']:5.1f} %, >= 3 views {100 * cov['seen_3']:5.1f} %, "
                 f"mean {cov['mean_views']:.1f} views", extent_line(out["scene"])]
        gsd = {row["level"]: row for row in (summary.get("plan") or {}).get("levels", [])}
        for level, c in cov["levels"].items():
            row = gsd.get(int(level), {})
            res = ""
            if row.get("gsd_m") or row.get("gsd_seen_m"):
                res = f" {row.get('kind', '')} GSD {row.get('gsd_m') or row.get('gsd_seen_m')} m/px,"
            lines.append(f"  level {level}:{res} {c['views']:>3} views, >= 1 {100 * c['seen_1']:5.1f} %, "
                         f">= 3 {100 * c['seen_3']:5.1f} %")
        tw = summary.get("teacher_work")
        if tw:
            cost = summary.get("teacher_cost") or {}
            lines.append(f"  teacher work: {tw['views']} views, {tw['megapixels']:.1f} megapixels"
                         + (f"; {cost['line']}" if cost.get("line") else ""))
        human = "\n".join(lines)
    emit(out, args.json, human)
    return 0
