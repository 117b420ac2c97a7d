"""The linear losses' fast path (``oracle.fastlinear``) against the mpmath path
(``oracle.evaluate(case, grad=True, fast=False)``, which uses ``linear.gradients``): the
same correctly rounded values and gradients bit for bit (NaN equal to NaN, the signs of
zeros included), condition numbers and exact values to a relative 1e-6, on random small
and medium cases of every format and option it supports, on each tier of the gradients,
and on the cases it declines."""

from __future__ import annotations

import math
from typing import Any

import mpmath
import numpy as np
import pytest

from stabcheck.case import Case
from stabcheck.formats import FORMATS, get_format
from stabcheck.losses import LabelKind
from stabcheck.oracle import evaluate, fastlinear
from stabcheck.oracle.fast import FAST_PRECISION

LINEAR, SOFT = "linear_cross_entropy", "soft_linear_cross_entropy"
FORMAT_NAMES = [f.name for f in FORMATS]


def bits_equal(a: Any, b: Any) -> bool:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        return False
    return bool(((a.view(np.uint64) == b.view(np.uint64)) | (np.isnan(a) & np.isnan(b))).all())


def conditions_close(a: Any, b: Any, exact: Any, rtol: float = 1e-6) -> bool:
    """max(1, kappa) to ``rtol``, or (kappa = scale / |exact|, and both paths know an entry
    that cancels only to 2**-40 of its scale) 1/max(1, kappa) to 2**-40; entries whose
    exact value is below 2**-1000 (subnormal float64 approximations on both paths) are
    left out."""
    a, b = np.maximum(np.asarray(a, np.float64), 1.0), np.maximum(np.asarray(b, np.float64), 1.0)
    with np.errstate(all="ignore"):
        tiny = np.vectorize(lambda e: abs(float(e)) < 2.0**-1000, otypes=[bool])(np.asarray(exact))
        close = np.isclose(a, b, rtol=rtol, atol=0) | (np.isnan(a) & np.isnan(b)) | tiny
        close |= np.abs(1 / a - 1 / b) <= 2.0**-40
    return bool(close.all())


def scales_close(a: Any, b: Any) -> bool:
    """The conditions' numerators (float64 estimates of sums of magnitudes): to 1e-6 of the
    largest, where finite."""
    if b is None:
        return a is None
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    top = np.nanmax(np.abs(b), initial=0.0)
    return bool((np.isclose(a, b, rtol=1e-6, atol=1e-6 * top) | ~np.isfinite(b)).all())


def exact_close(a: Any, b: Any, scale: Any = None, rtol: float = 1e-6) -> bool:
    """64-bit exact values to ``rtol``, or to 2**-40 of the entry's ``scale`` (its
    first-order magnitude: where the entry cancels far below it, neither path's
    approximation is relatively accurate, only its rounding is certain); below 2**-1075
    (rounded to zero in every format) only their signs are certain."""
    a, b = np.asarray(a).ravel().tolist(), np.asarray(b).ravel().tolist()
    s = [0.0] * len(b) if scale is None else np.asarray(scale, np.float64).ravel().tolist()
    tiny = mpmath.ldexp(1, -1075)
    return all(x == y or (x != x and y != y) or abs(x - y) <= rtol * abs(y) + 2.0**-40 * z
               or (abs(x) < tiny and abs(y) < tiny and (x > 0) == (y > 0))
               for x, y, z in zip(a, b, s))  # fmt: skip


