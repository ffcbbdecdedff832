"""DHCP/BOOTP packets (RFC 2131, 2132) and the PXE options (RFC 4578, PXE 2.1): bytes <-> dataclasses.

`decode` returns a packet or raises DecodeError, nothing else. Options are kept in the
order sent, as (code, raw bytes), with repeated codes joined (RFC 3396); the accessors
on `DhcpPacket` read the ones pvsd acts on. Option 43's PXE sub-options have their own
encoder and decoder (`PxeOptions`).
"""

from __future__ import annotations

import enum
import functools
import ipaddress
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field

from pvsd.net.mac import format_mac
from pvsd.net.reader import DecodeError, Reader

__all__ = [
    "BROADCAST_FLAG",
    "MAGIC_COOKIE",
    "NO_ADDRESS",
    "Architecture",
    "BootServer",
    "DhcpPacket",
    "MenuItem",
    "MessageType",
    "Op",
    "Option",
    "PxeOptions",
    "PxeSubOption",
    "decode",
    "decode_pxe_options",
    "encode",
    "encode_pxe_options",
]

MAGIC_COOKIE = b"\x63\x82\x53\x63"  # RFC 2131 section 3
BROADCAST_FLAG = 0x8000  # RFC 2131 section 2, figure 2
MIN_PACKET = 300  # RFC 1542 section 2.1: BOOTP relays expect at least this
NO_ADDRESS = ipaddress.IPv4Address(0)

_HEADER = struct.Struct("!BBBBIHH4s4s4s4s16s64s128s")


class Op(enum.IntEnum):
    """RFC 2131 section 2."""

    BOOTREQUEST = 1
    BOOTREPLY = 2


class MessageType(enum.IntEnum):
    """Option 53, RFC 2132 section 9.6."""

    DISCOVER = 1
    OFFER = 2
    REQUEST = 3
    DECLINE = 4
    ACK = 5
    NAK = 6
    RELEASE = 7
    INFORM = 8


class Option(enum.IntEnum):
    """The option codes pvsd reads or writes (RFC 2132 unless noted)."""

    PAD = 0
    VENDOR_SPECIFIC = 43  # PXE sub-options inside (PXE 2.1 section 2.4)
    REQUESTED_ADDRESS = 50
    MESSAGE_TYPE = 53
    SERVER_ID = 54
    PARAMETER_LIST = 55
    MAX_MESSAGE_SIZE = 57
    VENDOR_CLASS = 60
    CLIENT_ID = 61
    TFTP_SERVER = 66
    BOOTFILE = 67
    USER_CLASS = 77  # RFC 3004; iPXE sends the plain string "iPXE"
    CLIENT_ARCH = 93  # RFC 4578 section 2.1
    CLIENT_NDI = 94  # RFC 4578 section 2.2
    CLIENT_UUID = 97  # RFC 4578 section 2.3
    IPXE_ENCAPSULATED = 175  # iPXE's own options: present only when iPXE asks
    END = 255


class Architecture(enum.IntEnum):
    """Option 93 values: RFC 4578 section 2.1 and the IANA processor architecture registry."""

    BIOS = 0
    EFI_IA32 = 6
    EFI_BC = 7  # x64 UEFI as most firmware reports it
    EFI_X86_64 = 9  # x64 UEFI as the RFC's errata and some firmware report it
    EFI_ARM32 = 10
    EFI_ARM64 = 11
    EFI_X86_64_HTTP = 16
    EFI_ARM64_HTTP = 19


class PxeSubOption(enum.IntEnum):
    """Option 43 sub-options, PXE 2.1 specification section 2.4 (table 2-1)."""

    DISCOVERY_CONTROL = 6
    BOOT_SERVERS = 8
    BOOT_MENU = 9
    MENU_PROMPT = 10
    BOOT_ITEM = 71
    END = 255


@dataclass(frozen=True)
class BootServer:
    type: int
    addresses: tuple[ipaddress.IPv4Address, ...]


@dataclass(frozen=True)
class MenuItem:
    type: int
    description: str


