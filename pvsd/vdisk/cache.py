"""The device-side write cache of a standard-mode vDisk: PVS's "cache in device RAM with overflow on disk".

The target keeps its writes to the shared, read-only image here, never on the server. The
cache starts empty at each boot (the overflow file is truncated when the cache is built) and
dies with the session, exactly like a PVS standard-mode target: nothing in it is durable, so a
flush has nothing to do.

Writes are kept in blocks of `BLOCK_SIZE` bytes (or one sector when sectors are larger). A
block lives in RAM until `ram_bytes` are used, then in the overflow file at a slot given out
append-style, up to `max_bytes` in all. Blocks are never given back: TRIM is a no-op (see
`WriteCache.trim`), so the set of cached sectors only grows during a session.

The cache never sees the base image. A partly written block therefore carries a mask of the
sectors it holds, and a read is done in two steps the caller can await in between:
`missing` names the ranges to fetch from the stream, `merge` lays the cache over them.
Because cached sectors are never dropped, a write landing while the fetch is in flight is
harmless: `merge` uses the cache as it is then, and every sector it no longer needs was
fetched anyway.

One WriteCache per session, used from one thread (the agent's event loop).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from pvsd.vdisk.fileio import pread_exact, pwrite_all

__all__ = ["BLOCK_SIZE", "CacheFull", "CacheStats", "WriteCache"]

BLOCK_SIZE = 4096
"""The cache's unit of space: small enough to waste little on scattered 4 KiB writes, large
enough that the per-block dict entries cost little next to the data."""

# errno values that mean the overflow file's disk is full, which the guest must see as a full
# cache (ENOSPC), not as an I/O error.
_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})

Data = bytes | bytearray | memoryview


class CacheFull(Exception):
    """A write needs more cache than the limits allow. The cache was left exactly as it was."""

    def __init__(self, offset: int, length: int, needed: int, used: int, ram_used: int, limit: int) -> None:
        self.offset = offset
        self.length = length
        self.needed = needed
        """Bytes of new cache space the write needed."""
        self.used = used
        """Bytes of cache in use (RAM and overflow file) when the write was refused."""
        self.limit = limit
        """The most bytes the cache may hold."""
        super().__init__(
            f"write cache full: {length} bytes at {offset} need {needed} more bytes of cache, "
            f"{used} of {limit} bytes are in use ({ram_used} in RAM, {used - ram_used} in the overflow file)"
        )


@dataclass(frozen=True)
class CacheStats:
    ram_bytes_used: int
    file_bytes_used: int
    used_bytes: int
    """RAM and overflow file together: what counts against `max_bytes_limit`."""
    blocks: int
    block_size: int
    ram_bytes_limit: int
    max_bytes_limit: int
    """The effective limits: RAM never exceeds the total, and without a file the total is the RAM."""


class WriteCache:
    """A session's writes over the streamed base image, in RAM first, then in an overflow file."""

    def __init__(
        self,
        disk_size: int,
        sector_size: int,
        ram_bytes: int,
        max_bytes: int,
        overflow_path: Path | None,
    ) -> None:
        if sector_size <= 0 or sector_size & (sector_size - 1):
            raise ValueError(f"sector size must be a power of two, not {sector_size}")
        if disk_size <= 0 or disk_size % sector_size:
            raise ValueError(f"disk size {disk_size} is not a positive multiple of {sector_size}")
        if ram_bytes < 0 or max_bytes < 0:
            raise ValueError(f"cache limits must not be negative (RAM {ram_bytes}, total {max_bytes})")
        self.disk_size = disk_size
        self.sector_size = sector_size
        self.block_size = max(BLOCK_SIZE, sector_size)
        self.overflow_path = overflow_path
        self._limit = max_bytes if overflow_path is not None else min(ram_bytes, max_bytes)
        self._ram_limit = min(ram_bytes, self._limit)
        self._zeros = bytes(self.block_size)
        self._masks: dict[int, int] = {}
        """Block index -> bit i set when sector i of the block is cached. Every cached block is here."""
        self._ram: dict[int, bytearray] = {}
        self._slots: dict[int, int] = {}
        """Block index -> slot in the overflow file (slot n is at byte n * block_size)."""
        self._final: CacheStats | None = None
        self._fd = -1
        if overflow_path is not None:
            # Truncated: whatever a previous boot left there is stale by definition. The file
            # grows one block per slot as the cache overflows, so it costs no space until then.
            self._fd = os.open(overflow_path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
            # The mode above applies only to a new file; a left-over one may be readable by all,
            # and this file holds whatever the guest writes.
            try:
                os.fchmod(self._fd, 0o600)
            except BaseException:
                os.close(self._fd)
                raise

    def write(self, offset: int, data: Data) -> None:
        """Cache `data` at `offset`, or raise CacheFull and change nothing."""
        view = memoryview(data)
        self._store(offset, view.nbytes, view.cast("B") if view.format != "B" else view)

    def write_zeroes(self, offset: int, length: int) -> None:
        """Cache zeros over the range: like `write` of that many zero bytes, space and CacheFull included.

        Zeros cannot simply mean "not cached": the base image under the range is not zero.
        """
        self._store(offset, length, None)

    def trim(self, offset: int, length: int) -> None:
        """Do nothing: TRIM is a hint, and keeping the data is always a correct answer to it.

        Dropping the cached sectors would make the range read the base image again, stale data
        that a guest which believes trimmed sectors read as zeros would take for its own. It would
        also break the promise `missing`/`merge` rely on, that cached sectors never disappear
        while a read is fetching the rest.
        """
        self._check_open()
        self._check_range(offset, length)

    def missing(self, offset: int, length: int) -> list[tuple[int, int]]:
        """The (offset, length) runs of the range that are not cached, lowest first, adjacent runs merged."""
        self._check_open()
        self._check_range(offset, length)
        if not length:
            return []
        if not self._masks:
            return [(offset, length)]
        runs: list[list[int]] = []

        def add(start: int, end: int) -> None:
            if runs and runs[-1][1] == start:
                runs[-1][1] = end
            else:
                runs.append([start, end])

        sector = self.sector_size
        for block, low, high in self._pieces(offset, length):
            start = block * self.block_size
            mask = self._masks.get(block, 0)
            wanted = self._mask(low, high)
            held = mask & wanted
            if not held:
                add(start + low, start + high)
            elif held != wanted:
                for position in range(low, high, sector):
                    if not mask >> (position // sector) & 1:
                        add(start + position, start + position + sector)
        return [(start, end - start) for start, end in runs]

    def merge(
        self,
        offset: int,
        length: int,
        fetched: Mapping[int, Data] | Iterable[tuple[int, Data]],
    ) -> bytes:
        """The disk's content at `offset`: `fetched` base-image ranges with the cached sectors laid over.

        `fetched` maps a disk offset to the base image's bytes there: usually the runs `missing`
        gave, but any sector-aligned pieces inside the range will do as long as they cover every
        sector not cached now. Cached sectors win over fetched ones.
        """
        self._check_open()
        self._check_range(offset, length)
        pieces = list(fetched.items() if isinstance(fetched, Mapping) else fetched)
        end = offset + length
        spans: list[tuple[int, int]] = []
        for start, data in pieces:
            size = len(data)
            aligned = not (start - offset) % self.sector_size and not size % self.sector_size
            if not aligned or start < offset or start + size > end:
                raise ValueError(
                    f"fetched {size} bytes at {start} are not whole sectors inside {length} bytes at {offset}"
                )
            spans.append((start, start + size))
        gaps = _uncovered(self.missing(offset, length), spans)
        if gaps:
            start, size = gaps[0]
            raise ValueError(f"nothing fetched for {size} uncached bytes at {start} (of {len(gaps)} gaps)")
        if len(pieces) == 1 and spans[0] == (offset, end) and not self._any_cached(offset, length):
            return bytes(pieces[0][1])
        result = bytearray(length)
        for start, data in pieces:
            result[start - offset : start - offset + len(data)] = data
        sector = self.sector_size
        for block, low, high in self._pieces(offset, length):
            mask = self._masks.get(block, 0)
            wanted = self._mask(low, high)
            held = mask & wanted
            if not held:
                continue
            content = self._load(block, low, high)
            target = block * self.block_size + low - offset
            if held == wanted:
                result[target : target + high - low] = content
                continue
            for position in range(low, high, sector):
                if mask >> (position // sector) & 1:
                    source = position - low
                    result[target + source : target + source + sector] = content[source : source + sector]
        return bytes(result)

    def read(self, offset: int, length: int, base: Callable[[int, int], bytes]) -> bytes:
        """`missing`, `base(offset, length)` for each run, then `merge`: for callers that need not await."""
        fetched: list[tuple[int, Data]] = []
        for start, size in self.missing(offset, length):
            data = base(start, size)
            if len(data) != size:
                # A short base read would leave a hole merge would refuse anyway; say why here.
                raise ValueError(f"base image returned {len(data)} bytes at {start}, expected {size}")
            fetched.append((start, data))
        return self.merge(offset, length, fetched)

    def stats(self) -> CacheStats:
        """The space in use. After `close`, the figures at the time of closing."""
        if self._final is not None:
            return self._final
        ram = len(self._ram) * self.block_size
        file = len(self._slots) * self.block_size
        return CacheStats(
            ram_bytes_used=ram,
            file_bytes_used=file,
            used_bytes=ram + file,
            blocks=len(self._masks),
            block_size=self.block_size,
            ram_bytes_limit=self._ram_limit,
            max_bytes_limit=self._limit,
        )

    def close(self) -> None:
        """Drop the cache: free the RAM, close and delete the overflow file. Closing twice is harmless."""
        if self.closed:
            return
        self._final = self.stats()
        self._ram.clear()
        self._masks.clear()
        self._slots.clear()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            if self.overflow_path is not None:  # an open overflow file always has its path
                self.overflow_path.unlink(missing_ok=True)

    @property
    def closed(self) -> bool:
        return self._final is not None

    def __enter__(self) -> WriteCache:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _store(self, offset: int, length: int, data: memoryview | None) -> None:
        """Write `data` (zeros when None) at `offset`: all of it, or nothing and CacheFull."""
        self._check_open()
        self._check_range(offset, length)
        if not length:
            return
        pieces = list(self._pieces(offset, length))
        new = [block for block, _, _ in pieces if block not in self._masks]
        size = self.block_size
        used = (len(self._ram) + len(self._slots)) * size
        needed = len(new) * size
        if used + needed > self._limit:
            raise CacheFull(offset, length, needed, used, len(self._ram) * size, self._limit)
        room = max(0, (self._ram_limit - len(self._ram) * size) // size)
        to_file = {block: len(self._slots) + index for index, block in enumerate(new[room:])}

        def piece_data(block: int, low: int, high: int) -> Data:
            if data is None:
                return self._zeros[: high - low]
            start = block * size + low - offset
            return data[start : start + high - low]

        # New file blocks first, whole, at slots nothing points to yet: if the local disk is
        # full, the write fails here with the cache untouched. Writing whole blocks also means
        # later partial writes to them overwrite allocated space and need none.
        try:
            for block, low, high in pieces:
                slot = to_file.get(block)
                if slot is None:
                    continue
                if high - low == size:
                    pwrite_all(self._fd, piece_data(block, low, high), slot * size)
                else:
                    content = bytearray(size)
                    content[low:high] = piece_data(block, low, high)
                    pwrite_all(self._fd, content, slot * size)
        except OSError as error:
            if error.errno in _DISK_FULL:
                raise CacheFull(offset, length, needed, used, len(self._ram) * size, self._limit) from error
            raise
        for block, low, high in pieces:
            if block in to_file:
                self._slots[block] = to_file[block]
            elif block in self._slots:
                pwrite_all(self._fd, piece_data(block, low, high), self._slots[block] * size + low)
            else:
                if block not in self._ram:
                    self._ram[block] = bytearray(size)
                self._ram[block][low:high] = piece_data(block, low, high)
            self._masks[block] = self._masks.get(block, 0) | self._mask(low, high)

    def _load(self, block: int, low: int, high: int) -> bytes | bytearray:
        """Bytes low..high of a cached block."""
        content = self._ram.get(block)
        if content is not None:
            return content[low:high]
        return pread_exact(self._fd, high - low, self._slots[block] * self.block_size + low, "overflow file")

    def _any_cached(self, offset: int, length: int) -> bool:
        return any(
            self._masks.get(block, 0) & self._mask(low, high)
            for block, low, high in self._pieces(offset, length)
        )

    def _pieces(self, offset: int, length: int) -> Iterator[tuple[int, int, int]]:
        """(block, low, high) for each block the range touches: bytes low..high of the block are in it."""
        size = self.block_size
        end = offset + length
        position = offset
        while position < end:
            block, low = divmod(position, size)
            high = min(size, end - block * size)
            yield block, low, high
            position = block * size + high

    def _mask(self, low: int, high: int) -> int:
        """The sector bits of bytes low..high of a block."""
        return ((1 << ((high - low) // self.sector_size)) - 1) << (low // self.sector_size)

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError("the write cache is closed")

    def _check_range(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset % self.sector_size or length % self.sector_size:
            raise ValueError(
                f"offset {offset} and length {length} must be non-negative multiples of {self.sector_size}"
            )
        if offset + length > self.disk_size:
            raise ValueError(f"{length} bytes at {offset} go past the end of the disk ({self.disk_size})")


def _uncovered(runs: list[tuple[int, int]], spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The parts of the sorted, disjoint (offset, length) `runs` that no (start, end) span covers."""
    covered: list[list[int]] = []
    for low, high in sorted(spans):
        if covered and low <= covered[-1][1]:
            covered[-1][1] = max(covered[-1][1], high)
        elif low < high:
            covered.append([low, high])
    gaps: list[tuple[int, int]] = []
    index = 0
    # Both lists are sorted and disjoint, so one pass over each: a large read with many
    # scattered cached sectors stays linear.
    for start, size in runs:
        position, end = start, start + size
        while index < len(covered) and covered[index][1] <= position:
            index += 1
        scan = index
        while position < end and scan < len(covered) and covered[scan][0] < end:
            low, high = covered[scan]
            if low > position:
                gaps.append((position, low - position))
            position = max(position, high)
            scan += 1
        if position < end:
            gaps.append((position, end - position))
    return gaps
