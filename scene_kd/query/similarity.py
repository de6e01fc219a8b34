"""Cosine similarities between a FeatureField's features and text prompts, fast on float16-stored features.

The field stores features as float16 [N, D]. Per (field, source) we prepare once, lazily:
- the inverse L2 norm of every row (float32 [N], 0 for all-zero rows: uncovered points give similarity 0);
- for ``precision="bfloat16"`` a bfloat16 copy (CPUs with native bf16 matmul run it at memory speed,
  while torch's CPU float16 matmul does not).
A query is then one [N, D] x [D, P] matmul on un-normalised rows, scaled by the cached inverse norms.

Text embeddings are cached in one bounded LRU cache per caller (:class:`scene_kd.teachers.text.TextEmbeddingCache`;
the process-wide ``TEXT_CACHE`` unless a cache is passed, as a QuerySession does); this module keeps none.
"""

from __future__ import annotations

import functools
import logging
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from scene_kd.errors import RunStateError, SceneKDError
from scene_kd.feature_store import DenseRows
from scene_kd.field import FeatureField, ensemble_takes_fused
from scene_kd.teachers.text import TEXT_CACHE, OpenClipTextEncoder, OracleTextEncoder

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "float32", "float16", "bfloat16")
SOURCES_WITH_AUTO = ("auto", "fused", "distilled", "ensemble")
_CHUNK_ROWS = 65536
_AUTO_BF16_MIN_ELEMENTS = 1 << 23  # N*D above which "auto" uses the bf16 path (below, float32 is fast enough)


# ---- text --------------------------------------------------------------------------------------------

def load_encoder(field_: FeatureField, encoder: Any | None = None) -> Any:
    """The field's text encoder: ``encoder`` if given (its id must equal the field's), else rebuilt from the
    field's ``text_encoder`` id. Raises RunStateError on a mismatch of id or dimension."""
    if encoder is None:
        from scene_kd.teachers.text import load_text_encoder

        encoder = load_text_encoder(field_.text_encoder)
    if encoder.id != field_.text_encoder:
        raise RunStateError(
            f"field was made with text encoder {field_.text_encoder!r}; cannot query it with {encoder.id!r}"
        )
    if int(encoder.dim) != int(field_.dim):
        raise RunStateError(f"text encoder {encoder.id!r} gives {encoder.dim}-d vectors; the field has {field_.dim}-d features")
    return encoder


def check_prompt(text: Any, what: str = "query") -> str:
    """A stripped, non-empty prompt string or a SceneKDError."""
    if not isinstance(text, str):
        raise SceneKDError(f"{what} must be a string, got {type(text).__name__}")
    text = text.strip()
    if not text:
        raise SceneKDError(f"empty {what}: type some words, e.g. \"building\"")
    return text


def embed_prompts(encoder: Any, prompts: Sequence[str], cache: Any | None = None) -> torch.Tensor:
    """[P, D] float32 unit rows for ``prompts``, each (encoder.id, prompt) encoded once while it stays in ``cache``
    (a :class:`scene_kd.teachers.text.TextEmbeddingCache`; default the process-wide ``TEXT_CACHE``).

    scene-kd's own encoders look the cache up themselves (one cache, no second layer); any other object with
    ``id``, ``dim`` and ``encode_text(prompts)`` is wrapped in the same cache. Raises SceneKDError on an empty
    prompt or an encoder returning the wrong shape or NaN/Inf."""

    prompts = [check_prompt(p, "prompt") for p in prompts]
    cache = TEXT_CACHE if cache is None else cache
    if isinstance(encoder, (OracleTextEncoder, OpenClipTextEncoder)):
        vecs = encoder.encode_text(prompts, cache=cache)
    else:
        vecs = torch.from_numpy(cache.lookup(encoder.id, prompts, lambda missing: _encode_checked(encoder, missing)))
    vecs = torch.as_tensor(vecs).detach().to("cpu", torch.float32)
    return vecs / vecs.norm(dim=1, keepdim=True).clamp_min(1e-12)


def _encode_checked(encoder: Any, prompts: list[str]) -> torch.Tensor:
    vecs = torch.as_tensor(encoder.encode_text(prompts)).detach().to("cpu", torch.float32)
    if vecs.ndim != 2 or vecs.shape != (len(prompts), int(encoder.dim)):
        raise SceneKDError(f"text encoder {encoder.id!r} returned shape {tuple(vecs.shape)}, expected ({len(prompts)}, {encoder.dim})")
    if not torch.isfinite(vecs).all():
        raise SceneKDError(f"text encoder {encoder.id!r} returned NaN/Inf embeddings")
    return vecs


# ---- prepared features -------------------------------------------------------------------------------
@dataclass
class _Prepared:
    features: torch.Tensor  # the field's tensor this was made from (identity check)
    inv_norm: torch.Tensor  # [N] float32
    copies: dict[str, torch.Tensor] = field(default_factory=dict)  # precision -> [N, D] tensor


_PREPARED: dict[tuple[int, str], _Prepared] = {}


def _forget_field(key: int) -> None:
    for k in [k for k in _PREPARED if k[0] == key]:
        _PREPARED.pop(k, None)


