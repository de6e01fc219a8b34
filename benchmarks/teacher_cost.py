"""What a real teacher costs per view, by part, at each preset's real settings (issue 21): clip-sam, clip-dense and
clip-grid with their real architectures and seeded random weights (the compute of pretrained ones), on CPU, and on
CUDA when there is one (else the table says "not measured").

Renders: per preset, a synthetic scene rendered with that preset (``--config urban | indoor | splat``, all
512 x 512): the 200k-point urban block (``synth --kind urban --points 200000 --seed 0``), the tabletop as points and
as Gaussians. The realistic mask count: random SAM passes no mask at the real thresholds, so clip-sam's count is the
realistic oracle's masks per view on the same renders (``features RUN --teacher oracle-labels``) times clip-sam's 3
mask levels (each of SAM's three multimask outputs gives a level; the oracle has one). clip-dense and clip-grid cut
their own masks, so they count them.

Parts, seconds per view (one process, one run, so the ratios compare):
- clip-sam, on ``--sam-views`` urban views (each part the teacher's own calls, teachers/sam.py + clip.py):
  ``sam_encoder`` (SAM ViT-B on the 1024-px input), ``sam_grid_decoding`` (prompt encoder + mask decoder over the
  whole 16 x 16 point grid), ``sam_postprocess`` (mask upsampling + stability scores of every grid batch, then box
  NMS and overlap resolution over the realistic count of masks per level), ``clip_crops`` (a masked and a context
  crop per mask through CLIP ViT-B/16 at 224 px: ``--crops`` crops timed per view, scaled per crop to 2 x the
  realistic count). All presets render 512 x 512, so the model parts are shared; the mask-count parts are not.
- clip-dense: ``dense_forward``, ``regions``, ``pooling``: the teacher's own timers over whole views, unscaled,
  on ``--views`` views per preset.
- clip-grid: ``clip_crops`` (its grid crops per view at the per-crop time measured for clip-sam's context crops:
  the same call), ``regions_pooling`` (the teacher with the CLIP call replaced by random unit rows).

    PYTHONPATH=. python benchmarks/teacher_cost.py [--views 4] [--sam-views 2] [--sam-batches 0] [--crops 32]
        [--clock wall|cpu] [--presets urban,indoor,splat] [--devices cpu,cuda] [--work /tmp/scene_kd_teacher_cost]
        [--no-write]

``--clock cpu`` (for a shared, loaded machine) times each part as this thread's CPU seconds with torch on one
thread; ``--sam-batches k`` runs k of the SAM grid's prompt batches per view and scales (all batches cost the same).

Writes the package cost table ``scene_kd/teachers/cost_table.json`` (read by teachers/cost.py, which the CLI uses
to show a plan's teacher time before it starts; rows of teachers this script does not measure, e.g. oracle-labels,
are kept), and prints README-ready markdown: seconds per view by part for each teacher, the machine load, and the
projected teacher hours of the 200k-point urban block (48 views) and the 1 km^2 plan (1,416 views).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
TABLE = ROOT / "scene_kd" / "teachers" / "cost_table.json"
PRESETS = {  # preset -> (synth args, scene file name)
    "urban": (["--kind", "urban", "--points", "200000", "--seed", "0"], "urban_200k.ply"),
    "indoor": (["--kind", "tabletop", "--points", "60000", "--seed", "0"], "tabletop.ply"),
    "splat": (["--kind", "tabletop", "--points", "60000", "--seed", "0", "--as-splats", "--max-gaussians", "8000"],
              "tabletop_gs.ply"),
}
PLANS = {"urban block, 200k points (48 views)": 48, "1 km² plan (1,416 views)": 1416}
SAM_LEVELS = 3
TEACHERS = ("clip-sam", "clip-dense", "clip-grid")
SCALES = {  # how each part grows with the view (teachers/cost.py): fixed per view, per pixel, or per mask
    "clip-sam": {"sam_encoder": "view", "sam_grid_decoding": "view", "sam_postprocess": "megapixels",
                 "clip_crops": "masks"},
    "clip-dense": {"dense_forward": "megapixels", "regions": "megapixels", "pooling": "megapixels"},
    "clip-grid": {"clip_crops": "megapixels", "regions_pooling": "megapixels"},
}


def cli(*args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, "-m", "scene_kd.cli", *args], capture_output=True, text=True, cwd=ROOT,
                         env=env)
    if res.returncode != 0:
        raise SystemExit(f"scene-kd {' '.join(args)} failed:\n{res.stderr[-3000:]}")
    return res.stdout


def preset_run(work: Path, preset: str) -> tuple[Path, float]:
    """(the preset's render run with oracle features, the oracle's masks per view); made once, then reused."""
    from safetensors.numpy import load_file

    synth, name = PRESETS[preset]
    scene, run = work / name, work / f"{preset}_run"
    if not scene.exists():
        cli("synth", *synth, "--out", str(scene))
    if not (run / "views.json").exists():
        cli("render", str(scene), "--out", str(run), "--config", preset)
    if not (run / "features.safetensors").exists():
        cli("features", str(run), "--teacher", "oracle-labels")
    views = json.loads((run / "views.json").read_text())["cameras"]
    return run, len(load_file(str(run / "features.safetensors"))["mask_view"]) / len(views)


def pick_views(run: Path, n: int) -> list:
    """n renders spread evenly over the run's views (so every granularity level is among them)."""
    from scene_kd.render.types import load_cameras, load_render

    cams = load_cameras(run)
    idx = sorted({round(i * (len(cams) - 1) / max(1, n - 1)) for i in range(n)}) if n > 1 else [len(cams) // 2]
    return [load_render(run, i, cams[i]) for i in idx]


class Clock:
    """Seconds now: ``wall`` (perf_counter, after waiting for CUDA work) or, on the CPU, ``cpu``: this thread's CPU
    time (time.thread_time) with torch on one thread, so other jobs on a shared machine do not inflate it: the cost
    of the work on one core of this CPU (an idle machine's 2-thread wall time is at most this, at least half)."""

    def __init__(self, device: str, mode: str = "wall"):
        self.cuda = device.startswith("cuda")
        self.mode = "wall" if self.cuda else mode
        if self.mode == "cpu":
            torch.set_num_threads(1)

    def __call__(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.thread_time() if self.mode == "cpu" else time.perf_counter()


def _sam_view(t, render, clock, max_batches: int) -> tuple[float, float, float, torch.Tensor]:
    """(encoder s, grid decoding s, postprocess s, a [P, H, W] stack of decoded masks) of one view; with
    ``max_batches`` > 0 only that many prompt batches of the grid are run and the times scaled to the whole grid
    (every batch has the same shape and cost)."""
    from segment_anything.utils.amg import build_point_grid, calculate_stability_score
    from segment_anything.utils.transforms import ResizeLongestSide

    sam, p, dev = t.sam.model, t.params, t.sam.device
    h, w = render.rgb.shape[:2]
    tr = ResizeLongestSide(t.sam.image_size)
    t_dec = t_post = 0.0
    masks = []
    with torch.inference_mode():
        x = torch.as_tensor(tr.apply_image(render.rgb), device=dev).permute(2, 0, 1).contiguous()
        input_hw = tuple(x.shape[-2:])
        t0 = clock()
        emb = sam.image_encoder(sam.preprocess(x[None].float()))
        t_enc = clock() - t0
        pts = build_point_grid(p.points_per_side) * np.array([[w, h]])
        pts = torch.as_tensor(tr.apply_coords(pts, (h, w)), dtype=torch.float32, device=dev)
        dense_pe = sam.prompt_encoder.get_dense_pe()
        starts = list(range(0, len(pts), p.points_per_batch))
        run = starts[:max_batches] if max_batches > 0 else starts
        for i in run:
            b = pts[i : i + p.points_per_batch]
            t0 = clock()
            labels = torch.ones(b.shape[0], 1, dtype=torch.int64, device=dev)
            sparse, dense = sam.prompt_encoder(points=(b[:, None], labels), boxes=None, masks=None)
            low, _ = sam.mask_decoder(image_embeddings=emb, image_pe=dense_pe, sparse_prompt_embeddings=sparse,
                                      dense_prompt_embeddings=dense, multimask_output=True)
            t1 = clock()
            logits = sam.postprocess_masks(low, input_hw, (h, w))
            calculate_stability_score(logits, sam.mask_threshold, p.stability_offset)
            binary = logits > sam.mask_threshold
            (binary.sum((-1, -2)) >= p.min_area).any()
            t2 = clock()
            t_dec, t_post = t_dec + t1 - t0, t_post + t2 - t1
            masks.append(binary[:, 0])
    scale = len(starts) / len(run)
    return t_enc, t_dec * scale, t_post * scale, torch.cat(masks)


def _crop_seconds(t, render, n_crops: int, clock) -> tuple[float, float]:
    """(s per masked crop, s per context crop) through clip-sam's own embed_crops on ``n_crops`` crops of one view."""
    from scene_kd.teachers.clip import embed_crops, normalised_images, square_boxes

    h, w = render.rgb.shape[:2]
    images = normalised_images(t.bundle, [render.rgb])
    rng = np.random.default_rng(0)
    k = max(2, n_crops // 2)
    xy = rng.uniform(0, min(h, w) * 0.8, (k, 2))
    side = rng.uniform(16, min(h, w) * 0.2, (k, 1))
    x0, y0, x1, y1 = torch.tensor(np.hstack([xy, xy + side]), dtype=torch.float32).unbind(1)
    zero = torch.zeros(k, 1)
    masked = torch.cat([zero, square_boxes(x0, y0, x1, y1, 1.0, t.crop_padding)], 1).to(images.device)
    ctx = torch.cat([zero, square_boxes(x0, y0, x1, y1, t.context_scale, t.crop_padding)], 1).to(images.device)
    ids = torch.from_numpy((np.arange(h * w).reshape(1, h, w) // (h * w // 16)).astype(np.int64)).to(images.device)
    t0 = clock()
    embed_crops(t.bundle, images, masked, batch_size=t.crop_batch_size, id_images=ids,
                id_index=torch.zeros(k, dtype=torch.long, device=images.device),
                keep_id=torch.arange(k, device=images.device) % 16)
    t1 = clock()
    embed_crops(t.bundle, images, ctx, batch_size=t.crop_batch_size)
    return (t1 - t0) / k, (clock() - t1) / k


def clip_sam_rows(renders: list, masks_per_view: dict[str, float], device: str, clock: Clock, n_crops: int,
                  max_batches: int) -> tuple[dict, float]:
    """({preset: row} at each preset's realistic mask count, s per context crop); model parts timed on ``renders``."""
    from segment_anything.utils.amg import batched_mask_to_box
    from torchvision.ops import nms

    from scene_kd.teachers.factory import create_teacher
    from scene_kd.teachers.sam import resolve_overlaps

    t = create_teacher("clip-sam", weights="random", device=device)
    t.load()
    p = t.params
    enc = dec = post = masked = ctx = 0.0
    cand = None
    for r in renders:
        e, d, q, cand = _sam_view(t, r, clock, max_batches)
        m, c = _crop_seconds(t, r, n_crops, clock)
        enc, dec, post, masked, ctx = enc + e, dec + d, post + q, masked + m, ctx + c
    n = len(renders)
    enc, dec, post, masked, ctx = enc / n, dec / n, post / n, masked / n, ctx / n
    rows = {}
    for preset, m in masks_per_view.items():
        per_level = max(1, round(m / SAM_LEVELS))
        stack = cand.repeat(math.ceil(per_level / len(cand)), 1, 1)[:per_level]
        scores = torch.rand(per_level, device=stack.device)
        t0 = clock()
        for _ in range(SAM_LEVELS):
            keep = nms(batched_mask_to_box(stack).float(), scores, p.nms_iou)
            resolve_overlaps(stack[keep], scores[keep], p.min_area)
        filters = clock() - t0
        parts = {"sam_encoder": enc, "sam_grid_decoding": dec, "sam_postprocess": post + filters,
                 "clip_crops": m * (masked + ctx)}
        rows[preset] = {"masks_per_view": round(m, 1), "parts_s": parts,
                        "source": f"benchmarks/teacher_cost.py: SAM parts averaged over {n} urban view(s)"
                                  + (f" ({max_batches} of the grid's prompt batches run, scaled)" if max_batches else "")
                                  + "; "
                                  f"{n_crops} CLIP crops per view timed ({masked:.3f} s masked, {ctx:.3f} s context "
                                  f"per crop) x 2 per mask; masks per view = realistic oracle's x {SAM_LEVELS} levels"}
    return rows, ctx


def clip_dense_row(renders: list, device: str, clock: Clock) -> dict:
    """The teacher's own three steps (what its encode_views runs), one view at a time, timed each."""
    from scene_kd.teachers.factory import create_teacher

    t = create_teacher("clip-dense", weights="random", device=device)
    t.load()
    parts = dict.fromkeys(("dense_forward", "regions", "pooling"), 0.0)
    masks = 0
    for r in renders:
        t0 = clock()
        feats = t.dense_features([r.rgb])
        t1 = clock()
        regions = t.regions(r)
        t2 = clock()
        masks += t.pool(feats[0], regions).num_masks
        t3 = clock()
        for k, dt_ in zip(parts, (t1 - t0, t2 - t1, t3 - t2), strict=True):
            parts[k] += dt_
    n = len(renders)
    return {"masks_per_view": round(masks / n, 1), "parts_s": {k: v / n for k, v in parts.items()},
            "source": f"benchmarks/teacher_cost.py: the teacher's dense_features, regions, pool over {n} view(s) of "
                      "the preset, its own regions"}


def clip_grid_row(render, per_crop_s: float, device: str, clock: Clock) -> dict:
    import scene_kd.teachers.clip_grid as cg
    from scene_kd.teachers.base import l2_normalise
    from scene_kd.teachers.factory import create_teacher

    t = create_teacher("clip-grid", weights="random", device=device)
    t.load()
    h, w = render.rgb.shape[:2]
    n_crops = sum(len(b) for _, _, b in t.crop_boxes(h, w))
    real = cg.embed_crops
    cg.embed_crops = lambda bundle, images, boxes, **kw: l2_normalise(
        torch.randn(len(boxes), bundle.dim, device=images.device))
    try:
        t0 = clock()
        vm = t.encode_views([render])[0]
        pool = clock() - t0
    finally:
        cg.embed_crops = real
    return {"masks_per_view": vm.num_masks, "parts_s": {"clip_crops": n_crops * per_crop_s, "regions_pooling": pool},
            "source": f"benchmarks/teacher_cost.py: {n_crops} grid crops x the measured per-crop time; regions and "
                      "pooling timed with the CLIP call replaced"}


def finish_row(teacher: str, row: dict, render) -> dict:
    h, w = render.rgb.shape[:2]
    parts = {k: round(v, 3) for k, v in row["parts_s"].items()}
    return {"width": w, "height": h, "masks_per_view": row["masks_per_view"], "parts_s": parts,
            "scales": SCALES[teacher], "total_s": round(sum(parts.values()), 3), "source": row["source"]}


def measure(device: str, runs: dict, a: argparse.Namespace) -> dict:
    """{teacher: {preset: row}} on one device."""
    clock = Clock(device, a.clock)
    views = {p: pick_views(run, a.views) for p, (run, _) in runs.items()}
    dense = {p: clip_dense_row(views[p], device, clock) for p in runs}  # first: the cheap one, so failures show early
    sam_src = "urban" if "urban" in runs else next(iter(runs))
    sam, per_crop = clip_sam_rows(pick_views(runs[sam_src][0], a.sam_views),
                                  {p: m * SAM_LEVELS for p, (_, m) in runs.items()}, device, clock, a.crops,
                                  a.sam_batches)
    res: dict = {t: {} for t in TEACHERS}
    for p in runs:
        first = views[p][0]
        res["clip-dense"][p] = finish_row("clip-dense", dense[p], first)
        res["clip-sam"][p] = finish_row("clip-sam", sam[p], first)
        res["clip-grid"][p] = finish_row("clip-grid", clip_grid_row(first, per_crop, device, clock), first)
    return res


def machine() -> str:
    model = "cpu"
    try:
        model = next(ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                     if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{os.cpu_count()}-core {model}"


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def markdown(table: dict, presets: list[str]) -> str:
    """README-ready: per preset, parts x teachers (s per view on CPU), totals, GPU column, projected hours."""
    out = []
    for preset in presets:
        rows = {t: table["teachers"][t][preset] for t in TEACHERS}
        out.append(f"\n**{preset} preset** (512 x 512 views, seconds per view; {table['clock']}; CPU: "
                   f"{table['machine']}; GPU: {table['gpu']}; load average at start / end: {table['load_average']})\n")
        out.append("| part | " + " | ".join(f"{t} CPU" for t in TEACHERS) + " |")
        out.append("|---|" + "---:|" * len(TEACHERS))
        for t in TEACHERS:
            cpu = rows[t]["cpu"]
            for part, s in cpu["parts_s"].items():
                out.append(f"| {t}: {part} | " + " | ".join(f"{s:.2f}" if u == t else "" for u in TEACHERS) + " |")
        out.append("| **total, s per view** | " + " | ".join(f"**{rows[t]['cpu']['total_s']:.2f}**"
                                                           for t in TEACHERS) + " |")
        out.append("| masks per view | " + " | ".join(f"{rows[t]['cpu']['masks_per_view']:g}" for t in TEACHERS) + " |")
        out.append("| GPU | " + " | ".join(f"{rows[t]['cuda']['total_s']:.2f}" if rows[t].get("cuda")
                                          else "not measured" for t in TEACHERS) + " |")
        for plan, n in PLANS.items() if preset == "urban" else ():  # both plans are aerial (urban preset) plans
            out.append(f"| teacher hours, {plan} | "
                       + " | ".join(f"{rows[t]['cpu']['total_s'] * n / 3600:.2f}" for t in TEACHERS) + " |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--views", type=int, default=4, help="views per preset timed for clip-dense")
    ap.add_argument("--sam-views", type=int, default=2, help="urban views timed for clip-sam (~2 min each on 2 cores)")
    ap.add_argument("--crops", type=int, default=32, help="CLIP crops timed per clip-sam view (half masked)")
    ap.add_argument("--sam-batches", type=int, default=0,
                    help="prompt batches of SAM's grid run per view, scaled to the grid (0: all)")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="CPU rows: wall seconds, or this thread's CPU seconds with torch on one thread (load-proof)")
    ap.add_argument("--presets", default="urban,indoor,splat")
    ap.add_argument("--devices", default="cpu,cuda")
    ap.add_argument("--work", default="/tmp/scene_kd_teacher_cost")
    ap.add_argument("--no-write", action="store_true", help="print only")
    a = ap.parse_args()
    print(f"teacher cost: about {50 * a.sam_views + 40} s on a 2-core CPU before its table (SAM's whole grid ~50 s "
          f"per timed clip-sam view; 84 s measured with --views 3 --sam-views 1 --sam-batches 0 --crops 32)",
          file=sys.stderr, flush=True)
    torch.manual_seed(0)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    presets = a.presets.split(",")
    runs = {p: preset_run(work, p) for p in presets}
    load_start, t_start = load_average(), time.perf_counter()
    per_device = {}
    for dev in a.devices.split(","):
        if dev == "cuda" and not torch.cuda.is_available():
            print("cuda: not measured (no CUDA device)", file=sys.stderr)
            continue
        per_device[dev] = measure(dev, runs, a)
    old = json.loads(TABLE.read_text()) if TABLE.exists() else {"teachers": {}}
    teachers = {k: v for k, v in old["teachers"].items() if k not in TEACHERS}  # rows measured elsewhere stay
    for t in TEACHERS:
        teachers[t] = {p: {"cpu": per_device.get("cpu", {}).get(t, {}).get(p),
                           "cuda": per_device.get("cuda", {}).get(t, {}).get(p)} for p in presets}
        if "urban" in presets:  # the built-in default render settings (aerial, 512 x 512) are the urban preset's
            teachers[t]["default"] = teachers[t]["urban"]
    cuda = torch.cuda.get_device_name(0) if "cuda" in per_device else None
    table = {
        "machine": machine() + (", one thread's CPU seconds" if a.clock == "cpu" else ""),
        "gpu": cuda or "not measured (no CUDA device)",
        "torch": f"{torch.__version__}, {torch.get_num_threads()} thread(s)",
        "measured": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "PYTHONPATH=. python benchmarks/teacher_cost.py " + " ".join(sys.argv[1:]),
        "load_average": f"{load_start} / {load_average()} (1, 5, 15 min)",
        "clock": {"wall": "CPU rows: wall seconds",
                  "cpu": "CPU rows: CPU seconds of one thread (torch on 1 thread; an idle 2-core machine's wall time "
                         "is expected between half of this and this)"}[a.clock],
        "weights": "random (seeded): the real architectures (SAM ViT-B, open_clip ViT-B-16), the compute of pretrained",
        "teachers": teachers,
    }
    print(markdown(table, presets))
    if "urban" in presets and "cpu" in per_device:
        s, f = (teachers[t]["urban"]["cpu"]["total_s"] for t in ("clip-sam", "clip-dense"))
        print(f"\nurban, CPU: clip-dense {f:.2f} s per view, clip-sam {s:.1f} s: {s / f:.0f}x cheaper")
    print(f"benchmark took {time.perf_counter() - t_start:.0f} s; command: {table['command']}")
    if not a.no_write:
        TABLE.write_text(json.dumps(table, indent=2, ensure_ascii=False) + "\n")
        print(f"wrote {TABLE.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
