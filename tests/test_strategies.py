"""Tests of stabcheck.strategies: every regime gives valid, exact cases of every loss it
applies to, with the property it promises, deterministically; bad arguments are refused."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
from functools import cache

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, find, given, settings
from hypothesis import strategies as st

from stabcheck.case import Case
from stabcheck.errors import InvalidArgument
from stabcheck.formats import FORMATS, get_format
from stabcheck.losses import InputKind, LabelKind, ParamKind, get_loss, get_param, loss_names
from stabcheck.strategies import (
    REGIMES,
    Regime,
    bit_patterns,
    cases,
    format_values,
    get_regime,
    independent_of_imports,
    regime_names,
    regimes_for,
    saturation_thresholds,
    special_values,
)

FORMAT_NAMES = [fmt.name for fmt in FORMATS]
COMBOS = [(n, f, r) for f in FORMAT_NAMES for n in loss_names() for r in regimes_for(n)]
EXAMPLES = {"wide": 4, "pos_weight": 60, "infinite": 50, "reduction": 40, "weight": 40,
            "vocabulary": 4, "long_sequence": 4}  # fmt: skip
DEFAULT_EXAMPLES = 25

LOGIT_ROWWISE = {"softmax_cross_entropy_with_logits", "sparse_softmax_cross_entropy_with_logits"}
LINEAR = {"linear_cross_entropy", "soft_linear_cross_entropy"}
TEXTBOOK = set(loss_names()) - LINEAR
ROWWISE = {spec.name for spec in map(get_loss, loss_names()) if spec.rowwise} - LINEAR
NON_SPARSE = {n for n in TEXTBOOK if get_loss(n).labels is not LabelKind.SPARSE}
EXPECTED_APPLIES = {
    "moderate": TEXTBOOK,
    "saturating": TEXTBOOK,
    "tiny": TEXTBOOK,
    "infinite": TEXTBOOK,
    "dominant": TEXTBOOK,
    "offset": LOGIT_ROWWISE,
    "soft_labels": NON_SPARSE,
    "wide": ROWWISE,
    "pos_weight": {"weighted_cross_entropy_with_logits"},
    "label_smoothing": {"binary_crossentropy", "categorical_crossentropy",
                        "sigmoid_cross_entropy_with_logits", *LOGIT_ROWWISE, *LINEAR},
    "weight": {"categorical_crossentropy", "sparse_categorical_crossentropy", *LOGIT_ROWWISE,
               *LINEAR},
    "ignore_index": {"sparse_categorical_crossentropy", "sparse_softmax_cross_entropy_with_logits",
                     "linear_cross_entropy"},
    "z_loss": LOGIT_ROWWISE | LINEAR,
    "softcap": LOGIT_ROWWISE | LINEAR,
    "alpha": {"sigmoid_focal_loss"},
    "gamma": {"sigmoid_focal_loss"},
    "reduction": set(loss_names()),
    "linear": LINEAR,
    "confident": LINEAR,
    "near_ties": LINEAR,
    "padded": LINEAR,
    "vocabulary": LINEAR,
    "long_sequence": LINEAR,
}
OPTION_REGIMES = ("label_smoothing", "weight", "ignore_index", "z_loss", "softcap", "alpha",
                  "gamma", "reduction")  # fmt: skip


def collect(strategy: st.SearchStrategy, n: int) -> list:
    """The first ``n`` examples hypothesis generates, derandomized (no shrinking), without
    the constants hypothesis finds in local source (as the audit and ``check`` draw), so
    an edit elsewhere in stabcheck does not change them."""
    out: list = []

    @settings(
        max_examples=n,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(strategy)
    def run(value):
        out.append(value)

    with independent_of_imports():
        run()
    return out


@cache
def examples(loss: str, fmt: str, regime: str) -> tuple[Case, ...]:
    n = EXAMPLES.get(regime, DEFAULT_EXAMPLES)
    return tuple(collect(cases(loss, fmt, regime), n))


def f64(array: np.ndarray) -> np.ndarray:
    return np.asarray(array, dtype=np.float64)


def exact(fmt, array: np.ndarray) -> bool:
    values = f64(array).ravel()
    if values.size > 64:  # the vectorised form of Format.contains
        back = f64(fmt.asarray(values))
        return bool(np.all((back == values) | np.isnan(values)))
    return all(fmt.contains(v) for v in values)


def ulps_below_one(fmt, p: float) -> int:
    return fmt.ordinal(1.0) - fmt.ordinal(p)


# -- the registry ------------------------------------------------------------------------------


def test_registry_names_and_descriptions():
    assert regime_names() == [r.name for r in REGIMES]
    assert set(regime_names()) == set(EXPECTED_APPLIES)
    for regime in REGIMES:
        assert isinstance(regime, Regime)
        assert regime.description and "\n" not in regime.description
        assert get_regime(regime.name) is regime
        assert get_regime(regime) is regime
        with pytest.raises(AttributeError):
            regime.name = "other"  # frozen


@pytest.mark.parametrize("loss", loss_names())
def test_regimes_for(loss):
    expected = [r for r in regime_names() if loss in EXPECTED_APPLIES[r]]
    assert regimes_for(loss) == expected
    assert regimes_for(get_loss(loss)) == expected
    for name in regime_names():
        assert get_regime(name).applies_to(loss) == (name in expected)


def test_get_regime_normalises_names():
    assert get_regime(" Soft-Labels ").name == "soft_labels"
    assert get_regime("POS_WEIGHT").name == "pos_weight"


@pytest.mark.parametrize(
    ("name", "hint"),
    [("saturate", "'saturating'"), ("soft_label", "'soft_labels'"), ("infinity", "'infinite'")],
)
def test_get_regime_unknown_names_a_close_match(name, hint):
    with pytest.raises(InvalidArgument) as info:
        get_regime(name)
    message = str(info.value)
    assert f"regime={name!r} is not a known regime" in message
    assert f"Did you mean {hint}" in message
    assert "Valid regimes: " + ", ".join(regime_names()) in message


def test_get_regime_unknown_without_close_match():
    with pytest.raises(InvalidArgument, match="Valid regimes: moderate, ") as info:
        get_regime("zzz")
    assert "Did you mean" not in str(info.value)


# -- invalid arguments of cases ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "kwargs", "needles"),
    [
        (("softmax_xent", "float32", "moderate"), {}, ["loss='softmax_xent'", "Valid losses:"]),
        (("binary_crossentropy", "float17", "moderate"), {}, ["format='float17'", "Valid formats"]),
        (("binary_crossentropy", "float32", "huge"), {}, ["regime='huge'", "Valid regimes"]),
        (
            ("sigmoid_cross_entropy_with_logits", "float32", "offset"),
            {},
            ["regime='offset' does not apply to sigmoid_cross_entropy_with_logits", "Regimes for"],
        ),
        (
            ("sparse_categorical_crossentropy", "float32", "soft_labels"),
            {},
            ["does not apply to sparse_categorical_crossentropy", "moderate, saturating"],
        ),
        (("binary_crossentropy", "float32", "pos_weight"), {}, ["does not apply"]),
        (("binary_crossentropy", "float32", "wide"), {}, ["does not apply"]),
        (("binary_crossentropy", "float32"), {"max_rows": 0}, ["max_rows=0", "integer >= 1"]),
        (("binary_crossentropy", "float32"), {"max_rows": 2.5}, ["max_rows=2.5"]),
        (("binary_crossentropy", "float32"), {"max_classes": True}, ["max_classes=True"]),
        (
            ("softmax_cross_entropy_with_logits", "float32", "dominant"),
            {"max_classes": 1},
            ["max_classes=1 is too small for regime 'dominant'", "max_classes>=2"],
        ),
    ],
)
def test_cases_refuses_bad_arguments_up_front(args, kwargs, needles):
    with pytest.raises(InvalidArgument) as info:
        cases(*args, **kwargs)
    for needle in needles:
        assert needle in str(info.value)


def test_cases_accepts_specs_aliases_and_regime_objects():
    strategy = cases(get_loss("log_loss"), get_format("f32"), get_regime("tiny"), max_rows=1)
    case = find(strategy, lambda c: True)
    assert case.loss.name == "binary_crossentropy" and case.format.name == "float32"
    assert case.predictions.shape[0] == 1


def test_defaults_and_single_class_rows():
    found = find(cases("sparse_softmax_cross_entropy_with_logits", max_classes=1), lambda c: True)
    assert found.format.name == "float64" and found.regime == "moderate"
    assert found.predictions.shape == (1, 1)


# -- every combination --------------------------------------------------------------------------


def check_valid(case: Case, loss: str, fmt_name: str, regime: str) -> None:
    fmt = get_format(fmt_name)
    spec = get_loss(loss)
    assert isinstance(case, Case)
    assert (case.loss.name, case.format.name, case.regime) == (loss, fmt_name, regime)
    assert case.predictions.dtype == fmt.dtype
    assert exact(fmt, case.predictions)
    rows = (case.predictions.shape[0], case.classes)
    assert set(case.operands) == ({"linear_weight"} | ({"linear_bias"} & set(case.operands))
                                  if spec.operands else set())  # fmt: skip
    for operand in case.operands.values():
        assert operand.dtype == fmt.dtype and exact(fmt, operand)
    kept = np.ones(case.predictions.shape[0], dtype=bool)
    if "ignore_index" in case.params:
        kept = case.labels != case.params["ignore_index"]
    assert not np.isnan(f64(case.predictions)[kept]).any()  # NaN only in ignored rows
    if spec.labels is LabelKind.SPARSE:
        assert case.labels.dtype == np.int64
        assert case.labels.shape == case.predictions.shape[:1]
        labels = case.labels[kept]
        assert ((labels >= 0) & (labels < case.classes)).all()
    else:
        shape = rows if spec.rowwise else case.predictions.shape
        assert case.labels.dtype == fmt.dtype and case.labels.shape == shape
        assert exact(fmt, case.labels)
        labels = f64(case.labels)
        assert ((labels >= 0) & (labels <= 1)).all()
    if spec.inputs is InputKind.PROBABILITIES:
        preds = f64(case.predictions)[kept]
        assert ((preds >= 0) & (preds <= 1)).all()
    required = {p.name for p in spec.param_specs if p.required}
    assert required <= set(case.params) <= set(spec.params)
    if regime in OPTION_REGIMES:
        assert regime in case.params
    elif regime == "long_sequence":
        assert case.params["reduction"] in ("mean", "sum")
        assert set(case.params) - required <= {"reduction", "ignore_index"}
    elif regime == "wide":  # equal or peaked rows now and then smoothed
        assert set(case.params) - required <= {"label_smoothing"}
    else:
        assert set(case.params) == required
    for name, value in case.params.items():
        param = get_param(name)
        if param.kind is ParamKind.REAL:
            assert fmt.contains(value) and param.low <= value <= param.high
            assert value > param.low or not param.open_low
        elif param.kind is ParamKind.VECTOR:
            assert value.dtype == fmt.dtype and value.shape == (case.classes,)
            assert (f64(value) >= 0).all() and np.isfinite(f64(value)).all()
        elif param.kind is ParamKind.CHOICE:
            assert value in param.choices and value != param.default
    if regime == "wide":
        assert case.predictions.shape[0] == 1
        assert 2**15 <= case.predictions.shape[1] <= 2**17
    elif regime == "reduction":
        assert case.predictions.shape[0] <= 128 and case.classes <= 8
    elif regime == "vocabulary":
        assert rows[0] <= 4 and 32_000 <= rows[1] <= 262_144
        assert rows[1] * case.predictions.shape[1] <= 2**21
    elif regime == "long_sequence":
        assert 1_024 <= rows[0] <= 8_192 and 2 <= rows[1] <= 64
        assert case.predictions.shape[1] <= 16
    elif spec.operands:
        assert rows[0] <= 3 and rows[1] <= 8 and case.predictions.shape[1] <= 16
    elif regime == "label_smoothing" and case.predictions.shape[-1] > 8:
        assert case.predictions.shape[0] == 1 and 7357 <= case.predictions.shape[-1] <= 8192
    else:
        assert case.predictions.shape[0] <= 3 and case.predictions.shape[-1] <= 8
    size = case.predictions.size + sum(a.size for a in case.operands.values())
    if size <= 64:  # replayable: the JSON gives back the same case
        again = Case.from_json(case.to_json())
        assert again.to_json() == case.to_json() and again.id == case.id


@pytest.mark.parametrize(("loss", "fmt", "regime"), COMBOS)
def test_every_combination_gives_valid_exact_cases(loss, fmt, regime):
    found = examples(loss, fmt, regime)
    assert len(found) >= min(EXAMPLES.get(regime, DEFAULT_EXAMPLES), 4)
    for case in found:
        check_valid(case, loss, fmt, regime)
    CHECKS[regime](found, get_loss(loss), get_format(fmt))
    assert len({case.id for case in found}) > 1  # not one case over and over


# -- what each regime promises ---------------------------------------------------------------


def check_moderate(found, spec, fmt):
    for case in found:
        preds = f64(case.predictions)
        if spec.inputs is InputKind.LOGITS:
            assert (np.abs(preds) <= 10).all()
        elif not spec.rowwise:
            assert ((preds >= 2**-5) & (preds <= 1 - 2**-5)).all()
        else:
            classes = preds.shape[1]
            assert (preds >= 2**-8).all()
            assert np.allclose(preds.sum(axis=1), 1.0, atol=classes * fmt.eps, rtol=0)
        for value in case.params.values():
            assert 2**-4 <= value <= 2**4


def check_saturating(found, spec, fmt):
    th = saturation_thresholds(fmt)
    low = min(th.values()) - 2.5
    hit = set()
    for case in found:
        preds = f64(case.predictions)
        if spec.inputs is InputKind.LOGITS:
            mags = np.abs(preds)
            saturated = mags >= low
            assert saturated.all() if not spec.rowwise else saturated.any(axis=1).all()
            for name, centre in th.items():
                if (np.abs(mags - centre) <= 2.5).any():
                    hit.add(name)
            if (mags >= th["exp_overflow"]).any():
                hit.add("overflow")
        else:
            near0 = np.vectorize(lambda p: 0 < fmt.ordinal(p) <= 16)(preds)
            near1 = np.vectorize(lambda p: 0 < ulps_below_one(fmt, p) <= 16)(preds)
            if spec.rowwise:
                assert near1.any(axis=1).all()
            else:
                assert (near0 | near1).all()
            hit |= {"0"} if near0.any() else set()
            hit |= {"1"} if near1.any() else set()
    if spec.inputs is InputKind.LOGITS:
        assert {"sigmoid", "overflow"} <= hit, hit
    else:
        assert hit == {"0", "1"}


def check_tiny(found, spec, fmt):
    subnormal = smallest = False
    for case in found:
        preds = f64(case.predictions)
        if spec.inputs is InputKind.LOGITS:
            assert (np.abs(preds) <= fmt.eps).all()
        else:
            small = (preds > 0) & (preds <= fmt.eps)
            assert small.any(axis=1).all() if spec.rowwise else small.all()
        subnormal |= bool(((preds != 0) & (np.abs(preds) < fmt.tiny)).any())
        smallest |= bool((np.abs(preds) == fmt.smallest_subnormal).any())
    assert subnormal and smallest


def infinite_outcomes(case: Case) -> set[str]:
    """'finite' / 'infinite' for each element or row holding an infinite logit or a
    probability of exactly 0 or 1 (NaN limits such as +inf - +inf are not counted)."""
    spec, out = case.loss, set()
    x, y = f64(case.predictions), case.labels
    logits = spec.inputs is InputKind.LOGITS
    if not spec.rowwise:
        z = f64(y)
        for xi, zi in zip(x.ravel(), z.ravel()):
            if logits and math.isinf(xi):
                bad = zi < 1 if xi > 0 else zi > 0
            elif not logits and xi in (0.0, 1.0):
                bad = zi > 0 if xi == 0 else zi < 1
            else:
                continue
            out.add("infinite" if bad else "finite")
        return out
    for i, row in enumerate(x):
        labels = np.eye(row.size)[y[i]] if spec.labels is LabelKind.SPARSE else f64(y[i])
        positive = labels > 0
        if logits:
            if not np.isinf(row).any() or (row == np.inf).sum() > 1 or np.isneginf(row).all():
                continue
            if (row == np.inf).any():
                bad = not (positive <= (row == np.inf)).all()
            else:
                bad = (positive & np.isneginf(row)).any()
        else:
            if not ((row == 0) | (row == 1)).any():
                continue
            bad = (positive & (row == 0)).any()
        out.add("infinite" if bad else "finite")
    return out


def check_infinite(found, spec, fmt):
    outcomes = set()
    neg_inf_under_zero = False
    for case in found:
        preds = f64(case.predictions)
        if spec.inputs is InputKind.LOGITS:
            assert np.isinf(preds).any(axis=-1 if spec.rowwise else None).all()
            if spec.labels is LabelKind.SPARSE:
                hot = np.eye(preds.shape[1])[case.labels]
            else:
                hot = f64(case.labels)
            neg_inf_under_zero |= bool((np.isneginf(preds) & (hot == 0)).any())
        else:
            special = (preds == 0) | (preds == 1)
            assert special.any(axis=-1 if spec.rowwise else None).all()
            assert (preds == 0).any() or not spec.rowwise
        outcomes |= infinite_outcomes(case)
    assert outcomes == {"finite", "infinite"}
    if spec.inputs is InputKind.LOGITS:
        assert neg_inf_under_zero


def check_dominant(found, spec, fmt):
    margin = fmt.precision * math.log(2.0) - 1.0
    for case in found:
        preds = f64(case.predictions)
        if spec.rowwise:
            true = (
                case.labels
                if spec.labels is LabelKind.SPARSE
                else np.argmax(f64(case.labels), axis=1)
            )
            if spec.labels is LabelKind.SOFT:
                assert (f64(case.labels).sum(axis=1) == 1).all()
            for row, k in zip(preds, true):
                others = np.delete(row, k)
                if spec.inputs is InputKind.LOGITS:
                    assert row[k] - others.max() >= margin
                else:
                    assert row[k] >= 1 - fmt.eps and (others <= fmt.eps / 8).all()
        else:
            z = f64(case.labels)
            assert np.isin(z, (0.0, 1.0)).all()
            if spec.inputs is InputKind.LOGITS:
                assert (np.sign(preds) == np.where(z == 1, 1, -1)).all()
                assert (np.abs(preds) >= margin).all()
            else:
                ones = preds[z == 1]
                assert all(0 <= ulps_below_one(fmt, p) <= 16 for p in ones)
                assert ((preds[z == 0] > 0) & (preds[z == 0] <= fmt.eps)).all()


def check_offset(found, spec, fmt):
    largest = 0.0
    for case in found:
        for row in f64(case.predictions):
            assert (np.abs(row) >= 64).all()
            assert len(set(np.sign(row))) == 1
            for value in row:  # the differences are exact: a shift of an exact row
                assert fmt.contains(value - row[0])
            largest = max(largest, float(np.abs(row).max()))
    assert largest >= fmt.max / 2


def check_soft_labels(found, spec, fmt):
    seen = set()
    for case in found:
        labels = f64(case.labels)
        if (labels == 0).any():
            seen.add("zero")
        if ((labels < 1) & (labels >= 1 - 2.0**-4)).any():
            seen.add("near one")
        if ((labels > 0) & (labels < 1)).any():
            seen.add("soft")
        if spec.rowwise:
            sums = labels.sum(axis=1)
            if (sums == 0).any():
                seen.add("all-zero row")
            if (np.abs(sums - 1) > labels.shape[1] * fmt.eps).any():
                seen.add("not summing to one")
    expected = {"zero", "near one", "soft"}
    if spec.rowwise:
        expected |= {"all-zero row", "not summing to one"}
    assert expected <= seen, expected - seen


def check_wide(found, spec, fmt):
    excluded = False
    for case in found:
        preds = f64(case.predictions)
        assert preds.shape[0] == 1 and preds.shape[1] >= 32768
        excluded |= bool(
            (np.isneginf(preds) if spec.inputs is InputKind.LOGITS else preds == 0).any()
        )
        if spec.inputs is InputKind.PROBABILITIES:
            assert abs(preds.sum() - 1) <= 2**-6
    assert excluded
    if spec.inputs is InputKind.LOGITS:  # equal rows past float16's 65,504, some smoothed
        equal = [c for c in found if np.unique(f64(c.predictions)).size == 1]
        assert any(c.predictions.shape[1] >= 65_520 for c in equal)
        if "label_smoothing" in spec.params:
            assert any("label_smoothing" in c.params for c in found)


def check_pos_weight(found, spec, fmt):
    weights = [case.params["pos_weight"] for case in found]
    assert any(w < fmt.tiny for w in weights)
    assert any(w >= fmt.max / 4 for w in weights)
    assert any(1 - fmt.eps <= w <= 1 + fmt.eps for w in weights)


def check_options(found, spec, fmt) -> None:
    """Every option's regime draws the values its spec names, not only ordinary ones."""
    name = found[0].regime
    values = [case.params[name] for case in found]
    param = get_param(name)
    if param.kind is ParamKind.REAL:
        assert len(set(values)) > 2  # varied
    if name == "ignore_index":
        assert any((c.labels == c.params[name]).all() for c in found)  # every row ignored
        assert any(not np.isfinite(f64(c.predictions)).all() for c in found)  # junk in them
    if name == "weight":
        assert any((f64(w) == 0).any() for w in values)
        assert any((f64(w) >= fmt.max / 8).any() for w in values)
    if name == "reduction":
        assert set(values) == {"sum", "mean", "sum_over_batch_size"}
        assert max(c.predictions.shape[0] for c in found) > 3


