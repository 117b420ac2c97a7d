"""Reproductions in a library's own terms: a script to paste into an upstream issue, which
needs only the library (and numpy, or ml_dtypes for bfloat16, where the library takes
numpy arrays), never stabcheck.

``library_snippet(impl, case)`` builds the case's exact inputs in its dtype, calls the
library as the adapter ``impl`` does, and prints the losses, or the gradient of their sum
from the library's own autodiff (``torch.autograd``, ``tf.GradientTape``, ``jax.grad``),
as stabcheck's backends compute it. The snippet prints ONE line: a flat Python list of
floats, the array in row-major (C) order (a reduced loss is a list of one), each float the
exact value of its format (``repr`` of a float is exact, ``inf`` and ``nan`` included).

Each adapter says how it calls its library in ``Implementation.repro``: a template of the
call, or a function of the case that gives one (or None where the adapter refuses the case
before calling the library). A template is a Python expression in fixed names: ``x`` the
predictions (logits, probabilities, or the hidden states of the linear losses), ``y`` the
labels, ``W`` and ``b`` the operands, ``w`` the class weights; with ``str.format`` fields:

- ``{options}``: ``, name=value`` for every option and operand the case has that the
  template does not name in a field of its own, under the library's name for it
  (``ParamSpec.names``, e.g. Keras' ``ignore_class``);
- ``{<option>}`` (e.g. ``{reduction}``, ``{pos_weight}``): that option's value, the
  catalogue's default where the case has none; ``{linear_weight}``, ``{linear_bias}``: the
  operand's variable;
- ``{dtype}``: the format's name as a string (``'float16'``); ``{classes}``: the number of
  classes.

For example ``torch.nn.functional.cross_entropy(x, y{options}, reduction={reduction})``.
"""

from __future__ import annotations

import math
import re
import string
from typing import Any

import numpy as np

from stabcheck.case import Case
from stabcheck.errors import InvalidArgument
from stabcheck.implementations import Implementation
from stabcheck.losses import LabelKind

OPERAND_NAMES = {"linear_weight": "W", "linear_bias": "b"}  # operand: its variable
VECTOR_NAMES = {"weight": "w"}  # vector option: its variable
# a module the call names (not after a dot): the line that imports it
MODULES = {
    "np": "import numpy as np",
    "ml_dtypes": "import ml_dtypes",
    "torch": "import torch",
    "tf": "import tensorflow as tf",
    "jax": "import jax",
    "jnp": "import jax.numpy as jnp",
    "optax": "import optax",
    "scipy": "import scipy.special",
    "sklearn": "import sklearn.metrics",
    "keras": "import keras",  # last: the backend's modules first, as the adapter does
}


def library_snippet(impl: Implementation, case: Case, quantity: str = "value") -> str | None:
    """A standalone script that prints, as one flat list of floats, ``quantity`` of ``impl``
    on ``case``: ``value`` (the losses), ``gradient`` (of their sum with respect to the
    predictions) or ``gradient[<operand>]``. None for stabcheck's own implementations, for
    users' functions (no ``repro``), for gradients of numpy libraries and of operands the
    case lacks, and where the adapter refuses the case."""
    if impl.loss != case.loss.name:
        raise InvalidArgument(
            f"case is a {case.loss.name} case but {impl.name!r} implements {impl.loss}; "
            "give a case of its loss"
        )
    if not impl.takes(case):
        raise InvalidArgument(
            f"{impl.name!r} does not take this case's options "
            f"({', '.join([*case.params, *case.operands])}); it takes "
            f"{', '.join(impl.params or ()) or 'none'}: stabcheck never calls it on this case"
        )
    towards = _towards(quantity, case)
    if impl.library == "stabcheck" or impl.repro is None:
        return None
    if towards is None and quantity != "value":
        return None
    if towards is not None and impl.backend == "numpy":
        return None  # no autodiff
    template = impl.repro(case) if callable(impl.repro) else impl.repro
    if template is None:
        return None
    call = render_call(template, case, impl.library)
    backend = _BACKENDS[impl.backend]
    body = [
        *_inputs(backend, case, towards is not None),
        *(backend.value(call) if towards is None else backend.gradient(call, towards, case)),
    ]
    return "\n".join([*_imports(impl, case, "\n".join(body)), "", *body]) + "\n"


