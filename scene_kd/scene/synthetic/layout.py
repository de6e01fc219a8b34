"""The urban block's layout: terrain, road, sidewalks, buildings, trees, cars, poles, lawns."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from scene_kd.scene.synthetic.labels import (
    _CAR_BODY,
    _CAR_CABIN,
    _CROWN,
    _FACADE,
    _LAMP,
    _METAL,
    _SIGN,
    _TRUNK,
    _WHEEL,
    BUILDING,
    CAR,
    GRASS,
    POLE,
    ROAD,
    SIDEWALK,
    TREE,
)
from scene_kd.scene.synthetic.primitives import _box, _box_planes, _convex, _Prim, _rot_z


@dataclass
class _Block:
    """Layout of the block in local metres: x along the road, y across; z up from the terrain datum."""

    size: tuple[float, float] = (110.0, 84.0)
    road_y: float = 42.0  # road centre line
    road_half: float = 6.0  # carriageway half width (two lanes + parking lanes)
    sidewalk: float = 4.0
    slope: tuple[float, float] = (0.022, 0.0)
    wave_phase: tuple[float, float] = (0.0, 0.0)
    mounds: list[tuple[float, float, float, float]] = field(default_factory=list)  # (x, y, height, sigma)
    planters: list[tuple[float, float, float, float, float]] = field(default_factory=list)  # x0, y0, x1, y1, height
    paths: list[tuple[float, float, float, float]] = field(default_factory=list)  # sidewalk-labelled paths in lots
    crosswalk_x: float = 60.0
    prims: list[_Prim] = field(default_factory=list)
    objects: list[dict] = field(default_factory=list)  # per-instance ground truth (local coords, converted later)

    # ---- terrain ----
    def smooth_height(self, x, y):
        """Terrain without curbs/planters: slope, gentle waves, park mounds, north lots terracing up. [M]."""
        sx, sy = self.slope
        h = sx * x + sy * y
        h = h + 0.25 * np.sin(x / 13.0 + self.wave_phase[0]) * np.cos(y / 19.0 + self.wave_phase[1])
        h = h + 0.03 * np.maximum(y - (self.road_y + self.road_half + self.sidewalk), 0.0)
        for mx, my, mh, ms in self.mounds:
            h = h + mh * np.exp(-((x - mx) ** 2 + (y - my) ** 2) / (2 * ms * ms))
        return h

    def surface(self, x, y):
        """Ground height [M] and ground label [M] at (x, y), with road camber, curbs, paths and planters."""
        dy = np.abs(y - self.road_y)
        on_road = dy <= self.road_half
        on_walk = (~on_road) & (dy <= self.road_half + self.sidewalk)
        off = np.where(on_road, 0.10 * (1 - (dy / self.road_half) ** 2),
                       np.where(on_walk, 0.15 + 0.02 * (dy - self.road_half) / self.sidewalk, 0.20))
        label = np.where(on_road, ROAD, np.where(on_walk, SIDEWALK, GRASS))
        lot = ~(on_road | on_walk)
        for x0, y0, x1, y1 in self.paths:
            inside = lot & (x >= x0) & (x <= x1) & (y >= y0) & (y <= y1)
            label = np.where(inside, SIDEWALK, label)
            off = np.where(inside, 0.22, off)
        for x0, y0, x1, y1, ph in self.planters:
            inside = lot & (x >= x0) & (x <= x1) & (y >= y0) & (y <= y1)
            wall = inside & ((x < x0 + 0.25) | (x > x1 - 0.25) | (y < y0 + 0.25) | (y > y1 - 0.25))
            off = np.where(inside, 0.2 + ph, off)
            off = np.where(wall, 0.25 + ph, off)
            label = np.where(inside, np.where(wall, SIDEWALK, GRASS), label)
        return self.smooth_height(x, y) + off, label

    def prim_groups(self) -> list[tuple[np.ndarray, np.ndarray, list[int]]]:
        """Primitives grouped by instance: (bounds lo [3], bounds hi [3], prim indices), for ray culling."""
        by_inst: dict[int, list[int]] = {}
        for i, p in enumerate(self.prims):
            by_inst.setdefault(p.instance, []).append(i)
        return [(np.min([self.prims[i].lo for i in m], 0), np.max([self.prims[i].hi for i in m], 0), m)
                for m in by_inst.values()]

    def build_raster(self, step: float = 0.1) -> tuple[float, float]:
        """Tabulate the ground height on a grid (for fast ray marching); returns the height bounds (lo, hi)."""
        nx, ny = int(round(self.size[0] / step)) + 1, int(round(self.size[1] / step)) + 1
        xs, ys = np.meshgrid(np.arange(nx) * step, np.arange(ny) * step, indexing="ij")
        h, _ = self.surface(xs.ravel(), ys.ravel())
        self._raster = (step, h.reshape(nx, ny))
        return float(h.min()) - 0.1, float(h.max()) + 0.3

    def raster_height(self, x, y):
        """Bilinear ground height from the grid [M] (positions outside are clamped to the block)."""
        step, H = self._raster
        fx = np.clip(x / step, 0, H.shape[0] - 1.001)
        fy = np.clip(y / step, 0, H.shape[1] - 1.001)
        i, j = fx.astype(np.int64), fy.astype(np.int64)
        fx -= i
        fy -= j
        flat = H.ravel()
        k = i * H.shape[1] + j
        return (flat[k] * (1 - fx) + flat[k + H.shape[1]] * fx) * (1 - fy) \
            + (flat[k + 1] * (1 - fx) + flat[k + H.shape[1] + 1] * fx) * fy

    def ground_normals(self, x, y):
        e = 0.05
        gx = (self.smooth_height(x + e, y) - self.smooth_height(x - e, y)) / (2 * e)
        gy = (self.smooth_height(x, y + e) - self.smooth_height(x, y - e)) / (2 * e)
        dy = y - self.road_y
        on_road = np.abs(dy) <= self.road_half
        gy = gy + np.where(on_road, -0.2 * dy / self.road_half**2, 0.0)  # camber
        n = np.stack([-gx, -gy, np.ones_like(x)], 1)
        return n / np.linalg.norm(n, axis=1, keepdims=True)

    def footprint_height(self, cx, cy, hx, hy, yaw):
        """(min, max) ground height under an oriented rectangle."""
        u, v = np.meshgrid(np.linspace(-hx, hx, 7), np.linspace(-hy, hy, 7))
        c, s = math.cos(yaw), math.sin(yaw)
        x = cx + c * u.ravel() - s * v.ravel()
        y = cy + s * u.ravel() + c * v.ravel()
        h, _ = self.surface(x, y)
        return float(h.min()), float(h.max())


_FACADE_COLOURS = [(214, 200, 170), (180, 92, 70), (232, 228, 218), (150, 150, 155), (196, 170, 128), (120, 88, 70)]
_FLAT_ROOF_COLOURS = [(96, 96, 92), (62, 62, 66), (128, 122, 112)]
_PITCHED_ROOF_COLOURS = [(158, 72, 52), (72, 76, 88), (120, 60, 45)]
_CAR_COLOURS = [(190, 25, 30), (25, 55, 150), (235, 235, 235), (22, 22, 25), (165, 168, 172), (40, 110, 60),
                (210, 160, 30), (95, 95, 100)]


class _Ids:
    def __init__(self) -> None:
        self.next = 0

    def __call__(self) -> int:
        self.next += 1
        return self.next - 1


def _add_building(blk: _Block, rng, ids: _Ids, cx, cy, hx, hy, yaw, wall_h, roof: str, front_sign: float):
    """A building (main wing + optional rear wing) of the given roof type; returns its footprint rectangles."""
    inst = ids()
    facade = _FACADE_COLOURS[rng.integers(len(_FACADE_COLOURS))]
    roof_col = (_PITCHED_ROOF_COLOURS if roof != "flat" else _FLAT_ROOF_COLOURS)[rng.integers(3)]
    R = _rot_z(yaw)
    wings = [(0.0, 0.0, hx, hy)]
    if rng.random() < 0.45 and hx > 6:  # L-shape: a rear wing at one end
        wx = hx * rng.uniform(0.35, 0.5)
        wy = rng.uniform(3.0, 6.0)
        side = rng.choice([-1.0, 1.0])
        wings.append((side * (hx - wx), -front_sign * (hy + wy - 0.3), wx, wy))
    rects = []
    footprint_area = facade_area = 0.0
    for k, (ox, oy, ax, ay) in enumerate(wings):
        t_xy = np.array([cx, cy]) + R[:2, :2] @ np.array([ox, oy])
        zmin, zmax = blk.footprint_height(t_xy[0], t_xy[1], ax, ay, yaw)
        base = zmin - 0.5
        eaves = zmax + wall_h * (1.0 if k == 0 else rng.uniform(0.55, 0.9))
        wing_roof = roof if k == 0 else ("flat" if rng.random() < 0.5 else roof)
        run = min(ax, ay)
        rise = run * math.tan(math.radians(rng.uniform(25, 42))) if wing_roof != "flat" else 0.0
        normals, offsets, corners = _box_planes([-ax, -ay, 0.0], [ax, ay, eaves - base + rise])
        normals, offsets = list(normals), list(offsets)
        if wing_roof != "flat":
            h_e = eaves - base
            along_x = ax >= ay  # ridge along the long axis
            if along_x:
                normals += [[0, rise, ay], [0, -rise, ay]]
                offsets += [rise * ay + ay * h_e] * 2
                if wing_roof == "hip":
                    normals += [[rise, 0, ay], [-rise, 0, ay]]
                    offsets += [rise * ax + ay * h_e] * 2
            else:
                normals += [[rise, 0, ax], [-rise, 0, ax]]
                offsets += [rise * ax + ax * h_e] * 2
                if wing_roof == "hip":
                    normals += [[0, rise, ax], [0, -rise, ax]]
                    offsets += [rise * ay + ax * h_e] * 2
        t = np.array([t_xy[0], t_xy[1], base])
        blk.prims.append(_convex(normals, offsets, corners, R, t, label=BUILDING, instance=inst, part=_FACADE,
                                 colour=facade, colour2=roof_col, base_z=base, wall_top=eaves))
        rects.append((t_xy[0], t_xy[1], ax, ay, yaw))
        if k == 0:
            z_lo, z_hi = zmin, eaves + rise
        footprint_area += 4 * ax * ay
        facade_area += 4 * (ax + ay) * (eaves - zmin)
    blk.objects.append({"instance": inst, "label": BUILDING, "center": [cx, cy, (z_lo + z_hi) / 2],
                        "half_extents": [hx, hy, (z_hi - z_lo) / 2],
                        "yaw": yaw, "roof": roof, "wall_height": wall_h, "wings": len(wings),
                        "footprint_area": footprint_area, "facade_area": facade_area})
    return rects


def _add_tree(blk: _Block, rng, ids: _Ids, x, y, crown_r, crown_h, trunk_h):
    inst = ids()
    g, _ = blk.surface(np.array([x]), np.array([y]))
    g = float(g[0])
    trunk_r = 0.08 + 0.05 * crown_r
    cz = g + trunk_h + crown_h
    leaf = (rng.uniform(35, 75), rng.uniform(85, 135), rng.uniform(25, 55))
    density = rng.uniform(0.45, 0.9)
    blk.prims.append(_Prim("cyl", TREE, inst, _TRUNK, lo=np.array([x - trunk_r, y - trunk_r, g - 0.3]),
                           hi=np.array([x + trunk_r, y + trunk_r, cz]), colour=(88, 66, 48),
                           center=np.array([x, y, 0.0]), radius=trunk_r))
    lumps = [(0.0, 0.0, 0.0, 1.0)]
    for _ in range(rng.integers(0, 3)):
        ang = rng.uniform(0, 2 * math.pi)
        lumps.append((0.3 * crown_r * math.cos(ang), 0.3 * crown_r * math.sin(ang), rng.uniform(0, 0.4) * crown_h,
                      rng.uniform(0.5, 0.7)))
    for ox, oy, oz, s in lumps:
        c = np.array([x + ox, y + oy, cz + oz])
        radii = np.array([crown_r * s, crown_r * s, crown_h * s])
        blk.prims.append(_Prim("blob", TREE, inst, _CROWN, lo=c - radii, hi=c + radii, colour=leaf, center=c,
                               radii=radii, density=density))
    blk.objects.append({"instance": inst, "label": TREE, "center": [x, y, g + trunk_h / 2 + crown_h],
                        "crown_radius": crown_r, "height": trunk_h + 2 * crown_h,
                        "half_extents": [crown_r, crown_r, trunk_h / 2 + crown_h]})


def _add_car(blk: _Block, rng, ids: _Ids, x, y, yaw):
    inst = ids()
    van = rng.random() < 0.2
    L = rng.uniform(4.6, 5.2) if van else rng.uniform(3.8, 4.8)
    W = rng.uniform(1.75, 1.95) if van else rng.uniform(1.65, 1.85)
    clear, body_top = 0.28, (1.05 if van else rng.uniform(0.85, 0.98))
    roof = rng.uniform(1.9, 2.2) if van else rng.uniform(1.38, 1.55)
    g, _ = blk.surface(np.array([x]), np.array([y]))
    t = np.array([x, y, float(g[0])])
    R = _rot_z(yaw)
    col = _CAR_COLOURS[rng.integers(len(_CAR_COLOURS))]
    glass = (38, 44, 54)
    hl, hw = L / 2, W / 2
    # body: box with chamfered nose and tail
    n, d, c = _box_planes([-hl, -hw, clear], [hl, hw, body_top])
    n, d = list(n), list(d)
    for sgn, run in ((1, 0.55), (-1, 0.35)):  # plane through (sgn*(hl-run), body_top) and (sgn*hl, body_top-0.25)
        nn = np.array([sgn * 0.25, 0.0, run])
        n.append(nn.tolist())
        d.append(float(nn @ np.array([sgn * hl, 0.0, body_top - 0.25])))
    blk.prims.append(_convex(n, d, c, R, t, label=CAR, instance=inst, part=_CAR_BODY, colour=col))
    # cabin: trapezoid prism with sloped windscreen and rear window
    front = hl - (0.9 if van else rng.uniform(1.1, 1.4))
    back = -hl + (0.25 if van else rng.uniform(0.6, 0.9))
    n, d, c = _box_planes([back, -hw + 0.08, body_top - 0.01], [front, hw - 0.08, roof])
    n, d = list(n), list(d)
    h = roof - body_top
    for sgn, x_edge, run in ((1, front, 0.9 if van else 0.8), (-1, back, 0.15 if van else 0.5)):
        nn = np.array([sgn * h, 0.0, run])
        n.append(nn.tolist())
        d.append(float(nn @ np.array([x_edge, 0.0, body_top])))
    for sgn in (1, -1):  # tumblehome
        nn = np.array([0.0, sgn * h, 0.12])
        n.append(nn.tolist())
        d.append(float(nn @ np.array([0.0, sgn * (hw - 0.08), body_top])))
    blk.prims.append(_convex(n, d, c, R, t, label=CAR, instance=inst, part=_CAR_CABIN, colour=col, colour2=glass))
    # wheels: octagonal prisms, axis along the car's y
    r_w, w_w = 0.33, 0.22
    ang = np.arange(8) * math.pi / 4
    oct_n = np.stack([np.cos(ang), np.zeros(8), np.sin(ang)], 1).tolist() + [[0, 1, 0], [0, -1, 0]]
    for wx in (hl - 0.85, -hl + 0.8):
        for wy in (hw - w_w / 2 - 0.02, -hw + w_w / 2 + 0.02):
            wc = np.array([wx, wy, r_w])
            nn = np.array(oct_n)
            dd = np.concatenate([np.full(8, r_w), [w_w / 2, w_w / 2]]) + nn @ wc
            corners = wc + np.array([[sx * r_w, sy * w_w / 2, sz * r_w] for sx in (-1, 1) for sy in (-1, 1)
                                     for sz in (-1, 1)])
            blk.prims.append(_convex(nn, dd, corners, R, t, label=CAR, instance=inst, part=_WHEEL, colour=(25, 25, 27)))
    blk.objects.append({"instance": inst, "label": CAR, "center": [x, y, float(g[0]) + roof / 2],
                        "half_extents": [hl, hw, roof / 2], "yaw": yaw, "van": bool(van)})


def _add_pole(blk: _Block, rng, ids: _Ids, x, y, street_light: bool, toward_road: float):
    inst = ids()
    g, _ = blk.surface(np.array([x]), np.array([y]))
    g = float(g[0])
    metal = (118, 120, 124) if street_light else (150, 152, 150)
    if street_light:
        h, r = rng.uniform(6.0, 9.0), rng.uniform(0.1, 0.14)
    else:
        h, r = rng.uniform(2.4, 3.3), 0.05
    blk.prims.append(_Prim("cyl", POLE, inst, _METAL, lo=np.array([x - r, y - r, g - 0.2]),
                           hi=np.array([x + r, y + r, g + h]), colour=metal, center=np.array([x, y, 0.0]), radius=r))
    eye = np.eye(3)
    if street_light:  # an arm reaching over the road and a lamp head at its end
        arm = rng.uniform(1.2, 2.0)
        y0, y1 = sorted([y, y + toward_road * arm])
        blk.prims.append(_box([x - 0.04, y0, g + h - 0.1], [x + 0.04, y1, g + h], eye, np.zeros(3), label=POLE,
                              instance=inst, part=_METAL, colour=metal))
        ye = y + toward_road * arm
        blk.prims.append(_box([x - 0.15, ye - 0.3, g + h - 0.25], [x + 0.15, ye + 0.3, g + h - 0.05], eye, np.zeros(3),
                              label=POLE, instance=inst, part=_LAMP, colour=(60, 62, 64), colour2=(235, 232, 210)))
    else:  # a sign plate facing the road
        blk.prims.append(_box([x - 0.3, y - 0.02, g + h - 0.65], [x + 0.3, y + 0.02, g + h - 0.05], eye, np.zeros(3),
                              label=POLE, instance=inst, part=_SIGN, colour=(30, 80, 170), colour2=(235, 235, 235)))
    blk.objects.append({"instance": inst, "label": POLE, "center": [x, y, g + h / 2], "height": h,
                        "kind": "street light" if street_light else "sign post", "half_extents": [r, r, h / 2]})


def _rect_distance(px, py, rect) -> float:
    """Distance from a point to an oriented rectangle (cx, cy, hx, hy, yaw); 0 inside."""
    cx, cy, hx, hy, yaw = rect
    c, s = math.cos(yaw), math.sin(yaw)
    u = c * (px - cx) + s * (py - cy)
    v = -s * (px - cx) + c * (py - cy)
    du, dv = max(abs(u) - hx, 0.0), max(abs(v) - hy, 0.0)
    return math.hypot(du, dv)


def _layout_urban(rng: np.random.Generator) -> _Block:
    blk = _Block(wave_phase=(rng.uniform(0, 6.28), rng.uniform(0, 6.28)),
                 slope=(rng.uniform(0.018, 0.028), rng.uniform(-0.004, 0.004)))
    X, Y = blk.size
    yc, rh, sw = blk.road_y, blk.road_half, blk.sidewalk
    ids = _Ids()
    blk.crosswalk_x = rng.uniform(45, 70)
    lot_edge = {-1: yc - rh - sw, 1: yc + rh + sw}  # the sidewalk's outer edge, per side
    buildings: list[tuple] = []
    park_lots: list[tuple[float, float, int]] = []
    yard_lots: list[tuple[float, float, int]] = []
    # ---- lots along both sides: buildings or parks ----
    low_building_side = int(rng.choice([-1, 1]))
    for side in (-1, 1):
        xs = 2.0
        lots = []
        while xs < X - 12:
            w = min(rng.uniform(15, 25), X - 2 - xs)
            lots.append((xs, xs + w))
            xs += w
        park_idx = int(rng.integers(len(lots))) if side == 1 else -1
        low_idx = -1
        if side == low_building_side:  # one low flat-roofed building (a shop or garage) per block
            low_idx = int(rng.choice([i for i in range(len(lots)) if i != park_idx]))
        for i, (x0, x1) in enumerate(lots):
            if i == park_idx:
                park_lots.append((x0, x1, side))
                continue
            edge = lot_edge[side]
            setback = rng.uniform(2.5, 6.0)
            depth = rng.uniform(8.0, 16.0)
            hx = (x1 - x0) / 2 - rng.uniform(1.5, 3.0)
            hy = depth / 2
            cy = edge + side * (setback + hy)
            cx = (x0 + x1) / 2 + rng.uniform(-0.8, 0.8)
            yaw = math.radians(rng.uniform(-5, 5))
            wall_h = rng.uniform(2.8, 3.8) if i == low_idx else float(rng.choice([4.5, 6.5, 9.0, 12.0, 15.0, 18.0]))
            roof = str(rng.choice(["flat", "gable", "hip"], p=[0.45, 0.4, 0.15])) if i != low_idx else "flat"
            rects = _add_building(blk, rng, ids, cx, cy, hx, hy, yaw, wall_h, roof, front_sign=-side)
            buildings.extend(rects)
            door = cx + rng.uniform(-hx * 0.5, hx * 0.5)
            front = cy - side * hy
            blk.paths.append((door - 0.75, min(edge, front), door + 0.75, max(edge, front)))
            yard_lots.append((x0, x1, side))
    # ---- parks: a mound, a raised planter, a path ----
    for x0, x1, side in park_lots:
        ymid = lot_edge[side] + side * 14
        blk.mounds.append(((x0 + x1) / 2 + rng.uniform(-3, 3), ymid + side * 6, rng.uniform(1.2, 2.0), rng.uniform(3, 5)))
        px, py = x0 + rng.uniform(1.5, 4), lot_edge[side] + side * rng.uniform(1.5, 3)
        blk.planters.append((px, min(py, py + side * 2.6), px + rng.uniform(3.5, 5.5), max(py, py + side * 2.6),
                             rng.uniform(0.5, 0.8)))
        pxm = x0 + (x1 - x0) * rng.uniform(0.55, 0.8)
        blk.paths.append((pxm - 0.9, min(lot_edge[side], lot_edge[side] + side * 25),
                          pxm + 0.9, max(lot_edge[side], lot_edge[side] + side * 25)))
    # ---- poles: street lights near the curb, sign posts ----
    pole_xy = []
    for k, xp in enumerate(np.arange(rng.uniform(6, 14), X - 4, rng.uniform(24, 30))):
        side = 1 if k % 2 == 0 else -1
        yp = yc + side * (rh + 0.6)
        _add_pole(blk, rng, ids, xp + rng.uniform(-1, 1), yp, True, toward_road=-side)
        pole_xy.append((xp, yp))
    for _ in range(int(rng.integers(2, 4))):
        side = int(rng.choice([-1, 1]))
        xp, yp = rng.uniform(4, X - 4), yc + side * (rh + rng.uniform(0.5, 1.0))
        if min(abs(xp - px) for px, _ in pole_xy) < 3:
            xp = (xp + 9) % (X - 8) + 4
        _add_pole(blk, rng, ids, xp, yp, False, toward_road=-side)
        pole_xy.append((xp, yp))

    # ---- trees: street trees on the sidewalks, park trees, yard trees ----
    trees: list[tuple[float, float, float]] = []

    def place_tree(x, y, crown_r, crown_h, trunk_h) -> bool:
        if not (1 < x < X - 1 and 1 < y < Y - 1):
            return False
        room = min((_rect_distance(x, y, r) for r in buildings), default=99.0) - 0.4
        if room < 0.6:
            return False
        crown_r = min(crown_r, room)
        if any(math.hypot(x - px, y - py) < 1.5 for px, py in pole_xy):
            return False
        if any(math.hypot(x - tx, y - ty) < 0.8 * (crown_r + tr) for tx, ty, tr in trees):
            return False
        _add_tree(blk, rng, ids, x, y, crown_r, crown_h, trunk_h)
        trees.append((x, y, crown_r))
        return True

    def random_tree_shape(young: bool):
        if young:
            return rng.uniform(0.9, 1.4), rng.uniform(0.8, 1.2), rng.uniform(1.3, 1.9)
        return rng.uniform(1.8, 4.0), rng.uniform(1.6, 4.5), rng.uniform(1.8, 4.0)

    for side in (-1, 1):
        xt = rng.uniform(3, 10)
        while xt < X - 3:
            if abs(xt - blk.crosswalk_x - 2) > 4:
                place_tree(xt, yc + side * (rh + sw - 1.3), *random_tree_shape(young=rng.random() < 0.3))
            xt += rng.uniform(11, 20)
    for x0, x1, side in park_lots:
        for _ in range(20):
            place_tree(rng.uniform(x0 + 2, x1 - 2), lot_edge[side] + side * rng.uniform(4, 28),
                       *random_tree_shape(young=rng.random() < 0.25))
    for x0, x1, side in yard_lots:
        for _ in range(int(rng.integers(0, 3))):
            y_far = lot_edge[side] + side * rng.uniform(20, 30)
            place_tree(rng.uniform(x0 + 2, x1 - 2), y_far, *random_tree_shape(young=rng.random() < 0.4))

    # ---- cars parked in the parking lanes (none on the crosswalk) ----
    for side in (-1, 1):
        yp = yc + side * (rh - 1.25)
        xcur = rng.uniform(1, 8)
        while xcur < X - 6:
            if rng.random() < 0.5 and abs(xcur + 2.5 - blk.crosswalk_x - 2) > 6:
                yaw = (0.0 if side == -1 else math.pi) + math.radians(rng.uniform(-2.5, 2.5))
                _add_car(blk, rng, ids, xcur + 2.6, yp + rng.uniform(-0.15, 0.15), yaw)
                xcur += 5.2 + rng.uniform(0.6, 2.5)
            else:
                xcur += rng.uniform(3, 9)
    n_cars = sum(1 for o in blk.objects if o["label"] == CAR)
    for k in range(max(0, 4 - n_cars)):  # always at least four cars (rare for these lengths)
        _add_car(blk, rng, ids, 8.0 + 6.0 * k, yc + rh - 1.25, math.pi)
    return blk
