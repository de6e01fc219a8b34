"""Annotate, never rebuild: write a LAS/LAZ file's own point records with new classification + extra dims.

The rule of PDAL's ``writers.las`` with ``forward=all, extra_dims=all``: every byte of every input record is
copied (X/Y/Z integers, gps_time, returns, scan angle, point source id, user data, 16-bit colour, NIR,
waveform packet fields, extra bytes incl. arrays and undocumented bytes); the header (scale, offset,
GUID, system id, software, dates, global encoding), VLRs and EVLRs are kept; only ``classification`` is
replaced and scene-kd's own dimensions (``confidence``, ``relevancy``, ...) are appended as extra bytes.

Streamed with laspy: ``laspy.open(src).chunk_iterator(k)`` -> raw record bytes -> a laspy writer, so one
chunk of records is held at a time (a 50M-point tile is never held twice). Changes that cannot be avoided:

- LAS 1.0/1.1 -> written as 1.2 with the same point format (laspy cannot write 1.0/1.1; logged);
- COPC -> plain LAZ (the COPC info VLR and hierarchy EVLR describe a point order and octree this writer
  does not keep; CRS and every other VLR kept). No maintained Python library writes COPC from laspy
  records here (laspy reads COPC only; PDAL's ``writers.copc`` needs the PDAL C++ install).
- a selection (``keep``) changes the point count, bounds and per-return counts, which laspy recomputes.

Errors: SceneKDError when the source is gone, changed (hash) or its record count differs from the
per-point arrays.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from scene_kd.errors import SceneKDError
from scene_kd.runio import file_hash

log = logging.getLogger(__name__)

CHUNK_POINTS = 1 << 20
COPC_USER_ID = "copc"


def _eb_type(values: np.ndarray) -> str:
    code = np.dtype(values.dtype if values.dtype != np.bool_ else np.uint8).newbyteorder("<").str[1:]
    return code if values.ndim == 1 else f"{values.shape[1]}{code}"


def output_header(src_header: Any, new_dims: Mapping[str, np.ndarray], path: Path | str = "",
                  label_names: Mapping[int, str] | None = None) -> Any:
    """The output header: a copy of ``src_header`` (1.0/1.1 -> 1.2, COPC VLR/EVLR dropped) with the
    extra-bytes dims of ``new_dims`` ({name: [N] or [N, k] array}) that the format does not have yet, and
    scene-kd's label-names VLR replaced by ``label_names`` when given (user class codes)."""
    import laspy
    from laspy.vlrs.vlrlist import VLRList

    header = copy.deepcopy(src_header)
    if header.version.minor < 2:
        log.info("%s: LAS %s input written as LAS 1.2 (same point format %d); laspy cannot write 1.%d",
                 path, header.version, header.point_format.id, header.version.minor)
        header.set_version_and_point_format(laspy.header.Version(1, 2), header.point_format)
    copc = [v for v in header.vlrs if getattr(v, "user_id", "") == COPC_USER_ID]
    if copc:
        log.info("%s: COPC input written as plain LAZ (COPC info VLR and hierarchy EVLR dropped)", path)
        for v in copc:
            header.vlrs.remove(v)
    if header.evlrs is not None:
        header.evlrs = VLRList([v for v in header.evlrs if getattr(v, "user_id", "") != COPC_USER_ID])
    if label_names:
        from scene_kd.scene.formats.las import LABEL_VLR_RECORD_ID, LABEL_VLR_USER_ID
        from scene_kd.scene.io import label_names_to_json

        for v in [v for v in header.vlrs if getattr(v, "user_id", "") == LABEL_VLR_USER_ID
                  and getattr(v, "record_id", -1) == LABEL_VLR_RECORD_ID]:
            header.vlrs.remove(v)
        header.vlrs.append(laspy.VLR(user_id=LABEL_VLR_USER_ID, record_id=LABEL_VLR_RECORD_ID,
                                     description="label_names",
                                     record_data=label_names_to_json(dict(label_names)).encode("utf-8")))
    have = set(header.point_format.dimension_names)
    add = [laspy.ExtraBytesParams(name=name, type=_eb_type(np.asarray(v))) for name, v in new_dims.items()
           if name not in have]
    if add:
        header.add_extra_dims(add)
    return header


WAVEPACKET_FORMATS = (4, 5, 9, 10)


def laz_backend(point_format: int):
    """laspy's LAZ backend for writing ``point_format``: LASzip (the ``laszip`` package) for formats with
    wave packets, whose fields lazrs 0.8 does not write losslessly (PF 9/10: wavepacket_size and the
    x_t/y_t/z_t floats change; PF 4/5: refused), else laspy's default (lazrs). Raises SceneKDError when
    a wave packet format is asked for and LASzip is not installed."""
    import laspy

    if point_format not in WAVEPACKET_FORMATS:
        return None
    if not laspy.LazBackend.Laszip.is_available():
        raise SceneKDError(f"LAZ point format {point_format} (wave packets) needs the 'laszip' package to be "
                           "written losslessly (pip install laszip), or write .las")
    return laspy.LazBackend.Laszip


