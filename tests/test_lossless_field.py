"""Field files (../shared/data/field, README there) and real tiles: each with its right result.

LAS/LAZ outputs of ``segment --out``, ``query --export`` and ``batch`` annotate the input's records (every
dimension but classification, header, VLRs, EVLRs kept); other readers decode what the files hold.
"""

from __future__ import annotations

import json
import logging
import os

import laspy
import numpy as np
import pytest
from conftest import REAL_DATA
from lossless_helpers import assert_records_kept, cli

from scene_kd.errors import SceneKDError

FIELD = REAL_DATA.parent / "field"
pytestmark = pytest.mark.skipif(not FIELD.exists(), reason=f"field data not found at {FIELD}")


def _run(src, run, *labels_needed):
    assert cli("run", src, "--out", run, "--config", "ci", "--teacher", "oracle-labels") == 0


def _three_outputs(src, tmp_path, labels=None, suffix="las"):
    """run (oracle) then segment --out, query --export (every point) and batch --student on ``src``; ``labels``
    default: the classes the run has points of (a name it has none of is refused)."""
    from scene_kd.field import FeatureField
    from scene_kd.query.labels import known_classes

    run = tmp_path / "run"
    _run(src, run)
    labels = labels or ",".join(known_classes(FeatureField.load(run))[:3])
    seg, q, bdir = tmp_path / f"seg.{suffix}", tmp_path / f"q.{suffix}", tmp_path / "batch"
    assert cli("segment", run, "--labels", labels, "--out", seg) == 0
    assert cli("query", run, labels.split(",")[0], "--threshold", "-1", "--export", q) == 0
    assert cli("batch", src, "--out", bdir, "--labels", labels, "--student", run, "--workers", "0") == 0
    out_b = next(bdir.glob("*.laz"))
    return seg, q, out_b


def test_las_spec3_every_dimension_kept(tmp_path):
    src = FIELD / "las_spec3_10pts.las"
    seg, q, b = _three_outputs(src, tmp_path)
    for out, added in ((seg, ("confidence",)), (q, ("relevancy",)), (b, ("confidence",))):
        assert_records_kept(src, out, added=added)
        las = laspy.read(str(out))
        assert las.gps_time[0] == 499450.8059940542
        assert (np.asarray(las.number_of_returns) == 6).all()


def test_copc_written_as_plain_laz(tmp_path):
    src = FIELD / "copc_simple.copc.laz"
    seg, q, b = _three_outputs(src, tmp_path, suffix="laz")
    for out, added in ((seg, ("confidence",)), (q, ("relevancy",)), (b, ("confidence",))):
        assert_records_kept(src, out, added=added)
        las = laspy.read(str(out))
        assert len(las.points) == 1065 and las.header.are_points_compressed
        assert las.header.parse_crs() is not None


def test_pdal_4_6_crop_batch_student_keeps_returns(tmp_path):
    src = FIELD / "pdal_4_6_crop.las"
    run = tmp_path / "run"
    _run(src, run)
    assert cli("batch", src, "--out", tmp_path / "b", "--labels", "ground,unclassified", "--student", run,
               "--workers", "0") == 0
    out = tmp_path / "b" / "pdal_4_6_crop.laz"
    assert_records_kept(src, out, added=("confidence",))
    las = laspy.read(str(out))
    assert len(las.points) == 23875 and (np.asarray(las.return_number) > 0).all()
    assert las.gps_time[:2].tolist() == [81616201.91035877, 81616201.91421877]


@pytest.mark.parametrize("name", ["las14_pf10_fullwave.laz", "las14_extrabytes_7elem_array_nonzero.las",
                                  "las10_pf0_1pt.las", "las_geographic_epsg4326.las"])
def test_batch_annotates_files_without_usable_classes(tmp_path, name):
    """Files the oracle cannot label (one class, one point): batch with a custom labeller, same writer."""
    src = FIELD / name
    assert cli("batch", src, "--out", tmp_path, "--labels", "ground", "--labeller",
               "lossless_helpers:label_all_first", "--workers", "0") == 0
    out = next(tmp_path.glob("*.laz"))
    assert_records_kept(src, out, added=("confidence",))
    las = laspy.read(str(out))
    assert (np.asarray(las.classification) == 2).all()
    if name.startswith("las14_extrabytes"):
        assert (np.asarray(las["Reserved"]) == np.arange(1, 8)).all()
        assert not any(d.startswith("Reserved_") for d in las.point_format.dimension_names)
    if name.startswith("las10"):
        assert str(las.header.version) == "1.2" and las.header.point_format.id == 0
        np.testing.assert_allclose([las.x[0], las.y[0], las.z[0]], [470692.44, 4602888.90, 16.00], atol=1e-6)
    if name.startswith("las14_pf10"):
        assert len(las.points) == 10750 and las.header.point_format.id == 10


