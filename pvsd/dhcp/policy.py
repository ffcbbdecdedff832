"""Which PXE requests get an answer, and what it says: pure, a request in and a reply or nothing out.

pvsd is a proxy DHCP server (PXE 2.1 section 2.2.5): it never offers an address (yiaddr
stays 0); the site's DHCP server does that. It answers PXE and HTTP-boot clients only,
gives firmware the iPXE binary for its architecture and gives iPXE (user class "iPXE" or
option 175) the bootstrap script, which breaks the chainload loop without per-MAC state.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from pvsd.dhcp.codec import (
    NO_ADDRESS,
    Architecture,
    DhcpPacket,
    MessageType,
    Op,
    Option,
    PxeOptions,
    decode_pxe_options,
    encode_pxe_options,
)
from pvsd.net.reader import DecodeError

__all__ = [
    "ARCH_FAMILIES",
    "ArchFamily",
    "BootPolicy",
    "Decision",
    "Strategy",
    "decide",
    "reply_destination",
]

DHCP_SERVER_PORT = 67
DHCP_CLIENT_PORT = 68
# PXE 2.1 table 2-2, bit 3: "if a boot file name is given, download it without prompting".
DISCOVERY_USE_BOOTFILE = 0x08
_DIRECT_PXE_OPTIONS = encode_pxe_options(PxeOptions(discovery_control=DISCOVERY_USE_BOOTFILE))


class ArchFamily(enum.StrEnum):
    BIOS = "bios"
    UEFI_X64 = "uefi-x64"
    UEFI_IA32 = "uefi-ia32"
    UEFI_ARM64 = "uefi-arm64"
    HTTP_X64 = "http-x64"
    HTTP_ARM64 = "http-arm64"


ARCH_FAMILIES: Mapping[int, ArchFamily] = {
    Architecture.BIOS: ArchFamily.BIOS,
    Architecture.EFI_IA32: ArchFamily.UEFI_IA32,
    Architecture.EFI_BC: ArchFamily.UEFI_X64,  # firmware reports 7 and 9 alike for x64
    Architecture.EFI_X86_64: ArchFamily.UEFI_X64,
    Architecture.EFI_ARM64: ArchFamily.UEFI_ARM64,
    Architecture.EFI_X86_64_HTTP: ArchFamily.HTTP_X64,
    Architecture.EFI_ARM64_HTTP: ArchFamily.HTTP_ARM64,
}
HTTP_FAMILIES = (ArchFamily.HTTP_X64, ArchFamily.HTTP_ARM64)


class Strategy(enum.StrEnum):
    DIRECT = "direct"  # the offer carries the boot file and 43.6 = 8
    VIA_4011 = "via-4011"  # the offer carries no PXE options: the client asks again on port 4011


@dataclass(frozen=True)
class BootPolicy:
    server: ipaddress.IPv4Address
    bootfiles: Mapping[ArchFamily, str]
    """Boot file per architecture for firmware PXE; an empty name means no answer."""
    strategies: Mapping[ArchFamily, Strategy]
    ipxe_script: str = "pvs.ipxe"
    answer_all: bool = True
    http_base: str | None = None
    """Base URL for UEFI HTTP boot (None: HTTP boot clients get no answer)."""


@dataclass(frozen=True)
class Decision:
    reply: DhcpPacket | None
    reason: str
    mac: str | None = None
    family: ArchFamily | None = None
    ipxe: bool = False
    bootfile: str = ""


def _ignore(reason: str, request: DhcpPacket, family: ArchFamily | None = None) -> Decision:
    return Decision(None, reason, request.mac, family)


def decide(
    request: DhcpPacket, on_pxe_port: bool, is_known: Callable[[str], bool], policy: BootPolicy
) -> Decision:
    """The reply to one request received on port 67 (or on 4011 when `on_pxe_port`)."""
    if request.op != Op.BOOTREQUEST:
        return _ignore("not a request", request)
    vendor = request.vendor_class
    if not vendor.startswith(("PXEClient", "HTTPClient")):
        return _ignore("not a PXE or HTTP-boot client", request)
    mac = request.mac
    if mac is None:
        return _ignore("not an Ethernet client", request)
    kind = request.message_type
    expected = MessageType.REQUEST if on_pxe_port else MessageType.DISCOVER
    if kind != expected:
        # On 67 a REQUEST is for the site's DHCP server; on 4011 only REQUESTs make sense.
        return _ignore(
            f"message type {kind} is not for a proxy on port {4011 if on_pxe_port else 67}", request
        )
    architectures = request.architectures
    arch = architectures[0] if architectures else Architecture.BIOS  # option 93 missing: legacy BIOS ROM
    family = ARCH_FAMILIES.get(arch)
    if family is None:
        return _ignore(f"no boot file for arch {arch}", request)
    if family in HTTP_FAMILIES and policy.http_base is None:
        return _ignore(f"arch {arch} boots over HTTP and HTTP is not enabled", request, family)
    if not policy.answer_all and not is_known(mac):
        return _ignore("unknown MAC and [dhcp] answer = known", request, family)
    ipxe = b"iPXE" in request.user_class or request.option(Option.IPXE_ENCAPSULATED) is not None
    if ipxe:
        bootfile = policy.ipxe_script
    else:
        bootfile = policy.bootfiles.get(family, "")
        if not bootfile:
            return _ignore(f"no boot file for arch {arch} ({family})", request, family)
    if family in HTTP_FAMILIES and policy.http_base is not None:
        bootfile = f"{policy.http_base.rstrip('/')}/{bootfile}"
    strategy = policy.strategies.get(family, Strategy.DIRECT)
    if on_pxe_port:
        reply = _pxe_ack(request, policy, bootfile)
    else:
        reply = _offer(request, policy, bootfile, strategy)
    return Decision(reply, "answered", mac, family, ipxe, bootfile)


def _common_options(request: DhcpPacket, policy: BootPolicy, kind: MessageType) -> list[tuple[int, bytes]]:
    options: list[tuple[int, bytes]] = [
        (Option.MESSAGE_TYPE, bytes((kind,))),
        (Option.SERVER_ID, policy.server.packed),
        (
            Option.VENDOR_CLASS,
            b"HTTPClient" if request.vendor_class.startswith("HTTPClient") else b"PXEClient",
        ),
    ]
    uuid = request.option(Option.CLIENT_UUID)
    if uuid is not None:
        options.append((Option.CLIENT_UUID, uuid))  # PXE 2.1: echo the client's machine identifier
    return options


def _reply(
    request: DhcpPacket, policy: BootPolicy, file: str, options: list[tuple[int, bytes]]
) -> DhcpPacket:
    return DhcpPacket(
        op=Op.BOOTREPLY,
        xid=request.xid,
        chaddr=request.chaddr,
        htype=request.htype,
        hlen=request.hlen,
        flags=request.flags,
        ciaddr=NO_ADDRESS,
        yiaddr=NO_ADDRESS,  # a proxy never hands out an address
        siaddr=policy.server,
        giaddr=request.giaddr,
        file=file.encode(),
        options=tuple(options),
    )


def _offer(request: DhcpPacket, policy: BootPolicy, bootfile: str, strategy: Strategy) -> DhcpPacket:
    options = _common_options(request, policy, MessageType.OFFER)
    if strategy is Strategy.DIRECT:
        options.append((Option.VENDOR_SPECIFIC, _DIRECT_PXE_OPTIONS))
        return _reply(request, policy, bootfile, options)
    return _reply(request, policy, "", options)


def _pxe_ack(request: DhcpPacket, policy: BootPolicy, bootfile: str) -> DhcpPacket:
    options = _common_options(request, policy, MessageType.ACK)
    item = _boot_item(request)
    if item is not None:
        # PXE 2.1 section 2.2.6: the boot server's ACK names the boot item it answers.
        options.append((Option.VENDOR_SPECIFIC, encode_pxe_options(PxeOptions(boot_item=item))))
    return _reply(request, policy, bootfile, options)


def _boot_item(request: DhcpPacket) -> tuple[int, int] | None:
    value = request.option(Option.VENDOR_SPECIFIC)
    if value is None:
        return None
    try:
        return decode_pxe_options(value).boot_item
    except DecodeError:
        return None


def reply_destination(request: DhcpPacket, source: tuple[str, int], on_pxe_port: bool) -> tuple[str, int]:
    """Where a reply goes (RFC 2131 section 4.1): the relay, the client's address, or broadcast."""
    if request.giaddr != NO_ADDRESS:
        return str(request.giaddr), DHCP_SERVER_PORT
    if on_pxe_port:
        # The client has its address by now and asked us directly: answer where it asked from.
        host = str(request.ciaddr) if request.ciaddr != NO_ADDRESS else source[0]
        return host, source[1]
    if request.broadcast or request.ciaddr == NO_ADDRESS:
        return "255.255.255.255", DHCP_CLIENT_PORT
    # A client with an address sends from port 68; answering its source port is the same
    # thing, and also reaches load generators and tests that cannot own port 68.
    return str(request.ciaddr), source[1]
