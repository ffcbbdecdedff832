"""An NBD server that presents one block backend (the target's streamed vDisk) to QEMU.

The protocol logic is in `nbd_codec`; this module is the asyncio glue: it reads the
handshake and requests off a stream, asks the codec what to answer, and runs each
request in its own task so that a slow read (a vDisk block still in flight from a pvsd
server) does not hold up the others. Replies may leave out of order, which proto.md
allows; a per-connection lock keeps one reply's bytes together.

The number of requests in flight per connection, and the bytes they hold, are bounded:
when the bound is reached the server stops reading the socket, so a client can fill its
own send buffer but not our memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from pvsd.errors import Misuse
from pvsd.log import get_logger, request_logger
from pvsd.net.reader import DecodeError
from pvsd.target.nbd_codec import (
    CLIENT_FLAGS_SIZE,
    DEFAULT_MAX_BLOCK,
    DEFAULT_PREFERRED_BLOCK,
    OPTION_HEADER_SIZE,
    REQUEST_HEADER_SIZE,
    Command,
    CommandFlag,
    Errno,
    Export,
    HandshakeFlag,
    NbdError,
    Negotiation,
    Phase,
    Request,
    TransmissionFlag,
    check_request,
    decode_client_flags,
    decode_option_header,
    decode_request,
    encode_simple_reply,
    greeting,
)

__all__ = [
    "BlockBackend",
    "FileBackend",
    "MemoryBackend",
    "NbdServer",
    "export_for",
]

_log = get_logger("nbd")

# Rejected WRITE payloads are read and dropped in pieces this big, never held whole.
_DRAIN_CHUNK = 1 << 20
# Zeroes are written in pieces this big, so a long WRITE_ZEROES needs no long buffer.
_ZERO_CHUNK = 1 << 20
# The commands FUA makes durable; proto.md lets a server ignore FUA on the others.
_WRITES = (Command.WRITE, Command.TRIM, Command.WRITE_ZEROES)


class BlockBackend(Protocol):
    """What the NBD server exports. Offsets and lengths are already checked against size and block size."""

    size: int
    block_size: int  # 512 or 4096: the smallest aligned unit the client may address
    read_only: bool

    async def read(self, offset: int, length: int) -> bytes: ...

    async def write(self, offset: int, data: bytes) -> None:
        """May raise NbdError (Errno.ENOSPC for a full write cache), or OSError (ENOSPC, EDQUOT and
        EFBIG count as no space, the rest as EIO)."""
        ...

    async def flush(self) -> None: ...

    async def trim(self, offset: int, length: int) -> None: ...

    async def write_zeroes(self, offset: int, length: int) -> None: ...


def export_for(
    backend: BlockBackend, name: str, description: str = "", *, multi_conn: bool = False
) -> Export:
    """The wire description of `backend`: flags and block sizes that QEMU and libnbd will honour."""
    flags = TransmissionFlag.HAS_FLAGS | TransmissionFlag.SEND_FLUSH
    if backend.read_only:
        flags |= TransmissionFlag.READ_ONLY
    else:
        flags |= TransmissionFlag.SEND_FUA | TransmissionFlag.SEND_TRIM | TransmissionFlag.SEND_WRITE_ZEROES
    if multi_conn:
        flags |= TransmissionFlag.CAN_MULTI_CONN
    minimum = backend.block_size
    return Export(
        name=name,
        size=backend.size,
        flags=flags,
        min_block=minimum,
        preferred_block=max(minimum, DEFAULT_PREFERRED_BLOCK),
        max_block=DEFAULT_MAX_BLOCK,
        description=description,
    )


class _Budget:
    """Requests and bytes in flight on one connection, waited on before reading the next request."""

    def __init__(self, requests: int, size: int) -> None:
        self._max_requests = requests
        self._max_bytes = size
        self._requests = 0
        self._bytes = 0
        self._changed = asyncio.Condition()

    @property
    def requests(self) -> int:
        return self._requests

    async def acquire(self, size: int) -> None:
        async with self._changed:
            # A single request larger than the byte budget still runs, alone.
            await self._changed.wait_for(
                lambda: (
                    self._requests < self._max_requests
                    and (self._bytes + size <= self._max_bytes or self._bytes == 0)
                )
            )
            self._requests += 1
            self._bytes += size

    async def release(self, size: int) -> None:
        async with self._changed:
            self._requests -= 1
            self._bytes -= size
            self._changed.notify_all()


def _errno_of(error: BaseException) -> Errno:
    if isinstance(error, NbdError):
        return error.code
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return Errno.ENOSPC  # proto.md "Error values": EDQUOT and EFBIG map to ENOSPC
    return Errno.EIO


class _Connection:
    """One client: handshake, then the request loop with a task per request."""

    def __init__(
        self,
        server: NbdServer,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer
        peer = writer.get_extra_info("peername")
        where = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else (peer or "unix")
        self.log = request_logger(_log, where)
        self.write_lock = asyncio.Lock()
        self.budget = _Budget(server.max_in_flight, server.max_bytes_in_flight)
        self.tasks: set[asyncio.Task[None]] = set()
        # Decided once: with the per-request line off, a request costs no clock read or log call.
        self.trace = self.log.is_enabled_for(logging.DEBUG)

    async def serve(self, handshake: bool = True) -> None:
        """Serve until the client leaves. Without `handshake` the connection starts in the
        transmission phase, as the kernel's NBD driver expects of the socket it is given."""
        self.log.info("nbd connection open", export=self.server.export.name)
        reason = "client closed"
        try:
            phase = Phase.TRANSMISSION
            if handshake:
                negotiation = Negotiation(self.server.export)
                async with asyncio.timeout(self.server.handshake_timeout):
                    phase = await self._handshake(negotiation)
            if phase == Phase.TRANSMISSION:
                reason = await self._transmission()
            else:
                reason = "handshake ended"
        except DecodeError as error:
            reason = f"bad bytes: {error}"
            self.log.debug("nbd protocol error", error=str(error))
        except TimeoutError:
            reason = "handshake timed out"
        except (asyncio.IncompleteReadError, ConnectionError):
            reason = "client closed"
        except asyncio.CancelledError:
            reason = "server closed"
            raise
        finally:
            await self._finish()
            self.log.info("nbd connection closed", reason=reason)

    async def _send(self, *chunks: bytes) -> None:
        async with self.write_lock:
            self.writer.writelines(chunks)  # one send for a reply's header and data
            await self.writer.drain()

    async def _handshake(self, negotiation: Negotiation) -> Phase:
        offered = self.server.handshake_flags
        await self._send(greeting(offered))
        flags = decode_client_flags(await self.reader.readexactly(CLIENT_FLAGS_SIZE), offered)
        negotiation.client_flags(flags)
        while True:
            option, length = decode_option_header(await self.reader.readexactly(OPTION_HEADER_SIZE))
            data = await self.reader.readexactly(length)
            outcome = negotiation.option(option, data)
            self.log.debug("nbd option", option=option, length=length, phase=outcome.phase.value)
            if outcome.reply:
                await self._send(outcome.reply)
            if outcome.phase != Phase.OPTIONS:
                return outcome.phase

    async def _transmission(self) -> str:
        export = self.server.export
        while True:
            request = decode_request(await self.reader.readexactly(REQUEST_HEADER_SIZE))
            started = time.monotonic() if self.trace else 0.0
            if request.type == Command.DISC:
                return "client disconnected"
            try:
                check_request(request, export)
            except NbdError as refused:
                if request.type == Command.WRITE:
                    await self._drain(request.length)
                self.log.info(
                    "nbd request refused",
                    command=_command_name(request.type),
                    offset=request.offset,
                    length=request.length,
                    flags=request.flags,
                    error=refused.code.name,
                    reason=refused.message,
                )
                await self._send(encode_simple_reply(request.cookie, refused.code))
                if self.trace:
                    self._trace(request, started, refused.code)
                continue
            cost = request.length if request.type in (Command.READ, Command.WRITE) else 0
            await self.budget.acquire(cost)
            try:
                payload = b""
                if request.type == Command.WRITE:
                    payload = await self.reader.readexactly(request.length)
            except BaseException:
                await self.budget.release(cost)
                raise
            task = asyncio.create_task(self._run(request, payload, cost, started))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _drain(self, length: int) -> None:
        while length:
            chunk = await self.reader.readexactly(min(length, _DRAIN_CHUNK))
            length -= len(chunk)

    def _trace(self, request: Request, started: float, error: Errno, sent: bool = True) -> None:
        """The per-request line: the cookie and times let it be lined up with QEMU's `-trace 'nbd_*'`."""
        self.log.debug(
            "nbd reply",
            cookie=request.cookie,
            command=_command_name(request.type),
            offset=request.offset,
            length=request.length,
            flags=request.flags,
            start_ms=round(started * 1000, 1),
            end_ms=round(time.monotonic() * 1000, 1),
            error=error.name,
            sent=sent,
        )

    async def _run(self, request: Request, payload: bytes, cost: int, started: float) -> None:
        backend = self.server.backend
        data = b""
        error = Errno.EIO
        sent = False
        try:
            try:
                match request.type:
                    case Command.READ:
                        data = await backend.read(request.offset, request.length)
                        if len(data) != request.length:
                            raise OSError(
                                errno.EIO, f"backend returned {len(data)} of {request.length} bytes"
                            )
                    case Command.WRITE:
                        await backend.write(request.offset, payload)
                    case Command.FLUSH:
                        await backend.flush()
                    case Command.TRIM:
                        await backend.trim(request.offset, request.length)
                    case Command.WRITE_ZEROES:
                        await backend.write_zeroes(request.offset, request.length)
                if request.flags & CommandFlag.FUA and request.type in _WRITES:
                    await backend.flush()
                error = Errno.OK
            except Exception as failure:
                error = _errno_of(failure)
                data = b""
                self.log.warning(
                    "nbd request failed",
                    command=_command_name(request.type),
                    offset=request.offset,
                    length=request.length,
                    error=error.name,
                    exc_info=error == Errno.EIO,
                )
            with contextlib.suppress(ConnectionError):
                if data:
                    await self._send(encode_simple_reply(request.cookie, error), data)
                else:
                    await self._send(encode_simple_reply(request.cookie, error))
                sent = True
        finally:
            await self.budget.release(cost)
            if self.trace:
                self._trace(request, started, error, sent)

    async def _finish(self) -> None:
        # proto.md: on NBD_CMD_DISC (and on shutdown) outstanding requests are handled first.
        if self.tasks:
            _, pending = await asyncio.wait(set(self.tasks), timeout=self.server.drain_timeout)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()


