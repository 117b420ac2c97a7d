"""Exact dot products: the logits h W^T + b of a linear layer, every entry exactly, with
float64 BLAS doing the work (Ozaki et al., "Error-free transformations of matrix
multiplication by using fast routines of matrix multiplication and its applications",
Numer. Algorithms 59, 2012).

Inputs are binary floats held in float64 arrays (float64, float32, float16, bfloat16
values), so every product h[n, k] W[v, k] is an exact dyadic rational, and so is every
logit. Float arithmetic is IEEE binary64, round to nearest, without flush-to-zero (checked).

**Slicing.** With D the inner dimension and T = 53 - ceil(log2 D), a row x of h or W is cut
into slices x = sum_a Q_a 2**s_a + R, each Q_a a vector of integers below 2**beta in
magnitude (beta_h for h, beta_w for W, beta_h + beta_w = T). Level a takes the row's
current remainder r (|r| <= m < 2**e, e from frexp of the row's max m), and
Q_a = trunc(r 2**(beta - e)), s_a = e - beta, r <- r - Q_a 2**s_a: the product by a power
of two is exact when it scales up and, when it scales down, may only round values below
1 (whose trunc is 0 either way); Q_a 2**s_a is r truncated to a multiple of 2**s_a (its
own bits, so a float), and the new remainder is the bits below, exact, |r| < 2**s_a.
The remainder is kept scaled (Q and r as integer and fractional parts of r 2**(beta - e)),
so that a level costs one product, one trunc and one subtraction. Each level starts from
the remainder's own maximum, so a row whose entries have a gap in exponents skips it.

**Products.** For slices Q_a of h and P_b of W, every entry of Q_a P_b^T is a sum of D
integer products below 2**(beta_h + beta_w) in magnitude: D (2**beta_h - 1)(2**beta_w - 1)
<= 2**53, so every partial sum, in any order and with or without FMA, is an integer of at
most 53 bits and float64 BLAS computes it exactly (any GEMM that sums the D products,
as OpenBLAS, MKL and numpy's own loops do; not a Strassen-like one). Scaled by
2**(s_a + s_b), it is the exact term T_ab, unless that underflows or overflows (see the
fallback). The slices of all rows of h are stacked into one matrix; W is sliced in blocks
of rows (``BLOCK_BYTES``) and its level b only for the rows that still have a remainder;
one GEMM per block and W level.
Then h W^T + b = sum_ab T_ab + b + F exactly, F the part of the remainders.

**Fallback.** Levels are capped (``CAP_BITS`` = 96 bits of a row's span per side: enough
for every float32, bfloat16 and float16 row of ordinary spread, and float64 rows spread
by less than about 2**40). What the cap leaves, R_h and R_w, is added exactly with Python
integers, only over the columns where it is not zero and only for the entries it touches
(every entry of a row of h or column of the logits with a remainder):
F = R_h w + (h - R_h) R_w. Entries whose terms would leave the float64 range (a logit
possibly above 2**``E_MAX``, or slice units below 2**-1074, as with float64 inputs near
1e300 or 1e-300) are computed entirely with integers, their terms set to 0.
``ExactProducts.fallback`` holds F for the entries that need it.

**Cost.** Let k_h, k_w be the levels a row needs (about span / beta; float32 rows of
normal values span ~40-55 bits, bfloat16 ~25-35): the GEMMs do 2 D V sum_n k_h(n) k_w
flops and the slicing of W 5 k_w + 2 passes over V x D (a product, a trunc, a subtraction
and two reductions per level) in cache-sized blocks, against 2 N D V flops and one pass
for the float64 product h @ W.T. With the default split (the side with fewer rows takes
beta = T/3, the other 2T/3: at D = 4096, beta_h = 14 and beta_w = 27), float32 W needs
k_w = 2 and bfloat16 W mostly 1, and h 2 or 3. Memory: the stacked h
slices, one M_h x V buffer per W level (M_h = sum_n k_h(n)), k_h k_w terms of N x V, and a
few W blocks; never V x D beyond the input. The integer fallback costs about 1 us per
product of the remainders' nonzero entries with a whole row or column.

**Approximation.** ``ExactProducts.approximation`` sums the n terms of each entry exactly
by extraction (Rump, Ogita and Oishi, "Accurate floating-point summation"): with
max |p| < 2**mu and 2**c >= n, sigma = 2**(mu + c + 1), q = fl(fl(sigma + p) - sigma) is a
multiple of 2**-53 sigma within 2**-53 sigma of p, and p - q is exact; the q add up exactly
(all partial sums are multiples of 2**-53 sigma below sigma). Repeating on the remainders
until they vanish gives exact level sums tau_1, ..., tau_L; a TwoSum cascade gives
S = s + sum(e) exactly, lo = fl(sum(e)) and hi, lo = TwoSum(s, lo); the one rounded step
is bounded (Higham) and reported. hi is then the correctly rounded S wherever the
enclosure lies strictly inside hi's rounding interval, and is recomputed from Fractions
elsewhere: hi is always the correctly rounded float64 of the exact logit.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from types import MappingProxyType
from typing import Any

import numpy as np

__all__ = ["CAP_BITS", "E_MAX", "ExactProducts", "products", "split_bits"]

CAP_BITS = 96  # levels per row of h (or W): ceil(CAP_BITS / beta)
E_MAX = 1000  # terms and bias below 2**E_MAX; logits that may not be go to the fallback
BLOCK_BYTES = 1 << 21  # W is sliced in blocks of rows of about this size
CHUNK = 1 << 16  # entries per chunk in approximation()
MAX_TERMS = 4096  # 2**c >= terms, E_MAX + c + 2 <= 1023 keeps sigma finite

_U = 2.0**-53
_TINY = 2.0**-1074
_NO_TOP = -(1 << 20)  # exponents of rows of zeros: never out of range
_NO_LOW = 1 << 20
_SHRINK = 1.0 - 2.0**-50
_NONFINITE = (
    "products() takes finite values only (found inf or nan); the caller must handle "
    "non-finite logits by IEEE rules"
)


# -- slicing ------------------------------------------------------------------------------


@dataclass
class _Split:
    """x[rows[a]] = sum_a q[a] 2**s[a][:, None] + residual (rows ``residual_rows``).

    ``top``: per row, max |x| < 2**top; ``low``: the smallest slice exponent of the row."""

    rows: list[np.ndarray]
    q: list[np.ndarray]
    s: list[np.ndarray]
    top: np.ndarray
    low: np.ndarray
    residual_rows: np.ndarray
    residual: np.ndarray


def _pow2(t: np.ndarray) -> np.ndarray:
    return np.ldexp(1.0, t)


def _absmax(z: np.ndarray) -> np.ndarray:
    return np.maximum(z.max(axis=1), -z.min(axis=1))


def _scale(z: np.ndarray, t: np.ndarray, out: np.ndarray | None) -> np.ndarray:
    """z 2**t per row: exact when t >= 0 (the result stays below 2**beta); when t < 0 only
    results below 2**-1022 may round (t >= -1023, so 2**t is a float)."""
    if t.max() <= 1023:
        return np.multiply(z, _pow2(t)[:, None], out=out)
    t1 = np.minimum(t, 1000)  # two exact steps up
    y = np.multiply(z, _pow2(t1)[:, None], out=out)
    y *= _pow2(t - t1)[:, None]
    return y


class _Work:
    """Buffers reused from one block of W to the next: the remainder and each level."""

    def __init__(self) -> None:
        self.buffers: dict[Any, np.ndarray] = {}

    def get(self, key: Any, rows: int, cols: int) -> np.ndarray:
        buf = self.buffers.get(key)
        if buf is None or buf.shape[0] < rows or buf.shape[1] != cols:
            buf = self.buffers[key] = np.empty((rows, cols))
        return buf[:rows]


def _split(x: np.ndarray, beta: int, cap: int, work: _Work | None = None) -> _Split:
    """Cut the rows of x into at most ``cap`` levels of integer slices below 2**beta (the
    slices live in ``work``'s buffers, if given, until the next call)."""
    R, D = x.shape
    top = np.full(R, _NO_TOP, np.int64)
    low = np.full(R, _NO_LOW, np.int64)
    levels_rows: list[np.ndarray] = []
    levels_q: list[np.ndarray] = []
    levels_s: list[np.ndarray] = []
    rows = np.arange(R)
    z, owned = x, False  # the remainder is z 2**u; owned: z may be overwritten
    u = np.zeros(R, np.int64)
    m = _absmax(z)
    if not np.isfinite(m).all():
        raise ValueError(_NONFINITE)
    for level in range(cap):
        live = m > 0
        if not live.all():
            rows, z, u, m, owned = rows[live], z[live], u[live], m[live], True
        if rows.size == 0:
            break
        r = rows.size
        e = np.frexp(m)[1].astype(np.int64)  # m < 2**e
        if level == 0:
            top[rows] = e
        t = beta - e
        neg = t < 0  # rows of unscaled values >= 2**beta (u = 0 there)
        if neg.any():
            y = _scale(z, t, None)
        else:
            y = _scale(z, t, z if owned else None if work is None else work.get("z", r, D))
        q = np.trunc(y, out=None if work is None else work.get(level, r, D))
        s = u - t
        if neg.any():
            i = np.flatnonzero(neg)
            zi = z[i] - q[i] * _pow2(-t[i])[:, None]  # exact: the bits below 2**(e - beta)
            y -= q
            y[i] = zi
            u = np.where(neg, u, s)
        else:
            y -= q  # the fractional part: exact
            u = s
        z, owned = y, True
        levels_rows.append(rows)
        levels_q.append(q)
        levels_s.append(s)
        low[rows] = s
        m = _absmax(z)
    left = m > 0 if rows.size else np.zeros(0, bool)
    residual_rows = rows[left] if left.any() else np.zeros(0, np.int64)
    residual = np.ldexp(z[left], u[left][:, None]) if left.any() else np.zeros((0, D))
    return _Split(levels_rows, levels_q, levels_s, top, low, residual_rows, residual)


def split_bits(n_rows_h: int, n_rows_w: int, depth: int) -> tuple[int, int]:
    """(beta_h, beta_w) for an inner dimension ``depth``: beta_h + beta_w = T =
    53 - ceil(log2 depth), so that depth (2**beta_h - 1)(2**beta_w - 1) <= 2**53. The side
    with at least 4 times fewer rows takes round(T / 3) (its extra levels only add rows
    to the GEMMs, while every level of the larger side is a pass over it); else T // 2."""
    T = 53 - max(0, (depth - 1).bit_length())
    if T < 2:
        raise ValueError(f"inner dimension {depth} too large for exact float64 products")
    small = max(1, round(T / 3))
    if 4 * n_rows_h <= n_rows_w:
        return small, T - small
    if 4 * n_rows_w <= n_rows_h:
        return T - small, small
    return T // 2, T - T // 2


# -- exact integers (the fallback) -----------------------------------------------------------


def _ints(a: np.ndarray) -> tuple[np.ndarray, int]:
    """An object array X of Python ints and E with a = X 2**E exactly."""
    f, e = np.frexp(a)
    m = np.ldexp(f, 53).astype(np.int64)  # |m| < 2**53, exact
    nz = m != 0
    if not nz.any():
        return np.zeros(a.shape, dtype=object), 0
    e = e.astype(np.int64) - 53
    e0 = int(e[nz].min())
    shift = np.where(nz, e - e0, 0)
    return m.astype(object) << shift.astype(object), e0


def _fraction(x: int, e: int) -> Fraction:
    return Fraction(x << e) if e >= 0 else Fraction(x, 1 << -e)


def _dd(value: Fraction) -> tuple[float, float, float]:
    """(hi, lo, bound): hi = RN(value), lo = RN(value - hi), bound >= |value - hi - lo|;
    (+-inf, 0, inf) if value rounds to an infinity."""
    try:
        hi = float(value)
    except OverflowError:
        return (math.inf if value > 0 else -math.inf), 0.0, math.inf
    if math.isinf(hi):
        return hi, 0.0, math.inf
    rest = value - Fraction(hi)
    lo = float(rest)
    err = abs(rest - Fraction(lo))
    bound = float(err)
    if Fraction(bound) < err:
        bound = math.nextafter(bound, math.inf)
    return hi, lo, bound


# -- exact summation of the terms (approximation) ------------------------------------------


def _two_sum(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = a + b
    bb = s - a
    return s, (a - (s - bb)) + (b - bb)


def _exact_sum(p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Column sums of p (n x m, |p| < 2**E_MAX) as hi + lo with |sum - hi - lo| <= bound."""
    n, m = p.shape
    c = max(1, (n - 1).bit_length())  # 2**c >= n
    taus: list[np.ndarray] = []
    idx = np.arange(m)
    p = p.copy()
    while idx.size:
        M = np.maximum(p.max(axis=0), -p.min(axis=0))
        live = M > 0
        if not live.all():
            p, M, idx = p[:, live], M[live], idx[live]
            if not idx.size:
                break
        sigma = np.ldexp(1.0, np.frexp(M)[1] + (c + 1))  # max |p| < 2**mu, sigma <= 2**1013
        q = (p + sigma) - sigma  # exact (Sterbenz), a multiple of 2**-53 sigma
        p -= q  # exact
        tau = np.zeros(m)
        tau[idx] = q.sum(axis=0)  # exact in any order: partial sums below sigma
        taus.append(tau)
    if not taus:
        z = np.zeros(m)
        return z, z.copy(), z.copy()
    s = taus[-1]
    errs = []
    for tau in reversed(taus[:-1]):
        s, e = _two_sum(tau, s)
        errs.append(e)
    lo = np.zeros(m)
    total = np.zeros(m)
    count = np.zeros(m, np.int64)
    for e in errs:
        lo += e
        total += np.abs(e)
        count += e != 0
    # Recursive summation of `count` nonzero terms: at most (count - 1) roundings, each at
    # most u |partial| <= u sum|e| (1 + gamma), and sum|e| <= total (1 + gamma); the margin
    # 2**-38 covers both gammas and the rounding of the products, 2**-1074 an underflow.
    k = np.maximum(count - 1, 0) * (_U * (1.0 + 2.0**-38))
    bound = np.where(count >= 2, total * k + _TINY, 0.0)
    hi, lo = _two_sum(s, lo)
    return hi, lo, bound


def _certain(hi: np.ndarray, lo: np.ndarray, bound: np.ndarray) -> np.ndarray:
    """Where hi = RN(S) for every S in [hi + lo - bound, hi + lo + bound]: the interval
    lies strictly inside (hi - down / 2, hi + up / 2), up and down the gaps to the
    neighbours of hi. (up - 2 lo) is computed rounded; the factor 1 - 2**-50 makes the
    test safe (in the subnormal range the difference is exact)."""
    with np.errstate(over="ignore", invalid="ignore"):
        up = np.nextafter(hi, np.inf) - hi
        down = hi - np.nextafter(hi, -np.inf)
        two = 2.0 * bound
        ok = (two < (up - 2.0 * lo) * _SHRINK) & (two < (down + 2.0 * lo) * _SHRINK)
    return ok & np.isfinite(hi)


# -- the result --------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class ExactProducts:
    """The exact values of h @ W.T (+ b), N x V: at [n, v], the exact sum of the entries
    ``terms[t][n, v]`` (float64, each an exact slice product sum_k Q_a[n, k] P_b[v, k]
    2**(s_a + s_b), and the bias), plus ``fallback[(n, v)]`` where present.

    ``fallback`` maps the entries that needed exact integer arithmetic to the exact
    rational to add: the products of the remainders left by the level cap, or the whole
    logit (terms 0 there) where the terms would leave the float64 range. ``beta`` is
    (beta_h, beta_w); ``stats``: ``levels_h`` and ``levels_w`` (rows sliced at each level),
    ``gemm_rows`` (M_h), ``cap``, ``residual_rows`` (of h, of W), ``out_of_range``
    (entries computed whole) and ``work_bytes`` (the arrays products() held at its peak,
    besides its inputs; approximation() adds its three N x V outputs and a chunk of
    ``CHUNK`` entries of every term a few times)."""

    terms: tuple[np.ndarray, ...]
    fallback: Mapping[tuple[int, int], Fraction]
    shape: tuple[int, int]
    beta: tuple[int, int]
    stats: Mapping[str, Any] = field(default_factory=dict)

    @property
    def fallback_count(self) -> int:
        """Entries that needed the integer fallback."""
        return len(self.fallback)

    @property
    def fallback_share(self) -> float:
        """The fraction of all N V logits that needed the integer fallback."""
        size = self.shape[0] * self.shape[1]
        return len(self.fallback) / size if size else 0.0

    def fraction(self, n: int, v: int) -> Fraction:
        """The exact value of logit [n, v]."""
        n, v = range(self.shape[0])[n], range(self.shape[1])[v]
        total = sum((Fraction(float(t[n, v])) for t in self.terms), Fraction(0))
        return total + self.fallback.get((n, v), Fraction(0))

    def fractions(self) -> list[list[Fraction]]:
        """Every logit exactly (for small shapes)."""
        N, V = self.shape
        lists = [t.tolist() for t in self.terms]
        out = []
        for n in range(N):
            row = []
            for v in range(V):
                x = sum((Fraction(t[n][v]) for t in lists), Fraction(0))
                row.append(x + self.fallback.get((n, v), Fraction(0)))
            out.append(row)
        return out

    def approximation(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(hi, lo, bound), N x V each: |exact - (hi + lo)| <= bound elementwise (proved;
        0 where hi + lo is exact), and hi = RN(exact), the correctly rounded float64,
        everywhere (zero as +0), and |lo| <= ulp(hi) / 2. Where the exact logit rounds to
        +-inf: hi = +-inf, lo = 0, bound = inf."""
        N, V = self.shape
        hi, lo, bound = np.zeros((N, V)), np.zeros((N, V)), np.zeros((N, V))
        if N == 0 or V == 0:
            return hi, lo, bound
        n = len(self.terms)
        cols = min(V, CHUNK)
        rows = max(1, CHUNK // cols)
        for r0 in range(0, N, rows):
            r1 = min(N, r0 + rows)
            for c0 in range(0, V, cols):
                c1 = min(V, c0 + cols)
                p = np.stack([t[r0:r1, c0:c1] for t in self.terms]).reshape(n, -1)
                h_, l_, b_ = _exact_sum(p)
                shape = (r1 - r0, c1 - c0)
                hi[r0:r1, c0:c1] = h_.reshape(shape)
                lo[r0:r1, c0:c1] = l_.reshape(shape)
                bound[r0:r1, c0:c1] = b_.reshape(shape)
        redo = ~_certain(hi, lo, bound)
        for key in self.fallback:
            redo[key] = True
        for i, j in zip(*np.nonzero(redo)):
            hi[i, j], lo[i, j], bound[i, j] = _dd(self.fraction(i, j))
        return hi, lo, bound

    def nearest(self) -> np.ndarray:
        """The correctly rounded float64 of every logit (overflow to +-inf)."""
        return self.approximation()[0]


# -- products -----------------------------------------------------------------------------------


def _as_float64(x: Any, name: str, ndim: int, check: bool = True) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {a.shape}")
    out = np.asarray(a, dtype=np.float64)
    if a.dtype != np.float64:
        back = out.astype(a.dtype)
        if not np.array_equal(back, a, equal_nan=True):
            raise ValueError(f"{name} ({a.dtype}) does not convert exactly to float64")
    if check and not np.isfinite(out).all():
        raise ValueError(f"{name}: {_NONFINITE}")
    return out


_FP_CHECKED = False


def _check_fp_env() -> None:
    """Gradual underflow and round to nearest: what every exactness claim here assumes."""
    global _FP_CHECKED
    if _FP_CHECKED:
        return
    tiny = np.array([2.0**-1074, 2.0**-1022])
    ok = (tiny * 1.0)[0] == 2.0**-1074 and (tiny * 0.5)[1] == 2.0**-1023
    one = np.array([1.0])
    ok = ok and (one + 2.0**-53)[0] == 1.0 and (one + 3 * 2.0**-53)[0] == 1.0 + 2.0**-51
    if not ok:
        raise RuntimeError("float64 arithmetic flushes subnormals or does not round to nearest")
    _FP_CHECKED = True


def products(
    h: np.ndarray,
    W: np.ndarray,
    b: np.ndarray | None = None,
    *,
    beta: tuple[int, int] | None = None,
    max_slices: tuple[int, int] | None = None,
) -> ExactProducts:
    """Exact h @ W.T + b for h (N x D), W (V x D), b (V) of finite binary floats.

    ``beta`` = (beta_h, beta_w) overrides ``split_bits`` (D (2**beta_h - 1)(2**beta_w - 1)
    must be <= 2**53); ``max_slices`` = (k_h, k_w) overrides the level caps
    ceil(CAP_BITS / beta). Raises ValueError for non-finite inputs."""
    _check_fp_env()
    h = _as_float64(h, "h", 2)
    W = _as_float64(W, "W", 2, check=False)  # checked block by block in _split
    N, D = h.shape
    V = W.shape[0]
    if W.shape[1] != D:
        raise ValueError(f"h is {h.shape} and W is {W.shape}: inner dimensions differ")
    if b is not None:
        b = _as_float64(b, "b", 1)
        if b.shape != (V,):
            raise ValueError(f"b has shape {b.shape}, expected ({V},)")
    if beta is None:
        bh, bw = split_bits(N, V, max(D, 1))
    else:
        bh, bw = (int(x) for x in beta)
        if min(bh, bw) < 1 or max(D, 1) * ((1 << bh) - 1) * ((1 << bw) - 1) > 1 << 53:
            raise ValueError(f"beta {beta} does not keep D = {D} products exact")
    if max_slices is None:
        kh, kw = -(-CAP_BITS // bh), -(-CAP_BITS // bw)
    else:
        kh, kw = (int(x) for x in max_slices)
    if min(kh, kw) < 1 or kh * kw + 1 > MAX_TERMS:
        raise ValueError(f"max_slices {max_slices}: between 1 and {MAX_TERMS - 1} terms")

    stats: dict[str, Any] = {"beta": (bh, bw), "cap": (kh, kw)}
    terms: list[np.ndarray] = []
    fallback: dict[tuple[int, int], Fraction] = {}
    if N == 0 or V == 0 or D == 0:
        if not np.isfinite(W).all():
            raise ValueError(f"W: {_NONFINITE}")
        terms.append(np.zeros((N, V)) if b is None else np.broadcast_to(b.copy(), (N, V)))
        stats.update(levels_h=[], levels_w=[], gemm_rows=0, out_of_range=0, work_bytes=0)
        return ExactProducts(tuple(terms), MappingProxyType(fallback), (N, V), (bh, bw), stats)

    # h: every level of every row stacked into one matrix
    hs = _split(h, bh, kh)
    Qh = np.concatenate(hs.q) if hs.q else np.zeros((0, D))
    h_level = np.concatenate([np.full(r.size, a) for a, r in enumerate(hs.rows)] or [[]])
    h_row = np.concatenate(hs.rows) if hs.rows else np.zeros(0, np.int64)
    h_exp = np.concatenate(hs.s) if hs.s else np.zeros(0, np.int64)
    M = Qh.shape[0]

    # W in blocks: C[b] (M x V) the exact integer products with level b, SW[b] its exponents
    block = max(1, BLOCK_BYTES // (8 * D))
    C: list[np.ndarray] = []
    SW: list[np.ndarray] = []
    w_rows_per_level: list[int] = []
    top_w = np.empty(V, np.int64)
    low_w = np.empty(V, np.int64)
    res_w_rows: list[np.ndarray] = []
    res_w: list[np.ndarray] = []
    work = _Work()
    for j0 in range(0, V, block):
        j1 = min(V, j0 + block)
        ws = _split(W[j0:j1], bw, kw, work)
        top_w[j0:j1], low_w[j0:j1] = ws.top, ws.low
        for lev, (rows, q, s) in enumerate(zip(ws.rows, ws.q, ws.s)):
            if lev == len(C):
                C.append(np.zeros((M, V)))
                SW.append(np.zeros(V, np.int64))
                w_rows_per_level.append(0)
            w_rows_per_level[lev] += rows.size
            prod = Qh @ q.T
            if rows.size == j1 - j0:
                C[lev][:, j0:j1] = prod
                SW[lev][j0:j1] = s
            else:
                C[lev][:, j0 + rows] = prod
                SW[lev][j0 + rows] = s
        if ws.residual_rows.size:
            res_w_rows.append(j0 + ws.residual_rows)
            res_w.append(ws.residual)

    # terms T_ab = C[b] 2**(s_a + s_b), exact for the entries in range
    with np.errstate(over="ignore", under="ignore"):
        for a in range(len(hs.rows)):
            sel = np.flatnonzero(h_level == a)
            for lev in range(len(C)):
                T = np.zeros((N, V))
                T[h_row[sel]] = np.ldexp(C[lev][sel], h_exp[sel][:, None] + SW[lev][None, :])
                terms.append(T)
    nbytes = Qh.nbytes + sum(c.nbytes for c in C) + 8 * N * V * len(terms)
    nbytes += sum(buf.nbytes for buf in work.buffers.values())
    del C
    if b is not None:
        terms.append(np.broadcast_to(b.copy(), (N, V)))
    if not terms:
        terms.append(np.zeros((N, V)))

    # entries whose terms may leave the float64 range: computed whole, with integers
    limit = E_MAX - max(0, (D - 1).bit_length())
    big_b = np.zeros(V, bool) if b is None else np.abs(b) >= 2.0**E_MAX
    if (
        int(hs.top.max()) + int(top_w.max()) > limit
        or int(hs.low.min()) + int(low_w.min()) < -1074
        or big_b.any()
    ):
        out = (hs.top[:, None] + top_w[None, :] > limit) | big_b[None, :]
        out |= hs.low[:, None] + low_w[None, :] < -1074
    else:
        out = None
    n_out = 0
    if out is not None and out.any():
        n_out = int(out.sum())
        if b is not None:
            terms[-1] = np.array(terms[-1])
        for T in terms:
            T[out] = 0.0
        for i in np.flatnonzero(out.any(axis=1)):
            cols = np.flatnonzero(out[i])
            xh, eh = _ints(h[i])
            xw, ew = _ints(W[cols])
            dots = xw.dot(xh)
            for j, z in zip(cols.tolist(), dots.tolist()):
                value = _fraction(z, eh + ew)
                fallback[(int(i), j)] = value if b is None else value + Fraction(float(b[j]))

    # the remainders left by the cap: F = R_h w + (h - R_h) R_w, over their nonzero columns
    def add(i: int, j: int, value: Fraction) -> None:
        if out is not None and out[i, j]:
            return
        fallback[(i, j)] = fallback.get((i, j), Fraction(0)) + value

    Rh = np.zeros_like(h)
    Rh[hs.residual_rows] = hs.residual
    for i, r in zip(hs.residual_rows.tolist(), hs.residual):
        k = np.flatnonzero(r)
        xr, er = _ints(r[k])
        xw, ew = _ints(W[:, k])
        for j, z in enumerate(xw.dot(xr).tolist()):
            add(i, j, _fraction(z, er + ew))
    if res_w_rows:
        Hs = h - Rh  # exact: the captured bits
        for j, r in zip(np.concatenate(res_w_rows).tolist(), np.concatenate(res_w)):
            k = np.flatnonzero(r)
            xr, er = _ints(r[k])
            xh, eh = _ints(Hs[:, k])
            for i, z in enumerate(xh.dot(xr).tolist()):
                add(i, j, _fraction(z, er + eh))

    stats.update(
        levels_h=[int(r.size) for r in hs.rows],
        levels_w=w_rows_per_level,
        gemm_rows=M,
        residual_rows=(int(hs.residual_rows.size), int(sum(r.size for r in res_w_rows))),
        out_of_range=n_out,
        work_bytes=int(nbytes),
    )
    return ExactProducts(tuple(terms), MappingProxyType(fallback), (N, V), (bh, bw), stats)
