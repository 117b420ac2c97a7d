"""Reference numpy implementations of every loss, in three families.

Notation as in ``stabcheck.losses``: ``x`` logits, ``p`` probabilities, ``z`` binary or soft
targets, ``y`` a row of soft labels with sum ``Y``, ``k`` an integer label, ``q`` the
``pos_weight``; ``m = max_i x_i`` at the first index ``j``. Every ``grad`` is the gradient of
the sum of the unreduced losses with respect to the predictions.

``naive``: the formula as written, in the input dtype, nothing clipped.
``s = 1 / (1 + exp(-x))``, ``-(q z log s + (1 - z) log(1 - s))``; ``p = exp(x) / sum exp(x)``,
``-sum_i y_i log p_i``; ``-(z log p + (1 - z) log(1 - p))``. Gradients the textbook way:
``(1 - z) s - q z (1 - s)``, ``Y p - y``, ``-z/p + (1 - z)/(1 - p)``, ``-y/p``. It overflows,
underflows and returns NaN on extreme inputs: that is what it is for.

``stable``: the stable forms TensorFlow documents, in the input dtype.
``max(x, 0) - x z + log(1 + exp(-|x|))``; ``(1 - z) x + l (log(1 + exp(-|x|)) + max(-x, 0))``
with ``l = 1 + (q - 1) z``; ``sum_i y_i (log(sum_i exp(x_i - m)) - (x_i - m))``; the
probability losses as written with ``0 log 0 = 0``. No NaN on finite inputs with a finite loss.

``accurate``: a few ULPs from the correctly rounded loss, in every format. Computed in float64,
each loss a sum of non-negative terms so that nothing cancels, and rounded once to the input
dtype (bfloat16 through float32 rounded to odd, so never twice; only a float64 result that
ties a halfway point of a narrower format can still land one ULP off):

- sigmoid and weighted: ``D + (q z + 1 - z) log1p(exp(-|x|))`` with ``D = (1 - z) x`` for
  ``x >= 0`` and ``D = -q z x`` for ``x < 0`` (``q = 1`` for sigmoid);
- softmax: ``sum_i y_i (m - x_i) + Y log1p(S)``, ``S = sum_{i != j} exp(x_i - m)``, where
  ``x_i - m`` is split exactly into two floats and rows are summed with ``math.fsum``;
- binary: ``-z log p - (1 - z) log1p(-p)``; categorical: ``-sum_{y_i > 0} y_i log p_i``.

Its conventions are the oracle's: ``0 log 0 = 0`` (a zero label contributes nothing, even
under ``p = 0`` or a ``-inf`` logit, and a ``-inf`` logit under a zero label gets gradient 0);
infinite logits are limits where the limit exists: with ``+inf`` logits the loss is ``+inf``
if a positive label sits below them (every term is >= 0), else 0 for a lone ``+inf`` logit and
NaN for several with a positive label on one; a row of ``-inf`` logits is NaN unless all its
labels are 0. A NaN input gives NaN (the whole row for rowwise losses). The gradients take the
same care: ``((1 - z) - q z e) / (1 + e)`` for ``x >= 0`` and ``((1 - z) e - q z) / (1 + e)``
for ``x < 0``, with ``e = exp(-|x|)`` and, below ``|x| = 1``, ``(1 - z) - q z`` taken out
exactly and ``e - 1`` from ``expm1``; softmax ``Y p_i - y_i`` with the argmax entry as
``(Y - y_j) - Y S / (1 + S)`` when ``S < 1`` and ``Y / (1 + S) - y_j`` otherwise; binary
``(p - z) / (p (1 - p))``; gradients are limits too (``Y p_i - y_i`` with ``p`` the limit of
the softmax, NaN where it has none and some label is positive).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np

from stabcheck.implementations import Implementation, register

Array = np.ndarray
Fn = Callable[..., Array]

_EXP_M700 = float.fromhex("0x1.14f2b0fb9307fp-1010")  # exp(-700), correctly rounded


def quiet(fn: Fn) -> Fn:
    """``fn`` with numpy's floating-point warnings silenced."""

    @functools.wraps(fn)
    def quiet(*args: object, **params: float) -> Array:
        with np.errstate(all="ignore"):
            return fn(*args, **params)

    return quiet


def _one_hot(k: Array, like: Array) -> Array:
    return (np.arange(like.shape[-1]) == k[:, None]).astype(like.dtype)


def pick(a: Array, k: Array) -> Array:
    """Row i's entry k[i] of a 2-D array."""
    return np.take_along_axis(a, k[:, None], axis=-1)[:, 0]