def render_call(template: str, case: Case, library: str) -> str:
    """``template`` (see the module's docstring) with its fields filled from ``case``, the
    options under ``library``'s names."""
    fields = {name for _, name, _, _ in string.Formatter().parse(template) if name}
    values: dict[str, str] = {"dtype": repr(case.format.name), "classes": str(case.classes)}
    values.update(OPERAND_NAMES)
    for name in fields - set(values) - {"options"}:
        if name not in case.loss.params:
            raise InvalidArgument(
                f"template {template!r} names {{{name}}}, which is no option of "
                f"{case.loss.name}; its options are {', '.join(case.loss.params)}"
            )
        values[name] = _option(name, case.param(name))
    keywords = [(spec.names.get(library, spec.name), OPERAND_NAMES[spec.name])
                for spec in case.loss.operand_specs
                if spec.name in case.operands and spec.name not in fields]  # fmt: skip
    keywords += [(spec.names.get(library, spec.name), _option(spec.name, case.params[spec.name]))
                 for spec in case.loss.param_specs
                 if spec.name in case.params and spec.name not in fields]  # fmt: skip
    values["options"] = "".join(f", {key}={value}" for key, value in keywords)
    return template.format(**values)


# -- the parts of a snippet ------------------------------------------------------------------


def _towards(quantity: str, case: Case) -> str | None:
    """The variable a gradient is taken with respect to (None for the value); None too for
    an operand the case lacks, which ``library_snippet`` answers with None."""
    if quantity == "value":
        return None
    if quantity == "gradient":
        return "x"
    operand = quantity.removeprefix("gradient[").removesuffix("]")
    if quantity != f"gradient[{operand}]" or operand not in OPERAND_NAMES:
        raise InvalidArgument(
            f"quantity={quantity!r} is not valid; it is 'value', 'gradient' or "
            f"{' or '.join(repr(f'gradient[{name}]') for name in OPERAND_NAMES)}"
        )
    return OPERAND_NAMES[operand] if operand in case.operands else None


def _imports(impl: Implementation, case: Case, body: str) -> list[str]:
    """The lines importing the modules ``body`` names, Keras' backend set before Keras is
    imported, JAX's x64 mode on for float64 (stabcheck turns it on for float64 cases; by
    default JAX computes them in float32)."""
    used = set(re.findall(r"(?<![\w.])(\w+)\.", body))
    x64 = impl.backend == "jax" and case.format.name == "float64"
    lines = [line for name, line in MODULES.items() if name in used or (x64 and name == "jax")]
    if "keras" in used:
        lines[:0] = ["import os", f'os.environ["KERAS_BACKEND"] = "{impl.backend}"']
    if x64:
        lines.insert(lines.index(MODULES["jax"]) + 1, 'jax.config.update("jax_enable_x64", True)')
    return lines


def _inputs(backend: _Backend, case: Case, grad: bool) -> list[str]:
    """``x = ...``, ``y = ...`` and the operands and class weights, in the case's dtype."""
    fmt = case.format.name
    lines = [f"x = {backend.array(case.predictions, fmt, grad)}"]
    if case.loss.labels is LabelKind.SPARSE:
        lines.append(f"y = {backend.integers(case.labels)}")
    else:
        lines.append(f"y = {backend.array(case.labels, fmt, False)}")
    for name, array in case.operands.items():
        lines.append(f"{OPERAND_NAMES[name]} = {backend.array(array, fmt, grad)}")
    for name, value in case.params.items():
        if isinstance(value, np.ndarray):
            lines.append(f"{VECTOR_NAMES.get(name, name)} = {backend.array(value, fmt, False)}")
    return lines


def _option(name: str, value: Any) -> str:
    """An option's value as Python source: a float exactly, a vector as its variable."""
    if isinstance(value, np.ndarray):
        return VECTOR_NAMES.get(name, name)
    if isinstance(value, float):
        return _float(value)
    return repr(value)


def _float(value: float) -> str:
    """``repr`` (exact for every float), ``float('inf')`` and the like for the others."""
    return repr(value) if math.isfinite(value) else f"float('{value!r}')"


