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

from scene_kd.errors import SceneFormatError, SceneKDError

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
    """A Distortion, or None for an ``opencv`` one whose coefficients are all 0 (a pinhole; a fisheye with
    zero coefficients is still equidistant, not a pinhole). ``opencv`` terms that are 0 at the end are dropped down
    to 4 or 5 (OpenCV's lengths), so one lens read from COLMAP or from transforms.json compares equal."""
    coeffs = tuple(float(c) for c in coeffs)
    if model == "opencv" and len(coeffs) == 8 and not any(coeffs[5:]):
        coeffs = coeffs[:5]
    if model == "opencv" and len(coeffs) == 5 and coeffs[4] == 0.0:
        coeffs = coeffs[:4]
    return Distortion(model, coeffs) if model == "fisheye" or any(c != 0.0 for c in coeffs) else None


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
    try:
        import cv2
    except ImportError:
        raise SceneKDError("undistorting photos needs OpenCV: pip install opencv-python-headless") from None
    return cv2


def _to_cv(K: np.ndarray, *, back: bool = False) -> np.ndarray:
    """K in OpenCV's pixel convention (pixel centres at integers) from ours (centres at + 0.5, as COLMAP, gsplat
    and our renderers), or ``back``."""
    K = np.array(K, np.float64)
    K[:2, 2] += 0.5 if back else -0.5
    return K


def radial_curve(dist: Distortion, r: np.ndarray) -> np.ndarray:
    """The distorted radius (normalised image coordinates) of rays at undistorted radius ``r`` (``opencv``:
    ``r (1 + k1 r^2 + k2 r^4 + k3 r^6) / (1 + k4 r^2 + k5 r^4 + k6 r^6)``) or at angle ``r`` radians from the axis
    (``fisheye``: ``r (1 + k1 r^2 + k2 r^4 + k3 r^6 + k4 r^8)``); tangential terms left out."""
    c = dist.coeffs
    r2 = r * r
    if dist.model == "fisheye":
        return r * (1 + r2 * (c[0] + r2 * (c[1] + r2 * (c[2] + r2 * c[3]))))
    k = (*c, 0.0, 0.0, 0.0, 0.0)
    num = 1 + r2 * (k[0] + r2 * (k[1] + r2 * k[4]))
    den = 1 + r2 * (k[5] + r2 * (k[6] + r2 * k[7]))
    return r * num / den


def fold_radius(dist: Distortion) -> float:
    """The largest distorted radius (normalised) the lens model reaches before its radial curve turns back
    (inf when it rises up to 10 = 84 degrees off axis; fisheye: up to 90 degrees). Photo pixels beyond it are
    images of no ray: a calibration fitted with too few far-out points, not a lens."""
    top = np.pi / 2 if dist.model == "fisheye" else 10.0
    r = np.linspace(0.0, top, 20001)
    rd = radial_curve(dist, r)
    falls = np.flatnonzero(np.diff(rd) <= 0)
    return float(rd[falls[0]]) if len(falls) else float("inf")


def _check_unfolded(cam: Any) -> None:
    """SceneFormatError (one line) when ``cam``'s lens model folds inside its photo (see :func:`fold_radius`)."""
    dist = cam.distortion
    w, h = float(cam.width), float(cam.height)
    corners = np.array([[0.0, 0.0], [w, 0.0], [0.0, h], [w, h]])
    norm = (corners - cam.K[:2, 2]) / np.diag(cam.K)[:2]  # our pixel corners: 0 and w (centres at + 0.5)
    reach = float(np.linalg.norm(norm, axis=1).max())
    fold = fold_radius(dist)
    if reach >= fold:
        raise SceneFormatError(
            f"camera {cam.name!r}: {dist.model} distortion {list(dist.coeffs)} folds back at {100 * fold / reach:.0f}% "
            "of the photo's corner radius, so no pinhole matches it; check the calibration or undistort the "
            "images first")


def undistorted_camera(cam: Any) -> Any:
    """The pinhole ``Camera`` (same size, pose and name, no distortion) whose image is ``cam``'s photo undistorted:
    K of the largest undistorted image with only valid pixels (``cv2.getOptimalNewCameraMatrix`` alpha 0;
    fisheye: ``cv2.fisheye.estimateNewCameraMatrixForUndistortRectify`` balance 0). ``cam`` itself without
    distortion. SceneFormatError when the lens model folds inside the photo (:func:`fold_radius`) or the result
    is not a usable pinhole (see ``MAX_ZOOM``)."""
    from dataclasses import replace

    dist = getattr(cam, "distortion", None)
    if dist is None:
        return cam
    _check_unfolded(cam)
    cv2 = _cv()
    size = (int(cam.width), int(cam.height))
    D = np.asarray(dist.coeffs, np.float64)
    if dist.model == "fisheye":
        K2 = cv2.fisheye.estimateNewCameraMatrixForUndistortRectify(_to_cv(cam.K), D.reshape(4, 1), size,
                                                                    np.eye(3), balance=0.0)
    else:
        K2, _ = cv2.getOptimalNewCameraMatrix(_to_cv(cam.K), D, size, 0.0, size)
    K2 = _to_cv(np.asarray(K2, np.float64), back=True)
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
        return cv2.fisheye.initUndistortRectifyMap(_to_cv(src.K), D.reshape(4, 1), np.eye(3), _to_cv(dst.K), size,
                                                   cv2.CV_32FC1)
    return cv2.initUndistortRectifyMap(_to_cv(src.K), D, None, _to_cv(dst.K), size, cv2.CV_32FC1)


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