def check(case: Case, conditions: bool = True) -> Any:
    """The fast result, after checking it against the mpmath path."""
    fast = fastlinear.evaluate(case, grad=True)
    assert fast is not None, "declined"
    slow = evaluate(case, grad=True, fast=False)
    assert bits_equal(fast.value, slow.value), (fast.value, slow.value)
    assert bits_equal(fast.gradient, slow.gradient), (fast.gradient, slow.gradient)
    assert set(fast.operand_gradients) == set(slow.operand_gradients)
    for name, g in slow.operand_gradients.items():
        mine = fast.operand_gradients[name]
        assert bits_equal(mine.value, g.value), (name, mine.value, g.value)
        if conditions:
            assert conditions_close(np.asarray(mine.condition), g.condition, g.exact), name
            assert scales_close(mine.scale, g.scale), name
        assert exact_close(np.asarray(mine.exact), g.exact, g.scale), name
    if conditions:
        assert conditions_close(fast.condition, slow.condition, slow.exact)
        assert conditions_close(fast.gradient_condition, slow.gradient_condition,
                                slow.gradient_exact)  # fmt: skip
        assert scales_close(fast.gradient_scale, slow.gradient_scale)
    assert exact_close(fast.exact, slow.exact)
    assert exact_close(fast.gradient_exact, slow.gradient_exact, slow.gradient_scale)
    assert fast.value.shape == slow.value.shape and fast.fast.shape == slow.value.shape
    assert (np.asarray(fast.precision)[np.asarray(fast.fast)] == FAST_PRECISION).all()
    return fast


def draw(rng: np.random.Generator, fmt: str, kind: str = "plain", **fixed: Any) -> Case:
    """A random case: sparse or soft labels, a bias or not, and now and then ignored rows,
    label smoothing, class weights and a reduction. ``kind``: ``plain``, ``confident``
    (logits spread past exp underflow), ``padded`` (classes masked by a -inf bias)."""
    cast = get_format(fmt).asarray
    N, D, V = int(rng.integers(1, 6)), int(rng.integers(1, 9)), int(rng.integers(2, 12))
    scale = float(rng.uniform(3, 30)) if kind == "confident" else 1.0
    h = cast(rng.uniform(-4, 4, (N, D)) * scale).astype(np.float64)
    W = cast(rng.uniform(-1, 1, (V, D)) * scale).astype(np.float64)
    b = cast(rng.uniform(-1, 1, V)).astype(np.float64) if rng.random() < 0.5 else None
    real = V
    if kind == "padded":
        real = V - int(rng.integers(1, V))
        if rng.random() < 0.5:
            W[real:] = 0.0
        b = np.zeros(V) if b is None else b
        b[real:] = -np.inf
    params: dict[str, Any] = {}
    soft = fixed.pop("soft", rng.random() < 0.35)
    if soft:
        y = rng.random((N, V)) * (rng.random((N, V)) < 0.5)
        y[:, real:] = 0
        labels: Any = cast(y).astype(np.float64)
    else:
        labels = rng.integers(0, real, N)
        if rng.random() < 0.3:
            params["ignore_index"] = -100
            labels[rng.random(N) < 0.4] = -100
    if rng.random() < 0.3 and kind != "padded":
        params["label_smoothing"] = float(rng.choice([0.1, 0.5, 1.0, 2.0**-20]))
    if rng.random() < 0.3:
        params["weight"] = cast(rng.uniform(0, 3, V) * (rng.random(V) < 0.8)).astype(np.float64)
    if rng.random() < 0.5:
        params["reduction"] = str(rng.choice(["sum", "mean", "sum_over_batch_size"]))
    params.update(fixed)
    operands = {"linear_weight": W} | ({} if b is None else {"linear_bias": b})
    return Case.build(SOFT if soft else LINEAR, h, labels, format=fmt, **operands, **params)


def accepted(case: Case) -> bool:
    """Whether the fast path takes the case: it declines only a reduction over a zero
    denominator (PyTorch's 0/0) among what ``draw`` makes."""
    return fastlinear.evaluate(case, grad=False) is not None


# -- random cases -------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMAT_NAMES)
@pytest.mark.parametrize("kind", ["plain", "confident", "padded"])
def test_random_small_cases_match_the_mpmath_path(fmt: str, kind: str) -> None:
    rng = np.random.default_rng([FORMAT_NAMES.index(fmt), len(kind)])
    done = 0
    for _ in range(14):
        case = draw(rng, fmt, kind)
        if not accepted(case):
            from stabcheck.oracle import options

            assert case.reduced and options.denominator(case)[0] == 0
            continue
        check(case)
        done += 1
    assert done >= 10


