"""Property tests: corrupted, truncated or random bytes fed to every reader only ever raise SceneFormatError."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scene_kd.errors import SceneFormatError
from scene_kd.scene.io import load_scene, readable_extensions, save_scene
from scene_kd.scene.types import GaussianSplats, PointCloud

_TMP = Path(tempfile.mkdtemp(prefix="scene_kd_fuzz_"))


def _valid_bytes(ext: str) -> bytes:
    rng = np.random.default_rng(0)
    n = 40
    if ext == "splat":
        scene = GaussianSplats(
            means=rng.normal(size=(n, 3)),
            quats=rng.normal(size=(n, 4)),
            log_scales=rng.normal(size=(n, 3)) - 3,
            opacity_logits=rng.normal(size=n),
            sh=rng.normal(size=(n, 1, 3)),
        )
    else:
        scene = PointCloud.from_world(
            rng.uniform(0, 10, (n, 3)) + [870200.0, 6617083.0, 0.0],
            rgb=rng.integers(0, 256, (n, 3)).astype(np.uint8),
            labels=rng.integers(0, 5, n).astype(np.int32),
            label_names={0: "road"},
            extra={"confidence": rng.random(n).astype(np.float32)},
        )
    path = _TMP / f"valid.{ext}"
    save_scene(scene, path)
    return path.read_bytes()


_VALID: dict[str, bytes] = {}
_GAUSSIAN_PLY = "ply3dgs"


def valid(ext: str) -> bytes:
    if ext not in _VALID:
        if ext == _GAUSSIAN_PLY:
            rng = np.random.default_rng(1)
            g = GaussianSplats(
                means=rng.normal(size=(20, 3)),
                quats=rng.normal(size=(20, 4)),
                log_scales=rng.normal(size=(20, 3)),
                opacity_logits=rng.normal(size=20),
                sh=rng.normal(size=(20, 4, 3)),
                labels=np.arange(20),
            )
            save_scene(g, _TMP / "g.ply")
            _VALID[ext] = (_TMP / "g.ply").read_bytes()
        else:
            _VALID[ext] = _valid_bytes(ext)
    return _VALID[ext]


@st.composite
def corrupted(draw, data: bytes) -> bytes:
    kind = draw(st.sampled_from(["truncate", "flip", "splice", "random"]))
    if kind == "truncate":
        return data[: draw(st.integers(1, len(data) - 1))]
    if kind == "random":
        return draw(st.binary(min_size=1, max_size=400))
    buf = bytearray(data)
    if kind == "flip":
        for _ in range(draw(st.integers(1, 8))):
            # bias towards the header, where corruption is most dangerous
            hi = len(buf) - 1 if draw(st.booleans()) else min(len(buf) - 1, 400)
            buf[draw(st.integers(0, hi))] = draw(st.integers(0, 255))
        return bytes(buf)
    at = draw(st.integers(0, len(buf) - 1))
    return bytes(buf[:at]) + draw(st.binary(min_size=1, max_size=64)) + bytes(buf[at + 1 :])


FORMATS = [e for e in readable_extensions()] + [_GAUSSIAN_PLY]


def test_every_reader_is_fuzzed():
    assert {"las", "laz", "ply", "npy", "txt", "xyz", "splat", "pcd"} <= set(FORMATS)


@pytest.mark.parametrize("ext", FORMATS)
def test_corrupt_bytes_raise_only_scene_format_error(ext):
    data = valid(ext)
    suffix = "ply" if ext == _GAUSSIAN_PLY else ext
    path = _TMP / f"fuzz.{suffix}"
    path.write_bytes(data)
    assert len(load_scene(path)) > 0  # the unmutated file reads

    tally = {"runs": 0, "errors": 0}

    @settings(
        max_examples=50,
        deadline=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    @given(blob=corrupted(data))
    def check(blob: bytes) -> None:
        tally["runs"] += 1
        path.write_bytes(blob)
        try:
            scene = load_scene(path)
        except SceneFormatError as e:
            tally["errors"] += 1
            assert str(path) in str(e) and "\n" not in str(e)
            return
        # a mutation that still parses must give a usable scene with finite local coordinates
        assert len(scene) > 0 and np.isfinite(scene.xyz).all()

    check()
    assert tally["runs"] >= 50 and tally["errors"] >= 5, tally
