"""Teacher stage config (owned by scene_kd/teachers)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TeacherConfig:
    name: str = "oracle-labels"
    """Registry name: clip-sam | clip-grid | oracle-labels."""
    device: str = "auto"
    """cpu | cuda | auto."""
    weights: str | None = None
    """Explicit weights: a file, a folder holding the expected files, ``clip=PATH,sam=PATH``, or ``random``
    (seeded random init, for plumbing tests and benchmarks only); otherwise $SCENE_KD_CACHE, then the hub."""
    download: bool = True
    """Try the hub/URL when weights are not found locally (skipped when $SCENE_KD_OFFLINE=1 or no network)."""
    seed: int = 0
    batch_size: int = 16
    """Views per teacher batch."""
    crop_batch_size: int = 64
    """Image crops per CLIP forward pass."""
    label_flip: float = 0.0
    """oracle-labels: fraction of masks whose class is replaced by another class."""
    embed_noise: float = 0.0
    """oracle-labels: relative size of Gaussian noise added to mask embeddings before re-normalising
    (per-component std-dev embed_noise / sqrt(D), so E|noise| ~ embed_noise)."""
    oracle_dim: int = 64
    """oracle-labels: embedding dimension."""
    oracle_levels: int = 1
    """oracle-labels: 1 = connected regions per class and instance; 2 = also a coarse level ignoring instances."""
    oracle_realism: str = "realistic"
    """oracle-labels: "realistic" (sees like SAM + CLIP: small regions get no mask, boundaries off by a pixel or two,
    small masks confused more often) | "perfect" (every region at any size, exact boundaries)."""
    oracle_min_area_px: int = 64
    """oracle-labels realistic: regions under this many pixels never get a mask. An 8 x 8 region is half a ViT-B/16
    patch side at CLIP's 224-px crop once upsampled ~28x (a blur) and a quarter of SAM's point-grid cell (below)."""
    oracle_min_side_px: int = 4
    """oracle-labels realistic: regions whose bounding box is thinner than this (pixels) get no mask: SAM predicts
    masks at 256 x 256 for its 1024-px input, i.e. one mask cell per 2 px of a 512-px render; a structure under
    two cells wide does not survive the upsampled, thresholded mask."""
    oracle_grid_px: int = 16
    """oracle-labels realistic: spacing of SAM's automatic point grid in render pixels (32 x 32 points on the
    1024-px input = one per 16 px of a 512-px render). A region of A pixels gets a mask with probability
    min(1, A / grid_px^2), the expected number of grid points inside it."""
    oracle_reliable_area_px: int = 1024
    """oracle-labels realistic: masks of at least this many pixels (32 x 32) get no size-driven confusion; below it
    the extra wrong-class probability grows log-linearly from 0 to ``oracle_small_confusion`` at the minimum area."""
    oracle_small_confusion: float = 0.5
    """oracle-labels realistic: extra wrong-class probability of a mask of ``oracle_min_area_px`` pixels (on top of
    ``label_flip``): CLIP's zero-shot accuracy on small crops falls towards chance."""
    oracle_boundary_px: int = 2
    """oracle-labels realistic: each mask's boundary bleeds into its neighbours or erodes by up to this many pixels
    (uniform in [-b, b], seeded): SAM's 256-px mask logits upsampled to a 512-px render are off by one cell."""
    clip_model: str = "ViT-B-16"
    clip_pretrained: str = "laion2b_s34b_b88k"
    clip_image_size: int | None = None
    """Override CLIP's input size (None: the model's own, 224); small sizes only for fast tests."""
    crop_padding: float = 0.1
    """clip-sam: padding around a mask's box, as a fraction of its longer side."""
    context_scale: float = 2.0
    """clip-sam: the context crop is this many times the padded mask crop."""
    context_weight: float = 0.3
    """clip-sam: weight of the context crop's embedding (masked crop: 1 - this)."""
    min_mask_area: int = 16
    """clip-sam / clip-grid: masks or regions smaller than this (pixels) are dropped."""
    sam_model: str = "vit_b"
    sam_image_size: int = 1024
    """SAM's input size; pretrained weights need 1024."""
    sam_points_per_side: int = 16
    sam_points_per_batch: int = 64
    sam_levels: tuple[int, ...] = (0, 1, 2)
    """SAM multimask outputs kept as mask levels (0 = smallest part ... 2 = whole object)."""
    sam_pred_iou_thresh: float = 0.86
    sam_stability_thresh: float = 0.92
    sam_nms_iou: float = 0.7
    grid_scales: tuple[float, ...] = (0.5, 0.25, 0.125)
    """clip-grid: crop sizes as fractions of the image's shorter side (LERF-style pyramid), coarse first;
    crops overlap by half; each scale's stride is also the cell size of one region level."""
    grid_depth_bin: float = 0.1
    """clip-grid: regions split by relative depth slabs of this width (0.1 = 10% of depth)."""
