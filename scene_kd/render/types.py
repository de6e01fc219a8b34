"""What a render stage produces, and its on-disk format.

``RUN/views.json``: {"scene_kind", "preset", "cameras": [Camera.to_json()...], "levels": [...],
"coverage": {...}}.  Per view index i (4 digits): ``RUN/renders/NNNN.rgb.png`` and ``RUN/renders/NNNN.npz``
with the arrays of :class:`Render` (absent optional arrays are simply not stored).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from scene_kd.errors import RunStateError
from scene_kd.runio import atomic_path, read_json
from scene_kd.scene.types import Camera

_ARRAYS = ("depth", "ids", "labels", "instances", "alpha", "topk_ids", "topk_weights")


@dataclass
class Render:
    """One rendered view.

    rgb: [H, W, 3] uint8.   depth: [H, W] float32 camera-z in scene units, +inf where empty.
    ids: [H, W] int32 id of the nearest point / top-weight Gaussian, -1 where empty.
    labels / instances: [H, W] int32 ground-truth class / instance of that id (-1 none), when the scene has them.
    alpha: [H, W] float32 accumulated opacity (Gaussians).
    topk_ids / topk_weights: [H, W, K] int32 / float32 the K Gaussians with the largest blend weights per pixel
    (-1 / 0 padding), for training-free lifting.
    """

    camera: Camera
    rgb: np.ndarray
    depth: np.ndarray
    ids: np.ndarray
    labels: np.ndarray | None = None
    instances: np.ndarray | None = None
    alpha: np.ndarray | None = None
    topk_ids: np.ndarray | None = None
    topk_weights: np.ndarray | None = None

    @property
    def level(self) -> int:
        return self.camera.level


def render_paths(run_dir: str | Path, index: int) -> tuple[Path, Path]:
    d = Path(run_dir) / "renders"
    return d / f"{index:04d}.rgb.png", d / f"{index:04d}.npz"


def save_render(run_dir: str | Path, index: int, render: Render) -> None:
    """Write one view's PNG and NPZ atomically."""
    from PIL import Image

    png, npz = render_paths(run_dir, index)
    with atomic_path(png) as tmp:
        Image.fromarray(render.rgb).save(tmp, format="PNG")
    arrays = {k: getattr(render, k) for k in _ARRAYS if getattr(render, k) is not None}
    with atomic_path(npz) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)


def load_render(run_dir: str | Path, index: int, camera: Camera) -> Render:
    from PIL import Image

    png, npz = render_paths(run_dir, index)
    if not npz.exists() or not png.exists():
        raise RunStateError(f"missing render {index:04d}; run `scene-kd render` first", path=run_dir)
    with np.load(npz) as z:
        arrays = {k: z[k] for k in z.files}
    rgb = np.asarray(Image.open(png).convert("RGB"))
    return Render(camera=camera, rgb=rgb, **arrays)


def load_cameras(run_dir: str | Path) -> list[Camera]:
    views = read_json(Path(run_dir) / "views.json")
    return [Camera.from_json(c) for c in views["cameras"]]


def iter_renders(run_dir: str | Path):
    """Yield (index, Render) for every view of a run, in order, one at a time (bounded memory)."""
    for i, cam in enumerate(load_cameras(run_dir)):
        yield i, load_render(run_dir, i, cam)


assert {f.name for f in fields(Render)} >= set(_ARRAYS)
