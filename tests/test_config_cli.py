"""Honest defaults, one config rule, the stage protocol: issue 13's bugs, each shown fixed."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from scene_kd.cli import _default_args, main
from scene_kd.config import preset_names, resolve_config
from scene_kd.errors import ConfigError
from scene_kd.scene.synthetic import make_urban
from scene_kd.teachers.config import ClipGridConfig, ClipSamConfig, OracleConfig

SAMPLE_C = Path(__file__).resolve().parents[1] / "data" / "pdal_sample_c.las"


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("SCENE_KD_OFFLINE", "1")  # no weights here: the hub is never tried


@pytest.fixture(scope="module")
def oracle_run(tmp_path_factory) -> Path:
    """A tiny finished oracle run (ci preset) of a synthetic block."""
    root = tmp_path_factory.mktemp("oracle_run")
    scene = root / "block.ply"
    from scene_kd.scene.io import save_scene

    save_scene(make_urban(6000, seed=3), scene)
    assert main(["run", str(scene), "--out", str(root / "run"), "--config", "ci", "--teacher", "oracle-labels",
                 "--json"]) == 0
    return root / "run"


def test_presets_ship_as_package_data_and_validate():
    assert set(preset_names()) >= {"urban", "indoor", "splat", "ci"}
    for name in preset_names():
        resolve_config(None, name)
    assert resolve_config(None, "urban").teacher == ClipSamConfig()


def test_default_teacher_is_clip_sam_and_teachers_are_a_tagged_union():
    assert isinstance(resolve_config().teacher, ClipSamConfig)
    cfg = resolve_config(None, None, {"teacher": {"name": "oracle-labels", "label_flip": 0.3, "seed": 4}})
    assert cfg.teacher == OracleConfig(label_flip=0.3, seed=4)
    # switching teacher keeps the common settings, drops the other teacher's
    cfg2 = resolve_config(None, None, {"teacher": {"seed": 4, "clip_model": "ViT-S-32"}})
    assert resolve_config(None, None, {"teacher": {"name": "clip-grid", "grid_scales": [0.5]}}).teacher == \
        ClipGridConfig(grid_scales=(0.5,))
    assert cfg2.teacher.clip_model == "ViT-S-32"
    with pytest.raises(ConfigError, match=r"label_flip.*of teacher 'clip-sam'"):
        resolve_config(None, None, {"teacher": {"label_flip": 0.3}})
    with pytest.raises(ConfigError, match="unknown teacher 'clip'"):
        resolve_config(None, None, {"teacher": {"name": "clip"}})


@pytest.mark.parametrize("text, key", [
    ("render:\n  widht: 64\n", "widht"),
    ("teacher:\n  name: oracle-labels\n  label_fip: 0.2\n", "label_fip"),
    ("render:\n  width: sixty\n", "render.width"),
    ("fuse:\n  granularity: pixel\n", "fuse.granularity"),
    ("rendr:\n  width: 64\n", "rendr"),
])
def test_yaml_with_a_misspelt_key_or_wrong_type_exits_2_naming_it(tmp_path, capsys, text, key):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    assert main(["run", str(SAMPLE_C), "--out", str(tmp_path / "r"), "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert key in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_run_with_no_options_and_no_weights_fails_fast_naming_them(tmp_path, capsys):
    t0 = time.perf_counter()
    assert main(["run", str(SAMPLE_C), "--out", str(tmp_path / "r")]) == 2
    assert time.perf_counter() - t0 < 30
    err = capsys.readouterr().err
    assert "no weights for open_clip ViT-B-16" in err and "--weights" in err
    assert "the clip-sam teacher needs pretrained weights" in err
    assert not (tmp_path / "r").exists()  # issue 23: bad input leaves no run folder


def test_batch_defaults_to_clip_sam_and_checks_weights_before_any_tile(tmp_path, capsys):
    (tmp_path / "t.laz").write_bytes(b"")  # never read: the weights check comes first
    assert main(["batch", str(tmp_path / "t.laz"), "--out", str(tmp_path / "o"), "--labels", "a,b",
                 "--workers", "0"]) == 2
    assert "no weights for open_clip" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_oracle_run_says_it_is_the_oracle(oracle_run):
    field = json.loads((oracle_run / "field.json").read_text())
    assert field["teacher"] == "oracle-labels" and "oracle-labels test teacher" in field["teacher_note"]
    ev = json.loads((oracle_run / "eval.json").read_text())
    assert ev["teacher"] == "oracle-labels" and "not CLIP" in ev["teacher_note"]
    from scene_kd.report import write_report

    assert "oracle-labels test teacher" in write_report(oracle_run, []).read_text()


def test_exported_files_say_they_come_from_the_oracle(oracle_run, tmp_path):
    import laspy
    from plyfile import PlyData

    assert main(["segment", str(oracle_run), "--labels", "road,building,tree", "--out", str(tmp_path / "x.las")]) == 0
    las = laspy.read(str(tmp_path / "x.las"))
    prov = [v for v in las.header.vlrs if v.user_id == "scene_kd" and v.record_id == 2]
    assert prov and json.loads(bytes(prov[0].record_data))["teacher"] == "oracle-labels"
    assert "not CLIP" in json.loads(bytes(prov[0].record_data))["note"]
    assert main(["query", str(oracle_run), "building", "--export", str(tmp_path / "hits.ply")]) == 0
    comments = PlyData.read(str(tmp_path / "hits.ply")).comments
    assert any(c.startswith("scene_kd provenance") and "oracle-labels" in c for c in comments)


def test_oracle_on_an_unlabelled_scene_is_refused_before_any_work(tmp_path, capsys):
    import numpy as np

    xyz = np.random.default_rng(0).uniform(0, 10, (500, 3))
    np.save(tmp_path / "plain.npy", xyz)
    assert main(["run", str(tmp_path / "plain.npy"), "--out", str(tmp_path / "r"), "--teacher", "oracle-labels"]) == 2
    assert "needs a labelled scene" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()  # issue 23: refused input leaves no run folder


def test_oracle_on_a_scene_with_only_unclassified_points_is_refused_before_any_work(tmp_path, capsys):
    import numpy as np

    from scene_kd.scene.io import save_scene
    from scene_kd.scene.types import PointCloud

    xyz = np.random.default_rng(0).uniform(0, 10, (500, 3))
    save_scene(PointCloud.from_world(xyz, labels=np.ones(500, np.int32), label_names={1: "unclassified"}),
               tmp_path / "u.las")
    assert main(["run", str(tmp_path / "u.las"), "--out", str(tmp_path / "r"), "--teacher", "oracle-labels"]) == 2
    assert "needs a labelled scene" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()  # issue 23: refused input leaves no run folder


def test_features_with_a_preset_resolves_the_preset_teacher(oracle_run, capsys):
    args, _ = _default_args(__import__("scene_kd.commands.features", fromlist=["Args"]),
                            [str(oracle_run), "--config", "urban"])
    assert isinstance(args.teacher, ClipSamConfig)
    # without a preset the run's own teacher (the oracle, with its settings) is the default
    args, _ = _default_args(__import__("scene_kd.commands.features", fromlist=["Args"]), [str(oracle_run)])
    assert isinstance(args.teacher, OracleConfig)
    assert main(["features", str(oracle_run), "--config", "urban"]) == 2  # clip-sam: its weights are missing
    assert "no weights for open_clip" in capsys.readouterr().err


def test_a_yaml_setting_arrives_unchanged_and_conflicting_flags_are_refused(oracle_run, tmp_path, capsys):
    y = tmp_path / "flip.yaml"
    y.write_text("teacher:\n  name: oracle-labels\n  label_flip: 0.3\n  embed_noise: 0.05\n")
    assert main(["features", str(oracle_run), "--config", str(y), "--json"]) == 0
    saved = yaml.safe_load((oracle_run / "config.yaml").read_text())["teacher"]
    assert saved["label_flip"] == 0.3 and saved["embed_noise"] == 0.05
    capsys.readouterr()
    assert main(["features", str(oracle_run), "--label-flip", "0.1", "--teacher.label-flip", "0.2"]) == 2
    assert "not both" in capsys.readouterr().err
    # an option of another teacher is refused in one line, not silently dropped
    assert main(["features", str(oracle_run), "--teacher", "clip-grid", "--teacher.label-flip", "0.2"]) == 2
    err = capsys.readouterr().err
    assert "--teacher.label-flip is an option of the oracle-labels teacher, not of clip-grid" in err
    assert len(err.strip().splitlines()) == 1


def test_a_boolean_option_is_honoured_in_both_forms_the_help_lists(oracle_run, capsys):
    """--fuse.no-balance-granularities (tyro's negative form) arrives as False; --fuse.no-border-px does not exist."""
    assert main(["fuse", str(oracle_run), "--fuse.no-balance-granularities", "--json"]) == 0
    assert yaml.safe_load((oracle_run / "config.yaml").read_text())["fuse"]["balance_granularities"] is False
    assert main(["fuse", str(oracle_run), "--fuse.balance-granularities", "--json"]) == 0
    assert yaml.safe_load((oracle_run / "config.yaml").read_text())["fuse"]["balance_granularities"] is True
    capsys.readouterr()
    assert main(["fuse", str(oracle_run), "--fuse.no-border-px"]) == 2
    assert "unknown option --fuse.no-border-px" in capsys.readouterr().err


def test_help_shows_the_resolved_defaults(oracle_run, capsys):
    with pytest.raises(SystemExit):
        main(["distill", str(oracle_run), "--help"])
    out = capsys.readouterr().out
    epochs = yaml.safe_load((oracle_run / "config.yaml").read_text())["distill"]["epochs"]
    assert "--distill.epochs" in out and f"(default: {epochs})" in out


def test_rerunning_render_invalidates_everything_after_it(oracle_run, capsys):
    scene = json.loads((oracle_run / "scene.json").read_text())["source"]
    assert main(["run", scene, "--out", str(oracle_run), "--config", "ci", "--teacher", "oracle-labels"]) == 0
    stages = json.loads((oracle_run / "stages.json").read_text())
    assert set(stages) == {"render", "features", "fuse", "distill", "eval"}
    assert main(["render", scene, "--out", str(oracle_run), "--force", "--json"]) == 0
    assert set(json.loads((oracle_run / "stages.json").read_text())) == {"render"}
    capsys.readouterr()
    assert main(["run", scene, "--out", str(oracle_run), "--config", "ci", "--teacher", "oracle-labels",
                 "--json"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["render"]["skipped"]
    assert not any(res[s]["skipped"] for s in ("features", "fuse", "distill", "eval"))
    # and now everything is current
    assert main(["run", scene, "--out", str(oracle_run), "--config", "ci", "--teacher", "oracle-labels",
                 "--json"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert all(res[s]["skipped"] for s in ("render", "features", "fuse", "distill", "eval"))


def test_a_changed_output_is_not_current(oracle_run, capsys):
    (oracle_run / "eval.json").write_text("{}")  # edited by hand: eval reruns, nothing before it
    scene = json.loads((oracle_run / "scene.json").read_text())["source"]
    assert main(["run", scene, "--out", str(oracle_run), "--config", "ci", "--teacher", "oracle-labels",
                 "--json"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert not res["eval"]["skipped"] and res["fuse"]["skipped"]
    assert json.loads((oracle_run / "eval.json").read_text())["fused"]["miou"] is not None
