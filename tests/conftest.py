"""Shared test set-up: pytester, for the plugin's tests in tests/plugin/; the oracle's cache
in a folder of the session's own, so that every session starts without one, as on a fresh
machine."""

import os
import tempfile

pytest_plugins = ["pytester"]


def pytest_configure(config):
    os.environ["STABCHECK_CACHE_DIR"] = tempfile.mkdtemp(prefix="stabcheck-test-cache-")


def pytest_unconfigure(config):
    import shutil

    shutil.rmtree(os.environ.get("STABCHECK_CACHE_DIR", ""), ignore_errors=True)
