"""The audit: implementations x losses x formats x regimes, measured against the oracle.

The run goes loss by loss and format by format (a step, ``_Chunk``). In each step the cases
of every regime are drawn (hypothesis, seeded per group of loss, format and regime, so
that adding a loss does not change another's cases), the oracle is evaluated once per case
(read from its cache on disk when it is there, ``stabcheck.oracle.cache``), and every
selected implementation is called on the cases it takes, in child processes that live for
the whole run, one per library and backend (``stabcheck.runner``): the cases of JAX
implementations go as the rows of a few calls, which their compiler sees as few shapes
(``runner.BATCHED_BACKENDS``). Each call has a time limit (a call that exceeds it is tried
once more in a fresh process); an implementation that raises, hangs, crashes or returns
something unusable becomes a row with status ``error`` or ``timeout`` and the audit carries
on; a library that turns a format down is noted as unsupported in it, with what it said.
With ``search``, each group also draws that many search candidates (a second seeded
stream), every implementation is called on them, and each keeps the rows of its worst
(origin ``search``; the drawn cases have origin ``drawn``). Cases of a regression corpus
(``corpus=``, see ``stabcheck.gate``) are a last step, with origin ``corpus``.
``AuditConfig.jobs`` processes draw the cases and evaluate the oracle, and as many
implementation processes call at once; the rows are added in the order of the groups,
cases and implementations, so a run's result does not depend on them. An interrupt
(SIGINT, or SIGTERM under ``stabcheck._signals.stop_on_signals``) keeps whole steps and
leaves no process behind.
Then the rows are grouped into findings (``stabcheck.findings``: each row's ``finding`` is
its ID), and at most ``FINDINGS_SHARE`` of the measuring time goes to their onsets, smallest
cases, shapes and repros, through the same implementation processes.
One row of the returned DataFrame is one measurement (see ``COLUMNS``); ``AuditResult.work``
says where the time went (``WORK``).
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import multiprocessing.connection
import os
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures.process import BrokenProcessPool
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
from stabcheck.oracle.cache import cached, from_state, to_state
from stabcheck.runner import UNSUPPORTED, Outcome, Runners, check_user
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
POOL_GRACE = 2.0  # seconds the pool's processes have to end once the run is done with them
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
    printed: dict[str, str] = field(default_factory=dict)  # by implementation process

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


def group_seed(seed: int, loss: str, fmt: str, regime: str, stream: str = "") -> int:
    """The seed of one (loss, format, regime) group, derived from the run's seed; a
    ``stream`` (``search``) gives the group a second, independent sequence of cases."""
    return zlib.crc32(f"{seed}:{loss}:{fmt}:{regime}{':' + stream if stream else ''}".encode())


def draw_cases(
    loss: str, fmt: str, regime: str, examples: int, seed: int, stream: str = ""
) -> list[Case]:
    """``examples`` distinct cases of one group, the same for the same seed and stream."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as fixed_seed

    drawn: dict[str, Case] = {}

    @fixed_seed(group_seed(seed, loss, fmt, regime, stream))
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


def _count(into: AuditResult, exact: OracleResult) -> None:
    """Count in ``into`` the results each of the oracle's paths decided, whether the cache
    had them, and the time each path took."""
    into.oracle_cache["hits" if "cache" in exact.seconds else "misses"] += 1
    fast = int(exact.fast.sum())
    into.oracle_units["fast"] += fast
    into.oracle_units["mpmath"] += exact.fast.size - fast
    for path, seconds in exact.seconds.items():
        into.spent(f"oracle_{path}", seconds)


