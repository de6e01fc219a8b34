"""Open-vocabulary segmentation: argmax over prompt-templated class names, with an optional "unknown".

label_i = argmax_c s_ic, s_ic = max over the members m of class c of cos(f_i, t_m), t_m = text embedding of
member m (open_clip's 80-template ensemble by default, or one template; a plain class name is its own one member;
groups: :mod:`scene_kd.query.labels`); confidence_i = softmax(tau * s_i.)[label_i]; label_i = -1 (unknown) where
max_c s_ic < unknown_threshold. With the oracle text encoder a member the field cannot express is refused
(:func:`scene_kd.query.labels.check_expressible`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from scene_kd.errors import SceneKDError
from scene_kd.field import FeatureField
from scene_kd.query.config import DEFAULT_TEMPLATE, TEMPLATE_ENSEMBLE
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
    """``template`` with "{}" replaced by ``name`` (None or "": ``name`` as is; "imagenet-80": the one-template
    stand-in DEFAULT_TEMPLATE); SceneKDError without "{}"."""
    if not template:
        return name
    if template == TEMPLATE_ENSEMBLE:
        template = DEFAULT_TEMPLATE
    if "{}" not in template:
        raise SceneKDError(f"prompt template {template!r} has no '{{}}' for the class name")
    return template.replace("{}", name)


def embed_class_names(encoder: Any, names: Sequence[str], template: str | None, cache: Any | None = None) -> torch.Tensor:
    """[C, D] float32 unit text embeddings of class ``names``: for ``template == "imagenet-80"`` and an encoder with
    ``encode_class_ensemble`` (open_clip) open_clip's 80-template ensemble, one cached vector per class; otherwise
    each name in ``template`` (:func:`apply_template`) through :func:`embed_prompts`."""
    names = list(names)
    if template == TEMPLATE_ENSEMBLE and hasattr(encoder, "encode_class_ensemble"):
        vecs = torch.as_tensor(encoder.encode_class_ensemble(names, cache=cache)).to("cpu", torch.float32)
        return vecs / vecs.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return embed_prompts(encoder, [apply_template(template, n) for n in names], cache)


def segment(
    field: FeatureField,
    labels: str | Sequence[str] | Vocabulary,
    *,
    source: str = "auto",
    template: str | None = TEMPLATE_ENSEMBLE,
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

    source: fused | distilled | ensemble | auto.   template: "imagenet-80" (open_clip's 80-template ensemble for
    open_clip encoders, else "a photo of a {}."), or "{}" replaced by each class name (None: as is).
    unknown_threshold: cosine similarity below which a point is unknown (-1); None keeps every argmax.
    cache: the TextEmbeddingCache for the prompts (default the process-wide one).
    Entry points call this through :class:`scene_kd.query.session.QuerySession` (the run's QueryConfig).
    """
    vocab = parse_vocabulary(labels)
    if unknown_threshold is not None and not np.isfinite(unknown_threshold):
        raise SceneKDError(f"unknown_threshold must be a finite number, got {unknown_threshold!r}")
    encoder = load_encoder(field, encoder)
    check_expressible(field, encoder, vocab, [apply_template(template, m) for m in vocab.flat])
    emb = embed_class_names(encoder, vocab.flat, template, cache)
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
