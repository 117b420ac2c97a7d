"""The oracle's conventions for zeros, infinities and NaN, and its decimal output.

Each expected value is written by hand from the conventions in DESIGN.md and the oracle's
docstrings (0 log 0 = 0; a zero probability under a positive label is +inf; infinite
logits are limits where the limit exists, NaN where it does not; NaN in, NaN out), or is
an exact identity (a -inf logit under a zero label is the same as no logit at all). The
decimal output is checked against a 400-digit mpmath evaluation of the textbook formula.
"""

from __future__ import annotations

import math
import time

import mpmath
import numpy as np
import pytest

from stabcheck.case import Case
from stabcheck.oracle import decimal, exact

SIGMOID = "sigmoid_cross_entropy_with_logits"
WEIGHTED = "weighted_cross_entropy_with_logits"
SOFTMAX = "softmax_cross_entropy_with_logits"
SPARSE_SOFTMAX = "sparse_softmax_cross_entropy_with_logits"
BCE = "binary_crossentropy"
CCE = "categorical_crossentropy"
SPARSE_CCE = "sparse_categorical_crossentropy"
FORMATS = ("float64", "float32", "float16", "bfloat16")
INF, NAN = math.inf, math.nan


def bits(values: np.ndarray) -> list[int]:
    """float64 bit patterns: equality that tells -0.0 from +0.0 and matches NaN."""
    return np.asarray(values, dtype=np.float64).view(np.uint64).ravel().tolist()


def assert_values(got: np.ndarray, expected: list[float]) -> None:
    got = np.asarray(got, dtype=np.float64).ravel()
    assert len(got) == len(expected)
    for i, (g, e) in enumerate(zip(got.tolist(), expected)):
        if math.isnan(e):
            assert math.isnan(g), (i, g, e)
        else:
            assert g == e and math.copysign(1, g) == math.copysign(1, e), (i, g, e)


# -- probabilities: 0 log 0 = 0, log 0 under a positive label = +inf ------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_binary_crossentropy_at_the_ends(fmt: str) -> None:
    p = [0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0]
    z = [0.0, 1.0, 1.0, 0.0, 0.5, 0.5, 0.25, 0.75]
    res = exact(BCE, p, z, format=fmt, grad=True)
    assert_values(res.value, [0.0, 0.0, INF, INF, INF, INF, INF, INF])
    # dL/dp = -z/p + (1 - z)/(1 - p), a zero weight contributing nothing
    assert_values(res.gradient, [1.0, -1.0, -INF, INF, -INF, INF, -INF, INF])


@pytest.mark.parametrize("fmt", FORMATS)
def test_categorical_zero_probabilities(fmt: str) -> None:
    p = [[0.0, 1.0], [0.0, 0.5], [0.0, 0.5], [0.0, 0.0]]
    y = [[0.0, 1.0], [0.0, 1.0], [1.0, 0.0], [0.0, 0.0]]
    res = exact(CCE, p, y, format=fmt, grad=True)
    log2 = exact(BCE, [0.5], [1.0], format=fmt).value[0]  # -log(1/2), checked elsewhere
    assert_values(res.value, [0.0, log2, INF, 0.0])
    assert_values(res.gradient, [0.0, -1.0, 0.0, -2.0, -INF, 0.0, 0.0, 0.0])
    sparse = exact(SPARSE_CCE, p[:3], [1, 1, 0], format=fmt, grad=True)
    assert bits(sparse.value) == bits(res.value[:3])
    assert bits(sparse.gradient) == bits(res.gradient[:3])


def test_probabilities_used_as_given() -> None:
    """No renormalisation: p = [1/4, 1/4] with label 0 costs log 4, not log 2."""
    res = exact(CCE, [[0.25, 0.25]], [[1.0, 0.0]])
    assert res.value[0] == exact(BCE, [0.25], [1.0]).value[0]
    assert res.value[0] > exact(BCE, [0.5], [1.0]).value[0]


# -- logits, elementwise -------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_sigmoid_infinite_logits(fmt: str) -> None:
    x = [INF, INF, INF, -INF, -INF, -INF]
    z = [1.0, 0.5, 0.0, 0.0, 0.5, 1.0]
    res = exact(SIGMOID, x, z, format=fmt, grad=True)
    assert_values(res.value, [0.0, INF, INF, 0.0, INF, INF])
    # the gradient sigmoid(x) - z in the limit: 1 - z at +inf, -z at -inf
    assert res.gradient.tolist() == [0.0, 0.5, 1.0, 0.0, -0.5, -1.0]
    w = exact(WEIGHTED, x, z, format=fmt, grad=True, pos_weight=4.0)
    assert_values(w.value, [0.0, INF, INF, 0.0, INF, INF])
    # (1 - z) sigmoid(x) - q z sigmoid(-x): 1 - z at +inf, -q z at -inf
    assert w.gradient.tolist() == [0.0, 0.5, 1.0, 0.0, -2.0, -4.0]


