"""The student's input contract: what it was trained on (``student.json["input"]``) and the check of a tile
against it before the student labels that tile.

Recorded at training (:func:`training_contract`): units, the attributes the student reads and how each is
normalised per tile, whether it was trained with attribute dropout (so it works on a tile without that
attribute), voxel size, point density (points per m² of occupied footprint), extent (xy size and the 2-98 %
height range), the class vocabulary of the training scene and the teacher / text encoder ids.

Checked on a tile (:func:`check_tile`): a missing attribute the student needs (trained with it and without its
dropout) and coordinates in units that cannot be converted to the training tile's raise
:class:`InputContractError` (one line naming the attribute or unit); a tile in feet (its ``meta["units"]`` or
CRS, :func:`scene_scale`) is converted to a metre student's metres (:func:`to_student_units`); a missing attribute
the student was trained to do without (dropout), a density more than ``DENSITY_RATIO_LIMIT`` or a height range
more than ``RATIO_LIMIT`` times off (either way) give a warning with the figures. The per-tile normalisation itself is in :mod:`scene_kd.distill.unet`
(``scene_point_features``); :func:`usable_rgb` / :func:`usable_intensity` say when an attribute present in a
file carries no information (one colour for every point, fewer than ``MIN_INTENSITY_LEVELS`` intensity values)
and is treated as missing.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from scene_kd.errors import InputContractError

CONTRACT_VERSION = 1
RATIO_LIMIT = 3.0
"""A tile whose height range is more than this many times above or below the training tile's gets a warning."""
DENSITY_RATIO_LIMIT = 1.5
"""The same for point density: benchmarks/cross_tile.py measured block B at half its density labelled 0.07 mIoU
below B itself by a student of block A (89 % of points agreeing), so a factor of 1.5 either way is flagged."""
CLUSTERS = 8
"""k of the feature clusters whose agreement :func:`attribute_agreement` measures."""
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


UNIT_METRES = {**{n: 1.0 for n in METRE_NAMES}, "foot": 0.3048, "ft": 0.3048, "international foot": 0.3048,
               "us survey foot": 1200.0 / 3937.0, "us-ft": 1200.0 / 3937.0, "ftus": 1200.0 / 3937.0}
"""Metres per unit of the unit names a scene's ``meta["units"]`` may carry (lower case)."""


def _axis_factor(crs: Any) -> tuple[str, float] | None:
    axis = crs.axis_info[0] if crs is not None and crs.axis_info else None
    if axis is None:
        return None
    name = "metre" if abs(axis.unit_conversion_factor - 1.0) < 1e-9 else str(axis.unit_name)
    return name, float(axis.unit_conversion_factor)


def scene_scale(scene: Any) -> tuple[str | None, np.ndarray | None]:
    """(unit name, metres per unit for x, y, z [3]) of a scene's coordinates: ``meta["units"]`` when set (x, y and
    z in that unit; a declaration wins), else metres when the reader converted them (``meta["file_units"]``,
    load_scene's default), else the CRS the file names (``meta["crs"]`` WKT; a compound CRS's vertical part for
    z, else the horizontal unit) unless the reader reprojected it. (None, None) when unknown (assumed
    metres); (name, None) for a unit name without a known length."""
    meta = getattr(scene, "meta", None) or {}
    if meta.get("units"):
        name = str(meta["units"])
        f = UNIT_METRES.get(name.lower())
        return name, (None if f is None else np.full(3, f))
    if meta.get("file_units"):  # the reader already converted the file's units to metres (scene_kd.scene.units)
        return "metre", np.ones(3)
    wkt = meta.get("crs")
    if not wkt or meta.get("reprojected_to"):
        return None, None
    try:
        import pyproj

        crs = pyproj.CRS.from_wkt(wkt)
        subs = crs.sub_crs_list if crs.is_compound else [crs]
        h = _axis_factor(subs[0])
        v = _axis_factor(subs[1]) if len(subs) > 1 else None
    except Exception:  # an unreadable CRS says nothing about units  # noqa: BLE001
        return None, None
    if h is None or not subs[0].is_projected:  # geographic degrees are the reader's business (crs.py)
        return None, None
    return h[0], np.array([h[1], h[1], (v or h)[1]])


