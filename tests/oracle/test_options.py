"""The oracle's values and gradients under every loss option (``stabcheck.losses``), against
values derived independently of its code, and against exact identities.

References are the textbook formulas of the catalogue, written here from the definitions
and evaluated with mpmath in a private context at 300 bits or more (90+ digits; more when
the inputs are large):

- label smoothing e: targets (1 - e) y + e / C (rows), (1 - e) z + e / 2 (elements);
- class weights w: effective targets w_i t_i, row loss sum_i w_i t_i (lse - x_i);
- z-loss s: + s lse^2, gradient (T + 2 s lse) p_i - t_i with T = sum of the targets;
- softcap c: u = c tanh(x / c), gradient times sech^2(x / c); -inf stays -inf (gradient 0);
- focal: a_t f^g CE, f = 1 - p_t, derivative a_t (f^g CE' + g f^(g-1) f' CE);
- ignore_index: 0 and a zero gradient; reductions: the exact sum over the denominator
  (``mean``: PyTorch's; ``sum_over_batch_size``: Keras'), gradients over the same.

A reference is a pair (exact rational part, rest): the rest, computed to 300 relative
bits, can lie far below any working precision (exp(-|x|) next to (1 - z) x), and it then
breaks the tie when the exact part is a halfway point of the format. Each reference is
rounded once with ``Format.round`` and must equal the oracle's result (NaN matching NaN).
Identities compare the oracle with itself: the results must be equal.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

import mpmath
import numpy as np
import pytest

from stabcheck.formats import Format, get_format
from stabcheck.oracle import exact

SIGMOID = "sigmoid_cross_entropy_with_logits"
SOFTMAX = "softmax_cross_entropy_with_logits"
SPARSE_SOFTMAX = "sparse_softmax_cross_entropy_with_logits"
BCE = "binary_crossentropy"
CCE = "categorical_crossentropy"
SPARSE_CCE = "sparse_categorical_crossentropy"
FOCAL = "sigmoid_focal_loss"
FORMATS = ("float64", "float32", "float16", "bfloat16")
ROWWISE = (SOFTMAX, SPARSE_SOFTMAX, CCE, SPARSE_CCE)
SPARSE = (SPARSE_SOFTMAX, SPARSE_CCE)
INF, NAN = math.inf, math.nan
REDUCTIONS = ("sum", "mean", "sum_over_batch_size")

CTX = mpmath.MPContext()  # private: the global mpmath context is never touched
BITS = 300  # about 90 significant digits
ZERO = Fraction(0)

# -- the independent reference ----------------------------------------------------------------

Num = Any  # (Fraction, mpf[, Fraction]): (exact + rest) * scale; or a float infinity or NaN


def _bits(*values: Any) -> int:
    """BITS plus the binary magnitude of the largest finite input (``None`` skipped)."""
    flat = [float(v) for a in values if a is not None for v in np.ravel(a)]
    big = max((abs(v) for v in flat if math.isfinite(v)), default=0.0)
    return BITS + max(0, math.frexp(big)[1])


def _mp(v: Fraction | float) -> Any:
    """``v`` as an mpf at the current precision (exact for the formats' values)."""
    v = Fraction(v)
    return CTX.mpf(v.numerator) / v.denominator


def _softplus(x: Any) -> Any:
    """log(1 + exp(x)) = max(x, 0) + log1p(exp(-|x|))."""
    return max(x, 0) + CTX.log1p(CTX.exp(-abs(x)))


def rounded(ref: Num, fmt: Format) -> float:
    """(exact + rest) * scale rounded once to ``fmt``: at a precision that holds both
    parts, or, when the rest is below 2**-4000 of the exact part, the exact part with the
    rest's sign as the tie-breaker (the exact parts here have far fewer bits)."""
    if isinstance(ref, float):
        return ref
    e, r, *scale = ref
    k = scale[0] if scale else Fraction(1)
    if not CTX.isfinite(r):
        return fmt.round(r)
    if r == 0 or e == 0:
        with CTX.workprec(BITS):
            return fmt.round(e * k if r == 0 else r * _mp(k))
    gap = e.numerator.bit_length() - e.denominator.bit_length() - int(CTX.mag(r))
    if gap > 4000:
        return fmt.round(e * k, bias=1 if r > 0 else -1)
    size = e.numerator.bit_length() + e.denominator.bit_length()
    with CTX.workprec(BITS + max(gap, 0) + size):  # e + r exact for a short dyadic r
        return fmt.round((_mp(e) + r) * _mp(k))


def ref_softmax(
    x: Sequence[float], t: Sequence[Fraction], s: float = 0.0, c: float | None = None
) -> tuple[Num, list[Num]]:
    """L = sum_i t_i (lse - x_i) + s lse^2, dL/dx_i = (T + 2 s lse) p_i - t_i, with m the
    largest logit (n lanes), R = sum of exp(x_j - m) over the others, S = n + R:

        L = sum_i t_i (m - x_i) + s m^2                          (exact)
            + T log S + s log S (2 m + log S)                    (rest)
        top lanes:   (T + 2 s m) / n - t_i  - (T + 2 s m) R / (n S) + 2 s log S / S
        other lanes: -t_i                   + (T + 2 s lse) exp(x_i - m) / S

    A -inf lane gets gradient 0 (its loss is +inf under a positive target)."""
    if c is not None:
        return ref_capped(x, t, s, c)
    with CTX.workprec(_bits(x)):
        live = {i for i, v in enumerate(x) if v != -INF}
        m = max(x[i] for i in live)
        top = {i for i in live if x[i] == m}
        n, M, sq, T = len(top), Fraction(m), Fraction(s), sum(t, ZERO)
        e = {i: CTX.exp(CTX.mpf(x[i]) - m) for i in live - top}
        R = CTX.fsum(e.values())
        S = n + R
        log_s = CTX.log1p(R) if n == 1 else CTX.log(S)
        lse = m + log_s
        if any(ti for i, ti in enumerate(t) if i not in live):
            value: Num = INF
        else:
            value = (
                sum((ti * (M - Fraction(x[i])) for i, ti in enumerate(t) if ti), ZERO) + sq * M * M,
                _mp(T) * log_s + CTX.mpf(s) * log_s * (2 * m + log_s),
            )
        B, scale = T + 2 * sq * M, (_mp(T) + 2 * CTX.mpf(s) * lse) / S
        grads = []
        for i, ti in enumerate(t):
            if i not in live:
                grads.append((ZERO, CTX.zero))
            elif i in top:
                grads.append((B / n - ti, -_mp(B) * R / (n * S) + 2 * CTX.mpf(s) * log_s / S))
            else:
                grads.append((-ti, scale * e[i]))
        return value, grads


def ref_capped(
    x: Sequence[float], t: Sequence[Fraction], s: float, c: float
) -> tuple[Num, list[Num]]:
    """Softmax cross-entropy of u = c tanh(x / c) (a -inf lane stays -inf), with
    du/dx = sech^2(x / c); every part transcendental, so all of it is the rest."""
    prec = _bits(x, c)
    with CTX.workprec(prec):
        C = CTX.mpf(c)
        u = [CTX.ninf if v == -INF else C * CTX.tanh(CTX.mpf(v) / C) for v in x]
        live = [i for i, v in enumerate(u) if v != CTX.ninf]
        k = max(live, key=lambda i: u[i])
        e = {i: CTX.exp(u[i] - u[k]) for i in live}
        S = CTX.fsum(e.values())
        log_s = CTX.log(S)
        lse = u[k] + log_s
        T = _mp(sum(t, ZERO))
        if any(ti for i, ti in enumerate(t) if i not in live):
            value: Num = INF
        else:
            terms = [_mp(ti) * ((u[k] - u[i]) + log_s) for i, ti in enumerate(t) if ti]
            value = (ZERO, CTX.fsum(terms) + CTX.mpf(s) * lse**2)
        grads = []
        for i, ti in enumerate(t):
            if i not in live:
                grads.append((ZERO, CTX.zero))
                continue
            rest = CTX.fsum(e[j] for j in live if j != i) if i == k else S - e[i]
            p, others = e[i] / S, rest / S  # p_i and 1 - p_i, each to full relative precision
            g = -_mp(ti) * others + (T - _mp(ti)) * p + 2 * CTX.mpf(s) * lse * p
            grads.append((ZERO, g * CTX.sech(CTX.mpf(x[i]) / C) ** 2))
        return value, grads


def ref_categorical(p: Sequence[float], t: Sequence[Fraction]) -> tuple[Num, list[Num]]:
    """L = -sum_i t_i log p_i, dL/dp_i = -t_i / p_i (exact)."""
    with CTX.workprec(BITS):
        value = CTX.fsum(-_mp(ti) * CTX.log(CTX.mpf(pi)) for pi, ti in zip(p, t) if ti)
        return (ZERO, value), [(-ti / Fraction(pi), CTX.zero) for pi, ti in zip(p, t)]


def ref_binary(p: float, t: Fraction) -> tuple[Num, list[Num]]:
    """L = -t log p - (1 - t) log(1 - p), dL/dp = -t/p + (1 - t)/(1 - p) (exact)."""
    P = Fraction(p)
    with CTX.workprec(BITS + 1100):  # 1 - p exactly, even next to a subnormal p
        value = -_mp(t) * CTX.log(_mp(P)) - _mp(1 - t) * CTX.log(_mp(1 - P))
        return (ZERO, value), [(-t / P + (1 - t) / (1 - P), CTX.zero)]


def ref_sigmoid(x: float, t: Fraction) -> tuple[Num, list[Num]]:
    """L = t softplus(-x) + (1 - t) softplus(x), dL/dx = sigmoid(x) - t; with
    d = sigmoid(-|x|): L = (1 - t) x or -t x, plus log1p(exp(-|x|)); dL/dx = (1 - t) - d
    or -t + d."""
    with CTX.workprec(_bits(x)):
        E = CTX.exp(-abs(CTX.mpf(x)))
        d, log = E / (1 + E), CTX.log1p(E)
        if x >= 0:
            return ((1 - t) * Fraction(x), log), [(1 - t, -d)]
        return (-t * Fraction(x), log), [(-t, d)]


def ref_focal(x: float, z: float, alpha: float | None, gamma: float) -> tuple[Num, list[Num]]:
    """L = a f^g CE with p = sigmoid(x), f = z (1 - p) + (1 - z) p, a = alpha z +
    (1 - alpha)(1 - z) (1 without alpha) and CE the sigmoid cross-entropy;
    dL/dx = a (f^g CE' + g f^(g-1) f' CE), CE' = p - z, f' = (1 - 2z) p (1 - p).

    With s = sign(x), d = sigmoid(-|x|), A = 1 - z (x > 0) or z (x < 0), b = 1 - 2A:
    f = A + b d, CE = A |x| + log1p(exp(-|x|)), CE' = s (A - d), f' = -s b d (1 - d).
    For an integer g, f^g = A^g + P (P = A^g expm1(g log1p(b d / A))), so that
    L = a A^(g+1) |x| + a (A^g log1p(..) + P CE) and dL/dx = s a A^(g+1) + s a (P A - f^g d
    - g f^(g-1) b d (1 - d) CE): an exact part and a rest."""
    Z = Fraction(z)
    a = Fraction(1) if alpha is None else Fraction(alpha) * Z + (1 - Fraction(alpha)) * (1 - Z)
    whole = float(gamma).is_integer()
    with CTX.workprec(_bits(x)):
        g, am = CTX.mpf(gamma), _mp(a)
        if x == 0:  # p = f = 1/2: L = a 2^-g log 2, L' = a 2^-g ((1/2 - z) + g (1 - 2z) log 2 / 2)
            half, log2, mid = CTX.mpf(2) ** -g, CTX.log(2), Fraction(1, 2) - Z
            value, rest = (ZERO, am * half * log2), am * half * g * (1 - 2 * _mp(Z)) * log2 / 2
            if whole:
                return value, [(a / 2 ** int(gamma) * mid, rest)]
            return value, [(ZERO, rest + am * half * _mp(mid))]
        sign = 1 if x > 0 else -1
        A = 1 - Z if x > 0 else Z
        Am, bm = _mp(A), 1 - 2 * _mp(A)
        E = CTX.exp(-abs(CTX.mpf(x)))
        d, log = E / (1 + E), CTX.log1p(E)
        f = Am / (1 + E) + (1 - Am) * d  # A (1 - d) + (1 - A) d, both non-negative
        ce = Am * abs(CTX.mpf(x)) + log
        if gamma == 0:
            fg, P, f1 = CTX.one, CTX.zero, CTX.zero
        else:
            fg, f1 = f**g, g * f ** (g - 1)
            P = f**g if A == 0 else Am**g * CTX.expm1(g * CTX.log1p(bm * d / Am))
        term = f1 * bm * d / (1 + E) * ce
        if not whole:
            return (ZERO, am * fg * ce), [(ZERO, sign * am * (fg * (Am - d) - term))]
        Ag = A ** int(gamma)
        value = (a * Ag * A * abs(Fraction(x)), am * (_mp(Ag) * log + P * ce))
        return value, [(sign * a * Ag * A, sign * am * (P * Am - fg * d - term))]


def row_targets(label: Any, classes: int, e: float = 0.0, w: Any = None) -> list[Fraction]:
    """w_i ((1 - e) y_i + e / C) with y one-hot at ``label`` (an int) or a row of labels."""
    if isinstance(label, (int, np.integer)):
        y = [Fraction(int(i == label)) for i in range(classes)]
    else:
        y = [Fraction(float(v)) for v in label]
    t = [(1 - Fraction(e)) * v + Fraction(e) / classes for v in y]
    return t if w is None else [Fraction(float(wi)) * ti for wi, ti in zip(w, t)]


def reference_units(
    loss: str, x: np.ndarray, labels: Any, params: dict[str, Any]
) -> list[tuple[Num, list[Num]]]:
    """The reference (value, gradients) of each unit: row or element; 0 for ignored rows."""
    e = params.get("label_smoothing", 0.0)
    if loss in ROWWISE:
        out = []
        for row, label in zip(x.tolist(), list(labels)):
            if loss in SPARSE and int(label) == params.get("ignore_index"):
                out.append(((ZERO, CTX.zero), [(ZERO, CTX.zero)] * len(row)))
                continue
            t = row_targets(label, len(row), e, params.get("weight"))
            if loss in (SOFTMAX, SPARSE_SOFTMAX):
                out.append(ref_softmax(row, t, params.get("z_loss", 0.0), params.get("softcap")))
            else:
                out.append(ref_categorical(row, t))
        return out
    pairs = zip(np.ravel(x).tolist(), np.ravel(labels).tolist())
    if loss == FOCAL:
        return [ref_focal(v, z, params.get("alpha"), params.get("gamma", 2.0)) for v, z in pairs]
    smooth = [(v, (1 - Fraction(e)) * Fraction(z) + Fraction(e) / 2) for v, z in pairs]
    if loss == BCE:
        return [ref_binary(v, t) for v, t in smooth]
    return [ref_sigmoid(v, t) for v, t in smooth]


def denominator(loss: str, x: np.ndarray, labels: Any, params: dict[str, Any]) -> Fraction:
    """``sum``: 1; ``mean``: the sum of w_k over the rows kept (index targets), else the
    number of rows or elements; ``sum_over_batch_size``: the rows kept, or the elements."""
    how = params["reduction"]
    if how == "sum":
        return Fraction(1)
    if loss not in ROWWISE:
        return Fraction(x.size)
    if loss not in SPARSE:
        return Fraction(x.shape[0])
    kept = [int(k) for k in labels if int(k) != params.get("ignore_index")]
    if how == "mean" and params.get("weight") is not None:
        return sum((Fraction(float(params["weight"][k])) for k in kept), ZERO)
    return Fraction(len(kept))


def _total(values: list[Num]) -> Num:
    """The exact sum of unit values (NaN and +inf absorb)."""
    if any(isinstance(v, float) and math.isnan(v) for v in values):
        return NAN
    if any(isinstance(v, float) for v in values):
        return INF
    with CTX.workprec(BITS):
        return sum((e for e, _ in values), ZERO), CTX.fsum(r for _, r in values)


def _over(v: Num, d: Fraction) -> Num:
    """v / d, kept as a scale so that exact + rest cancels before the division."""
    return v if isinstance(v, float) else (v[0], v[1], 1 / d)


def reference(
    loss: str, x: np.ndarray, labels: Any, params: dict[str, Any]
) -> tuple[list[Num], list[Num]]:
    """The reference values and gradients (flat), reduced as ``params`` says."""
    units = reference_units(loss, x, labels, params)
    values, grads = [v for v, _ in units], [g for _, gs in units for g in gs]
    if params.get("reduction", "none") == "none":
        return values, grads
    d = denominator(loss, x, labels, params)
    if d == 0 and params["reduction"] == "sum_over_batch_size":  # Keras' divide_no_nan
        return [0.0], [0.0] * len(grads)
    if d == 0:  # PyTorch: x/0 (NaN for 0/0); ignored rows keep their zero gradient
        ignored = [loss in SPARSE and int(k) == params.get("ignore_index") for k in labels]
        skip = np.repeat(ignored, x.shape[1]).tolist()
        return [NAN], [0.0 if s else NAN for s in skip]
    return [_over(_total(values), d)], [_over(g, d) for g in grads]


def assert_rounded(what: str, got: Any, refs: list[Num], fmt: Format) -> None:
    """Each result equals its reference rounded to ``fmt`` (NaN matches NaN)."""
    got = np.ravel(np.asarray(got, dtype=np.float64)).tolist()
    assert len(got) == len(refs), (what, len(got), len(refs))
    bad = []
    for i, (g, r) in enumerate(zip(got, refs)):
        want = rounded(r, fmt)
        if not (g == want or (math.isnan(g) and math.isnan(want))):
            shown = r if isinstance(r, float) else f"{r[0]} + {CTX.nstr(r[1], 20)}"
            bad.append(f"  [{i}] got {g!r}, expected {want!r} (reference {shown})")
    assert not bad, f"{what} in {fmt.name}: {len(bad)} of {len(got)} wrong:\n" + "\n".join(bad[:8])


def check(loss: str, fmt_name: str, x: Any, labels: Any, **params: Any) -> Any:
    """Run the oracle on one case and check its value and gradient against the reference."""
    fmt = get_format(fmt_name)
    res = exact(loss, x, labels, format=fmt_name, grad=True, **params)
    values, grads = reference(loss, np.asarray(x, dtype=np.float64), labels, params)
    label = f"{loss} {params}"
    assert_rounded(f"{label} value", res.value, values, fmt)
    assert_rounded(f"{label} gradient", res.gradient, grads, fmt)
    return res


def same(a: Any, b: Any) -> bool:
    """Equal arrays, NaN equal to NaN."""
    return bool(np.array_equal(np.asarray(a), np.asarray(b), equal_nan=True))


# -- inputs: values of the format --------------------------------------------------------------


def cast(fmt: Format, values: Any) -> np.ndarray:
    """``values`` rounded to ``fmt``, as float64."""
    a = np.asarray(values, dtype=np.float64)
    return np.array([fmt.round(float(v)) for v in a.ravel()]).reshape(a.shape)


def logit_rows(fmt_name: str, classes: int = 5, seed: int = 0) -> np.ndarray:
    """Moderate rows, a near tie, a wide row and one with a large spread for the format."""
    fmt = get_format(fmt_name)
    rng = np.random.default_rng([seed, FORMATS.index(fmt_name), classes])
    x = rng.uniform(-8, 8, (6, classes))
    x[3, 1] = x[3, 0] * (1 + fmt.eps)  # a near tie
    x[4] *= 40  # wide: tails far below the format's epsilon
    x[5, :2] = fmt.max / 4, -fmt.max / 4  # a spread as large as the format allows
    return cast(fmt, x)


def soft_rows(fmt_name: str, n: int = 6, classes: int = 5, seed: int = 1) -> np.ndarray:
    """Soft label rows (some entries 0), one one-hot row."""
    rng = np.random.default_rng([seed, FORMATS.index(fmt_name), classes])
    y = rng.random((n, classes)) * (rng.random((n, classes)) < 0.7)
    y[0] = np.eye(classes)[2]
    return cast(get_format(fmt_name), y)


def probability_rows(fmt_name: str, n: int = 6, classes: int = 5) -> np.ndarray:
    """Probabilities in (0, 1], with the format's tiny, subnormal and 1 - eps/2."""
    fmt = get_format(fmt_name)
    rng = np.random.default_rng([2, FORMATS.index(fmt_name), classes])
    p = rng.uniform(0.01, 1.0, (n, classes))
    p[1, :3] = fmt.tiny, fmt.smallest_subnormal, 1 - fmt.eps / 2
    p[2, 0] = 1.0
    return cast(fmt, p)


def sparse_labels(n: int = 6, classes: int = 5, seed: int = 3) -> list[int]:
    return np.random.default_rng([seed, n, classes]).integers(0, classes, n).tolist()


def elements(fmt_name: str) -> tuple[np.ndarray, np.ndarray]:
    """Logits (moderate, large, 0) crossed with targets 0, 1, 1/2 and a soft one."""
    fmt = get_format(fmt_name)
    big = fmt.max / 2
    x = [0.0, 0.25, -1.0, 3.5, -7.0, 17.0, -30.0, 60.0, big, -big]
    z = [0.0, 1.0, 0.5, 0.3]
    xs, zs = np.meshgrid(cast(fmt, x), cast(fmt, z))
    return xs.ravel(), zs.ravel()


def probabilities(fmt_name: str) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities (moderate, tiny, subnormal, next to 1) crossed with targets."""
    fmt = get_format(fmt_name)
    p = [0.5, 0.1, 0.9, fmt.eps, 1 - fmt.eps / 2, fmt.tiny, fmt.smallest_subnormal]
    z = [0.0, 1.0, 0.5, 0.3]
    ps, zs = np.meshgrid(cast(fmt, p), cast(fmt, z))
    return ps.ravel(), zs.ravel()


def class_weights(fmt_name: str, classes: int = 5) -> np.ndarray:
    """Mixed class weights: 0, a subnormal, moderate and huge values."""
    fmt = get_format(fmt_name)
    w = [0.0, fmt.smallest_subnormal, 0.5, 3.0, fmt.max / 1024, 1.0, 0.1][:classes]
    return cast(fmt, w)


def inputs(loss: str, fmt_name: str) -> tuple[np.ndarray, Any]:
    """Predictions and labels for ``loss`` in ``fmt_name``."""
    if loss in (SOFTMAX, SPARSE_SOFTMAX):
        x = logit_rows(fmt_name)
    elif loss in (CCE, SPARSE_CCE):
        x = probability_rows(fmt_name)
    elif loss == BCE:
        return probabilities(fmt_name)
    else:
        return elements(fmt_name)
    return x, (sparse_labels() if loss in SPARSE else soft_rows(fmt_name))


def smoothings(fmt_name: str) -> list[float]:
    """e = 0.1, 1/2, 1, the format's epsilon, smallest subnormal and 1 - eps/2."""
    fmt = get_format(fmt_name)
    return [fmt.round(v) for v in (0.1, 0.5, 1.0, fmt.eps, fmt.smallest_subnormal, 1 - fmt.eps / 2)]


# -- label smoothing, class weights, z-loss ----------------------------------------------------


@pytest.mark.parametrize("fmt_name", FORMATS)
@pytest.mark.parametrize("loss", [SOFTMAX, SPARSE_SOFTMAX, CCE, BCE, SIGMOID])
def test_label_smoothing_against_reference(loss: str, fmt_name: str) -> None:
    x, labels = inputs(loss, fmt_name)
    for e in smoothings(fmt_name):
        check(loss, fmt_name, x, labels, label_smoothing=e)


@pytest.mark.parametrize("fmt_name", FORMATS)
@pytest.mark.parametrize("loss", ROWWISE)
def test_class_weights_against_reference(loss: str, fmt_name: str) -> None:
    x, labels = inputs(loss, fmt_name)
    w = class_weights(fmt_name)
    check(loss, fmt_name, x, labels, weight=w)
    if loss != SPARSE_CCE:  # smoothing, then weights
        check(loss, fmt_name, x, labels, weight=w, label_smoothing=smoothings(fmt_name)[0])


@pytest.mark.parametrize("fmt_name", FORMATS)
@pytest.mark.parametrize("loss", [SOFTMAX, SPARSE_SOFTMAX])
def test_z_loss_against_reference(loss: str, fmt_name: str) -> None:
    fmt = get_format(fmt_name)
    x, labels = inputs(loss, fmt_name)
    for s in (1e-4, 1.0, fmt.smallest_subnormal, fmt.max / 2):
        check(loss, fmt_name, x, labels, z_loss=fmt.round(s))


def test_every_softmax_option_at_once() -> None:
    """Softcap, smoothing, class weights, z-loss and ignored rows together."""
    for fmt_name in FORMATS:
        x, labels = logit_rows(fmt_name), [*sparse_labels()[:5], -100]
        x[5] = [NAN, INF, -INF, 0.0, 1.0]
        params = dict(
            softcap=30.0,
            label_smoothing=0.1,
            weight=class_weights(fmt_name)[::-1].copy(),
            z_loss=1e-3,
            ignore_index=-100,
        )
        fmt = get_format(fmt_name)
        params = {
            k: v if k in ("weight", "ignore_index") else fmt.round(v) for k, v in params.items()
        }
        check(SPARSE_SOFTMAX, fmt_name, x, labels, **params)
        check(SPARSE_SOFTMAX, fmt_name, x, labels, reduction="mean", **params)


# -- softcap ---------------------------------------------------------------------------------


def caps(fmt_name: str) -> list[float]:
    fmt = get_format(fmt_name)
    return [1.0, 30.0, fmt.eps, fmt.tiny, fmt.round(fmt.max / 8)]


@pytest.mark.parametrize("fmt_name", FORMATS)
@pytest.mark.parametrize("loss", [SOFTMAX, SPARSE_SOFTMAX])
def test_softcap_against_reference(loss: str, fmt_name: str) -> None:
    x, labels = inputs(loss, fmt_name)
    for c in caps(fmt_name):
        check(loss, fmt_name, x, labels, softcap=c)


@pytest.mark.parametrize("fmt_name", FORMATS)
def test_softcap_masked_lanes_stay_minus_infinity(fmt_name: str) -> None:
    """-inf lanes carry no probability and get gradient 0; +inf becomes c (gradient 0)."""
    x = [[1.0, -INF, 3.0, -INF, 0.5], [-INF, INF, 2.0, -1.0, -INF], [INF, -INF, -INF, -INF, 0.0]]
    labels = [2, 1, 0]
    for c in caps(fmt_name):
        res = check(SPARSE_SOFTMAX, fmt_name, x, labels, softcap=c)
        assert (res.gradient[np.isinf(x)] == 0).all()
        soft = np.eye(5)[labels] * 0.75
        res = check(SOFTMAX, fmt_name, x, soft, softcap=c, z_loss=0.25)
        assert (res.gradient[np.isinf(x)] == 0).all()
        # dropping the masked lanes changes nothing (first row, gradient included)
        kept = exact(SPARSE_SOFTMAX, [[1.0, 3.0, 0.5]], [1], fmt_name, True, softcap=c)
        full = exact(SPARSE_SOFTMAX, x[:1], [2], fmt_name, True, softcap=c)
        assert full.value[0] == kept.value[0]
        assert full.gradient[0, [0, 2, 4]].tolist() == kept.gradient[0].tolist()


@pytest.mark.parametrize("fmt_name", FORMATS)
def test_softcap_masked_lane_under_positive_target_is_infinite(fmt_name: str) -> None:
    res = exact(SPARSE_SOFTMAX, [[1.0, -INF, 0.0]], [1], fmt_name, softcap=30.0)
    assert res.value[0] == INF
    smoothed = exact(
        SPARSE_SOFTMAX, [[1.0, -INF, 0.0]], [0], fmt_name, softcap=30.0, label_smoothing=0.25
    )
    assert smoothed.value[0] == INF  # e / C > 0 on the masked lane


# -- focal loss ------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt_name", FORMATS)
@pytest.mark.parametrize("gamma", [0.0, 1.0, 2.0, 5.0, 0.5])
def test_focal_against_reference(gamma: float, fmt_name: str) -> None:
    x, z = elements(fmt_name)
    for alpha in (None, 0.0, 0.25, 0.5, 1.0):
        params = {} if alpha is None else {"alpha": alpha}
        check(FOCAL, fmt_name, x, z, gamma=gamma, **params)


# -- ignore_index ----------------------------------------------------------------------------


def ignored_case(loss: str, fmt_name: str, index: int) -> tuple[np.ndarray, list[int], list[bool]]:
    """Rows, labels with ``index`` on rows whose predictions hold NaN and infinities."""
    x, labels = inputs(loss, fmt_name)
    labels = [2 if k == index else k for k in labels]  # no accidental ignores
    skip = [False, True, False, True, True, False]
    bad = [NAN, INF, -INF, 0.0, 1.0] if loss == SPARSE_SOFTMAX else [NAN, 0.0, 1.0, 0.0, NAN]
    for i in np.flatnonzero(skip):
        labels[i] = index
        x[i] = np.roll(bad, i)
    labels[5] = 4 if index != 4 else 3
    return x, labels, skip


@pytest.mark.parametrize("fmt_name", FORMATS)
@pytest.mark.parametrize("index", [-100, 0])
@pytest.mark.parametrize("loss", SPARSE)
def test_ignored_rows(loss: str, index: int, fmt_name: str) -> None:
    """Ignored rows give 0 and a zero gradient whatever their predictions; the others are
    the reference's, and the same as without the ignored rows (value, sum, gradient)."""
    x, labels, skip = ignored_case(loss, fmt_name, index)
    keep = ~np.array(skip)
    kept_labels = [k for k, s in zip(labels, skip) if not s]
    for extra in ({}, {"weight": class_weights(fmt_name)}):
        res = check(loss, fmt_name, x, labels, ignore_index=index, **extra)
        assert (res.value[~keep] == 0).all() and (res.gradient[~keep] == 0).all()
        alone = exact(loss, x[keep], kept_labels, fmt_name, True, **extra)
        assert same(res.value[keep], alone.value)
        assert same(res.gradient[keep], alone.gradient)
        sums = dict(reduction="sum", **extra)
        summed = exact(loss, x, labels, fmt_name, True, ignore_index=index, **sums)
        alone = exact(loss, x[keep], kept_labels, fmt_name, True, **sums)
        assert same(summed.value, alone.value)
        assert same(summed.gradient[keep], alone.gradient)
        assert (summed.gradient[~keep] == 0).all()


@pytest.mark.parametrize("fmt_name", FORMATS)
@pytest.mark.parametrize("loss", SPARSE)
def test_every_row_ignored(loss: str, fmt_name: str) -> None:
    """mean: 0/0 = NaN (PyTorch), sum and sum_over_batch_size (Keras): 0; the ignored rows'
    gradient is 0 in every reduction (PyTorch's too)."""
    x = [[NAN, 0.5], [0.25, NAN]] if loss == SPARSE_CCE else [[NAN, INF], [-INF, 1.0]]
    for extra in ({}, {"weight": [2.0, 0.5]}):
        for how, want in (
            ("none", [0.0, 0.0]),
            ("sum", 0.0),
            ("mean", NAN),
            ("sum_over_batch_size", 0.0),
        ):
            res = exact(loss, x, [7, 7], fmt_name, True, ignore_index=7, reduction=how, **extra)
            assert same(res.value, want), (how, extra, res.value)
            assert same(res.gradient, np.zeros((2, 2))), (how, extra, res.gradient)
    # the kept row weighs 0: mean is 0/0 = NaN, with a NaN gradient on the kept row only
    clean = [[0.25, 0.5], x[1]]
    check(loss, fmt_name, clean, [0, 7], ignore_index=7, weight=[0.0, 1.0], reduction="mean")


# -- reductions ------------------------------------------------------------------------------


def reduced_cases(fmt_name: str) -> list[tuple[str, dict[str, Any]]]:
    fmt = get_format(fmt_name)
    w = class_weights(fmt_name)
    return [
        (SIGMOID, {}),
        (SIGMOID, {"label_smoothing": fmt.round(0.1)}),
        (BCE, {"label_smoothing": fmt.round(0.2)}),
        (FOCAL, {"alpha": 0.25, "gamma": 2.0}),
        (SOFTMAX, {"weight": w}),
        (SOFTMAX, {"softcap": 30.0, "z_loss": fmt.round(1e-3)}),
        (SPARSE_SOFTMAX, {}),
        (SPARSE_SOFTMAX, {"weight": w, "ignore_index": -100}),
        (SPARSE_SOFTMAX, {"ignore_index": 1, "label_smoothing": fmt.round(0.2)}),
        (CCE, {"weight": w}),
        (SPARSE_CCE, {}),
        (SPARSE_CCE, {"weight": w, "ignore_index": 0}),
    ]


def reduced_inputs(loss: str, fmt_name: str, params: dict[str, Any]) -> tuple[np.ndarray, Any]:
    """The loss's inputs, with two rows ignored if ``ignore_index`` is given."""
    if "ignore_index" in params:
        x, labels, _ = ignored_case(loss, fmt_name, params["ignore_index"])
        return x, labels
    return inputs(loss, fmt_name)


@pytest.mark.parametrize("fmt_name", FORMATS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_reductions_against_reference(reduction: str, fmt_name: str) -> None:
    """The exact sum of the units over the denominator, rounded once; gradients over it."""
    for loss, params in reduced_cases(fmt_name):
        x, labels = reduced_inputs(loss, fmt_name, params)
        res = check(loss, fmt_name, x, labels, reduction=reduction, **params)
        assert res.value.shape == ()


@pytest.mark.parametrize("fmt_name", FORMATS)
def test_sum_is_the_exact_sum_of_the_unreduced_loss(fmt_name: str) -> None:
    """``sum`` = the oracle's unreduced exact values summed exactly, rounded once; ``mean``
    and ``sum_over_batch_size`` of an unweighted loss without ignored rows divide by n."""
    fmt = get_format(fmt_name)
    for loss, params in reduced_cases(fmt_name):
        x, labels = reduced_inputs(loss, fmt_name, params)
        none = exact(loss, x, labels, fmt_name, True, **params)
        with CTX.workprec(4 * BITS):
            exact_sum = CTX.fsum(CTX.mpf(v) for v in none.exact.ravel())
        summed = exact(loss, x, labels, fmt_name, True, reduction="sum", **params)
        assert summed.value == fmt.round(exact_sum), (loss, params)
        assert same(summed.gradient, none.gradient), (loss, params)
        if "weight" in params or "ignore_index" in params:
            continue
        n = none.value.size
        for how in ("mean", "sum_over_batch_size"):
            res = exact(loss, x, labels, fmt_name, reduction=how, **params)
            with CTX.workprec(4 * BITS):
                assert res.value == fmt.round(exact_sum / n), (loss, params, how)


# -- stressing the formats -----------------------------------------------------------------


def test_float16_rows_of_8192_classes_with_smoothing() -> None:
    """e / C = 0.1 / 8192 is below float16's smallest normal: each target is exact in the
    oracle, not in the format."""
    rng = np.random.default_rng(8192)
    fmt = get_format("float16")
    x = cast(fmt, rng.normal(0, 4, (2, 8192)))
    x[1, 77] = 60.0  # a confident row: the smoothing dominates its loss
    check(SPARSE_SOFTMAX, "float16", x, [5, 77], label_smoothing=fmt.round(0.1))


@pytest.mark.parametrize("fmt_name", ["float16", "bfloat16"])
def test_sum_of_many_rows_overflows_but_mean_does_not(fmt_name: str) -> None:
    """64 rows [a, -a, b, c] with label 1 and a >= max/64 cost 2a >= max/32 each: the sum
    is beyond the format (inf), the mean and sum_over_batch_size are not; each is the
    reference's."""
    fmt = get_format(fmt_name)
    rng = np.random.default_rng(64)
    a = rng.uniform(1, 1.5, 64) * fmt.max / 64
    x = cast(fmt, np.stack([a, -a, *rng.uniform(-a, a, (2, 64))], axis=1))
    labels = [1] * 64
    res = check(SPARSE_SOFTMAX, fmt_name, x, labels, reduction="sum")
    assert res.value == INF
    for how in ("mean", "sum_over_batch_size"):
        res = check(SPARSE_SOFTMAX, fmt_name, x, labels, reduction=how, label_smoothing=0.5)
        assert math.isfinite(res.value)


@pytest.mark.parametrize(
    ("x", "want"),
    [
        # softplus(32752) twice = 65504 + 2 e^-32752: rounds to the largest value
        ([-32752.0, -32752.0], 65504.0),
        # 65504 + 16 = 65520 is the overflow threshold: just above it, inf
        ([-32752.0, -32768.0], INF),
        ([-65504.0, -16.0], INF),
        ([-65504.0, -8.0], 65504.0),
    ],
)
def test_float16_sum_at_the_overflow_threshold(x: list[float], want: float) -> None:
    res = check(SIGMOID, "float16", x, [1.0, 1.0], reduction="sum")
    assert res.value == want
    mean = check(SIGMOID, "float16", x, [1.0, 1.0], reduction="mean")
    assert math.isfinite(mean.value)


# -- identities ------------------------------------------------------------------------------

PLAIN = [(loss, "label_smoothing", 0.0) for loss in (SOFTMAX, SPARSE_SOFTMAX, CCE, BCE, SIGMOID)]
PLAIN += [(loss, "weight", "ones") for loss in ROWWISE]
PLAIN += [(loss, "z_loss", 0.0) for loss in (SOFTMAX, SPARSE_SOFTMAX)]
PLAIN += [(loss, "softcap", "huge") for loss in (SOFTMAX, SPARSE_SOFTMAX)]
HUGE_CAP = {"float64": 2.0**1000, "float32": 2.0**100, "float16": 2.0**15, "bfloat16": 2.0**100}


@pytest.mark.parametrize("fmt_name", FORMATS)
@pytest.mark.parametrize(("loss", "option", "off"), PLAIN)
def test_option_off_is_the_plain_loss(loss: str, option: str, off: Any, fmt_name: str) -> None:
    """Smoothing 0, weights all 1, z-loss 0 and a huge softcap give the plain loss, to the
    last bit (values and gradients). Under the cap, logits of at most 1 move the loss by
    about 1/(3 c^2) relative (2**-31 in float16): far below the distance of these values
    to a halfway point (with |x| up to 8, a float16 loss of 11.355468839 sits 2**-27 from
    one, and the cap 2**15 moves it across, as it should)."""
    x, labels = inputs(loss, fmt_name)
    if off == "ones":
        off = np.ones(x.shape[1])
    elif off == "huge":
        off, x, labels = HUGE_CAP[fmt_name], cast(get_format(fmt_name), x[:4] / 8), labels[:4]
    plain = exact(loss, x, labels, fmt_name, True)
    with_option = exact(loss, x, labels, fmt_name, True, **{option: off})
    assert same(with_option.value, plain.value)
    assert same(with_option.gradient, plain.gradient)


@pytest.mark.parametrize("fmt_name", FORMATS)
def test_focal_gamma_zero_alpha_half_is_half_the_sigmoid_loss(fmt_name: str) -> None:
    """a_t = 1/2 and f^0 = 1: half of a correctly rounded value is the correctly rounded
    half, unless it is subnormal."""
    fmt = get_format(fmt_name)
    x, z = elements(fmt_name)
    focal = exact(FOCAL, x, z, fmt_name, True, alpha=0.5, gamma=0.0)
    plain = exact(SIGMOID, x, z, fmt_name, True)
    for got, full in ((focal.value, plain.value), (focal.gradient, plain.gradient)):
        normal = np.abs(full) / 2 >= fmt.tiny
        assert same(got[normal], full[normal] / 2)
        for g, f in zip(got[~normal].tolist(), full[~normal].tolist()):  # double rounding
            assert fmt.ulps(g, fmt.round(Fraction(f) / 2)) <= 1
