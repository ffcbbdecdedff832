"""newc cpio archives ("070701"), the format the Linux kernel unpacks as an initramfs. Pure.

The kernel accepts several archives one after the other (Documentation/driver-api/early-userspace/
buffer-format.rst), each ending in a `TRAILER!!!` entry, and later files replace earlier ones.
That is how iPXE gives the guest the image's own initramfs followed by pvsd's overlay.

Written here rather than by `cpio(1)`, so that device nodes need no mknod (the kernel opens
/dev/console for init's output before anything else runs) and nothing needs root. Entries carry
mtime 0 and owner 0: the same inputs give the same bytes.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from pvsd.net.reader import DecodeError, Reader

__all__ = ["CpioEntry", "CpioWriter", "EntryKind", "decode_cpio"]

MAGIC = b"070701"
TRAILER = "TRAILER!!!"
_HEADER_SIZE = 110  # the magic and 13 fields of 8 hex digits
_FIELDS = 13


class EntryKind(enum.IntEnum):
    """The file type bits of an entry's mode (S_IFMT, POSIX <sys/stat.h>)."""

    DIRECTORY = 0o040000
    FILE = 0o100000
    SYMLINK = 0o120000
    CHARDEV = 0o020000
    BLOCKDEV = 0o060000


@dataclass(frozen=True)
class CpioEntry:
    name: str
    kind: EntryKind
    permissions: int
    data: bytes = b""  # a symlink's data is its target
    rdev: tuple[int, int] = (0, 0)


class CpioWriter:
    """Builds one archive in memory; `finish()` adds the trailer and returns the bytes."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._inode = 1
        self._names: set[str] = set()

    def __contains__(self, name: str) -> bool:
        return name in self._names

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        encoded = name.encode() + b"\0"
        fields = (self._inode, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(encoded), 0)
        self._inode += 1
        self._names.add(name)
        header = MAGIC + b"".join(b"%08X" % value for value in fields)
        self._parts.append(header + encoded + b"\0" * (-(len(header) + len(encoded)) % 4))
        self._parts.append(data + b"\0" * (-len(data) % 4))

    def directory(self, name: str, permissions: int = 0o755) -> None:
        self._entry(name, EntryKind.DIRECTORY | permissions)

    def directories(self, path: str) -> None:
        """`path` and each of its parents not yet in the archive, parents first."""
        parts = path.strip("/").split("/")
        for end in range(1, len(parts) + 1):
            name = "/".join(parts[:end])
            if name and name not in self._names:
                self.directory(name)

    def file(self, name: str, data: bytes, permissions: int = 0o644) -> None:
        self._entry(name, EntryKind.FILE | permissions, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, EntryKind.SYMLINK | 0o777, target.encode())

    def chardev(self, name: str, major: int, minor: int, permissions: int = 0o600) -> None:
        self._entry(name, EntryKind.CHARDEV | permissions, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry(TRAILER, 0)
        return b"".join(self._parts)


def decode_cpio(data: bytes) -> list[CpioEntry]:
    """Every entry of one or more concatenated newc archives (zero padding between them allowed).

    Raises DecodeError on anything else, as every pvsd decoder does.
    """
    reader = Reader(data)
    entries: list[CpioEntry] = []
    while reader.remaining:
        if data[len(data) - reader.remaining] == 0:
            reader.take(1)  # padding between archives
            continue
        header = reader.take(_HEADER_SIZE)
        if header[:6] != MAGIC:
            raise DecodeError(f"not a newc cpio entry (magic {header[:6]!r})")
        try:
            fields = [int(header[6 + 8 * i : 14 + 8 * i], 16) for i in range(_FIELDS)]
        except ValueError:
            raise DecodeError("a cpio header field is not hexadecimal") from None
        mode, size, rdev = fields[1], fields[6], (fields[9], fields[10])
        name_size = fields[11]
        if name_size == 0:
            raise DecodeError("a cpio entry has an empty name")
        raw_name = reader.take(name_size)
        reader.take(-(_HEADER_SIZE + name_size) % 4)
        if raw_name[-1:] != b"\0":
            raise DecodeError("a cpio name is not NUL-terminated")
        try:
            name = raw_name[:-1].decode()
        except UnicodeDecodeError:
            raise DecodeError("a cpio name is not UTF-8") from None
        body = reader.take(size)
        reader.take(min(-size % 4, reader.remaining))
        if name == TRAILER:
            continue
        try:
            kind = EntryKind(mode & 0o170000)
        except ValueError:
            raise DecodeError(f"cpio entry {name!r} has an unknown file type {mode:o}") from None
        entries.append(CpioEntry(name, kind, mode & 0o7777, body, rdev))
    return entries
