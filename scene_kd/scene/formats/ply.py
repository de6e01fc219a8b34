"""PLY via plyfile: point clouds, and INRIA 3DGS Gaussians (detected by f_dc_0/opacity/rot_0/scale_0).

Point PLY: x y z (float32, or double when the world coordinates need it for mm precision), red green blue
(uchar), nx ny nz, intensity, label, instance (int32) and one property per extra scalar (an [N, k] extra is
written as name_0..name_{k-1} and stacked back on read). Label names: ``comment scene_kd label_names {json}``.

3DGS PLY, laid out exactly as the reference 3DGS code / ``ns-export gaussian-splat`` write it, all float32:
x y z nx ny nz f_dc_0..2 f_rest_0..f_rest_{3(K-1)-1} opacity scale_0..2 rot_0..3 (then optional int32
label/instance). f_rest is channel-major: f_rest[c * (K-1) + k] = sh[:, 1 + k, c].
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np

from scene_kd.errors import SceneFormatError
from scene_kd.scene.formats.ply_compressed import decode_compressed, is_compressed
from scene_kd.scene.io import (
    label_names_from_json,
    label_names_to_json,
    reader,
    rgb_to_uint8,
    stack_numbered_columns,
    world_to_local,
    writer,
)
from scene_kd.scene.types import GaussianSplats, PointCloud

log = logging.getLogger(__name__)
LABEL_COMMENT = "scene_kd label_names "
_LABEL_KEYS = (
    "label",
    "labels",
    "class",
    "classification",
    "scalar_label",
    "scalar_classification",
    "semantic",
    "semantic_label",
)
_INSTANCE_KEYS = ("instance", "instances", "instance_id", "scalar_instance", "scalar_instance_id")
_INTENSITY_KEYS = ("intensity", "scalar_intensity")
_RGB_KEYS = (("red", "green", "blue"), ("diffuse_red", "diffuse_green", "diffuse_blue"), ("r", "g", "b"))
_DOUBLE_ABOVE = 1e4  # beyond this |coordinate|, float32 can no longer hold millimetres
_PLY_INT_TYPES = {
    np.dtype(t): s
    for t, s in [
        ("i1", "i1"),
        ("u1", "u1"),
        ("i2", "i2"),
        ("u2", "u2"),
        ("i4", "i4"),
        ("u4", "u4"),
        ("f4", "f4"),
        ("f8", "f8"),
    ]
}


def _read_vertex(path: Path):
    from plyfile import PlyData

    with open(path, "rb") as fh:
        ply = PlyData.read(fh)
    if "vertex" not in ply:
        raise SceneFormatError("PLY has no 'vertex' element", path=path)
    return ply


def _vertex(ply, path: Path):
    vertex = ply["vertex"]
    data = vertex.data
    names = set(data.dtype.names or ())
    if not {"x", "y", "z"} <= names:
        raise SceneFormatError("PLY vertex element lacks x/y/z", path=path)
    if len(data) == 0:
        raise SceneFormatError("scene has no points", path=path)
    label_names: dict[int, str] = {}
    for c in ply.comments:
        if c.startswith(LABEL_COMMENT):
            label_names = label_names_from_json(c[len(LABEL_COMMENT) :])
    return data, names, label_names


def is_3dgs(names: set[str]) -> bool:
    return {"f_dc_0", "opacity", "rot_0", "scale_0"} <= names


def _first(names: set[str], keys) -> str | None:
    """The first of ``keys`` present in ``names``, matched case-insensitively (CloudCompare writes
    ``scalar_Classification``, ``scalar_Intensity``); returns the property's own spelling."""
    lower = {n.lower(): n for n in sorted(names)}
    return next((lower[k] for k in keys if k in lower), None)


