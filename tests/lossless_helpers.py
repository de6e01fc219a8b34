"""Helpers for the lossless-output tests: compare an output LAS/LAZ with its input, and a batch labeller."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from scene_kd.cli import main as cli_main

# header fields that stay equal when every record is written (version: 1.0/1.1 become 1.2, checked apart)
HEADER_FIELDS = ("file_source_id", "global_encoding", "uuid", "system_identifier", "generating_software",
                 "creation_date", "scales", "offsets", "mins", "maxs", "point_count",
                 "number_of_points_by_return")


def cli(*args: str) -> int:
    return cli_main([str(a) for a in args])


def assert_records_kept(src: str | Path, out: str | Path, *, keep: np.ndarray | None = None,
                        added: tuple[str, ...] = (), full_header: bool = True) -> None:
    """Every dimension of ``out`` but classification equals ``src``'s (rows ``keep``), the raw X/Y/Z integers
    included; ``out`` has exactly ``added`` extra dims more; header fields, VLRs and EVLRs kept."""
    import laspy

    a, b = laspy.read(str(src)), laspy.read(str(out))
    rows = slice(None) if keep is None else np.asarray(keep)
    assert len(b.points) == (len(a.points) if keep is None else int(np.count_nonzero(keep)))
    for d in a.point_format.dimension_names:
        if d == "classification":
            continue
        va, vb = np.asarray(a[d])[rows], np.asarray(b[d])
        if va.dtype.kind == "f":  # compare the bits: NaN payloads and -0.0 must survive too
            va, vb = va.view(f"u{va.dtype.itemsize}"), vb.view(f"u{vb.dtype.itemsize}")
        np.testing.assert_array_equal(vb, va, err_msg=d)
    assert list(b.point_format.dimension_names) == list(a.point_format.dimension_names) + list(added)
    assert b.header.point_format.id == a.header.point_format.id
    assert b.header.point_format.size == a.header.point_format.size + sum(
        b.point_format.dimension_by_name(n).num_bytes for n in added)
    minor = a.header.version.minor
    assert (b.header.version.major, b.header.version.minor) == (1, max(minor, 2))
    if full_header and keep is None:
        for f in HEADER_FIELDS:
            va, vb = getattr(a.header, f), getattr(b.header, f)
            if f == "global_encoding":
                va, vb = int(va.value), int(vb.value)
            np.testing.assert_array_equal(np.asarray(vb), np.asarray(va), err_msg=f)
    copc = [v for v in a.header.vlrs if v.user_id == "copc"]
    keep_vlrs = [v for v in a.header.vlrs if v.user_id != "copc"]
    got = [v for v in b.header.vlrs if not (v.user_id == "LASF_Spec" and v.record_id == 4)]
    want = [v for v in keep_vlrs if not (v.user_id == "LASF_Spec" and v.record_id == 4)]
    assert [(v.user_id, v.record_id) for v in got if v.user_id != "scene_kd"] == [
        (v.user_id, v.record_id) for v in want]
    for x, y in zip([v for v in got if v.user_id != "scene_kd"], want, strict=True):
        if hasattr(x, "record_data"):
            assert bytes(x.record_data) == bytes(y.record_data)
    evl_a = [v for v in (a.header.evlrs or []) if v.user_id != "copc"]
    evl_b = list(b.header.evlrs or [])
    assert [(v.user_id, v.record_id) for v in evl_b] == [(v.user_id, v.record_id) for v in evl_a]
    if copc:
        assert not any(v.user_id == "copc" for v in b.header.vlrs)
    if a.header.parse_crs() is not None:
        assert b.header.parse_crs() == a.header.parse_crs()


def label_all_first(scene, labels):
    """A batch ``--labeller``: every point gets the first label, confidence 0.5 (for files without classes)."""
    n = len(scene)
    return np.zeros(n, dtype=np.int32), np.full(n, 0.5, dtype=np.float32)
