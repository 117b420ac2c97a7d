"""``stabcheck.repro.library_snippet``: what it answers None to, how it writes floats, and,
for every third-party adapter registered and installed, that each snippet, run without
stabcheck, prints bit for bit what stabcheck measures through the adapter.

The snippets run in one fresh Python process per array backend (numpy, torch, TensorFlow,
JAX: the framework is imported once, Keras' snippets beside their backend's), each snippet
``exec``'d alone in fresh globals with its output captured; then that process, and only
then, imports stabcheck and measures every case through ``runner.protected``, the call an
audit's implementation process makes. JAX's float64 snippets run last in theirs: each
turns x64 on for the rest of the process, as a script of its own would.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from stabcheck.case import Case
from stabcheck.errors import InvalidArgument
from stabcheck.implementations import (
    Implementation,
    get_implementation,
    implementations,
    user_implementation,
)
from stabcheck.losses import InputKind, LabelKind, get_loss, get_param
from stabcheck.repro import library_snippet

INF, NAN = math.inf, math.nan
ROOT = Path(__file__).resolve().parents[1]

# -- inputs with an ordinary row and rows where libraries return inf or NaN --------------------

LOGIT_ROWS = [[0.5, -1.25, 2.0], [6e4, -6e4, 0.1], [INF, 0.0, 1.0], [-INF, 0.0, 1.0]]
PROB_ROWS = [[0.25, 0.5, 0.25], [0.5, 0.0, 0.5], [NAN, 0.5, 0.5], [1e-6, 0.5, 0.25]]
SOFT_ROWS = [[0.25, 0.5, 0.25], [0.0, 1.0, 0.0], [0.5, 0.5, 0.0], [0.0, 0.5, 0.5]]
HARD_ROWS = [[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]]
SPARSE = [0, 1, 1, 2]
ELEMENT_LOGITS = [0.5, -20.0, 100.0, INF, -INF, 3.0]
ELEMENT_PROBS = [0.25, 0.0, 1.0, 1e-3, NAN, 0.75]
ELEMENT_TARGETS = [1.0, 1.0, 0.0, 0.0, 1.0, 0.25]
HIDDEN = [[1.0, 2.0], [100.0, -3.0], [0.5, 0.25], [INF, 1.0]]  # h of the linear losses
LINEAR = {"linear_weight": [[1.0, 0.5], [0.25, -1.0], [-0.5, 2.0]],
          "linear_bias": [0.5, 0.0, -0.25]}  # fmt: skip
OPTIONS = {"pos_weight": 2.5, "label_smoothing": 0.125, "weight": [1.0, 0.5, 2.0],
           "ignore_index": -100, "alpha": 0.25, "gamma": 1.5}  # fmt: skip


def inputs(impl: Implementation) -> tuple[Any, Any, dict[str, Any]]:
    """Predictions, labels and operands for ``impl``'s loss: sklearn's without NaN and with
    hard labels (log_loss refuses the others)."""
    loss = get_loss(impl.loss)
    hard = impl.library == "sklearn"
    if loss.operands:
        labels = SPARSE if loss.labels is LabelKind.SPARSE else SOFT_ROWS
        return HIDDEN, labels, LINEAR
    if not loss.rowwise:
        if loss.inputs is InputKind.LOGITS:
            return ELEMENT_LOGITS, ELEMENT_TARGETS, {}
        if hard:
            return [0.25, 0.0, 1.0, 1e-3, 0.5, 0.75], [1.0, 1.0, 0.0, 0.0, 1.0, 0.0], {}
        if impl.backend == "torch":  # F.binary_cross_entropy raises on NaN probabilities
            return [0.5 if math.isnan(p) else p for p in ELEMENT_PROBS], ELEMENT_TARGETS, {}
        return ELEMENT_PROBS, ELEMENT_TARGETS, {}
    predictions = LOGIT_ROWS if loss.inputs is InputKind.LOGITS else PROB_ROWS
    if hard:
        predictions = [[0.125 if math.isnan(v) else v for v in row] for row in predictions]
    if loss.labels is LabelKind.SPARSE:
        return predictions, SPARSE, {}
    return predictions, HARD_ROWS if hard else SOFT_ROWS, {}


def cases(impl: Implementation, turn: int = 0) -> list[tuple[str, Case]]:
    """(variant, case): with every option ``impl`` takes but the reduction; the same with
    its last reduction; in float32, float16 and bfloat16; and in float32 with only the
    required options (the call without them). JAX compiles every operation for each dtype
    on its first call (half a second a snippet), so JAX-backed adapters take one 16-bit
    format each, by ``turn``, and optax's and JAX's float64 (x64 on)."""
    predictions, labels, operands = inputs(impl)
    params = {name: OPTIONS[name] for name in impl.params or () if name in OPTIONS}
    required = {name: value for name, value in params.items() if get_param(name).required}
    variants = [("options", params)]
    reductions = [r for r in impl.choices.get("reduction", ()) if r != "none"]
    if "reduction" in (impl.params or ()) and reductions:
        variants.append((reductions[-1], {**params, "reduction": reductions[-1]}))
    formats = ["float32", "float16", "bfloat16"]
    if impl.backend == "jax":
        formats.pop(1 + turn % 2)
        formats += ["float64"] if impl.library != "keras" else []
    builds = [(fmt, variant, options) for fmt in formats for variant, options in variants]
    if required != params:
        builds.append(("float32", "plain", required))
    out = []
    for fmt, variant, options in builds:
        ignored = [*labels[:-1], options["ignore_index"]] if "ignore_index" in options else labels
        case = Case.build(impl.loss, predictions, ignored, format=fmt, **operands, **options)
        assert impl.takes(case), (impl.name, variant)
        out.append((f"{fmt}-{variant}", case))
    return out


THIRD_PARTY = [impl for impl in implementations() if impl.library != "stabcheck"]
AVAILABLE = [impl for impl in THIRD_PARTY if impl.available]


def quantities(impl: Implementation, case: Case) -> list[str]:
    if not impl.differentiable:
        return ["value"]
    return ["value", "gradient", *(f"gradient[{name}]" for name in case.operands)]


ITEMS = [
    (impl, variant, case, quantity)
    for turn, impl in enumerate(AVAILABLE)
    for variant, case in cases(impl, turn)
    for quantity in quantities(impl, case)
]
IDS = [f"{impl.name}-{impl.loss}-{variant}-{q}" for impl, variant, _, q in ITEMS]


# -- running the snippets, then stabcheck, in one process per backend ------------------------

DRIVER = r"""
import contextlib, io, json, sys
items = json.load(sys.stdin)
printed = []
for item in items:
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            exec(compile(item["snippet"], "<snippet>", "exec"), {"__name__": "__main__"})
        printed.append(out.getvalue())
    except Exception as exc:
        printed.append(f"raised {type(exc).__name__}: {exc}")
