"""oracle-labels: masks from ground-truth labels, embeddings from the oracle text encoder, controlled noise.

Masks (level 0) are 8-connected regions of one (class, instance) in a render's ``labels``/``instances`` images;
with ``levels=2`` a coarse level 1 merges instances (regions of one class). A mask's embedding is its class's
text vector (:meth:`OracleTextEncoder.encode_class_names`, so every class is distinct). Noise, deterministic per
(seed, view content: labels, instances, ids, camera pose): ``label_flip`` gives round-to-expectation that fraction of each view's masks another class
(one present in the view, else any other class of the scene); ``embed_noise`` adds N(0, embed_noise^2 / D) per
component and re-normalises.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import torch

from scene_kd.errors import SceneKDError
from scene_kd.render.types import Render
from scene_kd.runio import config_hash
from scene_kd.teachers.base import ViewMasks, l2_normalise, register_teacher
from scene_kd.teachers.text import OracleTextEncoder


def connected_regions(keys: np.ndarray) -> np.ndarray:
    """[H, W] int64 region index (0..R-1, ordered by first pixel in raster order) of 8-connected pixels with equal
    ``keys`` [H, W]; pixels with key < 0 get -1."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    h, w = keys.shape
    valid = keys >= 0
    idx = np.arange(h * w).reshape(h, w)
    src, dst = [], []
    for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
        a = (slice(0, h - dy), slice(max(0, -dx), w - max(0, dx)))
        b = (slice(dy, h), slice(max(0, -dx) + dx, w - max(0, dx) + dx))
        same = valid[a] & valid[b] & (keys[a] == keys[b])
        src.append(idx[a][same])
        dst.append(idx[b][same])
    src, dst = np.concatenate(src), np.concatenate(dst)
    graph = coo_matrix((np.ones(src.size, np.int8), (src, dst)), shape=(h * w, h * w))
    _, comp = connected_components(graph, directed=False)
    comp = comp.reshape(h, w)
    out = np.full((h, w), -1, np.int64)
    if valid.any():
        # renumber components in order of their first valid pixel
        _, first, inverse = np.unique(comp[valid], return_index=True, return_inverse=True)
        rank = np.empty_like(first)
        rank[np.argsort(first)] = np.arange(first.size)
        out[valid] = rank[inverse]
    return out


def _view_seed(seed: int, render: Render) -> np.random.Generator:
    h = hashlib.sha256(np.int64(seed).tobytes())
    for a in (render.labels, render.instances, render.ids, render.camera.world_to_cam):
        if a is not None:
            h.update(np.ascontiguousarray(a).tobytes())
    return np.random.default_rng(int.from_bytes(h.digest()[:8], "little"))


