"""The audit: defects found with the right status, failures isolated, runs reproducible."""

from __future__ import annotations

import textwrap
from dataclasses import replace

import numpy as np
import pytest

from stabcheck.audit import AuditConfig, draw_cases, run_audit
from stabcheck.case import Case
from stabcheck.errors import InvalidArgument
from stabcheck.implementations import get_implementation
from stabcheck.losses import loss_names
from stabcheck.measure import measure
from stabcheck.oracle import evaluate
from stabcheck.runner import invoke

USER_MODULE = textwrap.dedent(
    """
    import os, time
    import numpy as np

    def raises(p, z):
        raise ValueError("boom")

    def hangs(p, z):
        time.sleep(60)

    def wrong_shape(p, z):
        return np.zeros(p.size + 1, dtype=p.dtype)

    def garbage(p, z):
        return "not an array"

    def dies(p, z):
        os._exit(3)

    def slow_once(p, z):  # the first call of the run hangs, as a JIT compile on a busy machine
        flag = os.environ["SLOW_ONCE_FLAG"]
        if not os.path.exists(flag):
            open(flag, "w").close()
            time.sleep(60)
        return -(z * np.log(p) + (1 - z) * np.log1p(-p))

    def chatty(p, z):  # a framework that logs as it works
        import sys
        print("I tensorflow: a log line")
        print("W a warning", file=sys.stderr)
        return -(z * np.log(p) + (1 - z) * np.log1p(-p))

    def keras_clipped(p, z):  # Keras-style: clip probabilities to [1e-7, 1 - 1e-7]
        q = np.clip(p, 1e-7, 1 - 1e-7)
        return -(z * np.log(q) + (1 - z) * np.log1p(-q))
    """
)


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "user_losses.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "user_losses"


def _status(impl: str, loss: str, predictions, labels, fmt: str = "float64") -> list[str]:
    case = Case.build(loss, predictions, labels, format=fmt)
    outcome = invoke(get_implementation(impl, loss), case, grad=False)
    return [m.status for m in measure(evaluate(case), outcome.values)]


@pytest.mark.parametrize(
    ("loss", "predictions", "labels", "status"),
    [
        # exp(800) overflows inside sigmoid: log(0) = -inf where the loss is 800
        ("sigmoid_cross_entropy_with_logits", [-800.0], [1.0], "overflow"),
        # softmax of [1000, 0]: exp(1000) = inf, inf / inf = nan
        ("sparse_softmax_cross_entropy_with_logits", [[1000.0, 0.0]], [0], "nan"),
        # the loss log1p(exp(-40)) ~ 4.2e-18 becomes -log(1.0) = 0
        ("sparse_softmax_cross_entropy_with_logits", [[0.0, -40.0]], [0], "underflow"),
        # 1 - p rounds: log(1 - p) keeps about 6 of the 16 digits of -log1p(-1e-10)
        ("binary_crossentropy", [1e-10], [0.0], "inaccurate"),
    ],
)
def test_naive_is_flagged_with_the_status_of_its_defect(loss, predictions, labels, status):
    assert _status("naive", loss, predictions, labels) == [status]


def test_a_clipping_implementation_is_flagged_clipped(user_module):
    # p = 0 under z = 1: the exact loss is +inf, the clipped one -log(1e-7) = 16.1
    statuses = _status(f"{user_module}:keras_clipped", "binary_crossentropy", [0.0, 0.5], [1, 1])
    assert statuses == ["clipped", "ok"]


def test_failing_user_functions_become_rows_and_the_audit_carries_on(user_module):
    names = ["raises", "hangs", "wrong_shape", "garbage", "dies"]
    config = AuditConfig(
        implementations=[f"{user_module}:{n}" for n in names] + ["accurate"],
        losses=["binary_crossentropy"], formats=["float32"], regimes=["moderate"],
        examples=2, search=0, timeout=1.0,
    )  # fmt: skip
    frame = run_audit(config).frame()
    by_impl = {impl: group for impl, group in frame.groupby("implementation")}
    expected = {
        "raises": ("error", "ValueError: boom"),
        "hangs": ("timeout", "no answer within 1 s, twice"),
        "wrong_shape": ("error", "shape"),
        "garbage": ("error", "dtype <U12"),
        "dies": ("error", "exit code 3"),
    }
    for name, (status, note) in expected.items():
        rows = by_impl[f"{user_module}:{name}"]
        assert set(rows["status"]) == {status}, name
        assert rows["note"].str.contains(note, regex=False).all(), (name, set(rows["note"]))
    assert (by_impl["accurate"]["status"] == "ok").all()