def check_source(source: str | Path, expect_hash: str | None) -> Path:
    """The source file, refusing one that is gone or whose hash differs from the run's record."""

    source = Path(source)
    if not source.is_file():
        raise SceneKDError("the run's input file is gone; LAS/LAZ output copies its records, restore it",
                           path=source)
    if expect_hash and file_hash(source) != expect_hash:
        raise SceneKDError("the run's input file changed since the run (hash differs); rerun on it",
                           path=source)
    return source


def annotate_las(
    source: str | Path,
    out: str | Path,
    *,
    classification: np.ndarray | None = None,
    dims: Mapping[str, np.ndarray] | None = None,
    keep: np.ndarray | None = None,
    records: np.ndarray | None = None,
    expect_hash: str | None = None,
    label_names: Mapping[int, str] | None = None,
    provenance: Mapping[str, Any] | None = None,
    chunk_points: int = CHUNK_POINTS,
) -> dict[str, Any]:
    """Copy ``source``'s records to ``out`` (.las | .laz by extension), replacing classification and
    appending ``dims``.

    Per-point arrays are indexed by pipeline point i: ``classification`` [N] int (codes for the point
    format: 0..31 for formats 0-5, 0..255 for 6-10; None keeps the input's), ``dims`` {name: [N] or
    [N, k]} (existing dims of that name are overwritten, cast to their type), ``keep`` [N] bool (which
    points to write). ``records`` [N] int64: the file record of pipeline point i (ascending; None =
    identity, N must equal the file's point count). ``label_names`` {code: name}: written to scene-kd's
    label-names VLR (give it for user codes only; ASPRS codes need none). ``provenance``: the run's teacher (and
    the oracle's note) as scene-kd's provenance VLR. Returns {"count", "version", "point_format",
    "header_from"}. Raises SceneKDError (source gone/changed, sizes disagree, codes out of range).
    """
    import laspy

    source = check_source(source, expect_hash)
    out = Path(out)
    dims = {k: np.asarray(v) for k, v in (dims or {}).items()}
    with laspy.open(str(source)) as reader:
        src_header = reader.header
        total = int(src_header.point_count)
        n = total if records is None else len(records)
        for name, arr in [("classification", classification), ("keep", keep), *dims.items()]:
            if arr is not None and len(arr) != n:
                raise SceneKDError(f"{name} has {len(arr)} values for the run's {n:,} points", path=source)
        if records is not None and len(records) and (records[-1] >= total or np.any(np.diff(records) <= 0)):
            raise SceneKDError("the run's point -> record map does not fit this file", path=source)
        fmt = src_header.point_format.id
        if classification is not None and len(classification):
            hi = 31 if fmt < 6 else 255
            c = np.asarray(classification)
            if c.min() < 0 or c.max() > hi:
                raise SceneKDError(f"classification codes {int(c.min())}..{int(c.max())} do not fit point format "
                                   f"{fmt} (0..{hi})")
        header = output_header(src_header, dims, path=source, label_names=label_names)
        from scene_kd.scene.formats.las import set_provenance

        set_provenance(header.vlrs, provenance)
        # record -> pipeline point (or -1 when the pipeline dropped it) and which records are written
        if records is None:
            point_of = None
            write_rec = keep
        else:
            point_of = np.full(total, -1, dtype=np.int64)
            point_of[records] = np.arange(n)
            write_rec = np.zeros(total, dtype=bool)
            write_rec[records[keep] if keep is not None else records] = True
        src_size = src_header.point_format.size
        written = 0
        compress = out.suffix.lower() == ".laz"
        with laspy.open(str(out), mode="w", header=header, do_compress=compress,
                        laz_backend=laz_backend(fmt) if compress else None) as w:
            start = 0
            for chunk in reader.chunk_iterator(chunk_points):
                m = len(chunk)
                sel = slice(None) if write_rec is None else write_rec[start:start + m]
                raw = np.ascontiguousarray(chunk.array).view(np.uint8).reshape(m, src_size)[sel]
                k = len(raw)
                if k:
                    rec = laspy.ScaleAwarePointRecord.zeros(k, header=w.header)
                    dst = rec.array.view(np.uint8).reshape(k, -1)
                    dst[:, :src_size] = raw
                    pts = (np.arange(start, start + m)[sel] if point_of is None
                           else point_of[start:start + m][sel])
                    if classification is not None:
                        rec.classification = np.asarray(classification)[pts].astype(np.uint8)
                    for name, arr in dims.items():
                        rec[name] = arr[pts]
                    w.write_points(rec)
                    written += k
                start += m
            if write_rec is None or written == total:  # every record: the input's bounds/counts stay as they were
                w.header.mins, w.header.maxs = src_header.mins, src_header.maxs
                w.header.number_of_points_by_return = src_header.number_of_points_by_return
            if header.evlrs and header.version.minor >= 4:
                w.write_evlrs(header.evlrs)
    _copy_identity(source, out)
    return {"count": written, "version": str(header.version), "point_format": fmt,
            "header_from": str(source)}


