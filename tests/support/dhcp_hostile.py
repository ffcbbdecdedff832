"""Hostile and minimal DHCP requests, and the rule a reply's destination must obey.

Shared by the pure amplification check (tests/unit/dhcp/test_reflection.py) and the one on
the wire in network namespaces (tests/integration/test_dhcp_netns.py). Every request is
built byte by byte (no padding to 300 bytes as `codec.encode` does), so the smallest ones
are as small as a DHCP packet can be: the 236-byte BOOTP header, the 4-byte cookie, option
53 and END.
"""

from __future__ import annotations

import ipaddress
import itertools
import struct
from collections.abc import Callable
from dataclasses import dataclass

MAGIC = b"\x63\x82\x53\x63"
HEADER = struct.Struct("!BBBBIHH4s4s4s4s16s64s128s")
MAC = bytes.fromhex("525400aa0001")
PXE_BIOS = b"PXEClient:Arch:00000:UNDI:002001"
BOOTREQUEST, BOOTREPLY = 1, 2
DISCOVER, OFFER, REQUEST, DECLINE, ACK, NAK, RELEASE, INFORM = range(1, 9)
DHCP_SERVER_PORT, DHCP_CLIENT_PORT = 67, 68
LIMITED_BROADCAST = "255.255.255.255"


def packet(
    xid: int,
    kind: int | None = DISCOVER,
    op: int = BOOTREQUEST,
    vendor: bytes | None = PXE_BIOS,
    ciaddr: str = "0.0.0.0",
    giaddr: str = "0.0.0.0",
    flags: int = 0,
    htype: int = 1,
    hlen: int = 6,
    options: bytes = b"",
    end: bool = True,
) -> bytes:
    """A DHCP packet as small as its fields allow: no padding after END."""
    header = HEADER.pack(
        op,
        htype,
        hlen,
        0,
        xid,
        0,
        flags,
        ipaddress.IPv4Address(ciaddr).packed,
        b"\0" * 4,
        b"\0" * 4,
        ipaddress.IPv4Address(giaddr).packed,
        MAC.ljust(16, b"\0"),
        b"\0" * 64,
        b"\0" * 128,
    )
    body = b""
    if kind is not None:
        body += bytes((53, 1, kind))
    if vendor is not None:
        body += bytes((60, len(vendor))) + vendor
    body += options
    return header + MAGIC + body + (b"\xff" if end else b"")


@dataclass(frozen=True)
class Probe:
    """One request: what it is, where it comes from and where it is sent."""

    name: str
    payload: bytes
    source: tuple[str, int]
    destination_port: int  # 67 or the PXE port; the address is the server's (or broadcast)
    broadcast: bool = False


def _variants(xid: int) -> list[tuple[str, bytes]]:
    """Each message type at its smallest, without and with a PXE vendor class, and malformed ones;
    each with its own xid (from `xid` up), so that replies can be told apart."""
    xids = itertools.count(xid)
    out: list[tuple[str, bytes]] = []
    for kind in (None, 0, DISCOVER, OFFER, REQUEST, DECLINE, ACK, NAK, RELEASE, INFORM, 9, 255):
        out.append((f"type {kind} bare", packet(next(xids), kind, vendor=None)))
        out.append((f"type {kind} PXEClient", packet(next(xids), kind)))
        out.append((f"type {kind} BOOTREPLY", packet(next(xids), kind, op=BOOTREPLY)))
    out += [
        ("header only", packet(next(xids))[:236]),
        ("no END", packet(next(xids), end=False)),
        ("truncated option", packet(next(xids), options=b"\x5d\x08\x00")),
        ("odd option 93", packet(next(xids), options=b"\x5d\x03\x00\x00\x07")),
        ("empty option 53", packet(next(xids), kind=None, options=b"\x35\x00")),
        ("op 3", packet(next(xids), op=3)),
        ("hlen 17", packet(next(xids), hlen=17)),
        ("htype 6", packet(next(xids), htype=6)),
        ("bad option 43", packet(next(xids), kind=REQUEST, options=b"\x2b\x04\x47\x09\x80\x00")),
        ("HTTPClient", packet(next(xids), vendor=b"HTTPClient:Arch:00016:UNDI:003001")),
        ("PAD flood", packet(next(xids), options=b"\x00" * 1100)),
        ("option 97 long", packet(next(xids), options=b"\x61\xff" + b"\x01" * 255)),
    ]
    return out