@pytest.mark.parametrize("fmt", FORMATS)
def test_nan_inputs_give_nan(fmt: str) -> None:
    for loss, preds, labels in [
        (SIGMOID, [NAN, 1.0], [0.5, 0.5]),
        (BCE, [NAN, 0.5], [0.5, 0.5]),
        (SOFTMAX, [[NAN, 1.0, 2.0]], [[0.0, 0.0, 1.0]]),
        (SPARSE_SOFTMAX, [[1.0, NAN, INF]], [2]),
        (CCE, [[NAN, 0.5]], [[0.0, 1.0]]),
        (SPARSE_CCE, [[0.5, NAN]], [0]),
    ]:
        res = exact(loss, preds, labels, format=fmt, grad=True)
        assert math.isnan(res.value.ravel()[0]), loss
        assert np.isnan(res.gradient.ravel()[0]), loss
        if loss not in (SIGMOID, BCE):
            assert np.isnan(res.gradient).all(), loss
        else:
            assert not np.isnan(res.value[1]) and not np.isnan(res.gradient[1])
    w = exact(WEIGHTED, [NAN], [1.0], format=fmt, grad=True, pos_weight=2.0)
    assert math.isnan(w.value[0]) and math.isnan(w.gradient[0])


# -- logits, rowwise ----------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_softmax_true_class_alone_at_plus_infinity(fmt: str) -> None:
    for logits, label in (([INF, 0.0, -3.0], 0), ([1.0, INF, -INF], 1)):
        res = exact(SPARSE_SOFTMAX, [logits], [label], format=fmt, grad=True)
        assert_values(res.value, [0.0])
        assert res.gradient.tolist() == [[0.0, 0.0, 0.0]]  # softmax is one-hot at the limit


@pytest.mark.parametrize("fmt", FORMATS)
def test_softmax_plus_infinity_elsewhere(fmt: str) -> None:
    res = exact(SPARSE_SOFTMAX, [[INF, 0.0]], [1], format=fmt, grad=True)
    assert_values(res.value, [INF])
    assert_values(res.gradient, [1.0, -1.0])


@pytest.mark.parametrize("fmt", FORMATS)
def test_softmax_minus_infinity_under_zero_label_contributes_nothing(fmt: str) -> None:
    rng = np.random.default_rng(5)
    for _ in range(10):
        x = rng.normal(0, 5, 3).astype(np.float16).astype(np.float64)
        y = np.round(rng.random(3) * 8) / 8
        without = exact(SOFTMAX, [x], [y], format=fmt, grad=True)
        for pos in range(4):
            xs = np.insert(x, pos, -INF)
            ys = np.insert(y, pos, 0.0)
            res = exact(SOFTMAX, [xs], [ys], format=fmt, grad=True)
            assert bits(res.value) == bits(without.value)
            assert bits(np.delete(res.gradient[0], pos)) == bits(without.gradient[0])
            assert bits([res.gradient[0, pos]]) == bits([0.0])  # exactly +0


@pytest.mark.parametrize("fmt", FORMATS)
def test_softmax_minus_infinity_under_positive_label(fmt: str) -> None:
    res = exact(SOFTMAX, [[-INF, 0.0, 1.0]], [[0.25, 0.0, 0.75]], format=fmt)
    assert_values(res.value, [INF])
    res = exact(SPARSE_SOFTMAX, [[-INF, 0.0]], [0], format=fmt)
    assert_values(res.value, [INF])


@pytest.mark.parametrize("fmt", FORMATS)
def test_softmax_limits_that_do_not_exist(fmt: str) -> None:
    # two +inf logits, the label on one of them: the softmax split between them is unknown
    res = exact(SPARSE_SOFTMAX, [[INF, INF, 0.0]], [0], format=fmt, grad=True)
    assert math.isnan(res.value[0])
    assert np.isnan(res.gradient[0, :2]).all()
    # every logit -inf: there is no softmax; with no label there is nothing to pay
    res = exact(SOFTMAX, [[-INF, -INF], [-INF, -INF]], [[0.0, 0.0], [0.0, 1.0]], format=fmt)
    assert_values(res.value, [0.0, NAN])
    res = exact(SPARSE_SOFTMAX, [[-INF, -INF, -INF]], [1], format=fmt, grad=True)
    assert math.isnan(res.value[0])


@pytest.mark.parametrize("fmt", FORMATS)
def test_all_zero_label_rows_are_exactly_zero_and_fast(fmt: str) -> None:
    big = {"float64": 1e300, "float32": 1e38, "float16": 6e4, "bfloat16": 1e38}[fmt]
    rows = np.array([[big, -big, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0], [INF, 1.0, -INF, 2.0]])
    wide = np.linspace(-big, big, 1000)
    start = time.perf_counter()
    res = exact(SOFTMAX, rows, np.zeros_like(rows), format=fmt, grad=True)
    many = exact(SOFTMAX, [wide], [np.zeros(1000)], format=fmt, grad=True)
    cat = exact(CCE, [np.linspace(0, 1, 1000)], [np.zeros(1000)], format=fmt, grad=True)
    elapsed = time.perf_counter() - start
    assert bits(res.value) == [0, 0, 0] and bits(res.gradient) == [0] * 12
    assert bits(many.value) == [0] and bits(many.gradient) == [0] * 1000
    assert bits(cat.value) == [0] and bits(cat.gradient) == [0] * 1000
    assert elapsed < 1.0


