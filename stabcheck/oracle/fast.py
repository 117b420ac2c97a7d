"""The oracle's fast path: whole cases at once in numpy double-double arithmetic
(``ddmath``), each result accepted only when its rigorous enclosure rounds to a single
value of the format (Ziv's test, refusing enclosures that touch a halfway point); every
other unit (an element, or a whole row) is left to the mpmath units.

Covered, value and gradient, in every format: softmax and sparse softmax cross-entropy,
sigmoid and weighted cross-entropy, binary, categorical and sparse categorical
cross-entropy. Left to mpmath: NaN and infinite inputs (except -inf logits in softmax rows,
decided exactly), probabilities of exactly 0 or 1 (binary), rows of softmax losses whose
labels are all zero or with a finite logit more than 1500 below the maximum, |x| > 1500
(sigmoid), and any value or gradient that comes out non-finite, overflowing, exactly
zero or too near a rounding boundary (exact rational results, exact ties broken by a
tiny transcendental part, cancellation past what 106 bits resolve).

Every quantity is a double-double x with a bound on |x - exact|: relative (``EPS_*``,
from the operations' published bounds and the proofs in ``ddmath``; the bounds of a
formula are the sums of its parts' bounds, each stated beside the code) plus an absolute
``ETA`` = 2**-1050 wherever a product or a scaled term may underflow (it covers 2**17
roundings of 2**-1075, or dropped terms below 2**-1073, each). Quantities that may be tiny
are kept as M 2**q with an integer exponent array q, so that subnormal results of every
format are rounded from a relative enclosure. A result computed from exact inputs without
rounding (a zero exact part, a zero label, Y - n y_i = 0) is exactly what it says.
``FAST_PRECISION`` (106) is what ``OracleResult.precision`` reports for the units decided
here; condition numbers are 53-bit estimates with an extended exponent range, like the
mpmath units'.

With numba installed (``pip install 'stabcheck[fast]'``; ``STABCHECK_NUMBA=0`` turns it
off), the two passes over every cell of a softmax case run compiled (``numba_kernels``):
the same functions of single cells, on the same arithmetic; only plain (inexact, bounded
in any order) row sums are added in another order, so the rounded results are the same.
"""

from __future__ import annotations

import math
import os
import types
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache

import numpy as np
from mpmath import libmp

from stabcheck.case import Case
from stabcheck.formats import Format
from stabcheck.losses import LabelKind
from stabcheck.oracle import ddmath as dd
from stabcheck.oracle.ddmath import EPS_EXP, EPS_LOG, EPS_OP
from stabcheck.oracle.enclosure import CTX

Array = np.ndarray

FAST_PRECISION = 106
ETA = 2.0**-1050  # absolute error from underflow anywhere in a unit
TINY = -900  # exponent below which a sum or a product is kept scaled
TILE = 4096  # cells per block of the passes over every cell of a softmax case


@dataclass
class Part:
    """Results of one quantity (the values, or the gradient) of a case: the rounded
    values where ``ok`` (certain), the double-double and exponent of each (the exact value
    is about (h + lo) 2**q, for reports) and condition numbers."""

    value: Array
    ok: Array
    h: Array
    lo: Array
    q: Array
    condition: Array

    @classmethod
    def empty(cls, shape: tuple[int, ...]) -> Part:
        z = np.zeros(shape)
        return cls(z.copy(), np.zeros(shape, dtype=bool), z.copy(), z.copy(),
                   np.zeros(shape, dtype=np.int32), z.copy())  # fmt: skip

    def put(self, where: Array, value: Array, ok: Array, h: Array, lo: Array, q: Array) -> None:
        self.value[where], self.ok[where] = value, ok
        self.h[where], self.lo[where], self.q[where] = h, lo, q


def evaluate(case: Case, grad: bool) -> tuple[Part, Part | None]:
    """The fast path's results for ``case``: (value part, gradient part); parts that decide
    nothing for a formula it does not cover (``LossSpec.oracle``)."""
    spec, fmt = case.loss, case.format
    x = np.asarray(case.predictions, dtype=np.float64)  # read only
    formula = spec.oracle
    if formula in ("binary", "sigmoid"):
        z = case.labels.astype(np.float64)
        if formula == "binary":
            return binary(x, z, fmt, grad)
        return weighted(x, z, case.params.get("pos_weight", 1.0), fmt, grad)
    if formula not in ("softmax", "categorical"):
        return nothing(case, grad)
    if spec.labels is LabelKind.SPARSE:
        if formula == "softmax":
            return softmax(x, None, fmt, grad, soft=False, sparse=case.labels)
        y = np.zeros_like(x)
        y[np.arange(len(x)), case.labels] = 1.0
        return categorical(x, y, fmt, grad, soft=False)
    y = case.labels.astype(np.float64)
    if formula == "categorical":
        return categorical(x, y, fmt, grad, soft=True)
    return softmax(x, y, fmt, grad, soft=True)


def nothing(case: Case, grad: bool) -> tuple[Part, Part | None]:
    """Parts that decide no unit (the pure mpmath path)."""
    shape = case.output_shape
    return Part.empty(shape), (Part.empty(case.predictions.shape) if grad else None)


def to_mpf(part: Part) -> np.ndarray:
    """The decided cells' (h + lo) 2**q as 64-bit mpmath numbers (None elsewhere)."""
    out = np.empty(part.h.shape, dtype=object)
    flat = out.reshape(-1)
    hs, los, qs = part.h.reshape(-1), part.lo.reshape(-1), part.q.reshape(-1)
    for i in np.flatnonzero(part.ok.reshape(-1)).tolist():
        h = float(hs[i])
        if not math.isfinite(h):
            flat[i] = CTX.mpf(h)
            continue
        raw = libmp.mpf_add(libmp.from_float(h), libmp.from_float(float(los[i])), 64)
        flat[i] = CTX.make_mpf(libmp.mpf_shift(raw, int(qs[i])))
    return out


