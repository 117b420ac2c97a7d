"""The regression gate: unchanged passes, degraded fails with a readable list, improved
passes with the suggestion, a bad baseline exits 2, the corpus is re-run, and baselines
are deterministic."""

from __future__ import annotations

import importlib
import json
import sys

import pytest

from stabcheck import cli
from stabcheck.case import Case
from stabcheck.gate import (
    Baseline,
    Entry,
    Tolerance,
    compare,
    entries,
    failing_units,
    load_corpus,
)

LOSS = "sigmoid_cross_entropy_with_logits"
IMPL = "gate_losses:loss"
SELECTION = ["--impl", IMPL, "--loss", LOSS, "--format", "float32", "--examples", "3",
             "--regime", "moderate", "--regime", "saturating"]  # fmt: skip


@pytest.fixture
def swap(tmp_path, monkeypatch):
    """``swap(name)`` makes ``gate_losses:loss`` the reference function ``name``."""
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)

    def to(name: str) -> None:
        (tmp_path / "gate_losses.py").write_text(
            f"from stabcheck.implementations.reference import {name} as loss\n"
        )
        sys.modules.pop("gate_losses", None)
        importlib.invalidate_caches()

    yield to
    sys.modules.pop("gate_losses", None)


def gate(*args: str) -> int:
    return cli.main(["gate", "--baseline", "baseline.json", *args])


def ci(*args: str) -> int:
    """The gate as CI runs it: the user's function named, the rest from the baseline."""
    return gate("--impl", IMPL, *args)


def test_an_unchanged_implementation_passes(swap, capsys):
    swap("stable_sigmoid")
    assert gate("--update", *SELECTION) == 0
    assert "wrote baseline.json" in capsys.readouterr().out
    assert ci() == 0  # the rest of the selection comes from the baseline
    out = capsys.readouterr().out
    assert "passed, nothing worse" in out and "regressions" not in out


def test_a_degraded_implementation_fails_with_a_readable_list(swap, tmp_path, capsys):
    swap("stable_sigmoid")
    assert gate("--update", *SELECTION) == 0
    swap("naive_sigmoid")  # the textbook formula under the same name
    capsys.readouterr()
    assert ci() == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and "regressions:" in out
    line = next(x for x in out.splitlines() if " overflow " in x)
    assert IMPL in line and LOSS in line and "saturating" in line
    # the new findings are regressions too, each with a case that replays it
    replay = out.split("Replay each finding")[1].splitlines()[1:]
    new = [x for x in out.splitlines() if "not in baseline" in x and ": overflow with" in x]
    assert new and replay
    replay = [x for x in replay if x.startswith("  F")]
    for line in replay:  # every new finding replays, shrunk or as its worst row
        fid, case = line.strip().split(": ", 1)
        assert fid in out.split("Replay each finding")[0]
        assert Case.from_json(case).loss.name == LOSS
    assert "stabcheck gate --baseline baseline.json --update" in out
    obtained = Baseline.load(tmp_path / "baseline.obtained.json")
    statuses = [e.statuses for e in obtained.entries.values()]
    assert any("overflow" in s for s in statuses)


def test_an_improvement_passes_and_suggests_update(swap, capsys):
    swap("naive_sigmoid")
    assert gate("--update", *SELECTION) == 0
    swap("accurate_sigmoid")
    capsys.readouterr()
    assert ci() == 0
    out = capsys.readouterr().out
    assert "improvement" in out and "record them: stabcheck gate" in out


