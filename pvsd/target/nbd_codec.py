"""The NBD protocol (fixed newstyle handshake, simple replies): bytes <-> frozen dataclasses, no I/O.

References are to the NBD project's doc/proto.md ("proto.md"), sections named in quotes.

Three parts, all pure:

* wire values (IntEnums and IntFlags) and the fixed-size formats;
* encoders and decoders for the handshake and the transmission headers. Decoders return a
  value or raise DecodeError and nothing else; any other exception out of them is a bug;
* `Negotiation`, the option-haggling state machine: options in, reply bytes and the next
  phase out. `check_request` raises the NbdError (if any) a transmission request gets before
  it reaches the backend.

Structured replies are refused (NBD_REP_ERR_UNSUP), which proto.md allows: every client
must fall back to simple replies, and QEMU, libnbd and the Linux kernel all do. Simple
replies are enough for READ/WRITE/FLUSH/TRIM/WRITE_ZEROES; without them there is no block
status, so clients treat the whole export as allocated data.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from pvsd.net.reader import DecodeError, ProtocolError, Reader

__all__ = [
    "CLIENT_FLAGS_SIZE",
    "DEFAULT_MAX_BLOCK",
    "DEFAULT_PREFERRED_BLOCK",
    "IHAVEOPT",
    "MAX_OPTION_LENGTH",
    "MAX_STRING",
    "NBDMAGIC",
    "OPTION_HEADER_SIZE",
    "OPTION_REPLY_MAGIC",
    "REQUEST_HEADER_SIZE",
    "REQUEST_MAGIC",
    "SIMPLE_REPLY_HEADER_SIZE",
    "SIMPLE_REPLY_MAGIC",
    "ClientFlag",
    "Command",
    "CommandFlag",
    "Errno",
    "Export",
    "HandshakeFlag",
    "InfoRequest",
    "InfoType",
    "NbdError",
    "Negotiation",
    "OptionOutcome",
    "OptionReply",
    "OptionType",
    "Phase",
    "Request",
    "SimpleReply",
    "TransmissionFlag",
    "check_request",
    "decode_client_flags",
    "decode_info_request",
    "decode_option_header",
    "decode_option_reply",
    "decode_request",
    "decode_simple_reply",
    "encode_block_size_info",
    "encode_client_flags",
    "encode_description_info",
    "encode_export_info",
    "encode_export_name_reply",
    "encode_info_request",
    "encode_name_info",
    "encode_option",
    "encode_option_reply",
    "encode_request",
    "encode_server_entry",
    "encode_simple_reply",
    "greeting",
]

NBDMAGIC = 0x4E42444D41474943  # "NBDMAGIC", proto.md "Newstyle negotiation"
IHAVEOPT = 0x49484156454F5054  # "IHAVEOPT", proto.md "Newstyle negotiation"
OPTION_REPLY_MAGIC = 0x0003E889045565A9  # proto.md "Fixed newstyle negotiation"
REQUEST_MAGIC = 0x25609513  # proto.md "Request message"
SIMPLE_REPLY_MAGIC = 0x67446698  # proto.md "Simple reply message"

# proto.md "Conventions": strings MUST be no longer than 4096 bytes.
MAX_STRING = 4096
# The longest option a real client sends is NBD_OPT_GO/INFO: a name of at most MAX_STRING
# bytes plus a handful of info requests. Anything much longer is an attack on our memory,
# which proto.md lets a server answer with a hard disconnect.
MAX_OPTION_LENGTH = 2 * MAX_STRING + 64

# proto.md "Block size constraints": the preferred size clients assume by default, and the
# largest READ/WRITE a portable client sends (and a server must not treat as an attack).
DEFAULT_PREFERRED_BLOCK = 4096
DEFAULT_MAX_BLOCK = 32 << 20

_GREETING = struct.Struct("!QQH")
_CLIENT_FLAGS = struct.Struct("!I")
_OPTION_HEADER = struct.Struct("!QII")
_OPTION_REPLY = struct.Struct("!QIII")
_EXPORT_NAME_REPLY = struct.Struct("!QH")
_INFO_EXPORT = struct.Struct("!HQH")
_INFO_BLOCK_SIZE = struct.Struct("!HIII")
_REQUEST = struct.Struct("!IHHQQI")
_SIMPLE_REPLY = struct.Struct("!IIQ")

CLIENT_FLAGS_SIZE = _CLIENT_FLAGS.size
OPTION_HEADER_SIZE = _OPTION_HEADER.size
REQUEST_HEADER_SIZE = _REQUEST.size
SIMPLE_REPLY_HEADER_SIZE = _SIMPLE_REPLY.size

# proto.md "Newstyle negotiation": the reply to NBD_OPT_EXPORT_NAME ends in 124 reserved
# zero bytes unless both sides agreed on NO_ZEROES.
_EXPORT_NAME_PADDING = bytes(124)


class HandshakeFlag(enum.IntFlag):
    """proto.md "Handshake flags" (16 bits, sent by the server after IHAVEOPT)."""

    FIXED_NEWSTYLE = 1 << 0
    NO_ZEROES = 1 << 1


class ClientFlag(enum.IntFlag):
    """proto.md "Client flags" (32 bits): the server MUST drop a client that sets any other bit."""

    FIXED_NEWSTYLE = 1 << 0
    NO_ZEROES = 1 << 1


class TransmissionFlag(enum.IntFlag):
    """proto.md "Transmission flags" (16 bits, describing one export)."""

    HAS_FLAGS = 1 << 0
    READ_ONLY = 1 << 1
    SEND_FLUSH = 1 << 2
    SEND_FUA = 1 << 3
    ROTATIONAL = 1 << 4
    SEND_TRIM = 1 << 5
    SEND_WRITE_ZEROES = 1 << 6
    SEND_DF = 1 << 7
    CAN_MULTI_CONN = 1 << 8
    SEND_RESIZE = 1 << 9
    SEND_CACHE = 1 << 10
    SEND_FAST_ZERO = 1 << 11


class OptionType(enum.IntEnum):
    """proto.md "Option types"."""

    EXPORT_NAME = 1
    ABORT = 2
    LIST = 3
    PEEK_EXPORT = 4  # withdrawn
    STARTTLS = 5
    INFO = 6
    GO = 7
    STRUCTURED_REPLY = 8
    LIST_META_CONTEXT = 9
    SET_META_CONTEXT = 10
    EXTENDED_HEADERS = 11


class OptionReply(enum.IntEnum):
    """proto.md "Option reply types"; the errors have bit 31 set."""

    ACK = 1
    SERVER = 2
    INFO = 3
    META_CONTEXT = 4
    ERR_UNSUP = (1 << 31) + 1
    ERR_POLICY = (1 << 31) + 2
    ERR_INVALID = (1 << 31) + 3
    ERR_PLATFORM = (1 << 31) + 4
    ERR_TLS_REQD = (1 << 31) + 5
    ERR_UNKNOWN = (1 << 31) + 6
    ERR_SHUTDOWN = (1 << 31) + 7
    ERR_BLOCK_SIZE_REQD = (1 << 31) + 8
    ERR_TOO_BIG = (1 << 31) + 9


class InfoType(enum.IntEnum):
    """proto.md "Option reply types", under NBD_REP_INFO."""

    EXPORT = 0
    NAME = 1
    DESCRIPTION = 2
    BLOCK_SIZE = 3


class Command(enum.IntEnum):
    """proto.md "Request types"."""

    READ = 0
    WRITE = 1
    DISC = 2
    FLUSH = 3
    TRIM = 4
    CACHE = 5
    WRITE_ZEROES = 6
    BLOCK_STATUS = 7
    RESIZE = 8


class CommandFlag(enum.IntFlag):
    """proto.md "Command flags"."""

    FUA = 1 << 0
    NO_HOLE = 1 << 1
    DF = 1 << 2
    REQ_ONE = 1 << 3
    FAST_ZERO = 1 << 4


class Errno(enum.IntEnum):
    """proto.md "Error values": the only values allowed in a reply's error field."""

    OK = 0
    EPERM = 1
    EIO = 5
    ENOMEM = 12
    EINVAL = 22
    ENOSPC = 28
    EOVERFLOW = 75
    ENOTSUP = 95
    ESHUTDOWN = 108


