"""What every server publishes over TFTP and HTTP from the farm: pvs.bootstrap, pvs.ipxe and
the device scripts.

The files change only when the farm does: the bootstraps when the live servers change, a
device's script when the device, its vDisk or the live servers do. Each change is pushed to
every TFTP process and to the HTTP service.

A device's scripts, one for iPXE (`pvsd/device/MAC.ipxe`) and one for the UEFI boot media's
GRUB (`pvsd/grub/MAC.cfg`), boot its vDisk diskless (pvsd/boot/ipxe.py diskless_script) when the
version it will log in to has boot files; otherwise it says why not and fails the chain, so
that pvs.ipxe's recovery follows. `[boot] script` replaces the iPXE one with the operator's
template, and the GRUB one then says that it cannot follow an iPXE template.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from pvsd.boot.bootstrap import BOOTSTRAP_NAME, BootstrapCache
from pvsd.boot.grub import (
    GRUB_SCRIPT_PREFIX,
    grub_device_script,
    grub_refusal_script,
    grub_script_name,
    grub_unknown_device_script,
)
from pvsd.boot.ipxe import (
    DEVICE_SCRIPT_PREFIX,
    IPXE_BOOTSTRAP_NAME,
    DisklessBoot,
    device_script,
    device_script_name,
    diskless_script,
    ipxe_bootstrap,
    refusal_script,
    unknown_device_script,
)
from pvsd.config import Config
from pvsd.farm.records import Device, Server, VDisk
from pvsd.farm.versions import boot_version

__all__ = ["BootFiles", "Publisher", "ScriptChanges"]


@dataclass(frozen=True)
class ScriptChanges:
    published: tuple[str, ...]  # MACs
    withdrawn: tuple[str, ...]


class Publisher(Protocol):
    def publish(self, name: str, data: bytes) -> None: ...

    def unpublish(self, name: str) -> None: ...

    def publish_default(self, prefix: str, data: bytes) -> None: ...


class BootFiles:
    def __init__(
        self, targets: Sequence[Publisher], config: Config, farm: str, this: Server, template: str | None
    ) -> None:
        self.targets = targets
        self.config = config
        self.farm = farm
        self.this = this
        self.template = template
        self._bootstrap = BootstrapCache(farm, config.bootstrap, config.farm.dead_after)
        self._scripts: dict[str, bytes] = {}
        self._macs: dict[str, str] = {}  # script name -> MAC
        self._servers: list[Server] = [this]
        for target in targets:
            target.publish_default(DEVICE_SCRIPT_PREFIX, unknown_device_script().encode())
            target.publish_default(GRUB_SCRIPT_PREFIX, grub_unknown_device_script().encode())

    def servers_changed(self, servers: list[Server]) -> None:
        self._servers = servers
        content = self._bootstrap.update(self.this, servers)
        if content is None:
            return
        script = ipxe_bootstrap(
            self.farm, self.this, servers, self.config.farm.dead_after, self.config.bootstrap
        ).encode()
        for target in self.targets:
            target.publish(BOOTSTRAP_NAME, content)
            target.publish(IPXE_BOOTSTRAP_NAME, script)

    def script(self, device: Device, vdisks: dict[str, VDisk]) -> str:
        """The iPXE script of one device, from the farm as it is now."""
        if self.template is not None:
            return device_script(device, self.template)
        plan = self._plan(device, vdisks)
        if isinstance(plan, str):
            return refusal_script(device, plan)
        return diskless_script(
            device,
            plan,
            self.this,
            self._servers,
            self.config.farm.dead_after,
            self.config.boot.download_timeout_ms,
        )

    def grub_script(self, device: Device, vdisks: dict[str, VDisk]) -> str:
        """The same for GRUB, which the UEFI boot media run (pvsd/boot/grub.py)."""
        if self.template is not None:
            return grub_refusal_script(
                device, "[boot] script is an iPXE template; boot this device with PXE or the BIOS media"
            )
        plan = self._plan(device, vdisks)
        if isinstance(plan, str):
            return grub_refusal_script(device, plan)
        return grub_device_script(device, plan, self.this, self._servers, self.config.farm.dead_after)

    def _plan(self, device: Device, vdisks: dict[str, VDisk]) -> DisklessBoot | str:
        """What the device boots, or why it cannot."""
        if not device.enabled:
            return "the device is disabled (pvsd device set MAC --enable)"
        if device.vdisk is None:
            return "no vDisk is assigned (pvsd device set MAC --vdisk NAME)"
        vdisk = vdisks.get(device.vdisk)
        if vdisk is None:
            return f"vDisk {device.vdisk} is not in the farm"
        version = boot_version(vdisk, device.type)
        if version is None:
            return f"vDisk {vdisk.name} has no version a {device.type} device may boot"
        if version.boot is None:
            return (
                f"{vdisk.name} version {version.number} has no kernel to boot diskless "
                "(import a Linux image, or give vdisk import --kernel and --initrd)"
            )
        return DisklessBoot(
            vdisk.name,
            version.number,
            version.boot.kernel_version,
            version.boot.initrd is not None,
            f"{self.config.boot.cmdline} {version.boot.cmdline}".strip(),
        )

    def devices_changed(self, devices: list[Device], vdisks: dict[str, VDisk]) -> ScriptChanges:
        """Publish what changed; the MACs whose scripts were published and withdrawn, for the log."""
        names = {device_script_name(d.mac): d.mac for d in devices}
        names |= {grub_script_name(d.mac): d.mac for d in devices}
        scripts = {device_script_name(d.mac): self.script(d, vdisks).encode() for d in devices}
        scripts |= {grub_script_name(d.mac): self.grub_script(d, vdisks).encode() for d in devices}
        withdrawn = []
        for name in self._scripts.keys() - scripts.keys():
            withdrawn.append(self._macs.pop(name))
            for target in self.targets:
                target.unpublish(name)
        published = []
        for name, data in scripts.items():
            if self._scripts.get(name) != data:
                published.append(names[name])
                for target in self.targets:
                    target.publish(name, data)
        self._scripts = scripts
        self._macs.update(names)
        # A device has two scripts: name its MAC once.
        return ScriptChanges(tuple(dict.fromkeys(published)), tuple(dict.fromkeys(withdrawn)))