def check_linear(found, spec, fmt):
    """Varied shapes, with and without a bias; confident logits reach past exp underflow
    in the low formats; padded classes carry -inf biases and no labels."""
    assert len({(c.predictions.shape, c.classes) for c in found}) > 2
    regime = found[0].regime
    if regime == "linear":
        assert any("linear_bias" in c.operands for c in found)
        assert any("linear_bias" not in c.operands for c in found)
        for c in found:
            assert (np.abs(f64(c.predictions)) <= 4).all()
            assert (np.abs(f64(c.operands["linear_weight"])) <= 1).all()
    if regime == "confident" and fmt.name in ("float16", "bfloat16"):
        spread = [np.ptp(f64(c.predictions) @ f64(c.operands["linear_weight"]).T, axis=1).max()
                  for c in found]  # fmt: skip
        assert max(spread) > saturation_thresholds(fmt)["exp_underflow"]
    if regime == "near_ties":
        gaps = []
        for c in found:
            W = f64(c.operands["linear_weight"])
            assert (np.abs(W - W[0]) <= 8 * fmt.eps * np.maximum(np.abs(W[0]), fmt.tiny)).all()
            gaps.append((W != W[0]).any())
        assert any(gaps) and not all(gaps)  # some ties, some near ones
    if regime == "padded":
        for c in found:
            bias = f64(c.operands["linear_bias"])
            pad = np.isneginf(bias)
            assert pad.any() and pad[-1] and not pad[0]
            if spec.labels is LabelKind.SPARSE:
                assert not pad[c.labels].any()
            else:
                assert (f64(c.labels)[:, pad] == 0).all()


