"""`scene-kd batch "tiles/*.laz" --out DIR --labels road,building,tree,car`: classify many LiDAR tiles."""

from __future__ import annotations

import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import tyro

from scene_kd.commands._common import emit
from scene_kd.errors import SceneKDError
from scene_kd.teachers.config import TeacherLiteral


@dataclass
class Args:
    """Classify many tiles: each gets DIR/<tile>.laz (classification + confidence) and a row in DIR/summary.json/.csv.

    Runs the full pipeline per tile, or applies a trained student to each tile (--student RUN, much faster).
    Uses Ray (local by default, --address for a cluster) or an in-process loop (--workers 0). Reruns skip tiles
    whose output exists with the same config; --force redoes them.
    """

    tiles: Annotated[tuple[str, ...], tyro.conf.Positional, tyro.conf.arg(metavar="TILES")]
    """Tile files or glob patterns (quote them), e.g. "tiles/*.laz"."""
    out: str
    """Output folder."""
    labels: str
    """Comma-separated class names, e.g. road,building,tree,car; a group NAME=a+b+c labels its members' points
    NAME (score: the best member), e.g. ground=road+sidewalk+grass,building,vegetation=tree,car."""
    teacher: TeacherLiteral | None = None
    """Teacher for the full pipeline (default: the --config preset's, else clip-sam); its weights are checked
    before any tile is read."""
    config: str | None = None
    """Pipeline preset name or YAML file (full-pipeline mode)."""
    student: str | None = None
    """Run folder with a trained student: apply it to every tile instead of running the pipeline."""
    labeller: str | None = None
    """Advanced: your own per-tile function 'module:function' (PointCloud, labels) -> (label_index, confidence)."""
    address: str | None = None
    """Ray cluster to use: 'auto' or HOST:PORT. Default: start a local Ray for this command."""
    workers: int = -1
    """Parallel tiles (CPUs for the local Ray); 0 = in-process loop; -1 = all CPUs."""
    chunk_size: int = 0
    """Label tiles with more points than this in chunks (with a halo), on Ray one task per chunk; 0 = whole tiles."""
    halo: float = 0.0
    """Context around each chunk in scene units; 0 = a quarter of the chunk's shorter side (with --student: at least
    the student's receptive-field margin plus one ground cell, also the default)."""
    accept_missing: tuple[str, ...] = ()
    """With --student: label tiles that lack these attributes (rgb / colour, intensity) although the student's labels
    without them agreed with its own on fewer than 95 % of its training tile's points (refused otherwise)."""
    max_views: int | None = None
    """Full-pipeline mode: the view budget per tile (render.max_views; default: the preset's, 2,000). A tile whose
    plan exceeds it is refused in seconds, before rendering (status "refused" in summary.json, with its plan and
    expected teacher time); the other tiles go on. 0 = no limit."""
    units: Literal["auto", "metre", "foot", "us-foot"] = "auto"
    """Units of the tiles' coordinates: auto = each tile's CRS (metres without one); any other value overrides
    it. Tiles in feet are labelled in metres; outputs keep the tiles' own records."""
    force: bool = False
    """Redo tiles whose output is already current."""
    json: bool = False
    """Print the summary as one JSON object."""


