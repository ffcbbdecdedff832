"""A UDP endpoint that knows which interface each datagram came in on, and answers out of it.

With IP_PKTINFO the kernel hands every received datagram's `struct in_pktinfo` over as
ancillary data: the receiving interface's index, the local address it would answer from
(ipi_spec_dst) and the header's destination address (ipi_addr, 255.255.255.255 for a
broadcast). Passing an in_pktinfo back to sendmsg pins the outgoing interface and source
address: a broadcast reply then leaves by the interface the request came in on, whatever
the routing table says, and needs no route at all. Linux only.

Sends report their error to the caller instead of swallowing it, so that the caller can
count and log a reply that never left.
"""

from __future__ import annotations

import asyncio
import functools
import socket
import struct
from collections.abc import Callable
from typing import NamedTuple

__all__ = ["IN_PKTINFO", "IP_PKTINFO", "PacketInfo", "PktinfoEndpoint", "enable_pktinfo"]

IP_PKTINFO = 8  # linux/in.h; Python 3.11's socket module has no name for it
IN_PKTINFO = struct.Struct("=i4s4s")  # linux/in.h: int ipi_ifindex; in_addr ipi_spec_dst, ipi_addr
_ANCILLARY_SIZE = socket.CMSG_SPACE(IN_PKTINFO.size)
_ANY = b"\0\0\0\0"

Address = tuple[str, int]


class PacketInfo(NamedTuple):
    """Where a datagram came in: the interface index, the local address the kernel would answer
    from, and the destination address in its IP header. (A tuple: one is made per datagram.)"""

    ifindex: int
    local: str
    destination: str


DatagramHandler = Callable[[bytes, Address, PacketInfo | None], None]


def enable_pktinfo(sock: socket.socket) -> None:
    sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)


def _packet_info(ancillary: list[tuple[int, int, bytes]]) -> PacketInfo | None:
    for level, kind, data in ancillary:
        if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(data) >= IN_PKTINFO.size:
            return _decode_pktinfo(data[: IN_PKTINFO.size])
    return None


@functools.lru_cache(maxsize=1024)
def _decode_pktinfo(raw: bytes) -> PacketInfo:
    # A host has a handful of (interface, address) pairs: decode each once, not per datagram.
    ifindex, local, destination = IN_PKTINFO.unpack(raw)
    return PacketInfo(ifindex, socket.inet_ntoa(local), socket.inet_ntoa(destination))


class PktinfoEndpoint:
    """One UDP socket with IP_PKTINFO, drained in bounded batches by the running loop."""

    def __init__(self, sock: socket.socket, on_datagram: DatagramHandler, max_batch: int = 64) -> None:
        enable_pktinfo(sock)
        sock.setblocking(False)
        self.sock = sock
        self.on_datagram = on_datagram
        self.max_batch = max_batch
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(sock.fileno(), self._readable)
        self._closed = False

    @property
    def address(self) -> Address:
        host, port = self.sock.getsockname()
        return str(host), int(port)

    def _readable(self) -> None:
        for _ in range(self.max_batch):
            try:
                data, ancillary, _, peer = self.sock.recvmsg(65536, _ANCILLARY_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                # A pending socket error (rare: an unconnected socket without IP_RECVERR gets no
                # ICMP errors) belongs to no datagram: go on with the next one.
                if self._closed:
                    return
                continue
            self.on_datagram(data, (str(peer[0]), int(peer[1])), _packet_info(ancillary))
            if self._closed:
                return

    def send(self, data: bytes, address: Address, ifindex: int = 0, source: str = "") -> OSError | None:
        """Send one datagram, out of interface `ifindex` (0: as routed) from `source` (empty: the
        kernel's choice); returns the error when it was not sent, None when it was."""
        control = []
        if ifindex or source:
            spec_dst = socket.inet_aton(source) if source else _ANY
            control.append((socket.IPPROTO_IP, IP_PKTINFO, IN_PKTINFO.pack(ifindex, spec_dst, _ANY)))
        try:
            self.sock.sendmsg([data], control, 0, address)
        except OSError as error:
            return error
        return None

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._loop.remove_reader(self.sock.fileno())
            self.sock.close()
