"""``check``: assert that one loss function is accurate, with hypothesis shrinking failures.

This is the engine of the pytest plugin, and it works without pytest::

    from stabcheck.check import check

    check(my_softmax_ce, "sparse_softmax_cross_entropy_with_logits",
          formats=["float32", "bfloat16"], backend="torch", grad=True)

For each format and regime a hypothesis run draws ``examples`` cases (targeting the bits of
error), calls the function in this process through ``stabcheck.implementations.backends``
and measures every output against the exact oracle. A case fails when one of its outputs
has a status other than ``ok`` and not in ``allow``. If any failed, the most serious
group is run again from the same seed, now failing on that status, so that hypothesis
shrinks it to a minimal case (cut to its failing row when that fails alone); ``check``
then raises ``StabcheckFailure`` (an ``AssertionError``) whose message gives the counts per
group and status, the shrunk case with its exact and returned values, ULPs and condition
number, and a reproduction. The user's function runs in this process; what it raises is
status ``error``, reported with its traceback as the failure's cause. Outcomes are cached
per case, so a replay never calls the function twice on one case (nothing is "flaky").

Hypothesis settings: ``settings`` (or the loaded profile) supplies the example database,
verbosity and phases; ``examples`` (else ``settings.max_examples`` of an explicit
``settings``, else ``DEFAULT_EXAMPLES``) the number of cases per group; deadlines and
health checks are off. Seeds are explicit, per group, derived from ``seed``; without one
a random seed is drawn (and printed on failure), except under CI (``CI`` set) or with a
derandomized profile, where the seed is 0 and the database is not used. A shrunk failure
is saved to the database and replayed first on the next run (also by a check that then
draws no failing case: "replayed from the example database").
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from stabcheck import _validation as validate
from stabcheck._validation import integer
from stabcheck.case import Case, check_param
from stabcheck.errors import InvalidArgument, StabcheckError
from stabcheck.findings import group as group_findings
from stabcheck.findings import score as row_score
from stabcheck.formats import get_format
from stabcheck.implementations import (
    USER_CHOICES,
    Implementation,
    keywords,
    load_user,
    options_taken,
)
from stabcheck.losses import LossSpec, ParamKind, get_loss, get_param
from stabcheck.measure import DEFAULT_MAX_ULPS, ERROR, OK, SEVERITY

__all__ = [
    "DEFAULT_EXAMPLES",
    "DEFAULT_FORMATS",
    "CheckResult",
    "GroupResult",
    "StabcheckFailure",
    "check",
    "check_record",
    "write_session_report",
]

DEFAULT_EXAMPLES = 30  # cases per format and regime: a loss in one format in about a second
DEFAULT_FORMATS = ("float64", "float32")
SHRINK_BUDGET = 300  # new cases the shrinker may evaluate; past it, unseen cases pass
SHOWN_GROUPS = 8  # failing groups listed in a message before "... and N more"
_PACKAGE = str(Path(__file__).resolve().parent)


class StabcheckFailure(StabcheckError, AssertionError):
    """A check found inaccurate results; ``result`` holds every measurement."""

    def __init__(self, message: str, result: CheckResult) -> None:
        super().__init__(message)
        self.result = result


# -- results --------------------------------------------------------------------------------


@dataclass
class Finding:
    """One failing case: the case, its worst failing measurement (a row of
    ``stabcheck.audit.COLUMNS``), how it was found, and what the function raised."""

    case: Case
    row: dict[str, Any]
    how: str = "not shrunk"  # or "shrunk by hypothesis", "replayed from the example database"
    error: BaseException | None = None

    @property
    def shrunk(self) -> bool:
        """Whether hypothesis shrank it (now or in the run that saved it to the database)."""
        return not self.how.endswith("not shrunk")


@dataclass
class GroupResult:
    """The cases of one format and regime: how many, how many failed and how."""

    format: str
    regime: str
    cases: int = 0
    outputs: int = 0
    failed_cases: int = 0
    failed_outputs: int = 0
    statuses: dict[str, int] = field(default_factory=dict)  # failing cases by worst status
    allowed: dict[str, int] = field(default_factory=dict)  # outputs with an allowed status
    oracle_gave_up: int = 0
    finding: Finding | None = None

    @property
    def passed(self) -> bool:
        return self.finding is None

    @property
    def worst(self) -> str:
        return max(self.statuses, key=SEVERITY.__getitem__, default=OK)


@dataclass
class CheckResult:
    """Everything one ``check`` measured: per group counts, the rows (columns of
    ``stabcheck.audit.COLUMNS``) and the cases they refer to."""

    name: str
    loss: str
    backend: str
    grad: bool
    formats: tuple[str, ...]
    regimes: tuple[str, ...]
    examples: int
    seed: int
    max_ulps: float
    allow: tuple[str, ...]
    groups: list[GroupResult] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    cases: dict[str, Case] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return all(group.passed for group in self.groups)

    @property
    def failed_groups(self) -> list[GroupResult]:
        """The failing groups, most serious first."""
        failed = [g for g in self.groups if not g.passed]
        return sorted(failed, key=_group_rank, reverse=True)

    def summary(self) -> str:
        """A table of every group: cases, failures and statuses."""
        lines = [
            f"{self.name} on {self.loss} ({self.backend}, {self._what()}): "
            f"{'passed' if self.passed else 'FAILED'} in {self.seconds:.1f} s, seed {self.seed}"
        ]
        table = [["format", "regime", "failed cases", "failed outputs", "statuses"]]
        for g in self.groups:
            how = _counts(g.statuses) or "ok"
            if g.allowed:
                how += f" (allowed: {_counts(g.allowed)})"
            table.append([g.format, g.regime, _ratio(g.failed_cases, g.cases),
                          _ratio(g.failed_outputs, g.outputs), how])  # fmt: skip
        return "\n".join(lines + _aligned(table, indent=2))

    def message(self) -> str:
        """The failure message: counts, the worst case shrunk, a reproduction."""
        failed = self.failed_groups
        cases = sum(g.cases for g in self.groups)
        bad = sum(g.failed_cases for g in self.groups)
        lines = [
            f"{self.name} is not accurate for {self.loss} ({self.backend} backend, {self._what()})",
            f"Failed cases: {_ratio(bad, cases)} in {len(failed)} of {len(self.groups)} "
            "format x regime groups",
        ]
        table = [["format", "regime", "failed cases", "failed outputs", "how"]]
        for g in failed[:SHOWN_GROUPS]:
            how = _counts(g.statuses) or f"{g.finding.row['status']} (from the example database)"
            if g.allowed:
                how += f"; allowed: {_counts(g.allowed)}"
            table.append([g.format, g.regime, _ratio(g.failed_cases, g.cases),
                          _ratio(g.failed_outputs, g.outputs), how])  # fmt: skip
        lines += _aligned(table, indent=2)
        if len(failed) > SHOWN_GROUPS:
            lines.append(f"  ... and {len(failed) - SHOWN_GROUPS} more failing groups")
        lines += self._findings()
        worst = failed[0]
        lines += ["", *_describe(worst)]
        others = [g for g in failed[1:SHOWN_GROUPS] if g.finding is not None]
        if others:
            lines += ["", "Other failing groups, the worst output of each (one row or element "
                      "of a drawn case, not shrunk):"]  # fmt: skip
            for g in others:
                assert g.finding is not None
                unit = _unit(g.finding)
                lines.append(
                    f"  {g.format} {g.regime}: {g.finding.row['status']} "
                    f"{_where(g.finding.row)}: {_oracle_line(unit, g.finding.row)}"
                )
        allowed = ", ".join(self.allow) if self.allow else "none"
        lines += [
            "",
            f"Tolerance: {self.max_ulps:g} ULPs, or a relative error of {self.max_ulps:g} eps x "
            f"max(1, condition number); allowed statuses: {allowed}.",
            f"Seed {self.seed}: pass seed={self.seed} (or --stabcheck-seed={self.seed}) to draw "
            "the same cases.",
        ]
        return "\n".join(lines)

    def _findings(self) -> list[str]:
        """The distinct problems behind the failures (``stabcheck.findings``), worst first,
        one line each, with IDs that an audit or a gate of the same function shares."""
        rows = [r for r in self.rows if r["status"] not in self.allow]
        found = group_findings(rows, self.cases)
        if not found:
            return []
        lines = ["", "Findings (distinct problems, worst first):"]
        for f in found[:SHOWN_GROUPS]:
            formats = ", ".join(sorted(f.formats))
            lines.append(f"  {f.id} {f.failure} in the {f.quantity}, with {f.feature} "
                         f"({formats}; {len(f.rows)} outputs)")  # fmt: skip
        if len(found) > SHOWN_GROUPS:
            lines.append(f"  ... and {len(found) - SHOWN_GROUPS} more")
        return lines

    def _what(self) -> str:
        return "values and gradients" if self.grad else "values"


def _group_rank(g: GroupResult) -> tuple[int, int]:
    status = g.finding.row["status"] if g.finding is not None else g.worst
    return SEVERITY.get(status, 0), g.failed_cases


def _counts(counts: Mapping[str, int]) -> str:
    ordered = sorted(counts, key=lambda s: (-SEVERITY[s], s))
    return ", ".join(f"{s} {counts[s]}" for s in ordered)


def _ratio(part: int, whole: int) -> str:
    return f"{part} / {whole} ({100 * part / whole:.1f}%)" if whole else f"{part} / 0"


def _aligned(rows: list[list[str]], indent: int) -> list[str]:
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    pad = " " * indent
    return [pad + "  ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip() for row in rows]


def _where(row: dict[str, Any]) -> str:
    quantity = row["quantity"]
    name = {"value": "loss", "gradient": "gradient"}.get(quantity)
    if name is None:  # gradient[operand]
        name = f"gradient of {quantity.removeprefix('gradient[').removesuffix(']')}"
    return f"{name}[{row['index']}]" if row.get("index", "") != "" else name


def _unit(finding: Finding) -> Case:
    """The case of the row or element a finding's row measured; a gradient with respect
    to an operand (W, b) sums over every row, so it is the whole case."""
    row = finding.row
    if row.get("index", "") == "" or row["quantity"] not in ("value", "gradient"):
        return finding.case
    index = tuple(int(i) for i in str(row["index"]).split(","))
    if row["quantity"] == "gradient" and finding.case.loss.rowwise:
        index = index[:1]
    return finding.case.unit(index)


def _oracle_line(case: Case, row: dict[str, Any]) -> str:
    return case.cli() + (" --grad" if row["quantity"] != "value" else "")


def _num(x: Any) -> str:
    x = float(x)
    return f"{x!r} ({x.hex()})" if math.isfinite(x) else repr(x)


def _describe(group: GroupResult) -> list[str]:
    finding = group.finding
    assert finding is not None
    row = finding.row
    lines = [
        f"Worst case ({group.format}, regime {group.regime!r}, {finding.how}): "
        f"{_where(row)}: {row['status']}"
    ]
    if row["status"] in (ERROR, "timeout"):
        lines.append(f"  error       {row['note']}")
    else:
        lines += [
            f"  exact       {row['exact']}",
            f"  expected    {_num(row['expected'])}  (the exact value correctly rounded)",
            f"  returned    {_num(row['got'])}",
            f"  ULPs        {row['ulps']:.4g}  ({row['bits']:.3g} bits of error, relative "
            f"error {row['relative_error']:.3g})",
            f"  condition   {row['condition']:.4g}",
        ]
        if row.get("note"):
            lines.append(f"  note        {row['note']}")
    data = finding.case.to_dict()
    lines += [f"  predictions {_compact(data['predictions'])}", f"  labels      "
              f"{_compact(data['labels'])}"]  # fmt: skip
    if data["params"]:
        lines.append(f"  params      {_compact(data['params'])}")
    lines += [
        "Reproduce (hex floats are exact):",
        f"  {_oracle_line(finding.case, row)}",
        f"  Case.from_json({finding.case.to_json()!r})  # from stabcheck.case import Case",
    ]
    return lines


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


# -- arguments ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Plan:
    impl: Implementation
    spec: LossSpec
    formats: tuple[str, ...]
    regimes: tuple[str, ...]
    grad: bool
    examples: int
    seed: int
    derandomized: bool
    max_ulps: float
    allow: frozenset[str]
    params: Mapping[str, float]
    max_rows: int
    max_classes: int
    settings: Any


def _callable_name(fn: Any) -> str:
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    if module and qualname:
        return f"{module}:{qualname}"
    kind = type(fn)
    return f"{kind.__module__}:{kind.__qualname__}()"  # a callable object, e.g. a torch Module


def _as_tuple(name: str, value: Any) -> tuple[Any, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        value = (value,)
    out = tuple(value)
    if not out:
        raise InvalidArgument(f"{name}=() is empty; give at least one")
    return out


def _plan(
    fn: Any,
    loss: Any,
    formats: Any,
    backend: Any,
    grad: Any,
    grad_fn: Any,
    regimes: Any,
    examples: Any,
    seed: Any,
    max_ulps: Any,
    allow: Any,
    params: Any,
    max_rows: Any,
    max_classes: Any,
    settings: Any,
    name: Any,
) -> _Plan:
    """Every argument checked up front; each error names the argument and the fix."""
    from hypothesis import settings as Settings

    from stabcheck.strategies import get_regime, regimes_for

    spec = get_loss(loss)
    fmts = tuple(dict.fromkeys(get_format(f).name for f in _as_tuple("formats", formats)))
    backend = validate.backend(backend)
    grad = validate.gradient(grad, grad_fn, backend)
    if name is not None and (not isinstance(name, str) or not name):
        raise InvalidArgument(f"name={name!r} must be a non-empty string")
    if isinstance(fn, str):
        impl = load_user(fn, spec.name, backend)
    elif callable(fn):
        impl = Implementation(
            name=name or _callable_name(fn),
            loss=spec.name,
            fn=fn,
            backend=backend,
            library=(getattr(fn, "__module__", None) or "user").split(".")[0],
            params=options_taken(spec.name, keywords(fn)),
            choices=USER_CHOICES,
        )
    else:
        raise InvalidArgument(
            f"fn={fn!r} is not callable; pass the loss function fn(predictions, labels, "
            "**params), or a 'module:function' string"
        )
    if name is not None:
        impl = replace(impl, name=name)
    allowed = validate.statuses("allow", allow)
    impl = replace(
        impl,
        grad=grad_fn,
        documented={s: "allowed by the check" for s in sorted(allowed)},
    )
    fixed = _fixed_params(spec, params)
    impl = replace(  # what the caller fixes, the function takes
        impl,
        params=tuple(dict.fromkeys((*(impl.params or ()), *fixed))),
        choices={k: (*v, fixed[k]) if k in fixed else v for k, v in impl.choices.items()},
    )
    if "weight" in fixed:
        max_classes = len(fixed["weight"])  # cases of as many classes as weights
    applicable = regimes_for(spec)
    if regimes is None:  # not the large ones, nor the regime of an option fixed or not taken
        chosen = [r for r in applicable if r != "wide" and get_regime(r).audited
                  and r not in fixed and (r not in spec.params or r in impl.params)]  # fmt: skip
    elif regimes == "all":
        chosen = list(applicable)
    else:
        chosen = []
        for regime in _as_tuple("regimes", regimes):
            reg = get_regime(regime).name
            if reg not in applicable:
                raise InvalidArgument(
                    f"regimes={regime!r} does not apply to {spec.name}; the regimes that do: "
                    f"{', '.join(applicable)} (or regimes='all')"
                )
            chosen.append(reg)
    if settings is not None and not isinstance(settings, Settings):
        raise InvalidArgument(
            f"settings={settings!r} is not a hypothesis.settings; pass settings(...) or None"
        )
    parent = settings if settings is not None else Settings.default
    if examples is None:
        examples = settings.max_examples if settings is not None else DEFAULT_EXAMPLES
    examples = integer("examples", examples)
    max_ulps = validate.max_ulps(max_ulps)
    derandomized = bool(parent.derandomize or os.environ.get("CI"))
    if seed is None:
        seed = 0 if derandomized else random.SystemRandom().randrange(2**32)
    elif isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InvalidArgument(f"seed={seed!r} must be a non-negative integer (or None)")
    return _Plan(
        impl=impl,
        spec=spec,
        formats=fmts,
        regimes=tuple(dict.fromkeys(chosen)),
        grad=grad,
        examples=examples,
        seed=int(seed),
        derandomized=derandomized,
        max_ulps=float(max_ulps),
        allow=allowed,
        params=fixed,
        max_rows=integer("max_rows", max_rows),
        max_classes=integer("max_classes", max_classes),
        settings=parent,
    )


def _fixed_params(spec: LossSpec, params: Any) -> dict[str, Any]:
    """The options ``params`` fixes, each checked against its spec (class weights' length
    against the cases when they are built)."""
    if params is None:
        return {}
    if not isinstance(params, Mapping):
        raise InvalidArgument(
            f"params={params!r} must be a dict such as {{'label_smoothing': 0.1}}"
        )
    out = {}
    for key, value in params.items():
        if key not in spec.params:
            takes = ", ".join(spec.params) or "no parameters"
            raise InvalidArgument(f"params has {key!r}, but {spec.name} takes {takes}")
        param = get_param(key)
        classes = len(np.atleast_1d(value)) if param.kind is ParamKind.VECTOR else 1
        out[key] = check_param(param, value, get_format("float64"), classes)
    return out


# -- the check ------------------------------------------------------------------------------


def check(
    fn: Callable[..., Any] | str,
    loss: str,
    *,
    formats: str | Sequence[str] = DEFAULT_FORMATS,
    backend: str = "numpy",
    grad: bool = False,
    grad_fn: Callable[..., Any] | None = None,
    regimes: str | Sequence[str] | None = None,
    examples: int | None = None,
    seed: int | None = None,
    max_ulps: float = DEFAULT_MAX_ULPS,
    allow: str | Iterable[str] = (),
    params: Mapping[str, float] | None = None,
    max_rows: int = 3,
    max_classes: int = 8,
    settings: Any = None,
    name: str | None = None,
) -> CheckResult:
    """Check ``fn`` on ``loss`` against the exact oracle; raise ``StabcheckFailure`` if a
    case fails, else return the ``CheckResult``.

    ``fn(predictions, labels, **params)`` returns the unreduced losses as arrays of
    ``backend`` (numpy, torch, tensorflow, jax); it may also be a ``"module:function"``
    string. ``grad`` also measures d(sum of losses)/d(predictions), from the backend's
    autodiff or, for numpy, from ``grad_fn``. ``regimes``: names from
    ``stabcheck.strategies.REGIMES``; by default every regime that applies to the loss
    except ``wide`` (rows of up to 131,072 classes) and the linear losses' large shapes,
    ``vocabulary`` and ``long_sequence``: ask for them by name, or ``"all"``; they draw at
    most 2, 4 and 4 cases. ``examples`` cases per format and regime (default 30, or the
    ``max_examples`` of an explicit ``settings``). An output is ok within ``max_ulps``
    ULPs, or a relative error of ``max_ulps`` eps x max(1, condition number); statuses in
    ``allow`` (e.g. ``{"clipped"}`` for documented clipping) are accepted. ``params`` fixes
    loss parameters (e.g. ``pos_weight``) instead of drawing them; ``max_rows`` and
    ``max_classes`` bound the drawn arrays. ``name`` labels the function in messages and
    reports (default ``module:qualname``).
    """
    __tracebackhide__ = True
    try:
        plan = _plan(fn, loss, formats, backend, grad, grad_fn, regimes, examples, seed,
                     max_ulps, allow, params, max_rows, max_classes, settings, name)  # fmt: skip
    except StabcheckError as exc:  # raised from here, so the traceback ends at the caller
        error = exc.with_traceback(None)
    else:
        error = None
    if error is not None:
        raise error
    result = _run(plan)
    if result.passed:
        return result
    worst = result.failed_groups[0].finding
    cause = _user_traceback(worst.error) if worst is not None else None
    raise StabcheckFailure(result.message(), result) from cause


def _run(plan: _Plan) -> CheckResult:
    start = time.perf_counter()
    result = CheckResult(
        name=plan.impl.name,
        loss=plan.spec.name,
        backend=plan.impl.backend,
        grad=plan.grad,
        formats=plan.formats,
        regimes=plan.regimes,
        examples=plan.examples,
        seed=plan.seed,
        max_ulps=plan.max_ulps,
        allow=tuple(sorted(plan.allow)),
    )
    groups = []
    for fmt in plan.formats:
        for regime in plan.regimes:
            groups.append(_Group(plan, fmt, regime))
    for group in groups:
        group.survey()
    failing = [g for g in groups if g.result.failed_cases]
    if failing:
        worst = max(failing, key=lambda g: _group_rank(g.result))
        worst.shrink()
    for group in groups:
        if not group.result.failed_cases:
            group.shrink(replay_only=True)  # a failure saved by an earlier run, if any
    for group in groups:
        result.groups.append(group.result)
        result.rows.extend(group.rows())
        result.cases.update(group.cases())
    result.seconds = time.perf_counter() - start
    return result


# -- one format and regime ------------------------------------------------------------------


@dataclass
class _Evaluated:
    case: Case
    rows: list[dict[str, Any]]
    failing: set[str]  # statuses outside ok and allow
    score: float
    error: BaseException | None = None


_REJECTED = object()  # the oracle gave up on the case
_SKIPPED = object()  # past the shrink budget: not evaluated, treated as passing


class _Reproduced(Exception):
    """Raised inside hypothesis so that it shrinks the case."""

    def __init__(self, evaluated: _Evaluated) -> None:
        super().__init__(evaluated.case.id)
        self.evaluated = evaluated


class _Group:
    """The hypothesis runs of one format and regime, and what they found."""

    def __init__(self, plan: _Plan, fmt: str, regime: str) -> None:
        from stabcheck.audit import AuditConfig, group_seed
        from stabcheck.strategies import get_regime

        self.plan, self.fmt, self.regime = plan, fmt, regime
        self.result = GroupResult(fmt, regime)
        self.seed = group_seed(plan.seed, plan.spec.name, fmt, regime)
        self.examples = min(plan.examples, get_regime(regime).max_examples or plan.examples)
        self.config = AuditConfig(grad=plan.grad, max_ulps=plan.max_ulps)
        self.cache: dict[str, Any] = {}
        self.drawn: dict[str, _Evaluated] = {}
        self.shrunk: _Evaluated | None = None
        key = ":".join(map(str, ("stabcheck", plan.impl.name, plan.impl.backend, plan.spec.name,
                                 fmt, regime, plan.grad, dict(plan.params))))  # fmt: skip
        self.database_key = hashlib.sha256(key.encode()).hexdigest().encode()

    # -- hypothesis -----------------------------------------------------------------------

    def _strategy(self) -> Any:
        from stabcheck.strategies import cases

        strategy = cases(self.plan.spec, self.fmt, self.regime, max_rows=self.plan.max_rows,
                         max_classes=self.plan.max_classes)  # fmt: skip
        if self.plan.params:
            fixed = dict(self.plan.params)

            def with_fixed(c: Case) -> Case | None:
                try:
                    return Case.build(c.loss, c.predictions, c.labels, format=c.format,
                                      regime=c.regime, **c.operands,
                                      **{**c.params, **fixed})  # fmt: skip
                except InvalidArgument:  # e.g. fixed class weights for another number of classes
                    return None

            strategy = strategy.map(with_fixed).filter(lambda c: c is not None)
        return strategy

    def _settings(self, database: Any, phases: Iterable[Any]) -> Any:
        from hypothesis import HealthCheck, settings

        return settings(
            self.plan.settings,
            max_examples=self.examples,
            deadline=None,
            derandomize=False,  # the seed is explicit (see check's docstring)
            database=database,
            phases=tuple(phases),
            report_multiple_bugs=False,
            suppress_health_check=list(HealthCheck),
        )

    def _database(self) -> Any:
        return None if self.plan.derandomized else self.plan.settings.database

    def _execute(self, test: Any, settings: Any) -> None:
        """Run the ``@given`` test from this group's seed, with ``settings`` applied after
        ``@seed`` (which would turn the database off) and the group's database key."""
        from hypothesis import Verbosity, seed
        from hypothesis.reporting import with_reporter

        from stabcheck.strategies import independent_of_imports

        test = settings(seed(self.seed)(test))
        test._hypothesis_internal_database_key = self.database_key
        with independent_of_imports():
            if self.plan.settings.verbosity >= Verbosity.verbose:
                test()
                return
            with with_reporter(lambda _: None):
                test()

    def _phases(self, *wanted: Any) -> list[Any]:
        """``wanted`` less the phases the settings turn off (generation is always on)."""
        from hypothesis import Phase

        allowed = set(self.plan.settings.phases) | {Phase.generate}
        return [phase for phase in wanted if phase in allowed]

    def survey(self) -> None:
        """Draw the cases and count the failures, raising nothing. The database is only
        written to (hypothesis keeps the targeted pareto front there), never replayed, so
        that ``shrink`` draws the same cases from the same seed."""
        from hypothesis import Phase, assume, given, target
        from hypothesis.errors import Unsatisfiable

        @given(self._strategy())
        def survey(case: Case) -> None:
            evaluated = self._evaluate(case)
            assume(isinstance(evaluated, _Evaluated))
            self.drawn.setdefault(case.id, evaluated)
            target(evaluated.score, label="bits of error")

        phases = self._phases(Phase.generate, Phase.target)
        try:
            self._execute(survey, self._settings(self._database(), phases))
        except Unsatisfiable:
            pass  # the oracle gave up on every case: counted below
        self._count()

    def database_has_failures(self) -> bool:
        database = self._database()
        if database is None:
            return False
        try:
            return any(True for _ in database.fetch(self.database_key))
        except Exception:  # an unreadable database is hypothesis's to report, not ours
            return False

    def shrink(self, replay_only: bool = False) -> None:
        """Find a minimal case failing with the group's worst status (any failing status
        with ``replay_only``): first by replaying the example database, then (unless
        ``replay_only``) by drawing again from the survey's seed, failing this time, so
        that hypothesis shrinks the first such case. Failing that, the worst drawn case."""
        from hypothesis import Phase

        wanted = None if replay_only else self.result.worst
        how = ""
        if Phase.reuse in self.plan.settings.phases and self.database_has_failures():
            self._shrink(wanted, self._phases(Phase.reuse, Phase.shrink))
            how = "replayed from the example database"
        if self.shrunk is None and not replay_only:
            self._shrink(wanted, self._phases(Phase.generate, Phase.target, Phase.shrink))
            how = "shrunk by hypothesis"
        if self.shrunk is None and not replay_only:
            drawn = [e for e in self.drawn.values() if wanted in e.failing]
            if drawn:
                self.shrunk = max(drawn, key=lambda e: e.score)
                how = "not shrunk"
        if self.shrunk is not None:
            self.shrunk, cut = self._cut(self.shrunk, wanted)
            if cut and how == "not shrunk":
                how = "one row of a drawn case, not shrunk"
            self._finding(wanted, how)

    def _shrink(self, wanted: str | None, phases: list[Any]) -> None:
        from hypothesis import assume, given, target
        from hypothesis.errors import HypothesisException

        spent = [0]

        @given(self._strategy())
        def replay(case: Case) -> None:
            evaluated = self.cache.get(case.id)
            if evaluated is None:
                if spent[0] >= SHRINK_BUDGET:
                    self.cache[case.id] = evaluated = _SKIPPED
                else:
                    spent[0] += 1
                    evaluated = self._evaluate(case)
            assume(evaluated is not _REJECTED)
            if evaluated is _SKIPPED:
                return
            target(evaluated.score, label="bits of error")
            if (wanted in evaluated.failing) if wanted else evaluated.failing:
                raise _Reproduced(evaluated)

        try:
            self._execute(replay, self._settings(self._database(), phases))
        except _Reproduced as found:
            self.shrunk = found.evaluated
        except HypothesisException:
            pass  # e.g. flaky: the caller falls back to the worst drawn case

    def _cut(self, evaluated: _Evaluated, wanted: str | None) -> tuple[_Evaluated, bool]:
        """The one row (or element) of ``evaluated`` that fails, if it fails alone."""
        rows = [r for r in evaluated.rows if r["status"] in evaluated.failing]
        rows = [r for r in rows if wanted is None or r["status"] == wanted] or rows
        row = max(rows, key=row_score)
        if row.get("index", "") == "":
            return evaluated, False
        unit = _unit(Finding(evaluated.case, row))
        if unit.id == evaluated.case.id:
            return evaluated, False
        alone = self._evaluate(unit)
        if isinstance(alone, _Evaluated) and (wanted in alone.failing if wanted else alone.failing):
            return alone, True
        return evaluated, False

    # -- evaluation -----------------------------------------------------------------------

    def _evaluate(self, case: Case) -> Any:
        cached = self.cache.get(case.id)
        if cached is not None:
            return cached
        from stabcheck.audit import _rows
        from stabcheck.errors import PrecisionLimitReached
        from stabcheck.oracle.cache import cached
        from stabcheck.runner import Outcome, invoke

        if not self.plan.impl.takes(case):  # an option the function has no argument for
            self.cache[case.id] = _REJECTED
            return _REJECTED
        try:
            exact = cached(case, self.plan.grad)
        except PrecisionLimitReached:
            self.cache[case.id] = _REJECTED
            return _REJECTED
        error = None
        try:
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                outcome = invoke(self.plan.impl, case, self.plan.grad)
        except Exception as exc:  # the failure is the finding
            error = exc
            outcome = Outcome(status=ERROR, note=f"{type(exc).__name__}: {exc}"[:500])
        rows = list(_rows(self.plan.impl, case, exact, outcome, self.config, "drawn"))
        if self.plan.grad and outcome.values is not None and outcome.gradient is None:
            rows.append({**rows[0], "quantity": "gradient", "index": "", "status": ERROR,
                         "ulps": None, "bits": None, "relative_error": None, "condition": None,
                         "exact": None, "expected": None, "got": None,
                         "note": "no gradient: the loss does not depend on the predictions "
                                 "through the backend's autodiff"})  # fmt: skip
        failing = {r["status"] for r in rows if r["status"] != OK} - self.plan.allow
        evaluated = _Evaluated(case, rows, failing, _score(rows, self.plan.allow), error)
        self.cache[case.id] = evaluated
        return evaluated

    def _count(self) -> None:
        g = self.result
        g.cases = len(self.drawn)
        g.oracle_gave_up = sum(1 for v in self.cache.values() if v is _REJECTED)
        for evaluated in self.drawn.values():
            g.outputs += len(evaluated.rows)
            for row in evaluated.rows:
                status = row["status"]
                if status in evaluated.failing:
                    g.failed_outputs += 1
                elif status != OK:
                    g.allowed[status] = g.allowed.get(status, 0) + 1
            if evaluated.failing:
                g.failed_cases += 1
                worst = max(evaluated.failing, key=SEVERITY.__getitem__)
                g.statuses[worst] = g.statuses.get(worst, 0) + 1
        if g.failed_cases:
            self._finding(None)

    def _finding(self, wanted: str | None, how: str = "not shrunk") -> None:
        """The shrunk case if there is one, else the worst drawn case."""
        chosen = self.shrunk
        if chosen is None:
            candidates = [e for e in self.drawn.values() if e.failing]
            if not candidates:
                return
            chosen = max(candidates, key=lambda e: e.score)
        status = wanted if wanted in chosen.failing else None
        row = max(
            (r for r in chosen.rows if r["status"] in chosen.failing
             and (status is None or r["status"] == status)),
            key=row_score,
        )  # fmt: skip
        self.result.finding = Finding(chosen.case, row, how, chosen.error)

    def rows(self) -> list[dict[str, Any]]:
        out = [row for evaluated in self.drawn.values() for row in evaluated.rows]
        if self.shrunk is not None and self.shrunk.case.id not in self.drawn:
            out += [{**row, "origin": "shrunk"} for row in self.shrunk.rows]
        return out

    def cases(self) -> dict[str, Case]:
        out = {cid: evaluated.case for cid, evaluated in self.drawn.items()}
        if self.shrunk is not None:
            out[self.shrunk.case.id] = self.shrunk.case
        return out


