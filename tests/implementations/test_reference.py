"""The reference implementations: without options against loss values computed here in
mpmath at 60 digits; with the catalogue's options against the oracle."""

from __future__ import annotations

import inspect
import math

import mpmath
import numpy as np
import pytest

from stabcheck.case import Case
from stabcheck.formats import get_format
from stabcheck.implementations import get_implementation, reference
from stabcheck.losses import LOSSES as LOSSES_SPECS
from stabcheck.losses import InputKind, LabelKind, get_loss
from stabcheck.measure import measure
from stabcheck.oracle import evaluate
from stabcheck.runner import invoke

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


# -- options: the catalogue's options against the oracle ------------------------------------

SPARSE_SOFTMAX = "sparse_softmax_cross_entropy_with_logits"
FOCAL = "sigmoid_focal_loss"
REDUCTIONS = ("sum", "mean", "sum_over_batch_size")


def test_every_family_takes_every_option_of_every_loss():
    for family in FAMILIES:
        for spec in LOSSES_SPECS:
            impl = get_implementation(family, spec.name)
            assert impl.params == spec.params and not impl.choices
            signature = inspect.signature(impl.fn)
            assert list(signature.parameters)[2:] == [*spec.operands, *spec.params]
            for p in spec.param_specs:
                default = signature.parameters[p.name].default
                assert default is inspect.Parameter.empty if p.required else default == p.default


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("family", FAMILIES)
def test_a_reduced_loss_is_a_0d_array_of_the_input_dtype(family, fmt):
    dtype = get_format(fmt).dtype
    x = np.array([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]], dtype=dtype)
    impl = get_implementation(family, SPARSE_SOFTMAX)
    for reduction in REDUCTIONS:
        out = impl.fn(x, np.array([0, 2]), reduction=reduction, weight=np.ones(3, dtype))
        assert out.shape == () and out.dtype == dtype
        assert impl.grad(x, np.array([0, 2]), reduction=reduction).dtype == dtype


def test_the_plain_functions_take_no_options():
    # what stabcheck.check draws no options for, e.g. in the plugin's and the gate's tests
    x, k = np.array([[1.0, 2.0, 0.5]]), np.array([1])
    for family in FAMILIES:
        plain = getattr(reference, f"{family}_sparse_softmax")
        assert list(inspect.signature(plain).parameters) == ["predictions", "labels"]
        assert plain.__name__ == f"{family}_sparse_softmax"
        assert plain(x, k) == get_implementation(family, SPARSE_SOFTMAX).fn(x, k)
    weighted = inspect.signature(reference.stable_weighted).parameters
    assert list(weighted) == ["predictions", "labels", "pos_weight"]


def _values(fmt):
    f = get_format(fmt)
    return f.max, f.smallest_subnormal, f.tiny, f.eps


def option_inputs(loss, fmt, extreme=True):
    """Predictions and labels: 6 rows of 4 classes or 2 x 12 elements; with ``extreme``,
    the format's extremes among them (huge and subnormal logits, a -inf logit,
    probabilities 0, subnormal and 1 - eps), else logits in [-3, 3] and probabilities in
    [0.05, 0.95]."""
    spec = get_loss(loss)
    big, sub, tiny, eps = _values(fmt) if extreme else (6.0, 0.125, 0.25, 0.0625)
    low = -inf if extreme else -1.0
    if spec.rowwise:
        if spec.inputs is InputKind.LOGITS:
            x = [[1, -2, 0.5, 3], [0, 0, 0, 0], [2, -2, 2, 0.25], [big / 2, -big / 2, 1, 0],
                 [sub, -tiny, 0, eps], [-0.5, low, 1, -0.5]]  # fmt: skip
        elif extreme:
            x = [[0.1, 0.2, 0.3, 0.4], [sub, tiny, 0.5, 1 - eps], [0.25] * 4, [1, 0, 0, 0],
                 [eps, 0.5, 0.25, 0.125], [0.9, 0.05, 0.05, 0]]  # fmt: skip
        else:
            x = [[0.1, 0.2, 0.3, 0.4], [0.25] * 4, [0.9, 0.05, 0.05, 0.5], [0.5, 0.3, 0.6, 0.1],
                 [0.125, 0.5, 0.25, 0.125], [0.7, 0.1, 0.1, 0.1]]  # fmt: skip
        if spec.labels is LabelKind.SPARSE:
            return np.array(x), np.array([3, 1, 0, 2, 3, 2])
        y = [[0.25, 0.25, 0.5, 0], [1, 0, 0, 0], [0.1, 0.2, 0.3, 0.4], [0, 0, 0, 1],
             [0.5, 0.5, 0, 0], [0, 0, 1, 0]]  # fmt: skip
        return np.array(x), np.array(y)
    if spec.inputs is InputKind.LOGITS:
        x = [0, 1, -1, 3, -3, 2, big / 2, -big / 2, sub, -tiny, 0.5, -2]
    elif extreme:
        x = [sub, tiny, 0.1, 0.5, 1 - eps, 1 - eps / 2, 0.9, 0.25, eps, 0.75, 0.3, 0.6]
    else:
        x = [0.05, 0.1, 0.5, 0.95, 0.2, 0.25, 0.9, 0.75, 0.3, 0.6, 0.4, 0.125]
    z = [0, 1, 0.5, 0.25, 1 - eps / 2, sub, 1, 0, 0.75, 0.5, 1, 0]
    return np.array([x, x[::-1]]), np.array([z, z[::-1]])


