"""The scipy.special compositions: registered lazily, a few ULPs from the oracle on ordinary
inputs in every format, and the dtypes and 0 * -inf behaviour their docstring states."""

from __future__ import annotations

import sys

import ml_dtypes
import numpy as np
import pytest

pytest.importorskip("scipy.special")

from adapter_helpers import ORDINARY_ULPS, beyond, grid_case, python_output

import stabcheck.implementations.scipy  # noqa: F401  (registers the scipy families)
from stabcheck.case import Case
from stabcheck.errors import AdapterUnavailable, UnsupportedFormat
from stabcheck.implementations import get_implementation, implementations
from stabcheck.measure import measure
from stabcheck.oracle import evaluate
from stabcheck.runner import invoke

FORMATS = ("float64", "float32", "float16", "bfloat16")
SOFTMAX = "softmax_cross_entropy_with_logits"
SPARSE_SOFTMAX = "sparse_softmax_cross_entropy_with_logits"
LOSSES = {
    "scipy.log_softmax": (SOFTMAX, SPARSE_SOFTMAX),
    "scipy.logsumexp": (SOFTMAX, SPARSE_SOFTMAX),
    "scipy.xlogy": (
        "binary_crossentropy",
        "categorical_crossentropy",
        "sparse_categorical_crossentropy",
    ),
    "scipy.log_expit": (
        "sigmoid_cross_entropy_with_logits",
        "weighted_cross_entropy_with_logits",
    ),
}
PAIRS = [(name, loss) for name, losses in LOSSES.items() for loss in losses]
# the dtype returned for float16 and bfloat16 inputs, as the module docstring says; None:
# turned down with the ml_dtypes of requirements/lock.txt (0.7: scipy's dtype check fails)
NARROW_DTYPES = {
    "scipy.log_softmax": ("float16", "bfloat16"),
    "scipy.logsumexp": ("float16", None),
    "scipy.xlogy": ("float64", "float64"),
    "scipy.log_expit": ("float64", "float64"),
}
NAN = float("nan")


def ordinary(loss: str, fmt: str, rows: int = 12, classes: int = 4) -> Case:
    """Logits in [-1, 1], probabilities in [0.05, 0.95], soft labels with zeros."""
    return grid_case(loss, fmt, rows, classes)


def test_the_families_are_registered_as_numpy_implementations_without_gradients():
    registered = {(impl.name, impl.loss): impl for impl in implementations(names=list(LOSSES))}
    assert sorted(registered) == sorted(PAIRS)
    for impl in registered.values():
        assert (impl.backend, impl.library, impl.requires) == ("numpy", "scipy", ("scipy",))
        assert impl.grad is None and impl.available and impl.description
        assert impl.formats == FORMATS


def test_importing_the_module_does_not_import_scipy():
    code = (
        "import sys, stabcheck.implementations.scipy as m\n"
        "assert m.log_softmax_softmax\n"
        "print([name for name in ('scipy', 'scipy.special') if name in sys.modules])"
    )
    assert python_output(code).strip() == "[]"


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(("name", "loss"), PAIRS)
def test_ordinary_inputs_agree_with_the_oracle(name, loss, fmt):
    case = ordinary(loss, fmt)
    if fmt == "bfloat16" and NARROW_DTYPES[name][1] is None:
        with pytest.raises(UnsupportedFormat, match="does not take bfloat16 arrays"):
            invoke(get_implementation(name, loss), case, grad=False)
        return
    outcome = invoke(get_implementation(name, loss), case, grad=False)
    # 1 - p rounded before the log costs the binary form up to 8 ULPs (ORDINARY_ULPS) at
    # p = 0.05
    rows = measure(evaluate(case), outcome.values)
    message = beyond(rows, ORDINARY_ULPS, "value", case, ok=True)
    assert not message, message


@pytest.mark.parametrize(("name", "loss"), PAIRS)
def test_narrow_formats_come_back_in_the_dtype_the_docstring_states(name, loss):
    for fmt, want in zip(("float16", "bfloat16"), NARROW_DTYPES[name], strict=True):
        if loss == "sparse_categorical_crossentropy":
            want = fmt  # -log(p[k]) is numpy's log, in the input dtype
        case = ordinary(loss, fmt, rows=2, classes=3)
        impl = get_implementation(name, loss)
        if want is None:
            with pytest.raises(UnsupportedFormat):
                impl.fn(case.predictions.copy(), case.labels.copy(), **case.params)
            continue
        got = impl.fn(case.predictions.copy(), case.labels.copy(), **case.params)
        assert got.dtype.name == want, (fmt, got.dtype)
        assert np.isfinite(got.astype(np.float64)).all()


