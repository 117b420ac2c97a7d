"""Audit rows to files a person reads and a pull request diffs.

``write_report(result, config, out)`` writes these files as one set: staged beside them,
then moved into place with stop signals held, and the files of an earlier report that this
one does not have (the plot of an implementation no longer audited) removed, so that the
folder holds one run's report, complete (marked in ``summary.md`` and ``run.json`` when the
run was interrupted), or the previous one untouched:

* ``measurements.csv`` (and ``measurements.parquet`` when pyarrow is installed): one row a
  measurement, the columns of ``stabcheck.audit.COLUMNS``, ``finding`` the ID of the finding
  it belongs to (read it back with ``load_measurements``: plain ``pandas.read_csv`` turns
  the status ``nan`` into NaN);
* ``findings.csv`` (and ``findings.parquet``): one row a finding, the columns of
  ``stabcheck.findings.FINDING_COLUMNS``, joined to the measurements by ``id``;
* ``cases.jsonl.gz``: every case measured, ``{"id": ..., "case": {...}}`` with hex floats;
* ``summary.md``: a glance table (hard failures on finite inputs, behaviour on non-finite
  inputs and accuracy apart), then a screen per implementation: its findings, worst first;
* ``findings.md``: every finding with its worst measurement, onset, smallest case and a
  repro in the library's own terms;
* ``tables.md``: per implementation, loss, format and quantity the count of each status,
  the median and maximum ULPs and a histogram of the bits of error;
* ``run.json``: the seed, the configuration, the versions of everything, the wall time
  and the seconds of each phase;
* ``plots/*.png`` when matplotlib is installed (``stabcheck.plots``).

During a run, ``Checkpoint`` keeps the measurements so far in
``measurements.partial.csv`` (what is left of a run that was killed outright); the report
replaces it.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import platform
from dataclasses import asdict
from pathlib import Path
from typing import Any

from stabcheck._files import Writer, replace_files
from stabcheck.audit import COLUMNS, WORK, AuditConfig, AuditResult
from stabcheck.case import Case
from stabcheck.findings import (
    NOT_A_NUMBER,
    ORDINARY,
    POINT,
    SWEEP_COLUMNS,
    TIERS,
    Finding,
    failure,
    findings_frame,
    format_hex,
    format_value,
    unit_of,
)
from stabcheck.formats import format_names, get_format
from stabcheck.measure import SEVERITY, STATUSES
from stabcheck.oracle.cache import default_directory

BINS = (0, 1, 2, 4, 8, 16, 32, 64)  # bits of error: 0, <=1, <=2, ... <=64, more
SPARK = " ▁▂▃▄▅▆▇█"
INLINE_CASE_LIMIT = 600  # characters of JSON above which a reproduction points to cases.jsonl


CHECKPOINT = "measurements.partial.csv"
# every file a report may hold (worst.md: what findings.md replaced, removed from old reports)
REPORT_FILES = ("measurements.csv", "measurements.parquet", "findings.csv", "findings.parquet",
                "cases.jsonl.gz", "summary.md", "findings.md", "tables.md", "run.json",
                "plots/*.png", "log.txt", "worst.md", CHECKPOINT)  # fmt: skip
FINDINGS_PER_IMPLEMENTATION = 12  # lines of findings per implementation in summary.md


def write_report(result: AuditResult, config: AuditConfig, out: str | Path) -> list[Path]:
    """Write every report file into ``out`` (created if needed) as one set; return their
    paths."""
    import pandas as pd

    from stabcheck.plots import plots

    frame = result.frame()
    summary = summary_markdown(frame, result, config)
    info = json.dumps(run_info(result, config), indent=2)
    files = report_files(frame, result.cases, summary, info, result.findings, result.rows)
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        pass
    else:
        table = findings_frame(result.findings, result.rows)
        files["measurements.parquet"] = (frame.to_parquet, True)
        files["findings.parquet"] = (table.to_parquet, True)
    files["log.txt"] = (lambda f: f.write(log_text(result.printed)), False)
    sweeps = pd.DataFrame(result.investigation.sweeps, columns=list(SWEEP_COLUMNS))
    files.update(plots(frame, sweeps, result.unsupported))
    return replace_files(Path(out), files, REPORT_FILES)


def log_text(printed: dict[str, str]) -> str:
    """What the implementation processes printed (frameworks' log lines and warnings,
    kept off the terminal), process by process."""
    if not printed:
        return "The implementation processes printed nothing.\n"
    parts = [f"== {name} ==\n{text.rstrip()}\n" for name, text in printed.items()]
    return "\n".join(parts)


def report_files(
    frame: Any, cases: dict[str, Case], summary: str, info: str, found: list[Finding],
    rows: list[dict[str, Any]],
) -> dict[str, Writer]:  # fmt: skip
    """The files every report has (an audit's, a test session's), by name: the
    measurements, the findings (``found``, grouped from ``rows``), the cases, the summary,
    the tables and ``info`` as run.json."""
    table = findings_frame(found, rows)
    return {
        "measurements.csv": (lambda f: frame.to_csv(f, index=False), False),
        "findings.csv": (lambda f: table.to_csv(f, index=False), False),
        "cases.jsonl.gz": (lambda f: write_cases(f, cases), True),
        "summary.md": (lambda f: f.write(summary), False),
        "findings.md": (lambda f: f.write(findings_markdown(found, rows, cases)), False),
        "tables.md": (lambda f: f.write(tables_markdown(frame)), False),
        "run.json": (lambda f: f.write(info), False),
    }


class Checkpoint:
    """The measurements so far in ``measurements.partial.csv`` of ``out`` (a long run's
    checkpoint, which leaves the previous report untouched). Each call appends the rows
    added since the one before, in one write, so a run writes each row once."""

    def __init__(self, out: str | Path) -> None:
        self.path = Path(out) / CHECKPOINT
        self.written = 0

    def __call__(self, result: AuditResult) -> Path:
        import pandas as pd

        rows = result.rows[self.written :]
        if self.written == 0:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        text = pd.DataFrame(rows, columns=list(COLUMNS)).to_csv(index=False,
                                                               header=self.written == 0)
        with open(self.path, "a" if self.written else "w", encoding="utf-8") as f:
            f.write(text)
        self.written = len(result.rows)
        return self.path


TEXT_COLUMNS = ("implementation", "library", "loss", "format", "regime", "origin", "case_id",
                "quantity", "index", "status", "note", "test", "finding")  # fmt: skip


def load_measurements(path: str | Path) -> Any:
    """A ``measurements.csv`` as a DataFrame, with the status ``nan`` kept as a string
    (``pandas.read_csv`` alone reads it as a missing value) and empty text as ``""``."""
    import pandas as pd

    header = pd.read_csv(path, nrows=0).columns
    numeric = {c: ["", "nan", "NaN"] for c in header if c not in TEXT_COLUMNS}
    return pd.read_csv(
        path, keep_default_na=False, na_values=numeric, dtype={c: str for c in TEXT_COLUMNS}
    )


def load_case(path: str | Path, case_id: str) -> Case:
    """The case ``case_id`` from a ``cases.jsonl.gz`` written by ``write_report``."""
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        for line in lines:
            entry = json.loads(line)
            if entry["id"] == case_id:
                return Case.from_json(entry["case"])
    from stabcheck.errors import InvalidArgument

    raise InvalidArgument(f"case_id={case_id!r} is not in {path}; see its 'id' fields")


# -- summary ------------------------------------------------------------------------------


# The distributions whose versions can change a result: the oracle's arithmetic (numpy,
# mpmath and gmpy2, numba and llvmlite for its compiled passes), the formats (ml_dtypes),
# the draws (hypothesis), and every framework an adapter calls.
VERSIONED = ("numpy", "mpmath", "gmpy2", "ml_dtypes", "numba", "llvmlite", "hypothesis",
             "pandas", "torch", "tensorflow", "keras", "jax", "jaxlib", "optax", "scipy",
             "scikit-learn")  # fmt: skip


def run_info(result: AuditResult, config: AuditConfig) -> dict[str, Any]:
    """The seed, configuration, versions and counts of a run, for run.json and headers."""
    frame = result.frame()
    libraries = sorted({impl.library for impl in result.implementations.values()})
    return {
        "seed": config.seed,
        "config": asdict(config),
        "interrupted": result.interrupted,
        "wall_time_seconds": round(result.seconds, 1),
        "phases_seconds": {k: round(v, 1) for k, v in result.phases.items()},
        "work_seconds": {k: round(result.work[k], 1) for k in WORK if k in result.work},
        "measurements": len(frame),
        "findings": len(result.findings),
        "findings_searched": result.investigation.searched,
        "findings_not_searched": result.investigation.skipped,
        "findings_search_failures": result.investigation.failed,
        "cases": len(result.cases),
        "oracle_failures": result.oracle_failures,
        "oracle_units": result.oracle_units,
        "oracle_cache": {**result.oracle_cache, "directory": str(default_directory())},
        "unsupported_formats": result.unsupported,
        "unavailable": result.unavailable,
        "without_gradients": result.without_gradients,
        "libraries": {name: _version(name) for name in libraries},
        "versions": versions(),
    }


def versions() -> dict[str, str]:
    """stabcheck, Python, the platform, and every distribution of ``VERSIONED`` ("not
    installed" for those missing), read from their metadata without importing them."""
    import mpmath

    import stabcheck
    from stabcheck.oracle.fast import numba_wanted

    compiled = numba_wanted() and _version("numba") != "not installed"
    return {
        "stabcheck": stabcheck.__version__,
        "python": platform.python_version(),
        **{name: _version(name) for name in VERSIONED},
        "mpmath_backend": mpmath.libmp.BACKEND,
        "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE", "chosen by CPU"),
        "oracle_passes": "numba" if compiled else "numpy",
        "platform": platform.platform(),
    }


