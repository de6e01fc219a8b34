"""`scene-kd grasp-serve RUN [--port 8765] [--host 127.0.0.1]`: grasp lookup over HTTP (FastAPI, docs at /docs)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import tyro

from scene_kd.errors import SceneKDError


@dataclass
class Args:
    """Serve grasp targets for a run over HTTP: POST /grasp {"query": "..."}; OpenAPI docs at /docs."""

    run: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="RUN")]
    """Run folder with a feature field."""
    port: int = 8765
    host: str = "127.0.0.1"
    """Interface to bind; 127.0.0.1 (this machine only) unless you mean to expose it."""
    source: str | None = None
    """Feature source: fused | distilled | ensemble | auto (default: the run's query config, else auto)."""
    min_relevancy: float = 0.6
    margin: float = 0.01
    max_width: float | None = None
    sensor: tuple[float, float, float] | None = None


def main(args: Args) -> int:
    from scene_kd.apps.grasp.api import GraspLookup
    from scene_kd.apps.grasp.service import create_app
    from scene_kd.query.grasp import GraspConfig

    try:
        import uvicorn
    except ImportError:
        raise SceneKDError("grasp-serve needs the grasp extra: pip install 'scene-kd[grasp]'") from None
    lookup = GraspLookup(args.run, GraspConfig(min_relevancy=args.min_relevancy, margin=args.margin,
                                               max_width=args.max_width), source=args.source, sensor=args.sensor)
    print(f"serving grasp targets for {args.run} on http://{args.host}:{args.port} (docs at /docs)", flush=True)
    uvicorn.run(create_app(lookup), host=args.host, port=args.port, log_level="warning")
    return 0
