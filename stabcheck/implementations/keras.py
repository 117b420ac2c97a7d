"""Keras 3's cross-entropy functions, on each Keras backend that is installed.

``keras.losses.binary_crossentropy``, ``categorical_crossentropy`` and
``sparse_categorical_crossentropy`` (the functions, which return unreduced per-sample
losses) are registered as ``keras[<backend>].<function>`` for two losses each: the
probability loss of the same name with ``from_logits=False``, and the matching logit loss
with ``from_logits=True``:

=================================== ================================== =====================
name                                ``from_logits=False``              ``from_logits=True``
=================================== ================================== =====================
``keras[B].binary_crossentropy``    ``binary_crossentropy``            ``sigmoid_cross_...``
``keras[B].categorical_...``        ``categorical_crossentropy``       ``softmax_cross_...``
``keras[B].sparse_categorical_...`` ``sparse_categorical_crossentropy`` ``sparse_softmax_...``
=================================== ================================== =====================

for ``B`` in ``tensorflow``, ``jax`` and ``torch``, each taking that framework's arrays
(``backend=B``); gradients come from that framework's autodiff.

``keras.losses.binary_crossentropy`` averages over the last axis; the stabcheck loss is
elementwise, so every element is made a sample of its own: the predictions and labels are
given a trailing axis of length 1 (``keras.ops.expand_dims(..., -1)``), and the mean over
that axis is the element's loss itself (on the jax and torch backends Keras computes that
mean in float32 for float64 input, as it does for any mean, so float64 results there carry
float32 accuracy: a finding of the audit, not of the reshape).

Options (the catalogue's, ``stabcheck.losses``), declared in ``params=`` and ``choices=``:

- ``label_smoothing`` for ``binary_crossentropy`` and ``categorical_crossentropy`` (both
  ``from_logits``), passed on: Keras smooths to ``(1 - e) z + e / 2`` and ``(1 - e) y +
  e / C``, the catalogue's definitions (its sparse function has no smoothing);
- ``ignore_index`` for ``sparse_categorical_crossentropy``, passed on as ``ignore_class``:
  Keras replaces an ignored row's predictions by 0 before the loss and its loss by 0 after
  (``ops.where``), so the row gives 0 and gradient 0 whatever it holds, NaN and inf
  included (measured on all three backends);
- ``reduction`` ``none``, ``sum`` and ``sum_over_batch_size``, through the Loss classes
  (``keras.losses.BinaryCrossentropy(reduction=..., from_logits=..., ...)`` and so on),
  given ``dtype=`` the input's, since by default they compute in ``keras.config.floatx()``
  (float32) whatever the input. ``sum_over_batch_size`` with ``ignore_class`` weighs each
  kept row by ``total / valid`` and divides the sum by ``total``: the catalogue's ``sum /
  valid`` with two more roundings, and 0 when every row is ignored (``divide_no_nan``), as
  the catalogue defines it. Keras' ``mean`` is the same; PyTorch's ``mean``, the
  catalogue's, gives NaN there, so ``mean`` is not declared.

What the Loss classes add, measured with Keras 3.15.1: ``Loss.__call__`` converts the
labels to the loss's dtype, so in bfloat16 an integer label above 256 becomes another class
(257 is read as 256; float16 is exact up to 2048); and on the torch backend
``sum_over_batch_size`` returns float32 for float64 input, its ``divide_no_nan`` promoting
through ``keras.backend.result_type``, which maps 64-bit types to 32-bit ones on every
backend but tensorflow (the gradient with ``ignore_class`` carries a float32 quotient too;
jax's ``divide_no_nan`` does not promote).

The Keras backend is chosen once, when ``keras`` is first imported, from the environment
variable ``KERAS_BACKEND``. Each function sets it just before importing keras (and puts
the variable back afterwards); if keras is already imported with another backend it raises
``AdapterUnavailable`` saying so. The audit runs every implementation family in a forked
child process of its own, so each family gets the backend it names, as long as the parent
has not imported keras. Nothing is imported when this module is imported.

What the Keras source does with probabilities (``from_logits=False``), on every backend,
declared in ``documented=``: it clips them to ``[epsilon, 1 - epsilon]`` with
``epsilon = keras.config.epsilon()`` (``1e-7``), rounded to the input format, so that
``-log p`` stops at ``-log(1e-7) = 16.118`` (measured: 15.945 in float16, where ``1e-7``
rounds to ``2^-23``, and 16.125 in bfloat16; ``1 - 1e-7`` rounds to ``1 - 2^-23`` in
float32 and to 1 in float16 and bfloat16, which therefore have no upper clip). The
categorical and sparse forms renormalise: they divide the probabilities by their sum over
the classes ("so that the probability of each class for every sample adds up to 1"), which
the oracle does not (it uses the probabilities as given), so their gradient is
``-y_i / p_i + sum(y) / sum(p)``. The tensorflow backend's sparse form clips first and then
takes ``tf.nn.sparse_softmax_cross_entropy_with_logits`` of the logs, which renormalises
the clipped probabilities; the others renormalise, then clip.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

from stabcheck.errors import AdapterUnavailable
from stabcheck.implementations import Implementation, register
from stabcheck.implementations.backends import installed, require

KERAS_BACKENDS = ("tensorflow", "jax", "torch")

# Checked on CPU with Keras 3.15 (tests/adapters/test_keras.py and the audit): every backend
# takes all four formats and returns the input dtype, except JAX's two sparse functions, whose
# one-hot labels are float32 (float64 under x64, which the audit turns on for float64 cases
# only) and promote the result: float16 and bfloat16 come back as float32.
# The audit notes the returned dtype.
FORMATS = {
    "tensorflow": ("float64", "float32", "float16", "bfloat16"),
    "jax": ("float64", "float32", "float16", "bfloat16"),
    "torch": ("float64", "float32", "float16", "bfloat16"),
}

CLIPPED = (
    "clips probabilities to [1e-7, 1 - 1e-7] (keras.config.epsilon()) in the input format: "
    "-log p stops at 16.118 (15.945 in float16, where 1e-7 rounds to 2^-23; 16.125 in "
    "bfloat16), -log(1 - p) at 16.118 in float64 and 15.942 in float32 (where 1 - 1e-7 "
    "rounds to 1 - 2^-23); in float16 and bfloat16 1 - 1e-7 rounds to 1: no upper clip"
)
TORCH_CLAMP = (
    "; torch.nn.functional.binary_cross_entropy, which Keras calls on the torch backend, "
    "clamps log at -100 (documented by PyTorch)"
)
CLIP_MOVES = (
    "clipping probabilities to [1e-7, 1 - 1e-7] (keras.config.epsilon()) moves the loss "
    "wherever p < 1e-7 or p > 1 - 1e-7: a loss of 0 at p = z = 1 becomes -log(1 - 1e-7)"
)
RENORMALISES = (
    "renormalises: divides the probabilities by their sum over the classes (so the gradient "
    "is -y_i / p_i + sum(y) / sum(p), not -y_i / p_i), then clips them to [1e-7, 1 - 1e-7] "
    "(keras.config.epsilon())"
)
RENORMALISES_TF = (
    "renormalises: clips the probabilities to [1e-7, 1 - 1e-7] (keras.config.epsilon()), then "
    "takes tf.nn.sparse_softmax_cross_entropy_with_logits of their logs, which divides them "
    "by their sum over the classes (so the gradient is -[i = k] / p_k + 1 / sum(p))"
)


def keras_for(backend: str) -> Any:
    """``keras`` imported with the Keras backend ``backend`` (``KERAS_BACKEND`` is set for
    the import); ``AdapterUnavailable`` if keras is already imported with another one."""
    loaded = sys.modules.get("keras")
    if loaded is None:
        require(backend)
        previous = os.environ.get("KERAS_BACKEND")
        os.environ["KERAS_BACKEND"] = backend
        try:
            loaded = require("keras")
        finally:
            if previous is None:
                os.environ.pop("KERAS_BACKEND", None)
            else:
                os.environ["KERAS_BACKEND"] = previous
    actual = loaded.backend.backend()
    if actual != backend:
        raise AdapterUnavailable(
            f"keras is already imported in this process with the {actual!r} backend, but "
            f"keras[{backend}] needs the {backend!r} backend, which Keras fixes when it is "
            f"first imported; run keras[{backend}] in a fresh process (the audit runs each "
            "implementation family in a child process of its own, so do not import keras "
            f"in the process that starts the audit), or set KERAS_BACKEND={backend} before "
            "keras is imported"
        )
    return loaded


def loss_class(function: str) -> str:
    """The name of the Loss class of a Keras loss function: ``binary_crossentropy`` ->
    ``BinaryCrossentropy``."""
    return "".join(word.title() for word in function.split("_"))


def _reduced(keras: Any, function: str, reduction: str, y: Any, x: Any, **kwargs: Any) -> Any:
    """``keras.losses.<Class>(reduction=reduction, dtype=<x's dtype>, **kwargs)(y, x)``, the
    Loss class of ``function``: it reduces, computing in the input's dtype (by default it
    would compute in ``keras.config.floatx()``, float32)."""
    dtype = keras.backend.standardize_dtype(x.dtype)
    loss = getattr(keras.losses, loss_class(function))
    return loss(reduction=reduction, dtype=dtype, **kwargs)(y, x)


def _binary(backend: str, from_logits: bool) -> Callable[..., Any]:
    def fn(x: Any, z: Any, label_smoothing: float = 0.0, reduction: str | None = None) -> Any:
        keras = keras_for(backend)
        # each element its own sample: the mean over the new axis of length 1 is the element
        z, x = keras.ops.expand_dims(z, -1), keras.ops.expand_dims(x, -1)
        options = {"from_logits": from_logits, "label_smoothing": label_smoothing}
        if reduction is None:
            return keras.losses.binary_crossentropy(z, x, **options)
        return _reduced(keras, "binary_crossentropy", reduction, z, x, **options)

    return fn


def _categorical(backend: str, from_logits: bool) -> Callable[..., Any]:
    def fn(x: Any, y: Any, label_smoothing: float = 0.0, reduction: str | None = None) -> Any:
        keras = keras_for(backend)
        options = {"from_logits": from_logits, "label_smoothing": label_smoothing}
        if reduction is None:
            return keras.losses.categorical_crossentropy(y, x, **options)
        return _reduced(keras, "categorical_crossentropy", reduction, y, x, **options)

    return fn


def _sparse(backend: str, from_logits: bool) -> Callable[..., Any]:
    def fn(x: Any, k: Any, ignore_index: int | None = None, reduction: str | None = None) -> Any:
        keras = keras_for(backend)
        options = {"from_logits": from_logits, "ignore_class": ignore_index}
        if reduction is None:
            return keras.losses.sparse_categorical_crossentropy(k, x, **options)
        return _reduced(keras, "sparse_categorical_crossentropy", reduction, k, x, **options)

    return fn


def _repro(function: str, from_logits: bool) -> Callable[[Any], str]:
    """The call as a script writes it (``stabcheck.repro``): the function, or its Loss class
    with ``dtype=`` the input's where the case has a reduction; binary inputs given a
    trailing axis, as ``_binary`` does."""
    y, x = ("y", "x")
    if function == "binary_crossentropy":
        y, x = "keras.ops.expand_dims(y, -1)", "keras.ops.expand_dims(x, -1)"
    options = f"from_logits={from_logits}{{options}}"

    def template(case: Any) -> str:
        if "reduction" in case.params:
            return (f"keras.losses.{loss_class(function)}(reduction={{reduction}}, "
                    f"dtype={{dtype}}, {options})({y}, {x})")  # fmt: skip
        return f"keras.losses.{function}({y}, {x}, {options})"

    return template


# (keras function, its factory, the loss with from_logits=False, with from_logits=True,
# the catalogue's options it takes)
FUNCTIONS = (
    (
        "binary_crossentropy",
        _binary,
        "binary_crossentropy",
        "sigmoid_cross_entropy_with_logits",
        ("label_smoothing", "reduction"),
    ),
    (
        "categorical_crossentropy",
        _categorical,
        "categorical_crossentropy",
        "softmax_cross_entropy_with_logits",
        ("label_smoothing", "reduction"),
    ),
    (
        "sparse_categorical_crossentropy",
        _sparse,
        "sparse_categorical_crossentropy",
        "sparse_softmax_cross_entropy_with_logits",
        ("ignore_index", "reduction"),
    ),
)
# Keras' reductions that are the catalogue's: its "mean" is sum_over_batch_size again (0,
# not NaN, when every row is ignored), not PyTorch's
REDUCTIONS = ("none", "sum", "sum_over_batch_size")


def _documented(backend: str, function: str, from_logits: bool) -> dict[str, str]:
    """What the Keras source says it does (the statuses it explains): nothing for logits."""
    if from_logits:
        return {}
    if function == "binary_crossentropy":
        clipped = CLIPPED + (TORCH_CLAMP if backend == "torch" else "")
        return {"clipped": clipped, "inaccurate": CLIP_MOVES}
    if function == "sparse_categorical_crossentropy" and backend == "tensorflow":
        return {"clipped": CLIPPED, "inaccurate": RENORMALISES_TF}
    return {"clipped": CLIPPED, "inaccurate": RENORMALISES}


def _register() -> None:
    for backend in KERAS_BACKENDS:
        if not installed(backend):
            continue
        for function, factory, probability_loss, logit_loss, params in FUNCTIONS:
            options = "label_smoothing" if "label_smoothing" in params else "ignore_class"
            for loss, from_logits in ((probability_loss, False), (logit_loss, True)):
                register(
                    Implementation(
                        name=f"keras[{backend}].{function}",
                        loss=loss,
                        fn=factory(backend, from_logits),
                        backend=backend,
                        formats=FORMATS[backend],
                        library="keras",
                        description=(
                            f"keras.losses.{function}(labels, predictions, "
                            f"from_logits={from_logits}) on the {backend} backend"
                            + (", each element a sample" if function.startswith("b") else "")
                            + f"; {options} passed on; a reduction through keras.losses."
                            f"{loss_class(function)}(reduction=..., dtype=<the input's>)"
                        ),
                        requires=("keras", backend),
                        documented=_documented(backend, function, from_logits),
                        params=params,
                        choices={"reduction": REDUCTIONS},
                        repro=_repro(function, from_logits),
                    )
                )


_register()