class NbdError(ProtocolError):
    """A request refused or failed: answered with `code` in its reply (never Errno.OK)."""

    code: Errno

    def __init__(self, code: Errno, reason: str) -> None:
        super().__init__(code, reason)
        self.code = code


class Phase(enum.Enum):
    """Where a connection goes after an option."""

    OPTIONS = "options"  # keep haggling
    TRANSMISSION = "transmission"  # the export is chosen: requests follow
    CLOSE = "close"  # send the reply (if any), then drop the connection


@dataclass(frozen=True)
class Export:
    """What one export looks like on the wire."""

    name: str
    size: int
    flags: TransmissionFlag
    min_block: int = 512
    preferred_block: int = DEFAULT_PREFERRED_BLOCK
    max_block: int = DEFAULT_MAX_BLOCK
    description: str = ""

    @property
    def read_only(self) -> bool:
        return bool(self.flags & TransmissionFlag.READ_ONLY)


@dataclass(frozen=True)
class InfoRequest:
    """The data of NBD_OPT_INFO and NBD_OPT_GO (proto.md "Option types")."""

    name: str
    requests: tuple[int, ...] = ()


@dataclass(frozen=True)
class Request:
    """One transmission request header (proto.md "Request message"); a WRITE's payload follows it."""

    flags: int
    type: int
    cookie: int
    offset: int
    length: int