def option_cases(option, fmt, extreme=True):
    """Cases with each value of ``option`` worth meeting (with ``extreme``, the format's
    extremes; else moderate ones) on the losses that take it, over ``option_inputs`` or
    inputs of their own: smoothing 0 to 1; weights with zeros, subnormals and huge values;
    ignored rows holding NaN and infinities, or every row ignored; softcaps tiny to huge
    over -inf lanes; z-losses over lse near 1e4; focal alpha and gamma; each reduction,
    with class weights and ignored rows."""
    big, sub, tiny, eps = _values(fmt) if extreme else (6.0, 0.125, 0.25, 0.0625)
    takes = [spec.name for spec in LOSSES_SPECS if option in spec.params and not spec.operands]
    cases = []

    def add(loss, x=None, y=None, **params):
        if x is None:
            x, y = option_inputs(loss, fmt, extreme)
        if "pos_weight" in get_loss(loss).params:
            params["pos_weight"] = 3.0
        cases.append(Case.build(loss, x, y, format=fmt, **params))

    if option == "label_smoothing":
        for e in (0.0, sub, eps, 0.1, 0.5, 1 - eps / 2, 1.0):
            for loss in takes:
                add(loss, label_smoothing=e)
        for e in (1 - eps / 2, 1.0) if extreme else ():  # tied: p = 1/11, a gradient 0 at e = 1
            add(SPARSE_SOFTMAX, np.full((2, 11), 3.0), [0, 5], label_smoothing=e)
            add("softmax_cross_entropy_with_logits", np.full((1, 11), -2.0), np.eye(11)[:1],
                label_smoothing=e, weight=np.full(11, 3.0))  # fmt: skip
    elif option == "weight":
        for w in ([0, sub, big / 4, 1.5], [big / 4, 1, 0, sub], [tiny, 0.3, 3, 1], [0] * 4):
            for loss in takes:
                add(loss, weight=w)
                if "label_smoothing" in get_loss(loss).params:
                    add(loss, weight=w, label_smoothing=0.1)
    elif option == "ignore_index":
        for loss in takes:
            x, k = option_inputs(loss, fmt, extreme)
            junk = x.astype(float)
            junk[1, 0] = nan
            if "softmax" in loss:
                junk[3, 1], junk[4, 2] = inf, -inf
            ignored = np.where([False, True, False, True, True, False], -100, k)
            add(loss, junk, ignored, ignore_index=-100)
            add(loss, junk, np.full(len(k), -100), ignore_index=-100)  # every row
            add(loss, x, k, ignore_index=0)  # a class that exists
    elif option == "softcap":
        x = [[1, -inf, 0.5, 3], [-inf, -inf, -inf, -inf], [30, -30, 2, -inf],
             [big / 2, -big / 2, 1, 0], [4, 4, -inf, 4], [inf, 0, -inf, 1]]  # fmt: skip
        if not extreme:
            x = [[1, -2, 0.5, 3], [0.5] * 4, [3, -3, 2, -1], [2, -2, 1, 0], [4, 4, 1, 4],
                 [1, 0, -1, 1]]  # fmt: skip
        soft = np.eye(4)[[0, 1, 2, 0, 2, 3]] / 2
        for c in (sub, tiny, eps, 1.0, 30.0, big) if extreme else (4.0, 30.0):
            add(SPARSE_SOFTMAX, x, [3, 1, 0, 2, 3, 2], softcap=c)
            add("softmax_cross_entropy_with_logits", x, soft, softcap=c, z_loss=1e-4)
    elif option == "z_loss":
        offset = min(1e4, big / 8) if extreme else 2.0  # lse near 1e4 (float16: 8188)
        for s in (sub, 1e-4, 1.0, big) if extreme else (1e-4, 1.0):
            for loss in takes:
                x, y = option_inputs(loss, fmt, extreme)
                add(loss, x, y, z_loss=s)
                add(loss, x[:3] + offset, y[:3], z_loss=s)
    elif option in ("alpha", "gamma"):
        values = (None, 0.0, 0.25, 1.0) if option == "alpha" else (0.0, 0.5, 2.0, 5.0)
        for v in values:
            add(FOCAL, **{option: v})
    else:  # reduction
        for how in REDUCTIONS:
            for loss in takes:
                add(loss, reduction=how)
            for loss in ("sparse_categorical_crossentropy", SPARSE_SOFTMAX):
                x, k = option_inputs(loss, fmt, extreme)
                add(loss, x, np.where([1, 0, 0, 1, 0, 0], -100, k), reduction=how,
                    ignore_index=-100, weight=[0, sub, big / 4, 1.5])  # fmt: skip
                add(loss, x, np.full(6, -100), reduction=how, ignore_index=-100)
    return cases


