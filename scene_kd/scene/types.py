"""Scene data model: point clouds, Gaussian splats and cameras.

All geometry is stored as float32 *local* coordinates relative to a float64 ``origin`` so that
UTM/Lambert coordinates (e.g. 870200.01, 6617083.28) keep millimetre precision on float32 math.
Arrays are numpy; compute stages convert with ``torch.from_numpy``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from scene_kd.scene.lens import Distortion
from scene_kd.scene.sh import rgb_from_dc


def choose_origin(xyz_world: np.ndarray) -> np.ndarray:
    """A float64 origin (3,) for world coordinates [N, 3]: the bounding-box minimum, rounded to metres."""
    if len(xyz_world) == 0:
        return np.zeros(3, dtype=np.float64)
    return np.floor(np.asarray(xyz_world, dtype=np.float64).min(axis=0))


def subset_meta(meta: dict, index: np.ndarray, n: int) -> dict:
    """A copy of a scene's meta for a subset: ``source_rows`` (the file record of each point) follows the
    selection, so writers that copy the input's records still find each point's record."""
    out = dict(meta)
    if out.get("source") is not None:
        rows = out.get("source_rows")
        out["source_rows"] = (np.arange(n, dtype=np.int64) if rows is None else np.asarray(rows))[index]
    return out


@dataclass
class PointCloud:
    """A point cloud in local float32 coordinates.

    xyz: [N, 3] float32, metres (or file units), world = origin + xyz.
    rgb: [N, 3] uint8 or None.   intensity: [N] float32 or None.   normals: [N, 3] float32 or None.
    labels: [N] int32 class ids or None; label_names maps id -> name (e.g. ASPRS 6 -> "building").
    instances: [N] int32 instance ids (-1 none) or None.
    extra: other per-point attributes by name, each [N, ...].
    meta: provenance (source path, format, CRS, the original LAS header for write-back, ...).
    """

    xyz: np.ndarray
    origin: np.ndarray = field(default_factory=lambda: np.zeros(3, dtype=np.float64))
    rgb: np.ndarray | None = None
    intensity: np.ndarray | None = None
    normals: np.ndarray | None = None
    labels: np.ndarray | None = None
    label_names: dict[int, str] = field(default_factory=dict)
    instances: np.ndarray | None = None
    extra: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    kind = "points"

    def __post_init__(self) -> None:
        self.xyz = np.ascontiguousarray(self.xyz, dtype=np.float32).reshape(-1, 3)
        self.origin = np.asarray(self.origin, dtype=np.float64).reshape(3)

    def __len__(self) -> int:
        return int(self.xyz.shape[0])

    @classmethod
    def from_world(cls, xyz_world: np.ndarray, origin: np.ndarray | None = None, **kwargs: Any) -> PointCloud:
        """Build from float64 world coordinates [N, 3], choosing an origin unless given."""
        xyz_world = np.asarray(xyz_world, dtype=np.float64).reshape(-1, 3)
        origin = choose_origin(xyz_world) if origin is None else np.asarray(origin, dtype=np.float64)
        return cls(xyz=(xyz_world - origin).astype(np.float32), origin=origin, **kwargs)

    def world_xyz(self) -> np.ndarray:
        """[N, 3] float64 coordinates in the file's own frame."""
        return self.xyz.astype(np.float64) + self.origin

    def subset(self, index: np.ndarray) -> PointCloud:
        """A new cloud with the points selected by a boolean mask or an index array."""

        def take(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[index]

        return dataclasses.replace(
            self,
            xyz=self.xyz[index],
            rgb=take(self.rgb),
            intensity=take(self.intensity),
            normals=take(self.normals),
            labels=take(self.labels),
            instances=take(self.instances),
            extra={k: v[index] for k, v in self.extra.items()},
            meta=subset_meta(self.meta, index, len(self)),
        )

    @property
    def attributes(self) -> list[str]:
        names = [n for n in ("rgb", "intensity", "normals", "labels", "instances") if getattr(self, n) is not None]
        return names + list(self.extra)


@dataclass
class GaussianSplats:
    """3D Gaussians in local float32 coordinates (INRIA 3DGS parameterisation).

    means: [N, 3] float32.   quats: [N, 4] float32 (w, x, y, z), not necessarily normalised.
    log_scales: [N, 3] float32 (natural log of std-devs, metres).   opacity_logits: [N] float32.
    sh: [N, K, 3] float32 SH coefficients, K = (degree+1)^2, sh[:, 0] the DC term.
    labels / label_names / instances as in PointCloud.
    """

    means: np.ndarray
    quats: np.ndarray
    log_scales: np.ndarray
    opacity_logits: np.ndarray
    sh: np.ndarray
    origin: np.ndarray = field(default_factory=lambda: np.zeros(3, dtype=np.float64))
    labels: np.ndarray | None = None
    label_names: dict[int, str] = field(default_factory=dict)
    instances: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    kind = "gaussians"

    def __post_init__(self) -> None:
        self.means = np.ascontiguousarray(self.means, dtype=np.float32).reshape(-1, 3)
        self.quats = np.ascontiguousarray(self.quats, dtype=np.float32).reshape(-1, 4)
        self.log_scales = np.ascontiguousarray(self.log_scales, dtype=np.float32).reshape(-1, 3)
        self.opacity_logits = np.ascontiguousarray(self.opacity_logits, dtype=np.float32).reshape(-1)
        self.sh = np.ascontiguousarray(self.sh, dtype=np.float32).reshape(len(self.means), -1, 3)
        self.origin = np.asarray(self.origin, dtype=np.float64).reshape(3)

    def __len__(self) -> int:
        return int(self.means.shape[0])

    @property
    def xyz(self) -> np.ndarray:
        """Alias so code that only needs positions treats points and Gaussians alike."""
        return self.means

    @property
    def sh_degree(self) -> int:
        return int(round(np.sqrt(self.sh.shape[1]))) - 1

    def world_xyz(self) -> np.ndarray:
        return self.means.astype(np.float64) + self.origin

    def rgb_from_dc(self) -> np.ndarray:
        """[N, 3] uint8 colour of the DC term, rounded (:func:`scene_kd.scene.sh.rgb_from_dc`)."""
        return rgb_from_dc(self.sh[:, 0])

    def subset(self, index: np.ndarray) -> GaussianSplats:
        take = lambda a: None if a is None else a[index]  # noqa: E731
        return dataclasses.replace(
            self,
            means=self.means[index],
            quats=self.quats[index],
            log_scales=self.log_scales[index],
            opacity_logits=self.opacity_logits[index],
            sh=self.sh[index],
            labels=take(self.labels),
            instances=take(self.instances),
            meta=subset_meta(self.meta, index, len(self)),
        )

    @property
    def attributes(self) -> list[str]:
        names = ["quats", "log_scales", "opacity_logits", f"sh{self.sh_degree}"]
        return names + [n for n in ("labels", "instances") if getattr(self, n) is not None]


Scene = PointCloud | GaussianSplats


@dataclass
class Camera:
    """A pinhole camera in the scene's *local* frame (OpenCV convention: x right, y down, z forward).

    K: [3, 3] float64 intrinsics in pixels.   world_to_cam: [4, 4] float64 (local -> camera).
    width, height: image size in pixels.   level: granularity level (0 = coarsest).
    name: free text (e.g. "aerial-alt120-r3c2" or the image name from transforms.json).
    distortion: the lens distortion of an imported camera's photos (scene_kd/scene/lens.py), None for a pinhole.
    The renderers ignore it: a capture's distorted cameras are made pinhole and their photos undistorted on load.
    """

    K: np.ndarray
    world_to_cam: np.ndarray
    width: int
    height: int
    level: int = 0
    name: str = ""
    distortion: Distortion | None = None

    def __post_init__(self) -> None:
        self.K = np.asarray(self.K, dtype=np.float64).reshape(3, 3)
        self.world_to_cam = np.asarray(self.world_to_cam, dtype=np.float64).reshape(4, 4)
        self.width, self.height, self.level = int(self.width), int(self.height), int(self.level)

    @property
    def center(self) -> np.ndarray:
        """Camera centre [3] in the local frame."""
        R, t = self.world_to_cam[:3, :3], self.world_to_cam[:3, 3]
        return -R.T @ t

    def to_json(self) -> dict[str, Any]:
        return {
            "K": self.K.tolist(),
            "world_to_cam": self.world_to_cam.tolist(),
            "width": self.width,
            "height": self.height,
            "level": self.level,
            "name": self.name,
            **({"distortion": self.distortion.to_json()} if self.distortion is not None else {}),
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Camera:
        return cls(
            K=np.array(d["K"]), world_to_cam=np.array(d["world_to_cam"]), width=d["width"],
            height=d["height"], level=d.get("level", 0), name=d.get("name", ""),
            distortion=Distortion.from_json(d.get("distortion")),
        )
