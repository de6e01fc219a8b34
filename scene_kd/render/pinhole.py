"""Pinhole camera helpers shared by the view planners: look-at poses, intrinsics from a field of view, robust
scene bounds. OpenCV convention: x right, y down, z forward; world-to-camera [4, 4]."""

from __future__ import annotations

import math

import numpy as np


def look_at(center: np.ndarray, target: np.ndarray, up: np.ndarray = np.array([0.0, 0.0, 1.0])) -> np.ndarray:
    """World-to-camera [4, 4] for an OpenCV camera at ``center`` looking at ``target`` with ``up`` roughly up."""
    center, target = np.asarray(center, np.float64), np.asarray(target, np.float64)
    forward = target - center
    norm = np.linalg.norm(forward)
    if norm < 1e-12:
        raise ValueError("camera centre and target coincide")
    forward /= norm
    up = np.asarray(up, np.float64)
    if abs(float(forward @ up)) > 0.999 * np.linalg.norm(up):  # looking straight along up: use +y as image up
        up = np.array([0.0, 1.0, 0.0])
    right = np.cross(forward, up)
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    R = np.stack([right, down, forward])
    w2c = np.eye(4)
    w2c[:3, :3] = R
    w2c[:3, 3] = -R @ center
    return w2c


def intrinsics(width: int, height: int, hfov_deg: float) -> np.ndarray:
    """K [3, 3] with square pixels and the given horizontal field of view."""
    f = 0.5 * width / math.tan(math.radians(hfov_deg) / 2)
    return np.array([[f, 0.0, width / 2.0], [0.0, f, height / 2.0], [0.0, 0.0, 1.0]])


def bounds(xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Robust bounds (0.1 / 99.9 percentiles, so a few outliers don't shrink the detail views)."""
    if len(xyz) > 1000:
        lo, hi = np.percentile(xyz, [0.1, 99.9], axis=0)
    else:
        lo, hi = xyz.min(axis=0), xyz.max(axis=0)
    return lo.astype(np.float64), hi.astype(np.float64)
