"""Measurements grouped into findings: distinct problems with stable IDs.

A finding is one implementation's failure of one kind on one quantity of one loss, under
one input feature: ``(implementation, loss, quantity, failure, feature)``. The failure is
the measurement's status (``number where the exact value is NaN`` for a finite answer to
an undefined loss); the feature is the first that ``features`` finds in the unit of the
failing output (its row, element, or the whole case when reduced), read from the case's
exact inputs and the exact result alone, never from the implementation: a ``+inf`` logit
under a zero label, a probability of exactly 0, an ignored row, more classes than the
format's largest value, an exact result below eps, a logit gap above ``log(max)``, an
option, or nothing at all (``ordinary inputs``). Its ID is a hash of that key, so the same
problem gets the same ID on every run, machine and seed that reaches it.

Severity comes in tiers: hard failures (nan, overflow, clipped, error, timeout) on finite
inputs first, then anything on non-finite inputs (a convention-level question), then
losses of accuracy. Some findings are shapes rather than points (``kind``): a ``clamp``
(the loss stops at one constant over a range of inputs), ``not monotone`` and ``order``
(found by ``investigate``, which also bisects onsets, shrinks cases and writes repros).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stabcheck.case import Case
from stabcheck.formats import Format, format_names
from stabcheck.losses import InputKind, LabelKind
from stabcheck.measure import HARD_FAILURES, INACCURATE, OK, SEVERITY

NOT_A_NUMBER = "number where the exact value is NaN"
TIERS = {1: "hard failure on finite inputs", 2: "non-finite inputs", 3: "accuracy"}
POINT, CLAMP, NOT_MONOTONE, ORDER = "point", "clamp", "not monotone", "order"
ORDINARY = "ordinary inputs"
CLAMP_FEATURE = "inputs whose exact loss is beyond the constant"
CLAMP_UNITS = 3  # distinct inputs that must give the same wrong output to call it a clamp
FINDING_COLUMNS = (
    "id", "implementation", "library", "loss", "quantity", "kind", "failure", "feature",
    "tier", "severity", "documented", "measurements", "cases", "formats", "regimes",
    "worst_ulps", "worst_bits", "worst_case", "worst_index", "onset", "onsets", "shrunk",
    "repro", "detail",
)  # fmt: skip


@dataclass
class Finding:
    """One distinct problem and the measurements that show it."""

    implementation: str
    library: str
    loss: str
    quantity: str
    kind: str
    failure: str
    feature: str
    documented: str = ""
    rows: list[int] = field(default_factory=list)  # positions in the measurement frame
    cases: set[str] = field(default_factory=set)
    formats: set[str] = field(default_factory=set)
    regimes: set[str] = field(default_factory=set)
    worst: tuple[float, int] = (-1.0, -1)  # (score, row position)
    onset: dict[str, Any] = field(default_factory=dict)  # format -> onset (investigate)
    shrunk: Case | None = None
    repro: str = ""
    detail: str = ""  # a shape's description (the clamp's constants, the two points, ...)

    @property
    def key(self) -> tuple[str, ...]:
        return (self.implementation, self.loss, self.quantity, self.failure, self.feature)

    @property
    def id(self) -> str:
        """``F`` and 8 hex digits of the key's SHA-256: the same for the same problem."""
        return "F" + hashlib.sha256("|".join(self.key).encode()).hexdigest()[:8]

    @property
    def tier(self) -> int:
        if self.feature.startswith(NON_FINITE_PREFIXES) or self.failure == NOT_A_NUMBER:
            return 2
        if self.kind == CLAMP or self.failure in HARD_FAILURES:
            return 1
        return 3

    @property
    def rank(self) -> tuple[Any, ...]:
        """Worst first: tier, undocumented before documented, status, bits, count."""
        return (self.tier, bool(self.documented), -SEVERITY.get(self.failure, 1),
                -self.worst[0], -len(self.rows))  # fmt: skip

    def add(self, position: int, row: Mapping[str, Any], score: float) -> None:
        self.rows.append(position)
        self.cases.add(row["case_id"])
        self.formats.add(row["format"])
        self.regimes.add(row["regime"])
        if score > self.worst[0]:
            self.worst = (score, position)


    def onset_text(self) -> str:
        """Where it starts, per format: ``float64: margin 36.04 (ok at 36.03)``."""
        return "; ".join(
            f"{fmt}: {o['parameter']} {o['from']:.6g} ({o['status_before']} at {o['ok_at']:.6g})"
            for fmt, o in self.onset.items()
        )

    def record(self, rows: list[Mapping[str, Any]]) -> dict[str, Any]:
        """The finding as a row of ``FINDING_COLUMNS``."""
        worst = rows[self.worst[1]] if self.worst[1] >= 0 else {}
        onsets = {fmt: {k: o[k] for k in ("parameter", "from", "ok_at", "status_before")}
                  for fmt, o in self.onset.items()}  # fmt: skip
        return {
            "id": self.id, "implementation": self.implementation, "library": self.library,
            "loss": self.loss, "quantity": self.quantity, "kind": self.kind,
            "failure": self.failure, "feature": self.feature, "tier": self.tier,
            "severity": TIERS[self.tier], "documented": self.documented,
            "measurements": len(self.rows), "cases": len(self.cases),
            "formats": ",".join(f for f in format_names() if f in self.formats),
            "regimes": ",".join(sorted(self.regimes)),
            "worst_ulps": worst.get("ulps", math.nan), "worst_bits": worst.get("bits", math.nan),
            "worst_case": worst.get("case_id", ""), "worst_index": worst.get("index", ""),
            "onset": self.onset_text(), "onsets": json.dumps(onsets, sort_keys=True),
            "shrunk": self.shrunk.to_json() if self.shrunk is not None else "",
            "repro": self.repro, "detail": self.detail,
        }  # fmt: skip


