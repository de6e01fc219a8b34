"""Pinhole projection of local points through a :class:`Camera` (our own: the core's camera math).

It lives in scene/ (not render/) because scene readers need it too: ``scene/capture.py`` checks which
candidate camera frame sees a capture's points. ``render/points.py`` draws with exactly this arithmetic, so
:func:`pixel_index` of a point is the pixel the renderer drew it at.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from scene_kd.errors import SceneKDError
from scene_kd.scene.types import Camera

NEAR = 1e-3
"""Points closer than this (camera z, scene units) are not drawn."""

def _as_xyz(xyz: Tensor | np.ndarray) -> Tensor:
    xyz = torch.as_tensor(xyz)
    if xyz.ndim != 2 or xyz.shape[1] != 3:
        raise SceneKDError(f"points must be [N, 3], got {tuple(xyz.shape)}")
    return xyz.to(torch.float32)


def _check_camera(camera: Camera) -> None:
    if camera.width <= 0 or camera.height <= 0:
        raise SceneKDError(f"camera {camera.name or ''} has zero-size image {camera.width}x{camera.height}".replace("  ", " "))
    if not np.isfinite(camera.K).all() or not np.isfinite(camera.world_to_cam).all():
        raise SceneKDError(f"camera {camera.name!r} has non-finite intrinsics or pose")


def projection_matrix(camera: Camera, device: torch.device | str = "cpu") -> Tensor:
    """P = K [R | t] as [3, 4] float32: (u z, v z, z) = P @ (x, y, z, 1) for local points."""
    P = camera.K @ camera.world_to_cam[:3, :4]
    return torch.as_tensor(P, dtype=torch.float32, device=device)


def _project_rows(xyz: Tensor, P: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(u [N], v [N], z [N]) contiguous rows for points [N, 3] (one GEMM on the transposed view, no copy)."""
    m = torch.addmm(P[:, 3:], P[:, :3], xyz.T)  # [3, N], rows contiguous
    z = m[2]
    inv_z = 1.0 / z
    return m[0] * inv_z, m[1] * inv_z, z


def project_points(xyz: Tensor | np.ndarray, camera: Camera) -> tuple[Tensor, Tensor]:
    """Project local points [N, 3] float32 -> (uv [N, 2] float32 pixel coords (u = column, v = row), depth [N] camera z).

    Points behind the camera get depth <= 0 and meaningless uv; callers test ``depth > NEAR``.
    Same arithmetic as :func:`render_points`, so :func:`pixel_index` of a point is the pixel the renderer drew it at.
    """
    xyz = _as_xyz(xyz)
    u, v, z = _project_rows(xyz, projection_matrix(camera, xyz.device))
    return torch.stack((u, v), dim=1), z


def _pixel_of(u: Tensor, v: Tensor, z: Tensor, width: int, height: int, border: int = 0) -> tuple[Tensor, Tensor]:
    """(inside [N] bool, flat pixel index [N] long; garbage where not inside) of projected points.
    Inside means u, v >= 0, where the int cast (truncation) equals floor."""
    inside = (z > NEAR) & (u >= border) & (u < width - border) & (v >= border) & (v < height - border)
    flat = v.to(torch.int32).to(torch.int64) * width + u.to(torch.int32)
    return inside, flat


def pixel_index(uv: Tensor, depth: Tensor, width: int, height: int, border: int = 0) -> Tensor:
    """Flat pixel index [N] long (row * W + col) of projected points, -1 where behind the camera or outside
    the image shrunk by ``border`` pixels on each side."""
    inside, flat = _pixel_of(uv[:, 0].contiguous(), uv[:, 1].contiguous(), depth, width, height, border)
    return torch.where(inside, flat, torch.full_like(flat, -1))
