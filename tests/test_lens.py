"""Lens distortion of imported cameras (scene_kd/scene/lens.py): reading COLMAP / transforms.json models,
refusing the others in one line, undistorting photos with OpenCV, and a distorted synthetic capture whose
render-vs-photo PSNR after undistortion matches an undistorted copy's."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from scene_kd.errors import SceneFormatError
from scene_kd.render.views import look_at
from scene_kd.scene.cameras import load_colmap_cameras, load_transforms_json
from scene_kd.scene.lens import (
    Distortion,
    colmap_distortion,
    covering_pinhole,
    distort_image,
    transforms_distortion,
    undistort_image,
    undistorted_camera,
)
from scene_kd.scene.types import Camera


@pytest.mark.parametrize(("model", "params", "want"), [
    ("PINHOLE", [], None),
    ("SIMPLE_RADIAL", [0.0], None),
    ("SIMPLE_RADIAL", [-0.2], ("opencv", (-0.2, 0.0, 0.0, 0.0))),
    ("RADIAL", [-0.2, 0.05], ("opencv", (-0.2, 0.05, 0.0, 0.0))),
    ("OPENCV", [-0.2, 0.05, 0.001, -0.002], ("opencv", (-0.2, 0.05, 0.001, -0.002))),
    ("FULL_OPENCV", [0.1, 0.2, 0.0, 0.0, 0.3, 0.4, 0.5, 0.6], ("opencv", (0.1, 0.2, 0.0, 0.0, 0.3, 0.4, 0.5, 0.6))),
    ("FULL_OPENCV", [0.1, 0.2, 0.0, 0.0, 0.3, 0.0, 0.0, 0.0], ("opencv", (0.1, 0.2, 0.0, 0.0, 0.3))),
    ("OPENCV_FISHEYE", [0.0, 0.0, 0.0, 0.0], ("fisheye", (0.0, 0.0, 0.0, 0.0))),  # still equidistant
])
def test_colmap_models_in_opencv_terms(model, params, want):
    got = colmap_distortion(model, params)
    assert (got.model, got.coeffs) == want if want else got is None


def test_transforms_json_terms_in_opencv_order():
    terms = {"k1": -0.3, "k2": 0.1, "k3": 0.02, "p1": 0.001, "p2": -0.001}
    assert transforms_distortion("OPENCV", terms.get).coeffs == (-0.3, 0.1, 0.001, -0.001, 0.02)
    assert transforms_distortion("OPENCV", {"k1": -0.3}.get) == colmap_distortion("SIMPLE_RADIAL", [-0.3])
    assert transforms_distortion("PINHOLE", {}.get) is None
    assert transforms_distortion("OPENCV_FISHEYE", {"k1": 0.1}.get).coeffs == (0.1, 0.0, 0.0, 0.0)


def _colmap_folder(root, line: str):
    sparse = root / "sparse" / "0"
    sparse.mkdir(parents=True)
    (sparse / "cameras.txt").write_text(line + "\n")
    (sparse / "images.txt").write_text("1 1 0 0 0 0 0 0 1 a.png\n\n")
    return root


@pytest.mark.parametrize("line", ["1 FOV 40 30 30 30 20 15 0.9", "1 SIMPLE_RADIAL_FISHEYE 40 30 30 20 15 0.1",
                                  "1 THIN_PRISM_FISHEYE 40 30 30 30 20 15 0 0 0 0 0 0 0 0"])
def test_unsupported_colmap_models_are_refused_in_one_line(tmp_path, line):
    with pytest.raises(SceneFormatError) as e:
        load_colmap_cameras(_colmap_folder(tmp_path, line))
    msg = str(e.value)
    assert "\n" not in msg and line.split()[1] in msg and "image_undistorter" in msg


@pytest.mark.parametrize(("meta", "words"), [({"camera_model": "EQUIRECTANGULAR"}, "EQUIRECTANGULAR"),
                                             ({"camera_model": "OPENCV", "k4": 0.01}, "k4")])
def test_unsupported_transforms_models_are_refused_in_one_line(tmp_path, meta, words):
    frame = {"file_path": "a.png", "transform_matrix": np.eye(4).tolist(), "fl_x": 30, "w": 40, "h": 30}
    (tmp_path / "transforms.json").write_text(json.dumps({**meta, "frames": [frame]}))
    with pytest.raises(SceneFormatError) as e:
        load_transforms_json(tmp_path / "transforms.json")
    assert "\n" not in str(e.value) and words in str(e.value)


def test_colmap_distorted_camera_is_read_with_its_distortion(tmp_path):
    cams = load_colmap_cameras(_colmap_folder(tmp_path, "1 OPENCV 40 30 31 32 20 15 -0.2 0.05 0.001 0.002"))
    c = cams[0]
    np.testing.assert_allclose(c.K, [[31, 0, 20], [0, 32, 15], [0, 0, 1]])
    assert c.distortion == Distortion("opencv", (-0.2, 0.05, 0.001, 0.002))
    assert Camera.from_json(c.to_json()).distortion == c.distortion


def _camera(dist: Distortion) -> Camera:
    K = np.array([[70.0, 0, 48.3], [0, 70.0, 35.8], [0, 0, 1]])
    return Camera(K=K, world_to_cam=look_at(np.array([3.0, 0, 1]), np.zeros(3)), width=96, height=72,
                  distortion=dist)


@pytest.mark.parametrize("dist", [Distortion("opencv", (-0.35, 0.1, 0.002, -0.001)),
                                  Distortion("opencv", (0.2, 0.0, 0.0, 0.0)),
                                  Distortion("fisheye", (0.05, -0.02, 0.01, 0.0))])
def test_undistort_inverts_the_lens(dist):
    """A smooth image seen by the pinhole, bent by the lens (distort_image), then undistorted, is the image again
    (up to bilinear resampling); the pinhole's image is filled by the photo everywhere (alpha 0)."""
    cam = _camera(dist)
    pin = undistorted_camera(cam)
    assert pin.distortion is None and (pin.width, pin.height) == (cam.width, cam.height)
    wide = covering_pinhole(cam)
    assert wide.width >= cam.width and wide.height >= cam.height
    ys, xs = np.mgrid[0:wide.height, 0:wide.width] + 0.5  # our pixel centres
    u, v = xs - wide.K[0, 2], ys - wide.K[1, 2]  # a pattern fixed to the rays, not to a camera's pixels
    scene = (127 + 60 * np.sin(u / 9.0) + 60 * np.cos(v / 7.0)).astype(np.float32)
    photo = distort_image(scene, cam, pinhole=wide, fill=-1)
    assert (photo >= 0).all()  # the wide render covered every ray of the lens
    back = undistort_image(photo, cam, pin, fill=-1)
    assert (back >= 0).all()
    ys, xs = np.mgrid[0:pin.height, 0:pin.width] + 0.5
    u, v = (xs - pin.K[0, 2]) * wide.K[0, 0] / pin.K[0, 0], (ys - pin.K[1, 2]) * wide.K[1, 1] / pin.K[1, 1]
    want = 127 + 60 * np.sin(u / 9.0) + 60 * np.cos(v / 7.0)
    assert np.abs(back - want)[2:-2, 2:-2].max() < 1.5  # grey levels of 255, bilinear twice (0.4-0.7 seen)
    assert np.abs(photo - scene[: cam.height, : cam.width]).max() > 20  # the lens did bend it


