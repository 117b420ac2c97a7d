"""measure: statuses, ULPs, bits and relative error against hand-derived expectations; the
vectorised screen (rounding, ULPs, status bounds) against classify element by element, and
measure_worst against the worst of every measurement."""

from __future__ import annotations

import dataclasses
import math

import mpmath
import numpy as np
import pytest

from stabcheck import measure as measure_module
from stabcheck.case import Case
from stabcheck.errors import InvalidArgument
from stabcheck.formats import get_format
from stabcheck.measure import (
    ACCURACY_LOSSES,
    HARD_FAILURES,
    SEVERITY,
    Measurement,
    _apart,
    _bounds,
    bits_of_error,
    classify,
    measure,
    measure_worst,
    worst,
)
from stabcheck.oracle import Gradient, evaluate, exact
from stabcheck.oracle.fastlinear import LazyArray

F64, F16 = get_format("float64"), get_format("float16")
ONE_ULP = 2.0**-52  # gap above 1.0 in float64


@pytest.mark.parametrize(
    ("exact_value", "expected", "got", "condition", "status"),
    [
        (mpmath.mpf(1), 1.0, 1.0, 1.0, "ok"),
        (mpmath.mpf(1), 1.0, 1.0 + 4 * ONE_ULP, 1.0, "ok"),
        (mpmath.mpf(1), 1.0, 1.0 + 5 * ONE_ULP, 1.0, "inaccurate"),
        (mpmath.mpf(1), 1.0, 1.0 + 5 * ONE_ULP, 2.0, "ok"),  # 4 * 2 = 8 ULPs allowed
        (mpmath.mpf(1), 1.0, 1.0 + 9 * ONE_ULP, 2.0, "inaccurate"),
        (mpmath.mpf(1), 1.0, 1.0 + 5 * ONE_ULP, math.nan, "inaccurate"),  # nan -> 1
        (mpmath.mpf("1e-300"), 1e-300, 0.0, 1.0, "underflow"),
        (mpmath.mpf("1e-400"), 0.0, 0.0, 1.0, "ok"),  # rounds to 0: 0 is right
        (mpmath.mpf(2.0**-1073), 2.0**-1073, 0.0, 1.0, "ok"),  # 2 ULPs from 0: tolerated
        (mpmath.mpf(2.0**-1070), 2.0**-1070, 0.0, 1.0, "underflow"),  # 16 ULPs from 0
        (mpmath.mpf(2.0**-1070), 2.0**-1070, 0.0, 2.0**50, "ok"),  # relative 1 <= 4 k eps
        (mpmath.mpf(1e-17), 1e-17, 0.0, 2.0**52, "ok"),  # 4e18 ULPs, but kappa u covers it
        (mpmath.mpf(800), 800.0, math.inf, 1.0, "overflow"),
        (mpmath.inf, math.inf, 1e300, 1.0, "clipped"),
        (mpmath.inf, math.inf, math.inf, 1.0, "ok"),
        (mpmath.inf, math.inf, -math.inf, 1.0, "inaccurate"),
        (mpmath.mpf(1), 1.0, math.nan, 1.0, "nan"),
        (mpmath.nan, math.nan, math.nan, 1.0, "ok"),
        (mpmath.nan, math.nan, 0.5, 1.0, "inaccurate"),
        (mpmath.mpf("1e400"), math.inf, math.inf, 1.0, "ok"),  # beyond float64's range
    ],
)
def test_classify(exact_value, expected, got, condition, status):
    assert classify(exact_value, expected, got, F64, condition)[0] == status


def test_a_scale_gives_an_exact_zero_a_tolerance():
    """An exact 0 with an infinite relative condition: the scale (first-order change per
    unit relative change of the inputs) bounds the error, max_ulps eps x scale."""
    zero, tiny = mpmath.mpf(0), 1e-17
    assert classify(zero, 0.0, tiny, F64, math.inf)[0] == "inaccurate"  # inf -> 1: strict
    assert classify(zero, 0.0, tiny, F64, math.inf, scale=1.0)[0] == "ok"  # 1e-17 <= 4 eps
    assert classify(zero, 0.0, tiny, F64, math.inf, scale=1e-3)[0] == "inaccurate"
    # away from zero it is the relative tolerance again: max(|exact|, scale)
    one = mpmath.mpf(1)
    assert classify(one, 1.0, 1.0 + 5 * ONE_ULP, F64, 1.0, scale=1.0)[0] == "inaccurate"
    assert classify(one, 1.0, 1.0 + 7 * ONE_ULP, F64, 2.0, scale=2.0)[0] == "ok"


