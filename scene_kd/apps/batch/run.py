"""Run a batch of tiles on Ray (local instance or a cluster) or in-process, with one progress bar.

``run_batch(tiles, job, workers=..., address=..., force=...) -> summary dict`` writes ``DIR/summary.json`` and
``DIR/summary.csv`` (also when interrupted: unfinished tiles are listed with status "not run").

On Ray, a LAS/LAZ tile of more than ``job.chunk_size`` points is labelled as one Ray task per chunk
(:func:`scene_kd.apps.batch.tiles.plan_chunks`: XY cells with a halo), then one task assembles the labels and
writes the tile, so one large tile spreads over the whole cluster. Pipeline/custom modes: every chunk task reads
the tile and plans it the same way. Student mode: one task reads the tile once and stages each chunk's context
points with the tile's scene-wide input constants in ``DIR/.<name>.chunks/`` (removed when the tile is done);
the halo is at least the student's context margin plus one ground cell
(:func:`scene_kd.apps.batch.tiles.student_halo`), so chunk labels match the whole-tile run's.

An existing cluster (``address``) with token authentication (``RAY_AUTH_MODE=token`` on its nodes; Ray >= 2.52)
needs the driver in token mode with the cluster's token, which Ray looks for in ``RAY_AUTH_TOKEN``, the file
``RAY_AUTH_TOKEN_PATH``, then ``~/.ray/auth_token`` (https://docs.ray.io/en/latest/ray-security/token-auth.html).
When ``RAY_AUTH_MODE`` is unset and such a token exists, the driver turns token mode on (harmless against a
cluster without authentication); without one, a failed connection says where to put the token.
"""

from __future__ import annotations

import csv
import glob
import io
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from scene_kd.apps.batch.tiles import (
    BatchJob,
    label_with_student,
    make_labeller,
    output_path,
    plan_chunks,
    process_tile,
    student_halo,
    student_spec,
    tile_name,
)
from scene_kd.distill.contract import usable_intensity, usable_rgb
from scene_kd.distill.unet import SceneStats, scene_stats
from scene_kd.errors import SceneKDError
from scene_kd.progress import progress_bar
from scene_kd.runio import atomic_path, to_jsonable, write_json
from scene_kd.scene.io import load_scene
from scene_kd.scene.types import PointCloud

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
    """Delete temp files a killed run left for these tiles (``.<name>.laz.*.tmp.laz`` etc., staged chunk folders);
    returns the count."""
    out_dir = Path(out_dir)
    removed = 0
    for t in tiles:
        n = tile_name(t)
        if chunk_dir(out_dir, t).is_dir():
            shutil.rmtree(chunk_dir(out_dir, t), ignore_errors=True)
            removed += 1
        for p in list(out_dir.glob(f".{glob.escape(n)}.laz.*.tmp.laz")) + list(out_dir.glob(f"..{glob.escape(n)}.done.json.*.tmp.json")):
            p.unlink(missing_ok=True)
            removed += 1
    return removed


# ---- executors: each yields result dicts as tiles finish ----------------------------------------


def run_in_process(tiles: Sequence[str], job: BatchJob, force: bool) -> Iterator[dict[str, Any]]:
    for t in tiles:
        yield process_tile(t, job, force)


RAY_TOKEN_HELP = ("copy the cluster's token (`ray get-auth-token` on the head node) to ~/.ray/auth_token, or set "
                  "RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH")


def find_ray_token() -> str | None:
    """Where Ray would find an auth token for this driver (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token,
    Ray's order), or None. Raises SceneKDError when RAY_AUTH_TOKEN_PATH names an unreadable or empty file (Ray
    itself would abort)."""
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return "RAY_AUTH_TOKEN"
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if path:
        try:
            ok = bool(Path(path).expanduser().read_text().strip())
        except OSError as e:
            raise SceneKDError(f"RAY_AUTH_TOKEN_PATH={path} cannot be read ({e.strerror})") from None
        if not ok:
            raise SceneKDError(f"RAY_AUTH_TOKEN_PATH={path} is empty")
        return f"RAY_AUTH_TOKEN_PATH={path}"
    default = Path.home() / ".ray" / "auth_token"
    try:
        return str(default) if default.read_text().strip() else None
    except OSError:
        return None


_AUTH_MODE_SET: list[bool] = []  # RAY_AUTH_MODE set by start_ray, unset by stop_ray


def _undo_token_mode() -> None:
    """Unset the RAY_AUTH_MODE that :func:`_token_mode_for` set (one the user set stays)."""
    if _AUTH_MODE_SET:
        os.environ.pop("RAY_AUTH_MODE", None)
        _AUTH_MODE_SET.clear()


