"""Tests of ``stabcheck.formats`` against hand-derived values.

Every expected value here comes from outside the code under test: bit patterns written
by hand and decoded with ``struct``, ``Fraction`` arithmetic, halfway points built by
hand, and numpy / ml_dtypes casts (themselves correctly rounded where they are used).
"""

from __future__ import annotations

import math
import struct
import sys
import time
import warnings
from dataclasses import dataclass
from fractions import Fraction

import ml_dtypes
import mpmath
import numpy as np
import pytest
from mpmath import libmp

from stabcheck.errors import InvalidArgument
from stabcheck.formats import FORMATS, Format, format_names, get_format, to_mpf

# -- the formats, by hand ------------------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    """Hand-written facts about one format: parameters and bit patterns."""

    name: str
    p: int  # significand bits, with the implicit one
    emin: int
    emax: int
    width: int
    sub_exp: int  # the smallest subnormal is 2**sub_exp
    one: int  # bits of 1.0
    max: int  # bits of the largest finite value
    tiny: int  # bits of the smallest positive normal value, 2**emin
    inf: int  # bits of +inf
    nan: int  # bits of the canonical quiet NaN

    @property
    def sign(self) -> int:
        return 1 << (self.width - 1)


SPECS = {
    "float64": Spec(
        "float64", 53, -1022, 1023, 64, -1074,
        0x3FF0000000000000, 0x7FEFFFFFFFFFFFFF, 0x0010000000000000, 0x7FF0000000000000,
        0x7FF8000000000000,
    ),
    "float32": Spec(
        "float32", 24, -126, 127, 32, -149,
        0x3F800000, 0x7F7FFFFF, 0x00800000, 0x7F800000, 0x7FC00000,
    ),
    "float16": Spec("float16", 11, -14, 15, 16, -24, 0x3C00, 0x7BFF, 0x0400, 0x7C00, 0x7E00),
    "bfloat16": Spec("bfloat16", 8, -126, 127, 16, -133, 0x3F80, 0x7F7F, 0x0080, 0x7F80, 0x7FC0),
}  # fmt: skip
NAMES = list(SPECS)
# 1/3 = 0b1.0101... * 2**-2, rounded by hand: the significand bits are 0101...; the
# first dropped bit decides (0 for float64 and float16, 1 for float32 and bfloat16).
THIRD = {"float64": 0x3FD5555555555555, "float32": 0x3EAAAAAB, "float16": 0x3555,
         "bfloat16": 0x3EAB}  # fmt: skip
NARROW = ["float32", "float16", "bfloat16"]


def from_bits(name: str, bits: int) -> float:
    """Decode a bit pattern with ``struct`` (bfloat16 is the top half of a float32)."""
    if name == "float64":
        return struct.unpack("<d", struct.pack("<Q", bits))[0]
    if name == "float32":
        return struct.unpack("<f", struct.pack("<I", bits))[0]
    if name == "float16":
        return struct.unpack("<e", struct.pack("<H", bits))[0]
    return struct.unpack("<f", struct.pack("<I", bits << 16))[0]


def to_bits(name: str, x: float) -> int:
    """Encode a value of the format (already exact in it) as its bit pattern."""
    if name == "float64":
        return struct.unpack("<Q", struct.pack("<d", x))[0]
    if name == "float32":
        return struct.unpack("<I", struct.pack("<f", x))[0]
    if name == "float16":
        return struct.unpack("<H", struct.pack("<e", x))[0]
    bits = struct.unpack("<I", struct.pack("<f", x))[0]
    if bits & 0xFFFF:
        raise AssertionError(f"{x!r} is not a bfloat16 value")
    return bits >> 16


def B(name: str, bits: int) -> Fraction:
    """The exact value of a finite bit pattern."""
    return Fraction(from_bits(name, bits))


