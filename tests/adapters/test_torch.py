"""The PyTorch adapter: registration without importing torch, the mapping onto
``torch.nn.functional`` checked against the oracle, the declared formats, and what the audit
found (pinned here with the inputs that show it, so a torch upgrade that changes it shows up).
"""

from __future__ import annotations

import functools
import math
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from adapter_helpers import (  # noqa: E402
    ORDINARY_ULPS,
    beyond,
    ordinary_case,
    python_output,
    run,
    statuses,
)

import stabcheck.implementations.torch as adapter  # noqa: E402
from stabcheck.audit import AuditConfig, run_audit  # noqa: E402
from stabcheck.case import Case  # noqa: E402
from stabcheck.formats import format_names, get_format  # noqa: E402
from stabcheck.implementations import get_implementation, implementations  # noqa: E402
from stabcheck.losses import LabelKind, get_loss  # noqa: E402
from stabcheck.measure import measure  # noqa: E402
from stabcheck.oracle import OracleResult, evaluate  # noqa: E402
from stabcheck.runner import Outcome, invoke  # noqa: E402

INF = math.inf
MAX64 = sys.float_info.max
SPARSE = "sparse_softmax_cross_entropy_with_logits"
SOFTMAX = "softmax_cross_entropy_with_logits"
BINARY = "binary_crossentropy"
SIGMOID = "sigmoid_cross_entropy_with_logits"
WEIGHTED = "weighted_cross_entropy_with_logits"
CE, NLL = "torch.cross_entropy", "torch.nll_loss(log_softmax)"
BCE, BCEWL = "torch.binary_cross_entropy", "torch.binary_cross_entropy_with_logits"
LINEAR, SOFT_LINEAR = "linear_cross_entropy", "soft_linear_cross_entropy"
LCE = "torch.linear_cross_entropy"
CHUNKED = tuple(f"torch.linear_cross_entropy(chunked, {p})" for p in ("accurate", "balanced",
                                                                        "compact"))
# the options each takes (PyTorch's names are the catalogue's; none takes z_loss, softcap or
# a smoothing of binary targets)
TAKES = {
    (CE, SPARSE): ("label_smoothing", "weight", "ignore_index", "reduction"),
    (CE, SOFTMAX): ("label_smoothing", "weight", "reduction"),
    (NLL, SPARSE): ("weight", "ignore_index", "reduction"),
    (BCE, BINARY): ("reduction",),
    (BCEWL, SIGMOID): ("reduction",),
    (BCEWL, WEIGHTED): ("pos_weight", "reduction"),
    (LCE, LINEAR): ("label_smoothing", "weight", "ignore_index", "reduction"),
    (LCE, SOFT_LINEAR): ("label_smoothing", "weight", "reduction"),
    **{(chunked, LINEAR): ("weight", "ignore_index", "reduction") for chunked in CHUNKED},
}
REGISTERED = tuple(TAKES)
IDS = [f"{name}-{loss}" for name, loss in REGISTERED]


@functools.cache
def _ordinary(name: str, loss: str, fmt: str) -> tuple[tuple[Case, Outcome, OracleResult], ...]:
    rng = np.random.default_rng(20240611)
    impl = get_implementation(name, loss)
    out = []
    for _ in range(3):
        case = ordinary_case(loss, fmt, rng)
        out.append((case, invoke(impl, case, grad=True), evaluate(case, grad=True)))
    return tuple(out)


# -- registration ---------------------------------------------------------------------------


def test_importing_the_adapter_registers_without_importing_torch():
    code = (
        "import sys\n"
        "import stabcheck.implementations.torch\n"
        "from stabcheck.implementations import implementations\n"
        "found = [(i.name, i.loss, i.available) for i in implementations() "
        "if i.library == 'torch']\n"
        "print(len(found), all(a for _, _, a in found), 'torch' in sys.modules)\n"
    )
    assert python_output(code).split() == [str(len(REGISTERED)), "True", "False"]


