"""The TensorFlow adapter: registration without importing TensorFlow, the mapping onto
``tf.nn`` checked against the oracle, the declared formats, and what the audit found (pinned
with the inputs that show it, so that a TensorFlow upgrade that changes it shows up).
"""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from adapter_helpers import ORDINARY_ULPS, beyond, ordinary_case, python_output, run  # noqa: E402

import stabcheck.implementations.tensorflow as adapter  # noqa: E402
from stabcheck.audit import AuditConfig, run_audit  # noqa: E402
from stabcheck.case import Case  # noqa: E402
from stabcheck.formats import format_names  # noqa: E402
from stabcheck.implementations import get_implementation, implementations  # noqa: E402
from stabcheck.losses import LabelKind  # noqa: E402
from stabcheck.measure import HARD_FAILURES, measure  # noqa: E402
from stabcheck.oracle import evaluate  # noqa: E402
from stabcheck.runner import invoke  # noqa: E402

INF = math.inf
SIGMOID = "sigmoid_cross_entropy_with_logits"
WEIGHTED = "weighted_cross_entropy_with_logits"
SOFTMAX = "softmax_cross_entropy_with_logits"
SPARSE = "sparse_softmax_cross_entropy_with_logits"
LOSSES = (SIGMOID, WEIGHTED, SOFTMAX, SPARSE)
NAMES = tuple(f"tf.nn.{loss}" for loss in LOSSES)


def _run(loss: str, x, y, fmt: str = "float32", **params):
    """(outcome, value rows, gradient rows) of ``tf.nn.<loss>`` on one case."""
    outcome, _, values, gradient = run(f"tf.nn.{loss}", loss, x, y, fmt, **params)
    return outcome, values, gradient


def test_importing_the_adapter_imports_no_tensorflow():
    code = (
        "import sys\n"
        "import stabcheck.implementations.tensorflow\n"
        "from stabcheck.implementations import implementations\n"
        "names = sorted({i.name for i in implementations() if i.library == 'tensorflow'})\n"
        "print(names)\n"
        "print(sorted(m for m in ('tensorflow', 'keras', 'jax', 'torch') if m in sys.modules))\n"
    )
    assert python_output(code).splitlines() == [str(sorted(NAMES)), "[]"]


def test_registration():
    for loss in LOSSES:
        impl = get_implementation(f"tf.nn.{loss}", loss)
        assert (impl.backend, impl.library, impl.requires) == (
            "tensorflow",
            "tensorflow",
            ("tensorflow",),
        )
        assert impl.available
        assert impl.description.startswith(f"tf.nn.{loss}(")
    assert [i.loss for i in implementations(names=NAMES)] == list(LOSSES)


def test_only_pos_weight_is_declared():
    # tf.nn takes none of the catalogue's other options (label smoothing, class weights,
    # ignored labels and reductions live in Keras): checked on the signatures themselves
    for loss in LOSSES:
        impl = get_implementation(f"tf.nn.{loss}", loss)
        assert impl.params == (("pos_weight",) if loss == WEIGHTED else ())
        assert impl.choices == {}
        taken = set(inspect.signature(getattr(tf.nn, loss)).parameters)
        assert taken <= {"labels", "logits", "axis", "name", "pos_weight"}, (loss, taken)
    smoothed = Case.build(SIGMOID, [0.5], [1.0], label_smoothing=0.1)
    reduced = Case.build(WEIGHTED, [0.5], [1.0], pos_weight=2.0, reduction="sum")
    assert not get_implementation(f"tf.nn.{SIGMOID}", SIGMOID).takes(smoothed)
    assert not get_implementation(f"tf.nn.{WEIGHTED}", WEIGHTED).takes(reduced)


@pytest.mark.parametrize("fmt", ["float64", "float32"])
@pytest.mark.parametrize("loss", LOSSES)
def test_ordinary_inputs_agree_with_the_oracle(loss, fmt):
    case = ordinary_case(loss, fmt)
    outcome = invoke(get_implementation(f"tf.nn.{loss}", loss), case, grad=True)
    exact = evaluate(case, grad=True)
    assert outcome.note == ""  # the input dtype comes back, values and gradients
    # ordinary inputs stay within ORDINARY_ULPS (8) of the loss (the most seen: 4, sparse
    # softmax in float64); gradients are held to the audit's ``ok`` instead, a relative error
    # scaled by the condition number, since Y p_i - y_i cancels (17 ULPs, ok, for soft
    # labels in float32)
    message = beyond(measure(exact, outcome.values), ORDINARY_ULPS, "value", case)
    message += beyond(measure(exact, outcome.gradient, True), None, "gradient", case)
    assert not message, message


def test_weighted_passes_pos_weight_on():
    # q z softplus(-x) + (1 - z) softplus(x) at x = 0, z = 1: q log 2
    outcome, values, _ = _run(WEIGHTED, [0.0], [1.0], fmt="float64", pos_weight=3.0)
    assert outcome.values[0] == pytest.approx(3 * math.log(2), rel=1e-15)
    assert [m.status for m in values] == ["ok"]


def test_declared_formats_run_and_keep_their_dtype():
    # every format has a CPU kernel (TensorFlow 2.21), so all four are declared
    assert adapter.FORMATS == tuple(format_names())
    for loss in LOSSES:
        impl = get_implementation(f"tf.nn.{loss}", loss)
        assert impl.formats == tuple(format_names())
        for fmt in impl.formats:
            outcome = invoke(impl, ordinary_case(loss, fmt), grad=True)
            assert outcome.note == "", (loss, fmt, outcome.note)
            assert np.isfinite(outcome.values).all() and np.isfinite(outcome.gradient).all()