def test_classify_counts_ulps_across_zero_and_in_the_format():
    # -smallest subnormal vs +smallest subnormal: two steps through the two zeros (0 apart)
    tiny = 2.0**-1074
    assert classify(mpmath.mpf(tiny), tiny, -tiny, F64, 1.0)[1] == 2
    # float16: 1.0 and 1.0 + 2**-10 are one ULP apart; float64 inputs are rounded first
    assert classify(mpmath.mpf(1), 1.0, 1.0 + 2.0**-10, F16, 1.0)[1] == 1
    assert classify(mpmath.mpf(1), 1.0, 1.0 + 2.0**-12, F16, 1.0)[1] == 0


def test_relative_error_uses_the_exact_value_not_its_rounding():
    third = mpmath.mpf(1) / 3
    status, _, relative = classify(third, float(third), 0.3, F64, 1.0)
    assert relative == pytest.approx(0.1, rel=1e-12)  # |0.3 - 1/3| / (1/3) = 0.1
    assert status == "inaccurate"


def test_bits_of_error():
    assert bits_of_error(0) == 0
    assert bits_of_error(1) == 1
    assert bits_of_error(3) == 2
    assert bits_of_error(math.inf) == math.inf


def test_status_groups_and_worst():
    assert HARD_FAILURES == {"nan", "overflow", "clipped", "error", "timeout"}
    assert ACCURACY_LOSSES == {"inaccurate", "underflow"}
    assert worst(["ok", "inaccurate", "nan"]) == "nan"
    assert worst(["ok", "underflow", "inaccurate"]) == "underflow"
    assert worst([]) == "ok"


def test_measure_flags_the_naive_sigmoid_defects():
    x = np.array([40.0, -800.0, 0.5])
    z = np.array([1.0, 1.0, 0.25])
    result = exact("sigmoid_cross_entropy_with_logits", x, z)
    with np.errstate(all="ignore"):
        sig = 1 / (1 + np.exp(-x))
        naive = -(z * np.log(sig) + (1 - z) * np.log(1 - sig))
    statuses = [m.status for m in measure(result, naive)]
    # x=40, z=1: 0 * log(0) = nan; x=-800: exp(800) overflows; 0.5 is ordinary
    assert statuses == ["nan", "overflow", "ok"]


def test_measure_gradient_and_errors():
    result = exact("sparse_softmax_cross_entropy_with_logits", [[0.0, 0.0]], [0], grad=True)
    rows = measure(result, [[-0.5, 0.5]], gradient=True)
    assert [m.status for m in rows] == ["ok", "ok"]
    assert [m.index for m in rows] == [(0, 0), (0, 1)]
    with pytest.raises(InvalidArgument, match="shape"):
        measure(result, [1.0, 2.0])
    with pytest.raises(InvalidArgument, match="grad=True"):
        measure(exact("binary_crossentropy", [0.5], [1]), [0.5], gradient=True)
    with pytest.raises(InvalidArgument, match="max_ulps"):
        classify(mpmath.mpf(1), 1.0, 1.0, F64, 1.0, max_ulps=-1)


# -- the vectorised screen and measure_worst -------------------------------------------------

FORMATS = [get_format(name) for name in ("float64", "float32", "float16", "bfloat16")]


