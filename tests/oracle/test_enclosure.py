"""The enclosure layer: certified rounding of hand-made intervals, the precision loop and
its limit, the elementary bounds against high-precision mpmath values, and the condition
numbers the oracle reports against hand-derived formulas.

Intervals are built from raw mpmath numbers with ``libmp.from_man_exp``; halfway points
and expected roundings are written by hand from each format's precision.
"""

from __future__ import annotations

import math
from fractions import Fraction

import mpmath
import numpy as np
import pytest
from mpmath import libmp

from stabcheck.errors import PrecisionLimitReached, StabcheckError
from stabcheck.formats import get_format
from stabcheck.oracle import enclosure, exact
from stabcheck.oracle.enclosure import Interval, certify, round_quantity

# name: (significand bits, emin, emax), written by hand
FORMATS = {
    "float64": (53, -1022, 1023),
    "float32": (24, -126, 127),
    "float16": (11, -14, 15),
    "bfloat16": (8, -126, 127),
}


def raw(num: int, exp: int = 0) -> tuple:
    """The exact number num * 2**exp as a raw mpmath tuple."""
    return libmp.from_man_exp(num, exp)


def sign(v: float) -> float:
    return math.copysign(1.0, v)


# -- round_quantity on hand-made intervals ---------------------------------------------------


@pytest.mark.parametrize("name", FORMATS)
def test_lower_bound_on_a_halfway_point_rounds_up(name: str) -> None:
    p, _, _ = FORMATS[name]
    fmt = get_format(name)
    # 1 + 2**-p is halfway between 1 (even) and 1 + 2**(1-p) (odd)
    half = (1 << p) + 1  # times 2**-p
    q = Interval(raw(half, -p), raw((half << 60) + 1, -p - 60))
    assert round_quantity(q, fmt) == 1 + 2.0 ** (1 - p)
    # and its mirror: an upper bound on 1 + 3 * 2**-p (between the odd 1 + 2**(1-p) and
    # the even 1 + 2**(2-p)) rounds down
    three = (1 << p) + 3
    q = Interval(raw((three << 60) - 1, -p - 60), raw(three, -p))
    assert round_quantity(q, fmt) == 1 + 2.0 ** (1 - p)
    # negative: the same, mirrored
    q = Interval(libmp.mpf_neg(raw((half << 60) + 1, -p - 60)), libmp.mpf_neg(raw(half, -p)))
    assert round_quantity(q, fmt) == -(1 + 2.0 ** (1 - p))


@pytest.mark.parametrize("name", FORMATS)
def test_straddling_intervals_are_uncertain(name: str) -> None:
    p, emin, _ = FORMATS[name]
    fmt = get_format(name)
    half = ((1 << p) + 1) << 60  # 1 + 2**-p, halfway, in units of 2**-(p + 60)

    def around(a: int, b: int) -> Interval:
        return Interval(raw(half + a, -p - 60), raw(half + b, -p - 60))

    assert round_quantity(around(-1, 1), fmt) is None
    tiny = raw(1, emin - 3 * p)  # far below the smallest subnormal
    assert round_quantity(Interval(libmp.mpf_neg(tiny), tiny), fmt) is None
    # the same widths one side of the halfway point, or of zero, are certain
    assert round_quantity(around(1, 2), fmt) == 1 + 2.0 ** (1 - p)
    assert round_quantity(around(-2, -1), fmt) == 1.0
    assert round_quantity(Interval(tiny, raw(1, emin - 2 * p)), fmt) == 0


@pytest.mark.parametrize("name", FORMATS)
def test_tiny_intervals_give_zeros_of_their_sign(name: str) -> None:
    p, emin, _ = FORMATS[name]
    fmt = get_format(name)
    lo, hi = raw(1, emin - 4 * p), raw(1, emin - 3 * p)
    plus = round_quantity(Interval(lo, hi), fmt)
    minus = round_quantity(Interval(libmp.mpf_neg(hi), libmp.mpf_neg(lo)), fmt)
    assert plus == 0 and sign(plus) == 1
    assert minus == 0 and sign(minus) == -1
    # half the smallest subnormal, 2**(emin - p): from above it rounds up, from below down
    sub = math.ldexp(1, emin - p + 1)
    assert round_quantity(Interval(raw(1, emin - p), raw(3, emin - p - 1)), fmt) == sub
    below = round_quantity(Interval(raw(1, emin - p - 1), raw(1, emin - p)), fmt)
    assert below == 0 and sign(below) == 1


