"""Text encoders: the oracle's fixed concept vectors and open_clip's text tower, rebuilt from an id.

Ids (stored in features.safetensors and FeatureField.text_encoder):
- ``oracle:v2:d{D}``: a fixed table of canonical concepts with synonyms. Like CLIP's embeddings, the concept
  vectors share one common direction c: concept_i = (u_i + c) / sqrt(2) with u_i, c orthonormal, so two
  distinct concepts have cosine 0.5. LERF's generic canonical negatives ("object", "things", "stuff",
  "texture", ...) embed close to c (cosine ~0.70 with every concept), as generic words do in CLIP, so LERF
  relevancy is calibrated: a point is relevant (> 0.5) only where the query dominates its feature. Anything
  else maps to a deterministic hash-seeded unit vector orthogonal to c and to every concept ("far from all").
- ``open_clip:{model}:{pretrained}``: open_clip's text tower (``pretrained`` = ``random`` for seeded random
  init, tests only).

Text embeddings are cached per (encoder id, prompt) in one bounded LRU cache (:class:`TextEmbeddingCache`,
``TEXT_CACHE_SIZE`` entries, least recently used dropped first); a caller may pass its own cache instead
(a :class:`scene_kd.query.session.QuerySession` does, sized by its ``QueryConfig.text_cache_size``).
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from functools import lru_cache

import numpy as np
import torch

from scene_kd.errors import SceneKDError
from scene_kd.teachers.base import TextEncoder, l2_normalise

# Canonical concept -> synonyms (the canonical name is a synonym of itself). The ORDER is part of the id
# "oracle:v1": append new concepts only in a new version.
CONCEPTS: dict[str, tuple[str, ...]] = {
    "car": ("cars", "vehicle", "vehicles", "parked car", "parked cars", "automobile", "automobiles"),
    "tree": ("trees", "vegetation", "high vegetation", "tall vegetation"),
    "building": ("buildings", "roof", "roofs", "house", "houses", "facade", "facades"),
    "road": ("roads", "street", "streets", "road surface", "traffic road", "asphalt"),
    "ground": ("terrain", "soil", "bare ground", "earth"),
    "grass": ("lawn", "low vegetation"),
    "pole": ("poles", "street light", "street lights", "streetlight", "lamp post", "street lamp"),
    "sidewalk": ("sidewalks", "footpath", "pavement", "walkway"),
    "water": ("river", "lake"),
    "wire": ("wires", "power line", "power lines", "wire conductor", "cable"),
    "shrub": ("shrubs", "bush", "bushes", "medium vegetation", "hedge"),
    "wall": ("walls", "fence"),
    "bridge": ("bridge deck",),
    "rail": ("railway", "railroad", "rail track"),
    "parking": ("parking lot",),
    "transmission tower": ("pylon",),
    "person": ("people", "pedestrian"),
    "bike": ("bicycle",),
    "mug": ("cup", "coffee mug"),
    "mug handle": ("handle of the mug", "cup handle"),
    "bowl": ("bowls",),
    "box": ("boxes", "cardboard box"),
    "bottle": ("bottles",),
    "banana": ("bananas",),
    "apple": ("apples",),
    "table": ("tables", "desk", "tabletop"),
    "chair": ("chairs",),
    "floor": (),
    "plate": ("plates",),
    "book": ("books",),
    "can": ("cans", "tin can"),
    "shelf": ("shelves",),
}
ORACLE_VERSION = "v2"
# Generic words (LERF canonical negatives and kin): similar to everything, like in CLIP.
GENERIC_WORDS = ("object", "objects", "thing", "things", "stuff", "texture", "textures", "something")
_ORACLE_SEED = 20240611
ENSEMBLE = "imagenet-80"
"""Name of open_clip's 80 ImageNet prompt templates ensemble for class names (QueryConfig.template)."""

_TEMPLATE = re.compile(
    r"^(?:(?:a|an|the)\s+)?(?:photo|picture|image|rendering|render|point cloud|3d scan)\s+of\s+(?:(?:a|an|the)\s+)?"
)
_ARTICLE = re.compile(r"^(?:a|an|the)\s+")


