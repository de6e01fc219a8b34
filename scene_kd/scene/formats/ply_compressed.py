"""The SuperSplat / PlayCanvas compressed 3DGS PLY, decoded with plyfile + numpy.

No maintained Python reader of this layout exists that I know of (PlayCanvas decodes it in JavaScript:
``GSplatCompressedData.decompress`` in the engine and ``splat-transform``), so it is decoded here from its
documented layout, the one ``gsplat.exporter.splat2ply_bytes_compressed`` (gsplat 1.5) and SuperSplat write:

- ``element chunk``: one row per 256 consecutive splats, float ``min_x..max_z`` (position bounds),
  ``min_scale_x..max_scale_z`` (log-scale bounds) and optionally ``min_r..max_b`` (colour bounds);
- ``element vertex``: uint ``packed_position`` / ``packed_scale`` (11-10-11 bits, unorm in the chunk's
  bounds), ``packed_rotation`` (2 bits: index of the largest component in rot_0..rot_3 = w x y z order,
  then the other three as 10-bit unorms of q * sqrt(2)/2 + 0.5), ``packed_color`` (8-8-8-8: DC colour
  (SH_C0 * f_dc + 0.5, unorm in the colour bounds when present) and sigmoid(opacity));
- optional ``element sh``: uchar ``f_rest_*`` (channel-major like 3DGS), f = ((u + 0.5) / 256 - 0.5) * 8.

Decoded values equal the originals up to the quantisation (1/2047 of a chunk's extent, etc.).
"""

from __future__ import annotations

import numpy as np

from scene_kd.errors import SceneFormatError
from scene_kd.scene.sh import SH_C0

CHUNK_SIZE = 256
_POS = ("min_x", "min_y", "min_z", "max_x", "max_y", "max_z")
_SCALE = ("min_scale_x", "min_scale_y", "min_scale_z", "max_scale_x", "max_scale_y", "max_scale_z")
_COLOR = ("min_r", "min_g", "min_b", "max_r", "max_g", "max_b")
_PACKED = ("packed_position", "packed_rotation", "packed_scale", "packed_color")


def is_compressed(ply) -> bool:
    """True for a PlyData with a ``chunk`` element and a vertex element of packed_* properties."""
    names = {e.name for e in ply.elements}
    if not {"chunk", "vertex"} <= names:
        return False
    return set(_PACKED) <= set(ply["vertex"].data.dtype.names or ())


def _unorm(v: np.ndarray, shift: int, bits: int) -> np.ndarray:
    return ((v >> np.uint32(shift)) & np.uint32((1 << bits) - 1)).astype(np.float64) / ((1 << bits) - 1)


def _unpack_111011(v: np.ndarray) -> np.ndarray:
    return np.stack([_unorm(v, 21, 11), _unorm(v, 11, 10), _unorm(v, 0, 11)], axis=1)


def _lerp(t: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    return lo + t * (hi - lo)


def _unpack_rotation(v: np.ndarray) -> np.ndarray:
    """[N] uint32 -> [N, 4] unit quaternions (w, x, y, z = rot_0..rot_3)."""
    norm = 1.0 / (np.sqrt(2.0) * 0.5)
    abc = np.stack([(_unorm(v, s, 10) - 0.5) * norm for s in (20, 10, 0)], axis=1)
    m = np.sqrt(np.clip(1.0 - (abc**2).sum(axis=1), 0.0, None))
    largest = (v >> np.uint32(30)).astype(np.int64)
    q = np.empty((len(v), 4), dtype=np.float64)
    others = np.array([[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]])[largest]
    rows = np.arange(len(v))
    q[rows, largest] = m
    for j in range(3):
        q[rows, others[:, j]] = abc[:, j]
    return q


def decode_compressed(ply, path=None) -> dict[str, np.ndarray]:
    """PlyData of the compressed layout -> {"means" [N,3] f64, "quats" [N,4], "log_scales" [N,3],
    "opacity_logits" [N], "sh" [N, K, 3]} (float32 except means). Raises SceneFormatError when the
    chunk table does not cover the vertices or a property is missing."""
    chunk = ply["chunk"].data
    vert = ply["vertex"].data
    n = len(vert)
    cnames = set(chunk.dtype.names or ())
    missing = [p for p in (*_POS, *_SCALE) if p not in cnames]
    if missing:
        raise SceneFormatError(f"compressed 3DGS PLY (SuperSplat layout): chunk lacks {', '.join(missing)}", path=path)
    if len(chunk) * CHUNK_SIZE < n:
        raise SceneFormatError(f"compressed 3DGS PLY: {len(chunk)} chunks cannot hold {n} splats", path=path)
    ci = np.arange(n) // CHUNK_SIZE

    def bounds(keys):
        b = np.stack([np.asarray(chunk[k], dtype=np.float64) for k in keys], axis=1)[ci]
        return b[:, :3], b[:, 3:]

    pos = np.asarray(vert["packed_position"], dtype=np.uint32)
    means = _lerp(_unpack_111011(pos), *bounds(_POS))
    log_scales = _lerp(_unpack_111011(np.asarray(vert["packed_scale"], dtype=np.uint32)), *bounds(_SCALE))
    quats = _unpack_rotation(np.asarray(vert["packed_rotation"], dtype=np.uint32))
    col = np.asarray(vert["packed_color"], dtype=np.uint32)
    rgba = np.stack([_unorm(col, s, 8) for s in (24, 16, 8, 0)], axis=1)
    rgb = _lerp(rgba[:, :3], *bounds(_COLOR)) if set(_COLOR) <= cnames else rgba[:, :3]
    alpha = np.clip(rgba[:, 3], 1e-6, 1 - 1e-6)
    k_rest = 0
    rest = None
    if "sh" in {e.name for e in ply.elements}:
        shd = ply["sh"].data
        names = [f"f_rest_{i}" for i in range(len(shd.dtype.names or ()))]
        if len(shd) != n or list(shd.dtype.names or ()) != names or len(names) % 3:
            raise SceneFormatError("compressed 3DGS PLY: 'sh' element does not match the vertices", path=path)
        k_rest = len(names) // 3
        rest = np.stack([((np.asarray(shd[k], dtype=np.float64) + 0.5) / 256 - 0.5) * 8 for k in names], axis=1)
    sh = np.zeros((n, k_rest + 1, 3), dtype=np.float32)
    sh[:, 0, :] = (rgb - 0.5) / SH_C0
    if rest is not None:
        sh[:, 1:, :] = rest.reshape(n, 3, k_rest).transpose(0, 2, 1)
    return {"means": means, "quats": quats.astype(np.float32), "log_scales": log_scales.astype(np.float32),
            "opacity_logits": np.log(alpha / (1 - alpha)).astype(np.float32), "sh": sh}