def scene_units(scene: Any) -> str | None:
    """The horizontal unit name of a scene's coordinates (:func:`scene_scale`); None when unknown (metres)."""
    return scene_scale(scene)[0]


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
    """What :func:`check_tile` measured on a tile (pts/m² and metres when its units are metres or were converted)."""

    points: int
    density: float
    extent: list[float]
    height_range: float
    has_rgb: bool
    has_intensity: bool
    units: str | None
    warnings: list[str] = field(default_factory=list)
    scale: list[float] | None = None
    """Metres per tile unit (x, y, z) the student's caller multiplies the tile's coordinates by
    (:func:`to_student_units`); None: used as they are."""


def measure(xyz: np.ndarray, rgb: Any, intensity: Any, units: str | None = None) -> TileFigures:
    """A tile's figures: xyz [N, 3], rgb [N, 3] or None, intensity [N] or None; densities per unit² of xyz."""
    xyz = np.asarray(xyz)
    ext = (xyz[:, :2].max(axis=0) - xyz[:, :2].min(axis=0)).tolist() if len(xyz) else [0.0, 0.0]
    return TileFigures(points=len(xyz), density=round(point_density(xyz[:, :2]), 3), extent=[round(e, 2) for e in ext],
                       height_range=round(height_range(xyz[:, 2]), 3) if len(xyz) else 0.0,
                       has_rgb=usable_rgb(rgb) is not None, has_intensity=usable_intensity(intensity) is not None,
                       units=units)


def attribute_agreement(features_of: Callable[[Any, Any], Any], rgb: Any, intensity: Any, *,
                        classes: Any = None, seed: int = 0) -> dict[str, float]:
    """How much a trained student's labels depend on each attribute it reads, on its training tile: for "rgb" and
    "intensity" (when not None), the % of points whose label stays the same when the attribute is dropped
    (constant 0 input). Labels: argmax over ``classes`` [K, D] (the training scene's vocabulary through its text
    encoder) when given, else the nearest of ``CLUSTERS`` feature clusters (spherical k-means of the features with
    every input; finer than a vocabulary, so a lower figure).

    features_of(rgb, intensity) -> the student's features [N, D] (torch) on the tile's points with those inputs
    (None: the attribute dropped); rgb [N, 3] / intensity [N] or None."""
    import torch

    norm = torch.nn.functional.normalize
    full = norm(features_of(rgb, intensity).float(), dim=1)
    if classes is not None:
        cent = norm(torch.as_tensor(classes, dtype=torch.float32), dim=1)
    else:
        g = torch.Generator().manual_seed(seed)
        cent = full[torch.randperm(len(full), generator=g)[:CLUSTERS]].clone()
        for _ in range(15):
            assign = (full @ cent.T).argmax(1)
            for k in range(len(cent)):
                members = full[assign == k]
                if len(members):
                    cent[k] = norm(members.mean(0), dim=0)
    assign = (full @ cent.T).argmax(1)
    out = {}
    for name, args in (("rgb", (None, intensity)), ("intensity", (rgb, None))):
        if (rgb if name == "rgb" else intensity) is None:
            continue
        dropped = norm(features_of(*args).float(), dim=1)
        out[name] = round(100.0 * float(((dropped @ cent.T).argmax(1) == assign).float().mean()), 2)
    return out