def _same(a, b):
    """Equal floats, NaN equal to NaN and -0 apart from +0 (by the bits)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return np.array_equal(np.isnan(a), np.isnan(b)) and np.array_equal(
        a[~np.isnan(a)].view(np.uint64), b[~np.isnan(b)].view(np.uint64)
    )


def _edges(fmt):
    """Values around every edge of ``fmt``, as float64: zeros, subnormals and their ties,
    the largest finite value and the halfway point above it, infinities, NaN."""
    sub, tiny, top = fmt.smallest_subnormal, fmt.tiny, fmt.max
    half_gap = math.ldexp(1.0, fmt.emax - fmt.precision)  # half the gap below max
    base = [0.0, sub, sub / 2, sub * 1.5, sub * 2.5, sub / 3, tiny, tiny - sub / 2,
            tiny * (1 + fmt.eps / 2), 1.0, 1 + fmt.eps / 2, 1 + fmt.eps * 1.5, 1 + fmt.eps / 3,
            top, top + half_gap, top + half_gap / 2, top + half_gap * 1.5, 1e300, 5e-324,
            2.0**-1030, math.inf, math.nan]  # fmt: skip
    return np.array(base + [-x for x in base])


@pytest.mark.parametrize("fmt", FORMATS, ids=str)
def test_asarray_rounds_as_format_round(fmt):
    """The vectorised rounding measure relies on (``Format.asarray``) against ``round``."""
    rng = np.random.default_rng(0)
    random = np.ldexp(rng.standard_normal(4000), rng.integers(-160, 140, 4000))
    values = np.concatenate([_edges(fmt), random, rng.standard_normal(1000)])
    assert _same(fmt.asarray(values).astype(np.float64), [fmt.round(float(v)) for v in values])


def _format_values(fmt, rng, n):
    """``n`` values of ``fmt`` from random bit patterns (NaN, inf, subnormals, zeros)."""
    bits = rng.integers(0, 2**fmt.width, n, dtype=np.uint64, endpoint=False)
    raw = bits.astype(f"uint{fmt.width}").view(fmt.dtype)
    with np.errstate(invalid="ignore"):
        return raw.astype(np.float64)


def _exacts(fmt, rng):
    """Exact values (mpmath) of every kind: ordinary, beyond the format's range, below its
    smallest subnormal, subnormal, zero, infinite, NaN."""
    top, sub = fmt.max, fmt.smallest_subnormal
    mags = [mpmath.mpf(1) / 3, mpmath.mpf(top) * 3, mpmath.mpf(top) * (1 + fmt.eps / 4),
            mpmath.mpf(sub) / 3, mpmath.mpf(sub) * mpmath.mpf("2.6"), mpmath.mpf(0), mpmath.inf,
            mpmath.mpf(fmt.tiny) * mpmath.pi]  # fmt: skip
    mags += [mpmath.mpf(float(x)) * mpmath.e for x in rng.standard_normal(6)]
    return [s * m for m in mags for s in (1, -1)] + [mpmath.nan]


@pytest.mark.parametrize("fmt", FORMATS, ids=str)
@pytest.mark.parametrize("max_ulps", [0, 2.5, 4, 1e30, math.inf])
def test_bounds_contain_what_classify_says(fmt, max_ulps):
    """Every status classify gives lies within _bounds' range, and is it where the range
    is one status; the ULPs are classify's."""
    rng = np.random.default_rng(1)
    exact, expected, got, condition, scale = [], [], [], [], []
    for e in _exacts(fmt, rng):
        x = fmt.round(e)
        near = []
        if math.isfinite(x):  # 0 to 9 steps away in either direction, in the format
            for k in (1, 2, 3, 4, 5, 9):
                up = down = x
                for _ in range(k):
                    up, down = _next(fmt, up, 1), _next(fmt, down, -1)
                near += [up, down]
        others = [x, 0.0, -0.0, math.inf, -math.inf, math.nan, fmt.max, -fmt.max, -x]
        others += list(_format_values(fmt, rng, 12))
        for g in near + others:
            for kappa, s in [(1.0, None), (2.0**20, None), (math.inf, 1.0), (math.nan, 0.5)]:
                exact.append(e)
                expected.append(x)
                got.append(g)
                condition.append(kappa)
                scale.append(s)
    got = np.array(got)
    rounded = fmt.asarray(got).astype(np.float64)
    expected = np.array(expected)
    lo, hi, ulps = _bounds(rounded, expected, _apart(rounded, expected, fmt), max_ulps)
    for i in range(len(got)):
        status, u, _ = classify(exact[i], expected[i], got[i], fmt, condition[i], max_ulps,
                                scale[i])  # fmt: skip
        assert lo[i] <= SEVERITY[status] <= hi[i], (i, status, lo[i], hi[i])
        assert float(u) == ulps[i], (i, u, ulps[i])
    # on the mark, or NaN, it is certain; some statuses need the exact value
    assert (lo == hi)[(rounded == expected) | np.isnan(rounded)].all()
    assert (lo < hi).any()


def _next(fmt, x, direction):
    """The value of ``fmt`` next to ``x`` (float64) towards ``direction`` * inf."""
    with np.errstate(over="ignore"):
        return float(np.nextafter(np.array(x, fmt.dtype), np.array(direction * math.inf,
                                                                   fmt.dtype)))  # fmt: skip


