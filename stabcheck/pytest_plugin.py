"""The stabcheck pytest plugin: the ``stabcheck`` fixture and marker, options, session report.

Registered through the ``pytest11`` entry point (``stabcheck = "stabcheck.pytest_plugin"``);
without it, load it with ``-p stabcheck.pytest_plugin``. Importing this module imports pytest
and the standard library only (besides the ``stabcheck`` package's core); the engine
(``stabcheck.check``), hypothesis and pandas are imported when a check runs, a framework
only when a check asks for its backend.

The fixture::

    def test_my_loss_is_stable(stabcheck):
        stabcheck.check(my_softmax_ce, loss="sparse_softmax_cross_entropy_with_logits",
                        formats=["float32", "bfloat16"], backend="torch", grad=True)

The marker checks the marker's ``fn=``, or else what the test returns (so a test can
receive the function from a fixture or ``parametrize`` and return it)::

    @pytest.mark.stabcheck(loss="binary_crossentropy", formats=["float32"])
    def test_bce():
        return my_bce

It is implemented by a ``pytest_pyfunc_call`` hookwrapper that swaps the test function for
one that calls it and then runs the check, so the check runs in the test's call phase, with
its fixtures set up, and fails the test like an assertion would.

Options are defaults for what a check does not say (its own arguments win):
``--stabcheck-examples N`` cases per format and regime, ``--stabcheck-seed N`` the seed of
every check, ``--stabcheck-regimes a,b`` (or ``all``) the regimes (those that apply to each
loss), ``--stabcheck-report DIR`` writes the measurements of the whole session (CSV and
markdown, as the audit does). Under pytest-xdist each worker sends its measurements to the
controller, which writes the report.

Each option has an ini key of the same name with underscores (``stabcheck_examples``,
``stabcheck_seed``, ``stabcheck_regimes``, ``stabcheck_report``, ``stabcheck_baseline``,
``stabcheck_update_baseline``) for ``pytest.ini`` or ``[tool.pytest.ini_options]``, checked
as the option is; the command line wins over the file (``-o key=value`` overrides a key).
Relative paths in the file are relative to the file, on the command line to the directory
pytest was started in.

The gate (``stabcheck.gate``): ``--stabcheck-baseline FILE`` compares what the session's
checks measured with FILE, per test and function x loss x format x regime x quantity, and
fails the session (exit status 1) on a regression, listing it in the terminal summary and
writing the session's entries to ``FILE.obtained.json``; entries of tests that did not run
are not compared. ``--stabcheck-update-baseline`` writes FILE instead. With a baseline,
checks that give no seed use seed 0, so the session measures the same cases each time.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest

EXAMPLES_OPTION = "--stabcheck-examples"
SEED_OPTION = "--stabcheck-seed"
REGIMES_OPTION = "--stabcheck-regimes"
REPORT_OPTION = "--stabcheck-report"
BASELINE_OPTION = "--stabcheck-baseline"
UPDATE_BASELINE_OPTION = "--stabcheck-update-baseline"
MARKER = "stabcheck"
SECTION = "stabcheck"
_WORKER_OUTPUT = "stabcheck"


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a non-negative integer")
    return value


def _names(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip())


_FLAGS = {"true": True, "yes": True, "on": True, "1": True,
          "false": False, "no": False, "off": False, "0": False}  # fmt: skip


def _flag(text: str) -> bool:
    value = _FLAGS.get(text.strip().lower())
    if value is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not true or false")
    return value


def _ini_key(option: str) -> str:
    """The ini key of a command-line option: ``--stabcheck-examples`` -> ``stabcheck_examples``."""
    return option.removeprefix("--").replace("-", "_")


# option: (type of its ini key, an example value for the fix, what the value is)
_INI = {
    EXAMPLES_OPTION: ("string", "30", "a positive integer"),
    SEED_OPTION: ("string", "0", "a non-negative integer"),
    REGIMES_OPTION: ("args", "moderate,saturating", "regime names, comma-separated, or all"),
    REPORT_OPTION: ("string", "stabcheck-report", "a directory"),
    BASELINE_OPTION: ("string", "stabcheck-baseline.json", "a baseline file"),
    UPDATE_BASELINE_OPTION: ("string", "true", "true or false"),
}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("stabcheck", "stabcheck: accuracy of cross-entropy losses")
    helps = {
        EXAMPLES_OPTION: "cases per format and regime for checks that do not say (default 30)",
        SEED_OPTION: "seed of every check that does not say (default: random, 0 under CI)",
        REGIMES_OPTION: "comma-separated regimes (or 'all') for checks that do not say; each "
        "check uses those that apply to its loss",
        REPORT_OPTION: "write the session's measurements into DIR: measurements.csv, "
        "summary.md, findings.md, findings.csv, tables.md, cases.jsonl.gz, run.json",
        BASELINE_OPTION: "fail the session when a check is less accurate than in this "
        "baseline (stabcheck gate's format); checks without a seed use seed 0",
        UPDATE_BASELINE_OPTION: f"write the session's results to the {BASELINE_OPTION} file "
        "instead of comparing",
    }
    group.addoption(EXAMPLES_OPTION, type=_positive_int, metavar="N",
                    help=helps[EXAMPLES_OPTION])  # fmt: skip
    group.addoption(SEED_OPTION, type=_seed, metavar="N", help=helps[SEED_OPTION])
    group.addoption(REGIMES_OPTION, type=_names, metavar="A,B", help=helps[REGIMES_OPTION])
    group.addoption(REPORT_OPTION, metavar="DIR", help=helps[REPORT_OPTION])
    group.addoption(BASELINE_OPTION, metavar="FILE", help=helps[BASELINE_OPTION])
    # default None, not False: absent from the command line, the ini key decides
    group.addoption(UPDATE_BASELINE_OPTION, action="store_true", default=None,
                    help=helps[UPDATE_BASELINE_OPTION])  # fmt: skip
    for option, (kind, _, _) in _INI.items():
        parser.addini(_ini_key(option), f"default of {option}: {helps[option]}", type=kind,
                      default=None)  # fmt: skip


class _Setting:
    """One option's value: from the command line, else from its ini key (``None`` when
    neither gives it), with where it came from for messages and relative paths."""

    def __init__(self, config: pytest.Config, option: str) -> None:
        self.option, self.key = option, _ini_key(option)
        self.value: Any = config.getoption(option)
        self.from_ini = False
        self.inifile = str(config.inipath) if config.inipath else "the ini options (-o)"
        self.base = Path(config.invocation_params.dir)
        if self.value is not None:
            return
        raw = config.getini(self.key)
        _, example, what = _INI[option]
        text = ",".join(raw) if isinstance(raw, list) else "" if raw is None else str(raw)
        if not text.strip():  # unset, or emptied by -o key= to turn the file's value off
            return
        self.from_ini = True
        if config.inipath is not None:  # pytest's rule for the "paths" ini type
            self.base = config.inipath.parent
        parse = {EXAMPLES_OPTION: _positive_int, SEED_OPTION: _seed, REGIMES_OPTION: _names,
                 UPDATE_BASELINE_OPTION: _flag}  # fmt: skip
        try:
            self.value = parse[option](text) if option in parse else text.strip()
        except argparse.ArgumentTypeError as exc:
            raise self.error(f"{exc}; set it to {what}, e.g. {self.key} = {example}") from None

    @property
    def name(self) -> str:
        """The name the user gave it by: the option, or the ini key."""
        return self.key if self.from_ini else self.option

    def error(self, message: str) -> pytest.UsageError:
        """A usage error that names the option, or the ini key and its file."""
        where = f" in {self.inifile}" if self.from_ini else ""
        return pytest.UsageError(f"{self.name}{where}: {message}")

    def path(self) -> Path | None:
        """The value as a path: relative to the ini file when it came from there, else to
        the directory pytest was started in."""
        return None if not self.value else self.base / str(self.value)


class _Session:
    """What the session's checks measured, and the options (command line, else ini file)."""

    def __init__(self, config: pytest.Config) -> None:
        self.settings = {option: _Setting(config, option) for option in _INI}
        self.examples: int | None = self.settings[EXAMPLES_OPTION].value
        self.seed: int | None = self.settings[SEED_OPTION].value
        self.regimes: tuple[str, ...] | None = self.settings[REGIMES_OPTION].value or None
        self.report = self.settings[REPORT_OPTION].path()
        self.baseline = self.settings[BASELINE_OPTION].path()
        self.update_baseline: bool = bool(self.settings[UPDATE_BASELINE_OPTION].value)
        if self.baseline is not None and self.seed is None:
            self.seed = 0  # a baseline compares the same cases every time
        self.worker = hasattr(config, "workerinput")
        self.keep_rows = self.report is not None or self.baseline is not None or self.worker
        self.expected: Any = None  # the baseline, loaded at start (stabcheck.gate.Baseline)
        self.gate_text = ""
        self.checks: list[dict[str, Any]] = []
        self.rows: list[dict[str, Any]] = []
        self.cases: dict[str, Any] = {}  # id -> Case, or its dict when it came from a worker
        self.written: Path | None = None
        self.report_error = ""

    def record(self, result: Any, test: str) -> None:
        from stabcheck.check import check_record

        self.checks.append(check_record(result, test))
        if self.keep_rows:
            self.rows.extend({**row, "test": test} for row in result.rows)
            self.cases.update(result.cases)

    def export(self) -> str:
        cases = {k: v if isinstance(v, dict) else v.to_dict() for k, v in self.cases.items()}
        return json.dumps({"checks": self.checks, "rows": self.rows, "cases": cases})

    def merge(self, text: str) -> None:
        data = json.loads(text)
        self.checks.extend(data["checks"])
        self.rows.extend(data["rows"])
        self.cases.update(data["cases"])


