"""Imported cameras: nerfstudio / instant-ngp ``transforms.json`` and COLMAP sparse models (text or binary).

All cameras come out as ``Camera`` in the scene's *local* frame (OpenCV convention, world_to_cam maps
local -> camera): pass the scene's float64 ``origin`` and it is subtracted from every camera centre.
Lens distortion is read into ``Camera.distortion`` (scene_kd/scene/lens.py: COLMAP SIMPLE_RADIAL, RADIAL, OPENCV,
FULL_OPENCV, OPENCV_FISHEYE; transforms.json k1..k4, p1, p2 with camera_model OPENCV / OPENCV_FISHEYE); other
models are refused with one line.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import struct
from pathlib import Path
from typing import Any

import numpy as np

from scene_kd.errors import SceneFormatError
from scene_kd.geometry import matrix_from_quat_wxyz
from scene_kd.scene.io import world_to_local
from scene_kd.scene.lens import colmap_distortion, transforms_distortion
from scene_kd.scene.types import Camera, PointCloud

log = logging.getLogger(__name__)

# COLMAP camera models: id -> (name, number of params)
COLMAP_MODELS: dict[int, tuple[str, int]] = {
    0: ("SIMPLE_PINHOLE", 3),
    1: ("PINHOLE", 4),
    2: ("SIMPLE_RADIAL", 4),
    3: ("RADIAL", 5),
    4: ("OPENCV", 8),
    5: ("OPENCV_FISHEYE", 8),
    6: ("FULL_OPENCV", 12),
    7: ("FOV", 5),
    8: ("SIMPLE_RADIAL_FISHEYE", 4),
    9: ("RADIAL_FISHEYE", 5),
    10: ("THIN_PRISM_FISHEYE", 12),
}
_MODEL_IDS = {name: i for i, (name, _) in COLMAP_MODELS.items()}
_SIMPLE_F = {"SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL"}  # params f, cx, cy, ...
_FXFY = {"PINHOLE", "OPENCV", "FULL_OPENCV"}  # params fx, fy, cx, cy, ...
OPENGL_TO_OPENCV = np.diag([1.0, -1.0, -1.0, 1.0])


def intrinsics(fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


def _shift(world_to_cam: np.ndarray, origin: np.ndarray | None) -> np.ndarray:
    """World->cam for world = origin + local, i.e. t' = t + R @ origin (centre moves by -origin)."""
    if origin is None:
        return world_to_cam
    out = world_to_cam.copy()
    out[:3, 3] = world_to_cam[:3, 3] + world_to_cam[:3, :3] @ np.asarray(origin, dtype=np.float64)
    return out


def camera_source(path: Path) -> Path:
    """What a camera path given as a folder means: its ``transforms.json`` / ``transforms_train.json`` (nerfstudio /
    NeRF-synthetic) unless it holds a COLMAP ``sparse`` folder, else the folder itself (COLMAP); a file is
    itself."""
    if path.is_dir():
        for name in ("transforms.json", "transforms_train.json"):
            if (path / name).is_file() and not (path / "sparse").exists():
                return path / name
    return path


def load_cameras_file(path: str | Path, *, origin: np.ndarray | None = None) -> list[Camera]:
    """Cameras from ``transforms.json`` or a COLMAP sparse folder (cameras/images/points3D, .txt or .bin).

    A folder may also be a COLMAP project root holding ``sparse/0`` or ``sparse``, or a nerfstudio /
    NeRF-synthetic folder holding ``transforms.json`` / ``transforms_train.json``.
    """
    path = Path(path)
    if not path.exists():
        raise SceneFormatError("no such file or folder", path=path)
    path = camera_source(path)
    if path.is_dir():
        return load_colmap_cameras(path, origin=origin)
    if path.suffix.lower() == ".json":
        return load_transforms_json(path, origin=origin)
    if path.name in ("cameras.txt", "cameras.bin", "images.txt", "images.bin"):
        return load_colmap_cameras(path.parent, origin=origin)
    raise SceneFormatError("not a camera file: expected transforms.json or a COLMAP sparse folder", path=path)


# ------------------------------------------------------------------------------------ transforms.json


