"""TFTP worker processes: more cores for a boot storm, one event loop each.

On loopback and on a LAN most of a TFTP server's time is the kernel sending datagrams, so
one process saturates one core. `[tftp] workers` extra processes (0: one per CPU in all)
each bind the TFTP port with SO_REUSEPORT; the kernel spreads clients over them by
address, and every packet of one client reaches the same process, single-port mode too.

The main process publishes generated files (pvs.bootstrap) to the workers over a pipe
whenever their content changes; workers send their counters back every few seconds. A
worker exits when the pipe closes, so a killed pvsd never leaves workers serving behind it.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from multiprocessing.connection import Connection

import structlog

from pvsd.config import TftpConfig
from pvsd.errors import Failure
from pvsd.privileges import drop_privileges
from pvsd.processes import StartFailed, WorkerPool, WorkerSpec, run_worker, serve_main_process
from pvsd.tftp.server import TftpServer, TftpStats

__all__ = ["Publish", "PublishDefault", "TftpReport", "TftpWorkers", "Unpublish", "share_of", "worker_count"]

STATS_INTERVAL_S = 2.0


@dataclass(frozen=True)
class Publish:
    """Main -> worker: serve `data` under `name` (a generated file), replacing what was there."""

    name: str
    data: bytes


@dataclass(frozen=True)
class Unpublish:
    name: str


@dataclass(frozen=True)
class PublishDefault:
    """Main -> worker: what any unpublished name under `prefix` gets (an unknown device's script)."""

    prefix: str
    data: bytes


@dataclass(frozen=True)
class TftpReport:
    """Worker -> main, every STATS_INTERVAL_S: its counters."""

    stats: TftpStats


def worker_count(configured: int) -> int:
    """Processes serving TFTP in all, the main one included."""
    return configured if configured > 0 else max(1, os.cpu_count() or 1)


def share_of(config: TftpConfig, processes: int) -> TftpConfig:
    """Each process gets its share (rounded up) of max_transfers, of the reserve for generated
    files and of max_per_client: the kernel spreads one client's ports over the processes too."""

    def share(total: int) -> int:
        return -(-total // processes)

    return dataclasses.replace(
        config,
        max_transfers=share(config.max_transfers),
        max_per_client=share(config.max_per_client),
        reserved_transfers=share(config.reserved_transfers),
    )


class TftpWorkers:
    """The extra worker processes, seen from the main process."""

    def __init__(self, config: TftpConfig, user: str, count: int, log: structlog.stdlib.BoundLogger) -> None:
        self.config = config
        self.user = user
        self.count = count
        self.log = log
        self.stats: dict[int, TftpStats] = {}
        self._pool = WorkerPool("tftp", log, self._on_message, self._on_death)

    async def start(self) -> None:
        await self._pool.start(
            [
                WorkerSpec(index, f"pvsd-tftp-{index}", worker_main, (self.config, self.user, index))
                for index in range(1, self.count + 1)
            ]
        )
        self.log.info("TFTP workers started", workers=self.count)

    def publish(self, name: str, data: bytes) -> None:
        self._send(Publish(name, data))

    def unpublish(self, name: str) -> None:
        self._send(Unpublish(name))

    def publish_default(self, prefix: str, data: bytes) -> None:
        self._send(PublishDefault(prefix, data))

    def _send(self, message: object) -> None:
        for index in self._pool.keys:
            if not self._pool.send(index, message):
                # Not a death: that is the worker's exit, which the pool reports on its own.
                self.log.warning(
                    "TFTP worker missed a published file", worker=index, message=type(message).__name__
                )

    def _on_message(self, index: int, message: object) -> None:
        if isinstance(message, TftpReport):
            self.stats[index] = message.stats

    def _on_death(self, index: int, exit_code: int | None) -> None:
        self.log.error(
            "TFTP worker died; its clients go to the other processes", worker=index, exit_code=exit_code
        )

    async def close(self) -> None:
        await self._pool.close()


def worker_main(
    config: TftpConfig, user: str, index: int, level: str, fmt: str, connection: Connection
) -> None:
    """The entry point of a worker process."""
    run_worker("tftp", level, fmt, lambda log: _serve(config, user, log, connection), worker=index)


async def _serve(
    config: TftpConfig, user: str, log: structlog.stdlib.BoundLogger, connection: Connection
) -> None:
    server = TftpServer.from_config(config, log, reuse_port=True)
    try:
        await server.start()
        drop_privileges(user)
    except (OSError, Failure) as error:
        connection.send(StartFailed(str(error)))
        return

    def handle(message: object) -> None:
        if isinstance(message, Publish):
            server.registry.publish(message.name, message.data)
        elif isinstance(message, Unpublish):
            server.registry.unpublish(message.name)
        elif isinstance(message, PublishDefault):
            server.registry.publish_default(message.prefix, message.data)

    try:
        await serve_main_process(
            connection, STATS_INTERVAL_S, lambda: TftpReport(dataclasses.replace(server.stats)), handle
        )
    finally:
        await server.close()
