"""The chunked and vocabulary-parallel linear kernels (``stabcheck.implementations.chunked``)
against the oracle: ordinary inputs agree with every option; the accumulation dtype shows in
the bits of error where the formats' significands and ranges say it must; padded classes and
ignored rows follow the catalogue's conventions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stabcheck.case import Case
from stabcheck.implementations import chunked, get_implementation
from stabcheck.measure import measure
from stabcheck.oracle import evaluate
from stabcheck.runner import invoke

LINEAR, SOFT = "linear_cross_entropy", "soft_linear_cross_entropy"
CHUNKED = [f"chunked(acc={acc})" for acc in ("float32", "bfloat16", "float16")]
PARALLEL = ["vocab_parallel(k=2)", "vocab_parallel(k=8)"]
ALL = CHUNKED + PARALLEL
EXACT = ["chunked(acc=float32)", *PARALLEL]  # float32 accumulators: within the tolerance

N, D, V = 5, 4, 7  # 4 chunks of 2 classes (the last of 1); k = 8 leaves a shard empty


def _inputs(seed: int, n: int = N, d: int = D, v: int = V, scale: float = 1.0):
    """h, W, b uniform in [-scale, scale], and integer labels."""
    rng = np.random.default_rng(seed)
    h, W = (rng.uniform(-scale, scale, shape) for shape in ((n, d), (v, d)))
    return h, W, rng.uniform(-1, 1, v), rng.integers(0, v, n)


def _measured(name: str, case: Case, result=None) -> dict[str, list]:
    """The measurements of ``name`` on ``case``: the loss, dL/dh and each operand's
    gradient, keyed ``value``, ``predictions`` and the operands' names."""
    outcome = invoke(get_implementation(name, case.loss.name), case, grad=True)
    assert outcome.note == "", outcome.note  # every output in the input's dtype
    result = evaluate(case, grad=True) if result is None else result
    out = {"value": measure(result, outcome.values),
           "predictions": measure(result, outcome.gradient, gradient=True)}  # fmt: skip
    for operand, gradient in outcome.operands.items():
        out[operand] = measure(result, gradient, gradient=operand)
    return out


def _not_ok(name: str, measured: dict[str, list]) -> list[str]:
    return [f"{name} {what}{m.index}: got {m.got!r}, expected {m.expected!r} ({m.status})"
            for what, ms in measured.items() for m in ms if m.status != "ok"]  # fmt: skip


def _median_bits(measurements: list) -> float:
    return float(np.median([m.bits for m in measurements]))


def test_every_kernel_is_registered_with_a_gradient():
    for name in ALL:
        impl = get_implementation(name, LINEAR)
        assert (impl.backend, impl.library, impl.differentiable) == ("numpy", "stabcheck", True)
        assert {"label_smoothing", "ignore_index", "reduction"} <= set(impl.params)
    for name in CHUNKED:
        assert set(get_implementation(name, SOFT).params) == {"label_smoothing", "weight",
                                                              "z_loss", "softcap",
                                                              "reduction"}  # fmt: skip
        assert {"weight", "z_loss"} <= set(get_implementation(name, LINEAR).params)
    assert chunked.CHUNK < 3  # rows of 3 or more classes cross a chunk boundary


IGNORED = np.array([0, -100, 0, 0, -100])  # rows 1 and 4 ignored
SPARSE_OPTIONS = [
    ({}, False),
    ({}, True),
    ({"reduction": "mean", "ignore_index": -100}, True),
    ({"reduction": "sum", "label_smoothing": 0.1}, True),
    ({"label_smoothing": 0.5, "ignore_index": -100}, False),
    ({"reduction": "sum_over_batch_size", "ignore_index": -100}, True),
    ({"reduction": "mean", "weight": "w", "z_loss": 0.01, "label_smoothing": 0.2}, True),
    ({"reduction": "mean", "softcap": 8.0, "ignore_index": -100}, True),
]


@pytest.mark.parametrize(("params", "bias"), SPARSE_OPTIONS)
def test_ordinary_float32_inputs_agree_with_the_oracle(params, bias):
    h, W, b, k = _inputs(1)
    rng = np.random.default_rng(2)
    if "ignore_index" in params:
        k = np.where(IGNORED == -100, -100, k)
    if "weight" in params:
        params = params | {"weight": rng.uniform(0.5, 2.0, V)}
    case = Case.build(LINEAR, h, k, format="float32", linear_weight=W,
                      **({"linear_bias": b} if bias else {}), **params)  # fmt: skip
    result = evaluate(case, grad=True)
    failures = []
    for name in EXACT:
        if not get_implementation(name, LINEAR).takes(case):
            # Megatron's options: no class weights, no softcap
            assert name in PARALLEL and {"weight", "softcap"} & set(params)
            continue
        measured = _measured(name, case, result)
        assert ("linear_bias" in measured) == bias
        failures += _not_ok(name, measured)
    assert not failures, "\n".join(failures[:6])


