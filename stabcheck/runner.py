"""Running implementations on cases, isolated: one child process per library and backend,
time limits with one retry, crashes, memory and output contained.

``invoke`` calls an implementation in this process and checks what comes back. ``Runners``
keeps one ``Runner`` (a forked child) per library and backend (a user's ``module:function``
has its own), so that each framework is imported once; a call that raises, hangs, crashes
or returns garbage becomes an ``Outcome`` with status ``error`` or ``timeout``, and a library
that does not take the case's format (``UnsupportedFormat``) one with status
``unsupported``. A child writes its standard output and error into a file of its own (what
a call printed is quoted in its error note), ignores SIGINT (the parent decides when to
stop) and dies with its parent. ``check_user`` imports a user's module in such a child
first, so that an import that exits or hangs is an error message, not the end of the run.

``Runners.run_jobs`` runs many cases per implementation, batched on the backends that
compile per shape (``BATCHED_BACKENDS``): cases of one loss and format whose rows are alike
in shape and options (``batch_key``) go to the implementation as the rows of one call,
padded to a power of two rows with copies of the first (so that a JIT compiler sees few
shapes; the padding's answers are dropped), and the answer is split back into one
``Outcome`` per case. A batch that fails (raises, hangs, crashes) is called again case by
case, so that a failure belongs to the case that causes it and the others are measured
as if called alone.
"""

from __future__ import annotations

import io
import multiprocessing
import multiprocessing.connection
import os
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stabcheck import _signals
from stabcheck.case import Case
from stabcheck.errors import InvalidArgument, UnsupportedFormat
from stabcheck.implementations import (
    Implementation,
    backends,
    implementations,
    keywords,
    resolve_user,
    user_implementation,
)
from stabcheck.measure import ERROR, TIMEOUT

UNSUPPORTED = "unsupported"  # an outcome's status: the library does not take the format
RUNNER_MEMORY = 2 * 2**30  # bytes: an implementation process past this peak is replaced
OUTPUT_LIMIT = 2**20  # bytes of a child's captured output kept before it starts afresh
QUOTED_OUTPUT = 300  # characters of a failing call's output quoted in its note
FORK = "fork" in multiprocessing.get_all_start_methods()
ROWS_PER_CALL = 256  # rows stacked into one call at most (a larger case goes alone)
# Backends whose cases are batched. JAX compiles every new shape (0.4-0.6 s a call here,
# 5-10 ms once compiled); batched, its results kept every status of the default audit, and
# every ULP count but one: XLA reduced one float32 row in another order in a batch of another
# row count (1 ULP). torch and TensorFlow compile nothing, and compute an element
# of an elementwise loss differently by where it falls in the array (a vector loop or its
# scalar tail): batched, 1 to 7 of 20 float32 and float64 cases changed. Their cases go alone.
BATCHED_BACKENDS = frozenset({"jax"})
ENTRIES_PER_CALL = 2**18  # predictions stacked into one call at most


@dataclass(frozen=True)
class Outcome:
    """What one call returned: float64 arrays, or the reason there are none."""

    values: np.ndarray | None = None
    gradient: np.ndarray | None = None
    status: str = "ok"  # ok, error, timeout or unsupported
    note: str = ""
    operands: Mapping[str, np.ndarray] = field(default_factory=dict)  # their gradients


def invoke(impl: Implementation, case: Case, grad: bool) -> Outcome:
    """Call ``impl`` on ``case`` in this process and check what comes back."""
    returned = backends.call(impl.backend, impl.fn, impl.grad, case, grad)
    notes: list[str] = []
    values = _checked("returned", returned.values, returned.values_dtype, case.output_shape,
                      case, notes)  # fmt: skip
    gradient = None
    if returned.gradient is not None:
        gradient = _checked("gradient", returned.gradient, returned.gradient_dtype,
                            case.predictions.shape, case, notes)  # fmt: skip
    operands = {}
    for name, (array, dtype) in returned.operands.items():
        shape = case.operands[name].shape
        operands[name] = _checked(f"gradient of {name}", array, dtype, shape, case, notes)
    return Outcome(values, gradient, note="; ".join(notes), operands=operands)


def _checked(
    what: str, array: np.ndarray, dtype: str | None, shape: tuple[int, ...], case: Case,
    notes: list[str],
) -> np.ndarray:  # fmt: skip
    if array.shape != shape:
        raise TypeError(f"{what} shape {array.shape}; expected {shape}")
    if dtype != case.format.name:
        notes.append(f"{what} {dtype} for {case.format.name} input")
    return array


