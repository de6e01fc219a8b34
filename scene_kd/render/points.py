"""Point rendering: projection, a vectorised torch z-buffer with per-point footprints, and the occlusion test.

Conventions (shared with the Gaussian rasterizer and every consumer of renders):
camera frame is OpenCV (x right, y down, z forward); ``u = fx * x / z + cx`` is the column and
``v = fy * y / z + cy`` the row, both continuous, so pixel (row, col) = (floor(v), floor(u)) covers
``[col, col + 1) x [row, row + 1)`` and its centre is at ``(col + 0.5, row + 0.5)`` (as in gsplat).
Flat pixel index = ``row * W + col``.

The z-buffer packs (depth, id) into one int64 key: the IEEE bits of a positive float32 depth order like the
depth itself, so ``key = depth_bits << 32 | id`` and a scatter ``amin`` keeps, per pixel, the nearest point
(ties broken by the smaller id). Chunks of points reduce into the same buffer, so chunked == unchunked exactly.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from scene_kd.errors import SceneKDError
from scene_kd.render import native
from scene_kd.render.types import Render
from scene_kd.scene.projection import (  # the camera math, shared with scene/ (capture framing)
    NEAR,
    _as_xyz,
    _check_camera,
    _pixel_of,
    _project_rows,
    pixel_index,  # noqa: F401 - re-exported: the renderer's public projection API
    project_points,  # noqa: F401
    projection_matrix,
)
from scene_kd.scene.types import Camera

EMPTY_KEY = torch.iinfo(torch.int64).max
MAX_FOOTPRINT_PX = 8.0
"""Largest footprint radius in pixels (points right in front of a camera would otherwise cover the image)."""


def visible_in_view(
    xyz: Tensor | np.ndarray,
    camera: Camera,
    depth_image: Tensor | np.ndarray,
    *,
    tolerance: float = 0.25,
    border_px: int = 10,
) -> tuple[Tensor, Tensor]:
    """OpenScene occlusion test: which points [N, 3] does this view see, and at which pixel.

    A point is visible when it projects inside the image less ``border_px`` on each side, in front of the
    camera, and ``|depth - depth_image[pixel]| <= tolerance * depth``.
    Returns (visible [N] bool, flat pixel index [N] long = row * W + col, -1 where outside the image).
    """
    depth_image = torch.as_tensor(depth_image, dtype=torch.float32)
    if tuple(depth_image.shape) != (camera.height, camera.width):
        raise SceneKDError(f"depth image is {tuple(depth_image.shape)}, camera is {camera.height}x{camera.width}")
    _check_camera(camera)
    xyz = _as_xyz(xyz)
    u, v, z = _project_rows(xyz, projection_matrix(camera, xyz.device))
    inside, flat = _pixel_of(u, v, z, camera.width, camera.height, border=border_px)
    pix = torch.where(inside, flat, torch.full_like(flat, -1))
    zbuf = depth_image.reshape(-1).to(z.device)[pix.clamp_min(0)]
    visible = inside & ((z - zbuf).abs() <= tolerance * z)
    return visible, pix


def _knn_distance(pts: np.ndarray, queries: np.ndarray, k: int, seed: int = 0) -> tuple[np.ndarray, float]:
    """Distance [Q] from each query to its k-th nearest point (itself excluded), and the density scale used
    (kd-tree over at most 2M points; a subset of M of N scales distances by sqrt(M / N): surface sampling)."""
    from scipy.spatial import cKDTree

    n = len(pts)
    tree_pts, scale = pts, 1.0
    if n > 2_000_000:
        m = 2_000_000
        tree_pts = pts[np.random.default_rng(seed).choice(n, m, replace=False)]
        scale = math.sqrt(m / n)
    dist, _ = cKDTree(tree_pts).query(queries, k=k + 1)
    return dist[:, k] * scale, scale


def estimate_point_radius(xyz: Tensor | np.ndarray, *, sample: int = 20000, k: int = 4, seed: int = 0) -> float:
    """One world radius [scene units] for hole-free surfaces: 1.3 x the median distance to the k-th neighbour
    (over a random sample of the points). For Poisson-sampled surfaces the k=4 median distance d satisfies
    density * pi * d^2 ~ 3.7, so a disc of 1.3 d holds ~6 points on average: < 0.3 % of pixel centres uncovered."""
    pts = np.asarray(torch.as_tensor(xyz).detach().cpu().numpy(), dtype=np.float32)
    if len(pts) < k + 1:
        return 0.0
    rng = np.random.default_rng(seed)
    d, _ = _knn_distance(pts, pts[rng.choice(len(pts), min(sample, len(pts)), replace=False)], k, seed)
    d = d[np.isfinite(d) & (d > 0)]
    return float(1.3 * np.median(d)) if len(d) else 0.0


def estimate_point_radii(xyz: Tensor | np.ndarray, *, k: int = 4, factor: float = 1.3, max_points: int = 4_000_000,
                         seed: int = 0) -> Tensor:
    """Per-point world radii [N] float32: ``factor`` x the distance to the k-th neighbour, clamped to
    [0.5, 3] x its median, so sparse surfaces (roofs, far walls) render hole-free as well as dense ground.
    Above ``max_points`` points a single radius (:func:`estimate_point_radius`) is used for all."""
    pts = np.asarray(torch.as_tensor(xyz).detach().cpu().numpy(), dtype=np.float32)
    n = len(pts)
    if n < k + 1:
        return torch.zeros(n)
    if n > max_points:
        return torch.full((n,), estimate_point_radius(pts, k=k, seed=seed))
    d, _ = _knn_distance(pts, pts, k, seed)
    finite = np.isfinite(d) & (d > 0)
    med = float(np.median(d[finite])) if finite.any() else 0.0
    d = np.where(finite, d, med)
    return torch.from_numpy((factor * np.clip(d, 0.5 * med, 3.0 * med)).astype(np.float32))


def _offsets(max_radius: float) -> tuple[Tensor, Tensor, Tensor]:
    """Integer pixel offsets within a disc, nearest first: (dx [M], dy [M], squared distance [M])."""
    r = int(math.floor(max_radius))
    d = torch.arange(-r, r + 1)
    dy, dx = torch.meshgrid(d, d, indexing="ij")
    d2 = (dx * dx + dy * dy).reshape(-1)
    keep = d2 <= max_radius * max_radius + 1e-6
    dx, dy, d2 = dx.reshape(-1)[keep], dy.reshape(-1)[keep], d2[keep]
    order = torch.argsort(d2, stable=True)
    return dx[order], dy[order], d2[order].float()


def zbuffer_points(
    xyz: Tensor | np.ndarray,
    camera: Camera,
    *,
    point_radius: float | Tensor = 0.0,
    point_size_px: float = 0.0,
    chunk: int = 2_000_000,
    max_footprint_px: float = MAX_FOOTPRINT_PX,
    compile: bool | None = None,
    backend: str = "auto",
    threads: int | None = None,
) -> Tensor:
    """The packed z-buffer [H * W] int64 (``depth_bits << 32 | id``, EMPTY_KEY where empty).

    Footprint: with ``point_size_px`` (a diameter) every pixel at integer offset (dx, dy) from the point's pixel with
    dx^2 + dy^2 <= (size / 2)^2; else a disc of ``fx * point_radius / depth`` pixels (radius may be a per-point [N]
    tensor) around the projected position, covering the pixels whose centres it contains. Radii are clamped to
    ``max_footprint_px``; a point always covers its own pixel.
    ``compile``: fuse the single-pixel projection + key packing with ``torch.compile`` (None: when a chunk has
    >= 1M points; falls back to eager if compilation fails; SCENE_KD_NO_COMPILE=1 disables it).
    ``backend``: ``"native"`` (the C loop in zbuffer.c, CPU only, one pass per point, threads on slices of the
    points), ``"torch"`` (this module's vectorised reference, any device), ``"auto"`` (native for CPU tensors when
    it builds, else torch). Both give the same buffer up to float rounding at pixel edges.
    ``threads``: native threads (default ``torch.get_num_threads()``).
    Raises SceneKDError for a zero-size camera, bad points, 2^32 points or more, an unknown or unusable backend.

    Steps: :func:`_footprint` -> :func:`_use_native` -> :func:`_zbuffer_native` or :func:`_zbuffer_torch`
    (per chunk: single pixels, :func:`_splat_fixed_disc` or :func:`_splat_world_discs`).
    """
    _check_camera(camera)
    xyz = _as_xyz(xyz)
    if len(xyz) >= 2**32:
        raise SceneKDError("more than 2^32 points in one render; split the scene into tiles")
    fp = _footprint(camera, point_radius, point_size_px, max_footprint_px)
    P = projection_matrix(camera, xyz.device)
    if _use_native(backend, xyz, camera):
        return _zbuffer_native(xyz, P, camera, fp, threads)
    return _zbuffer_torch(xyz, P, camera, fp, chunk, compile)


@dataclass
class _Footprint:
    """How each point covers pixels: ``single`` (its own pixel), a fixed disc of ``fixed_r`` pixels, or a disc of
    ``fx * radius / depth`` pixels (``radius`` a float or a per-point [N] tensor), clamped to ``max_px``."""

    single: bool
    fixed_r: float | None
    radius: float | Tensor
    per_point: bool
    fx: float
    max_px: float


def _footprint(camera: Camera, point_radius: float | Tensor, point_size_px: float, max_px: float) -> _Footprint:
    per_point = isinstance(point_radius, Tensor) and point_radius.ndim == 1
    world_radius = per_point or float(point_radius) > 0
    fixed_r = min(point_size_px / 2.0, max_px) if point_size_px > 0 else None
    single = fixed_r is None and not world_radius or fixed_r is not None and fixed_r < 1.0
    return _Footprint(single, fixed_r, point_radius, per_point, float(camera.K[0, 0]), max_px)


def _use_native(backend: str, xyz: Tensor, camera: Camera) -> bool:
    """Whether the native C loop renders: ``auto`` on CPU tensors when it builds and the image has < 2^31 pixels
    (the C loop indexes pixels with int32); ``native`` where it cannot run is an error."""
    if backend not in ("auto", "native", "torch"):
        raise SceneKDError(f"unknown z-buffer backend {backend!r} (auto, native or torch)")
    if backend != "torch" and xyz.device.type == "cpu":
        from scene_kd.render import native

        if native.available() and camera.width * camera.height < 2**31:
            return True
        if backend == "native":
            raise SceneKDError("the native z-buffer is unavailable (no C compiler?); use backend='torch'")
    elif backend == "native":
        raise SceneKDError("the native z-buffer runs on CPU tensors only")
    return False


def _zbuffer_native(xyz: Tensor, P: Tensor, camera: Camera, fp: _Footprint, threads: int | None) -> Tensor:
    W, H = camera.width, camera.height
    mode = native.MODE_SINGLE if fp.single else native.MODE_FIXED_DISC if fp.fixed_r is not None else native.MODE_WORLD_RADIUS
    zbuf = native.zbuffer(xyz, P, W, H, near=NEAR, mode=mode, fixed_radius_px=fp.fixed_r or 0.0,
                          radii=fp.radius if fp.per_point else None,
                          radius=0.0 if fp.per_point else float(fp.radius), fx=fp.fx,
                          max_footprint_px=fp.max_px, threads=threads)
    return zbuf[: H * W]


def _zbuffer_torch(xyz: Tensor, P: Tensor, camera: Camera, fp: _Footprint, chunk: int, compile: bool | None) -> Tensor:
    """The vectorised torch reference, ``chunk`` points at a time."""
    W, H = camera.width, camera.height
    zbuf = torch.full((H * W + 1,), EMPTY_KEY, dtype=torch.int64, device=xyz.device)  # last slot: discard
    for start in range(0, len(xyz), chunk):
        stop = min(start + chunk, len(xyz))
        if fp.single:
            _splat_single_fn(stop - start, compile)(xyz[start:stop], P, W, H, start, zbuf)
            continue
        u, v, z = _project_rows(xyz[start:stop], P)
        ids = torch.arange(start, stop, device=xyz.device)
        key = (z.view(torch.int32).to(torch.int64) << 32) | ids
        in_front = z > NEAR
        key = torch.where(in_front, key, EMPTY_KEY)
        col = torch.floor(u.clamp(-1e6, 1e6)).to(torch.int64)  # may lie outside: offsets can bring it back in
        row = torch.floor(v.clamp(-1e6, 1e6)).to(torch.int64)
        if fp.fixed_r is not None:
            _splat_fixed_disc(zbuf, key, col, row, fp.fixed_r, W, H)
        else:
            rad = fp.radius[start:stop].to(z) if fp.per_point else float(fp.radius)
            r2 = torch.where(in_front, (fp.fx * rad / z).clamp(0.0, fp.max_px), 0.0).square()
            _splat_world_discs(zbuf, key, col, row, u - col, v - row, r2, W, H)
    return zbuf[: H * W]


def _splat_fixed_disc(zbuf: Tensor, key: Tensor, col: Tensor, row: Tensor, radius: float, W: int, H: int) -> None:
    """Every pixel at an integer offset within ``radius`` of the point's pixel."""
    for dx, dy, _ in zip(*_offsets(radius), strict=True):
        _scatter_offset(zbuf, key, col, row, int(dx), int(dy), W, H, H * W)


