"""Old (aerial-fixed) vs new (aerial, by GSD) view plan under the realistic oracle, same run.

For each scene and plan: ``scene-kd run SCENE --out RUN --config urban --teacher oracle-labels --label-flip 0.2
--views PLAN --json`` (the realistic oracle is the default), then the plan's GSD / views / megapixels per level
(``scene_kd.render.views.plan_summary`` on the run's cameras) and the run's per-class IoU (fused, distilled,
ensemble), per-stage seconds and peak RSS (RUN/stages.json). Scenes: a small synthetic district
(``synth --kind district --points 369600 --seed 0``: 2 x 2 blocks at 10 points/m^2), the 200k synthetic block
(``synth --kind urban --points 200000 --seed 0``) and the real tiles with several classes in ../shared/data/real/.

    .venv/bin/python benchmarks/oracle_plans.py [--only district,block,real] [--work /tmp/oracle_plans]

Writes benchmarks/oracle_plans.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "data" / "real"
PLANS = ("aerial-fixed", "aerial")
REAL_TILES = ("laspy_file_with_both_wkt_and_geotiff_vlrs.las", "pdal_sample_c.las")


def cli(*args: str) -> str:
    res = subprocess.run([sys.executable, "-m", "scene_kd.cli", *args], capture_output=True, text=True, cwd=ROOT)
    if res.returncode != 0:
        raise SystemExit(f"scene-kd {' '.join(args)} failed:\n{res.stderr[-3000:]}")
    return res.stdout


def scenes(work: Path, only: set[str]) -> list[tuple[str, Path]]:
    out = []
    if "district" in only:
        p = work / "district_4blocks.laz"
        if not p.exists():
            cli("synth", "--kind", "district", "--points", "369600", "--seed", "0", "--out", str(p))
        out.append(("district 2x2 blocks (369,600 pts)", p))
    if "block" in only:
        p = work / "urban_200k.ply"
        if not p.exists():
            cli("synth", "--kind", "urban", "--points", "200000", "--seed", "0", "--out", str(p))
        out.append(("urban block (200,000 pts)", p))
    if "real" in only:
        out += [(name, REAL / name) for name in REAL_TILES if (REAL / name).exists()]
    return out


def plan_of(scene_path: Path, run: Path) -> dict:
    from scene_kd.config import load_config
    from scene_kd.render.types import load_cameras
    from scene_kd.render.views import plan_summary
    from scene_kd.scene.io import load_scene

    cfg = load_config(str(run / "config.yaml")).render
    cams = load_cameras(run)
    summary = plan_summary(load_scene(scene_path), cams, cfg)
    if cfg.preset == "aerial":  # the planned GSDs
        from scene_kd.render.views import plan_views_with_summary

        summary = plan_views_with_summary(load_scene(scene_path), cfg)[1]
    return summary


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="district,block,real")
    ap.add_argument("--work", default="/tmp/oracle_plans")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    results = []
    for name, path in scenes(work, set(args.only.split(","))):
        for plan in PLANS:
            run = work / f"{path.stem}-{plan}"
            t0 = time.perf_counter()
            out = json.loads(cli("run", str(path), "--out", str(run), "--config", "urban", "--teacher", "oracle-labels",
                                 "--label-flip", "0.2", "--views", plan, "--force", "--json"))
            wall = time.perf_counter() - t0
            stages = json.loads((run / "stages.json").read_text())
            ev = out["eval"]
            rec = {"scene": name, "plan": plan, "wall_s": round(wall, 1), "plan_summary": plan_of(path, run),
                   "stages": {k: {"seconds": v.get("seconds"), "peak_rss_mb": round(v.get("peak_rss_mb", 0))}
                              for k, v in stages.items()},
                   "coverage": ev.get("coverage"),
                   **{src: {"miou": round(ev[src]["miou"], 3),
                            "per_class": {c: round(v, 3) for c, v in ev[src]["per_class"].items()}}
                      for src in ("fused", "distilled", "ensemble") if src in ev}}
            results.append(rec)
            print(json.dumps(rec), flush=True)
            (ROOT / "benchmarks" / "oracle_plans.json").write_text(json.dumps(results, indent=1))
    print("\n| scene | plan | views | MP | finest GSD (m/px) | fused | distilled | ensemble | car IoU (f/d/e) | pole IoU (f/d/e) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        ps = r["plan_summary"]
        gsds = [lv["gsd_m"] or lv["gsd_seen_m"] for lv in ps["levels"] if lv["kind"] == "nadir"]
        cls = lambda c, r=r: "/".join(f"{r[s]['per_class'].get(c, float('nan')):.2f}" for s in ("fused", "distilled", "ensemble"))  # noqa: E731
        print(f"| {r['scene']} | {r['plan']} | {ps['views']} | {ps['megapixels']:.1f} | {min(gsds):.3f} | "
              f"{r['fused']['miou']:.3f} | {r['distilled']['miou']:.3f} | {r['ensemble']['miou']:.3f} | "
              f"{cls('car')} | {cls('pole')} |")


if __name__ == "__main__":
    main()
