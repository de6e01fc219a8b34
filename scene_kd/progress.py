"""Progress bars: one look for every long loop (rich, on stderr, transient, off when disabled).

``progress_bar`` gives a rich ``Progress`` (description, bar, done/total, optional loss, time left);
``track`` iterates with a bar; ``counter`` yields an ``advance(*_)`` callable for code that reports per item.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")


def progress_bar(enabled: bool = True, *, loss: bool = False) -> Any:
    """A rich ``Progress`` on stderr, transient; ``loss``: a column showing ``task.fields["loss"]``."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns: list[Any] = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn()]
    if loss:
        columns.append(TextColumn("loss {task.fields[loss]:.4f}"))
    columns.append(TimeRemainingColumn())
    return Progress(*columns, console=Console(stderr=True), disable=not enabled, transient=True)


def track(items: Iterable[T], description: str, enabled: bool = True, total: int | None = None) -> Iterator[T]:
    """Yield ``items`` while advancing a bar (none when disabled or when there is a single item)."""
    items = list(items) if total is None else items
    n = len(items) if total is None else total  # type: ignore[arg-type]
    if not enabled or n < 2:
        yield from items
        return
    with progress_bar() as bar:
        task = bar.add_task(description, total=n)
        for item in items:
            yield item
            bar.advance(task)


@contextlib.contextmanager
def counter(total: int, description: str, enabled: bool = True) -> Iterator[Callable[..., None]]:
    """A bar of ``total`` steps; yields ``advance(*_)`` (arguments ignored, e.g. a view index)."""
    with progress_bar(enabled) as bar:
        task = bar.add_task(description, total=total)
        yield lambda *_: bar.advance(task)
