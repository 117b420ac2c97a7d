"""Exact elementwise losses: binary cross-entropy on probabilities, sigmoid and weighted
cross-entropy on logits. Each element is a unit: ``unit(prec)`` encloses the value and
the derivative with respect to the prediction at ``prec`` bits.

Conventions: 0 log 0 = 0; a probability of 0 (or 1) under a positive (or negative) share
of the target gives +inf; infinite logits are limits (x = +inf costs nothing when z = 1
and +inf otherwise; symmetrically for -inf and z = 0); NaN in gives NaN out.
"""

from __future__ import annotations

import math
from fractions import Fraction

from mpmath import libmp

from stabcheck.formats import to_mpf
from stabcheck.oracle import enclosure as E
from stabcheck.oracle.enclosure import CTX, Interval, Quantity, midpoint, ratio

NAN, INF = math.nan, math.inf


class Weighted:
    """L = q z softplus(-x) + (1 - z) softplus(x); sigmoid cross-entropy is q = 1.

    Split into an exact non-negative part and a transcendental one, with
    c = q z + 1 - z > 0 and e = exp(-|x|):

        x >= 0:  L = (1 - z) x + c log1p(e),   dL/dx = (1 - z) - c e / (1 + e)
        x <  0:  L = -q z x    + c log1p(e),   dL/dx = c e / (1 + e) - q z
    """

    def __init__(self, x: float, z: float | Fraction, q: float = 1.0, grad: bool = True) -> None:
        self.x, self.z, self.q, self.grad = x, Fraction(z), q, grad

    def __call__(self, prec: int) -> tuple[Quantity, list[Quantity]]:
        x, z, q = self.x, self.z, self.q
        if math.isnan(x):
            return NAN, [NAN]
        fz, fq = z, Fraction(q)
        if x == INF:
            return (Fraction(0) if z == 1 else INF), [1 - fz]
        if x == -INF:
            return (Fraction(0) if z == 0 else INF), [-fq * fz]
        xr, zr, qr = to_mpf(x), E.to_raw(z), to_mpf(q)
        qz = E.exact_mul(qr, zr)
        one_minus_z = E.exact_sub(E.ONE, zr)
        c = E.point(E.exact_sum([qz, one_minus_z]))
        if x >= 0:
            exact_part = E.exact_mul(one_minus_z, xr)
        else:
            exact_part = E.exact_mul(qz, libmp.mpf_neg(xr))
        e = E.exp(to_mpf(-abs(x)), prec)
        value = E.add(E.point(exact_part), E.mul(c, E.log1p(e, prec), prec), prec)
        if not self.grad:
            return value, []
        if x == 0:
            return value, [(1 - fz) / 2 - fq * fz / 2]
        share = E.mul(c, E.div(e, E.add(E.point(E.ONE), e, prec), prec), prec)
        if x > 0:
            return value, [E.sub(E.point(one_minus_z), share, prec)]
        return value, [E.sub(share, E.point(qz), prec)]

    def condition(self, value: Quantity, grads: list[Quantity]) -> tuple[float, list[float]]:
        """Relative condition numbers: of the value with respect to x, |x L'(x) / L|; of
        the derivative with respect to x and z (it subtracts the target, so near the
        optimum it is as sensitive to the target's last bits as to the logit's)."""
        if not math.isfinite(self.x):
            return NAN, [NAN]
        x, z, q = CTX.mpf(self.x), _mpf(self.z), CTX.mpf(self.q)
        sig, sig_neg = 1 / (1 + CTX.exp(-x)), 1 / (1 + CTX.exp(x))
        if not grads:  # the value's condition alone: a 64-bit derivative will do
            return ratio(x * ((1 - z) * sig - q * z * sig_neg), midpoint(value)), []
        value, grad = midpoint(value), midpoint(grads[0])
        grad_num = abs(x) * (q * z + 1 - z) * sig * sig_neg + z * (sig + q * sig_neg)
        return ratio(x * grad, value), [ratio(grad_num, grad)]


