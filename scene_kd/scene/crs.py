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

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GeoPolicy:
    """What readers do with a geographic CRS: ``reproject`` (to its UTM zone) or ``refuse``."""

    geographic: str = "reproject"


POLICY = GeoPolicy()


def las_crs(header: Any, path: Any = "") -> Any | None:
    """The pyproj CRS of a LAS header (WKT or GeoTIFF key VLRs, via ``laspy.LasHeader.parse_crs``), or
    None when it has none or it cannot be parsed (logged)."""
    try:
        return header.parse_crs()
    except Exception as e:  # noqa: BLE001 - pyproj/laspy raise several types for malformed CRS records
        log.warning("%s: cannot parse the file's CRS (%s); coordinates used as they are", path, e)
        return None


def horizontal(crs: Any) -> Any:
    """The horizontal part of a (possibly compound) CRS."""
    if crs is not None and crs.is_compound and crs.sub_crs_list:
        return crs.sub_crs_list[0]
    return crs


def describe_crs(crs: Any) -> dict[str, Any] | None:
    """{"name", "epsg" (int or None), "geographic" (bool), "units"} for `info`, or None."""
    if crs is None:
        return None
    h = horizontal(crs)
    units = sorted({a.unit_name for a in h.axis_info}) if h.axis_info else []
    return {"name": crs.name, "epsg": crs.to_epsg(min_confidence=70), "geographic": bool(h.is_geographic),
            "units": ", ".join(units)}


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
