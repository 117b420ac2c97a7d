"""Exact dot products (``stabcheck.oracle.dot``) against exact rational arithmetic done here
independently: every float is a Fraction, each logit the sum of the Fractions' products
(as integers over powers of two), plus the bias. Every entry is compared exactly, hi must be the
correctly rounded logit and |hi + lo - exact| <= bound must hold, on inputs of every
format, with huge and tiny magnitudes in one row, subnormals, heavy cancellation, exact
ties, D from 1 to 3000, with and without bias, through the fast scheme and the fallback.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from stabcheck.oracle import dot
from stabcheck.oracle.dot import ExactProducts, products, split_bits

try:
    import ml_dtypes

    BF16 = ml_dtypes.bfloat16
except ImportError:  # pragma: no cover - ml_dtypes is a dependency
    BF16 = None


def as_format(x: np.ndarray, fmt: str) -> np.ndarray:
    """x rounded to a binary format (to nearest, ties to even), held in float64."""
    if fmt == "bfloat16":
        if BF16 is not None:
            return np.asarray(x).astype(BF16).astype(np.float64)
        bits = np.asarray(x, np.float32).view(np.uint32).astype(np.uint64)  # pragma: no cover
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000  # pragma: no cover
        return bits.astype(np.uint32).view(np.float32).astype(np.float64)  # pragma: no cover
    return np.asarray(x).astype(fmt).astype(np.float64)


def exact_logits(h: np.ndarray, W: np.ndarray, b: np.ndarray | None) -> list[list[Fraction]]:
    """Each row as integers over one power of two (its largest denominator), so that a
    logit is an integer dot product over the product of two denominators."""

    def ints(a: np.ndarray) -> list[tuple[list[int], int]]:
        out = []
        for row in a.tolist():
            ratios = [x.as_integer_ratio() for x in row]
            den = max((d for _, d in ratios), default=1)
            assert all(den % d == 0 for _, d in ratios)
            out.append(([n * (den // d) for n, d in ratios], den))
        return out

    H, M = ints(h), ints(W)
    bias = [Fraction(0)] * len(M) if b is None else [Fraction(x) for x in b.tolist()]
    return [
        [Fraction(sum(x * y for x, y in zip(hr, wr)), dh * dw) + bv for (wr, dw), bv in
         zip(M, bias)]
        for hr, dh in H
    ]  # fmt: skip


def rounded(x: Fraction) -> float:
    try:
        return float(x)
    except OverflowError:
        return math.inf if x > 0 else -math.inf


def check(h: np.ndarray, W: np.ndarray, b: np.ndarray | None = None, **kw) -> ExactProducts:
    """products() exactly right at every entry, its approximation correctly rounded and
    within its bound."""
    p = products(h, W, b, **kw)
    want = exact_logits(h, W, b)
    assert p.shape == (h.shape[0], W.shape[0])
    assert p.fractions() == want
    if want and want[0]:
        assert p.fraction(len(want) - 1, 0) == want[-1][0]
    hi, lo, bound = p.approximation()
    for n, row in enumerate(want):
        for v, x in enumerate(row):
            assert hi[n, v] == rounded(x), (n, v, hi[n, v], x)
            if math.isfinite(hi[n, v]):
                assert abs(Fraction(hi[n, v]) + Fraction(lo[n, v]) - x) <= Fraction(bound[n, v])
                assert bound[n, v] >= 0
            else:
                assert lo[n, v] == 0 and bound[n, v] == math.inf
    return p


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20261207)


# -- ordinary inputs of every format ---------------------------------------------------------


@pytest.mark.parametrize("fmt", ["float32", "bfloat16", "float16", "float64"])
@pytest.mark.parametrize("D", [1, 2, 7, 64, 1000, 3000])
def test_random_normal_every_format(rng, fmt, D):
    h = as_format(rng.standard_normal((3, D)), fmt)
    W = as_format(rng.standard_normal((4, D)) * 0.02, fmt)
    b = as_format(rng.standard_normal(4), fmt) if D % 2 else None
    p = check(h, W, b)
    if fmt != "float64":
        assert p.fallback_count == 0


@pytest.mark.parametrize("fmt", ["float32", "bfloat16"])
def test_no_fallback_on_ordinary_inputs(rng, fmt):
    """randn-like float32 and bfloat16 with D = 4096: no entry needs the integer fallback
    (and the blocks of W are exercised: 130 rows are 3 blocks of 64)."""
    D = 4096
    h = as_format(rng.standard_normal((2, D)), fmt)
    W = as_format(rng.standard_normal((130, D)) * 0.02, fmt)
    p = check(h, W, as_format(rng.standard_normal(130), fmt))
    assert p.fallback_count == 0 and p.fallback_share == 0.0
    assert p.stats["residual_rows"] == (0, 0) and p.stats["out_of_range"] == 0
    assert p.beta == (14, 27)


# -- magnitudes --------------------------------------------------------------------------------


def test_float32_huge_and_tiny_in_one_row(rng):
    f32 = np.finfo(np.float32)
    h = rng.standard_normal((3, 9)).astype(np.float32).astype(np.float64)
    h[0, :4] = [1e30, 1e-30, float(f32.smallest_subnormal), -float(f32.max)]
    h[1, 2:5] = [-1e-38, 3e38, 1e-45]
    W = rng.standard_normal((5, 9)).astype(np.float32).astype(np.float64)
    W[0, :3] = [1e-30, 1e30, 1e25]
    W[1, :] = float(f32.smallest_subnormal)
    W[2, ::2] = 1e20
    W[3, 4] = -1e-40
    b = np.array([1e30, -1.0, 0.0, 1e-45, 3e38], np.float32).astype(np.float64)
    check(h, W)
    check(h, W, b)


def test_float64_extremes_need_the_fallback():
    tiny, big = 5e-324, 1e300
    h = np.array([[big, tiny, 1e-300, 1.0], [1.0, 2.0, 3.0, 4.0], [2.0**-1022, -tiny, 1.5, big]])
    W = np.array(
        [[1e-300, big, 1.0, tiny], [big, 1.0, 1.0, 1.0], [1.0, -1.0, 0.5, 0.25],
         [1e-200, 1e-200, 1e-200, 1e-200], [1.7e308, 0.0, 0.0, 0.0]]
    )  # fmt: skip
    p = check(h, W, np.array([0.0, 1e300, -1e-300, tiny, 1.0]))
    assert p.fallback_count > 0 and p.stats["out_of_range"] > 0
    hi = p.approximation()[0]
    assert hi[0, 4] == math.inf  # 1e300 * 1.7e308 overflows
    assert hi[1, 2] == 1.0 * 1 - 2 + 1.5 + 1.0


def test_products_underflowing_and_overflowing():
    h = np.array([[1e-200, 1e-200], [1e200, -1e200]])
    W = np.array([[1e-200, 3e-200], [1e200, 1e200], [1e200, 1e-200]])
    p = check(h, W)
    hi = p.approximation()[0]
    assert hi[0, 0] == 0.0  # 4e-400 rounds to zero
    assert hi[1, 1] == 0.0 and p.fraction(1, 1) == 0  # 1e400 - 1e400
    assert hi[1, 2] == math.inf


def test_subnormal_float64_rows(rng):
    h = np.ldexp(rng.standard_normal((3, 6)), rng.integers(-1080, -1000, (3, 6)))
    W = np.ldexp(rng.standard_normal((4, 6)), rng.integers(900, 1010, (4, 6)))
    check(h, W)
    check(h, -W[:, ::-1], np.ones(4))


# -- cancellation and rounding ----------------------------------------------------------------


def test_heavy_cancellation(rng):
    a = rng.standard_normal((4, 50)).astype(np.float32).astype(np.float64)
    c = rng.standard_normal((6, 50)).astype(np.float32).astype(np.float64)
    h = np.concatenate([a, -a], axis=1)
    W = np.concatenate([c, c], axis=1)
    p = check(h, W)
    assert p.fractions() == [[0] * 6] * 4
    hi, lo, bound = p.approximation()
    assert not hi.any() and not lo.any() and not bound.any()
    # a tiny remainder beside products near 1e20: the exact value, not 0
    h2 = h.copy()
    h2[:, 0] *= 1e20
    h2[:, 50] *= 1e20
    h2[:, 7] = 1e-20
    p = check(h2, W, np.zeros(6))
    assert all(x != 0 for row in p.fractions() for x in row)
    # x y - y x
    x, y = np.float32(1.1), np.float32(3.3e7)
    check(np.array([[x, y, 1e-30]], np.float64), np.array([[y, -x, 1.0], [y, -x, 0.0]]))


def test_ties_round_to_even():
    """Logits exactly halfway between floats: hi must round them to even."""
    u = 2.0**-53
    h = np.array([[1.0, u], [1.0, 3 * u], [1.0, u]])
    W = np.array([[1.0, 1.0], [1.0, -1.0], [1.0, 1.0 + 2.0**-52]])
    p = check(h, W, np.array([0.0, 2.0**-200, -(2.0**-300)]))
    hi = p.approximation()[0]
    assert hi[0, 0] == 1.0 and hi[1, 0] == 1.0 + 4 * u


def test_wide_float64_rows_bound_holds(rng):
    """float64 values spread over 2**-200 .. 2**200: many terms, rounded sums, bounds > 0."""
    h = np.ldexp(rng.standard_normal((4, 40)), rng.integers(-200, 200, (4, 40)))
    W = np.ldexp(rng.standard_normal((7, 40)), rng.integers(-200, 200, (7, 40)))
    p = check(h, W, rng.standard_normal(7), max_slices=(12, 12))
    assert len(p.terms) > 20


# -- the fallback ---------------------------------------------------------------------------


def test_capped_slices_force_the_fallback(rng):
    h = rng.standard_normal((3, 20)).astype(np.float32).astype(np.float64)
    W = rng.standard_normal((5, 20)).astype(np.float32).astype(np.float64)
    p = check(h, W, np.ones(5), max_slices=(1, 1))
    assert p.fallback_count == 15 and p.fallback_share == 1.0
    p = check(h, W, max_slices=(1, 4))
    assert p.stats["residual_rows"] == (3, 0) and p.fallback_count == 15
    p = check(h, W, max_slices=(4, 1))
    assert p.stats["residual_rows"] == (0, 5)


def test_gap_rows_and_small_caps():
    h = np.array([[1e30, 1e-30, 1.0, 2.0**-140]], np.float32).astype(np.float64)
    W = np.array([[1.0, 1e30, 1e-30, 2.0], [1e-38, 1e38, -1e30, 5.0]], np.float32)
    W = W.astype(np.float64)
    p = check(h, W, np.array([1.0, -1e30]))
    assert p.fallback_count == 0
    p = check(h, W, max_slices=(2, 2))
    assert p.fallback_count == 2


@settings(max_examples=60, deadline=None)
@given(
    hnp.arrays(np.float64, st.tuples(st.integers(1, 3), st.integers(1, 6)),
               elements=st.floats(allow_nan=False, allow_infinity=False)),
    st.integers(1, 4),
    st.booleans(),
)  # fmt: skip
def test_any_finite_float64(h, V, with_bias):
    W = np.roll(h[:1], 1, axis=1).repeat(V, axis=0) * np.linspace(-1, 1, V)[:, None]
    W[:, 0] = h[0, -1]
    b = np.linspace(-1e300, 1e300, V) if with_bias else None
    check(h, W, b)


# -- interface -------------------------------------------------------------------------------


def test_blocks_and_chunks(rng, monkeypatch):
    """Several blocks of W (3 rows each) and approximation chunks of 4 entries."""
    monkeypatch.setattr(dot, "BLOCK_BYTES", 8 * 30 * 3)
    monkeypatch.setattr(dot, "CHUNK", 4)
    h = as_format(rng.standard_normal((3, 30)), "float32")
    W = as_format(rng.standard_normal((10, 30)), "bfloat16")
    W[4] = 0.0
    W[5, ::3] *= 2.0**-60
    check(h, W, rng.standard_normal(10))


def test_input_types_and_layouts(rng):
    h32 = rng.standard_normal((2, 5)).astype(np.float32)
    W = rng.standard_normal((5, 3))  # W.T is not contiguous
    p = check(h32.astype(np.float64), W.T.copy())
    assert products(h32, W.T).fractions() == p.fractions()
    if BF16 is not None:
        hb = h32.astype(BF16)
        assert products(hb, W.T).fractions() == exact_logits(hb.astype(np.float64), W.T, None)
    ints = np.array([[1, -2, 3]])
    assert products(ints, ints).fraction(0, 0) == 14
    with pytest.raises(ValueError, match="exactly"):
        products(np.array([[2**53 + 1]]), np.array([[1.0]]))


@pytest.mark.parametrize("where", ["h", "W", "b"])
@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_non_finite_inputs_are_refused(where, bad):
    h, W, b = np.ones((2, 3)), np.ones((4, 3)), np.ones(4)
    {"h": h, "W": W, "b": b}[where].flat[1] = bad
    with pytest.raises(ValueError, match="caller must handle"):
        products(h, W, b)


def test_shapes():
    with pytest.raises(ValueError, match="inner dimensions"):
        products(np.ones((2, 3)), np.ones((4, 2)))
    with pytest.raises(ValueError, match="shape"):
        products(np.ones((2, 3)), np.ones((4, 3)), np.ones(3))
    with pytest.raises(ValueError, match="dimension"):
        products(np.ones(3), np.ones((4, 3)))
    p = products(np.ones((2, 0)), np.ones((3, 0)), np.array([1.0, -2.0, 0.5]))
    assert p.fractions() == [[1, -2, Fraction(1, 2)]] * 2
    assert products(np.ones((0, 4)), np.ones((3, 4))).approximation()[0].shape == (0, 3)
    with pytest.raises(ValueError, match="caller must handle"):
        products(np.ones((0, 4)), np.full((3, 4), np.nan))


def test_split_bits_keep_products_exact():
    for D in [1, 2, 3, 4, 5, 100, 4096, 4097, 10**6, 2**40]:
        for N, V in [(8, 131072), (131072, 8), (100, 100)]:
            bh, bw = split_bits(N, V, D)
            assert min(bh, bw) >= 1 and D * (2**bh - 1) * (2**bw - 1) <= 2**53
    assert split_bits(8, 131072, 4096) == (14, 27)
    assert split_bits(131072, 8, 4096) == (27, 14)
    with pytest.raises(ValueError, match="beta"):
        products(np.ones((1, 4096)), np.ones((1, 4096)), beta=(20, 22))
    check(np.full((1, 3), 1.0 + 2.0**-52), np.full((2, 3), -(1.0 + 2.0**-52)), beta=(1, 51))
