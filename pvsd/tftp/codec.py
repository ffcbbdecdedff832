"""TFTP packets (RFC 1350) with option extension (RFC 2347): bytes <-> frozen dataclasses.

`decode` returns a packet or raises DecodeError; it never raises anything else. Option
names are case-insensitive (RFC 2347) and come out lower-cased, in the order sent, duplicates
included; RFC 2347 is silent on duplicates, and the first one is the one that counts.
Filenames are bytes on the wire; they decode as UTF-8 with surrogateescape, so that any
byte sequence survives the round trip and the path checks see exactly what was sent.

What a server tells a client is bounded too: a refusal is one of a closed set of reasons
(`Refusal`), and `bounded_error` cuts its text so that the reply is no larger than the
datagram that caused it.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field

from pvsd.net.reader import DecodeError, ProtocolError, Reader

__all__ = [
    "ERROR_HEADER_SIZE",
    "MAX_BLKSIZE",
    "MIN_BLKSIZE",
    "NAME_SHOWN",
    "Ack",
    "Data",
    "Error",
    "ErrorCode",
    "Opcode",
    "OptionAck",
    "Packet",
    "ReadRequest",
    "Refusal",
    "TftpError",
    "WriteRequest",
    "bounded_error",
    "data_header",
    "decode",
    "encode",
    "shown_name",
]

MIN_BLKSIZE = 8  # RFC 2348
MAX_BLKSIZE = 65464  # RFC 2348
ERROR_HEADER_SIZE = 5  # opcode, error code, the message's NUL: an ERROR with an empty message
NAME_SHOWN = 128  # characters of a client's file name that logs show

_HEADER = struct.Struct("!HH")


class Opcode(enum.IntEnum):
    """RFC 1350 section 5; OACK from RFC 2347."""

    RRQ = 1
    WRQ = 2
    DATA = 3
    ACK = 4
    ERROR = 5
    OACK = 6


class ErrorCode(enum.IntEnum):
    """RFC 1350 appendix; OPTION_REFUSED from RFC 2347."""

    NOT_DEFINED = 0
    FILE_NOT_FOUND = 1
    ACCESS_VIOLATION = 2
    DISK_FULL = 3  # also "allocation exceeded": pvsd sends it when at max_transfers
    ILLEGAL_OPERATION = 4
    UNKNOWN_TID = 5
    FILE_EXISTS = 6
    NO_SUCH_USER = 7
    OPTION_REFUSED = 8


class Refusal(enum.StrEnum):
    """Why a request is refused: a closed set, each with its RFC 1350 error code.

    Counters are keyed by it, so no flood of distinct names can grow them, and its text is all
    a client is told, so no reply names a server path or echoes what an OS error said.
    """

    WRITE = "write requests are not allowed"
    EMPTY_NAME = "empty file name"
    NUL = "NUL byte in file name"
    BACKSLASH = "backslash in file name"
    NO_NAME = "no file name after the leading slash"
    PARENT = "parent directory (..) in file name"
    NAME_TOO_LONG = "file name too long"
    UNRESOLVABLE = "file name cannot be resolved"  # a symlink loop, a folder we may not search
    SYMLINK_OUT = "symlink points outside the TFTP root"
    NO_SUCH_FILE = "no such file"
    NOT_REGULAR = "not a regular file (directory, device or fifo)"
    PERMISSION = "permission denied"
    UNREADABLE = "file cannot be read"
    NETASCII_TOO_LARGE = "file too large for netascii mode; use octet"
    MODE = "transfer mode not supported"
    BUSY = "server busy"
    CLIENT_BUSY = "too many transfers from this client"
    SERVER_ERROR = "server error"

    @property
    def code(self) -> ErrorCode:
        return _REFUSAL_CODES.get(self, ErrorCode.ACCESS_VIOLATION)


_REFUSAL_CODES = {
    Refusal.NO_SUCH_FILE: ErrorCode.FILE_NOT_FOUND,
    Refusal.NETASCII_TOO_LARGE: ErrorCode.ILLEGAL_OPERATION,
    Refusal.MODE: ErrorCode.ILLEGAL_OPERATION,
    Refusal.BUSY: ErrorCode.DISK_FULL,
    Refusal.CLIENT_BUSY: ErrorCode.DISK_FULL,
    Refusal.SERVER_ERROR: ErrorCode.NOT_DEFINED,
}


class TftpError(ProtocolError):
    """A request this server refuses: answered with an ERROR packet carrying the refusal's code and
    text. `detail` is for the log only (an OS error's strerror): never a path, never the name."""

    code: ErrorCode

    def __init__(self, refusal: Refusal, detail: str = "") -> None:
        super().__init__(refusal.code, refusal.value)
        self.code = refusal.code
        self.refusal = refusal
        self.detail = detail


Options = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class ReadRequest:
    filename: str
    mode: str
    options: Options = ()

    def option(self, name: str) -> str | None:
        """The value of the first option called `name` (the first of duplicates wins)."""
        return next((value for key, value in self.options if key == name), None)


@dataclass(frozen=True)
class WriteRequest:
    filename: str
    mode: str
    options: Options = ()


@dataclass(frozen=True)
class Data:
    block: int
    data: bytes = field(repr=False)


@dataclass(frozen=True)
class Ack:
    block: int


@dataclass(frozen=True)
class Error:
    code: int
    message: str


@dataclass(frozen=True)
class OptionAck:
    options: Options


Packet = ReadRequest | WriteRequest | Data | Ack | Error | OptionAck


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _wire(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _options(reader: Reader) -> Options:
    pairs = []
    while not reader.at_end():
        name = _text(reader.cstring()).lower()
        if reader.at_end():
            raise DecodeError(f"option {name!r} has no value")
        pairs.append((name, _text(reader.cstring())))
    return tuple(pairs)


def decode(datagram: bytes) -> Packet:
    # ACKs are nearly every packet a server receives: decode them without the reader.
    if len(datagram) >= 4 and datagram[0] == 0 and datagram[1] == Opcode.ACK:
        return Ack((datagram[2] << 8) | datagram[3])
    reader = Reader(datagram)
    opcode = reader.u16()
    if opcode in (Opcode.RRQ, Opcode.WRQ):
        filename = _text(reader.cstring())
        mode = _text(reader.cstring()).lower()
        options = _options(reader)
        if opcode == Opcode.RRQ:
            return ReadRequest(filename, mode, options)
        return WriteRequest(filename, mode, options)
    if opcode == Opcode.DATA:
        return Data(reader.u16(), reader.rest())
    if opcode == Opcode.ACK:
        block = reader.u16()
        # Some clients pad ACKs; what follows the block number carries nothing.
        return Ack(block)
    if opcode == Opcode.ERROR:
        code = reader.u16()
        # RFC 1350 wants a NUL-terminated message; tolerate a missing NUL from sloppy clients.
        message = reader.rest().split(b"\0", 1)[0]
        return Error(code, message.decode("utf-8", "replace"))
    if opcode == Opcode.OACK:
        return OptionAck(_options(reader))
    raise DecodeError(f"unknown TFTP opcode {opcode}")


def _encode_options(options: Options) -> bytes:
    return b"".join(_wire(name) + b"\0" + _wire(value) + b"\0" for name, value in options)


def _request(opcode: Opcode, filename: str, mode: str, options: Options) -> bytes:
    return (
        struct.pack("!H", opcode) + _wire(filename) + b"\0" + _wire(mode) + b"\0" + _encode_options(options)
    )


def encode(packet: Packet) -> bytes:
    match packet:
        case Data(block, data):
            return _HEADER.pack(Opcode.DATA, block & 0xFFFF) + data
        case Ack(block):
            return _HEADER.pack(Opcode.ACK, block & 0xFFFF)
        case Error(code, message):
            return _HEADER.pack(Opcode.ERROR, code) + message.encode("utf-8", "replace") + b"\0"
        case OptionAck(options):
            return struct.pack("!H", Opcode.OACK) + _encode_options(options)
        case ReadRequest(filename, mode, options):
            return _request(Opcode.RRQ, filename, mode, options)
        case WriteRequest(filename, mode, options):
            return _request(Opcode.WRQ, filename, mode, options)
    raise TypeError(f"not a TFTP packet: {packet!r}")


def bounded_error(code: int, message: str, limit: int) -> bytes | None:
    """An ERROR datagram of at most `limit` bytes: the message is cut to fit, so that the reply to
    a datagram is never larger than it (no amplification). None if not even an empty ERROR fits."""
    room = limit - ERROR_HEADER_SIZE
    if room < 0:
        return None
    return _HEADER.pack(Opcode.ERROR, code) + message.encode("utf-8", "replace")[:room] + b"\0"


def shown_name(name: str) -> str:
    """A client's file name as logs show it: at most NAME_SHOWN characters and "..." past that,
    with bytes that are not UTF-8 and characters that are not printable escaped, so that a
    name can neither grow a log line without bound nor forge one (newlines, terminal escapes)."""
    cut = name[:NAME_SHOWN].encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    shown = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in cut)
    return shown + "..." if len(name) > NAME_SHOWN else shown


def data_header(block: int) -> bytes:
    """The 4 bytes in front of a DATA payload, for the hot path that builds windows directly."""
    return _HEADER.pack(Opcode.DATA, block & 0xFFFF)
