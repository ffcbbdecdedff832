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

import asyncio
import contextlib
import dataclasses
import multiprocessing
import os
from multiprocessing.connection import Connection
from typing import Any

import structlog

from pvsd.config import TftpConfig
from pvsd.errors import Failure
from pvsd.log import logging_settings
from pvsd.privileges import drop_privileges
from pvsd.processes import run_worker, serve_main_process
from pvsd.tftp.server import TftpServer, TftpStats

__all__ = ["TftpWorkers", "share_of", "worker_count"]

STATS_INTERVAL_S = 2.0
START_TIMEOUT_S = 30.0


def worker_count(configured: int) -> int:
    """Processes serving TFTP in all, the main one included."""
    return configured if configured > 0 else max(1, os.cpu_count() or 1)


def share_of(config: TftpConfig, processes: int) -> TftpConfig:
    """Each process gets its share of max_transfers (rounded up)."""
    return dataclasses.replace(config, max_transfers=-(-config.max_transfers // processes))


class TftpWorkers:
    """The extra worker processes, seen from the main process."""

    def __init__(self, config: TftpConfig, user: str, count: int, log: structlog.stdlib.BoundLogger) -> None:
        self.config = config
        self.user = user
        self.count = count
        self.log = log
        self.stats: dict[int, TftpStats] = {}
        self._workers: list[tuple[multiprocessing.process.BaseProcess, Connection]] = []

    async def start(self) -> None:
        context = multiprocessing.get_context("spawn")
        level, fmt = logging_settings()
        for index in range(1, self.count + 1):
            ours, theirs = context.Pipe()
            process = context.Process(
                target=worker_main,
                args=(self.config, self.user, level, fmt, index, theirs),
                name=f"pvsd-tftp-{index}",
                daemon=True,
            )
            process.start()
            theirs.close()
            self._workers.append((process, ours))
        for index, (_, connection) in enumerate(self._workers, start=1):
            ready = await asyncio.to_thread(connection.poll, START_TIMEOUT_S)
            message = connection.recv() if ready else ("error", "did not start in time")
            if message[0] != "ready":
                await self.close()
                raise Failure(f"TFTP worker {index} could not start: {message[1]}")
            asyncio.get_running_loop().add_reader(connection.fileno(), self._on_message, index, connection)
        self.log.info("TFTP workers started", workers=self.count)

    def publish(self, name: str, data: bytes) -> None:
        self._send(("publish", name, data))

    def unpublish(self, name: str) -> None:
        self._send(("unpublish", name))

    def publish_default(self, prefix: str, data: bytes) -> None:
        self._send(("publish_default", prefix, data))

    def _send(self, message: tuple[Any, ...]) -> None:
        for index, (_, connection) in enumerate(self._workers, start=1):
            try:
                connection.send(message)
            except OSError:
                self.log.error("TFTP worker is gone; its clients go to the other processes", worker=index)

    def _on_message(self, index: int, connection: Connection) -> None:
        try:
            message = connection.recv()
        except (EOFError, OSError):
            asyncio.get_running_loop().remove_reader(connection.fileno())
            process = self._workers[index - 1][0]
            process.join(0.1)
            self.log.error(
                "TFTP worker died; its clients go to the other processes",
                worker=index,
                exit_code=process.exitcode,
            )
            return
        if message[0] == "stats":
            self.stats[index] = TftpStats(**message[1])

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        for _, connection in self._workers:
            with contextlib.suppress(OSError, ValueError):
                loop.remove_reader(connection.fileno())
            with contextlib.suppress(OSError):
                connection.send(("stop",))
        for process, connection in self._workers:
            await asyncio.to_thread(process.join, 5.0)
            if process.is_alive():
                process.kill()
                await asyncio.to_thread(process.join, 2.0)
            connection.close()
        self._workers = []


def worker_main(
    config: TftpConfig, user: str, level: str, fmt: str, index: int, connection: Connection
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
        connection.send(("error", str(error)))
        return

    def handle(message: tuple[Any, ...]) -> None:
        if message[0] == "publish":
            server.registry.publish(message[1], message[2])
        elif message[0] == "unpublish":
            server.registry.unpublish(message[1])
        elif message[0] == "publish_default":
            server.registry.publish_default(message[1], message[2])

    try:
        await serve_main_process(
            connection, STATS_INTERVAL_S, lambda: ("stats", dataclasses.asdict(server.stats)), handle
        )
    finally:
        await server.close()
