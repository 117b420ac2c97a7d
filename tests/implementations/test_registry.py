"""The registry of implementations and the loader of a user's ``module:function``."""

from __future__ import annotations

import sys
import textwrap

import numpy as np
import pytest

import stabcheck.implementations as registry
from stabcheck.errors import InvalidArgument
from stabcheck.implementations import (
    Implementation,
    get_implementation,
    implementation_names,
    implementations,
    load_user,
    register,
)
from stabcheck.losses import loss_names

FAMILIES = ["naive", "stable", "accurate"]
USER_MODULE = "stabcheck_test_user_losses"


@pytest.fixture
def fresh_registry(monkeypatch):
    """A copy of the registry that the test may change."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """An importable module of the user's, ``USER_MODULE``."""
    source = '''
        import numpy as np

        NOT_CALLABLE = 3


        def my_loss(predictions, labels):
            """Squared error, which is no cross-entropy.

            More words.
            """
            return (predictions - labels) ** 2


        class Losses:
            @staticmethod
            def mine(predictions, labels):
                return np.abs(predictions - labels)
    '''
    (tmp_path / f"{USER_MODULE}.py").write_text(textwrap.dedent(source))
    (tmp_path / "stabcheck_test_broken.py").write_text("raise RuntimeError('boom')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield USER_MODULE
    for name in (USER_MODULE, "stabcheck_test_broken"):
        sys.modules.pop(name, None)


# -- listing and lookup ----------------------------------------------------------------------


def test_the_reference_families_implement_every_loss():
    assert implementation_names()[:3] == FAMILIES
    for family in FAMILIES:
        impls = implementations(names=family)
        assert [impl.loss for impl in impls] == loss_names()
        for impl in impls:
            assert (impl.backend, impl.library) == ("numpy", "stabcheck")
            assert callable(impl.fn) and callable(impl.grad)
            assert impl.formats == ("float64", "float32", "float16", "bfloat16")
            assert impl.description


def test_filters_take_names_losses_and_aliases():
    assert [impl.name for impl in implementations(losses="log_loss")][:3] == FAMILIES
    assert {impl.loss for impl in implementations(losses="log_loss")} == {"binary_crossentropy"}
    impls = implementations(names=["stable", "naive"], losses=["softmax_cross_entropy", "log_loss"])
    assert {(impl.name, impl.loss) for impl in impls} == {
        (name, loss)
        for name in ("naive", "stable")
        for loss in ("binary_crossentropy", "softmax_cross_entropy_with_logits")
    }
    assert len(implementations()) >= 21


def test_get_implementation_by_name_and_alias():
    impl = get_implementation("accurate", "softmax_cross_entropy")
    assert impl.loss == "softmax_cross_entropy_with_logits"
    assert impl is get_implementation("accurate", "softmax_cross_entropy_with_logits")
    got = impl.fn(np.array([[0.0, 0.0]]), np.array([[1.0, 0.0]]))
    assert got.tolist() == [np.log(2)]


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        (lambda: get_implementation("acurate", "log_loss"), r"name='acurate'.*'accurate'"),
        (lambda: implementations(names="stabel"), r"Did you mean 'stable'"),
        (lambda: implementations(names=["naive", "nope"]), r"Valid names: naive, stable, accurate"),
        (lambda: get_implementation("naive", "log_los"), r"loss='log_los'.*Valid losses"),
        (lambda: implementations(losses="hinge"), r"loss='hinge' is not a known loss"),
    ],
)
def test_unknown_names_and_losses_say_what_is_valid(call, expected):
    with pytest.raises(InvalidArgument, match=expected):
        call()


# -- registration ----------------------------------------------------------------------------


def test_register_canonicalises_and_refuses_duplicates(fresh_registry):
    impl = register(Implementation("mine", "log_loss", abs, formats=("f32", "double")))
    assert (impl.loss, impl.formats) == ("binary_crossentropy", ("float32", "float64"))
    assert get_implementation("mine", "binary_crossentropy") is impl
    assert "mine" in implementation_names()
    with pytest.raises(InvalidArgument, match="already has an implementation"):
        register(Implementation("mine", "binary_crossentropy", abs))
    with pytest.raises(InvalidArgument, match=r"name='mine' has no implementation of"):
        get_implementation("mine", "softmax_cross_entropy_with_logits")


