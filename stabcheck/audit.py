"""The audit: implementations x losses x formats x regimes, measured against the oracle.

For each loss, format and regime the cases are drawn once (hypothesis, seeded per group
so that adding a loss does not change another's cases), the oracle is evaluated once per
case, and every selected implementation runs on the same cases in a child process of its
own, with a time limit (a call that exceeds it is tried once more in a fresh process): an
implementation that raises, hangs, crashes or returns something unusable becomes a row
with status ``error`` or ``timeout`` and the audit carries on.
With ``search``, each implementation then gets a targeted search of its own per group
(``hypothesis.target`` on the bits of error), and the worst case it finds is measured too
(origin ``search``; the drawn cases have origin ``drawn``). Cases of a regression corpus
(``corpus=``, see ``stabcheck.gate``) are measured too, with origin ``corpus``.
The groups (and slices of the corpus) are tasks that run in one process per core
(``AuditConfig.jobs``), each with its own implementation processes; their rows are merged
in task order, so a run's result does not depend on how many processes ran it.
One row of the returned DataFrame is one measurement (see ``COLUMNS``).
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import multiprocessing.connection
import os
import sys
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stabcheck.case import Case
from stabcheck.errors import AdapterUnavailable, InvalidArgument, PrecisionLimitReached
from stabcheck.formats import format_names, get_format
from stabcheck.implementations import (
    Implementation,
    backends,
    get_implementation,
    implementations,
)
from stabcheck.losses import get_loss, loss_names
from stabcheck.measure import DEFAULT_MAX_ULPS, ERROR, SEVERITY, TIMEOUT, Measurement, measure
from stabcheck.oracle import OracleResult, evaluate
from stabcheck.strategies import cases as case_strategy
from stabcheck.strategies import get_regime, independent_of_imports, regimes_for

COLUMNS = (
    "implementation", "library", "loss", "format", "regime", "origin", "case_id", "quantity",
    "index", "status", "ulps", "bits", "relative_error", "condition", "exact", "expected",
    "got", "note",
)  # fmt: skip
DEFAULT_EXAMPLES = 8
DEFAULT_SEARCH = 10
DEFAULT_TIMEOUT = 60.0
WIDE_EXAMPLES = 2  # the wide regime's rows of up to 131,072 classes are costly for the oracle
CORES = os.cpu_count() or 1  # processes an audit runs at once, by default
RUNNER_MEMORY = 2 * 2**30  # bytes: an implementation process past this peak is replaced


@dataclass(frozen=True)
class AuditConfig:
    """What to audit. ``None`` selects everything registered or applicable."""

    implementations: Sequence[str] | None = None
    losses: Sequence[str] | None = None
    formats: Sequence[str] | None = None
    regimes: Sequence[str] | None = None
    examples: int = DEFAULT_EXAMPLES
    search: int = DEFAULT_SEARCH
    seed: int = 0
    grad: bool = False
    timeout: float = DEFAULT_TIMEOUT
    max_ulps: float = DEFAULT_MAX_ULPS
    jobs: int | None = None  # processes measuring at once; None: one per core

    def validated(self) -> AuditConfig:
        """Check every argument up front, with the fix in the message."""
        if (
            isinstance(self.examples, bool)
            or not isinstance(self.examples, int)
            or (self.examples < 1)
        ):
            raise InvalidArgument(f"examples={self.examples!r} must be a positive integer")
        if isinstance(self.search, bool) or not isinstance(self.search, int) or self.search < 0:
            raise InvalidArgument(f"search={self.search!r} must be a non-negative integer")
        if self.jobs is not None and (
            isinstance(self.jobs, bool) or not isinstance(self.jobs, int) or self.jobs < 1
        ):
            raise InvalidArgument(f"jobs={self.jobs!r} must be a positive number of processes")
        if not self.timeout > 0:
            raise InvalidArgument(f"timeout={self.timeout!r} must be a positive number of seconds")
        if not self.max_ulps >= 0:
            raise InvalidArgument(f"max_ulps={self.max_ulps!r} must be a non-negative number")
        for loss in self.losses or ():
            get_loss(loss)
        for fmt in self.formats or ():
            get_format(fmt)
        for regime in self.regimes or ():
            get_regime(regime)
        for name in self.implementations or ():
            if ":" not in name:
                for impl in implementations(names=name):
                    if not impl.available:
                        raise AdapterUnavailable(f"implementation {name!r}: {_install_hint(impl)}")
        return self


@dataclass
class AuditResult:
    """The measurements, the cases they refer to, and what happened on the way."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    cases: dict[str, Case] = field(default_factory=dict)
    oracle_failures: list[str] = field(default_factory=list)
    oracle_units: dict[str, int] = field(default_factory=lambda: {"fast": 0, "mpmath": 0})
    interrupted: bool = False
    seconds: float = 0.0
    implementations: dict[str, Implementation] = field(default_factory=dict)  # one per name
    unsupported: dict[str, list[str]] = field(default_factory=dict)  # name -> formats
    unavailable: dict[str, str] = field(default_factory=dict)  # name -> how to install

    def frame(self) -> Any:
        """The measurements as a pandas DataFrame with the columns ``COLUMNS``."""
        import pandas as pd

        return pd.DataFrame(self.rows, columns=list(COLUMNS))


