"""The Keras adapter: registration without importing keras, the mapping of
``keras.losses.*_crossentropy`` (``from_logits`` False and True) onto stabcheck's losses
checked against the oracle, the declared formats, the clipping Keras documents in its source,
and what the audit found.

Keras fixes its backend when it is first imported, so this process tests the tensorflow
backend and the jax and torch backends run in child processes of their own (started when
the module's tests start, so that they overlap with the in-process tests).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from stabcheck.implementations.backends import installed

if not installed("keras"):
    pytest.skip("keras is not installed", allow_module_level=True)

from adapter_helpers import ORDINARY_ULPS, beyond, ordinary_case, python_output, run, statuses

import stabcheck.implementations.keras as adapter
from stabcheck.audit import AuditConfig, run_audit
from stabcheck.case import Case
from stabcheck.errors import AdapterUnavailable
from stabcheck.formats import format_names, get_format
from stabcheck.implementations import get_implementation, implementations
from stabcheck.losses import LabelKind
from stabcheck.measure import measure
from stabcheck.oracle import evaluate
from stabcheck.runner import invoke

INF = math.inf
BINARY, CATEGORICAL = "binary_crossentropy", "categorical_crossentropy"
SPARSE_CATEGORICAL = "sparse_categorical_crossentropy"
SIGMOID, SOFTMAX = "sigmoid_cross_entropy_with_logits", "softmax_cross_entropy_with_logits"
SPARSE_SOFTMAX = "sparse_softmax_cross_entropy_with_logits"
# (keras function, loss with from_logits=False, loss with from_logits=True)
FUNCTIONS = (
    (BINARY, BINARY, SIGMOID),
    (CATEGORICAL, CATEGORICAL, SOFTMAX),
    (SPARSE_CATEGORICAL, SPARSE_CATEGORICAL, SPARSE_SOFTMAX),
)
PAIRS = [(function, loss) for function, *losses in FUNCTIONS for loss in losses]
IDS = [f"{function}-{loss}" for function, loss in PAIRS]
BACKENDS = [b for b in ("tensorflow", "jax", "torch") if installed(b)]


def _renormalised_gradient(case: Case) -> tuple[np.ndarray, np.ndarray]:
    """d/dp of -sum_i t_i log(p_i / S), S = sum_i p_i: -t_i / p_i + T / S (float64), the
    gradient of what Keras computes when nothing is clipped, and the size of its terms.
    ``t``: the labels, smoothed to ``(1 - e) y + e / C``, 0 on ignored rows; a reduction
    divides by its denominator (sum_over_batch_size: the rows not ignored; 0 gives 0)."""
    p = case.predictions.astype(np.float64)
    classes = p.shape[1]
    if case.loss.labels is LabelKind.SPARSE:
        y = (np.arange(classes) == case.labels[:, None]).astype(np.float64)
        y[case.labels == case.params.get("ignore_index")] = 0.0
    else:
        e = case.params.get("label_smoothing", 0.0)
        y = (1 - e) * case.labels.astype(np.float64) + e / classes
    first, second = y / p, y.sum(axis=1, keepdims=True) / p.sum(axis=1, keepdims=True)
    rows = int((y.sum(axis=1) > 0).sum())
    scale = 1.0
    if case.params.get("reduction") == "sum_over_batch_size":
        scale = 1.0 / rows if rows else 0.0
    return scale * (second - first), scale * (first + second)


def _check_ordinary(function: str, loss: str, case: Case, values, gradient, note: str) -> str:
    """What is wrong with one ordinary result ('' if nothing): values within ORDINARY_ULPS,
    gradients ok against the oracle (against the renormalised gradient for the categorical
    probability losses, which Keras renormalises: documented)."""
    exact = evaluate(case, grad=True)
    # ordinary inputs stay within ORDINARY_ULPS (8) of the loss (the most seen: 4)
    message = beyond(measure(exact, values), ORDINARY_ULPS, "value", case)
    if loss in (CATEGORICAL, SPARSE_CATEGORICAL):
        # within a few rounding errors of the terms (the difference may cancel)
        expected, size = _renormalised_gradient(case)
        excess = abs(gradient - expected) - 16 * get_format(case.format).eps * size
        if not (excess <= 0).all():
            worst = np.unravel_index(np.argmax(excess), gradient.shape)
            message += (
                f"gradient{list(worst)}: got {gradient[worst]!r}, renormalised "
                f"{expected[worst]!r}; case {case.to_json()}\n"
            )
    else:
        message += beyond(measure(exact, gradient, True), None, "gradient", case)
    return message


# -- the tensorflow backend, in this process ---------------------------------------------


@pytest.fixture(scope="module")
def keras_tf():
    pytest.importorskip("tensorflow")
    try:
        return adapter.keras_for("tensorflow")
    except AdapterUnavailable as exc:  # another test imported keras with another backend
        pytest.skip(str(exc))


def test_importing_the_adapter_imports_no_keras():
    code = (
        "import sys\n"
        "import stabcheck.implementations.keras\n"
        "from stabcheck.implementations import implementations\n"
        "print(sorted({(i.name, i.loss, i.backend) for i in implementations()"
        " if i.library == 'keras'}))\n"
        "print(sorted(m for m in ('tensorflow', 'keras', 'jax', 'torch') if m in sys.modules))\n"
    )
    out = python_output(code).splitlines()
    expected = sorted(
        (f"keras[{backend}].{function}", loss, backend)
        for backend in BACKENDS
        for function, loss in PAIRS
    )
    assert out == [str(expected), "[]"]


def test_registration():
    for backend in BACKENDS:
        for function, probability_loss, logit_loss in FUNCTIONS:
            name = f"keras[{backend}].{function}"
            assert [i.loss for i in implementations(names=name)] == [probability_loss, logit_loss]
            for loss in (probability_loss, logit_loss):
                impl = get_implementation(name, loss)
                assert (impl.backend, impl.library, impl.requires) == (
                    backend,
                    "keras",
                    ("keras", backend),
                )
                assert impl.formats == tuple(format_names())
                assert f"from_logits={loss == logit_loss}" in impl.description
            documented = get_implementation(name, probability_loss).documented
            assert set(documented) == {"clipped", "inaccurate"}
            assert "[1e-7, 1 - 1e-7] (keras.config.epsilon())" in documented["clipped"]
            assert ("renormalis" in documented["inaccurate"]) == (function != BINARY)
            assert get_implementation(name, logit_loss).documented == {}


def test_keras_for_puts_the_environment_back(keras_tf, monkeypatch):
    monkeypatch.setenv("KERAS_BACKEND", "something")
    assert adapter.keras_for("tensorflow") is keras_tf
    assert os.environ["KERAS_BACKEND"] == "something"
    mismatch = r"already imported .* 'tensorflow' backend.*KERAS_BACKEND=jax before"
    with pytest.raises(AdapterUnavailable, match=mismatch):
        adapter.keras_for("jax")


@pytest.mark.parametrize("fmt", ["float64", "float32"])
@pytest.mark.parametrize(("function", "loss"), PAIRS, ids=IDS)
def test_ordinary_inputs_agree_with_the_oracle(keras_tf, function, loss, fmt):
    case = ordinary_case(loss, fmt)
    outcome = invoke(get_implementation(f"keras[tensorflow].{function}", loss), case, grad=True)
    assert outcome.note == ""
    message = _check_ordinary(function, loss, case, outcome.values, outcome.gradient, "")
    assert not message, message


def test_binary_makes_each_element_a_sample(keras_tf):
    # a 2 x 3 input comes back 2 x 3, each element its own loss (no mean over the last axis)
    x, z = [[0.25, 0.5, 0.75], [0.5, 0.5, 0.5]], [[0.0, 1.0, 1.0], [0.0, 0.0, 1.0]]
    case = Case.build(BINARY, x, z)
    outcome = invoke(get_implementation(f"keras[tensorflow].{BINARY}", BINARY), case, True)
    expected = -np.where(np.array(z) == 1, np.log(x), np.log1p(-np.array(x)))
    np.testing.assert_allclose(outcome.values, expected, rtol=1e-15)


@pytest.mark.parametrize(("function", "loss"), PAIRS, ids=IDS)
def test_declared_formats_run_and_keep_their_dtype(keras_tf, function, loss):
    impl = get_implementation(f"keras[tensorflow].{function}", loss)
    assert impl.formats == tuple(format_names())  # so no format is left undeclared
    for fmt in impl.formats:
        outcome = invoke(impl, ordinary_case(loss, fmt), grad=True)
        assert outcome.note == "", (fmt, outcome.note)
        assert np.isfinite(outcome.values).all() and np.isfinite(outcome.gradient).all()


# -- options --------------------------------------------------------------------------

SMOOTHING = (
    {"label_smoothing": 0.1},
    {"label_smoothing": 1.0},
    {"label_smoothing": 0.2, "reduction": "sum_over_batch_size"},
)
IGNORING = (
    {"ignore_index": -100},
    {"ignore_index": 0},
    {"ignore_index": -100, "reduction": "sum"},
    {"ignore_index": -100, "reduction": "sum_over_batch_size"},
)
REDUCING = tuple({"reduction": how} for how in adapter.REDUCTIONS)
OPTIONS = [
    (function, loss, params)
    for function, loss in PAIRS
    for params in (IGNORING if function == SPARSE_CATEGORICAL else SMOOTHING) + REDUCING
]
OPTION_IDS = [f"{loss}-{'-'.join(map(str, params.values()))}" for _, loss, params in OPTIONS]


def option_case(loss: str, fmt: str, params: dict) -> Case:
    """The ordinary case of ``loss`` with ``params``; with ``ignore_index``, the third row's
    label is 0 and, for ``ignore_index=-100``, the second's -100: each ignores a row."""
    case = ordinary_case(loss, fmt)
    labels = case.labels.copy()
    if "ignore_index" in params:
        labels[2] = 0
        if params["ignore_index"] == -100:
            labels[1] = -100
    return Case.build(loss, case.predictions, labels, format=fmt, **params)