@pytest.mark.parametrize("name", FORMATS)
def test_overflow_threshold_is_decided_by_the_side(name: str) -> None:
    """max = (2**p - 1) 2**(emax - p + 1); the threshold max + ulp/2 = (2**(p+1) - 1)
    2**(emax - p) is halfway to 2**(emax + 1): above it inf, below it max."""
    p, _, emax = FORMATS[name]
    fmt = get_format(name)
    threshold = (1 << (p + 1)) - 1  # times 2**(emax - p)
    fmax = math.ldexp((1 << p) - 1, emax - p + 1)
    up = Interval(raw(threshold << 40, emax - p - 40), raw((threshold << 40) + 1, emax - p - 40))
    down = Interval(raw((threshold << 40) - 1, emax - p - 40), raw(threshold << 40, emax - p - 40))
    assert round_quantity(up, fmt) == math.inf
    assert round_quantity(down, fmt) == fmax
    neg = Interval(libmp.mpf_neg(up.hi), libmp.mpf_neg(up.lo))
    assert round_quantity(neg, fmt) == -math.inf


def test_exact_and_special_quantities() -> None:
    f64, f16 = get_format("float64"), get_format("float16")
    assert round_quantity(Fraction(1, 3), f64) == 1 / 3
    # 1 + 2**-11 is a float16 halfway point: an exact one goes to even
    assert round_quantity(Fraction(2049, 2048), f16) == 1.0
    assert round_quantity(Fraction(2051, 2048), f16) == 1 + 2.0**-9
    assert round_quantity(Fraction(0), f64) == 0 and sign(round_quantity(Fraction(0), f64)) == 1
    assert round_quantity(math.inf, f16) == math.inf
    assert math.isnan(round_quantity(math.nan, f16))


# -- certify: Ziv's loop and its limit -------------------------------------------------------


def _never_narrows(calls: list[int]):
    """An evaluate function whose enclosure straddles 1 + 2**-53 at every precision."""
    half = (1 << 53) + 1

    def evaluate(prec: int):
        calls.append(prec)
        return Interval(raw((half << 8) - 1, -61), raw((half << 8) + 1, -61)), []

    return evaluate


