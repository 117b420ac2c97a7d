"""Hypothesis strategies: named input regimes, format-aware, producing ``Case`` objects.

A *regime* is a kind of input where cross-entropy implementations tend to lose accuracy:
saturating logits, subnormal probabilities, infinities, a dominant class, a large common
offset, soft labels, very wide rows, extreme ``pos_weight``. ``cases(loss, format, regime)``
draws ``Case`` objects of that regime; every value is exactly a value of the format, drawn
from bit patterns (ordinals) and special values as well as from uniform reals, and the
simplest choices come first so that shrinking ends on small, readable cases.

Probability rows are made to sum to one as nearly as the format allows (the largest free
entry takes what the others leave) unless a regime says otherwise; labels are sparse
integers in range, soft rows in [0, 1] or binary targets in [0, 1], all validated by
``Case.build``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import numpy as np
from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy

from stabcheck._validation import integer
from stabcheck.case import Case
from stabcheck.errors import InvalidArgument, did_you_mean
from stabcheck.formats import Format, get_format
from stabcheck.losses import (
    PARAMS,
    InputKind,
    LabelKind,
    LossSpec,
    ParamKind,
    ParamSpec,
    get_loss,
    get_param,
)

__all__ = [
    "REGIMES",
    "Regime",
    "bit_patterns",
    "cases",
    "format_values",
    "get_regime",
    "regime_names",
    "regimes_for",
    "saturation_thresholds",
    "special_values",
]

INF = math.inf
Arrays = tuple[np.ndarray, np.ndarray, dict[str, Any]]  # predictions, labels, params

# -- exact values of a format --------------------------------------------------------------


def _from_ordinals(fmt: Format, ordinals: Any) -> np.ndarray:
    """The values at ``ordinals`` (see ``Format.ordinal``) as an array of the format."""
    ords = np.asarray(ordinals, dtype=np.int64)
    magnitude = np.abs(ords).astype(np.uint64)
    bits = np.where(ords < 0, magnitude | np.uint64(1 << (fmt.width - 1)), magnitude)
    return bits.astype(f"uint{fmt.width}").view(fmt.dtype)


def _from_ordinal(fmt: Format, ordinal: int) -> float:
    return float(_from_ordinals(fmt, [ordinal])[0])


def _exact(fmt: Format, x: float) -> float:
    """``x`` rounded to the format (as numpy casts)."""
    with np.errstate(over="ignore"):
        return float(np.asarray(x, dtype=np.float64).astype(fmt.dtype))


def _array(fmt: Format, values: Any) -> np.ndarray:
    with np.errstate(over="ignore"):
        return np.asarray(values, dtype=np.float64).astype(fmt.dtype)


def saturation_thresholds(format: str | Format) -> dict[str, float]:
    """Logit magnitudes (natural log) where exp, sigmoid and softplus saturate in ``format``.

    ``sigmoid``: p ln 2, beyond which 1 + exp(-|x|) rounds to 1; ``exp_subnormal``: -ln(tiny),
    beyond which exp(-|x|) is subnormal; ``exp_overflow``: ln(max), beyond which exp(x)
    overflows; ``exp_underflow``: -ln(smallest subnormal), beyond which exp(-|x|) is 0.
    """
    fmt = get_format(format)
    return {
        "sigmoid": fmt.precision * math.log(2.0),
        "exp_subnormal": -math.log(fmt.tiny),
        "exp_overflow": math.log(fmt.max),
        "exp_underflow": -math.log(fmt.smallest_subnormal),
    }


def special_values(format: str | Format, *, allow_infinity: bool = False) -> tuple[float, ...]:
    """Values of ``format`` that often break implementations, simplest first: zeros, one,
    halves, eps, 1 - eps/2, 1 + eps, the smallest subnormal, the largest subnormal, tiny,
    max, their negatives (and the infinities if ``allow_infinity``)."""
    fmt = get_format(format)
    ss, tiny, eps = fmt.smallest_subnormal, fmt.tiny, fmt.eps
    positive = (1.0, 0.5, 2.0, eps, 1.0 - eps / 2, 1.0 + eps, ss, tiny - ss, tiny, fmt.max)
    values = [0.0, -0.0]
    for v in positive:
        values += [v, -v]
    if allow_infinity:
        values += [INF, -INF]
    return tuple(values)


def bit_patterns(
    format: str | Format, *, allow_nan: bool = False, allow_infinity: bool = True
) -> SearchStrategy[float]:
    """Any value of ``format``: the special values (simplest first, so shrinking ends on
    +0), mixed with integer bit patterns of the format's width viewed as the format."""
    fmt = get_format(format)
    patterns = st.integers(0, 2**fmt.width - 1).map(
        lambda bits: float(np.asarray(bits, dtype=f"uint{fmt.width}").view(fmt.dtype))
    )
    if not allow_nan:
        patterns = patterns.filter(lambda v: not math.isnan(v))
    if not allow_infinity:
        patterns = patterns.filter(lambda v: not math.isinf(v))
    specials = special_values(fmt, allow_infinity=allow_infinity)
    if allow_nan:
        specials += (math.nan,)
    return st.one_of(st.sampled_from(specials), patterns)


def _check_exact(fmt: Format, name: str, value: float) -> float:
    value = float(value)
    if math.isnan(value) or not fmt.contains(value):
        raise InvalidArgument(
            f"{name}={value!r} is not a value of {fmt.name}; use "
            f"get_format({fmt.name!r}).round({value!r}) = {fmt.round(value)!r} instead"
        )
    return value


def format_values(
    format: str | Format, min_value: float, max_value: float
) -> SearchStrategy[float]:
    """Exact values of ``format`` in [min_value, max_value]: special values in range first,
    then bit patterns between the two ends (uniform over the values of the format, so every
    binade is as likely as any other) and uniform reals rounded to the format."""
    fmt = get_format(format)
    lo = _check_exact(fmt, "min_value", min_value)
    hi = _check_exact(fmt, "max_value", max_value)
    if not lo <= hi:
        raise InvalidArgument(f"min_value={lo!r} is above max_value={hi!r}; swap them")

    def key(v: float) -> tuple[float, float]:  # -0.0 sorts just below +0.0
        return (v, math.copysign(1.0, v))

    specials = [v for v in special_values(fmt, allow_infinity=True) if key(lo) <= key(v) <= key(hi)]
    parts: list[SearchStrategy[float]] = []
    if specials:
        parts.append(st.sampled_from(specials))
    parts.append(st.integers(fmt.ordinal(lo), fmt.ordinal(hi)).map(lambda n: _from_ordinal(fmt, n)))
    if math.isfinite(lo) and math.isfinite(hi) and lo < hi:
        parts.append(st.floats(lo, hi).map(lambda v: _exact(fmt, v)))
    return st.one_of(parts)


# -- elements, cached per format -------------------------------------------------------------


def _signed(magnitudes: SearchStrategy[float]) -> SearchStrategy[float]:
    return st.tuples(st.booleans(), magnitudes).map(lambda t: -t[1] if t[0] else t[1])