def stop_ray() -> None:
    """Disconnect / stop the Ray that start_ray started and undo its RAY_AUTH_MODE."""
    import ray

    try:
        ray.shutdown()
    finally:
        _undo_token_mode()


def _token_mode_for(address: str | None) -> str | None:
    """Before Ray is imported: turn on token mode for a cluster address when a token is found and RAY_AUTH_MODE is
    unset (Ray reads the mode from the environment once, when ray._raylet loads). Returns where the token is."""
    if not address:
        return None
    token = find_ray_token()
    if token and "RAY_AUTH_MODE" not in os.environ:
        os.environ["RAY_AUTH_MODE"] = "token"
        _AUTH_MODE_SET.append(True)
        if "ray._raylet" in sys.modules:  # Ray already loaded in this process: refresh its cached config, as
            try:  # ray._private.authentication.authentication_token_setup._enable_token_auth does
                sys.modules["ray._raylet"].Config.initialize("")
            except Exception:  # not this Ray's layout: the connection error below still explains
                pass
    return token


def start_ray(workers: int, address: str | None) -> bool:
    """Connect to ``address`` or start a lean local Ray; returns True when this call started Ray (stop it after)."""
    token = _token_mode_for(address)
    try:
        import ray
    except ImportError:
        _undo_token_mode()
        raise SceneKDError(RAY_MISSING) from None
    if ray.is_initialized():
        return False
    common = dict(include_dashboard=False, log_to_driver=False, configure_logging=False, logging_level="warning")
    if address:
        try:
            ray.init(address=address, **common)
        except Exception as e:  # ConnectionError, AuthenticationError etc.
            first = (str(e).strip().splitlines() or [""])[0]
            if os.environ.get("RAY_AUTH_MODE", "").lower() != "token" or not token:
                hint = f"if the cluster uses token authentication, no token was found here: {RAY_TOKEN_HELP}"
            else:
                hint = f"if the cluster uses token authentication, it may have refused the token from {token}"
            _undo_token_mode()
            raise SceneKDError(f"cannot connect to Ray at {address} ({type(e).__name__}: {first}); {hint}") from None
    else:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        ray.init(num_cpus=max(workers, 1), object_store_memory=80 * 1024 * 1024,
                 _system_config={"metrics_report_interval_ms": 60_000}, **common)
    return True


def tile_point_count(tile: str) -> int | None:
    """Points in a LAS/LAZ tile from its header (cheap), else None."""
    if Path(tile).suffix.lower() not in (".las", ".laz"):
        return None
    try:
        import laspy

        with laspy.open(tile) as f:
            return int(f.header.point_count)
    except Exception:  # unreadable: process_tile reports it
        return None


def split_on_ray(tile: str, job: BatchJob, force: bool) -> bool:
    """Label this tile as one Ray task per chunk? (more points than chunk_size, output not current)."""
    if job.chunk_size <= 0:
        return False
    n = tile_point_count(tile)
    if n is None or n <= job.chunk_size:
        return False
    if not force and output_path(job.out_dir, tile).exists():
        from scene_kd.apps.batch.tiles import read_sidecar, sidecar_path
        from scene_kd.runio import file_hash

        rec = read_sidecar(sidecar_path(job.out_dir, tile))
        if rec and rec.get("config_hash") == job.config_hash(file_hash(tile)):
            return False  # process_tile skips it
    return True


def chunk_dir(out_dir: str | Path, tile: str | Path) -> Path:
    """Where a student-mode tile's chunk inputs are staged on Ray (``DIR/.<name>.chunks``)."""
    return Path(out_dir) / f".{tile_name(tile)}.chunks"


def planned_halo(job: BatchJob) -> float:
    """The halo chunks are planned with: ``job.halo``, in student mode at least the student's (see student_halo)."""
    return student_halo(job) if job.mode == "student" else job.halo


def _tile_chunks(tile: str, job: BatchJob) -> tuple[Any, list[Any]]:
    scene = load_scene(tile, units=job.units)
    if job.mode == "student":  # refused here: no chunk is staged, process_tile reports why
        from scene_kd.apps.batch.tiles import check_student_inputs
        from scene_kd.distill.contract import to_student_units

        # chunks are planned and staged in the student's units (a tile in feet: metres, the halo's unit)
        scene.xyz = to_student_units(scene.xyz, check_student_inputs(scene, job))
    return scene, plan_chunks(scene.xyz[:, :2], job.chunk_size, planned_halo(job))