def _copy_identity(source: Path, out: Path) -> None:
    """Put the input's system identifier, generating software and creation day/year (header bytes 26..93,
    the same place in every LAS version) back: laspy writes today's date where the input's are 0 (it
    reads them as None), and the LASzip backend writes its own name as the generating software."""
    with open(source, "rb") as fh:
        fh.seek(26)
        raw = fh.read(68)
    with open(out, "r+b") as fh:
        fh.seek(26)
        fh.write(raw)


def annotate_ply(
    source: str | Path,
    out: str | Path,
    *,
    props: Mapping[str, np.ndarray],
    keep: np.ndarray | None = None,
    records: np.ndarray | None = None,
    expect_hash: str | None = None,
    comments: list[str] | None = None,
) -> dict[str, Any]:
    """A PLY of the source's own rows (every property, incl. all 3DGS properties) with ``props`` appended.

    ``source``: a PLY (point or 3DGS vertex rows copied; other elements dropped) or a LAS/LAZ file (x/y/z
    as float64, every other dimension as a property; arrays as name_0..). Per-point arrays are indexed by
    pipeline point i as in :func:`annotate_las` (``records`` maps them to file rows). Held in memory (PLY
    exports are selections). Raises SceneKDError for a gone/changed source or mismatched sizes.
    """
    from plyfile import PlyData, PlyElement

    source = check_source(source, expect_hash)
    if source.suffix.lower() in (".las", ".laz"):
        rows = _las_rows(source)
    else:
        with open(source, "rb") as fh:
            ply = PlyData.read(fh)
        if "vertex" not in ply or "chunk" in ply:
            raise SceneKDError("PLY source without plain vertex rows (compressed 3DGS?) cannot be copied",
                               path=source)
        rows = ply["vertex"].data
    n = len(rows) if records is None else len(records)
    idx = np.arange(n) if records is None else np.asarray(records)
    if records is not None and len(idx) and idx.max() >= len(rows):
        raise SceneKDError("the run's point -> record map does not fit this file", path=source)
    for name, arr in [("keep", keep), *props.items()]:
        if arr is not None and len(arr) != n:
            raise SceneKDError(f"{name} has {len(arr)} values for the run's {n:,} points", path=source)
    sel = np.arange(n) if keep is None else np.flatnonzero(keep)
    base = rows[idx[sel]]
    names = [nm for nm in base.dtype.names if nm not in props]
    dtype = [(nm, base.dtype[nm].str) for nm in names] + [(k, np.asarray(v).dtype.str) for k, v in props.items()]
    arr = np.empty(len(sel), dtype=dtype)
    for nm in names:
        arr[nm] = base[nm]
    for k, v in props.items():
        arr[k] = np.asarray(v)[sel]
    arr = arr.astype([(k, _ply_safe(arr[k][:0]).dtype.str) for k in arr.dtype.names])
    PlyData([PlyElement.describe(arr, "vertex")], text=False, comments=comments or []).write(str(out))
    return {"count": len(sel), "header_from": str(source)}


def _las_rows(source: Path) -> np.ndarray:
    """Every record of a LAS/LAZ file as one structured array: x/y/z float64, other dims (arrays split)."""
    import laspy

    las = laspy.read(str(source))
    cols: list[tuple[str, np.ndarray]] = [(c, np.asarray(las[c], dtype=np.float64)) for c in "xyz"]
    for d in las.point_format.dimension_names:
        if d in ("X", "Y", "Z"):
            continue
        v = _ply_safe(np.asarray(las[d]))
        if v.ndim == 2:
            cols += [(f"{d}_{j}", v[:, j]) for j in range(v.shape[1])]
        else:
            cols.append((d, v))
    arr = np.empty(len(las.points), dtype=[(k, v.dtype.str) for k, v in cols])
    for k, v in cols:
        arr[k] = v
    return arr


def _ply_safe(v: np.ndarray) -> np.ndarray:
    """PLY has no bool or 64-bit integers: bool -> u1, int64/uint64 -> float64."""
    if v.dtype == np.bool_:
        return v.astype(np.uint8)
    if np.issubdtype(v.dtype, np.integer) and v.dtype.itemsize > 4:
        return v.astype(np.float64)
    return v
