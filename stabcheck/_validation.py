"""Argument checks shared by the modules that take counts from users: each error names the
argument, its value and what would be valid."""

from __future__ import annotations

from typing import Any

import numpy as np

from stabcheck.errors import InvalidArgument


def integer(name: str, value: Any, least: int = 1, what: str = "") -> int:
    """``value`` as an ``int`` of at least ``least`` (bools refused), or ``InvalidArgument``;
    ``what`` describes a valid value when "a positive integer" would not say enough."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
        kind = what or {1: "a positive integer", 0: "a non-negative integer"}.get(
            least, f"an integer >= {least}"
        )
        raise InvalidArgument(f"{name}={value!r} is not valid; it must be {kind}")
    return int(value)
