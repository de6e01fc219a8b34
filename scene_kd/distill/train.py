"""Distil fused per-point features into a sparse-conv student (training; prediction is in
:mod:`scene_kd.distill.predict`).

Loss: 1 - cosine(student(point), fused(point)) on covered training points, weighted and sampled as
:mod:`scene_kd.distill.sampling` describes; crops bound memory on any scene size. A seeded held-out set of
xy cells measures the same loss each epoch; training stops after ``patience`` epochs without improvement
and keeps the best epoch's weights (``epochs`` is the most it runs).

Steps (each a function with a typed result): :func:`_prepare` (targets, weights, blocks, held-out set ->
:class:`TrainingData`) -> :func:`_start` (model, optimiser, or the checkpoint's state -> :class:`TrainingState`)
-> per epoch :func:`_train_epoch` (optimiser steps) and :func:`_end_epoch` (held-out loss, best weights,
checkpoint) -> :func:`_result`.

Checkpoint: ``RUN/student.ckpt.pt`` after every epoch (:mod:`scene_kd.distill.checkpoint`); ``resume=True``
continues after its last epoch and gives the same weights as an uninterrupted run (the sampler's RNG state and
the best weights so far are in the checkpoint).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from scene_kd.distill.checkpoint import best_weights, decode_json, load_checkpoint, restore, save_checkpoint
from scene_kd.distill.config import DistillConfig
from scene_kd.distill.model import auto_voxel_size, build_model, cpu_threads, make_spec, resolve_device
from scene_kd.distill.predict import apply_student, load_student, predict, save_student
from scene_kd.distill.sampling import (
    Blocks,
    Holdout,
    RowSubset,
    balance_weights,
    early_stopping,
    holdout_loss,
    prepare_targets,
    sample_crops,
    split_holdout,
)
from scene_kd.distill.sparseconv import SparseTensor
from scene_kd.distill.unet import StudentSpec, scene_point_features, voxel_inputs
from scene_kd.errors import RunStateError, SceneKDError
from scene_kd.progress import progress_bar

# the public names of the distill package that callers import from here
__all__ = ["train_student", "predict", "save_student", "load_student", "apply_student", "auto_voxel_size",
           "cpu_threads"]

log = logging.getLogger(__name__)


@dataclass
class TrainingData:
    """What training reads: positions [N, 3], student input features [N, C], unit targets [N, D], the covered
    points the loss uses [N] bool (held-out ones excluded), loss weights [N], crop blocks, the held-out set."""

    xyz: Tensor
    base: Tensor
    target: Tensor
    train_covered: Tensor
    weights: Tensor
    blocks: Blocks
    spec: StudentSpec
    holdout: Holdout | None
    covered_points: int
    steps_per_epoch: int
    generator: torch.Generator
    """The crop sampler's generator (seeded; it has drawn the balance clusters)."""


@dataclass
class TrainingState:
    """The model and everything that changes while training (what a checkpoint holds)."""

    model: torch.nn.Module
    opt: torch.optim.Optimizer
    generator: torch.Generator
    identity: dict[str, Any]
    epoch: int = 0
    step: int = 0
    history: dict[str, list[float]] = field(default_factory=lambda: {"loss": [], "holdout_loss": [], "seconds": []})
    best: dict[str, Tensor] | None = None
    stopped: bool = False


