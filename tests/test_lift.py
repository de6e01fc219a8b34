"""Fusion onto points and training-free lifting onto Gaussians (scene_kd/lift)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from scene_kd.errors import SceneKDError
from scene_kd.lift.config import FuseConfig
from scene_kd.lift.fuse import fuse_points, sample_weights, view_angle_cosine
from scene_kd.lift.gaussians import lift_gaussians
from scene_kd.render.points import project_points, render_points, visible_in_view
from scene_kd.scene.types import Camera

PLAIN = FuseConfig(view_angle_weight=False, footprint_weight=False, border_px=2)
"""Weights exactly 1 for points on the visible surface: features become plain sums of mask embeddings."""


def nadir(cx: float, cy: float, h: float, *, f: float = 20.0, size: int = 64, level: int = 0) -> Camera:
    """A camera at (cx, cy, h) looking straight down (OpenCV: x right, y down, z forward = world -z)."""
    R = np.diag([1.0, -1.0, -1.0])
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = -R @ np.array([cx, cy, h])
    K = np.array([[f, 0, size / 2], [0, f, size / 2], [0, 0, 1.0]])
    return Camera(K=K, world_to_cam=T, width=size, height=size, level=level)


def grid(n: int = 10, z: float = 0.0) -> np.ndarray:
    g = np.stack(np.meshgrid(np.arange(n, dtype=np.float64), np.arange(n, dtype=np.float64)), -1).reshape(-1, 2)
    return np.c_[g, np.full(len(g), z)].astype(np.float32)


def depth_of(xyz: np.ndarray, cam: Camera) -> np.ndarray:
    return render_points(xyz, cam, point_size_px=5).depth


def columns(xyz: np.ndarray, cam: Camera) -> np.ndarray:
    uv, _ = project_points(xyz, cam)
    return np.floor(uv[:, 0].numpy()).astype(int)


def halves(size: int = 64, left: int = 0, right: int = 1) -> np.ndarray:
    m = np.empty((1, size, size), np.int32)
    m[0, :, : size // 2] = left
    m[0, :, size // 2 :] = right
    return m


def unit(d: int, k: int) -> torch.Tensor:
    return torch.eye(d)[k]


def test_fusion_gives_the_normalised_sum_of_the_masks_containing_each_point():
    xyz = grid()
    cams = [nadir(4.5, 4.5, 10), nadir(4.5, 4.5, 10)]
    masks = [halves(left=0, right=1), np.full((1, 64, 64), 2, np.int32)]
    E = torch.eye(4)[:3]
    left = columns(xyz, cams[0]) < 32
    assert 0 < left.sum() < len(xyz)
    expected = torch.where(torch.from_numpy(left)[:, None], (E[0] + E[2]) / math.sqrt(2), (E[1] + E[2]) / math.sqrt(2))
    feats, cov, per = fuse_points(xyz, cams, (depth_of(xyz, c) for c in cams), iter(masks), E, PLAIN)
    assert feats.dtype == torch.float32 and feats.shape == (100, 4)
    torch.testing.assert_close(feats, expected, atol=1e-6, rtol=0)
    assert (cov == 2).all() and list(per) == ["level0"] and (per["level0"] == 2).all()
    # the default weights (depth-estimated view angle, footprint) are uniform on a flat nadir plane
    feats_default, _, _ = fuse_points(xyz, cams, (depth_of(xyz, c) for c in cams), iter(masks), E,
                                      FuseConfig(border_px=2))
    torch.testing.assert_close(feats_default, expected, atol=1e-5, rtol=0)


def test_each_granularity_counts_equally_however_many_views_it_has():
    xyz = grid()
    fine = [nadir(4.5, 4.5, 10, level=0) for _ in range(10)]
    coarse = [nadir(4.5, 4.5, 20, f=40, level=1)]
    cams = fine + coarse
    masks = [np.zeros((1, 64, 64), np.int32)] * 10 + [np.ones((1, 64, 64), np.int32)]
    E = torch.eye(3)[:2]
    depths = [depth_of(xyz, c) for c in cams]
    balanced, cov, per = fuse_points(xyz, cams, depths, masks, E, FuseConfig(border_px=2))
    torch.testing.assert_close(balanced, ((E[0] + E[1]) / math.sqrt(2)).expand(100, -1), atol=1e-5, rtol=0)
    assert (cov == 11).all() and (per["level0"] == 10).all() and (per["level1"] == 1).all()
    unbalanced, _, _ = fuse_points(xyz, cams, depths, masks, E, PLAIN.__class__(
        balance_granularities=False, view_angle_weight=False, footprint_weight=False, border_px=2))
    want = torch.nn.functional.normalize(10 * E[0] + E[1], dim=0)
    torch.testing.assert_close(unbalanced, want.expand(100, -1), atol=1e-5, rtol=0)


def test_occluded_points_get_nothing_and_coverage_counts_contributing_views():
    top, hidden = grid(), grid(z=-10.0)  # the hidden layer lies right under the top one
    xyz = np.concatenate([top, hidden])
    cams = [nadir(4.5, 4.5, 20, f=40) for _ in range(3)]
    no_right = halves(left=2, right=-1)  # view 2 labels only the left half
    masks = [np.zeros((1, 64, 64), np.int32), np.ones((1, 64, 64), np.int32), no_right]
    E = torch.eye(3)
    feats, cov, per = fuse_points(xyz, cams, [depth_of(xyz, c) for c in cams], masks, E, PLAIN)
    assert (cov[100:] == 0).all() and (feats[100:] == 0).all()
    left = torch.from_numpy(columns(top, cams[0]) < 32)
    assert 0 < int(left.sum()) < 100
    assert (cov[:100] == torch.where(left, 3, 2).to(torch.int32)).all()
    assert torch.equal(per["level0"], cov)
    torch.testing.assert_close(feats[:100][left], ((E[0] + E[1] + E[2]) / math.sqrt(3)).expand(int(left.sum()), -1))
    torch.testing.assert_close(feats[:100][~left], ((E[0] + E[1]) / math.sqrt(2)).expand(int((~left).sum()), -1))
    # covered rows are unit length
    torch.testing.assert_close(feats[:100].norm(dim=1), torch.ones(100))


def test_points_outside_the_image_border_are_not_used():
    xyz = grid()
    cam = nadir(4.5, 4.5, 10)
    feats, cov, _ = fuse_points(xyz, [cam], [depth_of(xyz, cam)], [np.zeros((1, 64, 64), np.int32)], torch.eye(2)[:1],
                                FuseConfig(border_px=24))
    uv, _ = project_points(xyz, cam)
    inner = ((uv >= 24) & (uv < 40)).all(dim=1)
    assert 0 < int(inner.sum()) < 100
    assert torch.equal(cov > 0, inner)


def _random_scene(seed: int):
    rng = np.random.default_rng(seed)
    ground = np.c_[rng.uniform(-30, 50, (1500, 2)), np.zeros(1500)]
    box = np.c_[rng.uniform(6, 12, (600, 2)), np.full(600, 4.0)]
    wall = np.c_[np.full(400, 6.0), rng.uniform(6, 12, 400), rng.uniform(0, 4, 400)]
    xyz = np.concatenate([ground, box, wall]).astype(np.float32)
    cams = []
    for level, (h, f) in enumerate([(40.0, 40.0), (22.0, 40.0)]):
        for _ in range(3 + 2 * level):
            c = nadir(rng.uniform(6, 14), rng.uniform(6, 14), h, f=f, size=48, level=level)
            # tilt a little so the wall is seen at an angle
            a = rng.uniform(-0.4, 0.4)
            Rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
            c.world_to_cam[:3, :3] = Rx @ c.world_to_cam[:3, :3]
            c.world_to_cam[:3, 3] = Rx @ c.world_to_cam[:3, 3]
            cams.append(c)
    order = rng.permutation(len(cams))  # interleave the levels
    cams = [cams[i] for i in order]
    depths = [render_points(xyz, c, point_size_px=3).depth for c in cams]
    masks, offset = [], 0
    for _ in cams:  # 2 mask levels of blocky random masks, global ids per view
        L0 = rng.integers(0, 6, (6, 6)).repeat(8, 0).repeat(8, 1)
        L1 = rng.integers(0, 3, (3, 3)).repeat(16, 0).repeat(16, 1)
        m = np.stack([L0, 6 + L1]).astype(np.int32)
        m[:, rng.random((48, 48)) < 0.05] = -1
        masks.append(m + offset * (m >= 0))
        offset += 9
    E = torch.nn.functional.normalize(torch.from_numpy(rng.standard_normal((offset, 16))).float(), dim=1)
    return xyz, cams, depths, masks, E


def _reference_fusion(xyz, cams, depths, masks, E, cfg):
    """The definition, written directly: dense [N, M] weight matrices, Python loops over views and levels."""
    N, M = len(xyz), E.shape[0]
    per_key: dict[str, torch.Tensor] = {}
    coverage = torch.zeros(N, dtype=torch.int32)
    for cam, depth, mask in zip(cams, depths, masks, strict=True):
        depth_t = torch.from_numpy(depth)
        vis, pix = visible_in_view(xyz, cam, depth_t, tolerance=cfg.depth_tolerance, border_px=cfg.border_px)
        idx = vis.nonzero().squeeze(1)
        z = torch.from_numpy(xyz[idx.numpy()].astype(np.float64) @ cam.world_to_cam[2, :3] + cam.world_to_cam[2, 3]).float()
        cos = view_angle_cosine(depth_t, cam.K).reshape(-1)[pix[idx]]
        w = sample_weights(z, depth_t.reshape(-1)[pix[idx]], cam, cfg, angle_cosine=cos)
        got = torch.zeros(N, dtype=torch.bool)
        for lvl in range(mask.shape[0]):
            key = f"level{cam.level}" if cfg.granularity == "camera" else f"level{cam.level}/mask{lvl}"
            W = per_key.setdefault(key, torch.zeros(N, M, dtype=torch.float64))
            m = torch.from_numpy(mask[lvl].reshape(-1))[pix[idx]].long()
            for j in range(len(idx)):
                if m[j] >= 0:
                    W[idx[j], m[j]] += float(w[j])
                    got[idx[j]] = True
        coverage += got.int()
    total = torch.zeros(N, E.shape[1], dtype=torch.float64)
    for W in per_key.values():
        total += torch.nn.functional.normalize(W @ E.double(), dim=1) / len(per_key)
    return torch.nn.functional.normalize(total, dim=1).float(), coverage


def _decoded(features):
    return features if isinstance(features, torch.Tensor) else features.dense()


@pytest.mark.parametrize("output,cull", [("dense", False), ("mixture", False), ("mixture", True)])
@pytest.mark.parametrize("granularity", ["camera", "camera+mask"])
def test_streamed_sparse_fusion_equals_the_dense_definition(granularity, output, cull):
    xyz, cams, depths, masks, E = _random_scene(1)
    cfg = FuseConfig(border_px=3, granularity=granularity)
    want, want_cov = _reference_fusion(xyz, cams, depths, masks, E, cfg)
    assert 0.5 < float((want_cov > 0).float().mean()) < 1.0  # some points unseen: the test means something
    got, cov, per = fuse_points(xyz, cams, iter(depths), iter(masks), E, cfg, output=output, cull=cull)
    assert torch.equal(cov, want_cov)
    torch.testing.assert_close(_decoded(got), want, atol=2e-5, rtol=0)
    assert len(per) == (2 if granularity == "camera" else 4)
    if output == "mixture":  # unit rows where covered, zero elsewhere, as stored norms say
        covered = want_cov > 0
        assert torch.equal(got.inv_norm() > 0, covered)
        torch.testing.assert_close(got.dense()[covered].norm(dim=1), torch.ones(int(covered.sum())), atol=1e-5, rtol=0)
    # views streamed grouped by level (one granularity live at a time) give the same result
    order = sorted(range(len(cams)), key=lambda i: cams[i].level)
    got2, cov2, _ = fuse_points(xyz, [cams[i] for i in order], (depths[i] for i in order), (masks[i] for i in order),
                                E, cfg, output=output)
    assert torch.equal(cov2, cov)
    torch.testing.assert_close(_decoded(got2), _decoded(got), atol=2e-6, rtol=0)


def test_scene_normals_drive_the_view_angle_weight():
    xyz = grid()
    cams = [nadir(4.5, 4.5, 10), nadir(4.5, 4.5, 10)]
    depths = [depth_of(xyz, c) for c in cams]
    masks = [np.zeros((1, 64, 64), np.int32), np.ones((1, 64, 64), np.int32)]
    E = torch.eye(2)
    up = np.tile([0.0, 0.0, 1.0], (100, 1))
    cfg = FuseConfig(border_px=2, footprint_weight=False, min_angle_weight=0.0)
    feats, _, _ = fuse_points(xyz, cams, depths, masks, E, cfg, normals=up)
    torch.testing.assert_close(feats, ((E[0] + E[1]) / math.sqrt(2)).expand(100, -1), atol=1e-5, rtol=0)
    # normals seen edge-on in every view: the floor keeps the weight positive
    sideways = np.tile([1.0, 0.0, 0.0], (100, 1))
    feats2, cov2, _ = fuse_points(xyz, cams, depths, masks, E, FuseConfig(border_px=2, min_angle_weight=0.1),
                                  normals=sideways)
    assert (cov2 == 2).all() and torch.isfinite(feats2).all()


def test_view_angle_cosine_of_a_tilted_plane():
    cam = nadir(0, 0, 10, size=64)
    # a plane tilted by 30 degrees about the camera x axis: |cos(normal, ray)| per pixel, analytically
    v = (np.arange(64) + 0.5 - 32) / 20.0
    u = (np.arange(64) + 0.5 - 32) / 20.0
    vv, _ = np.meshgrid(v, u, indexing="ij")
    t = np.tan(np.radians(30))
    depth = (10.0 / (1.0 - t * vv)).astype(np.float32)  # points z = 10 + t * y_cam, y_cam = v * z
    cos = view_angle_cosine(torch.from_numpy(depth), cam.K)
    n, r = np.array([0.0, -t, 1.0]), np.array([u[40], v[32], 1.0])  # plane normal, ray of pixel (row 32, col 40)
    want = abs(n @ r) / (np.linalg.norm(n) * np.linalg.norm(r))
    assert abs(float(cos[32, 40]) - want) < 1e-4
    depth[:, :20] = np.inf  # empty pixels next to the valid ones: no evidence, weight 1
    cos2 = view_angle_cosine(torch.from_numpy(depth), cam.K)
    assert float(cos2[32, 5]) == 1.0 and float(cos2[32, 19]) == 1.0


def test_fusion_rejects_bad_input():
    xyz = grid()
    cam = nadir(4.5, 4.5, 10)
    d = depth_of(xyz, cam)
    E = torch.eye(2)
    with pytest.raises(SceneKDError, match="embedding row 5"):
        fuse_points(xyz, [cam], [d], [np.full((1, 64, 64), 5, np.int32)], E)
    with pytest.raises(SceneKDError, match="mask_ids are"):
        fuse_points(xyz, [cam], [d], [np.zeros((1, 32, 32), np.int32)], E)
    with pytest.raises(SceneKDError, match="only 1"):
        fuse_points(xyz, [cam, cam], [d], [np.zeros((1, 64, 64), np.int32)], E)
    with pytest.raises(SceneKDError, match="NaN"):
        fuse_points(xyz, [cam], [d], [np.zeros((1, 64, 64), np.int32)], torch.full((2, 2), float("nan")))
    bad = xyz.copy()
    bad[3, 0] = np.nan
    with pytest.raises(SceneKDError, match="NaN"):
        fuse_points(bad, [cam], [d], [np.zeros((1, 64, 64), np.int32)], E)
    with pytest.raises(SceneKDError, match="granularity"):
        fuse_points(xyz, [cam], [d], [np.zeros((1, 64, 64), np.int32)], E, FuseConfig(granularity="pixel"))
    # no masks anywhere: nothing covered, zero features
    feats, cov, _ = fuse_points(xyz, [cam], [d], [np.full((1, 64, 64), -1, np.int32)], E)
    assert (cov == 0).all() and (feats == 0).all()


# ---- Gaussians ----------------------------------------------------------------------------------------


def _gauss_view():
    """A 2x2 view with K=2: pixel -> [(id, weight), ...]; masks: pixels 0, 1 -> mask 0, pixel 2 -> mask 1."""
    ids = np.array([[[0, 1], [0, -1]], [[1, 2], [2, -1]]], np.int32)
    w = np.array([[[0.6, 0.3], [0.5, 0.0]], [[0.8, 0.1], [0.9, 0.0]]], np.float32)
    masks = np.array([[[0, 0], [1, -1]]], np.int32)
    return ids, w, masks


def test_gaussian_lifting_is_the_blend_weighted_average_of_mask_embeddings():
    ids, w, masks = _gauss_view()
    cam = Camera(K=np.eye(3), world_to_cam=np.eye(4), width=2, height=2)
    E = torch.eye(3)[:2]
    feats, cov, per = lift_gaussians(4, [cam], [ids], [w], [masks], E, FuseConfig())
    torch.testing.assert_close(feats[0], E[0])
    torch.testing.assert_close(feats[1], torch.nn.functional.normalize(0.3 * E[0] + 0.8 * E[1], dim=0))
    torch.testing.assert_close(feats[2], E[1])  # its heavier pixel (0.9) has no mask
    assert (feats[3] == 0).all()
    assert cov.tolist() == [1, 1, 1, 0] and per["level0"].tolist() == [1, 1, 1, 0]
    # a second granularity with 5 views all saying mask 2 counts once, like the first
    cams = [cam] + [Camera(K=np.eye(3), world_to_cam=np.eye(4), width=2, height=2, level=1)] * 5
    E3 = torch.eye(3)
    feats2, cov2, _ = lift_gaussians(4, cams, [ids] * 6, [w] * 6, [masks] + [np.full((1, 2, 2), 2, np.int32)] * 5, E3)
    want1 = torch.nn.functional.normalize(torch.nn.functional.normalize(0.3 * E3[0] + 0.8 * E3[1], dim=0) + E3[2], dim=0)
    torch.testing.assert_close(feats2[1], want1)
    assert cov2.tolist() == [6, 6, 6, 0]


def test_gaussian_lifting_rejects_ids_beyond_the_scene():
    ids, w, masks = _gauss_view()
    cam = Camera(K=np.eye(3), world_to_cam=np.eye(4), width=2, height=2)
    with pytest.raises(SceneKDError, match="Gaussian 2"):
        lift_gaussians(2, [cam], [ids], [w], [masks], torch.eye(2))