def raw(value: Fraction) -> tuple:
    """The raw mpmath number of ``value``: exact for a dyadic rational, else a 400-bit
    approximation (only used far from any tie, where it rounds like the exact value)."""
    k = value.denominator.bit_length() - 1
    if value.denominator != 1 << k:
        return libmp.from_rational(value.numerator, value.denominator, 400, libmp.round_nearest)
    return libmp.from_man_exp(value.numerator, -k)  # prec=None: exact


def as_kind(value: Fraction, kind: str):
    if kind == "fraction":
        return value
    if kind == "mpf":
        return mpmath.mp.make_mpf(raw(value))  # no rounding to the context precision
    if kind == "raw":
        return raw(value)
    return float(value)


def float_exact(value: Fraction) -> bool:
    try:
        return Fraction(float(value)) == value
    except OverflowError:
        return False


def test_hand_bit_patterns_decode_to_the_known_values():
    # Anchors the helpers above on values everybody knows.
    assert from_bits("float16", 0x3C00) == 1.0
    assert from_bits("float16", 0x7BFF) == 65504.0
    assert from_bits("float16", 0x0001) == 2.0**-24
    assert from_bits("float16", 0x0400) == 2.0**-14
    assert from_bits("bfloat16", 0x3F80) == 1.0
    assert Fraction(from_bits("bfloat16", 0x7F7F)) == (2 - Fraction(1, 2**7)) * 2**127
    assert from_bits("bfloat16", 0x0001) == 2.0**-133
    assert from_bits("float32", 0x00000001) == 2.0**-149
    assert from_bits("float32", 0x7F7FFFFF) == float(np.finfo(np.float32).max)
    assert from_bits("float64", 0x7FEFFFFFFFFFFFFF) == sys.float_info.max
    assert from_bits("float64", 0x0000000000000001) == 2.0**-1074
    for spec in SPECS.values():
        assert from_bits(spec.name, spec.inf) == math.inf
        assert math.isnan(from_bits(spec.name, spec.nan))
        assert spec.inf == spec.max + 1
        assert B(spec.name, 1) == Fraction(2) ** spec.sub_exp
        assert B(spec.name, spec.tiny) == Fraction(2) ** spec.emin
        assert (
            B(spec.name, spec.max) == (2 - Fraction(2) ** (1 - spec.p)) * Fraction(2) ** spec.emax
        )
        assert spec.sub_exp == spec.emin - spec.p + 1


# -- constants ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_format_parameters(name):
    spec, fmt = SPECS[name], get_format(name)
    assert (fmt.name, fmt.precision, fmt.emin, fmt.emax, fmt.width) == (
        spec.name, spec.p, spec.emin, spec.emax, spec.width,
    )  # fmt: skip
    assert fmt.dtype.itemsize * 8 == spec.width
    assert str(fmt) == name


@pytest.mark.parametrize("name", NAMES)
def test_max_tiny_smallest_subnormal_eps(name):
    spec, fmt = SPECS[name], get_format(name)
    assert fmt.max == from_bits(name, spec.max)
    assert fmt.tiny == from_bits(name, spec.tiny)
    assert fmt.smallest_subnormal == from_bits(name, 1)
    assert fmt.eps == from_bits(name, spec.one + 1) - 1.0


def test_constants_against_published_values():
    f64, f32, f16, bf16 = (get_format(n) for n in NAMES)
    assert f64.max == sys.float_info.max
    assert f64.tiny == sys.float_info.min
    assert f64.eps == sys.float_info.epsilon == 2.0**-52
    assert f64.smallest_subnormal == 5e-324
    assert (f32.max, f32.tiny, f32.eps) == (
        float(np.finfo(np.float32).max), 2.0**-126, 2.0**-23,
    )  # fmt: skip
    assert (f16.max, f16.tiny, f16.smallest_subnormal, f16.eps) == (
        65504.0, 2.0**-14, 2.0**-24, 2.0**-10,
    )  # fmt: skip
    assert bf16.max == float(ml_dtypes.finfo(ml_dtypes.bfloat16).max)
    assert (bf16.tiny, bf16.smallest_subnormal, bf16.eps) == (2.0**-126, 2.0**-133, 2.0**-7)


