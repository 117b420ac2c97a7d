#!/usr/bin/env python3
"""Benchmark the linear losses' fast oracle (``stabcheck.oracle.fastlinear``) against
PyTorch's own float64 unfused linear cross-entropy, and write the table to
``benchmarks/linear_oracle.md``.

    .venv/bin/python benchmarks/linear_oracle.py [--repeats 3] [--classes 131072]

N = 8 rows, D = 4096 features, V = 131,072 classes; h = randn, W = 0.02 randn, both in
float32 or bfloat16, integer labels drawn uniformly, no bias, reduction "mean". Timed, on
the same inputs, one method per fresh process (so that each peak memory is its own):

* ``fastlinear``: ``fastlinear.evaluate_with_stats(case, grad=True)``: the correctly
  rounded losses and dL/dh, dL/dW (and what the result holds: condition numbers and exact
  values of dL/dW are computed on access, so not timed here; timed separately as
  "dL/dW conditions").
* ``torch``: float64, unfused: ``F.linear`` (logits N x V in float64), ``F.cross_entropy``
  forward and backward (autograd) on them, then the linear layer's backward, dL/dh = G W
  and dL/dW = G^T h (``torch.mm``, what ``F.linear``'s backward computes), dL/dW kept in
  float32. W in float64 alone would be 4.3 GB (and its gradient as much), so both passes
  go over blocks of 8,192 classes of W, converted to float64 each time (that conversion
  is part of any float64 reference).

One thread everywhere (OpenBLAS, torch): the machine is shared. The case is built without
``Case.build``'s copy of W, so the process holds W once. Memory: the process's peak RSS
(``ru_maxrss``, inputs included) and the peak of the allocations made during the timed
call (``tracemalloc``; numpy reports its buffers to it).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402
from pathlib import Path  # noqa: E402

import ml_dtypes  # noqa: E402
import numpy as np  # noqa: E402

N, D, V = 8, 4096, 131_072
FORMATS = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16}
BLOCK = 8192
HERE = Path(__file__).resolve().parent


def inputs(fmt: str, classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """h (N x D), W (V x D) in the format, labels (N); W drawn block by block."""
    rng = np.random.default_rng(seed)
    dtype = FORMATS[fmt]
    h = rng.standard_normal((N, D)).astype(dtype)
    W = np.empty((classes, D), dtype)
    for v0 in range(0, classes, BLOCK):
        v1 = min(classes, v0 + BLOCK)
        W[v0:v1] = (0.02 * rng.standard_normal((v1 - v0, D))).astype(dtype)
    labels = rng.integers(0, classes, N)
    return h, W, labels


def run_fast(fmt: str, h: np.ndarray, W: np.ndarray, labels: np.ndarray) -> dict:
    from stabcheck.case import Case
    from stabcheck.formats import get_format
    from stabcheck.losses import get_loss
    from stabcheck.oracle import fastlinear

    case = Case(get_loss("linear_cross_entropy"), get_format(fmt), h, labels,
                {"reduction": "mean"}, "benchmark", {"linear_weight": W})  # fmt: skip
    t0 = time.perf_counter()
    result, stats = fastlinear.evaluate_with_stats(case, grad=True)
    seconds = time.perf_counter() - t0
    assert result is not None
    cond = result.operand_gradients["linear_weight"].condition
    t1 = time.perf_counter()
    medians = []
    for v0 in range(0, len(W), 4096):  # every condition number of dL/dW, block by block
        medians.append(float(np.median(cond[v0 : v0 + 4096])))
    cond_seconds = time.perf_counter() - t1
    return {"seconds": seconds, "stats": stats, "cond_seconds": cond_seconds,
            "median_kappa_dW": float(np.median(medians))}  # fmt: skip


def run_torch(fmt: str, h: np.ndarray, W: np.ndarray, labels: np.ndarray) -> dict:
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    ht = torch.from_numpy(h.astype(np.float64))
    y = torch.from_numpy(labels)
    blocks = [slice(v0, min(len(W), v0 + BLOCK)) for v0 in range(0, len(W), BLOCK)]

    def w64(blk: slice) -> torch.Tensor:
        return torch.from_numpy(W[blk].astype(np.float32)).to(torch.float64)

    with torch.no_grad():
        logits = torch.cat([F.linear(ht, w64(blk)) for blk in blocks], dim=1)
    z = logits.requires_grad_()
    loss = F.cross_entropy(z, y, reduction="mean")
    loss.backward()
    G = z.grad
    dh = torch.zeros_like(ht)
    dW = torch.empty((len(W), D), dtype=torch.float32)
    with torch.no_grad():
        for blk in blocks:
            Wb = w64(blk)
            dh += G[:, blk] @ Wb
            dW[blk] = (G[:, blk].T @ ht).to(torch.float32)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "loss": float(loss)}


def worker(method: str, fmt: str, classes: int, repeats: int) -> None:
    h, W, labels = inputs(fmt, classes)
    run = run_fast if method == "fast" else run_torch
    out = []
    for _ in range(repeats):
        tracemalloc.start()
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        res = run(fmt, h, W, labels)
        res["traced_peak"] = tracemalloc.get_traced_memory()[1] - base
        tracemalloc.stop()
        out.append(res)
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"runs": out, "maxrss": maxrss, "w_bytes": int(W.nbytes)}))


def measure(method: str, fmt: str, classes: int, repeats: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", method, fmt, "--classes", str(classes),
           "--repeats", str(repeats)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def gb(n: float) -> str:
    return f"{n / 1e9:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--classes", type=int, default=V)
    parser.add_argument("--worker", nargs=2, metavar=("METHOD", "FORMAT"))
    parser.add_argument("--out", default=str(HERE / "linear_oracle.md"))
    args = parser.parse_args()
    if args.worker:
        worker(args.worker[0], args.worker[1], args.classes, args.repeats)
        return
    rows = []
    for fmt in FORMATS:
        fast = measure("fast", fmt, args.classes, args.repeats)
        torch_ = measure("torch", fmt, args.classes, args.repeats)
        tf = statistics.median(r["seconds"] for r in fast["runs"])
        tt = statistics.median(r["seconds"] for r in torch_["runs"])
        st = fast["runs"][0]["stats"]
        rows.append(
            {
                "format": fmt,
                "fast": tf,
                "torch": tt,
                "ratio": tf / tt,
                "cond": statistics.median(r["cond_seconds"] for r in fast["runs"]),
                "logit_fallback": st["logit_fallback"] / st["logits"],
                "tier2": st["tier2"] / st["entries"],
                "tier3": st["tier3"] / st["entries"],
                "rows_mpmath": st["rows_mpmath"],
                "fast_rss": fast["maxrss"],
                "fast_traced": max(r["traced_peak"] for r in fast["runs"]),
                "torch_rss": torch_["maxrss"],
                "torch_traced": max(r["traced_peak"] for r in torch_["runs"]),
                "w_bytes": fast["w_bytes"],
                "runs": [[round(r["seconds"], 2) for r in m["runs"]] for m in (fast, torch_)],
                "entries": st["entries"],
            }
        )
        print(rows[-1], flush=True)
    write(rows, args)


def write(rows: list[dict], args: argparse.Namespace) -> None:
    import numpy
    import torch

    load = os.getloadavg()
    lines = [
        "# Linear cross-entropy: fast oracle against PyTorch float64",
        "",
        f"`benchmarks/linear_oracle.py --repeats {args.repeats}`: N = {N}, D = {D:,}, "
        f"V = {args.classes:,}; h = randn, W = 0.02 randn in the format, random integer "
        "labels, no bias, reduction mean; values and every gradient (dL/dh, dL/dW). "
        f"Median of {args.repeats} runs, one thread (OpenBLAS, torch); Python "
        f"{platform.python_version()}, numpy {numpy.__version__}, torch {torch.__version__}, "
        f"{platform.machine()}.",
        "",
        f"**Shared machine** (2 cores, with a long audit running on it at times; load "
        f"average {load[0]:.1f} when the table was written): absolute times are noisy; both "
        "methods ran under the same conditions, one after the other.",
        "",
        "| format | fastlinear s | torch float64 s | ratio | dL/dW conditions s (lazy) | "
        "logits by integer fallback | gradient entries in double-double | gradient entries "
        "in mpmath | rows in mpmath | fastlinear peak RSS GB | fastlinear allocated GB | "
        "torch peak RSS GB | W GB |",
        "| --- |" + " ---: |" * 12,
    ]
    for r in rows:
        lines.append(
            f"| {r['format']} | {r['fast']:.1f} | {r['torch']:.1f} | {r['ratio']:.1f}x | "
            f"{r['cond']:.1f} | {r['logit_fallback']:.2%} | {r['tier2']:.4%} | "
            f"{r['tier3']:.4%} | {r['rows_mpmath']} | {gb(r['fast_rss'])} | "
            f"{gb(r['fast_traced'])} | {gb(r['torch_rss'])} | {gb(r['w_bytes'])} |"
        )
    lines += [
        "",
        "Runs (seconds): "
        + "; ".join(f"{r['format']}: fastlinear {r['runs'][0]}, torch {r['runs'][1]}" for r in rows)
        + ".",
        "",
        "- fastlinear: exact logits (``dot.products``, W in blocks of classes), each row's "
        "loss and G = dL/dx in double-double with proved bounds, dL/dh and dL/dW by float64 "
        "BLAS with Higham bounds and Ziv's test per entry (tier 1); the entries it leaves "
        "undecided in double-double (tier 2), then mpmath (tier 3). "
        f"Gradient entries: {rows[0]['entries']:,} per case (dL/dh and dL/dW).",
        "- dL/dW (V x D) is returned as float32 at this size (every float32 and bfloat16 "
        "value is one); its condition numbers and 64-bit exact values are computed on access "
        "(the conditions column times that, once, for all of them).",
        "- torch: float64 logits by ``F.linear`` over blocks of 8,192 classes, "
        "``F.cross_entropy`` forward and backward by autograd on the N x V logits, then "
        "dL/dh = G W and dL/dW = G^T h by ``torch.mm`` per block (dL/dW stored as float32), "
        "W converted to float64 block by block in both passes.",
        "- Peak RSS includes the inputs (W once, in its format); 'allocated' is the peak of "
        "what the timed call allocated (tracemalloc), mostly dL/dW itself (float32, "
        f"{gb(4 * args.classes * D)} GB) and one block's temporaries (torch's allocator is "
        "not traced: its peak RSS only).",
        "",
    ]
    Path(args.out).write_text("\n".join(lines))


if __name__ == "__main__":
    main()
