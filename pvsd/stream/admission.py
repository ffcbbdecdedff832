"""Whether a target may stream, which vDisk version, and from which server and port: pure.

A fresh login (no ticket) is decided from the farm's records, read by the farm store in the
same transaction that then records the session; every way it can fail is a StreamRefusal
with its own code. Which version a device boots follows its type, as in PVS (pvsd/farm/versions.py
boot_version). A maintenance device booting a maintenance version writes to the version's image
itself, as a private vDisk does, on the version's one server; the farm store holds the write
lock (one writer per version), and a second maintenance device is refused MAINTENANCE_IN_USE.

A target coming back with its ticket keeps the version the ticket names; it is placed like a
new one, on the least loaded live server holding a verified replica of that version, never
on the server it is leaving.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from pvsd.farm.records import (
    AccessMode,
    FarmView,
    ServerHealth,
    VDisk,
    VDiskVersion,
    WriteCache,
)
from pvsd.farm.versions import boot_version, writes_version
from pvsd.stream.placement import Affinity, Placement, place, verified_holders
from pvsd.stream.ticket import CacheType
from pvsd.stream.wire import ErrorCode, StreamRefusal

__all__ = ["Grant", "boot_version", "cache_type", "decide_login", "place_resumed"]


@dataclass(frozen=True)
class Grant:
    placement: Placement
    vdisk: VDisk
    version: VDiskVersion
    private: bool
    cache: CacheType


def cache_type(vdisk: VDisk) -> CacheType:
    if vdisk.mode is AccessMode.PRIVATE:
        return CacheType.NONE
    return CacheType.SERVER if vdisk.cache is WriteCache.SERVER else CacheType.DEVICE_RAM_DISK


def decide_login(
    mac: str,
    view: FarmView,
    *,
    target: ipaddress.IPv4Address | None,
    dead_after: float,
    affinity: Affinity = Affinity.NONE,
    prefix: int = 24,
) -> Grant:
    """The grant of a fresh login, or StreamRefusal saying why not."""
    device, vdisk = view.device, view.vdisk
    if device is None:
        raise StreamRefusal(
            ErrorCode.UNKNOWN_MAC, f"no device {mac} in the farm (and [farm] auto_add is off)"
        )
    if not device.enabled:
        raise StreamRefusal(ErrorCode.DEVICE_DISABLED, f"device {device.name} is disabled")
    if device.vdisk is None or vdisk is None:
        raise StreamRefusal(ErrorCode.NO_VDISK, f"device {device.name} has no vDisk assigned")
    version = boot_version(vdisk, device.type)
    if version is None:
        raise StreamRefusal(
            ErrorCode.NO_SERVER,
            f"vDisk {vdisk.name} has no imaged version a {device.type} device may boot "
            f"(import one with pvsd vdisk import)",
        )
    alive = {s.name for s in view.servers if s.health(dead_after) is ServerHealth.ALIVE}
    writing = writes_version(vdisk, device.type) is not None
    if writing and view.writer is not None and view.writer.mac != device.mac and view.writer.server in alive:
        raise StreamRefusal(
            ErrorCode.MAINTENANCE_IN_USE,
            f"{vdisk.name} version {version.number} is in maintenance by {view.writer.device} on "
            f"{view.writer.server}: one maintenance device at a time",
        )
    if vdisk.mode is AccessMode.PRIVATE:
        holders = [s for s in view.holders if s.mac != device.mac and s.server in alive]
        if holders:
            raise StreamRefusal(
                ErrorCode.PRIVATE_IN_USE,
                f"private vDisk {vdisk.name} is in use by {holders[0].device} on {holders[0].server}",
            )
    try:
        placement = place(
            view.servers,
            view.load,
            verified_holders(view.replicas, vdisk.name, version.number, version.sha256),
            leaving=None,
            target=target,
            dead_after=dead_after,
            affinity=affinity,
            prefix=prefix,
        )
    except StreamRefusal as refusal:
        raise StreamRefusal(
            refusal.code, f"{vdisk.name} version {version.number}: {refusal.reason}"
        ) from None
    return Grant(
        placement=placement,
        vdisk=vdisk,
        version=version,
        private=vdisk.mode is AccessMode.PRIVATE or writing,
        cache=CacheType.NONE if writing else cache_type(vdisk),
    )


def place_resumed(
    vdisk: str,
    version: int,
    view: FarmView,
    *,
    target: ipaddress.IPv4Address | None,
    dead_after: float,
    affinity: Affinity = Affinity.NONE,
    prefix: int = 24,
) -> Placement | None:
    """Where a target coming back with its ticket streams from: the least loaded live server
    holding a replica of the version it runs, verified against that version's hash, never the
    one its session was on (the one it is leaving: dead, though the farm may not see it so yet).
    None: nowhere known (the vDisk or the version is gone, or no other server holds it)."""
    if view.vdisk is None or view.vdisk.name != vdisk:
        return None
    record = next((v for v in view.vdisk.versions if v.number == version), None)
    if record is None:
        return None
    try:
        return place(
            view.servers,
            view.load,
            verified_holders(view.replicas, vdisk, version, record.sha256),
            leaving=view.leaving,
            target=target,
            dead_after=dead_after,
            affinity=affinity,
            prefix=prefix,
        )
    except StreamRefusal:
        return None
