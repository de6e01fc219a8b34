"""Query core (relevancy, segmentation, exports) on FeatureFields built here with known features."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from scene_kd.errors import RunStateError, SceneKDError
from scene_kd.field import FeatureField
from scene_kd.query.config import DEFAULT_NEGATIVES
from scene_kd.query.export import asprs_code, classification_codes, export_points
from scene_kd.query.relevancy import relevancy
from scene_kd.query.segment import label_counts, parse_labels, segment
from scene_kd.query.similarity import similarities

CLASSES = ["road", "building", "tree", "car"]
D = 16


class BasisEncoder:
    """A text encoder for tests: each known word -> one basis vector (templates stripped), others -> e_15."""

    def __init__(self, id: str = "test:basis:d16", dim: int = D):
        self.id, self.dim = id, dim
        self.words = {w: i for i, w in enumerate(CLASSES + list(DEFAULT_NEGATIVES))}
        self.calls: list[list[str]] = []

    def encode_text(self, prompts):
        self.calls.append(list(prompts))
        out = torch.zeros(len(prompts), self.dim)
        for r, p in enumerate(prompts):
            word = p.lower().removeprefix("a photo of a ").rstrip(".").strip()
            out[r, self.words.get(word, self.dim - 1)] = 1.0
        return out


def make_field(n_per_class: int = 50, n_blank: int = 20, seed: int = 0, encoder_id: str = "test:basis:d16",
               noise: float = 0.05, sources=("fused",)) -> FeatureField:
    """Points of each class with features = 2 * (class basis vector + noise); ``n_blank`` all-zero rows."""
    rng = np.random.default_rng(seed)
    labels = np.concatenate([np.full(n_per_class, c) for c in range(len(CLASSES))] + [np.full(n_blank, -1)]).astype(np.int32)
    feats = np.zeros((len(labels), D), np.float32)
    for i, c in enumerate(labels):
        if c >= 0:
            feats[i, c] = 2.0
            feats[i] += noise * rng.standard_normal(D)
    feats[labels >= 0, len(CLASSES) : len(CLASSES) + 4] = 0.0  # nothing points at the negatives
    features = {s: torch.from_numpy(feats).to(torch.float16) for s in sources}
    return FeatureField(
        positions=rng.uniform(0, 10, (len(labels), 3)).astype(np.float32), origin=np.array([1000.0, 2000.0, 10.0]),
        features=features, teacher="test", text_encoder=encoder_id, dim=D,
        rgb=rng.integers(0, 255, (len(labels), 3)).astype(np.uint8), labels=labels,
        label_names={i: n for i, n in enumerate(CLASSES)},
    )


def lerf_reference(feats: np.ndarray, q: np.ndarray, negs: np.ndarray, tau: float) -> np.ndarray:
    """min over negatives of softmax(tau * [cos_q, cos_n])_0, in float64, straight from the definition."""
    f = feats.astype(np.float64)
    norm = np.linalg.norm(f, axis=1, keepdims=True)
    f = np.divide(f, norm, out=np.zeros_like(f), where=norm > 0)
    sq = f @ q
    out = np.full(len(f), np.inf)
    for n in negs:
        sn = f @ n
        e = np.exp(tau * np.stack([sq, sn], 1))
        out = np.minimum(out, e[:, 0] / e.sum(1))
    return out


@pytest.mark.parametrize("precision,tol", [("float32", 1e-5), ("float16", 2e-3), ("bfloat16", 2e-2), ("auto", 1e-5)])
def test_relevancy_equals_lerf_definition(precision, tol):
    rng = np.random.default_rng(1)
    n, d = 3000, 32
    feats = rng.standard_normal((n, d)).astype(np.float32)
    feats[:10] = 0
    text = rng.standard_normal((5, d))
    text /= np.linalg.norm(text, axis=1, keepdims=True)

    class RandomEncoder:
        id, dim = "test:random:d32", d

        def encode_text(self, prompts):
            table = {"query": 0, "object": 1, "things": 2, "stuff": 3, "texture": 4}
            return torch.from_numpy(text[[table[p] for p in prompts]]).float()

    field = FeatureField(positions=np.zeros((n, 3), np.float32), origin=np.zeros(3),
                         features={"fused": torch.from_numpy(feats).half()}, teacher="t", text_encoder=RandomEncoder.id, dim=d)
    rel = relevancy(field, "query", encoder=RandomEncoder(), temperature=10.0, precision=precision)
    assert rel.shape == (n,) and rel.dtype == torch.float32
    ref = lerf_reference(torch.from_numpy(feats).half().float().numpy(), text[0], text[1:], 10.0)
    np.testing.assert_allclose(rel.numpy(), ref, atol=tol)
    np.testing.assert_allclose(rel[:10].numpy(), 0.5, atol=1e-6)  # zero features: exactly undecided


def test_relevancy_picks_the_queried_class_and_caches_text():
    field, enc = make_field(), BasisEncoder()
    rel = relevancy(field, "building", encoder=enc).numpy()
    is_building = field.labels == 1
    assert rel[is_building].min() > 0.99
    assert rel[~is_building].max() < 0.75
    np.testing.assert_allclose(rel[field.labels == -1], 0.5, atol=1e-6)
    assert sum(len(c) for c in enc.calls) == 5  # query + 4 negatives
    relevancy(field, "building", encoder=enc)
    relevancy(field, "tree", encoder=enc)
    assert enc.calls[-1] == ["tree"]  # negatives and "building" came from the cache
    assert sum(len(c) for c in enc.calls) == 6
    # a higher temperature sharpens, a lower one softens
    soft = relevancy(field, "building", encoder=enc, temperature=1.0).numpy()
    assert 0.6 < soft[is_building].mean() < rel[is_building].mean()


def test_relevancy_sources_and_ensemble():
    field = make_field(sources=("fused", "distilled"))
    # distilled knows the cars; fused features of car points are zero (never seen)
    cars = np.where(field.labels == 3)[0]
    field.features["fused"].data[cars] = 0
    enc = BasisEncoder()
    assert field.sources == ["fused", "distilled", "ensemble"]
    rel_fused = relevancy(field, "car", source="fused", encoder=enc).numpy()
    rel_dist = relevancy(field, "car", source="distilled", encoder=enc).numpy()
    rel_auto = relevancy(field, "car", encoder=enc).numpy()  # auto = ensemble
    np.testing.assert_allclose(rel_fused[cars], 0.5, atol=1e-6)
    assert rel_dist[cars].min() > 0.99 and rel_auto[cars].min() > 0.99
    # ensemble equals relevancy computed on FeatureField.features_for("ensemble", vocabulary)
    emb = enc.encode_text(["car", *DEFAULT_NEGATIVES])
    ens = field.features_for("ensemble", emb).float().numpy()
    np.testing.assert_allclose(rel_auto, lerf_reference(ens, emb[0].numpy(), emb[1:].numpy(), 10.0), atol=1e-5)
    sims = similarities(field, emb, source="ensemble")
    assert sims.shape == (len(field), 5)


def test_relevancy_bad_input():
    field, enc = make_field(), BasisEncoder()
    with pytest.raises(SceneKDError, match="empty query"):
        relevancy(field, "   ", encoder=enc)
    with pytest.raises(RunStateError, match="text encoder"):
        relevancy(field, "road", encoder=BasisEncoder(id="other:encoder"))
    with pytest.raises(RunStateError, match="no distilled features"):
        relevancy(field, "road", source="distilled", encoder=enc)
    with pytest.raises(SceneKDError, match="unknown feature source"):
        relevancy(field, "road", source="best", encoder=enc)
    with pytest.raises(SceneKDError, match="negative"):
        relevancy(field, "road", negatives=[], encoder=enc)
    with pytest.raises(SceneKDError, match="precision"):
        relevancy(field, "road", precision="int4", encoder=enc)
    with pytest.raises(RunStateError, match="16-d"):
        relevancy(field, "road", encoder=BasisEncoder(dim=8))
    bad = make_field()
    bad.features["fused"].data[3, 2] = float("nan")
    with pytest.raises(RunStateError, match="NaN"):
        relevancy(bad, "road", encoder=enc)


def test_segment_argmax_unknown_and_counts():
    field, enc = make_field(), BasisEncoder()
    idx, conf = segment(field, "tree, road,building,car", encoder=enc)
    names = ["tree", "road", "building", "car"]
    assert idx.dtype == torch.int64 and conf.dtype == torch.float32 and idx.shape == conf.shape == (len(field),)
    known = field.labels >= 0
    predicted = np.array(names)[idx.numpy()[known]]
    np.testing.assert_array_equal(predicted, np.array(CLASSES)[field.labels[known]])
    assert conf[torch.from_numpy(known)].min() > 0.99
    assert ((conf >= 0) & (conf <= 1)).all()
    assert any(p == "a photo of a tree." for call in enc.calls for p in call)  # the template was applied
    # blank points: all similarities 0 -> uniform confidence, and unknown with a threshold
    np.testing.assert_allclose(conf[torch.from_numpy(~known)].numpy(), 1 / 4, atol=1e-6)
    idx_u, _ = segment(field, names, encoder=enc, unknown_threshold=0.3)
    assert (idx_u.numpy()[~known] == -1).all() and (idx_u.numpy()[known] >= 0).all()
    counts, unknown = label_counts(idx_u, names)
    assert counts == {"tree": 50, "road": 50, "building": 50, "car": 50} and unknown == 20


def test_parse_labels_errors():
    assert parse_labels(" a ,b,  c  d") == ["a", "b", "c d"]
    for bad in ("", " , ", "a,,b", "a,A"):
        with pytest.raises(SceneKDError):
            parse_labels(bad)


def test_classification_codes():
    assert asprs_code("Trees") == 5 and asprs_code("road") == 11 and asprs_code("buildings") == 6
    assert asprs_code("water") == 9 and asprs_code("ground") == 2 and asprs_code("car") is None
    codes = classification_codes(["car", "road", "tree", "high vegetation", "bench"])
    assert codes == {"road": 11, "tree": 5, "car": 64, "high vegetation": 65, "bench": 66}
    assert classification_codes(["car"], user_start=19, max_code=31) == {"car": 19}
    with pytest.raises(SceneKDError):
        classification_codes([f"thing{i}" for i in range(20)], user_start=19, max_code=31)


def test_export_ply_properties(tmp_path):
    from plyfile import PlyData

    field, enc = make_field(), BasisEncoder()
    rel = relevancy(field, "car", encoder=enc)
    idx, conf = segment(field, CLASSES, encoder=enc, unknown_threshold=0.3)
    mask = rel > 0.9
    info = export_points(tmp_path / "hits.ply", field, mask=mask, relevancy=rel, label_index=idx,
                         confidence=conf, label_names=CLASSES)
    assert info["count"] == int(mask.sum()) == 50
    v = PlyData.read(str(tmp_path / "hits.ply"))["vertex"]
    names = {p.name for p in v.properties}
    assert {"x", "y", "z", "red", "green", "blue", "relevancy", "label", "confidence"} <= names
    assert len(v["x"]) == 50 and (np.asarray(v["label"]) == 3).all()
    np.testing.assert_allclose(np.asarray(v["relevancy"]), rel.numpy()[mask.numpy()], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(v["x"]), field.world_positions()[mask.numpy(), 0], atol=1e-3)
    with pytest.raises(SceneKDError, match="empty"):
        export_points(tmp_path / "none.ply", field, mask=np.zeros(len(field), bool))
    with pytest.raises(SceneKDError, match="cannot export"):
        export_points(tmp_path / "x.obj", field)


def _write_source_las(path: Path, field: FeatureField) -> None:
    import laspy

    header = laspy.LasHeader(version="1.4", point_format=7)
    header.scales = np.array([0.01, 0.01, 0.01])
    header.offsets = np.array([1000.0, 2000.0, 0.0])
    header.vlrs.append(laspy.VLR(user_id="LASF_Projection", record_id=2112, description="OGC WKT",
                                 record_data=b'PROJCS["test CRS"]\x00'))
    las = laspy.LasData(header)
    world = field.world_positions()
    las.x, las.y, las.z = world[:, 0], world[:, 1], world[:, 2]
    las.red, las.green, las.blue = (field.rgb[:, i].astype(np.uint16) * 257 for i in range(3))
    las.classification = np.full(len(field), 1, np.uint8)
    las.write(str(path))


def test_export_las_keeps_source_header(tmp_path):
    import laspy

    from scene_kd.scene.io import load_scene
    from scene_kd.scene.runscene import save_run_scene

    field, enc = make_field(), BasisEncoder()
    src = tmp_path / "input.las"
    _write_source_las(src, field)
    scene = load_scene(src)
    # the run's field has the scene's points (as the pipeline makes them)
    field.positions, field.origin = scene.xyz, scene.origin
    run = tmp_path / "run"
    save_run_scene(run, scene)
    names = ["car", "road", "tree", "bench"]
    idx, conf = segment(field, names, encoder=enc, unknown_threshold=0.3)
    info = export_points(tmp_path / "out.laz", field, run_dir=run, label_index=idx, confidence=conf, label_names=names)
    assert info["header_from"] == str(src.resolve()) and info["classes"] == {"road": 11, "tree": 5, "car": 64, "bench": 65}
    out = laspy.read(str(tmp_path / "out.laz"))
    assert out.header.point_format.id == 7
    np.testing.assert_allclose(out.header.scales, [0.01, 0.01, 0.01])
    np.testing.assert_allclose(out.header.offsets, [1000.0, 2000.0, 0.0])
    assert any(v.record_id == 2112 and "test CRS" in str(getattr(v, "string", "")) for v in out.header.vlrs)
    expected = np.select([field.labels == 0, field.labels == 2, field.labels == 3], [11, 5, 64], default=1)
    np.testing.assert_array_equal(np.asarray(out.classification), expected)  # buildings: not asked -> unknown -> 1
    np.testing.assert_allclose(np.asarray(out["confidence"]), conf.numpy(), rtol=1e-6)
    np.testing.assert_allclose(out.x, field.world_positions()[:, 0], atol=0.006)

    # a selection with relevancy keeps the input's classification
    rel = relevancy(field, "tree", encoder=enc)
    info = export_points(tmp_path / "trees.las", field, run_dir=run, mask=rel > 0.9, relevancy=rel)
    trees = laspy.read(str(tmp_path / "trees.las"))
    assert info["count"] == len(trees.points) == 50
    assert (np.asarray(trees.classification) == 1).all() and (np.asarray(trees["relevancy"]) > 0.99).all()


def test_export_las_without_source_header(tmp_path):
    import laspy

    field, enc = make_field(), BasisEncoder()
    idx, conf = segment(field, CLASSES, encoder=enc)
    info = export_points(tmp_path / "out.las", field, label_index=idx, confidence=conf, label_names=CLASSES)
    assert info["header_from"] is None
    out = laspy.read(str(tmp_path / "out.las"))
    assert len(out.points) == len(field)
    np.testing.assert_allclose(out.z, field.world_positions()[:, 2], atol=0.001)
    assert set(np.unique(np.asarray(out.classification))) == {11, 6, 5, 64}