def _whole_labels(values: np.ndarray, key: str, path: Path) -> np.ndarray | None:
    """Integer labels from a label property; float properties must hold whole numbers (CloudCompare
    stores classes as float scalars), else they are not labels (None, logged)."""
    v = np.asarray(values)
    if np.issubdtype(v.dtype, np.floating):
        finite = np.isfinite(v)
        if not finite.all() or not np.array_equal(v, np.round(v)) or np.abs(v).max(initial=0) > 2**31 - 1:
            log.warning("%s: '%s' holds non-integer values; kept as an attribute, not as labels", path, key)
            return None
    return v.astype(np.int32)


@reader("ply")
def read_ply(path: Path) -> PointCloud | GaussianSplats:
    ply = _read_vertex(path)
    if is_compressed(ply):
        return _read_compressed(path, ply, decode_compressed(ply, path))
    data, names, label_names = _vertex(ply, path)
    world = np.stack([data["x"], data["y"], data["z"]], axis=1)
    if not np.issubdtype(world.dtype, np.floating):
        world = world.astype(np.float64)
    drop = None
    if is_3dgs(names):
        keep3 = _gaussian_rows(data, path)
        drop = None if keep3 is None else ~keep3
    local, origin, keep, meta = world_to_local(world, path, drop=drop)
    if keep is not None:
        data = data[keep]
        meta["source_rows"] = np.flatnonzero(keep)
    lab_key = _first(names, _LABEL_KEYS)
    inst_key = _first(names, _INSTANCE_KEYS)
    labels = _whole_labels(data[lab_key], lab_key, path) if lab_key else None
    if labels is not None and not label_names and "classification" in lab_key.lower():
        from scene_kd.scene.labels import ASPRS_CLASSES

        label_names = dict(ASPRS_CLASSES)  # a classification field (LAS, CloudCompare) holds ASPRS codes
    if labels is None:
        lab_key = None
    instances = np.asarray(data[inst_key]).astype(np.int32) if inst_key else None
    if is_3dgs(names):
        return _read_3dgs(path, data, names, local, origin, labels, instances, label_names, meta)

    used = {"x", "y", "z"} | {k for k in (lab_key, inst_key) if k}
    rgb = None
    for keys in _RGB_KEYS:
        if set(keys) <= names:
            rgb = rgb_to_uint8(np.stack([data[k] for k in keys], axis=1))
            used |= set(keys)
            break
    normals = None
    if {"nx", "ny", "nz"} <= names:
        normals = np.stack([data["nx"], data["ny"], data["nz"]], axis=1).astype(np.float32)
        used |= {"nx", "ny", "nz"}
    int_key = _first(names, _INTENSITY_KEYS)
    intensity = np.asarray(data[int_key]).astype(np.float32) if int_key else None
    used |= {int_key} if int_key else set()
    extra = stack_numbered_columns({k: np.asarray(data[k]) for k in data.dtype.names if k not in used})
    return PointCloud(
        xyz=local,
        origin=origin,
        rgb=rgb,
        intensity=intensity,
        normals=normals,
        labels=labels,
        label_names=label_names,
        instances=instances,
        extra=extra,
        meta={**meta, "ply_kind": "points"},
    )


def _read_3dgs(path, data, names, local, origin, labels, instances, label_names, meta) -> GaussianSplats:
    for group in (
        ["f_dc_0", "f_dc_1", "f_dc_2"],
        ["scale_0", "scale_1", "scale_2"],
        ["rot_0", "rot_1", "rot_2", "rot_3"],
    ):
        missing = [g for g in group if g not in names]
        if missing:
            raise SceneFormatError(f"3DGS PLY lacks {', '.join(missing)}", path=path)
    n = len(data)
    rest = sorted(
        (k for k in names if k.startswith("f_rest_")), key=lambda k: int(k[7:]) if k[7:].isdigit() else -1
    )
    n_rest = len(rest)
    if n_rest % 3 or [k for k in rest] != [f"f_rest_{i}" for i in range(n_rest)]:
        raise SceneFormatError(
            f"3DGS PLY has {n_rest} f_rest properties (want 3*((d+1)^2-1), numbered 0..)", path=path
        )
    k_rest = n_rest // 3
    if int(round(np.sqrt(k_rest + 1))) ** 2 != k_rest + 1:
        raise SceneFormatError(f"3DGS PLY has {n_rest} f_rest properties: not a whole SH degree", path=path)
    sh = np.empty((n, k_rest + 1, 3), dtype=np.float32)
    for c in range(3):
        sh[:, 0, c] = data[f"f_dc_{c}"]
        for k in range(k_rest):
            sh[:, 1 + k, c] = data[f"f_rest_{c * k_rest + k}"]
    return GaussianSplats(
        means=local,
        origin=origin,
        quats=np.stack([data[f"rot_{i}"] for i in range(4)], axis=1).astype(np.float32),
        log_scales=np.stack([data[f"scale_{i}"] for i in range(3)], axis=1),
        opacity_logits=np.asarray(data["opacity"]),
        sh=sh,
        labels=labels,
        instances=instances,
        label_names=label_names,
        meta={**meta, "ply_kind": "3dgs"},
    )


