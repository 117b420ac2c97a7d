"""The plugin's options as ini keys, in ``pytest.ini`` and in ``pyproject.toml``: checked as
the options are, relative paths taken from the file's folder, the command line winning."""

from __future__ import annotations

import json
import textwrap

import pytest

# An inner test that prints what its check used.
SHOWS_SETTINGS = textwrap.dedent(
    """
    from stabcheck.implementations.reference import accurate_sparse_softmax

    LOSS = "sparse_softmax_cross_entropy_with_logits"

    def test_settings(stabcheck):
        result = stabcheck.check(accurate_sparse_softmax, LOSS, formats="float32")
        print("USED", result.examples, result.seed, ",".join(result.regimes))
    """
)


def _pytest_ini(pytester: pytest.Pytester, body: str) -> None:
    pytester.makefile(".ini", pytest="[pytest]\n" + textwrap.dedent(body))


def test_pytest_ini_sets_the_defaults_and_the_command_line_wins(pytester, run):
    _pytest_ini(
        pytester,
        """
        stabcheck_examples = 3
        stabcheck_seed = 77
        stabcheck_regimes = moderate,offset
        """,
    )
    pytester.makepyfile(SHOWS_SETTINGS)
    result = run("-s")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["stabcheck: examples=3, seed=77, regimes=moderate,offset",
                                 "*USED 3 77 moderate,offset*"])  # fmt: skip
    result = run("-s", "--stabcheck-examples=2", "--stabcheck-seed", "5",
                 "--stabcheck-regimes=tiny")  # fmt: skip
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*USED 2 5 tiny*"])
    result = run("-s", "-o", "stabcheck_seed=6")  # -o overrides a key of the file
    result.stdout.fnmatch_lines(["*USED 3 6 moderate,offset*"])


def test_the_command_line_wins_over_a_bad_ini_value(pytester, run):
    _pytest_ini(pytester, "stabcheck_examples = lots\n")
    pytester.makepyfile(SHOWS_SETTINGS)
    result = run("-s", "--stabcheck-examples=2", "--stabcheck-regimes=moderate")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*USED 2 * moderate*"])
    assert run().ret == pytest.ExitCode.USAGE_ERROR  # read when the command line is silent


def test_pyproject_toml_with_toml_types_and_paths_relative_to_the_file(pytester, run):
    pytester.makepyprojecttoml(
        """
        [tool.pytest.ini_options]
        stabcheck_examples = 2
        stabcheck_regimes = ["moderate", "offset"]
        stabcheck_report = "out/report"
        stabcheck_baseline = "gate/baseline.json"
        stabcheck_update_baseline = true
        """
    )
    tests = pytester.mkdir("tests")
    (tests / "test_settings.py").write_text(SHOWS_SETTINGS)
    # started in tests/: the paths are still relative to pyproject.toml's folder
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tests)
        result = run("-s")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*USED 2 0 moderate,offset*"])  # seed 0: there is a baseline
    baseline = pytester.path / "gate" / "baseline.json"
    result.stdout.fnmatch_lines([f"stabcheck: wrote * entries to {baseline}"])
    assert json.loads(baseline.read_text())["entries"]
    assert (pytester.path / "out" / "report" / "summary.md").exists()
    assert not (tests / "out").exists()
    # Now compare with it: -o turns the file's update off, and the report off.
    (pytester.path / "out" / "report" / "summary.md").unlink()
    result = run("-o", "stabcheck_update_baseline=false", "-o", "stabcheck_report=")
    result.assert_outcomes(passed=1)
    assert result.ret == 0
    result.stdout.fnmatch_lines(["stabcheck gate: passed, nothing worse than *baseline.json*"])
    assert not (pytester.path / "out" / "report" / "summary.md").exists()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("stabcheck_examples = 0", "stabcheck_examples in */pytest.ini: '0' is not a positive "
         "integer; set it to a positive integer, e.g. stabcheck_examples = 30"),
        ("stabcheck_seed = -1", "stabcheck_seed in */pytest.ini: '-1' is not a non-negative "
         "integer; set it to a non-negative integer, e.g. stabcheck_seed = 0"),
        ("stabcheck_seed = random", "stabcheck_seed in */pytest.ini: 'random' is not a *"),
        ("stabcheck_regimes = dominnt", "stabcheck_regimes in */pytest.ini: regime='dominnt' is "
         "not a known regime. Did you mean 'dominant'?*"),
        ("stabcheck_update_baseline = maybe", "stabcheck_update_baseline in */pytest.ini: "
         "'maybe' is not true or false; set it to true or false, e.g. *"),
        ("stabcheck_update_baseline = yes", "stabcheck_update_baseline in */pytest.ini: it needs "
         "a baseline to write: pass --stabcheck-baseline FILE or set stabcheck_baseline = FILE*"),
        ("stabcheck_report = a_file", "stabcheck_report in */pytest.ini: stabcheck_report='*"
         "a_file' is a file, not a directory; give a directory"),
        ("stabcheck_baseline = none.json", "stabcheck_baseline in */pytest.ini: *none.json does "
         "not exist*"),
        ("stabcheck_baseline = a_dir\nstabcheck_update_baseline = true", "stabcheck_baseline in "
         "*/pytest.ini: stabcheck_baseline='*a_dir' is a directory; give a file name"),
    ],
)  # fmt: skip
def test_a_bad_ini_value_is_a_usage_error_naming_the_key_and_the_fix(pytester, run, body,
                                                                      message):  # fmt: skip
    _pytest_ini(pytester, body + "\n")
    (pytester.path / "a_file").write_text("x")
    (pytester.path / "a_dir").mkdir()
    pytester.makepyfile("def test_nothing(): pass")
    result = run()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*" + message])


def test_a_bad_value_in_pyproject_toml_names_that_file(pytester, run):
    pytester.makepyprojecttoml("[tool.pytest.ini_options]\nstabcheck_examples = -3\n")
    pytester.makepyfile("def test_nothing(): pass")
    result = run()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*stabcheck_examples in */pyproject.toml: '-3' is not a "
                                 "positive integer*"])  # fmt: skip


def test_every_option_has_an_ini_key(pytester):
    result = pytester.runpytest("-p", "no:stabcheck", "-p", "stabcheck.pytest_plugin", "--help")
    out = result.stdout.str()
    for option in ("examples", "seed", "regimes", "report", "baseline", "update-baseline"):
        assert f"--stabcheck-{option}" in out
        assert f"stabcheck_{option.replace('-', '_')} " in out
