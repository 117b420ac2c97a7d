"""Reference numpy implementations of every loss and option of the catalogue, in three
families.

Notation as in ``stabcheck.losses``: ``x`` logits, ``p`` probabilities, ``z`` binary or soft
targets, ``y`` a row of soft labels, ``k`` an integer label, ``q`` the ``pos_weight``, ``C``
the number of classes, ``e`` the label smoothing, ``w`` the class weights, ``s`` the z-loss
scale, ``c`` the softcap; ``m = max_i x_i`` at the first index ``j``.

Each family registers a ``Reference`` for every loss: ``fn(predictions, labels, **options)``
takes the loss's options by their catalogue names and defaults, and with ``grad=True`` it
returns d(sum of outputs)/d(predictions) (the gradient of the reduced loss when reduced).
The options are applied the same way in every family, around a per-row (or elementwise)
kernel, as the oracle defines them:

- targets ``w_i ((1 - e) y_i + e / C)`` for rows (sparse labels one-hot), ``(1 - e) z + e/2``
  for elements; the z-loss ``s lse(x)^2`` and the softcap ``c tanh(x / c)`` (a -inf logit
  stays -inf, with gradient 0) inside the softmax kernels;
- a row whose label is ``ignore_index`` gives 0 and a zero gradient, whatever its logits
  hold (``np.where``, never a product with a mask);
- ``sum``; ``mean`` over PyTorch's denominator (the sum of ``w_k`` over the rows kept for
  integer labels, N rows for soft labels, the number of elements for elementwise losses;
  x/0 as IEEE has it: 0/0 = NaN); ``sum_over_batch_size`` over Keras' (the rows kept, or
  the elements; 0 when that is 0); the gradient is divided by the same denominator.

``naive``: the formulas as written, in the input dtype, nothing clipped.
``s = 1 / (1 + exp(-x))``, ``-(q z log s + (1 - z) log(1 - s))``; ``p = exp(x) / sum exp(x)``,
``-sum_i y_i log p_i`` (``-log p_k`` for integer labels); ``-(z log p + (1 - z) log(1 - p))``;
label smoothing as PyTorch writes it, ``(1 - e) L(y) + (e / C) sum_i w_i (-log p_i)``;
``lse = log(sum exp(x))``; the focal loss ``a_t (1 - p_t)^gamma CE`` with
``p_t = p z + (1 - p)(1 - z)``; reductions summed, then divided. Gradients the textbook way:
``(1 - z) s - q z (1 - s)``, ``(Y + 2 s lse) p - t`` (times ``1 - tanh(x / c)^2`` under a
softcap), ``-z/p + (1 - z)/(1 - p)``, ``-t/p``. It overflows, underflows and returns NaN on
extreme inputs: that is what it is for.

``stable``: the stable forms TensorFlow documents, in the input dtype.
``max(x, 0) - x z + log(1 + exp(-|x|))``; ``(1 - z) x + l (log(1 + exp(-|x|)) + max(-x, 0))``
with ``l = 1 + (q - 1) z``; ``sum_i t_i (log(sum_i exp(x_i - m)) - (x_i - m))`` on the
effective targets ``t``; the probability losses as written with ``0 log 0 = 0``; the focal
loss with ``1 - p_t = z sigmoid(-x) + (1 - z) sigmoid(x)`` (torchvision's ``1 - p_t`` cancels);
``sech^2 = 4 e / (1 + e)^2``, ``e = exp(-2|x / c|)``; reductions divided, then summed. No NaN
on finite inputs with a finite loss.

``accurate``: a few ULPs from the correctly rounded loss, in every format, every option.
Computed in float64 (float64 inputs: in numpy's ``longdouble`` where it is wider, x87
extended on x86-64 and binary128 on aarch64 Linux, so that 11 or more guard bits remain and
no product of float64 values overflows or underflows; where it is not, as on Windows and
Apple silicon, in float64 and a few ULPs off at the extremes of the options), each loss a
sum of non-negative terms so that nothing cancels, and rounded once to the input dtype
(bfloat16 through float32 rounded to odd, so never twice; only a float64 result that ties a
halfway point of a narrower format can still land one ULP off):

- sigmoid and weighted: ``D + (q z + 1 - z) log1p(exp(-|x|))`` with ``D = (1 - z) x`` for
  ``x >= 0`` and ``D = -q z x`` for ``x < 0`` (``q = 1`` for sigmoid); smoothed targets as
  the pair ``(1 - e) z + e/2`` and ``(1 - e)(1 - z) + e/2``, neither taken from the other;
- softmax: ``sum_i t_i (m - x_i) + Y log1p(S) + s lse^2``, ``S = sum_{i != j} exp(x_i - m)``,
  ``lse = m + log1p(S)``, ``Y = sum_i t_i``, where ``x_i - m`` is split exactly into two
  floats and rows are summed with ``math.fsum``; softcapped logits as exact pairs:
  ``c tanh(x / c)`` below ``|x| = c``, beyond it ``sign(x) c`` plus ``-sign(x) r`` with
  ``r = 2 c E / (1 + E)``, ``E = exp(-2|x / c|)``, so that the gap between two saturated
  logits is ``r_i - r_j``, as accurate as the r's;
- binary: ``-z log p - (1 - z) log1p(-p)``; categorical: ``-sum_{t_i > 0} t_i log p_i``;
- focal: ``a_t f^gamma CE`` with ``f = z P' + (1 - z) P``, ``P = sigmoid(x)`` and
  ``P' = sigmoid(-x)`` each from ``E = exp(-|x|)``;
- reductions: ``math.fsum`` of the values (in ``longdouble``, numpy's pairwise sum), divided
  once.

Its conventions are the oracle's: ``0 log 0 = 0`` (a zero label contributes nothing, even
under ``p = 0`` or a ``-inf`` logit, and a ``-inf`` logit under a zero label gets gradient 0);
infinite logits are limits where the limit exists: with ``+inf`` logits the loss is ``+inf``
if a positive label sits below them (every term is >= 0), else 0 for a lone ``+inf`` logit and
NaN for several with a positive label on one (with a z-loss: ``+inf``, and ``+inf`` gradients
on the ``+inf`` classes); a row of ``-inf`` logits is NaN unless all its labels are 0 and
there is no z-loss. A NaN input gives NaN (the whole row for rowwise losses). The gradients
take the same care: ``((1 - z) - q z E) / (1 + E)`` for ``x >= 0`` and
``((1 - z) E - q z) / (1 + E)`` for ``x < 0``, with ``E = exp(-|x|)`` and, below ``|x| = 1``,
``(1 - z) - q z`` taken out exactly and ``E - 1`` from ``expm1``; softmax ``B p_i - t_i``
with ``B = Y + 2 s lse`` as ``((Y E_i - t_i (1 + S)) + 2 s lse E_i) / (1 + S)`` (exact where
``E_i = exp(x_i - m)`` and ``S`` are, at tied logits) and the argmax entry as
``(sum_{i != j} t_i + 2 s lse - t_j S) / (1 + S)`` (no cancellation where ``p_j`` is near
1), times ``sech^2(x / c)`` under a softcap; binary ``(p - z) / (p (1 - p))``; focal
``a_t f^gamma ((P - z) + gamma CE (1 - 2z) P P' / f)`` with ``P - z`` as the sigmoid's
gradient above; gradients are limits too (``Y p_i - y_i`` with
``p`` the limit of the softmax, NaN where it has none and some label is positive; focal
``a_t (1 - z)^(gamma + 1)`` at ``+inf`` and ``-a_t z^(gamma + 1)`` at ``-inf``).
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from stabcheck.implementations import Implementation, register
from stabcheck.losses import LOSSES, PARAMS, LabelKind, LossSpec, get_loss

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


def pick(a: Array, k: Array) -> Array:
    """Row i's entry k[i] of a 2-D array."""
    return np.take_along_axis(a, k[:, None], axis=-1)[:, 0]


