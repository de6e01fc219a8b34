"""`scene-kd features RUN`: masks + one embedding per mask for every render of a run."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

import tyro

from scene_kd.commands._common import emit, registered_names
from scene_kd.teachers.config import ClipSamConfig, TeacherConfig

SECTIONS = ("teacher",)
RUN_CONFIG_BASE = "run"


@registered_names
@dataclass
class Args:
    """Run a 2D teacher over a run's renders: writes RUN/masks/ and RUN/features.safetensors.

    The teacher is the run's (RUN/config.yaml), else clip-sam; --teacher NAME ({teachers}) or --config PRESET
    choose another. Shortcuts: --label-flip F, --weights PATH.
    """

    run: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="RUN")]
    """Run folder (made by `scene-kd render`)."""
    config: str | None = None
    """Preset (a YAML path or a shipped name) whose `teacher:` section replaces the run's."""
    preview: bool = False
    """Also write RUN/plots/masks.png (mask outlines coloured by a PCA of the embeddings)."""
    force: bool = False
    """Recompute even when the output is current."""
    json: bool = False
    """Print one JSON object."""
    teacher: TeacherConfig = field(default_factory=ClipSamConfig)


def main(args: Args) -> int:
    from scene_kd.commands._common import oracle_line, pipeline_config
    from scene_kd.config import save_config
    from scene_kd.errors import RunStateError
    from scene_kd.pipeline import features_stage
    from scene_kd.rundir import RunDir
    from scene_kd.teachers.stage import check_teacher_requirements

    if not RunDir(args.run).views.is_file():
        raise RunStateError("missing views.json; run `scene-kd render` first", path=args.run)
    cfg = pipeline_config(args, SECTIONS, args.run)
    check_teacher_requirements(cfg.teacher, has_labels=_run_has_labels(args.run))
    oracle_line(cfg.teacher.name)
    save_config(args.run, cfg)
    out = features_stage(args.run, cfg.teacher, force=args.force, preview=args.preview)
    human = None
    if not args.json:
        state = "up to date" if out.skipped else f"{out.seconds} s, {out['cached_views']} views from cache"
        human = (f"{args.run}: {out['masks']} masks over {out['views']} views, {out['levels']} level(s), "
                 f"D={out['dim']} ({out['teacher']}, text encoder {out['text_encoder']}); {state}")
        if args.preview:
            human += f"\n  preview: {args.run}/plots/masks.png"
    emit(dict(out), args.json, human)
    return 0


def _run_has_labels(run: str) -> bool:
    """Whether the run's copy of the scene has evaluable ground-truth classes (True when it cannot tell: the
    stage then reports what is missing)."""
    from scene_kd.errors import RunStateError
    from scene_kd.scene.runscene import load_run_scene
    from scene_kd.teachers.stage import scene_has_classes

    try:
        return scene_has_classes(load_run_scene(run))
    except RunStateError:
        return True
