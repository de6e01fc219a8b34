"""`scene-kd query` / `scene-kd segment` end to end on a small synthetic run made by the real pipeline."""

from __future__ import annotations

import json

import numpy as np

from scene_kd.cli import main


def run_json(capsys, *argv: str) -> tuple[int, dict | None, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, (json.loads(out) if rc == 0 else None), err


def test_query_json_top_and_export(urban_run, capsys, tmp_path):
    from plyfile import PlyData

    from scene_kd.field import FeatureField

    field = FeatureField.load(urban_run)
    building = next(k for k, v in field.label_names.items() if v == "building")
    rc, out, err = run_json(capsys, "query", str(urban_run), "building", "--top", "20", "--threshold", "0.9",
                            "--export", str(tmp_path / "hits.ply"), "--json")
    assert rc == 0, err
    assert out["query"] == "building" and len(out["top"]) == 20
    idx = np.array([i for i, _ in out["top"]])
    scores = np.array([s for _, s in out["top"]])
    assert (field.labels[idx] == building).mean() >= 0.9  # the fused oracle labels hold a few occlusion errors
    assert (np.diff(scores) <= 0).all() and scores[0] > 0.94  # sigmoid(10 * (1 - cos(concept, negative)))
    hits = out["count_above_threshold"]
    gt = int((field.labels == building).sum())
    assert 0.5 * gt < hits < 1.5 * gt
    v = PlyData.read(str(tmp_path / "hits.ply"))["vertex"]
    assert len(v["x"]) == hits == out["export"]["count"] and (np.asarray(v["relevancy"]) > 0.9).all()


def test_segment_json_and_las(urban_run, capsys, tmp_path):
    import laspy

    from scene_kd.field import FeatureField

    field = FeatureField.load(urban_run)
    labels = "road,sidewalk,building,tree,car,pole,grass"
    rc, out, err = run_json(capsys, "segment", str(urban_run), "--labels", labels, "--out", str(tmp_path / "seg.las"), "--json")
    assert rc == 0, err
    assert list(out["counts"]) == labels.split(",") and sum(out["counts"].values()) + out["unknown"] == len(field)
    assert out["export"]["classes"]["building"] == 6 and out["export"]["classes"]["road"] == 11
    assert out["export"]["classes"]["car"] >= 64
    las = laspy.read(str(tmp_path / "seg.las"))
    assert len(las.points) == len(field) and "confidence" in las.point_format.extra_dimension_names
    codes = np.array([out["export"]["classes"][n] for n in labels.split(",")])
    from scene_kd.query.segment import segment

    idx, conf = segment(field, labels)
    np.testing.assert_array_equal(np.asarray(las.classification), codes[idx.numpy()])  # what segment() says
    np.testing.assert_allclose(np.asarray(las["confidence"]), conf.numpy(), rtol=1e-6)
    code_of_gt = np.array([out["export"]["classes"][field.label_names[int(c)]] for c in range(7)])[field.labels]
    assert (np.asarray(las.classification) == code_of_gt).mean() > 0.6  # oracle teacher: mostly right (chance 0.14)
    np.testing.assert_allclose(las.x, field.world_positions()[:, 0], atol=0.002)


def test_cli_bad_input_exits_2(urban_run, capsys, tmp_path):
    rc, _, err = run_json(capsys, "query", str(urban_run), "  ", "--json")
    assert rc == 2 and "empty query" in err
    rc, _, err = run_json(capsys, "query", str(tmp_path), "building", "--json")
    assert rc == 2 and "field.json" in err
    rc, _, err = run_json(capsys, "query", str(urban_run), "building", "--text-encoder", "open_clip:ViT-B-16:laion2b_s34b_b88k")
    assert rc == 2 and "text encoder" in err
    rc, _, err = run_json(capsys, "query", str(urban_run), "building", "--source", "best")
    assert rc == 2 and "source" in err
    rc, _, err = run_json(capsys, "segment", str(urban_run), "--labels", "road,,tree")
    assert rc == 2 and "empty label" in err
    rc, _, err = run_json(capsys, "segment", str(urban_run), "--labels", "road", "--out", str(tmp_path / "x.obj"))
    assert rc == 2 and "cannot export" in err
    rc, _, err = run_json(capsys, "view", str(tmp_path))
    assert rc == 2 and "no feature field" in err
