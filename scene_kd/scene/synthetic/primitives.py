"""Geometry primitives of the synthetic scenes and their ray-intersection kernels (vectorised over rays)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass
class _Prim:
    """One primitive. kind: 'convex' (half-spaces n.p <= d), 'cyl' (vertical capped cylinder), 'blob' (porous
    ellipsoid). lo/hi: axis-aligned bounds [3]. colour/colour2: RGB 0-255 (colour2: roofs, glass)."""

    kind: str
    label: int
    instance: int
    part: int
    lo: np.ndarray
    hi: np.ndarray
    colour: tuple[float, float, float]
    colour2: tuple[float, float, float] = (0.0, 0.0, 0.0)
    normals: np.ndarray | None = None  # convex [P, 3]
    offsets: np.ndarray | None = None  # convex [P]
    center: np.ndarray | None = None  # cyl: (cx, cy, _), blob: centre
    radius: float = 0.0  # cyl
    radii: np.ndarray | None = None  # blob semi-axes [3]
    density: float = 0.0  # blob: hits per metre of path (1 / mean free path)
    base_z: float = 0.0  # building base (for window rows)
    wall_top: float = 0.0  # building eaves height (absolute z)


def _rot_z(yaw: float) -> np.ndarray:
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _convex(normals_local, offsets_local, corners_local, R, t, **kw) -> _Prim:
    """A convex polyhedron given in a local frame (n.p <= d), placed by p_world = R p_local + t."""
    n_l = np.asarray(normals_local, dtype=np.float64)
    scale = np.linalg.norm(n_l, axis=1)
    n_l, d_l = n_l / scale[:, None], np.asarray(offsets_local, dtype=np.float64) / scale  # unit normals
    n_w = n_l @ R.T
    d_w = d_l + n_w @ t
    corners = np.asarray(corners_local, dtype=np.float64) @ R.T + t
    return _Prim("convex", lo=corners.min(0), hi=corners.max(0), normals=n_w, offsets=d_w, **kw)


def _box_planes(lo, hi):
    """Half-spaces and corners of the box lo..hi (local frame)."""
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    normals = [[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]]
    offsets = [hi[0], -lo[0], hi[1], -lo[1], hi[2], -lo[2]]
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    return normals, offsets, corners


def _box(lo, hi, R, t, **kw) -> _Prim:
    n, d, c = _box_planes(lo, hi)
    return _convex(n, d, c, R, t, **kw)


def _hit_convex(o, d, p: _Prim):
    """Entry distance [M] (inf on miss) and the index of the entry plane [M]."""
    nd = d @ p.normals.T
    num = p.offsets[None, :] - o @ p.normals.T
    with np.errstate(divide="ignore", invalid="ignore"):
        tp = num / nd
    t_enter = np.where(nd < 0, tp, -np.inf)
    k = t_enter.argmax(1)
    t_in = t_enter[np.arange(len(o)), k]
    t_out = np.where(nd > 0, tp, np.inf).min(1)
    outside_parallel = ((nd == 0) & (num < 0)).any(1)
    hit = (t_in <= t_out) & (t_in > 1e-6) & ~outside_parallel
    return np.where(hit, t_in, np.inf), k


def _hit_cyl(o, d, p: _Prim):
    """Vertical capped cylinder: distance [M] and part flag [M] (0 side, 1 top)."""
    cx, cy = p.center[0], p.center[1]
    z0, z1 = p.lo[2], p.hi[2]
    dx, dy = o[:, 0] - cx, o[:, 1] - cy
    a = d[:, 0] ** 2 + d[:, 1] ** 2
    b = 2 * (dx * d[:, 0] + dy * d[:, 1])
    c = dx * dx + dy * dy - p.radius**2
    disc = b * b - 4 * a * c
    ok = (disc >= 0) & (a > 1e-12)
    with np.errstate(divide="ignore", invalid="ignore"):
        t_side = (-b - np.sqrt(np.where(ok, disc, 0))) / (2 * a)
    z_side = o[:, 2] + t_side * d[:, 2]
    t_side = np.where(ok & (t_side > 1e-6) & (z_side >= z0) & (z_side <= z1), t_side, np.inf)
    with np.errstate(divide="ignore", invalid="ignore"):
        t_top = (z1 - o[:, 2]) / d[:, 2]
    xt, yt = dx + t_top * d[:, 0], dy + t_top * d[:, 1]
    t_top = np.where((d[:, 2] < 0) & (t_top > 1e-6) & (xt * xt + yt * yt <= p.radius**2), t_top, np.inf)
    top = t_top < t_side
    return np.minimum(t_side, t_top), top.astype(np.int64)


def _hit_blob(o, d, p: _Prim, rng: np.random.Generator):
    """Porous ellipsoid: a hit at an exponential free path after entry, if it falls before the exit."""
    oc = (o - p.center) / p.radii
    dd = d / p.radii
    a = (dd * dd).sum(1)
    b = 2 * (oc * dd).sum(1)
    c = (oc * oc).sum(1) - 1
    disc = b * b - 4 * a * c
    ok = disc > 0
    sq = np.sqrt(np.where(ok, disc, 0))
    t0 = np.maximum((-b - sq) / (2 * a), 0.0)
    t1 = (-b + sq) / (2 * a)
    t = t0 + rng.exponential(1.0 / p.density, size=len(o))
    return np.where(ok & (t1 > 0) & (t < t1), t, np.inf), np.zeros(len(o), dtype=np.int64)


def _unit(v):
    return v / np.linalg.norm(v, axis=-1, keepdims=True)
