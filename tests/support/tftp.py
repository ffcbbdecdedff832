"""A minimal TFTP client for protocol-level checks (real clients are used for transfers), and a
worker process for the worker pipe's tests."""

from __future__ import annotations

import socket
import time
from multiprocessing.connection import Connection

from pvsd.processes import run_worker, serve_main_process
from pvsd.tftp.codec import Ack, Data, Error, OptionAck, Packet, ReadRequest, decode, encode

Address = tuple[str, int]


def exchange(server: Address, datagram: bytes, timeout: float = 3.0) -> tuple[Packet, Address]:
    """Send one datagram to the server and return the first reply and where it came from."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.bind(("127.0.0.1", 0))
        sock.sendto(datagram, server)
        data, source = sock.recvfrom(65536)
        return decode(data), source


def fetch(
    server: Address,
    name: str,
    options: tuple[tuple[str, str], ...] = (),
    mode: str = "octet",
    timeout: float = 5.0,
) -> tuple[bytes, Address]:
    """A lockstep download (it acks every block); returns the content and the transfer's address."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.bind(("127.0.0.1", 0))
        sock.sendto(encode(ReadRequest(name, mode, options)), server)
        blksize = int(dict(options).get("blksize", "512"))
        content = bytearray()
        expected = 1
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            data, source = sock.recvfrom(65536)
            packet = decode(data)
            if isinstance(packet, Error):
                raise RuntimeError(f"TFTP error {packet.code}: {packet.message}")
            if isinstance(packet, OptionAck):
                blksize = int(dict(packet.options).get("blksize", blksize))
                sock.sendto(encode(Ack(0)), source)
                continue
            assert isinstance(packet, Data)
            if packet.block == expected & 0xFFFF:
                content += packet.data
                expected += 1
            sock.sendto(encode(Ack(packet.block)), source)
            if packet.block == (expected - 1) & 0xFFFF and len(packet.data) < blksize:
                return bytes(content), source
        raise TimeoutError("transfer did not finish")


def wait_until_serving(server: Address, timeout: float = 20.0) -> None:
    """Poll with a request for pvs.bootstrap until the server answers."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            fetch(server, "pvs.bootstrap", timeout=0.5)
            return
        except (OSError, RuntimeError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def oversized_report_worker(size: int, level: str, fmt: str, connection: Connection) -> None:
    """A worker process (pvsd.processes) that reports `size` bytes every 0.2 s: more than a pipe
    holds at once, as a TFTP worker's counters were when they held a 60 kB file name."""
    run_worker("test", level, fmt, lambda _: serve_main_process(connection, 0.2, lambda: b"r" * size))
