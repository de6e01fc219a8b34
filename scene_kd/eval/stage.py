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
embeds the class names by the run's QueryConfig.template (open_clip's 80-template ensemble by default).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from scene_kd.errors import RunStateError
from scene_kd.eval.metrics import confusion_matrix, scores
from scene_kd.eval.plots import confusion_png
from scene_kd.field import FeatureField
from scene_kd.query.config import QueryConfig
from scene_kd.query.session import QuerySession
from scene_kd.query.similarity import raw_dots, similarities
from scene_kd.rundir import RunDir, StageContext
from scene_kd.runio import write_json
from scene_kd.scene.labels import evaluation_classes
from scene_kd.teachers.config import ORACLE, ORACLE_NOTE

log = logging.getLogger(__name__)


class EvalStageConfig(Protocol):
    """The config section the eval stage reads: ``query`` (a Protocol so eval/ never imports the config layer above
    it; :class:`scene_kd.config.PipelineConfig` has it)."""

    @property
    def query(self) -> QueryConfig: ...


_VERSION = "eval-v1"


def predict(field: Any, source: str, text: torch.Tensor) -> np.ndarray:
    """[N] int64 argmax over classes of cosine(features_i, text_c) for a field source (fused, distilled,
    ensemble), through the field's own store (no dense [N, D] copy); -1 for all-zero feature rows."""

    if source == "ensemble":
        sims = similarities(field, text, source=source, precision="float32")  # [N, C]
        pred = sims.argmax(dim=1)
        pred[sims.abs().amax(dim=1) == 0] = -1
        return pred.numpy().astype(np.int64)
    dots, inv = raw_dots(field, source, text.to(torch.float32), precision="float32")  # [C, N]
    pred = dots.argmax(dim=0)
    pred[inv == 0] = -1
    return pred.numpy().astype(np.int64)


def _finite_or_none(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else x


class EvalStage:
    """Score every feature source of the run's field against its ground-truth labels; write eval.json + plot.

    Summary: the contents of eval.json (see the module docstring).
    """

    name = "eval"
    section = "query"

    def enabled(self, cfg: EvalStageConfig) -> bool:
        return True

    def inputs(self, run: RunDir, cfg: EvalStageConfig) -> list[Path]:
        return [run.field_tensors, run.field_json]

    def outputs(self, run: RunDir, cfg: EvalStageConfig, ctx: StageContext) -> list[Path]:
        return [run.eval, run.confusion_png]

    def key(self, run: RunDir, cfg: EvalStageConfig, ctx: StageContext) -> Any:
        return [_VERSION, list(ctx.sources) if ctx.sources else None, cfg.query.template]

    def compute(self, run: RunDir, cfg: EvalStageConfig, ctx: StageContext) -> dict[str, Any]:
        return _evaluate(run, ctx.sources, cfg.query)


EVAL = EvalStage()


def check_evaluable(run_dir: Path, sources: Sequence[str] | None = None) -> tuple[Any, list[str], list[str], np.ndarray]:
    """(field, sources, vocabulary, targets) of a run that can be evaluated; RunStateError saying why not."""

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
    return field, srcs, vocabulary, targets


def evaluation_warnings(vocabulary: Sequence[str], evaluated: int, total: int) -> list[str]:
    """What makes a run's scores say less than they seem (a fresh user read 'mIoU 1.000' on a tile whose only
    evaluable class was ground): one class (its IoU is 1 whenever every point is given it), or most points
    outside the evaluated classes (ASPRS 0 never classified, 1 unclassified, 7/18 noise, 12 overlap are not
    evaluated; the oracle teacher gives them no label either, so their labels come from their neighbours)."""
    out = []
    if len(vocabulary) < 2:
        out.append(f"only one evaluable class ({', '.join(vocabulary)}): its mIoU is 1 whenever every point gets it "
                   "and says nothing about the labels")
    if total and evaluated < 0.5 * total:
        out.append(f"only {evaluated:,} of {total:,} points ({100 * evaluated / total:.0f} %) carry an evaluable class; "
                   "the rest (unclassified, noise, overlap) are not scored")
    return out


def _evaluate(run: RunDir, sources: Sequence[str] | None, query: Any) -> dict[str, Any]:
    run_dir = run.root
    field, srcs, vocabulary, targets = check_evaluable(run_dir, sources)
    text = QuerySession.open(run_dir, field=field, query=query).class_embeddings(vocabulary, field.label_names)
    if text.shape[1] != field.dim:
        raise RunStateError(f"text encoder {field.text_encoder!r} gives {text.shape[1]}-dim embeddings but the field "
                            f"has {field.dim}-dim features", path=run_dir)
    covered = field.coverage > 0 if field.coverage is not None else np.ones(len(field), dtype=bool)
    evaluated = targets >= 0
    result: dict[str, Any] = {}
    confusions: dict[str, np.ndarray] = {}
    for src in srcs:
        pred = predict(field, src, text)
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
    confusion_png(confusions[best], vocabulary, run.confusion_png,
                  title=f"{best}: mIoU {b['miou'] or 0:.3f}, mAcc {b['macc'] or 0:.3f}")
    if field.teacher == ORACLE:
        result["teacher_note"] = ORACLE_NOTE
    result["teacher"] = field.teacher
    warnings = evaluation_warnings(vocabulary, int(evaluated.sum()), len(field))
    if warnings:
        result["warnings"] = warnings
        for w in warnings:
            log.warning("eval: %s", w)
    write_json(run.eval, result)
    log.info("eval: %s", ", ".join(f"{s} mIoU {result[s]['miou']:.3f}" for s in srcs if result[s]["miou"] is not None))
    return result
