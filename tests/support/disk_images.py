"""Partition tables written here, byte by byte (no sfdisk needed), around file systems made by
`mke2fs -d`: the images a user brings, for the import tests."""

from __future__ import annotations

import struct
import subprocess
import uuid
import zlib
from pathlib import Path

from pvsd.boot.partitions import LINUX_FILESYSTEM

MIB = 1 << 20


def mbr(partitions: list[tuple[int, int, int]]) -> bytes:
    """A 512-byte MBR of (type, first LBA, sectors) entries."""
    sector = bytearray(512)
    for index, (kind, first, count) in enumerate(partitions):
        struct.pack_into("<B3sB3sII", sector, 446 + 16 * index, 0, b"\0\0\0", kind, b"\0\0\0", first, count)
    sector[510:512] = b"\x55\xaa"
    return bytes(sector)


def gpt(
    disk_size: int, first: int, last: int, sector: int = 512, kind: uuid.UUID = LINUX_FILESYSTEM
) -> bytes:
    """Protective MBR, GPT header at LBA 1 and a 128-entry array at LBA 2, one partition."""
    entries = bytearray(128 * 128)
    struct.pack_into("<16s16sQQQ", entries, 0, kind.bytes_le, uuid.uuid4().bytes_le, first, last, 0)
    last_lba = disk_size // sector - 1
    header = bytearray(
        struct.pack(
            "<8sIIIIQQQQ16sQIII",
            b"EFI PART",
            0x10000,
            92,
            0,
            0,
            1,
            last_lba,
            34,
            last_lba - 33,
            uuid.uuid4().bytes_le,
            2,
            128,
            128,
            zlib.crc32(entries),
        )
    )
    struct.pack_into("<I", header, 16, zlib.crc32(header))
    protective = bytearray(mbr([(0xEE, 1, min(last_lba, 0xFFFFFFFF))]))
    out = bytearray(2 * sector + len(entries))
    out[:512] = protective
    out[sector : sector + 92] = header
    out[2 * sector : 2 * sector + len(entries)] = entries
    return bytes(out)


def ext4(folder: Path, out: Path, size: int) -> Path:
    subprocess.run(
        ["mke2fs", "-q", "-F", "-t", "ext4", "-d", str(folder), str(out), f"{size // 1024}k"],
        check=True,
        capture_output=True,
    )
    return out


def partitioned(out: Path, filesystem: Path, table: bytes, offset: int, disk_size: int) -> Path:
    """`filesystem` placed at byte `offset` of a `disk_size` image that starts with `table`."""
    with out.open("wb") as f:
        f.truncate(disk_size)
        f.write(table)
        f.seek(offset)
        with filesystem.open("rb") as source:
            while chunk := source.read(MIB):
                f.write(chunk)
    return out


def linux_tree(root: Path, version: str = "6.1.0-57-amd64", kernel: bytes | None = None) -> Path:
    """A minimal distribution layout: /boot/vmlinuz-VERSION (a copy of Debian's when `kernel` is
    None), /boot/initrd.img-VERSION, /vmlinuz -> boot/vmlinuz-VERSION, and /lib/modules/VERSION
    with a modules.dep naming the modules the agent needs."""
    (root / "boot").mkdir(parents=True, exist_ok=True)
    data = kernel if kernel is not None else Path(f"/boot/vmlinuz-{version}").read_bytes()
    (root / "boot" / f"vmlinuz-{version}").write_bytes(data)
    (root / "boot" / f"initrd.img-{version}").write_bytes(b"07070100000000" * 10)
    (root / "vmlinuz").symlink_to(f"boot/vmlinuz-{version}")
    modules = root / "lib" / "modules" / version
    modules.mkdir(parents=True, exist_ok=True)
    dep = [
        "kernel/drivers/block/nbd.ko:",
        "kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko",
        "kernel/lib/crc16.ko:",
        "kernel/fs/mbcache.ko:",
        "kernel/fs/jbd2/jbd2.ko:",
        "kernel/crypto/crc32c_generic.ko:",
        "kernel/drivers/net/ethernet/intel/e1000/e1000.ko:",
        "kernel/drivers/virtio/virtio_pci.ko:",
        "kernel/drivers/net/virtio_net.ko:",
    ]
    (modules / "modules.dep").write_text("\n".join(dep) + "\n")
    (modules / "modules.builtin").write_text("")
    return root
