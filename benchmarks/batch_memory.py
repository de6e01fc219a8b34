"""Benchmark: peak RSS of ``scene-kd batch`` on one big LAZ tile, next to the size of one copy of its points.

The tile (default 10M points) is built once by tiling + jittering a real cloud (``pdal_autzen_trim.las``,
LAS 1.2 PF3, 110k points; a synthetic grid when the real data is absent) with laspy's chunked writer, so
making it never holds the tile. ``batch`` then runs in a child process with the cheapest labeller that
still goes through the whole tile path (read -> label -> streamed annotate writer): ``--labeller
batch_memory:height_labeller`` (two classes by height), or ``--student RUN`` to include a trained student.
Peak RSS is the child's ``ru_maxrss``; the baseline is the same interpreter importing scene_kd's CLI and torch.

Goal (issue 14): peak under 2x one copy of the points (point count x record length).

    PYTHONPATH=. python benchmarks/batch_memory.py --points 10000000 [--student RUN] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REAL = HERE.parents[1] / "shared" / "data" / "real" / "pdal_autzen_trim.las"


def height_labeller(scene, labels):
    """(label_index, confidence): label 1 above the median height, else 0 (a stand-in for a model)."""
    z = scene.xyz[:, 2]
    idx = (z > np.median(z)).astype(np.int32)
    return idx, np.full(len(z), 0.9, dtype=np.float32)


def make_tile(path: Path, n: int, source: Path = REAL, seed: int = 0) -> dict:
    """Write an n-point LAZ by tiling ``source``'s records on a grid (X/Y shifted by whole tiles, Z jittered)."""
    import laspy

    rng = np.random.default_rng(seed)
    src = laspy.read(str(source))
    base = src.points.array
    m = len(base)
    span = (base["X"].max() - base["X"].min() + 1, base["Y"].max() - base["Y"].min() + 1)
    side = int(np.ceil(np.sqrt(np.ceil(n / m))))
    header = laspy.LasHeader(version=src.header.version, point_format=src.header.point_format)
    header.scales, header.offsets = src.header.scales, src.header.offsets
    header.vlrs.extend(src.header.vlrs)
    written, k = 0, 0
    with laspy.open(str(path), mode="w", header=header, do_compress=True) as w:
        while written < n:
            take = min(m, n - written)
            rec = laspy.PackedPointRecord(base[:take].copy(), src.header.point_format)
            gx, gy = divmod(k, side)
            rec["X"] = rec["X"] + np.int32(gx * span[0])
            rec["Y"] = rec["Y"] + np.int32(gy * span[1])
            rec["Z"] = rec["Z"] + rng.integers(-5, 6, take).astype(np.int32)
            w.write_points(rec)
            written += take
            k += 1
    return {"points": written, "record_length": src.header.point_format.size, "source": str(source)}


def _child_peak(cmd: list[str], env: dict) -> tuple[float, float, int]:
    """(peak RSS MiB, seconds, return code) of a child process."""
    t0 = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if proc.returncode:
        sys.stderr.write(proc.stdout[-2000:] + proc.stderr[-2000:])
    return max(after, before) / 1024, time.perf_counter() - t0, proc.returncode


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=10_000_000)
    ap.add_argument("--student", default=None, help="run folder with a trained student (else height labeller)")
    ap.add_argument("--keep", default=None, help="folder to keep the tile in (reused when present)")
    args = ap.parse_args()
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="scene_kd_batch_mem_"))
    work.mkdir(parents=True, exist_ok=True)
    tile = work / f"tile_{args.points}.laz"
    t0 = time.perf_counter()
    if not tile.exists():
        meta = make_tile(tile, args.points)
        (work / f"{tile.name}.json").write_text(json.dumps(meta))
    meta = json.loads((work / f"{tile.name}.json").read_text())
    make_s = time.perf_counter() - t0
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent), str(HERE), os.environ.get("PYTHONPATH", "")])}
    py = sys.executable
    # baseline: one child, so ru_maxrss of the batch child is measured separately below
    base_mib, _, _ = _child_peak([py, "-c", "import torch, scene_kd.cli, scene_kd.scene.io"], env)
    mode = ["--student", args.student] if args.student else ["--labeller", "batch_memory:height_labeller"]
    out = work / "out"
    cmd = [py, "-m", "scene_kd.cli", "batch", str(tile), "--out", str(out), "--labels", "ground,building",
           "--workers", "0", "--force", *mode]
    peak_mib, secs, rc = _child_peak(cmd, env)
    points_mib = meta["points"] * meta["record_length"] / 2**20
    res = {
        "points": meta["points"], "record_length": meta["record_length"],
        "tile_laz_mib": round(tile.stat().st_size / 2**20, 1), "points_copy_mib": round(points_mib, 1),
        "baseline_rss_mib": round(base_mib, 1), "batch_peak_rss_mib": round(peak_mib, 1),
        "peak_over_points_copy": round(peak_mib / points_mib, 2),
        "peak_minus_baseline_over_points_copy": round((peak_mib - base_mib) / points_mib, 2),
        "batch_seconds": round(secs, 1), "make_tile_seconds": round(make_s, 1), "rc": rc,
        "mode": "student" if args.student else "height labeller", "command": " ".join(cmd),
    }
    print(json.dumps(res, indent=1))
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
