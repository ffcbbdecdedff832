"""The NBD server against real clients: nbdinfo and nbdcopy (libnbd), qemu-img and qemu-io (QEMU 7.2).

The server runs on its own event loop in a background thread, over a FileBackend of a
random 16 MiB image. What the real clients never send (misaligned or out-of-range
requests, writes to a read-only export, unknown commands, a flood of pipelined requests)
comes from a small socket client here that does the handshake by hand.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import io
import json
import random
import socket
import struct
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from support import needs

from pvsd.log import configure_logging
from pvsd.target.nbd import BlockBackend, FileBackend, MemoryBackend, NbdServer
from pvsd.target.nbd_codec import (
    SIMPLE_REPLY_HEADER_SIZE,
    Command,
    CommandFlag,
    Errno,
    InfoRequest,
    InfoType,
    NbdError,
    OptionReply,
    OptionType,
    Request,
    decode_simple_reply,
    encode_client_flags,
    encode_info_request,
    encode_option,
    encode_request,
)

HOST = "127.0.0.1"
EXPORT = "disk1"
SIZE = 16 << 20


@pytest.fixture(autouse=True)
def nbd_clients() -> None:
    needs.tools(
        ("nbdinfo", "libnbd-bin"),
        ("nbdcopy", "libnbd-bin"),
        ("qemu-img", "qemu-utils"),
        ("qemu-io", "qemu-utils"),
    )


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"{argv} exited {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


class Running:
    """An NbdServer on its own loop in a thread; `call` runs a coroutine function on that loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, server: NbdServer, backend: BlockBackend) -> None:
        self.loop = loop
        self.server = server
        self.backend = backend

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def uri(self) -> str:
        return f"nbd://{HOST}:{self.port}/{EXPORT}"


@contextmanager
def nbd_server(
    make_backend: Callable[[], BlockBackend], unix_path: Path | None = None, **options: object
) -> Iterator[Running]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="nbd-server", daemon=True)
    thread.start()

    async def start() -> Running:
        backend = make_backend()
        server = NbdServer(backend, EXPORT, description="pvsd test disk", **options)  # type: ignore[arg-type]
        await server.start_tcp(HOST, 0)
        if unix_path is not None:
            await server.start_unix(unix_path)
        return Running(loop, server, backend)

    running = asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=10)
    try:
        yield running
    finally:
        try:
            asyncio.run_coroutine_threadsafe(running.server.close(), loop).result(timeout=30)
            if isinstance(running.backend, FileBackend):
                running.backend.close()
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
            loop.close()


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "image.raw"
    path.write_bytes(random.Random(6).randbytes(SIZE))
    return path


@pytest.fixture
def served(image: Path) -> Iterator[Running]:
    with nbd_server(lambda: FileBackend(image)) as running:
        yield running


class RawClient:
    """A minimal NBD client over a plain socket, for requests real clients refuse to send."""

    def __init__(self, port: int, name: str = EXPORT, *, go: bool = True) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=30)
        greeting = self.recv(18)
        assert greeting[:16] == b"NBDMAGICIHAVEOPT"
        self.sock.sendall(encode_client_flags(3))  # FIXED_NEWSTYLE | NO_ZEROES
        if go:
            replies = self.option(
                OptionType.GO, encode_info_request(InfoRequest(name, (InfoType.BLOCK_SIZE,)))
            )
            assert replies[-1][0] == OptionReply.ACK, replies
            info = {data[:2]: data[2:] for kind, data in replies if kind == OptionReply.INFO}
            self.size, self.flags = struct.unpack("!QH", info[b"\x00\x00"])

    def recv(self, length: int) -> bytes:
        chunks = []
        while length:
            chunk = self.sock.recv(min(length, 1 << 20))
            if not chunk:
                raise EOFError("server closed the connection")
            chunks.append(chunk)
            length -= len(chunk)
        return b"".join(chunks)

    def option(self, option: int, data: bytes = b"") -> list[tuple[int, bytes]]:
        self.sock.sendall(encode_option(option, data))
        replies = []
        while True:
            magic, echoed, kind, length = struct.unpack("!QIII", self.recv(20))
            assert magic == 0x3E889045565A9 and echoed == option
            replies.append((kind, self.recv(length)))
            if kind != OptionReply.SERVER and kind != OptionReply.INFO:
                return replies

    def send(
        self, kind: int, cookie: int, offset: int, length: int, flags: int = 0, payload: bytes = b""
    ) -> None:
        self.sock.sendall(encode_request(Request(flags, kind, cookie, offset, length)) + payload)

    def reply(self, read_length: int = 0) -> tuple[int, int, bytes]:
        """(cookie, error, data); pass the READ length when a successful reply carries data."""
        header = decode_simple_reply(self.recv(SIMPLE_REPLY_HEADER_SIZE))
        data = self.recv(read_length) if header.error == 0 and read_length else b""
        return header.cookie, header.error, data

    def request(
        self, kind: int, offset: int, length: int, flags: int = 0, payload: bytes = b""
    ) -> tuple[int, bytes]:
        self.send(kind, 0xC0FFEE, offset, length, flags, payload)
        cookie, error, data = self.reply(length if kind == Command.READ else 0)
        assert cookie == 0xC0FFEE
        return error, data

    def close(self) -> None:
        self.send(Command.DISC, 0, 0, 0)
        self.sock.close()


