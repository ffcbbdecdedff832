"""Spoofed UDP on loopback, and counting what goes by: for the reflection tests (root only).

A raw socket with IP_HDRINCL writes the IPv4 header itself, so a datagram can claim any
127.x source, as an attacker on a LAN could claim another server's. An AF_PACKET socket on
`lo` sees every datagram between two loopback ports, which is how a test tells one packet
from an endless exchange.
"""

from __future__ import annotations

import socket
import struct
import time

from pvsd.stream.wire import MessageType
from support import needs

Address = tuple[str, int]
ETH_P_ALL = 0x0003
_IP = struct.Struct("!BBHHHBBH4s4s")
_UDP = struct.Struct("!HHHH")


def send_spoofed(source: Address, destination: Address, payload: bytes) -> None:
    needs.root("raw sockets")
    length = _IP.size + _UDP.size + len(payload)
    ip = _IP.pack(
        0x45, 0, length, 0, 0, 64, socket.IPPROTO_UDP, 0,
        socket.inet_aton(source[0]), socket.inet_aton(destination[0]),
    )  # fmt: skip
    udp = _UDP.pack(source[1], destination[1], _UDP.size + len(payload), 0)  # checksum 0: none (RFC 768)
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW) as raw:
        raw.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
        raw.sendto(ip + udp + payload, (destination[0], 0))


class LoopbackSniffer:
    """Every UDP datagram on `lo` from or to one of `ports` (but the servers' heartbeats to each
    other), as (source, destination, payload length), in `seen`, collected while `drain` runs.
    Use it in a `with` block."""

    def __init__(self, ports: set[int]) -> None:
        needs.root("packet sockets")
        self.ports = ports
        self.seen: list[tuple[Address, Address, int]] = []
        self._socket = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        self._socket.bind(("lo", 0))
        self._socket.settimeout(0.05)

    def __enter__(self) -> LoopbackSniffer:
        return self

    def __exit__(self, *_: object) -> None:
        self._socket.close()

    def drain(self, seconds: float) -> list[tuple[Address, Address, int]]:
        """Read for `seconds` (bounded) and return everything seen so far."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                frame, meta = self._socket.recvfrom(65536)
            except TimeoutError:
                continue
            if meta[2] == socket.PACKET_OUTGOING:
                continue  # loopback shows each datagram twice: going out and coming in
            self._note(frame[14:])  # lo frames carry a zeroed Ethernet header
        return self.seen

    def _note(self, ip: bytes) -> None:
        if len(ip) < 28 or ip[0] >> 4 != 4 or ip[9] != socket.IPPROTO_UDP:
            return
        header = (ip[0] & 0x0F) * 4
        sport, dport, length, _ = _UDP.unpack(ip[header : header + 8])
        payload = ip[header + 8 :]
        if len(payload) > 3 and payload[3] == MessageType.PEER_HEARTBEAT:
            return  # the servers' own heartbeats to each other, never answered: not traffic under test
        if sport in self.ports or dport in self.ports:
            source = (socket.inet_ntoa(ip[12:16]), sport)
            destination = (socket.inet_ntoa(ip[16:20]), dport)
            self.seen.append((source, destination, length - _UDP.size))
