"""The JAX and optax adapters against the oracle.

JAX never runs in the pytest process: its configuration (``jax_enable_x64``) is process
global, and once its threads have started it warns about (and may deadlock in) the forked
children of the audit. The fixed cases run in two subprocesses side by side (float32 and
float64; float16 and bfloat16; x64 is on for the float64 calls only); the audits run JAX in
their own children, as they always do.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Callable

import numpy as np
import pytest

pytest.importorskip("jax")
pytest.importorskip("optax")

from adapter_helpers import beyond, python_output

from stabcheck.audit import AuditConfig, run_audit
from stabcheck.case import Case
from stabcheck.formats import get_format
from stabcheck.implementations import get_implementation, implementations
from stabcheck.implementations import jax as adapters
from stabcheck.measure import HARD_FAILURES, measure
from stabcheck.oracle import evaluate

SOFTMAX, SPARSE, SIGMOID = adapters.SOFTMAX, adapters.SPARSE, adapters.SIGMOID
FOCAL = adapters.FOCAL
PLAIN, SAFE = "optax.softmax_cross_entropy", "optax.safe_softmax_cross_entropy"
INTEGER = "optax.softmax_cross_entropy_with_integer_labels"
SIGMOID_BCE, LOG_SOFTMAX = "optax.sigmoid_binary_cross_entropy", "jax.nn.log_softmax"
FOCAL_LOSS = "optax.sigmoid_focal_loss"
MAPPING = [
    (PLAIN, SOFTMAX),
    (INTEGER, SPARSE),
    (SAFE, SOFTMAX),
    (SIGMOID_BCE, SIGMOID),
    (LOG_SOFTMAX, SOFTMAX),
    (LOG_SOFTMAX, SPARSE),
]
ROWWISE = [pair for pair in MAPPING if pair[1] != SIGMOID]
NAMES = list(dict.fromkeys(name for name, _ in MAPPING))
inf = math.inf

# Every kind of case of a loss has one shape, so that JAX compiles a function once per format.
# ordinary: |logit| <= 2, no loss small enough to cancel
LOGITS = [[0.5, -1.25, 2.0, 0.0], [-0.75, 1.5, 0.25, -2.0], [0.125, 0.375, -0.5, 1.0]]
SOFT = [[0.25, 0.0, 0.75, 0.0], [0.0, 0.5, 0.5, 0.0], [1.0, 0.0, 0.0, 0.0]]
SPARSE_LABELS = [0, 2, 1]
ELEMENTS = [[0.5, -1.25, 2.0], [-3.0, 1.5, 0.25]]
TARGETS = [[1.0, 0.0, 0.25], [0.0, 1.0, 0.5]]
# masked classes: -inf logits under zero labels (they contribute 0 and get gradient 0)
MASKED = [[1.0, -inf, 0.5, 0.0], [-inf, 2.0, -inf, 0.25], [0.5, 0.5, -1.0, -inf]]
MASKED_SOFT = [[1.0, 0.0, 0.0, 0.0], [0.0, 0.5, 0.0, 0.5], [0.25, 0.0, 0.75, 0.0]]
MASKED_SPARSE = [0, 3, 1]
# infinite logits whose labels agree: every loss and every gradient element is exactly 0
PLUS_INF = [[inf, 0.0, 1.0, -2.0], [-1.0, inf, 0.5, 0.0], [0.0, 0.0, 0.0, inf]]
PLUS_INF_SOFT = [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
PLUS_INF_SPARSE = [0, 1, 3]
INF_ELEMENTS = [[inf, -inf, 2.0], [-inf, inf, 0.25]]
INF_TARGETS = [[1.0, 0.0, 0.25], [0.0, 1.0, 0.5]]
nan = math.nan
# ignored rows (label -100), one holding NaN logits and one infinite ones
IGNORED_LABELS = [0, -100, 1]
IGNORED_BAD = [[0.5, -1.25, 2.0, 0.0], [nan, nan, nan, nan], [inf, -inf, nan, 1.0]]
IGNORED_BAD_LABELS = [2, -100, -100]
# infinite logits under the focal loss: agreeing labels (then disagreeing ones) in row 0
FOCAL_INF = [[inf, -inf, inf], [-inf, 2.0, 0.5]]
FOCAL_INF_TARGETS = [[1.0, 0.0, 0.0], [1.0, 0.25, 1.0]]


def ordinary(loss: str, fmt: str) -> Case:
    if loss == SIGMOID:
        return Case.build(loss, ELEMENTS, TARGETS, format=fmt)
    return Case.build(loss, LOGITS, SPARSE_LABELS if loss == SPARSE else SOFT, format=fmt)


def masked(loss: str, fmt: str) -> Case:
    return Case.build(loss, MASKED, MASKED_SPARSE if loss == SPARSE else MASKED_SOFT, format=fmt)


def infinite(loss: str, fmt: str) -> Case:
    if loss == SIGMOID:
        return Case.build(loss, INF_ELEMENTS, INF_TARGETS, format=fmt)
    labels = PLUS_INF_SPARSE if loss == SPARSE else PLUS_INF_SOFT
    return Case.build(loss, PLUS_INF, labels, format=fmt)


def _option_builder(labels: list | None, **params) -> Callable[[str, str], Case]:
    """A builder of ordinary cases with options: rows of ``LOGITS`` (elements of
    ``ELEMENTS`` for the focal loss) with ``labels`` (None: the ordinary ones)."""

    def build(loss: str, fmt: str) -> Case:
        if loss == FOCAL:
            return Case.build(loss, ELEMENTS, TARGETS, format=fmt, **params)
        y = labels if labels is not None else SPARSE_LABELS if loss == SPARSE else SOFT
        return Case.build(loss, LOGITS, y, format=fmt, **params)

    return build


def ignored_bad(loss: str, fmt: str) -> Case:
    """Ignored rows holding NaN and infinite logits."""
    return Case.build(loss, IGNORED_BAD, IGNORED_BAD_LABELS, format=fmt, ignore_index=-100)


OPTION_BUILD = {
    "smoothed": _option_builder(None, label_smoothing=0.1),
    "smoothed_fully": _option_builder(None, label_smoothing=1.0),
    "ignored": _option_builder(IGNORED_LABELS, ignore_index=-100),
    "ignored_class_0": _option_builder([0, 2, 0], ignore_index=0),
    "focal": _option_builder(None),
    "focal_alpha": _option_builder(None, alpha=0.25),
    "focal_gamma": _option_builder(None, alpha=0.75, gamma=0.5),
    "focal_gamma_0": _option_builder(None, gamma=0.0),
}
# every option an optax adapter declares, on ordinary inputs: (name, loss, kind)
OPTIONS = [
    (PLAIN, SOFTMAX, "smoothed"),
    (PLAIN, SOFTMAX, "smoothed_fully"),
    (SAFE, SOFTMAX, "smoothed"),
    (INTEGER, SPARSE, "ignored"),
    (INTEGER, SPARSE, "ignored_class_0"),
    (FOCAL_LOSS, FOCAL, "focal"),
    (FOCAL_LOSS, FOCAL, "focal_alpha"),
    (FOCAL_LOSS, FOCAL, "focal_gamma"),
    (FOCAL_LOSS, FOCAL, "focal_gamma_0"),
]
# in float16 and bfloat16 (compiling each is slow): one kind for each implementation
HALF_OPTIONS = [
    (PLAIN, SOFTMAX, "smoothed"),
    (SAFE, SOFTMAX, "smoothed"),
    (INTEGER, SPARSE, "ignored"),
    (FOCAL_LOSS, FOCAL, "focal_alpha"),
]
# rows ignored whatever they hold (float32 and float64)
IGNORING = {
    "all_ignored": _option_builder([-100, -100, -100], ignore_index=-100),
    "ignored_bad": ignored_bad,
}


def focal_infinite(loss: str, fmt: str) -> Case:
    return Case.build(loss, FOCAL_INF, FOCAL_INF_TARGETS, format=fmt, alpha=0.25)


# float32 and float64 only
SPECIAL = [(INTEGER, SPARSE, kind) for kind in IGNORING] + [(FOCAL_LOSS, FOCAL, "focal_infinite")]
BUILD = {"ordinary": ordinary, "masked": masked, "infinite": infinite, **OPTION_BUILD, **IGNORING}
BUILD["focal_infinite"] = focal_infinite
GROUPS = (("float32", "float64"), ("float16", "bfloat16"))
REQUESTS = [
    (name, loss, kind, fmt)
    for formats in GROUPS
    for fmt in formats
    for name, loss in MAPPING
    for kind in ("ordinary", "masked", "infinite")
    if kind == "ordinary" or fmt in ("float32", "float64")
] + [
    (name, loss, kind, fmt)
    for formats in GROUPS
    for fmt in formats
    for name, loss, kind in OPTIONS + SPECIAL
    if fmt in ("float32", "float64") or (name, loss, kind) in HALF_OPTIONS
]

SCRIPT = """
import json, sys
import stabcheck.implementations.jax
from stabcheck.runner import invoke
from stabcheck.case import Case
from stabcheck.implementations import get_implementation

