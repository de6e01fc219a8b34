"""The shared helpers: scipy-backed rotations (w >= 0), PCA normals, SH DC colour, progress bars."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from scene_kd.geometry import (
    matrix_from_quat_wxyz,
    pca_normals,
    quat_to_rotmat,
    quat_xyzw_from_matrix,
    quats_wxyz_from_matrices,
)
from scene_kd.scene.sh import SH_C0, dc_from_rgb, rgb_from_dc


def _random_rotations(n: int, seed: int) -> np.ndarray:
    special = np.stack([np.eye(3), np.diag([1.0, -1, -1]), np.diag([-1.0, 1, -1]), np.diag([-1.0, -1, 1])])
    return np.concatenate([Rotation.random(n, random_state=seed).as_matrix(), special])


def test_matrix_to_quaternion_is_the_unique_w_nonnegative_unit_quaternion():
    R = _random_rotations(5000, 0)
    q = quats_wxyz_from_matrices(R)
    assert q.shape == (len(R), 4) and (q[:, 0] >= 0).all()
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-12)
    # back through the rasterizer's own (hand-written, torch) formula: the same matrices
    back = quat_to_rotmat(torch.from_numpy(q)).numpy()
    np.testing.assert_allclose(back, R, atol=1e-12)
    # the 180-degree turns (w = 0) keep the axis with a positive sign, as the old Shepperd code did
    np.testing.assert_array_equal(q[-3:], np.eye(4)[1:])
    x, y, z, w = quat_xyzw_from_matrix(R[0])
    np.testing.assert_allclose([w, x, y, z], q[0])


def test_quaternion_to_matrix_matches_the_torch_formula_at_any_norm():
    q = np.random.default_rng(1).normal(size=(500, 4)) * 3.0
    ours = np.stack([matrix_from_quat_wxyz(*row) for row in q])
    np.testing.assert_allclose(ours, quat_to_rotmat(torch.from_numpy(q)).numpy(), atol=1e-12)
    with pytest.raises(ValueError, match="zero or non-finite"):
        matrix_from_quat_wxyz(0.0, 0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="zero or non-finite"):
        matrix_from_quat_wxyz(np.nan, 1.0, 0.0, 0.0)


def test_pca_normals_of_planes_and_tiny_inputs():
    rng = np.random.default_rng(2)
    plane = np.c_[rng.uniform(0, 10, (2000, 2)), 0.001 * rng.normal(size=2000)]
    n = pca_normals(plane)
    assert np.abs(n[:, 2]).min() > 0.99
    tilted = plane @ Rotation.from_euler("x", 30, degrees=True).as_matrix().T
    expect = Rotation.from_euler("x", 30, degrees=True).apply([0.0, 0.0, 1.0])
    assert np.abs(pca_normals(tilted) @ expect).min() > 0.99
    np.testing.assert_array_equal(pca_normals(plane[:2]), [[0, 0, 1.0], [0, 0, 1.0]])


def test_sh_dc_colour_round_trips_and_rounds_to_nearest():
    rgb = np.arange(256, dtype=np.float64).repeat(3).reshape(-1, 3)
    assert np.array_equal(rgb_from_dc(dc_from_rgb(rgb / 255)), rgb.astype(np.uint8))
    # just under / over a half step: nearest, not truncated; out of range clips
    dc = dc_from_rgb(np.array([[10.49, 10.51, 300.0]]) / 255)
    assert rgb_from_dc(dc).tolist() == [[10, 11, 255]]
    assert SH_C0 == pytest.approx(0.5 / np.sqrt(np.pi))


def test_progress_helpers_yield_everything_and_render_extra_columns(monkeypatch):
    import io

    import scene_kd.progress

    monkeypatch.setattr(scene_kd.progress, "stderr_is_terminal", lambda: True)  # the live bar (off a TTY: log lines)

    from rich.console import Console

    from scene_kd.progress import counter, progress_bar, track

    assert list(track([1, 2, 3], "x")) == [1, 2, 3] and list(track([4], "x", enabled=False)) == [4]
    seen = []
    with counter(3, "views", enabled=False) as advance:
        for v in range(3):
            advance(v)
            seen.append(v)
    assert seen == [0, 1, 2]
    bar = progress_bar(True, columns=["loss {task.fields[loss]:.3f}"], transient=False)
    bar.live.console = Console(file=io.StringIO(), width=120, force_terminal=False)
    with bar:
        task = bar.add_task("distil", total=4, loss=0.5)
        bar.update(task, advance=2, loss=0.25)
    out = bar.console.file.getvalue()
    assert "distil" in out and "2/4" in out and "loss 0.250" in out


def test_messages_name_the_final_file_not_its_temporary_twin():
    from scene_kd.runio import atomic_path, final_name

    assert final_name("/d/..urban.laz.1e9teedp.tmp.laz.403s9v79.tmp.laz") == "/d/urban.laz"
    assert final_name("/d/b.las") == "/d/b.las" and final_name(".hidden.las") == ".hidden.las"
    import tempfile

    with tempfile.TemporaryDirectory() as d, atomic_path(f"{d}/x.laz") as tmp:
        assert final_name(tmp) == f"{d}/x.laz"
