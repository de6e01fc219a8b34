"""`scene-kd render SCENE --out RUN`: plan views at several granularities and render them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import tyro

from scene_kd.commands._common import emit


@dataclass
class Args:
    """Plan views (aerial | orbit | street | cameras:FILE) and render them; writes RUN/views.json (cameras,
    levels, coverage) and RUN/renders/NNNN.{rgb.png,npz}; --preview adds the contact sheet RUN/plots/views.png."""

    scene: Annotated[str, tyro.conf.Positional]
    """Scene file (LAS/LAZ, PLY, PCD, NPY/TXT, 3DGS PLY, .splat)."""
    out: str
    """Run folder to write."""
    views: str | None = None
    """View preset: aerial | orbit | street | cameras:FILE (transforms.json or a COLMAP folder). Default: the
    config's (aerial)."""
    width: int | None = None
    """Image width in pixels (default: the config's, 512)."""
    height: int | None = None
    """Image height in pixels (default: the config's, 512)."""
    levels: int | None = None
    """Granularity levels (aerial altitudes / orbit radii)."""
    config: str | None = None
    """YAML config (a path or a name in configs/); its `render:` section is used."""
    preview: bool = False
    """Also write RUN/plots/views.png, a contact sheet of every view."""
    force: bool = False
    """Render again even when the run's renders are current."""
    json: bool = False
    """Print one JSON object."""


def render_config_for(args: Args):
    import dataclasses

    from scene_kd.config import load_config

    cfg = load_config(args.config).render
    changes = {k: v for k, v in (("preset", args.views), ("width", args.width), ("height", args.height),
                                 ("levels", args.levels)) if v is not None}
    return dataclasses.replace(cfg, **changes)


def main(args: Args) -> int:
    from scene_kd.render.stage import render_stage
    from scene_kd.scene.io import load_scene

    cfg = render_config_for(args)
    summary = render_stage(args.out, load_scene(args.scene), cfg, force=args.force, preview=args.preview)
    human = None
    if not args.json:
        cov = summary["coverage"]
        state = "up to date (skipped)" if summary.get("skipped") else f"done in {summary.get('seconds', 0):.1f} s"
        lines = [f"{args.out}: render {state}: {summary['views']} views ({summary['preset']}), "
                 f"{cov['points']:,} {'points' if summary['scene_kind'] == 'points' else 'Gaussians'}",
                 f"  seen in >= 1 view {100 * cov['seen_1']:5.1f} %, >= 3 views {100 * cov['seen_3']:5.1f} %, "
                 f"mean {cov['mean_views']:.1f} views"]
        for level, c in cov["levels"].items():
            lines.append(f"  level {level}: {c['views']:>3} views, >= 1 {100 * c['seen_1']:5.1f} %, "
                         f">= 3 {100 * c['seen_3']:5.1f} %")
        human = "\n".join(lines)
    emit(summary, args.json, human)
    return 0
