"""Whether a target may stream, which vDisk version, and from which server and port: pure.

A fresh login (no ticket) is decided from the farm's records, read by the login server in
one go; every way it can fail has its own error code. Which version a device boots follows
its type, as in PVS: production devices the newest production version, test devices the
newest test or production one, maintenance devices the newest of all. Versions without an
image (no hash yet, like the empty version 0 of `vdisk create`) are never chosen.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from pvsd.farm.records import (
    AccessMode,
    Device,
    DeviceType,
    ReplicaState,
    Server,
    ServerHealth,
    Session,
    VDisk,
    VDiskVersion,
    VersionState,
    WriteCache,
)
from pvsd.farm.records import Replica as ReplicaRecord
from pvsd.stream.placement import Affinity, Candidate, choose_server
from pvsd.stream.ticket import CacheType
from pvsd.stream.wire import ErrorCode

__all__ = [
    "FarmView",
    "Grant",
    "Placement",
    "Refusal",
    "boot_version",
    "cache_type",
    "decide_login",
    "pick_port",
    "place_resumed",
]

_ALLOWED: dict[DeviceType, tuple[VersionState, ...]] = {
    DeviceType.PRODUCTION: (VersionState.PRODUCTION,),
    DeviceType.TEST: (VersionState.TEST, VersionState.PRODUCTION),
    DeviceType.MAINTENANCE: (VersionState.MAINTENANCE, VersionState.TEST, VersionState.PRODUCTION),
}


@dataclass(frozen=True)
class FarmView:
    """What the login server read from the farm store for one fresh login."""

    device: Device | None
    vdisk: VDisk | None
    servers: Sequence[Server]
    replicas: Sequence[ReplicaRecord]
    sessions: Sequence[Session]


@dataclass(frozen=True)
class Refusal:
    code: ErrorCode
    reason: str


@dataclass(frozen=True)
class Grant:
    server: Server
    io_port: int
    version: VDiskVersion
    private: bool
    cache: CacheType
    reason: str


def boot_version(vdisk: VDisk, device_type: DeviceType) -> VDiskVersion | None:
    allowed = _ALLOWED[device_type]
    usable = [v for v in vdisk.versions if v.state in allowed and v.sha256]
    return max(usable, key=lambda v: v.number, default=None)


def cache_type(vdisk: VDisk) -> CacheType:
    if vdisk.mode is AccessMode.PRIVATE:
        return CacheType.NONE
    return CacheType.SERVER if vdisk.cache is WriteCache.SERVER else CacheType.DEVICE_RAM_DISK


def stream_ports(server: Server) -> range:
    first = int(server.ports.get("stream_first", 0))
    last = int(server.ports.get("stream_last", first - 1))
    return range(first, last + 1) if first else range(0)


def pick_port(server: Server, sessions: Sequence[Session], active_within: float) -> int | None:
    """The server's I/O port (one per worker process) with the fewest active sessions."""
    ports = stream_ports(server)
    if not ports:
        return None
    load = Counter(s.io_port for s in sessions if s.server == server.name and s.idle <= active_within)
    return min(ports, key=lambda port: (load[port], port))


