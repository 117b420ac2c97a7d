"""The registry of everything auditable, and the loader of a user's ``module:function``.

An ``Implementation`` is one callable for one loss: ``fn(predictions, labels, **params)``
returns the unreduced losses (elementwise for the binary and sigmoid forms, one per row for
the others), taking arrays of its ``backend``. Families share a ``name`` across losses:
``reference.py`` registers ``naive``, ``stable`` and ``accurate`` for every loss at import.
Third-party adapters register the same way from their own modules and import their library
only inside ``fn``, so that listing them costs nothing; each also says, in ``repro``, how a
script calls its library, which ``stabcheck.repro`` renders into a reproduction that runs
without stabcheck.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from stabcheck.errors import InvalidArgument, did_you_mean
from stabcheck.formats import get_format
from stabcheck.losses import get_loss

BACKENDS = ("numpy", "torch", "tensorflow", "jax")


@dataclass(frozen=True)
class Implementation:
    """One auditable callable for one loss.

    ``grad`` (numpy backends only) returns d(sum of losses)/d(predictions) shaped like the
    predictions; other backends are differentiated by their own autodiff.
    """

    name: str
    loss: str
    fn: Callable[..., Any]
    backend: str = "numpy"
    grad: Callable[..., Any] | None = None
    formats: tuple[str, ...] = ("float64", "float32", "float16", "bfloat16")
    library: str = "stabcheck"
    description: str = ""
    requires: tuple[str, ...] = ()  # modules it imports when called, e.g. ("torch",)
    # statuses that are documented behaviour, with the documentation's words, e.g.
    # {"clipped": "clamps log(p) at -100, as documented"}: reported as such, not as bugs
    documented: Mapping[str, str] = field(default_factory=dict)
    # the loss's options it takes as keyword arguments (see stabcheck.losses.PARAMS); None:
    # only the loss's required ones. Cases with other options are not given to it.
    params: tuple[str, ...] | None = None
    # values of a choice option it takes, where not all, e.g. {"reduction": ("none", "sum")}
    choices: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # the operands it takes (stabcheck.losses.OPERANDS); None: all its loss has
    operands: tuple[str, ...] | None = None
    # how a script without stabcheck calls the library, for stabcheck.repro: a template of
    # the call in the names x, y, W, b, w with fields {options}, {<option>}, {dtype} (see
    # that module), or a function of the case giving one (None: the adapter refuses the
    # case). None: no snippet (stabcheck's own implementations, users' functions).
    repro: str | Callable[[Any], str | None] | None = None

    def takes(self, case: Any) -> bool:
        """Whether every option ``case`` sets is one this implementation takes, with a value
        it takes, and so is every operand ``case`` has (a bias, say)."""
        operands = get_loss(self.loss).operands if self.operands is None else self.operands
        return (
            set(case.params) <= set(self.params or ())
            and set(case.operands) <= set(operands)
            and all(
                case.params[name] in values
                for name, values in self.choices.items()
                if name in case.params
            )
        )

    @property
    def differentiable(self) -> bool:
        """Whether gradients can be measured: a ``grad`` function, or a backend's autodiff."""
        return self.grad is not None or self.backend != "numpy"

    @property
    def available(self) -> bool:
        """Whether every module it requires is installed (found without importing it)."""
        from stabcheck.implementations.backends import installed

        return all(installed(module) for module in self.requires)


_REGISTRY: dict[tuple[str, str], Implementation] = {}


def register(impl: Implementation) -> Implementation:
    """Add ``impl`` to the registry (its loss and formats canonicalised) and return it."""
    if not isinstance(impl, Implementation):
        raise InvalidArgument(f"impl={impl!r} is not an Implementation; build one first")
    if not impl.name or not isinstance(impl.name, str):
        raise InvalidArgument(f"name={impl.name!r} is not valid; give a non-empty string")
    _check_backend(impl.backend)
    for what, value in (("fn", impl.fn), ("grad", impl.grad)):
        if value is not None and not callable(value):
            raise InvalidArgument(f"{what}={value!r} of {impl.name!r} is not callable")
    if impl.repro is not None and not (isinstance(impl.repro, str) or callable(impl.repro)):
        raise InvalidArgument(
            f"repro={impl.repro!r} of {impl.name!r} is neither a template nor a function of the "
            "case; see stabcheck.repro"
        )
    impl = replace(
        impl,
        loss=get_loss(impl.loss).name,
        formats=tuple(get_format(fmt).name for fmt in impl.formats),
        params=_check_params(impl),
    )
    key = (impl.name, impl.loss)
    if key in _REGISTRY:
        raise InvalidArgument(
            f"name={impl.name!r} already has an implementation of {impl.loss}; choose another name"
        )
    _REGISTRY[key] = impl
    return impl