OPTIONS = ("label_smoothing", "weight", "ignore_index", "z_loss", "softcap", "alpha", "gamma",
           "reduction")  # fmt: skip


def measured(family, case, max_ulps=4):
    """The value and gradient measurements of ``family`` on ``case`` against the oracle."""
    outcome = invoke(get_implementation(family, case.loss.name), case, grad=True)
    assert outcome.note == "", outcome.note  # the dtype of the input
    result = evaluate(case, grad=True)
    return (measure(result, outcome.values, max_ulps=max_ulps),
            measure(result, outcome.gradient, gradient=True, max_ulps=max_ulps))  # fmt: skip


def not_ok(rows, case, what):
    """A line for each of the first two measurements whose status is not ok."""
    return [f"{case.loss.name} {what}[{', '.join(map(str, m.index))}]: got {m.got!r}, "
            f"expected {m.expected!r} ({m.ulps:g} ULPs, {m.status})\n  case: {case.to_json()}"
            for m in rows if m.status != "ok"][:2]  # fmt: skip


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("option", OPTIONS)
def test_accurate_passes_every_option_in_every_format(option, fmt):
    failures = []
    for case in option_cases(option, fmt):
        values, grads = measured("accurate", case)
        failures += not_ok(values, case, "value") + not_ok(grads, case, "gradient")
    assert not failures, "\n".join(failures[:6])


@pytest.mark.parametrize("fmt", ["float64", "float32"])
@pytest.mark.parametrize("option", OPTIONS)
@pytest.mark.parametrize("family", ["naive", "stable"])
def test_naive_and_stable_apply_each_option_as_the_oracle_does(family, option, fmt):
    """On moderate inputs the three families compute the same function, options included
    (within 256 ULPs: naive and stable round in the input dtype; a wrong definition of an
    option is off by far more)."""
    failures = []
    for case in option_cases(option, fmt, extreme=False):
        values, grads = measured(family, case, max_ulps=256)
        failures += not_ok(values, case, "value") + not_ok(grads, case, "gradient")
    assert not failures, "\n".join(failures[:6])


# -- naive fails where it should ------------------------------------------------------------


def test_naive_float16_smoothing_overflows_on_a_wide_row():
    # PyTorch's arrangement (e / C) sum_i -log p_i: 8,192 terms of log 8192 = 9.01 in float16
    case = Case.build(SPARSE_SOFTMAX, np.zeros((1, 8192)), [5], format="float16",
                      label_smoothing=0.1)  # fmt: skip
    assert np.isfinite(evaluate(case).value).all()
    naive = get_implementation("naive", SPARSE_SOFTMAX)
    assert np.isinf(naive.fn(case.predictions, case.labels, label_smoothing=0.1)).all()
    for family in ("stable", "accurate"):
        values, grads = measured(family, case)
        assert {m.status for m in values + grads} == {"ok"}, family


@pytest.mark.parametrize("reduction", ["mean", "sum_over_batch_size"])
def test_naive_float16_mean_overflows_in_its_sum(reduction):
    # 256 rows of loss 300: the mean is 300, the sum 76,800 is beyond float16's 65,504
    x = np.tile([[300.0, 0.0]], (256, 1))
    case = Case.build(SPARSE_SOFTMAX, x, np.ones(256, int), format="float16", reduction=reduction)
    assert evaluate(case).value == 300
    naive = get_implementation("naive", SPARSE_SOFTMAX)
    assert np.isinf(naive.fn(case.predictions, case.labels, reduction=reduction))
    for family in ("stable", "accurate"):
        values, grads = measured(family, case)
        assert {m.status for m in values + grads} == {"ok"}, family


