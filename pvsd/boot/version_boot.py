"""A version's boot files at import: the kernel and initramfs taken out of the image (or given
with --kernel/--initrd), staged in a folder that moves beside the image with it, and the record
the farm keeps of them (records.VersionBoot)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from pvsd.boot.ext4 import Ext4Image
from pvsd.boot.linux_image import LinuxBoot
from pvsd.errors import BadInput
from pvsd.farm.records import VersionBoot

__all__ = ["INITRD_FILE", "KERNEL_FILE", "boot_summary", "bzimage_version", "stage_boot_files"]

KERNEL_FILE = "vmlinuz"
INITRD_FILE = "initrd.img"


def bzimage_version(data: bytes) -> str | None:
    """The version string an x86 bzImage carries (boot protocol: setup header field kernel_version
    at 0x20E points at it, from 0x200), or None when `data` is not a bzImage."""
    if len(data) < 0x210 or data[0x202:0x206] != b"HdrS":
        return None
    at = int.from_bytes(data[0x20E:0x210], "little") + 0x200
    text = data[at : at + 256].split(b"\0", 1)[0].decode(errors="replace")
    return text.split()[0] if text.strip() else None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def stage_boot_files(
    image: Path, found: LinuxBoot | None, kernel: Path | None, initrd: Path | None, cmdline: str, folder: Path
) -> VersionBoot | None:
    """Copy the boot files into `folder` and describe them; None for an image that does not boot
    diskless (no Linux root and no --kernel)."""
    if found is None and kernel is None:
        if initrd is not None or cmdline:
            raise BadInput("--initrd and --cmdline need a kernel: the image has none, give --kernel")
        return None
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    fs = Ext4Image(image, found.root_offset) if found is not None else None
    if kernel is not None:
        shutil.copyfile(kernel, folder / KERNEL_FILE)
        kernel_name = kernel.name
    elif fs is not None and found is not None:
        fs.dump(found.kernel, folder / KERNEL_FILE)
        kernel_name = found.kernel
    with (folder / KERNEL_FILE).open("rb") as f:
        version = bzimage_version(f.read(0x10000))
    if found is not None and (kernel is None or version is None):
        version = found.kernel_version
    if not version:
        raise BadInput(f"{kernel_name} is not a Linux kernel (no bzImage header with a version)")
    initrd_name: str | None = None
    if initrd is not None:
        shutil.copyfile(initrd, folder / INITRD_FILE)
        initrd_name = initrd.name
    elif kernel is None and fs is not None and found is not None and found.initrd is not None:
        fs.dump(found.initrd, folder / INITRD_FILE)
        initrd_name = found.initrd
    return VersionBoot(
        kernel=kernel_name,
        kernel_version=version,
        kernel_sha256=_sha256(folder / KERNEL_FILE),
        initrd=initrd_name,
        initrd_sha256=_sha256(folder / INITRD_FILE) if initrd_name else None,
        cmdline=cmdline.strip(),
        root_offset=found.root_offset if found is not None else None,
        kernel_size=(folder / KERNEL_FILE).stat().st_size,
        initrd_size=(folder / INITRD_FILE).stat().st_size if initrd_name else None,
    )


def boot_summary(boot: VersionBoot, found: LinuxBoot | None) -> str:
    parts = [f"boots diskless: kernel {boot.kernel} ({boot.kernel_version})"]
    parts.append(f"initrd {boot.initrd}" if boot.initrd else "no initrd of its own")
    if found is not None:
        where = "the whole disk" if found.root_partition == 0 else f"partition {found.root_partition}"
        if found.missing_modules:
            parts.append(
                "WARNING: its /lib/modules lacks "
                + ", ".join(found.missing_modules)
                + " (the agent loads these)"
            )
        else:
            parts.append("modules ok")
        parts.append(f"root on {where}")
        if found.other_versions:
            parts.append("other kernels: " + ", ".join(found.other_versions))
    else:
        parts.append("WARNING: no Linux root in the image: the agent cannot load the image's modules")
    if boot.cmdline:
        parts.append(f"cmdline {boot.cmdline!r}")
    return ", ".join(parts)
