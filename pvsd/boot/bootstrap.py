"""`pvs.bootstrap`: the JSON a target downloads to learn which servers it may log in to.

Built per request from the farm's live membership, so it cannot list a server by hand
that is gone, or miss one that joined: the serving server first, then the other live
servers by name. Pure: the caller passes the servers it knows and the settings.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from pvsd.config import BootstrapConfig
from pvsd.farm.records import Server, ServerHealth

__all__ = ["BOOTSTRAP_FORMAT", "BOOTSTRAP_NAME", "BootstrapCache", "bootstrap_document", "render_bootstrap"]

BOOTSTRAP_NAME = "pvs.bootstrap"
BOOTSTRAP_FORMAT = "pvsd-bootstrap/1"


def bootstrap_document(
    farm: str, this: Server, servers: Iterable[Server], dead_after: float, settings: BootstrapConfig
) -> dict[str, Any]:
    others = sorted(
        (s for s in servers if s.name != this.name and s.health(dead_after) is ServerHealth.ALIVE),
        key=lambda s: s.name,
    )
    recovery: dict[str, Any] = {"method": settings.recovery}
    if settings.recovery == "reboot":
        recovery["reboot_delay_s"] = settings.reboot_delay_s
    return {
        "format": BOOTSTRAP_FORMAT,
        "farm": farm,
        "served_by": this.name,
        "servers": [
            {"name": server.name, "address": server.address, "login_port": server.ports.get("login", 6910)}
            for server in (this, *others)
        ],
        "login_polling_timeout_ms": settings.login_polling_timeout_ms,
        "login_general_timeout_ms": settings.login_general_timeout_ms,
        "recovery": recovery,
    }


def render_bootstrap(document: dict[str, Any]) -> bytes:
    return (json.dumps(document, indent=2) + "\n").encode()


class BootstrapCache:
    """The bootstrap one server hands out, rendered again only when the live membership changed."""

    def __init__(self, farm: str, settings: BootstrapConfig, dead_after: float) -> None:
        self.farm = farm
        self.settings = settings
        self.dead_after = dead_after
        self._key: tuple[Any, ...] | None = None

    def update(self, this: Server, servers: Iterable[Server]) -> bytes | None:
        """The new content if the list of live servers changed since the last call, else None."""
        document = bootstrap_document(self.farm, this, servers, self.dead_after, self.settings)
        key = tuple((s["name"], s["address"], s["login_port"]) for s in document["servers"])
        if key == self._key:
            return None
        self._key = key
        return render_bootstrap(document)
