"""The regression gate: a deterministic audit compared with a committed baseline.

Modelled on glibc's committed per-function ULP tables, but finer: the baseline holds one
entry per implementation x loss x format x regime x quantity (value or gradient), with
the count of every status and the largest and median ULPs. A fresh run is **worse**
(``compare`` lists a regression, the gate exits 1) when, for some entry,

* a status other than ``ok`` is counted more often than in the baseline (a new class of
  failure, such as the first ``nan``, is a count growing from zero; each status is its own
  class, so an overflow that turns into an underflow is an improvement and a regression);
* the max or median ULPs grow by more than the tolerance: ``max(ulps, fraction * old)``
  (defaults 1 ULP and 25%, ``Tolerance``), so a different libm's last bit passes and a
  real loss of accuracy does not;
* an entry of the baseline is no longer measured although it is selected;
* an entry that the baseline does not know has a status other than ``ok``;
* a finding (``stabcheck.findings``) that the baseline does not hold appears, or one whose
  onset the baseline records starts closer to ordinary inputs than it did (its parameter
  nearer 0, or a probability nearer 1/2, by more than ``ONSET_SLACK``). Each such
  regression comes with the case that replays it. Onsets are recorded as far as the
  audit's time budget for findings reached; those missing on either side are not compared.

The reverse changes are improvements: the gate passes and suggests ``--update``.

The corpus is fixed: the audit's seeded cases (no targeted search, whose cases depend on
what the implementation returns) plus a **regression corpus**, a readable file with one
case per line as ``Case.to_json`` writes it (hex floats; ``#`` comments allowed). Its
cases are measured as the regime ``corpus``. ULPs are taken over the measurements that
have a finite count (a NaN result has none; its status says it all).

The baseline is JSON, sorted, one entry per line, with the corpus it was measured on and
the versions of what measured it, so that two runs with the same seed write the same file.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from stabcheck.case import Case
from stabcheck.errors import InvalidArgument
from stabcheck.measure import OK, SEVERITY, STATUSES

FORMAT_VERSION = 1
CORPUS_REGIME = "corpus"
CORPUS_UNIT_LIMIT = 1024  # elements of the largest case --save-failures adds to a corpus
KEY_FIELDS = ("implementation", "loss", "format", "regime", "quantity")
ONSET_SLACK = 0.01  # relative move of an onset toward ordinary inputs that is not a regression
Key = tuple[str, str, str, str, str]


@dataclass(frozen=True)
class Tolerance:
    """How far max and median ULPs may grow before the gate calls it a regression:
    more than ``max(ulps, fraction * baseline)``."""

    ulps: float = 1.0
    fraction: float = 0.25

    def __post_init__(self) -> None:
        for name in ("ulps", "fraction"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0 <= value < math.inf):
                raise InvalidArgument(
                    f"tolerance {name}={value!r} must be a finite non-negative number "
                    f"(--tolerance-{name} N)"
                )

    def slack(self, old: float) -> float:
        return max(self.ulps, self.fraction * old)


@dataclass(frozen=True)
class Entry:
    """What one implementation x loss x format x regime x quantity measured."""

    key: Key
    measurements: int
    statuses: Mapping[str, int]
    max_ulps: float | None
    median_ulps: float | None

    def to_dict(self) -> dict[str, Any]:
        return {
            **dict(zip(KEY_FIELDS, self.key, strict=True)),
            "measurements": self.measurements,
            "statuses": dict(self.statuses),
            "max_ulps": _number(self.max_ulps),
            "median_ulps": _number(self.median_ulps),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Entry:
        unknown = sorted(set(data["statuses"]) - set(STATUSES))
        if unknown:
            raise ValueError(f"unknown status {unknown[0]!r} (statuses: {', '.join(STATUSES)})")
        return cls(
            key=tuple(str(data[k]) for k in KEY_FIELDS),  # type: ignore[arg-type]
            measurements=int(data["measurements"]),
            statuses={str(k): int(v) for k, v in data["statuses"].items()},
            max_ulps=None if data["max_ulps"] is None else float(data["max_ulps"]),
            median_ulps=None if data["median_ulps"] is None else float(data["median_ulps"]),
        )


def _read_text(path: Path, what: str, fix: str) -> str:
    """The UTF-8 text of ``path``, or ``InvalidArgument`` saying why not and what to do."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InvalidArgument(f"{what} {path} does not exist; {fix}") from None
    except OSError as exc:
        raise InvalidArgument(
            f"{what} {path} cannot be read ({exc.strerror or exc}); {fix}"
        ) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        kind = "gzip" if data[:2] == b"\x1f\x8b" else "UTF-16" if data[:2] in (
            b"\xff\xfe", b"\xfe\xff") else "binary"  # fmt: skip
        raise InvalidArgument(
            f"{what} {path} is not UTF-8 text (it looks {kind}); a stabcheck {what} is a "
            f"text file as stabcheck writes it: restore it from version control or {fix}"
        ) from None


