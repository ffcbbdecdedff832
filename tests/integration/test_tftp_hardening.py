"""The TFTP service in-process against a hostile client: bounded counters, replies that reveal no
path and are no larger than what caused them, no answers to what only a server sends, per-client
limits and slots kept for the generated boot files.

Spoofed datagrams (another server's address as the source) are sent through a raw socket, so
those tests need root.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
from support import needs
from support.tftp import Address, fetch

from pvsd.config import TftpConfig
from pvsd.log import get_logger
from pvsd.net.udp import UdpEndpoint
from pvsd.tftp.codec import (
    Ack,
    Data,
    Error,
    ErrorCode,
    OptionAck,
    ReadRequest,
    Refusal,
    WriteRequest,
    decode,
    encode,
)
from pvsd.tftp.server import TftpServer, TftpStats

T = TypeVar("T")
HOST = "127.0.0.1"
BOOTSTRAP = b"#!pvsd-bootstrap\n" * 20


class Running:
    """A TftpServer on its own event loop in a thread, so the test can use blocking sockets."""

    def __init__(self, server: TftpServer, loop: asyncio.AbstractEventLoop) -> None:
        self.server = server
        self.loop = loop

    @property
    def address(self) -> Address:
        return self.server.address

    def call(self, function: Callable[[], T]) -> T:
        async def run() -> T:
            return function()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(5)

    def stats(self) -> TftpStats:
        def copy() -> TftpStats:
            stats = self.server.stats
            return dataclasses.replace(stats, refusals=dict(stats.refusals), dropped=dict(stats.dropped))

        return self.call(copy)


@contextmanager
def running(config: TftpConfig, published: dict[str, bytes] | None = None) -> Iterator[Running]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = TftpServer.from_config(config, get_logger("test"))
    for name, data in (published or {}).items():
        server.registry.publish(name, data)
    try:
        asyncio.run_coroutine_threadsafe(server.start(), loop).result(5)
        yield Running(server, loop)
    finally:
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    root.mkdir()
    (root / "file").write_bytes(bytes(range(256)) * 400)  # 102,400 bytes
    (root / "big").write_bytes(bytes(range(256)) * 16_384)  # 4 MiB
    (root / "folder").mkdir()
    (root / "loop").symlink_to(root / "loop")
    return root


def config_for(root: Path, **keys: Any) -> TftpConfig:
    return TftpConfig(root=str(root), port=0, bind=HOST, ipxe_dir="", **keys)


def replies(
    server: Address, datagram: bytes, wait: float = 0.3, source: str = HOST
) -> tuple[list[bytes], socket.socket]:
    """Send one datagram from a fresh socket and collect every datagram that comes back within `wait`.
    The socket is returned open: a closed one would make the server's resends fail at once."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((source, 0))
    sock.sendto(datagram, server)
    return collect(sock, wait), sock


def collect(sock: socket.socket, wait: float) -> list[bytes]:
    out = []
    deadline = time.monotonic() + wait
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            out.append(sock.recv(65536))
        except TimeoutError:
            break
    return out


