"""Coordinate reference systems of scene files (pyproj, as laspy uses it).

A geographic CRS (x/y in degrees) must never be rendered as degrees-as-metres: the pipeline works in the
UTM zone of the scene's centre (same datum where the EPSG registry has it, else WGS 84), and outputs that
copy the input's records keep the file's own coordinates. ``GeoPolicy.geographic = "refuse"`` refuses
such files instead, naming their CRS.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from scene_kd.errors import SceneFormatError
from scene_kd.scene.geokeys import (
    crs_from_geokeys,
    parse_geokeys,
    projection_records,
    vertical_from_geokeys,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GeoPolicy:
    """What readers do with a geographic CRS: ``reproject`` (to its UTM zone) or ``refuse``."""

    geographic: str = "reproject"


POLICY = GeoPolicy()


def las_crs(header: Any, path: Any = "") -> Any | None:
    """The pyproj CRS of a LAS header, or None when it has none (a record pyproj cannot read is logged).

    The WKT VLR/EVLR (pyproj), else the GeoTIFF keys read by :mod:`scene_kd.scene.geokeys` (EPSG codes where
    keyed, a user-defined projection and its linear/vertical units otherwise), else laspy's ``parse_crs``.
    A horizontal-only WKT gains the vertical CRS the GeoTIFF keys name (a compound CRS). laspy alone misses a
    user-defined projection (None, or the geographic CRS: feet read as degrees) and every vertical key.
    """
    from pyproj import CRS

    recs = projection_records([*header.vlrs, *(getattr(header, "evlrs", None) or [])])
    crs = None
    text = recs.get("wkt", b"").decode("utf-8", "replace").strip("\x00 \r\n")
    if text:
        try:
            crs = CRS.from_wkt(text)
        except Exception as e:  # noqa: BLE001 - pyproj CRSError and friends for a malformed WKT
            log.warning("%s: the WKT CRS record is not understood (%s); trying the GeoTIFF keys", path,
                        str(e).splitlines()[0] if str(e) else type(e).__name__)
    if "keys" in recs:
        keys = parse_geokeys(recs["keys"], recs.get("doubles", b""), recs.get("ascii", b""))
        if crs is None:
            crs = crs_from_geokeys(keys)
        elif not crs.is_compound and len(crs.axis_info) < 3:  # the WKT's horizontal CRS + the keys' vertical
            vertical = vertical_from_geokeys(keys)
            if vertical is not None:
                from pyproj.crs import CompoundCRS

                try:
                    crs = CompoundCRS(name=f"{crs.name} + {vertical.name}", components=[crs, vertical])
                except Exception as e:  # noqa: BLE001 - pyproj CRSError: keep the WKT's CRS
                    log.info("%s: the GeoTIFF keys' vertical CRS does not combine with the WKT's (%s)", path, e)
    if crs is None and recs:
        try:
            crs = header.parse_crs()
        except Exception as e:  # noqa: BLE001 - pyproj/laspy raise several types for malformed CRS records
            log.warning("%s: cannot parse the file's CRS (%s); coordinates used as they are", path, e)
    return crs


def horizontal(crs: Any) -> Any:
    """The horizontal part of a (possibly compound or bound) CRS."""
    if crs is not None and crs.is_bound:
        crs = crs.source_crs
    if crs is not None and crs.is_compound and crs.sub_crs_list:
        crs = crs.sub_crs_list[0]
        return crs.source_crs if crs.is_bound else crs
    return crs


def axis_units(crs: Any) -> tuple[tuple[str, float] | None, tuple[str, float] | None]:
    """((name, metres per unit) of x/y, or None when angular or absent; (name, metres per unit) of z, or None
    when the CRS has no vertical axis), read from pyproj's axis info of the horizontal and vertical parts."""
    if crs is None:
        return None, None
    h = horizontal(crs)
    axes = list(h.axis_info) if h is not None else []
    hu = None
    if axes and not h.is_geographic and axes[0].unit_conversion_factor:
        hu = (axes[0].unit_name, float(axes[0].unit_conversion_factor))
    base = crs.source_crs if crs.is_bound else crs
    vaxes = list(base.sub_crs_list[1].axis_info) if base.is_compound and len(base.sub_crs_list) > 1 else axes[2:]
    vu = None
    if vaxes and vaxes[0].unit_conversion_factor:
        vu = (vaxes[0].unit_name, float(vaxes[0].unit_conversion_factor))
    return hu, vu