def _one_hot(k: Array, classes: int, dtype: np.dtype) -> Array:
    return (np.arange(classes) == k[:, None]).astype(dtype)


def _unless_zero(w: Array, value: Array) -> Array:
    """``value`` where ``w != 0``, else 0: a zero label's term is 0, even where its formula
    gives an infinity or NaN (0 log 0 = 0)."""
    return np.where(w == 0, np.zeros_like(value), value)


# -- options ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    """The options of one call (``stabcheck.losses.PARAMS``), defaults filled in, and
    whether the labels are integers (``sparse``)."""

    sparse: bool
    pos_weight: float
    label_smoothing: float
    weight: Array | None
    ignore_index: int | None
    z_loss: float
    softcap: float | None
    alpha: float | None
    gamma: float
    reduction: str


def _options(spec: LossSpec, given: dict[str, Any]) -> Options:
    """``given`` checked against the options ``spec`` takes, the catalogue's defaults added
    (``pos_weight`` 1 for the losses without it)."""
    unknown = sorted(set(given) - set(spec.params))
    if unknown:
        raise TypeError(f"{spec.name} got an unexpected keyword argument {unknown[0]!r}")
    missing = [p.name for p in spec.param_specs if p.required and p.name not in given]
    if missing:
        raise TypeError(f"{spec.name} is missing the keyword argument {missing[0]!r}")
    values = {p.name: p.default for p in PARAMS} | {"pos_weight": 1.0} | given
    return Options(sparse=spec.labels is LabelKind.SPARSE, **values)


def _targets(labels: Array, o: Options, classes: int, dtype: np.dtype,
             times_classes: bool = False) -> Array:  # fmt: skip
    """Each row's effective targets ``w_i ((1 - e) y_i + e / C)`` in ``dtype``; with
    ``times_classes``, C times them: ``w_i (C (1 - e) y_i + e)``, exact for one-hot labels."""
    dtype = np.dtype(dtype)
    y = _one_hot(labels, classes, dtype) if o.sparse else labels.astype(dtype)
    e, c = dtype.type(o.label_smoothing), dtype.type(classes)
    if times_classes:
        y = (1 - e) * c * y + e
    elif e:
        y = (1 - e) * y + e / c
    return y if o.weight is None else o.weight.astype(dtype) * y


def _smoothed(z: Array, o: Options) -> Array:
    """Binary targets smoothed towards 1/2, ``(1 - e) z + e / 2``, in their dtype."""
    e = z.dtype.type(o.label_smoothing)
    return (1 - e) * z + e / 2 if e else z


def _cap(x: Array, c: float | None) -> Array:
    """``c tanh(x / c)`` with -inf kept (a masked lane); ``x`` itself without a cap."""
    if c is None:
        return x
    c = x.dtype.type(c)
    return np.where(x == -np.inf, x, c * np.tanh(x / c))


# -- naive -----------------------------------------------------------------------------------


def _naive_sigmoid(x: Array) -> Array:
    return 1 / (1 + np.exp(-x))


def _naive_softmax(x: Array) -> Array:
    e = np.exp(x)
    return e / e.sum(axis=-1, keepdims=True)


def _naive_weighted(x: Array, z: Array, pos_weight: float) -> Array:
    q, s = x.dtype.type(pos_weight), _naive_sigmoid(x)
    return -(q * z * np.log(s) + (1 - z) * np.log(1 - s))


def _naive_weighted_grad(x: Array, z: Array, pos_weight: float) -> Array:
    q, s = x.dtype.type(pos_weight), _naive_sigmoid(x)
    return (1 - z) * s - q * z * (1 - s)


def _naive_binary(p: Array, z: Array) -> Array:
    return -(z * np.log(p) + (1 - z) * np.log(1 - p))


def _naive_binary_grad(p: Array, z: Array) -> Array:
    return -z / p + (1 - z) / (1 - p)


def _naive_cross_entropy(log_p: Array, labels: Array, o: Options) -> Array:
    """``(1 - e) L(y) + (e / C) sum_i w_i (-log p_i)`` with ``L(y) = -w_k log p_k`` (integer
    labels) or ``-sum_i w_i y_i log p_i``: PyTorch's arrangement of label smoothing."""
    dt, classes = log_p.dtype.type, log_p.shape[-1]
    w = np.ones(classes, log_p.dtype) if o.weight is None else o.weight.astype(log_p.dtype)
    if o.sparse:
        loss = -pick(log_p, labels) * w[labels]
    else:
        loss = -(w * labels * log_p).sum(axis=-1)
    e = dt(o.label_smoothing)
    if e:
        loss = (1 - e) * loss + e / dt(classes) * -(w * log_p).sum(axis=-1)
    return loss


