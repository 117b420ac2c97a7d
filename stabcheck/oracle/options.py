"""How the catalogue's options enter the oracle: effective targets, ignored rows and
reductions (the definitions are in ``stabcheck.losses``).

Targets are exact rationals: label smoothing ``(1 - e) y + e / C`` (rows) or
``(1 - e) z + e / 2`` (elements), then times the class weights. A row whose label is
``ignore_index`` is a unit of its own that gives exactly 0, with a zero gradient, whatever
its logits hold. A reduced loss is the exact sum of the units divided by the reduction's
denominator, rounded once; its gradient is each unit's gradient divided by it (an ignored
row's stays 0, even over a zero denominator, as in PyTorch):

- ``sum``: 1.
- ``mean`` (PyTorch): for index targets the sum of ``w_k`` over the rows not ignored (0/0 =
  NaN when every row is ignored); the number of rows for probability targets; the number
  of elements for elementwise losses.
- ``sum_over_batch_size`` (Keras): the number of rows not ignored, or of elements; a zero
  denominator gives 0 (Keras divides with ``divide_no_nan``).
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
from mpmath import libmp

from stabcheck.case import Case
from stabcheck.losses import LabelKind
from stabcheck.oracle import enclosure as E
from stabcheck.oracle.enclosure import Quantity

NAN, INF = math.nan, math.inf

# options the fast path knows; a case with any other goes to the mpmath units
FAST_OPTIONS = frozenset({"pos_weight"})


def ignored(case: Case) -> np.ndarray:
    """Per row, whether its label is the case's ``ignore_index`` (all False without one)."""
    index = case.param("ignore_index") if "ignore_index" in case.loss.params else None
    if index is None:
        return np.zeros(case.predictions.shape[0], dtype=bool)
    return case.labels == index


def row_targets(case: Case, i: int) -> list[Fraction]:
    """Row ``i``'s effective targets w_j t_j, exactly."""
    C = case.classes
    if case.loss.labels is LabelKind.SPARSE:
        y = [Fraction(0)] * C
        y[int(case.labels[i])] = Fraction(1)
    else:
        y = [Fraction(float(v)) for v in case.labels[i].astype(np.float64)]
    e = Fraction(case.param("label_smoothing") or 0)
    if e:
        y = [(1 - e) * v + e / C for v in y]
    w = case.param("weight")
    if w is not None:
        y = [Fraction(float(wj)) * v for wj, v in zip(w.astype(np.float64), y)]
    return y


def element_target(case: Case, z: float) -> Fraction:
    """An element's target, smoothed towards 1/2."""
    e = Fraction(case.param("label_smoothing") or 0)
    return (1 - e) * Fraction(z) + e / 2


def denominator(case: Case) -> tuple[Fraction, bool]:
    """The reduction's denominator, and whether a zero one gives 0 (Keras) rather than
    0/0 and x/0 (PyTorch)."""
    how = case.param("reduction")
    if how == "sum":
        return Fraction(1), False
    keep = ~ignored(case) if case.loss.rowwise else None
    if not case.loss.rowwise:
        return Fraction(case.predictions.size), how == "sum_over_batch_size"
    if how == "sum_over_batch_size":
        return Fraction(int(keep.sum())), True
    if case.loss.labels is not LabelKind.SPARSE:
        return Fraction(len(keep)), False
    w = case.param("weight")
    if w is None:
        return Fraction(int(keep.sum())), False
    weights = w.astype(np.float64)[case.labels[keep]]
    return sum((Fraction(float(v)) for v in weights), Fraction(0)), False


def total(quantities: list[Quantity], prec: int) -> Quantity:
    """The exact sum of non-negative unit values (NaN and +inf absorb)."""
    if any(isinstance(q, float) and math.isnan(q) for q in quantities):
        return NAN
    if any(isinstance(q, float) for q in quantities):
        return INF
    intervals = [q for q in quantities if isinstance(q, E.Interval)]
    exact = sum((q for q in quantities if isinstance(q, Fraction)), Fraction(0))
    if not intervals:
        return exact
    return E.add(E.enclose(exact, prec), E.interval_sum(intervals, prec), prec)


def divide(q: Quantity, d: Fraction, no_nan: bool, prec: int) -> Quantity:
    """q / d for a quantity of any sign and an exact d >= 0; with ``no_nan``, x / 0 = 0."""
    if d == 0:
        if no_nan:
            return Fraction(0)
        if isinstance(q, E.Interval):  # its sign, once the precision shows it
            if E.CTX.make_mpf(q.lo) > 0:
                return INF
            return -INF if E.CTX.make_mpf(q.hi) < 0 else E.Interval(libmp.fninf, libmp.finf)
        sign = float(q)
        return NAN if sign == 0 or math.isnan(sign) else math.copysign(INF, sign)
    if isinstance(q, float):
        return q
    if isinstance(q, Fraction):
        return q / d
    return E.sdiv(q, E.enclose(d, prec), prec)


def times(q: Quantity, d: Fraction) -> Quantity:
    """q d, undoing ``divide`` for a diagnostic (condition numbers): a 64-bit enclosure."""
    if isinstance(q, E.Interval):
        return E.smul(q, E.enclose(d, 64), 64)
    return q * d if d and not isinstance(q, float) else q
