"""The exact oracle: each loss and its gradient from the exact binary inputs, correctly
rounded to the case's format.

Every output unit (an element of an elementwise loss, a row of a rowwise one) is written
as an exact part plus a transcendental part and enclosed with rigorous interval bounds;
the working precision is raised until rounding to the format is certain (see
``enclosure.certify`` and ``MAX_PRECISION``). Quantities that are rational are found
exactly and rounded exactly. Conventions for zeros, infinities and NaN are in the
docstrings of ``elementwise`` and ``rowwise``.

A fast path (``fast``) first evaluates the whole case at once in numpy double-double
arithmetic with proved error bounds, and keeps a unit's results only when every
enclosure rounds to one value of the format (Ziv's test); the other units go through the
mpmath units above, so the answers are the same either way. ``OracleResult.fast`` says
which units the fast path decided. By default the fast path runs on cases of at least
``FAST_MIN_SIZE`` (16) predictions (of a linear case: logits), below which mpmath alone
is quicker; ``evaluate(case, fast=True)`` runs it on every case, and
``evaluate(case, fast=False)``, or the environment variable ``STABCHECK_ORACLE=mpmath``,
forces the pure mpmath path.

    >>> from stabcheck.oracle import exact
    >>> exact("sparse_softmax_cross_entropy_with_logits", [[0.0, 0.0]], [0]).value
    array([0.69314718])
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, NamedTuple

import numpy as np
from mpmath import libmp

from stabcheck.case import Case
from stabcheck.losses import LabelKind
from stabcheck.oracle import enclosure, fastlinear, linear, options
from stabcheck.oracle import fast as fastpath
from stabcheck.oracle.elementwise import Binary, Focal, Weighted
from stabcheck.oracle.enclosure import MAX_PRECISION, Interval, Quantity, midpoint
from stabcheck.oracle.rowwise import Capped, Categorical, Softmax

__all__ = [
    "FAST_MIN_SIZE",
    "MAX_PRECISION",
    "Gradient",
    "OracleResult",
    "decimal",
    "evaluate",
    "exact",
]

FAST_MIN_SIZE = 16  # predictions; below this the mpmath units alone are quicker


class Gradient(NamedTuple):
    """The gradient with respect to one operand: correctly rounded values, condition
    numbers, 64-bit approximations of the exact values (mpmath numbers) and, where known,
    the scale: the first-order change of each entry per unit relative change of the inputs
    (condition times magnitude, finite at exact zeros; see ``measure.classify``)."""

    value: np.ndarray
    condition: np.ndarray
    exact: np.ndarray
    scale: np.ndarray | None = None


@dataclass(frozen=True, eq=False)
class OracleResult:
    """The oracle's answer for one case.

    ``value`` and ``gradient`` hold the correctly rounded results (float64 arrays whose
    entries are values of the case's format); ``exact`` and ``gradient_exact`` hold
    64-bit approximations of the exact results (mpmath numbers, whose exponent range is
    unbounded; built on first access); ``precision`` the bits each unit needed
    (``fast.FAST_PRECISION`` for units of the fast path). ``condition`` is the relative
    condition number of the loss with respect to the predictions (labels and parameters
    are exact data that an implementation can use exactly); ``gradient_condition`` that
    of each gradient element with respect to the predictions and soft labels, since the
    gradient subtracts the labels. ``fast`` marks the units (shaped like ``value``) that
    the fast path decided. ``operand_gradients`` holds the gradients with respect to the
    loss's operands (``linear_weight``, ``linear_bias``), when asked; the linear losses'
    condition numbers are with respect to the predictions and the operands, and their
    ``gradient_scale`` (and ``Gradient.scale``) is each gradient entry's first-order
    change per unit relative change of the inputs, a tolerance at exact zeros too
    (``measure.classify``).
    """

    case: Case
    value: np.ndarray
    condition: np.ndarray
    precision: np.ndarray
    gradient: np.ndarray | None = None
    gradient_condition: np.ndarray | None = None
    fast: np.ndarray | None = None
    lazy_exact: Callable[[], np.ndarray] | None = field(default=None, repr=False)
    lazy_gradient_exact: Callable[[], np.ndarray] | None = field(default=None, repr=False)
    operand_gradients: Mapping[str, Gradient] = field(default_factory=dict)
    gradient_scale: np.ndarray | None = None
    seconds: Mapping[str, float] = field(default_factory=dict)  # spent: fast, mpmath

    @property
    def exact(self) -> np.ndarray:
        return self._materialise("exact")

    @property
    def gradient_exact(self) -> np.ndarray | None:
        return self._materialise("gradient_exact")

    def _materialise(self, name: str) -> Any:
        cache = self.__dict__.setdefault("_cache", {})
        if name not in cache:
            make = getattr(self, f"lazy_{name}")
            cache[name] = None if make is None else make()
        return cache[name]


def evaluate(case: Case, grad: bool = False, fast: bool | None = None) -> OracleResult:
    """The correctly rounded loss (and gradient, if ``grad``) of ``case``.

    ``fast=True`` lets the double-double fast path decide the units it can certify,
    ``fast=False`` does not; by default it does for cases of at least ``FAST_MIN_SIZE``
    predictions (linear cases: logits), unless the environment variable
    ``STABCHECK_ORACLE`` is ``mpmath``. The linear losses' fast path (``fastlinear``)
    takes the whole case or declines it. ``seconds`` of the result says how long each
    path took.
    """
    start = time.perf_counter()
    fast_seconds: list[float] = []
    result = _evaluate(case, grad, fast, fast_seconds)
    spent = sum(fast_seconds)
    seconds = {"fast": spent, "mpmath": time.perf_counter() - start - spent}
    return dataclasses.replace(result, seconds=seconds)


def _evaluate(
    case: Case, grad: bool, fast: bool | None, fast_seconds: list[float]
) -> OracleResult:
    """``evaluate``, adding to ``fast_seconds`` the time the fast paths took."""
    if fast is None:  # a linear case's size is its logits' count, N x V
        size = len(case.predictions) * case.classes if case.loss.operands else case.predictions.size
        fast = (
            os.environ.get("STABCHECK_ORACLE", "").strip().lower() != "mpmath"
            and size >= FAST_MIN_SIZE
        )
    if case.loss.operands:
        start = time.perf_counter()
        decided = fastlinear.evaluate(case, grad) if fast else None
        fast_seconds.append(time.perf_counter() - start)
        if decided is not None:
            return decided
        if grad:
            return _with_operands(case)
        fast = False
    if case.reduced:
        return _reduced(case, grad)
    fast = fast and set(case.params) <= options.FAST_OPTIONS
    shape, pshape = case.output_shape, case.predictions.shape
    start = time.perf_counter()
    value, gradient = fastpath.evaluate(case, grad) if fast else fastpath.nothing(case, grad)
    fast_seconds.append(time.perf_counter() - start)
    decided = value.ok.reshape(-1).copy()  # per unit: its value and all its gradient
    # the mpmath units' results go into the fast path's arrays (to_mpf reads only h, lo, q
    # and ok, which stay as they are)
    if gradient is not None:
        decided &= gradient.ok.reshape(decided.size, -1).all(axis=1)
        flat_grad = gradient.value.reshape(decided.size, -1)
        grad_conds = gradient.condition.reshape(decided.size, -1)
    flat_value = value.value.reshape(-1)
    conds = value.condition.reshape(-1)
    precs = np.full(flat_value.size, fastpath.FAST_PRECISION, dtype=np.int64)
    exacts: dict[int, Any] = {}
    grad_exacts: dict[int, list[Any]] = {}
    for i, unit in _units(case, grad, ~decided):
        (v, q), pairs, prec = _certify(unit, case)
        qs = [g for _, g in pairs]
        kappa, grad_kappa = unit.condition(q, qs)
        flat_value[i], conds[i], precs[i] = v, kappa, prec
        exacts[i] = midpoint(q)
        if grad:
            flat_grad[i] = [g for g, _ in pairs]
            grad_conds[i] = grad_kappa
            grad_exacts[i] = [midpoint(g) for g in qs]

    def value_exact() -> np.ndarray:
        out = fastpath.to_mpf(value).reshape(-1)
        for i, e in exacts.items():
            out[i] = e
        return out.reshape(shape)

    result: dict[str, Any] = dict(
        case=case,
        value=flat_value.reshape(shape),
        condition=conds.reshape(shape),
        precision=precs.reshape(shape),
        fast=decided.reshape(shape),
        lazy_exact=value_exact,
    )
    if gradient is not None:

        def gradient_exact() -> np.ndarray:
            out = fastpath.to_mpf(gradient).reshape(decided.size, -1)
            for i, es in grad_exacts.items():
                out[i] = es
            return out.reshape(pshape)

        result.update(
            gradient=flat_grad.reshape(pshape),
            gradient_condition=grad_conds.reshape(pshape),
            lazy_gradient_exact=gradient_exact,
        )
    return OracleResult(**result)


def _with_operands(case: Case) -> OracleResult:
    """A case with operands: its values as any case's, its gradients from
    ``linear.gradients`` (the units' gradients are with respect to the logits)."""
    result = evaluate(case, grad=False, fast=False)
    grads = {k: Gradient(*v) for k, v in linear.gradients(case).items()}
    own = grads.pop("predictions")
    return dataclasses.replace(
        result,
        gradient=own.value,
        gradient_condition=own.condition,
        lazy_gradient_exact=lambda: own.exact,
        gradient_scale=own.scale,
        operand_gradients=grads,
    )


def exact(
    loss: str,
    predictions: Any,
    labels: Any,
    format: str = "float64",
    grad: bool = False,
    **params: Any,
) -> OracleResult:
    """Build a ``Case`` from plain arrays and evaluate it."""
    return evaluate(Case.build(loss, predictions, labels, format=format, **params), grad=grad)


def decimal(case: Case, digits: int = 30) -> list[str]:
    """The exact loss of each unit to ``digits`` significant decimal digits (the enclosure
    is narrowed until its width is below a unit in the last digit's hundredth)."""
    out = []
    for unit in _value_units(case):
        prec = max(64, int(digits * 3.33) + 16)
        while True:
            q, _ = unit(prec)
            text = _decimal(q, digits, prec)
            if text is not None:
                out.append(text)
                break
            if prec >= enclosure.MAX_PRECISION:
                raise enclosure.PrecisionLimitReached(
                    f"{digits} digits were not certain at {prec} bits"
                )
            prec *= 2
    return out


def _decimal(q: Quantity, digits: int, prec: int) -> str | None:
    if isinstance(q, float):
        return str(q)
    if not isinstance(q, Interval):
        q = Interval(*(enclosure.from_fraction(q, prec, r) for r in ("f", "c")))
        if q.lo == q.hi:
            return libmp.to_str(q.lo, digits)
    width = libmp.mpf_sub(q.hi, q.lo, 32, "c")
    limit = libmp.mpf_mul(libmp.mpf_abs(q.lo), libmp.from_man_exp(1, -int(digits * 3.33) - 8))
    if q.lo != libmp.fzero and libmp.mpf_lt(width, limit):
        return libmp.to_str(libmp.mpf_shift(libmp.mpf_add(q.lo, q.hi, prec + 1), -1), digits)
    return None


def _certify(unit: Any, case: Case) -> tuple[Any, Any, int]:
    used = [0]

    def tracked(prec: int) -> tuple[Quantity, list[Quantity]]:
        used[0] = prec
        return unit(prec)

    value, grads = enclosure.certify(tracked, case.format)
    return value, grads, used[0]


def _value_units(case: Case) -> list[Any]:
    """What ``decimal`` encloses: each unit's value, or the one reduced value."""
    values = [unit for _, unit in _units(case, False)]
    return [_Reduced(case, values)] if case.reduced else values


class _Reduced:
    """The reduced value of a case: the exact sum of its units' values over the reduction's
    denominator; the units' last enclosures are kept for condition numbers."""

    def __init__(self, case: Case, units: list[Any]) -> None:
        self.units, self.last = units, []
        self.d, self.no_nan = options.denominator(case)

    def __call__(self, prec: int) -> tuple[Quantity, list[Quantity]]:
        self.last = [unit(prec)[0] for unit in self.units]
        summed = options.total(self.last, prec)
        return options.divide(summed, self.d, self.no_nan, prec), []

    def condition(self) -> float:
        """sum_u kappa_u |L_u| / sum_u |L_u|, the units' values being non-negative."""
        kappas = [float(unit.condition(q, [])[0]) for unit, q in zip(self.units, self.last)]
        weights = [abs(float(midpoint(q))) if k == k else 0.0 for k, q in zip(kappas, self.last)]
        whole = sum(weights)
        return sum(k * w for k, w in zip(kappas, weights) if w) / whole if whole else math.nan


def _reduced(case: Case, grad: bool) -> OracleResult:
    """A reduced case: the exact sum of its units over ``options.denominator``, rounded
    once, and each unit's gradient over the same denominator (mpmath units only)."""
    reduced = _value_units(case)[0]
    (value, q), _ = enclosure.certify(reduced, case.format)
    result: dict[str, Any] = dict(
        case=case,
        value=np.array(value),
        condition=np.array(reduced.condition()),
        precision=np.array(0),
        fast=np.array(False),
        lazy_exact=lambda: np.array(midpoint(q), dtype=object),
    )
    if grad:
        d, no_nan, pshape = reduced.d, reduced.no_nan, case.predictions.shape
        rows, conds, exacts = [], [], []
        skip = options.ignored(case) if case.loss.rowwise else None
        for i, unit in _units(case, True):
            if skip is not None and skip[i]:  # an ignored row's zero gradient stays 0
                rows.append([0.0] * pshape[1])
                conds.append([0.0] * pshape[1])
                exacts.append([midpoint(Fraction(0))] * pshape[1])
                continue

            def scaled(prec: int, unit: Any = unit) -> tuple[Quantity, list[Quantity]]:
                v, gs = unit(prec)
                return v, [options.divide(g, d, no_nan, prec) for g in gs]

            (_, v), pairs = enclosure.certify(scaled, case.format)
            rows.append([g for g, _ in pairs])
            # a gradient's relative condition is the same over d: measured on g itself
            unscaled = [options.times(gq, d) for _, gq in pairs]
            conds.append(unit.condition(v, unscaled)[1])
            exacts.append([midpoint(gq) for _, gq in pairs])
        result.update(
            gradient=np.array(rows, dtype=np.float64).reshape(pshape),
            gradient_condition=np.array(conds, dtype=np.float64).reshape(pshape),
            lazy_gradient_exact=lambda: np.array(exacts, dtype=object).reshape(pshape),
        )
    return OracleResult(**result)


def _softmax_unit(case: Case, i: int, grad: bool) -> Any:
    soft = case.loss.labels is not LabelKind.SPARSE
    x, y = case.predictions[i].astype(np.float64), options.row_targets(case, i)
    cap, z_loss = case.param("softcap"), case.param("z_loss") or 0.0
    if cap is not None:
        return Capped(x, y, grad, soft, cap, z_loss)
    return Softmax(x, y, grad, soft, z_loss)


def _categorical_unit(case: Case, i: int, grad: bool) -> Any:
    soft = case.loss.labels is not LabelKind.SPARSE
    return Categorical(case.predictions[i].astype(np.float64), options.row_targets(case, i),
                       grad, soft)  # fmt: skip


def _binary_unit(case: Case, x: float, z: float, grad: bool) -> Any:
    return Binary(x, options.element_target(case, z))


def _sigmoid_unit(case: Case, x: float, z: float, grad: bool) -> Any:
    q = case.param("pos_weight") if "pos_weight" in case.loss.params else 1.0
    return Weighted(x, options.element_target(case, z), q, grad)


def _focal_unit(case: Case, x: float, z: float, grad: bool) -> Any:
    return Focal(x, z, case.param("alpha"), case.param("gamma"), grad)


# The oracle's formulas, by the name a loss's spec gives (``LossSpec.oracle``): elementwise
# ones build a unit from (case, x, z, grad), rowwise ones from (case, row, grad).
ELEMENTWISE = {"binary": _binary_unit, "sigmoid": _sigmoid_unit, "focal": _focal_unit}
ROWWISE = {"softmax": _softmax_unit, "categorical": _categorical_unit, "linear": linear.row_unit}


class _Ignored:
    """A row whose label is ``ignore_index``: 0, with a zero gradient."""

    def __init__(self, classes: int) -> None:
        self.classes = classes

    def __call__(self, prec: int) -> tuple[Quantity, list[Quantity]]:
        return Fraction(0), [Fraction(0)] * self.classes

    def condition(self, value: Quantity, grads: list[Quantity]) -> tuple[float, list[float]]:
        return 0.0, [0.0] * len(grads)


def _units(case: Case, grad: bool, which: np.ndarray | None = None) -> Iterator[tuple[int, Any]]:
    """(index, oracle unit) per output element or row (only those in ``which``, if given),
    built by the formula the loss's spec names."""
    spec = case.loss
    preds = case.predictions.astype(np.float64, copy=False)
    units = preds.shape[0] if spec.rowwise else preds.size
    wanted = np.ones(units, dtype=bool) if which is None else which
    if not spec.rowwise:
        build = ELEMENTWISE[spec.oracle]
        labels = case.labels.astype(np.float64).ravel()
        flat = preds.ravel()
        for i in np.flatnonzero(wanted).tolist():
            yield i, build(case, float(flat[i]), float(labels[i]), grad)
        return
    build = ROWWISE[spec.oracle]
    skip = options.ignored(case)
    for i in np.flatnonzero(wanted).tolist():
        yield i, (_Ignored(case.classes) if skip[i] else build(case, i, grad))