def _naive_log_sum_exp(x: Array) -> Array:
    return np.log(np.exp(x).sum(axis=-1))


def _naive_softmax_rows(x: Array, labels: Array, o: Options) -> Array:
    u = _cap(x, o.softcap)
    loss = _naive_cross_entropy(np.log(_naive_softmax(u)), labels, o)
    if o.z_loss:
        loss = loss + x.dtype.type(o.z_loss) * _naive_log_sum_exp(u) ** 2
    return loss


def _naive_softmax_rows_grad(x: Array, labels: Array, o: Options) -> Array:
    u = _cap(x, o.softcap)
    t = _targets(labels, o, x.shape[-1], x.dtype)
    b = t.sum(axis=-1)
    if o.z_loss:
        b = b + 2 * x.dtype.type(o.z_loss) * _naive_log_sum_exp(u)
    g = _naive_softmax(u) * b[:, None] - t
    if o.softcap is None:
        return g
    return g * (1 - np.tanh(x / x.dtype.type(o.softcap)) ** 2)


def _naive_categorical_rows(p: Array, labels: Array, o: Options) -> Array:
    return _naive_cross_entropy(np.log(p), labels, o)


def _naive_categorical_rows_grad(p: Array, labels: Array, o: Options) -> Array:
    dt, classes = p.dtype.type, p.shape[-1]
    w = np.ones(classes, p.dtype) if o.weight is None else o.weight.astype(p.dtype)
    if o.sparse:
        g = np.where(_one_hot(labels, classes, bool), -(w[labels] / pick(p, labels))[:, None],
                     np.zeros_like(p))  # fmt: skip
    else:
        g = -(w * labels) / p
    e = dt(o.label_smoothing)
    return (1 - e) * g + e / dt(classes) * (-w / p) if e else g


def _naive_focal(x: Array, z: Array, o: Options, grad: bool = False) -> Array:
    p = _naive_sigmoid(x)
    ce = -(z * np.log(p) + (1 - z) * np.log(1 - p))
    f = 1 - (p * z + (1 - p) * (1 - z))
    scale = _alpha_t(z, o.alpha) * f ** x.dtype.type(o.gamma)
    if not grad:
        return scale * ce
    return scale * ((p - z) + x.dtype.type(o.gamma) * ce * (1 - 2 * z) * p * (1 - p) / f)


def _alpha_t(z: Array, alpha: float | None) -> Array | float:
    """``alpha z + (1 - alpha)(1 - z)``, or 1 without alpha."""
    if alpha is None:
        return 1.0
    a = z.dtype.type(alpha)
    return a * z + (1 - a) * (1 - z)


# -- stable ----------------------------------------------------------------------------------


def _stable_sigmoid(x: Array) -> Array:
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


def _stable_log_softmax(x: Array) -> Array:
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _stable_log_sum_exp(x: Array) -> Array:
    m = x.max(axis=-1, keepdims=True)
    return m + np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def _stable_softmax(x: Array) -> Array:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _stable_sech2(a: Array) -> Array:
    """``sech(a)^2 = 4 e / (1 + e)^2`` with ``e = exp(-2|a|)``: 0 at infinite ``a``."""
    e = np.exp(-2 * np.abs(a))
    return 4 * e / (1 + e) ** 2


def _stable_sigmoid_ce(x: Array, z: Array) -> Array:
    return np.maximum(x, 0) - x * z + np.log(1 + np.exp(-np.abs(x)))


def _stable_weighted(x: Array, z: Array, pos_weight: float) -> Array:
    l = 1 + (x.dtype.type(pos_weight) - 1) * z  # noqa: E741 (TensorFlow's name)
    return (1 - z) * x + l * (np.log(1 + np.exp(-np.abs(x))) + np.maximum(-x, 0))