_STATE = pytest.StashKey[_Session]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}(loss, *, fn=None, formats=..., backend='numpy', grad=False, regimes=None, "
        "examples=None, max_ulps=4, allow=()): check the loss function given as fn=, or "
        "returned by the test, against stabcheck's exact oracle",
    )
    state = _Session(config)
    settings = state.settings
    if state.regimes and state.regimes != ("all",):
        from stabcheck.errors import InvalidArgument
        from stabcheck.strategies import get_regime

        try:
            state.regimes = tuple(get_regime(name).name for name in state.regimes)
        except InvalidArgument as exc:
            raise settings[REGIMES_OPTION].error(str(exc)) from None
    if state.update_baseline and state.baseline is None:
        if not settings[UPDATE_BASELINE_OPTION].from_ini:
            raise pytest.UsageError(f"{UPDATE_BASELINE_OPTION} needs {BASELINE_OPTION} FILE")
        raise settings[UPDATE_BASELINE_OPTION].error(
            f"it needs a baseline to write: pass {BASELINE_OPTION} FILE or set "
            f"{_ini_key(BASELINE_OPTION)} = FILE, or set it to false"
        )
    if state.report is not None and not state.worker:
        from stabcheck._files import output_directory
        from stabcheck.errors import InvalidArgument

        report = settings[REPORT_OPTION]
        try:  # fail now, not after the tests
            output_directory(state.report, report.name)
        except InvalidArgument as exc:  # the message names the option already
            error = report.error(str(exc)) if report.from_ini else pytest.UsageError(str(exc))
            raise error from None
    if state.baseline is not None and state.update_baseline and not state.worker:
        from stabcheck._files import writable_file
        from stabcheck.errors import InvalidArgument

        baseline = settings[BASELINE_OPTION]
        try:  # fail now, not after the tests (its folder is made if needed)
            writable_file(state.baseline, baseline.name)
        except InvalidArgument as exc:
            raise baseline.error(str(exc)) from None
    if state.baseline is not None and not state.update_baseline and not state.worker:
        from stabcheck.errors import InvalidArgument
        from stabcheck.gate import Baseline

        try:  # fail now, not after the tests
            state.expected = Baseline.load(state.baseline, _update_command(state.baseline))
        except InvalidArgument as exc:
            raise settings[BASELINE_OPTION].error(str(exc)) from None
    config.stash[_STATE] = state


