"""The loss catalogue: one spec per cross-entropy loss and one per parameter, read by every
other layer (oracle, strategies, references, adapters, cases, CLI, reports).

Notation: ``x`` logits, ``p`` probabilities, ``z`` binary or soft targets in [0, 1],
``y`` a row of soft labels, ``k`` an integer label, ``q`` the ``pos_weight``, ``C`` the
number of classes. Without options, losses are unreduced: elementwise for the binary and
sigmoid forms, one per row of an N x C input for the others.

Options, in the order the oracle applies them (each a ``ParamSpec`` below):

- ``softcap`` c: logits become ``c tanh(x / c)``; a ``-inf`` logit (a masked or padded lane)
  stays ``-inf`` (Gemma 2's cap; unsloth #10616 is the bug of turning it into ``-c``).
- ``label_smoothing`` e: targets ``(1 - e) y + e / C`` (softmax and categorical forms, PyTorch,
  Keras, optax), ``(1 - e) z + e / 2`` (binary and sigmoid forms, Keras).
- ``weight`` w (one per class): the row loss is ``sum_i w_i t_i (lse(x) - x_i)``, PyTorch's
  definition for index and probability targets alike.
- ``z_loss`` s: adds ``s lse(x)^2`` to each row (PaLM; Liger and flash-attention call it
  ``lse_square_scale``).
- ``ignore_index``: rows whose label equals it give 0 and a zero gradient, whatever their
  logits hold (PyTorch ``ignore_index``, Keras ``ignore_class``).
- ``reduction``: ``none``; ``sum`` (the exact sum, rounded once); ``mean`` as PyTorch defines
  it (index targets: divided by the sum of ``w_k`` over the rows not ignored, so NaN when
  every row is ignored; probability targets and elementwise losses: divided by the number
  of rows or elements); ``sum_over_batch_size`` as Keras defines it (divided by the number of
  rows not ignored, or of elements; 0 when every row is ignored).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from stabcheck.errors import InvalidArgument, did_you_mean


class InputKind(str, Enum):
    """What the predictions are."""

    LOGITS = "logits"
    PROBABILITIES = "probabilities"
    HIDDEN = "hidden states"  # the logits are h W^T + b, with W and b the loss's operands


class LabelKind(str, Enum):
    """How the labels are given."""

    BINARY = "binary"  # targets in [0, 1] shaped like the predictions (multi-label allowed)
    SOFT = "soft"  # N x C rows of non-negative labels (one-hot or soft)
    SPARSE = "sparse"  # N integer class indices


class OutputShape(str, Enum):
    """The shape of the unreduced loss."""

    ELEMENTWISE = "elementwise"  # shaped like the predictions
    ROWWISE = "rowwise"  # one value per row of an N x C input


class ParamKind(str, Enum):
    """What a parameter's value is."""

    REAL = "real"  # a number, used as its value in the case's format
    VECTOR = "vector"  # one number per class, values of the case's format
    INDEX = "index"  # an integer
    CHOICE = "choice"  # one of a few names


@dataclass(frozen=True)
class ParamSpec:
    """One option of a loss: its domain, default and meaning, what the strategies draw and
    what each framework calls it.

    A real's domain is ``[low, high]`` (``low`` excluded when ``open_low``); NaN is never in
    it. ``default=None`` means the option is off (or, with ``required``, must be given).
    ``draws`` names the values the strategies favour, as a kernel meets them: numbers, or
    ``eps`` (the format's), ``tiny``, ``subnormal`` (the smallest), ``1-ulp``, ``huge``
    (near the format's largest), ``mixed`` (vectors: zeros, subnormals and huge values).
    """

    name: str
    kind: ParamKind
    summary: str
    default: Any = None
    required: bool = False
    low: float = float("-inf")
    high: float = float("inf")
    open_low: bool = False
    choices: tuple[str, ...] = ()
    draws: tuple[str, ...] = ()
    names: Mapping[str, str] = field(default_factory=dict)  # framework -> its name

    @property
    def domain(self) -> str:
        """The valid values, in words, for error messages."""
        if self.kind is ParamKind.CHOICE:
            return "one of " + ", ".join(map(repr, self.choices))
        if self.kind is ParamKind.INDEX:
            return "an integer"
        if self.high == float("inf") and self.low == 0:
            number = f"a finite {'positive' if self.open_low else 'non-negative'} number"
        elif self.high == float("inf"):
            bound = f"> {self.low:g}" if self.open_low else f">= {self.low:g}"
            number = f"a finite number {bound}"
        else:
            number = f"a number in {'(' if self.open_low else '['}{self.low:g}, {self.high:g}]"
        return number if self.kind is ParamKind.REAL else f"one {number[2:]} per class"


