"""Stopping, with real processes: SIGINT and SIGTERM to the command alone or to its whole
process group, while an implementation hangs. Five seconds later no process of the run is
alive, and the output folder holds either the complete earlier report or this run's,
marked interrupted; never a mix, never a temporary file. SIGKILL leaves the earlier report
untouched and takes the children along."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from stabcheck.report import load_measurements

MODULE = textwrap.dedent(
    """
    import os, time
    import numpy as np

    def hangs_later(p, z):
        # answers two calls, then hangs (writing its pid first, for the test to see)
        count = os.environ["HANG_COUNT"]
        with open(count, "a") as f:
            f.write("x")
        if os.path.getsize(count) > 2:
            with open(os.environ["HANG_FLAG"], "w") as f:
                f.write(str(os.getpid()))
            time.sleep(600)
        return -(z * np.log(p) + (1 - z) * np.log1p(-p))
    """
)
SELECTION = ["--loss", "binary_crossentropy", "--format", "float32", "--regime", "moderate",
             "--regime", "saturating", "--examples", "2", "--search", "0",
             "--timeout", "300"]  # fmt: skip


@pytest.fixture
def env(tmp_path):
    (tmp_path / "hang_losses.py").write_text(MODULE)
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path]),
        "HANG_COUNT": str(tmp_path / "count"),
        "HANG_FLAG": str(tmp_path / "hanging"),
        "CI": "1",
    }


def stabcheck(args: list[str], env: dict[str, str], **kwargs) -> subprocess.Popen:
    """The command in a session of its own, so that its processes can be found."""
    return subprocess.Popen([sys.executable, "-m", "stabcheck.cli", *args], env=env,
                            start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)  # fmt: skip


def session_processes(session: int) -> list[int]:
    """The live (not zombie) processes of a session."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[3]) == session and fields[0] != "Z":
            found.append(int(entry.name))
    return found


def wait_for(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def earlier_report(out: Path) -> dict[str, bytes]:
    """A complete report of ``stable`` in ``out``, as its files' bytes."""
    from stabcheck.audit import AuditConfig, run_audit
    from stabcheck.report import write_report

    config = AuditConfig(implementations=["stable"], losses=["binary_crossentropy"],
                         formats=["float32"], regimes=["moderate"], examples=2, search=0)
    write_report(run_audit(config), config, out)
    return {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}


def stop(process: subprocess.Popen, flag: Path, signum: int, group: bool) -> int:
    assert wait_for(flag.exists, 120), process.communicate()[1][-3000:]
    (os.killpg if group else os.kill)(process.pid, signum)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        pytest.fail("the command did not stop within 60 s of the signal")
    return process.returncode


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize(
    ("signum", "group", "jobs"),
    [
        (signal.SIGTERM, False, 1),
        (signal.SIGTERM, True, 1),
        (signal.SIGINT, False, 1),
        (signal.SIGINT, True, 1),
        (signal.SIGTERM, False, 2),
        (signal.SIGINT, True, 2),
    ],
)
def test_a_stopped_audit_leaves_one_run_s_report_and_no_process(env, tmp_path, signum, group,
                                                                jobs):  # fmt: skip
    out = tmp_path / "report"
    before = earlier_report(out)
    assert "plots/stable__binary_crossentropy.png" in before
    process = stabcheck(["audit", "--impl", "hang_losses:hangs_later", "--impl", "accurate",
                         *SELECTION, "--jobs", str(jobs), "--out", str(out)], env)  # fmt: skip
    status = stop(process, tmp_path / "hanging", signum, group)
    err = process.stderr.read()
    assert status == 128 + signum, err
    assert f"stopped by {signal.Signals(signum).name}" in err
    assert wait_for(lambda: not session_processes(process.pid), 5), session_processes(process.pid)
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert not [f for f in files if f.endswith(".tmp") or "staging" in f or "partial" in f]
    assert not [d for d in out.iterdir() if d.name.startswith(".stabcheck-")]
    run = json.loads((out / "run.json").read_text())
    assert run["interrupted"] is True and run["config"]["jobs"] == jobs
    assert "**This run was interrupted" in (out / "summary.md").read_text()
    frame = load_measurements(out / "measurements.csv")
    assert set(frame["implementation"]) <= {"hang_losses:hangs_later", "accurate"}
    assert set(frame["regime"]) <= {"moderate"}  # the task that hung is left out whole
    assert "plots/stable__binary_crossentropy.png" not in files  # went with its report


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_killed_audit_leaves_the_earlier_report_untouched_and_no_process(env, tmp_path):
    out = tmp_path / "report"
    before = earlier_report(out)
    process = stabcheck(["audit", "--impl", "hang_losses:hangs_later", *SELECTION, "--jobs", "2",
                         "--out", str(out)], env)  # fmt: skip
    assert stop(process, tmp_path / "hanging", signal.SIGKILL, group=False) == -signal.SIGKILL
    assert wait_for(lambda: not session_processes(process.pid), 5), session_processes(process.pid)
    after = {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    if after.pop("measurements.partial.csv", None) is not None:  # this run's, named as such
        partial = load_measurements(out / "measurements.partial.csv")
        assert set(partial["implementation"]) <= {"hang_losses:hangs_later"}
    assert after == before


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_stopped_gate_writes_nothing_and_leaves_no_process(env, tmp_path):
    baseline = tmp_path / "baseline.json"
    selection = [x for x in SELECTION if x not in ("--search", "0")]
    process = stabcheck(["gate", "--baseline", str(baseline), "--update", "--impl",
                         "hang_losses:hangs_later", *selection], env)  # fmt: skip
    status = stop(process, tmp_path / "hanging", signal.SIGTERM, group=False)
    assert status == 128 + signal.SIGTERM
    assert "nothing compared or written" in process.stderr.read()
    assert wait_for(lambda: not session_processes(process.pid), 5)
    assert not baseline.exists() and not (tmp_path / "baseline.cases.jsonl").exists()
    assert not list(tmp_path.glob(".*.tmp"))