def hexes(a):
    return [float(v).hex() for v in a.ravel()]

out = []
for name, loss, text in json.load(sys.stdin):
    try:
        o = invoke(get_implementation(name, loss), Case.from_json(text), grad=True)
        out.append({"values": hexes(o.values), "gradient": hexes(o.gradient), "note": o.note})
    except Exception as exc:
        out.append({"error": f"{type(exc).__name__}: {exc}"})
with open(sys.argv[1], "w") as f:
    json.dump(out, f)
"""


@pytest.fixture(scope="module")
def returned(tmp_path_factory):
    """(case, values, gradient, note) of each (name, loss, kind, format) of ``REQUESTS``."""
    runs = []
    try:
        for formats in GROUPS:
            group = [request for request in REQUESTS if request[3] in formats]
            folder = tmp_path_factory.mktemp("jax")
            payload = [
                (name, loss, BUILD[kind](loss, fmt).to_json()) for name, loss, kind, fmt in group
            ]
            (folder / "in").write_text(json.dumps(payload))
            with (folder / "in").open() as stdin, (folder / "log").open("w") as log:
                process = subprocess.Popen(
                    [sys.executable, "-c", SCRIPT, str(folder / "out")],
                    stdin=stdin,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            runs.append((group, process, folder))
        table = {}
        for group, process, folder in runs:
            process.wait(timeout=240)
            assert process.returncode == 0, (folder / "log").read_text()[-3000:]
            results = json.loads((folder / "out").read_text())
            for (name, loss, kind, fmt), result in zip(group, results, strict=True):
                assert "error" not in result, f"{name} {loss} {kind} {fmt}: {result['error']}"
                case = BUILD[kind](loss, fmt)
                values = np.array([float.fromhex(v) for v in result["values"]])
                gradient = np.array([float.fromhex(v) for v in result["gradient"]])
                table[name, loss, kind, fmt] = (
                    case,
                    values.reshape(case.output_shape),
                    gradient.reshape(case.predictions.shape),
                    result["note"],
                )
        return table
    finally:
        for _, process, _ in runs:
            process.kill()
            process.wait()


def _statuses(case: Case, values, gradient) -> tuple[list[str], list[str]]:
    exact = evaluate(case, grad=True)
    return (
        [m.status for m in measure(exact, values)],
        [m.status for m in measure(exact, gradient, gradient=True)],
    )


# -- the registry -------------------------------------------------------------------------


def test_every_function_is_registered_with_its_loss_backend_and_formats():
    assert {(impl.name, impl.loss) for impl in implementations(names=NAMES)} == set(MAPPING)
    for name, loss in MAPPING:
        impl = get_implementation(name, loss)
        assert impl.backend == "jax"
        assert impl.formats == ("float64", "float32", "float16", "bfloat16")
        assert impl.library == name.split(".")[0]
        assert impl.requires == (("jax", "optax") if impl.library == "optax" else ("jax",))
        assert "float64 is audited with jax_enable_x64 on" in impl.description
        assert impl.available
        # only jax.nn.log_softmax documents a NaN, for +inf inputs, and only the sparse
        # form returns NaN for no other reason
        assert set(impl.documented) == ({"nan"} if (name, loss) == (LOG_SOFTMAX, SPARSE) else set())


def test_importing_the_adapters_imports_neither_jax_nor_optax():
    code = (
        "import sys, stabcheck.implementations.jax; "
        "from stabcheck.implementations import implementations; "
        "assert len(implementations(names=['jax.nn.log_softmax'])) == 2; "
        "print(sorted(m for m in ('jax', 'jaxlib', 'optax') if m in sys.modules))"
    )
    assert python_output(code).strip() == "[]"


# -- ordinary inputs, and the formats declared ---------------------------------------------


@pytest.mark.parametrize("fmt", ["float32", "float64"])
@pytest.mark.parametrize(("name", "loss"), MAPPING)
def test_values_and_gradients_agree_with_the_oracle_on_ordinary_inputs(returned, name, loss, fmt):
    case, values, gradient, note = returned[name, loss, "ordinary", fmt]
    assert note == ""  # returned in the case's dtype: float64 is float64 (x64 on)
    exact = evaluate(case, grad=True)
    message = beyond(measure(exact, values), 4, "value", case, ok=True)
    # Y p_i - y_i cancels a little with soft labels: within tolerance, a few ulps more
    message += beyond(measure(exact, gradient, gradient=True), 16, "gradient", case, ok=True)
    assert not message, f"{name}: {message}"


@pytest.mark.parametrize("fmt", ["float16", "bfloat16"])
@pytest.mark.parametrize(("name", "loss"), MAPPING)
def test_the_half_formats_declared_work(returned, name, loss, fmt):
    case, values, gradient, note = returned[name, loss, "ordinary", fmt]
    assert note == ""  # loss and gradient in the case's dtype
    exact = evaluate(case, grad=True)
    message = beyond(measure(exact, values), None, "value", case)
    message += beyond(measure(exact, gradient, gradient=True), None, "gradient", case)
    assert not message, f"{name}: {message}"


# -- options -----------------------------------------------------------------------------


def test_the_options_each_adapter_takes_are_declared():
    declared = {(impl.name, impl.loss): impl.params for impl in implementations(names=NAMES)}
    assert declared == {
        (PLAIN, SOFTMAX): ("label_smoothing",),
        (INTEGER, SPARSE): ("ignore_index",),
        (SAFE, SOFTMAX): ("label_smoothing",),
        (SIGMOID_BCE, SIGMOID): (),
        (LOG_SOFTMAX, SOFTMAX): (),
        (LOG_SOFTMAX, SPARSE): (),
    }
    focal = get_implementation(FOCAL_LOSS, FOCAL)
    assert (focal.params, focal.backend, focal.requires) == (
        ("alpha", "gamma"),
        "jax",
        ("jax", "optax"),
    )
    # optax has no reduction argument: no optax or jax implementation takes one
    assert all(
        impl.choices == {} and "reduction" not in impl.params
        for impl in implementations(names=[*NAMES, FOCAL_LOSS])
    )


@pytest.mark.parametrize("fmt", ["float32", "float64"])
@pytest.mark.parametrize(("name", "loss", "kind"), OPTIONS)
def test_options_agree_with_the_oracle_on_ordinary_inputs(returned, name, loss, kind, fmt):
    case, values, gradient, note = returned[name, loss, kind, fmt]
    assert note == ""
    exact = evaluate(case, grad=True)
    # the allowances of the plain losses: 4 ULPs and ok for values, 16 ULPs and ok for
    # gradients; smoothed targets sit closer to softmax(x), so p_i - t_i cancels more and
    # their gradients are held to ok alone (measured: up to 25 ULPs in float32, 18 in float64)
    message = beyond(measure(exact, values), 4, "value", case, ok=True)
    most = None if kind.startswith("smoothed") else 16
    message += beyond(measure(exact, gradient, gradient=True), most, "gradient", case, ok=True)
    assert not message, f"{name} {kind}: {message}"


@pytest.mark.parametrize("fmt", ["float16", "bfloat16"])
@pytest.mark.parametrize(("name", "loss", "kind"), HALF_OPTIONS)
def test_options_in_the_half_formats(returned, name, loss, kind, fmt):
    case, values, gradient, note = returned[name, loss, kind, fmt]
    assert note == ""
    exact = evaluate(case, grad=True)
    message = beyond(measure(exact, values), None, "value", case)
    message += beyond(measure(exact, gradient, gradient=True), None, "gradient", case)
    assert not message, f"{name} {kind}: {message}"


@pytest.mark.parametrize("fmt", ["float32", "float64"])
def test_ignored_rows_give_zero_and_zero_gradient_whatever_they_hold(returned, fmt):
    # optax's where= excludes the rows: 0 there (as the oracle), gradient 0 even for NaN
    # and infinite logits (their logsumexp is taken over no element, then discarded)
    case, values, gradient, _ = returned[INTEGER, SPARSE, "ignored_bad", fmt]
    assert values[1:].tolist() == [0.0, 0.0] and (gradient[1:] == 0).all(), (values, gradient)
    assert _statuses(case, values, gradient) == (["ok"] * 3, ["ok"] * 12)
    case, values, gradient, _ = returned[INTEGER, SPARSE, "all_ignored", fmt]
    assert values.tolist() == [0.0] * 3 and (gradient == 0).all()
    assert _statuses(case, values, gradient) == (["ok"] * 3, ["ok"] * 12)


@pytest.mark.parametrize("fmt", ["float32", "float64"])
def test_the_focal_loss_gives_nan_at_infinite_logits(returned, fmt):
    # optax.sigmoid_focal_loss at +-inf: under an agreeing label the loss is NaN (exact 0;
    # sigmoid_binary_cross_entropy's 0 * log_sigmoid(-inf)), under a disagreeing one +inf
    # (right); the gradient is NaN at every infinite logit (exact: 0, or -+a_t)
    case, values, gradient, _ = returned[FOCAL_LOSS, FOCAL, "focal_infinite", fmt]
    value_statuses, gradient_statuses = _statuses(case, values, gradient)
    assert value_statuses == ["nan", "nan", "ok", "ok", "ok", "ok"]
    assert gradient_statuses == ["nan", "nan", "nan", "nan", "ok", "ok"]
    exact = evaluate(case, grad=True)
    assert exact.gradient.ravel()[:4].tolist() == [0.0, 0.0, 0.75, -0.25]


# -- masked classes: -inf logits under zero labels ----------------------------------------


@pytest.mark.parametrize("fmt", ["float32", "float64"])
@pytest.mark.parametrize(("name", "loss"), ROWWISE)
def test_a_masked_class_gets_exactly_zero_gradient(returned, name, loss, fmt):
    # no NaN: reverse mode gives exactly 0 there (and the right gradient elsewhere), even
    # where the loss itself is NaN
    case, values, gradient, _ = returned[name, loss, "masked", fmt]
    assert (gradient[np.isneginf(np.asarray(MASKED))] == 0).all(), gradient
    assert _statuses(case, values, gradient)[1] == ["ok"] * 12


@pytest.mark.parametrize("fmt", ["float32", "float64"])
@pytest.mark.parametrize(("name", "loss"), ROWWISE)
def test_a_masked_class_makes_the_loss_nan_where_zero_times_minus_inf_is_formed(
    returned, name, loss, fmt
):
    # optax.softmax_cross_entropy and -sum(y * log_softmax(x)) compute 0 * (-inf) = NaN;
    # safe_softmax_cross_entropy masks zero labels; the sparse forms never touch the class
    case, values, gradient, _ = returned[name, loss, "masked", fmt]
    nan = loss == SOFTMAX and name != SAFE
    assert _statuses(case, values, gradient)[0] == (["nan"] * 3 if nan else ["ok"] * 3)


def test_the_audit_reports_masked_classes_as_they_are():
    # seed 35 draws three rows whose -inf logits are all under zero labels (and no +inf);
    # a gradient row is the worst element of its row, so a NaN would show as "nan" there
    config = AuditConfig(
        implementations=[PLAIN, SAFE],
        losses=[SOFTMAX],
        formats=["float32"],
        regimes=["infinite"],
        examples=3,
        search=0,
        seed=35,
        grad=True,
    )
    result = run_audit(config)
    seen: dict[tuple[str, str], list[str]] = {}
    for row in result.frame().itertuples():
        unit = result.cases[row.case_id].unit((int(row.index.split(",")[0]),))
        x, y = unit.predictions.astype(np.float64)[0], unit.labels.astype(np.float64)[0]
        if np.isposinf(x).any() or not np.isneginf(x).any() or (y[np.isneginf(x)] != 0).any():
            continue
        seen.setdefault((row.implementation, row.quantity), []).append(row.status)
    assert sorted(seen) == [
        (SAFE, "gradient"),
        (SAFE, "value"),
        (PLAIN, "gradient"),
        (PLAIN, "value"),
    ]
    assert seen[PLAIN, "value"] == ["nan"] * 3
    # the rest within tolerance or a little beyond (cancellation, unrelated to -inf)
    for key in [(SAFE, "value"), (SAFE, "gradient"), (PLAIN, "gradient")]:
        assert len(seen[key]) == 3 and set(seen[key]) <= {"ok", "inaccurate"}, (key, seen[key])


# -- infinite logits that agree with their labels: the exact loss and gradient are 0 -------


@pytest.mark.parametrize("fmt", ["float32", "float64"])
@pytest.mark.parametrize(("name", "loss"), MAPPING)
def test_infinite_logits_give_nan_losses(returned, name, loss, fmt):
    # softmax: log_softmax is NaN on a row holding +inf (documented) and so is logsumexp(x)
    # - x_k; its gradient is NaN too, except in the integer-label form, whose other classes
    # keep 0. sigmoid: 0 * log_sigmoid(-inf) = NaN, but the gradient is exactly 0.
    case, values, gradient, _ = returned[name, loss, "infinite", fmt]
    value_statuses, gradient_statuses = _statuses(case, values, gradient)
    if loss == SIGMOID:
        at_inf = np.isinf(np.asarray(INF_ELEMENTS)).ravel()
        assert [s for s, i in zip(value_statuses, at_inf) if i] == ["nan"] * 4
        assert [s for s, i in zip(value_statuses, at_inf) if not i] == ["ok"] * 2
        assert (gradient.ravel()[at_inf] == 0).all() and set(gradient_statuses) == {"ok"}
        return
    assert value_statuses == ["nan"] * 3
    if name == INTEGER:
        top = np.isposinf(np.asarray(PLUS_INF))
        assert np.isnan(gradient[top]).all() and (gradient[~top] == 0).all()
    else:
        assert np.isnan(gradient).all()


# -- float64 and JAX's default ------------------------------------------------------------


def test_the_audit_computes_float64_in_float64():
    config = AuditConfig(
        implementations=[LOG_SOFTMAX],
        formats=["float64"],
        regimes=["moderate"],
        examples=2,
        search=0,
        grad=True,
    )
    frame = run_audit(config).frame()
    assert set(frame.loss) == {SOFTMAX, SPARSE}
    assert (frame.note == "").all(), frame.note.tolist()  # nothing came back as float32
    assert not set(frame.status) & HARD_FAILURES
    assert frame.ulps.median() <= 4  # float32 arithmetic would be some 1e8 ulps away


def test_without_x64_jax_computes_float64_inputs_in_float32_silently():
    code = (
        "import numpy as np, jax.numpy as jnp, optax; "
        "x = jnp.asarray(np.array([[0.1, 0.2, 0.3]])); "
        "out = optax.softmax_cross_entropy_with_integer_labels(x, jnp.asarray([0])); "
        "print(x.dtype, out.dtype, float(out[0]).hex())"
    )
    run = subprocess.run(
        [sys.executable, "-W", "error", "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-2000:]  # no warning, even as an error
    x_dtype, out_dtype, got = run.stdout.split()
    assert (x_dtype, out_dtype) == ("float32", "float32")
    exact = evaluate(Case.build(SPARSE, [[0.1, 0.2, 0.3]], [0], format="float64"))
    assert get_format("float64").ulps(float.fromhex(got), float(exact.value[0])) > 1e8
