"""Scene readers and writers, dispatched by file extension.

``load_scene(path)`` returns a PointCloud or GaussianSplats; ``save_scene(scene, path)`` writes one.
Every reader raises SceneFormatError (one line naming the file and the problem) for bad input, and drops
NaN/Inf points with a warning that gives their count.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from scene_kd.errors import SceneFormatError
from scene_kd.scene.types import GaussianSplats, PointCloud

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


def _ext(path: Path) -> str:
    return path.suffix.lower().lstrip(".")


def load_scene(path: str | Path) -> Scene:
    path = Path(path)
    if not path.exists():
        raise SceneFormatError("no such file", path=path)
    if path.is_dir():
        raise SceneFormatError("is a directory, not a scene file", path=path)
    ext = _ext(path)
    if ext not in _READERS:
        raise SceneFormatError(f"unknown file type '.{ext}'; supported: {', '.join('.' + e for e in sorted(_READERS))}", path=path)
    if path.stat().st_size == 0:
        raise SceneFormatError("file is empty", path=path)
    scene = _READERS[ext](path)
    scene.meta.setdefault("source", str(path))
    scene.meta.setdefault("format", ext)
    if len(scene) == 0:
        raise SceneFormatError("scene has no points", path=path)
    return scene


def save_scene(scene: Scene, path: str | Path) -> None:
    path = Path(path)
    ext = _ext(path)
    if ext not in _WRITERS:
        raise SceneFormatError(f"cannot write '.{ext}'; supported: {', '.join('.' + e for e in sorted(_WRITERS))}", path=path)
    _WRITERS[ext](scene, path)


def drop_non_finite(xyz_world: np.ndarray, path: Path) -> np.ndarray:
    """Boolean keep-mask [N] of rows with finite coordinates; warns with the count dropped."""
    keep = np.isfinite(xyz_world).all(axis=1)
    bad = int((~keep).sum())
    if bad:
        log.warning("%s: dropped %d point(s) with NaN/Inf coordinates", path, bad)
    return keep


def describe_scene(scene: Scene) -> dict:
    """The `scene-kd info --json` object."""
    world = scene.world_xyz()
    out = {
        "kind": scene.kind,
        "count": len(scene),
        "bounds": [world.min(axis=0).tolist(), world.max(axis=0).tolist()] if len(scene) else None,
        "attributes": scene.attributes,
    }
    if scene.labels is not None:
        ids, counts = np.unique(scene.labels, return_counts=True)
        out["classes"] = {str(int(i)): int(c) for i, c in zip(ids, counts)}
        if scene.label_names:
            out["class_names"] = {str(int(i)): scene.label_names.get(int(i), str(int(i))) for i in ids}
    return out


# Import format modules so their @reader/@writer decorators register them.
from scene_kd.scene import formats as _formats  # noqa: E402,F401
