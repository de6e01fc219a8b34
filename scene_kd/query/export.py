"""Export query results: PLY (``relevancy`` / ``label`` / ``confidence`` properties) or LAS/LAZ.

Annotate, never rebuild: when the run came from a LAS/LAZ file, LAS/LAZ output is that file's own records
(every dimension, header field, VLR, EVLR) with ``classification`` (ASPRS codes where a label name matches,
user codes otherwise) and float32 extra-bytes ``confidence`` / ``relevancy`` (scene_kd.scene.annotate);
PLY output from a PLY (points or 3DGS) or LAS/LAZ run copies the input's rows with all their properties.
The source must exist unchanged (hash recorded by the run), else a SceneKDError. Runs from other formats
(synthetic scenes, NPY, PCD, compressed 3DGS) get the field's points with a new header.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scene_kd.errors import SceneKDError
from scene_kd.field import FeatureField
from scene_kd.runio import atomic_path
from scene_kd.scene.annotate import annotate_las, annotate_ply, check_source
from scene_kd.scene.formats.ply import LABEL_COMMENT, provenance_comment
from scene_kd.scene.io import label_names_to_json, save_scene
from scene_kd.scene.labels import ASPRS_CLASSES
from scene_kd.scene.runscene import run_scene_meta, run_source_rows
from scene_kd.scene.types import PointCloud
from scene_kd.teachers.config import ORACLE, ORACLE_NOTE

EXPORT_FORMATS = ("ply", "las", "laz")

# name (normalised) -> ASPRS LAS 1.4 standard class code
_ASPRS_SYNONYMS: dict[int, tuple[str, ...]] = {
    1: ("unclassified", "unknown"),
    2: ("ground", "terrain", "bare ground", "soil", "earth"),
    3: ("low vegetation", "grass", "lawn"),
    4: ("medium vegetation", "shrub", "bush", "hedge"),
    5: ("high vegetation", "tree", "vegetation", "tall vegetation"),
    6: ("building", "roof", "house", "facade"),
    7: ("noise", "low noise"),
    8: ("model key point", "key point"),
    9: ("water", "river", "lake", "sea"),
    10: ("rail", "railway", "railroad", "rail track"),
    11: ("road", "street", "road surface", "asphalt", "traffic road"),
    12: ("overlap", "overlap points"),
    13: ("wire guard", "shield wire"),
    14: ("wire", "wire conductor", "power line", "cable", "conductor"),
    15: ("transmission tower", "pylon", "tower"),
    16: ("wire connector", "insulator"),
    17: ("bridge", "bridge deck"),
    18: ("high noise",),
}
ASPRS_CODE_BY_NAME: dict[str, int] = {name: code for code, names in _ASPRS_SYNONYMS.items() for name in names}
UNCLASSIFIED = 1
USER_CODE_START = 64  # first user-defined class for LAS point formats 6-10 (8-bit classification)
LEGACY_USER_CODE_START = 32
"""Formats 0-5 have a 5-bit classification whose codes 13..31 are reserved for ASPRS (LAS 1.4 R15, table 9): no user
code is free, so names without an ASPRS class go to the extra-bytes 'label' index with classification 1."""
_ASPRS_NAME = {code: ASPRS_CLASSES[code] for code in _ASPRS_SYNONYMS}


def _normalise_name(name: str) -> str:
    s = re.sub(r"[^\w\s-]", " ", name.lower())
    return " ".join(s.replace("_", " ").split())


def asprs_code(name: str) -> int | None:
    """The ASPRS class code for a label name ("tree" -> 5, "roads" -> 11), None when none matches."""
    s = _normalise_name(name)
    if s in ASPRS_CODE_BY_NAME:
        return ASPRS_CODE_BY_NAME[s]
    if s.endswith("es") and s[:-2] in ASPRS_CODE_BY_NAME:
        return ASPRS_CODE_BY_NAME[s[:-2]]
    if s.endswith("s") and s[:-1] in ASPRS_CODE_BY_NAME:
        return ASPRS_CODE_BY_NAME[s[:-1]]
    return None


def label_asprs_code(name: str, members: Sequence[str] = ()) -> int | None:
    """The ASPRS code of an output class: its own name's ("ground" -> 2, "vegetation" -> 5 high vegetation), else
    the one code all its group ``members`` share ("paved=road+asphalt" -> 11), else None."""
    code = asprs_code(name)
    if code is None and members:
        member_codes = {asprs_code(m) for m in members}
        if len(member_codes) == 1:
            code = member_codes.pop()
    return code


def classification_codes(names: Sequence[str], *, user_start: int = USER_CODE_START, max_code: int = 255,
                         members: Sequence[Sequence[str]] | None = None) -> dict[str, int]:
    """{label name: LAS classification code}: ASPRS codes where a name (or all of its group ``members``, aligned
    with ``names``) matches (:func:`label_asprs_code`; the first label to claim a code keeps it), then user codes
    ``user_start``, ``user_start + 1``, ... in label order. SceneKDError when the user codes pass ``max_code``."""
    asprs = _asprs_codes(names, members)
    out = dict(asprs)
    used = set(asprs.values())
    nxt = user_start
    for n in names:
        if n in out:
            continue
        while nxt in used:
            nxt += 1
        if nxt > max_code:
            raise SceneKDError(f"too many labels without an ASPRS class for this LAS point format (codes {user_start}..{max_code})")
        out[n] = nxt
        used.add(nxt)
        nxt += 1
    return out


def _asprs_codes(names: Sequence[str], members: Sequence[Sequence[str]] | None) -> dict[str, int]:
    """{name: ASPRS code} for the names that have one (the first to claim a code keeps it)."""
    out: dict[str, int] = {}
    used: set[int] = set()
    for k, n in enumerate(names):
        code = label_asprs_code(n, members[k] if members else ())
        if code is not None and code not in used:
            out[n] = code
            used.add(code)
    return out


def las_class_note(names: Sequence[str], point_format: int, members: Sequence[Sequence[str]] | None = None
                   ) -> dict[str, Any] | None:
    """What a LAS/LAZ annotation in ``point_format`` does with names that have no ASPRS class, or None when
    every name gets its own classification code. Formats 0-5 have no free codes (0-31 are ASPRS's), so those
    names are written as classification 1 and every point's label goes to the extra-bytes ``label`` dimension:
    {"point_format", "without_code": [names], "classification": 1, "labels_in": ..., "codes": {name: code}}."""
    if point_format >= 6:
        return None
    asprs = _asprs_codes(names, members)
    without = [n for n in names if n not in asprs]
    if not without:
        return None
    return {"point_format": int(point_format), "without_code": without, "classification": UNCLASSIFIED,
            "labels_in": "extra-bytes dimension 'label' (index into the names of the label-names VLR)",
            "codes": {n: asprs.get(n, UNCLASSIFIED) for n in names}}


def las_class_message(note: dict[str, Any], where: str = "") -> str:
    """One line for :func:`las_class_note`'s dict."""
    names = ", ".join(note["without_code"])
    return (f"LAS point format {note['point_format']}{where} has no class codes beyond ASPRS's: {names} "
            f"{'has' if len(note['without_code']) == 1 else 'have'} no ASPRS class, written as classification 1 "
            f"(unclassified); every point's label is in the {note['labels_in']}. Name classes with ASPRS "
            f"classes (ground, building, vegetation, water, road, ...) or write a format 6-10 file to avoid this")


def las_label_columns(names: Sequence[str], label_index: np.ndarray, point_format: int,
                      members: Sequence[Sequence[str]] | None = None
                      ) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, int], dict[int, str] | None]:
    """What a LAS/LAZ annotation writes for labels: (classification [N] uint8, extra dims, {name: code},
    label-names VLR map or None).

    ``label_index`` [N] int indexes ``names`` (-1 unknown -> class 1, unclassified); ``members``: each name's
    group members (ASPRS code by the group, :func:`label_asprs_code`). Codes are ASPRS where a name matches,
    else user codes (64.. for formats 6-10); the label-names VLR (scene-kd's {code: name} JSON) is given unless
    every name is its code's ASPRS name. Formats 0-5 have no user codes (LEGACY_USER_CODE_START): names without an
    ASPRS class get classification 1, the others their ASPRS code, and the exact index goes to an extra-bytes
    ``label`` dimension (int16, -1 unknown) whose names travel in the VLR ({index: name}); the same when the
    names do not fit the format's classification field. Callers say so once (:func:`las_class_note`)."""
    legacy = point_format < 6
    lab = np.asarray(label_index)
    note = las_class_note(names, point_format, members)
    try:
        if note is not None:
            raise SceneKDError("names without a class code")
        codes = classification_codes(names, user_start=LEGACY_USER_CODE_START if legacy else USER_CODE_START,
                                     max_code=31 if legacy else 255, members=members)
    except SceneKDError:
        asprs = _asprs_codes(names, members)
        table = np.array([asprs.get(nm, UNCLASSIFIED) for nm in names] + [UNCLASSIFIED], dtype=np.uint8)
        return table[lab], {"label": lab.astype(np.int16)}, {nm: asprs.get(nm, UNCLASSIFIED) for nm in names}, \
            dict(enumerate(names))
    table = np.array([codes[nm] for nm in names] + [UNCLASSIFIED], dtype=np.uint8)
    named = {code: nm for nm, code in codes.items()}  # the user's own names ("grass" for class 3) travel too
    standard = all(ASPRS_CLASSES.get(code) == nm for code, nm in named.items())
    return table[lab], {}, codes, (None if standard else {**_ASPRS_NAME, **named})