def test_two_runs_with_the_same_seed_write_identical_baselines(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    selection = [x if x != IMPL else "naive" for x in SELECTION]
    assert gate("--update", *selection, "--grad") == 0
    first = (tmp_path / "baseline.json").read_bytes()
    assert gate("--update") == 0  # the baseline's own settings
    assert (tmp_path / "baseline.json").read_bytes() == first
    data = json.loads(first)
    assert data["corpus"]["seed"] == 0 and data["corpus"]["grad"] is True
    assert {e["quantity"] for e in data["entries"]} == {"value", "gradient"}


def test_the_regression_corpus_is_rerun(swap, tmp_path, capsys):
    swap("naive_sigmoid")
    assert gate("--update", *SELECTION) == 0
    # a case that fails, added by hand: a regression in the regime 'corpus'
    case = Case.build(LOSS, [-800.0], [0.0], format="float32")
    capsys.readouterr()
    assert ci("--add-case", case.to_json()) == 1
    out = capsys.readouterr().out
    assert "1 case(s) added to baseline.cases.jsonl" in out
    assert any(" corpus " in x and "not in baseline" in x for x in out.splitlines())
    assert [c.id for c in load_corpus(tmp_path / "baseline.cases.jsonl")] == [case.id]
    # recorded, it passes; saving failures adds one smallest case per kind, then passes too
    assert ci("--update") == 0
    assert ci("--update", "--save-failures") == 0
    saved = load_corpus(tmp_path / "baseline.cases.jsonl")
    assert len(saved) > 1 and all(c.predictions.size == 1 for c in saved)  # smallest units
    assert json.loads((tmp_path / "baseline.json").read_text())["corpus"]["corpus_cases"] == len(
        saved
    )
    assert ci() == 0


def test_the_summary_goes_to_the_ci_step_summary(swap, tmp_path, monkeypatch, capsys):
    swap("stable_sigmoid")
    assert gate("--update", *SELECTION) == 0
    swap("naive_sigmoid")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(tmp_path / "step.md"))
    assert ci("--summary", "gate.md") == 1
    text = (tmp_path / "step.md").read_text()
    assert text == (tmp_path / "gate.md").read_text()
    assert text.startswith("## stabcheck gate: FAILED") and "| overflow |" in text


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "does not exist; write one with `stabcheck gate --baseline"),
        ('{"stabcheck_baseline": 1, "entries": [', "is not a stabcheck baseline (Expecting"),
        ('{"stabcheck_baseline": 7, "entries": []}', "stabcheck_baseline is 7, expected 1"),
        ('{"stabcheck_baseline": 1}', "KeyError: 'entries'"),
        (
            '{"stabcheck_baseline": 1, "entries": [{"implementation": "naive", "loss": "x", '
            '"format": "float32", "regime": "moderate", "quantity": "value", '
            '"measurements": 1, "statuses": {"fine": 1}, "max_ulps": 0, "median_ulps": 0}]}',
            "unknown status 'fine'",
        ),
    ],
)
def test_a_missing_or_damaged_baseline_exits_2(tmp_path, monkeypatch, capsys, content, message):
    monkeypatch.chdir(tmp_path)
    if content is not None:
        (tmp_path / "baseline.json").write_text(content)
    assert gate() == 2
    err = capsys.readouterr().err
    assert message in err and "--update" in err


def test_a_gate_that_cannot_run_exits_2(swap, capsys):
    swap("stable_sigmoid")
    assert gate("--update", *SELECTION) == 0
    assert ci("--seed", "1") == 2  # another corpus than the baseline's
    assert "seed=1 differs from the baseline's seed=0" in capsys.readouterr().err
    assert gate("--impl", "no_such_family") == 2
    assert "no_such_family" in capsys.readouterr().err
    assert ci("--save-failures") == 2
    assert "together with update" in capsys.readouterr().err
    assert ci("--tolerance-ulps", "-1") == 2
    assert "ulps=-1.0 must be a finite non-negative number" in capsys.readouterr().err


# -- compare, on hand-made entries -----------------------------------------------------------

KEY = ("impl", LOSS, "float32", "moderate", "value")


def entry(statuses, max_ulps=2.0, median_ulps=0.0, key=KEY):
    return Entry(key, sum(statuses.values()), statuses, max_ulps, median_ulps)


@pytest.mark.parametrize(
    ("before", "after", "regressions", "improvements"),
    [
        (entry({"ok": 8}), entry({"ok": 8}), [], []),
        (entry({"ok": 8}), entry({"ok": 7, "nan": 1}), [("nan", 0, 1)], []),
        (entry({"ok": 6, "clipped": 2}), entry({"ok": 7, "clipped": 1}), [], [("clipped", 2, 1)]),
        # each status is its own class: an overflow that turns into an underflow is both
        (entry({"ok": 7, "overflow": 1}), entry({"ok": 7, "underflow": 1}),
         [("underflow", 0, 1)], [("overflow", 1, 0)]),
        (entry({"ok": 8}, max_ulps=2), entry({"ok": 8}, max_ulps=3), [], []),  # within 1 ULP
        (entry({"ok": 8}, max_ulps=2), entry({"ok": 8}, max_ulps=4), [("max ULPs", 2, 4)], []),
        (entry({"ok": 8}, max_ulps=400), entry({"ok": 8}, max_ulps=490), [], []),  # within 25%
        (entry({"ok": 8}, median_ulps=400), entry({"ok": 8}, median_ulps=200), [],
         [("median ULPs", 400, 200)]),
    ],
)  # fmt: skip
def test_compare_applies_the_documented_rules(before, after, regressions, improvements):
    result = compare({KEY: before}, {KEY: after}, Tolerance())
    assert [(c.what, c.before, c.after) for c in result.regressions] == regressions
    assert [(c.what, c.before, c.after) for c in result.improvements] == improvements
    assert result.passed is not regressions


