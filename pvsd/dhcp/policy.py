"""Which PXE requests get an answer, what it says and where it goes: pure, a request and where it
came in (`Arrival`) in, a reply and its destination or the reason for none out.

pvsd is a proxy DHCP server (PXE 2.1 section 2.2.5): it never offers an address (yiaddr
stays 0); the site's DHCP server does that. It answers PXE and HTTP-boot clients only,
gives firmware the iPXE binary for its architecture and gives iPXE (user class "iPXE" or
option 175) the bootstrap script, which breaks the chainload loop without per-MAC state.

A proxy must not become a reflector, and must not send clients where they cannot go:
- it never answers what only servers send (op BOOTREPLY, DHCPOFFER, DHCPACK, DHCPNAK), so
  two servers can never answer each other;
- a reply goes only to the link the request came in on (broadcast, or a host on one of the
  receiving interface's subnets that is the request's source), or to a relay (giaddr) on
  that link or listed in [dhcp] relays; never to multicast, broadcast-as-unicast, class E,
  0.0.0.0/8, this server's own address, or loopback unless the request came in on loopback;
- it offers a server address (siaddr, option 54, PXE boot servers) only where the client
  can reach it: on a subnet of the receiving interface, or any address of this host for a
  client on loopback.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

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
    "Arrival",
    "BootPolicy",
    "Decision",
    "Destination",
    "Refusal",
    "Refused",
    "Strategy",
    "advertised_addresses",
    "decide",
    "reachable",
    "reply_destination",
]

DHCP_SERVER_PORT = 67
DHCP_CLIENT_PORT = 68
FIRST_UNPRIVILEGED_PORT = 1024
LIMITED_BROADCAST = ipaddress.IPv4Address("255.255.255.255")
SERVER_MESSAGE_TYPES = (MessageType.OFFER, MessageType.ACK, MessageType.NAK)  # RFC 2131 table 2
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
    relays: tuple[ipaddress.IPv4Network, ...] = ()
    """Relays (giaddr) answered; empty: any relay on a subnet of the receiving interface."""


@dataclass(frozen=True)
class Arrival:
    """Where a request came from and in on, as the socket saw it (IP_PKTINFO) and the receiving
    interface is configured. The glue fills it in; nothing here asks the system."""

    source: tuple[ipaddress.IPv4Address, int]
    on_pxe_port: bool = False
    interface: str = ""
    """The receiving interface's name (for the log); empty when unknown."""
    loopback: bool = False
    """The request came in on the loopback interface: it was sent by this host."""
    subnets: tuple[ipaddress.IPv4Interface, ...] = ()
    """The receiving interface's addresses with their prefixes."""
    host_addresses: frozenset[ipaddress.IPv4Address] = frozenset()
    """Every address of this host (a client on loopback reaches them all)."""


class Refusal(enum.StrEnum):
    """Why a request got no answer: what the server counts, and how loudly it says so."""

    IGNORED = "ignored"  # not for a proxy (not PXE, a REQUEST for the site server): debug only
    NOT_ANSWERED = "not answered"  # a PXE client this server does not serve (arch, unknown MAC)
    SERVER_MESSAGE = "server message"  # only servers send it: answering would let servers loop
    BAD_DESTINATION = "bad destination"  # the reply would go somewhere unusable or spoofed
    RELAY_REFUSED = "relay refused"  # relayed by a relay that is not on the link or not listed
    UNREACHABLE = "unreachable"  # the client could not reach the address this server offers


class Destination(NamedTuple):
    """Where a reply goes. `on_link`: a broadcast or a host on the receiving interface's link,
    so the reply leaves by that interface whatever the routing table says. (A tuple, not a
    dataclass: one is made for every reply.)"""

    address: ipaddress.IPv4Address
    port: int
    on_link: bool = True

    @property
    def broadcast(self) -> bool:
        return self.address == LIMITED_BROADCAST

    def __str__(self) -> str:
        return f"{self.address}:{self.port}"


BROADCAST_DESTINATION = Destination(LIMITED_BROADCAST, DHCP_CLIENT_PORT)


@dataclass(frozen=True)
class Refused:
    """A destination refused: `reason` is stable (a log and counter key), `detail` names values."""

    refusal: Refusal
    reason: str
    detail: str


@dataclass(frozen=True)
class Decision:
    reply: DhcpPacket | None
    reason: str
    mac: str | None = None
    family: ArchFamily | None = None
    ipxe: bool = False
    bootfile: str = ""
    refusal: Refusal | None = None
    """None when answered."""
    destination: Destination | None = None
    detail: str = ""
    """The values behind a refusal's reason (addresses, ports), for the log."""


def _refuse(
    refusal: Refusal, reason: str, request: DhcpPacket, family: ArchFamily | None = None, detail: str = ""
) -> Decision:
    return Decision(None, reason, request.mac, family, refusal=refusal, detail=detail)


