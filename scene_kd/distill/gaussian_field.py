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
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from scene_kd.distill.config import GaussianFieldConfig
from scene_kd.errors import SceneKDError
from scene_kd.progress import progress_bar
from scene_kd.render.backends import choose_backend, rasterize
from scene_kd.runio import load_tensors, save_tensors
from scene_kd.scene.types import Camera, GaussianSplats

log = logging.getLogger(__name__)


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
    emb = torch.as_tensor(embeddings).to(torch.float32)
    view = MaskTargets(mask_ids, emb / emb.norm(dim=1, keepdim=True).clamp_min(1e-8))
    h, w, d = view.shape
    total = view.level_sum(torch.arange(h * w))
    norm = total.norm(dim=-1)
    return (total / norm.clamp_min(1e-8)[:, None]).reshape(h, w, d), (norm > 1e-6).reshape(h, w)


class MaskTargets:
    """A view's teacher targets kept as mask ids (built per step for the sampled pixels only): a dense
    [H, W, D] map per view would take H * W * D * 4 bytes, 128 MB for one 256 x 256 view at D = 512.

    mask_ids [L, H, W] int (index into embeddings, -1 none); embeddings [M, D] unit rows, one tensor shared by
    all views. Each level's embedding counts equally at a pixel, as in :func:`pixel_targets`.
    """

    def __init__(self, mask_ids: np.ndarray, embeddings: Tensor):
        ids = torch.as_tensor(np.asarray(mask_ids), dtype=torch.int64)
        self.ids = ids[None] if ids.ndim == 2 else ids
        self.embeddings = embeddings

    @property
    def shape(self) -> tuple[int, int, int]:
        return (int(self.ids.shape[1]), int(self.ids.shape[2]), int(self.embeddings.shape[1]))

    def valid(self) -> Tensor:
        """[H, W] bool: pixels with a mask in some level."""
        return (self.ids >= 0).any(0)

    def level_sum(self, flat_pixels: Tensor) -> Tensor:
        """Sum over levels of the embeddings [P, D] at flat pixel indices [P] (row * W + col); 0 without masks."""
        ids = self.ids.reshape(self.ids.shape[0], -1)[:, flat_pixels.cpu()]  # [L, P]
        emb = self.embeddings
        total = torch.zeros(ids.shape[1], emb.shape[1], dtype=emb.dtype, device=emb.device)
        for level in ids:
            ok = level >= 0
            total[ok] += emb[level[ok].to(emb.device)]
        return total

    def at(self, flat_pixels: Tensor) -> Tensor:
        """Unit target features [P, D] at flat pixel indices [P] of valid pixels."""
        total = self.level_sum(flat_pixels)
        return total / total.norm(dim=-1, keepdim=True).clamp_min(1e-8)


