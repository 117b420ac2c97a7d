"""The loss catalogue: one spec per cross-entropy loss, read by every other layer.

Notation: ``x`` logits, ``p`` probabilities, ``z`` binary or soft targets in [0, 1],
``y`` a row of soft labels, ``k`` an integer label, ``q`` the ``pos_weight``.
Losses are unreduced: elementwise for the binary and sigmoid forms, one per row of an
N x C input for the others.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from stabcheck.errors import InvalidArgument, did_you_mean


class InputKind(str, Enum):
    """What the predictions are."""

    LOGITS = "logits"
    PROBABILITIES = "probabilities"


class LabelKind(str, Enum):
    """How the labels are given."""

    BINARY = "binary"  # targets in [0, 1] shaped like the predictions (multi-label allowed)
    SOFT = "soft"  # N x C rows of non-negative labels (one-hot or soft)
    SPARSE = "sparse"  # N integer class indices


class OutputShape(str, Enum):
    """The shape of the unreduced loss."""

    ELEMENTWISE = "elementwise"  # shaped like the predictions
    ROWWISE = "rowwise"  # one value per row of an N x C input


@dataclass(frozen=True)
class LossSpec:
    """One loss: its name, the kinds of its inputs, its parameters and its formula."""

    name: str
    inputs: InputKind
    labels: LabelKind
    output: OutputShape
    formula: str
    gradient: str
    params: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()

    @property
    def rowwise(self) -> bool:
        return self.output is OutputShape.ROWWISE


LOSSES: tuple[LossSpec, ...] = (
    LossSpec(
        name="binary_crossentropy",
        inputs=InputKind.PROBABILITIES,
        labels=LabelKind.BINARY,
        output=OutputShape.ELEMENTWISE,
        formula="-(z log p + (1 - z) log(1 - p))",
        gradient="dL/dp = -z/p + (1 - z)/(1 - p)",
        aliases=("binary_cross_entropy", "log_loss"),
    ),
    LossSpec(
        name="categorical_crossentropy",
        inputs=InputKind.PROBABILITIES,
        labels=LabelKind.SOFT,
        output=OutputShape.ROWWISE,
        formula="-sum_i y_i log p_i",
        gradient="dL/dp_i = -y_i / p_i",
        aliases=("categorical_cross_entropy",),
    ),
    LossSpec(
        name="sparse_categorical_crossentropy",
        inputs=InputKind.PROBABILITIES,
        labels=LabelKind.SPARSE,
        output=OutputShape.ROWWISE,
        formula="-log p_k",
        gradient="dL/dp_i = -[i = k] / p_k",
        aliases=("sparse_categorical_cross_entropy",),
    ),
    LossSpec(
        name="sigmoid_cross_entropy_with_logits",
        inputs=InputKind.LOGITS,
        labels=LabelKind.BINARY,
        output=OutputShape.ELEMENTWISE,
        formula="z softplus(-x) + (1 - z) softplus(x) = max(x, 0) - x z + log1p(exp(-|x|))",
        gradient="dL/dx = sigmoid(x) - z",
        aliases=("binary_cross_entropy_with_logits", "sigmoid_binary_cross_entropy"),
    ),
    LossSpec(
        name="weighted_cross_entropy_with_logits",
        inputs=InputKind.LOGITS,
        labels=LabelKind.BINARY,
        output=OutputShape.ELEMENTWISE,
        formula="q z softplus(-x) + (1 - z) softplus(x)",
        gradient="dL/dx = (1 - z) sigmoid(x) - q z sigmoid(-x)",
        params=("pos_weight",),
    ),
    LossSpec(
        name="softmax_cross_entropy_with_logits",
        inputs=InputKind.LOGITS,
        labels=LabelKind.SOFT,
        output=OutputShape.ROWWISE,
        formula="sum_i y_i (logsumexp(x) - x_i)",
        gradient="dL/dx_i = (sum_j y_j) softmax(x)_i - y_i",
        aliases=("softmax_cross_entropy",),
    ),
    LossSpec(
        name="sparse_softmax_cross_entropy_with_logits",
        inputs=InputKind.LOGITS,
        labels=LabelKind.SPARSE,
        output=OutputShape.ROWWISE,
        formula="logsumexp(x) - x_k",
        gradient="dL/dx_i = softmax(x)_i - [i = k]",
        aliases=("softmax_cross_entropy_with_integer_labels",),
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
