"""sklearn.metrics.log_loss per sample: registered lazily, a few ULPs from the oracle on
ordinary hard-label inputs, and the clipping, label kinds and formats measured and
documented for the installed version."""

from __future__ import annotations

import warnings

import ml_dtypes
import numpy as np
import pytest

pytest.importorskip("sklearn.metrics")

from adapter_helpers import ORDINARY_ULPS, beyond, grid_case, python_output

import stabcheck.implementations.sklearn  # noqa: F401  (registers sklearn.log_loss)
from stabcheck.audit import AuditConfig, run_audit
from stabcheck.case import Case
from stabcheck.implementations import get_implementation, implementations
from stabcheck.measure import measure
from stabcheck.oracle import evaluate
from stabcheck.runner import invoke

NAME = "sklearn.log_loss"
FORMATS = ("float64", "float32", "float16", "bfloat16")
LOSSES = ("binary_crossentropy", "categorical_crossentropy", "sparse_categorical_crossentropy")
# the dtype log_loss computes in (and the adapter returns): bfloat16 goes to float64
COMPUTED = {"float64": np.float64, "float32": np.float32, "float16": np.float16,
            "bfloat16": np.float64}  # fmt: skip


def ordinary(loss: str, fmt: str, rows: int = 12, classes: int = 4) -> Case:
    """Probabilities in [0.05, 0.95] (rows not normalised) and hard labels: targets 0 and 1,
    one-hot rows, class indices."""
    return grid_case(loss, fmt, rows, classes, hard=True)


def call(loss: str, predictions, labels, fmt: str = "float64") -> np.ndarray:
    case = Case.build(loss, predictions, labels, format=fmt)
    return get_implementation(NAME, loss).fn(case.predictions.copy(), case.labels.copy())


def test_registered_as_a_numpy_implementation_without_gradients():
    impls = implementations(names=NAME)
    assert [impl.loss for impl in impls] == list(LOSSES)
    for impl in impls:
        assert (impl.backend, impl.library, impl.requires) == ("numpy", "sklearn", ("sklearn",))
        assert impl.grad is None and impl.available and impl.formats == FORMATS
        assert "finfo(dtype).eps" in impl.documented["clipped"]
        assert "class labels" in impl.documented["error"]


def test_importing_the_module_does_not_import_sklearn():
    code = (
        "import sys, stabcheck.implementations.sklearn as m\n"
        "assert m.log_loss_binary\n"
        "print([name for name in ('sklearn', 'scipy') if name in sys.modules])"
    )
    assert python_output(code).strip() == "[]"


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("loss", LOSSES)
def test_ordinary_inputs_agree_with_the_oracle(loss, fmt):
    case = ordinary(loss, fmt)
    outcome = invoke(get_implementation(NAME, loss), case, grad=False)
    # log(1 - p) with 1 - p rounded first costs the binary form up to 8 ULPs (ORDINARY_ULPS)
    # at p = 0.05
    rows = measure(evaluate(case), outcome.values)
    message = beyond(rows, ORDINARY_ULPS, "value", case, ok=True)
    assert not message, message


@pytest.mark.parametrize("fmt", FORMATS)
def test_probabilities_are_clipped_at_the_machine_eps_of_the_dtype_computed_in(fmt):
    dtype = COMPUTED[fmt]
    eps = np.finfo(dtype).eps
    got = call("binary_crossentropy", [0.0, 1.0, 0.0, 1.0], [1.0, 1.0, 0.0, 0.0], fmt)
    assert got.dtype == dtype
    high, low = -np.log(dtype(eps)), -np.log(dtype(1) - dtype(eps))  # in the dtype, as sklearn
    np.testing.assert_array_equal(got, [high, low, low, high])
    assert float(high) == pytest.approx({np.float64: 36.04365, np.float32: 15.94238,
                                         np.float16: 6.9297}[dtype], rel=1e-4)  # fmt: skip


def test_the_documented_clipping_is_noted_in_the_audit():
    result = run_audit(
        AuditConfig(
            implementations=[NAME],
            losses=["sparse_categorical_crossentropy"],
            formats=["float64"],
            regimes=["infinite"],
            examples=6,
            search=0,
        )
    )
    clipped = [row for row in result.rows if row["status"] == "clipped"]
    assert clipped, [row["status"] for row in result.rows]
    for row in clipped:
        assert row["got"] == pytest.approx(36.04365338911715, rel=1e-15)
        assert "documented: log_loss clips probabilities to [eps, 1 - eps]" in row["note"]


def test_rows_are_used_as_given_and_the_warning_stays_inside():
    from sklearn.metrics import log_loss

    p = np.array([[0.25, 0.25]])  # sums to 1/2
    with pytest.warns(UserWarning, match="do not sum to one"):
        log_loss([0], p, normalize=False, labels=[0, 1])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = call("sparse_categorical_crossentropy", p, [0])
    assert not caught
    np.testing.assert_array_equal(got, [-np.log(0.25)])  # not renormalised to -log(1/2)


def test_multi_hot_rows_are_label_indicator_rows():
    case = Case.build("categorical_crossentropy", [[0.25, 0.5, 0.25]], [[1.0, 1.0, 0.0]])
    got = invoke(get_implementation(NAME, case.loss.name), case, grad=False).values
    assert [m.status for m in measure(evaluate(case), got)] == ["ok"]


@pytest.mark.parametrize(
    ("loss", "y_true", "y_proba", "labels"),
    [
        ("binary_crossentropy", [0.5], np.array([0.3]), [0, 1]),
        ("categorical_crossentropy", np.array([[0.5, 0.5]]), np.array([[0.3, 0.7]]), None),
    ],
)
def test_soft_labels_are_refused_by_sklearn_and_the_adapter_says_so(loss, y_true, y_proba, labels):
    from sklearn.metrics import log_loss

    with pytest.raises(ValueError):
        log_loss(y_true, y_proba, normalize=False, labels=labels)
    with pytest.raises(ValueError, match=r"takes class labels, not soft ones: labels\[0.*0\.5"):
        call(loss, y_proba, np.reshape(y_true, y_proba.shape))


@pytest.mark.parametrize(
    ("loss", "predictions", "labels", "message"),
    [
        ("sparse_categorical_crossentropy", [[1.0]], [0], "at least two labels"),
        ("categorical_crossentropy", [[1.0]], [[1.0]], "only one label"),
        ("binary_crossentropy", [np.nan], [1.0], "NaN"),
    ],
)
def test_what_sklearn_itself_refuses_raises(loss, predictions, labels, message):
    with pytest.raises(ValueError, match=message):
        call(loss, predictions, labels)


def test_bfloat16_is_computed_in_float64():
    p = np.array([0.0, 0.5], dtype=ml_dtypes.bfloat16)
    got = call("binary_crossentropy", p, [1.0, 1.0], "bfloat16")
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, [-np.log(2.0**-52), np.log(2.0)])