def test_naive_softcap_gradient_underflows_where_tanh_rounds_to_one():
    # 1 - tanh(10)^2 is 0 in float32; sech(10)^2 = 8.2e-9 is not
    case = Case.build(SPARSE_SOFTMAX, [[40.0, 0.0, -40.0]], [1], format="float32", softcap=4.0)
    exact_grad = evaluate(case, grad=True).gradient
    assert (exact_grad != 0).all() and np.isfinite(exact_grad).all()
    naive = get_implementation("naive", SPARSE_SOFTMAX)
    assert (naive.grad(case.predictions, case.labels, softcap=4.0)[0, [0, 2]] == 0).all()
    for family in ("stable", "accurate"):
        values, grads = measured(family, case)
        assert {m.status for m in values + grads} == {"ok"}, family


@pytest.mark.parametrize("family", FAMILIES)
def test_a_masked_lane_stays_masked_under_a_softcap(family):
    case = Case.build(SPARSE_SOFTMAX, [[1, -inf, 0.5, 3], [-inf, 2, 0, -inf]], [3, 1],
                      softcap=5.0, z_loss=1e-4)  # fmt: skip
    values, grads = measured(family, case, max_ulps=256)
    assert {m.status for m in values + grads} == {"ok"}
    impl = get_implementation(family, SPARSE_SOFTMAX)
    grad = impl.grad(case.predictions, case.labels, softcap=5.0, z_loss=1e-4)
    assert (grad[np.isinf(case.predictions)] == 0).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_ignored_rows_give_zero_whatever_their_logits_hold(family):
    x = np.array([[nan, 0.0, 1.0], [inf, -inf, 0.0], [1.0, 2.0, 3.0]])
    impl = get_implementation(family, SPARSE_SOFTMAX)
    k = np.array([-100, -100, 1])
    assert (impl.fn(x, k, ignore_index=-100)[:2] == 0).all()
    assert (impl.grad(x, k, ignore_index=-100)[:2] == 0).all()
    assert np.isfinite(impl.fn(x, k, ignore_index=-100, reduction="mean"))
    every = np.full(3, -100)
    assert np.isnan(impl.fn(x, every, ignore_index=-100, reduction="mean"))  # 0/0, PyTorch's
    assert impl.fn(x, every, ignore_index=-100, reduction="sum_over_batch_size") == 0  # Keras'
    assert (impl.grad(x, every, ignore_index=-100, reduction="mean") == 0).all()


# -- the linear losses ------------------------------------------------------------------------


def _linear_cases(fmt):
    """h (4 x 3), W (5 x 3) and b moderate, with each option of the linear losses: smoothing,
    weights with a zero, ignored rows (one holding NaN, or all of them), z-loss, reductions."""
    rng = np.random.default_rng(17)
    h, W, b = rng.uniform(-2, 2, (4, 3)), rng.uniform(-1, 1, (5, 3)), rng.uniform(-1, 1, 5)
    k, y = np.array([0, 4, 2, 1]), rng.dirichlet(np.full(5, 2.0), 4)
    nan_h = h.copy()
    nan_h[1, 0] = np.nan
    kw = {"format": fmt, "linear_weight": W, "linear_bias": b}
    options = [{}, {"label_smoothing": 0.25}, {"weight": [1.0, 0.0, 2.0, 0.5, 3.0]},
               {"z_loss": 0.125}, {"reduction": "sum"}, {"reduction": "mean"},
               {"reduction": "sum_over_batch_size"}]  # fmt: skip
    cases = [Case.build("linear_cross_entropy", h, k, **kw, **o) for o in options]
    cases += [Case.build("soft_linear_cross_entropy", h, y, **kw, **o) for o in options]
    cases.append(Case.build("linear_cross_entropy", nan_h, [0, -100, 2, 1], ignore_index=-100,
                            reduction="mean", **kw))  # fmt: skip
    cases.append(Case.build("linear_cross_entropy", h, [-100] * 4, ignore_index=-100,
                            reduction="mean", linear_weight=W, format=fmt))  # fmt: skip
    return cases


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("family", FAMILIES)
def test_the_families_compute_the_linear_losses_with_every_option(family, fmt):
    """Values and the gradients with respect to h, W and b: accurate within 4 ULPs, naive
    and stable within 256 on these moderate inputs."""
    failures = []
    for case in _linear_cases(fmt):
        outcome = invoke(get_implementation(family, case.loss.name), case, grad=True)
        result = evaluate(case, grad=True)
        ulps = 4 if family == "accurate" else 256
        assert set(outcome.operands) == set(case.operands)
        rows = measure(result, outcome.values, max_ulps=ulps) + measure(
            result, outcome.gradient, gradient=True, max_ulps=ulps)  # fmt: skip
        for name, got in outcome.operands.items():
            rows += measure(result, got, gradient=name, max_ulps=ulps)
        failures += not_ok(rows, case, "value or gradient")
    assert not failures, "\n".join(failures[:6])
