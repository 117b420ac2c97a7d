"""``sklearn.metrics.log_loss`` per sample (numpy backend, no gradients).

One call per element or row with ``normalize=False``, which returns that sample's loss:

- binary_crossentropy: ``log_loss([z], [p], normalize=False, labels=[0, 1])`` per element;
- categorical_crossentropy: ``log_loss([y], [p], normalize=False)`` per row, the label row
  as a label indicator matrix of one row (one-hot or multi-hot);
- sparse_categorical_crossentropy: ``log_loss([k], [p], normalize=False, labels=range(C))``.

``log_loss`` takes class labels, not soft targets: sklearn itself refuses a target other than
0 and 1 and a label row that is not 0/1 (with messages about "labels" and "label
binarization"); the adapter raises a ``ValueError`` that says so before calling it, and the
audit records the case as ``error``. It also refuses NaN probabilities and rows of one class.

What the installed scikit-learn does (measured with 1.9.1; older versions differ): the
probabilities are clipped to ``[eps, 1 - eps]`` with ``eps = numpy.finfo(dtype).eps``
(``eps="auto"``, the only behaviour since 1.5; before 1.3 the default was ``1e-15``), so a
loss is at most ``-log(eps)`` and at least ``-log(1 - eps)``; rows that do not sum to 1
within ``sqrt(eps)`` give a ``UserWarning`` (silenced here) and are used as given, not
renormalised. float64, float32 and float16 are computed in their own dtype (the binary form
as ``log(1 - p)``, ``1 - p`` rounded first); bfloat16, which ``check_array`` does not accept
as a float dtype, is converted to float64 and clipped at float64's eps, and its losses come
back as float64.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from stabcheck.implementations import Implementation, register
from stabcheck.implementations.backends import require

Array = np.ndarray
Fn = Callable[..., Array]

CLIPPED = (
    "log_loss clips probabilities to [eps, 1 - eps], eps = numpy.finfo(dtype).eps "
    "(2**-52 in float64, so a loss of at most 36.04; 2**-23 in float32, 15.94; 2**-10 in "
    "float16, 6.93; bfloat16 goes to float64 first), as documented"
)
REFUSED = (
    "log_loss takes class labels (targets 0 or 1, 0/1 label rows, two or more classes) and "
    "finite probabilities; it raises ValueError otherwise, as documented"
)


def _log_loss() -> Callable[..., float]:
    return require("sklearn.metrics").log_loss


def _dtype(predictions: Array) -> np.dtype:
    """The dtype log_loss computes in and its losses are returned in: the input's, except
    bfloat16, which ``check_array`` converts to float64."""
    dtype = predictions.dtype
    return dtype if dtype in (np.float64, np.float32, np.float16) else np.dtype(np.float64)


def _per_sample(log_loss: Callable[..., float], samples: Any, **kwargs: Any) -> list[float]:
    """``log_loss(y_true, y_proba, normalize=False, **kwargs)`` of each sample, with its
    warnings (rows not summing to one) silenced."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        return [log_loss(t, p, normalize=False, **kwargs) for t, p in samples]


def _hard(labels: Array, what: str) -> None:
    values = labels.astype(np.float64)
    soft = ~((values == 0) | (values == 1))
    if soft.any():
        index = tuple(int(i) for i in np.argwhere(soft)[0])
        raise ValueError(
            f"sklearn.metrics.log_loss takes class labels, not soft ones: labels"
            f"[{', '.join(map(str, index))}]={float(values[index])!r}; it accepts {what}"
        )


def log_loss_binary(p: Array, z: Array) -> Array:
    log_loss = _log_loss()
    _hard(z, "binary targets 0 and 1 only")
    samples = (([int(t)], np.asarray([q])) for t, q in zip(z.ravel(), p.ravel(), strict=True))
    losses = _per_sample(log_loss, samples, labels=[0, 1])
    return np.asarray(losses, dtype=_dtype(p)).reshape(p.shape)


def log_loss_categorical(p: Array, y: Array) -> Array:
    log_loss = _log_loss()
    _hard(y, "one-hot or multi-hot 0/1 label rows only")
    samples = ((row[None, :].astype(np.int64), q[None, :]) for row, q in zip(y, p, strict=True))
    return np.asarray(_per_sample(log_loss, samples), dtype=_dtype(p))


def log_loss_sparse_categorical(p: Array, k: Array) -> Array:
    log_loss = _log_loss()
    samples = (([int(t)], q[None, :]) for t, q in zip(k, p, strict=True))
    losses = _per_sample(log_loss, samples, labels=list(range(p.shape[1])))
    return np.asarray(losses, dtype=_dtype(p))


def _hard_only(template: str) -> Callable[[Any], str | None]:
    """``template``, or None where the case has soft labels (the adapter refuses them
    before calling log_loss)."""

    def repro(case: Any) -> str | None:
        labels = case.labels.astype(np.float64)
        return template if ((labels == 0) | (labels == 1)).all() else None

    return repro


# How a script calls log_loss (stabcheck.repro): per sample, as the functions above do
LOG_LOSS = "sklearn.metrics.log_loss"
REPROS: dict[str, str | Callable[[Any], str | None]] = {
    "binary_crossentropy": _hard_only(
        f"[{LOG_LOSS}([int(t)], q, normalize=False, labels=[0, 1]) "
        "for t, q in zip(y.ravel(), x.reshape(-1, 1))]"
    ),
    "categorical_crossentropy": _hard_only(
        f"[{LOG_LOSS}(t[None, :].astype(np.int64), q[None, :], normalize=False) "
        "for t, q in zip(y, x)]"
    ),
    "sparse_categorical_crossentropy": (
        f"[{LOG_LOSS}([int(t)], q[None, :], normalize=False, labels=list(range({{classes}}))) "
        "for t, q in zip(y, x)]"
    ),
}

_LOSSES: dict[str, tuple[str, Fn]] = {
    "binary_crossentropy": (
        "log_loss([z], [p], normalize=False, labels=[0, 1]) per element; hard targets 0 and 1",
        log_loss_binary,
    ),
    "categorical_crossentropy": (
        "log_loss([y], [p], normalize=False) per row, y a 0/1 indicator row; no soft labels",
        log_loss_categorical,
    ),
    "sparse_categorical_crossentropy": (
        "log_loss([k], [p], normalize=False, labels=range(C)) per row",
        log_loss_sparse_categorical,
    ),
}

for _loss, (_what, _fn) in _LOSSES.items():
    register(
        Implementation(
            "sklearn.log_loss",
            _loss,
            _fn,
            backend="numpy",
            library="sklearn",
            description=(
                f"sklearn.metrics.log_loss: {_what}; probabilities clipped to [eps, 1 - eps], "
                "eps = finfo(dtype).eps, not renormalised; bfloat16 computed in float64"
            ),
            requires=("sklearn",),
            documented={"clipped": CLIPPED, "error": REFUSED},
            repro=REPROS[_loss],
        )
    )
