"""A throwaway PostgreSQL cluster from Debian's binaries, started and stopped by the tests.

PostgreSQL refuses to run as root, so as root the cluster belongs to the `postgres` user
(runuser); as anyone else it runs as that user. It listens on 127.0.0.1 only, on a free
port, with trust authentication, in a temporary folder removed afterwards.
"""

from __future__ import annotations

import contextlib
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
    """Debian's PostgreSQL server is not installed."""


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
    bindir: Path

    @property
    def data(self) -> Path:
        return self.folder / "data"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        with psycopg.connect(self.url(), autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def start(self) -> None:
        options = f"-k {self.folder} -c listen_addresses=127.0.0.1 -p {self.port} -c fsync=off"
        self._pg_ctl("-o", options, "-l", str(self.folder / "log"), "-w", "start")

    def stop(self) -> None:
        self._pg_ctl("-m", "immediate", "-w", "stop")

    def _pg_ctl(self, *args: str) -> None:
        try:
            subprocess.run(
                _as_owner([str(self.bindir / "pg_ctl"), "-D", str(self.data), *args]),
                check=True,
                capture_output=True,
            )
        except subprocess.CalledProcessError as error:
            log = self.folder / "log"
            detail = log.read_text() if log.exists() else ""
            raise RuntimeError(f"pg_ctl {' '.join(args)} failed: {error.stderr!r}\n{detail}") from error


def _as_owner(command: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@contextmanager
def postgres_cluster() -> Iterator[Cluster]:
    bindir = postgres_bindir()
    folder = Path(tempfile.mkdtemp(prefix="pvsd-pg-"))
    if os.geteuid() == 0:
        entry = pwd.getpwnam("postgres")
        os.chown(folder, entry.pw_uid, entry.pw_gid)
    cluster = Cluster(port=free_port(), folder=folder, bindir=bindir)
    try:
        subprocess.run(
            _as_owner(
                [
                    str(bindir / "initdb"),
                    "-D",
                    str(cluster.data),
                    "-A",
                    "trust",
                    "-U",
                    "postgres",
                    "--no-sync",
                ]
            ),
            check=True,
            capture_output=True,
        )
        cluster.start()
        try:
            yield cluster
        finally:
            with contextlib.suppress(RuntimeError):
                cluster.stop()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