@cache
def _moderate_logit(fmt: Format) -> SearchStrategy[float]:
    return st.one_of(
        st.sampled_from((0.0, 1.0, -1.0, 0.5)),
        st.integers(-10, 10).map(float),
        format_values(fmt, -10.0, 10.0),
    )


@cache
def _moderate_prob(fmt: Format) -> SearchStrategy[float]:
    return st.one_of(st.just(0.5), format_values(fmt, 2.0**-5, 1.0 - 2.0**-5))


@cache
def _moderate_target(fmt: Format) -> SearchStrategy[float]:
    return st.one_of(st.sampled_from((0.0, 1.0, 0.5)), format_values(fmt, 0.0, 1.0))


@cache
def _weight(fmt: Format) -> SearchStrategy[float]:
    """Positive weights for normalised rows, within a factor 16 of each other."""
    return st.one_of(st.integers(1, 16).map(float), st.floats(1.0, 16.0))


@cache
def _moderate_pos_weight(fmt: Format) -> SearchStrategy[float]:
    return st.one_of(st.just(1.0), format_values(fmt, 2.0**-4, 2.0**4))


@cache
def _saturating_magnitude(fmt: Format) -> SearchStrategy[float]:
    """|x| a few ulps or up to 2 around a saturation threshold, or anywhere up to max."""
    centres = tuple(_exact(fmt, v) for v in saturation_thresholds(fmt).values())
    near = st.tuples(st.sampled_from(centres), st.integers(-16, 16)).map(
        lambda t: _from_ordinal(fmt, fmt.ordinal(t[0]) + t[1])
    )
    band = st.tuples(st.sampled_from(centres), st.floats(-2.0, 2.0)).map(
        lambda t: _exact(fmt, t[0] + t[1])
    )
    return st.one_of(near, band, format_values(fmt, min(centres), fmt.max))


@cache
def _dominant_margin(fmt: Format) -> SearchStrategy[float]:
    """A margin from p ln 2 (the loss is below eps) to past exp underflow (the loss is 0)."""
    th = saturation_thresholds(fmt)
    lo, hi = _exact(fmt, th["sigmoid"]), _exact(fmt, th["exp_underflow"] + 4.0)
    centres = (lo, _exact(fmt, th["exp_subnormal"]), _exact(fmt, th["exp_underflow"]))
    near = st.tuples(st.sampled_from(centres), st.integers(0, 16)).map(
        lambda t: _from_ordinal(fmt, fmt.ordinal(t[0]) + t[1])
    )
    return st.one_of(near, format_values(fmt, lo, hi))


@cache
def _near_zero_prob(fmt: Format) -> SearchStrategy[float]:
    return st.integers(1, 16).map(lambda k: _from_ordinal(fmt, k))


@cache
def _near_one_prob(fmt: Format, start: int = 1) -> SearchStrategy[float]:
    one = fmt.ordinal(1.0)
    return st.integers(start, 16).map(lambda k: _from_ordinal(fmt, one - k))


@cache
def _tiny_logit(fmt: Format) -> SearchStrategy[float]:
    ss, tiny = fmt.smallest_subnormal, fmt.tiny
    top = fmt.ordinal(tiny)
    return st.one_of(
        st.sampled_from((0.0, -0.0, ss, -ss, tiny - ss, -(tiny - ss), tiny, -tiny)),
        st.integers(-top, top).map(lambda n: _from_ordinal(fmt, n)),
        format_values(fmt, -fmt.eps, fmt.eps),
    )


@cache
def _tiny_prob(fmt: Format, top: float | None = None) -> SearchStrategy[float]:
    """Nonzero probabilities from the smallest subnormal to ``top`` (eps by default)."""
    ss, tiny = fmt.smallest_subnormal, fmt.tiny
    return st.one_of(
        st.sampled_from((ss, tiny - ss, tiny)),
        st.integers(1, fmt.ordinal(tiny)).map(lambda n: _from_ordinal(fmt, n)),
        format_values(fmt, tiny, fmt.eps if top is None else top),
    )


@cache
def _tiny_target(fmt: Format) -> SearchStrategy[float]:
    return st.one_of(st.sampled_from((0.0, 1.0)), _tiny_prob(fmt), _moderate_target(fmt))


@cache
def _soft_label(fmt: Format) -> SearchStrategy[float]:
    """A soft label: 0, 1, 1 - 2**-k, a few ulps below 1, anything in [0, 1], tiny."""
    near_one = tuple(1.0 - 2.0**-k for k in range(1, fmt.precision + 1))
    return st.one_of(
        st.sampled_from((0.0, 1.0)),
        st.sampled_from(near_one),
        _near_one_prob(fmt),
        format_values(fmt, 0.0, 1.0),
        _tiny_prob(fmt),
    )


@cache
def _extreme_pos_weight(fmt: Format) -> SearchStrategy[float]:
    ss, tiny, top = fmt.smallest_subnormal, fmt.tiny, fmt.ordinal(fmt.max)
    return st.one_of(
        st.sampled_from((1.0, 1.0 - fmt.eps / 2, 1.0 + fmt.eps, ss, tiny - ss, tiny, fmt.max)),
        st.integers(1, fmt.ordinal(tiny)).map(lambda n: _from_ordinal(fmt, n)),
        st.integers(0, 16).map(lambda k: _from_ordinal(fmt, top - k)),
        format_values(fmt, math.ldexp(1.0, fmt.emax - 8), fmt.max),
        format_values(fmt, ss, fmt.max),
    )


# -- shared pieces of a case -----------------------------------------------------------------


@dataclass(frozen=True)
class _Ctx:
    spec: LossSpec
    fmt: Format
    max_rows: int
    max_classes: int

    @property
    def logits(self) -> bool:
        return self.spec.inputs is InputKind.LOGITS

    @property
    def linear(self) -> bool:
        return self.spec.inputs is InputKind.HIDDEN

    @property
    def sparse(self) -> bool:
        return self.spec.labels is LabelKind.SPARSE

    @property
    def rowwise(self) -> bool:
        return self.spec.rowwise

    def shape(self, draw: Any, min_classes: int = 2) -> tuple[int, int]:
        rows = draw(st.integers(1, self.max_rows))
        low = 1 if not self.rowwise else min(min_classes, self.max_classes)
        return rows, draw(st.integers(low, self.max_classes))

    def values(self, draw: Any, elements: SearchStrategy[float], n: int) -> list[float]:
        return draw(st.lists(elements, min_size=n, max_size=n))

    def params(self, draw: Any, extreme: bool = False) -> dict[str, float]:
        if "pos_weight" not in self.spec.params:
            return {}
        pw = _extreme_pos_weight(self.fmt) if extreme else _moderate_pos_weight(self.fmt)
        return {"pos_weight": draw(pw)}


