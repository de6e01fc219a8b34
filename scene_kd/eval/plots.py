"""Evaluation plots (matplotlib, Agg backend; written atomically)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from scene_kd.runio import atomic_path


def confusion_png(
    confusion: np.ndarray,
    class_names: list[str],
    path: str | Path,
    *,
    title: str = "",
    normalise: bool = True,
) -> Path:
    """Draw a [C, C] or [C, C + 1] (last column "none" = no prediction) confusion matrix to a PNG.

    Rows are the true classes; with ``normalise`` each row is shown as fractions of that class (recall), the
    raw counts written in the cells when there are few classes. Returns the path.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    cm = np.asarray(confusion, dtype=np.float64)
    C = cm.shape[0]
    if cm.ndim != 2 or cm.shape[1] not in (C, C + 1) or len(class_names) != C:
        raise ValueError(f"confusion {cm.shape} does not match {len(class_names)} class names")
    cols = list(class_names) + (["none"] if cm.shape[1] == C + 1 else [])
    shown = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1) if normalise else cm
    size = max(4.0, 0.45 * len(cols) + 2.5)
    fig, ax = plt.subplots(figsize=(size + 1.0, size))
    try:
        im = ax.imshow(shown, cmap="viridis", vmin=0.0, vmax=1.0 if normalise else None)
        ax.set_xticks(range(len(cols)), labels=cols, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(C), labels=class_names, fontsize=8)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        if title:
            ax.set_title(title, fontsize=10)
        if C <= 15:
            for r in range(C):
                for c in range(len(cols)):
                    if cm[r, c]:
                        ax.text(c, r, f"{int(cm[r, c])}", ha="center", va="center", fontsize=6,
                                color="black" if shown[r, c] > 0.6 else "white")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class" if normalise else "points")
        fig.tight_layout()
        path = Path(path)
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=120)
    finally:
        plt.close(fig)
    return path