def _stable_weighted_grad(x: Array, z: Array, pos_weight: float) -> Array:
    q = x.dtype.type(pos_weight)
    return (1 - z) * _stable_sigmoid(x) - q * z * _stable_sigmoid(-x)


def _stable_binary(p: Array, z: Array) -> Array:
    return -(_unless_zero(z, z * np.log(p)) + _unless_zero(1 - z, (1 - z) * np.log1p(-p)))


def _stable_binary_grad(p: Array, z: Array) -> Array:
    return _unless_zero(z, -z / p) + _unless_zero(1 - z, (1 - z) / (1 - p))


def _stable_softmax_rows(x: Array, labels: Array, o: Options) -> Array:
    u = _cap(x, o.softcap)
    t = _targets(labels, o, x.shape[-1], x.dtype)
    loss = _unless_zero(t, t * -_stable_log_softmax(u)).sum(axis=-1)
    if o.z_loss:
        loss = loss + x.dtype.type(o.z_loss) * _stable_log_sum_exp(u)[:, 0] ** 2
    return loss


def _stable_softmax_rows_grad(x: Array, labels: Array, o: Options) -> Array:
    u = _cap(x, o.softcap)
    t = _targets(labels, o, x.shape[-1], x.dtype)
    b = t.sum(axis=-1, keepdims=True)
    if o.z_loss:
        b = b + 2 * x.dtype.type(o.z_loss) * _stable_log_sum_exp(u)
    g = _stable_softmax(u) * b - t
    return g if o.softcap is None else g * _stable_sech2(x / x.dtype.type(o.softcap))


def _stable_categorical_rows(p: Array, labels: Array, o: Options) -> Array:
    t = _targets(labels, o, p.shape[-1], p.dtype)
    return -_unless_zero(t, t * np.log(p)).sum(axis=-1)


def _stable_categorical_rows_grad(p: Array, labels: Array, o: Options) -> Array:
    t = _targets(labels, o, p.shape[-1], p.dtype)
    return _unless_zero(t, -t / p)


def _stable_focal(x: Array, z: Array, o: Options, grad: bool = False) -> Array:
    p, p_neg = _stable_sigmoid(x), _stable_sigmoid(-x)
    ce = _stable_sigmoid_ce(x, z)
    f = z * p_neg + (1 - z) * p  # 1 - p_t, without cancellation
    scale = _alpha_t(z, o.alpha) * f ** x.dtype.type(o.gamma)
    if not grad:
        return scale * ce
    share = 1 / (_unless_zero(z, z / p) + _unless_zero(1 - z, (1 - z) / p_neg))  # p (1 - p) / f
    return scale * ((p - z) + x.dtype.type(o.gamma) * (ce * share) * (1 - 2 * z))


# -- accurate --------------------------------------------------------------------------------


# float64 inputs are computed in x87 extended (x86-64) or binary128 (aarch64) precision where
# numpy has it: 11 or more guard bits, and no overflow or underflow of float64 products
_WIDE = np.longdouble if np.finfo(np.longdouble).nmant > 52 else np.float64


def _round(values: Array, dtype: np.dtype) -> Array:
    """float64 (or ``_WIDE``) ``values`` rounded once to ``dtype``. bfloat16 goes through
    float32 rounded to odd, which the second rounding cannot spoil (a direct cast rounds
    twice)."""
    values = np.asarray(values)
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


def _sum_rows(rows: Array) -> Array:
    """The sums of the rows of a 2-D array: math.fsum (rounded once) in float64; in the
    wider ``_WIDE``, numpy's pairwise sum, whose error is far below float64's last bit."""
    if rows.dtype != np.float64:
        return rows.sum(axis=1)
    return np.array([_fsum(row) for row in rows.tolist()], dtype=np.float64)


def _row_fsum(*parts: Array) -> Array:
    """The sums of the rows of ``parts`` (each N x something, or N)."""
    return _sum_rows(np.concatenate([part.reshape(len(part), -1) for part in parts], axis=1))


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
    m700 = _EXP_M700 if a.dtype == np.float64 else np.exp(a.dtype.type(-700))
    return np.where(a > 700, (w * m700) * np.exp(700 - a), w * np.exp(-a))


def _weighted_kernel(x: Array, z: Array, pos_weight: float, zc: Array | None = None) -> Array:
    """The weighted (q = 1: sigmoid) loss with ``zc = 1 - z`` (given apart when smoothed)."""
    zc = 1 - z if zc is None else zc
    a, up = np.abs(x), x >= 0
    d = np.where(up, zc * a, _mul3(pos_weight, z, a))
    d = np.where(np.where(up, zc == 0, z == 0), 0.0, d)  # the limit at x = +-inf: 0 inf = 0
    w = pos_weight * z + zc
    # log1p(e) = e to the last bit once e = exp(-a) < exp(-700)
    return d + np.where(a > 700, _scaled_exp(w, a), w * np.log1p(np.exp(-a)))


def _weighted_grad_kernel(x: Array, z: Array, pos_weight: float,
                          zc: Array | None = None) -> Array:  # fmt: skip
    zc = 1 - z if zc is None else zc
    a, qz = np.abs(x), pos_weight * z
    e, em1 = np.exp(-a), np.expm1(-a)
    # below |x| = 1, where e is near 1, take out c = (1 - z) - q z, the numerator at x = 0,
    # so that the cancellation happens in c, exactly, and not after e has been rounded
    c = zc - qz
    up = np.where(a < 1, c - qz * em1, zc - _scaled_exp(qz, a))
    down = np.where(a < 1, c + zc * em1, zc * e - qz)
    return np.where(x >= 0, up, down) / (1 + e)


