"""The fast path of the linear losses: logits x = h W^T + b exact (``dot``), the softmax
cross-entropy of each row in double-double arithmetic with proved error bounds (``ddmath``),
and dL/dh = G W, dL/dW = G^T h, dL/db = sum_n G_n from float64 BLAS with rigorous error
bounds, every result accepted only when its enclosure rounds to one value of the format
(Ziv's test); what is left goes to double-double sums, then to the mpmath units of
``linear``, so the answers are those of the mpmath path, bit for bit.

**Logits.** W is read in blocks of ``BLOCK_BYTES`` (float64) of classes; each block's logits
come from ``dot.products(h, W_b, b_b).approximation()``: hi + lo with |x - hi - lo| <= bound
(0 nearly always). A bias of -inf masks its class (p = 0, G = 0); a masked class may carry
no target (else the loss is +inf: declined).

**A row.** k is the class of the largest hi + lo, r_j = x_k - x_j >= 0 (``add``: relative
error 2**-100, plus the logits' bounds), e_j = exp(-r_j) = M_j 2**q_j: ``exp_dd`` of
-r_j + 1400 m_j (exactly formed, in [-1400.5, 0]) times e**(-1400 m_j) from a table
(correctly rounded at 250 bits), so any spread up to 2**20 is enclosed relatively; q_j is
an int. S = sum_{j != k} e_j is scaled by the largest term (2**qS) and summed exactly by
extraction (``split_sums``); its relative error is the weighted mean of the terms' plus
``split_eps``. Then, with the targets t (exact, or double-doubles within 4 EPS_OP when
smoothed; Y = sum t, Y_k = Y - t_k summed without t_k),

    L   = D + Y log1p(S),  D = sum_j t_j r_j >= 0           (``rowwise.Softmax``)
    G_j = Y e_j / (1 + S) - t_j                              (j != k)
    G_k = (Y_k - t_k S) / (1 + S)                            (no cancellation at p_k ~ 1)

G_j is kept as M 2**q (relative radius) where it is a pure product (t_j = 0, or Y_k = 0 at
k), else as a plain double-double with an absolute radius; a reduction's 1/d is folded in
(a power of two exactly, else a double-double). The loss is rounded by ``ddmath.ziv`` (with
``ziv_above`` for an exact D on a halfway point); undecided rows go to the mpmath unit
(``rowwise.Softmax`` on the row's exact logits).

**Gradients**, in tiers, each entry accepted only when certain:

1. float64 BLAS, in blocks of Vb classes: dL/dh = 2**Qn sum_b (G~_b @ W_b) (block results
   accumulated error-free), dL/dW = 2**Qv (G~^T @ h), G~ = G scaled by its row's (for dh)
   or class's (for dW) largest exponent when that is below 2**-900 (else not scaled).
   Higham: |fl(sum) - sum| <= gamma_n sum |terms| (n = Vb for dh, N for dW, any order,
   with or without FMA); G's low part (<= u |G~|) is dropped and its radius added, so
   radius = ((gamma_n + 3u) |G~| + r_G) @ |W| (resp. @ |h|), computed by BLAS on
   non-negative terms and inflated by its own gamma, plus n 2**-1074 for underflow. dL/dh
   goes through ``ddmath.ziv``; dL/dW's enclosure [fl(v - r), fl(v + r)] (3u covers these
   roundings) is rounded at both ends, by numpy casts (RN-even) to float32/float16 and, for
   bfloat16, through float32 (an end on a bfloat16 halfway point is refused, so the
   double rounding is innocuous); equal bit patterns decide. Skipped for float64 (gamma_n
   >= 2**-53 never decides) and for small cases (N V D < ``DD_ALL``), which go to tier 2.
2. double-double: each column of W (for dh) or h (for dW) times a power of two that brings
   its largest entry to [1/2, 1) (exact; subnormal inputs lose nothing), each term G~ w by
   ``mul_d`` (<= EPS_OP), summed pairwise (signed; each ``add`` within EPS_OP of its exact
   sum, so L levels cost L EPS_OP sum |terms|), plus G's radius times |w| and 2**-1072 per
   term; dL/db always here.
2b. exact part and transcendental part (``_Split``): G = E + T with E rational (-t_j, and
   Y - t_k at k) and T = Y e_j / Z (j != k), -Y S / Z (at k), enclosed relatively; E w
   summed exactly in Fractions over E's few nonzero entries, T w as in tier 2, and the
   entry's exact interval [(E w + tau - r) / d, (E w + tau + r) / d] rounded at both
   ends. This settles a sum of inputs on (or next to) a rounding boundary plus a part far
   below double-double resolution (where p underflows: confident rows).
3. mpmath, for what is left: entries whose inputs make them exactly zero (all G or w
   zero) are +0; the rest are the mpmath path's own sums (``linear.shares_dot``,
   ``linear.weighted_sum`` over rows grouped by equal logits and targets) of the rows' exact units
   (exact zeros by cancellation, rational rows of tied logits, float64 results near the
   subnormal range, where the absolute 2**-1072 terms do not decide).

**Results.** ``evaluate`` returns an ``OracleResult`` like the mpmath path's (values,
gradients, ``operand_gradients``, condition numbers and scales, their numerators, from the
formulas of ``linear.Approx``, blockwise, on the kept rows) or None for what it declines:
z-loss, softcap and the other options but ``reduction``, ``ignore_index``, ``label_smoothing``,
``weight``; NaN or +inf anywhere but in ignored rows; a -inf bias under a target; a zero
reduction denominator unless every row is ignored (then the gradients are +0 and the loss
is NaN, or 0 for ``sum_over_batch_size``); logits of 2**1000 and beyond, spreads beyond
2**20 within a row, targets of 2**900 and beyond, or gradients that could overflow.
``OracleResult.fast`` marks the rows decided without mpmath (for a reduced case, whether
everything was); ``precision`` is ``fast.FAST_PRECISION`` for the values decided here. The
64-bit "exact" values are the centres of the enclosures that decided (double-doubles;
tier-1 dL/dh and dL/dW: the BLAS double) or the mpmath midpoints: like the mpmath path's,
they are as accurate as the rounding needed, far below the format's half-ULP of the value,
but not relatively accurate where an entry cancels far below its scale or rounds to zero.

Memory: about 40 N V doubles, plus one block of W in float64 (and its absolute value) and
its dL/dW block; never N x V x D. Past ``COMPACT`` entries, dL/dW is returned as float32
(every value of float32, float16 and bfloat16 is one; float64 stays float64) and its
condition numbers, scales and exact values as ``LazyArray`` (computed on access, block by
block: conditions and scales by BLAS, exact values in double-double).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from functools import cache
from typing import Any

import mpmath
import numpy as np
from mpmath import libmp

from stabcheck.case import Case
from stabcheck.formats import Format
from stabcheck.losses import LabelKind
from stabcheck.oracle import ddmath as dd
from stabcheck.oracle import dot, linear, options
from stabcheck.oracle import enclosure as E
from stabcheck.oracle.ddmath import EPS_EXP, EPS_LOG, EPS_OP
from stabcheck.oracle.enclosure import CTX, midpoint
from stabcheck.oracle.fast import ETA, FAST_PRECISION
from stabcheck.oracle.rowwise import Softmax

Array = np.ndarray

U = 2.0**-53
BLOCK_BYTES = 1 << 26  # float64 bytes of W per block of classes
DD_ALL = 1 << 22  # N V D below which every gradient entry goes to double-double (tier 2)
COMPACT = 1 << 22  # dL/dW entries above which it is float32 with lazy conditions and exacts
EAGER_EXACT = 1 << 16  # entries up to which exact values are built eagerly (object arrays)
CHUNK = 1 << 21  # elements of the temporaries of tier 2
STEP = 1400.0  # exp(-r) = exp(-r + STEP m) e**(-STEP m)
MAX_SPREAD = 2.0**20  # largest x_k - x_j handled
MAX_LOGIT = 2.0**1000
OPTIONS = frozenset({"reduction", "ignore_index", "label_smoothing", "weight"})
_NONE = -(1 << 30)  # exponent of nothing (masked classes)
_TINY_Q = -900  # scale G by rows or classes only below 2**-900
_SAFE = 1.0 + 2.0**-40


def gamma(n: int) -> float:
    """Higham's gamma_n = n u / (1 - n u), u = 2**-53."""
    return n * U / (1.0 - n * U)


# -- the case ------------------------------------------------------------------------------------


@dataclass
class _Prep:
    """What a case holds, in the form the fast path uses (rows: those with a gradient)."""

    case: Case
    fmt: Format
    rows: Array  # indices (into the case's rows) of the kept rows: not ignored, Y > 0
    ignored: Array  # bool, N
    h: Array  # R x D float64, the kept rows
    W: Array  # V x D, the case's array (its format)
    b: Array | None  # V float64, 0 where masked
    mask: Array  # V bool: classes with a -inf bias
    th: Array  # R x V targets: th + tl, within rt (absolute); exactly 0 where tz
    tl: Array
    rt: Array
    tz: Array
    Yh: Array  # R: Y = sum_j t_j within rY
    Yl: Array
    rY: Array
    sparse_exact: bool  # integer labels, no smoothing, no weights: t one-hot
    labels: Array | None  # the kept rows' integer labels
    d: Fraction  # the reduction's denominator (1 unreduced)
    no_nan: bool
    shift: int | None  # d = 2**shift
    dinv: tuple[float, float, float]  # 1/d as a double-double, relative error
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def V(self) -> int:
        return int(self.W.shape[0])


