"""Double-double arithmetic on numpy float64 arrays, with proved error bounds.

A double-double (dd) is a pair of float64 arrays ``(h, lo)`` standing for the exact sum
h + lo, normalised so that |lo| <= ulp(h) / 2. With u = 2**-53 (IEEE binary64, round to
nearest; numpy never contracts a*b + c into an FMA), the building blocks are:

* ``two_sum(a, b)`` (Knuth) and ``fast_two_sum(a, b)`` (Dekker, needs |a| >= |b| or
  a = 0): s + e = a + b *exactly*, s = fl(a + b), for any finite a, b without overflow.
* ``two_prod(a, b)`` (Dekker, Veltkamp splitting by 2**27 + 1, no FMA): p + e = a b
  exactly when |a|, |b| < 2**995 and the product does not underflow (|ab| >= 2**-969);
  below that the error is at most 2**-1074 in absolute value.
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

No numpy transcendental function is used anywhere: only +, -, *, /, rint, floor, frexp
and ldexp, which IEEE 754 and numpy define exactly.

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
EPS_EXP = 2.0**-90  # relative error of exp_dd (about 2**-92.2 proved below)
EPS_LOG = 2.0**-88  # relative error of log1p_dd (about 2**-96 proved below)
EXP_MIN = -1500.0  # exp_dd's domain is [EXP_MIN, 0]

_SPLITTER = 134217729.0  # 2**27 + 1
_J = 4096  # exp table size: exp(r) = 2**(N / 4096) exp(s), |s| <= ln2 / 8192
_K = 128  # log table step: log1p(s) = log(1 + i/128) + log1p(w), |w| <= 2**-7
_LOG_TERMS = 15  # log1p(w) = sum_{k < 15} (-w)**k w / (k + 1), |w| <= 2**-7
_LOG_DD_TERMS = 7  # terms evaluated in double-double (the others in double)


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

    exp(s) = 1 + s + s**2/2 + t, s**2 exact by two_prod, t = s**3 (1/6 + s/24 + s**2/120
    + s**3/720 + s**4/5040) in double from sh: |t| <= 2**-43.2 with error <= 5u|t| +
    (neglected sl) 2**-95 + (truncation) 2**-108 <= 2**-93.3; the low-order sums add
    four roundings of at most u 2**-43 = 2**-96. Total <= 2**-92.3 relative to exp(s) >=
    0.9998. Times 2**(j/4096) (table, 2**-106) with ``mul`` (EPS_OP): <= 2**-92.2.
    """
    t = _tables()
    c1, c2, c3 = t["c"]
    n = np.rint(rh * t["inv"][0])
    a = rh - n * c1
    bh, bl = two_sum(a, -(n * c2))
    sh, sl = two_sum(bh, bl + (rl - n * c3))
    p, e = two_prod(sh, sh)
    poly = (((sh * (1 / 5040) + 1 / 720) * sh + 1 / 120) * sh + 1 / 24) * sh + 1 / 6
    tail = sl + (0.5 * e + sh * sl + (sh * p) * poly)
    h1, l1 = fast_two_sum(1.0, sh)
    h2, l2 = two_sum(h1, 0.5 * p)
    eh, el = fast_two_sum(h2, (l1 + l2) + tail)
    q = np.floor(n / _J)
    j = (n - q * _J).astype(np.intp)
    mh, ml = mul(t["exp2_h"][j], t["exp2_l"][j], eh, el)
    return mh, ml, q.astype(np.int32)


def log1p_dd(sh: Array, sl: Array) -> tuple[Array, Array]:
    """log(1 + s) for s = sh + sl >= -1/2 (finite), relative error <= EPS_LOG = 2**-88.

    s > 1: 1 + s = v 2**E with v in [1, 2] (``add_d``, EPS_OP), and log(1 + s) = E ln2 +
    log1p(v - 1), two non-negative terms (v - 1 is exact, and only tiny when E >= 1).
    s <= 1 + 1/256: i = rint(128 s) in [-64, 128], w = (s - i/128) / (1 + i/128) (s -
    i/128 exact by Sterbenz, the division ``div_d``), |w| <= 2**-7, and

        log1p(s) = log(1 + i/128) + log1p(w),   log1p(w) = w sum_{k<15} (-w)**k / (k+1)

    (the first term left out is below 2**-109 |w|); terms k >= 7 in double (together
    below 2**-52 |w|, error <= 2**-103 |w|), k < 7 in dd Horner (7 ``mul`` and ``add``,
    error <= 2**-98 |w| with the final product and ``div_d``). The table entry (2**-106)
    and log1p(w) cancel by at most a factor 3 (|log1p(w)| <= 2**-7.99 when i != 0, where
    |log(1 + i/128)| >= 2**-7.01), so the relative error is <= 3 (2**-98 + 2**-106) +
    EPS_OP < 2**-96, well inside EPS_LOG. For s > 1, forming 1 + s adds 2u**2 to the
    logarithm's absolute error, and E ln2 one ``mul_d``; both terms are >= 0.
    """
    t = _tables()
    big = sh > 1.0
    yh, yl = np.empty_like(sh), np.empty_like(sh)
    if big.any():
        uh, ul = add_d(sh[big], sl[big], 1.0)
        _, exp = np.frexp(uh)
        e = exp - 1
        vh, vl = np.ldexp(uh, -e), np.ldexp(ul, -e)  # e: int32
        wh, wl = fast_two_sum(vh - 1.0, vl)
        lh, ll = _log1p_small(wh, wl, t)
        kh, kl = mul_d(t["ln2"][0:1], t["ln2"][1:2], e.astype(np.float64))
        yh[big], yl[big] = add(kh, kl, lh, ll)
    small = ~big
    if small.any():
        yh[small], yl[small] = _log1p_small(sh[small], sl[small], t)
    return yh, yl


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
    or non-finite h, enclosures reaching zero and results that overflow.
    """
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
