"""Render stage config (owned by scene_kd/render)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class RenderConfig:
    preset: str = "aerial"
    """View preset: aerial | orbit | street | cameras:FILE (transforms.json or a COLMAP folder)."""
    width: int = 512
    """Image width, pixels."""
    height: int = 512
    """Image height, pixels."""
    levels: int = 3
    """Granularity levels (aerial altitudes / orbit radii)."""
    point_size_px: float = 0.0
    """Fixed point footprint in pixels; 0 derives it from point_radius."""
    point_radius: float = 0.0
    """World radius of each point (scene units); 0 estimates it from the point density."""
    min_views: int = 3
    """Target views per point for coverage reporting."""
    background: tuple[int, int, int] = (0, 0, 0)
    """RGB of empty pixels."""
