#!/usr/bin/env python3
"""Compare the oracle's fast path with the pure mpmath path on many cases.

    .venv/bin/python scripts/check_fast_oracle.py [--cases 100000] [--seed 0] [--wide 2]

Cases are drawn (``stabcheck.audit.draw_cases``, seeded) from every regime of every loss
in every format, plus random bit patterns of each format; every value, gradient element
and (loosely) condition number of ``evaluate(case, grad=True)`` must equal the one of
``evaluate(case, grad=True, fast=False)`` bit for bit, signs of zero and NaN positions
included. Prints the mismatches (there should be none) and, per loss and regime, the share
of units the fast path decided. ``--wide`` sets the number of cases drawn from the
``wide`` regime per loss and format (each row has up to 131,072 classes, slow in mpmath).
"""

from __future__ import annotations

import argparse
import math
import time
from collections import defaultdict

import numpy as np

from stabcheck.audit import draw_cases
from stabcheck.formats import FORMATS
from stabcheck.losses import loss_names
from stabcheck.oracle import evaluate
from stabcheck.oracle.crosscheck import bit_pattern_case, differences
from stabcheck.strategies import regimes_for


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--wide", type=int, default=2)
    parser.add_argument("--loss", action="append", help="only this loss (repeatable)")
    parser.add_argument("--regime", action="append", help="only this regime (repeatable)")
    args = parser.parse_args()
    losses = args.loss or loss_names()
    groups = [
        (loss, fmt.name, regime)
        for loss in losses
        for fmt in FORMATS
        for regime in [*regimes_for(loss), "bits"]
    ]
    if args.regime:
        groups = [g for g in groups if g[2] in args.regime]
    narrow = [g for g in groups if g[2] != "wide"] or groups
    per_group = math.ceil(args.cases / len(narrow))
    rng = np.random.default_rng(args.seed)
    units: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    total, mismatched, start = 0, 0, time.perf_counter()
    fast_time = slow_time = 0.0
    for loss, fmt_name, regime in groups:
        fmt = next(f for f in FORMATS if f.name == fmt_name)
        if regime == "bits":
            cases = [bit_pattern_case(loss, fmt, rng) for _ in range(per_group)]
        else:
            count = args.wide if regime == "wide" else per_group
            cases = draw_cases(loss, fmt_name, regime, count, args.seed) if count else []
        for case in cases:
            t0 = time.perf_counter()
            fast = evaluate(case, grad=True, fast=True)
            t1 = time.perf_counter()
            slow = evaluate(case, grad=True, fast=False)
            t2 = time.perf_counter()
            fast_time, slow_time = fast_time + t1 - t0, slow_time + t2 - t1
            total += 1
            tally = units[(loss, regime)]
            tally[0] += int(fast.fast.sum())
            tally[1] += fast.fast.size
            diff = differences(fast, slow)
            if diff:
                mismatched += 1
                print(f"MISMATCH {loss} {fmt_name} {regime}: {case!r}")
                for line in diff:
                    print("   ", line)
        print(f"{loss:42} {fmt_name:9} {regime:12} {len(cases):6} cases, "
              f"{total} so far, {mismatched} mismatched", flush=True)  # fmt: skip
    print()
    print("| loss | regime | units | decided by the fast path |")
    print("| --- | --- | ---: | ---: |")
    for (loss, regime), (fast_units, all_units) in sorted(units.items()):
        share = fast_units / all_units if all_units else 0.0
        print(f"| {loss} | {regime} | {all_units} | {share:.1%} |")
    print()
    print(f"{total} cases, {mismatched} mismatched; fast path {fast_time:.1f} s, "
          f"mpmath path {slow_time:.1f} s, wall {time.perf_counter() - start:.0f} s")  # fmt: skip


if __name__ == "__main__":
    main()