def decide(
    request: DhcpPacket, arrival: Arrival, is_known: Callable[[str], bool], policy: BootPolicy
) -> Decision:
    """The reply to one request and where it goes, received on port 67 (or on the PXE port)."""
    on_pxe_port = arrival.on_pxe_port
    if request.op != Op.BOOTREQUEST:
        return _refuse(Refusal.SERVER_MESSAGE, "op BOOTREPLY: only servers send it", request)
    kind = request.message_type
    if kind in SERVER_MESSAGE_TYPES:
        name = MessageType(kind).name
        return _refuse(Refusal.SERVER_MESSAGE, f"message type {name}: only servers send it", request)
    vendor = request.vendor_class
    if not vendor.startswith(("PXEClient", "HTTPClient")):
        return _refuse(Refusal.IGNORED, "not a PXE or HTTP-boot client", request)
    mac = request.mac
    if mac is None:
        return _refuse(Refusal.IGNORED, "not an Ethernet client", request)
    expected = MessageType.REQUEST if on_pxe_port else MessageType.DISCOVER
    if kind != expected:
        # On 67 a REQUEST is for the site's DHCP server; on 4011 only REQUESTs make sense.
        port = "the PXE port" if on_pxe_port else DHCP_SERVER_PORT
        return _refuse(Refusal.IGNORED, f"message type {kind} is not for a proxy on port {port}", request)
    destination = reply_destination(request, arrival, policy.relays)
    if isinstance(destination, Refused):
        return _refuse(destination.refusal, destination.reason, request, detail=destination.detail)
    # Every address a reply advertises (siaddr, option 54; pvsd names no PXE boot servers in
    # 43.8) is policy.server, so this one check covers them: advertised_addresses() lists them
    # and a test keeps every reply to it, rather than decoding each reply's option 43 here.
    if not reachable(policy.server, arrival):
        return _unreachable(policy.server, arrival, request)
    architectures = request.architectures
    arch = architectures[0] if architectures else Architecture.BIOS  # option 93 missing: legacy BIOS ROM
    family = ARCH_FAMILIES.get(arch)
    if family is None:
        return _refuse(Refusal.NOT_ANSWERED, f"no boot file for arch {arch}", request)
    if family in HTTP_FAMILIES and policy.http_base is None:
        reason = f"arch {arch} boots over HTTP and HTTP is not enabled"
        return _refuse(Refusal.NOT_ANSWERED, reason, request, family)
    if not policy.answer_all and not is_known(mac):
        return _refuse(Refusal.NOT_ANSWERED, "unknown MAC and [dhcp] answer = known", request, family)
    ipxe = b"iPXE" in request.user_class or request.option(Option.IPXE_ENCAPSULATED) is not None
    if ipxe:
        bootfile = policy.ipxe_script
    else:
        bootfile = policy.bootfiles.get(family, "")
        if not bootfile:
            return _refuse(Refusal.NOT_ANSWERED, f"no boot file for arch {arch} ({family})", request, family)
    if family in HTTP_FAMILIES and policy.http_base is not None:
        bootfile = f"{policy.http_base.rstrip('/')}/{bootfile}"
    strategy = policy.strategies.get(family, Strategy.DIRECT)
    if on_pxe_port:
        reply = _pxe_ack(request, policy, bootfile)
    else:
        reply = _offer(request, policy, bootfile, strategy)
    return Decision(reply, "answered", mac, family, ipxe, bootfile, destination=destination)


def _unreachable(address: ipaddress.IPv4Address, arrival: Arrival, request: DhcpPacket) -> Decision:
    subnets = ", ".join(str(subnet) for subnet in arrival.subnets) or "none"
    detail = (
        f"{address} is not on the subnets of {arrival.interface or 'the receiving interface'} ({subnets})"
    )
    reason = "server address not reachable from the receiving interface"
    return _refuse(Refusal.UNREACHABLE, reason, request, detail=detail)


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


def advertised_addresses(reply: DhcpPacket) -> tuple[ipaddress.IPv4Address, ...]:
    """Every address a reply tells the client to contact: siaddr, option 54 and the PXE boot
    servers of option 43.8 (PXE 2.1 table 2-1)."""
    found = [reply.siaddr] if reply.siaddr != NO_ADDRESS else []
    server_id = reply.option(Option.SERVER_ID)
    if server_id is not None and len(server_id) == 4:
        found.append(ipaddress.IPv4Address(server_id))
    vendor = reply.option(Option.VENDOR_SPECIFIC)
    if vendor is not None:
        try:
            pxe = decode_pxe_options(vendor)
        except DecodeError:
            pxe = PxeOptions()
        found.extend(address for server in pxe.boot_servers for address in server.addresses)
    return tuple(dict.fromkeys(found))


def _on_link(address: ipaddress.IPv4Address, arrival: Arrival) -> bool:
    """A host on the receiving interface's link: inside one of its subnets (not as the subnet's
    network or broadcast address), or, for a request from loopback, any address of this host."""
    if arrival.loopback and address in arrival.host_addresses:
        return True
    for subnet in arrival.subnets:
        network = subnet.network
        if address in network and (
            network.prefixlen >= 31 or address not in (network.network_address, network.broadcast_address)
        ):
            return True
    return False


