"""Predicting with a trained student (whole scenes or xy tiles), saving/loading it, applying it to new scenes."""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from scene_kd.distill.config import DistillConfig
from scene_kd.distill.contract import (
    check_tile,
    scene_scale,
    unit_conversion,
    usable_intensity,
    usable_rgb,
)
from scene_kd.distill.model import cpu_threads, resolve_device
from scene_kd.distill.sparseconv import SparseTensor
from scene_kd.distill.unet import SceneStats, StudentSpec, StudentUNet, scene_point_features, voxel_inputs
from scene_kd.errors import RunStateError, SceneKDError
from scene_kd.feature_store import LowRank
from scene_kd.progress import track
from scene_kd.runio import load_tensors, read_json, save_tensors, write_json

STUDENT_FORMAT = 1

log = logging.getLogger(__name__)


@torch.no_grad()
def predict(
    model: torch.nn.Module,
    positions: Tensor | np.ndarray,
    rgb: Tensor | np.ndarray | None = None,
    intensity: Tensor | np.ndarray | None = None,
    *,
    max_points: int = 1_500_000,
    device: str = "auto",
    dtype: torch.dtype = torch.float32,
    progress: bool = False,
    threads: int = 1,
    stats: SceneStats | None = None,
) -> Tensor:
    """Student features [N, D] (unit vectors) for every point; scenes above ``max_points`` run in xy tiles
    with a context margin of the network's receptive field, keeping each tile's core points.
    ``threads``: torch CPU threads meanwhile (0: leave as is; see DistillConfig.cpu_threads).
    ``stats``: the whole scene's input constants when ``positions`` are a part of a scene (a batch chunk)."""
    with cpu_threads(threads):
        return _predict(model, positions, rgb, intensity, max_points=max_points, device=device, dtype=dtype,
                        progress=progress, stats=stats)


@torch.no_grad()
def _predict(model, positions, rgb, intensity, *, max_points: int, device: str, dtype: torch.dtype,
             progress: bool, stats: SceneStats | None) -> Tensor:
    spec: StudentSpec = model.spec
    xyz = torch.as_tensor(positions).to(torch.float32)
    if not torch.isfinite(xyz).all():
        raise SceneKDError("positions contain NaN or Inf")
    base = scene_point_features(xyz, rgb, intensity, spec, stats=stats)
    dev = resolve_device(device)
    model = model.to(dev).eval()
    n = xyz.shape[0]
    out = torch.empty(n, spec.out_dim, dtype=dtype)
    if n <= max_points:
        tiles = [(torch.arange(n), torch.arange(n))]
    else:
        tiles = list(_tiles(xyz, max_points, spec))
    for core, ctx in track(tiles, "student tiles", progress):
        coords, feats, (p2v,) = voxel_inputs([(xyz[ctx], base[ctx])], spec.voxel_size)
        vox = model(SparseTensor(coords.to(dev), feats.to(dev)))
        pos_in_ctx = torch.searchsorted(ctx, core) if ctx is not core else torch.arange(core.numel())
        out[core] = vox[p2v[pos_in_ctx].to(dev)].to("cpu", dtype)
    model.cpu()
    return out


def context_margin(spec: StudentSpec) -> float:
    """The xy context kept around a tile of points, scene units: about the network's receptive field radius."""
    return 6 * spec.voxel_size * 2 ** (len(spec.channels) - 1)


def chunk_halo(spec: StudentSpec) -> float:
    """The least halo for labelling a part of a scene alone: the context margin plus one ground cell, so every
    point within the margin of the part has its whole ground cell (its local-ground input) inside."""
    return context_margin(spec) + spec.ground_cell


