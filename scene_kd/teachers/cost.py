"""What a teacher will cost, before it runs: seconds per view by part, scaled to a view plan, from a measured table.

The table is ``cost_table.json`` (package data beside this module; benchmarks/teacher_cost.py regenerates it).
Its schema (version 1; keep it stable, readers and the benchmark share it)::

    {
      "machine":  "2-core AMD EPYC CPU; GPU ...",      # where the rows were measured (shown in the plan line)
      "measured": "2026-12-06 ...",                    # when / how (free text)
      "command":  "python benchmarks/teacher_cost.py ...",   # what reproduces the rows
      ...                                              # other top-level keys are free (load_average, weights, ...)
      "teachers": {
        "<teacher registry name>": {                   # clip-sam, clip-dense, oracle-labels, ...
          "<settings key>": {                          # a config preset's name (urban, indoor, ...) or "default"
            "<device>": ROW | null,                    # "cpu" / "cuda"; null = not measured there
          }}}}

    ROW = {"width": 512, "height": 512,                # the view size measured, pixels (required, > 0)
           "masks_per_view": 162,                      # masks per view measured (needed only for "masks" parts)
           "parts_s": {"sam_encoder": 10.8, ...},      # seconds per view by part
           "scales": {"sam_encoder": "view", ...},     # optional, per part: view | megapixels | masks
           "total_s": 120.8,                           # sum of parts_s (used alone when parts_s is empty)
           "source": "..."}                            # optional free text: what was measured

Each part scales to a view of another size or mask count by its ``scales`` entry: ``view`` (a fixed cost per view:
SAM resizes every image to 1024 px and decodes a fixed prompt grid), ``megapixels`` (per pixel: the default for a
part the row does not list) or ``masks`` (per mask: CLIP's crops; scaled only when the caller knows the mask count,
else the row's count stands). The row used is the one of the settings key asked for (the CLI passes its
``--config`` preset name) when the table has it on the device, else ``default``. A teacher, settings or device the
table has no row for is reported as unknown, with the reason; no number is made up for it. The device is the
teacher config's (``auto``: cuda when torch sees a GPU).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from scene_kd.errors import ConfigError

SCALES = ("view", "megapixels", "masks")
DEFAULT_KEY = "default"
TABLE_NAME = "cost_table.json"


@lru_cache(maxsize=4)
def _read_table(path: str | None) -> dict[str, Any]:
    text = (Path(path).read_text() if path else
            resources.files("scene_kd.teachers").joinpath(TABLE_NAME).read_text())
    try:
        table = json.loads(text)
    except ValueError as e:
        raise ConfigError(f"teacher cost table {path or TABLE_NAME} is not JSON ({e})") from None
    if not isinstance(table, dict) or not isinstance(table.get("teachers"), dict):
        raise ConfigError(f"teacher cost table {path or TABLE_NAME} has no 'teachers' mapping")
    return table


def load_cost_table(path: str | Path | None = None) -> dict[str, Any]:
    """The measured table: ``path``, else the package's ``cost_table.json``. ConfigError when it is malformed."""
    return _read_table(str(path) if path else None)


def teacher_device(cfg: Any) -> str:
    """The device a teacher config will run on: its ``device`` setting with ``auto`` resolved like the teachers
    do (cuda when torch sees a GPU, else cpu); teachers without one (the oracle) run on the cpu."""
    device = str(getattr(cfg, "device", "cpu") or "cpu")
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cuda" if device.startswith("cuda") else device


@dataclass(frozen=True)
class TeacherCost:
    """Expected teacher time for ``views`` views of ``megapixels`` in all, on ``device``.

    ``known`` False: ``reason`` says why (no row for the teacher / device) and every number is None. Else
    ``parts_s`` is the seconds per (average) view by part, ``seconds_per_view`` their sum and ``total_s`` the plan's;
    ``row`` names the table row used: {"teacher", "key", "device", "width", "height", "masks_per_view", "machine",
    "measured"}."""

    teacher: str
    device: str
    views: int
    megapixels: float
    known: bool
    parts_s: dict[str, float] = field(default_factory=dict)
    seconds_per_view: float | None = None
    total_s: float | None = None
    row: dict[str, Any] | None = None
    reason: str | None = None

    @property
    def hours(self) -> float | None:
        return None if self.total_s is None else self.total_s / 3600.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "hours": None if self.hours is None else round(self.hours, 4)}

    def describe(self) -> str:
        """One phrase: ``teacher clip-sam on cpu: ~1.6 h (121 s/view, measured 512x512 on <machine>)``."""
        head = f"teacher {self.teacher} on {self.device}"
        if not self.known:
            return f"{head}: unknown ({self.reason})"
        row = self.row or {}
        return (f"{head}: ~{format_duration(self.total_s or 0.0)} ({self.seconds_per_view:.3g} s/view, measured "
                f"{row.get('width')}x{row.get('height')} on {row.get('machine', 'an unnamed machine')})")


