"""Stopping cleanly: SIGTERM handled like SIGINT, signals held while files are committed,
and child processes that never outlive the process that started them.

The command line runs its audit and gate inside ``stop_on_signals()``: the first SIGINT or
SIGTERM raises ``Interrupted`` (a ``KeyboardInterrupt``, so every ``except
KeyboardInterrupt`` that keeps a partial result handles both), later ones are remembered
and ignored while the run winds down, and ``held()`` delays them while a report is moved
into place. Children call ``die_with_parent()`` first thing, so that even a parent killed
outright (SIGKILL) takes them along.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """A stop signal arrived; ``signum`` says which (SIGINT or SIGTERM)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class _State:
    received: int | None = None  # the first stop signal, once one arrived
    holding = 0  # depth of held() blocks
    raised = False


def received() -> int | None:
    """The first stop signal received in the current ``stop_on_signals`` block, if any."""
    return _State.received


def exit_status(default: int = 130) -> int:
    """The shell's status for a run stopped by a signal: 128 + its number (130, 143)."""
    return 128 + _State.received if _State.received else default


def _handle(signum: int, frame: object) -> None:
    if _State.received is None:
        _State.received = signum
    if _State.holding or _State.raised:
        return  # remembered; the run is already stopping or committing its files
    _State.raised = True
    raise Interrupted(signum)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGINT and SIGTERM raise ``Interrupted`` once, in the main thread, for the block."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _State.received, _State.holding, _State.raised = None, 0, False
    previous = {s: signal.signal(s, _handle) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _State.received, _State.raised = None, False  # none of this run's outlives it


@contextlib.contextmanager
def held() -> Iterator[None]:
    """Delay a stop signal until the block is done (a report being moved into place); a
    signal that arrived meanwhile is raised at its end, unless the run is stopping already."""
    _State.holding += 1
    try:
        yield
    finally:
        _State.holding -= 1
    if not _State.holding and _State.received is not None and not _State.raised:
        _State.raised = True
        raise Interrupted(_State.received)


def die_with_parent(parent: int, signum: int = signal.SIGKILL) -> None:
    """In a freshly forked child: have the kernel send ``signum`` when the parent dies
    (Linux's ``PR_SET_PDEATHSIG``; elsewhere the pipe to the parent closing still ends it),
    and leave at once if the parent is already gone."""
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, int(signum))  # 1: PR_SET_PDEATHSIG
    if os.getppid() != parent:
        os._exit(1)


def child_signals() -> None:
    """In a child: SIGINT is the parent's to act on (a terminal sends it to the whole
    group), SIGTERM ends the child."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
