"""Where pretrained weights come from: ``--weights`` / config, then ``$SCENE_KD_CACHE``, then the hub.

Layout of the cache (default ``~/.cache/scene_kd``)::

    weights/open_clip/<model>/<pretrained>/open_clip_model.safetensors   (or open_clip_pytorch_model.bin)
    weights/sam/sam_vit_b_01ec64.pth

Files are always read safely: safetensors, or ``torch.load(weights_only=True)``.
Offline with nothing found raises :class:`MissingWeightsError` naming the model, its download link and where to put
it, on a few short lines.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scene_kd.errors import MissingWeightsError, SceneKDError
from scene_kd.runio import atomic_path, cache_dir
from scene_kd.teachers.config import TEACHERS

RANDOM = "random"
"""Explicit weights value meaning: seeded random init (plumbing tests and benchmarks only)."""

SAM_FILES = {
    "vit_b": "sam_vit_b_01ec64.pth",
    "vit_l": "sam_vit_l_0b3195.pth",
    "vit_h": "sam_vit_h_4b8939.pth",
}
SAM_URL = "https://dl.fbaipublicfiles.com/segment_anything/{}"
OPEN_CLIP_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


@dataclass(frozen=True)
class WeightsSpec:
    """One pretrained model's weights: what file we expect and where it can be fetched from."""

    kind: str  # "open_clip" | "sam"
    model: str
    tag: str  # open_clip pretrained tag; SAM: the file name
    filenames: tuple[str, ...]  # accepted file names, preferred first
    hf_repo: str | None = None
    url: str | None = None

    @property
    def label(self) -> str:
        return f"{self.kind} {self.model}" + (f" ({self.tag})" if self.kind == "open_clip" else "")

    def cache_folder(self, root: Path | None = None) -> Path:
        root = (root or cache_dir()) / "weights"
        return root / "open_clip" / self.model / self.tag if self.kind == "open_clip" else root / "sam"

    def source(self) -> str:
        if self.hf_repo:
            return f"https://huggingface.co/{self.hf_repo}/resolve/main/{self.filenames[0]}"
        return self.url or "?"


def sam_spec(model: str) -> WeightsSpec:
    if model not in SAM_FILES:
        raise SceneKDError(f"unknown SAM model {model!r}; choose one of {', '.join(SAM_FILES)}")
    name = SAM_FILES[model]
    return WeightsSpec("sam", model, name, (name,), url=SAM_URL.format(name))


def open_clip_spec(model: str, pretrained: str) -> WeightsSpec:
    import open_clip

    if model not in open_clip.list_models():
        raise SceneKDError(f"unknown open_clip model {model!r} (see open_clip.list_models())")
    cfg = open_clip.get_pretrained_cfg(model, pretrained) or {}
    if not cfg and pretrained != RANDOM:
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(model)) or "none"
        raise SceneKDError(f"open_clip {model} has no pretrained tag {pretrained!r}; known: {tags}")
    repo = (cfg.get("hf_hub") or "").strip("/") or None
    names = OPEN_CLIP_FILES if repo else (Path(cfg["url"]).name,) if cfg.get("url") else OPEN_CLIP_FILES
    return WeightsSpec("open_clip", model, pretrained, tuple(names), hf_repo=repo, url=cfg.get("url") or None)


def parse_explicit(weights: str | None, kind: str) -> str | None:
    """The part of an explicit ``--weights`` value meant for ``kind`` ("open_clip" | "sam").

    Accepts ``random``, a folder, a file, or ``clip=PATH,sam=PATH``. A single file goes to the model
    its name suggests (``sam`` in the name -> SAM, otherwise open_clip).
    """
    if not weights:
        return None
    if weights == RANDOM:
        return RANDOM
    if "=" in weights:
        parts = {}
        for item in weights.split(","):
            key, _, val = item.partition("=")
            key = {"clip": "open_clip", "open_clip": "open_clip", "sam": "sam"}.get(key.strip())
            if key is None or not val:
                raise SceneKDError(f"cannot parse --weights {weights!r}; use clip=PATH,sam=PATH")
            parts[key] = val.strip()
        return parts.get(kind)
    p = Path(weights).expanduser()
    if p.is_file():
        is_sam = "sam" in p.name.lower()
        return weights if is_sam == (kind == "sam") else None
    return weights