def test_compare_new_and_missing_entries():
    other = (*KEY[:3], "tiny", "value")
    run = {other: entry({"ok": 3, "underflow": 1}, key=other)}
    result = compare({KEY: entry({"ok": 8})}, run, expected=[KEY])
    assert [(c.key, c.what) for c in result.regressions] == [
        (KEY, "measured"),
        (other, "underflow"),
    ]
    assert compare({KEY: entry({"ok": 8})}, {}, expected=None).passed  # a partial session


def test_entries_summarise_rows():
    rows = [
        {"implementation": "a", "loss": LOSS, "format": "float32", "regime": "tiny",
         "origin": origin, "quantity": "value", "status": status, "ulps": ulps}
        for origin, status, ulps in [("drawn", "ok", 0.0), ("drawn", "inaccurate", 9.0),
                                     ("drawn", "nan", float("inf")), ("corpus", "ok", 1.0)]
    ]  # fmt: skip
    found = entries(rows)
    tiny = found[("a", LOSS, "float32", "tiny", "value")]
    assert tiny.statuses == {"ok": 1, "inaccurate": 1, "nan": 1}
    assert (tiny.max_ulps, tiny.median_ulps) == (9.0, 4.5)  # the NaN's infinite count is left out
    assert found[("a", LOSS, "float32", "corpus", "value")].measurements == 1


def test_saved_failures_are_the_smallest_units_and_never_huge():
    softmax = "softmax_cross_entropy_with_logits"
    wider = Case.build(softmax, [[0.0, 1.0, 2.0, 3.0, 1000.0], [0.0] * 5], [[1, 0, 0, 0, 0]] * 2)
    narrow = Case.build(softmax, [[0.0, 1000.0]], [[1.0, 0.0]])
    huge = Case.build(softmax, [[1000.0] * 2000], [[1.0] + [0.0] * 1999])
    row = {"implementation": "naive", "loss": softmax, "format": "float64", "quantity": "value"}
    rows = [
        {**row, "case_id": wider.id, "index": "0", "status": "nan", "ulps": float("nan")},
        {**row, "case_id": narrow.id, "index": "0", "status": "nan", "ulps": float("nan")},
        {**row, "case_id": huge.id, "index": "0", "status": "overflow", "ulps": 9e18},
        {**row, "case_id": wider.id, "index": "1", "status": "ok", "ulps": 0.0},
    ]
    cases = {c.id: c for c in (wider, narrow, huge)}
    # the 2-class row rather than the 5-class one; the 2000-class row is never saved
    assert [c.id for c in failing_units(rows, cases)] == [narrow.id]


# -- bad input: exit 2 (never 1, which means worse), a message, nothing written -------------

BAD_FILES = {
    "pickle": b"\x80\x04\x95\x10\x00\x00\x00\x00\x00\x00\x00}\x94\x8c\x01a\x94K\x01s.",
    "gzip": b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03\xab\xae\x05\x00C\xbf\xa6\xa3\x02\x00\x00",
    "UTF-16": '{"stabcheck_baseline": 1}'.encode("utf-16"),
    "binary": bytes(range(256)),
}


@pytest.mark.parametrize("kind", list(BAD_FILES))
@pytest.mark.parametrize("which", ["baseline", "corpus"])
def test_a_binary_baseline_or_corpus_exits_2(swap, tmp_path, capsys, kind, which):
    swap("stable_sigmoid")
    assert gate("--update", *SELECTION) == 0
    target = tmp_path / ("baseline.json" if which == "baseline" else "baseline.cases.jsonl")
    target.write_bytes(BAD_FILES[kind])
    capsys.readouterr()
    assert ci() == 2
    err = capsys.readouterr().err
    assert f"{which} {target.name} is not UTF-8 text" in err and "restore it" in err


def test_an_out_of_range_hex_float_exits_2(swap, tmp_path, capsys):
    swap("stable_sigmoid")
    assert gate("--update", *SELECTION) == 0
    huge = ('{"loss":"sigmoid_cross_entropy_with_logits","format":"float32",'
            '"predictions":["0x1p99999"],"labels":["0x1p-1"]}')  # fmt: skip
    with pytest.raises(SystemExit) as info:
        ci("--add-case", huge)
    assert info.value.code == 2
    assert "'0x1p99999' is beyond float64" in capsys.readouterr().err
    (tmp_path / "baseline.cases.jsonl").write_text(huge + "\n")
    assert ci() == 2
    err = capsys.readouterr().err
    assert "baseline.cases.jsonl:1 is not a case" in err and "beyond float64" in err