def protected(find: Callable[[], Implementation], case: Case, grad: bool) -> Outcome:
    """``invoke`` with every failure of the implementation turned into an ``Outcome``."""
    try:
        with np.errstate(all="ignore"):
            return invoke(find(), case, grad)
    except UnsupportedFormat as exc:
        return Outcome(status=UNSUPPORTED, note=str(exc)[:500])
    except Exception as exc:  # the failure is the finding
        return Outcome(status=ERROR, note=f"{type(exc).__name__}: {exc}"[:500])


def find(name: str, loss: str) -> Implementation:
    """The implementation ``name`` of ``loss``: registered, or a user's ``module:function``."""
    if ":" in name:
        return user_implementation(name, loss)
    return implementations(names=name, losses=loss)[0]


class Runners:
    """One ``Runner`` per library and backend (the implementations of ``torch``, of
    ``keras`` on JAX, of stabcheck, ...; a user's ``module:function`` has its own), so that
    each framework is imported once; ``parallel`` of them call at once (more than there are
    cores would stretch each call towards its time limit)."""

    def __init__(self, timeout: float, parallel: int) -> None:
        self.timeout, self.parallel = timeout, parallel
        self.runners: dict[str, Runner] = {}
        self.folder: str | None = None  # of the processes' output files
        self.printed: dict[str, str] = {}  # what each printed, once closed (``close``)

    def get(self, impl: Implementation) -> Runner:
        key = impl.name if ":" in impl.name else f"{impl.library}[{impl.backend}]"
        if key not in self.runners:
            if self.folder is None:
                self.folder = tempfile.mkdtemp(prefix="stabcheck-output-")
            name = "".join(c if c.isalnum() or c in "-_." else "_" for c in key)
            output = os.path.join(self.folder, f"{len(self.runners)}-{name}.txt")
            self.runners[key] = Runner(key, self.timeout, output)
        return self.runners[key]

    def run_jobs(
        self,
        jobs: Sequence[tuple[Implementation, Sequence[Case]]],
        grad: bool,
        starting: Callable[[int, bool], None] | None = None,
    ) -> Iterator[tuple[int, list[Outcome]]]:
        """Run each job (an implementation and its cases, batched: ``batched``) and yield
        its index and one outcome per case as it finishes; ``starting(index, fresh)`` is
        told as a job starts, ``fresh`` when its process has yet to start (import its
        framework). A runner does its jobs in the order given, at most ``parallel`` runners
        at once, each keeping its framework (and what it compiled) from one job to the
        next."""
        queues: dict[Runner, deque[int]] = {}
        for index, (impl, _) in enumerate(jobs):
            queues.setdefault(self.get(impl), deque()).append(index)
        waiting = deque(queues)
        active: dict[Runner, tuple[int, Generator[Case, Outcome, list[Outcome]]]] = {}
        finished: list[tuple[int, list[Outcome]]] = []

        def advance(runner: Runner, index: int, steps: Any, outcome: Outcome | None) -> None:
            while True:
                try:
                    case = next(steps) if outcome is None else steps.send(outcome)
                except StopIteration as stop:
                    finished.append((index, stop.value))
                    if not queues[runner]:
                        active.pop(runner, None)
                        return
                    index = queues[runner].popleft()
                    steps, outcome = batched(*jobs[index]), None
                    if starting:
                        starting(index, runner.process is None)
                    continue
                runner.submit(jobs[index][0], case, grad)
                active[runner] = (index, steps)
                return

        while waiting or active or finished:
            while waiting and len(active) < self.parallel:
                runner = waiting.popleft()
                index = queues[runner].popleft()
                if starting:
                    starting(index, runner.process is None)
                advance(runner, index, batched(*jobs[index]), None)
            yield from finished
            finished.clear()
            if not active:
                continue
            for runner in _ready(list(active)):
                index, steps = active[runner]
                advance(runner, index, steps, runner.result())

    def seconds(self) -> dict[str, float]:
        """The calls' own time so far, by kind (``Runner._account``), summed over runners."""
        total: dict[str, float] = {}
        for runner in self.runners.values():
            for kind, seconds in runner.seconds.items():
                total[kind] = total.get(kind, 0.0) + seconds
        return total

    def close(self) -> None:
        """Stop every process and keep what each printed in ``printed`` (frameworks' log
        lines and warnings: the report's log), by runner."""
        import shutil

        for key, runner in self.runners.items():
            runner.close()
            try:
                with open(runner.output, encoding="utf-8", errors="replace") as f:
                    text = f.read()
            except (OSError, TypeError):
                text = ""
            if text.strip():
                self.printed[key] = self.printed.get(key, "") + text
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None
        self.runners.clear()


