"""One registry per pluggable kind (scene_kd/registry.py): the generic Registry, and the teacher and student
registries as the single source of names for configs, the CLI, ``scene-kd weights`` and the docs."""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest

from scene_kd.cli import parse_verb
from scene_kd.commands import run as run_cmd
from scene_kd.config import resolve_config
from scene_kd.distill.config import STUDENTS, DistillConfig, GaussianFieldConfig
from scene_kd.errors import ConfigError
from scene_kd.registry import Registry
from scene_kd.teachers.config import TEACHERS, TeacherConfig, TeacherLiteral

DOCS = Path(__file__).resolve().parents[1] / "docs"


@dataclass
class _AConfig:
    name: Literal["a"] = "a"
    size: int = 1


@dataclass
class _BConfig:
    depth: int = 2


def _make_a(size: int = 1) -> tuple[str, int]:
    return ("a", size)


def test_register_create_and_errors():
    reg: Registry[object] = Registry("widget")
    reg.register("a", _AConfig, _make_a, summary="the a")
    reg.register("b", _BConfig, "scene_kd.registry:Entry")  # lazy: imported on first use
    assert reg.names() == ("a", "b") and "a" in reg and "c" not in reg and ["x"] not in reg and len(reg) == 2
    assert reg.config("a") is _AConfig and reg.get("a").summary == "the a"
    assert reg.create("a", size=3) == ("a", 3)
    from scene_kd.registry import Entry

    assert reg.factory("b") is Entry
    with pytest.raises(ConfigError, match=r"^widget 'a' is already registered \(config _AConfig\)$"):
        reg.register("a", _BConfig, _make_a)
    with pytest.raises(ConfigError) as e:
        reg.get("c")
    assert str(e.value) == "unknown widget 'c'; choose one of a, b" and "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="unknown widget 'c'; choose one of a, b"):
        reg.create("c")
    with pytest.raises(ConfigError, match="must be a dataclass"):
        reg.register("d", dict, _make_a)
    with pytest.raises(ConfigError, match=r"_AConfig.name defaults to 'a'"):
        reg.register("e", _AConfig, _make_a)  # the config's own name field must agree
    with pytest.raises(ConfigError, match="module:attr"):
        reg.register("f", _BConfig, "scene_kd.registry")
    assert reg.names() == ("a", "b")  # failed registrations leave nothing behind


def test_deriving_the_types_seals_the_registry():
    reg: Registry[object] = Registry("widget")
    with pytest.raises(ConfigError, match="no widget registered"):
        reg.union()
    reg.register("a", _AConfig, _make_a)
    reg.register("b", _BConfig, _make_a)
    assert typing.get_args(reg.union()) == (_AConfig, _BConfig)
    assert typing.get_args(reg.literal()) == ("a", "b")
    with pytest.raises(ConfigError, match="registry is sealed"):
        reg.register("c", _BConfig, _make_a)


def test_config_types_are_derived_from_the_registries():
    assert TEACHERS.names() == ("clip-sam", "clip-dense", "clip-grid", "oracle-labels")
    assert STUDENTS.names() == ("sparseconv", "gaussian-field")
    assert typing.get_args(TeacherConfig) == tuple(e.config for e in TEACHERS)
    assert typing.get_args(TeacherLiteral) == TEACHERS.names()
    for e in TEACHERS:  # every config's name field takes exactly the registered names (tyro's --teacher choices)
        hint = typing.get_type_hints(e.config, include_extras=True)["name"]
        assert typing.get_args(typing.get_args(hint)[0]) == TEACHERS.names()
    assert typing.get_args(typing.get_type_hints(DistillConfig)["student"]) == STUDENTS.names()
    assert STUDENTS.config("sparseconv") is DistillConfig and STUDENTS.config("gaussian-field") is GaussianFieldConfig
    for e in TEACHERS:  # the YAML `name:` key picks the registered class
        assert e.config().name == e.name
        assert type(resolve_config(None, None, {"teacher": {"name": e.name}}).teacher) is e.config