ACCURATE_REGIMES = ["moderate", "saturating", "tiny", "infinite", "dominant", "offset", "linear",
                    "confident", "padded", "soft_labels", "pos_weight"]  # fmt: skip


def test_accurate_is_ok_in_every_format_and_regime():
    config = AuditConfig(implementations=["accurate"], regimes=ACCURATE_REGIMES, examples=3,
                         search=4, grad=True, seed=1)  # fmt: skip
    frame = run_audit(config).frame()
    assert set(frame["loss"]) == set(loss_names())
    assert set(frame["format"]) == {"float64", "float32", "float16", "bfloat16"}
    bad = frame[frame["status"] != "ok"]
    assert bad.empty, bad[["loss", "format", "regime", "quantity", "status", "ulps"]]


def test_accurate_is_ok_on_wide_rows():
    config = AuditConfig(implementations=["accurate"], regimes=["wide"], formats=["bfloat16"],
                         losses=["sparse_softmax_cross_entropy_with_logits"], examples=2,
                         search=0, grad=True)  # fmt: skip
    frame = run_audit(config).frame()
    assert len(frame) >= 2 and (frame["status"] == "ok").all()


def test_stable_never_gives_nan_on_finite_inputs():
    config = AuditConfig(
        implementations=["stable"],
        examples=3,
        regimes=["moderate", "saturating", "tiny", "dominant", "offset"],
    )
    result = run_audit(config)
    frame = result.frame()
    finite = frame["case_id"].map(lambda cid: bool(np.isfinite(
        result.cases[cid].predictions.astype(np.float64)).all()))  # fmt: skip
    assert finite.sum() > 100
    assert not (frame[finite]["status"] == "nan").any()


def test_targeted_search_adds_the_worst_case_it_finds():
    config = AuditConfig(implementations=["stable"], losses=["sigmoid_cross_entropy_with_logits"],
                         formats=["float16"], regimes=["moderate", "saturating"], examples=2,
                         search=10)  # fmt: skip
    result = run_audit(config)
    frame = result.frame()
    searched = frame[frame["origin"] == "search"]
    assert set(searched["regime"]) == {"moderate", "saturating"}
    assert set(searched["case_id"]) <= set(result.cases)
    # the search keeps its best: never below the best of its own first example
    assert searched["bits"].max() >= frame[frame["origin"] == "drawn"]["bits"].min()
    again = run_audit(config).frame()
    assert list(again["case_id"]) == list(frame["case_id"])  # deterministic per seed


def test_cases_are_deterministic_per_seed():
    ids = [c.id for c in draw_cases("softmax_cross_entropy_with_logits", "float32", "tiny", 5, 7)]
    again = [c.id for c in draw_cases("softmax_cross_entropy_with_logits", "float32", "tiny", 5, 7)]
    other = [c.id for c in draw_cases("softmax_cross_entropy_with_logits", "float32", "tiny", 5, 8)]
    assert ids == again and len(set(ids)) == 5
    assert ids != other


def test_an_interrupted_audit_keeps_what_it_measured():
    seen = []

    def progress(what, done, total):
        seen.append((what, done, total))
        if what.startswith("binary_crossentropy float32"):  # the second step
            raise KeyboardInterrupt

    config = AuditConfig(implementations=["naive"], losses=["binary_crossentropy"],
                         formats=["float64", "float32"], examples=2, search=0, jobs=1)  # fmt: skip
    result = run_audit(config, progress=progress)
    assert result.interrupted
    assert set(result.frame()["format"]) == {"float64"}  # the first step, whole
    # the progress counts the planned calls, each step's share once
    assert [d for _, d, _ in seen] == sorted(d for _, d, _ in seen)
    assert 0 < seen[-1][1] < seen[-1][2]
    assert any("drawing" in w for w, _, _ in seen) and any("calling naive" in w for w, _, _ in seen)


@pytest.fixture
def runner_pids(tmp_path, monkeypatch):
    """The pids of every implementation process the audit starts, in any process."""
    from stabcheck import runner

    log = tmp_path / "pids"
    start = runner.Runner._start

    def logged(self):
        start(self)
        with open(log, "a") as f:
            f.write(f"{self.process.pid}\n")

    monkeypatch.setattr(runner.Runner, "_start", logged)
    return lambda: [int(p) for p in log.read_text().split()] if log.exists() else []


def _alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


PARALLEL_CONFIG = dict(implementations=["naive", "stable"], losses=["binary_crossentropy",
                       "sparse_softmax_cross_entropy_with_logits"], formats=["float32"],
                       regimes=["moderate", "tiny", "wide"], examples=2, search=3,
                       grad=True)  # fmt: skip


