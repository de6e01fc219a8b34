"""Distil fused per-point features into a sparse-conv student; predict with it; apply it to new scenes.

Loss: 1 - cosine(student(point), fused(point)) on covered points. Sampling is balanced across regions
(half the crops are centred in an xy block chosen uniformly among blocks holding covered points) and
across the fused features' clusters (spherical k-means: the other crops are centred on a point of a
uniformly chosen cluster, and each point's loss weighs freq(cluster) ** -balance_power), so rare classes
are not swamped by road and roof. Crops bound memory on any scene size.

Checkpoint: ``RUN/student.ckpt.pt`` after every epoch, a flat ``dict[str, Tensor]`` written with
``torch.save`` and read with ``weights_only=True``; ``resume=True`` continues after its last epoch and
gives the same weights as an uninterrupted run (the sampler's RNG state is in the checkpoint).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from scene_kd.distill.config import DistillConfig
from scene_kd.distill.sparseconv import SparseTensor
from scene_kd.distill.unet import StudentSpec, StudentUNet, scene_point_features, voxel_inputs
from scene_kd.errors import RunStateError, SceneKDError
from scene_kd.runio import atomic_path, load_tensors, read_json, save_tensors, write_json

log = logging.getLogger(__name__)

STUDENT_FORMAT = 1


# ---- set-up helpers ----------------------------------------------------------------------------------------
def auto_voxel_size(xyz: Tensor, points_per_voxel: float = 4.0, iterations: int = 6) -> float:
    """A voxel edge giving about ``points_per_voxel`` points per occupied voxel (2 significant digits)."""
    xyz = torch.as_tensor(xyz, dtype=torch.float32)
    n = xyz.shape[0]
    if n < 2:
        return 1.0
    extent = (xyz.max(0).values - xyz.min(0).values).clamp_min(1e-6)
    area = float(extent[0] * extent[1]) if float(extent[:2].min()) > 1e-3 * float(extent.max()) else float(extent.max() ** 2)
    v = math.sqrt(area * points_per_voxel / n)
    target = max(n / points_per_voxel, 1.0)
    for _ in range(iterations):
        count = torch.unique(_grid_keys(xyz, v)).numel()
        ratio = count / target
        if abs(ratio - 1) < 0.05:
            break
        v *= ratio ** 0.5  # occupied voxels of surfaces scale ~ 1 / v^2
    return float(f"{v:.2g}")


def _grid_keys(xyz: Tensor, v: float) -> Tensor:
    g = torch.floor(xyz.to(torch.float64) / v).to(torch.int64)
    g = g - g.min(0).values
    m = g.max(0).values + 1
    return (g[:, 0] * m[1] + g[:, 1]) * m[2] + g[:, 2]


def make_spec(xyz: Tensor, out_dim: int, cfg: DistillConfig, has_rgb: bool, has_intensity: bool) -> StudentSpec:
    voxel = cfg.voxel_size or auto_voxel_size(xyz, cfg.points_per_voxel)
    z = xyz[:, 2]
    sub = z[torch.linspace(0, z.numel() - 1, min(z.numel(), 1_000_000)).long()].to(torch.float64)
    z_range = float(torch.quantile(sub, 0.98) - torch.quantile(sub, 0.02))
    return StudentSpec(
        out_dim=out_dim, voxel_size=voxel, height_scale=max(z_range / 2, 4 * voxel),
        ground_cell=cfg.ground_cell or 32 * voxel, use_rgb=bool(cfg.use_rgb and has_rgb),
        use_intensity=bool(cfg.use_intensity and has_intensity), channels=tuple(cfg.channels), blocks=cfg.blocks,
        norm=cfg.norm,
    )


@contextlib.contextmanager
def cpu_threads(n: int):
    """Temporarily set torch's intra-op thread count (0: leave it)."""
    before = torch.get_num_threads()
    if n > 0:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if n > 0:
            torch.set_num_threads(before)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SceneKDError("distill.device is 'cuda' but CUDA is not available")
    return torch.device(name)


def build_model(spec: StudentSpec, backend: str = "torch") -> torch.nn.Module:
    """The student network for ``spec`` on the chosen backend ("torch" or "spconv")."""
    if backend == "torch":
        return StudentUNet(spec)
    if backend == "spconv":
        from scene_kd.distill.spconv_backend import SpconvStudentUNet

        return SpconvStudentUNet(spec)
    raise SceneKDError(f"unknown distill backend {backend!r}; choose torch or spconv")


