"""Which server a target streams from: pure, the candidates in and a choice with its reason out.

As in PVS: among the live servers that hold a verified copy of the device's vDisk version,
the one with the fewest sessions per unit of power rating. Subnet affinity narrows the
field first: `none` ignores subnets, `best-effort` prefers servers on the target's subnet
and falls back to any, `fixed` allows only those.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["Affinity", "Candidate", "Choice", "choose_server"]


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
