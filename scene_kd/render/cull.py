"""Per-view culling with a 2D spatial index, so a view's render cost follows the points it sees, not the tile.

``build_point_grid(xyz)`` sorts the points once into square xy cells (about ``points_per_cell`` points each) and
keeps each non-empty cell's 3D box; ``view_point_indices(grid, camera)`` tests every cell box against the view
frustum (4 side planes pushed out by ``margin_px`` pixels so footprints that reach into the image are kept, and the
near plane) and returns the sorted indices of the points in the kept cells. ``render_point_view_culled`` renders
only those points and maps the ids back: because the indices stay sorted, the z-buffer's (depth, id) order and so
its output are those of rendering every point.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from scene_kd.render.points import MAX_FOOTPRINT_PX, render_points, visible_in_view
from scene_kd.render.types import Render
from scene_kd.scene.types import Camera


@dataclass(frozen=True)
class PointGrid:
    """order [N] int64 point indices grouped by cell; starts [C + 1] int64 offsets of each cell's run in ``order``;
    lo / hi [C, 3] float64 the box of each non-empty cell's points; cell: the cell side (scene units)."""

    order: np.ndarray
    starts: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    cell: float

    @property
    def n_points(self) -> int:
        return int(len(self.order))


def build_point_grid(xyz: np.ndarray | torch.Tensor, *, cell: float | None = None,
                     points_per_cell: int = 2048) -> PointGrid:
    """Index points [N, 3] (local coordinates) in square xy cells of side ``cell`` (default: so an average cell holds
    ``points_per_cell`` points). One argsort of N; memory ~ 8 N bytes for the order plus O(cells)."""
    xyz = np.asarray(xyz.cpu().numpy() if isinstance(xyz, torch.Tensor) else xyz, dtype=np.float32)
    n = len(xyz)
    if n == 0:
        empty = np.zeros((0, 3))
        return PointGrid(np.zeros(0, np.int64), np.zeros(1, np.int64), empty, empty, 1.0)
    lo = xyz[:, :2].min(0).astype(np.float64)
    span = np.maximum(xyz[:, :2].max(0) - lo, 1e-6)
    if cell is None:
        cell = math.sqrt(float(span[0] * span[1]) * points_per_cell / n)
    cell = max(float(cell), 1e-6)
    ncell = np.floor(span / cell).astype(np.int64) + 1
    ij = np.minimum(np.floor((xyz[:, :2] - lo) / cell).astype(np.int64), ncell - 1)
    key = ij[:, 0] * ncell[1] + ij[:, 1]
    order = np.argsort(key, kind="stable")
    counts = np.bincount(key, minlength=int(ncell.prod()))
    counts = counts[counts > 0]
    starts = np.zeros(len(counts) + 1, np.int64)
    np.cumsum(counts, out=starts[1:])
    box_lo = np.empty((len(counts), 3))
    box_hi = np.empty((len(counts), 3))
    for d in range(3):  # one sorted column at a time: no [N, 3] copy
        col = xyz[order, d]
        box_lo[:, d] = np.minimum.reduceat(col, starts[:-1])
        box_hi[:, d] = np.maximum.reduceat(col, starts[:-1])
    return PointGrid(order.astype(np.int64), starts, box_lo, box_hi, cell)


def _frustum_planes(camera: Camera, margin_px: float) -> np.ndarray:
    """[5, 3] unit normals (camera frame) of planes through the camera centre bounding the image widened by
    ``margin_px`` on each side, plus the image plane direction (z >= 0): inside iff n . p_cam >= 0 for all."""
    K = np.asarray(camera.K, np.float64)
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    W, H, m = camera.width, camera.height, margin_px
    planes = np.array([[fx, 0, cx + m], [-fx, 0, W - cx + m], [0, fy, cy + m], [0, -fy, H - cy + m], [0, 0, 1.0]])
    return planes / np.linalg.norm(planes, axis=1, keepdims=True)


