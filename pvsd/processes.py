"""Event loops for pvsd's processes: uvloop when installed, and what every worker process
(TFTP, stream I/O) does first: the same signals, logging and loop."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable, Coroutine
from multiprocessing.connection import Connection
from typing import Any, TypeVar

import structlog

from pvsd.log import configure_logging, get_logger

__all__ = ["loop_factory", "run", "run_worker", "serve_main_process"]

T = TypeVar("T")


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
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(main(log))


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when it is installed: it cuts the per-packet cost of every UDP service."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T]) -> T:
    """asyncio.run, on uvloop when it is installed."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)


async def serve_main_process(
    connection: Connection,
    every: float,
    report: Callable[[], tuple[Any, ...]],
    handle: Callable[[tuple[Any, ...]], None] | None = None,
) -> None:
    """A worker's side of its pipe: say ready, then pass the main process's messages to `handle`
    and send `report()` every `every` seconds, until "stop", SIGTERM, or the main process is
    gone (the pipe closes: a killed pvsd never leaves workers serving behind it)."""
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stopping.set)

    def on_message() -> None:
        try:
            message: tuple[Any, ...] = connection.recv()
        except (EOFError, OSError):
            stopping.set()
            return
        if message[0] == "stop":
            stopping.set()
        elif handle is not None:
            handle(message)

    loop.add_reader(connection.fileno(), on_message)
    connection.send(("ready",))
    try:
        while not stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), every)
            with contextlib.suppress(OSError):
                connection.send(report())
    finally:
        loop.remove_reader(connection.fileno())
