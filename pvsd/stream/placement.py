"""Which server and I/O port a session goes to: pure, the farm's view in and a choice out.

As in PVS: among the live servers that hold a verified copy of the device's vDisk version,
the one with the fewest sessions per unit of power rating. Subnet affinity narrows the
field first: `none` ignores subnets, `best-effort` prefers servers on the target's subnet
and falls back to any, `fixed` allows only those. On the chosen server, the I/O port (one
per worker process) with the fewest sessions.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from pvsd.farm.records import Load, Replica, ReplicaState, Server, ServerHealth
from pvsd.stream.wire import ErrorCode, StreamRefusal

__all__ = [
    "Affinity",
    "Candidate",
    "Choice",
    "Placement",
    "choose_server",
    "pick_port",
    "place",
    "stream_ports",
    "verified_holders",
]


class Affinity(enum.StrEnum):
    NONE = "none"
    BEST_EFFORT = "best-effort"
    FIXED = "fixed"


@dataclass(frozen=True)
class Candidate:
    name: str
    address: ipaddress.IPv4Address
    power: float
    sessions: int
    alive: bool
    verified_replica: bool

    @property
    def load(self) -> float:
        return self.sessions / self.power


@dataclass(frozen=True)
class Choice:
    server: str | None
    reason: str


@dataclass(frozen=True)
class Placement:
    server: Server
    io_port: int
    reason: str


def choose_server(
    candidates: Iterable[Candidate],
    target: ipaddress.IPv4Address | None,
    affinity: Affinity = Affinity.NONE,
    prefix: int = 24,
) -> Choice:
    everyone = list(candidates)
    usable = [c for c in everyone if c.alive and c.verified_replica]
    if not usable:
        if not any(c.alive for c in everyone):
            return Choice(None, "no live server")
        return Choice(None, "no live server holds a verified replica of this vDisk version")
    if affinity is not Affinity.NONE and target is not None:
        subnet = ipaddress.IPv4Network(f"{target}/{prefix}", strict=False)
        near = [c for c in usable if c.address in subnet]
        if near:
            usable = near
        elif affinity is Affinity.FIXED:
            return Choice(None, f"no usable server on the target's subnet {subnet} (fixed subnet affinity)")
    best = min(usable, key=lambda c: (c.load, c.sessions, c.name))
    return Choice(best.name, f"least loaded: {best.sessions} sessions at power {best.power:g}")


def stream_ports(server: Server) -> range:
    first = int(server.ports.get("stream_first", 0))
    last = int(server.ports.get("stream_last", first - 1))
    return range(first, last + 1) if first else range(0)


def pick_port(server: Server, load: Load) -> int | None:
    """The server's I/O port (one per worker process) with the fewest active sessions."""
    ports = stream_ports(server)
    if not ports:
        return None
    return min(ports, key=lambda port: (load.port(server.name, port), port))


def verified_holders(replicas: Iterable[Replica], vdisk: str, version: int, sha256: str | None) -> set[str]:
    """The servers whose replica of this version is verified against the version's own hash: a
    replica verified against an older image of the same number never counts. A maintenance
    version has no hash yet: its one holder is its home, recorded verified without one."""
    return {
        r.server
        for r in replicas
        if r.vdisk == vdisk
        and r.version == version
        and r.state is ReplicaState.VERIFIED
        and r.sha256 == sha256
    }


def place(
    servers: Sequence[Server],
    load: Load,
    verified: set[str],
    *,
    leaving: str | None,
    target: ipaddress.IPv4Address | None,
    dead_after: float,
    affinity: Affinity,
    prefix: int,
) -> Placement:
    """The least loaded live streaming server with a verified replica, and its least loaded
    port; `leaving` is never chosen. Raises StreamRefusal(NO_SERVER) saying why there is none."""
    alive = {
        s.name: s
        for s in servers
        if s.name != leaving and s.health(dead_after) is ServerHealth.ALIVE and stream_ports(s)
    }
    candidates = [
        Candidate(
            name=server.name,
            address=ipaddress.IPv4Address(server.address),
            power=server.power,
            sessions=load.server(server.name),
            alive=server.name in alive,
            verified_replica=server.name in verified,
        )
        for server in servers
    ]
    choice = choose_server(candidates, target, affinity, prefix)
    if choice.server is None:
        raise StreamRefusal(ErrorCode.NO_SERVER, choice.reason)
    server = alive[choice.server]
    port = pick_port(server, load)
    if port is None:  # a server without stream ports is never alive here
        raise StreamRefusal(ErrorCode.NO_SERVER, f"{server.name} has no stream ports")
    return Placement(server, port, choice.reason)
