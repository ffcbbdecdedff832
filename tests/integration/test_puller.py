"""The puller against a peer that misbehaves at random (a real aiohttp server in this process):
cut bodies, flipped bytes, errors. The copy ends right, no bad chunk is ever kept, the image
never exists before it is whole, and a pull cancelled at random points (a crash) resumes."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import structlog
from aiohttp import web

from pvsd.vdisk import puller
from pvsd.vdisk.chunks import IndexBuilder, encode_index
from pvsd.vdisk.image import image_path, read_sidecar
from pvsd.vdisk.puller import Peer, pull_version

CHUNK = 1 << 20
SIZE = 24 * CHUNK + 12345 * 512


class FlakyPeer:
    """Serves one version; each chunk request fails one way or another with `fault` odds."""

    def __init__(self, data: bytes, fault: float, seed: int) -> None:
        self.data = data
        builder = IndexBuilder(4 << 20)
        builder.feed(data)
        self.index = builder.finish()
        self.fault = fault
        self.random = random.Random(seed)
        self.served = 0

    async def index_route(self, request: web.Request) -> web.Response:
        return web.Response(body=encode_index(self.index), content_type="application/json")

    async def chunk_route(self, request: web.Request) -> web.StreamResponse:
        offset, length = self.index.span(int(request.match_info["n"]))
        body = self.data[offset : offset + length]
        roll = self.random.random()
        if roll < self.fault / 3:
            return web.Response(status=503, text="busy")
        if roll < 2 * self.fault / 3:
            flipped = bytearray(body)
            flipped[self.random.randrange(len(body))] ^= 0x40
            return web.Response(body=bytes(flipped))
        if roll < self.fault:
            response = web.StreamResponse(headers={"Content-Length": str(len(body))})
            await response.prepare(request)
            await response.write(body[: self.random.randrange(len(body))])
            assert request.transport is not None
            request.transport.close()  # the connection dies mid-body
            return response
        self.served += 1
        return web.Response(body=body)


@contextlib.asynccontextmanager
async def served(flaky: FlakyPeer) -> AsyncIterator[str]:
    """The peer on a free loopback port, for as long as the block runs."""
    app = web.Application()
    app.add_routes(
        [
            web.get("/replication/lab/1/index", flaky.index_route),
            web.get("/replication/lab/1/chunks/{n}", flaky.chunk_route),
        ]
    )
    runner = web.AppRunner(app)
    await runner.setup()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def _pull(
    flaky: FlakyPeer, base: str, store: Path, session: aiohttp.ClientSession
) -> puller.PullResult:
    peers = [Peer("flaky", base)]
    return await pull_version(
        store, "lab", 1, flaky.index.sha256, SIZE, peers, session, structlog.get_logger()
    )


def test_a_flaky_peer_still_gives_the_right_image_and_nothing_early(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flaky = FlakyPeer(random.Random(7).randbytes(SIZE), 0.35, 11)
    monkeypatch.setattr(puller, "PEER_REST_S", 0.01)
    asyncio.run(_flaky_pull(flaky, tmp_path))


async def _flaky_pull(flaky: FlakyPeer, tmp_path: Path) -> None:
    target = image_path(tmp_path, "lab", 1)
    first_seen: list[bytes] = []

    async def watch() -> None:
        """The first time the image exists at all, it must already be the whole, right image."""
        while not target.exists():  # noqa: ASYNC110 - a file appearing sets no event
            await asyncio.sleep(0.002)
        first_seen.append(target.read_bytes())

    watcher = asyncio.create_task(watch())
    async with served(flaky) as base, aiohttp.ClientSession() as session:
        result = await _pull(flaky, base, tmp_path, session)
    await asyncio.wait_for(watcher, 5)
    assert first_seen == [flaky.data]
    assert target.read_bytes() == flaky.data
    assert result.fetched_bytes == SIZE  # only good chunks count, each once
    sidecar = read_sidecar(target)
    assert sidecar is not None and sidecar.sha256 == hashlib.sha256(flaky.data).hexdigest()


def test_a_pull_cancelled_at_random_points_resumes_and_never_leaves_an_image(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flaky = FlakyPeer(random.Random(7).randbytes(SIZE), 0.1, 11)
    monkeypatch.setattr(puller, "PEER_REST_S", 0.01)
    monkeypatch.setattr(puller, "SAVE_EVERY_S", 0.0)
    asyncio.run(_cut_pulls(flaky, tmp_path))


async def _cut_pulls(flaky: FlakyPeer, tmp_path: Path) -> None:
    target = image_path(tmp_path, "lab", 1)
    cuts = random.Random(3)
    async with served(flaky) as base, aiohttp.ClientSession() as session:

        def pull() -> asyncio.Task[puller.PullResult]:
            return asyncio.create_task(_pull(flaky, base, tmp_path, session))

        for _ in range(4):
            task = pull()
            await asyncio.sleep(cuts.uniform(0.005, 0.05))
            task.cancel()
            with pytest.raises((asyncio.CancelledError, Exception)):
                await task
            if target.exists():
                break  # it finished before the cut
            assert not target.exists()
        if not target.exists():
            await pull()
    assert target.read_bytes() == flaky.data
