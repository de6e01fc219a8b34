"""Progress bars: one look for every long loop (rich, on stderr), and log lines where stderr is no terminal.

``progress_bar`` gives a rich ``Progress`` (description, bar, done/total, extra text columns, elapsed and
remaining time); ``track`` iterates with a bar; ``counter`` yields an ``advance(*_)`` callable for code that
reports per item (e.g. per view).

When stderr is not a terminal (a log file, CI, a cluster job, ``2>&1 | cat``) a live bar would print nothing
until the end, so the same calls give a :class:`LogProgress` instead: rich's own task accounting (count, speed,
time remaining over its 30 s window) with no display, and a ``logging`` INFO line per task at its start, each
further ``LOG_EVERY`` of the total or ``LOG_INTERVAL_S`` seconds, and its end - e.g.
``render 40 views: 12/40 (30%), 2.1/s, 5.7 s, ETA 13 s``.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)

LOG_EVERY = 0.1
"""Non-terminal progress: a line each time this fraction of a task's total is done."""
LOG_INTERVAL_S = 30.0
"""Non-terminal progress: a line at least this often (seconds) while a task advances."""


def _seconds(s: float | None) -> str:
    if s is None:
        return "?"
    if s < 10:
        return f"{s:.1f} s"
    s = round(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s} s"


def _log_progress_class() -> type:
    """:class:`LogProgress`, made on first use so that importing this module does not import rich."""
    from rich.progress import Progress

    class LogProgress(Progress):
        """A rich ``Progress`` that draws nothing and logs lines instead (module docstring). The task's speed and
        ETA are rich's (``Task.speed`` / ``Task.time_remaining``); ``columns`` are formatted like rich's text
        columns (``{task.fields[loss]:.4f}``) and appended."""

        def __init__(self, *, columns: Sequence[str] = (), every: float = LOG_EVERY,
                     interval: float = LOG_INTERVAL_S) -> None:
            super().__init__(disable=True)
            self._columns, self._every, self._interval = tuple(columns), every, interval
            self._last: dict[Any, tuple[float, float]] = {}  # task -> (time, fraction) of its last line
            self._ended: set[Any] = set()

        def add_task(self, description: str, start: bool = True, total: float | None = 100.0,
                     completed: int = 0, visible: bool = True, **fields: Any) -> Any:
            task_id = super().add_task(description, start=start, total=total, completed=completed,
                                       visible=visible, **fields)
            task = self._tasks[task_id]
            log.info("%s: start, %s", description,
                     f"{total:g} to do" + (f" ({completed:g} done)" if completed else "") if total else "?")
            self._last[task_id] = (time.monotonic(), self._fraction(task))
            return task_id

        def update(self, task_id: Any, **kwargs: Any) -> None:
            super().update(task_id, **kwargs)
            self._maybe_log(task_id)

        def advance(self, task_id: Any, advance: float = 1) -> None:
            super().advance(task_id, advance)
            self._maybe_log(task_id)

        def stop(self) -> None:
            for task_id, task in list(self._tasks.items()):
                if task_id not in self._ended:  # left early (early stopping, an error): say where it stopped
                    self._line(task, "stopped")
                    self._ended.add(task_id)
            super().stop()

        @staticmethod
        def _fraction(task: Any) -> float:
            return task.completed / task.total if task.total else 0.0

        def _maybe_log(self, task_id: Any) -> None:
            task = self._tasks[task_id]
            if task_id in self._ended:
                return
            if task.finished:
                self._line(task, "done")
                self._ended.add(task_id)
                return
            now, frac = time.monotonic(), self._fraction(task)
            t_last, f_last = self._last.get(task_id, (now, 0.0))
            if int(frac / self._every) > int(f_last / self._every) or now - t_last >= self._interval:
                self._line(task, None)
                self._last[task_id] = (now, frac)

        def _line(self, task: Any, end: str | None) -> None:
            elapsed = task.finished_time if task.finished and task.finished_time else task.elapsed or 0.0
            rate = task.speed if task.speed is not None else (task.completed / elapsed if elapsed > 0 else None)
            extra = []
            for c in self._columns:
                if "{" not in c:  # a bar's literal label ("views"): the description says what is counted
                    continue
                try:
                    extra.append(c.format(task=task))
                except (KeyError, IndexError, ValueError, AttributeError):
                    pass
            total = f"/{task.total:g}" if task.total else ""
            pct = f" ({100 * self._fraction(task):.0f}%)" if task.total else ""
            parts = [f"{task.completed:g}{total}{pct}", (f"{rate:,.0f}/s" if rate >= 100 else f"{rate:.3g}/s") if rate else "?/s", *filter(None, extra),
                     _seconds(elapsed)]
            if end is None:
                eta = task.time_remaining  # rich's, over its recent samples; else from the mean rate
                if eta is None and rate and task.total:
                    eta = (task.total - task.completed) / rate
                parts.append(f"ETA {_seconds(eta)}")
            log.info("%s: %s%s", task.description, f"{end}, " if end else "", ", ".join(parts))

    return LogProgress


def stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # closed or replaced stderr
        return False


def progress_bar(enabled: bool | None = True, *, columns: Sequence[str] = (), transient: bool = True) -> Any:
    """A rich ``Progress`` on stderr: a live bar on a terminal, else a :class:`LogProgress` (log lines with rate and
    ETA); ``enabled`` False: nothing shown (None and True: as said). ``columns``: extra text column templates
    after the count, e.g. ``"loss {task.fields[loss]:.4f}"`` (the task then needs that field)."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    if enabled is False:
        return Progress(disable=True)
    if not stderr_is_terminal():  # a log, CI, a pipe: lines with count, rate and ETA instead of a bar
        return _log_progress_class()(columns=columns)
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    *(TextColumn(c) for c in columns), TimeElapsedColumn(), TimeRemainingColumn(),
                    console=Console(stderr=True), transient=transient)


def track(items: Sequence[T], description: str, enabled: bool | None = True) -> Iterator[T]:
    """Yield ``items`` while advancing a bar (none when ``enabled`` is False or for fewer than two items)."""
    if enabled is False or len(items) < 2:
        yield from items
        return
    with progress_bar(enabled) as bar:
        task = bar.add_task(description, total=len(items))
        for item in items:
            yield item
            bar.advance(task)


@contextlib.contextmanager
def counter(total: int, description: str, enabled: bool | None = None) -> Iterator[Callable[..., None]]:
    """A bar of ``total`` steps; yields ``advance(*_)`` (arguments ignored, e.g. a view index)."""
    with progress_bar(enabled) as bar:
        task = bar.add_task(description, total=total)
        yield lambda *_: bar.advance(task)
