"""Benchmark: scene_kd.load_scene on a LAZ vs a bare ``laspy.read`` of the same file, side by side.

Makes an N-point LAZ once in a temp folder (default 1M points; ``--full``: 10M) with RGB, intensity,
classification and UTM-sized coordinates, then times each reader (best of ``repeats``) and reports the ratio
(goal: < 3x) and the peak memory of each: the tracemalloc peak of Python/numpy allocations, and the peak RSS
increase during the read, sampled every 2 ms (this one also counts lazrs's Rust buffers).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np


def make_laz(path: Path, n: int, seed: int = 0) -> None:
    import laspy

    rng = np.random.default_rng(seed)
    header = laspy.LasHeader(version="1.4", point_format=7)
    header.scales = np.array([0.01, 0.01, 0.01])
    header.offsets = np.array([870000.0, 6617000.0, 0.0])
    las = laspy.LasData(header, laspy.ScaleAwarePointRecord.zeros(n, header=header))
    side = int(np.sqrt(n)) + 1
    gx, gy = np.divmod(np.arange(n), side)  # a gridded terrain compresses like real scans do
    las.X = (gx * 25 + rng.integers(0, 5, n)).astype(np.int32)
    las.Y = (gy * 25 + rng.integers(0, 5, n)).astype(np.int32)
    las.Z = (3000 + 200 * np.sin(gx / 300) + rng.integers(0, 50, n)).astype(np.int32)
    las.intensity = rng.integers(0, 4000, n).astype(np.uint16)
    las.classification = rng.choice([1, 2, 5, 6, 9], n).astype(np.uint8)
    col = rng.integers(0, 256, (n, 3)).astype(np.uint16) * 257
    las.red, las.green, las.blue = col[:, 0], col[:, 1], col[:, 2]
    las.write(str(path))


def _read_with(which: str, path: str):
    if which == "laspy":
        import laspy

        return laspy.read(path)
    from scene_kd.scene.io import load_scene

    return load_scene(path)


def _peak_rss_increase_mb(which: str, path: Path) -> float:
    """Peak RSS above the starting RSS (MiB) while reading, sampled every 2 ms (counts lazrs's Rust buffers too)."""
    import threading

    import psutil

    proc = psutil.Process(os.getpid())
    gc.collect()
    start = proc.memory_info().rss
    peak = [start]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.002)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    out = _read_with(which, str(path))
    peak[0] = max(peak[0], proc.memory_info().rss)
    done.set()
    t.join()
    del out
    return (peak[0] - start) / 2**20


def _traced_peak_mb(which: str, path: Path) -> float:
    gc.collect()
    tracemalloc.start()
    out = _read_with(which, str(path))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del out
    return peak / 2**20


def run(full: bool = False, n: int | None = None, repeats: int = 3) -> dict:

    n = n or (10_000_000 if full else 1_000_000)
    with tempfile.TemporaryDirectory(prefix="scene_kd_bench_io_") as tmp:
        path = Path(tmp) / f"bench_{n}.laz"
        t0 = time.perf_counter()
        make_laz(path, n)
        make_s = time.perf_counter() - t0
        times: dict[str, list[float]] = {"laspy": [], "ours": []}
        for _ in range(repeats):  # interleaved so both see the same machine state
            for which in ("laspy", "ours"):
                gc.collect()
                t = time.perf_counter()
                out = _read_with(which, str(path))
                times[which].append(time.perf_counter() - t)
                if which == "ours":
                    assert len(out) == n
                del out
        base = {
            "s": min(times["laspy"]),
            "peak_traced_mb": _traced_peak_mb("laspy", path),
            "rss_growth_mb": _peak_rss_increase_mb("laspy", path),
        }
        ours = {
            "s": min(times["ours"]),
            "peak_traced_mb": _traced_peak_mb("ours", path),
            "rss_growth_mb": _peak_rss_increase_mb("ours", path),
        }
        size_mb = path.stat().st_size / 2**20
    return {
        "points": n,
        "laz_mb": round(size_mb, 1),
        "make_s": round(make_s, 2),
        "laspy_read_s": round(base["s"], 3),
        "load_scene_s": round(ours["s"], 3),
        "ratio_load_scene_over_laspy": round(ours["s"] / base["s"], 2),
        "goal_ratio": 3.0,
        "laspy_peak_traced_mb": round(base["peak_traced_mb"], 1),
        "load_scene_peak_traced_mb": round(ours["peak_traced_mb"], 1),
        "laspy_peak_rss_increase_mb": round(base["rss_growth_mb"], 1),
        "load_scene_peak_rss_increase_mb": round(ours["rss_growth_mb"], 1),
        "cpu_count": os.cpu_count(),
    }


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--full", action="store_true", help="10M points instead of 1M")
    ap.add_argument("--points", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    print(json.dumps(run(full=a.full, n=a.points, repeats=a.repeats)))