def decide_login(
    mac: str,
    view: FarmView,
    *,
    target: ipaddress.IPv4Address | None,
    dead_after: float,
    active_within: float,
    affinity: Affinity = Affinity.NONE,
    prefix: int = 24,
) -> Grant | Refusal:
    device, vdisk = view.device, view.vdisk
    if device is None:
        return Refusal(ErrorCode.UNKNOWN_MAC, f"no device {mac} in the farm (and [farm] auto_add is off)")
    if not device.enabled:
        return Refusal(ErrorCode.DEVICE_DISABLED, f"device {device.name} is disabled")
    if device.vdisk is None or vdisk is None:
        return Refusal(ErrorCode.NO_VDISK, f"device {device.name} has no vDisk assigned")
    version = boot_version(vdisk, device.type)
    if version is None:
        return Refusal(
            ErrorCode.NO_SERVER,
            f"vDisk {vdisk.name} has no imaged version a {device.type} device may boot "
            f"(import one with pvsd vdisk import)",
        )
    active = [s for s in view.sessions if s.idle <= active_within]
    alive = {s.name: s for s in view.servers if s.health(dead_after) is ServerHealth.ALIVE}
    if vdisk.mode is AccessMode.PRIVATE:
        holders = [s for s in active if s.vdisk == vdisk.name and s.mac != device.mac and s.server in alive]
        if holders:
            return Refusal(
                ErrorCode.PRIVATE_IN_USE,
                f"private vDisk {vdisk.name} is in use by {holders[0].device} on {holders[0].server}",
            )
    verified = {
        r.server
        for r in view.replicas
        if r.vdisk == vdisk.name
        and r.version == version.number
        and r.state is ReplicaState.VERIFIED
        and r.sha256 == version.sha256
    }
    placement = _place(
        view.servers,
        view.sessions,
        verified,
        leaving=None,
        target=target,
        dead_after=dead_after,
        active_within=active_within,
        affinity=affinity,
        prefix=prefix,
    )
    if isinstance(placement, str):
        return Refusal(ErrorCode.NO_SERVER, f"{vdisk.name} version {version.number}: {placement}")
    return Grant(
        server=placement.server,
        io_port=placement.io_port,
        version=version,
        private=vdisk.mode is AccessMode.PRIVATE,
        cache=cache_type(vdisk),
        reason=placement.reason,
    )


@dataclass(frozen=True)
class Placement:
    server: Server
    io_port: int
    reason: str


def place_resumed(
    vdisk: str,
    version: int,
    session: int,
    view: FarmView,
    *,
    target: ipaddress.IPv4Address | None,
    dead_after: float,
    active_within: float,
    affinity: Affinity = Affinity.NONE,
    prefix: int = 24,
) -> Placement | None:
    """Where a target coming back with its ticket streams from: the least loaded live server
    holding a verified replica of the version it runs, never the one its session was on (the
    one it is leaving: dead, though the farm may not see it so yet). None: nowhere known."""
    leaving = next((s.server for s in view.sessions if s.id == session), None)
    verified = {
        r.server
        for r in view.replicas
        if r.vdisk == vdisk and r.version == version and r.state is ReplicaState.VERIFIED
    }
    placement = _place(
        view.servers,
        [s for s in view.sessions if s.id != session],
        verified,
        leaving=leaving,
        target=target,
        dead_after=dead_after,
        active_within=active_within,
        affinity=affinity,
        prefix=prefix,
    )
    return None if isinstance(placement, str) else placement


def _place(
    servers: Sequence[Server],
    sessions: Sequence[Session],
    verified: set[str],
    *,
    leaving: str | None,
    target: ipaddress.IPv4Address | None,
    dead_after: float,
    active_within: float,
    affinity: Affinity,
    prefix: int,
) -> Placement | str:
    """The least loaded live streaming server with a verified replica, and its least loaded
    port; `leaving` is never chosen. A string says why there is none."""
    alive = {
        s.name: s
        for s in servers
        if s.name != leaving and s.health(dead_after) is ServerHealth.ALIVE and stream_ports(s)
    }
    per_server = Counter(s.server for s in sessions if s.idle <= active_within)
    candidates = [
        Candidate(
            name=server.name,
            address=ipaddress.IPv4Address(server.address),
            power=server.power,
            sessions=per_server[server.name],
            alive=server.name in alive,
            verified_replica=server.name in verified,
        )
        for server in servers
    ]
    choice = choose_server(candidates, target, affinity, prefix)
    if choice.server is None:
        return choice.reason
    server = alive[choice.server]
    port = pick_port(server, sessions, active_within)
    assert port is not None  # a server without stream ports is not a candidate
    return Placement(server, port, choice.reason)
