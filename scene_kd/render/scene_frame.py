"""Where is up, and where is the object? A frame for orbit views of captures that come without cameras.

Splat captures arrive in whatever frame their trainer chose (COLMAP's y-down, an arbitrary world up, ...), with
background Gaussians and floaters far from the object. ``estimate_scene_frame`` finds

* the **up axis**: the direction most surface is parallel or perpendicular to (floors and table tops face up,
  walls and the sides of upright objects face sideways) - each Gaussian's normal is its shortest axis, each
  point's a local PCA normal, weighted by opacity x footprint area. Its sign puts most of the (weighted) mass
  above the plane of the surfaces facing along it (an object standing on a base or a table).
* **robust bounds** in that frame: opacity- and local-density-weighted percentiles, so a few far floaters or a
  thin shell of background do not set the orbit radius.

``push_out_of_dense`` moves a camera outward along its viewing ray while it sits inside dense Gaussians (so no
view starts inside a floater cloud or a wall). Our own code: no library estimates a capture's up axis; the
score is the gravity-aligned ("Manhattan-world") assumption of indoor and object capture pipelines.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from scene_kd.errors import SceneKDError


@dataclass(frozen=True)
class SceneFrame:
    """An up axis and robust bounds. ``center`` [3] (scene units), ``up`` [3] unit, ``radius``: half the robust
    diagonal, ``lo``/``hi`` [3]: robust bounds along (right, forward, up) about ``center``."""

    center: np.ndarray
    up: np.ndarray
    radius: float
    lo: np.ndarray
    hi: np.ndarray
    basis: np.ndarray
    """[3, 3] rows: right, forward, up (world directions)."""


def _basis(up: np.ndarray) -> np.ndarray:
    ref = np.array([1.0, 0.0, 0.0]) if abs(up[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    right = np.cross(ref, up)
    right /= np.linalg.norm(right)
    return np.stack([right, np.cross(up, right), up])


def _weighted_percentile(v: np.ndarray, w: np.ndarray, q: float) -> float:
    order = np.argsort(v)
    cw = np.cumsum(w[order])
    return float(v[order][min(np.searchsorted(cw, q / 100.0 * cw[-1]), len(v) - 1)])


def local_density_weights(xyz: np.ndarray, k: int = 8) -> np.ndarray:
    """[N] weights in (0, 1]: 1 / (1 + mean distance to the k nearest neighbours / its median). Isolated
    floaters get small weights; an evenly sampled surface gets ~0.5."""
    k = min(k + 1, len(xyz))
    d, _ = cKDTree(xyz).query(xyz, k=k)
    spacing = d[:, 1:].mean(1) if k > 1 else np.ones(len(xyz))
    return 1.0 / (1.0 + spacing / max(float(np.median(spacing)), 1e-12))


def _hemisphere(n: int) -> np.ndarray:
    """``n`` unit vectors spread evenly over the upper hemisphere (Fibonacci lattice) [n, 3]."""
    k = np.arange(n) + 0.5
    z = 1.0 - k / n
    phi = k * np.pi * (3.0 - np.sqrt(5.0))
    r = np.sqrt(1.0 - z * z)
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], 1)


def _axis_scores(n: np.ndarray, w: np.ndarray, dirs: np.ndarray, tol: float) -> np.ndarray:
    """Per direction: sum of w x (a Gaussian kernel of width ``tol`` on the angle to the nearer of parallel
    and perpendicular)."""
    theta = np.arccos(np.clip(np.abs(n @ dirs.T), 0.0, 1.0))  # [N, C] in [0, pi/2]
    off = np.minimum(theta, np.pi / 2 - theta)
    return w @ np.exp(-0.5 * (off / tol) ** 2)


def _facing_scores(n: np.ndarray, w: np.ndarray, dirs: np.ndarray, tol: float) -> np.ndarray:
    """Per direction: sum of w x (a Gaussian kernel of width ``tol`` on the angle between the normal and +-u)."""
    theta = np.arccos(np.clip(np.abs(n @ dirs.T), 0.0, 1.0))
    return w @ np.exp(-0.5 * (theta / tol) ** 2)


def estimate_up(normals: np.ndarray, weights: np.ndarray, xyz: np.ndarray, *, tol_deg: float = 5.0,
                candidates: int = 2000, max_normals: int = 20_000, seed: int = 0) -> np.ndarray:
    """Unit up vector [3]: of the three axes of the frame most surface is parallel or perpendicular to, the one
    most surface faces along, signed so most mass lies above the plane of the surfaces facing along it.

    The sign puts more positions above than below the plane of the surfaces facing along the axis.
    Score of a direction u: the weight of normals near +-u (floors, table tops, roofs) or near perpendicular to u
    (walls, the sides of objects standing upright), each through a Gaussian kernel of width ``tol_deg`` - the
    gravity-aligned world of a capture. Searched over a Fibonacci hemisphere of ``candidates`` directions, then
    refined; that score cannot tell the three axes of such a frame apart (a box's faces are parallel to one and
    perpendicular to the others), so the second axis is the best direction perpendicular to the first and up is
    the axis of the three with the most weight on normals along it: a real capture of a card box on a mat, or of
    a potted plant, has its box faces or leaves across the two other axes and the mat / pot rim along up. ``normals``
    [N, 3] (any sign), ``weights`` [N] >= 0, ``xyz`` [N, 3]. Raises SceneKDError when all weights are 0.
    """
    w = np.asarray(weights, np.float64)
    if not np.isfinite(w).all() or w.sum() <= 0:
        raise SceneKDError("cannot estimate the up axis: no surface with weight")
    n = np.asarray(normals, np.float64)
    n = n / np.linalg.norm(n, axis=1, keepdims=True).clip(1e-12)
    sub = np.arange(len(n))
    if len(n) > max_normals:
        sub = np.random.default_rng(seed).choice(len(n), max_normals, replace=False)
    tol = np.radians(tol_deg)
    dirs = _hemisphere(candidates)
    axis = dirs[int(np.argmax(_axis_scores(n[sub], w[sub], dirs, tol)))]
    spacing = np.sqrt(2 * np.pi / candidates)  # radians between lattice directions
    cap = _hemisphere(40_000)
    cap = cap[cap[:, 2] > np.cos(1.5 * spacing)]  # ~100 directions around the best one
    fine = cap @ _basis(axis)  # rows of _basis: right, forward, axis
    axis = fine[int(np.argmax(_axis_scores(n[sub], w[sub], fine, tol)))]
    # that score is the same for all three axes of a box-like (Manhattan) frame: up is the one of the three that
    # most surface faces along (a floor, a table top, the base an object stands on), not across
    e1, e2 = _basis(axis)[:2]
    turn = np.linspace(0.0, np.pi, 360, endpoint=False)
    ring = np.cos(turn)[:, None] * e1 + np.sin(turn)[:, None] * e2
    second = ring[int(np.argmax(_axis_scores(n[sub], w[sub], ring, tol)))]
    frame_axes = np.stack([axis, second, np.cross(axis, second)])
    axis = frame_axes[int(np.argmax(_facing_scores(n[sub], w[sub], frame_axes, tol)))]
    # sign: more of the scene (counted, not weighted: objects are finely sampled) stands above the plane that the
    # surfaces facing along the axis lie on than hangs below it
    on_plane = np.abs(n @ axis) > np.cos(2 * tol)
    h = np.asarray(xyz, np.float64) @ axis
    plane_level = _weighted_percentile(h[on_plane], w[on_plane], 50) if on_plane.any() else float(np.median(h))
    margin = 0.02 * float(np.subtract(*np.percentile(h, [98, 2])))  # robust to far floaters
    above = int((h > plane_level + margin).sum())
    below = int((h < plane_level - margin).sum())
    return axis if above >= below else -axis


def estimate_scene_frame(xyz: np.ndarray, *, normals: np.ndarray, weights: np.ndarray | None = None,
                         up: np.ndarray | None = None, percentiles: tuple[float, float] = (2.0, 98.0),
                         max_samples: int = 200_000, seed: int = 0) -> SceneFrame:
    """The frame of a scene [N, 3] from its normals [N, 3] and weights [N] (e.g. opacity x area; default 1).

    ``up`` skips the estimate. Bounds are ``percentiles`` of the weighted positions (weights times local density)
    along each axis of the frame. Large scenes are subsampled to ``max_samples`` (seeded).
    """
    xyz = np.asarray(xyz, np.float64)
    if len(xyz) < 4 or not np.isfinite(xyz).all():
        raise SceneKDError("cannot frame a scene with fewer than 4 finite positions")
    w = np.ones(len(xyz)) if weights is None else np.asarray(weights, np.float64)
    if len(xyz) > max_samples:
        pick = np.random.default_rng(seed).choice(len(xyz), max_samples, replace=False)
        xyz, w, normals = xyz[pick], w[pick], np.asarray(normals)[pick]
    w = w * local_density_weights(xyz)
    up_vec = estimate_up(normals, w, xyz) if up is None else np.asarray(up, np.float64) / np.linalg.norm(up)
    basis = _basis(up_vec)
    local = xyz @ basis.T
    lo = np.array([_weighted_percentile(local[:, a], w, percentiles[0]) for a in range(3)])
    hi = np.array([_weighted_percentile(local[:, a], w, percentiles[1]) for a in range(3)])
    center = basis.T @ (0.5 * (lo + hi))
    return SceneFrame(center=center, up=up_vec, radius=max(float(np.linalg.norm(hi - lo)) / 2, 1e-6),
                      lo=lo - 0.5 * (lo + hi), hi=hi - 0.5 * (lo + hi), basis=basis)


def gaussian_normals_and_weights(quats_wxyz: np.ndarray, log_scales: np.ndarray,
                                 opacity_logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per Gaussian: its normal (the axis of its smallest scale, world frame) [N, 3] and the weight
    opacity x area of its two larger axes [N] (3DGS parameterisation; rotations via scipy)."""
    from scipy.spatial.transform import Rotation

    q = np.asarray(quats_wxyz, np.float64)
    R = Rotation.from_quat(q[:, [1, 2, 3, 0]]).as_matrix()  # scipy takes (x, y, z, w)
    s = np.exp(np.asarray(log_scales, np.float64))
    smallest = s.argmin(1)
    normals = R[np.arange(len(q)), :, smallest]
    area = s.prod(1) / s.min(1).clip(1e-12)
    opacity = 1.0 / (1.0 + np.exp(-np.asarray(opacity_logits, np.float64)))
    return normals, opacity * area


def push_out_of_dense(camera_pos: np.ndarray, target: np.ndarray, tree: cKDTree, *, probe: float,
                      max_neighbours: int = 0, max_factor: float = 3.0, steps: int = 12) -> np.ndarray:
    """``camera_pos`` [3] moved outward along the ray from ``target`` until at most ``max_neighbours`` scene
    positions lie within ``probe`` of it (or ``max_factor`` times its distance is reached)."""
    direction = np.asarray(camera_pos, np.float64) - target
    for f in np.linspace(1.0, max_factor, steps):
        pos = target + f * direction
        if len(tree.query_ball_point(pos, probe)) <= max_neighbours:
            return pos
    return target + max_factor * direction
