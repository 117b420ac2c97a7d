"""Findings: grouping with stable IDs, onsets by bisection, shapes, shrinking, the gate."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

from stabcheck.audit import AuditConfig, run_audit
from stabcheck.case import Case
from stabcheck.findings import (
    CLAMP,
    NOT_MONOTONE,
    ORDER,
    ORDINARY,
    features,
    format_hex,
    format_value,
    group,
    investigate,
)
from stabcheck.gate import Comparison, compare_findings
from stabcheck.implementations import Implementation
from stabcheck.measure import measure
from stabcheck.oracle import evaluate
from stabcheck.runner import invoke

SIGMOID = "sigmoid_cross_entropy_with_logits"
SPARSE = "sparse_softmax_cross_entropy_with_logits"


def rows_of(impl: Implementation, cases: list[Case]) -> list[dict]:
    """Measurement rows as the audit writes them (values only), measured in this process."""
    rows = []
    for case in cases:
        outcome = invoke(impl, case, False)
        for m in measure(evaluate(case), outcome.values):
            rows.append({
                "implementation": impl.name, "library": impl.library, "loss": case.loss.name,
                "format": case.format.name, "regime": case.regime, "origin": "drawn",
                "case_id": case.id, "quantity": "value", "index": ",".join(map(str, m.index)),
                "status": m.status, "ulps": m.ulps, "bits": m.bits, "exact": m.exact,
                "expected": m.expected, "got": m.got, "relative_error": m.relative_error,
                "condition": m.condition, "note": "",
            })  # fmt: skip
    return rows


def investigated(impl: Implementation, cases: list[Case], budget: float = 60.0):
    rows = rows_of(impl, cases)
    found = group(rows, {c.id: c for c in cases})
    impls = {(impl.name, impl.loss): impl}
    extra = investigate(found, rows, {c.id: c for c in cases}, impls,
                        lambda i, c, g: invoke(i, c, g), 4.0, budget)  # fmt: skip
    assert not extra.failed, extra.failed  # no search broke
    return found, extra


def textbook_sigmoid(x, z):
    """-log(1 / (1 + exp(-x))) for positive labels: exp overflows below -log(max)."""
    with np.errstate(all="ignore"):
        p = 1 / (1 + np.exp(-x))
        return -(z * np.log(p) + (1 - z) * np.log1p(-p))


def test_the_onset_is_where_exp_overflows():
    impl = Implementation("textbook", SIGMOID, textbook_sigmoid, library="tests")
    cases = [Case.build(SIGMOID, [-1000.0, 3.0], [1.0, 1.0], format="float64"),
             Case.build(SIGMOID, [-200.0], [1.0], format="float32")]  # fmt: skip
    found, extra = investigated(impl, cases)
    overflow = next(f for f in found if f.failure == "overflow")
    # exp(-x) overflows for -x > log(max): independent of stabcheck
    for fmt, threshold in (("float64", math.log(sys.float_info.max)),
                           ("float32", math.log(float(np.finfo(np.float32).max)))):  # fmt: skip
        onset = overflow.onset[fmt]
        assert onset["parameter"] == "logit"
        assert -threshold - 0.25 < onset["from"] <= -threshold < onset["ok_at"], (fmt, onset)
        showing, before = Case.from_json(onset["failing"]), Case.from_json(onset["ok"])
        assert float(showing.predictions[0]) == onset["from"]
        assert np.isinf(textbook_sigmoid(showing.predictions, showing.labels)).all()
        assert np.isfinite(textbook_sigmoid(before.predictions, before.labels)).all()
    points = [p for p in extra.sweeps if p["finding"] == overflow.id]
    assert sum(p["onset"] for p in points) == 2 and len(points) > 17
    # the smallest failing case: one element, its logit simplified to a power of two
    assert overflow.shrunk is not None and overflow.shrunk.predictions.size == 1
    x = float(overflow.shrunk.predictions[0])
    assert x < -709 and math.frexp(x)[0] in (-0.5, -0.75)


def clipped_bce(p, z):
    """Binary cross-entropy with probabilities clipped to [1e-15, 1 - 1e-15]."""
    p = np.clip(p.astype(np.float64), 1e-15, 1 - 1e-15)
    return -(z * np.log(p) + (1 - z) * np.log1p(-p))


def test_a_clamp_is_named_with_its_constant_and_epsilon():
    impl = Implementation("clipped", "binary_crossentropy", clipped_bce, library="tests")
    cases = [Case.build("binary_crossentropy", [p], [1.0]) for p in (0.0, 1e-20, 1e-30, 1e-40)]
    found, _ = investigated(impl, cases)
    clamp = next(f for f in found if f.kind == CLAMP)
    assert len(clamp.rows) == 4 and f"{-math.log(1e-15)!r} in float64" in clamp.detail
    assert "= -log(1e-15)" in clamp.detail


def dropping_softplus(x, z):
    """softplus(x) for label 0, but 10 less beyond a logit of 20: not monotone."""
    loss = np.logaddexp(0, x.astype(np.float64))
    return np.where(x > 20, loss - 10, loss)


@pytest.mark.parametrize("fmt", ["float64", "float16"])  # float16 in, float64 out
def test_a_loss_that_falls_where_the_exact_one_rises_is_not_monotone(fmt):
    impl = Implementation("dropping", SIGMOID, dropping_softplus, library="tests")
    found, extra = investigated(impl, [Case.build(SIGMOID, [40.0], [0.0], format=fmt)])
    shape = next(s for s in extra.shapes if s.kind == NOT_MONOTONE)
    assert "gives" in shape.detail and shape.failure == NOT_MONOTONE
    onset = next(f for f in found if f.failure == "inaccurate").onset[fmt]
    assert 19.9 < onset["from"] <= 20.1 and onset["ok_at"] <= 20


def first_class_matters(x, k):
    """log-sum-exp minus the true logit, plus a little of the first logit: order-dependent."""
    x = x.astype(np.float64)
    lse = np.log(np.exp(x - x.max(axis=1, keepdims=True)).sum(axis=1)) + x.max(axis=1)
    return lse - x[np.arange(len(k)), k] + 1e-3 * x[:, 0]


def test_a_result_that_depends_on_the_order_of_the_classes_is_found():
    impl = Implementation("ordered", SPARSE, first_class_matters, library="tests")
    cases = [Case.build(SPARSE, [[1.0, 2.0, 3.0, 4.0]], [2])]
    _, extra = investigated(impl, cases)
    shape = next(s for s in extra.shapes if s.kind == ORDER)
    assert "permuted" in shape.detail and shape.shrunk is not None


def test_ids_are_the_same_across_seeds_and_processes():
    config = dict(implementations=["naive"], losses=[SIGMOID], formats=["float32"],
                  regimes=["saturating", "dominant"], examples=6, search=0)  # fmt: skip
    one = run_audit(AuditConfig(**config, seed=0, jobs=1))
    two = run_audit(AuditConfig(**config, seed=0, jobs=2))
    other = run_audit(AuditConfig(**config, seed=1, jobs=1))
    assert [f.id for f in one.findings] == [f.id for f in two.findings]
    assert one.frame()["finding"].equals(two.frame()["finding"])
    keys = {f.id: f.key for f in one.findings}
    shared = [f for f in other.findings if f.id in keys]
    assert len(shared) >= 2 and all(keys[f.id] == f.key for f in shared)


@pytest.mark.parametrize(
    ("loss", "predictions", "labels", "exact", "first"),
    [
        (SIGMOID, [math.inf], [0.0], None, "+inf logit under a zero label"),
        (SPARSE, [[-math.inf, 1.0]], [1], None, "-inf logit under a zero label"),
        ("binary_crossentropy", [0.0], [1.0], None,
         "a probability of exactly 0 under a positive label"),
        (SPARSE, [[40.0, 0.0]], [0], "4.2e-18", "an exact result below eps"),
        (SPARSE, [[0.0, 800.0]], [0], "800", "a logit or logit gap above log(max)"),
        (SIGMOID, [1.0], [0.5], "0.8", ORDINARY),
    ],
)  # fmt: skip
def test_features_read_the_inputs_and_the_exact_result(loss, predictions, labels, exact, first):
    assert features(Case.build(loss, predictions, labels), exact)[0] == first


def test_values_print_in_their_own_format():
    assert format_value(float(np.float16(15.945)), "float16") == "15.945"  # 15.95: 15.953125
    assert format_value(0.1, "float64") == "0.1"
    assert format_hex(float(np.float32(0.1)), "float32") == "0x1.99999ap-4"
    assert format_hex(1.5, "bfloat16") == "0x1.8p+0"


def entry(onset: float | None, case: str = "{}") -> dict:
    onsets = {} if onset is None else {"float32": {"parameter": "margin", "from": onset,
                                                   "case": case}}  # fmt: skip
    return {"id": "F1", "implementation": "impl", "loss": SPARSE, "quantity": "value",
            "failure": "underflow", "feature": "an exact result below eps", "measurements": 3,
            "onsets": onsets, "case": case}  # fmt: skip


def test_the_gate_fails_a_new_finding_and_an_onset_nearer_ordinary_inputs():
    new = Comparison()
    compare_findings({"F0": entry(None)}, {"F0": entry(None), "F1": entry(None, "CASE")}, new)
    assert [c.replay for c in new.regressions] == ["CASE"]
    earlier = Comparison()
    compare_findings({"F1": entry(16.6)}, {"F1": entry(12.0, "EARLY")}, earlier)
    assert [c.replay for c in earlier.regressions] == ["EARLY"]
    later = Comparison()
    compare_findings({"F1": entry(16.6)}, {"F1": entry(20.0)}, later)
    assert not later.regressions and len(later.improvements) == 1
    same = Comparison()
    compare_findings({"F1": entry(16.6)}, {"F1": entry(16.59)}, same)  # within the slack
    assert not same.regressions and not same.improvements


@pytest.mark.skipif(not __import__("importlib").util.find_spec("torch"), reason="torch")
def test_a_torch_repro_prints_the_value_it_quotes():
    from stabcheck.implementations import implementations

    impl = implementations(names="torch.binary_cross_entropy_with_logits", losses=SIGMOID)[0]
    cases = [Case.build(SIGMOID, [-30.0], [0.0], format="float32")]
    rows = []
    for case in cases:
        outcome = invoke(impl, case, False)
        rows += [{**r, "got": g} for r, g in zip(rows_of(_fixed(outcome.values), [case]),
                                                 outcome.values)]  # fmt: skip
    for r in rows:
        r["implementation"], r["library"] = impl.name, impl.library
    found = group(rows, {c.id: c for c in cases})
    investigate(found, rows, {c.id: c for c in cases}, {(impl.name, SIGMOID): impl},
                lambda i, c, g: invoke(i, c, g), 4.0, 60.0)  # fmt: skip
    finding = next(f for f in found if f.repro)
    quoted = finding.repro.split("# returns ")[1].split(";")[0]
    printed = subprocess.run([sys.executable, "-c", finding.repro], capture_output=True,
                             text=True, check=True).stdout.strip()  # fmt: skip
    assert [float(v) for v in printed.strip("[]").split(",")] == [
        float(v) for v in quoted.strip("[]").split(",")]
    assert "stabcheck" not in finding.repro.split("# returns")[0]


def _fixed(values):
    return Implementation("fixed", SIGMOID, lambda x, z: np.asarray(values), library="tests")


def test_shapes_only_a_search_finds_count_only_when_both_runs_searched_everything():
    shape = {**entry(None, "SHAPE"), "id": "F2", "kind": "not monotone"}
    partial = Comparison()
    compare_findings({"F0": entry(None)}, {"F0": entry(None), "F2": shape}, partial,
                     searched=False)  # fmt: skip
    assert not partial.regressions
    complete = Comparison()
    compare_findings({"F0": entry(None)}, {"F0": entry(None), "F2": shape}, complete)
    assert [c.replay for c in complete.regressions] == ["SHAPE"]
