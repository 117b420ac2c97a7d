"""``assert_exact``: passes on accurate functions, and on a mismatch says where, what and
how to replay it, with values printed in the case's format."""

from __future__ import annotations

import re

import numpy as np
import pytest

from stabcheck import Case, InvalidArgument, NotExact, StabcheckError, assert_exact
from stabcheck.errors import AdapterUnavailable
from stabcheck.implementations import get_implementation
from stabcheck.implementations.reference import (
    accurate_binary,
    accurate_sigmoid,
    accurate_sparse_softmax,
    accurate_weighted,
)

SIGMOID = "sigmoid_cross_entropy_with_logits"
SPARSE = "sparse_softmax_cross_entropy_with_logits"


def naive_sigmoid(x, z):
    """-(z log s + (1 - z) log(1 - s)) with s = 1 / (1 + exp(-x)), as written."""
    s = 1 / (1 + np.exp(-x))
    return -(z * np.log(s) + (1 - z) * np.log(1 - s))


def _failure(*args, **kwargs) -> NotExact:
    with pytest.raises(NotExact) as info:
        assert_exact(*args, **kwargs)
    return info.value


# -- passing ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fn", "loss", "predictions", "labels", "dtype"),
    [
        (accurate_sigmoid, SIGMOID, [-800.0, -40.0, 0.0, 1e-300, 37.0, 800.0],
         [1.0, 0.0, 0.5, 1.0, 0.25, 0.0], np.float64),
        (accurate_sparse_softmax, SPARSE, [[1e4, 0.0, -3.0], [0.1, 0.2, 0.3]], [1, 2],
         np.float32),
        (accurate_binary, "binary_crossentropy", [1e-4, 0.5, 0.999, 1.0], [0.0, 1.0, 0.5, 1.0],
         np.float16),
    ],
)  # fmt: skip
def test_passes_on_stabcheck_s_accurate_reference(fn, loss, predictions, labels, dtype):
    x = np.array(predictions, dtype=dtype)
    y = np.array(labels) if loss == SPARSE else np.array(labels, dtype=dtype)
    assert assert_exact(fn, x, y, loss=loss) is None


def test_passes_with_options_and_gradients():
    impl = get_implementation("accurate", SIGMOID)
    x, z = np.array([-800.0, -3.5, 0.0, 20.0]), np.array([1.0, 0.0, 0.5, 0.75])
    assert assert_exact(impl.fn, x, z, loss=SIGMOID, grad=True, grad_fn=impl.grad) is None
    assert assert_exact(impl.fn, x, z, loss=SIGMOID, label_smoothing=0.1, reduction="mean",
                        grad=True, grad_fn=impl.grad) is None  # fmt: skip
    weighted = "weighted_cross_entropy_with_logits"
    assert assert_exact(accurate_weighted, x, z, loss=weighted, pos_weight=3.0) is None


def test_options_reach_the_function_by_name():
    """A function that takes pos_weight but ignores it is caught."""

    def ignores_pos_weight(x, z, pos_weight):
        return accurate_sigmoid(x, z)

    weighted = "weighted_cross_entropy_with_logits"
    error = _failure(ignores_pos_weight, [2.0], [1.0], loss=weighted, pos_weight=3.0)
    assert "loss[0]" in str(error) and "inaccurate" in str(error)
    assert error.case.params == {"pos_weight": 3.0}
    assert '"pos_weight":"0x1.8000000000000p+1"' in str(error)  # the replay has it


# -- failing ----------------------------------------------------------------------------------


def test_naive_sigmoid_at_minus_800_says_where_and_what():
    x, z = np.array([0.0, -800.0, 2.0]), np.array([1.0, 1.0, 0.0])
    error = _failure(naive_sigmoid, x, z, loss=SIGMOID)
    message = str(error)
    lines = message.splitlines()
    assert lines[0] == f"Not exact to 4 ULPs (loss {SIGMOID}, float64)"
    assert "Function: test_assertions:naive_sigmoid (numpy backend)" in message
    assert "Mismatched outputs: 1 / 3 (33.3%); by status: overflow 1" in message
    assert "NaN/inf location mismatches: 1" in message
    assert "  loss[1]: returned inf where the correctly rounded value is 800.0" in lines
    row = next(line for line in lines if line.lstrip().startswith("loss[1] "))
    assert row.split() == ["loss[1]", "inf", "800.0", "4.57e+18", "overflow"]
    assert "Worst: loss[1], overflow: returned inf, correctly rounded 800.0" in message
    assert "Tolerance: 4 ULPs, or a relative error of 4 eps x max(1, condition number)" in message
    # The replay lines rebuild the very case.
    assert f"  stabcheck oracle {SIGMOID} --predictions '[\"0x0.0p+0\",\"-0x1.9" in message
    text = re.search(r"Case\.from_json\((.*)\)  #", message).group(1)
    assert Case.from_json(eval(text)).id == error.case.id
    # The data behind the message.
    assert isinstance(error, AssertionError) and isinstance(error, StabcheckError)
    assert [(q, m.index, m.status) for q, m in error.mismatches] == [("loss", (1,), "overflow")]
    assert len(error.measurements["loss"]) == 3


