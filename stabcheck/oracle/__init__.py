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
``FAST_MIN_SIZE`` (16) predictions, below which mpmath alone is quicker;
``evaluate(case, fast=True)`` runs it on every case, and ``evaluate(case, fast=False)``,
or the environment variable ``STABCHECK_ORACLE=mpmath``, forces the pure mpmath path.

    >>> from stabcheck.oracle import exact
    >>> exact("sparse_softmax_cross_entropy_with_logits", [[0.0, 0.0]], [0]).value
    array([0.69314718])
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from mpmath import libmp

from stabcheck.case import Case
from stabcheck.losses import InputKind, LabelKind
from stabcheck.oracle import enclosure
from stabcheck.oracle import fast as fastpath
from stabcheck.oracle.elementwise import Binary, Weighted
from stabcheck.oracle.enclosure import MAX_PRECISION, Interval, Quantity, midpoint
from stabcheck.oracle.rowwise import Categorical, Softmax

__all__ = ["FAST_MIN_SIZE", "MAX_PRECISION", "OracleResult", "decimal", "evaluate", "exact"]

FAST_MIN_SIZE = 16  # predictions; below this the mpmath units alone are quicker


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
    the fast path decided.
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
    predictions, unless the environment variable ``STABCHECK_ORACLE`` is ``mpmath``.
    """
    if fast is None:
        fast = (
            os.environ.get("STABCHECK_ORACLE", "").strip().lower() != "mpmath"
            and case.predictions.size >= FAST_MIN_SIZE
        )
    shape, pshape = case.output_shape, case.predictions.shape
    value, gradient = fastpath.evaluate(case, grad) if fast else fastpath.nothing(case, grad)
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
    for _, unit in _units(case, grad=False):
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


def _units(case: Case, grad: bool, which: np.ndarray | None = None) -> Iterator[tuple[int, Any]]:
    """(index, oracle unit) per output element or row (only those in ``which``, if given),
    chosen from the catalogue's spec."""
    spec = case.loss
    preds = case.predictions.astype(np.float64, copy=False)
    units = preds.shape[0] if spec.rowwise else preds.size
    wanted = np.ones(units, dtype=bool) if which is None else which
    if not spec.rowwise:
        labels = case.labels.astype(np.float64).ravel()
        flat = preds.ravel()
        pos_weight = case.params.get("pos_weight")
        for i in np.flatnonzero(wanted).tolist():
            x, z = float(flat[i]), float(labels[i])
            if spec.inputs is InputKind.PROBABILITIES:
                yield i, Binary(x, z)
            else:
                yield i, Weighted(x, z, 1.0 if pos_weight is None else pos_weight, grad)
        return
    soft = spec.labels is not LabelKind.SPARSE
    row_unit = Softmax if spec.inputs is InputKind.LOGITS else Categorical
    for i in np.flatnonzero(wanted).tolist():
        if soft:
            label_row = case.labels[i].astype(np.float64)
        else:
            label_row = np.zeros(preds.shape[1])
            label_row[case.labels[i]] = 1.0
        yield i, row_unit(preds[i], label_row, grad, soft)