def visible_cells(grid: PointGrid, camera: Camera, *, margin_px: float = MAX_FOOTPRINT_PX + 1.0) -> np.ndarray:
    """[C] bool: cell boxes not entirely outside one frustum plane (conservative: may keep a few unseen cells)."""
    if len(grid.lo) == 0:
        return np.zeros(0, bool)
    corners = np.stack([np.where(np.array([(k >> d) & 1 for d in range(3)], bool), grid.hi, grid.lo)
                        for k in range(8)], axis=1)  # [C, 8, 3]
    w2c = np.asarray(camera.world_to_cam, np.float64)
    pc = corners @ w2c[:3, :3].T + w2c[:3, 3]
    dist = pc @ _frustum_planes(camera, margin_px).T  # [C, 8, 5]
    return ~(dist < 0).all(axis=1).any(axis=1)


def view_point_indices(grid: PointGrid, camera: Camera, *, margin_px: float = MAX_FOOTPRINT_PX + 1.0) -> np.ndarray:
    """Sorted int64 indices of the points in the cells the view's frustum touches (a superset of the points it
    can draw: every point whose centre projects inside the image widened by ``margin_px`` pixels)."""
    keep = np.flatnonzero(visible_cells(grid, camera, margin_px=margin_px))
    if len(keep) == 0:
        return np.zeros(0, np.int64)
    a, b = grid.starts[keep], grid.starts[keep + 1]
    lengths = b - a
    offsets = np.repeat(a - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
    return np.sort(grid.order[offsets + np.arange(int(lengths.sum()))])


def _take(values: Any, idx: np.ndarray) -> Any:
    if values is None:
        return None
    if isinstance(values, torch.Tensor):
        return values[torch.from_numpy(idx)] if values.ndim > 0 else values
    return np.asarray(values)[idx]


def render_point_view_culled(scene: Any, camera: Camera, cfg: Any, xyz: torch.Tensor, radius: float | torch.Tensor,
                             grid: PointGrid) -> tuple[Render, np.ndarray]:
    """(Render, idx): the view rendered from only the points ``idx`` = :func:`view_point_indices` (ids, labels and
    instances refer to the whole scene, as without culling). Same arguments as the render stage's
    ``render_point_view`` plus the grid; an empty view (no point in its frustum) gives an empty Render."""

    idx = view_point_indices(grid, camera)
    H, W = camera.height, camera.width
    if len(idx) == 0:
        bg = np.broadcast_to(np.asarray(cfg.background, np.uint8), (H, W, 3)).copy()
        none = None if scene.labels is None else np.full((H, W), -1, np.int32)
        inst = None if scene.instances is None else np.full((H, W), -1, np.int32)
        return Render(camera=camera, rgb=bg, depth=np.full((H, W), np.inf, np.float32),
                      ids=np.full((H, W), -1, np.int32), labels=none, instances=inst), idx
    sub = xyz[torch.from_numpy(idx)]
    r = _take(radius, idx) if isinstance(radius, torch.Tensor) else radius
    render = render_points(sub, camera, rgb=_take(scene.rgb, idx), normals=_take(scene.normals, idx),
                           labels=_take(scene.labels, idx), instances=_take(scene.instances, idx), point_radius=r,
                           point_size_px=cfg.point_size_px, background=tuple(cfg.background))
    hit = render.ids >= 0
    render.ids[hit] = idx[render.ids[hit]].astype(np.int32)
    return render, idx


def visible_points_culled(xyz: torch.Tensor, camera: Camera, depth_image: np.ndarray | torch.Tensor, grid: PointGrid,
                          *, tolerance: float = 0.25, border_px: int = 10) -> tuple[np.ndarray, torch.Tensor]:
    """(indices [K] int64 of the points the view sees, their flat pixel index [K] long): the same points and pixels
    as ``visible_in_view`` on every point (its OpenScene depth test), computed on the frustum's cells only."""

    idx = view_point_indices(grid, camera, margin_px=1.0)
    if len(idx) == 0:
        return idx, torch.zeros(0, dtype=torch.long)
    vis, pix = visible_in_view(xyz[torch.from_numpy(idx)], camera, depth_image, tolerance=tolerance,
                               border_px=border_px)
    return idx[vis.numpy()], pix[vis]