def run_audit(
    config: AuditConfig,
    progress: Callable[[str, float, float], None] | None = None,
    checkpoint: Callable[[AuditResult], None] | None = None,
    corpus: Sequence[Case] = (),
    draw: bool = True,
) -> AuditResult:
    """Run the audit; ``checkpoint`` is called after every loss and format (and after the
    corpus) with the rows so far, and ``progress(what, done, total)`` as each step starts
    (``done`` and ``total`` count the calls the audit plans: cases times implementations).

    ``corpus`` cases (a regression corpus) are measured after the drawn ones, with origin
    ``corpus``, when their loss and format are selected; ``draw=False`` measures only them.
    ``config.jobs`` processes (by default, one per core) draw the cases and evaluate the
    oracle, and as many implementation processes call at once; the result does not depend
    on their number. An interrupt (Ctrl-C) stops the run and returns the steps (a loss
    and format each) measured whole, with ``interrupted`` set.
    """
    config = config.validated()
    start = time.perf_counter()
    result = AuditResult(without_gradients=config.without_gradients())
    chunks = _chunks(config, corpus, draw, result)
    jobs = config.jobs or CORES
    runners = Runners(config.timeout, jobs)
    try:
        try:
            total, done = sum(c.planned(config) for c in chunks), 0
            with _pool(jobs) as submit:
                # every step's cases drawn and evaluated ahead, in order, while the
                # implementations of the steps before are called
                prepared = [[submit(_prepare, t) for t in chunk.tasks(config)] for chunk in chunks]
                for chunk, ready in zip(chunks, prepared):
                    planned = chunk.planned(config)

                    def step(what: str, share: float, label: str = chunk.label,
                             done: int = done, planned: int = planned) -> None:  # fmt: skip
                        if progress:
                            progress(f"{label}: {what}", done + share * planned, total)

                    part = AuditResult()
                    try:
                        step("drawing cases, the oracle", 0.0)
                        _measure(chunk, config, runners, [r.result() for r in ready], part,
                                 step)  # fmt: skip
                    except BrokenProcessPool:
                        if _signals.received():
                            raise KeyboardInterrupt from None  # stopped with us by the signal
                        raise RuntimeError(
                            f"an audit process died while measuring {chunk.label}"
                        ) from None
                    except Exception as exc:  # a bug: named with the step it stopped
                        raise RuntimeError(f"measuring {chunk.label} failed: "
                                           f"{type(exc).__name__}: {exc}") from exc
                    done += planned
                    result.add(part)  # whole chunks only: an interrupt drops the one it stops
                    if checkpoint:
                        begun = time.perf_counter()
                        checkpoint(result)
                        result.spent("checkpoint", time.perf_counter() - begun)
        except KeyboardInterrupt:
            result.interrupted = True
        result.phases["measure"] = time.perf_counter() - start
        try:
            budget = max(FINDINGS_SHARE * result.phases["measure"], FINDINGS_FLOOR)
            _find(result, config, budget, runners)
        except KeyboardInterrupt:
            result.interrupted = True
        finally:
            result.phases["findings"] = time.perf_counter() - start - result.phases["measure"]
    finally:
        runners.close()
        result.printed = runners.printed
        result.seconds = time.perf_counter() - start
    return result


def _find(result: AuditResult, config: AuditConfig, budget: float, runners: Runners) -> None:
    """Group the rows into findings (``finding`` column); unless the run was interrupted
    or ``config.investigate`` is off, bisect their onsets, shrink their cases and look for
    shapes within ``budget`` seconds, calling implementations through the audit's runners
    (an interrupt there keeps the grouping)."""
    documented = {name: dict(impl.documented) for name, impl in result.implementations.items()}
    result.findings = group(result.rows, result.cases, documented)
    for finding in result.findings:
        for position in finding.rows:
            result.rows[position]["finding"] = finding.id
    if not config.investigate or result.interrupted or not result.findings:
        return
    pairs = dict.fromkeys((row["implementation"], row["loss"]) for row in result.rows)
    impls = {pair: _implementation(*pair, config.timeout) for pair in pairs}
    result.investigation = investigate(
        result.findings, result.rows, result.cases, impls,
        lambda impl, case, grad: runners.get(impl).call(impl, case, grad),
        config.max_ulps, budget,
    )  # fmt: skip
    result.findings = sorted(result.findings + result.investigation.shapes, key=lambda f: f.rank)