def findings_frame(found: Iterable[Finding], rows: list[Mapping[str, Any]]) -> Any:
    """The findings as a pandas DataFrame with the columns ``FINDING_COLUMNS``."""
    import pandas as pd

    return pd.DataFrame([f.record(rows) for f in found], columns=list(FINDING_COLUMNS))


# -- features -------------------------------------------------------------------------------

NON_FINITE_PREFIXES = ("NaN ", "+inf ", "-inf ")


def features(unit: Case, exact: str | None = None) -> list[str]:
    """The features of ``unit`` (a row, an element or a reduced case), most specific first,
    ``[ORDINARY]`` when it has none: its non-finite inputs, probabilities of exactly 0 or 1,
    an ignored row, more classes than the format's largest value, then the size of the
    ``exact`` result (the measured output's exact value, text), then the logits' range,
    near-boundary probabilities, subnormal inputs and the options set. Only exact inputs
    and exact results are read."""
    fmt = unit.format
    found = _non_finite(unit)
    probabilities = unit.loss.inputs is InputKind.PROBABILITIES
    if probabilities:
        found += _extreme_probabilities(unit)
    if unit.loss.labels is LabelKind.SPARSE and unit.param("ignore_index") is not None:
        if np.any(unit.labels == unit.param("ignore_index")):
            found.append("an ignored row")
    if unit.loss.rowwise and unit.classes > fmt.max:
        found.append("more classes than the format's largest value")
    size = _magnitude(exact)
    if 0 < size < fmt.tiny:
        found.append("an exact result below the smallest normal")
    elif 0 < size < fmt.eps:
        found.append("an exact result below eps")
    found += _near_boundary(unit) if probabilities else _logit_range(unit)
    if np.any(_subnormal(unit.predictions, fmt)):
        found.append("a subnormal input")
    for name, value in sorted(unit.params.items()):
        if name != "ignore_index" and not (name == "reduction" and value == "none"):
            found.append(f"reduction={value}" if name == "reduction" else f"with {name}")
    return list(dict.fromkeys(found)) or [ORDINARY]


def _magnitude(exact: str | None) -> float:
    """|exact| as a float (a tiny positive number where the text underflows float64);
    0 for none, zero or not a number."""
    if exact is None:
        return 0.0
    try:
        value = abs(float(exact))
    except ValueError:
        return 0.0
    if value == 0 and any(c in "123456789" for c in str(exact).split("e")[0]):
        return 5e-324
    return value if math.isfinite(value) else 0.0


def _non_finite(unit: Case) -> list[str]:
    x = np.asarray(unit.predictions, dtype=np.float64)
    arrays = [x, *(np.asarray(a, dtype=np.float64) for a in unit.operands.values())]
    if any(np.isnan(a).any() for a in arrays):
        return ["NaN input"]
    if not any(np.isinf(a).any() for a in arrays):
        return []
    if unit.operands:
        return ["+inf or -inf in the hidden states or the classifier"]
    what = "logit" if unit.loss.inputs is not InputKind.PROBABILITIES else "input"
    out = []
    for sign, where in (("+inf", x == np.inf), ("-inf", x == -np.inf)):
        if not where.any():
            continue
        positive = _label_mass(unit)[where] > 0
        if positive.any():
            out.append(f"{sign} {what} {_positive_name(unit)}")
        if not positive.all():
            out.append(f"{sign} {what} under a zero label")
    return out


def _label_mass(unit: Case) -> np.ndarray:
    """The labels shaped like the predictions (sparse labels one-hot)."""
    if unit.loss.labels is LabelKind.SPARSE:
        shape = unit.predictions.shape
        out = np.zeros(shape)
        for r, k in enumerate(np.asarray(unit.labels).reshape(-1)):
            if 0 <= k < shape[-1]:
                out[r, k] = 1.0
        return out
    return np.asarray(unit.labels, dtype=np.float64)


def _positive_name(unit: Case) -> str:
    return "on the true class" if unit.loss.labels is LabelKind.SPARSE else "under a positive label"


def _extreme_probabilities(unit: Case) -> list[str]:
    p = np.asarray(unit.predictions, dtype=np.float64)
    y = _label_mass(unit)
    out = []
    if ((p == 0) & (y > 0)).any():
        out.append(f"a probability of exactly 0 {_positive_name(unit)}")
    if not unit.loss.rowwise and ((p == 1) & (y < 1)).any():
        out.append("a probability of exactly 1 under a label below 1")
    if (p == 0).any():
        out.append("a probability of exactly 0")
    if (p == 1).any():
        out.append("a probability of exactly 1")
    return out


def _near_boundary(unit: Case) -> list[str]:
    p = np.asarray(unit.predictions, dtype=np.float64)
    fmt, out = unit.format, []
    if unit.loss.rowwise:
        total = p.sum(axis=-1)
        if np.any(np.isfinite(total) & (np.abs(total - 1) > p.shape[-1] * fmt.eps)):
            out.append("probabilities that do not sum to 1")
    if (((p > 0) & (p < fmt.eps)) | ((p < 1) & (p > 1 - fmt.eps))).any():
        out.append("a probability within eps of 0 or 1")
    return out


