"""NPY and TXT/XYZ point tables: [N, 3+] columns xyz[, rgb][, label].

Columns: 3 -> xyz; 4 -> xyz + label; 6 -> xyz + rgb; 7 -> xyz + rgb + label. rgb in 0-255, or 0-1 when no
value exceeds 1. Text files are whitespace- or comma-separated; '#' lines are skipped. Writers emit float64
world coordinates (text: '%.17g', so values round-trip exactly).

Named columns: a text header row naming x/y/z (PDAL ``X,Y,Z,Intensity``, CloudCompare ``//X Y Z R G B``) and
structured .npy arrays are read by name, case-insensitively (:func:`named_columns_to_cloud`); unknown names
become ``extra`` attributes. A header row without x/y/z is skipped and the table read by position.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from scene_kd.errors import SceneFormatError
from scene_kd.scene.formats.las import splats_as_points
from scene_kd.scene.io import reader, rgb_to_uint8, world_to_local, writer
from scene_kd.scene.types import GaussianSplats, PointCloud

_LAYOUTS = {3: (False, False), 4: (False, True), 6: (True, False), 7: (True, True)}


def table_to_cloud(table: np.ndarray, path: Path) -> PointCloud:
    """[N, 3|4|6|7] numeric table -> PointCloud (drops NaN/Inf xyz rows with a warning)."""
    if table.ndim != 2 or table.shape[1] not in _LAYOUTS:
        raise SceneFormatError(
            f"expected an [N, 3|4|6|7] table (xyz[, rgb][, label]), got shape {list(table.shape)}", path=path
        )
    if not (np.issubdtype(table.dtype, np.floating) or np.issubdtype(table.dtype, np.integer)):
        raise SceneFormatError(f"expected a numeric array, got dtype {table.dtype}", path=path)
    if len(table) == 0:
        raise SceneFormatError("scene has no points", path=path)
    has_rgb, has_label = _LAYOUTS[table.shape[1]]
    local, origin, keep, meta = world_to_local(table[:, :3], path)
    if keep is not None:
        table = table[keep]
    rgb = labels = None
    if has_rgb:
        cols = table[:, 3:6].astype(np.float64)
        if not np.isfinite(cols).all() or cols.min() < 0 or cols.max() > 255:
            raise SceneFormatError("rgb columns must be finite and within 0-255 (or 0-1)", path=path)
        rgb = rgb_to_uint8(cols)
    if has_label:
        lab = table[:, -1]
        if not np.isfinite(lab).all() or (lab != np.round(lab)).any():
            raise SceneFormatError("label column must hold whole numbers", path=path)
        if np.abs(lab).max() > np.iinfo(np.int32).max:
            raise SceneFormatError("label column out of int32 range", path=path)
        labels = lab.astype(np.int32)
    return PointCloud(xyz=local, origin=origin, rgb=rgb, labels=labels, meta=meta)


_NAMES = {
    "x": ("x",), "y": ("y",), "z": ("z",),
    "r": ("red", "r", "diffuse_red"), "g": ("green", "g", "diffuse_green"), "b": ("blue", "b", "diffuse_blue"),
    "intensity": ("intensity", "scalar_intensity", "i"),
    "label": ("label", "labels", "classification", "class", "scalar_classification", "scalar_label", "semantic"),
    "nx": ("nx", "normal_x", "normalx"), "ny": ("ny", "normal_y", "normaly"), "nz": ("nz", "normal_z", "normalz"),
}


def _clean(name: str) -> str:
    return name.strip().strip("\"'").lstrip("/#").strip()


def named_columns_to_cloud(columns: dict[str, np.ndarray], path: Path) -> PointCloud:
    """{column name: [N] values} -> PointCloud, names matched case-insensitively: x y z (required), red/green/
    blue (or r g b), intensity, label/classification (whole numbers), nx ny nz; others -> ``extra``."""
    lower = {_clean(k).lower(): k for k in columns}
    found = {role: next((lower[a] for a in aliases if a in lower), None) for role, aliases in _NAMES.items()}
    if not all(found[c] for c in "xyz"):
        raise SceneFormatError(f"columns {list(columns)} do not name x, y and z", path=path)
    world = np.stack([np.asarray(columns[found[c]], dtype=np.float64) for c in "xyz"], axis=1)
    local, origin, keep, meta = world_to_local(world, path)
    if keep is not None:
        meta["source_rows"] = np.flatnonzero(keep)
    take = (lambda v: np.asarray(v)) if keep is None else (lambda v: np.asarray(v)[keep])
    rgb = labels = intensity = normals = None
    if all(found[c] for c in "rgb"):
        cols = np.stack([take(columns[found[c]]) for c in "rgb"], axis=1).astype(np.float64)
        if not np.isfinite(cols).all() or cols.min() < 0 or cols.max() > 65535:
            raise SceneFormatError("rgb columns must be finite and within 0-255 (or 0-1, or 16-bit)", path=path)
        rgb = rgb_to_uint8(cols) if cols.max() <= 255 else rgb_to_uint8(np.rint(cols).astype(np.uint16))
    if found["label"]:
        lab = take(columns[found["label"]]).astype(np.float64)
        if not np.isfinite(lab).all() or (lab != np.round(lab)).any() or np.abs(lab).max(initial=0) > 2**31 - 1:
            raise SceneFormatError(f"label column '{found['label']}' must hold whole numbers", path=path)
        labels = lab.astype(np.int32)
    if found["intensity"]:
        intensity = take(columns[found["intensity"]]).astype(np.float32)
    if all(found[c] for c in ("nx", "ny", "nz")):
        normals = np.stack([take(columns[found[c]]) for c in ("nx", "ny", "nz")], axis=1).astype(np.float32)
    used = {v for k, v in found.items() if v and (k not in ("r", "g", "b") or rgb is not None)
            and (k not in ("nx", "ny", "nz") or normals is not None)}
    extra = {_clean(k): take(v) for k, v in columns.items() if k not in used}
    return PointCloud(xyz=local, origin=origin, rgb=rgb, intensity=intensity, normals=normals, labels=labels,
                      extra=extra, meta=meta)


def cloud_to_table(scene: PointCloud | GaussianSplats) -> np.ndarray:
    pc = splats_as_points(scene) if isinstance(scene, GaussianSplats) else scene
    cols = [pc.world_xyz()]
    if pc.rgb is not None:
        cols.append(rgb_to_uint8(pc.rgb).astype(np.float64))
    if pc.labels is not None:
        cols.append(pc.labels.astype(np.float64)[:, None])
    return np.concatenate(cols, axis=1)


@reader("npy")
def read_npy(path: Path) -> PointCloud:
    try:
        table = np.load(path, allow_pickle=False)
    except ValueError as e:
        raise SceneFormatError(f"not a plain numeric .npy array ({e})", path=path) from None
    except (OSError, EOFError) as e:
        raise SceneFormatError(f"truncated or corrupt .npy file ({e})", path=path) from None
    if not isinstance(table, np.ndarray):
        raise SceneFormatError("expected a numeric [N, 3+] array", path=path)
    if table.dtype.names is not None:  # structured: read by field names
        flat = table.reshape(-1)
        return named_columns_to_cloud({k: flat[k] for k in table.dtype.names}, path)
    return table_to_cloud(table, path)


@writer("npy")
def write_npy(scene: PointCloud | GaussianSplats, path: Path) -> None:
    with open(path, "wb") as fh:
        np.save(fh, cloud_to_table(scene))


def _parse_text(path: Path) -> tuple[np.ndarray, list[str] | None]:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SceneFormatError("not a text file (invalid UTF-8)", path=path) from None
    lines = [
        ln
        for ln in text.replace(",", " ").replace(";", " ").splitlines()
        if ln.strip() and not ln.lstrip().startswith("#")
    ]
    header = None
    if lines:
        try:
            [float(v) for v in lines[0].split()]
        except ValueError:
            header = [_clean(v) for v in lines[0].split()]  # a header row of column names
            lines = lines[1:]
    if not lines:
        raise SceneFormatError("no numeric rows", path=path)
    try:
        table = np.loadtxt(io.StringIO("\n".join(lines)), dtype=np.float64, ndmin=2)
    except ValueError as e:
        msg = str(e).splitlines()[0]
        raise SceneFormatError(f"malformed or truncated text table ({msg})", path=path) from None
    return table, header


@reader("txt", "xyz", "csv")
def read_txt(path: Path) -> PointCloud:
    table, header = _parse_text(path)
    if header is not None and {"x", "y", "z"} <= {h.lower() for h in header}:
        if len(header) != table.shape[1]:
            raise SceneFormatError(f"header names {len(header)} columns, the rows have {table.shape[1]}", path=path)
        return named_columns_to_cloud({h: table[:, i] for i, h in enumerate(header)}, path)
    return table_to_cloud(table, path)


@writer("txt", "xyz", "csv")
def write_txt(scene: PointCloud | GaussianSplats, path: Path) -> None:
    table = cloud_to_table(scene)
    fmt = ["%.17g"] * 3 + ["%d"] * (table.shape[1] - 3)
    sep = "," if path.suffix.lower() == ".csv" else " "
    np.savetxt(path, table, fmt=fmt, delimiter=sep)
