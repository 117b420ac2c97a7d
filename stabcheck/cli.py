"""The ``stabcheck`` command: ``list``, ``oracle``, ``audit`` and ``gate``.

Exit statuses: 0 done (the gate: nothing worse than the baseline); 1 only from the gate,
worse than the baseline; 2 could not run (a bad argument or input file, a framework not
installed, a failure inside stabcheck), with a message saying why; 130 or 143 stopped by
SIGINT or SIGTERM (the audit still writes what it measured, marked interrupted).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stabcheck import _signals
from stabcheck.errors import InvalidArgument, StabcheckError
from stabcheck.losses import OPERANDS, PARAMS, ParamKind

CANNOT_RUN = 2
EPILOG = ("exit status: 0 done (gate: nothing worse), 1 gate only: worse than the baseline, "
          "2 could not run (the message says why), 130/143 stopped by SIGINT/SIGTERM")  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    with _signals.stop_on_signals():
        try:
            status = int(args.run(args) or 0)
            sys.stdout.flush()  # a reader gone (``| head``) shows here, not at exit
            return status
        except BrokenPipeError:
            return _reader_gone()
        except KeyboardInterrupt:
            print(f"stabcheck {args.command}: stopped by {_stop_name()}", file=sys.stderr)
            return _signals.exit_status()
        except InvalidArgument as exc:
            print(f"stabcheck {args.command}: error: {exc}", file=sys.stderr)
        except StabcheckError as exc:
            print(f"stabcheck {args.command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        except Exception as exc:  # never the gate's "worse": a failure is "could not run"
            traceback.print_exc()
            print(
                f"stabcheck {args.command}: could not run: {type(exc).__name__}: {exc} (a "
                "failure inside stabcheck: please report it with the traceback above)",
                file=sys.stderr,
            )
        return CANNOT_RUN


def _reader_gone() -> int:
    """The reader of stdout closed it (``stabcheck oracle ... | head -1``): stop quietly,
    with the status of a process ended by SIGPIPE, as ``yes | head`` does."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())  # nothing more to write when Python exits
    os.close(devnull)
    return 128 + 13


