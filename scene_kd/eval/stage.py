"""The eval stage: segment the run's FeatureField with the ground-truth class names as vocabulary and score it.

Writes ``RUN/eval.json``::

    {"fused": {"miou", "macc", "accuracy", "per_class": {name: iou}, "per_class_acc": {...}, "acc_uncovered"},
     "distilled": {...}, "ensemble": {...}, "coverage": fraction of points covered by a view,
     "vocabulary": [...], "best": source with the highest mIoU, "points": evaluated points}

and ``RUN/plots/confusion.png`` (the best source). Per point the prediction is the argmax of the cosine to the
class text embeddings; in the fused features a point no view covered predicts nothing and counts as wrong.
``acc_uncovered`` is the accuracy on the evaluated points no view covered (None when there are none).

Class text embeddings come from the run's QuerySession (:meth:`scene_kd.query.session.QuerySession.class_embeddings`):
the oracle embeds the field's whole label map the way the oracle teacher did; any other encoder (open_clip)
embeds the class names in the run's prompt template (QueryConfig.template, "a photo of a {}." by default).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scene_kd.errors import RunStateError
from scene_kd.runio import Stages, config_hash, peak_rss_mb, read_json, write_json

log = logging.getLogger(__name__)

STAGE = "eval"
_VERSION = "eval-v1"


def predict(features: torch.Tensor, text: torch.Tensor, chunk: int = 262144) -> np.ndarray:
    """[N] int64 argmax over classes of cosine(features_i, text_c); -1 for all-zero feature rows."""
    out = np.empty(features.shape[0], dtype=np.int64)
    t = text.to(torch.float32)
    for s in range(0, features.shape[0], chunk):
        f = features[s : s + chunk].to(torch.float32)
        pred = (f @ t.T).argmax(dim=1)
        pred[f.abs().amax(dim=1) == 0] = -1
        out[s : s + chunk] = pred.numpy()
    return out


def _finite_or_none(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else x


def eval_stage(run_dir: str | Path, *, force: bool = False, sources: Sequence[str] | None = None) -> dict[str, Any]:
    """Score every feature source of the run's field against its ground-truth labels; write eval.json + plot."""
    from scene_kd.eval.labels import evaluation_classes
    from scene_kd.eval.metrics import confusion_matrix, scores
    from scene_kd.eval.plots import confusion_png
    from scene_kd.field import FeatureField

    run_dir = Path(run_dir)
    t0 = time.perf_counter()
    field = FeatureField.load(run_dir)
    if field.labels is None:
        raise RunStateError("the field has no ground-truth labels (an unlabelled scene); nothing to evaluate against",
                            path=run_dir)
    if not field.sources:
        raise RunStateError("the field has no features; run `scene-kd fuse` first", path=run_dir)
    srcs = list(sources) if sources else field.sources
    for s in srcs:
        if s not in field.sources:
            raise RunStateError(f"no {s} features in this run (has: {', '.join(field.sources)})", path=run_dir)
    vocabulary, targets = evaluation_classes(field.labels, field.label_names)
    if not vocabulary:
        raise RunStateError("no evaluable classes among the ground-truth labels (all unclassified / noise / "
                            "unnamed)", path=run_dir)
    st = (run_dir / "field.safetensors").stat()
    chash = config_hash(_VERSION, read_json(run_dir / "field.json"), st.st_size, st.st_mtime_ns, srcs)
    stages = Stages(run_dir)
    if not force and stages.is_current(STAGE, chash, ["eval.json", "plots/confusion.png"]):
        return {**read_json(run_dir / "eval.json"), "skipped": True}

    from scene_kd.query.session import QuerySession

    text = QuerySession.open(run_dir, field=field).class_embeddings(vocabulary, field.label_names)
    if text.shape[1] != field.dim:
        raise RunStateError(f"text encoder {field.text_encoder!r} gives {text.shape[1]}-dim embeddings but the field "
                            f"has {field.dim}-dim features", path=run_dir)
    covered = field.coverage > 0 if field.coverage is not None else np.ones(len(field), dtype=bool)
    evaluated = targets >= 0
    result: dict[str, Any] = {}
    confusions: dict[str, np.ndarray] = {}
    for src in srcs:
        pred = predict(field.features_for(src, text), text)
        if src == "fused":
            pred[~covered] = -1
        cm = confusion_matrix(targets, pred, len(vocabulary))
        sc = scores(cm, vocabulary)
        unc = evaluated & ~covered
        acc_unc = float((pred[unc] == targets[unc]).mean()) if unc.any() else None
        result[src] = {"miou": _finite_or_none(sc["miou"]), "macc": _finite_or_none(sc["macc"]),
                       "accuracy": _finite_or_none(sc["accuracy"]), "per_class": sc["per_class"],
                       "per_class_acc": sc["per_class_acc"], "acc_uncovered": acc_unc}
        confusions[src] = cm
    best = max(srcs, key=lambda s: -1.0 if result[s]["miou"] is None else result[s]["miou"])
    result.update({"coverage": float(covered.mean()) if len(field) else 0.0, "vocabulary": vocabulary,
                   "best": best, "points": int(evaluated.sum())})
    b = result[best]
    confusion_png(confusions[best], vocabulary, run_dir / "plots" / "confusion.png",
                  title=f"{best}: mIoU {b['miou'] or 0:.3f}, mAcc {b['macc'] or 0:.3f}")
    write_json(run_dir / "eval.json", result)
    seconds = time.perf_counter() - t0
    stages.record(STAGE, chash, seconds, peak_rss_mb())
    log.info("eval: %s", ", ".join(f"{s} mIoU {result[s]['miou']:.3f}" for s in srcs if result[s]["miou"] is not None))
    return {**result, "skipped": False}
