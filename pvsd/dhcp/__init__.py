"""Proxy DHCP and PXE: the packet codec, the pure answer policy, the PXE client packets the agent
sends, and the service on ports 67 and 4011."""

from pvsd.dhcp.codec import Architecture, DhcpPacket, MessageType, Option, PxeOptions, decode, encode
from pvsd.dhcp.policy import (
    ArchFamily,
    Arrival,
    BootPolicy,
    Decision,
    Destination,
    Refusal,
    Strategy,
    decide,
    reply_destination,
)
from pvsd.dhcp.pxe_client import ProxyOffer, discover_packet, proxy_offer
from pvsd.dhcp.server import DhcpServer, DhcpStats, boot_policy

__all__ = [
    "ArchFamily",
    "Architecture",
    "Arrival",
    "BootPolicy",
    "Decision",
    "Destination",
    "DhcpPacket",
    "DhcpServer",
    "DhcpStats",
    "MessageType",
    "Option",
    "ProxyOffer",
    "PxeOptions",
    "Refusal",
    "Strategy",
    "boot_policy",
    "decide",
    "decode",
    "discover_packet",
    "encode",
    "proxy_offer",
    "reply_destination",
]
