"""The I/O service of one worker process: targets' reads and writes on one UDP port.

A target attaches by sending its LOGIN (with the ticket the login server gave it) to the
I/O port. The worker checks the ticket with the farm secret alone, opens the vDisk image
and, for a standard vDisk cached on the server, the device's overlay; from then on
requests name the session id and must come from the address that attached.

Images are memory-mapped once per worker and shared by every session reading them, so
twenty targets reading the same blocks cost one page-cache read. Each READ is answered by
a burst of DATA datagrams sent in one segmented (UDP_SEGMENT) system call.
"""

from __future__ import annotations

import collections
import errno
import fcntl
import mmap
import os
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from pvsd.net.reader import DecodeError
from pvsd.net.udp import Address, UdpEndpoint
from pvsd.stream.ticket import CacheType, Claims, TicketError, TicketProblem, verify_ticket
from pvsd.stream.wire import (
    HEADER_SIZE,
    MAGIC,
    VERSION,
    ErrorCode,
    ErrorReply,
    Flush,
    Keepalive,
    Login,
    Logout,
    MessageType,
    Read,
    Write,
    WriteAck,
    decode,
    encode,
)
from pvsd.vdisk.image import image_path
from pvsd.vdisk.overlay import Overlay

__all__ = ["TICKET_ERRORS", "IoServer", "IoSettings", "IoStats", "fit_error"]

TICKET_ERRORS: dict[TicketProblem, ErrorCode] = {
    TicketProblem.MALFORMED: ErrorCode.TICKET_MALFORMED,
    TicketProblem.WRONG_FARM: ErrorCode.TICKET_WRONG_FARM,
    TicketProblem.TAMPERED: ErrorCode.TICKET_TAMPERED,
    TicketProblem.EXPIRED: ErrorCode.TICKET_EXPIRED,
    TicketProblem.NOT_YET_VALID: ErrorCode.TICKET_NOT_YET_VALID,
}

_DATA_HEAD = struct.Struct("!HBBHIQQ")  # the header, then the DATA offset
_READ = struct.Struct("!HBBHIQQI")  # a whole READ: the header, offset and length
_REMEMBERED_WRITES = 4096
# Requests are aligned to 512 bytes whatever the vDisk's sector size: a 4096-byte-sector disk's
# requests are multiples of it anyway.
SECTOR = 512  # (session, sequence) pairs kept to re-ack duplicates


def fit_error(code: ErrorCode, message: str, request_id: int, session: int, limit: int) -> bytes:
    """An ERROR reply no larger than the request it answers (no amplification)."""
    reply = encode(ErrorReply(code, message), request_id, session)
    if len(reply) <= limit:
        return reply
    room = max(0, len(message.encode()) - (len(reply) - limit))
    return encode(ErrorReply(code, message.encode()[:room].decode(errors="ignore")), request_id, session)


@dataclass(frozen=True)
class IoSettings:
    secret: str
    store: Path
    cache_dir: Path
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


