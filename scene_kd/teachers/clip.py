"""open_clip loading (safe, through one path for real and random weights) and batched crop embedding.

Crops equal open_clip's ``preprocess`` (``open_clip.create_model_and_transforms``: shorter-side resize with the
model's filter, bicubic and antialiased for ViT-B/16, then centre crop and normalise) applied to the crop image:
an 8-bit square window of the render (:func:`crop_images`), mean-coloured outside the image and, for masked
crops, outside the mask. We keep square windows around the (padded) mask box rather than open_clip's centre
crop of a non-square box, so an elongated mask (a pole, a road) is never cut off; for a square image that centre
crop is the identity, so what CLIP sees is exactly ``preprocess(crop image)`` (up to one 8-bit level at rare
pixels, :func:`resize_like_pil`; ``tests/test_teachers_clip.py`` checks it against the real ``preprocess``).
"""

from __future__ import annotations

import time
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

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
    interpolation: str = "bicubic"  # open_clip's preprocess resize filter for this model
    stats: dict[str, float] = field(default_factory=lambda: {"calls": 0, "crops": 0, "seconds": 0.0,
                                                             "prep_seconds": 0.0})
    """calls / crops / seconds: image-tower forwards; prep_seconds: crop preprocessing."""


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
    interpolation = str(open_clip.get_model_preprocess_cfg(model).get("interpolation") or "bicubic")
    return ClipBundle(model=model, tokenizer=open_clip.get_tokenizer(model_name), mean=mean, std=std,
                      image_size=size, dim=clip_embed_dim(model_name), device=device, interpolation=interpolation)


def normalised_images(bundle: ClipBundle, rgbs: list[np.ndarray]) -> torch.Tensor:
    """[B, 3, H, W] float32 CLIP-normalised images (all views in a batch must share H, W)."""
    x = pixel_images(bundle, rgbs).float() / 255.0
    return (x - bundle.mean.to(x.device)[:, None, None]) / bundle.std.to(x.device)[:, None, None]


def pixel_images(bundle: ClipBundle, rgbs: list[np.ndarray]) -> torch.Tensor:
    """[B, 3, H, W] uint8 RGB images on the bundle's device (all views in a batch must share H, W)."""
    shapes = {r.shape for r in rgbs}
    if len(shapes) != 1:
        raise SceneKDError(f"views in one teacher batch must share a size, got {sorted(shapes)}")
    return torch.from_numpy(np.stack(rgbs)).to(bundle.device).permute(0, 3, 1, 2).contiguous()


def fill_colour(bundle: ClipBundle) -> torch.Tensor:
    """[3] uint8-valued float32: the dataset mean colour rounded to 8 bits, the colour of crop pixels outside the
    image or outside a crop's mask (the crop image is an 8-bit image, as the PIL image open_clip reads)."""
    return (bundle.mean * 255).round()


def crop_windows(boxes: torch.Tensor) -> torch.Tensor:
    """[K, 3] int64 (x0, y0, side) square pixel windows of [K, 4] float boxes (x0, y0, x1, y1, pixel edges):
    side = max(1, round(max(w, h))), centred on the box centre, edges on whole pixels."""
    b = boxes.to(torch.float64)
    side = torch.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]).round().clamp_min(1)
    x0 = ((b[:, 0] + b[:, 2]) / 2 - side / 2).round()
    y0 = ((b[:, 1] + b[:, 3]) / 2 - side / 2).round()
    return torch.stack([x0, y0, side], 1).long()


