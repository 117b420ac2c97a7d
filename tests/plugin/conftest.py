"""The arguments that load the plugin in the plugin tests' inner pytest runs."""

from __future__ import annotations

import pytest

# In-process inner runs unload the modules they imported, and ml_dtypes (which stabcheck's
# implementations and audit import) cannot be imported twice in one process: load them here,
# before any inner run, so that they stay loaded.
import stabcheck.audit
import stabcheck.check  # noqa: F401

# Inner runs load the plugin by module name. Once the ``pytest11`` entry point is installed
# pytest autoloads it as "stabcheck" too, and registering one module under two names is an
# error: block the entry-point name first, so that both setups load it exactly once.
PLUGIN_ARGS = ("-p", "no:stabcheck", "-p", "stabcheck.pytest_plugin")


@pytest.fixture
def run(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch):
    """Run pytest in-process on the files written with ``pytester``, with the plugin, as
    under CI (derandomized, no example database) so that no run depends on an earlier one."""
    monkeypatch.setenv("CI", "true")

    def run(*args: str, subprocess: bool = False) -> pytest.RunResult:
        runpytest = pytester.runpytest_subprocess if subprocess else pytester.runpytest
        return runpytest(*PLUGIN_ARGS, "-p", "no:cacheprovider", *args)

    return run
