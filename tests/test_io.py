"""Scene I/O: round trips for every writer, LAS header write-back, precision, bad input, `info` on real data."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from scene_kd.cli import main as cli_main
from scene_kd.errors import SceneFormatError
from scene_kd.scene.io import describe_scene, load_scene, save_scene
from scene_kd.scene.types import GaussianSplats, PointCloud

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
REAL_FILES = sorted(REAL.glob("*.la[sz]")) if REAL.is_dir() else []
UTM = np.array([870200.01, 6617083.28, 112.5])


def labelled_cloud(n: int = 500, seed: int = 0, base=UTM) -> PointCloud:
    rng = np.random.default_rng(seed)
    world = rng.uniform(0, 60, (n, 3)) + base
    return PointCloud.from_world(
        world,
        rgb=rng.integers(0, 256, (n, 3)).astype(np.uint8),
        normals=rng.normal(size=(n, 3)).astype(np.float32),
        intensity=rng.integers(0, 4000, n).astype(np.float32),
        labels=rng.integers(0, 7, n).astype(np.int32),
        label_names={0: "road", 1: "sidewalk", 2: "building", 3: "tree", 4: "car", 5: "pole", 6: "grass"},
        instances=rng.integers(-1, 30, n).astype(np.int32),
        extra={"confidence": rng.random(n).astype(np.float32), "feat": rng.random((n, 2)).astype(np.float32)},
    )


def gaussians(n: int = 300, degree: int = 3, seed: int = 1) -> GaussianSplats:
    rng = np.random.default_rng(seed)
    return GaussianSplats(
        means=rng.normal(size=(n, 3)) * 5,
        quats=rng.normal(size=(n, 4)),
        log_scales=rng.normal(size=(n, 3)) - 4,
        opacity_logits=rng.normal(size=n),
        sh=rng.normal(size=(n, (degree + 1) ** 2, 3)) * 0.3,
        labels=rng.integers(0, 4, n).astype(np.int32),
        instances=rng.integers(0, 12, n).astype(np.int32),
        label_names={0: "table", 1: "mug", 2: "bowl", 3: "banana"},
        origin=np.array([10.0, -3.0, 0.5]),
    )


def assert_same_points(
    a: PointCloud, b: PointCloud, *, xyz_exact=True, fields=("rgb", "labels", "instances")
):
    if xyz_exact:
        np.testing.assert_array_equal(a.world_xyz(), b.world_xyz())
    for f in fields:
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f), err_msg=f)


# ----------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("ext", ["las", "laz"])
def test_las_roundtrip_fresh_file(tmp_path, ext):
    pc = labelled_cloud()
    save_scene(pc, tmp_path / f"s.{ext}")
    q = load_scene(tmp_path / f"s.{ext}")
    # new files use a 1 mm scale, so coordinates come back to within half a millimetre
    assert np.abs(q.world_xyz() - pc.world_xyz()).max() <= 0.0005 + 1e-9
    assert_same_points(pc, q, xyz_exact=False, fields=("rgb", "labels", "instances", "normals", "intensity"))
    assert q.label_names == pc.label_names  # non-ASPRS names travel in the scene_kd VLR
    np.testing.assert_array_equal(q.extra["confidence"], pc.extra["confidence"])
    np.testing.assert_array_equal(q.extra["feat"], pc.extra["feat"])
    assert q.extra["confidence"].dtype == np.float32
    # a second trip through the same header is exact
    save_scene(q, tmp_path / f"t.{ext}")
    r = load_scene(tmp_path / f"t.{ext}")
    assert_same_points(q, r, fields=("rgb", "labels", "instances", "normals", "intensity"))


@pytest.mark.skipif(not REAL_FILES, reason="shared real data not present")
@pytest.mark.parametrize("ext", ["las", "laz"])
def test_las_write_back_keeps_header_crs_and_extra_bytes(tmp_path, ext):
    import laspy

    src = REAL / "laspy_file_with_both_wkt_and_geotiff_vlrs.las"
    pc = load_scene(src)
    new_labels = (pc.labels + 1) % 19
    pc.labels = new_labels.astype(np.int32)
    pc.extra["confidence"] = np.linspace(0, 1, len(pc), dtype=np.float32)
    save_scene(pc, tmp_path / f"out.{ext}")
    ref, out = laspy.read(src), laspy.read(tmp_path / f"out.{ext}")
    assert out.header.point_format.id == ref.header.point_format.id
    assert out.header.version == ref.header.version
    np.testing.assert_array_equal(out.header.scales, ref.header.scales)
    np.testing.assert_array_equal(out.header.offsets, ref.header.offsets)
    for name in "XYZ":
        np.testing.assert_array_equal(out[name], ref[name])
    np.testing.assert_array_equal(out.classification, new_labels)
    np.testing.assert_array_equal(out.intensity, ref.intensity)

    def crs(h):
        return [
            (type(v).__name__, v.record_data_bytes())
            for v in h.vlrs
            if "Geo" in type(v).__name__ or "Wkt" in type(v).__name__
        ]

    assert crs(out.header) and crs(out.header) == crs(ref.header)
    assert out.header.are_points_compressed == (ext == "laz")
    np.testing.assert_array_equal(out["confidence"], pc.extra["confidence"])
    assert out["confidence"].dtype == np.float32
    # label names stayed ASPRS, so no scene_kd VLR was added, and the extra dim survives another trip
    assert not [v for v in out.header.vlrs if getattr(v, "user_id", "") == "scene_kd"]
    again = load_scene(tmp_path / f"out.{ext}")
    save_scene(again, tmp_path / f"again.{ext}")
    out2 = laspy.read(tmp_path / f"again.{ext}")
    assert list(out2.point_format.extra_dimension_names) == ["confidence"]
    np.testing.assert_array_equal(out2["confidence"], pc.extra["confidence"])
    f = np.asarray(again.meta["file_units"]["to_metre"])  # info's bounds are metres: the file is in US feet
    np.testing.assert_allclose(describe_scene(again)["bounds"], [
        [float(ref.x.min()) * f[0], float(ref.y.min()) * f[1], float(ref.z.min()) * f[2]],
        [float(ref.x.max()) * f[0], float(ref.y.max()) * f[1], float(ref.z.max()) * f[2]],
    ], rtol=1e-12)


def test_las_labels_that_do_not_fit_classification_travel_in_extra_bytes(tmp_path):
    import laspy

    hdr = laspy.LasHeader(version="1.2", point_format=3)
    las = laspy.LasData(hdr)
    las.x, las.y, las.z = np.arange(5.0), np.arange(5.0), np.arange(5.0)
    las.write(tmp_path / "old.las")
    pc = load_scene(tmp_path / "old.las")
    pc.labels = np.array([40, -1, 3, 255, 7], dtype=np.int32)
    save_scene(pc, tmp_path / "wide.las")
    raw = laspy.read(tmp_path / "wide.las")
    assert raw.header.point_format.id == 3
    np.testing.assert_array_equal(raw.classification, [1, 1, 3, 1, 7])
    np.testing.assert_array_equal(load_scene(tmp_path / "wide.las").labels, pc.labels)
    with pytest.raises(SceneFormatError, match="cannot write '.foo'"):
        save_scene(pc, tmp_path / "x.foo")
    assert not (tmp_path / "x.foo").exists()


def test_ply_points_roundtrip_exact_large_and_small_coordinates(tmp_path):
    for base in (UTM, np.zeros(3)):
        pc = labelled_cloud(base=base)
        save_scene(pc, tmp_path / "p.ply")
        q = load_scene(tmp_path / "p.ply")
        assert_same_points(pc, q, fields=("rgb", "labels", "instances", "normals", "intensity"))
        assert q.label_names == pc.label_names
        for k, v in pc.extra.items():
            np.testing.assert_array_equal(q.extra[k], v)
    from plyfile import PlyData

    props = {p.name: p.val_dtype for p in PlyData.read(str(tmp_path / "p.ply"))["vertex"].properties}
    assert (
        props["x"] in ("f4", "float32")
        and props["red"] in ("u1", "uint8")
        and props["label"] in ("i4", "int32")
    )


def test_3dgs_ply_layout_and_exact_roundtrip(tmp_path):
    from plyfile import PlyData

    g = gaussians(degree=3)
    save_scene(g, tmp_path / "g.ply")
    ply = PlyData.read(str(tmp_path / "g.ply"))
    names = [p.name for p in ply["vertex"].properties]
    reference = (
        ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
        + [f"f_rest_{i}" for i in range(45)]
        + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    )
    assert names == reference + ["label", "instance"]
    assert all(p.val_dtype in ("f4", "float32") for p in ply["vertex"].properties[: len(reference)])
    # f_rest is channel-major as in the 3DGS reference: f_rest[c*15 + k] = sh[:, 1+k, c]
    v = ply["vertex"].data
    np.testing.assert_array_equal(v["f_rest_16"], g.sh[:, 2, 1])
    h = load_scene(tmp_path / "g.ply")
    assert isinstance(h, GaussianSplats) and h.sh_degree == 3
    # 3DGS PLY stores float32 world positions; small float32 scenes then come back bit-exactly
    np.testing.assert_array_equal(h.world_xyz(), g.world_xyz().astype(np.float32))
    for f in ("quats", "log_scales", "opacity_logits", "sh", "labels", "instances"):
        np.testing.assert_array_equal(getattr(h, f), getattr(g, f), err_msg=f)
    assert h.label_names == g.label_names
    # degree 0 and no labels: exactly the 17-property layout
    g0 = gaussians(degree=0)
    g0.labels = g0.instances = None
    g0.label_names = {}
    save_scene(g0, tmp_path / "g0.ply")
    assert len(PlyData.read(str(tmp_path / "g0.ply"))["vertex"].properties) == 17
    assert load_scene(tmp_path / "g0.ply").sh_degree == 0


def test_splat_roundtrip_within_quantisation(tmp_path):
    g = gaussians(degree=0)
    save_scene(g, tmp_path / "g.splat")
    assert (tmp_path / "g.splat").stat().st_size == 32 * len(g)
    h = load_scene(tmp_path / "g.splat")
    np.testing.assert_array_equal(h.world_xyz(), g.world_xyz().astype(np.float32).astype(np.float64))
    np.testing.assert_allclose(h.log_scales, g.log_scales, atol=1e-6)
    q = g.quats / np.linalg.norm(g.quats, axis=1, keepdims=True)
    assert np.abs(h.quats - q).max() <= 0.5 / 128 + 1e-6
    assert np.abs(h.rgb_from_dc().astype(int) - g.rgb_from_dc().astype(int)).max() <= 1
    sig = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    assert np.abs(sig(h.opacity_logits) - sig(g.opacity_logits)).max() <= 0.5 / 255 + 1e-6
    with pytest.raises(SceneFormatError, match="point cloud"):
        save_scene(labelled_cloud(), tmp_path / "p.splat")


@pytest.mark.parametrize("ext", ["npy", "txt", "xyz", "csv"])
def test_table_formats_roundtrip(tmp_path, ext):
    pc = labelled_cloud()
    save_scene(pc, tmp_path / f"p.{ext}")
    q = load_scene(tmp_path / f"p.{ext}")
    assert_same_points(pc, q, fields=("rgb", "labels"))


def test_pcd_roundtrip(tmp_path):
    pc = labelled_cloud()
    save_scene(pc, tmp_path / "p.pcd")
    q = load_scene(tmp_path / "p.pcd")
    assert_same_points(pc, q, fields=("rgb", "labels", "instances", "normals", "intensity"))
    np.testing.assert_array_equal(q.extra["confidence"], pc.extra["confidence"])


@pytest.mark.parametrize("ext", ["las", "ply", "pcd", "npy"])
def test_gaussians_to_point_formats_write_centres(tmp_path, ext):
    g = gaussians(degree=1)
    path = tmp_path / f"g.{ext}"
    if ext == "ply":  # PLY keeps Gaussians; the point formats get centres + DC colour + labels
        save_scene(g, path)
        assert isinstance(load_scene(path), GaussianSplats)
        return
    save_scene(g, path)
    q = load_scene(path)
    assert isinstance(q, PointCloud) and len(q) == len(g)
    assert np.abs(q.world_xyz() - g.world_xyz()).max() <= 0.0005 + 1e-6
    np.testing.assert_array_equal(q.labels, g.labels)
    np.testing.assert_array_equal(q.rgb, g.rgb_from_dc())


# ----------------------------------------------------------------------------- precision and NaN


def test_utm_coordinates_keep_millimetres(tmp_path):
    world = np.array(
        [[870200.01, 6617083.28, 35.123], [870950.437, 6617800.999, 80.001], [870500.0, 6617400.5, 50.0]]
    )
    np.save(tmp_path / "utm.npy", world)
    pc = load_scene(tmp_path / "utm.npy")
    assert pc.xyz.dtype == np.float32 and pc.origin.dtype == np.float64
    assert np.abs(pc.world_xyz() - world).max() < 1e-4
    info = describe_scene(pc)
    assert info["bounds"] == [world.min(axis=0).tolist(), world.max(axis=0).tolist()]  # exact, from float64


@pytest.mark.parametrize("ext", ["npy", "txt", "ply"])
def test_nan_inf_points_dropped_with_count_warning(tmp_path, caplog, ext):
    pc = labelled_cloud(n=50, base=np.zeros(3))
    world = pc.world_xyz()
    world[[3, 7], 0] = np.nan
    world[11, 2] = np.inf
    path = tmp_path / f"bad.{ext}"
    if ext == "npy":
        np.save(path, np.concatenate([world, pc.labels[:, None]], axis=1))
    elif ext == "txt":
        np.savetxt(path, np.concatenate([world, pc.labels[:, None]], axis=1))
    else:
        save_scene(PointCloud(xyz=world, labels=pc.labels), path)
    with caplog.at_level(logging.WARNING):
        q = load_scene(path)
    assert len(q) == 47
    assert "dropped 3 point(s) with NaN/Inf" in caplog.text
    np.testing.assert_array_equal(q.labels, np.delete(pc.labels, [3, 7, 11]))


def test_all_nan_is_an_error(tmp_path):
    np.save(tmp_path / "nan.npy", np.full((4, 3), np.nan))
    with pytest.raises(SceneFormatError, match="no points with finite coordinates"):
        load_scene(tmp_path / "nan.npy")


# ----------------------------------------------------------------------------- bad input


def _truncated(tmp_path, ext):
    save_scene(
        labelled_cloud(n=200) if ext != "splat" else gaussians(n=200, degree=0), tmp_path / f"ok.{ext}"
    )
    data = (tmp_path / f"ok.{ext}").read_bytes()
    bad = tmp_path / f"cut.{ext}"
    bad.write_bytes(data[: len(data) * 2 // 3 + 1])
    return bad


@pytest.mark.parametrize("ext", ["las", "laz", "ply", "splat", "npy", "pcd", "txt"])
def test_truncated_files_give_one_line_error(tmp_path, ext):
    bad = _truncated(tmp_path, ext)
    with pytest.raises(SceneFormatError) as e:
        load_scene(bad)
    msg = str(e.value)
    assert str(bad) in msg and "\n" not in msg


@pytest.mark.parametrize(
    "make, expect",
    [
        (lambda p: (p / "e.las").write_bytes(b""), "file is empty"),
        (lambda p: (p / "e.ply").write_bytes(b""), "file is empty"),
        (lambda p: (p / "x.foo").write_bytes(b"1 2 3"), "unknown file type '.foo'"),
        (lambda p: (p / "d.las").mkdir(), "is a directory"),
        (lambda p: None, "no such file"),
    ],
)
def test_bad_input_cli_exit_2_one_line(tmp_path, capsys, make, expect):
    make(tmp_path)
    target = next(iter(tmp_path.iterdir()), tmp_path / "missing.las")
    rc = cli_main(["info", str(target)])
    err = capsys.readouterr().err
    assert rc == 2
    assert expect in err and str(target) in err
    assert err.strip().count("\n") == 0 and "Traceback" not in err


def test_debug_flag_shows_traceback(tmp_path):
    (tmp_path / "e.las").write_bytes(b"")
    with pytest.raises(SceneFormatError):
        cli_main(["info", str(tmp_path / "e.las"), "--debug"])


def test_open3d_missing_libusb_message(monkeypatch, tmp_path):
    import builtins

    from scene_kd.scene.formats import pcd

    real_import = builtins.__import__

    def fake_import(name, *a, **k):
        if name == "open3d":
            raise OSError("libusb-1.0.so.0: cannot open shared object file: No such file or directory")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(SceneFormatError, match="apt-get install libusb-1.0-0"):
        pcd.import_open3d()


# ----------------------------------------------------------------------------- info on real data


@pytest.mark.skipif(not REAL_FILES, reason="shared real data not present")
@pytest.mark.parametrize("path", REAL_FILES, ids=lambda p: p.name)
def test_info_json_on_real_files_matches_laspy(path, capsys, tmp_path):
    import laspy

    las = laspy.read(path)
    assert cli_main(["info", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == "points"
    assert info["count"] == las.header.point_count == len(las.points)
    ids, counts = np.unique(np.asarray(las.classification), return_counts=True)
    assert info["classes"] == {str(int(i)): int(c) for i, c in zip(ids, counts, strict=True)}
    f = np.asarray(info["units"]["to_metre"])  # bounds in metres: files in feet are converted on load
    np.testing.assert_allclose(info["bounds"], [
        [float(las.x.min()) * f[0], float(las.y.min()) * f[1], float(las.z.min()) * f[2]],
        [float(las.x.max()) * f[0], float(las.y.max()) * f[1], float(las.z.max()) * f[2]],
    ], rtol=1e-12)
    assert "labels" in info["attributes"] and "intensity" in info["attributes"]
    pc = load_scene(path)
    # float32 local coordinates keep better than a millimetre (this tile is 5 km wide)
    np.testing.assert_allclose(pc.world_xyz(), np.stack([las.x, las.y, las.z], axis=1) * f, rtol=0, atol=1e-3)
    # ... and writing back through the kept header restores the stored integers exactly
    save_scene(pc, tmp_path / "back.las")
    back = laspy.read(tmp_path / "back.las")
    for name in ("X", "Y", "Z", "classification", "intensity"):
        np.testing.assert_array_equal(back[name], las[name], err_msg=name)
    if "red" in las.point_format.dimension_names:
        for c in ("red", "green", "blue"):  # 8-bit colour in 16-bit fields is written back as stored
            np.testing.assert_array_equal(
                back[c] >> 8 if las[c].max() > 255 else back[c], las[c] >> 8 if las[c].max() > 255 else las[c]
            )


def test_info_human_output(tmp_path, capsys):
    save_scene(labelled_cloud(n=20), tmp_path / "s.ply")
    assert cli_main(["info", str(tmp_path / "s.ply")]) == 0
    out = capsys.readouterr().out
    assert "20 points" in out and "building" in out
