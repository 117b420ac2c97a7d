"""PyTorch's cross-entropy functions, as auditable implementations (``backend="torch"``).

Importing this module registers them and does not import torch: each function imports
``torch.nn.functional`` through ``backends.require`` when it is called. The torch backend
hands them tensors of the case's dtype (sparse labels as int64) and differentiates the
summed loss with ``torch.autograd``.

=========================================  ============================================
name                                       loss: call (options it takes)
=========================================  ============================================
``torch.cross_entropy``                    sparse_softmax_cross_entropy_with_logits:
                                           ``F.cross_entropy(x, k, ...)`` (label_smoothing,
                                           weight, ignore_index, reduction);
                                           softmax_cross_entropy_with_logits: the same
                                           with probability targets ``y`` (label_smoothing,
                                           weight, reduction)
``torch.nll_loss(log_softmax)``            sparse_softmax_cross_entropy_with_logits:
                                           ``F.nll_loss(F.log_softmax(x, dim=1), k, ...)``
                                           (weight, ignore_index, reduction)
``torch.binary_cross_entropy``             binary_crossentropy:
                                           ``F.binary_cross_entropy(p, z, ...)`` (reduction)
``torch.binary_cross_entropy_with_logits`` sigmoid_cross_entropy_with_logits:
                                           ``F.binary_cross_entropy_with_logits(x, z, ...)``
                                           (reduction); weighted_cross_entropy_with_logits:
                                           the same with ``pos_weight`` as a 0-d tensor of
                                           x's dtype (pos_weight, reduction)
=========================================  ============================================

Options keep the catalogue's names, which are PyTorch's, and its definitions, which are
PyTorch's too: weights scale the smoothed targets, ``sum_i w_i t_i (lse(x) - x_i)`` (the
behaviour PyTorch #104776 questions), and ``mean`` divides by the sum of ``w_k`` over the rows
not ignored (index targets) or by the number of rows or elements. Absent options take
PyTorch's defaults (``ignore_index=-100``, no weights, no smoothing) except ``reduction``,
which is ``"none"`` unless given. PyTorch has no ``sum_over_batch_size``, no smoothing of
binary targets, no z-loss and no softcap, so cases with those are not given to these
functions. ``torchvision.ops.sigmoid_focal_loss`` is not adapted: the only torchvision wheel
for torch 2.13 on the machines' indexes (0.28.0) is a CUDA build whose ``_C.so`` needs
``libtorch_cuda.so``, and ``import torchvision`` fails beside the CPU torch.

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


def cross_entropy(
    x: Any,
    labels: Any,
    *,
    label_smoothing: float = 0.0,
    weight: Any = None,
    ignore_index: int = -100,
    reduction: str = "none",
) -> Any:
    """``F.cross_entropy(x, labels, weight=w, ignore_index=i, reduction=r,
    label_smoothing=e)``, class indices or probabilities; the row loss is
    ``sum_i w_i t_i (lse(x) - x_i)``, ``t = (1 - e) y + e / C``."""
    return _functional().cross_entropy(
        x,
        labels,
        weight=weight,
        ignore_index=ignore_index,
        reduction=reduction,
        label_smoothing=label_smoothing,
    )


def nll_log_softmax(
    x: Any, k: Any, *, weight: Any = None, ignore_index: int = -100, reduction: str = "none"
) -> Any:
    """``F.nll_loss(F.log_softmax(x, dim=1), k, weight=w, ignore_index=i, reduction=r)``:
    ``w_k (lse(x) - x_k)``."""
    F = _functional()
    return F.nll_loss(
        F.log_softmax(x, dim=1), k, weight=weight, ignore_index=ignore_index, reduction=reduction
    )


def binary_cross_entropy(p: Any, z: Any, *, reduction: str = "none") -> Any:
    """``F.binary_cross_entropy(p, z, reduction=r)``: ``-(z log p + (1 - z) log(1 - p))``."""
    return _functional().binary_cross_entropy(p, z, reduction=reduction)


def binary_cross_entropy_with_logits(x: Any, z: Any, *, reduction: str = "none") -> Any:
    """``F.binary_cross_entropy_with_logits(x, z, reduction=r)``:
    ``z softplus(-x) + (1 - z) softplus(x)``."""
    return _functional().binary_cross_entropy_with_logits(x, z, reduction=reduction)


def weighted_binary_cross_entropy_with_logits(
    x: Any, z: Any, pos_weight: float, *, reduction: str = "none"
) -> Any:
    """``F.binary_cross_entropy_with_logits(x, z, reduction=r, pos_weight=q)`` with ``q`` a
    0-d tensor of x's dtype (``pos_weight`` is already a value of that format):
    ``q z softplus(-x) + (1 - z) softplus(x)``."""
    torch = require("torch")
    q = torch.tensor(pos_weight, dtype=x.dtype)
    return _functional().binary_cross_entropy_with_logits(x, z, reduction=reduction, pos_weight=q)


def linear_cross_entropy(
    h: Any,
    labels: Any,
    *,
    linear_weight: Any,
    linear_bias: Any = None,
    label_smoothing: float = 0.0,
    weight: Any = None,
    ignore_index: int | None = None,
    reduction: str = "none",
) -> Any:
    """``F.linear_cross_entropy(h, W, labels, linear_bias=b, ...)`` on its reference path
    (``options=None``): ``F.cross_entropy(F.linear(h, W, b), labels, ...)``; ``ignore_index``
    None is PyTorch's default (-100 for class indices; probability targets refuse any)."""
    return _functional().linear_cross_entropy(
        h, linear_weight, labels, linear_bias=linear_bias, weight=weight,
        ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing,
    )  # fmt: skip


