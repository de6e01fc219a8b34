"""Point rendering: projection consistency, z-buffer, footprints, chunking, occlusion test, goldens."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from scene_kd.errors import SceneKDError
from scene_kd.render import native
from scene_kd.render.points import (
    decode_zbuffer,
    estimate_point_radii,
    estimate_point_radius,
    pixel_index,
    project_points,
    render_points,
    visible_in_view,
    zbuffer_points,
)
from scene_kd.render.views import intrinsics, look_at
from scene_kd.scene.types import Camera

GOLDEN = Path(__file__).parent / "golden"
REGEN = os.environ.get("SCENE_KD_REGEN_GOLDEN") == "1"


def nadir_camera(width=64, height=48, altitude=20.0, center=(5.0, 5.0)) -> Camera:
    eye = np.array([center[0], center[1], altitude])
    return Camera(K=intrinsics(width, height, 60.0), world_to_cam=look_at(eye, eye - [0, 0, 1.0]),
                  width=width, height=height)


def sparse_points(n=400, seed=0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.uniform([0, 0, 0], [10, 10, 2], size=(n, 3)).astype(np.float32))


def test_projection_matches_pinhole_math():
    cam = nadir_camera()
    xyz = sparse_points(50)
    uv, z = project_points(xyz, cam)
    X = np.c_[xyz.numpy().astype(np.float64), np.ones(50)] @ cam.world_to_cam.T
    expected_u = cam.K[0, 0] * X[:, 0] / X[:, 2] + cam.K[0, 2]
    expected_v = cam.K[1, 1] * X[:, 1] / X[:, 2] + cam.K[1, 2]
    np.testing.assert_allclose(z.numpy(), X[:, 2], rtol=1e-5)
    np.testing.assert_allclose(uv[:, 0].numpy(), expected_u, atol=1e-3)
    np.testing.assert_allclose(uv[:, 1].numpy(), expected_v, atol=1e-3)
    # nadir camera, image up = +y: a point further north is higher in the image (smaller row)
    north = torch.tensor([[5.0, 8.0, 0.0], [5.0, 2.0, 0.0], [8.0, 5.0, 0.0]])
    uv, _ = project_points(north, cam)
    assert uv[0, 1] < uv[1, 1] and uv[2, 0] > cam.width / 2


def test_unoccluded_point_has_its_id_at_its_projected_pixel():
    """Every point that is visible in its own render is found at project_points' pixel (same arithmetic)."""
    cam = nadir_camera(96, 80)
    xyz = sparse_points(300, seed=1)
    render = render_points(xyz, cam)
    uv, z = project_points(xyz, cam)
    pix = pixel_index(uv, z, cam.width, cam.height)
    ids_flat = render.ids.reshape(-1)
    inside = (pix >= 0).numpy()
    hit = ids_flat[pix.numpy()[inside]]
    own = hit == np.flatnonzero(inside)
    # single-pixel splats of sparse points: nearly all own their pixel; the rest lost to a nearer point
    assert own.mean() > 0.9
    lost = np.flatnonzero(inside)[~own]
    assert np.all(render.depth.reshape(-1)[pix.numpy()[lost]] <= z.numpy()[lost])
    vis, vpix = visible_in_view(xyz, cam, render.depth, tolerance=1e-6, border_px=0)
    assert torch.equal(vpix[vis], pix[vis])
    assert vis.numpy()[np.flatnonzero(inside)[own]].all()


@pytest.fixture(params=["torch", "native"])
def backend(request) -> str:
    """Both z-buffer implementations: the torch reference and the C loop (skipped where it cannot be built)."""
    if request.param == "native" and not native.available():
        pytest.skip("native z-buffer unavailable (no C compiler)")
    return request.param


def test_zbuffer_nearest_wins_and_ties_take_smaller_id(backend):
    cam = nadir_camera(32, 32, altitude=10.0)
    # three points on the same ray at different heights, plus a duplicate of the nearest
    xyz = torch.tensor([[5.0, 5.0, 0.0], [5.0, 5.0, 3.0], [5.0, 5.0, 1.0], [5.0, 5.0, 3.0]])
    depth, ids = decode_zbuffer(zbuffer_points(xyz, cam, backend=backend), cam.height, cam.width)
    (row, col), = np.argwhere(ids.numpy() >= 0)
    assert ids[row, col] == 1
    assert float(depth[row, col]) == pytest.approx(7.0, abs=1e-5)
    assert torch.isinf(depth[ids < 0]).all()