class _Ziv:
    """Collects (h, lo, q, radius) enclosures of the cells of one array and rounds them."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.h, self.lo, self.r = np.zeros(shape), np.zeros(shape), np.full(shape, np.inf)
        self.q = np.zeros(shape, dtype=np.int32)

    def set(self, where: Array, h: Array, lo: Array, q: Array | int, radius: Array) -> None:
        self.h[where], self.lo[where], self.q[where], self.r[where] = h, lo, q, radius

    def round(self, fmt: Format) -> tuple[Array, Array]:
        return dd.ziv(self.h, self.lo, self.q, self.r, fmt)


# -- extended-range floats for condition numbers: (mantissa, int32 exponent) ------------------

XF = tuple[Array, Array]
_NO_EXP = -(1 << 26)


def _xf(v: Array) -> XF:
    m, e = np.frexp(v)
    return m, np.where(m == 0, _NO_EXP, e.astype(np.int32))


def _xabs(a: XF) -> XF:
    return np.abs(a[0]), a[1]


def _xscaled(m: Array, q: Array | int) -> XF:
    f, e = _xf(m)
    return f, np.where(f == 0, _NO_EXP, e + q)


def _xmul(a: XF, b: XF) -> XF:
    f, e = _xf(a[0] * b[0])
    return f, np.where(f == 0, _NO_EXP, e + a[1] + b[1])


def _xdiv(a: XF, b: XF) -> XF:
    f, e = _xf(a[0] / b[0])
    return f, np.where(f == 0, _NO_EXP, e + a[1] - b[1])


def _ldexp(m: Array, e: Array) -> Array:
    return np.ldexp(m, np.asarray(e, dtype=np.int32))  # numpy's ldexp is slow on int64


def _xadd(a: XF, b: XF, sign: float = 1.0) -> XF:
    e = np.maximum(a[1], b[1])
    return _xscaled(_ldexp(a[0], a[1] - e) + sign * _ldexp(b[0], b[1] - e), e)


def _xfloat(a: XF) -> Array:
    return _ldexp(a[0], a[1])


# -- softmax cross-entropy ------------------------------------------------------------------


def _exp_cell(x, m, low, qT, sx, unlabelled, tables):
    """Pass 1 on cells of softmax rows: e = exp(x - m) = M 2**q (``exp_core``) below the
    maximum m, M = 0 at ties and -inf; the terms 2**(q - qT) M of T (high and low parts);
    and |x| 2**-sx 2**(q - qT) M, everywhere and where unlabelled. On arrays, or (compiled
    by numba) on single numbers."""
    xf = np.maximum(x, low)  # -inf logits as the least finite one (low)
    below = (xf < m) & (x > -np.inf)
    rh, rl = dd.two_sum(xf, -m)
    mh, ml, q = dd.exp_core(rh, rl, tables)
    mh, ml, q = mh * below, ml * below, np.int32(q)
    f = np.ldexp(1.0 * below, q - qT)  # 0 below 2**-1074: such a term (< 2**-1073) is dropped
    th, tl = mh * f, ml * f
    w = np.ldexp(np.abs(xf), -sx) * th
    return mh, ml, q, th, tl, w, w * unlabelled


def _grad_cell(mh, ml, q, yzh, yzl, izh, w, x, soft):
    """Pass 2 on cells of softmax rows: 2**q M Y/Z as a double-double A with exponent q,
    and kappa(g) = |x| (1 - p) + W - |x| p (+ 1 with soft labels), p = 2**q M (1/Z) (53
    bits). On arrays, or (compiled by numba) on single numbers."""
    ah, al = dd.mul(mh, ml, yzh, yzl)
    p = np.ldexp(mh * izh, q)
    ax = np.abs(x)
    return ah, al, ax * (1.0 - p) + (w - ax * p) + soft


def _exp_rows(x, m, low, qT, sx, unlabelled, tables, sigmas, Mh, Ml, qe, parts, lows,
              w_below, w_bulk):  # fmt: skip
    """``_exp_cell`` on every cell, and the row sums of pass 1 (for numba)."""
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            mh, ml, q, th, tl, w, wb = _exp_cell(x[i, j], m[i], low[i], qT[i], sx[i],
                                                 unlabelled[i, j], tables)  # fmt: skip
            Mh[i, j], Ml[i, j], qe[i, j] = mh, ml, q
            for k in range(sigmas.size):
                t, th = dd.extract(th, sigmas[k])
                parts[k, i] += t
            lows[i] += tl
            w_below[i] += w
            w_bulk[i] += wb


def _grad_rows(Mh, Ml, qe, YZh, YZl, iZ, W, x, soft, eps_A, gval, gok, g_cond):
    """``_grad_cell`` and ``ziv_double`` on every cell, A written over M (for numba)."""
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            ah, al, g_cond[i, j] = _grad_cell(Mh[i, j], Ml[i, j], qe[i, j], YZh[i], YZl[i],
                                              iZ[i], W[i], x[i, j], soft)  # fmt: skip
            gval[i, j], gok[i, j] = dd.ziv_double(ah, al, qe[i, j], eps_A[i] * ah)
            Mh[i, j], Ml[i, j] = ah, al


def numba_kernels() -> tuple | None:
    """``_exp_rows`` and ``_grad_rows`` compiled by numba, which then replaces the blocks of
    numpy passes with the same arithmetic (``pip install 'stabcheck[fast]'``); None
    without numba or with the environment variable ``STABCHECK_NUMBA=0``."""
    return _compile() if numba_wanted() else None


def numba_wanted() -> bool:
    """Whether the compiled passes are asked for: not turned off by ``STABCHECK_NUMBA=0``
    (they then run when numba is installed)."""
    return os.environ.get("STABCHECK_NUMBA", "").strip() != "0"


@cache
def _compile() -> tuple | None:
    """Compile copies of the functions whose globals name the compiled copies."""
    try:
        import numba
    except ImportError:
        return None
    jit = numba.njit(cache=True)
    names = ("two_sum", "fast_two_sum", "_split", "two_prod", "two_square", "mul", "exp_core",
             "extract", "ziv_double")  # fmt: skip
    jitted = types.ModuleType("ddmath_jit")
    scope = dict(vars(dd))
    for name in names:
        scope[name] = jit(types.FunctionType(getattr(dd, name).__code__, scope, name))
        setattr(jitted, name, scope[name])
    scope = {**globals(), "dd": jitted}
    for fn in (_exp_cell, _grad_cell, _exp_rows, _grad_rows):
        scope[fn.__name__] = jit(types.FunctionType(fn.__code__, scope, fn.__name__))
    return scope["_exp_rows"], scope["_grad_rows"]


def _blocks(N: int, C: int) -> Iterator[tuple[slice, slice]]:
    """Slices (rows, columns) tiling an N x C array in blocks of about TILE cells."""
    rows, cols = max(1, TILE // C), min(C, TILE)
    for r0 in range(0, N, rows):
        for c0 in range(0, C, cols):
            yield slice(r0, r0 + rows), slice(c0, c0 + cols)


def softmax(
    x: Array, y: Array | None, fmt: Format, grad: bool, soft: bool, sparse: Array | None = None
) -> tuple[Part, Part | None]:
    """Rows of L = D + Y log1p(S) and dL/dx_i = Y p_i - y_i (see ``rowwise.Softmax``).

    With m = max x, n ties at m, T = sum_{x_i < m} exp(x_i - m) (scaled by the largest
    term's 2**q and summed exactly by ``split_sums``), Y = sum y exactly when
    ``sum_rows_exact`` says so:

        L = D + Y log1p(n - 1 + T),       D = sum y_i (m - x_i) >= 0
        g_i = 2**q_i M_i Y / (n + T) - y_i            (x_i < m, e_i = M_i 2**q_i)
        g_i = (Y - n y_i) / n - Y T / (n (n + T))     (x_i = m)

    A zero D, label, or Y - n y_i computed without rounding is exactly zero, and the result
    then is a product and quotient of positive terms, rounded from its relative enclosure
    even when subnormal. With integer labels D is exact, and L in (D, D + Y G] is also
    rounded when D sits on a halfway point (``ziv_above``). When every finite logit is
    tied, T = 0 and the gradient is the rational (Y - n y_i)/n: rounded from its
    enclosure, or exactly +0; with a single finite logit the loss is exactly +0 (or
    +inf). With ``sparse`` (label indices) y is None, and the label sums are spared.

    The passes over every cell run in blocks of about ``TILE`` cells (small temporaries,
    in cache, never paged in afresh), or compiled by numba when it is installed.
    """
    N, C = x.shape
    with np.errstate(all="ignore"):
        if sparse is None:
            Yh, Yl, Y_exact, y_levels = dd.sum_rows_exact(y)
        else:
            Yh, Yl, Y_exact, y_levels = np.ones(N), np.zeros(N), np.ones(N, dtype=bool), 0
        m = x.max(axis=1)  # NaN or +inf in a row: not finite
        low, second = np.full(N, np.inf), np.full(N, -np.inf)  # least finite, largest < m
        for rs, cs in _blocks(N, C):
            t = x[rs, cs]
            low[rs] = np.minimum(low[rs], np.where(t > -np.inf, t, np.inf).min(axis=1))
            second[rs] = np.maximum(second[rs], np.where(t < m[rs, None], t, -np.inf).max(axis=1))
        # no finite logit more than 1500 below the maximum (fl(x - m) grows with x)
        rows = np.isfinite(m) & (Yh > 0) & ~(low - m < dd.EXP_MIN)
        if not rows.any():
            return Part.empty((N,)), (Part.empty((N, C)) if grad else None)
        every = rows.all()
        if not every:
            x, m, low, second = x[rows], m[rows], low[rows], second[rows]
            y = None if y is None else y[rows]
            Yh, Yl, Y_exact = Yh[rows], Yl[rows], Y_exact[rows]
            sparse = None if sparse is None else sparse[rows]
        v, g = _softmax_rows(x, y, m, low, second, fmt, grad, soft,
                             (Yh, Yl, Y_exact, y_levels), sparse)  # fmt: skip
    if every:
        return Part(*v), (Part(*g) if g is not None else None)
    value, gradient = Part.empty((N,)), (Part.empty((N, C)) if grad else None)
    sel = np.flatnonzero(rows)
    value.put(sel, *v[:5])
    value.condition[sel] = v[5]
    if gradient is not None and g is not None:
        gradient.put(sel, *g[:5])
        gradient.condition[sel] = g[5]
    return value, gradient


def _softmax_rows(x, y, m, low, second, fmt, grad, soft, labels, idx):
    Yh, Yl, Y_exact, y_levels = labels
    N, C = x.shape
    eps_Y = np.where(Y_exact, 0.0, (y_levels + 1) * EPS_OP)
    finite = x > -np.inf  # the rows have no NaN and no +inf
    tie = x == m[:, None]
    if idx is None:
        labelled = y > 0
    else:
        labelled = np.zeros((N, C), dtype=bool)
        labelled[np.arange(N), idx] = True
    n = tie.sum(axis=1).astype(np.float64)
    infinite_loss = (labelled & ~finite).any(axis=1)  # a -inf logit under a positive label
    rational = ~(second > -np.inf)  # every finite logit tied: T = 0, p = 1/n exactly
    qT = np.where(rational, 0, dd.exp_scale(np.where(rational, 0.0, second - m)))
    _, sx = np.frexp(np.maximum(np.abs(m), np.abs(low)))  # logits scaled by 2**-sx
    qT, sx = qT.astype(np.int32), sx.astype(np.int32)

    # pass 1, every cell: e = exp(x - m) = M 2**q below the maximum (0 elsewhere), and
    # the row sums of 2**(q - qT) M, exactly (split_sums), of its low parts, and of
    # |x| 2**-sx 2**(q - qT) M (all, and unlabelled cells only: for the conditions)
    Mh, Ml, qe = np.empty((N, C)), np.empty((N, C)), np.empty((N, C), dtype=np.int32)
    sigmas = dd.split_levels(C)
    parts, lows = np.zeros((len(sigmas), N)), np.zeros(N)
    w_below, w_bulk = np.zeros(N), np.zeros(N)
    unlabelled, tables, kernels = ~labelled, dd.exp_tables(), numba_kernels()
    if kernels is not None:
        kernels[0](x, m, low, qT, sx, unlabelled, tables, np.array(sigmas), Mh, Ml, qe,
                   parts, lows, w_below, w_bulk)  # fmt: skip
    else:
        for rs, cs in _blocks(N, C):
            cells = _exp_cell(x[rs, cs], m[rs, None], low[rs, None], qT[rs, None],
                              sx[rs, None], unlabelled[rs, cs], tables)  # fmt: skip
            Mh[rs, cs], Ml[rs, cs], qe[rs, cs] = cells[:3]
            parts[:, rs] += dd.split_sums(cells[3], sigmas)
            lows[rs] += cells[4].sum(axis=1)
            w_below[rs] += cells[5].sum(axis=1)
            w_bulk[rs] += cells[6].sum(axis=1)
    Th, Tl = dd.split_total(list(parts), lows)
    eps_T = EPS_EXP + dd.split_eps(C) + ETA
    plain = qT >= TINY  # T = (Th + Tl) 2**qT is a normal double-double
    Tph, Tpl = np.where(plain, np.ldexp(Th, qT), 0.0), np.where(plain, np.ldexp(Tl, qT), 0.0)
    # n + T; a T below 2**-900 is left out, and ldexp may drop Tl 2**qT below 2**-1074:
    # relative errors below 2**-170
    Zh, Zl = dd.add_d(Tph, Tpl, n)
    eps_Z = eps_T + EPS_OP + 2.0**-170

    # G = log1p(n - 1 + T): scaled T itself when n = 1 and T is tiny
    Sh, Sl = dd.add_d(Tph, Tpl, n - 1)
    tiny_one = ~plain & (n == 1)
    Gh, Gl = dd.log1p_dd(np.where(tiny_one, 1.0, Sh), np.where(tiny_one, 0.0, Sl))
    Gh, Gl = np.where(tiny_one, Th, Gh), np.where(tiny_one, Tl, Gl)
    qG = np.where(tiny_one, qT, 0)
    eps_G = np.where(tiny_one, eps_T + 2.0**-800, eps_Z + EPS_LOG)
    YGh, YGl = dd.mul(Yh, Yl, Gh, Gl)
    eps_YG = eps_Y + eps_G + EPS_OP

    # D = sum y_i (m - x_i), exact differences times labels, summed pairwise
    if idx is not None:
        rows = np.arange(N)
        xk = x[rows, idx]
        Dh, Dl = dd.two_sum(m, -np.where(xk > -np.inf, xk, 0.0))
        eps_D, eta_D = np.zeros(N), np.zeros(N)
    else:
        rh, rl = dd.two_sum(np.where(finite, x, 0.0), -m[:, None])
        th_, tl_ = dd.mul_d(-rh, -rl, y)
        use = labelled & finite
        th_, tl_ = np.where(use, th_, 0.0), np.where(use, tl_, 0.0)
        Dh, Dl, d_levels = dd.sum_rows(th_, tl_)
        eps_D = np.full(N, (d_levels + 1) * EPS_OP)
        eta_D = np.where((use & (th_ < 2.0**-960) & (th_ > 0)).any(axis=1), ETA, 0.0)

    vz = _Ziv((N,))
    zeroD = Dh == 0
    vz.set(zeroD, YGh[zeroD], YGl[zeroD], qG[zeroD], eps_YG[zeroD] * np.abs(YGh[zeroD]))
    nz = ~zeroD
    ph, pl = _ldexp(YGh, qG), _ldexp(YGl, qG)
    Lh, Ll = dd.add(Dh, Dl, ph, pl)
    radius = eps_D * Dh + eps_YG * ph + EPS_OP * Lh + eta_D + ETA
    vz.set(nz, Lh[nz], Ll[nz], 0, radius[nz])
    vval, vok = vz.round(fmt)
    if idx is not None:  # D = m - x_k exact, L in (D, L + radius]: a halfway D goes up
        above, above_ok = dd.ziv_above(Dh, Dl, Lh, Ll, radius, fmt)
        vval, vok = np.where(vok, vval, above), vok | above_ok
    # one finite logit: L = D = 0 exactly (every labelled finite logit is the maximum)
    single = rational & (n == 1)
    vval, vok = np.where(single, 0.0, vval), vok | single
    vval, vok = np.where(infinite_loss, np.inf, vval), vok | infinite_loss
    v_exact = (np.where(infinite_loss, np.inf, vz.h), vz.lo, vz.q)

    # Y / Z; the sums of |x_j| p_j 2**-(sx + qT) below the maximum and over unlabelled cells
    YZh, YZl = dd.div(Yh, Yl, Zh, Zl)
    eps_YZ = eps_Y + eps_Z + EPS_OP
    W_below = _xscaled(w_below / Zh, sx + qT)
    W_tied = _xscaled(n * np.ldexp(np.abs(m), -sx) / Zh, sx)
    W_all = _xadd(W_below, W_tied)
    W = _xfloat(W_all)
    bulk_num = _xscaled(Yh * (w_bulk / Zh), sx + qT)

    # the few cells that are not 2**q M Y/Z alone: ties, labels, -inf logits
    sr, sc = np.nonzero(tie | labelled | ~finite)
    fin_s, tie_s = finite[sr, sc], tie[sr, sc]
    y_s = labelled[sr, sc].astype(np.float64) if idx is not None else y[sr, sc]
    r = sr[fin_s]  # rows of ``special``: finite cells tied or labelled
    special = (r, sc[fin_s])
    ys, ns, tie_f = y_s[fin_s], n[r], tie_s[fin_s]
    P_s = np.where(tie_f, 1.0, Mh[special]) / Zh[r]  # p_i = P_i 2**qp_i (53 bits)
    qp_s = np.where(tie_f, 0, qe[special])
    eps_A = EPS_EXP + eps_YZ + EPS_OP

    if grad:
        # pass 2, every cell: 2**q M Y/Z, a relative enclosure, and its condition number
        gval, gok = np.empty((N, C)), np.empty((N, C), dtype=bool)
        g_cond = np.empty((N, C))
        if kernels is not None and fmt.precision == 53 and fmt.emin == -1022:
            kernels[1](Mh, Ml, qe, YZh, YZl, 1.0 / Zh, W, x, float(soft), eps_A, gval, gok,
                       g_cond)  # fmt: skip
            rest = np.nonzero(~gok & (Mh > 0) & (Mh < np.inf))  # as ``ziv``
            gval[rest], gok[rest] = dd.ziv(Mh[rest], Ml[rest], qe[rest],
                                           eps_A[rest[0]] * Mh[rest], fmt)  # fmt: skip
        else:
            for rs, cs in _blocks(N, C):
                ah, al, g_cond[rs, cs] = _grad_cell(
                    Mh[rs, cs], Ml[rs, cs], qe[rs, cs], YZh[rs, None], YZl[rs, None],
                    1.0 / Zh[rs, None], W[rs, None], x[rs, cs], float(soft))  # fmt: skip
                gval[rs, cs], gok[rs, cs] = dd.ziv(ah, al, qe[rs, cs], eps_A[rs, None] * ah, fmt)
                Mh[rs, cs], Ml[rs, cs] = ah, al  # the exact values' parts, from here on
        gh, gl, gq = Mh, Ml, qe
        # labelled cells below the maximum: 2**q M Y/Z - y (A from pass 2)
        h_s, lo_s, q_s = gh[sr, sc], gl[sr, sc], qe[sr, sc]
        r_s = eps_A[sr] * h_s
        both = fin_s & ~tie_s
        aph, apl = _ldexp(h_s[both], q_s[both]), _ldexp(lo_s[both], q_s[both])
        bh, bl = dd.add_d(aph, apl, -y_s[both])
        h_s[both], lo_s[both], q_s[both] = bh, bl, 0
        r_s[both] = eps_A[sr[both]] * aph + EPS_OP * np.abs(bh) + ETA
        # tied at the maximum: (Y - n y_i)/n - U, U = Y T / (n Z) = 2**qT (Y/Z) (Th + Tl)/n
        rt = sr[tie_s]
        yt, nt = y_s[tie_s], n[rt]
        nyh, nyl = dd.two_prod(nt, yt)
        Wh, Wl, w_exact = dd.add_exact(Yh[rt], Yl[rt], -nyh, -nyl)
        w_exact &= Y_exact[rt] & ((yt == 0) | (yt >= 2.0**-960))
        Rh, Rl = dd.div_d(Wh, Wl, nt)
        err_R = np.where(w_exact, EPS_OP * np.abs(Rh),
                         2 * EPS_OP * np.abs(Rh) + eps_Y[rt] * Yh[rt] / nt)  # fmt: skip
        Uh, Ul = dd.mul(YZh, YZl, Th, Tl)
        Uh, Ul = dd.div_d(Uh, Ul, n)
        Uh, Ul, qU, eps_U = Uh[rt], Ul[rt], qT[rt], (eps_YZ + eps_T + 2 * EPS_OP)[rt]
        pure = w_exact & (Wh == 0)
        uph, upl = _ldexp(Uh, qU), _ldexp(Ul, qU)
        th, tl = dd.add(Rh, Rl, -uph, -upl)
        radius = err_R + eps_U * uph + EPS_OP * np.abs(th) + ETA
        h_s[tie_s], lo_s[tie_s] = np.where(pure, -Uh, th), np.where(pure, -Ul, tl)
        q_s[tie_s], r_s[tie_s] = np.where(pure, qU, 0), np.where(pure, eps_U * Uh, radius)
        # -inf logits: -y_i exactly (+0 for a zero label)
        h_s[~fin_s], lo_s[~fin_s], q_s[~fin_s], r_s[~fin_s] = -y_s[~fin_s] + 0.0, 0.0, 0, 0.0
        v_s, ok_s = dd.ziv(h_s, lo_s, q_s, r_s, fmt)
        # exactly +0: -inf logits under zero labels, and Y/n - y_i = 0 when T = 0
        zero = np.zeros(sr.size, dtype=bool)
        zero[tie_s] = pure & (Uh == 0)
        v_s = np.where(fin_s, np.where(zero, 0.0, v_s), -y_s + 0.0)
        gval[sr, sc], gok[sr, sc] = v_s, ok_s | ~fin_s | zero
        gh[sr, sc], gl[sr, sc], gq[sr, sc] = np.where(fin_s, h_s, v_s), lo_s, q_s
        g_special = _xscaled(h_s[fin_s] + lo_s[fin_s], q_s[fin_s])
    else:  # |g| to 53 bits where it is not Y p_i
        pf = _ldexp(P_s, qp_s)
        lab = np.abs(Yh[r] * pf - ys)
        R = (Yh[r] - ns * ys) / ns
        U = _xscaled(Yh * Th / (n * Zh), qT)
        g_tie = _xadd(_xf(R), (U[0][r], U[1][r]), -1.0)
        g_special = _xabs((np.where(tie_f, g_tie[0], lab), np.where(tie_f, g_tie[1], 0)))
        g_special = _xscaled(g_special[0], g_special[1])

    # condition numbers (53-bit estimates; logits scaled by 2**-sx per row, tiny sums by
    # 2**qT, so that nothing overflows or underflows that matters)
    ax_s = _xscaled(np.ldexp(np.abs(x[special]), -sx[r]), sx[r])
    special_num = _xsum_flat(_xmul(ax_s, _xabs(g_special)), r, N)
    num = _xadd(bulk_num, special_num)
    kappa = _xfloat(_xdiv(num, _xscaled(vz.h, vz.q)))
    kappa = np.where(single, np.where(num[0] == 0, 0.0, np.inf), kappa)  # x / 0, as ``ratio``
    kappa = np.where(infinite_loss, np.nan, kappa)
    v_parts = (vval, vok, *v_exact, kappa)
    if not grad:
        return v_parts, None
    # kappa(g_i) = (Y p_i (|x_i| (1 - p_i) + sum_{j != i} |x_j| p_j) + [soft] (p_i (Y - y_i)
    # + y_i (1 - p_i))) / |g_i|; in the bulk (above) p_i cancels
    p_s = _xscaled(P_s, qp_s)
    w_s = _xmul(ax_s, p_s)
    others = _xadd((W_all[0][r], W_all[1][r]), w_s, -1.0)
    afresh = tie_f & (n[r] == 1) & ((Tph[r] <= 1.0) | ~plain[r])
    others = (np.where(afresh, W_below[0][r], others[0]),
              np.where(afresh, W_below[1][r], others[1]))  # fmt: skip
    tail = _xdiv(_xadd(_xf(n - 1.0), _xscaled(Th, qT)), _xf(Zh))  # 1 - p at the maximum
    q_s_ = _xscaled(np.where(tie_f, tail[0][r], 1.0 - _xfloat(p_s)),
                    np.where(tie_f, tail[1][r], 0))  # fmt: skip
    sens = _xadd(_xmul(ax_s, q_s_), others)
    num_s = _xmul(_xmul(_xf(Yh[r]), p_s), sens)
    if soft:
        extra = _xadd(_xmul(p_s, _xf(Yh[r] - ys)), _xmul(_xf(ys), q_s_))
        num_s = _xadd(num_s, extra)
    kappa_s = _xfloat(_xdiv(_xabs(num_s), _xabs(g_special)))
    g_cond[special] = np.where(g_special[0] == 0, np.where(num_s[0] == 0, 0.0, np.inf), kappa_s)
    nonfinite = (sr[~fin_s], sc[~fin_s])
    g_cond[nonfinite] = np.where(y_s[~fin_s] == 0, 0.0, np.nan)
    row_ok = gok.all(axis=1)  # the whole row is certain, or none of it is
    v_parts = (vval, vok & row_ok, *v_exact, kappa)
    return v_parts, (gval, gok & vok[:, None], gh, gl, gq, g_cond)


def _xsum_flat(a: XF, rows: Array, n: int) -> XF:
    """Sums of the cells of ``a`` that belong to each of ``n`` rows."""
    e = np.full(n, _NO_EXP, dtype=np.int32)
    np.maximum.at(e, rows, a[1])
    total = np.zeros(n)
    np.add.at(total, rows, _ldexp(a[0], a[1] - e[rows]))
    return _xscaled(total, e)


# -- sigmoid and weighted cross-entropy -------------------------------------------------------


def weighted(x: Array, z: Array, q: float, fmt: Format, grad: bool) -> tuple[Part, Part | None]:
    """Elements of L = q z softplus(-x) + (1 - z) softplus(x) (``elementwise.Weighted``):
    with c = q z + 1 - z and e = exp(-|x|) = M 2**k,

        L = (1 - z) x + c log1p(e) (x >= 0),    L = q z |x| + c log1p(e) (x < 0)
        dL/dx = (1 - z) - c e/(1 + e) (x > 0),  c e/(1 + e) - q z (x < 0),  (1 - z - q z)/2

    q z and 1 - z are exact double-doubles (two_prod, two_sum; ETA covers a tiny q z), so
    a zero exact part or a zero target is exactly zero and the rest is rounded from a
    relative enclosure, even when subnormal. |x| > 1500 and non-finite x are left to mpmath.
    """
    shape = x.shape
    x, z = x.reshape(-1), z.reshape(-1)
    value, gradient = Part.empty(x.shape), (Part.empty(x.shape) if grad else None)
    with np.errstate(all="ignore"):
        sel = np.flatnonzero(np.isfinite(x) & (np.abs(x) <= -dd.EXP_MIN))
        if sel.size:
            v, g = _weighted(x[sel], z[sel], q, fmt, grad)
            value.put(sel, *v[:5])
            value.condition[sel] = v[5]
            if gradient is not None and g is not None:
                gradient.put(sel, *g[:5])
                gradient.condition[sel] = g[5]
    parts = [value, gradient]
    for part in parts:
        if part is not None:
            for name in ("value", "ok", "h", "lo", "q", "condition"):
                setattr(part, name, getattr(part, name).reshape(shape))
    return value, gradient


def _weighted(x, z, q, fmt, grad):
    n = x.size
    a = np.abs(x)
    Mh, Ml, k = dd.exp_dd(-a, np.zeros(n))
    qzh, qzl = dd.two_prod(np.full(n, q), z)
    eta_qz = np.where((qzh != 0) & (np.abs(qzh) < 2.0**-960), ETA, 0.0)
    omh, oml = dd.two_sum(np.ones(n), -z)  # 1 - z
    ch, cl = dd.add(qzh, qzl, omh, oml)
    eps_c = EPS_OP + eta_qz / ch
    positive = x >= 0
    exh, exl = np.where(positive, omh, qzh), np.where(positive, oml, qzl)
    exh, exl = dd.mul_d(exh, exl, a)  # the exact part, >= 0
    eps_ex = EPS_OP + (eta_qz * a + ETA) / np.where(exh > 0, exh, 1.0)
    plain = k >= TINY
    eh, el = np.where(plain, np.ldexp(Mh, k), 0.0), np.where(plain, np.ldexp(Ml, k), 0.0)
    Gh, Gl = dd.log1p_dd(eh, el)
    Gh, Gl, kG = np.where(plain, Gh, Mh), np.where(plain, Gl, Ml), np.where(plain, 0, k)
    eps_G = EPS_EXP + np.where(plain, EPS_LOG, 0.0) + 2.0**-170  # e below 2**-900: log1p(e) = e
    cGh, cGl = dd.mul(ch, cl, Gh, Gl)
    eps_cG = eps_c + eps_G + EPS_OP
    vz = _Ziv((n,))
    zero = exh == 0
    vz.set(zero, cGh[zero], cGl[zero], kG[zero], (eps_cG * cGh)[zero])
    ph, pl = _ldexp(cGh, kG), _ldexp(cGl, kG)
    Lh, Ll = dd.add(exh, exl, ph, pl)
    radius = eps_ex * exh + eps_cG * ph + EPS_OP * Lh + ETA
    vz.set(~zero, Lh[~zero], Ll[~zero], 0, radius[~zero])
    vval, vok = vz.round(fmt)

    # the gradient: share = c e / (1 + e) = 2**k c M / (1 + e)
    dh, dl = dd.add_d(eh, el, 1.0)
    sh, sl = dd.div(Mh, Ml, dh, dl)
    sh, sl = dd.mul(ch, cl, sh, sl)
    eps_s = eps_c + EPS_EXP + 3 * EPS_OP + 2.0**-170
    gz = _Ziv((n,))
    pure = np.where(positive, z == 1, z == 0) & (x != 0)
    gz.set(pure, np.where(positive, -sh, sh)[pure], np.where(positive, -sl, sl)[pure],
           k[pure], (eps_s * sh)[pure])  # fmt: skip
    sph, spl = _ldexp(sh, k), _ldexp(sl, k)
    bh, bl = np.where(positive, omh, -qzh), np.where(positive, oml, -qzl)
    sign = np.where(positive, -1.0, 1.0)
    gh, gl = dd.add(bh, bl, sign * sph, sign * spl)
    mid = x == 0
    hh, hl = dd.add(omh, oml, -qzh, -qzl)
    gh, gl = np.where(mid, 0.5 * hh, gh), np.where(mid, 0.5 * hl, gl)
    radius = np.where(mid, 0.0, eps_s * sph) + EPS_OP * np.abs(gh) + eta_qz + ETA
    mixed = ~pure
    gz.set(mixed, gh[mixed], gl[mixed], 0, radius[mixed])
    gval, gok = gz.round(fmt)

    # condition numbers: kappa(L) = |x g| / L; kappa(g) = (|x| c sig sig_neg + z (sig +
    # q sig_neg)) / |g| with sig, sig_neg = 1/(1 + e), e/(1 + e) (swapped for x < 0)
    g_xf = _xscaled(gz.h + gz.lo, gz.q)
    L_xf = _xscaled(vz.h, vz.q)
    ax = _xf(a)
    kappa = _xfloat(_xdiv(_xabs(_xmul(ax, g_xf)), L_xf))
    inv = _xf(1.0 / dh)
    ratio = _xscaled(Mh / dh, k)  # e / (1 + e)
    sig = (np.where(positive, inv[0], ratio[0]), np.where(positive, inv[1], ratio[1]))
    sig_neg = (np.where(positive, ratio[0], inv[0]), np.where(positive, ratio[1], inv[1]))
    first = _xmul(_xmul(ax, _xf(ch)), _xmul(sig, sig_neg))
    second = _xmul(_xf(z), _xadd(sig, _xmul(_xf(np.full(n, q)), sig_neg)))
    g_kappa = _xfloat(_xdiv(_xadd(first, second), _xabs(g_xf)))
    v_parts = (vval, vok & (gok if grad else True), vz.h, vz.lo, vz.q, kappa)
    return v_parts, (gval, gok & vok, gz.h, gz.lo, gz.q, g_kappa)


# -- probability losses ------------------------------------------------------------------------


def _neg_log(p: Array) -> tuple[Array, Array]:
    """-log p for p in (0, 1] (exactly 0 at 1), relative error <= EPS_LOG + 2 EPS_OP."""
    h, lo = dd.neg_log_dd(np.where(p < 1.0, p, 0.5))
    return np.where(p < 1.0, h, 0.0), np.where(p < 1.0, lo, 0.0)


def binary(p: Array, z: Array, fmt: Format, grad: bool) -> tuple[Part, Part | None]:
    """Elements of L = z (-log p) + (1 - z) (-log(1 - p)) and dL/dp = (1 - z)/(1 - p) - z/p
    (``elementwise.Binary``) for 0 < p < 1; p = 0, 1 or NaN are left to mpmath.

    -log(1 - p) is -log1p(-p) for p <= 1/2 and -log of the exact 1 - p above; 1 - z and
    1 - p are exact double-doubles, so a zero weight gives an exactly zero term. The
    gradient is rational: each quotient is within EPS_OP, their difference is enclosed
    with the sum of their errors, and Ziv's test refuses results on or near a halfway
    point (or zero), which mpmath then rounds exactly.
    """
    shape = p.shape
    p, z = p.reshape(-1), z.reshape(-1)
    value, gradient = Part.empty(p.shape), (Part.empty(p.shape) if grad else None)
    with np.errstate(all="ignore"):
        sel = np.flatnonzero((p > 0) & (p < 1))
        if sel.size:
            v, g = _binary(p[sel], z[sel], fmt)
            value.put(sel, *v[:5])
            value.condition[sel] = v[5]
            if gradient is not None:
                gradient.put(sel, *g[:5])
                gradient.condition[sel] = g[5]
    for part in (value, gradient):
        if part is not None:
            for name in ("value", "ok", "h", "lo", "q", "condition"):
                setattr(part, name, getattr(part, name).reshape(shape))
    return value, gradient


def _binary(p, z, fmt):
    n = p.size
    ones = np.ones(n)
    omz = dd.two_sum(ones, -z)  # 1 - z
    omp = dd.two_sum(ones, -p)  # 1 - p
    ah, al = _neg_log(p)
    low = p <= 0.5
    bh, bl = dd.log1p_dd(np.where(low, -p, -0.25), np.zeros(n))
    ch, cl = _neg_log(np.where(low, 0.5, omp[0]))  # omp exact in a double for p > 1/2
    bh, bl = np.where(low, -bh, ch), np.where(low, -bl, cl)
    th, tl = dd.mul_d(ah, al, z)
    uh, ul = dd.mul(omz[0], omz[1], bh, bl)
    Lh, Ll = dd.add(th, tl, uh, ul)
    eps_L = EPS_LOG + 4 * EPS_OP
    vval, vok = dd.ziv(Lh, Ll, np.zeros(n, dtype=np.int32), eps_L * Lh + ETA, fmt)

    t1h, t1l = dd.div_d(z, np.zeros(n), p)  # z / p
    t2h, t2l = dd.div(omz[0], omz[1], omp[0], omp[1])  # (1 - z) / (1 - p)
    gh, gl = dd.add(t2h, t2l, -t1h, -t1l)
    radius = 2 * EPS_OP * (t1h + t2h) + EPS_OP * np.abs(gh) + ETA
    gval, gok = dd.ziv(gh, gl, np.zeros(n, dtype=np.int32), radius, fmt)

    # kappa(L) = |p g| / L; kappa(g) = (2 z/p + p (1 - z)/(1 - p)**2 + z/(1 - p)) / |g|
    kappa = np.abs(p * gh) / Lh
    q = omp[0] + omp[1]
    g_kappa = (2 * z / p + p * (1 - z) / (q * q) + z / q) / np.abs(gh)
    return (vval, vok & gok, Lh, Ll, np.zeros(n, dtype=np.int32), kappa), (
        gval, gok & vok, gh, gl, np.zeros(n, dtype=np.int32), g_kappa)  # fmt: skip


def categorical(
    p: Array, y: Array, fmt: Format, grad: bool, soft: bool
) -> tuple[Part, Part | None]:
    """Rows of L = sum y_i (-log p_i) and dL/dp_i = -y_i/p_i (``rowwise.Categorical``): a
    sum of non-negative terms (pairwise; exactly +0 when every labelled p_i is 1), and
    quotients within EPS_OP (an unlabelled class has the exact gradient +0). Rows with NaN
    or with a labelled p_i = 0 are left to mpmath."""
    N, C = p.shape
    value, gradient = Part.empty((N,)), (Part.empty((N, C)) if grad else None)
    labelled = y > 0
    with np.errstate(all="ignore"):
        rows = ~np.isnan(p).any(axis=1) & ~(labelled & (p == 0)).any(axis=1)
        if not rows.any():
            return value, gradient
        sel = np.flatnonzero(rows)
        p, y, labelled = p[sel], y[sel], labelled[sel]
        ah, al = _neg_log(np.where(labelled, p, 1.0))
        th, tl = dd.mul_d(ah, al, y)
        Lh, Ll, levels = dd.sum_rows(th, tl)
        eps_L = EPS_LOG + (levels + 2) * EPS_OP
        zeros = np.zeros(len(sel), dtype=np.int32)
        vval, vok = dd.ziv(Lh, Ll, zeros, eps_L * Lh + ETA, fmt)
        exact_zero = Lh == 0  # every labelled p_i is 1 (each other term is > 0)
        vval, vok = np.where(exact_zero, 0.0, vval), vok | exact_zero
        Y = np.where(labelled, y, 0.0).sum(axis=1)
        kappa = np.where(exact_zero, np.where(Y == 0, 0.0, np.inf), Y / Lh)
        if grad and gradient is not None:
            gh, gl = dd.div_d(-y, np.zeros_like(y), np.where(labelled, p, 1.0))
            gval, gok = dd.ziv(gh, gl, np.zeros(y.shape, dtype=np.int32),
                               EPS_OP * np.abs(gh) + ETA, fmt)  # fmt: skip
            gval, gok = np.where(labelled, gval, 0.0), gok | ~labelled
            gh, gl = np.where(labelled, gh, 0.0), np.where(labelled, gl, 0.0)
            g_kappa = np.where(labelled, 2.0 if soft else 1.0, 0.0)
            gradient.put(sel, gval, gok & vok[:, None], gh, gl, np.zeros_like(gh, np.int32))
            gradient.condition[sel] = g_kappa
            vok &= gok.all(axis=1)
        value.put(sel, vval, vok, Lh, Ll, zeros)
        value.condition[sel] = kappa
    return value, gradient