def check_large(found, spec, fmt):
    """Large shapes of the linear losses: varied; vocabularies now and then padded (a
    -inf bias on zero rows of W, no label there), long sequences now and then with ignored
    rows; some rows labelled with their top logit (a model that is right)."""
    assert len({(c.predictions.shape, c.classes) for c in found}) > 1
    right = []
    for c in found:
        W, h = f64(c.operands["linear_weight"]), f64(c.predictions)
        b = f64(c.operands["linear_bias"]) if "linear_bias" in c.operands else 0.0
        x = h @ W.T + b
        if spec.labels is LabelKind.SPARSE:
            kept = c.labels >= 0
            right.append((np.argmax(x, axis=1) == c.labels)[kept].any())
        pad = np.isneginf(b) if "linear_bias" in c.operands else np.zeros(c.classes, bool)
        assert (W[pad] == 0).all()
        if spec.labels is LabelKind.SPARSE:
            assert not pad[c.labels[c.labels >= 0]].any()
        else:
            assert (f64(c.labels)[:, pad] == 0).all()
    if spec.labels is LabelKind.SPARSE:
        assert any(right)


CHECKS = {
    "moderate": check_moderate,
    "saturating": check_saturating,
    "tiny": check_tiny,
    "infinite": check_infinite,
    "dominant": check_dominant,
    "offset": check_offset,
    "soft_labels": check_soft_labels,
    "wide": check_wide,
    "pos_weight": check_pos_weight,
    **dict.fromkeys(OPTION_REGIMES, check_options),
    **dict.fromkeys(("linear", "confident", "near_ties", "padded"), check_linear),
    "vocabulary": check_large,
    "long_sequence": check_large,
}


