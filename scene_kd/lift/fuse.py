"""Sample-balanced fusion of per-view mask embeddings onto points (DESIGN.md §4 "Fusion").

For point i::

    f_i = normalise( sum_g (1/G) * normalise( sum_{v in g} sum_{m contains i} w_{i,v} e_m ) )

where g runs over granularities (by default the view's ``camera.level``: altitude / orbit radius; the teacher's
mask levels are extra samples within it; ``FuseConfig.granularity = "camera+mask"`` makes every
(view level, mask level) pair its own granularity), and ``w_{i,v}`` is the visibility weight of point i in
view v: depth agreement x view angle x footprint (see :func:`sample_weights`).

Each granularity's inner sum is a sparse (point x mask) weight matrix times the embeddings. It is streamed:
every view adds one CSR block ``W_v`` [N, M] (rows = the points it sees, already sorted) into the
granularity's dense accumulator with ``addmm`` (``A_g += W_v @ E``; the product is linear, so this is exactly
``(sum_v W_v) @ E``), and a granularity's accumulator is normalised into the result and freed as soon as its
last view has streamed past. Memory is O(N * D * live granularities + one view), independent of the number
of views; pass views grouped by level (the fuse stage does) to keep one accumulator live. No Python loop
touches points or pixels.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from scene_kd.errors import SceneKDError
from scene_kd.lift.config import FuseConfig
from scene_kd.lift.levels import LevelStreams
from scene_kd.lift.mixture import MixtureSums
from scene_kd.render.cull import build_point_grid, visible_points_culled
from scene_kd.render.points import visible_in_view
from scene_kd.scene.types import Camera

GRANULARITY_MODES = ("camera", "camera+mask")
CULL_MIN_POINTS = 200_000
"""fuse_points culls each view's points through an xy grid from this many points up."""


def granularity_key(camera_level: int, mask_level: int | None = None) -> str:
    """The name of a granularity: ``level{c}`` or ``level{c}/mask{l}``."""
    return f"level{camera_level}" if mask_level is None else f"level{camera_level}/mask{mask_level}"


def normalise_rows(x: Tensor, eps: float = 1e-12) -> Tensor:
    """Rows scaled to unit L2 norm; all-zero rows stay zero (in place when ``x`` is float32)."""
    norm = x.norm(dim=1, keepdim=True)
    return x.div_(torch.where(norm > eps, norm, torch.ones_like(norm)))


def view_angle_cosine(depth: Tensor, K: np.ndarray, *, stencil_px: int = 2) -> Tensor:
    """|cos| between the surface normal and the viewing ray per pixel [H, W], estimated from a depth image.

    Back-projects the pixels (centres at +0.5) to camera space, takes central differences ``stencil_px`` pixels
    apart along rows and columns, and crosses them. Pixels whose neighbourhood leaves the image or hits empty
    pixels get 1 (no evidence of a grazing view).
    """
    depth = torch.as_tensor(depth, dtype=torch.float32)
    H, W = depth.shape
    fx, fy, cx, cy = float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2])
    cols = (torch.arange(W, dtype=torch.float32) + 0.5 - cx) / fx
    rows = (torch.arange(H, dtype=torch.float32) + 0.5 - cy) / fy
    rays = torch.stack(torch.broadcast_tensors(cols[None, :], rows[:, None], torch.ones(H, W)), dim=-1)  # [H, W, 3]
    finite = torch.isfinite(depth)
    pts = rays * torch.where(finite, depth, torch.zeros_like(depth))[..., None]
    s = int(stencil_px)
    out = torch.ones(H, W)
    if H <= 2 * s or W <= 2 * s:
        return out
    du = pts[s:-s, 2 * s :] - pts[s:-s, : -2 * s]  # [H-2s, W-2s, 3]
    dv = pts[2 * s :, s:-s] - pts[: -2 * s, s:-s]
    n = torch.linalg.cross(du, dv, dim=-1)
    ray = rays[s:-s, s:-s]
    cos = (n * ray).sum(-1).abs() / (n.norm(dim=-1) * ray.norm(dim=-1)).clamp_min(1e-12)
    ok = (finite[s:-s, 2 * s :] & finite[s:-s, : -2 * s] & finite[2 * s :, s:-s] & finite[: -2 * s, s:-s]
          & finite[s:-s, s:-s] & (n.norm(dim=-1) > 0))
    out[s:-s, s:-s] = torch.where(ok, cos, torch.ones_like(cos))
    return out


