"""The ``stabcheck`` command: ``list``, ``oracle``, ``audit`` and ``gate``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from stabcheck.errors import InvalidArgument, StabcheckError


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except InvalidArgument as exc:
        print(f"stabcheck {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except StabcheckError as exc:
        print(f"stabcheck {args.command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return int(getattr(args, "error_status", 3))


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
    oracle.add_argument("loss", help="a loss name, see `stabcheck list`")
    oracle.add_argument(
        "--predictions",
        required=True,
        type=_json,
        metavar="JSON",
        help="logits or probabilities, e.g. '[[2.0, 1.0, 0.1]]'",
    )
    oracle.add_argument(
        "--labels",
        required=True,
        type=_json,
        metavar="JSON",
        help="targets shaped like the predictions, or class indices",
    )
    oracle.add_argument(
        "--pos-weight", type=_number, help="pos_weight of the weighted loss (decimal or hex)"
    )
    oracle.add_argument("--format", default="float64", help="float64, float32, float16, bfloat16")
    oracle.add_argument("--grad", action="store_true", help="also the gradient")
    oracle.add_argument(
        "--digits", type=int, default=30, help="significant digits of the exact value (default 30)"
    )
    oracle.add_argument("--json", action="store_true", help="print one JSON object")
    oracle.set_defaults(run=_oracle)

    audit = commands.add_parser(
        "audit",
        help="measure implementations against the oracle and write a report",
        description="Run implementations x losses x formats x regimes on the same seeded "
        "cases, measure values (and gradients) against the oracle, and write "
        "measurements.csv, summary.md, worst.md, cases.jsonl.gz, run.json and plots to --out.",
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
        "the selection options may narrow the baseline's and the corpus options must match it.",
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
        help="add a case (as worst.md or a failing check prints it) to the corpus; repeatable",
    )
    gate.add_argument(
        "--save-failures",
        action="store_true",
        help="with --update: add the smallest failing case of each kind to the corpus",
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
    gate.set_defaults(run=_gate, error_status=2)
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
            help="targeted examples per implementation, loss, format and regime, "
            "steered by hypothesis.target toward more bits of error (default 10; "
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
        "--timeout", type=float, default=None, help="seconds one call may take (default 60)"
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
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(
            f"not valid JSON ({exc.msg}); write e.g. '[[2.0, 1.0]]' or '[\"0x1p-3\"]'"
        ) from None


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
        print(
            f"      {loss['inputs']}, {loss['labels']} labels, {loss['output']}: {loss['formula']}"
        )
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


def _oracle(args: argparse.Namespace) -> int:
    import numpy as np

    from stabcheck.case import Case
    from stabcheck.oracle import decimal, evaluate

    if args.digits < 1:
        raise InvalidArgument(f"--digits={args.digits} must be a positive number of digits")
    params = {} if args.pos_weight is None else {"pos_weight": args.pos_weight}
    case = Case.build(args.loss, args.predictions, args.labels, format=args.format, **params)
    result = evaluate(case, grad=args.grad)
    digits = decimal(case, args.digits)
    single = result.value.size == 1

    def hexes(array: np.ndarray) -> Any:
        return np.vectorize(lambda v: float(v).hex(), otypes=[object])(array).tolist()

    if args.json:
        out: dict[str, Any] = {
            "loss": case.loss.name,
            "format": case.format.name,
            "value": hexes(result.value).pop() if single else hexes(result.value),
            "decimal": digits[0] if single else digits,
            "condition": float(result.condition.ravel()[0])
            if single
            else result.condition.tolist(),
            "case": case.to_dict(),
        }
        if args.grad:
            out["gradient"] = hexes(result.gradient)
        print(json.dumps(out, indent=2))
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
        print("  gradient (correctly rounded):")
        for index in np.ndindex(result.gradient.shape):
            g = float(result.gradient[index])
            print(f"    {list(index)!s:<10} {g!r:<24} {g.hex()}")
    return 0


def _audit(args: argparse.Namespace) -> int:
    from stabcheck.audit import AuditConfig, run_audit, terminal_progress
    from stabcheck.report import write_measurements, write_report

    given = {k: v for k, v in _given(args).items() if v is not None}
    config = AuditConfig(**given).validated()
    result = run_audit(
        config,
        progress=terminal_progress(),
        checkpoint=lambda partial: write_measurements(partial, args.out),
    )
    paths = write_report(result, config, args.out)
    frame = result.frame()
    counts = frame["status"].value_counts().to_dict() if len(frame) else {}
    print(
        f"\n{len(frame)} measurements of {len(result.cases)} cases in {result.seconds:.0f} s: "
        + ", ".join(f"{k} {v}" for k, v in counts.items()),
        file=sys.stderr,
    )
    print(f"report: {', '.join(str(p) for p in paths[:5])}", file=sys.stderr)
    if result.interrupted:
        print("interrupted: the report holds what was measured", file=sys.stderr)
        return 130
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
    from pathlib import Path

    from stabcheck.audit import terminal_progress
    from stabcheck.gate import Tolerance, run_gate

    try:
        outcome = run_gate(
            args.baseline,
            _given(args),
            update=args.update,
            corpus_file=args.corpus,
            add_cases=args.add_case or (),
            save_failures=args.save_failures,
            tolerance=Tolerance(args.tolerance_ulps, args.tolerance_fraction),
            progress=terminal_progress(),
        )
    except KeyboardInterrupt:
        print("stabcheck gate: interrupted; nothing compared or written", file=sys.stderr)
        return 130
    if terminal_progress() is not None:
        print(file=sys.stderr)
    if outcome.added:
        print(f"{len(outcome.added)} case(s) added to {outcome.corpus_file}")
    measured = f"{len(outcome.audit.rows)} measurements of {len(outcome.audit.cases)} cases"
    if outcome.comparison is None:
        print(f"wrote {args.baseline}: {len(outcome.obtained.entries)} entries, {measured}")
        return 0
    update = f"stabcheck gate --baseline {args.baseline} --update"
    comparison = outcome.comparison
    print(comparison.text(args.baseline, update), end="")
    markdown = comparison.markdown(args.baseline, update)
    if args.summary:
        Path(args.summary).write_text(markdown, encoding="utf-8")
    if os.environ.get("GITHUB_STEP_SUMMARY"):
        with open(os.environ["GITHUB_STEP_SUMMARY"], "a", encoding="utf-8") as f:
            f.write(markdown)
    if comparison.passed:
        return 0
    obtained = Path(args.baseline).with_suffix(".obtained.json")
    outcome.obtained.save(obtained)
    print(f"the run's entries are in {obtained}, to diff against the baseline")
    return 1


if __name__ == "__main__":
    sys.exit(main())
