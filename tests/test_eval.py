"""Evaluation: metrics against hand-computed numbers, label maps, the plot, and the eval stage end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_lift_stage import class_vectors, labelled_scene, make_run

from scene_kd.errors import RunStateError
from scene_kd.eval.metrics import confusion_matrix, scores
from scene_kd.eval.plots import confusion_png
from scene_kd.field import FeatureField
from scene_kd.lift.config import FuseConfig
from scene_kd.pipeline import fuse_stage
from scene_kd.scene.labels import ASPRS_CLASSES, SENSATURBAN_CLASSES, evaluation_classes, is_evaluable


def test_confusion_and_scores_by_hand():
    gt = np.array([0, 0, 1, 1, 2, -1, 0])
    pred = np.array([0, 1, 1, -1, 2, 0, 0])  # -1: no prediction; the gt -1 point is ignored
    cm = confusion_matrix(gt, pred, 3)
    np.testing.assert_array_equal(cm, [[2, 1, 0, 0], [0, 1, 0, 1], [0, 0, 1, 0]])
    s = scores(cm, ["a", "b", "c"])
    # a: TP 2, FP 0, FN 1 -> 2/3;  b: TP 1, FP 1, FN 1 (the "nothing") -> 1/3;  c: 1
    assert s["per_class"] == pytest.approx({"a": 2 / 3, "b": 1 / 3, "c": 1.0})
    assert s["miou"] == pytest.approx((2 / 3 + 1 / 3 + 1) / 3)
    assert s["macc"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    assert s["accuracy"] == pytest.approx(4 / 6)
    # a class without ground truth is left out of the means
    s2 = scores(confusion_matrix(np.array([0, 0]), np.array([0, 1]), 2), ["a", "b"])
    assert s2["per_class"]["b"] is None and s2["miou"] == pytest.approx(0.5)
    with pytest.raises(ValueError):
        confusion_matrix(np.array([0]), np.array([5]), 2)


def test_label_maps_and_evaluable_classes():
    labels = np.array([0, 1, 2, 6, 7, 12, 18, 40, 2, -1, 6])
    vocab, targets = evaluation_classes(labels, ASPRS_CLASSES)
    assert vocab == ["ground", "building"]
    np.testing.assert_array_equal(targets, [-1, -1, 0, 1, -1, -1, -1, -1, 0, -1, 1])
    assert not is_evaluable("Unclassified") and not is_evaluable(None) and is_evaluable("low vegetation")
    assert SENSATURBAN_CLASSES[7] == "traffic road" and len(SENSATURBAN_CLASSES) == 13
    # two codes with one name are one class
    vocab2, t2 = evaluation_classes(np.array([3, 4, 5]), {3: "vegetation", 4: "vegetation", 5: "car"})
    assert vocab2 == ["vegetation", "car"] and t2.tolist() == [0, 0, 1]


def test_confusion_png(tmp_path):
    cm = np.array([[5, 1, 0], [2, 7, 1]])
    p = confusion_png(cm, ["road", "tree"], tmp_path / "plots" / "c.png", title="t")
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError):
        confusion_png(cm, ["road"], tmp_path / "bad.png")


def _add_perfect_student(run) -> None:
    """Give the field 'distilled' features = each point's true class vector (a perfect student)."""
    field = FeatureField.load(run)
    vec = class_vectors(field.label_names)
    field.features["distilled"] = torch.stack([vec[int(c)] for c in field.labels]).to(torch.float16)
    field.save(run)