def test_options_are_declared():
    for backend in BACKENDS:
        for function, loss in PAIRS:
            impl = get_implementation(f"keras[{backend}].{function}", loss)
            if function == SPARSE_CATEGORICAL:
                assert impl.params == ("ignore_index", "reduction")
                assert "ignore_class passed on" in impl.description
            else:
                assert impl.params == ("label_smoothing", "reduction")
                assert "label_smoothing passed on" in impl.description
            # Keras' "mean" is sum_over_batch_size again (0 when every row is ignored)
            assert impl.choices == {"reduction": ("none", "sum", "sum_over_batch_size")}
            assert f"keras.losses.{adapter.loss_class(function)}(reduction=" in impl.description
            mean = option_case(loss, "float32", {"reduction": "mean"})
            assert not impl.takes(mean) and impl.takes(option_case(loss, "float32", REDUCING[2]))


@pytest.mark.parametrize("fmt", ["float64", "float32"])
@pytest.mark.parametrize(("function", "loss", "params"), OPTIONS, ids=OPTION_IDS)
def test_options_agree_with_the_oracle(keras_tf, function, loss, params, fmt):
    case = option_case(loss, fmt, params)
    outcome = invoke(get_implementation(f"keras[tensorflow].{function}", loss), case, grad=True)
    assert outcome.note == ""
    assert outcome.values.shape == case.output_shape
    message = _check_ordinary(function, loss, case, outcome.values, outcome.gradient, "")
    assert not message, message