def _every(result, got, towards, max_ulps):
    """The reference: every element through ``classify`` one by one, each oracle array read
    element by element."""
    if towards is False:
        arrays = result.value, result.exact, result.condition, None
    elif towards is True:
        arrays = (result.gradient, result.gradient_exact, result.gradient_condition,
                  result.gradient_scale)  # fmt: skip
    else:
        value, condition, exact_, scale = result.operand_gradients[towards]
        arrays = value, exact_, condition, scale
    expected, exact_, condition, scale = arrays
    fmt, got = result.case.format, np.asarray(got, dtype=np.float64)
    rows = []
    for i in np.ndindex(expected.shape):
        s = None if scale is None else float(scale[i])
        status, ulps, rel = classify(exact_[i], expected[i], got[i], fmt, condition[i], max_ulps, s)
        rows.append(Measurement(tuple(int(x) for x in i), measure_module._text(exact_[i]),
                                float(expected[i]), float(got[i]), float(ulps),
                                bits_of_error(ulps), rel, float(condition[i]), status))  # fmt: skip
    return rows


def _worst_of(rows, per_row):
    """The reference: the worst of each unit from every measurement, in order, the first on
    ties (as the audit chose them before measure_worst)."""
    units = {}
    for m in rows:
        unit = m.index[:1] if per_row else m.index
        if unit not in units or (SEVERITY[m.status], m.ulps) > (
            SEVERITY[units[unit].status],
            units[unit].ulps,
        ):
            units[unit] = m
    return list(units.values())


def _spoil(expected, fmt, rng):
    """``expected`` with about half its entries off: a few ULPs, far, negated, zero, signed
    zero, inf, NaN, the largest finite value, a subnormal."""
    got = np.array(expected, dtype=np.float64)
    flat = got.reshape(-1)
    kinds = rng.integers(0, 12, flat.size)
    for i, kind in enumerate(kinds.tolist()):
        x = flat[i]
        if kind == 1:
            flat[i] = _next(fmt, x, 1)
        elif kind == 2:
            for _ in range(6):
                x = _next(fmt, x, -1)
            flat[i] = x
        elif kind == 3:
            flat[i] = x * (1 + rng.standard_normal() * 1e-2)
        elif kind == 4:
            flat[i] = -x
        elif kind == 5:
            flat[i] = rng.choice([0.0, -0.0])
        elif kind == 6:
            flat[i] = rng.choice([math.inf, -math.inf, math.nan])
        elif kind == 7:
            flat[i] = rng.choice([fmt.max, fmt.smallest_subnormal, -fmt.smallest_subnormal])
    return got


def _cases(fmt, rng):
    """Real oracle results, with the name of each gradient: a linear loss with both operands,
    wide softmax rows with extreme logits, probabilities with exact infinities and
    gradients beyond the format's range."""
    V, D, N = 37, 3, 4
    h = rng.standard_normal((N, D)) * 4
    W = rng.standard_normal((V, D))
    b = rng.standard_normal(V)
    linear = Case.build("linear_cross_entropy", h, rng.integers(0, V, N), format=fmt,
                        linear_weight=W, linear_bias=b)  # fmt: skip
    yield evaluate(linear, grad=True), [True, "linear_weight", "linear_bias"]
    logits = rng.standard_normal((3, 40)) * np.array([[1.0], [30.0], [1e4]])
    logits[1, :3] = [-1e4, 1e4, 0.0]
    soft = rng.random((3, 40))
    softmax = Case.build("softmax_cross_entropy_with_logits", logits, soft / soft.sum(1)[:, None],
                         format=fmt)  # fmt: skip
    yield evaluate(softmax, grad=True), [True]
    probs = np.array([[0.0, 1.0, 0.5], [fmt.smallest_subnormal, 0.25, 1.0], [1e-3, 0.5, 0.5]])
    cce = Case.build("categorical_crossentropy", probs, [[0.5, 0.5, 0.0]] * 3, format=fmt)
    yield evaluate(cce, grad=True), [True]
    bce = Case.build("binary_crossentropy", [0.0, 1e-30, 0.5, 1.0], [1, 1, 0, 1], format=fmt)
    yield evaluate(bce, grad=True), [True]
    mean = Case.build("sparse_softmax_cross_entropy_with_logits", logits, [0, 1, 2],
                      format=fmt, reduction="mean")  # fmt: skip
    yield evaluate(mean, grad=True), [True]  # a 0-d value


