"""The reference implementations against loss values computed here in mpmath at 60 digits."""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest

from stabcheck.formats import get_format
from stabcheck.implementations import get_implementation
from stabcheck.losses import InputKind, LabelKind, get_loss

MP = mpmath.mp.clone()
MP.dps = 60

FORMATS = ("float64", "float32", "float16", "bfloat16")
LOSSES = (
    "binary_crossentropy",
    "categorical_crossentropy",
    "sparse_categorical_crossentropy",
    "sigmoid_cross_entropy_with_logits",
    "weighted_cross_entropy_with_logits",
    "softmax_cross_entropy_with_logits",
    "sparse_softmax_cross_entropy_with_logits",
)
SOFTMAX = "softmax_cross_entropy_with_logits"
inf, nan = math.inf, math.nan


# -- exact values, by the catalogue's formulas with 0 log 0 = 0 ----------------------------


def _softplus(t):
    return MP.log1p(MP.exp(t))


def _sigmoid(t):
    return 1 / (1 + MP.exp(-t))


def _over(a, b):
    """a / b for a > 0, b >= 0, with a / 0 = inf."""
    return MP.mpf(a) / b if b else MP.inf


def _others(values, counts, xi):
    """sum_{j != i} exp(x_j - x_i), the logits of the row grouped by value."""
    pairs = zip(values, counts, strict=True)
    return MP.fsum((c - (v == xi)) * MP.exp(MP.mpf(v) - MP.mpf(xi)) for v, c in pairs)


def _inputs(loss, x, labels):
    """Predictions and labels as float64 (exact), sparse labels as one-hot rows."""
    x = np.asarray(x).astype(np.float64)
    if get_loss(loss).labels is LabelKind.SPARSE:
        y = np.zeros(x.shape)
        y[np.arange(len(x)), labels] = 1.0
        return x, y
    return x, np.asarray(labels).astype(np.float64)


def _binary(p, z):
    return (-z * MP.log(p) if z else 0) + (-(1 - z) * MP.log1p(-p) if z != 1 else 0)


def _binary_grad(p, z):
    return (-_over(z, p) if z else 0), (_over(1 - z, 1 - MP.mpf(p)) if z != 1 else 0)


def exact_loss(loss, x, labels, pos_weight=1.0):
    """The exact losses, flattened (elementwise) or one per row."""
    spec = get_loss(loss)
    x, y = _inputs(spec, x, labels)
    q = MP.mpf(pos_weight)
    if not spec.rowwise:
        pairs = list(zip(x.ravel().tolist(), y.ravel().tolist(), strict=True))
        if spec.inputs is InputKind.PROBABILITIES:
            return [_binary(p, z) for p, z in pairs]
        return [q * z * _softplus(-t) + (1 - z) * _softplus(t) for t, z in pairs]
    out = []
    for row, lab in zip(x.tolist(), y.tolist(), strict=True):
        labelled = [(xi, yi) for xi, yi in zip(row, lab, strict=True) if yi]
        if spec.inputs is InputKind.PROBABILITIES:
            out.append(-MP.fsum(yi * MP.log(p) for p, yi in labelled))
        else:
            values, counts = (a.tolist() for a in np.unique(row, return_counts=True))
            out.append(MP.fsum(yi * MP.log1p(_others(values, counts, xi)) for xi, yi in labelled))
    return out


def exact_grad(loss, x, labels, pos_weight=1.0):
    """The exact gradient of the summed loss, flattened, and the size of the terms that make
    it up (the scale of the rounding errors a float computation cannot avoid)."""
    spec = get_loss(loss)
    x, y = _inputs(spec, x, labels)
    q = MP.mpf(pos_weight)
    if not spec.rowwise:
        pairs = list(zip(x.ravel().tolist(), y.ravel().tolist(), strict=True))
        if spec.inputs is InputKind.PROBABILITIES:
            terms = [_binary_grad(p, z) for p, z in pairs]
        else:
            terms = [((1 - z) * _sigmoid(t), -q * z * _sigmoid(-t)) for t, z in pairs]
    else:
        terms = []
        for row, lab in zip(x.tolist(), y.tolist(), strict=True):
            pairs = list(zip(row, lab, strict=True))
            if spec.inputs is InputKind.PROBABILITIES:
                terms += [(-_over(yi, p) if yi else 0, 0) for p, yi in pairs]
            else:
                values, counts = (a.tolist() for a in np.unique(row, return_counts=True))
                total = MP.fsum(lab)
                terms += [(total / (1 + _others(values, counts, xi)), -yi) for xi, yi in pairs]
    return [a + b for a, b in terms], [abs(a) + abs(b) for a, b in terms]


