"""The pytest plugin and its engine: passing and failing checks, the message, the marker,
the options, the session report, bad arguments and raising functions."""

from __future__ import annotations

import csv
import json
import re
import shlex
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import settings
from hypothesis.database import InMemoryExampleDatabase

from stabcheck import cli
from stabcheck.case import Case
from stabcheck.check import DEFAULT_EXAMPLES, StabcheckFailure, check
from stabcheck.errors import AdapterUnavailable, InvalidArgument
from stabcheck.implementations.reference import accurate_sparse_softmax, naive_sparse_softmax

LOSS = "sparse_softmax_cross_entropy_with_logits"

# A module of loss functions the inner test files import.
HELPERS = textwrap.dedent(
    """
    import numpy as np

    from stabcheck.implementations.reference import (
        accurate_binary, accurate_sparse_softmax, naive_sparse_softmax,
    )

    LOSS = "sparse_softmax_cross_entropy_with_logits"

    def raises(x, k):
        raise ValueError("boom from the user's function")

    def torch_clamped_bce(p, z):  # torch's documented BCE: log clamped at -100
        with np.errstate(divide="ignore"):
            log_p = np.maximum(np.log(p), -100.0)
            log_q = np.maximum(np.log1p(-p), -100.0)
        return (-(z * log_p + (1 - z) * log_q)).astype(p.dtype)
    """
)


