"""The I/O service of one worker port as a pure state machine: datagrams and time in, actions out.

No sockets, no clock, no files: the glue (io.py) feeds every datagram to `receive` with `now`
(monotonic seconds) and `now_ms` (wall-clock milliseconds, for tickets), and carries out the
actions it gets back, in order:

- `Send`: a datagram for a peer (acks, keepalives, logouts);
- `Refuse`: an ERROR for a peer, to log with its code and send;
- `SendRead`: read a range of the session's disk and send it as a burst of DATA;
- `OpenDisk`: open the disk a ticket names; report back with `opened` or `open_failed`;
- `WriteDisk` and `SyncDisk`: write a WRITE's payload, or make the writes durable for a FLUSH;
  report back with `written` or `synced`, which answer the target;
- `CloseDisk`: the session ended (logout, idle, attached again): close its disk;
- `Attached` and `Dropped`: events to log.

Opening, writing, syncing and closing block on the disk, so the glue runs them off the event
loop, one device's in order; a FLUSH of one target then never delays another target's reads.

A target attaches by sending its LOGIN (with the ticket the login server gave it) to the I/O
port; from then on its requests name the session id and must come from the address that
attached (docs/protocol.md, "A session, step by step"). A WRITE is applied once per (session,
sequence): a duplicate of an applied one is acked again, one still being written is ignored.
"""

from __future__ import annotations

import collections
import errno
import struct
from dataclasses import dataclass, field

from pvsd.errors import Misuse
from pvsd.net.reader import DecodeError
from pvsd.stream.ticket import Claims, TicketError, verify_ticket
from pvsd.stream.wire import (
    HEADER_SIZE,
    MAGIC,
    VERSION,
    ErrorCode,
    Flush,
    Keepalive,
    Login,
    Logout,
    MessageType,
    Read,
    StreamRefusal,
    Write,
    WriteAck,
    decode,
    encode,
    fit_error,
    is_server_message,
)

__all__ = [
    "SECTOR",
    "Action",
    "Address",
    "Attached",
    "CloseDisk",
    "Dropped",
    "IoLimits",
    "IoStats",
    "OpenDisk",
    "Refuse",
    "Send",
    "SendRead",
    "StreamServer",
    "SyncDisk",
    "WriteDisk",
]

Address = tuple[str, int]

# Requests are aligned to 512 bytes whatever the vDisk's sector size: a 4096-byte-sector disk's
# requests are multiples of it anyway.
SECTOR = 512
REMEMBERED_WRITES = 4096  # (session, sequence) pairs kept to re-ack duplicates
_READ = struct.Struct("!HBBHIQQI")  # a whole READ: the header, offset and length
_READ_SIZE = HEADER_SIZE + 12
_LARGE = 1 << 16  # a WRITE is large: the error answering it always fits
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


@dataclass(frozen=True)
class IoLimits:
    max_payload: int
    max_burst: int
    idle_timeout: float


@dataclass
class IoStats:
    sessions: int = 0
    reads: int = 0
    bytes_read: int = 0
    writes: int = 0
    bytes_written: int = 0
    duplicate_writes: int = 0
    flushes: int = 0
    refused: int = 0
    malformed: int = 0
    reflected: int = 0  # server messages (ERROR, DATA, ...) dropped unanswered
    unanswered: int = 0  # refusals too large to send for the request they answer


@dataclass(frozen=True)
class Send:
    datagram: bytes
    peer: Address


@dataclass(frozen=True)
class Refuse:
    """An ERROR to send (None: not even a bare ERROR fits the request's size, so nothing is sent);
    `attaching` refusals concern a ticket, the rest a session's request."""

    datagram: bytes | None
    peer: Address
    refusal: StreamRefusal
    session: int = 0
    mac: str | None = None
    attaching: bool = False


@dataclass(frozen=True)
class SendRead:
    session: int
    request_id: int
    offset: int
    length: int
    payload: int
    peer: Address


@dataclass(frozen=True)
class OpenDisk:
    claims: Claims
    peer: Address
    request_id: int
    payload: int
    limit: int  # the attaching LOGIN's size: a refusal is never larger


@dataclass(frozen=True)
class WriteDisk:
    session: int
    mac: str
    request_id: int
    sequence: int
    offset: int
    data: bytes = field(repr=False)


