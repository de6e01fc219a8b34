"""`scene-kd view RUN`: the web viewer (viser) for querying a run in words."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import tyro


@dataclass
class Args:
    """Open a run in the web viewer: type a query, see relevancy; colour by labels; click to inspect; export."""

    run: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="RUN")]
    """Run folder (holds field.safetensors + field.json)."""
    port: int = 8080
    """Port to serve on (the next free one if taken)."""
    host: str = "127.0.0.1"
    """Interface to bind. The default serves this machine only; 0.0.0.0 exposes the viewer to the network."""
    max_points: int = 500_000
    """Most points sent to the browser; above this a random subsample is shown (queries still use all)."""
    text_encoder: str | None = None
    """Refuse the run unless its field was made with this text encoder id."""


def main(args: Args) -> int:
    from pathlib import Path

    from scene_kd.apps.viewer.app import serve
    from scene_kd.errors import RunStateError, SceneKDError

    run = Path(args.run)
    if not run.is_dir():
        raise RunStateError("not a run folder", path=run)
    if not (run / "field.json").exists():
        raise RunStateError("no feature field here (field.json); run `scene-kd run SCENE --out RUN` first", path=run)
    if not 0 < args.port < 65536:
        raise SceneKDError(f"--port must be 1..65535, got {args.port}")
    if args.max_points < 1:
        raise SceneKDError(f"--max-points must be positive, got {args.max_points}")
    serve(run, host=args.host, port=args.port, max_points=args.max_points, text_encoder=args.text_encoder)
    return 0