@pytest.fixture
def files(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makepyfile(losses=HELPERS)
    return pytester


def _outcome(result: pytest.RunResult) -> dict[str, int]:
    return {k: v for k, v in result.parseoutcomes().items() if k in ("passed", "failed", "errors")}


# -- the fixture --------------------------------------------------------------------------


def test_a_passing_check(files, run):
    files.makepyfile(
        """
        from losses import LOSS, accurate_sparse_softmax

        def test_accurate(stabcheck):
            result = stabcheck.check(accurate_sparse_softmax, LOSS, formats="float32",
                                     examples=10)
            assert result.passed and result.formats == ("float32",)
            assert "wide" not in result.regimes and len(result.regimes) == 6
            assert {row["status"] for row in result.rows} == {"ok"}
        """
    )
    result = run("-rP")
    assert _outcome(result) == {"passed": 1}
    result.stdout.fnmatch_lines(["*Captured stabcheck call*", "*accurate_sparse_softmax*passed*"])


def test_a_failing_check_says_what_where_and_how_to_reproduce(files, run, capsys):
    test_file = files.makepyfile(
        """
        from losses import LOSS, naive_sparse_softmax

        def test_naive(stabcheck):
            stabcheck.check(naive_sparse_softmax, LOSS, formats=["float32"],
                            regimes=["saturating", "dominant"], examples=10, seed=5)
        """
    )
    result = run()
    assert _outcome(result) == {"failed": 1}
    out = result.stdout.str()
    result.stdout.fnmatch_lines(
        [
            ">*stabcheck.check(naive_sparse_softmax, LOSS*",  # the user's line
            "E*naive_sparse_softmax is not accurate for " + LOSS + " (numpy backend, values)",
            "E*Failed cases: * / * in 2 of 2 format x regime groups",
            "E*format*regime*failed cases*failed outputs*how",
            "E*float32*saturating* / 10 (*%)*",
            "E*float32*dominant* / 10 (*%)*",
            "E*Worst case (float32, regime *, shrunk by hypothesis): loss[[]0[]]: *",
            "E*exact *",
            "E*expected *",
            "E*returned *",
            "E*ULPs *",
            "E*condition *",
            "E*Reproduce (hex floats are exact):",
            "E*stabcheck oracle " + LOSS + " --predictions '[[[[]*0x*' --labels '[[]*]' "
            "--format float32",
            "E*Case.from_json(*",
            "E*Tolerance: 4 ULPs*",
            "E*Seed 5: pass seed=5 (or --stabcheck-seed=5)*",
            "*Captured stabcheck call*",
        ]
    )
    assert re.search(r"(nan|overflow|underflow|inaccurate) \d+", out)  # counts per status
    for internal in ("stabcheck/check.py", "stabcheck/pytest_plugin.py", "hypothesis/core.py"):
        assert internal not in out
    assert f"{test_file.name}:4: StabcheckFailure" in out
    # The reproduction is one line that `stabcheck oracle` runs as printed.
    line = next(x for x in out.splitlines() if "stabcheck oracle" in x)
    argv = shlex.split(line[line.index("stabcheck oracle") :])[1:]
    capsys.readouterr()
    assert cli.main(argv) == 0
    expected = re.search(r"expected +(\S+)", out).group(1)
    assert repr(float(expected)) in capsys.readouterr().out or expected in ("inf", "nan")


def test_a_raising_function_is_status_error_with_its_traceback(files, run):
    files.makepyfile(
        """
        from losses import LOSS, raises

        def test_raises(stabcheck):
            stabcheck.check(raises, LOSS, formats="float32", regimes="moderate", examples=5)
        """
    )
    result = run()
    assert _outcome(result) == {"failed": 1}
    result.stdout.fnmatch_lines(
        [
            '*raise ValueError("boom from the user\'s function")',
            "E*ValueError: boom from the user's function",
            "*The above exception was the direct cause of the following exception:*",
            "E*losses:raises is not accurate for*",
            "E*float32*moderate*5 / 5 (100.0%)*error 5",
            "E*loss: error",
            "E*error *ValueError: boom from the user's function",
        ]
    )
    assert "stabcheck/check.py" not in result.stdout.str()
    assert "Flaky" not in result.stdout.str()


def test_allow_accepts_documented_clipping(files, run):
    files.makepyfile(
        """
        import pytest
        from losses import torch_clamped_bce

        def test_allowed(stabcheck):
            result = stabcheck.check(torch_clamped_bce, "binary_crossentropy",
                                     formats="float64", regimes=["moderate", "infinite"],
                                     examples=15, seed=1, allow={"clipped"})
            assert "clipped" in {row["status"] for row in result.rows}

        def test_not_allowed(stabcheck):
            stabcheck.check(torch_clamped_bce, "binary_crossentropy", formats="float64",
                            regimes=["moderate", "infinite"], examples=15, seed=1)
        """
    )
    result = run()
    assert _outcome(result) == {"passed": 1, "failed": 1}
    result.stdout.fnmatch_lines(["E*float64*infinite*clipped *", "E*: clipped"])


# -- the marker ---------------------------------------------------------------------------


def test_the_marker_checks_the_returned_function_or_fn(files, run):
    files.makepyfile(
        """
        import pytest
        from losses import LOSS, accurate_sparse_softmax, naive_sparse_softmax

        @pytest.mark.stabcheck(loss=LOSS, formats="float32", examples=5)
        def test_returned():
            return accurate_sparse_softmax

        @pytest.mark.stabcheck(LOSS, fn=accurate_sparse_softmax, formats="float32",
                               regimes=["moderate"], examples=5)
        def test_fn_keyword():
            pass

        @pytest.mark.stabcheck(loss=LOSS, formats="float32", regimes="saturating",
                               examples=5)
        @pytest.mark.parametrize("fn", [naive_sparse_softmax])
        def test_received(fn):
            return fn

        @pytest.mark.stabcheck(loss=LOSS)
        def test_returns_nothing():
            pass

        @pytest.mark.stabcheck(loss=LOSS, format="float32")
        def test_typo():
            return accurate_sparse_softmax
        """
    )
    result = run("-W", "error::pytest.PytestReturnNotNoneWarning")
    assert _outcome(result) == {"passed": 2, "failed": 3}
    result.stdout.fnmatch_lines_random(
        [
            "E*naive_sparse_softmax is not accurate for*",
            "E*test_returns_nothing is marked @pytest.mark.stabcheck but returned None*",
            "E*@pytest.mark.stabcheck got unknown argument format=...; it takes fn=, loss=, "
            "formats=*",
        ]
    )
    assert "stabcheck/pytest_plugin.py" not in result.stdout.str()


# -- options ------------------------------------------------------------------------------


def test_options_are_defaults_for_what_a_check_does_not_say(files, run):
    files.makepyfile(
        """
        from losses import LOSS, accurate_sparse_softmax, accurate_binary

        def test_defaults(stabcheck):
            result = stabcheck.check(accurate_sparse_softmax, LOSS, formats="float32")
            assert result.examples == 3 and result.seed == 77
            assert result.regimes == ("moderate", "offset")

        def test_own_arguments_win(stabcheck):
            result = stabcheck.check(accurate_sparse_softmax, LOSS, formats="float32",
                                     examples=2, seed=1, regimes=["tiny"])
            assert (result.examples, result.seed, result.regimes) == (2, 1, ("tiny",))

        def test_no_regime_applies(stabcheck):
            stabcheck.check(accurate_binary, "binary_crossentropy")
        """
    )
    result = run(
        "--stabcheck-examples=3", "--stabcheck-seed", "77", "--stabcheck-regimes=moderate,offset"
    )
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["stabcheck: examples=3, seed=77, regimes=moderate,offset"])
    result = run("-rs", "--stabcheck-regimes=offset", "-k", "no_regime")
    result.stdout.fnmatch_lines(["*--stabcheck-regimes=offset: none applies to binary_*"])


