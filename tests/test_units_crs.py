"""Units and CRS: files in feet (EPSG code, compound with a vertical datum in feet, GeoTIFF keys only with a
user-defined projection) are converted to metres on load and written back in feet; no CRS -> metres assumed
(one line) unless --units says otherwise. Files are built here with laspy + pyproj."""

from __future__ import annotations

import json
import logging
import struct

import laspy
import numpy as np
import pytest
from pyproj import CRS, Transformer

from scene_kd.scene.crs import describe_crs, las_crs
from scene_kd.scene.io import describe_scene, load_scene, save_scene
from scene_kd.scene.units import NO_CRS_LINE, US_FOOT

STRIP_M = 152.8  # the strip's length in metres: 501.3 US survey feet


def _write(path, crs=None, *, version="1.2", pf=3, vlrs=(), n=2000, seed=0):
    rng = np.random.default_rng(seed)
    x = 6_000_000 + rng.uniform(0, STRIP_M / US_FOOT, n)
    y = 2_100_000 + rng.uniform(0, 30 / US_FOOT, n)
    z = 50 + rng.uniform(0, 12 / US_FOOT, n)
    x[0], x[1], z[0], z[1] = 6_000_000, 6_000_000 + STRIP_M / US_FOOT, 50, 50 + 12 / US_FOOT
    h = laspy.LasHeader(version=version, point_format=pf)
    h.scales, h.offsets = [0.01] * 3, [6_000_000, 2_100_000, 0]
    if crs is not None:
        h.add_crs(crs)
    h.vlrs.extend(vlrs)
    las = laspy.LasData(h)
    las.x, las.y, las.z = x, y, z
    las.classification = np.where(z > 50 + 6 / US_FOOT, 6, 2).astype(np.uint8)
    las.write(str(path))
    return path


def _geokey_vlrs(keys, doubles):
    """GeoKeyDirectory + GeoDoubleParams VLRs for (key, location, count, value) entries."""
    words = [1, 1, 0, len(keys)] + [w for k in keys for w in k]
    return [laspy.VLR("LASF_Projection", 34735, "GeoKeyDirectoryTag", struct.pack(f"<{len(words)}H", *words)),
            laspy.VLR("LASF_Projection", 34736, "GeoDoubleParamsTag", struct.pack(f"<{len(doubles)}d", *doubles))]


def _user_lcc_keys(linear_unit=9003, geographic=4269, vertical_unit=9003):
    """California zone 3's Lambert conformal conic (EPSG:2227's), keyed as a user-defined projection."""
    fe, fn = (2_000_000, 500_000) if linear_unit == 9001 else (6561666.667, 1640416.667)
    if linear_unit == 9002:
        fe, fn = 2_000_000 / 0.3048, 500_000 / 0.3048
    keys = [(1024, 0, 1, 1), (1025, 0, 1, 1), (3072, 0, 1, 32767), (3074, 0, 1, 32767), (3075, 0, 1, 8),
            (3076, 0, 1, linear_unit), (3078, 34736, 1, 0), (3079, 34736, 1, 1), (3084, 34736, 1, 2),
            (3085, 34736, 1, 3), (3086, 34736, 1, 4), (3087, 34736, 1, 5)]
    if geographic:
        keys.insert(2, (2048, 0, 1, geographic))
    if vertical_unit:
        keys.append((4099, 0, 1, vertical_unit))
    return _geokey_vlrs(keys, [38.43333333333333, 37.06666666666667, -120.5, 36.5, fe, fn])


def _extent(scene):
    return scene.xyz.max(axis=0).astype(np.float64) - scene.xyz.min(axis=0)


def test_las_in_us_feet_is_metres_in_the_pipeline_and_feet_on_output(tmp_path):
    src = _write(tmp_path / "ft.las", CRS.from_epsg(2227))  # LAS 1.2: the CRS as GeoTIFF keys (EPSG code)
    pc = load_scene(src)
    ext = _extent(pc)
    assert ext[0] == pytest.approx(STRIP_M, abs=0.02) and ext[2] == pytest.approx(12.0, abs=0.02)  # not 501 / 39
    assert pc.meta["file_units"]["horizontal"] == "US survey foot" and pc.meta["file_units"]["source"] == "crs"
    info = describe_scene(pc)
    lo, hi = np.asarray(info["bounds"])
    assert hi[0] - lo[0] == pytest.approx(STRIP_M, abs=0.02)
    assert info["crs"]["units"] == "US survey foot" and info["crs"]["vertical_units"] is None
    # a writer of new coordinates puts them back in feet, under the file's own header and CRS
    save_scene(pc.subset(np.arange(0, len(pc), 2)), tmp_path / "half.las")
    a, b = laspy.read(str(src)), laspy.read(str(tmp_path / "half.las"))
    for d in "XYZ":
        np.testing.assert_array_equal(np.asarray(a[d])[::2], np.asarray(b[d]))
    assert las_crs(b.header).to_epsg() == 2227


