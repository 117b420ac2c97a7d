"""The linear losses' oracle (``stabcheck.oracle.linear``): logits h W^T + b exact, the loss
and its gradients with respect to h, W and b correctly rounded, against values derived here
independently and against identities.

The reference computes every logit as a sum of Fractions, then the loss, G = dL/dx and
G W, G^T h, sum_n G_n with mpmath in a private context at 400 bits, and rounds once with
``Format.round``; with random inputs no result lies within 2^-300 of a rounding boundary.
"""

from __future__ import annotations

import json
from fractions import Fraction

import mpmath
import numpy as np
import pytest

from stabcheck.case import Case
from stabcheck.errors import InvalidArgument
from stabcheck.formats import get_format
from stabcheck.oracle import evaluate, exact
from stabcheck.oracle.linear import logits

LINEAR, SOFT = "linear_cross_entropy", "soft_linear_cross_entropy"
CTX = mpmath.MPContext()
CTX.prec = 400


def _reference(h, W, b, targets, z_loss=0.0, d=1, softcap=None):
    """Per row loss, then dL/dh, dL/dW, dL/db of sum(loss) / d, as mpmath numbers; under a
    softcap c on u = c tanh(x / c), with dL/dx = dL/du sech^2(x / c)."""
    N, V, D = len(h), len(W), len(h[0])
    hf = [[Fraction(float(v)) for v in row] for row in h]
    Wf = [[Fraction(float(v)) for v in row] for row in W]
    bf = [Fraction(0)] * V if b is None else [Fraction(float(v)) for v in b]
    x = [[sum((hf[n][j] * Wf[v][j] for j in range(D)), Fraction(0)) + bf[v] for v in range(V)]
         for n in range(N)]  # fmt: skip
    losses, G = [], []
    for n in range(N):
        xs = [CTX.mpf(v.numerator) / v.denominator for v in x[n]]
        slope = [CTX.mpf(1)] * V
        if softcap is not None:
            slope = [CTX.sech(v / softcap) ** 2 for v in xs]
            xs = [softcap * CTX.tanh(v / softcap) for v in xs]
        lse = CTX.log(CTX.fsum(CTX.exp(v) for v in xs))
        y = [CTX.mpf(t.numerator) / t.denominator for t in targets[n]]
        Y = CTX.fsum(y)
        losses.append(CTX.fsum(yi * (lse - xi) for yi, xi in zip(y, xs)) + z_loss * lse**2)
        B = Y + 2 * z_loss * lse
        G.append([(B * CTX.exp(xi - lse) - yi) * si / d for xi, yi, si in zip(xs, y, slope)])
    gh = [[CTX.fsum(G[n][v] * Wf[v][j] for v in range(V)) for j in range(D)] for n in range(N)]
    gW = [[CTX.fsum(G[n][v] * hf[n][j] for n in range(N)) for j in range(D)] for v in range(V)]
    gb = [CTX.fsum(G[n][v] for n in range(N)) for v in range(V)]
    return losses, gh, gW, gb


def _rounded(values, fmt):
    return np.array([[fmt.round(_fraction(v)) for v in row] if isinstance(row, list)
                     else fmt.round(_fraction(row)) for row in values])  # fmt: skip


def _fraction(v) -> Fraction:
    sign, man, exp, _ = CTX.mpf(v)._mpf_
    return (-1) ** sign * Fraction(man) * Fraction(2) ** exp


def _inputs(rng, fmt, N, D, V, bias=True, scale=1.0):
    cast = get_format(fmt).asarray
    h = cast(rng.standard_normal((N, D)) * scale).astype(np.float64)
    W = cast(rng.standard_normal((V, D)) * scale).astype(np.float64)
    b = cast(rng.standard_normal(V)).astype(np.float64) if bias else None
    return h, W, b


@pytest.mark.parametrize("fmt", ["float64", "float32", "float16", "bfloat16"])
@pytest.mark.parametrize("bias", [True, False])
def test_sparse_values_and_gradients_against_independent_values(fmt, bias):
    rng = np.random.default_rng(7)
    h, W, b = _inputs(rng, fmt, 3, 5, 4, bias, scale=2.0)
    labels = [0, 3, 1]
    kw = {"linear_weight": W} | ({"linear_bias": b} if bias else {})
    got = exact(LINEAR, h, labels, format=fmt, grad=True, **kw)
    targets = [[Fraction(int(v == k)) for v in range(4)] for k in labels]
    losses, gh, gW, gb = _reference(h, W, b, targets)
    f = get_format(fmt)
    np.testing.assert_array_equal(got.value, _rounded(losses, f))
    np.testing.assert_array_equal(got.gradient, _rounded(gh, f))
    np.testing.assert_array_equal(got.operand_gradients["linear_weight"].value, _rounded(gW, f))
    if bias:
        np.testing.assert_array_equal(got.operand_gradients["linear_bias"].value,
                                      _rounded(gb, f))  # fmt: skip
    else:
        assert "linear_bias" not in got.operand_gradients


