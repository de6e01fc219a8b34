"""Gaussian feature field (Feature 3DGS) on a tiny scene: training reduces the loss and recovers known features."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scene_kd.distill.gaussian_field import GaussianFieldConfig, pixel_targets, train_gaussian_field
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
