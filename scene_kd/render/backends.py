"""Choose the Gaussian rasterizer: gsplat's CUDA kernels when CUDA is available, else the torch reference.

Both return the same dict as :func:`scene_kd.render.gaussians.rasterize_gaussians`. On CUDA the per-pixel
top-K (Gaussian id, blend weight) pairs come from ``gsplat.rasterize_to_indices_in_range`` (every contributing
(Gaussian, pixel) pair, with gsplat's own alpha cut and transmittance stop) and weights recomputed per pair.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from scene_kd.render.gaussians import ALPHA_MAX, rasterize_gaussians, sh_to_rgb
from scene_kd.scene.types import Camera


def cuda_available() -> bool:
    return torch.cuda.is_available()


def choose_backend(backend: str = "auto") -> str:
    """'gsplat' or 'torch'; 'auto' picks gsplat when CUDA is available and gsplat imports."""
    if backend != "auto":
        if backend not in ("gsplat", "torch"):
            raise ValueError(f"unknown rasterizer backend {backend!r} (auto | gsplat | torch)")
        return backend
    if not cuda_available():
        return "torch"
    try:
        import gsplat  # noqa: F401
    except Exception:  # gsplat without a usable CUDA build
        return "torch"
    return "gsplat"


def rasterize(
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
    backend: str = "auto",
) -> dict[str, Tensor]:
    """Rasterize Gaussians with the chosen backend (see :func:`rasterize_gaussians` for shapes and keys).
    Inputs may be numpy or torch; on the gsplat backend they are moved to CUDA and outputs stay there."""
    which = choose_backend(backend)
    if which == "torch":
        return rasterize_gaussians(means, quats, log_scales, opacity_logits, colors_or_sh, camera,
                                   sh_degree=sh_degree, features=features, topk=topk, background=background)
    return rasterize_gsplat(means, quats, log_scales, opacity_logits, colors_or_sh, camera, sh_degree=sh_degree,
                            features=features, topk=topk, background=background)


def _cuda(x, dtype=torch.float32) -> Tensor:
    return torch.as_tensor(x).to(device="cuda", dtype=dtype)


def rasterize_gsplat(
    means, quats, log_scales, opacity_logits, colors_or_sh, camera: Camera, *, sh_degree=None, features=None,
    topk: int = 4, background=None,
) -> dict[str, Tensor]:
    import gsplat

    means, quats, log_scales = _cuda(means), _cuda(quats), _cuda(log_scales)
    opacities = torch.sigmoid(_cuda(opacity_logits).reshape(-1))
    W, H = camera.width, camera.height
    chans, n_color, n_feat = [], 0, 0
    if colors_or_sh is not None:
        cs = _cuda(colors_or_sh)
        if cs.ndim == 3:
            degree = int(round(math.sqrt(cs.shape[1]))) - 1 if sh_degree is None else int(sh_degree)
            cs = sh_to_rgb(cs, means, _cuda(camera.center), degree)
        chans.append(cs)
        n_color = cs.shape[1]
    if features is not None:
        f = _cuda(features)
        chans.append(f)
        n_feat = f.shape[1]
    if not chans:
        chans.append(torch.zeros(len(means), 1, device="cuda"))
    colors = torch.cat(chans, 1)
    bg = None
    if background is not None and n_color:
        bg = torch.zeros(colors.shape[1], device="cuda")
        bg[:n_color] = _cuda(background).reshape(-1)
        bg = bg[None]
    viewmat = _cuda(camera.world_to_cam)[None]
    K = _cuda(camera.K)[None]
    img, alphas, meta = gsplat.rasterization(
        means, quats, torch.exp(log_scales), opacities, colors, viewmat, K, W, H, sh_degree=None, packed=False,
        render_mode="RGB+ED", backgrounds=bg, rasterize_mode="classic",
    )
    img, alpha = img[0], alphas[0, ..., 0]
    out: dict[str, Tensor] = {}
    if n_color:
        out["rgb"] = img[..., :n_color]
    if n_feat:
        out["features"] = img[..., n_color:n_color + n_feat]
    out["depth"] = img[..., -1]
    out["alpha"] = alpha
    out["radii"] = meta["radii"][0]
    ids, weights = gsplat_topk(meta, W, H, topk)
    out["topk_ids"], out["topk_weights"] = ids, weights
    return out


@torch.no_grad()
def gsplat_topk(meta: dict, width: int, height: int, k: int) -> tuple[Tensor, Tensor]:
    """Per-pixel top-k (Gaussian id [H, W, k] long, blend weight [H, W, k]) from gsplat's intersection lists."""
    import gsplat

    means2d, conics, opac = (meta[k].detach().contiguous() for k in ("means2d", "conics", "opacities"))  # [1, N, ...]
    N = means2d.shape[1]
    ids_img = torch.full((height * width, k), -1, dtype=torch.int64, device=means2d.device)
    w_img = torch.zeros(height * width, k, device=means2d.device)
    if k == 0:
        return ids_img.reshape(height, width, 0), w_img.reshape(height, width, 0)
    trans = torch.ones(1, height, width, device=means2d.device)
    gs, pix, _ = gsplat.rasterize_to_indices_in_range(
        0, 2**30, trans, means2d, conics, opac, width, height, meta["tile_size"], meta["isect_offsets"].contiguous(),
        meta["flatten_ids"].contiguous(),
    )
    if len(gs) == 0:
        return ids_img.reshape(height, width, k), w_img.reshape(height, width, k)
    g = (gs % N).long()
    pix = pix.long()
    px = (pix % width).float() + 0.5
    py = (pix // width).float() + 0.5
    m, c = means2d[0, g], conics[0, g]
    dx, dy = m[:, 0] - px, m[:, 1] - py
    sigma = 0.5 * (c[:, 0] * dx * dx + c[:, 2] * dy * dy) + c[:, 1] * dx * dy
    alpha = torch.clamp(opac[0, g] * torch.exp(-sigma), max=ALPHA_MAX)
    # front to back per pixel: sort by (pixel, depth)
    depth = meta["depths"][0, g].detach()
    order = torch.argsort(depth, stable=True)
    order = order[torch.argsort(pix[order], stable=True)]
    g, pix, alpha = g[order], pix[order], alpha[order]
    log_t = torch.log1p(-alpha.double())
    cum = torch.cumsum(log_t, 0)
    first = torch.ones_like(pix, dtype=torch.bool)
    first[1:] = pix[1:] != pix[:-1]
    seg_start = torch.cummax(torch.where(first, torch.arange(len(pix), device=pix.device), 0), 0).values
    excl = cum - log_t - (cum[seg_start] - log_t[seg_start])  # sum of log(1 - alpha) before this pair in its pixel
    weights = (alpha.double() * torch.exp(excl)).float()
    # rank within pixel by weight, keep the first k
    order = torch.argsort(weights, descending=True, stable=True)
    order = order[torch.argsort(pix[order], stable=True)]
    g, pix, weights = g[order], pix[order], weights[order]
    first = torch.ones_like(pix, dtype=torch.bool)
    first[1:] = pix[1:] != pix[:-1]
    seg_start = torch.cummax(torch.where(first, torch.arange(len(pix), device=pix.device), 0), 0).values
    rank = torch.arange(len(pix), device=pix.device) - seg_start
    keep = rank < k
    ids_img[pix[keep], rank[keep]] = g[keep]
    w_img[pix[keep], rank[keep]] = weights[keep]
    return ids_img.reshape(height, width, k), w_img.reshape(height, width, k)
