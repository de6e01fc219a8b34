"""The fuse stage on a small hand-built run folder (real point renders, oracle-style masks from the labels)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from scene_kd.errors import RunStateError
from scene_kd.field import FeatureField
from scene_kd.lift.config import FuseConfig
from scene_kd.pipeline import fuse_stage
from scene_kd.render.points import render_points
from scene_kd.render.types import save_render
from scene_kd.runio import load_tensors, read_json, save_tensors, write_json
from scene_kd.scene.formats.las import ASPRS_CLASSES
from scene_kd.scene.runscene import save_run_scene
from scene_kd.scene.types import Camera, PointCloud

ROAD, GROUND, BUILDING, UNCLASSIFIED = 11, 2, 6, 1


def nadir(cx: float, cy: float, h: float, *, f: float = 40.0, size: int = 64, level: int = 0) -> Camera:
    R = np.diag([1.0, -1.0, -1.0])
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = -R @ np.array([cx, cy, h])
    return Camera(K=np.array([[f, 0, size / 2], [0, f, size / 2], [0, 0, 1.0]]), world_to_cam=T, width=size,
                  height=size, level=level)


def labelled_scene() -> PointCloud:
    """Ground (road for x < 5, unclassified strip y > 13) and a closed building (walls + flat roof at z = 8), so
    the ground inside it is hidden from every view."""
    g = np.arange(0, 15.01, 0.5)
    gx, gy = np.meshgrid(g, g)
    ground = np.c_[gx.ravel(), gy.ravel(), np.zeros(gx.size)]
    labels = np.where(ground[:, 0] < 5, ROAD, GROUND)
    labels[ground[:, 1] > 13] = UNCLASSIFIED
    rx, ry = np.meshgrid(np.arange(8, 11.01, 0.25), np.arange(3, 8.01, 0.25))
    roof = np.c_[rx.ravel(), ry.ravel(), np.full(rx.size, 8.0)]
    t = np.arange(0, 1.0, 1 / 64)
    ring = np.concatenate([np.c_[8 + 3 * t, np.full_like(t, 3)], np.c_[np.full_like(t, 11), 3 + 5 * t],
                           np.c_[11 - 3 * t, np.full_like(t, 8)], np.c_[np.full_like(t, 8), 8 - 5 * t]])
    z = np.arange(0.25, 8.0, 0.25)
    walls = np.c_[np.repeat(ring, len(z), axis=0), np.tile(z, len(ring))]
    roof = np.concatenate([roof, walls])
    xyz = np.concatenate([ground, roof])
    labels = np.concatenate([labels, np.full(len(roof), BUILDING)]).astype(np.int32)
    rgb = np.random.default_rng(0).integers(0, 255, (len(xyz), 3)).astype(np.uint8)
    return PointCloud.from_world(xyz + [1000.0, 2000.0, 50.0], rgb=rgb, labels=labels, label_names=dict(ASPRS_CLASSES))


def class_vectors(label_names: dict[int, str]) -> dict[int, torch.Tensor]:
    from scene_kd.teachers.text import load_text_encoder

    enc = load_text_encoder("oracle:v2:d64")
    ids = sorted(label_names)
    vecs = enc.encode_class_names([label_names[i] for i in ids])
    return {i: vecs[k] for k, i in enumerate(ids)}


def make_run(run: Path, *, empty_masks: bool = False) -> PointCloud:
    """RUN with scene, views.json, renders/, masks/ and features.safetensors: one mask per class per view,
    embedded with the oracle text encoder's class vectors (a perfect teacher)."""
    pc = labelled_scene()
    run.mkdir(parents=True, exist_ok=True)
    save_run_scene(run, pc)
    cams = [nadir(7.5, 7.5, 30, level=0), nadir(4, 7.5, 15, level=1), nadir(11, 7.5, 15, level=1)]
    write_json(run / "views.json", {"scene_kind": "points", "preset": "test", "cameras": [c.to_json() for c in cams],
                                    "levels": [0, 1], "coverage": {}})
    vectors = class_vectors(pc.label_names)
    emb, mask_view, offset = [], [], 0
    for i, cam in enumerate(cams):
        r = render_points(pc.xyz, cam, labels=pc.labels, point_size_px=4)
        save_render(run, i, r)
        ids = np.full((1, cam.height, cam.width), -1, np.int32)
        if not empty_masks:
            for c in np.unique(r.labels[r.labels >= 0]):
                ids[0][r.labels == c] = offset
                emb.append(vectors[int(c)])
                mask_view.append(i)
                offset += 1
        (run / "masks").mkdir(exist_ok=True)
        np.savez_compressed(run / "masks" / f"{i:04d}.npz", mask_ids=ids)
    embeddings = torch.stack(emb) if emb else torch.zeros(1, 64)
    m = len(embeddings)
    save_tensors(run / "features.safetensors",
                 {"embeddings": embeddings, "mask_view": torch.tensor(mask_view + [0] * (m - len(mask_view)), dtype=torch.int32),
                  "mask_level": torch.zeros(m, dtype=torch.int32), "mask_area": torch.ones(m, dtype=torch.int32)},
                 {"teacher": "oracle-labels", "text_encoder": "oracle:v2:d64", "dim": 64, "config_hash": "test"})
    return pc