def reachable(address: ipaddress.IPv4Address, arrival: Arrival) -> bool:
    """Can a client that asked on this interface reach `address`? Only if it is on the link: a
    loopback address is on loopback's link alone (unless an interface was given one on purpose)."""
    return _on_link(address, arrival)


def _address_problem(address: ipaddress.IPv4Address, arrival: Arrival) -> str | None:
    """Why `address` can never be a reply's unicast destination here, or None."""
    value = int(address)  # the first octet's bits decide the special ranges, without ipaddress's lookups
    if value >> 24 == 0:
        return "is unspecified (0.0.0.0/8)"
    if value >> 28 == 0xE:
        return "is multicast"
    if value == 0xFFFFFFFF:
        return "is the broadcast address"
    if value >> 28 == 0xF:
        return "is reserved (240.0.0.0/4)"
    if value >> 24 == 127 and not arrival.loopback and not _on_link(address, arrival):
        return "is loopback and the request did not come in on loopback"
    for subnet in arrival.subnets:
        network = subnet.network
        if network.prefixlen < 31 and address in (network.network_address, network.broadcast_address):
            return "is the network or broadcast address of a subnet of the receiving interface"
        if not arrival.loopback and address == subnet.ip:
            return "is this server's own address"
    return None


def _host_problem(address: ipaddress.IPv4Address, arrival: Arrival) -> str | None:
    """Why `address` is not a host on the receiving interface's link, or None."""
    problem = _address_problem(address, arrival)
    if problem is None and not _on_link(address, arrival):
        problem = "is not on a subnet of the receiving interface"
    return problem


def reply_destination(
    request: DhcpPacket, arrival: Arrival, relays: tuple[ipaddress.IPv4Network, ...] = ()
) -> Destination | Refused:
    """Where a reply goes (RFC 2131 section 4.1; PXE 2.1 section 2.2.6 for the PXE port), or why
    it goes nowhere: a relay's giaddr:67; on the PXE port the request's source address and port;
    on 67 ciaddr:68 or the broadcast address:68 on the receiving link."""
    source, port = arrival.source
    if request.giaddr != NO_ADDRESS:
        return _relay_destination(request.giaddr, arrival, relays)
    if arrival.on_pxe_port:
        # The client has its address and asked us directly: the reply goes where it asked from,
        # which is exactly what a spoofer picks, so only to a host on this link that claims no
        # other address, on 68 or an unprivileged port (never 53, 123, 161, ...).
        problem = _host_problem(source, arrival)
        if problem is not None:
            return Refused(Refusal.BAD_DESTINATION, f"source {problem}", f"source {source}:{port}")
        if request.ciaddr not in (NO_ADDRESS, source):
            return Refused(
                Refusal.BAD_DESTINATION,
                "ciaddr is not the source address",
                f"ciaddr {request.ciaddr}, source {source}:{port}",
            )
        if port != DHCP_CLIENT_PORT and port < FIRST_UNPRIVILEGED_PORT:
            return Refused(
                Refusal.BAD_DESTINATION, "source port is privileged and not 68", f"source {source}:{port}"
            )
        return Destination(source, port)
    if request.ciaddr == NO_ADDRESS:
        return BROADCAST_DESTINATION
    ciaddr = request.ciaddr
    problem = _host_problem(ciaddr, arrival)
    if problem is not None:
        return Refused(Refusal.BAD_DESTINATION, f"ciaddr {problem}", f"ciaddr {ciaddr}")
    if ciaddr != source:
        detail = f"ciaddr {ciaddr}, source {source}:{port}"
        return Refused(Refusal.BAD_DESTINATION, "ciaddr is not the source address", detail)
    if request.broadcast:
        return BROADCAST_DESTINATION
    # A client with an address sends from port 68 and is answered there. On loopback the
    # request came from this host, so its source port is answered: that reaches load
    # generators and tests that cannot own port 68, and no one else.
    return Destination(ciaddr, port if arrival.loopback else DHCP_CLIENT_PORT)


def _relay_destination(
    giaddr: ipaddress.IPv4Address, arrival: Arrival, relays: tuple[ipaddress.IPv4Network, ...]
) -> Destination | Refused:
    problem = _address_problem(giaddr, arrival)
    if problem is not None:
        return Refused(Refusal.BAD_DESTINATION, f"giaddr {problem}", f"giaddr {giaddr}")
    on_link = _on_link(giaddr, arrival)
    if relays:
        if not any(giaddr in relay for relay in relays):
            listed = ", ".join(str(relay) for relay in relays)
            return Refused(Refusal.RELAY_REFUSED, "relay not in [dhcp] relays", f"giaddr {giaddr} ({listed})")
    elif not on_link:
        return Refused(
            Refusal.RELAY_REFUSED,
            "relay not on a subnet of the receiving interface and [dhcp] relays is empty",
            f"giaddr {giaddr}",
        )
    return Destination(giaddr, DHCP_SERVER_PORT, on_link)