def _splat_world_discs(zbuf: Tensor, key: Tensor, col: Tensor, row: Tensor, fu: Tensor, fv: Tensor, r2: Tensor,
                       W: int, H: int) -> None:
    """Discs of squared pixel radius ``r2`` [N] around the projected positions (pixel + fraction ``fu``, ``fv`` in
    [0, 1)), covering the pixels whose centres they contain."""
    dump = H * W
    max_r = math.sqrt(float(r2.max()))
    if max_r < 0.5:
        _scatter_offset(zbuf, key, col, row, 0, 0, W, H, dump)
        return
    # sort by r so each offset only looks at the prefix of points whose disc can reach it at all
    offsets = list(zip(*_disc_offsets(max_r), strict=True))
    sort = len(offsets) > 9  # small discs: masks over all points beat a sort
    if sort:
        order = torch.argsort(r2, descending=True)
        key, col, row, r2, fu, fv = key[order], col[order], row[order], r2[order], fu[order], fv[order]
    neg_r2 = -r2  # ascending when sorted, for searchsorted
    for dx, dy, reach2 in offsets:
        n = len(key) if reach2 == 0 or not sort else int(torch.searchsorted(neg_r2, -float(reach2), right=True))
        if n == 0:
            continue
        k = key[:n]
        if dx or dy:
            d2 = (dx + 0.5 - fu[:n]).square() + (dy + 0.5 - fv[:n]).square()
            k = torch.where(d2 <= r2[:n], k, EMPTY_KEY)
        _scatter_offset(zbuf, k, col[:n], row[:n], int(dx), int(dy), W, H, dump)


