"""stabcheck: exact numerical-stability testing of cross-entropy losses."""

from stabcheck.errors import (
    AdapterUnavailable,
    InvalidArgument,
    PrecisionLimitReached,
    StabcheckError,
    UnsupportedFormat,
)
from stabcheck.formats import FORMATS, Format, get_format
from stabcheck.losses import LOSSES, LossSpec, get_loss

__version__ = "0.1.0"

__all__ = [
    "FORMATS",
    "LOSSES",
    "AdapterUnavailable",
    "Format",
    "InvalidArgument",
    "LossSpec",
    "PrecisionLimitReached",
    "StabcheckError",
    "UnsupportedFormat",
    "get_format",
    "get_loss",
]
