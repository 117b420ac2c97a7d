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
from typing import Any

import numpy as np
from mpmath import libmp

from stabcheck.formats import to_mpf
from stabcheck.oracle import enclosure as E
from stabcheck.oracle.enclosure import CTX, Interval, Quantity, midpoint, ratio

NAN, INF = math.nan, math.inf


class Softmax:
    """L = sum_i y_i (logsumexp(x) - x_i) + s logsumexp(x)^2,
    dL/dx_i = (Y + 2 s lse) p_i - y_i with p = softmax(x), Y = sum y and the z-loss scale s.

    ``y`` holds the effective targets as exact rationals (labels smoothed and times class
    weights; see ``targets``). With m = max x at index k and S = sum_{i != k} exp(x_i - m):

        L = D + Y log1p(S) + s (m + log1p(S))^2,   D = sum_i y_i (m - x_i)   (exact, >= 0)

    so a loss of 1e-300 next to a logit of 1e30 stays exact, and no subtraction cancels.
    For the n classes tied at the maximum, with T = sum of exp(x_i - m) over the others,
    the gradient is (Y/n - y_i) - Y T / (n (n + T)) + 2 s lse / (n + T): an exact rational
    part, then transcendental ones. When every finite logit is tied the softmax is
    rational (1/n), and so are the gradient without z-loss and, for n = 1, everything.
    With z-loss a +inf logit gives +inf (and +inf gradients on the +inf classes).
    """

    def __init__(self, x: np.ndarray, y: Any, grad: bool, soft: bool,
                 z_loss: float = 0.0) -> None:  # fmt: skip
        self.x, self.grad, self.soft = x, grad, soft
        self.kinds = _kinds(x)
        self.y = [v if isinstance(v, Fraction) else Fraction(float(v)) for v in y]
        self.s = Fraction(z_loss)
        self.labelled = np.array([i for i, v in enumerate(self.y) if v], dtype=np.int64)
        self.Y = sum((self.y[i] for i in self.labelled), Fraction(0))
        finite = ~np.isinf(self.kinds)
        with np.errstate(invalid="ignore"):  # NaN rows are decided in _special
            self.m = np.max(x) if finite.any() else -INF
        self.ties = np.flatnonzero(x == self.m)
        self.k = int(self.ties[0]) if self.ties.size else -1
        self.others = np.flatnonzero(finite & (x != self.m))
        self.fixed_value, self.fixed_grads = self._special()

    def _special(self) -> tuple[Quantity | None, list[Quantity] | None]:
        """What is decided without enclosures: NaN, infinite logits, zero labels, and
        rows whose softmax is rational. None where an enclosure is needed."""
        x, C, s = self.kinds, len(self.x), self.s
        zeros: list[Quantity] = [Fraction(0)] * C
        if np.isnan(x).any():
            return NAN, [NAN] * C
        plus = np.flatnonzero(x == INF)
        if plus.size and s:  # lse = +inf: so is s lse^2, and its slope on the +inf classes
            grads: list[Quantity] = [-v for v in self.y]
            for i in plus:
                grads[i] = INF
            return INF, grads
        if plus.size:
            if (x[self.labelled] != INF).any():
                value: Quantity | None = INF
            elif self.Y == 0 or plus.size == 1:
                value = Fraction(0)
            else:
                value = NAN
            if self.Y == 0:
                return value, zeros
            grads = self._rational_grads(plus, self.Y)
            if plus.size > 1:  # how the +inf classes share the mass has no limit
                for i in plus:
                    grads[i] = NAN
            return value, grads
        if self.m == -INF:  # every logit is -inf: no softmax (and lse = -inf)
            return (Fraction(0), zeros) if self.Y == 0 and not s else (NAN, [NAN] * C)
        rational = self.others.size == 0  # every finite logit tied: p = 1/n there
        lse_exact = rational and self.ties.size == 1  # then lse = m
        m = Fraction(self.m)
        if np.isneginf(x[self.labelled]).any():
            value = INF
        elif self.Y == 0 and not s:
            value = Fraction(0)
        elif lse_exact:
            value = self.exact_part() + s * m * m
        else:
            value = None
        if not self.grad:
            return value, []
        if self.Y == 0 and not s:
            return value, zeros
        if rational and (not s or lse_exact):
            return value, self._rational_grads(self.ties, self.Y + 2 * s * m)
        return value, None

    def _rational_grads(self, support: np.ndarray, B: Fraction) -> list[Quantity]:
        """B p_i - y_i when p is uniform on ``support`` and zero elsewhere."""
        grads: list[Quantity] = [-v for v in self.y]
        for i in support:
            grads[i] += B / support.size
        return grads

    def exact_part(self) -> Fraction:
        """D = sum_i y_i (m - x_i) over the labelled classes, exactly."""
        m = Fraction(self.m)
        return sum((self.y[i] * (m - Fraction(self.x[i])) for i in self.labelled),
                   Fraction(0))  # fmt: skip

    def __call__(self, prec: int) -> tuple[Quantity, list[Quantity]]:
        if self.fixed_value is not None and self.fixed_grads is not None:
            return self.fixed_value, self.fixed_grads
        x, y, n, s = self.x, self.y, self.ties.size, self.s
        m = exact_mpf(self.m)
        exps = {int(i): E.exp(E.exact_sub(exact_mpf(x[i]), m), prec) for i in self.others}
        T = E.interval_sum(list(exps.values()), prec)  # the classes below the maximum
        Yr = E.enclose(self.Y, prec)
        log_sum = E.log1p(E.add(E.point(libmp.from_int(n - 1)), T, prec), prec)  # log(n + T)
        lse = E.add(E.point(m), log_sum, prec)
        value = self.fixed_value
        if value is None:
            value = E.add(E.enclose(self.exact_part(), prec), E.mul(Yr, log_sum, prec), prec)
            if s:
                value = E.add(value, E.mul(E.enclose(s, prec), E.square(lse, prec), prec), prec)
        if self.fixed_grads is not None:
            return value, self.fixed_grads
        denominator = E.add(E.point(libmp.from_int(n)), T, prec)  # n + T
        # tied classes: Y / (n + T) - y_i = (Y/n - y_i) - Y T / (n (n + T)), the exact
        # rational part kept apart so that its zeros and halfway points stay decidable
        tail = E.mul(Yr, E.div(T, E.mul(E.point(libmp.from_int(n)), denominator, prec), prec),
                     prec)  # fmt: skip
        slope = E.smul(E.enclose(2 * s, prec), lse, prec)  # 2 s lse, of either sign
        B = E.add(Yr, slope, prec)
        grads: list[Quantity] = [-v for v in y]  # -inf logits: -y_i
        for i in self.ties:
            exact = E.enclose(self.Y / n - y[i], prec)
            grads[i] = E.sub(exact, tail, prec)
            if s:
                grads[i] = E.add(grads[i], E.sdiv(slope, denominator, prec), prec)
        for i, e in exps.items():
            share = E.smul(B, E.div(e, denominator, prec), prec)
            grads[i] = E.sub(share, E.enclose(y[i], prec), prec)
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
        if np.isnan(self.kinds).any() or (self.kinds == INF).any() or self.m == -INF:
            return NAN, nan_grads
        add, mul, div = _approx(libmp.mpf_add), _approx(libmp.mpf_mul), _approx(libmp.mpf_div)
        sub = _approx(libmp.mpf_sub)

        def total(values: Iterable[tuple]) -> tuple:
            out = E.ZERO
            for v in values:
                out = add(out, v)
            return out

        m = exact_mpf(self.m)
        x = {int(i): exact_mpf(self.x[i]) for i in np.flatnonzero(np.isfinite(self.kinds))}
        e = {i: libmp.mpf_exp(libmp.mpf_sub(xi, m, 53), 53) for i, xi in x.items()}
        rest = total(v for i, v in e.items() if i != self.k)  # S
        norm = add(E.ONE, rest)  # 1 + S
        p = {i: div(v, norm) for i, v in e.items()}
        tail = div(rest, norm)  # 1 - p_i for the tied classes, without cancellation
        q = {i: tail if self.x[i] == self.m else sub(E.ONE, pi) for i, pi in p.items()}
        Y, y = _raw(self.Y), [_raw(v) for v in self.y]
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
                kappas.append(0.0 if not self.y[i] else NAN)
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


