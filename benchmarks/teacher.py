"""Teacher throughput: masks/s and crops/s for clip-sam and clip-grid (random-init weights, real architectures),
batched crops vs one crop per forward in the same run, and the share of teacher time spent outside the models.

Default (small, CPU-friendly): 2 views of 96x128, CLIP input 64 px, SAM input 256, 4x4 SAM points.
``--full``: 384x512 renders, CLIP at its native 224 px, SAM at 1024 with 16x16 points.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def synthetic_renders(n: int, h: int, w: int, seed: int = 0):
    """Rectangles of random colour and depth on a ground plane (rgb, depth, ids, labels)."""
    from scene_kd.render.types import Render
    from scene_kd.scene.types import Camera

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        rgb = np.full((h, w, 3), 110, np.uint8)
        depth = np.full((h, w), 20.0, np.float32)
        labels = np.full((h, w), 2, np.int32)
        for k in range(12):
            y0, x0 = rng.integers(0, h - 8), rng.integers(0, w - 8)
            y1, x1 = y0 + rng.integers(6, h // 3), x0 + rng.integers(6, w // 3)
            rgb[y0:y1, x0:x1] = rng.integers(0, 255, 3)
            depth[y0:y1, x0:x1] = rng.uniform(8, 18)
            labels[y0:y1, x0:x1] = 3 + k % 4
        rgb = np.clip(rgb + rng.integers(-8, 8, rgb.shape), 0, 255).astype(np.uint8)
        ids = np.arange(h * w, dtype=np.int32).reshape(h, w)
        cam = Camera(K=np.array([[w, 0, w / 2], [0, w, h / 2], [0, 0, 1.0]]), world_to_cam=np.eye(4), width=w, height=h)
        out.append(Render(camera=cam, rgb=rgb, depth=depth, ids=ids, labels=labels))
    return out


def _measure(teacher, renders) -> dict:
    bundles = [b for b in teacher._models() if b is not None]
    before = [dict(b.stats) for b in bundles]
    t0 = time.perf_counter()
    vms = teacher.encode_views(renders)
    total = time.perf_counter() - t0
    model = sum(b.stats["seconds"] - s["seconds"] for b, s in zip(bundles, before, strict=True))
    crops = sum(b.stats.get("crops", 0) - s.get("crops", 0) for b, s in zip(bundles, before, strict=True))
    clip = teacher.bundle
    clip_s = clip.stats["seconds"] - before[bundles.index(clip)]["seconds"]
    masks = sum(v.num_masks for v in vms)
    return {"seconds": total, "masks": masks, "crops": crops, "masks_per_s": masks / total,
            "crops_per_s": crops / clip_s if clip_s > 0 else float("nan"), "outside_share": 1 - model / total}


def run(full: bool = False, device: str = "auto") -> dict:
    import torch

    from scene_kd.teachers.factory import create_teacher

    torch.manual_seed(0)
    n, h, w = (8, 384, 512) if full else (2, 96, 128)
    renders = synthetic_renders(n, h, w)
    common = {"weights": "random", "device": device, "clip_image_size": None if full else 64}
    sam = {"sam_image_size": 1024 if full else 256, "sam_points_per_side": 16 if full else 4,
           "sam_pred_iou_thresh": 0.0, "sam_stability_thresh": 0.0, "min_mask_area": 16}
    res: dict = {"views": n, "height": h, "width": w, "torch_threads": torch.get_num_threads()}
    for name, extra in (("clip-grid", {"grid_scales": (0.5, 0.25, 0.125) if full else (0.5, 0.25)}), ("clip-sam", sam)):
        batched = create_teacher(name, crop_batch_size=64, **common, **extra)
        single = create_teacher(name, crop_batch_size=1, **common, **extra)
        batched.load()
        single.load()
        res["device"] = batched.device
        batched.encode_views(renders[:1])  # warm-up (allocator, kernels)
        b = _measure(batched, renders)
        s = _measure(single, renders[: max(1, n // 2)])
        key = name.replace("-", "_")
        res.update({f"{key}.masks_per_s": round(b["masks_per_s"], 2), f"{key}.masks": b["masks"],
                    f"{key}.crops_per_s_batched": round(b["crops_per_s"], 2),
                    f"{key}.crops_per_s_single": round(s["crops_per_s"], 2),
                    f"{key}.batched_over_single": round(b["crops_per_s"] / s["crops_per_s"], 2),
                    f"{key}.outside_model_share": round(b["outside_share"], 3),
                    f"{key}.seconds": round(b["seconds"], 2)})
    return res


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--full", action="store_true")
    ap.add_argument("--device", default="auto")
    a = ap.parse_args()
    print(json.dumps(run(full=a.full, device=a.device), indent=2))
