"""The I/O service of one worker process, the glue: a UDP port, the pure `StreamServer`, and disks.

Every datagram goes to the state machine (session.py); its actions are carried out here.
Reads are memory copies from the shared mapped image (and the overlay) and run on the event
loop; each READ is answered by a burst of DATA sent in one segmented (UDP_SEGMENT) call.
Opening, writing, syncing and closing a disk block on the filesystem, so they run in threads,
one device's in order (a lane per MAC): one target's FLUSH never delays another's reads.
"""

from __future__ import annotations

import asyncio
import errno
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from pvsd.errors import Misuse
from pvsd.lograte import REFUSAL_LOG_INTERVAL_S, LogRate
from pvsd.net.udp import Address, UdpEndpoint
from pvsd.stream.session import (
    Action,
    Attached,
    CloseDisk,
    Dropped,
    IoLimits,
    IoStats,
    OpenDisk,
    Refuse,
    Send,
    SendRead,
    StreamServer,
    SyncDisk,
    WriteDisk,
)
from pvsd.stream.ticket import CacheType
from pvsd.stream.wire import ErrorCode, StreamRefusal, data_burst
from pvsd.vdisk.served import DiskSpec, SessionDisk, SharedImages, WriterBusy

__all__ = ["IoServer", "IoSettings", "IoStats"]


@dataclass(frozen=True)
class IoSettings:
    secret: str
    store: Path
    cache_dir: Path
    max_payload: int
    max_burst: int
    idle_timeout: float


