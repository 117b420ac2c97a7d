"""The linear losses as fused kernels compute them, in numpy: vocabulary-chunked with an
online softmax (Liger, Cut Cross-Entropy, torchtune), in three accumulation dtypes, and
vocabulary-parallel (Megatron), over two shard counts.

Notation as in ``stabcheck.losses``: hidden states ``h`` (N x D), classifier ``W`` (V x D),
bias ``b``, logits ``x = h W^T + b``, ``C = V`` classes, integer labels ``k`` or soft labels
``y``, smoothing ``e``, class weights ``w``, z-loss scale ``z``, softcap ``c``. Each kernel
computes in the compute dtype, float32 (float64 for float64 inputs: products and sums of every
logit in it, as a GPU matmul with float32 accumulation does), and returns the input dtype.
The targets are the catalogue's ``t_i = w_i ((1 - e) y_i + e / C)``, split for integer labels
into the hard part ``a = (1 - e) w_k`` at ``k`` and the spread part ``u_i = (e / C) w_i``; for
soft labels ``u = t`` and ``a = 0``.

``chunked(acc=A)``, A one of float32, bfloat16 (ml_dtypes), float16: one pass over the
classes in chunks ``c`` of ``CHUNK`` = 2 (so that the strategies' rows of 3 to 8 classes
cross chunk boundaries), each chunk's logits ``x_c = h W_c^T + b_c`` in the compute dtype
(under a softcap ``x_c = c tanh(x_c / c)``, as Liger and Gemma cap them; a ``-inf`` logit
stays ``-inf``), and per row three running accumulators stored in A (rounded to A after
every update; each update computed in the compute dtype from their stored values):

    m' = A(max(m, max_i x_ci)),   s' = A(s exp(m - m') + sum_i exp(x_ci - m')),
    r' = A(r + sum_i u_ci x_ci),

from ``m = -inf``, ``s = r = 0`` (``exp(m - m') = 1`` when ``m = m'``, and a ``-inf`` logit
adds 0); the target logit ``x_k`` is picked from its chunk, not accumulated. Then

    lse = m + log s,   loss = a (lse - x_k) + (U lse - r) + z lse^2,   U = sum_i u_i.

The gradient is a second pass over the chunks: ``G_c = (B exp(x_c - lse) - t_c) / d`` with
``B = a + U + 2 z lse`` and ``d`` the reduction's denominator (1 for none and sum), times
``1 - tanh(x_c / c)^2`` of the uncapped logits under a softcap, and

    dL/dh = A(dL/dh + G_c W_c) chunk after chunk,   dL/dW_c = G_c^T h,   dL/db_c = sum_n G_nc,

the last two in the compute dtype.

``vocab_parallel(k=K)``, K = 2 or 8, Megatron's ``vocab_parallel_cross_entropy`` behind a
vocabulary-parallel output layer, all in the compute dtype: ``W`` and ``b`` split into K
contiguous shards ``s`` of ``V // K`` or ``V // K + 1`` classes (``numpy.array_split``; empty
when ``V < K``), each shard's logits ``x_s``, then the all-reduces, summed in shard order:

    M = max_s max_i x_si,   S = sum_s sum_i exp(x_si - M),   x_k - M from the shard of k,
    loss = log S - (x_k - M),   with e > 0: (1 - e) loss - e (sum_s sum_i log p_si) / C,

``p_si = exp(x_si - M) / S`` and ``log p_si`` as Megatron takes it, the log of the rounded
softmax (``-inf`` where ``p_si`` underflows; Megatron's smoothing ``alpha`` with
``alpha C / (C - 1) = e`` is the catalogue's ``e``), over the global ``C`` (Megatron-LM issue
737 divided by the shard's). Gradients per shard, ``G_s = (p_s - t_s) / d``,
``dL/dh = sum_s G_s W_s`` (all-reduced in shard order), ``dL/dW_s = G_s^T h``,
``dL/db_s = sum_n G_ns``. Its options are Megatron's: smoothing, ignored rows, reductions.

Both follow the catalogue's conventions: rows whose label is ``ignore_index`` give 0 and zero
gradients whatever ``h`` holds there (``np.where`` on ``h``, the losses and ``G``, never a
product with a mask); a zero target's term ``u_i x_i`` is 0 even at a ``-inf`` logit (a
class padded by a ``-inf`` bias: probability 0, gradient 0); ``mean`` and
``sum_over_batch_size`` divide by the denominators of ``stabcheck.losses``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import ml_dtypes
import numpy as np

from stabcheck.implementations import Implementation, register
from stabcheck.implementations.reference import pick

Array = np.ndarray

CHUNK = 2  # classes per chunk: small, so that rows of 3 or more classes cross chunks
ACCUMULATORS: dict[str, np.dtype] = {
    "float32": np.dtype(np.float32),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
    "float16": np.dtype(np.float16),
}
SHARDS = (2, 8)

LINEAR, SOFT = "linear_cross_entropy", "soft_linear_cross_entropy"


def _unless_zero(t: Array, value: Array) -> Array:
    """``value`` where ``t != 0``, else 0 (a zero target's term, even at an infinity)."""
    return np.where(t == 0, 0, value)


@dataclass(frozen=True)
class _Problem:
    """One call: ``h`` (ignored rows zeroed), ``W`` and ``b`` in the compute dtype, the labels
    (ignored rows' integer labels 0), which rows are kept, and the options."""

    h: Array
    W: Array
    b: Array | None
    labels: Array
    kept: Array
    sparse: bool
    smoothing: float
    weight: Array | None
    z_loss: float
    softcap: float | None
    reduction: str
    dtype: np.dtype  # the input's

    @classmethod
    def build(cls, h: Array, labels: Array, W: Array, b: Array | None, sparse: bool,
              label_smoothing: float = 0.0, weight: Array | None = None,
              ignore_index: int | None = None, z_loss: float = 0.0,
              softcap: float | None = None, reduction: str = "none") -> _Problem:  # fmt: skip
        dtype = np.asarray(h).dtype
        ct = np.dtype(np.float64 if dtype == np.float64 else np.float32)
        labels = np.asarray(labels)
        kept = np.ones(len(labels), bool)
        if sparse and ignore_index is not None:
            kept = labels != ignore_index
            labels = np.where(kept, labels, 0)
        if not sparse:
            labels = labels.astype(ct)
        h = np.where(kept[:, None], np.asarray(h).astype(ct), 0)
        return cls(h, np.asarray(W).astype(ct), None if b is None else np.asarray(b).astype(ct),
                   labels, kept, sparse, label_smoothing,
                   None if weight is None else np.asarray(weight).astype(ct), z_loss, softcap,
                   reduction, dtype)  # fmt: skip

    @property
    def ct(self) -> np.dtype:
        """The compute dtype."""
        return self.h.dtype

    @property
    def classes(self) -> int:
        return self.W.shape[0]

    def logits(self, lo: int, hi: int) -> Array:
        """``h W_c^T + b_c`` for the classes ``lo`` to ``hi - 1``, in the compute dtype,
        softcapped."""
        return self.capped(lo, hi)[0]

    def capped(self, lo: int, hi: int) -> tuple[Array, Array | int]:
        """The softcapped logits of the classes ``lo`` to ``hi - 1`` and the softcap's
        ``du/dx = 1 - tanh(x_c / c)^2`` (1 without a softcap), from one product."""
        x = self.h @ self.W[lo:hi].T
        x = x if self.b is None else x + self.b[lo:hi]
        if self.softcap is None:
            return x, 1
        c = self.ct.type(self.softcap)
        t = np.tanh(x / c)
        return np.where(x == -np.inf, x, c * t), 1 - t * t

    def _weights(self, lo: int, hi: int) -> Array:
        return np.ones(hi - lo, self.ct) if self.weight is None else self.weight[lo:hi]

    def spread(self, lo: int, hi: int) -> Array:
        """``u_c``: ``(e / C) w_c`` (integer labels, one row for all) or ``t_c`` (soft)."""
        e, c = self.ct.type(self.smoothing), self.ct.type(self.classes)
        if self.sparse:
            return e / c * self._weights(lo, hi)
        y = self.labels[:, lo:hi]
        return self._weights(lo, hi) * ((1 - e) * y + e / c if e else y)

    def hard(self) -> Array:
        """``a = (1 - e) w_k`` per row (integer labels), 0 (soft)."""
        if not self.sparse:
            return np.zeros(len(self.labels), self.ct)
        w = self._weights(0, self.classes)[self.labels]
        return (1 - self.ct.type(self.smoothing)) * w

    def targets(self, lo: int, hi: int) -> Array:
        """``t_c = u_c + a [i = k]``, N x (hi - lo)."""
        t = np.broadcast_to(self.spread(lo, hi), (len(self.labels), hi - lo))
        if not self.sparse:
            return t
        return t + self.hard()[:, None] * (np.arange(lo, hi) == self.labels[:, None])

    def pick_in(self, x: Array, lo: int) -> Array:
        """Each row's ``x_k`` where ``k`` lies in the chunk of ``x`` starting at ``lo``, else 0."""
        inside = (self.labels >= lo) & (self.labels < lo + x.shape[1])
        return np.where(inside, pick(x, np.clip(self.labels - lo, 0, x.shape[1] - 1)), 0)

    def denominator(self) -> Any:
        """The reduction's denominator, as ``stabcheck.losses`` defines it (1 for none, sum)."""
        if self.reduction in ("none", "sum"):
            d: Any = 1
        elif self.reduction == "sum_over_batch_size" or (self.sparse and self.weight is None):
            d = int(self.kept.sum())
        elif not self.sparse:
            d = len(self.kept)
        else:
            d = self.weight[self.labels[self.kept]].sum()
        return self.ct.type(d)

    def reduce(self, loss: Array) -> Array:
        """The rows' losses, ignored rows 0, reduced, in the input dtype."""
        loss = np.where(self.kept, loss, 0)
        d = self.denominator()
        if self.reduction == "sum_over_batch_size" and d == 0:
            loss = np.zeros((), self.ct)
        elif self.reduction != "none":
            loss = loss.sum() / d
        return np.asarray(loss).astype(self.dtype)

    def scaled(self, G: Array) -> Array:
        """``G / d``, ignored rows 0 (even over a zero denominator)."""
        return np.where(self.kept[:, None], G / self.denominator(), 0)

    def finish(self, dh: Array, dW: list[Array], db: list[Array]) -> dict[str, Array]:
        """The gradient dict, in the input dtype; ignored rows of dL/dh 0."""
        out = {"predictions": np.where(self.kept[:, None], dh, 0),
               "linear_weight": np.concatenate(dW).reshape(self.W.shape)}  # fmt: skip
        if self.b is not None:
            out["linear_bias"] = np.concatenate(db)
        return {name: g.astype(self.dtype) for name, g in out.items()}


def _bounds(V: int, size: int) -> list[tuple[int, int]]:
    return [(lo, min(lo + size, V)) for lo in range(0, V, size)]


def _chunked(P: _Problem, acc: np.dtype, grad: bool) -> Any:
    """The chunked online-softmax kernel with accumulators stored in ``acc``."""
    ct, N = P.ct, len(P.labels)

    def stored(value: Array) -> Array:  # rounded to acc, read back in the compute dtype
        return value.astype(acc).astype(ct)

    m, s, r = np.full(N, -np.inf, ct), np.zeros(N, ct), np.zeros(N, ct)
    xk = np.zeros(N, ct)
    for lo, hi in _bounds(P.classes, CHUNK):
        x = P.logits(lo, hi)
        new = stored(np.maximum(m, x.max(axis=1)))
        scale = np.where(m == new, 1, np.exp(m - new))
        terms = np.where(x == -np.inf, 0, np.exp(x - new[:, None]))
        s = stored(s * scale + terms.sum(axis=1))
        u = P.spread(lo, hi)
        r = stored(r + _unless_zero(u, u * x).sum(axis=1))
        if P.sparse:
            xk = xk + P.pick_in(x, lo)
        m = new
    lse = m + np.log(s)
    a, U = P.hard(), P.spread(0, P.classes).sum(axis=-1)
    loss = _unless_zero(a, a * (lse - xk)) + _unless_zero(U, U * lse - r)
    if P.z_loss:
        loss = loss + ct.type(P.z_loss) * lse**2
    if not grad:
        return P.reduce(loss)
    B = a + U + (2 * ct.type(P.z_loss) * lse if P.z_loss else 0)
    dh, dW, db = np.zeros(P.h.shape, ct), [], []
    for lo, hi in _bounds(P.classes, CHUNK):
        x, slope = P.capped(lo, hi)
        G = P.scaled((B[:, None] * np.exp(x - lse[:, None]) - P.targets(lo, hi)) * slope)
        dh = stored(dh + G @ P.W[lo:hi])
        dW.append(G.T @ P.h)
        db.append(G.sum(axis=0))
    return P.finish(dh, dW, db)


def _vocab_parallel(P: _Problem, k: int, grad: bool) -> Any:
    """Megatron's vocabulary-parallel cross-entropy over ``k`` shards."""
    ct = P.ct
    shards = [(int(c[0]), int(c[-1]) + 1) if len(c) else (0, 0)
              for c in np.array_split(np.arange(P.classes), k)]  # fmt: skip
    xs = [P.logits(lo, hi) for lo, hi in shards]
    M = np.full(len(P.labels), -np.inf, ct)
    for x in xs:  # all-reduce max
        M = np.maximum(M, np.max(x, axis=1, initial=-np.inf))
    shifted = [x - M[:, None] for x in xs]
    exps = [np.exp(x) for x in shifted]
    S, target = np.zeros_like(M), np.zeros_like(M)
    for (lo, _), x, e in zip(shards, shifted, exps):  # all-reduce sums, in shard order
        S = S + e.sum(axis=1)
        if x.shape[1]:
            target = target + P.pick_in(x, lo)
    loss = np.log(S) - target
    softmax = [e / S[:, None] for e in exps]
    e = ct.type(P.smoothing)
    if e:
        log_p = np.zeros_like(M)
        for p in softmax:
            log_p = log_p + np.log(p).sum(axis=1)
        loss = (1 - e) * loss - e * (log_p / ct.type(P.classes))
    if not grad:
        return P.reduce(loss)
    dh, dW, db = np.zeros(P.h.shape, ct), [], []
    for (lo, hi), p in zip(shards, softmax):
        G = P.scaled(p - P.targets(lo, hi))
        dh = dh + G @ P.W[lo:hi]  # all-reduce sum of the shards' partial dL/dh
        dW.append(G.T @ P.h)
        db.append(G.sum(axis=0))
    return P.finish(dh, dW, db)


@dataclass(frozen=True)
class Chunked:
    """``chunked(acc=...)`` of a linear loss: ``fn(h, labels, linear_weight=W,
    linear_bias=b, **options)``; with ``grad``, the gradient dict."""

    acc: str
    sparse: bool
    grad: bool = False

    def __call__(self, h: Array, labels: Array, *, linear_weight: Array,
                 linear_bias: Array | None = None, **options: Any) -> Any:  # fmt: skip
        with np.errstate(all="ignore"):
            P = _Problem.build(h, labels, linear_weight, linear_bias, self.sparse, **options)
            return _chunked(P, ACCUMULATORS[self.acc], self.grad)


@dataclass(frozen=True)
class VocabParallel:
    """``vocab_parallel(k=...)`` of ``linear_cross_entropy``: ``fn(h, labels,
    linear_weight=W, linear_bias=b, **options)``; with ``grad``, the gradient dict."""

    shards: int
    grad: bool = False

    def __call__(self, h: Array, labels: Array, *, linear_weight: Array,
                 linear_bias: Array | None = None, **options: Any) -> Any:  # fmt: skip
        with np.errstate(all="ignore"):
            P = _Problem.build(h, labels, linear_weight, linear_bias, True, **options)
            return _vocab_parallel(P, self.shards, self.grad)


def _register() -> None:
    both: dict[str, tuple[str, ...]] = {
        LINEAR: ("label_smoothing", "weight", "ignore_index", "z_loss", "softcap", "reduction"),
        SOFT: ("label_smoothing", "weight", "z_loss", "softcap", "reduction"),
    }
    for acc in ACCUMULATORS:
        for loss, params in both.items():
            sparse = loss == LINEAR
            register(Implementation(
                f"chunked(acc={acc})", loss, Chunked(acc, sparse),
                grad=Chunked(acc, sparse, grad=True), params=params,
                description=f"online softmax over chunks of {CHUNK} classes (Liger, Cut "
                f"Cross-Entropy), running max, sum of exponentials and dL/dh stored in {acc}",
            ))  # fmt: skip
    for k in SHARDS:
        register(Implementation(
            f"vocab_parallel(k={k})", LINEAR, VocabParallel(k), grad=VocabParallel(k, grad=True),
            params=("label_smoothing", "ignore_index", "reduction"),
            description=f"Megatron's vocabulary-parallel cross-entropy over {k} shards of W, "
            "all-reduced max and sums in float32 (float64 inputs: float64)",
        ))  # fmt: skip


_register()
