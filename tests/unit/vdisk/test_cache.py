"""Device write caches: reads match a bytearray, a full cache refuses and changes nothing, the file goes."""

from __future__ import annotations

import errno
import itertools
import os
import random
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from pvsd.vdisk.cache import BLOCK_SIZE, CacheFull, WriteCache


class Base:
    """A base image in memory that counts the reads asked of it."""

    def __init__(self, size: int, seed: int = 1) -> None:
        self.content = random.Random(seed).randbytes(size)
        self.calls: list[tuple[int, int]] = []

    def __call__(self, offset: int, length: int) -> bytes:
        self.calls.append((offset, length))
        return self.content[offset : offset + length]


def pattern(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def runs_of(sectors: list[int], sector_size: int) -> list[tuple[int, int]]:
    """(offset, length) runs of consecutive sector numbers."""
    runs: list[tuple[int, int]] = []
    for sector in sectors:
        if runs and runs[-1][0] + runs[-1][1] == sector * sector_size:
            runs[-1] = (runs[-1][0], runs[-1][1] + sector_size)
        else:
            runs.append((sector * sector_size, sector_size))
    return runs


class CacheMatchesModel(RuleBasedStateMachine):
    """WriteCache over a random base image against a bytearray written and read directly.

    The limits are a few blocks, so writes overflow into the file and some hit CacheFull; the
    model predicts which ones from the blocks it knows are cached.
    """

    def __init__(self) -> None:
        super().__init__()
        self.folder = Path(tempfile.mkdtemp(prefix="write-cache-"))
        self.cache: WriteCache | None = None

    @initialize(
        sector_size=st.sampled_from([512, 4096]),
        sectors=st.integers(64, 256),
        seed=st.integers(0, 1 << 32),
        ram_blocks=st.integers(0, 6),
        max_blocks=st.integers(0, 40),
        slack=st.sampled_from([0, 1, 511]),
        overflow=st.booleans(),
    )
    def start(
        self,
        sector_size: int,
        sectors: int,
        seed: int,
        ram_blocks: int,
        max_blocks: int,
        slack: int,
        overflow: bool,
    ) -> None:
        self.sector_size = sector_size
        self.sectors = sectors
        self.size = sectors * sector_size
        self.block = max(BLOCK_SIZE, sector_size)
        self.base = Base(self.size, seed)
        self.model = bytearray(self.base.content)
        self.written: set[int] = set()
        self.blocks: set[int] = set()
        ram_bytes = ram_blocks * self.block + slack
        max_bytes = max_blocks * self.block + slack
        self.path = self.folder / "overflow.cache" if overflow else None
        self.limit = max_bytes if overflow else min(ram_bytes, max_bytes)
        self.ram_limit = min(ram_bytes, self.limit)
        self.cache = WriteCache(self.size, sector_size, ram_bytes, max_bytes, self.path)

    def span(self, first: int, count: int) -> tuple[int, int]:
        first = min(first, self.sectors - 1)
        count = min(count, self.sectors - first)
        return first * self.sector_size, count * self.sector_size

    def store(self, first: int, count: int, data: bytes | None) -> None:
        assert self.cache is not None
        offset, length = self.span(first, count)
        if data is not None:
            data = data[:length]
        touched = {block for block in range(offset // self.block, (offset + length - 1) // self.block + 1)}
        fits = (len(self.blocks | touched) * self.block) <= self.limit
        before = self.cache.stats()
        try:
            if data is None:
                self.cache.write_zeroes(offset, length)
            else:
                self.cache.write(offset, data)
        except CacheFull as error:
            event("cache full")
            assert not fits
            assert error.needed == len(touched - self.blocks) * self.block
            assert self.cache.stats() == before
            assert self.cache.read(0, self.size, self.base) == self.model
            return
        assert fits
        self.model[offset : offset + length] = bytes(length) if data is None else data
        self.written.update(range(offset // self.sector_size, (offset + length) // self.sector_size))
        self.blocks |= touched

    @rule(first=st.integers(0, 255), count=st.integers(1, 24), seed=st.integers(0, 1 << 32))
    def write(self, first: int, count: int, seed: int) -> None:
        self.store(first, count, pattern(seed, count * self.sector_size))

    @rule(first=st.integers(0, 255), count=st.integers(1, 24))
    def write_zeroes(self, first: int, count: int) -> None:
        self.store(first, count, None)

    @rule(first=st.integers(0, 255), count=st.integers(0, 256))
    def trim(self, first: int, count: int) -> None:
        assert self.cache is not None
        offset, length = self.span(first, count)
        self.cache.trim(offset, length)

    @rule(first=st.integers(0, 255), count=st.integers(0, 256))
    def read(self, first: int, count: int) -> None:
        assert self.cache is not None
        offset, length = self.span(first, count)
        self.base.calls.clear()
        assert self.cache.read(offset, length, self.base) == self.model[offset : offset + length]
        uncached = [s for s in range(offset // self.sector_size, (offset + length) // self.sector_size)]
        expected = runs_of([s for s in uncached if s not in self.written], self.sector_size)
        assert self.base.calls == expected

    @rule(first=st.integers(0, 255), count=st.integers(0, 256))
    def missing_then_merge(self, first: int, count: int) -> None:
        """The agent's way: ask what is missing, fetch it (as a dict here), merge."""
        assert self.cache is not None
        offset, length = self.span(first, count)
        missing = self.cache.missing(offset, length)
        for (start, size), (following, _) in itertools.pairwise(missing):
            assert start + size < following  # merged: no two runs touch
        fetched = {start: self.base.content[start : start + size] for start, size in missing}
        assert self.cache.merge(offset, length, fetched) == self.model[offset : offset + length]

    @rule(first=st.integers(0, 255), count=st.integers(1, 256))
    def merge_with_everything_fetched(self, first: int, count: int) -> None:
        """Fetching more than missing is allowed: the cached sectors win."""
        assert self.cache is not None
        offset, length = self.span(first, count)
        whole = [(offset, self.base.content[offset : offset + length])]
        assert self.cache.merge(offset, length, whole) == self.model[offset : offset + length]

    @precondition(lambda self: self.cache is not None)
    @invariant()
    def accounts_for_every_block(self) -> None:
        assert self.cache is not None
        stats = self.cache.stats()
        assert stats.blocks == len(self.blocks)
        assert (
            stats.used_bytes == stats.ram_bytes_used + stats.file_bytes_used == len(self.blocks) * self.block
        )
        assert stats.used_bytes <= stats.max_bytes_limit == self.limit
        # RAM fills first, and blocks never move or go.
        assert stats.ram_bytes_used == min(len(self.blocks), self.ram_limit // self.block) * self.block
        if self.path is not None:
            assert self.path.stat().st_size == stats.file_bytes_used
        if stats.file_bytes_used:
            event("overflowed into the file")

    def teardown(self) -> None:
        if self.cache is not None:
            self.cache.close()
            if self.path is not None:
                assert not self.path.exists()
        shutil.rmtree(self.folder, ignore_errors=True)


CacheMatchesModel.TestCase.settings = settings(max_examples=200, stateful_step_count=30, deadline=None)
TestCacheMatchesModel = CacheMatchesModel.TestCase


@pytest.fixture(params=[512, 4096], ids=["512", "4096"])
def sector_size(request: pytest.FixtureRequest) -> int:
    size: int = request.param
    return size


def test_a_full_cache_says_how_full_and_changes_nothing(tmp_path: Path, sector_size: int) -> None:
    size = 64 * sector_size
    base = Base(size)
    path = tmp_path / "overflow.cache"
    with WriteCache(
        size, sector_size, ram_bytes=BLOCK_SIZE, max_bytes=3 * BLOCK_SIZE, overflow_path=path
    ) as cache:
        cache.write(0, b"\x01" * 3 * BLOCK_SIZE)
        before = cache.read(0, size, base)
        stats = cache.stats()
        with pytest.raises(CacheFull) as caught:
            # Its first block is already cached, the second is not: the whole write is refused.
            cache.write(2 * BLOCK_SIZE, b"\x02" * 2 * BLOCK_SIZE)
        message = str(caught.value)
        assert f"{2 * BLOCK_SIZE} bytes at {2 * BLOCK_SIZE}" in message
        assert f"need {BLOCK_SIZE} more bytes" in message
        assert f"{3 * BLOCK_SIZE} of {3 * BLOCK_SIZE} bytes are in use" in message
        assert f"{BLOCK_SIZE} in RAM, {2 * BLOCK_SIZE} in the overflow file" in message
        assert (caught.value.needed, caught.value.used, caught.value.limit) == (
            BLOCK_SIZE,
            3 * BLOCK_SIZE,
            3 * BLOCK_SIZE,
        )
        assert cache.stats() == stats
        assert cache.read(0, size, base) == before
        with pytest.raises(CacheFull):
            cache.write_zeroes(0, size)
        # Overwriting cached sectors needs no space, even when the cache is full.
        cache.write(BLOCK_SIZE, b"\x03" * sector_size)
        assert cache.read(BLOCK_SIZE, sector_size, base) == b"\x03" * sector_size


def test_ram_only_cache_is_limited_by_ram(sector_size: int) -> None:
    with WriteCache(
        64 * sector_size, sector_size, ram_bytes=2 * BLOCK_SIZE, max_bytes=1 << 30, overflow_path=None
    ) as cache:
        cache.write(0, bytes(2 * BLOCK_SIZE))
        with pytest.raises(CacheFull, match=f"of {2 * BLOCK_SIZE} bytes are in use"):
            cache.write(2 * BLOCK_SIZE, bytes(sector_size))
        assert cache.stats().max_bytes_limit == 2 * BLOCK_SIZE


def test_overflow_file_is_emptied_grows_with_use_and_goes_at_close(tmp_path: Path, sector_size: int) -> None:
    path = tmp_path / "overflow.cache"
    path.write_bytes(b"stale data from the last boot" * 1000)
    size = 256 * sector_size
    base = Base(size)
    cache = WriteCache(size, sector_size, ram_bytes=0, max_bytes=size, overflow_path=path)
    assert path.stat().st_size == 0
    assert (path.stat().st_mode & 0o777) == 0o600
    cache.write(size - sector_size, b"\x05" * sector_size)
    cache.write(0, b"\x06" * sector_size)
    # Two blocks, far apart on the disk, side by side in the file: it holds only what is cached.
    assert path.stat().st_size == 2 * BLOCK_SIZE
    assert cache.stats().file_bytes_used == 2 * BLOCK_SIZE
    expected = bytearray(base.content)
    expected[-sector_size:] = b"\x05" * sector_size
    expected[:sector_size] = b"\x06" * sector_size
    assert cache.read(0, size, base) == expected
    cache.close()
    assert not path.exists()
    cache.close()
    assert cache.closed
    assert cache.stats().file_bytes_used == 2 * BLOCK_SIZE  # the figures at closing, for the final status
    with pytest.raises(ValueError, match="closed"):
        cache.read(0, sector_size, base)


def test_missing_returns_merged_runs_across_blocks() -> None:
    cache = WriteCache(64 * 512, 512, ram_bytes=1 << 20, max_bytes=1 << 20, overflow_path=None)
    assert cache.missing(0, 16 * 512) == [(0, 16 * 512)]
    cache.write(1 * 512, bytes(3 * 512))  # sectors 1-3 of block 0
    cache.write(10 * 512, bytes(512))  # sector 2 of block 1
    # Sectors 4-7 of block 0 and 8-9 of block 1 are one run; 11-15 and the uncached block 2 another.
    assert cache.missing(0, 24 * 512) == [(0, 512), (4 * 512, 6 * 512), (11 * 512, 13 * 512)]
    assert cache.missing(1 * 512, 3 * 512) == []
    assert cache.missing(2 * 512, 0) == []


def test_a_write_while_fetching_is_seen_by_merge() -> None:
    """The agent awaits the stream between missing and merge; a write may land meanwhile."""
    size = 64 * 512
    base = Base(size)
    cache = WriteCache(size, 512, ram_bytes=1 << 20, max_bytes=1 << 20, overflow_path=None)
    missing = cache.missing(0, 16 * 512)
    cache.write(3 * 512, b"\x07" * 512)
    fetched = [(start, base(start, length)) for start, length in missing]
    expected = bytearray(base.content[: 16 * 512])
    expected[3 * 512 : 4 * 512] = b"\x07" * 512
    assert cache.merge(0, 16 * 512, fetched) == expected


def test_merge_refuses_holes_and_strays() -> None:
    size = 64 * 512
    base = Base(size)
    cache = WriteCache(size, 512, ram_bytes=1 << 20, max_bytes=1 << 20, overflow_path=None)
    cache.write(512, bytes(512))
    with pytest.raises(ValueError, match="nothing fetched for 512 uncached bytes at 0"):
        cache.merge(0, 4 * 512, [(2 * 512, base(2 * 512, 2 * 512))])
    with pytest.raises(ValueError, match="not whole sectors"):
        cache.merge(0, 4 * 512, [(0, base(0, 5 * 512))])
    with pytest.raises(ValueError, match="not whole sectors"):
        cache.merge(512, 4 * 512, [(0, base(0, 512))])
    with pytest.raises(ValueError, match="not whole sectors"):
        cache.merge(0, 4 * 512, [(0, base(0, 100))])
    with pytest.raises(ValueError, match="returned 10 bytes"):
        cache.read(0, 4 * 512, lambda offset, length: b"x" * 10)
    assert (
        cache.merge(2 * 512, 2 * 512, {2 * 512: base(2 * 512, 512), 3 * 512: base(3 * 512, 512)})
        == base.content[2 * 512 : 4 * 512]
    )


@pytest.mark.parametrize(
    ("offset", "length"),
    [(-512, 512), (100, 512), (0, 100), (0, 65 * 512), (64 * 512, 512), (63 * 512, 2 * 512)],
)
def test_misaligned_or_outside_the_disk_is_a_value_error(offset: int, length: int) -> None:
    cache = WriteCache(64 * 512, 512, ram_bytes=1 << 20, max_bytes=1 << 20, overflow_path=None)
    with pytest.raises(ValueError):
        cache.write(offset, bytes(max(length, 0)))
    with pytest.raises(ValueError):
        cache.missing(offset, length)
    with pytest.raises(ValueError):
        cache.write_zeroes(offset, length)
    with pytest.raises(ValueError):
        cache.trim(offset, length)
    assert cache.stats().blocks == 0


@pytest.mark.parametrize(
    ("disk_size", "sector_size", "ram_bytes", "max_bytes"),
    [
        (64 * 512, 500, 0, 0),
        (64 * 512 + 1, 512, 0, 0),
        (0, 512, 0, 0),
        (64 * 512, 512, -1, 0),
        (64 * 512, 512, 0, -1),
    ],
)
def test_bad_geometry_or_limits(disk_size: int, sector_size: int, ram_bytes: int, max_bytes: int) -> None:
    with pytest.raises(ValueError):
        WriteCache(disk_size, sector_size, ram_bytes, max_bytes, None)


def test_trim_keeps_the_data() -> None:
    size = 64 * 512
    base = Base(size)
    cache = WriteCache(size, 512, ram_bytes=1 << 20, max_bytes=1 << 20, overflow_path=None)
    cache.write(0, b"\x08" * 4096)
    cache.trim(0, size)
    assert cache.read(0, 4096, base) == b"\x08" * 4096
    assert cache.stats().blocks == 1


def test_sectors_larger_than_a_block_make_the_block() -> None:
    size = 16 * 8192
    base = Base(size)
    cache = WriteCache(size, 8192, ram_bytes=8192, max_bytes=8192, overflow_path=None)
    assert cache.block_size == 8192
    cache.write(8192, b"\x09" * 8192)
    assert (
        cache.read(0, 3 * 8192, base)
        == base.content[:8192] + b"\x09" * 8192 + base.content[2 * 8192 : 3 * 8192]
    )
    with pytest.raises(CacheFull):
        cache.write(0, bytes(8192))


def test_local_disk_full_is_a_full_cache_and_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sector_size: int
) -> None:
    size = 64 * sector_size
    base = Base(size)
    path = tmp_path / "overflow.cache"
    cache = WriteCache(size, sector_size, ram_bytes=BLOCK_SIZE, max_bytes=size, overflow_path=path)
    cache.write(0, b"\x01" * 2 * BLOCK_SIZE)
    before, stats = cache.read(0, size, base), cache.stats()

    def no_space(fd: int, data: bytes, offset: int) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "pwrite", no_space)
    with pytest.raises(CacheFull) as caught:
        cache.write(BLOCK_SIZE, b"\x02" * 3 * BLOCK_SIZE)
    assert isinstance(caught.value.__cause__, OSError)
    assert cache.stats() == stats
    assert cache.read(0, size, base) == before
    monkeypatch.undo()
    cache.write(BLOCK_SIZE, b"\x02" * 3 * BLOCK_SIZE)
    assert cache.read(BLOCK_SIZE, 3 * BLOCK_SIZE, base) == b"\x02" * 3 * BLOCK_SIZE
    cache.close()


def test_write_accepts_any_buffer() -> None:
    size = 64 * 512
    base = Base(size)
    cache = WriteCache(size, 512, ram_bytes=1 << 20, max_bytes=1 << 20, overflow_path=None)
    cache.write(0, bytearray(b"\x0a" * 512))
    cache.write(512, memoryview(b"\x0b" * 1024)[512:])
    assert cache.read(0, 1024, base) == b"\x0a" * 512 + b"\x0b" * 512
