"""Gaussian feature field (Feature 3DGS): per-Gaussian low-dim features + a 1x1 decoder to the teacher dim,
optimised by rendering feature maps against the teacher's per-pixel features.

The Gaussians' geometry and opacity stay fixed; only ``features`` [N, F] (F ~ 16) and the decoder
(Linear F -> D, a 1x1 conv on the rendered map) learn. A pixel's rendered feature is the blend
sum_i w_i f_i of the low-dim features (the rasterizer's alpha compositing), decoded to D dims; the loss is
1 - cosine to the teacher's feature at that pixel, on pixels with a teacher feature and alpha >= min_alpha.
Rendering uses :func:`scene_kd.render.backends.rasterize` (gsplat on CUDA, the torch reference on CPU;
both differentiable w.r.t. features). After training, :meth:`GaussianFeatureField.gaussian_features`
gives every Gaussian's decoded unit feature [N, D] for the FeatureField (kind "gaussians").

The training-free alternative (Occam's LGS weighted averaging) lives in scene_kd/lift.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from scene_kd.errors import SceneKDError
from scene_kd.scene.types import Camera, GaussianSplats

log = logging.getLogger(__name__)


@dataclass
class GaussianFieldConfig:
    feature_dim: int = 16
    """Per-Gaussian low-dim feature size F."""
    iterations: int = 300
    lr: float = 0.05
    """Adam learning rate of the per-Gaussian features."""
    decoder_lr: float = 0.01
    min_alpha: float = 0.5
    """Pixels whose accumulated opacity is below this are not supervised."""
    seed: int = 0
    backend: str = "auto"
    """Rasterizer: "auto" (gsplat on CUDA), "gsplat" or "torch"."""


class GaussianFeatureField(nn.Module):
    """features [N, F] (parameters) + decoder Linear(F, D)."""

    def __init__(self, n: int, feature_dim: int, out_dim: int, generator: torch.Generator | None = None):
        super().__init__()
        self.features = nn.Parameter(0.1 * torch.randn(n, feature_dim, generator=generator))
        self.decoder = nn.Linear(feature_dim, out_dim)

    def decode(self, x: Tensor) -> Tensor:
        """[..., F] -> [..., D] unit vectors."""
        y = self.decoder(x)
        return y / y.norm(dim=-1, keepdim=True).clamp_min(1e-8)

    @torch.no_grad()
    def gaussian_features(self) -> Tensor:
        """[N, D] decoded unit features per Gaussian (CPU float32)."""
        return self.decode(self.features).float().cpu()


def pixel_targets(mask_ids: np.ndarray, embeddings: Tensor) -> tuple[Tensor, Tensor]:
    """Per-pixel teacher features from a view's masks (teachers' ViewMasks).

    mask_ids [L, H, W] int (index into embeddings, -1 none), embeddings [M, D]. Each level's embedding at a
    pixel counts equally (granularity-balanced, as in fusion); returns (targets [H, W, D] unit vectors,
    valid [H, W] bool).
    """
    ids = torch.as_tensor(np.asarray(mask_ids), dtype=torch.int64)
    if ids.ndim == 2:
        ids = ids[None]
    emb = torch.as_tensor(embeddings).to(torch.float32)
    emb = emb / emb.norm(dim=1, keepdim=True).clamp_min(1e-8)
    padded = torch.cat([emb, torch.zeros(1, emb.shape[1])])
    ids = torch.where(ids < 0, emb.shape[0], ids)
    total = padded[ids].sum(0)  # [H, W, D]
    norm = total.norm(dim=-1)
    valid = norm > 1e-6
    return total / norm.clamp_min(1e-8)[..., None], valid


def train_gaussian_field(
    splats: GaussianSplats,
    cameras: list[Camera],
    targets: list[Tensor],
    valid: list[Tensor] | None = None,
    cfg: GaussianFieldConfig | None = None,
    *,
    device: str = "auto",
    progress: bool = True,
) -> tuple[GaussianFeatureField, dict[str, Any]]:
    """Fit per-Gaussian features so rendered, decoded feature maps match the teacher's.

    splats: the scene's Gaussians (geometry fixed). cameras: V views; targets: per view [H, W, D] teacher
    features (e.g. from :func:`pixel_targets`); valid: per view [H, W] bool (default: non-zero targets).
    Returns (field, history) with history["loss"] per iteration (each iteration renders one view,
    cycling through a seeded permutation of the views) and "seconds".
    """
    from scene_kd.render.backends import choose_backend, rasterize

    cfg = cfg or GaussianFieldConfig()
    if len(splats) == 0:
        raise SceneKDError("no Gaussians to train a feature field on")
    if not cameras or len(cameras) != len(targets):
        raise SceneKDError(f"need one target feature map per camera, got {len(cameras)} cameras, {len(targets)} targets")
    dim = int(targets[0].shape[-1])
    for cam, t in zip(cameras, targets, strict=True):
        if tuple(t.shape) != (cam.height, cam.width, dim):
            raise SceneKDError(f"target map {tuple(t.shape)} does not match camera {cam.height}x{cam.width} with D={dim}")
    backend = choose_backend(cfg.backend)
    dev = torch.device("cuda" if backend == "gsplat" or (device == "auto" and torch.cuda.is_available()) else
                       ("cpu" if device == "auto" else device))
    g = torch.Generator().manual_seed(cfg.seed)
    field = GaussianFeatureField(len(splats), cfg.feature_dim, dim, generator=g).to(dev)
    with torch.no_grad():  # seeded decoder init
        field.decoder.weight.copy_(torch.randn(field.decoder.weight.shape, generator=g) / cfg.feature_dim**0.5)
        field.decoder.bias.zero_()
    opt = torch.optim.Adam([{"params": [field.features], "lr": cfg.lr},
                            {"params": field.decoder.parameters(), "lr": cfg.decoder_lr}])
    geometry = [torch.as_tensor(a, dtype=torch.float32, device=dev)
                for a in (splats.means, splats.quats, splats.log_scales, splats.opacity_logits)]
    tgt = [t.to(dev, torch.float32) for t in targets]
    ok = [(v if v is not None else t.norm(dim=-1) > 1e-6).to(dev) for v, t in
          zip(valid if valid is not None else [None] * len(tgt), tgt, strict=True)]
    history: dict[str, Any] = {"loss": []}
    order: list[int] = []
    t0 = time.perf_counter()
    from rich.progress import Progress

    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("gaussian feature field", total=cfg.iterations)
        for _ in range(cfg.iterations):
            if not order:
                order = torch.randperm(len(cameras), generator=g).tolist()
            v = order.pop()
            out = rasterize(*geometry, None, cameras[v], features=field.features, topk=1, backend=backend)
            fmap, alpha = out["features"], out["alpha"].detach()
            use = ok[v] & (alpha >= cfg.min_alpha)
            if not bool(use.any()):
                history["loss"].append(float("nan"))
                bar.advance(task)
                continue
            pred = field.decode(fmap[use])
            loss = (1 - (pred * tgt[v][use]).sum(-1)).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            history["loss"].append(float(loss.detach()))
            bar.advance(task)
    history["seconds"] = time.perf_counter() - t0
    history["backend"] = backend
    return field.cpu(), history