def _pixel_keys(xyz: Tensor, P: Tensor, W: int, H: int, start: int) -> tuple[Tensor, Tensor]:
    """(flat pixel [N] long, H * W where outside / behind; packed key [N] int64) for single-pixel splats."""
    u, v, z = _project_rows(xyz, P)
    inside, flat = _pixel_of(u, v, z, W, H)
    key = (z.view(torch.int32).to(torch.int64) << 32) | torch.arange(start, start + xyz.shape[0], device=xyz.device)
    return torch.where(inside, flat, H * W), key


def _splat_single(xyz: Tensor, P: Tensor, W: int, H: int, start: int, zbuf: Tensor) -> None:
    """Single-pixel splats of ``xyz`` into the packed z-buffer ``zbuf`` [H * W + 1] in place (nearest wins)."""
    pix, key = _pixel_keys(xyz, P, W, H, start)
    zbuf.scatter_reduce_(0, pix, key, reduce="amin")


_COMPILED: dict[str, Any] = {}
COMPILE_MIN_POINTS = 1_000_000


def _splat_single_fn(n: int, compile: bool | None):
    """The eager or the torch.compile'd :func:`_splat_single`: compiled, projection, key packing and the
    scatter-min fuse into one loop over the points (atomic min into the z-buffer) instead of ~15 passes."""
    want = (n >= COMPILE_MIN_POINTS) if compile is None else compile
    if not want or os.environ.get("SCENE_KD_NO_COMPILE") == "1" or _COMPILED.get("failed"):
        return _splat_single
    fn = _COMPILED.get("fn")
    if fn is None:
        fn = _COMPILED["fn"] = torch.compile(_splat_single, dynamic=True)

    def guarded(*args):
        try:
            return fn(*args)
        except Exception as e:  # no C++ compiler, unsupported platform, ...
            import logging

            logging.getLogger(__name__).warning("torch.compile unavailable (%s); using eager point projection",
                                                type(e).__name__)
            _COMPILED["failed"] = True
            return _splat_single(*args)

    return guarded