def test_chunked_equals_unchunked_with_footprints(backend):
    """Chunks (torch) and thread slices (native) reduce into one buffer: identical to one pass."""
    cam = nadir_camera(64, 48)
    xyz = sparse_points(2000, seed=2)
    radii = torch.from_numpy(np.random.default_rng(0).uniform(0.05, 0.4, 2000).astype(np.float32))
    for kwargs in ({}, {"point_size_px": 3.0}, {"point_radius": 0.3}, {"point_radius": radii}):
        whole = zbuffer_points(xyz, cam, backend=backend, threads=1, **kwargs)
        parts = zbuffer_points(xyz, cam, backend=backend, chunk=333, threads=3, **kwargs)
        assert torch.equal(whole, parts), kwargs


def test_non_finite_points_draw_nothing(backend):
    """NaN / inf rows (a caller that skipped load_scene's cleaning) draw nothing in any footprint mode and leave
    the other points' pixels as they are."""
    cam = nadir_camera(64, 48)
    xyz = sparse_points(400, seed=8)
    bad = xyz.clone()
    bad[::5] = torch.tensor([float("nan"), 1.0, 1.0])
    bad[1::5] = torch.tensor([1.0, float("inf"), 1.0])
    bad[2::5, 2] = float("-inf")
    keep = torch.isfinite(bad).all(1)
    for kwargs in ({}, {"point_size_px": 3.0}, {"point_radius": 0.3}):
        depth, ids = decode_zbuffer(zbuffer_points(bad, cam, backend=backend, **kwargs), cam.height, cam.width)
        assert keep[ids[ids >= 0]].all(), kwargs
        clean_depth, clean_ids = decode_zbuffer(zbuffer_points(xyz[keep], cam, backend=backend, **kwargs),
                                                cam.height, cam.width)
        assert torch.equal(ids >= 0, clean_ids >= 0), kwargs
        assert torch.equal(depth, clean_depth), kwargs


def test_native_threads_split_the_points(monkeypatch):
    """With more than one thread the native path splats slices into separate buffers and merges them."""
    if not native.available():
        pytest.skip("native z-buffer unavailable (no C compiler)")
    monkeypatch.setattr(native, "MIN_POINTS_PER_THREAD", 100)
    cam = nadir_camera(64, 48)
    xyz = sparse_points(5000, seed=5)
    xyz[::3, 2] += 1.0
    one = zbuffer_points(xyz, cam, backend="native", threads=1)
    for threads in (2, 3, 4):
        assert torch.equal(one, zbuffer_points(xyz, cam, backend="native", threads=threads)), threads
    assert torch.equal(one, zbuffer_points(xyz, cam, backend="torch"))


@pytest.mark.parametrize("kwargs", [{}, {"point_size_px": 0.5}, {"point_size_px": 3.0}, {"point_size_px": 40.0},
                                    {"point_radius": 0.2}, {"point_radius": "per-point"}, {"point_radius": 5.0}])
def test_native_equals_torch_reference(kwargs):
    """The C loop and the torch reference pick the same point for (nearly) every pixel; depths agree to float
    rounding (the torch projection is a BLAS GEMM, the C one a plain sum: the last bit may differ)."""
    if not native.available():
        pytest.skip("native z-buffer unavailable (no C compiler)")
    rng = np.random.default_rng(6)
    n = 60_000
    xyz = np.c_[rng.uniform(0, 10, (n, 2)), rng.uniform(0, 0.3, n)].astype(np.float32)
    xyz[rng.random(n) < 0.3, 2] += 2.0  # a second layer: occlusion everywhere
    xyz = torch.from_numpy(xyz)
    if kwargs.get("point_radius") == "per-point":
        kwargs = {"point_radius": torch.from_numpy(rng.uniform(0.02, 0.3, n).astype(np.float32))}
    oblique = Camera(K=intrinsics(160, 120, 60.0), world_to_cam=look_at(np.array([-6.0, 5.0, 9.0]), np.array([5.0, 5.0, 0.0])),
                     width=160, height=120)
    for cam in (nadir_camera(160, 120, altitude=9.0), oblique):
        ours = zbuffer_points(xyz, cam, backend="native", **kwargs)
        ref = zbuffer_points(xyz, cam, backend="torch", **kwargs)
        d_ours, id_ours = decode_zbuffer(ours, cam.height, cam.width)
        d_ref, id_ref = decode_zbuffer(ref, cam.height, cam.width)
        same = id_ours == id_ref
        assert same.float().mean() > 0.999, (kwargs, same.float().mean())
        hit = same & (id_ref >= 0)
        assert hit.sum() > 0.5 * cam.width * cam.height
        torch.testing.assert_close(d_ours[hit], d_ref[hit], rtol=1e-6, atol=0)


