"""`scene-kd` entry point: one verb per stage, each a dataclass in scene_kd/commands/<verb>.py, parsed by tyro.

Each command module defines ``Args`` (a dataclass; its docstring is the verb's help) and
``main(args) -> int | None``. A verb that takes pipeline settings lists its config sections in ``SECTIONS``;
its ``Args`` holds those sections as nested dataclasses, so every config field is a flag
(``--teacher.label-flip 0.2``, ``--render.width 256``) whose shown default is the *resolved* one: built-in
defaults <- the run folder's config.yaml (verbs on an existing run) <- ``--config PRESET`` <- the shortcuts in
``SHORTCUTS`` (``--teacher NAME``, ``--views``, ...). That is ``scene_kd.config.resolve_config``, the one rule
every verb uses. The teacher's flags are those of the resolved teacher (``--teacher NAME`` picks it); an option
of another teacher is an error. Errors of type SceneKDError print one line and exit 2; ``--debug``
(anywhere on the command line) shows the traceback instead.
"""

from __future__ import annotations

import importlib
import logging
import sys
from typing import Any

import yaml

from scene_kd.errors import ConfigError, SceneKDError

COMMANDS: dict[str, str] = {
    "info": "scene_kd.commands.info",
    "synth": "scene_kd.commands.synth",
    "render": "scene_kd.commands.render",
    "features": "scene_kd.commands.features",
    "weights": "scene_kd.commands.weights",
    "fuse": "scene_kd.commands.fuse",
    "distill": "scene_kd.commands.distill",
    "eval": "scene_kd.commands.eval",
    "run": "scene_kd.commands.run",
    "query": "scene_kd.commands.query",
    "segment": "scene_kd.commands.segment",
    "view": "scene_kd.commands.view",
    "batch": "scene_kd.commands.batch",
    "grasp": "scene_kd.commands.grasp",
    "grasp-serve": "scene_kd.commands.grasp_serve",
}

SHORTCUTS: dict[str, tuple[str, ...]] = {
    # flag: the config keys it sets (section.key); a shortcut and its long flag together are a conflict
    "--teacher": ("teacher.name",),
    "--views": ("render.preset",),
    "--units": ("input.units",),
    "--width": ("render.width",),
    "--height": ("render.height",),
    "--levels": ("render.levels",),
    "--label-flip": ("teacher.label_flip",),
    "--weights": ("teacher.weights",),
    "--epochs": ("distill.epochs",),
    "--student": ("distill.student", "distill.enabled"),
}
"""Short flags kept from earlier versions and the README; each is applied as a config override."""


def _flag_value(argv: list[str], flag: str) -> tuple[str | None, list[str]]:
    """The value of ``flag`` (``--flag V`` or ``--flag=V``) and argv without it; ConfigError if given twice."""
    out, value, seen = [], None, 0
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == flag or a.startswith(flag + "="):
            seen += 1
            if "=" in a:
                value = a.split("=", 1)[1]
            elif i + 1 < len(argv):
                value = argv[i + 1]
                i += 1
            else:
                raise ConfigError(f"{flag} needs a value")
        else:
            out.append(a)
        i += 1
    if seen > 1:
        raise ConfigError(f"{flag} given {seen} times")
    return value, out


def _shortcut_overrides(argv: list[str], sections: tuple[str, ...]) -> tuple[dict[str, Any], list[str]]:
    """Config overrides from the shortcut flags this verb's sections accept, and argv without them."""
    overrides: dict[str, Any] = {}
    for flag, keys in SHORTCUTS.items():
        if keys[0].split(".")[0] not in sections:
            continue
        value, argv = _flag_value(argv, flag)
        if value is None:
            continue
        for key in keys:
            long = "--" + key.replace("_", "-")
            if any(a == long or a.startswith(long + "=") or a == "--" + key for a in argv):
                raise ConfigError(f"give {flag} or {long}, not both")
        parsed = yaml.safe_load(value) if keys[0] != "teacher.name" else value
        section, name = keys[0].split(".")
        overrides.setdefault(section, {})[name] = parsed
        if keys[0] == "distill.student":
            overrides["distill"]["enabled"] = True
    if "distill" in overrides and overrides["distill"].get("epochs") == 0:  # --epochs 0: no student
        overrides["distill"]["enabled"] = False
        del overrides["distill"]["epochs"]
    return overrides, argv


