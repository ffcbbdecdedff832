"""`/replication/`: what a server that lacks a vDisk version pulls from a peer that holds it.

- `GET /replication/NAME/VERSION/index`: the version's chunk index (pvsd/vdisk/chunks.py), JSON;
- `GET /replication/NAME/VERSION/chunks/N`: the bytes of chunk N, with its sha256 in
  `X-Chunk-SHA256` (the receiver checks it against the index, not against the header).

Only a copy this server has verified is served: its sha256 sidecar (written at import or by the
replica scan) matches the image's size and mtime, and the index's whole-image hash equals the
sidecar's. Anything else is a 404 (no such copy) or a 409 (a copy, but not a verified one, e.g.
a private-mode image that changes while it is used), so a peer never copies bad bytes from
here. The index is computed once per image (a full read, in a thread) and kept beside it as
`vN.img.chunks`, valid for as long as the sidecar is.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import structlog
from aiohttp import web

from pvsd.errors import BadInput, PvsdError
from pvsd.names import check_name
from pvsd.vdisk.chunk_files import index_image, keep_index, kept_index, read_chunk
from pvsd.vdisk.chunks import ChunkIndex, encode_index
from pvsd.vdisk.image import image_path, read_sidecar

__all__ = ["REPLICATION_PREFIX", "ReplicationHttp"]

REPLICATION_PREFIX = "/replication/"


class ReplicationHttp:
    """The /replication/ routes over this server's store."""

    def __init__(self, store: Path, log: structlog.stdlib.BoundLogger) -> None:
        self.store = store
        self.log = log
        # One index computation per image at a time, however many peers ask at once.
        self._building: dict[Path, asyncio.Lock] = {}

    def routes(self) -> list[web.RouteDef]:
        base = REPLICATION_PREFIX + "{vdisk}/{version}"
        return [
            web.get(base + "/index", self._index),
            web.get(base + "/chunks/{chunk}", self._chunk),
        ]

    async def _index(self, request: web.Request) -> web.Response:
        image = self._image(request)
        index = await self.index(image)
        return web.Response(
            body=encode_index(index), content_type="application/json", headers={"ETag": f'"{index.sha256}"'}
        )

    async def _chunk(self, request: web.Request) -> web.Response:
        image = self._image(request)
        try:
            number = int(request.match_info["chunk"])
        except ValueError:
            raise _problem(web.HTTPBadRequest, "the chunk number must be an integer") from None
        index = await self.index(image)
        if not 0 <= number < index.count:
            raise _problem(web.HTTPNotFound, f"no chunk {number}: the version has {index.count}")
        try:
            data = await asyncio.to_thread(read_chunk, image, index, number)
        except PvsdError as error:
            raise _problem(web.HTTPServiceUnavailable, str(error)) from None
        self.log.debug("replication chunk served", peer=request.remote, image=str(image), chunk=number)
        return web.Response(
            body=data,
            content_type="application/octet-stream",
            headers={"X-Chunk-SHA256": index.chunks[number], "ETag": f'"{index.chunks[number]}"'},
        )

    def _image(self, request: web.Request) -> Path:
        vdisk, version = request.match_info["vdisk"], request.match_info["version"]
        try:
            check_name("vDisk", vdisk)
            number = int(version)
        except (BadInput, ValueError):
            raise _problem(web.HTTPNotFound, f"no vDisk version {vdisk}/{version}") from None
        image = image_path(self.store, vdisk, number)
        if not image.is_file():
            raise _problem(web.HTTPNotFound, f"{vdisk} version {number} is not on this server")
        return image

    async def index(self, image: Path) -> ChunkIndex:
        """The index of a verified image: from its `.chunks` file, or computed and kept there."""
        lock = self._building.setdefault(image, asyncio.Lock())
        async with lock:
            return await asyncio.to_thread(self._verified_index, image)

    def _verified_index(self, image: Path) -> ChunkIndex:
        sidecar = read_sidecar(image)
        info = image.stat()
        if sidecar is None or (sidecar.size, sidecar.mtime_ns) != (info.st_size, info.st_mtime_ns):
            raise _problem(web.HTTPConflict, f"{image.name} is not verified on this server (yet)")
        kept = kept_index(image, sidecar.sha256)
        if kept is not None and kept.size == info.st_size:
            return kept
        index = index_image(image)
        if index.sha256 != sidecar.sha256:
            raise _problem(web.HTTPConflict, f"{image.name} no longer has the hash it was verified with")
        keep_index(image, index)
        self.log.info("chunk index made", image=str(image), chunks=index.count, sha256=index.sha256)
        return index


def _problem(kind: type[web.HTTPException], detail: str) -> web.HTTPException:
    return kind(text=detail + "\n", content_type="text/plain")
