"""The farm's devices as this server last read them, refreshed every heartbeat interval and
at once when the farm says a device or a vDisk changed (pvsd/farm/changes.py).

Proxy DHCP asks it whether a MAC is known, and the boot files follow it. When the
database is unreachable the last view stays in force.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from pvsd.farm.errors import StoreUnavailable
from pvsd.farm.records import Device, VDisk
from pvsd.farm.store import FarmStore

__all__ = ["DeviceView"]


class DeviceView:
    def __init__(self, store: FarmStore, interval: float) -> None:
        self.store = store
        self.interval = interval
        self.devices: dict[str, Device] = {}
        self.vdisks: dict[str, VDisk] = {}
        """The vDisks with their versions, as read with the devices: what their scripts boot."""
        self.watchers: list[Callable[[list[Device]], None]] = []
        """Called with every device after each successful read."""
        self._task: asyncio.Task[None] | None = None

    def __contains__(self, mac: object) -> bool:
        return mac in self.devices

    def is_known(self, mac: str) -> bool:
        return mac in self.devices

    async def start(self) -> None:
        await self.refresh()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="device-view")

    async def refresh(self) -> None:
        try:
            devices = await asyncio.to_thread(self.store.list_devices)
            vdisks = await asyncio.to_thread(self.store.list_vdisks)
        except StoreUnavailable:
            return  # keep what we knew: the heartbeat logs the outage
        self.vdisks = {vdisk.name: vdisk for vdisk in vdisks}
        self.devices = {device.mac: device for device in devices}
        for watcher in self.watchers:
            watcher(devices)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.refresh()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