def _floats(array: np.ndarray) -> str:
    """A nested list of the exact values of ``array``."""

    def nested(value: Any) -> str:
        if isinstance(value, list):
            return "[" + ", ".join(nested(v) for v in value) + "]"
        return _float(value)

    return nested(array.astype(np.float64).tolist())


class _Backend:
    """How one array library builds arrays, and prints a value or a gradient."""

    modules: tuple[str, ...] = ()

    def array(self, values: np.ndarray, fmt: str, grad: bool) -> str:
        raise NotImplementedError

    def integers(self, values: np.ndarray) -> str:
        raise NotImplementedError

    def value(self, call: str) -> list[str]:
        raise NotImplementedError

    def gradient(self, call: str, towards: str, case: Case) -> list[str]:
        raise NotImplementedError


def _watched(case: Case) -> list[str]:
    """The variables stabcheck differentiates with respect to: x and the operands."""
    return ["x", *(OPERAND_NAMES[name] for name in case.operands)]


class _Torch(_Backend):
    modules = ("torch",)

    def array(self, values: np.ndarray, fmt: str, grad: bool) -> str:
        flag = ", requires_grad=True" if grad else ""
        return f"torch.tensor({_floats(values)}, dtype=torch.{fmt}{flag})"

    def integers(self, values: np.ndarray) -> str:
        return f"torch.tensor({values.tolist()!r})"  # int64

    def value(self, call: str) -> list[str]:
        return [f"loss = {call}", "print(loss.flatten().tolist())"]

    def gradient(self, call: str, towards: str, case: Case) -> list[str]:
        return [f"loss = {call}", "loss.sum().backward()",
                f"print({towards}.grad.flatten().tolist())"]  # fmt: skip


class _TensorFlow(_Backend):
    modules = ("tf",)

    def array(self, values: np.ndarray, fmt: str, grad: bool) -> str:
        return f"tf.constant({_floats(values)}, dtype=tf.{fmt})"

    def integers(self, values: np.ndarray) -> str:
        return f"tf.constant({values.tolist()!r}, dtype=tf.int64)"

    def value(self, call: str) -> list[str]:
        return [f"loss = {call}", "print(tf.reshape(loss, [-1]).numpy().tolist())"]

    def gradient(self, call: str, towards: str, case: Case) -> list[str]:
        watched = _watched(case)
        watch = watched[0] if len(watched) == 1 else f"[{', '.join(watched)}]"
        return [
            "with tf.GradientTape() as tape:",
            f"    tape.watch({watch})",
            f"    total = tf.reduce_sum({call})",
            f"print(tf.reshape(tape.gradient(total, {towards}), [-1]).numpy().tolist())",
        ]


class _Jax(_Backend):
    modules = ("jnp",)

    def array(self, values: np.ndarray, fmt: str, grad: bool) -> str:
        return f"jnp.asarray({_floats(values)}, dtype=jnp.{fmt})"

    def integers(self, values: np.ndarray) -> str:
        return f"jnp.asarray({values.tolist()!r})"  # int32, or int64 with x64, as stabcheck's

    def value(self, call: str) -> list[str]:
        return [f"loss = {call}", "print(jnp.ravel(loss).tolist())"]

    def gradient(self, call: str, towards: str, case: Case) -> list[str]:
        watched = _watched(case)
        argnums = "" if towards == "x" else f", argnums={watched.index(towards)}"
        args = ", ".join(watched)
        return [
            "",
            f"def total({args}):",
            f"    return jnp.sum({call})",
            "",
            f"print(jnp.ravel(jax.grad(total{argnums})({args})).tolist())",
        ]


class _Numpy(_Backend):
    modules = ("np",)

    def array(self, values: np.ndarray, fmt: str, grad: bool) -> str:
        dtype = "ml_dtypes.bfloat16" if fmt == "bfloat16" else f"np.{fmt}"
        return f"np.array({_floats(values)}, dtype={dtype})"

    def integers(self, values: np.ndarray) -> str:
        return f"np.array({values.tolist()!r}, dtype=np.int64)"

    def value(self, call: str) -> list[str]:
        return [f"loss = {call}", "print(np.ravel(loss).tolist())"]


_BACKENDS: dict[str, _Backend] = {
    "numpy": _Numpy(),
    "torch": _Torch(),
    "tensorflow": _TensorFlow(),
    "jax": _Jax(),
}
