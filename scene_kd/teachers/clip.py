"""open_clip loading (safe, through one path for real and random weights) and batched crop embedding."""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scene_kd.errors import SceneKDError
from scene_kd.teachers.base import l2_normalise
from scene_kd.teachers.weights import RANDOM, load_state_dict, open_clip_spec, parse_explicit, resolve_weights


@dataclass
class ClipBundle:
    model: Any
    tokenizer: Any
    mean: torch.Tensor  # [3] (0..1 pixel units)
    std: torch.Tensor  # [3]
    image_size: int
    dim: int
    device: str
    stats: dict[str, float] = field(default_factory=lambda: {"calls": 0, "crops": 0, "seconds": 0.0})


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SceneKDError("--device cuda requested but CUDA is not available")
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise SceneKDError(f"unknown device {device!r}; use cpu, cuda or auto")
    return device


def resolve_clip_weights(model: str, pretrained: str, explicit: str | None = None, *, download: bool = True) -> str:
    """A weights file path for open_clip ``model``/``pretrained``, or ``"random"``."""
    if pretrained == RANDOM:
        return RANDOM
    mine = parse_explicit(explicit, "open_clip")
    if mine == RANDOM:
        return RANDOM
    if mine and Path(mine).expanduser().is_file():
        return str(Path(mine).expanduser())
    return str(resolve_weights(open_clip_spec(model, pretrained), mine, download=download))


def clip_embed_dim(model: str) -> int:
    import open_clip

    cfg = open_clip.get_model_config(model)
    if cfg is None:
        raise SceneKDError(f"unknown open_clip model {model!r}")
    return int(cfg["embed_dim"])