# -- determinism and shrinking ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("loss", "regime"),
    [
        ("binary_crossentropy", "saturating"),
        ("categorical_crossentropy", "infinite"),
        ("weighted_cross_entropy_with_logits", "pos_weight"),
        ("softmax_cross_entropy_with_logits", "offset"),
        ("sparse_softmax_cross_entropy_with_logits", "wide"),
    ],
)
def test_same_seed_same_cases(loss, regime):
    n = 3 if regime == "wide" else 10
    first = [c.to_json() for c in collect(cases(loss, "bfloat16", regime), n)]
    second = [c.to_json() for c in collect(cases(loss, "bfloat16", regime), n)]
    assert first == second


def test_shrinks_to_simple_cases():
    simplest = find(cases("sigmoid_cross_entropy_with_logits", "float32"), lambda c: True)
    assert simplest.predictions.shape == (1, 1)
    assert f64(simplest.predictions).tolist() == [[0.0]]
    assert f64(simplest.labels).tolist() == [[0.0]]
    big = find(
        cases("sigmoid_cross_entropy_with_logits", "float32"),
        lambda c: (np.abs(f64(c.predictions)) > 5).any(),
        settings=settings(database=None, derandomize=True),
    )
    assert f64(big.predictions).tolist() == [[6.0]] or f64(big.predictions).tolist() == [[-6.0]]


