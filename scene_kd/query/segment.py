"""Open-vocabulary segmentation: argmax over prompt-templated class names, with an optional "unknown".

label_i = argmax_c s_ic, s_ic = max over the members m of class c of cos(f_i, t_m), t_m = text embedding of
template.format(m) (a plain class name is its own one member; groups: :mod:`scene_kd.query.labels`);
confidence_i = softmax(tau * s_i.)[label_i]; label_i = -1 (unknown) where max_c s_ic < unknown_threshold.
With the oracle text encoder a member the field cannot express is refused (:func:`scene_kd.query.labels.check_expressible`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from scene_kd.errors import SceneKDError
from scene_kd.field import FeatureField
from scene_kd.query.config import DEFAULT_TEMPLATE
from scene_kd.query.labels import Vocabulary, check_expressible, group_scores, parse_vocabulary
from scene_kd.query.similarity import embed_prompts, load_encoder, similarities

UNKNOWN = -1


def parse_labels(labels: str | Sequence[str]) -> list[str]:
    """Class names from "a, b,c" or a list; strips blanks, refuses empty names and duplicates."""
    items = labels.split(",") if isinstance(labels, str) else list(labels)
    names = []
    for item in items:
        if not isinstance(item, str):
            raise SceneKDError(f"labels must be strings, got {type(item).__name__}")
        names.append(" ".join(item.split()))
    if not names or all(not n for n in names):
        raise SceneKDError("no labels given: pass comma-separated class names, e.g. road,building,tree")
    if any(not n for n in names):
        raise SceneKDError(f"empty label in {labels!r}")
    seen = set()
    for n in names:
        if n.lower() in seen:
            raise SceneKDError(f"label {n!r} given twice")
        seen.add(n.lower())
    return names


def apply_template(template: str | None, name: str) -> str:
    """``template`` with "{}" replaced by ``name`` (None or "": ``name`` as is); SceneKDError without "{}"."""
    if not template:
        return name
    if "{}" not in template:
        raise SceneKDError(f"prompt template {template!r} has no '{{}}' for the class name")
    return template.replace("{}", name)


def segment(
    field: FeatureField,
    labels: str | Sequence[str] | Vocabulary,
    *,
    source: str = "auto",
    template: str | None = DEFAULT_TEMPLATE,
    unknown_threshold: float | None = None,
    temperature: float = 10.0,
    encoder: Any | None = None,
    precision: str = "auto",
    cache: Any | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(label_index [N] int64 in [-1, C), confidence [N] float32 in [0, 1]) for the C classes of ``labels``
    (``"road,ground=sidewalk+grass"``, a list of such items, or a parsed Vocabulary; a group scores the max of its
    members, :mod:`scene_kd.query.labels`). Raises SceneKDError for a grammar error or, with the oracle text
    encoder, a member the field cannot express.

    source: fused | distilled | ensemble | auto.   template: "{}" is replaced by each class name (None: as is).
    unknown_threshold: cosine similarity below which a point is unknown (-1); None keeps every argmax.
    cache: the TextEmbeddingCache for the prompts (default the process-wide one).
    Entry points call this through :class:`scene_kd.query.session.QuerySession` (the run's QueryConfig).
    """
    vocab = parse_vocabulary(labels)
    if unknown_threshold is not None and not np.isfinite(unknown_threshold):
        raise SceneKDError(f"unknown_threshold must be a finite number, got {unknown_threshold!r}")
    encoder = load_encoder(field, encoder)
    prompts = [apply_template(template, m) for m in vocab.flat]
    check_expressible(field, encoder, vocab, prompts)
    emb = embed_prompts(encoder, prompts, cache)
    sims = group_scores(similarities(field, emb, source=source, precision=precision).T.contiguous(), vocab)  # [C, N]
    best, index = sims.max(dim=0)
    confidence = torch.softmax(sims.mul_(float(temperature)), dim=0).gather(0, index[None, :])[0]
    if unknown_threshold is not None:
        index = torch.where(best < float(unknown_threshold), torch.full_like(index, UNKNOWN), index)
    return index, confidence


def label_counts(label_index: torch.Tensor | np.ndarray, names: Sequence[str]) -> tuple[dict[str, int], int]:
    """({name: points labelled with it} for every name, points labelled unknown (-1))."""
    idx = np.asarray(label_index.cpu() if isinstance(label_index, torch.Tensor) else label_index).reshape(-1)
    counts = np.bincount(idx[idx >= 0], minlength=len(names))
    return {n: int(c) for n, c in zip(names, counts[: len(names)], strict=True)}, int((idx < 0).sum())
