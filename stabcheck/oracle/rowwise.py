"""Exact rowwise losses: categorical cross-entropy on probabilities and softmax
cross-entropy on logits, with soft labels (sparse labels arrive one-hot). Each row is a
unit: ``unit(prec)`` encloses the loss and its gradient at ``prec`` bits.

Conventions: 0 log 0 = 0; a probability of 0 under a positive label, or a -inf logit
under a positive label, gives +inf; probabilities are used as given (no
renormalisation); infinite logits are limits where the limit exists (the true class
alone at +inf with the others finite costs 0; a -inf logit under a zero label
contributes nothing and gets a zero gradient); where it does not (two +inf logits
sharing a positive label, or every logit -inf) the answer is NaN, and so is the gradient
of the +inf classes, while the finite ones keep their limit -y_i; NaN in gives NaN out.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from fractions import Fraction

import numpy as np
from mpmath import libmp

from stabcheck.formats import to_mpf
from stabcheck.oracle import enclosure as E
from stabcheck.oracle.enclosure import CTX, Interval, Quantity, midpoint, ratio

NAN, INF = math.nan, math.inf


class Softmax:
    """L = sum_i y_i (logsumexp(x) - x_i), dL/dx_i = Y p_i - y_i with p = softmax(x).

    With m = max x at index k, Y = sum y and S = sum_{i != k} exp(x_i - m):

        L = D + Y log1p(S),   D = sum_i y_i (m - x_i)   (exact, non-negative)

    so a loss of 1e-300 next to a logit of 1e30 stays exact, and no subtraction cancels.
    For the n classes tied at the maximum, with T = sum of exp(x_i - m) over the others,
    the gradient is (Y/n - y_i) - Y T / (n (n + T)): an exact rational part, then a
    transcendental one.
    When every finite logit is tied the softmax is rational (1/n) and so is the gradient.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, grad: bool, soft: bool) -> None:
        self.x, self.y, self.grad, self.soft = x, y, grad, soft
        self.labelled = np.flatnonzero(y)
        self.Y = sum((Fraction(float(v)) for v in y[self.labelled]), Fraction(0))
        finite = ~np.isinf(x)
        self.m = float(np.max(x)) if finite.any() else -INF
        self.ties = np.flatnonzero(x == self.m)
        self.k = int(self.ties[0]) if self.ties.size else -1
        self.others = np.flatnonzero(finite & (x != self.m))
        self.fixed_value, self.fixed_grads = self._special()

    def _special(self) -> tuple[Quantity | None, list[Quantity] | None]:
        """What is decided without enclosures: NaN, infinite logits, zero labels, and
        rows whose softmax is rational. None where an enclosure is needed."""
        x, C = self.x, len(self.x)
        zeros: list[Quantity] = [Fraction(0)] * C
        if np.isnan(x).any():
            return NAN, [NAN] * C
        plus = np.flatnonzero(x == INF)
        if plus.size:
            if (x[self.labelled] != INF).any():
                value: Quantity | None = INF
            elif self.Y == 0 or plus.size == 1:
                value = Fraction(0)
            else:
                value = NAN
            if self.Y == 0:
                return value, zeros
            grads = self._rational_grads(plus)
            if plus.size > 1:  # how the +inf classes share the mass has no limit
                for i in plus:
                    grads[i] = NAN
            return value, grads
        if self.m == -INF:  # every logit is -inf: no softmax
            return (Fraction(0), zeros) if self.Y == 0 else (NAN, [NAN] * C)
        rational = self.others.size == 0  # every finite logit tied: p = 1/n there
        if np.isneginf(x[self.labelled]).any():
            value = INF
        elif self.Y == 0:
            value = Fraction(0)
        elif rational and self.ties.size == 1:
            value = E.to_fraction(self.exact_part())
        else:
            value = None
        if not self.grad:
            return value, []
        if self.Y == 0:
            return value, zeros
        return value, (self._rational_grads(self.ties) if rational else None)

    def _rational_grads(self, support: np.ndarray) -> list[Quantity]:
        """Y p_i - y_i when p is uniform on ``support`` and zero elsewhere."""
        grads: list[Quantity] = [-Fraction(float(v)) for v in self.y]
        for i in support:
            grads[i] += self.Y / support.size
        return grads

    def exact_part(self) -> tuple:
        """D = sum_i y_i (m - x_i) over the labelled classes, exactly."""
        m = to_mpf(self.m)
        return E.exact_sum(
            [
                E.exact_mul(to_mpf(self.y[i]), E.exact_sub(m, to_mpf(self.x[i])))
                for i in self.labelled
            ]
        )

    def __call__(self, prec: int) -> tuple[Quantity, list[Quantity]]:
        if self.fixed_value is not None and self.fixed_grads is not None:
            return self.fixed_value, self.fixed_grads
        x, y, n = self.x, self.y, self.ties.size
        m = to_mpf(self.m)
        exps = {int(i): E.exp(E.exact_sub(to_mpf(x[i]), m), prec) for i in self.others}
        T = E.interval_sum(list(exps.values()), prec)  # the classes below the maximum
        Yr = E.point(E.to_raw(self.Y))
        value = self.fixed_value
        if value is None:  # log1p(S) with S = (n - 1) + T
            S = E.add(E.point(libmp.from_int(n - 1)), T, prec)
            value = E.add(E.point(self.exact_part()), E.mul(Yr, E.log1p(S, prec), prec), prec)
        if self.fixed_grads is not None:
            return value, self.fixed_grads
        denominator = E.add(E.point(libmp.from_int(n)), T, prec)  # n + T
        # tied classes: Y / (n + T) - y_i = (Y/n - y_i) - Y T / (n (n + T)), the exact
        # rational part kept apart so that its zeros and halfway points stay decidable
        tail = E.mul(Yr, E.div(T, E.mul(E.point(libmp.from_int(n)), denominator, prec), prec),
                     prec)  # fmt: skip
        grads: list[Quantity] = [-Fraction(float(v)) for v in y]  # -inf logits: -y_i
        for i in self.ties:
            exact = E.enclose(self.Y / n - Fraction(float(y[i])), prec)
            grads[i] = E.sub(exact, tail, prec)
        for i, e in exps.items():
            share = E.mul(Yr, E.div(e, denominator, prec), prec)
            grads[i] = E.sub(share, E.point(to_mpf(y[i])), prec)
        return value, grads

    def condition(self, value: Quantity, grads: list[Quantity]) -> tuple[float, list[float]]:
        """Relative condition numbers of the loss with respect to the logits, and of each
        gradient element with respect to the logits and (when soft) the labels:

            kappa(L)   = sum_i |x_i g_i| / L
            kappa(g_i) = (Y p_i (|x_i| (1 - p_i) + sum_{j != i} |x_j| p_j)
                          + p_i (Y - y_i) + y_i (1 - p_i)) / |g_i|

        where the label terms count only for soft labels; a -inf logit under a zero label
        contributes nothing. Computed at 53 bits with raw mpmath numbers (the exponent
        range matters, not the last digits)."""
        C = len(self.x)
        nan_grads = [NAN] * len(grads)
        if np.isnan(self.x).any() or (self.x == INF).any() or self.m == -INF:
            return NAN, nan_grads
        add, mul, div = _approx(libmp.mpf_add), _approx(libmp.mpf_mul), _approx(libmp.mpf_div)
        sub = _approx(libmp.mpf_sub)

        def total(values: Iterable[tuple]) -> tuple:
            out = E.ZERO
            for v in values:
                out = add(out, v)
            return out

        m = to_mpf(self.m)
        x = {int(i): to_mpf(self.x[i]) for i in np.flatnonzero(np.isfinite(self.x))}
        e = {i: libmp.mpf_exp(libmp.mpf_sub(xi, m, 53), 53) for i, xi in x.items()}
        rest = total(v for i, v in e.items() if i != self.k)  # S
        norm = add(E.ONE, rest)  # 1 + S
        p = {i: div(v, norm) for i, v in e.items()}
        tail = div(rest, norm)  # 1 - p_i for the tied classes, without cancellation
        q = {i: tail if self.x[i] == self.m else sub(E.ONE, pi) for i, pi in p.items()}
        Y, y = E.to_raw(self.Y), [to_mpf(v) for v in self.y]
        g = {  # Y p_i - y_i, and (Y - y_i) - Y (1 - p_i) for the tied classes
            i: sub(sub(Y, y[i]), mul(Y, q[i])) if self.x[i] == self.m else sub(mul(Y, pi), y[i])
            for i, pi in p.items()
        }
        num = total(libmp.mpf_abs(mul(x[i], gi)) for i, gi in g.items())
        kappa = ratio(CTX.make_mpf(num), midpoint(value))
        if not grads:
            return kappa, []
        weights = {i: mul(libmp.mpf_abs(x[i]), pi) for i, pi in p.items()}
        W = total(weights.values())
        kappas = []
        for i in range(C):
            if i not in p:
                kappas.append(0.0 if self.y[i] == 0 else NAN)
                continue
            others = (  # sum_{j != i} |x_j| p_j, summed afresh where p_i dominates W
                total(w for j, w in weights.items() if j != i)
                if libmp.mpf_ge(p[i], libmp.from_man_exp(1, -1))
                else sub(W, weights[i])
            )
            sensitivity = add(mul(libmp.mpf_abs(x[i]), q[i]), others)
            n = mul(mul(Y, p[i]), sensitivity)
            if self.soft:
                n = add(add(n, mul(p[i], sub(Y, y[i]))), mul(y[i], q[i]))
            kappas.append(ratio(CTX.make_mpf(libmp.mpf_abs(n)), midpoint(grads[i])))
        return kappa, kappas


