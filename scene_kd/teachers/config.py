"""Teacher configs (owned by scene_kd/teachers) and the teacher registry ``TEACHERS``.

Each teacher is registered once, by name, with its config dataclass and its factory (scene_kd/registry.py: a
new teacher is one ``TEACHERS.register(...)`` call below, after its config class); ``TeacherConfig``, the tagged
union on ``name`` that tyro and the YAML loader read, is derived from it. The YAML ``teacher:`` section picks the
class by its ``name`` key and may hold only that class's fields. ``ClipSamConfig`` is the default: the real
teacher. ``OracleConfig`` (the ground-truth test teacher) is opt-in and everything made with it says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, ClassVar, Literal

import tyro

from scene_kd.registry import Registry

Device = Literal["auto", "cpu", "cuda"]


@dataclass
class _TeacherCommon:
    """Settings every teacher has."""

    seed: int = 0
    """Seed of every random choice the teacher makes."""
    batch_size: int = 16
    """Views per teacher batch."""
    teacher_input: Literal["auto", "photos", "renders", "both"] = "auto"
    """For a run from a capture (photos + cameras): photos = the teacher sees the photos (renders of the same
    cameras give depth / ids for lifting); renders = it sees those renders; both = the photo views plus the
    render preset's planned views; auto = photos when the run has them, else renders."""

    STAGE_FIELDS: ClassVar[tuple[str, ...]] = ("name", "batch_size", "teacher_input")
    """Fields the features stage uses itself; the rest are the teacher constructor's keyword arguments."""


@dataclass
class OracleConfig(_TeacherCommon):
    """``oracle-labels``: masks = connected regions of each ground-truth class in a render, embedding = the class's
    text vector. A test teacher: it needs a labelled scene, and its numbers measure lifting and distillation,
    not CLIP."""

    name: TeacherName = "oracle-labels"
    label_flip: Annotated[float, tyro.conf.arg(aliases=("--label-flip",))] = 0.0
    """Fraction of masks whose class is replaced by another class."""
    embed_noise: float = 0.0
    """Relative size of Gaussian noise added to mask embeddings before re-normalising (per-component std-dev
    embed_noise / sqrt(D), so E|noise| ~ embed_noise)."""
    oracle_dim: int = 64
    """Embedding dimension."""
    oracle_levels: Literal[1, 2] = 1
    """1 = connected regions per class and instance; 2 = also a coarse level ignoring instances."""
    oracle_realism: Literal["realistic", "perfect"] = "realistic"
    """"realistic" (sees like SAM + CLIP: small regions get no mask, boundaries off by a pixel or two,
    small masks confused more often) | "perfect" (every region at any size, exact boundaries)."""
    oracle_min_area_px: int = 64
    """Realistic: regions under this many pixels never get a mask. An 8 x 8 region is half a ViT-B/16
    patch side at CLIP's 224-px crop once upsampled ~28x (a blur) and a quarter of SAM's point-grid cell (below)."""
    oracle_min_side_px: int = 4
    """Realistic: regions whose bounding box is thinner than this (pixels) get no mask: SAM predicts
    masks at 256 x 256 for its 1024-px input, i.e. one mask cell per 2 px of a 512-px render; a structure under
    two cells wide does not survive the upsampled, thresholded mask."""
    oracle_grid_px: int = 16
    """Realistic: spacing of SAM's automatic point grid in render pixels (32 x 32 points on the
    1024-px input = one per 16 px of a 512-px render). A region of A pixels gets a mask with probability
    min(1, A / grid_px^2), the expected number of grid points inside it."""
    oracle_reliable_area_px: int = 1024
    """Realistic: masks of at least this many pixels (32 x 32) get no size-driven confusion; below it
    the extra wrong-class probability grows log-linearly from 0 to ``oracle_small_confusion`` at the minimum area."""
    oracle_small_confusion: float = 0.5
    """Realistic: extra wrong-class probability of a mask of ``oracle_min_area_px`` pixels (on top of
    ``label_flip``): CLIP's zero-shot accuracy on small crops falls towards chance."""
    oracle_boundary_px: int = 2
    """Realistic: each mask's boundary bleeds into its neighbours or erodes by up to this many pixels
    (uniform in [-b, b], seeded): SAM's 256-px mask logits upsampled to a 512-px render are off by one cell."""
    oracle_sharp_px: float = 1.0
    """Realistic: edge blur (Gaussian std-dev, pixels, measured from the view's RGB along each mask's boundary by
    the gradient-ratio method of Zhuo & Sim 2011) up to which a view counts as sharp. A mask blurred by s > this
    is judged as if the view had s / this times fewer pixels per side (the size rules above, and boundaries
    moved by up to that many times ``oracle_boundary_px``): SAM and CLIP lose on a blurred render what they would
    lose on a smaller one. A pixel-sharp step reads 0.45 px; 0 ignores blur."""


@dataclass
class _ClipCommon(_TeacherCommon):
    """Settings of the open_clip teachers."""

    device: Device = "auto"
    weights: Annotated[str | None, tyro.conf.arg(aliases=("--weights",))] = None
    """Explicit weights: a file, a folder holding the expected files, ``clip=PATH,sam=PATH``, or ``random``
    (seeded random init, for plumbing tests and benchmarks only); otherwise $SCENE_KD_CACHE, then the hub."""
    download: bool = True
    """Try the hub/URL when weights are not found locally (skipped when $SCENE_KD_OFFLINE=1 or no network)."""
    crop_batch_size: int = 64
    """Image crops per CLIP forward pass."""
    clip_model: str = "ViT-B-16"
    clip_pretrained: str = "laion2b_s34b_b88k"
    clip_image_size: int | None = None
    """Override CLIP's input size (None: the model's own, 224); small sizes only for fast tests."""
    min_mask_area: int = 16
    """Masks or regions smaller than this (pixels) are dropped."""