class Image:
    """One vDisk version's image, mapped once and shared by the sessions of this worker."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDONLY)
        self.size = os.fstat(self.fd).st_size
        self.map = mmap.mmap(self.fd, self.size, prot=mmap.PROT_READ)
        self.users = 0

    def read(self, offset: int, length: int) -> bytes:
        return self.map[offset : offset + length]

    def close(self) -> None:
        self.map.close()
        os.close(self.fd)


@dataclass
class StreamSession:
    claims: Claims
    peer: Address
    image: Image
    payload: int
    overlay: Overlay | None = None
    writer_fd: int | None = None  # private mode: the image opened for writing, under an exclusive lock
    last_seen: float = 0.0
    applied: collections.OrderedDict[int, None] = field(default_factory=collections.OrderedDict)

    @property
    def size(self) -> int:
        return self.image.size

    def read(self, offset: int, length: int) -> bytes:
        if self.overlay is not None:
            return self.overlay.read(offset, length, self.image.read)
        return self.image.read(offset, length)


class IoServer:
    """Serves stream sessions on one port; `on_closed` hears sessions that end (logout or idle)."""

    def __init__(
        self,
        settings: IoSettings,
        log: structlog.stdlib.BoundLogger,
        clock: Callable[[], float] = time.monotonic,
        on_closed: Callable[[int], None] | None = None,
    ) -> None:
        self.settings = settings
        self.log = log
        self.clock = clock
        self.on_closed = on_closed
        self.stats = IoStats()
        self.sessions: dict[int, StreamSession] = {}
        self.endpoint: UdpEndpoint | None = None
        self._images: dict[Path, Image] = {}

    def bind(self, host: str, port: int) -> None:
        self.endpoint = UdpEndpoint.bind(host, port, self.datagram_received)

    def close(self) -> None:
        for session_id in list(self.sessions):
            self._end(session_id, "server stopping")
        if self.endpoint is not None:
            self.endpoint.close()

    # -- the request path ---------------------------------------------------------------------------

    def datagram_received(self, data: bytes, peer: Address) -> None:
        if len(data) >= HEADER_SIZE and data[3] == MessageType.READ and len(data) == HEADER_SIZE + 12:
            self._fast_read(data, peer)
            return
        try:
            header, message = decode(data)
        except DecodeError as error:
            self.stats.malformed += 1
            self.log.debug("dropped a malformed datagram", peer=f"{peer[0]}:{peer[1]}", reason=str(error))
            return
        try:
            if isinstance(message, Login):
                self._attach(header.request_id, header.session, message, peer, len(data))
                return
            session = self._session(header.session, peer)
            if session is None:
                self._refuse(
                    ErrorCode.UNKNOWN_SESSION,
                    "log in again",
                    header.request_id,
                    header.session,
                    peer,
                    len(data),
                )
                return
            session.last_seen = self.clock()
            if isinstance(message, Read):
                self._read(session, header.request_id, message.offset, message.length, len(data))
            elif isinstance(message, Write):
                self._write(session, header.request_id, message)
            elif isinstance(message, Flush):
                self._flush(session, header.request_id, message.sequence)
            elif isinstance(message, Keepalive):
                self._send(encode(Keepalive(), header.request_id, header.session), peer)
            elif isinstance(message, Logout):
                self._end(header.session, "logged out")
                self._send(encode(Logout(), header.request_id, header.session), peer)
            else:
                self._refuse(
                    ErrorCode.BAD_REQUEST,
                    "not an I/O request",
                    header.request_id,
                    header.session,
                    peer,
                    len(data),
                )
        except OSError as error:
            # A disk error is the target's problem to retry, never the worker's end.
            self.log.error(
                "I/O failed", peer=f"{peer[0]}:{peer[1]}", session=header.session, error=str(error)
            )

    def _fast_read(self, data: bytes, peer: Address) -> None:
        """READ is most of the traffic: parse it with one unpack instead of the general decoder."""
        magic, version, _, _, request_id, session_id, offset, length = _READ.unpack(data)
        if magic != MAGIC or version != VERSION:
            self.stats.malformed += 1
            return
        session = self._session(session_id, peer)
        if session is None:
            self._refuse(ErrorCode.UNKNOWN_SESSION, "log in again", request_id, session_id, peer, len(data))
            return
        session.last_seen = self.clock()
        self._read(session, request_id, offset, length, len(data))

    def _session(self, session_id: int, peer: Address) -> StreamSession | None:
        session = self.sessions.get(session_id)
        if session is None or session.peer != peer:
            return None
        return session

    def _read(self, session: StreamSession, request_id: int, offset: int, length: int, size: int) -> None:
        if length == 0 or length > self.settings.max_burst or offset % SECTOR or length % SECTOR:
            self._refuse_session(
                session, ErrorCode.BAD_REQUEST, "misaligned or oversized read", request_id, size
            )
            return
        if offset + length > session.size:
            self._refuse_session(session, ErrorCode.OUT_OF_RANGE, "read past the disk", request_id, size)
            return
        data = session.read(offset, length)
        payload = session.payload
        pack = _DATA_HEAD.pack
        session_id = session.claims.session
        datagrams = [
            pack(MAGIC, VERSION, MessageType.DATA, 0, request_id, session_id, offset + start)
            + data[start : start + payload]
            for start in range(0, length, payload)
        ]
        assert self.endpoint is not None
        self.endpoint.send_many(datagrams, session.peer)
        self.stats.reads += 1
        self.stats.bytes_read += length

    def _write(self, session: StreamSession, request_id: int, write: Write) -> None:
        ack = encode(WriteAck(write.sequence), request_id, session.claims.session)
        if write.sequence in session.applied:
            self.stats.duplicate_writes += 1
            self._send(ack, session.peer)
            return
        if not write.payload or write.offset % SECTOR or len(write.payload) % SECTOR:
            self._refuse_session(session, ErrorCode.BAD_REQUEST, "misaligned write", request_id, 0)
            return
        if write.offset + len(write.payload) > session.size:
            self._refuse_session(session, ErrorCode.OUT_OF_RANGE, "write past the disk", request_id, 0)
            return
        if session.writer_fd is not None:
            os.pwrite(session.writer_fd, write.payload, write.offset)
        elif session.overlay is not None:
            session.overlay.write(write.offset, write.payload)
        else:
            self._refuse_session(
                session, ErrorCode.READ_ONLY, "this vDisk's writes stay on the device", request_id, 0
            )
            return
        session.applied[write.sequence] = None
        if len(session.applied) > _REMEMBERED_WRITES:
            session.applied.popitem(last=False)
        self.stats.writes += 1
        self.stats.bytes_written += len(write.payload)
        self._send(ack, session.peer)

    def _flush(self, session: StreamSession, request_id: int, sequence: int) -> None:
        if session.writer_fd is not None:
            os.fsync(session.writer_fd)
        elif session.overlay is not None:
            session.overlay.flush()
        self.stats.flushes += 1
        self._send(encode(WriteAck(sequence), request_id, session.claims.session), session.peer)

    # -- attaching and ending sessions --------------------------------------------------------------

    def _attach(self, request_id: int, session_id: int, login: Login, peer: Address, size: int) -> None:
        header_session = session_id
        try:
            claims = verify_ticket(self.settings.secret, login.ticket, int(time.time() * 1000))
        except TicketError as error:
            self.stats.refused += 1
            self.log.warning(
                "ticket refused at attach", peer=f"{peer[0]}:{peer[1]}", mac=login.mac, reason=str(error)
            )
            self._send(fit_error(TICKET_ERRORS[error.problem], str(error), request_id, 0, size), peer)
            return
        log = self.log.bind(peer=f"{peer[0]}:{peer[1]}", mac=login.mac, session=claims.session)
        if claims.mac != login.mac:
            self.stats.refused += 1
            log.warning("ticket names another device", ticket_mac=claims.mac)
            self._send(
                fit_error(
                    ErrorCode.TICKET_OTHER_DEVICE, "the ticket names another device", request_id, 0, size
                ),
                peer,
            )
            return
        if header_session != claims.session:
            self._send(
                fit_error(ErrorCode.BAD_REQUEST, "session id differs from the ticket's", request_id, 0, size),
                peer,
            )
            return
        existing = self.sessions.get(claims.session)
        if existing is not None and existing.peer == peer:
            existing.last_seen = self.clock()
            self._send(encode(Keepalive(), request_id, claims.session), peer)  # a retransmitted attach
            return
        for other_id, other in list(self.sessions.items()):
            if other.claims.mac == claims.mac:
                self._end(other_id, "the device attached again")
        try:
            session = self._open(claims, peer, login.max_payload)
        except _Refused as refused:
            self.stats.refused += 1
            log.warning("attach refused", code=refused.code.name, reason=refused.reason)
            self._send(fit_error(refused.code, refused.reason, request_id, claims.session, size), peer)
            return
        self.sessions[claims.session] = session
        self.stats.sessions = len(self.sessions)
        log.info(
            "session attached",
            vdisk=claims.vdisk,
            version=claims.version,
            mode="private" if claims.private else "standard",
            cache=claims.cache.name.lower(),
            payload=session.payload,
        )
        self._send(encode(Keepalive(), request_id, claims.session), peer)

    def _open(self, claims: Claims, peer: Address, offered_payload: int) -> StreamSession:
        path = image_path(self.settings.store, claims.vdisk, claims.version)
        image = self._images.get(path)
        if image is None:
            try:
                image = Image(path)
            except OSError as error:
                raise _Refused(
                    ErrorCode.NO_SERVER,
                    f"this server cannot open {claims.vdisk} v{claims.version}: {error.strerror}",
                ) from None
            self._images[path] = image
        payload = max(512, min(offered_payload, self.settings.max_payload))
        session = StreamSession(claims, peer, image, payload, last_seen=self.clock())
        try:
            if claims.private:
                session.writer_fd = _lock_for_writing(path)
            elif claims.cache is CacheType.SERVER:
                session.overlay = Overlay.open(
                    self.settings.cache_dir, claims.mac, image.size, SECTOR, claims.session
                )
        except _Refused:
            self._release_image(image)
            raise
        image.users += 1
        return session

    def _end(self, session_id: int, why: str) -> None:
        session = self.sessions.pop(session_id, None)
        if session is None:
            return
        self.stats.sessions = len(self.sessions)
        if session.overlay is not None:
            session.overlay.close()
        if session.writer_fd is not None:
            os.fsync(session.writer_fd)
            os.close(session.writer_fd)  # closing the descriptor releases the single-writer lock
        session.image.users -= 1
        self._release_image(session.image)
        self.log.info("session ended", session=session_id, mac=session.claims.mac, why=why)
        if self.on_closed is not None:
            self.on_closed(session_id)

    def _release_image(self, image: Image) -> None:
        if image.users <= 0 and self._images.get(image.path) is image:
            del self._images[image.path]
            image.close()

    def expire_idle(self) -> None:
        limit = self.clock() - self.settings.idle_timeout
        for session_id, session in list(self.sessions.items()):
            if session.last_seen < limit:
                self._end(session_id, f"idle for {self.settings.idle_timeout:g} s")

    # -- replies ----------------------------------------------------------------------------------

    def _send(self, data: bytes, peer: Address) -> None:
        assert self.endpoint is not None
        self.endpoint.send(data, peer)

    def _refuse(
        self, code: ErrorCode, reason: str, request_id: int, session: int, peer: Address, size: int
    ) -> None:
        self.stats.refused += 1
        # An unknown session is routine (a target whose server restarted, or stray datagrams):
        # debug, so a flood cannot fill the log; the target logs in again and says so itself.
        level = self.log.debug if code is ErrorCode.UNKNOWN_SESSION else self.log.info
        level("request refused", peer=f"{peer[0]}:{peer[1]}", code=code.name, reason=reason)
        self._send(fit_error(code, reason, request_id, session, size), peer)

    def _refuse_session(
        self, session: StreamSession, code: ErrorCode, reason: str, request_id: int, size: int
    ) -> None:
        self.stats.refused += 1
        self.log.info("request refused", session=session.claims.session, code=code.name, reason=reason)
        limit = size or 1 << 16  # a WRITE is large: its error always fits
        self._send(fit_error(code, reason, request_id, session.claims.session, limit), session.peer)


class _Refused(Exception):
    def __init__(self, code: ErrorCode, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def _lock_for_writing(path: Path) -> int:
    """The image opened for writing under an exclusive lock: one writer on this host at a time."""
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        os.close(fd)
        if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise _Refused(ErrorCode.PRIVATE_IN_USE, "another session writes this private vDisk") from None
        raise
    return fd
