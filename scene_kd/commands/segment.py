"""`scene-kd segment RUN --labels a,b,c --out out.las`: label every point with one of the given classes."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Annotated

import tyro

from scene_kd.commands._common import emit


@dataclass
class Args:
    """Label every point of a run with the closest of the given class names (open-vocabulary segmentation)."""

    run: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="RUN")]
    """Run folder (holds field.safetensors + field.json)."""
    labels: str
    """Comma-separated class names, e.g. road,building,tree,car; a group NAME=a+b+c labels its members' points
    NAME (score: the best member), e.g. ground=road+sidewalk+grass,building,vegetation=tree."""
    out: str | None = None
    """Write the labelled points here: .las/.laz (classification + confidence) or .ply (label + confidence)."""
    source: str | None = None
    """fused | distilled | ensemble | auto (default: the run's query config, else auto)."""
    template: str | None = None
    """Class-name prompts: one template with {}, or imagenet-80 (open_clip's 80-template ensemble; the default)."""
    unknown_threshold: float | None = None
    """Label a point unknown (-1; LAS class 1) when its best cosine similarity is below this."""
    text_encoder: str | None = None
    """Refuse the run unless its field was made with this text encoder id."""
    json: bool = False
    """Print one JSON object."""


def main(args: Args) -> int:
    from dataclasses import replace

    from scene_kd.config import read_query_config
    from scene_kd.query.labels import parse_vocabulary, rare_members, rare_warning
    from scene_kd.query.segment import label_counts
    from scene_kd.query.session import QuerySession
    from scene_kd.teachers.config import ORACLE, ORACLE_NOTE

    vocab = parse_vocabulary(args.labels)
    names = list(vocab.names)
    cfg = read_query_config(args.run)
    cfg = replace(cfg, source=args.source or cfg.source, template=cfg.template if args.template is None else args.template,
                  unknown_threshold=cfg.unknown_threshold if args.unknown_threshold is None else args.unknown_threshold)
    session = QuerySession.open(args.run, query=cfg, expect_text_encoder=args.text_encoder)
    field, unknown_threshold = session.field, cfg.unknown_threshold
    idx, conf = session.segment(vocab)
    counts, unknown = label_counts(idx, names)
    out = {"labels": names, "counts": counts, "unknown": unknown, "count": len(field),
           "mean_confidence": round(float(conf.mean()), 6) if len(conf) else None}
    if vocab.grouped:
        out["groups"] = vocab.as_json()
    rare = rare_members(field, vocab)
    if rare:  # said once, in the JSON too
        out["warnings"] = [rare_warning(rare)]
        print(f"scene-kd: warning: {out['warnings'][0]}", file=sys.stderr)
    out["teacher"] = field.teacher
    if field.teacher == ORACLE:  # every output of an oracle run says so (a fresh user missed it here)
        out["teacher_note"] = ORACLE_NOTE
    if args.out:
        from scene_kd.query.export import export_points, las_class_message

        out["export"] = export_points(args.out, field, run_dir=args.run, label_index=idx, confidence=conf,
                                      label_names=names, label_members=vocab.members)
        if "las_classes" in out["export"]:  # said once, whatever the output mode (stdout keeps the JSON)
            print(f"scene-kd: note: {las_class_message(out['export']['las_classes'])}", file=sys.stderr)
    human = None
    if not args.json:
        lines = [f"{len(field):,} points labelled with {len(names)} classes (teacher {field.teacher})"]
        if field.teacher == ORACLE:
            lines.append("  note: the oracle-labels test teacher: the scene's own classes with some masks flipped, not CLIP")
        lines += [f"  {n:<24} {c:>10,}" for n, c in counts.items()]
        if unknown_threshold is not None:
            lines.append(f"  {'(unknown)':<24} {unknown:>10,}")
        if "export" in out:
            lines.append(f"  wrote {out['export']['path']}")
        human = "\n".join(lines)
    emit(out, args.json, human)
    return 0
