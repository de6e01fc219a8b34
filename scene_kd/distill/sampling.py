"""What the student learns from and where: unit targets and covered points, cluster-balanced loss weights,
xy blocks for crop queries, crop sampling with augmentation, and the held-out regions for early stopping.

Sampling is balanced across regions (half the crops are centred in an xy block chosen uniformly among blocks
holding covered training points) and across the fused features' clusters (spherical k-means: the other crops
are centred on a point of a uniformly chosen cluster, and each point's loss weighs
freq(cluster) ** -balance_power), so rare classes are not swamped by road and roof.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from scene_kd.distill.config import DistillConfig
from scene_kd.distill.sparseconv import SparseTensor
from scene_kd.distill.unet import StudentSpec, voxel_inputs
from scene_kd.errors import RunStateError


def prepare_targets(fused: Tensor | np.ndarray, coverage: Tensor | np.ndarray | None, *,
                    inplace: bool = False) -> tuple[Tensor, Tensor]:
    """(unit fused features [N, D], covered mask [N] bool); covered = coverage > 0 and a finite, non-zero
    feature. float16 input gives float16 targets (a 10M-point tile's rank-64 targets: 1.3 GB), anything else
    float32. Built in row chunks, no full-size temporaries; ``inplace``: normalise a float16/float32 tensor in
    its own memory (the caller gives up its copy), else the input is not modified."""
    src = torch.as_tensor(fused)
    if src.ndim != 2:
        raise RunStateError(f"fused features must be [N, D], got {tuple(src.shape)}")
    dtype = torch.float16 if src.dtype == torch.float16 else torch.float32
    out = src if inplace and src.dtype == dtype else torch.empty(src.shape, dtype=dtype)
    ok = torch.empty(src.shape[0], dtype=torch.bool)
    for s in range(0, src.shape[0], 262144):
        f = src[s : s + 262144].to(torch.float32)
        norm = f.norm(dim=1)
        good = torch.isfinite(f).all(dim=1) & (norm > 1e-6)
        out[s : s + 262144] = torch.where(good[:, None], f / norm.clamp_min(1e-6)[:, None], torch.zeros_like(f))
        ok[s : s + 262144] = good
    if coverage is not None:
        ok &= torch.as_tensor(coverage).reshape(-1) > 0
        out[~ok] = 0
    return out, ok


class RowSubset:
    """Rows ``index`` of ``x`` [N, D], gathered only when sliced (``rows[a:b]``, ``rows[idx]``): clustering the
    covered points of a 10M-point tile without a second copy of its targets."""

    def __init__(self, x: Tensor, index: Tensor):
        self.x, self.index = x, index
        self.shape = (int(index.numel()), *x.shape[1:])

    def __getitem__(self, key):
        return self.x[self.index[key]].to(torch.float32)


def spherical_kmeans(x: Tensor | RowSubset, k: int, generator: torch.Generator, iterations: int = 12, fit_samples: int = 20000) -> Tensor:
    """Cluster unit vectors x [M, D] into k groups by cosine; returns labels [M] int64."""
    m = x.shape[0]
    k = max(1, min(k, m))
    fit = x[torch.randperm(m, generator=generator)[:fit_samples]]
    # k-means++ seeding (D^2 sampling on cosine distance) so small, distinct clusters get a centre
    centres = fit[torch.randint(fit.shape[0], (1,), generator=generator)]
    dist = (1 - fit @ centres[0]).clamp_min(0)
    for _ in range(1, k):
        if float(dist.sum()) <= 1e-12:
            break
        pick = torch.multinomial(dist.square() + 1e-12, 1, generator=generator)
        centres = torch.cat([centres, fit[pick]])
        dist = torch.minimum(dist, (1 - fit @ fit[pick[0]]).clamp_min(0))
    for _ in range(iterations):
        assign = (fit @ centres.T).argmax(1)
        sums = torch.zeros_like(centres).index_add_(0, assign, fit)
        empty = sums.norm(dim=1) < 1e-8
        sums[empty] = centres[empty]
        centres = sums / sums.norm(dim=1, keepdim=True).clamp_min(1e-8)
    return torch.cat([(x[s : s + 65536] @ centres.T).argmax(1) for s in range(0, m, 65536)])


def balance_weights(fused_unit: Tensor | RowSubset, cfg: DistillConfig, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """(loss weights [M] with mean 1: cluster frequency ** -balance_power, cluster labels [M]) for the M covered
    points' unit features (a tensor [M, D] or a :class:`RowSubset`)."""
    if cfg.balance_clusters <= 1:
        return torch.ones(fused_unit.shape[0]), torch.zeros(fused_unit.shape[0], dtype=torch.int64)
    labels = spherical_kmeans(fused_unit, cfg.balance_clusters, generator)
    freq = torch.bincount(labels).to(torch.float32) / labels.numel()
    w = freq[labels].clamp_min(1e-6) ** -cfg.balance_power
    return w / w.mean(), labels


@dataclass
class Blocks:
    """Points sorted by xy block (CSR), for fast crop queries."""

    size: float
    lo: Tensor  # [2] xy minimum
    dims: tuple[int, int]
    order: Tensor  # [N] point indices sorted by block
    start: Tensor  # [B + 1] CSR offsets into order
    covered_blocks: Tensor  # block ids holding covered points
    covered_in_block: list[Tensor]  # per covered block: its covered point indices
    clusters: list[Tensor] = dataclasses.field(default_factory=list)  # covered point indices per fused cluster

    @classmethod
    def build(cls, xyz: Tensor, covered: Tensor, size: float) -> Blocks:
        lo = xyz[:, :2].min(0).values
        ij = torch.floor((xyz[:, :2] - lo) / size).to(torch.int64)
        dims = (int(ij[:, 0].max()) + 1, int(ij[:, 1].max()) + 1)
        block = ij[:, 0] * dims[1] + ij[:, 1]
        order = torch.argsort(block, stable=True)
        counts = torch.bincount(block, minlength=dims[0] * dims[1])
        start = torch.cat([torch.zeros(1, dtype=torch.int64), counts.cumsum(0)])
        cov_counts = torch.bincount(block[covered], minlength=dims[0] * dims[1])
        covered_blocks = torch.nonzero(cov_counts > 0).flatten()
        sorted_cov = covered[order]
        per_block = [order[start[b] : start[b + 1]][sorted_cov[start[b] : start[b + 1]]] for b in covered_blocks.tolist()]
        return cls(size, lo, dims, order, start, covered_blocks, per_block)

    def points_near(self, centre: Tensor, half: float) -> Tensor:
        """Indices of points with |xy - centre| <= half (square window)."""
        i0, j0 = (torch.floor((centre - half - self.lo) / self.size)).to(torch.int64).tolist()
        i1, j1 = (torch.floor((centre + half - self.lo) / self.size)).to(torch.int64).tolist()
        parts = []
        for i in range(max(i0, 0), min(i1, self.dims[0] - 1) + 1):
            b0, b1 = i * self.dims[1] + max(j0, 0), i * self.dims[1] + min(j1, self.dims[1] - 1)
            if b1 >= b0:
                parts.append(self.order[self.start[b0] : self.start[b1 + 1]])
        return torch.cat(parts) if parts else torch.empty(0, dtype=torch.int64)


def augment(xyz: Tensor, centre: Tensor, voxel: float, g: torch.Generator | None, enabled: bool) -> Tensor:
    """Crop coordinates relative to ``centre`` (xy), randomly rotated/flipped/scaled/shifted when enabled."""
    out = xyz.clone()
    out[:, :2] -= centre
    if not enabled:
        return out
    angle = float(torch.rand(1, generator=g)) * 2 * math.pi
    c, s = math.cos(angle), math.sin(angle)
    rot = torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    if float(torch.rand(1, generator=g)) < 0.5:
        rot[:, 0] = -rot[:, 0]
    scale = 0.95 + 0.1 * float(torch.rand(1, generator=g))
    shift = torch.rand(3, generator=g) * voxel
    return out @ rot.T * scale + shift


def sample_crops(xyz: Tensor, base: Tensor, blocks: Blocks, spec: StudentSpec, cfg: DistillConfig,
                 g: torch.Generator) -> tuple[list[tuple[Tensor, Tensor]], list[Tensor]]:
    """``cfg.crops_per_step`` training crops: ([(augmented xyz [M, 3], point features [M, C])], [point indices [M]]).

    Each centre is a covered training point of a region (xy block) or of a fused-feature cluster, each chosen
    uniformly (50/50); a crop holds the points within ``crop_voxels / 2`` voxels in x and y (all heights), at
    most ``crop_points`` of them (random subset)."""
    crops, picked = [], []
    half = cfg.crop_voxels * spec.voxel_size / 2
    for _ in range(cfg.crops_per_step):
        if float(torch.rand(1, generator=g)) < 0.5 or not blocks.clusters:
            cands = blocks.covered_in_block[int(torch.randint(len(blocks.covered_blocks), (1,), generator=g))]
        else:
            cands = blocks.clusters[int(torch.randint(len(blocks.clusters), (1,), generator=g))]
        centre = xyz[cands[int(torch.randint(len(cands), (1,), generator=g))], :2]
        idx = _window(xyz, blocks, centre, half, cfg.crop_points, g)
        crops.append((augment(xyz[idx], centre, spec.voxel_size, g, cfg.augment), drop_attributes(base[idx], spec, cfg, g)))
        picked.append(idx)
    return crops, picked


def drop_attributes(feats: Tensor, spec: StudentSpec, cfg: DistillConfig, g: torch.Generator) -> Tensor:
    """A training crop's point features [M, C] with its colour (with probability ``cfg.rgb_dropout``) and its
    intensity (``cfg.intensity_dropout``) replaced by 0, the value a tile without that attribute gets
    (scene_kd.distill.unet.scene_point_features), so one student serves tiles with and without them. Draws from
    ``g`` only for attributes the student uses with a dropout > 0 (settings without dropout draw as before)."""
    cols: list[int] = []
    if spec.use_rgb and cfg.rgb_dropout > 0 and float(torch.rand(1, generator=g)) < cfg.rgb_dropout:
        cols += [2, 3, 4]  # after the two height columns
    if spec.use_intensity and cfg.intensity_dropout > 0 and float(torch.rand(1, generator=g)) < cfg.intensity_dropout:
        cols.append(feats.shape[1] - 1)  # intensity is the last column
    if not cols:
        return feats
    feats = feats.clone()
    feats[:, cols] = 0.0
    return feats


def _window(xyz: Tensor, blocks: Blocks, centre: Tensor, half: float, max_points: int, g: torch.Generator) -> Tensor:
    idx = blocks.points_near(centre, half)
    inside = ((xyz[idx, :2] - centre).abs() <= half).all(dim=1)
    idx = idx[inside]
    if idx.numel() > max_points:
        idx = idx[torch.randperm(idx.numel(), generator=g)[:max_points]]
    return idx


# ---- the held-out set for early stopping -------------------------------------------------------------------
HOLDOUT_CELL_CROPS = 4
"""A held-out cell is ``crop_voxels / HOLDOUT_CELL_CROPS`` voxels wide (a crop spans 4 x 4 cells)."""
MIN_HOLDOUT_CELLS = 10
"""Below this many covered cells there is no held-out set (it would take too much of a small scene)."""
HOLDOUT_SEED_OFFSET = 7919
"""The held-out cells and their crops use their own generator (seed + this), so the training draws are the
same with and without a held-out set."""


@dataclass
class Holdout:
    """Covered points held out of the loss (whole xy cells, seeded) and the fixed crops that evaluate them.

    held: [N] bool.   crops: (point indices [M] int64, xy centre [2]) per evaluation crop (no augmentation)."""

    held: Tensor
    crops: list[tuple[Tensor, Tensor]]


def split_holdout(xyz: Tensor, covered: Tensor, blocks: Blocks, spec: StudentSpec, cfg: DistillConfig) -> Holdout | None:
    """Hold out ``cfg.holdout_fraction`` of the covered xy cells (at least one; None when the fraction is 0 or
    the scene has fewer than MIN_HOLDOUT_CELLS covered cells) and place up to ``cfg.holdout_crops`` evaluation
    crops, each centred on a held-out cell (the usual crop size, so held-out points keep their context)."""
    if cfg.holdout_fraction <= 0:
        return None
    g = torch.Generator().manual_seed(cfg.seed + HOLDOUT_SEED_OFFSET)
    edge = cfg.crop_voxels * spec.voxel_size / HOLDOUT_CELL_CROPS
    lo = xyz[:, :2].min(0).values
    ij = torch.floor((xyz[:, :2] - lo) / edge).to(torch.int64)
    cell = ij[:, 0] * (int(ij[:, 1].max()) + 1) + ij[:, 1]
    cells = torch.unique(cell[covered])
    if cells.numel() < MIN_HOLDOUT_CELLS:
        return None
    n_hold = max(1, min(cells.numel() - 1, round(cfg.holdout_fraction * cells.numel())))
    chosen = cells[torch.randperm(cells.numel(), generator=g)[:n_hold]]
    held = covered & torch.isin(cell, chosen)
    crops = []
    half = cfg.crop_voxels * spec.voxel_size / 2
    for c in chosen.tolist():
        if len(crops) >= cfg.holdout_crops:
            break
        centre = xyz[(cell == c) & held][:, :2].mean(0)
        idx = _window(xyz, blocks, centre, half, cfg.crop_points, g)
        if bool(held[idx].any()):
            crops.append((idx, centre))
    return Holdout(held, crops)


@torch.no_grad()
def holdout_loss(model: torch.nn.Module, xyz: Tensor, base: Tensor, target: Tensor, weights: Tensor,
                 holdout: Holdout, spec: StudentSpec, batch: int, device: torch.device) -> float:
    """Weighted mean 1 - cosine(student, fused) over the held-out points of the evaluation crops (model in
    eval mode meanwhile; its train/eval mode is restored)."""
    was_training = model.training
    model.eval()
    num, den = 0.0, 0.0
    for s in range(0, len(holdout.crops), batch):
        part = holdout.crops[s : s + batch]
        crops = [(augment(xyz[idx], centre, spec.voxel_size, None, False), base[idx]) for idx, centre in part]
        coords, feats, p2vs = voxel_inputs(crops, spec.voxel_size)
        out = model(SparseTensor(coords.to(device), feats.to(device)))
        rows, idx = torch.cat(p2vs), torch.cat([idx for idx, _ in part])
        use = holdout.held[idx]
        rows, idx = rows[use].to(device), idx[use]
        w = weights[idx].to(device)
        cos = (out[rows] * target[idx].to(device, torch.float32)).sum(dim=1)
        num += float((w * (1 - cos)).sum())
        den += float(w.sum())
    model.train(was_training)
    return num / max(den, 1e-8)


def early_stopping(losses: list[float], patience: int, min_delta: float) -> tuple[int, bool]:
    """(best epoch, 1-based, 0 when none; stop now?) for per-epoch held-out losses: an epoch is the new best when
    its loss is below the best so far by more than ``min_delta``; stop after ``patience`` epochs without a new
    best (patience 0: never)."""
    best, best_epoch, bad = math.inf, 0, 0
    for epoch, loss in enumerate(losses, 1):
        if loss < best - min_delta:
            best, best_epoch, bad = loss, epoch, 0
        else:
            bad += 1
    return best_epoch, patience > 0 and bad >= patience