def describe_crs(crs: Any) -> dict[str, Any] | None:
    """{"name", "epsg" (int or None), "geographic" (bool), "compound" (bool), "units" (x/y), "horizontal_units",
    "vertical_units" (None without a vertical part), "vertical_name"} for `info`, or None."""
    if crs is None:
        return None
    h = horizontal(crs)
    units = sorted({a.unit_name for a in h.axis_info[:2]}) if h.axis_info else []
    _, vu = axis_units(crs)
    base = crs.source_crs if crs.is_bound else crs
    vname = base.sub_crs_list[1].name if base.is_compound and len(base.sub_crs_list) > 1 else None
    return {"name": crs.name, "epsg": crs.to_epsg(min_confidence=70), "geographic": bool(h.is_geographic),
            "compound": bool(base.is_compound), "units": ", ".join(units), "horizontal_units": ", ".join(units),
            "vertical_units": vu[0] if vu else None, "vertical_name": vname}


def utm_crs(crs: Any, lon: float, lat: float) -> Any:
    """The UTM zone CRS containing (lon, lat), on ``crs``'s datum when the registry has one, else WGS 84."""
    from pyproj import CRS
    from pyproj.aoi import AreaOfInterest
    from pyproj.database import query_utm_crs_info

    aoi = AreaOfInterest(lon, lat, lon, lat)
    datum = getattr(horizontal(crs), "datum", None)
    found = query_utm_crs_info(datum_name=datum.name, area_of_interest=aoi) if datum is not None else []
    if not found:
        found = query_utm_crs_info(datum_name="WGS 84", area_of_interest=aoi)
    if found:
        return CRS.from_epsg(found[0].code)
    zone = int(np.floor((lon + 180.0) / 6.0)) % 60 + 1
    return CRS.from_epsg((32600 if lat >= 0 else 32700) + zone)


def geographic_to_utm(crs: Any, lon: float, lat: float, path: Any = "", policy: GeoPolicy = POLICY):
    """(pyproj Transformer lon/lat -> UTM metres (always_xy), the UTM CRS) for a geographic ``crs``, or
    None for a projected/absent one. Raises SceneFormatError under ``policy.geographic == "refuse"``."""
    from pyproj import Transformer

    h = horizontal(crs)
    if h is None or not h.is_geographic:
        return None
    if policy.geographic == "refuse":
        raise SceneFormatError(f"x/y are in degrees (geographic CRS '{crs.name}'); reproject it to a projected "
                               "CRS first (e.g. pdal translate ... --filters.reprojection.out_srs=EPSG:326xx)",
                               path=path)
    utm = utm_crs(crs, lon, lat)
    log.warning("%s: geographic CRS '%s' (degrees); the pipeline works in '%s' metres, outputs keep the file's "
                "coordinates", path, crs.name, utm.name)
    return Transformer.from_crs(h, utm, always_xy=True), utm


def warn_float32_step(lo: np.ndarray, hi: np.ndarray, path: Any = "", tolerance: float = 0.01) -> None:
    """Warn when float32 coordinates at this magnitude step by more than ``tolerance`` (1 cm)."""
    mag = float(max(np.abs(np.asarray(lo)).max(), np.abs(np.asarray(hi)).max()))
    step = float(np.spacing(np.float32(mag)))
    if step > tolerance:
        log.warning("%s: float32 coordinates near %.6g step by %.3g, coarser than %.3g; the file has lost "
                    "precision (store float64 or offset coordinates)", path, mag, step, tolerance)