def test_native_unavailable_falls_back_to_torch(monkeypatch, tmp_path, caplog):
    """No C compiler: a warning, then the torch path; asking for backend='native' is a clear error."""
    monkeypatch.setattr(native, "_state", {})
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("SCENE_KD_CACHE", str(tmp_path / "cache"))
    cam = nadir_camera()
    xyz = sparse_points(500)
    with caplog.at_level("WARNING"):
        auto = zbuffer_points(xyz, cam)
    assert "native z-buffer unavailable" in caplog.text
    assert torch.equal(auto, zbuffer_points(xyz, cam, backend="torch"))
    with pytest.raises(SceneKDError, match="native z-buffer is unavailable"):
        zbuffer_points(xyz, cam, backend="native")
    with pytest.raises(SceneKDError, match="unknown z-buffer backend"):
        zbuffer_points(xyz, cam, backend="opengl")


def test_native_build_is_cached_per_source(monkeypatch, tmp_path):
    """The library is built once into the cache and reused by a fresh process state (no rebuild)."""
    if not native.available():
        pytest.skip("native z-buffer unavailable (no C compiler)")
    monkeypatch.setenv("SCENE_KD_CACHE", str(tmp_path))
    monkeypatch.setattr(native, "_state", {})
    assert native.available()
    built = list((tmp_path / "native").glob("zbuffer-*.so"))
    assert len(built) == 1
    mtime = built[0].stat().st_mtime_ns
    monkeypatch.setattr(native, "_state", {})
    assert native.available()
    assert [p.stat().st_mtime_ns for p in (tmp_path / "native").glob("zbuffer-*.so")] == [mtime]
    assert not [p for p in (tmp_path / "native").iterdir() if p.is_dir()]  # no temporary build folder left


def test_footprint_brute_force(backend):
    """The disc splatting (sorted-prefix torch, per-point C loop) equals a per-point test of every pixel centre."""
    cam = nadir_camera(40, 30)
    xyz = sparse_points(120, seed=3)
    radii = torch.from_numpy(np.random.default_rng(1).uniform(0.05, 0.6, 120).astype(np.float32))
    zbuf = zbuffer_points(xyz, cam, point_radius=radii, backend=backend)
    depth, ids = decode_zbuffer(zbuf, cam.height, cam.width)
    uv, z = project_points(xyz, cam)
    best = np.full((cam.height, cam.width), np.inf)
    best_id = np.full((cam.height, cam.width), -1)
    fx = cam.K[0, 0]
    for i in range(len(xyz)):
        u, v = float(uv[i, 0]), float(uv[i, 1])
        col, row = int(np.floor(u)), int(np.floor(v))
        r = min(float(fx * radii[i] / z[i]), 8.0)
        for rr in range(cam.height):
            for c in range(cam.width):
                own = rr == row and c == col
                if not own and (c + 0.5 - u) ** 2 + (rr + 0.5 - v) ** 2 > r * r:
                    continue
                if z[i] < best[rr, c] or (z[i] == best[rr, c] and i < best_id[rr, c]):
                    best[rr, c], best_id[rr, c] = z[i], i
    assert np.array_equal(ids.numpy(), best_id)


def test_world_radius_renders_surfaces_hole_free(backend, monkeypatch):
    if backend == "torch":
        monkeypatch.setenv("SCENE_KD_NO_NATIVE", "1")
        monkeypatch.setattr(native, "_state", {})
    rng = np.random.default_rng(4)
    xyz = torch.from_numpy(np.c_[rng.uniform(0, 10, (20000, 2)), np.zeros(20000)].astype(np.float32))
    cam = nadir_camera(64, 64, altitude=6.0)
    plain = render_points(xyz, cam)
    radius = estimate_point_radius(xyz)
    assert 0.05 < radius < 0.3
    filled = render_points(xyz, cam, point_radius=radius)
    per_point = render_points(xyz, cam, point_radius=estimate_point_radii(xyz))
    centre = (slice(8, 56), slice(8, 56))  # fully inside the 10 x 10 m square
    assert (plain.ids[centre] < 0).mean() > 0.05
    assert (filled.ids[centre] < 0).mean() < 0.01
    assert (per_point.ids[centre] < 0).mean() < 0.01


