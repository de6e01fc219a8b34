"""The whole pipeline on a small synthetic scene: stages run, skip when current, and rerun downstream."""

from __future__ import annotations

import json

import pytest

from scene_kd.config import load_config
from scene_kd.pipeline import run_pipeline
from scene_kd.scene.io import save_scene
from scene_kd.scene.synthetic import make_urban


@pytest.fixture(scope="module")
def scene_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("scene") / "urban.ply"
    save_scene(make_urban(points=15_000, seed=3), path)
    return path


def test_pipeline_runs_skips_and_reruns_downstream(scene_path, tmp_path):
    cfg = load_config("ci", {"teacher": {"label_flip": 0.2}})
    run = tmp_path / "run"
    first = run_pipeline(scene_path, run, cfg)
    assert [first[s]["skipped"] for s in ("render", "features", "fuse", "distill", "eval")] == [False] * 5
    ev = json.loads((run / "eval.json").read_text())
    assert set(ev) >= {"fused", "distilled", "ensemble", "coverage"}
    assert ev["fused"]["miou"] > 0.3 and ev["coverage"] > 0.9  # the oracle with 20% flips still labels most points
    timings = json.loads((run / "timings.json").read_text())
    assert set(timings) == {"render", "features", "fuse", "distill", "eval"}
    assert (run / "config.yaml").exists()

    again = run_pipeline(scene_path, run, cfg)
    assert all(again[s]["skipped"] for s in ("render", "features", "fuse", "distill", "eval"))

    # a changed teacher setting reruns features and everything after it, but not the renders
    changed = run_pipeline(scene_path, run, load_config("ci", {"teacher": {"label_flip": 0.0}}))
    assert changed["render"]["skipped"]
    assert not any(changed[s]["skipped"] for s in ("features", "fuse", "distill", "eval"))
    assert json.loads((run / "eval.json").read_text())["fused"]["miou"] > ev["fused"]["miou"]


def test_run_cli_reports_and_rejects_bad_stage(scene_path, tmp_path, capsys):
    from scene_kd.cli import main

    assert main(["run", str(scene_path), "--out", str(tmp_path / "r"), "--config", "ci", "--until", "fuse", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert "fuse" in out and "distill" not in out
    assert main(["run", str(tmp_path / "missing.las"), "--out", str(tmp_path / "r2")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_interrupted_rerun_replaces_its_own_stale_field(scene_path, tmp_path):
    """Features rerun in one invocation that stopped before fuse; the next run's fuse replaces the old field."""
    run = tmp_path / "run"
    run_pipeline(scene_path, run, load_config("ci", {"teacher": {"oracle_dim": 64}}), until="fuse")
    run_pipeline(scene_path, run, load_config("ci", {"teacher": {"oracle_dim": 48}}), until="features")
    res = run_pipeline(scene_path, run, load_config("ci", {"teacher": {"oracle_dim": 48}}), until="fuse")
    assert res["features"]["skipped"] and not res["fuse"]["skipped"]
    assert json.loads((run / "field.json").read_text())["dim"] == 48
