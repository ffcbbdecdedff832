"""Offline database support: this server's snapshot of the farm, its queue, and whether the
database it reaches now is the farm's.

Every refresh reads what booting needs in one transaction and keeps it (pvsd/farm/snapshot.py),
on disk when it changed. While the database is unreachable the login service decides fresh
logins of known devices from the snapshot and queues the session records here
(pvsd/farm/offline_queue.py); the first refresh that reaches the database again writes them.

A database that comes back is checked before it is trusted. One with no farm, another farm's,
or one whose audit log ends before what this server saw (restored from an older backup) is
reported and not used: the server goes on from its snapshot and keeps its queue, until an
operator restarts it with `pvsd serve --trust-database`.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from pvsd.farm.errors import FarmNotInitialised, StoreError, StoreUnavailable
from pvsd.farm.offline_queue import OfflineQueue, OfflineRecord, RecordKind, new_event_key
from pvsd.farm.snapshot import FarmSnapshot, SnapshotError, read_snapshot, write_snapshot
from pvsd.farm.store import OFFLINE_SESSION_BASE, FarmStore

__all__ = ["DatabaseState", "OfflineFarm"]

SUSPECT_REMINDER_S = 60.0


class DatabaseState(enum.StrEnum):
    UP = "up"
    UNREACHABLE = "unreachable"
    SUSPECT = "suspect"  # reachable, but not the farm this server knows: not used


class OfflineFarm:
    def __init__(
        self,
        store: FarmStore,
        folder: Path,
        log: structlog.stdlib.BoundLogger,
        *,
        server: str,
        interval: float,
        active_within: float,
        trust_database: bool = False,
    ) -> None:
        self.store = store
        self.server = server
        self.folder = folder
        self.log = log
        self.interval = interval
        self.active_within = active_within
        self.queue = OfflineQueue(folder)
        self.snapshot: FarmSnapshot | None = None
        self.state = DatabaseState.UP
        self.state_since = time.time()
        self.reason = ""
        self.watchers: list[Callable[[FarmSnapshot], None]] = []
        """Called with each snapshot read from a trusted database."""
        self._trust_next = trust_database
        self._from_disk = False
        self._suspect_logged = -SUSPECT_REMINDER_S
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    # -- start and refresh --------------------------------------------------------------------------

    def load(self) -> FarmSnapshot | None:
        """The snapshot on disk, read at a start with the database up: a database of the same
        farm that is older than it (restored from a backup) is then noticed. Another farm's
        snapshot is simply replaced: the database this server was started on is its farm."""
        try:
            self.snapshot = read_snapshot(self.folder)
        except SnapshotError as error:
            self.log.debug("no farm snapshot on disk yet", reason=str(error))
            return None
        self._from_disk = True
        return self.snapshot

    async def start(self) -> None:
        await self.refresh()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="farm-snapshot")

    async def changed(self) -> None:
        """Something changed in the farm (pvsd/farm/changes.py): refresh now rather than at the next tick."""
        self._wake.set()

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)
            self._wake.clear()
            try:
                await self.refresh()
            except Exception:
                # The refresh must never die: the snapshot is what the farm boots on in an outage.
                self.log.exception("farm snapshot refresh failed; trying again")

    async def refresh(self) -> None:
        try:
            fresh = await asyncio.to_thread(self.store.snapshot, self.active_within)
        except FarmNotInitialised as error:
            self._suspect(f"it has no farm: empty, or made anew ({error})")
            return
        except StoreError as error:
            self._unreachable(str(error))
            return
        problem = None if self._trust_next else self._distrust(fresh)
        if problem is not None:
            self._suspect(problem)
            return
        if self._trust_next and self.snapshot is not None and self._distrust(fresh) is not None:
            self.log.warning(
                "trusting the farm database as found (--trust-database)", database=self.store.url
            )
        self._trust_next = self._from_disk = False
        if await self._write_queued():
            fresh = await asyncio.to_thread(self.store.snapshot, self.active_within)
        self._up()
        if not fresh.same_content(self.snapshot):
            try:
                await asyncio.to_thread(write_snapshot, self.folder, fresh)
            except OSError as error:
                self.log.error(
                    "cannot write the farm snapshot; an outage would find an older one",
                    folder=str(self.folder),
                    error=error.strerror or str(error),
                )
        self.snapshot = fresh
        for watcher in self.watchers:
            watcher(fresh)

    def _distrust(self, fresh: FarmSnapshot) -> str | None:
        known = self.snapshot
        if known is None:
            return None
        if (fresh.farm.secret, fresh.farm.created_at) != (known.farm.secret, known.farm.created_at):
            if self._from_disk:
                dropped = self.queue.discard()
                self.log.info(
                    "the farm snapshot on disk was of another farm; replacing it",
                    old=known.farm.name,
                    new=fresh.farm.name,
                    queued_records_dropped=dropped,
                )
                return None
            return (
                f"it holds another farm ({fresh.farm.name!r}, made at {fresh.farm.created_at:.0f}) "
                f"than the one this server served ({known.farm.name!r}, made at {known.farm.created_at:.0f})"
            )
        if fresh.audit_high < known.audit_high:
            return (
                f"its audit log ends at entry {fresh.audit_high}, before entry {known.audit_high} that this "
                "server saw: restored from an older backup?"
            )
        return None

    async def _write_queued(self) -> bool:
        if not len(self.queue):
            return False
        try:
            queued, new = await asyncio.to_thread(self.queue.drain, self.store.write_offline)
        except StoreUnavailable as error:
            self._unreachable(str(error))
            return False
        self.log.info(
            "wrote the records queued while the farm database was down",
            records=new,
            already_written=queued - new,
            database=self.store.url,
        )
        return True

    # -- the state, as logged and shown -------------------------------------------------------------

    def _up(self) -> None:
        if self.state is not DatabaseState.UP:
            self.log.info(
                "farm database in use again; logins are decided by it",
                database=self.store.url,
                was=str(self.state),
                for_s=round(time.time() - self.state_since, 1),
            )
            self._set(DatabaseState.UP, "")

    def _unreachable(self, reason: str) -> None:
        if self.state is DatabaseState.UNREACHABLE:
            self.reason = reason
            return
        self._set(DatabaseState.UNREACHABLE, reason)
        if self.snapshot is None:
            self.log.error(
                "farm database unreachable and no snapshot: fresh logins are refused until it returns",
                database=self.store.url,
                error=reason,
            )
        else:
            self.log.warning(
                "farm database unreachable: known devices log in from the farm snapshot; "
                "unknown ones are refused, and session records are queued on this disk",
                database=self.store.url,
                error=reason,
                snapshot_age_s=round(max(0.0, time.time() - self.snapshot.taken_at), 1),
                devices=len(self.snapshot.devices),
            )

    def _suspect(self, problem: str) -> None:
        now = time.monotonic()
        if self.state is not DatabaseState.SUSPECT or problem != self.reason:
            self._set(DatabaseState.SUSPECT, problem)
        elif now - self._suspect_logged < SUSPECT_REMINDER_S:
            return
        self._suspect_logged = now
        self.log.error(
            "farm database not trusted: serving from the farm snapshot and keeping the queued records",
            database=self.store.url,
            problem=problem,
            queued=len(self.queue),
            hint="restore the right database, or restart this server with --trust-database "
            "to take it as it is",
        )

    def _set(self, state: DatabaseState, reason: str) -> None:
        self.state, self.reason, self.state_since = state, reason, time.time()

    def usable(self) -> bool:
        """Whether logins may be decided by the database (else: by the snapshot)."""
        return self.state is DatabaseState.UP

    def status(self) -> dict[str, Any]:
        return {
            "database": str(self.state),
            "since": self.state_since,
            "reason": self.reason,
            "queued": len(self.queue),
            "snapshot_taken_at": self.snapshot.taken_at if self.snapshot else None,
        }

    # -- logins during an outage --------------------------------------------------------------------

    def record(
        self,
        kind: RecordKind,
        mac: str,
        server: str,
        session: int,
        io_port: int = 0,
        vdisk: str | None = None,
        version: int | None = None,
    ) -> None:
        """Queue a session record for the database, stamped now, with its own event key."""
        self.queue.append(
            OfflineRecord(
                event=new_event_key(self.server),
                kind=kind,
                at=time.time(),
                actor=self.store.actor,
                mac=mac,
                server=server,
                session=session,
                io_port=io_port,
                vdisk=vdisk,
                version=version,
            )
        )

    @staticmethod
    def new_session_id() -> int:
        return OFFLINE_SESSION_BASE + secrets.randbelow(OFFLINE_SESSION_BASE - 1)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
