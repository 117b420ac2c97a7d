"""What the adapter tests share: the ordinary cases they draw, running one implementation
on one case against the oracle, and the message naming the elements beyond a limit.

A plain module, not a conftest: the test modules call these at import time too (Keras
builds its child processes' jobs, torch caches its ordinary results). There is no
``__init__.py`` in tests/, so pytest's default ``prepend`` import mode puts this folder on
``sys.path`` and the test files import it as ``adapter_helpers``. It imports no library
that an adapter wraps.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from stabcheck.case import Case
from stabcheck.implementations import get_implementation
from stabcheck.losses import InputKind, LabelKind, get_loss
from stabcheck.measure import Measurement, measure
from stabcheck.oracle import OracleResult, evaluate
from stabcheck.runner import Outcome, invoke

# The ULPs ordinary inputs stay within; each test module says why that is enough for its
# library where it holds the values to it.
ORDINARY_ULPS = 8


def ordinary_case(loss: str, fmt: str, rng: np.random.Generator | int = 0) -> Case:
    """Moderate logits (|x| <= 2) or probabilities (elements in [0.05, 0.95], rows drawn
    from a Dirichlet distribution) with soft, one-hot or integer labels: 4 rows of 5
    classes, or 8 elements. ``rng``: a generator to draw from (successive calls give
    successive cases), or the seed of a fresh one."""
    rng = np.random.default_rng(rng)
    spec = get_loss(loss)
    logits = spec.inputs is InputKind.LOGITS
    if spec.operands:  # h (4 x 3), W (5 x 3) and b with logits of a few units
        h, W, b = rng.uniform(-1, 1, (4, 3)), rng.uniform(-1, 1, (5, 3)), rng.uniform(-1, 1, 5)
        y = rng.integers(0, 5, 4) if spec.labels is LabelKind.SPARSE else rng.dirichlet(
            np.full(5, 2.0), 4)  # fmt: skip
        return Case.build(loss, h, y, format=fmt, linear_weight=W, linear_bias=b)
    if spec.rowwise:
        x = rng.uniform(-2, 2, (4, 5)) if logits else rng.dirichlet(np.full(5, 4.0), 4)
        if spec.labels is LabelKind.SPARSE:
            y = rng.integers(0, 5, 4)
        else:
            y = rng.uniform(0, 1, (4, 5))
            y /= y.sum(axis=1, keepdims=True)
    else:
        x = rng.uniform(-2, 2, 8) if logits else rng.uniform(0.05, 0.95, 8)
        y = rng.choice([0.0, 1.0, 0.25, 0.75], 8)
    params = {"pos_weight": 2.5} if "pos_weight" in spec.params else {}
    return Case.build(loss, x, y, format=fmt, **params)


def grid_case(loss: str, fmt: str, rows: int = 12, classes: int = 4, *, hard: bool = False) -> Case:
    """A ``rows`` x ``classes`` case seeded by the loss's and format's names: logits in
    [-1, 1] or probabilities in [0.05, 0.95] (rows not normalised). Labels: class indices
    for the sparse losses; else soft ones with zeros (about 30%), or with ``hard`` targets 0
    and 1 and one-hot rows."""
    spec = get_loss(loss)
    rng = np.random.default_rng(sum(map(ord, loss + fmt)))
    low, high = (0.05, 0.95) if spec.inputs is InputKind.PROBABILITIES else (-1.0, 1.0)
    x = rng.uniform(low, high, (rows, classes))
    if hard:
        k = rng.integers(0, classes, rows)
        if spec.labels is LabelKind.SPARSE:
            labels = k
        elif spec.rowwise:
            labels = (np.arange(classes) == k[:, None]).astype(float)
        else:
            labels = rng.integers(0, 2, x.shape).astype(float)
    elif spec.labels is LabelKind.SPARSE:
        labels = rng.integers(0, classes, rows)
    else:
        soft = rng.uniform(0, 1, x.shape)
        labels = np.where(rng.uniform(size=x.shape) < 0.3, 0.0, soft)
    params = {"pos_weight": 2.5} if "pos_weight" in spec.params else {}
    return Case.build(loss, x, labels, format=fmt, **params)


def run(
    name: str, loss: str, x, y, fmt: str = "float64", **params
) -> tuple[Outcome, OracleResult, list[Measurement], list[Measurement]]:
    """(outcome of implementation ``name`` on the case, oracle result, value rows, gradient
    rows)."""
    case = Case.build(loss, x, y, format=fmt, **params)
    outcome = invoke(get_implementation(name, loss), case, grad=True)
    exact = evaluate(case, grad=True)
    return (
        outcome,
        exact,
        measure(exact, outcome.values),
        measure(exact, outcome.gradient, gradient=True),
    )


def statuses(rows: list[Measurement]) -> list[str]:
    return [m.status for m in rows]


def beyond(
    rows: list[Measurement], max_ulps: float | None, what: str, case: Case, *, ok: bool = False
) -> str:
    """'' if every row is within ``max_ulps`` (None: has status ok; ``ok``: both), else a
    message naming the worst of them (no rows at all is a message too)."""
    if not rows:
        return f"no {what} elements measured\ncase: {case.to_json()}\n"
    bad = [
        m
        for m in rows
        if (max_ulps is not None and not m.ulps <= max_ulps)
        or ((max_ulps is None or ok) and m.status != "ok")
    ]
    if not bad:
        return ""
    lines = [
        f"{what}[{', '.join(map(str, m.index))}]: got {m.got!r}, expected {m.expected!r} "
        f"({m.ulps:g} ULPs, {m.status})"
        for m in sorted(bad, key=lambda m: -m.ulps)[:5]
    ]
    if max_ulps is None:
        limit = "the audit's tolerance"
    else:
        limit = f"{max_ulps} ULPs" + (" or the audit's tolerance" if ok else "")
    return (
        f"{len(bad)} of {len(rows)} {what} elements beyond {limit}:\n  "
        + "\n  ".join(lines)
        + f"\ncase: {case.to_json()}\n"
    )


def python_output(code: str, timeout: float = 60) -> str:
    """What ``python -c code`` prints, in a fresh interpreter (this one's), failing the test
    with the end of its stderr if it does not exit 0."""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout
