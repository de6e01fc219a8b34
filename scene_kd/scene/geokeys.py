"""A LAS file's CRS from its GeoTIFF keys (the LASF_Projection GeoKeyDirectory / GeoDoubleParams /
GeoAsciiParams VLRs), built with pyproj.

laspy's ``parse_crs`` reads only the ProjectedCSTypeGeoKey / GeographicTypeGeoKey EPSG codes: a user-defined
projection (ProjectedCSTypeGeoKey = 32767, its method and parameters keyed) gives None, or worse the file's
geographic CRS, so feet would be read as degrees; and it drops the vertical keys. Here the keys are read as the
GeoTIFF 1.1 spec (OGC 19-008r4) defines them: EPSG codes where keyed (projected, geographic, projection,
datum, vertical CRS and datum, linear units), else a user-defined projection from ProjCoordTransGeoKey and its
parameters (pyproj conversion classes), with the linear units of ProjLinearUnitsGeoKey (9001 metre, 9002 foot,
9003 US survey foot) and VerticalUnitsGeoKey. A projection method not handled here still gives an engineering
CRS that carries the linear unit, so the units are never lost.
"""

from __future__ import annotations

import logging
import struct
from typing import Any

log = logging.getLogger(__name__)

USER_DEFINED = 32767
# key ids (GeoTIFF 1.1, OGC 19-008r4 annex)
GT_MODEL_TYPE, GT_CITATION = 1024, 1026
GEOGRAPHIC_TYPE, GEOG_CITATION, GEOG_DATUM, GEOG_ELLIPSOID = 2048, 2049, 2050, 2056
GEOG_SEMI_MAJOR, GEOG_SEMI_MINOR, GEOG_INV_FLATTENING = 2057, 2058, 2059
PROJECTED_TYPE, PCS_CITATION, PROJECTION, PROJ_COORD_TRANS, PROJ_LINEAR_UNITS = 3072, 3073, 3074, 3075, 3076
PROJ_LINEAR_UNIT_SIZE = 3077
VERTICAL_TYPE, VERTICAL_CITATION, VERTICAL_DATUM, VERTICAL_UNITS = 4096, 4097, 4098, 4099
_PARAM_KEYS = {3078: "std_parallel_1", 3079: "std_parallel_2", 3080: "nat_origin_long", 3081: "nat_origin_lat",
               3082: "false_easting", 3083: "false_northing", 3084: "false_origin_long", 3085: "false_origin_lat",
               3086: "false_origin_easting", 3087: "false_origin_northing", 3088: "center_long", 3089: "center_lat",
               3090: "center_easting", 3091: "center_northing", 3092: "scale_at_nat_origin",
               3093: "scale_at_center", 3094: "azimuth", 3095: "straight_vert_pole_long"}
_GEOKEY_RECORDS = {34735: "keys", 34736: "doubles", 34737: "ascii"}


def projection_records(vlrs: Any) -> dict[str, bytes]:
    """{"keys", "doubles", "ascii", "wkt"}: the raw bytes of a LAS file's LASF_Projection records (VLRs and
    EVLRs alike; laspy's parsed records are turned back into bytes)."""
    out: dict[str, bytes] = {}
    for v in vlrs:
        if getattr(v, "user_id", "") != "LASF_Projection":
            continue
        rid = getattr(v, "record_id", -1)
        name = "wkt" if rid == 2112 else _GEOKEY_RECORDS.get(rid)
        if name is None or name in out:
            continue
        try:
            raw = v.record_data_bytes() if hasattr(v, "record_data_bytes") else bytes(v.record_data)
        except Exception:  # noqa: BLE001 - a record laspy could not re-encode: use what it kept
            raw = bytes(getattr(v, "record_data", b"") or b"")
        out[name] = bytes(raw)
    return out


