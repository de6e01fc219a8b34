"""A capture's photos in a run: cameras scaled to the render size, photos (and label images) resized to match,
render-vs-photo PSNR, and the teacher's view of a run (the photo where a view has one, else the render).

Files (per view index i, 4 digits): ``RUN/photos/NNNN.png`` the photo, undistorted to its pinhole camera where the
capture's camera has lens distortion (``Capture.lenses``, scene_kd/scene/lens.py; label and depth images alike,
nearest), resized to the view's render size (Lanczos); ``RUN/photos/NNNN.labels.npz`` (``labels`` [H, W] int32, -1 unlabelled) the label image resized
(nearest), when the capture has one. ``views.json`` gains ``"photos"`` ([V] bool: the teacher sees the photo),
``"psnr"`` ([V] float dB of render vs photo, null without a photo), ``"capture"`` ({"layout", "root", "frame"}) and
``"depth_disagree"`` ([V] pixels whose render depth disagrees with the frame's own depth, null where not
checked).
The render stage renders the capture's cameras (plus the preset's planned views, one level up, when
``teacher_input`` is ``both``); a run from a plain scene file renders the planned views only.

RGB-D frames (``RenderConfig.frame_depth_check``, on by default; views without a depth image are not checked):
the render's depth is compared with the frame's depth image (resized like the label image, scene units via
``Capture.depth_scale``); pixels where both have depth and they differ by more than
``RenderConfig.frame_depth_tolerance`` x the frame depth show something else in the photo than the scene does
there (an occluder the scene lacks, a moved object), so they are written to ``RUN/photos/NNNN.depth_check.npz``
(``disagree`` [H, W] bool) and lifting drops those pixels' mask ids (:func:`drop_disagreeing`): the points or
Gaussians behind them get none of that view's masks. The rendered depth / ids still decide visibility
everywhere else.

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
from scene_kd.runio import atomic_path, read_json
from scene_kd.scene.capture import read_label_image
from scene_kd.scene.types import Camera

TEACHER_INPUTS = ("auto", "photos", "renders", "both")


def photo_png(run_dir: str | Path, i: int) -> Path:
    return Path(run_dir) / "photos" / f"{i:04d}.png"


def photo_labels_npz(run_dir: str | Path, i: int) -> Path:
    return Path(run_dir) / "photos" / f"{i:04d}.labels.npz"


def depth_check_npz(run_dir: str | Path, i: int) -> Path:
    return Path(run_dir) / "photos" / f"{i:04d}.depth_check.npz"


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


def load_photo(path: Path, size: tuple[int, int], lens: tuple[Camera, Camera] | None = None) -> np.ndarray:
    """[H, W, 3] uint8 photo resized to ``size`` (W, H) with Lanczos; ``lens`` (distorted camera, its pinhole):
    undistorted first, at the photo's own resolution."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        if lens is not None:
            from scene_kd.scene.lens import undistort_image

            im = Image.fromarray(undistort_image(np.asarray(im), *lens))
        if im.size != tuple(size):
            im = im.resize(tuple(size), Image.Resampling.LANCZOS)
        return np.asarray(im).copy()


def load_label_image(path: Path, size: tuple[int, int], lens: tuple[Camera, Camera] | None = None) -> np.ndarray:
    """[H, W] int32 class ids (-1 unlabelled) resized to ``size`` (W, H), nearest neighbour (undistorted first
    with ``lens``, as :func:`load_photo`)."""

    a = read_label_image(path)
    if lens is not None:
        from scene_kd.scene.lens import undistort_image

        a = undistort_image(a, *lens, nearest=True, fill=-1)
    return resize_nearest(a, size).astype(np.int32)


def resize_nearest(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """[H, W] image ``a`` resampled to ``size`` (W, H) by the nearest pixel centre (class ids and depths must not
    be blended); ``a`` itself when already that size."""
    if a.shape[::-1] == tuple(size):
        return a
    ys = np.minimum(((np.arange(size[1]) + 0.5) * a.shape[0] / size[1]).astype(int), a.shape[0] - 1)
    xs = np.minimum(((np.arange(size[0]) + 0.5) * a.shape[1] / size[0]).astype(int), a.shape[1] - 1)
    return a[ys][:, xs]


def load_depth_image(path: Path, size: tuple[int, int], scale: float,
                     lens: tuple[Camera, Camera] | None = None) -> np.ndarray:
    """[H, W] float32 depth in scene units (stored value x ``scale``; 0 / non-finite stored -> NaN, no
    measurement) of a 16/32-bit depth image or a ``.npy`` array (nerfstudio's depth formats), resized to
    ``size`` (W, H) by the nearest pixel centre. SceneKDError for a multi-channel or unreadable file."""
    from PIL import Image

    try:
        if path.suffix.lower() == ".npy":
            a = np.load(path, allow_pickle=False)
        else:
            with Image.open(path) as im:
                a = np.asarray(im)
    except (OSError, ValueError) as e:
        raise SceneKDError(f"unreadable depth image ({e})", path=path) from None
    if a.ndim != 2:
        raise SceneKDError(f"a depth image must be single-channel, got shape {a.shape}", path=path)
    d = a.astype(np.float32) * np.float32(scale)
    d[~np.isfinite(d) | (d <= 0)] = np.nan
    if lens is not None:  # undistorted like the photo (nearest: depths are never blended)
        from scene_kd.scene.lens import undistort_image

        d = undistort_image(d, *lens, nearest=True, fill=np.nan)
    return resize_nearest(d, size)


def depth_disagreement(render_depth: np.ndarray, frame_depth: np.ndarray, tolerance: float) -> np.ndarray:
    """[H, W] bool: pixels where the render has a surface (finite depth), the frame has a measurement (finite)
    and |render - frame| > ``tolerance`` x frame (both camera z in scene units)."""
    r = np.asarray(render_depth, np.float32)
    f = np.asarray(frame_depth, np.float32)
    with np.errstate(invalid="ignore"):
        return np.isfinite(r) & np.isfinite(f) & (np.abs(r - f) > np.float32(tolerance) * f)


def drop_disagreeing(run_dir: str | Path, i: int, mask_ids: np.ndarray) -> np.ndarray:
    """View ``i``'s mask ids ([H, W] or [L, H, W], -1 none) with -1 at the pixels its depth check marked (the
    module docstring); unchanged without a check file. SceneKDError when the check's size differs."""
    path = depth_check_npz(run_dir, i)
    if not path.exists():
        return mask_ids
    with np.load(path) as z:
        disagree = z["disagree"]
    if disagree.shape != mask_ids.shape[-2:]:
        raise SceneKDError(f"photos/{path.name} is {disagree.shape}, the view's masks {mask_ids.shape[-2:]}; "
                           "rerun the render stage", path=run_dir)
    return np.where(disagree, np.asarray(-1, mask_ids.dtype), mask_ids)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8 images of one shape (inf when equal)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0**2 / mse)


