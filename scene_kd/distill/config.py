"""Distillation stage config (owned by scene_kd/distill)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class DistillConfig:
    enabled: bool = True
    voxel_size: float = 0.0
    """Voxel edge in scene units; 0 picks one giving about ``points_per_voxel`` points per occupied voxel."""
    points_per_voxel: float = 4.0
    """Target mean points per occupied voxel when ``voxel_size`` is 0."""
    epochs: int = 40
    steps_per_epoch: int = 0
    """Optimiser steps per epoch; 0: one crop per region (xy block holding covered points) per epoch, at least
    ``min_steps_per_epoch``."""
    min_steps_per_epoch: int = 6
    """Floor for the automatic step count, so small scenes (a few regions) still get enough updates."""
    crops_per_step: int = 2
    """Crops (xy windows of ``crop_voxels`` voxels, all heights) batched per optimiser step."""
    crop_voxels: int = 64
    crop_points: int = 40000
    """At most this many points per crop (random subset), so memory is bounded on any scene."""
    lr: float = 6e-3
    weight_decay: float = 1e-4
    channels: tuple[int, ...] = (16, 32, 48, 64)
    blocks: int = 1
    """Residual blocks per encoder/decoder level."""
    norm: str = "batch"
    """Feature normalisation: "batch" or "layer"."""
    balance_clusters: int = 16
    """Fused features are clustered (spherical k-means) and the loss weights each point by its cluster's
    frequency ** -``balance_power``, so rare classes are not swamped; 0 disables."""
    balance_power: float = 0.75
    use_rgb: bool = True
    """Feed rgb to the student when the scene has it."""
    use_intensity: bool = True
    """Feed intensity to the student when the scene has it."""
    ground_cell: float = 0.0
    """xy cell edge for the local-ground height feature; 0: 32 voxels."""
    augment: bool = True
    """Random rotation about z, flips, grid shifts and +-5% scale of each crop."""
    predict_points: int = 1_500_000
    """Prediction runs on xy tiles of about this many points (with a context margin) on bigger scenes."""
    cpu_threads: int = 1
    """torch intra-op threads while training/predicting on the CPU (restored afterwards); 0 leaves torch's
    setting. The sparse ops are many small gathers/scatters: on a shared 2-core machine 2 threads ran a
    training step 18x slower than 1 (OpenMP oversubscription), so 1 is the safe default."""
    seed: int = 0
    device: str = "auto"
    """"auto" (CUDA when available), "cpu" or "cuda"."""
    backend: str = "torch"
    """Sparse conv backend for training/prediction: "torch" (pure torch) or "spconv" (CUDA, optional)."""
