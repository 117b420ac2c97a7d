"""Double-double arithmetic on numpy float64 arrays, with proved error bounds.

A double-double (dd) is a pair of float64 arrays ``(h, lo)`` standing for the exact sum
h + lo, normalised so that |lo| <= ulp(h) / 2. With u = 2**-53 (IEEE binary64, round to
nearest; numpy never contracts a*b + c into an FMA), the building blocks are:

* ``two_sum(a, b)`` (Knuth) and ``fast_two_sum(a, b)`` (Dekker, needs |a| >= |b| or
  a = 0): s + e = a + b *exactly*, s = fl(a + b), for any finite a, b without overflow.
* ``two_prod(a, b)`` (Dekker, Veltkamp splitting by 2**27 + 1, no FMA; ``two_square``
  for a**2): p + e = a b exactly when |a|, |b| < 2**995 and the product does not
  underflow (|ab| >= 2**-969); below that the error is at most 2**-1074 in absolute value.
* ``add`` (AccurateDWPlusDW), ``add_d`` (DWPlusFP), ``mul_d`` (DWTimesFP), ``div_d``
  (DWDivFP) and ``div`` (DWDivDW), as analysed by Joldes, Muller and Popescu, "Tight and
  rigorous error bounds for basic building blocks of double-word arithmetic" (ACM TOMS
  44, 2017): relative errors at most 3u**2/(1 - 4u), 2u**2, 1.5u**2 + 4u**3, 3.5u**2 and
  15u**2 + 56u**3. ``mul`` is DWTimesDW without FMA: x_h y_h exactly, the two cross
  products (u**2 each) and their sum (2u**2) and the sum with the low part (3u**2)
  rounded, x_l y_l (u**2) dropped: at most 8u**2. All are below 2**-102; this module
  uses ``EPS_OP = 2**-100`` for every one of them. ``add`` keeps its bound relative to
  the exact sum even when the operands cancel. The bounds assume no underflow; where a
  quantity may be tiny, the callers add an absolute term.

On top of them, with tables of correctly rounded double-doubles computed once with
mpmath at 200 bits (a private context):

* ``exp_dd(rh, rl)``: exp(rh + rl) = (mh + ml) 2**q, relative error <= ``EPS_EXP``
  = 2**-90 for -1500 <= rh <= 0 (proof in its docstring).
* ``log1p_dd(sh, sl)``: log(1 + s) for s >= -1/2, relative error <= ``EPS_LOG`` = 2**-88.
* ``split_sums``: row sums of terms in [0, 4) cut into parts that add up exactly in any
  order (``split_total`` and ``split_eps``: their double-double total and its bound).

No numpy transcendental function is trusted: the bounds rest only on +, -, *, /, rint,
floor, frexp and ldexp, which IEEE 754 and numpy define exactly (``log1p_dd`` starts from
numpy's log, and measures how far off it is before using it).

``round_to(h, lo, q, fmt, tie)`` rounds the exact number (h + lo) 2**q to a binary format
(ties broken in the direction ``tie``, subnormals, zero), and ``ziv`` accepts an
enclosure only when both of its ends round to the same value (Ziv's rounding test).
"""

from __future__ import annotations

import math
from functools import cache

import mpmath
import numpy as np

from stabcheck.formats import Format

Array = np.ndarray

EPS_OP = 2.0**-100  # relative error of one dd operation (published bounds <= 2**-102)
EPS_EXP = 2.0**-90  # relative error of exp_dd (about 2**-91.4 proved below)
EPS_LOG = 2.0**-88  # relative error of log1p_dd (about 2**-89.1 proved below)
EXP_MIN = -1500.0  # exp_dd's domain is [EXP_MIN, 0]
_TINY64, _MAX64 = 2.0**-1022, float(np.finfo(np.float64).max)

