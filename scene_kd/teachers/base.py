"""The teacher protocol and helpers. Teachers are registered by name with their config in
scene_kd/teachers/config.py (``TEACHERS``) and built by scene_kd/teachers/factory.py (open_clip-style: one
factory, models registered by name).

A teacher turns renders into masks with one L2-normalised embedding per mask, and text prompts into
the same embedding space.

On disk (written by the ``features`` stage, scene_kd/teachers/stage.py):
- ``RUN/masks/NNNN.npz``: ``mask_ids`` int32 [L, H, W], the *global* row in ``embeddings`` of the mask
  covering each pixel at each mask level, -1 where none.
- ``RUN/features.safetensors``: ``embeddings`` float32 [M, D] (unit rows), ``mask_view`` int32 [M],
  ``mask_level`` int32 [M] (mask level within the teacher), ``mask_area`` int32 [M] (pixels);
  metadata: teacher, text_encoder, dim, config_hash.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from scene_kd.render.types import Render


@dataclass
class ViewMasks:
    """A teacher's output for one view.

    mask_ids: [L, H, W] int32, index into ``embeddings`` of the mask covering each pixel per level, -1 none.
    embeddings: [M, D] float32, L2-normalised rows.   mask_level: [M] int32 level of each mask.
    """

    mask_ids: np.ndarray
    embeddings: torch.Tensor
    mask_level: np.ndarray

    @property
    def num_masks(self) -> int:
        return int(self.embeddings.shape[0])


@runtime_checkable
class TextEncoder(Protocol):
    id: str  # e.g. "open_clip:ViT-B-16/laion2b_s34b_b88k" or "oracle:v2:d64"
    dim: int

    def encode_text(self, prompts: Sequence[str]) -> torch.Tensor:
        """[P, D] float32 unit rows."""
        ...


@runtime_checkable
class Teacher(Protocol):
    name: str  # registry name
    dim: int
    text_encoder: TextEncoder

    def encode_views(self, renders: Sequence[Render]) -> list[ViewMasks]:
        """One ViewMasks per render, same order; deterministic for a fixed seed."""
        ...

    def encode_text(self, prompts: Sequence[str]) -> torch.Tensor:
        ...


def encode_by_image_size(
    renders: Sequence[Render], encode_group: Callable[[list[Render]], list[ViewMasks]]
) -> list[ViewMasks]:
    """Run ``encode_group`` once per batch of same-sized renders (models batch only equal sizes); keep the order."""
    renders = list(renders)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, r in enumerate(renders):
        groups.setdefault(r.rgb.shape[:2], []).append(i)
    results: dict[int, ViewMasks] = {}
    for idx in groups.values():
        for i, vm in zip(idx, encode_group([renders[i] for i in idx]), strict=True):
            results[i] = vm
    return [results[i] for i in range(len(renders))]


def l2_normalise(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(eps)
