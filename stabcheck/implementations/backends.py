"""Array backends: a ``Case``'s inputs as numpy, torch, TensorFlow or JAX arrays of the
case's format, the call, the gradient from the backend's own autodiff (of the summed
loss with respect to the predictions, and to the operands of the linear losses, which
go in as keyword arguments), and the results back as float64 numpy arrays with the name
of the dtype the backend returned.

Frameworks are imported here only when a call needs them, through ``require``, which
names the extra to install when one is missing.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import numpy as np

from stabcheck.case import Case
from stabcheck.errors import AdapterUnavailable
from stabcheck.formats import FORMATS

EXTRAS = {"torch": "torch", "tensorflow": "tensorflow", "jax": "jax", "optax": "jax",
          "keras": "keras", "scipy": "scipy", "sklearn": "sklearn"}  # fmt: skip


class Returned(NamedTuple):
    """What a call gave back, as float64 numpy, with the dtype names the backend used."""

    values: np.ndarray
    values_dtype: str
    gradient: np.ndarray | None
    gradient_dtype: str | None
    operands: Mapping[str, tuple[np.ndarray, str]] = {}  # name: (gradient, its dtype)


def require(module: str) -> Any:
    """Import ``module`` or raise ``AdapterUnavailable`` naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        extra = EXTRAS.get(top, top)
        raise AdapterUnavailable(
            f"{top} is not installed (importing {module!r} failed: {exc}); "
            f"install it with: pip install 'stabcheck[{extra}]'"
        ) from exc


def installed(module: str) -> bool:
    """Whether ``module`` can be imported, without importing it."""
    try:
        return importlib.util.find_spec(module.split(".")[0]) is not None
    except (ImportError, ValueError):
        return False


def call(
    backend: str,
    fn: Callable[..., Any],
    grad_fn: Callable[..., Any] | None,
    case: Case,
    grad: bool,
) -> Returned:
    """Call ``fn`` (and differentiate it, if ``grad``) on ``case`` in ``backend``."""
    return _CALLS[backend](fn, grad_fn, case, grad)


def options(case: Case, array: Callable[[np.ndarray], Any] = np.copy) -> dict[str, Any]:
    """The case's options as keyword arguments, class weights made arrays by ``array``
    (each backend's, of the case's format)."""
    return {name: array(value) if isinstance(value, np.ndarray) else value
            for name, value in case.params.items()}  # fmt: skip


def _numpy(fn: Callable[..., Any], grad_fn: Any, case: Case, grad: bool) -> Returned:
    """``grad_fn`` takes what ``fn`` takes and returns the gradient with respect to the
    predictions, or for a loss with operands a dict of gradients keyed ``predictions`` and
    each operand's name."""

    def args() -> tuple[tuple[np.ndarray, ...], dict[str, Any]]:
        operands = {name: a.copy() for name, a in case.operands.items()}
        return (case.predictions.copy(), case.labels.copy()), {**operands, **options(case)}

    positional, keyword = args()
    values = fn(*positional, **keyword)
    if not (grad and grad_fn is not None):
        return Returned(*_back(values), None, None)
    positional, keyword = args()
    gradient = grad_fn(*positional, **keyword)
    if not case.operands:
        return Returned(*_back(values), *_back(gradient))
    if not isinstance(gradient, Mapping):
        raise TypeError(f"the gradient function returned a {type(gradient).__name__}; for "
                        f"{case.loss.name} it returns a dict keyed predictions, "
                        f"{', '.join(case.operands)}")  # fmt: skip
    operands = {name: _back(gradient[name]) for name in case.operands}
    return Returned(*_back(values), *_back(gradient["predictions"]), operands)


def _back(out: Any) -> tuple[np.ndarray, str]:
    """A numpy-like result as float64, and the name of its dtype."""
    array = np.asarray(out)
    if array.dtype.kind != "f" and array.dtype not in {f.dtype for f in FORMATS}:
        raise TypeError(f"returned dtype {array.dtype} (a {type(out).__name__}); expected floats")
    return array.astype(np.float64), array.dtype.name


