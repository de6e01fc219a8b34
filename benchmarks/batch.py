"""Batch segmentation throughput: tiles/s and points/s with 1 vs 2 Ray workers (scaling ratio), and the per-tile
overhead of Ray vs an in-process loop on small tiles. All runs apply the same trained student (`--student`, the
fast path) to synthetic urban tiles; the student is trained once first (not timed).

Rates exclude Ray's start-up (reported separately as ``ray_startup_s``); ``*_wall_s`` include it.

``--large TILE``: one big LAS/LAZ tile (e.g. ``scene-kd synth --kind district --points 10000000``) in student mode,
split into chunk tasks (``--chunk-size``, default 1.5M points), with 1 and then 2 local Ray workers: wall time of
each and the 2-vs-1 scaling ratio, with the load average (``os.getloadavg``) before and after each run, since a
shared machine skews it. ``--student RUN`` uses a trained student; without it one is trained first (not timed) on a
200k-point synthetic block (urban preset, oracle-labels teacher, 2 epochs).

    PYTHONPATH=. python benchmarks/batch.py --large district10m.laz [--student RUN] [--chunk-size N] [--workers 2,1]

(temporary outputs under ``$BENCH_TMP`` when set.)
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _tiles(folder: Path, count: int, points: int, seed: int) -> list[str]:
    from scene_kd.scene.io import save_scene
    from scene_kd.scene.synthetic import make_urban

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(count):
        path = folder / f"tile{i:03d}.laz"
        save_scene(make_urban(points=points, seed=seed + i), path)
        out.append(str(path))
    return out


def _student(root: Path) -> Path:
    from scene_kd.config import load_config
    from scene_kd.pipeline import run_pipeline
    from scene_kd.scene.io import save_scene
    from scene_kd.scene.synthetic import make_urban

    save_scene(make_urban(points=12000, seed=100), root / "train.laz")
    cfg = load_config("ci", {"distill": {"epochs": 4, "voxel_size": 0.8}})
    run_pipeline(root / "train.laz", root / "student", cfg, until="distill")
    return root / "student"


def _run(tiles: list[str], student: Path, out: Path, workers: int) -> dict:
    from scene_kd.apps.batch.run import run_batch
    from scene_kd.apps.batch.tiles import BatchJob

    job = BatchJob(out_dir=str(out), labels=("road", "building", "tree", "car", "grass"), mode="student",
                   student=str(student))
    t0 = time.perf_counter()
    s = run_batch(tiles, job, workers=workers, force=True, progress=False)
    wall = time.perf_counter() - t0
    assert s["totals"]["done"] == len(tiles), s["totals"]
    compute = max(wall - s["startup_seconds"], 1e-9)
    return {"wall_s": wall, "startup_s": s["startup_seconds"], "compute_s": compute,
            "tiles_per_s": len(tiles) / compute, "points_per_s": s["totals"]["points"] / compute}


def run(full: bool = False) -> dict:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    n_tiles, points = (16, 200_000) if full else (6, 15_000)
    n_small, small_points = (32, 2_000) if full else (12, 1_000)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        student = _student(root)
        tiles = _tiles(root / "tiles", n_tiles, points, seed=0)
        small = _tiles(root / "small", n_small, small_points, seed=50)
        local = _run(tiles, student, root / "o_local", 0)
        w1 = _run(tiles, student, root / "o_w1", 1)
        w2 = _run(tiles, student, root / "o_w2", 2)
        small_local = _run(small, student, root / "s_local", 0)
        small_ray = _run(small, student, root / "s_ray", 1)
    r = lambda x: float(np.round(x, 4))  # noqa: E731
    return {
        "tiles": n_tiles, "points_per_tile": points, "cpus": os.cpu_count(),
        "inprocess_tiles_per_s": r(local["tiles_per_s"]), "inprocess_points_per_s": r(local["points_per_s"]),
        "ray1_tiles_per_s": r(w1["tiles_per_s"]), "ray1_points_per_s": r(w1["points_per_s"]),
        "ray2_tiles_per_s": r(w2["tiles_per_s"]), "ray2_points_per_s": r(w2["points_per_s"]),
        "scaling_ratio_2_vs_1_workers": r(w2["tiles_per_s"] / w1["tiles_per_s"]),
        "ray1_wall_s": r(w1["wall_s"]), "ray2_wall_s": r(w2["wall_s"]), "inprocess_wall_s": r(local["wall_s"]),
        "ray_startup_s": r((w1["startup_s"] + w2["startup_s"] + small_ray["startup_s"]) / 3),
        "small_tiles": n_small, "small_points_per_tile": small_points,
        "small_inprocess_s_per_tile": r(small_local["compute_s"] / n_small),
        "small_ray1_s_per_tile": r(small_ray["compute_s"] / n_small),
        "ray_overhead_s_per_tile": r((small_ray["compute_s"] - small_local["compute_s"]) / n_small),
        "ray_vs_inprocess_time_ratio_small_tiles": r(small_ray["compute_s"] / small_local["compute_s"]),
    }


def _urban_student(root: Path) -> Path:
    from scene_kd.config import load_config
    from scene_kd.pipeline import run_pipeline
    from scene_kd.scene.io import save_scene
    from scene_kd.scene.synthetic import make_urban

    save_scene(make_urban(points=200_000, seed=0), root / "urban.ply")
    cfg = load_config("urban", {"teacher": {"name": "oracle-labels"}, "distill": {"epochs": 2}})
    run_pipeline(root / "urban.ply", root / "student", cfg, until="distill")
    return root / "student"


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def large_tile(tile: str, student: str | None = None, chunk_size: int = 1_500_000, workers: tuple[int, ...] = (1, 2)
               ) -> dict:
    """One big tile in student mode on local Ray, split into chunk tasks: wall time per worker count (same chunk
    size), the scaling ratio (1-worker wall / 2-worker wall) and the load average before/after each run."""
    from scene_kd.apps.batch.run import run_batch, tile_point_count
    from scene_kd.apps.batch.tiles import BatchJob, student_halo

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    runs = {}
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        root = Path(tmp)
        student = student or str(_urban_student(root))
        for w in workers:
            job = BatchJob(out_dir=str(root / f"w{w}"), labels=("road", "building", "tree", "car", "grass"),
                           mode="student", student=str(student), chunk_size=chunk_size)
            before = _load()
            t0 = time.perf_counter()
            s = run_batch([tile], job, workers=w, force=True, progress=False)
            wall = time.perf_counter() - t0
            rec = s["tiles"][0]
            assert rec["status"] == "done", rec
            runs[w] = {"wall_s": round(wall, 1), "ray_startup_s": round(s["startup_seconds"], 1),
                       "write_s": rec["seconds"],  # the last task: read the tile, assemble, write the LAZ
                       "chunks": rec["chunks"], "load_before": before, "load_after": _load()}
            (root / f"w{w}" / Path(tile).name).unlink(missing_ok=True)  # the 10M-point output is large
        halo = student_halo(job)
    out = {"tile": tile, "points": tile_point_count(tile), "chunk_size": chunk_size, "halo": round(halo, 2),
           "cpus": os.cpu_count(), **{f"ray{w}": r for w, r in runs.items()}}
    if 1 in runs and 2 in runs:
        out["scaling_ratio_2_vs_1_workers"] = round(runs[1]["wall_s"] / runs[2]["wall_s"], 3)
        after_startup = [runs[w]["wall_s"] - runs[w]["ray_startup_s"] for w in (1, 2)]
        out["scaling_ratio_after_ray_startup"] = round(after_startup[0] / after_startup[1], 3)
    return out


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true")
    ap.add_argument("--large", help="one big LAS/LAZ tile: student mode in chunks, 1 vs 2 Ray workers")
    ap.add_argument("--student", help="trained student run folder (with --large; default: train one)")
    ap.add_argument("--chunk-size", type=int, default=1_500_000)
    ap.add_argument("--workers", default="1,2", help="worker counts to run, in this order (with --large)")
    a = ap.parse_args()
    if a.large:
        order = tuple(int(w) for w in a.workers.split(","))
        print(json.dumps(large_tile(a.large, a.student, a.chunk_size, workers=order), indent=2))
    else:
        print(json.dumps(run(full=a.full), indent=2))