# -- the value helpers ---------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMAT_NAMES)
def test_special_values_are_exact(fmt):
    f = get_format(fmt)
    values = special_values(f, allow_infinity=True)
    assert values[0] == 0.0 and math.copysign(1, values[1]) < 0
    assert {f.smallest_subnormal, f.tiny, f.max, 1 - f.eps / 2, math.inf} <= set(values)
    assert all(f.contains(v) for v in values)
    assert math.inf not in special_values(f)


@pytest.mark.parametrize("fmt", FORMAT_NAMES)
def test_bit_patterns_cover_the_format(fmt):
    f = get_format(fmt)
    found = collect(bit_patterns(f), 200)
    assert all(f.contains(v) and not math.isnan(v) for v in found)
    assert any(math.isinf(v) for v in found)
    assert any(v != 0 and abs(v) < f.tiny for v in found)
    assert len({f.ordinal(v) for v in found}) > 100  # many bit patterns, not only the specials
    finite = collect(bit_patterns(f, allow_infinity=False), 50)
    assert all(math.isfinite(v) for v in finite)
    assert any(math.isnan(v) for v in collect(bit_patterns(f, allow_nan=True), 100))


@pytest.mark.parametrize("fmt", FORMAT_NAMES)
def test_format_values_stay_in_range_and_exact(fmt):
    f = get_format(fmt)
    lo, hi = -f.tiny, 1 - f.eps / 2
    found = collect(format_values(f, lo, hi), 100)
    assert all(lo <= v <= hi and f.contains(v) for v in found)
    assert any(v != 0 and abs(v) < f.tiny for v in found)
    positive = collect(format_values(f, 0.0, 1.0), 50)
    assert all(math.copysign(1.0, v) > 0 for v in positive)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("float16", 0.1, 1.0), "min_value=0.1 is not a value of float16; use get_format"),
        (("bfloat16", 0.0, 1.001), "max_value=1.001 is not a value of bfloat16"),
        (("float32", 2.0, 1.0), "min_value=2.0 is above max_value=1.0"),
        (("float32", math.nan, 1.0), "min_value=nan"),
    ],
)
def test_format_values_refuses_bad_bounds(args, needle):
    with pytest.raises(InvalidArgument, match=needle.replace(".", r"\.").replace("(", r"\(")):
        format_values(*args)


