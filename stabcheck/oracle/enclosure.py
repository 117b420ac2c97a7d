"""Rigorous enclosures on raw mpmath numbers, and the certified rounding loop.

A quantity the oracle computes is one of three things:

* a ``float``: +inf, -inf or NaN, decided exactly by the conventions;
* a ``Fraction``: an exact rational value (zero, a dyadic difference, a ratio of inputs);
* an ``Interval(lo, hi)``: a transcendental value that lies *strictly* between two
  binary numbers. Strictness holds because every non-rational quantity of these losses
  is transcendental (a logarithm of an algebraic number other than 1, or built from
  exponentials of non-zero rationals), so it can equal neither bound.

Strictness is what settles exact ties: when the exact part of a loss sits halfway
between two values of the format and the transcendental part is far below any working
precision, the lower bound is the midpoint itself and rounding ``lo + 0`` upwards is
right, whatever the precision.

The arithmetic is mpmath's ``libmp`` with directed rounding (as in ``mpmath.iv``), on
raw tuples, at an explicit precision, never touching the global context. Elementary
functions are evaluated with ten guard bits and widened outwards by 2**-(prec + 4) of
their magnitude, far more than mpmath's error at the guarded precision.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from fractions import Fraction
from typing import NamedTuple

import mpmath
from mpmath import libmp
from mpmath.libmp import round_ceiling as UP
from mpmath.libmp import round_floor as DOWN

from stabcheck.errors import PrecisionLimitReached
from stabcheck.formats import Format

GUARD = 10
START_PRECISION = 32  # bits beyond the format's precision at the first attempt
MAX_PRECISION = 1 << 16  # bits; past this the oracle gives up with PrecisionLimitReached

ZERO, ONE = libmp.fzero, libmp.fone

# A private context for diagnostics such as condition numbers (never the global one).
CTX = mpmath.MPContext()
CTX.prec = 64


class Interval(NamedTuple):
    """A value strictly inside (lo, hi); lo and hi are raw mpmath numbers."""

    lo: tuple
    hi: tuple


Quantity = float | Fraction | Interval


def to_fraction(raw: tuple) -> Fraction:
    """The exact rational value of a finite raw mpmath number."""
    sign, man, exp, _ = raw
    value = Fraction(man << exp) if exp >= 0 else Fraction(man, 1 << -exp)
    return -value if sign else value


def from_fraction(value: Fraction, prec: int, rnd: str) -> tuple:
    """``value`` rounded to ``prec`` bits in direction ``rnd``."""
    return libmp.from_rational(value.numerator, value.denominator, prec, rnd)


def to_raw(value: Fraction) -> tuple:
    """A dyadic Fraction as an exact raw mpmath number."""
    return libmp.from_man_exp(value.numerator, 1 - value.denominator.bit_length())


def midpoint(q: Quantity) -> mpmath.mpf:
    """A 64-bit approximation of a quantity, in the private context ``CTX``."""
    if isinstance(q, Interval):
        return CTX.make_mpf(libmp.mpf_add(q.lo, q.hi, CTX.prec + 1)) / 2
    if isinstance(q, Fraction):
        return CTX.mpf(q.numerator) / q.denominator
    return CTX.mpf(q)


def ratio(numerator: mpmath.mpf, denominator: mpmath.mpf) -> float:
    """|numerator / denominator| as a float: 0/0 is 0, x/0 is inf, undefined is NaN."""
    if not (CTX.isfinite(numerator) and CTX.isfinite(denominator)):
        return math.nan
    if denominator == 0:
        return 0.0 if numerator == 0 else math.inf
    return float(abs(numerator / denominator))


# -- exact arithmetic (prec=0 is exact in libmp) ------------------------------------------


def exact_sum(terms: Sequence[tuple]) -> tuple:
    total = ZERO
    for term in terms:
        total = libmp.mpf_add(total, term, 0)
    return total


def exact_mul(a: tuple, b: tuple) -> tuple:
    return libmp.mpf_mul(a, b, 0)


def exact_sub(a: tuple, b: tuple) -> tuple:
    return libmp.mpf_sub(a, b, 0)


# -- interval arithmetic ----------------------------------------------------------------


def point(x: tuple) -> Interval:
    """The degenerate interval of an exact number (an operand, never a result)."""
    return Interval(x, x)


def enclose(q: Fraction, prec: int) -> Interval:
    """An exact rational operand: a point when dyadic, else its directed roundings."""
    if q.denominator & (q.denominator - 1) == 0:
        return point(to_raw(q))
    return Interval(from_fraction(q, prec, DOWN), from_fraction(q, prec, UP))


def add(a: Interval, b: Interval, prec: int) -> Interval:
    return Interval(libmp.mpf_add(a.lo, b.lo, prec, DOWN), libmp.mpf_add(a.hi, b.hi, prec, UP))


def sub(a: Interval, b: Interval, prec: int) -> Interval:
    return Interval(libmp.mpf_sub(a.lo, b.hi, prec, DOWN), libmp.mpf_sub(a.hi, b.lo, prec, UP))


def mul(a: Interval, b: Interval, prec: int) -> Interval:
    """Product of two non-negative intervals."""
    return Interval(libmp.mpf_mul(a.lo, b.lo, prec, DOWN), libmp.mpf_mul(a.hi, b.hi, prec, UP))


def div(a: Interval, b: Interval, prec: int) -> Interval:
    """Quotient of a non-negative interval by a positive one."""
    return Interval(libmp.mpf_div(a.lo, b.hi, prec, DOWN), libmp.mpf_div(a.hi, b.lo, prec, UP))


def smul(a: Interval, b: Interval, prec: int) -> Interval:
    """Product of two intervals of any sign."""
    los = [libmp.mpf_mul(x, y, prec, DOWN) for x in a for y in b]
    his = [libmp.mpf_mul(x, y, prec, UP) for x in a for y in b]
    return Interval(min(los, key=_key), max(his, key=_key))


def sdiv(a: Interval, b: Interval, prec: int) -> Interval:
    """Quotient of an interval of any sign by a positive one."""
    los = [libmp.mpf_div(x, y, prec, DOWN) for x in a for y in b]
    his = [libmp.mpf_div(x, y, prec, UP) for x in a for y in b]
    return Interval(min(los, key=_key), max(his, key=_key))


def square(a: Interval, prec: int) -> Interval:
    """a**2 for an interval of any sign."""
    low, high = sorted((libmp.mpf_abs(a.lo), libmp.mpf_abs(a.hi)), key=_key)
    if libmp.mpf_sign(a.lo) * libmp.mpf_sign(a.hi) < 0:
        low = ZERO
    return Interval(libmp.mpf_mul(low, low, prec, DOWN), libmp.mpf_mul(high, high, prec, UP))


def _key(x: tuple) -> CTX.mpf:
    return CTX.make_mpf(x)


def interval_sum(terms: Sequence[Interval], prec: int) -> Interval:
    lo, hi = ZERO, ZERO
    for term in terms:
        lo = libmp.mpf_add(lo, term.lo, prec, DOWN)
        hi = libmp.mpf_add(hi, term.hi, prec, UP)
    return Interval(lo, hi)


def _widen(lo: tuple, hi: tuple, prec: int) -> Interval:
    """Widen an elementary function's bounds by 2**-(prec+4) of their magnitude."""
    down = libmp.from_man_exp((1 << (prec + 4)) - 1, -(prec + 4))
    up = libmp.from_man_exp((1 << (prec + 4)) + 1, -(prec + 4))
    lo = libmp.mpf_mul(lo, up if lo[0] else down, prec, DOWN)
    hi = libmp.mpf_mul(hi, down if hi[0] else up, prec, UP)
    return Interval(lo, hi)


