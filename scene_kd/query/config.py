"""Query config (owned by scene_kd/query)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

DEFAULT_NEGATIVES: tuple[str, ...] = ("object", "things", "stuff", "texture")
"""LERF's canonical negatives."""

DEFAULT_TEMPLATE = "a photo of a {}."
"""The one prompt template (CLIP's ImageNet prompt): "{}" is replaced by a class name. What the ensemble setting
uses for encoders without the ensemble (the oracle's fixed vectors, custom encoders)."""

TEMPLATE_ENSEMBLE = "imagenet-80"
"""The default ``template``: class names of an open_clip text encoder are embedded as open_clip's zero-shot
classifier does (80 ImageNet templates, each L2-normalised, averaged, renormalised:
:meth:`scene_kd.teachers.text.OpenClipTextEncoder.encode_class_ensemble`); other encoders get DEFAULT_TEMPLATE.
Templates apply to class names (segmentation, the viewer's vocabulary and inspect, eval's class embeddings for
open_clip encoders), never to relevancy queries or negatives, which are encoded as typed (as LERF does)."""


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
    template: str = TEMPLATE_ENSEMBLE
    """Class-name prompts (segmentation, viewer vocabulary/inspect, eval); not for relevancy: "imagenet-80" (open_clip's
    80-template ensemble for real CLIP encoders, "a photo of a {}." for others) or one template with "{}"."""
    unknown_threshold: float | None = None
    """Segmentation: a point whose best cosine similarity is below this is labelled unknown (-1)."""
    precision: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    """Similarity arithmetic: float32 (exact) | float16 | bfloat16 | auto (bfloat16 for large fields on CPUs
    with native bf16 matmul, float32 otherwise)."""
    text_cache_size: int = 1024
    """Entries of a QuerySession's text-embedding LRU cache (least recently used prompts dropped first)."""