def test_colours_labels_and_shading():
    cam = nadir_camera(48, 48, altitude=12.0)
    xyz = sparse_points(3000, seed=5)
    rgb = np.random.default_rng(0).integers(0, 256, (3000, 3), dtype=np.uint8)
    labels = np.arange(3000, dtype=np.int32) % 7
    r = render_points(xyz, cam, rgb=rgb, labels=labels, instances=labels * 10, point_size_px=2, background=(9, 8, 7))
    hit = r.ids >= 0
    assert np.array_equal(r.rgb[hit], rgb[r.ids[hit]])
    assert (r.rgb[~hit] == [9, 8, 7]).all()
    assert np.array_equal(r.labels[hit], labels[r.ids[hit]]) and (r.labels[~hit] == -1).all()
    assert np.array_equal(r.instances[hit], 10 * labels[r.ids[hit]])
    shaded = render_points(xyz, cam, normals=np.tile([0, 0, 1.0], (3000, 1)), point_size_px=2)
    assert shaded.rgb[hit].max() > 50 and shaded.labels is None


def test_visibility_occlusion_and_border():
    cam = nadir_camera(64, 64, altitude=10.0)
    ground = torch.tensor([[5.0, 5.0, 0.0], [5.2, 5.0, 0.0]])
    roof = torch.tensor([[5.0, 5.0, 5.0]])  # directly above the first ground point
    edge = torch.tensor([[5.0 + 5.7, 5.0, 0.0]])  # projects near the right edge
    behind = torch.tensor([[5.0, 5.0, 30.0]])
    xyz = torch.cat([ground, roof, edge, behind])
    depth = render_points(xyz, cam, point_size_px=3).depth
    vis, pix = visible_in_view(xyz, cam, depth, tolerance=0.05, border_px=4)
    assert vis.tolist() == [False, True, True, False, False]
    assert pix[4] == -1
    vis0, _ = visible_in_view(xyz, cam, depth, tolerance=0.05, border_px=0)
    assert bool(vis0[3])
    with pytest.raises(SceneKDError):
        visible_in_view(xyz, cam, depth[:10])


def test_bad_inputs():
    cam = nadir_camera()
    with pytest.raises(SceneKDError, match="no points"):
        render_points(torch.zeros(0, 3), cam)
    with pytest.raises(SceneKDError, match=r"\[N, 3\]"):
        render_points(torch.zeros(5, 2), cam)
    zero = Camera(K=cam.K, world_to_cam=cam.world_to_cam, width=0, height=10)
    with pytest.raises(SceneKDError, match="zero-size"):
        render_points(sparse_points(10), zero)
    # everything behind the camera: an empty render, not a crash
    r = render_points(sparse_points(10) + torch.tensor([0, 0, 100.0]), cam)
    assert (r.ids < 0).all()


def test_golden_point_render(backend, monkeypatch):
    if backend == "torch":
        monkeypatch.setenv("SCENE_KD_NO_NATIVE", "1")
        monkeypatch.setattr(native, "_state", {})
    cam = nadir_camera(32, 24, altitude=15.0)
    xyz = sparse_points(800, seed=7)
    r = render_points(xyz, cam, point_radius=0.25, labels=np.arange(800, dtype=np.int32) % 5)
    path = GOLDEN / "render_points_small.npz"
    if REGEN:
        GOLDEN.mkdir(exist_ok=True)
        np.savez_compressed(path, ids=r.ids, depth=r.depth, rgb=r.rgb, labels=r.labels)
    with np.load(path) as g:
        assert np.array_equal(r.ids, g["ids"])
        np.testing.assert_allclose(r.depth, g["depth"], rtol=1e-6)
        assert np.array_equal(r.labels, g["labels"])
        assert np.abs(r.rgb.astype(int) - g["rgb"]).max() <= 1


def test_compiled_single_pixel_zbuffer_equals_eager():
    """The torch.compile'd fused projection + scatter-min gives the same z-buffer as the eager path."""
    cam = nadir_camera(128, 96)
    xyz = sparse_points(30_000, seed=4)
    xyz[::7, 2] += 5.0  # many points per pixel at different depths, some far from the rest
    eager = zbuffer_points(xyz, cam, compile=False, chunk=10_000, backend="torch")
    fused = zbuffer_points(xyz, cam, compile=True, chunk=10_000, backend="torch")
    assert torch.equal(eager, fused)
    assert (eager != eager.max()).sum() > 1000  # the test scene does fill the image