@pytest.mark.parametrize("params", [{}, {"reduction": "mean", "label_smoothing": 0.1,
                                         "weight": "w", "z_loss": 0.01},
                                    {"softcap": 8.0, "z_loss": 0.01}])  # fmt: skip
def test_soft_labels_agree_with_the_oracle(params):
    h, W, b, _ = _inputs(3)
    rng = np.random.default_rng(4)
    y = rng.dirichlet(np.ones(V), N)
    if "weight" in params:
        params = params | {"weight": rng.uniform(0.5, 2.0, V)}
    case = Case.build(SOFT, h, y, format="float32", linear_weight=W, linear_bias=b, **params)
    name = "chunked(acc=float32)"
    assert not _not_ok(name, _measured(name, case))


def test_a_softcap_slope_of_one_minus_tanh_squared_cancels_far_beyond_the_cap():
    """Under a softcap c the kernels scale G by 1 - tanh(x / c)^2, as Liger does: where
    |x| >> c, tanh is near 1 and the difference loses about log2(1 / sech^2(x / c)) bits,
    though sech^2 itself is well conditioned. The loss, which needs no slope, stays exact."""
    h, W, b, k = _inputs(5, scale=4.0)  # logits up to 4 x 4 x 4 + 1 = 65
    case = Case.build(LINEAR, h, k, format="float32", linear_weight=W, linear_bias=b,
                      softcap=3.0)  # fmt: skip
    measured = _measured("chunked(acc=float32)", case)
    assert all(m.status == "ok" for m in measured["value"])
    far = [m for m in measured["linear_weight"] if m.status != "ok"]
    assert far, "1 - tanh^2 would have to keep its bits at |x| > 5 c"
    x = (h @ W.T + b).astype(np.float32)
    assert np.abs(x).max() > 5 * 3.0
    assert max(m.bits for m in far) > 8


def test_vocab_parallel_smooths_over_the_global_vocabulary():
    """(1 - e) NLL + e (mean over all C classes of -log p): a shard's C (V / k) would scale the
    smoothing term by k, which at e = 1/2 moves the loss far beyond any tolerance."""
    h, W, b, k = _inputs(5, v=6)
    case = Case.build(LINEAR, h, k, format="float32", linear_weight=W, linear_bias=b,
                      label_smoothing=0.5)  # fmt: skip
    plain = Case.build(LINEAR, h, k, format="float32", linear_weight=W, linear_bias=b)
    result = evaluate(case, grad=True)
    assert (np.abs(result.value - evaluate(plain).value) > 0.01 * result.value).any()
    for name in PARALLEL:  # k = 8 > 6 classes: two shards are empty
        assert not _not_ok(name, _measured(name, case, result))


def test_narrow_accumulators_cost_their_significand_bits_on_confident_rows():
    """Logits spread over tens of units and 64 classes: 32 chunks, each rounding the running
    sum s (at most 64, m far below 65504: in range for every format) to the accumulator's
    significand, as dL/dh after each chunk. float32 stays within the oracle's tolerance;
    float16's 11 bits lose fewer than bfloat16's 8, on the loss (through log s) and on dL/dh.
    Each label is its row's median class, so that the loss is tens of units: at the argmax
    a loss near 0 cancels in m + log s - x_k whatever the accumulator."""
    h, W, _, _ = _inputs(6, n=12, d=8, v=64, scale=4.0)
    plain = Case.build(LINEAR, h, np.zeros(12, int), format="float32", linear_weight=W)
    logits = plain.predictions @ plain.operands["linear_weight"].T
    assert (np.ptp(logits, axis=1) > 20).all() and np.abs(logits).max() < 2**8
    k = np.argsort(logits, axis=1)[:, 32]
    case = Case.build(LINEAR, h, k, format="float32", linear_weight=W)
    result = evaluate(case, grad=True)
    assert (result.value > 4).all()
    bits = {}
    for name in CHUNKED:
        measured = _measured(name, case, result)
        bits[name] = [_median_bits(measured[what]) for what in ("value", "predictions")]
        if name == "chunked(acc=float32)":
            assert not _not_ok(name, measured)
    f32, f16, bf16 = (bits[f"chunked(acc={acc})"] for acc in ("float32", "float16", "bfloat16"))
    for what in range(2):
        assert f32[what] < f16[what] < bf16[what], bits
        assert bf16[what] - f32[what] >= 4, bits


def test_a_float16_running_max_overflows_beyond_65504_where_bfloat16_does_not():
    """Row maxima 2^17 and 2^16: beyond float16's largest finite 65,504, so its stored m is
    inf and lse = inf + log 0 is NaN; both are bfloat16 values (float32's exponent range),
    so bfloat16 stores them exactly and rounds only s."""
    W = np.array([[2.0**17], [2.0**17 - 1], [2.0**17 - 2], [2.0**17 - 3], [2.0**17 - 0.5]])
    case = Case.build(LINEAR, [[1.0], [0.5]], [3, 0], format="float32", linear_weight=W)
    result = evaluate(case, grad=True)
    assert np.isfinite(result.value).all()
    half = _measured("chunked(acc=float16)", case, result)
    assert {m.status for ms in half.values() for m in ms} == {"nan"}
    assert not _not_ok("chunked(acc=bfloat16)", _measured("chunked(acc=bfloat16)", case, result))


