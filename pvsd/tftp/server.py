"""The TFTP service: read requests on one port, each transfer on its own port (or on the
service port itself in single-port mode), all in one event loop.

Glue only: packets go through codec.decode, transfers through session.ReadSession, files
through sources.SourceRegistry. Write requests are refused with error 2. Over
max_transfers, requests get error 3. Nothing a client sends can raise out of here.

Nothing a client sends can grow what the server keeps or says either: refusals are counted
by a closed set of reasons (codec.Refusal), file names in logs are cut short (shown_name),
an ERROR reply carries only the fixed reason and is never larger than the request, and a
datagram that does not decode is dropped unanswered (counted as malformed).

Nothing but a read or write request is answered at the service port: an ERROR, a DATA or an
OACK (packets a server sends) and a stray ACK are dropped and counted by `Drop`, so that a
forged packet cannot start a ping-pong with another server. One client address holds at
most max_per_client transfers, and reserved_transfers slots beyond max_transfers are kept for
the generated boot files (pvs.bootstrap, pvs.ipxe, device scripts): a flood cannot lock
targets out, and its transfers, never acknowledged, end after first_block_timeout.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from pvsd.config import TftpConfig
from pvsd.errors import Misuse
from pvsd.log import request_logger
from pvsd.net.reader import DecodeError
from pvsd.net.udp import Address, UdpEndpoint, path_mtu
from pvsd.tftp.codec import (
    MAX_BLKSIZE,
    Ack,
    Error,
    Opcode,
    Packet,
    ReadRequest,
    Refusal,
    TftpError,
    WriteRequest,
    bounded_error,
    decode,
    shown_name,
)
from pvsd.tftp.session import Limits, Outcome, ReadSession, Summary, check_request
from pvsd.tftp.sources import FileCache, Source, SourceRegistry

__all__ = ["Drop", "TftpServer", "TftpStats"]

IP_UDP_TFTP_HEADERS = 20 + 8 + 4
SPIN_ROUNDS = 256


class Drop(enum.StrEnum):
    """Well-formed packets the service port drops unanswered: the keys of TftpStats.dropped."""

    ERROR = "ERROR at the service port"  # answering one is how a ping-pong starts
    SERVER_PACKET = "DATA or OACK at the service port"  # only a server sends these
    STRAY_ACK = "ACK of no transfer"  # late, after its transfer ended, or a guess


@dataclass
class TftpStats:
    """Counters for the metrics endpoint. Monotonic except `active`.

    `refusals` is keyed by a Refusal's text and `dropped` by a Drop's, closed sets: their size,
    and that of the report a worker sends the main process, is bounded whatever clients send.
    """

    requests: int = 0
    malformed: int = 0  # datagrams that do not decode: dropped unanswered
    refused: int = 0  # requests answered with an ERROR; `refusals` says why
    busy: int = 0  # of those, refused for want of a slot (server or client busy)
    completed: int = 0
    failed: int = 0
    unacknowledged: int = 0  # of the failed, those whose first block was never acknowledged
    bytes_sent: int = 0
    retransmits: int = 0
    active: int = 0
    refusals: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)  # well-formed but unanswered, by Drop


class Transfer:
    """One running read: its session, its endpoint (or the shared one), its timer."""

    __slots__ = ("endpoint", "log", "own_endpoint", "peer", "session", "source", "timer", "timer_at")

    def __init__(
        self,
        session: ReadSession,
        source: Source,
        endpoint: UdpEndpoint,
        own_endpoint: bool,
        peer: Address,
        log: structlog.stdlib.BoundLogger,
    ) -> None:
        self.session = session
        self.source = source
        self.endpoint = endpoint
        self.own_endpoint = own_endpoint
        self.peer = peer
        self.log = log
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = float("inf")


class TftpServer:
    def __init__(
        self,
        config: TftpConfig,
        registry: SourceRegistry,
        log: structlog.stdlib.BoundLogger,
        reuse_port: bool = False,
    ) -> None:
        self.config = config
        self.reuse_port = reuse_port
        self.registry = registry
        self.log = log.bind(component="tftp")
        self.stats = TftpStats()
        self.limits = Limits(
            max_windowsize=config.max_windowsize,
            timeout=config.timeout,
            abandon_after=config.abandon_after,
            first_block_timeout=config.first_block_timeout,
        )
        self._endpoint: UdpEndpoint | None = None
        self._by_peer: dict[Address, Transfer] = {}  # single-port mode: transfers by client address
        self._transfers: set[Transfer] = set()
        self._opening = 0
        self._per_client: dict[str, int] = {}  # transfers starting or running, by client IP address
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._spin_budget = config.busy_poll_us / 1e6
        self._spinning = False

    @classmethod
    def from_config(
        cls, config: TftpConfig, log: structlog.stdlib.BoundLogger, reuse_port: bool = False
    ) -> TftpServer:
        fallbacks = [Path(config.ipxe_dir)] if config.ipxe_dir else []
        registry = SourceRegistry(Path(config.root), FileCache(config.cache_mb << 20), fallbacks)
        return cls(config, registry, log, reuse_port)

    @property
    def address(self) -> Address:
        if self._endpoint is None:
            raise Misuse("TftpServer.start() first")
        return self._endpoint.address

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._endpoint = UdpEndpoint.bind(
            self.config.bind,
            self.config.port,
            self._on_request,
            self._on_socket_error,
            reuse_port=self.reuse_port,
        )
        root = Path(self.config.root)
        if not await asyncio.to_thread(root.is_dir):
            self.log.warning(
                "TFTP root is not a folder: only generated files will be served",
                root=str(root),
                published=self.registry.published_names,
            )
        self.log.info(
            "TFTP listening",
            address=f"{self.address[0]}:{self.address[1]}",
            root=str(root),
            single_port=self.config.single_port,
        )

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._endpoint is not None:
            # the clients whose transfers stop here retry, and another server answers them
            self.log.info("TFTP service closed", transfers_cut_short=len(self._transfers))
        for transfer in list(self._transfers):
            self._end(transfer, log_it=False)
        if self._endpoint is not None:
            self._endpoint.close()
            self._endpoint = None

    # -- requests on the service port --------------------------------------------------------------

    def _on_socket_error(self, error: OSError) -> None:
        self.log.debug("TFTP socket error", error=str(error))

    def _on_request(self, data: bytes, peer: Address) -> None:
        if self.config.single_port:
            transfer = self._by_peer.get(peer)
            if transfer is not None and not _is_request(data):
                self._on_transfer_datagram(transfer, data)
                return
        log = request_logger(self.log, peer)
        try:
            packet = decode(data)
        except DecodeError as error:
            # Unanswered, requests too: no real client sends these, and an answer to a datagram
            # with a forged source would reflect (and, with the reason in it, amplify) it.
            self.stats.malformed += 1
            log.debug("malformed TFTP packet dropped", reason=str(error)[:200], length=len(data))
            return
        if isinstance(packet, WriteRequest):
            self._refuse(peer, log, packet.filename, Refusal.WRITE, len(data))
            return
        if not isinstance(packet, ReadRequest):
            self._drop(packet, log)
            return
        self.stats.requests += 1
        if self.config.single_port:
            old = self._by_peer.get(peer)
            if old is not None:
                if old.session.request == packet:
                    return  # the client resent its request before our first answer reached it
                self._end(old, log_it=False)
        client = peer[0]
        if self._per_client.get(client, 0) >= self.config.max_per_client:
            self.stats.busy += 1
            self._refuse(peer, log, packet.filename, Refusal.CLIENT_BUSY, len(data))
            return
        # The generated boot files may use the reserve: what every target needs first is never
        # locked out by transfers of anything else.
        limit = self.config.max_transfers
        if self.registry.is_generated(packet.filename):
            limit += self.config.reserved_transfers
        if len(self._transfers) + self._opening >= limit:
            self.stats.busy += 1
            self._count_refusal(Refusal.BUSY)
            log.warning("TFTP request refused: server busy", file=shown_name(packet.filename), limit=limit)
            self._reply_error(peer, Refusal.BUSY, len(data))
            return
        self._opening += 1
        self._per_client[client] = self._per_client.get(client, 0) + 1
        task = asyncio.get_running_loop().create_task(self._start_transfer(packet, len(data), peer, log))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _drop(self, packet: Packet, log: structlog.stdlib.BoundLogger) -> None:
        """A packet for no transfer at the service port: counted, never answered."""
        if isinstance(packet, Error):
            reason = Drop.ERROR
        elif isinstance(packet, Ack):
            reason = Drop.STRAY_ACK
        else:
            reason = Drop.SERVER_PACKET
        self.stats.dropped[reason.value] = self.stats.dropped.get(reason.value, 0) + 1
        log.debug("TFTP packet dropped", reason=reason.value, packet=type(packet).__name__)

    def _release(self, client: str) -> None:
        left = self._per_client.get(client, 0) - 1
        if left > 0:
            self._per_client[client] = left
        else:
            self._per_client.pop(client, None)  # so the map holds only clients with transfers

    def _reply_error(self, peer: Address, refusal: Refusal, request_size: int) -> None:
        """The refusal's fixed text, cut so that the reply is no larger than the request."""
        reply = bounded_error(refusal.code, refusal.value, request_size)
        if reply is not None and self._endpoint is not None:
            self._endpoint.send(reply, peer)

    def _count_refusal(self, refusal: Refusal) -> None:
        self.stats.refused += 1
        self.stats.refusals[refusal.value] = self.stats.refusals.get(refusal.value, 0) + 1

    def _refuse(
        self,
        peer: Address,
        log: structlog.stdlib.BoundLogger,
        name: str,
        refusal: Refusal,
        request_size: int,
        detail: str = "",
    ) -> None:
        self._count_refusal(refusal)
        fields = {"detail": detail} if detail else {}
        log.info(
            "TFTP request refused",
            file=shown_name(name),
            reason=refusal.value,
            error_code=int(refusal.code),
            **fields,
        )
        self._reply_error(peer, refusal, request_size)

    async def _start_transfer(
        self, request: ReadRequest, request_size: int, peer: Address, log: structlog.stdlib.BoundLogger
    ) -> None:
        log = log.bind(file=shown_name(request.filename))
        source: Source | None = None
        try:
            check_request(request)
            source = await self.registry.open(request.filename, netascii=request.mode == "netascii")
            endpoint, own = self._transfer_endpoint(peer)
        except (TftpError, OSError) as error:
            self._release(peer[0])
            if source is not None:
                source.close()
            if isinstance(error, TftpError):
                self._refuse(peer, log, request.filename, error.refusal, request_size, error.detail)
            else:
                log.error("TFTP transfer could not start", error=error.strerror or str(error))
                self._count_refusal(Refusal.SERVER_ERROR)
                self._reply_error(peer, Refusal.SERVER_ERROR, request_size)
            return
        finally:
            self._opening -= 1
        mtu = endpoint.mtu() if own else path_mtu(self.config.bind, peer)
        max_blksize = self.config.max_blksize or (mtu - IP_UDP_TFTP_HEADERS if mtu else 1468)
        limits = dataclasses.replace(self.limits, max_blksize=min(max_blksize, MAX_BLKSIZE))
        session = ReadSession(request, source, limits, self._now())
        transfer = Transfer(session, source, endpoint, own, peer, log)
        self._transfers.add(transfer)
        self.stats.active = len(self._transfers)
        if own:
            endpoint.on_datagram = lambda data, address: self._on_transfer_packet(transfer, data, address)
            endpoint.on_error = lambda error: self._on_transfer_error(transfer, error)
        else:
            self._by_peer[peer] = transfer
        log.debug(
            "TFTP transfer started", size=source.size, blksize=session.blksize, windowsize=session.windowsize
        )
        self._flush(transfer)

    def _transfer_endpoint(self, peer: Address) -> tuple[UdpEndpoint, bool]:
        if self.config.single_port:
            if self._endpoint is None:
                raise Misuse("TftpServer.start() first")
            return self._endpoint, False
        # A new port per transfer, connected to the client: the kernel then drops datagrams
        # from anyone else, and an ICMP "port unreachable" ends a transfer whose client died.
        endpoint = UdpEndpoint.bind(
            self.config.bind, 0, lambda data, address: None, connect_to=peer, max_batch=1
        )
        return endpoint, True

    # -- running transfers -------------------------------------------------------------------------

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise Misuse("TftpServer.start() first")
        return self._loop

    def _now(self) -> float:
        return self._running_loop().time()

    def _on_transfer_packet(self, transfer: Transfer, data: bytes, address: Address) -> None:
        if address != transfer.peer:
            return  # connected sockets only see the peer; be safe anyway
        self._on_transfer_datagram(transfer, data)

    def _on_transfer_datagram(self, transfer: Transfer, data: bytes) -> None:
        try:
            packet: Packet = decode(data)
        except DecodeError as error:
            self.stats.malformed += 1
            transfer.log.debug("malformed TFTP packet dropped", reason=str(error), length=len(data))
            return
        transfer.session.receive(packet, self._now())
        self._flush(transfer)
        if self._spin_budget and len(self._transfers) == 1 and transfer.own_endpoint and not self._spinning:
            self._spin(transfer)

    def _spin(self, transfer: Transfer) -> None:
        """With one transfer running, wait for its next ACK in a short busy loop.

        A lockstep client's ACK comes back within tens of microseconds; sleeping in the
        event loop until it arrives costs a scheduler wake-up per block, which is most of
        a lockstep round trip. Bounded per wait (busy_poll_us) and per call (SPIN_ROUNDS
        packets), after which the loop runs its other work; sched_yield lets a client that
        shares our CPU run.
        """
        sock = transfer.endpoint.sock
        clock = time.perf_counter
        budget = self._spin_budget
        self._spinning = True
        try:
            for _ in range(SPIN_ROUNDS):
                give_up = clock() + budget
                while True:
                    try:
                        data = sock.recv(65536)
                        break
                    except (BlockingIOError, InterruptedError):
                        if clock() > give_up:
                            return
                        os.sched_yield()
                    except OSError:
                        return  # the event loop's reader sees the error and ends the transfer
                self._on_transfer_datagram(transfer, data)
                if transfer not in self._transfers or len(self._transfers) != 1:
                    return
        finally:
            self._spinning = False

    def _on_transfer_error(self, transfer: Transfer, error: OSError) -> None:
        """ECONNREFUSED: the client's port is closed, so it is gone.

        The kernel reports the error before datagrams already queued, and a client that
        finished closes its port right after its last ACK, while resends of ours are still
        on their way: read what is queued first, so a completed transfer counts as one.
        """
        sock = transfer.endpoint.sock
        for _ in range(256):  # a window's worth of ACKs and the errors between them
            if transfer not in self._transfers:
                return
            try:
                data = sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                continue  # another ICMP error: there may still be ACKs behind it
            self._on_transfer_datagram(transfer, data)
        if transfer in self._transfers:
            transfer.session.client_gone(self._now(), f"client unreachable: {error.strerror}")
            self._end(transfer)

    def _flush(self, transfer: Transfer) -> None:
        session = transfer.session
        datagrams = session.take_datagrams()
        if datagrams:
            address = None if transfer.own_endpoint else transfer.peer
            transfer.endpoint.send_many(datagrams, address)
        if session.done:
            self._end(transfer)
            return
        if session.deadline < transfer.timer_at:
            self._arm(transfer, session.deadline)

    def _arm(self, transfer: Transfer, when: float) -> None:
        loop = self._running_loop()
        if transfer.timer is not None:
            transfer.timer.cancel()
        transfer.timer_at = when
        transfer.timer = loop.call_at(when, self._on_timer, transfer)

    def _on_timer(self, transfer: Transfer) -> None:
        transfer.timer = None
        transfer.timer_at = float("inf")
        if transfer not in self._transfers:
            return
        now = self._now()
        if now < transfer.session.deadline:
            self._arm(transfer, transfer.session.deadline)  # progress moved the deadline on
            return
        transfer.session.on_timer(now)
        self._flush(transfer)

    def _end(self, transfer: Transfer, log_it: bool = True) -> None:
        if transfer not in self._transfers:
            return
        self._transfers.discard(transfer)
        if self._by_peer.get(transfer.peer) is transfer:
            del self._by_peer[transfer.peer]
        if transfer.timer is not None:
            transfer.timer.cancel()
        if transfer.own_endpoint:
            transfer.endpoint.close()
        transfer.source.close()
        self._release(transfer.peer[0])
        self.stats.active = len(self._transfers)
        summary = transfer.session.summary()
        self.stats.bytes_sent += summary.bytes_sent
        self.stats.retransmits += summary.retransmits
        if summary.outcome is Outcome.COMPLETE:
            self.stats.completed += 1
        else:
            self.stats.failed += 1
            if summary.outcome is Outcome.UNACKNOWLEDGED:
                self.stats.unacknowledged += 1
        if log_it:
            _log_summary(transfer.log, summary)


def _log_summary(log: structlog.stdlib.BoundLogger, summary: Summary) -> None:
    fields = {
        "outcome": str(summary.outcome),
        "bytes": summary.bytes_sent,
        "size": summary.size,
        "blksize": summary.blksize,
        "windowsize": summary.windowsize,
        "retransmits": summary.retransmits,
        "duration_s": round(summary.duration, 3),
    }
    if summary.duration > 0 and summary.bytes_sent:
        fields["mb_per_s"] = round(summary.bytes_sent / summary.duration / 1e6, 1)
    if summary.detail:
        fields["detail"] = summary.detail
    if summary.outcome is Outcome.COMPLETE:
        log.info("TFTP transfer complete", **fields)
    elif summary.outcome is Outcome.CLIENT_ERROR:
        log.info("TFTP transfer ended by the client", **fields)
    elif summary.outcome is Outcome.UNACKNOWLEDGED:
        # Info, not a warning: a client that asked twice leaves one of its two transfers so.
        log.info("TFTP transfer not acknowledged", **fields)
    else:
        log.warning("TFTP transfer failed", **fields)


def _is_request(data: bytes) -> bool:
    return len(data) >= 2 and data[0] == 0 and data[1] in (Opcode.RRQ, Opcode.WRQ)