def load_transforms_json(path: str | Path, *, origin: np.ndarray | None = None) -> list[Camera]:
    """nerfstudio / instant-ngp transforms.json: OpenGL camera-to-world per frame -> OpenCV world_to_cam."""
    path = Path(path)
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise SceneFormatError(f"not readable JSON ({type(e).__name__}: {e})", path=path) from None
    if not isinstance(meta, dict) or not isinstance(meta.get("frames"), list) or not meta["frames"]:
        raise SceneFormatError("transforms.json has no 'frames' list", path=path)
    try:
        transforms_distortion(str(meta.get("camera_model", "OPENCV")), lambda _k: None)
    except ValueError as e:
        raise SceneFormatError(str(e), path=path) from None
    cams = []
    for i, frame in enumerate(meta["frames"]):
        try:
            cams.append(frame_camera(frame, meta, path, origin))
        except (KeyError, TypeError, ValueError) as e:
            raise SceneFormatError(
                f"frame {i}: missing or bad field ({type(e).__name__}: {e})", path=path
            ) from None
    return cams


def frame_camera(frame: dict[str, Any], meta: dict[str, Any], path: Path, origin) -> Camera:
    """One transforms.json frame as a Camera: per-frame intrinsics over the file's (``fl_x``/``camera_angle_x``,
    ``w``/``h`` or the image's own size), OpenGL camera-to-world to OpenCV world-to-camera, ``origin`` subtracted.
    Used by the transforms.json reader and the capture loader (NeRF-synthetic folders)."""
    def get(key: str, default=None):
        return frame.get(key, meta.get(key, default))

    w, h = get("w"), get("h")
    if w is None or h is None:  # NeRF-synthetic gives camera_angle_x only: the size is the image's
        w, h = _image_size(frame_image(path.parent, frame["file_path"]), path)
    w, h = int(w), int(h)
    fx, fy = get("fl_x"), get("fl_y")
    if fx is None:
        angle_x = get("camera_angle_x")
        if angle_x is None:
            raise SceneFormatError("no fl_x or camera_angle_x for a frame", path=path)
        fx = 0.5 * w / np.tan(0.5 * float(angle_x))
    if fy is None:
        angle_y = get("camera_angle_y")
        fy = 0.5 * h / np.tan(0.5 * float(angle_y)) if angle_y is not None else fx
    cx, cy = get("cx", w / 2.0), get("cy", h / 2.0)
    c2w = np.asarray(frame["transform_matrix"], dtype=np.float64)
    if c2w.shape == (3, 4):
        c2w = np.vstack([c2w, [0, 0, 0, 1]])
    if c2w.shape != (4, 4) or not np.isfinite(c2w).all():
        raise SceneFormatError("transform_matrix must be a finite 4x4 (or 3x4) matrix", path=path)
    c2w_cv = c2w @ OPENGL_TO_OPENCV
    if origin is not None:
        c2w_cv[:3, 3] -= np.asarray(origin, dtype=np.float64)
    w2c = np.linalg.inv(c2w_cv)
    try:
        distortion = transforms_distortion(str(get("camera_model", "OPENCV")), get)
    except ValueError as e:
        raise SceneFormatError(str(e), path=path) from None
    return Camera(
        K=intrinsics(float(fx), float(fy), float(cx), float(cy)),
        world_to_cam=w2c,
        width=w,
        height=h,
        name=str(frame.get("file_path", "")),
        distortion=distortion,
    )


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".PNG", ".JPG", ".JPEG")


def frame_image(root: Path, file_path: str) -> Path:
    """A frame's image: ``root / file_path``, or with .png/.jpg added when the NeRF-synthetic layout gives
    the path without its extension (``./train/r_0`` for ``train/r_0.png``)."""
    image = Path(root) / file_path
    if image.is_file():
        return image
    for suffix in IMAGE_SUFFIXES:
        cand = image.with_name(image.name + suffix)
        if cand.is_file():
            return cand
    return image


def scale_to_size(cameras: list[Camera], width: int, height: int, *, tolerance: float = 0.01) -> list[Camera]:
    """Cameras resized to ``width`` x ``height`` pixels: K scaled per axis (fx, cx by width / W; fy, cy by
    height / H), poses unchanged; the same field of view at another resolution (COLMAP 3840x2160 ->
    960x540: K x 0.25). Raises SceneFormatError when the requested aspect ratio differs from a camera's
    by more than ``tolerance`` (the flags would stretch the image: give a size of the same aspect)."""
    out = []
    for c in cameras:
        if (c.width, c.height) == (width, height):
            out.append(c)
            continue
        sx, sy = width / c.width, height / c.height
        if abs(sx / sy - 1) > tolerance:
            raise SceneFormatError(
                f"--width/--height {width}x{height} do not keep camera {c.name!r}'s aspect ratio "
                f"({c.width}x{c.height}); give e.g. {width}x{round(c.height * sx)}")
        K = c.K.copy()
        K[0, :] *= sx
        K[1, :] *= sy
        out.append(dataclasses.replace(c, K=K, width=width, height=height))
    return out