def _stop_name() -> str:
    import signal

    signum = _signals.received()
    return signal.Signals(signum).name if signum else "an interrupt"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stabcheck",
        description="Exact numerical-stability testing of cross-entropy losses.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    listing = commands.add_parser("list", help="list the losses and formats")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(run=_list)

    oracle = commands.add_parser(
        "oracle",
        help="the exact loss (and gradient) of one input, correctly rounded",
        description="Compute a loss exactly from the binary values of the inputs and round "
        "it correctly to the format. Inputs are JSON arrays of numbers or of hex floats "
        "('0x1.8p+1', 'inf', 'nan'); they are cast to the format first, as numpy would.",
    )
    oracle.add_argument("loss", nargs="?", help="a loss name, see `stabcheck list`")
    oracle.add_argument(
        "--predictions",
        type=_json,
        metavar="JSON",
        help="logits or probabilities, e.g. '[[2.0, 1.0, 0.1]]'; @FILE reads a file, - stdin",
    )
    oracle.add_argument(
        "--labels",
        type=_json,
        metavar="JSON",
        help="targets shaped like the predictions, or class indices; @FILE or - as above",
    )
    oracle.add_argument(
        "--case",
        type=_json,
        metavar="JSON",
        help="instead of LOSS, --predictions and --labels: a whole case as Case.to_json "
        "writes it (findings.md, a failing check); @FILE reads a file, - stdin",
    )
    for operand in OPERANDS:  # the linear losses' W and b, each --name
        oracle.add_argument(
            f"--{operand.name.replace('_', '-')}",
            type=_json,
            metavar="JSON",
            help=f"{operand.summary}; @FILE or - as above",
        )
    for param in PARAMS:  # the options of the catalogue, each --name
        kind = {ParamKind.REAL: _number, ParamKind.VECTOR: _json, ParamKind.INDEX: int}
        oracle.add_argument(
            f"--{param.name.replace('_', '-')}",
            type=kind.get(param.kind),
            choices=param.choices or None,
            metavar="JSON" if param.kind is ParamKind.VECTOR else None,
            help=f"{param.summary}; {param.domain}"
            + (f" (default {param.default})" if param.default is not None else ""),
        )
    oracle.add_argument(
        "--format", help="float64 (the default), float32, float16, bfloat16"
    )
    oracle.add_argument("--grad", action="store_true", help="also the gradient")
    oracle.add_argument(
        "--digits",
        type=int,
        default=30,
        help=f"significant digits of the exact value (default 30, at most {MAX_DIGITS})",
    )
    oracle.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object (strict JSON: non-finite numbers as 'inf', '-inf', 'nan')",
    )
    oracle.set_defaults(run=_oracle)

    audit = commands.add_parser(
        "audit",
        help="measure implementations against the oracle and write a report",
        description="Run implementations x losses x formats x regimes on the same seeded "
        "cases, measure values (and gradients) against the oracle, group the failures into "
        "findings (onsets, smallest cases, repros), and write summary.md, findings.md, "
        "findings.csv, measurements.csv, tables.md, cases.jsonl.gz, run.json and plots to "
        "--out.",
        epilog=EPILOG,
    )
    _selection(audit, gate=False)
    audit.add_argument("--out", required=True, help="directory for the report")
    audit.set_defaults(run=_audit)

    gate = commands.add_parser(
        "gate",
        help="fail (exit 1) when accuracy got worse than a committed baseline",
        description="Run a deterministic audit (seeded cases and the regression corpus, no "
        "search) and compare it with --baseline, per implementation, loss, format, regime "
        "and quantity. Exit 1 when a status other than ok is counted more often, or max or "
        "median ULPs grow by more than max(--tolerance-ulps, --tolerance-fraction x the "
        "baseline's); exit 0 otherwise; exit 2 when the gate cannot run. Without --update, "
        "the selection options may narrow the baseline's and the corpus options must match it. "
        "A function of your own (--impl module:function) runs only when named here: a "
        "baseline never chooses the code that runs.",
        epilog=EPILOG,
    )
    gate.add_argument("--baseline", required=True, metavar="FILE", help="the baseline JSON file")
    gate.add_argument(
        "--update", action="store_true", help="measure and (re)write the baseline instead"
    )
    gate.add_argument(
        "--corpus",
        metavar="FILE",
        help="regression corpus, one case JSON per line (default: the baseline's, else "
        "FILE.cases.jsonl beside the baseline)",
    )
    gate.add_argument(
        "--add-case",
        action="append",
        type=_case,
        metavar="JSON",
        help="add a case (as findings.md or a failing check prints it) to the corpus; repeatable",
    )
    gate.add_argument(
        "--save-failures",
        action="store_true",
        help="with --update: add the smallest failing case of each kind to the corpus",
    )
    gate.add_argument(
        "--accept-errors",
        action="store_true",
        help="with --update: record entries whose every measurement is error or timeout "
        "(refused by default: a function run on a loss it does not compute)",
    )
    gate.add_argument(
        "--summary", metavar="FILE", help="also write the comparison as markdown to FILE"
    )
    gate.add_argument(
        "--tolerance-ulps",
        type=float,
        default=1.0,
        metavar="N",
        help="growth of max/median ULPs always tolerated (default 1)",
    )
    gate.add_argument(
        "--tolerance-fraction",
        type=float,
        default=0.25,
        metavar="F",
        help="growth of max/median ULPs tolerated as a fraction of the baseline (default 0.25)",
    )
    _selection(gate, gate=True)
    gate.set_defaults(run=_gate)
    return parser


def _selection(parser: argparse.ArgumentParser, gate: bool) -> None:
    """The options that choose what an audit (or a gate) measures."""
    parser.add_argument(
        "--impl",
        action="append",
        metavar="NAME",
        help="an implementation (see `stabcheck list`) or module:function; "
        "repeat for several (default: all registered)",
    )
    parser.add_argument("--loss", action="append", metavar="NAME", help="repeatable")
    parser.add_argument("--format", action="append", metavar="F", help="repeatable")
    parser.add_argument("--regime", action="append", metavar="R", help="repeatable")
    parser.add_argument(
        "--examples", type=int, default=None, help="cases per loss, format and regime (default 8)"
    )
    if not gate:
        parser.add_argument(
            "--search",
            type=int,
            default=None,
            help="search candidates per loss, format and regime, on which every "
            "implementation is called and each keeps the rows of its worst (default 10; "
            "0 turns the search off)",
        )
    parser.add_argument(
        "--seed", type=int, default=None if gate else 0, help="seed of every random choice"
    )
    parser.add_argument(
        "--grad",
        action=argparse.BooleanOptionalAction if gate else "store_true",
        default=None if gate else False,
        help="also measure gradients",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="seconds one call (and the import of a module:function) may take (default 60)",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=None,
        metavar="N",
        help="processes measuring at once (default: one per core; results do not depend on it)",
    )
    parser.add_argument(
        "--max-ulps",
        type=float,
        default=None,
        help="ULPs tolerated on a well-conditioned input (default 4)",
    )