def group_seed(seed: int, loss: str, fmt: str, regime: str) -> int:
    """The seed of one (loss, format, regime) group, derived from the run's seed."""
    return zlib.crc32(f"{seed}:{loss}:{fmt}:{regime}".encode())


def draw_cases(loss: str, fmt: str, regime: str, examples: int, seed: int) -> list[Case]:
    """``examples`` distinct cases of one group, the same for the same seed."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as fixed_seed

    drawn: dict[str, Case] = {}

    @fixed_seed(group_seed(seed, loss, fmt, regime))
    @settings(
        max_examples=examples,
        database=None,
        phases=[Phase.generate],
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case_strategy(loss, fmt, regime))
    def collect(case: Case) -> None:
        drawn.setdefault(case.id, case)

    with independent_of_imports():
        collect()
    return list(drawn.values())[:examples]


def oracle(case: Case, grad: bool, units: dict[str, int]) -> OracleResult:
    """The oracle's answer, counting in ``units`` the results each of its paths decided."""
    exact = evaluate(case, grad=grad)
    fast = int(exact.fast.sum())
    units["fast"] += fast
    units["mpmath"] += exact.fast.size - fast
    return exact


def search_worst(
    impl: Implementation,
    runner: _Runner,
    group: tuple[str, str, str],
    config: AuditConfig,
    units: dict[str, int] | None = None,
) -> tuple[Case, list[dict[str, Any]]] | None:
    """The case of ``group`` with the most bits of error that ``config.search`` targeted
    examples find for ``impl`` (hard failures score above any finite error); ``units``
    counts the oracle's results by path."""
    from hypothesis import HealthCheck, Phase, assume, given, settings, target
    from hypothesis import seed as fixed_seed

    loss, fmt, regime = group
    best: list[Any] = [-1.0, None, None]
    counts = {"fast": 0, "mpmath": 0} if units is None else units

    @fixed_seed(group_seed(config.seed, loss, fmt, regime) ^ zlib.crc32(impl.name.encode()))
    @settings(
        max_examples=config.search,
        database=None,
        phases=[Phase.generate, Phase.target],
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case_strategy(loss, fmt, regime))
    def probe(case: Case) -> None:
        try:
            exact = oracle(case, config.grad, counts)
        except PrecisionLimitReached:
            assume(False)
        outcome = runner.call(impl, case, config.grad)
        rows = list(_rows(impl, case, exact, outcome, config, "search"))
        score = max(_score(row) for row in rows)
        target(score, label="bits of error")
        if score > best[0]:
            best[:] = [score, case, rows]

    with independent_of_imports():
        probe()
    return None if best[1] is None else (best[1], best[2])


def _score(row: dict[str, Any]) -> float:
    """Bits of error, with the statuses that carry none (nan, error, ...) scored above."""
    bits = row.get("bits", math.inf)
    return 64.0 * SEVERITY[row["status"]] + (min(bits, 63.0) if math.isfinite(bits) else 63.0)


