"""Positional file I/O that is whole or fails: os.pread/os.pwrite may do part of the work."""

from __future__ import annotations

import os

__all__ = ["pread_exact", "pwrite_all"]


def pread_exact(fd: int, length: int, offset: int, what: str = "file") -> bytes:
    """Exactly `length` bytes at `offset`, or OSError if the file ends first (someone truncated it)."""
    data = os.pread(fd, length, offset)
    if len(data) == length:
        return data
    parts = [data]
    done = len(data)
    while done < length:
        more = os.pread(fd, length - done, offset + done)
        if not more:
            raise OSError(f"{what} ended at {offset + done}, wanted {length} bytes at {offset}")
        parts.append(more)
        done += len(more)
    return b"".join(parts)


def pwrite_all(fd: int, data: bytes | bytearray | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written
