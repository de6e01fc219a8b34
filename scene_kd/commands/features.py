"""`scene-kd features RUN --teacher ...`: masks + one embedding per mask for every render of a run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

import tyro

from scene_kd.commands._common import emit


@dataclass
class Args:
    """Run a 2D teacher over a run's renders: writes RUN/masks/ and RUN/features.safetensors."""

    run: Annotated[str, tyro.conf.Positional]
    """Run folder (made by `scene-kd render`)."""
    teacher: Literal["clip-sam", "clip-grid", "oracle-labels"] = "oracle-labels"
    """Teacher: clip-sam (SAM masks + CLIP), clip-grid (multi-scale CLIP crops, no SAM), oracle-labels (ground truth)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    weights: str | None = None
    """Weights file or folder, `clip=PATH,sam=PATH`, or `random` (tests only); default $SCENE_KD_CACHE then the hub."""
    label_flip: float = 0.0
    """oracle-labels: fraction of masks given a wrong class."""
    embed_noise: float = 0.0
    """oracle-labels: relative Gaussian noise on mask embeddings."""
    config: str | None = None
    """YAML preset (path or name in configs/) whose `teacher:` section sets the other options."""
    batch_size: int | None = None
    """Views per teacher batch (default from config)."""
    preview: bool = False
    """Also write RUN/plots/masks.png (mask outlines coloured by a PCA of the embeddings)."""
    force: bool = False
    """Recompute even when the output is current."""
    json: bool = False
    """Print one JSON object."""


def main(args: Args) -> int:
    import dataclasses

    from scene_kd.config import load_config
    from scene_kd.teachers.stage import features_stage

    cfg = load_config(args.config).teacher
    changes = {"name": args.teacher, "device": args.device, "label_flip": args.label_flip,
               "embed_noise": args.embed_noise}
    if args.weights is not None:
        changes["weights"] = args.weights
    if args.batch_size is not None:
        changes["batch_size"] = args.batch_size
    cfg = dataclasses.replace(cfg, **changes)
    out = features_stage(args.run, cfg, force=args.force, preview=args.preview)
    human = None
    if not args.json:
        state = "up to date" if out.get("skipped") else f"{out.get('seconds')} s, {out.get('cached_views')} views from cache"
        human = (f"{args.run}: {out.get('masks')} masks over {out.get('views')} views, {out.get('levels')} level(s), "
                 f"D={out.get('dim')} ({out.get('teacher')}, text encoder {out.get('text_encoder')}); {state}")
        if args.preview:
            human += f"\n  preview: {args.run}/plots/masks.png"
    emit(out, args.json, human)
    return 0
