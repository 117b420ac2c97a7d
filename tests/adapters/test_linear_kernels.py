"""Fused linear cross-entropy kernels with one defect each, written here in PyTorch as users
write them (a vocabulary-chunked online softmax, differentiated by autograd), checked with
``stabcheck.check``: each defect must be flagged in the regime that shows it, and the kernel
without a defect must pass there.

The kernel computes in float64 and rounds once to the input dtype; the defects are those
users report of fused kernels: a running sum not rescaled when the maximum grows at a chunk
boundary, the running sum accumulated in bfloat16, a -inf bias (padded vocabulary) turned
into 0 so the padding carries probability, and a mean whose gradient divides by every row
instead of the rows not ignored.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from stabcheck.check import StabcheckFailure, check  # noqa: E402
from stabcheck.implementations.reference import Reference  # noqa: E402

LINEAR = "linear_cross_entropy"
CHUNK = 2  # classes per chunk: the regimes' 2 to 8 classes cross chunk boundaries


def _kernel(h, labels, linear_weight, linear_bias=None, *, ignore_index=-100,
            reduction="none", rescale=True, acc=None, leak=False, count_all=False):  # fmt: skip
    kept = labels != ignore_index
    k = torch.where(kept, labels, 0)
    H = torch.where(kept[:, None], h.double(), 0.0)  # an ignored row's NaN moves nothing
    W = linear_weight.double()
    b = torch.zeros(len(W), dtype=torch.float64) if linear_bias is None else linear_bias.double()
    if leak:
        b = torch.nan_to_num(b, neginf=0.0)
    m = torch.full((H.shape[0],), -torch.inf, dtype=torch.float64)
    s = torch.zeros(H.shape[0], dtype=torch.float64)
    for start in range(0, W.shape[0], CHUNK):
        x = H @ W[start : start + CHUNK].T + b[start : start + CHUNK]
        top = torch.maximum(m, x.max(dim=1).values)
        # exp(m - top), 0 from m = -inf (a where, not a NaN from -inf - -inf)
        scale = torch.exp(torch.where(torch.isneginf(m), m, m - top)) if rescale else 1.0
        s = s * scale + torch.exp(x - top[:, None]).sum(dim=1)
        if acc is not None:
            s = s.to(acc).double()
        m = top
    target = (H * W[k]).sum(dim=1) + b[k]
    loss = torch.where(kept, (m - target) + torch.log(s), 0.0)
    if reduction == "none":
        return loss.to(h.dtype)
    total = loss.sum()
    if reduction == "sum":
        return total.to(h.dtype)
    count = kept.sum()
    mean = total / count
    if count_all:  # the value over the rows kept, the gradient over all of them
        mean = total / len(kept) + (mean - total / len(kept)).detach()
    return mean.to(h.dtype)


def _variant(name, **defect):
    """The kernel with ``defect`` (none: the accurate one), as a function of its own name
    that takes what the audit gives it."""

    def fn(h, labels, linear_weight, linear_bias=None, *, ignore_index=-100, reduction="none"):
        return _kernel(h, labels, linear_weight, linear_bias, ignore_index=ignore_index,
                       reduction=reduction, **defect)  # fmt: skip

    fn.__name__ = fn.__qualname__ = name
    return fn


accurate = _variant("accurate")
not_rescaled = _variant("not_rescaled", rescale=False)
bf16_sum = _variant("bf16_sum", acc=torch.bfloat16)
leaky_padding = _variant("leaky_padding", leak=True)
mean_over_all_rows = _variant("mean_over_all_rows", count_all=True)


def _check(fn, regimes, **params):
    return check(fn, LINEAR, backend="torch", grad=True, formats="float32", regimes=regimes,
                 examples=12, seed=0, params=params or None)  # fmt: skip


def test_the_kernel_without_a_defect_passes():
    """Where its float64 is enough: not on confident rows, where autograd's p_k - 1 cancels
    (the option regimes draw those too; stabcheck's own accurate reference passes there)."""
    assert _check(accurate, ("linear", "padded", "near_ties")).passed
    exact_enough = Reference("accurate", LINEAR)
    assert check(exact_enough, LINEAR, grad=True, grad_fn=Reference("accurate", LINEAR, True),
                 formats="float32", regimes="ignore_index", examples=12, seed=0).passed  # fmt: skip


@pytest.mark.parametrize(
    ("fn", "regime"),
    [(not_rescaled, "linear"), (bf16_sum, "linear"), (leaky_padding, "padded")],
    ids=["chunk boundary", "bfloat16 sum", "padding leaks"],
)
def test_each_defect_is_flagged_where_it_shows(fn, regime):
    with pytest.raises(StabcheckFailure) as info:
        _check(fn, regime)
    assert [g.regime for g in info.value.result.failed_groups] == [regime]


def test_a_mean_whose_gradient_counts_the_ignored_rows_is_flagged_on_its_gradients():
    with pytest.raises(StabcheckFailure) as info:
        _check(mean_over_all_rows, "ignore_index", reduction="mean")
    failed = {row["quantity"] for row in info.value.result.rows if row["status"] != "ok"}
    assert failed and failed <= {"gradient", "gradient[linear_weight]", "gradient[linear_bias]"}