def run_audit(
    config: AuditConfig,
    progress: Callable[[str, int, int], None] | None = None,
    checkpoint: Callable[[AuditResult], None] | None = None,
    corpus: Sequence[Case] = (),
    draw: bool = True,
) -> AuditResult:
    """Run the audit; ``checkpoint`` is called after every task (a group, or a slice of the
    corpus) with the rows so far, and ``progress`` as each task starts.

    ``corpus`` cases (a regression corpus) are measured after the drawn ones, with origin
    ``corpus``, when their loss and format are selected; ``draw=False`` measures only them.
    With more than one task and ``config.jobs`` above 1 (by default, one per core) the
    tasks run in that many processes; their rows are merged in task order, so the result
    is the same as with ``jobs=1``. An interrupt (Ctrl-C) stops the run and returns what
    was measured (whole tasks, in order, when running in processes), with ``interrupted``
    set.
    """
    config = config.validated()
    start = time.perf_counter()
    result = AuditResult()
    tasks = _tasks(config, corpus, draw, result)
    jobs = min(config.jobs or CORES, len(tasks))
    if "fork" not in multiprocessing.get_all_start_methods():
        jobs = 1  # each process inherits the parent's implementations by forking

    def merge(part: AuditResult) -> None:
        if part is not result:
            result.rows.extend(part.rows)
            result.cases.update(part.cases)
            result.oracle_failures.extend(part.oracle_failures)
            for path, count in part.oracle_units.items():
                result.oracle_units[path] += count
        if checkpoint:
            checkpoint(result)

    try:
        if jobs > 1:
            _in_processes(tasks, config, jobs, progress, merge)
        else:
            runners = _Runners(config.timeout, CORES)  # calls at once: all cores
            try:
                for number, task in enumerate(tasks, 1):
                    if progress:
                        progress(task.label, number, len(tasks))
                    _run_task(task, config, runners, result)
                    merge(result)
            finally:
                runners.close()
    except KeyboardInterrupt:
        result.interrupted = True
    finally:
        result.seconds = time.perf_counter() - start
    return result


@dataclass(frozen=True)
class _Task:
    """One unit of an audit's work: the drawn cases (and searches) of a ``group`` with the
    implementations ``impls``, or a slice of the corpus."""

    label: str
    impls: tuple[Implementation, ...]
    group: tuple[str, str, str] | None = None
    corpus: tuple[tuple[Case, tuple[Implementation, ...]], ...] = ()  # with their impls


CORPUS_SLICE = 16  # corpus cases per task


def _tasks(
    config: AuditConfig, corpus: Sequence[Case], draw: bool, result: AuditResult
) -> list[_Task]:
    """The run's tasks in order; notes unavailable and unsupported implementations."""
    tasks = []
    for loss, fmt, regime in _groups(config) if draw else ():
        impls = _implementations(config, loss, fmt, result)
        if impls:
            tasks.append(_Task(f"{loss} {fmt} {regime}", tuple(impls), (loss, fmt, regime)))
    selected = []
    for case in _selected_corpus(config, corpus):
        impls = _implementations(config, case.loss.name, case.format.name, result)
        if impls:
            selected.append((case, tuple(impls)))
    for first in range(0, len(selected), CORPUS_SLICE):
        part = tuple(selected[first : first + CORPUS_SLICE])
        label = f"corpus {first + 1}-{first + len(part)} of {len(selected)}"
        tasks.append(_Task(label, (), corpus=part))
    return tasks


def _run_task(task: _Task, config: AuditConfig, runners: _Runners, into: AuditResult) -> None:
    """Measure ``task``'s cases, adding rows, cases, oracle failures and counts to ``into``."""

    def measure_case(case: Case, impls: Sequence[Implementation], origin: str) -> None:
        try:
            exact = oracle(case, config.grad, into.oracle_units)
        except PrecisionLimitReached as exc:
            into.oracle_failures.append(f"{case.id}: {exc}")
            return
        into.cases[case.id] = case
        for impl, outcome in runners.run(impls, case, config.grad):
            into.rows.extend(_rows(impl, case, exact, outcome, config, origin))

    if task.group is not None:
        loss, fmt, regime = task.group
        examples = min(config.examples, WIDE_EXAMPLES) if regime == "wide" else config.examples
        for case in draw_cases(loss, fmt, regime, examples, config.seed):
            measure_case(case, task.impls, "drawn")
        if config.search and regime != "wide":
            for impl in task.impls:
                found = search_worst(impl, runners.get(impl), task.group, config,
                                     into.oracle_units)  # fmt: skip
                if found is not None:
                    case, rows = found
                    into.cases[case.id] = case
                    into.rows.extend(rows)
    for case, impls in task.corpus:
        measure_case(case, impls, "corpus")