@pytest.mark.parametrize("fmt", FORMATS, ids=str)
def test_measure_worst_chooses_as_every_measurement_does(fmt):
    rng = np.random.default_rng(2)
    seen = set()
    for result, gradients in _cases(fmt, rng):
        per_row = result.case.loss.rowwise
        for towards in [False, *gradients]:
            expected = (result.value if towards is False else result.gradient if towards is True
                        else result.operand_gradients[towards].value)  # fmt: skip
            for max_ulps in (0, 4, math.inf):
                got = _spoil(expected, fmt, rng)
                every = _every(result, got, towards, max_ulps)
                seen |= {m.status for m in every}
                # compared by repr: NaN fields are equal there, int and np.int64 not
                assert repr(measure(result, got, towards, max_ulps)) == repr(every)
                chosen = measure_worst(result, got, towards, max_ulps, per_row=per_row)
                assert repr(chosen) == repr(_worst_of(every, per_row))
                assert repr(measure_worst(result, got, towards, max_ulps)) == repr(every)
    assert seen >= {"ok", "inaccurate", "underflow", "overflow", "clipped", "nan"}


def test_measure_reads_lazy_arrays_by_blocks(monkeypatch):
    """The same measurements from lazy arrays (computed block by block) as from whole ones,
    with rows spread over several blocks."""
    monkeypatch.setattr(measure_module, "CHUNK", 16)
    rng = np.random.default_rng(3)
    V, D = 30, 5
    case = Case.build("linear_cross_entropy", rng.standard_normal((2, D)), [0, 7],
                      format="float32", linear_weight=rng.standard_normal((V, D)))  # fmt: skip
    result = evaluate(case, grad=True)
    value, condition, exact_w, scale = result.operand_gradients["linear_weight"]
    blocks = []

    def lazy(array):
        def block(r0, r1):
            blocks.append((r0, r1))
            return np.asarray(array)[r0:r1]

        return LazyArray(np.shape(array), np.asarray(array).dtype, block)

    lazy_result = dataclasses.replace(result, operand_gradients={
        "linear_weight": Gradient(value, lazy(condition), lazy(exact_w), lazy(scale))})  # fmt: skip
    got = _spoil(value, case.format, rng)
    every = _every(result, got, "linear_weight", 4.0)
    assert repr(measure(lazy_result, got, gradient="linear_weight")) == repr(every)
    assert len(blocks) == 3 * math.ceil(V / 3)  # 3 rows of 5 per block of 16, 3 arrays
    worst = measure_worst(lazy_result, got, "linear_weight", per_row=True)
    assert repr(worst) == repr(_worst_of(every, True))
    assert [m.index[0] for m in worst] == list(range(V))


@pytest.mark.parametrize("fmt", ["float64", "float32", "bfloat16"])
def test_settling_in_numpy_agrees_with_classify(fmt):
    """Where ``_settled`` says ok or not ok from float64 approximations, ``_decide`` (in
    mpmath, from the exact value) says the same; near a tolerance it settles nothing."""
    from stabcheck.formats import get_format
    from stabcheck.measure import _decide, _settled
    from stabcheck.oracle.enclosure import CTX

    f = get_format(fmt)
    rng = np.random.default_rng(11)
    n = 4000
    exact = [CTX.mpf(float(m)) * CTX.mpf(2) ** int(e) * (1 + CTX.mpf(2) ** -70 * int(k))
             for m, e, k in zip(rng.uniform(-2, 2, n), rng.integers(-60, 60, n),
                                rng.integers(-9, 9, n))]  # fmt: skip
    condition = 10.0 ** rng.uniform(-1, 8, n)
    scale = np.where(rng.uniform(size=n) < 0.3, 10.0 ** rng.uniform(-20, 5, n), np.nan)
    # results at relative errors spread around the tolerance, some exactly at it
    tolerance = 4 * np.maximum(1.0, condition) * f.eps
    factor = np.where(rng.uniform(size=n) < 0.2, 1.0, 10.0 ** rng.uniform(-1, 1, n))
    approx = np.array([float(x) for x in exact])
    got = f.asarray(approx * (1 + tolerance * factor)).astype(np.float64)
    ok, not_ok = _settled(got, approx, condition, scale, f, 4.0)
    assert ok.sum() > n / 4 and not_ok.sum() > n / 4
    expected = f.asarray(approx).astype(np.float64)
    for i in np.flatnonzero(ok | not_ok):
        status, _, _ = _decide(exact[i], expected[i], got[i], 10**6, f, condition[i], 4.0,
                               None if np.isnan(scale[i]) else scale[i])  # fmt: skip
        assert (status == "ok") == bool(ok[i]), (i, status)