@pytest.mark.parametrize("fmt", ["float32", "bfloat16"])
def test_soft_labels_smoothing_weights_and_mean_against_independent_values(fmt):
    rng = np.random.default_rng(11)
    h, W, b = _inputs(rng, fmt, 2, 3, 5)
    f = get_format(fmt)
    labels = f.asarray(np.array([[0.5, 0.25, 0.25, 0, 0], [0, 0, 0, 0, 1.0]]))
    weight = f.asarray(np.array([1.0, 2.0, 0.5, 0.0, 3.0]))
    e = 0.125
    got = exact(SOFT, h, labels, format=fmt, grad=True, linear_weight=W, linear_bias=b,
                label_smoothing=e, weight=weight, reduction="mean", z_loss=2.0**-6)  # fmt: skip
    E = Fraction(e)
    targets = [[Fraction(float(wv)) * ((1 - E) * Fraction(float(t)) + E / 5)
                for t, wv in zip(row, weight)] for row in labels]  # fmt: skip
    losses, gh, gW, gb = _reference(h, W, b, targets, z_loss=2.0**-6, d=2)
    assert got.value == f.round(_fraction(CTX.fsum(losses) / 2))
    np.testing.assert_array_equal(got.gradient, _rounded(gh, f))
    np.testing.assert_array_equal(got.operand_gradients["linear_weight"].value, _rounded(gW, f))
    np.testing.assert_array_equal(got.operand_gradients["linear_bias"].value, _rounded(gb, f))


@pytest.mark.parametrize("fmt", ["float64", "float32", "bfloat16"])
@pytest.mark.parametrize("loss", [LINEAR, SOFT])
def test_softcapped_values_and_gradients_against_independent_values(fmt, loss):
    rng = np.random.default_rng(13)
    h, W, b = _inputs(rng, fmt, 3, 4, 5, scale=3.0)  # logits beyond the cap of 5
    f = get_format(fmt)
    if loss == LINEAR:
        labels, targets = [4, 0, 2], [[Fraction(int(v == k)) for v in range(5)] for k in (4, 0, 2)]
    else:
        labels = f.asarray(np.array([[0.5, 0.5, 0, 0, 0], [0, 0, 0.25, 0.75, 0], [0, 0, 0, 0, 1]]))
        targets = [[Fraction(float(t)) for t in row] for row in labels]
    got = exact(loss, h, labels, format=fmt, grad=True, linear_weight=W, linear_bias=b,
                softcap=5.0, reduction="sum")  # fmt: skip
    losses, gh, gW, gb = _reference(h, W, b, targets, softcap=5)
    assert got.value == f.round(_fraction(CTX.fsum(losses)))
    np.testing.assert_array_equal(got.gradient, _rounded(gh, f))
    np.testing.assert_array_equal(got.operand_gradients["linear_weight"].value, _rounded(gW, f))
    np.testing.assert_array_equal(got.operand_gradients["linear_bias"].value, _rounded(gb, f))


def test_a_softcapped_identity_classifier_gives_the_softcapped_loss_on_h():
    rng = np.random.default_rng(17)
    h = get_format("float32").asarray(rng.standard_normal((2, 4)) * 30).astype(np.float64)
    linear = exact(LINEAR, h, [1, 3], format="float32", grad=True, linear_weight=np.eye(4),
                   softcap=30.0)  # fmt: skip
    plain = exact("sparse_softmax_cross_entropy_with_logits", h, [1, 3], format="float32",
                  grad=True, softcap=30.0)  # fmt: skip
    np.testing.assert_array_equal(linear.value, plain.value)
    np.testing.assert_array_equal(linear.gradient, plain.gradient)


