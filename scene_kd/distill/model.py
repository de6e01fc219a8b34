"""The student network and its set-up: voxel size, spec, model, device and CPU threads."""

from __future__ import annotations

import contextlib
import math

import torch
from torch import Tensor

from scene_kd.distill.config import DistillConfig
from scene_kd.distill.unet import StudentSpec, StudentUNet
from scene_kd.errors import SceneKDError


def auto_voxel_size(xyz: Tensor, points_per_voxel: float = 4.0, iterations: int = 6) -> float:
    """A voxel edge giving about ``points_per_voxel`` points per occupied voxel (2 significant digits)."""
    xyz = torch.as_tensor(xyz, dtype=torch.float32)
    n = xyz.shape[0]
    if n < 2:
        return 1.0
    extent = (xyz.max(0).values - xyz.min(0).values).clamp_min(1e-6)
    area = float(extent[0] * extent[1]) if float(extent[:2].min()) > 1e-3 * float(extent.max()) else float(extent.max() ** 2)
    v = math.sqrt(area * points_per_voxel / n)
    target = max(n / points_per_voxel, 1.0)
    for _ in range(iterations):
        count = torch.unique(_grid_keys(xyz, v)).numel()
        ratio = count / target
        if abs(ratio - 1) < 0.05:
            break
        v *= ratio ** 0.5  # occupied voxels of surfaces scale ~ 1 / v^2
    return float(f"{v:.2g}")


def _grid_keys(xyz: Tensor, v: float) -> Tensor:
    g = torch.floor(xyz.to(torch.float64) / v).to(torch.int64)
    g = g - g.min(0).values
    m = g.max(0).values + 1
    return (g[:, 0] * m[1] + g[:, 1]) * m[2] + g[:, 2]


def make_spec(xyz: Tensor, out_dim: int, cfg: DistillConfig, has_rgb: bool, has_intensity: bool) -> StudentSpec:
    voxel = cfg.voxel_size or auto_voxel_size(xyz, cfg.points_per_voxel)
    z = xyz[:, 2]
    sub = z[torch.linspace(0, z.numel() - 1, min(z.numel(), 1_000_000)).long()].to(torch.float64)
    z_range = float(torch.quantile(sub, 0.98) - torch.quantile(sub, 0.02))
    return StudentSpec(
        out_dim=out_dim, voxel_size=voxel, height_scale=max(z_range / 2, 4 * voxel),
        ground_cell=cfg.ground_cell or 32 * voxel, use_rgb=bool(cfg.use_rgb and has_rgb),
        use_intensity=bool(cfg.use_intensity and has_intensity), channels=tuple(cfg.channels), blocks=cfg.blocks,
        norm=cfg.norm,
    )


@contextlib.contextmanager
def cpu_threads(n: int):
    """Temporarily set torch's intra-op thread count (0: leave it)."""
    before = torch.get_num_threads()
    if n > 0:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if n > 0:
            torch.set_num_threads(before)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SceneKDError("distill.device is 'cuda' but CUDA is not available")
    return torch.device(name)


def build_model(spec: StudentSpec, backend: str = "torch") -> torch.nn.Module:
    """The student network for ``spec`` on the chosen backend ("torch" or "spconv")."""
    if backend == "torch":
        return StudentUNet(spec)
    if backend == "spconv":
        from scene_kd.distill.spconv_backend import SpconvStudentUNet

        return SpconvStudentUNet(spec)
    raise SceneKDError(f"unknown distill backend {backend!r}; choose torch or spconv")