def sample_weights(
    point_depth: Tensor,
    zbuffer_depth: Tensor,
    camera: Camera,
    cfg: FuseConfig,
    *,
    angle_cosine: Tensor | None = None,
) -> Tensor:
    """Visibility weight w_{i,v} [n] float32 of n visible points in one view.

    - depth agreement: ``1 - 0.5 * |z - zbuf| / (tau * z)`` (1 on the visible surface, 0.5 at the tolerance),
    - view angle: ``max(|cos(normal, ray)|, cfg.min_angle_weight)`` when ``cfg.view_angle_weight`` and a cosine is
      given (else 1),
    - footprint: ``fx / z`` (pixels per scene unit at the point; nearer / narrower views see it in more detail)
      when ``cfg.footprint_weight``; only its ratios between views matter (each granularity is normalised).
    """
    z = point_depth.to(torch.float32)
    tau = max(float(cfg.depth_tolerance), 1e-12)
    rel = ((z - zbuffer_depth.to(torch.float32)).abs() / (tau * z)).clamp(0.0, 1.0)
    w = 1.0 - 0.5 * rel
    if cfg.view_angle_weight and angle_cosine is not None:
        w = w * angle_cosine.to(torch.float32).clamp(min=float(cfg.min_angle_weight), max=1.0)
    if cfg.footprint_weight:
        w = w * (float(camera.K[0, 0]) / z)
    return w


class GranularitySums(LevelStreams):
    """Streamed, per-granularity sparse (row x mask) @ embeddings accumulation with sample balancing.

    ``add(key, rows, cols, vals, level=...)`` adds one view's CSR block (``rows`` ascending) to granularity
    ``key`` of camera level ``level``; ``end_view(level)`` says a view of that level has streamed past, and
    when the last one (of ``views_per_level``) has, folds the level's granularities into the result
    (normalised when ``balance``) and frees them; ``result()`` gives the final L2-normalised features (zero
    rows where nothing was added).
    """

    def __init__(self, n_rows: int, embeddings: Tensor, *, balance: bool = True,
                 views_per_level: dict[int, int] | None = None):
        super().__init__(views_per_level)
        self.n_rows = int(n_rows)
        self.embeddings = embeddings
        self.balance = balance
        self.live: dict[str, Tensor] = {}
        self.counts: dict[str, Tensor] = {}
        self.total: Tensor | None = None
        self._per_row: Tensor | None = None
        self._crow: Tensor | None = None

    def _acc(self, key: str, level: int | None) -> Tensor:
        self.open_key(key, level)
        acc = self.live.get(key)
        if acc is None:
            acc = self.live[key] = torch.zeros(self.n_rows, self.embeddings.shape[1], dtype=torch.float32)
            self.counts[key] = torch.zeros(self.n_rows, dtype=torch.int32)
        return acc

    def _addmm(self, acc: Tensor, crow: Tensor, cols: Tensor, vals: Tensor) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
            W = torch.sparse_csr_tensor(crow, cols.to(torch.int64), vals.to(torch.float32),
                                        (self.n_rows, self.embeddings.shape[0]))
        torch.addmm(acc, W, self.embeddings, out=acc)

    def add(self, key: str, rows: Tensor, cols: Tensor, vals: Tensor, *, level: int | None = None) -> None:
        """``A_key += W @ E`` for W [n_rows, M] with entries (rows[k], cols[k]) += vals[k]; ``rows`` ascending.
        Every distinct row counts one more view for ``key``."""
        acc = self._acc(key, level)
        if rows.numel() == 0:
            return
        crow = torch.zeros(self.n_rows + 1, dtype=torch.int64)
        torch.cumsum(torch.bincount(rows, minlength=self.n_rows), 0, out=crow[1:])
        self._addmm(acc, crow, cols, vals)
        self.counts[key][torch.unique_consecutive(rows)] += 1

    def add_rows(self, key: str, rows: Tensor, cols: Tensor, vals: Tensor, seen: Tensor, *,
                 level: int | None = None) -> None:
        """``A_key += W @ E`` where row ``rows[r]`` (unique, ascending) holds the L entries (cols[r, l], vals[r, l])
        (zero values allowed: no boolean compaction needed); ``seen`` [n] marks the rows this view counts for."""
        acc = self._acc(key, level)
        if rows.numel() == 0:
            return
        if self._per_row is None:  # reused across views: no N-sized allocation per view
            self._per_row = torch.zeros(self.n_rows, dtype=torch.int64)
            self._crow = torch.zeros(self.n_rows + 1, dtype=torch.int64)
        self._per_row[rows] = cols.shape[1]
        torch.cumsum(self._per_row, 0, out=self._crow[1:])
        self._per_row[rows] = 0
        self._addmm(acc, self._crow, cols.reshape(-1), vals.reshape(-1))
        self.counts[key][rows] += seen.to(torch.int32)

    def finish(self, key: str) -> None:
        acc = self.live.pop(key, None)
        if acc is None:
            return
        if self.balance:
            normalise_rows(acc)
        if self.total is None:
            self.total = acc
        else:
            self.total += acc
        self.done.append(key)

    def result(self) -> Tensor:
        for key in list(self.live):
            self.finish(key)
        if self.total is None:
            return torch.zeros(self.n_rows, self.embeddings.shape[1], dtype=torch.float32)
        if self.balance:
            self.total /= len(self.done)  # the 1/G of the definition (the final normalisation cancels it)
        return normalise_rows(self.total)