def test_registry_entries():
    mine = [impl for impl in implementations() if impl.library == "torch"]
    assert {(impl.name, impl.loss) for impl in mine} == set(REGISTERED)
    for impl in mine:
        assert impl.backend == "torch"
        assert impl.requires == ("torch",)
        assert impl.formats == ("float64", "float32", "float16", "bfloat16")
        assert impl.description.startswith("F.")
        assert impl.fn.__module__ == adapter.__name__
        assert impl.params == TAKES[impl.name, impl.loss]
        assert dict(impl.choices) == {"reduction": ("none", "sum", "mean")}
        if impl.name == BCE:
            assert set(impl.documented) == {"clipped"}
            assert ">= -100" in impl.documented["clipped"]
            assert "PyTorch docs" in impl.documented["clipped"]
        else:
            assert dict(impl.documented) == {}


# -- the mapping against the oracle ---------------------------------------------------------


@pytest.mark.parametrize("fmt", ["float64", "float32"])
@pytest.mark.parametrize(("name", "loss"), REGISTERED, ids=IDS)
def test_ordinary_inputs_agree_with_the_oracle(name, loss, fmt):
    for case, outcome, exact in _ordinary(name, loss, fmt):
        assert outcome.note == ""  # the dtype came back as it went in
        # Ordinary inputs (|logit| <= 2, probabilities in [0.05, 0.95]) stay within
        # ORDINARY_ULPS (8); the bound is not 1 or 2 because BCEWL computes softplus(x) as
        # x - log_sigmoid(x), which cancels for negative x (up to 6 ULPs at x = -2 in
        # float32; see the sigmoid findings)
        message = beyond(measure(exact, outcome.values), ORDINARY_ULPS, "value", case, ok=True)
        assert not message, message


@pytest.mark.parametrize("fmt", ["float64", "float32"])
@pytest.mark.parametrize(("name", "loss"), REGISTERED, ids=IDS)
def test_gradients_have_the_shape_of_the_predictions_and_agree_with_the_oracle(name, loss, fmt):
    for case, outcome, exact in _ordinary(name, loss, fmt):
        assert outcome.gradient is not None
        assert outcome.gradient.shape == case.predictions.shape
        # ok by the condition-scaled tolerance: the gradient subtracts the labels, so its
        # ULPs can be large where it cancels (about 250 for sigmoid(x) - z near 0)
        message = beyond(measure(exact, outcome.gradient, gradient=True), None, "gradient", case)
        assert not message, message
        assert set(outcome.operands) == set(case.operands)  # W and b of the linear losses
        for name, got in outcome.operands.items():
            assert got.shape == case.operands[name].shape
            message = beyond(measure(exact, got, gradient=name), None, name, case)
            assert not message, message


def test_cross_entropy_and_nll_of_log_softmax_are_the_same_computation():
    rng = np.random.default_rng(7)
    for fmt in format_names():
        for _ in range(3):
            case = ordinary_case(SPARSE, fmt, rng)
            a = invoke(get_implementation(CE, SPARSE), case, grad=True)
            b = invoke(get_implementation(NLL, SPARSE), case, grad=True)
            assert np.array_equal(a.values, b.values)
            assert np.array_equal(a.gradient, b.gradient)


# -- options ----------------------------------------------------------------------------------

