"""LAS/LAZ via laspy (+lazrs). Keeps the header (scale, offset, point format, VLRs incl. CRS) for write-back."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from scene_kd.errors import SceneFormatError
from scene_kd.scene.io import drop_non_finite, reader
from scene_kd.scene.types import PointCloud, choose_origin

ASPRS_CLASSES = {
    0: "never classified", 1: "unclassified", 2: "ground", 3: "low vegetation", 4: "medium vegetation",
    5: "high vegetation", 6: "building", 7: "noise", 8: "model key point", 9: "water", 10: "rail",
    11: "road", 12: "overlap", 13: "wire guard", 14: "wire conductor", 15: "transmission tower",
    16: "wire connector", 17: "bridge deck", 18: "high noise",
}


@reader("las", "laz")
def read_las(path: Path) -> PointCloud:
    import laspy

    try:
        las = laspy.read(str(path))
    except Exception as e:
        raise SceneFormatError(f"not a readable LAS/LAZ file ({type(e).__name__}: {e})", path=path) from None
    n = len(las.points)
    if n == 0:
        raise SceneFormatError("scene has no points", path=path)
    hdr = las.header
    # world = int * scale + offset, computed in float64
    world = np.empty((n, 3), dtype=np.float64)
    world[:, 0] = las.x
    world[:, 1] = las.y
    world[:, 2] = las.z
    keep = drop_non_finite(world, path)
    origin = choose_origin(world[keep]) if keep.any() else np.zeros(3)
    dims = set(las.point_format.dimension_names)
    rgb = None
    if {"red", "green", "blue"} <= dims:
        r, g, b = (np.asarray(las[c]) for c in ("red", "green", "blue"))
        rgb16 = np.stack([r, g, b], axis=1)
        rgb = (rgb16 >> 8).astype(np.uint8) if rgb16.max(initial=0) > 255 else rgb16.astype(np.uint8)
    labels = np.asarray(las.classification).astype(np.int32) if "classification" in dims else None
    extra = {name: np.asarray(las[name]) for name in las.point_format.extra_dimension_names}
    pc = PointCloud(
        xyz=(world - origin).astype(np.float32), origin=origin, rgb=rgb,
        intensity=np.asarray(las.intensity).astype(np.float32) if "intensity" in dims else None,
        labels=labels, label_names=dict(ASPRS_CLASSES) if labels is not None else {}, extra=extra,
        meta={"las_header": hdr, "point_format": hdr.point_format.id, "scale": hdr.scales.tolist(),
              "offset": hdr.offsets.tolist(), "las_version": str(hdr.version)},
    )
    return pc.subset(keep) if not keep.all() else pc