def test_format_names_and_registry():
    assert format_names() == ["float64", "float32", "float16", "bfloat16"]
    assert [f.name for f in FORMATS] == format_names()


# -- rounding: a table of hand-made values ------------------------------------------------


def rounding_table(spec: Spec) -> list[tuple[str, Fraction, int, int]]:
    """(label, exact value, bias, expected bit pattern), positive values only."""
    n = spec.name
    one, tiny, mx, inf = spec.one, spec.tiny, spec.max, spec.inf
    s = Fraction(2) ** spec.sub_exp  # smallest subnormal
    two_emax = Fraction(2) ** spec.emax
    threshold = (2 - Fraction(2) ** -spec.p) * two_emax  # halfway between max and 2**(emax+1)

    def mid(a: int, b: int) -> Fraction:
        return (B(n, a) + B(n, b)) / 2

    def tiny_off(x: Fraction) -> Fraction:  # far below float64's resolution of x
        return x * Fraction(1, 2**200)

    low_tie = mid(one, one + 1)  # 1 + eps/2: the even neighbour (1.0) is below
    high_tie = mid(one + 1, one + 2)  # the even neighbour (1 + 2 eps) is above
    return [
        ("exact-one", Fraction(1), 0, one),
        ("exact-next-after-one", B(n, one + 1), 0, one + 1),
        ("exact-max", B(n, mx), 0, mx),
        ("exact-tiny", B(n, tiny), 0, tiny),
        ("exact-smallest-subnormal", s, 0, 1),
        ("exact-largest-subnormal", B(n, tiny - 1), 0, tiny - 1),
        ("exact-one-bias-up", Fraction(1), 1, one),
        ("exact-one-bias-down", Fraction(1), -1, one),
        ("one-third", Fraction(1, 3), 0, THIRD[n]),
        # ties to even
        ("tie-even-down", low_tie, 0, one),
        ("tie-even-up", high_tie, 0, one + 2),
        ("tie-even-down-bias-up", low_tie, 1, one + 1),
        ("tie-even-down-bias-down", low_tie, -1, one),
        ("tie-even-up-bias-down", high_tie, -1, one + 1),
        ("tie-even-up-bias-up", high_tie, 1, one + 2),
        # just off the ties (by 2**-200 relative: through float64 these would be ties)
        ("above-tie-even-down", low_tie + tiny_off(low_tie), 0, one + 1),
        ("below-tie-even-down", low_tie - tiny_off(low_tie), 0, one),
        ("above-tie-even-up", high_tie + tiny_off(high_tie), 0, one + 2),
        ("below-tie-even-up", high_tie - tiny_off(high_tie), 0, one + 1),
        # overflow
        ("overflow-threshold", threshold, 0, inf),
        ("overflow-threshold-bias-down", threshold, -1, mx),
        ("overflow-threshold-bias-up", threshold, 1, inf),
        ("below-overflow-threshold", threshold - tiny_off(threshold), 0, mx),
        ("above-overflow-threshold", threshold + tiny_off(threshold), 0, inf),
        ("two-to-emax-plus-one", 2 * two_emax, 0, inf),
        ("huge-fraction", Fraction(2**100_000), 0, inf),
        # subnormals
        ("half-smallest-subnormal", s / 2, 0, 0),
        ("half-smallest-subnormal-bias-up", s / 2, 1, 1),
        ("half-smallest-subnormal-bias-down", s / 2, -1, 0),
        ("above-half-smallest-subnormal", s / 2 + tiny_off(s), 0, 1),
        ("below-half-smallest-subnormal", s / 2 - tiny_off(s), 0, 0),
        ("quarter-smallest-subnormal-bias-up", s / 4, 1, 0),
        ("three-halves-smallest-subnormal", 3 * s / 2, 0, 2),
        ("three-halves-smallest-subnormal-bias-down", 3 * s / 2, -1, 1),
        ("tiny-fraction", Fraction(1, 2**100_000), 0, 0),
        # the normal/subnormal boundary (tiny is even, the largest subnormal odd)
        ("tie-below-tiny", B(n, tiny) - s / 2, 0, tiny),
        ("below-tie-below-tiny", B(n, tiny) - s / 2 - tiny_off(s), 0, tiny - 1),
        ("tie-below-tiny-bias-down", B(n, tiny) - s / 2, -1, tiny - 1),
        ("tie-above-tiny", B(n, tiny) + s / 2, 0, tiny),
        ("above-tie-above-tiny", B(n, tiny) + s / 2 + tiny_off(s), 0, tiny + 1),
    ]


