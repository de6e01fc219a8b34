"""Query config (owned by scene_kd/query)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

DEFAULT_NEGATIVES: tuple[str, ...] = ("object", "things", "stuff", "texture")
"""LERF's canonical negatives."""

DEFAULT_TEMPLATE = "a photo of a {}."
"""The one prompt template of scene-kd (CLIP's ImageNet prompt): "{}" is replaced by a class name. Applied to
class names (segmentation, the viewer's vocabulary and inspect, eval's class embeddings for open_clip encoders),
never to relevancy queries or negatives, which are encoded as typed (as LERF does)."""


@dataclass
class QueryConfig:
    negatives: tuple[str, ...] = DEFAULT_NEGATIVES
    """Canonical negatives for LERF relevancy."""
    temperature: float = 10.0
    """Softmax temperature tau on cosine similarities (relevancy and segmentation confidence)."""
    threshold: float = 0.5
    """Relevancy above which a point counts as a hit."""
    source: Literal["auto", "fused", "distilled", "ensemble"] = "auto"
    """fused | distilled | ensemble | auto (ensemble when available)."""
    template: str = DEFAULT_TEMPLATE
    """Prompt template for class names (segmentation, viewer vocabulary/inspect, eval); not for relevancy."""
    unknown_threshold: float | None = None
    """Segmentation: a point whose best cosine similarity is below this is labelled unknown (-1)."""
    precision: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    """Similarity arithmetic: float32 (exact) | float16 | bfloat16 | auto (bfloat16 for large fields on CPUs
    with native bf16 matmul, float32 otherwise)."""
    text_cache_size: int = 1024
    """Entries of a QuerySession's text-embedding LRU cache (least recently used prompts dropped first)."""