@pytest.mark.parametrize("dist", [Distortion("opencv", (0.5, 0.0, 0.0, 0.0)),
                                  Distortion("opencv", (-0.3, 0.05, 0.0, 0.0, 0.01))])
def test_pixel_centres_follow_our_convention(dist):
    """Our K puts pixel centres at + 0.5 (COLMAP, gsplat, our renderers); OpenCV's at integers. A ray's pixel by
    the lens model written out here must match the undistortion maps and points to 1e-3 px (off by up to
    0.5 x (1 - distortion scale) with the conventions mixed)."""
    from scene_kd.scene.lens import _maps, _undistort_points, radial_curve

    cam = _camera(dist)
    pin = undistorted_camera(cam)
    ys, xs = np.mgrid[0:pin.height, 0:pin.width] + 0.5  # our pixel centres
    xn, yn = (xs - pin.K[0, 2]) / pin.K[0, 0], (ys - pin.K[1, 2]) / pin.K[1, 1]
    r = np.hypot(xn, yn)
    scale = radial_curve(dist, r) / r
    want_x, want_y = cam.K[0, 2] + cam.K[0, 0] * xn * scale, cam.K[1, 2] + cam.K[1, 1] * yn * scale
    mx, my = _maps(cam, pin)  # OpenCV's remap coordinates: centres at integers
    np.testing.assert_allclose(mx + 0.5, want_x, atol=1e-3)
    np.testing.assert_allclose(my + 0.5, want_y, atol=1e-3)
    back = _undistort_points(np.stack([want_x.ravel(), want_y.ravel()], 1), cam, pin.K)
    np.testing.assert_allclose(back, np.stack([xs.ravel(), ys.ravel()], 1), atol=1e-3)
    assert np.abs(scale - 1).max() > 0.1  # strong enough for a mixed convention to show


@pytest.mark.parametrize(("coeffs", "words"), [((7.3, 0.0, 0.0, 0.0), "too strong"),
                                               ((-8.15, 0.0, 0.0, 0.0), "folds back at 16%")])
