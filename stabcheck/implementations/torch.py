"""PyTorch's cross-entropy functions, as auditable implementations (``backend="torch"``).

Importing this module registers them and does not import torch: each function imports
``torch.nn.functional`` through ``backends.require`` when it is called. The torch backend
hands them tensors of the case's dtype (sparse labels as int64) and differentiates the
summed loss with ``torch.autograd``.

=========================================  ============================================
name                                       loss: call
=========================================  ============================================
``torch.cross_entropy``                    sparse_softmax_cross_entropy_with_logits:
                                           ``F.cross_entropy(x, k, reduction="none")``;
                                           softmax_cross_entropy_with_logits: the same
                                           with probability targets ``y``
``torch.nll_loss(log_softmax)``            sparse_softmax_cross_entropy_with_logits:
                                           ``F.nll_loss(F.log_softmax(x, dim=1), k, ...)``
``torch.binary_cross_entropy``             binary_crossentropy:
                                           ``F.binary_cross_entropy(p, z, ...)``
``torch.binary_cross_entropy_with_logits`` sigmoid_cross_entropy_with_logits:
                                           ``F.binary_cross_entropy_with_logits(x, z, ...)``;
                                           weighted_cross_entropy_with_logits: the same
                                           with ``pos_weight`` as a 0-d tensor of x's dtype
=========================================  ============================================

Formats: every function runs forward and backward in float64, float32, float16 and
bfloat16 on CPU (checked on torch 2.13.0+cpu: none raises "not implemented for 'Half'"
or "'BFloat16'"), so all four are declared.
"""

from __future__ import annotations

from typing import Any

from stabcheck.implementations import Implementation, register
from stabcheck.implementations.backends import require

# Checked by running forward and backward of each function on CPU, torch 2.13.0.
FORMATS = ("float64", "float32", "float16", "bfloat16")
LIBRARY = "torch"

# Documented for torch.nn.BCELoss, which F.binary_cross_entropy computes. Measured on torch
# 2.13.0: the loss is -(z max(log p, -100) + (1 - z) max(log(1 - p), -100)), so 100 z at p = 0
# and 100 (1 - z) at p = 1 (status clipped: the exact loss is +inf), and 100 z for
# 0 < p < e**-100 = 3.7e-44 too (status inaccurate; only float64 and float32 subnormals reach
# it). Only "clipped" is declared: notes are keyed by status, and inaccurate rows also come
# from the gradient's clamp, which is not documented: the gradient is
# (p - z) / max(p (1 - p), eps) with eps = 1e-12 cast to the input dtype (-1/eps at p = 0,
# z = 1: clipped where the exact gradient is -inf), so p / eps instead of about 1 for
# p < 1e-12, 0 instead of +-1 at p = z in {0, 1}, and NaN there in float16 (eps rounds to 0).
BCE_CLAMP_DOC = (
    "BCELoss clamps its log function outputs to be >= -100, so that the loss is always finite "
    "and the backward linear (PyTorch docs, torch.nn.BCELoss); measured: 100 z at p = 0, "
    "100 (1 - z) at p = 1"
)


def _functional() -> Any:
    return require("torch.nn.functional")


def cross_entropy(x: Any, labels: Any) -> Any:
    """``F.cross_entropy(x, labels, reduction="none")``: class indices or probabilities."""
    return _functional().cross_entropy(x, labels, reduction="none")


def nll_log_softmax(x: Any, k: Any) -> Any:
    """``F.nll_loss(F.log_softmax(x, dim=1), k, reduction="none")``."""
    F = _functional()
    return F.nll_loss(F.log_softmax(x, dim=1), k, reduction="none")


def binary_cross_entropy(p: Any, z: Any) -> Any:
    """``F.binary_cross_entropy(p, z, reduction="none")``."""
    return _functional().binary_cross_entropy(p, z, reduction="none")


def binary_cross_entropy_with_logits(x: Any, z: Any) -> Any:
    """``F.binary_cross_entropy_with_logits(x, z, reduction="none")``."""
    return _functional().binary_cross_entropy_with_logits(x, z, reduction="none")


def weighted_binary_cross_entropy_with_logits(x: Any, z: Any, pos_weight: float) -> Any:
    """``F.binary_cross_entropy_with_logits(x, z, reduction="none", pos_weight=q)`` with
    ``q`` a 0-d tensor of x's dtype (``pos_weight`` is already a value of that format)."""
    torch = require("torch")
    q = torch.tensor(pos_weight, dtype=x.dtype)
    return _functional().binary_cross_entropy_with_logits(x, z, reduction="none", pos_weight=q)


_TABLE: tuple[tuple[str, str, Any, str, dict[str, str]], ...] = (
    (
        "torch.cross_entropy",
        "sparse_softmax_cross_entropy_with_logits",
        cross_entropy,
        'F.cross_entropy(x, k, reduction="none") with class indices',
        {},
    ),
    (
        "torch.cross_entropy",
        "softmax_cross_entropy_with_logits",
        cross_entropy,
        'F.cross_entropy(x, y, reduction="none") with probability targets',
        {},
    ),
    (
        "torch.nll_loss(log_softmax)",
        "sparse_softmax_cross_entropy_with_logits",
        nll_log_softmax,
        'F.nll_loss(F.log_softmax(x, dim=1), k, reduction="none")',
        {},
    ),
    (
        "torch.binary_cross_entropy",
        "binary_crossentropy",
        binary_cross_entropy,
        'F.binary_cross_entropy(p, z, reduction="none")',
        {"clipped": BCE_CLAMP_DOC},
    ),
    (
        "torch.binary_cross_entropy_with_logits",
        "sigmoid_cross_entropy_with_logits",
        binary_cross_entropy_with_logits,
        'F.binary_cross_entropy_with_logits(x, z, reduction="none")',
        {},
    ),
    (
        "torch.binary_cross_entropy_with_logits",
        "weighted_cross_entropy_with_logits",
        weighted_binary_cross_entropy_with_logits,
        'F.binary_cross_entropy_with_logits(x, z, reduction="none", pos_weight=q)',
        {},
    ),
)

for _name, _loss, _fn, _description, _documented in _TABLE:
    register(
        Implementation(
            name=_name,
            loss=_loss,
            fn=_fn,
            backend="torch",
            formats=FORMATS,
            library=LIBRARY,
            description=_description,
            requires=("torch",),
            documented=_documented,
        )
    )