def test_nan_where_the_answer_is_a_number_is_called_out():
    error = _failure(naive_sigmoid, [-800.0, 1.0], [0.0, 1.0], loss=SIGMOID)
    message = str(error)
    assert "  loss[0]: returned nan where the correctly rounded value is 0.0" in message
    assert "by status: nan 1" in message


def test_near_zero_the_absolute_and_relative_errors_are_shown():
    def flushes_to_zero(x, z):
        return np.where(x > 30, 0.0, accurate_sigmoid(x, z))

    error = _failure(flushes_to_zero, [40.0, 1.0], [1.0, 1.0], loss=SIGMOID)
    row = next(line for line in str(error).splitlines() if line.lstrip().startswith("loss[0]"))
    assert "underflow" in row
    assert "(absolute error 4.25e-18, relative error 1)" in row
    # not for an output where ULPs say it all
    plain = _failure(naive_sigmoid, [0.0, -800.0], [1.0, 1.0], loss=SIGMOID)
    assert "absolute error" not in str(plain)


def test_float16_values_print_in_float16_width():
    def ten_ulps_high(x, k):
        out = accurate_sparse_softmax(x, k)
        for _ in range(10):
            out = np.nextafter(out, np.float16(np.inf))
        return out

    x = np.array([[0.1, 2.0, -3.0], [0.0, 0.5, -1.5]], dtype=np.float16)
    error = _failure(ten_ulps_high, x, np.array([0, 2]), loss=SPARSE)
    message = str(error)
    assert message.startswith(f"Not exact to 4 ULPs (loss {SPARSE}, float16)")
    for _, m in error.mismatches:
        for value in (m.got, m.expected):
            short, wide = str(np.float16(value)), repr(float(value))
            assert short != wide  # e.g. 1.099 vs 1.0986328125: the test means something
            assert f" {short} " in message and wide not in message
    assert "eps = 2**-10 in float16" in message
    assert "First mismatches:" in message and "by status: inaccurate 2" in message


def test_gradients_are_measured_with_grad_fn():
    impl = get_implementation("accurate", SIGMOID)

    def wrong_sign(x, z):
        return -impl.grad(x, z)

    x, z = np.array([0.5, -2.0]), np.array([1.0, 0.0])
    error = _failure(impl.fn, x, z, loss=SIGMOID, grad=True, grad_fn=wrong_sign)
    message = str(error)
    assert "Mismatched outputs: 2 / 4 (50.0%): loss 0 / 2, gradient 2 / 2" in message
    assert "gradient[0]" in message and "gradient[1]" in message
    assert f"stabcheck oracle {SIGMOID}" in message and "--grad\n" in message
    assert {q for q, _ in error.mismatches} == {"gradient"}


def test_torch_backend_with_autograd():
    torch = pytest.importorskip("torch")

    def torch_ce(x, k):
        return torch.nn.functional.cross_entropy(x, k, reduction="none")

    x = np.array([[0.5, -1.0, 2.0], [0.0, 0.25, -0.5]], dtype=np.float32)
    assert assert_exact(torch_ce, x, [2, 0], loss=SPARSE, backend="torch", grad=True,
                        max_ulps=64) is None  # fmt: skip

    def doubled(x, k):
        return 2 * torch_ce(x, k)

    error = _failure(doubled, x, [2, 0], loss=SPARSE, backend="torch", grad=True, max_ulps=64)
    assert "(torch backend)" in str(error) and "gradient 6 / 6" in str(error)


def test_a_long_case_is_replayed_by_the_row_that_failed():
    x = np.linspace(-5.0, 5.0, 100)
    x[57] = -800.0
    error = _failure(naive_sigmoid, x, np.ones(100), loss=SIGMOID)
    message = str(error)
    assert "Replay the oracle on the element of loss[57] (hex floats are exact):" in message
    text = re.search(r"Case\.from_json\((.*)\)  #", message).group(1)
    assert Case.from_json(eval(text)).predictions.tolist() == [-800.0]


def test_many_mismatches_are_cut_and_the_worst_is_named():
    def off(x, z):
        return accurate_sigmoid(x, z) * np.linspace(1.01, 1.1, x.size)

    error = _failure(off, np.linspace(0.5, 5.0, 8), np.ones(8), loss=SIGMOID)
    message = str(error)
    assert "Mismatched outputs: 8 / 8 (100.0%)" in message
    assert "  ... and 3 more" in message and "loss[5]" not in message.split("... and")[0]
    worst = max(error.mismatches, key=lambda qm: qm[1].ulps)[1]
    assert f"Worst: loss[{worst.index[0]}], inaccurate" in message


def test_allow_accepts_a_status_and_max_ulps_widens_the_tolerance():
    assert assert_exact(naive_sigmoid, [-800.0, 1.0], [1.0, 1.0], loss=SIGMOID,
                        allow="overflow") is None  # fmt: skip

    def three_ulps_high(x, z):
        out = accurate_sigmoid(x, z)
        for _ in range(3):
            out = np.nextafter(out, np.inf)
        return out

    error = _failure(three_ulps_high, [1.0], [1.0], loss=SIGMOID, max_ulps=2)
    assert str(error).startswith(f"Not exact to 2 ULPs (loss {SIGMOID}, float64)")
    assert assert_exact(three_ulps_high, [1.0], [1.0], loss=SIGMOID, max_ulps=3) is None


