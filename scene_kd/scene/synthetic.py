"""Procedural labelled scenes with ground truth: the test bed for every later stage.

``make_urban``: a city block (road with lane markings, sidewalks, buildings with flat/gable/hip roofs, trees,
parked cars, street lights and sign posts, lawns with a mound and a raised planter) on sloping terrain, *scanned*
by a simulated airborne LiDAR (four flight lines, near-nadir) and a mobile LiDAR (a profiler driving the road).
Points are exact ray hits, so density, occlusion and incidence effects come from the geometry: roofs are dense
from the air, facades sparse from the air but dense from the street, ground under cars is empty and ground under
tree crowns is sparse (crowns are porous volumes: each ray has an exponential free path inside them).

``make_tabletop``: a table with a mug (with handle), a bowl, a box, a bottle and a banana at random yaw and
non-overlapping positions, sampled uniformly on the visible surfaces, plus a JSON sidecar of object poses/boxes.

``as_splats``: any labelled point cloud as flat, normal-aligned Gaussians (3DGS parameterisation, SH DC colour).

All units are metres. Everything is deterministic per seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from scene_kd.errors import SceneKDError
from scene_kd.scene.types import GaussianSplats, PointCloud

ROAD, SIDEWALK, BUILDING, TREE, CAR, POLE, GRASS = range(7)
URBAN_CLASSES: dict[int, str] = {
    ROAD: "road", SIDEWALK: "sidewalk", BUILDING: "building", TREE: "tree", CAR: "car", POLE: "pole", GRASS: "grass",
}
URBAN_THINGS = (BUILDING, TREE, CAR, POLE)  # classes with instances; the rest are stuff (instance -1)

TABLE, MUG, BOWL, BOX, BOTTLE, BANANA, MUG_HANDLE = range(7)
TABLETOP_CLASSES: dict[int, str] = {
    TABLE: "table", MUG: "mug", BOWL: "bowl", BOX: "box", BOTTLE: "bottle", BANANA: "banana",
    MUG_HANDLE: "mug handle",
}

DEFAULT_URBAN_ORIGIN = (870200.0, 6617080.0, 30.0)  # a UTM-like offset (e.g. Lambert-93 metres)
SH_C0 = 0.28209479177387814
SCANNER_AIRBORNE, SCANNER_MOBILE = 0, 1

# part codes (what a primitive is made of; drives colour and intensity)
_GROUND, _FACADE, _CAR_BODY, _CAR_CABIN, _WHEEL, _TRUNK, _CROWN, _METAL, _LAMP, _SIGN = range(10)


# --------------------------------------------------------------------------------------------------------------
# Geometry primitives and ray intersection kernels (vectorised over rays)
# --------------------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------------------
# The urban block
# --------------------------------------------------------------------------------------------------------------


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


# ---- scanners -------------------------------------------------------------------------------------------------


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


def make_urban(points: int = 200_000, seed: int = 0, origin: tuple[float, float, float] | None = DEFAULT_URBAN_ORIGIN,
               airborne_fraction: float = 0.45) -> PointCloud:
    """A labelled city block scanned by simulated airborne + mobile LiDAR.

    Returns a PointCloud of exactly ``points`` points: xyz (world = ``origin`` + block metres, float64-safe via
    PointCloud.from_world), rgb uint8, intensity [0, 1], normals (unit, facing the scanner), labels int32 in
    URBAN_CLASSES (road, sidewalk, building, tree, car, pole, grass), instances int32 (-1 for road/sidewalk/grass),
    extra["scanner"] uint8 (0 airborne, 1 mobile), meta["objects"]: per-instance ground truth (world centre,
    half extents, yaw, ...). ``origin=None`` keeps the block's own local frame.
    """
    if not isinstance(points, (int, np.integer)) or points < 1:
        raise SceneKDError(f"make_urban: points must be a positive integer, got {points!r}")
    if not 0.0 <= airborne_fraction <= 1.0:
        raise SceneKDError(f"make_urban: airborne_fraction must be in [0, 1], got {airborne_fraction}")
    rng = np.random.default_rng(seed)
    blk = _layout_urban(rng)
    hb = blk.build_raster()
    n_air = int(round(points * airborne_fraction))
    parts = []
    if n_air:
        parts.append(_scan(blk, rng, _airborne_rays, n_air, hb, SCANNER_AIRBORNE))
    if points - n_air:
        parts.append(_scan(blk, rng, _mobile_rays, points - n_air, hb, SCANNER_MOBILE))
    hits = {k: np.concatenate([h[k] for h in parts]) for k in parts[0]}
    xyz, normals, labels, instances, rgb, intensity = _shade(blk, rng, hits)
    off = np.zeros(3) if origin is None else np.asarray(origin, dtype=np.float64).reshape(3)
    objects = []
    for ob in blk.objects:
        ob = dict(ob)
        ob["name"] = URBAN_CLASSES[ob["label"]]
        ob["center"] = (np.asarray(ob["center"], float) + off).tolist()
        ob["point_count"] = int((instances == ob["instance"]).sum())
        objects.append(ob)
    return PointCloud.from_world(
        xyz + off, rgb=rgb, intensity=intensity, normals=normals.astype(np.float32), labels=labels,
        label_names=dict(URBAN_CLASSES), instances=instances, extra={"scanner": hits["scanner"]},
        meta={"synthetic": "urban", "seed": int(seed), "world_origin": off.tolist(), "objects": objects,
              "units": "m", "block_size": list(blk.size)},
    )


# --------------------------------------------------------------------------------------------------------------
# Tabletop
# --------------------------------------------------------------------------------------------------------------


def _unit(v):
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


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


def _quat_xyzw(R: np.ndarray) -> list[float]:
    """A 3x3 rotation as a unit quaternion [x, y, z, w] (scipy / ROS order)."""
    w, x, y, z = _frames_to_quats_wxyz(np.asarray(R, dtype=np.float64)[None])[0]
    return [float(x), float(y), float(z), float(w)]


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
    n_handle = 0
    for (i, pc), k in zip(pieces, counts, strict=True):
        if k == 0:
            continue
        p, n = pc.sample(k, rng)
        R, pos = placed[i]["R"], placed[i]["pos"]
        xyz.append(p @ R.T + pos)
        nrm.append(n @ R.T)
        lab.append(np.full(k, pc.label, np.int32))
        inst = 6 if pc.part == "handle" else i + 1
        n_handle += k if pc.part == "handle" else 0
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
                "position": (pos + off).tolist(), "rotation": R.tolist(), "quaternion_xyzw": _quat_xyzw(R),
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


# --------------------------------------------------------------------------------------------------------------
# Points -> Gaussians
# --------------------------------------------------------------------------------------------------------------


def _pca_normals(xyz: np.ndarray, k: int = 12) -> np.ndarray:
    from scipy.spatial import cKDTree

    k = min(k, len(xyz))
    _, nb = cKDTree(xyz).query(xyz, k=k)
    q = xyz[nb] - xyz[nb].mean(1, keepdims=True)
    cov = np.einsum("nki,nkj->nij", q, q)
    _, vecs = np.linalg.eigh(cov)
    return vecs[:, :, 0]


def _frames_to_quats_wxyz(R: np.ndarray) -> np.ndarray:
    """Rotation matrices [N, 3, 3] -> unit quaternions [N, 4] (w, x, y, z), w >= 0 (Shepperd's method)."""
    m = np.asarray(R, dtype=np.float64)
    tr = np.stack([m[:, 0, 0] + m[:, 1, 1] + m[:, 2, 2], m[:, 0, 0], m[:, 1, 1], m[:, 2, 2]], 1)
    case = tr.argmax(1)
    q = np.empty((len(m), 4))
    for k in range(4):
        s_ = np.flatnonzero(case == k)
        if len(s_) == 0:
            continue
        a = m[s_]
        if k == 0:
            r = np.sqrt(1 + tr[s_, 0]) * 2
            q[s_] = np.stack([r / 4, (a[:, 2, 1] - a[:, 1, 2]) / r, (a[:, 0, 2] - a[:, 2, 0]) / r,
                              (a[:, 1, 0] - a[:, 0, 1]) / r], 1)
        elif k == 1:
            r = np.sqrt(1 + a[:, 0, 0] - a[:, 1, 1] - a[:, 2, 2]) * 2
            q[s_] = np.stack([(a[:, 2, 1] - a[:, 1, 2]) / r, r / 4, (a[:, 0, 1] + a[:, 1, 0]) / r,
                              (a[:, 0, 2] + a[:, 2, 0]) / r], 1)
        elif k == 2:
            r = np.sqrt(1 - a[:, 0, 0] + a[:, 1, 1] - a[:, 2, 2]) * 2
            q[s_] = np.stack([(a[:, 0, 2] - a[:, 2, 0]) / r, (a[:, 0, 1] + a[:, 1, 0]) / r, r / 4,
                              (a[:, 1, 2] + a[:, 2, 1]) / r], 1)
        else:
            r = np.sqrt(1 - a[:, 0, 0] - a[:, 1, 1] + a[:, 2, 2]) * 2
            q[s_] = np.stack([(a[:, 1, 0] - a[:, 0, 1]) / r, (a[:, 0, 2] + a[:, 2, 0]) / r,
                              (a[:, 1, 2] + a[:, 2, 1]) / r, r / 4], 1)
    q[q[:, 0] < 0] *= -1
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def as_splats(pc: PointCloud, seed: int = 0, max_gaussians: int | None = None, sh_degree: int = 0,
              flatness: float = 0.08, opacity: float = 0.95) -> GaussianSplats:
    """The same scene as labelled Gaussians: one flat Gaussian per point, thin along the surface normal.

    Tangential std-dev = 0.6 x the mean distance to the 3 nearest neighbours (so neighbours overlap into a closed
    surface), normal std-dev = ``flatness`` x that; random in-plane orientation; colour as SH DC (higher bands
    zero for ``sh_degree`` > 0); opacity ``opacity``. ``max_gaussians``: random subsample to that budget first.
    Labels, instances, label_names and origin are carried over. Normals are estimated by PCA when absent.
    """
    from scipy.spatial import cKDTree

    if not isinstance(pc, PointCloud):
        raise SceneKDError(f"as_splats needs a PointCloud, got {type(pc).__name__}")
    if len(pc) < 4:
        raise SceneKDError(f"as_splats needs at least 4 points, got {len(pc)}")
    if sh_degree not in (0, 1, 2, 3):
        raise SceneKDError(f"as_splats: sh_degree must be 0..3, got {sh_degree}")
    if not 0 < opacity < 1:
        raise SceneKDError(f"as_splats: opacity must be in (0, 1), got {opacity}")
    rng = np.random.default_rng(seed)
    if max_gaussians is not None and max_gaussians < len(pc):
        if max_gaussians < 4:
            raise SceneKDError(f"as_splats: max_gaussians must be >= 4, got {max_gaussians}")
        pc = pc.subset(np.sort(rng.choice(len(pc), size=max_gaussians, replace=False)))
    xyz = pc.xyz.astype(np.float64)
    n = len(xyz)
    dist, _ = cKDTree(xyz).query(xyz, k=4)
    spacing = dist[:, 1:].mean(1)
    med = float(np.median(spacing))
    spacing = np.clip(spacing, 0.2 * med + 1e-6, 5.0 * med + 1e-6)
    normals = pc.normals.astype(np.float64) if pc.normals is not None else _pca_normals(xyz)
    normals = _unit(normals)
    # tangent frame: a random in-plane direction
    ref = _unit(rng.standard_normal((n, 3)))
    t1 = ref - (ref * normals).sum(1, keepdims=True) * normals
    bad = np.linalg.norm(t1, axis=1) < 1e-6
    t1[bad] = np.cross(normals[bad], np.array([1.0, 0.0, 0.0]))
    t1 = _unit(t1)
    t2 = np.cross(normals, t1)
    R = np.stack([t1, t2, normals], 2)  # columns: axes of the Gaussian
    quats = _frames_to_quats_wxyz(R)
    s_t = 0.6 * spacing
    aniso = rng.uniform(0.8, 1.25, n)
    scales = np.stack([s_t * aniso, s_t / aniso, flatness * s_t], 1)
    rgb = (pc.rgb.astype(np.float64) / 255.0) if pc.rgb is not None else np.full((n, 3), 0.5)
    sh = np.zeros((n, (sh_degree + 1) ** 2, 3), dtype=np.float32)
    sh[:, 0] = (rgb - 0.5) / SH_C0
    logit = math.log(opacity / (1 - opacity))
    return GaussianSplats(
        means=pc.xyz, quats=quats.astype(np.float32), log_scales=np.log(scales).astype(np.float32),
        opacity_logits=np.full(n, logit, np.float32), sh=sh, origin=pc.origin.copy(),
        labels=None if pc.labels is None else pc.labels.copy(), label_names=dict(pc.label_names),
        instances=None if pc.instances is None else pc.instances.copy(),
        meta={**{k: v for k, v in pc.meta.items() if k != "objects"}, "from_points": True},
    )