def _kinds(x: np.ndarray) -> np.ndarray:
    """Logits as float64 for telling NaN and infinities apart: ``x`` itself, or for exact
    logits (an object array of dyadic Fractions and non-finite floats) 0.0 where finite."""
    if x.dtype != object:
        return x
    return np.array([v if isinstance(v, float) else 0.0 for v in x], dtype=np.float64)


def exact_mpf(v: float | Fraction) -> tuple:
    """The exact value of a logit (a binary float or a dyadic Fraction) as a raw mpmath
    number."""
    return E.to_raw(v) if isinstance(v, Fraction) else to_mpf(v)


class Capped:
    """Softmax cross-entropy of softcapped logits u_i = c tanh(x_i / c) (with z-loss s):

        L = sum_i y_i (u_k - u_i) + Y log(n + T) + s lse(u)^2,
        dL/dx_i = ((Y + 2 s lse) p_i - y_i) sech^2(x_i / c)

    with k, n and T as in ``Softmax`` (ties in x are ties in u). Conventions: a -inf logit
    (a masked or padded lane) stays -inf, carries no probability and gets gradient 0 (loss
    +inf under a positive target); +inf becomes c; NaN gives NaN. Everything is enclosed
    in intervals; only u = 0 (x = 0) and u = c (x = +inf) are exact.
    """

    def __init__(self, x: np.ndarray, y: Any, grad: bool, soft: bool, softcap: float,
                 z_loss: float = 0.0) -> None:  # fmt: skip
        self.x, self.grad, self.soft = x, grad, soft
        self.kinds = _kinds(x)
        self.y = [v if isinstance(v, Fraction) else Fraction(float(v)) for v in y]
        self.c, self.s = Fraction(softcap), Fraction(z_loss)
        self.Y = sum(self.y, Fraction(0))
        self.live = np.flatnonzero(self.kinds != -INF)  # lanes with probability
        if self.live.size and not np.isnan(self.kinds).any():
            self.m = max(x[self.live])  # exact: a float or a dyadic Fraction
            self.ties = np.flatnonzero(x == self.m)
            self.others = np.setdiff1d(self.live, self.ties)

    def _special(self) -> tuple[Quantity, list[Quantity]] | None:
        C = len(self.x)
        if np.isnan(self.kinds).any():
            return NAN, [NAN] * C
        if not self.live.size:  # every lane masked: no softmax
            if self.Y == 0 and not self.s:
                return Fraction(0), [Fraction(0)] * C
            return NAN, [NAN] * C
        return None

    def _u(self, i: int, prec: int) -> E.Interval:
        x = self.x[i]
        if x == 0 or x == INF:
            return E.enclose(Fraction(0) if x == 0 else self.c, prec)
        return E.smul(E.enclose(self.c, prec), E.tanh(E.enclose(Fraction(x) / self.c, prec),
                                                      prec), prec)  # fmt: skip

    def __call__(self, prec: int) -> tuple[Quantity, list[Quantity]]:
        special = self._special()
        if special is not None:
            return special
        y, n, s, C = self.y, self.ties.size, self.s, len(self.x)
        masked_target = any(y[i] for i in np.flatnonzero(self.x == -INF))
        uk = self._u(int(self.ties[0]), prec)
        gaps = {int(i): E.sub(uk, self._u(int(i), prec), prec) for i in self.others}  # > 0
        exps = {i: E.exp_of(E.Interval(libmp.mpf_neg(d.hi), libmp.mpf_neg(d.lo)), prec)
                for i, d in gaps.items()}  # fmt: skip
        T = E.interval_sum(list(exps.values()), prec)
        denominator = E.add(E.point(libmp.from_int(n)), T, prec)  # n + T
        log_sum = E.log1p(E.add(E.point(libmp.from_int(n - 1)), T, prec), prec)
        lse = E.add(uk, log_sum, prec)
        if masked_target:
            value: Quantity = INF
        else:
            D = E.interval_sum([E.mul(E.enclose(y[i], prec), d, prec)
                                for i, d in gaps.items() if y[i]], prec)  # fmt: skip
            value = E.add(D, E.mul(E.enclose(self.Y, prec), log_sum, prec), prec)
            if s:
                value = E.add(value, E.mul(E.enclose(s, prec), E.square(lse, prec), prec), prec)
        if not self.grad:
            return value, []
        slope = E.smul(E.enclose(2 * s, prec), lse, prec)  # 2 s lse
        B = E.add(E.enclose(self.Y, prec), slope, prec)
        # tied classes as in Softmax: (Y/n - y_i) - Y T / (n (n + T)) + 2 s lse / (n + T)
        tail = E.mul(E.enclose(self.Y, prec),
                     E.div(T, E.mul(E.point(libmp.from_int(n)), denominator, prec), prec), prec)
        grads: list[Quantity] = [Fraction(0)] * C  # masked lanes
        for i in self.live:
            if i in exps:
                g: Quantity = E.sub(E.smul(B, E.div(exps[int(i)], denominator, prec), prec),
                                    E.enclose(y[i], prec), prec)
            elif not exps and not s:
                g = self.Y / n - y[i]  # rational: p = 1/n
            else:
                g = E.sub(E.enclose(self.Y / n - y[i], prec), tail, prec)
                g = E.add(g, E.sdiv(slope, denominator, prec), prec) if s else g
            x = self.x[i]
            if x == INF or (isinstance(g, Fraction) and g == 0):
                grads[i] = Fraction(0)  # sech^2(inf) = 0
            elif x == 0:
                grads[i] = g
            else:
                g = E.enclose(g, prec) if isinstance(g, Fraction) else g
                grads[i] = E.smul(g, E.sech2(E.enclose(Fraction(x) / self.c, prec), prec), prec)
        return value, grads

    def condition(self, value: Quantity, grads: list[Quantity]) -> tuple[float, list[float]]:
        """kappa(L) = sum_i |x_i dL/dx_i| / L from the certified gradient (or a 64-bit one);
        the gradient's condition is not estimated (NaN: measurements allow max_ulps)."""
        if self._special() is not None or not isinstance(value, E.Interval):
            return NAN, [NAN] * len(grads)
        if not grads:
            copy = Capped(self.x, self.y, True, self.soft, float(self.c), float(self.s))
            slopes = copy(64)[1]
        else:
            slopes = grads
        total = CTX.fsum(abs(CTX.make_mpf(exact_mpf(self.x[i])) * midpoint(g))
                         for i, g in enumerate(slopes) if np.isfinite(self.kinds[i]))  # fmt: skip
        return ratio(total, midpoint(value)), [NAN] * len(grads)


