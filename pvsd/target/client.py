"""A target's side of the stream protocol: log in, attach, read and write, fail over.

The requests in flight, their timers and retransmissions are the pure `Flow`; this is the
asyncio glue around it and the login sequence. After `failover_after` timeouts in a row
the client logs in again with its ticket to the next server of the list its last login
reply carried, attaches there, and sends every request still outstanding again.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import structlog

from pvsd.config import TargetConfig
from pvsd.errors import Failure, Misuse
from pvsd.net.reader import DecodeError
from pvsd.stream.wire import (
    HEADER_SIZE,
    MAGIC,
    VERSION,
    Data,
    ErrorCode,
    ErrorReply,
    Keepalive,
    Login,
    LoginReply,
    Logout,
    Message,
    MessageType,
    Redirect,
    WriteAck,
    decode,
    encode,
)
from pvsd.target.flow import Completion, Flow, Outgoing

__all__ = ["Failover", "StreamClient", "StreamError", "payload_for_mtu"]

Address = tuple[str, int]

SOL_UDP = 17
UDP_GRO = 104  # linux/udp.h: receive a burst of equal datagrams in one call
_CONTROL_IDS = 0xF000_0000  # request ids of logins and keepalives; the Flow counts up from 1
_PADDED_LOGIN = 512  # the login server's MIN_FRESH_LOGIN
_DATA_HEAD = struct.Struct("!HBBHIQQ")
# Refusals every server of the farm would repeat: no point asking the next one.
_FINAL = {
    ErrorCode.UNKNOWN_MAC,
    ErrorCode.DEVICE_DISABLED,
    ErrorCode.NO_VDISK,
    ErrorCode.VDISK_REMOVED,
    ErrorCode.TICKET_OTHER_DEVICE,
}


def payload_for_mtu(mtu: int) -> int:
    """The DATA payload that fits an MTU: less the IP and UDP headers, our header and the offset."""
    return (mtu - 20 - 8 - HEADER_SIZE - 8) // 8 * 8


class StreamError(Failure):
    """The stream cannot go on: a refusal every server repeats, or no server answers."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Failover:
    from_server: str
    to_server: str
    stall_s: float


@dataclass
class ClientStats:
    logins: int = 0
    failovers: list[Failover] = field(default_factory=list)


