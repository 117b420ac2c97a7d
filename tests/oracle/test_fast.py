"""The fast path (``oracle.fast`` on ``oracle.ddmath``) against mpmath and against the
pure mpmath oracle: double-double primitives within their claimed error bounds, rounding
to every format, Ziv's test refusing enclosures that touch a halfway point, and the whole
oracle answering bit for bit the same with and without the fast path on cases of every
regime and on random bit patterns."""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest

from stabcheck.audit import draw_cases
from stabcheck.case import Case
from stabcheck.formats import FORMATS, get_format
from stabcheck.losses import get_loss, loss_names
from stabcheck.oracle import ddmath as dd
from stabcheck.oracle import evaluate
from stabcheck.oracle.crosscheck import bit_pattern_case, compare
from stabcheck.strategies import regimes_for

CTX = mpmath.MPContext()
CTX.prec = 400


def mp(h: float, lo: float = 0.0, q: int = 0) -> mpmath.mpf:
    return CTX.ldexp(CTX.mpf(float(h)) + CTX.mpf(float(lo)), int(q))


def worst_relative(got: list[mpmath.mpf], want: list[mpmath.mpf]) -> float:
    return max(float(abs(g / w - 1)) for g, w in zip(got, want))


@pytest.fixture(scope="module")
def rng() -> np.random.Generator:
    return np.random.default_rng(20261122)


# -- primitives ---------------------------------------------------------------------------------


def test_error_free_transformations_are_exact(rng: np.random.Generator) -> None:
    a = rng.normal(0, 1, 5000) * np.exp2(rng.integers(-300, 300, 5000))
    b = rng.normal(0, 1, 5000) * np.exp2(rng.integers(-300, 300, 5000))
    s, e = dd.two_sum(a, b)
    p, f = dd.two_prod(a, b)
    sq, g = dd.two_square(a)
    for i in range(0, 5000, 7):
        assert mp(s[i], e[i]) == CTX.mpf(a[i]) + CTX.mpf(b[i])
        assert mp(p[i], f[i]) == CTX.mpf(a[i]) * CTX.mpf(b[i])
        assert mp(sq[i], g[i]) == CTX.mpf(a[i]) ** 2


def test_double_double_operations_within_eps_op(rng: np.random.Generator) -> None:
    def dd_random(n: int) -> tuple[np.ndarray, np.ndarray]:
        h = rng.normal(0, 1, n) * np.exp2(rng.integers(-40, 40, n))
        return h, h * rng.uniform(-1, 1, n) * 2.0**-53

    xh, xl = dd_random(3000)
    yh, yl = dd_random(3000)
    y = rng.normal(0, 1, 3000)
    x_mp = [mp(h, lo) for h, lo in zip(xh, xl)]
    y_mp = [mp(h, lo) for h, lo in zip(yh, yl)]
    cases = {
        "add": (dd.add(xh, xl, yh, yl), [a + b for a, b in zip(x_mp, y_mp)]),
        "mul": (dd.mul(xh, xl, yh, yl), [a * b for a, b in zip(x_mp, y_mp)]),
        "div": (dd.div(xh, xl, yh, yl), [a / b for a, b in zip(x_mp, y_mp)]),
        "add_d": (dd.add_d(xh, xl, y), [a + CTX.mpf(b) for a, b in zip(x_mp, y)]),
        "mul_d": (dd.mul_d(xh, xl, y), [a * CTX.mpf(b) for a, b in zip(x_mp, y)]),
        "div_d": (dd.div_d(xh, xl, y), [a / CTX.mpf(b) for a, b in zip(x_mp, y)]),
    }
    for name, ((h, lo), want) in cases.items():
        err = worst_relative([mp(a, b) for a, b in zip(h, lo)], want)
        assert err <= dd.EPS_OP, f"{name}: relative error {err:.3g} > EPS_OP"