_SPLITTER = 134217729.0  # 2**27 + 1
_J = 4096  # exp table size: exp(r) = 2**(N / 4096) exp(s), |s| <= ln2 / 8192
_K = 1024  # log table step: log1p(s) = log(1 + i/1024) + log1p(w), |w| <= 2**-10
_LOG_TERMS = 11  # log1p(w) = sum_{k < 11} (-w)**k w / (k + 1), |w| <= 2**-10
_LOG_DD_TERMS = 5  # terms evaluated in double-double (the others in double)


# -- error-free transformations -----------------------------------------------------------


def two_sum(a: Array, b: Array) -> tuple[Array, Array]:
    """s + e = a + b exactly, s = fl(a + b) (Knuth)."""
    s = a + b
    bb = s - a
    return s, (a - (s - bb)) + (b - bb)


def fast_two_sum(a: Array, b: Array) -> tuple[Array, Array]:
    """s + e = a + b exactly when |a| >= |b| or a = 0 (Dekker)."""
    s = a + b
    return s, b - (s - a)


def _split(a: Array) -> tuple[Array, Array]:
    c = _SPLITTER * a
    h = c - (c - a)
    return h, a - h


def two_square(a: Array) -> tuple[Array, Array]:
    """p + e = a**2 exactly (``two_prod`` with one split), barring overflow and underflow."""
    p = a * a
    ah, al = _split(a)
    return p, ((ah * ah - p) + 2.0 * (ah * al)) + al * al


def two_prod(a: Array, b: Array) -> tuple[Array, Array]:
    """p + e = a b exactly (Dekker, without FMA), barring overflow and underflow."""
    p = a * b
    ah, al = _split(a)
    bh, bl = _split(b)
    return p, ((ah * bh - p) + ah * bl + al * bh) + al * bl


# -- double-double operations (relative error <= EPS_OP each) -------------------------------


def add(xh: Array, xl: Array, yh: Array, yl: Array) -> tuple[Array, Array]:
    """x + y (AccurateDWPlusDW, error <= 3u**2/(1 - 4u) |x + y|)."""
    sh, sl = two_sum(xh, yh)
    th, tl = two_sum(xl, yl)
    vh, vl = fast_two_sum(sh, sl + th)
    return fast_two_sum(vh, tl + vl)


def add_exact(xh: Array, xl: Array, yh: Array, yl: Array) -> tuple[Array, Array, Array]:
    """``add`` and whether it was exact: its only roundings are the two inner sums."""
    sh, sl = two_sum(xh, yh)
    th, tl = two_sum(xl, yl)
    c, ec = two_sum(sl, th)
    vh, vl = fast_two_sum(sh, c)
    w, ew = two_sum(tl, vl)
    zh, zl = fast_two_sum(vh, w)
    return zh, zl, (ec == 0) & (ew == 0)


def add_d(xh: Array, xl: Array, y: Array) -> tuple[Array, Array]:
    """x + y for a double y (DWPlusFP, error <= 2u**2 |x + y|)."""
    sh, sl = two_sum(xh, y)
    return fast_two_sum(sh, xl + sl)


def mul(xh: Array, xl: Array, yh: Array, yl: Array) -> tuple[Array, Array]:
    """x y (DWTimesDW without FMA, error <= 8u**2 |x y|)."""
    ch, cl1 = two_prod(xh, yh)
    cl3 = cl1 + (xh * yl + xl * yh)
    return fast_two_sum(ch, cl3)


def mul_d(xh: Array, xl: Array, y: Array) -> tuple[Array, Array]:
    """x y for a double y (DWTimesFP, error <= (1.5u**2 + 4u**3) |x y|)."""
    ch, cl1 = two_prod(xh, y)
    th, tl1 = fast_two_sum(ch, xl * y)
    return fast_two_sum(th, tl1 + cl1)


