"""SAM automatic masks at several granularities, from the public segment_anything model classes.

SAM's automatic-mask recipe (``SamAutomaticMaskGenerator`` with crop_n_layers=0: a grid of point prompts,
multimask output, predicted-IoU filter ``iou > pred_iou_thresh``, stability filter ``stability >=
stability_thresh`` on the upsampled logits (a threshold <= 0 turns its filter off), box NMS scored by predicted
IoU) run directly on ``Sam``'s encoder / prompt encoder / decoder. Per level the masks after filters + NMS
equal the reference generator's run on that level's outputs
(``tests/test_teachers_clip.py::test_sam_levels_equal_reference_generator``). Where we differ, and why:

- Levels: SAM's three multimask outputs (sub-part, part, whole) are kept as three mask levels and NMS runs per
  level; the reference runs one NMS over all three, which lets a whole-object mask suppress its parts, while
  fusion wants every granularity.
- No overlaps: per level each pixel belongs to at most one mask (:func:`resolve_overlaps`, greedy by predicted
  IoU, a mask keeping its claim only with >= ``min_area`` px and >= half its area): the teacher hands fusion one
  id image per level, the reference returns overlapping masks.
- ``min_area`` (16 px by default, ``min_mask_area``): masks smaller than this are dropped before NMS (0 turns it
  off; the reference has no area filter, its ``min_mask_region_area`` hole/island cleanup is off by default and
  not done here): a few-pixel mask gives a CLIP crop of mostly padding and lands on almost no points.
- Defaults: a 16x16 point grid and thresholds 0.86 / 0.92 (the reference: 32x32, 0.88 / 0.95) are the presets'
  cost choices (decoding the grid is most of SAM's time); pass the reference's values to get its masks.
- Images are encoded in batches of ``image_batch``; the embedding equals ``SamPredictor.set_image``'s.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import lru_cache, partial
from typing import Any

import numpy as np
import torch

from scene_kd.errors import SceneKDError
from scene_kd.teachers.clip import resolve_device
from scene_kd.teachers.weights import RANDOM, load_state_dict

_VIT = {  # embed dim, depth, heads, global attention layers (segment_anything/build_sam.py)
    "vit_b": (768, 12, 12, (2, 5, 8, 11)),
    "vit_l": (1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": (1280, 32, 16, (7, 15, 23, 31)),
}


@dataclass
class SamBundle:
    model: Any
    image_size: int
    device: str
    stats: dict[str, float] = field(default_factory=lambda: {"calls": 0, "seconds": 0.0})


def build_sam(model_type: str = "vit_b", image_size: int = 1024) -> torch.nn.Module:
    """SAM with the architecture of ``sam_model_registry[model_type]`` at input size ``image_size`` (random init)."""
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    if model_type not in _VIT:
        raise SceneKDError(f"unknown SAM model {model_type!r}; choose one of {', '.join(_VIT)}")
    if image_size % 16 or image_size < 64:
        raise SceneKDError(f"sam_image_size must be a multiple of 16 and >= 64, got {image_size}")
    dim, depth, heads, global_attn = _VIT[model_type]
    emb = image_size // 16
    return Sam(
        image_encoder=ImageEncoderViT(
            depth=depth, embed_dim=dim, img_size=image_size, mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=heads, patch_size=16, qkv_bias=True,
            use_rel_pos=True, global_attn_indexes=global_attn, window_size=14, out_chans=256,
        ),
        prompt_encoder=PromptEncoder(embed_dim=256, image_embedding_size=(emb, emb),
                                     input_image_size=(image_size, image_size), mask_in_chans=16),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
            transformer_dim=256, iou_head_depth=3, iou_head_hidden_dim=256,
        ),
        pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375],
    ).eval()


@lru_cache(maxsize=2)
def load_sam(model_type: str, weights: str, *, device: str = "cpu", image_size: int = 1024, seed: int = 0) -> SamBundle:
    """SAM with ``weights`` (a checkpoint path, read with weights_only=True) or seeded random init."""

    device = resolve_device(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        sam = build_sam(model_type, image_size)
    if weights != RANDOM:
        sd = load_state_dict(weights)
        try:
            sam.load_state_dict(sd, strict=True)
        except RuntimeError as e:
            hint = " (pretrained SAM weights need sam_image_size 1024)" if image_size != 1024 else ""
            raise SceneKDError(f"weights do not fit SAM {model_type}{hint}: {str(e)[:300]}", path=weights) from None
    return SamBundle(model=sam.to(device), image_size=image_size, device=device)


@dataclass
class SamParams:
    points_per_side: int = 16
    points_per_batch: int = 64
    levels: tuple[int, ...] = (0, 1, 2)
    pred_iou_thresh: float = 0.86
    stability_thresh: float = 0.92
    stability_offset: float = 1.0
    nms_iou: float = 0.7
    min_area: int = 16
    image_batch: int = 2
    """Images per SAM image-encoder call: its global-attention blocks hold a [heads, 4096, 4096] attention map
    per 1024-px image (~0.8 GB in float32), so 16 views at once exhausted 24 GB of RAM."""


def sam_masks(bundle: SamBundle, rgbs: list[np.ndarray], params: SamParams) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per image: (mask_ids [L, H, W] int32 local mask index or -1, mask_level [M] int32), L = len(levels)."""
    from segment_anything.utils.transforms import ResizeLongestSide

    sam, dev = bundle.model, bundle.device
    transform = ResizeLongestSide(bundle.image_size)
    inputs, sizes = [], []
    for rgb in rgbs:
        x = torch.as_tensor(transform.apply_image(rgb), device=dev).permute(2, 0, 1).contiguous()
        sizes.append(tuple(x.shape[-2:]))
        inputs.append(sam.preprocess(x[None].float()))
    t0 = time.perf_counter()
    step = max(1, params.image_batch)
    with torch.inference_mode():
        embeddings = torch.cat([sam.image_encoder(torch.cat(inputs[i : i + step])) for i in range(0, len(inputs), step)])
    bundle.stats["seconds"] += time.perf_counter() - t0
    bundle.stats["calls"] += 1
    return [_masks_for_image(bundle, embeddings[i : i + 1], rgb.shape[:2], sizes[i], transform, params)
            for i, rgb in enumerate(rgbs)]