W = [0.5, 2.0, 1.25, 0.75, 3.0]  # class weights for the ordinary cases' 5 classes
OPTIONS = (
    (CE, SPARSE, {"label_smoothing": 0.1}),
    (CE, SPARSE, {"weight": W}),
    (CE, SPARSE, {"ignore_index": 2}),
    (CE, SPARSE, {"ignore_index": -100}),  # PyTorch's default, given explicitly
    (CE, SPARSE, {"reduction": "sum"}),
    (CE, SPARSE, {"reduction": "mean"}),
    (CE, SPARSE, {"label_smoothing": 0.1, "weight": W, "ignore_index": 2, "reduction": "mean"}),
    (CE, SOFTMAX, {"label_smoothing": 0.1}),
    (CE, SOFTMAX, {"weight": W}),
    (CE, SOFTMAX, {"reduction": "sum"}),
    (CE, SOFTMAX, {"label_smoothing": 0.1, "weight": W, "reduction": "mean"}),
    (NLL, SPARSE, {"weight": W}),
    (NLL, SPARSE, {"ignore_index": 2}),
    (NLL, SPARSE, {"reduction": "sum"}),
    (NLL, SPARSE, {"weight": W, "ignore_index": 2, "reduction": "mean"}),
    (BCE, BINARY, {"reduction": "sum"}),
    (BCE, BINARY, {"reduction": "mean"}),
    (BCEWL, SIGMOID, {"reduction": "sum"}),
    (BCEWL, SIGMOID, {"reduction": "mean"}),
    (BCEWL, WEIGHTED, {"reduction": "sum"}),
    (BCEWL, WEIGHTED, {"reduction": "mean"}),
)
OPTION_IDS = [
    f"{name}-{loss}-" + ",".join(f"{k}={'w' if k == 'weight' else v}" for k, v in params.items())
    for name, loss, params in OPTIONS
]


def _with_options(case: Case, params: dict) -> Case:
    """``case`` with ``params`` added; with ``ignore_index``, row 0 gets it as its label, so
    that a row is ignored (one the adapter would count if it did not pass the option on)."""
    labels = case.labels.copy()
    if "ignore_index" in params:
        labels[0] = params["ignore_index"]
    return Case.build(
        case.loss.name, case.predictions, labels, format=case.format.name, **case.params, **params
    )


@pytest.mark.parametrize("fmt", format_names())
@pytest.mark.parametrize(("name", "loss", "params"), OPTIONS, ids=OPTION_IDS)
def test_options_agree_with_the_oracle(name, loss, params, fmt):
    rng = np.random.default_rng(20240611)
    impl = get_implementation(name, loss)
    for _ in range(3):
        case = _with_options(ordinary_case(loss, fmt, rng), params)
        assert impl.takes(case)
        outcome = invoke(impl, case, grad=True)
        exact = evaluate(case, grad=True)
        assert outcome.note == "" and outcome.values.shape == case.output_shape
        # measured on torch 2.13.0: at most 2 ULPs in every format, within ORDINARY_ULPS
        message = beyond(measure(exact, outcome.values), ORDINARY_ULPS, "value", case, ok=True)
        assert not message, message
        message = beyond(measure(exact, outcome.gradient, gradient=True), None, "gradient", case)
        assert not message, message


def test_cases_with_options_torch_lacks_are_not_given_to_it():
    x, k = [[0.5, -0.5, 1.0]], [0]
    ce, nll = get_implementation(CE, SPARSE), get_implementation(NLL, SPARSE)
    assert ce.takes(Case.build(SPARSE, x, k, weight=[1.0, 2.0, 3.0], reduction="mean"))
    assert not ce.takes(Case.build(SPARSE, x, k, reduction="sum_over_batch_size"))
    assert not ce.takes(Case.build(SPARSE, x, k, z_loss=1e-4))
    assert not ce.takes(Case.build(SPARSE, x, k, softcap=30.0))
    assert not nll.takes(Case.build(SPARSE, x, k, label_smoothing=0.1))
    sigmoid = Case.build(SIGMOID, [0.5], [1.0], label_smoothing=0.1)
    assert not get_implementation(BCEWL, SIGMOID).takes(sigmoid)
    binary = Case.build(BINARY, [0.5], [1.0], label_smoothing=0.1)
    assert not get_implementation(BCE, BINARY).takes(binary)


# -- a -inf logit under a zero label: exactly zero gradient ---------------------------------


