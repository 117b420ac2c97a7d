"""The package's top level: ``import stabcheck`` stays light, the main entry points are
imported on first use, and ``stabcheck.check`` is the function whatever was imported first."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

import stabcheck

HEAVY = ["hypothesis", "pandas", "torch", "tensorflow", "jax", "scipy", "matplotlib",
         "stabcheck.oracle", "stabcheck.check", "stabcheck.audit", "stabcheck.assertions",
         "stabcheck.strategies", "stabcheck.implementations", "stabcheck.case"]  # fmt: skip


def _python(code: str) -> str:
    """Run ``code`` in a fresh interpreter and return what it printed."""
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                         text=True, check=True)  # fmt: skip
    return out.stdout.strip()


def test_import_stabcheck_imports_no_framework_and_no_engine():
    out = _python(
        f"""
        import sys, stabcheck
        print([m for m in {HEAVY!r} if m in sys.modules])
        """
    )
    assert out == "[]"


def test_a_lazy_name_imports_its_module_on_first_use():
    out = _python(
        """
        import sys, stabcheck
        before = "stabcheck.oracle" in sys.modules
        exact = stabcheck.exact
        print(before, "stabcheck.oracle" in sys.modules, "stabcheck.check" in sys.modules,
              exact.__module__, "exact" in vars(stabcheck))
        """
    )
    assert out == "False True False stabcheck.oracle True"


@pytest.mark.parametrize(
    ("name", "module"),
    [
        ("check", "stabcheck.check"),
        ("assert_exact", "stabcheck.assertions"),
        ("exact", "stabcheck.oracle"),
        ("Case", "stabcheck.case"),
        ("run_audit", "stabcheck.audit"),
        ("NotExact", "stabcheck.assertions"),
        ("StabcheckFailure", "stabcheck.check"),
    ],
)
def test_each_lazy_name_resolves_to_its_module_s_object(name, module):
    value = getattr(stabcheck, name)
    assert value is getattr(sys.modules[module], name)
    assert callable(value) and value.__module__ == module
    assert name in stabcheck.__all__ and name in dir(stabcheck)


def test_every_public_name_resolves_and_an_unknown_one_is_an_attribute_error():
    for name in stabcheck.__all__:
        assert getattr(stabcheck, name) is not None
    with pytest.raises(AttributeError, match="module 'stabcheck' has no attribute 'chek'"):
        stabcheck.chek  # noqa: B018
    assert not hasattr(stabcheck, "chek")


def test_from_stabcheck_import_the_five():
    from stabcheck import Case, assert_exact, check, exact, run_audit
    from stabcheck.assertions import assert_exact as assert_exact_itself
    from stabcheck.audit import run_audit as run_audit_itself
    from stabcheck.case import Case as Case_itself
    from stabcheck.check import check as check_itself
    from stabcheck.oracle import exact as exact_itself

    assert (check, exact, Case, run_audit, assert_exact) == (
        check_itself, exact_itself, Case_itself, run_audit_itself, assert_exact_itself
    )  # fmt: skip


@pytest.mark.parametrize(
    "first",
    ["import stabcheck.check", "from stabcheck.check import check", "from stabcheck import check"],
)
def test_stabcheck_check_is_the_function_whatever_came_first(first):
    out = _python(
        f"""
        import sys, types
        {first}
        import stabcheck, stabcheck.check
        from stabcheck import check
        from stabcheck.check import check as function, StabcheckFailure, CheckResult
        module = sys.modules["stabcheck.check"]
        print(type(module) is types.ModuleType, module.check is function,
              check is function, stabcheck.check is function, callable(stabcheck.check))
        """
    )
    assert out == "True True True True True"


def test_import_as_names_the_function_as_documented():
    """The one form the name clash decides: ``import stabcheck.check as m`` reads the
    package's attribute, which is the function (the module docstring says so)."""
    out = _python(
        """
        import stabcheck.check as m
        print(type(m).__name__, m.__module__)
        """
    )
    assert out == "function stabcheck.check"
    assert "``stabcheck.check`` is always the function" in stabcheck.__doc__


def test_a_lazy_name_can_be_replaced_by_a_test(monkeypatch):
    def fake(*args, **kwargs):
        return "fake"

    monkeypatch.setattr(stabcheck, "check", fake)
    assert stabcheck.check is fake and stabcheck.check() == "fake"
    monkeypatch.undo()
    assert stabcheck.check is sys.modules["stabcheck.check"].check
