"""The oracle's two paths checked against each other: the fast double-double path must
give the mpmath path's answers bit for bit. Used by ``scripts/check_fast_oracle.py`` (the
full comparison) and the tests (a slice of it).
"""

from __future__ import annotations

import math

import numpy as np

from stabcheck.case import Case
from stabcheck.formats import Format
from stabcheck.losses import get_loss
from stabcheck.oracle import OracleResult, evaluate
from stabcheck.oracle.fast import FAST_PRECISION
from stabcheck.oracle.options import FAST_OPTIONS


def compare(case: Case, grad: bool = True) -> list[str]:
    """What differs between the fast and the mpmath path on ``case`` (nothing, normally)."""
    return differences(evaluate(case, grad=grad, fast=True), evaluate(case, grad=grad, fast=False))


def differences(fast: OracleResult, slow: OracleResult) -> list[str]:
    """What differs between two results of one case: values and gradients bit for bit;
    condition numbers as ``measure`` uses them, max(1, kappa), to a relative max(1e-6, 4
    eps) (the units' exact values are midpoints of enclosures that only had to round
    certainly) or within the units' own rounding noise (``rounding_noise``); the exact
    values of the fast path's results to the same relative tolerance."""
    out = []
    rtol = max(1e-6, 4 * fast.case.format.eps)
    decided = fast.fast.ravel()
    if not (fast.precision.ravel()[decided] == FAST_PRECISION).all():
        out.append("a result of the fast path does not report FAST_PRECISION")
    if slow.fast.any():
        out.append("the mpmath path reports results of the fast path")
    pairs = zip(fast.exact.ravel()[decided], slow.exact.ravel()[decided])
    if not all(e == f or (f != 0 and abs(e / f - 1) < rtol) for e, f in pairs):
        out.append("exact values of the fast path differ from the mpmath path's")
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
    zero for the other losses and for cases with options the fast path does not take."""
    case = result.case
    plain = set(case.params) <= FAST_OPTIONS  # else no unit of the fast path to compare
    if not case.loss.rowwise or case.loss.inputs.value != "logits" or not plain:
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
    if "pos_weight" in spec.params:  # a positive finite value of the format, any binade
        weight = math.exp(rng.uniform(math.log(fmt.smallest_subnormal), math.log(fmt.max)))
        params["pos_weight"] = max(fmt.round(min(weight, fmt.max)), fmt.smallest_subnormal)
    return Case.build(loss, x, labels, format=fmt, regime="bits", **params)
