"""Scene readers and writers, dispatched by file extension.

``load_scene(path)`` returns a PointCloud or GaussianSplats; ``save_scene(scene, path)`` writes one.
Every reader raises SceneFormatError (one line naming the file and the problem) for bad input, and drops
NaN/Inf points with a warning that gives their count. Readers record ``meta["bounds_world"]`` (exact
float64 bounds in the file's own coordinates, computed before the float32 local conversion) together with
``meta["bounds_count"]`` so ``describe_scene`` can report them while the scene is unchanged.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from scene_kd.errors import SceneFormatError, SceneKDError
from scene_kd.runio import atomic_path
from scene_kd.scene.types import GaussianSplats, PointCloud
from scene_kd.scene.units import to_file_units

log = logging.getLogger(__name__)

Scene = PointCloud | GaussianSplats
_READERS: dict[str, Callable[[Path], Scene]] = {}
_WRITERS: dict[str, Callable[[Scene, Path], None]] = {}


def reader(*exts: str):
    def deco(fn):
        for e in exts:
            _READERS[e] = fn
        return fn

    return deco


def writer(*exts: str):
    def deco(fn):
        for e in exts:
            _WRITERS[e] = fn
        return fn

    return deco


def readable_extensions() -> list[str]:
    return sorted(_READERS)


def writable_extensions() -> list[str]:
    return sorted(_WRITERS)


def _ext(path: Path) -> str:
    return path.suffix.lower().lstrip(".")


def load_scene(path: str | Path, units: str | None = "auto") -> Scene:
    """Read a scene file (type from its extension) into a PointCloud or GaussianSplats, in metres.

    ``units``: the file's units (scene_kd.scene.units.InputConfig.units: auto = its CRS, metres without one |
    metre | foot | us-foot); coordinates in feet are converted to metres and ``meta["file_units"]`` records the
    factor. None leaves the coordinates as read (a capture's scene, whose cameras share its frame).
    Raises SceneFormatError for a missing/empty/truncated/corrupt file, a directory or an unknown extension.
    """
    path = Path(path)
    if not path.exists():
        raise SceneFormatError("no such file", path=path)
    if path.is_dir():
        raise SceneFormatError("is a directory, not a scene file", path=path)
    ext = _ext(path)
    if ext not in _READERS:
        raise SceneFormatError(
            f"unknown file type '.{ext}'; supported: {', '.join('.' + e for e in sorted(_READERS))}",
            path=path,
        )
    try:
        size = path.stat().st_size
    except OSError as e:
        raise SceneFormatError(f"cannot read file ({e.strerror})", path=path) from None
    if size == 0:
        raise SceneFormatError("file is empty", path=path)
    try:
        scene = _READERS[ext](path)
    except SceneKDError:
        raise
    except (KeyboardInterrupt, SystemExit):
        raise
    except MemoryError:
        raise SceneFormatError(
            "corrupt file (its header asks for more memory than this machine has)", path=path
        ) from None
    except BaseException as e:  # noqa: BLE001 - native readers (lazrs, plyfile, open3d) raise anything, even panics
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise SceneFormatError(
            f"unreadable or corrupt .{ext} file ({type(e).__name__}{': ' + msg if msg else ''})", path=path
        ) from e
    scene.meta.setdefault("source", str(path))
    scene.meta.setdefault("format", ext)
    if len(scene) == 0:
        raise SceneFormatError("scene has no points", path=path)
    if units is not None:
        from scene_kd.scene.units import apply_units

        apply_units(scene, units, path)
    return scene


def save_scene(scene: Scene, path: str | Path) -> None:
    """Write a scene; the format comes from the extension. The file appears atomically (temp file + rename).
    A scene read from a file in feet is written back in feet (``meta["file_units"]``)."""

    path = Path(path)
    ext = _ext(path)
    if ext not in _WRITERS:
        raise SceneFormatError(
            f"cannot write '.{ext}'; supported: {', '.join('.' + e for e in sorted(_WRITERS))}", path=path
        )
    if path.is_dir():
        raise SceneFormatError("is a directory; give a file name to write", path=path)

    with atomic_path(path) as tmp:
        _WRITERS[ext](to_file_units(scene), tmp)  # new coordinates go back in the input file's units


# ---------------------------------------------------------------- helpers shared by the format modules


def world_to_local(
    world: np.ndarray, path: Path | str, origin: np.ndarray | None = None, drop: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, dict[str, Any]]:
    """Split float64 world coordinates [N, 3] into (local float32 [M, 3], origin float64 [3], keep, meta).

    Drops non-finite rows (warning with their count); ``keep`` is the boolean row mask, or None when every
    row was kept. ``meta`` holds the exact float64 ``bounds_world`` and ``bounds_count``. Float32 input whose
    coordinates are all within +-1e4 keeps origin 0, so its values round-trip bit-exactly. ``drop`` [N] bool:
    further rows to drop (the caller has warned about them). Float32 input whose step at its magnitude is
    coarser than 1 cm gets a warning (scene_kd.scene.crs.warn_float32_step).
    """
    world = np.asarray(world)
    keep = drop_non_finite(world, Path(path))
    if drop is not None:
        keep &= ~np.asarray(drop, dtype=bool)
    all_kept = bool(keep.all())
    finite = world if all_kept else world[keep]
    if len(finite) == 0:
        raise SceneFormatError(
            "no points with finite coordinates" if len(world) else "scene has no points", path=path
        )
    lo = finite.min(axis=0).astype(np.float64)
    hi = finite.max(axis=0).astype(np.float64)
    if world.dtype == np.float32:
        from scene_kd.scene.crs import warn_float32_step

        warn_float32_step(lo, hi, path)
    if origin is None:
        small_float32 = world.dtype == np.float32 and max(np.abs(lo).max(), np.abs(hi).max()) <= 1e4
        origin = np.zeros(3) if small_float32 else np.floor(lo)
    origin = np.asarray(origin, dtype=np.float64)
    check_extent(lo, hi, origin, path)
    local = np.empty((len(finite), 3), dtype=np.float32)
    for axis in range(3):  # one axis at a time keeps the float64 temporaries small
        np.subtract(finite[:, axis], origin[axis], out=local[:, axis], casting="unsafe", dtype=np.float64)
    meta = {"bounds_world": [lo.tolist(), hi.tolist()], "bounds_count": len(finite)}
    return local, origin, None if all_kept else keep, meta


MAX_LOCAL_EXTENT = 1e9  # beyond this span float32 local coordinates are meaningless (and overflow near 3e38)


def check_extent(lo: np.ndarray, hi: np.ndarray, origin: np.ndarray, path: Path | str) -> None:
    """Refuse scenes whose coordinates cannot be held as float32 offsets from ``origin``."""
    with np.errstate(over="ignore", invalid="ignore"):
        span = np.maximum(np.abs(np.asarray(hi) - origin), np.abs(np.asarray(lo) - origin))
    if not np.isfinite(span).all() or span.max() > MAX_LOCAL_EXTENT:
        raise SceneFormatError(
            f"coordinates span {np.asarray(lo).tolist()} .. {np.asarray(hi).tolist()}: too large for one scene "
            "(corrupt values?)",
            path=path,
        )


def drop_non_finite(xyz_world: np.ndarray, path: Path) -> np.ndarray:
    """Boolean keep-mask [N] of rows with finite coordinates; warns with the count dropped."""
    keep = np.isfinite(xyz_world).all(axis=1)
    bad = int(len(keep) - np.count_nonzero(keep))
    if bad:
        log.warning("%s: dropped %d point(s) with NaN/Inf coordinates", path, bad)
    return keep


def label_names_to_json(label_names: dict[int, str]) -> str:
    """Compact one-line JSON of an id -> name map (keys as strings)."""
    return json.dumps({str(int(k)): str(v) for k, v in sorted(label_names.items())}, separators=(",", ":"))


def label_names_from_json(text: str) -> dict[int, str]:
    """Inverse of ``label_names_to_json``; returns {} for text that is not such a map."""
    try:
        obj = json.loads(text)
        return {int(k): str(v) for k, v in obj.items()}
    except (ValueError, TypeError, AttributeError):
        return {}


def rgb_to_uint8(rgb: np.ndarray) -> np.ndarray:
    """[N, 3] colours as uint8: floats in [0, 1] are scaled by 255, 16-bit values shifted down."""
    rgb = np.asarray(rgb)
    if rgb.dtype == np.uint8:
        return rgb
    if np.issubdtype(rgb.dtype, np.floating):
        finite = np.nan_to_num(rgb, nan=0.0, posinf=255.0, neginf=0.0)
        scale = 255.0 if finite.size and finite.max() <= 1.0 else 1.0
        return np.clip(np.rint(finite * scale), 0, 255).astype(np.uint8)
    if rgb.size and rgb.max() > 255:
        return (rgb.astype(np.uint32) >> 8).astype(np.uint8)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def stack_numbered_columns(cols: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Group scalar columns name_0..name_{k-1} (contiguous, same dtype) back into [N, k] arrays."""
    import re

    groups: dict[str, dict[int, str]] = {}
    for k in cols:
        m = re.fullmatch(r"(.+)_(\d+)", k)
        if m:
            groups.setdefault(m.group(1), {})[int(m.group(2))] = k
    out = dict(cols)
    for base, idx in groups.items():
        if base in cols or len(idx) < 2 or sorted(idx) != list(range(len(idx))):
            continue
        parts = [cols[idx[i]] for i in range(len(idx))]
        if len({p.dtype for p in parts}) != 1 or any(p.ndim != 1 for p in parts):
            continue
        for i in range(len(idx)):
            del out[idx[i]]
        out[base] = np.stack(parts, axis=1)
    return out


def describe_scene(scene: Scene) -> dict:
    """The `scene-kd info --json` object; bounds are in the pipeline's coordinates: the file's own, in metres
    (a file in feet is converted on load, a geographic one reprojected; ``bounds_note`` says so). ``units``:
    the scene's ``file_units`` record; ``crs``: :func:`scene_kd.scene.crs.describe_crs` of the file's CRS."""
    bounds = scene.meta.get("bounds_world")
    if bounds is None or scene.meta.get("bounds_count") != len(scene):
        world = scene.world_xyz()
        bounds = [world.min(axis=0).tolist(), world.max(axis=0).tolist()] if len(scene) else None
    out = {
        "kind": scene.kind,
        "count": len(scene),
        "bounds": bounds,
        "attributes": scene.attributes,
    }
    if scene.meta.get("crs") or scene.meta.get("reprojected_to"):
        from pyproj import CRS

        from scene_kd.scene.crs import describe_crs

        for key, out_key in (("crs", "crs"), ("reprojected_to", "reprojected_to")):
            if scene.meta.get(key):
                out[out_key] = describe_crs(CRS.from_wkt(scene.meta[key]))
        if "reprojected_to" in out:
            out["bounds_note"] = "bounds in the reprojected CRS (metres); outputs keep the file's coordinates"
    units = scene.meta.get("file_units")
    if units:
        out["units"] = units
        if any(f != 1.0 for f in units["to_metre"]) and "bounds_note" not in out:
            out["bounds_note"] = (f"bounds in metres (the file's x/y are in {units['horizontal']}, z in "
                                  f"{units['vertical']}); outputs keep the file's units")
    if scene.labels is not None:
        ids, counts = np.unique(scene.labels, return_counts=True)
        out["classes"] = {str(int(i)): int(c) for i, c in zip(ids, counts, strict=True)}
        if scene.label_names:
            out["class_names"] = {str(int(i)): scene.label_names.get(int(i), str(int(i))) for i in ids}
    return out


# Import format modules so their @reader/@writer decorators register them.
from scene_kd.scene import formats as _formats  # noqa: E402,F401