def train_gaussian_field(
    splats: GaussianSplats,
    cameras: list[Camera],
    targets: list[Tensor] | list[MaskTargets],
    valid: list[Tensor] | None = None,
    cfg: GaussianFieldConfig | None = None,
    *,
    device: str = "auto",
    progress: bool = True,
    init_features: Tensor | None = None,
) -> tuple[GaussianFeatureField, dict[str, Any]]:
    """Fit per-Gaussian features so rendered, decoded feature maps match the teacher's.

    splats: the scene's Gaussians (geometry fixed). cameras: V views; targets: per view [H, W, D] teacher
    features (e.g. from :func:`pixel_targets`) or :class:`MaskTargets`; valid: per view [H, W] bool
    (default: non-zero targets / pixels with a mask). Each step supervises at most ``cfg.max_pixels`` pixels.
    init_features: optional [N, D] features to start from (e.g. the fused ones): the decoder starts as their
    top-F principal directions (uncentred SVD over the non-zero rows) and each Gaussian's low-dim feature as its
    projection onto them, so training refines the lifted features instead of starting from noise.
    Returns (field, history) with history["loss"] per iteration (each iteration renders one view,
    cycling through a seeded permutation of the views) and "seconds".
    """

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
    anchor = None
    field = GaussianFeatureField(len(splats), cfg.feature_dim, dim, generator=g).to(dev)
    with torch.no_grad():  # seeded decoder init
        field.decoder.weight.copy_(torch.randn(field.decoder.weight.shape, generator=g) / cfg.feature_dim**0.5)
        field.decoder.bias.zero_()
        if init_features is not None:
            init = torch.as_tensor(init_features).to(torch.float32).cpu()
            if tuple(init.shape) != (len(splats), dim):
                raise SceneKDError(f"init features are {tuple(init.shape)}, expected ({len(splats)}, {dim})")
            has = init.norm(dim=1) > 1e-6
            if int(has.sum()) >= cfg.feature_dim:
                basis = torch.linalg.svd(init[has], full_matrices=False).Vh[: cfg.feature_dim].T  # [D, F]
                field.decoder.weight.copy_(basis.to(dev))
                field.features.copy_((init @ basis).to(dev))
                if cfg.anchor_weight > 0:  # (covered Gaussian ids, their unit init features)
                    unit = init[has] / init[has].norm(dim=1, keepdim=True)
                    anchor = (has.nonzero().squeeze(1).to(dev), unit.to(dev))
    opt = torch.optim.Adam([{"params": [field.features], "lr": cfg.lr},
                            {"params": field.decoder.parameters(), "lr": cfg.decoder_lr}])
    geometry = [torch.as_tensor(a, dtype=torch.float32, device=dev)
                for a in (splats.means, splats.quats, splats.log_scales, splats.opacity_logits)]
    tgt: list[Any] = []
    on_device: dict[int, Tensor] = {}  # the views' shared embeddings, moved once
    for t in targets:
        if isinstance(t, MaskTargets):
            if id(t.embeddings) not in on_device:
                on_device[id(t.embeddings)] = t.embeddings.to(dev, torch.float32)
            tgt.append(MaskTargets(t.ids, on_device[id(t.embeddings)]))
        else:
            tgt.append(t.to(dev, torch.float32))
    ok = [(v if v is not None else (t.valid() if isinstance(t, MaskTargets) else t.norm(dim=-1) > 1e-6)).to(dev)
          for v, t in zip(valid if valid is not None else [None] * len(tgt), tgt, strict=True)]
    history: dict[str, Any] = {"loss": []}
    order: list[int] = []
    t0 = time.perf_counter()
    with progress_bar(progress) as bar:
        task = bar.add_task("gaussian feature field", total=cfg.iterations)
        for _ in range(cfg.iterations):
            if not order:
                order = torch.randperm(len(cameras), generator=g).tolist()
            v = order.pop()
            out = rasterize(*geometry, None, cameras[v], features=field.features, topk=1, backend=backend)
            fmap, alpha = out["features"], out["alpha"].detach()
            use = (ok[v] & (alpha >= cfg.min_alpha)).reshape(-1).nonzero().squeeze(1)
            if len(use) == 0:
                history["loss"].append(float("nan"))
                bar.advance(task)
                continue
            if len(use) > cfg.max_pixels:
                use = use[torch.randperm(len(use), generator=g)[: cfg.max_pixels].to(use.device)]
            pred = field.decode(fmap.reshape(-1, fmap.shape[-1])[use])
            target = tgt[v].at(use) if isinstance(tgt[v], MaskTargets) else tgt[v].reshape(-1, dim)[use]
            loss = (1 - (pred * target).sum(-1)).mean()
            if anchor is not None:  # decoded features of covered Gaussians stay near their start (a sample per step)
                pick = torch.randperm(len(anchor[0]), generator=g)[: cfg.max_pixels].to(dev)
                held = field.decode(field.features[anchor[0][pick]])
                loss = loss + cfg.anchor_weight * (1 - (held * anchor[1][pick]).sum(-1)).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            history["loss"].append(float(loss.detach()))
            bar.advance(task)
    history["seconds"] = time.perf_counter() - t0
    history["backend"] = backend
    return field.cpu(), history


def downsample_view(camera: Camera, mask_ids: np.ndarray, factor: int) -> tuple[Camera, np.ndarray]:
    """(camera, mask_ids [L, H', W']) at 1/factor resolution: intrinsics scaled, masks sampled at the source pixel
    nearest each new pixel's centre. factor 1 returns the inputs."""
    if factor <= 1:
        return camera, mask_ids
    w, h = camera.width // factor, camera.height // factor
    if w < 1 or h < 1:
        raise SceneKDError(f"downsample {factor} leaves no pixels of a {camera.width}x{camera.height} view")
    K = camera.K.copy()
    K[:2] /= factor
    ids = np.asarray(mask_ids)
    ids = ids[None] if ids.ndim == 2 else ids
    off = factor // 2
    small = ids[:, off::factor, off::factor][:, :h, :w]
    return Camera(K=K, world_to_cam=camera.world_to_cam, width=w, height=h, level=camera.level, name=camera.name), small


def save_gaussian_field(path, field: GaussianFeatureField, metadata: dict[str, Any]) -> None:
    """RUN/gaussian_field.safetensors: ``features`` [N, F], ``decoder.weight`` [D, F], ``decoder.bias`` [D]."""

    save_tensors(path, {"features": field.features.detach().cpu().float().contiguous(),
                        "decoder.weight": field.decoder.weight.detach().cpu().float().contiguous(),
                        "decoder.bias": field.decoder.bias.detach().cpu().float().contiguous()}, metadata)


def load_gaussian_field(path) -> GaussianFeatureField:
    tensors, _ = load_tensors(path)
    n, f = tensors["features"].shape
    field = GaussianFeatureField(n, f, tensors["decoder.weight"].shape[0])
    field.load_state_dict({"features": tensors["features"], "decoder.weight": tensors["decoder.weight"],
                           "decoder.bias": tensors["decoder.bias"]})
    return field