def log_range(fmt: Format) -> float:
    """log of the format's largest value: where exp overflows (709.78 in float64)."""
    return math.log(fmt.max)


def precision_range(fmt: Format) -> float:
    """-log(eps): beyond it, exp(-x) vanishes beside 1 (36.04 in float64)."""
    return -math.log(fmt.eps)


def logits(unit: Case) -> np.ndarray:
    """The unit's logits in float64: the predictions, or h W^T (+ b) for the linear losses."""
    x = np.asarray(unit.predictions, dtype=np.float64)
    if "linear_weight" in unit.operands:
        with np.errstate(all="ignore"):
            x = x @ np.asarray(unit.operands["linear_weight"], dtype=np.float64).T
            if "linear_bias" in unit.operands:
                x = x + np.asarray(unit.operands["linear_bias"], dtype=np.float64)
    return x


def _logit_range(unit: Case) -> list[str]:
    """Whether a logit, or the gap between two of a row's logits, passes log(max) (where
    exp overflows) or -log(eps) (where exp(-x) vanishes beside 1)."""
    x = logits(unit)
    if unit.loss.rowwise:  # rows with a finite logit, the others NaN
        x = np.where(np.isfinite(x), x, np.nan)[np.isfinite(x).any(axis=-1)]
    else:
        x = x[np.isfinite(x)]
    if x.size == 0:
        return []
    with np.errstate(all="ignore"):
        reach = np.nanmax(np.abs(x))
        if unit.loss.rowwise:
            gaps = np.nanmax(x, axis=-1) - np.nanmin(x, axis=-1)
            reach = max(reach, float(np.nanmax(gaps)))
    if reach > log_range(unit.format):
        return ["a logit or logit gap above log(max)"]
    if reach > precision_range(unit.format):
        return ["a logit or logit gap above -log(eps)"]
    return []


def _subnormal(x: Any, fmt: Format) -> np.ndarray:
    a = np.abs(np.asarray(x, dtype=np.float64))
    return (a > 0) & (a < fmt.tiny)


# -- grouping -------------------------------------------------------------------------------


def failure(row: Mapping[str, Any]) -> str:
    """The failure class of a measurement: its status, except a finite answer where the
    exact value is NaN."""
    if row["status"] == INACCURATE and str(row.get("exact", "")).lower() == "nan":
        return NOT_A_NUMBER
    return str(row["status"])


def score(row: Mapping[str, Any]) -> float:
    """Bits of error, with the statuses that carry none (nan, error, ...) scored above."""
    bits = row.get("bits", math.inf)
    bits = float(bits) if bits is not None else math.inf
    finite = min(bits, 63.0) if math.isfinite(bits) else 63.0
    return 64.0 * SEVERITY.get(str(row["status"]), 1) + finite


def unit_of(case: Case, quantity: str, index: str) -> Case:
    """The row, element or case that the output ``index`` of ``quantity`` comes from."""
    if case.reduced or quantity.startswith("gradient[") or index in ("", None):
        return case
    position = tuple(int(i) for i in str(index).split(","))
    return case.unit(position[:1] if case.loss.rowwise else position)


def group(
    rows: Iterable[Mapping[str, Any]],
    cases: Mapping[str, Case],
    documented: Mapping[str, Mapping[str, str]] | None = None,
) -> list[Finding]:
    """The findings of measurement ``rows`` (an audit's, in order): each row that is not
    ok joins the finding of its key, clamps first (see ``clamps``). ``documented`` maps an
    implementation to its documented statuses (``Implementation.documented``)."""
    documented = documented or {}
    rows = list(rows)
    found: dict[tuple[str, ...], Finding] = {}
    units: dict[tuple[str, bool, str], Case | None] = {}
    for finding in clamps(rows):
        found[finding.key] = finding
    clamped = {p for f in found.values() for p in f.rows}
    for f in found.values():
        f.rows = []
    for position, row in enumerate(rows):
        if row["status"] == OK:
            continue
        impl = row["implementation"]
        if position in clamped:
            key = (impl, row["loss"], row["quantity"], CLAMP, CLAMP_FEATURE)
        else:
            case = cases.get(row["case_id"])
            unit_key = (row["case_id"], row["quantity"].startswith("gradient["), row["index"])
            if unit_key not in units:
                units[unit_key] = case and unit_of(case, row["quantity"], row["index"])
            unit = units[unit_key]
            feature = features(unit, str(row.get("exact")))[0] if unit is not None else ORDINARY
            key = (impl, row["loss"], row["quantity"], failure(row), feature)
        if key not in found:
            found[key] = Finding(impl, row["library"], row["loss"], row["quantity"], POINT,
                                 key[3], key[4])  # fmt: skip
        finding = found[key]
        finding.documented = documented.get(impl, {}).get(
            row["status"] if finding.kind == POINT else "clipped", ""
        )
        finding.add(position, row, score(row))
    return sorted((f for f in found.values() if f.rows), key=lambda f: f.rank)