@dataclass
class ClipSamConfig(_ClipCommon):
    """``clip-sam``: SAM automatic masks at several granularities, one open_clip embedding per masked crop with
    multi-scale context (LangSplat / OpenUrban3D style). The default teacher."""

    name: TeacherName = "clip-sam"
    crop_padding: float = 0.1
    """Padding around a mask's box, as a fraction of its longer side."""
    context_scale: float = 2.0
    """The context crop is this many times the padded mask crop."""
    context_weight: float = 0.3
    """Weight of the context crop's embedding (masked crop: 1 - this)."""
    sam_model: str = "vit_b"
    sam_image_size: int = 1024
    """SAM's input size; pretrained weights need 1024."""
    sam_points_per_side: int = 16
    sam_points_per_batch: int = 64
    sam_levels: tuple[int, ...] = (0, 1, 2)
    """SAM multimask outputs kept as mask levels (0 = smallest part ... 2 = whole object)."""
    sam_pred_iou_thresh: float = 0.86
    sam_stability_thresh: float = 0.92
    sam_nms_iou: float = 0.7


@dataclass
class ClipGridConfig(_ClipCommon):
    """``clip-grid``: open_clip on a multi-scale grid of crops (LERF-style), pooled per region; no SAM."""

    name: TeacherName = "clip-grid"
    grid_scales: tuple[float, ...] = (0.5, 0.25, 0.125)
    """Crop sizes as fractions of the image's shorter side (LERF-style pyramid), coarse first; crops overlap by
    half; each scale's stride is also the cell size of one region level."""
    grid_depth_bin: float = 0.1
    """Regions split by relative depth slabs of this width (0.1 = 10% of depth)."""


@dataclass
class ClipDenseConfig(_ClipCommon):
    """``clip-dense``: the fast real teacher. One dense CLIP forward per view (ClearCLIP's last-block change) and
    the patch features mean-pooled over regions cut from the render's own depth, normals and colour
    (teachers/clip_dense.py, teachers/geometry_regions.py); no SAM. Same weights and text space as clip-sam."""

    name: TeacherName = "clip-dense"
    dense_image_size: int | None = None
    """Longer side of the dense forward's input (a multiple of 16); None: the view's own (512 -> 32 x 32 patches)."""
    dense_batch: int = 4
    """Views per dense forward."""
    region_jump_rel: tuple[float, ...] = (0.05, 0.02, 0.02)
    """Per mask level (coarse first): a depth jump above this fraction of the depth separates two regions."""
    region_crease_deg: tuple[float, ...] = (0.0, 40.0, 40.0)
    """Per mask level: surface normals differing by more than this angle separate two regions (0: off)."""
    region_colour: tuple[float, ...] = (0.0, 0.0, 0.15)
    """Per mask level: an RGB step larger than this (Euclidean, 0..1 units) separates two regions (0: off), so a
    road and a lawn on one plane part on the finest level."""
    region_smooth_px: float = 1.0
    """Gaussian smoothing (pixels) of the back-projected depth before normals are taken (splatted points make a
    depth image of flat discs)."""


TEACHERS: Registry[_TeacherCommon] = Registry("teacher")
"""Every teacher: name -> (config dataclass, factory(**teacher_kwargs(cfg)) -> Teacher), in listing order."""
TEACHERS.register("clip-sam", ClipSamConfig, "scene_kd.teachers.clip_sam:ClipSamTeacher",
                  summary="SAM automatic masks at several granularities, an open_clip embedding per masked crop")
TEACHERS.register("clip-dense", ClipDenseConfig, "scene_kd.teachers.clip_dense:ClipDenseTeacher",
                  summary="the fast real teacher: one dense ClearCLIP forward per view, pooled over geometry regions")
TEACHERS.register("clip-grid", ClipGridConfig, "scene_kd.teachers.clip_grid:ClipGridTeacher",
                  summary="open_clip on a multi-scale grid of crops (LERF-style), pooled per region; no SAM")
TEACHERS.register("oracle-labels", OracleConfig, "scene_kd.teachers.oracle:OracleTeacher",
                  summary="test teacher: ground-truth class regions, embedding = the class's text vector")

TeacherConfig = TEACHERS.union()
"""Any registered teacher's config (a Union of the config classes; the ``name`` field tells which)."""
TeacherLiteral = TEACHERS.literal()
"""``Literal`` of the registered teacher names (for flags that take a name)."""
TeacherName = Annotated[TeacherLiteral, tyro.conf.arg(
    name="teacher", prefix_name=False, metavar="NAME",
    help=f"The teacher: {' | '.join(TEACHERS.names())} (its options follow).")]
"""The type of every teacher config's ``name`` (resolved by name when tyro / the YAML loader read the hints, i.e.
after the registrations above); on the command line ``--teacher NAME`` (it picks the config class)."""

ORACLE = "oracle-labels"
ORACLE_NOTE = ("made with the oracle-labels test teacher: features are the scene's own ground-truth classes (with "
               "the configured noise), not CLIP; numbers measure rendering, lifting and distillation only")
"""Said on the CLI, in field.json, report.html, eval.json and exported files' metadata of oracle runs."""


def teacher_kwargs(cfg: TeacherConfig) -> dict:
    """The teacher constructor's keyword arguments: every field of ``cfg`` but those the stage uses itself."""
    import dataclasses

    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name not in cfg.STAGE_FIELDS}