class _Lane:
    """One device's disk work, run in order in threads."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0


class IoServer:
    """Serves stream sessions on one port; `on_closed` hears sessions that end (logout or idle)."""

    def __init__(
        self,
        settings: IoSettings,
        log: structlog.stdlib.BoundLogger,
        on_closed: Callable[[int], None] | None = None,
    ) -> None:
        self.settings = settings
        self.log = log
        self.on_closed = on_closed
        self.core = StreamServer(
            settings.secret, IoLimits(settings.max_payload, settings.max_burst, settings.idle_timeout)
        )
        self.images = SharedImages()
        self.endpoint: UdpEndpoint | None = None
        self._disks: dict[int, SessionDisk] = {}
        self._lanes: dict[str, _Lane] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._attach_log = LogRate(REFUSAL_LOG_INTERVAL_S)

    @property
    def stats(self) -> IoStats:
        return self.core.stats

    @property
    def session_ids(self) -> list[int]:
        return self.core.session_ids

    def bind(self, host: str, port: int) -> None:
        self._loop = asyncio.get_running_loop()
        self.endpoint = UdpEndpoint.bind(host, port, self.datagram_received)

    async def close(self) -> None:
        """End every session, wait for their disks to close, then close the port."""
        self._apply(self.core.close_all("server stopping"))
        while self._tasks:
            await asyncio.wait(set(self._tasks))
        if self.endpoint is not None:
            self.endpoint.close()

    def datagram_received(self, data: bytes, peer: Address) -> None:
        self._apply(self.core.receive(data, peer, self._now(), int(time.time() * 1000)))

    def expire_idle(self) -> None:
        self._apply(self.core.expire(self._now()))

    def end_sessions(self, session_ids: tuple[int, ...], why: str) -> None:
        self._apply(self.core.end_sessions(session_ids, why))

    def _now(self) -> float:
        if self._loop is None:
            raise Misuse("IoServer.bind() first")
        return self._loop.time()

    # -- carrying out the state machine's actions -------------------------------------------------------

    def _apply(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, SendRead):
                self._send_read(action)
            elif isinstance(action, Send):
                self._send(action.datagram, action.peer)
            elif isinstance(action, Refuse):
                self._refused(action)
            elif isinstance(action, WriteDisk):
                self._in_lane(action.mac, self._write(action))
            elif isinstance(action, SyncDisk):
                self._in_lane(action.mac, self._sync(action))
            elif isinstance(action, OpenDisk):
                self._in_lane(action.claims.mac, self._open(action))
            elif isinstance(action, CloseDisk):
                disk = self._disks.pop(action.session, None)
                self.log.info("session ended", session=action.session, mac=action.mac, why=action.why)
                self._in_lane(action.mac, self._close(action, disk))
            elif isinstance(action, Attached):
                claims = action.claims
                self.log.info(
                    "session attached",
                    peer=f"{action.peer[0]}:{action.peer[1]}",
                    mac=claims.mac,
                    session=claims.session,
                    vdisk=claims.vdisk,
                    version=claims.version,
                    mode="private" if claims.private else "standard",
                    cache=claims.cache.name.lower(),
                    payload=action.payload,
                )
            elif isinstance(action, Dropped):
                self.log.debug(
                    "dropped a datagram",
                    peer=f"{action.peer[0]}:{action.peer[1]}",
                    reason=action.reason,
                )

    def _send_read(self, action: SendRead) -> None:
        disk = self._disks.get(action.session)
        if disk is None:
            return
        try:
            data = disk.read(action.offset, action.length)
        except (OSError, ValueError) as error:
            # A disk error is the target's to retry (it times out and asks again), never the worker's end.
            self.log.error("read failed", session=action.session, offset=action.offset, error=str(error))
            return
        if self.endpoint is not None:
            datagrams = data_burst(action.request_id, action.session, action.offset, data, action.payload)
            self.endpoint.send_many(datagrams, action.peer)

    def _in_lane(self, mac: str, work: Coroutine[Any, Any, None]) -> None:
        lane = self._lanes.get(mac)
        if lane is None:
            lane = self._lanes[mac] = _Lane()
        lane.users += 1

        async def run() -> None:
            try:
                async with lane.lock:
                    await work
            finally:
                lane.users -= 1
                if not lane.users and self._lanes.get(mac) is lane:
                    del self._lanes[mac]

        task = asyncio.create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _open(self, request: OpenDisk) -> None:
        claims = request.claims
        spec = DiskSpec(
            store=self.settings.store,
            vdisk=claims.vdisk,
            version=claims.version,
            mac=claims.mac,
            session=claims.session,
            private=claims.private,
            overlay_dir=self.settings.cache_dir if claims.cache is CacheType.SERVER else None,
        )
        try:
            disk = await asyncio.to_thread(SessionDisk.open, self.images, spec)
        except WriterBusy:
            refusal = StreamRefusal(ErrorCode.PRIVATE_IN_USE, "another session writes this private vDisk")
            self._apply(self.core.open_failed(request, refusal))
            return
        except (OSError, ValueError) as error:
            reason = getattr(error, "strerror", None) or str(error)
            refusal = StreamRefusal(
                ErrorCode.NO_SERVER, f"this server cannot open {claims.vdisk} v{claims.version}: {reason}"
            )
            self._apply(self.core.open_failed(request, refusal))
            return
        if not self.core.still_opening(request):
            await asyncio.to_thread(disk.close)  # the device attached again while this one opened
            return
        self._disks[claims.session] = disk
        self._apply(self.core.opened(request, disk.size, disk.writable, self._now()))

    async def _write(self, write: WriteDisk) -> None:
        disk = self._disks.get(write.session)
        if disk is None:
            return
        error: int | None = None
        try:
            await asyncio.to_thread(disk.write, write.offset, write.data)
        except OSError as failure:
            error = failure.errno or errno.EIO
            self.log.error("write failed", session=write.session, offset=write.offset, error=str(failure))
        self._apply(self.core.written(write, error))

    async def _sync(self, sync: SyncDisk) -> None:
        disk = self._disks.get(sync.session)
        if disk is None:
            return
        error: int | None = None
        try:
            await asyncio.to_thread(disk.sync)
        except OSError as failure:
            error = failure.errno or errno.EIO
            self.log.error("flush failed", session=sync.session, error=str(failure))
        self._apply(self.core.synced(sync, error))

    async def _close(self, action: CloseDisk, disk: SessionDisk | None) -> None:
        if disk is not None:
            try:
                await asyncio.to_thread(disk.close)
            except OSError as error:
                self.log.error("closing a session's disk failed", session=action.session, error=str(error))
        if self.on_closed is not None:
            self.on_closed(action.session)

    # -- replies ----------------------------------------------------------------------------------------

    def _send(self, data: bytes, peer: Address) -> None:
        if self.endpoint is not None:
            self.endpoint.send(data, peer)

    def _refused(self, action: Refuse) -> None:
        refusal = action.refusal
        fields = {
            "peer": f"{action.peer[0]}:{action.peer[1]}",
            "code": refusal.code.name,
            "reason": refusal.reason,
        }
        if action.attaching:
            # Anyone can send a forged ticket at line rate: one line a minute per code, with a count.
            count = self._attach_log.due(refusal.code.name, time.monotonic())
            if count is not None:
                self.log.warning(
                    "attach refused", mac=action.mac, session=action.session, refusals=count, **fields
                )
        elif refusal.code is ErrorCode.UNKNOWN_SESSION:
            # Routine (a target whose server restarted, or stray datagrams): debug, so a flood
            # cannot fill the log; the target logs in again and says so itself.
            self.log.debug("request refused", session=action.session, **fields)
        else:
            self.log.info("request refused", session=action.session, mac=action.mac, **fields)
        if action.datagram is not None:
            self._send(action.datagram, action.peer)