def _as_numpy(x: Any, n: int, what: str, dtype: Any) -> np.ndarray | None:
    if x is None:
        return None
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    a = a.reshape(-1)
    if len(a) != n:
        raise SceneKDError(f"{what} has {len(a)} values for {n} points")
    return a.astype(dtype, copy=False)


def _check_mask(mask: Any, n: int) -> np.ndarray | None:
    if mask is None:
        return None
    m = _as_numpy(mask, n, "selection mask", bool)
    return m


def _field_points(field: FeatureField, run_dir: str | Path | None = None):
    """The field's points (metres); with the run's ``file_units`` so the writer puts them back in the input
    file's units (scene_kd.scene.units)."""

    meta: dict[str, Any] = {}
    if run_dir is not None:
        from scene_kd.scene.runscene import run_scene_meta

        try:
            meta = {k: v for k, v in run_scene_meta(run_dir).items() if k == "file_units" and v}
        except SceneKDError:
            meta = {}
    return PointCloud(xyz=field.positions, origin=field.origin, rgb=field.rgb, meta=meta)


def _las_source(run_dir: str | Path | None, suffixes: tuple[str, ...] = (".las", ".laz")
                ) -> tuple[Path, str, Any] | None:
    """(source path, its recorded hash, point -> record map or None) when the run was made from a file
    with one of ``suffixes``; None for runs from other formats (or no run folder). The source's presence
    and hash are checked by the writer, which refuses rather than rebuilding records."""
    if run_dir is None:
        return None

    try:
        meta = run_scene_meta(run_dir)
    except SceneKDError:
        return None
    src = meta.get("source")
    if not src or Path(src).suffix.lower() not in suffixes:
        return None
    if meta.get("format") == "ply" and meta.get("kind") == "gaussians" and suffixes != (".las", ".laz"):
        from plyfile import PlyData

        try:  # a compressed 3DGS PLY has no plain rows to copy: the exporter writes the decoded values
            if "chunk" in PlyData.read(str(src)):
                return None
        except Exception:  # noqa: BLE001 - gone/corrupt: the writer reports it
            pass
    return Path(src), meta.get("source_hash") or "", run_source_rows(run_dir)