class Binary:
    """L = -z log p - (1 - z) log(1 - p), a sum of two non-negative terms, and the
    rational derivative dL/dp = -z/p + (1 - z)/(1 - p)."""

    def __init__(self, p: float, z: float | Fraction) -> None:
        self.p, self.z = p, Fraction(z)

    def __call__(self, prec: int) -> tuple[Quantity, list[Quantity]]:
        if math.isnan(self.p):
            return NAN, [NAN]
        p, z = Fraction(self.p), Fraction(self.z)
        terms: list[Interval] = []
        for weight, prob in ((z, p), (1 - z, 1 - p)):
            if weight == 0 or prob == 1:
                continue  # 0 log 0 = 0, and log 1 = 0
            if prob == 0:
                return INF, [binary_grad(p, z)]
            neg_log = E.neg_log(E.to_raw(prob), prec)
            terms.append(E.mul(E.point(E.to_raw(weight)), neg_log, prec))
        value = E.interval_sum(terms, prec) if terms else Fraction(0)
        return value, [binary_grad(p, z)]

    def condition(self, value: Quantity, grads: list[Quantity]) -> tuple[float, list[float]]:
        if math.isnan(self.p) or self.p in (0.0, 1.0):
            return NAN, [NAN] * len(grads)
        p, z = CTX.mpf(self.p), _mpf(self.z)
        slope = grads[0] if grads else binary_grad(Fraction(self.p), self.z)
        value, grad = midpoint(value), midpoint(slope)
        if not grads:
            return ratio(p * grad, value), []
        grad_num = p * (z / p**2 + (1 - z) / (1 - p) ** 2) + z * (1 / p + 1 / (1 - p))
        return ratio(p * grad, value), [ratio(grad_num, grad)]


def binary_grad(p: Fraction, z: Fraction) -> Quantity:
    """-z/p + (1 - z)/(1 - p) with a zero weight contributing nothing."""
    first = Fraction(0) if z == 0 else (-INF if p == 0 else -z / p)
    second = Fraction(0) if z == 1 else (INF if p == 1 else (1 - z) / (1 - p))
    if isinstance(first, float) or isinstance(second, float):
        return float(first) + float(second)
    return first + second


