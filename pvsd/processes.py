"""What every worker process (TFTP, stream I/O) does first: the same signals, logging and loop."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Coroutine
from typing import Any

import structlog

from pvsd.log import configure_logging, get_logger

__all__ = ["run_worker"]


def run_worker(
    component: str,
    level: str,
    fmt: str,
    main: Callable[[structlog.stdlib.BoundLogger], Coroutine[Any, Any, None]],
    **bind: Any,
) -> None:
    """Run `main(log)` on a fresh event loop (uvloop when installed) in this worker process."""
    # Ctrl-C on a terminal reaches the whole process group: the main process decides when we stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    configure_logging(level, fmt)
    log = get_logger(component).bind(**bind)
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with runner:
        runner.run(main(log))
