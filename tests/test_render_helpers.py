"""Shared fixtures for the render tests: tiny cameras, scenes and a brute-force Gaussian rasterizer."""

from __future__ import annotations

import math

import numpy as np
import torch

from scene_kd.render.views import intrinsics, look_at
from scene_kd.scene.types import Camera


def camera_looking_at(eye, target, width=64, height=48, hfov=60.0, level=0) -> Camera:
    return Camera(K=intrinsics(width, height, hfov), world_to_cam=look_at(np.asarray(eye, float), np.asarray(target, float)),
                  width=width, height=height, level=level)


def random_gaussians(n: int, seed: int = 0, extent: float = 2.0, sh_degree: int | None = None):
    """(means, quats, log_scales, opacity_logits, colours or SH) float64 tensors for a small blob of Gaussians."""
    g = torch.Generator().manual_seed(seed)
    means = (torch.rand(n, 3, generator=g, dtype=torch.float64) - 0.5) * extent
    quats = torch.randn(n, 4, generator=g, dtype=torch.float64)
    log_scales = torch.log(torch.rand(n, 3, generator=g, dtype=torch.float64) * 0.25 + 0.05)
    opacity_logits = torch.randn(n, generator=g, dtype=torch.float64) * 1.5 + 1.0
    if sh_degree is None:
        colours = torch.rand(n, 3, generator=g, dtype=torch.float64)
    else:
        colours = torch.randn(n, (sh_degree + 1) ** 2, 3, generator=g, dtype=torch.float64) * 0.3
    return means, quats, log_scales, opacity_logits, colours


def brute_force_gaussians(means, quats, log_scales, opacity_logits, colours, camera: Camera, features=None,
                          background=None):
    """gsplat's classic 3DGS forward pass written out literally: per-Gaussian projection with explicit 3x3
    matrices, then for every pixel a front-to-back loop over all Gaussians whose tile box holds the pixel's
    tile (vectorised over pixels only). colours [N, C] (no SH). Returns rgb [H, W, C], alpha, depth (ED),
    features, weights [H, W, N]."""
    W, H = camera.width, camera.height
    dt = means.dtype
    Rw = torch.as_tensor(camera.world_to_cam[:3, :3], dtype=dt)
    tw = torch.as_tensor(camera.world_to_cam[:3, 3], dtype=dt)
    fx, fy, cx, cy = camera.K[0, 0], camera.K[1, 1], camera.K[0, 2], camera.K[1, 2]
    opac = torch.sigmoid(opacity_logits)
    ys, xs = torch.meshgrid(torch.arange(H, dtype=dt), torch.arange(W, dtype=dt), indexing="ij")
    px, py = xs + 0.5, ys + 0.5
    tile_x, tile_y = (xs // 16).long(), (ys // 16).long()
    entries = []
    for i in range(len(means)):
        pc = Rw @ means[i] + tw
        x, y, z = pc[0], pc[1], pc[2]
        if float(z.detach()) < 0.01:
            continue
        q = quats[i] / quats[i].norm()
        w_, a_, b_, c_ = q
        Rq = torch.stack([
            torch.stack([1 - 2 * (b_ * b_ + c_ * c_), 2 * (a_ * b_ - w_ * c_), 2 * (a_ * c_ + w_ * b_)]),
            torch.stack([2 * (a_ * b_ + w_ * c_), 1 - 2 * (a_ * a_ + c_ * c_), 2 * (b_ * c_ - w_ * a_)]),
            torch.stack([2 * (a_ * c_ - w_ * b_), 2 * (b_ * c_ + w_ * a_), 1 - 2 * (a_ * a_ + b_ * b_)]),
        ])
        S = torch.diag(torch.exp(log_scales[i]))
        cov = Rw @ (Rq @ S @ S.T @ Rq.T) @ Rw.T
        limx_p, limx_n = (W - cx) / fx + 0.3 * (0.5 * W / fx), cx / fx + 0.3 * (0.5 * W / fx)
        limy_p, limy_n = (H - cy) / fy + 0.3 * (0.5 * H / fy), cy / fy + 0.3 * (0.5 * H / fy)
        tx = z * torch.clamp(x / z, -limx_n, limx_p)
        ty = z * torch.clamp(y / z, -limy_n, limy_p)
        zero = torch.zeros((), dtype=dt)
        J = torch.stack([torch.stack([fx / z, zero, -fx * tx / z**2]), torch.stack([zero, fy / z, -fy * ty / z**2])])
        cov2 = J @ cov @ J.T + 0.3 * torch.eye(2, dtype=dt)
        det = cov2[0, 0] * cov2[1, 1] - cov2[0, 1] ** 2
        if float(det.detach()) <= 0 or float(opac[i].detach()) < 1 / 255:
            continue
        conic = torch.linalg.inv(cov2)
        mx, my = fx * x / z + cx, fy * y / z + cy
        extend = min(3.33, math.sqrt(2 * math.log(float(opac[i].detach()) * 255)))
        rx, ry = math.ceil(extend * math.sqrt(float(cov2[0, 0].detach()))), math.ceil(extend * math.sqrt(float(cov2[1, 1].detach())))
        if float(mx.detach()) + rx <= 0 or float(mx.detach()) - rx >= W or float(my.detach()) + ry <= 0 or float(my.detach()) - ry >= H:
            continue
        twn, thn = math.ceil(W / 16), math.ceil(H / 16)
        t0x = min(max(0, math.floor((float(mx.detach()) - rx) / 16)), twn)
        t1x = min(max(0, math.ceil((float(mx.detach()) + rx) / 16)), twn)
        t0y = min(max(0, math.floor((float(my.detach()) - ry) / 16)), thn)
        t1y = min(max(0, math.ceil((float(my.detach()) + ry) / 16)), thn)
        in_box = (tile_x >= t0x) & (tile_x < t1x) & (tile_y >= t0y) & (tile_y < t1y)
        entries.append((float(z.detach()), i, mx, my, conic, z, in_box))
    entries.sort(key=lambda e: (e[0], e[1]))
    C = colours.shape[1]
    rgb = torch.zeros(H, W, C, dtype=dt)
    dep = torch.zeros(H, W, dtype=dt)
    feat = None if features is None else torch.zeros(H, W, features.shape[1], dtype=dt)
    weights = torch.zeros(H, W, len(means), dtype=dt)
    T = torch.ones(H, W, dtype=dt)
    done = torch.zeros(H, W, dtype=torch.bool)
    for _, i, mx, my, conic, z, in_box in entries:
        dx, dy = mx - px, my - py
        sigma = 0.5 * (conic[0, 0] * dx * dx + conic[1, 1] * dy * dy) + conic[0, 1] * dx * dy
        alpha = torch.clamp(opac[i] * torch.exp(-sigma), max=0.999)
        ok = in_box & ~done & (sigma >= 0) & (alpha >= 1 / 255)
        next_T = T * (1 - alpha)
        stop = ok & (next_T <= 1e-4)
        done = done | stop
        ok = ok & ~stop
        w = torch.where(ok, alpha * T, torch.zeros_like(alpha))
        rgb = rgb + w[..., None] * colours[i]
        dep = dep + w * z
        if feat is not None:
            feat = feat + w[..., None] * features[i]
        weights[..., i] = w.detach()
        T = torch.where(ok, next_T, T)
    alpha_img = 1 - T
    if background is not None:
        rgb = rgb + T[..., None] * torch.as_tensor(background, dtype=dt)
    return {"rgb": rgb, "alpha": alpha_img, "depth": dep / alpha_img.clamp_min(1e-10), "features": feat,
            "weights": weights}
