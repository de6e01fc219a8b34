"""``make_tabletop_capture``: a synthetic capture folder - the tabletop as a scene file, photos from orbit
cameras, label images, depth images, and the cameras as nerfstudio transforms.json AND COLMAP text.

The photos are not renders of the scene file: they show the *dense* labelled tabletop (``points`` points, the
"real world"; ``photo_source`` "gaussians": one Gaussian per point drawn by the Gaussian rasterizer, or
"points": the z-buffer point renderer, fast, the default of the RGB-D variant) with a photometric change the
scene's own colours do not have (gain per channel ``lighting``: brighter and warmer by default), a Gaussian blur
(``blur_sigma`` px) and sensor noise (``noise_std`` grey levels), like photos taken under other light. Label and
depth images come from the same render (the top-weight Gaussian's / nearest point's class). The scene file is the same tabletop as 3DGS
Gaussians (``as_splats``, optionally only ``scene_gaussians`` of them, and/or each at least ``scene_blur`` metres
wide along the surface - an under-trained splat, whose renders are blurred - so the photos show detail the scene
lacks) or, with ``rgbd=True``, as the point cloud (the RGB-D variant; depth images are written either way, and
transforms.json frames carry ``depth_file_path`` only for the RGB-D variant).

Folder (conventions of scene_kd/scene/capture.py)::

    scene.ply  scene.objects.json   the scene (3DGS PLY or point cloud) and the tabletop's object boxes
    images/frame_NNNN.png           photos (RGB, width x height)
    labels/frame_NNNN.png           class ids (uint8, 255 = nothing), labels.json {id: name}
    depth/frame_NNNN.png            depth, uint16 millimetres (0 = nothing)
    transforms.json                 nerfstudio: OpenGL camera-to-world, per-frame fl_x/fl_y/cx/cy/w/h
    sparse/0/{cameras,images,points3D}.txt   the same cameras as COLMAP text (PINHOLE, world-to-camera)

``distortion`` (a COLMAP model and its distortion parameters, e.g. ``("SIMPLE_RADIAL", (-0.3,))``,
``("OPENCV", (k1, k2, p1, p2))``, ``("OPENCV_FISHEYE", (k1, k2, k3, k4))``): the photos, label and depth images
are rendered through a wider pinhole (``covering_pinhole``) and distorted with OpenCV (scene_kd/scene/lens.py
``distort_image``) as that lens would take them, and both camera files carry the model (transforms.json
``camera_model`` + k1..k4, p1, p2), for tests of undistortion.

Cameras are in the scene's world frame (origin + local).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from scene_kd.errors import SceneKDError
from scene_kd.render.config import RenderConfig
from scene_kd.render.points import estimate_point_radii
from scene_kd.render.stage import render_gaussian_view, render_point_view
from scene_kd.render.views import plan_views
from scene_kd.runio import write_json
from scene_kd.scene.io import save_scene
from scene_kd.scene.synthetic.labels import TABLETOP_CLASSES
from scene_kd.scene.synthetic.splats import as_splats
from scene_kd.scene.synthetic.tabletop import make_tabletop
from scene_kd.scene.types import Camera

DEFAULT_LIGHTING = (1.15, 1.02, 0.82)
"""Per-channel gain of the photos (brighter, warmer light than the scene's colours)."""
OPENGL_TO_OPENCV = np.diag([1.0, -1.0, -1.0, 1.0])


def orbit_cameras(scene: Any, views: int, width: int, height: int) -> list[Camera]:
    """``views`` cameras spread evenly over the render stage's two-radius orbit preset of ``scene``."""

    cams = plan_views(scene, RenderConfig(preset="orbit", width=width, height=height, levels=2))
    pick = np.unique(np.linspace(0, len(cams) - 1, min(views, len(cams))).round().astype(int))
    return [cams[i] for i in pick]


def photometric(rgb: np.ndarray, rng: np.random.Generator, *, lighting=DEFAULT_LIGHTING, blur_sigma: float = 0.7,
                noise_std: float = 2.5) -> np.ndarray:
    """[H, W, 3] uint8 -> the same view under other light: gain per channel, blur (px), noise (grey levels)."""
    from scipy.ndimage import gaussian_filter

    x = rgb.astype(np.float64) * np.asarray(lighting, np.float64)
    if blur_sigma > 0:
        x = gaussian_filter(x, sigma=(blur_sigma, blur_sigma, 0))
    x += rng.normal(0.0, noise_std, x.shape)
    return np.clip(x + 0.5, 0, 255).astype(np.uint8)


def _quat_wxyz(R: np.ndarray) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    x, y, z, w = Rotation.from_matrix(R).as_quat()
    return np.array([w, x, y, z])


_NS_KEYS = {"SIMPLE_RADIAL": ("k1",), "RADIAL": ("k1", "k2"), "OPENCV": ("k1", "k2", "p1", "p2"),
            "OPENCV_FISHEYE": ("k1", "k2", "k3", "k4")}
"""The transforms.json keys of each COLMAP model's distortion parameters (in COLMAP's order)."""


def write_cameras(out: Path, cameras: list[Camera], origin: np.ndarray, names: list[str],
                  depth_names: list[str] | None = None,
                  distortion: tuple[str, tuple[float, ...]] | None = None) -> None:
    """transforms.json (OpenGL c2w, per-frame intrinsics) and sparse/0/*.txt (COLMAP PINHOLE, or the
    ``distortion`` model with its parameters) in world coords."""
    model, extra = distortion if distortion is not None else ("PINHOLE", ())
    if model not in ("PINHOLE", *_NS_KEYS):
        raise SceneKDError(f"distortion model {model} is not one of {', '.join(_NS_KEYS)}")
    origin = np.asarray(origin, np.float64)
    frames = []
    cam_lines, img_lines = [], []
    for k, (cam, name) in enumerate(zip(cameras, names, strict=True)):
        c2w = np.linalg.inv(cam.world_to_cam)
        c2w[:3, 3] += origin
        fx, fy, cx, cy = (float(v) for v in (cam.K[0, 0], cam.K[1, 1], cam.K[0, 2], cam.K[1, 2]))
        frame = {"file_path": name, "transform_matrix": (c2w @ OPENGL_TO_OPENCV).tolist(),
                 "fl_x": fx, "fl_y": fy, "cx": cx, "cy": cy, "w": cam.width, "h": cam.height,
                 **dict(zip(_NS_KEYS.get(model, ()), (float(v) for v in extra), strict=True))}
        if depth_names is not None:
            frame["depth_file_path"] = depth_names[k]
        frames.append(frame)
        R = cam.world_to_cam[:3, :3]
        t = cam.world_to_cam[:3, 3] - R @ origin
        q = _quat_wxyz(R)
        intr = (fx, cx, cy) if model in ("SIMPLE_RADIAL", "RADIAL") else (fx, fy, cx, cy)  # one-focal models
        params = " ".join(repr(float(v)) for v in (*intr, *extra))
        cam_lines.append(f"{k + 1} {model} {cam.width} {cam.height} {params}")
        img_lines.append(" ".join([str(k + 1), *(repr(float(v)) for v in (*q, *t)), str(k + 1),
                                   Path(name).name]))
        img_lines.append("")
    meta: dict[str, Any] = {"camera_model": "OPENCV_FISHEYE" if model == "OPENCV_FISHEYE" else "OPENCV",
                            "frames": frames}
    if depth_names is not None:
        meta["depth_unit_scale_factor"] = 0.001
    (out / "transforms.json").write_text(json.dumps(meta, indent=1))
    sparse = out / "sparse" / "0"
    sparse.mkdir(parents=True, exist_ok=True)
    (sparse / "cameras.txt").write_text("# CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]\n" + "\n".join(cam_lines) + "\n")
    (sparse / "images.txt").write_text("# IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME\n"
                                       "# POINTS2D[] as (X, Y, POINT3D_ID)\n" + "\n".join(img_lines) + "\n")
    (sparse / "points3D.txt").write_text("# POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[]\n")


def make_tabletop_capture(out: str | Path, *, seed: int = 0, views: int = 12, width: int = 256, height: int = 192,
                          points: int = 60_000, scene_gaussians: int | None = None,
                          scene_blur: float | None = None, rgbd: bool = False,
                          photo_source: str | None = None,
                          lighting=DEFAULT_LIGHTING, blur_sigma: float = 0.7,
                          noise_std: float = 2.5,
                          distortion: tuple[str, tuple[float, ...]] | None = None) -> dict[str, Any]:
    """Write the tabletop capture folder described in the module docstring to ``out``; a summary dict
    {"out", "scene", "scene_kind", "views", "width", "height", "objects"}. SceneKDError for bad sizes or an
    ``out`` that is a file."""
    import torch
    from PIL import Image

    out = Path(out)
    if views < 1 or width < 8 or height < 8:
        raise SceneKDError(f"a capture needs views >= 1 and images >= 8 px, got {views} views of {width}x{height}")
    if scene_blur is not None and not (np.isfinite(scene_blur) and scene_blur > 0):
        raise SceneKDError(f"scene_blur must be a positive number of metres, got {scene_blur}")
    if out.exists() and not out.is_dir():
        raise SceneKDError("exists and is not a folder", path=out)
    for sub in ("images", "labels", "depth"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    photo_source = photo_source or ("points" if rgbd else "gaussians")
    if photo_source not in ("points", "gaussians"):
        raise SceneKDError(f"photo_source must be 'points' or 'gaussians', got {photo_source!r}")
    pc, sidecar = make_tabletop(seed=seed, points=points)
    dense = as_splats(pc, seed=seed) if photo_source == "gaussians" or not rgbd else None
    rng = np.random.default_rng(seed + 7919)
    cameras = orbit_cameras(pc, views, width, height)
    xyz = torch.from_numpy(np.ascontiguousarray(pc.xyz, np.float32))
    radius = estimate_point_radii(xyz) if photo_source == "points" else 0.0
    tensors = {} if dense is None else {n: torch.from_numpy(np.asarray(getattr(dense, n), dtype=np.float32))
                                         for n in ("means", "quats", "log_scales", "opacity_logits", "sh")}
    cfg = RenderConfig(width=width, height=height)
    names, depth_names = [], []
    dist = None
    if distortion is not None:
        from scene_kd.scene.lens import colmap_distortion, covering_pinhole, distort_image

        model, extra = distortion
        if model in ("SIMPLE_RADIAL", "RADIAL") and not np.isclose(cameras[0].K[0, 0], cameras[0].K[1, 1]):
            raise SceneKDError(f"{model} needs square pixels (fx = fy)")
        dist = colmap_distortion(model, list(extra))
    for k, cam in enumerate(cameras):
        lens, seen = None, cam
        if dist is not None:  # render a wider pinhole, then bend it as the lens would
            bent = Camera(K=cam.K, world_to_cam=cam.world_to_cam, width=cam.width, height=cam.height,
                          distortion=dist)
            seen = covering_pinhole(bent)
            lens = lambda a, nearest=False, fill=0, bent=bent, seen=seen: distort_image(  # noqa: E731
                a, bent, pinhole=seen, nearest=nearest, fill=fill)
        if photo_source == "points":
            r = render_point_view(pc, seen, cfg, xyz, radius)
        else:
            r = render_gaussian_view(dense, seen, cfg, tensors)
        name = f"frame_{k:04d}.png"
        rgb = r.rgb if lens is None else lens(r.rgb)  # the lens bends the light before the sensor adds noise
        Image.fromarray(photometric(rgb, rng, lighting=lighting, blur_sigma=blur_sigma,
                                    noise_std=noise_std)).save(out / "images" / name)
        lab = np.where(r.labels >= 0, r.labels, 255).astype(np.uint8)
        lab = lab if lens is None else lens(lab, nearest=True, fill=255)
        Image.fromarray(lab).save(out / "labels" / name)
        mm = np.where(np.isfinite(r.depth), np.round(r.depth * 1000.0), 0).clip(0, 65535).astype(np.uint16)
        mm = mm if lens is None else lens(mm, nearest=True, fill=0)
        Image.fromarray(mm).save(out / "depth" / name)
        names.append(f"images/{name}")
        depth_names.append(f"depth/{name}")
    write_cameras(out, cameras, pc.origin, names, depth_names if rgbd else None, distortion)
    write_json(out / "labels.json", {str(k): v for k, v in TABLETOP_CLASSES.items()})
    if rgbd:
        scene = pc
    elif (scene_gaussians is None or scene_gaussians >= len(pc)) and scene_blur is None:
        scene = dense
    else:
        scene = as_splats(pc, seed=seed, max_gaussians=scene_gaussians)
        if scene_blur is not None:  # tangential std-devs floored at scene_blur; the normal axis grows alike
            floor = np.log(float(scene_blur))
            grow = np.maximum(floor - scene.log_scales[:, :2].min(1), 0.0)
            scene.log_scales[:, :2] = np.maximum(scene.log_scales[:, :2], floor)
            scene.log_scales[:, 2] += grow
    save_scene(scene, out / "scene.ply")
    write_json(out / "scene.objects.json", sidecar)
    return {"out": str(out), "scene": str(out / "scene.ply"), "scene_kind": scene.kind, "count": len(scene),
            "views": len(cameras), "width": width, "height": height, "objects": str(out / "scene.objects.json")}
