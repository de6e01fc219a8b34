"""Lens distortion of imported cameras, and undistorting photos to a pinhole (OpenCV).

Our renderers are pinhole; a photo taken through a distorting lens does not line up with the render of its
camera (a COLMAP capture with SIMPLE_RADIAL k = -8..7 gave render-vs-photo PSNR 10-11 dB, issue 23). So the
capture loader turns each distorted camera into a pinhole one (:func:`undistorted_camera`, the K of the
largest all-valid undistorted image, as COLMAP's image_undistorter and nerfstudio's ``_undistort_image`` do)
and the render stage remaps the photo, its label and depth images to that pinhole
(:func:`undistort_image`, ``cv2.initUndistortRectifyMap`` + ``cv2.remap``; ``cv2.fisheye`` for fisheye)
before the teacher sees them.

Models (OpenCV's own, which COLMAP's and nerfstudio's follow):

* ``opencv``: coefficients ``(k1, k2, p1, p2[, k3[, k4, k5, k6]])``, Brown-Conrady radial + tangential
  (COLMAP SIMPLE_RADIAL ``k`` = k1, RADIAL ``k1 k2``, OPENCV ``k1 k2 p1 p2``, FULL_OPENCV all eight;
  nerfstudio ``camera_model: OPENCV`` with ``k1 k2 k3 p1 p2``).
* ``fisheye``: ``(k1, k2, k3, k4)``, equidistant with a polynomial in the angle (COLMAP OPENCV_FISHEYE,
  nerfstudio OPENCV_FISHEYE).

Other models (COLMAP FOV, SIMPLE_RADIAL_FISHEYE, RADIAL_FISHEYE, THIN_PRISM_FISHEYE; nerfstudio
EQUIRECTANGULAR, or OPENCV with k4, an r^8 term OpenCV lacks) are refused with one line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from scene_kd.errors import SceneFormatError

MODELS = ("opencv", "fisheye")
MAX_ZOOM = 4.0
"""Undistortion that changes the focal length by more than this factor is refused (the distortion is too
strong to map to a pinhole of the same size: the coefficients are likely wrong or the lens is a wide fisheye)."""


@dataclass(frozen=True)
class Distortion:
    """A lens distortion in OpenCV's terms: ``model`` one of ``MODELS``, ``coeffs`` in OpenCV's order."""

    model: str
    coeffs: tuple[float, ...]

    def __post_init__(self) -> None:
        n = len(self.coeffs)
        if self.model not in MODELS or (self.model == "opencv" and n not in (4, 5, 8)) or (
                self.model == "fisheye" and n != 4):
            raise ValueError(f"bad distortion {self.model} with {n} coefficients")

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "coeffs": list(self.coeffs)}

    @classmethod
    def from_json(cls, d: dict[str, Any] | None) -> Distortion | None:
        return None if d is None else cls(str(d["model"]), tuple(float(c) for c in d["coeffs"]))


def make_distortion(model: str, coeffs: tuple[float, ...] | list[float]) -> Distortion | None:
    """A Distortion, or None when every coefficient is 0 (a pinhole)."""
    coeffs = tuple(float(c) for c in coeffs)
    return Distortion(model, coeffs) if any(c != 0.0 for c in coeffs) else None


COLMAP_UNSUPPORTED = ("FOV", "SIMPLE_RADIAL_FISHEYE", "RADIAL_FISHEYE", "THIN_PRISM_FISHEYE")


def colmap_distortion(model: str, params: list[float]) -> Distortion | None:
    """The distortion of a COLMAP camera (``params`` after the intrinsics' own: SIMPLE_RADIAL ``f cx cy k``
    gives ``[k]``), None for a pinhole; ValueError naming an unsupported model."""
    p = [float(v) for v in params]
    if model in ("SIMPLE_PINHOLE", "PINHOLE"):
        return None
    if model == "SIMPLE_RADIAL":
        return make_distortion("opencv", (p[0], 0.0, 0.0, 0.0))
    if model == "RADIAL":
        return make_distortion("opencv", (p[0], p[1], 0.0, 0.0))
    if model in ("OPENCV", "FULL_OPENCV"):
        return make_distortion("opencv", p)
    if model == "OPENCV_FISHEYE":
        return make_distortion("fisheye", p)
    raise ValueError(f"camera model {model} is not supported (supported: pinhole, SIMPLE_RADIAL, RADIAL, OPENCV, "
                     "FULL_OPENCV, OPENCV_FISHEYE); undistort the images first, e.g. colmap image_undistorter")


def transforms_distortion(camera_model: str, get: Any) -> Distortion | None:
    """The distortion of a nerfstudio transforms.json frame: ``camera_model`` and ``get(key)`` (the frame's value
    over the file's, None when absent) for k1..k4, p1, p2. ValueError for a model or term OpenCV cannot undistort."""
    def k(name: str) -> float:
        v = get(name)
        return 0.0 if v is None else float(v)

    model = camera_model.upper()
    if model in ("OPENCV", "PINHOLE", "SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL", "PERSPECTIVE"):
        if k("k4") != 0.0:  # nerfstudio's k4 is an r^8 term; OpenCV's k4 is a rational one
            raise ValueError("camera_model OPENCV with k4 != 0 (nerfstudio's r^8 term) cannot be undistorted "
                             "with OpenCV; undistort the images first")
        return make_distortion("opencv", (k("k1"), k("k2"), k("p1"), k("p2"), k("k3")))
    if model == "OPENCV_FISHEYE":
        return make_distortion("fisheye", (k("k1"), k("k2"), k("k3"), k("k4")))
    raise ValueError(f"camera_model {camera_model} is not supported (supported: OPENCV, OPENCV_FISHEYE, PINHOLE)")


def _cv() -> Any:
    import cv2

    return cv2


def undistorted_camera(cam: Any) -> Any:
    """The pinhole ``Camera`` (same size, pose and name, no distortion) whose image is ``cam``'s photo undistorted:
    K of the largest undistorted image with only valid pixels (``cv2.getOptimalNewCameraMatrix`` alpha 0;
    fisheye: ``cv2.fisheye.estimateNewCameraMatrixForUndistortRectify`` balance 0). ``cam`` itself without
    distortion. SceneFormatError when the result is not a usable pinhole (see ``MAX_ZOOM``)."""
    from dataclasses import replace

    dist = getattr(cam, "distortion", None)
    if dist is None:
        return cam
    cv2 = _cv()
    size = (int(cam.width), int(cam.height))
    D = np.asarray(dist.coeffs, np.float64)
    if dist.model == "fisheye":
        K2 = cv2.fisheye.estimateNewCameraMatrixForUndistortRectify(cam.K, D.reshape(4, 1), size, np.eye(3),
                                                                    balance=0.0)
    else:
        K2, _ = cv2.getOptimalNewCameraMatrix(cam.K, D, size, 0.0, size)
    K2 = np.asarray(K2, np.float64)
    zoom = np.array([K2[0, 0] / cam.K[0, 0], K2[1, 1] / cam.K[1, 1]])
    if not np.isfinite(K2).all() or not ((zoom > 1 / MAX_ZOOM) & (zoom < MAX_ZOOM)).all():
        raise SceneFormatError(f"camera {cam.name!r}: {dist.model} distortion {list(dist.coeffs)} is too strong to "
                               "undistort to a pinhole of the same size; check the coefficients")
    K2[2] = [0.0, 0.0, 1.0]
    return replace(cam, K=K2, distortion=None)


def _maps(src: Any, dst: Any) -> tuple[np.ndarray, np.ndarray]:
    """For each pixel of pinhole ``dst``, where it lies in ``src``'s distorted image ([H, W] float32 x, y)."""
    cv2 = _cv()
    size = (int(dst.width), int(dst.height))
    D = np.asarray(src.distortion.coeffs, np.float64)
    if src.distortion.model == "fisheye":
        return cv2.fisheye.initUndistortRectifyMap(src.K, D.reshape(4, 1), np.eye(3), dst.K, size, cv2.CV_32FC1)
    return cv2.initUndistortRectifyMap(src.K, D, None, dst.K, size, cv2.CV_32FC1)


def undistort_image(image: np.ndarray, src: Any, dst: Any, *, nearest: bool = False, fill: float = 0) -> np.ndarray:
    """``image`` ([H, W] or [H, W, C], taken by distorted camera ``src`` at its size) remapped to pinhole ``dst``
    (:func:`undistorted_camera`): bilinear for photos; ``nearest`` for class ids and depths (never blended);
    pixels from outside the photo get ``fill``. A photo of another size than ``src`` scales both cameras
    (distortion coefficients are in normalised coordinates and do not change)."""
    h, w = image.shape[:2]
    src, dst = _scaled(src, w, h), _scaled(dst, w, h)
    return _remap(image, *_maps(src, dst), nearest, fill)


def _remap(image: np.ndarray, mx: np.ndarray, my: np.ndarray, nearest: bool, fill: float) -> np.ndarray:
    cv2 = _cv()
    interp = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    if image.dtype.kind == "i" and image.dtype.itemsize > 2:  # cv2.remap has no int32: ids go through float32
        out = cv2.remap(image.astype(np.float32), mx, my, interp, borderMode=cv2.BORDER_CONSTANT, borderValue=fill)
        return out.astype(image.dtype)
    return cv2.remap(image, mx, my, interp, borderMode=cv2.BORDER_CONSTANT, borderValue=fill)


def _scaled(cam: Any, w: int, h: int) -> Any:
    from dataclasses import replace

    if (cam.width, cam.height) == (w, h):
        return cam
    K = cam.K.copy()
    K[0] *= w / cam.width
    K[1] *= h / cam.height
    return replace(cam, K=K, width=w, height=h)


def distort_image(image: np.ndarray, cam: Any, *, nearest: bool = False, fill: float = 0) -> np.ndarray:
    """The inverse of :func:`undistort_image` with the same K: ``image`` seen by the pinhole ``K`` of ``cam``,
    as the distorting camera ``cam`` would take it (for synthetic captures). Each output pixel is undistorted
    (``cv2.undistortPoints``, iterative) and sampled from ``image``."""
    cv2 = _cv()
    h, w = image.shape[:2]
    cam = _scaled(cam, w, h)
    D = np.asarray(cam.distortion.coeffs, np.float64)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    pts = np.stack([xs.ravel(), ys.ravel()], 1).reshape(-1, 1, 2)
    if cam.distortion.model == "fisheye":
        und = cv2.fisheye.undistortPoints(pts, cam.K, D.reshape(4, 1), P=cam.K)
    else:
        crit = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 50, 1e-9)
        it = getattr(cv2, "undistortPointsIter", None)  # OpenCV 4; OpenCV 5 takes the criteria in undistortPoints
        und = it(pts, cam.K, D, None, cam.K, crit) if it else cv2.undistortPoints(pts, cam.K, D, P=cam.K, criteria=crit)
    mx = und[:, 0, 0].reshape(h, w).astype(np.float32)
    my = und[:, 0, 1].reshape(h, w).astype(np.float32)
    return _remap(image, mx, my, nearest, fill)