@pytest.mark.parametrize("fmt", ["float32", "bfloat16", "float16"])
def test_the_blas_tier_and_lazy_arrays_match_the_mpmath_path(fmt: str, monkeypatch) -> None:
    """Tier 1 (BLAS with Higham bounds) forced on, and dL/dW held compactly: float32 values,
    conditions and exact values computed on access."""
    monkeypatch.setattr(fastlinear, "DD_ALL", 0)
    monkeypatch.setattr(fastlinear, "COMPACT", 100)
    rng = np.random.default_rng(41)
    cast = get_format(fmt).asarray
    N, D, V = 5, 24, 40
    h = cast(rng.standard_normal((N, D))).astype(np.float64)
    W = cast(0.3 * rng.standard_normal((V, D))).astype(np.float64)
    b = cast(rng.standard_normal(V)).astype(np.float64)
    case = Case.build(LINEAR, h, rng.integers(0, V, N), format=fmt, linear_weight=W,
                      linear_bias=b, reduction="mean", label_smoothing=0.125)  # fmt: skip
    result, stats = fastlinear.evaluate_with_stats(case, grad=True)
    assert stats["tier1"] > 0.9 * stats["entries"] - V
    dW = result.operand_gradients["linear_weight"]
    assert dW.value.dtype == np.float32
    assert isinstance(dW.condition, fastlinear.LazyArray)
    check(case)
    slow = evaluate(case, grad=True, fast=False).operand_gradients["linear_weight"]
    assert exact_close(dW.exact[3], slow.exact[3])
    assert exact_close([dW.exact[7, 5]], [slow.exact[7, 5]])
    np.testing.assert_allclose(dW.condition[2:9:3], np.asarray(dW.condition)[2:9:3])


@pytest.mark.parametrize("loss", [LINEAR, SOFT])
def test_cases_of_the_audit_regimes_match_the_mpmath_path(loss: str) -> None:
    """The audit's own draws (extreme values: subnormals, near-overflow weights, ties); not
    the large shapes drawn only when named, which the mpmath path would take hours on."""
    from stabcheck.audit import draw_cases
    from stabcheck.strategies import get_regime, regimes_for

    for fmt in FORMAT_NAMES:
        for regime in filter(lambda r: get_regime(r).audited, regimes_for(loss)):
            for case in draw_cases(loss, fmt, regime, 2, 1):
                if fastlinear.evaluate(case, grad=False) is not None:
                    check(case)
                else:  # declined: z-loss, softcap, 0/0 reductions, near-overflow inputs
                    assert regime in ("z_loss", "softcap", "weight", "ignore_index",
                                      "reduction"), regime  # fmt: skip


@pytest.mark.parametrize("loss", [LINEAR, SOFT])
def test_the_large_regimes_are_decided_on_the_fast_path(loss: str) -> None:
    """A drawn large vocabulary (V >= 32,000) and a long sequence (N >= 1,024, reduced):
    every row decided without mpmath, the values within an ulp of float64 numpy's and
    dL/dW's shape that of W."""
    from stabcheck.audit import draw_cases

    for regime in ("vocabulary", "long_sequence"):
        case = draw_cases(loss, "float32", regime, 1, 0)[0]
        result = evaluate(case, grad=True)
        assert np.all(result.fast)
        h, W = case.predictions.astype(np.float64), case.operands["linear_weight"].astype(float)
        x = h @ W.T + case.operands.get("linear_bias", np.zeros(len(W))).astype(np.float64)
        lse = np.logaddexp.reduce(x, axis=1)
        y = options_targets(case)
        rows = (y * (lse[:, None] - np.where(y > 0, x, 0))).sum(axis=1)
        kept = y.sum(axis=1) > 0
        want = rows if not case.reduced else np.sum(rows[kept]) / (
            kept.sum() if case.param("reduction") == "mean" else 1)
        np.testing.assert_allclose(result.value, want, rtol=2**-22)
        assert result.operand_gradients["linear_weight"].value.shape == W.shape


