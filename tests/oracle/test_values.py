"""The oracle's values and gradients against values derived independently of its code.

Expected values come from (1) a textbook mpmath evaluation of each loss and of the
gradient formulas in ``stabcheck/losses.py`` at 1400 bits or more (more when the logits
are large, so that the absolute error stays far below every subnormal), with an error bound
carried along; the oracle's rounded result must then lie within half the gap to its
neighbours (found with ``numpy.nextafter`` on the format's dtype, ml_dtypes for bfloat16)
of the reference; (2) closed forms; (3) exact identities between losses; (4) hard cases
built by hand, whose exact part sits on a halfway point of the format so that a
transcendental part far below any working precision decides the rounding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import ml_dtypes
import mpmath
import numpy as np
import pytest

from stabcheck.errors import PrecisionLimitReached
from stabcheck.oracle import exact

SIGMOID = "sigmoid_cross_entropy_with_logits"
WEIGHTED = "weighted_cross_entropy_with_logits"
SOFTMAX = "softmax_cross_entropy_with_logits"
SPARSE_SOFTMAX = "sparse_softmax_cross_entropy_with_logits"
BCE = "binary_crossentropy"
CCE = "categorical_crossentropy"
SPARSE_CCE = "sparse_categorical_crossentropy"
LOSSES = (BCE, CCE, SPARSE_CCE, SIGMOID, WEIGHTED, SOFTMAX, SPARSE_SOFTMAX)


@dataclass(frozen=True)
class Fmt:
    """Hand-written facts about a format (not read from ``stabcheck.formats``)."""

    name: str
    dtype: Any
    p: int  # significand bits with the implicit one
    emin: int
    emax: int

    @property
    def max(self) -> float:
        return math.ldexp(2**self.p - 1, self.emax - self.p + 1)

    @property
    def sub(self) -> int:
        """The smallest subnormal is 2**sub."""
        return self.emin - self.p + 1

    def cast(self, values: Any) -> np.ndarray:
        with np.errstate(over="ignore"):
            return np.asarray(values, dtype=np.float64).astype(self.dtype).astype(np.float64)


FMTS = {
    "float64": Fmt("float64", np.float64, 53, -1022, 1023),
    "float32": Fmt("float32", np.float32, 24, -126, 127),
    "float16": Fmt("float16", np.float16, 11, -14, 15),
    "bfloat16": Fmt("bfloat16", ml_dtypes.bfloat16, 8, -126, 127),
}
FORMATS = tuple(FMTS)

# -- the independent reference --------------------------------------------------------------

CTX = mpmath.MPContext()  # a private context; the global mp is never touched
BASE_PREC = 1400  # bits, about 420 digits


def _prec(values: Any) -> int:
    """Working bits: BASE_PREC plus the binary magnitude of the largest finite input, so
    that quantities like log(sum exp x) - x_i keep BASE_PREC bits of absolute accuracy."""
    finite = [abs(float(v)) for v in np.ravel(values) if math.isfinite(v)]
    big = max(finite, default=0.0)
    return BASE_PREC + max(0, math.frexp(big)[1])


@dataclass
class Ref:
    """A reference: mpf values with absolute error bounds, or exact Fractions (err 0)."""

    value: Any
    err: Any
    grads: list[Any]
    grad_errs: list[Any]


def _tol(prec: int, scale: Any) -> Any:
    return CTX.ldexp(CTX.mpf(1), -(prec - 24)) * scale


def ref_weighted(x: float, z: float, q: float = 1.0) -> Ref:
    """L = q z log(1 + exp(-x)) + (1 - z) log(1 + exp(x)),
    dL/dx = (1 - z) sigmoid(x) - q z sigmoid(-x)  (losses.py)."""
    prec = _prec([x])
    with CTX.workprec(prec):
        X, Z, Q = CTX.mpf(x), CTX.mpf(z), CTX.mpf(q)
        a = Q * Z * CTX.log1p(CTX.exp(-X))
        b = (1 - Z) * CTX.log1p(CTX.exp(X))
        sig = 1 / (1 + CTX.exp(-X))
        sig_neg = 1 / (1 + CTX.exp(X))
        g1, g2 = (1 - Z) * sig, Q * Z * sig_neg
        return Ref(a + b, _tol(prec, a + b), [g1 - g2], [_tol(prec, g1 + g2)])


def ref_softmax(x: list[float], y: list[float]) -> Ref:
    """L = sum_i y_i (log sum_j exp x_j - x_i), dL/dx_i = (sum y) softmax(x)_i - y_i."""
    prec = _prec(x)
    big = max(abs(v) for v in x)
    with CTX.workprec(prec):
        X = [CTX.mpf(v) for v in x]
        lse = CTX.log(CTX.fsum(CTX.exp(v) for v in X))
        Y = CTX.fsum(CTX.mpf(v) for v in y)
        value = CTX.fsum(CTX.mpf(yi) * (lse - xi) for xi, yi in zip(X, y) if yi)
        soft = [CTX.exp(xi - lse) for xi in X]
        grads = [Y * s - CTX.mpf(yi) for s, yi in zip(soft, y)]
        err = _tol(prec, (1 + Y) * (1 + big) * len(x))
        return Ref(value, err, grads, [_tol(prec, (1 + big) * Y * s * 4) for s in soft])


def ref_binary(p: float, z: float) -> Ref:
    """L = -(z log p + (1 - z) log(1 - p)), 0 log 0 = 0; dL/dp = -z/p + (1 - z)/(1 - p)."""
    P, Z = Fraction(p), Fraction(z)
    with CTX.workprec(BASE_PREC):
        value: Any = CTX.mpf(0)
        for w, prob in ((Z, P), (1 - Z, 1 - P)):
            if w:
                if prob == 0:
                    value = math.inf
                    break
                value += CTX.mpf(w.numerator) / w.denominator * -CTX.log(_mpf(prob))
        first = Fraction(0) if Z == 0 else (-math.inf if P == 0 else -Z / P)
        second = Fraction(0) if Z == 1 else (math.inf if P == 1 else (1 - Z) / (1 - P))
        grad = first + second if not (_isinf(first) or _isinf(second)) else float(first + second)
        err = 0 if isinstance(value, float) else _tol(BASE_PREC, value)
        return Ref(value, err, [grad], [0])


def ref_categorical(p: list[float], y: list[float]) -> Ref:
    """L = -sum_i y_i log p_i, 0 log 0 = 0; dL/dp_i = -y_i / p_i."""
    with CTX.workprec(BASE_PREC):
        value: Any = CTX.mpf(0)
        grads: list[Any] = []
        for pi, yi in zip(p, y):
            grads.append(
                Fraction(0) if yi == 0 else (-math.inf if pi == 0 else -Fraction(yi) / Fraction(pi))
            )
            if yi and not isinstance(value, float):
                if pi == 0:
                    value = math.inf
                else:
                    value += CTX.mpf(yi) * -CTX.log(CTX.mpf(pi))
        err = 0 if isinstance(value, float) else _tol(BASE_PREC, value)
        return Ref(value, err, grads, [0] * len(p))


def _mpf(q: Fraction) -> Any:
    return CTX.mpf(q.numerator) / q.denominator


def _isinf(q: Any) -> bool:
    return isinstance(q, float) and math.isinf(q)


# -- independent rounding check --------------------------------------------------------------


def _neighbours(r: float, fmt: Fmt) -> tuple[float, float]:
    """The values of ``fmt`` just below and just above ``r`` (possibly infinite)."""
    t = np.dtype(fmt.dtype).type
    with np.errstate(over="ignore"):
        return float(np.nextafter(t(r), t(-math.inf))), float(np.nextafter(t(r), t(math.inf)))


def _halfway(r: float, fmt: Fmt) -> tuple[Fraction, Fraction]:
    """The halfway points between a finite ``r`` and its neighbours; past +-max the
    overflow boundary lies as far as the other side (rounding with unbounded exponent)."""
    below, above = _neighbours(r, fmt)
    fr = Fraction(r)
    lo = (Fraction(below) + fr) / 2 if math.isfinite(below) else fr - (Fraction(above) - fr) / 2
    hi = (fr + Fraction(above)) / 2 if math.isfinite(above) else fr + (fr - Fraction(below)) / 2
    return lo, hi


def _is_value(r: float, fmt: Fmt) -> bool:
    return math.isnan(r) or float(np.asarray(r).astype(fmt.dtype)) == r


def _even(r: float, fmt: Fmt) -> bool:
    width = np.dtype(fmt.dtype).itemsize * 8
    return int(np.asarray(r).astype(fmt.dtype).view(f"uint{width}")) % 2 == 0


def rounding_problem(r: float, ref: Any, fmt: Fmt, err: Any = 0) -> str | None:
    """Why ``r`` is not a correct rounding of ``ref`` to ``fmt`` (None if it is).

    ``ref`` is an exact Fraction (halfway ties must go to even), an mpf within ``err`` of
    the exact value (within ``err`` of a halfway point either neighbour is accepted), or a
    float infinity or NaN. Zeros must carry the sign of the exact value where it is known.
    """
    r = float(r)
    if isinstance(ref, float) and math.isnan(ref):
        return None if math.isnan(r) else f"expected NaN, got {r!r}"
    if math.isnan(r):
        return f"got NaN, expected {ref}"
    if isinstance(ref, float) and math.isinf(ref):
        return None if r == ref else f"expected {ref}, got {r!r}"
    if not _is_value(r, fmt):
        return f"{r!r} is not a value of {fmt.name}"
    exact_ref = isinstance(ref, (Fraction, int))
    lo: Fraction | None
    hi: Fraction | None
    if math.isinf(r):
        edge = _halfway(math.copysign(fmt.max, r), fmt)
        lo, hi = (edge[1], None) if r > 0 else (None, edge[0])
    else:
        lo, hi = _halfway(r, fmt)
    if exact_ref:
        ref = Fraction(ref)
        if (lo is not None and ref < lo) or (hi is not None and ref > hi):
            return f"{r!r} is not nearest to the exact value {CTX.nstr(_mpf(ref), 20)}"
        if ref in (lo, hi) and not _even(r, fmt):
            return f"{ref} is halfway and {r!r} is not the even neighbour"
        if r == 0 and math.copysign(1.0, r) < 0 and ref >= 0:
            return "exact non-negative value rounded to -0.0"
        if r == 0 and math.copysign(1.0, r) > 0 and ref < 0:
            return "negative value rounded to +0.0"
        return None
    with CTX.workprec(4000):
        if (lo is not None and ref < _mpf(lo) - err) or (hi is not None and ref > _mpf(hi) + err):
            near = CTX.nstr(ref, 25)
            return f"{r!r} is not nearest to the reference {near} (err {CTX.nstr(err, 3)})"
        if r == 0 and abs(ref) > err and (ref < 0) != (math.copysign(1.0, r) < 0):
            return f"zero of the wrong sign {r!r} for the reference {CTX.nstr(ref, 25)}"
    return None


def nearest(ref: Any, fmt: Fmt) -> float:
    """The value of ``fmt`` nearest to ``ref`` (an mpf or a Fraction), found by testing the
    neighbours of a first guess against ``rounding_problem`` (ties to even)."""
    with CTX.workprec(4000):
        guess = float(_mpf(ref) if isinstance(ref, Fraction) else ref)
    first = float(fmt.cast(guess))
    cands = [first]
    for _ in range(2):
        cands += [v for c in list(cands) for v in _neighbours(c, fmt) if math.isfinite(v)]
    if math.isinf(first) or abs(guess) >= fmt.max:
        cands.append(math.copysign(math.inf, guess))
    if first == 0:
        cands += [0.0, -0.0]
    good = [c for c in cands if rounding_problem(c, ref, fmt) is None]
    assert good, f"no nearest value found for {ref} in {fmt.name}"
    return good[0]


def check_all(
    label: str, got: np.ndarray, refs: list[Any], errs: list[Any], fmt: Fmt, inputs: list[Any]
) -> None:
    """Assert every result; on failure list the count and the first few with inputs."""
    got = np.asarray(got, dtype=np.float64).ravel()
    bad = []
    for i, (r, ref, err) in enumerate(zip(got.tolist(), refs, errs)):
        problem = rounding_problem(r, ref, fmt, err)
        if problem:
            bad.append(f"  [{i}] inputs={inputs[i]!r}: {problem}")
    assert not bad, f"{label}: {len(bad)} of {len(refs)} wrong in {fmt.name}:\n" + "\n".join(
        bad[:8]
    )


def oracle(loss: str, preds: Any, labels: Any, fmt: Fmt, inputs: list[Any], **params: Any) -> Any:
    """The oracle with gradients on a batch; if it gives up on some input, fail listing
    the inputs it gave up on (found one by one)."""
    try:
        return exact(loss, preds, labels, format=fmt.name, grad=True, **params)
    except PrecisionLimitReached:
        pass
    hard = []
    for i in range(len(preds)):
        for grad in (False, True):
            try:
                exact(loss, preds[i : i + 1], labels[i : i + 1], fmt.name, grad, **params)
            except PrecisionLimitReached:
                hard.append((inputs[i], "gradient" if grad else "value"))
                break
    pytest.fail(
        f"{loss} in {fmt.name}: PrecisionLimitReached on {len(hard)} of {len(preds)} "
        f"inputs (input, what): {hard[:4]}"
    )


# -- random inputs ----------------------------------------------------------------------------

N = 150  # per regime (moderate, extreme), per loss and per format


def _logits(rng: np.random.Generator, fmt: Fmt, n: int, extreme: bool) -> np.ndarray:
    if not extreme:
        return fmt.cast(rng.uniform(-30, 30, n))
    kind = rng.integers(0, 4, n)
    e = rng.integers(fmt.sub, fmt.emax + 1, n)
    wide = np.ldexp(1 + rng.random(n), e) * rng.choice([-1.0, 1.0], n)
    near = rng.choice([-1.0, 1.0], n) * rng.uniform(0, 3 * (fmt.p + 16), n)  # tails, subnormals
    ints = rng.integers(-3, 4, n).astype(np.float64)
    huge = rng.choice([-1.0, 1.0], n) * fmt.max * rng.uniform(0.5, 1.0, n)
    x = fmt.cast(np.choose(kind, [wide, near, ints, huge]))
    return np.where(np.isinf(x), np.copysign(fmt.max, x), x)


def _targets(rng: np.random.Generator, fmt: Fmt, n: int) -> np.ndarray:
    kind = rng.integers(0, 4, n)
    z = np.choose(kind, [rng.random(n), np.zeros(n), np.ones(n), np.full(n, 0.5)])
    return fmt.cast(z)


def _probabilities(rng: np.random.Generator, fmt: Fmt, n: int, extreme: bool) -> np.ndarray:
    if not extreme:
        return fmt.cast(rng.uniform(0.001, 0.999, n))
    kind = rng.integers(0, 4, n)
    tiny = np.ldexp(1 + rng.random(n), -rng.integers(1, -fmt.sub + 1, n))
    near_one = 1 - np.ldexp(1 + rng.random(n), -rng.integers(1, fmt.p + 1, n))
    edges = rng.choice([0.0, 1.0, 0.5, math.ldexp(1, fmt.sub)], n)
    return fmt.cast(np.choose(kind, [tiny, near_one, edges, rng.random(n)]))


def _soft_rows(rng: np.random.Generator, fmt: Fmt, n: int, c: int) -> np.ndarray:
    y = rng.random((n, c)) * (rng.random((n, c)) < 0.7)
    onehot = np.eye(c)[rng.integers(0, c, n)]
    return fmt.cast(np.where(rng.random((n, 1)) < 0.4, onehot, y))


def _logit_rows(rng: np.random.Generator, fmt: Fmt, n: int, c: int, extreme: bool) -> np.ndarray:
    x = _logits(rng, fmt, n * c, extreme).reshape(n, c)
    if extreme:  # near-ties: a class close to the first one
        with np.errstate(over="ignore"):
            step = np.abs(x[:, :1]) * 2.0 ** -(fmt.p - 1)
            close = x[:, :1] + rng.integers(-3, 4, (n, 1)) * step
        x[:, 1:2] = np.where(rng.random((n, 1)) < 0.3, fmt.cast(close), x[:, 1:2])
        x = np.where(np.isinf(x), np.copysign(fmt.max, x), x)
    return x


# -- 1. random inputs against the reference --------------------------------------------------


@pytest.mark.parametrize("fmt_name", FORMATS)
@pytest.mark.parametrize("extreme", [False, True], ids=["moderate", "extreme"])
@pytest.mark.parametrize("loss", [SIGMOID, WEIGHTED])
def test_logit_elementwise_against_reference(loss: str, extreme: bool, fmt_name: str) -> None:
    fmt = FMTS[fmt_name]
    rng = np.random.default_rng([LOSSES.index(loss), extreme, FORMATS.index(fmt_name)])
    x, z = _logits(rng, fmt, N, extreme), _targets(rng, fmt, N)
    q = fmt.cast(np.ldexp(1 + rng.random(), int(rng.integers(-6, 7)))).item()
    params = {"pos_weight": q} if loss == WEIGHTED else {}
    inputs = [(a, b, q) for a, b in zip(x.tolist(), z.tolist())]
    res = oracle(loss, x, z, fmt, inputs, **params)
    refs = [ref_weighted(a, b, q if params else 1.0) for a, b in zip(x.tolist(), z.tolist())]
    check_all(
        f"{loss} value", res.value, [r.value for r in refs], [r.err for r in refs], fmt, inputs
    )
    check_all(
        f"{loss} gradient",
        res.gradient,
        [r.grads[0] for r in refs],
        [r.grad_errs[0] for r in refs],
        fmt,
        inputs,
    )


@pytest.mark.parametrize("fmt_name", FORMATS)
@pytest.mark.parametrize("extreme", [False, True], ids=["moderate", "extreme"])
@pytest.mark.parametrize("loss", [SOFTMAX, SPARSE_SOFTMAX])
def test_softmax_against_reference(loss: str, extreme: bool, fmt_name: str) -> None:
    fmt = FMTS[fmt_name]
    rng = np.random.default_rng([LOSSES.index(loss), extreme, FORMATS.index(fmt_name)])
    for c in (2, 3, 5):
        n = N // 3
        x = _logit_rows(rng, fmt, n, c, extreme)
        if loss == SOFTMAX:
            y = _soft_rows(rng, fmt, n, c)
            labels: Any = y
        else:
            labels = rng.integers(0, c, n)
            y = np.eye(c)[labels]
        inputs = [(a, b) for a, b in zip(x.tolist(), y.tolist())]
        res = oracle(loss, x, labels, fmt, inputs)
        refs = [ref_softmax(a, b) for a, b in zip(x.tolist(), y.tolist())]
        check_all(
            f"{loss} value", res.value, [r.value for r in refs], [r.err for r in refs], fmt, inputs
        )
        check_all(
            f"{loss} gradient",
            res.gradient,
            [g for r in refs for g in r.grads],
            [e for r in refs for e in r.grad_errs],
            fmt,
            [row for row in inputs for _ in range(c)],
        )


@pytest.mark.parametrize("fmt_name", FORMATS)
@pytest.mark.parametrize("extreme", [False, True], ids=["moderate", "extreme"])
def test_binary_crossentropy_against_reference(extreme: bool, fmt_name: str) -> None:
    fmt = FMTS[fmt_name]
    rng = np.random.default_rng([0, extreme, FORMATS.index(fmt_name)])
    p, z = _probabilities(rng, fmt, N, extreme), _targets(rng, fmt, N)
    inputs = list(zip(p.tolist(), z.tolist()))
    res = oracle(BCE, p, z, fmt, inputs)
    refs = [ref_binary(a, b) for a, b in zip(p.tolist(), z.tolist())]
    check_all("BCE value", res.value, [r.value for r in refs], [r.err for r in refs], fmt, inputs)
    check_all("BCE gradient", res.gradient, [r.grads[0] for r in refs], [0] * N, fmt, inputs)


@pytest.mark.parametrize("fmt_name", FORMATS)
@pytest.mark.parametrize("extreme", [False, True], ids=["moderate", "extreme"])
@pytest.mark.parametrize("loss", [CCE, SPARSE_CCE])
def test_categorical_against_reference(loss: str, extreme: bool, fmt_name: str) -> None:
    fmt = FMTS[fmt_name]
    rng = np.random.default_rng([LOSSES.index(loss), extreme, FORMATS.index(fmt_name)])
    for c in (2, 4):
        n = N // 2
        p = _probabilities(rng, fmt, n * c, extreme).reshape(n, c)
        if loss == CCE:
            y = _soft_rows(rng, fmt, n, c)
            labels: Any = y
        else:
            labels = rng.integers(0, c, n)
            y = np.eye(c)[labels]
        inputs = list(zip(p.tolist(), y.tolist()))
        res = oracle(loss, p, labels, fmt, inputs)
        refs = [ref_categorical(a, b) for a, b in zip(p.tolist(), y.tolist())]
        check_all(
            f"{loss} value", res.value, [r.value for r in refs], [r.err for r in refs], fmt, inputs
        )
        check_all(
            f"{loss} gradient",
            res.gradient,
            [g for r in refs for g in r.grads],
            [0] * (n * c),
            fmt,
            [row for row in inputs for _ in range(c)],
        )


# -- 2. closed forms --------------------------------------------------------------------------


def _log(n: int) -> Any:
    with CTX.workprec(BASE_PREC):
        return CTX.log(n)


@pytest.mark.parametrize("fmt_name", FORMATS)
@pytest.mark.parametrize("classes", [2, 3, 10, 1000])
def test_zero_logits_give_log_c(classes: int, fmt_name: str) -> None:
    fmt = FMTS[fmt_name]
    x = np.zeros((1, classes))
    res = exact(SPARSE_SOFTMAX, x, [classes - 1], format=fmt_name, grad=True)
    assert res.value[0] == nearest(_log(classes), fmt)
    inside, label = nearest(Fraction(1, classes), fmt), nearest(Fraction(1, classes) - 1, fmt)
    assert res.gradient[0, :-1].tolist() == [inside] * (classes - 1)
    assert res.gradient[0, -1] == label
    soft = exact(SOFTMAX, x, np.eye(classes)[-1:], format=fmt_name, grad=True)
    assert soft.value[0] == res.value[0]
    assert soft.gradient.tolist() == res.gradient.tolist()


@pytest.mark.parametrize("fmt_name", FORMATS)
def test_sigmoid_and_weighted_at_zero_logit(fmt_name: str) -> None:
    fmt = FMTS[fmt_name]
    z = [0.0, 0.25, 0.5, 1.0]
    res = exact(SIGMOID, [0.0] * 4, z, format=fmt_name, grad=True)
    assert res.value.tolist() == [nearest(_log(2), fmt)] * 4
    assert res.gradient.tolist() == [0.5 - v for v in z]  # exactly 1/2 - z
    q = 3.0
    res = exact(WEIGHTED, [0.0] * 4, z, format=fmt_name, grad=True, pos_weight=q)
    with CTX.workprec(BASE_PREC):
        expected = [nearest((q * v + 1 - v) * CTX.log(2), fmt) for v in z]
    assert res.value.tolist() == expected
    assert res.gradient.tolist() == [nearest(Fraction(1) / 2 - Fraction(v) * 2, fmt) for v in z]


@pytest.mark.parametrize("fmt_name", FORMATS)
def test_binary_crossentropy_at_one_half(fmt_name: str) -> None:
    fmt = FMTS[fmt_name]
    z = [0.0, 0.125, 0.5, 0.75, 1.0]
    res = exact(BCE, [0.5] * 5, z, format=fmt_name, grad=True)
    assert res.value.tolist() == [nearest(_log(2), fmt)] * 5
    assert res.gradient.tolist() == [2 - 4 * v for v in z]


@pytest.mark.parametrize("fmt_name", FORMATS)
def test_categorical_powers_of_two_give_multiples_of_log_2(fmt_name: str) -> None:
    fmt = FMTS[fmt_name]
    ks = [k for k in (1, 2, 3, 7, 20, 100, 1000) if k < -fmt.sub] + [-fmt.sub]
    for k in ks:
        p = [[2.0**-k, 0.5]]
        res = exact(CCE, p, [[1.0, 0.0]], format=fmt_name, grad=True)
        assert res.value[0] == nearest(k * _log(2), fmt), k
        assert res.gradient[0].tolist() == [nearest(-(Fraction(2) ** k), fmt), 0.0]
        sparse = exact(SPARSE_CCE, p, [0], format=fmt_name, grad=True)
        assert sparse.value[0] == res.value[0] and sparse.gradient.tolist() == res.gradient.tolist()
    # soft labels: 0.25 * 3 log 2 + 0.5 * 1 log 2 = 1.25 log 2
    res = exact(CCE, [[0.125, 0.5, 0.25]], [[0.25, 0.5, 0.0]], format=fmt_name)
    assert res.value[0] == nearest(Fraction(5, 4) * _log(2), fmt)


@pytest.mark.parametrize("fmt_name", FORMATS)
def test_tied_logits_have_rational_gradient(fmt_name: str) -> None:
    fmt = FMTS[fmt_name]
    for tie in (0.0, 1.5, -7.0, 1000.0):
        res = exact(SOFTMAX, [[tie] * 3], [[1.0, 0.0, 0.0]], format=fmt_name, grad=True)
        assert res.value[0] == nearest(_log(3), fmt)
        third = nearest(Fraction(1, 3), fmt)
        assert res.gradient[0].tolist() == [nearest(Fraction(-2, 3), fmt), third, third]
    # soft labels: Y = 1.5, gradient Y/3 - y_i = 1/2 - y_i exactly
    res = exact(SOFTMAX, [[2.0, 2.0, 2.0]], [[1.0, 0.5, 0.0]], format=fmt_name, grad=True)
    assert res.gradient[0].tolist() == [-0.5, 0.0, 0.5]
    assert res.value[0] == nearest(Fraction(3, 2) * _log(3), fmt)


# -- 3. identities that hold exactly ----------------------------------------------------------


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return a.shape == b.shape and a.view(np.uint64).tolist() == b.view(np.uint64).tolist()


@pytest.mark.parametrize("fmt_name", FORMATS)
def test_sigmoid_equals_weighted_with_unit_pos_weight(fmt_name: str) -> None:
    fmt = FMTS[fmt_name]
    rng = np.random.default_rng(11)
    x = np.concatenate([_logits(rng, fmt, 60, False), _logits(rng, fmt, 60, True)])
    z = _targets(rng, fmt, 120)
    a = exact(SIGMOID, x, z, format=fmt_name, grad=True)
    b = exact(WEIGHTED, x, z, format=fmt_name, grad=True, pos_weight=1.0)
    assert _same(a.value, b.value) and _same(a.gradient, b.gradient)


@pytest.mark.parametrize("fmt_name", FORMATS)
def test_weighted_with_power_of_two_pos_weight_scales_positive_targets(fmt_name: str) -> None:
    fmt = FMTS[fmt_name]
    rng = np.random.default_rng(12)
    x = _logits(rng, fmt, 80, False)
    ones = np.ones_like(x)
    base = exact(SIGMOID, x, ones, format=fmt_name, grad=True)
    for k in (-3, 1, 4):
        scaled = exact(WEIGHTED, x, ones, format=fmt_name, grad=True, pos_weight=2.0**k)
        normal = np.abs(base.value) >= math.ldexp(1, fmt.emin + 4)
        assert _same(scaled.value[normal], base.value[normal] * 2.0**k)
        normal = np.abs(base.gradient) >= math.ldexp(1, fmt.emin + 4)
        assert _same(scaled.gradient[normal], base.gradient[normal] * 2.0**k)


@pytest.mark.parametrize("fmt_name", FORMATS)
def test_sparse_equals_one_hot(fmt_name: str) -> None:
    fmt = FMTS[fmt_name]
    rng = np.random.default_rng(13)
    x = _logit_rows(rng, fmt, 60, 4, True)
    k = rng.integers(0, 4, 60)
    a = exact(SPARSE_SOFTMAX, x, k, format=fmt_name, grad=True)
    b = exact(SOFTMAX, x, np.eye(4)[k], format=fmt_name, grad=True)
    assert _same(a.value, b.value) and _same(a.gradient, b.gradient)
    p = _probabilities(rng, fmt, 240, True).reshape(60, 4)
    a = exact(SPARSE_CCE, p, k, format=fmt_name, grad=True)
    b = exact(CCE, p, np.eye(4)[k], format=fmt_name, grad=True)
    assert _same(a.value, b.value) and _same(a.gradient, b.gradient)


@pytest.mark.parametrize("fmt_name", FORMATS)
def test_sigmoid_equals_two_class_softmax(fmt_name: str) -> None:
    """z softplus(-x) + (1 - z) softplus(x) is softmax CE over logits [x, 0] with soft
    labels [z, 1 - z]; the softmax gradient is [g, -g] with g the sigmoid gradient."""
    fmt = FMTS[fmt_name]
    rng = np.random.default_rng(14)
    x = np.concatenate([_logits(rng, fmt, 60, False), _logits(rng, fmt, 60, True)])
    z = fmt.cast(np.round(rng.random(120) * 2**6) / 2**6)  # 1 - z is exact too
    z[:40] = 0.0
    z[40:60] = 1.0
    a = exact(SIGMOID, x, z, format=fmt_name, grad=True)
    rows = np.stack([x, np.zeros_like(x)], axis=1)
    b = exact(SOFTMAX, rows, np.stack([z, 1 - z], axis=1), format=fmt_name, grad=True)
    assert _same(a.value, b.value)
    assert _same(a.gradient, b.gradient[:, 0])
    assert _same(-a.gradient, b.gradient[:, 1])
    c = exact(SPARSE_SOFTMAX, rows[:40], np.ones(40, dtype=int), format=fmt_name, grad=True)
    assert _same(a.value[:40], c.value)  # softplus(x)


@pytest.mark.parametrize("fmt_name", FORMATS)
def test_binary_equals_categorical(fmt_name: str) -> None:
    fmt = FMTS[fmt_name]
    rng = np.random.default_rng(15)
    p = fmt.cast(np.round(rng.random(100) * 2**7) / 2**7)  # 1 - p is exact too
    z = fmt.cast(np.round(rng.random(100) * 2**5) / 2**5)
    a = exact(BCE, p, z, format=fmt_name)
    b = exact(CCE, np.stack([p, 1 - p], axis=1), np.stack([z, 1 - z], axis=1), format=fmt_name)
    assert _same(a.value, b.value)
    q = _probabilities(rng, fmt, 100, True)
    a = exact(BCE, q, np.ones(100), format=fmt_name, grad=True)
    b = exact(
        SPARSE_CCE,
        np.stack([q, np.full(100, 0.5)], axis=1),
        np.zeros(100, dtype=int),
        format=fmt_name,
        grad=True,
    )
    assert _same(a.value, b.value) and _same(a.gradient, b.gradient[:, 0])


@pytest.mark.parametrize("fmt_name", FORMATS)
def test_softmax_is_invariant_under_an_exact_shift(fmt_name: str) -> None:
    fmt = FMTS[fmt_name]
    rng = np.random.default_rng(16)
    x = fmt.cast(rng.integers(-40, 41, (40, 3)) / 4)
    y = _soft_rows(rng, fmt, 40, 3)
    base = exact(SOFTMAX, x, y, format=fmt_name, grad=True)
    shifts = [s for s in (0.25, -3.0, 64.0, -100.0) if (fmt.cast(x + s) == x + s).all()]
    assert len(shifts) >= 2
    for shift in shifts:
        moved = x + shift
        res = exact(SOFTMAX, moved, y, format=fmt_name, grad=True)
        assert _same(res.value, base.value) and _same(res.gradient, base.gradient)


def _near_float32_midpoint(v: float) -> bool:
    """Whether a float64 value lies within one float64 ulp of a float32 halfway point."""
    with np.errstate(over="ignore"):
        f = float(np.float32(v))
    if math.isinf(f):
        f = math.copysign(FMTS["float32"].max, v)
    return any(abs(Fraction(v) - m) <= Fraction(math.ulp(v)) for m in _halfway(f, FMTS["float32"]))


@pytest.mark.parametrize("loss", LOSSES)
def test_float32_result_is_the_float64_result_rounded(loss: str) -> None:
    """Without double rounding trouble (a float64 result away from float32 halfway
    points), the float32 oracle is the float64 oracle rounded to float32."""
    rng = np.random.default_rng([17, LOSSES.index(loss)])
    fmt = FMTS["float32"]
    n = 120
    extreme = np.arange(n) % 2 == 1
    if loss in (BCE, SIGMOID, WEIGHTED):
        pred = (_probabilities if loss == BCE else _logits)(rng, fmt, n, True)
        pred[~extreme] = (_probabilities if loss == BCE else _logits)(rng, fmt, n, False)[~extreme]
        labels: Any = _targets(rng, fmt, n)
    else:
        if loss in (CCE, SPARSE_CCE):
            pred = _probabilities(rng, fmt, n * 3, True).reshape(n, 3)
        else:
            pred = _logit_rows(rng, fmt, n, 3, True)
        labels = _soft_rows(rng, fmt, n, 3) if loss in (CCE, SOFTMAX) else rng.integers(0, 3, n)
    params = {"pos_weight": 0.75} if loss == WEIGHTED else {}
    r64 = exact(loss, pred, labels, format="float64", grad=True, **params)
    r32 = exact(loss, pred, labels, format="float32", grad=True, **params)
    checked = 0
    for a, b in [(r64.value, r32.value), (r64.gradient, r32.gradient)]:
        for v64, v32 in zip(a.ravel().tolist(), b.ravel().tolist()):
            if math.isnan(v64):
                assert math.isnan(v32)
                continue
            if math.isfinite(v64) and _near_float32_midpoint(v64):
                continue
            with np.errstate(over="ignore"):
                assert _same(np.float32(v64).astype(np.float64), v32), (v64, v32)
            checked += 1
    assert checked > n


# -- 4. hard cases -----------------------------------------------------------------------------


def test_exact_tie_in_float64_rounds_up() -> None:
    """m - x_k = 2**60 + 128 is halfway between 2**60 and 2**60 + 256; ties to even would
    give 2**60, but exp(-2**60 - 128) > 0 puts the loss above the halfway point."""
    for loss, labels in ((SPARSE_SOFTMAX, [1]), (SOFTMAX, [[0.0, 1.0]])):
        res = exact(loss, [[2.0**60, -128.0]], labels, grad=True)
        assert res.value[0] == 2.0**60 + 256
        assert res.gradient[0].tolist() == [1.0, -1.0]


# One halfway case per format: logits [2**a, -h] with label 1 give 2**a + h + tiny, where
# h is half the gap above 2**a; the right answer is the odd neighbour 2**a + 2h.
TIES = {"float64": (60, 128.0), "float32": (30, 64.0), "float16": (10, 0.5), "bfloat16": (8, 1.0)}


@pytest.mark.parametrize("fmt_name", FORMATS)
def test_exact_tie_in_each_format_rounds_up(fmt_name: str) -> None:
    fmt = FMTS[fmt_name]
    a, h = TIES[fmt_name]
    assert math.ldexp(1, a - fmt.p + 1) == 2 * h
    res = exact(SPARSE_SOFTMAX, [[2.0**a, -h]], [1], format=fmt_name)
    assert res.value[0] == 2.0**a + 2 * h
    assert not _even(2.0**a + 2 * h, fmt)  # ties to even would have been wrong


@pytest.mark.parametrize("fmt_name", FORMATS)
@pytest.mark.parametrize("loss", [SIGMOID, WEIGHTED])
def test_sigmoid_exact_part_on_a_halfway_point(loss: str, fmt_name: str) -> None:
    """x = -2**a (1 + 3 * 2**(1-p)), z = 3/4 (or z = 1, pos_weight = 3/4):
    -z x = 3 * 2**(a-2) + 4.5 ulps, halfway; log1p(exp(x)) > 0 rounds it up to 5 ulps
    (4 ulps, the even neighbour, is what ties to even would give)."""
    fmt = FMTS[fmt_name]
    a = {"float64": 60, "float32": 30, "float16": 15, "bfloat16": 100}[fmt_name]
    x = -(2.0**a) * (1 + 3 * 2.0 ** (1 - fmt.p))
    assert fmt.cast(x).item() == x
    if loss == SIGMOID:
        res = exact(loss, [x], [0.75], format=fmt_name, grad=True)
    else:
        res = exact(loss, [x], [1.0], format=fmt_name, grad=True, pos_weight=0.75)
    expected = 3 * 2.0 ** (a - 2) + 5 * 2.0 ** (a - fmt.p)
    assert res.value[0] == expected
    assert not _even(expected, fmt)
    assert res.gradient[0] == -0.75  # c e / (1 + e) - 3/4 with e = exp(x), rounds to -3/4


@pytest.mark.parametrize("fmt_name", FORMATS)
def test_gradient_halfway_minus_tiny_rounds_down(fmt_name: str) -> None:
    """Sigmoid: dL/dx = (1 - z) - e/(1 + e) with z = 2**-(p+1): 1 - z is halfway between
    1 - 2**-p and 1, and the true gradient lies just below it (1.0, the even neighbour,
    is what ties to even would give). Softmax: the gradient of the largest logit is
    (Y - y_k) - tiny with Y - y_k = 1 + 3 * 2**-p, halfway; it rounds down."""
    fmt = FMTS[fmt_name]
    big = {"float64": 2.0**60, "float32": 2.0**60, "float16": 2.0**15, "bfloat16": 2.0**60}
    z = 2.0 ** -(fmt.p + 1)
    res = exact(SIGMOID, [big[fmt_name]], [z], format=fmt_name, grad=True)
    assert res.gradient[0] == 1 - 2.0**-fmt.p
    y = [1.0, 1.0, 3 * 2.0**-fmt.p]
    assert fmt.cast(y).tolist() == y
    b = big[fmt_name] / 2
    res = exact(SOFTMAX, [[0.0, -b, -b]], [y], format=fmt_name, grad=True)
    assert res.gradient[0, 0] == 1 + 2.0 ** (1 - fmt.p)
    assert not _even(1 + 2.0 ** (1 - fmt.p), fmt)
    # the loss: (1 + 3 * 2**-p) b + tiny, halfway plus tiny: up to the even neighbour
    assert res.value[0] == b * (1 + 4 * 2.0**-fmt.p)


def test_tiny_loss_next_to_huge_logits() -> None:
    """Logits [-1e30, 0, -690] with label 1: L = log1p(exp(-690) + exp(-1e30)), which is
    exp(-690) (1 + O(1e-300)); a float64 value near 1e-300 (and in float32 exp(-87)
    next to a logit of -1e30)."""
    for fmt_name, d in (("float64", 690.0), ("float32", 87.0)):
        fmt = FMTS[fmt_name]
        with CTX.workprec(BASE_PREC):
            closed = CTX.exp(-d)
        expected = nearest(closed, fmt)
        # far from halfway points, so the O(exp(-d)) relative term cannot matter
        with CTX.workprec(BASE_PREC):
            margin = min(abs(closed - _mpf(h)) for h in _halfway(expected, fmt))
            assert margin > closed * CTX.exp(-d / 2)
        res = exact(SPARSE_SOFTMAX, [[-1e30, 0.0, -d]], [1], format=fmt_name, grad=True)
        assert res.value[0] == expected
        assert res.gradient[0].tolist() == [0.0, -expected, expected]
        sig = exact(SIGMOID, [d], [1.0], format=fmt_name)
        assert sig.value[0] == expected


def _sign(v: float) -> float:
    return math.copysign(1.0, v)


@pytest.mark.parametrize("fmt_name", FORMATS)
def test_underflowing_gradients_keep_their_sign(fmt_name: str) -> None:
    """exp(-2**60)-sized quantities round to zero in every format, with the sign of the
    exact value: the gradient of the winning class is -tiny, of a losing one +tiny."""
    big = 2.0**60 if fmt_name != "float16" else 2.0**15
    res = exact(SPARSE_SOFTMAX, [[0.0, -big]], [0], format=fmt_name, grad=True)
    assert res.value[0] == 0 and _sign(res.value[0]) == 1
    assert res.gradient[0, 0] == 0 and _sign(res.gradient[0, 0]) == -1
    assert res.gradient[0, 1] == 0 and _sign(res.gradient[0, 1]) == 1
    sig = exact(SIGMOID, [big, -big, big, -big], [1.0, 0.0, 0.0, 1.0], format=fmt_name, grad=True)
    assert [_sign(v) for v in sig.value] == [1.0, 1.0, 1.0, 1.0]
    assert sig.value[:2].tolist() == [0.0, 0.0]
    assert [_sign(v) for v in sig.gradient[:2]] == [-1.0, 1.0]  # sigmoid(x) - z
    assert sig.gradient[:2].tolist() == [0.0, 0.0]
    assert sig.gradient[2:].tolist() == [1.0, -1.0]
    w = exact(WEIGHTED, [big, -big], [1.0, 0.0], format=fmt_name, grad=True, pos_weight=4.0)
    assert [_sign(v) for v in w.gradient] == [-1.0, 1.0] and w.gradient.tolist() == [0.0, 0.0]


def test_float16_overflow_threshold() -> None:
    """65504 is the largest float16; 65520 is halfway to 65536 (= 2**16, out of range):
    an exact part of 65520 plus anything positive overflows, just below does not."""
    cases = [
        ([[65504.0, -16.0]], math.inf),  # 65520 + exp(-65520)
        ([[65504.0, -15.9921875]], 65504.0),  # 65519.992... + tiny
        ([[65504.0, 65504.0, -15.25]], 65504.0),  # 65519.25 + log 2 + tiny = 65519.94
        ([[65504.0, 65504.0, -15.5]], math.inf),  # 65519.5 + log 2 > 65520
        ([[65504.0, 0.0]], 65504.0),
    ]
    for logits, expected in cases:
        assert FMTS["float16"].cast(logits).tolist() == logits
        res = exact(SPARSE_SOFTMAX, logits, [len(logits[0]) - 1], format="float16")
        assert res.value[0] == expected, logits
    sig = exact(SIGMOID, [-65504.0], [1.0], format="float16")
    assert sig.value[0] == 65504.0
    w = exact(WEIGHTED, [-65504.0, -32752.0], [1.0, 1.0], format="float16", pos_weight=2.0)
    # 131008 overflows; 65504 + tiny is representable
    assert w.value.tolist() == [math.inf, 65504.0]


# x ranges where log1p(exp(-x)) is subnormal (down to below half the smallest subnormal)
SUBNORMAL_X = {
    "float64": (708.5, 746.0),
    "float32": (87.5, 104.0),
    "float16": (9.75, 17.5),
    "bfloat16": (87.5, 93.0),
}


@pytest.mark.parametrize("fmt_name", FORMATS)
def test_subnormal_results(fmt_name: str) -> None:
    """Sigmoid CE with z = 1 at large x is log1p(exp(-x)), subnormal in the format; the
    expected value is n * 2**sub with n = floor(v / 2**sub + 1/2) computed by hand (no
    float conversion, so no double rounding), and the gradient is -sigmoid(-x)."""
    fmt = FMTS[fmt_name]
    lo, hi = SUBNORMAL_X[fmt_name]
    rng = np.random.default_rng(18)
    x = np.unique(fmt.cast(np.concatenate([rng.uniform(lo, hi, 60), [lo, hi]])))
    res = exact(SIGMOID, x, np.ones_like(x), format=fmt_name, grad=True)
    with CTX.workprec(BASE_PREC):
        for xi, value, grad in zip(x.tolist(), res.value.tolist(), res.gradient.tolist()):
            v = CTX.log1p(CTX.exp(-CTX.mpf(xi)))
            g = 1 / (1 + CTX.exp(CTX.mpf(xi)))
            for exact_value, got, sign in ((v, value, 1), (g, grad, -1)):
                n = int(CTX.floor(CTX.ldexp(exact_value, -fmt.sub) + CTX.mpf(1) / 2))
                assert n <= 2 ** (fmt.p - 1)  # subnormal (or the smallest normal)
                expected = sign * math.ldexp(n, fmt.sub)
                assert got == expected and _sign(got) == sign, (xi, got, expected)


def test_subnormal_range_of_float64_by_hand() -> None:
    """At x = 745 the loss exp(-745)(1 - ...) ~ 2.8e-324 is above half the smallest
    subnormal (2.47e-324): it rounds to 2**-1074; at x = 746 (1.0e-324) to +0."""
    res = exact(SIGMOID, [745.0, 746.0, 744.0], [1.0, 1.0, 1.0], grad=True)
    assert res.value.tolist() == [5e-324, 0.0, math.ldexp(1, -1074) * 2]
    assert res.gradient.tolist() == [-5e-324, -0.0, -(2**-1073)]
    assert _sign(res.gradient[1]) == -1


FAR = {"float64": -1e5, "float32": -1e5, "float16": -60000.0, "bfloat16": -99840.0}


@pytest.mark.parametrize("fmt_name", FORMATS)
def test_tied_maxima_next_to_a_far_logit(fmt_name: str) -> None:
    """Logits [0, 0, -d], labels [1/2, 1/2, 0]: the gradient at each tied maximum is
    Y/(2 + exp(-d)) - 1/2 = -exp(-d)/(2 (2 + exp(-d))), a negative number that rounds to
    -0.0 in every format, and the loss log(2 + exp(-d)) rounds as log 2 does. The exact
    rational part of that gradient (Y/2 - y_i = 0) must be kept apart from the tiny one,
    as it is for a single maximum, or no working precision below ~1.44 d bits decides it.
    """
    fmt = FMTS[fmt_name]
    d = FAR[fmt_name]
    assert fmt.cast(d).item() == d
    res = exact(SOFTMAX, [[0.0, 0.0, d]], [[0.5, 0.5, 0.0]], format=fmt_name, grad=True)
    assert res.value[0] == nearest(_log(2), fmt)
    assert [_sign(g) for g in res.gradient[0]] == [-1.0, -1.0, 1.0]
    assert res.gradient[0].tolist() == [0.0, 0.0, 0.0]


def test_tied_maxima_gradient_on_a_halfway_point() -> None:
    """Labels [2**-54, 3/4, 0] on logits [0, 0, -d]: the gradient of class 0 is
    (3/4 - 2**-54)/2 - tiny = 3/8 - 2**-55 - tiny, just below a float64 halfway point: it
    rounds down to 3/8 - 2**-54 (ties to even would give 3/8). With d = 1000 the oracle
    settles it at ~2700 bits; with d = 1e5 the tiny part is ~2**-144270, beyond any
    precision, and only the exact split of the rational part can settle it."""
    for d in (-1000.0, -1e5):
        res = exact(SOFTMAX, [[0.0, 0.0, d]], [[2.0**-54, 0.75, 0.0]], grad=True)
        assert res.gradient[0].tolist() == [0.375 - 2.0**-54, -0.375, 0.0], d
        assert _sign(res.gradient[0, 2]) == 1.0
