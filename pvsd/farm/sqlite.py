"""The embedded backend: one SQLite file in WAL mode, shared by every pvsd on one host."""

from __future__ import annotations

import fcntl
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pvsd.errors import Misuse
from pvsd.farm.backend import Connection, Cursor
from pvsd.farm.errors import Conflict, FarmNotInitialised, FarmReplaced, StoreUnavailable

__all__ = ["SqliteBackend"]

# How long a writer waits for another process's write transaction before giving up.
BUSY_TIMEOUT_MS = 10_000


class SqliteBackend:
    kind = "sqlite"

    def __init__(self, url: str) -> None:
        # sqlite:///relative/path and sqlite:////absolute/path, as SQLAlchemy spells them.
        self.path = Path(url.removeprefix("sqlite:///"))
        self.display_url = url
        # The file's (device, inode) at the first connection: a process must never go on with
        # a deleted file while `farm init` makes a new one at its path (a split brain).
        self._identity: tuple[int, int] | None = None

    def _clear_orphaned_journal(self) -> None:
        """The -wal and -shm of a deleted farm: removed if nobody uses them, else Conflict.

        Servers may still run on the deleted file (they stop at their next heartbeat), and a new
        farm at this path would share their journal. Every SQLite connection in WAL mode holds
        a lock on the -shm file, so a lock nobody else holds proves nobody is connected."""
        wal, shm = Path(f"{self.path}-wal"), Path(f"{self.path}-shm")
        if shm.exists():
            with shm.open("r+b") as held:
                try:
                    fcntl.lockf(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    raise Conflict(
                        f"{shm} is in use but {self.path} does not exist: the farm database was "
                        "deleted and servers are still running on it. They stop by themselves "
                        "within a heartbeat; run farm init again then"
                    ) from None
                shm.unlink()
        wal.unlink(missing_ok=True)

    def _check_identity(self) -> None:
        try:
            info = self.path.stat()
            now: tuple[int, int] | None = (info.st_dev, info.st_ino)
        except FileNotFoundError:
            now = None
        if self._identity is None:
            self._identity = now
        elif now != self._identity:
            what = "deleted" if now is None else "replaced by another file"
            raise FarmReplaced(
                f"the farm database {self.path} was {what} while this process used it: stopping, "
                "so that nobody serves from a farm the others cannot see. Restore the file, or "
                "run `pvsd farm init` and start the servers again"
            )

    def connect(self, create: bool) -> Connection:
        if not create and not self.path.exists():
            raise FarmNotInitialised(
                f"no farm database at {self.path}: run `pvsd farm init` first (or set [farm] database)"
            )
        if create and not self.path.exists():
            self._clear_orphaned_journal()
        try:
            if create:
                # One new folder (var/ in a fresh checkout), never a whole missing tree: a
                # mistyped absolute path should fail, not make a farm somewhere unexpected.
                if not self.path.parent.parent.is_dir():
                    raise StoreUnavailable(
                        f"cannot create farm database {self.path}: {self.path.parent.parent} does not exist"
                    )
                self.path.parent.mkdir(exist_ok=True)
            connection = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
            )
            connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            connection.execute("PRAGMA journal_mode = WAL")
            connection.execute("PRAGMA synchronous = NORMAL")
            connection.execute("PRAGMA foreign_keys = ON")
        except (sqlite3.Error, OSError) as error:
            raise StoreUnavailable(f"cannot open farm database {self.path}: {error}") from error
        self._check_identity()
        return connection

    @contextmanager
    def transaction(self, connection: Connection, write: bool) -> Iterator[Cursor]:
        if not isinstance(connection, sqlite3.Connection):
            raise Misuse(f"a SQLite transaction on a {type(connection).__name__}")
        self._check_identity()  # one stat: cheap next to a transaction
        cursor = connection.cursor()
        # IMMEDIATE takes the write lock up front, so two writers queue on busy_timeout
        # instead of one failing with "database is locked" when it upgrades its lock.
        cursor.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            yield cursor
        except BaseException:
            connection.rollback()
            raise
        else:
            connection.commit()
        finally:
            cursor.close()

    def sql(self, text: str) -> str:
        return text.replace("{now}", "((julianday('now') - 2440587.5) * 86400.0)")

    def ddl(self, text: str) -> str:
        return text.replace("{pk}", "INTEGER PRIMARY KEY AUTOINCREMENT").replace("{real}", "REAL")

    def has_table(self, cursor: Cursor, name: str) -> bool:
        cursor.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,))
        return cursor.fetchone() is not None

    def lock_schema(self, cursor: Cursor) -> None:
        """BEGIN IMMEDIATE already holds the database's single write lock."""

    def notify_change(self, cursor: Cursor, action: str) -> None:
        """One host: its servers poll the file; there is no one to notify."""

    def is_integrity_error(self, error: BaseException) -> bool:
        return isinstance(error, sqlite3.IntegrityError)

    def is_unavailable_error(self, error: BaseException) -> bool:
        return isinstance(error, sqlite3.OperationalError | sqlite3.DatabaseError) and not isinstance(
            error, sqlite3.IntegrityError
        )