def _masked_row(classes: int) -> np.ndarray:
    x = np.full(classes, -INF)
    x[1::2] = np.linspace(-3.0, 3.0, classes // 2)
    return x


@pytest.mark.parametrize(
    ("name", "loss"), [(CE, SPARSE), (NLL, SPARSE), (CE, SOFTMAX)], ids=["ce", "nll", "ce-soft"]
)
@pytest.mark.parametrize("fmt", format_names())
def test_neg_inf_logit_under_zero_label_gets_exactly_zero_gradient(name, loss, fmt):
    # two short rows and one wide row (1024 classes, 512 of them masked)
    x = np.stack([_masked_row(1024)[:4], np.r_[_masked_row(1024)[:3], 2.0]])
    rows = [
        (x, [1, 1], [[0, 0.5, 0, 0.5], [0, 0.25, 0, 0.75]]),
        (_masked_row(1024)[None], [7], None),
    ]
    for preds, sparse, soft in rows:
        if soft is None:
            soft = np.zeros_like(preds)
            soft[0, 7] = soft[0, 9] = 0.5
        labels = sparse if loss == SPARSE else soft
        _, _, values, gradient = run(name, loss, preds, labels, fmt)
        masked = np.isneginf(preds).ravel()
        got = np.array([m.got for m in gradient])
        assert np.all(got[masked] == 0.0), got[masked][got[masked] != 0][:5]
        assert {m.status for m, hit in zip(gradient, masked) if hit} == {"ok"}
        # the value: F.cross_entropy with probability targets sums y * log_softmax(x), and
        # 0 * -inf is NaN: every row with a masked class is NaN, where the exact loss is finite
        expected = "nan" if loss == SOFTMAX else "ok"
        assert set(statuses(values)) == {expected}


@pytest.mark.parametrize(("name", "loss"), [(CE, SPARSE), (NLL, SPARSE), (CE, SOFTMAX)])
def test_a_pos_inf_logit_in_the_row_makes_the_masked_gradient_nan(name, loss):
    # log_softmax computes inf - inf for the whole row; the oracle's gradient of the -inf
    # class is 0 (and the loss 0, the +inf class being the true one): the audit says nan
    labels = [0] if loss == SPARSE else [[1.0, 0.0, 0.0]]
    outcome, exact, values, gradient = run(name, loss, [[INF, -INF, 0.0]], labels)
    assert exact.value[0] == 0.0 and list(exact.gradient[0]) == [0.0, 0.0, 0.0]
    assert np.isnan(outcome.gradient).all()
    assert statuses(values) == ["nan"] and statuses(gradient) == ["nan"] * 3


@pytest.mark.parametrize(("loss", "params"), [(SIGMOID, {}), (WEIGHTED, {"pos_weight": 3.0})])
def test_infinite_logits_in_the_sigmoid_forms(loss, params):
    # (1 - z) x - log_sigmoid(x) is -inf + inf at x = -inf, z = 0 and 0 * inf at x = +inf,
    # z = 1; the gradients are the limits, -inf under a zero label getting exactly 0
    x, z = [-INF, INF, -INF, INF], [0.0, 1.0, 1.0, 0.0]
    outcome, exact, values, gradient = run(BCEWL, loss, x, z, **params)
    assert [str(v) for v in exact.value] == ["0.0", "0.0", "inf", "inf"]
    assert statuses(values) == ["nan", "nan", "nan", "ok"]
    q = params.get("pos_weight", 1.0)
    assert list(outcome.gradient) == [0.0, 0.0, -q, 1.0]
    assert set(statuses(gradient)) == {"ok"}


# -- formats ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "loss"), REGISTERED, ids=IDS)
def test_every_declared_format_runs_and_keeps_its_dtype(name, loss):
    impl = get_implementation(name, loss)
    assert impl.formats == tuple(format_names())  # every format stabcheck knows
    for fmt in impl.formats:
        case = ordinary_case(loss, fmt, np.random.default_rng(1))
        outcome = invoke(impl, case, grad=True)
        assert outcome.note == ""
        assert np.isfinite(outcome.values).all() and np.isfinite(outcome.gradient).all()


@pytest.mark.parametrize(("name", "loss"), REGISTERED, ids=IDS)
def test_a_format_torch_does_not_support_raises(name, loss):
    # stabcheck has no float8 format yet; torch has the dtype but none of these functions
    # implements it on CPU, so declaring it would give error rows, not measurements
    dtype = torch.float8_e5m2
    spec = get_loss(loss)
    x = torch.tensor([[0.25, 0.5], [0.5, 0.25]]).to(dtype)
    if spec.labels is LabelKind.SPARSE:
        labels = torch.tensor([0, 1])
    else:
        labels = torch.tensor([[1.0, 0.0], [0.5, 0.5]]).to(dtype)
    params = {"pos_weight": 2.0} if "pos_weight" in spec.params else {}
    if spec.operands:  # h (2 x 2) and W (2 x 2)
        params["linear_weight"] = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).to(dtype)
    # the chunked path refuses the dtype before any kernel runs
    refusal = (ValueError, "acc_dtype must be one of") if name in CHUNKED else (
        NotImplementedError, "not implemented for 'Float8_e5m2'")  # fmt: skip
    with pytest.raises(refusal[0], match=refusal[1]):
        get_implementation(name, loss).fn(x, labels, **params)