def views_per_level(cameras: Sequence[Camera]) -> dict[int, int]:
    return dict(Counter(int(c.level) for c in cameras))


def _check_embeddings(embeddings: Tensor | np.ndarray) -> Tensor:
    emb = torch.as_tensor(embeddings).to(torch.float32).contiguous()
    if emb.ndim != 2 or emb.shape[0] == 0 or emb.shape[1] == 0:
        raise SceneKDError(f"embeddings must be a non-empty [M, D] matrix, got {tuple(emb.shape)}")
    if not torch.isfinite(emb).all():
        raise SceneKDError("embeddings contain NaN or inf")
    return emb


def _check_mask_ids(mask_ids: Any, shape: tuple[int, int], n_masks: int, view: int) -> Tensor:
    m = torch.as_tensor(np.asarray(mask_ids) if not isinstance(mask_ids, Tensor) else mask_ids)
    if m.ndim == 2:
        m = m[None]
    if m.ndim != 3 or tuple(m.shape[1:]) != shape:
        raise SceneKDError(f"view {view}: mask_ids are {tuple(m.shape)}, expected [L, {shape[0]}, {shape[1]}]")
    if m.is_floating_point():
        raise SceneKDError(f"view {view}: mask_ids must be integers, got {m.dtype}")
    m = m.to(torch.int64)
    if m.numel() and int(m.max()) >= n_masks:
        raise SceneKDError(f"view {view}: mask_ids refer to embedding row {int(m.max())}, but there are {n_masks}")
    return m


