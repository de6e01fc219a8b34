"""One query session per run: the FeatureField, its text encoder, the run's QueryConfig and one bounded cache.

Every entry point that turns words into per-point scores (the ``query``/``segment``/``grasp``/``grasp-serve``
verbs, the viewer, the grasp API and service, batch labelling, eval's class embeddings) opens a
:class:`QuerySession` and calls its methods, so the same run and prompt give the same answer everywhere:

- :meth:`QuerySession.relevancy`: LERF relevancy with the config's ``negatives``, ``temperature``, ``precision``
  and ``source`` (:func:`scene_kd.query.relevancy.relevancy`). The query and negatives are encoded as typed:
  relevancy applies no prompt template.
- :meth:`QuerySession.segment`: vocabulary segmentation with the config's ``template`` (open_clip's 80-template
  ensemble, :data:`scene_kd.query.config.TEMPLATE_ENSEMBLE`, unless the run sets one template), ``unknown_threshold`` and
  ``temperature`` (:func:`scene_kd.query.segment.segment`).
- :meth:`QuerySession.embed`: text embeddings through the session's LRU cache of ``text_cache_size`` entries
  (:class:`scene_kd.teachers.text.TextEmbeddingCache`), the only cache these prompts pass through.

The run's QueryConfig is read in one place, :func:`scene_kd.config.read_query_config` (the config layer sits
above this one, so front-ends read it and pass it in).
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from scene_kd.errors import SceneKDError
from scene_kd.field import FeatureField
from scene_kd.query.config import QueryConfig
from scene_kd.query.labels import group_scores, parse_vocabulary
from scene_kd.query.relevancy import relevancy
from scene_kd.query.segment import apply_template, embed_class_names, segment
from scene_kd.query.similarity import embed_prompts, load_encoder, similarities
from scene_kd.teachers.text import TextEmbeddingCache


@dataclass
class QuerySession:
    """Queries on one FeatureField with one QueryConfig; thread-safe (one query at a time).

    Build it with :meth:`open`. ``encoder`` is the field's text encoder (``id``, ``dim``, ``encode_text``);
    it is loaded on first use for an empty field. ``cache`` holds at most ``config.text_cache_size`` prompts.
    """

    field: FeatureField
    config: QueryConfig
    encoder: Any | None = None
    run_dir: Path | None = None
    cache: TextEmbeddingCache = dataclasses.field(init=False)
    _lock: threading.RLock = dataclasses.field(init=False, repr=False, default_factory=threading.RLock)

    def __post_init__(self) -> None:
        self.cache = TextEmbeddingCache(self.config.text_cache_size)
        if self.config.template:
            apply_template(self.config.template, "x")  # refuses a template without "{}" now, not at first use
        if self.encoder is not None or len(self.field):
            self.encoder = load_encoder(self.field, self.encoder)

    @classmethod
    def open(cls, run_dir: str | Path, *, query: QueryConfig, expect_text_encoder: str | None = None,
             field: FeatureField | None = None, encoder: Any | None = None) -> QuerySession:
        """The session of a run folder.

        query: the QueryConfig to use (front-ends pass the run's, :func:`scene_kd.config.read_query_config`, with
        their command-line overrides applied).   expect_text_encoder: refuse a field made with another
        text encoder id (RunStateError).   field: an in-memory FeatureField to query instead of RUN/field.*
        (batch's per-tile student features, scripts).   encoder: a text encoder object instead of the one rebuilt
        from the field's id (must have the same id).
        """
        cfg = query
        if field is None:
            field = FeatureField.load(run_dir, expect_text_encoder=expect_text_encoder)
        elif expect_text_encoder not in (None, field.text_encoder):
            raise SceneKDError(f"field was made with text encoder {field.text_encoder!r}, not {expect_text_encoder!r}")
        return cls(field=field, config=cfg, encoder=encoder, run_dir=Path(run_dir))

    def _encoder(self) -> Any:
        if self.encoder is None:
            self.encoder = load_encoder(self.field)
        return self.encoder

    def embed(self, prompts: Sequence[str]) -> torch.Tensor:
        """[P, D] float32 unit text embeddings of ``prompts`` as given (no template), through the session cache."""

        with self._lock:
            return embed_prompts(self._encoder(), list(prompts), self.cache)

    def class_prompts(self, names: Sequence[str]) -> list[str]:
        """The one-template prompts for class names (the ensemble setting: "a photo of a {}.")."""

        return [apply_template(self.config.template, n) for n in names]

    def class_text(self, names: Sequence[str]) -> torch.Tensor:
        """[C, D] float32 unit embeddings of class names by the config's template (default: open_clip's 80-template
        ensemble for open_clip encoders, :func:`scene_kd.query.segment.embed_class_names`), session-cached."""

        with self._lock:
            return embed_class_names(self._encoder(), list(names), self.config.template,
                                     self.cache)

    def relevancy(self, text: str, *, source: str | None = None) -> torch.Tensor:
        """[N] float32 LERF relevancy of every point to ``text`` (config: negatives, temperature, precision;
        ``source`` defaults to the config's). Raises SceneKDError / RunStateError as :func:`relevancy`."""

        c = self.config
        with self._lock:
            return relevancy(self.field, text, source=source or c.source, negatives=list(c.negatives),
                             temperature=c.temperature, encoder=self._encoder(), precision=c.precision,
                             cache=self.cache)

    def segment(self, labels: str | Sequence[str] | Any, *, source: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(label_index [N] int64 in [-1, C), confidence [N] float32) over the C classes of ``labels`` (names or
        groups, ``"ground=road+grass,building"``, or a parsed :class:`scene_kd.query.labels.Vocabulary`; config:
        template, unknown_threshold, temperature, precision; ``source`` defaults to the config's)."""

        c = self.config
        with self._lock:
            return segment(self.field, labels, source=source or c.source, template=c.template,
                           unknown_threshold=c.unknown_threshold, temperature=c.temperature,
                           encoder=self._encoder(), precision=c.precision, cache=self.cache)

    def point_similarities(self, index: int, names: Sequence[str] | Any, *, source: str | None = None) -> torch.Tensor:
        """[C] float32 cosine similarity of field point ``index`` to each templated class name (exact float32); a
        group (``names`` as for :meth:`segment`) scores the max of its members, as segmentation does."""

        fld = self.field
        if not 0 <= int(index) < len(fld):
            raise SceneKDError(f"point index {index} out of range for {len(fld)} points")
        vocab = parse_vocabulary(names)
        emb = self.class_text(vocab.flat)
        one = FeatureField(positions=fld.positions[index : index + 1], origin=fld.origin,
                           features={k: v.rows(torch.tensor([int(index)])) for k, v in fld.features.items()}, teacher=fld.teacher,
                           text_encoder=fld.text_encoder, dim=fld.dim)
        sims = similarities(one, emb, source=source or self.config.source, precision="float32")  # [1, M]
        return group_scores(sims.T.contiguous(), vocab)[:, 0]

    def class_embeddings(self, vocabulary: Sequence[str], label_names: dict[int, str] | None = None) -> torch.Tensor:
        """[C, D] float32 unit text embeddings of an evaluation vocabulary.

        An encoder with ``encode_class_names`` (the oracle) embeds the field's whole label map the way the oracle
        teacher did, so classes whose names share a concept stay distinct; any other encoder (open_clip) embeds
        the class names by the config's template (:meth:`class_text`) through the session cache."""
        vocabulary = list(vocabulary)
        encoder = self._encoder()
        if not hasattr(encoder, "encode_class_names"):
            return self.class_text(vocabulary)
        names = dict(label_names or {})
        all_names = [names[i] for i in sorted(names)]
        all_names += [v for v in dict.fromkeys(vocabulary) if v not in all_names]
        vecs = torch.as_tensor(encoder.encode_class_names(all_names), dtype=torch.float32)
        first: dict[str, int] = {}
        for k, name in enumerate(all_names):
            first.setdefault(name, k)
        out = vecs[[first[v] for v in vocabulary]]
        return out / out.norm(dim=1, keepdim=True).clamp_min(1e-12)
