#!/usr/bin/env python3
"""Benchmark the oracle: rows per second at 10 and 50,000 classes, and the share of
units that needed more than the first working precision.

    .venv/bin/python scripts/bench_oracle.py [--repeats 5] [--out benchmarks/oracle.md]

Inputs are seeded: moderate logits (normal, sigma 3) with integer labels for the softmax
losses; a dominant variant whose true class leads by 20 to 800 (the loss underflows); a
near-optimum variant whose soft labels are the softmax itself, rounded (the gradient
cancels to a few ULPs of the labels); random probabilities and targets for the
elementwise ones. Timings are medians over the repeats; versions are written beside them.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import mpmath
import numpy as np

from stabcheck.case import Case
from stabcheck.formats import get_format
from stabcheck.oracle import enclosure, evaluate

SETUPS = [
    # (loss, rows, classes, grad)
    ("sparse_softmax_cross_entropy_with_logits", 200, 10, False),
    ("sparse_softmax_cross_entropy_with_logits", 200, 10, True),
    ("softmax_cross_entropy_with_logits", 200, 10, True),
    ("sparse_softmax_cross_entropy_with_logits", 2, 50_000, False),
    ("sparse_softmax_cross_entropy_with_logits", 2, 50_000, True),
    ("dominant sparse_softmax_cross_entropy_with_logits", 200, 10, True),
    ("near-optimum softmax_cross_entropy_with_logits", 200, 10, True),
    ("sigmoid_cross_entropy_with_logits", 2000, 1, True),
    ("binary_crossentropy", 2000, 1, True),
]


def make_case(loss: str, rows: int, classes: int, fmt: str, rng: np.random.Generator) -> Case:
    if loss.startswith("dominant "):  # the true class 20 to 800 ahead: the loss underflows
        logits = rng.normal(0, 3, (rows, classes))
        logits[:, 0] = logits.max(axis=1) + rng.uniform(20, 800, rows)
        return Case.build(loss.split()[1], logits, np.zeros(rows, dtype=int), format=fmt)
    if loss.startswith("near-optimum "):  # labels = softmax(logits): a vanishing gradient
        logits = rng.normal(0, 3, (rows, classes))
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return Case.build(loss.split()[1], logits, e / e.sum(axis=1, keepdims=True), format=fmt)
    if loss == "binary_crossentropy":
        return Case.build(loss, rng.uniform(0, 1, rows), rng.uniform(0, 1, rows), format=fmt)
    if loss == "sigmoid_cross_entropy_with_logits":
        return Case.build(loss, rng.normal(0, 3, rows), rng.uniform(0, 1, rows), format=fmt)
    logits = rng.normal(0, 3, (rows, classes))
    if loss.startswith("sparse"):
        return Case.build(loss, logits, rng.integers(0, classes, rows), format=fmt)
    labels = rng.dirichlet(np.ones(classes), rows)
    return Case.build(loss, logits, labels, format=fmt)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="also write the table (markdown) here")
    args = parser.parse_args()
    lines = [
        "| loss | format | rows x classes | grad | rows/s (median) | extra precision |",
        "| --- | --- | --- | --- | ---: | ---: |",
    ]
    for fmt in ("float64", "float32"):
        first = get_format(fmt).precision + enclosure.START_PRECISION
        for loss, rows, classes, grad in SETUPS:
            rng = np.random.default_rng(args.seed)
            case = make_case(loss, rows, classes, fmt, rng)
            times, extra = [], 0.0
            for _ in range(args.repeats):
                start = time.perf_counter()
                result = evaluate(case, grad=grad)
                times.append(time.perf_counter() - start)
                extra = float(np.mean(result.precision > first))
            units = len(case.predictions) if case.loss.rowwise else case.predictions.size
            rate = units / statistics.median(times)
            lines.append(
                f"| {loss} | {fmt} | {rows} x {classes} | {'yes' if grad else 'no'} "
                f"| {rate:,.1f} | {extra:.1%} |"
            )
            print(lines[-1], flush=True)
    header = (
        f"Oracle throughput, seed {args.seed}, median of {args.repeats} runs; "
        f"Python {platform.python_version()}, mpmath {mpmath.__version__} "
        f"(backend {mpmath.libmp.BACKEND}), numpy {np.__version__}, "
        f"{platform.machine()} {platform.processor() or ''}".rstrip()
    )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(f"{header}\n\n" + "\n".join(lines) + "\n")
    print(header)


if __name__ == "__main__":
    main()
