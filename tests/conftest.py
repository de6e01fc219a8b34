"""Shared test fixtures and marker handling."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"
if not REAL_DATA.exists():  # CI clones main into another folder with shared/ beside it
    REAL_DATA = Path(os.environ.get("SCENE_KD_REAL_DATA", REAL_DATA))


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own SCENE_KD_CACHE so feature caches never leak between tests."""
    monkeypatch.setenv("SCENE_KD_CACHE", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture
def real_data() -> Path:
    if not REAL_DATA.exists():
        pytest.skip(f"real data folder not found at {REAL_DATA}")
    return REAL_DATA


@pytest.fixture(scope="session")
def urban_run(tmp_path_factory) -> Path:
    """A 20k-point synthetic urban scene through the whole pipeline (oracle teacher, small renders), made once
    per test session and shared by the query CLI and browser tests (read-only for them)."""
    from scene_kd.config import load_config
    from scene_kd.pipeline import run_pipeline
    from scene_kd.scene.io import save_scene
    from scene_kd.scene.synthetic import make_urban

    base = tmp_path_factory.mktemp("query_urban_run")
    scene = base / "urban.ply"
    save_scene(make_urban(points=20000, seed=0), scene)
    cfg = load_config(None, overrides={"teacher": {"name": "oracle-labels"},
                                       "render": {"width": 128, "height": 128, "levels": 2},
                                       "distill": {"epochs": 2}})
    run_pipeline(scene, base / "run", cfg)
    return base / "run"
