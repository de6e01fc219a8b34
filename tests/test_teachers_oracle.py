"""oracle-labels teacher and the oracle text encoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_teachers_fixtures import NAMES, busy_render, make_render

from scene_kd.errors import SceneKDError
from scene_kd.render.types import Render
from scene_kd.scene.types import Camera
from scene_kd.teachers.factory import available_teachers, create_teacher
from scene_kd.teachers.oracle import connected_regions
from scene_kd.teachers.text import (
    CONCEPTS,
    OracleTextEncoder,
    load_text_encoder,
    match_concept,
    normalise_prompt,
)


def test_registry_lists_all_three():
    assert {"oracle-labels", "clip-sam", "clip-grid"} <= set(available_teachers())
    with pytest.raises(SceneKDError, match="unknown teacher"):
        create_teacher("nope")


def test_prompt_normalisation_and_synonyms():
    assert normalise_prompt("A photo of a Parked Car.") == "parked car"
    enc = OracleTextEncoder(64)
    v = enc.encode_text(["car", "vehicle", "a photo of a parked car.", "automobile", "Cars"])
    assert torch.allclose(v @ v.T, torch.ones(5, 5), atol=1e-5)
    for a, b in [("tree", "high vegetation"), ("building", "roof"), ("building", "facade"), ("road", "street"),
                 ("ground", "terrain"), ("grass", "low vegetation"), ("pole", "street light")]:
        x = enc.encode_text([a, b])
        assert float(x[0] @ x[1]) > 0.999, (a, b)
    # distinct concepts are unit vectors with pairwise cosine 0.5 (a shared CLIP-like common direction)
    c = enc.concept_vectors()
    assert c.shape == (len(CONCEPTS), 64)
    expected = 0.5 * torch.eye(len(CONCEPTS)) + 0.5
    assert torch.allclose(c @ c.T, expected, atol=1e-5)


def test_contained_concepts_and_unknowns():
    assert match_concept("red mug handle") == (list(CONCEPTS).index("mug handle"), "contained")
    assert match_concept("a photo of the big mug")[0] == list(CONCEPTS).index("mug")
    enc = OracleTextEncoder(64)
    neg = enc.encode_text(["object", "things", "stuff", "texture"])
    concepts = enc.concept_vectors()
    sims = neg @ concepts.T  # generic words are equally similar to every concept, as in CLIP
    assert sims.min() > 0.69 and sims.max() < 0.71
    assert torch.allclose(neg.norm(dim=1), torch.ones(4))
    assert (neg @ neg.T - torch.eye(4)).abs().max() < 0.999  # distinct from each other
    unknown = enc.encode_text(["spaceship", "zebra crossing light"])
    assert (unknown @ concepts.T).abs().max() < 1e-5 and (unknown @ neg.T).abs().max() < 0.05  # far from all
    again = OracleTextEncoder(64).encode_text(["stuff"])
    assert torch.equal(again[0], neg[2])  # deterministic (hash-seeded)


def test_text_encoder_rebuilt_from_id_and_errors():
    enc = load_text_encoder("oracle:v2:d48")
    assert enc.dim == 48 and enc.id == "oracle:v2:d48"
    assert load_text_encoder("oracle:v2:d48") is enc  # cached per id
    with pytest.raises(SceneKDError):
        load_text_encoder("oracle:v9:d48")
    with pytest.raises(SceneKDError):
        load_text_encoder("what:ever")
    with pytest.raises(SceneKDError, match="too small"):
        OracleTextEncoder(8)
    with pytest.raises(SceneKDError):
        enc.encode_text([])
    with pytest.raises(SceneKDError):
        enc.encode_text(["car", ""])


def test_class_names_stay_distinct():
    enc = OracleTextEncoder(64)
    v = enc.encode_class_names(["wire conductor", "wire connector", "unclassified", "never classified", "road"])
    gram = v @ v.T
    assert (gram - torch.eye(5)).abs().max() < 0.9
    assert float(v[0] @ enc.encode_text(["wire"])[0]) > 0.999  # exact match keeps the concept
    assert float(v[4] @ enc.encode_text(["street"])[0]) > 0.999


def test_connected_regions_8_connectivity():
    keys = np.array([[0, 0, 1, 1], [0, 1, 1, -1], [2, -1, 1, 0], [2, 2, -1, 0]])
    reg = connected_regions(keys)
    assert reg[0, 0] == reg[1, 0] == reg[0, 1]
    assert reg[0, 2] == reg[1, 1] == reg[2, 2]  # diagonal neighbours join
    assert reg[2, 3] == reg[3, 3] != reg[0, 0]  # same class, not connected -> separate region
    assert reg[1, 3] == -1 and reg.max() == 3


def _decode(teacher, renders, vms):
    """Per mask: (true majority class, decoded class by argmax over the scene's class vectors, area)."""
    table = teacher.class_vectors(sorted(NAMES))
    classes = sorted(table)
    mat = torch.stack([table[c] for c in classes])
    out = []
    for r, vm in zip(renders, vms, strict=True):
        dec = np.array(classes)[(vm.embeddings @ mat.T).argmax(1).numpy()]
        for lv in range(vm.mask_ids.shape[0]):
            ids = vm.mask_ids[lv]
            for m in np.unique(ids[ids >= 0]):
                lab = r.labels[ids == m]
                vals, counts = np.unique(lab, return_counts=True)
                out.append((vals[counts.argmax()], dec[m], lab.size, (lab == dec[m]).sum()))
    return np.array(out)


def test_masks_pure_at_zero_noise():
    renders = [make_render(i) for i in range(4)] + [busy_render(i) for i in range(2)]
    t = create_teacher("oracle-labels", label_names=NAMES, oracle_dim=64, oracle_realism="perfect")
    vms = t.encode_views(renders)
    for r, vm in zip(renders, vms, strict=True):
        assert vm.mask_ids.shape == (1, *r.labels.shape) and vm.mask_ids.dtype == np.int32
        assert torch.allclose(vm.embeddings.norm(dim=1), torch.ones(vm.num_masks))
        assert ((vm.mask_ids[0] >= 0) == (r.labels >= 0)).all()  # every labelled pixel is in one mask
        # instances split: no mask mixes two instances
        for m in np.unique(vm.mask_ids[0][(r.instances >= 0) & (r.labels >= 0)]):
            assert len(np.unique(r.instances[vm.mask_ids[0] == m])) == 1
    d = _decode(t, renders, vms)
    purity = d[:, 3].sum() / d[:, 2].sum()
    assert purity >= 0.95 and (d[:, 0] == d[:, 1]).all()


def test_coarse_level_merges_instances():
    r = busy_render(0)
    r.labels[40:45, 0:40] = 20  # a row of touching cars, instances 100..104
    r.instances[40:45, 0:40] = 100 + np.arange(40)[None] // 8
    t = create_teacher("oracle-labels", label_names=NAMES, oracle_levels=2, oracle_realism="perfect")
    vm = t.encode_views([r])[0]
    assert vm.mask_ids.shape[0] == 2
    fine, coarse = vm.mask_ids
    row = (r.instances >= 100)
    assert len(np.unique(fine[row])) == 5 and len(np.unique(coarse[row])) == 1
    assert set(np.unique(vm.mask_level)) == {0, 1}


@pytest.mark.parametrize("flip", [0.1, 0.3])
def test_label_flip_rate_honoured(flip):
    renders = [busy_render(i) for i in range(12)]
    t = create_teacher("oracle-labels", label_names=NAMES, label_flip=flip, seed=3, oracle_realism="perfect")
    d = _decode(t, renders, t.encode_views(renders))
    assert len(d) > 300
    rate = float((d[:, 0] != d[:, 1]).mean())
    assert abs(rate - flip) <= 0.02, rate


def test_embed_noise_level_and_determinism():
    renders = [busy_render(i) for i in range(6)]
    s = 0.3
    t = create_teacher("oracle-labels", label_names=NAMES, embed_noise=s, seed=1, oracle_realism="perfect")
    vms = t.encode_views(renders)
    clean = create_teacher("oracle-labels", label_names=NAMES, oracle_realism="perfect").encode_views(renders)
    ratios = []
    for a, b in zip(vms, clean, strict=True):
        par = (a.embeddings * b.embeddings).sum(1, keepdim=True)
        perp = a.embeddings - par * b.embeddings
        ratios.append((perp.norm(dim=1) / par[:, 0]).numpy())
    # |noise_perp| / (1 + noise_par) estimates s * sqrt((D-1)/D)
    est = float(np.sqrt(np.mean(np.concatenate(ratios) ** 2)))
    assert abs(est - s * np.sqrt(63 / 64)) < 0.02 * 3, est
    again = create_teacher("oracle-labels", label_names=NAMES, embed_noise=s, seed=1,
                           oracle_realism="perfect").encode_views(renders)
    assert all(torch.equal(x.embeddings, y.embeddings) for x, y in zip(vms, again, strict=True))
    other = create_teacher("oracle-labels", label_names=NAMES, embed_noise=s, seed=2,
                           oracle_realism="perfect").encode_views(renders)
    assert not torch.equal(other[0].embeddings, vms[0].embeddings)
    # batching does not change the result
    single = [t.encode_views([r])[0] for r in renders[:2]]
    assert torch.equal(single[1].embeddings, vms[1].embeddings)


def test_bad_inputs():
    r = make_render(0)
    r.labels = None
    t = create_teacher("oracle-labels", label_names=NAMES)
    with pytest.raises(SceneKDError, match="labels"):
        t.encode_views([r])
    with pytest.raises(SceneKDError):
        create_teacher("oracle-labels", label_flip=1.5)
    with pytest.raises(SceneKDError):
        create_teacher("oracle-labels", embed_noise=float("nan"))
    with pytest.raises(SceneKDError, match="oracle_realism"):
        create_teacher("oracle-labels", oracle_realism="psychic")
    with pytest.raises(SceneKDError, match="oracle_min_area_px"):
        create_teacher("oracle-labels", oracle_min_area_px=0)


# ---- the realistic oracle (the default) ------------------------------------------------------------------


def street_render(seed, h=128, w=128, car=(4, 5)):
    """A large building and a road on ground, with 12 cars of ``car`` = (rows, cols) pixels on the road."""
    rng = np.random.default_rng(500 + seed)
    labels = np.full((h, w), 2, np.int32)
    labels[h // 2 :, :] = 11
    labels[4:60, 8:68] = 6  # ~3,400 px building
    inst = np.full((h, w), -1, np.int32)
    inst[4:60, 8:68] = 99
    ch, cw = car
    for k in range(12):
        r, c = divmod(k, 4)
        y, x = h // 2 + 4 + r * (ch + 8) + rng.integers(3), 4 + c * (cw + 12) + rng.integers(4)
        labels[y : y + ch, x : x + cw] = 20
        inst[y : y + ch, x : x + cw] = k
    ids = np.arange(h * w, dtype=np.int32).reshape(h, w)
    K = np.array([[w, 0, w / 2], [0, w, h / 2], [0, 0, 1.0]])
    cam = Camera(K=K, world_to_cam=np.eye(4), width=w, height=h, level=0, name=f"street{seed}")
    return Render(camera=cam, rgb=np.zeros((h, w, 3), np.uint8), depth=np.full((h, w), 10.0, np.float32), ids=ids,
                  labels=labels, instances=inst)


def _mask_stats(teacher, renders):
    """Per mask: (majority true class, decoded class, area)."""
    d = _decode(teacher, renders, teacher.encode_views(renders))
    return d[:, 0], d[:, 1], d[:, 2]


def test_realistic_oracle_drops_20_pixel_cars_keeps_large_regions():
    renders = [street_render(i) for i in range(6)]
    t = create_teacher("oracle-labels", label_names=NAMES)  # the default is realistic
    assert t.realism == "realistic"
    true, dec, area = _mask_stats(t, renders)
    assert 20 not in set(true.tolist())  # no car of 4 x 5 px gets a mask
    big = true == 6
    assert big.sum() == len(renders) and (dec[big] == 6).all()  # the building: one mask per view, right class
    assert (area[big] >= 52 * 56).all() and (area[big] <= 60 * 64).all()  # boundary moved by <= 2 px
    perfect = create_teacher("oracle-labels", label_names=NAMES, oracle_realism="perfect")
    ptrue, pdec, _ = _mask_stats(perfect, renders)
    assert (ptrue == 20).sum() == 12 * len(renders) and (pdec == ptrue).all()  # today's oracle sees every car


def test_realistic_oracle_confuses_small_masks_more():
    renders = [street_render(i, car=(9, 12)) for i in range(30)]  # 108-px cars: kept with p ~ 0.42
    t = create_teacher("oracle-labels", label_names=NAMES, seed=4)
    true, dec, area = _mask_stats(t, renders)
    cars = true == 20
    assert 40 < cars.sum() < 12 * len(renders) * 0.7  # some cars dropped (SAM's grid), many kept
    wrong_small = float((dec[cars] != 20).mean())
    expected = 0.5 * np.log(1024 / 108) / np.log(1024 / 64)
    assert abs(wrong_small - expected) < 0.15, (wrong_small, expected)
    big = area >= 1024
    assert big.sum() >= len(renders) and (dec[big] == true[big]).all()  # large masks: no size confusion


def test_realistic_oracle_boundaries_and_determinism():
    renders = [street_render(i, car=(12, 16)) for i in range(4)]
    a = create_teacher("oracle-labels", label_names=NAMES, seed=1).encode_views(renders)
    b = create_teacher("oracle-labels", label_names=NAMES, seed=1).encode_views(renders)
    c = create_teacher("oracle-labels", label_names=NAMES, seed=2).encode_views(renders)
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x.mask_ids, y.mask_ids) and torch.equal(x.embeddings, y.embeddings)
    assert any(not np.array_equal(x.mask_ids, z.mask_ids) for x, z in zip(a, c, strict=True))
    exact = create_teacher("oracle-labels", label_names=NAMES, oracle_realism="perfect").encode_views(renders)
    from scipy.ndimage import binary_dilation, binary_erosion

    square = np.ones((3, 3), bool)
    moved = 0
    for vm, ex in zip(a, exact, strict=True):
        # each realistic mask is its exact region with the boundary moved by at most oracle_boundary_px = 2
        real, ref = vm.mask_ids[0], ex.mask_ids[0]
        for k in np.unique(real[real >= 0]):
            mine = real == k
            fits = []
            for j in np.unique(ref[mine]):  # the exact region it comes from is one of those it overlaps
                region = ref == j
                if not (mine & ~binary_dilation(region, square, iterations=2)).any() and not (
                        binary_erosion(region, square, iterations=2, border_value=1) & ~mine).any():
                    fits.append(int((mine != region).sum()))
            assert fits, k
            moved += min(fits)
    assert moved > 0
