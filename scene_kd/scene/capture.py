"""Capture folders: a scene (3DGS PLY / .splat / point cloud) + the photos it was made from + their cameras.

``load_capture(path)`` recognises these layouts (checked in this order) and says which one it found:

* ``inria-3dgs``: the Inria 3DGS output folder, ``cameras.json`` + ``point_cloud/iteration_*/point_cloud.ply``
  (the highest iteration). ``cameras.json`` holds per image ``position`` (camera centre) and ``rotation``
  (camera-to-world 3x3, OpenCV axes), ``fx``, ``fy``, ``width``, ``height``, ``img_name`` (no extension). Photos
  are looked up in ``images/`` of the folder, else of the ``source_path`` recorded in ``cfg_args``.
* ``rgbd``: a nerfstudio ``transforms.json`` whose frames have ``depth_file_path`` (posed RGB-D frames; depth
  PNGs in ``depth_unit_scale_factor`` metres per unit, default 0.001 = millimetres, 0 = no depth); frames as
  ``nerfstudio``.
* ``nerfstudio``: ``transforms.json`` (per-frame intrinsics ``fl_x``/``fl_y``/``cx``/``cy``/``w``/``h`` over the
  file's). The scene may be in one of nerfstudio's frames (scene_kd/scene/nerfstudio.py, from the nerfstudio
  source): transforms.json's own (the ``ply_file_path`` points, which ns-process-data wrote with
  ``applied_transform`` applied), the dataparser frame of ``dataparser_transforms.json`` (``transform`` 3x4 from
  the *original* frame, ``scale``: splatfacto, ``ns-export gaussian-splat`` / ``pointcloud``) or the original
  frame before ``applied_transform`` (COLMAP's points, ``ns-export pointcloud --save-world-frame``). The frame
  expected from where the scene file came from (ply_file_path -> transforms.json's; another file with a
  dataparser_transforms.json -> dataparser; else transforms.json's) is checked against the data: the scene is
  projected into each candidate frame's cameras and the expected frame is kept unless it sees the scene less
  than ``MIN_SEEN_FRACTION`` or ``FRAME_MARGIN`` below another frame, which is then taken (a warning says so).
  Where several frames see the scene alike (cameras around the world origin, which applied_transform's
  rotation keeps), the data cannot tell and the expected frame stands. ``Capture.frame`` says which frame was
  taken; depth images are scaled with it.
* ``nerf-synthetic``: ``transforms_train.json`` (+ ``_val`` / ``_test``), Blender cameras, ``camera_angle_x``,
  ``file_path`` without extension (``.png`` added).
* ``colmap``: ``sparse/0`` (or ``sparse``) with cameras/images ``.bin`` or ``.txt`` + ``images/``.

Cameras are read with scene_kd/scene/cameras.py (transforms.json, COLMAP text/binary) and come out in the
scene's local frame (``Camera``, world-to-cam, OpenCV axes). **Distortion**: a camera with lens distortion
(COLMAP SIMPLE_RADIAL / RADIAL / OPENCV / FULL_OPENCV / OPENCV_FISHEYE, transforms.json k1..k4, p1, p2) becomes
the pinhole its undistorted photo has (scene_kd/scene/lens.py ``undistorted_camera``); ``Capture.lenses`` keeps
the distorted one, and the render stage undistorts the photo, label and depth images with it before the teacher
sees them. Other lens models are refused with one line.

**The scene file** of a capture is, in order: the ``scene=`` argument; the Inria ``point_cloud.ply``; the
``ply_file_path`` of transforms.json; ``exports/splat/splat.ply``; else the one scene file (``.ply``,
``.splat``, ``.las``, ``.laz``, ``.pcd``, ``.npy``) at the folder's top level (``scene.*`` preferred); for
COLMAP without one, the model's own ``points3D`` as a point cloud.

**Label images** (ground truth for the oracle teacher, optional): ``labels/<image stem>.png`` beside
``images/`` (i.e. in the capture root), one class id per pixel as an 8- or 16-bit greyscale PNG, the dtype's
maximum (255 / 65535) meaning "unlabelled"; ``labels.json`` in the root maps id -> class name
(``{"0": "table", ...}``).

Cameras that do not match the scene's frame are refused (:func:`check_capture_frame`): fewer than
``MIN_SEEN_FRACTION`` of the scene's central points (inside the 1-99 % bounds) project in front of and inside
any image.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from scene_kd.errors import SceneFormatError, SceneKDError
from scene_kd.scene.cameras import frame_camera, load_colmap_cameras, load_transforms_json
from scene_kd.scene.io import load_scene
from scene_kd.scene.nerfstudio import cameras_in_frame, expected_frame, frame_scale, frame_transforms
from scene_kd.scene.projection import pixel_index, project_points
from scene_kd.scene.types import Camera

log = logging.getLogger(__name__)

LAYOUTS = ("inria-3dgs", "rgbd", "nerfstudio", "nerf-synthetic", "colmap")
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".JPG", ".JPEG", ".PNG")
SCENE_EXTS = (".ply", ".splat", ".las", ".laz", ".pcd", ".npy")
MIN_SEEN_FRACTION = 0.5
"""Fewer of the scene's central points than this fraction inside some image: the cameras are refused."""
FRAME_MARGIN = 0.1
"""nerfstudio: another candidate frame replaces the expected one when it sees this much more of the scene."""


