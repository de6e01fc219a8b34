"""Core plumbing: atomic writes, config loading, stage bookkeeping, FeatureField format, CLI errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from scene_kd.cli import main
from scene_kd.config import PipelineConfig, dump_config, load_config
from scene_kd.errors import RunStateError, SceneKDError
from scene_kd.field import FeatureField
from scene_kd.runio import atomic_path, load_tensors, save_tensors, write_json
from scene_kd.scene.types import Camera, PointCloud


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]


def test_config_yaml_merge_and_unknown_key(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("render:\n  width: 64\n  background: [1, 2, 3]\nteacher:\n  name: clip-grid\n")
    cfg = load_config(p)
    assert cfg.render.width == 64 and cfg.render.background == (1, 2, 3) and cfg.teacher.name == "clip-grid"
    assert cfg.render.height == PipelineConfig().render.height
    assert load_config(None, {"fuse": {"border_px": 3}}).fuse.border_px == 3
    p.write_text("render:\n  widht: 64\n")
    with pytest.raises(SceneKDError, match="widht"):
        load_config(p)
    # the dumped YAML loads back to the same config
    p.write_text(dump_config(cfg))
    assert load_config(p) == cfg


def test_safetensors_roundtrip_and_corruption(tmp_path):
    save_tensors(tmp_path / "t.safetensors", {"a": np.arange(6, dtype=np.float32).reshape(2, 3)}, {"k": [1, 2]})
    t, meta = load_tensors(tmp_path / "t.safetensors")
    assert t["a"].shape == (2, 3) and meta == {"k": [1, 2]}
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(RunStateError, match="cannot read"):
        load_tensors(tmp_path / "bad.safetensors")


def _field(n=50, d=8, with_distilled=True):
    g = torch.Generator().manual_seed(0)
    fused = torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1)
    fused[:10] = 0  # uncovered
    feats = {"fused": fused.half()}
    if with_distilled:
        feats["distilled"] = torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1).half()
    return FeatureField(
        positions=np.random.default_rng(0).random((n, 3), dtype=np.float32), origin=np.array([870200.01, 6617083.28, 10.0]),
        features=feats, teacher="oracle-labels", text_encoder="oracle:v2:d8", dim=d,
        coverage=np.r_[np.zeros(10), np.ones(n - 10)].astype(np.int32), labels=np.zeros(n, dtype=np.int32),
        label_names={0: "road"},
    )


def test_feature_field_roundtrip_and_validation(tmp_path):
    f = _field()
    f.save(tmp_path)
    g = FeatureField.load(tmp_path, expect_text_encoder="oracle:v2:d8")
    assert g.sources == ["fused", "distilled", "ensemble"]
    assert np.array_equal(g.origin, f.origin) and g.label_names == {0: "road"}
    assert torch.equal(g.features["fused"].data, f.features["fused"].data)
    with pytest.raises(RunStateError, match="text encoder"):
        FeatureField.load(tmp_path, expect_text_encoder="open_clip:ViT-B-16:laion2b_s34b_b88k")
    with pytest.raises(RunStateError, match="not a run folder"):
        FeatureField.load(tmp_path / "nope")
    meta = json.loads((tmp_path / "field.json").read_text())
    meta["dim"] = 16
    write_json(tmp_path / "field.json", meta)
    with pytest.raises(RunStateError, match="dim 16"):
        FeatureField.load(tmp_path)


def test_ensemble_takes_the_more_confident_source():
    f = _field()
    text = torch.nn.functional.normalize(f.features["distilled"].data[10:12].float(), dim=1)
    ens = f.features_for("ensemble", text)
    # rows 10 and 11 match the text exactly in distilled -> distilled wins there; uncovered rows -> distilled
    dist = f.dense("distilled")
    assert torch.equal(ens[10], dist[10]) and torch.equal(ens[:10], dist[:10])
    with pytest.raises(RunStateError):
        _field(with_distilled=False).features_for("ensemble", text)


def test_point_cloud_keeps_utm_precision():
    world = np.array([[870200.011, 6617083.283, 31.207], [870251.5, 6617120.25, 45.0]])
    pc = PointCloud.from_world(world)
    assert np.abs(pc.world_xyz() - world).max() < 1e-3
    sub = pc.subset(np.array([True, False]))
    assert len(sub) == 1 and np.allclose(sub.world_xyz(), world[:1], atol=1e-3)


def test_camera_json_roundtrip():
    cam = Camera(K=np.diag([100.0, 100.0, 1.0]), world_to_cam=np.eye(4), width=64, height=48, level=2, name="x")
    back = Camera.from_json(json.loads(json.dumps(cam.to_json())))
    assert back.level == 2 and np.array_equal(back.K, cam.K) and np.array_equal(back.center, np.zeros(3))


def test_cli_error_is_one_line_exit_2(tmp_path, capsys):
    bad = tmp_path / "scene.xyz2"
    bad.write_text("1 2 3\n")
    assert main(["info", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown file type" in err and "Traceback" not in err
    with pytest.raises(SceneKDError):
        main(["info", str(bad), "--debug"])
