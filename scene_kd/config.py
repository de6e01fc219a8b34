"""Pipeline config: the stage configs together, YAML presets, validation, and the one resolution rule.

Stage configs live beside their stages (render/config.py, ...); this module composes them. Every verb resolves
its config with :func:`resolve_config`: built-in defaults, then the run folder's saved ``config.yaml`` (when
the verb works on an existing run), then a preset (``--config``: a name shipped in ``scene_kd/configs/`` or a
YAML path), then the command line. YAML is validated on load by dacite against the dataclass types: an
unknown key or a value of the wrong type is a one-line ``ConfigError`` naming the key and the expected type.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import dacite
import yaml

from scene_kd.distill.config import DistillConfig
from scene_kd.errors import ConfigError
from scene_kd.lift.config import FuseConfig
from scene_kd.query.config import QueryConfig
from scene_kd.render.config import RenderConfig
from scene_kd.runio import atomic_path, to_jsonable
from scene_kd.scene.units import InputConfig
from scene_kd.teachers.config import TEACHERS, ClipSamConfig, TeacherConfig


@dataclass
class PipelineConfig:
    input: InputConfig = field(default_factory=InputConfig)
    render: RenderConfig = field(default_factory=RenderConfig)
    teacher: TeacherConfig = field(default_factory=ClipSamConfig)
    fuse: FuseConfig = field(default_factory=FuseConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    query: QueryConfig = field(default_factory=QueryConfig)


SECTIONS = tuple(f.name for f in dataclasses.fields(PipelineConfig))


def preset_names() -> list[str]:
    """Names of the presets shipped as package data (scene_kd/configs/*.yaml)."""
    return sorted(p.name[:-5] for p in resources.files("scene_kd").joinpath("configs").iterdir()
                  if p.name.endswith(".yaml"))


def read_preset(preset: str | Path) -> dict[str, Any]:
    """The mapping of a YAML file, or of a shipped preset by name. ConfigError when missing or invalid."""
    p = Path(preset)
    if p.is_file():
        text, where = p.read_text(), str(p)
    elif str(preset) in preset_names():
        text, where = resources.files("scene_kd").joinpath("configs", f"{preset}.yaml").read_text(), str(preset)
    else:
        raise ConfigError(f"config not found: {preset} (a YAML path, or one of the presets "
                          f"{', '.join(preset_names())})")
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: invalid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: a config must be a mapping of sections ({', '.join(SECTIONS)})")
    return data


_DACITE = dacite.Config(strict=True, cast=[tuple],  # YAML lists -> tuples; an int is a valid float
                        type_hooks={float: lambda v: float(v) if type(v) is int else v})


def _deep_merge(base: dict[str, Any], updates: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in updates.items():
        out[k] = _deep_merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


def _type_name(hint: Any) -> str:
    """``int``, ``one of 'a', 'b'``, ``float | null``: a type as the YAML author reads it."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin is typing.Literal:
        return "one of " + ", ".join(map(repr, args))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    if origin is tuple:
        return f"a list of {_type_name(args[0])}" if args[1:] == (Ellipsis,) else f"a list of {len(args)} values"
    return "null" if hint is type(None) else getattr(hint, "__name__", str(hint))


def merge_into(obj: Any, updates: dict[str, Any], where: str = "") -> Any:
    """A copy of dataclass ``obj`` with ``updates`` (nested mappings) applied, validated by dacite.

    A ``teacher`` mapping whose ``name`` names another teacher starts from that teacher's defaults (keeping the
    common ``seed`` and ``batch_size``). Raises ConfigError naming the key for an unknown key or a wrong type.
    """
    if not isinstance(updates, dict):
        raise ConfigError(f"config key {where.rstrip('.') or '(top)'} must be a mapping, got {updates!r}")
    if where == "" and isinstance(obj, PipelineConfig):  # section by section: the teacher's class depends on its name
        unknown = sorted(set(updates) - set(SECTIONS))
        if unknown:
            raise ConfigError(f"unknown config key {unknown[0]}; known: {', '.join(SECTIONS)}")
        changes = {k: _merge_teacher(obj.teacher, v) if k == "teacher" else merge_into(getattr(obj, k), v, f"{k}.")
                   for k, v in updates.items()}
        return dataclasses.replace(obj, **changes)
    try:
        return dacite.from_dict(type(obj), _deep_merge(dataclasses.asdict(obj), updates), config=_DACITE)
    except dacite.UnexpectedDataError as e:
        key = sorted(e.keys)[0]
        inner = [f.name for f in dataclasses.fields(obj) if dataclasses.is_dataclass(getattr(obj, f.name))
                 and isinstance(updates.get(f.name), dict) and key in updates[f.name]]
        path = f"{where}{inner[0]}." if inner else where
        names = sorted(f.name for f in dataclasses.fields(getattr(obj, inner[0]) if inner else obj))
        kind = getattr(obj, "name", None)
        what = f" of teacher {kind!r}" if where == "teacher." and kind else ""
        raise ConfigError(f"unknown config key {path}{key}{what}; known: {', '.join(names)}") from None
    except dacite.WrongTypeError as e:
        raise ConfigError(f"config key {where}{e.field_path}: expected {_type_name(e.field_type)}, "
                          f"got {e.value!r}") from None
    except dacite.DaciteError as e:
        raise ConfigError(f"config section {where.rstrip('.')}: {e}") from None


def _merge_teacher(cur: Any, updates: Any) -> Any:
    if not isinstance(updates, dict):
        raise ConfigError(f"config key teacher must be a mapping, got {updates!r}")
    name = updates.get("name", cur.name)
    if name not in TEACHERS:
        raise ConfigError(f"config key teacher.name: {TEACHERS.unknown(name)}")
    if name != cur.name:
        cur = TEACHERS.config(name)(seed=cur.seed, batch_size=cur.batch_size)
    return merge_into(cur, {k: v for k, v in updates.items() if k != "name"}, "teacher.")


def resolve_config(run_dir: str | Path | None = None, preset: str | Path | None = None,
                   overrides: dict[str, Any] | None = None) -> PipelineConfig:
    """The one config rule: defaults <- RUN/config.yaml (if ``run_dir`` holds one) <- preset <- ``overrides``.

    ``overrides`` is a nested mapping like the YAML (``{"teacher": {"name": "oracle-labels"}}``).
    Raises ConfigError (one line, naming the key) for unknown keys, wrong types or a missing preset.
    """
    cfg = PipelineConfig()
    layers: list[tuple[str, Any]] = []
    if run_dir is not None and (Path(run_dir) / "config.yaml").is_file():
        layers.append((str(Path(run_dir) / "config.yaml"), lambda: read_preset(Path(run_dir) / "config.yaml")))
    if preset:
        layers.append((str(preset), lambda: read_preset(preset)))
    if overrides:
        layers.append(("", lambda: overrides))
    for where, data in layers:
        try:
            cfg = merge_into(cfg, data())
        except ConfigError as e:
            if not where or str(e).startswith(where):
                raise
            raise ConfigError(f"{where}: {e}") from None
    return cfg


def read_query_config(run_dir: str | Path) -> QueryConfig:
    """The run's QueryConfig by the one config rule (``resolve_config``): the ``query`` section of RUN/config.yaml,
    defaults when the run has no config. Raises ConfigError for an invalid config."""
    return resolve_config(run_dir).query


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> PipelineConfig:
    """Defaults, then a preset (a YAML path or a shipped name), then ``overrides``: ``resolve_config`` without a run."""
    return resolve_config(None, path, overrides)


def config_to_dict(cfg: Any) -> dict[str, Any]:
    return to_jsonable(cfg)


def dump_config(cfg: Any) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)


def save_config(run_dir: str | Path, cfg: PipelineConfig) -> Path:
    """Write the resolved config as RUN/config.yaml (atomically); returns its path."""

    path = Path(run_dir) / "config.yaml"
    with atomic_path(path) as tmp:
        tmp.write_text(dump_config(cfg))
    return path
