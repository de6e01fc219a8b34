"""`scene-kd synth --kind urban|district|tabletop --out FILE`: write a labelled synthetic scene (optionally as Gaussians)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from scene_kd.commands._common import emit
from scene_kd.errors import SceneKDError

_SPLAT_EXTS = {"ply", "splat"}  # formats that keep Gaussians (NPY would flatten them to points)


@dataclass
class Args:
    """Write a labelled synthetic scene: an urban block (simulated airborne + mobile LiDAR) or a tabletop with
    objects (plus <out stem>.objects.json with each object's pose and box)."""

    out: str = ""
    """Output scene file (.ply, .las, .laz, .npy, ...; with --as-splats: .ply as 3DGS PLY, .splat)."""
    kind: Literal["urban", "district", "tabletop"] = "urban"
    """Which scene (district: a grid of urban blocks at 10 points/m^2, streamed block by block to .las/.laz)."""
    points: int | None = None
    """Number of points (default: urban 200000, district 10000000 = 1 km^2, tabletop 60000)."""
    seed: int = 0
    """Random seed; the same seed gives the same scene."""
    as_splats: bool = False
    """Write the scene as labelled Gaussians (flat, normal-aligned, colour as SH DC)."""
    max_gaussians: int | None = None
    """With --as-splats: subsample to at most this many Gaussians."""
    capture: str | None = None
    """With --kind tabletop: write a capture folder here instead (3DGS scene.ply, or the point cloud with --rgbd,
    + photos, label images, depth images, transforms.json and COLMAP text; scene_kd/scene/synthetic/capture.py)."""
    views: int = 12
    """With --capture: number of photos (orbit cameras)."""
    rgbd: bool = False
    """With --capture: the RGB-D variant (point-cloud scene, frames with depth_file_path)."""
    json: bool = False
    """Print one JSON object."""


def main(args: Args) -> int:
    import numpy as np

    from scene_kd.runio import write_json
    from scene_kd.scene.io import save_scene
    from scene_kd.scene.synthetic import as_splats, make_tabletop, make_urban

    if args.capture is not None:
        return _capture(args)
    if not args.out:
        raise SceneKDError("give --out FILE (a scene file) or --capture DIR (a capture folder)")
    out = Path(args.out)
    ext = out.suffix.lower().lstrip(".")
    if args.points is not None and args.points < (100 if args.kind == "tabletop" else 1):
        raise SceneKDError(f"--points must be at least {100 if args.kind == 'tabletop' else 1}, got {args.points}")
    if args.as_splats and ext not in _SPLAT_EXTS:
        raise SceneKDError(f"--as-splats writes Gaussians; use a .ply (3DGS PLY) or .splat output, not '.{ext}'",
                           path=out)
    if out.is_dir():
        raise SceneKDError("is a directory; give a file name such as scene.ply", path=out)
    if not out.parent.exists():
        raise SceneKDError("the output folder does not exist", path=out.parent)
    sidecar = None
    if args.kind == "district" and ext in ("las", "laz") and not args.as_splats:
        from scene_kd.scene.synthetic.district import write_district

        plan = write_district(out, points=args.points or 10_000_000, seed=args.seed)
        info = {"kind": args.kind, "out": str(out), "scene_kind": "points", "count": sum(plan.points),
                "seed": args.seed, "blocks": [plan.nx, plan.ny], "size_m": list(plan.size)}
        emit(info, args.json, f"wrote {out}: district of {plan.nx} x {plan.ny} blocks "
                              f"({plan.size[0]:.0f} x {plan.size[1]:.0f} m), {sum(plan.points):,} points")
        return 0
    if args.kind == "district":
        from scene_kd.scene.synthetic.district import make_district

        scene = make_district(points=args.points or 10_000_000, seed=args.seed)
    elif args.kind == "urban":
        scene = make_urban(points=args.points or 200_000, seed=args.seed)
    else:
        scene, sidecar = make_tabletop(seed=args.seed, points=args.points or 60_000)
    if args.as_splats:
        scene = as_splats(scene, seed=args.seed, max_gaussians=args.max_gaussians)
    save_scene(scene, out)
    info = {"kind": args.kind, "out": str(out), "scene_kind": scene.kind, "count": len(scene), "seed": args.seed,
            "classes": {}}
    ids, counts = np.unique(scene.labels, return_counts=True)
    info["classes"] = {scene.label_names.get(int(i), str(int(i))): int(c) for i, c in zip(ids, counts, strict=True)}
    info["instances"] = int(len(np.unique(scene.instances[scene.instances >= 0])))
    if sidecar is not None:
        side_path = out.with_name(out.stem + ".objects.json")
        write_json(side_path, sidecar)
        info["sidecar"] = str(side_path)
    human = None
    if not args.json:
        what = "Gaussians" if scene.kind == "gaussians" else "points"
        lines = [f"wrote {out}: {args.kind}, {len(scene):,} {what}, {info['instances']} instances"]
        lines += [f"  {name:<12} {c:>10,}" for name, c in info["classes"].items()]
        if sidecar is not None:
            lines.append(f"  objects: {info['sidecar']}")
        human = "\n".join(lines)
    emit(info, args.json, human)
    return 0


def _capture(args: Args) -> int:
    from scene_kd.scene.synthetic.capture import make_tabletop_capture

    if args.kind != "tabletop":
        raise SceneKDError("--capture writes a tabletop capture; use --kind tabletop")
    info = make_tabletop_capture(args.capture, seed=args.seed, views=args.views, points=args.points or 60_000,
                                 scene_gaussians=args.max_gaussians, rgbd=args.rgbd)
    human = (f"wrote capture {info['out']}: {info['views']} photos {info['width']}x{info['height']} + label and "
             f"depth images, transforms.json + sparse/0 (COLMAP text), scene {info['scene']} "
             f"({info['count']:,} {info['scene_kind']})")
    emit(info, args.json, None if args.json else human)
    return 0
