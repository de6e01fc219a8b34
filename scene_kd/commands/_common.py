"""Small helpers shared by CLI verbs."""

from __future__ import annotations

import dataclasses
import json
import sys
from typing import Any

from scene_kd.runio import to_jsonable


def emit(obj: Any, as_json: bool, human: str | None = None) -> None:
    """Print ``obj`` as one JSON object (``--json``) or ``human`` text (default: indented JSON)."""
    if as_json or human is None:
        print(json.dumps(to_jsonable(obj), indent=None if as_json else 2))
    else:
        print(human)
    sys.stdout.flush()


def registered_names(cls: type) -> type:
    """Class decorator: ``{teachers}`` / ``{students}`` in a verb's docstring (its help) become the registered
    names (scene_kd.teachers.config.TEACHERS, scene_kd.distill.config.STUDENTS), joined by " | "."""
    from scene_kd.distill.config import STUDENTS
    from scene_kd.teachers.config import TEACHERS

    cls.__doc__ = ((cls.__doc__ or "").replace("{teachers}", " | ".join(TEACHERS.names()))
                   .replace("{students}", " | ".join(STUDENTS.names())))
    return cls


def pipeline_config(args: Any, sections: tuple[str, ...], run_dir: str | None = None) -> Any:
    """The resolved PipelineConfig of a verb: its parsed sections over the run's (or the default) config."""
    from scene_kd.config import resolve_config

    base = resolve_config(run_dir, getattr(args, "config", None))
    return dataclasses.replace(base, **{s: getattr(args, s) for s in sections})


def oracle_line(teacher: str) -> None:
    """One line on stderr saying a run uses the oracle test teacher (never silent)."""
    from scene_kd.teachers.config import ORACLE, ORACLE_NOTE

    if teacher == ORACLE:
        print(f"scene-kd: note: {ORACLE_NOTE}", file=sys.stderr)