@dataclass(frozen=True)
class _Chunk:
    """A step of an audit: the groups (loss, format, regime) of one loss and format with
    the implementations of each, or the corpus cases with theirs."""

    label: str
    groups: tuple[tuple[tuple[str, str, str], tuple[Implementation, ...]], ...] = ()
    corpus: tuple[tuple[Case, tuple[Implementation, ...]], ...] = ()

    def tasks(self, config: AuditConfig) -> list[tuple[Any, ...]]:
        """What ``_prepare`` does for it: each group's cases drawn and evaluated, or each
        corpus case evaluated."""
        tasks: list[tuple[Any, ...]] = []
        for (loss, fmt, regime), _ in self.groups:
            spec = get_regime(regime)
            examples = min(config.examples, spec.max_examples or config.examples)
            search = config.search if spec.searched else 0
            tasks.append((loss, fmt, regime, examples, search, config.seed, config.grad))
        return tasks + [(case, config.grad) for case, _ in self.corpus]

    def planned(self, config: AuditConfig) -> int:
        """The calls it plans: cases (drawn and searched) times implementations."""
        calls = sum(len(impls) for _, impls in self.corpus)
        for (_, _, regime), impls in self.groups:
            spec = get_regime(regime)
            cases = min(config.examples, spec.max_examples or config.examples)
            calls += (cases + (config.search if spec.searched else 0)) * len(impls)
        return calls


def _chunks(
    config: AuditConfig, corpus: Sequence[Case], draw: bool, result: AuditResult
) -> list[_Chunk]:
    """The run's steps in order, one per loss and format and one for the corpus; notes
    unavailable and unsupported implementations."""
    steps: dict[tuple[str, str], list[Any]] = {}
    for loss, fmt, regime in _groups(config) if draw else ():
        impls = _implementations(config, loss, fmt, result)
        if regime in get_loss(loss).params:  # an option's regime: for those that take it
            impls = [impl for impl in impls if regime in (impl.params or ())]
        if impls:
            steps.setdefault((loss, fmt), []).append(((loss, fmt, regime), tuple(impls)))
    chunks = [_Chunk(f"{loss} {fmt}", tuple(groups)) for (loss, fmt), groups in steps.items()]
    selected = []
    for case in _selected_corpus(config, corpus):
        impls = _implementations(config, case.loss.name, case.format.name, result)
        if impls:
            selected.append((case, tuple(impls)))
    if selected:
        chunks.append(_Chunk(f"corpus ({len(selected)} cases)", corpus=tuple(selected)))
    return chunks


