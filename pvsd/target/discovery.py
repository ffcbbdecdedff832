"""The start of a real boot chain, done by the agent: PXE DHCPDISCOVER, the proxy offer.

The agent broadcasts the DISCOVER a BIOS PXE ROM sends and takes the first proxy offer (the
packets are `pvsd/dhcp/pxe_client.py`'s); the caller then downloads `pvs.bootstrap` over TFTP
from the server that answered. It never takes an address: the interface must have one already
(as the firmware's DHCP would have given it).
"""

from __future__ import annotations

import secrets
import socket
import time

from pvsd.dhcp.pxe_client import ProxyOffer, discover_packet, proxy_offer
from pvsd.errors import Failure

__all__ = ["discover_proxy"]

SO_BINDTODEVICE = 25


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
