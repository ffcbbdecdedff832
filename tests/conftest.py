"""Fixtures shared by every test: farm store URLs for both backends, and a PostgreSQL cluster."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import needs
from support.postgres import Cluster, PostgresMissing, postgres_cluster

BACKENDS = ("sqlite", "postgresql")


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Cluster]:
    """One throwaway PostgreSQL server for the whole run.

    A missing PostgreSQL fails the tests rather than skipping them: `make test` installs it.
    PVSD_SKIP_POSTGRES=1 skips it on a developer's machine (never under CI).
    """
    if os.environ.get("PVSD_SKIP_POSTGRES") == "1":
        needs.unavailable("PVSD_SKIP_POSTGRES=1")
    try:
        with postgres_cluster() as cluster:
            yield cluster
    except PostgresMissing as error:
        pytest.fail(str(error))


@pytest.fixture(params=BACKENDS)
def farm_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A URL for an empty farm database: a new SQLite file, or a new PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/farm.db"
    cluster: Cluster = request.getfixturevalue("pg_cluster")
    return cluster.create_database(f"farm_{uuid.uuid4().hex[:12]}")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The compose farm's test runs last: the Docker engine it starts changes the host's firewall
    (tests/support/compose.py puts it back), and its load would slow every test beside it."""
    items.sort(key=lambda item: item.get_closest_marker("compose") is not None)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Under CI=true nothing skips (support/needs.py): a skip there would hide a broken machine."""
    outcome = yield
    report: pytest.TestReport = outcome.get_result()  # type: ignore[attr-defined]
    if report.skipped and needs.in_ci() and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped under CI, where nothing may skip: {reason}"