def _torch(fn: Callable[..., Any], grad_fn: Any, case: Case, grad: bool) -> Returned:
    torch = require("torch")
    dtype = getattr(torch, case.format.name)

    def tensor(a: np.ndarray) -> Any:
        return torch.from_numpy(_wide(a)).to(dtype)

    x = tensor(case.predictions)
    labels = torch.from_numpy(case.labels) if case.labels.dtype.kind == "i" else tensor(case.labels)
    operands = {name: tensor(a) for name, a in case.operands.items()}
    for t in (x, *operands.values()):
        t.requires_grad_(grad)
    out = fn(x, labels, **operands, **options(case, tensor))
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"returned {type(out).__name__}; expected a torch.Tensor")
    if grad:
        out.sum().backward()

    def back(t: Any) -> tuple[np.ndarray, str]:
        return t.detach().to(torch.float64).numpy(), str(t.dtype).removeprefix("torch.")

    if not grad:
        return Returned(*back(out), None, None)
    # an operand that nothing reached gets zeros (autograd leaves its grad None); the
    # predictions' None stays: a loss that does not depend on them is reported as such
    grads = {name: t.grad if t.grad is not None else torch.zeros_like(t)
             for name, t in operands.items()}  # fmt: skip
    gradient = back(x.grad) if x.grad is not None else (None, None)
    return Returned(*back(out), *gradient, {name: back(g) for name, g in grads.items()})


def _tensorflow(fn: Callable[..., Any], grad_fn: Any, case: Case, grad: bool) -> Returned:
    tf = require("tensorflow")
    dtype = getattr(tf, case.format.name)

    def tensor(a: np.ndarray) -> Any:
        return tf.cast(tf.constant(_wide(a)), dtype)

    x = tensor(case.predictions)
    labels = tf.constant(case.labels) if case.labels.dtype.kind == "i" else tensor(case.labels)
    params = options(case, tensor)
    operands = {name: tensor(a) for name, a in case.operands.items()}
    with tf.GradientTape() as tape:
        tape.watch([x, *operands.values()])
        out = fn(x, labels, **operands, **params)
        total = tf.reduce_sum(out)

    def back(t: Any) -> tuple[np.ndarray, str]:
        t = tf.convert_to_tensor(t)
        return tf.cast(t, tf.float64).numpy(), t.dtype.name

    if not grad:
        return Returned(*back(out), None, None)
    gradient, *rest = tape.gradient(total, [x, *operands.values()],
                                    unconnected_gradients=tf.UnconnectedGradients.ZERO)
    return Returned(*back(out), *back(gradient),
                    {name: back(g) for name, g in zip(operands, rest)})  # fmt: skip


def _jax(fn: Callable[..., Any], grad_fn: Any, case: Case, grad: bool) -> Returned:
    jax = require("jax")
    jnp = require("jax.numpy")
    # JAX computes float64 inputs in float32 unless x64 is on: on for float64 cases, off
    # (JAX's default) for the others, whatever ran before in the process
    x64 = getattr(jax, "enable_x64", None)
    if x64 is None:  # older JAX has it only in jax.experimental
        from jax.experimental import enable_x64 as x64
    with x64(case.format.name == "float64"):
        x = jnp.asarray(case.predictions)
        labels = jnp.asarray(case.labels)
        params = options(case, jnp.asarray)
        operands = {name: jnp.asarray(a) for name, a in case.operands.items()}
        out = fn(x, labels, **operands, **params)

        def back(t: Any) -> tuple[np.ndarray, str]:
            array = np.asarray(t)
            return array.astype(np.float64), array.dtype.name

        if not grad:
            return Returned(*back(out), None, None)

        def total(inputs: dict[str, Any]) -> Any:
            rest = {k: v for k, v in inputs.items() if k != "predictions"}
            return jnp.sum(fn(inputs["predictions"], labels, **rest, **params))

        grads = jax.grad(total)({"predictions": x, **operands})
        return Returned(*back(out), *back(grads["predictions"]),
                        {name: back(grads[name]) for name in operands})  # fmt: skip


def _wide(array: np.ndarray) -> np.ndarray:
    """float16 and bfloat16 arrays as float32 (exactly), which every framework reads."""
    return array.astype(np.float32) if array.dtype.itemsize == 2 else array


_CALLS = {"numpy": _numpy, "torch": _torch, "tensorflow": _tensorflow, "jax": _jax}