@contextlib.contextmanager
def _pool(jobs: int) -> Iterator[Callable[..., Any]]:
    """A ``submit(fn, arg)`` that runs ``fn(arg)`` in one of ``jobs`` forked processes that
    ignore SIGINT and die with this one (``concurrent.futures``: a process that dies
    breaks the pool, it does not hang it) and returns its future; for one job, or where
    processes cannot fork, the work is done here when its result is asked for."""
    if jobs == 1 or "fork" not in multiprocessing.get_all_start_methods():
        yield _Later
        return
    from concurrent.futures import ProcessPoolExecutor

    pool = ProcessPoolExecutor(jobs, multiprocessing.get_context("fork"),
                               initializer=_pool_process, initargs=(os.getpid(),))  # fmt: skip
    try:
        yield pool.submit
    finally:
        # idle processes end when told; busy ones (an interrupt) and those of a pool broken
        # by a process that died (they wait for work that will not come) are stopped
        processes = list((getattr(pool, "_processes", None) or {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        deadline = time.monotonic() + POOL_GRACE
        for process in processes:
            process.join(max(0.0, deadline - time.monotonic()))
        for process in processes:
            if process.is_alive():
                process.kill()
                process.join()


class _Later:
    """A future that does its work in this process when its result is asked for."""

    def __init__(self, fn: Callable[[Any], Any], arg: Any) -> None:
        self.fn, self.arg = fn, arg

    def result(self) -> Any:
        return self.fn(self.arg)


def _pool_process(parent: int) -> None:
    _signals.child_signals()
    _signals.die_with_parent(parent)


def _prepare(task: tuple[Any, ...]) -> tuple[list[Case], list[Case], dict[str, Any], float]:
    """A group's drawn cases and search candidates (none already drawn), or a corpus case,
    with the oracle's answer for each in a form that crosses processes (``to_state``, or
    why it gave up), and the seconds drawing took."""
    if len(task) == 2:
        (case, grad), drawn, more, seconds = task, [task[0]], [], 0.0
    else:
        loss, fmt, regime, examples, search, seed, grad = task
        start = time.perf_counter()
        drawn = draw_cases(loss, fmt, regime, examples, seed)
        ids = {case.id for case in drawn}
        more = draw_cases(loss, fmt, regime, search, seed, "search") if search else []
        more = [c for c in more if c.id not in ids]
        seconds = time.perf_counter() - start
    answers: dict[str, Any] = {}
    for case in drawn + more:
        try:
            answers[case.id] = to_state(cached(case, grad))
        except PrecisionLimitReached as exc:
            answers[case.id] = f"{case.id}: {exc}"
    return drawn, more, answers, seconds


def _measure(
    chunk: _Chunk,
    config: AuditConfig,
    runners: Runners,
    prepared: list[tuple[list[Case], list[Case], dict[str, Any], float]],
    into: AuditResult,
    step: Callable[[str, float], None],
) -> None:
    """Measure one step from its ``prepared`` cases and oracle answers (``_prepare``): call
    every implementation on the cases it takes (batched, ``Runners.run_jobs``), and add the
    rows, group by group and case by case, implementations in order; of a group's search
    candidates, each implementation keeps its worst (origin ``search``)."""
    # 1. the cases: (origin, case, implementations) per group, in order, and their answers
    owners = [(impls, "drawn") for _, impls in chunk.groups]
    owners += [(impls, "corpus") for _, impls in chunk.corpus]
    planned: list[list[tuple[str, Case, tuple[Implementation, ...]]]] = []
    exact: dict[str, OracleResult] = {}
    for (impls, origin), (drawn, searched, answers, seconds) in zip(owners, prepared):
        into.spent("draw", seconds)
        planned.append([(origin, c, impls) for c in drawn]
                       + [("search", c, impls) for c in searched])  # fmt: skip
        for case in drawn + searched:
            if case.id in exact or not any(impl.takes(case) for impl in impls):
                continue
            state = answers[case.id]
            if isinstance(state, str):
                into.oracle_failures.append(state)
                continue
            exact[case.id] = from_state(state, case)
            _count(into, exact[case.id])
    # 3. the calls: per implementation, every case it takes, batched
    wanted: dict[tuple[str, str], tuple[Implementation, dict[str, Case]]] = {}
    for cases in planned:  # an implementation is a name and a loss (the corpus mixes them)
        for _, case, impls in cases:
            for impl in impls:
                if case.id in exact and impl.takes(case):
                    key = (impl.name, impl.loss)
                    wanted.setdefault(key, (impl, {}))[1].setdefault(case.id, case)
    jobs = [(impl, list(cases.values())) for impl, cases in wanted.values()]
    outcomes: dict[tuple[str, str, str], Outcome] = {}
    before, calls, called_so_far = runners.seconds(), sum(len(c) for _, c in jobs) or 1, 0

    def starting(index: int, fresh: bool) -> None:
        impl, cases = jobs[index]
        what = f"starting {impl.library}, " if fresh else ""
        step(f"{what}calling {impl.name} on {len(cases)} cases",
             0.3 + 0.6 * called_so_far / calls)  # fmt: skip

    for index, answers in runners.run_jobs(jobs, config.grad, starting):
        impl, called = jobs[index]
        called_so_far += len(called)
        for case, outcome in zip(called, answers):
            outcomes[impl.name, impl.loss, case.id] = outcome
    for kind, seconds in runners.seconds().items():
        into.spent(kind, seconds - before.get(kind, 0.0))
    # 4. the rows, in order
    step("measuring", 0.9)
    for cases in planned:
        worst: dict[str, tuple[float, Case, list[dict[str, Any]]]] = {}
        for origin, case, impls in cases:
            for impl in impls:
                outcome = outcomes.get((impl.name, impl.loss, case.id))
                if outcome is None:
                    continue
                if outcome.status == UNSUPPORTED:
                    into.turned_down(impl.name, case.format.name, outcome.note)
                    continue
                rows = _measured(into, impl, case, exact[case.id], outcome, config, origin)
                if origin == "search":
                    score = max(map(findings_score, rows))
                    if impl.name not in worst or score > worst[impl.name][0]:
                        worst[impl.name] = (score, case, rows)
                    continue
                into.cases[case.id] = case
                into.rows.extend(rows)
        for impl in cases[-1][2] if worst else ():
            if impl.name in worst:
                _, case, rows = worst[impl.name]
                into.cases[case.id] = case
                into.rows.extend(rows)


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