@pytest.fixture
def run_dir(tmp_path) -> Path:
    make_run(tmp_path / "run")
    return tmp_path / "run"


def test_fuse_stage_writes_fused_features_and_the_field(run_dir):
    summary = fuse_stage(run_dir, FuseConfig())
    assert not summary["skipped"] and summary["kind"] == "points" and summary["dim"] == 64
    pc = labelled_scene()
    assert summary["count"] == len(pc) and 0.0 < summary["coverage"] < 1.0
    tensors, meta = load_tensors(run_dir / "fused.safetensors")
    assert "features" not in tensors and meta["storage"] == "mask-mixture"  # the field holds them, once
    assert meta["granularities"] == ["level0", "level1"] and meta["text_encoder"] == "oracle:v2:d64"
    cov = tensors["coverage"]
    assert int((cov > 0).sum()) == summary["covered"]
    assert torch.equal(cov, tensors["coverage.level0"] + tensors["coverage.level1"])
    field = FeatureField.load(run_dir, expect_text_encoder="oracle:v2:d64")
    assert field.sources == ["fused"] and field.dim == 64 and field.teacher == "oracle-labels"
    np.testing.assert_array_equal(field.positions, pc.xyz)
    np.testing.assert_array_equal(field.origin, pc.origin)
    np.testing.assert_array_equal(field.labels, pc.labels)
    np.testing.assert_array_equal(field.coverage, cov.numpy())
    assert field.rgb is not None and field.label_names[BUILDING] == "building"
    # uncovered points: exactly the zero rows; hidden ground under the roof among them
    fused = field.dense("fused")
    assert torch.equal(fused.abs().sum(1) == 0, cov == 0)
    under_roof = (pc.xyz[:, 2] == 0) & (np.abs(pc.xyz[:, 0] - 9.5) < 0.6) & (np.abs(pc.xyz[:, 1] - 5.5) < 0.6)
    assert under_roof.any() and (cov.numpy()[under_roof] == 0).all()
    ground = pc.xyz[:, 2] == 0
    assert 0.8 < (cov.numpy()[ground] > 0).mean() < 1.0  # all but the ground inside the building
    # a perfect teacher: covered points take their own class
    vec = class_vectors(pc.label_names)
    codes = sorted(vec)
    table = torch.stack([vec[c] for c in codes])
    pred = np.array(codes)[(fused @ table.T).argmax(1).numpy()]
    ok = (cov.numpy() > 0) & (pc.labels != UNCLASSIFIED)  # the thin unclassified strip is mostly boundary
    assert (pred[ok] == pc.labels[ok]).mean() > 0.95
    stages = read_json(run_dir / "stages.json")
    assert stages["fuse"]["summary"]["covered"] == summary["covered"]


def test_fuse_stage_skips_when_current_and_redoes_when_forced(run_dir):
    fuse_stage(run_dir, FuseConfig())
    before = (run_dir / "field.safetensors").stat().st_mtime_ns
    again = fuse_stage(run_dir, FuseConfig())
    assert again["skipped"] and again["covered"] > 0
    assert (run_dir / "field.safetensors").stat().st_mtime_ns == before
    changed = fuse_stage(run_dir, FuseConfig(border_px=2))
    assert not changed["skipped"] and changed["covered"] >= again["covered"]
    assert not fuse_stage(run_dir, FuseConfig(border_px=2), force=True)["skipped"]


def test_fuse_stage_with_no_covered_point_writes_nothing(tmp_path):
    run = tmp_path / "run"
    make_run(run, empty_masks=True)
    with pytest.raises(RunStateError, match="no point is covered"):
        fuse_stage(run, FuseConfig())
    assert not (run / "fused.safetensors").exists() and not (run / "field.json").exists()


