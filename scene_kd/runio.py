"""Run-folder I/O: atomic writes, JSON/safetensors helpers, config and file hashes.

Every write goes to a temporary file in the same folder and is renamed into place, so a crash never leaves a
half-written output. The run folder's layout and the stage records are in scene_kd/rundir.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from scene_kd.errors import RunStateError


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + "".join(path.suffixes[-1:]), dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():  # mkstemp makes 0600; the result gets the mode a plain open() would give
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def to_jsonable(obj: Any) -> Any:
    """Dataclasses, numpy scalars/arrays, paths and tuples to plain JSON values."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(to_jsonable(obj), indent=2, sort_keys=False) + "\n")


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.exists():
        raise RunStateError(f"missing {path.name}; run the stage that writes it first", path=path.parent)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise RunStateError(f"corrupted JSON ({e})", path=path) from None


def config_hash(*objs: Any) -> str:
    """A short stable hash of dataclass configs / JSON-able values."""
    text = json.dumps([to_jsonable(o) for o in objs], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def file_hash(path: str | Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes (first 16 hex digits)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()[:16]


def save_tensors(path: str | Path, tensors: dict[str, Any], metadata: dict[str, Any] | None = None) -> None:
    """Write torch tensors / numpy arrays atomically as safetensors; metadata values are JSON-encoded."""
    import torch
    from safetensors.torch import save_file

    clean = {}
    for k, v in tensors.items():
        if v is None:
            continue
        t = torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v
        clean[k] = t.detach().cpu().contiguous()
    meta = {k: json.dumps(to_jsonable(v)) for k, v in (metadata or {}).items()}
    with atomic_path(path) as tmp:
        save_file(clean, str(tmp), metadata=meta)


def load_tensors(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read (tensors, metadata) from a safetensors file written by :func:`save_tensors`."""
    from safetensors import safe_open

    path = Path(path)
    if not path.exists():
        raise RunStateError(f"missing {path.name}; run the stage that writes it first", path=path.parent)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = {k: json.loads(v) for k, v in (f.metadata() or {}).items()}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises several types for corrupt files
        raise RunStateError(f"cannot read safetensors file ({type(e).__name__}: {e})", path=path) from None
    return tensors, meta


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, MiB."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