def _raw(q: Fraction) -> tuple:
    """``q`` to 53 bits, as a raw mpmath number."""
    return libmp.from_rational(q.numerator, q.denominator, 53, libmp.round_nearest)


def _approx(op):
    """``op`` at 53 bits, rounded to nearest."""
    return lambda a, b: op(a, b, 53)


class Categorical:
    """L = -sum_i y_i log p_i, a sum of non-negative terms; dL/dp_i = -y_i / p_i, with ``y``
    the effective targets as exact rationals (see ``Softmax``)."""

    def __init__(self, p: np.ndarray, y: Any, grad: bool, soft: bool) -> None:
        self.p, self.grad, self.soft = p, grad, soft
        self.y = [v if isinstance(v, Fraction) else Fraction(float(v)) for v in y]

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
                    grads.append(-INF if pi == 0 else -yi / Fraction(float(pi)))
        terms: list[Interval] = []
        for i, yi in enumerate(y):
            if not yi:
                continue
            if p[i] == 0:
                return INF, grads
            if p[i] != 1:
                neg_log = E.neg_log(to_mpf(p[i]), prec)
                terms.append(E.mul(E.enclose(yi, prec), neg_log, prec))
        return (E.interval_sum(terms, prec) if terms else Fraction(0)), grads

    def condition(self, value: Quantity, grads: list[Quantity]) -> tuple[float, list[float]]:
        labelled = [i for i, yi in enumerate(self.y) if yi]
        if np.isnan(self.p).any() or (self.p[labelled] == 0).any():
            return NAN, [NAN] * len(grads)
        Y = sum((self.y[i] for i in labelled), Fraction(0))
        kappa = ratio(CTX.mpf(Y.numerator) / Y.denominator, midpoint(value)) if Y else 0.0
        per_element = 2.0 if self.soft else 1.0
        return kappa, [per_element if yi else 0.0 for yi in self.y[: len(grads)]]
