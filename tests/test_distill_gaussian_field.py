"""Gaussian feature field (Feature 3DGS) on a tiny scene: training reduces the loss and recovers known features."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from scene_kd.distill.gaussian_field import (
    GaussianFieldConfig,
    MaskTargets,
    downsample_view,
    pixel_targets,
    train_gaussian_field,
)
from scene_kd.errors import SceneKDError
from scene_kd.scene.types import Camera, GaussianSplats


def tiny_scene(seed: int = 0):
    """~90 opaque Gaussians on a plane 5 m in front of the cameras; class = which third of x they lie in."""
    rng = np.random.default_rng(seed)
    gx, gy = np.meshgrid(np.linspace(-2.2, 2.2, 10), np.linspace(-2.0, 2.0, 9))
    means = np.c_[gx.ravel(), gy.ravel(), 5 + rng.normal(0, 0.05, gx.size)]
    n = len(means)
    labels = np.digitize(means[:, 0], [-0.75, 0.75])
    splats = GaussianSplats(
        means=means, quats=np.tile([1.0, 0, 0, 0], (n, 1)), log_scales=np.log(np.full((n, 3), 0.22)),
        opacity_logits=np.full(n, 4.0), sh=np.zeros((n, 1, 3)), labels=labels,
    )
    cams = []
    for dx, dy in ((0, 0), (0.4, 0.2), (-0.4, -0.2), (0.2, -0.4)):
        w2c = np.eye(4)
        w2c[:3, 3] = [-dx, -dy, 0]
        cams.append(Camera(K=[[34, 0, 16], [0, 34, 16], [0, 0, 1]], world_to_cam=w2c, width=32, height=32))
    return splats, cams, labels


def test_feature_field_learns_per_gaussian_features():
    from scene_kd.render.gaussians import rasterize_gaussians

    splats, cams, labels = tiny_scene()
    dim = 8
    classes = torch.linalg.qr(torch.randn(dim, dim, generator=torch.Generator().manual_seed(1)))[0][:3]
    truth = classes[torch.as_tensor(labels)]
    targets, valid = [], []
    for cam in cams:  # teacher maps = the true per-Gaussian features rendered with the same rasterizer
        out = rasterize_gaussians(splats.means, splats.quats, splats.log_scales, splats.opacity_logits, None, cam,
                                  features=truth)
        f = out["features"]
        targets.append(f / f.norm(dim=-1, keepdim=True).clamp_min(1e-8))
        valid.append(out["alpha"] > 0.5)
    assert all(v.float().mean() > 0.5 for v in valid)
    cfg = GaussianFieldConfig(feature_dim=4, iterations=80, lr=0.1, decoder_lr=0.02, backend="torch")
    field, hist = train_gaussian_field(splats, cams, targets, valid, cfg, device="cpu", progress=False)
    first, last = np.mean(hist["loss"][:4]), np.mean(hist["loss"][-8:])
    assert last < 0.25 * first, (first, last)
    feats = field.gaussian_features()
    assert feats.shape == (len(labels), dim)
    # Gaussians seen by some camera (x within the views) recover their class vector
    seen = np.abs(splats.means[:, 0]) < 1.9
    pred = (feats @ classes.T).argmax(1).numpy()
    assert (pred[seen] == labels[seen]).mean() >= 0.9
    cos = (feats * truth).sum(1).numpy()
    assert np.median(cos[seen]) > 0.8


def test_pixel_targets_balance_levels_and_mark_empty():
    emb = torch.eye(3)
    ids = np.array([[[0, -1], [1, -1]], [[2, -1], [1, 2]]])  # 2 levels, 2x2 image
    t, valid = pixel_targets(ids, emb)
    assert valid.tolist() == [[True, False], [True, True]]
    torch.testing.assert_close(t[0, 0], torch.tensor([1.0, 0, 1.0]) / 2**0.5)
    torch.testing.assert_close(t[1, 0], torch.tensor([0.0, 1.0, 0.0]))


def test_bad_inputs():
    splats, cams, _ = tiny_scene()
    with pytest.raises(SceneKDError, match="one target"):
        train_gaussian_field(splats, cams, [torch.zeros(32, 32, 4)], progress=False)
    with pytest.raises(SceneKDError, match="does not match"):
        train_gaussian_field(splats, cams[:1], [torch.zeros(16, 32, 4)], progress=False)


def test_mask_targets_equal_pixel_targets():
    rng = np.random.default_rng(2)
    emb = torch.randn(7, 5)
    ids = rng.integers(-1, 7, size=(3, 6, 8))
    dense, valid = pixel_targets(ids, emb)
    lazy = MaskTargets(ids, emb / emb.norm(dim=1, keepdim=True))
    assert lazy.shape == (6, 8, 5)
    assert torch.equal(lazy.valid(), valid)
    pix = valid.reshape(-1).nonzero().squeeze(1)
    torch.testing.assert_close(lazy.at(pix), dense.reshape(-1, 5)[pix])


def test_downsample_view_scales_intrinsics_and_samples_masks():
    from scene_kd.render.points import project_points

    _, cams, _ = tiny_scene()
    cam = cams[1]
    ids = np.arange(32 * 32).reshape(1, 32, 32)
    small, small_ids = downsample_view(cam, ids, 4)
    assert (small.width, small.height) == (8, 8) and small_ids.shape == (1, 8, 8)
    pts = torch.tensor([[0.3, -0.2, 5.0], [-1.0, 0.7, 4.0]])
    uv, _ = project_points(pts, cam)
    uv_small, _ = project_points(pts, small)
    torch.testing.assert_close(uv_small, uv / 4)
    # each new pixel takes the source pixel at its centre: new (r, c) <- old (4r + 2, 4c + 2)
    assert small_ids[0, 1, 3] == ids[0, 6, 14]
    assert downsample_view(cam, ids, 1)[1] is ids


def test_init_from_features_starts_at_them_and_anchor_holds_them():
    """Started from given features, the field decodes to them before any step; with the anchor, training on
    contradicting maps moves covered Gaussians much less than without it."""
    splats, cams, labels = tiny_scene()
    dim = 8
    classes = torch.linalg.qr(torch.randn(dim, dim, generator=torch.Generator().manual_seed(1)))[0][:3]
    init = classes[torch.as_tensor(labels)]
    start, hist = train_gaussian_field(splats, cams, [torch.zeros(32, 32, dim)] * len(cams), None,
                                       GaussianFieldConfig(feature_dim=4, iterations=0, backend="torch"),
                                       device="cpu", progress=False, init_features=init)
    assert hist["loss"] == []
    assert (start.gaussian_features() * init).sum(1).min() > 0.999
    wrong = classes[(torch.as_tensor(labels) + 1) % 3]  # maps that say every Gaussian is the next class
    targets = []
    from scene_kd.render.gaussians import rasterize_gaussians

    for cam in cams:
        f = rasterize_gaussians(splats.means, splats.quats, splats.log_scales, splats.opacity_logits, None, cam,
                                features=wrong)["features"]
        targets.append(f / f.norm(dim=-1, keepdim=True).clamp_min(1e-8))
    kept = {}
    for w in (0.0, 1.0):
        cfg = GaussianFieldConfig(feature_dim=4, iterations=40, lr=0.1, decoder_lr=0.02, anchor_weight=w, backend="torch")
        field, _ = train_gaussian_field(splats, cams, targets, None, cfg, device="cpu", progress=False, init_features=init)
        kept[w] = float((field.gaussian_features() * init).sum(1).mean())
    assert kept[0.0] < 0.2 and kept[1.0] > 0.6, kept


def test_distill_stage_trains_a_gaussian_field_on_a_splat_run(tmp_path):
    from scene_kd.config import load_config
    from scene_kd.distill.gaussian_field import load_gaussian_field
    from scene_kd.errors import RunStateError
    from scene_kd.field import FeatureField
    from scene_kd.pipeline import distill_stage, eval_stage, run_pipeline
    from scene_kd.scene.io import save_scene
    from scene_kd.scene.synthetic import as_splats, make_tabletop

    path = tmp_path / "table.ply"
    save_scene(as_splats(make_tabletop(seed=1, points=20_000)[0], seed=0, max_gaussians=1500), path)
    cfg = load_config(None, {"render": {"preset": "orbit", "width": 64, "height": 64, "levels": 1},
                             "teacher": {"name": "oracle-labels", "oracle_realism": "perfect"},  # 64-px plumbing test
                             "distill": {"student": "gaussian-field",
                                         "gaussian_field": {"iterations": 60, "downsample": 1}}})
    run = tmp_path / "run"
    run_pipeline(path, run, cfg, until="fuse")
    summary = distill_stage(run, cfg.distill, progress=False)
    assert summary["student"] == "gaussian-field" and not summary["skipped"]
    assert summary["final_loss"] <= summary["first_loss"]
    field = FeatureField.load(run)
    assert (field.features["distilled"].n, field.features["distilled"].dim) == (1500, field.dim)
    saved = load_gaussian_field(run / "gaussian_field.safetensors")
    torch.testing.assert_close(saved.gaussian_features(), field.dense("distilled"), atol=2e-3, rtol=0)
    assert distill_stage(run, cfg.distill, progress=False)["skipped"]
    ev = eval_stage(run)
    assert ev["distilled"]["miou"] >= ev["fused"]["miou"] - 0.1, ev  # anchored: keeps what lifting found
    assert ev["distilled"]["miou"] > 0.5

    points = tmp_path / "points"
    save_scene(make_tabletop(seed=1, points=5_000)[0], tmp_path / "pts.ply")
    run_pipeline(tmp_path / "pts.ply", points, cfg, until="fuse")
    with pytest.raises(RunStateError, match="needs a Gaussian-splat scene"):
        distill_stage(points, cfg.distill, progress=False)
    with pytest.raises(RunStateError, match="unknown student 'voxels'"):
        distill_stage(points, dataclasses.replace(cfg.distill, student="voxels"), progress=False)
