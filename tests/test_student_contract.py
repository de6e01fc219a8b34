"""The student's input contract (student.json["input"]), attribute dropout, and the checks of a tile against it."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from test_distill import FAST, STAGE_CFG, make_run, noisy_fused, toy_scene

from scene_kd.distill.contract import (
    check_tile,
    point_density,
    scene_scale,
    scene_units,
    to_student_units,
    usable_intensity,
    usable_rgb,
)
from scene_kd.distill.train import predict, train_student
from scene_kd.errors import InputContractError
from scene_kd.scene.types import PointCloud


@pytest.fixture(scope="module")
def scene():
    xyz, rgb, lab = toy_scene()
    fused, cov, classes = noisy_fused(lab, xyz)
    return xyz, rgb, lab, fused, cov, classes


@pytest.fixture(scope="module")
def student_run(scene, tmp_path_factory):
    from scene_kd.pipeline import distill_stage

    fused = np.pad(scene[3], ((0, 0), (0, 24)))  # 40-d: the oracle text encoder batch segments with needs >= 37
    run = make_run(tmp_path_factory.mktemp("contract"), (*scene[:3], fused, *scene[4:]))
    field_path = run / "field.json"
    field_path.write_text(json.dumps({**json.loads(field_path.read_text()), "text_encoder": "oracle:v2:d40"}))
    distill_stage(run, STAGE_CFG, progress=False)
    return run


def test_student_json_records_the_input_contract(scene, student_run):
    xyz = scene[0]
    c = json.loads((student_run / "student.json").read_text())["input"]
    assert c["units"] == "m" and c["voxel_size"] == 0.5 and c["points"] == len(xyz)
    assert c["density_pts_per_m2"] == pytest.approx(point_density(xyz[:, :2]), abs=1e-3)
    assert 6.0 < c["density_pts_per_m2"] < 9.0  # 12,000 points on a 40 x 40 m footprint
    assert c["extent"] == pytest.approx(np.ptp(xyz[:, :2], axis=0).tolist(), abs=0.01)
    assert c["height_range"] > 5
    rgb, inten = c["attributes"]["rgb"], c["attributes"]["intensity"]
    assert rgb["used"] and rgb["dropout"] == STAGE_CFG.rgb_dropout > 0 and "127.5" in rgb["normalisation"]
    assert 0 <= rgb["cluster_agreement_without_pct"] <= 100
    assert not inten["used"] and inten["dropout"] == 0  # the run's scene has no intensity
    assert c["teacher"] == "oracle-labels" and c["text_encoder"] == "oracle:v2:d40"


def test_point_density_ignores_holes_in_the_footprint():
    rng = np.random.default_rng(0)
    full = rng.uniform(0, 100, (50_000, 2))  # 5 pts/m²
    assert point_density(full) == pytest.approx(5.0, rel=0.05)
    half = full[full[:, 0] < 50]  # the same density on half the bounding box of a wider tile
    assert point_density(np.r_[half, [[100.0, 100.0]]]) == pytest.approx(5.0, rel=0.1)


def test_colour_dropout_labels_a_tile_without_colour_like_the_coloured_one(scene):
    """The toy scene's colours give its classes away; a student trained without colour dropout leans on them, one
    trained with it labels the scene without colour (constant 0 input) almost as with colour."""
    xyz, rgb, lab, fused, cov, classes = scene
    text = torch.from_numpy(classes)
    agree = {}
    for p in (0.0, 0.5):
        model, _ = train_student(xyz, fused, cov, rgb, dataclasses.replace(FAST, rgb_dropout=p), progress=False)
        with_rgb = (predict(model, xyz, rgb) @ text.T).argmax(1)
        without = (predict(model, xyz, None) @ text.T).argmax(1)
        agree[p] = float((with_rgb == without).float().mean())
        if p > 0:
            assert float((without.numpy() == lab).mean()) > 0.8
    assert agree[0.5] >= 0.9 and agree[0.5] > agree[0.0], agree


def test_tile_checks_refuse_missing_attributes_and_other_units_and_warn_on_density(scene, student_run):
    xyz, rgb = scene[0], scene[1]
    c = json.loads((student_run / "student.json").read_text())["input"]
    assert check_tile(c, xyz, rgb, None).warnings == []
    agree = c["attributes"]["rgb"]["cluster_agreement_without_pct"]
    low = {**c, "attributes": {**c["attributes"], "rgb": {**c["attributes"]["rgb"],
                                                          "cluster_agreement_without_pct": 90.4}}}
    high = {**c, "attributes": {**c["attributes"], "rgb": {**c["attributes"]["rgb"],
                                                           "cluster_agreement_without_pct": 97.0}}}
    # trained with colour dropout: below 95 % agreement without colour refused in one line unless accepted
    with pytest.raises(InputContractError, match=r"^tile has no colour \(rgb\); without it .* 90.4 % .*--accept-missing rgb"):
        check_tile(low, xyz, None, None)
    for contract, figure, accept in ((low, 90.4, ("colour",)), (high, 97.0, ()), (c, agree, ("rgb",))):
        w = check_tile(contract, xyz, None, None, accept_missing=accept).warnings  # labelled, with the figure
        assert len(w) == 1 and w[0].startswith("tile has no colour (rgb)") and f"{figure:.3g} % of points" in w[0], w
    strict = {**c, "attributes": {**c["attributes"], "rgb": {**c["attributes"]["rgb"], "dropout": 0.0}}}
    with pytest.raises(InputContractError, match=r"^tile has no colour \(rgb\); the student was trained with colour"):
        check_tile(strict, xyz, None, None)
    with pytest.raises(InputContractError, match="no colour"):  # colour fields with one colour for every point
        check_tile(strict, xyz, np.zeros_like(rgb), None)
    with pytest.raises(InputContractError, match="US survey foot, the student was trained in m"):
        check_tile(c, xyz, rgb, None, units="US survey foot")  # a unit without a known length
    ft = 1200 / 3937
    fig = check_tile(c, xyz / ft, rgb, None, units="US survey foot", scale=[ft] * 3)
    assert fig.warnings == [] and fig.scale == pytest.approx([ft] * 3)  # converted: measured in metres
    assert fig.density == pytest.approx(c["density_pts_per_m2"], rel=1e-3)
    np.testing.assert_allclose(to_student_units(xyz / ft, fig), xyz, atol=1e-4)
    sparse = xyz[:: 5]
    w = check_tile(c, sparse, rgb[::5], None).warnings
    d = point_density(sparse[:, :2])
    assert len(w) == 1 and f"density {d:.3g} pts/m²" in w[0] and "0.2x" in w[0], w
    feet = xyz / 0.3048006  # the same tile read as feet: sparser and taller
    assert len(check_tile(c, feet, rgb, None).warnings) == 2


def test_attributes_without_information_count_as_missing():
    assert usable_rgb(np.zeros((5, 3), np.uint8)) is None and usable_rgb(None) is None
    rgb = np.array([[1, 2, 3], [1, 2, 4]], np.uint8)
    assert usable_rgb(rgb) is rgb
    assert usable_intensity(np.array([0.0, 1.0, 1.0, 0.0])) is None  # float intensity cut to 0/1 by a writer
    inten = np.arange(10, dtype=np.float32)
    assert usable_intensity(inten) is inten


def test_scene_units_from_the_crs():
    import pyproj

    pc = PointCloud(xyz=np.zeros((2, 3)), meta={"crs": pyproj.CRS.from_user_input("EPSG:2263+6360").to_wkt()})
    assert scene_units(pc) == "US survey foot"
    assert scene_units(PointCloud(xyz=np.zeros((2, 3)), meta={"crs": pyproj.CRS.from_epsg(2154).to_wkt()})) == "metre"
    assert scene_units(PointCloud(xyz=np.zeros((2, 3)))) is None
    name, scale = scene_scale(PointCloud(xyz=np.zeros((2, 3)), meta={"units": "US survey foot"}))
    assert name == "US survey foot" and scale == pytest.approx([1200 / 3937] * 3)
    wkt = pyproj.CRS.from_user_input("EPSG:2263+6360").to_wkt()
    assert scene_scale(PointCloud(xyz=np.zeros((2, 3)), meta={"crs": wkt}))[1] == pytest.approx([1200 / 3937] * 3)
    converted = PointCloud(xyz=np.zeros((2, 3)), meta={"crs": wkt, "file_units": {"to_metre": [1200 / 3937] * 3}})
    assert scene_scale(converted)[1] == pytest.approx([1.0] * 3)  # load_scene converted it already: not twice


def test_apply_student_converts_a_tile_in_feet_to_the_students_metres(scene, student_run):
    """The same tile in US survey feet (declared through meta["units"]) gets the same features as in metres."""
    from scene_kd.distill.predict import apply_student

    xyz, rgb = scene[0], scene[1]
    ft = 1200 / 3937
    metres = apply_student(student_run, PointCloud(xyz=xyz, rgb=rgb)).dense()
    feet = apply_student(student_run, PointCloud(xyz=xyz / ft, rgb=rgb, meta={"units": "US survey foot"})).dense()
    converted = float((metres.float() - feet.float()).norm(dim=1).mean())
    raw = apply_student(student_run, PointCloud(xyz=xyz / ft, rgb=rgb), check=False).dense()  # undeclared feet
    unconverted = float((metres.float() - raw.float()).norm(dim=1).mean())
    assert converted < 0.05 * unconverted, (converted, unconverted)


def test_batch_refuses_a_tile_without_colour_in_one_line_and_warns_on_density(scene, student_run, tmp_path, capsys):
    """batch --student: a tile the contract forbids fails with one line naming colour; a sparse tile is labelled
    with the density warning (terminal and summary.json)."""
    from scene_kd.cli import main as cli
    from scene_kd.scene.io import save_scene

    xyz, rgb = scene[0], scene[1]
    tiles = tmp_path / "tiles"
    tiles.mkdir()
    save_scene(PointCloud(xyz=xyz[::5], rgb=rgb[::5]), tiles / "sparse.ply")
    save_scene(PointCloud(xyz=xyz), tiles / "grey.ply")
    meta_path = student_run / "student.json"
    meta = json.loads(meta_path.read_text())
    meta["input"]["attributes"]["rgb"]["dropout"] = 0.0  # as a student trained without colour dropout records it
    meta_path.write_text(json.dumps(meta))
    try:
        rc = cli(["batch", str(tiles / "*.ply"), "--out", str(tmp_path / "out"), "--labels", "road,building",
                  "--student", str(student_run), "--workers", "0"])
    finally:
        meta["input"]["attributes"]["rgb"]["dropout"] = STAGE_CFG.rgb_dropout
        meta_path.write_text(json.dumps(meta))
    out = capsys.readouterr().out
    assert rc == 1
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    rec = {r["tile"].rsplit("/", 1)[-1]: r for r in summary["tiles"]}
    assert rec["grey.ply"]["status"] == "error" and "tile has no colour (rgb)" in rec["grey.ply"]["error"]
    assert "\n" not in rec["grey.ply"]["error"]
    assert rec["sparse.ply"]["status"] == "done", rec["sparse.ply"]["error"]
    assert "density" in rec["sparse.ply"]["warnings"][0]
    assert f"{rec['sparse.ply']['density']:.3g} pts/m²" in rec["sparse.ply"]["warnings"][0]
    assert "warning:" in out and "pts/m²" in out and "no colour (rgb)" in out


def test_attribute_agreement_counts_points_whose_label_survives_dropping_the_attribute():
    """Over a vocabulary: the % of points whose argmax class is the same without colour (10 % changed here);
    without classes, feature clusters (identical features: 100 %); intensity absent: no figure for it."""
    from scene_kd.distill.contract import attribute_agreement

    rng = np.random.default_rng(0)
    classes = torch.from_numpy(np.linalg.qr(rng.normal(size=(8, 8)))[0][:4].astype(np.float32))
    lab = rng.integers(0, 4, 1000)
    changed = lab.copy()
    changed[:100] = (lab[:100] + 1) % 4
    rgb = np.ones((1000, 3), np.uint8)

    def features_of(c, i):
        return classes[torch.from_numpy(lab if c is not None else changed)] + 0.01

    assert attribute_agreement(features_of, rgb, None, classes=classes) == {"rgb": 90.0}
    assert attribute_agreement(lambda c, i: classes[torch.from_numpy(lab)], rgb, None) == {"rgb": 100.0}


def test_apply_student_voxelises_on_a_world_grid_whatever_the_files_origin(scene, student_run):
    """The same points stored with another origin (a re-tiled file, a LAS in feet converted to metres) get the same
    features: the student's voxel and ground-cell grids are anchored in world coordinates (world_phase)."""
    from scene_kd.distill.predict import apply_student

    xyz, rgb = scene[0], scene[1]
    base = np.array([1000.2, 2000.3, 10.1])  # the toy walls and roofs then lie off the world grid's boundaries
    a = apply_student(student_run, PointCloud(xyz=xyz, rgb=rgb, origin=base), check=False).dense().float()
    shift = np.array([0.137, 0.061, 0.043], dtype=np.float64)  # a fraction of a voxel
    moved = PointCloud(xyz=(xyz.astype(np.float64) + shift).astype(np.float32), rgb=rgb, origin=base - shift)
    b = apply_student(student_run, moved, check=False).dense().float()
    same = ((a - b).norm(dim=1) < 1e-2).float().mean().item()
    assert same > 0.995, same