@dataclass
class Capture:
    """A capture folder, read.

    scene: the loaded scene (PointCloud / GaussianSplats).   cameras: [V] in the scene's local frame, photo size.
    photos: [V] image paths.   depths: [V] depth image paths (RGB-D) or None.   depth_scale: scene units per
    depth unit (metres per unit x the frame's scale, e.g. the dataparser scale).
    labels: [V] label image paths (None where a view has none) or None.   label_names: id -> name (labels.json).
    layout: which of ``LAYOUTS`` was found.   scene_path: the scene file.   root: the folder.
    frame: nerfstudio layouts: the frame the cameras were put in (scene_kd/scene/nerfstudio.py ``FRAMES``), else
    None.   lenses: [V] the photo's distorted camera where it has distortion (``cameras[i]`` is then its
    undistorted pinhole), else None; None when no photo is distorted.
    """

    root: Path
    layout: str
    scene_path: Path
    scene: Any
    cameras: list[Camera]
    photos: list[Path]
    depths: list[Path] | None = None
    depth_scale: float = 0.001
    labels: list[Path | None] | None = None
    label_names: dict[int, str] = field(default_factory=dict)
    frame: str | None = None
    lenses: list[Camera | None] | None = None

    def fingerprint(self) -> list[Any]:
        """What of the capture changes a run: layout, cameras, and each photo/label/depth file's (name, size,
        mtime)."""
        def stat(p: Path | None) -> Any:
            if p is None:
                return None
            s = p.stat()
            return [p.name, s.st_size, s.st_mtime_ns]

        return [self.layout, [c.to_json() for c in self.cameras],
                [c.to_json() if c is not None else None for c in (self.lenses or [])], [stat(p) for p in self.photos],
                [stat(p) for p in (self.labels or [])], [stat(p) for p in (self.depths or [])]]


def is_capture(path: str | Path) -> bool:
    """True when ``path`` is a folder in one of the capture layouts."""
    p = Path(path)
    return p.is_dir() and detect_layout(p) is not None


def detect_layout(root: Path) -> str | None:
    """The layout name of a capture folder (see the module docstring), or None."""
    if (root / "cameras.json").is_file() and list((root / "point_cloud").glob("iteration_*/point_cloud.ply")):
        return "inria-3dgs"
    tj = root / "transforms.json"
    if tj.is_file():
        try:
            frames = json.loads(tj.read_text()).get("frames") or []
        except (OSError, ValueError, AttributeError):
            frames = []
        if frames and isinstance(frames[0], dict) and frames[0].get("depth_file_path"):
            return "rgbd"
        return "nerfstudio"
    if (root / "transforms_train.json").is_file():
        return "nerf-synthetic"
    for sub in (root / "sparse" / "0", root / "sparse"):
        if any((sub / f"images.{e}").is_file() for e in ("bin", "txt")):
            return "colmap"
    return None