def _reinit_text_tower(model: torch.nn.Module, seed: int) -> None:
    """Random mode: give every non-visual tensor values that depend only on (seed, name), so the text tower is
    the same whatever the image size (the visual tower is built first and consumes the global RNG)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("visual.") or p.numel() < 2:
                continue
            std, mean = p.float().std().item(), p.float().mean().item()
            if std == 0.0:
                continue
            g = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
            p.copy_((torch.randn(p.shape, generator=g) * std + mean).to(p.dtype))


@lru_cache(maxsize=4)
def load_open_clip(model_name: str, weights: str, *, device: str = "cpu", image_size: int | None = None,
                   seed: int = 0, pretrained: str = "") -> ClipBundle:
    """Build ``model_name`` with open_clip and load ``weights`` (a file path) safely, or seeded random init
    when ``weights == "random"``. ``image_size`` overrides the vision input size (positional embeddings of a
    checkpoint are interpolated)."""
    import open_clip
    from open_clip.model import resize_pos_embed

    device = resolve_device(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        kwargs = {"force_image_size": image_size} if image_size else {}
        model = open_clip.create_model(model_name, pretrained=None, **kwargs)
    if weights == RANDOM:
        _reinit_text_tower(model, 0)
    else:
        sd = load_state_dict(weights)
        resize_pos_embed(sd, model)
        missing, unexpected = model.load_state_dict(sd, strict=False)
        missing = [k for k in missing if "position_ids" not in k and "attn_mask" not in k]
        if missing or unexpected:
            raise SceneKDError(
                f"weights do not fit open_clip {model_name}: missing {missing[:4]}, unexpected {unexpected[:4]}",
                path=weights,
            )
    model = model.to(device).eval()
    cfg = (open_clip.get_pretrained_cfg(model_name, pretrained) if pretrained else None) or {}
    mean = torch.tensor(cfg.get("mean", open_clip.OPENAI_DATASET_MEAN), dtype=torch.float32)
    std = torch.tensor(cfg.get("std", open_clip.OPENAI_DATASET_STD), dtype=torch.float32)
    size = model.visual.image_size
    size = int(size[0] if isinstance(size, (tuple, list)) else size)
    return ClipBundle(model=model, tokenizer=open_clip.get_tokenizer(model_name), mean=mean, std=std,
                      image_size=size, dim=clip_embed_dim(model_name), device=device)


def normalised_images(bundle: ClipBundle, rgbs: list[np.ndarray]) -> torch.Tensor:
    """[B, 3, H, W] float32 CLIP-normalised images (all views in a batch must share H, W)."""
    shapes = {r.shape for r in rgbs}
    if len(shapes) != 1:
        raise SceneKDError(f"views in one teacher batch must share a size, got {sorted(shapes)}")
    x = torch.from_numpy(np.stack(rgbs)).to(bundle.device).permute(0, 3, 1, 2).float() / 255.0
    return (x - bundle.mean.to(x.device)[:, None, None]) / bundle.std.to(x.device)[:, None, None]


def embed_crops(
    bundle: ClipBundle,
    images: torch.Tensor,
    boxes: torch.Tensor,
    *,
    batch_size: int = 64,
    id_images: torch.Tensor | None = None,
    id_index: torch.Tensor | None = None,
    keep_id: torch.Tensor | None = None,
) -> torch.Tensor:
    """Embed square crops of normalised images with the CLIP image tower, ``batch_size`` crops per forward.

    images: [B, 3, H, W] normalised.  boxes: [K, 5] float (view index, x0, y0, x1, y1) in pixels; parts outside
    the image read as the dataset mean (0 after normalising).  Masked crops: id_images [N, H, W] int, id_index [K]
    and keep_id [K] — crop k keeps only pixels where id_images[id_index[k]] == keep_id[k] (the rest blanked to the
    mean colour).
    Returns [K, D] float32 unit rows.
    """
    from torchvision.ops import roi_align

    size = bundle.image_size
    out = []
    boxes = boxes.to(images.device, torch.float32)
    for i in range(0, boxes.shape[0], max(1, batch_size)):
        b = boxes[i : i + batch_size]
        crops = roi_align(images, b, output_size=size, spatial_scale=1.0, sampling_ratio=2, aligned=True)
        if id_images is not None:
            id_boxes = torch.cat([id_index[i : i + batch_size, None].to(b), b[:, 1:]], 1)
            keep = _crop_masks(id_images, id_boxes, size) == keep_id[i : i + batch_size].to(images.device)[:, None, None]
            crops = crops * keep[:, None].to(crops.dtype)
        t0 = time.perf_counter()
        with torch.inference_mode():
            e = bundle.model.encode_image(crops)
        if crops.is_cuda:
            torch.cuda.synchronize()
        bundle.stats["seconds"] += time.perf_counter() - t0
        bundle.stats["calls"] += 1
        bundle.stats["crops"] += int(b.shape[0])
        out.append(l2_normalise(e.float()))
    if not out:
        return torch.zeros(0, bundle.dim, device=images.device)
    return torch.cat(out)


def _crop_masks(mask_ids: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Nearest-neighbour crops [K, size, size] of id images [N, H, W] (box column 0 picks the image; -1 outside)."""
    _, h, w = mask_ids.shape
    t = (torch.arange(size, device=boxes.device, dtype=torch.float32) + 0.5) / size
    xs = boxes[:, 1:2] + t[None] * (boxes[:, 3:4] - boxes[:, 1:2])  # [K, S]
    ys = boxes[:, 2:3] + t[None] * (boxes[:, 4:5] - boxes[:, 2:3])
    ix, iy = xs.floor().long(), ys.floor().long()
    inside = ((iy >= 0) & (iy < h))[:, :, None] & ((ix >= 0) & (ix < w))[:, None, :]
    view = boxes[:, 0].long()[:, None, None]
    ids = mask_ids[view, iy.clamp(0, h - 1)[:, :, None], ix.clamp(0, w - 1)[:, None, :]]
    return torch.where(inside, ids, torch.full_like(ids, -1))


def square_boxes(x0: torch.Tensor, y0: torch.Tensor, x1: torch.Tensor, y1: torch.Tensor, scale: float,
                 pad: float = 0.0, min_side: float = 8.0) -> torch.Tensor:
    """[K, 4] square boxes centred on the given boxes (pixel edges), side = max(w, h) * (1 + 2 pad) * scale."""
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    side = torch.maximum(x1 - x0, y1 - y0) * (1 + 2 * pad) * scale
    side = side.clamp_min(min_side) / 2
    return torch.stack([cx - side, cy - side, cx + side, cy + side], dim=1)
