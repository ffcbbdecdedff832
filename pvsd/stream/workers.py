"""The I/O worker processes: `[stream] workers` of them, one port each, one event loop each.

Worker i binds the i-th port of `[stream] ports`. Every STATS_INTERVAL_S it tells the main
process which sessions it serves (the main process stamps them in the farm store and
balances new sessions over the workers by these counts). A worker exits when its pipe to the
main process closes, so a killed pvsd never leaves workers serving behind it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import multiprocessing
import os
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

import structlog

from pvsd.errors import Failure
from pvsd.log import logging_settings
from pvsd.privileges import drop_privileges
from pvsd.processes import run_worker, serve_main_process
from pvsd.stream.io import IoServer, IoSettings, IoStats

__all__ = ["StreamWorkers", "stream_worker_count"]

STATS_INTERVAL_S = 1.0
START_TIMEOUT_S = 30.0


def stream_worker_count(configured: int, ports: range) -> int:
    wanted = configured if configured > 0 else max(1, os.cpu_count() or 1)
    return min(wanted, len(ports))


class StreamWorkers:
    """The worker processes, seen from the main process."""

    def __init__(
        self,
        settings: IoSettings,
        host: str,
        ports: range,
        user: str,
        log: structlog.stdlib.BoundLogger,
        on_closed: Callable[[int], None] | None = None,
    ) -> None:
        self.settings = settings
        self.on_closed = on_closed
        self.host = host
        self.ports = ports
        self.user = user
        self.log = log
        self.sessions: dict[int, set[int]] = {port: set() for port in ports}  # port -> session ids
        self.stats: dict[int, IoStats] = {}
        self._assigned: collections.Counter[int] = collections.Counter()  # ports given since the last stats
        self._workers: list[tuple[int, multiprocessing.process.BaseProcess, Connection]] = []

    @property
    def live_ports(self) -> list[int]:
        return [port for port, process, _ in self._workers if process.is_alive()]

    def least_loaded_port(self) -> int | None:
        """The worker port for a new session. It counts at once: workers report their sessions
        only every STATS_INTERVAL_S, and a boot storm's logins must not all see the same counts."""
        ports = self.live_ports
        if not ports:
            return None
        port = min(ports, key=lambda port: (len(self.sessions[port]) + self._assigned[port], port))
        self._assigned[port] += 1
        return port

    def session_ids(self) -> list[int]:
        return sorted(set().union(*self.sessions.values())) if self.sessions else []

    async def start(self) -> None:
        context = multiprocessing.get_context("spawn")
        level, fmt = logging_settings()
        for port in self.ports:
            ours, theirs = context.Pipe()
            process = context.Process(
                target=worker_main,
                args=(self.settings, self.host, port, self.user, level, fmt, theirs),
                name=f"pvsd-stream-{port}",
                daemon=True,
            )
            process.start()
            theirs.close()
            self._workers.append((port, process, ours))
        for port, _, connection in self._workers:
            ready = await asyncio.to_thread(connection.poll, START_TIMEOUT_S)
            message = connection.recv() if ready else ("error", "did not start in time")
            if message[0] != "ready":
                await self.close()
                raise Failure(f"cannot stream on {self.host}:{port}: {message[1]}")
            asyncio.get_running_loop().add_reader(connection.fileno(), self._on_message, port, connection)
        self.log.info(
            "stream workers started", workers=len(self._workers), ports=f"{self.ports[0]}-{self.ports[-1]}"
        )

    def _on_message(self, port: int, connection: Connection) -> None:
        try:
            message = connection.recv()
        except (EOFError, OSError):
            asyncio.get_running_loop().remove_reader(connection.fileno())
            lost = len(self.sessions[port])
            self.sessions[port] = set()
            self.log.error(
                "stream worker died; its targets log in again to another port or server",
                port=port,
                sessions=lost,
            )
            return
        if message[0] == "stats":
            self._on_stats(port, message[1], message[2])
        elif message[0] == "closed":
            self.sessions[port].discard(message[1])
            if self.on_closed is not None:
                self.on_closed(message[1])

    def _on_stats(self, port: int, sessions: list[int], stats: dict[str, int]) -> None:
        self.sessions[port] = set(sessions)
        self._assigned[port] = 0  # attached by now, or gone
        self.stats[port] = IoStats(**stats)

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        for _, _, connection in self._workers:
            with contextlib.suppress(OSError, ValueError):
                loop.remove_reader(connection.fileno())
            with contextlib.suppress(OSError):
                connection.send(("stop",))
        for _, process, connection in self._workers:
            await asyncio.to_thread(process.join, 5.0)
            if process.is_alive():
                process.kill()
                await asyncio.to_thread(process.join, 2.0)
            connection.close()
        self._workers = []


def worker_main(
    settings: IoSettings, host: str, port: int, user: str, level: str, fmt: str, connection: Connection
) -> None:
    """The entry point of a worker process."""
    run_worker(
        "stream", level, fmt, lambda log: _serve(settings, host, port, user, log, connection), port=port
    )


async def _serve(
    settings: IoSettings,
    host: str,
    port: int,
    user: str,
    log: structlog.stdlib.BoundLogger,
    connection: Connection,
) -> None:
    def closed(session_id: int) -> None:
        with contextlib.suppress(OSError):
            connection.send(("closed", session_id))

    server = IoServer(settings, log, on_closed=closed)
    try:
        server.bind(host, port)
        drop_privileges(user)
    except (OSError, Failure) as error:
        connection.send(("error", getattr(error, "strerror", None) or str(error)))
        return

    def report() -> tuple[Any, ...]:
        server.expire_idle()
        return ("stats", list(server.sessions), dataclasses.asdict(server.stats))

    try:
        await serve_main_process(connection, STATS_INTERVAL_S, report)
    finally:
        server.close()