def _disc_offsets(max_radius: float) -> tuple[list[int], list[int], list[float]]:
    """Pixel offsets a disc of radius <= max_radius around a point inside pixel (0, 0) can reach, with the
    smallest squared distance from any position in pixel (0, 0) to the offset pixel's centre (reach order)."""
    R = int(math.floor(max_radius + 0.5))
    out = []
    for dy in range(-R, R + 1):
        for dx in range(-R, R + 1):
            reach2 = max(0.0, abs(dx) - 0.5) ** 2 + max(0.0, abs(dy) - 0.5) ** 2
            if (dx == 0 and dy == 0) or reach2 <= max_radius * max_radius:
                out.append((0.0 if dx == 0 and dy == 0 else reach2, dx, dy))
    out.sort()
    return [o[1] for o in out], [o[2] for o in out], [o[0] for o in out]


def _scatter_offset(zbuf: Tensor, key: Tensor, col: Tensor, row: Tensor, dx: int, dy: int, W: int, H: int, dump: int) -> None:
    c = col + dx if dx else col
    r = row + dy if dy else row
    ok = (c >= 0) & (c < W) & (r >= 0) & (r < H)
    zbuf.scatter_reduce_(0, torch.where(ok, r * W + c, dump), key, reduce="amin")


def decode_zbuffer(zbuf: Tensor, height: int, width: int) -> tuple[Tensor, Tensor]:
    """(depth [H, W] float32 (+inf where empty), ids [H, W] int64 (-1 where empty)) from packed keys."""
    empty = zbuf == EMPTY_KEY
    ids = torch.where(empty, torch.full_like(zbuf, -1), zbuf & 0xFFFFFFFF)
    depth = (zbuf >> 32).to(torch.int32).view(torch.float32)
    depth = torch.where(empty, torch.full_like(depth, float("inf")), depth)
    return depth.reshape(height, width), ids.reshape(height, width)


