"""`scene-kd` entry point: one verb per stage, each a dataclass in scene_kd/commands/<verb>.py, parsed by tyro.

Each command module defines ``Args`` (a dataclass; its docstring is the verb's help) and
``main(args) -> int | None``. A verb that takes pipeline settings lists its config sections in ``SECTIONS``;
its ``Args`` holds those sections as nested dataclasses, so every config field is a flag
(``--teacher.label-flip 0.2``, ``--render.width 256``) whose shown default is the *resolved* one: built-in
defaults <- the run folder's config.yaml (``RUN_CONFIG_BASE`` names the field holding it) <- ``--config PRESET``
<- the command line. That is ``scene_kd.config.resolve_config``, the one rule every verb uses; tyro parses the
command line twice, first to read the run folder and preset, then over the resolved defaults. Short forms
(``--teacher NAME``, ``--views``, ``--epochs`` ...) are tyro aliases declared on the config fields. The teacher's
flags are those of the resolved teacher (``--teacher NAME`` picks it); an option of another teacher is an error.
Errors of type SceneKDError print one line and exit 2; ``--debug`` (anywhere on the command line) shows the
traceback instead.
"""

from __future__ import annotations

import importlib
import logging
import sys
from pathlib import Path
from typing import Any

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


def _flag_groups(args_type: Any, default: Any) -> list[tuple[str, ...]]:
    """The flags tyro makes of ``args_type``, one tuple per argument, aliases first (``("--epochs",
    "--distill.epochs")``); nested dataclasses give ``--section.key`` (``default``'s nested values decide a
    section's class, e.g. the resolved teacher), booleans also ``--no-key`` (in the same tuple). Read from the
    markers (``tyro.conf.arg``) tyro reads; tests/test_messages.py checks it against tyro's own parser."""
    import dataclasses
    import typing

    def walk(tp: Any, value: Any, prefix: str) -> list[tuple[str, ...]]:
        hints = typing.get_type_hints(tp, include_extras=True)
        out: list[tuple[str, ...]] = []
        for f in dataclasses.fields(tp):
            hint = hints[f.name]
            marks = typing.get_args(hint)[1:] if typing.get_origin(hint) is typing.Annotated else ()
            if any("Positional" in repr(m) or "Suppress" in repr(m) for m in (*marks, hint if not marks else None)
                   if type(m).__name__ != "_ArgConfig"):  # a help text may name them
                continue
            sub = getattr(value, f.name, None)
            if dataclasses.is_dataclass(sub) or (isinstance(hint, type) and dataclasses.is_dataclass(hint)):
                out += walk(type(sub) if dataclasses.is_dataclass(sub) else hint, sub, prefix + f.name + ".")
                continue
            conf = next((m for m in marks if type(m).__name__ == "_ArgConfig"), None)
            name = (conf.name if conf is not None and conf.name else f.name).replace("_", "-")
            local = conf is not None and conf.prefix_name is False
            long = "--" + ("" if local else prefix.replace("_", "-")) + name
            aliases = tuple(conf.aliases or ()) if conf is not None else ()
            base = typing.get_args(hint)[0] if marks else hint
            negative = ("--" + ("" if local else prefix.replace("_", "-")) + "no-" + name,) if base is bool else ()
            out.append((*aliases, long, *negative))
        return out

    return walk(args_type, default, "")


def _attribute_docs(cls: type) -> dict[str, str]:
    """The attribute docstrings written in ``cls``'s own body (the string after ``name: T = ...``)."""
    import ast
    import inspect
    import textwrap

    try:
        body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body  # type: ignore[attr-defined]
    except (OSError, TypeError, SyntaxError, IndexError, AttributeError):
        return {}
    return {a.target.id: b.value.value for a, b in zip(body, body[1:], strict=False)
            if isinstance(a, ast.AnnAssign) and isinstance(a.target, ast.Name) and isinstance(b, ast.Expr)
            and isinstance(b.value, ast.Constant) and isinstance(b.value.value, str)}


def one_line_docs(args_type: type, _seen: set[type] | None = None) -> None:
    """Give each documented field of ``args_type`` and of every dataclass its hints reach (sections, each
    member of the teacher union) its docstring as ``tyro.conf.arg(help=...)``, each paragraph on one line.
    tyro 1.0 joins a docstring's lines only where the next one starts with a letter, and reads attribute
    docstrings with their indentation (so never): ``--help`` broke every field's text at the source's line ends,
    leaving ragged boxes. Idempotent; mutates the classes' ``__annotations__`` once per process."""
    import dataclasses
    import inspect
    import re
    import typing

    import tyro

    seen = set() if _seen is None else _seen
    if args_type in seen or not dataclasses.is_dataclass(args_type):
        return
    seen.add(args_type)

    def reached(tp: Any) -> list[type]:
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            return [tp]
        return [c for a in typing.get_args(tp) for c in reached(a)]

    for cls in (c for c in args_type.__mro__ if dataclasses.is_dataclass(c)):
        if cls.__dict__.get("_one_line_docs"):
            continue
        hints = typing.get_type_hints(cls, include_extras=True)
        fields = {f.name for f in dataclasses.fields(cls)}  # not ClassVars
        for name, doc in _attribute_docs(cls).items():
            if name not in fields or name not in cls.__dict__.get("__annotations__", {}):
                continue
            text = "\n\n".join(" ".join(p.split()) for p in re.split(r"\n\s*\n", inspect.cleandoc(doc)))
            cls.__annotations__[name] = typing.Annotated[hints[name], tyro.conf.arg(help=text)]
        cls._one_line_docs = True  # type: ignore[attr-defined]
    for hint in typing.get_type_hints(args_type, include_extras=True).values():
        for sub in reached(hint):
            one_line_docs(sub, seen)