def test_distortion_no_pinhole_matches_is_refused_in_one_line(coeffs, words):
    """k1 = -8.15 and 7.3: the range of a field COLMAP capture's SIMPLE_RADIAL k (issue 23) on a 70 px focal."""
    cam = _camera(Distortion("opencv", coeffs))
    with pytest.raises(SceneFormatError, match=words) as e:
        undistorted_camera(cam)
    assert "\n" not in str(e.value)
    if coeffs[0] < 0:
        with pytest.raises(SceneFormatError, match="folds back"):
            covering_pinhole(cam)  # nor can a synthetic capture be made with it


def _as_pinhole(src, dst):
    """A copy of capture ``src`` whose transforms.json has no distortion terms: its photos used as if pinhole."""
    shutil.copytree(src, dst)
    meta = json.loads((dst / "transforms.json").read_text())
    meta["camera_model"] = "OPENCV"
    for f in meta["frames"]:
        for k in ("k1", "k2", "k3", "k4", "p1", "p2"):
            f.pop(k, None)
    (dst / "transforms.json").write_text(json.dumps(meta))
    return dst


def _label_agreement(run) -> float:
    """Over the pixels where the photo's label image or the render has a class: the fraction where both agree."""
    from scene_kd.render.photos import photo_labels_npz
    from scene_kd.render.types import iter_renders

    same = either = 0
    for i, r in iter_renders(run):
        with np.load(photo_labels_npz(run, i)) as z:
            hit = (z["labels"] >= 0) | (r.labels >= 0)
            same += int((z["labels"] == r.labels)[hit].sum())
            either += int(hit.sum())
    return same / either


SIZE = {"views": 4, "width": 96, "height": 72, "points": 4000}


def _render_psnr(capture, run) -> list[float]:
    """Render-vs-photo PSNR (dB) of each view of ``capture`` after the render stage (oracle-labels config 'ci')."""
    from scene_kd.config import load_config
    from scene_kd.pipeline import run_pipeline
    from scene_kd.runio import read_json

    cfg = load_config("ci", {"render": {"width": SIZE["width"], "height": SIZE["height"]}})
    run_pipeline(capture, run, cfg, until="render", progress=False)
    return read_json(run / "views.json")["psnr"]


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> tuple[float, float]:
    """The undistorted copy (the same tabletop, views and photo noise, through a pinhole): its mean
    render-vs-photo PSNR and label agreement."""
    from scene_kd.scene.synthetic.capture import make_tabletop_capture

    root = tmp_path_factory.mktemp("plain")
    make_tabletop_capture(root / "cap", **SIZE)
    return float(np.mean(_render_psnr(root / "cap", root / "run"))), _label_agreement(root / "run")


@pytest.mark.parametrize("distortion", [("SIMPLE_RADIAL", (-0.35,)), ("OPENCV", (-0.5, 0.15, 0.003, -0.002))])
def test_distorted_capture_is_undistorted_before_the_teacher(tmp_path, plain, distortion):
    """The issue-23 check: a distorted capture, undistorted, has a render-vs-photo PSNR within 1 dB of an
    undistorted copy of the same scene and views; its photos used as pinhole ones lose several dB."""
    from scene_kd.scene.capture import load_capture
    from scene_kd.scene.lens import colmap_distortion
    from scene_kd.scene.synthetic.capture import make_tabletop_capture

    make_tabletop_capture(tmp_path / "bent", **SIZE, distortion=distortion)
    _as_pinhole(tmp_path / "bent", tmp_path / "aspin")
    cap = load_capture(tmp_path / "bent")
    assert all(c.distortion == colmap_distortion(*distortion) for c in cap.lenses)
    assert all(c.distortion is None and not np.allclose(c.K, lens.K)
               for c, lens in zip(cap.cameras, cap.lenses, strict=True))
    colmap = load_capture(tmp_path / "bent", layout="colmap", scene=cap.scene_path)  # the same lens, as COLMAP text
    assert [c.distortion for c in colmap.lenses] == [c.distortion for c in cap.lenses]
    bent = _render_psnr(tmp_path / "bent", tmp_path / "run-bent")
    aspin = _render_psnr(tmp_path / "aspin", tmp_path / "run-aspin")
    psnr = {"plain": plain[0], "bent": np.mean(bent), "aspin": np.mean(aspin)}
    assert abs(psnr["bent"] - psnr["plain"]) < 1.0, psnr
    assert psnr["aspin"] < psnr["bent"] - 2.5, psnr
    # label images went through the same remap (nearest): they agree with the render's labels, better than the
    # distorted ones do
    agree = {"plain": plain[1], **{name: _label_agreement(tmp_path / f"run-{name}") for name in ("bent", "aspin")}}
    # the copy's label images are the render's own (1.0); the bent ones went through nearest resampling twice
    # (distorted, undistorted), which moves boundaries by a pixel: 0.935 seen (SIMPLE_RADIAL), 0.892 not undistorted
    assert agree["bent"] > 0.9 and agree["aspin"] < agree["bent"] - 0.02, agree