class OracleTeacher:
    name = "oracle-labels"

    def __init__(self, *, label_names: dict[int, str] | None = None, oracle_dim: int = 64, label_flip: float = 0.0,
                 embed_noise: float = 0.0, seed: int = 0, oracle_levels: int = 1):
        if not 0.0 <= label_flip <= 1.0:
            raise SceneKDError(f"label_flip must be in [0, 1], got {label_flip}")
        if not (embed_noise >= 0.0 and np.isfinite(embed_noise)):
            raise SceneKDError(f"embed_noise must be a finite number >= 0, got {embed_noise}")
        if oracle_levels not in (1, 2):
            raise SceneKDError(f"oracle_levels must be 1 or 2, got {oracle_levels}")
        self.text_encoder = OracleTextEncoder(oracle_dim)
        self.text_encoder_id = self.text_encoder.id
        self.dim = self.text_encoder.dim
        self.label_names = {int(k): str(v) for k, v in (label_names or {}).items()}
        self.label_flip, self.embed_noise, self.seed, self.levels = float(label_flip), float(embed_noise), int(seed), int(oracle_levels)
        self.cache_key = config_hash(self.name, self.text_encoder_id, sorted(self.label_names.items()), self.label_flip,
                                     self.embed_noise, self.seed, self.levels)
        self.model_calls = 0
        self._class_vectors: dict[int, torch.Tensor] = {}

    def encode_text(self, prompts: Sequence[str]) -> torch.Tensor:
        return self.text_encoder.encode_text(prompts)

    def class_vectors(self, classes: Sequence[int]) -> dict[int, torch.Tensor]:
        """Unit vector per class id; all known class names are embedded together so they stay distinct."""
        names = dict(self.label_names)
        for c in classes:
            names.setdefault(int(c), f"class {int(c)}")
        if set(names) - set(self._class_vectors):
            ids = sorted(names)
            vecs = self.text_encoder.encode_class_names([names[i] for i in ids])
            self._class_vectors = {i: vecs[k] for k, i in enumerate(ids)}
        return self._class_vectors

    def view_masks(self, render: Render) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(mask_ids [L, H, W] int32, mask_class [M] int64 true class, mask_level [M] int32) of one render."""
        if render.labels is None:
            raise SceneKDError("oracle-labels needs renders with ground-truth labels (a labelled scene)")
        labels = np.asarray(render.labels).astype(np.int64)
        valid = labels >= 0
        if render.ids is not None:
            valid &= np.asarray(render.ids) >= 0
        span = int(labels.max()) + 2 if labels.size else 1
        keys = [np.where(valid, labels, -1)]
        if render.instances is not None:
            inst = np.asarray(render.instances).astype(np.int64)
            keys[0] = np.where(valid, (inst + 1) * span + labels, -1)  # instance -1 ("none") is its own group
            if self.levels == 2:
                keys.append(np.where(valid, labels, -1))
        elif self.levels == 2:
            keys.append(keys[0])
        ids = np.full((len(keys), *labels.shape), -1, np.int32)
        classes, levels = [], []
        for lv, key in enumerate(keys):
            reg = connected_regions(key)
            n = int(reg.max()) + 1
            if n == 0:
                continue
            flat = reg.ravel()
            order = np.nonzero(flat >= 0)[0]
            _, first_at = np.unique(flat[order], return_index=True)
            first = order[first_at]  # first pixel of each region
            classes.append(labels.ravel()[first])
            ids[lv] = np.where(reg >= 0, reg + len(levels), -1)
            levels += [lv] * n
        cls = np.concatenate(classes) if classes else np.zeros(0, np.int64)
        return ids, cls, np.asarray(levels, np.int32)

    def corrupt_classes(self, true_class: np.ndarray, present: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Give round-to-expectation ``label_flip`` of the masks another class."""
        out = true_class.copy()
        m = out.size
        if self.label_flip <= 0 or m == 0:
            return out
        k = int(np.floor(self.label_flip * m + rng.random()))
        scene_classes = np.array(sorted(set(self.label_names) | set(present.tolist())), np.int64)
        for i in rng.permutation(m)[: min(k, m)]:
            others = present[present != out[i]]
            if others.size == 0:
                others = scene_classes[scene_classes != out[i]]
            if others.size:
                out[i] = others[rng.integers(others.size)]
        return out

    def encode_views(self, renders: Sequence[Render]) -> list[ViewMasks]:
        out = []
        for r in renders:
            ids, true_cls, levels = self.view_masks(r)
            rng = _view_seed(self.seed, r)
            present = np.unique(true_cls)
            cls = self.corrupt_classes(true_cls, present, rng)
            table = self.class_vectors(np.unique(np.concatenate([cls, present])))
            emb = torch.stack([table[int(c)] for c in cls]) if cls.size else torch.zeros(0, self.dim)
            if self.embed_noise > 0 and cls.size:
                noise = rng.standard_normal(emb.shape) * (self.embed_noise / np.sqrt(self.dim))
                emb = l2_normalise(emb + torch.from_numpy(noise.astype(np.float32)))
            out.append(ViewMasks(mask_ids=ids, embeddings=emb.float().contiguous(), mask_level=levels))
        return out


@register_teacher("oracle-labels")
def make_oracle(**cfg) -> OracleTeacher:
    return OracleTeacher(**cfg)