PARAMS: tuple[ParamSpec, ...] = (
    ParamSpec(
        "pos_weight",
        ParamKind.REAL,
        "weight of the positive term: q z softplus(-x) + (1 - z) softplus(x)",
        required=True,
        low=0.0,
        open_low=True,
        names={"tensorflow": "pos_weight", "torch": "pos_weight"},
    ),
    ParamSpec(
        "label_smoothing",
        ParamKind.REAL,
        "targets (1 - e) y + e/C (softmax, categorical); (1 - e) z + e/2 (binary, sigmoid)",
        default=0.0,
        low=0.0,
        high=1.0,
        draws=("0", "subnormal", "eps", "0.1", "0.5", "1-ulp", "1"),
        names={
            "torch": "label_smoothing",
            "keras": "label_smoothing",
            "optax": "optax.smooth_labels(labels, alpha)",
        },
    ),
    ParamSpec(
        "weight",
        ParamKind.VECTOR,
        "class weights: the row loss is sum_i w_i t_i (lse(x) - x_i)",
        low=0.0,
        draws=("mixed",),
        names={"torch": "weight"},
    ),
    ParamSpec(
        "ignore_index",
        ParamKind.INDEX,
        "rows whose label equals it give 0 and a zero gradient, whatever their logits",
        draws=("-100", "0"),
        names={"torch": "ignore_index", "keras": "ignore_class"},
    ),
    ParamSpec(
        "z_loss",
        ParamKind.REAL,
        "adds s lse(x)^2 to each row",
        default=0.0,
        low=0.0,
        draws=("0", "subnormal", "1e-4", "1", "huge"),
        names={"liger": "lse_square_scale", "flash_attn": "lse_square_scale"},
    ),
    ParamSpec(
        "softcap",
        ParamKind.REAL,
        "logits c tanh(x / c) before the softmax; a -inf logit stays -inf",
        low=0.0,
        open_low=True,
        draws=("tiny", "eps", "1", "30", "huge"),
        names={"liger": "softcap", "gemma": "final_logit_softcapping"},
    ),
    ParamSpec(
        "alpha",
        ParamKind.REAL,
        "focal balance: alpha z + (1 - alpha)(1 - z) times the loss; off: no weighting",
        low=0.0,
        high=1.0,
        draws=("0", "0.25", "0.5", "1"),
        names={"torch": "alpha", "optax": "alpha"},
    ),
    ParamSpec(
        "gamma",
        ParamKind.REAL,
        "focal exponent: the loss times (1 - p_t)^gamma",
        default=2.0,
        low=0.0,
        draws=("0", "0.5", "2", "5"),
        names={"torch": "gamma", "optax": "gamma"},
    ),
    ParamSpec(
        "reduction",
        ParamKind.CHOICE,
        "none; sum; mean (PyTorch's denominator); sum_over_batch_size (Keras')",
        default="none",
        choices=("none", "sum", "mean", "sum_over_batch_size"),
        draws=("sum", "mean", "sum_over_batch_size"),
        names={"torch": "reduction", "keras": "reduction"},
    ),
)

_PARAMS: dict[str, ParamSpec] = {spec.name: spec for spec in PARAMS}


@dataclass(frozen=True)
class OperandSpec:
    """An input of a loss besides the predictions and labels: an array of the case's format
    that the loss is differentiated with respect to, as the predictions are. ``shape`` names
    its axes (``classes``, ``features``: the predictions' last axis)."""

    name: str
    summary: str
    shape: tuple[str, ...]
    required: bool = True
    names: Mapping[str, str] = field(default_factory=dict)  # framework -> its name