def test_softcapped_tied_classes_cancel_exactly():
    """Two equal rows of W tie their logits: under a softcap G = (1/2 - y_v) sech^2(x / c)
    shares one factor, and dL/dh = G W is exactly 0 (an enclosure alone never narrows to
    it); a third, masked class (bias -inf) takes no part."""
    h = np.array([[0.75, -2.5]])
    W = np.array([[1.5, 0.25], [1.5, 0.25], [3.0, 1.0]])
    b = np.array([0.0, 0.0, -np.inf])
    got = exact(LINEAR, h, [0], grad=True, linear_weight=W, linear_bias=b, softcap=2.0)
    assert got.gradient.tolist() == [[0.0, 0.0]]
    x = 0.75 * 1.5 - 2.5 * 0.25
    g = 0.5 * float(CTX.sech(x / 2) ** 2)  # dL/dx of class 1; class 0 has its negative
    assert got.operand_gradients["linear_bias"].value[1] == pytest.approx(g, rel=1e-15)
    assert got.operand_gradients["linear_bias"].value[2] == 0.0
    assert got.value[0] == float(CTX.log(2))


def test_logits_are_exact_where_float_arithmetic_cancels():
    h = np.array([[2.0**60, 1.0, -(2.0**60)]])
    W = np.array([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
    assert logits(h, W).tolist() == [[Fraction(1), Fraction(0)]]
    assert (h @ W.T).tolist() == [[0.0, 0.0]]  # what float64 gives
    got = exact(LINEAR, h, [1], linear_weight=W)
    assert got.value[0] == float(CTX.log1p(CTX.e))  # log(e^1 + e^0) - 0


def test_an_identity_classifier_gives_the_plain_loss_on_h():
    rng = np.random.default_rng(3)
    h = get_format("float32").asarray(rng.standard_normal((3, 4)) * 3).astype(np.float64)
    labels = [2, 0, 3]
    linear = exact(LINEAR, h, labels, format="float32", grad=True, linear_weight=np.eye(4))
    plain = exact("sparse_softmax_cross_entropy_with_logits", h, labels, format="float32",
                  grad=True)  # fmt: skip
    np.testing.assert_array_equal(linear.value, plain.value)
    np.testing.assert_array_equal(linear.gradient, plain.gradient)  # G I = G


def test_a_zero_bias_is_no_bias():
    rng = np.random.default_rng(5)
    h, W, _ = _inputs(rng, "bfloat16", 2, 3, 4, bias=False)
    without = exact(LINEAR, h, [1, 2], format="bfloat16", grad=True, linear_weight=W)
    zero = exact(LINEAR, h, [1, 2], format="bfloat16", grad=True, linear_weight=W,
                 linear_bias=np.zeros(4))  # fmt: skip
    np.testing.assert_array_equal(without.value, zero.value)
    np.testing.assert_array_equal(without.gradient, zero.gradient)
    np.testing.assert_array_equal(without.operand_gradients["linear_weight"].value,
                                  zero.operand_gradients["linear_weight"].value)  # fmt: skip


def test_exact_zeros_of_the_gradients_are_found():
    """Equal W columns make dL/dh exactly 0 (the shares sum to 1); rows h and -h with W h = 0
    share their logits, so their dL/dW cancel exactly; intervals alone never reach 0."""
    W = np.array([[0.0, 1.0], [0.0, 1.0], [1.0, 1.0]])
    b = np.array([0.5, -1.0, 2.0])
    got = exact(LINEAR, [[0.0, 0.0]], [0], grad=True, linear_weight=W, linear_bias=b)
    assert got.gradient[0, 1] == 0.0 and got.gradient[0, 0] != 0.0
    W2 = np.array([[1.0, -1.0], [2.0, -2.0]])
    pair = exact(LINEAR, [[3.0, 3.0], [-3.0, -3.0]], [0, 0], grad=True, linear_weight=W2,
                 linear_bias=[0.25, -0.75])  # fmt: skip
    assert (pair.operand_gradients["linear_weight"].value == 0.0).all()
    padded = exact(LINEAR, [[0.0, 0.0], [1.0, 2.0]], [0, 1], grad=True, linear_weight=W,
                   linear_bias=[0.0, 1.0, -np.inf])  # fmt: skip
    assert padded.gradient[0].tolist() == [0.0, 0.0]
    assert np.isfinite(padded.operand_gradients["linear_weight"].value).all()


def test_ignored_rows_give_nothing_even_when_they_hold_nan():
    rng = np.random.default_rng(9)
    h, W, b = _inputs(rng, "float32", 3, 2, 3)
    h[1] = np.nan
    kw = dict(format="float32", grad=True, linear_weight=W, linear_bias=b, ignore_index=-100)
    got = exact(LINEAR, h, [0, -100, 2], reduction="sum", **kw)
    kept = exact(LINEAR, h[[0, 2]], [0, 2], reduction="sum", **kw)
    assert got.value == kept.value
    assert got.gradient[1].tolist() == [0.0, 0.0]
    np.testing.assert_array_equal(got.gradient[[0, 2]], kept.gradient)
    for name in ("linear_weight", "linear_bias"):
        np.testing.assert_array_equal(got.operand_gradients[name].value,
                                      kept.operand_gradients[name].value)  # fmt: skip


def test_every_row_ignored_under_mean_is_nan_with_zero_gradients():
    """0/0 for the value, as PyTorch's mean; the gradients are sums of no contribution: 0."""
    got = exact(LINEAR, [[1.0, np.nan], [2.0, 3.0]], [-100, -100], grad=True,
                linear_weight=np.eye(2), linear_bias=[0.5, 1.0], ignore_index=-100,
                reduction="mean")  # fmt: skip
    assert np.isnan(got.value)
    assert (got.gradient == 0).all()
    for name in ("linear_weight", "linear_bias"):
        assert (got.operand_gradients[name].value == 0).all()
        assert np.isfinite(got.operand_gradients[name].condition).all()


def test_non_finite_inputs_follow_ieee_rules():
    W = np.array([[1.0, 0.0], [1.0, 1.0]])
    assert [str(v) for v in logits([[np.inf, 1.0]], W)[0]] == ["inf", "inf"]
    assert str(logits([[np.inf, 1.0]], np.array([[0.0, 1.0]]))[0, 0]) == "nan"  # inf * 0
    assert str(logits([[np.inf, -np.inf]], np.array([[1.0, 1.0]]))[0, 0]) == "nan"
    got = exact(LINEAR, [[np.inf, 1.0]], [0], linear_weight=np.array([[0.0, 1.0], [1.0, 1.0]]))
    assert np.isnan(got.value[0])


def test_condition_numbers_see_cancellation_in_the_logits():
    """A logit that cancels (1e8 h against -1e8) is ill-conditioned in h and W even though
    the softmax of the exact logits is not."""
    h = np.array([[1e8, 1.0]])
    W = np.array([[1.0, 0.0], [1.0, 1.0]])
    mild = exact(LINEAR, [[1.0, 1.0]], [0], linear_weight=W)
    harsh = exact(LINEAR, h, [0], linear_weight=np.array([[1.0, 0.0], [1.0, 1e-8]]))
    assert mild.condition[0] < 10
    assert harsh.condition[0] > 1e6


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "needs linear_weight"),
        ({"linear_weight": np.ones((3, 4))}, "linear_weight has shape (3, 4)"),
        ({"linear_weight": np.ones((3, 2)), "linear_bias": np.ones(4)}, "linear_bias has shape"),
        ({"linear_weight": np.ones((2, 2))}, "out of range for 2 classes"),
    ],
)
def test_bad_operands_are_named(kwargs, message):
    with pytest.raises(InvalidArgument, match=message.replace("(", r"\(").replace(")", r"\)")):
        Case.build(LINEAR, [[1.0, 2.0]], [2], **kwargs)


def test_soft_labels_are_one_row_of_classes():
    with pytest.raises(InvalidArgument, match="labels has shape"):
        Case.build(SOFT, [[1.0, 2.0]], [[1.0, 0.0]], linear_weight=np.ones((3, 2)))


def test_a_linear_case_replays_from_json_and_the_command_line():
    case = Case.build(LINEAR, [[1.0, 2.0]], [1], format="bfloat16",
                      linear_weight=[[0.5, 1.0], [2.0, -1.0]], linear_bias=[0.0, 1.0])  # fmt: skip
    again = Case.from_json(case.to_json())
    assert again.id == case.id
    assert again.operands["linear_bias"].tolist() == [0.0, 1.0]
    assert json.loads(case.to_json())["linear_weight"][1] == ["0x1.0000000000000p+1",
                                                              "-0x1.0000000000000p+0"]
    assert "--linear-weight '[[" in case.cli() and "--linear-bias" in case.cli()
    assert evaluate(again).value.tolist() == evaluate(case).value.tolist()