def _rounding_params():
    params = []
    for name, spec in SPECS.items():
        for label, value, bias, bits in rounding_table(spec):
            params.append(pytest.param(name, value, bias, bits, id=f"{name}-{label}"))
            # The mirror image: -x with bias -b rounds to minus what x with bias b does.
            params.append(
                pytest.param(name, -value, -bias, bits | spec.sign, id=f"{name}-neg-{label}")
            )
    return params


KINDS = ["fraction", "mpf", "raw", "float"]


@pytest.mark.parametrize(("name", "value", "bias", "expected"), _rounding_params())
def test_round_hand_table(name, value, bias, expected):
    fmt = get_format(name)
    for kind in KINDS:
        if kind == "float" and not float_exact(value):
            continue  # not a float64 value; covered by the exact kinds
        got = fmt.round(as_kind(value, kind), bias=bias)
        assert isinstance(got, float)
        assert to_bits(name, got) == expected, (
            f"{kind}: round({value}, bias={bias}) = {got!r} "
            f"(bits {to_bits(name, got):#x}), expected {from_bits(name, expected)!r} "
            f"(bits {expected:#x})"
        )


@pytest.mark.parametrize("name", NAMES)
def test_round_zero_sign_comes_from_bias(name):
    fmt = get_format(name)
    for zero in (Fraction(0), 0, mpmath.mpf(0), libmp.fzero, 0.0):
        assert math.copysign(1.0, fmt.round(zero)) == 1.0
        assert math.copysign(1.0, fmt.round(zero, bias=1)) == 1.0
        got = fmt.round(zero, bias=-1)
        assert got == 0.0 and math.copysign(1.0, got) == -1.0, repr(zero)


def test_round_keeps_the_sign_of_a_negative_zero_float():
    # -0.0 is a value of every format, so rounding it must give it back (bit for bit),
    # just as every other float value of the format comes back unchanged.
    for name in NAMES:
        got = get_format(name).round(-0.0)
        assert math.copysign(1.0, got) == -1.0, f"{name}: round(-0.0) = {got!r}"


@pytest.mark.parametrize("name", NAMES)
def test_bias_moves_in_the_signed_direction(name):
    spec, fmt = SPECS[name], get_format(name)
    tie = (B(name, spec.one) + B(name, spec.one + 1)) / 2  # even neighbour below
    up, down = from_bits(name, spec.one + 1), 1.0
    for value in (tie, mpmath.mp.make_mpf(raw(tie))):
        assert fmt.round(value, bias=1) == up
        assert fmt.round(value, bias=-1) == down
    neg = -tie
    # bias=+1 means "a little above": for a negative tie that is towards zero.
    assert fmt.round(neg, bias=1) == -down
    assert fmt.round(neg, bias=-1) == -up
    assert fmt.round(mpmath.mp.make_mpf(raw(neg)), bias=1) == -down
    assert fmt.round(raw(neg), bias=-1) == -up


