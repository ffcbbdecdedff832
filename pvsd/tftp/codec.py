"""TFTP packets (RFC 1350) with option extension (RFC 2347): bytes <-> frozen dataclasses.

`decode` returns a packet or raises DecodeError; it never raises anything else. Option
names are case-insensitive (RFC 2347) and come out lower-cased, in the order sent.
Filenames are bytes on the wire; they decode as UTF-8 with surrogateescape, so that any
byte sequence survives the round trip and the path checks see exactly what was sent.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field

from pvsd.net.reader import DecodeError, ProtocolError, Reader

__all__ = [
    "MAX_BLKSIZE",
    "MIN_BLKSIZE",
    "Ack",
    "Data",
    "Error",
    "ErrorCode",
    "Opcode",
    "OptionAck",
    "Packet",
    "ReadRequest",
    "TftpError",
    "WriteRequest",
    "data_header",
    "decode",
    "encode",
]

MIN_BLKSIZE = 8  # RFC 2348
MAX_BLKSIZE = 65464  # RFC 2348

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


class TftpError(ProtocolError):
    """A request this server refuses: answered with an ERROR packet carrying `code` and the reason."""

    code: ErrorCode

    def __init__(self, code: ErrorCode, reason: str) -> None:
        super().__init__(code, reason)
        self.code = code


Options = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class ReadRequest:
    filename: str
    mode: str
    options: Options = ()

    def option(self, name: str) -> str | None:
        return dict(self.options).get(name)


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


def data_header(block: int) -> bytes:
    """The 4 bytes in front of a DATA payload, for the hot path that builds windows directly."""
    return _HEADER.pack(Opcode.DATA, block & 0xFFFF)
