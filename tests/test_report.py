"""Reports: every file written, atomically, readable, and replayable."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from stabcheck.audit import COLUMNS, WORK, AuditConfig, AuditResult, run_audit
from stabcheck.case import Case
from stabcheck.cli import main
from stabcheck.findings import FINDING_COLUMNS
from stabcheck.oracle import evaluate
from stabcheck.report import (
    Checkpoint,
    histogram,
    load_case,
    load_measurements,
    write_report,
)


@pytest.fixture(scope="module")
def audited():
    config = AuditConfig(
        implementations=["naive", "accurate"],
        losses=["sigmoid_cross_entropy_with_logits", "sparse_softmax_cross_entropy_with_logits"],
        formats=["float32", "float16"], regimes=["moderate", "saturating", "dominant"],
        examples=3, search=5, grad=True, seed=3,
    )  # fmt: skip
    return config, run_audit(config)


def test_every_report_file_is_written(audited, tmp_path):
    config, result = audited
    paths = write_report(result, config, tmp_path)
    names = {p.relative_to(tmp_path).as_posix() for p in paths}
    plots = {f"plots/{impl}__{loss}.png" for impl in ("naive", "accurate")
             for loss in config.losses}  # fmt: skip
    assert {"measurements.csv", "findings.csv", "cases.jsonl.gz", "summary.md", "findings.md",
            "tables.md", "run.json", *plots} <= names  # fmt: skip
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left
    frame = load_measurements(tmp_path / "measurements.csv")
    assert list(frame.columns) == list(COLUMNS) and len(frame) == len(result.rows)
    written = result.frame()
    assert frame["status"].tolist() == written["status"].tolist()
    assert "nan" in set(frame["status"])  # naive's NaNs, not read as missing values
    assert frame["ulps"].equals(written["ulps"].astype(float))
    assert frame["note"].tolist() == written["note"].fillna("").tolist()
    assert (tmp_path / plots.pop()).read_bytes()[:4] == b"\x89PNG"
    # every measurement that is not ok belongs to one finding of findings.csv, ok ones to none
    findings = pd.read_csv(tmp_path / "findings.csv", keep_default_na=False)
    assert list(findings.columns) == list(FINDING_COLUMNS)
    bad = frame["status"] != "ok"
    assert (frame.loc[bad, "finding"] != "").all() and (frame.loc[~bad, "finding"] == "").all()
    assert set(frame.loc[bad, "finding"]) <= set(findings["id"])
    counts = frame.loc[bad, "finding"].value_counts()
    for _, f in findings[findings["kind"] == "point"].iterrows():
        assert counts[f["id"]] == f["measurements"]
        assert set(frame.loc[frame["finding"] == f["id"], "implementation"]) == {
            f["implementation"]}


def test_summary_separates_hard_failures_and_links_each_finding(audited, tmp_path):
    config, result = audited
    write_report(result, config, tmp_path)
    summary = (tmp_path / "summary.md").read_text()
    assert "Seed 3;" in summary and "## At a glance" in summary
    frame = result.frame()
    naive = frame[frame["implementation"] == "naive"]
    row = next(line for line in summary.splitlines() if line.startswith("| [naive]"))
    # naive returns NaN on finite logits (exp overflows): a hard failure on finite inputs
    finite = np.array([np.isfinite(result.cases[c].predictions.astype(float)).all()
                       for c in naive["case_id"]])  # fmt: skip
    assert ((naive["status"] == "nan") & finite).any() and "**nan** in" in row.split("|")[2]
    findings = (tmp_path / "findings.md").read_text()
    links = [x for x in summary.splitlines() if x.startswith("- [F")]
    assert links
    for line in links:
        fid = line[3:12]
        assert f"(findings.md#{fid.lower()})" in line and f"### {fid}" in findings
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["seed"] == 3 and run["measurements"] == len(frame) and not run["interrupted"]
    assert set(run["phases_seconds"]) == {"measure", "findings"}
    # the work by kind: every kind is one of WORK's, the oracle's paths and calls are there
    work = run["work_seconds"]
    assert set(work) <= set(WORK) and {"calls_first", "measure"} <= set(work)
    assert {"oracle_mpmath", "oracle_cache"} & set(work)  # computed, or read from the cache
    assert all(v >= 0 for v in work.values())
    assert run["findings_searched"] > 0 and run["findings_search_failures"] == []


def test_findings_cases_replay_the_failure(audited, tmp_path):
    """Each smallest failing case of findings.md, run again through the implementation and
    the oracle, still shows its finding's failure."""
    from stabcheck.findings import failure
    from stabcheck.implementations import implementations
    from stabcheck.measure import measure, measure_worst
    from stabcheck.runner import invoke

    config, result = audited
    write_report(result, config, tmp_path)
    text = (tmp_path / "findings.md").read_text()
    replayed = 0
    for block in text.split("\n### ")[1:]:
        if "Smallest failing case" not in block:
            continue
        fid = block.split("\n")[0]
        head = block.split("\n")[2]
        snippet = next(x for x in block.splitlines() if x.startswith("Case.from_json("))
        case = Case.from_json(eval(snippet[len("Case.from_json(") : -1]))
        found = next(f for f in result.findings if f.id == fid)
        impl = implementations(names=found.implementation, losses=case.loss.name)[0]
        grad = found.quantity == "gradient"
        outcome = invoke(impl, case, grad)
        exact = evaluate(case, grad=grad)
        measured = (measure_worst(exact, outcome.gradient, gradient=True, per_row=True)
                    if grad else measure(exact, outcome.values))  # fmt: skip
        rows = [{"status": m.status, "exact": m.exact} for m in measured]
        assert any(failure(r) == found.failure for r in rows), (fid, head)
        replayed += 1
    assert replayed >= 5