def train_student(
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
    consume_fused: bool = False,
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Train a student on one scene.

    positions [N, 3] float (local coordinates), fused [N, D] teacher features (any scale; zero rows = none),
    coverage [N] (views per point; 0 = uncovered) or None, rgb [N, 3] uint8 or None, intensity [N] or None.
    ``checkpoint``: path written after every epoch; ``resume``: continue from it; ``progress``: rich bar;
    ``on_epoch_end(epoch, history)``: called after each epoch's checkpoint. ``consume_fused``: ``fused`` may be
    normalised in place (the caller gives up its copy; saves one [N, D] on big scenes).
    Returns (model in eval mode on the CPU, with the best held-out epoch's weights when there is a held-out
    set; info) where info has per-epoch "train_loss" (also as "loss"), "holdout_loss" (empty without a
    held-out set) and "seconds", "stopped_early", "best_epoch" (1-based), "spec" (StudentSpec JSON), "steps",
    "steps_per_epoch", "points_per_second", "covered_points", "holdout_points".
    Raises SceneKDError for bad positions, RunStateError for unusable features or a mismatched checkpoint.
    """
    with cpu_threads(cfg.cpu_threads):
        data = _prepare(positions, fused, coverage, rgb, intensity, cfg, consume_fused)
        device = resolve_device(cfg.device)
        state = _start(data, cfg, device, Path(checkpoint) if checkpoint else None, resume)
        points_seen, train_seconds = 0, 0.0
        total_steps = data.steps_per_epoch * cfg.epochs
        with progress_bar(progress, columns=["loss {task.fields[loss]:.4f}"]) as bar:
            task = bar.add_task("distil", total=total_steps, completed=state.step, loss=float("nan"))
            while state.epoch < cfg.epochs and not state.stopped:
                t0 = time.perf_counter()
                points_seen += _train_epoch(state, data, cfg, device, lambda loss: bar.update(
                    task, advance=1, loss=loss, description=f"distil epoch {state.epoch + 1}/{cfg.epochs}"))
                train_seconds += time.perf_counter() - t0
                _end_epoch(state, data, cfg, device, time.perf_counter() - t0, Path(checkpoint) if checkpoint else None)
                if on_epoch_end is not None:
                    on_epoch_end(state.epoch, state.history)
        return _result(state, data, cfg, points_seen, train_seconds)


# ---- the steps ---------------------------------------------------------------------------------------------
def _prepare(positions, fused, coverage, rgb, intensity, cfg: DistillConfig, consume_fused: bool = False) -> TrainingData:
    """Check the inputs; targets, balance weights, crop blocks and clusters, the held-out set, steps per epoch."""
    xyz = torch.as_tensor(positions).to(torch.float32)
    if xyz.ndim != 2 or xyz.shape[1] != 3 or xyz.shape[0] == 0:
        raise SceneKDError(f"positions must be a non-empty [N, 3] array, got shape {tuple(xyz.shape)}")
    if not torch.isfinite(xyz).all():
        raise SceneKDError("positions contain NaN or Inf")
    target, covered = prepare_targets(fused, coverage, inplace=consume_fused)
    if target.shape[0] != xyz.shape[0]:
        raise RunStateError(f"fused features have {target.shape[0]} rows for {xyz.shape[0]} points")
    if int(covered.sum()) == 0:
        raise RunStateError("no covered points: no view saw any point with a feature, nothing to distil from")
    spec = make_spec(xyz, target.shape[1], cfg, rgb is not None, intensity is not None)
    base = scene_point_features(xyz, rgb, intensity, spec)

    g = torch.Generator().manual_seed(cfg.seed)
    weights = torch.zeros(xyz.shape[0])
    weights[covered], cluster_of_covered = balance_weights(RowSubset(target, torch.nonzero(covered).flatten()), cfg, g)
    crop = cfg.crop_voxels * spec.voxel_size
    holdout = split_holdout(xyz, covered, Blocks.build(xyz, covered, crop), spec, cfg)
    train_covered = covered & ~holdout.held if holdout is not None else covered
    covered_idx = torch.nonzero(covered).flatten()
    in_train = train_covered[covered_idx]
    blocks = Blocks.build(xyz, train_covered, crop)
    blocks.clusters = [c for c in (covered_idx[(cluster_of_covered == k) & in_train]
                                   for k in torch.unique(cluster_of_covered).tolist()) if c.numel()]
    steps = cfg.steps_per_epoch or max(cfg.min_steps_per_epoch, 1, math.ceil(len(blocks.covered_blocks) / cfg.crops_per_step))
    return TrainingData(xyz, base, target, train_covered, weights, blocks, spec, holdout, int(covered.sum()), steps, g)


def _start(data: TrainingData, cfg: DistillConfig, device: torch.device, ckpt_path: Path | None,
           resume: bool) -> TrainingState:
    """A fresh model and optimiser, or the state of the checkpoint when resuming (refused when it was made with
    other data or settings)."""
    g = data.generator
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = build_model(data.spec, cfg.backend).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    identity = {"spec": data.spec.to_json(), "steps_per_epoch": data.steps_per_epoch, "epochs": cfg.epochs,
                "lr": cfg.lr, "seed": cfg.seed, "crops_per_step": cfg.crops_per_step, "crop_points": cfg.crop_points,
                "n": int(data.xyz.shape[0]), "covered": data.covered_points,
                "holdout": [cfg.holdout_fraction, cfg.holdout_crops, cfg.patience, cfg.min_delta]}
    state = TrainingState(model, opt, g, identity)
    if not (resume and ckpt_path is not None and ckpt_path.exists()):
        return state
    saved_ckpt = load_checkpoint(ckpt_path)
    saved = decode_json(saved_ckpt["identity"]) if "identity" in saved_ckpt else None
    if saved is None or {k: v for k, v in saved.items() if k != "epochs"} != {k: v for k, v in identity.items() if k != "epochs"}:
        raise RunStateError("student checkpoint was made with other data or settings; rerun with --force", path=ckpt_path)
    if saved["epochs"] != cfg.epochs:
        raise RunStateError(f"student checkpoint belongs to a {saved['epochs']}-epoch run, not {cfg.epochs}; rerun with --force",
                            path=ckpt_path)
    state.epoch, state.step, history = restore(saved_ckpt, model, opt, g, ckpt_path)
    state.history = {"loss": [], "holdout_loss": [], "seconds": [], **history}
    state.best = best_weights(saved_ckpt)
    state.stopped = early_stopping(state.history["holdout_loss"], cfg.patience, cfg.min_delta)[1]
    model.to(device)
    log.info("resuming student training after epoch %d/%d", state.epoch, cfg.epochs)
    return state


def _train_epoch(state: TrainingState, data: TrainingData, cfg: DistillConfig, device: torch.device,
                 on_step: Callable[[float], None]) -> int:
    """One epoch of optimiser steps (cosine learning rate over all ``cfg.epochs``); appends the mean loss to
    the history and returns the number of points the steps saw."""
    state.model.train()
    losses, points = [], 0
    total_steps = data.steps_per_epoch * cfg.epochs
    for _ in range(data.steps_per_epoch):
        lr = _lr_at(state.step, total_steps, cfg.lr)
        for group in state.opt.param_groups:
            group["lr"] = lr
        loss, n_points = _train_step(state, data, cfg, device)
        losses.append(loss)
        points += n_points
        state.step += 1
        on_step(loss)
    state.history["loss"].append(float(np.mean(losses)))
    return points


def _end_epoch(state: TrainingState, data: TrainingData, cfg: DistillConfig, device: torch.device, seconds: float,
               ckpt_path: Path | None) -> None:
    """After an epoch: its held-out loss, the best weights so far, whether to stop, the checkpoint."""
    state.epoch += 1
    state.history["seconds"].append(seconds)
    if data.holdout is not None and data.holdout.crops:
        loss = holdout_loss(state.model, data.xyz, data.base, data.target, data.weights, data.holdout, data.spec,
                            cfg.crops_per_step, device)
        state.history["holdout_loss"].append(loss)
        best_epoch, state.stopped = early_stopping(state.history["holdout_loss"], cfg.patience, cfg.min_delta)
        if best_epoch == state.epoch:
            state.best = {k: v.detach().cpu().clone() for k, v in state.model.state_dict().items()}
    if ckpt_path is not None:
        save_checkpoint(ckpt_path, state.model, state.opt, epoch=state.epoch, step=state.step,
                        generator=state.generator, history=state.history, identity=state.identity, best=state.best)


def _result(state: TrainingState, data: TrainingData, cfg: DistillConfig, points_seen: int, train_seconds: float
            ) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The model with the best held-out epoch's weights (eval mode, CPU) and the training summary."""
    held = state.history["holdout_loss"]
    best_epoch = early_stopping(held, cfg.patience, cfg.min_delta)[0] if held else len(state.history["loss"])
    if held and state.best is not None:
        state.model.load_state_dict(state.best)
    model = state.model.eval().cpu()
    info: dict[str, Any] = dict(state.history)
    info.update(train_loss=list(state.history["loss"]), stopped_early=state.stopped and state.epoch < cfg.epochs,
                best_epoch=best_epoch, spec=data.spec.to_json(), steps=state.step,
                steps_per_epoch=data.steps_per_epoch, covered_points=data.covered_points,
                holdout_points=int(data.holdout.held.sum()) if data.holdout is not None else 0,
                points_per_second=points_seen / train_seconds if train_seconds > 0 else None)
    return model, info


def _lr_at(step: int, total: int, base: float) -> float:
    warm = max(1, int(0.05 * total))
    if step < warm:
        return base * (step + 1) / warm
    t = (step - warm) / max(1, total - warm)
    return base * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t)))


def _train_step(state: TrainingState, data: TrainingData, cfg: DistillConfig, device: torch.device) -> tuple[float, int]:
    """One optimiser step on ``cfg.crops_per_step`` crops; (loss, points in the crops)."""
    crops, picked = sample_crops(data.xyz, data.base, data.blocks, data.spec, cfg, state.generator)
    coords, feats, p2vs = voxel_inputs(crops, data.spec.voxel_size)
    out = state.model(SparseTensor(coords.to(device), feats.to(device)))
    point_rows = torch.cat(p2vs)
    idx = torch.cat(picked)
    use = data.train_covered[idx]
    rows, idx = point_rows[use].to(device), idx[use]
    w = data.weights[idx].to(device)
    cos = (out[rows] * data.target[idx].to(device, torch.float32)).sum(dim=1)
    loss = (w * (1 - cos)).sum() / w.sum().clamp_min(1e-8)
    state.opt.zero_grad(set_to_none=True)
    loss.backward()
    state.opt.step()
    return float(loss.detach()), int(point_rows.numel())
