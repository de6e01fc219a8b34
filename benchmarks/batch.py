"""Batch segmentation throughput: tiles/s and points/s with 1 vs 2 Ray workers (scaling ratio), and the per-tile
overhead of Ray vs an in-process loop on small tiles. All runs apply the same trained student (`--student`, the
fast path) to synthetic urban tiles; the student is trained once first (not timed).

Rates exclude Ray's start-up (reported separately as ``ray_startup_s``); ``*_wall_s`` include it.
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


if __name__ == "__main__":
    print(json.dumps(run(full="--full" in sys.argv), indent=2))
