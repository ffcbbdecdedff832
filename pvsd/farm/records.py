"""What the farm store holds, as frozen dataclasses, and the states things can be in.

Times are seconds since the epoch as seen by the database's clock, so that servers on
hosts whose clocks disagree still agree on how old a heartbeat is.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

__all__ = [
    "AccessMode",
    "AuditEntry",
    "Device",
    "DeviceType",
    "Farm",
    "FarmView",
    "FreshLogin",
    "HeartbeatResult",
    "Load",
    "Replica",
    "ReplicaState",
    "Server",
    "ServerHealth",
    "ServerState",
    "Session",
    "Site",
    "VDisk",
    "VDiskShape",
    "VDiskVersion",
    "VersionState",
    "WriteCache",
]


class ServerState(enum.StrEnum):
    """What a server last said about itself."""

    RUNNING = "running"
    STOPPED = "stopped"


class ServerHealth(enum.StrEnum):
    """What the farm concludes: a running server whose heartbeat is too old is dead."""

    ALIVE = "alive"
    DEAD = "dead"
    STOPPED = "stopped"


class HeartbeatResult(enum.StrEnum):
    OK = "ok"
    MISSING = "missing"  # the server's record was removed (pvsd server remove)
    TAKEN = "taken"  # another process registered under this name since


class DeviceType(enum.StrEnum):
    """As in PVS: which vDisk version a device boots."""

    PRODUCTION = "production"
    TEST = "test"
    MAINTENANCE = "maintenance"


class AccessMode(enum.StrEnum):
    """PVS vDisk access modes: one writer to the image, or shared read-only plus a write cache."""

    PRIVATE = "private"
    STANDARD = "standard"


class WriteCache(enum.StrEnum):
    """Where a standard-mode target's writes go (PVS's write-cache types); private mode has none."""

    SERVER = "server"  # an overlay file per device on the server, under [stream] cache_dir
    DEVICE = "device"  # the target's own RAM with overflow to its disk: the server refuses writes


class VersionState(enum.StrEnum):
    """A vDisk version moves maintenance -> test -> production."""

    MAINTENANCE = "maintenance"
    TEST = "test"
    PRODUCTION = "production"


class ReplicaState(enum.StrEnum):
    """A server's copy of one vDisk version."""

    MISSING = "missing"
    COPYING = "copying"
    VERIFIED = "verified"
    BAD = "bad"


@dataclass(frozen=True)
class Farm:
    name: str
    secret: str
    created_at: float
    schema_version: int


@dataclass(frozen=True)
class Site:
    name: str
    description: str
    created_at: float


@dataclass(frozen=True)
class Server:
    name: str
    address: str
    ports: Mapping[str, int]
    power: float
    site: str | None
    state: ServerState
    instance: str
    started_at: float | None
    last_heartbeat: float | None
    heartbeat_age: float | None  # seconds, by the database's clock, when the record was read

    def health(self, dead_after: float) -> ServerHealth:
        if self.state is ServerState.STOPPED:
            return ServerHealth.STOPPED
        if self.heartbeat_age is None or self.heartbeat_age > dead_after:
            return ServerHealth.DEAD
        return ServerHealth.ALIVE


@dataclass(frozen=True)
class VersionBoot:
    """How a version boots diskless: its Linux kernel and initramfs (extracted at import, beside
    the image), the kernel's version (its /lib/modules), and where the root file system is."""

    kernel: str  # the path inside the image, or `--kernel FILE`'s name
    kernel_version: str
    kernel_sha256: str
    initrd: str | None = None
    initrd_sha256: str | None = None
    cmdline: str = ""  # the version's own, after [boot] cmdline
    root_offset: int | None = None  # byte offset of the ext4 holding /lib/modules; None: not found
    kernel_size: int = 0  # bytes of the extracted vmlinuz (0: recorded before migration 6)
    initrd_size: int | None = None


@dataclass(frozen=True)
class VDiskVersion:
    vdisk: str
    number: int
    state: VersionState
    sha256: str | None
    created_at: float
    boot: VersionBoot | None = None
    parent: int | None = None  # the version it was made on top of; None: a base (import, merge --base)
    home: str | None = None  # a maintenance version's one server, whose image its writer changes
    pending: bool = False  # not yet verified on every server that should hold it
    promote_to: VersionState | None = None  # `vdisk promote --at`: the state it takes at promote_at
    promote_at: float | None = None

    @property
    def imaged(self) -> bool:
        """Whether it has an image to boot: sealed (a sha256), or a maintenance version's own."""
        return bool(self.sha256) or self.home is not None


@dataclass(frozen=True)
class VDisk:
    name: str
    size: int
    sector_size: int
    mode: AccessMode
    created_at: float
    versions: tuple[VDiskVersion, ...]
    cache: WriteCache = WriteCache.DEVICE
    placement: tuple[str, ...] = ()  # the servers that should hold its versions; (): every server

    def version(self, number: int) -> VDiskVersion | None:
        return next((v for v in self.versions if v.number == number), None)


@dataclass(frozen=True)
class VDiskShape:
    """What a new vDisk is made of: its geometry and how it is served."""

    size: int
    sector_size: int = 512
    mode: AccessMode = AccessMode.STANDARD
    cache: WriteCache = WriteCache.DEVICE


@dataclass(frozen=True)
class Device:
    mac: str
    name: str
    site: str | None
    vdisk: str | None
    enabled: bool
    type: DeviceType
    created_at: float


@dataclass(frozen=True)
class Replica:
    server: str
    vdisk: str
    version: int
    sha256: str | None
    state: ReplicaState
    verified_at: float | None
    copied_bytes: int = 0  # while copying: how much of the version this server holds
    fetched_bytes: int = 0  # what this server pulled over the network for it, in all
    rate_bps: float | None = None  # while copying: bytes per second, lately


@dataclass(frozen=True)
class Session:
    id: int
    mac: str
    device: str
    server: str
    io_port: int
    since: float
    last_seen: float
    vdisk: str | None = None  # the device's vDisk now
    idle: float = 0.0  # seconds since last seen, by the database's clock, when the record was read
    version: int | None = None  # the version its ticket names (None: opened before migration 8)


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: float
    actor: str
    action: str
    subject: str
    detail: str


@dataclass(frozen=True)
class Load:
    """Active sessions (seen within the login's window) per server and per (server, I/O port),
    counted by the farm store, not listed."""

    per_port: Mapping[tuple[str, int], int] = field(default_factory=dict)

    def server(self, name: str) -> int:
        return sum(count for (server, _), count in self.per_port.items() if server == name)

    def port(self, server: str, port: int) -> int:
        return self.per_port.get((server, port), 0)


@dataclass(frozen=True)
class FarmView:
    """What one login is decided from, read from the farm store in one transaction."""

    device: Device | None
    vdisk: VDisk | None
    servers: Sequence[Server]
    replicas: Sequence[Replica]  # of this vDisk only
    load: Load = field(default_factory=Load)  # the session being placed is not counted
    holders: Sequence[Session] = ()  # a private vDisk: other devices' active sessions of it (one writer)
    leaving: str | None = None  # a target coming back: the server its session was on
    writer: Session | None = None  # a maintenance version's write lock holder, while its session is active


@dataclass(frozen=True)
class FreshLogin:
    """What the store's login transaction did: what it read, the session it opened (None when the
    login was refused), and whether it added the device first ([farm] auto_add)."""

    view: FarmView
    session: Session | None
    added: bool = False
    template_found: bool = True
