"""Suite-wide test configuration.

- ``--runslow`` (or ``make soak``) runs tests marked ``slow``; they are skipped otherwise.
- Under ``CI=true`` nothing may skip: a skipped test fails the run, because CI has
  every peer installed and runs as root.
"""

from __future__ import annotations

import os

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--runslow"):
        return
    kept, deselected = [], []
    for item in items:
        (deselected if "slow" in item.keywords else kept).append(item)
    if deselected:
        # Deselected, not skipped: slow tests are not part of `make test`, by design.
        config.hook.pytest_deselected(items=deselected)
        items[:] = kept


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.environ.get("CI", "").lower() not in ("1", "true", "yes"):
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        return
    skipped = reporter.stats.get("skipped", [])
    if skipped:
        reporter.write_line(f"CI=true: {len(skipped)} test(s) skipped; CI must run everything", red=True)
        for report in skipped:
            reporter.write_line(f"  skipped: {report.nodeid}: {report.longrepr}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
