"""pvsd.boot.partitions on tables written by sfdisk and fdisk (util-linux), and its contract on
any bytes: a list, None, or DecodeError."""

from __future__ import annotations

import contextlib
import tempfile
import zlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pvsd.boot.partitions import HEAD_BYTES, LinuxRoot, MbrType, decode_partitions, find_linux_roots, is_ext4
from pvsd.net.reader import DecodeError
from tests.support.linux_disk import gpt_4k, linux_disk, mkext4, sfdisk

X86_64_ROOT = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"
EFI_SYSTEM = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"


def _head(image: Path) -> bytes:
    with image.open("rb") as f:
        return f.read(HEAD_BYTES)


def _blank(image: Path, size: int = 40 << 20) -> Path:
    with image.open("wb") as f:
        f.truncate(size)
    return image


def test_a_whole_disk_ext4_is_the_root(tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    mkext4(image, None)
    head = _head(image)
    assert is_ext4(head)
    assert find_linux_roots(head, image.stat().st_size) == [LinuxRoot(0, 0)]


def test_mbr_linux_partition(tmp_path: Path) -> None:
    image = _blank(tmp_path / "disk.img")
    sfdisk(image, "label: dos\nstart=2048, size=8192, type=c\nstart=10240, size=32768, type=83\n")
    parts = decode_partitions(_head(image), image.stat().st_size)
    assert parts is not None
    assert [(p.number, p.offset, p.size, p.linux) for p in parts] == [
        (1, 2048 * 512, 8192 * 512, False),
        (2, 10240 * 512, 32768 * 512, True),
    ]
    assert find_linux_roots(_head(image), image.stat().st_size) == [LinuxRoot(2, 10240 * 512)]


@pytest.mark.parametrize("kind", ["0FC63DAF-8483-4772-8E79-3D69D8477DE4", X86_64_ROOT])
def test_gpt_linux_partition_behind_its_protective_mbr(tmp_path: Path, kind: str) -> None:
    image = _blank(tmp_path / "disk.img")
    sfdisk(
        image, f"label: gpt\nstart=2048, size=4096, type={EFI_SYSTEM}\nstart=8192, size=32768, type={kind}\n"
    )
    head = _head(image)
    assert head[446 + 4] == MbrType.GPT_PROTECTIVE
    parts = decode_partitions(head, image.stat().st_size)
    assert parts is not None
    assert [(p.number, p.offset, p.linux) for p in parts] == [(1, 2048 * 512, False), (2, 8192 * 512, True)]


def test_gpt_with_4096_byte_sectors(tmp_path: Path) -> None:
    image = _blank(tmp_path / "disk.img", 64 << 20)
    offset = gpt_4k(image)
    head = _head(image)
    parts = decode_partitions(head, image.stat().st_size, 4096)
    assert parts is not None and [(p.number, p.offset, p.linux) for p in parts] == [(1, offset, True)]
    # read with 512-byte sectors there is no GPT header at LBA 1: only the protective MBR
    assert decode_partitions(head, image.stat().st_size, 512) is None


def test_no_table_no_root(tmp_path: Path) -> None:
    image = _blank(tmp_path / "disk.img", 1 << 20)
    assert decode_partitions(_head(image), 1 << 20) is None
    assert find_linux_roots(_head(image), 1 << 20) == []


@pytest.mark.parametrize("table", ["dos", "gpt"])
def test_a_partition_past_the_end_of_the_disk_is_named(tmp_path: Path, table: str) -> None:
    image = tmp_path / "disk.img"
    linux_disk(image, None, table)
    with pytest.raises(
        DecodeError, match=r"partition 1 ends at byte .* past the end of the 4194304-byte disk"
    ):
        decode_partitions(_head(image), 4 << 20)


def test_a_damaged_gpt_header_or_array_fails_its_crc(tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    linux_disk(image, None, "gpt")
    head = bytearray(_head(image))
    array = bytearray(head)
    array[1024 + 56] ^= 0xFF  # a byte of the first entry's name
    with pytest.raises(DecodeError, match="entry array CRC32"):
        decode_partitions(bytes(array), 40 << 20)
    head[512 + 40] ^= 0xFF  # first usable LBA
    with pytest.raises(DecodeError, match="header CRC32"):
        decode_partitions(bytes(head), 40 << 20)


def test_a_gpt_header_crc_is_checked_over_its_own_size() -> None:
    header = bytearray(512)
    header[:8] = b"EFI PART"
    header[12:16] = (92).to_bytes(4, "little")
    header[72:80] = (2).to_bytes(8, "little")  # entries at LBA 2
    header[80:84] = (0).to_bytes(4, "little")
    header[84:88] = (128).to_bytes(4, "little")
    header[88:92] = zlib.crc32(b"").to_bytes(4, "little")
    header[16:20] = zlib.crc32(bytes(header[:92])).to_bytes(4, "little")
    head = bytes(512) + bytes(header) + bytes(1024)
    assert decode_partitions(head, 1 << 20) == []


def test_sector_size_must_be_512_or_4096() -> None:
    with pytest.raises(DecodeError, match="1024 bytes is not 512 or 4096"):
        decode_partitions(bytes(8192), 8192, 1024)


@settings(max_examples=300)
@given(st.binary(max_size=3000), st.sampled_from([512, 4096]), st.integers(0, 1 << 40))
def test_any_bytes_decode_or_raise_decode_error(data: bytes, sector: int, size: int) -> None:
    with contextlib.suppress(DecodeError):
        decode_partitions(data, size, sector)
        find_linux_roots(data, size, sector)


@settings(max_examples=300)
@given(st.data())
def test_damaged_real_tables_decode_or_raise_decode_error(data: st.DataObject) -> None:
    head = bytearray(_GPT_HEAD)
    for _ in range(data.draw(st.integers(1, 8))):
        at = data.draw(st.integers(0, len(head) - 1))
        head[at] = data.draw(st.integers(0, 255))
    with contextlib.suppress(DecodeError):
        find_linux_roots(bytes(head), 40 << 20)


def _gpt_head() -> bytes:
    with tempfile.TemporaryDirectory() as folder:
        image = _blank(Path(folder) / "disk.img")
        sfdisk(image, f"label: gpt\nstart=2048, size=32768, type={X86_64_ROOT}\n")
        with image.open("rb") as f:
            return f.read(34 * 512)


_GPT_HEAD = _gpt_head()