def _in_processes(
    tasks: list[_Task],
    config: AuditConfig,
    jobs: int,
    progress: Callable[[str, int, int], None] | None,
    merge: Callable[[AuditResult], None],
) -> None:
    """Run ``tasks`` in ``jobs`` forked processes (each with its own implementation
    processes, sharing the cores between them), passing each task's result to ``merge``
    in task order."""
    context = multiprocessing.get_context("fork")
    parallel = max(1, CORES // jobs)
    workers = []
    for _ in range(jobs):
        conn, child = context.Pipe()
        ends = [c for _, c in workers] + [conn]  # the parent's, for the child to close
        process = context.Process(target=_work, args=(child, ends, tasks, config, parallel))
        process.start()
        child.close()
        workers.append((process, conn))
    waiting = iter(range(len(tasks)))
    busy: dict[Any, int] = {}
    done: dict[int, AuditResult] = {}
    merged = 0

    def dispatch(conn: Any) -> None:
        index = next(waiting, None)
        if index is not None:
            if progress:
                progress(tasks[index].label, index + 1, len(tasks))
            conn.send(index)
            busy[conn] = index

    by_sentinel = {process.sentinel: conn for process, conn in workers}
    finished = False
    try:
        for _, conn in workers:
            dispatch(conn)
        while busy:
            # a worker's sentinel too: its runners hold its end of the pipe after it dies
            watched = list(busy) + [p.sentinel for p, c in workers if c in busy]
            free = []
            for ready in multiprocessing.connection.wait(watched):
                conn = by_sentinel.get(ready, ready)
                if conn not in busy:
                    continue  # both its pipe and its sentinel were ready
                index = busy.pop(conn)
                try:
                    if not conn.poll():
                        raise EOFError
                    outcome = conn.recv()
                except (EOFError, OSError):
                    raise RuntimeError(
                        f"an audit process died while measuring {tasks[index].label}"
                    ) from None
                if isinstance(outcome, str):
                    raise RuntimeError(f"measuring {tasks[index].label} failed:\n{outcome}")
                done[index] = outcome
                free.append(conn)
            while merged in done:
                merge(done.pop(merged))
                merged += 1
            while free:
                dispatch(free.pop())
        finished = True
    finally:
        for process, conn in workers:
            if finished:
                with contextlib.suppress(OSError):
                    conn.send(None)  # the worker closes its runners and exits
            else:
                process.terminate()  # SIGTERM: the same, at once
            conn.close()
        for process, _ in workers:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
                process.join()


def _work(
    conn: Any, ends: list[Any], tasks: list[_Task], config: AuditConfig, parallel: int
) -> None:
    """An audit process: run the tasks whose index arrives on ``conn``, send back each
    one's ``AuditResult`` (or the traceback of a failure), until ``None`` or the end of the
    pipe arrives. ``ends`` are the parent's ends of the pipes, inherited by the fork: closed
    here, so that the parent's exit reaches every worker as the end of its pipe."""
    import signal
    import traceback

    for end in ends:
        end.close()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop

    def stop(signum: int, frame: Any) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    runners = _Runners(config.timeout, parallel)
    try:
        while True:
            try:
                index = conn.recv()
            except EOFError:
                return
            if index is None:
                return
            part = AuditResult()
            try:
                _run_task(tasks[index], config, runners, part)
            except Exception:
                conn.send(traceback.format_exc())
            else:
                conn.send(part)
    finally:
        runners.close()


def _selected_corpus(config: AuditConfig, corpus: Sequence[Case]) -> list[Case]:
    losses = {get_loss(x).name for x in config.losses or loss_names()}
    formats = {get_format(f).name for f in config.formats or format_names()}
    return [c for c in corpus if c.loss.name in losses and c.format.name in formats]


def _groups(config: AuditConfig) -> Iterator[tuple[str, str, str]]:
    losses = [get_loss(x).name for x in config.losses] if config.losses else loss_names()
    formats = [get_format(f).name for f in config.formats] if config.formats else format_names()
    wanted = [get_regime(r).name for r in config.regimes] if config.regimes else None
    for loss in losses:
        for fmt in formats:
            for regime in regimes_for(loss):
                if wanted is None or regime in wanted:
                    yield loss, fmt, regime


def _implementations(
    config: AuditConfig, loss: str, fmt: str, result: AuditResult
) -> list[Implementation]:
    """The implementations of ``loss`` to run in ``fmt``; those that are not installed
    (when not asked for by name) or do not support ``fmt`` are noted in ``result``."""
    if config.implementations is None:
        found = implementations(losses=loss)
    else:
        found = []
        for name in config.implementations:
            if ":" in name:
                found.append(get_implementation(name, loss))
            else:
                found.extend(implementations(names=name, losses=loss))
    chosen = []
    for impl in found:
        if not impl.available:
            result.unavailable[impl.name] = _install_hint(impl)
        elif fmt not in impl.formats:
            formats = result.unsupported.setdefault(impl.name, [])
            if fmt not in formats:
                formats.append(fmt)
        else:
            result.implementations.setdefault(impl.name, impl)
            chosen.append(impl)
    return chosen


def _install_hint(impl: Implementation) -> str:
    missing = [m for m in impl.requires if not backends.installed(m)]
    extras = sorted({backends.EXTRAS.get(m, m) for m in missing})
    return f"{', '.join(missing)} not installed: pip install 'stabcheck[{','.join(extras)}]'"


# -- running an implementation ------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """What one call returned: float64 arrays, or the reason there are none."""

    values: np.ndarray | None = None
    gradient: np.ndarray | None = None
    status: str = "ok"  # ok, error or timeout
    note: str = ""


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
    return Outcome(values, gradient, note="; ".join(notes))


def _checked(
    what: str, array: np.ndarray, dtype: str | None, shape: tuple[int, ...], case: Case,
    notes: list[str],
) -> np.ndarray:  # fmt: skip
    if array.shape != shape:
        raise TypeError(f"{what} shape {array.shape}; expected {shape}")
    if dtype != case.format.name:
        notes.append(f"{what} {dtype} for {case.format.name} input")
    return array


class _Runners:
    """One ``_Runner`` per library and backend (the implementations of ``torch``, of
    ``keras`` on JAX, of stabcheck, ...; a user's ``module:function`` has its own), so that
    each framework is imported once; ``parallel`` of them call at once (more than there are
    cores would stretch each call towards its time limit)."""

    def __init__(self, timeout: float, parallel: int) -> None:
        self.timeout, self.parallel = timeout, parallel
        self.runners: dict[str, _Runner] = {}

    def get(self, impl: Implementation) -> _Runner:
        key = impl.name if ":" in impl.name else f"{impl.library}[{impl.backend}]"
        if key not in self.runners:
            self.runners[key] = _Runner(key, self.timeout)
        return self.runners[key]

    def run(
        self, impls: Sequence[Implementation], case: Case, grad: bool
    ) -> Iterator[tuple[Implementation, Outcome]]:
        """Each implementation's outcome on ``case``, in the order of ``impls``; calls run
        together in batches of at most ``parallel`` runners, each busy with one call."""
        batch: list[Implementation] = []
        for impl in impls:
            runner = self.get(impl)
            if len(batch) == self.parallel or any(self.get(b) is runner for b in batch):
                yield from self._collect(batch)
            runner.submit(impl, case, grad)
            batch.append(impl)
        yield from self._collect(batch)

    def _collect(self, batch: list[Implementation]) -> Iterator[tuple[Implementation, Outcome]]:
        for impl in batch:
            yield impl, self.get(impl).result()
        batch.clear()

    def close(self) -> None:
        for runner in self.runners.values():
            runner.close()


class _Runner:
    """A child process that runs implementations of one library, restarted after a timeout,
    a crash, or a call that leaves it past ``RUNNER_MEMORY``; a call that times out is tried
    once more in a fresh process before it is recorded as a timeout. Forked, so it
    inherits every implementation the parent has loaded."""

    def __init__(self, name: str, timeout: float) -> None:
        self.name, self.timeout = name, timeout
        self.process: Any = None
        self.conn: Any = None
        self.started = 0.0
        self.pending: Outcome | None = None
        self.call_args: tuple[Implementation, Case, bool] | None = None
        self.retried = False

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
        if "fork" not in multiprocessing.get_all_start_methods():
            self.pending = _protected(impl, case, grad)  # no isolation without fork (Windows)
            return
        self.pending = None
        if self.process is None or not self.process.is_alive():
            self._start()
        self.conn.send((impl.loss, impl.name, case, grad))

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
            outcome, memory = self.conn.recv()
        except (EOFError, OSError):
            self.process.join(timeout=5)
            code = self.process.exitcode
            self.close()
            return Outcome(status=ERROR, note=f"the process died (exit code {code})")
        if memory > RUNNER_MEMORY:
            self.close()  # JIT caches grow with every new shape: the next call starts afresh
        return outcome

    def _start(self) -> None:
        context = multiprocessing.get_context("fork")
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_serve, args=(child,), daemon=True)
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


