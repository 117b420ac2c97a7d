"""Argument checks shared by the modules that take arguments from users (``check``,
``assert_exact``, the audit, the strategies): each error names the argument, its value and
what would be valid. Heavier modules are imported inside the functions that need them."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from stabcheck.errors import AdapterUnavailable, InvalidArgument, did_you_mean


def integer(name: str, value: Any, least: int = 1, what: str = "") -> int:
    """``value`` as an ``int`` of at least ``least`` (bools refused), or ``InvalidArgument``;
    ``what`` describes a valid value when "a positive integer" would not say enough."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
        kind = what or {1: "a positive integer", 0: "a non-negative integer"}.get(
            least, f"an integer >= {least}"
        )
        raise InvalidArgument(f"{name}={value!r} is not valid; it must be {kind}")
    return int(value)


def backend(value: Any) -> str:
    """``value`` as the name of a backend whose framework is installed: ``InvalidArgument``
    for an unknown name, ``AdapterUnavailable`` naming the extra for a missing framework."""
    from stabcheck.implementations import BACKENDS, backends

    if value not in BACKENDS:
        raise InvalidArgument(
            f"backend={value!r} is not supported.{did_you_mean(value, BACKENDS, n=1)} "
            f"Valid backends: {', '.join(BACKENDS)}."
        )
    if value != "numpy" and not backends.installed(value):
        extra = backends.EXTRAS.get(value, value)
        raise AdapterUnavailable(
            f"backend={value!r} needs {value}, which is not installed; "
            f"install it with: pip install 'stabcheck[{extra}]'"
        )
    return str(value)


def gradient(grad: Any, grad_fn: Any, backend: str) -> bool:
    """``grad`` checked with ``grad_fn`` for ``backend``: a numpy function's gradient comes
    from ``grad_fn``, the other backends' from their autodiff."""
    if not isinstance(grad, bool):
        raise InvalidArgument(f"grad={grad!r} must be True or False")
    if grad_fn is not None and not callable(grad_fn):
        raise InvalidArgument(f"grad_fn={grad_fn!r} is not callable")
    if grad and backend == "numpy" and grad_fn is None:
        raise InvalidArgument(
            "grad=True with backend='numpy' needs grad_fn=..., a function returning "
            "d(sum of losses)/d(predictions); or use an autodiff backend "
            "(backend='torch', 'tensorflow' or 'jax')"
        )
    return grad


def max_ulps(value: Any) -> float:
    """``value`` as a non-negative number of ULPs (a float)."""
    if not isinstance(value, (int, float, np.integer, np.floating)) or not value >= 0:
        raise InvalidArgument(f"max_ulps={value!r} must be a non-negative number of ULPs")
    return float(value)


def statuses(name: str, value: str | Iterable[str] | None) -> frozenset[str]:
    """``value`` (one status name or several) as a set of ``stabcheck.measure.STATUSES``."""
    from stabcheck.measure import STATUSES

    chosen = frozenset((value,) if isinstance(value, str) else (value or ()))
    for status in chosen:
        if status not in STATUSES:
            raise InvalidArgument(
                f"{name}={status!r} is not a status.{did_you_mean(status, STATUSES, n=1)} "
                f"Statuses: {', '.join(STATUSES)}."
            )
    return chosen
