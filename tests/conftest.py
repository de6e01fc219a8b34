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