OPERANDS: tuple[OperandSpec, ...] = (
    OperandSpec(
        "linear_weight",
        "the classifier W (V x D): logits h W^T + b",
        ("classes", "features"),
        names={"torch": "linear_weight", "liger": "lin_weight", "cut_cross_entropy": "classifier"},
    ),
    OperandSpec(
        "linear_bias",
        "the classifier's bias b (V)",
        ("classes",),
        required=False,
        names={"torch": "linear_bias", "liger": "bias", "cut_cross_entropy": "bias"},
    ),
)

_OPERANDS: dict[str, OperandSpec] = {spec.name: spec for spec in OPERANDS}


def get_param(name: str) -> ParamSpec:
    """The spec of the parameter called ``name``."""
    spec = _PARAMS.get(name)
    if spec is None:
        raise InvalidArgument(
            f"{name!r} is not a loss parameter.{did_you_mean(name, _PARAMS)} "
            f"Parameters: {', '.join(_PARAMS)}."
        )
    return spec


@dataclass(frozen=True)
class LossSpec:
    """One loss: its name, the kinds of its inputs, its parameters and its formula.

    ``oracle`` names the oracle's formula for it (``stabcheck.oracle`` looks it up by this
    name): ``binary``, ``sigmoid``, ``focal``, ``categorical``, ``softmax`` or ``linear``.
    ``operands`` names the inputs besides predictions and labels (see ``OPERANDS``).
    """

    name: str
    inputs: InputKind
    labels: LabelKind
    output: OutputShape
    oracle: str
    formula: str
    gradient: str
    params: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    operands: tuple[str, ...] = ()

    @property
    def rowwise(self) -> bool:
        return self.output is OutputShape.ROWWISE

    @property
    def param_specs(self) -> tuple[ParamSpec, ...]:
        return tuple(_PARAMS[name] for name in self.params)

    @property
    def operand_specs(self) -> tuple[OperandSpec, ...]:
        return tuple(_OPERANDS[name] for name in self.operands)


