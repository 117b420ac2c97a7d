"""Tests of ``stabcheck.case``: validation, casting, JSON replay, ids and command lines.

Expected values are bit patterns written by hand (decoded with ``struct``), hex strings
from ``float.hex`` and numpy casts.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
import subprocess
import sys
import warnings

import ml_dtypes
import numpy as np
import pytest

from stabcheck.case import Case
from stabcheck.errors import InvalidArgument
from stabcheck.formats import get_format
from stabcheck.losses import get_loss

SIGMOID = "sigmoid_cross_entropy_with_logits"
WEIGHTED = "weighted_cross_entropy_with_logits"
SOFTMAX = "softmax_cross_entropy_with_logits"
SPARSE_SOFTMAX = "sparse_softmax_cross_entropy_with_logits"
BCE = "binary_crossentropy"
CCE = "categorical_crossentropy"
SPARSE_CCE = "sparse_categorical_crossentropy"

UINT = {"float64": np.uint64, "float32": np.uint32, "float16": np.uint16, "bfloat16": np.uint16}
DTYPE = {
    "float64": np.dtype(np.float64),
    "float32": np.dtype(np.float32),
    "float16": np.dtype(np.float16),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
}

# Hand bit patterns: (+0, -0, smallest subnormal, largest subnormal, smallest normal,
# 1.0, next after 1.0, 1.5, max, +inf, canonical quiet NaN); sign bit.
BITS = {
    "float64": ((0, 1, 0x000FFFFFFFFFFFFF, 0x0010000000000000, 0x3FF0000000000000,
                 0x3FF0000000000001, 0x3FF8000000000000, 0x7FEFFFFFFFFFFFFF,
                 0x7FF0000000000000, 0x7FF8000000000000), 1 << 63),
    "float32": ((0, 1, 0x007FFFFF, 0x00800000, 0x3F800000, 0x3F800001, 0x3FC00000,
                 0x7F7FFFFF, 0x7F800000, 0x7FC00000), 1 << 31),
    "float16": ((0, 1, 0x03FF, 0x0400, 0x3C00, 0x3C01, 0x3E00, 0x7BFF, 0x7C00, 0x7E00),
                1 << 15),
    "bfloat16": ((0, 1, 0x007F, 0x0080, 0x3F80, 0x3F81, 0x3FC0, 0x7F7F, 0x7F80, 0x7FC0),
                 1 << 15),
}  # fmt: skip


def from_bits(name: str, bits: int) -> float:
    if name == "float64":
        return struct.unpack("<d", struct.pack("<Q", bits))[0]
    if name == "float32":
        return struct.unpack("<f", struct.pack("<I", bits))[0]
    if name == "float16":
        return struct.unpack("<e", struct.pack("<H", bits))[0]
    return struct.unpack("<f", struct.pack("<I", bits << 16))[0]


def bits_of(array: np.ndarray, name: str) -> list[int]:
    assert array.dtype == DTYPE[name]
    return array.view(UINT[name]).ravel().tolist()


def all_bits(name: str) -> list[int]:
    """Every hand pattern with both signs (the NaN only positive)."""
    patterns, sign = BITS[name]
    return [b | s for b in patterns for s in (0, sign) if not (b == patterns[-1] and s)]


def unit_bits(name: str) -> list[int]:
    """Hand patterns of values in [0, 1], usable as labels: -0 and +0 included."""
    patterns, sign = BITS[name]
    return [0, sign, *patterns[1:5]]  # +0, -0, subnormals, smallest normal, 1.0


def test_hand_bit_patterns_decode_to_the_known_values():
    assert from_bits("float16", 0x3C00) == 1.0
    assert from_bits("float16", 0x7BFF) == 65504.0
    assert from_bits("float16", 0x0001) == 2.0**-24
    assert from_bits("bfloat16", 0x3F80) == 1.0
    assert from_bits("bfloat16", 0x3FC0) == 1.5
    assert from_bits("float32", 0x00000001) == 2.0**-149
    assert from_bits("float64", 0x7FEFFFFFFFFFFFFF) == sys.float_info.max
    for name in BITS:
        assert from_bits(name, BITS[name][0][-2]) == math.inf
        assert math.isnan(from_bits(name, BITS[name][0][-1]))


# -- invalid arguments -------------------------------------------------------------------

ROW = [[0.25, 0.75], [0.5, 0.5]]  # two rows of probabilities
LOGITS = [[1.0, 2.0, 3.0], [0.0, -1.0, 4.0]]  # two rows of three logits

INVALID = [
    # (id, loss, predictions, labels, extra keyword arguments, words in the message)
    ("unknown-loss", "sigmoid_cross_entropy_with_logit", [1.0], [1.0], {},
     ["loss='sigmoid_cross_entropy_with_logit'", "not a known loss",
      "Did you mean 'sigmoid_cross_entropy_with_logits'", "Valid losses:", BCE]),
    ("unknown-loss-no-hint", "hinge", [1.0], [1.0], {},
     ["loss='hinge'", "not a known loss", "Valid losses:"]),
    ("unknown-format", SIGMOID, [1.0], [1.0], {"format": "float8_e4m3"},
     ["format='float8_e4m3'", "not a known format", "Valid formats: float64, float32"]),
    ("format-typo", SIGMOID, [1.0], [1.0], {"format": "flaot16"},
     ["format='flaot16'", "Did you mean 'float16'"]),
    ("binary-shape-mismatch", SIGMOID, [1.0, 2.0], [1.0], {},
     ["labels has shape (1,)", "predictions has shape (2,)", "binary labels"]),
    ("binary-shape-mismatch-2d", BCE, ROW, [[1.0, 0.0]], {},
     ["labels has shape (1, 2)", "predictions has shape (2, 2)"]),
    ("soft-shape-mismatch", SOFTMAX, LOGITS, [[1.0, 0.0], [0.0, 1.0]], {},
     ["labels has shape (2, 2)", "predictions has shape (2, 3)", "soft labels"]),
    ("soft-one-row-for-two", CCE, ROW, [1.0, 0.0], {},
     ["labels has shape (1, 2)", "predictions has shape (2, 2)"]),
    ("sparse-2d-labels", SPARSE_SOFTMAX, LOGITS, [[0], [1]], {},
     ["labels has shape (2, 1)", "2 rows", "shape (2,)"]),
    ("sparse-too-many-labels", SPARSE_CCE, ROW, [0, 1, 1], {},
     ["labels has shape (3,)", "2 rows", "one integer class index per row"]),
    ("sparse-out-of-range", SPARSE_SOFTMAX, LOGITS, [0, 3], {},
     ["labels[1]=3", "out of range for 3 classes", "integers in [0, 3)"]),
    ("sparse-negative", SPARSE_SOFTMAX, LOGITS, [-1, 0], {},
     ["labels[0]=-1", "out of range", "integers in [0, 3)"]),
    ("sparse-non-integer-float", SPARSE_SOFTMAX, LOGITS, [0.0, 1.5], {},
     ["labels[1]=1.5", "not an integer class index", "integers in [0, 3)"]),
    ("sparse-nan", SPARSE_CCE, ROW, [math.nan, 0], {},
     ["labels[0]=nan", "not an integer class index"]),
    ("sparse-inf", SPARSE_CCE, ROW, [0, math.inf], {},
     ["labels[1]=inf", "not an integer class index"]),
    ("sparse-strings", SPARSE_CCE, ROW, ["a", "b"], {}, ["'a' is not a number"]),
    ("sparse-complex", SPARSE_CCE, ROW, np.array([0j, 1j]), {},
     ["labels has dtype complex128", "sparse labels are integers"]),
    ("binary-label-above-one", SIGMOID, [1.0, 2.0], [0.0, 1.5], {},
     ["labels[1]=1.5", "outside [0, 1]", "labels must lie in [0, 1]"]),
    ("binary-label-negative", BCE, [0.5], [-0.25], {}, ["labels[0]=-0.25", "outside [0, 1]"]),
    ("binary-label-nan", SIGMOID, [1.0], [math.nan], {},
     ["labels[0]=nan", "must not be NaN"]),
    ("binary-label-inf", SIGMOID, [1.0], [math.inf], {}, ["labels[0]=inf", "outside [0, 1]"]),
    ("soft-label-above-one-2d", SOFTMAX, LOGITS, [[0.0, 1.0, 0.0], [0.0, 0.0, 2.0]], {},
     ["labels[1, 2]=2.0", "outside [0, 1]"]),
    ("soft-label-negative", CCE, ROW, [[1.0, 0.0], [-0.5, 1.5]], {},
     ["labels[1, 0]=-0.5", "outside [0, 1]"]),
    ("soft-label-nan", CCE, ROW, [[1.0, 0.0], [0.0, math.nan]], {},
     ["labels[1, 1]=nan", "must not be NaN"]),
    ("probability-negative", BCE, [0.5, -0.125], [1.0, 0.0], {},
     ["predictions[1]=-0.125", "outside [0, 1]", "probabilities must lie in [0, 1]"]),
    ("probability-above-one", BCE, [1.5], [1.0], {},
     ["predictions[0]=1.5", "probabilities must lie in [0, 1]"]),
    ("probability-inf", BCE, [math.inf], [1.0], {}, ["predictions[0]=inf", "outside [0, 1]"]),
    ("probability-above-one-rowwise", CCE, [[0.5, 2.0]], [[0.0, 1.0]], {},
     ["predictions[0, 1]=2.0", "outside [0, 1]"]),
    ("probability-negative-sparse", SPARSE_CCE, [[0.5, -1.0]], [0], {},
     ["predictions[0, 1]=-1.0", "outside [0, 1]"]),
    ("pos-weight-missing", WEIGHTED, [1.0], [1.0], {},
     [f"{WEIGHTED} needs pos_weight=...", "a finite positive number"]),
    ("pos-weight-none", WEIGHTED, [1.0], [1.0], {"pos_weight": None},
     ["needs pos_weight=..."]),
    ("pos-weight-zero", WEIGHTED, [1.0], [1.0], {"pos_weight": 0.0},
     ["pos_weight=0.0 is not valid", "finite positive number"]),
    ("pos-weight-negative", WEIGHTED, [1.0], [1.0], {"pos_weight": -2.0},
     ["pos_weight=-2.0 is not valid", "finite positive number"]),
    ("pos-weight-inf", WEIGHTED, [1.0], [1.0], {"pos_weight": math.inf},
     ["pos_weight=inf is not valid"]),
    ("pos-weight-nan", WEIGHTED, [1.0], [1.0], {"pos_weight": math.nan},
     ["pos_weight=nan is not valid"]),
    ("pos-weight-string", WEIGHTED, [1.0], [1.0], {"pos_weight": "heavy"},
     ["pos_weight='heavy' is not valid", "finite positive number"]),
    ("pos-weight-list", WEIGHTED, [1.0], [1.0], {"pos_weight": [1.0, 2.0]},
     ["pos_weight=[1.0, 2.0] is not valid"]),
    ("pos-weight-underflows-in-float16", WEIGHTED, [1.0], [1.0],
     {"pos_weight": 2.0**-26, "format": "float16"},
     ["is not valid", "(in float16, where it is 0.0)"]),
    ("unknown-param", SIGMOID, [1.0], [1.0], {"pos_weight": 2.0},
     [f"{SIGMOID} got unknown parameter pos_weight=...", "it takes label_smoothing, reduction"]),
    ("unknown-param-weighted", WEIGHTED, [1.0], [1.0], {"pos_weight": 2.0, "gamma": 1.0},
     ["unknown parameter gamma=...", "it takes pos_weight"]),
    ("empty-predictions", SIGMOID, [], [], {}, ["predictions is empty", "at least one value"]),
    ("empty-rows", SOFTMAX, np.zeros((0, 3)), np.zeros((0, 3)), {}, ["predictions is empty"]),
    ("empty-labels", SIGMOID, [1.0], [], {}, ["labels is empty"]),
    ("3d-predictions-rowwise", SOFTMAX, np.zeros((2, 2, 2)), np.zeros((2, 2, 2)), {},
     ["predictions has shape (2, 2, 2)", "rowwise losses take N x C predictions"]),
    ("3d-predictions-sparse", SPARSE_SOFTMAX, np.zeros((2, 2, 2)), [0, 1], {},
     ["predictions has shape (2, 2, 2)", "N x C"]),
    ("string-predictions", SIGMOID, ["a", "b"], [1.0, 0.0], {},
     ["'a' is not a number", "hex floats such as '0x1.8p+1'"]),
    ("string-array-predictions", SIGMOID, np.array(["a"]), [1.0], {},
     ["predictions has dtype <U1", "real numbers"]),
    ("none-predictions", SIGMOID, [None], [1.0], {},
     ["predictions has dtype object", "real numbers"]),
    ("complex-predictions", SIGMOID, [1j], [1.0], {},
     ["predictions has dtype complex128", "real numbers"]),
    ("ragged-predictions", SIGMOID, [[1.0, 2.0], [3.0]], [1.0], {},
     ["predictions is not a rectangular array of numbers"]),
    ("string-labels", SIGMOID, [1.0], ["yes"], {}, ["'yes' is not a number"]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("loss", "predictions", "labels", "kwargs", "words"),
    [pytest.param(*row[1:], id=row[0]) for row in INVALID],
)
def test_build_rejects_invalid_arguments(loss, predictions, labels, kwargs, words):
    with pytest.raises(InvalidArgument) as info:
        Case.build(loss, predictions, labels, **kwargs)
    message = str(info.value)
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"
    assert isinstance(info.value, ValueError)


def test_pos_weight_overflowing_the_format_is_rejected_without_a_warning():
    # 1e10 is inf in float16: an error, but no stray "overflow encountered in cast".
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(InvalidArgument, match=r"where it is inf"):
            Case.build(WEIGHTED, [1.0], [1.0], format="float16", pos_weight=1e10)


def test_sparse_label_beyond_int64_is_reported_as_given():
    # 1e30 is an integer-valued float far out of range: the message must name 1e+30,
    # not the value that a wrapping int64 cast makes of it.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(InvalidArgument) as info:
            Case.build(SPARSE_SOFTMAX, LOGITS[:1], [1e30])
    message = str(info.value)
    assert "labels[0]=1e+30" in message, message
    assert "-9223372036854775808" not in message


# -- valid inputs ------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(BITS))
def test_build_keeps_every_bit_and_json_round_trip(name):
    preds_bits = all_bits(name)
    labs_bits = (unit_bits(name) * 4)[: len(preds_bits)]
    preds = [from_bits(name, b) for b in preds_bits]
    labs = [from_bits(name, b) for b in labs_bits]
    case = Case.build(SIGMOID, preds, labs, format=name, regime="edge")
    assert bits_of(case.predictions, name) == preds_bits
    assert bits_of(case.labels, name) == labs_bits
    again = Case.from_json(case.to_json())
    assert bits_of(again.predictions, name) == preds_bits
    assert bits_of(again.labels, name) == labs_bits
    assert (again.loss, again.format, again.regime) == (case.loss, case.format, "edge")
    assert again.id == case.id
    assert again.to_json() == case.to_json()
    # from a mapping, and from the repr pasted back in
    assert bits_of(Case.from_json(json.loads(case.to_json())).predictions, name) == preds_bits
    replayed = eval(repr(case), {"Case": Case})
    assert bits_of(replayed.predictions, name) == preds_bits


@pytest.mark.parametrize("name", list(BITS))
def test_build_from_arrays_of_the_format(name):
    preds_bits = all_bits(name)
    array = np.array(preds_bits, dtype=UINT[name]).view(DTYPE[name])
    case = Case.build(SIGMOID, array, np.zeros(len(preds_bits)), format=name)
    assert bits_of(case.predictions, name) == preds_bits
    assert bits_of(Case.from_json(case.to_json()).predictions, name) == preds_bits


def test_round_trip_rowwise_sparse_and_params():
    name = "float16"
    rows = [[from_bits(name, b) for b in (0x0001, 0x8000, 0x7C00)], [-65504.0, 1.5, 0.0]]
    case = Case.build(SPARSE_SOFTMAX, rows, [2, 0], format=name)
    again = Case.from_json(case.to_json())
    assert again.labels.dtype == np.int64
    assert again.labels.tolist() == [2, 0]
    assert bits_of(again.predictions, name) == [0x0001, 0x8000, 0x7C00, 0xFBFF, 0x3E00, 0x0000]
    # A subnormal pos_weight survives exactly.
    weighted = Case.build(WEIGHTED, [1.0], [1.0], format=name, pos_weight=2.0**-24)
    assert Case.from_json(weighted.to_json()).params == {"pos_weight": 2.0**-24}
    soft = Case.build(CCE, [[0.25, 0.75]], [[0.0, 1.0]], format="bfloat16")
    assert Case.from_json(soft.to_json()).labels.tolist() == [[0.0, 1.0]]


def test_json_holds_floats_as_hex_strings():
    case = Case.build(SIGMOID, [1.0, -0.0, math.inf, -math.inf, math.nan], [1.0] * 5)
    data = json.loads(case.to_json())
    assert data["predictions"] == ["0x1.0000000000000p+0", "-0x0.0p+0", "inf", "-inf", "nan"]
    assert data["labels"] == ["0x1.0000000000000p+0"] * 5
    assert data["loss"] == SIGMOID and data["format"] == "float64"
    assert "\n" not in case.to_json()
    sparse = json.loads(Case.build(SPARSE_SOFTMAX, LOGITS, [2, 0]).to_json())
    assert sparse["labels"] == [2, 0]


def test_build_accepts_hex_and_decimal_strings():
    case = Case.build(SIGMOID, ["0x1.8p+1", "-inf", "0.5"], ["0x0p+0", "1", "0x1p-1"])
    assert case.predictions.tolist() == [3.0, -math.inf, 0.5]
    assert case.labels.tolist() == [0.0, 1.0, 0.5]


# -- ids and command lines ---------------------------------------------------------------


def test_id_is_stable_and_changes_with_any_bit():
    base = Case.build(SIGMOID, [1.0, 2.0], [1.0, 0.0], format="float16")
    assert re.fullmatch(r"[0-9a-f]{12}", base.id)
    assert Case.build(SIGMOID, [1.0, 2.0], [1.0, 0.0], format="float16").id == base.id
    assert Case.build(SIGMOID, [1.0, 2.0], [1.0, 0.0], "f16", regime="other").id == base.id
    ids = {base.id}
    for bit in range(16):  # every one-bit change of the first prediction (0x3C00)
        x = from_bits("float16", 0x3C00 ^ (1 << bit))
        ids.add(Case.build(SIGMOID, [x, 2.0], [1.0, 0.0], format="float16").id)
    for bit in range(16):  # and of the first label (1.0), where it stays in [0, 1]
        z = from_bits("float16", 0x3C00 ^ (1 << bit))
        if 0 <= z <= 1:
            ids.add(Case.build(SIGMOID, [1.0, 2.0], [z, 0.0], format="float16").id)
    others = [
        Case.build(SIGMOID, [1.0, 2.0], [1.0, 0.0], format="float32"),
        Case.build(SIGMOID, [1.0, 2.0], [1.0, -0.0], format="float16"),
        Case.build(WEIGHTED, [1.0, 2.0], [1.0, 0.0], format="float16", pos_weight=2.0),
        Case.build(WEIGHTED, [1.0, 2.0], [1.0, 0.0], format="float16", pos_weight=2.001953125),
        Case.build(SIGMOID, [[1.0, 2.0]], [[1.0, 0.0]], format="float16"),
    ]
    ids.update(c.id for c in others)
    flips_kept = 16 + sum(0 <= from_bits("float16", 0x3C00 ^ (1 << b)) <= 1 for b in range(16))
    assert len(ids) == 1 + flips_kept + len(others)


def test_id_is_the_same_in_another_process():
    code = (
        "from stabcheck.case import Case;"
        "print(Case.build('sparse_softmax_cross_entropy_with_logits',"
        " [[1.0, 2.0, 3.0]], [2], format='bfloat16').id)"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    here = Case.build(SPARSE_SOFTMAX, [[1.0, 2.0, 3.0]], [2], format="bfloat16").id
    assert out.stdout.strip() == here


def test_cli_names_the_case_in_hex():
    case = Case.build(WEIGHTED, [1.5, -0.0], [1.0, 0.0], format="float16", pos_weight=2.0)
    line = case.cli()
    assert line.startswith(f"stabcheck oracle {WEIGHTED} ")
    assert "--format float16" in line
    assert "--pos-weight 0x1.0000000000000p+1" in line
    preds = re.search(r"--predictions '([^']*)'", line).group(1)
    labels = re.search(r"--labels '([^']*)'", line).group(1)
    assert json.loads(preds) == ["0x1.8000000000000p+0", "-0x0.0p+0"]
    assert json.loads(labels) == ["0x1.0000000000000p+0", "0x0.0p+0"]
    sparse = Case.build(SPARSE_CCE, [[0.5, 0.5]], [1]).cli()
    assert "--labels '[1]'" in sparse


# -- shapes and casts --------------------------------------------------------------------


def test_one_row_for_a_rowwise_loss_becomes_one_by_c():
    case = Case.build(SOFTMAX, [1.0, 2.0, 3.0], [0.0, 0.0, 1.0])
    assert case.predictions.shape == (1, 3) and case.labels.shape == (1, 3)
    assert case.output_shape == (1,)
    sparse = Case.build(SPARSE_SOFTMAX, [1.0, 2.0, 3.0], 2)
    assert sparse.predictions.shape == (1, 3)
    assert sparse.labels.tolist() == [2] and sparse.labels.dtype == np.int64
    sparse_list = Case.build(SPARSE_CCE, [0.5, 0.5], [1])
    assert sparse_list.predictions.shape == (1, 2) and sparse_list.output_shape == (1,)


def test_elementwise_shapes_are_kept():
    case = Case.build(SIGMOID, np.zeros((2, 3, 4)), np.ones((2, 3, 4)))
    assert case.predictions.shape == case.labels.shape == case.output_shape == (2, 3, 4)
    scalar = Case.build(BCE, 0.5, 1.0)
    assert scalar.predictions.shape == scalar.output_shape == (1,)
    rows = Case.build(SOFTMAX, LOGITS, [[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    assert rows.output_shape == (2,)


def test_aliases_and_dtypes():
    case = Case.build("log_loss", [0.5], [1.0], format="bf16")
    assert case.loss is get_loss(BCE)
    assert case.format is get_format("bfloat16")
    assert case.predictions.dtype == case.labels.dtype == np.dtype(ml_dtypes.bfloat16)
    ints = Case.build(SPARSE_SOFTMAX, LOGITS, np.array([2.0, 0.0]))
    assert ints.labels.dtype == np.int64 and ints.labels.tolist() == [2, 0]
    from_ints = Case.build(SIGMOID, np.array([1, -3], dtype=np.int32), [True, False])
    assert from_ints.predictions.tolist() == [1.0, -3.0]
    assert from_ints.labels.tolist() == [1.0, 0.0]


def test_cast_to_float16_rounds_like_numpy():
    # Hand points: ties to even, just above a tie, overflow, underflow at the tie.
    hand = [
        (1 + 2.0**-11, 0x3C00),  # tie between 0x3C00 (even) and 0x3C01: down
        (1 + 3 * 2.0**-11, 0x3C02),  # tie between 0x3C01 and 0x3C02 (even): up
        (1 + 2.0**-11 + 2.0**-40, 0x3C01),  # just above the tie
        (65519.99, 0x7BFF),  # just below the overflow threshold 65520
        (65520.0, 0x7C00),  # the threshold itself: ties to even, to inf
        (1e300, 0x7C00),
        (-1e300, 0xFC00),
        (2.0**-25, 0x0000),  # half the smallest subnormal: tie to 0
        (2.0**-25 + 2.0**-40, 0x0001),
        (-(2.0**-25), 0x8000),
        (2.0**-14 - 2.0**-25, 0x0400),  # tie below the smallest normal: up to it
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # casting overflow is expected and silenced
        case = Case.build(SIGMOID, [x for x, _ in hand], [0.0] * len(hand), format="float16")
    assert bits_of(case.predictions, "float16") == [b for _, b in hand]
    rng = np.random.default_rng(1234)
    values = rng.standard_normal(3000) * np.exp2(rng.integers(-30, 20, size=3000))
    case = Case.build(SIGMOID, values, np.zeros(3000), format="float16")
    with np.errstate(over="ignore"):
        expected = values.astype(np.float16)
    assert case.predictions.view(np.uint16).tolist() == expected.view(np.uint16).tolist()


def test_pos_weight_is_rounded_to_the_format():
    case = Case.build(WEIGHTED, [1.0], [1.0], format="float16", pos_weight=0.1)
    # 0.1 = 1.6 * 2**-4; 1.6 * 1024 = 1638.4 -> 1638: float16 0x2E66 = 1638 / 2**14.
    assert case.params == {"pos_weight": 1638 / 2**14}
    assert case.params["pos_weight"] == from_bits("float16", 0x2E66)


def test_nan_predictions_are_accepted():
    # NaN in -> NaN out is the oracle's convention, so NaN inputs are valid cases.
    for loss, preds, labels in [
        (SIGMOID, [math.nan, 1.0], [1.0, 0.0]),
        (BCE, [math.nan, 0.5], [1.0, 0.0]),
        (CCE, [[math.nan, 0.5]], [[1.0, 0.0]]),
        (SOFTMAX, [[math.nan, 1.0]], [[1.0, 0.0]]),
        (SPARSE_CCE, [[0.5, math.nan]], [0]),
        (SPARSE_SOFTMAX, [[math.nan, math.inf]], [1]),
    ]:
        for name in BITS:
            case = Case.build(loss, preds, labels, format=name)
            assert np.isnan(case.predictions.astype(np.float64)).sum() == 1, (loss, name)


def test_infinite_logits_are_accepted():
    case = Case.build(SIGMOID, [math.inf, -math.inf], [1.0, 0.0], format="bfloat16")
    assert case.predictions.astype(np.float64).tolist() == [math.inf, -math.inf]


def test_bfloat16_array_is_cast_to_another_format():
    # bfloat16 arrays hold real numbers; numpy casts them to float32 exactly.
    preds = np.array([1.5, -2.0], dtype=ml_dtypes.bfloat16)
    case = Case.build(SIGMOID, preds, [1.0, 0.0], format="float32")
    assert bits_of(case.predictions, "float32") == [0x3FC00000, 0xC0000000]