def _ready(runners: list[Runner]) -> list[Runner]:
    """The runners whose call has answered, or is past its time limit (``Runner.result``
    then decides), waiting until there is one."""
    waits = {runner: runner.waiting_on() for runner in runners}
    now = time.perf_counter()
    due = [r for r, (conn, deadline) in waits.items() if conn is None or deadline <= now]
    if due:
        return due
    by_conn = {conn: runner for runner, (conn, _) in waits.items()}
    left = min(deadline for _, deadline in waits.values()) - now
    ready = multiprocessing.connection.wait(list(by_conn), timeout=max(left, 0.0))
    if ready:
        return [by_conn[conn] for conn in ready]
    now = time.perf_counter()
    return [r for r, (_, deadline) in waits.items() if deadline <= now]


def batch_key(case: Case) -> tuple[Any, ...] | None:
    """What cases must share to be called as the rows of one case: the loss, format, shape
    of a row and options; None for a case called alone (a reduced case is one loss of all
    its rows; the gradients of a linear loss's operands sum over its rows)."""
    if case.reduced or case.operands:
        return None
    params = case.to_dict()["params"]
    return (case.loss.name, case.format.name, case.predictions.shape[1:],
            case.labels.shape[1:], repr(sorted(params.items())))  # fmt: skip


def batches(cases: Sequence[Case]) -> list[list[int]]:
    """The cases' indices in calls: those with one ``batch_key`` together, in order, at
    most ``ROWS_PER_CALL`` rows and ``ENTRIES_PER_CALL`` predictions a call."""
    groups: dict[Any, list[list[int]]] = {}
    calls: list[list[int]] = []
    for i, case in enumerate(cases):
        key = batch_key(case)
        if key is None:
            calls.append([i])
            continue
        if key not in groups:
            groups[key] = [[]]
            calls.append(groups[key][0])
        last = groups[key][-1]
        rows = sum(len(cases[j].predictions) for j in last) + len(case.predictions)
        entries = rows * int(np.prod(case.predictions.shape[1:], dtype=np.int64))
        if last and (rows > ROWS_PER_CALL or entries > ENTRIES_PER_CALL):
            last = []
            groups[key].append(last)
            calls.append(last)
        last.append(i)
    return calls


def stacked(cases: Sequence[Case]) -> Case:
    """The cases' rows as one case, padded with copies of the first row to a power of two
    rows (a JIT compiler then sees few shapes)."""
    first = cases[0]
    if len(cases) == 1:
        return first
    rows = sum(len(c.predictions) for c in cases)
    pad = (1 << (rows - 1).bit_length()) - rows
    preds = np.concatenate([c.predictions for c in cases] + [first.predictions[:1]] * pad)
    labels = np.concatenate([c.labels for c in cases] + [first.labels[:1]] * pad)
    return Case(first.loss, first.format, preds, labels, first.params, first.regime)


def split(outcome: Outcome, cases: Sequence[Case]) -> list[Outcome]:
    """One outcome per case of a ``stacked`` call (the padding's rows dropped)."""
    if len(cases) == 1:
        return [outcome]
    out, start = [], 0
    for case in cases:
        end = start + len(case.predictions)
        gradient = None if outcome.gradient is None else outcome.gradient[start:end]
        out.append(Outcome(outcome.values[start:end], gradient, outcome.status, outcome.note))
        start = end
    return out


def batched(
    impl: Implementation, cases: Sequence[Case]
) -> Generator[Case, Outcome, list[Outcome]]:
    """Calls ``impl`` on ``cases`` in ``batches`` (one by one unless its backend is one of
    ``BATCHED_BACKENDS``): yields each call's case, is sent its outcome, returns one
    outcome per case. A batch that fails is called again case by
    case; once a format is turned down (``unsupported``), its other cases are not called."""
    out: list[Outcome | None] = [None] * len(cases)
    refused: dict[str, Outcome] = {}
    together = impl.backend in BATCHED_BACKENDS
    for indices in batches(cases) if together else [[i] for i in range(len(cases))]:
        fmt = cases[indices[0]].format.name
        if fmt in refused:
            for i in indices:
                out[i] = refused[fmt]
            continue
        outcome = yield stacked([cases[i] for i in indices])
        if outcome.status == UNSUPPORTED:
            refused[fmt] = outcome
            for i in indices:
                out[i] = outcome
        elif outcome.values is not None or len(indices) == 1:
            for i, one in zip(indices, split(outcome, [cases[i] for i in indices])):
                out[i] = one
        else:
            for i in indices:
                out[i] = yield cases[i]
    return out  # type: ignore[return-value]


