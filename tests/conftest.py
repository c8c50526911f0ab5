"""Shared fixtures. In CI (CI=true) a skipped test counts as a failure: a test that did not run proved nothing."""

from __future__ import annotations

import os

import pytest

from engine.models.store import ModelStore

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

# The X display must be up before any test creates the QApplication, whichever test runs first.
pytest_plugins = ["tests.harness.display"]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if IN_CI and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, which counts as a failure: {report.longrepr}"


@pytest.fixture(scope="session")
def model_store() -> ModelStore:
    return ModelStore()
