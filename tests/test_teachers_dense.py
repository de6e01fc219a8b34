"""clip-dense: geometry regions on tiny synthetic renders, the dense ClearCLIP forward against open_clip and a direct
computation, plumbing with random weights, and the offline missing-weights error."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_teachers_fixtures import make_render

from scene_kd.errors import MissingWeightsError, SceneKDError
from scene_kd.render.types import Render
from scene_kd.teachers.clip_dense import (
    clearclip_last_block,
    dense_clip_features,
    region_patch_weights,
    vit_tokens,
)
from scene_kd.teachers.config import TEACHERS, ClipDenseConfig, teacher_kwargs
from scene_kd.teachers.factory import available_teachers, create_teacher
from scene_kd.teachers.geometry_regions import RegionLevel, geometry_regions

TINY = dict(clip_model="ViT-B-16", weights="random", device="cpu", clip_image_size=32)
LEVELS = (RegionLevel(0.05), RegionLevel(0.02, 40.0), RegionLevel(0.02, 40.0, 0.15))


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("SCENE_KD_OFFLINE", "1")


def _K(h, w, f):
    return np.array([[f, 0, w / 2], [0, f, h / 2], [0, 0, 1.0]])


def _n_regions(level_img):
    return len(np.unique(level_img[level_img >= 0]))


def test_two_planes_at_different_depth_give_two_masks_on_every_level():
    h, w = 32, 40
    depth = np.full((h, w), 10.0, np.float32)
    depth[:, w // 2 :] = 15.0  # a 50% jump: e.g. a roof 5 m above the street seen from 10 m
    ids = np.arange(h * w, dtype=np.int32).reshape(h, w)
    reg = geometry_regions(depth, ids, _K(h, w, 40), LEVELS, rgb=np.full((h, w, 3), 128, np.uint8), min_area=8)
    assert reg.shape == (3, h, w) and reg.dtype == np.int32
    for lv in range(3):
        assert _n_regions(reg[lv]) == 2
        assert len(np.unique(reg[lv][:, : w // 2])) == 1 and len(np.unique(reg[lv][:, w // 2 :])) == 1
        assert reg[lv][0, 0] != reg[lv][0, -1]


def test_a_crease_splits_only_levels_with_a_crease_threshold_and_colour_only_the_finest():
    h, w, f = 32, 64, 256.0
    xs = (np.arange(w) + 0.5 - w / 2) / f
    depth = np.tile((10.0 / (1.0 - np.abs(xs))).astype(np.float32), (h, 1))  # planes Z = 10 +- X: a 90-deg ridge
    rgb = np.full((h, w, 3), 100, np.uint8)
    rgb[h // 2 :] = (30, 160, 40)  # a colour step across the ridge: lawn beside paving, same surface
    ids = np.arange(h * w, dtype=np.int32).reshape(h, w)
    ids[0, 0] = -1  # an empty pixel belongs to no region
    reg = geometry_regions(depth, ids, _K(h, w, f), LEVELS, rgb=rgb, min_area=8)
    assert _n_regions(reg[0]) == 1  # depth-only: one continuous surface
    assert _n_regions(reg[1]) == 2  # normals: the two slopes
    assert reg[1][5, 2] != reg[1][5, -3]
    assert _n_regions(reg[2]) == 4  # normals x colour
    assert (reg[:, 0, 0] == -1).all()


def test_small_regions_are_dropped_and_empty_pixels_stay_empty():
    h, w = 24, 24
    depth = np.full((h, w), 10.0, np.float32)
    depth[2:4, 2:4] = 20.0  # a 4-pixel blob in front of nothing: below min_area, absorbed by its neighbour
    depth[:, 20:] = np.inf  # nothing rendered there
    reg = geometry_regions(depth, None, _K(h, w, 24), LEVELS[:1], min_area=8)
    assert _n_regions(reg[0]) == 1
    assert (reg[0][:, 20:] == -1).all() and (reg[0][:, :20] == 0).all()
    with pytest.raises(SceneKDError, match="colour"):
        geometry_regions(depth, None, _K(h, w, 24), LEVELS, rgb=None)


def test_dense_forward_equals_open_clip_and_a_direct_computation():
    torch.manual_seed(0)
    visual = create_teacher("clip-dense", **TINY).bundle.model.visual  # the cached model the other tests use
    x = torch.randn(2, 3, 32, 32)
    tokens, gh, gw = vit_tokens(visual, x)
    assert (gh, gw) == (2, 2)
    ref = visual.forward_intermediates(x, indices=[len(visual.transformer.resblocks) - 2], intermediates_only=True)
    ref = ref["image_intermediates"][0].flatten(2).transpose(1, 2)  # [B, gh*gw, C] open_clip's own tokens
    assert torch.allclose(tokens[:, 1:], ref, atol=1e-5)
    # the ClearCLIP block, computed head by head with explicit softmax
    last = visual.transformer.resblocks[-1]
    y = last.ln_1(tokens)
    wq, _, wv = last.attn.in_proj_weight.chunk(3)
    bq, _, bv = last.attn.in_proj_bias.chunk(3)
    q, v = y @ wq.T + bq, y @ wv.T + bv
    nh = last.attn.num_heads
    d = q.shape[-1] // nh
    heads = []
    for hd in range(nh):
        qh, vh = q[..., hd * d : (hd + 1) * d], v[..., hd * d : (hd + 1) * d]
        heads.append(torch.softmax(qh @ qh.transpose(1, 2) / d**0.5, -1) @ vh)
    direct = last.attn.out_proj(torch.cat(heads, -1))
    direct = visual.ln_post(direct[:, 1:]) @ visual.proj
    assert torch.allclose(clearclip_last_block(visual, tokens), direct, atol=1e-4)
    # another size: the positional grid is interpolated, features stay per patch
    dense = dense_clip_features(visual, torch.randn(1, 3, 48, 64))
    assert dense.shape == (1, 512, 3, 4)
    with pytest.raises(SceneKDError, match="multiple of the patch size"):
        dense_clip_features(visual, torch.randn(1, 3, 40, 64))


def test_clip_dense_random_weights_plumbing():
    assert "clip-dense" in available_teachers() and TEACHERS.config("clip-dense") is ClipDenseConfig
    renders = [make_render(i) for i in range(3)]
    t = create_teacher("clip-dense", **teacher_kwargs(ClipDenseConfig(**TINY)))
    assert t.dim == 512 and t.text_encoder_id == "open_clip:ViT-B-16:random"
    vms = t.encode_views(renders)
    for r, vm in zip(renders, vms, strict=True):
        assert vm.mask_ids.shape == (3, *r.rgb.shape[:2]) and vm.mask_ids.dtype == np.int32
        assert vm.num_masks > 0 and vm.mask_ids.max() == vm.num_masks - 1
        assert vm.embeddings.shape == (vm.num_masks, 512)
        assert torch.allclose(vm.embeddings.norm(dim=1), torch.ones(vm.num_masks), atol=1e-4)
        assert (vm.mask_ids[:, r.ids < 0] == -1).all()
        for lv in range(3):
            rows = np.unique(vm.mask_ids[lv][vm.mask_ids[lv] >= 0])
            assert (vm.mask_level[rows] == lv).all()
        # the masks are the geometry's regions, renumbered per level
        reg = t.regions(r)
        assert ((vm.mask_ids >= 0) == (reg >= 0)).all()
    # the coarse level (big depth jumps only) has fewer masks than the next (small jumps and creases too)
    assert (vms[0].mask_level == 0).sum() < (vms[0].mask_level == 1).sum()
    # a view's result does not depend on the batch it came in
    again = create_teacher("clip-dense", **TINY).encode_views(renders[1:2])
    assert torch.allclose(again[0].embeddings, vms[1].embeddings, atol=1e-4)
    assert t.timings["dense_forward"] > 0 and t.timings["regions"] > 0 and t.timings["pooling"] > 0


def test_photo_view_uses_the_render_depth():
    """A capture view: the photo's colours with the render's depth / ids (render/photos.py) -> regions follow depth."""
    r = make_render(0)
    photo = Render(camera=r.camera, rgb=np.full_like(r.rgb, 90), depth=r.depth, ids=r.ids)
    t = create_teacher("clip-dense", **TINY)
    assert ((t.regions(photo)[0] >= 0) == (t.regions(r)[0] >= 0)).all()
    assert (t.regions(photo)[0] == t.regions(r)[0]).all()  # level 0 uses depth only


def test_offline_without_weights_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("SCENE_KD_CACHE", str(tmp_path))
    t = create_teacher("clip-dense", device="cpu")
    msg = r"(?s)no weights for open_clip ViT-B-16.*offline.*open_clip_model.safetensors.*--weights"  # multi-line
    with pytest.raises(MissingWeightsError, match=msg):
        t.load()
    with pytest.raises(SceneKDError, match="one value per mask level"):
        create_teacher("clip-dense", region_jump_rel=(0.05, 0.02), region_crease_deg=(0.0,), region_colour=(0.0,))


def test_region_pooling_equals_the_mean_of_the_bilinearly_upsampled_map():
    rng = np.random.default_rng(0)
    feats = torch.from_numpy(rng.normal(size=(5, 3, 4)).astype(np.float32))  # [D, gh, gw]
    region = rng.integers(-1, 3, size=(24, 32))
    up = torch.nn.functional.interpolate(feats[None], size=(24, 32), mode="bilinear", align_corners=False)[0]
    w = torch.from_numpy(region_patch_weights(region, 3, 4, 3))
    pooled = w @ feats.reshape(5, -1).T
    for r in range(3):
        assert torch.allclose(pooled[r], up[:, torch.from_numpy(region == r)].mean(1), atol=1e-5)
