"""Query config (owned by scene_kd/query)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class QueryConfig:
    negatives: tuple[str, ...] = ("object", "things", "stuff", "texture")
    """Canonical negatives for LERF relevancy."""
    temperature: float = 10.0
    threshold: float = 0.5
    """Relevancy above which a point counts as a hit."""
    source: str = "auto"
    """fused | distilled | ensemble | auto (ensemble when available)."""
    template: str = "a photo of a {}."
