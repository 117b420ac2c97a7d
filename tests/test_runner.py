"""The runner's batched calls: the same outcomes as one case per call on a sample of cases
(XLA may reduce a row in another order at another row count: ``runner.BATCHED_BACKENDS``),
a failing case isolated from the others of its batch, few shapes for a JIT compiler."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest

from stabcheck import runner
from stabcheck.audit import draw_cases
from stabcheck.case import Case
from stabcheck.implementations import implementations, user_implementation
from stabcheck.runner import BATCHED_BACKENDS, ERROR, TIMEOUT, Runners, batches, stacked
from stabcheck.strategies import regimes_for

SIGMOID = "sigmoid_cross_entropy_with_logits"
SPARSE = "sparse_softmax_cross_entropy_with_logits"
SOFT = "softmax_cross_entropy_with_logits"


def drawn(loss: str, fmt: str) -> list[Case]:
    """Cases of several regimes, some alike in shape (batched), some not."""
    regimes = [r for r in ("moderate", "saturating", "infinite", "label_smoothing")
               if r in regimes_for(loss)]  # fmt: skip
    cases = [c for r in regimes for c in draw_cases(loss, fmt, r, 3, 5)]
    assert len(batches(cases)) < len(cases)  # some calls hold several cases
    return cases


def same(a, b) -> None:
    assert (a.status, a.note) == (b.status, b.note)
    for x, y in ((a.values, b.values), (a.gradient, b.gradient)):
        assert (x is None) == (y is None)
        if x is not None:
            np.testing.assert_array_equal(x, y)  # NaN where NaN, to the bit otherwise


@pytest.mark.parametrize(("loss", "fmt"), [(SIGMOID, "float32"), (SPARSE, "bfloat16"),
                                           (SOFT, "float16"), (SOFT, "float64")])  # fmt: skip
def test_batched_calls_give_what_one_case_per_call_gives(loss, fmt):
    """On the backends batched (JAX: jax.nn and optax here; keras[jax] too, measured)."""
    cases = drawn(loss, fmt)
    found = [impl for impl in implementations(losses=loss) if impl.available
             and fmt in impl.formats and impl.library in ("jax", "optax")][:2]  # fmt: skip
    assert found and {impl.backend for impl in found} <= BATCHED_BACKENDS
    runners = Runners(timeout=120.0, parallel=2)
    try:
        jobs = [(impl, [c for c in cases if impl.takes(c)]) for impl in found]
        batched = dict(runners.run_jobs(jobs, grad=True))
        for index, (impl, taken) in enumerate(jobs):
            for case, outcome in zip(taken, batched[index]):
                same(outcome, runners.get(impl).call(impl, case, True))
    finally:
        runners.close()


POISON = 0.375  # an input value that makes the functions below fail
USER_MODULE = textwrap.dedent(
    f"""
    import os, time
    import numpy as np

    def sigmoid(x, z):
        return np.maximum(x, 0) - x * z + np.log1p(np.exp(-np.abs(x)))

    def raises(x, z):
        if (x == {POISON}).any():
            raise ValueError("poisoned")
        return sigmoid(x, z)

    def dies(x, z):
        if (x == {POISON}).any():
            os._exit(7)
        return sigmoid(x, z)

    def hangs(x, z):
        if (x == {POISON}).any():
            time.sleep(60)
        return sigmoid(x, z)
    """
)


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "batch_losses.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "batch_losses"


@pytest.mark.parametrize(("fn", "status", "note"), [
    ("raises", ERROR, "ValueError: poisoned"),
    ("dies", ERROR, "exit code 7"),
    ("hangs", TIMEOUT, "no answer within 1 s"),
])  # fmt: skip
def test_a_failure_in_a_batch_belongs_to_the_case_that_causes_it(user_module, fn, status, note,
                                                                 monkeypatch):  # fmt: skip
    monkeypatch.setattr(runner, "BATCHED_BACKENDS", {"numpy"})  # the user's numpy functions
    rng = np.random.default_rng(0)
    cases = [Case.build(SIGMOID, rng.normal(size=(2, 3)), rng.uniform(size=(2, 3)))
             for _ in range(5)]  # fmt: skip
    poisoned = 2
    x = cases[poisoned].predictions.copy()
    x[1, 2] = POISON
    cases[poisoned] = Case.build(SIGMOID, x, cases[poisoned].labels)
    assert batches(cases) == [[0, 1, 2, 3, 4]]  # one call, were it not for the poison
    impl = user_implementation(f"{user_module}:{fn}", SIGMOID)
    good = user_implementation(f"{user_module}:sigmoid", SIGMOID)
    runners = Runners(timeout=1.0, parallel=1)
    try:
        calls = []
        start = runners.get(impl).submit
        monkeypatch.setattr(runners.get(impl), "submit",
                            lambda i, case, grad: calls.append(case) or start(i, case, grad))
        [(_, outcomes)] = list(runners.run_jobs([(impl, cases)], grad=False))
        assert [len(c.predictions) for c in calls] == [16, 2, 2, 2, 2, 2]  # batch, then alone
        for i, (case, outcome) in enumerate(zip(cases, outcomes)):
            if i == poisoned:
                assert outcome.status == status and note in outcome.note
            else:
                same(outcome, runners.get(good).call(good, case, False))
    finally:
        runners.close()


def test_stacked_rows_are_padded_to_a_power_of_two_and_split_back():
    rng = np.random.default_rng(1)
    cases = [Case.build(SPARSE, rng.normal(size=(n, 4)), rng.integers(0, 4, n), format="float16")
             for n in (1, 2, 2)]  # fmt: skip
    case = stacked(cases)
    assert case.predictions.shape == (8, 4) and case.labels.shape == (8,)
    np.testing.assert_array_equal(case.predictions[:5],
                                  np.concatenate([c.predictions for c in cases]))  # fmt: skip
    np.testing.assert_array_equal(case.predictions[5:], np.repeat(cases[0].predictions, 3, 0))
    assert stacked(cases[:1]) is cases[0]  # a case alone is called as it is


def test_cases_that_differ_in_options_shape_or_format_are_not_batched():
    x = np.zeros((2, 3))
    cases = [
        Case.build(SPARSE, x, [0, 1]),
        Case.build(SPARSE, x, [0, 1], label_smoothing=0.125),
        Case.build(SPARSE, x, [0, 1], label_smoothing=0.125),
        Case.build(SPARSE, np.zeros((2, 4)), [0, 1]),
        Case.build(SPARSE, x, [0, 1], format="float32"),
        Case.build(SPARSE, x, [0, 1], reduction="sum"),  # one loss for the case: alone
        Case.build(SPARSE, x, [2, 1]),
    ]
    assert batches(cases) == [[0, 6], [1, 2], [3], [4], [5]]