def parse_geokeys(keys: bytes, doubles: bytes = b"", ascii_: bytes = b"") -> dict[int, Any]:
    """{key id: int | float | tuple[float, ...] | str} of a GeoKeyDirectory record; {} when malformed."""
    if len(keys) < 8:
        return {}
    n_words = len(keys) // 2
    words = struct.unpack(f"<{n_words}H", keys[: 2 * n_words])
    n_keys = words[3]
    dbl = struct.unpack(f"<{len(doubles) // 8}d", doubles[: 8 * (len(doubles) // 8)]) if doubles else ()
    out: dict[int, Any] = {}
    for i in range(n_keys):
        at = 4 + 4 * i
        if at + 4 > len(words):
            break
        key, loc, count, value = words[at: at + 4]
        if loc == 0:
            out[key] = value
        elif loc == 34736 and value + count <= len(dbl):
            out[key] = dbl[value] if count == 1 else tuple(dbl[value: value + count])
        elif loc == 34737:
            text = ascii_[value: value + count].decode("latin-1", "replace")
            out[key] = text.replace("|", " ").strip("\x00 ").strip()
    return out


def _linear_unit(code: int | None, size: float | None = None) -> tuple[str, float] | None:
    """(name, metres per unit) of an EPSG linear unit code (pyproj's unit table); ``size`` for user-defined."""
    if code is None:
        return None
    if code == USER_DEFINED:
        return ("user-defined unit", float(size)) if size else None
    from pyproj.database import get_units_map

    for name, unit in get_units_map(auth_name="EPSG", category="linear").items():
        if unit.code == str(code):
            return name, float(unit.conv_factor)
    return None


def _epsg(code: Any) -> int | None:
    return int(code) if isinstance(code, int) and 1024 <= code < USER_DEFINED else None


def _geodetic(k: dict[int, Any]) -> Any:
    """The geographic CRS of the keys: EPSG code, else datum code, else ellipsoid parameters, else WGS 84."""
    from pyproj import CRS
    from pyproj.crs import Datum, GeographicCRS
    from pyproj.crs.datum import CustomDatum, CustomEllipsoid, Ellipsoid

    if _epsg(k.get(GEOGRAPHIC_TYPE)):
        return CRS.from_epsg(k[GEOGRAPHIC_TYPE])
    name = k.get(GEOG_CITATION) or "user-defined"
    if _epsg(k.get(GEOG_DATUM)):
        return GeographicCRS(name=name, datum=Datum.from_epsg(k[GEOG_DATUM]))
    if _epsg(k.get(GEOG_ELLIPSOID)):
        return GeographicCRS(name=name, datum=CustomDatum(ellipsoid=Ellipsoid.from_epsg(k[GEOG_ELLIPSOID])))
    if isinstance(k.get(GEOG_SEMI_MAJOR), float):
        ell = CustomEllipsoid(semi_major_axis=k[GEOG_SEMI_MAJOR], semi_minor_axis=k.get(GEOG_SEMI_MINOR),
                              inverse_flattening=k.get(GEOG_INV_FLATTENING))
        return GeographicCRS(name=name, datum=CustomDatum(ellipsoid=ell))
    log.info("GeoTIFF keys name no geographic CRS or datum; WGS 84 assumed for the projection's datum")
    return CRS.from_epsg(4326)


def _conversion(k: dict[int, Any], to_m: float) -> Any | None:
    """The pyproj conversion of a user-defined projection (ProjCoordTransGeoKey + parameters), or None for a
    method not handled. False eastings/northings are keyed in the linear unit; pyproj takes metres."""
    from pyproj.crs import CoordinateOperation
    from pyproj.crs import coordinate_operation as co

    if _epsg(k.get(PROJECTION)):
        return CoordinateOperation.from_epsg(k[PROJECTION])
    p = {name: k[key] for key, name in _PARAM_KEYS.items() if isinstance(k.get(key), (int, float))}

    def g(*names: str, default: float = 0.0) -> float:
        return float(next((p[n] for n in names if n in p), default))

    fe = g("false_easting", "false_origin_easting", "center_easting") * to_m
    fn = g("false_northing", "false_origin_northing", "center_northing") * to_m
    lat0 = g("nat_origin_lat", "false_origin_lat", "center_lat")
    lon0 = g("nat_origin_long", "false_origin_long", "center_long", "straight_vert_pole_long")
    scale = g("scale_at_nat_origin", "scale_at_center", default=1.0)
    ct = k.get(PROJ_COORD_TRANS)
    if ct == 1:
        return co.TransverseMercatorConversion(lat0, lon0, fe, fn, scale)
    if ct == 8:
        return co.LambertConformalConic2SPConversion(g("std_parallel_1"), g("std_parallel_2"), lat0, lon0, fe, fn)
    if ct == 9:
        return co.LambertConformalConic1SPConversion(lat0, lon0, fe, fn, scale)
    if ct == 11:
        return co.AlbersEqualAreaConversion(g("std_parallel_1"), g("std_parallel_2"), lat0, lon0, fe, fn)
    if ct == 10:
        return co.LambertAzimuthalEqualAreaConversion(lat0, lon0, fe, fn)
    if ct == 7:
        return co.MercatorAConversion(lat0, lon0, scale, fe, fn)
    if ct == 16:
        return co.StereographicConversion(lat0, lon0, fe, fn, scale)
    if ct == 17:
        return co.EquidistantCylindricalConversion(g("std_parallel_1"), lon0, fe, fn)
    return None


_AXES = {"metre": "EASTING_NORTHING", "foot": "EASTING_NORTHING_FT", "US survey foot": "EASTING_NORTHING_US_FT"}
_VAXES = {"metre": "GRAVITY_HEIGHT", "foot": "GRAVITY_HEIGHT_FT", "US survey foot": "GRAVITY_HEIGHT_US_FT"}


def _local_crs(name: str, unit: tuple[str, float], vertical: bool = False) -> Any:
    """An engineering (local) CRS that only says the axis unit: for what pyproj cannot build from the keys."""
    from pyproj import CRS

    axes = 'AXIS["Up",UP]' if vertical else 'AXIS["Easting",EAST],AXIS["Northing",NORTH]'
    return CRS.from_wkt(f'LOCAL_CS["{name}",LOCAL_DATUM["unknown",32767],UNIT["{unit[0]}",{unit[1]!r}],{axes}]')


def _projected(k: dict[int, Any]) -> Any | None:
    from pyproj import CRS
    from pyproj.crs import ProjectedCRS
    from pyproj.crs.coordinate_system import Cartesian2DCS
    from pyproj.crs.enums import Cartesian2DCSAxis

    if _epsg(k.get(PROJECTED_TYPE)):
        return _keyed_unit(CRS.from_epsg(k[PROJECTED_TYPE]), k)
    unit = _linear_unit(k.get(PROJ_LINEAR_UNITS), k.get(PROJ_LINEAR_UNIT_SIZE)) or ("metre", 1.0)
    name = k.get(PCS_CITATION) or k.get(GT_CITATION) or "user-defined projection"
    conv = _conversion(k, unit[1])
    if conv is None or unit[0] not in _AXES:
        log.warning("GeoTIFF keys: user-defined projection '%s' (method %s) not rebuilt; only its unit (%s) is used",
                    name, k.get(PROJ_COORD_TRANS), unit[0])
        return _local_crs(name, unit)
    axis = getattr(Cartesian2DCSAxis, _AXES[unit[0]])
    if name == "user-defined projection":
        name = f"user-defined {conv.method_name} ({unit[0]})"
    return ProjectedCRS(conversion=conv, geodetic_crs=_geodetic(k), cartesian_cs=Cartesian2DCS(axis=axis), name=name)


def _keyed_unit(crs: Any, k: dict[int, Any]) -> Any:
    """``crs`` (an EPSG projected CRS) in the unit of ProjLinearUnitsGeoKey when that key names another unit.

    Writers key e.g. ProjectedCSTypeGeoKey 26995 (NAD83 / Mississippi West, metres) with ProjLinearUnitsGeoKey
    9003 and coordinates in US survey feet (PDAL's mvk-thin.las); GDAL/libgeotiff let the units key win, and
    so do we: the same projection, its axes in the keyed unit (pyproj keeps the conversion's parameters in
    their own units)."""
    from pyproj.crs import ProjectedCRS
    from pyproj.crs.coordinate_system import Cartesian2DCS
    from pyproj.crs.enums import Cartesian2DCSAxis

    unit = _linear_unit(k.get(PROJ_LINEAR_UNITS), k.get(PROJ_LINEAR_UNIT_SIZE))
    axes = list(crs.axis_info)
    if unit is None or not axes or abs(float(axes[0].unit_conversion_factor or 1.0) - unit[1]) < 1e-9 * unit[1]:
        return crs
    log.warning("GeoTIFF keys: ProjectedCSTypeGeoKey %s ('%s') is in %s but ProjLinearUnitsGeoKey says %s; "
                "the keyed unit is used (as GDAL does)", k[PROJECTED_TYPE], crs.name, axes[0].unit_name, unit[0])
    if unit[0] not in _AXES:
        return _local_crs(f"{crs.name} ({unit[0]})", unit)
    name = k.get(PCS_CITATION) or f"{crs.name} ({unit[0]})"
    return ProjectedCRS(conversion=crs.coordinate_operation, geodetic_crs=crs.geodetic_crs, name=name,
                        cartesian_cs=Cartesian2DCS(axis=getattr(Cartesian2DCSAxis, _AXES[unit[0]])))


def _vertical(k: dict[int, Any]) -> Any | None:
    from pyproj import CRS
    from pyproj.crs import Datum, VerticalCRS
    from pyproj.crs.coordinate_system import VerticalCS
    from pyproj.crs.enums import VerticalCSAxis

    if _epsg(k.get(VERTICAL_TYPE)):
        try:
            return CRS.from_epsg(k[VERTICAL_TYPE])
        except Exception:  # noqa: BLE001 - pyproj CRSError: a code that is not a vertical CRS
            log.debug("GeoTIFF keys: VerticalCSTypeGeoKey %s is not an EPSG CRS (a datum code?)", k[VERTICAL_TYPE])
    unit = _linear_unit(k.get(VERTICAL_UNITS))
    if unit is None:
        return None
    datum: Any = None
    for code in (k.get(VERTICAL_DATUM), k.get(VERTICAL_TYPE)):  # some writers swap the two (5103 / 5703)
        if datum is None and _epsg(code):
            try:
                datum = Datum.from_epsg(code)
            except Exception:  # noqa: BLE001 - not a datum code: the unit still counts
                pass
    citation = k.get(VERTICAL_CITATION)
    name = (citation if citation and citation != "unknown"
            else f"{datum.name if datum is not None else 'user-defined'} height ({unit[0]})")
    if unit[0] not in _VAXES:
        return _local_crs(name, unit, vertical=True)
    if datum is None:
        datum = {"type": "VerticalReferenceFrame", "name": "unknown"}
    return VerticalCRS(name=name, datum=datum, vertical_cs=VerticalCS(axis=getattr(VerticalCSAxis, _VAXES[unit[0]])))


def vertical_from_geokeys(keys: dict[int, Any]) -> Any | None:
    """The vertical CRS the GeoTIFF keys describe (EPSG VerticalCSTypeGeoKey, else VerticalUnitsGeoKey with the
    datum where keyed), or None; a key pyproj refuses is logged, never raised."""
    try:
        return _vertical(keys)
    except Exception as e:  # noqa: BLE001 - pyproj CRSError: the horizontal part is still worth having
        log.warning("GeoTIFF keys: vertical CRS not understood (%s)", str(e).splitlines()[0] if str(e) else e)
        return None


def crs_from_geokeys(keys: dict[int, Any]) -> Any | None:
    """The pyproj CRS the GeoTIFF keys describe (compound when a vertical CRS or unit is keyed), or None.

    Model type 1 (or a keyed projected CRS / projection): projected; 2: geographic; no model: whatever is
    keyed. Raises nothing: a key pyproj refuses is logged and the rest is used.
    """
    from pyproj.crs import CompoundCRS

    model = keys.get(GT_MODEL_TYPE)
    horizontal = None
    try:
        if model == 1 or PROJECTED_TYPE in keys or PROJ_COORD_TRANS in keys or PROJECTION in keys:
            horizontal = _projected(keys)
        elif model == 2 or GEOGRAPHIC_TYPE in keys or GEOG_DATUM in keys:
            horizontal = _geodetic(keys)
    except Exception as e:  # noqa: BLE001 - pyproj CRSError for codes/parameters it cannot use
        log.warning("GeoTIFF keys: horizontal CRS not understood (%s)", str(e).splitlines()[0] if str(e) else e)
        unit = _linear_unit(keys.get(PROJ_LINEAR_UNITS))
        horizontal = _local_crs("user-defined", unit) if unit else None
    vertical = vertical_from_geokeys(keys)
    if horizontal is None:
        return vertical
    if vertical is None:
        return horizontal
    try:
        return CompoundCRS(name=f"{horizontal.name} + {vertical.name}", components=[horizontal, vertical])
    except Exception:  # noqa: BLE001 - e.g. a 3D horizontal part: keep it, the vertical unit is in it
        return horizontal