def write_view_photo(run_dir: Path, i: int, capture: Any, k: int, render: Render, *,
                     depth_tolerance: float | None = None) -> tuple[float, int | None]:
    """Write photo ``k`` of ``capture`` (and its label image) as view ``i`` at the render's size; with
    ``depth_tolerance`` and a frame depth image, the depth check (module docstring). Returns (PSNR dB,
    disagreeing pixels or None when not checked)."""
    from PIL import Image

    h, w = render.rgb.shape[:2]
    lenses = getattr(capture, "lenses", None)
    lens = (lenses[k], capture.cameras[k]) if lenses and lenses[k] is not None else None
    rgb = load_photo(capture.photos[k], (w, h), lens)
    out = photo_png(run_dir, i)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        Image.fromarray(rgb).save(tmp, format="PNG")
    lab_path = capture.labels[k] if capture.labels else None
    _write_or_clear(photo_labels_npz(run_dir, i),
                    None if lab_path is None else {"labels": load_label_image(lab_path, (w, h), lens)})
    depths = getattr(capture, "depths", None)
    disagree = None
    if depth_tolerance is not None and depths and depths[k] is not None and capture.depth_scale > 0:
        frame_depth = load_depth_image(depths[k], (w, h), capture.depth_scale, lens)
        disagree = depth_disagreement(render.depth, frame_depth, depth_tolerance)
    _write_or_clear(depth_check_npz(run_dir, i), None if disagree is None else {"disagree": disagree})
    return round(psnr(render.rgb, rgb), 3), None if disagree is None else int(disagree.sum())


def _write_or_clear(path: Path, arrays: dict[str, np.ndarray] | None) -> None:
    """Write ``arrays`` as a compressed npz at ``path``, or remove a stale ``path`` when None."""

    if arrays is None:
        if path.exists():
            path.unlink()
        return
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)


def clear_photos(run_dir: Path, keep: int) -> None:
    """Remove photo files of views >= ``keep`` (left from an earlier run)."""
    folder = Path(run_dir) / "photos"
    for p in folder.glob("*") if folder.is_dir() else []:
        stem = p.name.split(".")[0]
        if stem.isdigit() and int(stem) >= keep:
            p.unlink()


def photo_flags(run_dir: str | Path) -> list[bool]:
    """[V] whether the teacher sees view i's photo (views.json ``photos``; all False for runs without)."""

    views = read_json(Path(run_dir) / "views.json")
    flags = views.get("photos") or []
    return [bool(f) for f in flags] + [False] * (len(views["cameras"]) - len(flags))


def as_photo_render(run_dir: str | Path, i: int, render: Render) -> Render:
    """The teacher's view i: the render with rgb = the photo and, when a label image exists, labels = it and no
    instances (a label image holds classes only; the render's instances, drawn from the scene, would cut the
    photo's regions into fragments wherever the two disagree). Depth, ids and Gaussian weights stay the
    render's: they say which scene element each pixel is."""
    from dataclasses import replace

    from PIL import Image

    with Image.open(photo_png(run_dir, i)) as im:
        rgb = np.asarray(im.convert("RGB")).copy()
    if rgb.shape != render.rgb.shape:
        raise SceneKDError(f"photo {i:04d} is {rgb.shape[1]}x{rgb.shape[0]}, its render "
                           f"{render.rgb.shape[1]}x{render.rgb.shape[0]}; rerun the render stage", path=run_dir)
    labels, instances = render.labels, render.instances
    lab = photo_labels_npz(run_dir, i)
    if lab.exists():  # a label image holds classes only: the render's instances would cut its regions apart
        with np.load(lab) as z:
            labels, instances = z["labels"], None
    return replace(render, rgb=rgb, labels=labels, instances=instances)


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