def clamps(rows: list[Mapping[str, Any]]) -> list[Finding]:
    """Clamps: per implementation, loss and format, a loss of at least 1 that at least
    ``CLAMP_UNITS`` inputs return (two, where the exact loss is infinite), each below an
    exact loss that differs from input to input by a factor of 2 or more: the loss stops
    growing at a constant. The finding's rows are those positions; its ``detail`` names each
    constant, per format, and the epsilon it implies, ``-log(eps)``."""
    seen: dict[tuple[str, ...], dict[float, list[int]]] = defaultdict(lambda: defaultdict(list))
    for position, row in enumerate(rows):
        got, expected = row.get("got"), row.get("expected")
        if (row["quantity"] != "value" or row["status"] not in ("clipped", INACCURATE)
                or got is None or not 1 <= got < math.inf or not expected > got):  # fmt: skip
            continue
        seen[(row["implementation"], row["loss"], row["format"])][float(got)].append(position)
    found: dict[tuple[str, ...], Finding] = {}
    constants: dict[tuple[str, ...], list[str]] = defaultdict(list)
    for (impl, loss, fmt), by_value in seen.items():
        for value, positions in by_value.items():
            exact = [rows[p]["expected"] for p in positions]
            infinite = any(math.isinf(e) for e in exact)
            if len(set(exact)) < (2 if infinite else CLAMP_UNITS) or (
                not infinite and max(exact) < 2 * min(exact)
            ):
                continue
            row = rows[positions[0]]
            key = (impl, loss, "value", CLAMP, CLAMP_FEATURE)
            if key not in found:
                found[key] = Finding(impl, row["library"], loss, "value", CLAMP, CLAMP,
                                     CLAMP_FEATURE)  # fmt: skip
            found[key].rows.extend(positions)
            constants[key].append(f"{format_value(value, fmt)} in {fmt}" + _implied(value, fmt))
    for key, finding in found.items():
        finding.detail = "the loss stops at " + "; ".join(sorted(constants[key], key=_by_format))
    return list(found.values())


def _by_format(text: str) -> int:
    names = format_names()
    return next((i for i, f in enumerate(names) if f" in {f}" in text), len(names))


def _implied(value: float, fmt: str) -> str:
    """For a loss clamp c: the epsilon it implies, exp(-c), named by a round number whose
    -log is c within two of the format's ULPs where there is one (1e-7, 2**-23, ...); an
    integer c of 10 or more reads as log clamped at -c."""
    if value == int(value) and value >= 10:
        return f" (log clamped at -{value:g})"
    from stabcheck.formats import get_format

    close = 2 * value * get_format(fmt).eps
    for candidate, text in _round_numbers():
        if abs(-math.log(candidate) - value) <= close:
            return f" = -log({text})"
    return f" = -log({math.exp(-value):.3g})"


def _round_numbers() -> list[tuple[float, str]]:
    out = [(10.0**-k, f"1e-{k}") for k in range(1, 31)]
    out += [(2.0**-k, f"2**-{k}") for k in range(1, 64)]
    return out


# -- presenting values ----------------------------------------------------------------------

_HEX_DIGITS = {"float64": 13, "float32": 6, "float16": 3, "bfloat16": 2}


def format_value(x: float, fmt: str | Format) -> str:
    """``x`` (a value of format ``fmt``) in that format's own width: the shortest decimal
    that reads back to it in ``fmt``, e.g. ``15.945`` for a float16, not ``15.9453125``."""
    from stabcheck.formats import get_format

    f = get_format(fmt)
    x = float(x)
    if not math.isfinite(x):
        return repr(x)
    if f.name == "float64":
        return repr(x)
    digits = {"float32": 9, "float16": 5, "bfloat16": 4}[f.name]
    for d in range(1, digits + 1):
        text = f"{x:.{d}g}"
        if float(f.asarray(np.float64(float(text)))) == x:
            return text
    return f"{x:.{digits}g}"


def format_hex(x: float, fmt: str | Format) -> str:
    """``float.hex`` of ``x`` with only as many hex digits as the format's significand."""
    from stabcheck.formats import get_format

    x = float(x)
    if not math.isfinite(x):
        return repr(x)
    text = x.hex()
    name = get_format(fmt).name
    mantissa, _, exponent = text.partition("p")
    head, _, digits = mantissa.partition(".")
    digits = digits[: _HEX_DIGITS[name]].rstrip("0")
    return f"{head}{'.' + digits if digits else ''}p{exponent}"


# -- investigation: onsets, shapes, shrunk cases --------------------------------------------

Call = Callable[[Any, Case, bool], Any]  # (implementation, case, grad) -> runner.Outcome
STEPS = 16  # points per round of an onset search, which narrows the bracket 17x a round
ROUNDS = 3
SHRINK_ROUNDS = 8
ORDER_UNITS = 4  # rows per implementation, loss and format checked for order dependence
SEARCHED_INPUTS = 256  # units with more inputs (a wide row) are not bisected or shrunk


@dataclass
class Investigation:
    """What ``investigate`` found beyond the grouping: shape findings and the points of
    every onset search (``SWEEP_COLUMNS``)."""

    shapes: list[Finding] = field(default_factory=list)
    sweeps: list[dict[str, Any]] = field(default_factory=list)
    searched: int = 0
    skipped: int = 0  # findings left unsearched when the time budget ran out
    failed: list[str] = field(default_factory=list)  # "ID: error" where a search broke
    seconds: float = 0.0


SWEEP_COLUMNS = ("finding", "implementation", "loss", "quantity", "format", "parameter", "x",
                 "bits", "status", "onset")  # fmt: skip