def training_contract(xyz: np.ndarray, rgb: Any, intensity: Any, spec: Any, cfg: Any, *, units: str,
                      vocabulary: list[str], teacher: str, text_encoder: str,
                      agreement: dict[str, float] | None = None, agreement_kind: str = "label") -> dict[str, Any]:
    """``student.json["input"]``: the training tile's figures and how the student reads its inputs.

    spec: the trained :class:`~scene_kd.distill.unet.StudentSpec`; cfg: its
    :class:`~scene_kd.distill.config.DistillConfig` (dropout settings); agreement: :func:`attribute_agreement`
    over the vocabulary (``agreement_kind`` "label") or feature clusters ("cluster")."""
    fig = measure(xyz, rgb, intensity, units)
    agreement = agreement or {}

    def attr(name: str, used: bool, dropout: float, norm: str) -> dict[str, Any]:
        a = {"used": bool(used), "dropout": float(dropout) if used else 0.0, "normalisation": norm}
        if used and name in agreement:
            a[f"{agreement_kind}_agreement_without_pct"] = agreement[name]
        return a

    return {
        "version": CONTRACT_VERSION, "units": units, "voxel_size": spec.voxel_size,
        "density_pts_per_m2" if units in METRE_NAMES else "density_pts_per_unit2": fig.density,
        "points": fig.points, "extent": fig.extent, "height_range": fig.height_range,
        "attributes": {
            "rgb": attr("rgb", spec.use_rgb, cfg.rgb_dropout, RGB_NORMALISATION),
            "intensity": attr("intensity", spec.use_intensity, cfg.intensity_dropout, INTENSITY_NORMALISATION),
        },
        "vocabulary": list(vocabulary), "teacher": teacher, "text_encoder": text_encoder,
    }


def _density(contract: dict[str, Any]) -> float | None:
    d = contract.get("density_pts_per_m2", contract.get("density_pts_per_unit2"))
    return float(d) if d else None


def _ratio_warning(what: str, tile: float, trained: float | None, unit: str, limit: float) -> str | None:
    if not trained or not tile or not math.isfinite(tile):
        return None
    r = tile / trained
    if 1 / limit <= r <= limit:
        return None
    return (f"tile {what} {tile:.3g} {unit} is {r:.2g}x the student's training tile ({trained:.3g} {unit}); "
            f"outside 1/{limit:g}..{limit:g}x its labels may be unreliable")


MISSING_AGREEMENT_FLOOR = 95.0
"""A tile without an attribute the student reads is refused when, on its training tile, fewer than this % of points
kept their label without it (issue 22: labels without colour must agree with the coloured run on >= 95 % of points,
or the tile is refused in one line naming colour); ``accept_missing`` labels it anyway, with the warning."""

ATTRIBUTE_ALIASES = {"rgb": "rgb", "colour": "rgb", "color": "rgb", "intensity": "intensity"}


def _agreement_without(a: dict[str, Any]) -> tuple[float | None, str]:
    for kind, what in (("label", "label"), ("cluster", "feature cluster")):
        agree = a.get(f"{kind}_agreement_without_pct")
        if agree is not None:
            return float(agree), what
    return None, ""


def _attribute_warning(label: str, a: dict[str, Any]) -> str:
    agree, what = _agreement_without(a)
    figure = "" if agree is None else f"; on its training tile {agree:.3g} % of points kept their {what} without {label}"
    return (f"tile has no {label}; the student reads {label} and labels without it through {label} dropout "
            f"({100 * float(a['dropout']):.0f} % of training crops){figure}")


def accepted_attributes(names: Any) -> frozenset[str]:
    """``--accept-missing`` names (rgb | colour | color | intensity) -> the contract's attribute names; ConfigError
    for another name."""
    from scene_kd.errors import ConfigError

    out = set()
    for n in names or ():
        key = ATTRIBUTE_ALIASES.get(str(n).strip().lower())
        if key is None:
            raise ConfigError(f"--accept-missing takes rgb (colour) or intensity, not {n!r}")
        out.add(key)
    return frozenset(out)


