"""Which views of a planned grid can see any point at all, without building or projecting every view.

An aerial level is a grid of views that share one orientation and camera height and differ by an xy shift (nadir
views; the obliques of one heading). A point at height z is inside such a view's image exactly when its xy lies
in the frustum's cross-section at z, a quadrilateral whose corners are the four image-corner rays met at that
height: their xy offsets from the camera are (C_z - z) * (d_x, d_y) / -d_z. So the views that can see the point
are those whose camera xy lies in the point's xy minus that quadrilateral; its bounding box (exact for nadir views,
a little larger for obliques) gives an index range along each grid axis, and a 2D difference array adds up every
point's rectangle of views in O(N + views). A view with no point in its rectangle holds nothing to render or to
teach on (a grid laid over empty ground: the thin 5 x 5 km tile of 6,280 points).
"""

from __future__ import annotations

import numpy as np

from scene_kd.scene.types import Camera

CHUNK = 1 << 21
"""Points per pass (bounds the temporaries to a few tens of MB)."""


def corner_slopes(camera: Camera, margin_px: float = 1.0) -> np.ndarray | None:
    """[4, 2] xy offset per metre of drop of the 4 image-corner rays (widened by ``margin_px``) in world axes, or
    None when a corner ray does not point down (the cross-section is unbounded: every view may see a point)."""
    K = np.asarray(camera.K, np.float64)
    W, H, m = camera.width, camera.height, margin_px
    pix = np.array([[-m, -m, 1.0], [W + m, -m, 1.0], [-m, H + m, 1.0], [W + m, H + m, 1.0]])
    rays_cam = pix @ np.linalg.inv(K).T
    R = np.asarray(camera.world_to_cam, np.float64)[:3, :3]
    rays = rays_cam @ R  # world directions: R^T d, row-wise
    if not (rays[:, 2] < -1e-9).all():
        return None
    return rays[:, :2] / -rays[:, 2:3]


def views_seeing_points(xyz: np.ndarray, camera: Camera, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """[len(ys), len(xs)] bool: which views of a grid see at least one point (conservatively: may keep a view whose
    image only the points' bounding boxes reach). ``camera`` is the view at grid cell (0, 0); the view at (iy, ix)
    is it shifted in xy by (xs[ix] - xs[0], ys[iy] - ys[0]); ``xs`` / ``ys`` ascending. Points [N, 3] in the
    cameras' (local) frame."""
    xs, ys = np.asarray(xs, np.float64), np.asarray(ys, np.float64)
    nx, ny = len(xs), len(ys)
    slopes = corner_slopes(camera)
    if slopes is None or len(xyz) == 0:
        return np.full((ny, nx), len(xyz) > 0)
    c2w = np.linalg.inv(np.asarray(camera.world_to_cam, np.float64))
    centre = c2w[:3, 3]
    # the camera's xy relative to its grid cell's coordinates (an oblique sits back from its look-at point)
    off = centre[:2] - np.array([xs[0], ys[0]])
    smin, smax = slopes.min(0), slopes.max(0)
    diff = np.zeros((ny + 1) * (nx + 1), np.int64)
    for a in range(0, len(xyz), CHUNK):
        p = np.asarray(xyz[a:a + CHUNK], np.float64)
        drop = centre[2] - p[:, 2]
        p = p[drop > 0]
        drop = drop[drop > 0]
        # camera x in [px - drop * smax, px - drop * smin]  ->  grid coordinate x = camera x - off
        lo = p[:, :2] - off - drop[:, None] * smax
        hi = p[:, :2] - off - drop[:, None] * smin
        i0, i1 = np.searchsorted(xs, lo[:, 0], "left"), np.searchsorted(xs, hi[:, 0], "right")
        j0, j1 = np.searchsorted(ys, lo[:, 1], "left"), np.searchsorted(ys, hi[:, 1], "right")
        ok = (i0 < i1) & (j0 < j1)
        i0, i1, j0, j1 = i0[ok], i1[ok], j0[ok], j1[ok]
        w = nx + 1
        for idx, sign in ((j0 * w + i0, 1), (j0 * w + i1, -1), (j1 * w + i0, -1), (j1 * w + i1, 1)):
            diff += sign * np.bincount(idx, minlength=len(diff))
    counts = diff.reshape(ny + 1, nx + 1).cumsum(0).cumsum(1)[:ny, :nx]
    return counts > 0
