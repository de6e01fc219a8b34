"""FeatureField: per-point (or per-Gaussian) language features and the metadata needed to query them.

On disk: ``RUN/field.safetensors`` with
  ``positions`` float32 [N, 3] (local), the fused and distilled features (either may be absent) in one of the
  stores of scene_kd/feature_store.py under ``features.fused`` / ``features.distilled``: dense float16 [N, D]
  (``features.fused``), a mask mixture (``features.fused.bank`` [M, D] float16, ``.inv_norm`` [N] float32 and
  per granularity g ``.crow.g`` [N+1] int32, ``.col.g`` / ``.val.g`` [nnz] int32 / float32) or low-rank codes
  (``features.distilled.codes`` [N, r] float16, ``.decoder`` [r, D] float32), ``coverage`` int32 [N] (views
  that saw each point), optional ``rgb`` uint8 [N, 3] and ``labels`` int32 [N] (ground truth, for evaluation);
and ``RUN/field.json`` with format_version, kind, teacher, text_encoder, dim, origin (float64 [3]), units,
source_hash, config_hash, label_names, storage ({source: store kind}). Version 1 files (dense only) load too.

The ensemble (OpenScene 2D-3D) is not stored: it depends on the query vocabulary, so
:meth:`FeatureField.features_for` computes it from fused + distilled for the given text embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scene_kd.errors import RunStateError
from scene_kd.feature_store import FeatureRows, as_rows, from_tensors
from scene_kd.runio import load_tensors, read_json, save_tensors, write_json
from scene_kd.teachers.config import ORACLE, ORACLE_NOTE

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
SOURCES = ("fused", "distilled", "ensemble")
ENSEMBLE_TIE_MARGIN = 2e-3  # cosine; float16 rows carry ~1e-3 rounding


class _Stores(dict):
    """source -> store; a tensor [N, D] assigned is wrapped as dense rows."""

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, as_rows(value))


@dataclass
class FeatureField:
    positions: np.ndarray  # [N, 3] float32 local
    origin: np.ndarray  # [3] float64
    features: dict[str, FeatureRows]  # "fused" / "distilled" -> a store (tensors [N, D] are wrapped as dense)
    teacher: str
    text_encoder: str
    dim: int
    kind: str = "points"
    coverage: np.ndarray | None = None  # [N] int32
    rgb: np.ndarray | None = None  # [N, 3] uint8
    labels: np.ndarray | None = None  # [N] int32 ground truth
    label_names: dict[int, str] = field(default_factory=dict)
    units: str = "m"
    source_hash: str = ""
    config_hash: str = ""
    extra_meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.features = _Stores({k: as_rows(v) for k, v in self.features.items()})

    def __len__(self) -> int:
        return int(self.positions.shape[0])

    @property
    def sources(self) -> list[str]:
        have = [s for s in ("fused", "distilled") if s in self.features]
        return have + (["ensemble"] if len(have) == 2 else [])

    def default_source(self) -> str:
        return self.sources[-1] if self.sources else "fused"

    def dense(self, source: str) -> torch.Tensor:
        """[N, D] float32 decoded features of a stored source ("fused" / "distilled"); for small fields and
        tests (queries go through the store: scene_kd/query/similarity.py)."""
        if source not in self.features:
            raise RunStateError(f"this field has no {source} features (has: {', '.join(self.sources) or 'none'})")
        return self.features[source].dense()

    def features_for(self, source: str, text_embeddings: torch.Tensor | None = None) -> torch.Tensor:
        """[N, D] float32 decoded features for ``source`` (small fields: this is dense).

        For "ensemble", per point take fused or distilled, whichever has the higher max cosine similarity
        over ``text_embeddings`` [P, D] (the query vocabulary); required for that source.
        """
        if source in ("fused", "distilled"):
            return self.dense(source)
        if source != "ensemble":
            raise RunStateError(f"unknown feature source {source!r}; choose one of {', '.join(SOURCES)}")
        if "fused" not in self.features or "distilled" not in self.features:
            raise RunStateError("ensemble needs both fused and distilled features; run `scene-kd distill` first")
        if text_embeddings is None:
            raise ValueError("ensemble features need the query's text embeddings")
        fused, distilled = self.dense("fused"), self.dense("distilled")
        text = text_embeddings.to(torch.float32)
        best_f = _max_similarity(fused, text)
        best_d = _max_similarity(distilled, text)
        take_fused = ensemble_takes_fused(best_f, best_d, fused.abs().amax(dim=1) > 0)
        return torch.where(take_fused[:, None], fused, distilled)

    def world_positions(self) -> np.ndarray:
        return self.positions.astype(np.float64) + self.origin

    # ---- I/O -------------------------------------------------------------------------------------
    def save(self, run_dir: str | Path) -> None:
        run_dir = Path(run_dir)
        tensors: dict[str, Any] = {"positions": self.positions}
        for k, v in self.features.items():
            if (v.n, v.dim) != (len(self), self.dim):
                raise RunStateError(f"{k} features have shape {(v.n, v.dim)}, expected ({len(self)}, {self.dim})")
            tensors.update(v.tensors(f"features.{k}"))
        for k in ("coverage", "rgb", "labels"):
            if getattr(self, k) is not None:
                tensors[k] = getattr(self, k)
        save_tensors(run_dir / "field.safetensors", tensors)
        write_json(run_dir / "field.json", {
            "format_version": FORMAT_VERSION, "kind": self.kind, "teacher": self.teacher,
            "text_encoder": self.text_encoder, "dim": self.dim, "count": len(self),
            "origin": [float(x) for x in self.origin], "units": self.units, "sources": self.sources,
            "source_hash": self.source_hash, "config_hash": self.config_hash,
            "label_names": {str(k): v for k, v in self.label_names.items()},
            "storage": {k: v.kind for k, v in self.features.items()}, **self.extra_meta,
            **({"teacher_note": ORACLE_NOTE} if self.teacher == ORACLE else {}),
        })

    @classmethod
    def load(cls, run_dir: str | Path, *, expect_text_encoder: str | None = None) -> FeatureField:
        """Load and validate a field; refuses a field made with another text encoder than expected."""
        run_dir = Path(run_dir)
        if not run_dir.is_dir():
            raise RunStateError("not a run folder", path=run_dir)
        meta = read_json(run_dir / "field.json")
        if meta.get("format_version") not in READABLE_VERSIONS:
            raise RunStateError(f"field format version {meta.get('format_version')} is not one of "
                                f"{', '.join(map(str, READABLE_VERSIONS))}", path=run_dir)
        if expect_text_encoder is not None and meta["text_encoder"] != expect_text_encoder:
            raise RunStateError(
                f"field was made with text encoder {meta['text_encoder']!r}, not {expect_text_encoder!r}", path=run_dir
            )
        tensors, _ = load_tensors(run_dir / "field.safetensors")
        positions = tensors["positions"].numpy()
        features = {}
        for k in ("fused", "distilled"):
            store = from_tensors(tensors, f"features.{k}")
            if store is None:
                continue
            if store.n != len(positions) or store.dim != meta["dim"]:
                raise RunStateError(f"{k} features are {store.n} x {store.dim}; field.json says {len(positions)} points "
                                    f"of dim {meta['dim']}", path=run_dir)
            features[k] = store
        known = {"format_version", "kind", "teacher", "text_encoder", "dim", "count", "origin", "units", "sources",
                 "source_hash", "config_hash", "label_names", "teacher_note", "storage"}
        opt = lambda k: tensors[k].numpy() if k in tensors else None  # noqa: E731
        return cls(
            positions=positions, origin=np.array(meta["origin"], dtype=np.float64), features=features,
            teacher=meta["teacher"], text_encoder=meta["text_encoder"], dim=int(meta["dim"]), kind=meta["kind"],
            coverage=opt("coverage"), rgb=opt("rgb"), labels=opt("labels"),
            label_names={int(k): v for k, v in meta.get("label_names", {}).items()}, units=meta.get("units", "m"),
            source_hash=meta.get("source_hash", ""), config_hash=meta.get("config_hash", ""),
            extra_meta={k: v for k, v in meta.items() if k not in known},
        )


def load_field_labels(run_dir: str | Path) -> np.ndarray | None:
    """A run's ground-truth class codes [N] alone, without reading its features (a batch checks a student's
    vocabulary against the classes its run has points of); None when the field has no labels. RunStateError
    when the run has no field."""
    from safetensors import safe_open

    path = Path(run_dir) / "field.safetensors"
    if not path.exists():
        raise RunStateError("missing field.safetensors; run the stage that writes it first", path=Path(run_dir))
    with safe_open(str(path), framework="np") as f:
        return f.get_tensor("labels") if "labels" in f.keys() else None


def ensemble_takes_fused(best_fused: torch.Tensor, best_distilled: torch.Tensor, covered: torch.Tensor) -> torch.Tensor:
    """OpenScene's 2D-3D ensemble rule, per point [N] bool: the fused features win when their best cosine over the
    vocabulary beats the distilled one's by more than ``ENSEMBLE_TIE_MARGIN`` (float16-sized, so storage rounding
    does not flip ties towards fused) and a view covered the point (uncovered points have zero fused features:
    the distilled ones win there)."""
    return (best_fused > best_distilled + ENSEMBLE_TIE_MARGIN) & covered


def _max_similarity(features: torch.Tensor, text: torch.Tensor, chunk: int = 262144) -> torch.Tensor:
    """[N] max over prompts of cosine(features_i, text_p), chunked to bound memory; zero rows give 0."""
    out = torch.empty(features.shape[0], dtype=torch.float32)
    for s in range(0, features.shape[0], chunk):
        f = features[s : s + chunk].to(torch.float32)
        f = f / f.norm(dim=1, keepdim=True).clamp_min(1e-8)
        out[s : s + chunk] = (f @ text.T).max(dim=1).values
    return out