def options_targets(case: Case) -> np.ndarray:
    """Each row's targets as float64 (sparse labels one-hot; ignored rows zero)."""
    N, V = len(case.predictions), case.classes
    if case.loss.labels is not LabelKind.SPARSE:
        return case.labels.astype(np.float64)
    y = np.zeros((N, V))
    kept = case.labels >= 0
    y[np.flatnonzero(kept), case.labels[kept]] = 1.0
    return y


def test_medium_cases_match_the_mpmath_path() -> None:
    rng = np.random.default_rng(5)
    for fmt in ("float64", "float32", "bfloat16"):
        cast = get_format(fmt).asarray
        N, D, V = 6, 16, 96
        h = cast(rng.standard_normal((N, D)) * 1.5).astype(np.float64)
        W = cast(0.5 * rng.standard_normal((V, D))).astype(np.float64)
        labels = cast(rng.dirichlet(np.ones(V) * 0.3, N)).astype(np.float64)
        case = Case.build(SOFT, h, labels, format=fmt, linear_weight=W, reduction="sum",
                          weight=cast(rng.uniform(0.5, 2, V)).astype(np.float64))  # fmt: skip
        check(case)


# -- regimes ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMAT_NAMES)
def test_confident_logits_spread_past_exp_underflow(fmt: str) -> None:
    """Spreads of thousands (past every format's exp underflow and past exp_dd's domain,
    through the table of e**(-1400 m)): the far classes' tiny gradients keep their sign."""
    cast = get_format(fmt).asarray
    rng = np.random.default_rng(13)
    h = cast(rng.uniform(-4, 4, (3, 6)) * 40).astype(np.float64)
    W = cast(rng.uniform(-1, 1, (9, 6)) * 40).astype(np.float64)
    x = h @ W.T
    assert (x.max(axis=1) - x.min(axis=1)).max() > 3000
    for labels in ([0, 4, 8], list(np.argmax(x, axis=1))):
        check(Case.build(LINEAR, h, labels, format=fmt, linear_weight=W))
    smooth = Case.build(LINEAR, h, [1, 2, 3], format=fmt, linear_weight=W, reduction="sum",
                        label_smoothing=0.25)  # fmt: skip
    check(smooth)


def test_padded_classes_carry_nothing() -> None:
    W = np.array([[0.5, -1.0], [2.0, 0.25], [0.0, 0.0], [0.5, -1.0]])
    b = np.array([0.0, 1.0, -np.inf, -np.inf])
    h = np.array([[1.0, 2.0], [-3.0, 0.5], [0.0, 0.0]])
    for fmt in FORMAT_NAMES:
        got = check(Case.build(LINEAR, h, [0, 1, 1], format=fmt, linear_weight=W, linear_bias=b))
        assert (got.operand_gradients["linear_weight"].value[2:] == 0).all()
        assert not np.signbit(got.operand_gradients["linear_bias"].value[2:]).any()


def test_exact_zeros_ties_and_cancellations() -> None:
    """Equal W columns (dL/dh exactly 0 by the shares' identity: mpmath), a zero column of
    h (dL/dW exactly +0 from its inputs), rows h and -h whose dL/dW cancel, and every
    logit tied (a rational softmax)."""
    W = np.array([[0.0, 1.0], [0.0, 1.0], [1.0, 1.0]])
    b = np.array([0.5, -1.0, 2.0])
    got = check(Case.build(LINEAR, [[0.0, 0.0]], [0], linear_weight=W, linear_bias=b))
    assert got.gradient[0, 1] == 0.0 and not np.signbit(got.gradient[0, 1])
    W2 = np.array([[1.0, -1.0], [2.0, -2.0]])
    pair = check(Case.build(LINEAR, [[3.0, 3.0], [-3.0, -3.0]], [0, 0], linear_weight=W2,
                            linear_bias=[0.25, -0.75]))  # fmt: skip
    assert (pair.operand_gradients["linear_weight"].value == 0).all()
    zero_col = check(Case.build(LINEAR, [[0.0, 1.5], [0.0, -2.0]], [1, 2], format="float32",
                                linear_weight=W))  # fmt: skip
    assert not np.signbit(zero_col.operand_gradients["linear_weight"].value[:, 0]).any()
    tied = np.ones((4, 3))
    for y in ([[0.25, 0.25, 0.25, 0.25]], [[0.5, 0.5, 0.0, 0.0]]):
        check(Case.build(SOFT, [[1.0, -2.0, 0.5]], y, format="bfloat16", linear_weight=tied))


