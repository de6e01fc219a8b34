"""Scene units: the pipeline works in metres.

A scene whose CRS is in feet (US survey foot, international foot, ...) is converted on load: x/y by the
horizontal CRS's axis unit, z by the vertical CRS's unit for a compound CRS (a CRS without a vertical part:
z in the horizontal unit, said in a log line). A file without a CRS is taken as metres (one log line) unless
``InputConfig.units`` (``--units metre|foot|us-foot``) says otherwise; the override also wins over a CRS.
The factor is kept in ``scene.meta["file_units"]`` ({"horizontal", "vertical", "to_metre": [fx, fy, fz],
"source": "crs" | "override" | "assumed"}), beside the scene's float64 origin, and travels into the run
folder's scene.json. Writers that copy the input's records (scene_kd.scene.annotate) keep the file's X/Y/Z
integers; writers that write new coordinates (``save_scene``) write them back in the file's units
(:func:`to_file_units`). The model is the geographic case in scene_kd.scene.crs (reprojected to UTM metres
on load, outputs in the file's coordinates).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
import tyro

from scene_kd.scene.crs import axis_units, horizontal

log = logging.getLogger(__name__)

US_FOOT = 1200.0 / 3937.0
UNIT_CHOICES: dict[str, tuple[str, float]] = {"metre": ("metre", 1.0), "foot": ("foot", 0.3048),
                                              "us-foot": ("US survey foot", US_FOOT)}
"""``--units`` values: (pyproj's unit name, metres per unit)."""

NO_CRS_LINE = "no CRS: units assumed metres (--units to override)"
_CHUNK = 1 << 20


@dataclass
class InputConfig:
    """How scene files are read (the scene-loading section of the pipeline config; recorded in config.yaml)."""

    units: Annotated[Literal["auto", "metre", "foot", "us-foot"], tyro.conf.arg(aliases=("--units",))] = "auto"
    """Units of the file's coordinates: auto (the file's CRS; metres when it has none) | metre | foot (0.3048 m)
    | us-foot (1200/3937 m). Any value but auto overrides the CRS, for x, y and z. The pipeline converts to
    metres on load; outputs keep (or are written back in) the file's units."""


def resolve_units(crs_wkt: str | None, reprojected: bool = False, override: str = "auto",
                  path: Any = "") -> dict[str, Any]:
    """The ``file_units`` record of a scene whose file CRS is ``crs_wkt`` (or None), logging one line on what
    was found (no CRS, feet converted, z assumed). ``reprojected``: x/y were reprojected to UTM metres by the
    reader (geographic CRS), so only z may need a factor. Raises KeyError for an unknown ``override``."""

    crs = None
    if crs_wkt:
        from pyproj import CRS

        crs = CRS.from_wkt(crs_wkt)
    hu, vu = axis_units(crs)
    metre = ("metre", 1.0)
    if override != "auto":
        unit = UNIT_CHOICES[override]
        if crs is not None and (hu or metre)[1] != unit[1]:
            log.warning("%s: --units %s overrides the CRS's %s ('%s')", path, override, (hu or metre)[0], crs.name)
        h, v, source = (metre if reprojected else unit), unit, "override"
    elif crs is None:
        log.info("%s: %s", path, NO_CRS_LINE)
        h, v, source = metre, metre, "assumed"
    else:
        h = metre if reprojected or hu is None else hu
        if vu is None and h[1] != 1.0:
            log.info("%s: CRS '%s' has no vertical part: z assumed in %s like x/y", path, crs.name, h[0])
        v, source = vu or h, "crs"
    out = {"horizontal": h[0], "vertical": v[0], "to_metre": [h[1], h[1], v[1]], "source": source}
    if h[1] != 1.0 or v[1] != 1.0:
        log.info("%s: x/y in %s, z in %s: converted to metres on load; outputs keep the file's units", path,
                 h[0], v[0])
    return out


def factors(scene: Any) -> np.ndarray:
    """[3] metres per file unit of ``scene`` (ones when it records none)."""
    rec = scene.meta.get("file_units") or {}
    return np.asarray(rec.get("to_metre", (1.0, 1.0, 1.0)), dtype=np.float64)


def scale_scene(scene: Any, f: np.ndarray) -> None:
    """Multiply ``scene``'s coordinates by ``f`` [3] in place (float64 per chunk: local = xyz * f + the
    origin's fractional part; origin = floor(origin * f)); Gaussian scales and normals follow, as do the
    recorded ``bounds_world``. A non-uniform factor on Gaussians scales their log-scales by the mean (logged)."""
    f = np.asarray(f, dtype=np.float64).reshape(3)
    if np.all(f == 1.0):
        return
    gauss = scene.kind == "gaussians"
    xyz = np.array(scene.means if gauss else scene.xyz, dtype=np.float32, copy=True)
    scaled = scene.origin * f
    origin = np.floor(scaled)
    shift = scaled - origin
    for s in range(0, len(xyz), _CHUNK):
        block = xyz[s:s + _CHUNK].astype(np.float64)
        block *= f
        block += shift
        xyz[s:s + _CHUNK] = block
    scene.origin = origin
    if gauss:
        scene.means = xyz
        if not np.allclose(f, f[0]):
            log.warning("Gaussians scaled by different x/y and z factors %s: their shapes by the mean", f.tolist())
        scene.log_scales = (scene.log_scales + np.float32(np.log(f).mean())).astype(np.float32)
    else:
        scene.xyz = xyz
        if scene.normals is not None and not np.allclose(f, f[0]):
            n = scene.normals / f.astype(np.float32)  # normals transform by the inverse of the scaling
            scene.normals = (n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)).astype(np.float32)
    bounds = scene.meta.get("bounds_world")
    if bounds is not None:
        scene.meta["bounds_world"] = [(np.asarray(b, dtype=np.float64) * f).tolist() for b in bounds]


