"""A plan, stated and checked before anything is rendered: its views per level, megapixels and the expected teacher
time on this machine's device (the pipeline passes ``on_plan``, scene_kd/teachers/cost.py; the render layer knows
no teacher), refused in one line when it is over the view budget (``render.max_views``, ``--max-views``) or the
teacher-time budget (``render.max_teacher_hours``)."""

from __future__ import annotations

import logging
from typing import Any

from scene_kd.errors import BudgetError
from scene_kd.render.config import RenderConfig
from scene_kd.scene.types import Camera

log = logging.getLogger(__name__)


def count_plan(cameras: list[Camera]) -> dict[str, Any]:
    """A plan's counts from its cameras: {"views", "megapixels", "levels": [{"level", "views", "megapixels"}]}."""
    by_level: dict[int, list[Camera]] = {}
    for c in cameras:
        by_level.setdefault(c.level, []).append(c)
    rows = [{"level": lv, "views": len(cs), "megapixels": round(sum(c.width * c.height for c in cs) / 1e6, 3)}
            for lv, cs in sorted(by_level.items())]
    return {"views": len(cameras), "megapixels": round(sum(r["megapixels"] for r in rows), 3), "levels": rows}


def plan_line(plan: dict[str, Any]) -> str:
    """``plan: 48 views (4 levels: 4 + 12 + 16 + 16), 12.6 MP`` (+ the grid views left out over empty ground)."""
    rows = plan.get("levels") or []
    per = " + ".join(f"{r['views']:,}" for r in rows)
    skipped = int(plan.get("skipped_empty") or 0)
    return (f"plan: {int(plan.get('views', 0)):,} views ({len(rows)} level{'s' if len(rows) != 1 else ''}: {per}), "
            f"{float(plan.get('megapixels', 0.0)):,.1f} MP"
            + (f" ({skipped:,} empty grid views left out)" if skipped else ""))


def announce_plan(plan: dict[str, Any], cfg: RenderConfig, on_plan: Any = None) -> dict[str, Any] | None:
    """Log the plan and its expected teacher time (``on_plan(plan)``, the pipeline's cost model) before anything
    is rendered, and refuse (BudgetError, one line) a plan over ``cfg.max_views`` views or, where the cost is
    known, ``cfg.max_teacher_hours``. Returns the cost dict (None without ``on_plan``)."""
    cost = on_plan(plan) if on_plan is not None else None
    line = plan_line(plan) + (f"; {cost['line']}" if cost and cost.get("line") else "")
    views, hours = int(plan.get("views", 0)), (cost or {}).get("hours")
    if cfg.max_views > 0 and views > cfg.max_views:
        raise BudgetError(f"refused: {line}; over the budget of {cfg.max_views:,} views: raise it with --max-views "
                          f"{views} (render.max_views; 0 = no limit) or plan fewer views (coarser render.gsd, "
                          "fewer levels)", plan=plan)
    if cfg.max_teacher_hours > 0 and hours is not None and hours > cfg.max_teacher_hours:
        raise BudgetError(f"refused: {line}; over the budget of {cfg.max_teacher_hours:g} teacher hours: raise it "
                          f"with --render.max-teacher-hours {hours:.3g} (0 = no limit)", plan=plan)
    log.info("%s", line)
    return cost
