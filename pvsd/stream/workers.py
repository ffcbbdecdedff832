"""The I/O worker processes: `[stream] workers` of them, one port each, one event loop each.

Worker i binds the i-th port of `[stream] ports`. Every STATS_INTERVAL_S it tells the main
process which sessions it serves (the main process stamps them in the farm store and
balances new sessions over the workers by these counts), and at once when one ends.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection

import structlog

from pvsd.errors import Failure
from pvsd.privileges import drop_privileges
from pvsd.processes import StartFailed, WorkerPool, WorkerSpec, run_worker, serve_main_process
from pvsd.stream.io import IoServer, IoSettings, IoStats

__all__ = ["SessionClosed", "StreamReport", "StreamWorkers", "stream_worker_count"]

STATS_INTERVAL_S = 1.0


@dataclass(frozen=True)
class StreamReport:
    """Worker -> main, every STATS_INTERVAL_S: the sessions it serves and its counters."""

    sessions: tuple[int, ...]
    stats: IoStats


@dataclass(frozen=True)
class EndSessions:
    """Main process to worker: the farm ended these sessions."""

    sessions: tuple[int, ...]
    why: str


@dataclass(frozen=True)
class SessionClosed:
    """Worker -> main: a session ended (logout, idle, attached again, server stopping)."""

    session: int


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
        self._assigned: collections.Counter[int] = collections.Counter()  # ports given since the last report
        self._pool = WorkerPool("stream", log, self._on_message, self._on_death)

    @property
    def live_ports(self) -> list[int]:
        return [port for port in self._pool.keys if self._pool.alive(port)]

    def port_loads(self) -> dict[int, int]:
        """Sessions per live worker port, counting those given out since the workers last reported:
        they report only every STATS_INTERVAL_S, and a boot storm's logins must not all see the
        same counts."""
        return {port: len(self.sessions[port]) + self._assigned[port] for port in self.live_ports}

    def assign(self, port: int) -> None:
        self._assigned[port] += 1

    def session_ids(self) -> list[int]:
        return sorted(set().union(*self.sessions.values())) if self.sessions else []

    async def start(self) -> None:
        try:
            await self._pool.start(
                [
                    WorkerSpec(
                        port, f"pvsd-stream-{port}", worker_main, (self.settings, self.host, port, self.user)
                    )
                    for port in self.ports
                ]
            )
        except Failure as error:
            raise Failure(f"cannot stream on {self.host}: {error}") from None
        self.log.info(
            "stream workers started", workers=len(self.ports), ports=f"{self.ports[0]}-{self.ports[-1]}"
        )

    def _on_message(self, port: int, message: object) -> None:
        if isinstance(message, StreamReport):
            self.on_report(port, message)
        elif isinstance(message, SessionClosed):
            self.sessions[port].discard(message.session)
            if self.on_closed is not None:
                self.on_closed(message.session)

    def on_report(self, port: int, report: StreamReport) -> None:
        self.sessions[port] = set(report.sessions)
        self._assigned[port] = 0  # attached by now, or gone
        self.stats[port] = report.stats

    def _on_death(self, port: int, exit_code: int | None) -> None:
        lost = len(self.sessions[port])
        self.sessions[port] = set()
        self.log.error(
            "stream worker died; its targets log in again to another port or server",
            port=port,
            sessions=lost,
            exit_code=exit_code,
        )

    def end_sessions(self, session_ids: list[int], why: str) -> None:
        for port, sessions in self.sessions.items():
            mine = tuple(sid for sid in session_ids if sid in sessions)
            if mine:
                self._pool.send(port, EndSessions(mine, why))

    async def close(self) -> None:
        await self._pool.close()


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
            connection.send(SessionClosed(session_id))

    server = IoServer(settings, log, on_closed=closed)
    try:
        server.bind(host, port)
        drop_privileges(user)
    except (OSError, Failure) as error:
        connection.send(StartFailed(f"port {port}: {getattr(error, 'strerror', None) or error}"))
        return

    def report() -> StreamReport:
        server.expire_idle()
        return StreamReport(tuple(server.session_ids), dataclasses.replace(server.stats))

    def handle(message: object) -> None:
        if isinstance(message, EndSessions):
            server.end_sessions(message.sessions, message.why)

    try:
        await serve_main_process(connection, STATS_INTERVAL_S, report, handle)
    finally:
        await server.close()
