"""A run folder: every file's name in one place (``RunDir``) and the stage records in ``RUN/stages.json``.

Layout (DESIGN.md §1; each format is documented where it is written)::

    config.yaml            the resolved PipelineConfig of the last verb that changed the run
    stages.json            per stage: key, outputs (size, mtime, content hash), seconds, peak RSS, summary
    timings.json           per stage: seconds, peak RSS (a digest of stages.json for people and report.html)
    scene.safetensors/json the run's copy of the scene (scene_kd/scene/runscene.py)
    views.json, renders/   cameras + renders (scene_kd/render/types.py)
    photos/                a capture's photos at the render size + label images (scene_kd/render/photos.py)
    masks/, features.safetensors   the teacher's masks and embeddings (scene_kd/teachers/base.py)
    fused.safetensors      fused features (scene_kd/lift/stage.py)
    student.*, gaussian_field.safetensors   the student (scene_kd/distill/)
    field.safetensors/json the FeatureField queries read (scene_kd/field.py)
    eval.json, plots/, report.html

Stages never import the orchestrator (scene_kd/stages.py); they take a ``RunDir`` and a ``StageContext``.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scene_kd.runio import file_hash, write_json


@dataclass(frozen=True)
class RunDir:
    """The files of one run folder, named once."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    config = property(lambda self: self.root / "config.yaml")
    stages = property(lambda self: self.root / "stages.json")
    timings = property(lambda self: self.root / "timings.json")
    scene_tensors = property(lambda self: self.root / "scene.safetensors")
    scene_json = property(lambda self: self.root / "scene.json")
    views = property(lambda self: self.root / "views.json")
    renders = property(lambda self: self.root / "renders")
    photos = property(lambda self: self.root / "photos")
    masks = property(lambda self: self.root / "masks")
    features = property(lambda self: self.root / "features.safetensors")
    fused = property(lambda self: self.root / "fused.safetensors")
    student = property(lambda self: self.root / "student.safetensors")
    student_json = property(lambda self: self.root / "student.json")
    student_checkpoint = property(lambda self: self.root / "student.ckpt.pt")
    gaussian_field = property(lambda self: self.root / "gaussian_field.safetensors")
    field_tensors = property(lambda self: self.root / "field.safetensors")
    field_json = property(lambda self: self.root / "field.json")
    eval = property(lambda self: self.root / "eval.json")
    plots = property(lambda self: self.root / "plots")
    views_png = property(lambda self: self.root / "plots" / "views.png")
    masks_png = property(lambda self: self.root / "plots" / "masks.png")
    confusion_png = property(lambda self: self.root / "plots" / "confusion.png")
    report = property(lambda self: self.root / "report.html")

    def render_png(self, i: int) -> Path:
        return self.renders / f"{i:04d}.rgb.png"

    def render_npz(self, i: int) -> Path:
        return self.renders / f"{i:04d}.npz"

    def mask_npz(self, i: int) -> Path:
        return self.masks / f"{i:04d}.npz"

    def rel(self, path: Path) -> str:
        return Path(path).relative_to(self.root).as_posix()


@dataclass
class StageContext:
    """What a stage needs beside the run folder and the config: the scene (render), and per-call options."""

    scene: Any = None
    """render: a loaded scene, or a path to load."""
    capture: Any = None
    """render: a Capture (scene_kd/scene/capture.py) whose cameras and photos the run uses, or None."""
    preview: bool = False
    """render/features: also write the contact sheets."""
    resume: bool = False
    """distill: continue from the checkpoint."""
    progress: bool = True
    sources: tuple[str, ...] | None = None
    """eval: which feature sources to score (default: all the field has)."""
    on_plan: Any = None
    """render: called with the plan's counts ({"views", "megapixels", "levels"}) right after planning, before any
    render; returns the expected teacher cost as a dict ({"line", "hours", ...}; teachers/cost.py) or None. Set
    by the pipeline (the render layer knows no teacher)."""
    cost_key: str | None = None
    """render/features: the settings key of the teacher cost table's row (the config preset's name, e.g. urban;
    teachers/cost.py), None or a key the table lacks: its ``default`` row."""
    force: bool = False
    """Set by the runner: the stage was forced (it may replace outputs it would otherwise refuse to)."""
    key: str = ""
    """Set by the runner before ``compute``: the stage's key (an identity for what it writes)."""


