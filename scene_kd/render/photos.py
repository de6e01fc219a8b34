"""A capture's photos in a run: cameras scaled to the render size, photos (and label images) resized to match,
render-vs-photo PSNR, and the teacher's view of a run (the photo where a view has one, else the render).

Files (per view index i, 4 digits): ``RUN/photos/NNNN.png`` the photo resized to the view's render size
(Lanczos); ``RUN/photos/NNNN.labels.npz`` (``labels`` [H, W] int32, -1 unlabelled) the label image resized
(nearest), when the capture has one. ``views.json`` gains ``"photos"`` ([V] bool: the teacher sees the photo),
``"psnr"`` ([V] float dB of render vs photo, null without a photo) and ``"capture"`` ({"layout", "root"}).
The render stage renders the capture's cameras (plus the preset's planned views, one level up, when
``teacher_input`` is ``both``); a run from a plain scene file renders the planned views only.

Teacher input (``TeacherConfig.teacher_input``, read by the features stage): ``photos`` = the teacher sees the
photo of every view that has one; ``renders`` = it sees the renders; ``both`` = photos where there are, renders
of the planned views beside; ``auto`` = ``photos`` when the run has photos, else renders.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from scene_kd.errors import SceneKDError
from scene_kd.render.types import Render, iter_renders
from scene_kd.scene.types import Camera

TEACHER_INPUTS = ("auto", "photos", "renders", "both")


def photo_png(run_dir: str | Path, i: int) -> Path:
    return Path(run_dir) / "photos" / f"{i:04d}.png"


def photo_labels_npz(run_dir: str | Path, i: int) -> Path:
    return Path(run_dir) / "photos" / f"{i:04d}.labels.npz"


def resolve_teacher_input(value: str, has_capture: bool) -> str:
    """``auto`` -> ``photos`` with a capture, ``renders`` without; SceneKDError for photos/both without one."""
    if value not in TEACHER_INPUTS:
        raise SceneKDError(f"teacher_input must be one of {', '.join(TEACHER_INPUTS)}, got {value!r}")
    if value == "auto":
        return "photos" if has_capture else "renders"
    if value in ("photos", "both") and not has_capture:
        raise SceneKDError(f"teacher_input {value!r} needs a run made from a capture (a folder with photos + "
                           "cameras); this run has no photos")
    return value


def scale_camera(cam: Camera, width: int, height: int) -> Camera:
    """The same camera with an image of ``width`` x ``height``: K rows scaled by width / W and height / H
    (pixel coordinates with the image corner at 0, as the renderers use)."""
    sx, sy = width / cam.width, height / cam.height
    K = cam.K.copy()
    K[0] *= sx
    K[1] *= sy
    K[2] = [0.0, 0.0, 1.0]
    return Camera(K=K, world_to_cam=cam.world_to_cam.copy(), width=width, height=height, level=cam.level,
                  name=cam.name)


def render_size(cam: Camera, width: int, height: int) -> tuple[int, int]:
    """The photo's aspect ratio with its longer side = max(``width``, ``height``) of the render config."""
    side = max(width, height)
    s = side / max(cam.width, cam.height)
    return max(1, round(cam.width * s)), max(1, round(cam.height * s))


def capture_views(capture: Any, width: int, height: int) -> list[Camera]:
    """The capture's cameras scaled to the render size (see :func:`render_size`), level 0."""
    return [scale_camera(c, *render_size(c, width, height)) for c in capture.cameras]


