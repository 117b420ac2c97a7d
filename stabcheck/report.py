"""Audit rows to files a person reads and a pull request diffs.

``write_report(result, config, out)`` writes these files as one set: staged beside them,
then moved into place with stop signals held, and the files of an earlier report that this
one does not have (the plot of an implementation no longer audited) removed, so that the
folder holds one run's report, complete (marked in ``summary.md`` and ``run.json`` when the
run was interrupted), or the previous one untouched:

* ``measurements.csv`` (and ``measurements.parquet`` when pyarrow is installed): one row a
  measurement, the columns of ``stabcheck.audit.COLUMNS`` (read it back with
  ``load_measurements``: plain ``pandas.read_csv`` turns the status ``nan`` into NaN);
* ``cases.jsonl.gz``: every case measured, ``{"id": ..., "case": {...}}`` with hex floats;
* ``summary.md``: implementation x format at a glance, hard failures apart from losses of
  accuracy, then per implementation x loss x format the count of each status, the median
  and maximum ULPs and a histogram of the bits of error;
* ``worst.md``: the worst measurements of each implementation, each with a reproduction;
* ``run.json``: the seed, the configuration, the versions of everything, the wall time;
* ``plots/*.png`` when matplotlib is installed: status and error by regime and format.

During a run, ``write_checkpoint`` keeps the measurements so far in
``measurements.partial.csv`` (what is left of a run that was killed outright); the report
replaces it.
"""

from __future__ import annotations

import functools
import gzip
import io
import json
import math
import platform
from dataclasses import asdict
from pathlib import Path
from typing import Any

from stabcheck._files import Writer, atomic_write, replace_files
from stabcheck.audit import AuditConfig, AuditResult
from stabcheck.case import Case
from stabcheck.formats import format_names
from stabcheck.measure import ACCURACY_LOSSES, HARD_FAILURES, SEVERITY, STATUSES

BINS = (0, 1, 2, 4, 8, 16, 32, 64)  # bits of error: 0, <=1, <=2, ... <=64, more
SPARK = " ▁▂▃▄▅▆▇█"
WORST_PER_IMPLEMENTATION = 10
INLINE_CASE_LIMIT = 600  # characters of JSON above which a reproduction points to cases.jsonl


CHECKPOINT = "measurements.partial.csv"
REPORT_FILES = ("measurements.csv", "measurements.parquet", "cases.jsonl.gz", "summary.md",
                "worst.md", "run.json", "plots/*.png", CHECKPOINT)  # fmt: skip


def write_report(result: AuditResult, config: AuditConfig, out: str | Path) -> list[Path]:
    """Write every report file into ``out`` (created if needed) as one set; return their
    paths."""
    frame = result.frame()
    summary = summary_markdown(frame, result, config)
    info = json.dumps(run_info(result, config), indent=2)
    files = report_files(frame, result.cases, summary, info)
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        pass
    else:
        files["measurements.parquet"] = (frame.to_parquet, True)
    files.update(plots(frame, result.unsupported))
    return replace_files(Path(out), files, REPORT_FILES)


def report_files(
    frame: Any, cases: dict[str, Case], summary: str, info: str
) -> dict[str, Writer]:
    """The files every report has (an audit's, a test session's), by name: the
    measurements, the cases, the summary, the worst cases and ``info`` as run.json."""
    return {
        "measurements.csv": (lambda f: frame.to_csv(f, index=False), False),
        "cases.jsonl.gz": (lambda f: write_cases(f, cases), True),
        "summary.md": (lambda f: f.write(summary), False),
        "worst.md": (lambda f: f.write(worst_markdown(frame, cases)), False),
        "run.json": (lambda f: f.write(info), False),
    }


