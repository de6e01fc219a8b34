"""NPY and TXT/XYZ point tables: [N, 3+] columns xyz[, rgb][, label].

Columns: 3 -> xyz; 4 -> xyz + label; 6 -> xyz + rgb; 7 -> xyz + rgb + label. rgb in 0-255, or 0-1 when no
value exceeds 1. Text files are whitespace- or comma-separated; '#' lines and one non-numeric header line are
skipped. Writers emit float64 world coordinates (text: '%.17g', so values round-trip exactly).
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
    if not isinstance(table, np.ndarray) or table.dtype.names is not None:
        raise SceneFormatError("expected a plain numeric [N, 3+] array, not a structured one", path=path)
    return table_to_cloud(table, path)


@writer("npy")
def write_npy(scene: PointCloud | GaussianSplats, path: Path) -> None:
    with open(path, "wb") as fh:
        np.save(fh, cloud_to_table(scene))


def _parse_text(path: Path) -> np.ndarray:
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
    if lines:
        try:
            [float(v) for v in lines[0].split()]
        except ValueError:
            lines = lines[1:]  # a header row of column names
    if not lines:
        raise SceneFormatError("no numeric rows", path=path)
    try:
        table = np.loadtxt(io.StringIO("\n".join(lines)), dtype=np.float64, ndmin=2)
    except ValueError as e:
        msg = str(e).splitlines()[0]
        raise SceneFormatError(f"malformed or truncated text table ({msg})", path=path) from None
    return table


@reader("txt", "xyz", "csv")
def read_txt(path: Path) -> PointCloud:
    return table_to_cloud(_parse_text(path), path)


@writer("txt", "xyz", "csv")
def write_txt(scene: PointCloud | GaussianSplats, path: Path) -> None:
    table = cloud_to_table(scene)
    fmt = ["%.17g"] * 3 + ["%d"] * (table.shape[1] - 3)
    sep = "," if path.suffix.lower() == ".csv" else " "
    np.savetxt(path, table, fmt=fmt, delimiter=sep)
