"""`scene-kd` entry point: one verb per stage, each a dataclass in scene_kd/commands/<verb>.py (tyro).

Each command module defines ``Args`` (a dataclass; its docstring is the verb's help) and
``main(args) -> int | None``. Errors of type SceneKDError print one line and exit 2; ``--debug``
(anywhere on the command line) shows the traceback instead.
"""

from __future__ import annotations

import importlib
import logging
import sys
from typing import Any

from scene_kd.errors import SceneKDError

# verb -> module; a module that does not exist yet is left out of the CLI.
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


def _load_commands() -> dict[str, Any]:
    mods = {}
    for verb, modname in COMMANDS.items():
        try:
            mods[verb] = importlib.import_module(modname)
        except ModuleNotFoundError as e:
            if e.name != modname:
                raise
    return mods


def main(argv: list[str] | None = None) -> int:
    import tyro

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO, format="%(message)s")
    mods = _load_commands()
    try:
        args = tyro.extras.subcommand_cli_from_dict(
            {verb: m.Args for verb, m in mods.items()}, args=argv, prog="scene-kd",
            description="Give 3D scenes an open vocabulary. Add --debug to any command for tracebacks.",
        )
        mod = next(m for m in mods.values() if isinstance(args, m.Args))
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
