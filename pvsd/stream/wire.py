"""The login and stream protocol's messages (docs/protocol.md): bytes <-> frozen dataclasses.

Every datagram starts with the same 18-byte header; the body depends on the type. `decode`
returns a message or raises DecodeError, never anything else. Pure: no sockets, no clock.
"""

from __future__ import annotations

import enum
import ipaddress
import struct
from dataclasses import dataclass, field

from pvsd.net.mac import format_mac
from pvsd.net.reader import DecodeError, ProtocolError, Reader

__all__ = [
    "MAGIC",
    "SERVER_MESSAGES",
    "VERSION",
    "Data",
    "ErrorCode",
    "ErrorReply",
    "Flush",
    "Header",
    "Keepalive",
    "Login",
    "LoginReply",
    "Logout",
    "Message",
    "MessageType",
    "Read",
    "Redirect",
    "ServerEntry",
    "StreamRefusal",
    "Write",
    "WriteAck",
    "data_burst",
    "decode",
    "encode",
    "fit_error",
    "is_server_message",
]

MAGIC = 0x5056  # "PV"
VERSION = 1
_HEADER = struct.Struct("!HBBHIQ")  # magic, version, type, flags, request id, session: 18 bytes
HEADER_SIZE = _HEADER.size


class MessageType(enum.IntEnum):
    LOGIN = 1
    LOGIN_REPLY = 2
    REDIRECT = 3
    ERROR = 4
    READ = 5
    DATA = 6
    WRITE = 7
    WRITE_ACK = 8
    FLUSH = 9
    KEEPALIVE = 10
    LOGOUT = 11
    PEER_HEARTBEAT = 12  # server to server, signed (pvsd/stream/peer_heartbeat.py); never answered


# What only a server sends. A server drops these unanswered (docs/protocol.md, "No reflection").
SERVER_MESSAGES = frozenset(
    (
        MessageType.LOGIN_REPLY,
        MessageType.REDIRECT,
        MessageType.ERROR,
        MessageType.DATA,
        MessageType.WRITE_ACK,
        MessageType.PEER_HEARTBEAT,
    )
)


class ErrorCode(enum.IntEnum):
    """docs/protocol.md, "Error codes": each refusal has its own code and log line."""

    BAD_REQUEST = 1
    UNSUPPORTED_VERSION = 2
    UNKNOWN_MAC = 10
    DEVICE_DISABLED = 11
    NO_VDISK = 12
    NO_SERVER = 13
    PRIVATE_IN_USE = 14
    DATABASE_UNAVAILABLE = 15
    VDISK_REMOVED = 16  # a returning target's vDisk version is no longer in the farm
    MAINTENANCE_IN_USE = 17  # another maintenance device holds the version's write lock
    TICKET_MALFORMED = 20
    TICKET_WRONG_FARM = 21
    TICKET_TAMPERED = 22
    TICKET_EXPIRED = 23
    TICKET_NOT_YET_VALID = 24
    TICKET_OTHER_DEVICE = 25
    UNKNOWN_SESSION = 30
    OUT_OF_RANGE = 31
    READ_ONLY = 32
    NO_SPACE = 33
    SERVER_BUSY = 40


class StreamRefusal(ProtocolError):
    """A request this server refuses: answered with an ERROR carrying `code`, and logged with it.

    Every refusal of the login and I/O services is one of these, whoever finds it: the ticket
    check, the login decision, the placement, the I/O worker opening a disk.
    """

    code: ErrorCode

    def __init__(self, code: ErrorCode, reason: str) -> None:
        super().__init__(code, reason)
        self.code = code

    @property
    def reason(self) -> str:
        return self.message


@dataclass(frozen=True)
class Header:
    type: int
    request_id: int = 0
    session: int = 0
    flags: int = 0


@dataclass(frozen=True)
class Login:
    """A fresh login is padded with zeros so that the reply is never larger than the request."""

    mac: str
    max_payload: int
    ticket: bytes = b""
    padding: int = 0


@dataclass(frozen=True)
class ServerEntry:
    name: str
    address: ipaddress.IPv4Address
    login_port: int


