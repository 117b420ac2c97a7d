"""Reports: every file written, atomically, readable, and replayable."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from stabcheck.audit import COLUMNS, AuditConfig, run_audit
from stabcheck.case import Case
from stabcheck.cli import main
from stabcheck.oracle import evaluate
from stabcheck.report import histogram, load_case, load_measurements, write_report


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
    assert {"measurements.csv", "cases.jsonl.gz", "summary.md", "worst.md", "run.json",
            "plots/naive.png", "plots/accurate.png"} <= names  # fmt: skip
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left
    frame = load_measurements(tmp_path / "measurements.csv")
    assert list(frame.columns) == list(COLUMNS) and len(frame) == len(result.rows)
    written = result.frame()
    assert frame["status"].tolist() == written["status"].tolist()
    assert "nan" in set(frame["status"])  # naive's NaNs, not read as missing values
    assert frame["ulps"].equals(written["ulps"].astype(float))
    assert frame["note"].tolist() == written["note"].fillna("").tolist()
    assert (tmp_path / "plots" / "naive.png").read_bytes()[:4] == b"\x89PNG"


def test_summary_keeps_hard_failures_apart_and_names_the_seed(audited, tmp_path):
    config, result = audited
    write_report(result, config, tmp_path)
    summary = (tmp_path / "summary.md").read_text()
    assert "Seed 3;" in summary and "## Hard failures and losses of accuracy" in summary
    frame = result.frame()
    naive = frame[frame["implementation"] == "naive"]
    hard = int(naive["status"].isin(["nan", "overflow", "clipped", "error", "timeout"]).sum())
    section = summary.split("## Hard failures and losses of accuracy")[1]
    row = next(line for line in section.splitlines() if line.startswith("| naive | "))
    assert f"| {len(naive)} | {hard} |" in row
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["seed"] == 3 and run["measurements"] == len(frame) and not run["interrupted"]


def test_worst_cases_replay_exactly(audited, tmp_path):
    config, result = audited
    write_report(result, config, tmp_path)
    lines = (tmp_path / "worst.md").read_text().splitlines()
    frame = result.frame()
    replayed = 0
    for i, line in enumerate(lines):
        if not line.startswith("Case `"):
            continue
        case_id, index = line.split("`")[1], line.split("`")[3]
        snippet = next(x for x in lines[i:] if x.startswith("Case.from_json("))
        unit = Case.from_json(eval(snippet[len("Case.from_json(") : -1]))
        # the reproduction is the failing row or element of the measured case...
        parent = result.cases[case_id]
        assert unit.to_json() == parent.unit(tuple(map(int, index.split(",")))).to_json()
        # ...and the oracle gives it the very value recorded for that output
        value_index = index.split(",")[0] if parent.loss.rowwise else index
        recorded = frame[(frame["case_id"] == case_id) & (frame["index"] == value_index)
                         & (frame["quantity"] == "value")]  # fmt: skip
        assert evaluate(unit).value.ravel()[0] == recorded["expected"].iloc[0]
        replayed += 1
    assert replayed >= 5


def test_cases_file_round_trips(audited, tmp_path):
    config, result = audited
    write_report(result, config, tmp_path)
    case_id, case = next(iter(result.cases.items()))
    assert load_case(tmp_path / "cases.jsonl.gz", case_id).to_json() == case.to_json()


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
    assert plots == ["accurate.png"]  # naive's plot went with the report it belonged to
    assert not (tmp_path / "measurements.partial.csv").exists()
    assert set(load_measurements(tmp_path / "measurements.csv")["implementation"]) == {"accurate"}