def _complete_row(fmt: Format, fixed: dict[int, float], weights: Sequence[float]) -> np.ndarray:
    """A probability row: entries in ``fixed`` as given, the others (weights, in order)
    sharing what the fixed ones leave so that the row sums to one as nearly as the format
    allows. The largest free entry takes the remainder."""
    n = len(fixed) + len(weights)
    free = [i for i in range(n) if i not in fixed]
    row = np.zeros(n)
    for i, v in fixed.items():
        row[i] = v
    mass = max(0.0, 1.0 - math.fsum(fixed.values()))
    w = np.asarray(weights, dtype=np.float64)
    if free:
        row[free] = w * (mass / w.sum()) if w.sum() > 0 else 0.0
    out = _array(fmt, row).astype(np.float64)
    if free and w.sum() > 0:
        j = free[int(np.argmax(w))]
        rest = math.fsum(out[:j]) + math.fsum(out[j + 1 :])
        out[j] = min(1.0, max(0.0, 1.0 - rest))
    return _array(fmt, out)


def _normalised(fmt: Format, weights: Sequence[float]) -> list[float]:
    w = np.asarray(weights, dtype=np.float64)
    return _array(fmt, w / w.sum()).astype(np.float64).tolist()


def _moderate_prob_row(draw: Any, c: _Ctx, classes: int) -> np.ndarray:
    return _complete_row(c.fmt, {}, c.values(draw, _weight(c.fmt), classes))


def _label_row(draw: Any, c: _Ctx, classes: int, true: int | None = None) -> list[float]:
    """A one-hot row (at ``true`` or a drawn class) or a normalised soft row with zeros."""
    k = draw(st.integers(0, classes - 1)) if true is None else true
    if draw(st.booleans()):
        w = c.values(draw, st.integers(0, 4), classes)
        w[k] += 1
        return _normalised(c.fmt, w)
    return [1.0 if i == k else 0.0 for i in range(classes)]


def _labels(draw: Any, c: _Ctx, rows: int, classes: int) -> np.ndarray:
    """Sparse labels in range, or soft label rows (one-hot or normalised with zeros)."""
    true = [draw(st.integers(0, classes - 1)) for _ in range(rows)]
    if c.sparse:
        return np.asarray(true, dtype=np.int64)
    return _array(c.fmt, [_label_row(draw, c, classes, k) for k in true])


def _elementwise(
    draw: Any,
    c: _Ctx,
    elements: SearchStrategy[float],
    targets: SearchStrategy[float] | None = None,
) -> Arrays:
    """A rows x cols array of predictions, targets shaped alike, and the parameters."""
    rows, cols = c.shape(draw)
    preds = c.values(draw, elements, rows * cols)
    if targets is None:
        targets = _moderate_target(c.fmt)
    labels = c.values(draw, targets, rows * cols)
    return (
        _array(c.fmt, preds).reshape(rows, cols),
        _array(c.fmt, labels).reshape(rows, cols),
        c.params(draw),
    )


# -- the regimes -------------------------------------------------------------------------------


def _fill_moderate(draw: Any, c: _Ctx) -> Arrays:
    if not c.rowwise:
        elements = _moderate_logit(c.fmt) if c.logits else _moderate_prob(c.fmt)
        return _elementwise(draw, c, elements)
    rows, classes = c.shape(draw, min_classes=1)
    if c.logits:
        preds = [c.values(draw, _moderate_logit(c.fmt), classes) for _ in range(rows)]
    else:
        preds = [_moderate_prob_row(draw, c, classes) for _ in range(rows)]
    return _array(c.fmt, preds), _labels(draw, c, rows, classes), c.params(draw)


def _fill_saturating(draw: Any, c: _Ctx) -> Arrays:
    fmt = c.fmt
    sat = _signed(_saturating_magnitude(fmt))
    if not c.rowwise:
        if c.logits:
            return _elementwise(draw, c, sat)
        return _elementwise(draw, c, st.one_of(_near_zero_prob(fmt), _near_one_prob(fmt)))
    rows, classes = c.shape(draw)
    preds = []
    for _ in range(rows):
        if c.logits:
            row = c.values(draw, st.one_of(_moderate_logit(fmt), sat), classes)
            row[draw(st.integers(0, classes - 1))] = draw(sat)
        else:
            top = draw(st.integers(0, classes - 1))
            gap = draw(st.integers(0, classes - 2))  # the entry that takes 1 - p[top]
            gap += gap >= top
            fixed = {top: draw(_near_one_prob(fmt))}
            for i in range(classes):
                if i not in (top, gap):
                    fixed[i] = draw(_near_zero_prob(fmt))
            row = _complete_row(fmt, fixed, [1.0])
        preds.append(row)
    return _array(fmt, preds), _labels(draw, c, rows, classes), c.params(draw)


def _fill_tiny(draw: Any, c: _Ctx) -> Arrays:
    fmt = c.fmt
    if not c.rowwise:
        elements = _tiny_logit(fmt) if c.logits else _tiny_prob(fmt)
        return _elementwise(draw, c, elements, _tiny_target(fmt))
    rows, classes = c.shape(draw)
    preds = []
    for _ in range(rows):
        if c.logits:
            preds.append(c.values(draw, _tiny_logit(fmt), classes))
            continue
        small = c.values(draw, st.booleans(), classes)
        t = draw(st.integers(0, classes - 1))
        b = draw(st.integers(0, classes - 2))
        b += b >= t
        small[t], small[b] = True, False
        fixed = {i: draw(_tiny_prob(fmt)) for i in range(classes) if small[i]}
        preds.append(_complete_row(fmt, fixed, c.values(draw, _weight(fmt), classes - len(fixed))))
    return _array(fmt, preds), _labels(draw, c, rows, classes), c.params(draw)


def _infinite_labels(draw: Any, c: _Ctx, x: float, finite_when: float) -> float:
    """A target for an infinite logit or a 0/1 probability: agreeing (finite loss),
    opposing or soft (infinite loss)."""
    how = draw(st.sampled_from(("agree", "oppose", "soft")))
    agree = 1.0 if x == finite_when else 0.0
    if how == "agree":
        return agree
    if how == "oppose":
        return 1.0 - agree
    return draw(format_values(c.fmt, c.fmt.smallest_subnormal, 1.0 - c.fmt.eps / 2))