class Runner:
    """A child process that runs implementations of one library, restarted after a timeout,
    a crash, or a call that leaves it past ``RUNNER_MEMORY``; a call that times out is tried
    once more in a fresh process before it is recorded as a timeout. Forked, so it
    inherits every implementation the parent has loaded."""

    def __init__(self, name: str, timeout: float, output: str | None = None) -> None:
        self.name, self.timeout, self.output = name, timeout, output
        self.process: Any = None
        self.conn: Any = None
        self.started = 0.0
        self.pending: Outcome | None = None
        self.call_args: tuple[Implementation, Case, bool] | None = None
        self.retried = False
        self.seen: set[tuple[str, str, tuple[int, ...]]] = set()  # calls of this process
        self.seconds: dict[str, float] = {}  # calls' own time, by kind (see _account)

    def call(self, impl: Implementation, case: Case, grad: bool) -> Outcome:
        """Run one call and wait for it."""
        self.submit(impl, case, grad)
        return self.result()

    def submit(self, impl: Implementation, case: Case, grad: bool) -> None:
        """Start one call; ``result`` collects it (other runners may work meanwhile)."""
        self.call_args = (impl, case, grad)
        self.retried = False
        self._send()

    def _send(self) -> None:
        impl, case, grad = self.call_args
        self.started = time.perf_counter()
        if not FORK:
            self.pending = protected(lambda: impl, case, grad)  # no isolation (Windows)
            return
        self.pending = None
        if self.process is None or not self.process.is_alive():
            self._start()
        self.conn.send((impl.loss, impl.name, case, grad))

    def waiting_on(self) -> tuple[Any, float]:
        """What to wait on for this call's answer (None: it is there) and its deadline."""
        if self.pending is not None:
            return None, self.started
        return self.conn, self.started + self.timeout

    def result(self) -> Outcome:
        if self.pending is not None:
            return self.pending
        left = self.timeout - (time.perf_counter() - self.started)
        if not self.conn.poll(max(left, 0.0)):
            self.close()
            if not self.retried:
                # a loaded machine can stretch one call (a JIT compile) past the limit: try
                # once more in a fresh process before recording a timeout
                self.retried = True
                self._send()
                return self.result()
            return Outcome(
                status=TIMEOUT,
                note=f"no answer within {self.timeout:g} s, twice (the second time in a "
                "fresh process)",
            )
        try:
            outcome, memory, seconds = self.conn.recv()
        except (EOFError, OSError):
            self.process.join(timeout=5)
            code = self.process.exitcode
            self.close()
            return Outcome(status=ERROR, note=f"the process died (exit code {code})")
        self._account(seconds)
        if memory > RUNNER_MEMORY:
            self.close()  # JIT caches grow with every new shape: the next call starts afresh
        return outcome

    def _account(self, seconds: float) -> None:
        """Add a call's own time to ``seconds``: ``calls_first`` for the first call of a
        process (the import), ``calls_compile`` for an implementation's first call on a
        shape and format (what a JIT compiles), ``calls`` for the others."""
        impl, case, _ = self.call_args
        key = (impl.name, case.format.name, case.predictions.shape)
        kind = "calls_first" if not self.seen else "calls" if key in self.seen else "calls_compile"
        self.seen.add(key)
        self.seconds[kind] = self.seconds.get(kind, 0.0) + seconds

    def _start(self) -> None:
        self.seen = set()
        context = multiprocessing.get_context("fork")
        self.conn, child = context.Pipe()
        self.process = context.Process(
            target=_serve, args=(child, self.conn, os.getpid(), self.output), daemon=True
        )
        self.process.start()
        child.close()

    def close(self) -> None:
        if self.process is not None:
            if self.process.is_alive():
                self.process.kill()
            self.process.join(timeout=5)
            self.process = None
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def _serve(conn: Any, parent_end: Any, parent: int, path: str | None) -> None:
    """An implementation process: answer calls until the pipe closes; what it prints goes
    to the file ``path`` (appended: a process started again continues it)."""
    parent_end.close()
    _signals.die_with_parent(parent)
    _signals.child_signals()
    output = _Output(path)
    if "torch" in sys.modules:  # a thread pool started before the fork would hang the child
        sys.modules["torch"].set_num_threads(1)
    while True:
        try:
            loss, name, case, grad = conn.recv()
        except EOFError:
            return
        output.mark()
        start = time.perf_counter()
        outcome = protected(lambda: find(name, loss), case, grad)  # noqa: B023
        seconds = time.perf_counter() - start
        if outcome.status == ERROR and (printed := output.since_mark()):
            outcome = Outcome(status=ERROR, note=f"{outcome.note} (it printed: {printed})")
        conn.send((outcome, _peak_memory(), seconds))