# The chunked path's batch chunk: 2 rows, so that the strategies' cases (up to 3 rows, up
# to 128 with reductions) cross chunk boundaries; "auto" would take them in one chunk.
CHUNK_ROWS = 2


def _chunked(policy: str) -> Any:
    def chunked(h: Any, labels: Any, *, linear_weight: Any, linear_bias: Any = None,
                weight: Any = None, ignore_index: int = -100,
                reduction: str = "none") -> Any:  # fmt: skip
        torch = require("torch")
        options = torch.nn.LinearCrossEntropyOptions(
            acc_policy=policy, chunking_method=None, batch_chunk_size=CHUNK_ROWS
        )
        return _functional().linear_cross_entropy(
            h, linear_weight, labels, linear_bias=linear_bias, weight=weight,
            ignore_index=ignore_index, reduction=reduction, options=options,
        )  # fmt: skip

    chunked.__doc__ = (
        f"``F.linear_cross_entropy(h, W, k, ..., options=LinearCrossEntropyOptions(acc_policy="
        f"{policy!r}, chunking_method=None, batch_chunk_size={CHUNK_ROWS}))``: the chunked path"
    )
    return chunked


# PyTorch's reductions: no sum_over_batch_size (Keras')
REDUCTIONS = {"reduction": ("none", "sum", "mean")}
# The chunked path takes integer labels, no label smoothing, and these reductions; given
# anything else it warns and runs the reference path, so those cases are not given to it.
CHUNKED_POLICIES = ("accurate", "balanced", "compact")

# How a script calls each function (stabcheck.repro): torch's default reduction is "mean",
# so the adapters' "none" is always written.
F = "torch.nn.functional"
CROSS_ENTROPY = f"{F}.cross_entropy(x, y{{options}}, reduction={{reduction}})"
LINEAR_CROSS_ENTROPY = (
    f"{F}.linear_cross_entropy(x, {{linear_weight}}, y{{options}}, reduction={{reduction}})"
)