def ask(server: Address, datagram: bytes, source: str = HOST) -> tuple[bytes | None, socket.socket]:
    """Send one datagram from a fresh port of `source`; the first answer (None: none within 1 s).
    The socket is returned open: a closed one would end the server's transfer at its first resend."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((source, 0))
    sock.settimeout(1.0)
    sock.sendto(datagram, server)
    try:
        return sock.recv(65536), sock
    except TimeoutError:
        return None, sock


def spoof(source: Address, target: Address, payload: bytes) -> None:
    """A UDP datagram to `target` that claims to come from `source` (raw socket, root only)."""
    length = 8 + len(payload)
    udp = struct.pack("!HHHH", source[1], target[1], length, 0) + payload  # checksum 0: none (IPv4)
    ip = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + length,
        0,
        0x4000,
        64,
        socket.IPPROTO_UDP,
        0,  # the kernel fills in the header checksum
        socket.inet_aton(source[0]),
        socket.inet_aton(target[0]),
    )
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW) as raw:
        raw.sendto(ip + udp, (target[0], 0))


# -- 1. bounded counters and replies that name no path ----------------------------------------------


def test_refusals_are_counted_by_a_fixed_set_of_reasons_however_many_names(root: Path) -> None:
    """The hostile tryout: 3,000 unique 60 kB names grew the counters by one key each."""
    with running(config_for(root)) as server:
        for index in range(200):
            name = f"{index:05d}" + "A" * 60_000
            reply, sock = ask(server.address, encode(ReadRequest(name, "octet")))
            sock.close()
            assert reply is not None and len(reply) < 100
        for name in ("missing", "../x", "folder", "loop"):
            ask(server.address, encode(ReadRequest(name, "octet")))[1].close()
        stats = server.stats()
    assert stats.refusals == {
        "file name too long": 200,
        "no such file": 1,
        "parent directory (..) in file name": 1,
        "not a regular file (directory, device or fifo)": 1,
        "file name cannot be resolved": 1,
    }
    assert set(stats.refusals) <= {refusal.value for refusal in Refusal}


@pytest.mark.parametrize(
    "request_",
    [
        ReadRequest("A" * 60_000, "octet"),
        ReadRequest("B" * 300, "octet"),
        ReadRequest("loop", "octet"),
        ReadRequest("missing", "octet"),
        ReadRequest("folder", "octet"),
        ReadRequest("../../etc/passwd", "octet"),
        ReadRequest("file", "mail"),
        ReadRequest("file", ""),
        WriteRequest("new", "octet"),
        WriteRequest("x", ""),
    ],
    ids=lambda r: f"{type(r).__name__}-{r.filename[:12]}-{r.mode}",
)
def test_an_error_reply_names_no_server_path_and_is_no_larger_than_the_request(
    root: Path, request_: ReadRequest | WriteRequest
) -> None:
    datagram = encode(request_)
    with running(config_for(root)) as server:
        reply, sock = ask(server.address, datagram)
        sock.close()
    assert reply is not None
    packet = decode(reply)
    assert isinstance(packet, Error)
    assert str(root) not in packet.message and str(root.parent) not in packet.message
    assert len(reply) <= len(datagram), (len(reply), len(datagram), packet)
    assert packet.message in {refusal.value[: len(packet.message)] for refusal in Refusal}


@pytest.mark.parametrize(
    "datagram",
    [
        b"\x00\x01",
        b"\x00\x01no-terminator",
        b"\x00\x01file\x00octet",
        b"\x00\x01file\x00octet\x00blksize\x00",
        b"\x00\x02x",
        b"\x00\x01" + b"A" * 65_000,
    ],
)
def test_a_malformed_request_is_dropped_without_an_answer_and_counted(root: Path, datagram: bytes) -> None:
    """The hostile tryout: malformed RRQs got ERRORs 3-5 times their size."""
    with running(config_for(root)) as server:
        got, sock = replies(server.address, datagram)
        sock.close()
        stats = server.stats()
    assert got == []
    assert stats.malformed == 1 and stats.refused == 0


# -- 2. a flood of never-acknowledged requests cannot lock targets out -------------------------------


def flood(
    stack: ExitStack, server: Address, count: int, source: str, name: str = "file"
) -> tuple[int, list[str]]:
    """`count` requests from as many ports of `source`, never acknowledged: how many were admitted,
    and the messages of the refusals (each an error 3)."""
    admitted = 0
    refusals = []
    for _ in range(count):
        reply, sock = ask(server, encode(ReadRequest(name, "octet")), source)
        stack.callback(sock.close)
        packet = decode(reply) if reply is not None else None
        if isinstance(packet, Data):
            admitted += 1
        else:
            assert isinstance(packet, Error) and packet.code == ErrorCode.DISK_FULL, packet
            refusals.append(packet.message)
    return admitted, refusals


def test_one_address_gets_at_most_max_per_client_transfers(root: Path) -> None:
    config = config_for(root, max_transfers=50, max_per_client=4)
    with running(config) as server, ExitStack() as stack:
        admitted, _ = flood(stack, server.address, 12, "127.0.0.2")
        assert admitted == 4
        content, _ = fetch(server.address, "file")  # another address is not held back
        assert len(content) == 102_400
        stats = server.stats()
    assert stats.refusals == {"too many transfers from this client": 8}
    assert stats.busy == 8


def test_reserved_slots_keep_the_generated_boot_files_served_when_the_rest_are_taken(root: Path) -> None:
    config = config_for(
        root, max_transfers=12, max_per_client=4, reserved_transfers=4, first_block_timeout=2.0
    )
    with running(config, {"pvs.bootstrap": BOOTSTRAP}) as server, ExitStack() as stack:
        admitted = 0
        for host in range(2, 7):  # 5 addresses x 4 would be 20: the 12 ordinary slots fill up
            admitted += flood(stack, server.address, 4, f"127.0.0.{host}")[0]
        assert admitted == 12
        admitted, (message,) = flood(stack, server.address, 1, "127.0.0.9")
        assert admitted == 0 and message and "server busy".startswith(message)  # cut to the request's size
        assert flood(stack, server.address, 3, "127.0.0.9", "pvs.bootstrap") == (3, [])  # the reserve
        content, _ = fetch(server.address, "/pvs.bootstrap", timeout=0.5)  # the reserve's last slot
        assert content == BOOTSTRAP
        # first_block_timeout frees the flood's slots: an ordinary file is served again
        deadline = time.monotonic() + 5
        while server.stats().active:
            assert time.monotonic() < deadline, server.stats()
            time.sleep(0.05)
        assert len(fetch(server.address, "file", timeout=1)[0]) == 102_400
        stats = server.stats()
    assert stats.unacknowledged == 12 + 3
    assert stats.refusals == {"server busy": 8 + 1}


# -- 3. amplification ----------------------------------------------------------------------------------


def test_a_thousand_duplicated_options_get_an_oack_of_each_option_once(root: Path) -> None:
    request = encode(ReadRequest("file", "octet", (("tsize", "0"),) * 1000 + (("blksize", "1024"),) * 10))
    assert len(request) > 8000
    with running(config_for(root, timeout=0.2)) as server:
        got, sock = replies(server.address, request, wait=2.0)
        sock.close()
    assert {decode(d) for d in got} == {OptionAck((("tsize", "102400"), ("blksize", "1024")))}
    assert 1 <= len(got) <= 4  # sent, and resent at most three times
    assert all(len(d) < 40 for d in got) and sum(len(d) for d in got) < len(request) // 50


def test_single_port_a_request_and_a_guessed_ack_draw_one_window_and_few_resends(root: Path) -> None:
    """A spoofer's RRQ plus a blind ACK 0 (at the well-known port, single-port mode): the first
    window goes out, is resent at most three times, and the transfer is dropped at
    first_block_timeout, not after abandon_after."""
    config = config_for(root, single_port=True, timeout=0.25, first_block_timeout=1.5, abandon_after=30.0)
    options = (("blksize", "8192"), ("windowsize", "16"))
    with running(config) as server:
        oack, sock = ask(server.address, encode(ReadRequest("big", "octet", options)))
        assert oack is not None and decode(oack) == OptionAck(options)
        sock.sendto(encode(Ack(0)), server.address)
        sock.sendto(encode(Ack(40)), server.address)  # a guess past what was sent: ignored
        got = collect(sock, 4.0)
        sock.close()
    datagrams = [decode(d) for d in got]
    window = list(range(1, 17))
    assert [p.block for p in datagrams if isinstance(p, Data)] in [window * n for n in (2, 3, 4)]
    assert not [p for p in datagrams if not isinstance(p, Data)]  # no parting ERROR to an unproven address


# -- 4. reflection: never answer what only a server sends ----------------------------------------------


SERVER_PACKETS = {
    "ERROR": encode(Error(ErrorCode.UNKNOWN_TID, "unknown transfer ID")),
    "DATA": encode(Data(1, b"x" * 512)),
    "OACK": encode(OptionAck((("blksize", "1468"),))),
    "ACK": encode(Ack(3)),
}


def test_errors_and_server_packets_at_the_service_port_are_dropped_and_counted(root: Path) -> None:
    for single_port in (False, True):
        with running(config_for(root, single_port=single_port)) as server:
            for datagram in SERVER_PACKETS.values():
                got, sock = replies(server.address, datagram)
                sock.close()
                assert got == []
            stats = server.stats()
        assert stats.dropped == {
            "ERROR at the service port": 1,
            "DATA or OACK at the service port": 2,
            "ACK of no transfer": 1,
        }


@pytest.mark.parametrize("single_port", [False, True], ids=["own-port", "single-port"])
@pytest.mark.parametrize("kind", ["ERROR", "DATA", "OACK"])
def test_a_transfer_never_answers_an_error_or_a_server_packet(
    root: Path, single_port: bool, kind: str
) -> None:
    with (
        running(config_for(root, single_port=single_port)) as server,
        socket.socket(type=socket.SOCK_DGRAM) as sock,
    ):
        sock.bind((HOST, 0))
        sock.settimeout(1.0)
        sock.sendto(encode(ReadRequest("big", "octet")), server.address)
        first, transfer_port = sock.recvfrom(65536)
        assert isinstance(decode(first), Data)
        assert (transfer_port == server.address) is single_port
        sock.sendto(SERVER_PACKETS[kind], transfer_port)
        after = collect(sock, 0.5)
        assert after == [], [decode(d) for d in after]
        assert server.stats().active == 0  # the transfer ended, silently


def test_an_error_spoofed_from_a_reflecting_peer_starts_no_ping_pong(root: Path) -> None:
    """The peer is a socket that answers everything with an ERROR (as some servers answer stray
    packets). Packets that claim to come from it reach pvsd; pvsd must not answer any of them, or
    the two would bounce ERRORs forever."""
    needs.root("sending datagrams with a spoofed source address (raw socket)")
    with (
        running(config_for(root, single_port=True)) as server,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer,
    ):
        peer.bind(("127.0.0.31", 0))
        peer_address = peer.getsockname()
        for datagram in [*SERVER_PACKETS.values(), b"\x00\x01malformed", b"\x00\x05"]:
            spoof(peer_address, server.address, datagram)
        received = 0
        deadline = time.monotonic() + 1.0
        while (left := deadline - time.monotonic()) > 0:
            peer.settimeout(left)
            try:
                _, source = peer.recvfrom(65536)
            except TimeoutError:
                break
            received += 1
            peer.sendto(encode(Error(ErrorCode.ILLEGAL_OPERATION, "illegal TFTP operation")), source)
        stats = server.stats()
    assert received == 0
    assert sum(stats.dropped.values()) == 4 and stats.malformed == 2


def test_two_servers_fooled_into_serving_each_other_stop_at_once(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Single-port servers A and B each get a read request spoofed from the other: each sends its
    first DATA to the other's service port. Neither may answer the other's DATA (before: ERROR 4,
    which ended the other's transfer with one more datagram)."""
    needs.root("sending datagrams with a spoofed source address (raw socket)")
    sent: list[tuple[Address, bytes]] = []
    real_send, real_send_many = UdpEndpoint.send, UdpEndpoint.send_many
    inside_send_many = [False]  # send_many calls send for some datagrams: count those once

    def send(self: UdpEndpoint, data: bytes, address: Address | None = None) -> None:
        if not inside_send_many[0]:
            sent.append((self.address, data))
        real_send(self, data, address)

    def send_many(self: UdpEndpoint, datagrams: Any, address: Address | None = None) -> None:
        sent.extend((self.address, data) for data in datagrams)
        inside_send_many[0] = True
        try:
            real_send_many(self, datagrams, address)
        finally:
            inside_send_many[0] = False

    monkeypatch.setattr(UdpEndpoint, "send", send)
    monkeypatch.setattr(UdpEndpoint, "send_many", send_many)
    config = config_for(root, single_port=True, timeout=0.2, first_block_timeout=1.0)
    a_config = dataclasses.replace(config, bind="127.0.0.41")
    b_config = dataclasses.replace(config, bind="127.0.0.42")
    with running(a_config) as a, running(b_config) as b:
        spoof(b.address, a.address, encode(ReadRequest("file", "octet")))
        spoof(a.address, b.address, encode(ReadRequest("file", "octet")))
        time.sleep(2.0)
        a_stats, b_stats = a.stats(), b.stats()
    errors = [decode(data) for _, data in sent if isinstance(decode(data), Error)]
    assert errors == []
    assert len(sent) <= 2 * 4  # each side's first block, resent at most three times
    assert a_stats.active == b_stats.active == 0
