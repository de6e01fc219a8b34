"""Photo teacher vs rendered-view teacher on the synthetic tabletop capture (issue 16).

For each setup: write a capture (scene_kd/scene/synthetic/capture.py), render it once (the capture's cameras),
then for each teacher seed run features -> fuse -> distill -> eval on copies of that run with
``teacher_input=photos`` (the oracle reads the label images beside the photos) and ``teacher_input=renders`` (it
reads the labels of the renders from the same cameras): same views, same Gaussians, same label-flip rate (the
flips themselves are drawn per view, so the seeds average them out). Prints fused / distilled mIoU (mean over
seeds, the per-seed differences photos - renders
and the standard error of their mean: sample std / sqrt(n)) and the median render-vs-photo PSNR.

Setups: ``equal`` - the scene holds one Gaussian per point of the dense cloud the photos are drawn from;
``detail`` - the scene holds few Gaussians (coarse), the photos show the dense cloud; ``blurred`` - one Gaussian
per point, but each at least 3 cm wide along the surface (an under-trained splat: its renders are blurred, the
photos are not).

    PYTHONPATH=. python benchmarks/captures.py [--views 8] [--flip 0.2] [--setups equal,detail,blurred]
        [--teacher-seeds 16] [--width 256 --height 192] [--epochs 30] [--realism realistic] [--json]

The oracle is the default realistic one (masks a real teacher would not make are dropped, blurred views judged at
their effective resolution), the student trains 30 epochs: the ci preset's perfect oracle and 2 epochs measured
neither the teacher's limits nor a trained student.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

SETUPS = {
    "equal": {"points": 6000, "scene_gaussians": None, "scene_blur": None},
    "detail": {"points": 8000, "scene_gaussians": 1000, "scene_blur": None},
    "blurred": {"points": 6000, "scene_gaussians": None, "scene_blur": 0.03},
}


def run_setup(name: str, work: Path, *, views: int, flip: float, width: int, height: int, seed: int,
              teacher_seeds: int, photo_scale: float = 1.5, realism: str = "realistic", epochs: int = 10) -> dict:
    from scene_kd.config import load_config
    from scene_kd.pipeline import run_pipeline
    from scene_kd.runio import read_json
    from scene_kd.scene.synthetic.capture import make_tabletop_capture

    spec = SETUPS[name]
    cap = work / f"{name}-capture"
    pw, ph = round(photo_scale * width), round(photo_scale * height)  # photos resized to the renders on the way in
    info = make_tabletop_capture(cap, seed=seed, views=views, width=pw, height=ph,
                                 points=spec["points"], scene_gaussians=spec["scene_gaussians"],
                                 scene_blur=spec["scene_blur"])
    out = {"setup": name, "views": views, "gaussians": info["count"], "photo_points": spec["points"],
           "scene_blur_m": spec["scene_blur"], "oracle_realism": realism, "distill_epochs": epochs,
           "photo_size": [pw, ph], "render_size": [width, height], "label_flip": flip}
    base = {"render": {"width": width, "height": height}, "distill": {"epochs": epochs},
            "teacher": {"label_flip": flip, "seed": seed, "oracle_realism": realism}}
    t0 = time.perf_counter()
    rendered = work / f"{name}-rendered"
    res = run_pipeline(cap, rendered, load_config("ci", base), until="render", progress=False)
    out["psnr_median_db"] = res["render"]["psnr_median"]
    runs: dict[str, dict[str, list[float]]] = {m: {"fused": [], "distilled": []} for m in ("photos", "renders")}
    for ts in range(teacher_seeds):
        for mode in ("photos", "renders"):
            run = work / f"{name}-run-{mode}-{ts}"
            shutil.copytree(rendered, run)  # the render stage is current: same views, same Gaussians
            cfg = load_config("ci", {**base, "teacher": {**base["teacher"], "teacher_input": mode, "seed": ts}})
            res = run_pipeline(cap, run, cfg, progress=False)
            assert res["render"].skipped and res["features"]["photo_views"] == (views if mode == "photos" else 0)
            ev = read_json(run / "eval.json")
            runs[mode]["fused"].append(round(ev["fused"]["miou"], 4))
            runs[mode]["distilled"].append(round(ev["distilled"]["miou"], 4))
            shutil.rmtree(run)
    out["runs"] = runs
    for src in ("fused", "distilled"):
        d = [a - b for a, b in zip(runs["photos"][src], runs["renders"][src], strict=True)]
        out[f"mean_{src}"] = {m: round(sum(runs[m][src]) / teacher_seeds, 4) for m in runs}
        out[f"delta_{src}"] = round(sum(d) / len(d), 4)
        out[f"deltas_{src}"] = [round(x, 4) for x in d]
        # standard error of the mean difference: sample std of the per-seed differences / sqrt(n)
        out[f"se_{src}"] = round(statistics.stdev(d) / len(d) ** 0.5, 4) if len(d) > 1 else None
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--views", type=int, default=8)
    ap.add_argument("--flip", type=float, default=0.2)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--height", type=int, default=192)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--setups", default="equal,detail,blurred")
    ap.add_argument("--teacher-seeds", type=int, default=16)
    ap.add_argument("--photo-scale", type=float, default=1.5, help="photo size / render size")
    ap.add_argument("--realism", default="realistic", choices=["realistic", "perfect"], help="oracle_realism")
    ap.add_argument("--epochs", type=int, default=30, help="student epochs (the ci preset's 2 barely train it)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.setups.split(","):
            results.append(run_setup(name, Path(tmp), views=args.views, flip=args.flip, width=args.width,
                                     height=args.height, seed=args.seed, teacher_seeds=args.teacher_seeds, photo_scale=args.photo_scale,
                                     realism=args.realism, epochs=args.epochs))
            r = results[-1]
            # with --json the summary line goes to stderr, the JSON alone to stdout
            f, d = r["mean_fused"], r["mean_distilled"]
            print(f"{name:<7} {r['gaussians']:>6} Gaussians, {r['views']} views, flip {r['label_flip']}, "
                  f"PSNR {r['psnr_median_db']} dB | fused photos {f['photos']:.3f} renders {f['renders']:.3f} "
                  f"(d {r['delta_fused']:+.3f} +- {r['se_fused'] or 0:.3f} SE) | distilled photos {d['photos']:.3f} renders {d['renders']:.3f} "
                  f"(d {r['delta_distilled']:+.3f} +- {r['se_distilled'] or 0:.3f} SE, n {args.teacher_seeds}) | per seed {json.dumps(r['runs'])} [{r['seconds']} s]",
                  flush=True, file=sys.stderr if args.json else sys.stdout)
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
