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
from stabcheck.case import Case
from stabcheck.formats import FORMATS, Format
from stabcheck.losses import get_loss, loss_names
from stabcheck.oracle import OracleResult, evaluate
from stabcheck.strategies import regimes_for


def differences(fast: OracleResult, slow: OracleResult) -> list[str]:
    """What differs between two results of one case: values and gradients bit for bit;
    condition numbers as ``measure`` uses them, max(1, kappa), to a relative max(1e-6, 4
    eps) (the units' exact values are midpoints of enclosures that only had to round
    certainly) or within the units' own rounding noise (``rounding_noise``)."""
    out = []
    for name in ("value", "gradient"):
        a, b = getattr(fast, name), getattr(slow, name)
        if a is None and b is None:
            continue
        same = (a.view(np.uint64) == b.view(np.uint64)) | (np.isnan(a) & np.isnan(b))
        for index in np.argwhere(~same)[:3]:
            i = tuple(index)
            out.append(f"{name}{list(i)}: fast {a[i]!r} mpmath {b[i]!r}")
    for name in ("condition", "gradient_condition"):
        a, b = getattr(fast, name), getattr(slow, name)
        if a is None:
            continue
        with np.errstate(all="ignore"):
            a, b = np.maximum(a, 1.0), np.maximum(b, 1.0)
            rtol = max(1e-6, 4 * fast.case.format.eps)  # mpmath's midpoints: within eps
            close = np.isclose(a, b, rtol=rtol, atol=0) | (np.isnan(a) & np.isnan(b))
            if name == "condition":
                close |= np.abs(a - b) <= rounding_noise(slow)
        for index in np.argwhere(~close)[:3]:
            i = tuple(index)
            out.append(f"{name}{list(i)}: fast {a[i]!r} mpmath {b[i]!r}")
    return out


def rounding_noise(result: OracleResult) -> np.ndarray:
    """Per row, the error of the softmax units' value condition number: they form
    sum_i |x_i g_i| / L from 53-bit gradients (Y p_i - y_i, rounded towards zero), which
    cancel to noise of up to 2**-50 (Y + y_i) each where the fast path's gradients do not;
    zero for the other losses."""
    case = result.case
    if not case.loss.rowwise or case.loss.inputs.value != "logits":
        return np.zeros(result.condition.shape)
    x = case.predictions.astype(np.float64)
    if case.loss.labels.value == "sparse":
        y = np.zeros_like(x)
        y[np.arange(len(x)), case.labels] = 1.0
    else:
        y = case.labels.astype(np.float64)
    finite = np.isfinite(x)
    with np.errstate(all="ignore"):
        total = y.sum(axis=1, keepdims=True) + y
        terms = np.where(finite, np.abs(x) * total, 0.0).sum(axis=1) * 2.0**-50
        return terms / np.abs(np.array([float(v) for v in result.exact.ravel()]))


def bit_pattern_case(loss: str, fmt: Format, rng: np.random.Generator) -> Case:
    """Random bit patterns of ``fmt`` as logits (probabilities: as |values| folded into
    [0, 1]), with random labels."""
    spec = get_loss(loss)
    rows, cols = int(rng.integers(1, 4)), int(rng.integers(2, 9))
    bits = rng.integers(0, 2**fmt.width, (rows, cols), dtype=np.uint64)
    with np.errstate(invalid="ignore"):
        x = bits.astype(f"uint{fmt.width}").view(fmt.dtype).astype(np.float64)
    x = np.where(np.isnan(x), 0.0, x)
    if spec.inputs.value == "probabilities":
        x = np.where(np.isfinite(x), np.abs(x) / (1 + np.abs(x)), 1.0)
    if spec.labels.value == "sparse":
        labels = rng.integers(0, cols, rows)
    elif spec.rowwise:
        labels = rng.dirichlet(np.ones(cols), rows) * (rng.random((rows, 1)) < 0.9)
    else:
        labels = rng.random((rows, cols)) * (rng.random((rows, cols)) < 0.8)
    params = {}
    if spec.params:  # a positive finite value of the format, any binade
        weight = math.exp(rng.uniform(math.log(fmt.smallest_subnormal), math.log(fmt.max)))
        params["pos_weight"] = max(fmt.round(min(weight, fmt.max)), fmt.smallest_subnormal)
    return Case.build(loss, x, labels, format=fmt, regime="bits", **params)


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