def _prepare(case: Case) -> _Prep | None:
    spec = case.loss
    if not spec.operands or spec.oracle != "linear" or "linear_weight" not in case.operands:
        return None
    if set(case.params) - OPTIONS - {"z_loss"} or (case.param("z_loss") or 0.0) != 0.0:
        return None
    fmt = case.format
    W = case.operands["linear_weight"]
    V = int(W.shape[0])
    b = case.operands.get("linear_bias")
    mask = np.zeros(V, bool)
    b64 = None
    if b is not None:
        b64 = b.astype(np.float64)
        mask = b64 == -np.inf
        if not (np.isfinite(b64) | mask).all():
            return None
        b64 = np.where(mask, 0.0, b64)
    ignored = options.ignored(case)
    live = np.flatnonzero(~ignored)
    h_all = case.predictions[live].astype(np.float64)
    if not np.isfinite(h_all).all():
        return None
    sparse = spec.labels is LabelKind.SPARSE
    if sparse:
        labels = case.labels[live].astype(np.int64)
        y = np.zeros((live.size, V))
        y[np.arange(live.size), labels] = 1.0
    else:
        labels = None
        y = case.labels[live].astype(np.float64)
    e = float(case.param("label_smoothing") or 0.0)
    w = case.param("weight")
    w64 = None if w is None else w.astype(np.float64)
    if w64 is not None and not (np.isfinite(w64) & (w64 >= 0)).all():
        return None
    with np.errstate(all="ignore"):
        if e == 0.0 and w64 is None:
            th, tl, rt = y, np.zeros_like(y), np.zeros_like(y)
        elif e == 0.0:
            th, tl = dd.two_prod(y, w64[None, :])  # exact barring underflow
            rt = np.where((th != 0) & (np.abs(th) < 2.0**-960), 2.0**-1072, 0.0)
        else:
            ah, al = dd.two_sum(np.ones(1), -np.full(1, e))  # 1 - e exactly
            ch, cl = dd.div_d(np.full(1, e), np.zeros(1), np.full(1, float(V)))  # e / V
            uh, ul = dd.mul_d(np.broadcast_to(ah, y.shape), np.broadcast_to(al, y.shape), y)
            th, tl = dd.add(uh, ul, np.broadcast_to(ch, y.shape), np.broadcast_to(cl, y.shape))
            if w64 is not None:
                th, tl = dd.mul_d(th, tl, np.broadcast_to(w64, y.shape))
            # four roundings within EPS_OP each (non-negative terms); underflows below
            rt = 4 * EPS_OP * _SAFE * th + 2.0**-1070
    tz = (y == 0) & (e == 0.0)
    if w64 is not None:
        tz |= w64[None, :] == 0
    th, tl, rt = (np.where(tz, 0.0, a) for a in (th, tl, rt))
    if not (np.abs(th) < 2.0**900).all():  # (Veltkamp's splitting overflows past 2**996)
        return None
    if (~tz & mask[None, :]).any():  # a target on a -inf logit: the loss is +inf
        return None
    zero_rows = tz.all(axis=1)  # Y = 0: loss +0 and no gradient
    keep = ~zero_rows
    rows = live[keep]
    th, tl, rt, tz = th[keep], tl[keep], rt[keep], tz[keep]
    if th.shape[0]:
        Yh, Yl, levels = dd.sum_rows(th, tl)
        rY = (levels * EPS_OP * Yh + rt.sum(axis=1)) * _SAFE
        if not tl.any():  # doubles: exact where every addition was
            Yh2, Yl2, exact, _ = dd.sum_rows_exact(th)
            exact &= ~rt.any(axis=1)
            Yh, Yl, rY = np.where(exact, Yh2, Yh), np.where(exact, Yl2, Yl), np.where(exact, 0, rY)
    else:
        Yh = Yl = rY = np.zeros(0)
    d, no_nan = options.denominator(case) if case.reduced else (Fraction(1), False)
    if d == 0 and live.size:  # 0/0 or x/0 on rows with gradients: left to mpmath
        return None
    shift = None  # d = 2**shift (d is dyadic: a sum of binary floats)
    if d.numerator & (d.numerator - 1) == 0 and d.denominator & (d.denominator - 1) == 0:
        shift = (d.numerator.bit_length() - 1) - (d.denominator.bit_length() - 1)
    inv = 1 / d if d else Fraction(1)
    ih = float(inv)
    il = float(inv - Fraction(ih))
    rel = float(abs(inv - Fraction(ih) - Fraction(il)) / inv) * 2 + EPS_OP
    return _Prep(case, fmt, rows, ignored, h_all[keep], W, b64, mask, th, tl, rt, tz,
                 Yh, Yl, rY, sparse and e == 0.0 and w64 is None,
                 None if labels is None else labels[keep], d, no_nan, shift,
                 (ih, il, rel))  # fmt: skip


# -- logits -----------------------------------------------------------------------------------