def write_checkpoint(result: AuditResult, out: str | Path) -> Path:
    """The measurements so far, in ``measurements.partial.csv`` (a long run's checkpoint,
    which leaves the previous report untouched)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    return atomic_write(out / CHECKPOINT, lambda f: result.frame().to_csv(f, index=False))


TEXT_COLUMNS = ("implementation", "library", "loss", "format", "regime", "origin", "case_id",
                "quantity", "index", "status", "note", "test")  # fmt: skip


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
        "measurements": len(frame),
        "cases": len(result.cases),
        "oracle_failures": result.oracle_failures,
        "oracle_units": result.oracle_units,
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
    """The summary: a glance table, failures by kind, then the detail table."""
    info = run_info(result, config)
    versions = ", ".join(f"{k} {v}" for k, v in info["versions"].items() if k != "platform")
    what = "values"
    if config.grad:
        what = "values and gradients"
        if result.without_gradients:
            what += f" (values only for {', '.join(result.without_gradients)}: no gradient)"
    lines = [
        "# stabcheck audit",
        "",
        f"Seed {config.seed}; {config.examples} cases per loss, format and regime; "
        f"{what}; tolerance "
        f"{config.max_ulps:g} ULPs, or a relative error of {config.max_ulps:g} eps x max(1, "
        f"condition number); "
        f"{info['measurements']} measurements of {info['cases']} cases in "
        f"{info['wall_time_seconds']:.0f} s. {versions}.",
    ]
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
    lines += ["", "## At a glance", "",
              "Worst status over all losses, regimes, values and gradients, and the largest "
              "ULPs among the measurements with that status. Results that are ok only "
              "because the input is ill-conditioned are counted apart.",
              ""]  # fmt: skip
    formats = [f for f in format_names() if f in set(config.formats or format_names())]
    lines += _table(
        ["implementation", *formats],
        [
            [impl, *(_glance(group[group["format"] == f], result.unsupported.get(impl, {}), f,
                             result.implementations.get(impl), config.max_ulps)
                     for f in formats)]
            for impl, group in frame.groupby("implementation", sort=False)
        ],
    )  # fmt: skip
    reasons = [f"{name} in {fmt}: {why}" for name, found in result.unsupported.items()
               for fmt, why in found.items() if why]  # fmt: skip
    if reasons:
        lines += ["", "Unsupported, as the library said when called:", ""]
        lines += [f"- {reason}" for reason in reasons]
    if result.unavailable:
        lines += [
            "",
            "Not installed, so not audited: "
            + "; ".join(f"{k} ({v})" for k, v in result.unavailable.items())
            + ".",
        ]
    lines += ["", "## Findings", ""]
    lines += [_finding(impl, group, result) for impl, group in
              frame.groupby("implementation", sort=False)]  # fmt: skip
    lines += ["", "## Hard failures and losses of accuracy", "",
              "Hard failures (nan, overflow, clipped, error, timeout) break training; losses "
              "of accuracy (inaccurate, underflow) cost bits.", ""]  # fmt: skip
    rows = []
    for impl, group in frame.groupby("implementation", sort=False):
        statuses = group["status"]
        rows.append([
            impl, len(group), int(statuses.isin(HARD_FAILURES).sum()),
            int(statuses.isin(ACCURACY_LOSSES).sum()), int((statuses == "ok").sum()),
            _kinds(statuses),
        ])  # fmt: skip
    lines += _table(["implementation", "measurements", "hard failures", "accuracy losses",
                     "ok", "by status"], rows)  # fmt: skip
    lines += ["", "## Per implementation, loss and format", "",
              f"Bits of error histogram bins: {' | '.join(_bin_labels())}.", ""]  # fmt: skip
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


def _glance(group: Any, unsupported: Any, fmt: str, impl: Any, max_ulps: float) -> str:
    """Worst status and the largest ULPs among the rows that have it; for ok, also how
    far the condition number stretched the tolerance."""
    if fmt in unsupported:
        return "unsupported"
    if group.empty:
        return "-"
    status = max(group["status"], key=SEVERITY.__getitem__)
    rows = group[group["status"] == status]
    finite = [u for u in rows["ulps"].dropna() if math.isfinite(u)]
    text = status + (" (documented)" if impl is not None and status in impl.documented else "")
    if not finite:
        return text
    if status != "ok":
        return f"{text}, {_num(max(finite))} ULPs"
    plain = [u for u in finite if u <= max_ulps]
    stretched = [u for u in finite if u > max_ulps]
    text = f"ok, {_num(max(plain, default=0))} ULPs"
    if stretched:
        text += f" ({len(stretched)} ill-conditioned up to {_num(max(stretched))})"
    return text


def _finding(name: str, group: Any, result: AuditResult) -> str:
    """One line on what an implementation got wrong, where, and how badly."""
    impl = result.implementations.get(name)
    finite = [u for u in group["ulps"].dropna() if math.isfinite(u)]
    largest = f"{_num(max(finite))} ULPs" if finite else "no finite error"
    bad = group[group["status"] != "ok"]
    if bad.empty:
        return f"- **{name}**: every one of {len(group)} measurements ok (largest {largest})."
    parts = []
    for status in sorted(set(bad["status"]), key=SEVERITY.__getitem__, reverse=True):
        rows = bad[bad["status"] == status]
        where = ", ".join(dict.fromkeys(rows["regime"]))
        formats = ", ".join(f for f in format_names() if f in set(rows["format"]))
        quantities = " and ".join(dict.fromkeys(rows["quantity"]))
        text = f"{status} {len(rows)}x ({quantities}; {formats}; {where})"
        if impl is not None and status in impl.documented:
            text += f" - documented: {impl.documented[status]}"
        parts.append(text)
    return f"- **{name}**: " + "; ".join(parts) + f". Largest error {largest}."


def _kinds(statuses: Any) -> str:
    counts = statuses.value_counts()
    return ", ".join(f"{s} {int(counts[s])}" for s in STATUSES if s in counts and s != "ok")


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


# -- worst cases --------------------------------------------------------------------------


def worst_markdown(frame: Any, cases: dict[str, Case]) -> str:
    """The worst measurements of each implementation, with pasteable reproductions."""
    lines = ["# Worst cases", "",
             "The most serious measurements of each implementation (hard failures first, "
             "then the most ULPs), one per case. Replay one with the `stabcheck oracle` "
             "line, or in Python with `Case.from_json(...)`; large cases are in "
             "`cases.jsonl.gz` (`stabcheck.report.load_case`).", ""]  # fmt: skip
    if frame.empty:
        return "\n".join([*lines, "No measurements.", ""])
    ranked = frame.assign(
        _severity=frame["status"].map(SEVERITY), _ulps=frame["ulps"].fillna(math.inf)
    ).sort_values(["_severity", "_ulps"], ascending=False, kind="stable")
    for impl, group in ranked.groupby("implementation", sort=False):
        bad = group[group["status"] != "ok"].drop_duplicates("case_id")
        lines += [f"## {impl}", ""]
        if bad.empty:
            lines += ["Every measurement is ok.", ""]
            continue
        for _, row in bad.head(WORST_PER_IMPLEMENTATION).iterrows():
            lines += _worst_entry(row, cases.get(row["case_id"]))
    return "\n".join(lines)


def _worst_entry(row: Any, case: Case | None) -> list[str]:
    where = f"[{row['index']}]" if row["index"] != "" else ""
    lines = [
        f"### {row['status']}: {row['loss']} {row['quantity']}{where}, {row['format']}, "
        f"regime {row['regime']}",
        "",
    ]
    lines += [f"Case `{row['case_id']}`, output `{row['index']}`.", ""]
    if row["status"] in ("error", "timeout"):
        lines += [f"{row['note']}", ""]
    else:
        lines += [
            f"exact {row['exact']}, correctly rounded {_hex(row['expected'])}, returned "
            f"{_hex(row['got'])}: {_num(row['ulps'])} ULPs, condition number "
            f"{row['condition']:.3g}." + (f" Note: {row['note']}." if row["note"] else ""),
            "",
        ]
    if case is not None:
        if row["index"] != "":
            case = case.unit(tuple(int(i) for i in str(row["index"]).split(",")))
        text = case.to_json()
        if len(text) <= INLINE_CASE_LIMIT:
            lines += ["```", case.cli(), "```", "", "```python", f"Case.from_json({text!r})",
                      "```", ""]  # fmt: skip
        else:
            lines += ["```python", f"load_case('cases.jsonl.gz', {row['case_id']!r})  # "
                      f"{case.predictions.shape} inputs, row {row['index']}", "```",
                      ""]  # fmt: skip
    return lines


def _hex(x: float) -> str:
    return f"{x!r} ({float(x).hex()})" if math.isfinite(x) else repr(x)


def write_cases(f: Any, cases: dict[str, Case]) -> None:
    """Write ``cases`` to the binary file ``f`` as gzipped ``{"id", "case"}`` JSON lines."""
    with gzip.GzipFile(fileobj=f, mode="wb", mtime=0) as z:  # mtime 0: same bytes each run
        for cid, case in cases.items():
            line = json.dumps({"id": cid, "case": case.to_dict()}, separators=(",", ":"))
            z.write(line.encode() + b"\n")


# -- plots --------------------------------------------------------------------------------


def plots(frame: Any, unsupported: Any = None) -> dict[str, Writer]:
    """One PNG per implementation, ``plots/NAME.png``: the worst status (colour) and the
    largest bits of error (number) for each regime and format, values and gradients side
    by side; a format in ``unsupported`` (name -> formats) is marked so. None without
    matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.colors import ListedColormap
    except ImportError:
        return {}
    if frame.empty:
        return {}
    colours = ["#4caf50", "#ffc107", "#ff9800", "#e53935", "#8e24aa", "#b71c1c", "#424242",
               "#757575"]  # fmt: skip
    cmap = ListedColormap(colours)
    unsupported = unsupported or {}
    shown = set(frame["format"]) | {f for found in unsupported.values() for f in found}
    formats = [f for f in format_names() if f in shown]
    written: dict[str, Writer] = {}
    for impl, group in frame.groupby("implementation", sort=False):
        quantities = list(dict.fromkeys(group["quantity"]))
        regimes = list(dict.fromkeys(group["regime"]))
        fig, axes = plt.subplots(1, len(quantities), squeeze=False,
                                 figsize=(3.4 + 1.6 * len(formats) * len(quantities),
                                          1.2 + 0.45 * len(regimes)))  # fmt: skip
        for ax, quantity in zip(axes[0], quantities):
            part = group[group["quantity"] == quantity]
            grid = [[float("nan")] * len(formats) for _ in regimes]
            for (regime, fmt), cell in part.groupby(["regime", "format"]):
                status = max(cell["status"], key=SEVERITY.__getitem__)
                grid[regimes.index(regime)][formats.index(fmt)] = SEVERITY[status]
                finite = [b for b in cell["bits"].dropna() if math.isfinite(b)]
                label = f"{max(finite):.0f}" if finite else status
                ax.text(formats.index(fmt), regimes.index(regime), label, ha="center",
                        va="center", fontsize=8)  # fmt: skip
            for fmt in unsupported.get(impl, {}):
                if fmt in formats:
                    ax.text(formats.index(fmt), (len(regimes) - 1) / 2, "unsupported",
                            ha="center", va="center", fontsize=8, color="#757575",
                            rotation=90 if len(regimes) > 2 else 0)  # fmt: skip
            ax.imshow(grid, cmap=cmap, vmin=-0.5, vmax=len(colours) - 0.5, aspect="auto")
            ax.set_xticks(range(len(formats)), formats, fontsize=8)
            ax.set_yticks(range(len(regimes)), regimes, fontsize=8)
            ax.set_title(f"{impl}: {quantity}", fontsize=9)
        handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colours]
        fig.legend(handles, list(SEVERITY), loc="center right", fontsize=7, frameon=False,
                   title="worst status", title_fontsize=7)  # fmt: skip
        fig.suptitle("numbers: largest bits of error, log2(1 + ULPs)", fontsize=7, y=0.02)
        fig.tight_layout(rect=(0, 0.04, 0.84, 1))
        png = io.BytesIO()
        fig.savefig(png, format="png", dpi=110)
        plt.close(fig)
        name = f"plots/{impl.replace(':', '_').replace('/', '_')}.png"
        written[name] = (functools.partial(_write_bytes, png.getvalue()), True)
    return written


def _write_bytes(data: bytes, f: Any) -> None:
    f.write(data)
