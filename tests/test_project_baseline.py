"""stabcheck's own regression gate: the reference implementations measured afresh must be
no worse than the baseline committed in reports/ (rewrite it on purpose with
``stabcheck gate --baseline reports/baseline.json --update``)."""

from __future__ import annotations

from pathlib import Path

from stabcheck.gate import run_gate

BASELINE = Path(__file__).resolve().parent.parent / "reports" / "baseline.json"


def test_reference_implementations_are_no_worse_than_the_committed_baseline():
    outcome = run_gate(BASELINE)
    update = f"stabcheck gate --baseline {BASELINE} --update"
    assert outcome.comparison is not None
    assert outcome.comparison.passed, outcome.comparison.text(str(BASELINE), update)
    assert outcome.comparison.compared == len(outcome.obtained.entries) > 1000
