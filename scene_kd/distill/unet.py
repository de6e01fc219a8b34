"""MinkUNet-style student on the pure-torch sparse conv, and its input features.

Input features per point (averaged per voxel), ``StudentSpec.in_dim`` channels in this order:
  * offset of the point inside its voxel, (xyz / voxel - floor(xyz / voxel) - 0.5) * 2, in [-1, 1]  (3)
  * height above the scene's 2% z quantile, / ``height_scale``                                    (1)
  * height above the local ground (min z in an xy cell of ``ground_cell`` units), / ``height_scale`` (1)
  * rgb / 127.5 - 1 when the spec uses rgb (zeros when a scene lacks it)                            (3)
  * intensity standardised per scene (median / IQR, clipped to +-4) when the spec uses it           (1)
Only heights relative to the scene itself enter, so a trained student applies to a new scene of the
same kind (units, voxel size and ``height_scale`` come from the training scene, stored in the spec).

Network: stem (SubM 3^3) + residual blocks; per level a stride-2 sparse conv (2^3) + residual blocks;
decoder: transposed conv back, concat with the skip, SubM 3^3 + residual blocks; linear head to the
teacher dim ``out_dim``; outputs are L2-normalised.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from scene_kd.distill.sparseconv import (
    SparseConv3d,
    SparseConvTranspose3d,
    SparseTensor,
    SubmanifoldConv3d,
    voxelize,
)


@dataclass
class StudentSpec:
    """Everything needed to rebuild a student and prepare its inputs on a new scene (saved in student.json)."""

    out_dim: int
    voxel_size: float
    height_scale: float
    ground_cell: float
    use_rgb: bool
    use_intensity: bool
    channels: tuple[int, ...] = (32, 64, 96, 128)
    blocks: int = 1
    norm: str = "batch"

    @property
    def in_dim(self) -> int:
        return 5 + 3 * self.use_rgb + self.use_intensity

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["channels"] = list(self.channels)
        d["in_dim"] = self.in_dim
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> StudentSpec:
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        kw["channels"] = tuple(int(c) for c in kw["channels"])
        return cls(**kw)


# ---- input features ----------------------------------------------------------------------------------------
def _quantile(x: Tensor, q: float, max_samples: int = 1_000_000) -> float:
    if x.numel() > max_samples:
        x = x[torch.linspace(0, x.numel() - 1, max_samples).long()]
    return float(torch.quantile(x.to(torch.float64), q))


@dataclass(frozen=True)
class SceneStats:
    """The scene-wide constants of the input features, so that a chunk of a scene gets the whole scene's inputs."""

    z_ref: float
    """The scene's 2% z quantile (heights are measured from it)."""
    intensity_median: float | None = None
    intensity_iqr: float | None = None


def scene_stats(xyz: Tensor | np.ndarray, intensity: Tensor | np.ndarray | None, spec: StudentSpec) -> SceneStats:
    """:class:`SceneStats` of a whole scene (quantiles of at most 1M evenly spaced samples, as the features use)."""
    z = torch.as_tensor(xyz)[:, 2].to(torch.float32)
    med = iqr = None
    if spec.use_intensity and intensity is not None:
        i = torch.as_tensor(intensity).to(torch.float32).reshape(-1)
        med, iqr = _quantile(i, 0.5), _quantile(i, 0.75) - _quantile(i, 0.25)
    return SceneStats(z_ref=_quantile(z, 0.02), intensity_median=med, intensity_iqr=iqr)


def scene_point_features(
    xyz: Tensor, rgb: Tensor | np.ndarray | None, intensity: Tensor | np.ndarray | None, spec: StudentSpec,
    *, stats: SceneStats | None = None,
) -> Tensor:
    """Per-point features that do not depend on the voxel grid: [N, in_dim - 3] float32 (see module doc).

    xyz: [N, 3] float (local scene coordinates); rgb: [N, 3] uint8 or None; intensity: [N] or None.
    ``stats``: the whole scene's constants when ``xyz`` is a part of it (default: computed from these points).
    The local ground of a point is the lowest point of its ``ground_cell`` xy cell (an absolute grid) among the
    points given, so a part agrees with the whole scene on points whose cell lies inside it.
    """
    xyz = torch.as_tensor(xyz, dtype=torch.float32)
    n = xyz.shape[0]
    if stats is None:
        stats = scene_stats(xyz, intensity, spec)
    z = xyz[:, 2]
    cols = [(z - stats.z_ref) / spec.height_scale]
    cell = torch.floor(xyz[:, :2].to(torch.float64) / spec.ground_cell).to(torch.int64)
    cell_ids = torch.unique(cell, dim=0, return_inverse=True)[1]
    ground = torch.full((int(cell_ids.max()) + 1 if n else 0,), float("inf")).scatter_reduce(0, cell_ids, z, "amin")
    cols.append((z - ground[cell_ids]) / spec.height_scale)
    out = [torch.stack(cols, dim=1)]
    if spec.use_rgb:
        out.append(torch.as_tensor(rgb).to(torch.float32) / 127.5 - 1.0 if rgb is not None else torch.zeros(n, 3))
    if spec.use_intensity:
        if intensity is None or stats.intensity_median is None:
            out.append(torch.zeros(n, 1))
        else:
            i = torch.as_tensor(intensity).to(torch.float32).reshape(-1)
            med, iqr = stats.intensity_median, stats.intensity_iqr
            out.append(((i - med) / max(iqr, 1e-6)).clamp(-4, 4)[:, None])
    return torch.cat(out, dim=1)