def implementation_names() -> list[str]:
    """The registered family names, in registration order."""
    return list(dict.fromkeys(name for name, _ in _REGISTRY))


def implementations(
    names: str | Iterable[str] | None = None, losses: str | Iterable[str] | None = None
) -> list[Implementation]:
    """The registered implementations, in registration order, optionally only those of the
    families ``names`` and of the ``losses`` (canonical names or aliases)."""
    wanted_names = None if names is None else {_check_name(n) for n in _as_tuple(names)}
    wanted_losses = None if losses is None else {get_loss(x).name for x in _as_tuple(losses)}
    return [
        impl
        for impl in _REGISTRY.values()
        if (wanted_names is None or impl.name in wanted_names)
        and (wanted_losses is None or impl.loss in wanted_losses)
    ]


def get_implementation(name: str, loss: str) -> Implementation:
    """The implementation ``name`` of ``loss``; a ``"module:function"`` name is loaded with
    ``load_user``."""
    if isinstance(name, str) and ":" in name:
        return load_user(name, loss)
    spec = get_loss(loss)
    impl = _REGISTRY.get((_check_name(name), spec.name))
    if impl is None:
        has = ", ".join(other.loss for other in implementations(names=name))
        raise InvalidArgument(
            f"name={name!r} has no implementation of loss={spec.name!r}; it implements {has}"
        )
    return impl


def load_user(spec: str, loss: str, backend: str = "numpy") -> Implementation:
    """The user's callable ``spec`` (``"package.module:function"``, the function part may be
    dotted, ``"module:Class.method"``) as an ``Implementation`` of ``loss``, not registered,
    imported here and now (``user_implementation`` defers the import to where it is called).

    Its name is ``spec``; it has no ``grad`` (other backends are differentiated by autodiff).
    """
    obj = resolve_user(spec)
    doc = (getattr(obj, "__doc__", None) or "").strip()
    first = doc.splitlines()[0] if doc else ""
    check_operands(spec, loss, keywords(obj))
    return replace(user_implementation(spec, loss, backend, first, keywords(obj)), fn=obj)


# A user's function is given PyTorch's reductions, the names most functions take; Keras'
# sum_over_batch_size only goes to implementations that declare it.
USER_CHOICES: Mapping[str, tuple[str, ...]] = {"reduction": ("none", "sum", "mean")}


def options_taken(loss: str, accepts: tuple[str, ...] | None) -> tuple[str, ...]:
    """The options of ``loss`` a function with keyword arguments ``accepts`` takes (None:
    any); the required ones always (a function without them fails, and says so)."""
    return _taken(get_loss(loss).param_specs, accepts)


def operands_taken(loss: str, accepts: tuple[str, ...] | None) -> tuple[str, ...]:
    """The operands of ``loss`` a function with keyword arguments ``accepts`` takes (None:
    any); the required ones always."""
    return _taken(get_loss(loss).operand_specs, accepts)


def check_operands(spec: str, loss: str, accepts: tuple[str, ...] | None) -> None:
    """``InvalidArgument`` where the user's function ``spec``, whose keyword arguments are
    ``accepts`` (None: any), cannot take a required operand of ``loss`` by its name."""
    specs = get_loss(loss).operand_specs
    missing = [s.name for s in specs if s.required and accepts is not None
               and s.name not in accepts]  # fmt: skip
    if missing:
        names = " and ".join(s.name for s in specs)
        raise InvalidArgument(
            f"{spec!r} takes ({', '.join(accepts or ())}), but {get_loss(loss).name} passes "
            f"its operands by name: fn(h, labels, linear_weight=W, linear_bias=b); name the "
            f"function's parameters {names} (a function without linear_bias gets no cases "
            "with a bias)"
        )


def _taken(specs: Iterable[Any], accepts: tuple[str, ...] | None) -> tuple[str, ...]:
    """The names of ``specs`` that are required or among ``accepts`` (None: all)."""
    return tuple(s.name for s in specs if s.required or accepts is None or s.name in accepts)


def keywords(fn: Callable[..., Any]) -> tuple[str, ...] | None:
    """The keyword arguments ``fn`` takes, or None when it takes any (``**kwargs``) or its
    signature cannot be read."""
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return None
    return tuple(p.name for p in parameters if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD))


