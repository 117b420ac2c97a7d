"""The audit: implementations x losses x formats x regimes, measured against the oracle.

For each loss, format and regime the cases are drawn once (hypothesis, seeded per group
so that adding a loss does not change another's cases), the oracle is evaluated once per
case, and every selected implementation runs on the same cases in a child process
(``stabcheck.runner``), with a time limit (a call that exceeds it is tried once more in a
fresh process): an implementation that raises, hangs, crashes or returns something unusable
becomes a row with status ``error`` or ``timeout`` and the audit carries on; a library that
turns a format down is noted as unsupported in it, with what it said.
With ``search``, each implementation then gets a targeted search of its own per group
(``hypothesis.target`` on the bits of error), and the worst case it finds is measured too
(origin ``search``; the drawn cases have origin ``drawn``). Cases of a regression corpus
(``corpus=``, see ``stabcheck.gate``) are measured too, with origin ``corpus``.
The groups (and slices of the corpus) are tasks that run in one process per core
(``AuditConfig.jobs``), each with its own implementation processes; their rows are merged
in task order, so a run's result does not depend on how many processes ran it. An
interrupt (SIGINT, or SIGTERM under ``stabcheck._signals.stop_on_signals``) keeps whole
tasks and leaves no process behind.
Then the rows are grouped into findings (``stabcheck.findings``: each row's ``finding`` is
its ID), and at most ``FINDINGS_SHARE`` of the measuring time goes to their onsets, smallest
cases, shapes and repros, through the same runner and time limits.
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
from dataclasses import dataclass, field, replace
from typing import Any

from stabcheck import _signals
from stabcheck._validation import integer
from stabcheck.case import Case
from stabcheck.errors import AdapterUnavailable, InvalidArgument, PrecisionLimitReached
from stabcheck.findings import Finding, Investigation, group, investigate
from stabcheck.findings import score as findings_score
from stabcheck.formats import format_names, get_format
from stabcheck.implementations import (
    Implementation,
    backends,
    check_operands,
    implementations,
    user_implementation,
)
from stabcheck.losses import get_loss, loss_names
from stabcheck.measure import DEFAULT_MAX_ULPS, Measurement, measure, measure_worst
from stabcheck.oracle import OracleResult
from stabcheck.oracle.cache import Cache, default_directory
from stabcheck.runner import UNSUPPORTED, Outcome, Runner, Runners, check_user
from stabcheck.strategies import cases as case_strategy
from stabcheck.strategies import get_regime, independent_of_imports, regimes_for

COLUMNS = (
    "implementation", "library", "loss", "format", "regime", "origin", "case_id", "quantity",
    "index", "status", "ulps", "bits", "relative_error", "condition", "exact", "expected",
    "got", "note", "finding",
)  # fmt: skip
DEFAULT_EXAMPLES = 8
DEFAULT_SEARCH = 10
DEFAULT_TIMEOUT = 60.0
FINDINGS_SHARE = 0.19  # of the measuring time for the findings: 20% with the last call
FINDINGS_FLOOR = 5.0  # seconds a short audit may spend on them all the same
MAX_TIMEOUT = 7 * 24 * 3600.0  # seconds: a week; longer limits are mistakes (or inf)
CORES = os.cpu_count() or 1  # processes an audit runs at once, by default
WORK = {  # AuditResult.work: seconds of each kind, summed over the processes that spent them
    "draw": "drawing cases (hypothesis), in the drawn groups and the searches",
    "oracle_fast": "the oracle's double-double fast path",
    "oracle_mpmath": "the oracle's mpmath path (the units the fast path left)",
    "oracle_cache": "reading the oracle's results from its cache on disk",
    "calls_first": "each implementation process's first call (importing its framework)",
    "calls_compile": "an implementation's first call on a shape and format (JIT compiling)",
    "calls": "the other implementation calls",
    "measure": "comparing results with the oracle (rows)",
    "checkpoint": "writing the checkpoint after each task",
}


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
    investigate: bool = True  # bisect onsets, shrink cases, look for shapes (findings.py)

    def validated(self) -> AuditConfig:
        """Check every argument up front, with the fix in the message, and return the
        configuration with canonical names, each once (``f32`` and ``float32`` are one
        format). A user's ``module:function`` is imported here, in a child process, so
        that an import that fails, exits or hangs is an error before the run."""
        counts = {
            "examples": integer("examples", self.examples),
            "search": integer("search", self.search, least=0),
            "jobs": None if self.jobs is None
            else integer("jobs", self.jobs, what="a positive number of processes"),
        }  # fmt: skip
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise InvalidArgument(f"seed={self.seed!r} must be an integer")
        for name in ("grad", "investigate"):
            if not isinstance(getattr(self, name), bool):
                raise InvalidArgument(f"{name}={getattr(self, name)!r} must be True or False")
        if not _real(self.timeout) or not 0 < self.timeout <= MAX_TIMEOUT:
            raise InvalidArgument(
                f"timeout={self.timeout!r} must be a number of seconds above 0 and at most "
                f"{MAX_TIMEOUT:g} (a week), e.g. 60"
            )
        if not _real(self.max_ulps) or not 0 <= self.max_ulps < math.inf:
            raise InvalidArgument(
                f"max_ulps={self.max_ulps!r} must be a finite non-negative number of ULPs"
            )
        config = replace(
            self,
            **counts,
            implementations=_unique("implementations", self.implementations, str.strip),
            losses=_unique("losses", self.losses, lambda x: get_loss(x).name),
            formats=_unique("formats", self.formats, lambda f: get_format(f).name),
            regimes=_unique("regimes", self.regimes, lambda r: get_regime(r).name),
        )
        config._check_selection()
        return config

    def _check_selection(self) -> None:
        """Everything named is installed and measures something; a user's function says
        which loss it computes, imports cleanly, and is not asked for gradients it lacks."""
        named = self.implementations or ()
        users = [name for name in named if ":" in name]
        losses = self.losses or tuple(loss_names())
        for name in named:
            if ":" in name:
                continue
            found = implementations(names=name)
            for impl in found:
                if not impl.available:
                    raise AdapterUnavailable(f"implementation {name!r}: {_install_hint(impl)}")
            if not any(impl.loss in losses for impl in found):
                raise InvalidArgument(
                    f"implementations={name!r} implements none of the selected losses "
                    f"({', '.join(losses)}); it implements {', '.join(i.loss for i in found)}"
                )
        if users and not self.losses:
            raise InvalidArgument(
                f"implementations={users[0]!r} is a function of your own: say which loss it "
                f"computes with losses=[...] (--loss NAME, one of {', '.join(loss_names())}); "
                "stabcheck does not guess it, and would otherwise run it on every loss"
            )
        if users and self.grad:
            raise InvalidArgument(
                f"grad=True (--grad): {users[0]!r} is called as a numpy function, and numpy "
                "has no autodiff, so its gradients cannot be measured here; drop --grad to "
                "measure its values, or measure gradients in Python with "
                "stabcheck.check.check(fn, loss, grad=True, grad_fn=...) (grad_fn returns "
                "d(sum of losses)/d(predictions)) or backend='torch', 'tensorflow' or 'jax'"
            )
        for loss in self.losses or ():
            if named and not users and not implementations(names=named, losses=loss):
                raise InvalidArgument(
                    f"losses={loss!r}: none of the selected implementations "
                    f"({', '.join(named)}) implements it; add one that does, or drop the loss"
                )
            if self.regimes and not set(self.regimes) & set(regimes_for(loss)):
                raise InvalidArgument(
                    f"losses={loss!r}: none of the selected regimes ({', '.join(self.regimes)})"
                    f" applies to it, so nothing would be measured; its regimes: "
                    f"{', '.join(regimes_for(loss))}"
                )
        for regime in self.regimes or ():
            if not any(regime in regimes_for(loss) for loss in losses):
                applies = [x for x in loss_names() if regime in regimes_for(x)]
                raise InvalidArgument(
                    f"regimes={regime!r} applies to none of the selected losses, so nothing "
                    f"would be measured; it applies to {', '.join(applies)}"
                )
        for name in users:
            _, accepts = check_user(name, self.timeout)
            for loss in self.losses or ():
                check_operands(name, loss, accepts)

    def without_gradients(self) -> list[str]:
        """With ``grad``, the selected implementations whose gradients cannot be measured
        (numpy functions without a gradient function: scipy's and scikit-learn's)."""
        if not self.grad:
            return []
        named = self.implementations
        names = None if named is None else [n for n in named if ":" not in n]
        found = implementations(names=names, losses=self.losses or loss_names())
        return list(dict.fromkeys(i.name for i in found if not i.differentiable))


def _real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _unique(
    name: str, values: Sequence[str] | None, canonical: Callable[[str], str]
) -> tuple[str, ...] | None:
    """Each value once, by canonical name, in the order given; None stays None."""
    if values is None:
        return None
    if isinstance(values, str) or not all(isinstance(v, str) for v in values):
        raise InvalidArgument(f"{name}={values!r} must be a list of names")
    if not values:
        raise InvalidArgument(f"{name}=[] is empty; give at least one, or None for all")
    return tuple(dict.fromkeys(canonical(v) for v in values))


@dataclass
class AuditResult:
    """The measurements, the cases they refer to, and what happened on the way."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    cases: dict[str, Case] = field(default_factory=dict)
    oracle_failures: list[str] = field(default_factory=list)
    oracle_units: dict[str, int] = field(default_factory=lambda: {"fast": 0, "mpmath": 0})
    oracle_cache: dict[str, int] = field(default_factory=lambda: {"hits": 0, "misses": 0})
    interrupted: bool = False
    seconds: float = 0.0
    implementations: dict[str, Implementation] = field(default_factory=dict)  # one per name
    unsupported: dict[str, dict[str, str]] = field(default_factory=dict)  # see turned_down
    unavailable: dict[str, str] = field(default_factory=dict)  # name -> how to install
    without_gradients: list[str] = field(default_factory=list)  # with grad: values only
    findings: list[Finding] = field(default_factory=list)  # worst first
    investigation: Investigation = field(default_factory=Investigation)
    phases: dict[str, float] = field(default_factory=dict)  # wall seconds: measure, findings
    work: dict[str, float] = field(default_factory=dict)  # seconds summed over processes

    def spent(self, kind: str, seconds: float) -> None:
        """Add ``seconds`` of work of ``kind`` (see ``WORK``)."""
        self.work[kind] = self.work.get(kind, 0.0) + seconds

    def turned_down(self, name: str, fmt: str, why: str = "") -> None:
        """Note that implementation ``name`` does not take ``fmt`` (``why``: what its library
        said when called; "" where its adapter declares the format absent)."""
        self.unsupported.setdefault(name, {})[fmt] = why

    def add(self, part: AuditResult) -> None:
        """Add what ``part`` (one task, measured in another process perhaps) found."""
        self.rows.extend(part.rows)
        self.cases.update(part.cases)
        self.oracle_failures.extend(part.oracle_failures)
        for path, count in part.oracle_units.items():
            self.oracle_units[path] += count
        for outcome, count in part.oracle_cache.items():
            self.oracle_cache[outcome] += count
        for kind, seconds in part.work.items():
            self.spent(kind, seconds)
        for name, formats in part.unsupported.items():
            for fmt, why in formats.items():
                self.turned_down(name, fmt, why)

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


