"""measure: statuses, ULPs, bits and relative error against hand-derived expectations."""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest

from stabcheck.errors import InvalidArgument
from stabcheck.formats import get_format
from stabcheck.measure import (
    ACCURACY_LOSSES,
    HARD_FAILURES,
    bits_of_error,
    classify,
    measure,
    worst,
)
from stabcheck.oracle import exact

F64, F16 = get_format("float64"), get_format("float16")
ONE_ULP = 2.0**-52  # gap above 1.0 in float64


@pytest.mark.parametrize(
    ("exact_value", "expected", "got", "condition", "status"),
    [
        (mpmath.mpf(1), 1.0, 1.0, 1.0, "ok"),
        (mpmath.mpf(1), 1.0, 1.0 + 4 * ONE_ULP, 1.0, "ok"),
        (mpmath.mpf(1), 1.0, 1.0 + 5 * ONE_ULP, 1.0, "inaccurate"),
        (mpmath.mpf(1), 1.0, 1.0 + 5 * ONE_ULP, 2.0, "ok"),  # 4 * 2 = 8 ULPs allowed
        (mpmath.mpf(1), 1.0, 1.0 + 9 * ONE_ULP, 2.0, "inaccurate"),
        (mpmath.mpf(1), 1.0, 1.0 + 5 * ONE_ULP, math.nan, "inaccurate"),  # nan -> 1
        (mpmath.mpf("1e-300"), 1e-300, 0.0, 1.0, "underflow"),
        (mpmath.mpf("1e-400"), 0.0, 0.0, 1.0, "ok"),  # rounds to 0: 0 is right
        (mpmath.mpf(2.0**-1073), 2.0**-1073, 0.0, 1.0, "ok"),  # 2 ULPs from 0: tolerated
        (mpmath.mpf(2.0**-1070), 2.0**-1070, 0.0, 1.0, "underflow"),  # 16 ULPs from 0
        (mpmath.mpf(2.0**-1070), 2.0**-1070, 0.0, 2.0**50, "ok"),  # relative 1 <= 4 k eps
        (mpmath.mpf(1e-17), 1e-17, 0.0, 2.0**52, "ok"),  # 4e18 ULPs, but kappa u covers it
        (mpmath.mpf(800), 800.0, math.inf, 1.0, "overflow"),
        (mpmath.inf, math.inf, 1e300, 1.0, "clipped"),
        (mpmath.inf, math.inf, math.inf, 1.0, "ok"),
        (mpmath.inf, math.inf, -math.inf, 1.0, "inaccurate"),
        (mpmath.mpf(1), 1.0, math.nan, 1.0, "nan"),
        (mpmath.nan, math.nan, math.nan, 1.0, "ok"),
        (mpmath.nan, math.nan, 0.5, 1.0, "inaccurate"),
        (mpmath.mpf("1e400"), math.inf, math.inf, 1.0, "ok"),  # beyond float64's range
    ],
)
def test_classify(exact_value, expected, got, condition, status):
    assert classify(exact_value, expected, got, F64, condition)[0] == status


def test_a_scale_gives_an_exact_zero_a_tolerance():
    """An exact 0 with an infinite relative condition: the scale (first-order change per
    unit relative change of the inputs) bounds the error, max_ulps eps x scale."""
    zero, tiny = mpmath.mpf(0), 1e-17
    assert classify(zero, 0.0, tiny, F64, math.inf)[0] == "inaccurate"  # inf -> 1: strict
    assert classify(zero, 0.0, tiny, F64, math.inf, scale=1.0)[0] == "ok"  # 1e-17 <= 4 eps
    assert classify(zero, 0.0, tiny, F64, math.inf, scale=1e-3)[0] == "inaccurate"
    # away from zero it is the relative tolerance again: max(|exact|, scale)
    one = mpmath.mpf(1)
    assert classify(one, 1.0, 1.0 + 5 * ONE_ULP, F64, 1.0, scale=1.0)[0] == "inaccurate"
    assert classify(one, 1.0, 1.0 + 7 * ONE_ULP, F64, 2.0, scale=2.0)[0] == "ok"


def test_classify_counts_ulps_across_zero_and_in_the_format():
    # -smallest subnormal vs +smallest subnormal: two steps through the two zeros (0 apart)
    tiny = 2.0**-1074
    assert classify(mpmath.mpf(tiny), tiny, -tiny, F64, 1.0)[1] == 2
    # float16: 1.0 and 1.0 + 2**-10 are one ULP apart; float64 inputs are rounded first
    assert classify(mpmath.mpf(1), 1.0, 1.0 + 2.0**-10, F16, 1.0)[1] == 1
    assert classify(mpmath.mpf(1), 1.0, 1.0 + 2.0**-12, F16, 1.0)[1] == 0


def test_relative_error_uses_the_exact_value_not_its_rounding():
    third = mpmath.mpf(1) / 3
    status, _, relative = classify(third, float(third), 0.3, F64, 1.0)
    assert relative == pytest.approx(0.1, rel=1e-12)  # |0.3 - 1/3| / (1/3) = 0.1
    assert status == "inaccurate"


def test_bits_of_error():
    assert bits_of_error(0) == 0
    assert bits_of_error(1) == 1
    assert bits_of_error(3) == 2
    assert bits_of_error(math.inf) == math.inf


def test_status_groups_and_worst():
    assert HARD_FAILURES == {"nan", "overflow", "clipped", "error", "timeout"}
    assert ACCURACY_LOSSES == {"inaccurate", "underflow"}
    assert worst(["ok", "inaccurate", "nan"]) == "nan"
    assert worst(["ok", "underflow", "inaccurate"]) == "underflow"
    assert worst([]) == "ok"


def test_measure_flags_the_naive_sigmoid_defects():
    x = np.array([40.0, -800.0, 0.5])
    z = np.array([1.0, 1.0, 0.25])
    result = exact("sigmoid_cross_entropy_with_logits", x, z)
    with np.errstate(all="ignore"):
        sig = 1 / (1 + np.exp(-x))
        naive = -(z * np.log(sig) + (1 - z) * np.log(1 - sig))
    statuses = [m.status for m in measure(result, naive)]
    # x=40, z=1: 0 * log(0) = nan; x=-800: exp(800) overflows; 0.5 is ordinary
    assert statuses == ["nan", "overflow", "ok"]


def test_measure_gradient_and_errors():
    result = exact("sparse_softmax_cross_entropy_with_logits", [[0.0, 0.0]], [0], grad=True)
    rows = measure(result, [[-0.5, 0.5]], gradient=True)
    assert [m.status for m in rows] == ["ok", "ok"]
    assert [m.index for m in rows] == [(0, 0), (0, 1)]
    with pytest.raises(InvalidArgument, match="shape"):
        measure(result, [1.0, 2.0])
    with pytest.raises(InvalidArgument, match="grad=True"):
        measure(exact("binary_crossentropy", [0.5], [1]), [0.5], gradient=True)
    with pytest.raises(InvalidArgument, match="max_ulps"):
        classify(mpmath.mpf(1), 1.0, 1.0, F64, 1.0, max_ulps=-1)