def level_candidates(bundle, embedding, orig_hw, input_hw, transform, params: SamParams
                     ) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Per SAM output level: (masks [N, h, w] bool, predicted IoU [N]) after the filters and box NMS, as
    ``SamAutomaticMaskGenerator`` (crop_n_layers=0) keeps them for that level's outputs alone (tested equal);
    plus, where ``params.min_area`` > 0, masks under ``min_area`` pixels are dropped."""
    from segment_anything.utils.amg import batched_mask_to_box, build_point_grid, calculate_stability_score
    from torchvision.ops import nms

    sam, dev = bundle.model, bundle.device
    h, w = orig_hw
    pts = build_point_grid(params.points_per_side) * np.array([[w, h]])
    # float64 as SamAutomaticMaskGenerator passes them (the prompt encoder scales them before casting to float32)
    pts = torch.as_tensor(transform.apply_coords(pts, (h, w)), device=dev)
    levels = list(params.levels)
    cand: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {lv: [] for lv in levels}
    t0 = time.perf_counter()
    with torch.inference_mode():
        dense_pe = sam.prompt_encoder.get_dense_pe()
        for i in range(0, pts.shape[0], params.points_per_batch):
            p = pts[i : i + params.points_per_batch]
            labels = torch.ones(p.shape[0], 1, dtype=torch.int64, device=dev)
            sparse, dense = sam.prompt_encoder(points=(p[:, None], labels), boxes=None, masks=None)
            low, iou = sam.mask_decoder(image_embeddings=embedding, image_pe=dense_pe, sparse_prompt_embeddings=sparse,
                                        dense_prompt_embeddings=dense, multimask_output=True)
            logits = sam.postprocess_masks(low, input_hw, (h, w))  # [P, 3, h, w]
            stab = calculate_stability_score(logits, sam.mask_threshold, params.stability_offset)
            binary = logits > sam.mask_threshold
            # as SamAutomaticMaskGenerator: strict > for the predicted IoU, >= for stability, a threshold <= 0 is off
            ok = torch.ones_like(iou, dtype=torch.bool)
            if params.pred_iou_thresh > 0:
                ok &= iou > params.pred_iou_thresh
            if params.stability_thresh > 0:
                ok &= stab >= params.stability_thresh
            if params.min_area > 0:
                ok &= binary.sum((-1, -2)) >= params.min_area
            for lv in levels:
                keep = ok[:, lv]
                if keep.any():
                    cand[lv].append((binary[keep, lv], iou[keep, lv].float()))
    bundle.stats["seconds"] += time.perf_counter() - t0
    out = {}
    for lv in levels:
        if not cand[lv]:
            out[lv] = (torch.zeros(0, h, w, dtype=torch.bool, device=dev), torch.zeros(0, device=dev))
            continue
        masks = torch.cat([m for m, _ in cand[lv]])
        scores = torch.cat([s for _, s in cand[lv]])
        keep = nms(batched_mask_to_box(masks).float(), scores, params.nms_iou)
        out[lv] = (masks[keep], scores[keep])
    return out


def _masks_for_image(bundle, embedding, orig_hw, input_hw, transform, params: SamParams):
    h, w = orig_hw
    levels = list(params.levels)
    ids = np.full((len(levels), h, w), -1, np.int32)
    mask_level: list[int] = []
    for li, (masks, scores) in enumerate(level_candidates(bundle, embedding, orig_hw, input_hw, transform,
                                                          params).values()):
        if not len(masks):
            continue
        label = resolve_overlaps(masks, scores, params.min_area)
        n = int(label.max().item()) + 1 if label.numel() else 0
        ids[li] = np.where(label.cpu().numpy() >= 0, label.cpu().numpy() + len(mask_level), -1)
        mask_level += [li] * n
    return ids, np.asarray(mask_level, dtype=np.int32)


def resolve_overlaps(masks: torch.Tensor, scores: torch.Tensor, min_area: int, min_kept: float = 0.5) -> torch.Tensor:
    """[H, W] int64 label image: masks [N, H, W] bool claim still-free pixels in descending score; a mask keeps
    its claim only if that leaves it at least ``min_area`` pixels and ``min_kept`` of its own area."""
    h, w = masks.shape[-2:]
    label = torch.full((h, w), -1, dtype=torch.int64, device=masks.device)
    n = 0
    for i in torch.argsort(scores, descending=True).tolist():
        free = masks[i] & (label < 0)
        got = int(free.sum())
        if got >= min_area and got >= min_kept * int(masks[i].sum()):
            label[free] = n
            n += 1
    return label
