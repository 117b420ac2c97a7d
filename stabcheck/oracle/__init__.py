"""The exact oracle: each loss and its gradient from the exact binary inputs, correctly
rounded to the case's format.

Every output unit (an element of an elementwise loss, a row of a rowwise one) is written
as an exact part plus a transcendental part and enclosed with rigorous interval bounds;
the working precision is raised until rounding to the format is certain (see
``enclosure.certify`` and ``MAX_PRECISION``). Quantities that are rational are found
exactly and rounded exactly. Conventions for zeros, infinities and NaN are in the
docstrings of ``elementwise`` and ``rowwise``.

    >>> from stabcheck.oracle import exact
    >>> exact("sparse_softmax_cross_entropy_with_logits", [[0.0, 0.0]], [0]).value
    array([0.69314718])
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from mpmath import libmp

from stabcheck.case import Case
from stabcheck.losses import InputKind, LabelKind
from stabcheck.oracle import enclosure
from stabcheck.oracle.elementwise import Binary, Weighted
from stabcheck.oracle.enclosure import MAX_PRECISION, Interval, Quantity, midpoint
from stabcheck.oracle.rowwise import Categorical, Softmax

__all__ = ["MAX_PRECISION", "OracleResult", "decimal", "evaluate", "exact"]


@dataclass(frozen=True, eq=False)
class OracleResult:
    """The oracle's answer for one case.

    ``value`` and ``gradient`` hold the correctly rounded results (float64 arrays whose
    entries are values of the case's format); ``exact`` and ``gradient_exact`` hold
    64-bit approximations of the exact results (mpmath numbers, whose exponent range is
    unbounded); ``precision`` the bits each unit needed. ``condition`` is the relative
    condition number of the loss with respect to the predictions (labels and parameters
    are exact data that an implementation can use exactly); ``gradient_condition`` that
    of each gradient element with respect to the predictions and soft labels, since the
    gradient subtracts the labels.
    """

    case: Case
    value: np.ndarray
    exact: np.ndarray
    condition: np.ndarray
    precision: np.ndarray
    gradient: np.ndarray | None = None
    gradient_exact: np.ndarray | None = None
    gradient_condition: np.ndarray | None = None


def evaluate(case: Case, grad: bool = False) -> OracleResult:
    """The correctly rounded loss (and gradient, if ``grad``) of ``case``."""
    values, exacts, conds, precs = [], [], [], []
    grads, grad_exacts, grad_conds = [], [], []
    for unit in _units(case, grad):
        (value, q), pairs, prec = _certify(unit, case)
        qs = [g for _, g in pairs]
        kappa, grad_kappa = unit.condition(q, qs)
        values.append(value)
        exacts.append(midpoint(q))
        conds.append(kappa)
        precs.append(prec)
        if grad:
            grads.extend(v for v, _ in pairs)
            grad_exacts.extend(midpoint(g) for g in qs)
            grad_conds.extend(grad_kappa)
    shape = case.output_shape
    result: dict[str, Any] = dict(
        case=case,
        value=np.array(values, dtype=np.float64).reshape(shape),
        exact=_objects(exacts, shape),
        condition=np.array(conds, dtype=np.float64).reshape(shape),
        precision=np.array(precs, dtype=np.int64).reshape(shape),
    )
    if grad:
        pshape = case.predictions.shape
        result.update(
            gradient=np.array(grads, dtype=np.float64).reshape(pshape),
            gradient_exact=_objects(grad_exacts, pshape),
            gradient_condition=np.array(grad_conds, dtype=np.float64).reshape(pshape),
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
    for unit in _units(case, grad=False):
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


def _units(case: Case, grad: bool) -> Iterator[Any]:
    """One oracle unit per output element or row, chosen from the catalogue's spec."""
    spec = case.loss
    preds = case.predictions.astype(np.float64)
    if not spec.rowwise:
        labels = case.labels.astype(np.float64)
        pos_weight = case.params.get("pos_weight")
        for x, z in zip(preds.ravel().tolist(), labels.ravel().tolist()):
            if spec.inputs is InputKind.PROBABILITIES:
                yield Binary(x, z)
            else:
                yield Weighted(x, z, 1.0 if pos_weight is None else pos_weight, grad)
        return
    soft = spec.labels is not LabelKind.SPARSE
    if soft:
        labels = case.labels.astype(np.float64)
    else:
        labels = np.zeros_like(preds)
        labels[np.arange(len(preds)), case.labels] = 1.0
    row_unit = Softmax if spec.inputs is InputKind.LOGITS else Categorical
    for row, label_row in zip(preds, labels):
        yield row_unit(row, label_row, grad, soft)


def _objects(items: list[Any], shape: tuple[int, ...]) -> np.ndarray:
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return array.reshape(shape)
