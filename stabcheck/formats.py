"""Binary floating-point formats: exact conversion, correct rounding, ULP distance.

A value of a format is carried as a Python ``float``: every float32, float16 and bfloat16
value is exactly a float64 value, so nothing is lost. Rounding goes straight from an exact
or enclosed real number (an mpmath number or a ``Fraction``) to the format, with ties to
even, gradual underflow and overflow to infinity, never through float64 (no double
rounding). The ULP distance is the difference of the ordered bit patterns, in Python
integers, so it never overflows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from functools import cached_property
from typing import Any

import numpy as np
from mpmath import libmp

from stabcheck.errors import InvalidArgument, did_you_mean

Real = Any  # an mpmath mpf, a raw libmp tuple, a Fraction, an int or a float


@dataclass(frozen=True)
class Format:
    """An IEEE-style binary format: ``precision`` significand bits (with the implicit
    one), normal exponents ``emin..emax``, ``width`` bits in all."""

    name: str
    precision: int
    emin: int
    emax: int
    width: int
    aliases: tuple[str, ...] = ()

    @cached_property
    def dtype(self) -> np.dtype:
        if self.name == "bfloat16":
            import ml_dtypes

            return np.dtype(ml_dtypes.bfloat16)
        return np.dtype(self.name)

    @cached_property
    def _uint(self) -> np.dtype:
        return np.dtype(f"uint{self.width}")

    @property
    def max(self) -> float:
        """The largest finite value, (2 - 2**(1-p)) * 2**emax."""
        return math.ldexp(2**self.precision - 1, self.emax - self.precision + 1)

    @property
    def tiny(self) -> float:
        """The smallest positive normal value, 2**emin."""
        return math.ldexp(1.0, self.emin)

    @property
    def smallest_subnormal(self) -> float:
        """2**(emin - p + 1)."""
        return math.ldexp(1.0, self.emin - self.precision + 1)

    @property
    def eps(self) -> float:
        """The gap between 1 and the next value, 2**(1 - p)."""
        return math.ldexp(1.0, 1 - self.precision)

    def __str__(self) -> str:
        return self.name

    # -- exact values ------------------------------------------------------------------

    def contains(self, x: float) -> bool:
        """Whether ``x`` is exactly a value of this format (NaN and infinities are)."""
        x = float(x)
        with np.errstate(over="ignore"):
            return math.isnan(x) or float(self.dtype.type(x)) == x

    def asarray(self, values: Any) -> np.ndarray:
        """``values`` as an array of this format, each correctly rounded (ties to even).

        numpy casts correctly, except ml_dtypes' cast from float64 to bfloat16, which goes
        through float32 and can round twice; there the float32 step rounds to odd (toward
        zero, its last bit set when inexact), which keeps the second rounding correct
        (float32 has more than 2 bits beyond bfloat16's, at every exponent).
        """
        array = np.asarray(values)
        with np.errstate(over="ignore", invalid="ignore"):
            if self.name == "bfloat16" and array.dtype.kind == "f" and array.itemsize > 4:
                return _to_odd_float32(array.astype(np.float64)).astype(self.dtype)
            return array.astype(self.dtype)

    # -- rounding ----------------------------------------------------------------------

    def round(self, value: Real, bias: int = 0) -> float:
        """The value of this format nearest to ``value + bias * epsilon``.

        ``bias`` (-1, 0 or +1) says that the true number lies an infinitesimal amount
        above or below ``value``: it breaks a halfway tie the right way and gives the sign
        of a zero. With ``bias=0`` ties go to even and an exact zero is +0.
        """
        if isinstance(value, float):
            if not math.isfinite(value) or (value == 0 and bias == 0):
                return value  # infinities, NaN and signed zeros are values of every format
            value = Fraction(value)
        if isinstance(value, (int, Fraction)):
            value = Fraction(value)
            if value == 0:
                return -0.0 if bias < 0 else 0.0
            negative = value < 0
            return self._round_ratio(
                negative, abs(value.numerator), value.denominator, 0, -bias if negative else bias
            )
        raw = getattr(value, "_mpf_", value)
        sign, man, exp, _ = raw
        if not man:
            if raw == libmp.fzero:
                return -0.0 if bias < 0 else 0.0
            if raw == libmp.finf:
                return math.inf
            if raw == libmp.fninf:
                return -math.inf
            return math.nan
        return self._round_ratio(bool(sign), int(man), 1, int(exp), -bias if sign else bias)

    def _round_ratio(self, negative: bool, num: int, den: int, exp: int, bias: int) -> float:
        """Round ``num / den * 2**exp`` (num, den > 0) with magnitude bias ``bias``."""
        p = self.precision
        shift = num.bit_length() - den.bit_length()
        e = exp + shift  # floor(log2) is e or e - 1
        if (num << max(0, -shift)) < (den << max(0, shift)):
            e -= 1
        if e > self.emax:
            return -math.inf if negative else math.inf
        if e < self.emin - p:  # below half the smallest subnormal: round to zero
            return -0.0 if negative else 0.0
        q = max(e, self.emin) - p + 1  # exponent of the last significand bit
        n, d = (num << (exp - q), den) if exp >= q else (num, den << (q - exp))
        n, r = divmod(n, d)
        twice = 2 * r
        if twice > d or (twice == d and (bias > 0 or (bias == 0 and n & 1))):
            n += 1
        if n >> p and q + p > self.emax:  # carried past the largest finite value
            return -math.inf if negative else math.inf
        result = math.ldexp(n, q)
        return -result if negative else result

    # -- ULPs --------------------------------------------------------------------------

    def ordinal(self, x: float) -> int:
        """The position of ``x`` among the format's values: -0 and +0 are 0, the next
        value up is 1, +inf follows the largest finite value. NaN is an error."""
        x = float(x)
        if math.isnan(x):
            raise InvalidArgument("ordinal of NaN: NaN has no place among the values")
        if not self.contains(x):
            raise InvalidArgument(
                f"x={x!r} is not a value of {self.name}; round it first with "
                f"get_format({self.name!r}).round(x)"
            )
        bits = int(np.asarray(x, dtype=self.dtype).view(self._uint))
        sign = 1 << (self.width - 1)
        return -(bits & ~sign) if bits & sign else bits

    def ulps(self, a: float, b: float) -> int | float:
        """The number of format values between ``a`` and ``b``, counting one end.

        +0 and -0 are 0 apart; infinities count as the value after the largest finite one;
        two NaNs are 0 apart and a NaN against anything else is ``inf``.
        """
        a, b = float(a), float(b)
        if math.isnan(a) or math.isnan(b):
            return 0 if math.isnan(a) and math.isnan(b) else math.inf
        return abs(self.ordinal(a) - self.ordinal(b))


def _to_odd_float32(x: np.ndarray) -> np.ndarray:
    """float64 to float32 rounded to odd: toward zero, then the last bit set if inexact
    (beyond float32's range: its largest finite value; NaN and infinities as they are)."""
    nearest = x.astype(np.float32)
    wide = np.abs(nearest.astype(np.float64)) > np.abs(x)
    toward_zero = np.where(wide, np.nextafter(nearest, np.float32(0)), nearest)
    bits = toward_zero.view(np.uint32)
    inexact = (toward_zero.astype(np.float64) != x) & ~np.isnan(x)
    return np.where(inexact, bits | np.uint32(1), bits).view(np.float32)


FORMATS: tuple[Format, ...] = (
    Format("float64", 53, -1022, 1023, 64, ("f64", "double", "fp64")),
    Format("float32", 24, -126, 127, 32, ("f32", "single", "fp32")),
    Format("float16", 11, -14, 15, 16, ("f16", "half", "fp16")),
    Format("bfloat16", 8, -126, 127, 16, ("bf16",)),
)

_BY_NAME = {name: fmt for fmt in FORMATS for name in (fmt.name, *fmt.aliases)}


def format_names() -> list[str]:
    """The canonical format names."""
    return [fmt.name for fmt in FORMATS]


def get_format(name: str | Format | np.dtype | type) -> Format:
    """The format called ``name``, or the format of a numpy dtype."""
    if isinstance(name, Format):
        return name
    if not isinstance(name, str):
        try:
            name = np.dtype(name).name
        except TypeError:
            name = repr(name)
    fmt = _BY_NAME.get(name.strip().lower())
    if fmt is not None:
        return fmt
    raise InvalidArgument(
        f"format={name!r} is not a known format.{did_you_mean(name, _BY_NAME, n=2)} "
        f"Valid formats: {', '.join(format_names())}."
    )


def to_mpf(x: float) -> tuple:
    """The exact value of a binary float as a raw mpmath number (no rounding)."""
    return libmp.from_float(float(x))
