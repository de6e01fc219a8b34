"""Features at tile scale: relevancy through the compact stores vs dense float16 rows, same features, one run.

The fused features of a point cloud are stored as a mask mixture (sparse per-point weights over the mask
embeddings, scene_kd/feature_store.py) and the student's as low-rank codes; this measures what that buys at
N points x 512-d against the dense float16 [N, 512] rows a field used to hold (and still holds for Gaussians).

Synthetic but shaped like a fused 1 km^2 tile: M = N / 100 masks (unit 512-d embeddings, float16-rounded),
4 granularities, each point with 0-10 weights per granularity (mean 5, ~20 per point), rows normalised as
fusion leaves them. The dense float16 rows are the same features, decoded. Timed (median of 3, after one
warm-up): relevancy of a query against 4 negatives (LERF's formula, text embeddings given) through
``scene_kd.query.similarity.raw_dots``: the mask mixture, the dense float16 rows (precision auto = float32 on
a CPU without bf16, and float16), and rank-64 codes vs their dense float16 decoding. Memory: bytes each store
holds, and the peak RSS growth while one query runs (sampled every 5 ms). "auto" precision is bfloat16 on
CPUs with AVX512-BF16/AMX (after a one-off bf16 copy of the rows), float32 elsewhere; ``cpu_fast_bf16`` says
which this machine is. Accuracy: max |relevancy - dense
float32 relevancy| over all N points (the float32 reference is computed chunk by chunk from the decoded rows).

    .venv/bin/python benchmarks/features.py [--full]      (default N = 1M; --full: N = 10M, ~14 GB RAM)
"""

from __future__ import annotations

import json
import statistics
import sys
import threading
import time
from pathlib import Path

import torch


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


class PeakRSS:
    """Peak RSS growth (MiB) over a block, sampled every 5 ms by a thread."""

    def __enter__(self):
        self.base = self.peak = rss_mib()
        self._stop = False
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop:
            self.peak = max(self.peak, rss_mib())
            time.sleep(0.005)

    def __exit__(self, *exc):
        self._stop = True
        self._t.join()
        self.peak = max(self.peak, rss_mib())
        self.growth = self.peak - self.base