def _check_section_flags(argv: list[str], cfg: Any, sections: tuple[str, ...]) -> None:
    """A one-line ConfigError for ``--section.key`` flags the resolved config has no field for (e.g. an option
    of another teacher), instead of the parser's multi-line box."""
    import dataclasses

    from scene_kd.teachers.config import TEACHER_CONFIGS

    for a in argv:
        if not a.startswith("--") or "." not in a.split("=", 1)[0]:
            continue
        section, key = a[2:].split("=", 1)[0].split(".", 1)
        key = key.split(".", 1)[0].replace("-", "_")
        if section not in sections:
            continue
        obj = getattr(cfg, section)
        names = {f.name for f in dataclasses.fields(obj)}
        booleans = {f.name for f in dataclasses.fields(obj) if f.type in (bool, "bool")}
        if key in names or (key.startswith("no_") and key[3:] in booleans):  # tyro's --section.no-FLAG
            continue
        if section == "teacher":
            owners = [n for n, c in TEACHER_CONFIGS.items() if key in {f.name for f in dataclasses.fields(c)}]
            if owners:
                raise ConfigError(f"{a.split('=', 1)[0]} is an option of the {' / '.join(owners)} teacher, not of "
                                  f"{obj.name}; choose the teacher with --teacher NAME")
        raise ConfigError(f"unknown option {a.split('=', 1)[0]}; {section} options: "
                          f"{', '.join(sorted(n.replace('_', '-') for n in names))}")


def _default_args(mod: Any, argv: list[str]) -> tuple[Any, list[str]]:
    """A default ``Args`` holding the resolved config sections, and the argv left for tyro."""
    import dataclasses

    import tyro

    from scene_kd.config import resolve_config

    sections: tuple[str, ...] = getattr(mod, "SECTIONS", ())
    if not sections:
        return None, argv
    preset, _ = _flag_value(argv, "--config")
    overrides, argv = _shortcut_overrides(argv, sections)
    run_dir = None
    base = getattr(mod, "RUN_CONFIG_BASE", False)
    if isinstance(base, str):  # the run folder is this flag's value
        run_dir, _ = _flag_value(argv, base)
    elif base and argv and not argv[0].startswith("-"):
        run_dir = argv[0]  # the run folder comes first on the verbs that take one
    cfg = resolve_config(run_dir, preset, overrides)
    _check_section_flags(argv, cfg, sections)
    values = {}
    for f in dataclasses.fields(mod.Args):
        if f.name in sections:
            values[f.name] = getattr(cfg, f.name)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            values[f.name] = tyro.MISSING
    return mod.Args(**values), argv


def _usage() -> str:
    lines = ["usage: scene-kd VERB [options]   (scene-kd VERB --help for a verb's options)", "",
             "Give 3D scenes an open vocabulary. Add --debug to any command for tracebacks.", "", "verbs:"]
    for verb, modname in COMMANDS.items():
        doc = " ".join((importlib.import_module(modname).Args.__doc__ or "").split("\n\n")[0].split())
        first = doc.split(": ")[0].split("; ")[0].split(". ")[0].rstrip(".")
        lines.append(f"  {verb:<12} {first}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import tyro

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO, format="%(message)s")
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    verb, rest = argv[0], argv[1:]
    if verb not in COMMANDS:
        print(f"scene-kd: error: unknown verb {verb!r}; choose one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    mod = importlib.import_module(COMMANDS[verb])
    try:
        default, rest = _default_args(mod, rest)
        args = tyro.cli(mod.Args, args=rest, prog=f"scene-kd {verb}", default=default,
                        config=(tyro.conf.AvoidSubcommands,))
        rc = mod.main(args)
        return int(rc or 0)
    except SceneKDError as e:
        if debug:
            raise
        print(f"scene-kd: error: {e}", file=sys.stderr)
        return e.exit_code
    except BrokenPipeError:  # output piped into `head` and the like: not an error
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("scene-kd: interrupted", file=sys.stderr)
        return 130


def entrypoint() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entrypoint()