def investigate(
    found: list[Finding],
    rows: list[Mapping[str, Any]],
    cases: Mapping[str, Case],
    impls: Mapping[tuple[str, str], Any],
    call: Call,
    max_ulps: float,
    budget: float,
) -> Investigation:
    """Bisect the onset of each point finding along its worst case's family, look for
    non-monotone results on the way, shrink its case and write its repro; then look for
    results that depend on the order of the classes. Findings of third-party libraries go
    first, worst first; whatever is left when ``budget`` seconds have passed is counted in
    ``skipped``. ``impls`` maps (name, loss) to the implementation; every call goes through
    ``call`` (the runner's isolation and time limits)."""
    from stabcheck.repro import library_snippet

    start = time.perf_counter()
    out = Investigation()
    probe = _Probe(call, max_ulps, start + budget)
    order = sorted(found, key=lambda f: (f.library == "stabcheck", f.rank))
    for finding in order:
        impl = impls.get((finding.implementation, finding.loss))
        if impl is None or finding.kind != POINT or finding.failure in ("error", "timeout"):
            continue
        if probe.late():
            out.skipped += 1
            continue
        out.searched += 1
        try:
            _search(finding, impl, rows, cases, probe, out, library_snippet)
        except Exception as exc:  # a search that breaks loses its finding's extras only
            out.failed.append(f"{finding.id}: {type(exc).__name__}: {exc}")
    try:
        out.shapes += _order_dependence(rows, cases, impls, probe)
    except Exception as exc:
        out.failed.append(f"order: {type(exc).__name__}: {exc}")
    out.shapes = list({shape.key: shape for shape in reversed(out.shapes)}.values())[::-1]
    out.seconds = time.perf_counter() - start
    return out


def _search(
    finding: Finding, impl: Any, rows: list[Mapping[str, Any]], cases: Mapping[str, Case],
    probe: _Probe, out: Investigation, library_snippet: Callable[..., str | None],
) -> None:  # fmt: skip
    """One finding's onsets (per format), smallest case and repro."""
    worst = _worst_units(finding, rows, cases)
    for fmt, (unit, _) in worst.items():
        onset = probe.onset(impl, finding, unit, out) if _size(unit) <= SEARCHED_INPUTS else {}
        if onset:
            finding.onset[fmt] = onset
    unit, _ = max(worst.values(), key=lambda ur: score(ur[1]), default=(None, None))
    if unit is None or _size(unit) > SEARCHED_INPUTS:
        return
    shrunk, seen = probe.shrink(impl, finding, unit)
    finding.shrunk = shrunk
    snippet = library_snippet(impl, shrunk, finding.quantity)
    if snippet and seen:
        fmt = shrunk.format
        finding.repro = (f"{snippet}\n# returns {_show(seen['got'], fmt)}; correctly rounded:"
                         f" {_show(seen['expected'], fmt)} ({fmt.name})")  # fmt: skip


def _size(unit: Case) -> int:
    return unit.predictions.size + sum(a.size for a in unit.operands.values())


def _show(values: Any, fmt: Format) -> str:
    values = np.atleast_1d(np.asarray(values, dtype=np.float64)).reshape(-1)
    return "[" + ", ".join(format_value(v, fmt) for v in values) + "]"


def _worst_units(
    finding: Finding, rows: list[Mapping[str, Any]], cases: Mapping[str, Case]
) -> dict[str, tuple[Case, Mapping[str, Any]]]:
    """Per format, the unit of the finding's worst measurement (drawn cases first)."""
    best: dict[str, tuple[tuple[Any, ...], int]] = {}
    for p in finding.rows:
        row = rows[p]
        rank = (row.get("origin") == "drawn", score(row))
        if row["format"] not in best or rank > best[row["format"]][0]:
            best[row["format"]] = (rank, p)
    out = {}
    for fmt in format_names():
        if fmt in best:
            row = rows[best[fmt][1]]
            case = cases.get(row["case_id"])
            if case is not None:
                out[fmt] = (unit_of(case, row["quantity"], row["index"]), row)
    return out