def _capped(x: Array, c: float) -> tuple[Array, Array]:
    """``c tanh(x / c)`` as a pair ``hi + lo``: ``c tanh(a)`` below ``|a| = 1`` (``a = x / c``),
    beyond it ``sign(a) c - sign(a) r`` with ``r = c (1 - tanh|a|) = 2 c E / (1 + E)``,
    ``E = exp(-2|a|)``, accurate however near 1 ``tanh|a|`` is; -inf stays -inf."""
    a = x / c
    E = np.exp(-2 * np.abs(a))
    r = c * (2 * E / (1 + E))
    big = np.abs(a) >= 1
    sign = np.sign(a)
    hi = np.where(big, sign * c, c * np.tanh(a))
    lo = np.where(big & (x != -np.inf), -sign * r, 0.0)
    return np.where(x == -np.inf, x, hi), lo


def _softmax_kernel(x: Array, y: Array, *, grad: bool, z_loss: float = 0.0,
                    capped: tuple[Array, Array] | None = None) -> Array:  # fmt: skip
    """The softmax loss (or its gradient with respect to the logits) of rows ``x`` with
    targets ``y`` and z-loss scale ``z_loss``; with ``capped``, the logits are the pairs
    ``hi + lo`` (``_capped``), ordered as ``x``."""
    hi, lo = (x, np.zeros_like(x)) if capped is None else capped
    j = np.argmax(x, axis=1)[:, None]  # a NaN's index on a row holding a NaN
    m = pick(hi, j[:, 0])
    shift = np.where(np.isfinite(m), m, 0.0)[:, None]
    d, t = _two_diff(hi, shift)
    if capped is not None:  # x_i - m = d + t + (lo_i - lo_j), renormalised into d + t
        d, t = _two_diff(d, -(t + (lo - pick(lo, j[:, 0])[:, None])))
    e = np.exp(d)
    e_lo = e * t  # exp(d + t) = e (1 + t) to the last bit
    np.put_along_axis(e, j, 0.0, axis=1)
    np.put_along_axis(e_lo, j, 0.0, axis=1)
    s, ysum = _row_fsum(e, e_lo), _row_fsum(y)
    lse = _row_fsum(shift, pick(lo, j[:, 0]), np.log1p(s))
    top = hi == np.inf
    several_top = top.sum(axis=1) > 1
    if grad:
        slope = 2 * z_loss * lse  # d(s lse^2)/d lse
        # B p_i - t_i with B = Y + slope, as a numerator over 1 + S, exact where E_i and S
        # are (tied logits): (Y E_i - t_i (1 + S)) + slope E_i, and at the argmax (E_j = 1,
        # p_j near 1 when S is small) sum_{i != j} t_i + slope - t_j S
        ei = e + e_lo
        num = (ysum[:, None] * ei - y * (1 + s)[:, None]) + slope[:, None] * ei
        rest = y.copy()
        np.put_along_axis(rest, j, 0.0, axis=1)
        num_j = _row_fsum(rest, slope, -pick(y, j[:, 0]) * s)
        np.put_along_axis(num, j, num_j[:, None], axis=1)
        g = num / (1 + s)[:, None]
        # limits: p is 1 on a lone +inf logit and 0 below it; undefined on several +inf
        # logits or a row of -inf, which only matters if some label is positive or there
        # is a z-loss; with a z-loss, lse = +inf and so are the +inf classes' slopes
        p_lim = np.where(
            top,
            np.where(several_top, np.nan, 1.0)[:, None],
            np.where(m == -np.inf, np.nan, 0.0)[:, None],
        )
        g_lim = np.where((ysum[:, None] == 0) & (z_loss == 0), 0.0, ysum[:, None] * p_lim - y)
        if z_loss:
            g_lim = np.where((m == np.inf)[:, None], np.where(top, np.inf, -y), g_lim)
        g = np.where(np.isinf(m)[:, None], g_lim, g)
        return np.where(np.isnan(m)[:, None], np.nan, g)
    overflow = np.isinf(d) & np.isfinite(hi)  # m - x_i beyond the largest float: y m - y x_i
    terms = _unless_zero(y, y * np.where(overflow, shift, -d))
    terms_lo = _unless_zero(y, y * np.where(overflow, -hi, -t))
    loss = _row_fsum(terms, terms_lo, ysum * np.log1p(s))
    if z_loss:
        loss = loss + _mul3(z_loss, lse, lse)
    labelled = y > 0
    at_inf = np.where(
        (labelled & ~top).any(axis=1),
        np.inf,
        np.where((labelled & top).any(axis=1) & several_top & (z_loss == 0), np.nan, 0.0),
    )
    loss = np.where(m == np.inf, np.where(z_loss == 0, at_inf, np.inf), loss)
    empty = (ysum == 0) & (z_loss == 0)
    loss = np.where(m == -np.inf, np.where(empty, 0.0, np.nan), loss)
    return np.where(np.isnan(m), np.nan, loss)


def _times_sech2(g: Array, a: Array) -> Array:
    """``g sech(a)^2 = g 4 E / (1 + E)^2``, ``E = exp(-2|a|)``, without underflowing before
    the product: 0 at infinite ``a`` (unless ``g`` is NaN)."""
    b = 2 * np.abs(a)
    E = np.exp(-b)
    return np.sign(g) * _scaled_exp(np.abs(g) * 4 / (1 + E) ** 2, b)