def _given(args: argparse.Namespace) -> dict[str, Any]:
    """The audit settings given on the command line, by ``AuditConfig`` field name."""
    return {
        "implementations": args.impl, "losses": args.loss, "formats": args.format,
        "regimes": args.regime, "examples": args.examples, "search": getattr(args, "search", None),
        "timeout": args.timeout, "max_ulps": args.max_ulps, "seed": args.seed, "grad": args.grad,
        "jobs": args.jobs,
    }  # fmt: skip


def _number(text: str) -> float:
    """A decimal or hex float ('0x1.8p+1'), as reproduction lines print them."""
    from stabcheck.case import parse_floats

    try:
        return float(parse_floats(text))
    except InvalidArgument as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _json(text: str) -> Any:
    """JSON given inline, or read from @FILE, or from standard input for '-'."""
    source = "it"
    if text == "-":
        text, source = sys.stdin.read(), "standard input"
    elif text.startswith("@"):
        source = text[1:]
        try:
            text = Path(source).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise argparse.ArgumentTypeError(
                f"cannot read {source!r} ({reason or exc}); give @FILE with JSON in it"
            ) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(
            f"{source} is not valid JSON ({exc.msg}); write e.g. '[[2.0, 1.0]]' or "
            "'[\"0x1p-3\"]', @FILE for a file, - for standard input"
        ) from None
    except RecursionError:
        raise argparse.ArgumentTypeError(f"{source} is nested too deeply") from None


def _list(args: argparse.Namespace) -> int:
    from stabcheck.formats import FORMATS
    from stabcheck.implementations import implementation_names, implementations
    from stabcheck.losses import LOSSES
    from stabcheck.strategies import REGIMES

    losses = [
        {
            "name": s.name,
            "inputs": s.inputs.value,
            "labels": s.labels.value,
            "output": s.output.value,
            "params": list(s.params),
            "operands": list(s.operands),
            "aliases": list(s.aliases),
            "formula": s.formula,
        }
        for s in LOSSES
    ]
    formats = [
        {
            "name": f.name,
            "precision": f.precision,
            "emin": f.emin,
            "emax": f.emax,
            "max": f.max,
            "aliases": list(f.aliases),
        }
        for f in FORMATS
    ]
    regimes = [
        {
            "name": r.name,
            "description": r.description,
            "losses": [s.name for s in LOSSES if r.applies(s)],
        }
        for r in REGIMES
    ]
    impls = [
        {
            "name": name,
            "library": found[0].library,
            "description": found[0].description,
            "losses": [i.loss for i in found],
            "formats": list(found[0].formats),
            "available": found[0].available,
        }
        for name in implementation_names()
        for found in [implementations(names=name)]
    ]
    if args.json:
        print(
            json.dumps(
                {
                    "losses": losses,
                    "formats": formats,
                    "regimes": regimes,
                    "implementations": impls,
                },
                indent=2,
            )
        )
        return 0
    print("Losses:")
    for loss in losses:
        params = f" ({', '.join(loss['params'])})" if loss["params"] else ""
        print(f"  {loss['name']}{params}")
        inputs = loss["inputs"] + "".join(f", {o}" for o in loss["operands"])
        print(f"      {inputs}, {loss['labels']} labels, {loss['output']}: {loss['formula']}")
    print("Formats:")
    for fmt in formats:
        print(f"  {fmt['name']:<9} {fmt['precision']:>2} bits, max {fmt['max']:.6g}")
    print("Regimes:")
    for regime in regimes:
        print(f"  {regime['name']:<12} {regime['description']}")
    print("Implementations (also any module:function):")
    width = max((len(impl["name"]) for impl in impls), default=0)
    for impl in impls:
        state = "" if impl["available"] else " [not installed]"
        print(f"  {impl['name']:<{width}} {impl['library']}{state}: {impl['description']}")
        print(f"  {'':<{width}} {', '.join(impl['formats'])}; {', '.join(impl['losses'])}")
    return 0


