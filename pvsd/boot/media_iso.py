"""Writing the boot media ISO with xorriso, without root, bootable both ways (DESIGN.md 5):

- BIOS: ISOLINUX boots Debian's `ipxe.lkrn` with the media's iPXE script as its INITRD, which
  iPXE runs as an embedded script (pvsd/boot/media.py);
- UEFI: an El Torito EFI image holds GRUB with the media's grub.cfg (pvsd/boot/grub.py,
  pvsd/boot/media_efi.py). Not iPXE: Debian's ipxe.efi (1.0.0+git-20190125, iPXE commit
  36a4c85) has no embedded script and predates both ways of handing it one, `/autoexec.ipxe`
  from the boot filesystem (iPXE a3f1e8fb6, 2021-01) and a script on the command line via
  LoadOptions (4bb521a8c, 2023-01); OVMF booting it from the media runs iPXE's own DHCP
  autoboot, never the file.

The ISO is also a hybrid disk image (an MBR for BIOS, a GPT with the EFI image for UEFI), so
it boots written to a USB stick. Reproducible: every file and volume date is
SOURCE_DATE_EPOCH, so the same farm gives the same bytes, and the file is written whole or
not at all.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pvsd.boot.grub import grub_media_config
from pvsd.boot.media import MEDIA_SCRIPT_NAME, MediaNetwork, media_script, media_servers
from pvsd.boot.media_efi import EFI_IMAGE_NAME, build_efi_image, missing_efi_parts, run_tool
from pvsd.config import BootstrapConfig
from pvsd.errors import BadInput, Failure
from pvsd.farm.records import Server
from pvsd.log import get_logger

__all__ = ["MEDIA_PARTS", "MediaPart", "build_media"]

# 2000-01-01: old enough that nobody reads it as the build time.
MEDIA_EPOCH = 946684800
VOLUME_ID = "PVSD_BOOT"
ISOLINUX_CFG = f"""DEFAULT pvsd
PROMPT 0
LABEL pvsd
  KERNEL ipxe.lkrn
  INITRD {MEDIA_SCRIPT_NAME}
"""
XORRISO_TIMEOUT_S = 120


@dataclass(frozen=True)
class MediaPart:
    """A file the media copies from the host, and the Debian package that ships it."""

    source: Path
    name: str
    package: str


MEDIA_PARTS = (
    MediaPart(Path("/usr/lib/ISOLINUX/isolinux.bin"), "isolinux.bin", "isolinux"),
    MediaPart(Path("/usr/lib/syslinux/modules/bios/ldlinux.c32"), "ldlinux.c32", "syslinux-common"),
    MediaPart(Path("/usr/lib/ipxe/ipxe.lkrn"), "ipxe.lkrn", "ipxe"),
)
# Makes the ISO bootable from a USB stick too (BIOS, as a hard disk).
HYBRID_MBR = MediaPart(Path("/usr/lib/ISOLINUX/isohdpfx.bin"), "isohdpfx.bin", "isolinux")

_log = get_logger("media")


def build_media(
    out: Path,
    servers: Sequence[Server],
    this: str,
    network: MediaNetwork,
    settings: BootstrapConfig,
    api_port: int,
    dead_after: float,
    farm: str = "",
) -> list[Server]:
    """Write the ISO for the live ones of `servers`, `this` first; return the servers it embeds."""
    embedded = media_servers(this, servers, dead_after)
    if not embedded:
        raise BadInput("no live server to put on the boot media: start `pvsd serve` on one first")
    script = media_script(embedded, network, settings, api_port, farm)
    grub_cfg = grub_media_config(embedded, network, settings, api_port, farm)
    missing = missing_efi_parts() + [
        f"{p.source} (Debian package {p.package})"
        for p in (*MEDIA_PARTS, HYBRID_MBR)
        if not p.source.exists()
    ]
    xorriso = shutil.which("xorriso")
    if xorriso is None:
        missing.append("xorriso (Debian package xorriso)")
    if missing:
        raise Failure("cannot build boot media, missing: " + ", ".join(missing))
    assert xorriso is not None
    out = out.resolve()
    if out.is_dir():
        raise BadInput(f"{out} is a folder; give the ISO's file name")
    if not out.parent.is_dir():
        raise BadInput(f"{out.parent} does not exist")
    with tempfile.TemporaryDirectory(prefix="pvsd-media-") as work:
        root = Path(work) / "root"
        folder = root / "isolinux"
        folder.mkdir(parents=True)
        for part in MEDIA_PARTS:
            shutil.copyfile(part.source, folder / part.name)
        (folder / "isolinux.cfg").write_text(ISOLINUX_CFG)
        (folder / MEDIA_SCRIPT_NAME).write_text(script)
        (root / "boot").mkdir()
        efi_image = build_efi_image(Path(work), grub_cfg, MEDIA_EPOCH)
        shutil.copyfile(efi_image, root / "boot" / EFI_IMAGE_NAME)
        (root / "boot" / "grub.cfg").write_text(grub_cfg)  # a copy to read; GRUB uses its own
        for path in (root, *root.rglob("*")):
            os.utime(path, (MEDIA_EPOCH, MEDIA_EPOCH))
        partial = Path(work) / "media.iso"
        command = [
            xorriso,
            "-as",
            "mkisofs",
            "-quiet",
            "-o",
            str(partial),
            "-V",
            VOLUME_ID,
            "-isohybrid-mbr",
            str(HYBRID_MBR.source),
            "-b",
            "isolinux/isolinux.bin",
            "-c",
            "isolinux/boot.cat",
            "-no-emul-boot",
            "-boot-load-size",
            "4",
            "-boot-info-table",
            "-eltorito-alt-boot",
            "-e",
            f"boot/{EFI_IMAGE_NAME}",
            "-no-emul-boot",
            "-isohybrid-gpt-basdat",
            "-r",
            str(root),
        ]
        environment = {**os.environ, "SOURCE_DATE_EPOCH": str(MEDIA_EPOCH)}
        run_tool(command, environment, XORRISO_TIMEOUT_S)
        # Same file system as `out`'s folder, so the rename is atomic: never a half-written ISO.
        staged = out.with_name(f".{out.name}.partial")
        try:
            shutil.copyfile(partial, staged)
            staged.replace(out)
        except OSError as error:
            staged.unlink(missing_ok=True)
            raise Failure(f"cannot write {out}: {error.strerror or error}") from None
    _log.info(
        "boot media written",
        path=str(out),
        servers=[s.name for s in embedded],
        network="dhcp" if network.dhcp else str(network.address),
        bytes=out.stat().st_size,
    )
    return embedded