def _binary_kernel(p: Array, z: Array, zc: Array | None = None) -> Array:
    zc = 1 - z if zc is None else zc
    return _unless_zero(z, -z * np.log(p)) + _unless_zero(zc, -zc * np.log1p(-p))


def _binary_grad_kernel(p: Array, z: Array, zc: Array | None = None) -> Array:
    zc = 1 - z if zc is None else zc
    g = (p - z) / (p * (1 - p))
    g = np.where(p == 0, np.where(z == 0, zc, -np.inf), g)
    return np.where(p == 1, np.where(zc == 0, -z, np.inf), g)


def _categorical_kernel(p: Array, y: Array) -> Array:
    loss = _row_fsum(_unless_zero(y, -y * np.log(p)))
    return np.where(np.isnan(p).any(axis=1), np.nan, loss)


def _categorical_grad_kernel(p: Array, y: Array) -> Array:
    return np.where(np.isnan(p).any(axis=1, keepdims=True), np.nan, _unless_zero(y, -y / p))


def _focal_kernel(x: Array, z: Array, o: Options, grad: bool = False) -> Array:
    g, at = x.dtype.type(o.gamma), _alpha_t(z, o.alpha)
    E = np.exp(-np.abs(x))
    small, large = E / (1 + E), 1 / (1 + E)
    up = x >= 0
    p, p_neg = np.where(up, large, small), np.where(up, small, large)
    f = z * p_neg + (1 - z) * p  # 1 - p_t, a sum of non-negative terms
    ce = _weighted_kernel(x, z, 1.0)
    if not grad:
        out = at * f**g * ce
    else:
        share = np.where(f == 0, 0.0, p * p_neg / f)
        out = at * f**g * (_weighted_grad_kernel(x, z, 1.0) + g * (ce * share) * (1 - 2 * z))
        out = np.where(x == np.inf, at * (1 - z) ** (g + 1), out)
        out = np.where(x == -np.inf, -at * z ** (g + 1), out)
    out = _unless_zero(np.broadcast_to(at, out.shape), out)
    return np.where(np.isnan(x), np.nan, out)


def _accurate_softmax_rows(x: Array, labels: Array, o: Options, grad: bool = False) -> Array:
    # smoothed: C times the targets and the z-loss, exact for one-hot labels (smoothing 1 on
    # tied logits gives exact zeros), and the result over C: the loss is linear in them
    times = x.dtype.type(x.shape[-1] if o.label_smoothing else 1)
    y = _targets(labels, o, x.shape[-1], x.dtype, times_classes=times != 1)
    s = x.dtype.type(o.z_loss) * times
    capped = None if o.softcap is None else _capped(x, x.dtype.type(o.softcap))
    out = _softmax_kernel(x, y, grad=grad, z_loss=s, capped=capped) / times
    return _times_sech2(out, x / x.dtype.type(o.softcap)) if grad and capped else out


def _accurate_categorical_rows(p: Array, labels: Array, o: Options, grad: bool = False) -> Array:
    y = _targets(labels, o, p.shape[-1], p.dtype)
    return _categorical_grad_kernel(p, y) if grad else _categorical_kernel(p, y)


def _accurate_smoothed(z: Array, o: Options) -> tuple[Array, Array]:
    """``((1 - e) z + e/2, (1 - e)(1 - z) + e/2)``: each a sum of non-negative terms."""
    e = z.dtype.type(o.label_smoothing)
    return ((1 - e) * z + e / 2, (1 - e) * (1 - z) + e / 2) if e else (z, 1 - z)


def _accurate_sigmoid(x: Array, z: Array, o: Options, grad: bool = False) -> Array:
    z, zc = _accurate_smoothed(z, o)
    q = x.dtype.type(o.pos_weight)
    return (_weighted_grad_kernel if grad else _weighted_kernel)(x, z, q, zc)


def _accurate_binary(p: Array, z: Array, o: Options, grad: bool = False) -> Array:
    return (_binary_grad_kernel if grad else _binary_kernel)(p, *_accurate_smoothed(z, o))


# -- families --------------------------------------------------------------------------------

Unit = Callable[[Array, Array, Options], Array]


def _elementwise(kernel: Callable[..., Array], *, pos_weight: bool = False) -> Unit:
    """A unit from an elementwise kernel ``kernel(x, z[, q])`` on smoothed targets."""

    def unit(x: Array, z: Array, o: Options) -> Array:
        z = _smoothed(z, o)
        return kernel(x, z, o.pos_weight) if pos_weight else kernel(x, z)

    return unit


class _Family:
    """How a family computes: its units (``unit(x, labels, options)`` for the loss and for
    the gradient, by the oracle's formula name or, where a loss has its own, by the loss's
    name), in which dtype, and how it sums."""

    def __init__(self, name: str, description: str, units: dict[str, tuple[Unit, Unit]]):
        # the linear losses: the softmax units on the logits h W^T + b
        self.name, self.description = name, description
        self.units = {**units, "linear": units["softmax"]}

    def dtype(self, dtype: np.dtype) -> np.dtype:
        """The dtype it computes in."""
        return dtype

    def total(self, values: Array, axis: int | None = None) -> Any:
        return values.sum(axis=axis)

    def mean(self, values: Array, d: Any) -> Any:
        """The sum of ``values`` over ``d``: summed, then divided."""
        return self.total(values) / d

    def matmul(self, a: Array, b: Array) -> Array:
        """``a @ b`` in the dtype it computes in (ml_dtypes' bfloat16 gives float32)."""
        return (a @ b).astype(a.dtype, copy=False)

    def logits(self, h: Array, W: Array, b: Array | None) -> Array:
        """The linear losses' logits ``h W^T + b``."""
        x = self.matmul(h, W.T)
        return x if b is None else x + b

    def finish(self, out: Any, dtype: np.dtype) -> Array:
        """The result as an array of the input dtype."""
        return np.asarray(out).astype(dtype, copy=False)


