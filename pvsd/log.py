"""Logging with structlog: readable on a terminal, one JSON object per line otherwise.

Request handlers bind `peer` and `mac` (see `request_logger`) so that every line about a
request says who it came from; at 3 a.m. grep for a MAC and see its whole story.
"""

from __future__ import annotations

import io
import logging
import sys
from typing import Any, Literal, TextIO, cast

import structlog

__all__ = ["LOG_FORMATS", "configure_logging", "get_logger", "logging_settings", "request_logger"]

LOG_FORMATS = ("auto", "console", "json")
LogFormat = Literal["auto", "console", "json"]


_settings = ("info", "auto")


def logging_settings() -> tuple[str, str]:
    """The level and format this process logs with, for its worker processes to use too."""
    return _settings


class _CurrentStderr(io.TextIOBase):
    """Whatever sys.stderr is at each write: a caller that swaps it (a test capturing output,
    a daemon redirecting it) never leaves the loggers writing to a closed file."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.stderr.isatty()


def configure_logging(
    level: str = "info", fmt: str = "auto", stream: TextIO | None = None, colors: bool | None = None
) -> None:
    """Set up structlog once per process. `fmt` "auto" means console on a tty, else JSON; console
    lines are coloured on a tty unless `colors` says otherwise."""
    global _settings
    out = stream or cast(TextIO, _CurrentStderr())
    if fmt == "auto":
        fmt = "console" if out.isatty() else "json"
    _settings = (level, fmt)
    renderer: Any
    if fmt == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=out.isatty() if colors is None else colors)
    else:
        renderer = structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )


def get_logger(component: str) -> structlog.stdlib.BoundLogger:
    """A logger whose lines name the component ("farm", "tftp", ...)."""
    logger: structlog.stdlib.BoundLogger = structlog.get_logger(component=component)
    return logger


def request_logger(
    logger: structlog.stdlib.BoundLogger, peer: tuple[str, int] | str, mac: str | None = None
) -> structlog.stdlib.BoundLogger:
    """Bind the peer (and the target's MAC when known) to every line logged about one request."""
    where = peer if isinstance(peer, str) else f"{peer[0]}:{peer[1]}"
    bound = logger.bind(peer=where)
    return bound.bind(mac=mac) if mac else bound
