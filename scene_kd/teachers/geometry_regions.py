"""Masks from the scene's own geometry: connected surface regions of a render, at several granularities.

A render carries per-pixel depth (camera z) and point ids (scene_kd/render/types.py), so the surfaces a SAM
mask would find are mostly there already: a roof sits metres above the street (a depth jump), a facade meets the
ground at a crease (a change of surface normal), a road and a lawn on the same plane differ in colour. This module
cuts the 4-neighbour pixel graph where one of those changes and labels its connected components
(scipy.sparse.csgraph), with no learned model and no prompt grid: about 0.5 CPU-s for the three levels of a 512 x
512 view (benchmarks/teacher_cost.py).

Per level (coarse to fine by default) a link between two neighbouring pixels p, q is cut when
- either is empty (id < 0 or no finite depth), or
- the depth jump |z_p - z_q| > ``jump_rel`` x min(z_p, z_q) (relative, so it is unit-free and the same for a
  100-m aerial view and a 2-m tabletop orbit), or
- ``crease_deg`` > 0 and the surface normals on either side of the link differ by more than that angle, or
- ``colour`` > 0 and the colours on either side differ by more than that (Euclidean RGB distance, 0..1 units).
Normals come from the back-projected depth smoothed by a Gaussian of ``smooth_px`` (splatted points make a
depth image of flat discs; raw differences would be noise) and, like colours, are compared ``gap`` pixels beyond
each end of the link, because smoothing spreads a crease or a colour step over a few pixels. Components under
``min_area`` pixels, or thinner than 3 px (under ``min_area`` / 4 interior pixels), are dropped; pixels left without a region within ``fill_px`` pixels of a kept one (the thin
cracks that cut links leave) join the nearest kept region.

This is classic graph-based range-image segmentation (cf. Felzenszwalb & Huttenlocher, IJCV 2004, with fixed
thresholds in place of their adaptive criterion; Hoover et al., PAMI 1996, for edge-based range segmentation).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from scene_kd.errors import SceneKDError


@dataclass(frozen=True)
class RegionLevel:
    """Thresholds of one mask level (see the module docstring). 0 switches a criterion off."""

    jump_rel: float
    crease_deg: float = 0.0
    colour: float = 0.0


def _smooth(x: np.ndarray, valid: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian normalised convolution of x [H, W, C] over valid pixels (empty pixels do not leak in)."""
    from scipy.ndimage import gaussian_filter

    if sigma <= 0:
        return x
    w = gaussian_filter(valid.astype(np.float32), sigma, mode="nearest")
    out = np.empty_like(x)
    for c in range(x.shape[-1]):
        out[..., c] = gaussian_filter(np.where(valid, x[..., c], 0).astype(np.float32), sigma, mode="nearest")
    return out / np.maximum(w, 1e-6)[..., None]


def camera_points(depth: np.ndarray, K: np.ndarray) -> np.ndarray:
    """[H, W, 3] camera-frame points of pixel centres (x + 0.5, y + 0.5) at camera-z ``depth`` (K: 3x3)."""
    h, w = depth.shape
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    z = depth.astype(np.float32)
    x = (xs + 0.5 - K[0, 2]) / K[0, 0] * z
    y = (ys + 0.5 - K[1, 2]) / K[1, 1] * z
    return np.stack([x, y, z], -1)


def _same_surface(z: np.ndarray, dy: int, dx: int, jump_rel: float) -> np.ndarray:
    """[H, W] bool: the pixel (y + dy, x + dx) exists and its depth is within ``jump_rel`` of pixel (y, x)'s."""
    h, w = z.shape
    out = np.zeros((h, w), bool)
    ys, yd = slice(max(0, -dy), h - max(0, dy)), slice(max(0, dy), h - max(0, -dy))
    xs, xd = slice(max(0, -dx), w - max(0, dx)), slice(max(0, dx), w - max(0, -dx))
    a, b = z[ys, xs], z[yd, xd]
    with np.errstate(invalid="ignore"):
        out[ys, xs] = np.isfinite(a) & np.isfinite(b) & (np.abs(a - b) <= jump_rel * np.minimum(a, b))
    return out