def load_photo(path: Path, size: tuple[int, int]) -> np.ndarray:
    """[H, W, 3] uint8 photo resized to ``size`` (W, H) with Lanczos."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        if im.size != tuple(size):
            im = im.resize(tuple(size), Image.Resampling.LANCZOS)
        return np.asarray(im).copy()


def load_label_image(path: Path, size: tuple[int, int]) -> np.ndarray:
    """[H, W] int32 class ids (-1 unlabelled) resized to ``size`` (W, H), nearest neighbour."""
    from scene_kd.scene.capture import read_label_image

    lab = read_label_image(path)
    if lab.shape[::-1] != tuple(size):
        ys = np.minimum(((np.arange(size[1]) + 0.5) * lab.shape[0] / size[1]).astype(int), lab.shape[0] - 1)
        xs = np.minimum(((np.arange(size[0]) + 0.5) * lab.shape[1] / size[0]).astype(int), lab.shape[1] - 1)
        lab = lab[ys][:, xs]
    return lab.astype(np.int32)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8 images of one shape (inf when equal)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0**2 / mse)


def write_view_photo(run_dir: Path, i: int, capture: Any, k: int, render: Render) -> float:
    """Write photo ``k`` of ``capture`` (and its label image) as view ``i`` at the render's size; its PSNR."""
    from PIL import Image

    from scene_kd.runio import atomic_path

    h, w = render.rgb.shape[:2]
    rgb = load_photo(capture.photos[k], (w, h))
    out = photo_png(run_dir, i)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        Image.fromarray(rgb).save(tmp, format="PNG")
    lab_out = photo_labels_npz(run_dir, i)
    lab_path = capture.labels[k] if capture.labels else None
    if lab_path is not None:
        with atomic_path(lab_out) as tmp:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, labels=load_label_image(lab_path, (w, h)))
    elif lab_out.exists():
        lab_out.unlink()
    return round(psnr(render.rgb, rgb), 3)


def clear_photos(run_dir: Path, keep: int) -> None:
    """Remove photo files of views >= ``keep`` (left from an earlier run)."""
    folder = Path(run_dir) / "photos"
    for p in folder.glob("*") if folder.is_dir() else []:
        stem = p.name.split(".")[0]
        if stem.isdigit() and int(stem) >= keep:
            p.unlink()


def photo_flags(run_dir: str | Path) -> list[bool]:
    """[V] whether the teacher sees view i's photo (views.json ``photos``; all False for runs without)."""
    from scene_kd.runio import read_json

    views = read_json(Path(run_dir) / "views.json")
    flags = views.get("photos") or []
    return [bool(f) for f in flags] + [False] * (len(views["cameras"]) - len(flags))


def as_photo_render(run_dir: str | Path, i: int, render: Render) -> Render:
    """The teacher's view i: the render with rgb = the photo and, when a label image exists, labels = it
    (depth, ids, instances, Gaussian weights stay the render's: they say which scene element each pixel is)."""
    from dataclasses import replace

    from PIL import Image

    with Image.open(photo_png(run_dir, i)) as im:
        rgb = np.asarray(im.convert("RGB")).copy()
    if rgb.shape != render.rgb.shape:
        raise SceneKDError(f"photo {i:04d} is {rgb.shape[1]}x{rgb.shape[0]}, its render "
                           f"{render.rgb.shape[1]}x{render.rgb.shape[0]}; rerun the render stage", path=run_dir)
    labels = render.labels
    lab = photo_labels_npz(run_dir, i)
    if lab.exists():
        with np.load(lab) as z:
            labels = z["labels"]
    return replace(render, rgb=rgb, labels=labels)


def photos_for_teacher(run_dir: str | Path, teacher_input: str) -> list[bool]:
    """[V] whether the teacher sees view i's photo under ``teacher_input``; SceneKDError for photos/both in a
    run without photos."""
    flags = photo_flags(run_dir)
    mode = resolve_teacher_input(teacher_input, any(flags))
    return [f and mode != "renders" for f in flags]


def iter_teacher_renders(run_dir: str | Path, use_photos: list[bool]):
    """Yield (index, Render) the teacher sees, in order: the photo where ``use_photos[i]``, else the render."""
    for i, r in iter_renders(run_dir):
        yield i, (as_photo_render(run_dir, i, r) if use_photos[i] else r)
