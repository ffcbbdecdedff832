"""The errors that reach a user, each with the exit code the command line gives it.

Exit code 2 means the input was wrong (a bad MAC, a duplicate device, an unknown
vDisk, a bad config key); the user can fix the command. Exit code 1 means the
command was fine but something it needs failed (the database is unreachable).
"""

from __future__ import annotations

__all__ = ["BadInput", "Failure", "Misuse", "PvsdError"]


class PvsdError(Exception):
    """An error meant for the user: its message is shown as it is, without a traceback."""

    exit_code = 1


class BadInput(PvsdError):
    """The user's input is wrong: fix the command, the config or the data."""

    exit_code = 2


class Failure(PvsdError):
    """The input is fine but something it depends on failed."""

    exit_code = 1


class Misuse(RuntimeError):
    """Our own code called an API out of order or with what it promised not to pass: a bug, never
    the user's input. It is not a PvsdError, so the command line reports it as an internal error."""
