"""Progress bars: one look for every long loop (rich, on stderr).

``progress_bar`` gives a rich ``Progress`` (description, bar, done/total, extra text columns, elapsed and
remaining time); ``track`` iterates with a bar; ``counter`` yields an ``advance(*_)`` callable for code that
reports per item (e.g. per view).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

T = TypeVar("T")


def progress_bar(enabled: bool | None = True, *, columns: Sequence[str] = (), transient: bool = True) -> Any:
    """A rich ``Progress`` on stderr. ``enabled`` None: only when stderr is a terminal. ``columns``: extra text
    column templates after the count, e.g. ``"loss {task.fields[loss]:.4f}"`` (the task then needs that field)."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    on = sys.stderr.isatty() if enabled is None else enabled
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    *(TextColumn(c) for c in columns), TimeElapsedColumn(), TimeRemainingColumn(),
                    console=Console(stderr=True), disable=not on, transient=transient)


def track(items: Sequence[T], description: str, enabled: bool | None = True) -> Iterator[T]:
    """Yield ``items`` while advancing a bar (none when disabled or for fewer than two items)."""
    if not enabled or len(items) < 2:
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