def normalise_prompt(prompt: str) -> str:
    """Lowercase, strip templates like "a photo of a {}." and articles, collapse spaces and punctuation."""
    s = prompt.lower().strip()
    s = re.sub(r"[^\w\s'-]", " ", s)
    s = re.sub(r"[\s_]+", " ", s).strip()
    s = _TEMPLATE.sub("", s)
    s = _ARTICLE.sub("", s)
    return s.strip()


def _synonym_table() -> dict[str, int]:
    table: dict[str, int] = {}
    for k, (name, syns) in enumerate(CONCEPTS.items()):
        for phrase in (name, *syns):
            table[normalise_prompt(phrase)] = k
    return table


_SYNONYMS = _synonym_table()


def match_concept(prompt: str) -> tuple[int | None, str]:
    """(concept index or None, how): exact synonym match, else the longest concept phrase contained in the
    prompt as whole words ("red mug handle" -> "mug handle"), else None."""
    s = normalise_prompt(prompt)
    if s in _SYNONYMS:
        return _SYNONYMS[s], "exact"
    if s.endswith("s") and s[:-1] in _SYNONYMS:
        return _SYNONYMS[s[:-1]], "exact"
    words = s.split()
    best: tuple[int, int, int] | None = None  # (-length, start, concept)
    for n in range(len(words), 0, -1):
        for i in range(len(words) - n + 1):
            phrase = " ".join(words[i : i + n])
            if phrase in _SYNONYMS:
                cand = (-n, i, _SYNONYMS[phrase])
                best = cand if best is None or cand < best else best
        if best is not None:
            break
    return (best[2], "contained") if best else (None, "none")


class OracleTextEncoder:
    """Fixed concept vectors; see the module docstring. ``dim`` must exceed the number of concepts."""

    def __init__(self, dim: int = 64):
        k = len(CONCEPTS)
        if dim < k + 5:
            raise SceneKDError(f"oracle dim {dim} too small: needs at least {k + 5} for {k} concepts")
        self.dim = int(dim)
        self.id = f"oracle:{ORACLE_VERSION}:d{self.dim}"
        rng = np.random.default_rng(_ORACLE_SEED + self.dim)
        q, _ = np.linalg.qr(rng.standard_normal((self.dim, self.dim)))
        self._basis = q.T.astype(np.float64)  # rows orthonormal
        self._unique = self._basis[:k]  # [K, D] each concept's own direction u_i
        self._common = self._basis[k]  # [D] the direction c all concepts share
        self._concepts = (self._unique + self._common) / np.sqrt(2.0)  # [K, D] unit rows, pairwise cosine 0.5

    def concept_vectors(self) -> torch.Tensor:
        return torch.from_numpy(self._concepts.astype(np.float32))

    def hashed_vector(self, phrase: str) -> np.ndarray:
        """A deterministic unit vector for ``phrase``, orthogonal to every concept vector and to c."""
        seed = int.from_bytes(hashlib.sha256(normalise_prompt(phrase).encode()).digest()[:8], "little")
        v = np.random.default_rng(seed).standard_normal(self.dim)
        shared = self._basis[: len(CONCEPTS) + 1]
        v -= shared.T @ (shared @ v)
        return v / np.linalg.norm(v)

    def generic_vector(self, phrase: str) -> np.ndarray:
        """A generic word: mostly c plus a little of its own hashed direction (cosine ~0.70 to each concept)."""
        v = self._common + 0.1 * self.hashed_vector(phrase)
        return v / np.linalg.norm(v)

    def vector(self, prompt: str) -> np.ndarray:
        k, _ = match_concept(prompt)
        if k is not None:
            return self._concepts[k]
        if normalise_prompt(prompt) in GENERIC_WORDS:
            return self.generic_vector(prompt)
        return self.hashed_vector(prompt)

    def encode_text(self, prompts: Sequence[str], *, cache: TextEmbeddingCache | None = None) -> torch.Tensor:
        """[P, D] float32 unit rows; cached in ``cache`` (default: the process-wide ``TEXT_CACHE``)."""
        prompts = _check_prompts(prompts)
        return _cached_encode(self.id, prompts, lambda missing: np.stack([self.vector(p) for p in missing]), cache)

    def encode_class_names(self, names: Sequence[str]) -> torch.Tensor:
        """[C, D] unit rows for a label map's class names, all distinct: a class whose concept another class
        already holds (exact matches win over contained ones, then the earlier name) gets its hashed vector."""
        names = list(names)
        matches = [match_concept(n) for n in names]
        order = sorted(range(len(names)), key=lambda i: (matches[i][1] != "exact", i))
        taken: set[int] = set()
        out = np.zeros((len(names), self.dim))
        for i in order:
            k, _ = matches[i]
            if k is not None and k not in taken:
                taken.add(k)
                out[i] = self._concepts[k]
            else:
                out[i] = self.hashed_vector(names[i])
        return torch.from_numpy(out.astype(np.float32))