def assert_ulps(got, want, fmt, max_ulps, what=""):
    """Each of ``got`` within ``max_ulps`` of the exact ``want`` rounded to ``fmt``."""
    fmt = get_format(fmt)
    got = np.asarray(got).astype(np.float64).ravel().tolist()
    want = [v if isinstance(v, float) else fmt.round(v) for v in want]
    assert len(got) == len(want)
    ulps = [fmt.ulps(g, w) for g, w in zip(got, want, strict=True)]
    bad = [i for i, u in enumerate(ulps) if u > max_ulps]
    first = "; ".join(f"[{i}] got {got[i]!r}, want {want[i]!r} ({ulps[i]} ULPs)" for i in bad[:5])
    assert not bad, (
        f"{what}: {len(bad)} of {len(got)} values beyond {max_ulps} ULPs in {fmt.name}, "
        f"worst {max(ulps)}: {first}"
    )


def assert_within_terms(got, want, scale, fmt, k, what=""):
    """Each of ``got`` within 2 ULPs of the exact ``want``, or within ``k`` rounding errors
    (eps of ``fmt``) of the terms whose sum ``want`` is: a gradient is a difference and may
    cancel, which no computation in the format avoids."""
    f = get_format(fmt)
    got = np.asarray(got).astype(np.float64).ravel()
    rounded = np.array([f.round(v) for v in want])
    want, scale = (np.array([float(v) for v in a]) for a in (want, scale))
    ulps = np.array([f.ulps(g, w) for g, w in zip(got, rounded, strict=True)])
    with np.errstate(invalid="ignore", divide="ignore"):
        err = np.abs(got - want) / (f.eps * scale)
    bad = np.flatnonzero(~((ulps <= 2) | (err <= k)))
    first = "; ".join(
        f"[{i}] got {got[i]!r}, want {rounded[i]!r} ({ulps[i]} ULPs), terms {scale[i]!r}"
        for i in bad[:5]
    )
    assert not bad.size, (
        f"{what}: {bad.size} of {got.size} values off by more than {k} eps: {first}"
    )


# -- moderate inputs: every family agrees with mpmath --------------------------------------

FAMILIES = ("naive", "stable", "accurate")
LOSS_ULPS = {"naive": 16, "stable": 16, "accurate": 2}


def moderate(loss, fmt, n=40, c=5):
    """Logits in [-1, 1], probabilities in [0.05, 0.95], soft labels with zeros."""
    spec, dtype = get_loss(loss), get_format(fmt).dtype
    rng = np.random.default_rng(sum(map(ord, loss + fmt)))
    shape = (n, c) if spec.rowwise else (n * c,)
    low, high = (0.05, 0.95) if spec.inputs is InputKind.PROBABILITIES else (-1, 1)
    x = rng.uniform(low, high, shape)
    if spec.labels is LabelKind.SPARSE:
        labels = rng.integers(0, c, n)
    else:
        soft = rng.uniform(0, 1, shape)
        labels = np.where(rng.uniform(size=shape) < 0.3, 0.0, soft).astype(dtype)
    params = {"pos_weight": 2.5} if "pos_weight" in spec.params else {}
    return x.astype(dtype), labels, params


@pytest.mark.parametrize("fmt", ["float64", "float32"])
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("family", FAMILIES)
def test_moderate_losses_match_mpmath(family, loss, fmt):
    x, labels, params = moderate(loss, fmt)
    got = get_implementation(family, loss).fn(x, labels, **params)
    assert got.dtype == x.dtype
    assert got.shape == (x.shape[:1] if get_loss(loss).rowwise else x.shape)
    want = exact_loss(loss, x, labels, **params)
    assert_ulps(got, want, fmt, LOSS_ULPS[family], f"{family} {loss}")