def test_the_same_seed_draws_the_same_cases(files, run, monkeypatch):
    files.makepyfile(
        """
        import json, os
        from losses import LOSS, accurate_sparse_softmax

        def test_seeded(stabcheck):
            result = stabcheck.check(accurate_sparse_softmax, LOSS, formats="float32",
                                     regimes="dominant", examples=5)
            with open(os.environ["CASES_OUT"], "a") as f:
                f.write(json.dumps(sorted(result.cases)) + "\\n")
        """
    )
    out = files.path / "cases.txt"
    monkeypatch.setenv("CASES_OUT", str(out))
    for seed in ("3", "3", "4"):
        run("--stabcheck-seed", seed).assert_outcomes(passed=1)
    first, again, other = out.read_text().splitlines()
    assert first == again != other


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--stabcheck-examples=0"], "*--stabcheck-examples: *'0' is not a positive integer*"),
        (["--stabcheck-seed=-1"], "*--stabcheck-seed: *'-1' is not a non-negative integer*"),
        (["--stabcheck-regimes=dominnt"], "*--stabcheck-regimes: regime='dominnt' is not a "
         "known regime. Did you mean 'dominant'?*"),
    ],
)  # fmt: skip
def test_bad_options_are_usage_errors(files, run, args, message):
    files.makepyfile("def test_nothing(): pass")
    result = run(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])


def test_the_session_report(files, run):
    files.makepyfile(
        """
        import pytest
        from losses import LOSS, accurate_sparse_softmax, naive_sparse_softmax

        def test_good(stabcheck):
            stabcheck.check(accurate_sparse_softmax, LOSS, formats="float32",
                            regimes="moderate", examples=4)

        @pytest.mark.stabcheck(loss=LOSS, formats="float32", regimes="saturating",
                               examples=4)
        def test_bad():
            return naive_sparse_softmax
        """
    )
    result = run("--stabcheck-report", "out/report")
    assert _outcome(result) == {"passed": 1, "failed": 1}
    report = files.path / "out" / "report"
    result.stdout.fnmatch_lines([f"stabcheck: 2 checks, 1 failed; report in {report}"])
    names = {p.name for p in report.iterdir()}
    assert names == {"measurements.csv", "findings.csv", "summary.md", "findings.md", "tables.md",
                     "cases.jsonl.gz", "run.json"}  # fmt: skip
    with open(report / "measurements.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["test"] for r in rows} == {"test_the_session_report.py::test_good",
                                         "test_the_session_report.py::test_bad"}  # fmt: skip
    assert {r["regime"] for r in rows} == {"moderate", "saturating"}
    assert any(r["origin"] == "shrunk" or r["status"] != "ok" for r in rows)
    summary = (report / "summary.md").read_text()
    assert "# stabcheck session" in summary and "**failed**" in summary
    assert "naive_sparse_softmax" in summary and "## At a glance" in summary
    findings = (report / "findings.md").read_text()
    assert "stabcheck oracle " + LOSS in findings
    assert {r["finding"] for r in rows if r["status"] != "ok"} <= set(
        line[4:] for line in findings.splitlines() if line.startswith("### F"))
    run_info = json.loads((report / "run.json").read_text())
    assert [c["passed"] for c in run_info["checks"]] == [True, False]
    assert not list(report.glob(".*"))  # no temporary files left behind