def test_batch_labels_feet_tile_in_metres_and_keeps_its_records(tmp_path, monkeypatch):
    """A custom labeller sees metres (an absolute height threshold in metres works); the output tile's X/Y/Z
    integers are the input's."""
    from scene_kd.apps.batch.run import run_batch
    from scene_kd.apps.batch.tiles import BatchJob

    src = _write(tmp_path / "ft.las", CRS.from_epsg(2227))
    (tmp_path / "feet_labeller.py").write_text(
        "import numpy as np\n"
        "def label(scene, labels):\n"
        "    z = scene.xyz[:, 2] - scene.xyz[:, 2].min()\n"
        "    assert float(np.ptp(scene.xyz[:, 0])) < 160, 'not metres'\n"
        "    return (z > 6.0).astype(np.int64), np.ones(len(z), np.float32)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    job = BatchJob(out_dir=str(tmp_path / "out"), labels=("ground", "building"), mode="custom",
                   labeller="feet_labeller:label")
    run_batch([str(src)], job, workers=0, progress=False)
    a, b = laspy.read(str(src)), laspy.read(str(tmp_path / "out" / "ft.laz"))
    for d in "XYZ":
        np.testing.assert_array_equal(np.asarray(a[d]), np.asarray(b[d]))
    np.testing.assert_array_equal(np.asarray(b.classification), np.asarray(a.classification))  # 6 m in metres


def test_compound_crs_reports_both_units_and_z_follows_the_vertical_unit(tmp_path):
    cmp_ft = _write(tmp_path / "cmp.las", CRS.from_user_input("EPSG:2227+6360"), version="1.4", pf=6)
    d = describe_scene(load_scene(cmp_ft))["crs"]
    assert d["compound"] and d["units"] == "US survey foot" and d["vertical_units"] == "US survey foot"
    assert d["vertical_name"] == "NAVD88 height (ftUS)"
    # horizontal metres (UTM 10N) + vertical US feet: only z is converted
    mixed = _write(tmp_path / "mixed.las", CRS.from_user_input("EPSG:26910+6360"), version="1.4", pf=6)
    pc = load_scene(mixed)
    assert pc.meta["file_units"]["to_metre"] == pytest.approx([1.0, 1.0, US_FOOT])
    ext = _extent(pc)
    assert ext[0] == pytest.approx(STRIP_M / US_FOOT, abs=0.02) and ext[2] == pytest.approx(12.0, abs=0.02)
    d = describe_scene(pc)["crs"]
    assert d["units"] == "metre" and d["vertical_units"] == "US survey foot"


def test_geotiff_keys_only_user_defined_projection_in_feet(tmp_path, caplog):
    src = _write(tmp_path / "gk.las", vlrs=_user_lcc_keys())
    hdr = laspy.read(str(src)).header
    laspy_crs = hdr.parse_crs()
    assert laspy_crs is None or laspy_crs.is_geographic  # what laspy alone makes of it: no projection
    crs = las_crs(hdr)
    d = describe_crs(crs)
    assert not d["geographic"] and d["units"] == "US survey foot" and d["vertical_units"] == "US survey foot"
    # the rebuilt projection is EPSG:2227's: the same feet within a hundredth
    x, y = Transformer.from_crs(crs.sub_crs_list[0], CRS.from_epsg(2227), always_xy=True).transform(6_000_000,
                                                                                                   2_100_000)
    assert x == pytest.approx(6_000_000, abs=0.01) and y == pytest.approx(2_100_000, abs=0.01)
    pc = load_scene(src)
    assert _extent(pc)[0] == pytest.approx(STRIP_M, abs=0.02)
    # international feet, no geographic key (laspy: None): still a projection in feet
    src2 = _write(tmp_path / "gk2.las", vlrs=_user_lcc_keys(linear_unit=9002, geographic=None, vertical_unit=None))
    assert laspy.read(str(src2)).header.parse_crs() is None
    with caplog.at_level(logging.INFO):
        pc2 = load_scene(src2)
    assert pc2.meta["file_units"]["to_metre"] == pytest.approx([0.3048] * 3)
    assert "z assumed in foot" in caplog.text