@dataclass(frozen=True)
class SyncDisk:
    session: int
    mac: str
    request_id: int
    sequence: int


@dataclass(frozen=True)
class CloseDisk:
    session: int
    mac: str
    why: str


@dataclass(frozen=True)
class Attached:
    claims: Claims
    peer: Address
    payload: int


@dataclass(frozen=True)
class Dropped:
    peer: Address
    reason: str


Action = Send | Refuse | SendRead | OpenDisk | WriteDisk | SyncDisk | CloseDisk | Attached | Dropped


@dataclass
class _Session:
    claims: Claims
    peer: Address
    size: int
    payload: int
    writable: bool
    last_seen: float
    applied: collections.OrderedDict[int, None] = field(default_factory=collections.OrderedDict)
    writing: set[int] = field(default_factory=set)


class StreamServer:
    """The sessions of one I/O port."""

    def __init__(self, secret: str, limits: IoLimits) -> None:
        self.secret = secret
        self.limits = limits
        self.stats = IoStats()
        self._sessions: dict[int, _Session] = {}
        self._opening: dict[int, OpenDisk] = {}

    @property
    def session_ids(self) -> list[int]:
        return list(self._sessions)

    # -- datagrams in -----------------------------------------------------------------------------------

    def receive(self, datagram: bytes, peer: Address, now: float, now_ms: int) -> list[Action]:
        if len(datagram) == _READ_SIZE and datagram[3] == MessageType.READ:
            return self._fast_read(datagram, peer, now)
        if is_server_message(datagram):
            self.stats.reflected += 1
            return [Dropped(peer, "a message only a server sends")]
        try:
            header, message = decode(datagram)
        except DecodeError as error:
            self.stats.malformed += 1
            return [Dropped(peer, str(error))]
        if isinstance(message, Login):
            return self._attach(header.request_id, header.session, message, peer, len(datagram), now_ms)
        session = self._session(header.session, peer)
        if session is None:
            return [self._unknown(header.request_id, header.session, peer, len(datagram))]
        session.last_seen = now
        if isinstance(message, Read):
            return self._read(session, header.request_id, message.offset, message.length, len(datagram))
        if isinstance(message, Write):
            return self._write(session, header.request_id, message)
        if isinstance(message, Flush):
            return self._flush(session, header.request_id, message.sequence)
        if isinstance(message, Keepalive):
            return [Send(encode(Keepalive(), header.request_id, header.session), peer)]
        if isinstance(message, Logout):
            return [
                *self._end(header.session, "logged out"),
                Send(encode(Logout(), header.request_id, header.session), peer),
            ]
        return [
            self._refuse_session(
                session,
                StreamRefusal(ErrorCode.BAD_REQUEST, "not an I/O request"),
                header.request_id,
                len(datagram),
            )
        ]

    def _fast_read(self, datagram: bytes, peer: Address, now: float) -> list[Action]:
        """READ is most of the traffic: parsed with one unpack instead of the general decoder."""
        magic, version, _, _, request_id, session_id, offset, length = _READ.unpack(datagram)
        if magic != MAGIC or version != VERSION:
            self.stats.malformed += 1
            return [Dropped(peer, "bad magic or version")]
        session = self._session(session_id, peer)
        if session is None:
            return [self._unknown(request_id, session_id, peer, len(datagram))]
        session.last_seen = now
        return self._read(session, request_id, offset, length, len(datagram))

    def _session(self, session_id: int, peer: Address) -> _Session | None:
        session = self._sessions.get(session_id)
        if session is None or session.peer != peer:
            return None
        return session

    def _read(self, session: _Session, request_id: int, offset: int, length: int, size: int) -> list[Action]:
        if length == 0 or length > self.limits.max_burst or offset % SECTOR or length % SECTOR:
            refusal = StreamRefusal(ErrorCode.BAD_REQUEST, "misaligned or oversized read")
            return [self._refuse_session(session, refusal, request_id, size)]
        if offset + length > session.size:
            refusal = StreamRefusal(ErrorCode.OUT_OF_RANGE, "read past the disk")
            return [self._refuse_session(session, refusal, request_id, size)]
        self.stats.reads += 1
        self.stats.bytes_read += length
        return [SendRead(session.claims.session, request_id, offset, length, session.payload, session.peer)]

    def _write(self, session: _Session, request_id: int, write: Write) -> list[Action]:
        if write.sequence in session.applied:
            self.stats.duplicate_writes += 1
            return [Send(encode(WriteAck(write.sequence), request_id, session.claims.session), session.peer)]
        if write.sequence in session.writing:
            return []  # a retransmission of a write still in progress: its ack follows
        if not write.payload or write.offset % SECTOR or len(write.payload) % SECTOR:
            refusal = StreamRefusal(ErrorCode.BAD_REQUEST, "misaligned write")
            return [self._refuse_session(session, refusal, request_id, _LARGE)]
        if write.offset + len(write.payload) > session.size:
            refusal = StreamRefusal(ErrorCode.OUT_OF_RANGE, "write past the disk")
            return [self._refuse_session(session, refusal, request_id, _LARGE)]
        if not session.writable:
            refusal = StreamRefusal(ErrorCode.READ_ONLY, "this vDisk's writes stay on the device")
            return [self._refuse_session(session, refusal, request_id, _LARGE)]
        session.writing.add(write.sequence)
        claims = session.claims
        return [
            WriteDisk(claims.session, claims.mac, request_id, write.sequence, write.offset, write.payload)
        ]

    def _flush(self, session: _Session, request_id: int, sequence: int) -> list[Action]:
        claims = session.claims
        if not session.writable:
            self.stats.flushes += 1  # nothing is written here, so nothing to make durable
            return [Send(encode(WriteAck(sequence), request_id, claims.session), session.peer)]
        return [SyncDisk(claims.session, claims.mac, request_id, sequence)]

    # -- attaching --------------------------------------------------------------------------------------

    def _attach(
        self, request_id: int, header_session: int, login: Login, peer: Address, size: int, now_ms: int
    ) -> list[Action]:
        try:
            claims = verify_ticket(self.secret, login.ticket, now_ms)
        except TicketError as error:
            return [self._refuse_attach(error, request_id, 0, peer, size, login.mac)]
        if claims.mac != login.mac:
            refusal = StreamRefusal(ErrorCode.TICKET_OTHER_DEVICE, "the ticket names another device")
            return [self._refuse_attach(refusal, request_id, 0, peer, size, login.mac)]
        if header_session != claims.session:
            refusal = StreamRefusal(ErrorCode.BAD_REQUEST, "session id differs from the ticket's")
            return [self._refuse_attach(refusal, request_id, 0, peer, size, login.mac)]
        existing = self._sessions.get(claims.session)
        if existing is not None and existing.peer == peer:
            return [Send(encode(Keepalive(), request_id, claims.session), peer)]  # a retransmitted attach
        opening = self._opening.get(claims.session)
        if opening is not None and opening.peer == peer:
            return []  # a retransmitted attach while its disk opens: the answer follows
        actions: list[Action] = [*self._end_device(claims.mac, "the device attached again")]
        request = OpenDisk(
            claims, peer, request_id, max(512, min(login.max_payload, self.limits.max_payload)), size
        )
        self._opening[claims.session] = request
        actions.append(request)
        return actions

    def still_opening(self, request: OpenDisk) -> bool:
        """False once a later attach of the device (or the server stopping) superseded `request`:
        the glue then closes the disk it opened, quietly."""
        return self._opening.get(request.claims.session) is request

    def opened(self, request: OpenDisk, disk_size: int, writable: bool, now: float) -> list[Action]:
        """The glue opened the disk `request` asked for (check `still_opening` first)."""
        claims = request.claims
        if not self.still_opening(request):
            raise Misuse("opened() for an attach that was superseded: check still_opening()")
        del self._opening[claims.session]
        actions: list[Action] = [*self._end_device(claims.mac, "the device attached again")]
        self._sessions[claims.session] = _Session(
            claims, request.peer, disk_size, request.payload, writable, last_seen=now
        )
        self.stats.sessions = len(self._sessions)
        actions.append(Attached(claims, request.peer, request.payload))
        actions.append(Send(encode(Keepalive(), request.request_id, claims.session), request.peer))
        return actions

    def open_failed(self, request: OpenDisk, refusal: StreamRefusal) -> list[Action]:
        claims = request.claims
        if self._opening.get(claims.session) is request:
            del self._opening[claims.session]
        return [
            self._refuse_attach(
                refusal, request.request_id, claims.session, request.peer, request.limit, claims.mac
            )
        ]

    # -- what the disk did ------------------------------------------------------------------------------

    def written(self, write: WriteDisk, error: int | None) -> list[Action]:
        """The glue wrote (error None) or failed with this errno. A failure other than a full disk
        gets no answer: the target sends the WRITE again."""
        session = self._sessions.get(write.session)
        if session is None:
            return []  # ended meanwhile: the target's next request learns it
        session.writing.discard(write.sequence)
        if error is None:
            session.applied[write.sequence] = None
            if len(session.applied) > REMEMBERED_WRITES:
                session.applied.popitem(last=False)
            self.stats.writes += 1
            self.stats.bytes_written += len(write.data)
            return [Send(encode(WriteAck(write.sequence), write.request_id, write.session), session.peer)]
        if error in _NO_SPACE:
            refusal = StreamRefusal(ErrorCode.NO_SPACE, "no space left for this write on the server")
            return [self._refuse_session(session, refusal, write.request_id, _LARGE)]
        return []

    def synced(self, sync: SyncDisk, error: int | None) -> list[Action]:
        session = self._sessions.get(sync.session)
        if session is None or error is not None:
            return []  # a failed sync is not acknowledged: the target sends the FLUSH again
        self.stats.flushes += 1
        return [Send(encode(WriteAck(sync.sequence), sync.request_id, sync.session), session.peer)]

    # -- ending sessions --------------------------------------------------------------------------------

    def expire(self, now: float) -> list[Action]:
        limit = now - self.limits.idle_timeout
        idle = [sid for sid, session in self._sessions.items() if session.last_seen < limit]
        return [
            action for sid in idle for action in self._end(sid, f"idle for {self.limits.idle_timeout:g} s")
        ]

    def end_sessions(self, session_ids: tuple[int, ...], why: str) -> list[Action]:
        """End these sessions (the farm ended them): their next request is an unknown session."""
        return [action for sid in session_ids for action in self._end(sid, why)]

    def close_all(self, why: str) -> list[Action]:
        self._opening.clear()
        return [action for sid in list(self._sessions) for action in self._end(sid, why)]

    def _end(self, session_id: int, why: str) -> list[Action]:
        session = self._sessions.pop(session_id, None)
        if session is None:
            return []
        self.stats.sessions = len(self._sessions)
        return [CloseDisk(session_id, session.claims.mac, why)]

    def _end_device(self, mac: str, why: str) -> list[Action]:
        ids = [sid for sid, session in self._sessions.items() if session.claims.mac == mac]
        return [action for sid in ids for action in self._end(sid, why)]

    # -- refusals ---------------------------------------------------------------------------------------

    def _unknown(self, request_id: int, session_id: int, peer: Address, size: int) -> Refuse:
        self.stats.refused += 1
        refusal = StreamRefusal(ErrorCode.UNKNOWN_SESSION, "log in again")
        return Refuse(self._fit(refusal, request_id, session_id, size), peer, refusal, session_id)

    def _refuse_session(
        self, session: _Session, refusal: StreamRefusal, request_id: int, size: int
    ) -> Refuse:
        self.stats.refused += 1
        sid = session.claims.session
        datagram = self._fit(refusal, request_id, sid, size)
        return Refuse(datagram, session.peer, refusal, sid, session.claims.mac)

    def _refuse_attach(
        self, refusal: StreamRefusal, request_id: int, session_id: int, peer: Address, size: int, mac: str
    ) -> Refuse:
        self.stats.refused += 1
        datagram = self._fit(refusal, request_id, session_id, size)
        return Refuse(datagram, peer, refusal, session_id, mac, attaching=True)

    def _fit(self, refusal: StreamRefusal, request_id: int, session_id: int, size: int) -> bytes | None:
        datagram = fit_error(refusal.code, refusal.reason, request_id, session_id, size)
        if datagram is None:
            self.stats.unanswered += 1
        return datagram
