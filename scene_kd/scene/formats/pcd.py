"""PCD (Point Cloud Library) via open3d's tensor I/O, imported lazily.

open3d is native code that can crash or silently read garbage on malformed input, so the header is parsed
and the data size checked here first. Read: positions (float64), colors, normals, intensity, label,
instance and any other scalar field (-> extra). Write: binary PCD with float64 xyz + normals (open3d needs
normals in the positions' dtype), uint8 colours, float32 intensity, int32 label/instance, extra scalars.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from scene_kd.errors import SceneFormatError
from scene_kd.scene.formats.las import splats_as_points
from scene_kd.scene.io import reader, world_to_local, writer
from scene_kd.scene.types import GaussianSplats, PointCloud

_LABEL_KEYS = ("label", "labels", "class", "classification", "semantic")
_INSTANCE_KEYS = ("instance", "instances", "instance_id", "object")
_MAX_HEADER = 1 << 16


def import_open3d():
    """open3d, or a SceneFormatError explaining how to fix the import (e.g. the missing libusb)."""
    try:
        import open3d as o3d
    except (ImportError, OSError) as e:
        if "libusb" in str(e):
            raise SceneFormatError(
                f"open3d cannot load ({e}); install the system library: apt-get install libusb-1.0-0"
            ) from None
        raise SceneFormatError(f"open3d is needed for PCD files but failed to import ({e})") from None
    o3d.utility.set_verbosity_level(o3d.utility.VerbosityLevel.Error)
    return o3d


def check_pcd_header(path: Path) -> dict:
    """Parse and sanity-check a PCD header; returns {fields, sizes, types, counts, points, data, offset}."""
    with open(path, "rb") as fh:
        head = fh.read(_MAX_HEADER)
    out: dict = {}
    pos = 0
    while True:
        end = head.find(b"\n", pos)
        if end < 0:
            raise SceneFormatError("truncated or not a PCD file (no DATA line in the header)", path=path)
        line = head[pos:end].strip()
        pos = end + 1
        if not line or line.startswith(b"#"):
            continue
        try:
            key, *vals = line.decode("ascii").split()
        except UnicodeDecodeError:
            raise SceneFormatError("not a PCD file (binary bytes in the header)", path=path) from None
        if key.upper() == "FIELDS":  # PCL writes lower case; other tools write X Y Z / Intensity
            vals = [v.lower() for v in vals]
        if key.upper() == "TYPE":  # and 'f'/'u'/'i' for F/U/I
            vals = [v.upper() for v in vals]
        out[key.upper()] = vals
        if key.upper() == "DATA":
            break
    try:
        fields = out["FIELDS"]
        sizes = [int(v) for v in out["SIZE"]]
        types = out["TYPE"]
        counts = [int(v) for v in out.get("COUNT", ["1"] * len(fields))]
        points = (
            int(out.get("POINTS", [0])[0])
            if "POINTS" in out
            else int(out["WIDTH"][0]) * int(out["HEIGHT"][0])
        )
        data = out["DATA"][0].lower()
    except (KeyError, IndexError, ValueError):
        raise SceneFormatError("corrupt PCD header (FIELDS/SIZE/TYPE/COUNT/POINTS/DATA)", path=path) from None
    if not (len(fields) == len(sizes) == len(types) == len(counts)) or not {"x", "y", "z"} <= set(fields):
        raise SceneFormatError(
            "corrupt PCD header: FIELDS, SIZE, TYPE and COUNT disagree or lack x y z", path=path
        )
    if (
        any(s not in (1, 2, 4, 8) for s in sizes)
        or any(t not in ("F", "I", "U") for t in types)
        or min(counts) < 1
    ):
        raise SceneFormatError("corrupt PCD header: bad SIZE/TYPE/COUNT", path=path)
    if points <= 0:
        raise SceneFormatError("scene has no points", path=path)
    size = path.stat().st_size
    row = sum(s * c for s, c in zip(sizes, counts, strict=True))
    if data == "binary":
        if pos + points * row > size:
            raise SceneFormatError(
                f"truncated file: header says {points:,} points but the file holds {(size - pos) // row:,}",
                path=path,
            )
    elif data == "binary_compressed":
        with open(path, "rb") as fh:
            fh.seek(pos)
            sizes_raw = fh.read(8)
        if len(sizes_raw) < 8:
            raise SceneFormatError("truncated file (no compressed data)", path=path)
        packed, unpacked = np.frombuffer(sizes_raw, dtype="<u4")
        if pos + 8 + int(packed) > size or int(unpacked) != points * row:
            raise SceneFormatError("truncated or corrupt compressed PCD data", path=path)
    elif data == "ascii":
        if size - pos < points * 2 * len(fields) - 1:
            raise SceneFormatError(f"truncated file: too few bytes for {points:,} ascii points", path=path)
    else:
        raise SceneFormatError(f"unknown PCD DATA type '{data}'", path=path)
    return {
        "raw_header": head[:pos],
        "fields": fields,
        "sizes": sizes,
        "types": types,
        "counts": counts,
        "points": points,
        "data": data,
        "offset": pos,
    }


def _canonical_header(raw: bytes) -> bytes:
    """The header with FIELDS names lower-cased and TYPE letters upper-cased (what open3d parses)."""
    lines = raw.split(b"\n")
    for i, line in enumerate(lines):
        words = line.strip().split()
        if words and words[0].upper() == b"FIELDS":
            lines[i] = b" ".join([b"FIELDS", *[w.lower() for w in words[1:]]])
        elif words and words[0].upper() == b"TYPE":
            lines[i] = b" ".join([b"TYPE", *[w.upper() for w in words[1:]]])
    return b"\n".join(lines)


@reader("pcd")
def read_pcd(path: Path) -> PointCloud:
    header = check_pcd_header(path)
    o3d = import_open3d()
    canonical = _canonical_header(header["raw_header"])
    if canonical != header["raw_header"]:  # open3d wants lower-case fields and upper-case types: a fixed copy
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            fixed = Path(tmp) / "fixed.pcd"
            with open(path, "rb") as src, open(fixed, "wb") as dst:
                src.seek(header["offset"])
                dst.write(canonical)
                while block := src.read(1 << 20):
                    dst.write(block)
            pcd = o3d.t.io.read_point_cloud(str(fixed))
    else:
        pcd = o3d.t.io.read_point_cloud(str(path))
    attrs = {k: pcd.point[k].numpy() for k in pcd.point}
    if "positions" not in attrs or len(attrs["positions"]) != header["points"]:
        got = len(attrs["positions"]) if "positions" in attrs else 0
        raise SceneFormatError(
            f"unreadable PCD data (header says {header['points']:,} points, read {got:,})", path=path
        )
    local, origin, keep, meta = world_to_local(attrs.pop("positions"), path)
    if keep is not None:
        attrs = {k: v[keep] for k, v in attrs.items()}
    attrs = {k: (v[:, 0] if v.ndim == 2 and v.shape[1] == 1 else v) for k, v in attrs.items()}

    def pop(keys):
        return next((attrs.pop(k) for k in keys if k in attrs), None)

    colors = attrs.pop("colors", None)
    rgb = None
    if colors is not None:
        rgb = (
            colors
            if colors.dtype == np.uint8
            else np.clip(np.rint(colors * (255.0 if colors.max(initial=0) <= 1 else 1)), 0, 255).astype(
                np.uint8
            )
        )
    normals = attrs.pop("normals", None)
    intensity = pop(("intensity",))
    labels = pop(_LABEL_KEYS)
    instances = pop(_INSTANCE_KEYS)
    return PointCloud(
        xyz=local,
        origin=origin,
        rgb=rgb,
        normals=None if normals is None else normals.astype(np.float32),
        intensity=None if intensity is None else intensity.astype(np.float32),
        labels=None if labels is None else labels.astype(np.int32),
        instances=None if instances is None else instances.astype(np.int32),
        extra=attrs,
        meta=meta,
    )


@writer("pcd")
def write_pcd(scene: PointCloud | GaussianSplats, path: Path) -> None:
    """Binary PCD. label_names are not stored (PCD has no place for them)."""
    o3d = import_open3d()
    pc = splats_as_points(scene) if isinstance(scene, GaussianSplats) else scene
    T = o3d.core.Tensor
    pcd = o3d.t.geometry.PointCloud()
    pcd.point.positions = T(np.ascontiguousarray(pc.world_xyz()))
    if pc.rgb is not None:
        pcd.point.colors = T(np.ascontiguousarray(pc.rgb.astype(np.uint8)))
    if pc.normals is not None:
        pcd.point.normals = T(np.ascontiguousarray(pc.normals.astype(np.float64)))
    if pc.intensity is not None:
        pcd.point.intensity = T(pc.intensity.astype(np.float32)[:, None])
    if pc.labels is not None:
        pcd.point.label = T(pc.labels.astype(np.int32)[:, None])
    if pc.instances is not None:
        pcd.point.instance = T(pc.instances.astype(np.int32)[:, None])
    for name, v in pc.extra.items():
        v = np.asarray(v)
        if v.dtype == np.bool_:
            v = v.astype(np.uint8)
        if name in ("positions", "colors", "normals", "intensity", "label", "instance"):
            raise SceneFormatError(f"extra attribute '{name}' clashes with a PCD field", path=path)
        pcd.point[name] = T(np.ascontiguousarray(v.reshape(len(v), -1)))
    if not o3d.t.io.write_point_cloud(str(path), pcd, write_ascii=False, compressed=False):
        raise SceneFormatError("open3d failed to write the PCD file", path=path)