class OpenClipTextEncoder:
    """open_clip's text tower; prompts are encoded as given (templating is the caller's choice), class names
    optionally as open_clip's 80-template zero-shot ensemble (:meth:`encode_class_ensemble`)."""

    def __init__(self, bundle, encoder_id: str):
        self.bundle = bundle
        self.id = encoder_id
        self.dim = bundle.dim
        self.model_calls = 0

    def _encode(self, prompts: list[str]) -> np.ndarray:
        """[P, D] float32 unit rows, 256 prompts per text-tower forward."""
        out = []
        with torch.inference_mode():
            for i in range(0, len(prompts), 256):
                tokens = self.bundle.tokenizer(prompts[i : i + 256]).to(self.bundle.device)
                self.model_calls += 1
                out.append(l2_normalise(self.bundle.model.encode_text(tokens).float()).cpu().numpy())
        return np.concatenate(out)

    def encode_text(self, prompts: Sequence[str], *, cache: TextEmbeddingCache | None = None) -> torch.Tensor:
        """[P, D] float32 unit rows; cached in ``cache`` (default: the process-wide ``TEXT_CACHE``)."""
        return _cached_encode(self.id, _check_prompts(prompts), self._encode, cache)

    def encode_class_ensemble(self, names: Sequence[str], *, cache: TextEmbeddingCache | None = None) -> torch.Tensor:
        """[C, D] float32 unit rows: each class name through open_clip's 80 ImageNet templates
        (``open_clip.zero_shot_metadata.OPENAI_IMAGENET_TEMPLATES``), each embedding L2-normalised, averaged,
        L2-normalised again: open_clip's ``build_zero_shot_classifier`` recipe (CLIP, Radford et al. 2021, §3.1.4).
        One entry per class in ``cache`` under the id ``"{id}#imagenet-80"`` (the 80 prompts are not cached)."""
        from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES as templates

        def run(missing: list[str]) -> np.ndarray:
            vecs = self._encode([t(n) for n in missing for t in templates]).reshape(len(missing), len(templates), -1)
            mean = vecs.mean(1)
            return mean / np.linalg.norm(mean, axis=1, keepdims=True).clip(1e-12)

        return _cached_encode(f"{self.id}#{ENSEMBLE}", _check_prompts(names), run, cache)