# -- binary_cross_entropy: the documented clamp and the gradient's -------------------------------


@pytest.mark.parametrize("fmt", format_names())
def test_binary_cross_entropy_clamps_log_at_minus_100(fmt):
    outcome, _, values, gradient = run(BCE, BINARY, [0.0, 1.0, 0.0], [1.0, 0.0, 0.5], fmt)
    assert list(outcome.values) == [100.0, 100.0, 50.0]
    assert statuses(values) == ["clipped"] * 3
    # the gradient is (p - z) / max(p (1 - p), eps), eps the float32 constant 1e-12 cast to
    # the input dtype: here -1/eps, 1/eps and -0.5/eps, rounded (clipped: the exact gradient
    # is infinite); in float16 eps rounds to 0 and the gradient is the exact -inf, inf, -inf
    eps = get_format(fmt).round(float(np.float32(1e-12)))
    if eps > 0:
        expected = [get_format(fmt).round(g / eps) for g in (-1.0, 1.0, -0.5)]
        assert list(outcome.gradient) == expected
        assert statuses(gradient) == ["clipped"] * 3
    else:
        assert list(outcome.gradient) == [-INF, INF, -INF]
        assert statuses(gradient) == ["ok"] * 3


def test_binary_cross_entropy_clamp_also_changes_finite_losses_and_gradients():
    # -log p > 100 for p < e**-100: 100 z is returned (inaccurate, not clipped: the exact
    # loss is finite); the gradient is (p - z) / 1e-12 for p (1 - p) < 1e-12
    p, z = [5e-324, 1e-50, 5e-324, 0.0, 1.0], [0.1, 1.0, 0.0, 0.0, 1.0]
    outcome, exact, values, gradient = run(BCE, BINARY, p, z)
    assert list(outcome.values[:2]) == [10.0, 100.0]
    assert statuses(values) == ["inaccurate", "inaccurate", "ok", "ok", "ok"]
    eps32 = float(np.float32(1e-12))
    assert outcome.gradient[1] == -1 / eps32
    assert outcome.gradient[2] == 5e-324 / eps32  # exact: 1 / (1 - p) = 1
    assert list(outcome.gradient[3:]) == [0.0, 0.0]  # exact: 1 and -1
    assert list(exact.gradient[2:]) == [1.0, 1.0, -1.0]
    assert statuses(gradient) == [
        "inaccurate",
        "inaccurate",
        "inaccurate",
        "underflow",
        "underflow",
    ]
    # float16: eps is 0 there, and 0 / 0 is NaN
    _, _, _, gradient16 = run(BCE, BINARY, [0.0, 1.0], [0.0, 1.0], "float16")
    assert statuses(gradient16) == ["nan", "nan"]