def crop_images(pixels: torch.Tensor, boxes: torch.Tensor, fill: torch.Tensor, *, id_images: torch.Tensor | None = None,
                id_index: torch.Tensor | None = None, keep_id: torch.Tensor | None = None,
                centred: bool = False) -> list[torch.Tensor]:
    """The crop images handed to CLIP: K tensors [3, S_k, S_k] float32 in 0..255 (8-bit values).

    pixels: [B, 3, H, W] uint8 (or float with 8-bit values).   boxes: [K, 5] (view index, x0, y0, x1, y1) pixel
    edges, made square by :func:`crop_windows`.   fill: [3] 8-bit colour of pixels outside the image and, for
    masked crops (id_images [N, H, W] int, id_index [K], keep_id [K]), of pixels where
    id_images[id_index[k]] != keep_id[k].   centred: return crop - fill instead (what :func:`crop_tensors` uses:
    zero padding and a multiply then do the filling, few tensor ops per crop).
    """
    _, _, h, w = pixels.shape
    win = crop_windows(boxes[:, 1:]).tolist()
    views = boxes[:, 0].long().tolist()
    fill = fill.to(pixels.device, torch.float32)[:, None, None]
    index = id_index.long().tolist() if id_images is not None else None
    out = []
    for k, ((x0, y0, s), v) in enumerate(zip(win, views, strict=True)):
        xa, xb, ya, yb = max(x0, 0), min(x0 + s, w), max(y0, 0), min(y0 + s, h)
        if xa < xb and ya < yb:
            part = pixels[v, :, ya:yb, xa:xb].float() - fill
            if id_images is not None:
                part = part * (id_images[index[k], ya:yb, xa:xb] == keep_id[k])
            crop = F.pad(part, (xa - x0, x0 + s - xb, ya - y0, y0 + s - yb))
        else:
            crop = torch.zeros(3, s, s, device=pixels.device)
        out.append(crop if centred else crop + fill)
    return out


