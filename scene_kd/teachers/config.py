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
    """Explicit weights path (file or folder); otherwise $SCENE_KD_CACHE, then the hub when online."""
    seed: int = 0
    batch_size: int = 16
    label_flip: float = 0.0
    """oracle-labels: fraction of masks whose class is replaced by another class."""
    embed_noise: float = 0.0
    """oracle-labels: std-dev of Gaussian noise added to mask embeddings before re-normalising."""
    oracle_dim: int = 64
    """oracle-labels: embedding dimension."""
    clip_model: str = "ViT-B-16"
    clip_pretrained: str = "laion2b_s34b_b88k"
    sam_model: str = "vit_b"
