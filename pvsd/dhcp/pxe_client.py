"""A BIOS PXE client's first packet and its reading of the answers: pure, for the target agent.

The DISCOVER is the one a BIOS PXE ROM broadcasts (option 60 `PXEClient:Arch:00000:UNDI:002001`,
option 93 = 0, the target's MAC); a proxy offer is an OFFER for our transaction that carries
option 60 `PXEClient` (RFC 4578, PXE 2.1 section 2.2); the boot server is its siaddr, else its
server identifier. Everything else (the site DHCP server's address offer, other clients'
traffic, garbage) is not one.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from pvsd.dhcp.codec import BROADCAST_FLAG, DhcpPacket, MessageType, Op, Option, decode, encode
from pvsd.net.reader import DecodeError

__all__ = ["VENDOR_CLASS", "ProxyOffer", "discover_packet", "proxy_offer"]

VENDOR_CLASS = b"PXEClient:Arch:00000:UNDI:002001"


@dataclass(frozen=True)
class ProxyOffer:
    server: ipaddress.IPv4Address  # the pvsd that answered: TFTP and the bootstrap come from it
    boot_file: str


def discover_packet(mac: str, xid: int) -> bytes:
    chaddr = bytes.fromhex(mac.replace(":", ""))
    packet = DhcpPacket(
        op=Op.BOOTREQUEST,
        xid=xid,
        chaddr=chaddr + bytes(10),
        flags=BROADCAST_FLAG,
        options=(
            (Option.MESSAGE_TYPE, bytes((MessageType.DISCOVER,))),
            (Option.VENDOR_CLASS, VENDOR_CLASS),
            (Option.CLIENT_ARCH, struct.pack("!H", 0)),
            (Option.CLIENT_NDI, bytes((1, 2, 1))),
            (Option.CLIENT_UUID, bytes(17)),
            (Option.PARAMETER_LIST, bytes((1, 3, 43, 54, 60, 66, 67))),
        ),
    )
    return encode(packet)


def proxy_offer(datagram: bytes, mac: str, xid: int) -> ProxyOffer | None:
    """The offer if this datagram is a PXE proxy's answer to our DISCOVER, else None."""
    try:
        packet = decode(datagram)
    except DecodeError:
        return None
    if packet.op != Op.BOOTREPLY or packet.xid != xid or packet.mac != mac:
        return None
    if packet.message_type != MessageType.OFFER or not packet.vendor_class.startswith("PXEClient"):
        return None
    server = packet.siaddr
    if server == ipaddress.IPv4Address(0):
        server_id = packet.option(Option.SERVER_ID)
        if not server_id or len(server_id) != 4:
            return None
        server = ipaddress.IPv4Address(server_id)
    boot_file = packet.file.split(b"\0", 1)[0].decode("ascii", "replace")
    return ProxyOffer(server, boot_file)
