"""Label maps: ASPRS LAS classification codes, SensatUrban class names, and which classes are evaluated.

A class is *evaluable* when it has a name that is not in :data:`IGNORED_NAMES` (ASPRS "never classified",
"unclassified", "noise", "high noise", "overlap"; generic "unlabelled"/"ignore"). Codes without a name (ASPRS
reserved / user-defined codes a file does not name) are ignored too: there is nothing to prompt with.
"""

from __future__ import annotations

import numpy as np

ASPRS_CLASSES: dict[int, str] = {
    0: "never classified", 1: "unclassified", 2: "ground", 3: "low vegetation", 4: "medium vegetation",
    5: "high vegetation", 6: "building", 7: "noise", 8: "model key point", 9: "water", 10: "rail",
    11: "road", 12: "overlap", 13: "wire guard", 14: "wire conductor", 15: "transmission tower",
    16: "wire connector", 17: "bridge deck", 18: "high noise",
}
"""ASPRS LAS 1.4 standard classification codes (R15)."""

ASPRS_IGNORED_CODES = frozenset({0, 1, 7, 12, 18})
"""never classified, unclassified, noise, overlap, high noise."""

SENSATURBAN_CLASSES: dict[int, str] = {
    0: "ground", 1: "vegetation", 2: "building", 3: "wall", 4: "bridge", 5: "parking", 6: "rail",
    7: "traffic road", 8: "street furniture", 9: "car", 10: "footpath", 11: "bike", 12: "water",
}
"""SensatUrban (Hu et al., CVPR 2021) class ids and names."""

IGNORED_NAMES = frozenset(
    {ASPRS_CLASSES[c] for c in ASPRS_IGNORED_CODES} | {"unlabelled", "unlabeled", "ignore", "void", "none", ""}
)


def is_evaluable(name: str | None) -> bool:
    return name is not None and name.strip().lower() not in IGNORED_NAMES


def evaluation_classes(labels: np.ndarray, label_names: dict[int, str]) -> tuple[list[str], np.ndarray]:
    """The vocabulary and per-point targets for evaluation.

    labels: [N] int class codes (negative = unlabelled).   label_names: code -> name.
    Returns (vocabulary: the evaluable class names present in ``labels``, in code order, a name shared by
    several codes once; targets [N] int64 index into the vocabulary, -1 for ignored points).
    """
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    codes = np.unique(labels[labels >= 0])
    vocabulary: list[str] = []
    lut = {}
    for code in codes.tolist():
        name = label_names.get(int(code))
        if not is_evaluable(name):
            continue
        name = name.strip()
        if name not in vocabulary:
            vocabulary.append(name)
        lut[int(code)] = vocabulary.index(name)
    targets = np.full(labels.shape, -1, dtype=np.int64)
    if lut:
        keys = np.fromiter(lut.keys(), dtype=np.int64)
        vals = np.fromiter(lut.values(), dtype=np.int64)
        pos = np.searchsorted(keys, labels)  # keys ascending (codes come from np.unique)
        pos_c = np.clip(pos, 0, len(keys) - 1)
        hit = (labels >= 0) & (keys[pos_c] == labels)
        targets[hit] = vals[pos_c[hit]]
    return vocabulary, targets