def load_capture(path: str | Path, *, scene: Any = None, layout: str | None = None,
                 check_frame: bool = True) -> Capture:
    """Read a capture folder (layouts in the module docstring). ``scene``: a scene file or loaded scene to use
    instead of the folder's; ``layout``: force one of ``LAYOUTS``.

    Raises SceneFormatError for a folder in no known layout, a missing scene/photo file or unreadable cameras,
    SceneKDError when the cameras do not match the scene's frame (``check_frame``).
    """

    root = Path(path)
    if not root.is_dir():
        raise SceneFormatError("not a capture folder", path=root)
    layout = layout or detect_layout(root)
    if layout not in LAYOUTS:
        raise SceneFormatError("not a capture folder: expected cameras.json + point_cloud/iteration_*/ (Inria 3DGS), "
                               "transforms.json (nerfstudio / RGB-D), transforms_train.json (NeRF-synthetic) or "
                               "sparse/0 + images/ (COLMAP)", path=root)
    reader = {"inria-3dgs": _inria, "rgbd": _nerfstudio, "nerfstudio": _nerfstudio,
              "nerf-synthetic": _nerf_synthetic, "colmap": _colmap}[layout]
    scene_path = Path(scene) if isinstance(scene, (str, Path)) else None
    raw_scene_path, read_cams = reader(root)  # read_cams(scene, scene_path) -> (cameras, photos, extra fields)
    if scene is None or scene_path is not None:
        scene_path = scene_path or raw_scene_path
        if scene_path is None and layout == "colmap":
            from scene_kd.scene.cameras import colmap_folder, load_colmap_points

            scene = load_colmap_points(root)
            scene_path = colmap_folder(root)[0]
        elif scene_path is None:
            raise SceneFormatError(f"{layout} capture: no scene file found (put scene.ply / a 3DGS PLY / .splat in "
                                   "the folder, or pass one)", path=root)
        else:
            scene = load_scene(scene_path, units=None)  # its cameras share the file's frame: no unit conversion
    cameras, photos, extra = read_cams(scene, scene_path)
    if any(c.distortion is not None for c in cameras):  # photos are undistorted to these pinholes when rendered
        from scene_kd.scene.lens import undistorted_camera

        extra["lenses"] = [c if c.distortion is not None else None for c in cameras]
        cameras = [undistorted_camera(c) for c in cameras]
        models = sorted({c.distortion.model for c in extra["lenses"] if c is not None})
        log.info("capture: %d of %d cameras have %s lens distortion; their photos are undistorted to a pinhole",
                 sum(c is not None for c in extra["lenses"]), len(cameras), "/".join(models))
    for p in photos:
        if not p.is_file():
            raise SceneFormatError(f"{layout} capture: photo {p.name} not found", path=p.parent)
    cap = Capture(root=root, layout=layout, scene_path=Path(scene_path or scene.meta.get("source", "")), scene=scene,
                  cameras=cameras, photos=photos, **extra)
    cap.labels, cap.label_names = _label_images(root, photos)
    if cap.labels is not None and cap.label_names and not scene.label_names:
        scene.label_names = dict(cap.label_names)
    if check_frame:
        check_capture_frame(scene, cameras, layout=layout)
    log.info("capture: %s layout, %d photos%s, scene %s%s", layout, len(photos),
             " + label images" if cap.labels else "", Path(cap.scene_path).name,
             f" ({cap.frame} frame)" if cap.frame else "")
    return cap


def check_capture_frame(scene: Any, cameras: list[Camera], *, layout: str = "capture",
                        min_fraction: float = MIN_SEEN_FRACTION) -> float:
    """:func:`seen_fraction` of the cameras; SceneKDError when below ``min_fraction`` (cameras in another frame)."""
    frac = seen_fraction(_central_points(scene), cameras)
    if frac < min_fraction:
        raise SceneKDError(f"{layout} capture: the cameras do not match the scene's frame - only {100 * frac:.1f}% "
                           f"of its points fall inside any of the {len(cameras)} photos (need "
                           f"{100 * min_fraction:.0f}%); is the scene in another frame (e.g. nerfstudio's "
                           "dataparser_transforms.json / applied_transform, or a different COLMAP model)?")
    return frac


