"""View plans under the realistic oracle, same run: the old fixed plan (``aerial-fixed``), the GSD plan as it was
(``aerial:0``: ``--render.min-views 0``, the extent-driven view count only) and the GSD plan with its default
``min_views`` (``aerial``: small scenes densified until enough views frame a typical point); ``aerial:N`` sets N.

For each scene and plan: ``scene-kd run SCENE --out RUN --config urban --teacher oracle-labels --label-flip 0.2
--views PRESET [--render.min-views N] --json`` (the realistic oracle is the default), then the plan's GSD / views /
megapixels / views framing the median point per level
(``scene_kd.render.views.plan_summary`` on the run's cameras) and the run's per-class IoU (fused, distilled,
ensemble), per-stage seconds and peak RSS (RUN/stages.json). Scenes: a small synthetic district
(``synth --kind district --points 369600 --seed 0``: 2 x 2 blocks at 10 points/m^2), the 200k synthetic block
(``synth --kind urban --points 200000 --seed 0``) and the real tiles with several classes in ../shared/data/real/.

    .venv/bin/python benchmarks/oracle_plans.py [--only district,block,real] [--plans aerial-fixed,aerial:0,aerial]
        [--work /tmp/oracle_plans]

Writes benchmarks/oracle_plans.json (a record per scene and plan, with its command; records of scenes or plans
not run this time are kept) and prints a markdown table.
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
PLANS = "aerial-fixed,aerial:0,aerial"
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
    ap.add_argument("--plans", default=PLANS, help="comma-separated PRESET or aerial:MIN_VIEWS")
    ap.add_argument("--work", default="/tmp/oracle_plans")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    out_json = ROOT / "benchmarks" / "oracle_plans.json"
    results = json.loads(out_json.read_text()) if out_json.exists() else []
    for name, path in scenes(work, set(args.only.split(","))):
        for plan in args.plans.split(","):
            preset, _, min_views = plan.partition(":")
            extra = ["--render.min-views", min_views] if min_views else []
            run = work / f"{path.stem}-{plan.replace(':', '-')}"
            t0 = time.perf_counter()
            out = json.loads(cli("run", str(path), "--out", str(run), "--config", "urban", "--teacher", "oracle-labels",
                                 "--label-flip", "0.2", "--views", preset, *extra, "--force", "--json"))
            wall = time.perf_counter() - t0
            command = ["scene-kd", "run", path.name, "--config", "urban", "--teacher", "oracle-labels",
                       "--label-flip", "0.2", "--views", preset, *extra]
            stages = json.loads((run / "stages.json").read_text())
            ev = out["eval"]
            rec = {"scene": name, "plan": plan, "command": " ".join(command), "wall_s": round(wall, 1),
                   "plan_summary": plan_of(path, run),
                   "stages": {k: {"seconds": v.get("seconds"), "peak_rss_mb": round(v.get("peak_rss_mb", 0))}
                              for k, v in stages.items()},
                   "coverage": ev.get("coverage"),
                   **{src: {"miou": round(ev[src]["miou"], 3),
                            "per_class": {c: round(v, 3) for c, v in ev[src]["per_class"].items()}}
                      for src in ("fused", "distilled", "ensemble") if src in ev}}
            results = [r for r in results if (r["scene"], r["plan"]) != (name, plan)] + [rec]
            print(json.dumps(rec), flush=True)
            out_json.write_text(json.dumps(results, indent=1))
    print("\n| scene | plan | views | MP | finest GSD (m/px) | views / point | fused | distilled | ensemble "
          "| car IoU (f/d/e) | pole IoU (f/d/e) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        ps = r["plan_summary"]
        gsds = [lv["gsd_m"] or lv["gsd_seen_m"] for lv in ps["levels"] if lv["kind"] == "nadir"]
        cls = lambda c, r=r: "/".join(f"{r[s]['per_class'].get(c, float('nan')):.2f}" for s in ("fused", "distilled", "ensemble"))  # noqa: E731
        print(f"| {r['scene']} | {r['plan']} | {ps['views']} | {ps['megapixels']:.1f} | {min(gsds):.3f} | "
              f"{ps.get('views_per_point', float('nan')):.0f} | "
              f"{r['fused']['miou']:.3f} | {r['distilled']['miou']:.3f} | {r['ensemble']['miou']:.3f} | "
              f"{cls('car')} | {cls('pole')} |")


if __name__ == "__main__":
    main()
