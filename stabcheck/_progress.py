"""The progress display of long runs on a terminal: what is being done (drawing cases, the
oracle, starting a framework, calling an implementation, measuring), a bar, the time
elapsed and the time left, estimated from the speed so far (``rich``)."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator

Progress = Callable[[str, float, float], None]  # (what, done, total)
WIDTH = 64  # characters of the description shown


@contextlib.contextmanager
def terminal_progress() -> Iterator[Progress | None]:
    """A progress line on standard error while the block runs; None (quiet) in CI, when
    standard error is not a terminal, or without ``rich``."""
    if os.environ.get("CI") or not sys.stderr.isatty():
        yield None
        return
    try:
        from rich import progress as bars
        from rich.console import Console
    except ImportError:
        yield None
        return
    columns = (bars.TextColumn(f"{{task.description:<{WIDTH}.{WIDTH}}}"), bars.BarColumn(),
               bars.TaskProgressColumn(), bars.TimeElapsedColumn(), bars.TextColumn("left"),
               bars.TimeRemainingColumn())  # fmt: skip
    with bars.Progress(*columns, console=Console(stderr=True)) as display:
        task = display.add_task("starting", total=None)

        def show(what: str, done: float, total: float) -> None:
            display.update(task, description=what, completed=done, total=total)

        yield show
