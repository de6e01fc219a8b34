"""A synthetic urban district: a grid of ``make_urban`` blocks at a target density, streamed to LAS/LAZ.

The district has ``points / density`` square metres (1 km^2 for the default 10M points at 10 points/m^2, the size and
density of national airborne-LiDAR tiles) laid out as nx x ny blocks of 110 x 84 m (each block a different seed,
``seed * 1000 + block index``), with the points split evenly over the blocks. Each block keeps its own terrain; its
height is shifted so that its ground (road, sidewalk, grass) meets its west neighbour's (first column: its south
neighbour's) at the shared edge. Instances are made unique across blocks (block index * 100000 + instance).

``write_district`` generates and writes one block at a time through laspy's chunked writer, so memory stays at one
block (~100k points) plus the compressor's buffers whatever the district's size; ``make_district`` returns the whole
district as one PointCloud (small districts, tests).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scene_kd.errors import SceneKDError
from scene_kd.runio import atomic_path
from scene_kd.scene.formats.las import LABEL_VLR_RECORD_ID, LABEL_VLR_USER_ID, intensity_uint16
from scene_kd.scene.io import label_names_to_json
from scene_kd.scene.synthetic.labels import DEFAULT_URBAN_ORIGIN, GRASS, ROAD, SIDEWALK, URBAN_CLASSES
from scene_kd.scene.synthetic.urban import make_urban
from scene_kd.scene.types import PointCloud

BLOCK_SIZE = (110.0, 84.0)
"""Extent of one ``make_urban`` block, metres (x along its road, y across)."""
DEFAULT_DENSITY = 10.0
"""Points per square metre (national airborne programmes publish ~10 pts/m^2 and more)."""
INSTANCE_STRIDE = 100_000
EDGE_BAND = 6.0
"""Metres of a block's edge whose ground heights are matched to its neighbour's."""


@dataclass(frozen=True)
class DistrictPlan:
    """nx x ny blocks; points[k] of block k (raster order, x fastest); the district's size in metres."""

    nx: int
    ny: int
    points: tuple[int, ...]

    @property
    def size(self) -> tuple[float, float]:
        return self.nx * BLOCK_SIZE[0], self.ny * BLOCK_SIZE[1]


