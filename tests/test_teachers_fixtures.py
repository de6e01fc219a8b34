"""Small hand-made labelled renders (save_render + views.json + scene.json) for the teacher tests."""

from pathlib import Path

import numpy as np

from scene_kd.render.types import Render, save_render
from scene_kd.runio import write_json
from scene_kd.scene.types import Camera

NAMES = {2: "ground", 6: "building", 5: "high vegetation", 11: "road", 20: "car", 1: "unclassified"}

def make_render(seed, h=48, w=64):
    rng = np.random.default_rng(seed)
    labels = np.full((h, w), 2, np.int32)
    labels[h * 2 // 3 :, :] = 11
    inst = np.full((h, w), -1, np.int32)
    x0 = rng.integers(0, w // 3)
    labels[5:20, x0 : x0 + 20] = 6
    for k in range(3):
        cx = rng.integers(4, w - 10)
        labels[h - 10 : h - 5, cx : cx + 6] = 20
        inst[h - 10 : h - 5, cx : cx + 6] = k
    labels[2:8, w - 12 : w - 4] = 5
    labels[0, 0] = 1
    ids = np.arange(h * w, dtype=np.int32).reshape(h, w)
    ids[rng.random((h, w)) < 0.02] = -1
    labels[ids < 0] = -1
    palette = {2: (120, 100, 80), 11: (60, 60, 60), 6: (200, 80, 70), 20: (30, 30, 220), 5: (40, 160, 40), 1: (0, 0, 0), -1: (255, 255, 255)}
    rgb = np.zeros((h, w, 3), np.uint8)
    for c, col in palette.items():
        rgb[labels == c] = col
    depth = np.where(ids >= 0, 10 + labels.clip(0) * 0.1, np.inf).astype(np.float32)
    K = np.array([[w, 0, w / 2], [0, w, h / 2], [0, 0, 1.0]])
    cam = Camera(K=K, world_to_cam=np.eye(4), width=w, height=h, level=seed % 2, name=f"v{seed}")
    return Render(camera=cam, rgb=rgb, depth=depth, ids=ids, labels=labels, instances=inst)

def make_run(run, n=4, h=48, w=64):
    run = Path(run)
    renders = [make_render(i, h, w) for i in range(n)]
    for i, r in enumerate(renders):
        save_render(run, i, r)
    write_json(run / "views.json", {"scene_kind": "points", "preset": "test", "cameras": [r.camera.to_json() for r in renders], "levels": [0, 1], "coverage": {}})
    write_json(run / "scene.json", {"kind": "points", "count": h * w, "origin": [0, 0, 0], "label_names": {str(k): v for k, v in NAMES.items()}, "source": None, "source_hash": "", "format": None})
    return renders


def busy_render(seed, h=64, w=96, cars=24):
    """A render with many car instances (each its own mask) on road/ground/building, for rate statistics."""
    rng = np.random.default_rng(1000 + seed)
    labels = np.full((h, w), 2, np.int32)
    labels[h // 2 :, :] = 11
    labels[2:14, 10 : 30 + rng.integers(10)] = 6
    labels[2 : 10 + rng.integers(5), 50:80] = 5
    inst = np.full((h, w), -1, np.int32)
    for k in range(cars):
        r, c = divmod(k, 8)
        y, x = h // 2 + 2 + 8 * r + rng.integers(2), 1 + 12 * c + rng.integers(3)
        labels[y : y + 5, x : x + 8] = 20
        inst[y : y + 5, x : x + 8] = k
    ids = np.arange(h * w, dtype=np.int32).reshape(h, w)
    rgb = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    depth = np.full((h, w), 10.0, np.float32)
    K = np.array([[w, 0, w / 2], [0, w, h / 2], [0, 0, 1.0]])
    cam = Camera(K=K, world_to_cam=np.eye(4), width=w, height=h, level=0)
    return Render(camera=cam, rgb=rgb, depth=depth, ids=ids, labels=labels, instances=inst)
