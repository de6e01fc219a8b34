"""`scene-kd info SCENE`: counts, bounds, CRS, attributes and class histogram of a scene file."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import tyro

from scene_kd.commands._common import emit


@dataclass
class Args:
    """Describe a scene file: kind, point/Gaussian count, bounds, attributes, class histogram."""

    scene: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="SCENE")]
    """Scene file (LAS/LAZ, PLY, PCD, NPY/TXT/XYZ, 3DGS PLY, .splat)."""
    json: bool = False
    """Print one JSON object."""


def main(args: Args) -> int:
    from scene_kd.scene.io import describe_scene, load_scene

    info = describe_scene(load_scene(args.scene))
    human = None
    if not args.json:
        lines = [f"{args.scene}: {info['kind']}, {info['count']:,} {'points' if info['kind'] == 'points' else 'Gaussians'}",
                 f"  bounds min {info['bounds'][0]}", f"  bounds max {info['bounds'][1]}",
                 f"  attributes: {', '.join(info['attributes']) or '-'}"]
        for key, what in (("crs", "CRS"), ("reprojected_to", "pipeline CRS")):
            c = info.get(key)
            if c:
                epsg = f" (EPSG:{c['epsg']})" if c.get("epsg") else ""
                lines.append(f"  {what}: {c['name']}{epsg}, {'geographic' if c['geographic'] else 'projected'}, "
                             f"units {c['units'] or '?'}")
        if "crs" not in info and info["kind"] == "points":
            lines.append("  CRS: none recorded")
        names = info.get("class_names", {})
        for k, c in info.get("classes", {}).items():
            lines.append(f"  class {k:>3} {names.get(k, ''):<20} {c:>10,}")
        human = "\n".join(lines)
    emit(info, args.json, human)
    return 0
