"""Sparse conv benchmark: one 3x3x3 submanifold conv layer, forward + backward, on surface-like active voxels.

Side by side in one run:
  * ours: pure-torch gather-GEMM-scatter (custom autograd Function), kernel map build timed separately;
  * ours_plain_autograd: the same math in plain autograd ops (the reference path);
  * dense: ``torch.nn.functional.conv3d`` on the dense grid holding the same voxels, when it fits in memory
    (the dense result is also checked against ours on the active sites);
  * spconv: ``spconv.pytorch.SubMConv3d`` when CUDA and spconv are present;
  * student training throughput (points/s) of the default DistillConfig (1 CPU thread) on make_urban.

Default: 50k active voxels, 32 -> 32 channels. ``--full``: 200k voxels. On CUDA everything also runs on the GPU.
"""

from __future__ import annotations

import json
import math
import sys
import time
from typing import Any

import torch


def surface_voxels(n_voxels: int, seed: int = 0) -> torch.Tensor:
    """[V, 4] (batch 0, x, y, z) int64: a wavy 2.5D surface (like a LiDAR tile), exactly ``n_voxels`` sites."""
    from scene_kd.distill.sparseconv import voxelize

    g = torch.Generator().manual_seed(seed)
    side = math.sqrt(n_voxels) * 1.05
    xy = torch.rand(n_voxels * 3, 2, generator=g) * side
    z = 6 * torch.sin(xy[:, 0] / 9) + 4 * torch.sin(xy[:, 1] / 13) + 8
    vox, _ = voxelize(torch.cat([xy, z[:, None]], dim=1), 1.0)
    vox = vox[torch.randperm(len(vox), generator=g)[:n_voxels]]
    vox = vox - vox.min(0).values
    return torch.cat([torch.zeros(len(vox), 1, dtype=torch.int64), vox], dim=1)


def _time(fn, repeat: int, sync) -> float:
    fn()
    sync()
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t)
    return best


def conv_layer(n_voxels: int, channels: int, device: str, repeat: int, dense_limit_bytes: float) -> dict[str, Any]:
    import torch.nn.functional as F

    from scene_kd.distill.sparseconv import (
        build_kernel_map,
        from_dense,
        sparse_conv,
        sparse_conv_reference,
        to_dense,
        weight_from_conv3d,
    )

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    coords = surface_voxels(n_voxels).to(device)
    shape = tuple((coords[:, 1:].max(0).values + 1).tolist())
    g = torch.Generator().manual_seed(1)
    feats = torch.randn(len(coords), channels, generator=g).to(device)
    w_dense = (torch.randn(channels, channels, 3, 3, 3, generator=g) / math.sqrt(27 * channels)).to(device)
    w = weight_from_conv3d(w_dense).contiguous()
    res: dict[str, Any] = {"device": device, "active_voxels": len(coords), "channels": channels,
                           "grid": list(shape), "occupancy": len(coords) / math.prod(shape)}

    kmap_holder = {}

    def build():
        kmap_holder["k"] = build_kernel_map(coords, coords, 3)

    res["kernel_map_s"] = _time(build, repeat, sync)
    kmap = kmap_holder["k"]
    res["pairs_per_voxel"] = kmap.pair_count / len(coords)

    def step(fn):
        def run():
            x = feats.clone().requires_grad_(True)
            ww = w.clone().requires_grad_(True)
            fn(x, ww, kmap).square().sum().backward()
        return run

    res["ours_fwd_bwd_s"] = _time(step(sparse_conv), repeat, sync)
    if device == "cpu" and torch.get_num_threads() > 1:
        from scene_kd.distill.train import cpu_threads

        with cpu_threads(1):
            res["ours_fwd_bwd_1thread_s"] = _time(step(sparse_conv), repeat, sync)
    res["ours_plain_autograd_fwd_bwd_s"] = _time(step(sparse_conv_reference), repeat, sync)
    res["ours_incl_map_s"] = res["ours_fwd_bwd_s"] + res["kernel_map_s"]

    dense_bytes = 4 * channels * math.prod(shape) * 6  # input, output, grads, workspace
    res["dense_bytes_estimate"] = dense_bytes
    if dense_bytes <= dense_limit_bytes:
        def dense_run():
            x = to_dense(coords[:, :], feats, shape).requires_grad_(True)
            ww = w_dense.clone().requires_grad_(True)
            out = F.conv3d(x, ww, padding=1)
            out.square().sum().backward()
            dense_run.out = out

        res["dense_fwd_bwd_s"] = _time(dense_run, repeat, sync)
        with torch.no_grad():
            ours = sparse_conv(feats, w, kmap)
            dense_at = from_dense(F.conv3d(to_dense(coords, feats, shape), w_dense, padding=1), coords)
        res["dense_max_abs_diff"] = float((ours - dense_at).abs().max())
        res["dense_over_ours"] = res["dense_fwd_bwd_s"] / res["ours_fwd_bwd_s"]
    else:
        res["dense_fwd_bwd_s"] = None
        res["dense_skipped"] = f"dense grid needs ~{dense_bytes / 2**30:.1f} GiB"
    res["plain_autograd_over_ours"] = res["ours_plain_autograd_fwd_bwd_s"] / res["ours_fwd_bwd_s"]

    if device == "cuda":
        try:
            import spconv.pytorch as sp
        except Exception as e:  # not installed
            res["spconv"] = f"unavailable ({type(e).__name__})"
        else:
            conv = sp.SubMConv3d(channels, channels, 3, padding=1, bias=False).to(device)
            idx = coords.to(torch.int32).contiguous()

            def sp_run():
                x = feats.clone().requires_grad_(True)
                t = sp.SparseConvTensor(x, idx, list(shape), 1)
                conv(t).features.square().sum().backward()

            res["spconv_fwd_bwd_s"] = _time(sp_run, repeat, sync)
            res["ours_over_spconv"] = res["ours_fwd_bwd_s"] / res["spconv_fwd_bwd_s"]
    return res