class Focal:
    """L = a_t f^gamma CE with CE the sigmoid cross-entropy (``Weighted`` with q = 1),
    p = sigmoid(x), f = 1 - p_t = z (1 - p) + (1 - z) p (a sum of non-negative terms, so it
    never cancels), a_t = alpha z + (1 - alpha)(1 - z) (1 when alpha is None), 0^0 = 1:

        dL/dx = a_t f^gamma ((p - z) + gamma CE (1 - 2z) p (1 - p) / f)

    Limits at infinite logits: L is CE's (0 or +inf); dL/dx is a_t (1 - z)^(gamma + 1) at
    +inf and -a_t z^(gamma + 1) at -inf. A zero a_t gives 0 everywhere. At x = 0, where
    p = 1/2, a rational gradient (gamma = 0, or z = 1/2) is found exactly.
    """

    def __init__(self, x: float, z: float | Fraction, alpha: float | None, gamma: float,
                 grad: bool = True) -> None:  # fmt: skip
        self.x, self.z, self.gamma, self.grad = x, Fraction(z), Fraction(gamma), grad
        a = Fraction(1) if alpha is None else Fraction(alpha)
        self.a_t = Fraction(1) if alpha is None else a * self.z + (1 - a) * (1 - self.z)

    def __call__(self, prec: int) -> tuple[Quantity, list[Quantity]]:
        return self._evaluate(prec, self.grad)

    def _evaluate(self, prec: int, grad: bool) -> tuple[Quantity, list[Quantity]]:
        x, z, g, a_t = self.x, self.z, self.gamma, self.a_t
        if math.isnan(x):
            return NAN, [NAN]
        if not a_t:
            return Fraction(0), [Fraction(0)]
        if math.isinf(x):
            f, sign = (1 - z, 1) if x == INF else (z, -1)
            value, _ = Weighted(x, z, 1.0, grad=False)(prec)
            return value, [sign * a_t * _power(f, g + 1, prec)]
        if x == 0:  # p = 1/2 = f whatever z is; CE = log 2
            half = E.point(libmp.from_man_exp(1, -1))
            power = _power_of(half, g, prec)
            log2 = E.log(libmp.from_int(2), prec)
            value = E.mul(E.enclose(a_t, prec), E.mul(power, log2, prec), prec)
            if not grad:
                return value, []
            if g == 0 or z == Fraction(1, 2):
                return value, [a_t * (Fraction(1, 2) - z)]  # times (1 + gamma log 2) if z = 1/2
            # (p - z) + gamma CE (1 - 2z) (1/4) / (1/2) = (1/2 - z) (1 + gamma log 2)
            bend = E.add(E.point(E.ONE), E.mul(E.enclose(g, prec), log2, prec), prec)
            inner = E.smul(E.enclose(Fraction(1, 2) - z, prec), bend, prec)
            return value, [E.smul(E.mul(E.enclose(a_t, prec), power, prec), inner, prec)]
        return self._split(prec, grad)

    def _split(self, prec: int, grad: bool) -> tuple[Quantity, list[Quantity]]:
        """Finite x != 0, with s = sign(x), d = exp(-|x|) / (1 + exp(-|x|)) (p or 1 - p),
        A = f's limit (1 - z or z) and b = 2z - 1 (or 1 - 2z) so that f = A + b d:

            L = a_t f^gamma (A |x| + log1p(e)),   dL/dx = s a_t f^gamma (A - d K),
            K = 1 + gamma b CE (1 - d) / f.

        For an integer gamma, f^gamma = A^gamma + P with P = sum_j C(gamma, j) A^(gamma - j)
        (b d)^j, so that L and dL/dx are an exact rational (their limit) plus a part
        enclosed to a relative precision: ties at a halfway point stay decidable however
        small d is."""
        x, z, g, a_t = self.x, self.z, self.gamma, self.a_t
        sign = 1 if x > 0 else -1
        A, b = (1 - z, 2 * z - 1) if x > 0 else (z, 1 - 2 * z)
        ax = Fraction(abs(x))
        e = E.exp(to_mpf(-abs(x)), prec)
        d = E.div(e, E.add(E.point(E.ONE), e, prec), prec)
        log1p_e = E.log1p(e, prec)
        bd = E.smul(E.enclose(b, prec), d, prec)
        f = E.add(E.enclose(A, prec), bd, prec)  # > 0
        ce = E.add(E.enclose(A * ax, prec), log1p_e, prec)
        at = E.enclose(a_t, prec)
        whole = g.denominator == 1
        if whole:
            n = int(g)
            terms = [E.smul(E.enclose(math.comb(n, j) * A ** (n - j), prec), _ipow(bd, j, prec),
                            prec) for j in range(1, n + 1)]  # fmt: skip
            P = E.interval_sum(terms, prec)  # any signs
            rest = E.add(E.mul(E.enclose(A**n, prec), log1p_e, prec), E.smul(P, ce, prec), prec)
            value: Quantity = _plus(a_t * A**n * A * ax, E.smul(at, rest, prec), prec)
        else:
            power = _power_of(f, g, prec)
            value = E.mul(at, E.mul(power, ce, prec), prec)
        if not grad:
            return value, []
        K = E.add(E.point(E.ONE), E.smul(E.enclose(g * b, prec), E.mul(
            ce, E.div(E.sub(E.point(E.ONE), d, prec), f, prec), prec), prec), prec)  # fmt: skip
        dK = E.smul(d, K, prec)
        if whole:
            inner = E.sub(E.smul(P, E.sub(E.enclose(A, prec), dK, prec), prec),
                          E.smul(E.enclose(A**n, prec), dK, prec), prec)  # fmt: skip
            slope = _plus(sign * a_t * A**n * A, E.smul(E.enclose(sign * a_t, prec), inner, prec),
                          prec)  # fmt: skip
        else:
            inner = E.sub(E.enclose(A, prec), dK, prec)
            slope = E.smul(E.enclose(sign * a_t, prec), E.smul(power, inner, prec), prec)
        return value, [slope]

    def condition(self, value: Quantity, grads: list[Quantity]) -> tuple[float, list[float]]:
        """Relative condition of the value, |x L'(x) / L| (L' at 64 bits when not given);
        that of the derivative is not estimated (NaN: the measurement then allows max_ulps
        alone)."""
        if not math.isfinite(self.x):
            return NAN, [NAN] * len(grads)
        slope = grads[0] if grads else self._evaluate(64, True)[1][0]
        return ratio(CTX.mpf(self.x) * midpoint(slope), midpoint(value)), [NAN] * len(grads)


def _power(f: Fraction, g: Fraction, prec: int) -> Quantity:
    """f**g for a rational f in [0, 1] and g > 0: exact for an integer g."""
    if f in (0, 1) or g.denominator == 1:
        return f ** int(g) if g.denominator == 1 else f
    return _power_of(E.enclose(f, prec), g, prec)


def _ipow(a: E.Interval, n: int, prec: int) -> E.Interval:
    out = a
    for _ in range(n - 1):
        out = E.smul(out, a, prec)
    return out


def _plus(exact: Fraction, small: E.Interval, prec: int) -> E.Interval:
    """exact + small, an interval that keeps exact's halfway points decidable."""
    return E.add(E.enclose(exact, prec), small, prec)


def _power_of(f: E.Interval, g: Fraction, prec: int) -> E.Interval:
    """f**g for a positive interval f and g >= 0 (0**0 = 1)."""
    if g == 0:
        return E.point(E.ONE)
    return E.exp_of(E.smul(E.enclose(g, prec), E.log_of(f, prec), prec), prec)


def _mpf(q: Fraction) -> object:
    return CTX.mpf(q.numerator) / q.denominator