def _tiles(xyz: Tensor, max_points: int, spec: StudentSpec):
    """(core indices, context indices) per xy tile; both sorted; context = core tile + margin."""
    margin = context_margin(spec)
    lo, hi = xyz[:, :2].min(0).values, xyz[:, :2].max(0).values
    extent = (hi - lo).clamp_min(1e-6)
    tiles_needed = math.ceil(xyz.shape[0] / (max_points * 0.6))
    edge = float(max(math.sqrt(float(extent[0] * extent[1]) / tiles_needed), 2 * margin))
    ij = torch.floor((xyz[:, :2] - lo) / edge).to(torch.int64)
    nj = int(ij[:, 1].max()) + 1
    tile_id = ij[:, 0] * nj + ij[:, 1]
    for t in torch.unique(tile_id).tolist():
        core = torch.nonzero(tile_id == t).flatten()
        i, j = divmod(t, nj)
        tlo = lo + torch.tensor([i, j], dtype=torch.float32) * edge - margin
        thi = tlo + edge + 2 * margin
        ctx = torch.nonzero(((xyz[:, :2] >= tlo) & (xyz[:, :2] < thi)).all(dim=1)).flatten()
        yield core, ctx


DECODER_KEY = "feature_decoder"
"""student.safetensors key of the [r, D] basis that decodes the student's r outputs to the text space."""


def save_student(out_dir: str | Path, model: torch.nn.Module, *, config: DistillConfig | None = None,
                 decoder: Tensor | None = None, extra: dict[str, Any] | None = None) -> None:
    """``student.safetensors`` (weights + buffers, and ``feature_decoder`` [r, D] when given) and
    ``student.json`` (architecture, spec, config, dims: ``dim`` = the text space's D, ``rank`` = r)."""
    out_dir = Path(out_dir)
    spec: StudentSpec = model.spec
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if decoder is not None:
        if decoder.ndim != 2 or decoder.shape[0] != spec.out_dim:
            raise SceneKDError(f"decoder {tuple(decoder.shape)} does not match the student's {spec.out_dim} outputs")
        state[DECODER_KEY] = decoder.to(torch.float32).contiguous()
    save_tensors(out_dir / "student.safetensors", state)
    write_json(out_dir / "student.json", {
        "format_version": STUDENT_FORMAT, "architecture": "minkunet-sparseconv", "in_dim": spec.in_dim,
        "dim": int(decoder.shape[1]) if decoder is not None else spec.out_dim, "rank": spec.out_dim,
        "voxel_size": spec.voxel_size, "spec": spec.to_json(), "config": config, **(extra or {}),
    })


def load_student(student_dir: str | Path) -> StudentUNet:
    """Rebuild a student saved by :func:`save_student` (torch backend, eval mode, CPU); its decoder (identity
    for students saved without one) is ``model.feature_decoder`` [r, D]."""
    student_dir = Path(student_dir)
    if not student_dir.is_dir():
        raise SceneKDError("student run folder not found", path=student_dir)
    meta = read_json(student_dir / "student.json")
    if meta.get("format_version") != STUDENT_FORMAT:
        raise RunStateError(f"student format version {meta.get('format_version')} is not {STUDENT_FORMAT}", path=student_dir)
    spec = StudentSpec.from_json(meta["spec"])
    state, _ = load_tensors(student_dir / "student.safetensors")
    decoder = state.pop(DECODER_KEY, None)
    model = StudentUNet(spec)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise RunStateError(f"student weights do not match student.json ({str(e).splitlines()[0]})", path=student_dir) from None
    model.feature_decoder = decoder if decoder is not None else torch.eye(spec.out_dim)
    return model.eval()


def student_contract(student_dir: str | Path) -> dict[str, Any] | None:
    """The input contract a student run folder's ``student.json`` records (:mod:`scene_kd.distill.contract`);
    None for a student saved before contracts."""
    return read_json(Path(student_dir) / "student.json").get("input")


