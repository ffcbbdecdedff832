"""`/boot/`: everything a target fetches over HTTP to boot, from any live server, anonymously.

- The generated files, by the same names as over TFTP: `pvs.ipxe`, `pvs.bootstrap`, the device
  scripts `pvsd/device/MAC.ipxe` (and the unknown device's script for any other name below that
  prefix). They are pushed here as they change (the `Publisher` protocol of pvsd/boot/publish.py)
  and answered from memory, with a strong ETag (the content's hash), If-None-Match and Range.
- Files on disk, from resolvers registered by prefix (`vdisk/`: a version's kernel and
  initramfs; `agent/`: the agent overlay; `media/`: the boot media), and last the TFTP sources
  (`[tftp] root`, then `[tftp] ipxe_dir`, e.g. `ipxe.efi` for UEFI HTTP boot), with TFTP's name
  checks. aiohttp's FileResponse streams them with sendfile and answers Range, HEAD, ETag
  (mtime and size), If-None-Match and If-Range.

One log line per request that names the peer, the file, the status and the bytes; misses are
logged at most once a minute per name prefix, so a scan does not flood the log.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import structlog
from aiohttp import web

from pvsd.api.ranges import RangeNotSatisfiable, etag_of, if_none_match, parse_range
from pvsd.errors import PvsdError
from pvsd.lograte import REFUSAL_LOG_INTERVAL_S, LogRate
from pvsd.tftp.codec import TftpError
from pvsd.tftp.sources import find_file

__all__ = ["BOOT_PREFIX", "BootHttp", "Resolver"]

BOOT_PREFIX = "/boot/"
Resolver = Callable[[str], Awaitable[Path | None]]
"""The file for the rest of a name below its prefix, or None: 404."""


class BootHttp:
    """The /boot/ files of one server: published bytes, resolvers, then the TFTP folders."""

    def __init__(self, folders: Sequence[Path], log: structlog.stdlib.BoundLogger) -> None:
        self.folders = tuple(folders)
        self.log = log
        self._published: dict[str, tuple[bytes, str]] = {}
        self._defaults: dict[str, tuple[bytes, str]] = {}
        self._resolvers: list[tuple[str, Resolver]] = []
        self._misses = LogRate(REFUSAL_LOG_INTERVAL_S)

    # -- the Publisher protocol (pvsd/boot/publish.py) ------------------------------------------

    def publish(self, name: str, data: bytes) -> None:
        self._published[name] = (data, etag_of(data))

    def unpublish(self, name: str) -> None:
        self._published.pop(name, None)

    def publish_default(self, prefix: str, data: bytes) -> None:
        self._defaults[prefix] = (data, etag_of(data))

    def add_resolver(self, prefix: str, resolver: Resolver) -> None:
        """Names below `prefix` (e.g. `vdisk/`) are looked up by `resolver`, longest prefix first."""
        self._resolvers.append((prefix, resolver))
        self._resolvers.sort(key=lambda entry: -len(entry[0]))

    def routes(self) -> list[web.RouteDef]:
        return [web.route("*", BOOT_PREFIX + "{name:.*}", self._handle)]

    # -- requests --------------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        started = time.monotonic()
        if request.method not in ("GET", "HEAD"):
            raise web.HTTPMethodNotAllowed(request.method, ["GET", "HEAD"])
        response = await self._answer(request, name)
        if response.status == 404:
            count = self._misses.due(name.split("/", 1)[0], started)
            if count is not None:
                self.log.warning(
                    "boot file not found", peer=request.remote, name=name, status=404, times=count
                )
        else:
            self.log.info(
                "boot file served",
                peer=request.remote,
                name=name,
                method=request.method,
                status=response.status,
                range=request.headers.get("Range"),
                bytes=response.content_length if response.content_length is not None else request.get("size"),
            )
        return response

    async def _answer(self, request: web.Request, name: str) -> web.StreamResponse:
        generated = self._published.get(name) or next(
            (value for prefix, value in self._defaults.items() if name.startswith(prefix)), None
        )
        if generated is not None:
            return _from_memory(request, *generated)
        for prefix, resolver in self._resolvers:
            if name.startswith(prefix):
                try:
                    path = await resolver(name.removeprefix(prefix))
                except PvsdError as error:
                    return _problem(503, f"{name}: {error}")
                return (
                    await _from_disk(request, path) if path is not None else _problem(404, f"no {name} here")
                )
        try:
            path = find_file(self.folders, name)
        except TftpError as refused:
            return _problem(404, f"{name}: {refused.message}")
        return await _from_disk(request, path)


async def _from_disk(request: web.Request, path: Path) -> web.StreamResponse:
    """aiohttp streams it (sendfile where the loop has it) and answers Range and the conditionals."""
    info = await asyncio.to_thread(path.stat)
    request["size"] = info.st_size  # for the log line: FileResponse knows its length only once sent
    return web.FileResponse(path)


def _problem(status: int, detail: str) -> web.Response:
    return web.Response(status=status, text=detail + "\n", content_type="text/plain")


def _from_memory(request: web.Request, data: bytes, etag: str) -> web.Response:
    headers = {"ETag": etag, "Accept-Ranges": "bytes", "Cache-Control": "no-cache"}
    if if_none_match(request.headers.get("If-None-Match"), etag):
        return web.Response(status=304, headers=headers)
    wanted = request.headers.get("Range")
    if_range = request.headers.get("If-Range")
    if if_range is not None and if_range != etag:
        wanted = None  # the client's copy is another version: the whole file
    try:
        piece = parse_range(wanted, len(data))
    except RangeNotSatisfiable:
        return web.Response(status=416, headers={**headers, "Content-Range": f"bytes */{len(data)}"})
    if piece is None:
        return web.Response(body=data, headers=headers, content_type="text/plain")
    headers["Content-Range"] = f"bytes {piece.start}-{piece.end}/{len(data)}"
    return web.Response(
        status=206, body=data[piece.start : piece.end + 1], headers=headers, content_type="text/plain"
    )