def _command_name(kind: int) -> str:
    try:
        return Command(kind).name
    except ValueError:
        return str(kind)


class NbdServer:
    """Serves one export of `backend` over TCP and/or a unix socket, to any number of clients.

    `multi_conn` advertises NBD_FLAG_CAN_MULTI_CONN; set it only when a flush on one
    connection makes every connection's completed writes durable (true for FileBackend,
    whose connections share the kernel's page cache).
    """

    def __init__(
        self,
        backend: BlockBackend,
        export_name: str = "",
        *,
        description: str = "",
        multi_conn: bool = False,
        max_in_flight: int = 64,
        max_bytes_in_flight: int = 64 << 20,
        handshake_timeout: float = 30.0,
        drain_timeout: float = 10.0,
    ) -> None:
        if backend.block_size not in (512, 4096):
            raise ValueError(f"block size must be 512 or 4096, not {backend.block_size}")
        self.backend = backend
        self.export = export_for(backend, export_name, description, multi_conn=multi_conn)
        self.max_in_flight = max_in_flight
        self.max_bytes_in_flight = max_bytes_in_flight
        self.handshake_timeout = handshake_timeout
        self.drain_timeout = drain_timeout
        self.handshake_flags = HandshakeFlag.FIXED_NEWSTYLE | HandshakeFlag.NO_ZEROES
        self._servers: list[asyncio.Server] = []
        self._connections: set[asyncio.Task[None]] = set()
        self._port: int | None = None
        self._unix_paths: list[Path] = []

    @property
    def port(self) -> int:
        """The TCP port `start_tcp` bound (useful with port 0)."""
        if self._port is None:
            raise RuntimeError("the NBD server is not listening on TCP")
        return self._port

    @property
    def connections(self) -> int:
        return len(self._connections)

    async def start_tcp(self, host: str = "127.0.0.1", port: int = 0) -> None:
        server = await asyncio.start_server(self._accept, host, port)
        self._servers.append(server)
        self._port = int(server.sockets[0].getsockname()[1])
        _log.info("nbd listening", address=f"{host}:{self._port}", export=self.export.name)

    async def start_unix(self, path: str | os.PathLike[str]) -> None:
        server = await asyncio.start_unix_server(self._accept, os.fspath(path))
        self._servers.append(server)
        self._unix_paths.append(Path(path))
        _log.info("nbd listening", address=os.fspath(path), export=self.export.name)

    async def _accept(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, handshake: bool = True
    ) -> None:
        task = asyncio.current_task()
        if task is None:
            raise Misuse("an NBD connection is served outside a task")
        self._connections.add(task)
        try:
            await _Connection(self, reader, writer).serve(handshake)
        finally:
            self._connections.discard(task)

    async def serve_transmission(self, sock: socket.socket) -> None:
        """Serve requests on a connected socket with no handshake (the kernel driver's end of
        a socketpair, see kernel_nbd), until it closes."""
        reader, writer = await asyncio.open_connection(sock=sock)
        await self._accept(reader, writer, handshake=False)

    async def close(self) -> None:
        """Stop listening and drop every client after its requests in flight are answered."""
        for server in self._servers:
            server.close()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.wait(set(self._connections))
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()
        for path in self._unix_paths:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        self._unix_paths.clear()

    async def __aenter__(self) -> NbdServer:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()