def _fill_infinite(draw: Any, c: _Ctx) -> Arrays:
    fmt = c.fmt
    if c.logits:
        specials, finite, top = (INF, -INF), _moderate_logit(fmt), INF
    else:
        specials, finite, top = (0.0, 1.0), _moderate_prob(fmt), 1.0
    if not c.rowwise:
        rows, cols = c.shape(draw)
        n = rows * cols
        preds = c.values(draw, st.one_of(finite, st.sampled_from(specials)), n)
        preds[draw(st.integers(0, n - 1))] = draw(st.sampled_from(specials))
        labels = [
            _infinite_labels(draw, c, x, top) if x in specials else draw(_moderate_target(fmt))
            for x in preds
        ]
        return (
            _array(fmt, preds).reshape(rows, cols),
            _array(fmt, labels).reshape(rows, cols),
            c.params(draw),
        )
    rows, classes = c.shape(draw)
    preds, true, label_rows = [], [], []
    for _ in range(rows):
        if c.logits:
            row = c.values(draw, st.one_of(finite, st.sampled_from(specials)), classes)
            row[draw(st.integers(0, classes - 1))] = draw(st.sampled_from(specials))
        elif draw(st.booleans()):  # a one-hot probability row
            hot = draw(st.integers(0, classes - 1))
            row = [1.0 if i == hot else 0.0 for i in range(classes)]
        else:  # exact zeros, the rest normalised
            zero = c.values(draw, st.booleans(), classes)
            z, nz = draw(st.integers(0, classes - 1)), draw(st.integers(0, classes - 2))
            nz += nz >= z
            zero[z], zero[nz] = True, False
            fixed = {i: 0.0 for i in range(classes) if zero[i]}
            row = _complete_row(fmt, fixed, c.values(draw, _weight(fmt), classes - len(fixed)))
        row = np.asarray(row, dtype=np.float64)
        aim = draw(st.sampled_from(("best", "any", "worst")))
        k = {
            "best": int(np.argmax(row)),
            "worst": int(np.argmin(row)),
            "any": draw(st.integers(0, classes - 1)),
        }[aim]
        if not c.sparse:
            bad = row == (-INF if c.logits else 0.0)
            mode = draw(st.sampled_from(("one_hot", "spread_finite", "spread_all")))
            if mode == "one_hot":
                label = [1.0 if i == k else 0.0 for i in range(classes)]
            else:
                w = np.asarray(c.values(draw, st.integers(0, 4), classes), dtype=np.float64)
                w[k] += 1
                if mode == "spread_finite" and not bad.all():
                    w[bad] = 0.0
                    w[k if not bad[k] else int(np.argmin(bad))] += 1
                label = _normalised(fmt, w)
            label_rows.append(label)
        preds.append(row)
        true.append(k)
    labels = np.asarray(true, dtype=np.int64) if c.sparse else _array(fmt, label_rows)
    return _array(fmt, preds), labels, c.params(draw)


def _fill_dominant(draw: Any, c: _Ctx) -> Arrays:
    fmt = c.fmt
    margin = _dominant_margin(fmt)
    if not c.rowwise:
        rows, cols = c.shape(draw)
        n = rows * cols
        if c.logits:  # z = 1 with x >> 0 or z = 0 with x << 0
            agree = c.values(draw, st.booleans(), n)
            mags = c.values(draw, margin, n)
            preds = [m if a else -m for a, m in zip(agree, mags)]
        else:  # z = 1 with p a few ulps below 1, or z = 0 with p tiny
            agree = c.values(draw, st.booleans(), n)
            preds = [draw(_near_one_prob(fmt, 0)) if a else draw(_tiny_prob(fmt)) for a in agree]
        labels = [1.0 if a else 0.0 for a in agree]
        return (
            _array(fmt, preds).reshape(rows, cols),
            _array(fmt, labels).reshape(rows, cols),
            c.params(draw),
        )
    rows, classes = c.shape(draw)
    preds, true = [], []
    small = _tiny_prob(fmt, fmt.eps / 8)
    for _ in range(rows):
        k = draw(st.integers(0, classes - 1))
        if c.logits:
            base = draw(_moderate_logit(fmt))
            below = c.values(draw, format_values(fmt, 0.0, 10.0), classes)
            row = [_exact(fmt, base - d) for d in below]
            row[k] = _exact(fmt, max(row) + draw(margin))
        else:
            fixed = {i: draw(small) for i in range(classes) if i != k}
            row = _complete_row(fmt, fixed, [1.0])
        preds.append(row)
        true.append(k)
    if c.sparse:
        labels = np.asarray(true, dtype=np.int64)
    else:
        labels = _array(fmt, [[float(i == k) for i in range(classes)] for k in true])
    return _array(fmt, preds), labels, c.params(draw)


def _fill_offset(draw: Any, c: _Ctx) -> Arrays:
    fmt = c.fmt
    p = fmt.precision
    room = 2 ** (p - 3)  # ulps either side of the offset that stay in its binade
    rows, classes = c.shape(draw)
    preds = []
    for _ in range(rows):
        negative = draw(st.booleans())
        y = np.asarray(c.values(draw, _moderate_logit(fmt), classes), dtype=np.float64)
        if draw(st.booleans()):  # at the very top: max - j ulps
            e = fmt.emax
            centre = fmt.ordinal(fmt.max)
            step = min(math.ldexp(1.0, e - p + 1), 1.0)
            j = -np.clip(np.rint(np.abs(y) / step), 0, room - 1)
        else:  # c in [1.25, 1.75] * 2**e, 64 <= c
            e = draw(st.integers(6, fmt.emax))
            centre = fmt.ordinal(math.ldexp(1.25, e)) + draw(st.integers(0, 2 ** (p - 2)))
            step = min(math.ldexp(1.0, e - p + 1), 1.0)
            j = np.clip(np.rint(y / step), -room, room - 1)
        row = _from_ordinals(fmt, centre + j.astype(np.int64)).astype(np.float64)
        preds.append(-row if negative else row)
    return _array(fmt, preds), _labels(draw, c, rows, classes), c.params(draw)


def _fill_soft_labels(draw: Any, c: _Ctx) -> Arrays:
    fmt = c.fmt
    if not c.rowwise:
        if c.logits:
            elements = st.one_of(_moderate_logit(fmt), _signed(_saturating_magnitude(fmt)))
        else:
            elements = st.one_of(_moderate_prob(fmt), _near_zero_prob(fmt), _near_one_prob(fmt))
        return _elementwise(draw, c, elements, _soft_label(fmt))
    rows, classes = c.shape(draw)
    preds, labels = [], []
    for _ in range(rows):
        if c.logits:
            preds.append(c.values(draw, _moderate_logit(fmt), classes))
        else:
            preds.append(_moderate_prob_row(draw, c, classes))
        mode = draw(st.sampled_from(("free", "near_one", "zeros", "normalised")))
        if mode == "free":  # any values in [0, 1], not summing to one
            label = c.values(draw, _soft_label(fmt), classes)
        elif mode == "near_one":  # 1 - 2**-k on one class, the rest 0 or sharing 2**-k
            k = draw(st.integers(0, classes - 1))
            bits = draw(st.integers(1, fmt.precision))
            share = draw(st.booleans())
            rest = _exact(fmt, 2.0**-bits / (classes - 1)) if share else 0.0
            label = [1.0 - 2.0**-bits if i == k else rest for i in range(classes)]
        elif mode == "zeros":
            label = [0.0] * classes
        else:
            w = c.values(draw, st.integers(0, 4), classes)
            w[draw(st.integers(0, classes - 1))] += 1
            label = _normalised(fmt, w)
        labels.append(label)
    return _array(fmt, preds), _array(fmt, labels), c.params(draw)


def _fill_pos_weight(draw: Any, c: _Ctx) -> Arrays:
    fmt = c.fmt
    elements = st.one_of(_moderate_logit(fmt), _signed(_saturating_magnitude(fmt)))
    preds, labels, _ = _elementwise(draw, c, elements)
    return preds, labels, c.params(draw, extreme=True)