def _known_flags(args_type: Any, default: Any) -> set[str]:
    """Every ``--flag`` tyro accepts for ``args_type`` over ``default`` (see :func:`_flag_groups`)."""
    return {flag for group in _flag_groups(args_type, default) for flag in group}


def _parse(verb: str, mod: Any, argv: list[str], default: Any, *, quiet: bool = False) -> tuple[Any, list[str]]:
    """tyro over ``mod.Args`` with ``default``: the parsed Args and the tokens it did not recognise.
    ``quiet``: no --help, no output; tyro's SystemExit on an error propagates."""
    import contextlib
    import io

    import tyro

    # tyro 1.0.17 prints a value error's box even with console_outputs=False: a quiet parse swallows it
    with contextlib.redirect_stderr(io.StringIO()) if quiet else contextlib.nullcontext():
        return tyro.cli(mod.Args, args=argv, prog=f"scene-kd {verb}", default=default, return_unknown_args=True,
                        add_help=not quiet, console_outputs=not quiet, config=(tyro.conf.AvoidSubcommands,),
                        description=None if quiet else _description(mod.Args))


def _description(args_type: Any) -> str:
    """The verb's docstring, each paragraph refilled to the terminal (at most 100 columns). tyro joins a line
    starting with a letter to the one before and prints the result unwrapped, so continuation lines are
    indented by one space (which tyro keeps as a line break)."""
    import inspect
    import shutil
    import textwrap

    width = min(shutil.get_terminal_size((100, 24)).columns, 100)
    paragraphs = (inspect.getdoc(args_type) or "").split("\n\n")
    return "\n\n".join(textwrap.fill(" ".join(p.split()), width, subsequent_indent=" ")
                       for p in paragraphs)


def _sections_default(mod: Any, cfg: Any) -> Any:
    """An ``Args`` holding ``cfg``'s sections, tyro.MISSING for the required fields."""
    import dataclasses

    import tyro

    values = {}
    for f in dataclasses.fields(mod.Args):
        if f.name in mod.SECTIONS:
            values[f.name] = getattr(cfg, f.name)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            values[f.name] = tyro.MISSING
    return mod.Args(**values)


def _default_args(mod: Any, argv: list[str], verb: str = "") -> tuple[Any, list[str]]:
    """A default ``Args`` holding the resolved config sections (None for a verb without ``SECTIONS``), and argv.

    tyro reads the run folder (the ``RUN_CONFIG_BASE`` field) and ``--config`` from argv over the built-in
    defaults (a failing first read leaves them unset; the second parse reports the error), then
    ``resolve_config`` gives the defaults; ``--teacher NAME`` naming another teacher than the resolved one
    re-resolves with that teacher (its own option flags differ)."""
    from scene_kd.config import PipelineConfig, resolve_config

    if not getattr(mod, "SECTIONS", ()):
        return None, argv
    run_dir = preset = None
    try:
        first, _ = _parse(verb, mod, argv, _sections_default(mod, PipelineConfig()), quiet=True)
        run_dir, preset = getattr(first, getattr(mod, "RUN_CONFIG_BASE", ""), None), first.config
    except SystemExit:
        pass
    default = _sections_default(mod, resolve_config(run_dir, preset))
    if "teacher" in mod.SECTIONS:
        try:
            second, _ = _parse(verb, mod, argv, default, quiet=True)
            if second.teacher.name != default.teacher.name:
                cfg = resolve_config(run_dir, preset, {"teacher": {"name": second.teacher.name}})
                default = _sections_default(mod, cfg)
        except SystemExit:
            pass
    return default, argv


def _both_forms(argv: list[str], groups: list[tuple[str, ...]]) -> None:
    """ConfigError when a short form and its long flag are both given. tyro treats aliases as one argument
    (the last one given wins), so this is the one check that reads argv itself."""
    given = {a.split("=", 1)[0] for a in argv[: argv.index("--") if "--" in argv else len(argv)]}
    for group in groups:
        both = [f for f in group if f in given]
        if len(both) > 1:
            raise ConfigError(f"give {both[0]} or {both[1]}, not both")


