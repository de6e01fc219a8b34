"""Render stage config (owned by scene_kd/render)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

import tyro


@dataclass
class RenderConfig:
    preset: Annotated[str, tyro.conf.arg(aliases=("--views",))] = "aerial"
    """View preset: aerial (levels by ground sampling distance) | aerial-fixed (the old 1 + 4 + 9 nadir + 16
    oblique plan, whatever the extent) | orbit | street | cameras:FILE (transforms.json or a COLMAP folder)."""
    width: Annotated[int, tyro.conf.arg(aliases=("--width",))] = 512
    """Image width, pixels."""
    height: Annotated[int, tyro.conf.arg(aliases=("--height",))] = 512
    """Image height, pixels."""
    levels: Annotated[int, tyro.conf.arg(aliases=("--levels",))] = 3
    """Granularity levels of the orbit and aerial-fixed presets (orbit radii / fixed altitudes)."""
    orbit_frame: Literal["auto", "scene"] = "auto"
    """orbit: "auto" estimates the up axis and floater-robust bounds of a Gaussian-splat scene (captures arrive
    in their trainer's frame, with background and floaters; render/scene_frame.py) and keeps cameras out of dense
    Gaussians; "scene" uses the scene's own z axis and bounding box (point clouds always do)."""
    gsd: tuple[float, ...] = (1.0, 0.3, 0.1)
    """aerial: nadir levels as ground sampling distances, metres per pixel at the median surface (any order; level 0
    is the coarsest). 0.1 m/px is the finest default because a car (~4.5 x 1.8 m) then covers ~45 x 18 px and a tree
    crown (~5 m) ~50 px, above what SAM's 32 x 32 point grid (one prompt per 16 px of a 512-px render) and CLIP's
    224-px crops resolve, and a pole's 8 m shadow-free height reads in the obliques; 1.0 m/px puts a 500 m square,
    i.e. several whole blocks, in one 512-px view; 0.3 m/px is the building scale between. A level coarser than
    the GSD at which the whole extent fits one view is clamped to that GSD (and merged when two coincide)."""
    oblique_gsd: float = 0.2
    """aerial: GSD of the 45 deg oblique level at its look-at point, metres per pixel (0 = no obliques). At 0.2 m/px a
    pole of 8 m spans ~40 px and a facade storey ~15 px."""
    overlap: float = 0.2
    """aerial: overlap between neighbouring views of one level, fraction of a view's footprint ([0, 0.9])."""
    point_size_px: float = 0.0
    """Fixed point footprint in pixels; 0 derives it from point_radius."""
    point_radius: float = 0.0
    """World radius of each point (scene units); 0 estimates it from the point density."""
    min_views: int = 14
    """aerial: views (all levels together) that should frame a typical point - the median point of the scene, inside
    a view's image less the lifting border, no occlusion test (render/aerial.py framing_counts); 0 = the
    extent-driven plan only. A plan short of it densifies in whole steps s = 2, 3, 4 (every level about s times
    the views per point: denser grids, a level that fitted one view gets 2 x 2 shifted views, obliques from 4 s
    headings; every level keeps its GSD) until it is met. 14 because the extent-driven plan already frames a
    typical point that often on a tile of two or more blocks (2 x 2 synthetic blocks 16, flat tiles of 100 m to
    2 km 14-25: those keep their plan, a 1 km square its 1442 views), while on a scene of one block or less its
    coarse levels merge into one view and it frames 5-10 times: too few to outvote a teacher's wrong masks, as
    fusion weighs each level equally (200k-point synthetic block, realistic oracle, 20 % wrong masks: fused mIoU
    0.52 with 15 views, 0.73 densified to 48, as with the old fixed 30-view plan). Also the count whose
    occlusion-tested share the coverage report gives as seen_min_views (lower: obliques frame hidden points)."""
    background: tuple[int, int, int] = (0, 0, 0)
    """RGB of empty pixels."""
    frame_depth_check: bool = True
    """RGB-D captures: compare each photo view's render depth with the frame's own depth image; pixels that
    disagree (an occluder in the frame that the scene lacks, a moved object) give their masks to no point or
    Gaussian (views.json ``depth_disagree`` counts them; scene_kd/render/photos.py). No effect on views without
    a depth image."""
    frame_depth_tolerance: float = 0.05
    """Disagreement: |render depth - frame depth| > this x frame depth. 5 % is above the noise of consumer depth
    sensors at a few metres (~1-2 %) and the nearest-pixel resize at depth edges only drops pixels there."""
    max_views: Annotated[int, tyro.conf.arg(aliases=("--max-views",))] = 2000
    """Budget: a plan of more views (all levels together) is refused right after planning, before anything is
    rendered, with one line naming its views and expected teacher time (``--max-views N`` raises it; 0 = no
    limit). 2,000 because a plan that large is already ~1.4 x the 1 km² urban tile's 1,416 views (~48 h of
    clip-sam on a 2-core CPU); a thin tile spread over kilometres plans tens of thousands."""
    max_teacher_hours: float = 0.0
    """Budget: refuse a plan whose expected teacher time on this machine's device (the measured cost table,
    scene_kd/teachers/cost.py) exceeds this many hours; 0 = no limit. Not applied when the cost is unknown."""