def _central_points(scene: Any):
    """[n, 3] float32 tensor: the scene's points inside its 1-99 % bounds (all of up to 1000), up to 20k sampled."""
    import torch

    xyz = np.asarray(scene.xyz, np.float32)
    if len(xyz) > 1000:
        lo, hi = np.percentile(xyz, [1, 99], axis=0)
        xyz = xyz[((xyz >= lo) & (xyz <= hi)).all(1)]
    xyz = xyz[:: max(1, len(xyz) // 20_000)]
    return torch.from_numpy(np.ascontiguousarray(xyz))


def seen_fraction(points: Any, cameras: list[Camera]) -> float:
    """Fraction of ``points`` ([n, 3] float32 tensor, local frame) that project in front of and inside at least
    one camera's image (0 for no points)."""
    import torch

    seen = torch.zeros(len(points), dtype=torch.bool)
    for cam in cameras:
        uv, z = project_points(points, cam)
        seen |= pixel_index(uv, z, cam.width, cam.height) >= 0
    return float(seen.float().mean()) if len(seen) else 0.0


def choose_frame(scene: Any, candidates: dict[str, list[Camera]], expected: str, *, layout: str = "capture") -> str:
    """The candidate frame whose cameras see ``scene``: ``expected`` unless it sees less than
    ``MIN_SEEN_FRACTION`` of the central points or ``FRAME_MARGIN`` less than the best candidate, then the best
    (a warning names both). With one candidate, that one (nothing projected)."""
    if len(candidates) == 1:
        return next(iter(candidates))
    pts = _central_points(scene)
    seen = {name: seen_fraction(pts, cams) for name, cams in candidates.items()}
    best = max(seen, key=lambda n: (seen[n], n == expected))
    shown = ", ".join(f"{n} {100 * f:.0f}%" for n, f in seen.items())
    if seen[expected] >= MIN_SEEN_FRACTION and seen[expected] >= seen[best] - FRAME_MARGIN:
        log.info("%s capture: scene in the %s frame, as expected (scene points seen: %s)", layout, expected, shown)
        return expected
    log.warning("%s capture: the scene is not in the %s frame its file suggests; its cameras see it in the %s "
                "frame (scene points seen: %s)", layout, expected, best, shown)
    return best


# ---- layouts ----------------------------------------------------------------------------------------------


def _find_image(folder: Path, name: str) -> Path:
    p = folder / name
    if p.suffix and p.is_file():
        return p
    for ext in IMAGE_EXTS:
        q = folder / f"{name}{ext}"
        if q.is_file():
            return q
    return p


def _top_scene_file(root: Path) -> Path | None:
    files = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in SCENE_EXTS)
    files = [p for p in files if p.name != "points3D.ply"] or files
    named = [p for p in files if p.stem == "scene"]
    if named:
        return named[0]
    return files[0] if len(files) >= 1 else None


def _inria(root: Path):
    its = sorted(root.glob("point_cloud/iteration_*/point_cloud.ply"),
                 key=lambda p: int(re.sub(r"\D", "", p.parent.name) or 0))
    try:
        entries = json.loads((root / "cameras.json").read_text())
        if not isinstance(entries, list) or not entries:
            raise ValueError("expected a non-empty list")
    except (OSError, ValueError) as e:
        raise SceneFormatError(f"unreadable cameras.json ({e})", path=root / "cameras.json") from None
    images = root / "images"
    if not images.is_dir() and (root / "cfg_args").is_file():
        m = re.search(r"source_path='([^']*)'", (root / "cfg_args").read_text())
        if m:
            images = Path(m.group(1)) / "images"

    def read(scene: Any, scene_path: Path | None):
        origin = np.asarray(scene.origin, np.float64)
        cams, photos = [], []
        for e in sorted(entries, key=lambda e: str(e.get("img_name", ""))):
            try:
                c2w = np.eye(4)
                c2w[:3, :3] = np.asarray(e["rotation"], np.float64)
                c2w[:3, 3] = np.asarray(e["position"], np.float64) - origin
                w, h = int(e["width"]), int(e["height"])
                K = np.array([[float(e["fx"]), 0, w / 2], [0, float(e["fy"]), h / 2], [0, 0, 1]])
            except (KeyError, TypeError, ValueError) as err:
                raise SceneFormatError(f"cameras.json: bad entry ({err})", path=root / "cameras.json") from None
            cams.append(Camera(K=K, world_to_cam=np.linalg.inv(c2w), width=w, height=h, name=str(e["img_name"])))
            photos.append(_find_image(images, str(e["img_name"])))
        return cams, photos, {}

    return its[-1], read


def nerfstudio_cameras(tj: Path, scene: Any, *, is_ply: bool = False, meta: dict[str, Any] | None = None
                       ) -> tuple[list[Camera], str, dict[str, np.ndarray]]:
    """The cameras of nerfstudio's ``tj`` (transforms.json) in the frame ``scene`` is in: each frame of
    :func:`scene_kd.scene.nerfstudio.frame_transforms` is a candidate, the one :func:`choose_frame` picks wins
    (``is_ply``: the scene is transforms.json's own ``ply_file_path``; ``meta``: its parsed JSON, when the caller
    has it). Returns (cameras, frame name, the candidate transforms). SceneFormatError for an unreadable file."""

    if meta is None:
        try:
            meta = json.loads(Path(tj).read_text())
        except (OSError, ValueError) as e:
            raise SceneFormatError(f"unreadable transforms.json ({e})", path=tj) from None
    transforms = frame_transforms(Path(tj).parent, meta)
    raw = load_transforms_json(tj)  # transforms.json's frame, world coordinates
    origin = np.asarray(scene.origin, np.float64)
    candidates = {name: cameras_in_frame(raw, M, origin) for name, M in transforms.items()}
    frame = choose_frame(scene, candidates, expected_frame(transforms, is_ply), layout="nerfstudio")
    return candidates[frame], frame, transforms


def _nerfstudio(root: Path):
    tj = root / "transforms.json"
    try:
        meta = json.loads(tj.read_text())
        frames = meta["frames"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SceneFormatError(f"unreadable transforms.json ({e})", path=tj) from None
    ply_file = root / meta["ply_file_path"] if meta.get("ply_file_path") else None
    scene_path = ply_file if ply_file is not None and ply_file.is_file() else None
    for cand in (root / "exports" / "splat" / "splat.ply", root / "splat.ply"):
        if scene_path is None and cand.is_file():
            scene_path = cand
    scene_path = scene_path or _top_scene_file(root)

    def read(scene: Any, path: Path | None):
        is_ply = path is not None and ply_file is not None and path.resolve() == ply_file.resolve()
        cameras, frame, transforms = nerfstudio_cameras(tj, scene, is_ply=is_ply, meta=meta)
        extra: dict[str, Any] = {"frame": frame}
        if frames and frames[0].get("depth_file_path"):
            extra["depths"] = [root / f["depth_file_path"] for f in frames]
            extra["depth_scale"] = float(meta.get("depth_unit_scale_factor", 0.001)) * frame_scale(transforms[frame])
        return cameras, [root / f["file_path"] for f in frames], extra

    return scene_path, read


def _nerf_synthetic(root: Path):
    splits = [root / f"transforms_{s}.json" for s in ("train", "val", "test")]
    splits = [p for p in splits if p.is_file()]

    def read(scene: Any, scene_path: Path | None):
        origin = np.asarray(scene.origin, np.float64)
        cams, photos = [], []
        for sp in splits:
            meta = json.loads(sp.read_text())
            for i, frame in enumerate(meta.get("frames") or []):
                photo = _find_image(root, str(frame["file_path"]).removeprefix("./"))
                if "w" not in meta and "w" not in frame:
                    from PIL import Image

                    with Image.open(photo) as im:
                        meta["w"], meta["h"] = im.size
                try:
                    cam = frame_camera(frame, meta, sp, origin)
                except (KeyError, TypeError, ValueError) as e:
                    raise SceneFormatError(f"frame {i}: missing or bad field ({e})", path=sp) from None
                cams.append(cam)
                photos.append(photo)
        return cams, photos, {}

    return _top_scene_file(root), read


def _colmap(root: Path):
    def read(scene: Any, scene_path: Path | None):
        cams = load_colmap_cameras(root, origin=np.asarray(scene.origin, np.float64))
        return cams, [root / "images" / c.name for c in cams], {}

    return _top_scene_file(root), read


def _label_images(root: Path, photos: list[Path]) -> tuple[list[Path | None] | None, dict[int, str]]:
    folder = root / "labels"
    if not folder.is_dir():
        return None, {}
    paths: list[Path | None] = [folder / f"{p.stem}.png" for p in photos]
    paths = [p if p is not None and p.is_file() else None for p in paths]
    if not any(paths):
        return None, {}
    names: dict[int, str] = {}
    if (root / "labels.json").is_file():
        try:
            names = {int(k): str(v) for k, v in json.loads((root / "labels.json").read_text()).items()}
        except (OSError, ValueError, AttributeError) as e:
            raise SceneFormatError(f"labels.json must map class id -> name ({e})", path=root / "labels.json") from None
    return paths, names


def read_label_image(path: Path) -> np.ndarray:
    """[H, W] int32 class ids of a label PNG (8/16-bit greyscale); the dtype's maximum -> -1 (unlabelled)."""
    from PIL import Image

    with Image.open(path) as im:
        a = np.asarray(im)
    if a.ndim != 2:
        raise SceneFormatError("a label image must be single-channel (8- or 16-bit greyscale)", path=path)
    top = 255 if a.dtype == np.uint8 else 65535
    out = a.astype(np.int32)
    out[out == top] = -1
    return out