class _Stable(_Family):
    def mean(self, values: Array, d: Any) -> Any:
        """Each value over ``d``, then summed: no partial sum overflows where the mean is
        finite."""
        return self.total(values / d) if d else self.total(values) / d


class _Accurate(_Family):
    def dtype(self, dtype: np.dtype) -> np.dtype:
        return np.dtype(_WIDE if dtype == np.float64 else np.float64)

    def total(self, values: Array, axis: int | None = None) -> Any:
        if axis is None:
            return _sum_rows(values.reshape(1, -1))[0]
        return _sum_rows(np.moveaxis(values, axis, -1).reshape(-1, values.shape[axis]))

    def matmul(self, a: Array, b: Array) -> Array:
        """Each entry a sum of products, summed with ``math.fsum`` (``_sum_rows``)."""
        products = a[:, :, None] * b[None, :, :]  # (n, k, m): small shapes only
        return _sum_rows(np.moveaxis(products, 1, -1).reshape(-1, a.shape[1])).reshape(
            a.shape[0], b.shape[1]
        )

    def logits(self, h: Array, W: Array, b: Array | None) -> Array:
        """``h W^T + b``, each logit summed exactly and rounded once (``math.fsum``)."""
        products = h[:, None, :] * W[None, :, :]  # exact in the wide dtype for narrow inputs
        if b is not None:
            products = np.concatenate([products, np.broadcast_to(b[None, :, None],
                                                                 (*products.shape[:2], 1))], -1)
        return _sum_rows(products.reshape(-1, products.shape[-1])).reshape(products.shape[:2])

    def finish(self, out: Any, dtype: np.dtype) -> Array:
        return _round(out, dtype)


def _both(unit: Callable[..., Array]) -> tuple[Unit, Unit]:
    """The loss and gradient units of ``unit(x, labels, options, grad=False)``."""
    return unit, functools.partial(unit, grad=True)


_NAIVE = _Family(
    "naive",
    "the formula as written, in the input dtype; fails on extreme inputs by design",
    {
        "binary": (_elementwise(_naive_binary), _elementwise(_naive_binary_grad)),
        "sigmoid": (
            _elementwise(_naive_weighted, pos_weight=True),
            _elementwise(_naive_weighted_grad, pos_weight=True),
        ),
        "focal": _both(_naive_focal),
        "categorical": (_naive_categorical_rows, _naive_categorical_rows_grad),
        "softmax": (_naive_softmax_rows, _naive_softmax_rows_grad),
    },
)
_STABLE = _Stable(
    "stable",
    "the stable forms TensorFlow documents, in the input dtype",
    {
        "binary": (_elementwise(_stable_binary), _elementwise(_stable_binary_grad)),
        "sigmoid": (
            _elementwise(_stable_weighted, pos_weight=True),
            _elementwise(_stable_weighted_grad, pos_weight=True),
        ),
        "sigmoid_cross_entropy_with_logits": (
            _elementwise(_stable_sigmoid_ce),
            _elementwise(lambda x, z: _stable_sigmoid(x) - z),
        ),
        "focal": _both(_stable_focal),
        "categorical": (_stable_categorical_rows, _stable_categorical_rows_grad),
        "softmax": (_stable_softmax_rows, _stable_softmax_rows_grad),
    },
)
_ACCURATE = _Accurate(
    "accurate",
    "float64 (float64 inputs: longdouble) sums of non-negative terms, rounded once: a few "
    "ULPs in every format",
    {
        "binary": _both(_accurate_binary),
        "sigmoid": _both(_accurate_sigmoid),
        "focal": _both(_focal_kernel),
        "categorical": _both(_accurate_categorical_rows),
        "softmax": _both(_accurate_softmax_rows),
    },
)

_FAMILIES: dict[str, _Family] = {f.name: f for f in (_NAIVE, _STABLE, _ACCURATE)}


