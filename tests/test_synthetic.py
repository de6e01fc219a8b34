"""Synthetic scenes: the urban block (scanner simulation), the tabletop with its sidecar, points -> Gaussians, CLI."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest

from scene_kd.errors import SceneKDError
from scene_kd.scene.synthetic import (
    DEFAULT_URBAN_ORIGIN,
    SCANNER_AIRBORNE,
    TABLETOP_CLASSES,
    URBAN_CLASSES,
    as_splats,
    make_tabletop,
    make_urban,
)
from scene_kd.scene.types import GaussianSplats, PointCloud

URBAN_N = 30_000
NAME_TO_ID = {v: k for k, v in URBAN_CLASSES.items()}


@pytest.fixture(scope="module")
def urban() -> PointCloud:
    return make_urban(URBAN_N, seed=0)


@pytest.fixture(scope="module")
def tabletop() -> tuple[PointCloud, dict]:
    return make_tabletop(seed=1, points=12_000)


def _objects(pc: PointCloud, name: str) -> list[dict]:
    return [o for o in pc.meta["objects"] if o["name"] == name]


def _bayes_accuracy(feature: np.ndarray, labels: np.ndarray, bin_width: float) -> float:
    """Accuracy of the best classifier that sees only ``feature`` (majority class per bin, fit on the data)."""
    b = np.floor((feature - feature.min()) / bin_width).astype(np.int64)
    table = np.zeros((b.max() + 1, labels.max() + 1))
    np.add.at(table, (b, labels), 1)
    return float(table.max(1).sum() / len(labels))


# ---------------------------------------------------------------------------------------------------- urban


def test_urban_deterministic_per_seed():
    a, b, c = make_urban(3000, seed=7), make_urban(3000, seed=7), make_urban(3000, seed=8)
    for name in ("xyz", "rgb", "normals", "labels", "instances", "intensity"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    np.testing.assert_array_equal(a.origin, b.origin)
    assert a.meta["objects"] == b.meta["objects"]
    assert not np.array_equal(a.labels, c.labels) or not np.allclose(a.xyz, c.xyz)


def test_urban_fields_names_and_world_offset(urban):
    pc = urban
    assert len(pc) == URBAN_N
    assert pc.label_names == {0: "road", 1: "sidewalk", 2: "building", 3: "tree", 4: "car", 5: "pole", 6: "grass"}
    assert pc.labels.dtype == np.int32 and pc.instances.dtype == np.int32 and pc.rgb.dtype == np.uint8
    assert set(np.unique(pc.labels)) == set(URBAN_CLASSES)
    np.testing.assert_allclose(np.linalg.norm(pc.normals, axis=1), 1.0, atol=1e-4)
    assert np.isfinite(pc.xyz).all()
    # a UTM-like offset lives in the float64 origin; local float32 coordinates stay small
    world = pc.world_xyz()
    assert np.all(world[:, 0] >= DEFAULT_URBAN_ORIGIN[0]) and np.all(world[:, 1] >= DEFAULT_URBAN_ORIGIN[1])
    assert world[:, 0].max() < DEFAULT_URBAN_ORIGIN[0] + 200
    assert np.abs(pc.xyz).max() < 200 and pc.origin[0] > 870_000
    # colours are plausible per class: grass greener than road, road darker than sidewalk
    mean = {n: pc.rgb[pc.labels == i].astype(float).mean(0) for i, n in URBAN_CLASSES.items()}
    assert mean["grass"][1] > mean["grass"][0] + 20 and mean["grass"][1] > mean["grass"][2] + 20
    assert mean["road"].sum() < mean["sidewalk"].sum() - 100
    # both scanners contribute
    assert set(np.unique(pc.extra["scanner"])) == {0, 1}
    assert make_urban(500, seed=0, origin=None).origin[0] < 1000
    json.dumps(pc.meta)  # per-instance ground truth is JSON-ready


def test_urban_instances(urban):
    pc = urban
    stuff = np.isin(pc.labels, [NAME_TO_ID[n] for n in ("road", "sidewalk", "grass")])
    assert np.all(pc.instances[stuff] == -1) and np.all(pc.instances[~stuff] >= 0)
    # each instance belongs to exactly one class
    inst = pc.instances[~stuff]
    pairs = np.unique(np.stack([inst, pc.labels[~stuff]], 1), axis=0)
    assert len(pairs) == len(np.unique(inst))
    minimum = {"car": 4, "tree": 4, "building": 3, "pole": 3}
    for name, least in minimum.items():
        present = np.unique(pc.instances[pc.labels == NAME_TO_ID[name]])
        assert len(present) >= least, (name, len(present))
        listed = {o["instance"] for o in _objects(pc, name)}
        assert set(present.tolist()) <= listed
    # varied building heights (a low one, a tall one) and several roof types across seeds
    heights = [2 * o["half_extents"][2] for o in _objects(pc, "building")]
    assert min(heights) < 6.0 and max(heights) > 10.0
    tree_heights = [o["height"] for o in _objects(pc, "tree")]
    assert min(tree_heights) < 5.0 and max(tree_heights) > 9.0


def test_urban_not_separable_by_height(urban):
    pc = urban
    z = pc.world_xyz()[:, 2]
    # the best possible classifier on absolute height (0.1 m bins, fit on the data itself)
    acc_z = _bayes_accuracy(z, pc.labels, 0.1)
    assert acc_z < 0.8, acc_z
    # and on height above the local ground (min z in 2 m cells), the usual first feature of urban classifiers
    xy = np.floor(pc.xyz[:, :2] / 2.0).astype(np.int64)
    _, cell = np.unique(xy, axis=0, return_inverse=True)
    ground = np.full(cell.max() + 1, np.inf)
    np.minimum.at(ground, cell.ravel(), z)
    acc_hag = _bayes_accuracy(z - ground[cell.ravel()], pc.labels, 0.1)
    assert acc_hag < 0.8, acc_hag
    # every "thing" shares its height range with another class
    for name in ("car", "pole", "tree", "building"):
        zc = z[pc.labels == NAME_TO_ID[name]]
        others = z[pc.labels != NAME_TO_ID[name]]
        lo, hi = np.percentile(zc, [10, 90])
        share = np.mean((others >= lo) & (others <= hi))
        assert share > 0.05, (name, share)


def _ground_density_in_disc(pc, mask, cx, cy, r):
    w = pc.world_xyz()
    return float((mask & (np.hypot(w[:, 0] - cx, w[:, 1] - cy) < r)).sum()) / (math.pi * r * r)


def test_urban_occlusion_under_trees_and_cars(urban):
    pc = urban
    objs = pc.meta["objects"]
    ground = np.isin(pc.labels, [NAME_TO_ID[n] for n in ("road", "sidewalk", "grass")])
    airborne = pc.extra["scanner"] == SCANNER_AIRBORNE

    def open_ground(cx, cy, r):
        for o in objs:
            ext = o["crown_radius"] if o["name"] == "tree" else max(o["half_extents"][:2])
            if math.hypot(o["center"][0] - cx, o["center"][1] - cy) < r + ext + 0.5:
                return False
        return True

    under, beside, under_air, beside_air = 0.0, 0.0, 0.0, 0.0
    compared = 0
    for t in _objects(pc, "tree"):
        cx, cy, r = t["center"][0], t["center"][1], 0.8 * t["crown_radius"]
        for dx in (2.5 * r + 1, -(2.5 * r + 1), 3.5 * r + 2, -(3.5 * r + 2)):  # same distance from the road
            if open_ground(cx + dx, cy, r):
                under += _ground_density_in_disc(pc, ground, cx, cy, r)
                beside += _ground_density_in_disc(pc, ground, cx + dx, cy, r)
                under_air += _ground_density_in_disc(pc, ground & airborne, cx, cy, r)
                beside_air += _ground_density_in_disc(pc, ground & airborne, cx + dx, cy, r)
                compared += 1
                break
    assert compared >= 4
    assert under < 0.7 * beside, (under, beside)
    assert under_air < 0.35 * beside_air, (under_air, beside_air)
    # ground under parked cars is (nearly) empty
    w = pc.world_xyz()
    inside = np.zeros(len(pc), bool)
    area = 0.0
    for c in _objects(pc, "car"):
        hx, hy = c["half_extents"][0] - 0.15, c["half_extents"][1] - 0.15
        co, si = math.cos(c["yaw"]), math.sin(c["yaw"])
        dx, dy = w[:, 0] - c["center"][0], w[:, 1] - c["center"][1]
        inside |= (np.abs(co * dx + si * dy) < hx) & (np.abs(-si * dx + co * dy) < hy)
        area += 4 * hx * hy
    road = pc.labels == NAME_TO_ID["road"]
    road_density = road.sum() / (pc.meta["block_size"][0] * 12.0)
    assert (inside & ground).sum() / area < 0.25 * road_density


def test_urban_density_denser_near_ground_and_facades_sparse_from_air(urban):
    pc = urban
    building = pc.labels == NAME_TO_ID["building"]
    roof = building & (np.abs(pc.normals[:, 2]) > 0.5)
    facade = building & (np.abs(pc.normals[:, 2]) < 0.3)
    road = pc.labels == NAME_TO_ID["road"]

    def median_cell_count(mask, cell=2.0):
        _, counts = np.unique(np.floor(pc.xyz[mask, :2] / cell).astype(np.int64), axis=0, return_counts=True)
        return float(np.median(counts))

    assert median_cell_count(road) > 2.0 * median_cell_count(roof)
    # from the air, facades get far fewer points per square metre than roofs
    airborne = pc.extra["scanner"] == SCANNER_AIRBORNE
    bl = _objects(pc, "building")
    roof_density = (roof & airborne).sum() / sum(o["footprint_area"] for o in bl)
    facade_density = (facade & airborne).sum() / sum(o["facade_area"] for o in bl)
    assert facade_density < 0.3 * roof_density, (facade_density, roof_density)
    # ... while the street scanner sees facades: most facade points come from it
    assert (facade & ~airborne).sum() > (facade & airborne).sum()


def test_urban_rejects_bad_arguments():
    with pytest.raises(SceneKDError):
        make_urban(0)
    with pytest.raises(SceneKDError):
        make_urban(100, airborne_fraction=1.5)


@pytest.mark.slow
def test_urban_200k_is_fast():
    t = time.perf_counter()
    pc = make_urban(200_000, seed=0)
    assert len(pc) == 200_000
    assert time.perf_counter() - t < 20.0  # ~2-5 s on a quiet laptop core


# ---------------------------------------------------------------------------------------------------- tabletop


def _yaw_rect_corners(entry) -> np.ndarray:
    R = np.array(entry["rotation"])
    c = np.array(entry["obb_center"])
    e = np.array(entry["extents"]) / 2
    corners = np.array([[sx * e[0], sy * e[1], 0.0] for sx in (-1, 1) for sy in (-1, 1)])
    return (corners @ R.T + c)[:, :2]


def _rects_overlap(a: np.ndarray, b: np.ndarray) -> bool:
    """Separating-axis test for two convex quads [4, 2]."""
    for poly in (a, b):
        hull = poly[[0, 1, 3, 2]]
        for i in range(4):
            edge = hull[(i + 1) % 4] - hull[i]
            axis = np.array([-edge[1], edge[0]])
            pa, pb = a @ axis, b @ axis
            if pa.max() < pb.min() or pb.max() < pa.min():
                return False
    return True


def test_tabletop_labels_and_sidecar(tabletop):
    pc, side = tabletop
    assert len(pc) == 12_000
    assert pc.label_names == TABLETOP_CLASSES
    assert set(np.unique(pc.labels)) == set(TABLETOP_CLASSES)
    names = [o["name"] for o in side["objects"]]
    assert sorted(names) == sorted(["table", "mug", "bowl", "box", "bottle", "banana", "mug handle"])
    json.dumps(side)  # JSON-ready
    for o in side["objects"]:
        R = np.array(o["rotation"])
        np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-9)
        x, y, z, w = o["quaternion_xyzw"]
        Rq = np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                       [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                       [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])
        np.testing.assert_allclose(Rq, R, atol=1e-9)
        assert o["class_id"] == [k for k, v in TABLETOP_CLASSES.items() if v == o["name"]][0]
    handle = next(o for o in side["objects"] if o["name"] == "mug handle")
    mug = next(o for o in side["objects"] if o["name"] == "mug")
    assert handle["parent"] == "mug" and handle["parent_instance_id"] == mug["instance_id"]
    assert (pc.labels[pc.instances == handle["instance_id"]] == handle["class_id"]).all()
    assert handle["point_count"] > 30


def test_tabletop_points_inside_their_boxes(tabletop):
    pc, side = tabletop
    w = pc.world_xyz()
    for o in side["objects"]:
        ids = [o["instance_id"], *o.get("part_instance_ids", [])]
        m = np.isin(pc.instances, ids)
        assert m.sum() == o["point_count"] > 0
        local = (w[m] - np.array(o["obb_center"])) @ np.array(o["rotation"])
        excess = np.abs(local) - np.array(o["extents"]) / 2
        assert excess.max() < 0.003, (o["name"], excess.max())  # 0.5 mm sensor noise
        # the box is tight: points reach near every face
        assert np.all(np.abs(local).max(0) > np.array(o["extents"]) / 2 - 0.01), o["name"]


def test_tabletop_objects_on_table_and_apart(tabletop):
    _, side = tabletop
    table = next(o for o in side["objects"] if o["name"] == "table")
    tx, ty = table["extents"][0] / 2, table["extents"][1] / 2
    objects = [o for o in side["objects"] if o["name"] not in ("table", "mug handle")]
    assert len(objects) == 5
    for o in objects:
        corners = _yaw_rect_corners(o)
        assert np.all(np.abs(corners[:, 0] - table["obb_center"][0]) <= tx)
        assert np.all(np.abs(corners[:, 1] - table["obb_center"][1]) <= ty)
        assert abs(o["position"][2] - side["table_top_z"]) < 1e-9  # resting on the top
        assert o["obb_center"][2] - o["extents"][2] / 2 == pytest.approx(side["table_top_z"], abs=1e-6)
    for i in range(len(objects)):
        for j in range(i + 1, len(objects)):
            assert not _rects_overlap(_yaw_rect_corners(objects[i]), _yaw_rect_corners(objects[j])), \
                (objects[i]["name"], objects[j]["name"])


def test_tabletop_deterministic_and_varied():
    a, sa = make_tabletop(seed=5, points=2000)
    b, sb = make_tabletop(seed=5, points=2000)
    _, sc = make_tabletop(seed=6, points=2000)
    np.testing.assert_array_equal(a.xyz, b.xyz)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert sa == sb
    yaws = lambda s: [o.get("yaw") for o in s["objects"]]  # noqa: E731
    assert yaws(sa) != yaws(sc)
    with pytest.raises(SceneKDError):
        make_tabletop(points=10)


def test_tabletop_world_origin_offset():
    pc, side = make_tabletop(seed=0, points=1000, origin=(1000.0, 2000.0, 5.0))
    w = pc.world_xyz()
    assert w[:, 0].min() > 998 and w[:, 2].min() > 4.9
    assert side["table_top_z"] == pytest.approx(5.74)
    mug = next(o for o in side["objects"] if o["name"] == "mug")
    local = (w[pc.instances == mug["instance_id"]] - np.array(mug["obb_center"])) @ np.array(mug["rotation"])
    assert (np.abs(local) - np.array(mug["extents"]) / 2).max() < 0.003


# ---------------------------------------------------------------------------------------------------- splats


def _quat_to_matrix(q: np.ndarray) -> np.ndarray:
    w, x, y, z = (q / np.linalg.norm(q, axis=1, keepdims=True)).T
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], 1),
        np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], 1),
        np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], 1),
    ], 1)


def test_as_splats_flat_oriented_labelled(tabletop):
    pc, _ = tabletop
    g = as_splats(pc, seed=0)
    assert isinstance(g, GaussianSplats) and len(g) == len(pc)
    np.testing.assert_array_equal(g.labels, pc.labels)
    np.testing.assert_array_equal(g.instances, pc.instances)
    assert g.label_names == pc.label_names
    np.testing.assert_array_equal(g.origin, pc.origin)
    np.testing.assert_array_equal(g.means, pc.xyz)
    np.testing.assert_allclose(np.linalg.norm(g.quats, axis=1), 1.0, atol=1e-5)
    # the thin axis (local z) is the surface normal, and it is much thinner than the tangential axes
    R = _quat_to_matrix(g.quats.astype(np.float64))
    dots = np.abs((R[:, :, 2] * pc.normals).sum(1))
    assert np.all(dots > 0.999)
    s = np.exp(g.log_scales)
    assert np.all(s[:, 2] < 0.2 * s[:, :2].min(1))
    # tangential size follows the local spacing (sub-centimetre on objects here, not metres)
    assert 1e-4 < np.median(s[:, 0]) < 0.02
    assert np.all(1 / (1 + np.exp(-g.opacity_logits)) > 0.9)
    assert g.sh_degree == 0
    assert np.abs(g.rgb_from_dc().astype(int) - pc.rgb.astype(int)).max() <= 1


def test_as_splats_budget_degree_and_errors(urban):
    small = urban.subset(np.arange(4000))
    g = as_splats(small, seed=1, max_gaussians=1000, sh_degree=3)
    assert len(g) == 1000 and g.sh.shape == (1000, 16, 3) and g.sh_degree == 3
    assert np.all(g.sh[:, 1:] == 0)
    # the subsample is a subset of the points, labels kept with their positions
    key = {tuple(p): (lab, ins) for p, lab, ins in zip(small.xyz.tolist(), small.labels, small.instances, strict=True)}
    for p, lab, ins in zip(g.means.tolist(), g.labels, g.instances, strict=True):
        assert key[tuple(p)] == (lab, ins)
    # deterministic, and normals are estimated when absent
    g2 = as_splats(small, seed=1, max_gaussians=1000, sh_degree=3)
    np.testing.assert_array_equal(g.quats, g2.quats)
    bare = PointCloud(xyz=small.xyz, rgb=small.rgb)
    gb = as_splats(bare)
    assert gb.labels is None and np.isfinite(gb.quats).all() and np.isfinite(gb.log_scales).all()
    with pytest.raises(SceneKDError):
        as_splats(g)
    with pytest.raises(SceneKDError):
        as_splats(small, sh_degree=5)
    with pytest.raises(SceneKDError):
        as_splats(PointCloud(xyz=np.zeros((2, 3))))


# ---------------------------------------------------------------------------------------------------- CLI


def test_cli_synth_tabletop_and_urban(tmp_path, capsys):
    from scene_kd.cli import main
    from scene_kd.scene.io import load_scene

    out = tmp_path / "table.ply"
    assert main(["synth", "--kind", "tabletop", "--points", "3000", "--seed", "2", "--out", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["count"] == 3000 and info["classes"]["mug handle"] > 0
    side = json.loads((tmp_path / "table.objects.json").read_text())
    assert {o["name"] for o in side["objects"]} >= {"mug", "mug handle", "banana"}
    pc = load_scene(out)
    assert len(pc) == 3000 and pc.labels is not None
    np.testing.assert_array_equal(np.bincount(pc.labels), np.bincount(make_tabletop(seed=2, points=3000)[0].labels))

    las = tmp_path / "block.las"
    assert main(["synth", "--kind", "urban", "--points", "2000", "--out", str(las)]) == 0
    pc = load_scene(las)
    assert len(pc) == 2000
    ref = make_urban(2000, seed=0)
    np.testing.assert_array_equal(np.sort(pc.labels), np.sort(ref.labels))
    np.testing.assert_allclose(pc.world_xyz().min(0), ref.world_xyz().min(0), atol=2e-3)


def test_cli_synth_as_splats_and_errors(tmp_path, capsys):
    from scene_kd.cli import main
    from scene_kd.scene.io import load_scene

    out = tmp_path / "table_gs.ply"
    assert main(["synth", "--kind", "tabletop", "--points", "2000", "--as-splats", "--out", str(out)]) == 0
    g = load_scene(out)
    assert g.kind == "gaussians" and len(g) == 2000
    np.testing.assert_array_equal(np.bincount(g.labels), np.bincount(make_tabletop(seed=0, points=2000)[0].labels))
    assert (tmp_path / "table_gs.objects.json").exists()
    capsys.readouterr()
    assert main(["synth", "--kind", "urban", "--as-splats", "--out", str(tmp_path / "x.las")]) == 2
    assert "--as-splats" in capsys.readouterr().err
    assert main(["synth", "--points", "0", "--out", str(tmp_path / "y.ply")]) == 2
    assert main(["synth", "--points", "10", "--out", str(tmp_path / "missing" / "y.ply")]) == 2