def _fill_wide(draw: Any, c: _Ctx) -> Arrays:
    """One row of 32,768 to 131,072 classes built with numpy from a few drawn parameters;
    or, on logits, a row of 65,520 or more equal logits (float16's sum of 1s overflows), or
    one peak at the first, middle or last class with every other logit 17 below it (what a
    sequential float32 sum keeps depends on where the peak is); these two now and then
    with label smoothing, which sums -log softmax over every class (PyTorch's float16
    smoothing overflows from C = 7,357)."""
    fmt = c.fmt
    layout = draw(st.sampled_from(("drawn", "equal", "peak"))) if c.logits else "drawn"
    if layout != "drawn":
        smoothing = {}
        if "label_smoothing" in c.spec.params and draw(st.booleans()):
            smoothing = {"label_smoothing": _real_option(draw, fmt, get_param("label_smoothing"))}
        n = draw(st.integers(65_520, 2**17) if layout == "equal" else st.integers(2**15, 2**17))
        top = draw(_moderate_logit(fmt))
        row = np.full(n, top if layout == "equal" else _exact(fmt, top - 17))
        peak = {"first": 0, "middle": n // 2, "last": n - 1}[
            draw(st.sampled_from(("first", "middle", "last")))]  # fmt: skip
        row[peak] = top
        k = draw(st.sampled_from((peak, (peak + 1) % n)))
        labels = np.zeros(n)
        labels[k] = 1.0
        preds = _array(fmt, row).reshape(1, n)
        if c.sparse:
            return preds, np.asarray([k], dtype=np.int64), smoothing
        return preds, _array(fmt, labels).reshape(1, n), smoothing
    n = draw(st.integers(2**15, 2**17))
    n_dom = draw(st.one_of(st.just(1), st.integers(2, 16), st.integers(17, n // 2)))
    n_off = draw(st.one_of(st.just(0), st.integers(1, 64), st.integers(65, n - n_dom - 1)))
    placement = draw(st.sampled_from(("first", "strided", "random")))
    pattern = draw(st.sampled_from(("constant", "ramp", "noise")))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if placement == "random":
        order = rng.permutation(n)
    elif placement == "strided":
        order = np.argsort(np.arange(n) % max(1, n // n_dom), kind="stable")
    else:
        order = np.arange(n)
    dom, off = order[:n_dom], order[n - n_off :]
    spread = draw(st.floats(0.0, 20.0))
    if pattern == "ramp":
        shape = -spread * np.arange(n) / n
    elif pattern == "noise":
        shape = rng.normal(0.0, spread / 4 + 1e-3, n)
    else:
        shape = np.zeros(n)
    if c.logits:
        base = draw(_moderate_logit(fmt))
        lift = draw(st.one_of(st.floats(0.0, 10.0), _dominant_margin(fmt)))
        row = base + shape
        row[dom] = base + lift
        row[off] = -INF
    else:
        weights = np.exp(shape / 4)
        weights[dom] = draw(
            st.one_of(st.just(1.0), st.floats(1.0, 1e3), st.integers(10, 60).map(lambda e: 2.0**e))
        )
        weights[off] = 0.0
        row = np.asarray(_complete_row(fmt, {}, weights.tolist()), dtype=np.float64)
    where = draw(st.sampled_from(("dominant", "first", "last", "background", "off", "random")))
    k = {
        "dominant": int(dom[0]),
        "first": 0,
        "last": n - 1,
        "background": int(order[n_dom]),
        "off": int(order[-1]),
        "random": int(rng.integers(n)),
    }[where]
    preds = _array(fmt, row).reshape(1, n)
    if c.sparse:
        return preds, np.asarray([k], dtype=np.int64), {}
    mode = draw(st.sampled_from(("one_hot", "dominant", "smoothed")))
    labels = np.zeros(n)
    if mode == "one_hot":
        labels[k] = 1.0
    elif mode == "dominant":
        labels[dom] = 1.0 / n_dom
    else:
        smoothing = draw(st.sampled_from((0.1, 0.01, 2.0**-10)))
        labels[:] = smoothing / n
        labels[k] += 1.0 - smoothing
    return preds, _array(fmt, labels).reshape(1, n), {}


# -- options: one regime per option of the catalogue --------------------------------------------


def _token(fmt: Format, token: str) -> float:
    """A value a ``ParamSpec.draws`` token names, in ``fmt``."""
    named = {
        "subnormal": fmt.smallest_subnormal,
        "tiny": fmt.tiny,
        "eps": fmt.eps,
        "1-ulp": 1.0 - fmt.eps / 2,
        "huge": fmt.max,
    }
    return named[token] if token in named else _exact(fmt, float(token))


def _real_option(draw: Any, fmt: Format, param: ParamSpec) -> float:
    """A token of the spec, or a value of the format in its domain (up to 100)."""
    tokens = [_token(fmt, t) for t in param.draws]
    low = fmt.smallest_subnormal if param.open_low else max(param.low, 0.0)
    high = min(param.high, 100.0)
    return draw(st.one_of(st.sampled_from(tokens), format_values(fmt, low, _exact(fmt, high))))


def _class_weights(draw: Any, fmt: Format, classes: int) -> np.ndarray:
    """Class weights with zeros, subnormals, tiny and huge values among moderate ones."""
    extreme = (0.0, fmt.smallest_subnormal, fmt.tiny, fmt.max / 4)
    moderate = st.one_of(st.just(1.0), format_values(fmt, 2.0**-4, 2.0**4))
    values = draw(st.lists(st.one_of(moderate, st.sampled_from(extreme)),
                           min_size=classes, max_size=classes))  # fmt: skip
    return _array(fmt, values)


def _ignore(draw: Any, c: _Ctx, preds: np.ndarray, labels: np.ndarray) -> tuple[Any, ...]:
    """An ignore_index (-100, or class 0), the rows it marks (some, or all) and, now and
    then, NaN or infinite logits in them (NaN probabilities)."""
    index = draw(st.sampled_from((-100, 0)))
    rows = len(labels)
    marked = np.asarray(draw(st.one_of(st.just([True] * rows),
                                       st.lists(st.booleans(), min_size=rows, max_size=rows))))
    labels = np.where(marked, index, labels)
    junk = [math.nan] if not c.logits else [math.nan, INF, -INF]
    if draw(st.booleans()) and marked.any():
        preds = preds.astype(np.float64)
        for i in np.flatnonzero(marked):
            preds[i, draw(st.integers(0, preds.shape[1] - 1))] = draw(st.sampled_from(junk))
        preds = _array(c.fmt, preds)
    return preds, labels, index


# the options drawn with another now and then, as users combine them
_COMPANIONS = {
    "weight": {"label_smoothing", "reduction"},
    "ignore_index": {"reduction"},
    "reduction": {"ignore_index"},
    "softcap": {"z_loss"},
}
_NOTES = {
    "label_smoothing": "; on logits, now and then one row of 7,357 to 8,192 classes",
    "reduction": "; batches of up to 128 rows, with ignored rows",
    "ignore_index": "; some or all rows ignored, holding NaN or infinite logits",
    "weight": "; with label smoothing and reductions",
    "softcap": "; with z-loss",
}


def _smoothing_row(draw: Any, c: _Ctx) -> Arrays:
    """One row of 7,357 to 8,192 equal or moderate logits: smoothing sums -log softmax over
    every class, which overflows float16 from C = 7,357 when summed in float16."""
    n = draw(st.integers(7357, 8192))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    spread = draw(st.sampled_from((0.0, 1.0, 4.0)))
    row = _array(c.fmt, draw(_moderate_logit(c.fmt)) + rng.uniform(-spread, spread, n))
    k = draw(st.integers(0, n - 1))
    if c.sparse:
        return row.reshape(1, n), np.asarray([k], dtype=np.int64), {}
    labels = np.zeros(n)
    labels[k] = 1.0
    return row.reshape(1, n), _array(c.fmt, labels).reshape(1, n), {}


def _linear_inputs(draw: Any, c: _Ctx, scale: float = 1.0) -> tuple[np.ndarray, ...]:
    """h (rows x D), W (V x D) and sometimes b (V) with moderate entries (|h| <= 4,
    |W| <= scale, |b| <= 1), D from 1 to 16, V from 2 to max_classes."""
    rows, classes = c.shape(draw, min_classes=2)
    features = draw(st.integers(1, 16))
    h = c.values(draw, format_values(c.fmt, -4.0, 4.0), rows * features)
    W = c.values(draw, format_values(c.fmt, -scale, scale), classes * features)
    h, W = np.reshape(h, (rows, features)), np.reshape(W, (classes, features))
    b = np.asarray(c.values(draw, format_values(c.fmt, -1.0, 1.0), classes))
    return h, W, b if draw(st.booleans()) else None


def _linear_case(draw: Any, c: _Ctx, h: Any, W: Any, b: Any) -> Arrays:
    params = {"linear_weight": _array(c.fmt, W)}
    if b is not None:
        params["linear_bias"] = _array(c.fmt, b)
    return _array(c.fmt, h), _labels(draw, c, len(h), len(W)), params


def _fill_linear(draw: Any, c: _Ctx) -> Arrays:
    return _linear_case(draw, c, *_linear_inputs(draw, c))


def _fill_confident(draw: Any, c: _Ctx) -> Arrays:
    """A confident model: W and h scaled up together (||h|| ||W|| large), so the logits'
    spread reaches from p ln 2 to past exp underflow in the format."""
    h, W, b = _linear_inputs(draw, c)
    reach = saturation_thresholds(c.fmt)["exp_underflow"]
    scale = draw(st.floats(1.0, max(2.0, math.sqrt(4 * reach))))
    return _linear_case(draw, c, h * scale, W * scale, b)


def _fill_near_ties(draw: Any, c: _Ctx) -> Arrays:
    """Nearly tied logits: every row of W a copy of one row moved by a few ulps in a few
    entries, so the logits differ in their last bits (an order of summation decides)."""
    h, W, b = _linear_inputs(draw, c)
    base = W[0].astype(np.float64)
    W = np.tile(base, (len(W), 1))
    for v in range(1, len(W)):
        for j in draw(st.lists(st.integers(0, W.shape[1] - 1), max_size=2)):
            steps = draw(st.integers(-3, 3))
            W[v, j] = _from_ordinal(c.fmt, c.fmt.ordinal(float(W[v, j])) + steps)
    return _linear_case(draw, c, h, W, None if b is None else np.full(len(W), b[0]))


def _fill_padded(draw: Any, c: _Ctx) -> Arrays:
    """Padded vocabulary rows: the last rows of W are zeros or copies of real rows, masked
    by a bias of -inf, so they must carry no probability; labels on the real rows."""
    h, W, b = _linear_inputs(draw, c)
    V = len(W)
    pad = draw(st.integers(1, V - 1))
    if draw(st.booleans()):
        W[V - pad :] = 0.0
    bias = np.zeros(V) if b is None else b.astype(np.float64)
    bias[V - pad :] = -INF
    labels = _labels(draw, c, len(h), V - pad)
    if not c.sparse:  # zero labels on the padding
        labels = _array(c.fmt, np.pad(labels.astype(np.float64), ((0, 0), (0, pad))))
    return _array(c.fmt, h), labels, {"linear_weight": _array(c.fmt, W),
                                      "linear_bias": _array(c.fmt, bias)}  # fmt: skip


VOCABULARIES = (32_000, 32_064, 50_257, 65_536, 128_256, 151_936, 256_000, 262_144)
LARGE_ENTRIES = 2**21  # V x D of the vocabulary regime, at most


def _normal_linear(draw: Any, c: _Ctx, N: int, D: int, V: int) -> tuple[np.ndarray, ...]:
    """h (N x D) and W (V x D) normal from a drawn seed, W over sqrt(D), both times a drawn
    scale (logits of standard deviation scale**2: 1/4, 4 or 64, a confident model), and
    half the time a normal bias; rounded to the format."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scale = draw(st.sampled_from((0.5, 2.0, 8.0)))
    h = _array(c.fmt, rng.standard_normal((N, D)) * scale)
    W = _array(c.fmt, rng.standard_normal((V, D)) * (scale / math.sqrt(D)))
    b = _array(c.fmt, rng.standard_normal(V)) if draw(st.booleans()) else None
    return h, W, b, rng


def _approximate_logits(h: np.ndarray, W: np.ndarray, b: np.ndarray | None) -> np.ndarray:
    x = h.astype(np.float64) @ W.astype(np.float64).T
    return x if b is None else x + b.astype(np.float64)


def _large_labels(draw: Any, c: _Ctx, rng: Any, x: np.ndarray, real: int) -> np.ndarray:
    """Per row a class among the ``real`` first: the top logit's (a model that is right),
    or a random one; soft labels one-hot, split in two halves, or smoothed by 2**-4."""
    top = np.argmax(np.where(np.arange(x.shape[1]) < real, x, -INF), axis=1)
    k = np.where(rng.random(len(x)) < 0.5, top, rng.integers(0, real, len(x)))
    if c.sparse:
        return k.astype(np.int64)
    y = np.zeros(x.shape)
    mode = draw(st.sampled_from(("one_hot", "halves", "smoothed")))
    rows = np.arange(len(x))
    if mode == "halves":
        y[rows, k] = 0.5
        y[rows, (k + 1) % real] += 0.5
    elif mode == "smoothed":
        y[:, :real] = 2.0**-4 / real
        y[rows, k] += 1 - 2.0**-4
    else:
        y[rows, k] = 1.0
    return _array(c.fmt, y)


def _fill_vocabulary(draw: Any, c: _Ctx) -> Arrays:
    """A large vocabulary: V of a real tokenizer (32,000 to 262,144) or drawn in that span,
    D with V D <= 2**21, 1 to 4 rows; now and then the last rows of W padding (zeros,
    masked by a -inf bias), as vocabularies are padded to a multiple of 64 or 128."""
    V = draw(st.one_of(st.sampled_from(VOCABULARIES), st.integers(32_000, 262_144)))
    D = draw(st.integers(1, min(64, LARGE_ENTRIES // V)))
    N = draw(st.integers(1, 4))
    h, W, b, rng = _normal_linear(draw, c, N, D, V)
    real = V
    if draw(st.booleans()):
        real = V - draw(st.sampled_from((1, 64, 127, V % 128 or 128)))
        W[real:] = 0
        b = np.zeros(V, W.dtype) if b is None else b.copy()
        b[real:] = -INF
    params = {"linear_weight": W} | ({} if b is None else {"linear_bias": b})
    x = _approximate_logits(h, W, b)
    return h, _large_labels(draw, c, rng, x, real), params


def _fill_long_sequence(draw: Any, c: _Ctx) -> Arrays:
    """A long sequence: 1,024 to 8,192 rows of 2 to 64 classes (N V <= 2**21), D from 1 to
    16, reduced by mean or sum, so that the reduction itself can lose bits; a tenth of the
    rows ignored where the loss takes ``ignore_index``."""
    N = draw(st.integers(1_024, 8_192))
    V = draw(st.integers(2, 64))
    h, W, b, rng = _normal_linear(draw, c, N, draw(st.integers(1, 16)), V)
    labels = _large_labels(draw, c, rng, _approximate_logits(h, W, b), V)
    reduction = draw(st.sampled_from(("mean", "sum")))
    params: dict[str, Any] = {"linear_weight": W, "reduction": reduction}
    if b is not None:
        params["linear_bias"] = b
    if "ignore_index" in c.spec.params and draw(st.booleans()):
        labels = np.where(rng.random(N) < 0.1, -100, labels)
        params["ignore_index"] = -100
    return h, labels, params


def _option_fill(name: str) -> Callable[[Any, _Ctx], Arrays]:
    """The fill of the regime of option ``name``: moderate or saturating inputs (up to 128
    rows for reductions) and the option drawn as a kernel meets it, now and then with the
    options users combine it with (``_COMPANIONS``)."""

    def fill(draw: Any, c: _Ctx) -> Arrays:
        if name == "reduction":
            c = _Ctx(c.spec, c.fmt, draw(st.sampled_from((c.max_rows, 16, 128))), c.max_classes)
        bases = (_fill_linear, _fill_confident) if c.linear else (_fill_moderate, _fill_saturating)
        base = draw(st.sampled_from(bases))
        wide = name == "label_smoothing" and c.rowwise and c.logits and draw(st.integers(0, 3)) == 3
        preds, labels, params = _smoothing_row(draw, c) if wide else base(draw, c)
        classes = params["linear_weight"].shape[0] if c.linear else preds.shape[-1]
        options = {name}
        if draw(st.booleans()):
            options |= _COMPANIONS.get(name, set())
        for option in sorted(options & set(c.spec.params)):
            spec = get_param(option)
            if spec.kind is ParamKind.INDEX:
                preds, labels, params[option] = _ignore(draw, c, preds, labels)
            elif spec.kind is ParamKind.VECTOR:
                params[option] = _class_weights(draw, c.fmt, classes)
            elif spec.kind is ParamKind.CHOICE:
                params[option] = draw(st.sampled_from(spec.draws))
            else:
                params[option] = _real_option(draw, c.fmt, spec)
        return preds, labels, params

    return fill


def _option_regimes() -> tuple[Regime, ...]:
    """A regime per optional parameter that says what strategies draw (``draws``)."""
    return tuple(
        Regime(
            param.name,
            f"losses with {param.name} ({param.summary}): moderate or saturating inputs with "
            f"{param.name} drawn from {', '.join(param.draws)} and values of its domain"
            f"{_NOTES.get(param.name, '')}.",
            applies=lambda spec, name=param.name: name in spec.params,
            min_classes=2,
            fill=_option_fill(param.name),
            searched=False,
        )
        for param in PARAMS
        if param.draws and not param.required
    )


# -- the registry --------------------------------------------------------------------------------


def _textbook(spec: LossSpec) -> bool:
    """The losses on logits or probabilities (not the linear ones, which draw h, W, b)."""
    return spec.inputs is not InputKind.HIDDEN


def _linear(spec: LossSpec) -> bool:
    return spec.inputs is InputKind.HIDDEN


@dataclass(frozen=True)
class Regime:
    """A named kind of input: a one-line description, the losses it applies to
    (``applies(spec)``), the least number of classes its rows need (rowwise losses), the
    function that fills a case from hypothesis draws, whether the audit's targeted
    search runs on it (not on wide rows, nor on the options' regimes: the oracle's
    mpmath path and the frameworks' compilations for each new shape make it costly), and
    whether the default audit draws it (not the large shapes of the linear losses, which
    are for benchmarks and campaigns: selected by name, ``--regime vocabulary``), and the
    most cases the audit and ``check`` draw of it per group."""

    name: str
    description: str
    applies: Callable[[LossSpec], bool] = field(default=_textbook, repr=False)
    min_classes: int = 1
    fill: Callable[[Any, _Ctx], Arrays] | None = field(default=None, repr=False, compare=False)
    searched: bool = True  # whether the audit's targeted search runs on it
    audited: bool = True  # whether the default audit (no regime selected) draws it
    max_examples: int | None = None  # the most cases drawn per group (large shapes are costly)

    def applies_to(self, loss: str | LossSpec) -> bool:
        """Whether this regime makes sense for ``loss``."""
        return bool(self.applies(get_loss(loss)))


REGIMES: tuple[Regime, ...] = (
    Regime(
        "moderate",
        "|logit| <= 10; probabilities in [2**-5, 1 - 2**-5] (rows: weights within a factor "
        "16, normalised; a one-class row is [1]); targets 0, 1 or soft; pos_weight in [1/16, 16].",
        fill=_fill_moderate,
    ),
    Regime(
        "saturating",
        "|logit| near the format's saturation thresholds (p ln 2, -ln tiny, ln max, "
        "-ln smallest subnormal; see saturation_thresholds) and up to max, every element for "
        "elementwise losses and at least one per row for softmax; probabilities 1 to 16 ulps "
        "from 0 and from 1 (rows: one entry just below 1, its gap on another).",
        min_classes=2,
        fill=_fill_saturating,
    ),
    Regime(
        "tiny",
        "subnormal and near-zero values (|x| <= eps, the smallest subnormal, tiny, -0) as "
        "logits; nonzero probabilities from the smallest subnormal to eps (rows: at least one "
        "such entry); tiny soft targets too.",
        min_classes=2,
        fill=_fill_tiny,
    ),
    Regime(
        "infinite",
        "±inf logits or probabilities exactly 0 and 1, at least one per case (per row when "
        "rowwise), with labels that agree (finite loss, e.g. -inf under a zero label) or "
        "oppose (infinite loss).",
        min_classes=2,
        fill=_fill_infinite,
    ),
    Regime(
        "dominant",
        "the true class far ahead (margin p ln 2 to past exp underflow; probability 1 to 16 "
        "ulps below 1, the rest tiny), so the exact loss underflows toward 0; elementwise: "
        "targets agree with large |logit| or with p near 0 or 1.",
        min_classes=2,
        fill=_fill_dominant,
    ),
    Regime(
        "offset",
        "softmax losses only: moderate logit rows plus a common offset from 64 up to max "
        "(either sign), added exactly (every row stays in the offset's binade).",
        applies=lambda spec: spec.rowwise and spec.inputs is InputKind.LOGITS,
        min_classes=2,
        fill=_fill_offset,
    ),
    Regime(
        "soft_labels",
        "non-sparse losses: soft labels with zeros, 1 - 2**-k, a few ulps below 1, rows not "
        "summing to one, all-zero rows; binary losses: soft targets in [0, 1] against "
        "moderate or saturating predictions.",
        applies=lambda spec: spec.labels is not LabelKind.SPARSE and _textbook(spec),
        min_classes=2,
        fill=_fill_soft_labels,
    ),
    Regime(
        "wide",
        "rowwise losses: one row of 32,768 to 131,072 classes, one to n/2 dominant classes, "
        "many -inf logits (zero probabilities), the true class at varied positions; "
        "ignores max_rows and max_classes.",
        applies=lambda spec: spec.rowwise and _textbook(spec),
        fill=_fill_wide,
        searched=False,
        max_examples=2,
    ),
    Regime(
        "pos_weight",
        "weighted_cross_entropy_with_logits only: extreme pos_weight (smallest subnormal, "
        "subnormals, tiny, 1 - eps/2, 1, 1 + eps, near max) with moderate or saturating logits.",
        applies=lambda spec: "pos_weight" in spec.params,
        fill=_fill_pos_weight,
    ),
    Regime(
        "linear",
        "linear losses: hidden states |h| <= 4 and classifier |W| <= 1 of the format (D from "
        "1 to 16 features, V from 2 to max_classes classes), a bias |b| <= 1 half the time.",
        applies=_linear,
        min_classes=2,
        fill=_fill_linear,
    ),
    Regime(
        "confident",
        "linear losses: h and W of the linear regime scaled up together, so logits spread "
        "from p ln 2 to past exp underflow (a confident model: the loss underflows toward 0).",
        applies=_linear,
        min_classes=2,
        fill=_fill_confident,
    ),
    Regime(
        "near_ties",
        "linear losses: the rows of W copies of one row moved by up to 3 ulps in up to two "
        "entries, and one bias for all, so the logits are tied or differ in their last bits.",
        applies=_linear,
        min_classes=2,
        fill=_fill_near_ties,
    ),
    Regime(
        "padded",
        "linear losses: the last rows of W padding (zeros or copies of real rows) masked by a "
        "bias of -inf: they must carry no probability; labels on the real rows.",
        applies=_linear,
        min_classes=2,
        fill=_fill_padded,
    ),
    Regime(
        "vocabulary",
        "linear losses: a large vocabulary, V of a real tokenizer (32,000 to 262,144) or "
        "between, D up to 64 with V D <= 2**21, 1 to 4 rows of normal h and W whose logits "
        "spread 1/4, 4 or 64, now and then padded rows; selected by name only.",
        applies=_linear,
        fill=_fill_vocabulary,
        searched=False,
        audited=False,
        max_examples=4,
    ),
    Regime(
        "long_sequence",
        "linear losses: 1,024 to 8,192 rows of 2 to 64 classes reduced by mean or sum (the "
        "reduction itself loses bits), a tenth of them ignored now and then; selected by "
        "name only.",
        applies=_linear,
        fill=_fill_long_sequence,
        searched=False,
        audited=False,
        max_examples=4,
    ),
)
REGIMES += _option_regimes()

_BY_NAME: dict[str, Regime] = {regime.name: regime for regime in REGIMES}


def regime_names() -> list[str]:
    """The names of the regimes, in registry order."""
    return [regime.name for regime in REGIMES]


def get_regime(name: str | Regime) -> Regime:
    """The regime called ``name``."""
    if isinstance(name, Regime):
        return name
    regime = _BY_NAME.get(str(name).strip().lower().replace("-", "_"))
    if regime is not None:
        return regime
    raise InvalidArgument(
        f"regime={name!r} is not a known regime.{did_you_mean(name, _BY_NAME)} "
        f"Valid regimes: {', '.join(regime_names())}."
    )


def regimes_for(loss: str | LossSpec) -> list[str]:
    """The names of the regimes that apply to ``loss``, in registry order."""
    spec = get_loss(loss)
    return [regime.name for regime in REGIMES if regime.applies(spec)]


def cases(
    loss: str | LossSpec,
    format: str | Format = "float64",
    regime: str | Regime = "moderate",
    *,
    max_rows: int = 3,
    max_classes: int = 8,
) -> SearchStrategy[Case]:
    """Cases of ``loss`` in ``format`` drawn from ``regime`` (see ``REGIMES``).

    Elementwise losses get ``max_rows`` x ``max_classes`` arrays at most; rowwise losses get
    up to ``max_rows`` rows of up to ``max_classes`` classes (the ``wide`` regime draws one
    row of 32,768 or more classes instead).
    """
    spec, fmt, reg = get_loss(loss), get_format(format), get_regime(regime)
    if not reg.applies(spec):
        raise InvalidArgument(
            f"regime={reg.name!r} does not apply to {spec.name}: {reg.description} "
            f"Regimes for {spec.name}: {', '.join(regimes_for(spec))}."
        )
    rows = integer("max_rows", max_rows, what="an integer >= 1")
    classes = integer("max_classes", max_classes, what="an integer >= 1")
    if spec.rowwise and reg.name != "wide" and classes < reg.min_classes:
        raise InvalidArgument(
            f"max_classes={classes} is too small for regime {reg.name!r} with {spec.name}; "
            f"its rows need at least {reg.min_classes} classes: pass max_classes>="
            f"{reg.min_classes}"
        )
    ctx = _Ctx(spec, fmt, rows, classes)
    return _build(reg, ctx)


@contextmanager
def independent_of_imports() -> Iterator[None]:
    """Within this block, hypothesis draws the same cases from the same seed whatever
    modules are imported.

    Recent hypothesis (6.170 here) also draws, now and then, constants it finds in the source of
    the local (not installed) modules in ``sys.modules``, so the cases of one seed would
    change with what the process happens to have imported: the command line, an adapter, a
    user's ``module:function``. Here it sees no local constants (a private hook of
    hypothesis; without it, as in older versions, there is nothing to do).
    """
    try:
        from hypothesis.internal.conjecture import providers
    except ImportError:  # pragma: no cover - hypothesis moved its internals
        yield
        return
    original = getattr(providers, "_get_local_constants", None)
    cache_ = getattr(providers, "CONSTANTS_CACHE", None)
    if original is None or cache_ is None:  # pragma: no cover - no local constants here
        yield
        return
    none = providers.Constants()
    providers._get_local_constants = lambda: none
    cache_.cache.clear()  # pools of allowed constants computed with the local ones
    try:
        yield
    finally:
        providers._get_local_constants = original
        cache_.cache.clear()


@st.composite
def _build(draw: Any, regime: Regime, ctx: _Ctx) -> Case:
    preds, labels, params = regime.fill(draw, ctx)
    return Case.build(ctx.spec, preds, labels, format=ctx.fmt, regime=regime.name, **params)