def test_info_cli_shows_units(tmp_path, capsys):
    from scene_kd.cli import main

    src = _write(tmp_path / "gk.las", vlrs=_user_lcc_keys())
    assert main(["info", str(src)]) == 0
    out = capsys.readouterr().out
    assert "horizontal units US survey foot, vertical units US survey foot" in out
    assert "converted to metres" in out
    assert main(["info", str(src), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["crs"]["vertical_units"] == "US survey foot" and info["units"]["source"] == "crs"


def test_no_crs_line_and_units_override(tmp_path, caplog, capsys):
    from scene_kd.cli import main

    src = _write(tmp_path / "none.las")
    with caplog.at_level(logging.INFO):
        pc = load_scene(src)
    assert sum(NO_CRS_LINE in r.getMessage() for r in caplog.records) == 1
    assert _extent(pc)[0] == pytest.approx(STRIP_M / US_FOOT, abs=0.02)
    pc = load_scene(src, units="us-foot")
    assert _extent(pc)[0] == pytest.approx(STRIP_M, abs=0.02)
    assert main(["info", str(src), "--units", "us-foot", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["units"]["source"] == "override" and info["bounds"][1][0] - info["bounds"][0][0] == pytest.approx(
        STRIP_M, abs=0.02)
    # the override also wins over a CRS (warned), and a PLY without CRS takes it too
    ft = _write(tmp_path / "ft.las", CRS.from_epsg(2227))
    assert _extent(load_scene(ft, units="metre"))[0] == pytest.approx(STRIP_M / US_FOOT, abs=0.02)
    save_scene(load_scene(src), tmp_path / "none.ply")
    assert _extent(load_scene(tmp_path / "none.ply", units="foot"))[0] == pytest.approx(STRIP_M / US_FOOT * 0.3048,
                                                                                      abs=0.02)


def test_units_setting_lives_in_the_config(tmp_path, capsys):
    """--units (alias of --input.units) is saved in the run's config.yaml and read back from it: a second
    `render` on the same run folder without the flag keeps us-foot (the scene's extent is metres again)."""
    from scene_kd.cli import main
    from scene_kd.config import PipelineConfig, resolve_config
    from scene_kd.errors import ConfigError

    src = _write(tmp_path / "none.las", n=500)
    run = tmp_path / "run"
    small = ["--width", "96", "--height", "96", "--render.gsd", "2.0", "--render.oblique-gsd", "0",
             "--render.min-views", "0", "--json"]
    assert main(["render", str(src), "--out", str(run), "--units", "us-foot", *small]) == 0
    assert json.loads(capsys.readouterr().out)["scene"]["extent_m"][0] == pytest.approx(STRIP_M, abs=0.02)
    assert "units: us-foot" in (run / "config.yaml").read_text()
    assert resolve_config(run).input.units == "us-foot"
    assert main(["render", str(src), "--out", str(run), *small]) == 0
    assert json.loads(capsys.readouterr().out)["scene"]["extent_m"][0] == pytest.approx(STRIP_M, abs=0.02)
    with pytest.raises(ConfigError):
        resolve_config(None, None, {"input": {"units": "furlong"}})
    assert main(["render", str(src), "--out", str(run), "--units", "foot", "--input.units", "metre"]) == 2
    assert "not both" in capsys.readouterr().err
    assert PipelineConfig().input.units == "auto"


def test_float_intensity_is_scaled_into_uint16(tmp_path):
    from scene_kd.scene.types import PointCloud

    xyz = np.random.default_rng(0).uniform(0, 10, (100, 3))
    inten = np.linspace(0.0, 1.0, 100).astype(np.float32)
    save_scene(PointCloud.from_world(xyz, intensity=inten), tmp_path / "f.las")
    got = np.asarray(laspy.read(str(tmp_path / "f.las")).intensity)
    assert got.max() == 65535 and len(np.unique(got)) == 100  # not cut to 0/1
    whole = np.arange(100, dtype=np.float32) * 600  # what a LAS file held: kept exactly
    save_scene(PointCloud.from_world(xyz, intensity=whole), tmp_path / "w.las")
    np.testing.assert_array_equal(np.asarray(laspy.read(str(tmp_path / "w.las")).intensity), whole.astype(np.uint16))


# real/field files: (folder, name, x/y unit, z unit, lon/lat box the file's centre must fall in or None). The box is
# where the data is (by its CRS read right): a CRS read in the wrong unit puts the centre hundreds of km away.
_REAL_CRS = [
    ("real", "laspy_file_with_both_wkt_and_geotiff_vlrs.las", "US survey foot", "US survey foot",
     (-104.1, 40.0, -95.3, 43.0)),  # Nebraska: WKT (ftUS) + GeoTIFF keys (EPSG 32104 keyed in ftUS, z in ftUS)
    ("real", "pdal_mvk-thin.las", "US survey foot", "US survey foot",
     (-91.7, 30.1, -88.1, 35.0)),  # Mississippi: EPSG 26995 (metres) keyed with ProjLinearUnitsGeoKey 9003
    ("real", "pdal_autzen_trim.las", "foot", "foot", (-123.2, 43.9, -122.9, 44.2)),  # Eugene OR; z as x/y
    ("field", "pdal_4_6_crop.las", "US survey foot", "US survey foot", (-109.1, 31.3, -103.0, 37.0)),  # NM
    ("field", "las14_pf10_fullwave.laz", "metre", "metre", None),
    ("field", "las_spec3_10pts.las", "metre", "metre", None),
    ("field", "copc_simple.copc.laz", "metre", "US survey foot", None),  # WKT compound EPSG:2991 + 6360
]


@pytest.mark.parametrize("folder,name,hu,vu,box", _REAL_CRS, ids=[r[1] for r in _REAL_CRS])
def test_real_and_field_files_load_with_their_crs(real_data, folder, name, hu, vu, box):
    from scene_kd.scene.crs import horizontal

    path = real_data.parent / folder / name
    pc = load_scene(path)
    units = pc.meta["file_units"]
    assert (units["horizontal"], units["vertical"], units["source"]) == (hu, vu, "crs")
    hdr = laspy.read(str(path)).header
    if box is not None:
        crs = horizontal(las_crs(hdr))
        lon, lat = Transformer.from_crs(crs, "EPSG:4326", always_xy=True).transform(
            *((np.asarray(hdr.mins[:2]) + np.asarray(hdr.maxs[:2])) / 2))
        assert box[0] < lon < box[2] and box[1] < lat < box[3], (lon, lat)
    # metres in the pipeline: the file's extent times its units' factors
    np.testing.assert_allclose(_extent(pc), (np.asarray(hdr.maxs) - hdr.mins) * units["to_metre"], rtol=1e-5,
                               atol=0.02)


def _run_and_segment(tmp_path, src, *extra):
    from scene_kd.cli import main

    run = tmp_path / f"run_{src.stem}"
    assert main(["run", str(src), "--out", str(run), "--teacher", "oracle-labels", "--width", "192", "--height",
                 "192", "--epochs", "0", "--render.gsd", "0.5", "--render.oblique-gsd", "0", "--render.min-views", "0",
                 *extra]) == 0  # two views: the round trip, not the labels, is under test
    out = tmp_path / f"seg_{src.stem}.las"
    assert main(["segment", str(run), "--labels", "ground,building", "--out", str(out), "--json"]) == 0
    return run, laspy.read(str(out))


def test_segment_round_trip_in_feet(tmp_path, capsys):
    """`run` + `segment --out` on a feet LAS: the output's X/Y/Z integers are the input's; on a PLY in feet
    without a CRS (`--units us-foot`, kept in the run's config.yaml and scene.json), the written points are back
    in the PLY's feet."""
    from scene_kd.scene.runscene import run_scene_meta

    src = _write(tmp_path / "ft.las", CRS.from_epsg(2227), n=1500)
    run, seg = _run_and_segment(tmp_path, src)
    a = laspy.read(str(src))
    for d in "XYZ":
        np.testing.assert_array_equal(np.asarray(a[d]), np.asarray(seg[d]))
    assert las_crs(seg.header).to_epsg() == 2227
    assert run_scene_meta(run)["file_units"]["to_metre"] == pytest.approx([US_FOOT] * 3)
    out = capsys.readouterr().out
    assert "scene 152.8 x 30.0 m, z range 12.0 m (file in US survey foot, converted to metres)" in out

    ply = tmp_path / "ftply.ply"
    save_scene(load_scene(src, units="metre"), ply)  # the same feet numbers, no CRS
    run, seg = _run_and_segment(tmp_path, ply, "--units", "us-foot")
    assert "units: us-foot" in (run / "config.yaml").read_text()
    np.testing.assert_allclose(np.stack([seg.x, seg.y, seg.z], 1), np.stack([a.x, a.y, a.z], 1), atol=0.011)


def test_crs_naming_the_wrong_unit_gets_a_hint(real_data, tmp_path, caplog):
    """copc_simple's WKT says Oregon LCC in metres, but its x/y are Autzen's in feet (as metres they lie in Canada):
    one warning names --units foot. A file whose CRS is right gets none; EPSG:2227 (ftUS) over metre numbers
    gets --units metre."""
    with caplog.at_level(logging.WARNING):
        pc = load_scene(real_data.parent / "field" / "copc_simple.copc.laz")
    assert "inside it as foot: if so, --units foot" in caplog.text and "area_hint" in pc.meta["file_units"]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert "area_hint" not in load_scene(_write(tmp_path / "ft.las", CRS.from_epsg(2227))).meta["file_units"]
    assert "area of use" not in caplog.text
    src = _write(tmp_path / "m.las", CRS.from_epsg(2227))
    las = laspy.read(str(src))
    las.x, las.y = np.asarray(las.x) * US_FOOT, np.asarray(las.y) * US_FOOT  # metre numbers under a ftUS CRS
    las.write(str(src))
    with caplog.at_level(logging.WARNING):
        load_scene(src)
    assert "--units metre" in caplog.text