@pytest.mark.parametrize("name", NAMES)
def test_round_passes_nan_and_infinities_through(name):
    fmt = get_format(name)
    for nan in (math.nan, mpmath.mpf("nan"), libmp.fnan):
        assert math.isnan(fmt.round(nan))
    for inf in (math.inf, mpmath.mpf("inf"), libmp.finf):
        assert fmt.round(inf) == math.inf
        assert fmt.round(inf, bias=-1) == math.inf
    for ninf in (-math.inf, mpmath.mpf("-inf"), libmp.fninf):
        assert fmt.round(ninf) == -math.inf
        assert fmt.round(ninf, bias=1) == -math.inf


@pytest.mark.parametrize("name", NAMES)
def test_round_huge_exponents_quickly(name):
    fmt = get_format(name)
    start = time.perf_counter()
    small = mpmath.mpf(2) ** (-(10**6))  # exact: a power of two has one bit
    big = mpmath.mpf(2) ** (10**6)
    assert to_bits(name, fmt.round(small)) == 0
    assert to_bits(name, fmt.round(-small)) == SPECS[name].sign  # -0.0
    assert fmt.round(big) == math.inf
    assert fmt.round(-big) == -math.inf
    # Exponents far beyond anything that could be expanded into an integer.
    assert to_bits(name, fmt.round(libmp.from_man_exp(3, -(10**12)))) == 0
    assert fmt.round(libmp.from_man_exp(-3, 10**12)) == -math.inf
    # A long significand: 1 + 2**-200000 rounds to 1.
    assert fmt.round(libmp.from_man_exp(2**200_000 + 1, -200_000)) == 1.0
    assert fmt.round(Fraction(1, 2**100_000), bias=1) == 0.0
    assert time.perf_counter() - start < 1.0


def test_round_of_a_float64_value_is_not_rounded_twice_for_bfloat16():
    # 1 + 2**-8 + 2**-30 lies just above the bfloat16 tie 1 + 2**-8; a cast through
    # float32 (as ml_dtypes does from float64) would make it the tie and give 1.0.
    assert get_format("bfloat16").round(1 + 2.0**-8 + 2.0**-30) == 1 + 2.0**-7
    assert get_format("float16").round(1 + 2.0**-11 + 2.0**-40) == 1 + 2.0**-10
    assert get_format("float32").round(1 + 2.0**-24 + 2.0**-50) == 1 + 2.0**-23


@pytest.mark.parametrize("name", NAMES)
def test_round_fraction_with_non_dyadic_denominator(name):
    fmt = get_format(name)
    # 0.1 in float16 is 0x2E66 = 1638 / 2**14; in float64 it is Python's 0.1.
    if name == "float16":
        assert fmt.round(Fraction(1, 10)) == 1638 / 2**14 == from_bits(name, 0x2E66)
    if name == "float64":
        assert fmt.round(Fraction(1, 10)) == 0.1
        assert fmt.round(Fraction(-2, 3)) == -2 / 3
    assert fmt.round(Fraction(-1, 3)) == -from_bits(name, THIRD[name])


# -- rounding against numpy / ml_dtypes casts --------------------------------------------


def _random_float64_bits(name: str, rng: np.random.Generator) -> np.ndarray:
    """Full random patterns, patterns with exponents around the target's range, and
    patterns at or next to the target's ties."""
    spec = SPECS[name]
    full = rng.integers(0, 2**64, size=1000, dtype=np.uint64)
    exps = rng.integers(spec.sub_exp - 3, spec.emax + 3, size=1500) + 1023
    mans = rng.integers(0, 2**52, size=1500, dtype=np.uint64)
    ranged = (exps.astype(np.uint64) << np.uint64(52)) | mans
    # Ties in the normal range: the bits below the target's last bit are 100...0, +-1.
    drop = 53 - spec.p
    exps = rng.integers(spec.emin, spec.emax + 1, size=1500) + 1023
    tops = rng.integers(0, 2 ** (spec.p - 1), size=1500, dtype=np.uint64) << np.uint64(drop)
    half = np.uint64(1 << (drop - 1))
    jitter = rng.integers(-1, 2, size=1500).astype(np.int64)
    ties = (exps.astype(np.uint64) << np.uint64(52)) | tops | half
    ties = (ties.astype(np.int64) + jitter).astype(np.uint64)
    signs = rng.integers(0, 2, size=4000, dtype=np.uint64) << np.uint64(63)
    return np.concatenate([full, ranged | signs[:1500], ties | signs[1500:3000]])


