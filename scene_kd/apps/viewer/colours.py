"""Pure helpers of the viewer: point colours (relevancy turbo ramp, label palette, height ramp), the label
legend and ray picking. numpy in, numpy out; no GUI."""

from __future__ import annotations

import functools
import html
from collections.abc import Mapping, Sequence

import numpy as np

# label colours for vocabulary mode (tab10 without grey) and for unknown points
PALETTE = np.array([
    [31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40], [148, 103, 189], [140, 86, 75],
    [227, 119, 194], [188, 189, 34], [23, 190, 207], [174, 199, 232], [255, 187, 120], [152, 223, 138],
], dtype=np.uint8)
UNKNOWN_COLOUR = np.array([90, 90, 90], dtype=np.uint8)
TURBO_LOW, TURBO_HIGH = 0.3, 0.85  # part of turbo used for relevancy 0.5..1 (cyan -> red-orange)


@functools.lru_cache(maxsize=1)
def _turbo_lut() -> np.ndarray:
    import matplotlib

    return (matplotlib.colormaps["turbo"](np.linspace(0, 1, 256))[:, :3] * 255 + 0.5).astype(np.uint8)


def warm_up() -> None:
    """Import matplotlib and build the turbo table now (at load), not on the first query."""
    _turbo_lut()


def turbo(values: np.ndarray) -> np.ndarray:
    """[M] values in [0, 1] -> [M, 3] uint8 turbo colours."""
    return _turbo_lut()[np.clip((np.asarray(values) * 255 + 0.5).astype(np.int64), 0, 255)]


def relevancy_colours(rel: np.ndarray, base_rgb: np.ndarray, threshold: float) -> np.ndarray:
    """[M, 3] uint8: points above ``threshold`` in turbo (relevancy 0.5 -> cyan ... 1 -> red-orange),
    the rest as dimmed grey of their true colour."""
    luma = base_rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    out = np.repeat((luma * 0.3 + 20).astype(np.uint8)[:, None], 3, axis=1)
    hit = rel > threshold
    t = np.clip((rel[hit] - 0.5) / 0.5, 0, 1)
    out[hit] = turbo(TURBO_LOW + (TURBO_HIGH - TURBO_LOW) * t)
    return out


def label_colours(label_index: np.ndarray) -> np.ndarray:
    """[M, 3] uint8 palette colour per label (-1: grey)."""
    out = np.empty((len(label_index), 3), np.uint8)
    known = label_index >= 0
    out[known] = PALETTE[label_index[known] % len(PALETTE)]
    out[~known] = UNKNOWN_COLOUR
    return out


def height_colours(xyz: np.ndarray) -> np.ndarray:
    """A stand-in for true colour when the scene has none: grey ramp by height."""
    z = xyz[:, 2]
    lo, hi = (float(z.min()), float(z.max())) if len(z) else (0.0, 1.0)
    g = (60 + 180 * (z - lo) / max(hi - lo, 1e-9)).astype(np.uint8)
    return np.repeat(g[:, None], 3, axis=1)


def legend_html(names: Sequence[str], counts: Mapping[str, int]) -> str:
    """HTML rows: the palette swatch of each label, its name (escaped) and its point count."""
    return "".join(
        f'<div style="display:flex;align-items:center;gap:6px;font-size:0.85em">'
        f'<span style="display:inline-block;width:12px;height:12px;background:rgb{tuple(int(c) for c in PALETTE[i % len(PALETTE)])}"></span>'
        f"{html.escape(n)} ({counts[n]:,})</div>"
        for i, n in enumerate(names))


def pick_point(points: np.ndarray, origin: np.ndarray, direction: np.ndarray, max_angle: float = 0.01) -> int | None:
    """Row of ``points`` [M, 3] hit by the ray (origin, unit direction): among points within ``max_angle``
    radians of the ray, the nearest to the camera; None if none."""
    d = np.asarray(direction, np.float64)
    d = d / max(np.linalg.norm(d), 1e-12)
    v = points.astype(np.float64) - np.asarray(origin, np.float64)
    t = v @ d
    perp = np.linalg.norm(v - t[:, None] * d, axis=1)
    ok = (t > 0) & (perp <= max_angle * np.maximum(t, 1e-9))
    if not ok.any():
        return None
    cand = np.flatnonzero(ok)
    return int(cand[np.argmin(t[cand])])