def test_every_registered_factory_resolves():
    for e in TEACHERS:
        assert callable(TEACHERS.factory(e.name)), e.name
    for e in STUDENTS:
        s = STUDENTS.create(e.name)
        assert s.name == e.name and set(s.scene_kinds) <= {"points", "gaussians"}
        assert all(callable(getattr(s, m)) for m in ("inputs", "outputs", "train", "describe"))


def _choices(err: str) -> set[str]:
    """The names in tyro's "invalid choice ... Expected one of (...)" box (less batch's optional None)."""
    found = re.search(r"Expected\s+one\s+of\s+\(([^)]*)\)", " ".join(err.replace("│", " ").split()))
    assert found, err
    return set(re.findall(r"'([^']+)'", found.group(1))) - {"None"}


def test_the_cli_accepts_exactly_the_registered_names(capsys):
    for name in TEACHERS.names():
        assert parse_verb("run", ["s.ply", "--out", "r", "--teacher", name])[1].teacher.name == name
        assert parse_verb("batch", ["t.laz", "--out", "o", "--labels", "a", "--teacher", name])[1].teacher == name
    for name in STUDENTS.names():
        assert parse_verb("run", ["s.ply", "--out", "r", "--student", name])[1].distill.student == name
    capsys.readouterr()
    for argv in (["run", "s.ply", "--out", "r", "--teacher", "clip-fast"],
                 ["batch", "t.laz", "--out", "o", "--labels", "a", "--teacher", "clip-fast"]):
        with pytest.raises(SystemExit):  # tyro's invalid choice, listing the registry's names
            parse_verb(argv[0], argv[1:])
        assert _choices(capsys.readouterr().err) == set(TEACHERS.names())
    with pytest.raises(SystemExit):
        parse_verb("run", ["s.ply", "--out", "r", "--student", "voxels"])
    assert _choices(capsys.readouterr().err) == set(STUDENTS.names())
    with pytest.raises(ConfigError) as e:  # a config file's unknown teacher: one line listing the names
        resolve_config(None, None, {"teacher": {"name": "clip-fast"}})
    assert str(e.value) == "config key teacher.name: unknown teacher 'clip-fast'; choose one of " + \
        ", ".join(TEACHERS.names())
    with pytest.raises(ConfigError, match="distill.student: expected one of 'sparseconv', 'gaussian-field', got 'voxels'"):
        resolve_config(None, None, {"distill": {"student": "voxels"}})
    # the help lists them, from the registry
    assert " | ".join(TEACHERS.names()) in run_cmd.Args.__doc__ and " | ".join(STUDENTS.names()) in run_cmd.Args.__doc__


def test_weights_come_from_the_registered_teachers():
    from scene_kd.teachers.weights import known_specs

    specs = [(s.kind, s.model) for s in known_specs()]
    assert specs == [("open_clip", "ViT-B-16"), ("sam", "vit_b"), ("sam", "vit_l"), ("sam", "vit_h")]


def test_distill_settings_reset_only_the_other_students_sections():
    from scene_kd.distill.stage import distill_settings

    cfg = dataclasses.replace(DistillConfig(), gaussian_field=GaussianFieldConfig(iterations=7), voxel_size=0.5)
    assert distill_settings(cfg, "sparseconv").gaussian_field == GaussianFieldConfig()
    assert distill_settings(cfg, "gaussian-field").gaussian_field.iterations == 7
    assert distill_settings(cfg, "sparseconv").voxel_size == 0.5


def test_the_docs_list_every_registered_teacher_and_student():
    table = re.findall(r"^\| `([a-z-]+)` \|", (DOCS / "teachers.md").read_text().split("\n\n")[1], re.M)
    assert table == list(TEACHERS.names())
    students = (DOCS / "teachers.md").read_text()
    for name in STUDENTS.names():
        assert f"`{name}`" in students, name
