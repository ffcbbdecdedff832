"""A throwaway PostgreSQL cluster from Debian's binaries, started and stopped by the tests.

PostgreSQL refuses to run as root, so as root the cluster belongs to the `postgres` user
(runuser); as anyone else it runs as that user. It listens on 127.0.0.1 only, on a free
port, with trust authentication, in a temporary folder removed afterwards.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg

from support.net import free_port


class PostgresMissing(RuntimeError):
    pass


def postgres_bindir() -> Path:
    """The newest Debian PostgreSQL's bin folder (or $PVSD_TEST_PG_BINDIR)."""
    override = os.environ.get("PVSD_TEST_PG_BINDIR")
    if override:
        return Path(override)
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name)
    )
    if not candidates:
        raise PostgresMissing(
            "PostgreSQL server binaries not found under /usr/lib/postgresql: install Debian's "
            "`postgresql` package (`make test` does it when run as root)"
        )
    return candidates[-1].parent


@dataclass
class Cluster:
    port: int
    folder: Path

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        with psycopg.connect(self.url(), autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


def _as_owner(command: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@contextmanager
def postgres_cluster() -> Iterator[Cluster]:
    bindir = postgres_bindir()
    folder = Path(tempfile.mkdtemp(prefix="pvsd-pg-"))
    if os.geteuid() == 0:
        entry = pwd.getpwnam("postgres")
        os.chown(folder, entry.pw_uid, entry.pw_gid)
    data = folder / "data"
    port = free_port()
    pg_ctl = str(bindir / "pg_ctl")
    try:
        subprocess.run(
            _as_owner([str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync"]),
            check=True,
            capture_output=True,
        )
        options = f"-k {folder} -c listen_addresses=127.0.0.1 -p {port} -c fsync=off"
        subprocess.run(
            _as_owner([pg_ctl, "-D", str(data), "-o", options, "-l", str(folder / "log"), "-w", "start"]),
            check=True,
            capture_output=True,
        )
        try:
            yield Cluster(port=port, folder=folder)
        finally:
            subprocess.run(_as_owner([pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"]), capture_output=True)
    except subprocess.CalledProcessError as error:
        log = folder / "log"
        detail = log.read_text() if log.exists() else ""
        raise RuntimeError(f"throwaway PostgreSQL failed: {error}\n{error.stderr!r}\n{detail}") from error
    finally:
        shutil.rmtree(folder, ignore_errors=True)
