"""One tile of a batch: label every point, write ``DIR/<tile>.laz`` atomically, record a done-sidecar.

Everything here runs inside a worker (a Ray task or the in-process loop) and returns plain dicts, so
the same function serves both executors.

Per tile:
- ``DIR/<name>.laz``: a LAS/LAZ tile's own records, streamed through :func:`scene_kd.scene.annotate.annotate_las`
  (every dimension, header field, VLR and EVLR kept) with ``classification`` = the predicted class code and an
  extra-bytes ``confidence`` (float32); other formats (PLY, ...) get a new LAS header.
- ``DIR/.<name>.done.json``: the tile's record (points, seconds, per-label counts) and the job hash
  (labels, labeller settings, student/config identity and the input file's hash). A rerun skips a tile
  whose output exists with a sidecar of the same hash.
- ``DIR/runs/<name>/``: the per-tile pipeline run folder (pipeline mode only; one sub-folder per chunk).

Large tiles are labelled in chunks so labels agree across chunk borders. Student mode in one process: the
student's own xy tiling (``apply_student(max_points=chunk_size)``, context margin = its receptive field,
per-point inputs from the whole tile). Pipeline/custom modes, and student mode on Ray: a kd split of the XY
footprint into cells of at most ``chunk_size`` points; each chunk is labelled with a ``halo`` of surrounding
points as context and keeps the labels of its own (core) points only. A student chunk's halo is at least
:func:`student_halo` (the student's context margin plus one ground cell) and its inputs use the whole tile's
scene-wide constants, so its core points get the whole-tile run's inputs and context.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import logging
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from scene_kd.config import load_config, read_query_config
from scene_kd.distill.contract import check_tile, scene_scale
from scene_kd.distill.predict import chunk_halo, student_contract
from scene_kd.distill.train import apply_student
from scene_kd.distill.unet import StudentSpec
from scene_kd.errors import BudgetError, SceneKDError
from scene_kd.field import FeatureField, load_field_labels
from scene_kd.pipeline import run_pipeline
from scene_kd.query.export import LEGACY_USER_CODE_START, USER_CODE_START, classification_codes
from scene_kd.query.labels import Vocabulary, check_expressible, rare_members, rare_warning
from scene_kd.query.segment import apply_template
from scene_kd.query.session import QuerySession
from scene_kd.runio import atomic_path, config_hash, file_hash, read_json, to_jsonable, write_json
from scene_kd.scene.io import save_scene
from scene_kd.teachers.config import ORACLE, ORACLE_NOTE
from scene_kd.teachers.text import load_text_encoder

Labeller = Callable[[Any, str], tuple[np.ndarray, np.ndarray]]
"""(PointCloud, work tag) -> (label_index [N] int, confidence [N] float)."""

@dataclass(frozen=True)
class BatchJob:
    """What every tile of one batch does (the config hash covers all of it except ``out_dir``)."""

    out_dir: str
    labels: tuple[str, ...]
    """Output class names (group names for groups)."""
    mode: str = "pipeline"
    """pipeline (full pipeline per tile) | student (apply a trained student) | custom (``labeller``)."""
    teacher: str = "clip-sam"
    config: str | None = None
    """Pipeline preset name or YAML path (pipeline mode)."""
    student: str | None = None
    """Run folder with a trained student (student mode)."""
    labeller: str | None = None
    """``module:function`` taking (PointCloud, labels) -> (label_index, confidence) (custom mode)."""
    chunk_size: int = 0
    """Max points per chunk; 0 labels each tile whole."""
    halo: float = 0.0
    """Context margin around each chunk, scene units; 0 = a quarter of the chunk's shorter side (student mode:
    at least :func:`student_halo`, which is also its default)."""
    identity: str = ""
    """Hash of the student/config the labels come from (filled in by :func:`make_job`)."""
    members: tuple[tuple[str, ...], ...] = ()
    """Each label's group members (``--labels ground=road+grass``, :mod:`scene_kd.query.labels`); () when every
    label is a plain name."""
    accept_missing: tuple[str, ...] = ()
    """Student mode: attributes (rgb, intensity) a tile may lack even where the student's labels without them agree
    on fewer than 95 % of points (:data:`scene_kd.distill.contract.MISSING_AGREEMENT_FLOOR`); labelled with a warning."""
    max_views: int | None = None
    """Pipeline mode: the view budget per tile (render.max_views; None: the preset's). A tile whose plan exceeds it
    is refused (status "refused", the reason in its record) and the other tiles go on."""
    units: str = "auto"
    """The tiles' units (scene_kd.scene.units.InputConfig.units): auto = each tile's CRS, else an override."""

    def config_hash(self, tile_hash: str) -> str:
        d = dataclasses.asdict(self)
        d.pop("out_dir")
        d.pop("max_views")  # a budget refuses work, it never changes a tile's labels
        if not d["members"]:
            d.pop("members")  # plain names hash as before groups existed (existing outputs stay current)
        return config_hash(d, tile_hash)

    def vocabulary(self) -> Any:
        """The :class:`scene_kd.query.labels.Vocabulary` of ``labels`` and ``members``."""

        return Vocabulary(tuple(self.labels), tuple(self.members) or tuple((n,) for n in self.labels))


def tile_name(tile: str | Path) -> str:
    """``tiles/a.b.laz`` -> ``a.b`` (the name of its output and sidecar); ``x.copc.laz`` -> ``x`` (the output is
    plain LAZ, so it must not claim to be COPC)."""
    name = Path(tile).name.rsplit(".", 1)[0]
    return name[:-5] if name.lower().endswith(".copc") else name


def output_path(out_dir: str | Path, tile: str | Path) -> Path:
    return Path(out_dir) / f"{tile_name(tile)}.laz"


def job_provenance(job: BatchJob) -> dict[str, Any]:
    """What a batch output says about its labels: the teacher (pipeline), the student's teacher (student) or the
    custom labeller; the oracle test teacher's note when it is the source."""

    if job.mode == "custom":
        return {"labeller": job.labeller}
    teacher = job.teacher
    if job.mode == "student" and job.student:
        teacher = str(_student_meta(job.student).get("teacher", ""))
    return {"mode": job.mode, "teacher": teacher, **({"note": ORACLE_NOTE} if teacher == ORACLE else {})}


def sidecar_path(out_dir: str | Path, tile: str | Path) -> Path:
    return Path(out_dir) / f".{tile_name(tile)}.done.json"


def class_codes(labels: tuple[str, ...], point_format: int, members: tuple[tuple[str, ...], ...] = ()) -> list[int]:
    """LAS classification code per label (scene_kd.query.export's ASPRS/user codes for this point format; a
    group by its name, else its members' common ASPRS class)."""

    legacy = point_format < 6
    codes = classification_codes(labels, user_start=LEGACY_USER_CODE_START if legacy else USER_CODE_START,
                                 max_code=31 if legacy else 255, members=members or None)
    return [codes[name] for name in labels]


# ---- chunking ------------------------------------------------------------------------------------


@dataclass
class Chunk:
    core: np.ndarray  # [K] indices of the points this chunk labels
    context: np.ndarray  # [C] indices of core + halo points (sorted), the chunk's input
    bounds: tuple[float, float, float, float]  # core cell xmin, ymin, xmax, ymax


def plan_chunks(xy: np.ndarray, chunk_size: int, halo: float = 0.0) -> list[Chunk]:
    """Split points [N, 2] into XY cells of at most ``chunk_size`` points (recursive median split along the
    longer side); each chunk's context is its cell grown by ``halo`` (0 = a quarter of the cell's shorter side)."""
    xy = np.asarray(xy, dtype=np.float64)
    n = len(xy)
    if chunk_size <= 0 or n <= chunk_size:
        idx = np.arange(n)
        lo, hi = (xy.min(axis=0), xy.max(axis=0)) if n else (np.zeros(2), np.zeros(2))
        return [Chunk(idx, idx, (lo[0], lo[1], hi[0], hi[1]))]
    cells: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    stack = [(np.arange(n), xy.min(axis=0), xy.max(axis=0))]
    while stack:
        idx, lo, hi = stack.pop()
        if len(idx) <= chunk_size:
            cells.append((idx, lo, hi))
            continue
        axis = int(np.argmax(hi - lo))
        vals = xy[idx, axis]
        cut = float(np.median(vals))
        left = vals < cut
        if left.all() or not left.any():  # many equal coordinates: split by rank instead
            order = np.argsort(vals, kind="stable")
            left = np.zeros(len(idx), dtype=bool)
            left[order[: len(idx) // 2]] = True
            cut = float(vals[order[len(idx) // 2]])
        hi_l, lo_r = hi.copy(), lo.copy()
        hi_l[axis], lo_r[axis] = cut, cut
        stack.append((idx[~left], lo_r, hi))
        stack.append((idx[left], lo, hi_l))
    by_x = np.argsort(xy[:, 0], kind="stable")
    xs = xy[by_x, 0]
    chunks = []
    for idx, lo, hi in cells:
        h = halo if halo > 0 else 0.25 * float(min(hi - lo))
        centre, half = (lo + hi) / 2, (hi - lo) / 2 + h
        # points within the grown rectangle: the x slab from the sorted x, then a box test
        a = int(np.searchsorted(xs, centre[0] - half[0] - 1e-9, side="left"))
        b = int(np.searchsorted(xs, centre[0] + half[0] + 1e-9, side="right"))
        cand = by_x[a:b]
        inside = np.all(np.abs(xy[cand] - centre) <= half + 1e-9, axis=1)
        member = np.zeros(n, dtype=bool)  # the union with the core, sorted, without np.union1d's sort
        member[cand[inside]] = True
        member[idx] = True
        context = np.flatnonzero(member)
        chunks.append(Chunk(np.sort(idx), context, (lo[0], lo[1], hi[0], hi[1])))
    return chunks


def label_in_chunks(scene: Any, labeller: Labeller, chunk_size: int, halo: float = 0.0
                    ) -> tuple[np.ndarray, np.ndarray, int]:
    """Label every point of ``scene`` chunk by chunk: (label_index [N] int32, confidence [N] float32, chunks)."""
    n = len(scene)
    chunks = plan_chunks(scene.xyz[:, :2], chunk_size, halo)
    label_index = np.full(n, -1, dtype=np.int32)
    confidence = np.zeros(n, dtype=np.float32)
    for k, ch in enumerate(chunks):
        sub = scene if len(ch.context) == n else scene.subset(ch.context)
        idx, conf = labeller(sub, "whole" if len(chunks) == 1 else f"chunk{k:03d}")
        idx, conf = np.asarray(idx).reshape(-1), np.asarray(conf).reshape(-1)
        if len(idx) != len(ch.context) or len(conf) != len(ch.context):
            raise SceneKDError(f"labeller returned {len(idx)} labels / {len(conf)} confidences for {len(ch.context)} points")
        pos = np.searchsorted(ch.context, ch.core)
        label_index[ch.core] = idx[pos]
        confidence[ch.core] = conf[pos]
    return label_index, confidence, len(chunks)


# ---- labellers ---------------------------------------------------------------------------------


def _segment_field(field: Any, vocab: Any, run_dir: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Segment ``field`` over the job's vocabulary (names and groups) with the QueryConfig of the run folder it
    comes from (a QuerySession, as every entry point): the student's run in student mode, the tile's run in
    pipeline mode."""

    idx, conf = QuerySession.open(run_dir, query=read_query_config(run_dir), field=field).segment(vocab)
    to_np = lambda t: t.detach().cpu().numpy() if hasattr(t, "detach") else np.asarray(t)  # noqa: E731
    return to_np(idx).astype(np.int32), to_np(conf).astype(np.float32)


@functools.lru_cache(maxsize=4)
def _student_meta(student_dir: str) -> dict[str, Any]:
    return read_json(Path(student_dir) / "field.json")


@functools.lru_cache(maxsize=4)
def student_spec(student_dir: str) -> Any:
    """The :class:`scene_kd.distill.unet.StudentSpec` of a student run folder (from student.json)."""

    return StudentSpec.from_json(read_json(Path(student_dir) / "student.json")["spec"])


def check_student_vocabulary(job: BatchJob) -> None:
    """Refuse, before any tile is read, labels the student cannot express (oracle text encoder: names that are
    none of the classes it was trained on; :func:`scene_kd.query.labels.check_expressible`)."""
    from types import SimpleNamespace

    meta = _student_meta(job.student)
    encoder = load_text_encoder(meta["text_encoder"])
    if not hasattr(encoder, "encode_class_names"):
        return
    vocab = job.vocabulary()
    template = read_query_config(job.student).template
    names = {int(k): v for k, v in (meta.get("label_names") or {}).items()}
    try:  # the classes with points in the student's run, as segment and query check them (labels only)
        labels = load_field_labels(job.student)
    except SceneKDError:
        labels = None
    trained = SimpleNamespace(label_names=names, labels=labels)
    if rare := rare_members(trained, vocab):  # before any tile, once
        logging.getLogger(__name__).warning("%s", rare_warning(rare))
    check_expressible(trained, encoder, vocab, [apply_template(template, m) for m in vocab.flat])


def student_halo(job: BatchJob) -> float:
    """The halo of a student-mode chunk: ``job.halo``, at least the student's context margin plus one ground cell
    (:func:`scene_kd.distill.predict.chunk_halo`), so the chunk's core points see the whole tile's context and
    local-ground inputs."""

    return max(job.halo, chunk_halo(student_spec(job.student)))


def label_with_student(scene: Any, job: BatchJob, *, stats: Any = None, max_points: int | None = None
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Apply the trained student of ``job.student`` to a tile, then segment its features.

    The student tiles big inputs itself (``apply_student(max_points=chunk_size)``: xy tiles with a context margin
    of its receptive field, per-point inputs computed on the whole tile), so chunked and whole agree.
    ``stats`` (:class:`scene_kd.distill.unet.SceneStats`): the whole tile's constants when ``scene`` is a chunk
    (with a halo of :func:`student_halo`); ``max_points``: the student's tile size (default ``job.chunk_size``).
    """

    meta = _student_meta(job.student)
    max_points = max_points or job.chunk_size
    kwargs = {"max_points": max_points} if max_points > 0 else {}
    # low-rank codes + the student's decoder; process_tile checks the tile against the student's contract once
    feats = apply_student(job.student, scene, stats=stats, check=False, **kwargs)
    field = FeatureField(
        positions=scene.xyz, origin=scene.origin, features={"distilled": feats},
        teacher=meta["teacher"], text_encoder=meta["text_encoder"], dim=feats.dim,
        label_names={int(k): v for k, v in (meta.get("label_names") or {}).items()},  # what the student can express
    )
    del feats
    return _segment_field(field, job.vocabulary(), job.student)


def pipeline_labeller(job: BatchJob, tile: str | Path, force: bool = False) -> Labeller:
    """Run the full pipeline on the tile (or a chunk written beside its run folder), then segment."""

    overrides: dict[str, Any] = {"teacher": {"name": job.teacher}, "input": {"units": job.units}}
    if job.max_views is not None:
        overrides["render"] = {"max_views": job.max_views}
    cfg = load_config(job.config, overrides=overrides)
    runs = Path(job.out_dir) / "runs" / tile_name(tile)

    def label(scene: Any, tag: str) -> tuple[np.ndarray, np.ndarray]:
        run_dir = runs if tag == "whole" else runs / tag
        source: str | Path = tile
        if tag != "whole":
            run_dir.mkdir(parents=True, exist_ok=True)
            source = run_dir / "chunk.laz"
            save_scene(scene, source)
        run_pipeline(source, run_dir, cfg, force=force, cost_key=job.config)
        field = FeatureField.load(run_dir)
        if len(field) != len(scene):
            raise SceneKDError(f"pipeline field has {len(field)} points for {len(scene)} scene points", path=run_dir)
        return _segment_field(field, job.vocabulary(), run_dir)

    return label


def custom_labeller(job: BatchJob) -> Labeller:
    """``module:function`` (PointCloud, labels) -> (label_index, confidence); ``labels`` are the output class
    names (a group's name, not its members)."""
    if not job.labeller or ":" not in job.labeller:
        raise SceneKDError(f"labeller must be 'module:function', not {job.labeller!r}")
    mod, fn = job.labeller.split(":", 1)
    try:
        func = getattr(importlib.import_module(mod), fn)
    except (ImportError, AttributeError) as e:
        raise SceneKDError(f"cannot import labeller {job.labeller!r} ({e})") from None
    return lambda scene, tag: func(scene, job.labels)


def make_labeller(job: BatchJob, tile: str | Path, force: bool = False) -> Labeller:
    """The per-chunk labeller of the pipeline and custom modes (the student mode tiles by itself)."""
    if job.mode == "pipeline":
        return pipeline_labeller(job, tile, force)
    if job.mode == "custom":
        return custom_labeller(job)
    raise SceneKDError(f"unknown batch mode {job.mode!r}")


# ---- one tile -------------------------------------------------------------------------------------


@dataclass
class TileResult:
    tile: str
    status: str  # done | skipped | error | refused (over the view / teacher-time budget; nothing written)
    output: str | None = None
    points: int = 0
    seconds: float = 0.0
    chunks: int | None = 0
    counts: dict[str, int] = field(default_factory=dict)
    error: str | None = None
    config_hash: str = ""
    warnings: list[str] = field(default_factory=list)
    """Student mode: the tile against the student's input contract (density, height range), with the figures."""
    density: float | None = None
    """Student mode: the tile's points per m² of occupied footprint (scene_kd.distill.contract.point_density)."""
    las_classes: dict[str, Any] | None = None
    """Set when the tile's LAS point format (0-5) has no class code for some labels (:func:`las_class_note`)."""


def check_student_inputs(scene: Any, job: BatchJob) -> Any:
    """The tile's :class:`scene_kd.distill.contract.TileFigures` against ``job.student``'s input contract
    (warnings logged; ``scale`` set when its coordinates are converted to the student's metres); InputContractError
    (one line) when it lacks an input the student needs or is in units that cannot be converted."""
    units, scale = scene_scale(scene)
    fig = check_tile(student_contract(job.student), scene.xyz, scene.rgb, scene.intensity, units, scale,
                     accept_missing=job.accept_missing)
    for w in fig.warnings:
        logging.getLogger(__name__).warning("%s: %s", tile_name(scene.meta.get("source", "tile")), w)
    return fig


def read_sidecar(path: Path) -> dict[str, Any] | None:
    import json

    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def process_tile(tile: str, job: BatchJob, force: bool = False,
                 precomputed: tuple[np.ndarray, np.ndarray, int] | None = None) -> dict[str, Any]:
    """Label one tile and write its output + sidecar; never raises for a bad tile (status "error").
    ``precomputed``: (label_index [N], confidence [N], chunks) already labelled elsewhere (chunks as Ray tasks)."""

    t0 = time.perf_counter()
    out, done = output_path(job.out_dir, tile), sidecar_path(job.out_dir, tile)
    try:
        tile_hash = file_hash(tile)
        chash = job.config_hash(tile_hash)
    except OSError as e:
        return to_jsonable(TileResult(tile=str(tile), status="error", error=f"cannot read tile ({e.strerror})"))
    if not force and out.exists():
        rec = read_sidecar(done)
        if rec and rec.get("config_hash") == chash:
            return {**rec, "status": "skipped"}
    try:
        from scene_kd.scene.io import load_scene

        scene = load_scene(tile, units=job.units)
        if scene.kind != "points":
            raise SceneKDError("batch segmentation needs a point cloud tile, not Gaussians", path=tile)
        n_chunks: int | None
        figures = check_student_inputs(scene, job) if job.mode == "student" else None
        if precomputed is not None:
            label_index, confidence, n_chunks = precomputed
            if len(label_index) != len(scene):
                raise SceneKDError(f"{len(label_index)} precomputed labels for {len(scene)} points")
        elif job.mode == "student":
            label_index, confidence = label_with_student(scene, job)
            n_chunks = 1 if job.chunk_size <= 0 or len(scene) <= job.chunk_size else None  # the student's tiling
        else:
            labeller = make_labeller(job, tile, force)
            label_index, confidence, n_chunks = label_in_chunks(scene, labeller, job.chunk_size, job.halo)
        header = scene.meta.get("las_header")
        if label_index.max(initial=0) >= len(job.labels) or label_index.min(initial=0) < -1:
            raise SceneKDError(f"label index out of range -1..{len(job.labels) - 1}")
        n_points = len(scene)
        if header is not None:  # annotate the tile's own records, streamed (never rebuilt from the PointCloud)
            from scene_kd.query.export import las_class_note, las_label_columns
            from scene_kd.scene.annotate import annotate_las

            members = job.members or None
            las_note = las_class_note(job.labels, header.point_format.id, members)
            cls, dims, _, names = las_label_columns(job.labels, label_index, header.point_format.id, members)
            rows = scene.meta.get("source_rows")
            del scene  # the writer streams the file; the loaded copy is no longer needed
            with atomic_path(out) as tmp:
                annotate_las(tile, tmp, classification=cls, dims={**dims, "confidence": confidence.astype(np.float32)},
                             records=rows, expect_hash=tile_hash, label_names=names,
                             provenance=job_provenance(job))
        else:
            from scene_kd.query.export import UNCLASSIFIED
            from scene_kd.scene.io import save_scene

            las_note = None
            codes = class_codes(job.labels, 6, job.members)
            lut = np.asarray([*codes, UNCLASSIFIED], dtype=np.int32)  # index -1 (unknown) -> unclassified
            scene.labels = lut[label_index]
            scene.label_names = {int(c): name for c, name in zip(codes, job.labels, strict=False)}
            scene.extra = {**scene.extra, "confidence": confidence.astype(np.float32)}
            scene.meta["provenance"] = job_provenance(job)
            with atomic_path(out) as tmp:
                save_scene(scene, tmp)
        counts = np.bincount(label_index[label_index >= 0], minlength=len(job.labels))
        result = TileResult(
            tile=str(tile), status="done", output=str(out), points=n_points,
            seconds=round(time.perf_counter() - t0, 3), chunks=n_chunks,
            counts={name: int(c) for name, c in zip(job.labels, counts, strict=False)}, config_hash=chash,
            warnings=list(figures.warnings) if figures is not None else [],
            density=figures.density if figures is not None else None,
            las_classes=las_note,
        )
        write_json(done, result)
        return to_jsonable(result)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BudgetError as e:  # refused before rendering: say why, let the other tiles go on
        return to_jsonable(TileResult(tile=str(tile), status="refused", seconds=round(time.perf_counter() - t0, 3),
                                      error=str(e), config_hash=chash))
    except SceneKDError as e:
        err = str(e)
    except Exception as e:  # a bad tile must not stop the batch; keep the message and where it came from
        frame = traceback.extract_tb(e.__traceback__)[-1]
        err = f"{type(e).__name__}: {e} ({Path(frame.filename).name}:{frame.lineno})"
    return to_jsonable(TileResult(tile=str(tile), status="error", seconds=round(time.perf_counter() - t0, 3),
                                  error=err, config_hash=chash))
