"""Segmentation metrics from a confusion matrix: per-class IoU, mIoU, mAcc, overall accuracy.

Predictions may be "nothing" (-1, e.g. a point no view covered in the fused features): such points count as
false negatives of their true class and as nobody's false positive.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def confusion_matrix(gt: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """[C, C + 1] int64 counts: rows = true class, columns = predicted class, last column = no prediction.

    gt: [N] int class index in [0, C) or < 0 to ignore the point.   pred: [N] int in [0, C) or -1 (nothing).
    """
    gt = np.asarray(gt).reshape(-1).astype(np.int64)
    pred = np.asarray(pred).reshape(-1).astype(np.int64)
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth has {gt.shape[0]} entries, predictions {pred.shape[0]}")
    if num_classes <= 0:
        raise ValueError("num_classes must be positive")
    keep = (gt >= 0) & (gt < num_classes)
    if (pred[keep] >= num_classes).any():
        raise ValueError(f"prediction {int(pred[keep].max())} is not a class index below {num_classes}")
    col = np.where(pred[keep] < 0, num_classes, pred[keep])
    flat = gt[keep] * (num_classes + 1) + col
    return np.bincount(flat, minlength=num_classes * (num_classes + 1)).reshape(num_classes, num_classes + 1)


def scores(confusion: np.ndarray, class_names: list[str] | None = None) -> dict[str, Any]:
    """mIoU, mAcc, overall accuracy and per-class IoU / accuracy from a [C, C(+1)] confusion matrix.

    IoU_c = TP / (TP + FP + FN); Acc_c = TP / (points of class c). Classes without ground-truth points are left
    out of the means (and reported as None).
    """
    cm = np.asarray(confusion, dtype=np.float64)
    C = cm.shape[0]
    names = class_names or [str(c) for c in range(C)]
    tp = np.diag(cm[:, :C])
    gt_count = cm.sum(axis=1)  # includes "no prediction"
    pred_count = cm[:, :C].sum(axis=0)
    union = gt_count + pred_count - tp
    present = gt_count > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(present, tp / np.maximum(union, 1), np.nan)
        acc = np.where(present, tp / np.maximum(gt_count, 1), np.nan)
    total = gt_count.sum()
    return {
        "miou": float(np.nanmean(iou)) if present.any() else float("nan"),
        "macc": float(np.nanmean(acc)) if present.any() else float("nan"),
        "accuracy": float(tp.sum() / total) if total else float("nan"),
        "per_class": {n: (None if np.isnan(v) else float(v)) for n, v in zip(names, iou, strict=True)},
        "per_class_acc": {n: (None if np.isnan(v) else float(v)) for n, v in zip(names, acc, strict=True)},
    }