def oracle(case: Case, grad: bool, into: AuditResult) -> OracleResult:
    """The oracle's answer, from its cache on disk when it is there
    (``stabcheck.oracle.cache``), counting in ``into`` the results each of its paths
    decided, the cases read from the cache, and the time each took."""
    exact = Cache(default_directory()).evaluate(case, grad)
    into.oracle_cache["hits" if "cache" in exact.seconds else "misses"] += 1
    fast = int(exact.fast.sum())
    into.oracle_units["fast"] += fast
    into.oracle_units["mpmath"] += exact.fast.size - fast
    for path, seconds in exact.seconds.items():
        into.spent(f"oracle_{path}", seconds)
    return exact


def _measured(
    into: AuditResult,
    impl: Implementation,
    case: Case,
    exact: OracleResult,
    outcome: Outcome,
    config: AuditConfig,
    origin: str,
) -> list[dict[str, Any]]:
    """``_rows``, timed as ``measure`` work in ``into``."""
    start = time.perf_counter()
    rows = list(_rows(impl, case, exact, outcome, config, origin))
    into.spent("measure", time.perf_counter() - start)
    return rows


def search_worst(
    impl: Implementation,
    runner: Runner,
    group: tuple[str, str, str],
    config: AuditConfig,
    into: AuditResult | None = None,
) -> tuple[Case, list[dict[str, Any]]] | None:
    """The case of ``group`` with the most bits of error that ``config.search`` targeted
    examples find for ``impl`` (hard failures score above any finite error); ``into``
    counts the oracle's results by path and notes a format the library turns down."""
    from hypothesis import HealthCheck, Phase, assume, given, settings, target
    from hypothesis import seed as fixed_seed
    from hypothesis.errors import Unsatisfiable

    loss, fmt, regime = group
    best: list[Any] = [-1.0, None, None]
    into = AuditResult() if into is None else into

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
        assume(impl.takes(case))
        try:
            exact = oracle(case, config.grad, into)
        except PrecisionLimitReached:
            assume(False)
        outcome = runner.call(impl, case, config.grad)
        if outcome.status == UNSUPPORTED:
            into.turned_down(impl.name, fmt, outcome.note)
            assume(False)
        rows = _measured(into, impl, case, exact, outcome, config, "search")
        score = max(map(findings_score, rows))
        target(score, label="bits of error")
        if score > best[0]:
            best[:] = [score, case, rows]

    with independent_of_imports():
        try:
            probe()
        except Unsatisfiable:  # no case the implementation takes, or the oracle decides
            pass
    return None if best[1] is None else (best[1], best[2])


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
    result = AuditResult(without_gradients=config.without_gradients())
    tasks = _tasks(config, corpus, draw, result)
    jobs = min(config.jobs or CORES, len(tasks))
    if "fork" not in multiprocessing.get_all_start_methods():
        jobs = 1  # each process inherits the parent's implementations by forking

    def merge(part: AuditResult) -> None:
        result.add(part)
        if checkpoint:
            start = time.perf_counter()
            checkpoint(result)
            result.spent("checkpoint", time.perf_counter() - start)

    try:
        if jobs > 1:
            _in_processes(tasks, config, jobs, progress, merge)
        else:
            runners = Runners(config.timeout, CORES)  # calls at once: all cores
            try:
                for number, task in enumerate(tasks, 1):
                    if progress:
                        progress(task.label, number, len(tasks))
                    part = AuditResult()
                    _run_task(task, config, runners, part)
                    merge(part)  # whole tasks only: an interrupt drops the task it stops
            finally:
                runners.close()
    except KeyboardInterrupt:
        result.interrupted = True
    result.phases["measure"] = time.perf_counter() - start
    try:
        _find(result, config, max(FINDINGS_SHARE * result.phases["measure"], FINDINGS_FLOOR))
    except KeyboardInterrupt:
        result.interrupted = True
    finally:
        result.phases["findings"] = time.perf_counter() - start - result.phases["measure"]
        result.seconds = time.perf_counter() - start
    return result


