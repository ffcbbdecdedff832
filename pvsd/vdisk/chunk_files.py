"""The file side of the chunk index (pvsd.vdisk.chunks): index an image, read one chunk, check one.

Every OSError becomes a Failure naming the file: the request was fine, the disk under it was not.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from pvsd.errors import Failure, Misuse
from pvsd.vdisk.chunks import CHUNK_SIZE, ChunkIndex, IndexBuilder

__all__ = ["chunk_matches", "index_image", "read_chunk"]


def _cannot(action: str, path: Path, error: OSError) -> Failure:
    return Failure(f"cannot {action} {path}: {error.strerror or error}")


def index_image(path: Path, chunk_size: int = CHUNK_SIZE, buffer: int = 1 << 20) -> ChunkIndex:
    """The chunk index of the image at `path`, read once from start to end, `buffer` bytes at a time.

    Failure when the file cannot be read or its size changes while it is read: an index of an image
    that was being written would name chunks that no longer exist.
    """
    if buffer < 1:
        raise Misuse(f"index_image reads with a buffer of {buffer} bytes: it must be at least 1")
    builder = IndexBuilder(chunk_size)
    space = bytearray(buffer)
    view = memoryview(space)
    try:
        with path.open("rb", buffering=0) as file:
            expected = os.fstat(file.fileno()).st_size
            while count := file.readinto(space):
                builder.feed(view[:count])
    except OSError as error:
        raise _cannot("index", path, error) from None
    if builder.size != expected:
        raise Failure(
            f"cannot index {path}: it changed size while it was read ({expected} -> {builder.size})"
        )
    return builder.finish()


def _read_span(path: Path, offset: int, length: int) -> bytes:
    """Up to `length` bytes at `offset`: fewer only where the file ends first."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as error:
        raise _cannot("read", path, error) from None
    try:
        parts: list[bytes] = []
        done = 0
        while done < length:
            part = os.pread(fd, length - done, offset + done)
            if not part:
                break
            parts.append(part)
            done += len(part)
        return b"".join(parts)
    except OSError as error:
        raise _cannot("read", path, error) from None
    finally:
        os.close(fd)


def read_chunk(path: Path, index: ChunkIndex, number: int) -> bytes:
    """The bytes of chunk `number` of the image at `path`, as they are on disk: not checked against the
    index (whoever receives them checks them). Failure when the file ends before the chunk does."""
    offset, length = index.span(number)
    data = _read_span(path, offset, length)
    if len(data) != length:
        raise Failure(
            f"cannot read chunk {number} of {path}: the file ends at {offset + len(data)}, "
            f"before the chunk's end at {offset + length}"
        )
    return data


def chunk_matches(path: Path, index: ChunkIndex, number: int) -> bool:
    """Whether chunk `number` of the image at `path` has the index's hash. A file that ends before the
    chunk does is a mismatch, not an error: a transfer that stopped mid-way leaves one."""
    offset, length = index.span(number)
    data = _read_span(path, offset, length)
    return len(data) == length and hashlib.sha256(data).hexdigest() == index.chunks[number]