# -- the gate -------------------------------------------------------------------------------

GATED = """
from gated_loss import loss

def test_sigmoid(stabcheck):
    stabcheck.check(loss, "sigmoid_cross_entropy_with_logits", formats="float32",
                    regimes=["moderate", "saturating"], examples=6,
                    allow=["inaccurate", "underflow", "overflow", "nan"])
"""


def test_the_gate_fails_the_session_on_a_regression(files, run):
    def use(name: str) -> None:
        files.makepyfile(
            gated_loss=f"from stabcheck.implementations import reference\n\n"
            f"def loss(x, z):\n    return reference.{name}(x, z)\n"
        )

    use("stable_sigmoid")
    files.makepyfile(test_gated=GATED)
    result = run("--stabcheck-baseline", "b.json", "--stabcheck-update-baseline")
    assert result.ret == 0
    result.stdout.fnmatch_lines(["stabcheck: wrote 2 entries to *b.json"])
    entries = json.loads((files.path / "b.json").read_text())["entries"]
    assert {e["implementation"] for e in entries} == {
        "gated_loss:loss in test_gated.py::test_sigmoid"
    }

    result = run("--stabcheck-baseline", "b.json", subprocess=True)
    assert result.ret == 0
    result.stdout.fnmatch_lines(["stabcheck gate: passed, nothing worse than *b.json*"])

    use("naive_sigmoid")  # the check itself still passes: it allows every failure
    result = run("--stabcheck-baseline", "b.json", subprocess=True)
    assert _outcome(result) == {"passed": 1}
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines([
        "stabcheck gate: FAILED, * regression* against *b.json*",
        "*loss in test_gated.py::test_sigmoid*saturating*overflow*0*",
        "*pytest --stabcheck-baseline *b.json --stabcheck-update-baseline",
    ])  # fmt: skip
    assert (files.path / "b.obtained.json").exists()


def test_a_missing_baseline_is_a_usage_error(files, run):
    files.makepyfile("def test_nothing(): pass")
    result = run("--stabcheck-baseline", "none.json")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*none.json does not exist*--stabcheck-update-baseline*"])
    result = run("--stabcheck-update-baseline")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--stabcheck-update-baseline needs --stabcheck-baseline*"])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\x80\x04\x95\x10\x00", "*b.json is not UTF-8 text (it looks binary)*"),
        (b"\x1f\x8b\x08\x00\x00", "*b.json is not UTF-8 text (it looks gzip)*"),
        ('{"stabcheck_baseline": 1}'.encode("utf-16"), "*is not UTF-8 text (it looks UTF-16)*"),
        (b"[1, 2]", "*b.json is not a stabcheck baseline (it holds a JSON list*"),
    ],
)
def test_a_damaged_baseline_is_a_usage_error(files, run, content, message):
    files.makepyfile("def test_nothing(): pass")
    (files.path / "b.json").write_bytes(content)
    result = run("--stabcheck-baseline", "b.json")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("a_file", "*--stabcheck-report='*a_file' is a file, not a directory*"),
        ("a_file/sub", "*--stabcheck-report='*a_file/sub' cannot be used as a directory*"),
    ],
)
def test_a_report_folder_that_cannot_be_written_is_a_usage_error(files, run, target, message):
    files.makepyfile("def test_nothing(): pass")
    (files.path / "a_file").write_text("x")
    result = run("--stabcheck-report", target)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])


# -- bad arguments ------------------------------------------------------------------------


def test_bad_arguments_fail_the_test_with_the_fix(files, run):
    files.makepyfile(
        """
        from losses import LOSS, accurate_sparse_softmax

        def test_unknown_loss(stabcheck):
            stabcheck.check(accurate_sparse_softmax, "sparse_softmax_crossentropy")

        def test_bad_backend(stabcheck):
            stabcheck.check(accurate_sparse_softmax, LOSS, backend="pytorch")
        """
    )
    result = run()
    assert _outcome(result) == {"failed": 2}
    result.stdout.fnmatch_lines_random(
        [
            "E*InvalidArgument: loss='sparse_softmax_crossentropy' is not a known loss. Did "
            "you mean *'sparse_softmax_cross_entropy_with_logits'*",
            "E*InvalidArgument: backend='pytorch' is not supported. Did you mean 'torch'? "
            "Valid backends: numpy, torch, tensorflow, jax.",
            '>*stabcheck.check(accurate_sparse_softmax, "sparse_softmax_crossentropy")',
        ]
    )
    assert "stabcheck/losses.py" not in result.stdout.str()


