"""Simulated airborne and mobile LiDAR: rays, ray casting against the block, hit sampling."""

from __future__ import annotations

import numpy as np

from scene_kd.errors import SceneKDError
from scene_kd.scene.synthetic.layout import _Block
from scene_kd.scene.synthetic.primitives import _hit_blob, _hit_convex, _hit_cyl


def _airborne_rays(blk: _Block, rng, n: int):
    """Near-nadir rays from four flight lines (two along x, two along y) at ~450 m, +-22 deg across track."""
    X, Y = blk.size
    lines = [(0, 18.0), (0, 66.0), (1, 30.0), (1, 80.0)]
    which = rng.integers(len(lines), size=n)
    target = np.stack([rng.uniform(-2, X + 2, n), rng.uniform(-2, Y + 2, n), np.zeros(n)], 1)
    H = 450.0
    along = np.array([lines[i][0] for i in range(len(lines))])[which]
    pos = np.array([lines[i][1] for i in range(len(lines))])[which]
    pitch = H * np.tan(np.radians(rng.uniform(-3, 3, n)))
    o = np.empty((n, 3))
    o[:, 2] = H
    o[:, 0] = np.where(along == 0, target[:, 0] + pitch, pos)
    o[:, 1] = np.where(along == 0, pos, target[:, 1] + pitch)
    d = target - o
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    return o, d, np.full(n, 600.0)


def _mobile_rays(blk: _Block, rng, n: int):
    """A roof-mounted profiler driving both lanes: rays in the plane across the road, none into the vehicle."""
    X = blk.size[0]
    lane = np.where(rng.random(n) < 0.5, blk.road_y - 1.75, blk.road_y + 1.75)
    x = rng.uniform(-8, X + 8, n)
    g, _ = blk.surface(x, lane)
    o = np.stack([x, lane, g + 2.4], 1)
    theta = np.radians(rng.uniform(-55, 235, n))  # exclude 35 deg either side of straight down (-90)
    d = np.stack([rng.uniform(-0.02, 0.02, n), np.cos(theta), np.sin(theta)], 1)
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    return o, d, np.full(n, 80.0)


