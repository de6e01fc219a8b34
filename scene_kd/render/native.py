"""The native CPU z-buffer (zbuffer.c): built on first use with the system C compiler, loaded through ctypes.

Why: on the CPU the torch path spends most of its time in ``scatter_reduce_`` (single-threaded, random access)
and in the ~10 full-length temporaries around it; the C loop projects and min-stores each point in one pass,
with no temporaries, and ctypes releases the GIL so one call per thread runs on its own slice of the points and
its own buffer. The torch path in :mod:`scene_kd.render.points` stays the reference (tests compare both) and the
fallback: without a compiler, on CUDA tensors, or with ``SCENE_KD_NO_NATIVE=1``.

It is compiled for the CPU it runs on (``-march=native``, as torch.compile does for its own C++; plain ``-O3``
where the compiler refuses that) and cached as ``$SCENE_KD_CACHE/native/zbuffer-<hash>.so``, the hash covering
the source, the compile command and the CPU model + flags, so a cache shared by different machines holds one
build per CPU kind. Written atomically: concurrent first calls (Ray workers) never see a half-written file.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch import Tensor

from scene_kd.runio import cache_dir

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("zbuffer.c")
VERSION = 1
CFLAGS = ["-O3", "-std=c11", "-fPIC", "-shared", "-fno-math-errno"]
ARCH_FLAGS = ["-march=native"]
MODE_SINGLE, MODE_FIXED_DISC, MODE_WORLD_RADIUS = 0, 1, 2
MIN_POINTS_PER_THREAD = 200_000
"""Below this many points per thread, one thread does the whole view (a second buffer would cost more)."""

MAX_SCRATCH_BUFFERS = 4
"""Scratch buffers kept between calls (one per extra thread and image size in use)."""
_lock = threading.Lock()
_state: dict = {}


def _after_fork_in_child() -> None:
    """A forked child has none of the parent's pool threads (submitting would wait forever) and may inherit the
    lock held: start both afresh; the loaded library itself stays valid."""
    global _lock
    _lock = threading.Lock()
    _state.pop("pool", None)
    _state.pop("scratch", None)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")


def _cpu_fingerprint() -> str:
    """CPU model and feature flags (Linux /proc/cpuinfo; elsewhere the platform's processor string)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        keep = [ln for ln in lines if ln.startswith(("model name", "flags", "Features", "CPU part"))]
        return "\n".join(dict.fromkeys(keep))
    except OSError:
        return platform.machine() + platform.processor()


def _build(cache: Path) -> Path:
    cc = _compiler()
    if cc is None:
        raise RuntimeError("no C compiler (cc/gcc/clang) on PATH")
    source = SOURCE.read_bytes()
    errors = []
    for arch in (ARCH_FLAGS, []):
        flags = [*CFLAGS, *arch]
        key = "\0".join([cc, *flags, sys.platform, _cpu_fingerprint()]).encode()
        lib = cache / f"zbuffer-{hashlib.sha256(source + key).hexdigest()[:16]}.so"
        if lib.exists():
            return lib
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            out = Path(tmp) / lib.name
            proc = subprocess.run([cc, *flags, str(SOURCE), "-o", str(out), "-lm"], capture_output=True, text=True,
                                  timeout=120)
            if proc.returncode == 0:
                os.replace(out, lib)
                return lib
            errors.append(proc.stderr.strip()[:300])
    raise RuntimeError(f"{cc} failed: {errors[-1]}")


def _load():
    """The loaded library's functions (a dict), or None (reason logged once) when it cannot be built or loaded."""
    with _lock:
        if "lib" in _state:
            return _state["lib"]
        lib = None
        if os.environ.get("SCENE_KD_NO_NATIVE") == "1":
            _state["lib"] = None
            return None
        try:
            handle = ctypes.CDLL(str(_build(cache_dir() / "native")))
            if handle.scene_kd_zbuffer_version() != VERSION:
                raise RuntimeError("library version mismatch")
            i64, f32, ptr = ctypes.c_int64, ctypes.c_float, ctypes.c_void_p
            lib = {"splat": handle.scene_kd_zbuffer_splat, "fill": handle.scene_kd_fill_i64,
                   "min_into": handle.scene_kd_min_into_i64}
            lib["splat"].argtypes = [ptr, i64, ptr, i64, i64, i64, f32, ctypes.c_int, f32, ptr, f32, f32, f32, ptr]
            lib["fill"].argtypes = [ptr, i64, i64]
            lib["min_into"].argtypes = [ptr, ptr, i64]
            for fn in lib.values():
                fn.restype = None
        except Exception as e:  # no compiler, read-only cache, foreign platform: the torch path still works
            log.warning("native z-buffer unavailable (%s); using the torch path", e)
        _state["lib"] = lib
        return lib


def available() -> bool:
    """Whether the native z-buffer can be used (builds it on the first call)."""
    return _load() is not None


def _pool(threads: int) -> ThreadPoolExecutor:
    pool = _state.get("pool")
    if pool is None or pool._max_workers < threads:  # noqa: SLF001 - our own executor
        pool = _state["pool"] = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="scene-kd-zbuffer")
    return pool