class TextEmbeddingCache:
    """A bounded, thread-safe LRU cache of text embeddings keyed by (encoder id, prompt).

    Holds at most ``maxsize`` float32 [D] vectors; a lookup refreshes an entry, and inserting past ``maxsize``
    drops the least recently used entries first (so a long-running viewer or grasp service stays bounded).
    ``hits``: prompts served from the cache; ``misses``: distinct prompts encoded. Raises SceneKDError for
    ``maxsize`` < 1.
    """

    def __init__(self, maxsize: int):
        if not isinstance(maxsize, int) or isinstance(maxsize, bool) or maxsize < 1:
            raise SceneKDError(f"text cache size must be a positive integer, got {maxsize!r}")
        self.maxsize = maxsize
        self.hits = 0
        self.misses = 0
        self._data: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: tuple[str, str]) -> bool:
        return key in self._data

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def lookup(self, encoder_id: str, prompts: Sequence[str],
               compute: Callable[[list[str]], np.ndarray | torch.Tensor]) -> np.ndarray:
        """[P, D] float32 embeddings of ``prompts`` (as ``compute`` returned them, not re-normalised);
        ``compute(missing)`` -> [M, D] is called once, with the distinct prompts not cached."""
        distinct = list(dict.fromkeys(prompts))
        with self._lock:
            found: dict[str, np.ndarray] = {}
            for p in distinct:
                v = self._data.get((encoder_id, p))
                if v is not None:
                    self._data.move_to_end((encoder_id, p))
                    found[p] = v
            missing = [p for p in distinct if p not in found]
            self.hits += sum(1 for p in prompts if p in found)
            self.misses += len(missing)
        if missing:
            vecs = compute(missing)
            vecs = vecs.detach().cpu().numpy() if isinstance(vecs, torch.Tensor) else np.asarray(vecs)
            if vecs.ndim != 2 or len(vecs) != len(missing):
                raise SceneKDError(f"text encoder {encoder_id!r} returned shape {vecs.shape} for {len(missing)} prompts")
            with self._lock:
                for p, v in zip(missing, vecs, strict=True):
                    found[p] = self._data[(encoder_id, p)] = np.array(v, dtype=np.float32)
                    self._data.move_to_end((encoder_id, p))
                while len(self._data) > self.maxsize:
                    self._data.popitem(last=False)
        return np.stack([found[p] for p in prompts])


TEXT_CACHE_SIZE = 4096
"""Entries of the process-wide text-embedding cache (4096 x 512-d float32 = 8 MiB for CLIP ViT-B)."""
TEXT_CACHE = TextEmbeddingCache(TEXT_CACHE_SIZE)


def _check_prompts(prompts: Sequence[str]) -> list[str]:
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    if not prompts:
        raise SceneKDError("no text prompts given")
    for p in prompts:
        if not isinstance(p, str) or not p.strip():
            raise SceneKDError(f"text prompts must be non-empty strings, got {p!r}")
    return prompts


def _cached_encode(encoder_id: str, prompts: list[str], compute, cache: TextEmbeddingCache | None = None
                   ) -> torch.Tensor:
    out = (TEXT_CACHE if cache is None else cache).lookup(encoder_id, prompts, compute)
    return l2_normalise(torch.from_numpy(out))


def parse_text_encoder_id(text_encoder_id: str) -> tuple[str, list[str]]:
    kind, _, rest = text_encoder_id.partition(":")
    return kind, rest.split(":") if rest else []


@lru_cache(maxsize=8)
def load_text_encoder(text_encoder_id: str, *, weights: str | None = None, device: str = "cpu") -> TextEncoder:
    """Rebuild the text encoder named by ``text_encoder_id`` (see the module docstring); cached per id."""
    kind, parts = parse_text_encoder_id(text_encoder_id)
    if kind == "oracle":
        if len(parts) != 2 or parts[0] != ORACLE_VERSION or not re.fullmatch(r"d\d+", parts[1]):
            raise SceneKDError(f"unknown oracle text encoder {text_encoder_id!r}; expected oracle:{ORACLE_VERSION}:dN")
        return OracleTextEncoder(int(parts[1][1:]))
    if kind == "open_clip":
        if len(parts) != 2:
            raise SceneKDError(f"bad text encoder id {text_encoder_id!r}; expected open_clip:MODEL:PRETRAINED")
        from scene_kd.teachers.clip import load_open_clip, resolve_clip_weights

        model, pretrained = parts
        path = resolve_clip_weights(model, pretrained, weights)
        bundle = load_open_clip(model, path, device=device, pretrained=pretrained)
        return OpenClipTextEncoder(bundle, text_encoder_id)
    raise SceneKDError(f"unknown text encoder {text_encoder_id!r}; expected oracle:... or open_clip:...")
