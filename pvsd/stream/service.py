"""The streaming side of `pvsd serve`: replica scan, I/O workers, login service, session stamps.

Started after the server joined the farm. The I/O workers are up before the login port
opens, so a target is never sent to a port nobody serves yet.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import structlog

from pvsd.config import Config
from pvsd.farm.errors import StoreError, StoreUnavailable
from pvsd.farm.membership import Membership
from pvsd.farm.offline import OfflineFarm
from pvsd.farm.offline_queue import RecordKind
from pvsd.farm.records import Server, ServerHealth
from pvsd.farm.store import OFFLINE_SESSION_BASE, FarmStore
from pvsd.net.udp import Address
from pvsd.stream.io import IoSettings
from pvsd.stream.login import LoginServer
from pvsd.stream.peers import PeerLink
from pvsd.stream.workers import StreamWorkers, stream_worker_count
from pvsd.vdisk.replicas import ReplicaScanner

__all__ = ["StreamService", "stream_ports"]


def stream_ports(config: Config) -> range:
    """The ports this server's I/O workers bind: the first `workers` of `[stream] ports`."""
    first, last = (int(part) for part in config.stream.ports.split("-"))
    span = range(first, last + 1)
    return range(first, first + stream_worker_count(config.stream.workers, span))


class StreamService:
    def __init__(
        self,
        config: Config,
        store: FarmStore,
        secret: str,
        membership: Membership,
        log: structlog.stdlib.BoundLogger,
        offline: OfflineFarm | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.membership = membership
        self.log = log
        self.offline = offline
        folder = Path(config.server.store).resolve()
        cache_dir = Path(config.stream.cache_dir).resolve()
        self.settings = IoSettings(
            secret=secret,
            store=folder,
            cache_dir=cache_dir,
            max_payload=config.stream.max_payload,
            max_burst=config.stream.max_burst,
            idle_timeout=config.stream.idle_timeout,
        )
        self.scanner = ReplicaScanner(store, config.server.name, folder, log.bind(service="replicas"))
        self.workers = StreamWorkers(
            self.settings,
            config.server.bind,
            stream_ports(config),
            config.server.user,
            log.bind(service="stream"),
            on_closed=self._session_closed,
        )
        self.login: LoginServer | None = None
        self.peers: PeerLink | None = None
        self._stamper: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Task[None]] = set()
        # Sessions opened from the offline snapshot that the farm has since been seen to know:
        # until then the farm not knowing one means "not written yet", not "ended".
        self._offline_known: set[int] = set()

    async def start(self) -> None:
        try:
            self.settings.cache_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            self.log.error(
                "cannot create the write-cache folder",
                cache_dir=str(self.settings.cache_dir),
                error=error.strerror,
            )
        await self.scanner.start()
        if not self.config.stream.enabled:
            return
        await self.workers.start()
        if self.config.login.enabled:
            loop = asyncio.get_running_loop()
            dead_after = self.config.farm.dead_after

            def live_servers() -> list[Server]:
                return [
                    s
                    for s in self.membership.known_servers(loop.time())
                    if s.health(dead_after) is ServerHealth.ALIVE
                ]

            self.login = LoginServer(
                self.config,
                self.store,
                self.settings.secret,
                live_servers,
                self.workers,
                self.log.bind(service="login"),
                offline=self.offline,
            )
            try:
                await self.login.start()
            except OSError as error:
                await self.workers.close()
                raise OSError(error.errno, f"login port {self.config.login.port}: {error.strerror}") from None
            login = self.login

            def send(data: bytes, peer: Address) -> None:
                if login.endpoint is not None:
                    login.endpoint.send(data, peer)

            self.peers = PeerLink(
                self.settings.secret,
                self.membership,
                self.workers.port_loads,
                send,
                self.log.bind(service="peers"),
            )
            login.on_peer_datagram = self.peers.datagram_received
            login.peer_loads = self.peers.peer_loads
            self.peers.start()
        self._stamper = asyncio.create_task(self._stamp_sessions(), name="session-stamps")

    def _session_closed(self, session_id: int) -> None:
        task = asyncio.create_task(self._close_in_store(session_id))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _close_in_store(self, session_id: int) -> None:
        try:
            await asyncio.to_thread(self.store.close_session, session_id, self.config.server.name)
        except StoreUnavailable:
            if self.offline is not None:
                self.offline.record(RecordKind.SESSION_CLOSE, "", self.config.server.name, session_id)
        except StoreError as error:
            self.log.warning(
                "ended session not closed in the farm store", session=session_id, error=str(error)
            )

    async def _stamp_sessions(self) -> None:
        """Keep `last seen` of the sessions this server serves current in the farm store."""
        while True:
            await asyncio.sleep(self.config.farm.heartbeat_interval)
            served = self.workers.session_ids()
            try:
                ended = await asyncio.to_thread(self.store.touch_sessions, served)
            except StoreError:
                continue
            gone, confirmed = set(ended), self._offline_known
            # An offline session the farm never knew is one whose record is still queued somewhere.
            ended = [s for s in ended if s < OFFLINE_SESSION_BASE or s in confirmed]
            self._offline_known = {s for s in served if s >= OFFLINE_SESSION_BASE and s not in gone}
            if ended:
                # Ended in the farm (a vDisk removed with --force, a device removed): their
                # targets' next request is refused, and they log in again or stop, saying why.
                self.log.warning("sessions ended by the farm; dropping them here", sessions=ended)
                self.workers.end_sessions(ended, "ended by the farm")

    async def close(self) -> None:
        if self.peers is not None:
            await self.peers.close()
        if self._stamper is not None:
            self._stamper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._stamper
        if self.login is not None:
            await self.login.close()
        await self.workers.close()
        await self.scanner.close()