LOSSES: tuple[LossSpec, ...] = (
    LossSpec(
        name="binary_crossentropy",
        inputs=InputKind.PROBABILITIES,
        labels=LabelKind.BINARY,
        output=OutputShape.ELEMENTWISE,
        oracle="binary",
        formula="-(z log p + (1 - z) log(1 - p))",
        gradient="dL/dp = -z/p + (1 - z)/(1 - p)",
        params=("label_smoothing", "reduction"),
        aliases=("binary_cross_entropy", "log_loss"),
    ),
    LossSpec(
        name="categorical_crossentropy",
        inputs=InputKind.PROBABILITIES,
        labels=LabelKind.SOFT,
        output=OutputShape.ROWWISE,
        oracle="categorical",
        formula="-sum_i y_i log p_i",
        gradient="dL/dp_i = -y_i / p_i",
        params=("label_smoothing", "weight", "reduction"),
        aliases=("categorical_cross_entropy",),
    ),
    LossSpec(
        name="sparse_categorical_crossentropy",
        inputs=InputKind.PROBABILITIES,
        labels=LabelKind.SPARSE,
        output=OutputShape.ROWWISE,
        oracle="categorical",
        formula="-log p_k",
        gradient="dL/dp_i = -[i = k] / p_k",
        params=("weight", "ignore_index", "reduction"),
        aliases=("sparse_categorical_cross_entropy",),
    ),
    LossSpec(
        name="sigmoid_cross_entropy_with_logits",
        inputs=InputKind.LOGITS,
        labels=LabelKind.BINARY,
        output=OutputShape.ELEMENTWISE,
        oracle="sigmoid",
        formula="z softplus(-x) + (1 - z) softplus(x) = max(x, 0) - x z + log1p(exp(-|x|))",
        gradient="dL/dx = sigmoid(x) - z",
        params=("label_smoothing", "reduction"),
        aliases=("binary_cross_entropy_with_logits", "sigmoid_binary_cross_entropy"),
    ),
    LossSpec(
        name="weighted_cross_entropy_with_logits",
        inputs=InputKind.LOGITS,
        labels=LabelKind.BINARY,
        output=OutputShape.ELEMENTWISE,
        oracle="sigmoid",
        formula="q z softplus(-x) + (1 - z) softplus(x)",
        gradient="dL/dx = (1 - z) sigmoid(x) - q z sigmoid(-x)",
        params=("pos_weight", "reduction"),
    ),
    LossSpec(
        name="softmax_cross_entropy_with_logits",
        inputs=InputKind.LOGITS,
        labels=LabelKind.SOFT,
        output=OutputShape.ROWWISE,
        oracle="softmax",
        formula="sum_i y_i (logsumexp(x) - x_i)",
        gradient="dL/dx_i = (sum_j y_j) softmax(x)_i - y_i",
        params=("label_smoothing", "weight", "z_loss", "softcap", "reduction"),
        aliases=("softmax_cross_entropy",),
    ),
    LossSpec(
        name="sparse_softmax_cross_entropy_with_logits",
        inputs=InputKind.LOGITS,
        labels=LabelKind.SPARSE,
        output=OutputShape.ROWWISE,
        oracle="softmax",
        formula="logsumexp(x) - x_k",
        gradient="dL/dx_i = softmax(x)_i - [i = k]",
        params=("label_smoothing", "weight", "ignore_index", "z_loss", "softcap", "reduction"),
        aliases=("softmax_cross_entropy_with_integer_labels",),
    ),
    LossSpec(
        name="sigmoid_focal_loss",
        inputs=InputKind.LOGITS,
        labels=LabelKind.BINARY,
        output=OutputShape.ELEMENTWISE,
        oracle="focal",
        formula="a_t (1 - p_t)^gamma CE(x, z), p = sigmoid(x), p_t = p z + (1 - p)(1 - z), "
        "a_t = alpha z + (1 - alpha)(1 - z) (1 when alpha is off)",
        gradient="dL/dx = a_t (1 - p_t)^gamma ((p - z) + gamma CE (1 - 2z) p (1 - p) / (1 - p_t))",
        params=("alpha", "gamma", "reduction"),
        aliases=("focal_loss",),
    ),
    LossSpec(
        name="linear_cross_entropy",
        inputs=InputKind.HIDDEN,
        labels=LabelKind.SPARSE,
        output=OutputShape.ROWWISE,
        oracle="linear",
        formula="logsumexp(x) - x_k with logits x = h W^T + b computed exactly",
        gradient="dL/dh = g W, dL/dW = g^T h, dL/db = sum over rows of g, "
        "g_i = softmax(x)_i - [i = k]",
        params=("label_smoothing", "weight", "ignore_index", "z_loss", "softcap", "reduction"),
        aliases=("sparse_linear_cross_entropy", "fused_linear_cross_entropy"),
        operands=("linear_weight", "linear_bias"),
    ),
    LossSpec(
        name="soft_linear_cross_entropy",
        inputs=InputKind.HIDDEN,
        labels=LabelKind.SOFT,
        output=OutputShape.ROWWISE,
        oracle="linear",
        formula="sum_i y_i (logsumexp(x) - x_i) with logits x = h W^T + b computed exactly",
        gradient="dL/dh = g W, dL/dW = g^T h, dL/db = sum over rows of g, "
        "g_i = (sum_j y_j) softmax(x)_i - y_i",
        params=("label_smoothing", "weight", "z_loss", "softcap", "reduction"),
        operands=("linear_weight", "linear_bias"),
    ),
)

_BY_NAME: dict[str, LossSpec] = {
    name: spec for spec in LOSSES for name in (spec.name, *spec.aliases)
}


def loss_names() -> list[str]:
    """The canonical loss names, in catalogue order."""
    return [spec.name for spec in LOSSES]


def get_loss(name: str | LossSpec) -> LossSpec:
    """The spec of the loss called ``name`` (a canonical name or an alias)."""
    if isinstance(name, LossSpec):
        return name
    spec = _BY_NAME.get(str(name).strip().lower().replace("-", "_"))
    if spec is not None:
        return spec
    raise InvalidArgument(
        f"loss={name!r} is not a known loss.{did_you_mean(name, _BY_NAME)} "
        f"Valid losses: {', '.join(loss_names())}."
    )