@pytest.mark.parametrize("fmt", ["float16", "bfloat16"])
@pytest.mark.parametrize(("function", "loss", "params"), OPTIONS, ids=OPTION_IDS)
def test_options_in_the_half_formats(keras_tf, function, loss, params, fmt):
    case = option_case(loss, fmt, params)
    outcome = invoke(get_implementation(f"keras[tensorflow].{function}", loss), case, grad=True)
    assert outcome.note == ""  # the Loss class computes in the input's dtype
    exact = evaluate(case, grad=True)
    message = beyond(measure(exact, outcome.values), None, "value", case)
    if loss not in (CATEGORICAL, SPARSE_CATEGORICAL):  # renormalised: see _check_ordinary
        message += beyond(measure(exact, outcome.gradient, True), None, "gradient", case)
    assert not message, message


def test_label_smoothing_is_the_catalogues():
    # the labels Keras smooths: (1 - e) y + e / C for rows, (1 - e) z + e / 2 for elements;
    # at e = 1 every target is 1/C (1/2), so the loss is the same for any labels
    for function, loss in ((CATEGORICAL, SOFTMAX), (BINARY, SIGMOID)):
        case = option_case(loss, "float64", {"label_smoothing": 1.0})
        uniform = np.full(case.labels.shape, 1 / (5 if case.loss.rowwise else 2))
        same = Case.build(loss, case.predictions, uniform, format="float64")
        impl = get_implementation(f"keras[tensorflow].{function}", loss)
        smoothed, plain = invoke(impl, case, grad=False), invoke(impl, same, grad=False)
        assert smoothed.values.tolist() == plain.values.tolist()