def _block(V: int, D: int) -> int:
    return max(1, min(V, BLOCK_BYTES // (8 * max(D, 1))))


def _blocks(V: int, D: int) -> list[slice]:
    step = _block(V, D)
    return [slice(v0, min(V, v0 + step)) for v0 in range(0, V, step)]


class _Weights:
    """W's blocks as float64 (and their absolute values), kept when there is one block."""

    def __init__(self, prep: _Prep) -> None:
        self.prep = prep
        self.kept: dict[int, tuple[Array, Array]] = {}
        self.slices = _blocks(prep.V, prep.h.shape[1])

    def __iter__(self):
        for i, blk in enumerate(self.slices):
            if i in self.kept:
                yield blk, *self.kept[i]
                continue
            Wb = self.prep.W[blk].astype(np.float64)
            aWb = np.abs(Wb)
            if len(self.slices) == 1:
                self.kept[i] = (Wb, aWb)
            yield blk, Wb, aWb


def _logits(prep: _Prep, weights: _Weights) -> tuple[Array, ...] | None:
    """hi, lo, bound of the exact logits (R x V), a = |h| |W|^T + |b| and max |W|."""
    h = prep.h
    R, V = h.shape[0], prep.V
    hi, lo, bnd = np.zeros((R, V)), np.zeros((R, V)), np.zeros((R, V))
    a = np.zeros((R, V))
    absh = np.abs(h)
    wmax = 0.0
    fallback = 0
    for blk, Wb, aWb in weights:
        if not np.isfinite(Wb).all():
            return None
        if Wb.size:
            wmax = max(wmax, float(aWb.max()))
        bb = None if prep.b is None else prep.b[blk]
        P = dot.products(h, Wb, bb)
        hi[:, blk], lo[:, blk], bnd[:, blk] = P.approximation()
        fallback += P.fallback_count
        with np.errstate(over="ignore"):  # huge inputs are declined below
            a[:, blk] = absh @ aWb.T + (0.0 if bb is None else np.abs(bb))
    prep.stats["logit_fallback"] = fallback
    prep.stats["logits"] = R * V
    return hi, lo, bnd, a, wmax


@cache
def _exp_multiple(m: int) -> tuple[float, float, int]:
    """e**(-STEP m) = (h + l) 2**q, h + l in [1, 2) correctly rounded (relative 2**-106)."""
    ctx = mpmath.MPContext()
    ctx.prec = 250
    man, exp = ctx.frexp(ctx.exp(-ctx.mpf(STEP) * m))
    man *= 2
    h = float(man)
    return h, float(man - h), int(exp) - 1


# -- rows -------------------------------------------------------------------------------------


@dataclass
class _Rows:
    """One softmax per kept row: its loss enclosure and G = dL/dx (R x V) as
    (h + lo) 2**q within r 2**q, the reduction's 1/d included; p, the float64 softmax."""

    Lh: Array
    Ll: Array
    Lq: Array
    Lr: Array
    vval: Array
    vok: Array
    Gh: Array
    Gl: Array
    Gq: Array
    Gr: Array
    Gzero: Array  # G exactly 0
    p: Array
    Lzero: Array  # L exactly 0
    k: Array  # the reference class of each row
    T: tuple[Array, ...]  # G's transcendental part (before 1/d): h, lo, q, r, zero


def _rows(prep: _Prep, hi: Array, lo: Array, bnd: Array, grad: bool) -> _Rows | None:
    fmt = prep.fmt
    R, V = hi.shape
    rr = np.arange(R)
    valid = np.broadcast_to(~prep.mask[None, :], (R, V))
    if not (~prep.mask).any():
        return None
    hm = np.where(valid, hi, -np.inf)
    top = hm.max(axis=1)
    k = np.where(hm == top[:, None], lo, -np.inf).argmax(axis=1)
    difh, difl = dd.add(hi[rr, k][:, None], lo[rr, k][:, None], -hi, -lo)
    difh, difl = np.where(valid, difh, 0.0), np.where(valid, difl, 0.0)
    if (difh < 0).any() or (difh > MAX_SPREAD).any():
        return None
    bb = np.where(valid, bnd + bnd[rr, k][:, None], 0.0)
    bb[rr, k] = 0.0  # r_k = 0 exactly
    # r_j's error: ``add`` (EPS_OP r), forming r - STEP m (2**-104 r), the logits' bounds
    delta = 2.0**-99 * difh + bb
    if (delta > 2.0**-20).any():
        return None

    # e_j = exp(-r_j) = M 2**q
    far = difh > STEP
    m = np.where(far, np.floor((difh - 0.5) / STEP), 0.0)
    s, e = dd.two_sum(-difh, STEP * m)  # exact
    r0h, r0l = dd.fast_two_sum(s, e - difl)  # in [-1400.5, 0]
    Mh, Ml, q = dd.exp_dd(r0h, r0l)
    q = q.astype(np.int64)
    eps_e = EPS_EXP + 1.01 * delta
    if far.any():
        ms = m[far].astype(np.int64)
        table = {int(v): _exp_multiple(int(v)) for v in np.unique(ms)}
        Kh = np.array([table[int(v)][0] for v in ms])
        Kl = np.array([table[int(v)][1] for v in ms])
        qK = np.array([table[int(v)][2] for v in ms], dtype=np.int64)
        ph, pl = dd.mul(Mh[far], Ml[far], Kh, Kl)
        big = ph >= 2.0
        Mh[far], Ml[far] = np.where(big, ph / 2, ph), np.where(big, pl / 2, pl)
        q[far] += qK + big
        eps_e = eps_e + far * (2.0**-105 + EPS_OP)
    one = (difh == 0) & (difl == 0) & (bb == 0)  # e = 1 exactly (exp_dd(0) is 1)
    eps_e = np.where(one, 0.0, eps_e)
    Mh, Ml = np.where(valid, Mh, 0.0), np.where(valid, Ml, 0.0)
    q = np.where(valid, q, _NONE)

    # S = sum_{j != k} e_j = (Sh + Sl) 2**qS, exactly summed (split_sums), relative eps_S
    others = valid.copy()
    others[rr, k] = False
    qS = np.where(others, q, _NONE).max(axis=1) if V else np.full(R, _NONE)
    has = qS > _NONE
    qS = np.where(has, qS, 0)
    shiftq = np.clip(q - qS[:, None], -1100, 0).astype(np.int32)
    f = np.ldexp(others.astype(np.float64), shiftq)  # 0 below 2**-1074: dropped (< 2**-1073)
    tsh, tsl = Mh * f, Ml * f
    sigmas = dd.split_levels(V)
    parts = dd.split_sums(tsh, sigmas)
    Sh, Sl = dd.split_total(parts, tsl.sum(axis=1))
    with np.errstate(all="ignore"):
        weighted = (tsh * eps_e).sum(axis=1) * 1.01 / np.where(has, Sh, 1.0)
    eps_S = np.where(has, dd.split_eps(V) + V * 2.0**-1072 + weighted, 0.0)
    Sh, Sl = np.where(has, Sh, 0.0), np.where(has, Sl, 0.0)
    plain = qS >= _TINY_Q
    Sph = np.where(plain, _ldexp(Sh, qS), 0.0)
    Spl = np.where(plain, _ldexp(Sl, qS), 0.0)
    Zh, Zl = dd.add_d(Sph, Spl, np.ones(R))  # 1 + S; S < 2**-899 left out
    eps_Z = eps_S + EPS_OP + 2.0**-170

    # L = D + Y log1p(S)
    Yh, Yl = prep.Yh, prep.Yl
    eps_Y = prep.rY / Yh
    lgh, lgl = dd.log1p_dd(Sph, Spl)
    lgh, lgl = np.where(plain, lgh, Sh), np.where(plain, lgl, Sl)  # log1p(S) = S (1 - S/2..)
    qlg = np.where(plain, 0, qS)
    eps_lg = np.where(plain, eps_S + EPS_LOG, eps_S + 2.0**-800)
    YLh, YLl = dd.mul(Yh, Yl, lgh, lgl)
    eps_YL = eps_Y + eps_lg + EPS_OP
    th, tl = prep.th, prep.tl
    Th, Tl = dd.mul(th, tl, difh, difl)  # t_j r_j >= 0
    Dh, Dl, levels = dd.sum_rows(Th, Tl) if V else (np.zeros(R), np.zeros(R), 0)
    # t_j r_j: ``mul`` (EPS_OP), r_j's error (EPS_OP r_j + bb_j), t_j's (rt_j); the sum
    rD = ((levels + 3) * EPS_OP * Dh + (prep.rt * (difh + bb) + th * bb).sum(axis=1)) * _SAFE
    rD = rD + np.where((Th > 0).any(axis=1) if V else False, (V + 1) * 2.0**-1072, 0.0)
    zeroD = (Dh == 0) & (rD == 0)
    YLph, YLpl = _ldexp(YLh, qlg), _ldexp(YLl, qlg)
    Lh, Ll = dd.add(Dh, Dl, YLph, YLpl)
    Lr = rD + eps_YL * YLph + EPS_OP * Lh + ETA
    Lh, Ll = np.where(zeroD, YLh, Lh), np.where(zeroD, YLl, Ll)
    Lq = np.where(zeroD, qlg, 0).astype(np.int64)
    Lr = np.where(zeroD, eps_YL * YLh, Lr)
    vval, vok = dd.ziv(Lh, Ll, Lq.astype(np.int32), Lr, fmt)
    if prep.sparse_exact and R:  # D = r_label exactly: a halfway D goes up (L in (D, D + ...])
        lab = prep.labels
        xh, xl, exact = dd.add_exact(hi[rr, k], lo[rr, k], -hi[rr, lab], -lo[rr, lab])
        exact &= (bnd[rr, k] == 0) & (bnd[rr, lab] == 0) & (xh > 0) & ~zeroD & has
        above, above_ok = dd.ziv_above(np.where(exact, xh, 1.0), np.where(exact, xl, 0.0),
                                       Lh, Ll, Lr, fmt)  # fmt: skip
        use = ~vok & exact & above_ok
        vval, vok = np.where(use, above, vval), vok | use
    single = zeroD & ~has  # L = D = 0 exactly
    vval, vok = np.where(single, 0.0, vval), vok | single

    # G = Y e_j / Z - t_j (j != k), G_k = (Y_k - t_k S) / Z
    YZh, YZl = dd.div(Yh, Yl, Zh, Zl)
    eps_YZ = eps_Y + eps_Z + EPS_OP
    Ah, Al = dd.mul(np.broadcast_to(YZh[:, None], Mh.shape),
                    np.broadcast_to(YZl[:, None], Mh.shape), Mh, Ml)  # fmt: skip
    eps_A = eps_e + eps_YZ[:, None] + EPS_OP
    tz = prep.tz
    Gh, Gl = Ah.copy(), Al.copy()
    Gq = q.copy()
    Gr = eps_A * Ah
    lab = valid & ~tz  # plain: Y p_j - t_j
    if lab.any():
        Aph, Apl = _ldexp(Ah[lab], q[lab]), _ldexp(Al[lab], q[lab])
        gh, gl = dd.add(Aph, Apl, -th[lab], -tl[lab])
        Gh[lab], Gl[lab], Gq[lab] = gh, gl, 0
        Gr[lab] = eps_A[lab] * Aph + prep.rt[lab] + EPS_OP * np.abs(gh) + 2.0**-1072
    # the reference class k
    rest_h, rest_l = th.copy(), tl.copy()
    rest_h[rr, k], rest_l[rr, k] = 0.0, 0.0
    Ykh, Ykl, lev = dd.sum_rows(rest_h, rest_l) if V else (np.zeros(R), np.zeros(R), 0)
    rest_r = prep.rt.copy()
    rest_r[rr, k] = 0.0
    rYk = (lev * EPS_OP * Ykh + rest_r.sum(axis=1)) * _SAFE
    rest_zero = tz | ~others
    rest_zero[rr, k] = True
    Yk_zero = rest_zero.all(axis=1)
    tkh, tkl, rtk, tzk = th[rr, k], tl[rr, k], prep.rt[rr, k], tz[rr, k]
    with np.errstate(all="ignore"):
        eps_tk = np.where(tzk, 0.0, rtk / np.where(tzk, 1.0, tkh))
        TSh, TSl = dd.mul(tkh, tkl, Sh, Sl)  # t_k S / 2**qS
        eps_TS = eps_tk + eps_S + EPS_OP
        # (a) Y_k = 0: G_k = -t_k S / Z, scaled by 2**qS (0 when S = 0)
        ah_, al_ = dd.div(TSh, TSl, Zh, Zl)
        ga = (-ah_, -al_, qS, (eps_TS + eps_Z + EPS_OP) * ah_)
        # (b) t_k = 0: G_k = Y / Z
        gb = (YZh, YZl, np.zeros(R, np.int64), eps_YZ * YZh)
        # (c) (Y_k - t_k S) / Z, plain
        tSph, tSpl = np.where(plain, _ldexp(TSh, qS), 0.0), np.where(plain, _ldexp(TSl, qS), 0.0)
        slack = np.where(plain, 2.0**-1073, tkh * 2.0**-898)
        nh, nl = dd.add(Ykh, Ykl, -tSph, -tSpl)
        ch_, cl_ = dd.div(nh, nl, Zh, Zl)
        rc = ((rYk + eps_TS * tSph + EPS_OP * np.abs(nh) + slack) / Zh * _SAFE
              + (eps_Z + 2 * EPS_OP) * np.abs(ch_))  # fmt: skip
        gc = (ch_, cl_, np.zeros(R, np.int64), rc)
    kh = np.where(Yk_zero, ga[0], np.where(tzk, gb[0], gc[0]))
    kl = np.where(Yk_zero, ga[1], np.where(tzk, gb[1], gc[1]))
    kq = np.where(Yk_zero, ga[2], np.where(tzk, gb[2], gc[2]))
    kr = np.where(Yk_zero, ga[3], np.where(tzk, gb[3], gc[3]))
    Gh[rr, k], Gl[rr, k], Gq[rr, k], Gr[rr, k] = kh, kl, kq, kr
    Gzero = ~valid.copy()
    Gzero[rr, k] = Yk_zero & ~has  # -t_k S / Z with S = 0
    Gh, Gl, Gr = (np.where(Gzero, 0.0, a) for a in (Gh, Gl, Gr))
    Gq = np.where(Gzero, 0, Gq)
    # G = E + T, E rational (-t_j; Y - t_k at k), T = Y e_j / Z (j != k), -Y S / Z (at k)
    YSh, YSl = dd.mul(YZh, YZl, Sh, Sl)
    Th_, Tl_, Tq_ = Ah.copy(), Al.copy(), q.copy()
    Tr_ = eps_A * Ah
    Th_[rr, k], Tl_[rr, k], Tq_[rr, k] = -YSh, -YSl, qS
    Tr_[rr, k] = (eps_YZ + eps_S + EPS_OP) * YSh
    Tzero = ~valid.copy()
    Tzero[rr, k] = ~has
    T = (*(np.where(Tzero, 0, a) for a in (Th_, Tl_, Tq_, Tr_)), Tzero)
    # the reduction: G / d
    if prep.shift is not None:
        Gq = np.where(Gzero, 0, Gq - prep.shift)
    else:
        ih, il, rel = prep.dinv
        nh_, nl_ = dd.mul(Gh, Gl, np.full_like(Gh, ih), np.full_like(Gh, il))
        Gr = Gr * ih * _SAFE + (rel + EPS_OP) * np.abs(nh_)
        Gh, Gl = nh_, nl_
    if (np.abs(Gq[~Gzero]) > 2**30).any():
        return None
    # p (float64) for condition numbers
    with np.errstate(all="ignore"):
        p = np.where(valid, _ldexp(Mh / Zh[:, None], q), 0.0)
    return _Rows(Lh, Ll, Lq, Lr, vval, vok, Gh, Gl, Gq, Gr, Gzero, p, single, k, T)


def _ldexp(m: Array, e: Any) -> Array:
    """m 2**e with int32 exponents (clipped: results beyond them are 0 or overflow anyway)."""
    e = np.clip(np.asarray(e), -(1 << 20), 1 << 20).astype(np.int32)
    with np.errstate(all="ignore"):
        return np.ldexp(m, e)


# -- double-double sums and rounding ----------------------------------------------------------


def _dd_sum(h: Array, lo: Array, axis: int) -> tuple[Array, Array, int]:
    """Pairwise double-double sum along ``axis`` of terms of any sign, and its levels L:
    within L EPS_OP (1 + 2**-40) of the sum of |terms| (each ``add`` within EPS_OP of its
    exact sum)."""
    h, lo = np.moveaxis(h, axis, 0), np.moveaxis(lo, axis, 0)
    n = h.shape[0]
    levels = max(0, (n - 1).bit_length())
    if (1 << levels) != n:
        pad = [(0, (1 << levels) - n)] + [(0, 0)] * (h.ndim - 1)
        h, lo = np.pad(h, pad), np.pad(lo, pad)
    while h.shape[0] > 1:
        half = h.shape[0] // 2
        h, lo = dd.add(h[:half], lo[:half], h[half:], lo[half:])
    return h[0], lo[0], levels


def _round_ends(lo: Array, hi: Array, fmt: Format) -> tuple[Array, Array]:
    """For ends lo <= hi of enclosures (float64), their common rounding to ``fmt`` (float32
    values) and whether both round to it (same bit pattern, finite). float32 and float16
    by numpy's casts (round to nearest even); bfloat16 through float32, refusing an end
    whose float32 rounding sits on a bfloat16 halfway point (elsewhere rounding twice gives
    the same value as rounding once)."""
    with np.errstate(over="ignore", invalid="ignore"):
        if fmt.name == "float32":
            a, b = lo.astype(np.float32), hi.astype(np.float32)
            ok = (a.view(np.uint32) == b.view(np.uint32)) & np.isfinite(a)
            return a, ok
        if fmt.name == "float16":
            a, b = lo.astype(np.float16), hi.astype(np.float16)
            ok = (a.view(np.uint16) == b.view(np.uint16)) & np.isfinite(a)
            return a.astype(np.float32), ok
        if fmt.name == "bfloat16":
            a = lo.astype(np.float32).view(np.uint32)
            b = hi.astype(np.float32).view(np.uint32)
            ka = (a + np.uint32(0x7FFF) + ((a >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
            kb = (b + np.uint32(0x7FFF) + ((b >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
            mid = np.uint32(0x8000)
            low16 = np.uint32(0xFFFF)
            ok = (ka == kb) & ((a & low16) != mid) & ((b & low16) != mid)
            value = (ka << np.uint32(16)).astype(np.uint32).view(np.float32)
            return value, ok & np.isfinite(value)
    raise ValueError(fmt.name)


# -- gradients --------------------------------------------------------------------------------


class _Scaled:
    """G scaled by rows (``axis`` 1: for dL/dh) or by classes (``axis`` 0: for dL/dW, dL/db):
    G = 2**Q G~, Q the largest exponent of the row or class when below 2**-900, else 0;
    G~ = h + lo within r (r already includes 2**-1074 for ldexp's underflow)."""

    def __init__(self, parts: tuple[Array, ...], axis: int) -> None:
        h, lo, q, r, zero = parts
        live = ~zero
        qmax = np.where(live, q, _NONE).max(axis=axis, initial=_NONE)
        self.Q = np.where(qmax < _TINY_Q, np.where(qmax > _NONE, qmax, 0), 0).astype(np.int64)
        Qb = self.Q[:, None] if axis == 1 else self.Q[None, :]
        e = q - Qb
        self.h = np.where(live, _ldexp(h, e), 0.0)
        self.lo = np.where(live, _ldexp(lo, e), 0.0)
        self.r = np.where(live, _ldexp(r, e) * _SAFE + 2.0**-1074, 0.0)

    @classmethod
    def of(cls, rows: _Rows, axis: int) -> _Scaled:
        return cls((rows.Gh, rows.Gl, rows.Gq, rows.Gr, rows.Gzero), axis)


@dataclass
class _Grad:
    """One gradient: rounded values, decided, double-double approximations (hi + lo) 2**q."""

    value: Array
    ok: Array
    h: Array
    lo: Array
    q: Array
    tier: Array  # 1, 2 (fast), 3 (mpmath), 0 (exact zero)


def _new_grad(shape: tuple[int, ...], dtype: Any = np.float64) -> _Grad:
    return _Grad(np.zeros(shape, dtype), np.zeros(shape, bool), np.zeros(shape), np.zeros(shape),
                 np.zeros(shape, np.int64), np.zeros(shape, np.int8))  # fmt: skip


def _pass_over_w(prep: _Prep, weights: _Weights, gs: _Scaled | None, Gap: Array,
                 Cn: Array | None, tier1: bool) -> tuple[Array, ...]:  # fmt: skip
    """One pass over W: G~ W (tier 1: error-free accumulation over blocks, and its bound),
    gh = Gap W (for the loss's condition) and Cn |W| (the gradient's)."""
    R, D = prep.h.shape
    acc, comp = np.zeros((R, D)), np.zeros((R, D))
    bound, gh, hnum = np.zeros((R, D)), np.zeros((R, D)), np.zeros((R, D))
    nb = len(weights.slices)
    vb = _block(prep.V, D)
    Cmb = None
    if tier1 and gs is not None:
        Cmb = (gamma(vb) + 2 * U + nb * 2.0**-104) * np.abs(gs.h) + gs.r * _SAFE
    for blk, Wb, aWb in weights:
        top = [Gap[:, blk]] + ([gs.h[:, blk]] if Cmb is not None else [])
        X = np.vstack(top) @ Wb
        gh += X[:R]
        if Cmb is not None:
            s, e = dd.two_sum(acc, X[R:])
            acc, comp = s, comp + e
        absrows = ([Cn[:, blk]] if Cn is not None else []) + ([Cmb[:, blk]] if Cmb is not None
                                                              else [])  # fmt: skip
        if absrows:
            Y = np.vstack(absrows) @ aWb
            if Cn is not None:
                hnum += Y[:R]
            if Cmb is not None:
                bound += Y[-R:]
    vh, vl = dd.two_sum(acc, comp)
    bound = bound * (1 + 2 * gamma(vb) + 2 * nb * U) + prep.V * 2.0**-1074
    return vh, vl, bound, gh, hnum


def _dh_terms(prep: _Prep, gs: _Scaled, n_idx: Array, d_idx: Array) -> tuple[Array, ...]:
    """sum_v G~_nv W_vd at (n, d) pairs in double-double (column chunks): h, lo, the scale
    exponent and a radius."""
    R, V = gs.h.shape
    out = [np.zeros(n_idx.size), np.zeros(n_idx.size), gs.Q[n_idx].copy(), np.zeros(n_idx.size)]
    cols = np.unique(d_idx)
    per = max(1, CHUNK // max(1, R * V))
    for c0 in range(0, cols.size, per):
        cs = cols[c0 : c0 + per]
        Wc = prep.W[:, cs].astype(np.float64)  # V x c
        # each column times 2**s (exact, bar entries 2**-1074 below its largest), so that
        # subnormal columns lose nothing in the products; s goes into the exponent
        top = np.abs(Wc).max(axis=0, initial=0.0)
        s = np.where(top > 0, -np.frexp(top)[1], 0).astype(np.int64)
        Wc = _ldexp(Wc, s[None, :])
        shape = (R, V, cs.size)
        th, tl = dd.mul_d(np.broadcast_to(gs.h[:, :, None], shape),
                          np.broadcast_to(gs.lo[:, :, None], shape),
                          np.broadcast_to(Wc[None], shape))  # fmt: skip
        sh, sl, L = _dd_sum(th, tl, axis=1)  # R x c
        aW = np.abs(Wc)
        A = np.abs(gs.h) @ aW
        Rr = (gs.r + 2.0**-1072) @ aW
        radius = ((L + 2) * EPS_OP * A + Rr) * (1 + 2 * gamma(V) + 2.0**-40)
        radius += (V + 1) * 2.0**-1072
        sel = np.flatnonzero(np.isin(d_idx, cs))
        ns, j = n_idx[sel], np.searchsorted(cs, d_idx[sel])
        out[0][sel], out[1][sel], out[3][sel] = sh[ns, j], sl[ns, j], radius[ns, j]
        out[2][sel] = gs.Q[ns] - s[j]
    return tuple(out)


def _dh_dd(prep: _Prep, gs: _Scaled, pairs: tuple[Array, Array], out: _Grad) -> None:
    """Tier 2 for dL/dh at (n, d) pairs."""
    n_idx, d_idx = pairs
    if not n_idx.size:
        return
    vh, vl, q, rad = _dh_terms(prep, gs, n_idx, d_idx)
    val, ok = dd.ziv(vh, vl, q.astype(np.int32), rad, prep.fmt)
    _put(out, (n_idx, d_idx), val, ok, vh, vl, q, 2)


def _dw_terms(prep: _Prep, gc: _Scaled, vs: Array, ds: Array | None) -> tuple[Array, ...]:
    """sum_n G~_nv h_nd at (v, d) pairs in double-double (``ds`` None: sum_n G~_nv, for
    dL/db): h, lo, the scale exponent and a radius."""
    R = gc.h.shape[0]
    Gh, Gl, Gr = gc.h[:, vs], gc.lo[:, vs], gc.r[:, vs]
    hv = np.ones_like(Gh) if ds is None else prep.h[:, ds]
    top = np.abs(hv).max(axis=0, initial=0.0)  # each column times 2**s, as in _dh_terms
    s = np.where(top > 0, -np.frexp(top)[1], 0).astype(np.int64)
    hv = _ldexp(hv, s[None, :])
    th, tl = dd.mul_d(Gh, Gl, hv)
    sh, sl, L = _dd_sum(th, tl, axis=0)
    ah = np.abs(hv)
    A = (np.abs(Gh) * ah).sum(axis=0)
    Rr = ((Gr + 2.0**-1072) * ah).sum(axis=0)
    radius = ((L + 2) * EPS_OP * A + Rr) * (1 + 2 * gamma(R) + 2.0**-40) + (R + 1) * 2.0**-1072
    return sh, sl, gc.Q[vs] - s, radius


def _dw_dd(prep: _Prep, gc: _Scaled, vs: Array, ds: Array) -> tuple[Array, ...]:
    """Tier 2 for dL/dW at (v, d) pairs: (rounded, decided, h, lo, q)."""
    sh, sl, q, radius = _dw_terms(prep, gc, vs, ds)
    val, ok = dd.ziv(sh, sl, q.astype(np.int32), radius, prep.fmt)
    return val, ok, sh, sl, q


def _put(out: _Grad, where: tuple[Array, ...], val: Array, ok: Array, h: Array, lo: Array,
         q: Array, tier: int) -> None:  # fmt: skip
    """Record results at the index arrays ``where`` where decided (and not yet decided)."""
    fresh = ok & ~out.ok[where]
    idx = tuple(np.asarray(w)[fresh] for w in where)
    out.value[idx] = val[fresh]
    out.ok[idx] = True
    if out.h.size:
        out.h[idx], out.lo[idx], out.q[idx] = h[fresh], lo[fresh], q[fresh]
    out.tier[idx] = tier


class _Columns:
    """dL/dW: rounded values (float64, or float32 when compact), the double-doubles of the
    decided entries (when not compact), the entries still undecided, counts per tier."""

    def __init__(self, V: int, D: int, compact: bool, dtype: Any) -> None:
        self.value = np.zeros((V, D), dtype)
        shape = (0, D) if compact else (V, D)
        self.h, self.lo = np.zeros(shape), np.zeros(shape)
        self.q = np.zeros(shape, np.int64)
        self.left: tuple[Array, Array] = (np.zeros(0, np.int64), np.zeros(0, np.int64))
        self.tiers = np.zeros(4, np.int64)
        self.mid: dict[tuple[int, int], Any] = {}

    @property
    def keep(self) -> bool:
        return self.h.shape[0] > 0


class _Blas:
    """Tier 1 of dL/dW for classes ``blk``: v = G~^T h by BLAS and a bound B with
    [fl(v - B), fl(v + B)] around the exact G~^T h (see the module docstring)."""

    def __init__(self, prep: _Prep, gc: _Scaled) -> None:
        R, D = prep.h.shape
        c2 = gamma(R) + 3 * U
        self.gc, self.h = gc, prep.h
        grow = 1 + 2 * gamma(R + 2) + 2.0**-40  # what the BLAS sum may lose of r
        self.Bc = np.vstack([c2 * np.abs(gc.h) + gc.r * grow,
                             np.full((1, prep.V), (R + 2) * 2.0**-1074)])  # fmt: skip
        self.Hb = np.vstack([np.abs(prep.h), np.ones((1, D))])

    def __call__(self, blk: slice) -> tuple[Array, Array]:
        return self.gc.h[:, blk].T @ self.h, self.Bc[:, blk].T @ self.Hb


def _dw_pass(prep: _Prep, gc: _Scaled, out: _Columns, tier1: bool) -> None:
    """dL/dW by blocks of classes: tier 1 (formats below float64, large cases), then tier 2
    on what is left (or on everything); ``out.left`` keeps what neither decided."""
    h, fmt = prep.h, prep.fmt
    R, D = h.shape
    V = prep.V
    if tier1:
        blas = _Blas(prep, gc)
        Bc, Hb = blas.Bc, blas.Hb
        left_v, left_d = [], []
        for blk in _blocks(V, D):
            v, B = blas(blk)
            with np.errstate(over="ignore", invalid="ignore"):
                lo_end = v - B
                B += v  # the upper end, in place
                value, ok = _round_ends(lo_end, B, fmt)
            del lo_end, B
            Qb = gc.Q[blk]
            scaled = np.flatnonzero(Qb != 0)
            if scaled.size:
                vs = v[scaled]
                qs = np.broadcast_to(Qb[scaled, None], vs.shape).astype(np.int32)
                radius = (Bc[:, blk][:, scaled].T @ Hb) * _SAFE
                val2, ok2 = dd.ziv(vs, np.zeros_like(vs), qs, radius, fmt)
                value[scaled], ok[scaled] = val2, ok2
            out.value[blk] = value
            if out.keep:
                out.h[blk], out.q[blk] = v, Qb[:, None]
            rows_left = np.flatnonzero(~ok.all(axis=1))  # few: scan only their rows
            bv, bd = np.nonzero(~ok[rows_left])
            left_v.append(rows_left[bv] + blk.start)
            left_d.append(bd)
            out.tiers[1] += ok.size - bv.size
        vs, ds = np.concatenate(left_v), np.concatenate(left_d)
    else:
        vs, ds = (a.ravel() for a in np.indices((V, D)))
    keep_v, keep_d = [], []
    per = max(1, CHUNK // max(1, R))
    for i0 in range(0, vs.size, per):
        v_, d_ = vs[i0 : i0 + per], ds[i0 : i0 + per]
        val, ok, sh, sl, q = _dw_dd(prep, gc, v_, d_)
        out.value[v_[ok], d_[ok]] = val[ok]
        if out.keep:
            out.h[v_, d_], out.lo[v_, d_], out.q[v_, d_] = sh, sl, q
        out.tiers[2] += int(ok.sum())
        keep_v.append(v_[~ok])
        keep_d.append(d_[~ok])
    if keep_v:
        out.left = (np.concatenate(keep_v), np.concatenate(keep_d))


# -- exact part and transcendental part (tier 2b) ----------------------------------------------


class _Split:
    """For entries left undecided: G = E + T, with E's contribution summed exactly (Python
    Fractions over E's few nonzero entries: the targets and the reference class) and T's in
    double-double with a radius (``_dh_terms``, ``_dw_terms`` on T); the entry lies in
    [(E w + tau - r) / d, (E w + tau + r) / d], exact ends, rounded alike or not. This
    settles an exact part on (or next to) a rounding boundary plus a transcendental part too
    small for 106 bits to place (sums of inputs where p underflows, ties broken by e**-1000)."""

    def __init__(self, prep: _Prep, rows: _Rows) -> None:
        self.prep, self.rows = prep, rows
        self.E: dict[int, dict[int, Fraction]] = {}
        self._row: _Scaled | None = None
        self._col: _Scaled | None = None

    def exact_row(self, n: int) -> dict[int, Fraction]:
        if n not in self.E:
            t = options.row_targets(self.prep.case, int(self.prep.rows[n]))
            k = int(self.rows.k[n])
            row = {v: -x for v, x in enumerate(t) if x}
            row[k] = sum((x for v, x in enumerate(t) if v != k), Fraction(0))
            self.E[n] = row
        return self.E[n]

    def decide(self, exact: list[Fraction], parts: tuple[Array, ...]) -> list[Any]:
        """(rounded, 64-bit exact) or None per entry."""
        fmt, d = self.prep.fmt, self.prep.d
        out: list[Any] = []
        for e, h, lo, q, r in zip(exact, *(a.tolist() for a in parts)):
            if not (math.isfinite(h) and math.isfinite(r)):
                out.append(None)
                continue
            scale = Fraction(2) ** int(q)
            centre = (Fraction(h) + Fraction(lo)) * scale
            radius = Fraction(r * _SAFE) * scale
            low, high = fmt.round((e + centre - radius) / d), fmt.round((e + centre + radius) / d)
            same = low == high and math.copysign(1, low) == math.copysign(1, high)
            out.append((low, (e + centre) / d) if same and math.isfinite(low) else None)
        return out

    def dh(self, n_idx: Array, d_idx: Array) -> list[Any]:
        if self._row is None:
            self._row = _Scaled(self.rows.T, 1)
        parts = _dh_terms(self.prep, self._row, n_idx, d_idx)
        W = self.prep.W
        exact = [sum((x * Fraction(float(W[v, d_])) for v, x in self.exact_row(n).items()),
                     Fraction(0)) for n, d_ in zip(n_idx.tolist(), d_idx.tolist())]  # fmt: skip
        return self.decide(exact, parts)

    def columns(self, vs: Array, ds: Array | None) -> list[Any]:
        """dL/dW at (v, d) pairs, or dL/db at v (``ds`` None)."""
        if self._col is None:
            self._col = _Scaled(self.rows.T, 0)
        parts = _dw_terms(self.prep, self._col, vs, ds)
        R = self.prep.h.shape[0]
        rows = [self.exact_row(n) for n in range(R)]
        h = self.prep.h
        exact = []
        for i, v in enumerate(vs.tolist()):
            w = [1.0] * R if ds is None else h[:, int(ds[i])].tolist()
            exact.append(sum((rows[n][v] * Fraction(w[n]) for n in range(R) if v in rows[n]),
                             Fraction(0)))  # fmt: skip
        return self.decide(exact, parts)


# -- mpmath (tier 3) --------------------------------------------------------------------------


class _Mpmath:
    """The mpmath units of the kept rows on their exact logits (built on first use, in one
    pass over W for all the rows asked for)."""

    def __init__(self, prep: _Prep) -> None:
        self.prep = prep
        self.x: dict[int, Array] = {}
        self.grad_units: dict[int, Softmax] = {}
        self.soft = prep.case.loss.labels is not LabelKind.SPARSE

    def logits(self, idx: list[int]) -> None:
        """Exact logits of kept rows ``idx`` (local indices)."""
        need = [i for i in idx if i not in self.x]
        if not need:
            return
        prep = self.prep
        V = prep.V
        out = {i: np.empty(V, dtype=object) for i in need}
        h = prep.h[need]
        for blk in _blocks(V, h.shape[1]):
            Wb = prep.W[blk].astype(np.float64)
            bb = None if prep.b is None else prep.b[blk]
            fr = dot.products(h, Wb, bb).fractions()
            for j, i in enumerate(need):
                out[i][blk] = fr[j]
        for i in need:
            out[i][prep.mask] = -math.inf
            self.x[i] = out[i]

    def unit(self, i: int, grad: bool) -> Softmax:
        self.logits([i])
        targets = options.row_targets(self.prep.case, int(self.prep.rows[i]))
        if not grad:
            return Softmax(self.x[i], targets, False, self.soft)
        if i not in self.grad_units:
            self.grad_units[i] = Softmax(self.x[i], targets, True, self.soft)
        return self.grad_units[i]


def _certify(evaluate: Callable[[int], list[Any]], fmt: Format) -> tuple[list[Any], int]:
    used = [0]

    def tracked(prec: int) -> list[Any]:
        used[0] = prec
        return evaluate(prec)

    return E.certify_all(tracked, fmt), used[0]


def _tier3_dh(prep: _Prep, mp: _Mpmath, pairs: tuple[Array, Array], out: _Grad) -> None:
    n_idx, d_idx = pairs
    d, no_nan, fmt = prep.d, prep.no_nan, prep.fmt
    for n in np.unique(n_idx).tolist():
        cols = d_idx[n_idx == n]
        unit = mp.unit(n, True)
        Wcols = [[Fraction(float(v)) for v in row] for row in
                 prep.W[:, cols].astype(np.float64).tolist()]  # fmt: skip

        def evaluate(prec: int, unit: Softmax = unit, Wcols: list = Wcols) -> list[Any]:
            G = unit(prec)[1]
            return [options.divide(q, d, no_nan, prec)
                    for q in linear.shares_dot(unit, G, Wcols, prec)]  # fmt: skip

        pairs_, _ = _certify(evaluate, fmt)
        for c, (v, q) in zip(cols.tolist(), pairs_):
            out.value[n, c], out.ok[n, c], out.tier[n, c] = v, True, 3
            _set_mid(out, (n, c), q)


def _set_mid(out: _Grad, where: tuple[int, ...], q: Any) -> None:
    """Store a 64-bit midpoint of an enclosure as h + lo (2**q) in the result's arrays."""
    if not out.h.size:
        return
    m = midpoint(q)
    if not CTX.isfinite(m) or m == 0:
        out.h[where], out.lo[where], out.q[where] = float(m), 0.0, 0
        return
    man, exp = CTX.frexp(m)
    hh = float(man)
    out.h[where], out.lo[where], out.q[where] = hh, float(man - hh), int(exp)


def _tier3_columns(prep: _Prep, mp: _Mpmath, dw: list[tuple[int, int]], db: list[int]
                   ) -> tuple[list[Any], list[Any]]:  # fmt: skip
    """dL/dW at (v, d) and dL/db at v as the mpmath path computes them: rows with equal
    logits and targets summed first, then ``linear.weighted_sum`` of each class's G column."""
    R = prep.h.shape[0]
    mp.logits(list(range(R)))
    units = {n: mp.unit(n, True) for n in range(R)}
    members = linear.row_groups(units)
    ds = sorted({d_ for _, d_ in dw})
    summed = {d_: [linear.sum_exact(prep.h[rows, d_]) for rows in members] for d_ in ds}
    counts = [Fraction(len(rows)) for rows in members]
    d, no_nan = prep.d, prep.no_nan

    def evaluate(prec: int) -> list[Any]:
        G = {n: unit(prec)[1] for n, unit in units.items()}
        first = [G[rows[0]] for rows in members]
        out = [linear.weighted_sum([g[v] for g in first], summed[d_], prec) for v, d_ in dw]
        out += [linear.weighted_sum([g[v] for g in first], counts, prec) for v in db]
        return [options.divide(q, d, no_nan, prec) for q in out]

    pairs, _ = _certify(evaluate, prep.fmt)
    return pairs[: len(dw)], pairs[len(dw) :]


# -- lazily computed arrays -------------------------------------------------------------------


class LazyArray:
    """A read-only array computed on access, in blocks of rows (``block(r0, r1)`` gives rows
    r0..r1-1): ``shape``, ``dtype``, indexing by ints and slices (and anything numpy takes,
    through the whole array), ``np.asarray`` and ``ravel`` build it whole."""

    def __init__(self, shape: tuple[int, ...], dtype: Any,
                 block: Callable[[int, int], Array]) -> None:  # fmt: skip
        self.shape, self.dtype, self._block = tuple(shape), np.dtype(dtype), block

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> Any:
        key = key if isinstance(key, tuple) else (key,)
        first, rest = key[0], key[1:]
        if isinstance(first, (int, np.integer)):
            i = range(self.shape[0])[int(first)]
            return self._block(i, i + 1)[(0, *rest)]
        if isinstance(first, slice):
            r = range(self.shape[0])[first]
            if not len(r):
                return np.asarray(self)[key]
            lo, hi = min(r), max(r) + 1
            chunk = self._block(lo, hi)
            return chunk[(slice(r.start - lo, None if r.stop - lo < 0 else r.stop - lo,
                                r.step), *rest)]  # fmt: skip
        return np.asarray(self)[key]

    def __array__(self, dtype: Any = None, copy: Any = None) -> Array:
        out = np.empty(self.shape, dtype=self.dtype)
        step = max(1, (1 << 18) // max(1, math.prod(self.shape[1:])))
        for r0 in range(0, self.shape[0], step):
            out[r0 : r0 + step] = self._block(r0, min(self.shape[0], r0 + step))
        return out if dtype is None else out.astype(dtype)

    def ravel(self) -> Array:
        return np.asarray(self).ravel()

    def reshape(self, *shape: Any) -> Array:
        return np.asarray(self).reshape(*shape)


def _mpf_array(h: Array, lo: Array, q: Array) -> Array:
    """(h + lo) 2**q as 64-bit mpmath numbers (an object array)."""
    out = np.empty(h.shape, dtype=object)
    flat = out.reshape(-1)
    for i, (a, b, e) in enumerate(zip(h.ravel().tolist(), lo.ravel().tolist(),
                                      q.ravel().tolist())):  # fmt: skip
        if not math.isfinite(a):
            flat[i] = CTX.mpf(a)
            continue
        raw = libmp.mpf_add(libmp.from_float(a), libmp.from_float(b), 64)
        flat[i] = CTX.make_mpf(libmp.mpf_shift(raw, int(e)))
    return out


def _approx(h: Array, lo: Array, q: Array) -> Array:
    with np.errstate(all="ignore"):
        return _ldexp(h + lo, q)


# -- the whole case ---------------------------------------------------------------------------


def evaluate(case: Case, grad: bool) -> Any:
    """The oracle's result for a linear case (an ``OracleResult``), or None when the case is
    declined (see the module docstring); the same results as the mpmath path."""
    result, _ = evaluate_with_stats(case, grad)
    return result


def evaluate_with_stats(case: Case, grad: bool) -> tuple[Any, dict[str, Any]]:
    """``evaluate`` and counts: ``logits``, ``logit_fallback`` (logits that needed integer
    arithmetic), ``entries`` and ``tier1``/``tier2``/``tier3``/``zero`` (gradient entries
    decided by BLAS, double-double, mpmath, or exactly zero by their inputs), ``rows_mpmath``."""
    from stabcheck.oracle import Gradient, OracleResult

    prep = _prepare(case)
    if prep is None:
        return None, {}
    stats = prep.stats
    fmt = case.format
    N, D = case.predictions.shape
    V = prep.V
    R = prep.h.shape[0]
    weights = _Weights(prep)
    if R:
        got = _logits(prep, weights)
        if got is None:
            return None, stats
        hi, lo, bnd, a, wmax = got
        valid = ~prep.mask
        if not np.isfinite(hi[:, valid]).all() or (np.abs(hi[:, valid]) >= MAX_LOGIT).any():
            return None, stats
        Ymax = float(np.max(prep.Yh + prep.rY)) * 2
        hmax = float(np.abs(prep.h).max(initial=0.0))
        if not (Ymax * max(wmax, 1.0) * V < 2.0**900 and Ymax * max(hmax, 1.0) * R < 2.0**900):
            return None, stats
        rows = _rows(prep, hi, lo, bnd, grad)
        if rows is None:
            return None, stats
    else:
        stats.update(logits=0, logit_fallback=0)
        a = np.zeros((0, V))
        rows = None
    mp = _Mpmath(prep)

    # float64 approximations for condition numbers (``linear.Approx``, blockwise)
    y = prep.th + prep.tl
    if rows is not None:
        Bv = y.sum(axis=1, keepdims=True)
        with np.errstate(all="ignore"):
            Gap = Bv * rows.p - y
            dG = Bv * rows.p * (a + (rows.p * a).sum(axis=1, keepdims=True))
            Cn = dG + np.abs(Gap)
    else:
        Gap = Cn = np.zeros((0, V))

    # the gradient of the rows (dL/dh): pass over W
    tier1_dh = grad and fmt.precision < 53 and R * V * D >= DD_ALL
    gs = _Scaled.of(rows, 1) if (grad and rows is not None) else None
    if R:
        vh, vl, bound, gh, hnum = _pass_over_w(prep, weights, gs, Gap, Cn if grad else None,
                                               tier1_dh)  # fmt: skip
    else:
        vh = vl = bound = gh = hnum = np.zeros((0, D))
    weights.kept.clear()

    # values
    reduced = case.reduced
    value_rows = np.zeros(R)
    value_ok = np.zeros(R, bool)
    value_exact: dict[int, Any] = {}
    precs = np.full(N, FAST_PRECISION, np.int64)
    if rows is not None:
        value_rows, value_ok = rows.vval.copy(), rows.vok.copy()
    L_approx = np.zeros(R)
    if rows is not None:
        L_approx = _approx(rows.Lh, rows.Ll, rows.Lq)
    if not reduced:
        for i in np.flatnonzero(~value_ok).tolist():
            unit = mp.unit(i, False)
            pairs, prec = _certify(lambda p, unit=unit: [unit(p)[0]], fmt)
            ((v, q),) = pairs
            value_rows[i] = v
            value_exact[i] = midpoint(q)
            L_approx[i] = float(midpoint(q))
            precs[prep.rows[i]] = prec
        stats["rows_mpmath"] = int((~value_ok).sum())
    else:
        total = _reduced_value(prep, rows)
        stats["rows_mpmath"] = 0
        if total is None:
            units = [mp.unit(i, False) for i in range(R)]

            def reduced_eval(prec: int) -> list[Any]:
                summed = options.total([u(prec)[0] for u in units] + [Fraction(0)], prec)
                return [options.divide(summed, prep.d, prep.no_nan, prec)]

            pairs, prec = _certify(reduced_eval, fmt)
            ((rv, rq),) = pairs
            r_exact = midpoint(rq)
            r_fast = False
            stats["rows_mpmath"] = R
        else:
            rv, r_exact = total
            r_fast = True

    # conditions of the values: (sum |h| |G W| + sum |G| a) / L
    with np.errstate(all="ignore"):
        num = (np.abs(prep.h) * np.abs(gh)).sum(axis=1) + (np.abs(Gap) * a).sum(axis=1)
        kappa = np.where(L_approx != 0, num / np.abs(L_approx), np.where(num == 0, 0.0, np.inf))
        kappa = np.where(np.isfinite(num), kappa, np.nan)

    result: dict[str, Any] = {"case": case}
    fast_rows = np.ones(N, bool)
    fast_rows[prep.rows] = value_ok if not reduced else True
    if not reduced:
        value = np.zeros(N)
        value[prep.rows] = value_rows
        condition = np.zeros(N)
        condition[prep.rows] = kappa
        exact_vals = dict(value_exact)

        def lazy_exact() -> Array:
            out = np.array([CTX.mpf(0)] * N, dtype=object)
            if rows is not None:
                mp_ = _mpf_array(rows.Lh, rows.Ll, rows.Lq)
                for i in range(R):
                    out[prep.rows[i]] = exact_vals.get(i, mp_[i])
            return out

        result.update(value=value, condition=condition, precision=precs, lazy_exact=lazy_exact)
    else:
        weights_ = np.abs(L_approx)
        whole = weights_.sum()
        with np.errstate(all="ignore"):
            cond = (kappa * weights_)[weights_ > 0].sum() / whole if whole else math.nan
        result.update(value=np.array(rv), condition=np.array(cond),
                      precision=np.array(FAST_PRECISION if r_fast else 0),
                      lazy_exact=lambda: np.array(r_exact, dtype=object))  # fmt: skip
    if not grad:
        result["fast"] = fast_rows if not reduced else np.array(bool(r_fast))
        return OracleResult(**result), stats

    # dL/dh
    dh = _new_grad((R, D))
    if R and rows is not None:
        if tier1_dh:
            val, ok = dd.ziv(vh, vl, np.broadcast_to(gs.Q[:, None], vh.shape).astype(np.int32),
                             bound, fmt)  # fmt: skip
            qq = np.broadcast_to(gs.Q[:, None], vh.shape)
            _put(dh, np.nonzero(np.ones((R, D), bool)), val.ravel(), ok.ravel(), vh.ravel(),
                 vl.ravel(), qq.ravel(), 1)  # fmt: skip
        todo = np.nonzero(~dh.ok)
        _dh_dd(prep, gs, todo, dh)
        _structural_dh(prep, rows, dh)
    # dL/dW and dL/db
    compact = V * D > COMPACT
    dW = _Columns(V, D, compact, np.float32 if compact and fmt.precision < 53 else np.float64)
    has_bias = case.operands.get("linear_bias") is not None
    db = _new_grad((V,) if has_bias else (0,))
    gc = _Scaled.of(rows, 0) if rows is not None else None
    if R and gc is not None:
        tier1_dw = fmt.precision < 53 and R * V * D >= DD_ALL
        _dw_pass(prep, gc, dW, tier1_dw)
        if has_bias:
            sh, sl, L = _dd_sum(gc.h, gc.lo, axis=0)
            A = np.abs(gc.h).sum(axis=0)
            radius = ((L + 1) * EPS_OP * A + gc.r.sum(axis=0)) * (1 + 2 * gamma(R) + 2.0**-40)
            val, ok = dd.ziv(sh, sl, gc.Q.astype(np.int32), radius, fmt)
            _put(db, (np.arange(V),), val, ok, sh, sl, gc.Q, 2)
        _structural_dw(prep, rows, dW, db)
    else:  # no row has a gradient: every entry is exactly +0
        db.ok[:] = True
        dW.tiers[0] += V * D
    if rows is not None and ((~dh.ok).any() or dW.left[0].size or (~db.ok).any()):
        _tier2b(prep, rows, dh, dW, db)
    dh_left = np.nonzero(~dh.ok)
    dW_left = list(zip(dW.left[0].tolist(), dW.left[1].tolist()))
    db_left = np.flatnonzero(~db.ok).tolist()
    if dh_left[0].size:
        _tier3_dh(prep, mp, dh_left, dh)
    if dW_left or db_left:
        pw, pb = _tier3_columns(prep, mp, dW_left, db_left)
        for (v_, d_), (val_, q_) in zip(dW_left, pw):
            dW.value[v_, d_] = val_
            dW.mid[(v_, d_)] = midpoint(q_)
        dW.tiers[3] += len(dW_left)
        for v_, (val_, q_) in zip(db_left, pb):
            db.value[v_], db.ok[v_], db.tier[v_] = val_, True, 3
            _set_mid(db, (v_,), q_)
    counts = np.bincount(np.concatenate([dh.tier.ravel(), db.tier.ravel()]), minlength=4)
    counts = counts + dW.tiers
    stats.update(
        entries=int(dh.tier.size + V * D + db.tier.size),
        zero=int(counts[0]),
        tier1=int(counts[1]),
        tier2=int(counts[2]),
        tier3=int(counts[3]),
    )
    if dW_left or db_left:
        fast_rows[prep.rows] = False
    if dh_left[0].size:
        fast_rows[prep.rows[np.unique(dh_left[0])]] = False

    # dL/dh as the case's N x D
    grad_h = np.zeros((N, D))
    grad_h[prep.rows] = dh.value
    dh_approx = _approx(dh.h, dh.lo, dh.q)
    dfl = float(prep.d) or 1.0  # as linear.gradients: numerators not divided by d = 0
    with np.errstate(all="ignore"):
        hcond_rows = linear.relative(hnum / dfl, dh_approx)
    hcond, hscale = np.zeros((N, D)), np.zeros((N, D))
    hcond[prep.rows], hscale[prep.rows] = hcond_rows, hnum / dfl

    def lazy_gradient_exact() -> Array:
        out = np.array([CTX.mpf(0)] * (N * D), dtype=object).reshape(N, D)
        out[prep.rows] = _mpf_array(dh.h, dh.lo, dh.q)
        return out

    absh = np.abs(prep.h)
    Cn_d = Cn / dfl if R else Cn

    def dw_exact_block(v0: int, v1: int) -> tuple[Array, Array, Array]:
        if dW.keep:
            return dW.h[v0:v1], dW.lo[v0:v1], dW.q[v0:v1]
        if not R:
            z = np.zeros((v1 - v0, D))
            return z, z, np.zeros((v1 - v0, D), np.int64)
        vs, ds = np.meshgrid(np.arange(v0, v1), np.arange(D), indexing="ij")
        _, _, sh_, sl_, q_ = _dw_dd(prep, gc, vs.ravel(), ds.ravel())
        shape = (v1 - v0, D)
        return sh_.reshape(shape), sl_.reshape(shape), q_.reshape(shape)

    def dw_exact(v0: int, v1: int) -> Array:
        hh, ll, qq = dw_exact_block(v0, v1)
        out = _mpf_array(hh, ll, qq)
        for (v_, d_), m in dW.mid.items():
            if v0 <= v_ < v1:
                out[v_ - v0, d_] = m
        return out

    blas = _Blas(prep, gc) if (R and compact) else None

    def dw_condition(v0: int, v1: int) -> Array:
        if blas is None:
            hh, ll, qq = dw_exact_block(v0, v1)
            approx = _approx(hh, ll, qq)
        else:  # BLAS, and double-double where its bound does not keep it from zero
            v, B = blas(slice(v0, v1))
            near = np.nonzero(~(B < np.abs(v) * 2.0**-20))
            if near[0].size:
                _, _, sh_, sl_, _ = _dw_dd(prep, gc, near[0] + v0, near[1])
                v[near] = sh_ + sl_
            approx = _ldexp(v, gc.Q[v0:v1, None])
        for (v_, d_), m in dW.mid.items():
            if v0 <= v_ < v1:
                approx[v_ - v0, d_] = float(m)
        with np.errstate(all="ignore"):
            return linear.relative(dw_scale(v0, v1), approx)

    def dw_scale(v0: int, v1: int) -> Array:
        """The conditions' numerators over d (``Gradient.scale``)."""
        return Cn_d[:, v0:v1].T @ absh if R else np.zeros((v1 - v0, D))

    if compact:
        w_cond: Any = LazyArray((V, D), np.float64, dw_condition)
        w_exact: Any = LazyArray((V, D), object, dw_exact)
        w_scale: Any = LazyArray((V, D), np.float64, dw_scale)
    else:
        w_cond, w_scale = dw_condition(0, V), dw_scale(0, V)
        w_exact = dw_exact(0, V) if V * D <= EAGER_EXACT else LazyArray((V, D), object, dw_exact)
    operand = {"linear_weight": Gradient(dW.value, w_cond, w_exact, scale=w_scale)}
    if has_bias:
        b_approx = _approx(db.h, db.lo, db.q)
        bnum = Cn_d.sum(axis=0) if R else np.zeros(V)
        with np.errstate(all="ignore"):
            b_cond = linear.relative(bnum, b_approx)
        operand["linear_bias"] = Gradient(db.value, b_cond, _mpf_array(db.h, db.lo, db.q),
                                          scale=bnum)  # fmt: skip
    result.update(
        gradient=grad_h,
        gradient_condition=hcond,
        gradient_scale=hscale,
        lazy_gradient_exact=lazy_gradient_exact,
        operand_gradients=operand,
        fast=fast_rows if not reduced else np.array(bool(r_fast and fast_rows.all())),
    )
    return OracleResult(**result), stats


def _tier2b(prep: _Prep, rows: _Rows, dh: _Grad, dW: _Columns, db: _Grad) -> None:
    """Tier 2b (``_Split``) on the entries still undecided."""
    split = _Split(prep, rows)
    n_idx, d_idx = np.nonzero(~dh.ok)
    if n_idx.size:
        for n, d_, got in zip(n_idx.tolist(), d_idx.tolist(), split.dh(n_idx, d_idx)):
            if got is not None:
                dh.value[n, d_], dh.ok[n, d_], dh.tier[n, d_] = got[0], True, 2
                _set_mid(dh, (n, d_), got[1])
    vs, ds = dW.left
    if vs.size:
        got = split.columns(vs, ds)
        done = np.array([g is not None for g in got])
        for v, d_, g in zip(vs.tolist(), ds.tolist(), got):
            if g is not None:
                dW.value[v, d_] = g[0]
                dW.mid[(v, d_)] = midpoint(g[1])
                if dW.keep:
                    _set_mid_columns(dW, v, d_, g[1])
        dW.tiers[2] += int(done.sum())
        dW.left = (vs[~done], ds[~done])
    vb = np.flatnonzero(~db.ok)
    if vb.size:
        for v, g in zip(vb.tolist(), split.columns(vb, None)):
            if g is not None:
                db.value[v], db.ok[v], db.tier[v] = g[0], True, 2
                _set_mid(db, (v,), g[1])


def _set_mid_columns(dW: _Columns, v: int, d_: int, q: Any) -> None:
    m = midpoint(q)
    man, exp = CTX.frexp(m) if m else (CTX.mpf(0), 0)
    hh = float(man)
    dW.h[v, d_], dW.lo[v, d_], dW.q[v, d_] = hh, float(man - hh), int(exp)


def _reduced_value(prep: _Prep, rows: _Rows | None) -> tuple[float, Any] | None:
    """The reduced loss from the rows' enclosures: (rounded, 64-bit exact) or None."""
    fmt = prep.fmt
    if prep.d == 0:  # every row ignored: 0/0 is NaN (PyTorch), 0 (Keras)
        return (0.0, CTX.mpf(0)) if prep.no_nan else (math.nan, CTX.mpf(math.nan))
    if rows is None or rows.Lzero.all():  # exactly 0
        return 0.0, CTX.mpf(0)
    live = ~rows.Lzero
    Lp, Lpl = _ldexp(rows.Lh[live], rows.Lq[live]), _ldexp(rows.Ll[live], rows.Lq[live])
    rp = _ldexp(rows.Lr[live], rows.Lq[live]) * _SAFE + 2.0**-1073
    Th, Tl, levels = dd.sum_rows(Lp[None, :], Lpl[None, :])
    rT = (levels * EPS_OP * Th + rp.sum()) * _SAFE
    q = np.zeros(1, np.int32)
    if prep.shift is not None:
        q -= prep.shift
    else:
        ih, il, rel = prep.dinv
        nh, nl = dd.mul(Th, Tl, np.full(1, ih), np.full(1, il))
        rT = rT * ih * _SAFE + (rel + EPS_OP) * np.abs(nh)
        Th, Tl = nh, nl
    val, ok = dd.ziv(Th, Tl, q, rT, fmt)
    if not ok[0]:
        return None
    return float(val[0]), _mpf_array(Th, Tl, q.astype(np.int64))[0]


def _structural_dh(prep: _Prep, rows: _Rows, dh: _Grad) -> None:
    """dL/dh entries that are exactly 0: W_vd = 0 wherever G_nv is not exactly 0."""
    n_idx, d_idx = np.nonzero(~dh.ok)
    for n, d_ in zip(n_idx.tolist(), d_idx.tolist()):
        live = ~rows.Gzero[n]
        if not (prep.W[live, d_].astype(np.float64) != 0).any():
            dh.value[n, d_], dh.ok[n, d_], dh.tier[n, d_] = 0.0, True, 0
            dh.h[n, d_] = dh.lo[n, d_] = 0.0


def _structural_dw(prep: _Prep, rows: _Rows, dW: _Columns, db: _Grad) -> None:
    """dL/dW and dL/db entries that are exactly 0: h_nd = 0 wherever G_nv is not 0."""
    live = ~rows.Gzero  # R x V
    v_idx, d_idx = dW.left
    if v_idx.size:
        zero = ~(live[:, v_idx] & (prep.h[:, d_idx] != 0)).any(axis=0)
        vz, dz = v_idx[zero], d_idx[zero]
        dW.value[vz, dz] = 0.0
        if dW.keep:
            dW.h[vz, dz] = dW.lo[vz, dz] = 0.0
        dW.tiers[0] += int(zero.sum())
        dW.left = (v_idx[~zero], d_idx[~zero])
    vb = np.flatnonzero(~db.ok)
    zero = vb[~live[:, vb].any(axis=0)]
    db.value[zero], db.ok[zero], db.tier[zero] = 0.0, True, 0
    db.h[zero] = db.lo[zero] = 0.0