def format_duration(seconds: float) -> str:
    """Seconds as a short human duration: 42 s, 12 min, 1.6 h, 2.0 d."""
    if not math.isfinite(seconds):
        return "forever"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def _find_row(table: dict[str, Any], teacher: str, device: str,
              keys: tuple[str, ...]) -> tuple[str | None, dict[str, Any] | None, str | None]:
    """(settings key, row, reason-when-missing) for the first of ``keys`` that has a row on ``device``."""
    rows = table["teachers"].get(teacher)
    if not rows:
        return None, None, f"no cost measured for teacher {teacher!r}"
    for key in keys:
        by_device = rows.get(key)
        if isinstance(by_device, dict) and isinstance(by_device.get(device), dict):
            return key, by_device[device], None
    measured = sorted({d for r in rows.values() if isinstance(r, dict) for d, v in r.items() if v})
    return None, None, (f"{teacher} not measured on {device}"
                        + (f" (measured on {', '.join(measured)})" if measured else ""))


def scale_view_cost(row: dict[str, Any], width: float, height: float,
                    masks_per_view: float | None = None) -> dict[str, float]:
    """Seconds per view by part for a ``width`` x ``height`` view (``masks_per_view`` masks, None: the row's),
    each part scaled by its kind in ``row["scales"]`` (default ``megapixels``; see the module docstring).
    ConfigError for an unknown scale kind or a row without a positive size."""
    w0, h0 = float(row.get("width") or 0), float(row.get("height") or 0)
    if w0 <= 0 or h0 <= 0:
        raise ConfigError("teacher cost table row has no positive width/height")
    scales = row.get("scales") or {}
    pixels = (width * height) / (w0 * h0)
    m0 = row.get("masks_per_view")
    masks = masks_per_view / float(m0) if masks_per_view is not None and m0 else 1.0
    out = {}
    for part, seconds in (row.get("parts_s") or {}).items():
        kind = scales.get(part, "megapixels")
        if kind not in SCALES:
            raise ConfigError(f"teacher cost table: part {part!r} scales by {kind!r}; use one of {', '.join(SCALES)}")
        out[part] = float(seconds) * {"view": 1.0, "megapixels": pixels, "masks": masks}[kind]
    if not out and row.get("total_s") is not None:  # a row with only a total: per pixel
        out["total"] = float(row["total_s"]) * pixels
    return out


def estimate_teacher_cost(teacher: str, views: int, megapixels: float, *, device: str = "cpu",
                          preset: str | None = None, masks_per_view: float | None = None,
                          table: dict[str, Any] | None = None) -> TeacherCost:
    """Expected time of ``teacher`` over ``views`` views holding ``megapixels`` MP in all, on ``device``, from the
    measured table (the row of ``preset`` when the table has one, else ``default``); per view the parts are scaled
    to the plan's average view size (:func:`scale_view_cost`). Unknown teacher/device: ``known`` False."""
    table = table if table is not None else load_cost_table()
    keys = tuple(k for k in (preset, DEFAULT_KEY) if k)
    key, row, reason = _find_row(table, teacher, device, keys)
    if row is None:
        return TeacherCost(teacher, device, int(views), float(megapixels), False, reason=reason)
    if views <= 0:
        return TeacherCost(teacher, device, 0, 0.0, True, {}, 0.0, 0.0, _row_info(table, teacher, key, device, row))
    side = math.sqrt(megapixels * 1e6 / views)  # an average square view of the plan's pixels
    parts = scale_view_cost(row, side, side, masks_per_view)
    per_view = sum(parts.values())
    return TeacherCost(teacher, device, int(views), float(megapixels), True,
                       {k: round(v, 4) for k, v in parts.items()}, round(per_view, 4), round(per_view * views, 3),
                       _row_info(table, teacher, key, device, row))


def _row_info(table: dict[str, Any], teacher: str, key: str | None, device: str, row: dict[str, Any]) -> dict:
    return {"teacher": teacher, "key": key, "device": device, "width": row.get("width"), "height": row.get("height"),
            "masks_per_view": row.get("masks_per_view"), "machine": table.get("machine"),
            "measured": table.get("measured")}


def estimate_for_config(cfg: Any, views: int, megapixels: float, *, preset: str | None = None,
                        table: dict[str, Any] | None = None) -> TeacherCost:
    """:func:`estimate_teacher_cost` for a teacher config (its ``name``, on :func:`teacher_device`)."""
    return estimate_teacher_cost(cfg.name, views, megapixels, device=teacher_device(cfg), preset=preset, table=table)