class StreamClient:
    def __init__(
        self,
        mac: str,
        servers: Sequence[Address],
        config: TargetConfig,
        log: structlog.stdlib.BoundLogger,
        login_timeout: float = 5.0,
        login_rounds: int = 3,
    ) -> None:
        if not servers:
            raise ValueError("no server to log in to")
        self.mac = mac
        self.servers: list[tuple[str, Address]] = [(f"{h}:{p}", (h, p)) for h, p in servers]
        self.config = config
        self.log = log.bind(mac=mac)
        self.login_timeout = login_timeout
        self.login_rounds = login_rounds
        self.stats = ClientStats()
        self.reply: LoginReply | None = None
        self.server_name = ""
        self.session = 0
        self.flow: Flow | None = None
        self._sock: socket.socket | None = None
        self._io: Address = ("", 0)
        self._control: dict[int, asyncio.Future[tuple[int, object]]] = {}
        self._next_control = _CONTROL_IDS
        self._waiters: dict[int, asyncio.Future[Completion]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._failing_over: asyncio.Task[None] | None = None
        self._keepalive: asyncio.Task[None] | None = None
        self._last_progress = 0.0
        self._gro = False
        self._last_session = 0  # the session id in the header of the last control reply

    # -- public API ---------------------------------------------------------------------------------

    @property
    def disk_size(self) -> int:
        return self._connected().disk_size

    def _connected(self) -> LoginReply:
        if self.reply is None:
            raise Misuse("StreamClient.connect() first")
        return self.reply

    async def connect(self) -> LoginReply:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        try:
            sock.setsockopt(SOL_UDP, UDP_GRO, 1)
            self._gro = True
        except OSError:
            self._gro = False
        sock.bind(("0.0.0.0", 0))  # noqa: S104 - a client port; the kernel picks the route
        sock.setblocking(False)
        self._sock = sock
        loop.add_reader(sock.fileno(), self._readable)
        try:
            reply = await self._log_in(ticket=b"", order=self.servers)
        except BaseException:
            self._close_socket()
            raise
        self._keepalive = asyncio.create_task(self._keep_alive(), name="keepalive")
        return reply

    async def read(self, offset: int, length: int) -> bytes:
        completion = await self._submit(lambda flow: flow.read(offset, length))
        if completion.data is None:
            raise Misuse("the flow completed a read without its data")
        return completion.data

    async def write(self, offset: int, data: bytes) -> None:
        await self._submit(lambda flow: flow.write(offset, data))

    async def flush(self) -> None:
        await self._submit(lambda flow: flow.flush())

    async def close(self) -> None:
        for task in (self._keepalive, self._failing_over):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._sock is not None and self.session:
            with contextlib.suppress(OSError):
                self._sock.sendto(encode(Logout(), self._take_control_id(), self.session), self._io)
        self._close_socket()

    # -- login and attach ---------------------------------------------------------------------------

    async def _log_in(self, ticket: bytes, order: Sequence[tuple[str, Address]]) -> LoginReply:
        problems: list[str] = []
        for _ in range(self.login_rounds):
            for name, address in order:
                try:
                    reply = await self._log_in_at(name, address, ticket)
                except StreamError as error:
                    if error.code in _FINAL:
                        raise
                    problems.append(f"{name}: {error}")
                    continue
                return reply
        raise StreamError(
            f"no server accepted the login of {self.mac}: " + "; ".join(problems[-len(order) :]),
        )

    async def _log_in_at(self, name: str, address: Address, ticket: bytes) -> LoginReply:
        offered = payload_for_mtu(self.config.mtu)
        padding = max(0, _PADDED_LOGIN - HEADER_SIZE - 10 - len(ticket)) if not ticket else 0
        kind, message = await self._ask(Login(self.mac, offered, ticket, padding), address, 0)
        if isinstance(message, Redirect):
            address = (str(message.address), message.port)
            kind, message = await self._ask(Login(self.mac, offered, ticket, padding), address, 0)
        if isinstance(message, ErrorReply):
            raise _refused(message)
        if not isinstance(message, LoginReply):
            raise StreamError(f"unexpected {MessageType(kind).name} in answer to LOGIN")
        session = self._last_session
        io = (str(message.io_address), message.io_port)
        kind, attached = await self._ask(Login(self.mac, offered, message.ticket), io, session)
        if isinstance(attached, ErrorReply):
            raise _refused(attached)
        self.reply, self.session, self._io = message, session, io
        # The server we stream from is the I/O address's, maybe not the one that took the login;
        # the reply lists it first.
        self.server_name = next(
            (s.name for s in message.servers if str(s.address) == io[0]),
            message.servers[0].name if message.servers else name,
        )
        if message.servers:
            self.servers = [(s.name, (str(s.address), s.login_port)) for s in message.servers]
        if self.flow is None:
            self.flow = Flow(
                disk_size=message.disk_size,
                sector_size=message.sector_size,
                max_payload=message.max_payload,
                max_burst=message.max_burst,
                window=self.config.window,
            )
        self.stats.logins += 1
        self.log.info(
            "logged in",
            server=self.server_name,
            io=f"{io[0]}:{io[1]}",
            session=session,
            disk_size=message.disk_size,
            payload=message.max_payload,
            burst=message.max_burst,
            gro=self._gro,
        )
        return message

    async def _ask(self, message: Message, address: Address, session: int) -> tuple[int, object]:
        if self._sock is None:
            raise Misuse("StreamClient.connect() first")
        request_id = self._take_control_id()
        future: asyncio.Future[tuple[int, object]] = asyncio.get_running_loop().create_future()
        self._control[request_id] = future
        data = encode(message, request_id, session)
        try:
            for attempt in range(3):
                with contextlib.suppress(OSError):
                    self._sock.sendto(data, address)
                with contextlib.suppress(TimeoutError):
                    return await asyncio.wait_for(
                        asyncio.shield(future), self.login_timeout / 3 * (attempt + 1) / 2
                    )
            raise StreamError(f"no answer from {address[0]}:{address[1]}")
        finally:
            self._control.pop(request_id, None)

    def _take_control_id(self) -> int:
        self._next_control = self._next_control + 1 if self._next_control < 0xFFFF_FFFF else _CONTROL_IDS
        return self._next_control

    # -- the data path ------------------------------------------------------------------------------

    async def _submit(self, start: Callable[[Flow], int]) -> Completion:
        flow = self.flow
        if flow is None:
            raise Misuse("StreamClient.connect() first")
        handle = start(flow)
        future: asyncio.Future[Completion] = asyncio.get_running_loop().create_future()
        self._waiters[handle] = future
        self._pump()
        completion = await future
        if completion.error is not None:
            raise _refused(completion.error)
        return completion

    def _pump(self) -> None:
        """Send what the flow wants sent, deliver what finished, and arm the retransmit timer."""
        flow = self.flow
        if flow is None or self._failing_over is not None:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        self._send(flow.poll(now))
        for completion in flow.completions():
            waiter = self._waiters.pop(completion.handle, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(completion)
        if flow.session_lost or flow.consecutive_timeouts >= self.config.failover_after:
            self._failing_over = asyncio.create_task(self._fail_over(lost=flow.session_lost))
            return
        deadline = flow.next_deadline()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if deadline is not None:
            self._timer = loop.call_at(max(deadline, now + 0.001), self._pump)

    def _send(self, outgoing: list[Outgoing]) -> None:
        sock = self._sock
        if sock is None:
            return
        session, io = self.session, self._io
        for item in outgoing:
            with contextlib.suppress(BlockingIOError, InterruptedError):
                sock.sendto(encode(item.message, item.request_id, session), io)

    def _readable(self) -> None:
        sock = self._sock
        if sock is None:
            return
        flow = self.flow
        now = asyncio.get_running_loop().time()
        progressed = False
        for _ in range(256):
            try:
                if self._gro:
                    data, ancillary, _, _ = sock.recvmsg(1 << 16, 64)
                else:
                    data = sock.recv(1 << 16)
                    ancillary = []
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                continue
            progressed |= self.received(data, gro_segment(ancillary), flow, now)
        if progressed:
            self._last_progress = now
        self._pump()

    def received(self, data: bytes, segment: int | None, flow: Flow | None, now: float) -> bool:
        """Feed what one receive call returned: one datagram, or with UDP_GRO (`segment`, the size
        of all but the last) a burst of them coalesced. DATA are read in place, anything else goes
        the general way. True if something matched a request or a control exchange."""
        if segment is None or segment <= 0 or segment >= len(data):
            return self._datagram(data, flow, now)
        progressed = False
        unpack_from, session, total = _DATA_HEAD.unpack_from, self.session, len(data)
        for start in range(0, total, segment):
            stop = min(start + segment, total)
            # The length first: the last segment of a burst may be short, even shorter than a header.
            if flow is not None and stop - start > _DATA_HEAD.size and data[start + 3] == MessageType.DATA:
                magic, version, _, _, request_id, sent_session, offset = unpack_from(data, start)
                if magic == MAGIC and version == VERSION and sent_session == session:
                    flow.receive_data(request_id, offset, data, start + _DATA_HEAD.size, now, stop)
                    progressed = True
                    continue
            progressed |= self._datagram(data[start:stop], flow, now)
        return progressed

    def _datagram(self, data: bytes, flow: Flow | None, now: float) -> bool:
        if flow is not None and len(data) > HEADER_SIZE + 8 and data[3] == MessageType.DATA:
            magic, version, _, _, request_id, session, offset = _DATA_HEAD.unpack_from(data)
            if magic == MAGIC and version == VERSION and session == self.session:
                flow.receive_data(request_id, offset, data, HEADER_SIZE + 8, now)
                return True
            return False
        try:
            header, message = decode(data)
        except DecodeError:
            return False
        future = self._control.get(header.request_id)
        if future is not None:
            if not future.done():
                self._last_session = header.session
                future.set_result((header.type, message))
            return True
        if flow is not None and isinstance(message, WriteAck | ErrorReply | Data):
            flow.receive(header, message, now)
            return True
        return isinstance(message, Keepalive)

    # -- failover and keepalive ---------------------------------------------------------------------

    async def _fail_over(self, lost: bool) -> None:
        flow, reply = self.flow, self._connected()
        if flow is None:
            raise Misuse("a failover before the first login")
        stalled_since = self._last_progress or asyncio.get_running_loop().time()
        previous = self.server_name
        names = [name for name, _ in self.servers]
        start = (names.index(previous) + (0 if lost else 1)) if previous in names else 0
        order = self.servers[start:] + self.servers[:start]
        self.log.warning(
            "server not answering; logging in again with the ticket"
            if not lost
            else "session lost; logging in again",
            server=previous,
            timeouts=flow.consecutive_timeouts,
        )
        try:
            await self._log_in(reply.ticket, order)
        except StreamError as error:
            self.log.error("failover failed", error=str(error))
            for waiter in self._waiters.values():
                if not waiter.done():
                    waiter.set_exception(error)
            self._waiters.clear()
            return
        finally:
            self._failing_over = None
        now = asyncio.get_running_loop().time()
        stall = Failover(previous, self.server_name, now - stalled_since)
        self.stats.failovers.append(stall)
        self.log.warning(
            "failed over", from_server=previous, to_server=self.server_name, stall_s=round(stall.stall_s, 3)
        )
        self._send(flow.resend_all(now))
        self._pump()

    async def _keep_alive(self) -> None:
        while True:
            await asyncio.sleep(self.config.keepalive_interval)
            if self._sock is not None and self._failing_over is None:
                with contextlib.suppress(OSError):
                    self._sock.sendto(encode(Keepalive(), self._take_control_id(), self.session), self._io)

    def _close_socket(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._sock is not None:
            with contextlib.suppress(ValueError, OSError):
                asyncio.get_running_loop().remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None


def gro_segment(ancillary: Sequence[tuple[int, int, bytes]]) -> int | None:
    """The segment size the kernel reports for a coalesced (UDP_GRO) receive, or None."""
    for level, kind, value in ancillary:
        if level == SOL_UDP and kind == UDP_GRO:
            if len(value) >= 4:
                return int(struct.unpack("=i", value[:4])[0])
            if len(value) >= 2:
                return int(struct.unpack("=H", value[:2])[0])
    return None


def _refused(reply: ErrorReply) -> StreamError:
    try:
        name = ErrorCode(reply.code).name
    except ValueError:
        name = f"error {reply.code}"
    return StreamError(f"{name}: {reply.message}", reply.code)