def _fn(x, k):
    return accurate_sparse_softmax(x, k)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"loss": "nope"}, "loss='nope' is not a known loss"),
        ({"formats": "float31"}, "format='float31' is not a known format. Did you mean"),
        ({"formats": []}, "formats=() is empty"),
        ({"backend": "mxnet"}, "backend='mxnet' is not supported"),
        ({"grad": True}, "grad=True with backend='numpy' needs grad_fn="),
        ({"grad": 1}, "grad=1 must be True or False"),
        ({"regimes": "wide-ish"}, "regime='wide-ish' is not a known regime"),
        ({"regimes": "soft_labels"}, "regimes='soft_labels' does not apply to " + LOSS),
        ({"examples": 0}, "examples=0 is not valid; it must be a positive integer"),
        ({"seed": -2}, "seed=-2 must be a non-negative integer"),
        ({"max_ulps": -1}, "max_ulps=-1 must be a non-negative number"),
        ({"allow": {"cliped"}}, "allow='cliped' is not a status. Did you mean 'clipped'?"),
        ({"params": {"pos_weight": 2.0}},
         "params has 'pos_weight', but " + LOSS + " takes label_smoothing"),
        ({"params": {"label_smoothing": 2}},
         "label_smoothing=2 is not valid; it must be a number in [0, 1]"),
        ({"params": {"weight": [1.0, -1.0]}}, "weight[1]=-1.0 is not valid"),
        ({"params": {"reduction": "avg"}}, "reduction='avg' is not valid"),
        ({"params": {"softcap": 0.0}}, "softcap=0.0 is not valid; it must be a finite positive"),
        ({"fn": 3}, "fn=3 is not callable"),
        ({"fn": "losses_nowhere:f"}, "importing module 'losses_nowhere' failed"),
        ({"settings": {"max_examples": 3}}, "is not a hypothesis.settings"),
        ({"max_classes": 0}, "max_classes=0 is not valid"),
    ],
)
def test_every_bad_argument_is_named_with_the_fix(kwargs, message):
    kwargs = {"fn": _fn, "loss": LOSS, **kwargs}
    with pytest.raises(InvalidArgument, match=re.escape(message)):
        check(kwargs.pop("fn"), kwargs.pop("loss"), **kwargs)


def test_an_uninstalled_backend_names_the_extra(monkeypatch):
    from stabcheck.implementations import backends

    monkeypatch.setattr(backends, "installed", lambda module: False)
    with pytest.raises(AdapterUnavailable, match=r"pip install 'stabcheck\[jax\]'"):
        check(_fn, LOSS, backend="jax")


# -- the engine ---------------------------------------------------------------------------


def _smoothed(x, k, label_smoothing=0.0, *, wrong=False):
    """Sparse softmax cross-entropy with label smoothing in float64, rounded once:
    ``sum_j y_j (m - z_j) + sum_j y_j log1p(s)`` with ``m`` the maximum and ``s`` the sum of
    ``exp(z - m)`` over all but one maximum, so a loss near 0 keeps its digits; ``wrong``
    spreads the smoothing over C + 1 classes."""
    z = x.astype(np.float64)
    m = z.max(axis=1, keepdims=True)
    e = np.exp(z - m)
    e[np.arange(len(z)), z.argmax(axis=1)] = 0.0
    spread = z.shape[1] + (1 if wrong else 0)
    y = (np.arange(z.shape[1]) == k[:, None]) * (1 - label_smoothing) + label_smoothing / spread
    loss = (y * (m - z)).sum(axis=1) + y.sum(axis=1) * np.log1p(e.sum(axis=1))
    return loss.astype(x.dtype)


def _wrongly_smoothed(x, k, label_smoothing=0.0):
    return _smoothed(x, k, label_smoothing, wrong=True)


