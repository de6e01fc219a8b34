"""Student training step on CUDA: our pure-torch sparse conv vs. spconv, same network, same weights.

~200k active voxels (random occupancy in a 400 x 400 x 100 grid), the default student (channels 32-64-96-128,
512-d output), one forward + backward of a mean-square loss, timed over 3 steps after 3 warm-ups. Also checks
that both give the same output in eval mode. Needs CUDA and spconv (``pip install -e '.[gpu]'``); on a machine
without them it reports why it skipped and measures nothing.
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def run(full: bool = False) -> dict:
    from scene_kd.distill.sparseconv import SparseTensor
    from scene_kd.distill.spconv_backend import SpconvStudentUNet, spconv_available
    from scene_kd.distill.unet import StudentSpec, StudentUNet

    if not spconv_available():
        return {"skipped": "needs CUDA and spconv"}
    g = torch.Generator().manual_seed(3)
    coords = (torch.rand(1, 400, 400, 100, generator=g) < 0.0125).nonzero().to(torch.int64).cuda()
    spec = StudentSpec(out_dim=512, voxel_size=0.2, height_scale=4.0, ground_cell=16.0, use_rgb=True,
                       use_intensity=False)
    torch.manual_seed(0)
    ref = StudentUNet(spec).cuda()
    fast = SpconvStudentUNet.from_torch(ref)
    feats = torch.randn(len(coords), spec.in_dim, device="cuda")
    out = {"voxels": len(coords), "device": torch.cuda.get_device_name(0)}
    with torch.no_grad():
        a = ref.eval()(SparseTensor(coords, feats))
        b = fast.eval()(SparseTensor(coords, feats))
    out["eval_max_abs_diff"] = float((a - b).abs().max())
    out["eval_max_abs_output"] = float(a.abs().max())
    for name, model in (("torch", ref.train()), ("spconv", fast.train())):
        for i in range(6):
            if i == 3:
                torch.cuda.synchronize()
                t = time.perf_counter()
            model(SparseTensor(coords, feats)).square().mean().backward()
        torch.cuda.synchronize()
        out[f"{name}_train_step_ms"] = (time.perf_counter() - t) / 3 * 1e3
    out["spconv_speedup"] = out["torch_train_step_ms"] / out["spconv_train_step_ms"]
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="(same size either way)")
    print(json.dumps(run(full=parser.parse_args().full), indent=2))