clean = not any(name.split(".")[0] == "stabcheck" for name in sys.modules)

from stabcheck.case import Case
from stabcheck.implementations import get_implementation
from stabcheck.runner import protected

def hexes(array):
    return None if array is None else [float(v).hex() for v in array.ravel().tolist()]

measured = []
for item in items:
    impl = get_implementation(item["name"], item["loss"])
    quantity = item["quantity"]
    outcome = protected(lambda: impl, Case.from_json(item["case"]), quantity != "value")
    if quantity == "value":
        got = outcome.values
    elif quantity == "gradient":
        got = outcome.gradient
    else:
        got = outcome.operands.get(quantity[len("gradient["):-1])
    measured.append({"status": outcome.status, "note": outcome.note, "got": hexes(got)})
print(json.dumps({"clean": clean, "printed": printed, "measured": measured}))
"""


def _run_group(indices: list[int]) -> dict[str, Any]:
    """The driver on the items ``indices``: whether stabcheck stayed out of the snippets,
    and each item's printed output and measurement, keyed by id."""
    # float64 JAX snippets last: each turns x64 on for the rest of the process
    order = sorted(indices, key=lambda i: ITEMS[i][2].format.name == "float64")
    payload = [{"snippet": library_snippet(impl, case, q), "name": impl.name,
                "loss": impl.loss, "case": case.to_json(), "quantity": q}
               for impl, _, case, q in (ITEMS[i] for i in order)]  # fmt: skip
    done = subprocess.run([sys.executable, "-c", DRIVER], input=json.dumps(payload),
                          capture_output=True, text=True, cwd=ROOT, timeout=900)  # fmt: skip
    if done.returncode != 0:
        raise AssertionError(f"the driver failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    out: dict[str, Any] = {"clean": result["clean"]}
    for i, printed, measured in zip(order, result["printed"], result["measured"]):
        out[IDS[i]] = (printed, measured)
    return out


@cache
def results() -> dict[str, Any]:
    """Each item's printed output and measurement keyed by id, and ``clean:<backend>``;
    one driver per backend, two at a time (the machine has two cores)."""
    groups: dict[str, list[int]] = {}
    for i, (impl, *_) in enumerate(ITEMS):
        groups.setdefault(impl.backend, []).append(i)
    merged: dict[str, Any] = {}
    with ThreadPoolExecutor(max_workers=2) as pool:
        for backend, got in zip(groups, pool.map(_run_group, groups.values())):
            merged[f"clean:{backend}"] = got.pop("clean")
            merged.update(got)
    return merged


_NUMBER = re.compile(r"[-+]?(?:inf|nan|(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)")


def parse_printed(text: str) -> list[float]:
    """The floats of the one line a snippet printed (``[1.5, -inf, nan]``), in order."""
    lines = text.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("[") and lines[0].endswith("]"), text
    return [float(token) for token in _NUMBER.findall(lines[0])]


def same(a: float, b: float) -> bool:
    """Bit for bit as float64 (so 0.0 is not -0.0), every NaN equal to every NaN."""
    bits = np.array([a, b], dtype=np.float64).view(np.uint64)
    return (math.isnan(a) and math.isnan(b)) or bits[0] == bits[1]


# -- the tests -------------------------------------------------------------------------------


@pytest.mark.parametrize(("impl", "variant", "case", "quantity"), ITEMS, ids=IDS)
def test_snippet_prints_what_stabcheck_measures(
    impl: Implementation, variant: str, case: Case, quantity: str
) -> None:
    snippet = library_snippet(impl, case, quantity)
    assert snippet is not None and "stabcheck" not in snippet
    printed, measured = results()[f"{impl.name}-{impl.loss}-{variant}-{quantity}"]
    if measured["status"] != "ok":  # the library refused: so does the snippet
        assert printed.startswith("raised "), (measured, printed)
        return
    assert not printed.startswith("raised "), f"{printed}\n{snippet}"
    got = [float.fromhex(v) for v in measured["got"]]
    shown = parse_printed(printed)
    assert len(shown) == len(got), (shown, got)
    differ = [(i, s, g) for i, (s, g) in enumerate(zip(shown, got)) if not same(s, g)]
    assert not differ, f"(index, printed, measured): {differ}\n{snippet}"


@pytest.mark.parametrize("backend", sorted({impl.backend for impl in AVAILABLE}))
def test_snippets_import_no_stabcheck(backend: str) -> None:
    assert results()[f"clean:{backend}"]


def test_special_values_are_reproduced() -> None:
    """The cases make every library but scikit-learn (which clips, and refuses NaN) print
    inf or NaN somewhere, and the snippets reproduce them (the test above)."""
    special: dict[str, set[str]] = {}
    for (impl, *_), key in zip(ITEMS, IDS):
        printed, measured = results()[key]
        if measured["status"] == "ok":
            values = parse_printed(printed)
            kinds = special.setdefault(impl.library, set())
            kinds.update("nan" if math.isnan(v) else "inf" for v in values if not math.isfinite(v))
    for library, kinds in special.items():
        if library != "sklearn":
            assert kinds == {"inf", "nan"}, (library, kinds)


def test_every_third_party_adapter_has_a_repro() -> None:
    assert [impl.name for impl in THIRD_PARTY if impl.repro is None] == []


# -- without running anything ----------------------------------------------------------------


def test_none_for_stabcheck_and_users_functions() -> None:
    case = Case.build("softmax_cross_entropy_with_logits", [[1.0, 2.0]], [[0.5, 0.5]])
    for name in ("naive", "stable", "accurate"):
        assert library_snippet(get_implementation(name, case.loss.name), case) is None
    user = user_implementation("mypkg.losses:xent", case.loss.name)
    assert library_snippet(user, case) is None


def test_none_where_the_quantity_cannot_be_had() -> None:
    case = Case.build("sigmoid_cross_entropy_with_logits", [1.0], [0.5])
    scipy = get_implementation("scipy.log_expit", case.loss.name)
    assert library_snippet(scipy, case) is not None
    assert library_snippet(scipy, case, "gradient") is None  # numpy: no autodiff
    torch = get_implementation("torch.binary_cross_entropy_with_logits", case.loss.name)
    assert library_snippet(torch, case, "gradient[linear_bias]") is None  # no such operand
    linear = Case.build("linear_cross_entropy", [[1.0]], [0], linear_weight=[[1.0], [2.0]])
    impl = get_implementation("torch.linear_cross_entropy", linear.loss.name)
    assert library_snippet(impl, linear, "gradient[linear_bias]") is None
    assert "print(W.grad" in library_snippet(impl, linear, "gradient[linear_weight]")
    soft = Case.build("binary_crossentropy", [0.5], [0.25])  # log_loss refuses soft targets
    assert library_snippet(get_implementation("sklearn.log_loss", soft.loss.name), soft) is None


@pytest.mark.parametrize(
    ("quantity", "says"),
    [("values", "'value', 'gradient' or"), ("gradient[W]", "gradient[linear_weight]")],
)
def test_invalid_quantity(quantity: str, says: str) -> None:
    case = Case.build("sigmoid_cross_entropy_with_logits", [1.0], [0.5])
    impl = get_implementation("tf.nn.sigmoid_cross_entropy_with_logits", case.loss.name)
    with pytest.raises(InvalidArgument, match=re.escape(says)):
        library_snippet(impl, case, quantity)


def test_a_case_the_implementation_does_not_take() -> None:
    case = Case.build("sigmoid_cross_entropy_with_logits", [1.0], [0.5], reduction="sum")
    impl = get_implementation("tf.nn.sigmoid_cross_entropy_with_logits", case.loss.name)
    with pytest.raises(InvalidArgument, match="does not take"):
        library_snippet(impl, case)
    other = get_implementation("tf.nn.softmax_cross_entropy_with_logits",
                               "softmax_cross_entropy_with_logits")  # fmt: skip
    with pytest.raises(InvalidArgument, match="implements softmax"):
        library_snippet(other, case)


def test_floats_are_written_exactly() -> None:
    tiny = float(np.float16(2.0**-24))  # float16's smallest subnormal
    case = Case.build("binary_crossentropy", [tiny, 0.1, 1.0, NAN], [1.0, -0.0, 0.0, 1.0],
                      format="float16")  # fmt: skip
    snippet = library_snippet(get_implementation("torch.binary_cross_entropy", case.loss.name),
                              case)  # fmt: skip
    assert snippet is not None
    assert "[5.960464477539063e-08, 0.0999755859375, 1.0, float('nan')]" in snippet
    assert "[1.0, -0.0, 0.0, 1.0]" in snippet
    assert "dtype=torch.float16" in snippet


def test_the_snippet_reads_as_an_issue_would() -> None:
    case = Case.build("sparse_softmax_cross_entropy_with_logits", [[11.0, -3.5]], [0],
                      format="float16")  # fmt: skip
    impl = get_implementation("torch.cross_entropy", case.loss.name)
    assert library_snippet(impl, case) == (
        "import torch\n"
        "\n"
        "x = torch.tensor([[11.0, -3.5]], dtype=torch.float16)\n"
        "y = torch.tensor([0])\n"
        "loss = torch.nn.functional.cross_entropy(x, y, reduction='none')\n"
        "print(loss.flatten().tolist())\n"
    )