def make_mixture(n: int, dim: int = 512, seed: int = 0):
    from scene_kd.feature_store import MaskMixture
    from scene_kd.lift.mixture import _scale_rows

    g = torch.Generator().manual_seed(seed)
    m = max(1000, n // 100)
    bank = torch.nn.functional.normalize(torch.randn(m, dim, generator=g), dim=1).half().float()
    parts = []
    for _ in range(4):
        lengths = torch.randint(0, 11, (n,), generator=g, dtype=torch.int32)
        crow = torch.zeros(n + 1, dtype=torch.int64)
        torch.cumsum(lengths, 0, out=crow[1:])
        nnz = int(crow[-1])
        # masks are local: a point's masks come from the views around it (ids near its own position)
        rows = torch.repeat_interleave(torch.arange(n, dtype=torch.int64), lengths.long())
        col = ((rows * m) // n + torch.randint(-50, 50, (nnz,), generator=g)).clamp(0, m - 1).to(torch.int32)
        del rows
        parts.append((crow.to(torch.int32), col, torch.rand(nnz, generator=g)))
    mix = MaskMixture(parts, bank)
    inv = mix.inv_norm()
    for crow, _, val in parts:
        _scale_rows(crow, val, inv)
    mix._inv_norm = (inv > 0).float()
    return mix


def relevancy(field, source: str, text: torch.Tensor, precision: str = "auto") -> torch.Tensor:
    from scene_kd.query.similarity import raw_dots

    dots, inv = raw_dots(field, source, text, precision=precision)
    return torch.sigmoid((dots[0] - dots[1:].amax(0)) * inv * 10.0)


def reference(store, text: torch.Tensor) -> torch.Tensor:
    """Dense float32 relevancy, decoded chunk by chunk."""
    out = torch.empty(store.n)
    for s in range(0, store.n, 65536):
        f = store.block(s, min(store.n, s + 65536))
        d = (f @ text.T) / f.norm(dim=1, keepdim=True).clamp_min(1e-30)
        d[f.norm(dim=1) == 0] = 0
        out[s : s + len(f)] = torch.sigmoid((d[:, 0] - d[:, 1:].amax(1)) * 10.0)
    return out


def timed(fn, repeats: int = 3):
    fn()  # warm-up (and any one-off preparation)
    times, peak = [], 0.0
    for _ in range(repeats):
        with PeakRSS() as p:
            t0 = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - t0)
        peak = max(peak, p.growth)
        del out
    return statistics.median(times), peak


def run(full: bool = False) -> dict:
    import numpy as np

    from scene_kd.feature_store import DenseRows, LowRank, principal_basis
    from scene_kd.field import FeatureField

    n, dim = (10_000_000 if full else 1_000_000), 512
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    mix = make_mixture(n, dim)
    build_s = time.perf_counter() - t0
    text = torch.nn.functional.normalize(torch.randn(5, dim, generator=torch.Generator().manual_seed(9)), dim=1)
    kw = dict(positions=np.zeros((n, 3), np.float32), origin=np.zeros(3), teacher="bench", text_encoder="bench", dim=dim)
    from scene_kd.query.similarity import cpu_has_fast_bf16

    out: dict = {"points": n, "dim": dim, "masks": mix.bank.shape[0], "weights_per_point": mix.nnz() / n,
                 "build_s": round(build_s, 1), "cpu_fast_bf16": cpu_has_fast_bf16(), "load_before": _load()}

    ref = reference(mix, text)
    f_mix = FeatureField(features={"fused": mix}, **kw)
    got = relevancy(f_mix, "fused", text)
    out["mixture"] = {"store_mib": mix.nbytes() / 2**20, "max_abs_err_vs_dense_f32": float((got - ref).abs().max())}
    out["mixture"]["seconds"], out["mixture"]["query_peak_rss_growth_mib"] = timed(lambda: relevancy(f_mix, "fused", text))
    del got

    dense16 = torch.empty(n, dim, dtype=torch.float16)
    for s in range(0, n, 65536):
        dense16[s : s + 65536] = mix.block(s, min(n, s + 65536)).half()
    f_dense = FeatureField(features={"fused": dense16}, **kw)
    for prec in ("auto", "float16"):
        got = relevancy(f_dense, "fused", text, prec)
        row = {"store_mib": dense16.numel() * 2 / 2**20, "max_abs_err_vs_dense_f32": float((got - ref).abs().max())}
        del got
        row["seconds"], row["query_peak_rss_growth_mib"] = timed(lambda p=prec: relevancy(f_dense, "fused", text, p))
        out[f"dense_f16_{prec}"] = row
    out["mixture_speedup_vs_dense_f16_auto"] = out["dense_f16_auto"]["seconds"] / out["mixture"]["seconds"]
    f_dense = dense16 = None  # free the dense rows before the next part

    # distilled: rank-64 codes vs their dense float16 decoding
    basis = principal_basis(mix.bank, 64)
    codes = mix.project(basis).half()
    low = LowRank(codes, basis)
    f_low = FeatureField(features={"distilled": low}, **kw)
    ref = reference(low, text)
    got = relevancy(f_low, "distilled", text)
    out["low_rank_64"] = {"store_mib": low.nbytes() / 2**20, "max_abs_err_vs_dense_f32": float((got - ref).abs().max())}
    out["low_rank_64"]["seconds"], out["low_rank_64"]["query_peak_rss_growth_mib"] = timed(
        lambda: relevancy(f_low, "distilled", text))
    del got
    decoded = torch.empty(n, dim, dtype=torch.float16)
    for s in range(0, n, 65536):
        decoded[s : s + 65536] = low.block(s, min(n, s + 65536)).half()
    f_dec = FeatureField(features={"distilled": DenseRows(decoded)}, **kw)
    out["low_rank_decoded_dense_f16_auto"] = {"store_mib": decoded.numel() * 2 / 2**20}
    out["low_rank_decoded_dense_f16_auto"]["seconds"], _ = timed(lambda: relevancy(f_dec, "distilled", text))
    out["low_rank_speedup_vs_dense_f16_auto"] = out["low_rank_decoded_dense_f16_auto"]["seconds"] / out["low_rank_64"]["seconds"]
    out["load_after"] = _load()
    return out


def _load() -> str:
    """The 1, 5 and 15 minute load averages (other work on the machine skews absolute timings)."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3]) if Path("/proc/loadavg").exists() else ""


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    res = run(full="--full" in sys.argv)
    print(json.dumps(res, indent=1))