def _unless_zero(w: Array, value: Array) -> Array:
    """``value`` where ``w != 0``, else 0: a zero label's term is 0, even where its formula
    gives an infinity or NaN (0 log 0 = 0)."""
    return np.where(w == 0, np.zeros_like(value), value)


# -- naive ---------------------------------------------------------------------------------


def _naive_sigmoid(x: Array) -> Array:
    return 1 / (1 + np.exp(-x))


def _naive_softmax(x: Array) -> Array:
    e = np.exp(x)
    return e / e.sum(axis=-1, keepdims=True)


@quiet
def naive_weighted(x: Array, z: Array, pos_weight: float) -> Array:
    q, s = x.dtype.type(pos_weight), _naive_sigmoid(x)
    return -(q * z * np.log(s) + (1 - z) * np.log(1 - s))


@quiet
def naive_weighted_grad(x: Array, z: Array, pos_weight: float) -> Array:
    q, s = x.dtype.type(pos_weight), _naive_sigmoid(x)
    return (1 - z) * s - q * z * (1 - s)


def naive_sigmoid(x: Array, z: Array) -> Array:
    return naive_weighted(x, z, 1.0)


def naive_sigmoid_grad(x: Array, z: Array) -> Array:
    return naive_weighted_grad(x, z, 1.0)


@quiet
def naive_softmax(x: Array, y: Array) -> Array:
    return -(y * np.log(_naive_softmax(x))).sum(axis=-1)


@quiet
def naive_softmax_grad(x: Array, y: Array) -> Array:
    return _naive_softmax(x) * y.sum(axis=-1, keepdims=True) - y


@quiet
def naive_sparse_softmax(x: Array, k: Array) -> Array:
    return -np.log(pick(_naive_softmax(x), k))


@quiet
def naive_sparse_softmax_grad(x: Array, k: Array) -> Array:
    return _naive_softmax(x) - _one_hot(k, x)


@quiet
def naive_binary(p: Array, z: Array) -> Array:
    return -(z * np.log(p) + (1 - z) * np.log(1 - p))


@quiet
def naive_binary_grad(p: Array, z: Array) -> Array:
    return -z / p + (1 - z) / (1 - p)


@quiet
def naive_categorical(p: Array, y: Array) -> Array:
    return -(y * np.log(p)).sum(axis=-1)


@quiet
def naive_categorical_grad(p: Array, y: Array) -> Array:
    return -y / p


@quiet
def sparse_categorical(p: Array, k: Array) -> Array:
    """``-log p_k``: as written, which is already as stable as it gets (naive and stable)."""
    return -np.log(pick(p, k))


@quiet
def sparse_categorical_grad(p: Array, k: Array) -> Array:
    return np.where(_one_hot(k, p) == 1, -1 / pick(p, k)[:, None], np.zeros_like(p))


# -- stable --------------------------------------------------------------------------------


def _stable_sigmoid(x: Array) -> Array:
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


def _stable_log_softmax(x: Array) -> Array:
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _stable_softmax(x: Array) -> Array:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@quiet
def stable_sigmoid(x: Array, z: Array) -> Array:
    return np.maximum(x, 0) - x * z + np.log(1 + np.exp(-np.abs(x)))


@quiet
def stable_sigmoid_grad(x: Array, z: Array) -> Array:
    return _stable_sigmoid(x) - z


@quiet
def stable_weighted(x: Array, z: Array, pos_weight: float) -> Array:
    l = 1 + (x.dtype.type(pos_weight) - 1) * z  # noqa: E741 (TensorFlow's name)
    return (1 - z) * x + l * (np.log(1 + np.exp(-np.abs(x))) + np.maximum(-x, 0))


@quiet
def stable_weighted_grad(x: Array, z: Array, pos_weight: float) -> Array:
    q = x.dtype.type(pos_weight)
    return (1 - z) * _stable_sigmoid(x) - q * z * _stable_sigmoid(-x)


@quiet
def stable_softmax(x: Array, y: Array) -> Array:
    return _unless_zero(y, y * -_stable_log_softmax(x)).sum(axis=-1)


@quiet
def stable_softmax_grad(x: Array, y: Array) -> Array:
    return _stable_softmax(x) * y.sum(axis=-1, keepdims=True) - y


@quiet
def stable_sparse_softmax(x: Array, k: Array) -> Array:
    return -pick(_stable_log_softmax(x), k)


