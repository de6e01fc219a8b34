"""One QuerySession behind every entry point: under a non-default QueryConfig in the run's config.yaml, the viewer,
the grasp lookup, batch (student mode) and the `query` / `segment` verbs give the same relevancy and labels for
the same prompt, and not the defaults' ones; the text-embedding caches stay bounded."""

from __future__ import annotations

import json
import shutil
import socket

import numpy as np
import pytest
import torch
import yaml

from scene_kd.cli import main as cli
from scene_kd.config import read_query_config
from scene_kd.errors import SceneKDError
from scene_kd.query.config import QueryConfig
from scene_kd.query.session import QuerySession

PROMPT = "building"
LABELS = ["road", "sidewalk", "building", "tree", "car", "pole", "grass"]
QUERY = {  # every field differs from QueryConfig's default
    "negatives": ["road", "tree", "stuff"], "temperature": 4.0, "threshold": 0.55, "source": "distilled",
    "template": "a 3d scan of the {}.", "unknown_threshold": 0.35, "text_cache_size": 64,
}


@pytest.fixture(scope="module")
def custom_run(urban_run, tmp_path_factory):
    """A copy of the shared urban run whose config.yaml carries the non-default QUERY section."""
    run = tmp_path_factory.mktemp("custom_query") / "run"
    shutil.copytree(urban_run, run)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["query"] = dict(QUERY)
    (run / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli_json(capsys, *argv: str) -> dict:
    rc = cli(list(argv))
    out, err = capsys.readouterr()
    assert rc == 0, err
    return json.loads(out)


def test_the_run_config_is_read_and_differs_from_the_defaults(custom_run):
    cfg = read_query_config(custom_run)
    assert tuple(cfg.negatives) == tuple(QUERY["negatives"]) and cfg.temperature == QUERY["temperature"]
    assert cfg.template == QUERY["template"] and cfg.source == "distilled" and cfg.text_cache_size == 64
    ref, dflt = QuerySession.open(custom_run, query=read_query_config(custom_run)), QuerySession.open(custom_run, query=QueryConfig())
    rel, rel_default = ref.relevancy(PROMPT), dflt.relevancy(PROMPT)
    assert float((rel - rel_default).abs().max()) > 0.05  # the config changes the answer: the tests below can fail
    (idx, conf), (idx_d, conf_d) = ref.segment(LABELS), dflt.segment(LABELS)
    assert (idx == -1).any() and not (idx_d == -1).any()  # unknown_threshold
    assert float((conf - conf_d).abs().max()) > 0.05  # temperature
    assert ("oracle:v2:d64", "a 3d scan of the building.") in ref.cache  # the run's template was applied
    assert ("oracle:v2:d64", "a photo of a building.") in dflt.cache


def test_viewer_grasp_batch_and_cli_agree_exactly(custom_run, capsys, tmp_path):
    from plyfile import PlyData

    from scene_kd.apps.batch.tiles import BatchJob, label_with_student
    from scene_kd.apps.grasp.api import GraspLookup
    from scene_kd.apps.viewer.app import ViewerApp
    from scene_kd.scene.runscene import load_run_scene

    ref = QuerySession.open(custom_run, query=read_query_config(custom_run))
    rel = ref.relevancy(PROMPT).numpy()
    idx, conf = (t.numpy() for t in ref.segment(LABELS))

    # CLI query: top list, hit count (the run's threshold) and the exported relevancy
    out = cli_json(capsys, "query", str(custom_run), PROMPT, "--top", "50", "--json", "--export", str(tmp_path / "q.ply"))
    assert out["threshold"] == QUERY["threshold"] and out["source"] == "distilled"
    assert out["count_above_threshold"] == int((rel > QUERY["threshold"]).sum()) > 0
    top = np.array([i for i, _ in out["top"]])
    assert [s for _, s in out["top"]] == [round(float(s), 6) for s in rel[top]]
    assert np.isclose(min(s for _, s in out["top"]), np.sort(rel)[-50], atol=1e-6)
    ply = PlyData.read(str(tmp_path / "q.ply"))["vertex"]
    np.testing.assert_array_equal(np.asarray(ply["relevancy"]), rel[rel > QUERY["threshold"]])

    # CLI segment: every point's label and confidence
    out = cli_json(capsys, "segment", str(custom_run), "--labels", ",".join(LABELS), "--json", "--out", str(tmp_path / "s.ply"))
    ply = PlyData.read(str(tmp_path / "s.ply"))["vertex"]
    np.testing.assert_array_equal(np.asarray(ply["label"]), idx)
    np.testing.assert_array_equal(np.asarray(ply["confidence"]), conf)
    assert out["unknown"] == int((idx == -1).sum()) > 0

    # grasp lookup
    np.testing.assert_array_equal(GraspLookup(custom_run).relevancy(PROMPT), rel)

    # viewer: relevancy, vocabulary labels, and the run's threshold on the slider
    app = ViewerApp(custom_run, port=free_port()).start(background_load=False)
    try:
        assert app.state.status == "ready", app.state.message
        assert app.state.threshold == QUERY["threshold"] and app.gui["threshold"].value == QUERY["threshold"]
        assert app.run_query(PROMPT)
        np.testing.assert_array_equal(app.state.relevancy, rel)
        np.testing.assert_array_equal(app.selection, rel > QUERY["threshold"])
        assert app.run_vocabulary(",".join(LABELS))
        np.testing.assert_array_equal(app.state.label_index, idx)
        np.testing.assert_array_equal(app.state.confidence, conf)
    finally:
        app.stop()

    # batch, student mode: the student applied to the run's own scene, labelled with the student run's config
    job = BatchJob(out_dir=str(tmp_path / "batch"), labels=tuple(LABELS), mode="student", student=str(custom_run))
    b_idx, b_conf = label_with_student(load_run_scene(custom_run), job)
    np.testing.assert_array_equal(b_idx, idx)
    np.testing.assert_array_equal(b_conf, conf)


def test_text_cache_stays_bounded_under_many_distinct_prompts(custom_run):
    from scene_kd.teachers.text import TEXT_CACHE, TEXT_CACHE_SIZE, TextEmbeddingCache, load_text_encoder

    session = QuerySession.open(custom_run, query=read_query_config(custom_run))
    assert session.cache.maxsize == QUERY["text_cache_size"]
    first = session.embed(["parked car no. 0"])  # distinct prompts the oracle field can express (a car)
    for i in range(1, 200):
        session.relevancy(f"parked car no. {i}")
        assert len(session.cache) <= QUERY["text_cache_size"]
    assert ("oracle:v2:d64", "parked car no. 0") not in session.cache  # least recently used went first
    assert all(("oracle:v2:d64", n) in session.cache for n in QUERY["negatives"])  # used by every query: kept
    torch.testing.assert_close(session.embed(["parked car no. 0"]), first)  # recomputed, same vector
    hits = session.cache.hits
    session.embed(["parked car no. 0"])
    assert session.cache.hits == hits + 1

    # the process-wide cache of the encoders (teachers, scripts) is bounded too
    enc = load_text_encoder("oracle:v2:d64")
    assert isinstance(TEXT_CACHE, TextEmbeddingCache) and TEXT_CACHE.maxsize == TEXT_CACHE_SIZE
    enc.encode_text([f"prompt {i}" for i in range(TEXT_CACHE_SIZE + 100)])
    assert len(TEXT_CACHE) == TEXT_CACHE_SIZE
    small = TextEmbeddingCache(3)
    v = enc.encode_text(["car", "tree", "road", "pole", "car"], cache=small)
    torch.testing.assert_close(v[0], v[4])
    key = lambda p: ("oracle:v2:d64", p)  # noqa: E731
    assert len(small) == 3 and key("car") not in small  # inserted first, dropped first
    enc.encode_text(["tree"], cache=small)  # a hit refreshes "tree"
    enc.encode_text(["banana"], cache=small)
    assert [key(p) in small for p in ("tree", "road", "pole", "banana")] == [True, False, True, True]
    with pytest.raises(SceneKDError, match="cache size"):
        TextEmbeddingCache(0)


def test_bad_query_config_is_a_clear_error(custom_run):
    with pytest.raises(SceneKDError, match="cache size"):
        QuerySession.open(custom_run, query=QueryConfig(text_cache_size=0))
    with pytest.raises(SceneKDError, match="no '\\{\\}'"):
        QuerySession.open(custom_run, query=QueryConfig(template="a photo"))