def test_options_the_function_takes_are_drawn_and_a_defect_is_found():
    """A function whose signature takes label_smoothing gets the label_smoothing regime; the
    one that spreads the smoothing over C + 1 classes fails there, and only there."""
    good = check(_smoothed, LOSS, formats="float32", regimes="label_smoothing", examples=20,
                 seed=0)  # fmt: skip
    assert good.passed and any("label_smoothing" in c.params for c in good.cases.values())
    with pytest.raises(StabcheckFailure) as info:
        check(_wrongly_smoothed, LOSS, formats="float32", regimes=("moderate", "label_smoothing"),
              examples=20, seed=0)  # fmt: skip
    failed = info.value.result.failed_groups
    assert [g.regime for g in failed] == ["label_smoothing"]
    assert "label_smoothing" in str(info.value)


def test_a_function_without_an_option_is_not_given_its_cases():
    result = check(_fn, LOSS, formats="float32", examples=3, seed=0)
    assert not set(result.regimes) & {"label_smoothing", "weight", "reduction", "softcap"}
    assert all(not c.params for c in result.cases.values())


def test_fixed_params_are_given_to_every_case():
    result = check(_smoothed, LOSS, formats="float16", regimes="moderate", examples=5, seed=0,
                   params={"label_smoothing": 0.25})  # fmt: skip
    assert result.passed
    assert {c.params["label_smoothing"] for c in result.cases.values()} == {0.25}


def test_defaults_skip_the_wide_regime_and_take_the_settings_examples():
    result = check(_fn, LOSS, formats="float32", regimes="moderate", settings=settings(
        max_examples=4), seed=0)  # fmt: skip
    assert result.examples == 4 and result.passed
    assert DEFAULT_EXAMPLES == check(_fn, LOSS, formats="float32", regimes="moderate").examples


def test_ci_derandomizes(monkeypatch):
    monkeypatch.setenv("CI", "true")
    runs = [check(_fn, LOSS, formats="float32", regimes="tiny", examples=4) for _ in range(2)]
    assert runs[0].seed == runs[1].seed == 0
    assert list(runs[0].cases) == list(runs[1].cases)
    monkeypatch.delenv("CI")
    random = settings(derandomize=False)  # hypothesis loads its "ci" profile when imported in CI
    seeds = {
        check(_fn, LOSS, formats="float32", regimes="tiny", examples=1, settings=random).seed
        for _ in "ab"
    }
    assert len(seeds) == 2


@pytest.fixture
def profile():
    """Load a hypothesis settings profile for one test, then the one loaded before."""
    previous = settings.get_current_profile_name()

    def load(name: str, **values: object) -> None:
        settings.register_profile(name, **values)
        settings.load_profile(name)

    yield load
    settings.load_profile(previous)


