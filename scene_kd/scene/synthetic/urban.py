"""``make_urban``: a labelled city block scanned by simulated airborne + mobile LiDAR."""

from __future__ import annotations

import numpy as np

from scene_kd.errors import SceneKDError
from scene_kd.scene.synthetic.labels import (
    DEFAULT_URBAN_ORIGIN,
    SCANNER_AIRBORNE,
    SCANNER_MOBILE,
    URBAN_CLASSES,
)
from scene_kd.scene.synthetic.layout import _layout_urban
from scene_kd.scene.synthetic.scanner import _airborne_rays, _mobile_rays, _scan
from scene_kd.scene.synthetic.shading import _shade
from scene_kd.scene.types import PointCloud


def make_urban(points: int = 200_000, seed: int = 0, origin: tuple[float, float, float] | None = DEFAULT_URBAN_ORIGIN,
               airborne_fraction: float = 0.45) -> PointCloud:
    """A labelled city block scanned by simulated airborne + mobile LiDAR.

    Returns a PointCloud of exactly ``points`` points: xyz (world = ``origin`` + block metres, float64-safe via
    PointCloud.from_world), rgb uint8, intensity [0, 1], normals (unit, facing the scanner), labels int32 in
    URBAN_CLASSES (road, sidewalk, building, tree, car, pole, grass), instances int32 (-1 for road/sidewalk/grass),
    extra["scanner"] uint8 (0 airborne, 1 mobile), meta["objects"]: per-instance ground truth (world centre,
    half extents, yaw, ...). ``origin=None`` keeps the block's own local frame.
    """
    if not isinstance(points, (int, np.integer)) or points < 1:
        raise SceneKDError(f"make_urban: points must be a positive integer, got {points!r}")
    if not 0.0 <= airborne_fraction <= 1.0:
        raise SceneKDError(f"make_urban: airborne_fraction must be in [0, 1], got {airborne_fraction}")
    rng = np.random.default_rng(seed)
    blk = _layout_urban(rng)
    hb = blk.build_raster()
    n_air = int(round(points * airborne_fraction))
    parts = []
    if n_air:
        parts.append(_scan(blk, rng, _airborne_rays, n_air, hb, SCANNER_AIRBORNE))
    if points - n_air:
        parts.append(_scan(blk, rng, _mobile_rays, points - n_air, hb, SCANNER_MOBILE))
    hits = {k: np.concatenate([h[k] for h in parts]) for k in parts[0]}
    xyz, normals, labels, instances, rgb, intensity = _shade(blk, rng, hits)
    off = np.zeros(3) if origin is None else np.asarray(origin, dtype=np.float64).reshape(3)
    objects = []
    for ob in blk.objects:
        ob = dict(ob)
        ob["name"] = URBAN_CLASSES[ob["label"]]
        ob["center"] = (np.asarray(ob["center"], float) + off).tolist()
        ob["point_count"] = int((instances == ob["instance"]).sum())
        objects.append(ob)
    return PointCloud.from_world(
        xyz + off, rgb=rgb, intensity=intensity, normals=normals.astype(np.float32), labels=labels,
        label_names=dict(URBAN_CLASSES), instances=instances, extra={"scanner": hits["scanner"]},
        meta={"synthetic": "urban", "seed": int(seed), "world_origin": off.tolist(), "objects": objects,
              "units": "m", "block_size": list(blk.size)},
    )
