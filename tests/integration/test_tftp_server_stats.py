"""The TFTP service run in-process: the counters kept for the metrics endpoint."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

from support.tftp import exchange, fetch

from pvsd.config import TftpConfig
from pvsd.log import get_logger
from pvsd.tftp.codec import ReadRequest, WriteRequest, encode
from pvsd.tftp.server import TftpServer


def send(address: tuple[str, int], datagram: bytes) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(datagram, address)


def test_counters_follow_what_happened(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(os.urandom(100_000))
    config = TftpConfig(root=str(tmp_path), port=0, bind="127.0.0.1", max_transfers=10)

    async def scenario() -> TftpServer:
        server = TftpServer.from_config(config, get_logger("test"))
        server.registry.publish("gen.txt", b"generated\n")
        await server.start()
        address = server.address
        try:
            content, _ = await asyncio.to_thread(
                fetch, address, "file", (("blksize", "1468"), ("windowsize", "8"))
            )
            assert len(content) == 100_000
            assert (await asyncio.to_thread(fetch, address, "gen.txt"))[0] == b"generated\n"
            await asyncio.to_thread(exchange, address, encode(ReadRequest("../x", "octet")))
            await asyncio.to_thread(exchange, address, encode(WriteRequest("x", "octet")))
            await asyncio.to_thread(send, address, b"\x00\x01broken")  # malformed: dropped unanswered
            for _ in range(100):
                if server.stats.active == 0 and server.stats.malformed:
                    break
                await asyncio.sleep(0.02)
        finally:
            await server.close()
        return server

    server = asyncio.run(scenario())
    stats = server.stats
    assert (stats.requests, stats.completed, stats.failed, stats.active) == (3, 2, 0, 0)
    assert stats.bytes_sent == 100_000 + len(b"generated\n")
    assert stats.refused == 2 and stats.malformed == 1
    assert stats.refusals == {"parent directory (..) in file name": 1, "write requests are not allowed": 1}