def _mismatches(fmt: Format, sources: np.ndarray, expected: np.ndarray) -> list[str]:
    bad = []
    for x, want in zip(sources.tolist(), expected.tolist(), strict=True):
        for value in (x, mpmath.mpf(x)):  # mpf(float) is exact
            got = fmt.round(value)
            if not (got == want or (math.isnan(got) and math.isnan(want))):
                bad.append(f"round({x.hex()}) = {got!r}, numpy says {want!r}")
            elif got == 0 and math.copysign(1, got) != math.copysign(1, want):
                bad.append(f"round({x.hex()}) = {got!r}, numpy says {want!r} (sign of zero)")
    return bad


@pytest.mark.parametrize("name", ["float32", "float16"])
def test_round_matches_numpy_cast_of_float64(name):
    rng = np.random.default_rng(20240611)
    sources = _random_float64_bits(name, rng).view(np.float64)
    sources = sources[~np.isnan(sources)]
    with np.errstate(over="ignore"):
        expected = sources.astype(name).astype(np.float64)
    bad = _mismatches(get_format(name), sources, expected)
    assert not bad, f"{len(bad)} mismatches of {len(sources)}: {bad[:5]}"


def test_round_matches_ml_dtypes_cast_of_float32_to_bfloat16():
    # ml_dtypes casts float64 -> bfloat16 through float32 (double rounding), so the
    # independent check uses float32 sources, from which its cast is correctly rounded.
    rng = np.random.default_rng(7)
    full = rng.integers(0, 2**32, size=2000, dtype=np.uint64).astype(np.uint32)
    exps = rng.integers(0, 255, size=2000).astype(np.uint32) << np.uint32(23)
    ties = exps | (rng.integers(0, 2**7, size=2000).astype(np.uint32) << np.uint32(16))
    ties = ties | np.uint32(0x8000)  # the halfway bit
    ties = ties + rng.integers(-1, 2, size=2000).astype(np.uint32)  # and the neighbours
    ties = ties | (rng.integers(0, 2, size=2000).astype(np.uint32) << np.uint32(31))
    sources32 = np.concatenate([full, ties]).view(np.float32)
    sources32 = sources32[~np.isnan(sources32)]
    expected = sources32.astype(ml_dtypes.bfloat16).astype(np.float64)
    bad = _mismatches(get_format("bfloat16"), sources32.astype(np.float64), expected)
    assert not bad, f"{len(bad)} mismatches of {len(sources32)}: {bad[:5]}"


# -- ordinal and ULPs --------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_ordinal_hand_values(name):
    spec, fmt = SPECS[name], get_format(name)
    f = lambda bits: from_bits(name, bits)  # noqa: E731
    assert fmt.ordinal(0.0) == 0
    assert fmt.ordinal(-0.0) == 0
    assert fmt.ordinal(f(1)) == 1
    assert fmt.ordinal(-f(1)) == -1
    assert fmt.ordinal(1.0) == spec.one
    assert fmt.ordinal(-1.0) == -spec.one
    assert fmt.ordinal(f(spec.max)) == spec.max
    assert fmt.ordinal(math.inf) == spec.max + 1
    assert fmt.ordinal(-math.inf) == -(spec.max + 1)