def height_colors(z: np.ndarray) -> np.ndarray:
    """[N] heights -> [N, 3] float32 in [0, 1]: a blue-green-yellow-white ramp over the 2-98 % range."""
    lo, hi = np.percentile(z, [2, 98]) if len(z) else (0.0, 1.0)
    s = np.clip((z - lo) / max(hi - lo, 1e-6), 0, 1)
    stops = np.array([[0.18, 0.25, 0.55], [0.2, 0.55, 0.45], [0.55, 0.7, 0.3], [0.85, 0.75, 0.45], [0.95, 0.95, 0.95]])
    x = s * (len(stops) - 1)
    i = np.minimum(x.astype(int), len(stops) - 2)
    f = (x - i)[:, None]
    return (stops[i] * (1 - f) + stops[i + 1] * f).astype(np.float32)


def eye_dome_shading(depth: np.ndarray, strength: float = 1.5) -> np.ndarray:
    """Eye-dome lighting [H, W] in (0, 1]: darkens pixels whose neighbours are nearer (edges, creases)."""
    finite = np.isfinite(depth)
    if not finite.any():
        return np.ones_like(depth, dtype=np.float32)
    logd = np.where(finite, np.log(np.maximum(depth, 1e-6)), np.log(np.nanmax(np.where(finite, depth, np.nan))) + 1.0)
    pad = np.pad(logd, 2, mode="edge")
    acc = np.zeros_like(logd)
    H, W = depth.shape
    for dy, dx in ((-2, 0), (2, 0), (0, -2), (0, 2)):
        acc += np.maximum(0.0, logd - pad[2 + dy : 2 + dy + H, 2 + dx : 2 + dx + W])
    return np.exp(-strength * 30.0 * acc / 4.0).astype(np.float32)