def export_points(
    path: str | Path,
    field: FeatureField,
    *,
    run_dir: str | Path | None = None,
    mask: Any = None,
    relevancy: Any = None,
    label_index: Any = None,
    confidence: Any = None,
    label_names: Sequence[str] | None = None,
    label_members: Sequence[Sequence[str]] | None = None,
) -> dict[str, Any]:
    """Write the field's points (those in ``mask`` if given) with per-point results to ``path``.

    Format by extension: .ply | .las | .laz. Per-point arrays are [N] over the whole field:
    relevancy float, label_index int (-1 unknown, indexes ``label_names``), confidence float; ``label_members``:
    each label's group members (a group without an ASPRS name of its own gets its members' common code).
    PLY: properties ``relevancy``, ``label`` (-1 unknown; names in a header comment), ``confidence``,
    after the input file's own properties when the run came from a PLY/LAS/LAZ file.
    LAS/LAZ: the input file's records when the run came from a LAS/LAZ file (scene_kd.scene.annotate;
    refused when that file is gone or changed), else the field's points under a new LAS 1.4 header;
    ``classification`` = ASPRS/user codes of ``label_index`` (unknown -> 1, unclassified), or the input's
    classification when no labels are given; extra-bytes ``confidence`` / ``relevancy`` float32.
    Returns {"path", "format", "count", "classes": {name: code} (LAS with labels), "las_classes" (only when the
    input's point format 0-5 has no code for some names: :func:`las_class_note`; the caller says so once)}.
    """

    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in EXPORT_FORMATS:
        raise SceneKDError(f"cannot export to '.{fmt}'; use one of {', '.join('.' + f for f in EXPORT_FORMATS)}", path=path)
    if path.name.lower().endswith(".copc.laz"):
        raise SceneKDError("scene-kd writes plain LAZ (no maintained Python library writes COPC); name the output "
                           ".laz, not .copc.laz", path=path)
    n = len(field)
    m = _check_mask(mask, n)
    rel = _as_numpy(relevancy, n, "relevancy", np.float32)
    lab = _as_numpy(label_index, n, "label index", np.int64)
    conf = _as_numpy(confidence, n, "confidence", np.float32)
    names = list(label_names or [])
    if lab is not None:
        if not names:
            raise SceneKDError("label_index given without label_names")
        if len(lab) and (lab.min() < -1 or lab.max() >= len(names)):
            raise SceneKDError(f"label index out of range -1..{len(names) - 1}")

    info: dict[str, Any] = {"path": str(path), "format": fmt}
    prov = field_provenance(field)
    if fmt == "ply":
        copied = _copy_rows(path, run_dir, m, rel, lab, conf, names, n, prov)
        if copied is not None:
            return {**info, **copied}
        pc = _field_points(field, run_dir)
        if lab is not None:
            pc.labels = lab.astype(np.int32)
            pc.label_names = {i: name for i, name in enumerate(names)}
    else:
        las_src = _las_source(run_dir)
        if las_src is not None:  # annotate the input's own records (never rebuild them)
            return {**info, **_annotate(path, las_src, m, rel, lab, conf, names, n, prov, label_members)}
        pc = _field_points(field, run_dir)
        info["header_from"] = None
        if lab is not None:
            codes = classification_codes(names, members=label_members)
            table = np.array([codes[nm] for nm in names] + [UNCLASSIFIED], dtype=np.int32)
            pc.labels = table[lab]  # -1 -> last entry (unclassified)
            pc.label_names = {**_ASPRS_NAME, **{code: nm for nm, code in codes.items()}}
            info["classes"] = codes
    if conf is not None:
        pc.extra["confidence"] = conf
    if rel is not None:
        pc.extra["relevancy"] = rel
    if m is not None:
        pc = pc.subset(m)
    if len(pc) == 0:
        raise SceneKDError("nothing to export: the selection is empty", path=path)
    pc.meta["provenance"] = prov  # the LAS and PLY writers record it (VLR / header comment)
    with atomic_path(path) as tmp:
        save_scene(pc, tmp)
    info["count"] = len(pc)
    return info