@quiet
def stable_sparse_softmax_grad(x: Array, k: Array) -> Array:
    return _stable_softmax(x) - _one_hot(k, x)


@quiet
def stable_binary(p: Array, z: Array) -> Array:
    return -(_unless_zero(z, z * np.log(p)) + _unless_zero(1 - z, (1 - z) * np.log(1 - p)))


@quiet
def stable_binary_grad(p: Array, z: Array) -> Array:
    return _unless_zero(z, -z / p) + _unless_zero(1 - z, (1 - z) / (1 - p))


@quiet
def stable_categorical(p: Array, y: Array) -> Array:
    return -_unless_zero(y, y * np.log(p)).sum(axis=-1)


@quiet
def stable_categorical_grad(p: Array, y: Array) -> Array:
    return _unless_zero(y, -y / p)


# -- accurate ------------------------------------------------------------------------------


def _in_float64(kernel: Fn) -> Fn:
    """``kernel`` run on float64 copies of the inputs, its result rounded once to the dtype
    of the predictions."""

    @functools.wraps(kernel)
    def fn(predictions: Array, labels: Array, **params: float) -> Array:
        with np.errstate(all="ignore"):
            if labels.dtype.kind not in "iu":
                labels = labels.astype(np.float64)
            out = kernel(predictions.astype(np.float64), labels, **params)
            return _round(out, predictions.dtype)

    return fn


def _round(values: Array, dtype: np.dtype) -> Array:
    """float64 ``values`` rounded once to ``dtype``. bfloat16 goes through float32 rounded
    to odd, which the second rounding cannot spoil (a direct cast rounds twice)."""
    if dtype.name != "bfloat16":
        return values.astype(dtype)
    f32 = values.astype(np.float32)
    inexact_even = (f32 != values) & np.isfinite(f32) & ((f32.view(np.uint32) & 1) == 0)
    toward = np.where(values > f32, np.float32(np.inf), np.float32(-np.inf))
    return np.where(inexact_even, np.nextafter(f32, toward), f32).astype(dtype)


def _fsum(values: list[float]) -> float:
    """math.fsum, with inf for an overflowing sum (the sums here are of non-negative
    terms) and NaN for inf - inf (rows with +inf logits, whose limit is set afterwards)."""
    try:
        return math.fsum(values)
    except OverflowError:
        return math.inf
    except ValueError:
        return math.nan


def _row_fsum(*parts: Array) -> Array:
    """The sums of the rows of ``parts`` (each N x something, or N), rounded once."""
    rows = np.concatenate([part.reshape(len(part), -1) for part in parts], axis=1)
    return np.array([_fsum(row) for row in rows.tolist()], dtype=np.float64)


def _two_diff(a: Array, b: Array) -> tuple[Array, Array]:
    """``(s, t)`` with ``s + t == a - b`` exactly (Knuth's TwoSum); ``t = 0`` where ``s`` is
    infinite."""
    s = a - b
    virtual = s - a
    t = (a - (s - virtual)) - (b + virtual)
    return s, np.where(np.isfinite(s), t, 0.0)


def _mul3(a: Array | float, b: Array, c: Array) -> Array:
    """``a b c`` without intermediate overflow or underflow (exponents added apart)."""
    (fa, ea), (fb, eb), (fc, ec) = np.frexp(a), np.frexp(b), np.frexp(c)
    return np.ldexp(fa * fb * fc, ea + eb + ec)


def _scaled_exp(w: Array, a: Array) -> Array:
    """``w exp(-a)`` for ``w, a >= 0``: beyond ``a = 700`` the factor ``exp(-700)`` goes into
    ``w`` first, so that a large ``w`` never multiplies an underflowed ``exp(-a)``."""
    return np.where(a > 700, (w * _EXP_M700) * np.exp(700 - a), w * np.exp(-a))


def _weighted_kernel(x: Array, z: Array, pos_weight: float) -> Array:
    a, up = np.abs(x), x >= 0
    d = np.where(up, (1 - z) * a, _mul3(pos_weight, z, a))
    d = np.where(np.where(up, z == 1, z == 0), 0.0, d)  # the limit at x = +-inf: 0 inf = 0
    w = pos_weight * z + (1 - z)
    # log1p(e) = e to the last bit once e = exp(-a) < exp(-700)
    return d + np.where(a > 700, _scaled_exp(w, a), w * np.log1p(np.exp(-a)))


