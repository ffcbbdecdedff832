"""Every server holds every version: each `[replication] interval_s` the server looks for the
standard-mode versions that its store lacks and that a live peer holds verified, and pulls them
one at a time (pvsd/vdisk/puller.py) from those peers' `/replication/`.

While a pull runs the farm shows this server's replica as `copying`, so logins keep going to
the servers that hold it (placement needs `verified`); once the image is in place and its
sha256 checked, the replica is reported verified. A pull that fails is logged
once per version and cause, and tried again at the next look, resuming what it holds.

Private-mode images are the live disk of one device and are not copied. Servers that share one
store folder see each other's images in place and pull nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import aiohttp
import structlog

from pvsd.config import Config
from pvsd.errors import PvsdError
from pvsd.farm.errors import StoreError
from pvsd.farm.membership import Membership
from pvsd.farm.records import AccessMode, ReplicaState, Server, ServerHealth
from pvsd.vdisk.image import image_path
from pvsd.vdisk.puller import Peer, pull_version
from pvsd.vdisk.ratelimit import RateLimit

__all__ = ["Replicator"]


class Replicator:
    def __init__(self, config: Config, membership: Membership, log: structlog.stdlib.BoundLogger) -> None:
        self.config = config
        self.membership = membership
        self.store = membership.store
        self.log = log
        self.folder = Path(config.server.store).resolve()
        self._task: asyncio.Task[None] | None = None
        self._told: set[tuple[str, int, str]] = set()
        # One cap for every pull of this server: pulls run one at a time.
        self.rate = RateLimit(config.replication.max_rate_mbit * 1e6 / 8)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="replication")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=30)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                try:
                    await self.look(session)
                except StoreError as error:
                    self.log.warning("replication skipped: the farm store is unreachable", error=str(error))
                await asyncio.sleep(self.config.replication.interval_s)

    async def look(self, session: aiohttp.ClientSession) -> None:
        """Pull each version this server lacks, one after the other."""
        this = self.config.server.name
        vdisks = await asyncio.to_thread(self.store.list_vdisks)
        replicas = await asyncio.to_thread(self.store.list_replicas)
        servers = {
            s.name: s
            for s in self.membership.known_servers(asyncio.get_running_loop().time())
            if s.name != this and s.health(self.config.farm.dead_after) is ServerHealth.ALIVE
        }
        for vdisk in vdisks:
            if vdisk.mode is not AccessMode.STANDARD:
                continue
            for version in vdisk.versions:
                if not version.sha256 or image_path(self.folder, vdisk.name, version.number).exists():
                    continue
                peers = [
                    _peer(servers[r.server])
                    for r in replicas
                    if r.vdisk == vdisk.name
                    and r.version == version.number
                    and r.state is ReplicaState.VERIFIED
                    and r.server in servers
                    and "api" in servers[r.server].ports  # a peer with its HTTP service off serves nothing
                ]
                if peers:
                    await self._pull(session, vdisk.name, version.number, version.sha256, vdisk.size, peers)

    async def _pull(
        self,
        session: aiohttp.ClientSession,
        vdisk: str,
        version: int,
        sha256: str,
        size: int,
        peers: list[Peer],
    ) -> None:
        this = self.config.server.name
        await asyncio.to_thread(self.store.report_replica, this, vdisk, version, None, ReplicaState.COPYING)
        self.log.info("pulling a version", vdisk=vdisk, version=version, peers=[p.name for p in peers])
        try:
            result = await pull_version(
                self.folder,
                vdisk,
                version,
                sha256,
                size,
                peers,
                session,
                self.log,
                self.config.replication.parallel,
                self.rate,
            )
        except (PvsdError, OSError) as error:
            reason = str(error)
            key = (vdisk, version, reason[:80])
            if key not in self._told:
                self._told.add(key)
                self.log.warning(
                    "version not pulled; tried again later", vdisk=vdisk, version=version, reason=reason
                )
            await asyncio.to_thread(
                self.store.report_replica, this, vdisk, version, None, ReplicaState.MISSING
            )
            return
        # Reported here, not left to the replica scan: a server without streaming runs none.
        await asyncio.to_thread(
            self.store.report_replica, this, vdisk, version, sha256, ReplicaState.VERIFIED
        )
        self.log.info("replica verified", vdisk=vdisk, version=version, path=str(result.path))


def _peer(server: Server) -> Peer:
    return Peer(server.name, f"http://{server.address}:{server.ports['api']}")
