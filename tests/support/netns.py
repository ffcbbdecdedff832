"""Network namespaces for the proxy DHCP tests: veth links, sockets opened inside a namespace,
frames sent and sniffed on a link, and a DhcpServer run in-process inside a namespace.

Every namespace is named after this process (pvsdt<pid>-N-role), created by the test that uses
it and deleted in `finally`, even on failure; the addresses inside are private (10.91.0.0/16)
and nothing touches the host's own namespace. A socket is opened inside a namespace by a
short-lived thread that enters it with setns(2), which moves only the calling thread, so the
test process itself never leaves its namespace; a socket keeps the namespace it was made in.

Clients send whole IPv4 packets through AF_PACKET sockets, so a test can send exactly what a
PXE ROM sends (source 0.0.0.0, broadcast) or spoof any source, and sniffers on the client
links see every IPv4 frame pvsd sends, whatever its destination address or port.
"""

from __future__ import annotations

import asyncio
import ctypes
import itertools
import json
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pvsd.lab.network import delete_namespace, new_namespace, run, set_sysctl
from support import needs

T = TypeVar("T")

CLONE_NEWNET = 0x40000000
ETH_P_IP = 0x0800
PACKET_OUTGOING = 4
BROADCAST_MAC = b"\xff" * 6
_LIBC = ctypes.CDLL(None, use_errno=True)
_counter = itertools.count()


def in_namespace(namespace: str, function: Callable[[], T]) -> T:
    """Run `function` in a fresh thread inside `namespace` and return what it returned."""
    outcome: dict[str, Any] = {}

    def enter_and_run() -> None:
        try:
            fd = os.open(f"/run/netns/{namespace}", os.O_RDONLY)
            try:
                if _LIBC.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns into {namespace}")
            finally:
                os.close(fd)
            outcome["value"] = function()
        except BaseException as error:  # handed to the caller's thread
            outcome["error"] = error

    thread = threading.Thread(target=enter_and_run, name=f"in-{namespace}")
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]  # type: ignore[no-any-return]


def ip_checksum(header: bytes) -> int:
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def udp_packet(source: tuple[str, int], destination: tuple[str, int], payload: bytes) -> bytes:
    """An IPv4 packet carrying one UDP datagram (UDP checksum 0: none, allowed over IPv4)."""
    udp = struct.pack("!HHHH", source[1], destination[1], 8 + len(payload), 0) + payload
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(udp),
        0,
        0x4000,  # don't fragment
        64,
        socket.IPPROTO_UDP,
        0,
        socket.inet_aton(source[0]),
        socket.inet_aton(destination[0]),
    )
    header = header[:10] + struct.pack("!H", ip_checksum(header)) + header[12:]
    return header + udp


@dataclass(frozen=True)
class Frame:
    """One UDP datagram seen on a link."""

    source: tuple[str, int]
    destination: tuple[str, int]
    payload: bytes = field(repr=False)
    link: str = ""


def parse_udp(packet: bytes, link: str) -> Frame | None:
    if len(packet) < 28 or packet[0] >> 4 != 4 or packet[9] != socket.IPPROTO_UDP:
        return None
    ihl = (packet[0] & 0x0F) * 4
    sport, dport, length = struct.unpack("!HHH", packet[ihl : ihl + 6])
    return Frame(
        (socket.inet_ntoa(packet[12:16]), sport),
        (socket.inet_ntoa(packet[16:20]), dport),
        packet[ihl + 8 : ihl + length],
        link,
    )


class Link:
    """One client end of a veth: sends raw IPv4 packets and sniffs every IPv4 frame arriving."""

    def __init__(self, namespace: str, device: str, peer_mac: bytes) -> None:
        self.namespace = namespace
        self.device = device
        self.peer_mac = peer_mac  # the server side's MAC, for unicast frames

        def open_socket() -> socket.socket:
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_IP))
            sock.bind((device, ETH_P_IP))
            sock.setblocking(False)
            return sock

        self.sock = in_namespace(namespace, open_socket)
        self.seen: list[Frame] = []

    def send(self, source: tuple[str, int], destination: tuple[str, int], payload: bytes) -> None:
        mac = BROADCAST_MAC if destination[0] == "255.255.255.255" else self.peer_mac
        self.sock.sendto(udp_packet(source, destination, payload), (self.device, ETH_P_IP, 0, 0, mac))

    def drain(self) -> list[Frame]:
        """Every UDP frame that arrived since the last drain (the link's own sends left out)."""
        fresh: list[Frame] = []
        while True:
            try:
                packet, address = self.sock.recvfrom(65536)
            except BlockingIOError:
                break
            if address[2] == PACKET_OUTGOING:
                continue
            frame = parse_udp(packet, self.device)
            if frame is not None:
                fresh.append(frame)
        self.seen.extend(fresh)
        return fresh

    def wait(self, predicate: Callable[[list[Frame]], bool], timeout: float) -> list[Frame]:
        """Drain until `predicate(all frames seen so far)` holds or `timeout` passes."""
        deadline = time.monotonic() + timeout
        while True:
            self.drain()
            if predicate(self.seen) or time.monotonic() > deadline:
                return self.seen
            time.sleep(0.02)

    def close(self) -> None:
        self.sock.close()


