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

    def __init__(self, x: float, z: float, q: float = 1.0, grad: bool = True) -> None:
        self.x, self.z, self.q, self.grad = x, z, q, grad

    def __call__(self, prec: int) -> tuple[Quantity, list[Quantity]]:
        x, z, q = self.x, self.z, self.q
        if math.isnan(x):
            return NAN, [NAN]
        fz, fq = Fraction(z), Fraction(q)
        if x == INF:
            return (Fraction(0) if z == 1 else INF), [1 - fz]
        if x == -INF:
            return (Fraction(0) if z == 0 else INF), [-fq * fz]
        xr, zr, qr = to_mpf(x), to_mpf(z), to_mpf(q)
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
        x, z, q = CTX.mpf(self.x), CTX.mpf(self.z), CTX.mpf(self.q)
        sig, sig_neg = 1 / (1 + CTX.exp(-x)), 1 / (1 + CTX.exp(x))
        if not grads:  # the value's condition alone: a 64-bit derivative will do
            return ratio(x * ((1 - z) * sig - q * z * sig_neg), midpoint(value)), []
        value, grad = midpoint(value), midpoint(grads[0])
        grad_num = abs(x) * (q * z + 1 - z) * sig * sig_neg + z * (sig + q * sig_neg)
        return ratio(x * grad, value), [ratio(grad_num, grad)]


class Binary:
    """L = -z log p - (1 - z) log(1 - p), a sum of two non-negative terms, and the
    rational derivative dL/dp = -z/p + (1 - z)/(1 - p)."""

    def __init__(self, p: float, z: float) -> None:
        self.p, self.z = p, z

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
            return NAN, [NAN]
        p, z = CTX.mpf(self.p), CTX.mpf(self.z)
        value, grad = midpoint(value), midpoint(grads[0])
        grad_num = p * (z / p**2 + (1 - z) / (1 - p) ** 2) + z * (1 / p + 1 / (1 - p))
        return ratio(p * grad, value), [ratio(grad_num, grad)]


def binary_grad(p: Fraction, z: Fraction) -> Quantity:
    """-z/p + (1 - z)/(1 - p) with a zero weight contributing nothing."""
    first = Fraction(0) if z == 0 else (-INF if p == 0 else -z / p)
    second = Fraction(0) if z == 1 else (INF if p == 1 else (1 - z) / (1 - p))
    if isinstance(first, float) or isinstance(second, float):
        return float(first) + float(second)
    return first + second
