#!/usr/bin/env python3
"""Benchmark the oracle: its fast path and its pure mpmath path against plain numpy.

    .venv/bin/python scripts/bench_oracle.py [--repeats 3] [--out benchmarks/oracle.md]

Part 1, softmax cross-entropy with integer labels, float64, value and gradient, on the
same inputs for all: naive numpy float64 log-softmax (max shifted out; the physical
limit, not correctly rounded), the oracle (``evaluate``, fast path on) in numpy alone
(``STABCHECK_NUMBA=0``) and with numba (``stabcheck[fast]``, if installed) and the pure
mpmath oracle (``fast=False``), at C = 2, 10, 1,000 and 50,000 classes. Inputs are seeded:
*random* logits (normal, sigma 3, labels uniform) and *extreme* ones (a dominant class 20
to 800 ahead of normal logits, so that the loss underflows; a tenth of the other logits
-inf; labels uniform). Elements are predictions (rows x classes); the oracle returns
each one's gradient correctly rounded. The share of rows left to mpmath is reported.

Part 2, every loss, float64 and float32, rows per second of both oracle paths (numpy
alone) on the setups of the first benchmark (moderate, dominant and near-optimum rows;
random probabilities and targets). Timings are medians over the repeats.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import mpmath
import numpy as np

from stabcheck.case import Case
from stabcheck.oracle import evaluate
from stabcheck.oracle.fast import numba_kernels

SIZES = [(2, 10_000), (10, 2_000), (1_000, 20), (50_000, 1)]  # classes, rows
SPARSE = "sparse_softmax_cross_entropy_with_logits"

SETUPS = [
    # (loss, rows, classes, grad)
    ("sparse_softmax_cross_entropy_with_logits", 200, 10, False),
    ("sparse_softmax_cross_entropy_with_logits", 200, 10, True),
    ("softmax_cross_entropy_with_logits", 200, 10, True),
    ("dominant sparse_softmax_cross_entropy_with_logits", 200, 10, True),
    ("near-optimum softmax_cross_entropy_with_logits", 200, 10, True),
    ("sigmoid_cross_entropy_with_logits", 2000, 1, True),
    ("binary_crossentropy", 2000, 1, True),
    ("categorical_crossentropy", 200, 10, True),
]


def extreme_logits(rows: int, classes: int, rng: np.random.Generator) -> tuple:
    logits = rng.normal(0, 3, (rows, classes))
    labels = rng.integers(0, classes, rows)
    top = rng.integers(0, classes, rows)
    logits[np.arange(rows), top] = logits.max(axis=1) + rng.uniform(20, 800, rows)
    off = rng.random((rows, classes)) < 0.1
    off[np.arange(rows), top] = off[np.arange(rows), labels] = False
    logits[off] = -np.inf
    return logits, labels


def naive_numpy(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Log-softmax cross-entropy and its gradient in float64 (max shifted out)."""
    rows = np.arange(len(labels))
    m = logits.max(axis=1, keepdims=True)
    e = np.exp(logits - m)
    s = e.sum(axis=1, keepdims=True)
    loss = (m + np.log(s))[:, 0] - logits[rows, labels]
    grad = e / s
    grad[rows, labels] -= 1.0
    return loss, grad


def median_time(repeats: int, fn: Callable[..., object], *args: object, **kw: object) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(*args, **kw)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def with_numba(on: bool) -> bool:
    """Let the oracle use numba (if installed) or not; whether it will."""
    os.environ["STABCHECK_NUMBA"] = "1" if on else "0"
    return numba_kernels() is not None


