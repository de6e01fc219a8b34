"""synth --kind district: a grid of urban blocks, streamed to LAZ."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from scene_kd.errors import SceneKDError
from scene_kd.scene.io import load_scene
from scene_kd.scene.synthetic.district import BLOCK_SIZE, make_district, plan_district, write_district
from scene_kd.scene.synthetic.labels import CAR, GRASS, ROAD, SIDEWALK, URBAN_CLASSES


def test_plan_sizes_by_points_and_density():
    full = plan_district(10_000_000)  # 1 km^2 at 10 points/m^2
    assert (full.nx, full.ny) == (9, 12) and sum(full.points) == 10_000_000
    assert 0.95e6 < full.size[0] * full.size[1] < 1.05e6
    small = plan_district(369_600)  # 4 blocks' worth at 10 points/m^2
    assert (small.nx, small.ny) == (2, 2) and max(small.points) - min(small.points) <= 1
    with pytest.raises(SceneKDError):
        plan_district(0)
    with pytest.raises(SceneKDError):
        plan_district(1000, density=-1)
    with pytest.raises(SceneKDError, match="too few"):
        plan_district(300, density=1e-4)


def test_district_laz_round_trip_and_seams(tmp_path):
    out = tmp_path / "d.laz"
    plan = write_district(out, points=8000, seed=3, density=0.2)  # 2 x 2 blocks of 2000 points
    assert (plan.nx, plan.ny) == (2, 2)
    scene = load_scene(out)
    ref = make_district(points=8000, seed=3, density=0.2)
    assert len(scene) == len(ref) == 8000
    world, ref_world = scene.world_xyz(), ref.world_xyz()
    assert np.abs(world - ref_world).max() < 1e-3 + 1e-9  # 1 mm LAS scale
    assert np.array_equal(scene.labels, ref.labels) and np.array_equal(scene.instances, ref.instances)
    assert scene.label_names == URBAN_CLASSES
    local = ref.xyz
    assert local[:, 0].max() > 1.9 * BLOCK_SIZE[0] and local[:, 1].max() > 1.9 * BLOCK_SIZE[1]
    # instances are unique per block: no instance id spans two blocks
    block = (local[:, 0] // BLOCK_SIZE[0]).astype(int) + 2 * (local[:, 1] // BLOCK_SIZE[1]).astype(int)
    inst = ref.instances >= 0
    pairs = np.unique(np.c_[ref.instances[inst], block[inst]], axis=0)
    assert len(pairs) == len(np.unique(ref.instances[inst]))
    assert (ref.labels == CAR).any()
    # the ground meets at the seam between blocks 0 and 1 (x = 110 m)
    ground = np.isin(ref.labels, (ROAD, SIDEWALK, GRASS))
    west = ground & (local[:, 0] > BLOCK_SIZE[0] - 6) & (local[:, 0] < BLOCK_SIZE[0]) & (local[:, 1] < BLOCK_SIZE[1])
    east = ground & (local[:, 0] >= BLOCK_SIZE[0]) & (local[:, 0] < BLOCK_SIZE[0] + 6) & (local[:, 1] < BLOCK_SIZE[1])
    assert abs(np.median(local[west, 2]) - np.median(local[east, 2])) < 0.5


def test_synth_cli_district(tmp_path):
    out = tmp_path / "d.las"
    res = subprocess.run([sys.executable, "-m", "scene_kd.cli", "synth", "--kind", "district", "--points", "20000",
                          "--out", str(out), "--json"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    assert info["count"] == 20000 and info["blocks"] == [1, 1] and out.exists()