def _clip_to_box(o, d, tmax, lo, hi):
    """Ray parameter interval [t0, t1] inside the box lo..hi (t0 > t1 when outside)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        ta = (lo - o) / d
        tb = (hi - o) / d
    tmin = np.where(np.isnan(ta), -np.inf, np.minimum(ta, tb))
    tmx = np.where(np.isnan(tb), np.inf, np.maximum(ta, tb))
    # a ray parallel to a slab and outside it never enters
    par = (d == 0) & ((o < lo) | (o > hi))
    t0 = np.maximum(tmin.max(1), 0.0)
    t1 = np.minimum(tmx.min(1), tmax)
    t1 = np.where(par.any(1), -np.inf, t1)
    return t0, t1


def _ground_hits(blk: _Block, o, d, t0, t1, hb, steps: int = 24, chunk: int = 40_000):
    """First crossing of each ray with the terrain within [t0, t1]: distance [N] (inf if none).

    March ``steps`` equal steps (a quarter of that for steep rays) through the part of the ray inside the
    terrain's height slab (all steps at once, in chunks of rays), then bisect the first bracket and finish with
    one linear interpolation.
    """
    n = len(o)
    with np.errstate(divide="ignore", invalid="ignore"):
        ta = (hb[0] - o[:, 2]) / d[:, 2]
        tb = (hb[1] - o[:, 2]) / d[:, 2]
    in_slab = (o[:, 2] >= hb[0]) & (o[:, 2] <= hb[1])
    flat = d[:, 2] == 0
    s0 = np.where(flat, np.where(in_slab, -np.inf, np.inf), np.minimum(ta, tb))
    s1 = np.where(flat, np.where(in_slab, np.inf, -np.inf), np.maximum(ta, tb))
    lo, hi = np.maximum(t0, s0), np.minimum(t1, s1)
    t_hit = np.full(n, np.inf)
    live = hi > lo
    steep = np.abs(d[:, 2]) > 0.5  # short path through the slab: fewer marching steps
    groups = [(np.flatnonzero(live & steep), max(steps // 4, 2)), (np.flatnonzero(live & ~steep), steps)]
    jobs = [(ids[c : c + chunk], count) for ids, count in groups for c in range(0, len(ids), chunk)]
    for r, n_steps in jobs:
        frac = np.arange(n_steps + 1) / n_steps
        ox, oy, oz = o[r, 0:1], o[r, 1:2], o[r, 2:3]
        dx, dy, dz = d[r, 0:1], d[r, 1:2], d[r, 2:3]
        t = lo[r, None] + (hi[r] - lo[r])[:, None] * frac[None, :]  # [m, steps+1]
        f = oz + t * dz - blk.raster_height(ox + t * dx, oy + t * dy)
        below = f <= 0
        k = below.argmax(1)
        ok = below[np.arange(len(r)), k] & (k > 0)
        rows = np.flatnonzero(ok)
        a = t[rows, k[rows] - 1]
        b = t[rows, k[rows]]
        ox, oy, oz, dx, dy, dz = (v[rows, 0] for v in (ox, oy, oz, dx, dy, dz))

        def fn(tt, ox=ox, oy=oy, oz=oz, dx=dx, dy=dy, dz=dz):
            return oz + tt * dz - blk.raster_height(ox + tt * dx, oy + tt * dy)

        for _ in range(10):
            m = 0.5 * (a + b)
            above = fn(m) > 0
            a = np.where(above, m, a)
            b = np.where(above, b, m)
        fa, fb = fn(a), fn(b)
        with np.errstate(divide="ignore", invalid="ignore"):
            tt = np.where(fa - fb > 1e-12, a + (b - a) * fa / (fa - fb), b)
        t_hit[r[rows]] = np.clip(tt, a, b)
    return t_hit


def _cast(blk: _Block, o, d, tmax, hb, rng):
    """Closest hit of each ray against terrain and primitives: (keep mask, t, prim index (-1 ground), aux).

    Culling: rays are split by their dominant horizontal direction and sorted along the other horizontal axis
    (where their in-block segments are short); each object's bounding box then selects a contiguous slice.
    """
    X, Y = blk.size
    zmax = max(p.hi[2] for p in blk.prims) + 1
    t0, t1 = _clip_to_box(o, d, tmax, np.array([0.0, 0.0, hb[0]]), np.array([X, Y, zmax]))
    t_best = _ground_hits(blk, o, d, t0, t1, hb)
    prim_best = np.full(len(o), -1, dtype=np.int64)
    aux_best = np.zeros(len(o), dtype=np.int64)
    inside = t1 > t0
    p0 = o + np.where(inside, t0, 0)[:, None] * d
    p1 = o + np.where(inside, t1, 0)[:, None] * d
    seg_lo, seg_hi = np.minimum(p0, p1), np.maximum(p0, p1)
    groups = blk.prim_groups()
    for axis, sel in ((0, inside & (np.abs(d[:, 0]) <= np.abs(d[:, 1]))), (1, inside & (np.abs(d[:, 0]) > np.abs(d[:, 1])))):
        idx = np.flatnonzero(sel)
        if len(idx) == 0:
            continue
        order = idx[np.argsort(seg_lo[idx, axis], kind="stable")]
        keys = seg_lo[order, axis]
        span = float((seg_hi[idx, axis] - seg_lo[idx, axis]).max())
        for lo, hi, members in groups:
            a = np.searchsorted(keys, lo[axis] - span - 1e-6, "left")
            b = np.searchsorted(keys, hi[axis] + 1e-6, "right")
            cand = order[a:b]
            if len(cand) == 0:
                continue
            m = ((seg_hi[cand] >= lo - 1e-6) & (seg_lo[cand] <= hi + 1e-6)).all(1)
            cand = cand[m]
            if len(cand) == 0:
                continue
            oc, dc = o[cand], d[cand]
            for pi in members:
                p = blk.prims[pi]
                if p.kind == "convex":
                    t, aux = _hit_convex(oc, dc, p)
                elif p.kind == "cyl":
                    t, aux = _hit_cyl(oc, dc, p)
                else:
                    t, aux = _hit_blob(oc, dc, p, rng)
                better = t < t_best[cand]
                w = cand[better]
                t_best[w] = t[better]
                prim_best[w] = pi
                aux_best[w] = aux[better]
    hit = np.isfinite(t_best)
    pts = o + np.where(hit, t_best, 0)[:, None] * d
    keep = hit & (pts[:, 0] >= 0) & (pts[:, 0] <= X) & (pts[:, 1] >= 0) & (pts[:, 1] <= Y)
    return keep, t_best, prim_best, aux_best


def _scan(blk: _Block, rng, make_rays, target: int, hb, scanner_id: int) -> dict[str, np.ndarray]:
    """Cast batches of rays until ``target`` hits exist, then keep a random ``target`` of them."""
    got: list[dict[str, np.ndarray]] = []
    total, rate, tries = 0, 0.6, 0
    while total < target:
        tries += 1
        if tries > 30:
            raise SceneKDError("synthetic scanner produced too few hits (internal error)")
        n = int((target - total) / max(rate, 0.05) * 1.15) + 64
        o, d, tmax = make_rays(blk, rng, n)
        keep, t, prim, aux = _cast(blk, o, d, tmax, hb, rng)
        rate = max(keep.mean(), 0.01)
        got.append({"o": o[keep], "d": d[keep], "t": t[keep], "prim": prim[keep], "aux": aux[keep]})
        total += int(keep.sum())
    cat = {k: np.concatenate([g[k] for g in got]) for k in got[0]}
    pick = np.sort(rng.choice(total, size=target, replace=False))
    out = {k: v[pick] for k, v in cat.items()}
    out["scanner"] = np.full(target, scanner_id, dtype=np.uint8)
    return out