@dataclass(frozen=True)
class PxeOptions:
    discovery_control: int | None = None
    boot_servers: tuple[BootServer, ...] = ()
    menu: tuple[MenuItem, ...] = ()
    prompt: tuple[int, str] | None = None  # (timeout seconds, text)
    boot_item: tuple[int, int] | None = None  # (type, layer)
    other: tuple[tuple[int, bytes], ...] = ()


@dataclass(frozen=True)
class DhcpPacket:
    op: int
    xid: int
    chaddr: bytes = field(repr=False)
    htype: int = 1
    hlen: int = 6
    hops: int = 0
    secs: int = 0
    flags: int = 0
    ciaddr: ipaddress.IPv4Address = NO_ADDRESS
    yiaddr: ipaddress.IPv4Address = NO_ADDRESS
    siaddr: ipaddress.IPv4Address = NO_ADDRESS
    giaddr: ipaddress.IPv4Address = NO_ADDRESS
    sname: bytes = b""
    file: bytes = b""
    options: tuple[tuple[int, bytes], ...] = ()

    @functools.cached_property
    def _by_code(self) -> dict[int, bytes]:
        return dict(self.options)

    def option(self, code: int) -> bytes | None:
        return self._by_code.get(code)

    @property
    def mac(self) -> str | None:
        """The client's MAC, when the hardware address is Ethernet's."""
        if self.htype == 1 and self.hlen == 6:
            return format_mac(self.chaddr[:6])
        return None

    @property
    def message_type(self) -> int | None:
        value = self.option(Option.MESSAGE_TYPE)
        return value[0] if value else None

    @property
    def vendor_class(self) -> str:
        return (self.option(Option.VENDOR_CLASS) or b"").decode("ascii", "replace")

    @property
    def user_class(self) -> bytes:
        return self.option(Option.USER_CLASS) or b""

    @property
    def architectures(self) -> tuple[int, ...]:
        """Option 93: a list of 16-bit values; empty when absent or malformed."""
        value = self.option(Option.CLIENT_ARCH) or b""
        return tuple(struct.unpack(f"!{len(value) // 2}H", value[: len(value) // 2 * 2]))

    @property
    def broadcast(self) -> bool:
        return bool(self.flags & BROADCAST_FLAG)


@functools.lru_cache(maxsize=4096)
def _address(raw: bytes) -> ipaddress.IPv4Address:
    # Most packets carry 0.0.0.0 or a handful of relay and server addresses: build each once.
    return ipaddress.IPv4Address(raw)


def decode(datagram: bytes) -> DhcpPacket:
    reader = Reader(datagram)
    fields = _HEADER.unpack(reader.take(_HEADER.size))
    op, htype, hlen, hops, xid, secs, flags, ciaddr, yiaddr, siaddr, giaddr, chaddr, sname, file = fields
    if op not in (Op.BOOTREQUEST, Op.BOOTREPLY):
        raise DecodeError(f"not a BOOTP packet: op {op}")
    if hlen > 16:
        raise DecodeError(f"hardware address length {hlen} is over 16")
    if reader.take(4) != MAGIC_COOKIE:
        raise DecodeError("no DHCP magic cookie")
    joined: dict[int, bytes] = {}
    for code, value in reader.tlv(Option.PAD, Option.END):
        # RFC 3396: a repeated option continues the first (dicts keep the first one's place).
        joined[code] = joined[code] + value if code in joined else value
    return DhcpPacket(
        op=op,
        xid=xid,
        chaddr=chaddr[:hlen],
        htype=htype,
        hlen=hlen,
        hops=hops,
        secs=secs,
        flags=flags,
        ciaddr=_address(ciaddr),
        yiaddr=_address(yiaddr),
        siaddr=_address(siaddr),
        giaddr=_address(giaddr),
        sname=sname.split(b"\0", 1)[0],
        file=file.split(b"\0", 1)[0],
        options=tuple(joined.items()),
    )


def _options(options: Iterable[tuple[int, bytes]]) -> bytes:
    out = bytearray()
    for code, value in options:
        # RFC 3396: values over 255 bytes are split into several options of the same code.
        for start in range(0, max(len(value), 1), 255):
            chunk = value[start : start + 255]
            out += bytes((code, len(chunk))) + chunk
    return bytes(out)


def encode(packet: DhcpPacket) -> bytes:
    if len(packet.sname) > 63 or len(packet.file) > 127:
        raise ValueError("sname or file too long for the BOOTP header")
    header = _HEADER.pack(
        packet.op,
        packet.htype,
        packet.hlen,
        packet.hops,
        packet.xid,
        packet.secs,
        packet.flags,
        packet.ciaddr.packed,
        packet.yiaddr.packed,
        packet.siaddr.packed,
        packet.giaddr.packed,
        packet.chaddr.ljust(16, b"\0"),
        packet.sname.ljust(64, b"\0"),
        packet.file.ljust(128, b"\0"),
    )
    body = header + MAGIC_COOKIE + _options(packet.options) + bytes((Option.END,))
    return body.ljust(MIN_PACKET, b"\0")


# -- option 43: PXE sub-options ------------------------------------------------------------------------


def decode_pxe_options(value: bytes) -> PxeOptions:
    reader = Reader(value)
    discovery: int | None = None
    servers: list[BootServer] = []
    menu: list[MenuItem] = []
    prompt: tuple[int, str] | None = None
    item: tuple[int, int] | None = None
    other: list[tuple[int, bytes]] = []
    while not reader.at_end():
        code = reader.u8()
        if code == PxeSubOption.END:
            break
        if code == 0:
            continue
        sub = Reader(reader.take(reader.u8()))
        if code == PxeSubOption.DISCOVERY_CONTROL:
            discovery = sub.u8()
        elif code == PxeSubOption.BOOT_SERVERS:
            while not sub.at_end():
                server_type, count = sub.u16(), sub.u8()
                servers.append(BootServer(server_type, tuple(_address(sub.take(4)) for _ in range(count))))
        elif code == PxeSubOption.BOOT_MENU:
            while not sub.at_end():
                item_type = sub.u16()
                menu.append(MenuItem(item_type, sub.take(sub.u8()).decode("ascii", "replace")))
        elif code == PxeSubOption.MENU_PROMPT:
            prompt = (sub.u8(), sub.rest().decode("ascii", "replace"))
        elif code == PxeSubOption.BOOT_ITEM:
            item = (sub.u16(), sub.u16())
        else:
            other.append((code, sub.rest()))
    return PxeOptions(discovery, tuple(servers), tuple(menu), prompt, item, tuple(other))


def encode_pxe_options(options: PxeOptions) -> bytes:
    subs: list[tuple[int, bytes]] = []
    if options.discovery_control is not None:
        subs.append((PxeSubOption.DISCOVERY_CONTROL, bytes((options.discovery_control,))))
    if options.prompt is not None:
        subs.append(
            (PxeSubOption.MENU_PROMPT, bytes((options.prompt[0],)) + options.prompt[1].encode("ascii"))
        )
    if options.boot_servers:
        subs.append(
            (
                PxeSubOption.BOOT_SERVERS,
                b"".join(
                    struct.pack("!HB", server.type, len(server.addresses))
                    + b"".join(a.packed for a in server.addresses)
                    for server in options.boot_servers
                ),
            )
        )
    if options.menu:
        subs.append(
            (
                PxeSubOption.BOOT_MENU,
                b"".join(
                    struct.pack("!HB", item.type, len(item.description)) + item.description.encode("ascii")
                    for item in options.menu
                ),
            )
        )
    if options.boot_item is not None:
        subs.append((PxeSubOption.BOOT_ITEM, struct.pack("!HH", *options.boot_item)))
    subs.extend(options.other)
    if any(len(value) > 255 for _, value in subs):
        raise ValueError("a PXE sub-option is longer than 255 bytes")
    return b"".join(bytes((code, len(value))) + value for code, value in subs) + bytes((PxeSubOption.END,))