def _find(result: AuditResult, config: AuditConfig, budget: float) -> None:
    """Group the rows into findings (``finding`` column); unless the run was interrupted
    or ``config.investigate`` is off, bisect their onsets, shrink their cases and look for
    shapes within ``budget`` seconds, calling implementations through the runner (an
    interrupt there keeps the grouping)."""
    documented = {name: dict(impl.documented) for name, impl in result.implementations.items()}
    result.findings = group(result.rows, result.cases, documented)
    for finding in result.findings:
        for position in finding.rows:
            result.rows[position]["finding"] = finding.id
    if not config.investigate or result.interrupted or not result.findings:
        return
    runners = Runners(config.timeout, 1)
    pairs = dict.fromkeys((row["implementation"], row["loss"]) for row in result.rows)
    try:
        impls = {pair: _implementation(*pair, config.timeout) for pair in pairs}
        result.investigation = investigate(
            result.findings, result.rows, result.cases, impls,
            lambda impl, case, grad: runners.get(impl).call(impl, case, grad),
            config.max_ulps, budget,
        )  # fmt: skip
    finally:
        runners.close()
    result.findings = sorted(result.findings + result.investigation.shapes, key=lambda f: f.rank)


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
        if regime in get_loss(loss).params:  # an option's regime: for those that take it
            impls = [impl for impl in impls if regime in (impl.params or ())]
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


