"""RUN/report.html: a one-page summary of a run a person can open in a browser.

Contact sheet of views, mask preview, relevancy renders for example queries, confusion matrix,
evaluation table and per-stage timings. Images are referenced relative to the run folder.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import numpy as np

from scene_kd.config import read_query_config
from scene_kd.query.session import QuerySession
from scene_kd.render.points import estimate_point_radius, render_points
from scene_kd.runio import atomic_path
from scene_kd.scene.types import Camera
from scene_kd.teachers.config import ORACLE, ORACLE_NOTE


def relevancy_render(run_dir: str | Path, query: str, out_png: str | Path, *, size: int = 512) -> dict[str, Any]:
    """Render the run's points from above coloured by relevancy to ``query`` (turbo), save a PNG.

    Returns {"query", "hits" (relevancy > 0.5), "max"}.
    """
    import matplotlib
    import torch
    from PIL import Image

    session = QuerySession.open(run_dir, query=read_query_config(run_dir))  # as every query entry point
    field = session.field
    rel = session.relevancy(query).float().numpy()
    cmap = matplotlib.colormaps["turbo"]
    colours = (cmap(np.clip(rel, 0, 1))[:, :3] * 255).astype(np.uint8)
    if field.rgb is not None:  # keep the scene readable: dim true colour where relevancy is low
        grey = field.rgb.mean(axis=1, keepdims=True).astype(np.float32) * 0.6
        low = rel < 0.5
        colours[low] = grey[low].astype(np.uint8).repeat(3, axis=1)
    cam = top_down_camera(field.positions, size=size)

    radius = estimate_point_radius(field.positions)  # hole-free surfaces, as in the renders
    r = render_points(torch.from_numpy(field.positions), cam, rgb=torch.from_numpy(colours), point_radius=radius)
    with atomic_path(out_png) as tmp:
        Image.fromarray(r.rgb).save(tmp, format="PNG")
    return {"query": query, "hits": int((rel > 0.5).sum()), "max": float(rel.max()) if len(rel) else 0.0}


def top_down_camera(xyz: np.ndarray, *, size: int = 512, fov_deg: float = 40.0) -> Camera:
    """A nadir pinhole camera [local frame] that sees the whole cloud ``xyz`` [N, 3] in a size x size image."""
    lo, hi = xyz.min(axis=0).astype(np.float64), xyz.max(axis=0).astype(np.float64)
    centre = (lo + hi) / 2
    half = max(hi[0] - lo[0], hi[1] - lo[1], 1e-3) / 2 * 1.05
    f = size / 2 / np.tan(np.radians(fov_deg) / 2)
    height = hi[2] + half / np.tan(np.radians(fov_deg) / 2)
    # camera looks down -z; image x = world x, image y = -world y (north up)
    R = np.array([[1.0, 0, 0], [0, -1.0, 0], [0, 0, -1.0]])
    eye = np.array([centre[0], centre[1], height])
    w2c = np.eye(4)
    w2c[:3, :3] = R
    w2c[:3, 3] = -R @ eye
    K = np.array([[f, 0, size / 2], [0, f, size / 2], [0, 0, 1]])
    return Camera(K=K, world_to_cam=w2c, width=size, height=size, name="top-down")


def loss_curve_png(run_dir: Path) -> tuple[str, str] | None:
    """plots/loss.png from RUN/student.json's history (train and held-out loss per epoch); (path, caption) or
    None when the run has no point student."""
    path = run_dir / "student.json"
    if not path.exists():
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h = json.loads(path.read_text()).get("history") or {}
    train, held = h.get("train_loss") or h.get("loss") or [], h.get("holdout_loss") or []
    if not train:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    ax.plot(range(1, len(train) + 1), train, label="train")
    if held:
        ax.plot(range(1, len(held) + 1), held, label="held-out")
    if h.get("best_epoch"):
        ax.axvline(int(h["best_epoch"]), color="grey", ls="--", lw=1, label="best epoch")
    ax.set_xlabel("epoch")
    ax.set_ylabel("1 - cosine")
    ax.legend()
    fig.tight_layout()
    with atomic_path(run_dir / "plots" / "loss.png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    stop = "stopped early" if h.get("stopped_early") else "ran to its epoch limit"
    return "plots/loss.png", f"student loss per epoch ({len(train)} epochs, {stop})"


def write_report(run_dir: str | Path, queries: list[dict[str, Any]], title: str = "") -> Path:
    """Write RUN/report.html from what the run folder holds; ``queries`` from :func:`relevancy_render`."""
    run_dir = Path(run_dir)
    esc = html.escape

    def img(rel: str, caption: str) -> str:
        if not (run_dir / rel).exists():
            return f"<p><em>{esc(caption)}: not produced in this run</em></p>"
        return f'<figure><img src="{esc(rel)}" alt="{esc(caption)}"><figcaption>{esc(caption)}</figcaption></figure>'

    parts = [f"<h1>scene-kd run: {esc(title or run_dir.name)}</h1>"]
    field_json = run_dir / "field.json"
    teacher = json.loads(field_json.read_text()).get("teacher") if field_json.exists() else None
    if teacher:
        parts.append(f"<p>Teacher: <b>{esc(teacher)}</b></p>")
    if teacher == ORACLE:
        parts.append(f'<p style="background:#fff3cd;padding:8px;border:1px solid #e0c36b"><b>Note:</b> '
                     f"{esc(ORACLE_NOTE)}.</p>")
    ev_path = run_dir / "eval.json"
    if ev_path.exists():
        ev = json.loads(ev_path.read_text())
        rows = "".join(
            f"<tr><td>{s}</td><td>{ev[s]['miou']:.3f}</td><td>{ev[s]['macc']:.3f}</td></tr>"
            for s in ("fused", "distilled", "ensemble") if s in ev
        )
        parts.append(f"<h2>Evaluation</h2><table><tr><th>source</th><th>mIoU</th><th>mAcc</th></tr>{rows}</table>")
        if "coverage" in ev:
            parts.append(f"<p>Points seen by at least one view: {ev['coverage']:.1%}</p>")
    parts.append("<h2>Views</h2>" + img("plots/views.png", "contact sheet of the rendered views"))
    parts.append("<h2>Masks</h2>" + img("plots/masks.png", "teacher masks, coloured by a PCA of their embeddings"))
    parts.append("<h2>Queries</h2>")
    for q in queries:
        parts.append(img(q["png"], f"\u201c{q['query']}\u201d: {q['hits']:,} points with relevancy > 0.5"))
    parts.append("<h2>Confusion matrix</h2>" + img("plots/confusion.png", "confusion matrix"))
    curve = loss_curve_png(run_dir)
    if curve is not None:
        parts.append("<h2>Student training</h2>" + img(curve[0], curve[1]))
    t_path = run_dir / "timings.json"
    if t_path.exists():
        t = json.loads(t_path.read_text())
        rows = "".join(f"<tr><td>{esc(k)}</td><td>{v.get('seconds', 0):.2f}</td><td>{v.get('peak_rss_mb') or 0:.0f}</td></tr>"
                       for k, v in t.items())
        parts.append(f"<h2>Timings</h2><table><tr><th>stage</th><th>seconds</th><th>peak RSS MiB</th></tr>{rows}</table>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}img{max-width:100%;"
             "border:1px solid #ccc}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 10px}")
    doc = f"<!doctype html><html><head><meta charset='utf-8'><title>scene-kd report</title><style>{style}</style></head><body>{''.join(parts)}</body></html>"
    out = run_dir / "report.html"
    with atomic_path(out) as tmp:
        tmp.write_text(doc)
    return out