def test_las10_and_extrabytes_through_segment(tmp_path):
    """segment --out on a run made from the extra-bytes file (classes 1/2): Reserved [1..7] survives."""
    src = FIELD / "las14_extrabytes_7elem_array_nonzero.las"
    run = tmp_path / "run"
    _run(src, run)
    out = tmp_path / "o.las"
    assert cli("segment", run, "--labels", "unclassified,ground", "--out", out) == 0
    assert_records_kept(src, out, added=("confidence",))


def test_geographic_crs_reprojected_for_the_pipeline(caplog):
    from scene_kd.scene.io import describe_scene, load_scene

    with caplog.at_level(logging.WARNING):
        pc = load_scene(FIELD / "las_geographic_epsg4326.las")
    assert "WGS 84" in caplog.text and "UTM zone 15N" in caplog.text
    ext = np.ptp(pc.world_xyz(), axis=0)
    np.testing.assert_allclose(ext, [2178, 1172, 39], rtol=0.03)
    info = describe_scene(pc)
    assert info["crs"]["epsg"] == 4326 and info["crs"]["geographic"]
    assert info["reprojected_to"]["epsg"] == 32615


def test_geographic_crs_refused_by_policy():
    from scene_kd.errors import SceneFormatError
    from scene_kd.scene import crs

    h = laspy.read(str(FIELD / "las_geographic_epsg4326.las")).header.parse_crs()
    with pytest.raises(SceneFormatError, match="WGS 84"):
        crs.geographic_to_utm(h, -93.3, 31.0, policy=crs.GeoPolicy(geographic="refuse"))


def test_info_shows_crs(capsys):
    assert cli("info", FIELD / "las14_pf10_fullwave.laz") == 0
    assert "EPSG:32723" in capsys.readouterr().out
    assert cli("info", FIELD / "las_geographic_epsg4326.las", "--json") == 0
    info = json.loads(capsys.readouterr().out)
    assert info["crs"]["name"] == "WGS 84"


def test_source_changed_or_gone_is_refused(tmp_path, capsys):
    import shutil

    src = tmp_path / "s.las"
    shutil.copy(FIELD / "las_spec3_10pts.las", src)
    run = tmp_path / "run"
    _run(src, run)
    with open(src, "r+b") as fh:  # change one byte of a point record
        fh.seek(-2, 2)
        fh.write(b"\x01")
    capsys.readouterr()
    assert cli("segment", run, "--labels", "ground", "--out", tmp_path / "o.las") == 2
    assert "changed since the run" in capsys.readouterr().err
    src.unlink()
    assert cli("query", run, "ground", "--threshold", "-1", "--export", tmp_path / "o.laz") == 2
    assert "input file is gone" in capsys.readouterr().err
    assert not (tmp_path / "o.las").exists() and not (tmp_path / "o.laz").exists()


def test_cloudcompare_scalar_fields():
    from scene_kd.scene.io import load_scene

    pc = load_scene(FIELD / "ply_cloudcompare_scalar_Classification.ply")
    ids, counts = np.unique(pc.labels, return_counts=True)
    assert dict(zip(ids.tolist(), counts.tolist(), strict=True)) == {1: 516, 2: 113818, 3: 164, 4: 153,
                                                                    5: 1536, 6: 99, 65: 1}
    from plyfile import PlyData

    raw = PlyData.read(str(FIELD / "ply_cloudcompare_scalar_Classification.ply"))["vertex"]
    np.testing.assert_array_equal(pc.intensity, np.asarray(raw["scalar_Intensity"], dtype=np.float32))
    assert "scalar_GpsTime" in pc.extra


def test_txt_header_row_names_columns():
    from scene_kd.scene.io import load_scene

    pc = load_scene(FIELD / "txt_pdal_header_X_Y_Z_Intensity_crlf.txt")
    assert len(pc) == 10 and pc.labels is None
    np.testing.assert_array_equal(pc.intensity, np.arange(10))


def test_3dgs_zero_rows_dropped_with_count(caplog):
    from scene_kd.scene.io import load_scene

    with caplog.at_level(logging.WARNING):
        g = load_scene(FIELD / "3dgs_zero_filled_rows_postshot.ply")
    assert len(g) == 4000 and "dropped 20000 Gaussian" in caplog.text
    assert (np.linalg.norm(g.quats, axis=1) > 0).all()
    np.testing.assert_array_equal(g.meta["source_rows"], np.flatnonzero(g.meta["source_rows"] >= 0))


def test_supersplat_compressed_decoded():
    from scene_kd.scene.io import load_scene

    g = load_scene(FIELD / "gsplat_export_supersplat_compressed.ply")
    assert g.kind == "gaussians" and len(g) == 4000
    np.testing.assert_allclose(np.linalg.norm(g.quats, axis=1), 1, atol=1e-5)
    assert np.isfinite(g.sh).all() and np.isfinite(g.opacity_logits).all()