def test_processes_give_the_same_result_as_one_and_leave_nothing_running(runner_pids):
    corpus = [Case.build("binary_crossentropy", [1e-10], [0.5], format="float32")]
    one = run_audit(AuditConfig(**PARALLEL_CONFIG, jobs=1), corpus=corpus)
    seen = []
    two = run_audit(AuditConfig(**PARALLEL_CONFIG, jobs=2), corpus=corpus,
                    progress=lambda what, done, total: seen.append(what))  # fmt: skip
    assert one.frame().equals(two.frame()) and len(two.rows) > 50
    assert set(two.frame()["origin"]) == {"drawn", "search", "corpus"}
    assert list(one.cases) == list(two.cases) and one.oracle_units == two.oracle_units
    steps = list(dict.fromkeys(what.split(":")[0] for what in seen))
    assert steps == ["binary_crossentropy float32", "sparse_softmax_cross_entropy_with_logits "
                     "float32", "corpus (1 cases)"]  # fmt: skip
    pids = runner_pids()
    # naive and stable share a process, which measures and searches the findings: one per run
    assert len(pids) == 2
    assert not [pid for pid in pids if _alive(pid)]


def test_an_interrupted_run_in_processes_keeps_whole_steps_in_order(runner_pids):
    from stabcheck import audit

    def progress(what, done, total):
        if what.startswith("binary_crossentropy float32") and "calling" in what:
            raise KeyboardInterrupt

    config = AuditConfig(implementations=["naive"], losses=["binary_crossentropy"],
                         formats=["float64", "float32"], examples=2, search=0, jobs=2)  # fmt: skip
    result = run_audit(config, progress=progress)
    frame = result.frame()
    assert result.interrupted and set(frame["format"]) == {"float64"}
    regimes = [r for loss, fmt, r in audit._groups(config.validated()) if fmt == "float64"]
    assert list(dict.fromkeys(frame["regime"])) == regimes and len(regimes) > 3
    assert not [pid for pid in runner_pids() if _alive(pid)]


def test_an_implementation_process_past_its_memory_limit_is_replaced(runner_pids, monkeypatch):
    from stabcheck import runner

    config = AuditConfig(implementations=["naive"], losses=["binary_crossentropy"],
                         formats=["float64"], regimes=["moderate", "saturating"], examples=3,
                         search=0, jobs=1, investigate=False)  # fmt: skip
    monkeypatch.setattr(runner, "BATCHED_BACKENDS", {"numpy"})  # naive's calls batched too
    kept = run_audit(config).frame()
    assert len(runner_pids()) == 1
    monkeypatch.setattr(runner, "RUNNER_MEMORY", 0)
    replaced = run_audit(config).frame()
    drawn = [c for r in ("moderate", "saturating") for c in draw_cases(
        "binary_crossentropy", "float64", r, 3, 0)]  # fmt: skip
    calls = len(runner.batches(drawn))
    assert 1 < calls < len(drawn)  # some batched, some not
    assert len(runner_pids()) == 1 + calls  # a fresh process for each call
    assert kept.equals(replaced)


# a pool broken by a process that died: CPython 3.11's executor thread may then fail to mark
# a future it already finished (InvalidStateError in terminate_broken), after the run
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
@pytest.mark.parametrize("failure", ["dies", "raises"])
def test_a_process_that_fails_or_dies_stops_the_run_with_the_step_named(monkeypatch, failure):
    import os

    from stabcheck import audit

    prepare = audit._prepare

    def broken(task):
        if task[2] == "tiny":
            if failure == "dies":
                os._exit(9)
            raise ValueError("a bug")
        return prepare(task)

    monkeypatch.setattr(audit, "_prepare", broken)
    config = AuditConfig(implementations=["naive"], losses=["binary_crossentropy"],
                         formats=["float64"], examples=1, search=0, jobs=2)  # fmt: skip
    with pytest.raises(RuntimeError, match=r"binary_crossentropy float64"):
        run_audit(config)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("examples", 0, "examples=0"),
        ("timeout", -1.0, "timeout=-1.0"),
        ("jobs", 0, "jobs=0"),
        ("losses", ["softmax"], "not a known loss"),
        ("formats", ["float8"], "not a known format"),
        ("regimes", ["hughe"], "not a known regime"),
        ("implementations", ["navie"], "navie"),
        ("timeout", float("inf"), "timeout=inf must be a number of seconds"),
        ("timeout", 1e7, "at most 604800"),
        ("max_ulps", float("nan"), "max_ulps=nan must be a finite"),
        ("seed", "1", "seed='1' must be an integer"),
        ("losses", "binary_crossentropy", "must be a list of names"),
        ("formats", [], "formats=\\[\\] is empty"),
    ],
)
def test_bad_configuration_is_refused_up_front(field, value, message):
    with pytest.raises(InvalidArgument, match=message):
        AuditConfig(**{field: value}).validated()