def _undistort_points(pts: np.ndarray, cam: Any, P: np.ndarray) -> np.ndarray:
    """[N, 2] pixel positions (ours: pixel centres at + 0.5) of distorted ``cam`` -> [N, 2] pixel positions of the
    pinhole ``P`` seeing the same rays (``cv2.undistortPoints``, iterated to 1e-9; fisheye:
    ``cv2.fisheye.undistortPoints``)."""
    cv2 = _cv()
    D = np.asarray(cam.distortion.coeffs, np.float64)
    pts = np.asarray(pts, np.float64).reshape(-1, 1, 2) - 0.5
    K, P = _to_cv(cam.K), _to_cv(P)
    crit = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 50, 1e-9)
    if cam.distortion.model == "fisheye":
        und = cv2.fisheye.undistortPoints(pts, K, D.reshape(4, 1), P=P, criteria=crit)
    else:
        it = getattr(cv2, "undistortPointsIter", None)  # OpenCV 4; OpenCV 5 takes the criteria in undistortPoints
        und = it(pts, K, D, None, P, crit) if it else cv2.undistortPoints(pts, K, D, P=P, criteria=crit)
    return und.reshape(-1, 2) + 0.5


def covering_pinhole(cam: Any, *, margin: int = 2, max_scale: float = 3.0) -> Any:
    """The pinhole ``Camera`` with ``cam``'s focal lengths and pose whose image holds every ray ``cam``'s
    distorted image sees (the border of ``cam``'s image undistorted, plus ``margin`` px), at most ``max_scale``
    times ``cam``'s size per side: what to render so that :func:`distort_image` leaves no pixel empty (synthetic
    captures). ``cam`` itself without distortion."""
    from dataclasses import replace

    if getattr(cam, "distortion", None) is None:
        return cam
    _check_unfolded(cam)
    w, h = int(cam.width), int(cam.height)
    t = np.arange(0.0, 1.0, 1.0 / 64)
    edge = np.concatenate([np.stack([t * w, np.zeros_like(t)], 1), np.stack([np.full_like(t, w), t * h], 1),
                           np.stack([w - t * w, np.full_like(t, h)], 1), np.stack([np.zeros_like(t), h - t * h], 1)])
    und = _undistort_points(edge, cam, cam.K)
    lo = np.floor(und.min(0)) - margin
    hi = np.ceil(und.max(0)) + margin
    lo = np.maximum(lo, [w / 2 - max_scale * w / 2, h / 2 - max_scale * h / 2])
    hi = np.minimum(hi, [w / 2 + max_scale * w / 2, h / 2 + max_scale * h / 2])
    lo = np.minimum(lo, 0.0)
    hi = np.maximum(hi, [w, h])
    K = cam.K.copy()
    K[0, 2] -= lo[0]
    K[1, 2] -= lo[1]
    return replace(cam, K=K, width=int(hi[0] - lo[0]), height=int(hi[1] - lo[1]), distortion=None)


def distort_image(image: np.ndarray, cam: Any, *, pinhole: Any = None, nearest: bool = False,
                  fill: float = 0) -> np.ndarray:
    """The inverse of :func:`undistort_image`: ``image``, seen by ``pinhole`` (default: ``cam``'s K at the image's
    size, no distortion), as the distorting camera ``cam`` would take it ([cam.height, cam.width, ...]; at the
    image's size without ``pinhole``), for synthetic captures. Each output pixel is undistorted
    (``cv2.undistortPoints``, iterative) and sampled from ``image``; rays outside it get ``fill``."""
    h, w = image.shape[:2]
    if pinhole is None:
        cam = _scaled(cam, w, h)
        P = cam.K
    else:
        P = _scaled(pinhole, w, h).K
    ys, xs = np.mgrid[0:cam.height, 0:cam.width].astype(np.float64)
    und = _undistort_points(np.stack([xs.ravel(), ys.ravel()], 1) + 0.5, cam, P) - 0.5  # remap: centres at 0
    mx = und[:, 0].reshape(cam.height, cam.width).astype(np.float32)
    my = und[:, 1].reshape(cam.height, cam.width).astype(np.float32)
    return _remap(image, mx, my, nearest, fill)