def test_an_undeclared_format_fails():
    # nothing among stabcheck's formats is undeclared; a dtype TensorFlow has no kernel for
    # (int32 logits) is rejected by TensorFlow itself, which is what an undeclared format means
    with pytest.raises(tf.errors.InvalidArgumentError):
        adapter.softmax_cross_entropy_with_logits(
            tf.constant([[1, 2]], tf.int32), tf.constant([[0, 1]], tf.int32)
        )


# -- -inf logits under a zero label (masked classes) -------------------------------------


@pytest.mark.parametrize("fmt", ["float64", "float32", "float16", "bfloat16"])
def test_masked_class_gets_exactly_zero_gradient(fmt):
    x, y = [[0.0, -INF, 1.0]], [[0.5, 0.0, 0.5]]
    for loss, labels in ((SOFTMAX, y), (SPARSE, [0])):
        outcome, values, grads = _run(loss, x, labels, fmt=fmt)
        assert outcome.gradient[0, 1] == 0.0, (loss, fmt)
        assert np.isfinite(outcome.gradient).all()
        assert [m.status for m in grads] == ["ok"] * 3, (loss, fmt, grads)
        # the loss of the masked row: sparse gets it right, softmax multiplies the zero
        # label by the infinite log-probability and returns NaN (the oracle says 0 log 0 = 0)
        assert [m.status for m in values] == (["nan"] if loss == SOFTMAX else ["ok"])
    outcome, values, grads = _run(SIGMOID, [-INF, INF], [0.0, 1.0], fmt=fmt)
    assert outcome.gradient.tolist() == [0.0, 0.0]
    assert [m.status for m in grads] == ["ok", "ok"]
    # max(x, 0) - x z with x = -inf, z = 0 is 0 - (-inf * 0): NaN where the oracle says 0
    assert [m.status for m in values] == ["nan", "nan"]


def _masked_only(case: Case, row: int) -> bool:
    """Whether row ``row`` has a -inf logit, each under a zero label, and no +inf or NaN."""
    x = case.predictions[row].astype(np.float64)
    if case.loss.labels is LabelKind.SPARSE:
        zero_label = np.arange(x.size) != case.labels[row]
    else:
        zero_label = case.labels[row] == 0
    masked = x == -INF
    return bool(masked.any() and zero_label[masked].all() and np.isfinite(x[~masked]).all())


def test_audit_reports_masked_classes_as_they_are():
    names = ["tf.nn.softmax_cross_entropy_with_logits", "tf.nn." + SPARSE]
    config = AuditConfig(
        implementations=names,
        losses=[SOFTMAX, SPARSE],
        formats=["float32"],
        regimes=["infinite"],
        examples=6,
        search=0,
        grad=True,
    )
    result = run_audit(config)
    frame = result.frame()
    assert set(frame.status) != {"error"}
    seen = 0
    for row in frame.itertuples():
        case = result.cases[row.case_id]
        unit = int(str(row.index).split(",")[0])
        if not _masked_only(case, unit):
            continue
        seen += 1
        if row.loss == SOFTMAX and row.quantity == "value":
            assert row.status == "nan", row  # 0 * inf
        else:  # no hard failure (not always ok: p_k - 1 and lse - x_k cancel)
            assert row.status not in HARD_FAILURES, row
    assert seen >= 4  # the infinite regime draws masked rows for both losses


# -- what the audit found, pinned --------------------------------------------------------


def test_subnormal_inputs_are_flushed_to_zero():
    # TensorFlow's CPU kernels run with denormals-are-zero: a subnormal label is read as 0,
    # so z |x| with x = -max, z = the largest subnormal (exactly 4 - 2^-1022 |x|) becomes 0
    x, z = -np.finfo(np.float64).max, float.fromhex("0x0.fffffffffffffp-1022")
    outcome, values, grads = _run(SIGMOID, [x], [z], fmt="float64")
    assert outcome.values.tolist() == [0.0]
    assert [m.status for m in values] == ["underflow"]
    assert [m.status for m in grads] == ["underflow"]


def test_positive_infinite_logit_gives_nan():
    # the oracle's limits: a lone +inf logit over the true class costs 0; TensorFlow
    # computes inf - inf
    for loss, x, y in ((SIGMOID, [INF], [1.0]), (SPARSE, [[INF, 0.0]], [0])):
        _, values, _ = _run(loss, x, y)
        assert [m.status for m in values] == ["nan"], loss


def test_weighted_gradient_at_a_zero_logit_drops_the_log_term():
    # TensorFlow writes the loss as (1 - z) x + l (log1p(exp(-|x|)) + relu(-x)); at x = 0
    # the autodiff of |x| and relu(-x) gives 0, so the gradient is 1 - z instead of
    # (1 - z) / 2 - q z / 2 (sigmoid_cross_entropy_with_logits takes where(x >= 0) and is
    # right); zero-initialised logits get no gradient from their positive labels
    outcome, _, grads = _run(WEIGHTED, [0.0, -0.0, 0.5], [1.0, 1.0, 1.0], "float64", pos_weight=3.0)
    assert outcome.gradient.tolist()[:2] == [0.0, 0.0]  # exact: -1.5
    assert [m.status for m in grads] == ["underflow", "underflow", "ok"]
    outcome, _, _ = _run(SIGMOID, [0.0, -0.0], [1.0, 1.0], "float64")
    assert outcome.gradient.tolist() == [-0.5, -0.5]
