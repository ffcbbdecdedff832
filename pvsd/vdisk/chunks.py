"""The content-addressed chunk index of a vDisk version: what replication between servers moves. Pure.

An image is cut into fixed-size chunks (the last one may be short) and each chunk is named by
its sha256, as casync and its kin do. Fixed sizes rather than content-defined cuts, because a
vDisk is a block device: a guest rewrites blocks in place and never inserts bytes, so a change
stays inside the chunks it touches and the offsets of the others never move. Naming chunks by
their content is what the rest of replication stands on:

- only the chunks that changed between two versions move; the others are copied from the
  version a server already holds, wherever in that image they sit (`local_sources`);
- a transfer that broke resumes from the chunks already written and verified (`ChunkProgress`);
- any peer that holds a chunk can serve it, whatever version it came from, and the receiver
  checks it against the index, so it need not trust the peer.

The parts: `ChunkIndex` (the index itself and its spans), `encode_index` / `decode_index` (its
JSON form, sent between servers and kept beside an image), `IndexBuilder` (hashes an image fed
in pieces of any size, for the I/O in pvsd.vdisk.chunk_files), `missing_chunks` /
`local_sources` (what to fetch and what to copy), and `ChunkProgress` with `decode_progress`
(the bitmap of a transfer's finished chunks, kept so that a restart resumes it).

Decoders raise DecodeError and nothing else on bad bytes; any other exception out of one is a bug.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from pvsd.errors import BadInput, Misuse
from pvsd.net.reader import DecodeError, Reader

__all__ = [
    "CHUNK_SIZE",
    "INDEX_FORMAT",
    "MAX_CHUNKS",
    "MAX_CHUNK_SIZE",
    "MAX_INDEX_BYTES",
    "PROGRESS_MAGIC",
    "ChunkIndex",
    "ChunkProgress",
    "IndexBuilder",
    "decode_index",
    "decode_progress",
    "encode_index",
    "local_sources",
    "missing_chunks",
]

CHUNK_SIZE = 4 << 20
INDEX_FORMAT = "pvsd-chunks-1"
CHUNK_ALIGN = 4096  # a chunk boundary on a page and on any sector size a disk uses
MAX_CHUNK_SIZE = 64 << 20
# The bound on an index a peer may make us hold: 1 TiB at the default chunk size, 16 TiB at the
# largest. A bigger image needs a bigger chunk size.
MAX_CHUNKS = 1 << 18
# A compact index of MAX_CHUNKS chunks is about 17.6 MB; this leaves room for one that is not compact.
MAX_INDEX_BYTES = 32 << 20
PROGRESS_MAGIC = b"PVCP"
PROGRESS_VERSION = 1
_PROGRESS_HEADER = struct.Struct("!4sBI")  # magic, version, count: network order, as Reader reads it
_MAX_PROGRESS_COUNT = 0xFFFF_FFFF
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_INDEX_KEYS = frozenset({"format", "size", "chunk_size", "sha256", "chunks"})


def _check_chunk_size(chunk_size: int) -> None:
    if type(chunk_size) is not int or not 0 < chunk_size <= MAX_CHUNK_SIZE or chunk_size % CHUNK_ALIGN:
        raise BadInput(
            f"a chunk size of {_short(chunk_size)} bytes is not a positive multiple of {CHUNK_ALIGN} "
            f"of at most {MAX_CHUNK_SIZE}"
        )


def _short(value: object) -> str:
    """A value for a message, cut short: it may be a string of megabytes from a peer."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _is_sha256(value: object) -> bool:
    return isinstance(value, str) and _SHA256_HEX.fullmatch(value) is not None