def resize_like_pil(crops: list[torch.Tensor], size: int, interpolation: str = "bicubic",
                    offset: torch.Tensor | None = None) -> torch.Tensor:
    """[K, 3, size, size] float32: square 8-bit crops [3, S_k, S_k] resized as PIL's ``Image.resize`` does for
    ``torchvision.transforms.Resize(size, interpolation, antialias=True)`` on a PIL image (open_clip's
    ``preprocess``): antialiased separable filtering (torch's ``antialias=True`` kernels are PIL's: bicubic with
    a = -0.5, support widened by the downscale factor), horizontal pass first, each pass rounded and clipped to
    8 bits as PIL's 8-bit images are. Equal to PIL up to one 8-bit level at rare pixels (PIL's fixed-point
    weights round exact ties differently).   offset: [3] integer colour subtracted from the crops' values (in
    and out; clipping is to [-offset, 255 - offset]).   Raises SceneKDError for an interpolation other than
    bicubic / bilinear."""
    if interpolation not in ("bicubic", "bilinear"):
        raise SceneKDError(f"open_clip interpolation {interpolation!r} is not supported for crops (bicubic, bilinear)")
    if not crops:
        return torch.zeros(0, 3, size, size)
    dev = crops[0].device
    off = torch.zeros(3, device=dev) if offset is None else offset.to(dev, torch.float32)
    lo, hi = -off[:, None, None], 255 - off[:, None, None]

    def resize(x: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
        if tuple(x.shape[-2:]) == shape:
            return x
        return F.interpolate(x[None], size=shape, mode=interpolation, antialias=True, align_corners=False)[0]

    # rounding/clipping on one concatenated tensor per pass: per-crop elementwise ops cost more than the filter
    first = [resize(c, (c.shape[-2], size)) for c in crops]  # horizontal pass
    rows = torch.cat(first, 1).clamp_(lo, hi).round_()
    second = [resize(r, (size, size)) for r in rows.split([c.shape[-2] for c in crops], 1)]  # vertical pass
    return torch.stack(second).clamp_(lo[None], hi[None]).round_()


@contextmanager
def _one_thread(on: bool):
    """Run small per-crop tensor ops on one CPU thread: each op on a [3, S, S] crop is too small to gain from
    torch's OpenMP pool, whose per-op fork/join dominated on a loaded 2-core CPU (preprocessing 15 crops/s with 2
    threads vs 93 with 1: 128 crops of 16-400 px from a 512x512 render, masked)."""
    n = torch.get_num_threads()
    if on and n > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if on and n > 1:
            torch.set_num_threads(n)


def crop_tensors(bundle: ClipBundle, images: torch.Tensor, boxes: torch.Tensor, *, id_images: torch.Tensor | None = None,
                 id_index: torch.Tensor | None = None, keep_id: torch.Tensor | None = None) -> torch.Tensor:
    """[K, 3, S, S] float32 CLIP inputs (S = bundle.image_size): open_clip's ``preprocess`` of each crop image.

    images: [B, 3, H, W] uint8 (:func:`pixel_images`) or float32 CLIP-normalised images of 8-bit renders
    (:func:`normalised_images`; rounded back to their 8-bit values).   boxes, id_images, id_index, keep_id: as
    :func:`crop_images`, which makes each crop image (square, mean-filled outside the image / the mask).
    Each crop image is then resized as PIL does (:func:`resize_like_pil`; a square image, so open_clip's
    shorter-side resize + centre crop is this resize alone) and normalised with the bundle's mean/std.
    """
    pixels = images
    mean, std = bundle.mean.to(images.device), bundle.std.to(images.device)
    if images.is_floating_point():
        pixels = ((images * std[:, None, None] + mean[:, None, None]) * 255).round().clamp(0, 255)
    size, fill = bundle.image_size, fill_colour(bundle).to(images.device)
    with _one_thread(images.device.type == "cpu"):
        crops = crop_images(pixels, boxes.to(pixels.device), fill, id_images=id_images, id_index=id_index,
                            keep_id=keep_id, centred=True)
        x = resize_like_pil(crops, size, bundle.interpolation, offset=fill).to(images.device)
    # (x + fill) / 255 normalised; fill - mean * 255 is the filled pixels' (tiny) normalised value times 255 std
    return (x + (fill - mean * 255)[:, None, None]) / (255 * std[:, None, None])


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
    """Embed square crops with the CLIP image tower, ``batch_size`` crops per forward.

    images: [B, 3, H, W] uint8 or CLIP-normalised float32.  boxes: [K, 5] float (view index, x0, y0, x1, y1) in
    pixels, made square (:func:`crop_windows`); parts outside the image read as the dataset mean colour.
    Masked crops: id_images [N, H, W] int, id_index [K] and keep_id [K] — crop k keeps only pixels where
    id_images[id_index[k]] == keep_id[k] (the rest set to the mean colour before resizing).
    Each crop is preprocessed as open_clip's ``preprocess`` would the crop image (:func:`crop_tensors`).
    Returns [K, D] float32 unit rows.
    """
    out = []
    boxes = boxes.to(images.device, torch.float32)
    for i in range(0, boxes.shape[0], max(1, batch_size)):
        sl = slice(i, i + max(1, batch_size))
        t0 = time.perf_counter()
        crops = crop_tensors(bundle, images, boxes[sl], id_images=id_images,
                             id_index=None if id_index is None else id_index[sl],
                             keep_id=None if keep_id is None else keep_id[sl].to(images.device))
        t1 = time.perf_counter()
        with torch.inference_mode():
            e = bundle.model.encode_image(crops)
        if crops.is_cuda:
            torch.cuda.synchronize()
        t2 = time.perf_counter()
        bundle.stats["seconds"] += t2 - t1
        bundle.stats["prep_seconds"] = bundle.stats.get("prep_seconds", 0.0) + t1 - t0
        bundle.stats["calls"] += 1
        bundle.stats["crops"] += int(crops.shape[0])
        out.append(l2_normalise(e.float()))
    if not out:
        return torch.zeros(0, bundle.dim, device=images.device)
    return torch.cat(out)


def square_boxes(x0: torch.Tensor, y0: torch.Tensor, x1: torch.Tensor, y1: torch.Tensor, scale: float,
                 pad: float = 0.0, min_side: float = 8.0) -> torch.Tensor:
    """[K, 4] square boxes centred on the given boxes (pixel edges), side = max(w, h) * (1 + 2 pad) * scale."""
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    side = torch.maximum(x1 - x0, y1 - y0) * (1 + 2 * pad) * scale
    side = side.clamp_min(min_side) / 2
    return torch.stack([cx - side, cy - side, cx + side, cy + side], dim=1)
