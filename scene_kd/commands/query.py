"""`scene-kd query RUN "text"`: relevancy of every point to a text query; top hits; optional export."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import tyro

from scene_kd.commands._common import emit


@dataclass
class Args:
    """Score every point of a run's feature field against a text query (LERF relevancy)."""

    run: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="RUN")]
    """Run folder (holds field.safetensors + field.json)."""
    text: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="QUERY")]
    """The query, e.g. "parked car"; or a group NAME=a+b+c, scored by its best member (as segment scores groups)."""
    export: str | None = None
    """Write the points with relevancy above the threshold (and their relevancy) to this .ply/.las/.laz file."""
    top: int = 10
    """How many of the best points to list."""
    source: str | None = None
    """fused | distilled | ensemble | auto (default: the run's query config, else auto)."""
    threshold: float | None = None
    """Relevancy counted as a hit (default: the run's query config, else 0.5)."""
    negatives: str | None = None
    """Comma-separated negative prompts (default: the run's query config, else object,things,stuff,texture)."""
    text_encoder: str | None = None
    """Refuse the run unless its field was made with this text encoder id."""
    json: bool = False
    """Print one JSON object."""


def main(args: Args) -> int:
    from dataclasses import replace

    import torch

    from scene_kd.config import read_query_config
    from scene_kd.errors import SceneKDError
    from scene_kd.query.segment import parse_labels
    from scene_kd.query.session import QuerySession
    from scene_kd.query.similarity import check_prompt

    text = check_prompt(args.text)
    if args.top < 0:
        raise SceneKDError(f"--top must be >= 0, got {args.top}")
    cfg = read_query_config(args.run)
    cfg = replace(cfg, source=args.source or cfg.source,
                  threshold=cfg.threshold if args.threshold is None else args.threshold,
                  negatives=tuple(parse_labels(args.negatives)) if args.negatives is not None else cfg.negatives)
    session = QuerySession.open(args.run, query=cfg, expect_text_encoder=args.text_encoder)
    field, threshold = session.field, cfg.threshold
    rel = session.relevancy(text)
    hits = rel > threshold
    k = min(args.top, len(rel))
    scores, index = torch.topk(rel, k) if k else (rel[:0], torch.zeros(0, dtype=torch.long))
    out = {
        "query": text, "count_above_threshold": int(hits.sum()),
        "top": [[int(i), round(float(s), 6)] for i, s in zip(index, scores, strict=True)],
        "threshold": threshold, "source": cfg.source, "count": len(field),
    }
    if args.export:
        from scene_kd.query.export import export_points

        if not bool(hits.any()):
            raise SceneKDError(f"no point has relevancy above {threshold} for {text!r}; nothing to export")
        out["export"] = export_points(args.export, field, run_dir=args.run, mask=hits, relevancy=rel)
    human = None
    if not args.json:
        noun = "Gaussians" if field.kind == "gaussians" else "points"
        lines = [f"{text!r}: {out['count_above_threshold']:,} of {len(field):,} {noun} with relevancy > {threshold}"]
        lines += [f"  #{i:<10} {s:.4f}" for i, s in out["top"]]
        if "export" in out:
            lines.append(f"  wrote {out['export']['count']:,} {noun} to {out['export']['path']}")
        human = "\n".join(lines)
    emit(out, args.json, human)
    return 0
