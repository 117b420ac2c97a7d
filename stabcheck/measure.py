"""Compare what an implementation returned with the oracle.

For each output element: ULPs in the case's format (against the correctly rounded exact
value), bits of error log2(1 + ULPs), relative error |got - exact| / |exact| (against the
exact value, not its rounding), the condition number, and a status:

    ok          within tolerance: ULPs <= max_ulps, or a relative error of at most
                max_ulps * max(1, condition) * eps, eps = 2**(1 - p) of the format
    inaccurate  beyond tolerance (or a number where the exact answer is NaN)
    underflow   0 where the correctly rounded exact value is not 0, beyond tolerance
    overflow    +-inf where the correctly rounded exact value is finite
    clipped     finite where the exact value is +-inf
    nan         NaN where the exact value is not NaN
    error       the implementation raised or returned something unusable
    timeout     the implementation ran past its time limit

The tolerance grows with the condition number so that a backward-stable algorithm is not
called inaccurate on an ill-conditioned input. It is stated as a relative error because
ULP counts grow without bound near zero: 0 and 1e-17 are 4e18 float64 values apart. An
exact value that the format rounds to inf (a finite loss beyond the format's range) is
matched by inf.

``measure`` gives every element; ``measure_worst`` the worst of each row (or element), with
most statuses decided for the whole array at once in numpy and ``classify`` run only where
the exact value could change the choice, and on the elements chosen.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from stabcheck.errors import InvalidArgument
from stabcheck.formats import Format
from stabcheck.oracle import OracleResult
from stabcheck.oracle.enclosure import CTX

DEFAULT_MAX_ULPS = 4.0

OK, INACCURATE, UNDERFLOW = "ok", "inaccurate", "underflow"
OVERFLOW, CLIPPED, NAN, ERROR, TIMEOUT = "overflow", "clipped", "nan", "error", "timeout"
STATUSES = (OK, INACCURATE, UNDERFLOW, OVERFLOW, CLIPPED, NAN, ERROR, TIMEOUT)
ACCURACY_LOSSES = frozenset({INACCURATE, UNDERFLOW})
HARD_FAILURES = frozenset({NAN, OVERFLOW, CLIPPED, ERROR, TIMEOUT})
# How serious a status is: hard failures above losses of accuracy above ok.
SEVERITY = {s: i for i, s in enumerate(
    (OK, INACCURATE, UNDERFLOW, OVERFLOW, CLIPPED, NAN, ERROR, TIMEOUT))}  # fmt: skip


@dataclass(frozen=True)
class Measurement:
    """One output element compared with the oracle."""

    index: tuple[int, ...]
    exact: str  # the exact value, 17 significant digits (its exponent is unbounded)
    expected: float  # the exact value correctly rounded to the format
    got: float
    ulps: float
    bits: float
    relative_error: float
    condition: float
    status: str


def classify(
    exact: Any,
    expected: float,
    got: float,
    fmt: Format,
    condition: float,
    max_ulps: float = DEFAULT_MAX_ULPS,
    scale: float | None = None,
) -> tuple[str, float, float]:
    """(status, ulps, relative error) of ``got`` against the exact value ``exact`` (an
    mpmath number) whose correct rounding to ``fmt`` is ``expected``. ``scale``, where the
    oracle gives it, is the first-order change of the exact value per unit relative change
    of the inputs (``condition`` times its magnitude, finite where the exact value is 0):
    then an error of at most ``max_ulps`` eps x max(|exact|, scale) is ok, the same
    tolerance in absolute terms, which holds at exact zeros too."""
    if max_ulps < 0:
        raise InvalidArgument(f"max_ulps={max_ulps!r} must be a non-negative number of ULPs")
    got = fmt.round(float(got))
    return _decide(exact, expected, got, fmt.ulps(got, expected), fmt, condition, max_ulps, scale)


def _decide(
    exact: Any,
    expected: float,
    got: float,
    ulps: int | float,
    fmt: Format,
    condition: float,
    max_ulps: float,
    scale: float | None,
) -> tuple[str, float, float]:
    """``classify`` of ``got`` already rounded to ``fmt``, ``ulps`` from ``expected``."""
    relative = _relative_error(exact, got)
    if math.isnan(got):
        return (OK if math.isnan(expected) else NAN), ulps, relative
    if math.isnan(expected):
        return INACCURATE, ulps, relative
    if CTX.isinf(exact):
        status = OK if got == expected else (CLIPPED if math.isfinite(got) else INACCURATE)
        return status, ulps, relative
    if math.isinf(got) and math.isfinite(expected):
        return OVERFLOW, ulps, relative
    kappa = float(condition) if math.isfinite(condition) else 1.0
    if ulps <= max_ulps or relative <= max_ulps * max(1.0, kappa) * fmt.eps:
        return OK, ulps, relative
    if scale is not None and math.isfinite(scale) and CTX.isfinite(exact):
        tolerance = max_ulps * fmt.eps * max(float(abs(exact)), scale)
        if abs(CTX.mpf(got) - exact) <= tolerance:
            return OK, ulps, relative
    return (UNDERFLOW if got == 0 else INACCURATE), ulps, relative


def bits_of_error(ulps: float) -> float:
    """log2(1 + ULPs): 0 for exact, 1 for one ULP, about 53 for garbage in float64."""
    return math.log2(1 + ulps) if math.isfinite(ulps) else math.inf


def measure(
    result: OracleResult,
    got: Any,
    gradient: bool | str = False,
    max_ulps: float = DEFAULT_MAX_ULPS,
) -> list[Measurement]:
    """Measure every element of ``got``: the loss; with ``gradient=True`` its gradient with
    respect to the predictions; with ``gradient=name`` with respect to that operand."""
    target = _Target.of(result, got, gradient, max_ulps)
    return [m for block in target.blocks() for m in block.every()]


def measure_worst(
    result: OracleResult,
    got: Any,
    gradient: bool | str = False,
    max_ulps: float = DEFAULT_MAX_ULPS,
    per_row: bool = False,
) -> list[Measurement]:
    """The worst element of each unit, as ``measure`` would find it: the highest
    (``SEVERITY[status]``, ULPs), the first one on ties. A unit is a row (a first index)
    with ``per_row``, otherwise an element; units in order.

    The ULPs and most statuses are found with numpy over the whole array (``_bounds``),
    from the rounded ``got`` and the correctly rounded exact values alone; ``classify`` runs
    on the elements whose status needs the exact value and could make them a row's worst,
    and on the element chosen in each row.
    """
    target = _Target.of(result, got, gradient, max_ulps)
    if not per_row or target.got.ndim < 2 or target.got.size == 0:
        return [m for block in target.blocks() for m in block.every()]
    return [m for block in target.blocks() for m in block.worst_per_row()]


def worst(statuses: Iterable[str]) -> str:
    """The most serious status: hard failures first, then losses of accuracy, then ok."""
    order = {
        s: i
        for i, s in enumerate((TIMEOUT, ERROR, NAN, CLIPPED, OVERFLOW, UNDERFLOW, INACCURATE, OK))
    }
    return min(statuses, key=lambda s: order.get(s, -1), default=OK)


def _relative_error(exact: Any, got: float) -> float:
    if not CTX.isfinite(exact) or not math.isfinite(got):
        same = (CTX.isnan(exact) and math.isnan(got)) or exact == got
        return 0.0 if same else math.inf
    if exact == 0:
        return 0.0 if got == 0 else math.inf
    return float(abs((CTX.mpf(got) - exact) / exact))


def _text(exact: Any) -> str:
    return CTX.nstr(exact, 17) if CTX.isfinite(exact) else str(float(exact))


# -- the arrays, in blocks of rows ------------------------------------------------------

CHUNK = 1 << 16  # elements per block (the oracle's lazy arrays are computed by blocks)


@dataclass(frozen=True)
class _Target:
    """What to measure: ``got`` (float64) against the oracle's arrays for one quantity (any
    of them may be a lazy array, read by blocks of rows)."""

    fmt: Format
    max_ulps: float
    got: np.ndarray
    expected: Any
    exact: Any
    condition: Any
    scale: Any

    @classmethod
    def of(cls, result: OracleResult, got: Any, gradient: bool | str, max_ulps: float) -> _Target:
        if gradient:
            if result.gradient is None:
                raise InvalidArgument(
                    "gradient=True needs an oracle result computed with grad=True"
                )
            if isinstance(gradient, str):
                if gradient not in result.operand_gradients:
                    raise InvalidArgument(
                        f"gradient={gradient!r} is not an operand of this case; its operands: "
                        f"{', '.join(result.operand_gradients) or 'none'}"
                    )
                expected, condition, exact, scale = result.operand_gradients[gradient]
            else:
                expected, exact, condition, scale = (
                    result.gradient,
                    result.gradient_exact,
                    result.gradient_condition,
                    result.gradient_scale,
                )
        else:
            expected, exact, condition, scale = result.value, result.exact, result.condition, None
        got = np.asarray(got, dtype=np.float64)
        if got.shape != expected.shape:
            raise InvalidArgument(
                f"got has shape {got.shape} but the exact answer has shape {expected.shape}"
            )
        if max_ulps < 0:
            raise InvalidArgument(f"max_ulps={max_ulps!r} must be a non-negative number of ULPs")
        return cls(result.case.format, max_ulps, got, expected, exact, condition, scale)

    def blocks(self) -> Iterator[_Block]:
        if self.got.ndim == 0:
            yield _Block(self, 0, 1)
            return
        rows = self.got.shape[0]
        step = max(1, CHUNK // max(1, math.prod(self.got.shape[1:])))
        for r0 in range(0, rows, step):
            yield _Block(self, r0, min(rows, r0 + step))


class _Block:
    """Rows ``r0..r1-1`` of a ``_Target`` (the whole of a 0-d one), read once; ``got``
    rounded to the format and its distance in ULPs found for all of them at once."""

    def __init__(self, target: _Target, r0: int, r1: int) -> None:
        def rows(array: Any) -> Any:
            return array if array is None or target.got.ndim == 0 else array[r0:r1]

        self.target, self.r0 = target, r0
        self.got, self.expected = rows(target.got), rows(target.expected)
        self.exact, self.condition = rows(target.exact), rows(target.condition)
        self.scale = rows(target.scale)
        self.rounded = target.fmt.asarray(self.got).astype(np.float64)
        self.expected64 = np.asarray(self.expected, dtype=np.float64)
        self.apart = _apart(self.rounded, self.expected64, target.fmt)

    def classify(self, local: tuple[int, ...]) -> tuple[str, float, float]:
        """``classify`` of one element."""
        got, expected = float(self.rounded[local]), float(self.expected64[local])
        if math.isnan(got) or math.isnan(expected):  # as Format.ulps
            ulps: int | float = 0 if math.isnan(got) and math.isnan(expected) else math.inf
        else:
            ulps = int(self.apart[local])
        t = self.target
        return _decide(
            self.exact[local], self.expected[local], got, ulps, t.fmt, self.condition[local],
            t.max_ulps, None if self.scale is None else float(self.scale[local]),
        )  # fmt: skip

    def measurement(
        self, local: tuple[int, ...], classified: tuple[str, float, float] | None = None
    ) -> Measurement:
        status, ulps, relative = classified or self.classify(local)
        return Measurement(
            index=(local[0] + self.r0, *local[1:]) if local else (),
            exact=_text(self.exact[local]),
            expected=float(self.expected[local]),
            got=float(self.got[local]),
            ulps=float(ulps),
            bits=bits_of_error(ulps),
            relative_error=relative,
            condition=float(self.condition[local]),
            status=status,
        )

    def _settle(self, lo: np.ndarray, hi: np.ndarray, got: np.ndarray, rows: int,
                width: int) -> None:  # fmt: skip
        """Narrow ``lo`` and ``hi`` (rows x width) where the tolerance alone decides: a
        finite result beyond ``max_ulps`` is ok, or inaccurate (underflow at 0), wherever
        ``_settled`` can tell from float64 approximations of the exact values."""
        open_ = (lo != hi) & np.isfinite(got) & np.isfinite(self.expected64.reshape(rows, width))
        open_ &= hi != SEVERITY[CLIPPED]
        if not open_.any():
            return
        r, c = np.nonzero(open_)
        exact = self.exact.reshape(rows, width)
        approx = np.array([float(x) for x in exact[r, c].tolist()], dtype=np.float64)
        scale = None if self.scale is None else np.asarray(self.scale).reshape(rows, width)[r, c]
        ok, not_ok = _settled(got[r, c], approx,
                              np.asarray(self.condition, np.float64).reshape(rows, width)[r, c],
                              scale, self.target.fmt, self.target.max_ulps)  # fmt: skip
        lo[r[not_ok], c[not_ok]] = hi[r[not_ok], c[not_ok]]
        hi[r[ok], c[ok]] = lo[r[ok], c[ok]]

    def every(self) -> Iterator[Measurement]:
        for local in np.ndindex(self.got.shape):
            yield self.measurement(local)

    def worst_per_row(self) -> Iterator[Measurement]:
        """The worst element of each row: the worst of the elements whose status is
        certain (``_bounds``), against the others in order of the most they could be;
        ``classify`` runs on each until none left could beat the worst so far."""
        rows, width = self.got.shape[0], self.got[0].size
        flat = (self.rounded.reshape(rows, width), self.expected64.reshape(rows, width))
        lo, hi, ulps = _bounds(*flat, self.apart.reshape(rows, width), self.target.max_ulps)
        self._settle(lo, hi, flat[0], rows, width)
        certain, everyone = lo == hi, np.arange(rows)
        # per row, the worst element of certain status: (severity, ulps, -column) largest
        sev = np.where(certain, lo, -1)
        top = sev == sev.max(axis=1, keepdims=True)
        top_ulps = np.where(top, ulps, -1.0).max(axis=1, keepdims=True)
        col = np.argmax(top & (ulps == top_ulps), axis=1)
        best_sev, best_ulps = sev[everyone, col], ulps[everyone, col]
        # elements that might beat it, each row's by the most they could be, largest first
        beat = ~certain & (
            (hi > best_sev[:, None])
            | ((hi == best_sev[:, None]) & ((ulps > best_ulps[:, None])
               | ((ulps == best_ulps[:, None]) & (np.arange(width) < col[:, None]))))
        )  # fmt: skip
        r, c = np.nonzero(beat)
        order = np.lexsort((c, -ulps[r, c], -hi[r, c], r))
        candidates: dict[int, list[tuple[tuple[int, float, int], int]]] = {}
        for i, j, h, u in zip(r[order].tolist(), c[order].tolist(), hi[r, c][order].tolist(),
                              ulps[r, c][order].tolist()):  # fmt: skip
            candidates.setdefault(i, []).append(((h, u, -j), j))
        shape = self.got.shape[1:]
        column = list(zip(*(a.tolist() for a in np.unravel_index(np.arange(width), shape))))
        for i, j, s, u in zip(range(rows), col.tolist(), best_sev.tolist(), best_ulps.tolist()):
            key = (s, u, -j) if s >= 0 else None
            chosen = None
            for most, k in candidates.get(i, ()):
                if key is not None and most < key:
                    break
                found = self.classify((i, *column[k]))
                if key is None or (SEVERITY[found[0]], float(found[1]), -k) > key:
                    key, j, chosen = (SEVERITY[found[0]], float(found[1]), -k), k, found
            yield self.measurement((i, *column[j]), chosen)


def _settled(
    got: np.ndarray, exact: np.ndarray, condition: np.ndarray, scale: np.ndarray | None,
    fmt: Format, max_ulps: float,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """For finite ``got`` (rounded to ``fmt``) more than ``max_ulps`` from the correctly
    rounded finite exact value, whether ``_decide`` certainly finds it ok, and whether it
    certainly does not, from float64 approximations ``exact`` of the exact values (at
    most half an ULP of float64 off): the relative error and the absolute error are
    bounded in float64 with a margin for every rounding, and an element too close to a
    tolerance to say, or with an exact value that float64 cannot approximate closely
    (0, below 2**-1020, beyond its range), is neither."""
    u = 2.0**-52
    a, d = np.abs(exact), np.abs(got - exact)
    delta = u * (a + d) + 2.0**-1073  # the approximation of exact and the subtraction
    usable = np.isfinite(a) & (a >= 2.0**-1020)
    with np.errstate(all="ignore"):
        kappa = np.where(np.isfinite(condition), condition, 1.0)
        tolerance = max_ulps * np.maximum(1.0, kappa) * fmt.eps
        rel_hi = (d + delta) / (a * (1 - u)) * (1 + 4 * u)
        rel_lo = np.maximum(d - delta, 0.0) / (a * (1 + u)) * (1 - 4 * u)
        ok = usable & (rel_hi <= tolerance)
        not_ok = usable & (rel_lo > tolerance)
        if scale is not None:
            scale = np.asarray(scale, dtype=np.float64)
            finite = np.isfinite(scale)
            allowed = max_ulps * fmt.eps * np.maximum(a, np.where(finite, scale, 0.0))
            ok |= usable & finite & ((d + delta) * (1 + 4 * u) <= allowed * (1 - 4 * u))
            not_ok &= ~finite | ((d - delta) * (1 - 4 * u) > allowed * (1 + 4 * u) * (1 + u))
    return ok, not_ok & ~ok


def _bounds(
    got: np.ndarray, expected: np.ndarray, apart: np.ndarray, max_ulps: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For ``got`` rounded to the format against ``expected``, ``apart`` ULPs (``_apart``):
    the lowest and the highest ``SEVERITY`` that ``classify`` can give each element, and
    its ULPs as float (``Format.ulps``). Where the two are equal that is its status; where
    not, it depends on the exact value. It holds for an ``expected`` that is the exact value
    correctly rounded, so finite only where the exact value is finite."""
    is_nan, exp_nan = np.isnan(got), np.isnan(expected)
    ulps = apart.astype(np.float64)
    either = is_nan | exp_nan
    ulps[either] = np.where(is_nan & exp_nan, 0.0, math.inf)[either]
    got_finite, exp_finite = np.isfinite(got), np.isfinite(expected)
    ok, inaccurate = SEVERITY[OK], SEVERITY[INACCURATE]
    nan = np.where(exp_nan, ok, SEVERITY[NAN])
    beyond = ~exp_finite & (got != expected)  # ok, clipped or not, as the exact value is
    cases = [is_nan, exp_nan, ~exp_finite & ~beyond, beyond, ~got_finite,
             _within(apart, max_ulps)]  # fmt: skip
    lo = np.select(cases, [nan, inaccurate, ok, ok, SEVERITY[OVERFLOW], ok], ok)
    hi = np.select(
        cases,
        [nan, inaccurate, ok, np.where(got_finite, SEVERITY[CLIPPED], inaccurate),
         SEVERITY[OVERFLOW], ok],
        np.where(got == 0, SEVERITY[UNDERFLOW], inaccurate),
    )  # fmt: skip
    return lo, hi, ulps


