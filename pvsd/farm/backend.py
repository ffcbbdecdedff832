"""What the farm store needs from a database: the few places SQLite and PostgreSQL differ.

The store writes its SQL once, with `?` placeholders and `{now}` for the database's
clock in epoch seconds; a backend rewrites that for its driver and opens connections.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

__all__ = ["Backend", "Connection", "Cursor", "redact_url"]


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def execute(self, sql: str, params: Sequence[Any] = ..., /) -> Any: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Connection(Protocol):
    def close(self) -> None: ...


class Backend(Protocol):
    kind: str
    """"sqlite" or "postgresql"."""

    display_url: str
    """The URL with any password removed, for messages and logs."""

    def connect(self, create: bool) -> Connection:
        """Open a connection; `create` allows making a new, empty database (farm init)."""
        ...

    def transaction(self, connection: Connection, write: bool) -> AbstractContextManager[Cursor]:
        """A cursor inside one transaction, committed on success and rolled back on error."""
        ...

    def sql(self, text: str) -> str:
        """Rewrite portable SQL (`?`, `{now}`) for this driver."""
        ...

    def ddl(self, text: str) -> str:
        """Rewrite schema SQL (`{pk}`, `{real}`) for this database."""
        ...

    def has_table(self, cursor: Cursor, name: str) -> bool: ...

    def lock_schema(self, cursor: Cursor) -> None:
        """Serialise migrations between processes, until the transaction ends."""
        ...

    def notify_change(self, cursor: Cursor, action: str) -> None:
        """Tell the farm's listening servers of `action` when the transaction commits
        (pvsd/farm/changes.py); nothing where the database has no notifications."""
        ...

    def is_integrity_error(self, error: BaseException) -> bool: ...

    def is_unavailable_error(self, error: BaseException) -> bool: ...


def redact_url(url: str) -> str:
    """Drop the password from a database URL so it can be printed."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))