def exp(x: tuple, prec: int) -> Interval:
    """exp of an exact finite number."""
    wp = prec + GUARD
    return _widen(libmp.mpf_exp(x, wp, DOWN), libmp.mpf_exp(x, wp, UP), prec)


def log(x: tuple, prec: int) -> Interval:
    """log of an exact positive number (mpmath keeps relative accuracy near 1)."""
    wp = prec + GUARD
    return _widen(libmp.mpf_log(x, wp, DOWN), libmp.mpf_log(x, wp, UP), prec)


def exp_of(a: Interval, prec: int) -> Interval:
    """exp of an interval (exp is increasing)."""
    return Interval(exp(a.lo, prec).lo, exp(a.hi, prec).hi)


def log_of(a: Interval, prec: int) -> Interval:
    """log of a positive interval."""
    return Interval(log(a.lo, prec).lo, log(a.hi, prec).hi)


def tanh(x: Interval, prec: int) -> Interval:
    """tanh of an interval (tanh is increasing)."""
    wp = prec + GUARD
    lo = _widen(libmp.mpf_tanh(x.lo, wp, DOWN), libmp.mpf_tanh(x.lo, wp, UP), prec).lo
    hi = _widen(libmp.mpf_tanh(x.hi, wp, DOWN), libmp.mpf_tanh(x.hi, wp, UP), prec).hi
    return Interval(lo, hi)


def sech2(x: Interval, prec: int) -> Interval:
    """1 / cosh(x)**2 for an interval that does not contain 0 (cosh grows with |x|)."""
    wp = prec + GUARD
    near, far = sorted((libmp.mpf_abs(x.lo), libmp.mpf_abs(x.hi)), key=_key)
    small = _widen(libmp.mpf_cosh(near, wp, DOWN), libmp.mpf_cosh(near, wp, UP), prec).lo
    big = _widen(libmp.mpf_cosh(far, wp, DOWN), libmp.mpf_cosh(far, wp, UP), prec).hi
    return Interval(libmp.mpf_div(ONE, libmp.mpf_mul(big, big, prec, UP), prec, DOWN),
                    libmp.mpf_div(ONE, libmp.mpf_mul(small, small, prec, DOWN), prec, UP))


