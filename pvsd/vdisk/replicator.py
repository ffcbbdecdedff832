"""Every server holds every version: each `[replication] interval_s` the server looks for the
standard-mode versions that its store lacks and that a live peer holds verified, and pulls them
one at a time (pvsd/vdisk/puller.py) from those peers' `/replication/`.

While a pull runs the farm shows this server's replica as `copying`, so logins keep going to
the servers that hold it (placement needs `verified`); once the image is in place and its
sha256 checked, the replica is reported verified. A pull that fails is logged
once per version and cause, and tried again at the next look, resuming what it holds.

Private-mode images are the live disk of one device and are not copied, nor is a maintenance
version (it changes until it is promoted, on its one home server). Servers that share one store
folder see each other's images in place and pull nothing. A server left out of a vDisk's
placement list (`pvsd vdisk placement`) pulls none of its versions.

Each look also tidies the store: the files of a version the farm no longer has (`vdisk version
delete`) are removed once no session on this server streams it; an image whose sidecar names
another hash than the version's (a version sealed again since) is removed and pulled anew,
reusing what other local versions hold.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import aiohttp
import structlog

from pvsd.config import Config
from pvsd.errors import PvsdError
from pvsd.farm.errors import StoreError
from pvsd.farm.membership import Membership
from pvsd.farm.records import AccessMode, Replica, ReplicaState, Server, ServerHealth, VDisk
from pvsd.vdisk.chunk_files import bad_chunks, kept_index
from pvsd.vdisk.chunks import ChunkIndex
from pvsd.vdisk.image import image_path, read_sidecar
from pvsd.vdisk.puller import Peer, pull_version, repair_chunks
from pvsd.vdisk.ratelimit import RateLimit
from pvsd.vdisk.version_files import remove_version_files

__all__ = ["Replicator"]


class Replicator:
    def __init__(self, config: Config, membership: Membership, log: structlog.stdlib.BoundLogger) -> None:
        self.config = config
        self.membership = membership
        self.store = membership.store
        self.log = log
        self.folder = Path(config.server.store).resolve()
        self._tasks: list[asyncio.Task[None]] = []
        self._told: set[tuple[str, int, str]] = set()
        # One cap for every pull of this server: pulls run one at a time.
        self.rate = RateLimit(config.replication.max_rate_mbit * 1e6 / 8)
        self._wake = asyncio.Event()

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._run(), name="replication"),
            asyncio.create_task(self._scrub_loop(), name="replication-scrub"),
        ]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def changed(self) -> None:
        """A version or replica changed in the farm (pvsd/farm/changes.py): look now."""
        self._wake.set()

    async def _run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=30)
        store_down = False
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                self._wake.clear()
                try:
                    await self.look(session)
                except StoreError as error:
                    if not store_down:  # said once per outage, not every interval
                        self.log.warning(
                            "replication paused: the farm store is unreachable", error=str(error)
                        )
                    store_down = True
                else:
                    if store_down:
                        self.log.info("replication resumed: the farm store is reachable again")
                    store_down = False
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.config.replication.interval_s)

    async def look(self, session: aiohttp.ClientSession) -> None:
        """Pull each version this server lacks, one after the other."""
        vdisks = await asyncio.to_thread(self.store.list_vdisks)
        replicas = await asyncio.to_thread(self.store.list_replicas)
        servers = self._live_peers()
        this = self.config.server.name
        await self._tidy(vdisks)
        for vdisk in vdisks:
            if vdisk.mode is not AccessMode.STANDARD or (vdisk.placement and this not in vdisk.placement):
                continue
            for version in vdisk.versions:
                image = image_path(self.folder, vdisk.name, version.number)
                if not version.sha256:
                    continue
                if image.exists():
                    sidecar = read_sidecar(image)
                    if sidecar is None or sidecar.sha256 == version.sha256:
                        continue
                    self.log.warning(
                        "replica holds another image than the version's: pulled anew",
                        vdisk=vdisk.name,
                        version=version.number,
                        path=str(image),
                    )
                    await asyncio.to_thread(remove_version_files, self.folder, vdisk.name, version.number)
                peers = _holders(replicas, vdisk.name, version.number, servers)
                if peers:
                    await self._pull(session, vdisk.name, version.number, version.sha256, vdisk.size, peers)

    async def _tidy(self, vdisks: list[VDisk]) -> None:
        """Remove the files of versions this server should no longer hold, once unused here."""
        this = self.config.server.name
        gone: list[tuple[str, int]] = []
        # Only versions the farm no longer has: a file of a kept version may be another server's
        # (servers on one host can share a store folder), and it is never this server's to judge.
        for vdisk in vdisks:
            wanted = {v.number for v in vdisk.versions}
            for number in await asyncio.to_thread(_held_numbers, self.folder, vdisk.name):
                if number not in wanted:
                    gone.append((vdisk.name, number))
        if not gone:
            return
        window = self.config.stream.idle_timeout + 2 * self.config.farm.heartbeat_interval
        sessions = await asyncio.to_thread(self.store.list_sessions)
        used = {(s.vdisk, s.version) for s in sessions if s.server == this and s.idle <= window}
        for name, number in gone:
            if (name, number) in used:
                continue  # a target streams it from here: kept until it reboots
            removed = await asyncio.to_thread(remove_version_files, self.folder, name, number)
            if removed:
                self.log.info(
                    "version removed from this store: the farm no longer keeps it here",
                    vdisk=name,
                    version=number,
                    files=len(removed),
                )

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
        earlier = await asyncio.to_thread(
            self.store.report_replica, this, vdisk, version, None, ReplicaState.COPYING
        )

        async def progress(held: int, fetched: int, rate: float) -> None:
            with contextlib.suppress(StoreError):  # the next second says it again
                await asyncio.to_thread(
                    self.store.report_copy, this, vdisk, version, held, earlier.fetched_bytes + fetched, rate
                )

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
                progress,
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
        fetched = earlier.fetched_bytes + result.fetched_bytes
        await asyncio.to_thread(self.store.report_copy, this, vdisk, version, size, fetched, 0.0)
        self.log.info("replica verified", vdisk=vdisk, version=version, path=str(result.path))

    async def _scrub_loop(self) -> None:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=30)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                await asyncio.sleep(self.config.replication.verify_interval_s)
                try:
                    await self.scrub(session)
                except StoreError as error:
                    self.log.warning("scrub skipped: the farm store is unreachable", error=str(error))

    async def scrub(self, session: aiohttp.ClientSession) -> None:
        """Hash every chunk of every held standard version against its kept index, at the
        verify rate; repair the bad chunks, and only those, from the peers."""
        this = self.config.server.name
        vdisks = await asyncio.to_thread(self.store.list_vdisks)
        for vdisk in vdisks:
            if vdisk.mode is not AccessMode.STANDARD:
                continue
            for version in vdisk.versions:
                image = image_path(self.folder, vdisk.name, version.number)
                if not version.sha256 or not image.exists():
                    continue
                index = await asyncio.to_thread(kept_index, image, version.sha256)
                if index is None:
                    continue  # not verified here yet: the replica scan and the pull see to it
                limit = RateLimit(self.config.replication.verify_rate_mbit * 1e6 / 8)

                def pace(size: int, limit: RateLimit = limit) -> None:
                    time.sleep(limit.delay(time.monotonic(), size))

                try:
                    bad = await asyncio.to_thread(bad_chunks, image, index, pace)
                except PvsdError as error:
                    self.log.error("scrub could not read a version", path=str(image), error=str(error))
                    continue
                if not bad:
                    continue
                self.log.error(
                    "scrub found bad chunks",
                    vdisk=vdisk.name,
                    version=version.number,
                    chunks=bad,
                    path=str(image),
                )
                await asyncio.to_thread(
                    self.store.report_replica, this, vdisk.name, version.number, None, ReplicaState.BAD
                )
                await self._repair(session, vdisk.name, version.number, image, index, bad)

    async def _repair(
        self,
        session: aiohttp.ClientSession,
        vdisk: str,
        version: int,
        image: Path,
        index: ChunkIndex,
        bad: list[int],
    ) -> None:
        replicas = await asyncio.to_thread(self.store.list_replicas, vdisk)
        servers = self._live_peers()
        peers = _holders(replicas, vdisk, version, servers)
        try:
            fetched = await repair_chunks(
                image, index, bad, peers, session, self.log, self.config.replication.parallel, self.rate
            )
        except (PvsdError, OSError) as error:
            self.log.error(
                "bad chunks not repaired; tried again at the next scrub", path=str(image), error=str(error)
            )
            return
        this = self.config.server.name
        replica = await asyncio.to_thread(
            self.store.report_replica, this, vdisk, version, index.sha256, ReplicaState.VERIFIED
        )
        await asyncio.to_thread(
            self.store.report_copy, this, vdisk, version, index.size, replica.fetched_bytes + fetched, 0.0
        )
        self.log.info("replica repaired", vdisk=vdisk, version=version, chunks=bad, fetched_bytes=fetched)

    def _live_peers(self) -> dict[str, Server]:
        """Live peers that serve HTTP, by name."""
        return {
            s.name: s
            for s in self.membership.known_servers(asyncio.get_running_loop().time())
            if s.name != self.config.server.name
            and s.health(self.config.farm.dead_after) is ServerHealth.ALIVE
            and "api" in s.ports
        }


def _held_numbers(folder: Path, vdisk: str) -> list[int]:
    """The version numbers whose image this store holds for a vDisk (`vN.img`)."""
    try:
        names = [p.name for p in (folder / vdisk).iterdir()]
    except OSError:
        return []
    return sorted(
        int(name[1:-4])
        for name in names
        if name.startswith("v") and name.endswith(".img") and name[1:-4].isdigit()
    )


def _holders(replicas: list[Replica], vdisk: str, version: int, servers: dict[str, Server]) -> list[Peer]:
    """The live peers among `servers` that hold this version verified."""
    return [
        _peer(servers[r.server])
        for r in replicas
        if r.vdisk == vdisk
        and r.version == version
        and r.state is ReplicaState.VERIFIED
        and r.server in servers
    ]


def _peer(server: Server) -> Peer:
    return Peer(server.name, f"http://{server.address}:{server.ports['api']}")