def _approx(op):
    """``op`` at 53 bits, rounded to nearest."""
    return lambda a, b: op(a, b, 53)


class Categorical:
    """L = -sum_i y_i log p_i, a sum of non-negative terms; dL/dp_i = -y_i / p_i."""

    def __init__(self, p: np.ndarray, y: np.ndarray, grad: bool, soft: bool) -> None:
        self.p, self.y, self.grad, self.soft = p, y, grad, soft

    def __call__(self, prec: int) -> tuple[Quantity, list[Quantity]]:
        p, y = self.p, self.y
        if np.isnan(p).any():
            return NAN, [NAN] * len(p) if self.grad else []
        grads: list[Quantity] = []
        if self.grad:
            for pi, yi in zip(p, y):
                if yi == 0:
                    grads.append(Fraction(0))
                else:
                    grads.append(-INF if pi == 0 else -Fraction(float(yi)) / Fraction(float(pi)))
        terms: list[Interval] = []
        for i in np.flatnonzero(y):
            if p[i] == 0:
                return INF, grads
            if p[i] != 1:
                neg_log = E.neg_log(to_mpf(p[i]), prec)
                terms.append(E.mul(E.point(to_mpf(y[i])), neg_log, prec))
        return (E.interval_sum(terms, prec) if terms else Fraction(0)), grads

    def condition(self, value: Quantity, grads: list[Quantity]) -> tuple[float, list[float]]:
        labelled = np.flatnonzero(self.y)
        if np.isnan(self.p).any() or (self.p[labelled] == 0).any():
            return NAN, [NAN] * len(grads)
        kappa = ratio(CTX.fsum(CTX.mpf(float(self.y[i])) for i in labelled), midpoint(value))
        per_element = 2.0 if self.soft else 1.0
        return kappa, [per_element if yi else 0.0 for yi in self.y[: len(grads)]]