def student_throughput(points: int, device: str) -> dict[str, Any]:
    """Train the default student for a few steps on a synthetic labelled scene; points/s and s/step."""
    import dataclasses

    import numpy as np

    from scene_kd.distill.config import DistillConfig
    from scene_kd.distill.train import train_student

    try:
        from scene_kd.scene.synthetic import make_urban

        pc = make_urban(points, seed=0)
        xyz, rgb, labels = pc.xyz, pc.rgb, pc.labels
    except ImportError:
        rng = np.random.default_rng(0)
        xyz = np.c_[rng.uniform(0, 100, (points, 2)), rng.uniform(0, 3, points)].astype(np.float32)
        rgb, labels = None, (xyz[:, 0] // 20).astype(int)
    n_cls = int(labels.max()) + 1
    rng = np.random.default_rng(0)
    classes = np.linalg.qr(rng.normal(size=(64, 64)))[0][:n_cls].astype(np.float32)
    fused = classes[labels]
    cfg = dataclasses.replace(DistillConfig(), epochs=1, steps_per_epoch=6, device=device)
    t = time.perf_counter()
    _, hist = train_student(xyz, fused, np.ones(len(xyz), np.int32), rgb, cfg, progress=False)
    total = time.perf_counter() - t
    return {"points": len(xyz), "steps": hist["steps"], "train_points_per_s": hist["points_per_second"],
            "s_per_step": hist["seconds"][0] / hist["steps"], "total_s_incl_setup": total,
            "voxel_size": hist["spec"]["voxel_size"]}


def run(full: bool = False) -> dict[str, Any]:
    n_voxels = 200_000 if full else 50_000
    out: dict[str, Any] = {"torch_threads": torch.get_num_threads()}
    out["conv_cpu"] = conv_layer(n_voxels, 32, "cpu", repeat=3, dense_limit_bytes=6 * 2**30)
    if torch.cuda.is_available():
        out["conv_cuda"] = conv_layer(n_voxels, 32, "cuda", repeat=5, dense_limit_bytes=20 * 2**30)
    out["student_cpu"] = student_throughput(200_000 if full else 50_000, "cpu")
    if torch.cuda.is_available():
        out["student_cuda"] = student_throughput(200_000 if full else 50_000, "cuda")
    return out


if __name__ == "__main__":
    print(json.dumps(run(full="--full" in sys.argv[1:]), indent=2))