def test_exp_dd_within_its_bound(rng: np.random.Generator) -> None:
    rh = np.concatenate(
        [
            -rng.uniform(0, 1500, 3000),
            -rng.uniform(0, 2.0**-10, 500),
            -np.exp(rng.uniform(-700, 7.3, 1000)),
            -(np.arange(-5, 6) + 0.5) * math.log(2) / 4096,  # halfway points of the reduction
            [0.0, -0.0, -5e-324, -1500.0, -708.3964185322641, -745.1332191019411, -1e-20],
        ]
    )
    rl = rng.uniform(-0.5, 0.5, rh.size) * np.spacing(np.abs(rh)) * (rng.random(rh.size) < 0.7)
    mh, ml, q = dd.exp_dd(rh, rl)
    want = [CTX.exp(mp(a, b)) for a, b in zip(rh, rl)]
    err = worst_relative([mp(h, lo, k) for h, lo, k in zip(mh, ml, q)], want)
    assert err <= dd.EPS_EXP
    assert np.all((mh >= 0.9998) & (mh < 2.0003))


def test_log1p_dd_within_its_bound(rng: np.random.Generator) -> None:
    s = np.concatenate(
        [
            rng.uniform(-0.5, 1.01, 3000),
            np.exp(rng.uniform(-740, 12, 3000)),
            -np.exp(rng.uniform(-740, math.log(0.5), 1000)),
            np.arange(-512, 1025) / 1024,  # the table's points
            np.arange(-512, 1024) / 1024 + 1 / 2048,  # and the points half way between them
            [5e-324, 1e-300, 1.0, 2.0, 131071.0, 2.0**40, -0.5],
        ]
    )
    sl = rng.uniform(-0.5, 0.5, s.size) * np.spacing(np.abs(s)) * (rng.random(s.size) < 0.5)
    sl[s <= -0.5] = np.abs(sl[s <= -0.5])
    keep = s != 0
    s, sl = s[keep], sl[keep]
    yh, yl = dd.log1p_dd(s, sl)
    want = [CTX.log1p(mp(a, b)) for a, b in zip(s, sl)]
    assert worst_relative([mp(h, lo) for h, lo in zip(yh, yl)], want) <= dd.EPS_LOG
    p = np.concatenate([rng.uniform(0, 1, 2000), np.exp(rng.uniform(-744, 0, 2000)), [5e-324]])
    p = p[(p > 0) & (p < 1)]
    yh, yl = dd.neg_log_dd(p)
    want = [-CTX.log(CTX.mpf(v)) for v in p]
    assert worst_relative([mp(h, lo) for h, lo in zip(yh, yl)], want) <= dd.EPS_LOG