@dataclass(frozen=True)
class LoginReply:
    io_address: ipaddress.IPv4Address
    io_port: int
    disk_size: int
    sector_size: int
    private: bool
    cache_type: int
    max_payload: int
    max_burst: int
    ticket: bytes
    servers: tuple[ServerEntry, ...]


@dataclass(frozen=True)
class Redirect:
    address: ipaddress.IPv4Address
    port: int


@dataclass(frozen=True)
class ErrorReply:
    code: int
    message: str


@dataclass(frozen=True)
class Read:
    offset: int
    length: int


@dataclass(frozen=True)
class Data:
    offset: int
    payload: bytes = field(repr=False)


@dataclass(frozen=True)
class Write:
    sequence: int
    offset: int
    payload: bytes = field(repr=False)


@dataclass(frozen=True)
class WriteAck:
    sequence: int


@dataclass(frozen=True)
class Flush:
    sequence: int


@dataclass(frozen=True)
class Keepalive:
    pass


@dataclass(frozen=True)
class Logout:
    pass


Message = (
    Login | LoginReply | Redirect | ErrorReply | Read | Data | Write | WriteAck | Flush | Keepalive | Logout
)

_TYPES: dict[type[object], MessageType] = {
    Login: MessageType.LOGIN,
    LoginReply: MessageType.LOGIN_REPLY,
    Redirect: MessageType.REDIRECT,
    ErrorReply: MessageType.ERROR,
    Read: MessageType.READ,
    Data: MessageType.DATA,
    Write: MessageType.WRITE,
    WriteAck: MessageType.WRITE_ACK,
    Flush: MessageType.FLUSH,
    Keepalive: MessageType.KEEPALIVE,
    Logout: MessageType.LOGOUT,
}


def _short_bytes(reader: Reader) -> bytes:
    return reader.take(reader.u16())


def _text(reader: Reader) -> str:
    raw = reader.take(reader.u8())
    try:
        return raw.decode()
    except UnicodeDecodeError as error:
        raise DecodeError(f"text is not UTF-8: {error}") from None


def _body(kind: int, reader: Reader) -> Message:
    if kind == MessageType.LOGIN:
        mac = format_mac(reader.take(6))
        max_payload = reader.u16()
        ticket = _short_bytes(reader)
        padding = reader.rest()
        if padding.count(0) != len(padding):
            raise DecodeError("LOGIN padding must be zero bytes")
        return Login(mac, max_payload, ticket, len(padding))
    if kind == MessageType.LOGIN_REPLY:
        io_address = ipaddress.IPv4Address(reader.take(4))
        io_port, sector_size = reader.u16(), reader.u16()
        disk_size = reader.u64()
        private, cache_type = bool(reader.u8()), reader.u8()
        max_payload, max_burst = reader.u16(), reader.u32()
        ticket = _short_bytes(reader)
        servers = []
        for _ in range(reader.u8()):
            name = _text(reader)
            servers.append(ServerEntry(name, ipaddress.IPv4Address(reader.take(4)), reader.u16()))
        return LoginReply(
            io_address,
            io_port,
            disk_size,
            sector_size,
            private,
            cache_type,
            max_payload,
            max_burst,
            ticket,
            tuple(servers),
        )
    if kind == MessageType.REDIRECT:
        return Redirect(ipaddress.IPv4Address(reader.take(4)), reader.u16())
    if kind == MessageType.ERROR:
        code = reader.u16()
        return ErrorReply(code, _text(reader))
    if kind == MessageType.READ:
        return Read(reader.u64(), reader.u32())
    if kind == MessageType.DATA:
        return Data(reader.u64(), reader.rest())
    if kind == MessageType.WRITE:
        sequence = reader.u64()
        return Write(sequence, reader.u64(), reader.rest())
    if kind == MessageType.WRITE_ACK:
        return WriteAck(reader.u64())
    if kind == MessageType.FLUSH:
        return Flush(reader.u64())
    if kind == MessageType.KEEPALIVE:
        return Keepalive()
    if kind == MessageType.LOGOUT:
        return Logout()
    raise DecodeError(f"unknown message type {kind}")