class _Output:
    """This process's standard output and error, sent to a file of its own: nothing an
    implementation prints can block on a slow or closed terminal, or mix into the
    parent's progress line."""

    def __init__(self, path: str | None = None) -> None:
        self.file = tempfile.TemporaryFile() if path is None else open(path, "ab+")
        self.fd = self.file.fileno()
        for stream in (sys.stdout, sys.stderr):
            try:
                if stream is not None:
                    stream.flush()
            except (OSError, ValueError):
                pass  # the parent's own stream: broken, closed or slow; not ours to fix
        os.dup2(self.fd, 1)
        os.dup2(self.fd, 2)
        sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), line_buffering=True)
        sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), line_buffering=True)
        self.start = 0

    def mark(self) -> None:
        end = os.lseek(self.fd, 0, os.SEEK_END)
        if end > OUTPUT_LIMIT:
            os.ftruncate(self.fd, 0)
            os.lseek(self.fd, 0, os.SEEK_SET)
            end = 0
        self.start = end

    def since_mark(self) -> str:
        """The end of what was printed since ``mark``, on one line."""
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        end = os.lseek(self.fd, 0, os.SEEK_END)
        first = max(self.start, end - 4 * QUOTED_OUTPUT)
        text = os.pread(self.fd, end - first, first).decode("utf-8", "replace")
        text = " ".join(text.split())
        return text if len(text) <= QUOTED_OUTPUT else "..." + text[-QUOTED_OUTPUT:]


def _peak_memory() -> int:
    """This process's peak resident memory, in bytes."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux counts KiB


# -- a user's module, imported where its failure is contained ------------------------------

_USER_CHECKED: dict[str, str] = {}  # spec -> the first line of its docstring


def check_user(spec: str, timeout: float) -> tuple[str, tuple[str, ...] | None]:
    """Import the user's ``module:function`` in a child process and check that it names a
    callable; return the first line of its docstring and the keyword arguments it takes
    (None: any, ``**kwargs``). ``InvalidArgument`` says what went
    wrong: the import raised, exited the process (``sys.exit``, ``os._exit``) or took more
    than ``timeout`` seconds, or the name is not a callable. Checked once per process."""
    if spec in _USER_CHECKED:
        return _USER_CHECKED[spec]
    if not FORK:
        obj = resolve_user(spec)
        description = (_first_line(obj), keywords(obj))
    else:
        context = multiprocessing.get_context("fork")
        conn, child = context.Pipe()
        process = context.Process(
            target=_import_user, args=(child, conn, spec, os.getpid()), daemon=True
        )
        process.start()
        child.close()
        try:
            if not conn.poll(timeout):
                raise InvalidArgument(
                    f"{spec!r}: importing it did not finish within {timeout:g} s (the time "
                    "limit of one call, --timeout); make the import quick, or raise --timeout"
                )
            try:
                ok, text = conn.recv()
            except (EOFError, OSError):
                process.join(timeout=5)
                raise InvalidArgument(
                    f"{spec!r}: importing it ended the process with exit code "
                    f"{process.exitcode} (os._exit() or a crash at import); a module under "
                    "test must import without exiting"
                ) from None
        finally:
            conn.close()
            if process.is_alive():
                process.kill()
            process.join(timeout=5)
        if not ok:
            raise InvalidArgument(text)
        description = text
    _USER_CHECKED[spec] = description
    return description


def _import_user(conn: Any, parent_end: Any, spec: str, parent: int) -> None:
    parent_end.close()
    _signals.die_with_parent(parent)
    _signals.child_signals()
    output = _Output()
    try:
        obj = resolve_user(spec)
        reply = (True, (_first_line(obj), keywords(obj)))
    except InvalidArgument as exc:
        reply = (False, str(exc))
    except SystemExit as exc:
        printed = output.since_mark()
        reply = (False, f"{spec!r}: importing it called sys.exit({exc.code!r})"
                 + (f" after printing: {printed}" if printed else "")
                 + "; a module under test must import without exiting")  # fmt: skip
    except BaseException as exc:
        reply = (False, f"{spec!r}: importing it raised {type(exc).__name__}: {exc}")
    conn.send(reply)


def _first_line(obj: Any) -> str:
    doc = (getattr(obj, "__doc__", None) or "").strip()
    return doc.splitlines()[0] if doc else ""
