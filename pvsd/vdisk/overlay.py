"""The server-side write cache of a standard-mode vDisk ("cache on server"): one overlay per device.

A device booted from a shared, read-only image keeps its writes in two files named after its
MAC in a cache folder that every server of the farm can reach, so that the server taking over
a session after a failover sees every write acknowledged before:

    aa-bb-cc-dd-ee-ff.cache   the written sectors at their disk offsets (sparse, disk-sized)
    aa-bb-cc-dd-ee-ff.map     header, then a bitmap: bit i set means sector i is in the overlay

Map header (big-endian): 8-byte magic "PVSDMAP1" | u64 session id | u64 disk size | u32 sector
size. Bit i is bit (i % 8), least significant first, of bitmap byte i // 8.

Opening with the session, size and sector size the map records reuses the overlay as it is;
anything else (a new login, a mismatch, a missing or damaged file) starts an empty one.

One Overlay object per device and no sharing between threads: the session's I/O worker owns it.
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType

from pvsd.vdisk.fileio import pread_exact, pwrite_all

__all__ = ["MAP_MAGIC", "Overlay", "overlay_paths"]

MAP_MAGIC = b"PVSDMAP1"
_HEADER = struct.Struct("!8sQQI")
_MAC = re.compile(r"(?:[0-9a-f]{2}:){5}[0-9a-f]{2}")


def overlay_paths(cache_dir: Path, mac: str) -> tuple[Path, Path]:
    """The data and map files of the device with this MAC (canonical aa:bb:cc:dd:ee:ff form)."""
    # Only the canonical spelling: two spellings of one MAC must not name two overlays, and a
    # name built from anything else could reach outside the cache folder.
    if not _MAC.fullmatch(mac):
        raise ValueError(f"not a canonical MAC address: {mac!r}")
    stem = mac.replace(":", "-")
    return cache_dir / f"{stem}.cache", cache_dir / f"{stem}.map"


class Overlay:
    """A device's writes over a shared base image. Build one with `Overlay.open`."""

    def __init__(
        self,
        data_fd: int,
        map_fd: int,
        disk_size: int,
        sector_size: int,
        session: int,
        bitmap: bytearray,
        reused: bool,
    ) -> None:
        self._data_fd = data_fd
        self._map_fd = map_fd
        self.disk_size = disk_size
        self.sector_size = sector_size
        self.session = session
        self._sectors = disk_size // sector_size
        self._bitmap = bitmap
        self.reused = reused
        """True when `open` found the overlay of this session and kept it (a takeover)."""

    @classmethod
    def open(cls, cache_dir: Path, mac: str, disk_size: int, sector_size: int, session: int) -> Overlay:
        """Open the overlay of `mac`, kept if it belongs to this session, else emptied.

        The cache folder is not created: a missing one usually means the shared folder is not
        mounted, and writing under the bare mount point would hide the writes from the farm.
        """
        if sector_size <= 0 or sector_size & (sector_size - 1):
            raise ValueError(f"sector size must be a power of two, not {sector_size}")
        if disk_size <= 0 or disk_size % sector_size:
            raise ValueError(f"disk size {disk_size} is not a positive multiple of {sector_size}")
        if not 0 <= session < 1 << 64:
            raise ValueError(f"session id {session} does not fit in 64 bits")
        data_path, map_path = overlay_paths(cache_dir, mac)
        data_fd = os.open(data_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            map_fd = os.open(map_path, os.O_RDWR | os.O_CREAT, 0o600)
        except BaseException:
            os.close(data_fd)
            raise
        bitmap_size = _bitmap_size(disk_size // sector_size)
        overlay = cls(data_fd, map_fd, disk_size, sector_size, session, bytearray(bitmap_size), reused=False)
        try:
            bitmap = overlay._load()
            if bitmap is None:
                overlay.wipe()
            else:
                overlay._bitmap = bitmap
                overlay.reused = True
        except BaseException:
            overlay.close()
            raise
        return overlay

    def _load(self) -> bytearray | None:
        """The stored bitmap if the files belong to this session and look whole, else None."""
        expected = _HEADER.pack(MAP_MAGIC, self.session, self.disk_size, self.sector_size)
        if os.fstat(self._data_fd).st_size != self.disk_size:
            return None
        if os.fstat(self._map_fd).st_size != _HEADER.size + len(self._bitmap):
            return None
        if pread_exact(self._map_fd, _HEADER.size, 0, "overlay map") != expected:
            return None
        bitmap = bytearray(pread_exact(self._map_fd, len(self._bitmap), _HEADER.size, "overlay map"))
        spare = len(bitmap) * 8 - self._sectors
        if spare:
            # Bits past the last sector mean nothing; clearing them keeps written_sectors exact.
            bitmap[-1] &= 0xFF >> spare
        return bitmap

    def wipe(self) -> None:
        """Empty the overlay: every sector reads from the base image again."""
        self._check_open()
        # Order matters for a crash halfway: the header naming this session is written last,
        # after the emptied files are on disk, so no map can ever claim sectors of wiped data.
        os.ftruncate(self._map_fd, 0)
        os.ftruncate(self._data_fd, 0)
        os.ftruncate(self._data_fd, self.disk_size)  # sparse: costs no space until written
        os.ftruncate(self._map_fd, _HEADER.size + len(self._bitmap))
        os.fsync(self._data_fd)
        os.fsync(self._map_fd)
        header = _HEADER.pack(MAP_MAGIC, self.session, self.disk_size, self.sector_size)
        pwrite_all(self._map_fd, header, 0)
        os.fsync(self._map_fd)
        self._bitmap[:] = bytes(len(self._bitmap))

    def write(self, offset: int, data: bytes) -> None:
        """Store `data` at `offset`; once this returns, the data and its map bits are in the files.

        The caller acknowledges the write after this returns, so both pwrites happen here. They
        reach the files (every process and, on a coherent share, every server sees them) but not
        necessarily the disk: `flush` is what makes them survive a power loss.
        """
        self._check_open()
        first, count = self._sector_range(offset, len(data))
        if not count:
            return
        # Data before map: a crash in between leaves the old content visible for a write that
        # was never acknowledged, never a map bit pointing at sectors that were not written.
        pwrite_all(self._data_fd, data, offset)
        low, high = first // 8, (first + count - 1) // 8 + 1
        before = bytes(self._bitmap[low:high])
        _set_bits(self._bitmap, first, count)
        if self._bitmap[low:high] != before:
            pwrite_all(self._map_fd, self._bitmap[low:high], _HEADER.size + low)

    def read(self, offset: int, length: int, base: Callable[[int, int], bytes]) -> bytes:
        """The disk's content at `offset`: overlay sectors from the data file, the rest from `base`.

        `base(offset, length)` returns the shared image's bytes. It is called once per run of
        sectors not in the overlay, so a range without overlay sectors costs one call.
        """
        self._check_open()
        first, count = self._sector_range(offset, length)
        if not count:
            return b""
        bits = _extract_bits(self._bitmap, first, count)
        if bits == 0:
            return _base_read(base, offset, length)
        parts: list[bytes] = []
        position = offset
        for in_overlay, run in _runs(bits, count):
            size = run * self.sector_size
            if in_overlay:
                parts.append(pread_exact(self._data_fd, size, position, "overlay file"))
            else:
                parts.append(_base_read(base, position, size))
            position += size
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def written_sectors(self) -> int:
        return int.from_bytes(self._bitmap, "little").bit_count()

    def flush(self) -> None:
        """Make every write so far durable: data first, then the map that points at it."""
        self._check_open()
        os.fsync(self._data_fd)
        os.fsync(self._map_fd)

    def close(self) -> None:
        """Close the files, keeping their content for a takeover. Closing twice is harmless."""
        for fd in (self._data_fd, self._map_fd):
            if fd >= 0:
                os.close(fd)
        self._data_fd = self._map_fd = -1

    @property
    def closed(self) -> bool:
        return self._data_fd < 0

    def __enter__(self) -> Overlay:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError("the overlay is closed")

    def _sector_range(self, offset: int, length: int) -> tuple[int, int]:
        if offset < 0 or length < 0 or offset % self.sector_size or length % self.sector_size:
            raise ValueError(
                f"offset {offset} and length {length} must be non-negative multiples of {self.sector_size}"
            )
        if offset + length > self.disk_size:
            raise ValueError(f"{length} bytes at {offset} go past the end of the disk ({self.disk_size})")
        return offset // self.sector_size, length // self.sector_size


def _bitmap_size(sectors: int) -> int:
    return (sectors + 7) // 8


def _set_bits(bitmap: bytearray, first: int, count: int) -> None:
    end = first + count
    low, high = first // 8, end // 8
    if low == high:
        bitmap[low] |= ((1 << count) - 1) << (first % 8)
        return
    if first % 8:
        bitmap[low] |= (0xFF << (first % 8)) & 0xFF
        low += 1
    bitmap[low:high] = b"\xff" * (high - low)
    if end % 8:
        bitmap[high] |= (1 << (end % 8)) - 1


def _extract_bits(bitmap: bytearray, first: int, count: int) -> int:
    """Bits first..first+count-1 as an int whose bit 0 is sector `first`."""
    low, high = first // 8, (first + count - 1) // 8 + 1
    # One conversion of the bytes covering the range: the run search below then works on a
    # Python int with C-speed shifts, instead of one Python step per sector.
    window = int.from_bytes(bitmap[low:high], "little")
    return (window >> (first % 8)) & ((1 << count) - 1)


def _runs(bits: int, count: int) -> Iterator[tuple[bool, int]]:
    """(in overlay, length) for each run of equal bits in the `count` low bits of `bits`, lowest first."""
    done = 0
    while bits:
        in_overlay = bool(bits & 1)
        # Adding one turns a run of low ones into zeros, so both cases count trailing zeros.
        run = min(_trailing_zeros(bits + 1 if in_overlay else bits), count - done)
        yield in_overlay, run
        bits >>= run
        done += run
    if done < count:
        yield False, count - done


def _trailing_zeros(value: int) -> int:
    return (value & -value).bit_length() - 1


def _base_read(base: Callable[[int, int], bytes], offset: int, length: int) -> bytes:
    data = base(offset, length)
    if len(data) != length:
        # A short base read would shift every later byte of the answer: corrupt, not merely short.
        raise ValueError(f"base image returned {len(data)} bytes at {offset}, expected {length}")
    return data