@pytest.mark.parametrize("fmt", ["float64", "float32"])
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("family", FAMILIES)
def test_moderate_gradients_match_mpmath(family, loss, fmt):
    x, labels, params = moderate(loss, fmt)
    got = get_implementation(family, loss).grad(x, labels, **params)
    assert got.dtype == x.dtype and got.shape == x.shape
    want, scale = exact_grad(loss, x, labels, **params)
    assert_within_terms(got, want, scale, fmt, 4, f"{family} {loss}")
    if family == "accurate" and fmt != "float64":  # float64 inside: no cancellation left
        assert_ulps(got, want, fmt, 1, f"{family} {loss} gradient")


# -- the naive defects exist, the stable forms avoid them ----------------------------------


def test_naive_fails_where_stable_does_not():
    logits = np.array([[1000.0, 0.0, -1000.0]])
    soft = np.array([[0.5, 0.5, 0.0]])
    naive, stable = (get_implementation(family, SOFTMAX) for family in ("naive", "stable"))
    assert np.isnan(naive.fn(logits, soft)).all()  # exp(1000) = inf, inf / inf = nan
    assert np.isnan(naive.grad(logits, soft)).any()
    assert_ulps(stable.fn(logits, soft), exact_loss(SOFTMAX, logits, soft), "float64", 2)
    assert np.isfinite(stable.grad(logits, soft)).all()

    x, z = np.array([-1000.0, 1000.0, -1000.0]), np.array([1.0, 0.0, 0.5])
    sigmoids = {
        "sigmoid_cross_entropy_with_logits": {},
        "weighted_cross_entropy_with_logits": {"pos_weight": 3.0},
    }
    for loss, params in sigmoids.items():
        got = get_implementation("naive", loss).fn(x, z, **params)
        assert np.isinf(got).all()  # log(sigmoid(-1000)) = log(0), log(1 - sigmoid(1000))
        got = get_implementation("stable", loss).fn(x, z, **params)
        assert_ulps(got, exact_loss(loss, x, z, **params), "float64", 2, loss)

    p, z = np.array([0.0, 1.0]), np.array([0.0, 1.0])  # 0 log 0
    assert np.isnan(get_implementation("naive", "binary_crossentropy").fn(p, z)).all()
    assert (get_implementation("stable", "binary_crossentropy").fn(p, z) == 0).all()


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("loss", LOSSES)
def test_stable_gives_no_nan_on_finite_inputs(loss, fmt):
    impl = get_implementation("stable", loss)
    for x, labels, params in extreme(loss, fmt):
        for got, want in (
            (impl.fn(x, labels, **params), exact_loss(loss, x, labels, **params)),
            (impl.grad(x, labels, **params), exact_grad(loss, x, labels, **params)[0]),
        ):
            finite = np.isfinite(np.array([float(v) for v in want]))
            assert not np.isnan(got.astype(np.float64).ravel()[finite]).any(), params


# -- accurate on extreme inputs ------------------------------------------------------------


def extreme(loss, fmt):
    """Inputs cast to ``fmt`` (each with its parameters): logits of +-1e4, +-max, subnormals,
    the underflow threshold, a dominant class, offsets of 1e30, soft labels with zeros."""
    spec, f = get_loss(loss), get_format(fmt)
    dtype, big, sub, tiny, eps = f.dtype, f.max, f.smallest_subnormal, f.tiny, f.eps
    edge = -math.log(tiny)  # exp(-edge) is the smallest normal
    deep = edge + (f.precision - 1) * math.log(2) / 2  # exp(-deep) deep in the subnormals
    offset = min(1e30, big / 4)
    if spec.rowwise:
        labels = [[1, 0, 0], [0, 1, 0], [0, 0, 1], [0.5, 0, 0.5], [0.25, 0.75, 0], [sub, 0, 1],
                  [0.1, 0.2, 0.7], [0, 0, 0]]  # fmt: skip
        if spec.inputs is InputKind.PROBABILITIES:
            rows = [[sub, tiny, 0.5], [1 - eps / 2, 0.5, sub], [1, 1, 1], [1e-30, 0.9, 0.1],
                    [eps, 1 - eps, 0.25]]  # fmt: skip
        else:
            rows = [[1e4, -1e4, 0], [big, -big, 0], [big, big, -big], [-big, -big, -big],
                    [big / 2, -big / 2, 1], [sub, -sub, 0], [tiny, -tiny, sub],
                    [0, 1 - edge, -deep], [0.1 + edge - 3, 0.1, -1], [3, 3 - deep, 3 - edge],
                    [offset, offset * (1 + eps), offset * (1 + 2 * eps)],
                    [-offset, -offset * (1 + eps), offset]]  # fmt: skip
        x = np.repeat(np.array(rows), len(labels), axis=0).astype(dtype)
        if spec.labels is LabelKind.SPARSE:
            return [(x, np.arange(len(x)) % 3, {})]
        return [(x, np.tile(np.array(labels), (len(rows), 1)).astype(dtype), {})]
    zs = [0, sub, 0.1, 0.5, 1 - eps / 2, 1]
    if spec.inputs is InputKind.PROBABILITIES:
        xs = [sub, tiny, 1e-30, 0.1, 0.5, 1 - 2 * eps, 1 - eps, 1 - eps / 2]
    else:
        half = [sub, tiny, 0.1, 1, 30, edge - 1, edge + 3, deep, 1e4, big / 2, big]
        xs = [0, *half, *(-v for v in half)]
    x, z = (a.ravel().astype(dtype) for a in np.meshgrid(xs, zs))
    weights = [sub, tiny, 1e-3, 0.3, 1, 1e3, big] if "pos_weight" in spec.params else [None]
    return [(x, z, {} if q is None else {"pos_weight": float(dtype.type(q))}) for q in weights]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("loss", LOSSES)
