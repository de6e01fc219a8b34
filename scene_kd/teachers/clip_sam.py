"""clip-sam: SAM automatic masks at several granularities, one open_clip embedding per mask.

Each mask's embedding combines (1 - context_weight) x the masked crop (square box around the mask, padded by
``crop_padding``, pixels outside the mask blanked to the dataset mean) and context_weight x a context crop
``context_scale`` times larger (not blanked), then L2-normalised. Each crop image is preprocessed as open_clip's
``preprocess`` would it (bicubic antialiased resize, :mod:`scene_kd.teachers.clip`). All crops of a batch of views
go through the CLIP image tower together, ``crop_batch_size`` at a time.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from scene_kd.render.types import Render
from scene_kd.runio import config_hash
from scene_kd.teachers.base import ViewMasks, encode_by_image_size, l2_normalise
from scene_kd.teachers.clip import (
    clip_embed_dim,
    embed_crops,
    load_open_clip,
    pixel_images,
    resolve_clip_weights,
    resolve_device,
    square_boxes,
)
from scene_kd.teachers.sam import SamParams, sam_masks
from scene_kd.teachers.text import OpenClipTextEncoder
from scene_kd.teachers.weights import RANDOM


class ClipTeacherBase:
    """Lazy open_clip loading shared by the CLIP teachers: nothing is loaded until first used."""

    name = "clip"

    def __init__(self, *, clip_model: str = "ViT-B-16", clip_pretrained: str = "laion2b_s34b_b88k",
                 clip_image_size: int | None = None, weights: str | None = None, download: bool = True,
                 device: str = "auto", seed: int = 0, crop_batch_size: int = 64):
        self.clip_model, self.clip_pretrained, self.clip_image_size = clip_model, clip_pretrained, clip_image_size
        self.weights, self.download, self.seed = weights, download, int(seed)
        self.device = resolve_device(device)
        self.crop_batch_size = int(crop_batch_size)
        self.dim = clip_embed_dim(clip_model)
        tag = RANDOM if weights == RANDOM else clip_pretrained
        self.text_encoder_id = f"open_clip:{clip_model}:{tag}"
        self._bundle = None
        self._text = None
        self._stats0: dict[int, float] = {}

    def _track(self, bundle):
        """Remember a (shared, cached) model bundle's time counter when this teacher first uses it."""
        self._stats0.setdefault(id(bundle), bundle.stats["seconds"])
        return bundle

    def model_seconds(self) -> float:
        """Seconds this teacher spent inside model forward passes."""
        return sum(b.stats["seconds"] - self._stats0.get(id(b), 0.0) for b in self._models() if b is not None)

    def _models(self) -> list:
        return [self._bundle]

    def load(self) -> None:
        """Load the models now (otherwise on first use)."""
        _ = self.bundle

    def _identity(self) -> list:
        seed = self.seed if self.weights == RANDOM else None  # random init depends on the seed
        return [self.name, self.text_encoder_id, self.weights if self.weights != RANDOM else None, seed,
                self.clip_image_size]

    @property
    def bundle(self):
        if self._bundle is None:
            path = resolve_clip_weights(self.clip_model, self.clip_pretrained, self.weights, download=self.download)
            self._bundle = load_open_clip(self.clip_model, path, device=self.device, image_size=self.clip_image_size,
                                          seed=self.seed, pretrained=self.clip_pretrained)
            self._track(self._bundle)
        return self._bundle

    @property
    def text_encoder(self) -> OpenClipTextEncoder:
        if self._text is None:
            self._text = OpenClipTextEncoder(self.bundle, self.text_encoder_id)
        return self._text

    def encode_text(self, prompts: Sequence[str]) -> torch.Tensor:
        return self.text_encoder.encode_text(prompts)


def mask_boxes(mask_ids: torch.Tensor, num_masks: int) -> torch.Tensor:
    """[M, 4] pixel-edge boxes (x0, y0, x1, y1) of masks 0..M-1 in a [L, H, W] id image (-1 none)."""
    _, h, w = mask_ids.shape
    ys, xs = torch.meshgrid(torch.arange(h, device=mask_ids.device), torch.arange(w, device=mask_ids.device),
                            indexing="ij")
    flat = mask_ids.reshape(mask_ids.shape[0], -1)
    ok = flat >= 0
    idx = flat[ok]
    big = torch.full((num_masks,), h + w, dtype=torch.long, device=mask_ids.device)
    xs_, ys_ = xs.reshape(1, -1).expand_as(flat)[ok], ys.reshape(1, -1).expand_as(flat)[ok]
    x0 = big.clone().scatter_reduce(0, idx, xs_, "amin")
    y0 = big.clone().scatter_reduce(0, idx, ys_, "amin")
    x1 = torch.full_like(big, -1).scatter_reduce(0, idx, xs_, "amax") + 1
    y1 = torch.full_like(big, -1).scatter_reduce(0, idx, ys_, "amax") + 1
    return torch.stack([x0, y0, x1, y1], 1).float()


