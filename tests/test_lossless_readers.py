"""Readers of the same kinds as the field files (generated here), PLY/3DGS exports that copy input rows,
and the SuperSplat compressed layout against gsplat's own exporter."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from lossless_helpers import cli

from scene_kd.scene.io import load_scene


def test_pcd_upper_case_fields_lower_case_types(tmp_path):
    p = tmp_path / "u.pcd"
    p.write_text("# .PCD v0.7\nVERSION 0.7\nFIELDS X Y Z Intensity Label\nSIZE 4 4 4 4 4\nTYPE f f f f u\n"
                 "COUNT 1 1 1 1 1\nWIDTH 3\nHEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\nPOINTS 3\nDATA ascii\n"
                 "1 2 3 10 2\n4 5 6 20 6\n7 8 9 30 2\n")
    pc = load_scene(p)
    np.testing.assert_allclose(pc.world_xyz(), [[1, 2, 3], [4, 5, 6], [7, 8, 9]])
    np.testing.assert_array_equal(pc.intensity, [10, 20, 30])
    np.testing.assert_array_equal(pc.labels, [2, 6, 2])


def test_structured_npy_read_by_field_names(tmp_path):
    a = np.zeros(4, dtype=[("X", "f8"), ("Y", "f8"), ("Z", "f8"), ("Red", "u2"), ("Green", "u2"), ("Blue", "u2"),
                           ("Classification", "u1"), ("GpsTime", "f8")])
    a["X"], a["Red"], a["Classification"], a["GpsTime"] = np.arange(4), 65535, [2, 2, 6, 6], 1e5 + np.arange(4)
    np.save(tmp_path / "s.npy", a)
    pc = load_scene(tmp_path / "s.npy")
    np.testing.assert_array_equal(pc.labels, [2, 2, 6, 6])
    assert (pc.rgb[:, 0] == 255).all() and (pc.rgb[:, 1] == 0).all()
    np.testing.assert_array_equal(pc.extra["GpsTime"], a["GpsTime"])


def test_txt_header_names_any_order_and_unknown_columns(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("//Z;X;Y;classification;return_number\r\n1;2;3;6;1\r\n4;5;6;2;2\r\n")
    pc = load_scene(p)
    np.testing.assert_allclose(pc.world_xyz(), [[2, 3, 1], [5, 6, 4]])
    np.testing.assert_array_equal(pc.labels, [6, 2])
    np.testing.assert_array_equal(pc.extra["return_number"], [1, 2])
    q = tmp_path / "plain.txt"  # no header keeps the positional layout (xyz + label)
    q.write_text("1 2 3 5\n4 5 6 6\n")
    np.testing.assert_array_equal(load_scene(q).labels, [5, 6])


def test_float32_coordinates_coarser_than_1cm_warn(tmp_path, caplog):
    from plyfile import PlyData, PlyElement

    v = np.zeros(3, dtype=[("x", "f4"), ("y", "f4"), ("z", "f4")])
    v["x"] = [4.6e6, 4.6e6 + 1, 4.6e6 + 2]
    PlyData([PlyElement.describe(v, "vertex")]).write(str(tmp_path / "f.ply"))
    with caplog.at_level(logging.WARNING):
        load_scene(tmp_path / "f.ply")
    assert "coarser than" in caplog.text
    caplog.clear()
    v["x"] = [10.0, 11.0, 12.0]
    PlyData([PlyElement.describe(v, "vertex")]).write(str(tmp_path / "g.ply"))
    with caplog.at_level(logging.WARNING):
        load_scene(tmp_path / "g.ply")
    assert "coarser than" not in caplog.text


def test_supersplat_compressed_matches_gsplat_export(tmp_path):
    torch = pytest.importorskip("torch")
    exporter = pytest.importorskip("gsplat.exporter")
    from scipy.spatial import cKDTree

    g = torch.Generator().manual_seed(0)
    n = 700
    means = torch.randn(n, 3, generator=g) * 2 + torch.tensor([10.0, 20.0, 3.0])
    scales = torch.randn(n, 3, generator=g) * 0.5 - 3
    q = torch.randn(n, 4, generator=g)
    q = q / q.norm(dim=1, keepdim=True)
    op = torch.randn(n, generator=g) * 2
    sh0, shn = torch.rand(n, 1, 3, generator=g) - 0.5, (torch.rand(n, 15, 3, generator=g) - 0.5) * 0.6
    path = tmp_path / "c.ply"
    exporter.export_splats(means, scales, q, op, sh0, shn, format="ply_compressed", save_to=str(path))
    s = load_scene(path)
    kept = int((torch.sigmoid(op) > 1 / 255).sum())  # gsplat drops nearly transparent splats
    assert len(s) == kept and s.sh.shape == (kept, 16, 3)
    dist, i = cKDTree(means.numpy()).query(s.world_xyz())
    assert dist.max() < 0.01 and len(set(i.tolist())) == kept
    assert np.abs((q.numpy()[i] * s.quats).sum(1)).min() > 0.999
    np.testing.assert_allclose(s.log_scales, scales.numpy()[i], atol=0.003)
    np.testing.assert_allclose(s.sh[:, 0], sh0.numpy()[i, 0], atol=0.004)
    np.testing.assert_allclose(s.sh[:, 1:], shn.numpy()[i], atol=0.016)
    np.testing.assert_allclose(1 / (1 + np.exp(-s.opacity_logits)), torch.sigmoid(op).numpy()[i], atol=0.003)


def test_query_export_ply_keeps_input_properties(tmp_path):
    """A PLY scene with NaN rows and its own properties: the PLY export copies its rows (mapped past the
    dropped ones) with every property and appends relevancy."""
    from plyfile import PlyData, PlyElement

    from scene_kd.scene.io import save_scene
    from scene_kd.scene.synthetic import make_urban

    save_scene(make_urban(points=3000, seed=1), tmp_path / "u.ply")
    src = PlyData.read(str(tmp_path / "u.ply"))["vertex"].data
    rows = np.empty(len(src) + 2, dtype=src.dtype.descr + [("gps_time", "f8")])
    for k in src.dtype.names:
        rows[k][:2], rows[k][2:] = src[k][:2], src[k]
    rows["x"][:2] = np.nan
    rows["gps_time"] = 1e9 + np.arange(len(rows))
    PlyData([PlyElement.describe(rows, "vertex")], comments=PlyData.read(str(tmp_path / "u.ply")).comments
            ).write(str(tmp_path / "n.ply"))
    run = tmp_path / "run"
    assert cli("run", tmp_path / "n.ply", "--out", run, "--config", "ci", "--teacher", "oracle-labels") == 0
    out = tmp_path / "hits.ply"
    assert cli("query", run, "building", "--threshold", "-1", "--export", out) == 0
    got = PlyData.read(str(out))["vertex"].data
    assert len(got) == len(rows) - 2
    for k in rows.dtype.names:
        np.testing.assert_array_equal(got[k], rows[k][2:], err_msg=k)
    assert "relevancy" in got.dtype.names


def test_3dgs_export_keeps_every_gaussian_property(tmp_path):
    """3DGS run from a file with zero rows: the PLY export is the input's own (non-zero) rows."""
    from conftest import REAL_DATA
    from plyfile import PlyData

    from scene_kd.query.export import export_points
    from scene_kd.scene.runscene import save_run_scene

    src = REAL_DATA.parent / "field" / "3dgs_zero_filled_rows_postshot.ply"
    if not src.exists():
        pytest.skip("field data absent")
    g = load_scene(src)
    save_run_scene(tmp_path, g)
    field = type("F", (), {"__len__": lambda self: len(g)})()
    mask = np.zeros(len(g), dtype=bool)
    mask[::3] = True
    info = export_points(tmp_path / "sel.ply", field, run_dir=tmp_path, mask=mask,
                         relevancy=np.linspace(0, 1, len(g)))
    got = PlyData.read(str(tmp_path / "sel.ply"))["vertex"].data
    raw = PlyData.read(str(src))["vertex"].data
    want = raw[g.meta["source_rows"][mask]]
    assert info["count"] == len(want) == len(got)
    for k in raw.dtype.names:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    # the exported object loads back as the same Gaussians, bit for bit
    back, sub = load_scene(tmp_path / "sel.ply"), g.subset(mask)
    for k in ("means", "quats", "log_scales", "opacity_logits", "sh"):
        np.testing.assert_array_equal(getattr(back, k), getattr(sub, k), err_msg=k)


def test_splat_zero_rows_dropped_with_count(tmp_path, caplog):
    from scene_kd.scene.formats.splat import SPLAT_DTYPE

    rec = np.zeros(10, dtype=SPLAT_DTYPE)
    rec["position"][:4] = np.arange(12).reshape(4, 3)
    rec["scale"][:4] = 0.1
    rec["rgba"][:4] = 200
    rec["rot"][:4] = [255, 128, 128, 128]
    rec["rot"][4] = 128  # a zero quaternion with a position and scale
    rec["position"][4], rec["scale"][4] = 1, 0.1
    rec.tofile(tmp_path / "z.splat")
    with caplog.at_level(logging.WARNING):
        g = load_scene(tmp_path / "z.splat")
    assert len(g) == 4 and "dropped 6 Gaussian" in caplog.text
    np.testing.assert_array_equal(g.meta["source_rows"], [0, 1, 2, 3])