def _weighted_grad_kernel(x: Array, z: Array, pos_weight: float) -> Array:
    a, qz = np.abs(x), pos_weight * z
    e, em1 = np.exp(-a), np.expm1(-a)
    # below |x| = 1, where e is near 1, take out c = (1 - z) - q z, the numerator at x = 0,
    # so that the cancellation happens in c, exactly, and not after e has been rounded
    c = (1 - z) - qz
    up = np.where(a < 1, c - qz * em1, (1 - z) - _scaled_exp(qz, a))
    down = np.where(a < 1, c + (1 - z) * em1, (1 - z) * e - qz)
    return np.where(x >= 0, up, down) / (1 + e)


def _softmax_kernel(x: Array, y: Array, *, grad: bool) -> Array:
    m = x.max(axis=1)  # NaN on a row holding a NaN
    j = np.argmax(x, axis=1)[:, None]
    shift = np.where(np.isfinite(m), m, 0.0)[:, None]
    d, lo = _two_diff(x, shift)
    e = np.exp(d)
    e_lo = e * lo  # exp(d + lo) = e (1 + lo) to the last bit
    np.put_along_axis(e, j, 0.0, axis=1)
    np.put_along_axis(e_lo, j, 0.0, axis=1)
    s, ysum = _row_fsum(e, e_lo), _row_fsum(y)
    top = x == np.inf
    several_top = top.sum(axis=1) > 1
    if grad:
        g = ysum[:, None] * ((e + e_lo) / (1 + s)[:, None]) - y
        rest = y.copy()
        np.put_along_axis(rest, j, 0.0, axis=1)
        # the argmax entry Y / (1 + S) - y_j, written as (Y - y_j) - Y S / (1 + S) when
        # S < 1, where p_j is near 1 and the first form would cancel
        gj = np.where(
            s < 1, _row_fsum(rest) - ysum * s / (1 + s), ysum / (1 + s) - pick(y, j[:, 0])
        )
        np.put_along_axis(g, j, gj[:, None], axis=1)
        # limits: p is 1 on a lone +inf logit and 0 below it; undefined on several +inf
        # logits or a row of -inf, which only matters if some label is positive
        p_lim = np.where(
            top,
            np.where(several_top, np.nan, 1.0)[:, None],
            np.where(m == -np.inf, np.nan, 0.0)[:, None],
        )
        g_lim = np.where(ysum[:, None] == 0, 0.0, ysum[:, None] * p_lim - y)
        g = np.where(np.isinf(m)[:, None], g_lim, g)
        return np.where(np.isnan(m)[:, None], np.nan, g)
    overflow = np.isinf(d) & np.isfinite(x)  # m - x_i beyond the largest float: y m - y x_i
    terms = _unless_zero(y, y * np.where(overflow, shift, -d))
    terms_lo = _unless_zero(y, y * np.where(overflow, -x, -lo))
    loss = _row_fsum(terms, terms_lo, ysum * np.log1p(s))
    labelled = y > 0
    at_inf = np.where(
        (labelled & ~top).any(axis=1),
        np.inf,
        np.where((labelled & top).any(axis=1) & several_top, np.nan, 0.0),
    )
    loss = np.where(m == np.inf, at_inf, loss)
    loss = np.where(m == -np.inf, np.where(ysum == 0, 0.0, np.nan), loss)
    return np.where(np.isnan(m), np.nan, loss)


def _binary_kernel(p: Array, z: Array) -> Array:
    return _unless_zero(z, -z * np.log(p)) + _unless_zero(1 - z, -(1 - z) * np.log1p(-p))


def _binary_grad_kernel(p: Array, z: Array) -> Array:
    g = (p - z) / (p * (1 - p))
    g = np.where(p == 0, np.where(z == 0, 1.0, -np.inf), g)
    return np.where(p == 1, np.where(z == 1, -1.0, np.inf), g)


def _categorical_kernel(p: Array, y: Array) -> Array:
    loss = _row_fsum(_unless_zero(y, -y * np.log(p)))
    return np.where(np.isnan(p).any(axis=1), np.nan, loss)


def _categorical_grad_kernel(p: Array, y: Array) -> Array:
    return np.where(np.isnan(p).any(axis=1, keepdims=True), np.nan, _unless_zero(y, -y / p))


@_in_float64
def accurate_weighted(x: Array, z: Array, pos_weight: float) -> Array:
    return _weighted_kernel(x, z, pos_weight)


@_in_float64
def accurate_weighted_grad(x: Array, z: Array, pos_weight: float) -> Array:
    return _weighted_grad_kernel(x, z, pos_weight)


