"""``make_tabletop``: a table with a mug (with handle), a bowl, a box, a bottle and a banana, plus ground truth."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from scene_kd.errors import SceneKDError
from scene_kd.geometry import quat_xyzw_from_matrix
from scene_kd.scene.synthetic.labels import (
    BANANA,
    BOTTLE,
    BOWL,
    BOX,
    MUG,
    MUG_HANDLE,
    TABLE,
    TABLETOP_CLASSES,
)
from scene_kd.scene.synthetic.primitives import _rot_z, _unit
from scene_kd.scene.types import PointCloud


def _cyl_side(n, rng, r, z0, z1, inward=False):
    th = rng.uniform(0, 2 * np.pi, n)
    z = rng.uniform(z0, z1, n)
    nrm = np.stack([np.cos(th), np.sin(th), np.zeros(n)], 1)
    return np.stack([r * np.cos(th), r * np.sin(th), z], 1), (-nrm if inward else nrm)


def _annulus(n, rng, r0, r1, z, up=True):
    th = rng.uniform(0, 2 * np.pi, n)
    rr = np.sqrt(rng.uniform(r0 * r0, r1 * r1, n))
    nrm = np.tile([0.0, 0.0, 1.0 if up else -1.0], (n, 1))
    return np.stack([rr * np.cos(th), rr * np.sin(th), np.full(n, z)], 1), nrm


def _frustum(n, rng, r0, r1, z0, z1):
    """Area-uniform side of a cone frustum from radius r0 at z0 to r1 at z1."""
    u = rng.uniform(0, 1, n)
    if abs(r1 - r0) < 1e-9:
        s = u
    else:
        s = (np.sqrt(r0 * r0 + u * (r1 * r1 - r0 * r0)) - r0) / (r1 - r0)
    r = r0 + (r1 - r0) * s
    z = z0 + (z1 - z0) * s
    th = rng.uniform(0, 2 * np.pi, n)
    alpha = math.atan2(r0 - r1, z1 - z0)
    nrm = np.stack([np.cos(th) * math.cos(alpha), np.sin(th) * math.cos(alpha), np.full(n, math.sin(alpha))], 1)
    return np.stack([r * np.cos(th), r * np.sin(th), z], 1), nrm


def _sphere_zone(n, rng, R, cz, z0, z1, inward=False):
    """Area-uniform zone of a sphere (radius R, centre (0,0,cz)) between heights z0 < z1 (Archimedes: z uniform)."""
    z = rng.uniform(z0, z1, n)
    th = rng.uniform(0, 2 * np.pi, n)
    rr = np.sqrt(np.maximum(R * R - (z - cz) ** 2, 0))
    pts = np.stack([rr * np.cos(th), rr * np.sin(th), z], 1)
    nrm = _unit(pts - np.array([0, 0, cz]))
    return pts, (-nrm if inward else nrm)


def _box_faces(n, rng, ex, ey, ez):
    """Area-uniform samples on the five visible faces (not the bottom) of a box on z=0, centred in x/y."""
    areas = np.array([ex * ey, ey * ez, ey * ez, ex * ez, ex * ez])
    face = rng.choice(5, size=n, p=areas / areas.sum())
    u, v = rng.uniform(-0.5, 0.5, n), rng.uniform(-0.5, 0.5, n)
    pts = np.zeros((n, 3))
    nrm = np.zeros((n, 3))
    f0 = face == 0
    pts[f0] = np.stack([u * ex, v * ey, np.full(n, ez)], 1)[f0]
    nrm[f0] = (0, 0, 1)
    for k, sgn in ((1, 1), (2, -1)):
        f = face == k
        pts[f] = np.stack([np.full(n, sgn * ex / 2), u * ey, (v + 0.5) * ez], 1)[f]
        nrm[f] = (sgn, 0, 0)
    for k, sgn in ((3, 1), (4, -1)):
        f = face == k
        pts[f] = np.stack([u * ex, np.full(n, sgn * ey / 2), (v + 0.5) * ez], 1)[f]
        nrm[f] = (0, sgn, 0)
    return pts, nrm


def _torus_part(n, rng, centre, R, rho, phi0, phi1, keep_fn):
    """Area-uniform samples on a torus section in the x-z plane (tube radius rho, ring radius R)."""
    out_p, out_n = [], []
    have = 0
    while have < n:
        m = 3 * (n - have) + 32
        phi = rng.uniform(phi0, phi1, m)
        psi = rng.uniform(0, 2 * np.pi, m)
        acc = rng.uniform(0, 1, m) < (R + rho * np.cos(psi)) / (R + rho)
        ring = np.stack([np.cos(phi), np.zeros(m), np.sin(phi)], 1)
        nrm = np.cos(psi)[:, None] * ring + np.sin(psi)[:, None] * np.array([0.0, 1.0, 0.0])
        pts = centre + R * ring + rho * nrm
        ok = acc & keep_fn(pts)
        out_p.append(pts[ok])
        out_n.append(nrm[ok])
        have += int(ok.sum())
    return np.concatenate(out_p)[:n], np.concatenate(out_n)[:n]


def _banana_surface(n, rng, Rc, span, rho_max, keep_bottom=False):
    """A tapered tube along a horizontal arc (a banana lying on the table); area-uniform by rejection."""
    out_p, out_n = [], []
    have = 0

    def rho(s):
        return 0.004 + (rho_max - 0.004) * np.sin(np.pi * s) ** 0.6

    while have < n:
        m = 4 * (n - have) + 64
        s = rng.uniform(0, 1, m)
        psi = rng.uniform(0, 2 * np.pi, m)
        a = (s - 0.5) * span
        r = rho(s)
        radial = np.stack([np.cos(a), np.sin(a), np.zeros(m)], 1)
        nrm = np.cos(psi)[:, None] * radial + np.sin(psi)[:, None] * np.array([0.0, 0.0, 1.0])
        centre = np.stack([Rc * np.cos(a) - Rc, Rc * np.sin(a), np.full(m, rho_max)], 1)
        pts = centre + r[:, None] * nrm
        weight = r * (Rc + r * np.cos(psi)) / (rho_max * (Rc + rho_max))
        ok = rng.uniform(0, 1, m) < weight
        if not keep_bottom:
            ok &= pts[:, 2] > 0.003  # the contact strip is hidden by the table
        out_p.append(pts[ok])
        out_n.append(nrm[ok])
        have += int(ok.sum())
    return np.concatenate(out_p)[:n], np.concatenate(out_n)[:n]


@dataclass
class _Piece:
    """A sampleable surface of an object in its local frame (z up, base on z=0)."""

    sample: object  # callable (n, rng) -> (pts, normals)
    area: float
    label: int
    colour: tuple[float, float, float]
    part: str = ""


def _make_objects(rng) -> list[dict]:
    """Object specs: name, class, pieces, local OBB (lo, hi)."""
    objs = []
    # mug
    r, h, t = rng.uniform(0.036, 0.045), rng.uniform(0.085, 0.11), 0.004
    Rh, rho = rng.uniform(0.024, 0.03), 0.006
    hc = np.array([r, 0.0, h * 0.55])
    mug_col = [(235, 235, 230), (180, 30, 40), (30, 70, 160), (40, 120, 90)][rng.integers(4)]
    outside = lambda p, r=r: p[:, 0] ** 2 + p[:, 1] ** 2 > r * r  # noqa: E731
    objs.append({
        "name": "mug", "class_id": MUG, "colour": mug_col,
        "pieces": [
            _Piece(lambda n, g, r=r, h=h: _cyl_side(n, g, r, 0.0, h), 2 * np.pi * r * h, MUG, mug_col),
            _Piece(lambda n, g, r=r, h=h: _cyl_side(n, g, r - t, 0.006, h, inward=True), 2 * np.pi * (r - t) * h, MUG,
                   mug_col),
            _Piece(lambda n, g, r=r: _annulus(n, g, 0.0, r - t, 0.006), np.pi * (r - t) ** 2, MUG, mug_col),
            _Piece(lambda n, g, r=r, h=h: _annulus(n, g, r - t, r, h), np.pi * (r * r - (r - t) ** 2), MUG, mug_col),
            _Piece(lambda n, g, c=hc, R=Rh, k=outside: _torus_part(n, g, c, R, rho, -np.pi / 2 - 0.35,
                                                                   np.pi / 2 + 0.35, k),
                   2 * np.pi * rho * Rh * (np.pi + 0.7) * 0.85, MUG_HANDLE, mug_col, part="handle"),
        ],
        "lo": np.array([-r, -r, 0.0]), "hi": np.array([r + Rh + rho, r, h]),
        "handle": {"lo": np.array([r - 0.002, -rho, hc[2] - Rh - rho]), "hi": np.array([r + Rh + rho, rho, hc[2] + Rh + rho])},
    })
    # bowl: sphere zone, flat foot at z=0
    R, tb = rng.uniform(0.065, 0.085), 0.005
    zf = 0.012
    zr = 0.8 * R
    bowl_col = [(230, 225, 210), (200, 120, 60), (90, 140, 190)][rng.integers(3)]
    rim_out = math.sqrt(R * R - (R - zr) ** 2)
    rim_in = math.sqrt((R - tb) ** 2 - (R - zr) ** 2)
    objs.append({
        "name": "bowl", "class_id": BOWL, "colour": bowl_col,
        "pieces": [
            _Piece(lambda n, g, R=R: _sphere_zone(n, g, R, R - zf, zf - zf, zr - zf), 2 * np.pi * R * (zr - zf), BOWL,
                   bowl_col),
            _Piece(lambda n, g, R=R: _sphere_zone(n, g, R - tb, R - zf, tb + 0.002, zr - zf, inward=True),
                   2 * np.pi * (R - tb) * (zr - zf - tb), BOWL, bowl_col),
            _Piece(lambda n, g: _annulus(n, g, rim_in, rim_out, zr - zf), np.pi * (rim_out**2 - rim_in**2), BOWL,
                   bowl_col),
        ],
        "lo": np.array([-rim_out, -rim_out, 0.0]), "hi": np.array([rim_out, rim_out, zr - zf]),
    })
    # box
    ex, ey, ez = rng.uniform(0.10, 0.18), rng.uniform(0.05, 0.09), rng.uniform(0.06, 0.2)
    box_col = [(200, 60, 40), (230, 190, 60), (70, 120, 180), (160, 120, 80)][rng.integers(4)]
    objs.append({
        "name": "box", "class_id": BOX, "colour": box_col,
        "pieces": [_Piece(lambda n, g: _box_faces(n, g, ex, ey, ez), ex * ey + 2 * ez * (ex + ey), BOX, box_col)],
        "lo": np.array([-ex / 2, -ey / 2, 0.0]), "hi": np.array([ex / 2, ey / 2, ez]),
    })
    # bottle
    rb, hb = rng.uniform(0.03, 0.038), rng.uniform(0.15, 0.2)
    rn, top = 0.012, hb + 0.05
    bottle_col = [(40, 120, 60), (120, 80, 40), (180, 200, 210)][rng.integers(3)]
    slant = math.hypot(rb - rn, 0.05)
    objs.append({
        "name": "bottle", "class_id": BOTTLE, "colour": bottle_col,
        "pieces": [
            _Piece(lambda n, g: _cyl_side(n, g, rb, 0.0, hb), 2 * np.pi * rb * hb, BOTTLE, bottle_col),
            _Piece(lambda n, g: _frustum(n, g, rb, rn, hb, top), np.pi * (rb + rn) * slant, BOTTLE, bottle_col),
            _Piece(lambda n, g: _cyl_side(n, g, rn, top, top + 0.035), 2 * np.pi * rn * 0.035, BOTTLE, bottle_col),
            _Piece(lambda n, g: _cyl_side(n, g, rn + 0.002, top + 0.035, top + 0.055), 2 * np.pi * (rn + 0.002) * 0.02,
                   BOTTLE, (220, 220, 220)),
            _Piece(lambda n, g: _annulus(n, g, 0, rn + 0.002, top + 0.055), np.pi * (rn + 0.002) ** 2, BOTTLE,
                   (220, 220, 220)),
        ],
        "lo": np.array([-rb, -rb, 0.0]), "hi": np.array([rb, rb, top + 0.055]),
    })
    # banana
    Rc, span, rmax = rng.uniform(0.1, 0.13), math.radians(rng.uniform(85, 110)), rng.uniform(0.016, 0.02)
    dense, _ = _banana_surface(20000, np.random.default_rng(12345), Rc, span, rmax, keep_bottom=True)
    area = 2 * np.pi * Rc * span * (0.004 + (rmax - 0.004) * 0.75)
    objs.append({
        "name": "banana", "class_id": BANANA, "colour": (228, 200, 60),
        "pieces": [_Piece(lambda n, g: _banana_surface(n, g, Rc, span, rmax), area, BANANA, (228, 200, 60))],
        "lo": np.append(dense.min(0)[:2] - 0.0015, 0.0), "hi": dense.max(0) + 0.0015,
    })
    return objs


def _split(total: int, weights) -> list[int]:
    """Largest-remainder split of ``total`` by weights (deterministic, sums exactly)."""
    w = np.asarray(weights, float)
    raw = total * w / w.sum()
    base = np.floor(raw).astype(int)
    rest = total - base.sum()
    base[np.argsort(-(raw - base), kind="stable")[:rest]] += 1
    return base.tolist()


def make_tabletop(seed: int = 0, points: int = 60_000, origin: tuple[float, float, float] | None = None,
                  noise: float = 0.0005) -> tuple[PointCloud, dict]:
    """A table with a mug (and its handle), bowl, box, bottle and banana at random yaw, without overlap.

    Returns (cloud, sidecar). The cloud has exactly ``points`` points (metres; 40% on the table, 60% on the
    objects by area), rgb, normals, labels in TABLETOP_CLASSES (the mug handle is its own class and instance),
    instances (table 0, objects 1..5, handle 6). The sidecar (JSON-ready) holds, per object: name, class_id,
    instance_id, position (world, the object frame origin = centre of its base), rotation (3x3), quaternion_xyzw,
    extents (full OBB size in its own frame), obb_center (world), point_count; the handle has ``parent``.
    """
    if not isinstance(points, (int, np.integer)) or points < 100:
        raise SceneKDError(f"make_tabletop: points must be an integer >= 100, got {points!r}")
    rng = np.random.default_rng(seed)
    off = np.zeros(3) if origin is None else np.asarray(origin, dtype=np.float64).reshape(3)
    tx, ty = rng.uniform(1.0, 1.5), rng.uniform(0.7, 0.95)
    top_z, thick, leg = 0.74, 0.03, 0.05
    objs = _make_objects(rng)
    # ---- placement: random yaw, the OBB's circumscribed circle inside the top and apart from the others ----
    placed = []
    for ob in objs:
        lo, hi = ob["lo"], ob["hi"]
        c_local = (lo + hi) / 2
        rad = 0.5 * math.hypot(hi[0] - lo[0], hi[1] - lo[1])
        for _ in range(5000):
            yaw = rng.uniform(-math.pi, math.pi)
            R = _rot_z(yaw)
            cxy = rng.uniform([-tx / 2 + rad + 0.02, -ty / 2 + rad + 0.02], [tx / 2 - rad - 0.02, ty / 2 - rad - 0.02])
            if all(math.hypot(*(cxy - q["cxy"])) > rad + q["rad"] + 0.015 for q in placed):
                break
        else:
            raise SceneKDError("make_tabletop: could not place the objects without overlap (internal error)")
        pos = np.array([cxy[0], cxy[1], 0.0]) - R @ np.array([c_local[0], c_local[1], 0.0])
        pos[2] = top_z
        placed.append({"cxy": cxy, "rad": rad, "R": R, "pos": pos, "yaw": yaw})
    # ---- allocate points ----
    n_obj_total = int(round(points * 0.6))
    pieces = [(i, pc) for i, ob in enumerate(objs) for pc in ob["pieces"]]
    counts = _split(n_obj_total, [pc.area for _, pc in pieces])
    xyz, nrm, lab, ins, col = [], [], [], [], []
    for (i, pc), k in zip(pieces, counts, strict=True):
        if k == 0:
            continue
        p, n = pc.sample(k, rng)
        R, pos = placed[i]["R"], placed[i]["pos"]
        xyz.append(p @ R.T + pos)
        nrm.append(n @ R.T)
        lab.append(np.full(k, pc.label, np.int32))
        inst = 6 if pc.part == "handle" else i + 1
        ins.append(np.full(k, inst, np.int32))
        col.append(np.tile(np.asarray(pc.colour, float), (k, 1)))
    # ---- table: top (minus what the objects cover), edges, underside, legs ----
    n_table = points - n_obj_total
    t_areas = [tx * ty, 2 * thick * (tx + ty), tx * ty * 0.25, 4 * 4 * leg * (top_z - thick)]
    t_counts = _split(n_table, t_areas)
    # top: oversample, drop covered points, keep exactly t_counts[0]
    m = int(t_counts[0] * 1.4) + 16
    top = np.stack([rng.uniform(-tx / 2, tx / 2, m), rng.uniform(-ty / 2, ty / 2, m), np.full(m, top_z)], 1)
    covered = np.zeros(m, bool)
    for ob, pl in zip(objs, placed, strict=True):
        loc = (top - pl["pos"]) @ pl["R"]
        if ob["name"] in ("mug", "bottle"):
            covered |= np.hypot(loc[:, 0], loc[:, 1]) < ob["hi"][1]
        elif ob["name"] == "bowl":
            covered |= np.hypot(loc[:, 0], loc[:, 1]) < 0.6 * ob["hi"][0]
        elif ob["name"] == "box":
            covered |= (np.abs(loc[:, 0]) < ob["hi"][0]) & (np.abs(loc[:, 1]) < ob["hi"][1])
    top = top[~covered][: t_counts[0]]
    tn = np.tile([0.0, 0.0, 1.0], (len(top), 1))
    edge_p, edge_n = _box_faces(t_counts[1], rng, tx, ty, thick)
    side = np.abs(edge_n[:, 2]) < 0.5
    edge_p, edge_n = edge_p[side], edge_n[side]  # faces of the slab's rim
    edge_p[:, 2] += top_z - thick
    under = np.stack([rng.uniform(-tx / 2, tx / 2, t_counts[2]), rng.uniform(-ty / 2, ty / 2, t_counts[2]),
                      np.full(t_counts[2], top_z - thick)], 1)
    un = np.tile([0.0, 0.0, -1.0], (len(under), 1))
    legs_p, legs_n = [], []
    for k, (sx, sy) in enumerate([(1, 1), (1, -1), (-1, 1), (-1, -1)]):
        q, qn = _box_faces(_split(t_counts[3], [1, 1, 1, 1])[k], rng, leg, leg, top_z - thick)
        q = q[np.abs(qn[:, 2]) < 0.5]
        qn = qn[np.abs(qn[:, 2]) < 0.5]
        q[:, 0] += sx * (tx / 2 - 0.08)
        q[:, 1] += sy * (ty / 2 - 0.08)
        legs_p.append(q)
        legs_n.append(qn)
    tp = np.concatenate([top, edge_p, under] + legs_p)
    tnn = np.concatenate([tn, edge_n, un] + legs_n)
    short = points - n_obj_total - len(tp)
    if short > 0:  # top ran short after removing covered points, or faces dropped: top up on the top surface
        extra = np.stack([rng.uniform(-tx / 2, tx / 2, 4 * short + 16), rng.uniform(-ty / 2, ty / 2, 4 * short + 16),
                          np.full(4 * short + 16, top_z)], 1)
        free = np.ones(len(extra), bool)
        for ob, pl in zip(objs, placed, strict=True):
            loc = (extra - pl["pos"]) @ pl["R"]
            free &= ~((np.abs(loc[:, 0] - (ob["lo"][0] + ob["hi"][0]) / 2) < (ob["hi"][0] - ob["lo"][0]) / 2)
                      & (np.abs(loc[:, 1] - (ob["lo"][1] + ob["hi"][1]) / 2) < (ob["hi"][1] - ob["lo"][1]) / 2))
        tp = np.concatenate([tp, extra[free][:short]])
        tnn = np.concatenate([tnn, np.tile([0.0, 0.0, 1.0], (short, 1))])
    wood = np.array([150, 105, 70], float)
    grain = 12 * np.sin(tp[:, 0] * 90 + 3 * np.sin(tp[:, 1] * 20))
    xyz.insert(0, tp)
    nrm.insert(0, tnn)
    lab.insert(0, np.full(len(tp), TABLE, np.int32))
    ins.insert(0, np.zeros(len(tp), np.int32))
    col.insert(0, wood + grain[:, None] * np.array([1.0, 0.8, 0.6]))
    xyz_a, nrm_a = np.concatenate(xyz), np.concatenate(nrm)
    xyz_a = xyz_a + rng.normal(0, noise, xyz_a.shape)
    light = _unit(np.array([0.3, -0.4, 0.87]))
    rgb = np.concatenate(col) * (0.7 + 0.3 * np.clip(nrm_a @ light, 0, 1))[:, None] + rng.normal(0, 5, xyz_a.shape)
    labels = np.concatenate(lab)
    instances = np.concatenate(ins)
    cloud = PointCloud.from_world(
        xyz_a + off, rgb=np.clip(rgb + 0.5, 0, 255).astype(np.uint8), normals=_unit(nrm_a).astype(np.float32),
        labels=labels, label_names=dict(TABLETOP_CLASSES), instances=instances,
        meta={"synthetic": "tabletop", "seed": int(seed), "world_origin": off.tolist(), "units": "m"},
    )
    # ---- sidecar ----
    def entry(name, class_id, inst, R, pos, lo, hi, **more):
        c_local = (lo + hi) / 2
        return {"name": name, "class_id": int(class_id), "instance_id": int(inst),
                "position": (pos + off).tolist(), "rotation": R.tolist(), "quaternion_xyzw": quat_xyzw_from_matrix(R),
                "extents": (hi - lo).tolist(), "obb_center": (R @ c_local + pos + off).tolist(),
                "point_count": int((instances == inst).sum()), **more}

    entries = [entry("table", TABLE, 0, np.eye(3), np.array([0.0, 0.0, 0.0]), np.array([-tx / 2, -ty / 2, 0.0]),
                     np.array([tx / 2, ty / 2, top_z]))]
    for i, (ob, pl) in enumerate(zip(objs, placed, strict=True)):
        entries.append(entry(ob["name"], ob["class_id"], i + 1, pl["R"], pl["pos"], ob["lo"], ob["hi"],
                             yaw=float(pl["yaw"])))
        if "handle" in ob:
            hnd = ob["handle"]
            entries.append(entry("mug handle", MUG_HANDLE, 6, pl["R"], pl["pos"], hnd["lo"], hnd["hi"],
                                 parent="mug", parent_instance_id=i + 1, yaw=float(pl["yaw"])))
    # the mug entry's box and point count include its handle
    mug = next(e for e in entries if e["name"] == "mug")
    mug["point_count"] += int((instances == 6).sum())
    mug["part_instance_ids"] = [6]
    sidecar = {"kind": "tabletop", "seed": int(seed), "units": "m", "origin": off.tolist(),
               "up": [0.0, 0.0, 1.0], "table_top_z": float(top_z + off[2]),
               "label_names": {str(k): v for k, v in TABLETOP_CLASSES.items()}, "objects": entries}
    return cloud, sidecar
