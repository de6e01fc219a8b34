"""Pipeline config: the stage configs together, YAML presets in configs/, and their loading.

Stage configs live beside their stages (render/config.py, ...); this module composes them.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from scene_kd.distill.config import DistillConfig
from scene_kd.errors import SceneKDError
from scene_kd.lift.config import FuseConfig
from scene_kd.query.config import QueryConfig
from scene_kd.render.config import RenderConfig
from scene_kd.teachers.config import TeacherConfig


@dataclass
class PipelineConfig:
    render: RenderConfig = field(default_factory=RenderConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    fuse: FuseConfig = field(default_factory=FuseConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    query: QueryConfig = field(default_factory=QueryConfig)


CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def merge_into(obj: Any, updates: dict[str, Any], where: str = "") -> Any:
    """Return a copy of dataclass ``obj`` with ``updates`` (nested dicts) applied; unknown keys are errors."""
    names = {f.name: f for f in dataclasses.fields(obj)}
    changes = {}
    hints = typing.get_type_hints(type(obj))
    for k, v in (updates or {}).items():
        if k not in names:
            raise SceneKDError(f"unknown config key {where}{k!r}; known: {', '.join(names)}")
        cur = getattr(obj, k)
        if dataclasses.is_dataclass(cur):
            if not isinstance(v, dict):
                raise SceneKDError(f"config key {where}{k} must be a mapping")
            changes[k] = merge_into(cur, v, f"{where}{k}.")
        else:
            hint = hints.get(k)
            origin = typing.get_origin(hint)
            if isinstance(v, list) and (origin is tuple or isinstance(cur, tuple)):
                v = tuple(v)
            elif origin in (typing.Union, types.UnionType) and v is None:
                pass
            changes[k] = v
    return dataclasses.replace(obj, **changes)


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> PipelineConfig:
    """Defaults, then a YAML preset (a path or a name in configs/), then ``overrides``."""
    cfg = PipelineConfig()
    if path:
        p = Path(path)
        if not p.exists() and (CONFIG_DIR / f"{path}.yaml").exists():
            p = CONFIG_DIR / f"{path}.yaml"
        if not p.exists():
            raise SceneKDError("config file not found", path=path)
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise SceneKDError(f"invalid YAML ({e})", path=p) from None
        cfg = merge_into(cfg, data)
    if overrides:
        cfg = merge_into(cfg, overrides)
    return cfg


def dump_config(cfg: Any) -> str:
    from scene_kd.runio import to_jsonable

    return yaml.safe_dump(to_jsonable(cfg), sort_keys=False)