def test_fuse_stage_refuses_to_replace_a_field_of_another_dim(run_dir):
    old = FeatureField(positions=np.zeros((3, 3), np.float32), origin=np.zeros(3), features={"fused": torch.zeros(3, 8)},
                       teacher="other", text_encoder="oracle:v2:d8", dim=8)
    old.save(run_dir)
    text_before = (run_dir / "field.json").read_text()
    with pytest.raises(RunStateError, match="8-dim.*64-dim.*--force"):
        fuse_stage(run_dir, FuseConfig())
    assert (run_dir / "field.json").read_text() == text_before and not (run_dir / "fused.safetensors").exists()
    assert fuse_stage(run_dir, FuseConfig(), force=True)["dim"] == 64
    assert FeatureField.load(run_dir).dim == 64


def test_fuse_stage_reports_missing_and_inconsistent_inputs(run_dir, tmp_path):
    (run_dir / "masks" / "0001.npz").unlink()
    with pytest.raises(RunStateError, match=r"masks/0001.npz.*scene-kd features"):
        fuse_stage(run_dir, FuseConfig())
    assert not (run_dir / "fused.safetensors").exists()
    with pytest.raises(RunStateError, match="not a run folder"):
        fuse_stage(tmp_path / "nowhere", FuseConfig())
    run2 = tmp_path / "run2"
    make_run(run2)
    t, meta = load_tensors(run2 / "features.safetensors")
    save_tensors(run2 / "features.safetensors", t, {**meta, "dim": 32})
    with pytest.raises(RunStateError, match="dim 32"):
        fuse_stage(run2, FuseConfig())
    save_tensors(run2 / "features.safetensors", {**t, "embeddings": t["embeddings"][:2]}, meta)
    with pytest.raises(RunStateError, match="embedding row"):
        fuse_stage(run2, FuseConfig())
    assert not (run2 / "field.json").exists()


def test_fuse_cli_json(run_dir, capsys):
    from scene_kd.cli import main

    assert main(["fuse", str(run_dir), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["covered"] > 0 and out["skipped"] is False and set(out["granularities"]) == {"level0", "level1"}
    assert main(["fuse", str(run_dir)]) == 0
    assert "skipped" in capsys.readouterr().out
    assert main(["fuse", str(run_dir.parent / "missing")]) == 2


def test_fuse_stage_lifts_onto_gaussians_through_topk_weights(tmp_path):
    from scene_kd.render.types import Render
    from scene_kd.scene.types import GaussianSplats

    n = 5
    splats = GaussianSplats(means=np.random.default_rng(0).normal(size=(n, 3)), quats=np.tile([1.0, 0, 0, 0], (n, 1)),
                            log_scales=np.full((n, 3), -2.0), opacity_logits=np.zeros(n), sh=np.zeros((n, 1, 3)),
                            labels=np.array([2, 2, 6, 6, 6], np.int32), label_names={2: "ground", 6: "building"})
    run = tmp_path / "run"
    save_run_scene(run, splats)
    cam = Camera(K=np.array([[4.0, 0, 2], [0, 4.0, 2], [0, 0, 1]]), world_to_cam=np.eye(4), width=4, height=4)
    write_json(run / "views.json", {"scene_kind": "gaussians", "cameras": [cam.to_json()]})
    ids = np.full((4, 4, 2), -1, np.int32)
    w = np.zeros((4, 4, 2), np.float32)
    ids[:, :2, 0], w[:, :2, 0] = 0, 0.7  # Gaussian 0 on the left half, 1 on top of it
    ids[:, :2, 1], w[:, :2, 1] = 1, 0.2
    ids[:, 2:, 0], w[:, 2:, 0] = 2, 0.9  # Gaussian 2 on the right half; 3 and 4 never drawn
    save_render(run, 0, Render(camera=cam, rgb=np.zeros((4, 4, 3), np.uint8), depth=np.ones((4, 4), np.float32),
                               ids=ids[..., 0], topk_ids=ids, topk_weights=w))
    masks = np.zeros((1, 4, 4), np.int32)
    masks[0, :, 2:] = 1
    (run / "masks").mkdir()
    np.savez(run / "masks" / "0000.npz", mask_ids=masks)
    save_tensors(run / "features.safetensors", {"embeddings": torch.eye(8)[:2]},
                 {"teacher": "oracle-labels", "text_encoder": "oracle:v2:d8", "dim": 8})
    summary = fuse_stage(run, FuseConfig(border_px=0))
    assert summary["kind"] == "gaussians" and summary["covered"] == 3
    field = FeatureField.load(run)
    f = field.dense("fused")
    assert field.kind == "gaussians" and field.coverage.tolist() == [1, 1, 1, 0, 0]
    torch.testing.assert_close(f[:3, :2], torch.tensor([[1.0, 0], [1.0, 0], [0, 1.0]]), atol=1e-3, rtol=0)
    assert (f[3:] == 0).all() and field.rgb.shape == (n, 3)
