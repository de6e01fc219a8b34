"""Label vocabularies with groups: ``--labels ground=road+sidewalk+grass,building,vegetation=tree``.

Grammar (one string, or a list of items): items separated by commas; an item is ``name`` (a class prompted by its
own name) or ``name=member+member+...`` (an output class ``name`` scored by its members' prompts). Blanks around
names are stripped and inner runs of blanks collapsed; names compare case-insensitively. Refused with one line
(SceneKDError): no item, an empty item, an empty group name (``=road``) or member (``a=``, ``a=b+``, ``a=b++c``),
two ``=`` in one item, a name or member given twice anywhere (a member in two groups would make the argmax
ambiguous).

Group score = max over its members' cosine similarities (per point). Why the max: a group means "any of these",
so a point that is clearly road is clearly ground; the max keeps each member's own similarity scale, so a group
competes with a single-name class on the same terms whatever its size. A mean would drag a road point's "ground"
score down by its low grass and sidewalk similarities (a group would lose to single classes as it grows); a sum or
log-sum-exp would favour big groups. The softmax confidence is then taken over the group scores.

The parsed :class:`Vocabulary` is used the same way by ``segment``, ``batch`` (local and Ray), ``query`` (a
group as the query text, relevancy = max over its members) and the viewer's vocabulary mode.

Also here: the check that a field can express a vocabulary (:func:`check_expressible`): with the oracle text encoder
(fixed concept vectors) a prompt whose vector is none of the classes the teacher embedded can never win an argmax,
so it is refused naming the classes it knows and a group that would say what was meant.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from scene_kd.errors import SceneKDError, UnknownConceptError


@dataclass(frozen=True)
class Vocabulary:
    """Output classes ``names`` [C], each with its member prompts ``members[c]`` (a plain name: itself)."""

    names: tuple[str, ...]
    members: tuple[tuple[str, ...], ...]

    @property
    def flat(self) -> list[str]:
        """Every member name in class order [M]."""
        return [m for ms in self.members for m in ms]

    @property
    def group_of(self) -> torch.Tensor:
        """[M] int64: the class index of each member of :attr:`flat`."""
        return torch.tensor([c for c, ms in enumerate(self.members) for _ in ms], dtype=torch.int64)

    @property
    def grouped(self) -> bool:
        return any(ms != (n,) for n, ms in zip(self.names, self.members, strict=True))

    def spec(self) -> str:
        """The vocabulary as a ``--labels`` string (parses back to itself)."""
        return ",".join(n if ms == (n,) else f"{n}={'+'.join(ms)}" for n, ms in zip(self.names, self.members, strict=True))

    def as_json(self) -> dict[str, list[str]]:
        """{class name: its member prompts}."""
        return {n: list(ms) for n, ms in zip(self.names, self.members, strict=True)}


def _clean(s: str) -> str:
    return " ".join(s.split())


def parse_vocabulary(labels: str | Sequence[str] | Vocabulary) -> Vocabulary:
    """A :class:`Vocabulary` from ``"a, g=b+c"`` or a list of items (see the module grammar); SceneKDError with one
    line for a grammar error."""
    if isinstance(labels, Vocabulary):
        return labels
    items = labels.split(",") if isinstance(labels, str) else list(labels)
    for item in items:
        if not isinstance(item, str):
            raise SceneKDError(f"labels must be strings, got {type(item).__name__}")
    if not items or all(not _clean(i) for i in items):
        raise SceneKDError("no labels given: pass comma-separated class names, e.g. road,building,tree "
                           "(or groups, e.g. ground=road+sidewalk+grass)")
    names: list[str] = []
    members: list[tuple[str, ...]] = []
    seen: dict[str, str] = {}

    def claim(word: str, where: str) -> None:
        if word.lower() in seen:
            raise SceneKDError(f"label {word!r} given twice ({seen[word.lower()]} and {where}) in {_show(labels)}")
        seen[word.lower()] = where

    for raw in items:
        item = _clean(raw)
        if not item:
            raise SceneKDError(f"empty label in {_show(labels)}")
        if "=" not in item:
            if "+" in item:
                raise SceneKDError(f"{item!r}: a group needs a name, e.g. ground={item.replace(' ', '')}")
            claim(item, f"class {item!r}")
            names.append(item)
            members.append((item,))
            continue
        name, _, rest = (p.strip() for p in item.partition("="))
        if "=" in rest:
            raise SceneKDError(f"{item!r}: one '=' per group, e.g. ground=road+sidewalk")
        if not name:
            raise SceneKDError(f"{item!r}: the group has no name (write NAME=member+member)")
        ms = [_clean(m) for m in rest.split("+")]
        if not rest or any(not m for m in ms):
            raise SceneKDError(f"{item!r}: empty member in group {name!r} (write {name}=member+member)")
        claim(name, f"group {name!r}")
        for m in ms:
            if m.lower() != name.lower():  # ground=ground+road: the group's own name may be one of its members
                claim(m, f"group {name!r}")
        names.append(name)
        members.append(tuple(dict.fromkeys(ms)))
    return Vocabulary(tuple(names), tuple(members))


def _show(labels: Any) -> str:
    return repr(labels if isinstance(labels, str) else ",".join(map(str, labels)))


def group_scores(member_sims: torch.Tensor, vocab: Vocabulary) -> torch.Tensor:
    """[C, N] per-class score = max over the class's members of ``member_sims`` [M, N] (rows in ``vocab.flat``
    order). In place of an identity copy when every class is a plain name."""
    if not vocab.grouped:
        return member_sims
    out = member_sims.new_full((len(vocab.names), member_sims.shape[1]), float("-inf"))
    index = vocab.group_of.to(member_sims.device)[:, None].expand_as(member_sims)
    return out.scatter_reduce_(0, index, member_sims, reduce="amax")


# ---- what a field can express ---------------------------------------------------------------------------------

_GROUP_HINTS: dict[str, tuple[str, ...]] = {
    "ground": ("ground", "road", "sidewalk", "grass", "parking", "floor"),
    "vegetation": ("tree", "shrub", "grass"),
    "low vegetation": ("grass", "shrub"),
    "high vegetation": ("tree",),
    "terrain": ("ground", "road", "sidewalk", "grass", "parking"),
    "paved": ("road", "sidewalk", "parking"),
    "street furniture": ("pole", "wall"),
    "vehicle": ("car", "bike"),
}
"""Which known classes a user most likely means by a common name the oracle field may not know (the suggestion)."""


def known_classes(field: Any) -> list[str]:
    """The class names a field's teacher embedded: its label names in code order, each once. Names that evaluation
    ignores (noise, overlap, unclassified) are kept: the oracle gives their regions masks and vectors too, so a
    user may ask for them (``segment --labels ground,noise`` on an ASPRS tile). A field with ground-truth labels
    knows only the classes that have points in it (a fresh user's ``building`` on a tile of ground and
    unclassified points was accepted and given 5,818 points)."""
    names = getattr(field, "label_names", None) or {}
    labels = getattr(field, "labels", None)
    if labels is not None and len(labels):  # only classes with points: the teacher never showed the others
        present = set(np.unique(np.asarray(labels)).tolist())
        names = {k: v for k, v in names.items() if k in present}
    return list(dict.fromkeys(names[k] for k in sorted(names)))


RARE_CLASS_FRACTION = 1e-3
"""A class with fewer points than this fraction of its run (and fewer than 100) is too rare for a student to have
learned: labelling with it is allowed but warned (a fresh user's ``road``, 2 points of 14,408, took 11,929 roofs)."""


def rare_members(field: Any, vocab: Vocabulary) -> list[str]:
    """The members of ``vocab`` that name classes with only a handful of points in ``field``'s ground truth, each
    as ``"name (N of T points in the run)"``; [] for a field without labels. Source of the rule: this project's
    user trial."""
    names = getattr(field, "label_names", None) or {}
    labels = getattr(field, "labels", None)
    if labels is None or not len(labels):
        return []
    codes, counts = np.unique(np.asarray(labels), return_counts=True)
    by_name: dict[str, int] = {}
    for c, n in zip(codes.tolist(), counts.tolist(), strict=True):
        if c in names:
            by_name[names[c]] = by_name.get(names[c], 0) + int(n)
    limit = min(100, RARE_CLASS_FRACTION * len(labels))
    return [f"{m} ({by_name[m]:,} of {len(labels):,} points in the run)" for m in dict.fromkeys(vocab.flat)
            if 0 < by_name.get(m, 0) < limit]


def rare_warning(rare: Sequence[str]) -> str:
    """One line for :func:`rare_members`."""
    one = len(rare) == 1
    return (f"{'; '.join(rare)}: too few for the student to learn; labels named so are unreliable (group or drop "
            f"{'it' if one else 'them'})")


def check_expressible(field: Any, encoder: Any, vocab: Vocabulary, prompts: Sequence[str]) -> None:
    """Refuse members the field cannot express (SceneKDError, one line).

    Only for encoders with fixed class vectors (``encode_class_names``: the oracle): a member prompt (``prompts``,
    aligned with ``vocab.flat``: the templated names) whose vector is none of the vectors the teacher gave the
    field's classes (``field.label_names``) can never be the best match, so it would silently never be chosen.
    A field without label names is checked against the encoder's whole concept table (``match_concept``).
    Real text encoders (open_clip) embed any words meaningfully: nothing is refused."""
    if not hasattr(encoder, "encode_class_names"):
        return
    known = known_classes(field)
    bad: list[str] = []
    if known:
        names = field.label_names
        all_names = [names[k] for k in sorted(names)]  # as the oracle teacher embedded them (order matters)
        class_vecs = torch.as_tensor(encoder.encode_class_names(all_names), dtype=torch.float32)
        class_vecs = class_vecs[[i for i, n in enumerate(all_names) if n in known]]  # classes with points only
        vecs = encoder.encode_text(list(prompts)).float()
        cos = vecs @ class_vecs.T
        bad = [m for m, c in zip(vocab.flat, cos, strict=True) if float(c.max()) < 0.999]
    else:
        from scene_kd.teachers.text import match_concept

        bad = [m for m, p in zip(vocab.flat, prompts, strict=True) if match_concept(p)[0] is None]
    if bad:
        raise UnknownConceptError(unknown_message(bad, known, vocab, getattr(encoder, "id", "oracle")))


def unknown_message(bad: Sequence[str], known: Sequence[str], vocab: Vocabulary, encoder_id: str) -> str:
    """One line naming the unknown members, the classes the field knows and a group to use instead."""
    what = ", ".join(repr(b) for b in bad)
    knows = ", ".join(known) if known else "the oracle's concept table (scene_kd/teachers/text.py)"
    first = bad[0]
    owner = next((n for n, ms in zip(vocab.names, vocab.members, strict=True) if first in ms), first)
    pick = [k for k in _GROUP_HINTS.get(owner.lower(), ()) if k in known]
    hint = f", e.g. --labels {owner}={'+'.join(pick)}" if pick else ""  # only a group that means the same thing
    noun = "is not a class" if len(bad) == 1 else "are not classes"
    return (f"{what} {noun} this student can express (text encoder {encoder_id}: fixed vectors for the classes "
            f"it was trained on: {knows}); name one of those or a group of them{hint}")