def _serve(conn: Any) -> None:
    if "torch" in sys.modules:  # a thread pool started before the fork would hang the child
        sys.modules["torch"].set_num_threads(1)
    while True:
        try:
            loss, name, case, grad = conn.recv()
        except EOFError:
            return
        impl = get_implementation(name, loss) if ":" in name else _find(name, loss)
        conn.send((_protected(impl, case, grad), _peak_memory()))


def _peak_memory() -> int:
    """This process's peak resident memory, in bytes."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux counts KiB


def _find(name: str, loss: str) -> Implementation:
    return implementations(names=name, losses=loss)[0]


def _protected(impl: Implementation, case: Case, grad: bool) -> Outcome:
    try:
        with np.errstate(all="ignore"):
            return invoke(impl, case, grad)
    except Exception as exc:  # the failure is the finding
        return Outcome(status=ERROR, note=f"{type(exc).__name__}: {exc}"[:500])


# -- rows ---------------------------------------------------------------------------------


def _rows(
    impl: Implementation,
    case: Case,
    exact: OracleResult,
    outcome: Outcome,
    config: AuditConfig,
    origin: str,
) -> Iterable[dict[str, Any]]:
    base = {
        "implementation": impl.name,
        "library": impl.library,
        "loss": case.loss.name,
        "format": case.format.name,
        "regime": case.regime,
        "origin": origin,
        "case_id": case.id,
    }
    quantities = ["value", "gradient"] if config.grad and impl.differentiable else ["value"]

    def note(status: str) -> str:
        documented = impl.documented.get(status)
        return "; ".join(filter(None, [outcome.note, documented and f"documented: {documented}"]))

    if outcome.values is None:
        for quantity in quantities:
            yield {**base, "quantity": quantity, "index": "", "status": outcome.status,
                   "note": note(outcome.status)}  # fmt: skip
        return

    for m in measure(exact, outcome.values, max_ulps=config.max_ulps):
        yield {**base, **_columns(m), "quantity": "value", "note": note(m.status)}
    if outcome.gradient is not None:
        measured = measure(exact, outcome.gradient, gradient=True, max_ulps=config.max_ulps)
        for m in _worst_per_unit(measured, case):
            yield {**base, **_columns(m), "quantity": "gradient", "note": note(m.status)}


def _worst_per_unit(rows: list[Measurement], case: Case) -> list[Measurement]:
    """The worst gradient element of each row (rowwise) or each element."""
    units: dict[tuple[int, ...], Measurement] = {}
    for m in rows:
        unit = m.index[:1] if case.loss.rowwise else m.index
        best = units.get(unit)
        if best is None or _severity(m) > _severity(best):
            units[unit] = m
    return list(units.values())


def _severity(m: Measurement) -> tuple[int, float]:
    return SEVERITY[m.status], m.ulps


def _columns(m: Measurement) -> dict[str, Any]:
    return {
        "index": ",".join(map(str, m.index)),
        "status": m.status,
        "ulps": m.ulps,
        "bits": m.bits,
        "relative_error": m.relative_error,
        "condition": m.condition,
        "exact": m.exact,
        "expected": m.expected,
        "got": m.got,
    }


def terminal_progress() -> Callable[[str, int, int], None] | None:
    """A one-line progress display on a terminal; None (quiet) in CI or when piped."""
    if os.environ.get("CI") or not sys.stderr.isatty():
        return None
    start = time.perf_counter()

    def show(label: str, number: int, total: int) -> None:
        width = 24
        done = int(width * (number - 1) / total)
        elapsed = time.perf_counter() - start
        bar = "#" * done + "-" * (width - done)
        sys.stderr.write(f"\r[{bar}] {number}/{total} {elapsed:6.0f}s {label:<60.60}")
        sys.stderr.flush()

    return show
