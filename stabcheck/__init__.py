"""stabcheck: exact numerical-stability testing of cross-entropy losses.

``import stabcheck`` imports the core only (numpy, mpmath and the catalogue). The main
entry points are imported on first use (PEP 562), each from its own module:

============================  ===============================================
``stabcheck.check``           ``stabcheck.check.check``: drawn cases, shrunk failures
``stabcheck.assert_exact``    ``stabcheck.assertions.assert_exact``: given inputs
``stabcheck.exact``           ``stabcheck.oracle.exact``: the correctly rounded loss
``stabcheck.Case``            ``stabcheck.case.Case``: validated, replayable inputs
``stabcheck.run_audit``       ``stabcheck.audit.run_audit``: many implementations
``stabcheck.StabcheckFailure``, ``stabcheck.NotExact``: what the two checks raise
============================  ===============================================

``stabcheck.check`` is always the function, also after ``import stabcheck.check``: the
package keeps the function under that name rather than the submodule of the same name.
The submodule is ``sys.modules["stabcheck.check"]``; ``from stabcheck.check import
CheckResult`` (or ``importlib.import_module("stabcheck.check")``) reaches its other names,
while the attribute path ``stabcheck.check.CheckResult`` does not.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

from stabcheck.errors import (
    AdapterUnavailable,
    InvalidArgument,
    PrecisionLimitReached,
    StabcheckError,
    UnsupportedFormat,
)
from stabcheck.formats import FORMATS, Format, get_format
from stabcheck.losses import LOSSES, LossSpec, get_loss

if TYPE_CHECKING:
    from stabcheck.assertions import NotExact as NotExact
    from stabcheck.assertions import assert_exact as assert_exact
    from stabcheck.audit import run_audit as run_audit
    from stabcheck.case import Case as Case
    from stabcheck.check import StabcheckFailure as StabcheckFailure
    from stabcheck.check import check as check
    from stabcheck.oracle import exact as exact

__version__ = "0.1.0"

# name -> the module that defines it, imported on first access
_LAZY = {
    "Case": "stabcheck.case",
    "NotExact": "stabcheck.assertions",
    "StabcheckFailure": "stabcheck.check",
    "assert_exact": "stabcheck.assertions",
    "check": "stabcheck.check",
    "exact": "stabcheck.oracle",
    "run_audit": "stabcheck.audit",
}

__all__ = [
    "FORMATS",
    "LOSSES",
    "AdapterUnavailable",
    "Case",
    "Format",
    "InvalidArgument",
    "LossSpec",
    "NotExact",
    "PrecisionLimitReached",
    "StabcheckError",
    "StabcheckFailure",
    "UnsupportedFormat",
    "assert_exact",
    "check",
    "exact",
    "get_format",
    "get_loss",
    "run_audit",
]


def __getattr__(name: str) -> Any:
    """Import a lazy name's module on first access and keep the name here."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


class _Package(types.ModuleType):
    """The package's module type: it keeps a lazy name that is also a submodule's name
    (``check``) for the function when the import system binds the submodule to it."""

    def __setattr__(self, name: str, value: Any) -> None:
        if (
            name in _LAZY
            and isinstance(value, types.ModuleType)
            and value.__name__ == f"{__name__}.{name}"
        ):
            return  # `import stabcheck.check`: stabcheck.check stays (or becomes) the function
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
