"""Fusion stage config (owned by scene_kd/lift)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class FuseConfig:
    depth_tolerance: float = 0.25
    """Visibility: |depth(point) - zbuffer(pixel)| <= depth_tolerance * depth (OpenScene tau)."""
    border_px: int = 10
    """Pixels near the image border are not used for lifting."""
    balance_granularities: bool = True
    """Weight each granularity equally however many samples it has (sample-balanced fusion)."""
    view_angle_weight: bool = True
    """Down-weight grazing views."""