def _version(distribution: str) -> str:
    from importlib import metadata

    names = {"sklearn": "scikit-learn", "tensorflow": "tensorflow-cpu"}
    for name in (distribution, names.get(distribution, distribution)):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return "not installed"


def summary_markdown(frame: Any, result: AuditResult, config: AuditConfig) -> str:
    """The summary: the run, a glance table, then each implementation's findings."""
    info = run_info(result, config)
    versions = ", ".join(f"{k} {v}" for k, v in info["versions"].items() if k != "platform")
    what = "values"
    if config.grad:
        what = "values and gradients"
        if result.without_gradients:
            what += f" (values only for {', '.join(result.without_gradients)}: no gradient)"
    phases = ", ".join(f"{k} {v:.0f} s" for k, v in result.phases.items())
    lines = [
        "# stabcheck audit",
        "",
        f"Seed {config.seed}; {config.examples} cases per loss, format and regime; "
        f"{what}; tolerance {config.max_ulps:g} ULPs, or a relative error of "
        f"{config.max_ulps:g} eps x max(1, condition number); {info['measurements']} "
        f"measurements of {info['cases']} cases in {info['wall_time_seconds']:.0f} s"
        + (f" ({phases})" if phases else "") + f". {versions}.",
    ]  # fmt: skip
    units = result.oracle_units
    if sum(units.values()):
        lines += ["", f"The oracle decided {units['fast']} results (rows or elements) on its "
                  f"double-double fast path and {units['mpmath']} with mpmath."]  # fmt: skip
    if result.interrupted:
        lines += ["", "**This run was interrupted: the report covers only what was measured.**"]
    if result.oracle_failures:
        lines += ["", f"The oracle gave up on {len(result.oracle_failures)} cases (run.json)."]
    if frame.empty:
        return "\n".join([*lines, "", "No measurements.", ""])
    found = result.findings
    investigation = result.investigation
    lines += ["", f"{len(found)} findings (`findings.md`, `findings.csv`): measurements grouped "
              "by implementation, loss, quantity, failure and the input feature that triggers "
              "it; each ID is the same in every run that finds the same problem."]  # fmt: skip
    if investigation.searched or investigation.skipped:
        lines[-1] += (f" Onsets and smallest cases were searched for {investigation.searched}"
                      f" of them in {investigation.seconds:.0f} s"
                      + (f"; {investigation.skipped} were left for lack of time (third-party "
                         "libraries first, worst first)" if investigation.skipped else "")
                      + ".")  # fmt: skip
    if investigation.failed:
        lines += ["", f"**{len(investigation.failed)} searches broke** (run.json, "
                  "`findings_search_failures`): their findings have no onset or shrunk case."]
    formats = [f for f in format_names() if f in set(config.formats or format_names())]
    lines += ["", "## At a glance", "",
              "**Hard failures** are nan, overflow, clipped, error or timeout on finite inputs "
              "(a documented one is marked so). **Non-finite inputs** is what the "
              "implementation does with +-inf and NaN inputs, a matter of convention. "
              "**Bits lost** is the most bits of error, log2(1 + ULPs), on ordinary inputs "
              "(none of the features that name findings, options aside; ok results count "
              "where they are within the tolerance without the condition number), per format "
              f"({' / '.join(formats)}; - none measured). **Findings** counts them by "
              "tier: hard / non-finite / accuracy.", ""]  # fmt: skip
    by_impl: dict[str, list[Finding]] = {}
    for finding in found:
        by_impl.setdefault(finding.implementation, []).append(finding)
    rows = []
    for impl, group in frame.groupby("implementation", sort=False):
        mine = by_impl.get(impl, [])
        rows.append([f"[{impl}](#{_anchor(impl)})", _hard(mine), _non_finite(mine),
                     _bits_lost(group, mine, formats, result.unsupported.get(impl, {}),
                                config.max_ulps),
                     " / ".join(str(sum(f.tier == t for f in mine)) for t in TIERS)])  # fmt: skip
    lines += _table(["implementation", "hard failures on finite inputs", "non-finite inputs",
                     "bits lost", "findings"], rows)  # fmt: skip
    reasons = [f"{name} in {fmt}: {why}" for name, found_ in result.unsupported.items()
               for fmt, why in found_.items() if why]  # fmt: skip
    if reasons:
        lines += ["", "Unsupported, as the library said when called:", ""]
        lines += [f"- {reason}" for reason in reasons]
    if result.unavailable:
        lines += ["", "Not installed, so not audited: "
                  + "; ".join(f"{k} ({v})" for k, v in result.unavailable.items()) + "."]
    lines += ["", "## Findings by implementation", "",
              "Worst first: hard failures on finite inputs, then non-finite inputs, then "
              "accuracy; undocumented before documented. Each links to its entry in "
              "`findings.md` (worst case, onset, smallest case, repro).", ""]  # fmt: skip
    for impl, _ in frame.groupby("implementation", sort=False):
        mine = by_impl.get(impl, [])
        lines += [f"### {impl}", ""]
        if not mine:
            lines += ["Every measurement is ok.", ""]
            continue
        lines += [_line(f) for f in mine[:FINDINGS_PER_IMPLEMENTATION]]
        if len(mine) > FINDINGS_PER_IMPLEMENTATION:
            lines += [f"- ... and {len(mine) - FINDINGS_PER_IMPLEMENTATION} more in "
                      f"[findings.md](findings.md#{_anchor(impl)})"]  # fmt: skip
        lines += [""]
    return "\n".join(lines)


