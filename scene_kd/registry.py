"""One registry per pluggable kind (teachers, students): ``name -> (Config dataclass, factory)``.

Like segment-anything's ``sam_model_registry`` and open_clip's model registry, a kind's names, their config
classes and how to build each one live in one table, and everything that lists or checks names (the config's
tagged union and ``Literal`` types, YAML validation, the CLI's choices and help, ``scene-kd weights``, the docs
test) derives from it. The instances are ``scene_kd.teachers.config.TEACHERS`` and
``scene_kd.distill.config.STUDENTS``.

Adding a teacher is one call, in ``scene_kd/teachers/config.py`` beside the others (above the line that derives
``TeacherConfig`` from the registry), after its config dataclass::

    @dataclass
    class ClipDenseConfig(_ClipCommon):
        name: TeacherName = "clip-dense"
        ...

    TEACHERS.register("clip-dense", ClipDenseConfig, "scene_kd.teachers.clip_dense:ClipDenseTeacher",
                      summary="one dense open_clip forward per view, pooled per mask")

The factory is a callable or a lazy ``"package.module:attr"`` reference, imported on first use, so listing names
and parsing configs never imports torch or a model library (tests/test_import_graph.py counts such a reference
as an import). The config's ``name`` field default must equal the registered name (checked). A student is
registered the same way in ``scene_kd/distill/config.py``. Once a registry's union or ``Literal`` has been
derived it is sealed: a later ``register`` raises instead of leaving a name the config types do not accept.
"""

from __future__ import annotations

import dataclasses
import importlib
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from scene_kd.errors import ConfigError

C = TypeVar("C")
"""The registry's config base type."""


@dataclass(frozen=True)
class Entry(Generic[C]):
    """One registered name: its config dataclass, its factory (callable, or ``"module:attr"`` resolved by
    :meth:`Registry.factory`) and a one-line summary for listings."""

    name: str
    config: type[C]
    factory: Callable[..., Any] | str
    summary: str = ""


class Registry(Generic[C]):
    """``name -> Entry`` for one kind (``kind`` names it in errors: "unknown teacher 'x'; choose one of ...").

    Names keep their registration order (the first is listed first). Raises ConfigError for a duplicate name, a
    config that is not a dataclass, a ``name`` field default that differs from the name, an unknown name (one line
    listing the known names) and registration after the registry was sealed.
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry[C]] = {}
        self._sealed = False

    def register(self, name: str, config: type[C], factory: Callable[..., Any] | str, *,
                 summary: str = "") -> Entry[C]:
        """Add ``name`` with its config dataclass and factory (a callable, or ``"package.module:attr"``)."""
        if self._sealed:
            raise ConfigError(f"the {self.kind} registry is sealed (its config types are derived); register "
                              f"{name!r} beside the other {self.kind}s, before the types are derived")
        if not name or name != name.strip():
            raise ConfigError(f"invalid {self.kind} name {name!r}")
        if name in self._entries:
            raise ConfigError(f"{self.kind} {name!r} is already registered (config "
                              f"{self._entries[name].config.__name__})")
        if not (isinstance(config, type) and dataclasses.is_dataclass(config)):
            raise ConfigError(f"{self.kind} {name!r}: config must be a dataclass, got {config!r}")
        own = {f.name: f.default for f in dataclasses.fields(config)}.get("name", name)
        if own != name:
            raise ConfigError(f"{self.kind} {name!r}: {config.__name__}.name defaults to {own!r}")
        if isinstance(factory, str) and factory.count(":") != 1:
            raise ConfigError(f"{self.kind} {name!r}: a lazy factory is 'package.module:attr', got {factory!r}")
        if not isinstance(factory, str) and not callable(factory):
            raise ConfigError(f"{self.kind} {name!r}: factory must be callable or 'module:attr', got {factory!r}")
        entry = Entry(name, config, factory, summary)
        self._entries[name] = entry
        return entry

    def names(self) -> tuple[str, ...]:
        """Registered names in registration order."""
        return tuple(self._entries)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._entries

    def __iter__(self) -> Iterator[Entry[C]]:
        return iter(tuple(self._entries.values()))

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, name: str) -> Entry[C]:
        """The entry of ``name``; ConfigError ``unknown <kind> 'x'; choose one of a, b, c`` otherwise."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise ConfigError(self.unknown(name)) from None

    def unknown(self, name: object) -> str:
        """The one-line message for an unknown name, listing the known ones."""
        return f"unknown {self.kind} {name!r}; choose one of {', '.join(self._entries) or '(none registered)'}"

    def config(self, name: str) -> type[C]:
        """The config dataclass of ``name``."""
        return self.get(name).config

    def factory(self, name: str) -> Callable[..., Any]:
        """The factory of ``name``, importing a lazy ``"module:attr"`` reference (ImportError propagates)."""
        fac = self.get(name).factory
        if isinstance(fac, str):
            module, attr = fac.split(":")
            fac = getattr(importlib.import_module(module), attr)
        return fac

    def create(self, name: str, /, *args: Any, **kwargs: Any) -> Any:
        """``factory(name)(*args, **kwargs)``."""
        return self.factory(name)(*args, **kwargs)

    def union(self) -> Any:
        """``Union[Config, ...]`` of the registered configs (what tyro and the YAML loader read); seals."""
        if not self._entries:
            raise ConfigError(f"no {self.kind} registered")
        self._sealed = True
        return typing.Union[tuple(e.config for e in self._entries.values())]  # noqa: UP007

    def literal(self) -> Any:
        """``Literal[name, ...]`` of the registered names; seals."""
        if not self._entries:
            raise ConfigError(f"no {self.kind} registered")
        self._sealed = True
        return typing.Literal[self.names()]