def world_phase(origin: np.ndarray, spec: StudentSpec) -> np.ndarray:
    """The offset [3] (metres, float64, each in [0, period)) that puts a scene's local coordinates on grids anchored
    in world coordinates: ``local + phase`` is measured from ``origin - phase``, a whole number of grid periods.

    Why: the student's voxel grid, the coarser grids of its U-Net (stride 2 per level: a period of
    ``voxel_size * 2 ** (levels - 1)``) and its local-ground cells (``spec.ground_cell``, x and y) are laid from the
    coordinates it is given. Two files of the same place with other origins (a LAS in feet converted to metres, a
    re-tiled file) would otherwise be voxelised differently, and ~5 % of the labels change with a shift of a
    fraction of a voxel (benchmarks/cross_tile.py). The x/y period is the least common multiple of the coarsest
    stride and the ground cell when the cell is a whole number of voxels (the default, 32), else the stride.
    """
    v, stride = float(spec.voxel_size), 2 ** (len(spec.channels) - 1)
    k = spec.ground_cell / v
    xy = v * (math.lcm(stride, round(k)) if round(k) > 0 and abs(k - round(k)) < 1e-6 else stride)
    return np.mod(np.asarray(origin, dtype=np.float64).reshape(3), np.array([xy, xy, v * stride]))


def apply_student(student_dir: str | Path, scene: Any, *, max_points: int = 1_500_000, progress: bool = False,
                  stats: SceneStats | None = None, check: bool = True, accept_missing: Any = ()) -> Any:
    """Run the student trained in ``student_dir`` (a run folder) on a new scene -> its features as a
    :class:`scene_kd.feature_store.LowRank` store (codes [N, r] float16 x the student's decoder [r, D]).

    ``scene``: a PointCloud, GaussianSplats (means + SH DC colour) or a scene file path. ``stats``: the whole
    scene's input constants (:func:`scene_kd.distill.unet.scene_stats`) when ``scene`` is a part of it grown by
    :func:`chunk_halo` (its rgb / intensity then already cleaned by the caller for the whole tile:
    :func:`scene_kd.distill.contract.usable_rgb`). ``check``: check a whole scene against the student's input
    contract (:func:`scene_kd.distill.contract.check_tile`, with ``accept_missing``; warnings are logged;
    InputContractError for a
    missing attribute the student needs or units it cannot convert). A whole scene in another length unit than
    the student's metres (``meta["units"]`` or its CRS, :func:`scene_kd.distill.contract.scene_scale`) is
    converted to metres for the student; a chunk (``stats`` given) must come converted.
    """

    if isinstance(scene, (str, Path)):
        from scene_kd.scene.io import load_scene

        scene = load_scene(scene)
    model = load_student(student_dir)
    if scene.kind == "gaussians":
        xyz, rgb, intensity = scene.means, scene.rgb_from_dc(), None  # the rounding the field (training) used
    else:
        xyz, rgb, intensity = scene.xyz, scene.rgb, scene.intensity
    if len(xyz) == 0:
        raise SceneKDError("scene has no points")
    if stats is None:  # a whole scene: attributes without information are missing ones (a chunk's caller did this)
        rgb, intensity = usable_rgb(rgb), usable_intensity(intensity)
        contract, (units, scale) = student_contract(student_dir), scene_scale(scene)
        if check:
            for w in check_tile(contract, xyz, rgb, intensity, units, scale, accept_missing=accept_missing).warnings:
                log.warning("%s", w)
        factor = unit_conversion(contract, units, scale)
        if factor is not None:  # e.g. US survey feet -> metres for a student trained in metres
            xyz = (np.asarray(xyz) * factor).astype(np.asarray(xyz).dtype, copy=False)
        origin = np.asarray(getattr(scene, "origin", np.zeros(3)), dtype=np.float64) * (1.0 if factor is None else factor)
    else:  # a chunk of a tile converted by the caller: its origin is already in metres
        origin = np.asarray(getattr(scene, "origin", np.zeros(3)), dtype=np.float64)

    phase = world_phase(origin, model.spec)
    xyz = (np.asarray(xyz, dtype=np.float64) + phase).astype(np.float32)
    if stats is not None:  # heights are measured from z_ref: keep it on the same shifted axis
        stats = dataclasses.replace(stats, z_ref=stats.z_ref + float(phase[2]))
    codes = predict(model, xyz, rgb, intensity, max_points=max_points, progress=progress, dtype=torch.float16,
                    stats=stats)
    return LowRank(codes, model.feature_decoder)