# -- decimal output --------------------------------------------------------------------------


def _reference(case: Case) -> list[mpmath.mpf]:
    """Textbook formulas at 400 digits (finite inputs)."""
    ctx = mpmath.MPContext()
    ctx.dps = 400
    spec = case.loss.name
    preds = case.predictions.astype(np.float64).tolist()
    if spec in (SIGMOID, WEIGHTED):
        q = ctx.mpf(case.params.get("pos_weight", 1.0))
        z_list = [ctx.mpf(z) for z in case.labels.astype(np.float64).tolist()]
        return [
            q * z * ctx.log(1 + ctx.exp(-ctx.mpf(x))) + (1 - z) * ctx.log(1 + ctx.exp(ctx.mpf(x)))
            for x, z in zip(preds, z_list)
        ]
    if spec == BCE:
        z_list = [ctx.mpf(z) for z in case.labels.astype(np.float64).tolist()]
        return [
            -(z * ctx.log(p) + (1 - z) * ctx.log(1 - ctx.mpf(p))) for p, z in zip(preds, z_list)
        ]
    labels = case.labels.tolist()
    out = []
    for row, lab in zip(preds, labels):
        y = lab if isinstance(lab, list) else [1.0 if i == lab else 0.0 for i in range(len(row))]
        if spec in (SOFTMAX, SPARSE_SOFTMAX):
            lse = ctx.log(ctx.fsum(ctx.exp(v) for v in row))
            out.append(ctx.fsum(yi * (lse - xi) for xi, yi in zip(row, y) if yi))
        else:
            out.append(-ctx.fsum(yi * ctx.log(pi) for pi, yi in zip(row, y) if yi))
    return out


DECIMAL_CASES = [
    (SIGMOID, [0.0, 3.5, -40.0, 700.0, 1e10], [0.5, 1.0, 0.0, 1.0, 0.25], {}),
    (WEIGHTED, [-2.0, 20.0], [1.0, 0.75], {"pos_weight": 3.0}),
    (BCE, [0.5, 1e-300, 0.999, 0.125], [1.0, 0.5, 0.0, 0.3], {}),
    (SOFTMAX, [[1.0, 2.0, 3.0], [1e4, 0.0, -1e4]], [[0.2, 0.3, 0.5], [0.0, 1.0, 0.0]], {}),
    (SPARSE_SOFTMAX, [[0.0, -690.0], [5.0, 5.0]], [0, 1], {}),
    (CCE, [[0.1, 0.7, 0.2]], [[0.25, 0.5, 0.25]], {}),
    (SPARSE_CCE, [[5e-324, 0.5]], [0], {}),
]


@pytest.mark.parametrize("digits", [30, 50])
@pytest.mark.parametrize(("loss", "preds", "labels", "params"), DECIMAL_CASES)
def test_decimal_has_the_requested_correct_digits(
    loss: str, preds: list, labels: list, params: dict, digits: int
) -> None:
    case = Case.build(loss, preds, labels, **params)
    texts = decimal(case, digits)
    refs = _reference(case)
    assert len(texts) == len(refs)
    ctx = mpmath.MPContext()
    ctx.dps = 400
    for text, ref in zip(texts, refs):
        got = ctx.mpf(text)
        mantissa = text.split("e")[0].replace("-", "").replace(".", "").lstrip("0")
        assert len(mantissa.rstrip("0")) <= digits, text
        # within half a unit (plus a hair) of the digits-th significant digit
        unit = ctx.mpf(10) ** (ctx.floor(ctx.log10(abs(ref))) - digits + 1)
        assert abs(got - ref) <= unit * ctx.mpf("0.5000001"), (text, ctx.nstr(ref, digits + 5))


def test_decimal_of_special_values() -> None:
    case = Case.build(SPARSE_SOFTMAX, [[INF, 0.0], [-INF, 0.0], [0.0, 0.0]], [1, 1, 0])
    texts = decimal(case, 30)
    assert texts[0] == "inf"
    assert float(texts[1]) == 0.0
    assert texts[2].startswith("0.693147180559945309417232121458")


def test_decimal_of_extreme_values() -> None:
    """Closed forms: log1p(2 exp(-2**60)) is 2 exp(-2**60) to ~10**17 digits; the tie
    row is 2**60 + 128 + 2 exp(-2**60 - 128); sigmoid at z = 0, x = -745 is
    log1p(exp(-745))."""
    ctx = mpmath.MPContext()
    ctx.dps = 60
    case = Case.build(
        SPARSE_SOFTMAX, [[0.0, -(2.0**60), -(2.0**60)], [2.0**60, -128.0, -128.0]], [0, 1]
    )
    tiny, tie = decimal(case, 30)
    assert tiny == ctx.nstr(2 * ctx.exp(-(2**60)), 30)
    assert ctx.mpf(tie) == 2**60 + 128
    (text,) = decimal(Case.build(SIGMOID, [-745.0], [0.0]), 30)
    assert text == ctx.nstr(ctx.log1p(ctx.exp(-745)), 30)
