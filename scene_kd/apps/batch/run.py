"""Run a batch of tiles on Ray (local instance or a cluster) or in-process, with one progress bar.

``run_batch(tiles, job, workers=..., address=..., force=...) -> summary dict`` writes ``DIR/summary.json`` and
``DIR/summary.csv`` (also when interrupted: unfinished tiles are listed with status "not run").
"""

from __future__ import annotations

import csv
import glob
import io
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from scene_kd.apps.batch.tiles import BatchJob, process_tile, tile_name
from scene_kd.errors import SceneKDError

RAY_MISSING = ("Ray is not installed; install the batch extra (pip install 'scene-kd[batch]') "
               "or run in-process with --workers 0")


def expand_tiles(patterns: Sequence[str]) -> list[str]:
    """Glob patterns (or plain paths) -> sorted unique tile paths; errors when nothing matches or names clash."""
    tiles: list[str] = []
    for pat in patterns:
        hits = sorted(glob.glob(os.path.expanduser(pat), recursive=True))
        if not hits and Path(pat).exists():
            hits = [pat]
        tiles.extend(h for h in hits if Path(h).is_file())
    tiles = list(dict.fromkeys(tiles))
    if not tiles:
        raise SceneKDError(f"no tiles match {' '.join(repr(p) for p in patterns)}")
    names: dict[str, str] = {}
    for t in tiles:
        n = tile_name(t)
        if n in names:
            raise SceneKDError(f"two tiles would write the same output {n}.laz: {names[n]} and {t}")
        names[n] = t
    return tiles


def remove_stale_temps(out_dir: str | Path, tiles: Sequence[str]) -> int:
    """Delete temp files a killed run left for these tiles (``.<name>.laz.*.tmp.laz`` etc.); returns the count."""
    out_dir = Path(out_dir)
    removed = 0
    for t in tiles:
        n = tile_name(t)
        for p in list(out_dir.glob(f".{glob.escape(n)}.laz.*.tmp.laz")) + list(out_dir.glob(f"..{glob.escape(n)}.done.json.*.tmp.json")):
            p.unlink(missing_ok=True)
            removed += 1
    return removed


# ---- executors: each yields result dicts as tiles finish ----------------------------------------


def run_in_process(tiles: Sequence[str], job: BatchJob, force: bool) -> Iterator[dict[str, Any]]:
    for t in tiles:
        yield process_tile(t, job, force)


def start_ray(workers: int, address: str | None) -> bool:
    """Connect to ``address`` or start a lean local Ray; returns True when this call started Ray (stop it after)."""
    try:
        import ray
    except ImportError:
        raise SceneKDError(RAY_MISSING) from None
    if ray.is_initialized():
        return False
    common = dict(include_dashboard=False, log_to_driver=False, configure_logging=False, logging_level="warning")
    if address:
        try:
            ray.init(address=address, **common)
        except Exception as e:  # ConnectionError etc.
            raise SceneKDError(f"cannot connect to Ray at {address} ({type(e).__name__}: {e})") from None
    else:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        ray.init(num_cpus=max(workers, 1), include_dashboard=False, log_to_driver=False, configure_logging=False,
                 logging_level="warning", object_store_memory=80 * 1024 * 1024,
                 _system_config={"metrics_report_interval_ms": 60_000})
    return True


def run_on_ray(tiles: Sequence[str], job: BatchJob, force: bool) -> Iterator[dict[str, Any]]:
    """One Ray task per tile (1 CPU each, no retries); a task that crashes its worker becomes an error record."""
    import ray

    remote = ray.remote(num_cpus=1, max_retries=0)(process_tile)
    pending = {remote.remote(t, job, force): t for t in tiles}
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                tile = pending.pop(ref)
                try:
                    yield ray.get(ref)
                except Exception as e:  # worker died (segfault, OOM kill): report the tile, keep going
                    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
                    yield {"tile": tile, "status": "error", "points": 0, "seconds": 0.0, "counts": {},
                           "error": f"{type(e).__name__}: {msg}", "output": None}
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)


# ---- summary ------------------------------------------------------------------------------------


SUMMARY_FIELDS = ("tile", "status", "points", "seconds", "chunks", "output", "error")


def summary_csv(records: Sequence[dict[str, Any]], labels: Sequence[str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([*SUMMARY_FIELDS, *labels])
    for r in records:
        counts = r.get("counts") or {}
        w.writerow([r.get(k, "") if r.get(k) is not None else "" for k in SUMMARY_FIELDS]
                   + [counts.get(lab, "") for lab in labels])
    return buf.getvalue()


def write_summary(out_dir: Path, records: list[dict[str, Any]], job: BatchJob, meta: dict[str, Any]) -> dict[str, Any]:
    from scene_kd.runio import atomic_path, write_json

    status = [r["status"] for r in records]
    totals = {s: status.count(s) for s in ("done", "skipped", "error", "not run")}
    points = sum(int(r.get("points") or 0) for r in records if r["status"] in ("done", "skipped"))
    summary = {"job": job, **meta, "totals": {**totals, "tiles": len(records), "points": points}, "tiles": records}
    write_json(out_dir / "summary.json", summary)
    with atomic_path(out_dir / "summary.csv") as tmp:
        tmp.write_text(summary_csv(records, job.labels))
    from scene_kd.runio import to_jsonable

    return to_jsonable(summary)


def run_batch(
    tiles: Sequence[str],
    job: BatchJob,
    *,
    workers: int = 1,
    address: str | None = None,
    force: bool = False,
    progress: bool = True,
    on_result: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Label ``tiles`` with ``job``; ``workers`` 0 = in-process loop, else Ray with that many CPUs
    (``address``: an existing cluster, "auto" included). Returns the summary written to DIR/summary.json."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    out_dir = Path(job.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out_dir, tiles)
    use_ray = bool(address) or workers > 0
    executor = "ray" if use_ray else "in-process"
    t0 = time.perf_counter()
    started = start_ray(workers, address) if use_ray else False
    t_ready = time.perf_counter()
    records: dict[str, dict[str, Any]] = {}
    done_points = 0
    bar = Progress(TextColumn("[bold]batch"), BarColumn(), MofNCompleteColumn(), TextColumn("tiles"),
                   TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                   console=Console(stderr=True), disable=not progress, transient=False)
    try:
        with bar:
            task = bar.add_task("tiles", total=len(tiles), rate="")
            results = run_on_ray(tiles, job, force) if use_ray else run_in_process(tiles, job, force)
            for rec in results:
                records[rec["tile"]] = rec
                if rec["status"] == "done":
                    done_points += int(rec.get("points") or 0)
                elapsed = max(time.perf_counter() - t_ready, 1e-9)
                bar.update(task, advance=1, rate=f"{done_points / elapsed:,.0f} points/s")
                if on_result:
                    on_result(rec)
    finally:
        wall = time.perf_counter() - t0
        ordered = [records.get(t) or {"tile": t, "status": "not run", "points": 0, "seconds": 0.0, "counts": {},
                                      "error": None, "output": None} for t in tiles]
        computed = [r for r in ordered if r["status"] == "done"]
        meta = {"executor": executor, "workers": workers, "address": address, "force": force,
                "seconds": round(wall, 3), "startup_seconds": round(t_ready - t0, 3),
                "tiles_per_second": round(len(computed) / max(time.perf_counter() - t_ready, 1e-9), 4),
                "points_per_second": round(sum(int(r["points"]) for r in computed)
                                           / max(time.perf_counter() - t_ready, 1e-9), 1)}
        summary = write_summary(out_dir, ordered, job, meta)
        if started:
            import ray

            ray.shutdown()
    return summary