def count_chunks(tile: str, job: BatchJob) -> int:
    """Number of chunks of a tile (0 when it cannot be read or planned: process_tile then reports why); in student
    mode also stages every chunk's inputs (:func:`stage_student_chunks`)."""
    try:
        scene, chunks = _tile_chunks(tile, job)
        if job.mode == "student":
            stage_student_chunks(scene, chunks, job, chunk_dir(job.out_dir, tile))
        return len(chunks)
    except Exception:
        shutil.rmtree(chunk_dir(job.out_dir, tile), ignore_errors=True)
        return 0


def stage_student_chunks(scene: Any, chunks: Sequence[Any], job: BatchJob, folder: Path) -> None:
    """Write ``folder/chunkNNN.npz`` per chunk: its context points (xyz, rgb, intensity), its core indices in the
    tile and their positions in the context, and the whole tile's :class:`scene_kd.distill.unet.SceneStats`."""
    import numpy as np

    # ``scene`` was checked against the student's contract (and converted to its units) by _tile_chunks;
    # attributes without information are missing for the whole tile (a chunk alone could judge otherwise)
    scene.rgb, scene.intensity = usable_rgb(scene.rgb), usable_intensity(scene.intensity)
    stats = scene_stats(scene.xyz, scene.intensity, student_spec(job.student))
    const = {"origin": scene.origin, "z_ref": np.float64(stats.z_ref),
             "intensity_stats": np.array([np.nan if v is None else v
                                          for v in (stats.intensity_median, stats.intensity_iqr)], np.float64)}
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for k, ch in enumerate(chunks):
        arrays = {"xyz": scene.xyz[ch.context], "core": ch.core.astype(np.int64),
                  "pos": np.searchsorted(ch.context, ch.core).astype(np.int64), **const}
        if scene.rgb is not None:
            arrays["rgb"] = scene.rgb[ch.context]
        if scene.intensity is not None:
            arrays["intensity"] = scene.intensity[ch.context]
        tmp = folder / f".chunk{k:03d}.tmp.npz"
        np.savez(tmp, **arrays)
        tmp.replace(folder / f"chunk{k:03d}.npz")


def label_staged_chunk(tile: str, job: BatchJob, k: int) -> tuple[Any, Any, Any]:
    """(core indices [K], label index [K], confidence [K]) of student-mode chunk ``k``, from its staged inputs."""
    import numpy as np

    with np.load(chunk_dir(job.out_dir, tile) / f"chunk{k:03d}.npz") as z:
        d = {key: z[key] for key in z.files}
    med, iqr = (None if np.isnan(v) else float(v) for v in d["intensity_stats"])
    stats = SceneStats(z_ref=float(d["z_ref"]), intensity_median=med, intensity_iqr=iqr)
    scene = PointCloud(xyz=d["xyz"], origin=d["origin"], rgb=d.get("rgb"), intensity=d.get("intensity"))
    idx, conf = label_with_student(scene, job, stats=stats, max_points=len(scene))  # the context in one piece
    idx, conf = np.asarray(idx).reshape(-1), np.asarray(conf).reshape(-1)
    return d["core"], idx[d["pos"]].astype(np.int32), conf[d["pos"]].astype(np.float32)


def label_chunk(tile: str, job: BatchJob, k: int, force: bool) -> tuple[Any, Any, Any]:
    """(core indices [K], label index [K], confidence [K]) of chunk ``k`` of a tile, labelled exactly as
    :func:`scene_kd.apps.batch.tiles.label_in_chunks` labels it (same plan, context and tag); student mode from
    the inputs :func:`count_chunks` staged."""
    import numpy as np

    if job.mode == "student":
        return label_staged_chunk(tile, job, k)
    scene, chunks = _tile_chunks(tile, job)
    ch = chunks[k]
    idx, conf = make_labeller(job, tile, force)(scene.subset(ch.context), f"chunk{k:03d}")
    idx, conf = np.asarray(idx).reshape(-1), np.asarray(conf).reshape(-1)
    if len(idx) != len(ch.context) or len(conf) != len(ch.context):
        raise SceneKDError(f"labeller returned {len(idx)} labels / {len(conf)} confidences for {len(ch.context)} points")
    pos = np.searchsorted(ch.context, ch.core)
    return ch.core, idx[pos].astype(np.int32), conf[pos].astype(np.float32)


def finish_chunked_tile(tile: str, job: BatchJob, force: bool, n_points: int, *parts: tuple[Any, Any, Any]
                        ) -> dict[str, Any]:
    """Assemble the chunks' labels (Ray passes the chunk tasks' results) and write the tile via process_tile."""
    import numpy as np

    label_index = np.full(n_points, -1, np.int32)
    confidence = np.zeros(n_points, np.float32)
    for core, idx, conf in parts:
        label_index[core], confidence[core] = idx, conf
    shutil.rmtree(chunk_dir(job.out_dir, tile), ignore_errors=True)
    return process_tile(tile, job, force, precomputed=(label_index, confidence, len(parts)))