def _unknown(verb: str, mod: Any, default: Any, tokens: list[str]) -> ConfigError:
    """The one-line error for tokens tyro did not recognise: an option of another teacher says whose it is;
    else the closest flag (difflib), short forms included, so ``--epoch`` suggests ``--epochs``."""
    import dataclasses
    import difflib

    from scene_kd.teachers.config import TEACHERS

    flags = [t.split("=", 1)[0] for t in tokens if t.startswith("--")]
    if not flags:
        return ConfigError(f"unexpected argument {tokens[0]!r} for scene-kd {verb} (scene-kd {verb} --help lists all)")
    flag = flags[0]
    known = _known_flags(mod.Args, default)
    if default is not None and "teacher" in getattr(mod, "SECTIONS", ()):
        current = default.teacher.name
        for name, cls in ((e.name, e.config) for e in TEACHERS):
            theirs = _known_flags(mod.Args, dataclasses.replace(default, teacher=cls()))
            if name != current and flag in theirs - known:
                return ConfigError(f"{flag} is an option of the {name} teacher, not of {current}; choose the "
                                   f"teacher with --teacher NAME")
            known |= theirs
    known |= {"--config", "--help", "--debug"}
    close = difflib.get_close_matches(flag.replace("_", "-"), sorted(known), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]}?" if close else ""
    return ConfigError(f"unknown option {flag} for scene-kd {verb}{hint} (scene-kd {verb} --help lists all)")


def _command_line_rules(args: Any, default: Any) -> Any:
    """The two meanings the short forms carry beyond setting a field: ``--epochs 0`` is no student (the
    epochs stay the resolved ones), and choosing a student other than the resolved one turns distillation on
    (``--config splat --student gaussian-field``)."""
    import dataclasses

    d, base = getattr(args, "distill", None), getattr(default, "distill", None)
    if d is None or base is None:
        return args
    if d.epochs == 0:
        d = dataclasses.replace(d, enabled=False, epochs=base.epochs)
    elif d.student != base.student:
        d = dataclasses.replace(d, enabled=True)
    return dataclasses.replace(args, distill=d)


def parse_verb(verb: str, argv: list[str]) -> tuple[Any, Any]:
    """The command module of ``verb`` and its parsed ``Args``. Raises ConfigError (one line) for an unknown
    option, a short and long form together or an invalid config; tyro exits for --help and its own errors."""
    mod = importlib.import_module(COMMANDS[verb])
    one_line_docs(mod.Args)
    default, argv = _default_args(mod, argv, verb)
    if not any(a in ("-h", "--help") for a in argv):
        groups = _flag_groups(mod.Args, default)
        _both_forms(argv, groups)
        known = {flag for group in groups for flag in group} | {"--config"}
        # a misspelt flag can make tyro fail first on something else (e.g. `segment --lables x`: --labels missing)
        # and print a box without a suggestion: a quiet parse tells whether the stray flag is the problem
        if stray := [t for t in argv if t.startswith("--") and t.split("=", 1)[0] not in known]:
            try:
                _, unknown = _parse(verb, mod, argv, default, quiet=True)
            except SystemExit:
                raise _unknown(verb, mod, default, stray) from None
            if unknown:
                raise _unknown(verb, mod, default, unknown)
    args, unknown = _parse(verb, mod, argv, default)
    if unknown:
        raise _unknown(verb, mod, default, unknown)
    return mod, _command_line_rules(args, default)


def _usage() -> str:
    lines = ["usage: scene-kd VERB [options]   (scene-kd VERB --help for a verb's options)", "",
             "Give 3D scenes an open vocabulary. Add --debug to any command for tracebacks.", "", "verbs:"]
    for verb, modname in COMMANDS.items():
        doc = " ".join((importlib.import_module(modname).Args.__doc__ or "").split("\n\n")[0].split())
        first = doc.split(": ")[0].split("; ")[0].split(". ")[0].rstrip(".")
        lines.append(f"  {verb:<12} {first}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # --debug may stand anywhere, on every verb, and is no verb's option: taken out before tyro sees argv
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO, format="%(message)s")
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    verb, rest = argv[0], argv[1:]
    if verb not in COMMANDS:
        import difflib

        close = difflib.get_close_matches(verb, list(COMMANDS), n=2, cutoff=0.6)
        hint = f"did you mean {' or '.join(close)}? " if close else ""
        print(f"scene-kd: error: unknown verb {verb!r}; {hint}choose one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    out_dir = None
    try:
        mod, args = parse_verb(verb, rest)
        out = getattr(args, "out", None)
        out_dir = Path(out) if out and not Path(out).exists() else None  # a folder this call would create
        rc = mod.main(args)
        return int(rc or 0)
    except SceneKDError as e:
        if out_dir is not None and out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()  # a refused plan or bad input leaves no empty run folder behind
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
