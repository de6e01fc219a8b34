"""scene-kd: give 3D scenes an open vocabulary.

Pipeline (see DESIGN.md): load -> plan_views -> render -> teacher -> lift (fuse) -> distill -> query.
"""

__version__ = "0.1.0"
