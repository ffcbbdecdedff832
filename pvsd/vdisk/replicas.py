"""This server's replicas: which vDisk versions its store holds, checked and reported to the farm.

At start, every SCAN_INTERVAL_S, and within a second of an image appearing or going (its
folder's mtime changes), the server looks in `[server] store` for the image of
every imaged vDisk version and reports it verified (hash equal to the farm's), bad, or
missing. Logins only go to servers with a verified replica. A hash is trusted from the
sidecar written at import while the file's size and mtime are unchanged, so a scan costs a
stat per image. Servers on one host may share one store: each reports its own replicas.

A private-mode image changes with every write by design: it is checked by size only.
Only each version's image is looked at, by its name: the boot folder beside it (vN.boot, the
kernel and initramfs extracted at import) is no replica and is never reported.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

import structlog

from pvsd.farm.errors import StoreError
from pvsd.farm.records import AccessMode, ReplicaState
from pvsd.farm.store import FarmStore
from pvsd.vdisk.image import image_path, verify_image

__all__ = ["ReplicaScanner", "scan_replicas"]

SCAN_INTERVAL_S = 10.0
WATCH_INTERVAL_S = 1.0


def scan_replicas(store: FarmStore, server: str, folder: Path, log: structlog.stdlib.BoundLogger) -> int:
    """Report every change in this server's replicas; returns how many are verified."""
    known = {(r.vdisk, r.version): r for r in store.list_replicas() if r.server == server}
    verified = 0
    for vdisk in store.list_vdisks():
        for version in vdisk.versions:
            if not version.sha256:
                continue
            path = image_path(folder, vdisk.name, version.number)
            earlier = known.get((vdisk.name, version.number))
            if not path.exists():
                pulling = path.with_name(f".{path.name}.partial").exists()
                if earlier is not None and earlier.state is ReplicaState.COPYING and pulling:
                    continue  # pvsd/vdisk/replicator.py is copying it in
                if earlier is not None and earlier.state is not ReplicaState.MISSING:
                    store.report_replica(server, vdisk.name, version.number, None, ReplicaState.MISSING)
                    log.warning(
                        "replica gone from the store",
                        vdisk=vdisk.name,
                        version=version.number,
                        path=str(path),
                    )
                continue
            sha: str | None = version.sha256
            if vdisk.mode is AccessMode.PRIVATE:
                size = path.stat().st_size
                ok, reason = size == vdisk.size, f"size {size}, the farm says {vdisk.size}"
            else:
                check = verify_image(path, version.sha256, vdisk.size)
                ok, reason, sha = check.ok, check.reason, check.sha256
            state = ReplicaState.VERIFIED if ok else ReplicaState.BAD
            verified += ok
            if (
                earlier is not None
                and earlier.state is state
                and earlier.sha256 == (sha if ok else earlier.sha256)
            ):
                continue
            store.report_replica(server, vdisk.name, version.number, sha, state)
            if ok:
                log.info("replica verified", vdisk=vdisk.name, version=version.number, path=str(path))
            else:
                log.error(
                    "replica does not match the farm", vdisk=vdisk.name, version=version.number, reason=reason
                )
    return verified


def _folder_times(folder: Path) -> tuple[tuple[str, int], ...]:
    """The modification times of the store and of each vDisk's folder in it (a new or removed
    image changes its folder's)."""
    try:
        with os.scandir(folder) as entries:
            times = [(e.name, e.stat().st_mtime_ns) for e in entries if e.is_dir(follow_symlinks=False)]
        return (("", folder.stat().st_mtime_ns), *sorted(times))
    except OSError:
        return ()


class ReplicaScanner:
    def __init__(
        self, store: FarmStore, server: str, folder: Path, log: structlog.stdlib.BoundLogger
    ) -> None:
        self.store = store
        self.server = server
        self.folder = folder
        self.log = log
        self._task: asyncio.Task[None] | None = None

    async def scan(self) -> None:
        try:
            await asyncio.to_thread(scan_replicas, self.store, self.server, self.folder, self.log)
        except StoreError as error:
            self.log.warning("replica scan skipped: the farm store is unreachable", error=str(error))
        except OSError as error:
            self.log.error("replica scan failed reading the store", folder=str(self.folder), error=str(error))

    async def start(self) -> None:
        await self.scan()
        self._task = asyncio.create_task(self._run(), name="replica-scan")

    async def _run(self) -> None:
        # Between full scans, a glance at the folders' mtimes each second: an image imported
        # (or removed) here is reported at once, not up to SCAN_INTERVAL_S later.
        loop = asyncio.get_running_loop()
        seen, scanned_at = _folder_times(self.folder), loop.time()
        while True:
            await asyncio.sleep(WATCH_INTERVAL_S)
            now = _folder_times(self.folder)
            if now != seen or loop.time() - scanned_at >= SCAN_INTERVAL_S:
                await self.scan()
                seen, scanned_at = now, loop.time()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
