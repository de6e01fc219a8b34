"""The 1 km^2 synthetic district (10M points) end to end at 512-d under the realistic oracle, by plan.

``synth --kind district --seed 0`` (10M points, a 10 x 10 grid of urban blocks at 10 points/m^2), then for each
plan ``scene-kd run DISTRICT --out RUN --config urban --teacher oracle-labels --label-flip 0.2
--teacher.oracle-dim 512 --views PLAN --epochs E --json`` (the realistic oracle is the default; E caps the
student's epochs so a CPU run ends in hours, early stopping may end it sooner). Reported per plan: the
plan (views, megapixels, GSD per level), per-stage wall seconds and peak RSS (RUN/stages.json, the process's
high-water mark when the stage ended), the whole run's peak RSS (``/usr/bin/time -f %M``), how the fused and
distilled features are stored (MiB), and per-class IoU for fused / distilled / ensemble.

    .venv/bin/python benchmarks/district.py [--plans aerial,aerial-fixed] [--epochs 6] [--work /tmp/district]

Writes benchmarks/district.json (one record per plan, written as each finishes) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--plans", default="aerial,aerial-fixed")
    ap.add_argument("--epochs", default="6")
    ap.add_argument("--points", default="10000000")
    ap.add_argument("--work", default="/tmp/district")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "district.json"))
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    scene = work / f"district_{args.points}.laz"
    if not scene.exists():
        subprocess.run([sys.executable, "-m", "scene_kd.cli", "synth", "--kind", "district", "--points", args.points,
                        "--seed", "0", "--out", str(scene)], check=True, cwd=ROOT)
    out_path = Path(args.out)
    results = json.loads(out_path.read_text()) if out_path.exists() else []
    for plan in args.plans.split(","):
        run = work / f"run-{plan}"
        cmd = [sys.executable, "-m", "scene_kd.cli", "run", str(scene), "--out", str(run), "--config", "urban",
               "--teacher", "oracle-labels", "--label-flip", "0.2", "--teacher.oracle-dim", "512", "--views", plan,
               "--epochs", args.epochs, "--json"]
        t0 = time.perf_counter()
        res = subprocess.run(["/usr/bin/time", "-f", "MAXRSS_KB %M", *cmd], capture_output=True, text=True, cwd=ROOT)
        wall = time.perf_counter() - t0
        if res.returncode != 0:
            raise SystemExit(f"{plan} failed:\n{res.stderr[-4000:]}")
        maxrss_kb = int(next(line.split()[1] for line in res.stderr.splitlines() if line.startswith("MAXRSS_KB")))
        out = json.loads(res.stdout)
        stages = json.loads((run / "stages.json").read_text())
        views = json.loads((run / "views.json").read_text())
        field = json.loads((run / "field.json").read_text())
        ev = out["eval"]
        rec = {
            "plan": plan, "points": int(args.points), "dim": field["dim"], "epochs_cap": int(args.epochs),
            "wall_s": round(wall, 1), "peak_rss_mib": round(maxrss_kb / 1024),
            "views": len(views["cameras"]), "plan_levels": views.get("plan", {}).get("levels"),
            "storage": field.get("storage"),
            "field_file_mib": round((run / "field.safetensors").stat().st_size / 2**20, 1),
            "stages": {k: {"seconds": v.get("seconds"), "peak_rss_mib": round(v.get("peak_rss_mb", 0))}
                       for k, v in stages.items()},
            "distill": {k: out.get("distill", {}).get(k) for k in ("epochs", "feature_rank", "train_seconds",
                                                                   "covered_points")},
            "coverage": ev.get("coverage"),
            **{src: {"miou": round(ev[src]["miou"], 3),
                     "per_class": {c: round(v, 3) for c, v in ev[src]["per_class"].items()}}
               for src in ("fused", "distilled", "ensemble") if src in ev},
        }
        results = [r for r in results if r["plan"] != plan] + [rec]
        out_path.write_text(json.dumps(results, indent=1))
        print(json.dumps(rec), flush=True)
    for r in results:
        print(f"\n{r['plan']}: {r['views']} views, wall {r['wall_s']} s, peak RSS {r['peak_rss_mib']} MiB, "
              f"field file {r['field_file_mib']} MiB")
        print("| stage | seconds | peak RSS MiB |\n| --- | --- | --- |")
        for k, v in r["stages"].items():
            print(f"| {k} | {v['seconds']} | {v['peak_rss_mib']} |")
        srcs = [s for s in ("fused", "distilled", "ensemble") if s in r]
        classes = sorted(r[srcs[0]]["per_class"])
        print("| source | mIoU | " + " | ".join(classes) + " |")
        print("| --- | --- | " + " | ".join("---" for _ in classes) + " |")
        for s in srcs:
            print(f"| {s} | {r[s]['miou']:.3f} | " + " | ".join(f"{r[s]['per_class'][c]:.2f}" for c in classes) + " |")


if __name__ == "__main__":
    main()