def _score(rows: list[dict[str, Any]], allow: frozenset[str]) -> float:
    """Bits of error, failing statuses above any finite error, allowed statuses as ok."""
    best = 0.0
    for row in rows:
        if row["status"] == OK or row["status"] in allow:
            bits = row.get("bits")
            score = min(bits, 63.0) if bits is not None and math.isfinite(bits) else 0.0
        else:
            score = row_score(row)
        best = max(best, score)
    return best


def _user_traceback(error: BaseException | None) -> BaseException | None:
    """``error`` with its traceback starting at the first frame outside stabcheck (the
    user's function), or None if it was raised by stabcheck's own checks."""
    if error is None:
        return None
    tb = error.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename.startswith(_PACKAGE + os.sep):
        tb = tb.tb_next
    if tb is None:
        return None
    return error.with_traceback(tb)


# -- session report -------------------------------------------------------------------------


def write_session_report(
    checks: Sequence[Mapping[str, Any]],
    rows: Sequence[Mapping[str, Any]],
    cases: Mapping[str, Case],
    out: str | Path,
) -> list[Path]:
    """Write the measurements of a test session into the directory ``out``:
    ``measurements.csv`` (the audit's columns and the test's node id), ``cases.jsonl.gz``,
    ``summary.md`` (one line per check, then the audit's glance table and findings),
    ``findings.md`` and ``findings.csv`` (the findings with reproductions), ``tables.md`` and
    ``run.json``; as one set, replacing an earlier report there as a whole
    (``stabcheck._files.replace_files``)."""
    import pandas as pd

    from stabcheck._files import replace_files
    from stabcheck.audit import COLUMNS, AuditConfig, AuditResult
    from stabcheck.findings import group
    from stabcheck.report import REPORT_FILES, report_files, run_info, summary_markdown

    out = Path(out)
    audit = AuditResult(rows=[dict(r) for r in rows], cases=dict(cases))
    audit.findings = group(audit.rows, audit.cases)
    for finding in audit.findings:
        for position in finding.rows:
            audit.rows[position]["finding"] = finding.id
    frame = pd.DataFrame(audit.rows, columns=[*COLUMNS, "test"])
    config = AuditConfig(
        formats=sorted({f for c in checks for f in c["formats"]}) or None,
        grad=any(c["grad"] for c in checks),
        max_ulps=max((c["max_ulps"] for c in checks), default=DEFAULT_MAX_ULPS),
    )
    info = run_info(audit, config)
    failed = sum(1 for c in checks if not c["passed"])
    lines = [
        "# stabcheck session",
        "",
        f"{len(checks)} checks, {failed} failed; {len(frame)} measurements of {len(cases)} "
        "cases. Each check draws its own cases (seed per check).",
        "",
    ]
    table = [["test", "function", "loss", "backend", "formats", "regimes", "examples", "seed",
              "result", "seconds"]]  # fmt: skip
    for c in checks:
        table.append([f"`{c['test']}`", f"`{c['name']}`", c["loss"], c["backend"],
                      ", ".join(c["formats"]), ", ".join(c["regimes"]), c["examples"],
                      c["seed"], "passed" if c["passed"] else f"**failed** ({c['failed']})",
                      f"{c['seconds']:.1f}"])  # fmt: skip
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in table[:1]]
    lines += ["|" + " --- |" * len(table[0])]
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in table[1:]]
    audit_md = summary_markdown(frame, audit, config)
    start = audit_md.find("\n## ")
    body = audit_md[start + 1 :] if start >= 0 and not frame.empty else "No measurements.\n"
    summary = "\n".join(lines) + "\n\n" + body
    run = {"checks": list(checks), "versions": info["versions"]}
    files = report_files(frame, dict(cases), summary, json.dumps(run, indent=2, default=str),
                         audit.findings, audit.rows)  # fmt: skip
    return replace_files(out, files, REPORT_FILES)


def check_record(result: CheckResult, test: str = "") -> dict[str, Any]:
    """One check as plain data, for the session report (``run.json`` and ``summary.md``)."""
    failed = sum(g.failed_cases for g in result.groups)
    return {
        "test": test,
        "name": result.name,
        "loss": result.loss,
        "backend": result.backend,
        "grad": result.grad,
        "formats": list(result.formats),
        "regimes": list(result.regimes),
        "examples": result.examples,
        "seed": result.seed,
        "max_ulps": result.max_ulps,
        "allow": list(result.allow),
        "passed": result.passed,
        "failed": f"{failed} of {sum(g.cases for g in result.groups)} cases",
        "seconds": round(result.seconds, 2),
    }