def test_scipy_keeps_bfloat16_out_of_its_float32_loops():
    """The facts the narrow dtypes rest on: numpy gives float16 and bfloat16 to the float64
    loop of scipy's ufuncs; logsumexp keeps float16 and, with the locked ml_dtypes 0.7,
    turns bfloat16 down in its dtype check (0.6 promoted it to float64)."""
    import scipy.special as sp

    for dtype in (np.float16, ml_dtypes.bfloat16):
        x = np.array([0.5, 0.25], dtype=dtype)
        assert sp.xlogy(x, x).dtype == np.float64
        assert sp.log_expit(x).dtype == np.float64
        assert sp.log_softmax(x).dtype == dtype
    assert sp.logsumexp(np.array([0.5, 0.25], dtype=np.float16)).dtype == np.float16
    with pytest.raises(TypeError, match="dtype argument must be a NumPy dtype"):
        sp.logsumexp(np.array([0.5, 0.25], dtype=ml_dtypes.bfloat16))


def test_a_format_scipy_turns_down_is_reported_unsupported_with_its_reason():
    from importlib.metadata import version

    from stabcheck.audit import AuditConfig, run_audit
    from stabcheck.report import summary_markdown

    config = AuditConfig(implementations=["scipy.logsumexp"], losses=[SPARSE_SOFTMAX],
                         formats=["float32", "bfloat16"], regimes=["moderate"], examples=3,
                         search=2)  # fmt: skip
    result = run_audit(config)
    frame = result.frame()
    assert set(frame["format"]) == {"float32"} and "error" not in set(frame["status"])
    reason = result.unsupported["scipy.logsumexp"]["bfloat16"]
    for words in (f"scipy {version('scipy')}", f"ml_dtypes {version('ml_dtypes')}",
                  "does not take bfloat16", "dtype argument must be a NumPy dtype"):  # fmt: skip
        assert words in reason
    summary = summary_markdown(frame, result, config)
    glance = next(line for line in summary.splitlines() if line.startswith("| [scipy.logsumexp]"))
    assert glance.split("|")[4].strip().endswith("/ unsupported")  # bits lost, bfloat16 last
    assert f"scipy.logsumexp in bfloat16: {reason}" in summary


@pytest.mark.parametrize(
    ("name", "loss", "predictions", "labels", "want"),
    [
        # xlogy(0, 0) = 0: a zero target under p = 0, and 1 - z = 0 under p = 1
        ("scipy.xlogy", "binary_crossentropy", [0.0, 1.0], [0.0, 1.0], [0.0, 0.0]),
        ("scipy.xlogy", "categorical_crossentropy", [[0.0, 1.0]], [[0.0, 1.0]], [0.0]),
        # the other blocks have no such guard: 0 * -inf = NaN
        ("scipy.log_softmax", SOFTMAX, [[-np.inf, 0.0]], [[0.0, 1.0]], [NAN]),
        ("scipy.logsumexp", SOFTMAX, [[-np.inf, 0.0]], [[0.0, 1.0]], [NAN]),
        ("scipy.log_softmax", SPARSE_SOFTMAX, [[np.inf, 0.0]], [0], [NAN]),  # inf - inf
        (
            "scipy.log_expit",
            "sigmoid_cross_entropy_with_logits",
            [np.inf, -np.inf, 800.0],
            [1.0, 0.0, 1.0],
            [NAN, NAN, 0.0],
        ),
    ],
)
def test_zero_times_an_infinite_log_as_the_docstring_states(name, loss, predictions, labels, want):
    case = Case.build(loss, predictions, labels)
    got = invoke(get_implementation(name, loss), case, grad=False).values
    np.testing.assert_array_equal(got, want)


def test_a_missing_scipy_is_reported_with_the_extra_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "scipy.special", None)
    impl = get_implementation("scipy.logsumexp", SOFTMAX)
    with pytest.raises(AdapterUnavailable, match=r"pip install 'stabcheck\[scipy\]'"):
        impl.fn(np.zeros((1, 2)), np.array([[1.0, 0.0]]))