def _chunk_count(size: int, chunk_size: int) -> int:
    return -(-size // chunk_size)


@dataclass(frozen=True)
class ChunkIndex:
    """The chunks of one image, in order: `chunks[n]` is the hex sha256 of bytes
    [n * chunk_size, (n + 1) * chunk_size) of it, the last one cut short by the image's end."""

    size: int  # bytes of the image
    chunk_size: int
    chunks: tuple[str, ...]
    sha256: str  # of the whole image: what the farm records for a version, checked after a transfer

    def __post_init__(self) -> None:
        _check_chunk_size(self.chunk_size)
        if type(self.size) is not int or self.size < 0:
            raise BadInput(f"an image size of {_short(self.size)} bytes is not a whole number of bytes")
        expected = _chunk_count(self.size, self.chunk_size)
        if expected > MAX_CHUNKS:
            raise BadInput(
                f"an image of {_short(self.size)} bytes is {expected} chunks of {self.chunk_size} bytes, "
                f"more than {MAX_CHUNKS}: use a bigger chunk size"
            )
        if not isinstance(self.chunks, tuple) or len(self.chunks) != expected:
            given = len(self.chunks) if isinstance(self.chunks, tuple) else _short(self.chunks)
            raise BadInput(
                f"an image of {self.size} bytes in chunks of {self.chunk_size} has {expected} chunks, "
                f"not {given}"
            )
        for number, digest in enumerate(self.chunks):
            if not _is_sha256(digest):
                raise BadInput(f"chunk {number}'s hash {_short(digest)} is not 64 lower-case hex digits")
        if not _is_sha256(self.sha256):
            raise BadInput(f"the image's hash {_short(self.sha256)} is not 64 lower-case hex digits")

    @property
    def count(self) -> int:
        return len(self.chunks)

    def span(self, number: int) -> tuple[int, int]:
        """The offset and length in bytes of chunk `number`; BadInput when the image has no such chunk."""
        if type(number) is not int or not 0 <= number < len(self.chunks):
            raise BadInput(f"chunk {number!r} is not one of the image's {len(self.chunks)} chunks")
        offset = number * self.chunk_size
        return offset, min(self.chunk_size, self.size - offset)

    def chunk_bytes(self, numbers: Iterable[int]) -> int:
        """The bytes of those chunks, each counted once: what fetching them moves."""
        return sum(self.span(number)[1] for number in set(numbers))


def encode_index(index: ChunkIndex) -> bytes:
    """The index as compact JSON with sorted keys and a final newline: equal indexes give equal bytes."""
    document = {
        "format": INDEX_FORMAT,
        "size": index.size,
        "chunk_size": index.chunk_size,
        "sha256": index.sha256,
        "chunks": list(index.chunks),
    }
    return (json.dumps(document, sort_keys=True, separators=(",", ":")) + "\n").encode("ascii")


def decode_index(data: bytes) -> ChunkIndex:
    """The index that `encode_index` gave these bytes; DecodeError for anything else.

    Any JSON spelling of the document is accepted (the bytes come from a peer or a file, not
    necessarily from this encoder), but no key may be missing or extra: a new field is a new format.
    """
    if len(data) > MAX_INDEX_BYTES:
        raise DecodeError(f"a chunk index of {len(data)} bytes is more than the {MAX_INDEX_BYTES} allowed")
    try:
        # Decoded here rather than by json.loads, which would also take UTF-16 and UTF-32.
        document = json.loads(bytes(data).decode("utf-8"))
    except (ValueError, RecursionError) as error:  # deep nesting recurses; the rest are ValueErrors
        raise DecodeError(f"a chunk index is UTF-8 JSON: {error}") from None
    if not isinstance(document, dict):
        raise DecodeError(f"a chunk index is a JSON object, not {type(document).__name__}")
    if set(document) != _INDEX_KEYS:
        missing, extra = sorted(_INDEX_KEYS - set(document)), sorted(set(document) - _INDEX_KEYS)
        raise DecodeError(
            f"a chunk index has the keys {sorted(_INDEX_KEYS)}: missing {missing}, extra {_short(extra)}"
        )
    if document["format"] != INDEX_FORMAT:
        raise DecodeError(f"the chunk index format is {_short(document['format'])}, not {INDEX_FORMAT!r}")
    size, chunk_size, chunks = document["size"], document["chunk_size"], document["chunks"]
    # type(), not isinstance(): a JSON true would pass as the int 1
    if type(size) is not int or type(chunk_size) is not int:
        raise DecodeError(
            f"a chunk index's size and chunk_size are integers, not {_short(size)} and {_short(chunk_size)}"
        )
    if not isinstance(chunks, list):
        raise DecodeError(f"a chunk index's chunks are a list, not {type(chunks).__name__}")
    try:
        return ChunkIndex(size=size, chunk_size=chunk_size, chunks=tuple(chunks), sha256=document["sha256"])
    except BadInput as error:
        raise DecodeError(f"a bad chunk index: {error}") from None


class IndexBuilder:
    """Builds the index of an image from its bytes, fed in order in pieces of any length.

    It holds one chunk's running hash, not the chunk, so memory stays small whatever the buffer.
    """

    def __init__(self, chunk_size: int = CHUNK_SIZE) -> None:
        _check_chunk_size(chunk_size)
        self._chunk_size = chunk_size
        self._whole = hashlib.sha256()
        self._chunk = hashlib.sha256()
        self._in_chunk = 0  # bytes of the current chunk hashed so far
        self._size = 0
        self._chunks: list[str] = []
        self._index: ChunkIndex | None = None

    @property
    def size(self) -> int:
        """Bytes fed so far."""
        return self._size

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if self._index is not None:
            raise Misuse("IndexBuilder.feed after finish: the index is already made")
        view = memoryview(data).cast("B")
        # Refused before any hashing, so a refused piece leaves the builder as it was.
        if _chunk_count(self._size + len(view), self._chunk_size) > MAX_CHUNKS:
            raise BadInput(
                f"an image of at least {self._size + len(view)} bytes is more than {MAX_CHUNKS} chunks "
                f"of {self._chunk_size} bytes: use a bigger chunk size"
            )
        self._whole.update(view)
        self._size += len(view)
        while view:
            take = min(len(view), self._chunk_size - self._in_chunk)
            self._chunk.update(view[:take])
            self._in_chunk += take
            view = view[take:]
            if self._in_chunk == self._chunk_size:
                self._chunks.append(self._chunk.hexdigest())
                self._chunk = hashlib.sha256()
                self._in_chunk = 0

    def finish(self) -> ChunkIndex:
        """The index of the bytes fed; the same index again if called twice."""
        if self._index is None:
            chunks = list(self._chunks)
            if self._in_chunk:  # the short last chunk
                chunks.append(self._chunk.hexdigest())
            self._index = ChunkIndex(
                size=self._size,
                chunk_size=self._chunk_size,
                chunks=tuple(chunks),
                sha256=self._whole.hexdigest(),
            )
        return self._index


def local_sources(wanted: ChunkIndex, held: ChunkIndex | None) -> dict[int, int]:
    """For each chunk of `wanted` that the local image `held` also has, the number of a chunk of
    `held` to copy it from: the same position when that matches (a plain copy at the same offset),
    else the first chunk of `held` with that content. A chunk is matched by its hash and its length,
    so a short last chunk only matches one of the same length. Chunks of another size match nothing."""
    if held is None or held.chunk_size != wanted.chunk_size:
        return {}
    first: dict[tuple[str, int], int] = {}
    for number, digest in enumerate(held.chunks):
        first.setdefault((digest, held.span(number)[1]), number)
    sources: dict[int, int] = {}
    for number, digest in enumerate(wanted.chunks):
        length = wanted.span(number)[1]
        if number < held.count and held.chunks[number] == digest and held.span(number)[1] == length:
            sources[number] = number
        elif (found := first.get((digest, length))) is not None:
            sources[number] = found
    return sources


def missing_chunks(wanted: ChunkIndex, held: ChunkIndex | None) -> tuple[int, ...]:
    """The numbers of the chunks of `wanted`, ascending, that `held` cannot supply: those to fetch
    from a peer. `held` None means nothing is held locally."""
    sources = local_sources(wanted, held)
    return tuple(number for number in range(wanted.count) if number not in sources)


@dataclass(frozen=True)
class ChunkProgress:
    """Which of an index's `count` chunks a transfer has written and verified, so that a restart
    fetches only the others."""

    count: int
    done: frozenset[int] = frozenset()

    def __post_init__(self) -> None:
        if type(self.count) is not int or not 0 <= self.count <= _MAX_PROGRESS_COUNT:
            raise BadInput(f"a transfer of {_short(self.count)} chunks is not within 0-{_MAX_PROGRESS_COUNT}")
        if not isinstance(self.done, frozenset):
            raise BadInput(f"the finished chunks are a frozenset, not {type(self.done).__name__}")
        stray = [n for n in self.done if type(n) is not int or not 0 <= n < self.count]
        if stray:
            raise BadInput(
                f"chunks {_short(sorted(map(repr, stray)))} are not among the transfer's {self.count}"
            )

    def with_done(self, *numbers: int) -> ChunkProgress:
        """This progress with those chunks finished too. Pass several at once where you can: each
        call copies the set."""
        return ChunkProgress(self.count, self.done.union(numbers))

    def remaining(self) -> tuple[int, ...]:
        """The chunks still to do, ascending."""
        return tuple(number for number in range(self.count) if number not in self.done)

    def encode(self) -> bytes:
        """The magic, the version, the count, then one bit per chunk: chunk n is bit n % 8 (the least
        significant first) of byte n // 8, and the bits past the count are zero."""
        bitmap = bytearray(-(-self.count // 8))
        for number in self.done:
            bitmap[number >> 3] |= 1 << (number & 7)
        return _PROGRESS_HEADER.pack(PROGRESS_MAGIC, PROGRESS_VERSION, self.count) + bytes(bitmap)


def decode_progress(data: bytes, count: int) -> ChunkProgress:
    """The progress that `ChunkProgress.encode` gave these bytes, for a transfer of `count` chunks;
    DecodeError for anything else, a progress of another count included."""
    reader = Reader(data)
    magic, version, encoded_count = _PROGRESS_HEADER.unpack(reader.take(_PROGRESS_HEADER.size))
    if magic != PROGRESS_MAGIC:
        raise DecodeError(f"transfer progress starts with {PROGRESS_MAGIC!r}, not {magic!r}")
    if version != PROGRESS_VERSION:
        raise DecodeError(f"transfer progress version {version} is not {PROGRESS_VERSION}")
    if encoded_count != count:
        raise DecodeError(f"transfer progress is for {encoded_count} chunks, not {count}")
    length = -(-count // 8)
    if reader.remaining != length:
        raise DecodeError(
            f"transfer progress of {count} chunks has {length} bitmap bytes, not {reader.remaining}"
        )
    bitmap = reader.rest()
    if count % 8 and bitmap[-1] >> (count % 8):
        raise DecodeError(f"transfer progress marks chunks past its {count}")
    done = frozenset(
        at * 8 + bit for at, byte in enumerate(bitmap) if byte for bit in range(8) if byte >> bit & 1
    )
    return ChunkProgress(count, done)
