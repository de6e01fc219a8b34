"""Property tests: generated LAS/LAZ files (versions 1.2-1.4, point formats 0-10, random bytes in every
standard dimension, extra bytes of several types incl. arrays, VLRs, EVLRs) come out of ``run`` (oracle) +
``segment --out`` / ``query --export`` / ``batch --student`` with every dimension but classification equal,
and header, VLRs and EVLRs kept (scene_kd.scene.annotate)."""

from __future__ import annotations

import os
from pathlib import Path

import laspy
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lossless_helpers import assert_records_kept, cli

FORMATS = {"1.2": [0, 1, 2, 3], "1.3": [0, 1, 2, 3, 4, 5], "1.4": list(range(11))}
EXTRA_TYPES = ["u1", "i2", "u4", "i8", "f4", "f8", "3f4", "2i4", "7u1"]
SLOW_EXAMPLES = int(os.environ.get("SCENE_KD_PROPERTY_EXAMPLES", "25"))


@st.composite
def las_specs(draw):
    version = draw(st.sampled_from(sorted(FORMATS)))
    return {
        "version": version,
        "point_format": draw(st.sampled_from(FORMATS[version])),
        "n": draw(st.integers(150, 500)),
        "seed": draw(st.integers(0, 2**32 - 1)),
        "extra": draw(st.lists(st.sampled_from(EXTRA_TYPES), max_size=3, unique=True)),
        "scale": draw(st.sampled_from([0.01, 0.001, 1.16e-6])),
        "laz": draw(st.booleans()),
    }


def write_las(spec: dict, folder: Path) -> Path:
    """A LAS/LAZ file: random bytes in every record field, then X/Y/Z of a ground plane (class 2) and a
    box building (class 6) that the oracle teacher can label; a VLR, and an EVLR for 1.4."""
    rng = np.random.default_rng(spec["seed"])
    header = laspy.LasHeader(version=spec["version"], point_format=spec["point_format"])
    header.scales = np.full(3, spec["scale"])
    header.offsets = np.array([470000.0, 4600000.0, 10.0]) + rng.integers(0, 1000, 3)
    header.system_identifier = "scene-kd property test"
    header.generating_software = f"seed {spec['seed']}"
    if spec["extra"]:
        header.add_extra_dims([laspy.ExtraBytesParams(name=f"eb_{i}_{t}", type=t, description=t)
                               for i, t in enumerate(spec["extra"])])
    header.vlrs.append(laspy.VLR(user_id="someone", record_id=7, description="opaque",
                                 record_data=rng.integers(0, 256, 40, dtype=np.uint8).tobytes()))
    n = spec["n"]
    rec = laspy.ScaleAwarePointRecord.zeros(n, header=header)
    rec.array.view(np.uint8)[:] = rng.integers(0, 256, rec.array.nbytes, dtype=np.uint8)
    xy = rng.uniform(0, 20, (n, 2))
    building = (np.abs(xy - 10) < 4).all(axis=1)
    z = np.where(building, 5.0 + rng.uniform(0, 0.1, n), rng.uniform(0, 0.1, n))
    for i, v in enumerate((xy[:, 0], xy[:, 1], z)):
        rec[("X", "Y", "Z")[i]] = np.rint(v / spec["scale"]).astype(np.int32)
    rec.classification = np.where(building, 6, 2).astype(np.uint8)
    las = laspy.LasData(header=header, points=rec)
    if spec["version"] == "1.4":
        las.header.evlrs = laspy.vlrs.vlrlist.VLRList(
            [laspy.VLR(user_id="someone", record_id=9, description="evlr", record_data=b"\x01\x02" * 50)])
    path = folder / f"t.{'laz' if spec['laz'] else 'las'}"
    las.write(str(path), do_compress=spec["laz"])
    return path


def _check_commands(spec: dict, folder: Path) -> None:
    src = write_las(spec, folder)
    run = folder / "run"
    assert cli("run", src, "--out", run, "--config", "ci", "--teacher", "oracle-labels") == 0
    seg, q = folder / f"seg.{src.suffix[1:]}", folder / "q.las"
    assert cli("segment", run, "--labels", "ground,building", "--out", seg) == 0
    assert_records_kept(src, seg, added=("confidence",))
    assert cli("query", run, "building", "--threshold", "-1", "--export", q) == 0
    assert_records_kept(src, q, added=("relevancy",))
    assert cli("batch", src, "--out", folder / "b", "--labels", "ground,building", "--student", run,
               "--workers", "0") == 0
    assert_records_kept(src, folder / "b" / f"{src.stem}.laz", added=("confidence",))


_FAST = settings(max_examples=4, deadline=None, derandomize=True,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
_SLOW = settings(max_examples=SLOW_EXAMPLES, deadline=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@_FAST
@given(spec=las_specs())
def test_commands_keep_every_dimension(spec, tmp_path_factory):
    _check_commands(spec, tmp_path_factory.mktemp("prop"))


@pytest.mark.slow
@_SLOW
@given(spec=las_specs())
def test_commands_keep_every_dimension_many(spec, tmp_path_factory):
    _check_commands(spec, tmp_path_factory.mktemp("prop"))


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(spec=las_specs(), chunk=st.integers(1, 400), data=st.data())
def test_annotate_selection_and_chunks(spec, chunk, data, tmp_path_factory):
    """annotate_las alone: any chunk size, any selection, a pipeline -> record map with gaps."""
    from scene_kd.scene.annotate import annotate_las

    folder = tmp_path_factory.mktemp("ann")
    src = write_las(spec, folder)
    n = spec["n"]
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31)))
    keep = rng.random(n) < data.draw(st.floats(0.05, 1.0))
    keep[0] = True
    fmt_max = 31 if spec["point_format"] < 6 else 255
    cls = rng.integers(0, fmt_max + 1, n).astype(np.uint8)
    conf = rng.random(n).astype(np.float32)
    out = folder / "o.laz"
    info = annotate_las(src, out, classification=cls, dims={"confidence": conf}, keep=keep, chunk_points=chunk)
    assert info["count"] == keep.sum()
    assert_records_kept(src, out, keep=keep, added=("confidence",))
    got = laspy.read(str(out))
    np.testing.assert_array_equal(np.asarray(got.classification), cls[keep])
    np.testing.assert_array_equal(np.asarray(got["confidence"]), conf[keep])
    # a run that dropped records: pipeline point i is record rows[i]
    rows = np.flatnonzero(rng.random(n) < 0.7)
    if len(rows):
        out2 = folder / "o2.las"
        annotate_las(src, out2, classification=cls[: len(rows)], records=rows, chunk_points=chunk)
        src_cls = np.asarray(laspy.read(str(src)).classification)
        want = src_cls.copy()
        want[rows] = cls[: len(rows)]
        got2 = laspy.read(str(out2))
        assert len(got2.points) == len(rows)
        np.testing.assert_array_equal(np.asarray(got2.classification), want[rows])
