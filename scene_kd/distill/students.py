"""The students (registered in scene_kd/distill/config.py ``STUDENTS``): what each one trains on, what it
writes and how. ``sparseconv`` = the sparse-conv point student (RUN/student.safetensors + student.json);
``gaussian-field`` = per-Gaussian features trained through the rasterizer (RUN/gaussian_field.safetensors).
Both add ``features["distilled"]`` to the run's field. The distill stage (scene_kd/distill/stage.py) asks the
registry for the student by name and never branches on it."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from scene_kd.distill.config import DistillConfig
from scene_kd.distill.contract import attribute_agreement, training_contract, usable_intensity, usable_rgb
from scene_kd.distill.gaussian_field import (
    MaskTargets,
    downsample_view,
    save_gaussian_field,
    train_gaussian_field,
)
from scene_kd.distill.predict import world_phase
from scene_kd.distill.train import predict, save_student, train_student
from scene_kd.errors import RunStateError, SceneKDError
from scene_kd.feature_store import LowRank, MaskMixture, principal_basis
from scene_kd.lift.stage import _npz_array, load_features
from scene_kd.render.types import load_cameras
from scene_kd.rundir import RunDir
from scene_kd.runio import load_tensors
from scene_kd.scene.runscene import load_run_scene

CHECKPOINT = "student.ckpt.pt"
log = logging.getLogger(__name__)


class Student(Protocol):
    """A registered student. ``scene_kinds``: the field kinds it trains on ("points", "gaussians")."""

    name: str
    scene_kinds: tuple[str, ...]

    def inputs(self, run: RunDir) -> list[Path]:
        """Run files it reads besides the fused field and the scene tensors (they key the stage)."""
        ...

    def outputs(self, run: RunDir) -> list[Path]:
        """Run files it writes (the field's included)."""
        ...

    def train(self, run_dir: Path, field: Any, cfg: DistillConfig, key: str, *, resume: bool,
              progress: bool) -> dict[str, Any]:
        """Train on ``field``'s fused features, save the student, add ``features["distilled"]`` to the field and
        save it; the stage summary (``student``, ``config_hash``, ``points``, ``final_loss``, ...)."""
        ...

    def describe(self, summary: Mapping[str, Any], seconds: float) -> str:
        """One line for the terminal about a ``train`` summary that took ``seconds``."""
        ...


class SparseConvStudent:
    """The sparse-conv point student (on Gaussian scenes it runs on the Gaussians' centres)."""

    name = "sparseconv"
    scene_kinds = ("points", "gaussians")

    def inputs(self, run: RunDir) -> list[Path]:
        return []

    def outputs(self, run: RunDir) -> list[Path]:
        return [run.student, run.student_json, run.field_tensors, run.field_json]

    def train(self, run_dir: Path, field: Any, cfg: DistillConfig, key: str, *, resume: bool,
              progress: bool) -> dict[str, Any]:
        return _distill_points(run_dir, field, cfg, key, resume=resume, progress=progress)

    def describe(self, summary: Mapping[str, Any], seconds: float) -> str:
        return (f"distilled {summary['points']:,} points ({summary['covered_points']:,} covered), "
                f"voxel {summary['voxel_size']}, {summary['epochs']} epochs, loss {summary['final_loss']:.4f}, "
                f"{seconds:.1f} s")


class GaussianFieldStudent:
    """Feature 3DGS: low-dim per-Gaussian features + a 1x1 decoder, trained by rendering them into the run's
    views against the teacher's masks; Gaussian-splat scenes only. Reads views, masks and features too."""

    name = "gaussian-field"
    scene_kinds = ("gaussians",)

    def inputs(self, run: RunDir) -> list[Path]:
        return [run.views, run.masks, run.features]

    def outputs(self, run: RunDir) -> list[Path]:
        return [run.gaussian_field, run.field_tensors, run.field_json]

    def train(self, run_dir: Path, field: Any, cfg: DistillConfig, key: str, *, resume: bool,
              progress: bool) -> dict[str, Any]:
        return _distill_gaussian_field(run_dir, field, cfg, key, progress)

    def describe(self, summary: Mapping[str, Any], seconds: float) -> str:
        return (f"Gaussian feature field for {summary['points']:,} Gaussians "
                f"({summary['covered_points']:,} covered), {summary['steps']} steps on {summary['backend']}, "
                f"loss {summary['first_loss']:.4f} -> {summary['final_loss']:.4f}, {seconds:.1f} s")


def _attribute_agreement(model: Any, field: Any, rgb: Any, intensity: Any, basis: Any, cfg: DistillConfig,
                         max_points: int = 200_000) -> tuple[dict[str, float], str]:
    """(:func:`scene_kd.distill.contract.attribute_agreement`, its kind) of a trained student on (a random
    ``max_points`` of) its training tile: labels over the training scene's vocabulary through the field's text
    encoder when the scene has label names and the encoder loads ("label"), else feature clusters ("cluster")."""
    import torch

    classes, kind = None, "cluster"
    if field.label_names:
        try:
            from scene_kd.teachers.text import load_text_encoder

            enc = load_text_encoder(field.text_encoder)
            names = [field.label_names[k] for k in sorted(field.label_names)]
            classes = (enc.encode_class_names(names) if hasattr(enc, "encode_class_names")
                       else enc.encode_text(names))
            kind = "label"
        except SceneKDError as e:  # e.g. open_clip weights not at hand: the teacher-independent figure
            log.info("attribute agreement over feature clusters (%s)", e)
    xyz = np.asarray(field.positions)
    sel = np.sort(np.random.default_rng(0).choice(len(xyz), min(len(xyz), max_points), replace=False))
    pick = lambda a: None if a is None else np.asarray(a)[sel]  # noqa: E731
    pts, dec = xyz[sel], torch.as_tensor(basis, dtype=torch.float32)

    def features_of(c: Any, i: Any) -> Any:
        return predict(model, pts, c, i, device=cfg.device, threads=cfg.cpu_threads).float() @ dec

    return attribute_agreement(features_of, pick(rgb), pick(intensity), classes=classes), kind


def _distill_points(run_dir: Path, field: Any, cfg: DistillConfig, chash: str, *, resume: bool,
                    progress: bool) -> dict[str, Any]:
    """Train the point student on the fused features' coordinates in a rank-``cfg.feature_rank`` principal
    basis (scene_kd/feature_store.py), predict every point, store the distilled features as low-rank codes."""
    import torch

    kind = "sparseconv"
    t0 = time.perf_counter()
    rgb, intensity = usable_rgb(field.rgb), usable_intensity(_run_scene_intensity(run_dir, len(field)))
    fused = field.features["fused"]
    basis = student_basis(fused, cfg.feature_rank)
    model, history = train_student(
        field.positions, fused.project(basis).half(), field.coverage, rgb, cfg, intensity=intensity,
        checkpoint=run_dir / CHECKPOINT, resume=resume, progress=progress, consume_fused=True,
    )
    # on the world-anchored grids, as apply_student labels other tiles (a tile and its own run then agree)
    anchored = (np.asarray(field.positions, dtype=np.float64) + world_phase(field.origin, model.spec)).astype(np.float32)
    codes = predict(model, anchored, rgb, intensity, max_points=cfg.predict_points, device=cfg.device,
                    progress=progress, threads=cfg.cpu_threads, dtype=torch.float16)
    if codes.shape != (len(field), basis.shape[0]):
        raise RunStateError(f"student predicted {tuple(codes.shape)}, field needs ({len(field)}, {basis.shape[0]})")
    seconds = time.perf_counter() - t0
    summary = {
        "student": kind, "config_hash": chash, "points": len(field),
        "covered_points": history["covered_points"],
        "voxel_size": history["spec"]["voxel_size"], "epochs": len(history["loss"]),
        "final_loss": history["loss"][-1] if history["loss"] else None, "steps": history["steps"],
        "points_per_second": history["points_per_second"], "train_seconds": round(seconds, 3),
        "feature_rank": int(basis.shape[0]),
    }
    agreement, agreement_kind = _attribute_agreement(model, field, rgb, intensity, basis, cfg)
    contract = training_contract(
        np.asarray(field.positions), rgb, intensity, model.spec, cfg, units=field.units,
        vocabulary=[field.label_names[k] for k in sorted(field.label_names)], teacher=field.teacher,
        text_encoder=field.text_encoder, agreement=agreement, agreement_kind=agreement_kind)
    save_student(run_dir, model, config=cfg, decoder=basis, extra={
        "input": contract,
        "teacher": field.teacher, "text_encoder": field.text_encoder, "field_config_hash": field.config_hash,
        "distill_config_hash": chash, "history": {k: v for k, v in history.items() if k != "spec"},
    })
    field.features["distilled"] = LowRank(codes, basis)
    field.extra_meta["distill_config_hash"] = chash
    field.save(run_dir)
    return summary


def student_basis(fused: Any, rank: int, sample: int = 200_000) -> Any:
    """[r, D] orthonormal basis the point student predicts in: the top-``rank`` principal directions of the
    mask embeddings (a mask mixture's bank) or of up to ``sample`` evenly spaced fused rows (dense stores);
    the identity when ``rank >= D``."""
    import torch

    if rank <= 0:
        raise RunStateError(f"distill.feature_rank must be positive, got {rank}")
    if rank >= fused.dim:
        return torch.eye(fused.dim)  # what principal_basis gives at full rank, without reading any rows
    if isinstance(fused, MaskMixture):
        return principal_basis(fused.bank, rank)
    pick = torch.linspace(0, fused.n - 1, min(fused.n, sample)).long()
    return principal_basis(fused.rows(pick), rank)


def _distill_gaussian_field(run_dir: Path, field: Any, cfg: DistillConfig, chash: str,
                            progress: bool) -> dict[str, Any]:
    """Train the Gaussian feature field on the run's views and masks; write gaussian_field.safetensors and the
    field's distilled features (every Gaussian's decoded feature)."""
    import torch

    t0 = time.perf_counter()
    gcfg = cfg.gaussian_field
    splats = load_run_scene(run_dir)
    if splats.kind != "gaussians" or len(splats) != len(field):
        raise RunStateError(f"the run's scene ({splats.kind}, {len(splats):,}) does not match its field "
                            f"({field.kind}, {len(field):,}); rerun the pipeline", path=run_dir)
    embeddings, _ = load_features(run_dir)
    if embeddings.shape[1] != field.dim:
        raise RunStateError(f"features.safetensors is {embeddings.shape[1]}-dim, the field {field.dim}-dim; "
                            "rerun `scene-kd fuse`", path=run_dir)
    shared = torch.from_numpy(embeddings)
    shared = shared / shared.norm(dim=1, keepdim=True).clamp_min(1e-8)  # unit rows, once for all views
    cameras, targets = [], []
    for i, cam in enumerate(load_cameras(run_dir)):
        small_cam, ids = downsample_view(cam, _npz_array(run_dir / "masks" / f"{i:04d}.npz", "mask_ids", "features"),
                                         gcfg.downsample)
        cameras.append(small_cam)
        targets.append(MaskTargets(ids, shared))
    if not cameras:
        raise RunStateError("views.json lists no cameras; rerun `scene-kd render`", path=run_dir)
    model, history = train_gaussian_field(splats, cameras, targets, None, gcfg,
                                          device="cpu" if cfg.device == "cpu" else "auto", progress=progress,
                                          init_features=field.dense("fused"))
    losses = [x for x in history["loss"] if x == x]  # without the NaNs of steps with no supervised pixel
    if not losses:
        raise RunStateError("no view had a pixel with a mask and opaque Gaussians; nothing to train on", path=run_dir)
    distilled = model.gaussian_features()
    seconds = time.perf_counter() - t0
    save_gaussian_field(run_dir / "gaussian_field.safetensors", model, {
        "teacher": field.teacher, "text_encoder": field.text_encoder, "field_config_hash": field.config_hash,
        "distill_config_hash": chash, "config": dataclasses.asdict(gcfg), "backend": history["backend"],
        "final_loss": losses[-1], "seconds": round(seconds, 3),
    })
    field.features["distilled"] = distilled.to(torch.float16)
    field.extra_meta["distill_config_hash"] = chash
    field.save(run_dir)
    tail = losses[-min(len(losses), 20):]
    summary = {
        "student": "gaussian-field", "config_hash": chash, "points": len(field),
        "covered_points": int((np.asarray(field.coverage) > 0).sum()), "voxel_size": None,
        "epochs": gcfg.iterations, "steps": len(history["loss"]), "final_loss": float(np.mean(tail)),
        "first_loss": float(np.mean(losses[: min(len(losses), 20)])), "backend": history["backend"],
        "train_seconds": round(seconds, 3),
    }
    return summary


def _run_scene_intensity(run_dir: Path, n: int) -> np.ndarray | None:
    """Intensity from RUN/scene.safetensors when the run's scene has it for exactly these points."""
    if not (run_dir / "scene.safetensors").exists():
        return None

    try:
        tensors, _ = load_tensors(run_dir / "scene.safetensors")
    except RunStateError:
        return None
    inten = tensors.get("intensity")
    if inten is None or inten.shape[0] != n:
        return None
    return inten.numpy()