def div(xh: Array, xl: Array, yh: Array, yl: Array) -> tuple[Array, Array]:
    """x / y (DWDivDW, error <= (15u**2 + 56u**3) |x / y|)."""
    th = xh / yh
    rh, rl = mul_d(yh, yl, th)
    d = (xh - rh) + (xl - rl)
    return fast_two_sum(th, d / yh)


def div_d(xh: Array, xl: Array, y: Array) -> tuple[Array, Array]:
    """x / y for a double y (DWDivFP, error <= 3.5u**2 |x / y|)."""
    th = xh / y
    ph, pl = two_prod(th, y)
    d = ((xh - ph) - pl) + xl
    return fast_two_sum(th, d / y)


def sum_rows(h: Array, lo: Array) -> tuple[Array, Array, int]:
    """Pairwise dd sums of the rows of 2-D arrays of non-negative dds, and the number of
    levels L = ceil(log2(columns)): the relative error is at most L EPS_OP (1 + 2**-40)."""
    width = h.shape[1]
    levels = max(0, (width - 1).bit_length())
    if (1 << levels) != width:
        pad = ((0, 0), (0, (1 << levels) - width))
        h, lo = np.pad(h, pad), np.pad(lo, pad)
    while h.shape[1] > 1:
        half = h.shape[1] // 2
        h, lo = add(h[:, :half], lo[:, :half], h[:, half:], lo[:, half:])
    return h[:, 0], lo[:, 0], levels


def sum_rows_exact(h: Array) -> tuple[Array, Array, Array, int]:
    """``sum_rows`` of doubles, and per row whether every addition was exact."""
    width = h.shape[1]
    levels = max(0, (width - 1).bit_length())
    if (1 << levels) != width:
        h = np.pad(h, ((0, 0), (0, (1 << levels) - width)))
    lo = np.zeros_like(h)
    exact = np.ones(h.shape[0], dtype=bool)
    while h.shape[1] > 1:
        half = h.shape[1] // 2
        h, lo, ok = add_exact(h[:, :half], lo[:, :half], h[:, half:], lo[:, half:])
        exact &= ok.all(axis=1)
    return h[:, 0], lo[:, 0], exact, levels


def split_levels(width: int) -> list[float]:
    """The constants sigma_1 > sigma_2 > ... of ``split_sums`` for rows of ``width`` terms:
    with 2**c >= width (c >= 1) and g_k = 2**-53 sigma_k, sigma_1 = 2**(c + 3) and
    sigma_{k+1} = 2**(c + 1) g_k, as many K as make 2**c g_K <= 2**-104."""
    c = max(1, (width - 1).bit_length())
    sigmas = [2.0 ** (c + 3)]
    while 2.0**c * sigmas[-1] * 2.0**-53 > 2.0**-104:
        sigmas.append(2.0 ** (c + 1) * sigmas[-1] * 2.0**-53)
    return sigmas


def split_sums(p: Array, sigmas: list[float]) -> list[Array]:
    """Row sums of a 2-D array of terms in [0, 4), exactly, as one part per sigma_k of
    ``split_levels`` (Rump, Ogita and Oishi's extraction), leaving out less than 2**-104.

    Level k cuts each term p (|p| <= sigma_k / 2) into t = fl(fl(sigma_k + p) - sigma_k)
    and r = fl(p - t): fl(sigma_k + p) lies in [sigma_k / 2, 2 sigma_k], so the
    subtraction is exact (Sterbenz), t is a multiple of g_k with |p - t| <= g_k, and r is
    p - t exactly (a sum's rounding error). Level 1 takes the terms (p < 4 <= sigma_1 / 2),
    level k + 1 the remainders of level k (|r| <= g_k = sigma_{k+1} 2**-(c+1)). The |t| of
    a row of C <= 2**c terms add up to less than 2**53 g_k = sigma_k (at most 4C + C g_1,
    or C g_k + C g_{k+1}), so every partial sum of the t is a multiple of g_k that is a
    double: the row sums are exact in any order, and stay exact when the sums of several
    column blocks of a row are added. What is left out is below C g_K <= 2**-104.
    """
    out = []
    for sigma in sigmas:
        t, p = extract(p, sigma)
        out.append(t.sum(axis=1))
    return out


