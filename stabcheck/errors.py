"""The errors stabcheck raises: one small hierarchy, each message naming the fix."""

from __future__ import annotations


class StabcheckError(Exception):
    """Base class of every error stabcheck raises on purpose."""


class InvalidArgument(StabcheckError, ValueError):
    """An argument is not valid: the message names it, its value and what would be."""


class AdapterUnavailable(StabcheckError, ImportError):
    """An optional framework is not installed: the message names the extra to install."""


class PrecisionLimitReached(StabcheckError, ArithmeticError):
    """The oracle could not certify a rounding within its precision cap."""