def _image_size(image: Path, path: Path) -> tuple[int, int]:
    try:
        from PIL import Image

        with Image.open(image) as im:
            return im.size
    except Exception:  # noqa: BLE001
        raise SceneFormatError(
            f"no w/h given and image {image} cannot be opened to find its size", path=path
        ) from None


# ------------------------------------------------------------------------------------ COLMAP


def colmap_folder(folder: str | Path) -> tuple[Path, str]:
    """(folder holding cameras.*, 'txt'|'bin') for a sparse model folder or a project root."""
    folder = Path(folder)
    for cand in (folder, folder / "sparse" / "0", folder / "sparse", folder / "0"):
        for ext in ("bin", "txt"):
            if (cand / f"cameras.{ext}").is_file() and (cand / f"images.{ext}").is_file():
                return cand, ext
    raise SceneFormatError("not a COLMAP sparse model (no cameras.bin/txt + images.bin/txt)", path=folder)


def _colmap_K(model: str, params: list[float], path: Path) -> tuple[np.ndarray, Any]:
    """(K, Distortion or None) of a COLMAP camera; SceneFormatError (one line, at ``path``) naming a model we
    cannot undistort."""
    if model in _SIMPLE_F:
        f, cx, cy = params[:3]
        K, rest = intrinsics(f, f, cx, cy), params[3:]
    elif model in _FXFY or model == "OPENCV_FISHEYE":
        fx, fy, cx, cy = params[:4]
        K, rest = intrinsics(fx, fy, cx, cy), params[4:]
    else:
        K, rest = None, []
    try:
        return K, colmap_distortion(model, rest)  # raises for an unsupported model
    except ValueError as e:
        raise SceneFormatError(str(e), path=path) from None


def _read_cameras_txt(p: Path) -> dict[int, tuple[str, int, int, list[float]]]:
    cams = {}
    for line in p.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        tok = line.split()
        model = tok[1].upper()
        if model not in _MODEL_IDS:
            raise ValueError(f"unknown camera model {tok[1]}")
        params = [float(v) for v in tok[4:]]
        if len(params) != COLMAP_MODELS[_MODEL_IDS[model]][1]:
            raise ValueError(f"camera {tok[0]}: {model} needs {COLMAP_MODELS[_MODEL_IDS[model]][1]} params")
        cams[int(tok[0])] = (model, int(tok[2]), int(tok[3]), params)
    return cams


def _read_images_txt(p: Path) -> list[tuple[int, np.ndarray, np.ndarray, int, str]]:
    lines = [ln for ln in p.read_text().splitlines() if not ln.startswith("#")]
    out = []
    i = 0
    while i < len(lines):
        if not lines[i].strip():  # an image line is never empty; its points line may be
            i += 1
            continue
        tok = lines[i].split()
        if len(tok) < 10:
            raise ValueError(f"bad image line: {lines[i][:60]!r}")
        qvec = np.array([float(v) for v in tok[1:5]])
        tvec = np.array([float(v) for v in tok[5:8]])
        out.append((int(tok[0]), qvec, tvec, int(tok[8]), " ".join(tok[9:])))
        i += 2  # skip the POINTS2D line
    return out


class _Bin:
    """Little-endian cursor over bytes that raises ValueError when it runs out."""

    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def take(self, fmt: str):
        size = struct.calcsize("<" + fmt)
        if self.pos + size > len(self.data):
            raise ValueError("truncated binary file")
        vals = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += size
        return vals

    def skip(self, n: int) -> None:
        if n < 0 or self.pos + n > len(self.data):
            raise ValueError("truncated binary file")
        self.pos += n

    def cstring(self) -> str:
        end = self.data.find(b"\x00", self.pos)
        if end < 0:
            raise ValueError("truncated binary file (unterminated name)")
        s = self.data[self.pos : end].decode("utf-8", "replace")
        self.pos = end + 1
        return s


