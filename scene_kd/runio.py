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
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from scene_kd.errors import RunStateError, SceneKDError


def cache_dir() -> Path:
    """The user cache folder: ``$SCENE_KD_CACHE`` or ``~/.cache/scene_kd`` (model weights, text embeddings, the
    compiled native z-buffer). Lives here, at the bottom layer, because render/ and teachers/ both use it."""
    return Path(os.environ.get("SCENE_KD_CACHE") or Path.home() / ".cache" / "scene_kd").expanduser()


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


def final_name(path: str | Path) -> str:
    """The path a message should name for a file being written through :func:`atomic_path` (possibly nested):
    ``dir/..t.laz.x1.tmp.laz.y2.tmp.laz`` -> ``dir/t.laz``; other paths unchanged."""
    p = Path(path)
    name = p.name
    while (m := re.fullmatch(r"\.(.+)\.[A-Za-z0-9_]+\.tmp(\.[^.]+)?", name)) is not None:
        name = m.group(1)
    return str(p.with_name(name))


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
        if sum(t.numel() * t.element_size() for t in clean.values()) < STREAM_BYTES:
            save_file(clean, str(tmp), metadata=meta)
        else:
            _save_safetensors_streamed(clean, tmp, meta)


STREAM_BYTES = 256 * 2**20
"""Above this many tensor bytes, :func:`save_tensors` streams the file instead of calling safetensors'
``save_file`` (which builds a bytes copy of every tensor first: +2.5 GB for a 10M-point field)."""

_SAFETENSORS_DTYPES = {"float16": "F16", "float32": "F32", "float64": "F64", "int8": "I8", "int16": "I16",
                       "int32": "I32", "int64": "I64", "uint8": "U8", "bool": "BOOL"}


def _save_safetensors_streamed(tensors: dict[str, Any], path: Path, metadata: dict[str, str]) -> None:
    """Write the safetensors format (an 8-byte little-endian header size, a JSON header of dtype, shape and byte
    offsets per tensor padded with spaces to 8 bytes, then the raw little-endian data) tensor by tensor, in
    64 MiB slices, so no second copy of the data is ever held. Own code: the format is documented at
    https://github.com/huggingface/safetensors and read back by the library's ``safe_open``."""
    header: dict[str, Any] = {"__metadata__": metadata} if metadata else {}
    order = sorted(tensors, key=lambda k: (-tensors[k].element_size(), k))  # large alignments first, as the library
    offset = 0
    for k in order:
        t = tensors[k]
        dtype = _SAFETENSORS_DTYPES.get(str(t.dtype).replace("torch.", ""))
        if dtype is None:
            raise SceneKDError(f"cannot store a {t.dtype} tensor ({k}) as safetensors here")
        size = t.numel() * t.element_size()
        header[k] = {"dtype": dtype, "shape": list(t.shape), "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        for k in order:
            flat = tensors[k].reshape(-1)
            step = max(1, (64 * 2**20) // max(1, flat.element_size()))
            for s in range(0, flat.numel(), step):
                f.write(flat[s : s + step].numpy().tobytes())


def load_tensors(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read (tensors, metadata) from a safetensors file written by :func:`save_tensors`."""
    from safetensors import safe_open

    path = Path(path)
    if not path.exists():
        raise RunStateError(f"missing {path.name}; run the stage that writes it first", path=path.parent)
    try:
        if path.stat().st_size >= STREAM_BYTES:
            return _load_safetensors_streamed(path)
        with safe_open(str(path), framework="pt") as f:
            meta = {k: json.loads(v) for k, v in (f.metadata() or {}).items()}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except RunStateError:
        raise
    except Exception as e:  # safetensors raises several types for corrupt files
        raise RunStateError(f"cannot read safetensors file ({type(e).__name__}: {e})", path=path) from None
    return tensors, meta


_TORCH_DTYPES = {v: k for k, v in _SAFETENSORS_DTYPES.items()}


def _load_safetensors_streamed(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read a big safetensors file tensor by tensor straight into torch memory (``readinto``): one copy of the
    data, where ``safe_open`` would map the whole file (counted in RSS) and copy it."""
    import torch

    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if n <= 0 or n > 100 * 2**20:
            raise RunStateError("cannot read safetensors file (bad header size)", path=path)
        header = json.loads(f.read(n))
        start = 8 + n
        meta = {k: json.loads(v) for k, v in (header.pop("__metadata__", None) or {}).items()}
        tensors = {}
        for k, info in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
            dtype = _TORCH_DTYPES.get(info["dtype"])
            if dtype is None:
                raise RunStateError(f"cannot read safetensors file (dtype {info['dtype']} of {k})", path=path)
            t = torch.empty(info["shape"], dtype=getattr(torch, dtype))
            b, e = info["data_offsets"]
            if e - b != t.numel() * t.element_size():
                raise RunStateError(f"cannot read safetensors file ({k}: offsets do not match its shape)", path=path)
            f.seek(start + b)
            if t.numel() and f.readinto(memoryview(t.reshape(-1).numpy()).cast("B")) != e - b:
                raise RunStateError(f"cannot read safetensors file ({k} is truncated)", path=path)
            tensors[k] = t
    return tensors, meta


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, MiB."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