MAX_DIGITS = 10_000  # of the exact value; more is a mistake, and slow


def _oracle(args: argparse.Namespace) -> int:
    import numpy as np

    from stabcheck.case import Case
    from stabcheck.formats import get_format
    from stabcheck.oracle import decimal, evaluate

    if not 1 <= args.digits <= MAX_DIGITS:
        raise InvalidArgument(
            f"--digits={args.digits} must be a number of digits from 1 to {MAX_DIGITS}"
        )
    if args.case is not None:
        names = ("loss", "predictions", "labels", *(p.name for p in (*OPERANDS, *PARAMS)))
        given = [name for name in names if getattr(args, name) is not None]
        if given:
            raise InvalidArgument(
                f"--case holds the whole case; drop {given[0].replace('_', '-')} (or --case)"
            )
        case = Case.from_json(args.case)
        if args.format is not None and get_format(args.format) is not case.format:
            raise InvalidArgument(f"--case is in {case.format.name}; drop --format={args.format}")
    else:
        for name in ("loss", "predictions", "labels"):
            if getattr(args, name) is None:
                option = "LOSS" if name == "loss" else f"--{name}"
                raise InvalidArgument(f"{option} is missing; give LOSS, --predictions and "
                                      "--labels, or a whole case with --case")  # fmt: skip
        params = {p.name: getattr(args, p.name) for p in (*OPERANDS, *PARAMS)
                  if getattr(args, p.name) is not None}  # fmt: skip
        case = Case.build(args.loss, args.predictions, args.labels,
                          format=args.format or "float64", **params)  # fmt: skip
    result = evaluate(case, grad=args.grad)
    digits = decimal(case, args.digits)
    single = result.value.size == 1

    def hexes(array: np.ndarray) -> Any:
        return np.vectorize(lambda v: float(v).hex(), otypes=[object])(array).tolist()

    if args.json:
        condition = np.vectorize(_finite_or_text, otypes=[object])(result.condition)
        out: dict[str, Any] = {
            "loss": case.loss.name,
            "format": case.format.name,
            "value": hexes(result.value).pop() if single else hexes(result.value),
            "decimal": digits[0] if single else digits,
            "condition": condition.ravel()[0] if single else condition.tolist(),
            "case": case.to_dict(),
        }
        if args.grad:
            out["gradient"] = hexes(result.gradient)
            for name, g in result.operand_gradients.items():
                out[f"gradient_{name}"] = hexes(g.value)
        print(json.dumps(out, indent=2, allow_nan=False))
        return 0
    print(f"{case.loss.name} in {case.format.name}")
    for i, (value, text, kappa) in enumerate(
        zip(result.value.ravel().tolist(), digits, result.condition.ravel())
    ):
        label = "" if single else f"[{i}] "
        print(f"  {label}value     {value!r:<24} {value.hex()}")
        print(f"  {label}exact     {text}")
        print(f"  {label}condition {kappa:.3g}")
    if args.grad:
        gradients = {"predictions": result.gradient}
        gradients.update({k: g.value for k, g in result.operand_gradients.items()})
        for name, gradient in gradients.items():
            towards = f" with respect to {name}" if len(gradients) > 1 else ""
            print(f"  gradient{towards} (correctly rounded):")
            for index in np.ndindex(gradient.shape):
                g = float(gradient[index])
                print(f"    {list(index)!s:<10} {g!r:<24} {g.hex()}")
    return 0


def _finite_or_text(x: float) -> float | str:
    """A number for JSON: finite as it is, else 'inf', '-inf' or 'nan' (as inputs take)."""
    x = float(x)
    return x if x == x and abs(x) != float("inf") else str(x)


