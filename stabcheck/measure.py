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
"""

from __future__ import annotations

import math
from collections.abc import Iterable
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
    ulps = fmt.ulps(got, expected)
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
    if gradient:
        if result.gradient is None:
            raise InvalidArgument("gradient=True needs an oracle result computed with grad=True")
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
    fmt = result.case.format
    rows = []
    for index in np.ndindex(expected.shape):
        status, ulps, relative = classify(
            exact[index], expected[index], got[index], fmt, condition[index], max_ulps,
            None if scale is None else float(scale[index]),
        )
        rows.append(
            Measurement(
                index=tuple(int(i) for i in index),
                exact=_text(exact[index]),
                expected=float(expected[index]),
                got=float(got[index]),
                ulps=float(ulps),
                bits=bits_of_error(ulps),
                relative_error=relative,
                condition=float(condition[index]),
                status=status,
            )
        )
    return rows


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