def probes(
    server: str, client: str, victim: str, off_link: str, pxe_port: int, first_xid: int = 0x7000_0000
) -> list[Probe]:
    """Every variant from every kind of source and with every kind of ciaddr and giaddr.

    `server`: pvsd's address on the client's link; `client`: a real client's address there;
    `victim`: another address on the link a spoofer would like to hit; `off_link`: an address
    beyond the link (reached through a router).
    """
    bad_addresses = ("224.0.0.1", LIMITED_BROADCAST, "127.0.0.1", "240.0.0.1", "0.1.2.3", off_link)
    subnet_broadcast = str(ipaddress.IPv4Interface(f"{server}/24").network.broadcast_address)
    out: list[Probe] = []
    xid = first_xid

    def add(
        name: str,
        payload_of: Callable[[int], list[tuple[str, bytes]]],
        source: tuple[str, int],
        port: int,
        broadcast: bool,
    ) -> None:
        nonlocal xid
        for variant, payload in payload_of(xid):
            out.append(Probe(f"{name}: {variant}", payload, source, port, broadcast))
        xid += 0x1000

    add("broadcast from 0.0.0.0", _variants, ("0.0.0.0", 68), DHCP_SERVER_PORT, True)
    add("unicast from the client", _variants, (client, 68), DHCP_SERVER_PORT, False)
    add("4011 from the client", _variants, (client, 68), pxe_port, False)
    add("4011 spoofed from the victim's DNS port", _variants, (victim, 53), pxe_port, False)
    add("4011 from 0.0.0.0", _variants, ("0.0.0.0", 68), pxe_port, False)
    for bad in (*bad_addresses, subnet_broadcast, victim):
        for field in ("ciaddr", "giaddr"):
            for kind, port in ((DISCOVER, DHCP_SERVER_PORT), (REQUEST, pxe_port)):
                source = (victim, 68) if bad == victim else (client, 68)
                add(
                    f"{field} {bad} to {port}",
                    lambda x, f=field, b=bad, k=kind: [("PXE", packet(x, k, **{f: b}))],
                    source,
                    port,
                    False,
                )
    # ciaddr that is not the source, to 4011: the spoofer's favourite
    add(
        "4011 ciaddr is not the source",
        lambda x: [("PXE", packet(x, REQUEST, ciaddr=victim))],
        (client, 68),
        pxe_port,
        False,
    )
    return out


@dataclass(frozen=True)
class Link:
    """What the destination rule knows about the link a request came in on."""

    subnet: ipaddress.IPv4Interface  # pvsd's address there, with the prefix
    loopback: bool = False


def usable_unicast(address: ipaddress.IPv4Address, link: Link) -> bool:
    """A unicast host on the link's subnet: not its network or broadcast address, not pvsd itself."""
    network = link.subnet.network
    return (
        address in network
        and address not in (network.network_address, network.broadcast_address, link.subnet.ip)
        and not address.is_multicast
        and not address.is_reserved
        and (link.loopback or not address.is_loopback)
    )


def allowed_destinations(
    payload: bytes, source: tuple[str, int], pxe: bool, link: Link, relays: tuple[str, ...] = ()
) -> set[tuple[str, int]]:
    """Where a reply to this request may go: written from the rules, not from pvsd's code.

    - giaddr set (on either port): giaddr:67, when giaddr is a usable host on the link, or in
      `relays` when that is not empty (and never multicast or class E).
    - port 67, ciaddr set: ciaddr:68, when ciaddr is the source and a usable host on the link.
    - port 67, neither: 255.255.255.255:68 (out of the link it came in on).
    - the PXE port: the source address and port, when the source is a usable host on the link,
      ciaddr is 0 or the source, and the port is 68 or unprivileged (1024 and up).
    """
    if len(payload) < 240:
        return set()
    ciaddr = ipaddress.IPv4Address(payload[12:16])
    giaddr = ipaddress.IPv4Address(payload[24:28])
    sender = ipaddress.IPv4Address(source[0])
    if int(giaddr):
        listed = any(giaddr in ipaddress.IPv4Network(relay) for relay in relays)
        if (listed and not (giaddr.is_multicast or giaddr.is_reserved)) or (
            not relays and usable_unicast(giaddr, link)
        ):
            return {(str(giaddr), DHCP_SERVER_PORT)}
        return set()
    if pxe:
        port_ok = source[1] == DHCP_CLIENT_PORT or source[1] >= 1024
        if usable_unicast(sender, link) and ciaddr in (ipaddress.IPv4Address(0), sender) and port_ok:
            return {source}
        return set()
    if int(ciaddr):
        broadcast_flag = bool(struct.unpack("!H", payload[10:12])[0] & 0x8000)
        if ciaddr != sender or not usable_unicast(ciaddr, link):
            return set()
        if broadcast_flag:
            return {(LIMITED_BROADCAST, DHCP_CLIENT_PORT)}
        return {(str(ciaddr), source[1] if link.loopback else DHCP_CLIENT_PORT)}
    return {(LIMITED_BROADCAST, DHCP_CLIENT_PORT)}
