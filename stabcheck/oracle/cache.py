"""A content-addressed cache of the oracle's results on disk.

An exact result is a pure function of the case (loss, format, inputs, parameters), of
whether gradients are asked, and of the oracle's code: ``Cache.evaluate`` keys each result
by the SHA-256 of the case's canonical JSON and ``grad``, inside a folder named after
``oracle_version()`` (a digest of the oracle's source files and of the libraries its
arithmetic uses), so a changed oracle starts an empty folder and never reads a stale
answer. Only the oracle's results are kept, never an implementation's.

Each entry is one file written through a temporary file and renamed into place, so two
processes (or two audits) writing the same entry at once both leave a whole file, and a
reader sees a whole file or none; an entry that cannot be read (truncated by a full disk,
say) counts as missing and is written afresh.

The folder is ``$STABCHECK_CACHE_DIR``, else ``$XDG_CACHE_HOME/stabcheck``, else
``~/.cache/stabcheck``; ``STABCHECK_CACHE_DIR=off`` turns the cache off. Deleting the
folder is always safe.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import pickle
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from stabcheck._files import atomic_write
from stabcheck.case import Case
from stabcheck.oracle import Gradient, OracleResult, evaluate
from stabcheck.oracle.enclosure import CTX

OFF = "off"
FORMAT = 1  # of the files; part of the version
# the oracle's answers depend on these files of stabcheck and on these libraries' arithmetic
SOURCES = ("oracle/*.py", "case.py", "formats.py", "losses.py")
LIBRARIES = ("numpy", "mpmath", "gmpy2", "ml_dtypes", "numba")


def oracle_version(root: Path | None = None) -> str:
    """A digest of everything an exact result depends on besides its case: the files
    ``SOURCES`` of the stabcheck package at ``root`` (this one by default) and the versions
    of ``LIBRARIES``."""
    return _version(root) if root is not None else _own_version()


@functools.cache
def _own_version() -> str:
    return _version(Path(__file__).resolve().parent.parent)


def _version(root: Path) -> str:
    digest = hashlib.sha256(f"format {FORMAT}".encode())
    for pattern in SOURCES:
        for path in sorted(root.glob(pattern)):
            digest.update(path.relative_to(root).as_posix().encode() + b"\0")
            digest.update(path.read_bytes())
    for name in LIBRARIES:
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            version = "-"
        digest.update(f"{name} {version}\0".encode())
    return digest.hexdigest()[:16]


def default_directory() -> Path | None:
    """Where the cache lives (see the module's docstring); None when it is turned off."""
    chosen = os.environ.get("STABCHECK_CACHE_DIR", "").strip()
    if chosen.lower() == OFF:
        return None
    if chosen:
        return Path(chosen)
    base = os.environ.get("XDG_CACHE_HOME", "").strip() or Path.home() / ".cache"
    return Path(base) / "stabcheck"


def cached(case: Case, grad: bool) -> OracleResult:
    """``oracle.evaluate(case, grad=grad)`` through the cache in ``default_directory()``."""
    return Cache(default_directory()).evaluate(case, grad)


class Cache:
    """The oracle's results for cases, on disk under ``directory`` (None: no cache, every
    result computed). ``hits`` and ``misses`` count the lookups."""

    def __init__(self, directory: Path | str | None) -> None:
        self.root = None if directory is None else Path(directory) / "oracle" / oracle_version()
        self.hits = self.misses = 0

    def evaluate(self, case: Case, grad: bool) -> OracleResult:
        """``oracle.evaluate(case, grad=grad)``, read from the cache when it is there (its
        ``seconds`` are then ``{"cache": time to read}``), else computed and stored."""
        if self.root is None:
            return evaluate(case, grad=grad)
        start = time.perf_counter()
        path = self.path(case, grad)
        found = _read(path, case)
        if found is not None:
            self.hits += 1
            return _with_seconds(found, {"cache": time.perf_counter() - start})
        self.misses += 1
        result = evaluate(case, grad=grad)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda f: pickle.dump(to_state(result), f, protocol=5), binary=True)
        return result

    def path(self, case: Case, grad: bool) -> Path:
        """The file of ``case``'s result (with gradients, if ``grad``)."""
        assert self.root is not None
        payload = {k: v for k, v in case.to_dict().items() if k != "regime"}
        text = json.dumps([payload, grad], sort_keys=True, separators=(",", ":"))
        key = hashlib.sha256(text.encode()).hexdigest()
        return self.root / key[:2] / f"{key}.pickle"


def _with_seconds(result: OracleResult, seconds: dict[str, float]) -> OracleResult:
    return dataclasses.replace(result, seconds=seconds)


def to_state(result: OracleResult) -> dict[str, Any]:
    """Everything of ``result`` but its case, in plain types (the exact values as raw
    mpmath tuples), for a file or a pipe."""
    operands = {name: (g.value, g.condition, _tuples(g.exact), g.scale)
                for name, g in result.operand_gradients.items()}  # fmt: skip
    return {
        "value": result.value,
        "condition": result.condition,
        "precision": result.precision,
        "gradient": result.gradient,
        "gradient_condition": result.gradient_condition,
        "fast": result.fast,
        "exact": _tuples(result.exact),
        "gradient_exact": None if result.gradient is None else _tuples(result.gradient_exact),
        "operand_gradients": operands,
        "gradient_scale": result.gradient_scale,
        "seconds": dict(result.seconds),
    }


def _read(path: Path, case: Case) -> OracleResult | None:
    """The result stored at ``path``; None when there is none, or none that can be read
    (a damaged entry is a missing one, written afresh)."""
    try:
        with open(path, "rb") as f:
            return from_state(pickle.load(f), case)
    except Exception:
        return None


def from_state(state: dict[str, Any], case: Case) -> OracleResult:
    """The result of ``case`` that ``to_state`` gave ``state``."""
    state = dict(state)
    exact, gradient_exact = _numbers(state.pop("exact")), state.pop("gradient_exact")
    gradient_exact = None if gradient_exact is None else _numbers(gradient_exact)
    operands = {name: Gradient(value, condition, _numbers(exact), scale)
                for name, (value, condition, exact, scale)
                in state.pop("operand_gradients").items()}  # fmt: skip
    return OracleResult(
        case=case,
        **state,
        operand_gradients=operands,
        lazy_exact=lambda: exact,
        lazy_gradient_exact=lambda: gradient_exact,
    )


def _tuples(array: np.ndarray) -> tuple[tuple[int, ...], list[Any]]:
    """An array of mpmath numbers as its shape and the numbers' raw tuples."""
    flat = array.reshape(-1)
    return array.shape, [None if x is None else CTX.convert(x)._mpf_ for x in flat]


def _numbers(stored: tuple[tuple[int, ...], list[Any]]) -> np.ndarray:
    shape, raw = stored
    out = np.empty(len(raw), dtype=object)
    out[:] = [None if x is None else CTX.make_mpf(x) for x in raw]
    return out.reshape(shape)