class ClipSamTeacher(ClipTeacherBase):
    name = "clip-sam"

    def __init__(self, *, sam_model: str = "vit_b", sam_image_size: int = 1024, sam_points_per_side: int = 16,
                 sam_points_per_batch: int = 64, sam_levels: Sequence[int] = (0, 1, 2),
                 sam_pred_iou_thresh: float = 0.86, sam_stability_thresh: float = 0.92, sam_nms_iou: float = 0.7,
                 min_mask_area: int = 16, crop_padding: float = 0.1, context_scale: float = 2.0,
                 context_weight: float = 0.3, **cfg):
        super().__init__(**cfg)

        self.sam_model, self.sam_image_size = sam_model, int(sam_image_size)
        self.params = SamParams(points_per_side=int(sam_points_per_side), points_per_batch=int(sam_points_per_batch),
                                levels=tuple(int(v) for v in sam_levels), pred_iou_thresh=float(sam_pred_iou_thresh),
                                stability_thresh=float(sam_stability_thresh), nms_iou=float(sam_nms_iou),
                                min_area=int(min_mask_area))
        self.crop_padding, self.context_scale, self.context_weight = crop_padding, context_scale, context_weight
        self.cache_key = config_hash(self._identity(), sam_model, self.sam_image_size, self.params, crop_padding,
                                     context_scale, context_weight)
        self._sam = None

    def _models(self) -> list:
        return [self._bundle, self._sam]

    def load(self) -> None:
        _ = self.bundle, self.sam

    @property
    def sam(self):
        if self._sam is None:
            from scene_kd.teachers.sam import load_sam
            from scene_kd.teachers.weights import parse_explicit, resolve_weights, sam_spec

            mine = parse_explicit(self.weights, "sam")
            path = RANDOM if mine == RANDOM else str(resolve_weights(sam_spec(self.sam_model), mine, download=self.download))
            self._sam = self._track(load_sam(self.sam_model, path, device=self.device, image_size=self.sam_image_size,
                                             seed=self.seed))
        return self._sam

    def encode_views(self, renders: Sequence[Render]) -> list[ViewMasks]:
        return encode_by_image_size(renders, self._encode_group)

    def _encode_group(self, renders: list[Render]) -> list[ViewMasks]:
        """Views of one image size: SAM masks, then every mask's masked + context crop through CLIP together."""

        masks = sam_masks(self.sam, [r.rgb for r in renders], self.params)
        images = pixel_images(self.bundle, [r.rgb for r in renders])
        dev = images.device
        n_levels = masks[0][0].shape[0]
        id_images = torch.from_numpy(np.stack([ids for ids, _ in masks])).to(dev).reshape(-1, *images.shape[-2:])
        boxes, id_index, keep_id, counts = [], [], [], []
        for b, (ids, levels) in enumerate(masks):
            m = len(levels)
            counts.append(m)
            boxes.append(torch.cat([torch.full((m, 1), float(b), device=dev),
                                    mask_boxes(torch.from_numpy(ids).to(dev), m)], 1))
            id_index.append(b * n_levels + torch.from_numpy(levels).to(dev).long())
            keep_id.append(torch.arange(m, device=dev))
        boxes_t, id_index_t, keep_t = torch.cat(boxes), torch.cat(id_index), torch.cat(keep_id)
        x0, y0, x1, y1 = boxes_t[:, 1:].unbind(1)
        view_col = boxes_t[:, :1]
        masked = torch.cat([view_col, square_boxes(x0, y0, x1, y1, 1.0, self.crop_padding)], 1)
        context = torch.cat([view_col, square_boxes(x0, y0, x1, y1, self.context_scale, self.crop_padding)], 1)
        e_mask = embed_crops(self.bundle, images, masked, batch_size=self.crop_batch_size, id_images=id_images,
                             id_index=id_index_t, keep_id=keep_t)
        e_ctx = embed_crops(self.bundle, images, context, batch_size=self.crop_batch_size)
        emb = l2_normalise((1 - self.context_weight) * e_mask + self.context_weight * e_ctx).float().cpu()
        out, start = [], 0
        for (ids, levels), m in zip(masks, counts, strict=True):
            out.append(ViewMasks(mask_ids=ids, embeddings=emb[start : start + m].contiguous(), mask_level=levels))
            start += m
        return out
