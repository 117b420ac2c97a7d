"""``scipy.special`` composed into the cross-entropy losses the obvious way, one family per
building block (numpy backend, no gradients: scipy has no autodiff).

Notation as in ``stabcheck.losses``: ``x`` logits, ``p`` probabilities, ``z`` binary or soft
targets, ``y`` a row of soft labels, ``k`` an integer label, ``q`` the ``pos_weight``.

- ``scipy.log_softmax``: softmax ``-sum(y * log_softmax(x, axis=1))``, sparse
  ``-log_softmax(x, axis=1)[k]``.
- ``scipy.logsumexp``: softmax ``sum(y) * logsumexp(x, axis=1) - sum(y * x)``, sparse
  ``logsumexp(x, axis=1) - x[k]``.
- ``scipy.xlogy``: binary ``-(xlogy(z, p) + xlogy(1 - z, 1 - p))``, categorical
  ``-sum(xlogy(y, p))``, sparse categorical ``-log(p[k])`` (numpy's ``log``).
- ``scipy.log_expit``: sigmoid ``-(z log_expit(x) + (1 - z) log_expit(-x))``, weighted
  ``-(q z log_expit(x) + (1 - z) log_expit(-x))``.

Zero times an infinite logarithm: ``xlogy(0, 0) = 0`` is the point of ``xlogy``, so the
``xlogy`` family gives a zero label's term 0 even under ``p = 0`` (and ``1 - z = 0`` under
``p = 1``). Nothing else here has that guard: ``log_softmax`` and ``log_expit`` are finite
for every finite logit, but a ``-inf`` logit under a zero label gives ``0 * -inf = NaN``, as
does ``y * x`` in the ``logsumexp`` form, and a ``+inf`` logit makes ``log_softmax`` compute
``inf - inf``. These are the compositions as a user writes them; the audit measures them.

Formats: every format is passed to scipy as it is, and what scipy returns is returned
(measured with scipy 1.17): the ufuncs ``xlogy`` and ``log_expit`` have float64 and float32
loops only, and numpy picks the float64 loop for float16 and bfloat16, so those families
compute in float64 and return float64 there; ``log_softmax`` computes in the input dtype
(float16 in float16, bfloat16 through ml_dtypes' ufuncs, rounding after every operation);
``logsumexp`` computes float16 in float16. bfloat16, which scipy does not know, depends on
ml_dtypes: with ml_dtypes 0.6 ``logsumexp`` promoted it to float64; from ml_dtypes 0.7 it
raises ``TypeError: dtype argument must be a NumPy dtype`` (its dtype check,
``numpy.isdtype``, takes numpy's own dtypes only). Such a refusal of an ml_dtypes array is
raised as ``UnsupportedFormat``, quoting scipy and naming both versions, so the audit reports
the family as unsupported in that format rather than as an error of its own. The audit notes
the returned dtype where it differs from the input's.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np

from stabcheck.errors import UnsupportedFormat
from stabcheck.implementations import Implementation, register
from stabcheck.implementations.backends import require
from stabcheck.implementations.reference import pick, quiet

Array = np.ndarray
Fn = Callable[..., Array]


def _special() -> Any:
    return require("scipy.special")


def scipy_block(fn: Fn) -> Fn:
    """``quiet(fn)``, with the ``TypeError`` scipy raises on an array of an ml_dtypes format
    (bfloat16) turned into ``UnsupportedFormat``: scipy turning a format down is a fact
    about scipy, not an error of the composition."""
    fn = quiet(fn)

    @functools.wraps(fn)
    def call(x: Array, labels: Array, **params: float) -> Array:
        try:
            return fn(x, labels, **params)
        except TypeError as exc:
            if x.dtype.type.__module__.split(".")[0] != "ml_dtypes":
                raise
            from importlib.metadata import version

            raise UnsupportedFormat(
                f"scipy {version('scipy')} does not take {x.dtype.name} arrays with ml_dtypes "
                f"{version('ml_dtypes')} (TypeError: {exc})"
            ) from exc

    return call


# -- log_softmax -----------------------------------------------------------------------------


@scipy_block
def log_softmax_softmax(x: Array, y: Array) -> Array:
    return -(y * _special().log_softmax(x, axis=1)).sum(axis=1)


@scipy_block
def log_softmax_sparse(x: Array, k: Array) -> Array:
    return -pick(_special().log_softmax(x, axis=1), k)


# -- logsumexp -------------------------------------------------------------------------------


@scipy_block
def logsumexp_softmax(x: Array, y: Array) -> Array:
    return y.sum(axis=1) * _special().logsumexp(x, axis=1) - (y * x).sum(axis=1)


@scipy_block
def logsumexp_sparse(x: Array, k: Array) -> Array:
    return _special().logsumexp(x, axis=1) - pick(x, k)


# -- xlogy -----------------------------------------------------------------------------------


@scipy_block
def xlogy_binary(p: Array, z: Array) -> Array:
    sp = _special()
    return -(sp.xlogy(z, p) + sp.xlogy(1 - z, 1 - p))


@scipy_block
def xlogy_categorical(p: Array, y: Array) -> Array:
    return -_special().xlogy(y, p).sum(axis=1)


@scipy_block
def xlogy_sparse_categorical(p: Array, k: Array) -> Array:
    require("scipy.special")  # the family needs scipy, although this member uses np.log
    return -np.log(pick(p, k))


# -- log_expit -------------------------------------------------------------------------------


@scipy_block
def log_expit_sigmoid(x: Array, z: Array) -> Array:
    sp = _special()
    return -(z * sp.log_expit(x) + (1 - z) * sp.log_expit(-x))


@scipy_block
def log_expit_weighted(x: Array, z: Array, pos_weight: float) -> Array:
    sp = _special()
    return -(pos_weight * z * sp.log_expit(x) + (1 - z) * sp.log_expit(-x))


# -- registration ----------------------------------------------------------------------------

_UPCAST = "float16 and bfloat16 go to scipy's float64 loop and come back as float64"

# How a script calls each composition (stabcheck.repro): the same expression
PICK = "np.take_along_axis({}, y[:, None], axis=-1)[:, 0]"  # row i's entry y[i]
SP = "scipy.special"
REPROS = {
    log_softmax_softmax: f"-(y * {SP}.log_softmax(x, axis=1)).sum(axis=1)",
    log_softmax_sparse: "-" + PICK.format(f"{SP}.log_softmax(x, axis=1)"),
    logsumexp_softmax: f"y.sum(axis=1) * {SP}.logsumexp(x, axis=1) - (y * x).sum(axis=1)",
    logsumexp_sparse: f"{SP}.logsumexp(x, axis=1) - " + PICK.format("x"),
    xlogy_binary: f"-({SP}.xlogy(y, x) + {SP}.xlogy(1 - y, 1 - x))",
    xlogy_categorical: f"-{SP}.xlogy(y, x).sum(axis=1)",
    xlogy_sparse_categorical: "-np.log(" + PICK.format("x") + ")",
    log_expit_sigmoid: f"-(y * {SP}.log_expit(x) + (1 - y) * {SP}.log_expit(-x))",
    log_expit_weighted: (
        f"-({{pos_weight}} * y * {SP}.log_expit(x) + (1 - y) * {SP}.log_expit(-x))"
    ),
}

_FAMILIES: dict[str, tuple[str, dict[str, Fn]]] = {
    "scipy.log_softmax": (
        "-sum(y * scipy.special.log_softmax(x, axis=1)) and -log_softmax(x)[k], in the input "
        "dtype (float16 and bfloat16 too); 0 * -inf = NaN under a -inf logit",
        {
            "softmax_cross_entropy_with_logits": log_softmax_softmax,
            "sparse_softmax_cross_entropy_with_logits": log_softmax_sparse,
        },
    ),
    "scipy.logsumexp": (
        "sum(y) * scipy.special.logsumexp(x, axis=1) - sum(y * x) and logsumexp(x) - x[k]; "
        "float16 computes in float16; bfloat16 is promoted to float64 with ml_dtypes 0.6 and "
        "turned down (unsupported) from ml_dtypes 0.7",
        {
            "softmax_cross_entropy_with_logits": logsumexp_softmax,
            "sparse_softmax_cross_entropy_with_logits": logsumexp_sparse,
        },
    ),
    "scipy.xlogy": (
        "-(xlogy(z, p) + xlogy(1 - z, 1 - p)), -sum(xlogy(y, p)) and -log(p[k]) with "
        f"scipy.special.xlogy (xlogy(0, 0) = 0); {_UPCAST} (np.log of p[k] stays in the dtype)",
        {
            "binary_crossentropy": xlogy_binary,
            "categorical_crossentropy": xlogy_categorical,
            "sparse_categorical_crossentropy": xlogy_sparse_categorical,
        },
    ),
    "scipy.log_expit": (
        "-(q z log_expit(x) + (1 - z) log_expit(-x)) with scipy.special.log_expit (q = 1 for "
        f"sigmoid); 0 * -inf = NaN at infinite logits; {_UPCAST}",
        {
            "sigmoid_cross_entropy_with_logits": log_expit_sigmoid,
            "weighted_cross_entropy_with_logits": log_expit_weighted,
        },
    ),
}

for _name, (_description, _table) in _FAMILIES.items():
    for _loss, _fn in _table.items():
        register(
            Implementation(
                _name,
                _loss,
                _fn,
                backend="numpy",
                library="scipy",
                description=_description,
                requires=("scipy",),
                repro=REPROS[_fn],
            )
        )