@dataclass
class TwoNetworks:
    """A server namespace on two networks, one client namespace on each:

    server: s1 10.91.1.1/24 <-> c1 10.91.1.2/24 (client1), s2 10.91.2.1/24 <-> c2 10.91.2.2/24 (client2)
    """

    server: str
    client1: str
    client2: str
    links: dict[str, Link] = field(default_factory=dict)

    def link(self, name: str) -> Link:
        return self.links[name]

    def ip(self, namespace: str, *argv: str) -> str:
        return run(["ip", "-n", namespace, *argv])


SERVER_1, CLIENT_1, SERVER_2, CLIENT_2 = "10.91.1.1", "10.91.1.2", "10.91.2.1", "10.91.2.2"
GATEWAY_1 = "10.91.1.254"  # the server's default route, when it has one; answered by client1


def _mac(namespace: str, device: str) -> bytes:
    shown = json.loads(run(["ip", "-n", namespace, "-j", "link", "show", device]))
    return bytes.fromhex(shown[0]["address"].replace(":", ""))


@contextmanager
def two_networks(default_route: bool, client1_extra: tuple[str, ...] = ()) -> Iterator[TwoNetworks]:
    """Build the namespaces; always delete them. `default_route`: the server routes 0/0 via
    GATEWAY_1 on network 1 (client1 answers ARP for it, so what is routed there is seen there).
    `client1_extra`: more addresses for client1 (victims whose frames the sniffer should see)."""
    needs.root("network namespaces")
    needs.tools(("ip", "iproute2"))
    tag = f"pvsdt{os.getpid()}-{next(_counter)}"
    lab = TwoNetworks(f"{tag}-srv", f"{tag}-c1", f"{tag}-c2")
    made: list[str] = []
    try:
        for namespace in (lab.server, lab.client1, lab.client2):
            new_namespace(namespace)
            made.append(namespace)
        # Spoofed sources must reach pvsd: no reverse-path filter in the server namespace.
        for key in ("all", "default"):
            set_sysctl(lab.server, f"net.ipv4.conf.{key}.rp_filter", "0")
        for number, client in ((1, lab.client1), (2, lab.client2)):
            lab.ip(lab.server, "link", "add", f"s{number}", "type", "veth", "peer", "name", f"c{number}")
            lab.ip(lab.server, "link", "set", f"c{number}", "netns", client)
            lab.ip(lab.server, "address", "add", f"10.91.{number}.1/24", "dev", f"s{number}")
            lab.ip(client, "address", "add", f"10.91.{number}.2/24", "dev", f"c{number}")
            lab.ip(lab.server, "link", "set", f"s{number}", "up")
            lab.ip(client, "link", "set", f"c{number}", "up")
        for extra in (GATEWAY_1, *client1_extra):
            lab.ip(lab.client1, "address", "add", f"{extra}/24", "dev", "c1")
        if default_route:
            lab.ip(lab.server, "route", "add", "default", "via", GATEWAY_1, "dev", "s1")
        for number, client in ((1, lab.client1), (2, lab.client2)):
            lab.links[f"c{number}"] = Link(client, f"c{number}", _mac(lab.server, f"s{number}"))
        yield lab
    finally:
        for link in lab.links.values():
            link.close()
        for namespace in reversed(made):
            delete_namespace(namespace)
        left = [name for name in made if Path(f"/run/netns/{name}").exists()]
        assert not left, f"namespaces left behind: {left}"


class ServerThread:
    """A DhcpServer on its own event loop in a thread inside a namespace (started and stopped here)."""

    def __init__(self, namespace: str, make: Callable[[], Any]) -> None:
        self.namespace = namespace
        self.make = make  # called inside the namespace, on the loop: returns the DhcpServer
        self.server: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"dhcp-in-{namespace}")

    def _run(self) -> None:
        try:
            in_namespace(self.namespace, lambda: asyncio.run(self._main()))
        except BaseException as error:
            self._error = error
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self.server = self.make()
        await self.server.start()
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await self.server.close()

    def __enter__(self) -> Any:
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise self._error
        return self.server

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
        if self._error is not None and exc[0] is None:
            raise self._error

    def call(self, function: Callable[[], T]) -> T:
        """Run `function` on the server's loop (to read state consistently)."""
        if self._loop is None:
            raise RuntimeError("not started")
        return asyncio.run_coroutine_threadsafe(_call(function), self._loop).result(5)


async def _call(function: Callable[[], T]) -> T:
    return function()