def log1p(s: Interval, prec: int) -> Interval:
    """log(1 + s) for a non-negative interval s.

    Below 2**-prec the bounds s - s**2/2 <= log1p(s) <= s are used, so an s as small as
    exp(-2**60) costs nothing; above it 1 + s is formed exactly and its log taken.
    """

    def bound(x: tuple, rnd: str) -> tuple:
        if x == ZERO:
            return ZERO
        if libmp.mpf_lt(x, libmp.from_man_exp(1, -prec)):
            if rnd == UP:
                return x
            half_square = libmp.mpf_mul(libmp.mpf_mul(x, x, prec, UP), libmp.from_man_exp(1, -1))
            return libmp.mpf_sub(x, half_square, prec, DOWN)
        one_plus = libmp.mpf_add(ONE, x, 0)
        bounds = log(one_plus, prec)
        return bounds.lo if rnd == DOWN else bounds.hi

    return Interval(bound(s.lo, DOWN), bound(s.hi, UP))


def neg_log(p: tuple, prec: int) -> Interval:
    """-log p for an exact p in (0, 1)."""
    bounds = log(p, prec)
    return Interval(libmp.mpf_neg(bounds.hi), libmp.mpf_neg(bounds.lo))


# -- certified rounding -------------------------------------------------------------------


def round_quantity(q: Quantity, fmt: Format) -> float | None:
    """``q`` correctly rounded to ``fmt``, or None while the enclosure is too wide."""
    if isinstance(q, float):
        return q
    if isinstance(q, Fraction):
        return fmt.round(q)
    if q.lo == q.hi:  # only exact operations give a point: the value is exactly that
        return fmt.round(to_fraction(q.lo))
    low, high = fmt.round(q.lo, +1), fmt.round(q.hi, -1)
    same = low == high and math.copysign(1.0, low) == math.copysign(1.0, high)
    return low if same else None  # equal values, and zeros of the same sign


def _unsigned_zero(q: Quantity, fmt: Format) -> bool:
    """Whether ``q`` encloses only values that round to zero in ``fmt`` (below half its
    smallest subnormal): at ``MAX_PRECISION`` such a value, whose sign the enclosure still
    does not show, is reported as +0 (measurements count the two zeros alike). Softcapped
    logits near the cap differ by less than 2**-65536 and give such gradients."""
    if not isinstance(q, Interval):
        return False
    half = libmp.from_float(fmt.smallest_subnormal / 2)
    return libmp.mpf_gt(q.lo, libmp.mpf_neg(half)) and libmp.mpf_lt(q.hi, half)


Evaluate = Callable[[int], tuple[Quantity, list[Quantity]]]


def certify(
    evaluate: Evaluate, fmt: Format
) -> tuple[tuple[float, Quantity], list[tuple[float, Quantity]]]:
    """Raise precision (Ziv's strategy) until every quantity rounds certainly to ``fmt``.

    ``evaluate(prec)`` returns the value and gradient quantities of one unit (an element
    or a row) enclosed at ``prec`` bits. Returns ``(rounded, quantity)`` pairs, where the
    quantity is the tightest enclosure, kept for reports and condition numbers.
    """
    pairs = certify_all(lambda prec: [(out := evaluate(prec))[0], *out[1]], fmt)
    return pairs[0], pairs[1:]


def certify_all(
    evaluate: Callable[[int], list[Quantity]], fmt: Format
) -> list[tuple[float, Quantity]]:
    """``certify`` for a list of quantities: ``(rounded, quantity)`` for each."""
    prec = fmt.precision + START_PRECISION
    done: dict[int, tuple[float, Quantity]] = {}
    while True:
        quantities = evaluate(prec)
        for i, q in enumerate(quantities):
            if i not in done:
                rounded = round_quantity(q, fmt)
                if rounded is not None:
                    done[i] = (rounded, q)
        if prec >= MAX_PRECISION:  # last resort: values that round to a zero of either sign
            for i, q in enumerate(quantities):
                if i not in done and _unsigned_zero(q, fmt):
                    done[i] = (0.0, q)
        if len(done) == len(quantities):
            return [done[i] for i in range(len(quantities))]
        if prec >= MAX_PRECISION:
            raise PrecisionLimitReached(
                f"the rounding to {fmt.name} was still uncertain at {prec} bits "
                f"(MAX_PRECISION={MAX_PRECISION}); this input is a hard case: please report it"
            )
        prec = min(2 * prec, MAX_PRECISION)