def test_the_format_is_the_predictions_dtype_unless_given():
    def in_float64(x, z):  # a float32 input computed and returned in float64
        return accurate_sigmoid(x.astype(np.float64), z.astype(np.float64)) * (1 + 2**-30)

    x, z = np.array([0.3], dtype=np.float32), np.array([1.0], dtype=np.float32)
    assert assert_exact(in_float64, x, z, loss=SIGMOID) is None  # rounded to float32: exact
    error = _failure(in_float64, x, z, loss=SIGMOID, format="float64")
    assert f"(loss {SIGMOID}, float64)" in str(error)
    error = _failure(lambda x, z: in_float64(x, z) * 1.5, x, z, loss=SIGMOID)
    assert f"(loss {SIGMOID}, float32)" in str(error)
    assert "Note: fn returned its loss as float64 for float32 inputs" in str(error)


def test_a_wrong_shape_is_a_failure():
    error = _failure(lambda x, k: accurate_sparse_softmax(x, k)[:, None],
                     [[1.0, 2.0]], [0], loss=SPARSE)  # fmt: skip
    assert "fn returned a loss of shape (1, 1)" in str(error)
    assert "one loss per row, unreduced: shape (1,)" in str(error)


def test_what_the_function_raises_propagates_unchanged():
    class Boom(Exception):
        pass

    def raises(x, z):
        raise Boom("from the user's function")

    with pytest.raises(Boom, match="from the user's function"):
        assert_exact(raises, [1.0], [1.0], loss=SIGMOID)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"loss": "sigmoid_crossentropy"}, InvalidArgument,
         "loss='sigmoid_crossentropy' is not a known loss. Did you mean"),
        ({"loss": "nope"}, InvalidArgument, "Valid losses: binary_crossentropy, "),
        ({"fn": "losses:f"}, InvalidArgument, "fn='losses:f' is not callable; pass the loss"),
        ({"format": "float31"}, InvalidArgument, "format='float31' is not a known format"),
        ({"backend": "pytorch"}, InvalidArgument,
         "backend='pytorch' is not supported. Did you mean 'torch'?"),
        ({"grad": True}, InvalidArgument, "grad=True with backend='numpy' needs grad_fn="),
        ({"grad": "yes"}, InvalidArgument, "grad='yes' must be True or False"),
        ({"grad_fn": accurate_sigmoid}, InvalidArgument,
         "grad_fn=... is given but grad=False, so it would not be called; pass grad=True"),
        ({"grad_fn": 3, "grad": True}, InvalidArgument, "grad_fn=3 is not callable"),
        ({"max_ulps": -1}, InvalidArgument, "max_ulps=-1 must be a non-negative number"),
        ({"allow": "clip"}, InvalidArgument, "allow='clip' is not a status. Did you mean"),
        ({"pos_weight": 2.0}, InvalidArgument,
         f"{SIGMOID} got unknown parameter pos_weight=...; it takes label_smoothing"),
        ({"label_smoothing": 0.1}, InvalidArgument,
         "label_smoothing=... goes to fn by name, but fn takes (x, z); add a label_smoothing "
         "parameter to fn, or leave label_smoothing out"),
        ({"labels": [1.0, 0.0]}, InvalidArgument,
         "labels has shape (2,) but predictions has shape (1,)"),
        ({"predictions": [2.0], "labels": [1.5]}, InvalidArgument,
         "labels[0]=1.5 is outside [0, 1]"),
    ],
)  # fmt: skip
def test_every_bad_argument_is_named_with_the_fix(kwargs, error, message):
    call = {"fn": naive_sigmoid, "predictions": [1.0], "labels": [1.0], "loss": SIGMOID,
            **kwargs}  # fmt: skip
    with pytest.raises(error, match=re.escape(message)) as info:
        assert_exact(call.pop("fn"), call.pop("predictions"), call.pop("labels"), **call)
    assert not isinstance(info.value, AssertionError)  # a bad argument is not a failed check


def test_grad_fn_is_for_numpy_and_a_missing_framework_names_its_extra(monkeypatch):
    from stabcheck.implementations import backends

    monkeypatch.setattr(backends, "installed", lambda module: True)
    with pytest.raises(InvalidArgument, match=r"grad_fn=\.\.\. is for backend='numpy'"):
        assert_exact(naive_sigmoid, [1.0], [1.0], loss=SIGMOID, backend="jax", grad=True,
                     grad_fn=naive_sigmoid)  # fmt: skip
    monkeypatch.setattr(backends, "installed", lambda module: False)
    with pytest.raises(AdapterUnavailable, match=r"pip install 'stabcheck\[tensorflow\]'"):
        assert_exact(naive_sigmoid, [1.0], [1.0], loss=SIGMOID, backend="tensorflow")