def pytest_report_header(config: pytest.Config) -> str | None:
    state = config.stash.get(_STATE, None)
    if state is None:
        return None
    given = {"examples": state.examples, "seed": state.seed, "report": state.report,
             "baseline": state.baseline}  # fmt: skip
    if state.regimes:
        given["regimes"] = ",".join(state.regimes)
    parts = [f"{k}={v}" for k, v in given.items() if v is not None]
    return f"stabcheck: {', '.join(parts)}" if parts else None


class Stabcheck:
    """The ``stabcheck`` fixture: ``check`` applies the command-line defaults, runs
    ``stabcheck.check.check`` and records the result for the session report."""

    def __init__(self, item: pytest.Item) -> None:
        self._item = item

    def check(self, fn: Any, loss: str, **kwargs: Any) -> Any:
        """Check ``fn`` on ``loss`` (see ``stabcheck.check.check`` for the arguments);
        return the ``CheckResult``, or raise ``StabcheckFailure`` (an AssertionError)."""
        __tracebackhide__ = True
        from stabcheck.check import StabcheckFailure, check

        state = self._item.config.stash[_STATE]
        kwargs = _with_defaults(state, loss, kwargs)
        try:
            result = check(fn, loss, **kwargs)
        except StabcheckFailure as failure:
            self._record(state, failure.result)
            raise
        self._record(state, result)
        return result

    def _record(self, state: _Session, result: Any) -> None:
        state.record(result, self._item.nodeid)
        self._item.add_report_section("call", SECTION, result.summary())