def test_the_loaded_profile_is_respected(profile, monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    profile("stabcheck-test-derandomized", derandomize=True, max_examples=1000)
    result = check(_fn, LOSS, formats="float32", regimes="tiny")
    assert result.seed == 0  # derandomized, as under CI
    assert result.examples == DEFAULT_EXAMPLES  # a profile's max_examples is for @given tests
    db = InMemoryExampleDatabase()
    profile("stabcheck-test-database", database=db, derandomize=False)
    with pytest.raises(StabcheckFailure):
        check(two_rows_fail, LOSS, formats="float32", regimes="moderate", examples=20)
    assert db.data  # the profile's database got the failure


def two_rows_fail(x, k):
    """Accurate, except on inputs of two rows or more (never the simplest case)."""
    out = accurate_sparse_softmax(x, k)
    return out if len(x) < 2 else np.full_like(out, np.nan)


def test_a_failure_is_saved_and_replayed_from_the_example_database(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    db = InMemoryExampleDatabase()
    own = settings(database=db, derandomize=False)
    with pytest.raises(StabcheckFailure) as first:
        check(two_rows_fail, LOSS, formats="float32", regimes="moderate", examples=30,
              seed=1, settings=own)  # fmt: skip
    assert first.value.result.failed_groups[0].finding.shrunk
    assert db.data  # the shrunk failure was saved
    # One example draws only the simplest case, which passes: the failure comes from the
    # database.
    with pytest.raises(StabcheckFailure, match="replayed from the example database") as again:
        check(two_rows_fail, LOSS, formats="float32", regimes="moderate", examples=1,
              seed=2, settings=own)  # fmt: skip
    assert again.value.result.groups[0].failed_cases == 0
    # Without the database the simplest case passes.
    check(two_rows_fail, LOSS, formats="float32", regimes="moderate", examples=1, seed=2,
          settings=settings(database=None))  # fmt: skip


def test_a_case_replays_with_the_printed_json():
    with pytest.raises(StabcheckFailure) as failure:
        check(naive_sparse_softmax, LOSS, formats="float32", regimes="saturating", examples=8,
              seed=3)  # fmt: skip
    message = str(failure.value)
    text = re.search(r"Case\.from_json\((.*)\)  #", message).group(1)
    case = Case.from_json(eval(text))  # the printed repr of a str
    finding = failure.value.result.failed_groups[0].finding
    assert case.id == finding.case.id
    got = naive_sparse_softmax(case.predictions, case.labels)
    row = finding.row
    assert np.array_equal(got.astype(np.float64)[int(row["index"])], row["got"], equal_nan=True)


def test_torch_with_autograd_gradients():
    torch = pytest.importorskip("torch")

    def torch_ce(x, k):
        return torch.nn.functional.cross_entropy(x, k, reduction="none")

    result = check(torch_ce, LOSS, formats="float32", backend="torch", grad=True,
                   regimes="moderate", examples=6, seed=0, max_ulps=64)  # fmt: skip
    assert {row["quantity"] for row in result.rows} == {"value", "gradient"}
    assert result.backend == "torch" and result.grad


# -- loading ------------------------------------------------------------------------------


def test_importing_the_plugin_imports_nothing_heavy():
    code = (
        "import sys, stabcheck.pytest_plugin\n"
        "heavy = ['pandas', 'hypothesis', 'torch', 'tensorflow', 'jax', 'matplotlib',\n"
        "         'stabcheck.check', 'stabcheck.oracle', 'stabcheck.strategies']\n"
        "print([m for m in heavy if m in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_entry_point_loads_the_plugin(files, tmp_path, monkeypatch):
    """With the pytest11 entry point installed (a dist-info on the path stands in for it)
    pytest loads the plugin by itself."""
    info = tmp_path / "entry" / "stabcheck_entry_point-0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: stabcheck-entry-point\n"
                                   "Version: 0\n")  # fmt: skip
    (info / "entry_points.txt").write_text("[pytest11]\nstabcheck = stabcheck.pytest_plugin\n")
    monkeypatch.setenv("PYTHONPATH", str(info.parent))
    files.makepyfile(
        """
        def test_fixture(stabcheck):
            assert type(stabcheck).__module__ == "stabcheck.pytest_plugin"
        """
    )
    result = files.runpytest_subprocess("-p", "no:cacheprovider", "--stabcheck-seed=1")
    result.assert_outcomes(passed=1)


def test_alongside_xdist(files, run):
    pytest.importorskip("xdist")
    files.makepyfile(
        """
        import pytest
        from losses import LOSS, accurate_sparse_softmax

        @pytest.mark.parametrize("seed", [1, 2])
        def test_checks(stabcheck, seed):
            stabcheck.check(accurate_sparse_softmax, LOSS, formats="float32",
                            regimes="moderate", examples=3, seed=seed)
        """
    )
    result = run("-p", "xdist", "-n", "2", "--stabcheck-report", "rep", subprocess=True)
    result.assert_outcomes(passed=2)
    rows = (files.path / "rep" / "measurements.csv").read_text()
    assert "test_checks[1]" in rows and "test_checks[2]" in rows


def test_hypothesis_plugin_options_do_not_conflict(files, run):
    files.makepyfile(
        """
        from hypothesis import given, strategies as st
        from losses import LOSS, accurate_sparse_softmax

        @given(st.integers())
        def test_hypothesis_alone(n):
            pass

        def test_stabcheck(stabcheck):
            stabcheck.check(accurate_sparse_softmax, LOSS, formats="float32",
                            regimes="moderate", examples=3)
        """
    )
    result = run("--hypothesis-seed=0", "--hypothesis-show-statistics", "--stabcheck-seed=0")
    result.assert_outcomes(passed=2)
