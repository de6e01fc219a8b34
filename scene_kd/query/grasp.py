"""Grasp-target lookup: relevancy -> confident points -> largest connected cluster -> box, pose, width.

Pure functions on numpy arrays (local float32 coordinates + a float64 origin). The run-folder / text
side lives in ``scene_kd/apps/grasp/api.py``.

Method (DESIGN.md §4):
1. Refuse when the scene's peak relevancy is below ``min_relevancy`` ("no confident target", not a guess).
2. Hits: points with relevancy >= max(hit_threshold, peak - band).
3. Connected clusters of hits on a voxel grid (``scipy.ndimage.label``, 26-connectivity); keep the largest.
4. Oriented bounding box by PCA (reported as ``obb``), and a gravity-aligned grasp frame: the up axis plus
   the direction of the footprint's minimum (trimmed) width and its normal.
5. Approach from above (along -up) when the column above the object is free of other points, otherwise
   horizontally along the footprint's long axis from the sensor side (or whichever side is free).
   The fingers close across the smallest horizontal extent; width = that extent + margin.

Gripper frame (``rotation`` / ``orientation_xyzw``): z = approach direction (pointing from the gripper
into the object), y = closing direction (finger motion), x = y × z.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from scene_kd.errors import SceneKDError
from scene_kd.geometry import pca_normals, quat_xyzw_from_matrix
from scene_kd.runio import to_jsonable


@dataclass
class GraspConfig:
    min_relevancy: float = 0.6
    """Refuse when the highest relevancy in the scene is below this (0.5 = no better than the negatives)."""
    hit_threshold: float = 0.55
    """Points at or above this relevancy can belong to the target."""
    band: float = 0.1
    """Points more than this below the peak relevancy are not hits (keeps the most relevant part only)."""
    min_points: int = 8
    """Refuse when the largest cluster has fewer points."""
    voxel_size: float = 0.0
    """Connectivity voxel edge (scene units); 0 = 2.5 x the median nearest-neighbour spacing of the hits."""
    trim: float = 0.01
    """Fraction of the target's points ignored at each side when measuring its horizontal extents."""
    margin: float = 0.01
    """Added to the closing extent to give the opening width (scene units)."""
    finger_depth: float = 0.03
    """How far below the top the fingertips close for a top grasp (capped at half the object height)."""
    max_width: float | None = None
    """Refuse targets wider than the gripper can open (scene units); None = no limit."""
    clearance: float = 0.15
    """Height/length of the approach corridor checked for other points (scene units)."""
    up: tuple[float, float, float] = (0.0, 0.0, 1.0)
    """The scene's up direction (local frame)."""


@dataclass
class OrientedBox:
    """PCA box in world coordinates: center [3], extent [3] (full edge lengths, descending),
    rotation [3, 3] whose columns are the box axes (right-handed)."""

    center: list[float]
    extent: list[float]
    rotation: list[list[float]]


@dataclass
class GraspTarget:
    """A grasp pose in the scene's own (world) coordinates, or a refusal (``found`` False + ``reason``)."""

    query: str
    found: bool
    reason: str | None = None
    position: list[float] | None = None
    orientation_xyzw: list[float] | None = None
    approach: list[float] | None = None
    closing: list[float] | None = None
    normal: list[float] | None = None
    approach_kind: str | None = None  # "top" | "side"
    reachable: bool | None = None
    width: float | None = None
    score: float | None = None
    peak_relevancy: float | None = None
    point_count: int = 0
    obb: OrientedBox | None = None
    point_indices: list[int] = field(default_factory=list)

    def to_json(self, with_indices: bool = False) -> dict[str, Any]:
        d = to_jsonable(self)
        if not with_indices:
            d.pop("point_indices")
        return d


# ---- geometry helpers ------------------------------------------------------------------------------


def median_spacing(xyz: np.ndarray, sample: int = 2000, seed: int = 0) -> float:
    """Median nearest-neighbour distance of [N, 3] points (on a random subsample of queries)."""
    from scipy.spatial import cKDTree

    if len(xyz) < 2:
        return 0.0
    rng = np.random.default_rng(seed)
    q = xyz if len(xyz) <= sample else xyz[rng.choice(len(xyz), sample, replace=False)]
    d, _ = cKDTree(xyz).query(q, k=2)
    spacing = float(np.median(d[:, 1]))
    return spacing if spacing > 0 else float(np.mean(d[:, 1]))


