"""Distillation stage config (owned by scene_kd/distill) and the student registry ``STUDENTS``.

Each student is registered once, by name, with the dataclass holding its settings and its factory
(scene_kd/registry.py): ``sparseconv``'s settings are the ``distill:`` section's own keys (``DistillConfig``),
``gaussian-field``'s are the ``distill.gaussian_field`` section. ``StudentName``, the type of
``DistillConfig.student`` (tyro's choices, YAML validation), is derived from the registry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import tyro

from scene_kd.registry import Registry


@dataclass
class GaussianFieldConfig:
    """The Gaussian feature field student (Feature 3DGS), for Gaussian-splat scenes."""

    feature_dim: int = 16
    """Per-Gaussian low-dim feature size F."""
    iterations: int = 300
    """Optimiser steps; each renders one view (cycling through a seeded permutation of the views)."""
    lr: float = 0.05
    """Adam learning rate of the per-Gaussian features."""
    decoder_lr: float = 0.01
    min_alpha: float = 0.5
    """Pixels whose accumulated opacity is below this are not supervised."""
    anchor_weight: float = 1.0
    """With initial features (the distill stage starts from the fused ones): weight of a 1 - cosine penalty
    keeping covered Gaussians' decoded features near their start, so training fills in what lifting missed
    instead of trading per-Gaussian meaning for a closer rendered blend; 0 disables."""
    max_pixels: int = 16384
    """Supervised pixels per step: a seeded random subset of the valid ones (bounds memory at D = 512)."""
    downsample: int = 2
    """In the distill stage: train on the run's views at 1/downsample of their resolution (cameras and mask maps)."""
    seed: int = 0
    backend: Literal["auto", "gsplat", "torch"] = "auto"
    """Rasterizer: "auto" (gsplat on CUDA), "gsplat" or "torch"."""


@dataclass
class DistillConfig:
    enabled: bool = True
    voxel_size: float = 0.0
    """Voxel edge in scene units; 0 picks one giving about ``points_per_voxel`` points per occupied voxel."""
    points_per_voxel: float = 4.0
    """Target mean points per occupied voxel when ``voxel_size`` is 0."""
    epochs: Annotated[int, tyro.conf.arg(aliases=("--epochs",))] = 40
    """The most epochs; training stops earlier when the held-out loss stops improving (``patience``). On the
    command line 0 means no student (distillation off, epochs unchanged)."""
    patience: int = 5
    """Stop after this many epochs without a new best held-out loss and keep the best epoch's weights;
    0: run all ``epochs`` (with a held-out set its loss is still reported and the best epoch's weights kept)."""
    holdout_fraction: float = 0.1
    """Fraction of the covered xy cells (``crop_voxels / 4`` voxels wide, seeded) whose points are left out of
    the loss and measure it each epoch; 0 disables the held-out set (and early stopping). Scenes with fewer
    than 10 covered cells get none."""
    holdout_crops: int = 4
    """At most this many evaluation crops (each centred on a held-out cell) per epoch."""
    min_delta: float = 1e-3
    """A held-out loss (1 - cosine) must beat the best so far by more than this to count as an improvement."""
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
    norm: Literal["batch", "layer"] = "batch"
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
    feature_rank: int = 64
    """Student output size r. The student predicts r coordinates in the top-r principal basis of the teacher's
    mask embeddings (uncentred), decoded to the D-d text space by that fixed orthonormal basis (the low-dim
    field + linear decoder of Feature 3DGS); r >= D: the whole space (identity basis, nothing lost). At 64 a
    10M-point tile's distilled features take 1.3 GB (float16) where 512-d rows would take 10 GB."""
    predict_points: int = 1_500_000
    """Prediction runs on xy tiles of about this many points (with a context margin) on bigger scenes."""
    cpu_threads: int = 1
    """torch intra-op threads while training/predicting on the CPU (restored afterwards); 0 leaves torch's
    setting. The sparse ops are many small gathers/scatters: on a shared 2-core machine 2 threads ran a
    training step 18x slower than 1 (OpenMP oversubscription), so 1 is the safe default."""
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """"auto" (CUDA when available), "cpu" or "cuda"."""
    backend: Literal["torch", "spconv"] = "torch"
    """Sparse conv backend for training/prediction: "torch" (pure torch) or "spconv" (CUDA, optional)."""
    student: Annotated[StudentName, tyro.conf.arg(aliases=("--student",))] = "sparseconv"
    """"sparseconv" (the point student; on Gaussian scenes it runs on the Gaussians' centres) or
    "gaussian-field" (per-Gaussian features trained through the rasterizer, Feature 3DGS; Gaussian scenes only).
    On the synthetic tabletop as splats the point student's ensemble scored higher (README), so it is the default.
    Choosing another than the resolved one on the command line turns distillation on."""
    gaussian_field: GaussianFieldConfig = field(default_factory=GaussianFieldConfig)


STUDENTS: Registry[Any] = Registry("student")
"""Every student: name -> (its settings' dataclass, factory() -> scene_kd.distill.students.Student)."""
STUDENTS.register("sparseconv", DistillConfig, "scene_kd.distill.students:SparseConvStudent",
                  summary="MinkUNet-style sparse-conv point student (on Gaussian scenes: their centres)")
STUDENTS.register("gaussian-field", GaussianFieldConfig, "scene_kd.distill.students:GaussianFieldStudent",
                  summary="per-Gaussian low-dim features + 1x1 decoder trained through the rasterizer")

StudentName = STUDENTS.literal()
"""``Literal`` of the registered student names (``DistillConfig.student``'s type, resolved lazily by name)."""