def _run_task(task: _Task, config: AuditConfig, runners: Runners, into: AuditResult) -> None:
    """Measure ``task``'s cases, adding rows, cases, oracle failures and counts to ``into``;
    an implementation whose library turns the format down is noted once and left out."""

    def supported(impls: Sequence[Implementation], fmt: str) -> list[Implementation]:
        return [impl for impl in impls if fmt not in into.unsupported.get(impl.name, {})]

    def measure_case(case: Case, impls: Sequence[Implementation], origin: str) -> None:
        impls = [impl for impl in supported(impls, case.format.name) if impl.takes(case)]
        if not impls:
            return
        try:
            exact = oracle(case, config.grad, into)
        except PrecisionLimitReached as exc:
            into.oracle_failures.append(f"{case.id}: {exc}")
            return
        into.cases[case.id] = case
        for impl, outcome in runners.run(impls, case, config.grad):
            if outcome.status == UNSUPPORTED:
                into.turned_down(impl.name, case.format.name, outcome.note)
            else:
                into.rows.extend(_measured(into, impl, case, exact, outcome, config, origin))

    before = runners.seconds()
    if task.group is not None:
        loss, fmt, regime = task.group
        examples = min(config.examples, get_regime(regime).max_examples or config.examples)
        start = time.perf_counter()
        drawn = draw_cases(loss, fmt, regime, examples, config.seed)
        into.spent("draw", time.perf_counter() - start)
        for case in drawn:
            measure_case(case, task.impls, "drawn")
        if config.search and get_regime(regime).searched:
            for impl in supported(task.impls, fmt):
                start, work = time.perf_counter(), sum(into.work.values())
                calls = sum(runners.seconds().values())
                found = search_worst(impl, runners.get(impl), task.group, config, into)
                inside = sum(into.work.values()) - work + sum(runners.seconds().values()) - calls
                into.spent("draw", time.perf_counter() - start - inside)  # hypothesis's part
                if found is not None:
                    case, rows = found
                    into.cases[case.id] = case
                    into.rows.extend(rows)
    for case, impls in task.corpus:
        measure_case(case, impls, "corpus")
    for kind, seconds in runners.seconds().items():
        into.spent(kind, seconds - before.get(kind, 0.0))


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
        process = context.Process(
            target=_work, args=(child, ends, tasks, config, parallel, os.getpid())
        )
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
                    if _signals.received():
                        raise KeyboardInterrupt from None  # stopped with us by the signal
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
    conn: Any, ends: list[Any], tasks: list[_Task], config: AuditConfig, parallel: int,
    parent: int,
) -> None:  # fmt: skip
    """An audit process: run the tasks whose index arrives on ``conn``, send back each
    one's ``AuditResult`` (or the traceback of a failure), until ``None`` or the end of the
    pipe arrives. ``ends`` are the parent's ends of the pipes, inherited by the fork: closed
    here, so that the parent's exit reaches every worker as the end of its pipe. SIGTERM,
    or the parent's death, stops it after closing its implementation processes."""
    import signal
    import traceback

    for end in ends:
        end.close()

    def stop(signum: int, frame: Any) -> None:
        raise SystemExit(0)

    _signals.child_signals()
    signal.signal(signal.SIGTERM, stop)
    _signals.die_with_parent(parent, signal.SIGTERM)
    runners = Runners(config.timeout, parallel)
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
                if regime in wanted if wanted else get_regime(regime).audited:
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
                description, accepts = check_user(name, config.timeout)
                found.append(user_implementation(name, loss, description=description,
                                                 accepts=accepts))  # fmt: skip
            else:
                found.extend(implementations(names=name, losses=loss))
    chosen = []
    for impl in found:
        if not impl.available:
            result.unavailable[impl.name] = _install_hint(impl)
        elif fmt not in impl.formats:
            result.turned_down(impl.name, fmt)
        else:
            result.implementations.setdefault(impl.name, impl)
            chosen.append(impl)
    return chosen


