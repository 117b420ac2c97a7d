"""Array backends: a ``Case``'s inputs as numpy, torch, TensorFlow or JAX arrays of the
case's format, the call, the gradient from the backend's own autodiff (of the summed
loss with respect to the predictions), and the results back as float64 numpy arrays
with the name of the dtype the backend returned.

Frameworks are imported here only when a call needs them, through ``require``, which
names the extra to install when one is missing.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
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
    values = fn(case.predictions.copy(), case.labels.copy(), **options(case))
    gradient = None
    if grad and grad_fn is not None:
        gradient = grad_fn(case.predictions.copy(), case.labels.copy(), **options(case))
    return Returned(*_back(values), *(_back(gradient) if gradient is not None else (None, None)))


def _back(out: Any) -> tuple[np.ndarray, str]:
    """A numpy-like result as float64, and the name of its dtype."""
    array = np.asarray(out)
    if array.dtype.kind != "f" and array.dtype not in {f.dtype for f in FORMATS}:
        raise TypeError(f"returned dtype {array.dtype} (a {type(out).__name__}); expected floats")
    return array.astype(np.float64), array.dtype.name


def _torch(fn: Callable[..., Any], grad_fn: Any, case: Case, grad: bool) -> Returned:
    torch = require("torch")
    dtype = getattr(torch, case.format.name)
    x = torch.from_numpy(_wide(case.predictions)).to(dtype)
    labels = (
        torch.from_numpy(case.labels)
        if case.labels.dtype.kind == "i"
        else torch.from_numpy(_wide(case.labels)).to(dtype)
    )
    x.requires_grad_(grad)
    out = fn(x, labels, **options(case, lambda a: torch.from_numpy(_wide(a)).to(dtype)))
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"returned {type(out).__name__}; expected a torch.Tensor")
    gradient = None
    if grad:
        out.sum().backward()
        gradient = x.grad

    def back(t: Any) -> tuple[np.ndarray, str]:
        return t.detach().to(torch.float64).numpy(), str(t.dtype).removeprefix("torch.")

    return Returned(*back(out), *(back(gradient) if gradient is not None else (None, None)))


def _tensorflow(fn: Callable[..., Any], grad_fn: Any, case: Case, grad: bool) -> Returned:
    tf = require("tensorflow")
    dtype = getattr(tf, case.format.name)
    x = tf.cast(tf.constant(_wide(case.predictions)), dtype)
    labels = (
        tf.constant(case.labels)
        if case.labels.dtype.kind == "i"
        else tf.cast(tf.constant(_wide(case.labels)), dtype)
    )
    params = options(case, lambda a: tf.cast(tf.constant(_wide(a)), dtype))
    with tf.GradientTape() as tape:
        tape.watch(x)
        out = fn(x, labels, **params)
        total = tf.reduce_sum(out)
    gradient = tape.gradient(total, x) if grad else None

    def back(t: Any) -> tuple[np.ndarray, str]:
        t = tf.convert_to_tensor(t)
        return tf.cast(t, tf.float64).numpy(), t.dtype.name

    return Returned(*back(out), *(back(gradient) if gradient is not None else (None, None)))


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
        out = fn(x, labels, **params)
        gradient = None
        if grad:
            gradient = jax.grad(lambda v: jnp.sum(fn(v, labels, **params)))(x)

        def back(t: Any) -> tuple[np.ndarray, str]:
            array = np.asarray(t)
            return array.astype(np.float64), array.dtype.name

        return Returned(*back(out), *(back(gradient) if gradient is not None else (None, None)))


def _wide(array: np.ndarray) -> np.ndarray:
    """float16 and bfloat16 arrays as float32 (exactly), which every framework reads."""
    return array.astype(np.float32) if array.dtype.itemsize == 2 else array


_CALLS = {"numpy": _numpy, "torch": _torch, "tensorflow": _tensorflow, "jax": _jax}