# ignored rows: NaN and infinite logits, and every row ignored
IGNORED_BAD = [[0.5, -1.25, 2.0], [math.nan] * 3, [INF, -INF, math.nan]]
IGNORED_PROBABILITIES = [[0.25, 0.5, 0.25], [math.nan] * 3, [1.0, math.nan, 0.0]]


def ignored_cases(loss: str, fmt: str, reduction: str | None = None) -> list[Case]:
    """Rows 1 and 2 ignored (holding NaN and infinite predictions), and every row ignored."""
    x = IGNORED_PROBABILITIES if loss == SPARSE_CATEGORICAL else IGNORED_BAD
    params = {"ignore_index": -100} | ({"reduction": reduction} if reduction else {})
    return [
        Case.build(loss, x, [1, -100, -100], format=fmt, **params),
        Case.build(loss, x[:1] * 3, [-100] * 3, format=fmt, **params),
    ]


@pytest.mark.parametrize("reduction", [None, "none", "sum", "sum_over_batch_size"])
@pytest.mark.parametrize("loss", [SPARSE_CATEGORICAL, SPARSE_SOFTMAX])
def test_ignored_rows_give_zero_and_zero_gradient_whatever_they_hold(keras_tf, loss, reduction):
    # Keras replaces an ignored row's predictions by 0 before the loss (ops.where) and its
    # loss by 0 after: 0 and gradient 0, as the oracle says, even for NaN and inf; with
    # sum_over_batch_size, every row ignored gives 0 (divide_no_nan), as the oracle says
    impl = get_implementation(f"keras[tensorflow].{SPARSE_CATEGORICAL}", loss)
    some, every = ignored_cases(loss, "float32", reduction)
    outcome = invoke(impl, some, grad=True)
    assert np.isfinite(outcome.values).all()
    assert (outcome.gradient[1:] == 0).all() and np.isfinite(outcome.gradient).all()
    if reduction is None or reduction == "none":
        assert outcome.values[1:].tolist() == [0.0, 0.0]
    exact = evaluate(some, grad=True)
    assert statuses(measure(exact, outcome.values)) == ["ok"] * exact.value.size
    outcome = invoke(impl, every, grad=True)
    assert (outcome.values == 0).all() and (outcome.gradient == 0).all()
    exact = evaluate(every, grad=True)
    assert statuses(measure(exact, outcome.values)) == ["ok"] * exact.value.size
    assert statuses(measure(exact, outcome.gradient, True)) == ["ok"] * 9


def test_a_reduction_computes_in_the_inputs_dtype(keras_tf):
    # the Loss classes compute in keras.config.floatx() (float32) unless given a dtype; the
    # adapter gives them the input's, so a float64 sum is a float64 sum
    case = option_case(SOFTMAX, "float64", {"reduction": "sum"})
    impl = get_implementation(f"keras[tensorflow].{CATEGORICAL}", SOFTMAX)
    outcome = invoke(impl, case, grad=False)
    assert outcome.note == "" and measure(evaluate(case), outcome.values)[0].ulps <= 2


def test_bfloat16_loss_classes_round_integer_labels(keras_tf):
    # Loss.__call__ converts y_true to the loss's dtype: in bfloat16 the label 257 becomes
    # 256, another class (float16 keeps integers up to 2048). The function, which keeps the
    # labels integers, is right.
    x = np.zeros((1, 300))
    x[0, 257] = 10.0
    impl = get_implementation(f"keras[tensorflow].{SPARSE_CATEGORICAL}", SPARSE_SOFTMAX)
    for params, status in (({}, "ok"), ({"reduction": "none"}, "inaccurate")):
        case = Case.build(SPARSE_SOFTMAX, x, [257], format="bfloat16", **params)
        outcome = invoke(impl, case, grad=False)
        assert statuses(measure(evaluate(case), outcome.values)) == [status], outcome.values
    assert outcome.values.tolist() == [10.0]  # class 256's loss, lse(x) - 0 = 10.013, rounded