def user_implementation(
    spec: str,
    loss: str,
    backend: str = "numpy",
    description: str = "",
    accepts: tuple[str, ...] | None = (),
) -> Implementation:
    """``load_user``'s implementation without importing anything here: its ``fn`` imports
    the user's module on its first call, in the process that calls it (an audit's
    implementation process, where an import that exits or hangs is contained and timed).
    It takes the loss's required options and those in ``accepts`` (the keyword arguments
    its signature names; None: all, for ``**kwargs``)."""
    module_name, _ = _parse_user(spec)
    _check_backend(backend)
    return Implementation(
        name=spec.strip(),
        loss=get_loss(loss).name,
        fn=UserFunction(spec.strip()),
        backend=backend,
        library=module_name.split(".")[0],
        description=description,
        params=options_taken(loss, accepts),
        choices=USER_CHOICES,
        operands=operands_taken(loss, accepts),
    )


@dataclass(frozen=True)
class UserFunction:
    """A user's ``module:function``, imported on its first call."""

    spec: str

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return resolve_user(self.spec)(*args, **kwargs)


def resolve_user(spec: str) -> Callable[..., Any]:
    """Import the module of ``spec`` (``"package.module:function"``) and return the callable;
    ``InvalidArgument`` says what failed. Imported modules are cached by Python."""
    module_name, attr_path = _parse_user(spec)
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:
        raise InvalidArgument(
            f"spec={spec!r}: importing module {module_name!r} failed with "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    owner = module_name
    for attr in attr_path.split("."):
        if not hasattr(obj, attr):
            public = [n for n in dir(obj) if not n.startswith("_")]
            hint = did_you_mean(attr, public)
            raise InvalidArgument(f"spec={spec!r}: {owner!r} has no attribute {attr!r}.{hint}")
        obj, owner = getattr(obj, attr), f"{owner}.{attr}"
    if not callable(obj):
        raise InvalidArgument(
            f"spec={spec!r} names a {type(obj).__name__}, which is not callable; "
            "give a function fn(predictions, labels, **params)"
        )
    return obj


def _parse_user(spec: str) -> tuple[str, str]:
    """The module and attribute parts of ``"package.module:function"``, checked."""
    syntax = "write it as 'package.module:function'"
    if not isinstance(spec, str) or spec.count(":") != 1:
        raise InvalidArgument(f"spec={spec!r} is not a 'module:function' reference; {syntax}")
    module_name, _, attr_path = (part.strip() for part in spec.partition(":"))
    for what, part in (("module", module_name), ("function", attr_path)):
        if not all(piece.isidentifier() for piece in part.split(".")):
            raise InvalidArgument(f"spec={spec!r} has an invalid {what} part {part!r}; {syntax}")
    return module_name, attr_path


def _as_tuple(value: str | Iterable[str]) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value)


def _check_name(name: str) -> str:
    valid = implementation_names()
    if name in valid:
        return name
    raise InvalidArgument(
        f"name={name!r} is not a registered implementation.{did_you_mean(name, valid, n=1)} "
        "Valid names: "
        f"{', '.join(valid)}, or a 'module:function' of your own."
    )


def _check_params(impl: Implementation) -> tuple[str, ...]:
    """The options ``impl`` takes: as declared (each one its loss takes), or the loss's
    required ones."""
    spec = get_loss(impl.loss)
    if impl.params is None:
        return tuple(p.name for p in spec.param_specs if p.required)
    for name in impl.params:
        if name not in spec.params:
            raise InvalidArgument(
                f"params={impl.params!r} of {impl.name!r}: {spec.name} has no option "
                f"{name!r}; its options are {', '.join(spec.params)}"
            )
    return tuple(impl.params)


def _check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise InvalidArgument(
            f"backend={backend!r} is not supported.{did_you_mean(backend, BACKENDS, n=1)} "
            f"Valid backends: {', '.join(BACKENDS)}."
        )


# Registers the built-in naive, stable and accurate implementations of every loss, then the
# third-party adapters (each imports its library only when called).
from stabcheck.implementations import reference as reference  # noqa: E402, I001
from stabcheck.implementations import jax as jax  # noqa: E402
from stabcheck.implementations import keras as keras  # noqa: E402
from stabcheck.implementations import scipy as scipy  # noqa: E402
from stabcheck.implementations import sklearn as sklearn  # noqa: E402
from stabcheck.implementations import tensorflow as tensorflow  # noqa: E402
from stabcheck.implementations import torch as torch  # noqa: E402
from stabcheck.implementations import chunked as chunked  # noqa: E402