def _apart(got: np.ndarray, expected: np.ndarray, fmt: Format) -> np.ndarray:
    """``Format.ulps`` of each pair of values of ``fmt`` (uint64; meaningless where either
    is NaN): the distance of the ordinals, -0 and +0 both 0, inf after the largest finite
    value."""
    got_mag, got_neg = _magnitude(got, fmt)
    exp_mag, exp_neg = _magnitude(expected, fmt)
    return np.where(got_neg == exp_neg,
                    np.maximum(got_mag, exp_mag) - np.minimum(got_mag, exp_mag),
                    got_mag + exp_mag)  # fmt: skip


def _magnitude(x: np.ndarray, fmt: Format) -> tuple[np.ndarray, np.ndarray]:
    """The bit patterns of ``x`` (values of ``fmt``) without the sign, as uint64 (the
    ordinals of ``Format.ordinal`` up to the sign), and the sign bits."""
    with np.errstate(invalid="ignore", over="ignore"):
        bits = x.astype(fmt.dtype).view(f"uint{fmt.width}").astype(np.uint64)
    sign = np.uint64(1 << (fmt.width - 1))
    return bits & (sign - np.uint64(1)), (bits & sign) != 0


def _within(ulps: np.ndarray, max_ulps: float) -> np.ndarray:
    """``ulps <= max_ulps`` (uint64 ULPs), compared exactly as Python compares an int."""
    if math.isnan(max_ulps):
        return np.zeros(ulps.shape, bool)
    if max_ulps >= 2.0**64:
        return np.ones(ulps.shape, bool)
    return ulps <= np.uint64(math.floor(max_ulps))
