"""Fixtures shared by every test: farm store URLs for both backends, and a PostgreSQL cluster."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.postgres import Cluster, PostgresMissing, postgres_cluster

BACKENDS = ("sqlite", "postgresql")


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Cluster]:
    """One throwaway PostgreSQL server for the whole run.

    A missing PostgreSQL fails the tests rather than skipping them: the issue says the
    PostgreSQL run must happen. PVSD_SKIP_POSTGRES=1 skips it on a developer's machine.
    """
    if os.environ.get("PVSD_SKIP_POSTGRES") == "1":
        pytest.skip("PVSD_SKIP_POSTGRES=1")
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
