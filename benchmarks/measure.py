#!/usr/bin/env python3
"""Benchmark the audit's measuring of one linear case: every element through ``classify``
(the path before ``measure_worst``) against ``measure_worst``'s vectorised screen.

    .venv/bin/python benchmarks/measure.py [--repeats 3] [--classes 32000 131072]

linear_cross_entropy, N = 2 rows, D = 8 features, V classes, float32; h = randn,
W = 0.02 randn, b = 0.02 randn, random labels. The oracle's result (``evaluate(case,
grad=True)``) is computed once, not timed. Timed, on the same result, what the audit
measures for one outcome (``audit._rows``): the values (``measure``) and each gradient
(dL/dh, dL/dW, dL/db) reduced to its worst element per row:

* ``old``: ``measure`` as it was (each element through ``classify``, each oracle array
  read element by element; dL/dW's exact values are a lazy array, computed a row per
  read) and the audit's ``_worst_per_unit`` as it was, both copied here;
* ``new``: ``measure_worst(..., per_row=True)``.

Two implementations, made from the correctly rounded gradients: ``some off`` (1% of the
entries times 1 + 1e-5 randn, i.e. about 80 ULPs away, 0.1% zero, 0.01% NaN) and ``most
off`` (90% times 1 + 1e-5 randn). The rows both paths write are checked to be the same.
One thread (OpenBLAS), the machine being shared.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

from stabcheck.case import Case  # noqa: E402
from stabcheck.measure import (  # noqa: E402
    SEVERITY,
    Measurement,
    _text,
    bits_of_error,
    classify,
    measure,
    measure_worst,
)
from stabcheck.oracle import OracleResult, evaluate  # noqa: E402

N, D = 2, 8
GRADIENTS: list[bool | str] = [True, "linear_weight", "linear_bias"]
SCENARIOS = {"some off": (0.01, 0.001, 0.0001), "most off": (0.9, 0.0, 0.0)}


def inputs(V: int, seed: int = 0) -> OracleResult:
    rng = np.random.default_rng(seed)
    h = rng.standard_normal((N, D)).astype(np.float32)
    W = (0.02 * rng.standard_normal((V, D))).astype(np.float32)
    b = (0.02 * rng.standard_normal(V)).astype(np.float32)
    case = Case.build("linear_cross_entropy", h, rng.integers(0, V, N), format="float32",
                      linear_weight=W, linear_bias=b)  # fmt: skip
    return evaluate(case, grad=True)


def spoil(expected: Any, fractions: tuple[float, float, float], rng: Any) -> np.ndarray:
    """``expected`` with a fraction of the entries off, zero and NaN."""
    got = np.array(expected, dtype=np.float64)
    off, zero, nan = fractions
    draw = rng.random(got.shape)
    noisy = draw < off
    got[noisy] *= 1 + 1e-5 * rng.standard_normal(int(noisy.sum()))
    got[(draw >= off) & (draw < off + zero)] = 0.0
    got[(draw >= off + zero) & (draw < off + zero + nan)] = np.nan
    return got


def old_measure(result: OracleResult, got: Any, gradient: bool | str) -> list[Measurement]:
    """``measure`` before ``measure_worst`` (default max_ulps), gradients only."""
    if isinstance(gradient, str):
        expected, condition, exact, scale = result.operand_gradients[gradient]
    else:
        expected, exact = result.gradient, result.gradient_exact
        condition, scale = result.gradient_condition, result.gradient_scale
    got = np.asarray(got, dtype=np.float64)
    fmt = result.case.format
    rows = []
    for index in np.ndindex(expected.shape):
        status, ulps, relative = classify(
            exact[index], expected[index], got[index], fmt, condition[index], 4.0,
            None if scale is None else float(scale[index]),
        )  # fmt: skip
        rows.append(Measurement(
            index=tuple(int(i) for i in index), exact=_text(exact[index]),
            expected=float(expected[index]), got=float(got[index]), ulps=float(ulps),
            bits=bits_of_error(ulps), relative_error=relative,
            condition=float(condition[index]), status=status,
        ))  # fmt: skip
    return rows


def old_worst_per_unit(rows: list[Measurement]) -> list[Measurement]:
    """The audit's ``_worst_per_unit`` before ``measure_worst`` (a rowwise loss)."""
    units: dict[tuple[int, ...], Measurement] = {}
    for m in rows:
        unit = m.index[:1]
        best = units.get(unit)
        if best is None or (SEVERITY[m.status], m.ulps) > (SEVERITY[best.status], best.ulps):
            units[unit] = m
    return list(units.values())


def old_path(result: OracleResult, values: Any, grads: dict) -> list[Measurement]:
    rows = measure(result, values)  # the values (N of them): the same code on both paths
    for towards, got in grads.items():
        rows += old_worst_per_unit(old_measure(result, got, towards))
    return rows


def new_path(result: OracleResult, values: Any, grads: dict) -> list[Measurement]:
    rows = measure(result, values)
    for towards, got in grads.items():
        rows += measure_worst(result, got, gradient=towards, per_row=True)
    return rows


def run(V: int, repeats: int, seed: int) -> dict:
    t0 = time.perf_counter()
    result = inputs(V, seed)
    oracle = time.perf_counter() - t0
    rng = np.random.default_rng(seed + 1)
    out: dict[str, Any] = {"oracle": oracle, "runs": {}}
    for scenario, fractions in SCENARIOS.items():
        values = spoil(result.value, fractions, rng)
        grads = {t: spoil(result.gradient if t is True else result.operand_gradients[t].value,
                          fractions, rng) for t in GRADIENTS}  # fmt: skip
        times: dict[str, list[float]] = {"old": [], "new": []}
        rows: dict[str, str] = {}
        for _ in range(repeats):
            for name, path in (("old", old_path), ("new", new_path)):
                t0 = time.perf_counter()
                got = path(result, values, grads)
                times[name].append(time.perf_counter() - t0)
                rows[name] = repr(got)  # repr: NaN fields compare equal
        assert rows["old"] == rows["new"], (V, scenario)
        statuses: dict[str, int] = {}
        for m in new_path(result, values, grads):
            statuses[m.status] = statuses.get(m.status, 0) + 1
        out["runs"][scenario] = {"times": times, "rows": rows["new"].count("Measurement("),
                                 "statuses": statuses}  # fmt: skip
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--classes", type=int, nargs="+", default=[32_000, 131_072])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    print(
        f"Measuring one linear_cross_entropy case (N = {N}, D = {D}, float32), median of "
        f"{args.repeats}, one thread; Python {platform.python_version()}, numpy {np.__version__}"
    )
    print()
    print("| V | gradients | old s | new s | ratio | rows | statuses of the rows | oracle s |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | --- | ---: |")
    details = []
    for V in args.classes:
        r = run(V, args.repeats, args.seed)
        for scenario, s in r["runs"].items():
            old, new = (statistics.median(s["times"][k]) for k in ("old", "new"))
            statuses = ", ".join(f"{k} {v:,}" for k, v in sorted(s["statuses"].items()))
            print(f"| {V:,} | {scenario} | {old:.2f} | {new:.2f} | {old / new:.0f}x "
                  f"| {s['rows']:,} | {statuses} | {r['oracle']:.2f} |", flush=True)  # fmt: skip
            runs = {k: [round(t, 2) for t in v] for k, v in s["times"].items()}
            details.append(f"V = {V:,}, {scenario}: old {runs['old']}, new {runs['new']}")
    print()
    print("Runs (seconds): " + "; ".join(details) + ".")


if __name__ == "__main__":
    main()