# -- the clipping Keras does, as measured --------------------------------------------------

# -log of the lower clip, 1e-7 rounded to the format (2^-23 in float16), and the upper clip
# 1 - 1e-7 rounded to the format (1 - 2^-24 ... in float32, 1 in float16 and bfloat16)
CLIPPED_LOSS = {"float64": 16.11809565095832, "float32": 16.11809539794922,
                "float16": 15.9453125, "bfloat16": 16.125}  # fmt: skip
UPPER_CLIP_LOSS = {"float64": 16.118095651484676, "float32": 15.942384719848633,
                   "float16": INF, "bfloat16": INF}  # fmt: skip


@pytest.mark.parametrize("fmt", format_names())
def test_probabilities_are_clipped_at_epsilon(keras_tf, fmt):
    assert keras_tf.config.epsilon() == 1e-7
    # p = 0 under z = 1 and p = 1 under z = 0 cost +inf; p = z = 1 costs 0
    case = Case.build(BINARY, [0.0, 1.0, 1.0], [1.0, 0.0, 1.0], format=fmt)
    impl = get_implementation(f"keras[tensorflow].{BINARY}", BINARY)
    outcome = invoke(impl, case, grad=True)
    got = outcome.values.tolist()
    assert got[:2] == [CLIPPED_LOSS[fmt], UPPER_CLIP_LOSS[fmt]]
    statuses = [m.status for m in measure(evaluate(case), outcome.values)]
    if fmt in ("float16", "bfloat16"):  # no upper clip: log(1 - 1) = -inf, times 1 - z = 0
        assert statuses == ["clipped", "ok", "nan"]
    else:
        assert statuses == ["clipped", "clipped", "inaccurate"]  # -log(1 - eps) for 0
    categorical = Case.build(SPARSE_CATEGORICAL, [[1.0, 0.0]], [1], format=fmt)
    impl = get_implementation(f"keras[tensorflow].{SPARSE_CATEGORICAL}", SPARSE_CATEGORICAL)
    assert invoke(impl, categorical, grad=False).values.tolist() == [CLIPPED_LOSS[fmt]]


def test_audit_notes_the_documented_clipping(keras_tf):
    name = f"keras[tensorflow].{BINARY}"
    config = AuditConfig(
        implementations=[name],
        losses=[BINARY],
        formats=["float32"],
        regimes=["infinite"],
        examples=4,
        search=0,
    )
    frame = run_audit(config).frame()
    documented = get_implementation(name, BINARY).documented
    clipped = frame[frame.status == "clipped"]
    assert len(clipped) > 0
    assert set(clipped.note) == {f"documented: {documented['clipped']}"}
    for status, note in zip(frame.status, frame.note):
        assert (note != "") == (status in documented), (status, note)


# -- -inf logits under a zero label (masked classes), from_logits=True ----------------------


@pytest.mark.parametrize("fmt", ["float64", "float32", "float16", "bfloat16"])
def test_masked_class_gets_exactly_zero_gradient(keras_tf, fmt):
    x = [[0.0, -INF, 1.0]]
    for function, loss, labels, value_status in (
        (CATEGORICAL, SOFTMAX, [[0.5, 0.0, 0.5]], "nan"),  # tf.nn.softmax_...: 0 * inf
        (SPARSE_CATEGORICAL, SPARSE_SOFTMAX, [0], "ok"),
    ):
        outcome, _, values, gradient = run(f"keras[tensorflow].{function}", loss, x, labels, fmt)
        assert outcome.gradient[0, 1] == 0.0
        assert statuses(gradient) == ["ok"] * 3
        assert statuses(values) == [value_status]
    case = Case.build(SIGMOID, [-INF], [0.0], format=fmt)
    outcome = invoke(get_implementation(f"keras[tensorflow].{BINARY}", SIGMOID), case, True)
    assert outcome.gradient.tolist() == [0.0]
    assert np.isnan(outcome.values).all()  # max(x, 0) - x z = 0 - (-inf * 0)


# -- the jax and torch backends, in child processes ---------------------------------------