def _number(x: float | None) -> float | int | None:
    return None if x is None else int(x) if float(x).is_integer() else x


def entries(rows: Iterable[Mapping[str, Any]]) -> dict[Key, Entry]:
    """Summarise measurement rows (the audit's ``COLUMNS``) into baseline entries."""
    groups: dict[Key, list[Mapping[str, Any]]] = defaultdict(list)
    for row in rows:
        regime = CORPUS_REGIME if row.get("origin") == "corpus" else row["regime"]
        key = (row["implementation"], row["loss"], row["format"], regime, row["quantity"])
        groups[key].append(row)
    out = {}
    for key in sorted(groups):
        members = groups[key]
        counts = Counter(str(r["status"]) for r in members)
        ulps = [float(u) for r in members if (u := r.get("ulps")) is not None and math.isfinite(u)]
        out[key] = Entry(
            key=key,
            measurements=len(members),
            statuses={s: counts[s] for s in sorted(counts, key=SEVERITY.__getitem__)},
            max_ulps=max(ulps) if ulps else None,
            median_ulps=statistics.median(ulps) if ulps else None,
        )
    return out


# -- the baseline file ----------------------------------------------------------------------


@dataclass
class Baseline:
    """Entries, the corpus they were measured on, and the environment that measured them."""

    entries: dict[Key, Entry]
    corpus: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, str] = field(default_factory=dict)
    findings: dict[str, dict[str, Any]] = field(default_factory=dict)  # by ID (finding_entries)

    def dumps(self) -> str:
        """JSON with sorted keys and one entry per line, for readable diffs."""
        head = {
            "stabcheck_baseline": FORMAT_VERSION,
            "corpus": self.corpus,
            "environment": dict(sorted(self.environment.items())),
        }
        lines = ["{"]
        for name, value in head.items():
            lines.append(f"  {json.dumps(name)}: {json.dumps(value, sort_keys=True)},")
        body = [json.dumps(self.entries[k].to_dict()) for k in sorted(self.entries)]
        found = [json.dumps(self.findings[k], sort_keys=True) for k in sorted(self.findings)]
        for name, items in (("entries", body), ("findings", found)):
            lines.append(f'  "{name}": [')
            lines += [f"    {line}," for line in items[:-1]]
            lines += [f"    {line}" for line in items[-1:]]
            lines.append("  ]," if name == "entries" else "  ]")
        lines.append("}")
        return "\n".join(lines) + "\n"

    def save(self, path: str | Path) -> Path:
        from stabcheck._files import atomic_write

        return atomic_write(Path(path), lambda f: f.write(self.dumps()))

    @classmethod
    def load(cls, path: str | Path, update: str = "") -> Baseline:
        """Read a baseline; ``InvalidArgument`` says what is wrong with a missing or
        damaged file and how to write a new one (``update``: the command that does)."""
        path = Path(path)
        fix = f"write one with `{update or f'stabcheck gate --baseline {path} --update'}`"
        text = _read_text(path, "baseline", fix)
        try:
            data = json.loads(text)
            if not isinstance(data, dict):
                raise ValueError(f"it holds a JSON {type(data).__name__}, not an object")
            if data.get("stabcheck_baseline") != FORMAT_VERSION:
                raise ValueError(
                    f"stabcheck_baseline is {data.get('stabcheck_baseline')!r}, "
                    f"expected {FORMAT_VERSION}"
                )
            found = [Entry.from_dict(e) for e in data["entries"]]
            return cls(
                entries={e.key: e for e in found},
                corpus=dict(data.get("corpus", {})),
                environment=dict(data.get("environment", {})),
                findings={str(f["id"]): dict(f) for f in data.get("findings", [])},
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            what = f"{type(exc).__name__}: {exc}" if isinstance(exc, KeyError) else str(exc)
            raise InvalidArgument(
                f"baseline {path} is not a stabcheck baseline ({what}); restore it from "
                f"version control or {fix}"
            ) from None


# -- comparing ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    """One difference between the baseline and the run, in one entry."""

    key: Key
    what: str  # a status, "max ULPs", "median ULPs", "measured", "entry" or a finding
    before: Any
    after: Any
    replay: str = ""  # a case (Case.to_json) that shows a finding's regression


@dataclass
class Comparison:
    """Regressions fail the gate; improvements and new entries suggest ``--update``."""

    regressions: list[Change] = field(default_factory=list)
    improvements: list[Change] = field(default_factory=list)
    compared: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.regressions

    def headline(self, baseline: str) -> str:
        if self.regressions:
            return (
                f"stabcheck gate: FAILED, {_plural(len(self.regressions), 'regression')} "
                f"against {baseline} ({_plural(self.compared, 'entry', 'entries')} compared)"
            )
        better = f"; {_plural(len(self.improvements), 'improvement')}" if self.improvements else ""
        return (
            f"stabcheck gate: passed, nothing worse than {baseline} "
            f"({_plural(self.compared, 'entry', 'entries')} compared{better})"
        )

    def text(self, baseline: str, update: str) -> str:
        """The terminal report: headline, aligned tables, what to do."""
        lines = [self.headline(baseline)]
        for title, changes in self._sections():
            if changes:
                lines += ["", f"{title}:", *_aligned([_HEADER] + [_cells(c) for c in changes])]
        lines += [f"note: {n}" for n in self.notes]
        replays = [c for c in self.regressions if c.replay]
        if replays:
            lines += ["", "Replay each finding that is new or starts earlier (Case.from_json):"]
            lines += [f"  {c.what.split(':')[0]}: {c.replay}" for c in replays]
        if self.regressions:
            lines += ["", f"If the change is intended, rewrite the baseline: {update}"]
        elif self.improvements:
            lines += ["", f"Things got better; record them: {update}"]
        return "\n".join(lines) + "\n"

    def markdown(self, baseline: str, update: str) -> str:
        """The same as a markdown summary (for ``$GITHUB_STEP_SUMMARY``)."""
        lines = [f"## {self.headline(baseline)}", ""]
        for title, changes in self._sections():
            if changes:
                lines += [f"### {title.capitalize()}", ""]
                lines += ["| " + " | ".join(_HEADER) + " |", "|" + " --- |" * len(_HEADER)]
                lines += ["| " + " | ".join(_cells(c)) + " |" for c in changes]
                lines.append("")
        lines += [f"- {n}" for n in self.notes]
        replays = [c for c in self.regressions if c.replay]
        if replays:
            lines += ["### Replay", ""]
            lines += [f"- {c.what.split(':')[0]}: `{c.replay}`" for c in replays]
            lines.append("")
        if self.regressions or self.improvements:
            lines += ["", f"To record the new results: `{update}`"]
        return "\n".join(lines) + "\n"

    def _sections(self) -> list[tuple[str, list[Change]]]:
        return [("regressions", self.regressions), ("improvements", self.improvements)]


_HEADER = [*KEY_FIELDS, "what", "baseline", "now"]


def _cells(change: Change) -> list[str]:
    return [*change.key, change.what, _show(change.before), _show(change.after)]


def _show(x: Any) -> str:
    if isinstance(x, float):
        return f"{x:.6g}"
    return "-" if x is None else str(x)


def _plural(n: int, word: str, plural: str = "") -> str:
    return f"{n} {word if n == 1 else plural or word + 's'}"


def _aligned(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]


def compare(
    baseline: Mapping[Key, Entry],
    run: Mapping[Key, Entry],
    tolerance: Tolerance = Tolerance(),
    expected: Iterable[Key] | None = None,
    findings: tuple[Mapping[str, Mapping[str, Any]], Mapping[str, Mapping[str, Any]]] = ({}, {}),
    searched: bool = True,
) -> Comparison:
    """Compare the run's entries with the baseline's. ``expected`` are the baseline keys
    the run should have measured (missing ones are regressions); ``None`` compares only the
    keys the run has (a partial test session). ``findings`` holds the baseline's and the
    run's findings (``finding_entries``), compared by ``compare_findings``."""
    result = Comparison()
    for key in sorted(set(expected or ()) - set(run)):
        if key in baseline:
            result.regressions.append(Change(key, "measured", "yes", "no longer"))
    for key in sorted(run):
        new = run[key]
        old = baseline.get(key)
        if old is None:
            failing = [Change(key, s, "not in baseline", n) for s, n in new.statuses.items()
                       if s != OK]  # fmt: skip
            if failing:
                result.regressions += failing
            else:
                result.improvements.append(Change(key, "entry", "not in baseline", "all ok"))
            continue
        result.compared += 1
        for status in sorted((set(old.statuses) | set(new.statuses)) - {OK}, key=SEVERITY.get):
            before, after = old.statuses.get(status, 0), new.statuses.get(status, 0)
            if after > before:
                result.regressions.append(Change(key, status, before, after))
            elif after < before:
                result.improvements.append(Change(key, status, before, after))
        for what, before, after in (
            ("max ULPs", old.max_ulps, new.max_ulps),
            ("median ULPs", old.median_ulps, new.median_ulps),
        ):
            if before is None or after is None:
                continue
            if after > before + tolerance.slack(before):
                result.regressions.append(Change(key, what, before, after))
            elif after < before - tolerance.slack(before):
                result.improvements.append(Change(key, what, before, after))
    compare_findings(*findings, result, searched)
    return result


def finding_entries(
    found: Iterable[Any], rows: Sequence[Mapping[str, Any]], cases: Mapping[str, Case]
) -> dict[str, dict]:
    """The findings (``stabcheck.findings.Finding``) as the baseline keeps them: what they
    are, how many measurements show them, their onsets, and a case that replays them."""
    out = {}
    for f in found:
        onsets = {fmt: {"parameter": o["parameter"], "from": o["from"], "case": o["failing"]}
                  for fmt, o in f.onset.items()}  # fmt: skip
        out[f.id] = {
            "id": f.id, "implementation": f.implementation, "loss": f.loss,
            "quantity": f.quantity, "kind": f.kind, "failure": f.failure,
            "feature": f.feature, "measurements": len(f.rows), "onsets": onsets,
            "case": _replay(f, rows, cases),
        }  # fmt: skip
    return out


REPLAY_LIMIT = 2000  # characters of a finding's case kept inline; larger ones are named


def _replay(finding: Any, rows: Sequence[Mapping[str, Any]], cases: Mapping[str, Case]) -> str:
    """The finding's smallest case, else the unit of its worst measurement, as JSON."""
    from stabcheck.findings import unit_of

    case = finding.shrunk
    row = rows[finding.worst[1]] if finding.worst[1] >= 0 else None
    if case is None and row is not None and row["case_id"] in cases:
        case = unit_of(cases[row["case_id"]], row["quantity"], row["index"])
    if case is None:
        return ""
    text = case.to_json()
    if len(text) <= REPLAY_LIMIT or row is None:
        return text
    return (f"case {row['case_id']} (cases.jsonl.gz of an audit with the same seed), output "
            f"[{row['index']}]: {case.predictions.shape} inputs")


def _distance(parameter: str, x: float) -> float:
    """How far an onset is from ordinary inputs: |x|, or |x - 1/2| for a probability."""
    return abs(x - 0.5) if parameter == "probability" else abs(x)


def compare_findings(
    old: Mapping[str, Mapping[str, Any]],
    new: Mapping[str, Mapping[str, Any]],
    into: Comparison,
    searched: bool = True,
) -> None:
    """A finding the baseline does not hold is a regression, so is an onset that moved
    toward ordinary inputs (by more than ``ONSET_SLACK``); a finding gone, or an onset that
    moved away, is an improvement. Shapes that only a search finds (not monotone, order)
    count only when both runs searched every finding (``searched``): which are searched
    depends on the time budget. Without findings in the baseline (an older file), nothing
    is compared."""
    if not old:
        return
    for fid in sorted(set(new) | set(old)):
        f = new.get(fid) or old[fid]
        if not searched and f.get("kind", "point") not in ("point", "clamp"):
            continue
        key: Key = (f["implementation"], f["loss"], "", "", f["quantity"])
        what = f"{fid}: {f['failure']} with {f['feature']}"
        if fid not in old:
            into.regressions.append(Change(key, what, "not in baseline",
                                           f"{f['measurements']} measurements", f["case"]))
            continue
        if fid not in new:
            into.improvements.append(Change(key, what, f"{f['measurements']} measurements",
                                            "gone"))
            continue
        for fmt, onset in new[fid]["onsets"].items():
            before = old[fid]["onsets"].get(fmt)
            if before is None or before["parameter"] != onset["parameter"]:
                continue
            far, near = _distance(onset["parameter"], before["from"]), _distance(
                onset["parameter"], onset["from"])
            change = Change(key, f"{what}: onset in {fmt}",
                            f"{onset['parameter']} {before['from']:.6g}",
                            f"{onset['parameter']} {onset['from']:.6g}", onset["case"])
            if near < far * (1 - ONSET_SLACK):
                into.regressions.append(change)
            elif near > far * (1 + ONSET_SLACK):
                into.improvements.append(replace(change, replay=""))


# -- the regression corpus ------------------------------------------------------------------


def load_corpus(path: str | Path) -> list[Case]:
    """The cases of a corpus file (none if it does not exist)."""
    path = Path(path)
    if not path.exists():
        return []
    fix = "each line holds one case as Case.to_json writes it, e.g. from findings.md"
    cases = []
    for number, line in enumerate(_read_text(path, "corpus", fix).splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            cases.append(Case.from_json(line))
        except InvalidArgument as exc:
            raise InvalidArgument(
                f"{path}:{number} is not a case ({exc}); {fix} or a failing check; fix or "
                "delete the line"
            ) from None
    return cases


def add_to_corpus(path: str | Path, cases: Sequence[Case]) -> list[Case]:
    """Append the cases that the corpus does not hold yet; return those added."""
    from stabcheck._files import atomic_write

    path = Path(path)
    added = _new(load_corpus(path), cases)
    if added:
        text = path.read_text(encoding="utf-8") if path.exists() else _CORPUS_HEADER
        if text and not text.endswith("\n"):
            text += "\n"
        text += "".join(c.to_json() + "\n" for c in added)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda f: f.write(text))
    return added


_CORPUS_HEADER = (
    "# stabcheck regression corpus: one case per line (Case.to_json, hex floats).\n"
    "# `stabcheck gate` measures every case here as the regime 'corpus'.\n"
)


def failing_units(rows: Iterable[Mapping[str, Any]], cases: Mapping[str, Case]) -> list[Case]:
    """One failing row or element of each implementation x loss x format x quantity x
    status, cut out of its case: the smallest unit that shows the failure (the worst one
    among equals), none larger than ``CORPUS_UNIT_LIMIT`` elements, to keep the corpus
    readable (wide rows stay covered by the drawn cases)."""
    best: dict[tuple[str, ...], tuple[tuple[int, float], Case]] = {}
    for row in rows:
        if row["status"] == OK or row["case_id"] not in cases:
            continue
        unit = _unit(cases[row["case_id"]], str(row.get("index", "")))
        if unit.predictions.size > CORPUS_UNIT_LIMIT:
            continue
        group = (row["implementation"], row["loss"], row["format"], row["quantity"], row["status"])
        rank = (unit.predictions.size, -_ulps(row))
        if group not in best or rank < best[group][0]:
            best[group] = (rank, unit)
    return [best[group][1] for group in sorted(best)]


def _unit(case: Case, index: str) -> Case:
    if not index:
        return case
    position = tuple(int(i) for i in index.split(","))
    return case.unit(position[:1] if case.loss.rowwise else position)


def _ulps(row: Mapping[str, Any]) -> float:
    u = row.get("ulps")
    return float(u) if u is not None and not math.isnan(u) else math.inf


# -- running the gate -----------------------------------------------------------------------

CORPUS_SETTINGS = ("seed", "examples", "grad", "max_ulps")  # what makes the corpus
SELECTION = ("implementations", "losses", "formats", "regimes")  # what may be narrowed


def corpus_file_for(baseline: str | Path) -> Path:
    """The regression corpus beside a baseline: ``baseline.json`` -> ``baseline.cases.jsonl``."""
    return Path(baseline).with_suffix(".cases.jsonl")


@dataclass
class GateResult:
    """What a gate run measured and, unless it rewrote the baseline, how it compares."""

    audit: Any  # stabcheck.audit.AuditResult
    obtained: Baseline  # the run as a baseline: what update writes
    comparison: Comparison | None = None  # None when the baseline was rewritten
    corpus_file: Path | None = None
    added: list[Case] = field(default_factory=list)  # cases added to the corpus
    notes: list[str] = field(default_factory=list)  # what the user should know


def run_gate(
    baseline: str | Path,
    given: Mapping[str, Any] | None = None,
    update: bool = False,
    corpus_file: str | Path | None = None,
    add_cases: Sequence[Case] = (),
    save_failures: bool = False,
    tolerance: Tolerance = Tolerance(),
    progress: Any = None,
    accept_errors: bool = False,
) -> GateResult:
    """Run the audit on the baseline's corpus and compare, or (``update``) rewrite it.

    ``given`` holds the audit settings from the command line (``AuditConfig`` field names;
    ``None`` for those not given): the selection may narrow the baseline's, the corpus
    settings must match it unless ``update``. A user's ``module:function`` runs only when
    ``given`` names it: a baseline is data and never chooses the code that runs.
    ``add_cases`` are measured with the corpus and written to it once the run succeeded;
    ``save_failures`` (with ``update``) adds the smallest failing case of each kind.
    ``update`` refuses to record an entry whose every measurement is ``error`` or
    ``timeout`` (a function run on a loss it does not compute) unless ``accept_errors``.
    ``InvalidArgument`` or ``AdapterUnavailable`` mean the gate could not run, and nothing
    was written.
    """
    from stabcheck._files import writable_file
    from stabcheck.audit import run_audit

    path = Path(baseline)
    if save_failures and not update:
        raise InvalidArgument(
            "save_failures adds the failing cases to the corpus, which the baseline must "
            "then record: use it together with update (--save-failures --update)"
        )
    notes = []
    if update:
        writable_file(path, "baseline")
    try:
        old = None if update and not path.exists() else Baseline.load(path)
    except InvalidArgument as exc:
        if not update:
            raise
        old = None  # what update is for; its settings come from the command line alone
        notes.append(f"{str(exc).split(';')[0]}: replaced, with the settings given")
    config = gate_config(old, given or {}, update)
    if old is not None and not update and not expected_keys(old, config):
        raise InvalidArgument(
            f"the selection matches none of the {len(old.entries)} entries of baseline {path}"
            f" ({_recorded(old)}), so the gate would compare nothing; narrow it to what the "
            "baseline holds, or rewrite the baseline with --update"
        )
    if corpus_file is None:
        recorded = old.corpus.get("corpus_file") if old else None
        corpus_file = path.parent / str(recorded) if recorded else corpus_file_for(path)
    corpus_file = Path(corpus_file)
    _check_measured(add_cases, config)
    corpus = load_corpus(corpus_file)
    new_cases = _new(corpus, add_cases)  # written to the corpus once the run succeeded
    audit = run_audit(config, progress=progress, corpus=[*corpus, *new_cases])
    _check_complete(audit)
    if save_failures:
        failing = _new([*corpus, *new_cases], failing_units(audit.rows, audit.cases))
        if failing:
            extra = run_audit(config, corpus=failing, draw=False)
            _check_complete(extra)
            audit.rows.extend(extra.rows)
            audit.cases.update(extra.cases)
            new_cases += failing
    record = corpus_record(config, audit, corpus_file, path, len(corpus) + len(new_cases))
    obtained = Baseline(entries(audit.rows), record, environment(audit, config),
                        finding_entries(audit.findings, audit.rows, audit.cases))  # fmt: skip
    if update and not accept_errors:
        _refuse_failed_entries(obtained, audit)
    added = add_to_corpus(corpus_file, new_cases) if new_cases else []
    if update:
        obtained.save(path)
        return GateResult(audit, obtained, None, corpus_file, added, notes)
    if old is None:  # only when update made it optional
        raise InvalidArgument(f"baseline {path} does not exist")
    searched = bool(old.corpus.get("findings_searched_all")) and record["findings_searched_all"]
    comparison = compare(old.entries, obtained.entries, tolerance, expected_keys(old, config),
                         (_selected_findings(old, config), obtained.findings),
                         searched)  # fmt: skip
    comparison.notes += [
        f"{name} was {old.environment[name]} in the baseline, now {value}"
        for name, value in sorted(obtained.environment.items())
        if name in old.environment and old.environment[name] != value
    ]
    return GateResult(audit, obtained, comparison, corpus_file, added, notes)


def _new(corpus: Sequence[Case], cases: Sequence[Case]) -> list[Case]:
    """``cases`` that ``corpus`` does not hold, each once."""
    known = {c.id for c in corpus}
    fresh = []
    for case in cases:
        if case.id not in known:
            known.add(case.id)
            fresh.append(case)
    return fresh


RAN_NOT = ("error", "timeout")  # statuses of a call that gave nothing to measure


def _refuse_failed_entries(obtained: Baseline, audit: Any) -> None:
    """``InvalidArgument`` when some entry measured nothing but errors and timeouts."""
    failed = [e for e in obtained.entries.values() if set(e.statuses) <= set(RAN_NOT)]
    if not failed:
        return
    first = failed[0].key
    note = next((r["note"] for r in audit.rows if r["status"] in RAN_NOT
                 and (r["implementation"], r["loss"]) == first[:2]), "")  # fmt: skip
    shown = "; ".join(" ".join(e.key) for e in failed[:3])
    more = f" and {len(failed) - 3} more" if len(failed) > 3 else ""
    raise InvalidArgument(
        f"not writing the baseline: {len(failed)} of its {len(obtained.entries)} entries "
        f"measured nothing but errors or timeouts ({shown}{more}; the first: {note}). A "
        "function run on a loss it does not compute must not become part of a baseline: "
        "select its loss with --loss, fix the function, or record them anyway with "
        "--accept-errors"
    )


def _recorded(baseline: Baseline) -> str:
    """What a baseline holds, in a few words."""
    keys = baseline.entries
    parts = [f"{name} {', '.join(sorted({k[i] for k in keys}))}"
             for i, name in ((0, "implementations"), (1, "losses"), (2, "formats"))]  # fmt: skip
    return "; ".join(parts)


def _check_measured(cases: Sequence[Case], config: Any) -> None:
    """Each added case is of a loss and format the gate measures, else nothing would."""
    from stabcheck.formats import format_names
    from stabcheck.losses import loss_names

    losses, formats = config.losses or loss_names(), config.formats or format_names()
    for case in cases:
        if case.loss.name not in losses or case.format.name not in formats:
            raise InvalidArgument(
                f"add_case: the case is {case.loss.name} in {case.format.name}, but the gate "
                f"measures {', '.join(losses)} in {', '.join(formats)}, so it would never be "
                "measured; add it to a baseline of its loss and format"
            )


def _check_complete(audit: Any) -> None:
    if audit.interrupted:
        raise KeyboardInterrupt
    if audit.oracle_failures:
        raise InvalidArgument(
            f"the oracle could not certify {len(audit.oracle_failures)} case(s) "
            f"({audit.oracle_failures[0]}); the gate needs every case measured"
        )


def gate_config(baseline: Baseline | None, given: Mapping[str, Any], update: bool) -> Any:
    """The audit configuration of a gate run: the baseline's corpus, narrowed by ``given``."""
    from stabcheck.audit import DEFAULT_TIMEOUT, AuditConfig

    recorded = baseline.corpus if baseline else {}
    settings: dict[str, Any] = {}
    for name in (*SELECTION, *CORPUS_SETTINGS):
        value, old = given.get(name), recorded.get(name)
        if value is None:
            value = old
            if old is not None and name in SELECTION and (
                not isinstance(old, list) or not all(isinstance(v, str) for v in old)
            ):
                raise InvalidArgument(
                    f"the baseline records {name}={old!r}, which is not a list of names; "
                    "restore it from version control or rewrite it with --update"
                )
        elif name in CORPUS_SETTINGS and not update and old is not None and value != old:
            raise InvalidArgument(
                f"{name}={value!r} differs from the baseline's {name}={old!r}: the gate "
                "compares the same corpus; drop the option, or rewrite the baseline with update"
            )
        if value is not None:
            settings[name] = tuple(value) if name in SELECTION else value
    code = [n for n in recorded.get("implementations") or () if ":" in str(n)]
    if code and given.get("implementations") is None:
        options = " ".join(f"--impl {n}" for n in code)
        raise InvalidArgument(
            f"the baseline names function(s) of your own ({', '.join(code)}); a baseline is "
            f"data and never chooses the code that runs: name them on the command line, "
            f"{options} (implementations=[...] in Python)"
        )
    timeout = given.get("timeout") or DEFAULT_TIMEOUT
    try:
        return AuditConfig(search=0, timeout=timeout, jobs=given.get("jobs"),
                           **settings).validated()  # fmt: skip
    except InvalidArgument as exc:
        if baseline is None or not any(recorded.get(k) is not None and given.get(k) is None
                                       for k in (*SELECTION, *CORPUS_SETTINGS)):  # fmt: skip
            raise
        raise InvalidArgument(f"{exc} (settings not given are the baseline's)") from None


def corpus_record(config: Any, audit: Any, corpus_file: Path, baseline: Path, cases: int) -> dict:
    """What the baseline says about its corpus: enough to measure the same one again."""
    try:
        name = str(corpus_file.resolve().relative_to(baseline.resolve().parent))
    except ValueError:
        name = str(corpus_file)
    return {
        "seed": config.seed,
        "examples": config.examples,
        "grad": config.grad,
        "max_ulps": config.max_ulps,
        "implementations": sorted(audit.implementations),
        "losses": None if config.losses is None else sorted(config.losses),
        "formats": None if config.formats is None else sorted(config.formats),
        "regimes": None if config.regimes is None else sorted(config.regimes),
        "corpus_file": name,
        "corpus_cases": cases,
        "findings_searched_all": not audit.investigation.skipped and not audit.investigation.failed,
    }


def environment(audit: Any, config: Any) -> dict[str, str]:
    """The versions of what measured: Python, the core packages, the audited libraries."""
    from stabcheck.report import run_info

    info = run_info(audit, config)
    versions = {k: str(v) for k, v in info["versions"].items() if k != "platform"}
    return {**versions, **{k: str(v) for k, v in info["libraries"].items()}}


def _selected_findings(baseline: Baseline, config: Any) -> dict[str, dict[str, Any]]:
    """The baseline's findings of the implementations and losses a run of ``config``
    measures (a narrowed gate does not miss the others)."""
    chosen = {key[:2] for key in expected_keys(baseline, config)}
    return {fid: f for fid, f in baseline.findings.items()
            if (f["implementation"], f["loss"]) in chosen}  # fmt: skip


def expected_keys(baseline: Baseline, config: Any) -> list[Key]:
    """The baseline's keys that a run of ``config`` measures."""
    from stabcheck.formats import get_format
    from stabcheck.losses import get_loss

    def chosen(values: Sequence[str] | None, name: str, canonical: Any = str) -> bool:
        return values is None or name in {canonical(v) for v in values}

    return [
        key
        for key in baseline.entries
        if chosen(config.implementations, key[0])
        and chosen(config.losses, key[1], lambda v: get_loss(v).name)
        and chosen(config.formats, key[2], lambda v: get_format(v).name)
        and (key[3] == CORPUS_REGIME or chosen(config.regimes, key[3]))
    ]