def _shifted(x: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """x[y + dy, x + dx] (edge-clamped) for every pixel."""
    h, w = x.shape[:2]
    return x[np.clip(np.arange(h) + dy, 0, h - 1)][:, np.clip(np.arange(w) + dx, 0, w - 1)]


def surface_normals(depth: np.ndarray, valid: np.ndarray, K: np.ndarray, smooth_px: float,
                    jump_rel: float) -> np.ndarray:
    """[H, W, 3] unit normals (camera frame), 0 where undefined.

    The back-projected points are smoothed by a Gaussian of ``smooth_px`` over neighbours on the same surface only
    (depth within ``jump_rel``: a bilateral filter, so a roof edge does not tilt the street's normals), then
    differenced centrally where both neighbours are on the surface, one-sidedly where one is."""
    z = np.where(valid, depth, np.nan).astype(np.float32)
    pts = camera_points(np.where(valid, depth, 0.0), K)
    if smooth_px > 0:
        r = max(1, int(np.ceil(2 * smooth_px)))
        acc = np.zeros_like(pts)
        wsum = np.zeros(depth.shape, np.float32)
        for dy in range(-r, r + 1):
            for dx in range(-r, r + 1):
                g = np.float32(np.exp(-(dx * dx + dy * dy) / (2 * smooth_px**2)))
                wgt = _same_surface(z, dy, dx, jump_rel) * g
                acc += _shifted(pts, dy, dx) * wgt[..., None]
                wsum += wgt
        pts = np.where(wsum[..., None] > 0, acc / np.maximum(wsum, 1e-12)[..., None], pts)
    grads = []
    for dy, dx in ((0, 1), (1, 0)):
        fwd, bwd = _same_surface(z, dy, dx, jump_rel), _same_surface(z, -dy, -dx, jump_rel)
        nxt, prv = _shifted(pts, dy, dx), _shifted(pts, -dy, -dx)
        g = np.where((fwd & bwd)[..., None], (nxt - prv) / 2, 0.0)
        g = np.where((fwd & ~bwd)[..., None], nxt - pts, g)
        g = np.where((bwd & ~fwd)[..., None], pts - prv, g)
        grads.append(g)
    n = np.cross(grads[0], grads[1])
    norm = np.linalg.norm(n, axis=-1, keepdims=True)
    return np.where(norm > 0, n / np.maximum(norm, 1e-12), 0.0).astype(np.float32)


def _far_pairs(a: np.ndarray, axis: int, gap: int) -> tuple[np.ndarray, np.ndarray]:
    """For each link (i, i+1) along ``axis``: values at i - gap and i + 1 + gap (clamped to the image)."""
    n = a.shape[axis]
    i = np.arange(n - 1)
    lo = np.clip(i - gap, 0, n - 1)
    hi = np.clip(i + 1 + gap, 0, n - 1)
    return np.take(a, lo, axis=axis), np.take(a, hi, axis=axis)


def _cut_links(depth: np.ndarray, valid: np.ndarray, normals: np.ndarray | None, rgb: np.ndarray | None,
               level: RegionLevel, gap: int) -> tuple[np.ndarray, np.ndarray]:
    """(keep_x [H, W-1], keep_y [H-1, W]): which horizontal / vertical neighbour links stay connected."""
    keeps = []
    for axis in (1, 0):
        n = depth.shape[axis]
        a = np.take(depth, np.arange(n - 1), axis=axis)
        b = np.take(depth, np.arange(1, n), axis=axis)
        va = np.take(valid, np.arange(n - 1), axis=axis)
        vb = np.take(valid, np.arange(1, n), axis=axis)
        keep = va & vb
        with np.errstate(invalid="ignore"):
            keep &= np.abs(a - b) <= level.jump_rel * np.minimum(a, b)
        if level.crease_deg > 0 and normals is not None:
            na, nb = _far_pairs(normals, axis, gap)
            dot = (na * nb).sum(-1)
            known = (np.abs(na).sum(-1) > 0) & (np.abs(nb).sum(-1) > 0)  # an undefined normal cuts nothing
            keep &= ~known | (dot >= np.cos(np.deg2rad(level.crease_deg)))
        if level.colour > 0 and rgb is not None:
            ca, cb = _far_pairs(rgb, axis, gap)
            keep &= np.linalg.norm(ca - cb, axis=-1) <= level.colour
        keeps.append(keep)
    return keeps[0], keeps[1]


def _components(keep_x: np.ndarray, keep_y: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """[H, W] int64 connected-component label of every pixel over the kept links (-1 for empty pixels)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    h, w = valid.shape
    idx = np.arange(h * w).reshape(h, w)
    src = np.concatenate([idx[:, :-1][keep_x], idx[:-1, :][keep_y]])
    dst = np.concatenate([idx[:, 1:][keep_x], idx[1:, :][keep_y]])
    graph = coo_matrix((np.ones(len(src), np.int8), (src, dst)), shape=(h * w, h * w))
    _, lab = connected_components(graph, directed=False)
    return np.where(valid, lab.reshape(h, w), -1).astype(np.int64)


def _keep_large(label: np.ndarray, valid: np.ndarray, min_area: int, fill_px: float) -> np.ndarray:
    """Drop components under ``min_area`` pixels or with under ``min_area`` / 4 interior pixels, let valid pixels within ``fill_px`` of a kept region join the
    nearest one, renumber 0..R-1 (-1 none)."""
    from scipy.ndimage import distance_transform_edt

    out = np.full(label.shape, -1, np.int64)
    ok = label >= 0
    if not ok.any():
        return out
    uniq, inverse, counts = np.unique(label[ok], return_inverse=True, return_counts=True)
    # interior pixels: all four neighbours in the same component. A strip 1-2 px wide (the crack a smoothed crease
    # or colour step leaves between two cut lines) has none and is no mask.
    inner = np.zeros(label.shape, bool)
    inner[1:-1, 1:-1] = ((label[1:-1, 1:-1] == label[:-2, 1:-1]) & (label[1:-1, 1:-1] == label[2:, 1:-1])
                         & (label[1:-1, 1:-1] == label[1:-1, :-2]) & (label[1:-1, 1:-1] == label[1:-1, 2:]))
    inner &= ok
    n_inner = np.bincount(np.searchsorted(uniq, label[inner]), minlength=len(uniq))
    big = (counts >= max(1, min_area)) & (n_inner >= max(1, min_area // 4))
    new = np.where(big, np.cumsum(big) - 1, -1)
    out[ok] = new[inverse]
    if fill_px > 0 and big.any():
        holes = valid & (out < 0)
        if holes.any():
            dist, (iy, ix) = distance_transform_edt(out < 0, return_indices=True)
            take = holes & (dist <= fill_px)
            out[take] = out[iy[take], ix[take]]
    return out


def geometry_regions(depth: np.ndarray, ids: np.ndarray | None, K: np.ndarray, levels: Sequence[RegionLevel], *,
                     rgb: np.ndarray | None = None, smooth_px: float = 1.0, gap: int = 1, min_area: int = 16,
                     fill_px: float = 3.0) -> np.ndarray:
    """[L, H, W] int32 region index per level (local to the level, 0..R_l-1; -1 none) of one view.

    depth: [H, W] camera z (+inf / <= 0 empty). ids: [H, W] point / Gaussian ids (-1 empty) or None.
    K: [3, 3] intrinsics in pixels. rgb: [H, W, 3] uint8 (needed by levels with a colour threshold).
    Raises SceneKDError on mismatched shapes or no levels.
    """
    depth = np.asarray(depth, np.float32)
    if depth.ndim != 2:
        raise SceneKDError(f"depth must be [H, W], got shape {depth.shape}")
    if not levels:
        raise SceneKDError("geometry_regions needs at least one level")
    valid = np.isfinite(depth) & (depth > 0)
    if ids is not None:
        if ids.shape != depth.shape:
            raise SceneKDError(f"ids {ids.shape} and depth {depth.shape} differ in shape")
        valid &= np.asarray(ids) >= 0
    need_normals = any(lv.crease_deg > 0 for lv in levels)
    surface_jump = min(lv.jump_rel for lv in levels)
    normals = surface_normals(depth, valid, np.asarray(K, np.float64), smooth_px, surface_jump) if need_normals else None
    colours = None
    if any(lv.colour > 0 for lv in levels):
        if rgb is None or rgb.shape[:2] != depth.shape:
            raise SceneKDError("a colour threshold needs the view's rgb image of the depth's size")
        colours = _smooth(np.asarray(rgb, np.float32) / 255.0, np.ones_like(valid), max(smooth_px, 0.0) / 1.5)
    d = np.where(valid, depth, np.inf)
    out = np.full((len(levels), *depth.shape), -1, np.int32)
    for li, lv in enumerate(levels):
        keep_x, keep_y = _cut_links(d, valid, normals, colours, lv, gap)
        out[li] = _keep_large(_components(keep_x, keep_y, valid), valid, min_area, fill_px)
    return out
