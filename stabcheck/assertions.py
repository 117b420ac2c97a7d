"""``assert_exact``: one call of a loss function on given inputs, every output checked
against the exact oracle, in the spirit of ``numpy.testing.assert_allclose``::

    from stabcheck import assert_exact

    assert_exact(my_sigmoid_ce, x, z, loss="sigmoid_cross_entropy_with_logits")

``fn(predictions, labels, **options)`` is called once, as ``stabcheck.check`` calls a
function (through ``stabcheck.implementations.backends``: numpy, torch, TensorFlow or JAX
arrays of the case's format), and each output is measured with ``stabcheck.measure``. An
output is ok within ``max_ulps`` ULPs of the correctly rounded exact value, or a relative
error of at most ``max_ulps`` x eps x max(1, condition number); anything else raises
``NotExact`` (an ``AssertionError``) listing the mismatches. Nothing is drawn or shrunk:
for that, ``stabcheck.check``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from stabcheck import _validation as validate
from stabcheck.case import Case
from stabcheck.errors import InvalidArgument, StabcheckError
from stabcheck.formats import Format, get_format
from stabcheck.losses import get_loss
from stabcheck.measure import DEFAULT_MAX_ULPS, OK, SEVERITY, Measurement, measure

__all__ = ["SHOWN_MISMATCHES", "NotExact", "assert_exact"]

SHOWN_MISMATCHES = 5  # mismatches listed in the message before "... and N more"
_WHOLE_CASE_CHARS = 600  # a case whose JSON is longer is replayed by its worst row or element


class NotExact(StabcheckError, AssertionError):
    """``assert_exact`` found outputs beyond tolerance (or unusable ones).

    ``case`` holds the validated inputs, ``measurements`` every output measured, by
    quantity (``loss``, ``gradient``, ``gradient of <operand>``), and ``mismatches`` the
    failing ones as (quantity, measurement), in order.
    """

    def __init__(
        self,
        message: str,
        case: Case,
        measurements: dict[str, list[Measurement]] | None = None,
        mismatches: list[tuple[str, Measurement]] | None = None,
    ) -> None:
        super().__init__(message)
        self.case = case
        self.measurements = measurements or {}
        self.mismatches = mismatches or []


def assert_exact(
    fn: Callable[..., Any],
    predictions: Any,
    labels: Any,
    *,
    loss: str,
    format: str | None = None,
    backend: str = "numpy",
    grad: bool = False,
    grad_fn: Callable[..., Any] | None = None,
    max_ulps: float = DEFAULT_MAX_ULPS,
    allow: str | Iterable[str] = (),
    **options: Any,
) -> None:
    """Assert that ``fn(predictions, labels, **options)`` is exact to ``max_ulps`` ULPs.

    ``predictions`` and ``labels`` are validated and cast to ``format`` as ``Case.build``
    does (default: the predictions' dtype if it is a format stabcheck knows, else
    float64); ``options`` are the loss's options and operands (``pos_weight``,
    ``label_smoothing``, ``reduction``, ``linear_weight``, ...), given to ``fn`` by name.
    ``backend`` (numpy, torch, tensorflow, jax) is the array type ``fn`` takes and
    returns. With ``grad``, d(sum of losses)/d(predictions) is measured too: the
    backend's autodiff, or for numpy ``grad_fn`` (called as ``fn`` is).

    An output ``got`` passes when it is at most ``max_ulps`` ULPs from the correctly rounded
    exact value, or ``|got - L| / |L| <= max_ulps * eps * max(1, kappa)`` (``L`` the exact
    value, ``kappa`` its condition number, ``eps`` = 2**(1 - p) of the format), or when its
    status (``stabcheck.measure``) is in ``allow``. Returns None when every
    output passes; raises ``NotExact`` (an ``AssertionError``) otherwise, and
    ``InvalidArgument`` for bad arguments. What ``fn`` raises propagates unchanged.
    NumPy floating-point warnings are silenced while ``fn`` runs, as in ``check``.
    """
    __tracebackhide__ = True
    try:
        case, run_grad, tolerance, allowed = _arguments(
            fn, predictions, labels, loss, format, backend, grad, grad_fn, max_ulps, allow,
            options,
        )  # fmt: skip
    except StabcheckError as exc:  # raised from here, so the traceback ends at the caller
        error: StabcheckError | None = exc.with_traceback(None)
    else:
        error = None
    if error is not None:
        raise error
    from stabcheck.implementations import backends
    from stabcheck.oracle import evaluate

    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        returned = backends.call(backend, fn, grad_fn, case, run_grad)
    failure = _Report(case, fn, backend, tolerance, allowed)
    got = {"loss": (returned.values, returned.values_dtype, False)}
    if run_grad:
        if returned.gradient is None:
            failure.fail(
                f"fn's loss does not depend on the predictions through {backend}'s autodiff: "
                "there is no gradient to measure"
            )
        got["gradient"] = (returned.gradient, returned.gradient_dtype, True)
        for name, (array, dtype) in returned.operands.items():
            got[f"gradient of {name}"] = (array, dtype, name)
    for quantity, (array, _, _) in got.items():
        failure.check_shape(quantity, array)
    result = evaluate(case, grad=run_grad)
    for quantity, (array, dtype, towards) in got.items():
        failure.notes_dtype(quantity, dtype)
        failure.add(quantity, measure(result, array, gradient=towards, max_ulps=tolerance))
    if failure.mismatches:
        failure.fail(failure.message())


def _arguments(
    fn: Any,
    predictions: Any,
    labels: Any,
    loss: Any,
    format: Any,
    backend: Any,
    grad: Any,
    grad_fn: Any,
    max_ulps: Any,
    allow: Any,
    options: dict[str, Any],
) -> tuple[Case, bool, float, frozenset[str]]:
    """Every argument checked up front; each error names the argument and the fix."""
    from stabcheck.implementations import keywords

    if not callable(fn):
        raise InvalidArgument(
            f"fn={fn!r} is not callable; pass the loss function itself, "
            "fn(predictions, labels, **options)"
        )
    spec = get_loss(loss)
    backend = validate.backend(backend)
    grad = validate.gradient(grad, grad_fn, backend)
    if grad_fn is not None and not grad:
        raise InvalidArgument(
            "grad_fn=... is given but grad=False, so it would not be called; pass grad=True "
            "to measure the gradient too"
        )
    if grad_fn is not None and backend != "numpy":
        raise InvalidArgument(
            f"grad_fn=... is for backend='numpy'; backend={backend!r} differentiates fn with "
            "its own autodiff: leave grad_fn out"
        )
    tolerance = validate.max_ulps(max_ulps)
    allowed = validate.statuses("allow", allow)
    fmt = get_format(format) if format is not None else _format_of(predictions)
    accepts = keywords(fn)
    for name in options:
        if name in spec.params or name in spec.operands:
            if accepts is not None and name not in accepts:
                raise InvalidArgument(
                    f"{name}=... goes to fn by name, but fn takes ({', '.join(accepts)}); add "
                    f"a {name} parameter to fn, or leave {name} out"
                )
    case = Case.build(spec, predictions, labels, format=fmt, **options)
    return case, grad, tolerance, allowed


def _format_of(predictions: Any) -> Format:
    """The format of ``predictions``' dtype (numpy's, or a framework's by its name) if
    stabcheck knows it, else float64."""
    dtype = getattr(predictions, "dtype", None)
    if dtype is None:
        return get_format("float64")
    try:
        name = np.dtype(dtype).name
    except TypeError:  # e.g. torch.float32
        name = getattr(dtype, "name", None) or str(dtype).rsplit(".", 1)[-1]
    try:
        return get_format(name)
    except InvalidArgument:  # integers, say
        return get_format("float64")


# -- the message ----------------------------------------------------------------------------


def _text(x: float, fmt: Format) -> str:
    """``x`` as the shortest decimal that reads back as the same value of ``fmt`` (a value
    outside ``fmt`` in full, as float64)."""
    x = float(x)
    if not math.isfinite(x) or x == 0 or fmt.name == "float64" or not fmt.contains(x):
        return repr(x)
    if fmt.name in ("float32", "float16"):
        return str(fmt.dtype.type(x))  # numpy's shortest repr in the format
    for digits in range(1, 18):
        short = f"{x:.{digits}g}"
        if float(fmt.asarray(float(short))) == x:
            return str(np.float64(float(short)))
    return repr(x)  # pragma: no cover  (17 digits always read back)


def _where(quantity: str, index: tuple[int, ...]) -> str:
    return f"{quantity}[{', '.join(map(str, index))}]" if index else quantity


def _ulps(ulps: float) -> str:
    return f"{ulps:.3g}"


class _Report:
    """The measurements of one call and the failure message built from them."""

    def __init__(
        self, case: Case, fn: Any, backend: str, max_ulps: float, allow: frozenset[str]
    ) -> None:
        self.case, self.fn, self.backend = case, fn, backend
        self.max_ulps, self.allow = max_ulps, allow
        self.fmt = case.format
        self.measurements: dict[str, list[Measurement]] = {}
        self.mismatches: list[tuple[str, Measurement]] = []
        self.notes: list[str] = []

    def fail(self, message: str) -> None:
        __tracebackhide__ = True
        head = self._head()
        body = message if message.startswith(head) else f"{head}\n{message}"
        raise NotExact(body, self.case, self.measurements, self.mismatches)

    def check_shape(self, quantity: str, array: np.ndarray) -> None:
        """A wrong shape is a failure: ``measure`` could not pair the outputs."""
        __tracebackhide__ = True
        if quantity == "loss":
            want = self.case.output_shape
            what = (
                "one number (reduced)" if self.case.reduced
                else "one loss per row, unreduced" if self.case.loss.rowwise
                else "one loss per element, shaped like the predictions"
            )  # fmt: skip
        elif quantity == "gradient":
            want, what = self.case.predictions.shape, "shaped like the predictions"
        else:
            name = quantity.removeprefix("gradient of ")
            want, what = self.case.operands[name].shape, f"shaped like {name}"
        if array.shape != want:
            self.fail(
                f"fn returned a {quantity} of shape {array.shape}; {self.case.loss.name} gives "
                f"{what}: shape {want}"
            )

    def notes_dtype(self, quantity: str, dtype: str | None) -> None:
        if dtype is not None and dtype != self.fmt.name:
            self.notes.append(
                f"fn returned its {quantity} as {dtype} for {self.fmt.name} inputs; it was "
                f"rounded to {self.fmt.name} before measuring"
            )

    def add(self, quantity: str, found: list[Measurement]) -> None:
        self.measurements[quantity] = found
        self.mismatches += [
            (quantity, m) for m in found if m.status != OK and m.status not in self.allow
        ]

    # -- the message ------------------------------------------------------------------------

    def _head(self) -> str:
        return f"Not exact to {self.max_ulps:g} ULPs (loss {self.case.loss.name}, {self.fmt.name})"

    def message(self) -> str:
        fmt, bad = self.fmt, self.mismatches
        total = sum(len(found) for found in self.measurements.values())
        lines = [self._head(), f"Function: {_name(self.fn)} ({self.backend} backend)"]
        counts: dict[str, int] = {}
        for _, m in bad:
            counts[m.status] = counts.get(m.status, 0) + 1
        by_status = ", ".join(f"{s} {counts[s]}" for s in sorted(counts, key=SEVERITY.get,
                                                                   reverse=True))  # fmt: skip
        mismatched = f"Mismatched outputs: {len(bad)} / {total} ({100 * len(bad) / total:.1f}%)"
        if len(self.measurements) > 1:
            per = [f"{q} {sum(1 for k, _ in bad if k == q)} / {len(found)}"
                   for q, found in self.measurements.items()]  # fmt: skip
            mismatched += f": {', '.join(per)}"
        lines.append(f"{mismatched}; by status: {by_status}")
        located = [(q, m) for q, m in bad if _location(m, fmt)]
        if located:
            lines.append(f"NaN/inf location mismatches: {len(located)}")
            for q, m in located[:SHOWN_MISMATCHES]:
                lines.append(f"  {_where(q, m.index)}: {_location(m, fmt)}")
            if len(located) > SHOWN_MISMATCHES:
                lines.append(f"  ... and {len(located) - SHOWN_MISMATCHES} more")
        lines.append("First mismatches:" if len(bad) > 1 else "Mismatch:")
        table = [["output", "returned", "correctly rounded", "ULPs", "status", ""]]
        for q, m in bad[:SHOWN_MISMATCHES]:
            table.append([_where(q, m.index), _text(m.got, fmt), _text(m.expected, fmt),
                          _ulps(m.ulps), m.status, self._errors(m)])  # fmt: skip
        lines += _aligned(table)
        if len(bad) > SHOWN_MISMATCHES:
            lines.append(f"  ... and {len(bad) - SHOWN_MISMATCHES} more")
        quantity, worst = max(bad, key=lambda qm: (SEVERITY[qm[1].status], qm[1].ulps))
        where = _where(quantity, worst.index)
        lines += [
            f"Worst: {where}, {worst.status}: returned {_text(worst.got, fmt)}, correctly rounded "
            f"{_text(worst.expected, fmt)} (exact {worst.exact}), {_ulps(worst.ulps)} ULPs, "
            f"relative error {worst.relative_error:.3g}, condition number {worst.condition:.3g}",
        ]
        lines += [f"Note: {note}" for note in self.notes]
        allowed = ", ".join(sorted(self.allow)) or "none"
        lines.append(
            f"Tolerance: {self.max_ulps:g} ULPs, or a relative error of {self.max_ulps:g} eps x "
            f"max(1, condition number), eps = 2**-{fmt.precision - 1} in {fmt.name}; "
            f"allowed statuses: {allowed}."
        )
        lines += self._replay(quantity, worst, where)
        return "\n".join(lines)

    def _errors(self, m: Measurement) -> str:
        """Absolute and relative error, where ULPs mislead: an exact value or a result
        that is zero or subnormal (0 and 1e-300 are 4e18 float64 values apart)."""
        tiny = self.fmt.tiny
        near_zero = any(math.isfinite(v) and abs(v) < tiny for v in (m.expected, m.got))
        if not near_zero or m.status in ("nan", "overflow", "clipped"):
            return ""
        from stabcheck.oracle.enclosure import CTX

        absolute = abs(CTX.mpf(float(m.got)) - CTX.mpf(m.exact))
        return f"(absolute error {CTX.nstr(absolute, 3)}, relative error {m.relative_error:.3g})"

    def _replay(self, quantity: str, worst: Measurement, where: str) -> list[str]:
        """The case (or, when its JSON is long, the row or element of the worst output) as a
        ``stabcheck oracle`` command line and as ``Case.from_json``."""
        case, what = self.case, "the whole case"
        if len(case.to_json()) > _WHOLE_CASE_CHARS and not case.reduced and worst.index and (
            quantity in ("loss", "gradient")
        ):
            index = worst.index[:1] if case.loss.rowwise else worst.index
            case = case.unit(index)
            what = f"the {'row' if self.case.loss.rowwise else 'element'} of {where}"
        grad = " --grad" if quantity != "loss" else ""
        return [
            f"Replay the oracle on {what} (hex floats are exact):",
            f"  {case.cli()}{grad}",
            f"  Case.from_json({case.to_json()!r})  # from stabcheck import Case",
        ]


def _location(m: Measurement, fmt: Format) -> str:
    """How ``m``'s NaN or infinity is not where the exact answer has one, or ""."""
    got, expected = fmt.round(float(m.got)), float(m.expected)
    if math.isnan(got) != math.isnan(expected):
        return (
            f"returned nan where the correctly rounded value is {_text(expected, fmt)}"
            if math.isnan(got)
            else f"returned {_text(m.got, fmt)} where the exact answer is nan"
        )
    if math.isinf(got) or math.isinf(expected):
        if got != expected:
            return (
                f"returned {_text(m.got, fmt)} where the correctly rounded value is "
                f"{_text(expected, fmt)}"
            )
    return ""


def _name(fn: Any) -> str:
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    if module and qualname:
        return f"{module}:{qualname}"
    return f"{type(fn).__module__}:{type(fn).__qualname__}()"


def _aligned(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  " + "  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in rows]
