"""The login service (UDP `[login] port`, 6910): which server a target streams from, and its ticket.

A fresh login (no ticket) is decided in one farm-store transaction: the device, its vDisk and
the version it boots, the least-loaded live server holding a verified replica of it, and the
session recorded there. A login with a ticket is a target coming back, typically because its
server died: this server checks the ticket with the farm secret alone and, if the store does
not answer at once, serves the session itself, so a target keeps running while the database
is down.

The service is bounded. A ticketless LOGIN shorter than MIN_FRESH_LOGIN is refused as it
arrives, before it costs a task or a place in line; the rest wait in `[login] max_pending`
places (returning targets first), and a login that finds them full is dropped, counted and
logged: the target sends it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import structlog

from pvsd.config import Config
from pvsd.errors import BadInput
from pvsd.farm.errors import StoreError, StoreUnavailable
from pvsd.farm.offline import OfflineFarm
from pvsd.farm.offline_queue import RecordKind
from pvsd.farm.records import AccessMode, FarmView, Load, Server, ServerState
from pvsd.farm.snapshot import FarmSnapshot
from pvsd.farm.store import FarmStore
from pvsd.farm.versions import writes_version
from pvsd.lograte import REFUSAL_LOG_INTERVAL_S, LogRate
from pvsd.net.mac import parse_mac
from pvsd.net.reader import DecodeError
from pvsd.net.udp import Address, UdpEndpoint
from pvsd.stream.admission import Grant, decide_login, place_resumed
from pvsd.stream.peer_heartbeat import is_peer_heartbeat
from pvsd.stream.placement import Affinity, Placement
from pvsd.stream.ticket import Claims, issue_ticket, verify_ticket
from pvsd.stream.wire import (
    ErrorCode,
    Login,
    LoginReply,
    ServerEntry,
    StreamRefusal,
    decode,
    encode,
    fit_error,
    is_server_message,
)
from pvsd.vdisk.image import image_path

__all__ = ["MIN_FRESH_LOGIN", "LocalWorkers", "LoginServer", "LoginStats"]

# A fresh LOGIN must be at least this long, so that its reply is never the larger (no amplification).
MIN_FRESH_LOGIN = 512
_REPLAY_S = 10.0  # a retransmitted LOGIN within this long gets the same answer, not a new session
_REPLAY_LIMIT = 4096  # remembered answers, whatever a flood of distinct LOGINs does
RESUME_STORE_TIMEOUT_S = 1.0  # a returning target waits no longer than this for the farm store
RESUME_WORKERS = 4  # returning targets placed at once; fresh logins are decided one at a time
DROPPED_LOG_INTERVAL_S = 10.0


@dataclass
class LoginStats:
    granted: int = 0
    resumed: int = 0
    refused: int = 0
    malformed: int = 0
    dropped: int = 0  # the pending logins were full
    reflected: int = 0  # server messages (ERROR, LOGIN_REPLY, ...) dropped unanswered
    unanswered: int = 0  # requests too short for even a bare ERROR: dropped


class LocalWorkers(Protocol):
    """This server's I/O workers, as the login service sees them."""

    def port_loads(self) -> dict[int, int]:
        """Sessions per live worker port, those given out since the workers last reported included."""
        ...

    def assign(self, port: int) -> None:
        """Count a new session against `port` at once."""
        ...


@dataclass(frozen=True)
class _Pending:
    request_id: int
    login: Login
    peer: Address
    size: int

    @property
    def key(self) -> tuple[Address, int, str, bytes]:
        return (self.peer, self.request_id, self.login.mac, self.login.ticket)