def area_hint(crs_wkt: str | None, x: float, y: float) -> str | None:
    """A hint when the point (x, y), in the file's coordinates, lies more than 1 degree outside the area of use
    of the file's projected CRS (a CRS that names the wrong unit puts a scene hundreds of km away): which
    ``--units`` brings it inside, if one does. None when inside, or when the CRS is absent, geographic or has
    no area of use."""
    if not crs_wkt:
        return None
    from pyproj import CRS, Transformer

    h = horizontal(CRS.from_wkt(crs_wkt))
    area = getattr(h, "area_of_use", None)
    if h is not None and area is None and h.to_epsg(min_confidence=70):  # WKT1 carries no area: the registry's
        area = CRS.from_epsg(h.to_epsg(min_confidence=70)).area_of_use
    if h is None or h.is_geographic or area is None or area.west > area.east or not h.axis_info:
        return None
    try:
        to_lonlat = Transformer.from_crs(h, "EPSG:4326", always_xy=True)
    except Exception:  # noqa: BLE001 - pyproj has no path to lon/lat for this CRS: nothing to check
        return None

    def inside(f: float) -> bool:
        lon, lat = to_lonlat.transform(x * f, y * f, errcheck=False)
        return bool(np.isfinite([lon, lat]).all() and area.west - 1 <= lon <= area.east + 1
                    and area.south - 1 <= lat <= area.north + 1)

    if inside(1.0):
        return None
    unit = float(h.axis_info[0].unit_conversion_factor or 1.0)
    fits = [k for k, (_, m) in UNIT_CHOICES.items() if abs(m / unit - 1.0) > 1e-3 and inside(m / unit)]
    where = f"outside the area of use of '{h.name}' ({area.name.rstrip('.')})"
    if fits:
        return f"x/y lie {where} as {h.axis_info[0].unit_name}, inside it as {fits[0]}: if so, --units {fits[0]}"
    return f"x/y lie {where}: check the file's CRS"


def apply_units(scene: Any, override: str = "auto", path: Any = "") -> Any:
    """Record ``scene.meta["file_units"]`` (:func:`resolve_units` on the reader's ``crs``) and convert the
    scene to metres in place; warn (:func:`area_hint`) when the scene's centre lies outside its CRS's area of
    use. Returns the scene."""
    rec = resolve_units(scene.meta.get("crs"), bool(scene.meta.get("reprojected_to")), override, path)
    if rec["source"] == "crs" and not scene.meta.get("reprojected_to"):
        xyz = scene.means if scene.kind == "gaussians" else scene.xyz
        centre = scene.origin[:2] + (xyz[:, :2].min(axis=0).astype(np.float64) + xyz[:, :2].max(axis=0)) / 2
        hint = area_hint(scene.meta.get("crs"), float(centre[0]), float(centre[1]))
        if hint:
            log.warning("%s: %s", path, hint)
            rec["area_hint"] = hint
    scale_scene(scene, np.asarray(rec["to_metre"]))
    scene.meta["file_units"] = rec
    return scene


def to_file_units(scene: Any) -> Any:
    """A copy of a metre scene with its coordinates back in the file's units (``scene`` itself when they are
    metres); writers use it so outputs that write new coordinates match the input file."""
    f = factors(scene)
    if np.all(f == 1.0):
        return scene
    copy = dataclasses.replace(scene, meta=dict(scene.meta))  # scale_scene allocates new coordinate arrays
    scale_scene(copy, 1.0 / f)
    copy.meta["file_units"] = {**scene.meta["file_units"], "to_metre": [1.0, 1.0, 1.0], "written_back": True}
    return copy


def extent_summary(scene: Any) -> dict[str, Any]:
    """{"extent_m": [dx, dy, dz] of the scene's bounding box in metres, "units": its ``file_units`` record}."""
    xyz = scene.means if scene.kind == "gaussians" else scene.xyz
    ext = (xyz.max(axis=0) - xyz.min(axis=0)).astype(np.float64) if len(xyz) else np.zeros(3)
    return {"extent_m": [round(float(v), 3) for v in ext], "units": scene.meta.get("file_units")}


def extent_line(summary: dict[str, Any]) -> str:
    """One line for the CLI: ``scene 152.8 x 30.0 m, z range 12.0 m (file in US survey foot, converted)``."""
    dx, dy, dz = summary["extent_m"]
    u = summary.get("units") or {}
    note = ""
    if any(f != 1.0 for f in u.get("to_metre", (1.0,))):
        note = f" (file in {u['horizontal']}" + (f", z in {u['vertical']}" if u["vertical"] != u["horizontal"] else "")
        note += ", converted to metres)"
    elif u.get("source") == "assumed":
        note = " (no CRS: units assumed metres)"
    elif u.get("source") == "override":
        note = " (--units metre)"
    return f"  scene {dx:.1f} x {dy:.1f} m, z range {dz:.1f} m{note}"