def make_job(args: Args) -> tuple[list[str], object]:
    from scene_kd.apps.batch.run import expand_tiles
    from scene_kd.apps.batch.tiles import BatchJob
    from scene_kd.distill.contract import accepted_attributes
    from scene_kd.query.labels import parse_vocabulary
    from scene_kd.runio import config_hash, file_hash

    vocab = parse_vocabulary(args.labels)
    labels = tuple(vocab.names)
    if args.student and args.labeller:
        raise SceneKDError("give --student or --labeller, not both")
    if args.chunk_size < 0 or args.halo < 0:
        raise SceneKDError("--chunk-size and --halo must be >= 0")
    tiles = expand_tiles(args.tiles)
    identity = ""
    teacher = args.teacher or ""
    if args.student:
        sdir = Path(args.student)
        if not (sdir / "field.json").exists():
            raise SceneKDError("not a run folder with a trained student (no field.json)", path=sdir)
        ident_files = [p for p in (sdir / "student.safetensors", sdir / "field.json") if p.exists()]
        identity = config_hash([file_hash(p) for p in ident_files])
        mode = "student"
    elif args.labeller:
        mode = "custom"
    else:
        from scene_kd.config import resolve_config
        from scene_kd.teachers.stage import check_teacher_requirements

        mode = "pipeline"
        overrides: dict = {"teacher": {"name": args.teacher}} if args.teacher else {}
        if args.max_views is not None:
            if args.max_views < 0:
                raise SceneKDError("--max-views must be >= 0 (0 = no limit)")
            overrides["render"] = {"max_views": args.max_views}
        cfg = resolve_config(None, args.config, overrides or None)
        check_teacher_requirements(cfg.teacher, has_labels=True)  # the oracle's labels are checked per tile
        identity = config_hash(cfg)
        teacher = cfg.teacher.name
    job = BatchJob(
        out_dir=str(Path(args.out).resolve()), labels=labels, mode=mode, teacher=teacher, config=args.config,
        student=str(Path(args.student).resolve()) if args.student else None, labeller=args.labeller,
        chunk_size=args.chunk_size, halo=args.halo, identity=identity, units=args.units,
        max_views=args.max_views if mode == "pipeline" else None,
        accept_missing=tuple(sorted(accepted_attributes(args.accept_missing))),
        members=tuple(vocab.members) if vocab.grouped else (),
    )
    if mode == "student":
        from scene_kd.apps.batch.tiles import check_student_vocabulary

        check_student_vocabulary(job)  # refuse what the student cannot express before any tile is read
    return [str(Path(t).resolve()) for t in tiles], job


def _terminate(signum, frame):  # noqa: ANN001
    raise KeyboardInterrupt


def main(args: Args) -> int:
    from scene_kd.apps.batch.run import run_batch

    tiles, job = make_job(args)
    workers = args.workers if args.workers >= 0 else (os.cpu_count() or 1)
    if args.address is None and len(tiles) == 1:
        workers = 0  # one tile: Ray's startup is pure overhead
    previous = signal.signal(signal.SIGTERM, _terminate)  # SIGTERM unwinds like Ctrl-C: temp files removed, Ray stopped
    try:
        summary = run_batch(tiles, job, workers=workers, address=args.address, force=args.force, progress=not args.json)
    finally:
        signal.signal(signal.SIGTERM, previous)
    t = summary["totals"]
    human = (f"{t['tiles']} tile(s): {t['done']} done, {t['skipped']} skipped (current), {t['error']} failed, "
             f"{t.get('refused', 0)} refused (over budget); {t['points']:,} points; {summary['seconds']:.1f} s "
             f"({summary['executor']}); summary in {Path(job.out_dir) / 'summary.json'}")
    if summary.get("las_classes"):  # said once for the whole batch, whatever the executor
        from scene_kd.query.export import las_class_message

        note = summary["las_classes"]
        fmts = "/".join(map(str, note["point_formats"]))
        where = f" ({len(note['tiles'])} tile(s))"
        print(f"scene-kd: note: {las_class_message({**note, 'point_format': fmts}, where)}", file=sys.stderr)
    errors = [r for r in summary["tiles"] if r["status"] in ("error", "refused")]
    if errors and not args.json:
        human += "".join(f"\n  failed: {r['tile']}: {r['error']}" if r["status"] == "error" else
                         f"\n  {r['error'].replace('refused: ', 'refused: ' + r['tile'] + ': ', 1)}" for r in errors)
    if not args.json:
        human += "".join(f"\n  warning: {r['tile']}: {w}" for r in summary["tiles"] for w in r.get("warnings") or [])
    emit(summary if args.json else None, args.json, human)
    return 1 if errors else 0