def plan_district(points: int, density: float = DEFAULT_DENSITY) -> DistrictPlan:
    """Blocks for ``points`` points at ``density`` points/m^2: a near-square grid of area ~points / density.
    Raises SceneKDError for non-positive inputs or fewer points than blocks."""
    if not isinstance(points, (int, np.integer)) or points < 1:
        raise SceneKDError(f"district: points must be a positive integer, got {points!r}")
    if not (density > 0 and math.isfinite(density)):
        raise SceneKDError(f"district: density must be > 0 points/m^2, got {density}")
    side = math.sqrt(points / density)
    nx, ny = max(1, round(side / BLOCK_SIZE[0])), max(1, round(side / BLOCK_SIZE[1]))
    n = nx * ny
    if points < n * 100:
        raise SceneKDError(f"district: {points} points is too few for {n} blocks (>= 100 points per block)")
    per = [points // n + (1 if k < points % n else 0) for k in range(n)]
    return DistrictPlan(nx, ny, tuple(per))


def _edge_ground(pc: PointCloud, axis: int, high: bool) -> float | None:
    """Median ground height in the EDGE_BAND at the low/high end of ``axis`` (None without ground points there)."""
    xyz = pc.xyz
    ground = np.isin(pc.labels, (ROAD, SIDEWALK, GRASS))
    c = xyz[:, axis]
    band = c >= BLOCK_SIZE[axis] - EDGE_BAND if high else c <= EDGE_BAND
    sel = ground & band
    return float(np.median(xyz[sel, 2])) if sel.any() else None


def iter_district_blocks(points: int, seed: int = 0, density: float = DEFAULT_DENSITY) -> Iterator[PointCloud]:
    """Yield the district's blocks one at a time in district-local metres (origin None: x, y from 0), raster order."""
    plan = plan_district(points, density)
    edges: dict[tuple[int, int], tuple[float | None, float | None]] = {}  # (east, north) ground of placed blocks
    for k, n in enumerate(plan.points):
        iy, ix = divmod(k, plan.nx)
        pc = make_urban(points=n, seed=seed * 1000 + k, origin=None)
        dz = 0.0
        if ix > 0:
            ref, mine = edges[(ix - 1, iy)][0], _edge_ground(pc, 0, high=False)
        elif iy > 0:
            ref, mine = edges[(ix, iy - 1)][1], _edge_ground(pc, 1, high=False)
        else:
            ref = mine = None
        if ref is not None and mine is not None:
            dz = ref - mine
        east, north = _edge_ground(pc, 0, high=True), _edge_ground(pc, 1, high=True)
        edges[(ix, iy)] = (None if east is None else east + dz, None if north is None else north + dz)
        edges.pop((ix - 1, iy - 1), None)  # only the previous row is still needed
        pc.xyz += np.array([ix * BLOCK_SIZE[0], iy * BLOCK_SIZE[1], dz], np.float32)
        pc.instances = np.where(pc.instances >= 0, pc.instances + k * INSTANCE_STRIDE, -1).astype(np.int32)
        pc.meta = {"synthetic": "district-block", "block": k, "seed": seed * 1000 + k}
        yield pc


def make_district(points: int = 200_000, seed: int = 0, density: float = DEFAULT_DENSITY,
                  origin: tuple[float, float, float] = DEFAULT_URBAN_ORIGIN) -> PointCloud:
    """The whole district as one PointCloud (world = ``origin`` + district metres); for small districts."""
    blocks = list(iter_district_blocks(points, seed, density))
    plan = plan_district(points, density)
    cat = {name: np.concatenate([getattr(b, name) for b in blocks]) for name in
           ("xyz", "rgb", "intensity", "normals", "labels", "instances")}
    scanner = np.concatenate([b.extra["scanner"] for b in blocks])
    return PointCloud(origin=np.asarray(origin, np.float64), label_names=dict(URBAN_CLASSES), extra={"scanner": scanner},
                      meta={"synthetic": "district", "seed": int(seed), "blocks": [plan.nx, plan.ny],
                            "density": float(density), "size": list(plan.size), "units": "m"}, **cat)


def write_district(path: str | Path, points: int = 10_000_000, seed: int = 0, density: float = DEFAULT_DENSITY,
                   origin: tuple[float, float, float] = DEFAULT_URBAN_ORIGIN) -> DistrictPlan:
    """Generate the district block by block into a LAS/LAZ file (by extension; LAZ via lazrs), in the layout
    ``save_scene`` writes for a synthetic scene: point format 7 (RGB), 1 mm scale, offset = ``origin``,
    classification = class id, extra bytes ``instance`` (int32), ``normal_x/y/z`` (float32), ``scanner`` (uint8),
    class names in the scene_kd JSON VLR. Writes to a temporary name and renames. Returns the plan."""
    import laspy

    path = Path(path)
    if path.suffix.lower() not in (".las", ".laz"):
        raise SceneKDError("write_district writes .las or .laz", path=path)
    plan = plan_district(points, density)
    header = laspy.LasHeader(version="1.4", point_format=7)
    header.scales = np.array([0.001, 0.001, 0.001])
    header.offsets = np.asarray(origin, np.float64)
    header.add_extra_dims([laspy.ExtraBytesParams(name="instance", type="i4")]
                          + [laspy.ExtraBytesParams(name=f"normal_{c}", type="f4") for c in "xyz"]
                          + [laspy.ExtraBytesParams(name="scanner", type="u1")])
    header.vlrs.append(laspy.VLR(user_id=LABEL_VLR_USER_ID, record_id=LABEL_VLR_RECORD_ID, description="label_names",
                                 record_data=label_names_to_json(dict(URBAN_CLASSES)).encode("utf-8")))
    with atomic_path(path) as tmp, laspy.open(str(tmp), mode="w", header=header,
                                              do_compress=path.suffix.lower() == ".laz") as writer:
        for pc in iter_district_blocks(points, seed, density):
            rec = laspy.ScaleAwarePointRecord.zeros(len(pc), header=header)
            for i, name in enumerate("XYZ"):  # district metres -> integers: origin == offset
                rec[name] = np.rint(pc.xyz[:, i].astype(np.float64) / 0.001).astype(np.int32)
            rec.classification = pc.labels.astype(np.uint8)
            rec.intensity = intensity_uint16(pc.intensity, path)  # as write_las does: [0, 1] floats x 65535
            rgb16 = pc.rgb.astype(np.uint16) * 257
            rec.red, rec.green, rec.blue = rgb16[:, 0], rgb16[:, 1], rgb16[:, 2]
            rec.instance = pc.instances
            for i, c in enumerate("xyz"):
                rec[f"normal_{c}"] = pc.normals[:, i]
            rec.scanner = pc.extra["scanner"].astype(np.uint8)
            writer.write_points(rec)
    return plan