def voxel_components(xyz: np.ndarray, voxel_size: float, max_cells: int = 64_000_000) -> np.ndarray:
    """Connected-component id [N] int64 of points [N, 3] whose voxels touch (26-connectivity).

    Labels points through a dense occupancy grid with ``scipy.ndimage.label``; the voxel edge is doubled
    until the grid has at most ``max_cells`` cells.
    """
    from scipy import ndimage

    if len(xyz) == 0:
        return np.zeros(0, dtype=np.int64)
    if not voxel_size > 0:
        raise ValueError("voxel_size must be positive")
    lo = xyz.min(axis=0)
    while True:
        keys = np.floor((xyz - lo) / voxel_size).astype(np.int64)
        shape = keys.max(axis=0) + 1
        if int(np.prod(shape)) <= max_cells:
            break
        voxel_size *= 2.0
    grid = np.zeros(tuple(int(s) for s in shape), dtype=bool)
    grid[keys[:, 0], keys[:, 1], keys[:, 2]] = True
    labelled, _ = ndimage.label(grid, structure=np.ones((3, 3, 3), dtype=bool))
    return labelled[keys[:, 0], keys[:, 1], keys[:, 2]].astype(np.int64)


def pca_box(xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PCA oriented box of [N, 3] points: (center [3], extent [3] descending, rotation [3, 3] columns = axes)."""
    mean = xyz.mean(axis=0)
    cov = np.cov((xyz - mean).T) if len(xyz) > 1 else np.zeros((3, 3))
    _, vecs = np.linalg.eigh(cov)
    axes = vecs[:, ::-1].copy()  # largest variance first
    if np.linalg.det(axes) < 0:
        axes[:, 2] *= -1
    proj = (xyz - mean) @ axes
    lo, hi = proj.min(axis=0), proj.max(axis=0)
    center = mean + axes @ ((lo + hi) / 2)
    return center, hi - lo, axes


def min_width_direction(flat: np.ndarray, trim: float = 0.01, angles: int = 180, sample: int = 20000,
                        seed: int = 0) -> np.ndarray:
    """Unit 2D direction [2] across which points [N, 2] are narrowest, robust to stray points: the width along
    each of ``angles`` directions over [0, pi) is the spread between the ``trim`` and ``1 - trim`` quantiles
    of the projections (then refined once around the best angle)."""
    if len(flat) > sample:
        flat = flat[np.random.default_rng(seed).choice(len(flat), sample, replace=False)]

    def best(thetas: np.ndarray) -> float:
        dirs = np.stack([np.cos(thetas), np.sin(thetas)], axis=0)  # [2, A]
        proj = flat @ dirs
        lo, hi = np.quantile(proj, [trim, 1 - trim], axis=0)
        return float(thetas[int(np.argmin(hi - lo))])

    step = np.pi / angles
    theta = best(np.arange(angles) * step)
    theta = best(theta + np.linspace(-step, step, 21))
    return np.array([np.cos(theta), np.sin(theta)])


def horizontal_frame(xyz: np.ndarray, up: np.ndarray, trim: float = 0.01
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Gravity-aligned box of [N, 3] points: footprint axes (major, minor) with ``minor`` the direction of
    smallest horizontal width, and the box (center [3], extent [3] = (major, minor, height)); the horizontal
    extents span the ``trim`` .. ``1 - trim`` quantiles (stray points do not widen the grasp)."""
    helper = np.array([1.0, 0.0, 0.0]) if abs(up[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    e1 = helper - up * (helper @ up)
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(up, e1)
    flat = np.stack([xyz @ e1, xyz @ e2], axis=1)
    minor2 = min_width_direction(flat, trim)
    minor = minor2[0] * e1 + minor2[1] * e2
    major = np.cross(minor, up)  # right-handed (major, minor, up)
    axes = np.stack([major, minor, up], axis=1)
    proj = xyz @ axes
    lo = np.array([*np.quantile(proj[:, :2], trim, axis=0), proj[:, 2].min()])
    hi = np.array([*np.quantile(proj[:, :2], 1 - trim, axis=0), proj[:, 2].max()])
    return major, minor, axes @ ((lo + hi) / 2), hi - lo


def corridor_blocked(
    others: np.ndarray, start: np.ndarray, direction: np.ndarray, length: float, radius: float
) -> bool:
    """True when any of ``others`` [M, 3] lies in the cylinder from ``start`` along unit ``direction``
    (0 < t <= length) within ``radius`` of its axis."""
    if len(others) == 0:
        return False
    rel = others - start
    t = rel @ direction
    radial = np.linalg.norm(rel - t[:, None] * direction, axis=1)
    return bool(np.any((t > 0) & (t <= length) & (radial <= radius)))


# ---- the lookup --------------------------------------------------------------------------------


def refuse(query: str, reason: str, peak: float | None = None) -> GraspTarget:
    return GraspTarget(query=query, found=False, reason=reason, peak_relevancy=peak)


@dataclass
class TargetFrame:
    """The target's boxes in local coordinates: the PCA box (reported as ``obb``) and the gravity-aligned box
    whose footprint axes are ``major`` and ``minor`` (the direction of smallest horizontal width)."""

    obb_center: np.ndarray  # [3]
    obb_extent: np.ndarray  # [3] descending
    obb_axes: np.ndarray  # [3, 3] columns = axes
    major: np.ndarray  # [3] unit
    minor: np.ndarray  # [3] unit, the closing direction
    center: np.ndarray  # [3] gravity-aligned box centre
    extent: np.ndarray  # [3] (major, minor, height), trimmed horizontally
    width: float  # opening width: minor extent + margin

    @property
    def height(self) -> float:
        return float(self.extent[2])


@dataclass
class Approach:
    """How the gripper comes in: ``kind`` "top" | "side", unit ``direction`` [3] (gripper -> object), the
    fingertip centre ``position`` [3] (local), and whether the corridor is free (``reachable``)."""

    kind: str
    direction: np.ndarray
    position: np.ndarray
    reachable: bool


def find_grasp(
    positions: np.ndarray,
    relevancy: np.ndarray,
    *,
    query: str = "",
    origin: np.ndarray | None = None,
    cfg: GraspConfig | None = None,
    sensor: np.ndarray | None = None,
) -> GraspTarget:
    """Grasp target for one query (the steps of the module docstring, each a function below).

    positions: [N, 3] local coordinates.   relevancy: [N] in [0, 1].   origin: [3] float64, world = origin + local.
    sensor: optional [3] local position of the sensor/robot (side approaches come from that side).
    Returns a GraspTarget in world coordinates, or a refusal (``found`` False) when nothing is confidently
    relevant. Raises SceneKDError on an empty scene or mismatched inputs.
    """
    cfg = cfg or GraspConfig()
    positions, rel, origin = _check_inputs(positions, relevancy, origin)
    peak = float(rel.max())
    if peak < cfg.min_relevancy:
        return refuse(query, f"no confident target for {query!r}: peak relevancy {peak:.3f} < {cfg.min_relevancy}", peak)
    members = _largest_relevant_cluster(positions, rel, peak, cfg)
    if len(members) < cfg.min_points:
        return refuse(query, f"no confident target for {query!r}: largest relevant cluster has only "
                             f"{len(members)} point(s) (< {cfg.min_points})", peak)
    up = np.asarray(cfg.up, dtype=np.float64)
    up = up / np.linalg.norm(up)
    pts = positions[members]
    frame = _target_frame(pts, up, cfg)
    if cfg.max_width is not None and frame.width > cfg.max_width:
        return refuse(query, f"target for {query!r} is {frame.width:.3f} wide, wider than the gripper opens "
                             f"({cfg.max_width})", peak)
    others = positions[np.setdiff1d(np.arange(len(positions)), members, assume_unique=False)]
    approach = _choose_approach(others, frame, up, cfg, sensor)
    normal = _contact_normal(pts, approach)
    closing = frame.minor
    rotation = np.stack([np.cross(closing, approach.direction), closing, approach.direction], axis=1)
    return GraspTarget(
        query=query, found=True, position=(approach.position + origin).tolist(),
        orientation_xyzw=quat_xyzw_from_matrix(rotation), approach=approach.direction.tolist(),
        closing=closing.tolist(), normal=normal.tolist(), approach_kind=approach.kind, reachable=approach.reachable,
        width=frame.width, score=float(rel[members].mean()), peak_relevancy=peak, point_count=int(len(members)),
        obb=OrientedBox(center=(frame.obb_center + origin).tolist(), extent=frame.obb_extent.tolist(),
                        rotation=frame.obb_axes.tolist()),
        point_indices=members.tolist(),
    )


def _check_inputs(positions: np.ndarray, relevancy: np.ndarray, origin: np.ndarray | None
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(positions [N, 3] float64, relevancy [N] float64 with -inf where a value or position is not finite,
    origin [3] float64); SceneKDError on an empty scene, mismatched lengths or nothing finite."""
    positions = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    relevancy = np.asarray(relevancy, dtype=np.float64).reshape(-1)
    origin = np.zeros(3) if origin is None else np.asarray(origin, dtype=np.float64).reshape(3)
    if len(positions) == 0:
        raise SceneKDError("the scene is empty: no points to search for a grasp target")
    if len(relevancy) != len(positions):
        raise SceneKDError(f"relevancy has {len(relevancy)} values for {len(positions)} points")
    finite = np.isfinite(relevancy) & np.isfinite(positions).all(axis=1)
    if not finite.any():
        raise SceneKDError("relevancy is NaN/Inf everywhere")
    return positions, np.where(finite, relevancy, -np.inf), origin


def _largest_relevant_cluster(positions: np.ndarray, rel: np.ndarray, peak: float, cfg: GraspConfig) -> np.ndarray:
    """Indices [M] int64 of the largest voxel-connected cluster of hits (relevancy >= max(hit_threshold,
    peak - band))."""
    hit_idx = np.flatnonzero(rel >= max(cfg.hit_threshold, peak - cfg.band))
    hits = positions[hit_idx]
    voxel = cfg.voxel_size if cfg.voxel_size > 0 else 2.5 * median_spacing(hits)
    if not voxel > 0:
        voxel = 1e-3
    comp = voxel_components(hits, voxel)
    ids, counts = np.unique(comp, return_counts=True)
    return hit_idx[comp == ids[np.argmax(counts)]]


def _target_frame(pts: np.ndarray, up: np.ndarray, cfg: GraspConfig) -> TargetFrame:
    """The PCA box and the gravity-aligned box of the target's points [M, 3]; width = minor extent + margin."""
    obb_center, obb_extent, obb_axes = pca_box(pts)
    major, minor, center, extent = horizontal_frame(pts, up, cfg.trim)
    return TargetFrame(obb_center=obb_center, obb_extent=obb_extent, obb_axes=obb_axes, major=major, minor=minor,
                       center=center, extent=extent, width=float(extent[1]) + cfg.margin)


def _choose_approach(others: np.ndarray, frame: TargetFrame, up: np.ndarray, cfg: GraspConfig,
                     sensor: np.ndarray | None) -> Approach:
    """From above when the column over the target is free of ``others`` [K, 3]; else horizontally along the
    footprint's long axis, the sensor side first, through a free corridor; else from above (obstructed)."""
    height = frame.height
    top_center = frame.center + up * (height / 2)
    top_position = top_center - up * min(cfg.finger_depth, height / 2)
    radius = 0.5 * max(float(frame.extent[0]), frame.width)
    if not corridor_blocked(others, top_center + up * 1e-6, up, cfg.clearance, radius):
        return Approach(kind="top", direction=-up, position=top_position, reachable=True)
    candidates = [frame.major, -frame.major]
    if sensor is not None:
        to_obj = frame.center - np.asarray(sensor, dtype=np.float64)
        candidates.sort(key=lambda d: -float(d @ to_obj))  # approach pointing from the sensor to the object
    for d in candidates:
        start = frame.center - d * (frame.extent[0] / 2)
        if not corridor_blocked(others, start - d * 1e-6, -d, cfg.clearance, 0.5 * max(height, frame.width)):
            return Approach(kind="side", direction=d, position=frame.center, reachable=True)
    # nothing free: the top is the least obstructed convention
    return Approach(kind="top", direction=-up, position=top_position, reachable=False)


def _contact_normal(pts: np.ndarray, approach: Approach) -> np.ndarray:
    """Unit surface normal [3] where the fingers meet the object: the mean normal of the points nearest the grasp
    axis (closest 20%), oriented against the approach (out of the object, towards the gripper)."""
    normals = pca_normals(pts)
    near = np.linalg.norm(np.cross(pts - approach.position, approach.direction), axis=1)
    sel = near <= np.quantile(near, 0.2)
    n_dirs = normals[sel]
    n_dirs = n_dirs * np.where((n_dirs @ -approach.direction) < 0, -1.0, 1.0)[:, None]
    normal = n_dirs.mean(axis=0)
    return normal / max(np.linalg.norm(normal), 1e-12)