def _audit(args: argparse.Namespace) -> int:
    from stabcheck._files import output_directory
    from stabcheck._progress import terminal_progress
    from stabcheck.audit import AuditConfig, run_audit
    from stabcheck.report import Checkpoint, write_report

    given = {k: v for k, v in _given(args).items() if v is not None}
    config = AuditConfig(**given).validated()
    out = output_directory(args.out, "--out")
    if config.without_gradients():
        print(f"note: --grad: values only for {', '.join(config.without_gradients())} "
              "(numpy functions without a gradient)", file=sys.stderr)  # fmt: skip
    with terminal_progress() as progress:
        result = run_audit(config, progress=progress, checkpoint=Checkpoint(out))
    paths = write_report(result, config, out)
    frame = result.frame()
    counts = frame["status"].value_counts().to_dict() if len(frame) else {}
    print(
        f"\n{len(frame)} measurements of {len(result.cases)} cases in {result.seconds:.0f} s: "
        + ", ".join(f"{k} {v}" for k, v in counts.items()),
        file=sys.stderr,
    )
    print(f"report: {', '.join(str(p) for p in paths[:5])}", file=sys.stderr)
    if result.interrupted:
        print(f"stopped by {_stop_name()}: the report holds what was measured, marked "
              "interrupted", file=sys.stderr)  # fmt: skip
        return _signals.exit_status()
    return 0


def _case(text: str) -> Any:
    from stabcheck.case import Case

    try:
        return Case.from_json(text)
    except (ValueError, KeyError, TypeError) as exc:
        raise argparse.ArgumentTypeError(
            f"not a case ({exc}); give one as Case.to_json writes it, e.g. "
            '\'{"loss":"binary_crossentropy","format":"float32","predictions":["0x1p-30"],'
            '"labels":["0x1p-1"]}\''
        ) from None


def _gate(args: argparse.Namespace) -> int:
    import os

    from stabcheck._files import writable_file
    from stabcheck._progress import terminal_progress
    from stabcheck.gate import Tolerance, run_gate

    if args.accept_errors and not args.update:
        raise InvalidArgument("--accept-errors says what --update may record; add --update")
    summary = writable_file(args.summary, "--summary") if args.summary is not None else None
    try:
        with terminal_progress() as progress:
            outcome = run_gate(
                args.baseline,
                _given(args),
                update=args.update,
                corpus_file=args.corpus,
                add_cases=args.add_case or (),
                save_failures=args.save_failures,
                tolerance=Tolerance(args.tolerance_ulps, args.tolerance_fraction),
                progress=progress,
                accept_errors=args.accept_errors,
            )
    except KeyboardInterrupt:
        print(f"stabcheck gate: stopped by {_stop_name()}; nothing compared or written",
              file=sys.stderr)  # fmt: skip
        return _signals.exit_status()
    for note in outcome.notes:
        print(f"note: {note}", file=sys.stderr)
    if outcome.added:
        print(f"{len(outcome.added)} case(s) added to {outcome.corpus_file}")
    measured = f"{len(outcome.audit.rows)} measurements of {len(outcome.audit.cases)} cases"
    if outcome.comparison is None:
        print(f"wrote {args.baseline}: {len(outcome.obtained.entries)} entries, {measured}")
        return 0
    update = f"stabcheck gate --baseline {args.baseline} --update"
    comparison = outcome.comparison
    print(comparison.text(args.baseline, update), end="")
    from stabcheck.report import findings_table

    markdown = comparison.markdown(args.baseline, update) + "\n" + findings_table(
        outcome.audit.findings
    )
    if summary is not None:
        summary.write_text(markdown, encoding="utf-8")
    if os.environ.get("GITHUB_STEP_SUMMARY"):
        try:
            with open(os.environ["GITHUB_STEP_SUMMARY"], "a", encoding="utf-8") as f:
                f.write(markdown)
        except OSError as exc:  # the verdict stands; the step summary is a courtesy
            print(f"warning: cannot write $GITHUB_STEP_SUMMARY ({exc})", file=sys.stderr)
    if comparison.passed:
        return 0
    obtained = Path(args.baseline).with_suffix(".obtained.json")
    outcome.obtained.save(obtained)
    print(f"the run's entries are in {obtained}, to diff against the baseline")
    return 1


if __name__ == "__main__":
    sys.exit(main())