@pytest.mark.parametrize(
    ("impl", "expected"),
    [
        (Implementation("", "log_loss", abs), "name=''"),
        (Implementation("x", "log_loss", 3), "fn=3 .* not callable"),
        (Implementation("x", "log_loss", abs, grad="g"), "grad='g' .* not callable"),
        (Implementation("x", "log_loss", abs, repro=3), "repro=3 .* neither a template"),
        (Implementation("x", "log_loss", abs, backend="pytorch"), "Did you mean 'torch'"),
        (Implementation("x", "nope", abs), "loss='nope'"),
        (Implementation("x", "log_loss", abs, formats=("float128",)), "format='float128'"),
        ("naive", "not an Implementation"),
    ],
)
def test_register_refuses_invalid_implementations(fresh_registry, impl, expected):
    with pytest.raises(InvalidArgument, match=expected):
        register(impl)


# -- a user's module:function ----------------------------------------------------------------


def test_load_user_function(user_module):
    impl = load_user(f"{user_module}:my_loss", "log_loss")
    assert impl.name == f"{user_module}:my_loss"
    assert impl.loss == "binary_crossentropy"
    assert (impl.backend, impl.grad, impl.library) == ("numpy", None, user_module)
    assert impl.description == "Squared error, which is no cross-entropy."
    assert impl.fn(np.array([3.0]), np.array([1.0])).tolist() == [4.0]
    assert impl not in implementations()  # loaded, not registered


def test_a_user_linear_loss_must_take_its_operands_by_name(user_module):
    """``fn(h, labels, W)`` would get ``linear_weight=W`` and fail with a bare TypeError on
    every case; loading it says what the calling convention is instead."""
    with pytest.raises(InvalidArgument, match=r"takes \(predictions, labels\).*linear_weight=W"):
        load_user(f"{user_module}:my_loss", "linear_cross_entropy")
    assert load_user(f"{user_module}:my_loss", "binary_crossentropy").operands == ()


def test_load_user_dotted_attribute_backend_and_through_get_implementation(user_module):
    impl = get_implementation(f"{user_module}:Losses.mine", "softmax_cross_entropy")
    assert impl.loss == "softmax_cross_entropy_with_logits"
    assert impl.fn(np.array([1.0]), np.array([3.0])).tolist() == [2.0]
    assert load_user(f"{user_module}:my_loss", "log_loss", backend="jax").backend == "jax"


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("no_colon", r"spec='no_colon' is not a 'module:function' reference"),
        ("a:b:c", r"not a 'module:function' reference"),
        ("1mod:fn", r"invalid module part '1mod'"),
        (":fn", r"invalid module part ''"),
        ("mod:", r"invalid function part ''"),
        ("mod:fn-x", r"invalid function part 'fn-x'"),
        (
            "stabcheck_no_such_module:fn",
            r"importing module 'stabcheck_no_such_module' failed "
            r"with ModuleNotFoundError",
        ),
        ("stabcheck_test_broken:fn", r"failed with RuntimeError: boom"),
        (f"{USER_MODULE}:my_los", r"has no attribute 'my_los'. Did you mean 'my_loss'\?"),
        (f"{USER_MODULE}:Losses.theirs", rf"'{USER_MODULE}.Losses' has no attribute 'theirs'"),
        (f"{USER_MODULE}:NOT_CALLABLE", r"names a int, which is not callable"),
    ],
)
def test_load_user_bad_specs_say_what_failed(user_module, spec, expected):
    with pytest.raises(InvalidArgument, match=expected):
        load_user(spec, "log_loss")


@pytest.mark.parametrize(
    ("loss", "backend", "expected"),
    [("nope", "numpy", "loss='nope'"), ("log_loss", "numpy2", "backend='numpy2'")],
)
def test_load_user_checks_loss_and_backend(user_module, loss, backend, expected):
    with pytest.raises(InvalidArgument, match=expected):
        load_user(f"{user_module}:my_loss", loss, backend=backend)
