"""Batch on Ray: large tiles split into one Ray task per chunk; an existing `ray start --head` cluster with token
authentication (slow)."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import laspy
import numpy as np
import pytest

from scene_kd.apps.batch.run import find_ray_token, run_batch
from scene_kd.apps.batch.tiles import BatchJob
from scene_kd.errors import SceneKDError
from tests.test_batch_helpers import CRS_LAS, knn_labeller, make_crs_tiles

ROOT = Path(__file__).resolve().parents[1]
LABELS = ("ground", "vegetation", "building")
LABELLER = "tests.test_batch_cluster:marking_labeller"
MARKERS = "SCENE_KD_TEST_MARKERS"

pytestmark = pytest.mark.skipif(not CRS_LAS.exists(), reason="real LAS sample not found")


def marking_labeller(scene, labels):
    """knn_labeller that also records which Ray task (or the driver) labelled how many points."""
    folder = os.environ.get(MARKERS)
    if folder:
        try:
            import ray

            task = ray.get_runtime_context().get_task_id() if ray.is_initialized() else None
        except Exception:
            task = None
        (Path(folder) / f"{task or 'driver'}.{len(scene)}.{time.monotonic_ns()}").write_text("")
    return knn_labeller(scene, labels)


def test_large_tile_is_labelled_as_one_ray_task_per_chunk(tmp_path, monkeypatch):
    pytest.importorskip("ray")
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # workers import the test labeller
    tile = make_crs_tiles(tmp_path / "tiles", count=1, every=2)[0]
    n = laspy.open(str(tile)).header.point_count
    job = lambda d: BatchJob(out_dir=str(tmp_path / d), labels=LABELS, mode="custom", labeller=LABELLER,  # noqa: E731
                             chunk_size=n // 4 + 1)
    local = run_batch([str(tile)], job("local"), workers=0, progress=False)
    marks = tmp_path / "marks"
    marks.mkdir()
    monkeypatch.setenv(MARKERS, str(marks))
    on_ray = run_batch([str(tile)], job("ray"), workers=2, progress=False)
    rec, ref = on_ray["tiles"][0], local["tiles"][0]
    assert rec["status"] == ref["status"] == "done" and rec["chunks"] == ref["chunks"] >= 4
    tasks = [p.name.split(".")[0] for p in marks.iterdir()]
    assert "driver" not in tasks and len(set(tasks)) == len(tasks) == rec["chunks"]  # one Ray task per chunk
    a, b = laspy.read(str(tmp_path / "local" / tile.name)), laspy.read(str(tmp_path / "ray" / tile.name))
    assert np.array_equal(a.classification, b.classification) and np.array_equal(a["confidence"], b["confidence"])
    # a current output is skipped without labelling again
    again = run_batch([str(tile)], job("ray"), workers=2, progress=False)
    assert again["tiles"][0]["status"] == "skipped" and len(list(marks.iterdir())) == rec["chunks"]


def test_token_lookup_follows_rays_order(tmp_path, monkeypatch):
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert find_ray_token() is None
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("abc\n")
    assert find_ray_token() == str(tmp_path / ".ray" / "auth_token")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "missing"))
    with pytest.raises(SceneKDError, match="RAY_AUTH_TOKEN_PATH"):
        find_ray_token()
    monkeypatch.setenv("RAY_AUTH_TOKEN", "xyz")
    assert find_ray_token() == "RAY_AUTH_TOKEN"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_batch_on_an_existing_cluster_with_token_auth(tmp_path):
    pytest.importorskip("ray")
    ray_bin = Path(sys.executable).with_name("ray")
    if not ray_bin.exists():
        pytest.skip("the ray CLI is not installed beside this Python")
    tiles = make_crs_tiles(tmp_path / "tiles", count=2, every=4)
    work = Path(tempfile.mkdtemp(prefix="skd-ray-", dir="/tmp"))  # short: Ray's socket paths are length-limited
    token = work / "token"
    token.write_text(secrets.token_hex(32))
    port = _free_port()
    base = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    base.update(PYTHONPATH=str(ROOT), RAY_USAGE_STATS_ENABLED="0")
    head_env = {**base, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    # --block keeps the head's processes children of this one, so stopping it stops exactly this cluster (`ray stop`
    # would stop every Ray of this user on the machine)
    head = subprocess.Popen([str(ray_bin), "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
                             "--port", str(port), "--num-cpus", "2", "--include-dashboard", "false",
                             "--disable-usage-stats", "--temp-dir", str(work / "t")],
                            env=head_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        address = f"127.0.0.1:{port}"
        deadline = time.time() + 60
        while time.time() < deadline:  # wait for the GCS port
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.5)
        batch = [sys.executable, "-m", "scene_kd.cli", "batch", str(tmp_path / "tiles" / "*.laz"), "--out",
                 str(tmp_path / "out"), "--labels", ",".join(LABELS), "--labeller", LABELLER, "--address", address,
                 "--chunk-size", "1500", "--json"]
        # the driver finds the token where Ray documents it (here RAY_AUTH_TOKEN_PATH); RAY_AUTH_MODE is not set
        ok = subprocess.run(batch, env={**base, "RAY_AUTH_TOKEN_PATH": str(token)}, capture_output=True, text=True,
                            timeout=300)
        assert ok.returncode == 0, ok.stderr[-2000:]
        assert sorted(p.name for p in (tmp_path / "out").glob("*.laz")) == sorted(t.name for t in tiles)
        import json

        summary = json.loads(ok.stdout)
        assert [r["status"] for r in summary["tiles"]] == ["done", "done"]
        assert all(r["chunks"] >= 2 for r in summary["tiles"]), [(r["points"], r["chunks"]) for r in summary["tiles"]]
        # no token anywhere: one clear line, exit 2
        home = work / "home"
        home.mkdir()
        bad = subprocess.run(batch + ["--force"], env={**base, "HOME": str(home)}, capture_output=True, text=True,
                             timeout=300)
        assert bad.returncode == 2
        err = [line for line in bad.stderr.splitlines() if "cannot connect to Ray" in line]
        assert len(err) == 1 and "no token was found here" in err[0] and "~/.ray/auth_token" in err[0], bad.stderr[-2000:]
    finally:
        os.killpg(head.pid, 15)  # the session started above: `ray start --block` and the node processes
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, 9)
        shutil.rmtree(work, ignore_errors=True)
