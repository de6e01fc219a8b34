"""antimatter15 ``.splat``: 32 bytes per Gaussian, little-endian, no header.

Layout: position 3 x float32, scale 3 x float32 (linear std-devs), colour 4 x uint8 (r, g, b, a with
a = sigmoid(opacity)), rotation 4 x uint8 (w, x, y, z) encoded as clip(q / |q| * 128 + 128, 0, 255).
Only the SH DC term survives; colour, opacity and rotation are quantised to 8 bits (not lossless).
All-zero rows and rows with a zero quaternion (rot bytes 128) are dropped with a warning giving the count.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from scene_kd.errors import SceneFormatError
from scene_kd.scene.io import reader, world_to_local, writer
from scene_kd.scene.sh import SH_C0
from scene_kd.scene.types import GaussianSplats, PointCloud

log = logging.getLogger(__name__)
SPLAT_DTYPE = np.dtype(
    [("position", "<f4", (3,)), ("scale", "<f4", (3,)), ("rgba", "u1", (4,)), ("rot", "u1", (4,))]
)
assert SPLAT_DTYPE.itemsize == 32


@reader("splat")
def read_splat(path: Path) -> GaussianSplats:
    size = path.stat().st_size
    if size % SPLAT_DTYPE.itemsize:
        raise SceneFormatError(
            f"truncated or not a .splat file: {size} bytes is not a multiple of 32 (one Gaussian)", path=path
        )
    rec = np.fromfile(path, dtype=SPLAT_DTYPE)
    raw = rec.view(np.uint8).reshape(len(rec), 32)
    zero_rows = ~raw.any(axis=1)
    no_rotation = (rec["rot"].astype(np.int16) == 128).all(axis=1)  # zero-norm quaternion
    drop = zero_rows | no_rotation
    if drop.any():
        log.warning("%s: dropped %d Gaussian(s) with a zero-norm quaternion or an all-zero row (%d all-zero)",
                    path, int(drop.sum()), int(zero_rows.sum()))
    local, origin, keep, meta = world_to_local(rec["position"], path, drop=drop if drop.any() else None)
    if keep is not None:
        rec = rec[keep]
        meta["source_rows"] = np.flatnonzero(keep)
    scale = rec["scale"].astype(np.float64)
    bad_scale = ~(np.isfinite(scale) & (scale > 0)).all(axis=1)
    if bad_scale.any():
        raise SceneFormatError(
            f"{int(bad_scale.sum())} Gaussian(s) have non-positive or non-finite scales", path=path
        )
    rgba = rec["rgba"].astype(np.float32) / 255.0
    alpha = np.clip(rgba[:, 3], 1e-6, 1 - 1e-6)
    quats = (rec["rot"].astype(np.float32) - 128.0) / 128.0
    return GaussianSplats(
        means=local,
        origin=origin,
        quats=quats,
        log_scales=np.log(scale).astype(np.float32),
        opacity_logits=np.log(alpha / (1 - alpha)),
        sh=((rgba[:, :3] - 0.5) / SH_C0)[:, None, :],
        meta={**meta, "splat_quantised": True},
    )


@writer("splat")
def write_splat(scene: GaussianSplats | PointCloud, path: Path) -> None:
    if isinstance(scene, PointCloud):
        raise SceneFormatError(
            ".splat stores Gaussians; this scene is a point cloud (write .ply/.las instead)", path=path
        )
    g = scene
    rec = np.zeros(len(g), dtype=SPLAT_DTYPE)
    rec["position"] = g.world_xyz()
    rec["scale"] = np.exp(g.log_scales.astype(np.float64))
    rgb = 0.5 + SH_C0 * g.sh[:, 0].astype(np.float64)
    alpha = 1.0 / (1.0 + np.exp(-g.opacity_logits.astype(np.float64)))
    rec["rgba"] = np.clip(np.rint(np.concatenate([rgb, alpha[:, None]], axis=1) * 255), 0, 255).astype(
        np.uint8
    )
    q = g.quats.astype(np.float64)
    norm = np.linalg.norm(q, axis=1, keepdims=True)
    q = np.where(norm > 0, q / np.where(norm > 0, norm, 1), np.array([1.0, 0, 0, 0]))
    rec["rot"] = np.clip(np.rint(q * 128 + 128), 0, 255).astype(np.uint8)
    rec.tofile(path)