def _gaussian_rows(data, path: Path) -> np.ndarray | None:
    """[N] bool: 3DGS rows to keep, or None for all. Rows with a zero-norm quaternion (among them the
    all-zero rows some trainers pad files with) have no orientation and would render as grey discs:
    dropped with a warning giving the count. NaN rows are left to the non-finite check."""
    q = np.stack([np.asarray(data[f"rot_{i}"], dtype=np.float64) for i in range(4)], axis=1)
    bad = (q**2).sum(axis=1) == 0
    n_bad = int(bad.sum())
    if not n_bad:
        return None
    zero_rows = int(np.count_nonzero(bad & np.all([np.asarray(data[k]) == 0 for k in data.dtype.names], axis=0)))
    log.warning("%s: dropped %d Gaussian(s) with a zero-norm quaternion (%d of them all-zero rows)", path,
                n_bad, zero_rows)
    if n_bad == len(q):
        raise SceneFormatError("every Gaussian has a zero-norm quaternion (an empty or zero-filled 3DGS PLY)",
                               path=path)
    return ~bad


def _read_compressed(path: Path, ply, dec: dict[str, np.ndarray]) -> GaussianSplats:
    """A decoded SuperSplat compressed PLY (scene_kd.scene.formats.ply_compressed) -> GaussianSplats."""
    local, origin, keep, meta = world_to_local(dec["means"], path)
    rows = slice(None) if keep is None else keep
    if keep is not None:
        meta["source_rows"] = np.flatnonzero(keep)
    label_names = {}
    for c in ply.comments:
        if c.startswith(LABEL_COMMENT):
            label_names = label_names_from_json(c[len(LABEL_COMMENT):])
    return GaussianSplats(means=local, origin=origin, quats=dec["quats"][rows], log_scales=dec["log_scales"][rows],
                          opacity_logits=dec["opacity_logits"][rows], sh=dec["sh"][rows], label_names=label_names,
                          meta={**meta, "ply_kind": "3dgs_compressed"})


def _comments(label_names: dict[int, str], provenance: dict | None = None) -> list[str]:
    out = [LABEL_COMMENT + label_names_to_json(label_names)] if label_names else []
    if provenance:
        out.append(provenance_comment(provenance))
    return out


def _write(path: Path, columns: list[tuple[str, np.ndarray]], comments: list[str]) -> None:
    from plyfile import PlyData, PlyElement

    n = len(columns[0][1])
    dtype = [(name, _PLY_INT_TYPES.get(np.dtype(v.dtype), None) or _ply_type(name, v)) for name, v in columns]
    arr = np.empty(n, dtype=dtype)
    for name, v in columns:
        arr[name] = v
    PlyData([PlyElement.describe(arr, "vertex")], text=False, comments=comments).write(str(path))


def _ply_type(name: str, v: np.ndarray) -> str:
    if v.dtype == np.bool_:
        return "u1"
    if np.issubdtype(v.dtype, np.integer):
        return "i4" if np.dtype(v.dtype).itemsize <= 4 else "f8"
    if np.issubdtype(v.dtype, np.floating):
        return "f4" if np.dtype(v.dtype).itemsize <= 4 else "f8"
    raise SceneFormatError(f"cannot store attribute '{name}' of dtype {v.dtype} in PLY")


