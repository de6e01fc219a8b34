"""Rotations and surface normals: the one place for quaternion <-> matrix conversions and PCA normals.

Quaternions are (w, x, y, z), scalar first (3DGS / COLMAP order); conversions go through
:class:`scipy.spatial.transform.Rotation`, which uses (x, y, z, w). The differentiable torch conversion the
rasterizer needs (:func:`quat_to_rotmat`) is the one hand-written formula (scipy has no torch path).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from torch import Tensor


def quats_wxyz_from_matrices(R: np.ndarray) -> np.ndarray:
    """Rotation matrices [N, 3, 3] -> unit quaternions [N, 4] float64 (w, x, y, z) with w >= 0.

    Raises ValueError for non-finite input (scipy's ``Rotation.from_matrix``).
    """
    from scipy.spatial.transform import Rotation

    m = np.asarray(R, dtype=np.float64).reshape(-1, 3, 3)
    if not np.isfinite(m).all():
        raise ValueError("non-finite rotation matrix")
    q = Rotation.from_matrix(m).as_quat()[:, [3, 0, 1, 2]]
    q[q[:, 0] < 0] *= -1
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def quat_xyzw_from_matrix(R: np.ndarray) -> list[float]:
    """A 3x3 rotation as a unit quaternion [x, y, z, w] (scipy / ROS order), w >= 0."""
    w, x, y, z = quats_wxyz_from_matrices(np.asarray(R)[None])[0]
    return [float(x), float(y), float(z), float(w)]


def matrix_from_quat_wxyz(qw: float, qx: float, qy: float, qz: float) -> np.ndarray:
    """[3, 3] float64 rotation of a (w, x, y, z) quaternion of any norm; ValueError when it is zero or not finite."""
    from scipy.spatial.transform import Rotation

    q = np.array([qx, qy, qz, qw], dtype=np.float64)
    n = np.linalg.norm(q)
    if not np.isfinite(n) or n == 0:
        raise ValueError("zero or non-finite quaternion")
    return Rotation.from_quat(q / n).as_matrix()


def quat_to_rotmat(quats: Tensor) -> Tensor:
    """[N, 4] (w, x, y, z), any norm -> [N, 3, 3], differentiable (the rasterizer's path; gsplat's formula)."""
    import torch

    w, x, y, z = torch.nn.functional.normalize(quats, dim=-1).unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], dim=-1).reshape(-1, 3, 3)


def pca_normals(xyz: np.ndarray, k: int = 12) -> np.ndarray:
    """Unit normals [N, 3] (sign arbitrary): the smallest-variance direction of each point's k nearest
    neighbours (PCA of the local covariance; Hoppe et al. 1992). Fewer than 3 points: +z."""
    from scipy.spatial import cKDTree

    xyz = np.asarray(xyz, dtype=np.float64)
    n = len(xyz)
    if n < 3:
        return np.tile(np.array([0.0, 0.0, 1.0]), (n, 1))
    k = min(k, n)
    _, idx = cKDTree(xyz).query(xyz, k=k)
    nb = xyz[idx] - xyz[idx].mean(axis=1, keepdims=True)  # [N, k, 3]
    cov = np.einsum("nki,nkj->nij", nb, nb)
    _, vecs = np.linalg.eigh(cov)
    return vecs[:, :, 0]
