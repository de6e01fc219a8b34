"""oracle-labels: masks from ground-truth labels, embeddings from the oracle text encoder, controlled noise.

Masks (level 0) are 8-connected regions of one (class, instance) in a render's ``labels``/``instances`` images;
with ``levels=2`` a coarse level 1 merges instances (regions of one class). A mask's embedding is its class's
text vector (:meth:`OracleTextEncoder.encode_class_names`, so every class is distinct). Noise, deterministic per
(seed, view content: labels, instances, ids, camera pose): ``label_flip`` gives round-to-expectation that fraction of each view's masks another class
(one present in the view, else any other class of the scene); ``embed_noise`` adds N(0, embed_noise^2 / D) per
component and re-normalises.

Realism (``oracle_realism="realistic"``, the default; ``"perfect"`` keeps every region at every size): the oracle
sees like SAM + CLIP on the render. A region gets no mask when it is under ``min_area_px`` pixels or thinner than
``min_side_px``, else with probability min(1, area / grid_px^2) (the expected number of SAM's automatic grid points
inside it); each kept mask's boundary bleeds into its neighbours or erodes by a seeded r in [-boundary_px,
boundary_px] pixels; and on top of ``label_flip`` a mask of area A is given another class with probability
small_confusion * clip(log(reliable / A) / log(reliable / min_area), 0, 1). Pixels of dropped or eroded masks belong
to no mask.

Blur (``sharp_px`` > 0): a teacher sees a blurred region as if the view had fewer pixels. Each mask's edge blur s
(Gaussian std-dev in pixels, measured from the view's RGB along the mask's boundary,
:mod:`scene_kd.teachers.edge_blur`) gives a resolution loss f = max(1, s / sharp_px); the rules above then use the
area A / f^2 and the side / f (the size at which a sharp view would show the same detail), and boundaries move by
up to f x boundary_px. Views whose edges cannot be measured count as sharp. So an under-trained splat's blurry
render, or a blurred photo, loses its small objects and its boundaries as it would for SAM + CLIP. Defaults and their
sources: :class:`scene_kd.teachers.config.OracleConfig`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import torch

from scene_kd.errors import SceneKDError
from scene_kd.render.types import Render
from scene_kd.runio import config_hash
from scene_kd.teachers.base import ViewMasks, l2_normalise
from scene_kd.teachers.edge_blur import region_blur
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


def _view_seed(seed: int, render: Render, salt: bytes = b"") -> np.random.Generator:
    h = hashlib.sha256(np.int64(seed).tobytes() + salt)
    for a in (render.labels, render.instances, render.ids, render.camera.world_to_cam):
        if a is not None:
            h.update(np.ascontiguousarray(a).tobytes())
    return np.random.default_rng(int.from_bytes(h.digest()[:8], "little"))


class OracleTeacher:
    name = "oracle-labels"

    def __init__(self, *, label_names: dict[int, str] | None = None, oracle_dim: int = 64, label_flip: float = 0.0,
                 embed_noise: float = 0.0, seed: int = 0, oracle_levels: int = 1,
                 oracle_realism: str = "realistic", oracle_min_area_px: int = 64, oracle_min_side_px: int = 4,
                 oracle_grid_px: int = 16, oracle_reliable_area_px: int = 1024, oracle_small_confusion: float = 0.5,
                 oracle_boundary_px: int = 2, oracle_sharp_px: float = 1.0):
        if not 0.0 <= label_flip <= 1.0:
            raise SceneKDError(f"label_flip must be in [0, 1], got {label_flip}")
        if not (embed_noise >= 0.0 and np.isfinite(embed_noise)):
            raise SceneKDError(f"embed_noise must be a finite number >= 0, got {embed_noise}")
        if oracle_levels not in (1, 2):
            raise SceneKDError(f"oracle_levels must be 1 or 2, got {oracle_levels}")
        if oracle_realism not in ("realistic", "perfect"):
            raise SceneKDError(f"oracle_realism must be 'realistic' or 'perfect', got {oracle_realism!r}")
        ints = {"oracle_min_area_px": oracle_min_area_px, "oracle_min_side_px": oracle_min_side_px,
                "oracle_grid_px": oracle_grid_px, "oracle_reliable_area_px": oracle_reliable_area_px,
                "oracle_boundary_px": oracle_boundary_px}
        for k, v in ints.items():
            if int(v) != v or v < (1 if k != "oracle_boundary_px" else 0):
                raise SceneKDError(f"{k} must be an integer >= {1 if k != 'oracle_boundary_px' else 0}, got {v}")
        if not 0.0 <= oracle_small_confusion <= 1.0:
            raise SceneKDError(f"oracle_small_confusion must be in [0, 1], got {oracle_small_confusion}")
        if not (np.isfinite(oracle_sharp_px) and oracle_sharp_px >= 0):
            raise SceneKDError(f"oracle_sharp_px must be a finite number >= 0 (0 = ignore blur), got {oracle_sharp_px}")
        self.realism = oracle_realism
        self.min_area, self.min_side, self.grid_px = int(oracle_min_area_px), int(oracle_min_side_px), int(oracle_grid_px)
        self.reliable_area, self.boundary = max(int(oracle_reliable_area_px), self.min_area), int(oracle_boundary_px)
        self.small_confusion = float(oracle_small_confusion)
        self.sharp_px = float(oracle_sharp_px)
        self.text_encoder = OracleTextEncoder(oracle_dim)
        self.text_encoder_id = self.text_encoder.id
        self.dim = self.text_encoder.dim
        self.label_names = {int(k): str(v) for k, v in (label_names or {}).items()}
        self.label_flip, self.embed_noise, self.seed, self.levels = float(label_flip), float(embed_noise), int(seed), int(oracle_levels)
        self.cache_key = config_hash(self.name, self.text_encoder_id, sorted(self.label_names.items()), self.label_flip,
                                     self.embed_noise, self.seed, self.levels,
                                     *(() if self.realism == "perfect" else (
                                         self.realism, self.min_area, self.min_side, self.grid_px, self.reliable_area,
                                         self.small_confusion, self.boundary,
                                         *(("edge-blur-v1", self.sharp_px) if self.sharp_px > 0 else ()))))
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
            out[i] = self._other_class(out[i], present, scene_classes, rng)
        return out

    @staticmethod
    def _other_class(c: int, present: np.ndarray, scene_classes: np.ndarray, rng: np.random.Generator) -> int:
        """A class other than ``c``: one present in the view, else any other class of the scene (else ``c``)."""
        others = present[present != c]
        if others.size == 0:
            others = scene_classes[scene_classes != c]
        return int(others[rng.integers(others.size)]) if others.size else int(c)

    def small_mask_confusion(self, area: np.ndarray) -> np.ndarray:
        """Extra wrong-class probability [M] of masks of ``area`` [M] pixels (0 at >= reliable area)."""
        area = np.maximum(np.asarray(area, np.float64), 1.0)
        if self.reliable_area <= self.min_area:
            return np.zeros_like(area)
        t = np.log(self.reliable_area / area) / np.log(self.reliable_area / self.min_area)
        return self.small_confusion * np.clip(t, 0.0, 1.0)

    def resolution_loss(self, rgb: np.ndarray | None, ids: np.ndarray, m: int) -> np.ndarray:
        """[M] f = max(1, edge blur / sharp_px) of each mask of ``ids`` [L, H, W] (-1 none) in ``rgb`` [H, W, 3]
        (module docstring); all 1 when blur is ignored (sharp_px 0), there is no RGB or nothing to measure."""

        f = np.ones(m)
        if self.sharp_px <= 0 or rgb is None or m == 0:
            return f
        for lv in range(ids.shape[0]):
            on = np.unique(ids[lv][ids[lv] >= 0])
            blur, _ = region_blur(rgb, ids[lv], m)
            f[on] = np.where(np.isfinite(blur[on]), np.maximum(1.0, blur[on] / self.sharp_px), 1.0)
        return f

    def realistic_masks(self, ids: np.ndarray, cls: np.ndarray, levels: np.ndarray, rng: np.random.Generator,
                        rgb: np.ndarray | None = None, blur_rng: np.random.Generator | None = None
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Drop masks a real teacher would not produce and jitter the boundaries of the rest (module docstring).

        ids [L, H, W] int32 (-1 none), cls [M], levels [M], rgb [H, W, 3] the view the teacher sees (None: no
        blur rule) -> (ids', cls' [K], levels' [K], effective area [K] pixels before the boundary jitter, i.e.
        area / f^2), masks renumbered 0..K-1 in their original order. ``blur_rng`` draws the wider boundary
        moves of blurred masks (so views measured sharp draw exactly what they drew without the blur rule)."""
        from scipy.ndimage import binary_dilation, binary_erosion, find_objects

        m = cls.size
        if m == 0:
            return ids, cls, levels, np.zeros(0)
        area = np.zeros(m, np.int64)
        side = np.zeros(m, np.int64)
        boxes: list[tuple[slice, slice] | None] = [None] * m
        for lv in range(ids.shape[0]):
            lab = ids[lv]
            area += np.bincount(lab[lab >= 0], minlength=m)[:m]
            for k, sl in enumerate(find_objects(lab + 1)):  # find_objects: label k + 1 -> mask k
                if sl is not None:
                    boxes[k] = sl
                    side[k] = min(sl[0].stop - sl[0].start, sl[1].stop - sl[1].start)
        loss = self.resolution_loss(rgb, ids, m)
        seen_area = area / loss ** 2
        p_hit = np.minimum(1.0, area / float(self.grid_px ** 2))
        keep = (seen_area >= self.min_area) & (side / loss >= self.min_side) & (rng.random(m) < p_hit)
        radius = rng.integers(-self.boundary, self.boundary + 1, size=m)
        blurred = np.flatnonzero(loss > 1.0)
        if blurred.size and self.boundary > 0:
            reach = np.round(self.boundary * loss[blurred]).astype(np.int64)
            draw = (blur_rng or rng).random(blurred.size)
            radius[blurred] = np.floor(draw * (2 * reach + 1)).astype(np.int64) - reach
        out = np.where(keep[np.maximum(ids, 0)] & (ids >= 0), ids, -1).astype(np.int32)
        square = np.ones((3, 3), bool)
        for k in rng.permutation(np.flatnonzero(keep & (radius != 0))):
            lv, r, (sy, sx) = int(levels[k]), int(radius[k]), boxes[k]
            h, w = ids.shape[1:]
            win = (slice(max(sy.start - abs(r), 0), min(sy.stop + abs(r), h)),
                   slice(max(sx.start - abs(r), 0), min(sx.stop + abs(r), w)))
            mask = ids[lv][win] == k
            dst = out[lv][win]
            if r > 0:  # bleed into the neighbours (pixels without points carry no point: harmless)
                dst[binary_dilation(mask, square, iterations=r) & ~mask] = k
            else:
                rim = mask & ~binary_erosion(mask, square, iterations=-r, border_value=1)
                dst[rim & (dst == k)] = -1
        alive = keep & (np.bincount(out[out >= 0], minlength=m)[:m] > 0)
        new_id = np.full(m + 1, -1, np.int32)
        new_id[np.flatnonzero(alive)] = np.arange(int(alive.sum()), dtype=np.int32)
        out = new_id[out]  # -1 maps through new_id[-1] = -1
        return out, cls[alive], levels[alive], seen_area[alive].astype(np.float64)

    def encode_views(self, renders: Sequence[Render]) -> list[ViewMasks]:
        out = []
        for r in renders:
            ids, true_cls, levels = self.view_masks(r)
            rng = _view_seed(self.seed, r)
            area = None
            if self.realism == "realistic":
                real_rng = np.random.default_rng(rng.integers(2 ** 63))
                ids, true_cls, levels, area = self.realistic_masks(
                    ids, true_cls, levels, real_rng, rgb=r.rgb, blur_rng=_view_seed(self.seed, r, b"edge-blur"))
            present = np.unique(true_cls)
            cls = self.corrupt_classes(true_cls, present, rng)
            if area is not None and cls.size:
                scene_classes = np.array(sorted(set(self.label_names) | set(present.tolist())), np.int64)
                confused = (real_rng.random(cls.size) < self.small_mask_confusion(area)) & (cls == true_cls)
                for i in np.flatnonzero(confused):
                    cls[i] = self._other_class(cls[i], present, scene_classes, real_rng)
            table = self.class_vectors(np.unique(np.concatenate([cls, present])))
            emb = torch.stack([table[int(c)] for c in cls]) if cls.size else torch.zeros(0, self.dim)
            if self.embed_noise > 0 and cls.size:
                noise = rng.standard_normal(emb.shape) * (self.embed_noise / np.sqrt(self.dim))
                emb = l2_normalise(emb + torch.from_numpy(noise.astype(np.float32)))
            out.append(ViewMasks(mask_ids=ids, embeddings=emb.float().contiguous(), mask_level=levels))
        return out
