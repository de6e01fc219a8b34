"""Pure-torch reference Gaussian rasterizer with gsplat's math (classic 3DGS, pinhole, gsplat 1.5 kernels).

Steps, as in gsplat's CUDA kernels:

1. Projection (``fully_fused_projection``): camera-space mean, 3D covariance R S S^T R^T from the
   normalised (w, x, y, z) quaternion and exp(log-scales), EWA Jacobian with the view-frustum clamp of
   x/z, y/z to 1.3 x the half-FOV, low-pass dilation ``cov2d += 0.3 I``, conic = inverse(cov2d).
   Culled: z < near (0.01) or > far, det <= 0, opacity < 1/255, off-image boxes.
   Opacity-aware extent ``min(3.33, sqrt(2 ln(255 opacity)))`` (~3 sigma) gives per-axis pixel radii
   ``ceil(extent * sqrt(cov2d_xx))``, ``ceil(extent * sqrt(cov2d_yy))``.
2. Tiling (``isect_tiles``): 16 x 16 tiles; a Gaussian joins every tile its box touches; per tile, sorted by depth.
3. Compositing (``rasterize_to_pixels``): pixel centres (x + 0.5, y + 0.5); sigma = 0.5 d^T conic d;
   alpha = min(0.999, opacity exp(-sigma)); skipped when sigma < 0 or alpha < 1/255; the pixel stops
   (exclusively) at the first Gaussian that would bring the transmittance to <= 1e-4;
   weight = alpha T; colour = sum weight c (+ T background).
4. Colours from SH (degree <= 3, view direction = mean - camera centre), ``max(sh + 0.5, 0)``.

Tiles are processed in batches of similar Gaussian counts, and each batch's depth-sorted lists in chunks of
``chunk`` Gaussians with a running transmittance (cumprod inside a chunk), so the whole thing is a few dozen
batched tensor ops per chunk and differentiable w.r.t. means, quats, scales, opacities, colours and features.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from scene_kd.errors import SceneKDError
from scene_kd.geometry import quat_to_rotmat
from scene_kd.scene.sh import SH_C0
from scene_kd.scene.types import Camera

TILE = 16
ALPHA_MIN = 1.0 / 255.0
ALPHA_MAX = 0.999
T_MIN = 1e-4
EPS2D = 0.3
NEAR_PLANE = 0.01
FAR_PLANE = 1e10


def sh_basis(dirs: Tensor, degree: int) -> Tensor:
    """Real SH basis [..., (degree+1)^2] at unit directions [..., 3] (gsplat / 3DGS ordering and signs)."""
    x, y, z = dirs.unbind(-1)
    out = [torch.full_like(x, SH_C0)]
    if degree >= 1:
        a = 0.48860251190292
        out += [-a * y, a * z, -a * x]
    if degree >= 2:
        z2 = z * z
        b = -1.092548430592079 * z
        a = 0.5462742152960395
        c1, s1 = x * x - y * y, 2 * x * y
        out += [a * s1, b * y, 0.9461746957575601 * z2 - 0.3153915652525201, b * x, a * c1]
    if degree >= 3:
        c = -2.285228997322329 * z2 + 0.4570457994644658
        b = 1.445305721320277 * z
        a = -0.5900435899266435
        c2, s2 = x * c1 - y * s1, x * s1 + y * c1
        out += [a * s2, b * s1, c * y, z * (1.865881662950577 * z2 - 1.119528997770346), c * x, b * c1, a * c2]
    if degree > 3:
        raise SceneKDError(f"SH degree {degree} > 3 is not supported")
    return torch.stack(out, dim=-1)


def sh_to_rgb(sh: Tensor, means: Tensor, camera_center: Tensor, degree: int) -> Tensor:
    """Colours [N, 3] from SH coefficients [N, K, 3] seen from ``camera_center`` (gsplat: clamp_min(x + 0.5, 0))."""
    n_basis = (degree + 1) ** 2
    if sh.shape[1] < n_basis:
        raise SceneKDError(f"SH degree {degree} needs {n_basis} coefficients, got {sh.shape[1]}")
    dirs = torch.nn.functional.normalize(means - camera_center, dim=-1)
    basis = sh_basis(dirs, degree)  # [N, n_basis]
    rgb = (basis[..., None] * sh[:, :n_basis]).sum(1)
    return torch.clamp_min(rgb + 0.5, 0.0)


def project_gaussians(
    means: Tensor, quats: Tensor, log_scales: Tensor, opacities: Tensor, camera: Camera,
    *, eps2d: float = EPS2D, near: float = NEAR_PLANE, far: float = FAR_PLANE,
) -> dict[str, Tensor]:
    """EWA projection of Gaussians into ``camera``: means2d [N, 2], conics [N, 3] (a, b, c of the inverse 2D
    covariance), depths [N], radii [N, 2] int (0 = culled), visible [N] bool."""
    dev, dt = means.device, means.dtype
    R = torch.as_tensor(camera.world_to_cam[:3, :3], dtype=dt, device=dev)
    t = torch.as_tensor(camera.world_to_cam[:3, 3], dtype=dt, device=dev)
    fx, fy, cx, cy = (float(camera.K[0, 0]), float(camera.K[1, 1]), float(camera.K[0, 2]), float(camera.K[1, 2]))
    W, H = camera.width, camera.height
    mean_c = means @ R.T + t
    x, y, z = mean_c.unbind(-1)
    rot = quat_to_rotmat(quats)
    M = rot * torch.exp(log_scales)[:, None, :]
    cov_c = R @ (M @ M.transpose(1, 2)) @ R.T  # [N, 3, 3]

    tan_fovx, tan_fovy = 0.5 * W / fx, 0.5 * H / fy
    lim_x_pos, lim_x_neg = (W - cx) / fx + 0.3 * tan_fovx, cx / fx + 0.3 * tan_fovx
    lim_y_pos, lim_y_neg = (H - cy) / fy + 0.3 * tan_fovy, cy / fy + 0.3 * tan_fovy
    z_safe = torch.where(z.abs() > 1e-12, z, torch.ones_like(z))
    rz = 1.0 / z_safe
    tx = z_safe * torch.clamp(x * rz, -lim_x_neg, lim_x_pos)
    ty = z_safe * torch.clamp(y * rz, -lim_y_neg, lim_y_pos)
    zero = torch.zeros_like(z)
    J = torch.stack([fx * rz, zero, -fx * tx * rz * rz, zero, fy * rz, -fy * ty * rz * rz], -1).reshape(-1, 2, 3)
    cov2d = J @ cov_c @ J.transpose(1, 2)
    a = cov2d[:, 0, 0] + eps2d
    b = cov2d[:, 0, 1]
    c = cov2d[:, 1, 1] + eps2d
    det = a * c - b * b
    det_ok = det > 0
    det_safe = torch.where(det_ok, det, torch.ones_like(det))
    conics = torch.stack([c / det_safe, -b / det_safe, a / det_safe], -1)
    means2d = torch.stack([fx * x * rz + cx, fy * y * rz + cy], -1)

    with torch.no_grad():
        op = opacities.detach()
        extend = torch.clamp(torch.sqrt(2.0 * torch.log(torch.clamp_min(op / ALPHA_MIN, 1.0))), max=3.33)
        rx = torch.ceil(extend * torch.sqrt(torch.clamp_min(a.detach(), 0)))
        ry = torch.ceil(extend * torch.sqrt(torch.clamp_min(c.detach(), 0)))
        m2 = means2d.detach()
        visible = (z >= near) & (z <= far) & det_ok & (op >= ALPHA_MIN) & (rx > 0) & (ry > 0)
        visible &= ~((m2[:, 0] + rx <= 0) | (m2[:, 0] - rx >= W) | (m2[:, 1] + ry <= 0) | (m2[:, 1] - ry >= H))
        radii = torch.stack([rx, ry], -1).to(torch.int32) * visible[:, None]
    return {"means2d": means2d, "conics": conics, "depths": z, "radii": radii, "visible": visible}


def tile_ranges(means2d: Tensor, radii: Tensor, width: int, height: int, tile: int = TILE) -> tuple[Tensor, Tensor]:
    """Tile boxes of projected Gaussians: (min [N, 2], max [N, 2]) int64 tile coords, max exclusive (gsplat)."""
    tw, th = math.ceil(width / tile), math.ceil(height / tile)
    m = means2d.detach() / tile
    r = radii.to(m.dtype) / tile
    upper = torch.tensor([tw, th], device=m.device)
    lo = torch.minimum(torch.clamp_min(torch.floor(m - r), 0).to(torch.int64), upper)
    hi = torch.minimum(torch.clamp_min(torch.ceil(m + r), 0).to(torch.int64), upper)
    return lo, hi


def _tile_pairs(means2d: Tensor, radii: Tensor, depths: Tensor, visible: Tensor, width: int, height: int,
                tile: int) -> tuple[Tensor, Tensor, Tensor]:
    """(tile offsets [T + 1], gaussian ids [P] sorted by (tile, depth), counts [T]) for T tiles."""
    tw, th = math.ceil(width / tile), math.ceil(height / tile)
    dev = means2d.device
    idx = torch.nonzero(visible).squeeze(1)
    lo, hi = tile_ranges(means2d[idx], radii[idx], width, height, tile)
    nx, ny = (hi[:, 0] - lo[:, 0]).clamp_min(0), (hi[:, 1] - lo[:, 1]).clamp_min(0)
    n_tiles = nx * ny
    g_rep = torch.repeat_interleave(torch.arange(len(idx), device=dev), n_tiles)
    start = torch.cumsum(n_tiles, 0) - n_tiles
    local = torch.arange(len(g_rep), device=dev) - start[g_rep]
    nx_r = nx[g_rep].clamp_min(1)
    tx = lo[g_rep, 0] + local % nx_r
    ty = lo[g_rep, 1] + local // nx_r
    tile_id = ty * tw + tx
    gid = idx[g_rep]
    # sort by depth (stable on id), then stably by tile: per tile, front to back
    order = torch.argsort(depths.detach()[gid], stable=True)
    tile_id, gid = tile_id[order], gid[order]
    order = torch.argsort(tile_id, stable=True)
    tile_id, gid = tile_id[order], gid[order]
    counts = torch.bincount(tile_id, minlength=tw * th)
    offsets = torch.zeros(tw * th + 1, dtype=torch.int64, device=dev)
    offsets[1:] = torch.cumsum(counts, 0)
    return offsets, gid, counts


def _as_tensor(x, device=None, dtype=torch.float32) -> Tensor:
    t = x if isinstance(x, Tensor) else torch.as_tensor(np.asarray(x))
    return t.to(device=device, dtype=dtype)


def rasterize_gaussians(
    means: Tensor,
    quats: Tensor,
    log_scales: Tensor,
    opacity_logits: Tensor,
    colors_or_sh: Tensor | None,
    camera: Camera,
    *,
    sh_degree: int | None = None,
    features: Tensor | None = None,
    topk: int = 4,
    background: Tensor | tuple[float, ...] | None = None,
    tile: int = TILE,
    chunk: int = 32,
    pixels_per_batch: int = 1 << 20,
) -> dict[str, Tensor]:
    """Render Gaussians [N] into ``camera`` (torch reference, CPU or CUDA; differentiable).

    colors_or_sh: [N, C] colours (any C; rgb when C = 3) or [N, K, 3] SH coefficients (then ``sh_degree``,
    default the highest the K allows). features: optional [N, F] extra channels composited alike.
    Computes in float64 when ``means`` is float64 (for gradient checks), else float32.
    Returns {"rgb" [H, W, C] (when colours are given), "features" [H, W, F] (when given), "depth" [H, W]
    expected depth (accumulated z / alpha, 0 where empty, as gsplat's "ED"), "alpha" [H, W],
    "topk_ids" [H, W, K] long (-1 pad), "topk_weights" [H, W, K] (0 pad, no gradient), "radii" [N, 2]}.
    ``background`` [C] is added to the colour channels as T_final * background.
    Raises SceneKDError for a zero-size camera or inputs of mismatched shapes.

    Steps: :func:`_prepare_inputs` -> :func:`project_gaussians` -> :func:`_tile_pairs` -> :func:`_composite`
    (per batch of tiles :func:`_composite_batch`) -> :func:`_to_images`.
    """
    if camera.width <= 0 or camera.height <= 0:
        raise SceneKDError(f"zero-size image {camera.width}x{camera.height}")
    inp = _prepare_inputs(means, quats, log_scales, opacity_logits, colors_or_sh, camera, sh_degree, features)
    proj = project_gaussians(inp.means, inp.quats, inp.log_scales, inp.opacities, camera)
    values = torch.cat(inp.channels + [proj["depths"][:, None]], dim=1)  # [N, D]
    frags = _composite(proj, inp.opacities, values, camera.width, camera.height, tile=tile, chunk=chunk,
                       pixels_per_batch=pixels_per_batch, k=int(topk))
    return _to_images(frags, proj, inp, values.shape[1], camera.width, camera.height, int(topk), background)


@dataclass
class _Inputs:
    """Rasterizer inputs on one device and dtype: means [N, 3], quats [N, 4], log_scales [N, 3], opacities [N]
    (sigmoid of the logits), the composited channels ([N, C] colours, [N, F] features) and their widths."""

    means: Tensor
    quats: Tensor
    log_scales: Tensor
    opacities: Tensor
    channels: list[Tensor]
    n_color: int
    n_feat: int


def _prepare_inputs(means, quats, log_scales, opacity_logits, colors_or_sh, camera: Camera, sh_degree: int | None,
                    features) -> _Inputs:
    """Check shapes, convert to one device/dtype, evaluate SH colours for this camera."""
    dev = means.device if isinstance(means, Tensor) else None
    dtype = means.dtype if isinstance(means, Tensor) and means.dtype == torch.float64 else torch.float32
    means = _as_tensor(means, dev, dtype)
    n = means.shape[0]
    if means.ndim != 2 or means.shape[1] != 3:
        raise SceneKDError(f"means must be [N, 3], got {tuple(means.shape)}")
    quats, log_scales = _as_tensor(quats, dev, dtype), _as_tensor(log_scales, dev, dtype)
    opacities = torch.sigmoid(_as_tensor(opacity_logits, dev, dtype).reshape(-1))
    if quats.shape != (n, 4) or log_scales.shape != (n, 3) or opacities.shape != (n,):
        raise SceneKDError("quats [N, 4], log_scales [N, 3] and opacity_logits [N] must match means [N, 3]")
    channels: list[Tensor] = []
    n_color = 0
    if colors_or_sh is not None:
        cs = _as_tensor(colors_or_sh, dev, dtype)
        if cs.ndim == 3:
            degree = int(round(math.sqrt(cs.shape[1]))) - 1 if sh_degree is None else int(sh_degree)
            center = torch.as_tensor(camera.center, dtype=means.dtype, device=means.device)
            cs = sh_to_rgb(cs, means, center, degree)
        if cs.shape[0] != n:
            raise SceneKDError(f"colours have {cs.shape[0]} rows, expected {n}")
        channels.append(cs)
        n_color = cs.shape[1]
    n_feat = 0
    if features is not None:
        feats = _as_tensor(features, dev, dtype)
        if feats.ndim != 2 or feats.shape[0] != n:
            raise SceneKDError(f"features must be [N, F] with N = {n}, got {tuple(feats.shape)}")
        channels.append(feats)
        n_feat = feats.shape[1]
    return _Inputs(means, quats, log_scales, opacities, channels, n_color, n_feat)


@dataclass
class _Fragments:
    """Composited pixels of finished tiles: flat pixel index (H * W for pixels past the image edge), values
    [., D], final transmittance, top-K ids and weights (lists of per-batch tensors)."""

    pix: list[Tensor] = field(default_factory=list)
    vals: list[Tensor] = field(default_factory=list)
    T: list[Tensor] = field(default_factory=list)
    ids: list[Tensor] = field(default_factory=list)
    w: list[Tensor] = field(default_factory=list)

    def emit(self, sel, pix_xy, acc, T, top_i, top_w, W: int, H: int, k: int) -> None:
        """Store the selected tiles' pixels."""
        flat = pix_xy[sel][..., 1] * W + pix_xy[sel][..., 0]
        inside = (pix_xy[sel][..., 0] < W) & (pix_xy[sel][..., 1] < H)
        self.pix.append(torch.where(inside, flat, H * W).reshape(-1))
        self.vals.append(acc[sel].reshape(-1, acc.shape[-1]))
        self.T.append(T[sel].reshape(-1))
        if k:
            self.ids.append(top_i[sel].reshape(-1, k))
            self.w.append(top_w[sel].reshape(-1, k))


@dataclass
class _TileJob:
    """What every batch of tiles reads: the depth-sorted (tile, Gaussian) lists, projected Gaussians, channel
    values, and the per-pixel quadratic features of a tile."""

    offsets: Tensor
    gid: Tensor
    counts: Tensor
    means2d: Tensor
    conics: Tensor
    log_opacity: Tensor
    values: Tensor
    local_xy: Tensor  # [P, 2] tile-local pixel coordinates
    pix_feat: Tensor  # [P, 6]
    tile: int
    tw: int
    chunk: int
    k: int


def _composite(proj: dict[str, Tensor], opacities: Tensor, values: Tensor, W: int, H: int, *, tile: int, chunk: int,
               pixels_per_batch: int, k: int) -> _Fragments:
    """Front-to-back alpha compositing of every tile, in batches of tiles with similar list lengths."""
    dev, dt = values.device, values.dtype
    offsets, gid, counts = _tile_pairs(proj["means2d"], proj["radii"], proj["depths"], proj["visible"], W, H, tile)
    py, px = torch.meshgrid(torch.arange(tile, device=dev), torch.arange(tile, device=dev), indexing="ij")
    local_xy = torch.stack([px.reshape(-1), py.reshape(-1)], -1)  # [P, 2]
    # sigma - log(opacity) is a quadratic in the pixel position: pixel features [P, 6] (tile-local coords) times
    # per-(tile, Gaussian) coefficients [6] -> one batched matmul per chunk.
    lx, ly = local_xy[:, 0].to(dt) + 0.5, local_xy[:, 1].to(dt) + 0.5
    pix_feat = torch.stack([lx * lx, ly * ly, lx * ly, lx, ly, torch.ones_like(lx)], -1)  # [P, 6]
    job = _TileJob(offsets, gid, counts, proj["means2d"], proj["conics"], torch.log(opacities), values, local_xy,
                   pix_feat, tile, math.ceil(W / tile), chunk, k)
    frags = _Fragments()
    busy = torch.nonzero(counts).squeeze(1)
    busy = busy[torch.argsort(counts[busy], descending=True)]
    busy_counts = counts[busy].tolist()
    P = tile * tile
    i = 0
    while i < len(busy):
        L = busy_counts[i]
        B = max(1, min(len(busy) - i, pixels_per_batch // (P * min(max(L, 1), chunk))))
        _composite_batch(job, busy[i:i + B], L, frags, W, H)
        i += B
    return frags


def _composite_batch(job: _TileJob, tiles: Tensor, L: int, frags: _Fragments, W: int, H: int) -> None:
    """Composite B tiles whose longest list is L Gaussians, ``job.chunk`` Gaussians at a time; finished tiles
    (all pixels saturated or list exhausted) are emitted and dropped from the batch."""
    dev, dt = job.values.device, job.values.dtype
    B, P, D, k, chunk, gid = len(tiles), job.tile * job.tile, job.values.shape[1], job.k, job.chunk, job.gid
    txy = torch.stack([tiles % job.tw, tiles // job.tw], -1)  # [B, 2]
    pix_xy = txy[:, None, :] * job.tile + job.local_xy[None]  # [B, P, 2]
    origin = (txy * job.tile).to(dt)  # [B, 2]
    T = torch.ones(B, P, dtype=dt, device=dev)
    alive = torch.ones(B, P, dtype=torch.bool, device=dev)
    acc = torch.zeros(B, P, D, dtype=dt, device=dev)
    top_w = torch.zeros(B, P, k, dtype=dt, device=dev)
    top_i = torch.full((B, P, k), -1, dtype=torch.int64, device=dev)
    start = job.offsets[tiles]
    cnt = job.counts[tiles]

    for c0 in range(0, L, chunk):
        c1 = min(c0 + chunk, L)
        slot = c0 + torch.arange(c1 - c0, device=dev)
        valid = slot[None, :] < cnt[:, None]  # [B, C]
        g = gid[(start[:, None] + slot[None, :]).clamp(max=len(gid) - 1)]
        g = torch.where(valid, g, 0)
        m = job.means2d[g] - origin[:, None, :]  # [B, C, 2] tile-local
        mx, my = m[..., 0], m[..., 1]
        con = job.conics[g]
        ca, cb, cc = con[..., 0], con[..., 1], con[..., 2]
        const = 0.5 * ca * mx * mx + 0.5 * cc * my * my + cb * mx * my - job.log_opacity[g]
        const = torch.where(valid, const, 1e4)  # padding: alpha = 0
        coef = torch.stack([0.5 * ca, 0.5 * cc, cb, -(ca * mx + cb * my), -(cc * my + cb * mx), const], 1)
        expo = torch.matmul(job.pix_feat, coef)  # [B, P, C] = sigma - log(opacity)
        # clamp: exp of large negatives hits the slow denormal path; alpha there is cut anyway
        alpha = torch.exp(-torch.clamp(expo, min=-20.0, max=30.0))
        alpha = torch.where(alpha >= ALPHA_MIN, torch.clamp(alpha, max=ALPHA_MAX), 0.0)
        one_minus = 1.0 - alpha
        T_incl = T[..., None] * torch.cumprod(one_minus, dim=-1)
        # exclusive stop at the first Gaussian that brings T to <= 1e-4; earlier ones' T_before is unaffected
        use = alive[..., None] & (T_incl.detach() > T_MIN)
        weights = torch.where(use, alpha * (T_incl / one_minus), 0.0)  # alpha * T_before
        acc = acc + torch.bmm(weights, job.values[g])  # [B, P, C] x [B, C, D]
        T_start = T
        T = T - weights.sum(-1)
        alive = alive & use[..., -1]
        if k and bool((T_start.detach() > top_w[..., -1]).any()):
            chunk_w, chunk_pos = torch.topk(weights.detach(), min(k, c1 - c0), dim=-1)
            chunk_i = torch.gather(g[:, None, :].expand(-1, P, -1), -1, chunk_pos)
            top_w, pos = torch.topk(torch.cat([top_w, chunk_w], -1), k, dim=-1)
            top_i = torch.gather(torch.cat([top_i, chunk_i], -1), -1, pos)
            top_i = torch.where(top_w > 0, top_i, -1)
        # retire tiles that are finished (all pixels saturated or list exhausted)
        running = alive.any(-1) & (cnt > c1)
        if not bool(running.all()):
            frags.emit(~running, pix_xy, acc, T, top_i, top_w, W, H, k)
            if not bool(running.any()):
                return
            keep = running
            pix_xy, origin, T, alive, acc = pix_xy[keep], origin[keep], T[keep], alive[keep], acc[keep]
            top_w, top_i, start, cnt = top_w[keep], top_i[keep], start[keep], cnt[keep]
    frags.emit(torch.ones(len(T), dtype=torch.bool, device=dev), pix_xy, acc, T, top_i, top_w, W, H, k)


def _to_images(frags: _Fragments, proj: dict[str, Tensor], inp: _Inputs, D: int, W: int, H: int, k: int,
               background) -> dict[str, Tensor]:
    """Scatter the fragments into [H, W] images (empty pixels: zero values, T = 1, ids -1) and split the
    channels into rgb (+ background), features, expected depth, alpha, top-K."""
    dev, dt = inp.means.device, inp.means.dtype
    img = torch.zeros(H * W + 1, D, dtype=dt, device=dev)
    T_img = torch.ones(H * W + 1, dtype=dt, device=dev)
    ids_img = torch.full((H * W + 1, k), -1, dtype=torch.int64, device=dev)
    w_img = torch.zeros(H * W + 1, k, dtype=dt, device=dev)
    if frags.pix:
        pix = torch.cat(frags.pix)
        img = img.index_copy(0, pix, torch.cat(frags.vals))
        T_img = T_img.index_copy(0, pix, torch.cat(frags.T))
        if k:
            ids_img = ids_img.index_copy(0, pix, torch.cat(frags.ids))
            w_img = w_img.index_copy(0, pix, torch.cat(frags.w))
    img, T_img = img[: H * W].reshape(H, W, D), T_img[: H * W].reshape(H, W)
    alpha_img = 1.0 - T_img
    out: dict[str, Tensor] = {}
    n_color, n_feat = inp.n_color, inp.n_feat
    if n_color:
        rgb = img[..., :n_color]
        if background is not None:
            bg = _as_tensor(background, dev, dt).reshape(-1)
            rgb = rgb + T_img[..., None] * bg
        out["rgb"] = rgb
    if n_feat:
        out["features"] = img[..., n_color:n_color + n_feat]
    out["depth"] = img[..., -1] / alpha_img.clamp_min(1e-10)
    out["alpha"] = alpha_img
    out["topk_ids"] = ids_img[: H * W].reshape(H, W, k)
    out["topk_weights"] = w_img[: H * W].reshape(H, W, k)
    out["radii"] = proj["radii"]
    return out
