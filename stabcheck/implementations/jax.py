"""JAX and optax cross-entropies as auditable implementations (``backend="jax"``).

Registered at import, each importing ``jax`` (and ``optax``) only when called, through
``backends.require``:

- ``optax.softmax_cross_entropy``: ``softmax_cross_entropy_with_logits``;
- ``optax.softmax_cross_entropy_with_integer_labels``:
  ``sparse_softmax_cross_entropy_with_logits``;
- ``optax.safe_softmax_cross_entropy``: ``softmax_cross_entropy_with_logits``;
- ``optax.sigmoid_binary_cross_entropy``: ``sigmoid_cross_entropy_with_logits``;
- ``optax.sigmoid_focal_loss``: ``sigmoid_focal_loss``;
- ``jax.nn.log_softmax``, composed by hand: ``-sum(y * log_softmax(x))`` for
  ``softmax_cross_entropy_with_logits`` and ``-take_along_axis(log_softmax(x), k)`` for
  ``sparse_softmax_cross_entropy_with_logits``.

Options (the catalogue's, ``stabcheck.losses``), each declared in ``params=``:

- ``label_smoothing`` e for ``optax.softmax_cross_entropy`` and
  ``optax.safe_softmax_cross_entropy``: the labels go through ``optax.smooth_labels(labels,
  e)`` first, ``(1 - e) y + e / C``, the catalogue's definition. The integer-label function
  takes no smoothing (smoothing needs the one-hot labels, and ``softmax_cross_entropy`` of
  smoothed one-hot rows is what the soft-label implementation already audits), and optax has
  no binary smoothing (``smooth_labels`` of a binary target gives ``e / C``, not ``e / 2``).
- ``ignore_index`` for ``optax.softmax_cross_entropy_with_integer_labels``: its ``where=``
  argument (optax 0.2.4 on) excludes the rows whose label is ``ignore_index``; optax returns
  0 there (``jnp.where(jnp.any(where, axis), out, 0.0)``), with gradient 0 even when their
  logits are NaN or infinite, and a label out of range (-100) is never read.
- ``alpha`` and ``gamma`` for ``optax.sigmoid_focal_loss``, by the same names (an absent
  ``alpha`` is optax's default ``None``, no weighting; ``gamma`` defaults to 2 in both).
- No ``reduction``: optax's losses return unreduced losses and take no reduction argument.

Every one runs in all four formats on CPU (measured with jax 0.10.2 and optax 0.2.8: each
returns, and differentiates to, the dtype of its input, bfloat16 included), so they declare
``float64``, ``float32``, ``float16`` and ``bfloat16``.

Note on float64: JAX computes in float32 unless ``jax_enable_x64`` is on, and says nothing
about it: ``jnp.asarray`` of a float64 numpy array silently gives a float32 array (only an
explicit ``dtype=jnp.float64`` warns), and the loss comes back as float32. Measured without
x64 against the float64 oracle, ``optax.softmax_cross_entropy_with_integer_labels`` of
``[[0.1, 0.2, 0.3]]``, label 0, gives ``0x1.33b286p+0`` where the correctly rounded float64
loss is ``0x1.33b286c8ce420p+0``: 210,560,032 ULPs (27.6 bits of error); on 8 rows of 5
logits uniform in [-10, 10] the median is 2.2e8 ULPs and the worst 1.3e12 ULPs (a loss of
0.0018 that cancels: relative error 1.6e-4). The audit turns x64 on for the calls on float64 cases
only (``backends._jax``, call by call, whatever ran before), so float64 rows measure JAX's
float64 arithmetic, not this default, and the other formats JAX's default.

Measured behaviour at infinities (reverse mode, ``jax.grad``, as the audit differentiates):
a ``-inf`` logit under a zero label gets exactly 0 gradient from every softmax form here,
but ``optax.softmax_cross_entropy`` and ``-sum(y * log_softmax(x))`` return a NaN *loss*
there (``0 * -inf``), as they do when ``x_i - max(x)`` overflows to ``-inf`` on finite
logits; ``optax.safe_softmax_cross_entropy`` returns the right loss (but its custom JVP
gives NaN in forward mode, ``jax.jacfwd``, on such a row: ``weights_dot * log_softmax``
with the latter ``-inf``; the audit, in reverse mode, does not see it). A row holding ``+inf``
gives NaN losses and gradients in every softmax form (documented for ``jax.nn.log_softmax``),
and ``optax.sigmoid_binary_cross_entropy`` returns NaN for any infinite logit, even with an
agreeing label (``0 * log_sigmoid(-inf)``), though its gradient there is exactly 0.

``optax.sigmoid_focal_loss`` inherits ``sigmoid_binary_cross_entropy``'s NaN at infinite
logits and adds its own: measured in float32, a +-inf logit gives a NaN loss under an
agreeing label (exact: 0) and a NaN gradient under any label (exact: 0 under an agreeing
label, ``+-a_t`` under a disagreeing one, whose loss is +inf as it should be).

XLA on CPU flushes subnormals to zero in arithmetic (``jnp.float32(1e-39) * 2`` is 0): a
subnormal label counts as 0 (``optax.sigmoid_binary_cross_entropy`` of ``x = -0x1.fffffep+127``
with ``z = 0x1.fffffcp-127`` returns 0 where the loss is 4.0) and subnormal results become 0,
which the audit reports as underflow.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from stabcheck.implementations import Implementation, register
from stabcheck.implementations.backends import require

SOFTMAX = "softmax_cross_entropy_with_logits"
SPARSE = "sparse_softmax_cross_entropy_with_logits"
SIGMOID = "sigmoid_cross_entropy_with_logits"
FOCAL = "sigmoid_focal_loss"

FORMATS = ("float64", "float32", "float16", "bfloat16")
X64 = "float64 is audited with jax_enable_x64 on (by default JAX silently computes it in float32)"


def _smoothed(labels: Any, label_smoothing: float | None) -> Any:
    """``optax.smooth_labels(labels, e)``, ``(1 - e) y + e / C``, when ``e`` is given."""
    if label_smoothing is None:
        return labels
    return require("optax").smooth_labels(labels, label_smoothing)


def optax_softmax_cross_entropy(
    logits: Any, labels: Any, label_smoothing: float | None = None
) -> Any:
    """``optax.softmax_cross_entropy(logits, optax.smooth_labels(labels, e))``:
    ``-(t * log_softmax(x)).sum(-1)``, ``t = (1 - e) y + e / C`` (``t = y`` without ``e``)."""
    return require("optax").softmax_cross_entropy(logits, _smoothed(labels, label_smoothing))


def optax_softmax_cross_entropy_with_integer_labels(
    logits: Any, labels: Any, ignore_index: int | None = None
) -> Any:
    """``optax.softmax_cross_entropy_with_integer_labels(logits, labels, where=labels !=
    ignore_index)``: ``logsumexp(x) - x_k``, 0 on the rows ``where`` excludes."""
    optax = require("optax")
    if ignore_index is None:
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    keep = labels != ignore_index
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels, where=keep)


def optax_safe_softmax_cross_entropy(
    logits: Any, labels: Any, label_smoothing: float | None = None
) -> Any:
    """``optax.safe_softmax_cross_entropy(logits, optax.smooth_labels(labels, e))``: zero
    targets contribute 0 (0 log 0 = 0), with a custom JVP."""
    return require("optax").safe_softmax_cross_entropy(logits, _smoothed(labels, label_smoothing))


def optax_sigmoid_binary_cross_entropy(logits: Any, labels: Any) -> Any:
    """``optax.sigmoid_binary_cross_entropy``: ``-z log_sigmoid(x) - (1 - z) log_sigmoid(-x)``."""
    return require("optax").sigmoid_binary_cross_entropy(logits, labels)


def optax_sigmoid_focal_loss(
    logits: Any, labels: Any, alpha: float | None = None, gamma: float = 2.0
) -> Any:
    """``optax.sigmoid_focal_loss(logits, labels, alpha=alpha, gamma=gamma)``:
    ``a_t (1 - p_t)^gamma CE(x, z)``, ``a_t = alpha z + (1 - alpha)(1 - z)`` (1 without
    ``alpha``)."""
    return require("optax").sigmoid_focal_loss(logits, labels, alpha=alpha, gamma=gamma)


def log_softmax_soft(logits: Any, labels: Any) -> Any:
    """``-sum(y * jax.nn.log_softmax(x), axis=-1)``, composed by hand."""
    jax, jnp = require("jax"), require("jax.numpy")
    return -jnp.sum(labels * jax.nn.log_softmax(logits, axis=-1), axis=-1)


def log_softmax_sparse(logits: Any, labels: Any) -> Any:
    """``-take_along_axis(jax.nn.log_softmax(x), k)``, composed by hand."""
    jax, jnp = require("jax"), require("jax.numpy")
    log_p = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.take_along_axis(log_p, labels[:, None], axis=-1)[:, 0]


# jax.nn.log_softmax's docstring; the sparse form returns NaN for no other reason, while the
# soft forms also give NaN for 0 * (-inf), which no documentation mentions
LOG_SOFTMAX_NAN = "jax.nn.log_softmax: 'If any input values are +inf, the result will be all NaN'"


def _smoothing(function: str) -> Callable[[Any], str]:
    """The call as a script writes it (``stabcheck.repro``): the labels through
    ``optax.smooth_labels`` where the case has ``label_smoothing``."""

    def template(case: Any) -> str:
        if "label_smoothing" in case.params:
            return f"optax.{function}(x, optax.smooth_labels(y, {{label_smoothing}}))"
        return f"optax.{function}(x, y)"

    return template


def _where(case: Any) -> str:
    """``where=`` the rows not ignored, where the case has ``ignore_index``."""
    where = ", where=y != {ignore_index}" if "ignore_index" in case.params else ""
    return f"optax.softmax_cross_entropy_with_integer_labels(x, y{where})"


def _register(
    name: str,
    loss: str,
    fn: Any,
    library: str,
    description: str,
    documented: dict[str, str] | None = None,
    params: tuple[str, ...] = (),
    repro: str | Callable[[Any], str] | None = None,
) -> None:
    requires = ("jax", "optax") if library == "optax" else ("jax",)
    register(
        Implementation(
            name=name,
            loss=loss,
            fn=fn,
            backend="jax",
            formats=FORMATS,
            library=library,
            description=f"{description}; {X64}",
            requires=requires,
            documented=documented or {},
            params=params,
            repro=repro,
        )
    )


_register(
    "optax.softmax_cross_entropy",
    SOFTMAX,
    optax_softmax_cross_entropy,
    "optax",
    "optax.softmax_cross_entropy(logits, labels): -sum(labels * log_softmax(logits)); "
    "label_smoothing e: labels = optax.smooth_labels(labels, e) first",
    params=("label_smoothing",),
    repro=_smoothing("softmax_cross_entropy"),
)
_register(
    "optax.softmax_cross_entropy_with_integer_labels",
    SPARSE,
    optax_softmax_cross_entropy_with_integer_labels,
    "optax",
    "optax.softmax_cross_entropy_with_integer_labels(logits, labels): logsumexp(x) - x_k; "
    "ignore_index: where=labels != ignore_index",
    params=("ignore_index",),
    repro=_where,
)
_register(
    "optax.safe_softmax_cross_entropy",
    SOFTMAX,
    optax_safe_softmax_cross_entropy,
    "optax",
    "optax.safe_softmax_cross_entropy(logits, labels): zero labels give 0 even under -inf "
    "logits, custom JVP; label_smoothing e: labels = optax.smooth_labels(labels, e) first",
    params=("label_smoothing",),
    repro=_smoothing("safe_softmax_cross_entropy"),
)
_register(
    "optax.sigmoid_binary_cross_entropy",
    SIGMOID,
    optax_sigmoid_binary_cross_entropy,
    "optax",
    "optax.sigmoid_binary_cross_entropy(logits, labels): "
    "-z log_sigmoid(x) - (1 - z) log_sigmoid(-x)",
    repro="optax.sigmoid_binary_cross_entropy(x, y)",
)
_register(
    "optax.sigmoid_focal_loss",
    FOCAL,
    optax_sigmoid_focal_loss,
    "optax",
    "optax.sigmoid_focal_loss(logits, labels, alpha=alpha, gamma=gamma): "
    "a_t (1 - p_t)^gamma CE(x, z); alpha absent: None (no weighting)",
    params=("alpha", "gamma"),
    repro="optax.sigmoid_focal_loss(x, y{options})",
)
_register(
    "jax.nn.log_softmax",
    SOFTMAX,
    log_softmax_soft,
    "jax",
    "-sum(y * jax.nn.log_softmax(x, axis=-1), axis=-1), composed by hand",
    repro="-jnp.sum(y * jax.nn.log_softmax(x, axis=-1), axis=-1)",
)
_register(
    "jax.nn.log_softmax",
    SPARSE,
    log_softmax_sparse,
    "jax",
    "-take_along_axis(jax.nn.log_softmax(x, axis=-1), k), composed by hand",
    documented={"nan": LOG_SOFTMAX_NAN},
    repro="-jnp.take_along_axis(jax.nn.log_softmax(x, axis=-1), y[:, None], axis=-1)[:, 0]",
)
