"""Where TFTP data comes from: files under the root, kept safe and shared, and published files.

A requested name is checked before anything touches the disk: NUL bytes, backslashes, `..`
components, names longer than MAX_NAME_BYTES, symlinks that leave the root, and anything that
is not a regular file are each refused with their own reason, one of codec.Refusal: never an
OS error's text, which names the server's path. Leading slashes name the root, as real firmware and boot
loaders send them (`/pxelinux.0`) and tftp-hpa (`-s`) and dnsmasq serve them. A name missing
from the root is looked for in the fallback folders (the installed iPXE binaries), with the
same checks. Files up to a bound are read once
into memory and shared by every transfer that wants them (a boot storm reads the disk
once); larger ones are read per block with pread, sharing the kernel's page cache.
"""

from __future__ import annotations

import asyncio
import errno
import os
import stat
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pvsd.tftp.codec import ErrorCode, Refusal, TftpError

__all__ = [
    "MAX_NAME_BYTES",
    "BytesSource",
    "FileCache",
    "FileSource",
    "Source",
    "SourceRegistry",
    "find_file",
    "resolve_path",
    "to_netascii",
]


class Source(Protocol):
    """A file being served: the size, reads at any offset, and close when the transfer ends."""

    @property
    def size(self) -> int: ...

    def read(self, offset: int, length: int) -> bytes: ...

    def close(self) -> None: ...


class BytesSource:
    """A source over bytes in memory; `on_close` lets a cache count its users."""

    def __init__(self, data: bytes, on_close: Callable[[], None] | None = None) -> None:
        self._data = data
        self._view = memoryview(data)
        self._on_close = on_close

    @property
    def size(self) -> int:
        return len(self._data)

    def read(self, offset: int, length: int) -> bytes:
        return bytes(self._view[offset : offset + length])

    def close(self) -> None:
        if self._on_close is not None:
            self._on_close()
            self._on_close = None


class FileSource:
    """A large file read block by block from its own descriptor."""

    def __init__(self, fd: int, size: int) -> None:
        self._fd = fd
        self._size = size

    @property
    def size(self) -> int:
        return self._size

    def read(self, offset: int, length: int) -> bytes:
        return os.pread(self._fd, length, offset)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def to_netascii(data: bytes) -> bytes:
    """RFC 1350 netascii from Unix text: CR becomes CR NUL, LF becomes CR LF."""
    return data.replace(b"\r", b"\r\0").replace(b"\n", b"\r\n")


# Longer than any boot loader asks for, and refused before the disk is touched: the kernel would
# refuse it anyway (PATH_MAX is 4096 with the root in front), with an error that names the root.
MAX_NAME_BYTES = 1024


def _refuse(refusal: Refusal, detail: str = "") -> TftpError:
    return TftpError(refusal, detail)


def find_file(roots: Sequence[Path], name: str) -> Path:
    """`name` in the first of `roots` that has it; a refusal other than "no such file" (a
    traversal, a symlink out) stops the search at once. The roots after the first are package
    folders (Debian's /usr/lib/ipxe links ipxe.efi to /boot/ipxe.efi): their own symlinks may
    point elsewhere, the name still may not."""
    missing: TftpError | None = None
    for index, root in enumerate(roots):
        try:
            return resolve_path(root, name, links_may_leave=index > 0)
        except TftpError as refusal:
            if refusal.code is not ErrorCode.FILE_NOT_FOUND:
                raise
            missing = missing or refusal
    raise missing or _refuse(Refusal.NO_SUCH_FILE)