def extract(p: Array, sigma: float) -> tuple[Array, Array]:
    """t = fl(fl(sigma + p) - sigma) and r = p - t exactly (see ``split_sums``)."""
    t = (sigma + p) - sigma
    return t, p - t


def split_total(parts: list[Array], low: Array) -> tuple[Array, Array]:
    """The double-double sum of ``split_sums``' parts and of ``low``, the plain double sum
    of the terms' low parts: K = len(parts) ``add_d`` (2u**2 each, relative) after an
    exact ``two_sum`` of the first two parts (there are always at least two)."""
    h, lo = two_sum(parts[0], parts[1])
    for part in [*parts[2:], low]:
        h, lo = add_d(h, lo, part)
    return h, lo


def split_eps(width: int) -> float:
    """Relative error bound of ``split_total`` for rows of ``width`` <= 2**c non-negative
    double-double terms (h, l), |l| <= 2**-53 h, the largest term at least 1/2: the
    remainders left out, 2**-104 <= 2**-103 of the sum; the low parts added in plain double
    in any order, at most (C - 1) u sum |l| <= 2**(c - 106) (1 + 2**-40) of it; K ``add_d``,
    K 2u**2 (1 + 2**-40). Written with a margin as 2**-103 + 2**(c - 105) + K 2**-104."""
    c = max(1, (width - 1).bit_length())
    return 2.0**-103 + 2.0 ** (c - 105) + len(split_levels(width)) * 2.0**-104


# -- tables --------------------------------------------------------------------------------


def _dd(value: mpmath.mpf) -> tuple[float, float]:
    """``value`` as a correctly rounded double-double (relative error <= 2**-106)."""
    h = float(value)
    return h, float(value - h)