def test_accurate_on_extreme_inputs(loss, fmt):
    impl = get_implementation("accurate", loss)
    for x, labels, params in extreme(loss, fmt):
        want = exact_loss(loss, x, labels, **params)
        assert_ulps(impl.fn(x, labels, **params), want, fmt, 2, f"{loss} {params}")
        want, scale = exact_grad(loss, x, labels, **params)
        got = impl.grad(x, labels, **params)
        assert_within_terms(got, want, scale, fmt, 4, f"{loss} gradient {params}")
        if fmt != "float64":
            assert_ulps(got, want, fmt, 1, f"{loss} gradient {params}")


@pytest.mark.parametrize("fmt", FORMATS)
def test_accurate_on_a_row_of_131072_classes(fmt):
    rng = np.random.default_rng(7)
    x = (rng.integers(-64, 64, (1, 131072)) / 4).astype(get_format(fmt).dtype)  # exact in all
    y = np.zeros(x.shape, x.dtype)
    y[0, [5, 77, 100_000]] = [0.5, 0.25, 0.25]
    values, counts = (a.tolist() for a in np.unique(x.astype(np.float64), return_counts=True))
    p = {v: 1 / (1 + _others(values, counts, v)) for v in values}  # the softmax, by value
    row = x.astype(np.float64)[0]
    soft = get_implementation("accurate", "softmax_cross_entropy_with_logits")
    sparse = get_implementation("accurate", "sparse_softmax_cross_entropy_with_logits")
    want = MP.fsum(-yi * MP.log(p[row[i]]) for i, yi in ((5, 0.5), (77, 0.25), (100_000, 0.25)))
    assert_ulps(soft.fn(x, y), [want], fmt, 2, "soft labels")
    assert_ulps(sparse.fn(x, np.array([77])), [-MP.log(p[row[77]])], fmt, 2, "sparse label")
    pairs, first = np.unique(np.stack([row, y[0].astype(np.float64)]), axis=1, return_index=True)
    want = [p[v] - yi for v, yi in pairs.T.tolist()]
    assert_ulps(soft.grad(x, y)[0, first], want, fmt, 2, "gradient")


# -- accurate: the oracle's conventions at infinite and NaN inputs -------------------------

