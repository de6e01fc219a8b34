"""Build a teacher by its registered name (open_clip's ``create_model`` over the registry ``TEACHERS`` of
scene_kd/teachers/config.py, which names each teacher's config dataclass and factory)."""

from __future__ import annotations

from typing import Any

from scene_kd.teachers.base import Teacher
from scene_kd.teachers.config import TEACHERS


def available_teachers() -> list[str]:
    """The registered teacher names, sorted."""
    return sorted(TEACHERS.names())


def create_teacher(name: str, **config: Any) -> Teacher:
    """The teacher ``name`` built with its config keyword arguments (``teacher_kwargs(cfg)``; the oracle also
    takes ``label_names``). ConfigError, one line listing the registered names, for an unknown name."""
    return TEACHERS.create(name, **config)
