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
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
from support.tftp import Address

from pvsd.config import TftpConfig
from pvsd.log import get_logger
from pvsd.tftp.codec import (
    Error,
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