def spherical_kmeans(x: Tensor, k: int, generator: torch.Generator, iterations: int = 12, fit_samples: int = 20000) -> Tensor:
    """Cluster unit vectors x [M, D] into k groups by cosine; returns labels [M] int64."""
    m = x.shape[0]
    k = max(1, min(k, m))
    fit = x[torch.randperm(m, generator=generator)[:fit_samples]]
    # k-means++ seeding (D^2 sampling on cosine distance) so small, distinct clusters get a centre
    centres = fit[torch.randint(fit.shape[0], (1,), generator=generator)]
    dist = (1 - fit @ centres[0]).clamp_min(0)
    for _ in range(1, k):
        if float(dist.sum()) <= 1e-12:
            break
        pick = torch.multinomial(dist.square() + 1e-12, 1, generator=generator)
        centres = torch.cat([centres, fit[pick]])
        dist = torch.minimum(dist, (1 - fit @ fit[pick[0]]).clamp_min(0))
    for _ in range(iterations):
        assign = (fit @ centres.T).argmax(1)
        sums = torch.zeros_like(centres).index_add_(0, assign, fit)
        empty = sums.norm(dim=1) < 1e-8
        sums[empty] = centres[empty]
        centres = sums / sums.norm(dim=1, keepdim=True).clamp_min(1e-8)
    return torch.cat([(x[s : s + 65536] @ centres.T).argmax(1) for s in range(0, m, 65536)])