@dataclass(frozen=True)
class Reference:
    """The implementation of ``loss`` by ``family``: ``fn(predictions, labels, **options)``
    with the loss's options (``stabcheck.losses.PARAMS``) as keyword arguments, returning
    the loss (with ``grad``: d(sum of outputs)/d(predictions)) as an array of the
    predictions' dtype, a 0-d one when reduced."""

    family: str
    loss: str
    grad: bool = False

    def __post_init__(self) -> None:
        spec = get_loss(self.loss)
        given = [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD)
                 for n in ("predictions", "labels")]  # fmt: skip
        operands = [
            inspect.Parameter(o.name, inspect.Parameter.KEYWORD_ONLY,
                              default=inspect.Parameter.empty if o.required else None)
            for o in spec.operand_specs
        ]  # fmt: skip
        options = [
            inspect.Parameter(p.name, inspect.Parameter.KEYWORD_ONLY,
                              default=inspect.Parameter.empty if p.required else p.default)
            for p in spec.param_specs
        ]  # fmt: skip
        object.__setattr__(self, "__signature__", inspect.Signature(given + operands + options))

    def __call__(self, predictions: Array, labels: Array, **options: Any) -> Any:
        spec, family = get_loss(self.loss), _FAMILIES[self.family]
        operands = {name: options.pop(name, None) for name in spec.operands}
        o = _options(spec, options)
        dtype = predictions.dtype
        x = predictions.astype(family.dtype(dtype), copy=False)
        if spec.operands:  # the linear losses: the softmax of h W^T + b
            h, W, b = x, *(None if a is None else np.asarray(a).astype(x.dtype, copy=False)
                           for a in operands.values())  # fmt: skip
            if W is None:
                raise TypeError(f"{spec.name} is missing the keyword argument 'linear_weight'")
            with np.errstate(all="ignore"):
                x = family.logits(h, W, b)
        if labels.dtype.kind not in "iu":
            labels = labels.astype(x.dtype, copy=False)
        kept = None
        if o.sparse and o.ignore_index is not None:
            kept = labels != o.ignore_index
            labels = np.where(kept, labels, 0)
        with np.errstate(all="ignore"):
            units = family.units.get(spec.name) or family.units[spec.oracle]
            out = units[self.grad](x, labels, o)
            if kept is not None:
                out = np.where(kept[:, None] if self.grad else kept, out, 0)
            if o.reduction != "none":
                out = self._reduce(family, out, spec, labels, kept, o, x.dtype)
                if kept is not None and self.grad:  # 0, even over a zero denominator
                    out = np.where(kept[:, None], out, 0)
            if spec.operands and self.grad:  # dL/dx = G to h, W and b by the chain rule
                if kept is not None:  # an ignored row's h (NaN, say) moves nothing
                    h = np.where(kept[:, None], h, 0)
                grads = {"predictions": family.matmul(out, W), "linear_weight":
                         family.matmul(out.T, h)}  # fmt: skip
                if b is not None:
                    grads["linear_bias"] = family.total(out, axis=0)
                return {k: family.finish(v, dtype) for k, v in grads.items()}
            return family.finish(out, dtype)

    def _reduce(self, family: _Family, out: Array, spec: LossSpec, labels: Array,
                kept: Array | None, o: Options, dtype: np.dtype) -> Any:  # fmt: skip
        """The reduced loss, or the gradient over the reduction's denominator."""
        kept = np.ones(len(labels), bool) if kept is None else kept
        no_nan = o.reduction == "sum_over_batch_size"
        if o.reduction == "sum":
            d: Any = 1
        elif not spec.rowwise:
            d = out.size
        elif no_nan or (o.sparse and o.weight is None):
            d = int(kept.sum())
        elif not o.sparse:
            d = len(kept)
        else:
            d = family.total(o.weight.astype(dtype)[labels[kept]])
        d = np.dtype(dtype).type(d)
        if no_nan and d == 0:
            return np.zeros_like(out) if self.grad else np.zeros((), dtype)
        return out / d if self.grad else family.mean(out, d)


def _register() -> None:
    for family in _FAMILIES.values():
        for spec in LOSSES:
            fn, grad = Reference(family.name, spec.name), Reference(family.name, spec.name, True)
            register(Implementation(family.name, spec.name, fn, grad=grad, params=spec.params,
                                    description=family.description))  # fmt: skip


_register()


def _plain(family: str, loss: str, name: str) -> Fn:
    """``family``'s unreduced ``loss`` as a plain function ``name(predictions, labels)``
    (``pos_weight`` too for the weighted loss) that declares no options, so that
    ``stabcheck.check`` draws none for it."""
    reference = Reference(family, loss)

    def plain(predictions: Array, labels: Array, **required: Any) -> Array:
        return reference(predictions, labels, **required)

    signature = reference.__signature__  # type: ignore[attr-defined]
    plain.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[p for p in signature.parameters.values() if p.default is p.empty]
    )
    plain.__name__ = plain.__qualname__ = name
    plain.__doc__ = f"{family}'s {loss}, unreduced, without options."
    return plain


def _plains(loss: str, short: str) -> tuple[Fn, ...]:
    """``_plain`` of ``loss`` for each family, named ``{family}_{short}``."""
    return tuple(_plain(family, loss, f"{family}_{short}") for family in _FAMILIES)


naive_binary, stable_binary, accurate_binary = _plains("binary_crossentropy", "binary")
naive_categorical, stable_categorical, accurate_categorical = _plains(
    "categorical_crossentropy", "categorical"
)
naive_sparse_categorical, stable_sparse_categorical, accurate_sparse_categorical = _plains(
    "sparse_categorical_crossentropy", "sparse_categorical"
)
naive_sigmoid, stable_sigmoid, accurate_sigmoid = _plains(
    "sigmoid_cross_entropy_with_logits", "sigmoid"
)
naive_weighted, stable_weighted, accurate_weighted = _plains(
    "weighted_cross_entropy_with_logits", "weighted"
)
naive_softmax, stable_softmax, accurate_softmax = _plains(
    "softmax_cross_entropy_with_logits", "softmax"
)
naive_sparse_softmax, stable_sparse_softmax, accurate_sparse_softmax = _plains(
    "sparse_softmax_cross_entropy_with_logits", "sparse_softmax"
)
naive_focal, stable_focal, accurate_focal = _plains("sigmoid_focal_loss", "focal")