class _Probe:
    """Runs families of one unit's variants as rows of one case, one call for all."""

    def __init__(self, call: Call, max_ulps: float, deadline: float) -> None:
        self.call, self.max_ulps, self.deadline = call, max_ulps, deadline

    def late(self) -> bool:
        return time.perf_counter() > self.deadline

    def results(self, impl: Any, units: list[Case], quantity: str) -> list[dict[str, Any]] | None:
        """Each unit's measurement of ``quantity`` (status, exact, expected, got, bits): the
        units (one row or element each) run as the rows of one case, or one unit of any
        shape alone, measured by its worst output; None where that cannot be done."""
        from stabcheck.errors import PrecisionLimitReached
        from stabcheck.measure import measure, measure_worst
        from stabcheck.oracle.cache import cached

        case = units[0] if len(units) == 1 else _stack(units)
        if case is None or self.late():
            return None
        grad = quantity.startswith("gradient")
        try:
            exact = cached(case, grad)
        except PrecisionLimitReached:
            return None
        outcome = self.call(impl, case, grad)
        towards: bool | str = quantity == "gradient" or quantity[len("gradient[") : -1]
        if quantity == "value":
            towards, got = False, outcome.values
        elif towards is True:
            got = outcome.gradient
        else:
            got = outcome.operands.get(towards)
        if got is None:
            return None
        if towards is False:
            found = measure(exact, got, max_ulps=self.max_ulps)
        else:
            found = measure_worst(exact, got, gradient=towards, max_ulps=self.max_ulps,
                                  per_row=towards is True and case.loss.rowwise)  # fmt: skip
        out = [{"status": m.status, "exact": m.exact, "expected": m.expected, "got": m.got,
                "bits": m.bits} for m in found]  # fmt: skip
        return [max(out, key=score)] if len(units) == 1 and out else out

    def reproduces(
        self, finding: Finding, unit: Case, result: Mapping[str, Any], feature: bool = True
    ) -> bool:
        """Whether ``result`` (of ``unit``) is the finding's failure, with its feature."""
        return failure(result) == finding.failure and (
            not feature or features(unit, result["exact"])[0] == finding.feature
        )

    # -- onsets -------------------------------------------------------------------------

    def onset(self, impl: Any, finding: Finding, unit: Case, out: Investigation) -> dict:
        """Where the finding starts along ``unit``'s family (``Family``): the first point
        that shows it and the point before, which does not (ok, or another status), each
        with its parameter and exact inputs; the bracket narrows 17x a round."""
        family = Family.of(unit, finding)
        if family is None:
            return {}
        lo, hi = 0.0, 1.0
        points: list[tuple[float, Case, Mapping[str, Any]]] = []
        for _ in range(ROUNDS):
            ts = [lo + (hi - lo) * i / STEPS for i in range(STEPS + 1)]
            units = [family.at(t) for t in ts]
            results = self.results(impl, units, finding.quantity)
            if results is None:
                break
            tried = list(zip(ts, units, results))
            points += tried
            bad = [i for i, (_, u, r) in enumerate(tried)
                   if self.reproduces(finding, u, r, feature=False)]  # fmt: skip
            if not bad or bad[0] == 0:
                break
            lo, hi = tried[bad[0] - 1][0], tried[bad[0]][0]
        points.sort(key=lambda p: p[0])
        fmt = unit.format.name
        shows = [self.reproduces(finding, u, r, feature=False) for _, u, r in points]
        first = next((i for i, bad in enumerate(shows) if bad), None)
        for i, (_, u, r) in enumerate(points):
            out.sweeps.append({
                "finding": finding.id, "implementation": finding.implementation,
                "loss": finding.loss, "quantity": finding.quantity, "format": fmt,
                "parameter": family.parameter, "x": family.measure(u),
                "bits": r["bits"], "status": r["status"], "onset": i == first,
            })  # fmt: skip
        if finding.quantity == "value":
            shape = _not_monotone(finding, family, points, self.max_ulps)
            if shape is not None:
                out.shapes.append(shape)
        if not first:  # never, or from t = 0: no onset on this family
            return {}
        before, after = points[first - 1], points[first]
        if family.measure(before[1]) == family.measure(after[1]):
            return {}
        return {"parameter": family.parameter, "from": family.measure(after[1]),
                "ok_at": family.measure(before[1]), "status_before": before[2]["status"],
                "failing": after[1].to_json(), "ok": before[1].to_json()}  # fmt: skip

    # -- shrinking ------------------------------------------------------------------------

    def shrink(self, impl: Any, finding: Finding, unit: Case) -> tuple[Case, dict | None]:
        """A smaller case that still shows the finding: classes removed (rowwise losses),
        then values simplified (0, integers, powers of two, labels 0, 1/2, 1), each step
        tried as a batch of candidates in one call; the last measurement is returned too."""
        seen = self.results(impl, [unit], finding.quantity)
        if not seen or not self.reproduces(finding, unit, seen[0]):
            return unit, seen[0] if seen else None
        last = seen[0]
        if unit.loss.rowwise and not unit.operands and not unit.reduced:
            unit, last = self._fewer_classes(impl, finding, unit, last)
        for _ in range(SHRINK_ROUNDS):
            candidates = _simpler(unit)
            if not candidates:
                break
            results = self.results(impl, candidates, finding.quantity)
            if results is None:
                break
            good = [(c, r) for c, r in zip(candidates, results) if self.reproduces(finding, c, r)]
            if not good:
                break
            unit, last = good[0]
        return unit, last

    def _fewer_classes(
        self, impl: Any, finding: Finding, unit: Case, last: dict
    ) -> tuple[Case, dict]:
        chunks = 2
        while unit.classes > 1:
            keep = _removable(unit)
            size = max(1, len(keep) // chunks)
            candidates = [_without(unit, keep[i : i + size]) for i in range(0, len(keep), size)]
            candidates = [c for c in candidates if c is not None]
            candidates = [c for c in candidates if c.classes == candidates[0].classes]
            results = self.results(impl, candidates, finding.quantity) if candidates else None
            good = [(c, r) for c, r in zip(candidates, results or [])
                    if self.reproduces(finding, c, r)]  # fmt: skip
            if good:
                unit, last = good[0]
                chunks = max(2, chunks - 1)
            elif size == 1 or (chunks >= 8 and unit.classes > 64):
                break
            else:
                chunks *= 2
        return unit, last


@dataclass(frozen=True)
class Family:
    """A one-parameter family through a unit: t = 0 is ordinary (logits 0, probabilities
    1/2), t = 1 the unit itself; logits (or the linear losses' hidden states) scale by t,
    a binary probability's log-odds too."""

    unit: Case
    kind: str  # "logits", "hidden" or "odds"

    @classmethod
    def of(cls, unit: Case, finding: Finding) -> Family | None:
        if (unit.reduced or finding.quantity.startswith("gradient[")
                or finding.tier == 2 or finding.feature == "an ignored row"):  # fmt: skip
            return None
        x = np.asarray(unit.predictions, dtype=np.float64)
        if not np.isfinite(x).all():
            return None
        if unit.loss.inputs is InputKind.PROBABILITIES:
            if unit.loss.rowwise or not ((x > 0) & (x < 1)).all():
                return None
            return cls(unit, "odds")
        return cls(unit, "hidden" if unit.operands else "logits")

    @property
    def parameter(self) -> str:
        if self.kind == "odds":
            return "probability"
        if not self.unit.loss.rowwise:
            return "logit"
        return "margin" if self.unit.loss.labels is LabelKind.SPARSE else "logit gap"

    def at(self, t: float) -> Case:
        x = np.asarray(self.unit.predictions, dtype=np.float64)
        with np.errstate(all="ignore"):
            if self.kind == "odds":
                odds = np.log(x) - np.log1p(-x)
                x = 1 / (1 + np.exp(-t * odds))
            else:
                x = t * x
        u = self.unit
        return Case(u.loss, u.format, u.format.asarray(x), u.labels, dict(u.params), u.regime,
                    u.operands)  # fmt: skip

    def measure(self, unit: Case) -> float:
        """The parameter's value at ``unit``: the probability, the logit, the true class's
        margin over the best other class, or the gap between a row's largest and smallest
        logit."""
        if self.kind == "odds" or not unit.loss.rowwise:
            return float(np.asarray(unit.predictions, dtype=np.float64).reshape(-1)[0])
        z = logits(unit)[0]
        with np.errstate(over="ignore"):  # a gap beyond float64's range is inf
            if unit.loss.labels is LabelKind.SPARSE and z.size > 1:
                k = int(np.asarray(unit.labels).reshape(-1)[0])
                if 0 <= k < z.size:
                    return float(z[k] - np.max(np.delete(z, k)))
            return float(np.max(z) - np.min(z))


def _stack(units: list[Case]) -> Case | None:
    """Units of one row or element each, alike in shape, as the rows of one case."""
    first = units[0]
    if any(u.reduced or u.predictions.shape != first.predictions.shape
           or len(u.predictions) != 1 for u in units):  # fmt: skip
        return None
    preds = np.concatenate([u.predictions for u in units])
    labels = np.concatenate([np.asarray(u.labels).reshape(
        (1, -1) if first.loss.rowwise and first.loss.labels is not LabelKind.SPARSE else (-1,)
    ) for u in units])  # fmt: skip
    return Case(first.loss, first.format, preds, labels, dict(first.params), first.regime,
                first.operands)  # fmt: skip


def _not_monotone(
    finding: Finding, family: Family, points: list[Any], max_ulps: float
) -> Finding | None:
    """Two points of the family where the returned loss falls while the exact loss rises
    (or the reverse) by more than ``max_ulps``: a loss that is not monotone where the exact
    one is."""
    values = [(t, u, r) for t, u, r in points
              if math.isfinite(r["expected"]) and math.isfinite(r["got"])]  # fmt: skip
    expected = [r["expected"] for _, _, r in values]
    rising = all(b >= a for a, b in itertools.pairwise(expected))
    falling = all(b <= a for a, b in itertools.pairwise(expected))
    if not (rising or falling) or len(values) < 2:
        return None
    fmt = family.unit.format
    worst = None
    for i, (_, ui, ri) in enumerate(values):
        for _, uj, rj in values[i + 1 :]:
            drop = ri["got"] - rj["got"] if rising else rj["got"] - ri["got"]
            if drop > 0 and _ulps_apart(fmt, ri["got"], rj["got"]) > max_ulps:
                if worst is None or drop > worst[0]:
                    worst = (drop, ui, ri, uj, rj)
    if worst is None:
        return None
    _, ui, ri, uj, rj = worst
    shape = Finding(finding.implementation, finding.library, finding.loss, "value",
                    NOT_MONOTONE, NOT_MONOTONE, finding.feature)  # fmt: skip
    name = family.parameter
    shape.detail = (
        f"{name} {family.measure(ui):.6g} gives {format_value(ri['got'], fmt)} but {name} "
        f"{family.measure(uj):.6g} gives {format_value(rj['got'], fmt)} in {fmt.name}, where "
        f"the exact loss goes from {format_value(ri['expected'], fmt)} to "
        f"{format_value(rj['expected'], fmt)}"
    )
    shape.shrunk = uj
    return shape


def _ulps_apart(fmt: Format, a: float, b: float) -> float:
    """ULPs between two returned values once rounded to the format (a library may return a
    wider type than it was given)."""
    return fmt.ulps(*(float(fmt.asarray(np.float64(x))) for x in (a, b)))


def _removable(unit: Case) -> list[int]:
    """The classes that may go: all but the true class (sparse labels)."""
    keep = set()
    if unit.loss.labels is LabelKind.SPARSE:
        keep.add(int(np.asarray(unit.labels).reshape(-1)[0]))
    return [j for j in range(unit.classes) if j not in keep]


def _without(unit: Case, classes: list[int]) -> Case | None:
    """``unit`` with ``classes`` removed (and the class weights and labels with them)."""
    if not classes or len(classes) >= unit.classes:
        return None
    keep = [j for j in range(unit.classes) if j not in set(classes)]
    params = dict(unit.params)
    if "weight" in params:
        params["weight"] = np.asarray(params["weight"])[keep]
    if unit.loss.labels is LabelKind.SPARSE:
        k = int(np.asarray(unit.labels).reshape(-1)[0])
        if k not in keep:
            return None
        labels = np.asarray([keep.index(k)], dtype=np.int64)
    else:
        labels = np.asarray(unit.labels)[:, keep]
    return Case(unit.loss, unit.format, unit.predictions[:, keep], labels, params,
                unit.regime, unit.operands)  # fmt: skip


def _simpler(unit: Case) -> list[Case]:
    """Candidates that each change one input to a simpler value of the format."""
    fmt = unit.format
    out = []
    shape = unit.predictions.shape
    x = np.asarray(unit.predictions, dtype=np.float64).reshape(-1)
    probabilities = unit.loss.inputs is InputKind.PROBABILITIES
    for j, v in enumerate(x):
        for c in _simpler_values(v, 0.5 if probabilities else 0.0):
            y = x.copy()
            y[j] = c
            out.append(_with_inputs(unit, fmt.asarray(y).reshape(shape), unit.labels))
    if unit.loss.labels is not LabelKind.SPARSE:
        z = np.asarray(unit.labels, dtype=np.float64).reshape(-1)
        for j, v in enumerate(z):
            for c in (0.0, 1.0, 0.5):
                if _complexity(c) < _complexity(v):
                    y = z.copy()
                    y[j] = c
                    out.append(_with_inputs(unit, unit.predictions,
                                              fmt.asarray(y).reshape(unit.labels.shape)))
    return out


def _with_inputs(unit: Case, predictions: Any, labels: Any) -> Case:
    return Case(unit.loss, unit.format, predictions, labels, dict(unit.params), unit.regime,
                unit.operands)  # fmt: skip


def _simpler_values(v: float, neutral: float) -> list[float]:
    if not math.isfinite(v):
        return []
    candidates = [neutral, float(math.trunc(v)), float(round(v))]
    if v != 0:
        m, e = math.frexp(v)
        if e < 1000:
            candidates.append(math.copysign(math.ldexp(1.0, round(math.log2(abs(v)))), v))
            candidates.append(math.ldexp(round(m * 4) / 4, e))
    out = []
    for c in candidates:
        if c != v and c not in out and _complexity(c) < _complexity(v):
            out.append(c)
    return out


def _complexity(v: float) -> tuple[int, float]:
    """Significant bits, then magnitude: what shrinking lowers."""
    if v == 0 or not math.isfinite(v):
        return (0, 0.0)
    m, _ = math.frexp(abs(v))
    bits = 0
    while m != int(m):
        m *= 2
        bits += 1
    return (bits, abs(v))


def _order_dependence(
    rows: list[Mapping[str, Any]],
    cases: Mapping[str, Case],
    impls: Mapping[tuple[str, str], Any],
    probe: _Probe,
) -> list[Finding]:
    """Rows whose loss changes when their classes are permuted (reversed, rotated): the
    exact loss does not, so the result depends on the order of summation."""
    picked: dict[tuple[str, str, str], list[Case]] = defaultdict(list)
    seen = set()
    for row in rows:
        key = (row["implementation"], row["loss"], row["format"])
        case = cases.get(row["case_id"])
        if (case is None or not case.loss.rowwise or case.operands or case.reduced
                or "weight" in case.params or row["quantity"] != "value"
                or len(picked[key]) >= ORDER_UNITS):  # fmt: skip
            continue
        unit = unit_of(case, "value", row["index"])
        if not 3 <= unit.classes <= SEARCHED_INPUTS or (key, case.id, row["index"]) in seen:
            continue
        seen.add((key, case.id, row["index"]))
        picked[key].append(unit)
    found: dict[tuple[str, str], Finding] = {}
    for (name, loss, fmt), units in picked.items():
        impl = impls.get((name, loss))
        if impl is None or probe.late():
            continue
        units = [u for u in units if u.predictions.shape == units[0].predictions.shape]
        variants = []
        for u in units:
            n = u.classes
            for perm in (list(range(n))[::-1], [(j + n // 2) % n for j in range(n)]):
                variants.append((u, _permuted(u, perm)))
        stacked = _stack([v for pair in variants for v in pair])
        if stacked is None:
            continue
        outcome = probe.call(impl, stacked, False)
        if outcome.values is None:
            continue
        got = np.asarray(outcome.values, dtype=np.float64).reshape(-1)
        f = units[0].format
        for i, (u, _) in enumerate(variants):
            a, b = got[2 * i], got[2 * i + 1]
            differ = (math.isnan(a) != math.isnan(b)) or (
                not math.isnan(a) and _ulps_apart(f, a, b) > probe.max_ulps
            )
            if differ and (name, loss) not in found:
                shape = Finding(name, impl.library, loss, "value", ORDER, ORDER,
                                "the same row with its classes permuted")  # fmt: skip
                shape.detail = (f"in {fmt}, a row gives {format_value(a, f)} and the same "
                                f"row with its classes permuted {format_value(b, f)}")
                shape.shrunk = u
                found[(name, loss)] = shape
    return list(found.values())


def _permuted(unit: Case, perm: list[int]) -> Case:
    labels = unit.labels
    if unit.loss.labels is LabelKind.SPARSE:
        k = int(np.asarray(labels).reshape(-1)[0])
        labels = np.asarray([perm.index(k) if 0 <= k < len(perm) else k], dtype=np.int64)
    else:
        labels = np.asarray(labels)[:, perm]
    return _with_inputs(unit, unit.predictions[:, perm], labels)