CONVENTIONS = [
    # loss, predictions, labels, params, loss, gradient
    ("sigmoid_cross_entropy_with_logits", [inf, inf, inf, -inf, -inf, nan],
     [1, 0.5, 0, 0, 0.5, 0], {}, [0, inf, inf, 0, inf, nan], [0, 0.5, 1, 0, -0.5, nan]),
    ("weighted_cross_entropy_with_logits", [inf, inf, -inf, -inf, nan], [1, 0.5, 0, 0.5, 1],
     {"pos_weight": 3.0}, [0, inf, 0, inf, nan], [0, 0.5, 0, -1.5, nan]),
    (SOFTMAX, [[inf, 0, -inf]], [[1, 0, 0]], {}, [0], [[0, 0, 0]]),
    (SOFTMAX, [[inf, 0, -inf]], [[0.5, 0.5, 0]], {}, [inf], [[0.5, -0.5, 0]]),
    (SOFTMAX, [[0, -inf, 0]], [[1, 0, 0]], {}, [MP.log(2)], [[-0.5, 0, 0.5]]),
    (SOFTMAX, [[0, -inf]], [[0, 1]], {}, [inf], [[1, -1]]),
    (SOFTMAX, [[inf, inf, 0]], [[1, 0, 0]], {}, [nan], [[nan, nan, 0]]),
    (SOFTMAX, [[inf, inf, 0]], [[0, 0, 1]], {}, [inf], [[nan, nan, -1]]),
    (SOFTMAX, [[inf, inf, 0]], [[0, 0, 0]], {}, [0], [[0, 0, 0]]),
    (SOFTMAX, [[-inf, -inf]], [[1, 0]], {}, [nan], [[nan, nan]]),
    (SOFTMAX, [[-inf, -inf]], [[0, 0]], {}, [0], [[0, 0]]),
    (SOFTMAX, [[nan, 0]], [[0, 1]], {}, [nan], [[nan, nan]]),
    ("sparse_softmax_cross_entropy_with_logits", [[0, inf, -inf], [0, 0, -inf]], [1, 2], {},
     [0, inf], [[0, 0, 0], [0.5, 0.5, -1]]),
    ("binary_crossentropy", [0, 0, 1, 1, nan], [0, 0.5, 1, 0.5, 0], {},
     [0, inf, 0, inf, nan], [1, -inf, -1, inf, nan]),
    ("categorical_crossentropy", [[0, 1], [0, 1], [nan, 1]], [[0, 1], [1, 0], [0, 1]], {},
     [0, inf, nan], [[0, -1], [-inf, 0], [nan, nan]]),
    ("sparse_categorical_crossentropy", [[0, 1], [0, 1]], [1, 0], {},
     [0, inf], [[0, -1], [-inf, 0]]),
]  # fmt: skip


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(("loss", "x", "labels", "params", "value", "grad"), CONVENTIONS)
def test_accurate_follows_the_oracle_conventions(loss, x, labels, params, value, grad, fmt):
    dtype = get_format(fmt).dtype
    impl = get_implementation("accurate", loss)
    x = np.array(x, dtype=dtype)
    sparse = get_loss(loss).labels is LabelKind.SPARSE
    labels = np.array(labels) if sparse else np.array(labels, dtype=dtype)
    assert_ulps(impl.fn(x, labels, **params), value, fmt, 1, "loss")
    got = impl.grad(x, labels, **params)
    assert_ulps(got, np.ravel(grad).tolist(), fmt, 1, "gradient")


def test_accurate_gives_exactly_zero_gradient_to_a_minus_inf_logit_under_a_zero_label():
    impl = get_implementation("accurate", SOFTMAX)
    x = np.array([[1.5, -inf, 0.5, -inf], [-3.0, 2.0, -inf, 0.0]])
    y = np.array([[0.5, 0, 0.5, 0], [0.25, 0, 0, 0.75]])
    grad = impl.grad(x, y)
    assert (grad[np.isinf(x)] == 0).all()
    kept = np.isfinite(x)  # the -inf classes drop out of the loss and of the other entries
    for row, lab, g, keep in zip(x, y, grad, kept, strict=True):
        exact_row = [row[keep]], [lab[keep]]
        assert_ulps(impl.fn(row[None], lab[None]), exact_loss(SOFTMAX, *exact_row), "float64", 2)
        want, scale = exact_grad(SOFTMAX, *exact_row)
        assert_within_terms(g[keep], want, scale, "float64", 4)


def test_accurate_rounds_once_to_bfloat16():
    # (1 - z) 20 is often a bfloat16 halfway point that exp(-20) lifts: a float64 -> bfloat16
    # cast goes through float32 and rounds that tie the wrong way
    x = np.full(255, 20.0).astype(get_format("bfloat16").dtype)
    z = (np.arange(1, 256) / 256).astype(x.dtype)
    got = get_implementation("accurate", "sigmoid_cross_entropy_with_logits").fn(x, z)
    want = exact_loss("sigmoid_cross_entropy_with_logits", x, z)
    assert_ulps(got, want, "bfloat16", 0)