def test_log1p_dd_checks_its_guess(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past 1, log1p_dd starts from numpy's log: a wrong guess, or 1 + s beyond
    two_prod's range, goes the table's way, still within EPS_LOG."""
    s = np.array([1.5, 3.0, 1e6, 2.0**996, 1.7e308])
    want = [CTX.log1p(CTX.mpf(v)) for v in s]
    with np.errstate(all="ignore"):  # the product past two_prod's range overflows
        yh, yl = dd.log1p_dd(s, np.zeros(s.size))
        assert worst_relative([mp(h, lo) for h, lo in zip(yh, yl)], want) <= dd.EPS_LOG
        monkeypatch.setattr(np, "log", lambda v: np.full_like(v, 0.75))
        yh, yl = dd.log1p_dd(s, np.zeros(s.size))
    assert worst_relative([mp(h, lo) for h, lo in zip(yh, yl)], want) <= dd.EPS_LOG


@pytest.mark.parametrize("width", [2, 10, 1000, 5000, 70000])
def test_split_sums_are_exact_in_any_order(width: int, rng: np.random.Generator) -> None:
    """Row sums of non-negative double-double terms below 4: the parts are exact sums
    (the same when column blocks are summed apart), what they leave out is below
    2**-104, and split_total is within split_eps."""
    rows = 3
    h = rng.uniform(0, 4, (rows, width)) * np.exp2(-rng.integers(0, 60, (rows, width)))
    h[:, 0] = rng.uniform(1, 2, rows)  # the largest term, as in softmax rows, is >= 1
    lo = h * rng.uniform(-1, 1, h.shape) * 2.0**-53
    sigmas = dd.split_levels(width)
    parts = np.array(dd.split_sums(h, sigmas))
    half = width // 2
    apart = np.array(dd.split_sums(h[:, :half], sigmas)) + dd.split_sums(h[:, half:], sigmas)
    assert np.array_equal(parts, apart)
    low = lo.sum(axis=1)
    th, tl = dd.split_total(list(parts), low)
    for i in range(rows):
        exact = CTX.fsum(CTX.mpf(v) for v in h[i])
        assert abs(CTX.fsum(CTX.mpf(v) for v in parts[:, i]) - exact) <= 2.0**-104
        total = exact + CTX.fsum(CTX.mpf(v) for v in lo[i])
        assert abs(mp(th[i], tl[i]) / total - 1) <= dd.split_eps(width)


def test_ziv_double_agrees_with_rounding_both_ends(rng: np.random.Generator) -> None:
    """float64's shortcut decides a cell only as rounding both ends would, and ``ziv``
    (shortcut and the rest) gives what rounding both ends gives everywhere."""
    n = 20000
    h = rng.uniform(1, 2, n) * np.where(rng.random(n) < 0.5, -1.0, 1.0)
    h[: n // 5] = np.sign(h[: n // 5])  # powers of two
    ulp = np.spacing(np.abs(h))
    kind = rng.integers(0, 5, n)
    lo = np.select([kind == 0, kind == 1, kind == 2, kind == 3],
                   [ulp / 2, -ulp / 2, -ulp / 4, rng.uniform(-0.5, 0.5, n) * ulp],
                   rng.uniform(-0.5, 0.5, n) * ulp * 2.0**-30)  # fmt: skip
    lo[np.abs(lo) > ulp / 2] = 0.0
    radius = np.abs(h) * np.exp2(-rng.uniform(50, 110, n)) * (rng.random(n) < 0.9)
    q = rng.choice([0, -1, -1021, -1022, -1023, -1060, 1023, 1024, -40, 40], n).astype(np.int32)
    fmt = get_format("float64")
    with np.errstate(over="ignore"):
        short, short_ok = dd.ziv_double(h, lo, q, radius)
    full, full_ok = dd._ziv_rounded(h, lo, q, radius, fmt)
    assert np.all(full_ok[short_ok]) and np.array_equal(full[short_ok], short[short_ok])
    value, ok = dd.ziv(h, lo, q, radius, fmt)
    assert np.array_equal(ok, full_ok) and np.array_equal(value[ok], full[ok])
    assert short_ok[(q == 0) & (kind == 4)].mean() > 0.9  # the shortcut takes the plain cells


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
def test_round_to_matches_format_round(fmt, rng: np.random.Generator) -> None:
    n = 4000
    h = np.exp(rng.uniform(-700, 700, n))
    halfway = np.round(rng.uniform(2**fmt.precision, 2 ** (fmt.precision + 1), n // 4)) + 0.5
    h[: n // 4] = halfway * np.exp2(rng.integers(-40, 40, n // 4))  # halfway points
    lo = rng.uniform(-0.5, 0.5, n) * np.spacing(h) * (rng.random(n) < 0.6)
    q = np.where(rng.random(n) < 0.5, 0, rng.integers(-1500, 400, n)).astype(np.int32)
    for tie in (-1, 1):
        got = dd.round_to(h, lo, q, fmt, tie)
        for i in range(n):
            raw = (CTX.mpf(h[i]) + CTX.mpf(lo[i])) * CTX.mpf(2) ** int(q[i])
            assert got[i] == fmt.round(raw._mpf_, tie), (h[i], lo[i], q[i], tie)


def test_ziv_refuses_an_enclosure_touching_a_halfway_point() -> None:
    fmt = get_format("float32")
    mid = 1.0 + 2.0**-24  # halfway between 1 and the next float32
    h, lo, q = np.array([mid, mid, mid - 2.0**-30]), np.zeros(3), np.zeros(3, dtype=np.int32)
    value, ok = dd.ziv(h, lo, q, np.array([2.0**-60, 0.0, 2.0**-40]), fmt)
    assert list(ok) == [False, False, True]
    assert value[2] == 1.0


# -- the fast path against the mpmath path --------------------------------------------------------


def assert_same(case: Case) -> None:
    problems = compare(case)
    assert not problems, f"{problems[:5]} for {case!r}"


# the linear losses' fast path (fastlinear) has tests of its own: test_fastlinear.py
GROUPS = [
    (loss, fmt.name, regime)
    for loss in loss_names()
    if not get_loss(loss).operands
    for fmt in FORMATS
    for regime in regimes_for(loss)
    if regime != "wide"
]


@pytest.mark.parametrize(("loss", "fmt", "regime"), GROUPS)
def test_fast_path_agrees_with_mpmath_in_every_regime(loss: str, fmt: str, regime: str) -> None:
    for case in draw_cases(loss, fmt, regime, 8, seed=7):
        assert_same(case)


def test_fast_path_agrees_on_a_wide_row() -> None:
    for case in draw_cases("sparse_softmax_cross_entropy_with_logits", "float32", "wide", 1, 3):
        assert_same(case)


@pytest.mark.parametrize(("loss", "fmt", "regime"), [g for g in GROUPS if "softmax" in g[0]])
def test_softmax_blocks_in_numpy_agree_with_mpmath(
    loss: str, fmt: str, regime: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same cases with numba turned off (CI has it): softmax's passes over every cell
    in numpy blocks."""
    monkeypatch.setenv("STABCHECK_NUMBA", "0")
    for case in draw_cases(loss, fmt, regime, 8, seed=7):
        assert_same(case)


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
@pytest.mark.parametrize("loss", [n for n in loss_names() if not get_loss(n).operands])
def test_fast_path_agrees_on_random_bit_patterns(loss: str, fmt, rng: np.random.Generator) -> None:
    for _ in range(25):
        assert_same(bit_pattern_case(loss, fmt, rng))


def test_an_exact_halfway_part_is_broken_upwards() -> None:
    """L = 1024 + 2**-14 + log1p(exp(-1024 - 2**-14)): the exact part is halfway between two
    float32 values and the transcendental part (about 2**-1477) breaks the tie upwards, far
    below any double-double; with integer labels the exact part is known exactly, so the
    fast path rounds (D, L + r] (``ziv_above``)."""
    case = Case.build("sparse_softmax_cross_entropy_with_logits", [[1024.0, -(2.0**-14)]], [1],
                      format="float32")  # fmt: skip
    result = evaluate(case, fast=True)
    assert result.fast[0]
    assert result.value[0] == 1024.0 + 2.0**-13
    assert_same(case)


def test_a_near_tie_falls_back() -> None:
    """L = 0.75 x + log1p(exp(-x)) for x = 1025, z = 1/4 in float16: 768.75 is halfway
    between 768.5 and 769, and the double-double enclosure of the (rounded) exact part
    touches it, so the element goes to mpmath, which rounds up."""
    case = Case.build("sigmoid_cross_entropy_with_logits", [1025.0], [0.25], format="float16")
    result = evaluate(case, grad=True, fast=True)
    assert not result.fast[0]
    assert result.value[0] == 769.0
    assert_same(case)


def test_ziv_above_rounds_a_halfway_exact_part_up() -> None:
    fmt = get_format("float32")
    e = np.array([1.0 + 2.0**-24, 1.0 + 2.0**-24, 1.0 + 2.0**-25])
    value, ok = dd.ziv_above(e, np.zeros(3), e, np.zeros(3), np.array([2.0**-60, 2.0**-23, 0]), fmt)
    assert list(ok) == [True, False, True]
    assert value[0] == 1.0 + 2.0**-23 and value[2] == 1.0


def test_switches_and_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    case = Case.build("softmax_cross_entropy_with_logits", [[1.0, 2.0, 3.0, 4.0]] * 4,
                      [[0, 0, 1, 0]] * 4)  # fmt: skip
    assert evaluate(case).fast.tolist() == [True] * 4
    assert evaluate(case, fast=False).fast.tolist() == [False] * 4
    small = Case.build("softmax_cross_entropy_with_logits", [[1.0, 2.0]], [[0, 1]])
    assert not evaluate(small).fast.any()  # below FAST_MIN_SIZE mpmath alone is quicker
    assert evaluate(small, fast=True).fast.all()
    monkeypatch.setenv("STABCHECK_ORACLE", "mpmath")
    assert not evaluate(case, grad=True).fast.any()
    assert evaluate(case, grad=True, fast=True).fast.all()


def test_rational_rows_are_decided_exactly() -> None:
    """All logits tied (p = 1/n, rational gradients, some exactly +0), probabilities of
    exactly 1 under the labels, a single finite logit (losses of exactly +0)."""
    tied = Case.build(
        "softmax_cross_entropy_with_logits",
        [[3.0] * 8, [3.0] * 7 + [-np.inf]],
        [[0.125] * 8, [0, 0, 0, 1, 0, 0, 0, 0]],
    )
    certain = Case.build("categorical_crossentropy", [[0.0, 1.0, 0.0, 0.0]] * 4, [[0, 1, 0, 0]] * 4)
    single = Case.build(  # one finite logit: a loss of exactly +0, or +inf
        "sparse_softmax_cross_entropy_with_logits", [[2.0] + [-np.inf] * 7] * 2, [0, 3]
    )
    for case in (tied, certain, single):
        assert_same(case)
        assert evaluate(case, grad=True, fast=True).fast.all()
    assert np.signbit(evaluate(tied, grad=True, fast=True).gradient[0]).sum() == 0


def test_numba_kernels_give_the_numpy_results(monkeypatch: pytest.MonkeyPatch) -> None:
    """With numba, softmax's passes over every cell run compiled, to the same results
    (only the order of the plain row sums differs: conditions agree to 1e-12)."""
    pytest.importorskip("numba")
    rng = np.random.default_rng(11)
    x = rng.normal(0, 3, (6, 300))
    x[1, ::7] = -np.inf
    x[2, :5] = x[2].max()  # ties at the maximum
    x[3, 1:] = x[3, 0] - rng.uniform(700, 1400, 299)  # a loss far below the exact part
    cases = [
        Case.build("sparse_softmax_cross_entropy_with_logits", x, rng.integers(0, 300, 6)),
        Case.build("softmax_cross_entropy_with_logits", x, rng.dirichlet(np.ones(300), 6)),
        Case.build("sparse_softmax_cross_entropy_with_logits", x, rng.integers(0, 300, 6),
                   format="float32"),
    ]  # fmt: skip
    for case in cases:
        monkeypatch.setenv("STABCHECK_NUMBA", "0")
        plain = evaluate(case, grad=True, fast=True)
        monkeypatch.setenv("STABCHECK_NUMBA", "1")
        compiled = evaluate(case, grad=True, fast=True)
        for a, b in ((plain.value, compiled.value), (plain.gradient, compiled.gradient)):
            assert np.array_equal(a, b, equal_nan=True)
        assert np.array_equal(plain.fast, compiled.fast) and plain.fast.any()
        np.testing.assert_allclose(compiled.gradient_condition, plain.gradient_condition,
                                   rtol=1e-12)  # fmt: skip
        np.testing.assert_allclose(compiled.condition, plain.condition, rtol=1e-12)
        assert_same(case)