def test_an_exact_halfway_part_and_a_tiny_transcendental_part() -> None:
    """dL/dW = -(h_0 + h_1) + O(e**-3000): the exact part is a float32 halfway point (1 +
    3 2**-24) and the rest is far below double-double resolution; tier 2b (exact Fractions
    for the rational part, an enclosure of the rest) rounds it without mpmath."""
    h = [[1.0 + 2.0**-23, 3000.0], [2.0**-24, 3000.0]]
    W = np.array([[0.0, 0.0], [0.0, 1.0]])
    case = Case.build(LINEAR, h, [0, 0], format="float32", linear_weight=W)
    _, stats = fastlinear.evaluate_with_stats(case, grad=True)
    assert stats["tier3"] == 0 and stats["rows_mpmath"] == 0
    got = check(case)
    assert got.operand_gradients["linear_weight"].value[0, 0] == -(1.0 + 2.0**-23)


def test_ignored_rows_holding_nan() -> None:
    rng = np.random.default_rng(9)
    h = get_format("float32").asarray(rng.standard_normal((3, 2))).astype(np.float64)
    W = get_format("float32").asarray(rng.standard_normal((3, 2))).astype(np.float64)
    h[1] = np.nan
    for reduction in ("none", "sum", "mean"):
        case = Case.build(LINEAR, h, [0, -100, 2], format="float32", linear_weight=W,
                          ignore_index=-100, reduction=reduction)  # fmt: skip
        got = check(case, conditions=False)  # the mpmath path's conditions see the NaN row
        assert got.gradient[1].tolist() == [0.0, 0.0]
    every = Case.build(LINEAR, h[:2], [-100, -100], format="float32", linear_weight=W,
                       ignore_index=-100, reduction="sum_over_batch_size")  # fmt: skip
    got = check(every, conditions=False)  # Keras: 0 / 0 = 0
    assert got.value == 0.0
    torch_mean = Case.build(LINEAR, h[:2], [-100, -100], format="float32", linear_weight=W,
                            ignore_index=-100, reduction="mean")  # fmt: skip
    got = check(torch_mean, conditions=False)  # PyTorch: 0 / 0 = NaN; gradients stay +0
    assert np.isnan(got.value) and not got.gradient.any()


def test_values_alone() -> None:
    rng = np.random.default_rng(21)
    for fmt in FORMAT_NAMES:
        case = draw(rng, fmt, "confident", soft=False, reduction="none")
        fast = fastlinear.evaluate(case, grad=False)
        slow = evaluate(case, grad=False, fast=False)
        assert bits_equal(fast.value, slow.value)
        assert fast.gradient is None and not fast.operand_gradients
        assert conditions_close(fast.condition, slow.condition, slow.exact)


# -- declined --------------------------------------------------------------------------------------