@pytest.mark.parametrize("name", NAMES)
def test_ulps_hand_values(name):
    spec, fmt = SPECS[name], get_format(name)
    f = lambda bits: from_bits(name, bits)  # noqa: E731
    mx, s = f(spec.max), f(1)
    assert fmt.ulps(0.0, -0.0) == 0
    assert fmt.ulps(1.0, f(spec.one + 1)) == 1
    assert fmt.ulps(f(spec.one + 1), 1.0) == 1
    assert fmt.ulps(1.0, f(spec.one - 1)) == 1  # below 1 the spacing halves
    assert fmt.ulps(s, -s) == 2
    assert fmt.ulps(0.0, s) == fmt.ulps(-0.0, s) == 1
    assert fmt.ulps(f(spec.tiny - 1), f(spec.tiny)) == 1
    assert fmt.ulps(mx, math.inf) == 1
    assert fmt.ulps(-mx, mx) == 2 * spec.max
    assert fmt.ulps(-math.inf, math.inf) == 2 * (spec.max + 1)
    assert fmt.ulps(1.0, 2.0) == 2 ** (spec.p - 1)
    assert fmt.ulps(math.nan, math.nan) == 0
    assert fmt.ulps(math.nan, 1.0) == math.inf
    assert fmt.ulps(1.0, math.nan) == math.inf
    assert fmt.ulps(math.nan, math.inf) == math.inf


def test_ulps_of_float64_extremes_are_exact_integers():
    fmt = get_format("float64")
    got = fmt.ulps(-sys.float_info.max, sys.float_info.max)
    assert isinstance(got, int)
    assert got == 2 * 0x7FEFFFFFFFFFFFFF == 0xFFDFFFFFFFFFFFFE


@pytest.mark.parametrize("name", NARROW)
def test_ulps_and_ordinal_reject_values_outside_the_format(name):
    spec, fmt = SPECS[name], get_format(name)
    between = 1 + 2.0**-spec.p  # halfway between 1 and the next value: not a value
    for bad in (between, 2.0 ** (spec.sub_exp - 1), -1 / 3):
        with pytest.raises(InvalidArgument, match=rf"not a value of {name}.*round"):
            fmt.ordinal(bad)
        with pytest.raises(InvalidArgument, match=f"not a value of {name}"):
            fmt.ulps(1.0, bad)
        with pytest.raises(InvalidArgument, match=f"not a value of {name}"):
            fmt.ulps(bad, 1.0)


@pytest.mark.parametrize("name", NAMES)
def test_ordinal_of_nan_is_an_error(name):
    with pytest.raises(InvalidArgument, match="NaN"):
        get_format(name).ordinal(math.nan)


# -- contains ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_contains_values_of_the_format(name):
    spec, fmt = SPECS[name], get_format(name)
    for bits in (0, spec.sign, 1, spec.tiny - 1, spec.tiny, spec.one, spec.one + 1, spec.max,
                 spec.inf, spec.nan, spec.sign | spec.max, spec.sign | 1):  # fmt: skip
        assert fmt.contains(from_bits(name, bits)), hex(bits)
    assert fmt.contains(np.float64(1.0))


@pytest.mark.parametrize("name", NARROW)
def test_contains_rejects_values_between_the_format(name):
    spec, fmt = SPECS[name], get_format(name)
    threshold = (2 - 2.0**-spec.p) * 2.0**spec.emax  # between max and inf
    for x in (1 + 2.0**-spec.p, 2.0 ** (spec.sub_exp - 1), 1 / 3, -1 / 3, threshold, 0.1):
        assert not fmt.contains(x), x


def test_float64_contains_every_float():
    rng = np.random.default_rng(3)
    fmt = get_format("float64")
    for x in rng.integers(0, 2**64, size=200, dtype=np.uint64).view(np.float64).tolist():
        assert fmt.contains(x)


@pytest.mark.parametrize("name", ["float32", "float16"])
def test_contains_is_silent_for_values_beyond_the_range(name):
    # A predicate should answer False, not emit "overflow encountered in cast".
    fmt = get_format(name)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not fmt.contains(1e300)
        assert not fmt.contains(-1e300)


