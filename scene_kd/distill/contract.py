"""The student's input contract: what it was trained on (``student.json["input"]``) and the check of a tile
against it before the student labels that tile.

Recorded at training (:func:`training_contract`): units, the attributes the student reads and how each is
normalised per tile, whether it was trained with attribute dropout (so it works on a tile without that
attribute), voxel size, point density (points per m² of occupied footprint), extent (xy size and the 2-98 %
height range), the class vocabulary of the training scene and the teacher / text encoder ids.

Checked on a tile (:func:`check_tile`): a missing attribute the student needs (trained with it and without its
dropout) and coordinates in other units than the training tile's raise :class:`InputContractError` (one line
naming the attribute or unit); a density or height range more than ``RATIO_LIMIT`` times off (either way) gives
a warning with the figures. The per-tile normalisation itself is in :mod:`scene_kd.distill.unet`
(``scene_point_features``); :func:`usable_rgb` / :func:`usable_intensity` say when an attribute present in a
file carries no information (one colour for every point, fewer than ``MIN_INTENSITY_LEVELS`` intensity values)
and is treated as missing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from scene_kd.errors import InputContractError

CONTRACT_VERSION = 1
RATIO_LIMIT = 3.0
"""A tile whose density or height range is more than this many times above or below the training tile's gets a
warning."""
MIN_INTENSITY_LEVELS = 4
"""Intensity with fewer distinct values than this (e.g. a float intensity in [0, 1] cut to 0/1 by an integer
writer) carries no usable signal and is treated as missing."""
METRE_NAMES = {"m", "metre", "meter", "metres", "meters"}
RGB_NORMALISATION = ("8-bit per channel (16-bit LAS colour detected and shifted by the reader), rgb / 127.5 - 1; "
                     "a tile without colour (or one colour for every point) gets the constant 0 (mid grey)")
INTENSITY_NORMALISATION = ("per tile: (i - median) / IQR, clipped to +-4; a tile without intensity (or fewer than "
                           f"{MIN_INTENSITY_LEVELS} distinct values) gets the constant 0 (the median)")


def usable_rgb(rgb: Any) -> Any:
    """``rgb`` [N, 3], or None when absent or the same colour for every point (colour fields with nothing in them)."""
    if rgb is None or len(rgb) == 0:
        return None
    a = np.asarray(rgb)
    return None if bool((a == a[:1]).all()) else rgb


def usable_intensity(intensity: Any) -> Any:
    """``intensity`` [N], or None when absent or with fewer than ``MIN_INTENSITY_LEVELS`` distinct values."""
    if intensity is None or len(intensity) == 0:
        return None
    a = np.asarray(intensity).reshape(-1)
    return None if np.unique(a).size < MIN_INTENSITY_LEVELS else intensity


def scene_units(scene: Any) -> str | None:
    """The horizontal unit of a scene's coordinates: ``meta["units"]`` when the reader set it, else the unit of
    the CRS the file names (``meta["crs"]`` WKT, the horizontal part of a compound CRS) unless the reader
    reprojected it; None when unknown (assumed metres)."""
    meta = getattr(scene, "meta", None) or {}
    if meta.get("units"):
        return str(meta["units"])
    wkt = meta.get("crs")
    if not wkt or meta.get("reprojected_to"):
        return None
    try:
        import pyproj

        crs = pyproj.CRS.from_wkt(wkt)
        if crs.is_compound:
            crs = crs.sub_crs_list[0]
        axis = crs.axis_info[0] if crs.axis_info else None
    except Exception:  # an unreadable CRS says nothing about units  # noqa: BLE001
        return None
    if axis is None:
        return None
    return "metre" if abs(axis.unit_conversion_factor - 1.0) < 1e-9 else str(axis.unit_name)


def point_density(xy: np.ndarray, points_per_cell: float = 8.0) -> float:
    """Points per square unit of the occupied footprint: points / (occupied xy cells x cell area), with cells
    sized for about ``points_per_cell`` points each at the bounding box's mean density (so holes and irregular
    outlines do not dilute it). xy: [N, 2] in metres for pts/m²."""
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    n = len(xy)
    if n < 2:
        return float("nan")
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    ext = np.maximum(hi - lo, 1e-6)
    cell = math.sqrt(float(ext[0] * ext[1]) * points_per_cell / n)
    ij = np.floor((xy - lo) / cell).astype(np.int64)
    occupied = np.unique(ij[:, 0] * (int(ij[:, 1].max()) + 1) + ij[:, 1]).size
    return n / (occupied * cell * cell)


def height_range(z: np.ndarray) -> float:
    """The 2-98 % z range (units of z): a tile's height extent without outliers."""
    z = np.asarray(z, dtype=np.float64).reshape(-1)
    z = z[:: max(1, len(z) // 1_000_000)]
    lo, hi = np.quantile(z, [0.02, 0.98])
    return float(hi - lo)


@dataclass
class TileFigures:
    """What :func:`check_tile` measured on a tile (pts/m² and metres when its units are metres)."""

    points: int
    density: float
    extent: list[float]
    height_range: float
    has_rgb: bool
    has_intensity: bool
    units: str | None
    warnings: list[str] = field(default_factory=list)


def measure(xyz: np.ndarray, rgb: Any, intensity: Any, units: str | None = None) -> TileFigures:
    xyz = np.asarray(xyz)
    ext = (xyz[:, :2].max(axis=0) - xyz[:, :2].min(axis=0)).tolist() if len(xyz) else [0.0, 0.0]
    return TileFigures(points=len(xyz), density=round(point_density(xyz[:, :2]), 3), extent=[round(e, 2) for e in ext],
                       height_range=round(height_range(xyz[:, 2]), 3) if len(xyz) else 0.0,
                       has_rgb=usable_rgb(rgb) is not None, has_intensity=usable_intensity(intensity) is not None,
                       units=units)


def training_contract(xyz: np.ndarray, rgb: Any, intensity: Any, spec: Any, cfg: Any, *, units: str,
                      vocabulary: list[str], teacher: str, text_encoder: str) -> dict[str, Any]:
    """``student.json["input"]``: the training tile's figures and how the student reads its inputs.

    spec: the trained :class:`~scene_kd.distill.unet.StudentSpec`; cfg: its
    :class:`~scene_kd.distill.config.DistillConfig` (dropout settings)."""
    fig = measure(xyz, rgb, intensity, units)
    return {
        "version": CONTRACT_VERSION, "units": units, "voxel_size": spec.voxel_size,
        "density_pts_per_m2" if units in METRE_NAMES else "density_pts_per_unit2": fig.density,
        "points": fig.points, "extent": fig.extent, "height_range": fig.height_range,
        "attributes": {
            "rgb": {"used": bool(spec.use_rgb), "dropout": float(cfg.rgb_dropout) if spec.use_rgb else 0.0,
                    "normalisation": RGB_NORMALISATION},
            "intensity": {"used": bool(spec.use_intensity),
                          "dropout": float(cfg.intensity_dropout) if spec.use_intensity else 0.0,
                          "normalisation": INTENSITY_NORMALISATION},
        },
        "vocabulary": list(vocabulary), "teacher": teacher, "text_encoder": text_encoder,
    }


def _density(contract: dict[str, Any]) -> float | None:
    d = contract.get("density_pts_per_m2", contract.get("density_pts_per_unit2"))
    return float(d) if d else None


def _ratio_warning(what: str, tile: float, trained: float | None, unit: str) -> str | None:
    if not trained or not tile or not math.isfinite(tile):
        return None
    r = tile / trained
    if 1 / RATIO_LIMIT <= r <= RATIO_LIMIT:
        return None
    return (f"tile {what} {tile:.3g} {unit} is {r:.2g}x the student's training tile ({trained:.3g} {unit}); "
            f"outside 1/{RATIO_LIMIT:g}..{RATIO_LIMIT:g}x its labels may be unreliable")


def check_tile(contract: dict[str, Any] | None, xyz: np.ndarray, rgb: Any, intensity: Any,
               units: str | None = None) -> TileFigures:
    """Check a tile against a student's input contract; the tile's figures with ``warnings`` filled in.

    xyz [N, 3] (tile units), rgb [N, 3] or None, intensity [N] or None, units: the tile's coordinate unit when
    known (None: assumed the contract's). Raises InputContractError (one line) for a missing attribute the student
    needs or other units. ``contract`` None (a student saved before contracts): figures only, one warning."""
    fig = measure(xyz, rgb, intensity, units)
    if contract is None:
        fig.warnings.append("the student records no input contract (trained before student.json had one); "
                            "the tile is not checked")
        return fig
    want = str(contract.get("units", "m"))
    if units is not None and (units in METRE_NAMES) != (want in METRE_NAMES):
        raise InputContractError(f"tile coordinates are in {units}, the student was trained in {want}; "
                                 "convert the tile (or its CRS units) first")
    attrs = contract.get("attributes", {})
    for name, has, label in (("rgb", fig.has_rgb, "colour (rgb)"), ("intensity", fig.has_intensity, "intensity")):
        a = attrs.get(name, {})
        if a.get("used") and not has and not a.get("dropout"):
            raise InputContractError(f"tile has no {label}; the student was trained with {label} and without its "
                                     f"dropout (retrain with distill.{name}_dropout > 0 to label tiles without it)")
    unit2 = "pts/m²" if want in METRE_NAMES else "pts/unit²"
    for w in (_ratio_warning("density", fig.density, _density(contract), unit2),
              _ratio_warning("height range (2-98 %)", fig.height_range, contract.get("height_range"),
                             "m" if want in METRE_NAMES else want)):
        if w:
            fig.warnings.append(w)
    return fig
