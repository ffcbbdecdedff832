"""pvsd's worker processes (TFTP, stream I/O): one manager on the main side, one loop on the worker
side, and the typed messages between them; and the event loop every process runs on.

The main process spawns the workers, waits until each says `Ready` (or `StartFailed`), then
hears their messages on its own event loop. A worker exits on `Stop`, on SIGTERM, or when its
pipe closes: a killed pvsd never leaves workers serving behind it. A worker is dead when its
process has exited, and only then: a message that cannot be read or sent is no death.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import signal
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any, TypeVar

import structlog

from pvsd.errors import Failure
from pvsd.log import configure_logging, get_logger, logging_settings

__all__ = [
    "Ready",
    "StartFailed",
    "Stop",
    "WorkerPool",
    "WorkerSpec",
    "loop_factory",
    "run",
    "run_worker",
    "serve_main_process",
    "watch_connection",
]

T = TypeVar("T")
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Ready:
    """Worker -> main: bound and serving."""


@dataclass(frozen=True)
class StartFailed:
    """Worker -> main: it could not start (a port taken, a user that does not exist)."""

    reason: str


@dataclass(frozen=True)
class Stop:
    """Main -> worker: finish and exit."""


@dataclass(frozen=True)
class WorkerSpec:
    """One worker to spawn: `target(*args, level, fmt, connection)` runs in the new process."""

    key: int
    name: str
    target: Callable[..., None]
    args: tuple[Any, ...]


class WorkerPool:
    """The worker processes of one service, seen from the main process.

    `on_message(key, message)` hears every message a worker sends after `Ready`;
    `on_death(key, exit_code)` hears a worker whose process exited while the pool was running.
    """

    def __init__(
        self,
        service: str,
        log: structlog.stdlib.BoundLogger,
        on_message: Callable[[int, object], None],
        on_death: Callable[[int, int | None], None],
    ) -> None:
        self.service = service
        self.log = log
        self.on_message = on_message
        self.on_death = on_death
        self._workers: dict[int, tuple[BaseProcess, Connection]] = {}

    @property
    def keys(self) -> list[int]:
        return list(self._workers)

    def alive(self, key: int) -> bool:
        worker = self._workers.get(key)
        return worker is not None and worker[0].is_alive()

    async def start(self, specs: Sequence[WorkerSpec]) -> None:
        context = multiprocessing.get_context("spawn")
        level, fmt = logging_settings()
        for spec in specs:
            ours, theirs = context.Pipe()
            process = context.Process(
                target=spec.target, args=(*spec.args, level, fmt, theirs), name=spec.name, daemon=True
            )
            process.start()
            theirs.close()
            self._workers[spec.key] = (process, ours)
        loop = asyncio.get_running_loop()
        for spec in specs:
            connection = self._workers[spec.key][1]
            ready = await asyncio.to_thread(connection.poll, START_TIMEOUT_S)
            try:
                message = connection.recv() if ready else StartFailed("did not start in time")
            except (EOFError, OSError):
                message = StartFailed("exited while starting")
            if not isinstance(message, Ready):
                await self.close()
                reason = message.reason if isinstance(message, StartFailed) else f"said {message!r}"
                raise Failure(f"{spec.name} could not start: {reason}")
            watch_connection(loop, connection, self._readable, spec.key, connection)
            # The process's sentinel becomes readable when it exits: that, not the pipe, is death.
            loop.add_reader(self._workers[spec.key][0].sentinel, self._exited, spec.key)

    def _readable(self, key: int, connection: Connection) -> None:
        try:
            message = connection.recv()
        except EOFError:
            # The worker is exiting (or closed its end): its sentinel reports the exit.
            asyncio.get_running_loop().remove_reader(connection.fileno())
            return
        except OSError as error:
            asyncio.get_running_loop().remove_reader(connection.fileno())
            self.log.warning(
                "lost the pipe to a worker; it keeps serving, unheard",
                service=self.service,
                worker=key,
                error=str(error),
            )
            return
        self.on_message(key, message)

    def _exited(self, key: int) -> None:
        loop = asyncio.get_running_loop()
        process, connection = self._workers[key]
        loop.remove_reader(process.sentinel)
        with contextlib.suppress(OSError, ValueError):
            loop.remove_reader(connection.fileno())
        process.join(0.1)
        self.on_death(key, process.exitcode)

    def send(self, key: int, message: object) -> bool:
        """False when the worker is gone (its pipe is closed)."""
        try:
            self._workers[key][1].send(message)
        except (OSError, KeyError):
            return False
        return True

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        for process, connection in self._workers.values():
            with contextlib.suppress(OSError, ValueError):
                loop.remove_reader(process.sentinel)
            with contextlib.suppress(OSError, ValueError):
                loop.remove_reader(connection.fileno())
            with contextlib.suppress(OSError):
                connection.send(Stop())
        for process, connection in self._workers.values():
            await asyncio.to_thread(process.join, STOP_TIMEOUT_S)
            if process.is_alive():
                process.kill()
                await asyncio.to_thread(process.join, 2.0)
            connection.close()
        self._workers = {}


def watch_connection(
    loop: asyncio.AbstractEventLoop, connection: Connection, callback: Callable[..., None], *args: Any
) -> None:
    """`callback(*args)` whenever `connection` has a message, with the descriptor kept blocking.

    uvloop (libuv's uv_poll_init) switches a watched descriptor to non-blocking mode, but a
    multiprocessing Connection is written for blocking ones: a message larger than the socket
    buffer then stopped half-way on send (BlockingIOError, the rest never sent) and failed
    half-way on receive, which the pool took for the worker's death. Readiness comes from the
    loop; the reads and writes themselves block, as the Connection expects, for the moment a
    message takes to pass.
    """
    loop.add_reader(connection.fileno(), callback, *args)
    os.set_blocking(connection.fileno(), True)


# -- the worker side -------------------------------------------------------------------------------


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
    # A terminal's hangup reaches the whole process group: the main process decides what it means.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    configure_logging(level, fmt)
    log = get_logger(component).bind(**bind)
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(main(log))


async def serve_main_process(
    connection: Connection,
    every: float,
    report: Callable[[], object],
    handle: Callable[[object], None] | None = None,
) -> None:
    """A worker's side of its pipe: say `Ready`, then pass the main process's messages to `handle`
    and send `report()` every `every` seconds, until `Stop`, SIGTERM, or the main process is gone
    (the pipe closes)."""
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stopping.set)

    def on_message() -> None:
        try:
            message: object = connection.recv()
        except (EOFError, OSError):
            stopping.set()
            return
        if isinstance(message, Stop):
            stopping.set()
        elif handle is not None:
            handle(message)

    watch_connection(loop, connection, on_message)
    connection.send(Ready())
    try:
        while not stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), every)
            with contextlib.suppress(OSError):
                connection.send(report())
    finally:
        loop.remove_reader(connection.fileno())


# -- event loops -----------------------------------------------------------------------------------


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