def check_tile(contract: dict[str, Any] | None, xyz: np.ndarray, rgb: Any, intensity: Any,
               units: str | None = None, scale: Any = None, accept_missing: Any = ()) -> TileFigures:
    """Check a tile against a student's input contract; the tile's figures with ``warnings`` filled in.

    xyz [N, 3] (tile units), rgb [N, 3] or None, intensity [N] or None, units / scale: the tile's coordinate unit
    and metres per unit [3] when known (:func:`scene_scale`; None: assumed the contract's). A tile in a known
    length unit other than a metre student's is measured in metres and gets ``scale`` (the caller converts its
    coordinates, :func:`to_student_units`). Raises InputContractError (one line) for a missing attribute the
    student needs (trained with it, without its dropout) or a unit it cannot convert. A missing attribute
    the student has a dropout for is refused too when its training tile kept fewer than
    ``MISSING_AGREEMENT_FLOOR`` % of labels without it, unless ``accept_missing`` names it (rgb / intensity).
    Labelled anyway (or above the floor), it gets a warning with the figure; a density more than
    ``DENSITY_RATIO_LIMIT`` or a height range more than
    ``RATIO_LIMIT`` times off give a warning with the figures. ``contract`` None (a student saved before
    contracts): figures only, one warning."""
    want = str((contract or {}).get("units", "m"))
    factor = unit_conversion(contract, units, scale)
    fig = measure(np.asarray(xyz) * factor if factor is not None else xyz, rgb, intensity, units)
    fig.scale = None if factor is None else [float(f) for f in factor]
    if contract is None:
        fig.warnings.append("the student records no input contract (trained before student.json had one); "
                            "the tile is not checked")
        return fig
    attrs = contract.get("attributes", {})
    for name, has, label in (("rgb", fig.has_rgb, "colour (rgb)"), ("intensity", fig.has_intensity, "intensity")):
        a = attrs.get(name, {})
        if not a.get("used") or has:
            continue
        if not a.get("dropout"):
            raise InputContractError(f"tile has no {label}; the student was trained with {label} and without its "
                                     f"dropout (retrain with distill.{name}_dropout > 0 to label tiles without it)")
        agree, _ = _agreement_without(a)
        if agree is not None and agree < MISSING_AGREEMENT_FLOOR and name not in accepted_attributes(accept_missing):
            raise InputContractError(
                f"tile has no {label}; without it this student's labels agreed with its own on {agree:.3g} % of its "
                f"training tile's points (< {MISSING_AGREEMENT_FLOOR:g} %): label anyway with --accept-missing "
                f"{name}, or use a student trained without {label} (distill.use_{name} false)")
        fig.warnings.append(_attribute_warning(label, a))
    unit2 = "pts/m²" if want in METRE_NAMES else "pts/unit²"
    for w in (_ratio_warning("density", fig.density, _density(contract), unit2, DENSITY_RATIO_LIMIT),
              _ratio_warning("height range (2-98 %)", fig.height_range, contract.get("height_range"),
                             "m" if want in METRE_NAMES else want, RATIO_LIMIT)):
        if w:
            fig.warnings.append(w)
    return fig


def unit_conversion(contract: dict[str, Any] | None, units: str | None, scale: Any) -> np.ndarray | None:
    """Metres per tile unit [3] when a tile in ``units`` (metres per unit ``scale`` [3], :func:`scene_scale`) must be
    converted for a student trained in metres; None when its units are the contract's (or unknown, or no
    contract). Raises InputContractError (one line) for units the student was not trained in that cannot be
    converted (an unknown length, or a student trained in other units than metres)."""
    if contract is None or units is None:
        return None
    want = str(contract.get("units", "m"))
    if (units.lower() in METRE_NAMES) == (want.lower() in METRE_NAMES):
        return None
    if scale is None or want.lower() not in METRE_NAMES:
        raise InputContractError(f"tile coordinates are in {units}, the student was trained in {want}; "
                                 "convert the tile (or its CRS units) first")
    return np.asarray(scale, dtype=np.float64).reshape(3)


def to_student_units(xyz: np.ndarray, fig: TileFigures) -> np.ndarray:
    """A tile's coordinates [N, 3] in the student's units: ``xyz * fig.scale`` (same dtype) when
    :func:`check_tile` found them in a unit to convert, else ``xyz`` itself."""
    if fig.scale is None:
        return xyz
    return (np.asarray(xyz) * np.asarray(fig.scale)).astype(np.asarray(xyz).dtype, copy=False)