def test_a_baseline_never_chooses_the_code_that_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert gate("--update", "--impl", "naive", *SELECTION[2:]) == 0
    data = json.loads((tmp_path / "baseline.json").read_text())
    data["corpus"]["implementations"] = ["os:system"]
    (tmp_path / "baseline.json").write_text(json.dumps(data))
    capsys.readouterr()
    assert gate() == 2
    err = capsys.readouterr().err
    assert "the baseline names function(s) of your own (os:system)" in err
    assert "never chooses the code that runs" in err and "--impl os:system" in err


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--timeout", "inf"], ["timeout=inf", "at most"]),
        (["--loss", "binary_crossentropy"], ["matches none of the", "losses " + LOSS]),
        (["--format", "bfloat16"], ["matches none of the", "formats float32"]),
        (["--accept-errors"], ["--accept-errors", "add --update"]),
        (["--summary", "."], ["--summary='.'", "is a directory"]),
        (["--add-case", Case.build("binary_crossentropy", [0.5], [1.0]).to_json()],
         ["binary_crossentropy in float64", "would never be measured"]),
    ],
)  # fmt: skip
def test_a_gate_that_cannot_run_says_why(swap, tmp_path, capsys, args, words):
    swap("stable_sigmoid")
    assert gate("--update", *SELECTION) == 0
    before = (tmp_path / "baseline.json").read_bytes()
    capsys.readouterr()
    assert ci(*args) == 2
    err = capsys.readouterr().err
    for word in words:
        assert word in err, (word, err)
    assert (tmp_path / "baseline.json").read_bytes() == before
    assert not (tmp_path / "baseline.cases.jsonl").exists()


def test_a_function_of_one_loss_needs_its_loss_named(swap, tmp_path, capsys):
    swap("stable_sigmoid")
    assert gate("--update", "--impl", IMPL, "--grad") == 2  # the README's recipe, once
    err = capsys.readouterr().err
    assert "say which loss it computes" in err and not (tmp_path / "baseline.json").exists()


def test_entries_that_measured_only_errors_are_not_recorded(swap, tmp_path, capsys):
    swap("stable_sigmoid")  # a sigmoid function, run on a softmax loss too
    other = ["--loss", "softmax_cross_entropy_with_logits"]
    assert gate("--update", *SELECTION, *other) == 2
    err = capsys.readouterr().err
    assert "not writing the baseline" in err and "softmax_cross_entropy_with_logits" in err
    assert "--accept-errors" in err and not (tmp_path / "baseline.json").exists()
    assert gate("--update", *SELECTION, *other, "--accept-errors") == 0
    data = json.loads((tmp_path / "baseline.json").read_text())
    assert {e["loss"] for e in data["entries"]} == {LOSS, "softmax_cross_entropy_with_logits"}


def test_a_module_that_exits_at_import_does_not_pass_the_gate(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "quits.py").write_text("import sys\nsys.exit(0)\n")
    assert gate("--update", "--impl", "quits:loss", *SELECTION[2:]) == 2
    assert "called sys.exit(0)" in capsys.readouterr().err
    assert not (tmp_path / "baseline.json").exists()


def test_repeating_an_implementation_is_no_regression(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert gate("--update", "--impl", "naive", *SELECTION[2:]) == 0
    capsys.readouterr()
    assert gate("--impl", "naive", "--impl", "naive", "--format", "f32", "--format",
                "float32") == 0  # fmt: skip
    assert "passed, nothing worse" in capsys.readouterr().out


def test_an_unexpected_failure_in_the_gate_is_exit_2_not_1(monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(tmp_path)

    def broken(*args, **kwargs):
        raise OverflowError("a bug")

    monkeypatch.setattr("stabcheck.gate.run_gate", broken)
    assert gate("--update", "--impl", "naive") == 2
    assert "could not run: OverflowError: a bug" in capsys.readouterr().err


def test_update_replaces_a_damaged_baseline_and_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "baseline.json").write_bytes(BAD_FILES["gzip"])
    assert gate("--update", "--impl", "naive", *SELECTION[2:]) == 0
    err = capsys.readouterr().err
    assert "note: baseline baseline.json is not UTF-8 text (it looks gzip): replaced" in err
    assert Baseline.load(tmp_path / "baseline.json").entries