def shade_points(
    ids: np.ndarray,
    depth: np.ndarray,
    camera: Camera,
    xyz: np.ndarray,
    *,
    rgb: np.ndarray | None,
    normals: np.ndarray | None,
    background: tuple[int, int, int],
) -> np.ndarray:
    """The [H, W, 3] uint8 colour image of a point render: point colours, else height ramp shaded by normals
    (Lambert, light from the camera) or by eye-dome lighting from the depth image."""
    hit = ids >= 0
    out = np.empty(ids.shape + (3,), dtype=np.uint8)
    out[:] = np.asarray(background, dtype=np.uint8)
    sel = ids[hit]
    if rgb is not None:
        out[hit] = np.asarray(rgb)[sel]
        return out
    col = height_colors(np.asarray(xyz)[:, 2])[sel] if len(sel) else np.zeros((0, 3), np.float32)
    if normals is not None:
        n = np.asarray(normals, dtype=np.float32)[sel]
        view_dir = camera.world_to_cam[2, :3].astype(np.float32)  # camera forward axis in the local frame
        lam = np.abs(n @ view_dir) / np.maximum(np.linalg.norm(n, axis=1), 1e-6)
        col = col * (0.35 + 0.65 * lam[:, None])
    else:
        col = col * eye_dome_shading(depth)[hit][:, None]
    out[hit] = np.clip(col * 255 + 0.5, 0, 255).astype(np.uint8)
    return out


def render_points(
    xyz: Tensor | np.ndarray,
    camera: Camera,
    *,
    rgb: np.ndarray | Tensor | None = None,
    normals: np.ndarray | Tensor | None = None,
    labels: np.ndarray | Tensor | None = None,
    instances: np.ndarray | Tensor | None = None,
    point_radius: float | Tensor = 0.0,
    point_size_px: float = 0.0,
    background: tuple[int, int, int] = (0, 0, 0),
    chunk: int = 2_000_000,
    max_footprint_px: float = MAX_FOOTPRINT_PX,
) -> Render:
    """Render points [N, 3] (local, float32) into one view: nearest point per pixel with a per-point footprint.

    Footprint: ``point_size_px`` (diameter, pixels) when > 0, else the world ``point_radius`` (scalar or [N])
    projected to pixels, else one pixel. Colour: ``rgb`` [N, 3] uint8, else a height ramp shaded by ``normals``
    or by eye-dome lighting. ``labels`` / ``instances`` [N] give label / instance images (-1 where empty).
    """
    xyz = _as_xyz(xyz)
    if len(xyz) == 0:
        raise SceneKDError("cannot render: the scene has no points")
    H, W = camera.height, camera.width
    zbuf = zbuffer_points(xyz, camera, point_radius=point_radius, point_size_px=point_size_px, chunk=chunk,
                          max_footprint_px=max_footprint_px)
    depth_t, ids_t = decode_zbuffer(zbuf, H, W)
    depth = depth_t.cpu().numpy()
    ids = ids_t.cpu().numpy().astype(np.int32)

    def to_np(a):
        return None if a is None else (a.detach().cpu().numpy() if isinstance(a, Tensor) else np.asarray(a))

    rgb_np, normals_np = to_np(rgb), to_np(normals)
    if rgb_np is not None and rgb_np.dtype != np.uint8:
        rgb_np = np.clip(rgb_np * (255.0 if rgb_np.max(initial=0) <= 1.0 else 1.0) + 0.5, 0, 255).astype(np.uint8)
    image = shade_points(ids, depth, camera, xyz.cpu().numpy(), rgb=rgb_np, normals=normals_np, background=background)

    def gather(values) -> np.ndarray | None:
        values = to_np(values)
        if values is None:
            return None
        out = np.full(ids.shape, -1, dtype=np.int32)
        hit = ids >= 0
        out[hit] = values[ids[hit]]
        return out

    return Render(camera=camera, rgb=image, depth=depth, ids=ids, labels=gather(labels), instances=gather(instances))
