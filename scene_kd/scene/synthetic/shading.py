"""Colours, intensities, normals and labels of simulated LiDAR hits."""

from __future__ import annotations

import numpy as np

from scene_kd.scene.synthetic.labels import (
    _CAR_CABIN,
    _CROWN,
    _FACADE,
    _LAMP,
    _METAL,
    _SIGN,
    _TRUNK,
    GRASS,
    ROAD,
    SIDEWALK,
)
from scene_kd.scene.synthetic.layout import _Block


def _shade(blk: _Block, rng, hits: dict[str, np.ndarray]):
    """Points, normals, labels, instances, colours and intensities of the hits."""
    o, d, t, prim, aux = hits["o"], hits["d"], hits["t"], hits["prim"], hits["aux"]
    n = len(t)
    p = o + t[:, None] * d
    normals = np.zeros((n, 3))
    labels = np.empty(n, dtype=np.int32)
    instances = np.full(n, -1, dtype=np.int32)
    colour = np.zeros((n, 3))
    refl = np.zeros(n)
    # ---- ground ----
    g = prim < 0
    if g.any():
        x, y = p[g, 0], p[g, 1]
        _, lab = blk.surface(x, y)
        labels[g] = lab
        normals[g] = blk.ground_normals(x, y)
        c = np.zeros((len(x), 3))
        r = np.zeros(len(x))
        road, walk, grass = lab == ROAD, lab == SIDEWALK, lab == GRASS
        c[road], r[road] = (68, 68, 72), 0.12
        c[walk], r[walk] = (168, 162, 152), 0.30
        tile = walk & ((np.mod(x, 0.6) < 0.04) | (np.mod(y, 0.6) < 0.04))
        c[tile] = (135, 130, 122)
        patch = 14 * np.sin(x / 3.1) * np.cos(y / 4.3)
        c[grass] = np.stack([78 + patch, 128 + patch, 58 + 0.5 * patch], 1)[grass]
        r[grass] = 0.45
        dy = np.abs(y - blk.road_y)
        centre = (dy < 0.08) & (np.mod(x, 9.0) < 3.0)
        edge = np.abs(dy - (blk.road_half - 2.6)) < 0.07
        zebra = (x > blk.crosswalk_x) & (x < blk.crosswalk_x + 4) & (np.mod(y, 1.0) < 0.5)
        mark = road & (centre | edge | zebra)
        c[mark], r[mark] = (226, 226, 220), 0.7
        colour[g], refl[g] = c, r
    # ---- primitives ----
    for pi in np.unique(prim[prim >= 0]):
        s = np.flatnonzero(prim == pi)
        pr = blk.prims[pi]
        q = p[s]
        labels[s] = pr.label
        instances[s] = pr.instance
        if pr.kind == "convex":
            nn = pr.normals[aux[s]]
        elif pr.kind == "cyl":
            radial = np.stack([q[:, 0] - pr.center[0], q[:, 1] - pr.center[1], np.zeros(len(s))], 1)
            radial /= np.maximum(np.linalg.norm(radial, axis=1, keepdims=True), 1e-9)
            nn = np.where(aux[s][:, None] == 1, np.array([0.0, 0.0, 1.0]), radial)
        else:
            nn = (q - pr.center) / pr.radii**2
            nn /= np.linalg.norm(nn, axis=1, keepdims=True)
            nn = nn + 0.6 * rng.standard_normal(nn.shape)
            nn /= np.linalg.norm(nn, axis=1, keepdims=True)
        normals[s] = nn
        c = np.tile(np.asarray(pr.colour, float), (len(s), 1))
        r = np.full(len(s), 0.35)
        if pr.part == _FACADE:
            roof = nn[:, 2] > 0.3
            c[roof], r[roof] = pr.colour2, 0.25
            tang = np.stack([-nn[:, 1], nn[:, 0]], 1)
            u = (q[:, :2] * tang).sum(1)
            h = q[:, 2] - (pr.base_z + 0.5)
            win = (~roof) & (np.mod(u, 2.6) > 0.7) & (np.mod(u, 2.6) < 1.9) & (np.mod(h, 3.0) > 0.9) \
                & (np.mod(h, 3.0) < 2.3) & (q[:, 2] < pr.wall_top - 0.4)
            c[win], r[win] = (52, 62, 78), 0.05
        elif pr.part == _CAR_CABIN:
            side = np.abs(nn[:, 2]) < 0.8
            c[side], r[side] = pr.colour2, 0.05
        elif pr.part == _CROWN:
            c = c + rng.normal(0, 12, (len(s), 1)) * np.array([0.6, 1.0, 0.5])
            r[:] = 0.5
        elif pr.part in (_LAMP, _SIGN):
            face = nn[:, 2] < -0.5 if pr.part == _LAMP else np.abs(nn[:, 1]) > 0.5
            c[face] = pr.colour2
        elif pr.part in (_METAL,):
            r[:] = 0.6
        elif pr.part == _TRUNK:
            r[:] = 0.25
        colour[s], refl[s] = c, r
    # normals face the scanner (crown leaves, terrain steps)
    flip = (normals * d).sum(1) > 0
    normals[flip] *= -1
    sun = np.array([0.35, -0.45, 0.82])
    sun /= np.linalg.norm(sun)
    lambert = np.clip(normals @ sun, 0, 1)
    rgb = colour * (0.68 + 0.32 * lambert)[:, None] + rng.normal(0, 6, (n, 3))
    incidence = np.abs((normals * d).sum(1))
    intensity = np.clip(refl * (0.35 + 0.65 * incidence) + rng.normal(0, 0.02, n), 0, 1)
    return p, normals, labels, instances, np.clip(rgb + 0.5, 0, 255).astype(np.uint8), intensity.astype(np.float32)