@cache
def _tables() -> dict[str, Array]:
    ctx = mpmath.MPContext()
    ctx.prec = 200
    ln2 = ctx.ln2
    exp2 = np.array([_dd(ctx.power(2, ctx.mpf(j) / _J)) for j in range(_J)]).T
    logs = np.array([_dd(ctx.log1p(ctx.mpf(i) / _K)) for i in range(-_K // 2, _K + 1)]).T
    coeffs = np.array([_dd(ctx.mpf((-1) ** k) / (k + 1)) for k in range(_LOG_TERMS)]).T
    step = ln2 / _J  # in [2**-13, 2**-12)
    c1 = math.ldexp(math.floor(math.ldexp(float(step), 41)), -41)  # 29 bits
    c2 = math.ldexp(math.floor(math.ldexp(float(step - c1), 70)), -70)  # <= 29 bits
    c3 = float(step - c1 - c2)
    return {
        "exp2_h": exp2[0],
        "exp2_l": exp2[1],
        "log_h": logs[0],
        "log_l": logs[1],
        "coef_h": coeffs[0],
        "coef_l": coeffs[1],
        "ln2": np.array(_dd(ln2)),
        "c": np.array([c1, c2, c3]),
        "inv": np.array([float(_J / ln2)]),
    }


# -- exp and log1p ----------------------------------------------------------------------------


def exp_dd(rh: Array, rl: Array) -> tuple[Array, Array, Array]:
    """exp(rh + rl) = (mh + ml) 2**q for EXP_MIN <= rh <= 0, |rl| <= ulp(rh)/2, with
    relative error at most EPS_EXP = 2**-90; mh in [0.9998, 2.0003), q an int32 array.

    Reduction: N = rint(4096 rh / ln2) (|N| < 2**23.1), s = r - N ln2/4096 with
    ln2/4096 = c1 + c2 + c3 (c1, c2 of 29 bits, so N c1 and N c2 are exact; the rest of
    ln2/4096 below |c3| 2**-53 < 2**-123, times |N|: 2**-99.9). rh - N c1 is exact (for
    N != 0 it is a multiple of ulp(rh) >= 2**-66 below 2**-13 in magnitude; for N = 0 it
    is rh); subtracting N c2 is a two_sum; adding rl - N c3 (|.| <= 2**-42.9) costs two
    roundings <= 2**-96 each. So |s| <= 2**-13.53 and s is off by <= 2**-94.8.

    exp(s) = 1 + w, w = s + s**2/2 + t, s**2 exact by ``two_square``, t = s**3 (1/6 + s/24
    + s**2/120 + s**3/720) in double from sh: |t| <= 2**-43.2 with error <= 6u|t| +
    (neglected sl) 2**-95 + (truncation) 2**-107 <= 2**-93.2; sh + sh**2/2 is a
    ``fast_two_sum`` (exact), and the low-order sums add five roundings of at most u 2**-43
    = 2**-96. So w is off by <= 2**-92.2 (with s's error), relative to exp(s) >= 0.9998.
    Times T = 2**(j/4096) = th + tl (table, 2**-106): T (1 + w) = th + th wh + (th wl + tl
    (1 + wh)), th wh exact by ``two_prod``, th + th wh by ``fast_two_sum`` (th >= 1); the
    rest (|.| <= 2**-42) costs four roundings of at most 2**-94.9 and the neglected tl wl
    (2**-95.1): <= 2**-92.7. Total <= 2**-91.4.
    """
    mh, ml, q = exp_core(rh, rl, exp_tables())
    return mh, ml, q.astype(np.int32)


@cache
def exp_tables() -> tuple[float, float, float, float, Array, Array]:
    """What ``exp_core`` reads: c1, c2, c3, 4096/ln2 and the table 2**(j/4096) (dd)."""
    t = _tables()
    c1, c2, c3 = (float(c) for c in t["c"])
    return c1, c2, c3, float(t["inv"][0]), t["exp2_h"], t["exp2_l"]


def exp_core(rh: Array, rl: Array, tables: tuple) -> tuple[Array, Array, Array]:
    """``exp_dd`` with q as a float, on arrays or (compiled by numba) on single numbers."""
    c1, c2, c3, inv, exp2_h, exp2_l = tables
    n = np.rint(rh * inv)
    a = rh - n * c1
    bh, bl = two_sum(a, -(n * c2))
    sh, sl = two_sum(bh, bl + (rl - n * c3))
    p, e = two_square(sh)
    poly = ((sh * (1 / 720) + 1 / 120) * sh + 1 / 24) * sh + 1 / 6
    tail = sl + (0.5 * e + sh * sl + (sh * p) * poly)
    wh, wl = fast_two_sum(sh, 0.5 * p)
    wl = wl + tail
    q = np.floor(n / _J)
    j = np.intp(n - q * _J)
    th, tl = exp2_h[j], exp2_l[j]
    ph, pl = two_prod(th, wh)
    mh, ml = fast_two_sum(th, ph)
    mh, ml = fast_two_sum(mh, ml + (pl + (th * wl + tl * (1.0 + wh))))
    return mh, ml, q


def exp_scale(rh: Array) -> Array:
    """The exponent q that ``exp_dd`` returns for rh (non-decreasing in rh), as int32."""
    return np.floor(np.rint(rh * exp_tables()[3]) / _J).astype(np.int32)


def log1p_dd(sh: Array, sl: Array) -> tuple[Array, Array]:
    """log(1 + s) for s = sh + sl >= -1/2 (finite), relative error <= EPS_LOG = 2**-88.

    s > 1: X = 1 + s (``add_d``, 2u**2) and, for any y0 (numpy's log as a guess), log X =
    y0 + log1p(d), d = X exp(-y0) - 1 (``exp_dd``, ``mul``: d is off by <= 2**-89.98 +
    u|d|). Where |d| <= 2**-40, log1p(d) = d - d**2/2 within 2**-121 and one more rounding
    (u|d|), and y0 + (d - d**2/2) is a ``fast_two_sum`` (y0 >= ln 2): absolute error <=
    2**-89.66, relative <= 2**-89.1 (log X > ln 2). Elsewhere (a bad guess, or X >=
    2**995, past ``two_prod``'s range) X = v 2**E with v in [1, 2], and log X = E ln2 +
    log1p(v - 1), two non-negative terms (v - 1 is exact, and only tiny when E >= 1), the
    latter as below.

    s <= 1 + 2**-11: i = rint(1024 s) in [-512, 1024], w = (s - i/1024) / (1 + i/1024) (s -
    i/1024 exact by Sterbenz, the division ``div_d``), |w| <= 2**-10 (1 + 2**-42), and

        log1p(s) = log(1 + i/1024) + log1p(w),   log1p(w) = w sum_{k<11} (-w)**k / (k+1)

    (the first term left out is below 2**-113 |w|); terms k >= 5 in double (together
    below 2**-52.5 |w|, error <= 2**-101 |w|), k < 5 in dd Horner (5 ``mul`` and ``add``,
    error <= 2**-98 |w| with the final product and ``div_d``). The table entry (2**-106)
    and log1p(w) cancel by at most a factor 3.1 (|log1p(w)| <= 2**-10.99 when i != 0,
    where |log(1 + i/1024)| >= 2**-10.01), so the relative error is <= 3.1 (2**-97.8 +
    2**-106) + EPS_OP < 2**-95.5, well inside EPS_LOG. In E ln2 + log1p(v - 1), forming
    1 + s adds 2u**2 to the logarithm's absolute error, and E ln2 one ``mul_d``.
    """
    t = _tables()
    big = sh > 1.0
    yh, yl = np.empty_like(sh), np.empty_like(sh)
    if big.any():
        uh, ul = add_d(sh[big], sl[big], 1.0)
        y0 = np.log(uh)  # a guess, checked through d
        eh, el, q = exp_dd(-y0, np.zeros_like(y0))
        ph, pl = mul(uh, ul, eh, el)
        d = (np.ldexp(ph, q) - 1.0) + np.ldexp(pl, q)
        bh, bl = fast_two_sum(y0, d - 0.5 * (d * d))
        far = ~(np.abs(d) <= 2.0**-40) | (uh >= 2.0**995)  # two_prod's range
        if far.any():
            bh[far], bl[far] = _log_table(uh[far], ul[far], t)
        yh[big], yl[big] = bh, bl
    small = ~big
    if small.any():
        yh[small], yl[small] = _log1p_small(sh[small], sl[small], t)
    return yh, yl


def _log_table(uh: Array, ul: Array, t: dict[str, Array]) -> tuple[Array, Array]:
    """log(u) for u = uh + ul > 2: E ln2 + log1p(v - 1), u = v 2**E, v in [1, 2]."""
    _, exp = np.frexp(uh)
    e = exp - 1
    vh, vl = np.ldexp(uh, -e), np.ldexp(ul, -e)  # e: int32
    wh, wl = fast_two_sum(vh - 1.0, vl)
    lh, ll = _log1p_small(wh, wl, t)
    kh, kl = mul_d(t["ln2"][0:1], t["ln2"][1:2], e.astype(np.float64))
    return add(kh, kl, lh, ll)


def _log1p_small(sh: Array, sl: Array, t: dict[str, Array]) -> tuple[Array, Array]:
    i = np.rint(sh * _K)
    d = sh - i / _K
    dh, dl = two_sum(d, sl)
    wh, wl = div_d(dh, dl, 1.0 + i / _K)
    ch, cl = t["coef_h"], t["coef_l"]
    q = np.full_like(wh, ch[_LOG_TERMS - 1])
    for k in range(_LOG_TERMS - 2, _LOG_DD_TERMS - 1, -1):
        q = q * wh + ch[k]
    ph, pl = q, np.zeros_like(q)
    for k in range(_LOG_DD_TERMS - 1, -1, -1):
        ph, pl = mul(ph, pl, wh, wl)
        ph, pl = add(ph, pl, ch[k], cl[k])
    ph, pl = mul(ph, pl, wh, wl)
    idx = (i + _K // 2).astype(np.intp)
    return add(t["log_h"][idx], t["log_l"][idx], ph, pl)


def neg_log_dd(p: Array) -> tuple[Array, Array]:
    """-log p for doubles p in (0, 1), relative error <= EPS_LOG + 2 EPS_OP.

    p >= 1/2: -log1p(p - 1) (p - 1 exact). p < 1/2: p = f 2**E with f in [1/2, 1), and
    -log p = -E ln2 - log1p(f - 1), two non-negative terms (E <= -1).
    """
    yh, yl = np.empty_like(p), np.empty_like(p)
    high = p >= 0.5
    if high.any():
        h, lo = log1p_dd(p[high] - 1.0, np.zeros(int(high.sum())))
        yh[high], yl[high] = -h, -lo
    low = ~high
    if low.any():
        f, e = np.frexp(p[low])
        h, lo = log1p_dd(f - 1.0, np.zeros_like(f))
        t = _tables()
        kh, kl = mul_d(t["ln2"][0:1], t["ln2"][1:2], -e.astype(np.float64))
        yh[low], yl[low] = add(kh, kl, -h, -lo)
    return yh, yl


# -- rounding to a format -------------------------------------------------------------------


def round_to(h: Array, lo: Array, q: Array, fmt: Format, tie: int) -> Array:
    """(h + lo) 2**q (exact; h > 0, |lo| <= ulp(h)/2) rounded to ``fmt``; a halfway case
    goes up if ``tie`` > 0, down otherwise. Values past the largest finite one give inf."""
    f, e = np.frexp(h)
    e = e - 1 - ((f == 0.5) & (lo < 0)).astype(np.int32)  # floor(log2(h + lo))
    q = np.asarray(q, dtype=np.int32)  # int32: numpy's ldexp is slow on int64
    quantum = np.maximum(e + q, fmt.emin) - (fmt.precision - 1)
    shift = q - quantum
    th, tl = np.ldexp(h, shift), np.ldexp(lo, shift)  # exact: th < 2**p <= 2**53
    n = np.floor(th)
    d = th - n - 0.5  # exact when it matters (th - n >= 1/4)
    if tie > 0:
        n += d >= -tl
    else:  # halfway below n happens only when ulp(th) = 1
        n += (d > -tl).astype(np.float64) - ((th == n) & (tl == -0.5))
    with np.errstate(over="ignore"):
        out = np.ldexp(n, quantum)
    return np.where(out > fmt.max, np.inf, out)


def ziv(h: Array, lo: Array, q: Array, radius: Array, fmt: Format) -> tuple[Array, Array]:
    """Round x = (h + lo) 2**q to ``fmt`` when the enclosure [x - r 2**q, x + r 2**q]
    (``radius`` r >= 0) rounds to one value; returns (rounded, ok).

    Both ends are widened by 2**-100 |h| (covering the error of forming them) and rounded
    outwards at ties, so an enclosure that touches a halfway point is refused, as are zero
    or non-finite h, enclosures reaching zero and results that overflow. In float64 most
    cells take a shortcut with the same outcome (``ziv_double``), and ``_settle`` the rest.
    """
    if fmt.precision == 53 and fmt.emin == -1022:
        with np.errstate(over="ignore"):
            value, ok = ziv_double(h, lo, q, radius)
        _settle(h, lo, q, radius, value, ok, fmt)
        return value, ok
    return _ziv_rounded(h, lo, q, radius, fmt)


def ziv_double(h: Array, lo: Array, q: Array, radius: Array) -> tuple[Array, Array]:
    """``ziv`` in float64 where the result is |h| 2**q itself and normal: with a = |h|, b =
    lo sign(h) and r' the widened radius, fl(a + c) = a only for -ulp'/2 <= c <= ulp(a)/2
    (ulp' = a - pred(a)), so when it holds for c = fl(b + r') and c = fl(b - r'), which are
    off by less than r' - r, x's enclosure lies strictly between the halfway points around
    a and both of its ends round to a, as in ``ziv``; ok is False wherever this does not
    apply. On arrays or (compiled by numba) on single numbers."""
    a = np.abs(h)
    b = lo * np.sign(h)
    r = radius * (1 + 2.0**-40) + a * 2.0**-100
    v = np.ldexp(a, np.int32(q))
    ok = (v >= _TINY64) & (v <= _MAX64) & (a >= 2.0**-960)
    ok &= (a + (b + r) == a) & (a + (b - r) == a)
    return np.copysign(v, h), ok


def _settle(h: Array, lo: Array, q: Array, radius: Array, value: Array, ok: Array,
           fmt: Format) -> None:  # fmt: skip
    """Complete ``ziv_double``'s (value, ok) in place with ``ziv`` through ``round_to`` where
    it did not apply, except for zero and non-finite h (refused either way)."""
    rest = ~ok & (np.abs(h) > 0) & (np.abs(h) < np.inf)
    if rest.any():
        h, lo, q, radius = (np.broadcast_to(v, ok.shape)[rest] for v in (h, lo, q, radius))
        value[rest], ok[rest] = _ziv_rounded(h, lo, q, radius, fmt)


def _ziv_rounded(h: Array, lo: Array, q: Array, radius: Array, fmt: Format) -> tuple[Array, Array]:
    """``ziv`` through ``round_to`` of both widened ends, in any format."""
    a = np.abs(h)
    sign = np.where(h < 0, -1.0, 1.0)
    r = radius * (1 + 2.0**-40) + a * 2.0**-100
    ok = np.isfinite(h) & np.isfinite(r) & (a > 0) & (a - r > a * 2.0**-40)
    a = np.where(ok, a, 1.0)
    b = np.where(ok, np.where(h < 0, -lo, lo), 0.0)
    r = np.where(ok, r, 0.0)
    lo = fast_two_sum(a, b - r)
    hi = fast_two_sum(a, b + r)
    low = round_to(*lo, q, fmt, tie=-1)
    high = round_to(*hi, q, fmt, tie=+1)
    ok &= (low == high) & np.isfinite(high)
    return sign * low, ok


def ziv_above(
    eh: Array, el: Array, h: Array, lo: Array, radius: Array, fmt: Format
) -> tuple[Array, Array]:
    """Round a positive value known to lie in (e, x + r], where e = eh + el > 0 is exact
    (normalised) and x = h + lo > 0 is an enclosure's centre with radius r: rounding is
    monotonic, so e approached from above (a halfway e goes up) and x + r (widened as in
    ``ziv``) must round to one value. This settles an exact part on a halfway point plus a
    positive part far below the double-double's resolution; returns (rounded, ok)."""
    r = radius * (1 + 2.0**-40) + np.abs(h) * 2.0**-100
    ok = np.isfinite(h) & np.isfinite(r) & (h > 0) & (eh > 0) & np.isfinite(eh)
    h, lo, r = np.where(ok, h, 1.0), np.where(ok, lo, 0.0), np.where(ok, r, 0.0)
    eh, el = np.where(ok, eh, 1.0), np.where(ok, el, 0.0)
    zero = np.zeros(h.shape, dtype=np.int32)
    low = round_to(eh, el, zero, fmt, tie=+1)
    high = round_to(*fast_two_sum(h, lo + r), zero, fmt, tie=+1)
    return low, ok & (low == high) & np.isfinite(high)