# --- real clients ------------------------------------------------------------------------


def test_nbdinfo_json_shows_size_flags_and_block_sizes(served: Running) -> None:
    info = json.loads(run("nbdinfo", "--json", served.uri).stdout)
    export = info["exports"][0]
    assert info["protocol"] == "newstyle-fixed"
    assert export["export-name"] == EXPORT
    assert export["export-size"] == SIZE
    assert export["description"] == "pvsd test disk"
    assert (export["block_size_minimum"], export["block_size_preferred"], export["block_size_maximum"]) == (
        512,
        4096,
        32 << 20,
    )
    assert export["is_read_only"] is False
    assert export["can_flush"] and export["can_fua"] and export["can_trim"] and export["can_zero"]
    assert export["can_multi_conn"] is False


def test_nbdinfo_list_names_the_export(served: Running) -> None:
    listing = run("nbdinfo", "--list", f"nbd://{HOST}:{served.port}").stdout
    assert f'export="{EXPORT}"' in listing
    assert "pvsd test disk" in listing
    # The default export name reaches the same disk, as QEMU's nbd://host:port does.
    default = json.loads(run("nbdinfo", "--json", f"nbd://{HOST}:{served.port}").stdout)
    assert default["exports"][0]["export-size"] == SIZE


def test_nbdcopy_reads_the_whole_image(served: Running, image: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.raw"
    # 64 requests of 64 KiB in flight on the one connection.
    run("nbdcopy", "--requests=64", "--request-size=65536", served.uri, str(out))
    assert sha256(out) == sha256(image)


def test_nbdcopy_writes_the_whole_image(served: Running, image: Path, tmp_path: Path) -> None:
    source = tmp_path / "in.raw"
    source.write_bytes(random.Random(7).randbytes(SIZE))
    run("nbdcopy", "--flush", source_str := str(source), served.uri)
    assert sha256(image) == sha256(Path(source_str))


def test_nbdcopy_over_several_connections_with_multi_conn(image: Path, tmp_path: Path) -> None:
    source = tmp_path / "in.raw"
    source.write_bytes(random.Random(8).randbytes(SIZE))
    with nbd_server(lambda: FileBackend(image), multi_conn=True) as running:
        info = json.loads(run("nbdinfo", "--json", running.uri).stdout)
        assert info["exports"][0]["can_multi_conn"] is True
        run("nbdcopy", "--connections=4", "--requests=32", "--flush", str(source), running.uri)
        assert sha256(image) == sha256(source)
        out = tmp_path / "out.raw"
        run("nbdcopy", "--connections=4", running.uri, str(out))
        assert sha256(out) == sha256(source)


def test_qemu_img_compare_over_both_uri_forms(served: Running, image: Path) -> None:
    assert "identical" in run("qemu-img", "compare", "-f", "raw", "-F", "raw", str(image), served.uri).stdout
    legacy = f"nbd:{HOST}:{served.port}:exportname={EXPORT}"
    assert "identical" in run("qemu-img", "compare", "-f", "raw", "-F", "raw", str(image), legacy).stdout
    info = json.loads(run("qemu-img", "info", "--output=json", "-f", "raw", served.uri).stdout)
    assert info["virtual-size"] == SIZE


def test_qemu_io_writes_reads_zeroes_discards_and_flushes(served: Running, image: Path) -> None:
    commands = [
        "write -P 0xab 4096 4096",
        "read -P 0xab 4096 4096",
        "write -f -P 0x11 8192 512",  # FUA
        "write -z 65536 65536",
        "read -P 0 65536 65536",
        "discard 1048576 1048576",
        "flush",
        # Unaligned: QEMU does the read-modify-write itself, so the server sees aligned requests.
        "write -P 0xcd 1 3",
        "read -P 0xcd 1 3",
        "aio_write -P 0x42 2097152 65536",
        "aio_write -P 0x43 2162688 65536",
        "aio_flush",
        "read -P 0x43 2162688 65536",
    ]
    argv = ["qemu-io", "-f", "raw"]
    for command in commands:
        argv += ["-c", command]
    result = run(*argv, served.uri)
    assert "Pattern verification failed" not in result.stdout + result.stderr
    data = image.read_bytes()
    assert data[4096:8192] == b"\xab" * 4096
    assert data[8192:8704] == b"\x11" * 512
    assert data[65536:131072] == bytes(65536)
    assert data[1:4] == b"\xcd" * 3
    assert data[2097152 : 2097152 + 65536] == b"\x42" * 65536


def test_qemu_io_read_past_the_end_fails(served: Running) -> None:
    result = run("qemu-io", "-f", "raw", "-c", f"read {SIZE} 512", served.uri, check=False)
    assert (
        "Input/output error" in result.stdout + result.stderr
        or "out of range" in result.stdout + result.stderr
    )


def test_unix_socket_export(image: Path, tmp_path: Path) -> None:
    path = tmp_path / "nbd.sock"
    with nbd_server(lambda: FileBackend(image), unix_path=path):
        uri = f"nbd+unix:///{EXPORT}?socket={path}"
        assert json.loads(run("nbdinfo", "--json", uri).stdout)["exports"][0]["export-size"] == SIZE
        out = tmp_path / "out.raw"
        run("nbdcopy", uri, str(out))
        assert sha256(out) == sha256(image)
        assert "identical" in run("qemu-img", "compare", "-f", "raw", "-F", "raw", str(image), uri).stdout
    assert not path.exists()


def test_read_only_export_refuses_writes(image: Path, tmp_path: Path) -> None:
    before = sha256(image)
    with nbd_server(lambda: FileBackend(image, read_only=True)) as running:
        export = json.loads(run("nbdinfo", "--json", running.uri).stdout)["exports"][0]
        assert export["is_read_only"] is True
        assert not export["can_trim"] and not export["can_zero"]
        source = tmp_path / "in.raw"
        source.write_bytes(bytes(SIZE))
        assert run("nbdcopy", str(source), running.uri, check=False).returncode != 0
        failed = run("qemu-io", "-f", "raw", "-c", "write -P 1 0 512", running.uri, check=False)
        assert failed.returncode != 0 or "failed" in failed.stdout + failed.stderr
        out = tmp_path / "out.raw"
        run("nbdcopy", running.uri, str(out))
        assert sha256(out) == before
        # On the wire: EPERM for every kind of write, reads still fine.
        client = RawClient(running.port)
        assert client.flags & 0x2  # NBD_FLAG_READ_ONLY
        assert client.request(Command.WRITE, 0, 512, payload=bytes(512))[0] == Errno.EPERM
        assert client.request(Command.TRIM, 0, 512)[0] == Errno.EPERM
        assert client.request(Command.WRITE_ZEROES, 0, 512)[0] == Errno.EPERM
        error, data = client.request(Command.READ, 0, 512)
        assert error == 0 and data == image.read_bytes()[:512]
        client.close()
    assert sha256(image) == before


# --- hand-written requests ---------------------------------------------------------------


def test_misaligned_out_of_range_and_unknown_requests_get_errors(served: Running, image: Path) -> None:
    client = RawClient(served.port)
    assert client.size == SIZE
    assert client.request(Command.READ, 1, 512)[0] == Errno.EINVAL
    assert client.request(Command.READ, 0, 100)[0] == Errno.EINVAL
    assert client.request(Command.READ, SIZE - 512, 1024)[0] == Errno.EINVAL
    assert client.request(Command.READ, SIZE, 512)[0] == Errno.EINVAL
    assert client.request(Command.TRIM, SIZE, 512)[0] == Errno.EINVAL
    assert client.request(Command.WRITE, 3, 512, payload=b"\x77" * 512)[0] == Errno.EINVAL
    assert client.request(Command.WRITE, SIZE - 512, 1024, payload=b"\x77" * 1024)[0] == Errno.ENOSPC
    assert client.request(Command.WRITE_ZEROES, SIZE, 512)[0] == Errno.ENOSPC
    assert client.request(Command.FLUSH, 0, 512)[0] == Errno.EINVAL
    assert client.request(Command.BLOCK_STATUS, 0, 512)[0] == Errno.EINVAL
    assert client.request(0x55, 0, 512)[0] == Errno.EINVAL
    assert client.request(Command.READ, 0, 512, flags=CommandFlag.DF)[0] == Errno.EINVAL
    # A WRITE too long for the advertised maximum: its payload is read and dropped, then refused.
    too_long = (32 << 20) + 512
    assert client.request(Command.WRITE, 0, too_long, payload=bytes(too_long))[0] == Errno.EINVAL
    # The connection survives every refusal, and nothing was written.
    error, data = client.request(Command.READ, SIZE - 4096, 4096)
    assert error == 0 and data == image.read_bytes()[-4096:]
    assert client.request(Command.WRITE, 512, 512, flags=CommandFlag.FUA, payload=b"\x5a" * 512)[0] == 0
    assert client.request(Command.FLUSH, 0, 0)[0] == 0
    client.close()
    assert image.read_bytes()[512:1024] == b"\x5a" * 512
    assert image.read_bytes()[:3] != b"\x77" * 3


def test_handshake_export_name_and_unknown_export(served: Running) -> None:
    client = RawClient(served.port, go=False)
    replies = client.option(OptionType.GO, encode_info_request(InfoRequest("nope")))
    assert [kind for kind, _ in replies] == [OptionReply.ERR_UNKNOWN]
    replies = client.option(OptionType.STRUCTURED_REPLY)
    assert [kind for kind, _ in replies] == [OptionReply.ERR_UNSUP]
    replies = client.option(OptionType.LIST)
    assert [kind for kind, _ in replies] == [OptionReply.SERVER, OptionReply.ACK]
    # The old way into transmission: size and flags, no padding since NO_ZEROES was agreed.
    client.sock.sendall(encode_option(OptionType.EXPORT_NAME, EXPORT.encode()))
    size, flags = struct.unpack("!QH", client.recv(10))
    assert size == SIZE and flags & 1
    assert client.request(Command.READ, 0, 512)[0] == 0
    client.close()


def test_abort_and_bad_magic_end_the_session(served: Running) -> None:
    client = RawClient(served.port, go=False)
    assert [kind for kind, _ in client.option(OptionType.ABORT)] == [OptionReply.ACK]
    assert client.sock.recv(1) == b""
    client.sock.close()
    bad = RawClient(served.port, go=False)
    bad.sock.sendall(b"IHAVEOPX" + bytes(8))
    assert bad.sock.recv(1) == b""
    bad.sock.close()


class SlowBackend(MemoryBackend):
    """Reads take longer at low offsets, and the backend records how many ran at once."""

    def __init__(self, size: int) -> None:
        super().__init__(size, data=random.Random(9).randbytes(size))
        self.running = 0
        self.most = 0

    async def read(self, offset: int, length: int) -> bytes:
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            await asyncio.sleep(0.3 if offset < self.size // 2 else 0.01)
            return await super().read(offset, length)
        finally:
            self.running -= 1


def test_pipelined_requests_run_concurrently_out_of_order_and_bounded() -> None:
    size = 1 << 20
    with nbd_server(lambda: SlowBackend(size), max_in_flight=64) as running:
        backend = running.backend
        assert isinstance(backend, SlowBackend)
        client = RawClient(running.port)
        count = 200
        blocks = [(i * 4096) % size for i in range(count)]
        for cookie, offset in enumerate(blocks):
            client.send(Command.READ, cookie, offset, 4096)
        order = []
        for _ in range(count):
            cookie, error, data = client.reply(4096)
            assert error == 0
            assert data == bytes(backend.data[blocks[cookie] : blocks[cookie] + 4096])
            order.append(cookie)
        client.close()
    assert sorted(order) == list(range(count))
    assert order != sorted(order)  # fast reads overtook slow ones
    assert backend.most == 64  # the per-connection bound, reached and never passed


class FailingBackend(MemoryBackend):
    """Fails writes by region: full cache, full disk, broken disk; reads fail in the last MiB."""

    async def write(self, offset: int, data: bytes) -> None:
        if offset < 4096:
            raise NbdError(Errno.ENOSPC, "write cache full")
        if offset < 8192:
            raise OSError(errno.EDQUOT, "quota")
        if offset < 12288:
            raise OSError(errno.EIO, "disk on fire")
        await super().write(offset, data)

    async def read(self, offset: int, length: int) -> bytes:
        if offset >= self.size - (1 << 20):
            raise RuntimeError("stream lost")
        return await super().read(offset, length)


def test_backend_errors_reach_the_client() -> None:
    with nbd_server(lambda: FailingBackend(2 << 20)) as running:
        client = RawClient(running.port)
        assert client.request(Command.WRITE, 0, 512, payload=bytes(512))[0] == Errno.ENOSPC
        assert client.request(Command.WRITE, 4096, 512, payload=bytes(512))[0] == Errno.ENOSPC
        assert client.request(Command.WRITE, 8192, 512, payload=bytes(512))[0] == Errno.EIO
        assert client.request(Command.READ, 1 << 20, 4096) == (Errno.EIO, b"")
        assert client.request(Command.WRITE, 16384, 512, payload=b"\1" * 512)[0] == 0
        assert client.request(Command.READ, 16384, 512) == (0, b"\1" * 512)
        client.close()


class GatedBackend(MemoryBackend):
    """Writes wait a while, to see that a disconnect waits for them."""

    async def write(self, offset: int, data: bytes) -> None:
        await asyncio.sleep(0.3)
        await super().write(offset, data)


def test_disconnect_answers_requests_in_flight_first() -> None:
    with nbd_server(lambda: GatedBackend(1 << 20)) as running:
        client = RawClient(running.port)
        client.send(Command.WRITE, 5, 0, 512, payload=b"\2" * 512)
        client.send(Command.DISC, 6, 0, 0)
        cookie, error, _ = client.reply()
        assert (cookie, error) == (5, 0)
        assert client.sock.recv(1) == b""
        client.sock.close()
        backend = running.backend
        assert isinstance(backend, GatedBackend)
        assert backend.data[:512] == b"\2" * 512


def test_close_drops_connected_clients(image: Path) -> None:
    with nbd_server(lambda: FileBackend(image)) as running:
        client = RawClient(running.port)
        assert client.request(Command.READ, 0, 512)[0] == 0
        asyncio.run_coroutine_threadsafe(running.server.close(), running.loop).result(timeout=30)
        assert client.sock.recv(1) == b""
        client.sock.close()
        with pytest.raises(OSError):
            socket.create_connection((HOST, running.port), timeout=2).close()


def test_at_debug_level_every_request_gets_one_line_with_its_cookie_times_and_errno() -> None:
    out = io.StringIO()
    configure_logging("debug", "json", out)
    try:
        with nbd_server(lambda: MemoryBackend(1 << 20)) as running:
            client = RawClient(running.port)
            client.send(Command.WRITE_ZEROES, 7, 4096, 8192, CommandFlag.NO_HOLE)
            assert client.reply() == (7, 0, b"")
            client.send(Command.READ, 8, 0, 4096)
            assert client.reply(4096)[:2] == (8, 0)
            client.send(Command.READ, 9, 100, 4096)  # misaligned: refused before the backend
            assert client.reply()[:2] == (9, Errno.EINVAL)
            client.close()
        configure_logging("info", "json", out)
        with nbd_server(lambda: MemoryBackend(1 << 20)) as running:
            client = RawClient(running.port)
            assert client.request(Command.READ, 0, 4096)[0] == 0
            client.close()
    finally:
        configure_logging("info", "json")
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    replies = [line for line in lines if line["event"] == "nbd reply"]
    assert [(r["cookie"], r["command"], r["offset"], r["length"], r["error"]) for r in replies] == [
        (7, "WRITE_ZEROES", 4096, 8192, "OK"),
        (8, "READ", 0, 4096, "OK"),
        (9, "READ", 100, 4096, "EINVAL"),
    ]  # and none at info level
    assert replies[0]["flags"] == CommandFlag.NO_HOLE and all(r["sent"] for r in replies)
    assert all(r["start_ms"] <= r["end_ms"] for r in replies)
    assert replies[0]["end_ms"] <= replies[1]["start_ms"]  # the client waited for each reply