def test_a_float16_gradient_accumulator_underflows_where_bfloat16_keeps_8_bits():
    """W scaled by 2^-26 makes |dL/dh| < 2^-24, float16's smallest subnormal: its
    accumulator holds 0 or +-2^-24; bfloat16 has float32's exponent range and 8 bits."""
    h, W, _, k = _inputs(7)
    case = Case.build(LINEAR, h, k, format="float32", linear_weight=W * 2.0**-26)
    result = evaluate(case, grad=True)
    assert (result.gradient != 0).all() and np.abs(result.gradient).max() < 2.0**-24
    half = _measured("chunked(acc=float16)", case, result)["predictions"]
    brain = _measured("chunked(acc=bfloat16)", case, result)["predictions"]
    assert {abs(m.got) for m in half} <= {0.0, 2.0**-24}
    assert "underflow" in {m.status for m in half}
    assert all(m.got != 0 and m.relative_error < 1 for m in brain)
    assert _median_bits(brain) < _median_bits(half)


@pytest.mark.parametrize("name", ALL)
def test_padded_classes_get_no_probability_and_no_gradient(name):
    """-inf biases on classes 0 and 1 (the whole first chunk, and k = 8's first shard) and 5."""
    h, W, b, _ = _inputs(8)
    padded = [0, 1, 5]
    b[padded] = -np.inf
    case = Case.build(LINEAR, h, [2, 3, 6, 4, 2], format="float32", linear_weight=W,
                      linear_bias=b, reduction="mean")  # fmt: skip
    outcome = invoke(get_implementation(name, LINEAR), case, grad=True)
    assert np.isfinite(outcome.values) and np.isfinite(outcome.gradient).all()
    assert (outcome.operands["linear_weight"][padded] == 0).all()
    assert (outcome.operands["linear_bias"][padded] == 0).all()
    if name in EXACT:
        assert not _not_ok(name, _measured(name, case))


@pytest.mark.parametrize("reduction", ["none", "sum"])
@pytest.mark.parametrize("name", ALL)
def test_ignored_rows_holding_nan_give_nothing(name, reduction):
    """Rows 1 and 4 ignored, their h NaN: losses and dL/dh rows 0; dL/dW and dL/db those of
    the rows kept (measured against the oracle of the rows kept: NaN in h leaves the full
    case's operand condition numbers NaN, hence without their tolerance)."""
    h, W, b, k = _inputs(9)
    ignored = IGNORED == -100
    h[ignored] = np.nan
    kw = {"format": "float32", "linear_weight": W, "linear_bias": b, "reduction": reduction}
    case = Case.build(LINEAR, h, np.where(ignored, -100, k), ignore_index=-100, **kw)
    outcome = invoke(get_implementation(name, LINEAR), case, grad=True)
    if reduction == "none":
        assert (outcome.values[ignored] == 0).all()
    assert np.isfinite(outcome.values).all()
    assert (outcome.gradient[ignored] == 0).all()
    assert all(np.isfinite(g).all() for g in outcome.operands.values())
    if name in EXACT:
        result = evaluate(case, grad=True)
        kept = evaluate(Case.build(LINEAR, h[~ignored], k[~ignored], **kw), grad=True)
        measured = {"value": measure(result, outcome.values),
                    "predictions": measure(result, outcome.gradient, gradient=True),
                    **{operand: measure(kept, gradient, gradient=operand)
                       for operand, gradient in outcome.operands.items()}}  # fmt: skip
        assert not _not_ok(name, measured)


def test_float32_accumulators_keep_float32_bits_of_float64_inputs():
    """float64 inputs compute in float64, but chunked(acc=float32) stores m and s in
    float32: the loss keeps about 24 of its 53 bits; vocab_parallel stays in float64."""
    h, W, b, k = _inputs(10)
    case = Case.build(LINEAR, h, k, format="float64", linear_weight=W, linear_bias=b)
    result = evaluate(case, grad=True)
    assert _median_bits(_measured("chunked(acc=float32)", case, result)["value"]) > 53 - 24 - 8
    for name in PARALLEL:
        assert not _not_ok(name, _measured(name, case, result))


@pytest.mark.parametrize("fmt", ["float64", "float32", "float16", "bfloat16"])
def test_every_output_has_the_input_dtype(fmt):
    h, W, b, k = _inputs(11)
    case = Case.build(LINEAR, h, k, format=fmt, linear_weight=W, linear_bias=b,
                      reduction="mean")  # fmt: skip
    for name in ALL:
        outcome = invoke(get_implementation(name, LINEAR), case, grad=True)
        assert outcome.note == "", (name, outcome.note)
        assert math.isfinite(float(outcome.values))
