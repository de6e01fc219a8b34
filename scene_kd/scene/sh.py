"""Spherical-harmonics DC colour: the one definition of SH_C0 and of DC <-> 8-bit RGB (3DGS convention).

rgb = 0.5 + SH_C0 * dc (in [0, 1]); 8-bit colour rounds to nearest (clip, * 255, + 0.5, truncate). Every path
that turns a Gaussian's DC term into 8-bit colour (the field's rgb the student trains on, applying a student to
a new Gaussian scene, LAS export) goes through :func:`rgb_from_dc`, so they agree to the bit.
"""

from __future__ import annotations

import numpy as np

SH_C0 = 0.28209479177387814
"""Degree-0 real SH basis constant, 1 / (2 sqrt(pi))."""


def rgb_from_dc(dc: np.ndarray) -> np.ndarray:
    """DC coefficients [N, 3] -> [N, 3] uint8 colour, rounded to nearest."""
    rgb = 0.5 + SH_C0 * np.asarray(dc)
    return (np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8)


def dc_from_rgb(rgb: np.ndarray) -> np.ndarray:
    """Colour [N, 3] in [0, 1] -> DC coefficients [N, 3] (float64 for float64 input)."""
    return (np.asarray(rgb) - 0.5) / SH_C0