def test_declined_cases_return_none() -> None:
    W = np.array([[1.0, 2.0], [0.5, -1.0], [0.25, 0.0]])
    h = [[1.0, -1.0], [2.0, 0.5]]

    def case(**kw: Any) -> Case:
        args = {"linear_weight": W} | kw
        preds = args.pop("h", h)
        return Case.build(args.pop("loss", LINEAR), preds, args.pop("y", [0, 2]), **args)

    declined = [
        case(z_loss=1e-4),
        case(h=[[np.nan, 1.0], [2.0, 0.5]]),
        case(h=[[np.inf, 1.0], [2.0, 0.5]]),
        case(linear_weight=np.array([[1.0, np.inf], [0.5, -1.0], [0.25, 0.0]])),
        case(linear_bias=[0.0, np.inf, 1.0]),
        case(linear_bias=[0.0, np.nan, 1.0]),
        case(linear_bias=[0.0, 0.0, -np.inf]),  # a label on a masked class: +inf
        case(linear_bias=[0.0, 0.0, -np.inf], y=[0, 1], label_smoothing=0.1),
        case(weight=[0.0, 1.0, 0.0], y=[0, 2], reduction="mean"),  # 0 / 0 on rows kept
        case(h=[[2.0**600, 1.0], [2.0, 0.5]], linear_weight=W * 2.0**500),  # huge logits
        case(h=[[2.0**21, 0.0], [2.0, 0.5]]),  # a spread beyond 2**20
    ]
    for c in declined:
        assert fastlinear.evaluate(c, grad=True) is None, c.params
    assert fastlinear.evaluate(case(linear_bias=[0.0, 0.0, -np.inf], y=[0, 0]), True) is not None
    plain = Case.build("sparse_softmax_cross_entropy_with_logits", [[1.0, 2.0]], [0])
    assert fastlinear.evaluate(plain, grad=True) is None


# -- pieces ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["float32", "float16", "bfloat16"])
def test_rounding_both_ends_of_enclosures(fmt: str) -> None:
    """``_round_ends`` decides only when both ends round alike, and then to the format's
    rounding of either (halfway points and their neighbours included)."""
    f = get_format(fmt)
    rng = np.random.default_rng(2)
    x = rng.standard_normal(4000) * np.exp2(rng.integers(f.emin - f.precision - 2, f.emax, 4000))
    values = np.array([f.round(float(v)) for v in x])
    ulp = np.array([math.ulp(f.round(float(v))) for v in x]) * 2.0 ** (53 - f.precision)
    mids = values + np.sign(values) * ulp / 2
    points = np.concatenate([x, mids, np.nextafter(mids, 0), np.nextafter(mids, np.inf)])
    for width in (0.0, 2.0**-60, 2.0**-30):
        lo, hi = points - np.abs(points) * width, points + np.abs(points) * width
        value, ok = fastlinear._round_ends(lo, hi, f)
        want_lo = np.array([f.round(float(v)) for v in lo])
        want_hi = np.array([f.round(float(v)) for v in hi])
        same = (want_lo == want_hi) & (np.signbit(want_lo) == np.signbit(want_hi))
        same &= np.isfinite(want_lo)
        assert not (ok & ~same).any()
        assert bits_equal(value[ok], want_lo[ok])
        if fmt != "bfloat16":  # bfloat16 also refuses ends on a halfway point of its own
            assert (ok == same).all()
        if width == 0.0:
            assert ok[: x.size].all()


def test_far_exponentials_are_correctly_rounded() -> None:
    ctx = mpmath.MPContext()
    ctx.prec = 300
    for m in (1, 2, 7, 50):
        h, lo, q = fastlinear._exp_multiple(m)
        exact = ctx.exp(-ctx.mpf(fastlinear.STEP) * m)
        assert 1 <= h < 2
        assert abs((ctx.mpf(h) + lo) * ctx.mpf(2) ** q / exact - 1) < 2.0**-105


def test_lazy_arrays_index_like_numpy() -> None:
    full = np.arange(60.0).reshape(12, 5)
    lazy = fastlinear.LazyArray(full.shape, np.float64, lambda r0, r1: full[r0:r1].copy())
    assert lazy.shape == (12, 5) and lazy.ndim == 2 and lazy.size == 60 and len(lazy) == 12
    assert lazy[3, 2] == full[3, 2] and lazy[-1, -1] == full[-1, -1]
    for key in (slice(2, 9, 3), slice(None, None, -2), slice(5, 2), (slice(1, 4), 2), 7):
        np.testing.assert_array_equal(lazy[key], full[key])
    np.testing.assert_array_equal(np.asarray(lazy), full)
    np.testing.assert_array_equal(lazy.ravel(), full.ravel())
    np.testing.assert_array_equal(lazy[[1, 3]], full[[1, 3]])
