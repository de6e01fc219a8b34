"""The viewer's server side (scene_kd/apps/viewer/app.py) without a browser: state, GUI messages for bad input, export."""

from __future__ import annotations

import socket

import numpy as np
import pytest
import torch

from scene_kd.apps.viewer import gui
from scene_kd.apps.viewer.app import ViewerApp
from scene_kd.apps.viewer.colours import label_colours, pick_point, relevancy_colours
from scene_kd.field import FeatureField
from scene_kd.scene.runscene import save_run_scene
from scene_kd.scene.synthetic import URBAN_CLASSES, make_urban
from scene_kd.teachers.text import load_text_encoder

BUILDING = next(k for k, v in URBAN_CLASSES.items() if v == "building")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def oracle_run(tmp_path_factory):
    """A run folder whose field holds each point's class vector (+ noise): what a perfect oracle fusion gives."""
    run = tmp_path_factory.mktemp("viewer_run")
    pc = make_urban(points=6000, seed=1)
    enc = load_text_encoder("oracle:v2:d64")
    names = [URBAN_CLASSES[i] for i in sorted(URBAN_CLASSES)]
    g = torch.Generator().manual_seed(0)
    feats = enc.encode_class_names(names)[pc.labels] + 0.02 * torch.randn(len(pc), 64, generator=g)
    distilled = feats.clone()
    distilled[torch.from_numpy(pc.labels == BUILDING)] = 0  # a student that never learned buildings
    FeatureField(positions=pc.xyz, origin=pc.origin, features={"fused": feats.half(), "distilled": distilled.half()},
                 teacher="oracle-labels",
                 text_encoder=enc.id, dim=64, rgb=pc.rgb, labels=pc.labels, label_names=dict(pc.label_names)).save(run)
    save_run_scene(run, pc)
    return run, pc


@pytest.fixture
def app(oracle_run):
    run, _ = oracle_run
    a = ViewerApp(run, port=free_port(), max_points=4000).start(background_load=False)
    yield a
    a.stop()


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def test_query_threshold_vocabulary_inspect_export(app, oracle_run):
    run, pc = oracle_run
    assert app.state.status == "ready"
    assert "Showing 4,000 of 6,000 points" in app.gui["points_note"].content  # subsampled, and it says so
    assert len(app.display_index) == 4000 and len(app.points.points) == 4000

    app.set_threshold(0.7)
    assert app.run_query("building")
    gt = pc.labels == BUILDING
    assert app.selection.shape == (len(pc),) and iou(app.selection, gt) > 0.95
    shown = np.asarray(app.points.colors)
    hit_rows = app.selection[app.display_index]
    # hits drawn in the red end of turbo, the rest dimmed grey
    assert (shown[hit_rows, 0] > 150).all() and (shown[~hit_rows].max(axis=1) == shown[~hit_rows].min(axis=1)).all()
    assert "'building'" in app.state.message and "ms" in app.state.message
    at_07 = app.selection.copy()
    app.set_threshold(0.99999)  # above the best possible relevancy: nothing
    assert app.selection.sum() == 0
    app.set_threshold(0.5)
    assert app.selection.sum() >= at_07.sum() and (app.selection | ~at_07).all()  # a lower threshold adds hits
    app.set_threshold(0.7)

    # click: a ray straight down onto a building point returns that point's top label
    row = int(np.flatnonzero(app.selection[app.display_index])[0])
    target = app._display_xyz[row].astype(np.float64)
    gui.on_point_click(app, target + np.array([0, 0, 50.0]), np.array([0, 0, -1.0]))
    assert app.state.inspected[0][0] == "building" and app.state.inspected[0][1] > 0.9
    assert "building" in app.gui["inspect"].content

    path = app.export_selection("ply")
    assert path.parent == run / "exports" and path.suffix == ".ply" and path.exists()
    from plyfile import PlyData

    assert len(PlyData.read(str(path))["vertex"]["relevancy"]) == int(app.selection.sum())

    assert app.run_vocabulary("road, building, tree, car, grass, sidewalk, pole")
    assert app.state.mode == "vocabulary"
    assert (np.array(app.state.labels)[app.state.label_index] == np.array([URBAN_CLASSES[c] for c in pc.labels])).mean() > 0.99
    assert "building" in app.gui["legend"].content and "rgb(" in app.gui["legend"].content
    las = app.export_selection("las")
    import laspy

    out = laspy.read(str(las))
    assert len(out.points) == len(pc) and (np.asarray(out.classification)[gt] == 6).mean() > 0.99

    # the feature-source toggle re-runs the current mode on the other features
    assert app.state.source == "ensemble" and app.gui["source"].value == "ensemble"
    app.run_query("building")
    done = app.state.updates
    app.set_source("distilled")
    assert app.wait_updates(done + 1, timeout=10)
    assert app.state.source == "distilled" and app.state.mode == "relevancy" and app.selection.sum() == 0
    app.set_source("fused")
    assert app.wait_updates(done + 2, timeout=10) and iou(app.selection, gt) > 0.95

    app.show_true_colour()
    np.testing.assert_array_equal(np.asarray(app.points.colors), pc.rgb[app.display_index])


def test_bad_input_gives_gui_messages(app):
    assert not app.run_query("   ")
    assert "Type a query" in app.state.message and app.state.status == "ready"
    assert not app.run_vocabulary("road,,tree")
    assert "empty label" in app.state.message
    app.request("query", "")  # through the worker, as the GUI does: no crash, a message
    assert app.wait_updates(1, timeout=10)
    assert "Type a query" in app.state.message
    with pytest.raises(Exception, match="nothing selected"):
        app.export_selection("ply")
    gui.on_export(app)
    assert "nothing selected" in app.state.message
    assert app.run_query("building")  # still serving


def test_query_before_load_and_wrong_text_encoder(oracle_run, tmp_path):
    run, _ = oracle_run
    early = ViewerApp(run, port=free_port())
    early.start(background_load=True)
    try:
        # whatever the loader's progress, a query now either waits for nothing or says it is loading
        if early.field is None:
            assert not early.run_query("building")
            assert "still loading" in early.state.message
        assert early.wait_loaded(30) and early.run_query("building")
    finally:
        early.stop()

    wrong = ViewerApp(run, port=free_port(), text_encoder="oracle:v2:d32").start(background_load=False)
    try:
        assert wrong.state.status == "error" and "text encoder" in wrong.state.message
        assert not wrong.run_query("building")
        assert "Nothing to query" in wrong.state.message
    finally:
        wrong.stop()

    empty = ViewerApp(tmp_path, port=free_port()).start(background_load=False)  # a folder without a field
    try:
        assert empty.state.status == "error" and "field.json" in empty.state.message
    finally:
        empty.stop()


def test_colour_and_pick_helpers():
    base = np.full((4, 3), 200, np.uint8)
    c = relevancy_colours(np.array([0.5, 0.55, 0.9, 1.0], np.float32), base, threshold=0.52)
    assert c[0, 0] == c[0, 1] == c[0, 2] < 100  # below threshold: dim grey
    assert c[3, 0] > 200 and c[3, 2] < 30  # relevancy 1: red-orange
    assert tuple(label_colours(np.array([-1]))[0]) == (90, 90, 90)
    pts = np.array([[0, 0, 0], [0, 0, 5], [3, 0, 0]], np.float32)
    assert pick_point(pts, np.array([0, 0, 10.0]), np.array([0, 0, -1.0])) == 1  # nearest along the ray
    assert pick_point(pts, np.array([0, 0, 10.0]), np.array([0, 0, 1.0])) is None  # behind the camera