def _world_columns(
    xyz: np.ndarray, origin: np.ndarray, force_float32: bool = False
) -> list[tuple[str, np.ndarray]]:
    world = xyz.astype(np.float64) + origin
    big = len(world) and np.abs(world).max() > _DOUBLE_ABOVE
    dt = np.float64 if big and not force_float32 else np.float32
    return [(c, world[:, i].astype(dt)) for i, c in enumerate("xyz")]


@writer("ply")
def write_ply(scene: PointCloud | GaussianSplats, path: Path) -> None:
    """Points -> point PLY; GaussianSplats -> INRIA 3DGS PLY."""
    if isinstance(scene, GaussianSplats):
        write_3dgs_ply(scene, path)
        return
    pc = scene
    cols = _world_columns(pc.xyz, pc.origin)
    if pc.normals is not None:
        cols += [(c, pc.normals[:, i].astype(np.float32)) for i, c in enumerate(("nx", "ny", "nz"))]
    if pc.rgb is not None:
        rgb = rgb_to_uint8(pc.rgb)
        cols += [(c, rgb[:, i]) for i, c in enumerate(("red", "green", "blue"))]
    if pc.intensity is not None:
        cols.append(("intensity", pc.intensity.astype(np.float32)))
    if pc.labels is not None:
        cols.append(("label", pc.labels.astype(np.int32)))
    if pc.instances is not None:
        cols.append(("instance", pc.instances.astype(np.int32)))
    taken = {c for c, _ in cols}
    for name, v in pc.extra.items():
        v = np.asarray(v)
        if v.ndim == 1:
            parts = [(name, v)]
        elif v.ndim == 2:
            parts = [(f"{name}_{j}", v[:, j]) for j in range(v.shape[1])]
        else:
            raise SceneFormatError(f"cannot store attribute '{name}' of shape {v.shape} in PLY", path=path)
        for pname, pv in parts:
            if pname in taken or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.\-]*", pname):
                raise SceneFormatError(
                    f"attribute name '{pname}' clashes or is not a valid PLY property", path=path
                )
            taken.add(pname)
            cols.append((pname, pv))
    _write(path, cols, _comments(pc.label_names, pc.meta.get("provenance")))


def write_3dgs_ply(g: GaussianSplats, path: Path) -> None:
    """INRIA 3DGS layout (float32): x y z nx ny nz f_dc_0..2 f_rest_* opacity scale_0..2 rot_0..3 [label instance]."""
    n = g.sh.shape[0]
    cols = _world_columns(g.means, g.origin, force_float32=True)
    zeros = np.zeros(n, dtype=np.float32)
    cols += [("nx", zeros), ("ny", zeros), ("nz", zeros)]
    cols += [(f"f_dc_{c}", g.sh[:, 0, c]) for c in range(3)]
    rest = np.ascontiguousarray(g.sh[:, 1:, :].transpose(0, 2, 1)).reshape(n, -1)  # channel-major like 3DGS
    cols += [(f"f_rest_{i}", rest[:, i]) for i in range(rest.shape[1])]
    cols.append(("opacity", g.opacity_logits))
    cols += [(f"scale_{i}", g.log_scales[:, i]) for i in range(3)]
    cols += [(f"rot_{i}", g.quats[:, i]) for i in range(4)]
    cols = [(name, np.asarray(v, dtype=np.float32)) for name, v in cols]
    if g.labels is not None:
        cols.append(("label", g.labels.astype(np.int32)))
    if g.instances is not None:
        cols.append(("instance", g.instances.astype(np.int32)))
    _write(path, cols, _comments(g.label_names))


PROVENANCE_COMMENT = "scene_kd provenance "


def provenance_comment(provenance: dict) -> str:
    """The PLY header comment carrying the JSON of scene-kd's provenance VLR (formats/las.py: provenance_vlr)."""
    import json

    return PROVENANCE_COMMENT + json.dumps(dict(provenance))
