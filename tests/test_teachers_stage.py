"""The features stage (oracle teacher): on-disk format, skipping, feature cache, preview, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_teachers_fixtures import NAMES, make_run

import scene_kd.teachers.stage as stage_mod
from scene_kd.cli import main as cli_main
from scene_kd.errors import RunStateError
from scene_kd.pipeline import features_stage
from scene_kd.runio import load_tensors, read_json
from scene_kd.teachers.config import OracleConfig
from scene_kd.teachers.stage import pca_colours, write_preview_from_run
from scene_kd.teachers.text import load_text_encoder


def _count_teacher_calls(monkeypatch):
    calls = {"views": 0}
    real = stage_mod.create_teacher

    def counting(name, **cfg):
        t = real(name, **cfg)
        enc = t.encode_views

        def wrapped(renders):
            calls["views"] += len(renders)
            return enc(renders)

        t.encode_views = wrapped
        return t

    monkeypatch.setattr(stage_mod, "create_teacher", counting)
    return calls


def test_features_stage_writes_format(tmp_path):
    run = tmp_path / "run"
    renders = make_run(run, n=5)
    out = features_stage(run, OracleConfig(batch_size=2, oracle_realism="perfect"))
    assert out["views"] == 5 and out["teacher"] == "oracle-labels" and out["dim"] == 64
    t, meta = load_tensors(run / "features.safetensors")
    emb = t["embeddings"]
    assert emb.dtype == torch.float32 and emb.shape == (out["masks"], 64)
    assert torch.allclose(emb.norm(dim=1), torch.ones(len(emb)), atol=1e-5)
    assert meta["teacher"] == "oracle-labels" and meta["text_encoder"] == "oracle:v2:d64" and meta["dim"] == 64
    assert meta["config_hash"]
    enc = load_text_encoder(meta["text_encoder"])
    names = sorted(NAMES)
    text = enc.encode_text([NAMES[c] for c in names])
    seen_rows = []
    for i, r in enumerate(renders):
        with np.load(run / "masks" / f"{i:04d}.npz") as z:
            ids = z["mask_ids"]
        assert ids.dtype == np.int32 and ids.shape == (1, *r.rgb.shape[:2])
        rows = np.unique(ids[ids >= 0])
        assert (t["mask_view"][rows].numpy() == i).all()  # global rows point at this view's masks
        area = np.bincount(ids[ids >= 0], minlength=len(emb))
        assert (area[rows] == t["mask_area"][rows].numpy()).all()
        # a query for a pixel's class finds the mask covering it
        dec = np.array(names)[(emb[ids[0][ids[0] >= 0]] @ text.T).argmax(1).numpy()]
        assert (dec == r.labels[ids[0] >= 0]).mean() >= 0.95
        seen_rows.append(rows)
    assert np.array_equal(np.concatenate(seen_rows), np.arange(len(emb)))
    stages = read_json(run / "stages.json")
    assert stages["features"]["key"] == meta["config_hash"]


def test_skip_cache_and_force(tmp_path, monkeypatch):
    calls = _count_teacher_calls(monkeypatch)
    run = tmp_path / "run"
    make_run(run, n=3)
    features_stage(run, OracleConfig())
    assert calls["views"] == 3
    assert features_stage(run, OracleConfig())["skipped"]
    assert calls["views"] == 3
    # same renders in another run folder: served from the feature cache, no teacher calls
    run2 = tmp_path / "run2"
    make_run(run2, n=3)
    out = features_stage(run2, OracleConfig())
    assert calls["views"] == 3 and out["cached_views"] == 3
    a, _ = load_tensors(run / "features.safetensors")
    b, _ = load_tensors(run2 / "features.safetensors")
    assert torch.equal(a["embeddings"], b["embeddings"])
    # a different config is a different cache entry
    features_stage(run2, OracleConfig(label_flip=0.2))
    assert calls["views"] == 6
    out = features_stage(run2, OracleConfig(label_flip=0.2), force=True)
    assert not out["skipped"] and out["cached_views"] == 3


def test_preview_png(tmp_path):
    run = tmp_path / "run"
    make_run(run, n=3, h=60, w=80)
    features_stage(run, OracleConfig(), preview=True)
    from PIL import Image

    img = np.asarray(Image.open(run / "plots" / "masks.png"))
    assert img.shape[0] >= 60 and img.shape[1] >= 3 * 80
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 10
    (run / "plots" / "masks.png").unlink()
    write_preview_from_run(run)
    assert (run / "plots" / "masks.png").exists()


def test_pca_colours_separate_classes():
    enc = load_text_encoder("oracle:v2:d64")
    e = enc.encode_text(["car"] * 5 + ["road"] * 5 + ["tree"] * 5)
    c = pca_colours(e)
    assert c.shape == (15, 3) and c.min() >= 0 and c.max() <= 1
    assert np.allclose(c[0], c[4]) and not np.allclose(c[0], c[5]) and not np.allclose(c[5], c[10])


def test_missing_inputs(tmp_path):
    with pytest.raises(RunStateError, match="views.json"):
        features_stage(tmp_path, OracleConfig())
    run = tmp_path / "run"
    make_run(run, n=2)
    (run / "renders" / "0001.npz").unlink()
    with pytest.raises(RunStateError, match="missing render"):
        features_stage(run, OracleConfig())


def test_cli_features_json(tmp_path, capsys):
    run = tmp_path / "run"
    make_run(run, n=2)
    assert cli_main(["features", str(run), "--teacher", "oracle-labels", "--label-flip", "0.1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["views"] == 2 and out["masks"] > 0 and not out["skipped"]
    assert cli_main(["features", str(tmp_path / "nope")]) == 2
    assert "views.json" in capsys.readouterr().err