def test_cases_file_round_trips(audited, tmp_path):
    config, result = audited
    write_report(result, config, tmp_path)
    case_id, case = next(iter(result.cases.items()))
    assert load_case(tmp_path / "cases.jsonl.gz", case_id).to_json() == case.to_json()


def test_the_checkpoint_appends_each_row_once(audited, tmp_path):
    _, result = audited
    checkpoint, partial = Checkpoint(tmp_path / "out"), AuditResult()
    for first in range(0, len(result.rows), 700):  # as tasks are merged
        partial.rows.extend(result.rows[first : first + 700])
        path = checkpoint(partial)
    frame = load_measurements(path)
    assert list(frame.columns) == list(COLUMNS) and len(frame) == len(result.rows)
    assert frame["case_id"].tolist() == [row["case_id"] for row in result.rows]
    # a new run's checkpoint starts afresh
    Checkpoint(tmp_path / "out")(AuditResult(rows=result.rows[:3]))
    assert len(load_measurements(path)) == 3


def test_histogram_bins():
    bits = pd.Series([0.0, 0.5, 1.0, 1.5, 3.0, 70.0, float("inf"), float("nan")])
    assert histogram(bits) == [1, 2, 1, 1, 0, 0, 0, 0, 2]


def test_cli_audit_writes_the_report_and_refuses_bad_names(tmp_path, capsys):
    out = tmp_path / "report"
    status = main(["audit", "--impl", "accurate", "--loss", "binary_crossentropy",
                   "--format", "float64", "--regime", "moderate", "--examples", "2",
                   "--search", "0",
                   "--out", str(out)])  # fmt: skip
    assert status == 0 and (out / "summary.md").exists()
    assert "measurements of" in capsys.readouterr().err
    status = main(["audit", "--impl", "acurate", "--out", str(out)])
    assert status == 2 and "Did you mean 'accurate'" in capsys.readouterr().err


def test_the_report_says_how_the_oracle_decided(audited, tmp_path):
    config, result = audited
    write_report(result, config, tmp_path)
    units = json.loads((tmp_path / "run.json").read_text())["oracle_units"]
    # every result of every case measured (searched cases that were not kept count too)
    every = sum(int(np.prod(case.output_shape)) for case in result.cases.values())
    assert units["fast"] + units["mpmath"] >= every and units["mpmath"] > 0
    summary = (tmp_path / "summary.md").read_text()
    assert f"decided {units['fast']} results" in summary


def test_the_run_names_every_version_that_can_change_a_result(audited, tmp_path):
    from importlib.metadata import version

    config, result = audited
    write_report(result, config, tmp_path)
    versions = json.loads((tmp_path / "run.json").read_text())["versions"]
    for name in ("ml_dtypes", "numba", "gmpy2", "numpy", "mpmath", "torch", "jax", "jaxlib",
                 "keras", "optax", "scipy", "scikit-learn", "hypothesis"):  # fmt: skip
        assert versions[name] == version(name), name
    assert versions["tensorflow"] == version("tensorflow-cpu")
    assert versions["mpmath_backend"] == "gmpy" and versions["oracle_passes"] == "numba"
    summary = (tmp_path / "summary.md").read_text()
    assert f"ml_dtypes {version('ml_dtypes')}" in summary and f"gmpy2 {version('gmpy2')}" in summary


def test_implementations_without_gradients_are_named_when_gradients_are_asked():
    config = AuditConfig(implementations=["scipy.xlogy", "naive"], losses=["binary_crossentropy"],
                         formats=["float32"], regimes=["moderate"], examples=1, search=0,
                         grad=True)  # fmt: skip
    assert config.without_gradients() == ["scipy.xlogy"]
    result = run_audit(config)
    from stabcheck.report import run_info, summary_markdown

    frame = result.frame()
    assert set(frame[frame["implementation"] == "scipy.xlogy"]["quantity"]) == {"value"}
    assert "values and gradients (values only for scipy.xlogy: no gradient)" in summary_markdown(
        frame, result, config
    )
    assert run_info(result, config)["without_gradients"] == ["scipy.xlogy"]


def test_a_report_replaces_the_previous_one_whole(audited, tmp_path):
    config, result = audited
    write_report(result, config, tmp_path)
    (tmp_path / "measurements.partial.csv").write_text("a checkpoint")
    only = AuditConfig(implementations=["accurate"], losses=["binary_crossentropy"],
                       formats=["float32"], regimes=["moderate"], examples=1, search=0)
    write_report(run_audit(only), only, tmp_path)
    plots = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert plots == ["accurate__binary_crossentropy.png"]  # naive's went with its report
    assert not (tmp_path / "measurements.partial.csv").exists()
    assert set(load_measurements(tmp_path / "measurements.csv")["implementation"]) == {"accurate"}
