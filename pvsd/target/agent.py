"""The target agent: what BNIStack is to a PVS target, for a VM run by QEMU.

It finds the farm (the PXE chain with `--dhcp`, a bootstrap URL, or a server list), logs
in, and exports the streamed vDisk over NBD. QEMU boots from that export. The agent keeps
the NBD connection up whatever happens underneath: when the serving pvsd dies, the stream
client logs in to the next server with its ticket and the requests in flight are sent
again, so the guest sees latency, never an I/O error.

Where writes go follows the login reply: a standard vDisk with the device cache keeps them
here (RAM, then a sparse file), which starts empty at each boot; private vDisks and the
server cache send them to the server through the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import structlog

from pvsd.config import TargetConfig
from pvsd.errors import Misuse
from pvsd.stream.ticket import CacheType
from pvsd.stream.wire import LoginReply
from pvsd.target.client import StreamClient
from pvsd.target.nbd import NbdServer
from pvsd.target.nbd_codec import Errno, NbdError
from pvsd.vdisk.cache import CacheFull, WriteCache

__all__ = ["AgentStatus", "StreamedDisk", "device_cache", "mode_text", "run_agent"]

STATUS_INTERVAL_S = 0.5
LOG_STATUS_EVERY_S = 10.0


class StreamedDisk:
    """The NBD backend: reads from the stream (merged with the local cache), writes per the mode."""

    def __init__(
        self, client: StreamClient, cache: WriteCache | None, log: structlog.stdlib.BoundLogger
    ) -> None:
        reply = client.reply
        if reply is None:
            raise Misuse("a StreamedDisk needs a connected client")
        self.client = client
        self.cache = cache
        self.log = log
        self.size = reply.disk_size
        self.block_size = reply.sector_size
        self.read_only = False
        self.bytes_read = 0
        self.bytes_written = 0
        self.writes_refused = 0  # ENOSPC: the write cache was full

    async def read(self, offset: int, length: int) -> bytes:
        self.bytes_read += length
        if self.cache is None:
            return await self.client.read(offset, length)
        missing = self.cache.missing(offset, length)
        if missing == [(offset, length)]:
            return await self.client.read(offset, length)  # nothing cached here: the common case
        if len(missing) == 1:
            fetched = [await self.client.read(*missing[0])]
        else:
            fetched = await asyncio.gather(*(self.client.read(start, size) for start, size in missing))
        return self.cache.merge(
            offset, length, [(start, data) for (start, _), data in zip(missing, fetched, strict=True)]
        )

    async def write(self, offset: int, data: bytes) -> None:
        if self.cache is None:
            await self.client.write(offset, data)
        else:
            self._cached(lambda cache: cache.write(offset, data))
        self.bytes_written += len(data)

    def _cached(self, store: Callable[[WriteCache], None]) -> None:
        if self.cache is None:
            raise Misuse("no device cache to write to")
        try:
            store(self.cache)
        except CacheFull as error:
            self.writes_refused += 1
            self.log.error("write cache full: the guest gets ENOSPC", reason=str(error))
            raise NbdError(Errno.ENOSPC, str(error)) from None

    async def flush(self) -> None:
        # The device cache is volatile by design (it starts empty at each boot, as in PVS):
        # a flush has nothing to make durable here. Server-side writes are fsynced there.
        if self.cache is None:
            await self.client.flush()

    async def trim(self, offset: int, length: int) -> None:
        return None  # a hint the guest may send; ignoring it is always correct

    async def write_zeroes(self, offset: int, length: int) -> None:
        if self.cache is None:
            await self.client.write(offset, bytes(length))
        else:
            # The cache records zeros without a buffer of them: a long WRITE_ZEROES costs no memory.
            self._cached(lambda cache: cache.write_zeroes(offset, length))
        self.bytes_written += length


@dataclass
class AgentStatus:
    mac: str
    pid: int
    server: str = ""
    session: int = 0
    disk_size: int = 0
    mode: str = ""
    nbd: str = ""
    bytes_read: int = 0
    bytes_written: int = 0
    read_mb_per_s: float = 0.0
    retransmits: int = 0
    writes_refused: int = 0
    failovers: list[dict[str, Any]] = field(default_factory=list)
    cache: dict[str, Any] | None = None
    updated: float = 0.0


def device_cache(reply: LoginReply, config: TargetConfig, overflow: Path | None) -> WriteCache | None:
    """The write cache a standard vDisk with the cache on the device gets (else None): RAM, then
    `overflow` (a sparse file) up to [target] cache_max_mb."""
    if reply.private or reply.cache_type != CacheType.DEVICE_RAM_DISK:
        return None
    if overflow is not None:
        overflow.parent.mkdir(parents=True, exist_ok=True)
    return WriteCache(
        disk_size=reply.disk_size,
        sector_size=reply.sector_size,
        ram_bytes=config.cache_ram_mb << 20,
        max_bytes=max(config.cache_ram_mb, config.cache_max_mb) << 20,
        overflow_path=overflow,
    )


def mode_text(reply: LoginReply) -> str:
    if reply.private:
        return "private"
    return (
        "standard, cache on the server"
        if reply.cache_type == CacheType.SERVER
        else "standard, cache on the device"
    )


async def run_agent(
    client: StreamClient,
    config: TargetConfig,
    *,
    nbd_address: tuple[str, int] | None,
    nbd_unix: Path | None,
    export: str,
    status_path: Path | None,
    log: structlog.stdlib.BoundLogger,
    ready: asyncio.Event | None = None,
) -> AgentStatus:
    """Log in, serve NBD until SIGTERM/SIGINT, then log out. Returns the final status."""
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    reply = await client.connect()
    overflow = None
    if config.cache_max_mb:
        overflow = Path(config.cache_dir) / f"{client.mac.replace(':', '-')}.cache"
    cache = device_cache(reply, config, overflow)
    disk = StreamedDisk(client, cache, log)
    server = NbdServer(disk, export)
    status = AgentStatus(mac=client.mac, pid=os.getpid(), disk_size=reply.disk_size, mode=mode_text(reply))
    try:
        if nbd_unix is not None:
            await server.start_unix(str(nbd_unix))
            status.nbd = f"nbd+unix:///{export}?socket={nbd_unix}"
        else:
            host, port = nbd_address or ("127.0.0.1", 10809)
            await server.start_tcp(host, port)
            status.nbd = f"nbd://{host}:{server.port}/{export}"
        log.info("serving the vDisk over NBD", nbd=status.nbd, size=reply.disk_size, mode=status.mode)
        if ready is not None:
            ready.set()
        started = last_log = time.monotonic()
        last_bytes = 0
        while not stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), STATUS_INTERVAL_S)
            now = time.monotonic()
            _update(status, client, disk, cache, (disk.bytes_read - last_bytes) / max(now - started, 1e-6))
            started, last_bytes = now, disk.bytes_read
            if status_path is not None:
                _write_status(status_path, status)
            if now - last_log >= LOG_STATUS_EVERY_S:
                last_log = now
                log.info(
                    "status",
                    server=status.server,
                    read_mb_per_s=status.read_mb_per_s,
                    retransmits=status.retransmits,
                    failovers=len(status.failovers),
                    cache_used=(status.cache or {}).get("used_bytes"),
                )
        log.info("stopping: logging out and closing NBD")
    finally:
        await server.close()
        await client.close()
        if cache is not None:
            cache.close()
        _update(status, client, disk, cache, 0.0)
        if status_path is not None:
            _write_status(status_path, status)
    return status


def _update(
    status: AgentStatus, client: StreamClient, disk: StreamedDisk, cache: WriteCache | None, rate: float
) -> None:
    status.server = client.server_name
    status.session = client.session
    status.bytes_read = disk.bytes_read
    status.bytes_written = disk.bytes_written
    status.writes_refused = disk.writes_refused
    status.read_mb_per_s = round(rate / 1e6, 1)
    status.retransmits = client.flow.stats.retransmits if client.flow is not None else 0
    status.failovers = [
        {"from": f.from_server, "to": f.to_server, "stall_s": round(f.stall_s, 3)}
        for f in client.stats.failovers
    ]
    if cache is not None:
        stats = cache.stats()
        status.cache = asdict(stats)
    status.updated = time.time()


def _write_status(path: Path, status: AgentStatus) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(asdict(status), indent=2) + "\n")
    temporary.replace(path)