def _store(field_: FeatureField, source: str) -> Any:
    store = field_.features.get(source)
    if store is None:
        raise RunStateError(f"this field has no {source} features (has: {', '.join(field_.sources) or 'none'})")
    if store.dim != field_.dim or store.n != len(field_):
        raise RunStateError(f"{source} features are {store.n} x {store.dim}; the field has {len(field_)} points "
                            f"of dim {field_.dim}")
    return store


def _inv_norm(store: Any, source: str) -> torch.Tensor:
    """The store's cached [N] inverse row norms; its NaN/Inf error names the source."""
    try:
        with torch.no_grad():
            return store.inv_norm()
    except RunStateError as e:
        raise RunStateError(f"{source} {e}") from None


def _prepared(field_: FeatureField, source: str) -> _Prepared:
    store = _store(field_, source)
    feats = store.data  # dense rows only (raw_dots sends the other stores their own way)
    key = (id(field_), source)
    prep = _PREPARED.get(key)
    if prep is not None and prep.features is feats:
        return prep
    if not any(k[0] == id(field_) for k in _PREPARED):
        weakref.finalize(field_, _forget_field, id(field_))
    prep = _Prepared(features=feats, inv_norm=_inv_norm(store, source))
    _PREPARED[key] = prep
    return prep


@functools.lru_cache(maxsize=1)
def cpu_has_fast_bf16() -> bool:
    """True when this CPU has native bfloat16 dot products (AVX512-BF16 or AMX), where torch's bf16 matmul
    runs at memory speed."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def resolve_precision(precision: str, n: int, dim: int, device: torch.device) -> str:
    if precision not in PRECISIONS:
        raise SceneKDError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    if device.type != "cpu":
        return "float16"
    if n * dim >= _AUTO_BF16_MIN_ELEMENTS and cpu_has_fast_bf16():
        return "bfloat16"
    return "float32"


def resolve_source(field_: FeatureField, source: str) -> str:
    """``auto`` -> the field's default (ensemble when both fused and distilled exist); others checked."""
    if source not in SOURCES_WITH_AUTO:
        raise SceneKDError(f"unknown feature source {source!r}; choose one of {', '.join(SOURCES_WITH_AUTO)}")
    have = field_.sources
    if not have:
        raise RunStateError("this field has no features")
    if source == "auto":
        return field_.default_source()
    if source not in have:
        raise RunStateError(f"this field has no {source} features (has: {', '.join(have)})")
    return source


def raw_dots(field_: FeatureField, source: str, text: torch.Tensor, *, precision: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """(dots [P, N] float32 = text @ features.T on un-normalised rows, inv_norm [N] float32) for a stored
    source ("fused" or "distilled"). ``text``: [P, D] float32 unit rows. Prompt-major, so reductions over
    prompts run along contiguous memory. Dense rows follow ``precision``; a mask mixture or low-rank store
    answers through its own (float32) ``dots``: each mask embedding / basis vector meets the text once."""
    store = _store(field_, source)
    if text.ndim != 2 or text.shape[1] != store.dim:
        raise SceneKDError(f"text embeddings have shape {tuple(text.shape)}; the field has {store.dim}-d features")
    dense = isinstance(store, DenseRows)
    prec = resolve_precision(precision, store.n, store.dim, store.data.device if dense else torch.device("cpu"))
    if prec == "float32" or not dense:  # every store's own dots (a mask mixture or low-rank codes: always)
        with torch.no_grad():
            dots = store.dots(text)
        return dots, _inv_norm(store, source).to(dots.device)
    prep = _prepared(field_, source)
    feats = prep.features
    n, d = feats.shape
    t = text.to(feats.device, torch.float32)
    out = torch.empty((t.shape[0], n), dtype=torch.float32, device=feats.device)
    with torch.no_grad():
        dtype = torch.float16 if prec == "float16" else torch.bfloat16
        mat = feats if feats.dtype == dtype else prep.copies.get(prec)
        if mat is None:
            mat = torch.empty((n, d), dtype=dtype, device=feats.device)
            for s in range(0, n, _CHUNK_ROWS):
                mat[s : s + _CHUNK_ROWS] = feats[s : s + _CHUNK_ROWS].to(torch.float32).to(dtype)
            prep.copies[prec] = mat
        out.copy_((mat @ t.T.to(dtype)).T)  # [N, P] matmul (the fast kernel), stored [P, N]
    return out, prep.inv_norm.to(out.device)


def similarities(field_: FeatureField, text: torch.Tensor, *, source: str = "auto", precision: str = "auto") -> torch.Tensor:
    """[N, P] cosine similarity of each point's features to each text row ([P, D] unit rows); a transposed view
    of prompt-major storage.

    ``ensemble``: per point, the fused or the distilled row, whichever has the higher max similarity over
    these P prompts (OpenScene's 2D-3D ensemble, as :meth:`FeatureField.features_for`)."""
    source = resolve_source(field_, source)
    if source != "ensemble":
        dots, inv = raw_dots(field_, source, text, precision=precision)
        return dots.mul_(inv).T
    fused, inv_f = raw_dots(field_, "fused", text, precision=precision)
    dist, inv_d = raw_dots(field_, "distilled", text, precision=precision)
    fused.mul_(inv_f)
    dist.mul_(inv_d)
    take_fused = ensemble_takes_fused(fused.amax(dim=0), dist.amax(dim=0), inv_f > 0)
    return torch.where(take_fused, fused, dist).T