def _with_defaults(state: _Session, loss: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    out = dict(kwargs)
    if state.examples is not None and out.get("examples") is None and out.get("settings") is None:
        out["examples"] = state.examples
    if state.seed is not None and out.get("seed") is None:
        out["seed"] = state.seed
    if state.regimes and out.get("regimes") is None:
        if state.regimes == ("all",):
            out["regimes"] = "all"
        else:
            from stabcheck.strategies import regimes_for

            applicable = regimes_for(loss)
            chosen = [r for r in state.regimes if r in applicable]
            if not chosen:
                pytest.skip(
                    f"{REGIMES_OPTION}={','.join(state.regimes)}: none applies to {loss} "
                    f"(its regimes: {', '.join(applicable)})"
                )
            out["regimes"] = chosen
    return out


@pytest.fixture
def stabcheck(request: pytest.FixtureRequest) -> Stabcheck:
    """Check loss functions against stabcheck's exact oracle: ``stabcheck.check(fn, loss,
    formats=..., backend=..., grad=..., regimes=..., examples=..., max_ulps=...,
    allow=...)``."""
    return Stabcheck(request.node)


# -- the marker -----------------------------------------------------------------------------


@pytest.hookimpl(hookwrapper=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> Any:
    marker = pyfuncitem.get_closest_marker(MARKER)
    if marker is None:
        yield
        return
    original = pyfuncitem.obj
    pyfuncitem.obj = _marked(original, pyfuncitem, marker)
    try:
        yield
    finally:
        pyfuncitem.obj = original


def _marked(function: Any, item: pytest.Function, marker: pytest.Mark) -> Any:
    def call_then_check(*args: Any, **kwargs: Any) -> None:
        __tracebackhide__ = True
        returned = function(*args, **kwargs)
        _check_marked(item, marker, returned)

    return call_then_check


def _check_marked(item: pytest.Function, marker: pytest.Mark, returned: Any) -> None:
    __tracebackhide__ = True
    import inspect

    from stabcheck.check import check
    from stabcheck.errors import InvalidArgument

    kwargs = dict(marker.kwargs)
    valid = [p for p in inspect.signature(check).parameters if p != "fn"]
    unknown = sorted(set(kwargs) - {"fn", *valid})
    if unknown:
        raise InvalidArgument(
            f"@pytest.mark.{MARKER} got unknown argument {unknown[0]}=...; it takes fn=, "
            f"{', '.join(f'{p}=' for p in valid)}"
        )
    if len(marker.args) > 1 or (marker.args and "loss" in kwargs):
        raise InvalidArgument(
            f"@pytest.mark.{MARKER}{marker.args!r}: give the loss once, as the only positional "
            "argument or as loss=...; pass the rest by keyword"
        )
    if marker.args:
        kwargs["loss"] = marker.args[0]
    if "loss" not in kwargs:
        raise InvalidArgument(f"@pytest.mark.{MARKER} needs loss=..., the loss to check")
    fn = kwargs.pop("fn", None)
    if fn is not None and returned is not None:
        raise InvalidArgument(
            f"{item.nodeid} returned {returned!r} and its @pytest.mark.{MARKER} has "
            f"fn={fn!r}: give the function once, by returning it or as fn="
        )
    fn = fn if fn is not None else returned
    if fn is None:
        raise InvalidArgument(
            f"{item.nodeid} is marked @pytest.mark.{MARKER} but returned None; return the "
            "loss function from the test, or pass fn=... to the marker"
        )
    Stabcheck(item).check(fn, **kwargs)


# -- the session report ---------------------------------------------------------------------


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    """pytest-xdist: merge what a worker measured."""
    state = node.config.stash.get(_STATE, None)
    output = getattr(node, "workeroutput", {}).get(_WORKER_OUTPUT)
    if state is not None and output:
        state.merge(output)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    state = session.config.stash.get(_STATE, None)
    if state is None:
        return
    if state.worker:
        session.config.workeroutput[_WORKER_OUTPUT] = state.export()  # type: ignore[attr-defined]
        return
    if state.baseline is not None:
        _gate(session, state, state.baseline)
    if state.report is None:
        return
    from stabcheck.case import Case
    from stabcheck.check import write_session_report

    try:
        cases = {k: Case.from_json(v) if isinstance(v, dict) else v for k, v in state.cases.items()}
        write_session_report(state.checks, state.rows, cases, state.report)
        state.written = state.report
    except Exception as exc:  # a report that cannot be written must not hide the results
        state.report_error = f"{type(exc).__name__}: {exc}"


def _update_command(path: Path) -> str:
    return f"pytest {BASELINE_OPTION} {path} {UPDATE_BASELINE_OPTION}"


def _gate(session: pytest.Session, state: _Session, path: Path) -> None:
    """Compare the session's entries with the baseline at ``path``, or write them there."""
    from stabcheck.audit import AuditConfig, AuditResult
    from stabcheck.gate import Baseline, compare, entries, environment

    rows = [{**row, "implementation": f"{row['implementation']} in {row['test']}"}
            for row in state.rows]  # fmt: skip
    corpus = {"source": "pytest", "seed": state.seed, "examples": state.examples}
    obtained = Baseline(entries(rows), corpus, environment(AuditResult(), AuditConfig()))
    if state.update_baseline:
        obtained.save(path)
        state.gate_text = f"stabcheck: wrote {len(obtained.entries)} entries to {path}"
        return
    comparison = compare(state.expected.entries, obtained.entries)
    state.gate_text = comparison.text(str(path), _update_command(path))
    if not comparison.passed:
        obtained_file = path.with_suffix(".obtained.json")
        obtained.save(obtained_file)
        state.gate_text += f"the session's entries are in {obtained_file}\n"
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    state = config.stash.get(_STATE, None)
    if state is None or state.worker:
        return
    if state.gate_text:
        terminalreporter.write_sep("-", "stabcheck gate")
        for line in state.gate_text.rstrip().splitlines():
            terminalreporter.write_line(line, red=line.startswith("stabcheck gate: FAILED"))
    if not (state.checks or state.report):
        return
    failed = sum(1 for c in state.checks if not c["passed"])
    count = len(state.checks)
    line = f"stabcheck: {count} check{'' if count == 1 else 's'}, {failed} failed"
    if state.written is not None:
        line += f"; report in {state.written}"
    terminalreporter.write_line(line)
    if state.report_error:
        terminalreporter.write_line(
            f"stabcheck: could not write the report to {state.report}: {state.report_error}",
            red=True,
        )