def test_saturation_thresholds_match_the_formats():
    th32 = saturation_thresholds("float32")
    assert th32["sigmoid"] == pytest.approx(16.64, abs=0.01)
    assert th32["exp_overflow"] == pytest.approx(88.72, abs=0.01)
    assert saturation_thresholds("float64")["exp_overflow"] == pytest.approx(709.78, abs=0.01)
    assert saturation_thresholds("float16")["exp_overflow"] == pytest.approx(11.09, abs=0.01)
    assert saturation_thresholds("bfloat16")["sigmoid"] == pytest.approx(5.55, abs=0.01)


def test_import_does_not_pull_heavy_modules():
    code = (
        "import sys, stabcheck.strategies; "
        "print([m for m in ('pandas', 'torch', 'tensorflow', 'jax') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_same_seed_draws_the_same_cases_whatever_is_imported(tmp_path):
    # hypothesis mixes in constants from the source of local modules it finds imported
    constants = ", ".join(repr(x) for x in [0.1234, 3.5e-300, 7.25, -42.0, 1e30, 0.999, 2e-45])
    (tmp_path / "constants_galore.py").write_text(
        f"FLOATS = [{constants}]\nINTS = [3, 17, 255, 1024, 65537]\n"
    )
    code = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(tmp_path)!r})
        from stabcheck.audit import draw_cases

        def ids():
            return [c.id for loss, fmt, regime in [
                ("binary_crossentropy", "bfloat16", "tiny"),
                ("softmax_cross_entropy_with_logits", "float32", "moderate"),
                ("weighted_cross_entropy_with_logits", "float16", "pos_weight"),
            ] for c in draw_cases(loss, fmt, regime, 8, 0)]

        before = ids()
        import constants_galore
        print(before == ids())
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True", out.stderr[-2000:]