def test_certify_gives_up_at_max_precision(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(enclosure, "MAX_PRECISION", 300)
    calls: list[int] = []
    with pytest.raises(PrecisionLimitReached) as info:
        certify(_never_narrows(calls), get_format("float64"))
    assert calls == [85, 170, 300]  # 53 + 32, doubled, capped at the limit
    message = str(info.value)
    assert "float64" in message and "300" in message and "MAX_PRECISION" in message
    assert isinstance(info.value, StabcheckError) and isinstance(info.value, ArithmeticError)


def test_certify_raises_precision_until_every_quantity_is_certain() -> None:
    """The value is certain at once; the gradient sits 2**-300 above a float32 halfway
    point and needs a width below that: the loop keeps the first certain answers."""
    p = 24
    half = (1 << p) + 1  # 1 + 2**-24, halfway in float32
    calls: list[int] = []

    def evaluate(prec: int):
        calls.append(prec)
        value = Interval(raw(3, -2), raw((3 << prec) + 1, -2 - prec))  # just above 3/4
        width = 2 ** max(0, 400 - prec)  # units of 2**-400
        center = (half << (400 - p)) + (1 << 100)  # 1 + 2**-24 + 2**-300
        return value, [Interval(raw(center - width, -400), raw(center + width, -400))]

    (value, q), grads = certify(evaluate, get_format("float32"))
    assert value == 0.75 and isinstance(q, Interval)
    assert [g for g, _ in grads] == [1 + 2.0**-23]
    assert calls == [56, 112, 224, 448]


# -- elementary bounds against mpmath at high precision -------------------------------------


def _true(fn: str, x: tuple, prec: int) -> mpmath.mpf:
    ctx = mpmath.MPContext()
    ctx.prec = prec
    return getattr(ctx, fn)(ctx.make_mpf(x))


def _check_enclosure(q: Interval, true: mpmath.mpf, prec: int, what: str) -> None:
    ctx = true.context
    lo, hi = ctx.make_mpf(q.lo), ctx.make_mpf(q.hi)
    assert lo < true < hi, (what, prec)
    assert hi - lo <= abs(true) * ctx.ldexp(1, -(prec - 6)), (what, prec)  # and tight


@pytest.mark.parametrize("prec", [43, 85, 200, 1100])
def test_log1p_bounds_contain_the_true_value(prec: int) -> None:
    rng = np.random.default_rng(prec)
    exponents = [*range(-2000, 21, 37), -prec - 1, -prec, -prec + 1, 0, 20]
    for k in exponents:
        for man in (1, 3, int(rng.integers(1 << 40, 1 << 41))):
            s = raw(man, k - man.bit_length() + 1)  # in [2**k, 2**(k+1))
            q = enclosure.log1p(Interval(s, s), prec)
            true = _true("log1p", s, 2 * abs(k) + prec + 200)  # sees s - s**2/2 + s**3/3
            _check_enclosure(q, true, prec, (man, k))


@pytest.mark.parametrize("prec", [43, 85, 500])
def test_exp_and_log_bounds_contain_the_true_value(prec: int) -> None:
    args = [-(2.0**60), -1e5, -745.13, -1.0, -(2.0**-1074), 2.0**-60, 0.5, 700.0, 1e4]
    for x in args:
        r = libmp.from_float(x)
        _check_enclosure(enclosure.exp(r, prec), _true("exp", r, prec + 200), prec, x)
    for x in [2.0**-1074, 1e-300, 0.5, 1 - 2.0**-53, 1 + 2.0**-52, 3.0, 1e300]:
        r = libmp.from_float(x)
        _check_enclosure(enclosure.log(r, prec), _true("log", r, prec + 300), prec, x)


# -- condition numbers against hand-derived formulas -----------------------------------------

CTX = mpmath.MPContext()
CTX.dps = 60


def _close(got: float, expected: mpmath.mpf) -> bool:
    return abs(CTX.mpf(got) - expected) <= abs(expected) * CTX.mpf("1e-6")


def test_sigmoid_condition_number() -> None:
    """kappa = |x L'(x) / L| with L = z log1p(e^-x) + (1-z) log1p(e^x), L' = sigmoid(x) - z."""
    for x, z in ((-20.0, 0.0), (3.0, 0.25), (0.5, 1.0), (-700.0, 0.0)):
        X, Z = CTX.mpf(x), CTX.mpf(z)
        L = Z * CTX.log1p(CTX.exp(-X)) + (1 - Z) * CTX.log1p(CTX.exp(X))
        g = 1 / (1 + CTX.exp(-X)) - Z
        res = exact("sigmoid_cross_entropy_with_logits", [x], [z])
        assert _close(res.condition[0], abs(X * g / L)), (x, z, res.condition[0])
    # x = -20, z = 0: L ~ g ~ e^-20, so kappa ~ |x| = 20
    res = exact("sigmoid_cross_entropy_with_logits", [-20.0], [0.0])
    assert abs(res.condition[0] - 20) < 1e-6


def test_softmax_condition_number() -> None:
    """kappa = sum_i |x_i dL/dx_i| / L, dL/dx_i = Y softmax(x)_i - y_i."""
    for x, y in (([3.0, 1.0, -2.0], [1.0, 0.0, 0.0]), ([1e4, 0.0], [0.0, 1.0])):
        X = [CTX.mpf(v) for v in x]
        lse = CTX.log(CTX.fsum(CTX.exp(v) for v in X))
        L = CTX.fsum(yi * (lse - xi) for xi, yi in zip(X, y))
        g = [CTX.exp(xi - lse) * sum(y) - yi for xi, yi in zip(X, y)]
        expected = CTX.fsum(abs(xi * gi) for xi, gi in zip(X, g)) / L
        res = exact("softmax_cross_entropy_with_logits", [x], [y])
        assert _close(res.condition[0], expected), (x, res.condition[0], expected)
    # logits [1e4, 0], label 1: L = 1e4 + log1p(e^-1e4), sum |x g| = 1e4 p_0: kappa ~ 1
    res = exact("sparse_softmax_cross_entropy_with_logits", [[1e4, 0.0]], [1])
    assert abs(res.condition[0] - 1) < 1e-6


def test_probability_condition_numbers() -> None:
    """Categorical: sum_i |p_i (-y_i / p_i)| / L = Y / L; binary: |p L'(p) / L|."""
    res = exact("categorical_crossentropy", [[0.25, 0.75]], [[1.0, 0.0]])
    assert _close(res.condition[0], 1 / CTX.log(4))
    res = exact("categorical_crossentropy", [[0.25, 0.5]], [[0.5, 0.25]])
    # L = -(1/2) log(1/4) - (1/4) log(1/2) = (5/4) log 2 and Y = 3/4
    assert _close(res.condition[0], CTX.mpf(3) / 4 / (CTX.mpf(5) / 4 * CTX.log(2)))
    p, z = CTX.mpf(0.125), CTX.mpf(0.75)
    L = -(z * CTX.log(p) + (1 - z) * CTX.log(1 - p))
    g = -z / p + (1 - z) / (1 - p)
    res = exact("binary_crossentropy", [0.125], [0.75])
    assert _close(res.condition[0], abs(p * g / L))
