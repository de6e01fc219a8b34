"""LERF-style relevancy of every point to a text query, with canonical negatives.

rel_i(q) = min over negatives n of softmax(tau * [s_iq, s_in])_0, s = cosine similarity.
Since softmax([a, b])_0 = sigmoid(a - b) is increasing in a - b, this equals
sigmoid(tau * (s_iq - max_n s_in)), which is what we compute (one matmul with P = 1 + #negatives columns).
0.5 means "no more like the query than like the most similar negative"; points with all-zero features
(never seen, not distilled) get exactly 0.5.

A group query ``"ground=road+sidewalk+grass"`` (:mod:`scene_kd.query.labels`) scores s_iq = max over its members,
i.e. the max of the members' relevancies, as segmentation scores a group. With the oracle text encoder a query
(or member) the field cannot express is refused (:func:`scene_kd.query.labels.check_expressible`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from scene_kd.errors import SceneKDError
from scene_kd.field import FeatureField
from scene_kd.query.config import DEFAULT_NEGATIVES
from scene_kd.query.labels import Vocabulary, check_expressible, parse_vocabulary
from scene_kd.query.similarity import (
    check_prompt,
    embed_prompts,
    load_encoder,
    raw_dots,
    resolve_source,
    similarities,
)


def relevancy_from_similarities(sims: torch.Tensor, temperature: float = 10.0) -> torch.Tensor:
    """[N] relevancy from [N, 1 + K] cosine similarities (column 0 the query, the rest negatives)."""
    if sims.ndim != 2 or sims.shape[1] < 2:
        raise SceneKDError("relevancy needs the query and at least one negative")
    return torch.sigmoid(temperature * (sims[:, 0] - sims[:, 1:].amax(dim=1)))


def query_vocabulary(text: str) -> Vocabulary:
    """The query as a one-class Vocabulary: a group ``"name=a+b"`` or the text itself as one member (commas in a
    plain query are words, not a list). SceneKDError for a malformed group or several classes."""
    text = check_prompt(text)
    if "=" not in text:
        return Vocabulary((text,), ((text,),))
    vocab = parse_vocabulary(text)
    if len(vocab.names) != 1:
        raise SceneKDError(f"a query is one class or one group (e.g. ground=road+sidewalk), got {len(vocab.names)}")
    return vocab


def relevancy(
    field: FeatureField,
    text: str,
    *,
    source: str = "auto",
    negatives: Sequence[str] = DEFAULT_NEGATIVES,
    temperature: float = 10.0,
    encoder: Any | None = None,
    precision: str = "auto",
    cache: Any | None = None,
) -> torch.Tensor:
    """Relevancy [N] float32 in (0, 1) of each point of ``field`` to ``text``.

    source: fused | distilled | ensemble | auto (ensemble when the field has both).
    negatives: canonical negative prompts (LERF: object, things, stuff, texture); at least one.
    encoder: a text encoder object (``id``, ``dim``, ``encode_text``); default: rebuilt from the field's
    ``text_encoder`` id. A different id than the field's is refused (RunStateError).
    precision: float32 | float16 | bfloat16 | auto (see scene_kd.query.similarity).
    cache: the TextEmbeddingCache for the prompts (default the process-wide one).
    ``text`` and ``negatives`` are encoded as given: relevancy applies no prompt template (as LERF).
    Entry points call this through :class:`scene_kd.query.session.QuerySession` (the run's QueryConfig).
    """
    vocab = query_vocabulary(text)
    members = list(vocab.flat)
    negatives = [check_prompt(n, "negative prompt") for n in negatives]
    if not negatives:
        raise SceneKDError("relevancy needs at least one negative prompt")
    if not (isinstance(temperature, (int, float)) and temperature > 0 and temperature < float("inf")):
        raise SceneKDError(f"temperature must be a positive number, got {temperature!r}")
    encoder = load_encoder(field, encoder)
    check_expressible(field, encoder, vocab, members)
    emb = embed_prompts(encoder, [*members, *negatives], cache)
    source = resolve_source(field, source)
    m = len(members)
    if source == "ensemble":
        sims = similarities(field, emb, source=source, precision=precision)
        if m > 1:  # a group: its best member is the query column
            sims = torch.cat([sims[:, :m].amax(dim=1, keepdim=True), sims[:, m:]], dim=1)
        return relevancy_from_similarities(sims, temperature)
    # fast path: the max over negatives (and a group's members) commutes with the (positive) per-row inverse norm
    dots, inv = raw_dots(field, source, emb, precision=precision)  # [M + K, N]
    margin = dots[:m].amax(dim=0) - dots[m:].amax(dim=0)
    return torch.sigmoid_(margin.mul_(inv).mul_(float(temperature)))
