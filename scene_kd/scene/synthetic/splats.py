"""``as_splats``: any labelled point cloud as flat, normal-aligned Gaussians (3DGS parameterisation)."""

from __future__ import annotations

import math

import numpy as np

from scene_kd.errors import SceneKDError
from scene_kd.geometry import pca_normals, quats_wxyz_from_matrices
from scene_kd.scene.sh import dc_from_rgb
from scene_kd.scene.synthetic.primitives import _unit
from scene_kd.scene.types import GaussianSplats, PointCloud


def as_splats(pc: PointCloud, seed: int = 0, max_gaussians: int | None = None, sh_degree: int = 0,
              flatness: float = 0.08, opacity: float = 0.95) -> GaussianSplats:
    """The same scene as labelled Gaussians: one flat Gaussian per point, thin along the surface normal.

    Tangential std-dev = 0.6 x the mean distance to the 3 nearest neighbours (so neighbours overlap into a closed
    surface), normal std-dev = ``flatness`` x that; random in-plane orientation; colour as SH DC (higher bands
    zero for ``sh_degree`` > 0); opacity ``opacity``. ``max_gaussians``: random subsample to that budget first.
    Labels, instances, label_names and origin are carried over. Normals are estimated by PCA when absent.
    """
    from scipy.spatial import cKDTree

    if not isinstance(pc, PointCloud):
        raise SceneKDError(f"as_splats needs a PointCloud, got {type(pc).__name__}")
    if len(pc) < 4:
        raise SceneKDError(f"as_splats needs at least 4 points, got {len(pc)}")
    if sh_degree not in (0, 1, 2, 3):
        raise SceneKDError(f"as_splats: sh_degree must be 0..3, got {sh_degree}")
    if not 0 < opacity < 1:
        raise SceneKDError(f"as_splats: opacity must be in (0, 1), got {opacity}")
    rng = np.random.default_rng(seed)
    if max_gaussians is not None and max_gaussians < len(pc):
        if max_gaussians < 4:
            raise SceneKDError(f"as_splats: max_gaussians must be >= 4, got {max_gaussians}")
        pc = pc.subset(np.sort(rng.choice(len(pc), size=max_gaussians, replace=False)))
    xyz = pc.xyz.astype(np.float64)
    n = len(xyz)
    dist, _ = cKDTree(xyz).query(xyz, k=4)
    spacing = dist[:, 1:].mean(1)
    med = float(np.median(spacing))
    spacing = np.clip(spacing, 0.2 * med + 1e-6, 5.0 * med + 1e-6)
    normals = pc.normals.astype(np.float64) if pc.normals is not None else pca_normals(xyz)
    normals = _unit(normals)
    # tangent frame: a random in-plane direction
    ref = _unit(rng.standard_normal((n, 3)))
    t1 = ref - (ref * normals).sum(1, keepdims=True) * normals
    bad = np.linalg.norm(t1, axis=1) < 1e-6
    t1[bad] = np.cross(normals[bad], np.array([1.0, 0.0, 0.0]))
    t1 = _unit(t1)
    t2 = np.cross(normals, t1)
    R = np.stack([t1, t2, normals], 2)  # columns: axes of the Gaussian
    quats = quats_wxyz_from_matrices(R)
    s_t = 0.6 * spacing
    aniso = rng.uniform(0.8, 1.25, n)
    scales = np.stack([s_t * aniso, s_t / aniso, flatness * s_t], 1)
    rgb = (pc.rgb.astype(np.float64) / 255.0) if pc.rgb is not None else np.full((n, 3), 0.5)
    sh = np.zeros((n, (sh_degree + 1) ** 2, 3), dtype=np.float32)
    sh[:, 0] = dc_from_rgb(rgb)
    logit = math.log(opacity / (1 - opacity))
    return GaussianSplats(
        means=pc.xyz, quats=quats.astype(np.float32), log_scales=np.log(scales).astype(np.float32),
        opacity_logits=np.full(n, logit, np.float32), sh=sh, origin=pc.origin.copy(),
        labels=None if pc.labels is None else pc.labels.copy(), label_names=dict(pc.label_names),
        instances=None if pc.instances is None else pc.instances.copy(),
        meta={**{k: v for k, v in pc.meta.items() if k != "objects"}, "from_points": True},
    )
