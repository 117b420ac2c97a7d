#!/usr/bin/env python3
"""Benchmark exact logits (``stabcheck.oracle.dot``) against float64 matrix products.

    .venv/bin/python benchmarks/dot_products.py [--repeats 3] [--chunk 32768]

N = 8, D = 4096, V = 131,072; h = randn, W = 0.02 randn, both rounded to float32 or
bfloat16 and held in float64. Timed, on the same arrays: numpy's float64 ``h @ W.T``,
torch's float64 ``torch.nn.functional.linear`` (if torch imports), ``products(h, W)`` and
its ``approximation()`` (exact logits, correctly rounded hi, double-double lo and a proved
bound). One thread everywhere (BLAS, torch), the machine being shared.

W alone would be 4.3 GB in float64, so V is covered in calls on ``--chunk`` rows of W at a
time (each method on the same chunk); a method's time is the sum over the chunks of one
repeat, and the table gives the median over repeats. Each chunk is also checked: a few
entries exactly against Fractions, and hi (correctly rounded) against numpy's product: the
largest |numpy - hi| / (|h| |W|^T) is numpy's error, at most about D 2**-53.

The memory column is the peak the module needs for one call on all V rows, estimated from
array sizes (``stats['work_bytes']`` scaled to V, plus approximation()'s three N x V outputs
and its chunk arrays); the tracemalloc column is measured, for one chunk.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402
from fractions import Fraction  # noqa: E402

import ml_dtypes  # noqa: E402
import numpy as np  # noqa: E402

from stabcheck.oracle import dot  # noqa: E402

try:
    import torch

    torch.set_num_threads(1)
except ImportError:  # pragma: no cover
    torch = None

N, D, V = 8, 4096, 131_072
FORMATS = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16}


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def exact_entry(h: np.ndarray, w: np.ndarray) -> Fraction:
    return sum((Fraction(x) * Fraction(y) for x, y in zip(h.tolist(), w.tolist())), Fraction(0))


def run_chunk(h: np.ndarray, W: np.ndarray, times: dict) -> tuple:
    """Every method on one chunk of W, ``len(times[...])`` times; checks; returns the
    products, hi and numpy's largest error relative to |h| |W|^T."""
    for r in range(len(times["numpy"])):
        t, ref = timed(lambda: h @ W.T)
        times["numpy"][r] += t
        if torch is not None:
            ht, Wt = torch.from_numpy(h), torch.from_numpy(W)
            t, _ = timed(lambda: torch.nn.functional.linear(ht, Wt))  # noqa: B023
            times["torch"][r] += t
        t, p = timed(lambda: dot.products(h, W))
        times["products"][r] += t
        t, (hi, _lo, _bound) = timed(p.approximation)
        times["approximation"][r] += t
    for n, v in [(0, 0), (N - 1, W.shape[0] - 1), (3, W.shape[0] // 2)]:
        assert p.fraction(n, v) == exact_entry(h[n], W[v]), (n, v)
        assert hi[n, v] == float(p.fraction(n, v))
    err = float(np.max(np.abs(hi - ref) / (np.abs(h) @ np.abs(W).T)))
    return p, hi, err


def run_format(name: str, dtype, repeats: int, chunk: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    h = rng.standard_normal((N, D), dtype=np.float32).astype(dtype).astype(np.float64)
    times = {k: [0.0] * repeats for k in ("numpy", "torch", "products", "approximation")}
    fallback = 0
    levels_w: list[int] = []
    levels_h: list[int] = []
    terms = 0
    worst = 0.0
    stats: dict = {}
    traced = 0
    for c0 in range(0, V, chunk):
        rows = min(chunk, V - c0)
        W = (rng.standard_normal((rows, D), dtype=np.float32) * np.float32(0.02)).astype(dtype)
        p, hi, err = run_chunk(h, W.astype(np.float64), times)
        worst = max(worst, err)
        fallback += p.fallback_count
        levels_h = p.stats["levels_h"]
        for lev, count in enumerate(p.stats["levels_w"]):
            if lev == len(levels_w):
                levels_w.append(0)
            levels_w[lev] += count
        terms = max(terms, len(p.terms))
        stats = dict(p.stats)
        if c0 == 0:
            tracemalloc.start()
            q = dot.products(h, W.astype(np.float64))
            q.approximation()
            traced = tracemalloc.get_traced_memory()[1] - 8 * W.size  # less the float64 copy
            tracemalloc.stop()
        del W, p, hi
    # peak for one call on all V rows: the V-proportional buffers scaled, plus outputs
    work = stats["work_bytes"]
    per_v = 8 * N * terms + 8 * stats["gemm_rows"] * len(levels_w)
    est = work + per_v * (V - min(chunk, V)) + 3 * 8 * N * V + 4 * 8 * (terms + 2) * dot.CHUNK
    return {
        "name": name,
        "median": {k: statistics.median(v) for k, v in times.items()},
        "fallback": fallback / (N * V),
        "levels_h": levels_h,
        "levels_w": levels_w,
        "terms": terms,
        "beta": stats["beta"],
        "estimate": est,
        "traced": traced,
        "worst": worst,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--chunk", type=int, default=32_768, help="rows of W per call")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--vocab", type=int, default=V, help="V (a smaller one for a dry run)")
    args = ap.parse_args()
    globals()["V"] = args.vocab
    print(
        f"Exact logits h W^T, N = {N}, D = {D}, V = {V:,} ({args.chunk:,} rows of W per call), "
        f"median of {args.repeats}, one thread; Python {platform.python_version()}, "
        f"numpy {np.__version__}" + (f", torch {torch.__version__}" if torch else "")
    )
    print()
    print(
        "| values | numpy h @ W.T | torch linear | products | approximation | exact total "
        "| / numpy | / torch | fallback | beta (h, w) | h rows per level | W rows per level "
        "| terms | peak MB (est., V) | traced MB (chunk) | numpy error / (abs h abs W^T) |"
    )
    print("| --- |" + " ---: |" * 15)
    for i, (name, dtype) in enumerate(FORMATS.items()):
        r = run_format(name, dtype, args.repeats, args.chunk, args.seed + i)
        m = r["median"]
        total = m["products"] + m["approximation"]
        tt = f"{m['torch']:.3f} s" if torch else "-"
        rt = f"{total / m['torch']:.1f}x" if torch else "-"
        print(
            f"| {name} | {m['numpy']:.3f} s | {tt} | {m['products']:.3f} s "
            f"| {m['approximation']:.3f} s | {total:.3f} s | {total / m['numpy']:.1f}x | {rt} "
            f"| {r['fallback']:.1%} | {r['beta']} | {r['levels_h']} "
            f"| {', '.join(f'{x:,}' for x in r['levels_w'])} | {r['terms']} "
            f"| {r['estimate'] / 2**20:.0f} | {r['traced'] / 2**20:.0f} | {r['worst']:.1e} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
