"""The files below /boot/ that come from vDisk versions: `vdisk/NAME/VERSION/vmlinuz` and
`.../initrd` (extracted at import, beside the image in `[server] store`) and
`agent/NAME/VERSION/pvsd-agent.cpio.gz` (built here from that image's modules, then kept).

Only versions the farm knows, with boot files, are served; anything else is a 404.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from pvsd.boot.builds import BootBuilds
from pvsd.boot.ipxe import AGENT_OVERLAY_NAME, KERNEL_NAME
from pvsd.boot.linux_image import read_agent_modules
from pvsd.boot.version_boot import INITRD_FILE, KERNEL_FILE
from pvsd.errors import BadInput
from pvsd.farm.records import VDisk, VDiskVersion
from pvsd.vdisk.image import boot_folder, image_path

__all__ = ["VersionFiles"]


class VersionFiles:
    def __init__(self, store: Path, vdisks: Callable[[], dict[str, VDisk]], builds: BootBuilds) -> None:
        self.store = store
        self.vdisks = vdisks
        self.builds = builds

    def _version(self, rest: str, leaf: str) -> tuple[VDisk, VDiskVersion] | None:
        parts = rest.split("/")
        if len(parts) != 3 or parts[2] != leaf or not parts[1].isdigit():
            return None
        vdisk = self.vdisks().get(parts[0])
        version = next((v for v in vdisk.versions if v.number == int(parts[1])), None) if vdisk else None
        if vdisk is None or version is None or version.boot is None:
            return None
        return vdisk, version

    async def boot_file(self, rest: str) -> Path | None:
        """`NAME/VERSION/vmlinuz` or `NAME/VERSION/initrd`."""
        leaf = rest.rsplit("/", 1)[-1]
        found = self._version(rest, leaf) if leaf in (KERNEL_NAME, "initrd") else None
        if found is None:
            return None
        vdisk, version = found
        path = boot_folder(self.store, vdisk.name, version.number) / (
            KERNEL_FILE if leaf == KERNEL_NAME else INITRD_FILE
        )
        return path if await asyncio.to_thread(path.is_file) else None

    async def agent_overlay(self, rest: str) -> Path | None:
        """`NAME/VERSION/pvsd-agent.cpio.gz`, built on first use."""
        found = self._version(rest, AGENT_OVERLAY_NAME)
        if found is None:
            return None
        vdisk, version = found
        boot = version.boot
        if boot is None or version.sha256 is None:
            return None
        if boot.root_offset is None:
            raise BadInput(
                f"{vdisk.name} version {version.number} has no Linux root to take the agent's modules from"
            )
        image = image_path(self.store, vdisk.name, version.number)
        if not await asyncio.to_thread(image.is_file):
            return None  # this server holds no replica of it: another one does
        offset, kernel_version = boot.root_offset, boot.kernel_version
        return await self.builds.agent_overlay(
            vdisk.name,
            version.number,
            version.sha256,
            lambda: read_agent_modules(image, offset, kernel_version),
        )
