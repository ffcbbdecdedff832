"""The start of a real boot chain, done by the agent: PXE DHCPDISCOVER, the proxy offer, pvs.bootstrap.

The agent broadcasts the DISCOVER a BIOS PXE ROM sends (option 60
`PXEClient:Arch:00000:UNDI:002001`, option 93 = 0, this MAC), takes the first offer that
comes from a PXE boot server (a proxy offer: option 60 `PXEClient`), and downloads
`pvs.bootstrap` over TFTP from the server that answered. It never takes an address: the
interface must have one already (as the firmware's DHCP would have given it).
"""

from __future__ import annotations

import ipaddress
import secrets
import socket
import struct
import time
from dataclasses import dataclass

from pvsd.dhcp.codec import (
    BROADCAST_FLAG,
    DhcpPacket,
    MessageType,
    Op,
    Option,
    decode,
    encode,
)
from pvsd.errors import Failure
from pvsd.net.reader import DecodeError

__all__ = ["ProxyOffer", "discover_packet", "discover_proxy", "proxy_offer"]

VENDOR_CLASS = b"PXEClient:Arch:00000:UNDI:002001"
SO_BINDTODEVICE = 25


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


def discover_proxy(mac: str, interface: str, timeout: float = 10.0, port: int = 67) -> ProxyOffer:
    """Broadcast DISCOVERs on `interface` (one a second, as PXE ROMs do) until a proxy offers."""
    xid = secrets.randbits(32)
    request = discover_packet(mac, xid)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, interface.encode())
            sock.bind(("0.0.0.0", 68))  # noqa: S104 - a DHCP client listens for broadcasts
        except OSError as error:
            raise Failure(
                f"cannot send DHCP on {interface}: {error.strerror} (is it up? are we root?)"
            ) from None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            sock.sendto(request, ("255.255.255.255", port))
            resend = min(deadline, time.monotonic() + 1.0)
            while (left := resend - time.monotonic()) > 0:
                sock.settimeout(left)
                try:
                    data, _ = sock.recvfrom(4096)
                except TimeoutError:
                    break
                offer = proxy_offer(data, mac, xid)
                if offer is not None:
                    return offer
    raise Failure(
        f"no PXE proxy answered on {interface} within {timeout:g} s (is a pvsd serving DHCP there?)"
    )