def _read_cameras_bin(p: Path) -> dict[int, tuple[str, int, int, list[float]]]:
    b = _Bin(p.read_bytes())
    (n,) = b.take("Q")
    cams = {}
    for _ in range(n):
        cam_id, model_id, w, h = b.take("iiQQ")
        if model_id not in COLMAP_MODELS:
            raise ValueError(f"unknown camera model id {model_id}")
        name, k = COLMAP_MODELS[model_id]
        cams[cam_id] = (name, w, h, list(b.take(f"{k}d")))
    return cams


def _read_images_bin(p: Path) -> list[tuple[int, np.ndarray, np.ndarray, int, str]]:
    b = _Bin(p.read_bytes())
    (n,) = b.take("Q")
    out = []
    for _ in range(n):
        vals = b.take("i7di")
        name = b.cstring()
        (n2d,) = b.take("Q")
        b.skip(24 * n2d)
        out.append((vals[0], np.array(vals[1:5]), np.array(vals[5:8]), vals[8], name))
    return out


def load_colmap_cameras(folder: str | Path, *, origin: np.ndarray | None = None) -> list[Camera]:
    """COLMAP sparse model -> cameras sorted by image name. world_to_cam = [R(q) | t] (already OpenCV)."""
    sub, ext = colmap_folder(folder)
    try:
        if ext == "bin":
            cams, images = _read_cameras_bin(sub / "cameras.bin"), _read_images_bin(sub / "images.bin")
        else:
            cams, images = _read_cameras_txt(sub / "cameras.txt"), _read_images_txt(sub / "images.txt")
        out = []
        for _image_id, qvec, tvec, cam_id, name in sorted(images, key=lambda r: r[4]):
            if cam_id not in cams:
                raise ValueError(f"image {name} refers to missing camera {cam_id}")
            model, w, h, params = cams[cam_id]
            w2c = np.eye(4)
            w2c[:3, :3] = matrix_from_quat_wxyz(*qvec)
            w2c[:3, 3] = tvec
            K, distortion = _colmap_K(model, params, sub)
            out.append(Camera(K=K, world_to_cam=_shift(w2c, origin), width=w, height=h, name=name,
                              distortion=distortion))
    except (ValueError, IndexError, struct.error, UnicodeDecodeError, OSError) as e:
        raise SceneFormatError(f"corrupt COLMAP model ({e})", path=sub) from None
    if not out:
        raise SceneFormatError("COLMAP model has no images", path=sub)
    return out


def load_colmap_points(folder: str | Path) -> PointCloud:
    """COLMAP points3D (.bin or .txt) -> PointCloud with rgb and extra['error'] (reprojection error, px)."""

    sub, ext = colmap_folder(folder)
    p = sub / f"points3D.{ext}"
    if not p.is_file():
        raise SceneFormatError("COLMAP model has no points3D file", path=sub)
    try:
        xyz, rgb, err = [], [], []
        if ext == "bin":
            b = _Bin(p.read_bytes())
            (n,) = b.take("Q")
            for _ in range(n):
                vals = b.take("Q3d3Bd")
                xyz.append(vals[1:4])
                rgb.append(vals[4:7])
                err.append(vals[7])
                (track,) = b.take("Q")
                b.skip(8 * track)
        else:
            for line in p.read_text().splitlines():
                if not line.strip() or line.startswith("#"):
                    continue
                tok = line.split()
                xyz.append([float(v) for v in tok[1:4]])
                rgb.append([int(v) for v in tok[4:7]])
                err.append(float(tok[7]))
    except (ValueError, IndexError, struct.error, UnicodeDecodeError) as e:
        raise SceneFormatError(f"corrupt COLMAP points3D ({e})", path=p) from None
    if not xyz:
        raise SceneFormatError("COLMAP model has no 3D points", path=p)
    local, origin, keep, meta = world_to_local(np.asarray(xyz, dtype=np.float64), p)
    rgb_a = np.asarray(rgb, dtype=np.uint8)
    err_a = np.asarray(err, dtype=np.float32)
    if keep is not None:
        rgb_a, err_a = rgb_a[keep], err_a[keep]
    return PointCloud(
        xyz=local,
        origin=origin,
        rgb=rgb_a,
        extra={"error": err_a},
        meta={**meta, "source": str(p), "format": f"colmap-{ext}"},
    )