def _anchor(text: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation other than - and _ dropped."""
    return "".join(c for c in text.lower().replace(" ", "-") if c.isalnum() or c in "-_")


def _hard(found: list[Finding]) -> str:
    """The hard failures on finite inputs: each failure with its formats."""
    by_failure: dict[str, set[str]] = {}
    documented: set[str] = set()
    for f in found:
        if f.tier == 1:
            by_failure.setdefault(f.failure, set()).update(f.formats)
            if f.documented:
                documented.add(f.failure)
    parts = []
    for kind in sorted(by_failure, key=lambda s: -SEVERITY.get(s, 1)):
        formats = ", ".join(x for x in format_names() if x in by_failure[kind])
        mark = " (documented)" if kind in documented else ""
        parts.append(f"**{kind}**{mark} in {formats}")
    return "; ".join(parts) or "none"


def _non_finite(found: list[Finding]) -> str:
    failures = {f.failure for f in found if f.tier == 2}
    return ", ".join(sorted(failures, key=lambda s: -SEVERITY.get(s, 1))) or "as the oracle"


def _bits_lost(
    group: Any, found: list[Finding], formats: list[str], unsupported: Any, max_ulps: float
) -> str:
    """Per format, the most bits of error on ordinary inputs: the measurements that are ok
    within ``max_ulps`` (not only thanks to a large condition number) or belong to a finding
    whose only feature is an option or none at all (extreme inputs have findings of their
    own, and near zero ULPs say little)."""
    extreme = {f.id for f in found if f.feature != ORDINARY
               and not f.feature.startswith(("with ", "reduction="))}  # fmt: skip
    stretched = (group["status"] == "ok") & (group["ulps"] > max_ulps)
    kept = group[~group["finding"].isin(extreme) & ~stretched]
    cells = []
    for fmt in formats:
        if fmt in unsupported:
            cells.append("unsupported")
            continue
        part = kept[kept["format"] == fmt]["bits"].dropna()
        finite = part[part.map(math.isfinite)]
        cells.append(f"{math.ceil(finite.max())}" if not finite.empty else "-")
    return " / ".join(cells)


def _line(f: Finding) -> str:
    """One line of summary.md: ID, failure, where, how often, onset."""
    formats = ", ".join(x for x in format_names() if x in f.formats)
    what = f"{f.quantity} of {f.loss}"
    text = f"- [{f.id}](findings.md#{f.id.lower()}) **{f.failure}** {what}"
    if f.kind == POINT:
        text += f" with {f.feature}"
    elif f.detail:
        text += f": {f.detail}"
    text += f" ({formats or 'float formats'}; {_plural(len(f.rows), 'measurement')})"
    if f.onset:
        text += f"; onset {f.onset_text()}"
    if f.documented:
        text += "; documented"
    return text


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


# -- findings -------------------------------------------------------------------------------


def findings_table(found: list[Finding], limit: int = 30) -> str:
    """The worst ``limit`` findings as one markdown table (for ``$GITHUB_STEP_SUMMARY``)."""
    if not found:
        return "No findings: every measurement is ok.\n"
    rows = [[f.id, f.implementation, f.failure, f"{f.quantity} of {f.loss}",
             f.feature if f.kind == POINT else f.detail,
             ", ".join(x for x in format_names() if x in f.formats), len(f.rows),
             f.onset_text() or "-"] for f in found[:limit]]  # fmt: skip
    lines = _table(["finding", "implementation", "failure", "what", "trigger", "formats",
                    "measurements", "onset"], rows)  # fmt: skip
    if len(found) > limit:
        lines += ["", f"... and {len(found) - limit} more."]
    return "\n".join([f"### Findings ({len(found)})", "", *lines, ""])


def findings_markdown(
    found: list[Finding], rows: list[dict[str, Any]], cases: dict[str, Case]
) -> str:
    """Every finding, per implementation, worst first: what, where, the worst measurement,
    the onset, the smallest failing case and a repro in the library's own terms."""
    lines = ["# Findings", "",
             "Each finding is one implementation's failure of one kind on one quantity of one "
             "loss, under one input feature, with an ID that stays the same from run to run. "
             "Replay a case with its `stabcheck oracle` line or `Case.from_json(...)`; large "
             "cases are in `cases.jsonl.gz` (`stabcheck.report.load_case`).", ""]  # fmt: skip
    if not found:
        return "\n".join([*lines, "No findings: every measurement is ok.", ""])
    by_impl: dict[str, list[Finding]] = {}
    for f in found:
        by_impl.setdefault(f.implementation, []).append(f)
    for impl, mine in by_impl.items():
        lines += [f"## {impl}", ""]
        for f in mine:
            lines += _entry(f, rows, cases)
    return "\n".join(lines)


def _entry(f: Finding, rows: list[dict[str, Any]], cases: dict[str, Case]) -> list[str]:
    formats = ", ".join(x for x in format_names() if x in f.formats)
    lines = [f"### {f.id}", "",
             f"**{f.failure}** in the {f.quantity} of {f.loss}"
             + (f", with {f.feature}" if f.kind == POINT else f": {f.detail}") + ". "
             f"{TIERS[f.tier].capitalize()}; {_plural(len(f.rows), 'measurement')} in "
             f"{_plural(len(f.cases), 'case')}"
             + (f"; {formats}; regimes {', '.join(sorted(f.regimes))}" if f.rows else "") + "."]
    if f.documented:
        lines[-1] += f" Documented: {f.documented}."
    lines += [""]
    if f.worst[1] >= 0:
        lines += [_worst(rows[f.worst[1]]), ""]
    for fmt, o in f.onset.items():
        lines += [f"Onset in {fmt}: from {o['parameter']} {o['from']:.6g} ({o['status_before']}"
                  f" at {o['ok_at']:.6g}). Showing it: `{o['failing']}`; before: `{o['ok']}`.",
                  ""]  # fmt: skip
    case = f.shrunk
    if case is None and f.worst[1] >= 0:
        row = rows[f.worst[1]]
        whole = cases.get(row["case_id"])
        if whole is not None:
            case = unit_of(whole, row["quantity"], row["index"])
    if case is not None:
        text = case.to_json()
        label = ("A case that shows it" if f.kind != POINT else
                 "Smallest failing case" if f.shrunk is not None else "Failing case")  # fmt: skip
        if len(text) <= INLINE_CASE_LIMIT:
            lines += [f"{label}:", "", "```", case.cli(), "```", "", "```python",
                      f"Case.from_json({text!r})", "```", ""]  # fmt: skip
        else:
            row = rows[f.worst[1]]
            lines += [f"{label}: {case.predictions.shape} inputs, `load_case('cases.jsonl.gz', "
                      f"{row['case_id']!r})`, output {row['index'] or '(all)'}.", ""]  # fmt: skip
    if f.repro:
        lines += ["In the library's own terms:", "", "```python", f.repro, "```", ""]
    return lines


def _worst(row: dict[str, Any]) -> str:
    """The worst measurement in words, values in their format's width."""
    fmt = row["format"]
    where = f"output [{row['index']}]" if row["index"] != "" else "the reduced output"
    if row["status"] in ("error", "timeout"):
        return f"Worst: {row['status']} in {fmt}, case `{row['case_id']}`: {row['note']}"
    got, expected = row["got"], row["expected"]
    text = (f"Worst: {where} of case `{row['case_id']}` ({fmt}, regime {row['regime']}) returned "
            f"{format_value(got, fmt)} (`{format_hex(got, fmt)}`); correctly rounded "
            f"{format_value(expected, fmt)} (`{format_hex(expected, fmt)}`), exact "
            f"{row['exact']}")  # fmt: skip
    if failure(row) == NOT_A_NUMBER:
        return text + ": a number where the exact value is NaN."
    ulps = row["ulps"]
    if not math.isfinite(ulps):
        return text + "."
    text += f": {_num(ulps)} ULPs"
    near_zero = got == 0 or expected == 0 or abs(expected) < get_format(fmt).tiny
    if near_zero and math.isfinite(got) and math.isfinite(expected):
        text += (f" (absolute error {abs(got - expected):.3g}, relative error "
                 f"{row['relative_error']:.3g}: ULPs are many near zero)")  # fmt: skip
    return text + f", condition number {row['condition']:.3g}."


# -- tables -------------------------------------------------------------------------------


def tables_markdown(frame: Any) -> str:
    """Per implementation, loss, format and quantity: the count of each status, the median
    and maximum ULPs, and a histogram of the bits of error."""
    lines = ["# Tables", "", f"Bits of error histogram bins: {' | '.join(_bin_labels())}.", ""]
    if frame.empty:
        return "\n".join([*lines, "No measurements.", ""])
    detail = []
    keys = ["implementation", "loss", "format", "quantity"]
    for (impl, loss, fmt, quantity), group in frame.groupby(keys, sort=False):
        counts = group["status"].value_counts()
        finite = group["ulps"].dropna()
        finite = finite[finite.map(math.isfinite)]
        detail.append([
            impl, loss, fmt, quantity, len(group),
            *(int(counts.get(s, 0)) for s in STATUSES),
            _num(finite.median()) if len(finite) else "",
            _num(finite.max()) if len(finite) else "",
            f"`{_spark(group['bits'])}`",
        ])  # fmt: skip
    lines += _table([*keys, "n", *STATUSES, "median ULPs", "max ULPs", "bits"], detail)
    return "\n".join([*lines, ""])


def _bin_labels() -> list[str]:
    return ["0", *(f"<={b}" for b in BINS[1:]), ">64"]


def histogram(bits: Any) -> list[int]:
    """Counts of bits of error in the bins 0, <=1, <=2, <=4, ..., <=64, more (or inf)."""
    counts = [0] * (len(BINS) + 1)
    for b in bits.dropna():
        index = next((i for i, edge in enumerate(BINS) if b <= edge), len(BINS))
        counts[index] += 1
    return counts


def _spark(bits: Any) -> str:
    counts = histogram(bits)
    top = max(counts) or 1
    return "".join(SPARK[math.ceil(c / top * (len(SPARK) - 1))] for c in counts)


def _num(x: float) -> str:
    return f"{x:.3g}" if x >= 1000 else f"{x:g}"


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return lines


def write_cases(f: Any, cases: dict[str, Case]) -> None:
    """Write ``cases`` to the binary file ``f`` as gzipped ``{"id", "case"}`` JSON lines."""
    with gzip.GzipFile(fileobj=f, mode="wb", mtime=0) as z:  # mtime 0: same bytes each run
        for cid, case in cases.items():
            line = json.dumps({"id": cid, "case": case.to_dict()}, separators=(",", ":"))
            z.write(line.encode() + b"\n")