def _implementation(name: str, loss: str, timeout: float) -> Implementation:
    """The implementation ``name`` of ``loss``: registered, or a user's function."""
    if ":" in name:
        description, accepts = check_user(name, timeout)
        return user_implementation(name, loss, description=description, accepts=accepts)
    return implementations(names=name, losses=loss)[0]


def _install_hint(impl: Implementation) -> str:
    missing = [m for m in impl.requires if not backends.installed(m)]
    extras = sorted({backends.EXTRAS.get(m, m) for m in missing})
    return f"{', '.join(missing)} not installed: pip install 'stabcheck[{','.join(extras)}]'"


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
        "finding": "",
        "implementation": impl.name,
        "library": impl.library,
        "loss": case.loss.name,
        "format": case.format.name,
        "regime": case.regime,
        "origin": origin,
        "case_id": case.id,
    }
    quantities = ["value"]
    if config.grad and impl.differentiable:
        quantities += ["gradient", *map(operand_quantity, case.operands)]

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
    gradients: dict[str, tuple[bool | str, Any]] = {}
    if outcome.gradient is not None:
        gradients["gradient"] = (True, outcome.gradient)
    for name, array in outcome.operands.items():
        gradients[operand_quantity(name)] = (name, array)
    for quantity, (towards, array) in gradients.items():
        worst = measure_worst(exact, array, gradient=towards, max_ulps=config.max_ulps,
                              per_row=case.loss.rowwise)  # fmt: skip
        for m in worst:
            yield {**base, **_columns(m), "quantity": quantity, "note": note(m.status)}


def operand_quantity(name: str) -> str:
    """The ``quantity`` of the rows that measure the gradient with respect to operand
    ``name`` (``gradient`` alone is with respect to the predictions)."""
    return f"gradient[{name}]"


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
