"""Distillation stage config (owned by scene_kd/distill)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class DistillConfig:
    enabled: bool = True
    voxel_size: float = 0.0
    """Voxel edge in scene units; 0 picks one from the scene extent."""
    epochs: int = 20
    lr: float = 2e-3
    weight_decay: float = 1e-4
    channels: tuple[int, ...] = (32, 64, 96, 128)
    seed: int = 0
    device: str = "auto"