@dataclass(frozen=True)
class StageResult(Mapping):
    """What running (or skipping) a stage gives: the same ``summary`` keys whether it ran or was current.

    Reads like a mapping of ``{**summary, "skipped", "seconds"}`` for callers that print it as JSON.
    """

    stage: str
    skipped: bool
    seconds: float
    summary: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {**self.summary, "skipped": self.skipped, "seconds": self.seconds}

    def __getitem__(self, key: str) -> Any:
        return self.as_dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.as_dict())

    def __len__(self) -> int:
        return len(self.as_dict())


# ---- output identities ------------------------------------------------------------------------------------


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    return [path] if path.is_file() else []


def stat_signature(path: Path) -> list[int] | None:
    """(files, total bytes, newest mtime ns) of a file or folder; None when it does not exist."""
    files = _files(path)
    if not files and not path.exists():
        return None
    stats = [p.stat() for p in files]
    return [len(stats), sum(s.st_size for s in stats), max((s.st_mtime_ns for s in stats), default=0)]


def content_hash(path: Path) -> str:
    """sha256 over a file's bytes, or over a folder's (relative name, file hash) pairs."""
    if path.is_file():
        return file_hash(path)
    h = hashlib.sha256()
    for p in _files(path):
        h.update(p.relative_to(path).as_posix().encode())
        h.update(file_hash(p).encode())
    return h.hexdigest()[:16]


class StageRecords:
    """``RUN/stages.json``: per stage, the key it ran with and the identity of each output it wrote."""

    def __init__(self, run: RunDir):
        self.run = run

    def read(self) -> dict[str, Any]:
        try:
            return json.loads(self.run.stages.read_text()) if self.run.stages.exists() else {}
        except json.JSONDecodeError:
            return {}  # a corrupt record only costs a rerun

    def get(self, stage: str) -> dict[str, Any] | None:
        return self.read().get(stage)

    def write(self, stage: str, key: str, outputs: list[Path], seconds: float, peak_rss_mb: float | None,
              summary: dict[str, Any]) -> None:
        data = self.read()
        data[stage] = {
            "key": key, "seconds": round(seconds, 3), "peak_rss_mb": peak_rss_mb,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "outputs": {self.run.rel(p): {"stat": stat_signature(p), "hash": content_hash(p)} for p in outputs},
            "summary": summary,
        }
        self._save(data)

    def drop(self, stages: list[str]) -> None:
        data = self.read()
        if any(s in data for s in stages):
            self._save({k: v for k, v in data.items() if k not in stages})

    def _save(self, data: dict[str, Any]) -> None:
        write_json(self.run.stages, data)
        write_json(self.run.timings, {k: {"seconds": v.get("seconds"), "peak_rss_mb": v.get("peak_rss_mb")}
                                      for k, v in data.items()})

    def identity(self, path: Path) -> str | None:
        """A content identity of ``path``: the hash its newest writer recorded while its stat still matches,
        else hashed now; None when it does not exist."""
        sig = stat_signature(path)
        if sig is None:
            return None
        rel = self.run.rel(path)
        for rec in reversed(list(self.read().values())):
            out = (rec.get("outputs") or {}).get(rel)
            if out is not None:
                if out.get("stat") == sig:
                    return out["hash"]
                break
        return content_hash(path)

    def outputs_intact(self, stage: str, later: list[str]) -> bool:
        """Every output of ``stage`` exists, unchanged since it was written unless a later stage rewrote it."""
        data = self.read()
        rec = data.get(stage) or {}
        rewritten = {rel for s in later for rel in ((data.get(s) or {}).get("outputs") or {})}
        for rel, out in (rec.get("outputs") or {}).items():
            sig = stat_signature(self.run.root / rel)
            if sig is None or (rel not in rewritten and sig != out.get("stat")):
                return False
        return True