def resolve_path(root: Path, name: str, links_may_leave: bool = False) -> Path:
    """The real path of `name` inside `root` (leading slashes name the root), or TftpError with
    the reason it is refused. `links_may_leave` trusts the folder's own symlinks to point out."""
    if not name:
        raise _refuse(Refusal.EMPTY_NAME)
    if "\0" in name:
        raise _refuse(Refusal.NUL)
    if "\\" in name:
        raise _refuse(Refusal.BACKSLASH)
    if len(name.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
        raise _refuse(Refusal.NAME_TOO_LONG)
    name = name.lstrip("/")
    if not name:
        raise _refuse(Refusal.NO_NAME)
    if ".." in name.split("/"):
        raise _refuse(Refusal.PARENT)
    real_root = root.resolve()
    try:
        real = (real_root / name).resolve(strict=True)
    except FileNotFoundError:
        raise _refuse(Refusal.NO_SUCH_FILE) from None
    except OSError as error:
        if error.errno == errno.ENAMETOOLONG:  # one component over NAME_MAX
            raise _refuse(Refusal.NAME_TOO_LONG) from None
        raise _refuse(Refusal.UNRESOLVABLE, error.strerror or "") from None
    except RuntimeError:  # a symlink loop (Python 3.11 raises it so; its text names the path)
        raise _refuse(Refusal.UNRESOLVABLE, "symlink loop") from None
    if not links_may_leave and not real.is_relative_to(real_root):
        raise _refuse(Refusal.SYMLINK_OUT)
    try:
        mode = real.stat().st_mode
    except OSError as error:
        raise _refuse(Refusal.UNREADABLE, error.strerror or "") from None
    if not stat.S_ISREG(mode):
        raise _refuse(Refusal.NOT_REGULAR)
    return real


@dataclass
class _Entry:
    data: bytes
    users: int = 0


class FileCache:
    """Whole files in memory, shared by concurrent transfers, bounded in total size (LRU)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.max_file = max_bytes // 4
        self._entries: OrderedDict[tuple[int, int, int, int], _Entry] = OrderedDict()
        self._loading: dict[tuple[int, int, int, int], asyncio.Future[bytes]] = {}
        self.loads = 0

    @property
    def bytes_cached(self) -> int:
        return sum(len(entry.data) for entry in self._entries.values())

    async def open(self, path: Path) -> Source:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise _refuse(Refusal.NOT_REGULAR)
            if info.st_size > self.max_file:
                source = FileSource(fd, info.st_size)
                fd = -1
                return source
            key = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
            entry = self._entries.get(key)
            if entry is None:
                data = await self._load(key, fd, info.st_size)
                # Whoever resumes first after the shared load stores the entry.
                entry = self._entries.setdefault(key, _Entry(data))
        finally:
            if fd >= 0:
                os.close(fd)
        self._entries.move_to_end(key)
        entry.users += 1
        self._evict()
        return BytesSource(entry.data, on_close=lambda: self._release(key))

    async def _load(self, key: tuple[int, int, int, int], fd: int, size: int) -> bytes:
        """Read a file once however many transfers ask for it at the same moment."""
        pending = self._loading.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        pending = asyncio.get_running_loop().create_future()
        self._loading[key] = pending
        try:
            data = await asyncio.to_thread(_read_all, fd, size)
        except asyncio.CancelledError:
            pending.cancel()
            raise
        except Exception as error:
            pending.set_exception(error)
            pending.exception()  # mark it retrieved: waiters re-raise it, nobody else needs to
            raise
        finally:
            del self._loading[key]
        self.loads += 1
        pending.set_result(data)
        return data

    def _release(self, key: tuple[int, int, int, int]) -> None:
        entry = self._entries.get(key)
        if entry is not None:
            entry.users -= 1
        self._evict()

    def _evict(self) -> None:
        total = self.bytes_cached
        for key in list(self._entries):
            if total <= self.max_bytes:
                break
            entry = self._entries[key]
            if entry.users == 0:
                total -= len(entry.data)
                del self._entries[key]


def _read_all(fd: int, size: int) -> bytes:
    chunks = []
    offset = 0
    while offset < size:
        chunk = os.pread(fd, min(size - offset, 1 << 20), offset)
        if not chunk:
            break  # the file shrank under us; serve what is there
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


class SourceRegistry:
    """Published files by exact name first, then files under the root, then in the fallbacks.

    Published files (such as pvs.bootstrap) are generated elsewhere and replaced whole
    whenever their content changes; a transfer keeps the version it started with.
    """

    def __init__(self, root: Path, cache: FileCache, fallbacks: Sequence[Path] = ()) -> None:
        self.root = root
        self.roots = (root, *fallbacks)
        self.cache = cache
        self._published: dict[str, bytes] = {}
        self._defaults: dict[str, bytes] = {}

    def publish(self, name: str, data: bytes) -> None:
        self._published[name] = data

    def unpublish(self, name: str) -> None:
        self._published.pop(name, None)

    def publish_default(self, prefix: str, data: bytes) -> None:
        """What any name under `prefix` that is not published gets (an unknown device's script)."""
        self._defaults[prefix] = data

    @property
    def published_names(self) -> list[str]:
        return sorted(self._published)

    def is_generated(self, name: str) -> bool:
        """Whether `name` is one of the published files (pvs.bootstrap, pvs.ipxe, device scripts,
        an unknown device's default): small, generated here, and what every target boots from."""
        key = name.lstrip("/")
        return key in self._published or any(key.startswith(prefix) for prefix in self._defaults)

    async def open(self, name: str, netascii: bool) -> Source:
        key = name.lstrip("/")  # `/pvs.ipxe` is pvs.ipxe, as for files under the root
        data = self._published.get(key)
        if data is None:
            data = next((value for prefix, value in self._defaults.items() if key.startswith(prefix)), None)
        if data is not None:
            return BytesSource(to_netascii(data) if netascii else data)
        path = find_file(self.roots, name)
        try:
            source = await self.cache.open(path)
        except PermissionError:
            raise _refuse(Refusal.PERMISSION) from None
        except OSError as error:
            raise _refuse(Refusal.UNREADABLE, error.strerror or "") from None
        if not netascii:
            return source
        try:
            if source.size > self.cache.max_file:
                raise _refuse(Refusal.NETASCII_TOO_LARGE)
            return BytesSource(to_netascii(source.read(0, source.size)))
        finally:
            source.close()
