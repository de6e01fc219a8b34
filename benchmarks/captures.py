"""Photo teacher vs rendered-view teacher on the synthetic tabletop capture (issue 16).

For each setup: write a capture (scene_kd/scene/synthetic/capture.py), run the pipeline on it once with
``teacher_input=photos`` (the oracle reads the label images beside the photos), then again on a copy of that run
with ``teacher_input=renders`` (the oracle reads the labels of the renders from the same cameras; the render
stage is current and reused, so both runs see the same views, Gaussians and label noise). Prints fused /
distilled mIoU of both and the median render-vs-photo PSNR.

Setups: ``equal`` - the scene holds one Gaussian per point of the dense cloud the photos are drawn from;
``detail`` - the scene holds few Gaussians (coarse), the photos show the dense cloud.

    PYTHONPATH=. python benchmarks/captures.py [--views 8] [--flip 0.2] [--setups equal,detail] [--json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

SETUPS = {
    "equal": {"points": 6000, "scene_gaussians": None},
    "detail": {"points": 20000, "scene_gaussians": 1500},
}


def run_setup(name: str, work: Path, *, views: int, flip: float, width: int, height: int, seed: int) -> dict:
    from scene_kd.config import load_config
    from scene_kd.pipeline import run_pipeline
    from scene_kd.runio import read_json
    from scene_kd.scene.synthetic.capture import make_tabletop_capture

    spec = SETUPS[name]
    cap = work / f"{name}-capture"
    info = make_tabletop_capture(cap, seed=seed, views=views, width=2 * width, height=2 * height,
                                 points=spec["points"], scene_gaussians=spec["scene_gaussians"])
    out = {"setup": name, "views": views, "gaussians": info["count"], "photo_points": spec["points"],
           "photo_size": [2 * width, 2 * height], "render_size": [width, height], "label_flip": flip}
    base = {"render": {"width": width, "height": height}, "teacher": {"label_flip": flip, "seed": seed}}
    t0 = time.perf_counter()
    runs = {}
    for mode in ("photos", "renders"):
        run = work / f"{name}-run-{mode}"
        if mode == "renders":
            shutil.copytree(work / f"{name}-run-photos", run)  # reuse the renders: same views, same Gaussians
        cfg = load_config("ci", {**base, "teacher": {**base["teacher"], "teacher_input": mode}})
        res = run_pipeline(cap, run, cfg, progress=False)
        ev = read_json(run / "eval.json")
        runs[mode] = {"fused": round(ev["fused"]["miou"], 4), "distilled": round(ev["distilled"]["miou"], 4),
                      "render_skipped": bool(res["render"].skipped), "photo_views": res["features"]["photo_views"]}
        if mode == "photos":
            out["psnr_median_db"] = res["render"]["psnr_median"]
    out["runs"] = runs
    out["delta_fused"] = round(runs["photos"]["fused"] - runs["renders"]["fused"], 4)
    out["delta_distilled"] = round(runs["photos"]["distilled"] - runs["renders"]["distilled"], 4)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--views", type=int, default=8)
    ap.add_argument("--flip", type=float, default=0.2)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--height", type=int, default=96)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--setups", default="equal,detail")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.setups.split(","):
            results.append(run_setup(name, Path(tmp), views=args.views, flip=args.flip, width=args.width,
                                     height=args.height, seed=args.seed))
            r = results[-1]
            if not args.json:
                print(f"{name:<7} {r['gaussians']:>6} Gaussians, {r['views']} views, PSNR {r['psnr_median_db']} dB | "
                      f"fused photos {r['runs']['photos']['fused']:.3f} renders {r['runs']['renders']['fused']:.3f} "
                      f"(d {r['delta_fused']:+.3f}) | distilled photos {r['runs']['photos']['distilled']:.3f} "
                      f"renders {r['runs']['renders']['distilled']:.3f} (d {r['delta_distilled']:+.3f}) "
                      f"[{r['seconds']} s]", flush=True)
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
