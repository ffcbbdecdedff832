"""Store errors. Each is also a BadInput (exit 2) or a Failure (exit 1) for the command line."""

from __future__ import annotations

from pvsd.errors import BadInput, Failure, PvsdError

__all__ = [
    "AlreadyExists",
    "Conflict",
    "FarmNotInitialised",
    "FarmReplaced",
    "NotFound",
    "SchemaMismatch",
    "StoreError",
    "StoreUnavailable",
    "first_line",
]


class StoreError(PvsdError):
    """Anything the farm store refuses or fails to do."""


class StoreUnavailable(StoreError, Failure):
    """The database cannot be reached or is not answering."""


class FarmReplaced(StoreError, Failure):
    """The SQLite file this process opened was deleted or replaced under it."""


class FarmNotInitialised(StoreError, Failure):
    """The database holds no farm: `pvsd farm init` has not been run against it."""


class SchemaMismatch(StoreError, Failure):
    """The farm was written by a newer pvsd than this one."""


class NotFound(StoreError, BadInput):
    """A named thing (device, vDisk, site, server) does not exist."""


class AlreadyExists(StoreError, BadInput):
    """A thing with that name or MAC exists already."""


class Conflict(StoreError, BadInput):
    """The change contradicts the farm's current state (an alive server, an assigned vDisk...)."""


def first_line(error: BaseException) -> str:
    """A driver's error, told in one line (drivers add detail lines and hints below)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