@_in_float64
def accurate_sigmoid(x: Array, z: Array) -> Array:
    return _weighted_kernel(x, z, 1.0)


@_in_float64
def accurate_sigmoid_grad(x: Array, z: Array) -> Array:
    return _weighted_grad_kernel(x, z, 1.0)


@_in_float64
def accurate_softmax(x: Array, y: Array) -> Array:
    return _softmax_kernel(x, y, grad=False)


@_in_float64
def accurate_softmax_grad(x: Array, y: Array) -> Array:
    return _softmax_kernel(x, y, grad=True)


@_in_float64
def accurate_sparse_softmax(x: Array, k: Array) -> Array:
    return _softmax_kernel(x, _one_hot(k, x), grad=False)


@_in_float64
def accurate_sparse_softmax_grad(x: Array, k: Array) -> Array:
    return _softmax_kernel(x, _one_hot(k, x), grad=True)


@_in_float64
def accurate_binary(p: Array, z: Array) -> Array:
    return _binary_kernel(p, z)


@_in_float64
def accurate_binary_grad(p: Array, z: Array) -> Array:
    return _binary_grad_kernel(p, z)


@_in_float64
def accurate_categorical(p: Array, y: Array) -> Array:
    return _categorical_kernel(p, y)


@_in_float64
def accurate_categorical_grad(p: Array, y: Array) -> Array:
    return _categorical_grad_kernel(p, y)


@_in_float64
def accurate_sparse_categorical(p: Array, k: Array) -> Array:
    return _categorical_kernel(p, _one_hot(k, p))


@_in_float64
def accurate_sparse_categorical_grad(p: Array, k: Array) -> Array:
    return _categorical_grad_kernel(p, _one_hot(k, p))


# -- registration --------------------------------------------------------------------------

_FAMILIES: dict[str, tuple[str, dict[str, tuple[Fn, Fn]]]] = {
    "naive": (
        "the formula as written, in the input dtype; fails on extreme inputs by design",
        {
            "binary_crossentropy": (naive_binary, naive_binary_grad),
            "categorical_crossentropy": (naive_categorical, naive_categorical_grad),
            "sparse_categorical_crossentropy": (sparse_categorical, sparse_categorical_grad),
            "sigmoid_cross_entropy_with_logits": (naive_sigmoid, naive_sigmoid_grad),
            "weighted_cross_entropy_with_logits": (naive_weighted, naive_weighted_grad),
            "softmax_cross_entropy_with_logits": (naive_softmax, naive_softmax_grad),
            "sparse_softmax_cross_entropy_with_logits": (
                naive_sparse_softmax,
                naive_sparse_softmax_grad,
            ),
        },
    ),
    "stable": (
        "the stable forms TensorFlow documents, in the input dtype",
        {
            "binary_crossentropy": (stable_binary, stable_binary_grad),
            "categorical_crossentropy": (stable_categorical, stable_categorical_grad),
            "sparse_categorical_crossentropy": (sparse_categorical, sparse_categorical_grad),
            "sigmoid_cross_entropy_with_logits": (stable_sigmoid, stable_sigmoid_grad),
            "weighted_cross_entropy_with_logits": (stable_weighted, stable_weighted_grad),
            "softmax_cross_entropy_with_logits": (stable_softmax, stable_softmax_grad),
            "sparse_softmax_cross_entropy_with_logits": (
                stable_sparse_softmax,
                stable_sparse_softmax_grad,
            ),
        },
    ),
    "accurate": (
        "float64 sums of non-negative terms rounded once: a few ULPs in every format",
        {
            "binary_crossentropy": (accurate_binary, accurate_binary_grad),
            "categorical_crossentropy": (accurate_categorical, accurate_categorical_grad),
            "sparse_categorical_crossentropy": (
                accurate_sparse_categorical,
                accurate_sparse_categorical_grad,
            ),
            "sigmoid_cross_entropy_with_logits": (accurate_sigmoid, accurate_sigmoid_grad),
            "weighted_cross_entropy_with_logits": (accurate_weighted, accurate_weighted_grad),
            "softmax_cross_entropy_with_logits": (accurate_softmax, accurate_softmax_grad),
            "sparse_softmax_cross_entropy_with_logits": (
                accurate_sparse_softmax,
                accurate_sparse_softmax_grad,
            ),
        },
    ),
}

for _name, (_description, _table) in _FAMILIES.items():
    for _loss, (_fn, _grad) in _table.items():
        register(Implementation(_name, _loss, _fn, grad=_grad, description=_description))
