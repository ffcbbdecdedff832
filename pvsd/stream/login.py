"""The login service (UDP `[login] port`, 6910): which server a target streams from, and its ticket.

A fresh login (no ticket) is decided from the farm store: the device, its vDisk and the
version it boots, and the least-loaded live server holding a verified replica of it. A
login with a ticket is a target coming back, typically because its server died: this
server checks the ticket with the farm secret alone and, if it holds the image, serves
the session itself, so a target keeps running while the database is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog

from pvsd.config import Config
from pvsd.farm.errors import StoreError, StoreUnavailable
from pvsd.farm.records import Device, DeviceType, Server, ServerState
from pvsd.farm.store import FarmStore
from pvsd.net.reader import DecodeError
from pvsd.net.udp import Address, UdpEndpoint
from pvsd.stream.admission import FarmView, Grant, Placement, Refusal, decide_login, place_resumed
from pvsd.stream.io import TICKET_ERRORS, fit_error
from pvsd.stream.placement import Affinity
from pvsd.stream.ticket import Claims, TicketError, issue_ticket, verify_ticket
from pvsd.stream.wire import ErrorCode, Login, LoginReply, ServerEntry, decode, encode
from pvsd.vdisk.image import image_path

__all__ = ["LoginServer", "LoginStats", "read_farm_view", "read_resume_view"]

# A fresh LOGIN must be at least this long, so that its reply is never the larger (no amplification).
MIN_FRESH_LOGIN = 512
_REPLAY_S = 10.0  # a retransmitted LOGIN within this long gets the same answer, not a new session
RESUME_STORE_TIMEOUT_S = 1.0  # a returning target waits no longer than this for the farm store


@dataclass
class LoginStats:
    granted: int = 0
    resumed: int = 0
    refused: int = 0
    malformed: int = 0


def read_farm_view(
    store: FarmStore, mac: str, auto_add: bool, template: str, log: structlog.stdlib.BoundLogger
) -> FarmView:
    """Everything a fresh login is decided from, read from the store (in a thread)."""
    device = store.find_device(mac)
    if device is None and auto_add:
        device = _auto_add(store, mac, template, log)
    vdisk = store.get_vdisk(device.vdisk) if device is not None and device.vdisk else None
    return FarmView(
        device=device,
        vdisk=vdisk,
        servers=store.list_servers(),
        replicas=store.list_replicas(vdisk.name) if vdisk is not None else [],
        sessions=store.list_sessions(),
    )


def read_resume_view(store: FarmStore, vdisk: str) -> FarmView:
    """What placing a target that comes back with its ticket needs (in a thread)."""
    record = next((v for v in store.list_vdisks() if v.name == vdisk), None)
    return FarmView(
        device=None,
        vdisk=record,
        servers=store.list_servers(),
        replicas=store.list_replicas(vdisk),
        sessions=store.list_sessions(),
    )


def _auto_add(store: FarmStore, mac: str, template: str, log: structlog.stdlib.BoundLogger) -> Device:
    model = next((d for d in store.list_devices() if d.name == template), None) if template else None
    if template and model is None:
        log.warning("auto_add template device not found; adding the device with no vDisk", template=template)
    name = "auto-" + mac.replace(":", "")
    device = store.add_device(
        mac,
        name,
        vdisk=model.vdisk if model else None,
        site=model.site if model else None,
        type=model.type if model else DeviceType.PRODUCTION,
    )
    log.info("device added at its first login ([farm] auto_add)", device=name, template=template or None)
    return device


class LoginServer:
    def __init__(
        self,
        config: Config,
        store: FarmStore,
        secret: str,
        live_servers: Callable[[], list[Server]],
        local_port: Callable[[], int | None],
        log: structlog.stdlib.BoundLogger,
    ) -> None:
        self.config = config
        self.store = store
        self.secret = secret
        self.live_servers = live_servers
        self.local_port = local_port
        self.log = log
        self.stats = LoginStats()
        self.endpoint: UdpEndpoint | None = None
        # (peer, request id, MAC, ticket) -> (when, our answer or None while working on it)
        self._answers: dict[tuple[Address, int, str, bytes], tuple[float, bytes | None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._sector_sizes: dict[str, int] = {}
        self._vdisk_sizes: dict[str, int] = {}
        self._deciding = asyncio.Lock()

    async def start(self) -> None:
        self.endpoint = UdpEndpoint.bind(
            self.config.server.bind, self.config.login.port, self.datagram_received
        )

    async def close(self) -> None:
        if self.endpoint is not None:
            self.endpoint.close()
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def datagram_received(self, data: bytes, peer: Address) -> None:
        try:
            header, message = decode(data)
        except DecodeError as error:
            self.stats.malformed += 1
            self.log.debug(
                "dropped a malformed login datagram", peer=f"{peer[0]}:{peer[1]}", reason=str(error)
            )
            return
        if not isinstance(message, Login):
            self._send(
                fit_error(ErrorCode.BAD_REQUEST, "only LOGIN here", header.request_id, 0, len(data)), peer
            )
            return
        now = time.monotonic()
        key = (peer, header.request_id, message.mac, message.ticket)
        earlier = self._answers.get(key)
        if earlier is not None and now - earlier[0] < _REPLAY_S:
            if earlier[1] is not None:
                self._send(earlier[1], peer)  # our answer was lost: the same one again
            return  # still working on it
        self._answers[key] = (now, None)
        if len(self._answers) > 4096:
            self._answers = {k: v for k, v in self._answers.items() if now - v[0] < _REPLAY_S}
        task = asyncio.create_task(self._login(header.request_id, message, peer, len(data)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _login(self, request_id: int, login: Login, peer: Address, size: int) -> None:
        log = self.log.bind(peer=f"{peer[0]}:{peer[1]}", mac=login.mac)
        try:
            if login.ticket:
                reply = await self._resume(request_id, login, peer, size, log)
            else:
                # One fresh login at a time: each decision counts the sessions the one before
                # opened, so a boot storm spreads over the servers instead of piling on one.
                async with self._deciding:
                    reply = await self._fresh(request_id, login, peer, size, log)
        except Exception:
            log.exception("login failed unexpectedly")
            reply = fit_error(
                ErrorCode.SERVER_BUSY, "internal error, try another server", request_id, 0, size
            )
        self._answers[(peer, request_id, login.mac, login.ticket)] = (time.monotonic(), reply)
        self._send(reply, peer)

    async def _fresh(
        self, request_id: int, login: Login, peer: Address, size: int, log: structlog.stdlib.BoundLogger
    ) -> bytes:
        if size < MIN_FRESH_LOGIN:
            return self._refuse(
                ErrorCode.BAD_REQUEST,
                f"pad a LOGIN without a ticket to {MIN_FRESH_LOGIN} bytes",
                request_id,
                size,
                log,
            )
        farm = self.config.farm
        try:
            view = await asyncio.to_thread(
                read_farm_view, self.store, login.mac, farm.auto_add, farm.auto_add_template, log
            )
        except StoreUnavailable as error:
            return self._refuse(
                ErrorCode.DATABASE_UNAVAILABLE,
                f"the farm store is unreachable: {error}",
                request_id,
                size,
                log,
            )
        decision = decide_login(
            login.mac,
            view,
            target=ipaddress.IPv4Address(peer[0]),
            dead_after=farm.dead_after,
            active_within=self.config.stream.idle_timeout + 2 * farm.heartbeat_interval,
            affinity=Affinity(self.config.login.affinity),
            prefix=self.config.login.affinity_prefix,
        )
        if isinstance(decision, Refusal):
            return self._refuse(decision.code, decision.reason, request_id, size, log)
        assert view.vdisk is not None
        grant: Grant = decision
        port = grant.io_port
        if grant.server.name == self.config.server.name:
            port = self.local_port() or port
        try:
            session = await asyncio.to_thread(self.store.open_session, login.mac, grant.server.name, port)
        except StoreError as error:
            return self._refuse(
                ErrorCode.DATABASE_UNAVAILABLE, f"cannot record the session: {error}", request_id, size, log
            )
        self._sector_sizes[view.vdisk.name] = view.vdisk.sector_size
        now_ms = int(time.time() * 1000)
        claims = Claims(
            mac=login.mac,
            vdisk=view.vdisk.name,
            version=grant.version.number,
            private=grant.private,
            cache=grant.cache,
            session=session.id,
            issued_ms=now_ms,
            expires_ms=now_ms + int(self.config.login.ticket_lifetime * 1000),
        )
        self.stats.granted += 1
        log.info(
            "login granted",
            device=view.device.name if view.device else None,
            vdisk=claims.vdisk,
            version=claims.version,
            server=grant.server.name,
            io=f"{grant.server.address}:{port}",
            session=session.id,
            why=grant.reason,
        )
        return self._reply(
            request_id, login, claims, grant.server, port, view.vdisk.size, view.vdisk.sector_size, size
        )

    async def _resume(
        self, request_id: int, login: Login, peer: Address, size: int, log: structlog.stdlib.BoundLogger
    ) -> bytes:
        try:
            claims = verify_ticket(self.secret, login.ticket, int(time.time() * 1000))
        except TicketError as error:
            return self._refuse(TICKET_ERRORS[error.problem], str(error), request_id, size, log)
        if claims.mac != login.mac:
            return self._refuse(
                ErrorCode.TICKET_OTHER_DEVICE,
                f"the ticket names {claims.mac}, not {login.mac}",
                request_id,
                size,
                log,
            )
        placement = await self._place_resumed(claims, peer, log)
        if placement is not None and placement.server.name != self.config.server.name:
            disk_size = self._vdisk_sizes.get(claims.vdisk, 0)
        else:
            # Here: the farm store chose this server, or could not be asked. The ticket is enough.
            path = image_path(Path(self.config.server.store), claims.vdisk, claims.version)
            try:
                disk_size = path.stat().st_size
            except OSError:
                return self._refuse(
                    ErrorCode.NO_SERVER,
                    f"this server holds no image of {claims.vdisk} v{claims.version}",
                    request_id,
                    size,
                    log,
                )
            port = self.local_port()
            if port is None:
                return self._refuse(
                    ErrorCode.SERVER_BUSY, "no stream worker is running here", request_id, size, log
                )
            this = next(s for s in self._servers() if s.name == self.config.server.name)
            placement = Placement(
                this, port, placement.reason if placement else "the farm store did not answer"
            )
        now_ms = int(time.time() * 1000)
        lifetime_ms = int(self.config.login.ticket_lifetime * 1000)
        renewed = dataclasses.replace(claims, issued_ms=now_ms, expires_ms=now_ms + lifetime_ms)
        self.stats.resumed += 1
        log.info(
            "login resumed with a ticket",
            vdisk=claims.vdisk,
            version=claims.version,
            server=placement.server.name,
            io=f"{placement.server.address}:{placement.io_port}",
            session=claims.session,
            why=placement.reason,
        )
        task = asyncio.create_task(self._record_resume(claims, placement.server.name, placement.io_port, log))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        sector = self._sector_sizes.get(claims.vdisk, 512)
        return self._reply(
            request_id, login, renewed, placement.server, placement.io_port, disk_size, sector, 1 << 16
        )

    async def _place_resumed(
        self, claims: Claims, peer: Address, log: structlog.stdlib.BoundLogger
    ) -> Placement | None:
        """With the farm store at hand, a target coming back is balanced like a new one; without
        it (or if it is slow), this server serves it: the ticket is all it needs."""
        farm = self.config.farm
        try:
            view = await asyncio.wait_for(
                asyncio.to_thread(read_resume_view, self.store, claims.vdisk), RESUME_STORE_TIMEOUT_S
            )
        except (StoreError, TimeoutError) as error:
            log.info("placing a returning target without the farm store", error=str(error) or "timeout")
            return None
        self._vdisk_sizes[claims.vdisk] = view.vdisk.size if view.vdisk else 0
        return place_resumed(
            claims.vdisk,
            claims.version,
            claims.session,
            view,
            target=ipaddress.IPv4Address(peer[0]),
            dead_after=farm.dead_after,
            active_within=self.config.stream.idle_timeout + 2 * farm.heartbeat_interval,
            affinity=Affinity(self.config.login.affinity),
            prefix=self.config.login.affinity_prefix,
        )

    async def _record_resume(
        self, claims: Claims, server: str, port: int, log: structlog.stdlib.BoundLogger
    ) -> None:
        try:
            await asyncio.to_thread(self.store.resume_session, claims.session, claims.mac, server, port)
        except StoreError as error:
            log.warning(
                "session moved here but not recorded in the farm store",
                session=claims.session,
                error=str(error),
            )

    def _servers(self) -> list[Server]:
        """Live servers, this one included even when the farm store cannot be read."""
        servers = self.live_servers()
        if not any(s.name == self.config.server.name for s in servers):
            servers = [
                Server(
                    name=self.config.server.name,
                    address=self.config.server.address,
                    ports={"login": self.config.login.port},
                    power=self.config.server.power,
                    site=None,
                    state=ServerState.RUNNING,
                    instance="",
                    started_at=None,
                    last_heartbeat=None,
                    heartbeat_age=0.0,
                ),
                *servers,
            ]
        return servers

    def _reply(
        self,
        request_id: int,
        login: Login,
        claims: Claims,
        server: Server,
        port: int,
        disk_size: int,
        sector: int,
        limit: int,
    ) -> bytes:
        stream = self.config.stream
        ticket = issue_ticket(self.secret, claims)
        # The serving server first: a target that fails over walks this list in order.
        servers = sorted(self._servers(), key=lambda s: (s.name != server.name, s.name))
        entries = [
            ServerEntry(
                s.name, ipaddress.IPv4Address(s.address), int(s.ports.get("login", self.config.login.port))
            )
            for s in servers
        ]
        while True:
            reply = encode(
                LoginReply(
                    io_address=ipaddress.IPv4Address(server.address),
                    io_port=port,
                    disk_size=disk_size,
                    sector_size=sector,
                    private=claims.private,
                    cache_type=claims.cache,
                    max_payload=max(512, min(login.max_payload, stream.max_payload)),
                    max_burst=stream.max_burst,
                    ticket=ticket,
                    servers=tuple(entries),
                ),
                request_id,
                claims.session,
            )
            if len(reply) <= limit or len(entries) <= 1:
                return reply
            entries.pop()  # no amplification: fewer servers listed rather than a larger reply

    def _refuse(
        self, code: ErrorCode, reason: str, request_id: int, size: int, log: structlog.stdlib.BoundLogger
    ) -> bytes:
        self.stats.refused += 1
        log.warning("login refused", code=code.name, reason=reason)
        return fit_error(code, reason, request_id, 0, size)

    def _send(self, data: bytes, peer: Address) -> None:
        if self.endpoint is not None:
            self.endpoint.send(data, peer)