def _take_scratch(size: int) -> Tensor:
    """A per-thread buffer of ``size`` int64, reused across calls: a fresh 2 MB buffer per view costs page faults
    comparable to the splat itself whenever the allocator has just handed its memory back to the system."""
    with _lock:
        free = _state.setdefault("scratch", [])
        for i, buf in enumerate(free):
            if buf.numel() == size:
                return free.pop(i)
    return torch.empty(size, dtype=torch.int64)


def _give_back_scratch(buf: Tensor) -> None:
    with _lock:
        free = _state.setdefault("scratch", [])
        free.append(buf)
        del free[:-MAX_SCRATCH_BUFFERS]


def _run_parallel(tasks: list) -> None:
    """Run callables at once: the first in this thread, the others on the pool (ctypes calls release the GIL)."""
    futures = [_pool(len(tasks) - 1).submit(task) for task in tasks[1:]]
    tasks[0]()
    for f in futures:
        f.result()


def zbuffer(
    xyz: Tensor,
    P: Tensor,
    width: int,
    height: int,
    *,
    near: float,
    mode: int = MODE_SINGLE,
    fixed_radius_px: float = 0.0,
    radii: Tensor | None = None,
    radius: float = 0.0,
    fx: float = 0.0,
    max_footprint_px: float = 0.0,
    threads: int | None = None,
) -> Tensor:
    """The packed z-buffer [H * W + 1] int64 (last slot: discard) of points ``xyz`` [N, 3] float32 (CPU,
    ids = row numbers); empty pixels hold int64 max.

    ``P`` [3, 4] float32 = K [R | t]. Modes as in zbuffer.c: single pixel, fixed integer disc of
    ``fixed_radius_px``, or world radius (``radii`` [N] or the scalar ``radius``, scene units) projected with
    ``fx`` and clamped to ``max_footprint_px``. ``threads`` (default ``torch.get_num_threads()``) each splat a
    slice of the points into their own buffer, then merge a slice of the pixels; buffers are filled and merged
    in C, so no torch parallel region (whose idle threads spin) competes with ours.
    Raises RuntimeError if the library is unavailable (check :func:`available` first).
    """
    lib = _load()
    if lib is None:
        raise RuntimeError("native z-buffer unavailable")
    xyz = xyz.contiguous()
    P = P.to(torch.float32).contiguous()
    if radii is not None:
        radii = radii.to(torch.float32).contiguous()
    if xyz.dtype != torch.float32 or xyz.device.type != "cpu" or xyz.ndim != 2 or xyz.shape[1] != 3:
        raise ValueError("native z-buffer takes CPU float32 points [N, 3]")
    n, size = xyz.shape[0], width * height + 1
    threads = max(1, min(threads or torch.get_num_threads(), n // MIN_POINTS_PER_THREAD))
    bufs = [torch.empty(size, dtype=torch.int64)] + [_take_scratch(size) for _ in range(threads - 1)]
    bounds = [n * t // threads for t in range(threads + 1)]
    empty = torch.iinfo(torch.int64).max

    def splat_slice(t: int) -> None:
        start, stop = bounds[t], bounds[t + 1]
        lib["fill"](bufs[t].data_ptr(), size, empty)
        lib["splat"](xyz.data_ptr() + 12 * start, stop - start, P.data_ptr(), width, height, start, near, mode,
                     fixed_radius_px, None if radii is None else radii.data_ptr() + 4 * start, radius, fx,
                     max_footprint_px, bufs[t].data_ptr())

    if threads == 1:
        splat_slice(0)
        return bufs[0]
    _run_parallel([lambda t=t: splat_slice(t) for t in range(threads)])
    pixel_bounds = [size * t // threads for t in range(threads + 1)]

    def merge_slice(t: int) -> None:
        lo, hi = pixel_bounds[t], pixel_bounds[t + 1]
        for buf in bufs[1:]:
            lib["min_into"](bufs[0].data_ptr() + 8 * lo, buf.data_ptr() + 8 * lo, hi - lo)

    _run_parallel([lambda t=t: merge_slice(t) for t in range(threads)])
    for buf in bufs[1:]:
        _give_back_scratch(buf)
    return bufs[0]
