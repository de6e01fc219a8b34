"""Gaussian-splat runs drawn as Gaussians in the viewer (viser's Gaussian-splat scene node).

``splat_node_arrays`` turns the run's GaussianSplats (3DGS parameterisation) into what
``viser.SceneApi.add_gaussian_splats`` takes: centres [N, 3], covariances R diag(s^2) R^T [N, 3, 3], RGB in
[0, 1] from the SH DC term, opacities [N, 1] = sigmoid(logit). Relevancy / label colours are then written into
the node's ``rgbs`` (the viewer recolours splats the way it recolours points).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scene_kd.scene.types import GaussianSplats


@dataclass(frozen=True)
class SplatNode:
    """Arrays for one viser Gaussian-splat node; ``index`` [N] maps node rows to the run's Gaussians."""

    index: np.ndarray
    centers: np.ndarray
    covariances: np.ndarray
    rgbs: np.ndarray
    opacities: np.ndarray


def covariances_from(quats_wxyz: np.ndarray, log_scales: np.ndarray) -> np.ndarray:
    """[N, 3, 3] float32 covariances R diag(exp(log_scales)^2) R^T (rotations via scipy's Rotation)."""
    from scipy.spatial.transform import Rotation

    q = np.asarray(quats_wxyz, np.float64)
    R = Rotation.from_quat(q[:, [1, 2, 3, 0]]).as_matrix()
    s2 = np.exp(2.0 * np.asarray(log_scales, np.float64))
    return np.einsum("nij,nj,nkj->nik", R, s2, R).astype(np.float32)


def splat_node_arrays(splats: GaussianSplats, *, max_gaussians: int | None = None, seed: int = 0) -> SplatNode:
    """The node arrays for ``splats``; above ``max_gaussians`` a seeded random subset (the most opaque first
    would bias the view; a uniform subset keeps the scene's look)."""
    n = len(splats)
    index = np.arange(n)
    if max_gaussians is not None and n > max_gaussians:
        index = np.sort(np.random.default_rng(seed).choice(n, max_gaussians, replace=False))
    sub = splats.subset(index) if len(index) < n else splats
    opacity = 1.0 / (1.0 + np.exp(-np.asarray(sub.opacity_logits, np.float64)))
    return SplatNode(index=index, centers=np.asarray(sub.means, np.float32),
                     covariances=covariances_from(sub.quats, sub.log_scales),
                     rgbs=sub.rgb_from_dc().astype(np.float32) / 255.0,
                     opacities=opacity.astype(np.float32)[:, None])
