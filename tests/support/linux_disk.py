"""Small Linux disk images for the import tests, made with the real tools and no mounting:
a root tree in a folder, `mke2fs -t ext4 -d` (at a byte offset with `-E offset=`), and the
partition tables of `sfdisk` (512-byte sectors) or `fdisk -b 4096` (4 KiB sectors).

The kernels are fake but carry a real x86 boot-protocol header with their version string, and
/lib/modules/VERSION holds a hand-written modules.dep whose shape is that of Debian 6.1's.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

from tests.support import needs

# Debian 6.1's dependencies for what the diskless guest loads (modinfo -F depends), trimmed.
MODULES_DEP = {
    "kernel/drivers/block/nbd.ko": [],
    "kernel/fs/ext4/ext4.ko": ["kernel/lib/crc16.ko", "kernel/fs/mbcache.ko", "kernel/fs/jbd2/jbd2.ko"],
    "kernel/fs/mbcache.ko": [],
    "kernel/fs/jbd2/jbd2.ko": [],
    "kernel/lib/crc16.ko": [],
    "kernel/crypto/crc32c_generic.ko": [],
    "kernel/drivers/net/ethernet/intel/e1000/e1000.ko": [],
    "kernel/drivers/net/virtio_net.ko": ["kernel/drivers/net/net_failover.ko", "kernel/net/core/failover.ko"],
    "kernel/drivers/net/net_failover.ko": ["kernel/net/core/failover.ko"],
    "kernel/net/core/failover.ko": [],
}
BUILTIN = ("kernel/drivers/virtio/virtio_pci.ko", "kernel/drivers/virtio/virtio.ko")


def fake_kernel(version: str) -> bytes:
    """A file that parses as a bzImage (boot protocol 2.x: "HdrS" at 0x202, the version string's
    offset from 0x200 at 0x20E) and nothing more."""
    data = bytearray(0x1000)
    data[0x202:0x206] = b"HdrS"
    text = f"{version} (pvsd-test@localhost) #1 SMP".encode()
    data[0x20E:0x210] = (0x400 - 0x200).to_bytes(2, "little")
    data[0x400 : 0x400 + len(text)] = text
    return bytes(data)


def module_bytes(path: str) -> bytes:
    return f"fake module {path}\n".encode() * 4


def root_tree(
    root: Path,
    versions: Sequence[str] = ("6.1.0-57-amd64",),
    *,
    initrd: bool = True,
    usr_merge: bool = False,
    links_only: bool = False,
    drop: Sequence[str] = (),
) -> Path:
    """A root file system tree: /boot/vmlinuz-V (and initrd.img-V) per version, /lib/modules/V
    (under /usr/lib with `usr_merge`, /lib then a symlink), /sbin/init. `links_only` puts the
    newest kernel at /vmlinuz -> boot/vmlinuz-V only, as a bare symlink pair. `drop` leaves
    modules (by path in MODULES_DEP) out of the image."""
    for folder in ("boot", "sbin", "etc"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    (root / "sbin/init").write_text("#!/bin/sh\n")
    modules_base = root / ("usr/lib/modules" if usr_merge else "lib/modules")
    if usr_merge:
        (root / "lib").symlink_to("usr/lib")
    for version in versions:
        (root / f"boot/vmlinuz-{version}").write_bytes(fake_kernel(version))
        if initrd:
            (root / f"boot/initrd.img-{version}").write_bytes(b"initrd of " + version.encode() * 100)
        tree = modules_base / version
        tree.mkdir(parents=True)
        kept = {path: deps for path, deps in MODULES_DEP.items() if path not in drop}
        for path in kept:
            (tree / path).parent.mkdir(parents=True, exist_ok=True)
            (tree / path).write_bytes(module_bytes(path))
        (tree / "modules.dep").write_text(
            "".join(f"{p}: {' '.join(d)}\n".replace(": \n", ":\n") for p, d in kept.items())
        )
        (tree / "modules.builtin").write_text("".join(f"{p}\n" for p in BUILTIN))
    if links_only:
        # Only the top-level links name the kernel: /vmlinuz relative (through ..), /initrd.img absolute.
        newest = versions[-1]
        (root / "boot/kernel").mkdir()
        for version in versions:
            (root / f"boot/vmlinuz-{version}").rename(root / f"boot/kernel/vmlinuz-{version}")
        (root / "vmlinuz").symlink_to(f"boot/../boot/kernel/vmlinuz-{newest}")
        if initrd:
            for version in versions:
                (root / f"boot/initrd.img-{version}").rename(root / f"boot/kernel/initrd.img-{version}")
            (root / "initrd.img").symlink_to(f"/boot/kernel/initrd.img-{newest}")
    return root


def mkext4(image: Path, tree: Path | None, size: int = 16 << 20, offset: int = 0) -> None:
    """An ext4 of `size` bytes holding `tree`, written into `image` at byte `offset`."""
    needs.tool("mke2fs", "e2fsprogs")
    command = ["mke2fs", "-q", "-F", "-t", "ext4", "-b", "4096"]
    if tree is not None:
        command += ["-d", str(tree)]
    if offset:
        command += ["-E", f"offset={offset}"]
    subprocess.run([*command, str(image), f"{size // 1024}k"], check=True, capture_output=True, timeout=60)


def sfdisk(image: Path, script: str) -> None:
    needs.tool("sfdisk", "fdisk")
    subprocess.run(
        ["sfdisk", "-q", str(image)], input=script, text=True, check=True, capture_output=True, timeout=30
    )


def gpt_4k(image: Path, type_alias: str = "20") -> int:
    """A GPT with 4096-byte sectors and one partition (fdisk's type number 20: Linux filesystem);
    returns the partition's byte offset."""
    needs.tool("fdisk", "fdisk")
    script = f"g\nn\n1\n\n\nt\n{type_alias}\nw\n"
    subprocess.run(
        ["fdisk", "-b", "4096", str(image)],
        input=script,
        text=True,
        check=True,
        capture_output=True,
        timeout=30,
    )
    listing = subprocess.run(
        ["fdisk", "-b", "4096", "-l", "-o", "Start", str(image)], text=True, capture_output=True, timeout=30
    ).stdout.split()
    return int(listing[-1]) * 4096


def linux_disk(
    image: Path,
    tree: Path | None,
    table: str = "none",
    *,
    disk_size: int = 40 << 20,
    fs_size: int = 16 << 20,
    mbr_type: str = "83",
    gpt_type: str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4",
) -> int:
    """A disk holding `tree` as ext4: on the whole disk (`none`), in partition 1 of an MBR
    (`dos`), of a GPT with 512-byte sectors (`gpt`) or 4096-byte ones (`gpt4k`). Returns the
    file system's byte offset. `tree` None leaves the partition zeroed."""
    image.unlink(missing_ok=True)
    if table == "none":
        mkext4(image, tree, fs_size)
        return 0
    with image.open("wb") as f:
        f.truncate(disk_size)
    if table == "dos":
        sfdisk(image, f"label: dos\nstart=2048, size={fs_size // 512}, type={mbr_type}\n")
        offset = 2048 * 512
    elif table == "gpt":
        sfdisk(image, f"label: gpt\nstart=2048, size={fs_size // 512}, type={gpt_type}\n")
        offset = 2048 * 512
    elif table == "gpt4k":
        offset = gpt_4k(image)
    else:
        raise ValueError(f"no table {table!r}")
    if tree is not None:
        mkext4(image, tree, fs_size, offset)
    return offset