def _offline() -> bool:
    flags = ("SCENE_KD_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    return any(os.environ.get(f, "").lower() in ("1", "true", "yes") for f in flags)


def _reachable(url: str, timeout: float = 3.0) -> bool:
    import socket
    from urllib.parse import urlparse

    host = urlparse(url).hostname
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def find_weights(spec: WeightsSpec, explicit: str | None = None) -> Path | None:
    """The local file for ``spec`` (explicit path or folder, then the cache), or None."""
    if explicit:
        p = Path(explicit).expanduser()
        if p.is_file():
            return p
        if p.is_dir():
            for folder in (p, p / spec.model, spec.cache_folder(p)):
                for name in spec.filenames:
                    if (folder / name).is_file():
                        return folder / name
            return None
        raise MissingWeightsError(f"--weights path does not exist: {explicit}")
    for name in spec.filenames:
        f = spec.cache_folder() / name
        if f.is_file():
            return f
    return None


def resolve_weights(spec: WeightsSpec, explicit: str | None = None, *, download: bool = True) -> Path:
    """A local weights file for ``spec``; downloads into the cache when allowed and online."""
    found = find_weights(spec, explicit)
    if found is not None:
        return found
    where = spec.cache_folder() / spec.filenames[0]
    if explicit:
        raise MissingWeightsError(f"no {spec.label} weights ({' or '.join(spec.filenames)}) in {explicit}")
    if download and not _offline() and _reachable(spec.source()):
        try:
            return _download(spec, where)
        except Exception as e:  # network/hub errors of many types
            reason = f"download failed ({type(e).__name__}: {e})"
    else:
        reason = "offline" if (not download or _offline()) else "hub not reachable"
    raise missing_weights(spec, reason)


def missing_weights(spec: WeightsSpec, reason: str) -> MissingWeightsError:
    """The error for ``spec`` not found, on three short lines: what is missing (and why: offline, ...), the
    download link, the folder to put it in. ``spec`` and ``reason`` ride on the error so that
    :func:`missing_weights_summary` can merge several into one message."""
    err = MissingWeightsError(f"no weights for {spec.label} ({reason})\n"
                              f"  download  {spec.source()}\n"
                              f"  put it in {spec.cache_folder()}/  (or pass --weights PATH)")
    err.spec, err.reason = spec, reason  # type: ignore[attr-defined]
    return err


def missing_weights_summary(errors: list[MissingWeightsError], teacher: str, hint: str = "") -> MissingWeightsError:
    """One error for every missing file of ``teacher``: per file its link and folder, then where the cache is and
    ``hint`` (e.g. how to try without weights), each on its own short line."""
    lines = [f"the {teacher} teacher needs pretrained weights that are not here:"]
    kinds = []
    for e in errors:
        spec = getattr(e, "spec", None)
        if spec is None:  # an explicit --weights path that is wrong: its own message says what
            lines.append(f"  {e}")
            continue
        kinds.append("clip" if spec.kind == "open_clip" else spec.kind)
        lines += [f"  no weights for {spec.label} ({e.reason}):",  # type: ignore[attr-defined]
                  f"    download  {spec.source()}",
                  f"    put it in {spec.cache_folder()}/"]
    explicit = ",".join(f"{k}=PATH" for k in kinds) or "PATH"
    lines.append(f"  or pass --weights {explicit} (the cache folder is $SCENE_KD_CACHE, default ~/.cache/scene_kd)")
    lines += [f"  {h}" for h in hint.splitlines()]
    return MissingWeightsError("\n".join(lines))


def _download(spec: WeightsSpec, where: Path) -> Path:
    where.parent.mkdir(parents=True, exist_ok=True)
    if spec.hf_repo:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(spec.hf_repo, spec.filenames[0], local_dir=str(where.parent)))
    import torch

    with atomic_path(where) as tmp:
        torch.hub.download_url_to_file(spec.url, str(tmp), progress=True)
    return where


def load_state_dict(path: str | Path) -> dict[str, Any]:
    """Read a state dict safely (safetensors, or torch.load with weights_only=True); unwraps
    ``{"state_dict": ...}`` and ``module.`` prefixes."""
    import torch

    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path), device="cpu")
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise SceneKDError(f"cannot read weights ({type(e).__name__}: {e})", path=path) from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise SceneKDError("weights file is not a state dict of tensors", path=path)
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def known_specs() -> list[WeightsSpec]:
    """The weights the registered teachers can use (``TEACHERS``, by their config fields): each open_clip
    teacher's default model, then every SAM size when a teacher uses SAM (its default first); no duplicates."""

    clip, sam = [], []
    for entry in TEACHERS:
        cfg = entry.config()
        if hasattr(cfg, "clip_model"):
            clip.append(open_clip_spec(cfg.clip_model, cfg.clip_pretrained))
        if hasattr(cfg, "sam_model"):
            sam += [sam_spec(m) for m in (cfg.sam_model, *SAM_FILES)]
    return list(dict.fromkeys(clip + sam))  # WeightsSpec is frozen: equal specs collapse, order kept


def weights_report(explicit: str | None = None, specs: list[WeightsSpec] | None = None) -> list[dict[str, Any]]:
    """Per expected weights file: model, expected path, source URL, found path (or None), size."""
    rows = []
    for spec in specs or known_specs():
        try:
            found = find_weights(spec, parse_explicit(explicit, spec.kind) if explicit else None)
        except MissingWeightsError:
            found = None
        rows.append({
            "kind": spec.kind, "model": spec.model, "tag": spec.tag,
            "expected": str(spec.cache_folder() / spec.filenames[0]), "accepted_names": list(spec.filenames),
            "source": spec.source(), "found": str(found) if found else None,
            "size_mb": round(found.stat().st_size / 2**20, 1) if found else None,
        })
    return rows