def field_provenance(field: FeatureField) -> dict[str, Any]:
    """What an exported file says about the features it came from: teacher, text encoder and, for the oracle
    test teacher, its note."""

    teacher = getattr(field, "teacher", None)
    return {"teacher": teacher, "text_encoder": getattr(field, "text_encoder", None),
            **({"note": ORACLE_NOTE} if teacher == ORACLE else {})}


def _annotate(path: Path, las_src: tuple[Path, str, Any], m: np.ndarray | None, rel: np.ndarray | None,
              lab: np.ndarray | None, conf: np.ndarray | None, names: list[str], n: int,
              prov: dict[str, Any], members: Sequence[Sequence[str]] | None = None) -> dict[str, Any]:
    """LAS/LAZ export from the run's input file: its records with classification + extra-bytes dims."""
    import laspy

    source, expect_hash, records = las_src
    check_source(source, expect_hash)
    with laspy.open(str(source)) as f:
        fmt, total = int(f.header.point_format.id), int(f.header.point_count)
    if (total if records is None else len(records)) != n:
        raise SceneKDError(f"the run has {n:,} points, its input file {total:,} records; rerun on this file",
                           path=source)
    info: dict[str, Any] = {}
    cls = label_names_vlr = None
    label_dims: dict[str, np.ndarray] = {}
    if lab is not None:
        cls, label_dims, info["classes"], label_names_vlr = las_label_columns(names, lab, fmt, members)
        note = las_class_note(names, fmt, members)
        if note is not None:
            info["las_classes"] = note
    dims = {**label_dims, **{k: v for k, v in (("confidence", conf), ("relevancy", rel)) if v is not None}}
    if m is not None and not m.any():
        raise SceneKDError("nothing to export: the selection is empty", path=path)
    with atomic_path(path) as tmp:
        out = annotate_las(source, tmp, classification=cls, dims=dims, keep=m, records=records,
                           expect_hash=expect_hash, label_names=label_names_vlr, provenance=prov)
    return {**info, **out}


def _copy_rows(path: Path, run_dir: str | Path | None, m: np.ndarray | None, rel: np.ndarray | None,
               lab: np.ndarray | None, conf: np.ndarray | None, names: list[str], n: int,
               prov: dict[str, Any]) -> dict[str, Any] | None:
    """PLY export from the run's input file (PLY points or 3DGS, LAS/LAZ): its rows with every original
    property, plus ``relevancy`` / ``label`` / ``confidence``; None when the run has no such source."""

    src = _las_source(run_dir, (".ply", ".las", ".laz"))
    if src is None:
        return None
    source, expect_hash, records = src
    props = {k: v for k, v in (("relevancy", rel), ("label", None if lab is None else lab.astype(np.int32)),
                               ("confidence", conf)) if v is not None}
    comments = [LABEL_COMMENT + label_names_to_json(dict(enumerate(names)))] if lab is not None else []
    comments.append(provenance_comment(prov))
    if m is not None and not m.any():
        raise SceneKDError("nothing to export: the selection is empty", path=path)
    with atomic_path(path) as tmp:
        return annotate_ply(source, tmp, props=props, keep=m, records=records, expect_hash=expect_hash,
                            comments=comments)