CHILD = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import stabcheck.implementations.keras as adapter
    from stabcheck.runner import invoke
    from stabcheck.case import Case
    from stabcheck.errors import AdapterUnavailable
    from stabcheck.implementations import get_implementation

    backend, jobs = sys.argv[1], json.load(sys.stdin)
    out = []
    for function, loss, case in jobs:
        impl = get_implementation(f"keras[{backend}].{function}", loss)
        try:
            got = invoke(impl, Case.from_json(case), grad=True)
        except Exception as exc:
            out.append({"error": f"{type(exc).__name__}: {exc}"})
            continue
        out.append({"values": got.values.tolist(), "gradient": got.gradient.tolist(),
                    "note": got.note, "backend": impl.backend})
    keras = adapter.keras_for(backend)
    other = "jax" if backend == "torch" else "torch"
    try:
        adapter.keras_for(other)
        mismatch = ""
    except AdapterUnavailable as exc:
        mismatch = str(exc)
    print(json.dumps({"results": out, "mismatch": mismatch,
                      "epsilon": keras.config.epsilon(), "backend": keras.backend.backend()}))
    """
)


MASKED = [[0.0, -INF, 1.0]]  # a -inf logit under a zero label
MASKED_JOBS = [
    (CATEGORICAL, SOFTMAX, Case.build(SOFTMAX, MASKED, [[0.5, 0.0, 0.5]], "float32").to_json()),
    (
        SPARSE_CATEGORICAL,
        SPARSE_SOFTMAX,
        Case.build(SPARSE_SOFTMAX, MASKED, [0], "float32").to_json(),
    ),
]


def _option_jobs() -> list[tuple[str, str, str]]:
    """Every option set of ``OPTIONS`` in float64 and float32, then the ignored rows that
    hold NaN and infinite predictions, with and without a reduction."""
    ordinary = [
        (function, loss, option_case(loss, fmt, params).to_json())
        for fmt in ("float64", "float32")
        for function, loss, params in OPTIONS
    ]
    ignored = [
        (SPARSE_CATEGORICAL, loss, case.to_json())
        for loss in (SPARSE_CATEGORICAL, SPARSE_SOFTMAX)
        for reduction in (None, "sum_over_batch_size")
        for case in ignored_cases(loss, "float32", reduction)
    ]
    return ordinary + ignored


def _jobs() -> list[tuple[str, str, str]]:
    """Every (function, loss) in float64 and float32; float16 and bfloat16 only for the
    sparse functions (the cheapest to compile in JAX; the audit runs the rest); then the
    masked rows, then the options. float64 first: JAX's x64, on for those calls, must not
    reach the others."""
    ordinary = [
        (function, loss, ordinary_case(loss, fmt).to_json())
        for fmt in ("float32", "float16", "bfloat16")
        for function, loss in PAIRS
        if fmt == "float32" or function == SPARSE_CATEGORICAL
    ]
    float64 = [(f, loss, ordinary_case(loss, "float64").to_json()) for f, loss in PAIRS]
    return float64 + ordinary + MASKED_JOBS + _option_jobs()


@pytest.fixture(scope="module", autouse=True)
def children():
    """The jax and torch backends, each started in a child process at once."""
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    started = {}
    for backend in ("jax", "torch"):
        if installed(backend):
            process = subprocess.Popen(
                [sys.executable, "-c", CHILD, backend],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
            process.stdin.write(json.dumps(_jobs()))
            process.stdin.close()
            started[backend] = process
    finished: dict[str, dict] = {}

    def result(backend: str) -> dict:
        if backend not in started:
            pytest.skip(f"{backend} is not installed")
        if backend not in finished:
            process = started[backend]
            stdout = process.stdout.read()
            stderr = process.stderr.read()
            process.wait(timeout=300)
            assert process.returncode == 0, stderr[-3000:]
            finished[backend] = json.loads(stdout.strip().splitlines()[-1])
        return finished[backend]

    yield result
    for process in started.values():
        if process.poll() is None:
            process.kill()
        process.wait()
        process.stdout.close()
        process.stderr.close()


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_other_backends_agree_with_the_oracle(children, backend):
    found = children(backend)
    assert (found["backend"], found["epsilon"]) == (backend, 1e-7)
    assert "already imported" in found["mismatch"] and repr(backend) in found["mismatch"]
    messages, notes = [], set()
    for (function, loss, text), got in zip(_jobs(), found["results"]):
        case = Case.from_json(text)
        if case.params:  # test_other_backends_take_the_options
            continue
        if text in {job[2] for job in MASKED_JOBS}:
            # the masked class gets exactly zero gradient; the loss is NaN (0 * -inf) where
            # Keras multiplies the labels by log_softmax: always for softmax, and for sparse
            # labels on jax, which one-hot encodes them (torch calls cross_entropy)
            assert got["gradient"][0][1] == 0.0 and np.isfinite(got["gradient"]).all()
            nan = loss == SOFTMAX or backend == "jax"
            assert np.isnan(got["values"]).all() == nan, (loss, got)
            continue
        assert "error" not in got, (function, loss, case.format.name, got)  # declared formats
        assert got["backend"] == backend
        notes.add((function, loss, case.format.name, got["note"]))
        if case.format.name not in ("float32", "float64"):
            continue
        values, gradient = np.array(got["values"]), np.array(got["gradient"])
        if function == BINARY and case.format.name == "float64":
            # Keras averages over the last axis in float32 for float64 input on jax and
            # torch (its result_type maps 64-bit types to 32-bit ones), so float64 results
            # carry float32 accuracy: pinned, so that a fix shows up
            exact = evaluate(case)
            rows = measure(exact, values)
            assert max(m.ulps for m in rows) > 1e6, rows
            assert max(m.relative_error for m in rows) < 2.0**-23, rows
            values = exact.value  # the gradient is still checked
        messages.append(_check_ordinary(function, loss, case, values, gradient, got["note"]))
    assert not "".join(messages), "".join(messages)
    returned = {(function, loss, fmt): note for function, loss, fmt, note in notes if note}
    if backend == "jax":  # one_hot gives float32 (float64 with x64) and the sum follows it
        assert returned == {
            (SPARSE_CATEGORICAL, loss, fmt): f"returned float32 for {fmt} input"
            for loss in (SPARSE_CATEGORICAL, SPARSE_SOFTMAX)
            for fmt in ("float16", "bfloat16")
        }
    else:
        assert returned == {}


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_other_backends_take_the_options(children, backend):
    found = children(backend)
    jobs = _jobs()
    start = len(jobs) - len(_option_jobs())
    messages, notes = [], set()
    for (function, loss, text), got in zip(jobs[start:], found["results"][start:], strict=True):
        case = Case.from_json(text)
        assert "error" not in got, (function, loss, case.to_json(), got)
        values, gradient = np.array(got["values"]), np.array(got["gradient"])
        exact = evaluate(case, grad=True)
        if case.predictions.shape == (3, 3):  # ignored rows holding NaN and inf: 0, gradient 0
            assert (gradient[1:] == 0).all() and np.isfinite(gradient).all(), got
            assert statuses(measure(exact, values)) == ["ok"] * values.size, got
            continue
        fmt, how = case.format.name, case.params.get("reduction")
        if got["note"]:
            notes.add((loss, fmt, how, got["note"]))
        single = fmt == "float64" and (
            function == BINARY or (backend == "torch" and how == "sum_over_batch_size")
        )
        if single:
            # float32 arithmetic on float64 input: Keras' mean over the last axis (binary,
            # jax and torch), and on torch its divide_no_nan (sum_over_batch_size), whose
            # result_type maps float64 to float32; pinned, so that a fix shows up
            rows = measure(exact, values)
            assert max(m.ulps for m in rows) > 1e6, rows
            assert max(m.relative_error for m in rows) < 2.0**-22, rows
            values = exact.value
            if "ignore_index" in case.params and how == "sum_over_batch_size":
                # the mask weight total / valid is a float32 quotient: so is the gradient
                expected, size = _renormalised_gradient(case)
                if loss == SPARSE_SOFTMAX:
                    expected, size = exact.gradient, abs(exact.gradient)
                assert (abs(gradient - expected) <= 2.0**-22 * size).all(), (gradient, expected)
                assert (abs(gradient - expected) > 2.0**-40 * size).any(), (gradient, expected)
                continue
        messages.append(_check_ordinary(function, loss, case, values, gradient, got["note"]))
    assert not "".join(messages), "".join(messages)
    if backend == "torch":
        assert notes == {
            (loss, "float64", "sum_over_batch_size", "returned float32 for float64 input")
            for _, loss, params in OPTIONS
            if params.get("reduction") == "sum_over_batch_size"
        }
    else:
        assert notes == set()