def test_names_are_canonical_and_each_given_once():
    config = AuditConfig(implementations=["naive", " naive"], losses=["log_loss",
                         "binary_crossentropy"], formats=["f32", "float32", "bf16"],
                         regimes=["moderate", "moderate"]).validated()  # fmt: skip
    assert config.implementations == ("naive",)
    assert config.losses == ("binary_crossentropy",)
    assert config.formats == ("float32", "bfloat16")
    assert config.regimes == ("moderate",)
    assert config.validated() == config


def test_wall_time_is_the_run_s_own():
    import time

    before = time.perf_counter()
    config = AuditConfig(
        implementations=["naive", "accurate"], losses=["binary_crossentropy"],
        formats=["float32"], regimes=["moderate"], examples=2, search=0,
    )  # fmt: skip
    result = run_audit(config)
    assert 0 < result.seconds <= time.perf_counter() - before


def test_corpus_cases_are_measured_with_their_origin():
    corpus = [
        Case.build("binary_crossentropy", [1e-10], [0.5], format="float64", regime="saturating"),
        Case.build("softmax_cross_entropy_with_logits", [[1000.0, 0.0]], [[0.0, 1.0]]),
    ]
    config = AuditConfig(
        implementations=["naive"], losses=["binary_crossentropy"], formats=["float64"],
        regimes=["moderate"], examples=1, search=0,
    )  # fmt: skip
    only = run_audit(config, corpus=corpus, draw=False).frame()
    assert set(only["origin"]) == {"corpus"}  # the softmax case is not selected
    assert set(only["case_id"]) == {corpus[0].id}
    both = run_audit(config, corpus=corpus).frame()
    assert set(both["origin"]) == {"drawn", "corpus"}
    # one implementation name, several losses: each case goes to the function of its loss
    mixed = run_audit(replace(config, implementations=["accurate"], losses=None, formats=None),
                      corpus=corpus, draw=False).frame()  # fmt: skip
    assert set(mixed["loss"]) == {c.loss.name for c in corpus}
    assert set(mixed["status"]) == {"ok"}


def test_a_call_that_times_out_once_is_retried_in_a_fresh_process(user_module, tmp_path,
                                                                  monkeypatch):  # fmt: skip
    monkeypatch.setenv("SLOW_ONCE_FLAG", str(tmp_path / "flag"))
    config = AuditConfig(
        implementations=[f"{user_module}:slow_once"], losses=["binary_crossentropy"],
        formats=["float64"], regimes=["moderate"], examples=2, search=0, timeout=1.0,
    )  # fmt: skip
    frame = run_audit(config).frame()
    assert (tmp_path / "flag").exists()
    assert "timeout" not in set(frame["status"]) and len(frame) > 0


def test_the_oracle_s_results_are_counted_by_path():
    from stabcheck.audit import AuditResult, _count
    from stabcheck.oracle.cache import cached

    into = AuditResult()
    x = np.linspace(-3, 3, 24)
    _count(into, cached(Case.build("sigmoid_cross_entropy_with_logits", x, np.full(24, 0.25)),
                        True))  # fmt: skip
    assert into.oracle_units == {"fast": 24, "mpmath": 0}  # ordinary elements: the fast path
    _count(into, cached(Case.build("binary_crossentropy", [0.5, 1.0], [1.0, 0.0]), False))
    assert into.oracle_units == {"fast": 24, "mpmath": 2}  # a small case goes to mpmath
    assert sum(into.oracle_cache.values()) == 2


def test_what_implementations_print_goes_to_the_report_s_log(user_module, tmp_path, capfd):
    from stabcheck.report import write_report

    config = AuditConfig(implementations=[f"{user_module}:chatty"],
                         losses=["binary_crossentropy"], formats=["float64"],
                         regimes=["moderate"], examples=2, search=0)  # fmt: skip
    result = run_audit(config)
    assert set(result.frame()["status"]) == {"ok"}
    out, err = capfd.readouterr()
    assert "a log line" not in out + err and "a warning" not in out + err  # not on the terminal
    [(name, text)] = result.printed.items()
    assert name == f"{user_module}:chatty" and "I tensorflow: a log line" in text
    write_report(result, config, tmp_path)
    log = (tmp_path / "log.txt").read_text()
    assert f"== {name} ==" in log and "W a warning" in log
