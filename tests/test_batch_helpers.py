"""Helpers for the batch tests (no tests here): tile makers, a neighbourhood labeller for --labeller, a small
trained student and a check that an output keeps every input record.

``knn_labeller`` maps each point's ground-truth ASPRS class to the job's labels and smooths it by a
majority vote over its k nearest neighbours, so its result depends on context across chunk borders.
``BATCH_TEST_DELAY`` (seconds per call) slows it down for the kill/resume test.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"
CRS_LAS = REAL / "laspy_file_with_both_wkt_and_geotiff_vlrs.las"
GROUPS = {"ground": (2,), "vegetation": (3, 4, 5), "building": (6,)}


def knn_labeller(scene, labels, k: int = 8):
    from scipy.spatial import cKDTree

    delay = float(os.environ.get("BATCH_TEST_DELAY", "0"))
    if delay:
        time.sleep(delay)
    gt = np.zeros(len(scene), dtype=np.int64)
    for j, name in enumerate(labels):
        gt[np.isin(scene.labels, GROUPS.get(name, ()))] = j
    _, nb = cKDTree(scene.xyz).query(scene.xyz, k=min(k, len(scene)))
    votes = np.zeros((len(scene), len(labels)), dtype=np.int64)
    np.add.at(votes, (np.repeat(np.arange(len(scene)), nb.shape[1]), gt[nb].ravel()), 1)
    return votes.argmax(axis=1), (votes.max(axis=1) / nb.shape[1]).astype(np.float32)


def make_crs_tiles(folder: Path, count: int = 4, every: int = 4) -> list[Path]:
    """Split the real CRS-tagged LAS file along x into ``count`` .laz tiles (every ``every``-th point), adding
    an extra-bytes dimension ``reflectance`` so the tests can check it survives."""
    import laspy

    las = laspy.read(str(CRS_LAS))
    pts = las.points[::every]
    x = np.asarray(pts.x)
    dims = list(las.point_format.dimension_names)
    edges = np.linspace(x.min(), x.max() + 1e-6, count + 1)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(count):
        header = laspy.LasHeader(point_format=las.header.point_format.id, version=las.header.version)
        header.scales, header.offsets = las.header.scales, las.header.offsets
        header.vlrs = list(las.header.vlrs)
        header.add_extra_dims([laspy.ExtraBytesParams(name="reflectance", type="f4")])
        sel = (x >= edges[i]) & (x < edges[i + 1])
        tile = laspy.LasData(header)
        tile.points = laspy.ScaleAwarePointRecord.zeros(int(sel.sum()), header=header)
        for dim in dims:
            tile[dim] = np.asarray(pts[dim])[sel]
        tile["reflectance"] = (np.arange(int(sel.sum())) % 97).astype(np.float32) / 97
        path = folder / f"tile_{i}.laz"
        tile.write(str(path))
        out.append(path)
    return out


def train_small_student(root: Path) -> Path:
    """A student trained briefly (oracle teacher) on a 12k-point synthetic block: 0.8 m voxels, 3 levels and an 8 m
    ground cell, so its chunk halo (context margin 19.2 m + ground cell) is small next to a district tile."""
    from scene_kd.cli import main as cli
    from scene_kd.scene.io import save_scene
    from scene_kd.scene.synthetic import make_urban

    root.mkdir(parents=True, exist_ok=True)
    save_scene(make_urban(points=12000, seed=3), root / "train.laz")
    (root / "cfg.yaml").write_text("render: {preset: aerial, width: 128, height: 128, levels: 2}\n"
                                   "teacher: {name: oracle-labels}\n"
                                   "distill: {epochs: 2, voxel_size: 0.8, channels: [8, 16, 24], ground_cell: 8.0}\n")
    args = ["run", str(root / "train.laz"), "--out", str(root / "run"), "--config", str(root / "cfg.yaml"),
            "--until", "distill", "--json"]
    assert cli(args) == 0
    return root / "run"


def check_records_kept(src: Path, dst: Path) -> None:
    """``dst`` holds every record of ``src`` in order, each dimension unchanged except ``classification``."""
    import laspy

    a, b = laspy.read(str(src)), laspy.read(str(dst))
    assert len(b.points) == len(a.points) and b.header.point_format.id == a.header.point_format.id
    assert np.array_equal(b.header.scales, a.header.scales) and np.array_equal(b.header.offsets, a.header.offsets)
    for dim in a.point_format.dimension_names:
        if dim != "classification":
            assert np.array_equal(np.asarray(a[dim]), np.asarray(b[dim])), dim