def test_nerf_synthetic_transforms():
    from scene_kd.scene.cameras import load_cameras_file

    cams = load_cameras_file(FIELD / "blender_nerf_synthetic" / "transforms_train.json")
    assert len(cams) == 8 and all((c.width, c.height) == (200, 200) for c in cams)
    np.testing.assert_allclose([cams[0].K[0, 0], cams[0].K[1, 1]], [277.8, 277.8], atol=0.05)


def test_colmap_cameras_scaled_to_requested_size():
    from scene_kd.errors import SceneKDError
    from scene_kd.render.config import RenderConfig
    from scene_kd.render.views import plan_views
    from scene_kd.scene.synthetic import make_urban

    scene = make_urban(points=2000, seed=0)
    preset = f"cameras:{FIELD / 'colmap_pinhole_4k'}"
    cams = plan_views(scene, RenderConfig(preset=preset, width=960, height=540))
    assert all((c.width, c.height) == (960, 540) for c in cams)
    np.testing.assert_allclose([cams[0].K[0, 0], cams[0].K[0, 2], cams[0].K[1, 2]], [642.0, 482.1, 270.0], atol=0.05)
    same = plan_views(scene, RenderConfig(preset=preset))
    assert (same[0].width, same[0].height) == (3840, 2160)
    with pytest.raises(SceneKDError, match="aspect"):
        plan_views(scene, RenderConfig(preset=preset, width=960, height=960))


@pytest.mark.parametrize("name,labels", [
    ("pdal_mvk-thin.las", "ground,water,high vegetation,overlap"),
    ("laspy_file_with_both_wkt_and_geotiff_vlrs.las", "ground,high vegetation,building,noise"),
    pytest.param("pdal_sample_c.las", "building,ground,high vegetation,road,wire", marks=pytest.mark.slow),
    pytest.param("pdal_autzen_trim.las", "ground,unclassified", marks=pytest.mark.slow),
])
def test_real_tiles_segment_out_keeps_records(tmp_path, name, labels):
    src = REAL_DATA / name
    run = tmp_path / "run"
    _run(src, run)
    out = tmp_path / "o.laz"
    assert cli("segment", run, "--labels", labels, "--out", out) == 0
    assert_records_kept(src, out, added=("confidence",))
    from scene_kd.apps.batch.tiles import class_codes

    las = laspy.read(str(out))
    codes = set(class_codes(tuple(labels.split(",")), las.header.point_format.id)) | {1}
    assert set(np.unique(np.asarray(las.classification)).tolist()) <= codes


def test_labels_that_classification_cannot_hold_go_to_an_extra_label_dim(tmp_path):
    """40 non-ASPRS labels cannot fit PF3's 5-bit classification: class 1 + an int16 'label' index."""
    from scene_kd.scene.io import load_scene

    src = FIELD / "las_spec3_10pts.las"
    names = ",".join(f"thing{i}" for i in range(40))
    assert cli("batch", src, "--out", tmp_path, "--labels", names, "--labeller",
               "lossless_helpers:label_all_first", "--workers", "0") == 0
    out = tmp_path / "las_spec3_10pts.laz"
    assert_records_kept(src, out, added=("label", "confidence"))
    las = laspy.read(str(out))
    assert (np.asarray(las.classification) == 1).all() and (np.asarray(las["label"]) == 0).all()
    back = load_scene(out)
    assert (back.labels == 0).all() and back.label_names[0] == "thing0"


def test_outputs_never_claim_copc_and_are_readable_by_others(tmp_path):
    import stat

    from scene_kd.apps.batch.tiles import output_path
    from scene_kd.query.export import export_points

    assert output_path(tmp_path, "tiles/simple.copc.laz").name == "simple.laz"
    with pytest.raises(SceneKDError, match="not .copc.laz"):
        export_points(tmp_path / "x.copc.laz", None, run_dir=None)
    from scene_kd.runio import write_json

    old = os.umask(0o022)
    try:
        write_json(tmp_path / "a.json", {"a": 1})  # atomic writes get the umask's mode, not mkstemp's 0600
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644


def test_cloudcompare_classification_gets_asprs_names():
    from scene_kd.scene.io import load_scene
    from scene_kd.teachers.stage import scene_has_classes

    pc = load_scene(FIELD / "ply_cloudcompare_scalar_Classification.ply")
    assert pc.label_names[2] == "ground" and pc.label_names[6] == "building" and scene_has_classes(pc)


def test_cameras_dir_accepts_a_nerf_synthetic_folder():
    from scene_kd.scene.cameras import load_cameras_file

    cams = load_cameras_file(FIELD / "blender_nerf_synthetic")
    assert len(cams) == 8 and cams[0].width == 200 and abs(cams[0].K[0, 0] - 277.78) < 0.01
