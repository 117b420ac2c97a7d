"""The oracle's cache on disk: the same results as computing them, safe under concurrent
writers, invalidated by a change to the oracle's code, robust to a damaged entry."""

from __future__ import annotations

import multiprocessing
import shutil

import numpy as np
import pytest

from stabcheck.case import Case
from stabcheck.oracle import evaluate
from stabcheck.oracle.cache import Cache, default_directory, oracle_version

INF = float("inf")


def cases() -> list[Case]:
    rng = np.random.default_rng(7)
    x = rng.normal(size=(3, 4)) * 30
    soft = rng.dirichlet(np.ones(4), size=3)
    return [
        Case.build("sigmoid_cross_entropy_with_logits", [[-800.0, 0.0, 40.0, INF]],
                   [[1.0, 0.5, 0.0, 1.0]], format="float32"),
        Case.build("binary_crossentropy", [[0.0, 1e-30, 1.0]], [[1.0, 0.25, 1.0]],
                   format="bfloat16"),
        Case.build("softmax_cross_entropy_with_logits", x, soft, format="float16"),
        Case.build("sparse_softmax_cross_entropy_with_logits", x, [0, 3, 1], format="float64"),
        Case.build("sparse_softmax_cross_entropy_with_logits", np.tile(x, (6, 1)),
                   np.arange(18) % 4, format="float32"),  # the fast path's size
        Case.build("sparse_softmax_cross_entropy_with_logits", x, [0, 3, 1], format="float32",
                   reduction="mean", label_smoothing=0.1),
        Case.build("linear_cross_entropy", rng.normal(size=(2, 3)), [1, 2],
                   linear_weight=rng.normal(size=(4, 3)), format="float32"),
    ]  # fmt: skip


def same(a, b) -> None:
    """Every field of two oracle results equal, NaN included, exact values to the bit."""
    for name in ("value", "condition", "precision", "gradient", "gradient_condition", "fast",
                 "gradient_scale"):  # fmt: skip
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            np.testing.assert_array_equal(x, y, err_msg=name)
    for name in ("exact", "gradient_exact"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None) and (x is None or x.shape == y.shape), name
        if x is not None:
            assert [v._mpf_ for v in x.reshape(-1)] == [v._mpf_ for v in y.reshape(-1)], name
    assert set(a.operand_gradients) == set(b.operand_gradients)
    for name, g in a.operand_gradients.items():
        h = b.operand_gradients[name]
        np.testing.assert_array_equal(g.value, h.value)
        assert [v._mpf_ for v in g.exact.reshape(-1)] == [v._mpf_ for v in h.exact.reshape(-1)]


@pytest.mark.parametrize("grad", [False, True])
def test_a_cached_result_is_the_computed_one(tmp_path, grad):
    cache = Cache(tmp_path)
    for case in cases():
        computed = evaluate(case, grad=grad)
        first = cache.evaluate(case, grad)  # computed and stored
        again = Cache(tmp_path).evaluate(case, grad)  # read, by a new cache object
        same(computed, first)
        same(computed, again)
        assert set(again.seconds) == {"cache"} and again.case is case
    assert cache.misses == len(cases()) and cache.hits == 0
    # with and without gradients are two entries
    assert len(list(tmp_path.rglob("*.pickle"))) == len(cases())


def _write_all(directory: str, order: int) -> None:
    todo = cases()[::order]
    cache = Cache(directory)
    for _ in range(3):
        for case in todo:
            cache.evaluate(case, True)


def test_two_writers_at_once_leave_whole_entries(tmp_path):
    context = multiprocessing.get_context("fork")
    writers = [context.Process(target=_write_all, args=(str(tmp_path), order))
               for order in (1, -1)]  # fmt: skip
    for w in writers:
        w.start()
    for w in writers:
        w.join(timeout=300)
        assert w.exitcode == 0
    files = list(tmp_path.rglob("*"))
    assert not [f for f in files if f.is_file() and not f.name.endswith(".pickle")]
    cache = Cache(tmp_path)
    for case in cases():
        same(evaluate(case, grad=True), cache.evaluate(case, True))
    assert cache.hits == len(cases()) and cache.misses == 0


def test_a_damaged_entry_is_computed_again(tmp_path):
    case = cases()[2]
    cache = Cache(tmp_path)
    cache.evaluate(case, True)
    path = cache.path(case, True)
    path.write_bytes(path.read_bytes()[:50])  # truncated
    same(evaluate(case, grad=True), cache.evaluate(case, True))
    assert cache.misses == 2
    same(evaluate(case, grad=True), Cache(tmp_path).evaluate(case, True))  # rewritten whole


def test_a_change_to_the_oracle_is_a_new_version(tmp_path):
    import stabcheck

    package = tmp_path / "stabcheck"
    shutil.copytree(stabcheck.__path__[0], package, ignore=shutil.ignore_patterns("__pycache__"))
    assert oracle_version(package) == oracle_version()
    rowwise = package / "oracle" / "rowwise.py"
    rowwise.write_text(rowwise.read_text() + "\n# changed\n")
    assert oracle_version(package) != oracle_version()
    (package / "report.py").write_text("")  # not part of the oracle
    rowwise.write_text(rowwise.read_text().removesuffix("\n# changed\n"))
    assert oracle_version(package) == oracle_version()


def test_results_of_another_version_are_not_read(tmp_path, monkeypatch):
    case = cases()[0]
    Cache(tmp_path).evaluate(case, False)
    monkeypatch.setattr("stabcheck.oracle.cache.oracle_version", lambda: "0" * 16)
    cache = Cache(tmp_path)
    cache.evaluate(case, False)
    assert cache.misses == 1 and len(list(tmp_path.rglob("*.pickle"))) == 2


def test_where_the_cache_lives(monkeypatch, tmp_path):
    monkeypatch.setenv("STABCHECK_CACHE_DIR", "off")
    assert default_directory() is None
    assert Cache(None).evaluate(cases()[0], False).seconds.keys() == {"fast", "mpmath"}
    monkeypatch.setenv("STABCHECK_CACHE_DIR", str(tmp_path))
    assert default_directory() == tmp_path
    monkeypatch.delenv("STABCHECK_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_directory() == tmp_path / "xdg" / "stabcheck"