# -- get_format and to_mpf ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "name"),
    [
        ("float64", "float64"), ("float32", "float32"), ("float16", "float16"),
        ("bfloat16", "bfloat16"), ("f64", "float64"), ("double", "float64"),
        ("fp64", "float64"), ("f32", "float32"), ("single", "float32"), ("fp32", "float32"),
        ("f16", "float16"), ("half", "float16"), ("fp16", "float16"), ("bf16", "bfloat16"),
        (" Float32 ", "float32"), ("BF16", "bfloat16"),
        (np.dtype("float64"), "float64"), (np.float32, "float32"),
        (np.dtype(np.float16), "float16"), (ml_dtypes.bfloat16, "bfloat16"),
        (np.dtype(ml_dtypes.bfloat16), "bfloat16"),
    ],
    ids=repr,
)  # fmt: skip
def test_get_format_by_name_alias_and_dtype(key, name):
    fmt = get_format(key)
    assert fmt.name == name
    assert get_format(fmt) is fmt
    assert fmt.dtype == np.dtype(ml_dtypes.bfloat16 if name == "bfloat16" else name)


@pytest.mark.parametrize(
    ("key", "hint"),
    [
        ("flaot32", "'float32'"),
        ("bfloat61", "'bfloat16'"),
        ("float8", "'float64'"),
        ("decimal", None),
        ("", None),
    ],
)
def test_get_format_unknown_name(key, hint):
    with pytest.raises(InvalidArgument) as info:
        get_format(key)
    message = str(info.value)
    assert f"format={key!r} is not a known format" in message
    assert "Valid formats: float64, float32, float16, bfloat16." in message
    if hint:
        assert f"Did you mean {hint}" in message
    else:
        assert "Did you mean" not in message
    assert isinstance(info.value, ValueError)


def test_get_format_unknown_dtype():
    with pytest.raises(InvalidArgument, match="'int32' is not a known format"):
        get_format(np.dtype("int32"))


def test_to_mpf_is_exact():
    assert to_mpf(1.5) == (0, 3, -1, 2)
    assert to_mpf(-2.5) == (1, 5, -1, 3)
    assert to_mpf(2.0**-1074) == (0, 1, -1074, 1)
    assert to_mpf(sys.float_info.max) == (0, 2**53 - 1, 971, 53)
    assert to_mpf(0.0) == libmp.fzero


def test_bfloat16_arrays_from_float64_round_once():
    """ml_dtypes casts float64 to bfloat16 through float32, rounding twice; ``asarray``
    must round once, as ``round`` (exact rationals) does: at halfway points of bfloat16
    and a hair off them, near overflow, in the subnormals and below them."""
    f = get_format("bfloat16")
    rng = np.random.default_rng(0)
    base = rng.standard_normal(4000).astype(np.float32).astype(f.dtype).astype(np.float64)
    half = np.abs(base) * 2.0**-9
    x = np.concatenate([
        base + half, base - half, base + half * (1 + 2.0**-30), base + half * (1 - 2.0**-30),
        rng.standard_normal(4000) * 10.0 ** rng.integers(-45, 39, 4000),
        [0.0, -0.0, np.inf, -np.inf, np.nan, 3.3961e38, 3.3963e38, 3.4028235e38, 3.5e38,
         -1e308, 2.0**-133, 2.0**-134, 2.0**-134 * (1 + 2.0**-40), 2.0**-150, -1e-300, 5e-324],
    ])  # fmt: skip
    got = f.asarray(x).astype(np.float64)
    want = np.array([f.round(v) for v in x.tolist()])
    assert ((got == want) | (np.isnan(got) & np.isnan(want))).all()
    assert (np.signbit(got) == np.signbit(want)).all()
    with np.errstate(over="ignore"):
        twice = x.astype(np.float32).astype(f.dtype).astype(np.float64)
    assert (twice != want).any()  # the double rounding this guards against