def voxel_inputs(crops: list[tuple[Tensor, Tensor]], voxel_size: float) -> tuple[Tensor, Tensor, list[Tensor]]:
    """Batch crops into one sparse input.

    crops: per crop (xyz [n, 3] float32 (possibly augmented), point features [n, F]). Returns coords [V, 4]
    (batch = crop index), voxel features [V, F + 3] (mean over the voxel's points, offsets first) and per
    crop ``point_to_voxel`` [n] (rows of the batched tensor).
    """
    all_coords, all_feats, p2vs, base = [], [], [], 0
    for b, (xyz, feats) in enumerate(crops):
        grid, p2v = voxelize(xyz, voxel_size)
        offset = (xyz.to(torch.float64) / voxel_size - grid[p2v].to(torch.float64) - 0.5).to(torch.float32) * 2
        point_feats = torch.cat([offset, feats], dim=1)
        sums = torch.zeros(grid.shape[0], point_feats.shape[1]).index_add_(0, p2v, point_feats)
        counts = torch.zeros(grid.shape[0]).index_add_(0, p2v, torch.ones(p2v.shape[0]))
        all_feats.append(sums / counts[:, None])
        all_coords.append(torch.cat([torch.full((grid.shape[0], 1), b, dtype=torch.int64), grid], dim=1))
        p2vs.append(p2v + base)
        base += grid.shape[0]
    return torch.cat(all_coords), torch.cat(all_feats), p2vs


# ---- network -----------------------------------------------------------------------------------------------
class FeatureNorm(nn.Module):
    """Normalisation over voxel features [V, C]: "batch" (BatchNorm1d) or "layer" (LayerNorm)."""

    def __init__(self, channels: int, kind: str):
        super().__init__()
        if kind not in ("batch", "layer"):
            raise ValueError(f"norm must be 'batch' or 'layer', not {kind!r}")
        self.norm = nn.BatchNorm1d(channels) if kind == "batch" else nn.LayerNorm(channels)

    def forward(self, x: SparseTensor) -> SparseTensor:
        return x.replace(self.norm(x.feats))


def _relu(x: SparseTensor) -> SparseTensor:
    return x.replace(torch.relu(x.feats))


class ConvNormReLU(nn.Module):
    def __init__(self, conv: nn.Module, channels: int, norm: str):
        super().__init__()
        self.conv, self.norm = conv, FeatureNorm(channels, norm)

    def forward(self, x: SparseTensor) -> SparseTensor:
        return _relu(self.norm(self.conv(x)))


class ResidualBlock(nn.Module):
    """relu(x + norm(conv(relu(norm(conv(x))))))."""

    def __init__(self, channels: int, norm: str):
        super().__init__()
        self.conv1, self.norm1 = SubmanifoldConv3d(channels, channels, 3), FeatureNorm(channels, norm)
        self.conv2, self.norm2 = SubmanifoldConv3d(channels, channels, 3), FeatureNorm(channels, norm)

    def forward(self, x: SparseTensor) -> SparseTensor:
        h = _relu(self.norm1(self.conv1(x)))
        h = self.norm2(self.conv2(h))
        return h.replace(torch.relu(h.feats + x.feats))


class StudentUNet(nn.Module):
    """Sparse encoder-decoder: [V, in_dim] voxel features -> [V, out_dim] unit vectors."""

    def __init__(self, spec: StudentSpec):
        super().__init__()
        self.spec = spec
        ch, norm, nb = list(spec.channels), spec.norm, spec.blocks
        self.stem = nn.Sequential(ConvNormReLU(SubmanifoldConv3d(spec.in_dim, ch[0], 3), ch[0], norm),
                                  *[ResidualBlock(ch[0], norm) for _ in range(nb)])
        self.down = nn.ModuleList(
            nn.Sequential(ConvNormReLU(SparseConv3d(ch[i - 1], ch[i], 2, 2), ch[i], norm),
                          *[ResidualBlock(ch[i], norm) for _ in range(nb)])
            for i in range(1, len(ch))
        )
        self.up = nn.ModuleList(
            ConvNormReLU(SparseConvTranspose3d(ch[i], ch[i - 1], 2, 2), ch[i - 1], norm) for i in range(1, len(ch))
        )
        self.fuse = nn.ModuleList(
            nn.Sequential(ConvNormReLU(SubmanifoldConv3d(2 * ch[i - 1], ch[i - 1], 3), ch[i - 1], norm),
                          *[ResidualBlock(ch[i - 1], norm) for _ in range(nb)])
            for i in range(1, len(ch))
        )
        self.head = nn.Linear(ch[0], spec.out_dim)

    def forward(self, x: SparseTensor) -> Tensor:
        h = self.stem(x)
        skips = [h]
        for level in self.down:
            h = level(h)
            skips.append(h)
        for i in reversed(range(len(self.up))):
            h = self.up[i](h)
            h = h.replace(torch.cat([h.feats, skips[i].feats], dim=1))
            h = self.fuse[i](h)
        out = self.head(h.feats)
        return out / out.norm(dim=1, keepdim=True).clamp_min(1e-8)
