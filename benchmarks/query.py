"""Query speed: LERF relevancy over a float16 feature field vs a plain float32 numpy matmul, same inputs.

Field: N points x D = 512 random features stored float16 (as FeatureField stores them); the text encoder is
open_clip ViT-B-16's text tower with seeded random weights (same architecture and cost as the real one; no
download). Timed separately:
- text encoding of the query + 4 negatives (cold, i.e. not in the cache) and a cache hit;
- ``scene_kd.query.relevancy`` with the text embedding cached (median of repeats; the one-off preparation
  of inverse row norms / the bf16 copy is reported as ``prepare_s``), for precision auto and float32;
- the baseline: ``np.float32`` features (already L2-normalised, a favour to it) @ text.T, then the same
  LERF formula in numpy;
- the viewer's query update (relevancy + recolouring the displayed points, no browser attached).
Accuracy: max |relevancy - float64 reference| on a 20k-point sample.

Default: N = 200k (< 90 s here); ``--full``: N = 1M (issue target: relevancy <= 50 ms).
"""

from __future__ import annotations

import contextlib
import json
import statistics
import sys
import time

import numpy as np
import torch


def make_field(n: int, dim: int = 512, seed: int = 0, encoder_id: str = "open_clip:ViT-B-16:random"):
    """A FeatureField with float16 features [n, dim] of random directions and norms in [0.5, 1.5]."""
    from scene_kd.field import FeatureField

    g = torch.Generator().manual_seed(seed)
    feats = torch.empty((n, dim), dtype=torch.float16)
    for s in range(0, n, 65536):
        x = torch.randn((min(65536, n - s), dim), generator=g)
        x *= (0.5 + torch.rand((len(x), 1), generator=g)) / x.norm(dim=1, keepdim=True)
        feats[s : s + len(x)] = x.half()
    rng = np.random.default_rng(seed)
    return FeatureField(positions=rng.uniform(0, 100, (n, 3)).astype(np.float32), origin=np.zeros(3),
                        features={"fused": feats}, teacher="bench", text_encoder=encoder_id, dim=dim,
                        rgb=rng.integers(0, 255, (n, 3)).astype(np.uint8))


def timed(fn, repeats: int) -> tuple[float, float]:
    """(median, min) seconds of ``repeats`` calls after one warm-up call."""
    fn()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts), min(ts)


def run(full: bool = False) -> dict:
    from scene_kd.query.config import DEFAULT_NEGATIVES
    from scene_kd.query.relevancy import relevancy
    from scene_kd.query.similarity import cpu_has_fast_bf16, embed_prompts, load_encoder
    from scene_kd.teachers.text import load_text_encoder

    n, dim, repeats = (1_000_000 if full else 200_000), 512, 15
    query = "parked car"
    out: dict = {"points": n, "dim": dim, "threads": torch.get_num_threads(), "cpu_fast_bf16": cpu_has_fast_bf16()}

    t = time.perf_counter()
    encoder = load_text_encoder("open_clip:ViT-B-16:random")
    out["text_encoder_load_s"] = round(time.perf_counter() - t, 3)
    field = make_field(n, dim, encoder_id=encoder.id)
    load_encoder(field, encoder)

    # text encoding, cold (prompts never seen) and cached
    cold = []
    for k in range(3):
        prompts = [f"{query} {k}", *(f"{neg} {k}" for neg in DEFAULT_NEGATIVES)]
        t = time.perf_counter()
        embed_prompts(encoder, prompts)
        cold.append(time.perf_counter() - t)
    out["text_encode_5_prompts_ms"] = round(1000 * statistics.median(cold), 2)
    embed_prompts(encoder, [query, *DEFAULT_NEGATIVES])
    med, _ = timed(lambda: embed_prompts(encoder, [query, *DEFAULT_NEGATIVES]), repeats)
    out["text_cache_hit_ms"] = round(1000 * med, 3)

    # ours: first call prepares (inverse norms, bf16 copy), later calls are the per-query cost
    t = time.perf_counter()
    rel = relevancy(field, query, encoder=encoder)
    out["prepare_s"] = round(time.perf_counter() - t, 3)
    med, best = timed(lambda: relevancy(field, query, encoder=encoder), repeats)
    out["relevancy_ms"], out["relevancy_min_ms"] = round(1000 * med, 2), round(1000 * best, 2)
    med32, _ = timed(lambda: relevancy(field, query, encoder=encoder, precision="float32"), max(3, repeats // 3))
    out["relevancy_float32_ms"] = round(1000 * med32, 2)

    # baseline: plain float32 numpy, features pre-normalised
    text = embed_prompts(encoder, [query, *DEFAULT_NEGATIVES]).numpy()
    f32 = field.dense("fused").numpy()
    f32 /= np.linalg.norm(f32, axis=1, keepdims=True)

    def baseline() -> np.ndarray:
        s = f32 @ text.T
        return 1.0 / (1.0 + np.exp(-10.0 * (s[:, 0] - s[:, 1:].max(axis=1))))

    med_b, best_b = timed(baseline, max(3, repeats // 3))
    out["numpy_float32_ms"], out["numpy_float32_min_ms"] = round(1000 * med_b, 2), round(1000 * best_b, 2)
    out["speedup_vs_numpy"] = round(med_b / med, 2)
    out["speedup_float32_path_vs_numpy"] = round(med_b / med32, 2)

    sample = np.random.default_rng(1).choice(n, 20000, replace=False)
    f64 = field.features["fused"].rows(torch.as_tensor(sample)).double().numpy()
    f64 /= np.linalg.norm(f64, axis=1, keepdims=True)
    s64 = f64 @ text.astype(np.float64).T
    ref = 1.0 / (1.0 + np.exp(-10.0 * (s64[:, 0] - s64[:, 1:].max(axis=1))))
    out["max_abs_error"] = float(np.abs(rel.numpy()[sample] - ref).max())
    out["max_abs_error_float32_path"] = float(
        np.abs(relevancy(field, query, encoder=encoder, precision="float32").numpy()[sample] - ref).max())
    out["max_abs_error_numpy"] = float(np.abs(baseline()[sample] - ref).max())
    f32 = None  # free 4 bytes x N x D before the viewer part

    # the viewer's update for one query (relevancy + colours for up to 500k displayed points)
    import socket

    from scene_kd.apps.viewer.app import ViewerApp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with contextlib.redirect_stdout(sys.stderr):  # viser prints a banner; stdout is for the JSON
        app = ViewerApp(".", port=port, field=field, encoder=encoder).start(background_load=False)
    try:
        words = iter(["building", "tree", "road", "car", "water", "roof", "pole", "grass", "bench", "wall", "sign",
                      "fence", "bus", "truck", "bike", "lamp", "door", "window", "bridge", "river"])
        updates = []
        for _ in range(8):
            word = next(words)
            app.session.embed([word])  # in the viewer session's cache, as after the first keystrokes
            t = time.perf_counter()
            app.run_query(word)
            updates.append(time.perf_counter() - t)
        out["viewer_query_update_ms"] = round(1000 * statistics.median(updates), 1)
        out["viewer_points_shown"] = int(len(app.display_index))
    finally:
        with contextlib.redirect_stdout(sys.stderr):
            app.stop()
    out["target_relevancy_ms"] = 50.0
    out["meets_target"] = bool(full and out["relevancy_ms"] <= 50.0) if full else None
    return out


if __name__ == "__main__":
    print(json.dumps(run(full="--full" in sys.argv[1:]), indent=2))
