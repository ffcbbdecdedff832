"""pvsd.boot.partitions: where the Linux root is, in tables written here byte by byte."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support.disk_images import MIB, gpt, mbr

from pvsd.boot.partitions import Partition, decode_partitions, find_linux_roots, is_ext4
from pvsd.net.reader import DecodeError

DISK = 64 * MIB


def test_an_mbr_linux_partition_is_found() -> None:
    table = mbr([(0x0C, 2048, 2048), (0x83, 4096, 8192)])
    assert decode_partitions(table + bytes(4096), DISK) == [
        Partition(1, 2048 * 512, 2048 * 512, False),
        Partition(2, 4096 * 512, 8192 * 512, True),
    ]
    assert [(r.partition, r.offset) for r in find_linux_roots(table + bytes(4096), DISK)] == [(2, 4096 * 512)]


@pytest.mark.parametrize("sector", [512, 4096])
def test_a_gpt_linux_partition_is_found_at_either_sector_size(sector: int) -> None:
    first = MIB // sector
    head = gpt(DISK, first, first + 1000, sector)
    roots = find_linux_roots(head + bytes(MIB), DISK, sector)
    assert [(r.partition, r.offset) for r in roots] == [(1, MIB)]


def test_a_whole_disk_ext4_is_the_root() -> None:
    head = bytearray(4096)
    head[1024 + 56 : 1024 + 58] = (0xEF53).to_bytes(2, "little")
    assert is_ext4(bytes(head))
    assert [(r.partition, r.offset) for r in find_linux_roots(bytes(head), DISK)] == [(0, 0)]


def test_no_table_and_no_file_system_is_nothing_linux() -> None:
    assert find_linux_roots(bytes(MIB), DISK) == []


def test_a_partition_past_the_end_of_the_disk_is_named() -> None:
    table = mbr([(0x83, 2048, DISK // 512)])
    with pytest.raises(DecodeError, match=r"partition 1 ends at byte .* past the end"):
        decode_partitions(table, DISK)
    with pytest.raises(DecodeError, match="GPT partition 1 ends"):
        decode_partitions(gpt(DISK, 2048, DISK // 512 + 5), DISK)


def test_a_damaged_gpt_is_named() -> None:
    head = bytearray(gpt(DISK, 2048, 4096))
    head[512 + 40] ^= 1
    with pytest.raises(DecodeError, match="GPT header CRC32"):
        decode_partitions(bytes(head), DISK)
    head = bytearray(gpt(DISK, 2048, 4096))
    head[1024 + 40] ^= 1
    with pytest.raises(DecodeError, match="entry array CRC32"):
        decode_partitions(bytes(head), DISK)


@given(st.binary(max_size=3000), st.integers(min_value=0, max_value=1 << 40), st.sampled_from([512, 4096]))
def test_any_bytes_decode_or_raise_decode_error(head: bytes, size: int, sector: int) -> None:
    with contextlib.suppress(DecodeError):
        find_linux_roots(head, size, sector)


@given(st.binary(min_size=64, max_size=64), st.integers(min_value=0, max_value=2047))
def test_damaged_real_tables_decode_or_raise_decode_error(junk: bytes, at: int) -> None:
    head = bytearray(gpt(DISK, 2048, 4096))
    head[at : at + 64] = junk
    with contextlib.suppress(DecodeError):
        find_linux_roots(bytes(head), DISK)
