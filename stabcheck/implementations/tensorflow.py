"""TensorFlow's cross-entropy functions in ``tf.nn``, one implementation each, registered
under their TensorFlow names for the stabcheck loss of the same name:

- ``tf.nn.sigmoid_cross_entropy_with_logits`` (``sigmoid_cross_entropy_with_logits``),
- ``tf.nn.weighted_cross_entropy_with_logits`` (``weighted_cross_entropy_with_logits``,
  ``pos_weight`` passed on as a Python float),
- ``tf.nn.softmax_cross_entropy_with_logits`` (``softmax_cross_entropy_with_logits``),
- ``tf.nn.sparse_softmax_cross_entropy_with_logits``
  (``sparse_softmax_cross_entropy_with_logits``, int64 labels).

Each takes TensorFlow tensors of the case's dtype (``backend="tensorflow"``) and returns the
unreduced losses; gradients come from ``tf.GradientTape``. TensorFlow is imported when a
function is first called, never when this module is imported.

Options: of the catalogue's, ``tf.nn`` has only ``pos_weight`` (the weighted loss's required
option, so declared by default); none of the four takes label smoothing, class weights, an
ignored label or a reduction (checked on TensorFlow 2.21). Those live in Keras
(``keras[tensorflow].*``, ``stabcheck.implementations.keras``) and in the TF1 API
``tf.compat.v1.losses`` (``softmax_cross_entropy`` and ``sigmoid_cross_entropy`` with
``label_smoothing``, ``reduction``), not audited here: its ``compute_weighted_loss`` casts the
losses to float32, so float64 comes back with float32 accuracy (measured: 6e7 to 4e8 ULPs).

Formats: all four (float64, float32, float16, bfloat16) run on CPU and return the input
dtype, values and gradients alike (checked on TensorFlow 2.21; the float16 and bfloat16
kernels of these four ops exist on CPU).
"""

from __future__ import annotations

from typing import Any

from stabcheck.implementations import Implementation, register
from stabcheck.implementations.backends import require

FORMATS = ("float64", "float32", "float16", "bfloat16")  # every one has a CPU kernel


def _tf() -> Any:
    return require("tensorflow")


def sigmoid_cross_entropy_with_logits(x: Any, z: Any) -> Any:
    """tf.nn.sigmoid_cross_entropy_with_logits(labels=z, logits=x)"""
    return _tf().nn.sigmoid_cross_entropy_with_logits(labels=z, logits=x)


def weighted_cross_entropy_with_logits(x: Any, z: Any, pos_weight: float) -> Any:
    """tf.nn.weighted_cross_entropy_with_logits(labels=z, logits=x, pos_weight=q), q a float"""
    return _tf().nn.weighted_cross_entropy_with_logits(
        labels=z, logits=x, pos_weight=float(pos_weight)
    )


def softmax_cross_entropy_with_logits(x: Any, y: Any) -> Any:
    """tf.nn.softmax_cross_entropy_with_logits(labels=y, logits=x), classes on axis -1"""
    return _tf().nn.softmax_cross_entropy_with_logits(labels=y, logits=x)


def sparse_softmax_cross_entropy_with_logits(x: Any, k: Any) -> Any:
    """tf.nn.sparse_softmax_cross_entropy_with_logits(labels=k, logits=x), k int64"""
    return _tf().nn.sparse_softmax_cross_entropy_with_logits(labels=k, logits=x)


def _register() -> None:
    for fn in (
        sigmoid_cross_entropy_with_logits,
        weighted_cross_entropy_with_logits,
        softmax_cross_entropy_with_logits,
        sparse_softmax_cross_entropy_with_logits,
    ):
        register(
            Implementation(
                name=f"tf.nn.{fn.__name__}",
                loss=fn.__name__,
                fn=fn,
                backend="tensorflow",
                formats=FORMATS,
                library="tensorflow",
                description=(fn.__doc__ or "").strip(),
                requires=("tensorflow",),
                repro=f"tf.nn.{fn.__name__}(labels=y, logits=x{{options}})",
            )
        )


_register()
