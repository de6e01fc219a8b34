"""The run folder's own copy of the scene, so every later stage reads the exact points the renders saw.

``RUN/scene.safetensors``: the scene's arrays (points: xyz, rgb, intensity, normals, labels, instances;
Gaussians: means, quats, log_scales, opacity_logits, sh, labels, instances), local float32 coordinates.
``RUN/scene.json``: kind, count, origin (float64), label_names, source path, source_hash, format, crs
(the file's CRS as WKT, or null) and ``reprojected_to`` (the CRS of the run's coordinates when the reader
reprojected a geographic file, else null) and ``file_units`` (the file's units and metres per unit: the
run's coordinates are metres; scene_kd.scene.units).
``RUN/scene.safetensors`` also holds ``source_rows`` [N] int64 when the reader dropped records (NaN points,
all-zero Gaussians): point i of the run is record ``source_rows[i]`` of the file. Writers that copy the
input's records (scene_kd.scene.annotate, PLY/3DGS exports) map through it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from scene_kd.runio import file_hash, load_tensors, read_json, save_tensors, write_json
from scene_kd.scene.types import GaussianSplats, PointCloud

_POINT_ARRAYS = ("xyz", "rgb", "intensity", "normals", "labels", "instances")
_GAUSS_ARRAYS = ("means", "quats", "log_scales", "opacity_logits", "sh", "labels", "instances")


def save_run_scene(run_dir: str | Path, scene: PointCloud | GaussianSplats) -> dict[str, Any]:
    run_dir = Path(run_dir)
    names = _POINT_ARRAYS if scene.kind == "points" else _GAUSS_ARRAYS
    arrays = {n: getattr(scene, n) for n in names if getattr(scene, n) is not None}
    if scene.meta.get("source_rows") is not None:
        arrays["source_rows"] = np.asarray(scene.meta["source_rows"], dtype=np.int64)
    source = scene.meta.get("source")
    meta = {
        "kind": scene.kind, "count": len(scene), "origin": [float(v) for v in scene.origin],
        "label_names": {str(k): v for k, v in scene.label_names.items()},
        "source": str(Path(source).resolve()) if source else None,
        "source_hash": file_hash(source) if source and Path(source).is_file() else "",
        "format": scene.meta.get("format"),
        "crs": scene.meta.get("crs"),
        "reprojected_to": scene.meta.get("reprojected_to"),
        "file_units": scene.meta.get("file_units"),
    }
    save_tensors(run_dir / "scene.safetensors", arrays)
    write_json(run_dir / "scene.json", meta)
    return meta


def load_run_scene(run_dir: str | Path) -> PointCloud | GaussianSplats:
    run_dir = Path(run_dir)
    meta = read_json(run_dir / "scene.json")
    tensors, _ = load_tensors(run_dir / "scene.safetensors")
    arrays = {k: v.numpy() for k, v in tensors.items()}
    common = dict(origin=np.array(meta["origin"], dtype=np.float64),
                  label_names={int(k): v for k, v in meta.get("label_names", {}).items()},
                  meta={"source": meta.get("source"), "format": meta.get("format"), "source_hash": meta.get("source_hash"),
                        "source_rows": arrays.get("source_rows"), "crs": meta.get("crs"),
                        "reprojected_to": meta.get("reprojected_to"), "file_units": meta.get("file_units")})
    if meta["kind"] == "points":
        return PointCloud(**{k: arrays.get(k) for k in _POINT_ARRAYS}, **common)
    return GaussianSplats(**{k: arrays.get(k) for k in _GAUSS_ARRAYS}, **common)


def run_scene_meta(run_dir: str | Path) -> dict[str, Any]:
    return read_json(Path(run_dir) / "scene.json")


def run_source_rows(run_dir: str | Path) -> np.ndarray | None:
    """[N] int64 file record of each run point, or None when point i is record i (nothing dropped)."""
    from safetensors import safe_open

    path = Path(run_dir) / "scene.safetensors"
    if not path.is_file():
        return None
    with safe_open(str(path), framework="np") as f:
        return f.get_tensor("source_rows").astype(np.int64) if "source_rows" in f.keys() else None
