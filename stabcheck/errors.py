"""The errors stabcheck raises: one small hierarchy, each message naming the fix."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class StabcheckError(Exception):
    """Base class of every error stabcheck raises on purpose."""


class InvalidArgument(StabcheckError, ValueError):
    """An argument is not valid: the message names it, its value and what would be."""


class AdapterUnavailable(StabcheckError, ImportError):
    """An optional framework is not installed: the message names the extra to install."""


class UnsupportedFormat(StabcheckError, TypeError):
    """A library does not take the case's format: the message quotes what it said. The
    audit reports the implementation as unsupported in that format, not as an error."""


class PrecisionLimitReached(StabcheckError, ArithmeticError):
    """The oracle could not certify a rounding within its precision cap."""


def did_you_mean(value: object, candidates: Iterable[str], n: int = 3) -> str:
    """ " Did you mean 'a' or 'b'?" for the candidates close to ``value``, else ""."""
    close = difflib.get_close_matches(str(value), list(candidates), n=n, cutoff=0.6)
    return f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
