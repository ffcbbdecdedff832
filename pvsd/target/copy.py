"""Being a target from the command line: read a whole vDisk through the stream, or write a pattern
and read it back (`pvsd target copy`, `pvsd target write-test`)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import time
from typing import Any

from pvsd.errors import BadInput
from pvsd.target.client import StreamClient

__all__ = ["copy_disk", "write_and_check"]

CHUNK = 4 << 20  # bytes per read handed to the flow; it splits them into bursts
CHUNKS_IN_FLIGHT = 4


async def copy_disk(client: StreamClient, fd: int | None, rate: int | None = None) -> dict[str, Any]:
    """Read the whole disk in order (chunks in flight at once) into the open file `fd` (None: only
    hash it), at most `rate` bytes a second if given; returns what the copy measured. The caller
    opens `fd` before the login, so a bad output path costs the farm nothing, and closes it."""
    reply = await client.connect()
    size = reply.disk_size
    digest = hashlib.sha256()
    started = time.monotonic()
    try:
        pending: list[asyncio.Task[bytes]] = []
        sinking: asyncio.Future[None] | None = None
        offset = 0
        while offset < size or pending:
            while offset < size and len(pending) < CHUNKS_IN_FLIGHT:
                piece = CHUNK
                if rate is not None:
                    ahead = offset / rate - (time.monotonic() - started)
                    if ahead > 0 and pending:
                        break  # collect what is in flight first
                    await asyncio.sleep(max(0.0, ahead))
                    piece = max(1 << 20, min(CHUNK, rate // 8 // 512 * 512))
                length = min(piece, size - offset)
                pending.append(asyncio.create_task(client.read(offset, length)))
                offset += length
            chunk = await pending.pop(0)
            # Hashing and writing run in a thread (both release the GIL), overlapping the next
            # chunks' arrival; one at a time, so the hash sees the disk in order.
            if sinking is not None:
                await sinking
            sinking = asyncio.ensure_future(asyncio.to_thread(_sink, digest, fd, chunk))
        if sinking is not None:
            await sinking
        elapsed = time.monotonic() - started
    finally:
        stats = client.flow.stats if client.flow is not None else None
        await client.close()
    return {
        "bytes": size,
        "seconds": round(elapsed, 3),
        "mb_per_s": round(size / elapsed / 1e6, 1) if elapsed else None,
        "sha256": digest.hexdigest(),
        "server": client.server_name,
        "payload": reply.max_payload,
        "burst": reply.max_burst,
        "retransmits": getattr(stats, "retransmits", 0),
        "failovers": [
            {"from": f.from_server, "to": f.to_server, "stall_s": round(f.stall_s, 3)}
            for f in client.stats.failovers
        ],
    }


def _sink(digest: Any, fd: int | None, chunk: bytes) -> None:
    digest.update(chunk)
    if fd is not None:
        os.write(fd, chunk)


async def write_and_check(client: StreamClient, offset: int, size: int, seed: int) -> dict[str, Any]:
    reply = await client.connect()
    try:
        if offset % reply.sector_size or size % reply.sector_size or size <= 0:
            raise BadInput(
                f"--offset and --size must be positive multiples of the sector size {reply.sector_size}"
            )
        if offset + size > reply.disk_size:
            raise BadInput(f"--offset + --size pass the end of the disk ({reply.disk_size} bytes)")
        pattern = random.Random(seed).randbytes(size)  # noqa: S311 - a test pattern, not a secret
        started = time.monotonic()
        await client.write(offset, pattern)
        await client.flush()
        back = await client.read(offset, size)
        elapsed = time.monotonic() - started
    finally:
        await client.close()
    return {
        "offset": offset,
        "bytes": size,
        "match": back == pattern,
        "seconds": round(elapsed, 3),
        "server": client.server_name,
    }