def fuse_points(
    xyz: Tensor | np.ndarray,
    cameras: Sequence[Camera],
    depth_images: Iterable[Tensor | np.ndarray],
    mask_ids: Iterable[Tensor | np.ndarray],
    embeddings: Tensor | np.ndarray,
    cfg: FuseConfig | None = None,
    *,
    normals: Tensor | np.ndarray | None = None,
    progress: Any = None,
    output: str = "dense",
    cull: bool | None = None,
) -> tuple[Any, Tensor, dict[str, Tensor]]:
    """Fuse mask embeddings onto points, balanced across granularities.

    xyz: [N, 3] float32 local points.   cameras: V cameras (``level`` = granularity).
    depth_images: V z-buffers [H, W] (camera z, +inf empty), in camera order, consumed one at a time.
    mask_ids: V arrays [L, H, W] (or [H, W]) of global rows into ``embeddings`` (-1 none), same order.
    embeddings: [M, D] unit rows.   normals: optional [N, 3] point normals for the view-angle weight (else
    estimated from each depth image).   progress: optional callable ``progress(view_index)`` per view.
    output: "dense" (the reference: [N, D] float32 accumulators) or "mixture" (the same features held as
    sparse per-point weights over the mask embeddings, :class:`scene_kd.lift.mixture.MixtureSums`; what the
    fuse stage uses, so tile-scale 512-d fusion fits in memory).
    cull: test only the points in the view frustum's cells of an xy grid (scene_kd/render/cull.py; same points
    and pixels as testing all); None: when N >= ``CULL_MIN_POINTS``, so a tile's cost per view follows what it sees.
    Returns (features: [N, D] float32 for "dense", a :class:`scene_kd.feature_store.MaskMixture` for
    "mixture"; unit rows where covered, zero rows elsewhere; coverage [N] int32 = number of views that gave the
    point at least one mask; {granularity: [N] int32 views per point}).
    """

    cfg = cfg or FuseConfig()
    if cfg.granularity not in GRANULARITY_MODES:
        raise SceneKDError(f"unknown granularity mode {cfg.granularity!r}; choose one of {', '.join(GRANULARITY_MODES)}")
    xyz = torch.as_tensor(xyz).to(torch.float32).contiguous()
    if xyz.ndim != 2 or xyz.shape[1] != 3:
        raise SceneKDError(f"points must be [N, 3], got {tuple(xyz.shape)}")
    if not torch.isfinite(xyz).all():
        raise SceneKDError("point coordinates contain NaN or inf")
    emb = _check_embeddings(embeddings)
    n = xyz.shape[0]
    normals_t = None
    if normals is not None and cfg.view_angle_weight:
        normals_t = torch.as_tensor(normals).to(torch.float32)
        if tuple(normals_t.shape) != (n, 3):
            raise SceneKDError(f"normals must be [{n}, 3], got {tuple(normals_t.shape)}")
        normals_t = torch.nan_to_num(normals_t)
    if output not in ("dense", "mixture"):
        raise SceneKDError(f"unknown fusion output {output!r}; choose dense or mixture")
    accumulator = GranularitySums if output == "dense" else MixtureSums
    sums = accumulator(n, emb, balance=cfg.balance_granularities, views_per_level=views_per_level(cameras))
    coverage = torch.zeros(n, dtype=torch.int32)
    grid = build_point_grid(xyz) if (cull if cull is not None else n >= CULL_MIN_POINTS) and n else None
    depth_it: Iterator = iter(depth_images)
    mask_it: Iterator = iter(mask_ids)
    for v, camera in enumerate(cameras):
        try:
            depth, masks = next(depth_it), next(mask_it)
        except StopIteration:
            raise SceneKDError(f"{len(cameras)} cameras but only {v} depth/mask images") from None
        depth = torch.as_tensor(depth, dtype=torch.float32)
        if tuple(depth.shape) != (camera.height, camera.width):
            raise SceneKDError(f"view {v}: depth image is {tuple(depth.shape)}, camera is {camera.height}x{camera.width}")
        masks = _check_mask_ids(masks, (camera.height, camera.width), emb.shape[0], v)
        if grid is None:
            visible, flat = visible_in_view(xyz, camera, depth, tolerance=cfg.depth_tolerance, border_px=cfg.border_px)
            idx = visible.nonzero().squeeze(1)  # ascending
            pix = flat[idx]
        else:
            idx_np, pix = visible_points_culled(xyz, camera, depth, grid, tolerance=cfg.depth_tolerance,
                                                border_px=cfg.border_px)
            idx = torch.from_numpy(idx_np)  # ascending (the grid's indices are sorted)
        L = masks.shape[0]
        point_masks = masks.reshape(L, -1)[:, pix].T  # [n_vis, L]
        has_mask = point_masks >= 0
        labelled = has_mask.any(dim=1)
        level = int(camera.level)
        if len(idx):
            w = _view_weights(xyz[idx], pix, depth, camera, cfg, None if normals_t is None else normals_t[idx])
            coverage[idx] += labelled.to(torch.int32)
            cols = point_masks.clamp_min(0)  # entries without a mask stay, with weight 0
            vals = w[:, None] * has_mask
            if cfg.granularity == "camera":
                sums.add_rows(granularity_key(level), idx, cols, vals, labelled, level=level)
            else:
                for lvl in range(L):
                    sums.add_rows(granularity_key(level, lvl), idx, cols[:, lvl : lvl + 1], vals[:, lvl : lvl + 1],
                                  has_mask[:, lvl], level=level)
        sums.end_view(level)
        if progress is not None:
            progress(v)
    counts = dict(sums.counts)
    features = sums.result()
    return features, coverage, counts


def _view_weights(
    xyz_vis: Tensor, pix: Tensor, depth: Tensor, camera: Camera, cfg: FuseConfig, normals_vis: Tensor | None
) -> Tensor:
    """Weights [n] of the visible points of one view (see :func:`sample_weights`)."""
    R = torch.as_tensor(camera.world_to_cam[:3, :3], dtype=torch.float32)
    t = torch.as_tensor(camera.world_to_cam[:3, 3], dtype=torch.float32)
    z = xyz_vis @ R[2] + t[2]
    zbuf = depth.reshape(-1)[pix]
    cosine = None
    if cfg.view_angle_weight:
        if normals_vis is not None:
            centre = torch.as_tensor(camera.center, dtype=torch.float32)
            ray = centre[None, :] - xyz_vis
            cosine = (normals_vis * ray).sum(1).abs() / (normals_vis.norm(dim=1) * ray.norm(dim=1)).clamp_min(1e-12)
            cosine = torch.where(normals_vis.norm(dim=1) > 0, cosine, torch.ones_like(cosine))
        else:
            cosine = view_angle_cosine(depth, camera.K).reshape(-1)[pix]
    return sample_weights(z, zbuf, camera, cfg, angle_cosine=cosine)
