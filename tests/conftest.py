"""Shared test set-up: pytester, for the plugin's tests in tests/plugin/."""

pytest_plugins = ["pytester"]
