"""The bookkeeping both fusion accumulators share (dense :class:`scene_kd.lift.fuse.GranularitySums` and sparse
:class:`scene_kd.lift.mixture.MixtureSums`): which granularities belong to which camera level, how many views of
each level are still to come, and closing a level's granularities after its last view."""

from __future__ import annotations

from collections import Counter

from scene_kd.errors import SceneKDError


class LevelStreams:
    """``open_key(key, level)`` registers a view's granularity (refusing one already finished); ``end_view(level)``
    counts a view of that camera level as streamed past and, after the last of ``views_per_level``, calls
    ``finish(key)`` (the subclass's) for each of the level's granularities in name order."""

    def __init__(self, views_per_level: dict[int, int] | None = None):
        self.remaining = Counter(views_per_level or {})
        self.keys_of_level: dict[int, set[str]] = {}
        self.done: list[str] = []

    def open_key(self, key: str, level: int | None) -> None:
        if key in self.done:
            raise SceneKDError(f"granularity {key} received a view after it was finished")
        if level is not None:
            self.keys_of_level.setdefault(int(level), set()).add(key)

    def end_view(self, level: int) -> None:
        self.remaining[level] -= 1
        if self.remaining[level] <= 0:
            for key in sorted(self.keys_of_level.get(level, ())):
                self.finish(key)

    def finish(self, key: str) -> None:
        raise NotImplementedError