class FileBackend:
    """A raw image file, read and written with pread/pwrite in worker threads.

    TRIM is accepted and does nothing: proto.md lets a server ignore it, and the data a
    client reads afterwards is undefined anyway.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, read_only: bool = False, block_size: int = 512
    ) -> None:
        self.path = Path(path)
        self.read_only = read_only
        self.block_size = block_size
        self._fd = os.open(self.path, os.O_RDONLY if read_only else os.O_RDWR)
        self.size = os.fstat(self._fd).st_size

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> FileBackend:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _pread(self, offset: int, length: int) -> bytes:
        chunks = []
        while length:
            chunk = os.pread(self._fd, length, offset)
            if not chunk:
                raise OSError(errno.EIO, f"{self.path} ends before offset {offset}")
            chunks.append(chunk)
            offset += len(chunk)
            length -= len(chunk)
        return b"".join(chunks)

    def _pwrite(self, offset: int, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            written = os.pwrite(self._fd, view, offset)
            view = view[written:]
            offset += written

    def _zero(self, offset: int, length: int) -> None:
        zeroes = bytes(min(length, _ZERO_CHUNK))
        for start, size in _pieces(offset, length, _ZERO_CHUNK):
            self._pwrite(start, memoryview(zeroes)[:size])

    async def read(self, offset: int, length: int) -> bytes:
        return await asyncio.to_thread(self._pread, offset, length)

    async def write(self, offset: int, data: bytes) -> None:
        await asyncio.to_thread(self._pwrite, offset, data)

    async def flush(self) -> None:
        if not self.read_only:
            await asyncio.to_thread(os.fsync, self._fd)

    async def trim(self, offset: int, length: int) -> None:
        return None

    async def write_zeroes(self, offset: int, length: int) -> None:
        await asyncio.to_thread(self._zero, offset, length)


class MemoryBackend:
    """A disk in a bytearray, for tests and for trying clients out."""

    def __init__(
        self, size: int, *, read_only: bool = False, block_size: int = 512, data: bytes = b""
    ) -> None:
        self.data = bytearray(data[:size].ljust(size, b"\0"))
        self.size = size
        self.read_only = read_only
        self.block_size = block_size
        self.flushes = 0

    async def read(self, offset: int, length: int) -> bytes:
        return bytes(self.data[offset : offset + length])

    async def write(self, offset: int, data: bytes) -> None:
        self.data[offset : offset + len(data)] = data

    async def flush(self) -> None:
        self.flushes += 1

    async def trim(self, offset: int, length: int) -> None:
        return None

    async def write_zeroes(self, offset: int, length: int) -> None:
        self.data[offset : offset + length] = bytes(length)


def _pieces(offset: int, length: int, size: int) -> Iterator[tuple[int, int]]:
    end = offset + length
    while offset < end:
        step = min(size, end - offset)
        yield offset, step
        offset += step
