"""What every server publishes over TFTP from the farm: pvs.bootstrap, pvs.ipxe and device scripts.

The files change only when the farm does: the bootstraps when the live servers change,
a device's script when the device does. Each change is pushed to every TFTP process.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from pvsd.boot.bootstrap import BOOTSTRAP_NAME, BootstrapCache
from pvsd.boot.ipxe import (
    DEVICE_SCRIPT_PREFIX,
    IPXE_BOOTSTRAP_NAME,
    device_script,
    device_script_name,
    ipxe_bootstrap,
    unknown_device_script,
)
from pvsd.config import Config
from pvsd.farm.records import Device, Server

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
        for target in targets:
            target.publish_default(DEVICE_SCRIPT_PREFIX, unknown_device_script().encode())

    def servers_changed(self, servers: list[Server]) -> None:
        content = self._bootstrap.update(self.this, servers)
        if content is None:
            return
        script = ipxe_bootstrap(
            self.farm, self.this, servers, self.config.farm.dead_after, self.config.bootstrap
        ).encode()
        for target in self.targets:
            target.publish(BOOTSTRAP_NAME, content)
            target.publish(IPXE_BOOTSTRAP_NAME, script)

    def devices_changed(self, devices: list[Device]) -> ScriptChanges:
        """Publish what changed; the MACs whose scripts were published and withdrawn, for the log."""
        names = {device_script_name(d.mac): d.mac for d in devices}
        scripts = {device_script_name(d.mac): device_script(d, self.template).encode() for d in devices}
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
        return ScriptChanges(tuple(published), tuple(withdrawn))
