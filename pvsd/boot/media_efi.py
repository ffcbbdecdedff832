"""The UEFI half of the boot media: an El Torito EFI image (a small FAT file system) holding
`EFI/BOOT/BOOTX64.EFI`, a GRUB EFI image with the media's grub.cfg inside it (pvsd/boot/grub.py
says why GRUB and not iPXE on UEFI).

The grub.cfg rides in GRUB's memdisk, not on the FAT: when OVMF boots the El Torito image,
GRUB's root is the CD, and a `$prefix` on the FAT is not found. Every tool here is run
without root and with SOURCE_DATE_EPOCH, so the same grub.cfg gives the same bytes:
grub-mkimage (grub-efi-amd64-bin), mkfs.vfat (dosfstools) with `--invariant`, and mtools.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

from pvsd.errors import Failure

__all__ = ["EFI_IMAGE_NAME", "GRUB_EFI_MODULES", "build_efi_image", "missing_efi_parts", "run_tool"]

EFI_IMAGE_NAME = "efiboot.img"
GRUB_PLATFORM_DIR = Path("/usr/lib/grub/x86_64-efi")
# What the grub.cfg of pvsd/boot/grub.py uses, and nothing else: every module is built in, so
# GRUB never looks for one on a file system it cannot see.
GRUB_EFI_MODULES = (
    *("memdisk", "tar", "configfile", "normal", "echo", "test", "true", "sleep", "reboot", "halt"),
    *("regexp", "efinet", "net", "http", "linux", "fat", "iso9660", "part_gpt", "part_msdos"),
)
_TOOLS = (
    ("grub-mkimage", "grub-efi-amd64-bin"),
    ("mkfs.vfat", "dosfstools"),
    ("mmd", "mtools"),
    ("mcopy", "mtools"),
)
_FAT_SERIAL = "50564453"  # "PVDS": a fixed volume serial, for reproducible bytes
_TOOL_TIMEOUT_S = 60


def missing_efi_parts() -> list[str]:
    """What this host lacks to write the EFI image, each with its Debian package."""
    missing = [f"{tool} (Debian package {package})" for tool, package in _TOOLS if _which(tool) is None]
    if not (GRUB_PLATFORM_DIR / "linux.mod").exists():
        missing.append(f"{GRUB_PLATFORM_DIR} (Debian package grub-efi-amd64-bin)")
    return sorted(set(missing))


def build_efi_image(work: Path, grub_cfg: str, epoch: int) -> Path:
    """Write `work/efiboot.img` for `grub_cfg`; `work` is a scratch folder the caller removes."""
    environment = {**os.environ, "SOURCE_DATE_EPOCH": str(epoch), "MTOOLS_SKIP_CHECK": "1"}
    memdisk = work / "memdisk.tar"
    memdisk.write_bytes(_memdisk(grub_cfg, epoch))
    grub = work / "BOOTX64.EFI"
    run_tool(
        [
            "grub-mkimage",
            "--format",
            "x86_64-efi",
            "--directory",
            str(GRUB_PLATFORM_DIR),
            "--prefix",
            "(memdisk)/boot/grub",
            "--memdisk",
            str(memdisk),
            "--output",
            str(grub),
            *GRUB_EFI_MODULES,
        ],
        environment,
    )
    image = work / EFI_IMAGE_NAME
    # FAT12 wants a few hundred KiB of slack over its files; whole MiB keep the size tidy.
    kib = max(2048, ((grub.stat().st_size >> 10) + 512 + 1023) // 1024 * 1024)
    run_tool(
        ["mkfs.vfat", "--invariant", "-i", _FAT_SERIAL, "-n", "PVSD_EFI", "-C", str(image), str(kib)],
        environment,
    )
    run_tool(["mmd", "-i", str(image), "::/EFI", "::/EFI/BOOT"], environment)
    run_tool(["mcopy", "-i", str(image), str(grub), "::/EFI/BOOT/BOOTX64.EFI"], environment)
    return image


def _memdisk(grub_cfg: str, epoch: int) -> bytes:
    data = grub_cfg.encode()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        entry = tarfile.TarInfo("boot/grub/grub.cfg")
        entry.size, entry.mtime, entry.mode = len(data), epoch, 0o644
        tar.addfile(entry, io.BytesIO(data))
    return buffer.getvalue()


def _which(tool: str) -> str | None:
    # Debian keeps mkfs.vfat in /usr/sbin, which a non-root PATH may lack.
    return shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin")


def run_tool(argv: list[str], environment: dict[str, str], timeout: float = _TOOL_TIMEOUT_S) -> None:
    """One build tool of the media, with a timeout; Failure with the end of what it said."""
    tool = _which(argv[0])
    if tool is None:
        raise Failure(f"cannot build the boot media: {argv[0]} is missing")
    try:
        done = subprocess.run(
            [tool, *argv[1:]],
            capture_output=True,
            text=True,
            env=environment,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise Failure(f"{argv[0]} did not finish in {timeout:g} s") from None
    if done.returncode != 0:
        raise Failure(f"{argv[0]} failed ({done.returncode}): {(done.stderr or done.stdout).strip()[-500:]}")
