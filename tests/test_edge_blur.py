"""Edge blur in pixels (gradient-ratio method) and the realistic oracle's blur rule: a teacher loses on a blurred
view what it would lose on a smaller one."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter
from test_teachers_fixtures import NAMES
from test_teachers_oracle import _mask_stats, street_render

from scene_kd.errors import SceneKDError
from scene_kd.teachers.edge_blur import edge_blur_map, region_blur
from scene_kd.teachers.factory import create_teacher

PALETTE = {2: (120, 100, 80), 11: (60, 60, 60), 6: (200, 80, 70), 20: (30, 30, 220)}


def _blurred(img: np.ndarray, sigma: float) -> np.ndarray:
    x = gaussian_filter(img.astype(np.float64), (sigma, sigma, 0)) if sigma else img.astype(np.float64)
    return np.clip(x + 0.5, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("sigma", [0.0, 1.0, 2.0, 3.0, 5.0])
def test_step_edge_blur_is_read_in_pixels(sigma):
    img = np.zeros((64, 80, 3), np.uint8)
    img[:, 40:] = (200, 180, 160)
    regions = np.zeros((64, 80), np.int64)
    regions[:, 40:] = 1
    yx, blur = edge_blur_map(_blurred(img, sigma), regions)
    assert yx.shape[0] >= 60 and set(yx[:, 1].tolist()) <= {38, 39, 40, 41}  # the edge column, nothing else
    got = float(np.median(blur))
    if sigma == 0:
        assert got < 0.6  # a pixel-sharp step
    else:
        assert abs(got - sigma) < 0.15 * sigma, (sigma, got)


def test_region_blur_per_region_and_nothing_to_measure():
    img = np.zeros((64, 128, 3), np.uint8)
    regions = np.full((64, 128), -1, np.int64)
    img[16:48, 8:56] = (220, 200, 180)
    regions[16:48, 8:56] = 0
    img[16:48, 72:120] = (220, 200, 180)
    regions[16:48, 72:120] = 1
    img[:, :64] = _blurred(img[:, :64], 3.0)  # region 0 blurred, region 1 sharp
    blur, view = region_blur(img, regions, 3)
    assert abs(blur[0] - 3.0) < 0.5 and blur[1] < 0.6
    assert blur[2] == view  # a region with no edge of its own gets the view's median
    flat = np.zeros_like(img)
    blur, view = region_blur(flat, regions, 3)  # no contrast anywhere: nothing measured
    assert np.isnan(blur).all() and np.isnan(view)
    with pytest.raises(ValueError):
        edge_blur_map(img[:, :, 0], regions)


def _painted(seed: int, sigma: float, car=(12, 16)):
    r = street_render(seed, car=car)
    rgb = np.zeros((*r.labels.shape, 3), np.uint8)
    for c, col in PALETTE.items():
        rgb[r.labels == c] = col
    return replace(r, rgb=_blurred(rgb, sigma))


def test_oracle_loses_small_objects_on_blurred_views_only():
    sharp = [_painted(i, 0.0) for i in range(4)]
    blurry = [_painted(i, 3.0) for i in range(4)]
    t = create_teacher("oracle-labels", label_names=NAMES, seed=3)
    true_s, _, _ = _mask_stats(t, sharp)
    true_b, dec_b, area_b = _mask_stats(t, blurry)
    assert (true_s == 20).sum() >= 20  # 192-px cars on a sharp view: most get a mask (SAM grid p = 0.75)
    assert (true_b == 20).sum() == 0  # blurred by 3 px they look like 21-px cars: none does
    assert (true_b == 6).sum() == len(blurry) and (dec_b[true_b == 6] == 6).all()  # the building stays
    # its 56 x 60 px boundary now moves by up to 3 x 2 px instead of 2 px
    building = area_b[true_b == 6]
    assert ((building >= 44 * 48) & (building <= 68 * 72)).all()
    assert ((building < 52 * 56) | (building > 60 * 64)).any()
    ignore = create_teacher("oracle-labels", label_names=NAMES, seed=3, oracle_sharp_px=0)
    assert ((_mask_stats(ignore, blurry)[0]) == 20).sum() >= 20  # sharp_px 0: blur ignored
    assert t.cache_key != ignore.cache_key


def test_views_measured_sharp_draw_exactly_what_they_drew_without_the_blur_rule():
    sharp = [_painted(i, 0.0) for i in range(3)]
    a = create_teacher("oracle-labels", label_names=NAMES, seed=5).encode_views(sharp)
    b = create_teacher("oracle-labels", label_names=NAMES, seed=5, oracle_sharp_px=0).encode_views(sharp)
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x.mask_ids, y.mask_ids) and np.array_equal(x.embeddings.numpy(), y.embeddings.numpy())


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_sharp_px_validated(bad):
    with pytest.raises(SceneKDError, match="oracle_sharp_px"):
        create_teacher("oracle-labels", oracle_sharp_px=bad)