def balance_weights(fused_unit: Tensor, cfg: DistillConfig, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """(loss weights [M] with mean 1: cluster frequency ** -balance_power, cluster labels [M]) for covered points."""
    if cfg.balance_clusters <= 1:
        return torch.ones(fused_unit.shape[0]), torch.zeros(fused_unit.shape[0], dtype=torch.int64)
    labels = spherical_kmeans(fused_unit, cfg.balance_clusters, generator)
    freq = torch.bincount(labels).to(torch.float32) / labels.numel()
    w = freq[labels].clamp_min(1e-6) ** -cfg.balance_power
    return w / w.mean(), labels


# ---- crops -------------------------------------------------------------------------------------------------
@dataclass
class _Blocks:
    """Points sorted by xy block (CSR), for fast crop queries."""

    size: float
    lo: Tensor  # [2] xy minimum
    dims: tuple[int, int]
    order: Tensor  # [N] point indices sorted by block
    start: Tensor  # [B + 1] CSR offsets into order
    covered_blocks: Tensor  # block ids holding covered points
    covered_in_block: list[Tensor]  # per covered block: its covered point indices
    clusters: list[Tensor] = dataclasses.field(default_factory=list)  # covered point indices per fused cluster

    @classmethod
    def build(cls, xyz: Tensor, covered: Tensor, size: float) -> _Blocks:
        lo = xyz[:, :2].min(0).values
        ij = torch.floor((xyz[:, :2] - lo) / size).to(torch.int64)
        dims = (int(ij[:, 0].max()) + 1, int(ij[:, 1].max()) + 1)
        block = ij[:, 0] * dims[1] + ij[:, 1]
        order = torch.argsort(block, stable=True)
        counts = torch.bincount(block, minlength=dims[0] * dims[1])
        start = torch.cat([torch.zeros(1, dtype=torch.int64), counts.cumsum(0)])
        cov_counts = torch.bincount(block[covered], minlength=dims[0] * dims[1])
        covered_blocks = torch.nonzero(cov_counts > 0).flatten()
        sorted_cov = covered[order]
        per_block = [order[start[b] : start[b + 1]][sorted_cov[start[b] : start[b + 1]]] for b in covered_blocks.tolist()]
        return cls(size, lo, dims, order, start, covered_blocks, per_block)

    def points_near(self, centre: Tensor, half: float) -> Tensor:
        """Indices of points with |xy - centre| <= half (square window)."""
        i0, j0 = (torch.floor((centre - half - self.lo) / self.size)).to(torch.int64).tolist()
        i1, j1 = (torch.floor((centre + half - self.lo) / self.size)).to(torch.int64).tolist()
        parts = []
        for i in range(max(i0, 0), min(i1, self.dims[0] - 1) + 1):
            b0, b1 = i * self.dims[1] + max(j0, 0), i * self.dims[1] + min(j1, self.dims[1] - 1)
            if b1 >= b0:
                parts.append(self.order[self.start[b0] : self.start[b1 + 1]])
        return torch.cat(parts) if parts else torch.empty(0, dtype=torch.int64)


def _augment(xyz: Tensor, centre: Tensor, voxel: float, g: torch.Generator, enabled: bool) -> Tensor:
    """Crop coordinates relative to ``centre`` (xy), randomly rotated/flipped/scaled/shifted when enabled."""
    out = xyz.clone()
    out[:, :2] -= centre
    if not enabled:
        return out
    angle = float(torch.rand(1, generator=g)) * 2 * math.pi
    c, s = math.cos(angle), math.sin(angle)
    rot = torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    if float(torch.rand(1, generator=g)) < 0.5:
        rot[:, 0] = -rot[:, 0]
    scale = 0.95 + 0.1 * float(torch.rand(1, generator=g))
    shift = torch.rand(3, generator=g) * voxel
    return out @ rot.T * scale + shift


# ---- checkpoint --------------------------------------------------------------------------------------------
def _encode_json(obj: Any) -> Tensor:
    return torch.tensor(list(json.dumps(obj, sort_keys=True).encode()), dtype=torch.uint8)


def _decode_json(t: Tensor) -> Any:
    return json.loads(bytes(t.tolist()).decode())


def save_checkpoint(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, *, epoch: int, step: int,
                    generator: torch.Generator, history: dict[str, list[float]], identity: dict[str, Any]) -> None:
    """Flat dict of tensors: model.*, opt.<param>.<name>, epoch, step, rng, history.*, identity (JSON bytes)."""
    data: dict[str, Tensor] = {f"model.{k}": v.detach().cpu().clone() for k, v in model.state_dict().items()}
    for i, state in opt.state_dict()["state"].items():
        for name, v in state.items():
            data[f"opt.{i}.{name}"] = torch.as_tensor(v).detach().cpu().clone()
    data["epoch"] = torch.tensor(epoch)
    data["step"] = torch.tensor(step)
    data["rng"] = generator.get_state()
    for k, v in history.items():
        data[f"history.{k}"] = torch.tensor(v, dtype=torch.float64)
    data["identity"] = _encode_json(identity)
    with atomic_path(path) as tmp:
        torch.save(data, tmp)


def load_checkpoint(path: Path) -> dict[str, Tensor]:
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, unpickling refusal, ...
        raise RunStateError(f"corrupted student checkpoint ({type(e).__name__}); delete it or rerun with --force", path=path) from None
    if not isinstance(data, dict) or not all(isinstance(v, Tensor) for v in data.values()) or "epoch" not in data:
        raise RunStateError("not a student checkpoint; delete it or rerun with --force", path=path)
    return data


def _restore(data: dict[str, Tensor], model: torch.nn.Module, opt: torch.optim.Optimizer, generator: torch.Generator,
             path: Path) -> tuple[int, int, dict[str, list[float]]]:
    try:
        model.load_state_dict({k[6:]: v for k, v in data.items() if k.startswith("model.")})
        state: dict[int, dict[str, Tensor]] = {}
        for k, v in data.items():
            if k.startswith("opt."):
                _, i, name = k.split(".", 2)
                state.setdefault(int(i), {})[name] = v
        opt.load_state_dict({"state": state, "param_groups": opt.state_dict()["param_groups"]})
        generator.set_state(data["rng"])
    except (RuntimeError, KeyError, ValueError) as e:
        raise RunStateError(f"student checkpoint does not fit this network ({e}); rerun with --force", path=path) from None
    history = {k[8:]: v.tolist() for k, v in data.items() if k.startswith("history.")}
    return int(data["epoch"]), int(data["step"]), history


# ---- training ----------------------------------------------------------------------------------------------
def prepare_targets(fused: Tensor | np.ndarray, coverage: Tensor | np.ndarray | None) -> tuple[Tensor, Tensor]:
    """(unit fused features [N, D] float32, covered mask [N] bool); covered = coverage > 0 and a finite, non-zero feature."""
    f = torch.as_tensor(fused).to(torch.float32)
    norm = f.norm(dim=1)
    ok = torch.isfinite(f).all(dim=1) & (norm > 1e-6)
    if coverage is not None:
        ok &= torch.as_tensor(coverage).reshape(-1) > 0
    f = torch.where(ok[:, None], f / norm.clamp_min(1e-6)[:, None], torch.zeros_like(f))
    return f, ok


def train_student(
    positions: Tensor | np.ndarray,
    fused: Tensor | np.ndarray,
    coverage: Tensor | np.ndarray | None,
    rgb: Tensor | np.ndarray | None,
    cfg: DistillConfig,
    **kwargs: Any,
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Train a student on one scene.

    positions [N, 3] float (local coordinates), fused [N, D] teacher features (any scale; zero rows = none),
    coverage [N] (views per point; 0 = uncovered) or None, rgb [N, 3] uint8 or None. Keyword options:
    intensity [N] or None, checkpoint (path written after every epoch), resume (continue from it),
    progress (rich bar), on_epoch_end(epoch, history) callback.
    Returns (model in eval mode on the CPU, history) where history has per-epoch "loss" and "seconds",
    plus "spec" (StudentSpec JSON), "steps", "points_per_second", "covered_points".
    """
    with cpu_threads(cfg.cpu_threads):
        return _train_student(positions, fused, coverage, rgb, cfg, **kwargs)


def _train_student(
    positions: Tensor | np.ndarray,
    fused: Tensor | np.ndarray,
    coverage: Tensor | np.ndarray | None,
    rgb: Tensor | np.ndarray | None,
    cfg: DistillConfig,
    *,
    intensity: Tensor | np.ndarray | None = None,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    on_epoch_end: Callable[[int, dict[str, list[float]]], None] | None = None,
) -> tuple[torch.nn.Module, dict[str, Any]]:
    xyz = torch.as_tensor(positions).to(torch.float32)
    if xyz.ndim != 2 or xyz.shape[1] != 3 or xyz.shape[0] == 0:
        raise SceneKDError(f"positions must be a non-empty [N, 3] array, got shape {tuple(xyz.shape)}")
    if not torch.isfinite(xyz).all():
        raise SceneKDError("positions contain NaN or Inf")
    target, covered = prepare_targets(fused, coverage)
    if target.shape[0] != xyz.shape[0]:
        raise RunStateError(f"fused features have {target.shape[0]} rows for {xyz.shape[0]} points")
    if int(covered.sum()) == 0:
        raise RunStateError("no covered points: no view saw any point with a feature, nothing to distil from")
    device = resolve_device(cfg.device)
    spec = make_spec(xyz, target.shape[1], cfg, rgb is not None, intensity is not None)
    base = scene_point_features(xyz, rgb, intensity, spec)

    g = torch.Generator().manual_seed(cfg.seed)
    weights = torch.zeros(xyz.shape[0])
    weights[covered], cluster_of_covered = balance_weights(target[covered], cfg, g)
    covered_idx = torch.nonzero(covered).flatten()
    clusters = [covered_idx[cluster_of_covered == c] for c in torch.unique(cluster_of_covered).tolist()]
    crop = cfg.crop_voxels * spec.voxel_size
    blocks = _Blocks.build(xyz, covered, crop)
    blocks.clusters = clusters
    steps_per_epoch = cfg.steps_per_epoch or max(cfg.min_steps_per_epoch, 1,
                                                 math.ceil(len(blocks.covered_blocks) / cfg.crops_per_step))
    total_steps = steps_per_epoch * cfg.epochs

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = build_model(spec, cfg.backend).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    identity = {"spec": spec.to_json(), "steps_per_epoch": steps_per_epoch, "epochs": cfg.epochs, "lr": cfg.lr,
                "seed": cfg.seed, "crops_per_step": cfg.crops_per_step, "crop_points": cfg.crop_points,
                "n": int(xyz.shape[0]), "covered": int(covered.sum())}
    history: dict[str, list[float]] = {"loss": [], "seconds": []}
    start_epoch, step = 0, 0
    ckpt_path = Path(checkpoint) if checkpoint else None
    if resume and ckpt_path is not None and ckpt_path.exists():
        data = load_checkpoint(ckpt_path)
        saved = _decode_json(data["identity"]) if "identity" in data else None
        if saved is None or {k: v for k, v in saved.items() if k != "epochs"} != {k: v for k, v in identity.items() if k != "epochs"}:
            raise RunStateError("student checkpoint was made with other data or settings; rerun with --force", path=ckpt_path)
        if saved["epochs"] != cfg.epochs:
            raise RunStateError(f"student checkpoint belongs to a {saved['epochs']}-epoch run, not {cfg.epochs}; rerun with --force",
                                path=ckpt_path)
        start_epoch, step, history = _restore(data, model, opt, g, ckpt_path)
        model.to(device)
        log.info("resuming student training after epoch %d/%d", start_epoch, cfg.epochs)

    points_seen, train_seconds = 0, 0.0
    progress_bar = _progress(progress)
    with progress_bar as bar:
        task = bar.add_task("distil", total=total_steps, completed=step, loss=float("nan"))
        for epoch in range(start_epoch, cfg.epochs):
            model.train()
            t0, losses = time.perf_counter(), []
            for _ in range(steps_per_epoch):
                lr = _lr_at(step, total_steps, cfg.lr)
                for group in opt.param_groups:
                    group["lr"] = lr
                loss, n_points = _train_step(model, opt, xyz, base, target, covered, weights, blocks, spec, cfg, g, device)
                losses.append(loss)
                points_seen += n_points
                step += 1
                bar.update(task, advance=1, loss=loss, description=f"distil epoch {epoch + 1}/{cfg.epochs}")
            train_seconds += time.perf_counter() - t0
            history["loss"].append(float(np.mean(losses)))
            history["seconds"].append(time.perf_counter() - t0)
            if ckpt_path is not None:
                save_checkpoint(ckpt_path, model, opt, epoch=epoch + 1, step=step, generator=g, history=history,
                                identity=identity)
            if on_epoch_end is not None:
                on_epoch_end(epoch + 1, history)
    model.eval().cpu()
    info: dict[str, Any] = dict(history)
    info.update(spec=spec.to_json(), steps=step, steps_per_epoch=steps_per_epoch, covered_points=int(covered.sum()),
                points_per_second=points_seen / train_seconds if train_seconds > 0 else None)
    return model, info


def _lr_at(step: int, total: int, base: float) -> float:
    warm = max(1, int(0.05 * total))
    if step < warm:
        return base * (step + 1) / warm
    t = (step - warm) / max(1, total - warm)
    return base * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t)))


def _train_step(model, opt, xyz, base, target, covered, weights, blocks: _Blocks, spec: StudentSpec,
                cfg: DistillConfig, g: torch.Generator, device: torch.device) -> tuple[float, int]:
    crops, picked = [], []
    half = cfg.crop_voxels * spec.voxel_size / 2
    for _ in range(cfg.crops_per_step):
        # centre: a point of a region (xy block) or of a fused-feature cluster, each chosen uniformly (50/50)
        if float(torch.rand(1, generator=g)) < 0.5 or not blocks.clusters:
            cands = blocks.covered_in_block[int(torch.randint(len(blocks.covered_blocks), (1,), generator=g))]
        else:
            cands = blocks.clusters[int(torch.randint(len(blocks.clusters), (1,), generator=g))]
        centre = xyz[cands[int(torch.randint(len(cands), (1,), generator=g))], :2]
        idx = blocks.points_near(centre, half)
        inside = ((xyz[idx, :2] - centre).abs() <= half).all(dim=1)
        idx = idx[inside]
        if idx.numel() > cfg.crop_points:
            idx = idx[torch.randperm(idx.numel(), generator=g)[: cfg.crop_points]]
        crops.append((_augment(xyz[idx], centre, spec.voxel_size, g, cfg.augment), base[idx]))
        picked.append(idx)
    coords, feats, p2vs = voxel_inputs(crops, spec.voxel_size)
    out = model(SparseTensor(coords.to(device), feats.to(device)))
    point_rows = torch.cat(p2vs)
    idx = torch.cat(picked)
    use = covered[idx]
    rows, idx = point_rows[use].to(device), idx[use]
    w = weights[idx].to(device)
    cos = (out[rows] * target[idx].to(device)).sum(dim=1)
    loss = (w * (1 - cos)).sum() / w.sum().clamp_min(1e-8)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss.detach()), int(point_rows.numel())


def _progress(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("loss {task.fields[loss]:.4f}"), TimeRemainingColumn(), disable=not enabled, transient=True)


# ---- prediction --------------------------------------------------------------------------------------------
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
) -> Tensor:
    """Student features [N, D] (unit vectors) for every point; scenes above ``max_points`` run in xy tiles
    with a context margin of the network's receptive field, keeping each tile's core points.
    ``threads``: torch CPU threads meanwhile (0: leave as is; see DistillConfig.cpu_threads)."""
    with cpu_threads(threads):
        return _predict(model, positions, rgb, intensity, max_points=max_points, device=device, dtype=dtype,
                        progress=progress)


@torch.no_grad()
def _predict(model, positions, rgb, intensity, *, max_points: int, device: str, dtype: torch.dtype,
             progress: bool) -> Tensor:
    spec: StudentSpec = model.spec
    xyz = torch.as_tensor(positions).to(torch.float32)
    if not torch.isfinite(xyz).all():
        raise SceneKDError("positions contain NaN or Inf")
    base = scene_point_features(xyz, rgb, intensity, spec)
    dev = resolve_device(device)
    model = model.to(dev).eval()
    n = xyz.shape[0]
    out = torch.empty(n, spec.out_dim, dtype=dtype)
    if n <= max_points:
        tiles = [(torch.arange(n), torch.arange(n))]
    else:
        tiles = list(_tiles(xyz, max_points, spec))
    for core, ctx in _track(tiles, progress):
        coords, feats, (p2v,) = voxel_inputs([(xyz[ctx], base[ctx])], spec.voxel_size)
        vox = model(SparseTensor(coords.to(dev), feats.to(dev)))
        pos_in_ctx = torch.searchsorted(ctx, core) if ctx is not core else torch.arange(core.numel())
        out[core] = vox[p2v[pos_in_ctx].to(dev)].to("cpu", dtype)
    model.cpu()
    return out


def _tiles(xyz: Tensor, max_points: int, spec: StudentSpec):
    """(core indices, context indices) per xy tile; both sorted; context = core tile + margin."""
    margin = 6 * spec.voxel_size * 2 ** (len(spec.channels) - 1)  # ~ receptive field radius
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


def _track(items: list, enabled: bool):
    if not enabled or len(items) < 2:
        yield from items
        return
    from rich.progress import track

    yield from track(items, description="student tiles", transient=True)


# ---- saving / loading / applying ---------------------------------------------------------------------------
def save_student(out_dir: str | Path, model: torch.nn.Module, *, config: DistillConfig | None = None,
                 extra: dict[str, Any] | None = None) -> None:
    """``student.safetensors`` (weights + buffers) and ``student.json`` (architecture, spec, config, dims)."""
    out_dir = Path(out_dir)
    spec: StudentSpec = model.spec
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    save_tensors(out_dir / "student.safetensors", state)
    write_json(out_dir / "student.json", {
        "format_version": STUDENT_FORMAT, "architecture": "minkunet-sparseconv", "in_dim": spec.in_dim,
        "dim": spec.out_dim, "voxel_size": spec.voxel_size, "spec": spec.to_json(), "config": config, **(extra or {}),
    })


def load_student(student_dir: str | Path) -> StudentUNet:
    """Rebuild a student saved by :func:`save_student` (torch backend, eval mode, CPU)."""
    student_dir = Path(student_dir)
    if not student_dir.is_dir():
        raise SceneKDError("student run folder not found", path=student_dir)
    meta = read_json(student_dir / "student.json")
    if meta.get("format_version") != STUDENT_FORMAT:
        raise RunStateError(f"student format version {meta.get('format_version')} is not {STUDENT_FORMAT}", path=student_dir)
    spec = StudentSpec.from_json(meta["spec"])
    state, _ = load_tensors(student_dir / "student.safetensors")
    model = StudentUNet(spec)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise RunStateError(f"student weights do not match student.json ({str(e).splitlines()[0]})", path=student_dir) from None
    return model.eval()


def apply_student(student_dir: str | Path, scene: Any, *, max_points: int = 1_500_000, progress: bool = False) -> Tensor:
    """Run the student trained in ``student_dir`` (a run folder) on a new scene -> features [N, D] float32.

    ``scene``: a PointCloud, GaussianSplats (means + SH DC colour) or a scene file path.
    """
    if isinstance(scene, (str, Path)):
        from scene_kd.scene.io import load_scene

        scene = load_scene(scene)
    model = load_student(student_dir)
    if scene.kind == "gaussians":
        rgb = np.clip((0.5 + 0.28209479177387814 * scene.sh[:, 0]) * 255, 0, 255).astype(np.uint8)
        xyz, intensity = scene.means, None
    else:
        xyz, rgb, intensity = scene.xyz, scene.rgb, scene.intensity
    if len(xyz) == 0:
        raise SceneKDError("scene has no points")
    return predict(model, xyz, rgb, intensity, max_points=max_points, progress=progress)