def test_eval_stage_end_to_end(tmp_path, capsys):
    from scene_kd.pipeline import eval_stage

    run = tmp_path / "run"
    make_run(run)
    fuse_stage(run, FuseConfig())
    _add_perfect_student(run)
    res = eval_stage(run)
    assert not res["skipped"]
    assert res["vocabulary"] == ["ground", "building", "road"]  # ASPRS code order; "unclassified" left out
    field = FeatureField.load(run)
    covered = field.coverage > 0
    assert res["coverage"] == pytest.approx(covered.mean()) and res["coverage"] < 1
    # a perfect student everywhere; the ensemble keeps it where the fused features are no better
    assert res["distilled"]["miou"] == pytest.approx(1.0) and res["ensemble"]["miou"] == pytest.approx(1.0)
    assert res["distilled"]["acc_uncovered"] == 1.0
    # fused: recompute by hand from the field: uncovered points predict nothing (wrong)
    vocab = res["vocabulary"]
    name_of = field.label_names
    vec = class_vectors(name_of)
    code_of = {name_of[c]: c for c in (2, 6, 11)}
    text = torch.stack([vec[code_of[n]] for n in vocab])
    pred = (field.dense("fused") @ text.T).argmax(1).numpy()
    gt = np.array([vocab.index(name_of[int(c)]) if name_of[int(c)] in vocab else -1 for c in field.labels])
    ious = []
    for k in range(3):
        tp = np.sum((gt == k) & (pred == k) & covered)
        fp = np.sum((gt >= 0) & (gt != k) & (pred == k) & covered)
        fn = np.sum(gt == k) - tp
        ious.append(tp / (tp + fp + fn))
    assert res["fused"]["miou"] == pytest.approx(np.mean(ious))
    assert res["fused"]["per_class"]["building"] == pytest.approx(ious[1])
    assert res["fused"]["acc_uncovered"] == 0.0 and res["fused"]["miou"] < 1.0
    assert res["best"] in ("distilled", "ensemble")
    assert (run / "plots" / "confusion.png").read_bytes()[:4] == b"\x89PNG"
    on_disk = json.loads((run / "eval.json").read_text())
    assert on_disk == res.summary
    assert eval_stage(run)["skipped"]
    assert not eval_stage(run, force=True)["skipped"]
    only = eval_stage(run, sources=["fused"])
    assert set(only) >= {"fused"} and "distilled" not in only

    from scene_kd.cli import main

    capsys.readouterr()
    assert main(["eval", str(run), "--json", "--force"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["fused"]["miou"] == pytest.approx(res["fused"]["miou"]) and "distilled" in printed
    assert main(["eval", str(run)]) == 0
    assert "mIoU" in capsys.readouterr().out


def test_eval_stage_errors(tmp_path):
    from scene_kd.pipeline import eval_stage

    with pytest.raises(RunStateError, match="field.json"):
        eval_stage(tmp_path)
    run = tmp_path / "run"
    make_run(run)
    fuse_stage(run, FuseConfig())
    with pytest.raises(RunStateError, match="no distilled features"):
        eval_stage(run, sources=["distilled"])
    field = FeatureField.load(run)
    field.labels = None
    field.save(run)
    with pytest.raises(RunStateError, match="no ground-truth labels"):
        eval_stage(run)
    field.labels = np.full(len(field), 1, np.int32)  # all "unclassified"
    field.save(run)
    with pytest.raises(RunStateError, match="no evaluable classes"):
        eval_stage(run)
    assert not (run / "eval.json").exists()


def test_uncovered_fused_points_count_as_wrong(tmp_path):
    """A field where no point is covered scores 0 in fused, however good its (zero) features would look."""
    from scene_kd.pipeline import eval_stage

    pc = labelled_scene()
    vec = class_vectors(pc.label_names)
    feats = torch.stack([vec[int(c)] for c in pc.labels]).to(torch.float16)
    FeatureField(positions=pc.xyz, origin=pc.origin, features={"fused": feats}, teacher="t", text_encoder="oracle:v2:d64",
                 dim=64, coverage=np.zeros(len(pc), np.int32), labels=pc.labels, label_names=pc.label_names).save(tmp_path)
    res = eval_stage(tmp_path)
    assert res["fused"]["miou"] == 0.0 and res["coverage"] == 0.0 and res["fused"]["acc_uncovered"] == 0.0


def test_scores_that_say_little_are_flagged():
    """One evaluable class (a tile of ground + unclassified) or mostly unevaluated points: a warning, not a bare 1.0."""
    from scene_kd.eval.stage import evaluation_warnings

    one = evaluation_warnings(["ground"], 26_107, 110_000)
    assert len(one) == 2 and "only one evaluable class (ground)" in one[0] and "26,107 of 110,000" in one[1]
    assert evaluation_warnings(["ground", "building"], 900, 1000) == []