def _error_record(tile: str, e: Exception) -> dict[str, Any]:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return {"tile": tile, "status": "error", "points": 0, "seconds": 0.0, "counts": {},
            "error": f"{type(e).__name__}: {msg}", "output": None}


def run_on_ray(tiles: Sequence[str], job: BatchJob, force: bool) -> Iterator[dict[str, Any]]:
    """One Ray task per tile (1 CPU each, no retries), or for a tile above ``job.chunk_size`` points one task per
    chunk plus one that writes it; a task that crashes its worker becomes an error record."""
    import ray

    opts = dict(num_cpus=1, max_retries=0)
    tile_task, plan_task = ray.remote(**opts)(process_tile), ray.remote(**opts)(count_chunks)
    chunk_task, finish_task = ray.remote(**opts)(label_chunk), ray.remote(**opts)(finish_chunked_tile)
    pending: dict[Any, tuple[str, str]] = {}
    split: list[str] = []
    for t in tiles:
        if split_on_ray(t, job, force):
            pending[plan_task.remote(t, job)] = (t, "plan")
            split.append(t)
        else:
            pending[tile_task.remote(t, job, force)] = (t, "tile")
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                tile, stage = pending.pop(ref)
                try:
                    value = ray.get(ref)
                except Exception as e:  # worker died (segfault, OOM kill) or a chunk failed: report, keep going
                    yield _error_record(tile, e)
                    continue
                if stage != "plan":
                    yield value
                elif value <= 0:  # unreadable: process_tile writes the error record
                    pending[tile_task.remote(tile, job, force)] = (tile, "tile")
                else:
                    parts = [chunk_task.remote(tile, job, k, force) for k in range(value)]
                    n = tile_point_count(tile) or 0
                    pending[finish_task.remote(tile, job, force, n, *parts)] = (tile, "finish")
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)
        for t in split:  # staged chunks of tiles that failed or were interrupted
            shutil.rmtree(chunk_dir(job.out_dir, t), ignore_errors=True)


# ---- summary ------------------------------------------------------------------------------------


SUMMARY_FIELDS = ("tile", "status", "points", "seconds", "chunks", "output", "error", "density", "warnings")


def summary_csv(records: Sequence[dict[str, Any]], labels: Sequence[str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([*SUMMARY_FIELDS, *labels])
    for r in records:
        counts = r.get("counts") or {}
        w.writerow(["; ".join(r[k]) if isinstance(r.get(k), list) else r.get(k, "") if r.get(k) is not None else ""
                    for k in SUMMARY_FIELDS]
                   + [counts.get(lab, "") for lab in labels])
    return buf.getvalue()


def las_classes_summary(records: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """One summary of the tiles whose LAS point format (0-5) has no class code for some labels: {"without_code":
    [names], "classification": 1, "labels_in": ..., "point_formats": [..], "tiles": [..]}, or None (the batch
    says it once, whichever executor ran the tiles)."""
    notes = [(r["tile"], r["las_classes"]) for r in records if r.get("las_classes")]
    if not notes:
        return None
    first = notes[0][1]
    without = list(dict.fromkeys(n for _, note in notes for n in note["without_code"]))
    return {"without_code": without, "classification": first["classification"], "labels_in": first["labels_in"],
            "codes": first.get("codes"), "point_formats": sorted({int(note["point_format"]) for _, note in notes}),
            "tiles": [t for t, _ in notes]}


def write_summary(out_dir: Path, records: list[dict[str, Any]], job: BatchJob, meta: dict[str, Any]) -> dict[str, Any]:
    status = [r["status"] for r in records]
    totals = {s: status.count(s) for s in ("done", "skipped", "error", "refused", "not run")}
    points = sum(int(r.get("points") or 0) for r in records if r["status"] in ("done", "skipped"))
    summary = {"job": job, **meta, "totals": {**totals, "tiles": len(records), "points": points},
               "las_classes": las_classes_summary(records), "tiles": records}
    write_json(out_dir / "summary.json", summary)
    with atomic_path(out_dir / "summary.csv") as tmp:
        tmp.write_text(summary_csv(records, job.labels))

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
    bar = progress_bar(progress, columns=("tiles", "{task.fields[rate]}"), transient=False)
    try:
        with bar:
            task = bar.add_task("batch tiles", total=len(tiles), rate="")
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
            stop_ray()
    return summary