def part_one(repeats: int, seed: int) -> list[str]:
    lines = [
        "| inputs | classes | rows | numpy el/s | oracle el/s | with numba el/s "
        "| mpmath el/s | oracle / mpmath | numpy / oracle | numpy / with numba "
        "| rows left to mpmath |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for kind in ("random", "extreme"):
        for classes, rows in SIZES:
            rng = np.random.default_rng(seed)
            if kind == "random":
                logits = rng.normal(0, 3, (rows, classes))
                labels = rng.integers(0, classes, rows)
            else:
                logits, labels = extreme_logits(rows, classes, rng)
            case = Case.build(SPARSE, logits, labels, format="float64")
            x = case.predictions.astype(np.float64)
            n = rows * classes
            t_numpy = median_time(max(repeats, 5), naive_numpy, x, labels)
            times = {}
            for numba in (False, True):
                if with_numba(numba) == numba:  # numba only if installed
                    fast = evaluate(case, grad=True)  # warm up (tables, compilation) and count
                    times[numba] = median_time(repeats, evaluate, case, grad=True)
            with_numba(False)
            t_slow = median_time(repeats, evaluate, case, grad=True, fast=False)
            t_fast, t_numba = times[False], times.get(True)
            cells = [
                kind, f"{classes:,}", f"{rows:,}", f"{n / t_numpy:,.0f}", f"{n / t_fast:,.0f}",
                f"{n / t_numba:,.0f}" if t_numba else "n/a", f"{n / t_slow:,.0f}",
                f"{t_slow / t_fast:,.0f}x", f"{t_fast / t_numpy:,.0f}x",
                f"{t_numba / t_numpy:,.0f}x" if t_numba else "n/a",
                f"{1 - float(np.mean(fast.fast)):.1%}",
            ]  # fmt: skip
            lines.append("| " + " | ".join(cells) + " |")
            print(lines[-1], flush=True)
    return lines


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
    if loss == "categorical_crossentropy":
        probs = rng.dirichlet(np.ones(classes), rows)
        return Case.build(loss, probs, rng.dirichlet(np.ones(classes), rows), format=fmt)
    logits = rng.normal(0, 3, (rows, classes))
    if loss.startswith("sparse"):
        return Case.build(loss, logits, rng.integers(0, classes, rows), format=fmt)
    labels = rng.dirichlet(np.ones(classes), rows)
    return Case.build(loss, logits, labels, format=fmt)


def part_two(repeats: int, seed: int) -> list[str]:
    lines = [
        "| loss | format | rows x classes | grad | oracle rows/s | mpmath rows/s "
        "| units left to mpmath |",
        "| --- | --- | --- | --- | ---: | ---: | ---: |",
    ]
    for fmt in ("float64", "float32"):
        for loss, rows, classes, grad in SETUPS:
            case = make_case(loss, rows, classes, fmt, np.random.default_rng(seed))
            fast = evaluate(case, grad=grad)
            t_fast = median_time(repeats, evaluate, case, grad=grad)
            t_slow = median_time(repeats, evaluate, case, grad=grad, fast=False)
            units = fast.fast.size
            lines.append(
                f"| {loss} | {fmt} | {rows} x {classes} | {'yes' if grad else 'no'} "
                f"| {units / t_fast:,.0f} | {units / t_slow:,.0f} "
                f"| {1 - float(np.mean(fast.fast)):.1%} |"
            )
            print(lines[-1], flush=True)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="also write the tables (markdown) here")
    args = parser.parse_args()
    first = part_one(args.repeats, args.seed)
    second = part_two(args.repeats, args.seed)
    try:
        import numba

        compiler = f"numba {numba.__version__}"
    except ImportError:
        compiler = "numba not installed"
    header = (
        f"Oracle throughput, seed {args.seed}, median of {args.repeats} runs; "
        f"Python {platform.python_version()}, mpmath {mpmath.__version__} "
        f"(backend {mpmath.libmp.BACKEND}), numpy {np.__version__}, {compiler}, "
        f"{platform.machine()} {platform.processor() or ''}".rstrip()
    )
    text = (
        f"{header}\n\n"
        "Softmax cross-entropy with integer labels, float64, value and gradient "
        "(elements = rows x classes):\n\n" + "\n".join(first) + "\n\n"
        "Every loss, both oracle paths, numpy alone (units = rows, or elements of elementwise "
        "losses):\n\n" + "\n".join(second) + "\n"
    )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    print(header)


if __name__ == "__main__":
    main()
