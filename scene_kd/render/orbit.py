"""Orbit views (objects, rooms, splat captures): ``cfg.levels`` radii, each with a ring at 20 and 50 degrees of
elevation and a view from the top, about the scene's bounds - or, for a Gaussian-splat capture without cameras,
about its estimated frame (render/scene_frame.py: up axis, floater-robust bounds), with no camera inside dense
Gaussians."""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

from scene_kd.render.config import RenderConfig
from scene_kd.render.pinhole import bounds, intrinsics, look_at
from scene_kd.render.scene_frame import estimate_scene_frame, gaussian_normals_and_weights
from scene_kd.scene.types import Camera

log = logging.getLogger(__name__)

ORBIT_FOV_DEG = 50.0


def plan_orbit(xyz: np.ndarray, cfg: RenderConfig, frame: Any = None, tree: Any = None) -> list[Camera]:
    """Orbit views about the scene's bounds (z up), or about ``frame`` (a render.scene_frame.SceneFrame: its
    centre, robust radius and up axis) with each camera pushed out of dense positions (``tree``: a cKDTree)."""
    if frame is None:
        lo, hi = bounds(xyz)
        center = 0.5 * (lo + hi)
        radius = max(float(np.linalg.norm(hi - lo)) / 2, 1e-3)
        basis = np.eye(3)
    else:
        center, radius, basis = np.asarray(frame.center, np.float64), float(frame.radius), np.asarray(frame.basis)
    up = basis[2]
    W, H = cfg.width, cfg.height
    K = intrinsics(W, H, ORBIT_FOV_DEG)
    half_fov = math.atan(min(0.5 * W / K[0, 0], 0.5 * H / K[1, 1]))
    base = radius / math.sin(half_fov) * 1.05

    def place(direction: np.ndarray, dist: float) -> np.ndarray:
        pos = center + dist * direction
        if tree is not None:
            from scene_kd.render.scene_frame import push_out_of_dense

            pos = push_out_of_dense(pos, center, tree, probe=0.05 * radius)
        return pos

    cams: list[Camera] = []
    for level in range(max(1, int(cfg.levels))):
        dist = base * (0.7 ** level if level < 2 else 0.5 * 0.8 ** (level - 2))
        stagger = 30.0 * (level % 2)
        for elev, offset in ((20.0, 0.0), (50.0, 30.0)):
            for k in range(6):
                az = math.radians(k * 60.0 + offset + stagger)
                e = math.radians(elev)
                d = np.array([math.cos(az) * math.cos(e), math.sin(az) * math.cos(e), math.sin(e)]) @ basis
                cams.append(Camera(K=K, world_to_cam=look_at(place(d, dist), center, up), width=W, height=H,
                                   level=level, name=f"orbit-L{level}-e{int(elev)}-a{int(math.degrees(az)) % 360}"))
        cams.append(Camera(K=K, world_to_cam=look_at(place(up, dist), center, up), width=W, height=H, level=level,
                           name=f"orbit-L{level}-top"))
    return cams


def orbit_frame(scene: Any, cfg: RenderConfig) -> tuple[Any, Any]:
    """(SceneFrame, cKDTree of the means) for a Gaussian scene under ``orbit_frame: auto``, else (None, None)."""
    if getattr(scene, "kind", "points") != "gaussians" or cfg.orbit_frame != "auto":
        return None, None
    from scipy.spatial import cKDTree

    means = np.asarray(scene.xyz, np.float64)
    normals, weights = gaussian_normals_and_weights(scene.quats, scene.log_scales, scene.opacity_logits)
    frame = estimate_scene_frame(means, normals=normals, weights=weights)
    log.info("orbit: estimated up axis (%.2f, %.2f, %.2f), robust radius %.3g", *frame.up, frame.radius)
    return frame, cKDTree(means)
