"""`scene-kd info SCENE`: counts, bounds, CRS, attributes and class histogram of a scene file."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

import tyro

from scene_kd.commands._common import emit
from scene_kd.scene.units import InputConfig


@dataclass
class Args:
    """Describe a scene file: kind, point/Gaussian count, bounds (metres), CRS and units, attributes, class
    histogram. Shortcut: --units metre|foot|us-foot (the file's units when it has no CRS, or to override it)."""

    scene: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="SCENE")]
    """Scene file (LAS/LAZ, PLY, PCD, NPY/TXT/XYZ, 3DGS PLY, .splat)."""
    json: bool = False
    """Print one JSON object."""
    input: InputConfig = field(default_factory=InputConfig)


def main(args: Args) -> int:
    from scene_kd.scene.io import describe_scene, load_scene

    info = describe_scene(load_scene(args.scene, units=args.input.units))
    human = None
    if not args.json:
        lines = [f"{args.scene}: {info['kind']}, {info['count']:,} {'points' if info['kind'] == 'points' else 'Gaussians'}",
                 f"  bounds min {info['bounds'][0]}", f"  bounds max {info['bounds'][1]}",
                 f"  attributes: {', '.join(info['attributes']) or '-'}"]
        for key, what in (("crs", "CRS"), ("reprojected_to", "pipeline CRS")):
            c = info.get(key)
            if c:
                epsg = f" (EPSG:{c['epsg']})" if c.get("epsg") else ""
                kind = "geographic" if c["geographic"] else "compound" if c.get("compound") else "projected"
                lines.append(f"  {what}: {c['name']}{epsg}, {kind}, horizontal units {c['units'] or '?'}, "
                             f"vertical units {c.get('vertical_units') or 'none (no vertical CRS)'}")
        if "crs" not in info and info["kind"] == "points":
            lines.append("  CRS: none recorded")
        u = info.get("units")
        if u:
            how = {"crs": "from the CRS", "override": "--units", "assumed": "assumed: no CRS"}.get(u["source"], "")
            conv = " -> converted to metres" if any(f != 1.0 for f in u["to_metre"]) else ""
            lines.append(f"  units: x/y {u['horizontal']}, z {u['vertical']} ({how}){conv}")
        if info.get("bounds_note"):
            lines.append(f"  ({info['bounds_note']})")
        names = info.get("class_names", {})
        for k, c in info.get("classes", {}).items():
            lines.append(f"  class {k:>3} {names.get(k, ''):<20} {c:>10,}")
        human = "\n".join(lines)
    emit(info, args.json, human)
    return 0