@pytest.fixture
def one_torch_thread():
    """The audit forks a child per implementation; once torch has run in this process (it
    has, in the tests above), a forked child hangs on its second torch call until the time
    limit unless torch uses one thread. A fresh ``stabcheck audit`` process is not affected."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_the_audit_notes_the_documented_clamp_and_reports_nan(one_torch_thread):
    result = run_audit(
        AuditConfig(
            timeout=20.0,
            implementations=[BCE, CE],
            losses=[BINARY, SOFTMAX],
            formats=["float64"],
            regimes=["infinite"],
            examples=6,
            search=0,
            grad=True,
        )
    )
    frame = result.frame()
    bce = frame[frame.implementation == BCE]
    clipped = bce[bce.status == "clipped"]
    assert len(clipped) > 0
    assert clipped.note.str.contains("documented: BCELoss clamps its log function").all()
    assert not bce[bce.status != "clipped"].note.str.contains("documented").any()
    # softmax with probability targets: every row with a -inf logit under a zero label (and
    # no +inf logit) is NaN in value, while its gradient is never NaN
    ce = frame[(frame.implementation == CE) & (frame.quantity == "value")]
    checked = 0
    for _, row in ce.iterrows():
        case, i = result.cases[row.case_id], int(row["index"])
        x, y = case.predictions[i], case.labels[i]
        if np.isposinf(x).any() or not (np.isneginf(x) & (y == 0)).any():
            continue
        grad = frame[
            (frame.implementation == CE)
            & (frame.case_id == row.case_id)
            & (frame.quantity == "gradient")
            & frame["index"].str.startswith(f"{i},")
        ]
        assert row.status == "nan", row
        assert "nan" not in set(grad.status), grad
        checked += 1
    assert checked > 0


# -- the other findings, with the inputs that show them -------------------------------------


def test_sigmoid_forms_cancel_for_negative_logits():
    # softplus(x) = x - log_sigmoid(x): catastrophic cancellation for x < 0
    _, _, values, gradient = run(BCEWL, SIGMOID, [-10.0], [0.0])
    assert values[0].status == "inaccurate" and values[0].ulps > 10_000
    assert statuses(gradient) == ["ok"]
    _, _, values16, _ = run(BCEWL, SIGMOID, [-7.0], [0.0], "bfloat16")
    assert statuses(values16) == ["underflow"]  # exact 9.1e-4, torch 0
    # with pos_weight the cancellation overflows: (1 - z) x - (1 + (q - 1) z) log_sigmoid(x)
    _, _, weighted, _ = run(BCEWL, WEIGHTED, [-65504.0], [2**-11], "float16", pos_weight=16.0)
    assert statuses(weighted) == ["overflow"]


def test_softmax_cross_entropy_takes_the_log_of_the_sum():
    # log(1 + S) instead of log1p(S): a small loss has an absolute error of an ulp of 1
    outcome, exact, values, _ = run(CE, SPARSE, [[36.7368005696771, 0.0]], [0])
    assert exact.value[0] == pytest.approx(2.0**-53, rel=1e-14)
    assert outcome.values[0] == pytest.approx(2.0**-52, rel=1e-14)  # log(1 + 2**-52): twice
    assert statuses(values) == ["inaccurate"]
    # 1 + S rounds to 1 below half an ulp: the loss is -0.0 where it is 4.1e-17
    outcome, _, values, _ = run(CE, SPARSE, [[37.736800569677214, 0.0]], [0])
    assert str(outcome.values[0]) == "-0.0" and statuses(values) == ["underflow"]
    # and x_i - max overflows for logits of both signs near the format's maximum
    _, _, soft, _ = run(CE, SOFTMAX, [[-MAX64, MAX64]], [[1 / 3, 2 / 3]])
    assert statuses(soft) == ["overflow"]


# -- what the options show ----------------------------------------------------------------------


def _values(name: str, loss: str, x, y, fmt: str, **params):
    """(outcome, oracle result, value rows) without the gradient: wide rows would make
    thousands of gradient elements to measure."""
    case = Case.build(loss, x, y, format=fmt, **params)
    outcome = invoke(get_implementation(name, loss), case, grad=False)
    exact = evaluate(case)
    return outcome, exact, measure(exact, outcome.values)


def test_float16_label_smoothing_overflows_on_a_wide_row():
    # the smoothing term e/C sum_i (lse(x) - x_i) sums the C log-probabilities in float16:
    # about C ln C, past the largest float16 for C >= 7,357 equal logits, so inf; the loss
    # itself is about ln C
    x = np.random.default_rng(3).uniform(-2.0, 2.0, (1, 8192))
    outcome, exact, values = _values(CE, SPARSE, x, [3], "float16", label_smoothing=0.1)
    assert math.isfinite(exact.value[0]) and outcome.values[0] == INF
    assert statuses(values) == ["overflow"]
    assert statuses(_values(CE, SPARSE, x, [3], "float16")[2]) == ["ok"]  # no smoothing
    wide = _values(CE, SPARSE, x, [3], "float32", label_smoothing=0.1)[2]
    assert statuses(wide) == ["ok"]


@pytest.mark.parametrize("name", [CE, NLL])
def test_float16_softmax_overflows_from_65520_equal_logits(name):
    # log_softmax rounds sum_i exp(x_i - max) to float16: C for C equal logits, which is
    # inf from 65520 (the largest float16, 65504, plus half an ulp) on; the loss is ln C
    for classes, status in ((65519, "ok"), (65520, "overflow")):
        _, exact, values = _values(name, SPARSE, np.zeros((1, classes)), [3], "float16")
        assert math.isfinite(exact.value[0])
        assert statuses(values) == [status], classes


@pytest.mark.parametrize("name", [CE, NLL])
def test_mean_over_no_rows_is_nan_as_documented(name):
    # every row ignored: PyTorch's mean is 0/0 = NaN, the oracle's mean too: ok. The gradient
    # is 0 (no row contributes; an ignored row's gradient stays 0 over a zero denominator),
    # in PyTorch and in the oracle
    x, k = [[0.5, -1.0, 2.0], [1.0, 0.0, -0.5]], [1, 1]
    outcome, exact, values, gradient = run(name, SPARSE, x, k, ignore_index=1, reduction="mean")
    assert math.isnan(exact.value) and math.isnan(outcome.values)
    assert statuses(values) == ["ok"]
    assert (exact.gradient == 0.0).all() and (outcome.gradient == 0.0).all()
    assert set(statuses(gradient)) == {"ok"}


@pytest.mark.parametrize("fmt", ["float64", "float32"])
def test_class_weights_scale_the_smoothing_mass_as_the_catalogue_defines(fmt):
    # PyTorch #104776 (open): with weight and label_smoothing the smoothing term is weighted
    # too, sum_i w_i t_i (lse(x) - x_i), and the mean divides by sum w_k over the rows: the
    # catalogue's definition, so the inputs measure ok in both kinds of target
    w, e = [0.1, 0.9], 0.1
    for i in (0, 7, 20):
        x = [[i * 0.05, 1.0 - i * 0.05]]
        for loss, labels in ((SPARSE, [0]), (SOFTMAX, [[1.0, 0.0]])):
            _, exact, values, gradient = run(
                CE, loss, x, labels, fmt, weight=w, label_smoothing=e, reduction="mean"
            )
            assert statuses(values) == ["ok"] and set(statuses(gradient)) == {"ok"}
            # not the loss the issue expects, the smoothing mass unweighted: w_k is a factor
            # of the one-hot term only
            ce = np.logaddexp(*x[0]) - np.array(x[0])
            unweighted = ((1 - e) * w[0] * ce[0] + e / 2 * ce.sum()) / w[0]
            if loss == SOFTMAX:
                unweighted *= w[0]
            assert abs(float(exact.value) - unweighted) > 1e-3
