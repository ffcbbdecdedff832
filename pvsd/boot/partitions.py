"""Where a disk image keeps its Linux root file system: the whole disk, or a partition of an MBR
or GPT table. Pure: the caller reads the image's first sectors and passes them in.

MBR: the classic table at byte 446 (four 16-byte entries, signature 0x55AA at 510). GPT (UEFI
2.10 section 5.3): the header at LBA 1, "EFI PART", with its CRC32, and the entry array it
points at, with its own CRC32. ext4's superblock sits 1024 bytes into its file system, with the
magic 0xEF53 at byte 56 of it.
"""

from __future__ import annotations

import enum
import struct
import uuid
import zlib
from dataclasses import dataclass
from typing import Any

from pvsd.net.reader import DecodeError, Reader

__all__ = [
    "EXT4_MAGIC",
    "HEAD_BYTES",
    "LinuxRoot",
    "MbrType",
    "Partition",
    "decode_partitions",
    "find_linux_roots",
    "is_ext4",
]

EXT4_MAGIC = 0xEF53
SUPERBLOCK_OFFSET = 1024
HEAD_BYTES = 1 << 20  # enough for MBR, GPT header and a 128-entry array at either sector size
MBR_SIGNATURE = b"\x55\xaa"
GPT_SIGNATURE = b"EFI PART"
_MBR_ENTRY = struct.Struct("<B3sB3sII")
_GPT_HEADER = struct.Struct("<8sIIIIQQQQ16sQIII")
_GPT_ENTRY_HEAD = struct.Struct("<16s16sQQQ")


class MbrType(enum.IntEnum):
    """MBR partition types (UEFI 2.10 section 5.2.1 defines 0xEE, the protective MBR of a GPT
    disk, and 0xEF; the others are the registry of Linux fdisk)."""

    EMPTY = 0x00
    LINUX = 0x83
    GPT_PROTECTIVE = 0xEE


# Partition type GUIDs: UEFI 2.10 section 5.3.3 (the entry's PartitionTypeGUID; table 5.14 lists
# the UEFI ones) and the UAPI Discoverable Partitions Specification for the Linux ones.
LINUX_FILESYSTEM = uuid.UUID("0FC63DAF-8483-4772-8E79-3D69D8477DE4")
LINUX_ROOT_X86_64 = uuid.UUID("4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709")
LINUX_GUIDS = (LINUX_ROOT_X86_64, LINUX_FILESYSTEM)


@dataclass(frozen=True)
class Partition:
    number: int  # 1-based, as the kernel names them (/dev/nbd0p1)
    offset: int  # bytes
    size: int  # bytes
    linux: bool  # typed as a Linux file system or root


@dataclass(frozen=True)
class LinuxRoot:
    """A place that may hold the root: the whole disk (partition 0) or one partition."""

    partition: int
    offset: int


def is_ext4(data: bytes, offset: int = 0) -> bool:
    """Whether the bytes from `offset` start an ext2/3/4 file system (its superblock's magic)."""
    at = offset + SUPERBLOCK_OFFSET + 56
    return len(data) >= at + 2 and int.from_bytes(data[at : at + 2], "little") == EXT4_MAGIC


def _unpack(layout: struct.Struct, data: bytes, at: int) -> tuple[Any, ...]:
    """One little-endian record at `at`, through the bounded reader: short data is a DecodeError."""
    return layout.unpack(Reader(data[at : at + layout.size]).take(layout.size))


def _past_the_end(table: str, number: int, end: int, disk_size: int) -> str:
    return f"{table} partition {number} ends at byte {end}, past the end of the {disk_size}-byte disk"


def _mbr(head: bytes, disk_size: int, sector: int) -> list[Partition] | None:
    if head[510:512] != MBR_SIGNATURE:
        return None
    found = []
    for index in range(4):
        _, _, kind, _, first, count = _unpack(_MBR_ENTRY, head, 446 + 16 * index)
        if kind == MbrType.EMPTY or count == 0:
            continue
        if kind == MbrType.GPT_PROTECTIVE:
            return None  # the GPT is the table
        offset, size = first * sector, count * sector
        if offset + size > disk_size:
            raise DecodeError(_past_the_end("MBR", index + 1, offset + size, disk_size))
        found.append(Partition(index + 1, offset, size, kind == MbrType.LINUX))
    return found


def _gpt(head: bytes, disk_size: int, sector: int) -> list[Partition] | None:
    header = head[sector : sector + 512]
    if header[:8] != GPT_SIGNATURE:
        return None
    fields = _unpack(_GPT_HEADER, header, 0)
    header_size, crc = fields[2], fields[3]
    if not 92 <= header_size <= sector:
        raise DecodeError(f"GPT header size {header_size} is not within 92-{sector}")
    check = bytearray(head[sector : sector + header_size])
    check[16:20] = bytes(4)
    if zlib.crc32(check) != crc:
        raise DecodeError("GPT header CRC32 does not match: the partition table is damaged")
    entries_lba, count, entry_size, entries_crc = fields[10], fields[11], fields[12], fields[13]
    if entry_size < _GPT_ENTRY_HEAD.size or entry_size % 8 or count > 1024:
        raise DecodeError(f"GPT entries of {entry_size} bytes x {count} are not a valid array")
    start = entries_lba * sector
    array = head[start : start + count * entry_size]
    if len(array) != count * entry_size:
        raise DecodeError("the GPT entry array lies beyond the first MiB of the image")
    if zlib.crc32(array) != entries_crc:
        raise DecodeError("GPT entry array CRC32 does not match: the partition table is damaged")
    found = []
    for index in range(count):
        kind, _, first, last, _ = _unpack(_GPT_ENTRY_HEAD, array, index * entry_size)
        if kind == bytes(16):
            continue
        if last < first:
            raise DecodeError(f"GPT partition {index + 1} ends before it starts")
        offset, size = first * sector, (last - first + 1) * sector
        if offset + size > disk_size:
            raise DecodeError(_past_the_end("GPT", index + 1, offset + size, disk_size))
        found.append(Partition(index + 1, offset, size, uuid.UUID(bytes_le=kind) in LINUX_GUIDS))
    return found


def decode_partitions(head: bytes, disk_size: int, sector: int = 512) -> list[Partition] | None:
    """The partitions of the table in `head` (the image's first HEAD_BYTES), GPT first; None when
    there is no table. DecodeError for a damaged table or one that points past the end."""
    if sector not in (512, 4096):
        raise DecodeError(f"a sector of {sector} bytes is not 512 or 4096")
    if len(head) < 512:
        return None
    gpt = _gpt(head, disk_size, sector)
    return gpt if gpt is not None else _mbr(head, disk_size, sector)


def find_linux_roots(head: bytes, disk_size: int, sector: int = 512) -> list[LinuxRoot]:
    """Where to look for the root, best first: a whole-disk ext4, else the Linux-typed partitions
    (those whose superblock `head` holds and shows as ext4 first). Empty: nothing Linux here."""
    if is_ext4(head):
        return [LinuxRoot(0, 0)]
    partitions = decode_partitions(head, disk_size, sector) or []
    linux = [p for p in partitions if p.linux]
    return [LinuxRoot(p.number, p.offset) for p in sorted(linux, key=lambda p: not is_ext4(head, p.offset))]