def decode(datagram: bytes) -> tuple[Header, Message]:
    reader = Reader(datagram)
    magic, version, kind, flags, request_id, session = _HEADER.unpack(reader.take(HEADER_SIZE))
    if magic != MAGIC:
        raise DecodeError(f"bad magic {magic:#06x}")
    if version != VERSION:
        raise DecodeError(f"unsupported protocol version {version}")
    message = _body(kind, reader)
    if kind not in (MessageType.DATA, MessageType.WRITE) and not reader.at_end():
        raise DecodeError(f"{reader.remaining} unexpected bytes after a {MessageType(kind).name} message")
    return Header(kind, request_id, session, flags), message


def _pack_text(text: str) -> bytes:
    raw = text.encode()[:255]
    return bytes((len(raw),)) + raw


def _pack_short_bytes(raw: bytes) -> bytes:
    if len(raw) > 0xFFFF:
        raise ValueError("field longer than 65535 bytes")
    return struct.pack("!H", len(raw)) + raw


def encode(message: Message, request_id: int = 0, session: int = 0, flags: int = 0) -> bytes:
    kind = _TYPES[type(message)]
    head = _HEADER.pack(MAGIC, VERSION, kind, flags, request_id, session)
    match message:
        case Login(mac, max_payload, ticket, padding):
            body = (
                bytes.fromhex(mac.replace(":", ""))
                + struct.pack("!H", max_payload)
                + _pack_short_bytes(ticket)
                + bytes(padding)
            )
        case LoginReply():
            if len(message.servers) > 255:
                raise ValueError("at most 255 servers in a login reply")
            body = (
                message.io_address.packed
                + struct.pack(
                    "!HHQBBHI",
                    message.io_port,
                    message.sector_size,
                    message.disk_size,
                    message.private,
                    message.cache_type,
                    message.max_payload,
                    message.max_burst,
                )
                + _pack_short_bytes(message.ticket)
                + bytes((len(message.servers),))
                + b"".join(
                    _pack_text(s.name) + s.address.packed + struct.pack("!H", s.login_port)
                    for s in message.servers
                )
            )
        case Redirect(address, port):
            body = address.packed + struct.pack("!H", port)
        case ErrorReply(code, text):
            body = struct.pack("!H", code) + _pack_text(text)
        case Read(offset, length):
            body = struct.pack("!QI", offset, length)
        case Data(offset, payload):
            body = struct.pack("!Q", offset) + payload
        case Write(sequence, offset, payload):
            body = struct.pack("!QQ", sequence, offset) + payload
        case WriteAck(sequence) | Flush(sequence):
            body = struct.pack("!Q", sequence)
        case _:
            body = b""
    return head + body


def fit_error(code: ErrorCode, message: str, request_id: int, session: int, limit: int) -> bytes | None:
    """An ERROR reply no larger than the request it answers (no amplification), its message cut
    to fit; None when not even an empty message fits: then the request gets no answer."""
    reply = encode(ErrorReply(code, message), request_id, session)
    if len(reply) <= limit:
        return reply
    room = len(message.encode()) - (len(reply) - limit)
    if room < 0:
        return None
    return encode(ErrorReply(code, message.encode()[:room].decode(errors="ignore")), request_id, session)


def is_server_message(datagram: bytes) -> bool:
    """Whether a datagram claims a type that only a server sends (SERVER_MESSAGES).

    Read from the type byte alone, before any decoding: a server never answers one, whatever
    else it holds, so that a spoofed source can never set two servers answering each other.
    """
    return len(datagram) > 3 and datagram[3] in SERVER_MESSAGES


_DATA_HEAD = struct.Struct("!HBBHIQQ")  # the header, then the DATA offset


def data_burst(request_id: int, session: int, offset: int, data: bytes, payload: int) -> list[bytes]:
    """The DATA datagrams answering one READ: `data` from `offset`, `payload` bytes each (the last
    may be shorter), equal-sized so that the glue can send them in one segmented call."""
    pack = _DATA_HEAD.pack
    return [
        pack(MAGIC, VERSION, MessageType.DATA, 0, request_id, session, offset + start)
        + data[start : start + payload]
        for start in range(0, len(data), payload)
    ]
