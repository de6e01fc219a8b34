"""Training-free lifting of mask embeddings onto Gaussians (Occam's LGS style).

Each Gaussian's feature is the blend-weight-weighted average of the embeddings of the masks it contributes to,
read from the rasterizer's per-pixel top-K (Gaussian id, blend weight) pairs::

    f_j = normalise( sum_g (1/G) * normalise( sum_{v in g} sum_{pixels p} sum_{k: id_pk = j} w_pk e_{mask(p)} ) )

with the same granularity balancing as point fusion (:mod:`scene_kd.lift.fuse`). Per view, the (Gaussian,
mask) pairs are reduced to unique keys first (a Gaussian covers many pixels of few masks), then added as one
CSR block; no Python loop touches pixels or Gaussians.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from scene_kd.errors import SceneKDError
from scene_kd.lift.config import FuseConfig
from scene_kd.lift.fuse import (
    GRANULARITY_MODES,
    GranularitySums,
    _check_embeddings,
    _check_mask_ids,
    granularity_key,
    views_per_level,
)
from scene_kd.scene.types import Camera


def _pairs_of_view(
    gids: Tensor, weights: Tensor, mask_flat: Tensor, n_masks: int, min_weight: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Unique (gaussian, mask) pairs of one view with summed blend weights, sorted by gaussian then mask.

    gids / weights: [P, K] per pixel top-K.   mask_flat: [P] or [P, L'] mask rows per pixel (-1 none).
    """
    if mask_flat.ndim == 1:
        mask_flat = mask_flat[:, None]
    K, L = gids.shape[1], mask_flat.shape[1]
    g = gids[:, None, :].expand(-1, L, K)
    m = mask_flat[:, :, None].expand(-1, L, K)
    w = weights[:, None, :].expand(-1, L, K)
    ok = (g >= 0) & (m >= 0) & (w > min_weight)
    g, m, w = g[ok], m[ok], w[ok]
    if g.numel() == 0:
        empty = torch.zeros(0, dtype=torch.int64)
        return empty, empty, torch.zeros(0)
    key = g * n_masks + m
    ukey, inverse = torch.unique(key, return_inverse=True)
    vals = torch.zeros(len(ukey), dtype=torch.float32).index_add_(0, inverse, w.to(torch.float32))
    return ukey // n_masks, ukey % n_masks, vals


def lift_gaussians(
    num_gaussians: int,
    cameras: Sequence[Camera],
    topk_ids: Iterable[Tensor | np.ndarray],
    topk_weights: Iterable[Tensor | np.ndarray],
    mask_ids: Iterable[Tensor | np.ndarray],
    embeddings: Tensor | np.ndarray,
    cfg: FuseConfig | None = None,
    *,
    progress: Any = None,
) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """Lift mask embeddings onto ``num_gaussians`` Gaussians through per-pixel blend weights.

    topk_ids / topk_weights: V arrays [H, W, K] (int, -1 padding / float blend weights, 0 padding) in camera order.
    mask_ids: V arrays [L, H, W] (or [H, W]) of global rows into ``embeddings`` [M, D] (-1 none).
    Returns (features [N, D] float32 unit rows, zero where no view saw the Gaussian on a mask; coverage [N]
    int32 = views in which it contributed to a masked pixel; {granularity: [N] int32 views}).
    """
    cfg = cfg or FuseConfig()
    if cfg.granularity not in GRANULARITY_MODES:
        raise SceneKDError(f"unknown granularity mode {cfg.granularity!r}; choose one of {', '.join(GRANULARITY_MODES)}")
    n = int(num_gaussians)
    emb = _check_embeddings(embeddings)
    M = emb.shape[0]
    sums = GranularitySums(n, emb, balance=cfg.balance_granularities, views_per_level=views_per_level(cameras))
    coverage = torch.zeros(n, dtype=torch.int32)
    its = iter(topk_ids), iter(topk_weights), iter(mask_ids)
    for v, camera in enumerate(cameras):
        try:
            ids, weights, masks = next(its[0]), next(its[1]), next(its[2])
        except StopIteration:
            raise SceneKDError(f"{len(cameras)} cameras but only {v} views of top-k ids/weights/masks") from None
        ids = torch.as_tensor(np.asarray(ids) if not isinstance(ids, Tensor) else ids).to(torch.int64)
        weights = torch.as_tensor(np.asarray(weights) if not isinstance(weights, Tensor) else weights).to(torch.float32)
        H, W = camera.height, camera.width
        if ids.ndim != 3 or tuple(ids.shape[:2]) != (H, W) or ids.shape != weights.shape:
            raise SceneKDError(f"view {v}: top-k ids {tuple(ids.shape)} / weights {tuple(weights.shape)} do not "
                               f"match the camera's {H}x{W}")
        if ids.numel() and int(ids.max()) >= n:
            raise SceneKDError(f"view {v}: top-k ids refer to Gaussian {int(ids.max())}, but there are {n}")
        masks = _check_mask_ids(masks, (H, W), M, v)
        L = masks.shape[0]
        gids, wts = ids.reshape(H * W, -1), torch.nan_to_num(weights.reshape(H * W, -1))
        mflat = masks.reshape(L, -1).T  # [P, L]
        level = int(camera.level)
        seen: list[Tensor] = []
        if cfg.granularity == "camera":
            rows, cols, vals = _pairs_of_view(gids, wts, mflat, M, cfg.min_blend_weight)
            sums.add(granularity_key(level), rows, cols, vals, level=level)
            seen.append(rows)
        else:
            for lvl in range(L):
                rows, cols, vals = _pairs_of_view(gids, wts, mflat[:, lvl], M, cfg.min_blend_weight)
                if rows.numel():
                    sums.add(granularity_key(level, lvl), rows, cols, vals, level=level)
                    seen.append(rows)
        if seen:
            coverage[torch.unique(torch.cat(seen))] += 1
        sums.end_view(level)
        if progress is not None:
            progress(v)
    counts = dict(sums.counts)
    return sums.result(), coverage, counts
