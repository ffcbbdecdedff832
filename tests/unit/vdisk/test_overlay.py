"""Overlays: reads and writes match a plain bytearray, a takeover keeps every write, a new session wipes."""

from __future__ import annotations

import random
import shutil
import struct
import tempfile
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from pvsd.vdisk import MAP_MAGIC, Overlay, overlay_paths

MAC = "52:54:00:12:34:56"
SECTORS = 64


class Base:
    """A shared image in memory that counts the reads asked of it."""

    def __init__(self, size: int, seed: int = 1) -> None:
        self.content = random.Random(seed).randbytes(size)
        self.calls: list[tuple[int, int]] = []

    def __call__(self, offset: int, length: int) -> bytes:
        self.calls.append((offset, length))
        return self.content[offset : offset + length]


def pattern(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def test_overlay_paths() -> None:
    data, bitmap = overlay_paths(Path("/cache"), MAC)
    assert data == Path("/cache/52-54-00-12-34-56.cache")
    assert bitmap == Path("/cache/52-54-00-12-34-56.map")
    for bad in ("52-54-00-12-34-56", "52:54:00:12:34:5G", "../../etc/passwd", "52:54:00:12:34:56/x"):
        with pytest.raises(ValueError):
            overlay_paths(Path("/cache"), bad)


class OverlayMatchesModel(RuleBasedStateMachine):
    """Overlay over a random base image against a bytearray that is written and read directly."""

    def __init__(self) -> None:
        super().__init__()
        self.folder = Path(tempfile.mkdtemp(prefix="overlay-"))
        self.overlay: Overlay | None = None

    @initialize(sector_size=st.sampled_from([512, 4096]), seed=st.integers(0, 1 << 32))
    def start(self, sector_size: int, seed: int) -> None:
        self.sector_size = sector_size
        self.size = SECTORS * sector_size
        self.base = Base(self.size, seed)
        self.model = bytearray(self.base.content)
        self.written: set[int] = set()
        self.overlay = Overlay.open(self.folder, MAC, self.size, sector_size, session=7)

    def ranges(self, first: int, count: int) -> tuple[int, int]:
        count = min(count, SECTORS - first)
        return first * self.sector_size, count * self.sector_size

    @rule(first=st.integers(0, SECTORS - 1), count=st.integers(1, SECTORS), seed=st.integers(0, 1 << 32))
    def write(self, first: int, count: int, seed: int) -> None:
        assert self.overlay is not None
        offset, length = self.ranges(first, count)
        data = pattern(seed, length)
        self.overlay.write(offset, data)
        self.model[offset : offset + length] = data
        self.written.update(range(offset // self.sector_size, (offset + length) // self.sector_size))

    @rule(first=st.integers(0, SECTORS - 1), count=st.integers(0, SECTORS))
    def read(self, first: int, count: int) -> None:
        assert self.overlay is not None
        offset, length = self.ranges(first, count)
        self.base.calls.clear()
        assert self.overlay.read(offset, length, self.base) == self.model[offset : offset + length]
        sectors = range(offset // self.sector_size, (offset + length) // self.sector_size)
        if length and not self.written.intersection(sectors):
            assert self.base.calls == [(offset, length)]

    @rule()
    def flush(self) -> None:
        assert self.overlay is not None
        self.overlay.flush()

    @rule()
    def take_over(self) -> None:
        """Another server opens the same session: it must see everything written so far."""
        assert self.overlay is not None
        self.overlay.close()
        self.overlay = Overlay.open(self.folder, MAC, self.size, self.sector_size, session=7)
        assert self.overlay.reused

    @precondition(lambda self: self.overlay is not None)
    @invariant()
    def counts_written_sectors(self) -> None:
        assert self.overlay is not None
        assert self.overlay.written_sectors() == len(self.written)

    def teardown(self) -> None:
        if self.overlay is not None:
            self.overlay.close()
        shutil.rmtree(self.folder, ignore_errors=True)


OverlayMatchesModel.TestCase.settings = settings(max_examples=150, stateful_step_count=30, deadline=None)
TestOverlayMatchesModel = OverlayMatchesModel.TestCase


@pytest.fixture(params=[512, 4096], ids=["512", "4096"])
def sector_size(request: pytest.FixtureRequest) -> int:
    size: int = request.param
    return size


def test_reopen_with_the_same_session_keeps_every_write(tmp_path: Path, sector_size: int) -> None:
    size = SECTORS * sector_size
    base = Base(size)
    expected = bytearray(base.content)
    with Overlay.open(tmp_path, MAC, size, sector_size, session=42) as overlay:
        assert not overlay.reused
        for first, count in ((0, 1), (5, 3), (20, 17), (63, 1)):
            data = pattern(first, count * sector_size)
            overlay.write(first * sector_size, data)
            expected[first * sector_size : (first + count) * sector_size] = data
    with Overlay.open(tmp_path, MAC, size, sector_size, session=42) as overlay:
        assert overlay.reused
        assert overlay.written_sectors() == 22
        assert overlay.read(0, size, base) == expected


def written_overlay(folder: Path, sector_size: int, session: int = 42) -> None:
    with Overlay.open(folder, MAC, SECTORS * sector_size, sector_size, session) as overlay:
        overlay.write(0, b"\x01" * SECTORS * sector_size)


def assert_empty(overlay: Overlay, size: int) -> None:
    base = Base(size)
    assert not overlay.reused
    assert overlay.written_sectors() == 0
    assert overlay.read(0, size, base) == base.content
    assert base.calls == [(0, size)]


def test_another_session_wipes(tmp_path: Path, sector_size: int) -> None:
    written_overlay(tmp_path, sector_size)
    size = SECTORS * sector_size
    with Overlay.open(tmp_path, MAC, size, sector_size, session=43) as overlay:
        assert_empty(overlay, size)
        assert overlay.session == 43
    data, _ = overlay_paths(tmp_path, MAC)
    assert data.stat().st_size == size
    assert data.stat().st_blocks == 0 or data.read_bytes() == bytes(size)


def test_another_disk_size_or_sector_size_wipes(tmp_path: Path) -> None:
    written_overlay(tmp_path, 512)
    with Overlay.open(tmp_path, MAC, SECTORS * 1024, 512, session=42) as overlay:
        assert_empty(overlay, SECTORS * 1024)
    written_overlay(tmp_path, 512)
    with Overlay.open(tmp_path, MAC, SECTORS * 512, 4096, session=42) as overlay:
        assert_empty(overlay, SECTORS * 512)


@pytest.mark.parametrize(
    "damage",
    [
        "magic",
        "truncated header",
        "truncated bitmap",
        "empty map",
        "missing map",
        "missing data",
        "short data",
    ],
)
def test_a_damaged_overlay_wipes(tmp_path: Path, damage: str) -> None:
    written_overlay(tmp_path, 512)
    data, bitmap = overlay_paths(tmp_path, MAC)
    content = bitmap.read_bytes()
    if damage == "magic":
        bitmap.write_bytes(b"PVSDMAP0" + content[8:])
    elif damage == "truncated header":
        bitmap.write_bytes(content[:10])
    elif damage == "truncated bitmap":
        bitmap.write_bytes(content[:-1])
    elif damage == "empty map":
        bitmap.write_bytes(b"")
    elif damage == "missing map":
        bitmap.unlink()
    elif damage == "missing data":
        data.unlink()
    else:
        data.write_bytes(b"\x01" * 512)
    with Overlay.open(tmp_path, MAC, SECTORS * 512, 512, session=42) as overlay:
        assert_empty(overlay, SECTORS * 512)


def test_map_layout(tmp_path: Path) -> None:
    size = 20 * 512  # 20 sectors: the bitmap has 3 bytes, the last one partly used
    with Overlay.open(tmp_path, MAC, size, 512, session=0x0102030405060708) as overlay:
        overlay.write(3 * 512, bytes(2 * 512))
        overlay.write(19 * 512, bytes(512))
    _, bitmap = overlay_paths(tmp_path, MAC)
    header = struct.pack("!8sQQI", MAP_MAGIC, 0x0102030405060708, size, 512)
    assert bitmap.read_bytes() == header + bytes([0b0001_1000, 0, 0b0000_1000])


def test_a_read_without_overlay_sectors_calls_base_once(tmp_path: Path, sector_size: int) -> None:
    size = SECTORS * sector_size
    base = Base(size)
    with Overlay.open(tmp_path, MAC, size, sector_size, session=1) as overlay:
        overlay.write(0, pattern(1, 8 * sector_size))
        overlay.write(40 * sector_size, pattern(2, 8 * sector_size))
        base.calls.clear()
        assert (
            overlay.read(8 * sector_size, 32 * sector_size, base)
            == base.content[8 * sector_size : 40 * sector_size]
        )
        assert base.calls == [(8 * sector_size, 32 * sector_size)]
        base.calls.clear()
        overlay.read(0, size, base)  # overlay, base, overlay, base: one base call per base run
        assert base.calls == [(8 * sector_size, 32 * sector_size), (48 * sector_size, 16 * sector_size)]
        base.calls.clear()
        overlay.read(0, 8 * sector_size, base)
        assert base.calls == []


def test_explicit_wipe(tmp_path: Path) -> None:
    written_overlay(tmp_path, 512)
    with Overlay.open(tmp_path, MAC, SECTORS * 512, 512, session=42) as overlay:
        assert overlay.written_sectors() == SECTORS
        overlay.wipe()
        assert overlay.written_sectors() == 0
    with Overlay.open(tmp_path, MAC, SECTORS * 512, 512, session=42) as overlay:
        assert overlay.reused
        assert overlay.written_sectors() == 0


@pytest.mark.parametrize(
    ("offset", "length"),
    [(1, 512), (0, 511), (-512, 512), (SECTORS * 512, 512), ((SECTORS - 1) * 512, 1024)],
)
def test_misaligned_or_out_of_range_is_a_value_error(tmp_path: Path, offset: int, length: int) -> None:
    base = Base(SECTORS * 512)
    with Overlay.open(tmp_path, MAC, SECTORS * 512, 512, session=1) as overlay:
        with pytest.raises(ValueError):
            overlay.write(offset, bytes(max(length, 0)))
        with pytest.raises(ValueError):
            overlay.read(offset, length, base)
        assert overlay.written_sectors() == 0


def test_bad_geometry_and_closed_use(tmp_path: Path) -> None:
    for disk_size, sector_size in ((1000, 512), (0, 512), (4096, 1000), (4096, 0)):
        with pytest.raises(ValueError):
            Overlay.open(tmp_path, MAC, disk_size, sector_size, session=1)
    overlay = Overlay.open(tmp_path, MAC, 4096, 512, session=1)
    overlay.close()
    overlay.close()
    assert overlay.closed
    with pytest.raises(ValueError, match="closed"):
        overlay.write(0, bytes(512))


def test_the_cache_folder_is_not_created(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        Overlay.open(tmp_path / "not-mounted", MAC, 4096, 512, session=1)
