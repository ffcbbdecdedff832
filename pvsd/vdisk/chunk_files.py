"""The file side of the chunk index (pvsd.vdisk.chunks): index an image, read one chunk, check one.

Every OSError becomes a Failure naming the file: the request was fine, the disk under it was not.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

from pvsd.errors import Failure, Misuse
from pvsd.net.reader import DecodeError
from pvsd.vdisk.chunks import CHUNK_SIZE, ChunkIndex, IndexBuilder, decode_index, encode_index

__all__ = [
    "bad_chunks",
    "chunk_matches",
    "index_image",
    "keep_index",
    "kept_index",
    "kept_index_path",
    "read_chunk",
]


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


def kept_index_path(image: Path) -> Path:
    """Where an image's index is kept beside it: computed once, for peers and for the scrub."""
    return image.with_name(image.name + ".chunks")


def kept_index(image: Path, sha256: str, chunk_size: int = CHUNK_SIZE) -> ChunkIndex | None:
    """The kept index of `image` if it is one of the image with this hash, else None."""
    try:
        index = decode_index(kept_index_path(image).read_bytes())
    except (OSError, DecodeError):
        return None
    return index if index.sha256 == sha256 and index.chunk_size == chunk_size else None


def keep_index(image: Path, index: ChunkIndex) -> None:
    """Write the index beside the image, whole or not at all."""
    target = kept_index_path(image)
    partial = target.with_name(target.name + ".part")
    try:
        partial.write_bytes(encode_index(index))
        partial.replace(target)
    except OSError as error:
        partial.unlink(missing_ok=True)
        raise _cannot("write the chunk index of", image, error) from None


def bad_chunks(image: Path, index: ChunkIndex, pace: Callable[[int], None]) -> list[int]:
    """The chunks of `image` whose bytes no longer hash as `index` says (the scrub); `pace` is
    called with each chunk's length before it is read, to keep the hash rate down."""
    bad = []
    for number in range(index.count):
        pace(index.span(number)[1])
        if not chunk_matches(image, index, number):
            bad.append(number)
    return bad
