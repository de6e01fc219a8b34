"""nerfstudio frames: the coordinate frames a nerfstudio capture's scene file can be in, as transforms of the
frame of its ``transforms.json``.

What nerfstudio does (read in nerfstudio 1.1.5: ``process_data/colmap_utils.py`` ``colmap_to_json`` and
``create_ply_from_colmap``, ``data/dataparsers/nerfstudio_dataparser.py``, ``data/dataparsers/base_dataparser.py``
``save_dataparser_transform`` / ``transform_poses_to_original_space``, ``scripts/exporter.py``):

* **original**: the poses' own frame before ns-process-data (COLMAP's world, Metashape's chunk frame).
* **transforms**: the frame of transforms.json's frames. ns-process-data writes ``x = a * (A x_original)`` with
  ``A`` = ``applied_transform`` (3x4; from COLMAP ``[[1,0,0,0],[0,0,1,0],[0,-1,0,0]]``, z up) and ``a`` =
  ``applied_scale`` (1 when absent; nerfstudio itself writes none), and applies the same ``A`` to the
  ``ply_file_path`` points (``sparse_pc.ply``), which the dataparser then moves like the poses: **the
  ply_file_path points are in this frame**.
* **dataparser**: what training sees, ``x = s * (T x_original)`` with ``T`` (3x4) and ``s`` of
  ``dataparser_transforms.json`` (written beside the trained model; nerfstudio >= 1.0 composes ``T`` =
  auto-orient/centre @ ``A``, i.e. ``T`` starts from the original frame, not from transforms.json's).
  splatfacto's Gaussians, ``ns-export gaussian-splat`` (the means as trained) and ``ns-export pointcloud`` are
  in this frame; ``ns-export pointcloud --save-world-frame`` undoes ``T`` and ``s`` and so writes the
  **original** frame (not transforms.json's).

Without ``applied_transform`` the dataparser takes ``A`` = ``[[0,1,0,0],[1,0,0,0],[0,0,-1,0]]`` when the folder
holds ``colmap/sparse/0`` (datasets processed before the field existed), else the identity; nerfstudio < 1.0 did
not compose that implied ``A`` into ``T``, so such a folder also gets the candidate ``dataparser-pre-1.0``
(``T`` from transforms.json's frame).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from scene_kd.errors import SceneFormatError
from scene_kd.scene.types import Camera

LEGACY_COLMAP_APPLIED = [[0.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, -1.0, 0.0]]
"""The applied_transform nerfstudio assumes for a colmap/sparse/0 dataset whose transforms.json has none."""
FRAMES = ("transforms", "dataparser", "original", "dataparser-pre-1.0")


def _homogeneous(m: Any, what: str, path: Path) -> np.ndarray:
    a = np.asarray(m, dtype=np.float64)
    if a.shape == (4, 4):
        a = a[:3]
    if a.shape != (3, 4) or not np.isfinite(a).all():
        raise SceneFormatError(f"{what} must be a finite 3x4 matrix", path=path)
    out = np.eye(4)
    out[:3] = a
    if abs(np.linalg.det(out[:3, :3])) < 1e-12:
        raise SceneFormatError(f"{what} is singular", path=path)
    return out


def frame_transforms(root: Path, meta: dict[str, Any]) -> dict[str, np.ndarray]:
    """The candidate frames of a nerfstudio folder: name -> M [4, 4] float64 mapping transforms.json's frame to
    it (x' = M x, a similarity, see :func:`frame_scale`). Always ``transforms``;
    ``original`` when there is an (implied) applied_transform or applied_scale; ``dataparser`` (and
    ``dataparser-pre-1.0``, see the module docstring) with ``dataparser_transforms.json`` in ``root``.
    SceneFormatError for an unreadable or singular transform."""
    import json

    tj = root / "transforms.json"
    applied_given = meta.get("applied_transform") is not None
    if applied_given:
        A = _homogeneous(meta["applied_transform"], "applied_transform", tj)
    elif (root / "colmap" / "sparse" / "0").is_dir():
        A = _homogeneous(LEGACY_COLMAP_APPLIED, "applied_transform", tj)
    else:
        A = np.eye(4)
    a = float(meta.get("applied_scale", 1.0))
    if not np.isfinite(a) or a <= 0:
        raise SceneFormatError(f"applied_scale must be > 0, got {a}", path=tj)
    to_original = np.linalg.inv(A) @ np.diag([1 / a, 1 / a, 1 / a, 1.0])
    out = {"transforms": np.eye(4)}
    if not np.allclose(to_original, np.eye(4)):
        out["original"] = to_original
    dp = root / "dataparser_transforms.json"
    if dp.is_file():
        try:
            d = json.loads(dp.read_text())
            T, s = _homogeneous(d["transform"], "dataparser transform", dp), float(d.get("scale", 1.0))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise SceneFormatError(f"unreadable dataparser_transforms.json ({e})", path=dp) from None
        if not np.isfinite(s) or s <= 0:
            raise SceneFormatError(f"dataparser scale must be > 0, got {s}", path=dp)
        S = np.diag([s, s, s, 1.0])
        out["dataparser"] = S @ T @ to_original
        if not applied_given and not np.allclose(A, np.eye(4)):
            out["dataparser-pre-1.0"] = S @ T
    return out


def frame_scale(M: np.ndarray) -> float:
    """The uniform scale of a similarity [4, 4]: lengths in its frame per length in transforms.json's."""
    return float(np.cbrt(np.linalg.det(M[:3, :3])))


def expected_frame(frames: dict[str, Any], scene_is_ply_file_path: bool) -> str:
    """The frame a scene file is in by where it came from: the ply_file_path points are in transforms.json's
    frame; any other scene is taken to be in the dataparser frame when there is a dataparser_transforms.json
    (splatfacto / ns-export), else in transforms.json's."""
    if scene_is_ply_file_path or "dataparser" not in frames:
        return "transforms"
    return "dataparser"


def cameras_in_frame(cameras: list[Camera], M: np.ndarray, origin: np.ndarray) -> list[Camera]:
    """``cameras`` (world-to-camera in transforms.json's frame) moved by the similarity ``M`` (x' = M x): centre
    C' = M C, rotation R' = (M's rotation) R, the intrinsics unchanged; then ``origin`` subtracted (the scene's
    local frame)."""
    Q = M[:3, :3] / frame_scale(M)
    out = []
    for c in cameras:
        c2w = np.linalg.inv(c.world_to_cam)
        moved = np.eye(4)
        moved[:3, :3] = Q @ c2w[:3, :3]
        moved[:3, 3] = M[:3, :3] @ c2w[:3, 3] + M[:3, 3] - np.asarray(origin, np.float64)
        out.append(Camera(K=c.K.copy(), world_to_cam=np.linalg.inv(moved), width=c.width, height=c.height,
                          level=c.level, name=c.name, distortion=c.distortion))
    return out