# (name, loss, function, description, documented, options, repro template)
_TABLE: tuple[tuple[str, str, Any, str, dict[str, str], tuple[str, ...], str], ...] = (
    (
        "torch.cross_entropy",
        "sparse_softmax_cross_entropy_with_logits",
        cross_entropy,
        "F.cross_entropy(x, k, weight=w, ignore_index=i, reduction=r, label_smoothing=e) "
        "with class indices",
        {},
        ("label_smoothing", "weight", "ignore_index", "reduction"),
        CROSS_ENTROPY,
    ),
    (
        "torch.cross_entropy",
        "softmax_cross_entropy_with_logits",
        cross_entropy,
        "F.cross_entropy(x, y, weight=w, reduction=r, label_smoothing=e) with probability targets",
        {},
        ("label_smoothing", "weight", "reduction"),
        CROSS_ENTROPY,
    ),
    (
        "torch.nll_loss(log_softmax)",
        "sparse_softmax_cross_entropy_with_logits",
        nll_log_softmax,
        "F.nll_loss(F.log_softmax(x, dim=1), k, weight=w, ignore_index=i, reduction=r)",
        {},
        ("weight", "ignore_index", "reduction"),
        f"{F}.nll_loss({F}.log_softmax(x, dim=1), y{{options}}, reduction={{reduction}})",
    ),
    (
        "torch.binary_cross_entropy",
        "binary_crossentropy",
        binary_cross_entropy,
        "F.binary_cross_entropy(p, z, reduction=r)",
        {"clipped": BCE_CLAMP_DOC},
        ("reduction",),
        f"{F}.binary_cross_entropy(x, y, reduction={{reduction}})",
    ),
    (
        "torch.binary_cross_entropy_with_logits",
        "sigmoid_cross_entropy_with_logits",
        binary_cross_entropy_with_logits,
        "F.binary_cross_entropy_with_logits(x, z, reduction=r)",
        {},
        ("reduction",),
        f"{F}.binary_cross_entropy_with_logits(x, y, reduction={{reduction}})",
    ),
    (
        "torch.binary_cross_entropy_with_logits",
        "weighted_cross_entropy_with_logits",
        weighted_binary_cross_entropy_with_logits,
        "F.binary_cross_entropy_with_logits(x, z, reduction=r, pos_weight=q)",
        {},
        ("pos_weight", "reduction"),
        f"{F}.binary_cross_entropy_with_logits(x, y, reduction={{reduction}}, "
        "pos_weight=torch.tensor({pos_weight}, dtype=x.dtype))",
    ),
)

_TABLE += (
    (
        "torch.linear_cross_entropy",
        "linear_cross_entropy",
        linear_cross_entropy,
        "F.linear_cross_entropy(h, W, k, linear_bias=b, weight=w, ignore_index=i, reduction=r, "
        "label_smoothing=e) on the reference path (options=None)",
        {},
        ("label_smoothing", "weight", "ignore_index", "reduction"),
        LINEAR_CROSS_ENTROPY,
    ),
    (
        "torch.linear_cross_entropy",
        "soft_linear_cross_entropy",
        linear_cross_entropy,
        "F.linear_cross_entropy(h, W, y, linear_bias=b, weight=w, reduction=r, "
        "label_smoothing=e) with probability targets (the reference path)",
        {},
        ("label_smoothing", "weight", "reduction"),
        LINEAR_CROSS_ENTROPY,
    ),
    *(
        (
            f"torch.linear_cross_entropy(chunked, {policy})",
            "linear_cross_entropy",
            _chunked(policy),
            f"F.linear_cross_entropy(h, W, k, linear_bias=b, weight=w, ignore_index=i, "
            f"reduction=r, options=LinearCrossEntropyOptions(acc_policy={policy!r}, "
            f"batch_chunk_size={CHUNK_ROWS})): the chunked path",
            {},
            ("weight", "ignore_index", "reduction"),
            LINEAR_CROSS_ENTROPY.removesuffix(")")
            + f", options=torch.nn.LinearCrossEntropyOptions(acc_policy={policy!r}, "
            f"chunking_method=None, batch_chunk_size={CHUNK_ROWS}))",
        )
        for policy in CHUNKED_POLICIES
    ),
)

for _name, _loss, _fn, _description, _documented, _params, _repro in _TABLE:
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
            params=_params,
            choices=REDUCTIONS,
            repro=_repro,
        )
    )