def test_batch_refuses_a_tile_whose_labels_would_change_without_colour_unless_accepted(scene, student_run, tmp_path,
                                                                                       capsys):
    """A student whose labels kept < 95 % on its training tile without colour refuses a colourless tile in one line
    naming --accept-missing; with --accept-missing colour the tile is labelled, with the figure as a warning."""
    from scene_kd.cli import main as cli
    from scene_kd.scene.io import save_scene

    tiles = tmp_path / "tiles"
    tiles.mkdir()
    save_scene(PointCloud(xyz=scene[0]), tiles / "grey.ply")
    meta_path = student_run / "student.json"
    original = meta_path.read_text()
    meta = json.loads(original)
    for kind in ("label", "cluster"):
        meta["input"]["attributes"]["rgb"].pop(f"{kind}_agreement_without_pct", None)
    meta["input"]["attributes"]["rgb"]["cluster_agreement_without_pct"] = 90.4
    meta_path.write_text(json.dumps(meta))
    try:
        argv = ["batch", str(tiles / "*.ply"), "--labels", "road,building", "--student", str(student_run),
                "--workers", "0"]
        assert cli([*argv, "--out", str(tmp_path / "a")]) == 1
        rec = json.loads((tmp_path / "a" / "summary.json").read_text())["tiles"][0]
        assert rec["status"] == "error" and "90.4 %" in rec["error"] and "--accept-missing rgb" in rec["error"]
        assert cli([*argv, "--out", str(tmp_path / "b"), "--accept-missing", "colour"]) == 0
        rec = json.loads((tmp_path / "b" / "summary.json").read_text())["tiles"][0]
        assert rec["status"] == "done" and "90.4 % of points" in rec["warnings"][0]
        assert cli([*argv, "--out", str(tmp_path / "c"), "--accept-missing", "depth"]) == 2
        assert "--accept-missing takes rgb (colour) or intensity, not 'depth'" in capsys.readouterr().err
    finally:
        meta_path.write_text(original)
