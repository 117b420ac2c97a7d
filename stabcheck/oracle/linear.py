"""Linear cross-entropy: the softmax cross-entropy of the logits x = h W^T + b, computed
exactly from the hidden states h (N x D), the classifier W (V x D) and the bias b (V).

Each finite logit is a sum of exact products of binary floats: a dyadic rational, found
exactly (``logits``, through the error-free BLAS products of ``dot``). Non-finite inputs
follow IEEE rules (inf times 0 and +inf plus -inf are NaN; otherwise an infinite product
makes the logit infinite); the softmax conventions of ``rowwise`` then apply to the logits.
A row's loss is ``rowwise.Softmax`` on its exact logits (``LinearRow``), or under a softcap
``rowwise.Capped`` (``CappedLinearRow``: u = c tanh(x / c), G carries sech^2(x / c)). With
G = dL/dx (N x V, one row per unit),

    dL/dh = G W,    dL/dW = G^T h,    dL/db = sum_n G_n,

each entry an exact sum of G's rational parts times exact inputs plus an enclosed sum of
its transcendental parts (``gradients``), divided by the reduction's denominator and
rounded once, the precision raised until every entry's rounding is certain.

Condition numbers are componentwise with respect to h, W and b (labels and options are
exact data), from float64 approximations: for a row's loss
``(sum_d |h_d| |dL/dh_d| + sum_v |G_v| (sum_d |W_vd h_d| + |b_v|)) / L``, and for a
gradient entry the first-order bound of its change, each logit x_v moved by at most
``a_v = sum_d |W_vd h_d| + |b_v|`` times eps, over its magnitude. z-loss is left out of them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

import numpy as np

from stabcheck.case import Case
from stabcheck.losses import LabelKind
from stabcheck.oracle import dot, options
from stabcheck.oracle import enclosure as E
from stabcheck.oracle.enclosure import Quantity, midpoint
from stabcheck.oracle.rowwise import Capped, Softmax

NAN, INF = math.nan, math.inf


def logits(h: Any, W: Any, b: Any = None) -> np.ndarray:
    """h W^T + b exactly (``dot.products``): an N x V object array of dyadic Fractions, and
    floats where an input is not finite (IEEE rules)."""
    h, W = np.atleast_2d(np.asarray(h, np.float64)), np.asarray(W, np.float64)
    b = None if b is None else np.asarray(b, np.float64)
    finite_h, finite_w = np.isfinite(h).all(axis=1), np.isfinite(W).all(axis=1)
    finite_b = np.ones(len(W), bool) if b is None else np.isfinite(b)
    exact = dot.products(np.where(finite_h[:, None], h, 0.0), np.where(finite_w[:, None], W, 0.0),
                         None if b is None else np.where(finite_b, b, 0.0)).fractions()  # fmt: skip
    out = np.empty((h.shape[0], W.shape[0]), dtype=object)
    for n in range(h.shape[0]):
        for v in range(W.shape[0]):
            if finite_h[n] and finite_w[v] and finite_b[v]:
                out[n, v] = exact[n][v]
            else:
                out[n, v] = _ieee(h[n], W[v], float(b[v]) if b is not None and not finite_b[v]
                                  else Fraction(0))  # fmt: skip
    return out


def _ieee(h: np.ndarray, w: np.ndarray, bias: Fraction | float) -> float:
    """A logit with a non-finite input, by IEEE rules: the products with a non-finite
    factor (inf times 0 is NaN) and the bias decide; the finite rest cannot change an
    infinite or NaN sum (+inf plus -inf is NaN)."""
    wild = ~(np.isfinite(h) & np.isfinite(w))
    with np.errstate(invalid="ignore"):
        terms = [float(p) for p in h[wild] * w[wild]]
    terms += [bias] if isinstance(bias, float) else []
    if any(math.isnan(t) for t in terms) or len(set(terms)) > 1:
        return NAN
    return terms[0]


class _Linear:
    """What a row of a linear loss adds to its softmax unit: the inputs h_n, W, b, and its
    condition number with respect to them (see the module docstring)."""

    inputs: tuple[np.ndarray, np.ndarray, np.ndarray | None]
    y: list[Fraction]
    cap: float | None = None

    def condition(self, value: Quantity, grads: list[Quantity]) -> tuple[float, list[float]]:
        h, W, b = (None if a is None else np.asarray(a, np.float64) for a in self.inputs)
        targets = np.array([float(v) for v in self.y])
        approx = Approx(np.atleast_2d(h), W, b, targets[None, :], self.cap)
        kappa = approx.value_condition()[0]
        value = float(midpoint(value)) if not isinstance(value, float) else value
        if not (math.isfinite(value) and math.isfinite(kappa)):
            return NAN, []
        loss = abs(value)
        return (kappa / loss if loss else (0.0 if kappa == 0 else INF)), []


class LinearRow(_Linear, Softmax):
    """One row's loss: ``Softmax`` on the row's exact logits h_n W^T + b."""

    def __init__(self, h: np.ndarray, W: np.ndarray, b: np.ndarray | None, y: Any,
                 grad: bool, soft: bool, z_loss: float = 0.0) -> None:  # fmt: skip
        super().__init__(logits(h, W, b)[0], y, grad, soft, z_loss)
        self.inputs = (h, W, b)


class CappedLinearRow(_Linear, Capped):
    """One row's loss under a softcap c: ``Capped`` on the row's exact logits, so
    u = c tanh((h_n W^T + b) / c) and G = dL/dx carries the factor sech^2(x / c)."""

    def __init__(self, h: np.ndarray, W: np.ndarray, b: np.ndarray | None, y: Any,
                 grad: bool, soft: bool, softcap: float, z_loss: float = 0.0) -> None:  # fmt: skip
        super().__init__(logits(h, W, b)[0], y, grad, soft, softcap, z_loss)
        self.inputs, self.cap = (h, W, b), softcap


class Approx:
    """float64 approximations for condition numbers: logits x, under a softcap c the
    capped u = c tanh(x / c) (else u = x) and s = du/dx = sech^2(x / c), the softmax p of
    u, G = (B p - y) s and a = |h| |W|^T + |b|, the bound of each logit's change per unit
    of relative error (s a for u)."""

    def __init__(self, h: np.ndarray, W: np.ndarray, b: np.ndarray | None,
                 y: np.ndarray, cap: float | None = None) -> None:  # fmt: skip
        with np.errstate(all="ignore"):
            x = h @ W.T + (0.0 if b is None else b)
            self.ds: np.ndarray | None = None
            if cap is None:
                u, self.s = x, np.ones_like(x)
            else:  # a -inf logit (a masked lane) stays -inf, with s = 0
                t = np.tanh(x / cap)
                u = np.where(x == -INF, -INF, cap * t)
                self.s = 1 - t * t
                self.ds = np.abs(2 * self.s * t / cap)  # |ds/dx|
            shifted = u - u.max(axis=1, keepdims=True)
            e = np.exp(shifted)
            self.p = e / e.sum(axis=1, keepdims=True)
            self.B = y.sum(axis=1, keepdims=True)
            self.G = (self.B * self.p - y) * self.s
            # an infinite bias (a masked class) moves with no relative error: no term
            bias = 0.0 if b is None else np.where(np.isfinite(b), np.abs(b), 0.0)
            self.a = np.abs(h) @ np.abs(W).T + bias
        self.h, self.W, self.b, self.y = h, W, b, y

    def value_condition(self) -> np.ndarray:
        """Per row, sum_d |h_d dL/dh_d| + sum_v |G_v| a_v (before dividing by L)."""
        with np.errstate(all="ignore"):
            gh = self.G @ self.W
            return (np.abs(self.h) * np.abs(gh)).sum(axis=1) + (np.abs(self.G) * self.a).sum(1)

    def gradient_numerators(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """First-order bounds of the change of dL/dh, dL/dW, dL/db per unit of relative
        error in every input: with a' = s a, |dG| <= s B p (a' + sum_u p_u a'_u) +
        |B p - y| |ds/dx| a, then |dG| |W| + |G| |dW|."""
        with np.errstate(all="ignore"):
            moved = self.s * self.a
            dG = self.s * self.B * self.p * (moved + (self.p * moved).sum(axis=1, keepdims=True))
            if self.ds is not None:  # the slope's own change, under a softcap
                dG += np.abs(self.B * self.p - self.y) * self.ds * self.a
            absG, absW, absh = np.abs(self.G), np.abs(self.W), np.abs(self.h)
            dh = dG @ absW + absG @ absW
            dW = dG.T @ absh + absG.T @ absh
            db = dG.sum(axis=0) + absG.sum(axis=0)
        return dh, dW, db


def relative(numerator: np.ndarray, value: np.ndarray) -> np.ndarray:
    """|numerator / value|: 0/0 is 0, x/0 is inf, NaN where the value is not finite."""
    with np.errstate(all="ignore"):
        out = np.abs(numerator / value)
    out[(value == 0) & (numerator == 0)] = 0.0
    out[~np.isfinite(value)] = NAN
    return out


def row_unit(case: Case, i: int, grad: bool) -> LinearRow | CappedLinearRow:
    """The oracle unit of row ``i`` of a linear case."""
    h = case.predictions[i : i + 1].astype(np.float64)
    W, b = case.operands["linear_weight"].astype(np.float64), _bias(case)
    y, soft = options.row_targets(case, i), case.loss.labels is not LabelKind.SPARSE
    z_loss, cap = case.param("z_loss") or 0.0, case.param("softcap")
    if cap is not None:
        return CappedLinearRow(h, W, b, y, grad, soft, cap, z_loss)
    return LinearRow(h, W, b, y, grad, soft, z_loss)


def row_groups(units: dict[int, Any]) -> list[list[int]]:
    """The rows (keys of ``units``) grouped by equal G: equal targets, and logits equal up
    to a shift (``_shape``)."""
    groups: dict[tuple, list[int]] = {}
    for n, unit in units.items():
        groups.setdefault((_shape(unit), tuple(unit.y)), []).append(n)
    return list(groups.values())


def _shape(unit: Any) -> tuple:
    """What a row's G depends on besides its targets: its logits less their maximum (the
    softmax is shift-invariant; -inf stays), or the logits themselves under a z-loss or
    where one is NaN or +inf, or under a softcap, which is not shift-invariant (as
    dictionary keys: NaN equal to itself)."""
    x = unit.x
    if isinstance(unit, Capped) or unit.s or not isinstance(unit.m, Fraction) or any(
        isinstance(v, float) and v != -INF for v in x
    ):
        return ("as is", *(repr(v) if isinstance(v, float) else v for v in x))
    return ("shifted", *(v if isinstance(v, float) else v - unit.m for v in x))


def sum_exact(values: np.ndarray) -> Fraction | float:
    """The exact sum of binary floats (IEEE where one is not finite)."""
    if not np.isfinite(values).all():
        with np.errstate(all="ignore"):
            return float(np.sum(values))
    return sum((Fraction(float(v)) for v in values), Fraction(0))


def _bias(case: Case) -> np.ndarray | None:
    b = case.operands.get("linear_bias")
    return None if b is None else b.astype(np.float64)


def _exact(values: np.ndarray) -> list[Fraction | float]:
    """Binary floats as exact Fractions, non-finite ones as they are."""
    return [Fraction(float(v)) if math.isfinite(v) else float(v) for v in values]


def weighted_sum(qs: Sequence[Quantity], ws: Sequence[Fraction | float], prec: int) -> Quantity:
    """sum_i q_i w_i for quantities q and exact weights w: exact where every q is rational,
    enclosed otherwise; IEEE rules where a term is not finite."""
    if any(isinstance(v, float) for v in (*qs, *ws)):
        with np.errstate(all="ignore"):
            terms = [float(midpoint(q)) * float(w) for q, w in zip(qs, ws)]
            return float(np.sum(terms))
    exact, intervals = Fraction(0), []
    for q, w in zip(qs, ws):
        if not w:
            continue
        if isinstance(q, Fraction):
            exact += q * w
        else:
            intervals.append(E.smul(q, E.enclose(w, prec), prec))
    if not intervals:
        return exact
    return E.add(E.enclose(exact, prec), E.interval_sum(intervals, prec), prec)


def shares_dot(unit: Any, G: list[Quantity], W: list[list[Fraction | float]],
                prec: int) -> list[Quantity]:  # fmt: skip
    """dL/dh of one row, sum_v G_v W_vd for each d, exactly where it is rational.

    Classes with equal logits share one share S = Y p (their G_v = S - y_v differ by exact
    label terms) and, without z-loss, n_g shares of the groups g sum to Y. So

        sum_v G_v W_vd = sum_g S_g (W_gd - n_g c_d) + Y c_d - sum_v y_v W_vd,

    with W_gd the group's sum and c_d = W_gd / n_g of the largest logit's group. Shares of
    distinct logits are linearly independent over the rationals (Lindemann-Weierstrass),
    so a rational result has every coefficient W_gd - n_g c_d zero: found exactly, where
    intervals alone never narrow to a point."""
    columns = list(zip(*W))
    if isinstance(unit, Capped):
        return [_capped_dot(unit, G, column, prec) for column in columns]
    rational = all(isinstance(g, Fraction) for g in G)
    special = any(isinstance(x, float) and x != -INF for x in unit.x)
    if unit.s or rational or special or any(isinstance(g, float) for g in G):
        return [weighted_sum(G, column, prec) for column in columns]
    groups: dict[Fraction, list[int]] = {}  # -inf logits (p = 0, G = -y) in none
    for v, x in enumerate(unit.x):
        if x != -INF:
            groups.setdefault(x, []).append(v)
    top = groups[unit.m]
    shares = {x: _plus(G[v[0]], unit.y[v[0]], prec) for x, v in groups.items()}
    out = []
    for column in columns:
        sums = {x: sum((column[v] for v in members), Fraction(0)) for x, members in groups.items()}
        c = sums[unit.m] / len(top)
        labels = sum((y * w for y, w in zip(unit.y, column) if y), Fraction(0))
        coefficients = [sums[x] - len(members) * c for x, members in groups.items()]
        total = weighted_sum(list(shares.values()), coefficients, prec)
        out.append(_plus(total, unit.Y * c - labels, prec))
    return out


def _capped_dot(unit: Capped, G: list[Quantity], column: Sequence[Fraction | float],
                prec: int) -> Quantity:  # fmt: skip
    """sum_v G_v W_vd under a softcap. Where every live logit ties at a finite maximum
    without z-loss, G_v = (Y/n - y_v) sech^2(m / c) share one factor, so the sum is
    exactly 0 where the rational sum_v (Y/n - y_v) W_vd is (intervals never narrow to 0)."""
    tied = unit._special() is None and not unit.others.size and not unit.s
    if tied and isinstance(unit.m, Fraction) and all(isinstance(column[v], Fraction)
                                                      for v in unit.ties):  # fmt: skip
        n = unit.ties.size
        if not sum(((unit.Y / n - unit.y[v]) * column[v] for v in unit.ties), Fraction(0)):
            return Fraction(0)
    return weighted_sum(G, column, prec)


def _plus(q: Quantity, r: Fraction, prec: int) -> Quantity:
    """q + r for a finite quantity q and an exact r."""
    if isinstance(q, Fraction):
        return q + r
    return E.add(q, E.enclose(r, prec), prec) if r else q


def gradients(case: Case) -> dict[str, tuple[np.ndarray, ...]]:
    """dL/dh, dL/dW and dL/db of a linear case (unreduced: of the sum of the rows' losses;
    reduced: of the reduced loss), each as (correctly rounded values, condition numbers,
    64-bit exact approximations, scales: the conditions' numerators), keyed ``predictions``,
    ``linear_weight``, ``linear_bias`` (the last only when the case has a bias).

    dL/dh is ``shares_dot`` per row; dL/dW and dL/db sum over rows, and rows with equal
    targets and logits equal up to a shift (equal G, without z-loss) are summed first
    (their h exactly), so that such rows cancel exactly. Rows whose softmaxes are
    permutations of each other can still cancel exactly across classes; there the
    precision runs out (``PrecisionLimitReached``). Then each entry is divided by the
    reduction's denominator."""
    h = case.predictions.astype(np.float64)
    W = case.operands["linear_weight"].astype(np.float64)
    b = _bias(case)
    N, V = h.shape[0], W.shape[0]
    skip = options.ignored(case)
    units = {n: row_unit(case, n, True) for n in range(N) if not skip[n]}
    d, no_nan = options.denominator(case) if case.reduced else (Fraction(1), False)
    exact_W = [_exact(row) for row in W]
    members = row_groups(units)
    summed_h = [[sum_exact(h[rows, j]) for j in range(h.shape[1])] for rows in members]

    # what no kept row contributes to (an ignored row's dL/dh; everything when every row
    # is ignored) stays exactly 0, even over a zero denominator, as in PyTorch
    empty = [bool(skip[n]) for n in range(N) for _ in range(h.shape[1])]
    empty += [not units] * (V * h.shape[1] + (0 if b is None else V))

    def evaluate(prec: int) -> list[Quantity]:
        G = {n: unit(prec)[1] for n, unit in units.items()}
        out = []
        for n in range(N):
            row = [Fraction(0)] * h.shape[1] if skip[n] else shares_dot(units[n], G[n],
                                                                          exact_W, prec)
            out += row
        first = [G[rows[0]] for rows in members]
        for v in range(V):
            column = [g[v] for g in first]
            out += [weighted_sum(column, [s[j] for s in summed_h], prec) for j in range(h.shape[1])]
        if b is not None:
            counts = [Fraction(len(rows)) for rows in members]
            out += [weighted_sum([g[v] for g in first], counts, prec) for v in range(V)]
        return [q if none else options.divide(q, d, no_nan, prec) for q, none in zip(out, empty)]

    pairs = E.certify_all(evaluate, case.format)
    y = np.array([[0.0] * V if skip[n] else [float(t) for t in options.row_targets(case, n)]
                  for n in range(N)])  # fmt: skip
    kept_h = np.where(skip[:, None], 0.0, h)  # an ignored row's NaN moves nothing
    numerators = Approx(kept_h, W, b, y, case.param("softcap")).gradient_numerators()
    shapes = {"predictions": h.shape, "linear_weight": W.shape, "linear_bias": (V,)}
    names = [name for name in shapes if name != "linear_bias" or b is not None]
    out, start = {}, 0
    for name, numerator in zip(names, numerators):
        size = math.prod(shapes[name])
        chunk = pairs[start : start + size]
        start += size
        values = np.array([v for v, _ in chunk], dtype=np.float64).reshape(shapes[name])
        exacts = np.array([midpoint(q) for _, q in chunk], dtype=object).reshape(shapes[name])
        approx = np.array([float(e) for e in exacts.ravel()]).reshape(shapes[name])
        with np.errstate(all="ignore"):
            scaled = numerator / float(d) if d else numerator
        out[name] = (values, relative(scaled, approx), exacts, scaled)
    return out