class LoginServer:
    def __init__(
        self,
        config: Config,
        store: FarmStore,
        secret: str,
        live_servers: Callable[[], list[Server]],
        workers: LocalWorkers,
        log: structlog.stdlib.BoundLogger,
        offline: OfflineFarm | None = None,
        peer_loads: Callable[[str], Mapping[int, int] | None] | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.secret = secret
        self.live_servers = live_servers
        self.workers = workers
        self.log = log
        self.offline = offline
        """The farm snapshot and the queue: fresh logins of known devices while the database is down."""
        self.peer_loads = peer_loads
        """The load another server last reported directly (its UDP heartbeat), or None."""
        self.on_peer_datagram: Callable[[bytes, Address], None] | None = None
        # (when, server, port) of logins granted from the snapshot lately, not yet in any load
        self._offline_grants: list[tuple[float, str, int]] = []
        self.stats = LoginStats()
        self.endpoint: UdpEndpoint | None = None
        # (peer, request id, MAC, ticket) -> (when, our answer or None while working on it)
        self._answers: dict[tuple[Address, int, str, bytes], tuple[float, bytes | None]] = {}
        self._fresh: asyncio.Queue[_Pending] = asyncio.Queue()
        self._returning: asyncio.Queue[_Pending] = asyncio.Queue()
        self._pending = 0
        self._dropped_logged_at = -DROPPED_LOG_INTERVAL_S
        self._dropped_since_log = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._refusal_log = LogRate(REFUSAL_LOG_INTERVAL_S)

    async def start(self) -> None:
        self.endpoint = UdpEndpoint.bind(
            self.config.server.bind, self.config.login.port, self.datagram_received
        )
        self._spawn(self._serve(self._fresh), "login-fresh")
        for index in range(RESUME_WORKERS):
            self._spawn(self._serve(self._returning), f"login-returning-{index}")

    def _spawn(self, work: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        if self.endpoint is not None:
            self.endpoint.close()
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # -- the request path -----------------------------------------------------------------------------

    def datagram_received(self, data: bytes, peer: Address) -> None:
        if is_peer_heartbeat(data):
            if self.on_peer_datagram is not None:
                self.on_peer_datagram(data, peer)
            return
        if is_server_message(data):
            # Never answered: a spoofed source would set two servers answering each other.
            self.stats.reflected += 1
            self.log.debug("dropped a server's message at the login port", peer=f"{peer[0]}:{peer[1]}")
            return
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
        pending = _Pending(header.request_id, message, peer, len(data))
        try:
            parse_mac(message.mac)
        except BadInput as error:
            # A broadcast, multicast or all-zero MAC: no network card has one. Bad input, not a fault.
            self._send(
                self._refuse(StreamRefusal(ErrorCode.BAD_REQUEST, str(error)), pending, self._log(pending)),
                peer,
            )
            return
        if not message.ticket and len(data) < MIN_FRESH_LOGIN:
            # Refused here, before it costs a task, a place in line or the store.
            self._send(
                self._refuse(
                    StreamRefusal(
                        ErrorCode.BAD_REQUEST, f"pad a LOGIN without a ticket to {MIN_FRESH_LOGIN} bytes"
                    ),
                    pending,
                    self._log(pending),
                ),
                peer,
            )
            return
        now = time.monotonic()
        earlier = self._answers.get(pending.key)
        if earlier is not None and now - earlier[0] < _REPLAY_S:
            answer = earlier[1]
            # Our answer was lost: the same one again, if this copy itself may have it (a copy
            # cut short of the padding rule gets nothing: no amplification by replay either).
            if answer and (message.ticket or len(answer) <= len(data)):
                self._send(answer, peer)
            return  # still working on it, or nothing to send
        if self._pending >= self.config.login.max_pending:
            self._drop(pending, now)
            return
        self._remember(pending, now, None)
        self._pending += 1
        (self._returning if message.ticket else self._fresh).put_nowait(pending)

    def _remember(self, pending: _Pending, now: float, answer: bytes | None) -> None:
        self._answers[pending.key] = (now, answer)
        if len(self._answers) > _REPLAY_LIMIT:
            fresh = {k: v for k, v in self._answers.items() if now - v[0] < _REPLAY_S}
            # A flood of distinct LOGINs within the replay time: forget the oldest rather than grow.
            self._answers = dict(list(fresh.items())[-_REPLAY_LIMIT // 2 :])

    def _drop(self, pending: _Pending, now: float) -> None:
        self.stats.dropped += 1
        self._dropped_since_log += 1
        if now - self._dropped_logged_at >= DROPPED_LOG_INTERVAL_S:
            self.log.warning(
                "login dropped: every pending place is taken; targets send their LOGIN again",
                dropped=self._dropped_since_log,
                max_pending=self.config.login.max_pending,
                peer=f"{pending.peer[0]}:{pending.peer[1]}",
                mac=pending.login.mac,
            )
            self._dropped_logged_at, self._dropped_since_log = now, 0

    async def _serve(self, queue: asyncio.Queue[_Pending]) -> None:
        while True:
            pending = await queue.get()
            try:
                reply = await self._answer(pending)
            finally:
                self._pending -= 1
            self._remember(pending, time.monotonic(), reply or b"")
            self._send(reply, pending.peer)

    async def _answer(self, pending: _Pending) -> bytes | None:
        log = self._log(pending)
        try:
            if pending.login.ticket:
                return await self._resume(pending, log)
            return await self._fresh_login(pending, log)
        except StreamRefusal as refusal:
            return self._refuse(refusal, pending, log)
        except StoreUnavailable as error:
            return self._refuse(
                StreamRefusal(ErrorCode.DATABASE_UNAVAILABLE, f"the farm store is unreachable: {error}"),
                pending,
                log,
            )
        except StoreError as error:
            return self._refuse(
                StreamRefusal(ErrorCode.DATABASE_UNAVAILABLE, f"the farm store refused the login: {error}"),
                pending,
                log,
            )
        except Exception:
            log.exception("login failed unexpectedly")
            return fit_error(
                ErrorCode.SERVER_BUSY,
                "internal error, try another server",
                pending.request_id,
                0,
                pending.size,
            )

    def _observed_ages(self) -> dict[str, float | None]:
        """Heartbeat ages as this server observed them (farm/heartbeats.py), not as the difference
        of two clocks: a dead server with a clock ahead must get no logins."""
        return {server.name: server.heartbeat_age for server in self._servers()}

    def _log(self, pending: _Pending) -> structlog.stdlib.BoundLogger:
        return self.log.bind(peer=f"{pending.peer[0]}:{pending.peer[1]}", mac=pending.login.mac)

    # -- fresh logins ---------------------------------------------------------------------------------

    async def _fresh_login(self, pending: _Pending, log: structlog.stdlib.BoundLogger) -> bytes:
        farm = self.config.farm
        here = self.config.server.name
        local = self.workers.port_loads()
        decided: list[Grant] = []
        refused: list[StreamRefusal] = []
        observed = self._observed_ages()

        def choose(view: FarmView) -> tuple[str, int] | None:
            # Runs inside the store's transaction: pure work on what it read, nothing more.
            try:
                grant = decide_login(
                    pending.login.mac,
                    _with_ages(view, observed),
                    target=ipaddress.IPv4Address(pending.peer[0]),
                    dead_after=farm.dead_after,
                    affinity=Affinity(self.config.login.affinity),
                    prefix=self.config.login.affinity_prefix,
                )
            except StreamRefusal as refusal:
                refused.append(refusal)
                return None
            placement = grant.placement
            if placement.server.name == here and local:
                # This server's own workers know their load better than the farm's last stamp.
                placement = dataclasses.replace(placement, io_port=_least_loaded(local))
                grant = dataclasses.replace(grant, placement=placement)
            decided.append(grant)
            return placement.server.name, placement.io_port

        if self.offline is not None and not self.offline.usable():
            return self._offline_login(pending, log, self.offline.reason)
        try:
            result = await asyncio.to_thread(
                self.store.fresh_login,
                pending.login.mac,
                active_within=self.config.stream.idle_timeout + 2 * farm.heartbeat_interval,
                auto_add=farm.auto_add,
                template=farm.auto_add_template,
                choose=choose,
            )
        except StoreUnavailable as error:
            if self.offline is None:
                raise
            return self._offline_login(pending, log, str(error))
        if result.added:
            if not result.template_found:
                log.warning(
                    "auto_add template device not found; adding the device with no vDisk",
                    template=farm.auto_add_template,
                )
            log.info(
                "device added at its first login ([farm] auto_add)",
                device=result.view.device.name if result.view.device else None,
                template=farm.auto_add_template or None,
            )
        if refused:
            raise refused[0]
        if not decided or result.session is None:
            raise StreamRefusal(ErrorCode.SERVER_BUSY, "the login was not decided")
        device = result.view.device.name if result.view.device else None
        return self._granted(pending, decided[0], result.session.id, device, log, "login granted")

    def _granted(
        self,
        pending: _Pending,
        grant: Grant,
        session: int,
        device: str | None,
        log: structlog.stdlib.BoundLogger,
        event: str,
    ) -> bytes:
        placement = grant.placement
        if placement.server.name == self.config.server.name:
            self.workers.assign(placement.io_port)
        now_ms = int(time.time() * 1000)
        claims = Claims(
            mac=pending.login.mac,
            vdisk=grant.vdisk.name,
            version=grant.version.number,
            private=grant.private,
            cache=grant.cache,
            session=session,
            issued_ms=now_ms,
            expires_ms=now_ms + int(self.config.login.ticket_lifetime * 1000),
            disk_size=grant.vdisk.size,
            sector_size=grant.vdisk.sector_size,
        )
        self.stats.granted += 1
        log.info(
            event,
            device=device,
            vdisk=claims.vdisk,
            version=claims.version,
            serving=placement.server.name,  # `server` is bound to the one that logs the line
            io=f"{placement.server.address}:{placement.io_port}",
            session=session,
            why=placement.reason,
        )
        return self._reply(pending, claims, placement, pending.size)

    # -- fresh logins while the farm database is down -------------------------------------------------

    def _offline_login(self, pending: _Pending, log: structlog.stdlib.BoundLogger, reason: str) -> bytes:
        """A known device logs in from the farm snapshot: placed by the servers heard alive and
        their last-known load; its session record waits in the queue for the database."""
        assert self.offline is not None
        mac = pending.login.mac
        snapshot = self.offline.snapshot
        if snapshot is None:
            raise StreamRefusal(
                ErrorCode.DATABASE_UNAVAILABLE,
                f"the farm database is unreachable and this server has no snapshot of the farm: {reason}",
            )
        device = snapshot.device(mac)
        if device is None:
            raise StreamRefusal(
                ErrorCode.DATABASE_UNAVAILABLE,
                f"{mac} is not a device of the farm as last read, and the farm database is unreachable: "
                "only known devices boot while it is down ([farm] auto_add waits for it)",
            )
        vdisk = snapshot.vdisk(device.vdisk) if device.vdisk else None
        if vdisk is not None and writes_version(vdisk, device.type) is not None:
            raise StreamRefusal(
                ErrorCode.DATABASE_UNAVAILABLE,
                "a maintenance version's write lock is kept in the farm database, which is unreachable",
            )
        private = vdisk is not None and vdisk.mode is AccessMode.PRIVATE
        view = FarmView(
            device=device,
            vdisk=vdisk,
            servers=self._servers(),
            replicas=snapshot.replicas_of(vdisk.name) if vdisk else [],
            load=self._offline_load(snapshot, mac),
            holders=[
                s for s in snapshot.sessions if private and vdisk and s.vdisk == vdisk.name and s.mac != mac
            ],
        )
        grant = decide_login(
            mac,
            view,
            target=ipaddress.IPv4Address(pending.peer[0]),
            dead_after=self.config.farm.dead_after,
            affinity=Affinity(self.config.login.affinity),
            prefix=self.config.login.affinity_prefix,
        )
        placement = grant.placement
        local = self.workers.port_loads()
        if placement.server.name == self.config.server.name and local:
            grant = dataclasses.replace(
                grant, placement=dataclasses.replace(placement, io_port=_least_loaded(local))
            )
            placement = grant.placement
        session = self.offline.new_session_id()
        self.offline.record(
            RecordKind.SESSION_OPEN,
            mac,
            placement.server.name,
            session,
            placement.io_port,
            grant.vdisk.name,
            grant.version.number,
        )
        self._offline_grants.append((time.monotonic(), placement.server.name, placement.io_port))
        return self._granted(
            pending, grant, session, device.name, log, "login granted from the farm snapshot (database down)"
        )

    def _offline_load(self, snapshot: FarmSnapshot, mac: str) -> Load:
        """Sessions per server and port: this server's own workers, what the others last said
        directly, else what the snapshot saw; plus what this server granted them lately."""
        recorded = snapshot.load(exclude_mac=mac)
        here = self.config.server.name
        per_port: dict[tuple[str, int], int] = {}
        for server in self._servers():
            heard = self.peer_loads(server.name) if self.peer_loads is not None else None
            if server.name == here:
                heard = self.workers.port_loads()
            if heard is not None:
                per_port.update({(server.name, port): count for port, count in heard.items()})
            else:
                per_port.update({key: n for key, n in recorded.per_port.items() if key[0] == server.name})
        horizon = time.monotonic() - 2 * self.config.farm.heartbeat_interval
        self._offline_grants = [grant for grant in self._offline_grants if grant[0] >= horizon]
        for _, server_name, port in self._offline_grants:
            if server_name != here:  # this server's own are counted by workers.assign
                per_port[(server_name, port)] = per_port.get((server_name, port), 0) + 1
        return Load(per_port)

    # -- targets coming back with a ticket ------------------------------------------------------------

    async def _resume(self, pending: _Pending, log: structlog.stdlib.BoundLogger) -> bytes:
        login = pending.login
        claims = verify_ticket(self.secret, login.ticket, int(time.time() * 1000))
        if claims.mac != login.mac:
            raise StreamRefusal(
                ErrorCode.TICKET_OTHER_DEVICE, f"the ticket names {claims.mac}, not {login.mac}"
            )
        placement = await self._place_resumed(claims, pending.peer, log)
        if placement is None or placement.server.name == self.config.server.name:
            # Here: the farm store chose this server, or could not be asked. The ticket is enough.
            placement = self._here(claims, placement.reason if placement else "the farm store did not answer")
        now_ms = int(time.time() * 1000)
        lifetime_ms = int(self.config.login.ticket_lifetime * 1000)
        renewed = dataclasses.replace(claims, issued_ms=now_ms, expires_ms=now_ms + lifetime_ms)
        self.stats.resumed += 1
        log.info(
            "login resumed with a ticket",
            vdisk=claims.vdisk,
            version=claims.version,
            serving=placement.server.name,
            io=f"{placement.server.address}:{placement.io_port}",
            session=claims.session,
            why=placement.reason,
        )
        self._spawn(
            self._record_resume(claims, placement.server.name, placement.io_port, log), "login-record"
        )
        # A valid ticket may have a reply larger than its LOGIN: the ticket is the proof of work.
        return self._reply(pending, renewed, placement, 1 << 16)

    def _here(self, claims: Claims, reason: str) -> Placement:
        path = image_path(Path(self.config.server.store), claims.vdisk, claims.version)
        if not path.is_file():
            raise StreamRefusal(
                ErrorCode.NO_SERVER, f"this server holds no image of {claims.vdisk} v{claims.version}"
            )
        local = self.workers.port_loads()
        if not local:
            raise StreamRefusal(ErrorCode.SERVER_BUSY, "no stream worker is running here")
        port = _least_loaded(local)
        self.workers.assign(port)
        this = next(s for s in self._servers() if s.name == self.config.server.name)
        return Placement(this, port, reason)

    async def _place_resumed(
        self, claims: Claims, peer: Address, log: structlog.stdlib.BoundLogger
    ) -> Placement | None:
        """With the farm store at hand, a target coming back is balanced like a new one; without
        it (or if it is slow), this server serves it: the ticket is all it needs."""
        farm = self.config.farm
        try:
            view = await asyncio.wait_for(
                asyncio.to_thread(
                    self.store.resume_view,
                    claims.session,
                    claims.vdisk,
                    self.config.stream.idle_timeout + 2 * farm.heartbeat_interval,
                ),
                RESUME_STORE_TIMEOUT_S,
            )
        except (StoreError, TimeoutError) as error:
            log.info("placing a returning target without the farm store", error=str(error) or "timeout")
            return None
        version = view.vdisk and next((v for v in view.vdisk.versions if v.number == claims.version), None)
        if version is None:
            # The store answered, and the farm no longer has what the ticket names: serving it on
            # from a stray image would stream a disk nobody manages. The target stops, and says why.
            raise StreamRefusal(
                ErrorCode.VDISK_REMOVED, f"the farm no longer has vDisk {claims.vdisk} v{claims.version}"
            )
        return place_resumed(
            claims.vdisk,
            claims.version,
            _with_ages(view, self._observed_ages()),
            target=ipaddress.IPv4Address(peer[0]),
            dead_after=farm.dead_after,
            affinity=Affinity(self.config.login.affinity),
            prefix=self.config.login.affinity_prefix,
        )

    async def _record_resume(
        self, claims: Claims, server: str, port: int, log: structlog.stdlib.BoundLogger
    ) -> None:
        try:
            await asyncio.to_thread(
                self.store.resume_session,
                claims.session,
                claims.mac,
                server,
                port,
                claims.vdisk,
                claims.version,
            )
        except StoreUnavailable as error:
            if self.offline is None:
                log.warning(
                    "session moved here but not recorded in the farm store",
                    session=claims.session,
                    error=str(error),
                )
                return
            self.offline.record(
                RecordKind.SESSION_MOVE,
                claims.mac,
                server,
                claims.session,
                port,
                claims.vdisk,
                claims.version,
            )
        except StoreError as error:
            log.warning(
                "session moved here but not recorded in the farm store",
                session=claims.session,
                error=str(error),
            )

    # -- replies --------------------------------------------------------------------------------------

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

    def _reply(self, pending: _Pending, claims: Claims, placement: Placement, limit: int) -> bytes:
        stream = self.config.stream
        ticket = issue_ticket(self.secret, claims)
        server = placement.server
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
                    io_port=placement.io_port,
                    disk_size=claims.disk_size,
                    sector_size=claims.sector_size,
                    private=claims.private,
                    cache_type=claims.cache,
                    max_payload=max(512, min(pending.login.max_payload, stream.max_payload)),
                    max_burst=stream.max_burst,
                    ticket=ticket,
                    servers=tuple(entries),
                ),
                pending.request_id,
                claims.session,
            )
            if len(reply) <= limit or len(entries) <= 1:
                return reply
            entries.pop()  # no amplification: fewer servers listed rather than a larger reply

    def _refuse(
        self, refusal: StreamRefusal, pending: _Pending, log: structlog.stdlib.BoundLogger
    ) -> bytes | None:
        self.stats.refused += 1
        if refusal.code is ErrorCode.BAD_REQUEST:
            log.debug("login refused", code=refusal.code.name, reason=refusal.reason)
        else:
            # A flood of random MACs is one line a minute per code, saying how many it stands for.
            count = self._refusal_log.due(refusal.code.name, time.monotonic())
            if count is not None:
                log.warning("login refused", code=refusal.code.name, reason=refusal.reason, refusals=count)
        return fit_error(refusal.code, refusal.reason, pending.request_id, 0, pending.size)

    def _send(self, data: bytes | None, peer: Address) -> None:
        if data is None:
            self.stats.unanswered += 1
        elif self.endpoint is not None:
            self.endpoint.send(data, peer)


def _with_ages(view: FarmView, ages: dict[str, float | None]) -> FarmView:
    """The view with observed heartbeat ages; a server this one has not seen alive counts as dead."""
    servers = [dataclasses.replace(s, heartbeat_age=ages.get(s.name)) for s in view.servers]
    return dataclasses.replace(view, servers=servers)


def _least_loaded(loads: dict[int, int]) -> int:
    return min(loads, key=lambda port: (loads[port], port))
