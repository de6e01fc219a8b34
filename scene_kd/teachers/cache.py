"""On-disk feature cache: one file per (teacher cache key, render content hash) under ``$SCENE_KD_CACHE/features``.

A teacher's cache key covers its id, text encoder, weights choice and every config value that changes its output
(see each teacher's ``cache_key``); the render hash covers the decoded arrays of one view, so re-rendering the
same content hits the cache.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from scene_kd.render.types import Render
from scene_kd.runio import atomic_path, cache_dir
from scene_kd.teachers.base import ViewMasks

_HASHED = ("rgb", "depth", "ids", "labels", "instances", "alpha")


def render_content_hash(render: Render) -> str:
    """sha256 (16 hex) of a render's image arrays (shape, dtype and bytes)."""
    h = hashlib.sha256()
    for name in _HASHED:
        a = getattr(render, name)
        if a is None:
            continue
        a = np.ascontiguousarray(a)
        h.update(f"{name}:{a.dtype.str}:{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


class FeatureCache:
    def __init__(self, teacher_key: str, root: Path | None = None):
        self.folder = (root or cache_dir()) / "features" / teacher_key

    def path(self, render_hash: str) -> Path:
        return self.folder / f"{render_hash}.npz"

    def get(self, render_hash: str) -> ViewMasks | None:
        p = self.path(render_hash)
        if not p.exists():
            return None
        try:
            with np.load(p) as z:
                return ViewMasks(mask_ids=z["mask_ids"], embeddings=torch.from_numpy(z["embeddings"]),
                                 mask_level=z["mask_level"])
        except Exception:  # a corrupt cache entry is recomputed
            return None

    def put(self, render_hash: str, vm: ViewMasks) -> None:
        with atomic_path(self.path(render_hash)) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, mask_ids=np.asarray(vm.mask_ids, np.int32),
                         embeddings=vm.embeddings.detach().cpu().float().numpy(),
                         mask_level=np.asarray(vm.mask_level, np.int32))
