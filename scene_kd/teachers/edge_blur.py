"""How blurred an image is along region boundaries, in pixels: what the realistic oracle uses to see as badly as a
real teacher does on a blurry view.

Method: the gradient-ratio defocus estimate of Zhuo & Sim, "Defocus map estimation from a single image", Pattern
Recognition 44(9), 2011. A step edge of contrast C blurred by a Gaussian of std-dev s has, under a Gaussian
derivative of scale d, a peak gradient C / (sqrt(2 pi) sqrt(s^2 + d^2)); the ratio R of the peaks at two scales
d1 < d2 gives s^2 = (d2^2 - R^2 d1^2) / (R^2 - 1), independently of C. It is measured at edge centres (gradient
maxima across the edge, Canny-style non-maximum suppression) within a pixel of a boundary of ``regions`` (the
ground-truth regions, so only edges a teacher would have to find count), and summarised per region by the median
over the edge pixels touching it. Own code on scipy.ndimage filters: no maintained library gives a per-region
blur scale in pixels (scikit-image's ``blur_effect`` is one unitless score per image).
"""

from __future__ import annotations

import numpy as np

LUMA = np.array([0.299, 0.587, 0.114])
"""ITU-R BT.601 luma weights."""


def region_boundaries(ids: np.ndarray) -> np.ndarray:
    """[H, W] bool: pixels of ``ids`` [H, W] with a 4-neighbour of another id, on both sides of each boundary."""
    out = np.zeros(ids.shape, bool)
    dx, dy = ids[:, 1:] != ids[:, :-1], ids[1:] != ids[:-1]
    out[:, 1:] |= dx
    out[:, :-1] |= dx
    out[1:] |= dy
    out[:-1] |= dy
    return out


def edge_blur_map(rgb: np.ndarray, regions: np.ndarray, *, d1: float = 1.0, d2: float = 2.0,
                  min_gradient: float = 0.004, max_blur: float = 8.0) -> tuple[np.ndarray, np.ndarray]:
    """Blur at the edge centres along the boundaries of ``regions``.

    rgb [H, W, 3] uint8 (or float in [0, 255]); regions [H, W] int (any ids, -1 = no region: still a side of an
    edge). Returns (yx [E, 2] int64 pixel coordinates, blur [E] float64 Gaussian std-dev in pixels, clipped to
    [0, max_blur]). An edge centre is a pixel whose d1-scale gradient magnitude is a maximum across the edge
    direction, whose d2-scale gradient magnitude (luma in [0, 1] per pixel) is above ``min_gradient`` (that
    scale barely sees sensor noise, so faint blurred edges still count) and whose ratio R is above 1 (R <= 1 is
    a shading ramp or two edges closer than d2, which the method cannot read: left out, not counted as blur).
    A perfectly sharp step reads ~0.45 px. Regions narrower than about 4 x d2 read sharper than they are (their
    two edges blend at scale d2): a 6-px square blurred by 2 px reads ~1.1 px."""
    from scipy.ndimage import binary_dilation, gaussian_filter

    if rgb.ndim != 3 or rgb.shape[:2] != regions.shape:
        raise ValueError(f"rgb {rgb.shape} and regions {regions.shape} must be [H, W, 3] and [H, W]")
    luma = np.asarray(rgb, np.float64) @ LUMA / 255.0
    gy, gx = gaussian_filter(luma, d1, order=(1, 0)), gaussian_filter(luma, d1, order=(0, 1))
    g1 = np.hypot(gy, gx)
    g2 = np.hypot(gaussian_filter(luma, d2, order=(1, 0)), gaussian_filter(luma, d2, order=(0, 1)))
    near = binary_dilation(region_boundaries(regions), np.ones((3, 3), bool))
    # non-maximum suppression across the edge: the gradient direction quantised to 4 axes
    axis = (np.round(np.arctan2(gy, gx) / (np.pi / 4)) % 4).astype(np.int8)
    h, w = g1.shape
    pad = np.pad(g1, 1, mode="edge")
    centre = np.zeros_like(near)
    for a, (oy, ox) in enumerate(((0, 1), (1, 1), (1, 0), (1, -1))):
        ahead, behind = pad[1 + oy:1 + oy + h, 1 + ox:1 + ox + w], pad[1 - oy:1 - oy + h, 1 - ox:1 - ox + w]
        centre |= (axis == a) & (g1 >= ahead) & (g1 >= behind)
    centre &= near & (g2 > min_gradient)
    r2 = (g1 / np.maximum(g2, 1e-12)) ** 2
    centre &= r2 > 1.0 + 1e-9  # a step edge always has R > 1; R <= 1 is a ramp or clutter, not an edge to measure
    yx = np.argwhere(centre)
    r2 = r2[centre]
    s2 = (d2 ** 2 - r2 * d1 ** 2) / (r2 - 1.0)
    return yx, np.sqrt(np.clip(s2, 0.0, max_blur ** 2))


def region_blur(rgb: np.ndarray, regions: np.ndarray, n_regions: int, *, min_edges: int = 8,
                **kw) -> tuple[np.ndarray, float]:
    """(blur [n_regions] float64 px, view blur float px) along the boundaries of ``regions`` [H, W] int (0 ..
    n_regions-1, -1 none) in ``rgb`` [H, W, 3].

    A region's blur is the median of :func:`edge_blur_map` over the edge centres in or next to it (3 x 3), or the
    view's median where it touches fewer than ``min_edges``; NaN everywhere when the view has fewer than
    ``min_edges`` edge centres (nothing to measure: callers treat that as sharp)."""
    yx, blur = edge_blur_map(rgb, regions, **kw)
    out = np.full(n_regions, np.nan)
    if blur.size < min_edges:
        return out, float("nan")
    view = float(np.median(blur))
    out[:] = view
    h, w = regions.shape
    owners = [regions[np.clip(yx[:, 0] + oy, 0, h - 1), np.clip(yx[:, 1] + ox, 0, w - 1)]
              for oy in (-1, 0, 1) for ox in (-1, 0, 1)]
    edge = np.tile(np.arange(blur.size), 9)
    pairs = np.unique(np.stack([np.concatenate(owners), edge], 1), axis=0)  # each edge once per region
    own, val = pairs[:, 0], blur[pairs[:, 1]]
    keep = (own >= 0) & (own < n_regions)
    own, val = own[keep], val[keep]
    order = np.lexsort((val, own))
    own, val = own[order], val[order]
    ids, start, count = np.unique(own, return_index=True, return_counts=True)
    enough = count >= min_edges
    mid_lo = start + (count - 1) // 2
    mid_hi = start + count // 2
    out[ids[enough]] = 0.5 * (val[mid_lo[enough]] + val[mid_hi[enough]])
    return out, view