@dataclass(frozen=True)
class SimpleReply:
    """A simple reply header (proto.md "Simple reply message"); a successful READ's data follows it."""

    error: int
    cookie: int


def _text(raw: bytes) -> str:
    # proto.md wants UTF-8; surrogateescape keeps odd bytes comparable instead of failing.
    return raw.decode("utf-8", "surrogateescape")


def _wire(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


# --- handshake ---------------------------------------------------------------------------


def greeting(flags: HandshakeFlag = HandshakeFlag.FIXED_NEWSTYLE | HandshakeFlag.NO_ZEROES) -> bytes:
    """The first 18 bytes the server sends: NBDMAGIC, IHAVEOPT and the handshake flags."""
    return _GREETING.pack(NBDMAGIC, IHAVEOPT, flags)


def encode_client_flags(flags: int) -> bytes:
    return _CLIENT_FLAGS.pack(flags)


def decode_client_flags(
    data: bytes, offered: HandshakeFlag = HandshakeFlag.FIXED_NEWSTYLE | HandshakeFlag.NO_ZEROES
) -> ClientFlag:
    """The client's 32 flag bits; an unknown bit, or one the server did not offer, is a DecodeError."""
    reader = Reader(data)
    value = reader.u32()
    if not reader.at_end():
        raise DecodeError("client flags are 4 bytes")
    if value & ~int(offered):
        raise DecodeError(f"client flags {value:#x} not offered by the server ({int(offered):#x})")
    return ClientFlag(value)


def encode_option(option: int, data: bytes = b"") -> bytes:
    """An option as a client sends it (for tests and debugging clients)."""
    return _OPTION_HEADER.pack(IHAVEOPT, option, len(data)) + data


def decode_option_header(data: bytes) -> tuple[int, int]:
    """(option, data length) from the 16-byte option header.

    A bad magic is a DecodeError, and so is a length over MAX_OPTION_LENGTH: no client needs
    that much, and reading it would let a client make us buffer up to 4 GiB.
    """
    reader = Reader(data)
    magic = reader.u64()
    option = reader.u32()
    length = reader.u32()
    if not reader.at_end():
        raise DecodeError("an option header is 16 bytes")
    if magic != IHAVEOPT:
        raise DecodeError(f"bad option magic {magic:#x}")
    if length > MAX_OPTION_LENGTH:
        raise DecodeError(f"option {option} claims {length} bytes of data (at most {MAX_OPTION_LENGTH})")
    return option, length


def encode_info_request(request: InfoRequest) -> bytes:
    name = _wire(request.name)
    return (
        struct.pack("!I", len(name))
        + name
        + struct.pack(f"!H{len(request.requests)}H", len(request.requests), *request.requests)
    )


def decode_info_request(data: bytes) -> InfoRequest:
    """The data of NBD_OPT_INFO / NBD_OPT_GO: name length, name, count, info types; exactly."""
    reader = Reader(data)
    name_length = reader.u32()
    if name_length > MAX_STRING:
        raise DecodeError(f"export name of {name_length} bytes (at most {MAX_STRING})")
    name = _text(reader.take(name_length))
    count = reader.u16()
    requests = tuple(reader.u16() for _ in range(count))
    if not reader.at_end():
        raise DecodeError(f"{reader.remaining} bytes after the info requests")
    return InfoRequest(name, requests)


def encode_option_reply(option: int, reply: int, data: bytes = b"") -> bytes:
    return _OPTION_REPLY.pack(OPTION_REPLY_MAGIC, option, reply, len(data)) + data


def decode_option_reply(data: bytes) -> tuple[int, int, bytes]:
    """(option, reply type, data) from one complete option reply (for clients and tests)."""
    reader = Reader(data)
    magic = reader.u64()
    option = reader.u32()
    reply = reader.u32()
    length = reader.u32()
    if magic != OPTION_REPLY_MAGIC:
        raise DecodeError(f"bad option reply magic {magic:#x}")
    payload = reader.take(length)
    if not reader.at_end():
        raise DecodeError(f"{reader.remaining} bytes after the option reply")
    return option, reply, payload


def encode_server_entry(name: str, description: str = "") -> bytes:
    """The data of NBD_REP_SERVER: name length, name, then free text shown to humans."""
    raw = _wire(name)
    return struct.pack("!I", len(raw)) + raw + _wire(description)


def encode_export_info(size: int, flags: int) -> bytes:
    return _INFO_EXPORT.pack(InfoType.EXPORT, size, flags)


def encode_name_info(name: str) -> bytes:
    return struct.pack("!H", InfoType.NAME) + _wire(name)


def encode_description_info(description: str) -> bytes:
    return struct.pack("!H", InfoType.DESCRIPTION) + _wire(description)


def encode_block_size_info(minimum: int, preferred: int, maximum: int) -> bytes:
    return _INFO_BLOCK_SIZE.pack(InfoType.BLOCK_SIZE, minimum, preferred, maximum)


def encode_export_name_reply(size: int, flags: int, no_zeroes: bool) -> bytes:
    """The answer to NBD_OPT_EXPORT_NAME: size, transmission flags, and the padding unless NO_ZEROES."""
    reply = _EXPORT_NAME_REPLY.pack(size, flags)
    return reply if no_zeroes else reply + _EXPORT_NAME_PADDING


@dataclass(frozen=True)
class OptionOutcome:
    """What to send for one option and where the connection goes next."""

    reply: bytes
    phase: Phase


class Negotiation:
    """Option haggling for a server with one export (proto.md "Fixed newstyle negotiation").

    Feed it the client flags once, then every option; send each outcome's reply, then follow
    its phase. The default export name "" selects the export too, because QEMU's
    `nbd://host:port` (no path) asks for it.
    """

    def __init__(self, export: Export) -> None:
        self.export = export
        self.no_zeroes = False

    def client_flags(self, flags: ClientFlag) -> None:
        self.no_zeroes = bool(flags & ClientFlag.NO_ZEROES)

    def _matches(self, name: str) -> bool:
        return name in ("", self.export.name)

    def _info_replies(self, option: int, request: InfoRequest) -> bytes:
        export = self.export
        replies = [
            encode_option_reply(option, OptionReply.INFO, encode_export_info(export.size, export.flags))
        ]
        # Sent even when not asked for: clients ignore what they did not request, and a
        # client that does honour it (QEMU, libnbd) then never sends a misaligned request.
        replies.append(
            encode_option_reply(
                option,
                OptionReply.INFO,
                encode_block_size_info(export.min_block, export.preferred_block, export.max_block),
            )
        )
        if InfoType.NAME in request.requests or request.name != export.name:
            replies.append(encode_option_reply(option, OptionReply.INFO, encode_name_info(export.name)))
        if InfoType.DESCRIPTION in request.requests and export.description:
            replies.append(
                encode_option_reply(option, OptionReply.INFO, encode_description_info(export.description))
            )
        replies.append(encode_option_reply(option, OptionReply.ACK))
        return b"".join(replies)

    def option(self, option: int, data: bytes) -> OptionOutcome:
        """The reply to one option. Never raises: bad option data gets NBD_REP_ERR_INVALID."""
        export = self.export
        if option == OptionType.EXPORT_NAME:
            # This option cannot fail politely: a wrong name ends the session (proto.md).
            if not self._matches(_text(data)):
                return OptionOutcome(b"", Phase.CLOSE)
            reply = encode_export_name_reply(export.size, export.flags, self.no_zeroes)
            return OptionOutcome(reply, Phase.TRANSMISSION)
        if option == OptionType.ABORT:
            return OptionOutcome(encode_option_reply(option, OptionReply.ACK), Phase.CLOSE)
        if option == OptionType.LIST:
            if data:
                return self._error(option, OptionReply.ERR_INVALID, "NBD_OPT_LIST takes no data")
            entry = encode_option_reply(
                option, OptionReply.SERVER, encode_server_entry(export.name, export.description)
            )
            return OptionOutcome(entry + encode_option_reply(option, OptionReply.ACK), Phase.OPTIONS)
        if option in (OptionType.INFO, OptionType.GO):
            try:
                request = decode_info_request(data)
            except DecodeError as error:
                return self._error(option, OptionReply.ERR_INVALID, str(error))
            if not self._matches(request.name):
                return self._error(option, OptionReply.ERR_UNKNOWN, f"no export named {request.name!r}")
            phase = Phase.TRANSMISSION if option == OptionType.GO else Phase.OPTIONS
            return OptionOutcome(self._info_replies(option, request), phase)
        # STRUCTURED_REPLY, STARTTLS, the meta contexts and anything newer: clients fall
        # back to what this server does support.
        return self._error(option, OptionReply.ERR_UNSUP, f"option {option} is not supported")

    @staticmethod
    def _error(option: int, reply: OptionReply, message: str) -> OptionOutcome:
        text = _wire(message)[:MAX_STRING]
        return OptionOutcome(encode_option_reply(option, reply, text), Phase.OPTIONS)


# --- transmission ------------------------------------------------------------------------


def encode_request(request: Request) -> bytes:
    return _REQUEST.pack(
        REQUEST_MAGIC, request.flags, request.type, request.cookie, request.offset, request.length
    )


def decode_request(data: bytes) -> Request:
    """A 28-byte request header. Unknown types and flags decode fine: `check_request` rejects them."""
    reader = Reader(data)
    magic = reader.u32()
    flags = reader.u16()
    kind = reader.u16()
    cookie = reader.u64()
    offset = reader.u64()
    length = reader.u32()
    if not reader.at_end():
        raise DecodeError("a request header is 28 bytes")
    if magic != REQUEST_MAGIC:
        raise DecodeError(f"bad request magic {magic:#x}")
    return Request(flags, kind, cookie, offset, length)


def encode_simple_reply(cookie: int, error: int = 0) -> bytes:
    """The 16-byte simple reply header; a successful READ's data goes right after it."""
    return _SIMPLE_REPLY.pack(SIMPLE_REPLY_MAGIC, error, cookie)


def decode_simple_reply(data: bytes) -> SimpleReply:
    reader = Reader(data)
    magic = reader.u32()
    error = reader.u32()
    cookie = reader.u64()
    if not reader.at_end():
        raise DecodeError("a simple reply header is 16 bytes")
    if magic != SIMPLE_REPLY_MAGIC:
        raise DecodeError(f"bad simple reply magic {magic:#x}")
    return SimpleReply(error, cookie)


_WRITES = (Command.WRITE, Command.TRIM, Command.WRITE_ZEROES)
_RANGED = (Command.READ, Command.WRITE, Command.TRIM, Command.WRITE_ZEROES)


def check_request(request: Request, export: Export) -> None:
    """Raise NbdError with the error a request gets before it reaches the backend; return to run it.

    proto.md "Error values" and "Block size constraints": EINVAL for unknown commands and
    flags, misalignment, and lengths over the maximum; EPERM for writes to a read-only
    export; ENOSPC for writes that run past the end, EINVAL for other out-of-range requests.
    """
    try:
        command = Command(request.type)
    except ValueError:
        raise NbdError(Errno.EINVAL, f"unknown command {request.type}") from None
    if command not in (*_RANGED, Command.FLUSH):
        # DISC is handled before this; CACHE, BLOCK_STATUS, RESIZE are not offered
        raise NbdError(Errno.EINVAL, f"{command.name} is not offered")
    # FUA is accepted on every command: proto.md notes clients set it on reads too, and
    # ignoring it where nothing is written is allowed.
    allowed = CommandFlag.FUA | (CommandFlag.NO_HOLE if command == Command.WRITE_ZEROES else 0)
    if request.flags & ~int(allowed):
        raise NbdError(Errno.EINVAL, f"flags {request.flags:#x} not allowed on {command.name}")
    if command in _WRITES and export.read_only:
        raise NbdError(Errno.EPERM, "the export is read-only")
    if command == Command.FLUSH:
        if request.offset or request.length:
            raise NbdError(Errno.EINVAL, "a FLUSH has no range")
        return
    if request.offset % export.min_block or request.length % export.min_block:
        raise NbdError(Errno.EINVAL, f"not aligned to {export.min_block}-byte blocks")
    # TRIM and WRITE_ZEROES carry no payload, so a long one costs us no memory: accept it
    # rather than fail a client that splits zeroing differently from reads and writes.
    if command in (Command.READ, Command.WRITE) and request.length > export.max_block:
        raise NbdError(Errno.EINVAL, f"longer than the maximum block of {export.max_block} bytes")
    if request.offset + request.length > export.size:
        code = Errno.ENOSPC if command in (Command.WRITE, Command.WRITE_ZEROES) else Errno.EINVAL
        raise NbdError(code, f"past the end of the export ({export.size} bytes)")
