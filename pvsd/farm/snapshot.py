"""The offline snapshot: what booting needs from the farm store, kept on this server's disk.

A server refreshes it from every farm read it makes, and reads it back when the database is
unreachable: at start, and for fresh logins during an outage. It holds the farm secret, so
the file is written 0600, atomically (a crash leaves the old snapshot or the new one).

`audit_high` is the newest audit id the database had: a database that comes back with less
(restored from an older backup) or with no farm at all is noticed, never silently trusted.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pvsd.errors import PvsdError
from pvsd.farm.records import Device, Farm, Load, Replica, Server, Session, Site, VDisk

__all__ = ["FORMAT", "FarmSnapshot", "SnapshotError", "read_snapshot", "write_snapshot"]

FORMAT = 1
SNAPSHOT_FILE = "snapshot.json"


class SnapshotError(PvsdError):
    """The snapshot file is missing, unreadable, or of another format."""


@dataclass(frozen=True)
class FarmSnapshot:
    farm: Farm
    taken_at: float  # the database's clock at the read, epoch seconds
    audit_high: int
    devices: tuple[Device, ...] = ()
    vdisks: tuple[VDisk, ...] = ()
    replicas: tuple[Replica, ...] = ()
    servers: tuple[Server, ...] = ()
    sessions: tuple[Session, ...] = ()  # the active ones: the servers' last-known load
    sites: tuple[Site, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)

    def device(self, mac: str) -> Device | None:
        return next((d for d in self.devices if d.mac == mac), None)

    def vdisk(self, name: str) -> VDisk | None:
        return next((v for v in self.vdisks if v.name == name), None)

    def replicas_of(self, vdisk: str) -> list[Replica]:
        return [r for r in self.replicas if r.vdisk == vdisk]

    def load(self, exclude_mac: str | None = None) -> Load:
        per_port: dict[tuple[str, int], int] = {}
        for session in self.sessions:
            if session.mac != exclude_mac:
                key = (session.server, session.io_port)
                per_port[key] = per_port.get(key, 0) + 1
        return Load(per_port)

    def same_content(self, other: FarmSnapshot | None) -> bool:
        """Equal but for when it was read and how old heartbeats and sessions were then."""
        return other is not None and _content(self) == _content(other)


def _content(snapshot: FarmSnapshot) -> FarmSnapshot:
    servers = tuple(dataclasses.replace(s, heartbeat_age=None, last_heartbeat=None) for s in snapshot.servers)
    sessions = tuple(dataclasses.replace(s, idle=0.0, last_seen=0.0) for s in snapshot.sessions)
    replicas = tuple(dataclasses.replace(r, rate_bps=None) for r in snapshot.replicas)
    return dataclasses.replace(snapshot, taken_at=0.0, servers=servers, sessions=sessions, replicas=replicas)


def write_snapshot(folder: Path, snapshot: FarmSnapshot) -> Path:
    """Write the snapshot atomically, readable by this server's user alone (it holds the secret)."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = folder / SNAPSHOT_FILE
    temporary = folder / f".{SNAPSHOT_FILE}.{os.getpid()}"
    data = json.dumps({"format": FORMAT, "snapshot": _plain(snapshot)}, sort_keys=True).encode()
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(descriptor, 0o600)  # an older file left by another umask is tightened too
        os.write(descriptor, data)
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    temporary.replace(path)
    return path


def read_snapshot(folder: Path) -> FarmSnapshot:
    path = folder / SNAPSHOT_FILE
    try:
        document = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise SnapshotError(f"no farm snapshot at {path}: this server never read the farm") from None
    except (OSError, ValueError) as error:
        raise SnapshotError(f"cannot read the farm snapshot {path}: {error}") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise SnapshotError(f"the farm snapshot {path} is of another format; it is replaced at the next read")
    try:
        return typing.cast(FarmSnapshot, _build(FarmSnapshot, document["snapshot"]))
    except (KeyError, TypeError, ValueError) as error:
        raise SnapshotError(f"the farm snapshot {path} is damaged: {error}") from None


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, tuple | list):
        return [_plain(item) for item in value]
    return value


def _build(kind: Any, value: Any) -> Any:
    """The inverse of _plain, led by the records' type hints."""
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        options = [option for option in typing.get_args(kind) if option is not type(None)]
        return _build(options[0], value)
    if origin is tuple:
        item = typing.get_args(kind)[0]
        return tuple(_build(item, element) for element in value)
    if origin in (Mapping, dict) or kind is Mapping:
        if not isinstance(value, dict):
            raise TypeError(f"expected an object, not {type(value).__name__}")
        args = typing.get_args(kind)
        return {key: _build(args[1], item) if args else item for key, item in value.items()}
    if isinstance(kind, type) and dataclasses.is_dataclass(kind):
        if not isinstance(value, dict):
            raise TypeError(f"expected an object for {kind.__name__}")
        hints = typing.get_type_hints(kind)
        known = {f.name for f in dataclasses.fields(kind)}
        return kind(**{name: _build(hints[name], item) for name, item in value.items() if name in known})
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        return kind(value)
    if kind is float and isinstance(value, int | float):
        return float(value)
    if kind is Any or (isinstance(kind, type) and isinstance(value, kind)):
        return value
    raise TypeError(f"expected {kind}, found {value!r}")
