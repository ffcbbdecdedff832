"""The farm store: the one interface every pvsd uses to share the farm, over SQLite or PostgreSQL.

Methods are synchronous and thread-safe (one connection, one lock); the asyncio side
calls them through `asyncio.to_thread`. Every change writes an audit entry in the same
transaction; heartbeats and session keepalives are not changes and are not audited.
A lost connection raises StoreUnavailable and is reopened by a later call, with backoff
(pvsd/farm/reconnect.py): between attempts calls fail at once instead of each waiting out a
connect timeout.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import json
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from pvsd.errors import BadInput
from pvsd.farm.backend import Backend, Connection, Cursor
from pvsd.farm.errors import (
    AlreadyExists,
    Conflict,
    FarmNotInitialised,
    NotFound,
    SchemaMismatch,
    StoreError,
    StoreUnavailable,
    first_line,
)
from pvsd.farm.offline_queue import OfflineRecord, RecordKind
from pvsd.farm.reconnect import Reconnect
from pvsd.farm.records import (
    AccessMode,
    AuditEntry,
    Device,
    DeviceType,
    Farm,
    FarmView,
    FreshLogin,
    HeartbeatResult,
    Load,
    Replica,
    ReplicaState,
    Server,
    ServerHealth,
    ServerState,
    Session,
    Site,
    VDisk,
    VDiskShape,
    VDiskVersion,
    VersionBoot,
    VersionState,
    WriteCache,
)
from pvsd.farm.schema import LATEST_VERSION, MIGRATIONS
from pvsd.farm.snapshot import FarmSnapshot
from pvsd.farm.versions import (
    boot_version,
    check_promote,
    merge_source,
    pending_versions,
    revert_target,
    writes_version,
)
from pvsd.names import check_name
from pvsd.net.mac import parse_mac

__all__ = ["OFFLINE_SESSION_BASE", "UNSET", "FarmStore", "Unset", "backend_for", "init_farm", "open_store"]

T = TypeVar("T")

SECTOR_SIZES = (512, 4096)
# Sessions opened from the offline snapshot take ids from here up (random, 62 bits): no server
# can ask the farm for the next id then, and the farm's own ids never come near them.
OFFLINE_SESSION_BASE = 1 << 62


class Unset(enum.Enum):
    """Marks a field that an update leaves alone (None would mean "clear it")."""

    UNSET = "unset"


UNSET = Unset.UNSET

_DEVICE_SELECT = """
    SELECT d.mac, d.name, si.name, v.name, d.enabled, d.type, d.created_at
    FROM devices d LEFT JOIN sites si ON si.id = d.site_id LEFT JOIN vdisks v ON v.id = d.vdisk_id"""

_SERVER_SELECT = """
    SELECT sv.name, sv.address, sv.ports, sv.power, si.name, sv.state, sv.instance,
           sv.started_at, sv.last_heartbeat, {now} - sv.last_heartbeat
    FROM servers sv LEFT JOIN sites si ON si.id = sv.site_id"""

_SESSION_SELECT = """
    SELECT se.id, d.mac, d.name, sv.name, se.io_port, se.since, se.last_seen, v.name, {now} - se.last_seen,
           se.version
    FROM sessions se JOIN devices d ON d.id = se.device_id JOIN servers sv ON sv.id = se.server_id
    LEFT JOIN vdisks v ON v.id = d.vdisk_id"""


def backend_for(url: str) -> Backend:
    """The backend for a database URL (the config has already checked its form)."""
    if url.startswith("sqlite:///"):
        from pvsd.farm.sqlite import SqliteBackend

        return SqliteBackend(url)
    if url.startswith(("postgresql://", "postgres://")):
        from pvsd.farm.postgres import PostgresBackend

        return PostgresBackend(url)
    raise BadInput(f"unsupported farm database URL {url!r}: use sqlite:///PATH or postgresql://...")


def open_store(url: str, actor: str) -> FarmStore:
    """Open an initialised farm, upgrading its schema in place if an older pvsd wrote it."""
    store = FarmStore(backend_for(url), actor)
    try:
        store.check_schema(upgrade=True)
    except BaseException:
        store.close()
        raise
    return store


def init_farm(url: str, name: str, actor: str) -> tuple[FarmStore, Farm, bool]:
    """Create the farm (schema and secret) if absent; return the store, the farm and whether it was new."""
    check_name("farm", name)
    store = FarmStore(backend_for(url), actor, create=True)
    try:
        store.migrate()
        farm, created = store.create_farm(name)
    except BaseException:
        store.close()
        raise
    return store, farm, created


class FarmStore:
    def __init__(
        self,
        backend: Backend,
        actor: str,
        create: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.backend = backend
        self.actor = actor
        self._create = create
        self._connection: Connection | None = None
        self._lock = threading.Lock()
        self._clock = clock
        self._reconnect = Reconnect()
        self._unavailable = ""

    @property
    def url(self) -> str:
        return self.backend.display_url

    def close(self) -> None:
        with self._lock:
            self._drop_connection()

    # -- plumbing -----------------------------------------------------------------------------------

    def _drop_connection(self) -> None:
        if self._connection is not None:
            # The connection is usually broken already: closing it is best effort.
            with contextlib.suppress(Exception):
                self._connection.close()
            self._connection = None

    def _connect(self) -> Connection:
        now = self._clock()
        if not self._reconnect.may_try(now):
            raise StoreUnavailable(f"{self._unavailable} (next try in {self._reconnect.wait_s(now):.1f} s)")
        try:
            connection = self.backend.connect(create=self._create)
        except StoreUnavailable as error:
            self._reconnect.failed(now)
            self._unavailable = str(error)
            raise
        self._reconnect.succeeded()
        return connection

    def _run(self, write: bool, work: Callable[[Cursor], T]) -> T:
        with self._lock:
            if self._connection is None:
                self._connection = self._connect()
            try:
                with self.backend.transaction(self._connection, write) as cursor:
                    return work(cursor)
            except StoreError:
                raise
            except Exception as error:
                if self.backend.is_integrity_error(error):
                    raise Conflict(f"the farm refused the change: {first_line(error)}") from error
                if self.backend.is_unavailable_error(error):
                    self._drop_connection()
                    self._unavailable = f"farm database {self.url} unavailable: {first_line(error)}"
                    self._reconnect.failed(self._clock())
                    raise StoreUnavailable(self._unavailable) from error
                raise

    def _exec(self, cursor: Cursor, sql: str, params: Sequence[Any] = ()) -> Cursor:
        cursor.execute(self.backend.sql(sql), tuple(params))
        return cursor

    def _one(self, cursor: Cursor, sql: str, params: Sequence[Any] = ()) -> Any:
        return self._exec(cursor, sql, params).fetchone()

    def _all(self, cursor: Cursor, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        return self._exec(cursor, sql, params).fetchall()

    def _audit(self, cursor: Cursor, action: str, subject: str, **detail: Any) -> None:
        self._exec(
            cursor,
            "INSERT INTO audit (at, actor, action, subject, detail) VALUES ({now}, ?, ?, ?, ?)",
            (self.actor, action, subject, json.dumps(detail, sort_keys=True, default=str)),
        )
        self.backend.notify_change(cursor, action)

    def _id(self, cursor: Cursor, table: str, column: str, value: str, kind: str) -> int:
        row = self._one(cursor, f"SELECT id FROM {table} WHERE {column} = ?", (value,))
        if row is None:
            raise NotFound(f"no {kind} {value!r} in the farm")
        return int(row[0])

    def _optional_id(self, cursor: Cursor, table: str, value: str | None, kind: str) -> int | None:
        return None if value is None else self._id(cursor, table, "name", value, kind)

    # -- schema and farm ----------------------------------------------------------------------------

    def schema_version(self) -> int:
        def work(cursor: Cursor) -> int:
            if not self.backend.has_table(cursor, "schema_migrations"):
                return 0
            row = self._one(cursor, "SELECT MAX(version) FROM schema_migrations")
            return int(row[0] or 0)

        return self._run(False, work)

    def migrate(self, target: int = LATEST_VERSION) -> list[int]:
        """Apply the migrations this farm lacks, up to `target`; return the versions applied."""

        def work(cursor: Cursor) -> list[int]:
            self.backend.lock_schema(cursor)
            current = 0
            if self.backend.has_table(cursor, "schema_migrations"):
                current = int(self._one(cursor, "SELECT MAX(version) FROM schema_migrations")[0] or 0)
            if current > LATEST_VERSION:
                raise _too_new(current, self.url)
            applied = []
            for migration in MIGRATIONS:
                if current < migration.version <= target:
                    for statement in migration.statements:
                        cursor.execute(self.backend.ddl(statement))
                    self._exec(
                        cursor,
                        "INSERT INTO schema_migrations (version, description, applied_at) "
                        "VALUES (?, ?, {now})",
                        (migration.version, migration.description),
                    )
                    applied.append(migration.version)
            if applied and current > 0:
                self._audit(cursor, "farm.upgrade", "schema", old=current, new=applied[-1])
            return applied

        return self._run(True, work)

    def check_schema(self, upgrade: bool) -> int:
        """Make sure this farm is one we can use; upgrade an older schema when asked. Returns its version."""
        version = self.schema_version()
        if version == 0:
            raise FarmNotInitialised(f"no farm in {self.url}: run `pvsd farm init` first")
        if version > LATEST_VERSION:
            raise _too_new(version, self.url)
        if version < LATEST_VERSION and upgrade:
            self.migrate()
            version = LATEST_VERSION
        self.get_farm()
        return version

    def create_farm(self, name: str) -> tuple[Farm, bool]:
        def work(cursor: Cursor) -> bool:
            # Three servers of a fresh compose farm run `farm init` at once: one makes the farm,
            # the others wait here and find it made, instead of failing on its primary key.
            self.backend.lock_schema(cursor)
            if self._one(cursor, "SELECT 1 FROM farm") is not None:
                return False
            self._exec(
                cursor,
                "INSERT INTO farm (id, name, secret, created_at) VALUES (1, ?, ?, {now})",
                (name, secrets.token_hex(32)),
            )
            self._audit(cursor, "farm.init", name)
            return True

        created = self._run(True, work)
        return self.get_farm(), created

    def get_farm(self) -> Farm:
        def work(cursor: Cursor) -> Farm:
            row = self._one(cursor, "SELECT name, secret, created_at FROM farm")
            if row is None:
                raise FarmNotInitialised(f"no farm in {self.url}: run `pvsd farm init` first")
            version = int(self._one(cursor, "SELECT MAX(version) FROM schema_migrations")[0])
            return Farm(name=row[0], secret=row[1], created_at=row[2], schema_version=version)

        return self._run(False, work)

    def now(self) -> float:
        """The database's clock, in epoch seconds."""
        return float(self._run(False, lambda cursor: self._one(cursor, "SELECT {now}")[0]))

    # -- sites --------------------------------------------------------------------------------------

    def add_site(self, name: str, description: str = "") -> Site:
        check_name("site", name)

        def work(cursor: Cursor) -> None:
            if self._one(cursor, "SELECT 1 FROM sites WHERE name = ?", (name,)):
                raise AlreadyExists(f"site {name!r} exists already")
            self._exec(
                cursor,
                "INSERT INTO sites (name, description, created_at) VALUES (?, ?, {now})",
                (name, description),
            )
            self._audit(cursor, "site.add", name, description=description)

        self._run(True, work)
        return next(site for site in self.list_sites() if site.name == name)

    def list_sites(self) -> list[Site]:
        rows = self._run(
            False,
            lambda cursor: self._all(cursor, "SELECT name, description, created_at FROM sites ORDER BY name"),
        )
        return [Site(*row) for row in rows]

    def remove_site(self, name: str) -> None:
        def work(cursor: Cursor) -> None:
            site_id = self._id(cursor, "sites", "name", name, "site")
            used = self._one(cursor, "SELECT COUNT(*) FROM devices WHERE site_id = ?", (site_id,))[0]
            if used:
                raise Conflict(f"site {name!r} still has {used} device(s); move or remove them first")
            self._exec(cursor, "DELETE FROM sites WHERE id = ?", (site_id,))
            self._audit(cursor, "site.remove", name)

        self._run(True, work)

    # -- servers and membership ---------------------------------------------------------------------

    def register_server(
        self,
        name: str,
        address: str,
        ports: Mapping[str, int],
        power: float,
        instance: str,
        dead_after: float,
        site: str | None = None,
        replace: bool = False,
    ) -> Server:
        """Record this server as running, with a fresh heartbeat, under a new `instance` token.

        Refuses (Conflict) when a server of that name is alive at another address: two
        machines configured with one name would otherwise steal each other's targets. With
        `replace` (asked for, or its heartbeat seen stuck) the record is taken over anyway.
        """
        check_name("server", name)

        def work(cursor: Cursor) -> dict[str, Any]:
            site_id = self._optional_id(cursor, "sites", site, "site")
            row = self._one(
                cursor,
                "SELECT id, address, state, {now} - last_heartbeat FROM servers WHERE name = ?",
                (name,),
            )
            detail: dict[str, Any] = {"address": address, "ports": dict(ports), "power": power}
            if row is None:
                self._exec(
                    cursor,
                    """INSERT INTO servers (name, address, ports, power, site_id, state, instance,
                                            started_at, last_heartbeat)
                       VALUES (?, ?, ?, ?, ?, ?, ?, {now}, {now})""",
                    (name, address, json.dumps(dict(ports)), power, site_id, ServerState.RUNNING, instance),
                )
            else:
                old_address, state, age = row[1], row[2], row[3]
                alive = state == ServerState.RUNNING and age is not None and age <= dead_after
                if alive and old_address != address and not replace:
                    raise Conflict(
                        f"server {name!r} is already running at {old_address} (heartbeat {age:.1f} s ago); "
                        f"refusing to start a second {name!r} at {address}. Give this server another "
                        f"[server] name, or stop the other one."
                    )
                if old_address != address:
                    detail["previous_address"] = old_address
                if alive:
                    detail["replaced_live_instance"] = True
                self._exec(
                    cursor,
                    """UPDATE servers SET address = ?, ports = ?, power = ?, site_id = ?, state = ?,
                              instance = ?, started_at = {now}, last_heartbeat = {now}
                       WHERE id = ?""",
                    (address, json.dumps(dict(ports)), power, site_id, ServerState.RUNNING, instance, row[0]),
                )
            self._audit(cursor, "server.register", name, **detail)
            return detail

        self._run(True, work)
        return self.get_server(name)

    def heartbeat(self, name: str, instance: str) -> HeartbeatResult:
        def work(cursor: Cursor) -> HeartbeatResult:
            updated = self._exec(
                cursor,
                "UPDATE servers SET last_heartbeat = {now}, state = ? WHERE name = ? AND instance = ?",
                (ServerState.RUNNING, name, instance),
            ).rowcount
            if updated:
                return HeartbeatResult.OK
            exists = self._one(cursor, "SELECT 1 FROM servers WHERE name = ?", (name,))
            return HeartbeatResult.TAKEN if exists else HeartbeatResult.MISSING

        return self._run(True, work)

    def stop_server(self, name: str, instance: str) -> bool:
        """Mark a cleanly stopped server; False if another instance owns the record now."""

        def work(cursor: Cursor) -> bool:
            updated = self._exec(
                cursor,
                "UPDATE servers SET state = ? WHERE name = ? AND instance = ?",
                (ServerState.STOPPED, name, instance),
            ).rowcount
            if updated:
                self._exec(
                    cursor,
                    "DELETE FROM sessions WHERE server_id = (SELECT id FROM servers WHERE name = ?)",
                    (name,),
                )
                self._audit(cursor, "server.stop", name)
            return bool(updated)

        return self._run(True, work)

    def get_server(self, name: str) -> Server:
        row = self._run(
            False, lambda cursor: self._one(cursor, _SERVER_SELECT + " WHERE sv.name = ?", (name,))
        )
        if row is None:
            raise NotFound(f"no server {name!r} in the farm")
        return _server(row)

    def list_servers(self) -> list[Server]:
        return self._run(False, self._servers_in)

    def _servers_in(self, cursor: Cursor) -> list[Server]:
        return [_server(row) for row in self._all(cursor, _SERVER_SELECT + " ORDER BY sv.name")]

    def remove_server(
        self, name: str, dead_after: float, stuck: tuple[float | None, str] | None = None
    ) -> None:
        """Forget a server that is stopped or dead (its replicas and sessions go with it).

        `stuck` is a (heartbeat stamp, instance) the caller watched not change for longer than a
        heartbeat: such a server is dead whatever its stamp says (a clock ahead writes stamps
        in the future), so it may go if it is still the same."""

        def work(cursor: Cursor) -> None:
            row = self._one(cursor, _SERVER_SELECT + " WHERE sv.name = ?", (name,))
            if row is None:
                raise NotFound(f"no server {name!r} in the farm")
            server = _server(row)
            seen_stuck = stuck is not None and stuck == (server.last_heartbeat, server.instance)
            if server.health(dead_after) is ServerHealth.ALIVE and not seen_stuck:
                raise Conflict(f"server {name!r} is alive; stop it before removing it")
            self._exec(cursor, "DELETE FROM servers WHERE name = ?", (name,))
            self._audit(cursor, "server.remove", name)

        self._run(True, work)

    # -- vDisks and versions ------------------------------------------------------------------------

    def create_vdisk(
        self,
        name: str,
        size: int,
        sector_size: int = 512,
        mode: AccessMode = AccessMode.STANDARD,
        cache: WriteCache = WriteCache.DEVICE,
    ) -> VDisk:
        """Record a new vDisk with its base version 0 (in production, no image hash yet)."""
        _check_vdisk(name, size, sector_size)
        mode, cache = AccessMode(mode), WriteCache(cache)
        self._run(True, lambda cursor: self._create_vdisk_in(cursor, name, size, sector_size, mode, cache))
        return self.get_vdisk(name)

    def _create_vdisk_in(
        self, cursor: Cursor, name: str, size: int, sector_size: int, mode: AccessMode, cache: WriteCache
    ) -> int:
        if self._one(cursor, "SELECT 1 FROM vdisks WHERE name = ?", (name,)):
            raise AlreadyExists(f"vDisk {name!r} exists already")
        vdisk_id = int(
            self._one(
                cursor,
                "INSERT INTO vdisks (name, size, sector_size, mode, cache, created_at) "
                "VALUES (?, ?, ?, ?, ?, {now}) RETURNING id",
                (name, size, sector_size, mode, cache),
            )[0]
        )
        self._exec(
            cursor,
            "INSERT INTO vdisk_versions (vdisk_id, number, state, sha256, created_at) "
            "VALUES (?, 0, ?, NULL, {now})",
            (vdisk_id, VersionState.PRODUCTION),
        )
        self._audit(cursor, "vdisk.create", name, size=size, sector_size=sector_size, mode=mode, cache=cache)
        return vdisk_id

    def import_version(
        self,
        name: str,
        new: VDiskShape,
        sha256: str,
        server: str | None,
        place: Callable[[int], None],
        boot: VersionBoot | None = None,
    ) -> VDiskVersion:
        """An imported image, recorded in one transaction: the vDisk (made from `new` if it does not
        exist yet, else checked to have its size), its next version in production with `sha256`,
        and a verified replica on `server` when given. `place(number)` puts the image under its
        version's name before the transaction commits; if it fails, nothing is recorded."""
        _check_vdisk(name, new.size, new.sector_size)

        def work(cursor: Cursor) -> int:
            row = self._one(cursor, "SELECT id, size FROM vdisks WHERE name = ?", (name,))
            if row is None:
                vdisk_id = self._create_vdisk_in(
                    cursor, name, new.size, new.sector_size, AccessMode(new.mode), WriteCache(new.cache)
                )
            elif int(row[1]) != new.size:
                raise BadInput(
                    f"the image is {new.size} bytes but vDisk {name!r} is {row[1]}: "
                    "a new version must keep the disk's size"
                )
            else:
                vdisk_id = int(row[0])
            number = self._add_version_in(cursor, vdisk_id, name, VersionState.PRODUCTION, sha256)
            if boot is not None:
                self._set_boot_in(cursor, vdisk_id, name, number, boot)
            if server is not None:
                self._report_replica_in(cursor, server, vdisk_id, name, number, sha256, ReplicaState.VERIFIED)
            place(number)
            return number

        number = self._run(True, work)
        return next(v for v in self.get_vdisk(name).versions if v.number == number)

    def _set_boot_in(self, cursor: Cursor, vdisk_id: int, name: str, number: int, boot: VersionBoot) -> None:
        self._exec(cursor, "DELETE FROM version_boot WHERE vdisk_id = ? AND number = ?", (vdisk_id, number))
        self._exec(
            cursor,
            "INSERT INTO version_boot (vdisk_id, number, kernel, kernel_version, kernel_sha256, initrd, "
            "initrd_sha256, cmdline, root_offset, kernel_size, initrd_size) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                vdisk_id,
                number,
                boot.kernel,
                boot.kernel_version,
                boot.kernel_sha256,
                boot.initrd,
                boot.initrd_sha256,
                boot.cmdline,
                boot.root_offset,
                boot.kernel_size,
                boot.initrd_size,
            ),
        )
        self._audit(
            cursor,
            "vdisk.version.boot",
            f"{name}.{number}",
            kernel=boot.kernel,
            kernel_version=boot.kernel_version,
            initrd=boot.initrd,
            cmdline=boot.cmdline,
        )

    def set_version_boot(self, vdisk: str, number: int, boot: VersionBoot | None) -> VDiskVersion:
        """Record how a version boots diskless, or with None forget it (it then boots through the
        host agent only). The files themselves are the caller's, in boot_folder()."""

        def work(cursor: Cursor) -> None:
            vdisk_id = self._id(cursor, "vdisks", "name", vdisk, "vDisk")
            if not self._one(
                cursor, "SELECT 1 FROM vdisk_versions WHERE vdisk_id = ? AND number = ?", (vdisk_id, number)
            ):
                raise NotFound(f"vDisk {vdisk!r} has no version {number}")
            if boot is not None:
                self._set_boot_in(cursor, vdisk_id, vdisk, number, boot)
                return
            self._exec(
                cursor, "DELETE FROM version_boot WHERE vdisk_id = ? AND number = ?", (vdisk_id, number)
            )
            self._audit(cursor, "vdisk.version.boot.clear", f"{vdisk}.{number}")

        self._run(True, work)
        return next(v for v in self.get_vdisk(vdisk).versions if v.number == number)

    def get_vdisk(self, name: str) -> VDisk:
        found = [vdisk for vdisk in self._vdisks(name) if vdisk.name == name]
        if not found:
            raise NotFound(f"no vDisk {name!r} in the farm")
        return found[0]

    def list_vdisks(self) -> list[VDisk]:
        return self._vdisks(None)

    def _vdisks(self, only: str | None) -> list[VDisk]:
        return self._run(False, lambda cursor: self._vdisks_in(cursor, only))

    def _vdisks_in(self, cursor: Cursor, only: str | None) -> list[VDisk]:
        where, params = ("WHERE v.name = ?", (only,)) if only else ("", ())
        disks = self._all(
            cursor,
            f"""SELECT v.name, v.size, v.sector_size, v.mode, v.created_at, v.cache, v.placement
                FROM vdisks v {where} ORDER BY v.name""",
            params,
        )
        versions = self._all(
            cursor,
            # A scheduled promotion (`vdisk promote --at`) is in force from its time on, read so.
            f"""SELECT v.name, vv.number,
                       CASE WHEN vv.promote_at IS NOT NULL AND vv.promote_at <= {{now}}
                            THEN vv.promote_to ELSE vv.state END,
                       vv.sha256, vv.created_at, vv.parent, vv.home,
                       CASE WHEN vv.promote_at IS NOT NULL AND vv.promote_at <= {{now}}
                            THEN NULL ELSE vv.promote_to END,
                       CASE WHEN vv.promote_at IS NOT NULL AND vv.promote_at <= {{now}}
                            THEN NULL ELSE vv.promote_at END
                FROM vdisk_versions vv JOIN vdisks v ON v.id = vv.vdisk_id {where}
                ORDER BY v.name, vv.number""",
            params,
        )
        boots = {
            (row[0], row[1]): VersionBoot(
                kernel=row[2],
                kernel_version=row[3],
                kernel_sha256=row[4],
                initrd=row[5],
                initrd_sha256=row[6],
                cmdline=row[7],
                root_offset=None if row[8] is None else int(row[8]),
                kernel_size=int(row[9]),
                initrd_size=None if row[10] is None else int(row[10]),
            )
            for row in self._all(
                cursor,
                f"""SELECT v.name, b.number, b.kernel, b.kernel_version, b.kernel_sha256, b.initrd,
                        b.initrd_sha256, b.cmdline, b.root_offset, b.kernel_size, b.initrd_size
                    FROM version_boot b JOIN vdisks v ON v.id = b.vdisk_id {where}""",
                params,
            )
        }
        by_disk: dict[str, list[VDiskVersion]] = {}
        for row in versions:
            by_disk.setdefault(row[0], []).append(
                VDiskVersion(
                    vdisk=row[0],
                    number=row[1],
                    state=VersionState(row[2]),
                    sha256=row[3],
                    created_at=row[4],
                    boot=boots.get((row[0], row[1])),
                    parent=None if row[5] is None else int(row[5]),
                    home=row[6],
                    promote_to=None if row[7] is None else VersionState(row[7]),
                    promote_at=row[8],
                )
            )
        vdisks = [
            VDisk(
                name=row[0],
                size=int(row[1]),
                sector_size=row[2],
                mode=AccessMode(row[3]),
                created_at=row[4],
                versions=tuple(by_disk.get(row[0], ())),
                cache=WriteCache(row[5]),
                placement=tuple(name for name in str(row[6]).split(",") if name),
            )
            for row in disks
        ]
        if not vdisks:
            return vdisks
        servers = self._servers_in(cursor)
        replicas = self._replicas_in(cursor, only)
        return [_with_pending(vdisk, pending_versions(vdisk, servers, replicas)) for vdisk in vdisks]

    def remove_vdisk(self, name: str, active_within: float = 0.0, force: bool = False) -> int:
        """Remove a vDisk no device is assigned. One that targets stream (sessions seen within
        `active_within`) is refused, unless `force`: then their sessions end with it, and their
        servers drop them at their next stamp. Returns how many sessions were ended."""

        def work(cursor: Cursor) -> int:
            vdisk_id = self._id(cursor, "vdisks", "name", name, "vDisk")
            users = [
                row[0]
                for row in self._all(cursor, "SELECT name FROM devices WHERE vdisk_id = ?", (vdisk_id,))
            ]
            if users:
                raise Conflict(f"vDisk {name!r} is assigned to {', '.join(sorted(users))}; unassign it first")
            streaming = self._all(
                cursor,
                """SELECT d.name FROM sessions se JOIN devices d ON d.id = se.device_id
                   WHERE se.vdisk = ? AND {now} - se.last_seen <= ?""",
                (name, active_within),
            )
            if streaming and not force:
                devices = ", ".join(sorted(str(row[0]) for row in streaming))
                raise Conflict(
                    f"vDisk {name!r} is streamed by {devices} now; stop those targets first, or remove "
                    "it with --force, which ends their sessions (each target stops with VDISK_REMOVED)"
                )
            self._exec(cursor, "DELETE FROM sessions WHERE vdisk = ?", (name,))
            self._exec(cursor, "DELETE FROM vdisks WHERE id = ?", (vdisk_id,))
            self._audit(cursor, "vdisk.remove", name, ended_sessions=len(streaming))
            return len(streaming)

        return self._run(True, work)

    def add_version(
        self, vdisk: str, state: VersionState = VersionState.MAINTENANCE, sha256: str | None = None
    ) -> VDiskVersion:
        """Add the next version of a vDisk (number = highest + 1)."""
        state = VersionState(state)

        def work(cursor: Cursor) -> int:
            vdisk_id = self._id(cursor, "vdisks", "name", vdisk, "vDisk")
            return self._add_version_in(cursor, vdisk_id, vdisk, state, sha256)

        number = self._run(True, work)
        return next(v for v in self.get_vdisk(vdisk).versions if v.number == number)

    def _add_version_in(
        self, cursor: Cursor, vdisk_id: int, vdisk: str, state: VersionState, sha256: str | None
    ) -> int:
        number = self._insert_version_in(cursor, vdisk_id, vdisk, state, sha256, None, None)
        self._audit(cursor, "vdisk.version.add", f"{vdisk}.{number}", state=state, sha256=sha256)
        return number

    def set_version(
        self,
        vdisk: str,
        number: int,
        state: VersionState | Unset = UNSET,
        sha256: str | Unset | None = UNSET,
    ) -> VDiskVersion:
        changes: dict[str, Any] = {}
        if state is not UNSET:
            changes["state"] = VersionState(state)
        if sha256 is not UNSET:
            changes["sha256"] = sha256

        def work(cursor: Cursor) -> None:
            vdisk_id = self._id(cursor, "vdisks", "name", vdisk, "vDisk")
            if not self._one(
                cursor, "SELECT 1 FROM vdisk_versions WHERE vdisk_id = ? AND number = ?", (vdisk_id, number)
            ):
                raise NotFound(f"vDisk {vdisk!r} has no version {number}")
            for column, value in changes.items():
                self._exec(
                    cursor,
                    f"UPDATE vdisk_versions SET {column} = ? WHERE vdisk_id = ? AND number = ?",
                    (value, vdisk_id, number),
                )
            if changes:
                self._audit(cursor, "vdisk.version.set", f"{vdisk}.{number}", **changes)

        self._run(True, work)
        return next(v for v in self.get_vdisk(vdisk).versions if v.number == number)

    # -- the version lifecycle (pvsd/farm/versions.py has the rules) ------------------------------

    def _vdisk_in(self, cursor: Cursor, name: str) -> tuple[int, VDisk]:
        vdisk_id = self._id(cursor, "vdisks", "name", name, "vDisk")
        return vdisk_id, self._vdisks_in(cursor, name)[0]

    def _active_users_in(self, cursor: Cursor, vdisk: str, number: int, active_within: float) -> list[str]:
        """The devices whose active session streams this version (its ticket names it)."""
        rows = self._all(
            cursor,
            """SELECT d.name FROM sessions se JOIN devices d ON d.id = se.device_id
               WHERE se.vdisk = ? AND se.version = ? AND {now} - se.last_seen <= ? ORDER BY d.name""",
            (vdisk, number, active_within),
        )
        return [str(row[0]) for row in rows]

    def _writer_in(self, cursor: Cursor, vdisk: str, number: int, active_within: float) -> Session | None:
        """The maintenance device writing this version, while its session is active."""
        row = self._one(
            cursor,
            _SESSION_SELECT
            + """ JOIN version_writers w ON w.session_id = se.id AND w.device_id = se.device_id
                  JOIN vdisks vd ON vd.id = w.vdisk_id
                  WHERE vd.name = ? AND w.number = ? AND {now} - se.last_seen <= ?""",
            (vdisk, number, active_within),
        )
        return None if row is None else Session(*row)

    def _take_writer_in(self, cursor: Cursor, vdisk: str, number: int, mac: str, session: int) -> None:
        vdisk_id = self._id(cursor, "vdisks", "name", vdisk, "vDisk")
        device_id = self._id(cursor, "devices", "mac", mac, "device")
        self._exec(
            cursor, "DELETE FROM version_writers WHERE vdisk_id = ? AND number = ?", (vdisk_id, number)
        )
        self._exec(
            cursor,
            "INSERT INTO version_writers (vdisk_id, number, device_id, session_id, since) "
            "VALUES (?, ?, ?, ?, {now})",
            (vdisk_id, number, device_id, session),
        )
        self._audit(cursor, "vdisk.version.lock", f"{vdisk}.{number}", device=mac, session=session)

    def writer(self, vdisk: str, number: int, active_within: float) -> Session | None:
        return self._run(False, lambda cursor: self._writer_in(cursor, vdisk, number, active_within))

    def _copy_boot_in(self, cursor: Cursor, vdisk_id: int, source: int, number: int) -> None:
        self._exec(
            cursor,
            """INSERT INTO version_boot (vdisk_id, number, kernel, kernel_version, kernel_sha256, initrd,
                   initrd_sha256, cmdline, root_offset, kernel_size, initrd_size)
               SELECT vdisk_id, ?, kernel, kernel_version, kernel_sha256, initrd, initrd_sha256, cmdline,
                   root_offset, kernel_size, initrd_size
               FROM version_boot WHERE vdisk_id = ? AND number = ?""",
            (number, vdisk_id, source),
        )

    def _insert_version_in(
        self,
        cursor: Cursor,
        vdisk_id: int,
        vdisk: str,
        state: VersionState,
        sha256: str | None,
        parent: int | None,
        home: str | None,
    ) -> int:
        highest = self._one(
            cursor,
            "SELECT MAX(vv.number), MAX(v.last_version) FROM vdisk_versions vv "
            "JOIN vdisks v ON v.id = vv.vdisk_id WHERE vv.vdisk_id = ?",
            (vdisk_id,),
        )
        number = max(int(highest[0] or 0), int(highest[1] or 0)) + 1
        self._exec(cursor, "UPDATE vdisks SET last_version = ? WHERE id = ?", (number, vdisk_id))
        self._exec(
            cursor,
            "INSERT INTO vdisk_versions (vdisk_id, number, state, sha256, created_at, parent, home) "
            "VALUES (?, ?, ?, ?, {now}, ?, ?)",
            (vdisk_id, number, state, sha256, parent, home),
        )
        return number

    def new_version(self, vdisk: str, server: str, place: Callable[[int, int], None]) -> VDiskVersion:
        """A maintenance version on top of the newest: recorded with `server` as its home (its one
        holder, whose image the maintenance device writes) and the parent's boot files.
        `place(parent, number)` makes its image from the parent's before the transaction commits."""

        def work(cursor: Cursor) -> int:
            vdisk_id, record = self._vdisk_in(cursor, vdisk)
            if record.mode is AccessMode.PRIVATE:
                raise BadInput(
                    f"vDisk {vdisk!r} is private: its one device writes the image itself, so it has no "
                    "maintenance versions (versions are for standard-mode vDisks)"
                )
            busy = [v for v in record.versions if v.state is VersionState.MAINTENANCE and v.imaged]
            if busy:
                raise Conflict(
                    f"{vdisk} version {busy[0].number} is in maintenance already: promote it "
                    f"(pvsd vdisk promote {vdisk} {busy[0].number} test) or delete it first"
                )
            sealed = [v for v in record.versions if v.sha256]
            if not sealed:
                raise BadInput(f"vDisk {vdisk!r} has no image to build on: import one first")
            parent = max(sealed, key=lambda v: v.number)
            number = self._insert_version_in(
                cursor, vdisk_id, vdisk, VersionState.MAINTENANCE, None, parent.number, server
            )
            self._copy_boot_in(cursor, vdisk_id, parent.number, number)
            self._report_replica_in(cursor, server, vdisk_id, vdisk, number, None, ReplicaState.VERIFIED)
            self._audit(cursor, "vdisk.version.new", f"{vdisk}.{number}", parent=parent.number, home=server)
            place(parent.number, number)
            return number

        number = self._run(True, work)
        return next(v for v in self.get_vdisk(vdisk).versions if v.number == number)

    def seal_version(
        self,
        vdisk: str,
        number: int,
        sha256: str,
        state: VersionState,
        active_within: float,
        boot: VersionBoot | Unset | None = UNSET,
    ) -> VDiskVersion:
        """Promote a maintenance version out of maintenance: its image, hashed by its home, is now
        fixed and copied to the other servers. Refused while its maintenance device is writing."""
        state = VersionState(state)

        def work(cursor: Cursor) -> None:
            vdisk_id, record = self._vdisk_in(cursor, vdisk)
            version = record.version(number)
            if version is None or version.home is None:
                raise BadInput(f"{vdisk} version {number} is not a maintenance version with an image")
            writer = self._writer_in(cursor, vdisk, number, active_within)
            if writer is not None:
                raise Conflict(
                    f"{vdisk} version {number} is being written by {writer.device} on {writer.server}: "
                    "shut that device down first (its writes would be lost)"
                )
            self._exec(
                cursor,
                "UPDATE vdisk_versions SET state = ?, sha256 = ?, home = NULL, promote_to = NULL, "
                "promote_at = NULL WHERE vdisk_id = ? AND number = ?",
                (state, sha256, vdisk_id, number),
            )
            self._exec(
                cursor, "DELETE FROM version_writers WHERE vdisk_id = ? AND number = ?", (vdisk_id, number)
            )
            self._exec(
                cursor,
                "DELETE FROM replicas WHERE vdisk_id = ? AND number = ? AND server_id <> "
                "(SELECT id FROM servers WHERE name = ?)",
                (vdisk_id, number, version.home),
            )
            if not isinstance(boot, Unset):
                self._exec(
                    cursor, "DELETE FROM version_boot WHERE vdisk_id = ? AND number = ?", (vdisk_id, number)
                )
                if boot is not None:
                    self._set_boot_in(cursor, vdisk_id, vdisk, number, boot)
            self._report_replica_in(
                cursor, version.home, vdisk_id, vdisk, number, sha256, ReplicaState.VERIFIED
            )
            self._audit(cursor, "vdisk.promote", f"{vdisk}.{number}", state=state, sha256=sha256)

        self._run(True, work)
        return next(v for v in self.get_vdisk(vdisk).versions if v.number == number)

    def promote(self, vdisk: str, number: int, state: VersionState, at: float | None = None) -> VDiskVersion:
        """Move a sealed version up now, or at `at` (seconds since the epoch, the database's clock)."""
        state = VersionState(state)

        def work(cursor: Cursor) -> None:
            vdisk_id, record = self._vdisk_in(cursor, vdisk)
            version = check_promote(record, number, state)
            if version.home is not None:
                raise BadInput(
                    f"{vdisk} version {number} is in maintenance: promote it where its image is "
                    f"({version.home})"
                )
            if at is None:
                self._move_in(cursor, vdisk_id, vdisk, number, state, "vdisk.promote")
                return
            self._exec(
                cursor,
                "UPDATE vdisk_versions SET promote_to = ?, promote_at = ? WHERE vdisk_id = ? AND number = ?",
                (state, at, vdisk_id, number),
            )
            self._audit(cursor, "vdisk.promote.schedule", f"{vdisk}.{number}", state=state, at=at)

        self._run(True, work)
        return next(v for v in self.get_vdisk(vdisk).versions if v.number == number)

    def _move_in(
        self, cursor: Cursor, vdisk_id: int, vdisk: str, number: int, state: VersionState, action: str
    ) -> None:
        """A sealed version to `state` now; a promotion scheduled for it is dropped."""
        self._exec(
            cursor,
            "UPDATE vdisk_versions SET state = ?, promote_to = NULL, promote_at = NULL "
            "WHERE vdisk_id = ? AND number = ?",
            (state, vdisk_id, number),
        )
        self._audit(cursor, action, f"{vdisk}.{number}", state=state)

    def revert(self, vdisk: str, number: int, server: str, active_within: float) -> VDiskVersion:
        """One step back. Back to maintenance the version becomes writable again on `server`, which
        must hold it verified; the other servers' copies are dropped (they would be stale)."""

        def work(cursor: Cursor) -> None:
            vdisk_id, record = self._vdisk_in(cursor, vdisk)
            back = revert_target(record, number)
            if back is not VersionState.MAINTENANCE:
                self._move_in(cursor, vdisk_id, vdisk, number, back, "vdisk.revert")
                return
            busy = [v for v in record.versions if v.state is VersionState.MAINTENANCE and v.imaged]
            if busy:
                raise Conflict(f"{vdisk} version {busy[0].number} is in maintenance already: one at a time")
            users = self._active_users_in(cursor, vdisk, number, active_within)
            if users:
                raise Conflict(
                    f"{vdisk} version {number} is streamed by {', '.join(users)}: stop them first, "
                    "or their disk would change under them"
                )
            version = record.version(number)
            holders = {
                r.server
                for r in self._replicas_in(cursor, vdisk)
                if r.version == number
                and r.state is ReplicaState.VERIFIED
                and version
                and r.sha256 == version.sha256
            }
            if server not in holders:
                where = ", ".join(sorted(holders)) or "no server"
                raise BadInput(
                    f"{vdisk} version {number} goes back to maintenance on the server that runs the "
                    f"command, and {server} holds no verified copy (held by {where})"
                )
            self._exec(
                cursor,
                "UPDATE vdisk_versions SET state = ?, sha256 = NULL, home = ?, promote_to = NULL, "
                "promote_at = NULL WHERE vdisk_id = ? AND number = ?",
                (VersionState.MAINTENANCE, server, vdisk_id, number),
            )
            self._exec(cursor, "DELETE FROM replicas WHERE vdisk_id = ? AND number = ?", (vdisk_id, number))
            self._report_replica_in(cursor, server, vdisk_id, vdisk, number, None, ReplicaState.VERIFIED)
            self._audit(cursor, "vdisk.revert", f"{vdisk}.{number}", state=back, home=server)

        self._run(True, work)
        return next(v for v in self.get_vdisk(vdisk).versions if v.number == number)

    def merge_version(
        self,
        vdisk: str,
        base: bool,
        state: VersionState,
        server: str,
        active_within: float,
        place: Callable[[int, int], None],
    ) -> VDiskVersion:
        """A merged version: the newest sealed version's content as a new version whose parent is
        the base it is on (`base`: none, a new base). `place(source, number)` makes its image."""
        state = VersionState(state)

        def work(cursor: Cursor) -> int:
            vdisk_id, record = self._vdisk_in(cursor, vdisk)
            for version in record.versions:
                writer = self._writer_in(cursor, vdisk, version.number, active_within)
                if writer is not None:
                    raise Conflict(
                        f"{vdisk} version {version.number} is being written by {writer.device} on "
                        f"{writer.server}: merge once it is shut down and the version promoted"
                    )
            source = merge_source(record)
            root: VDiskVersion | None = source
            seen = set()
            while root is not None and root.parent is not None and root.number not in seen:
                seen.add(root.number)
                root = record.version(root.parent) or None
            parent = None if base or root is None else root.number
            number = self._insert_version_in(cursor, vdisk_id, vdisk, state, source.sha256, parent, None)
            self._copy_boot_in(cursor, vdisk_id, source.number, number)
            self._report_replica_in(
                cursor, server, vdisk_id, vdisk, number, source.sha256, ReplicaState.VERIFIED
            )
            self._audit(
                cursor, "vdisk.merge", f"{vdisk}.{number}", source=source.number, base=base, state=state
            )
            place(source.number, number)
            return number

        number = self._run(True, work)
        return next(v for v in self.get_vdisk(vdisk).versions if v.number == number)

    def delete_version(self, vdisk: str, number: int, active_within: float) -> None:
        """Forget a version no device boots and no session streams. Each server then removes its
        copy (pvsd/vdisk/replicator.py), once no session of its own uses it."""

        def work(cursor: Cursor) -> None:
            vdisk_id, record = self._vdisk_in(cursor, vdisk)
            version = record.version(number)
            if version is None:
                known = ", ".join(str(v.number) for v in record.versions) or "none"
                raise NotFound(f"vDisk {vdisk!r} has no version {number} (it has: {known})")
            devices = [
                _device(row) for row in self._all(cursor, _DEVICE_SELECT + " WHERE v.name = ?", (vdisk,))
            ]
            booting = sorted(
                d.name
                for d in devices
                if (chosen := boot_version(record, d.type)) and chosen.number == number
            )
            if booting:
                raise Conflict(
                    f"{vdisk} version {number} is what {', '.join(booting)} boot(s): promote another "
                    "version or revert this one first"
                )
            users = self._active_users_in(cursor, vdisk, number, active_within)
            if users:
                raise Conflict(f"{vdisk} version {number} is streamed by {', '.join(users)} now")
            self._exec(
                cursor,
                "UPDATE vdisk_versions SET parent = ? WHERE vdisk_id = ? AND parent = ?",
                (version.parent, vdisk_id, number),
            )
            self._exec(
                cursor, "DELETE FROM vdisk_versions WHERE vdisk_id = ? AND number = ?", (vdisk_id, number)
            )
            self._audit(cursor, "vdisk.version.delete", f"{vdisk}.{number}", sha256=version.sha256)

        self._run(True, work)

    def set_placement(self, vdisk: str, servers: Sequence[str]) -> VDisk:
        """Which servers should hold the vDisk's versions: these, or with () every server."""

        def work(cursor: Cursor) -> None:
            vdisk_id = self._id(cursor, "vdisks", "name", vdisk, "vDisk")
            for server in servers:
                self._id(cursor, "servers", "name", server, "server")
            placement = ",".join(sorted(set(servers)))
            self._exec(cursor, "UPDATE vdisks SET placement = ? WHERE id = ?", (placement, vdisk_id))
            self._audit(cursor, "vdisk.placement", vdisk, servers=placement or "every server")

        self._run(True, work)
        return self.get_vdisk(vdisk)

    # -- replicas -----------------------------------------------------------------------------------

    def report_replica(
        self, server: str, vdisk: str, version: int, sha256: str | None, state: ReplicaState
    ) -> Replica:
        """A server says which copy of a vDisk version it holds; `verified` stamps the time."""
        state = ReplicaState(state)

        def work(cursor: Cursor) -> None:
            vdisk_id = self._id(cursor, "vdisks", "name", vdisk, "vDisk")
            if not self._one(
                cursor, "SELECT 1 FROM vdisk_versions WHERE vdisk_id = ? AND number = ?", (vdisk_id, version)
            ):
                raise NotFound(f"vDisk {vdisk!r} has no version {version}")
            self._report_replica_in(cursor, server, vdisk_id, vdisk, version, sha256, state)

        self._run(True, work)
        return next(r for r in self.list_replicas(vdisk) if r.server == server and r.version == version)

    def _report_replica_in(
        self,
        cursor: Cursor,
        server: str,
        vdisk_id: int,
        vdisk: str,
        version: int,
        sha256: str | None,
        state: ReplicaState,
    ) -> None:
        server_id = self._id(cursor, "servers", "name", server, "server")
        verified_at = "{now}" if state is ReplicaState.VERIFIED else "NULL"
        self._exec(
            cursor,
            f"""INSERT INTO replicas (server_id, vdisk_id, number, sha256, state, verified_at)
                VALUES (?, ?, ?, ?, ?, {verified_at})
                ON CONFLICT (server_id, vdisk_id, number)
                DO UPDATE SET sha256 = excluded.sha256, state = excluded.state,
                              verified_at = excluded.verified_at""",
            (server_id, vdisk_id, version, sha256, state),
        )
        self._audit(cursor, "replica.report", f"{server}:{vdisk}.{version}", sha256=sha256, state=state)

    def report_copy(
        self, server: str, vdisk: str, version: int, copied_bytes: int, fetched_bytes: int, rate_bps: float
    ) -> None:
        """How far a server's copy of a version has come; not audited (it changes every second)."""

        def work(cursor: Cursor) -> None:
            server_id = self._id(cursor, "servers", "name", server, "server")
            vdisk_id = self._id(cursor, "vdisks", "name", vdisk, "vDisk")
            self._exec(
                cursor,
                """UPDATE replicas SET copied_bytes = ?, fetched_bytes = ?, rate_bps = ?
                   WHERE server_id = ? AND vdisk_id = ? AND number = ?""",
                (copied_bytes, fetched_bytes, rate_bps, server_id, vdisk_id, version),
            )

        self._run(True, work)

    def list_replicas(self, vdisk: str | None = None) -> list[Replica]:
        return self._run(False, lambda cursor: self._replicas_in(cursor, vdisk))

    def _replicas_in(self, cursor: Cursor, vdisk: str | None) -> list[Replica]:
        where, params = ("WHERE v.name = ?", (vdisk,)) if vdisk else ("", ())
        rows = self._all(
            cursor,
            f"""SELECT sv.name, v.name, r.number, r.sha256, r.state, r.verified_at,
                       r.copied_bytes, r.fetched_bytes, r.rate_bps
                FROM replicas r JOIN servers sv ON sv.id = r.server_id JOIN vdisks v ON v.id = r.vdisk_id
                {where} ORDER BY v.name, r.number, sv.name""",
            params,
        )
        return [
            Replica(
                server=r[0],
                vdisk=r[1],
                version=r[2],
                sha256=r[3],
                state=ReplicaState(r[4]),
                verified_at=r[5],
                copied_bytes=r[6],
                fetched_bytes=r[7],
                rate_bps=r[8],
            )
            for r in rows
        ]

    # -- devices ------------------------------------------------------------------------------------

    def add_device(
        self,
        mac: str,
        name: str,
        vdisk: str | None = None,
        site: str | None = None,
        type: DeviceType = DeviceType.PRODUCTION,
        enabled: bool = True,
    ) -> Device:
        mac = parse_mac(mac)
        check_name("device", name)
        type = DeviceType(type)
        self._run(True, lambda cursor: self._add_device_in(cursor, mac, name, vdisk, site, type, enabled))
        return self.get_device(mac)

    def _add_device_in(
        self,
        cursor: Cursor,
        mac: str,
        name: str,
        vdisk: str | None,
        site: str | None,
        type: DeviceType,
        enabled: bool,
    ) -> None:
        existing = self._one(cursor, "SELECT name FROM devices WHERE mac = ?", (mac,))
        if existing:
            raise AlreadyExists(f"device {mac} exists already (named {existing[0]!r})")
        existing = self._one(cursor, "SELECT mac FROM devices WHERE name = ?", (name,))
        if existing:
            raise AlreadyExists(f"a device named {name!r} exists already (MAC {existing[0]})")
        vdisk_id = self._optional_id(cursor, "vdisks", vdisk, "vDisk")
        site_id = self._optional_id(cursor, "sites", site, "site")
        self._exec(
            cursor,
            """INSERT INTO devices (mac, name, site_id, vdisk_id, enabled, type, created_at)
               VALUES (?, ?, ?, ?, ?, ?, {now})""",
            (mac, name, site_id, vdisk_id, enabled, type),
        )
        self._audit(cursor, "device.add", mac, name=name, vdisk=vdisk, site=site, type=type, enabled=enabled)

    def get_device(self, mac: str) -> Device:
        mac = parse_mac(mac)
        row = self._run(False, lambda cursor: self._one(cursor, _DEVICE_SELECT + " WHERE d.mac = ?", (mac,)))
        if row is None:
            raise NotFound(f"no device {mac} in the farm")
        return _device(row)

    def find_device(self, mac: str) -> Device | None:
        """The device with this MAC, or None: the login path asks this for every unknown target."""
        try:
            return self.get_device(mac)
        except NotFound:
            return None

    def list_devices(self) -> list[Device]:
        rows = self._run(False, lambda cursor: self._all(cursor, _DEVICE_SELECT + " ORDER BY d.name"))
        return [_device(row) for row in rows]

    def update_device(
        self,
        mac: str,
        *,
        name: str | Unset = UNSET,
        vdisk: str | Unset | None = UNSET,
        site: str | Unset | None = UNSET,
        type: DeviceType | Unset = UNSET,
        enabled: bool | Unset = UNSET,
    ) -> Device:
        mac = parse_mac(mac)
        if not isinstance(name, Unset):
            check_name("device", name)
        if not isinstance(type, Unset):
            type = DeviceType(type)

        def work(cursor: Cursor) -> None:
            device_id = self._id(cursor, "devices", "mac", mac, "device")
            changes: dict[str, Any] = {}
            detail: dict[str, Any] = {}
            if not isinstance(name, Unset):
                clash = self._one(
                    cursor, "SELECT mac FROM devices WHERE name = ? AND id <> ?", (name, device_id)
                )
                if clash:
                    raise AlreadyExists(f"a device named {name!r} exists already (MAC {clash[0]})")
                changes["name"] = detail["name"] = name
            if not isinstance(vdisk, Unset):
                changes["vdisk_id"] = self._optional_id(cursor, "vdisks", vdisk, "vDisk")
                detail["vdisk"] = vdisk
            if not isinstance(site, Unset):
                changes["site_id"] = self._optional_id(cursor, "sites", site, "site")
                detail["site"] = site
            if not isinstance(type, Unset):
                changes["type"] = detail["type"] = type
            if not isinstance(enabled, Unset):
                changes["enabled"] = detail["enabled"] = enabled
            if not changes:
                return
            assignments = ", ".join(f"{column} = ?" for column in changes)
            self._exec(
                cursor, f"UPDATE devices SET {assignments} WHERE id = ?", (*changes.values(), device_id)
            )
            self._audit(cursor, "device.set", mac, **detail)

        self._run(True, work)
        return self.get_device(mac)

    def remove_device(self, mac: str) -> Device:
        device = self.get_device(mac)

        def work(cursor: Cursor) -> None:
            if not self._exec(cursor, "DELETE FROM devices WHERE mac = ?", (device.mac,)).rowcount:
                raise NotFound(f"no device {device.mac} in the farm")
            self._audit(cursor, "device.remove", device.mac, name=device.name)

        self._run(True, work)
        return device

    # -- sessions -----------------------------------------------------------------------------------

    def open_session(self, mac: str, server: str, io_port: int, version: int | None = None) -> Session:
        """Record a target's session on a server, replacing any earlier session of that device."""
        mac = parse_mac(mac)
        return self._run(True, lambda cursor: self._open_session_in(cursor, mac, server, io_port, version))

    def _open_session_in(
        self, cursor: Cursor, mac: str, server: str, io_port: int, version: int | None = None
    ) -> Session:
        # One statement for what three would find: a login's transaction is on the hot path of a boot storm.
        row = self._one(
            cursor,
            """SELECT d.id, d.name, v.name, (SELECT id FROM servers WHERE name = ?)
               FROM devices d LEFT JOIN vdisks v ON v.id = d.vdisk_id WHERE d.mac = ?""",
            (server, mac),
        )
        if row is None:
            raise NotFound(f"no device {mac} in the farm")
        device_id, device_name, vdisk, server_id = int(row[0]), str(row[1]), row[2], row[3]
        if server_id is None:
            raise NotFound(f"no server {server!r} in the farm")
        self._exec(cursor, "DELETE FROM sessions WHERE device_id = ?", (device_id,))
        session_id, since = self._one(
            cursor,
            "INSERT INTO sessions (device_id, server_id, io_port, since, last_seen, vdisk, version) "
            "VALUES (?, ?, ?, {now}, {now}, ?, ?) RETURNING id, since",
            (device_id, server_id, io_port, vdisk, version),
        )
        self._audit(cursor, "session.open", mac, server=server, io_port=io_port, session=int(session_id))
        return Session(int(session_id), mac, device_name, server, io_port, since, since, vdisk, 0.0, version)

    # -- logins -------------------------------------------------------------------------------------

    def fresh_login(
        self,
        mac: str,
        *,
        active_within: float,
        auto_add: bool,
        template: str,
        choose: Callable[[FarmView], tuple[str, int] | None],
    ) -> FreshLogin:
        """A fresh login in one write transaction: read what it is decided from (adding the device
        first with [farm] auto_add), let `choose` decide, and open the session on the server and
        I/O port it names. `choose` returns None to refuse; it runs inside the transaction, so
        logins decided one after the other see each other's sessions."""
        mac = parse_mac(mac)

        def work(cursor: Cursor) -> FreshLogin:
            row = self._one(cursor, _DEVICE_SELECT + " WHERE d.mac = ?", (mac,))
            added, template_found = False, True
            if row is None and auto_add:
                template_found = self._auto_add_in(cursor, mac, template)
                row = self._one(cursor, _DEVICE_SELECT + " WHERE d.mac = ?", (mac,))
                added = True
            device = _device(row) if row is not None else None
            vdisk = None
            if device is not None and device.vdisk is not None:
                vdisk = next(iter(self._vdisks_in(cursor, device.vdisk)), None)
            view = FarmView(
                device=device,
                vdisk=vdisk,
                servers=self._servers_in(cursor),
                replicas=self._replicas_in(cursor, vdisk.name) if vdisk else [],
                load=self._load_in(cursor, active_within, exclude=None),
                holders=(
                    self._holders_in(cursor, vdisk.name, mac, active_within)
                    if vdisk is not None and vdisk.mode is AccessMode.PRIVATE
                    else []
                ),
            )
            writing = None
            if device is not None and vdisk is not None:
                writing = writes_version(vdisk, device.type)
                if writing is not None:
                    view = dataclasses.replace(
                        view, writer=self._writer_in(cursor, vdisk.name, writing.number, active_within)
                    )
            plan = choose(view)
            session = None
            if plan is not None and device is not None:
                chosen = boot_version(vdisk, device.type) if vdisk is not None else None
                session = self._open_session_in(cursor, mac, *plan, chosen.number if chosen else None)
                if writing is not None:
                    self._take_writer_in(cursor, vdisk.name if vdisk else "", writing.number, mac, session.id)
            return FreshLogin(view, session, added, template_found)

        return self._run(True, work)

    def _auto_add_in(self, cursor: Cursor, mac: str, template: str) -> bool:
        """Add an unknown device as a copy of the template device; False if there is no such template."""
        model = None
        if template:
            model = self._one(cursor, _DEVICE_SELECT + " WHERE d.name = ?", (template,))
        base = _device(model) if model is not None else None
        self._add_device_in(
            cursor,
            mac,
            "auto-" + mac.replace(":", ""),
            base.vdisk if base else None,
            base.site if base else None,
            base.type if base else DeviceType.PRODUCTION,
            True,
        )
        return base is not None or not template

    def resume_view(self, session_id: int, vdisk: str, active_within: float) -> FarmView:
        """What placing a target that comes back with its ticket needs, in one read transaction."""

        def work(cursor: Cursor) -> FarmView:
            leaving = self._one(
                cursor,
                "SELECT sv.name FROM sessions se JOIN servers sv ON sv.id = se.server_id WHERE se.id = ?",
                (session_id,),
            )
            return FarmView(
                device=None,
                vdisk=next(iter(self._vdisks_in(cursor, vdisk)), None),
                servers=self._servers_in(cursor),
                replicas=self._replicas_in(cursor, vdisk),
                load=self._load_in(cursor, active_within, exclude=session_id),
                leaving=leaving[0] if leaving else None,
            )

        return self._run(False, work)

    def _load_in(self, cursor: Cursor, active_within: float, exclude: int | None) -> Load:
        rows = self._all(
            cursor,
            """SELECT sv.name, se.io_port, COUNT(*) FROM sessions se JOIN servers sv ON sv.id = se.server_id
               WHERE {now} - se.last_seen <= ? AND se.id <> ? GROUP BY sv.name, se.io_port""",
            (active_within, -1 if exclude is None else exclude),
        )
        return Load({(str(row[0]), int(row[1])): int(row[2]) for row in rows})

    def _holders_in(self, cursor: Cursor, vdisk: str, mac: str, active_within: float) -> list[Session]:
        rows = self._all(
            cursor,
            _SESSION_SELECT + " WHERE v.name = ? AND d.mac <> ? AND {now} - se.last_seen <= ? ORDER BY se.id",
            (vdisk, mac, active_within),
        )
        return [Session(*row) for row in rows]

    def resume_session(
        self,
        session_id: int,
        mac: str,
        server: str,
        io_port: int,
        vdisk: str | None = None,
        version: int | None = None,
    ) -> Session:
        """A target that logged in again with its ticket keeps its session id on its new server."""
        mac = parse_mac(mac)

        def work(cursor: Cursor) -> None:
            device_id = self._id(cursor, "devices", "mac", mac, "device")
            server_id = self._id(cursor, "servers", "name", server, "server")
            row = self._one(
                cursor, "SELECT device_id, server_id, io_port FROM sessions WHERE id = ?", (session_id,)
            )
            if row is not None and row[0] == device_id:
                if (row[1], row[2]) == (server_id, io_port):
                    self._exec(cursor, "UPDATE sessions SET last_seen = {now} WHERE id = ?", (session_id,))
                    return
                self._exec(
                    cursor,
                    "UPDATE sessions SET server_id = ?, io_port = ?, vdisk = ?, version = ?, "
                    "last_seen = {now} WHERE id = ?",
                    (server_id, io_port, vdisk, version, session_id),
                )
            else:
                self._exec(
                    cursor, "DELETE FROM sessions WHERE device_id = ? OR id = ?", (device_id, session_id)
                )
                self._exec(
                    cursor,
                    "INSERT INTO sessions (id, device_id, server_id, io_port, since, last_seen, vdisk, "
                    "version) VALUES (?, ?, ?, ?, {now}, {now}, ?, ?)",
                    (session_id, device_id, server_id, io_port, vdisk, version),
                )
            self._audit(cursor, "session.move", mac, server=server, io_port=io_port, session=session_id)

        self._run(True, work)
        return next(s for s in self.list_sessions() if s.id == session_id)

    def touch_sessions(self, session_ids: Sequence[int]) -> list[int]:
        """Stamp the sessions a server's workers still serve (not audited: keepalives are not
        changes). Returns those the farm no longer has: ended there (`vdisk remove --force`, a
        removed device), so the server ends them too."""
        if not session_ids:
            return []
        marks = ", ".join("?" for _ in session_ids)

        def work(cursor: Cursor) -> list[int]:
            self._exec(
                cursor, f"UPDATE sessions SET last_seen = {{now}} WHERE id IN ({marks})", tuple(session_ids)
            )
            known = {
                int(row[0])
                for row in self._all(
                    cursor, f"SELECT id FROM sessions WHERE id IN ({marks})", tuple(session_ids)
                )
            }
            return sorted(set(session_ids) - known)

        return self._run(True, work)

    def touch_session(self, session_id: int) -> bool:
        return bool(
            self._run(
                True,
                lambda cursor: (
                    self._exec(
                        cursor, "UPDATE sessions SET last_seen = {now} WHERE id = ?", (session_id,)
                    ).rowcount
                ),
            )
        )

    def close_session(self, session_id: int, server: str | None = None) -> bool:
        """End a session; with `server`, only if it is still on that server (it may have moved)."""

        def work(cursor: Cursor) -> bool:
            row = self._one(cursor, _SESSION_SELECT + " WHERE se.id = ?", (session_id,))
            if row is None or (server is not None and row[3] != server):
                return False
            self._exec(cursor, "DELETE FROM sessions WHERE id = ?", (session_id,))
            self._audit(cursor, "session.close", row[1], server=row[3], session=session_id)
            return True

        return self._run(True, work)

    def list_sessions(self) -> list[Session]:
        rows = self._run(False, lambda cursor: self._all(cursor, _SESSION_SELECT + " ORDER BY d.name"))
        return [Session(*row) for row in rows]

    # -- the offline snapshot and what was queued while the database was down -----------------------

    def snapshot(self, active_within: float) -> FarmSnapshot:
        """Everything booting needs, read in one transaction (pvsd/farm/snapshot.py)."""

        def work(cursor: Cursor) -> FarmSnapshot:
            farm = None
            if self.backend.has_table(cursor, "farm"):
                farm = self._one(cursor, "SELECT name, secret, created_at FROM farm")
            if farm is None:
                raise FarmNotInitialised(f"no farm in {self.url}: run `pvsd farm init` first")
            version = int(self._one(cursor, "SELECT MAX(version) FROM schema_migrations")[0])
            now, audit_high = self._one(cursor, "SELECT {now}, (SELECT MAX(id) FROM audit)")
            sessions = self._all(
                cursor, _SESSION_SELECT + " WHERE {now} - se.last_seen <= ?", (active_within,)
            )
            sites = self._all(cursor, "SELECT name, description, created_at FROM sites ORDER BY name")
            return FarmSnapshot(
                farm=Farm(name=farm[0], secret=farm[1], created_at=farm[2], schema_version=version),
                taken_at=float(now),
                audit_high=int(audit_high or 0),
                devices=tuple(_device(row) for row in self._all(cursor, _DEVICE_SELECT + " ORDER BY d.name")),
                vdisks=tuple(self._vdisks_in(cursor, None)),
                replicas=tuple(self._replicas_in(cursor, None)),
                servers=tuple(self._servers_in(cursor)),
                sessions=tuple(Session(*row) for row in sessions),
                sites=tuple(Site(*row) for row in sites),
            )

        return self._run(False, work)

    def write_offline(self, records: Sequence[OfflineRecord]) -> int:
        """Write what a server queued during an outage, in order, in one transaction. A record
        whose event key the audit log has already is skipped (written before a crash). Returns
        how many were new. A device removed meanwhile keeps only the audit entry; a session that
        a later login replaced is not brought back."""

        def work(cursor: Cursor) -> int:
            new = 0
            for record in records:
                detail = json.dumps(
                    {
                        "server": record.server,
                        "io_port": record.io_port,
                        "session": record.session,
                        "version": record.version,
                        "offline": True,
                    },
                    sort_keys=True,
                )
                added = self._exec(
                    cursor,
                    "INSERT INTO audit (at, actor, action, subject, detail, event) VALUES (?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (event) DO NOTHING",
                    (
                        record.at,
                        record.actor,
                        str(record.kind),
                        record.mac or f"session {record.session}",
                        detail,
                        record.event,
                    ),
                ).rowcount
                if not added:
                    continue
                new += 1
                self._apply_offline_in(cursor, record)
            if self.backend.kind == "sqlite":
                # Offline session ids are drawn far above the ones the farm counts out; SQLite's
                # AUTOINCREMENT would carry on from them, so its counter is put back.
                self._exec(
                    cursor,
                    "UPDATE sqlite_sequence SET seq = (SELECT COALESCE(MAX(id), 0) FROM sessions "
                    "WHERE id < ?) WHERE name = 'sessions'",
                    (OFFLINE_SESSION_BASE,),
                )
            return new

        return self._run(True, work)

    def _apply_offline_in(self, cursor: Cursor, record: OfflineRecord) -> None:
        if record.kind is RecordKind.SESSION_CLOSE:
            self._exec(
                cursor,
                "DELETE FROM sessions WHERE id = ? AND server_id = (SELECT id FROM servers WHERE name = ?)",
                (record.session, record.server),
            )
            return
        ids = self._one(
            cursor,
            "SELECT (SELECT id FROM devices WHERE mac = ?), (SELECT id FROM servers WHERE name = ?)",
            (record.mac, record.server),
        )
        device_id, server_id = ids[0], ids[1]
        if device_id is None or server_id is None:
            return  # removed meanwhile: the audit entry says what happened
        current = self._one(cursor, "SELECT id, since FROM sessions WHERE device_id = ?", (device_id,))
        if current is not None and int(current[0]) == record.session:
            self._exec(
                cursor,
                "UPDATE sessions SET server_id = ?, io_port = ?, last_seen = {now} WHERE id = ?",
                (server_id, record.io_port, record.session),
            )
            return
        if current is not None and float(current[1]) > record.at:
            return  # the device logged in again since: its newer session stands
        self._exec(cursor, "DELETE FROM sessions WHERE device_id = ? OR id = ?", (device_id, record.session))
        self._exec(
            cursor,
            "INSERT INTO sessions (id, device_id, server_id, io_port, since, last_seen, vdisk, version) "
            "VALUES (?, ?, ?, ?, ?, {now}, ?, ?)",
            (record.session, device_id, server_id, record.io_port, record.at, record.vdisk, record.version),
        )

    # -- audit --------------------------------------------------------------------------------------

    def list_audit(self, limit: int = 50) -> list[AuditEntry]:
        """The newest `limit` audit entries, newest first."""
        rows = self._run(
            False,
            lambda cursor: self._all(
                cursor,
                "SELECT id, at, actor, action, subject, detail FROM audit ORDER BY id DESC LIMIT ?",
                (limit,),
            ),
        )
        return [AuditEntry(*row) for row in rows]


def _with_pending(vdisk: VDisk, pending: set[int]) -> VDisk:
    if not pending:
        return vdisk
    versions = tuple(dataclasses.replace(v, pending=v.number in pending) for v in vdisk.versions)
    return dataclasses.replace(vdisk, versions=versions)


def _check_vdisk(name: str, size: int, sector_size: int) -> None:
    check_name("vDisk", name)
    if sector_size not in SECTOR_SIZES:
        raise BadInput(f"bad sector size {sector_size}: use one of {SECTOR_SIZES}")
    if size <= 0 or size % sector_size:
        raise BadInput(f"bad vDisk size {size}: must be a positive multiple of the sector size {sector_size}")


def _server(row: Any) -> Server:
    return Server(
        name=row[0],
        address=row[1],
        ports=json.loads(row[2]),
        power=float(row[3]),
        site=row[4],
        state=ServerState(row[5]),
        instance=row[6],
        started_at=row[7],
        last_heartbeat=row[8],
        heartbeat_age=None if row[9] is None else float(row[9]),  # below 0: a writer clock ahead
    )


def _device(row: Any) -> Device:
    return Device(
        mac=row[0],
        name=row[1],
        site=row[2],
        vdisk=row[3],
        enabled=bool(row[4]),
        type=DeviceType(row[5]),
        created_at=row[6],
    )


def _too_new(version: int, url: str) -> SchemaMismatch:
    return SchemaMismatch(
        f"farm {url} has schema version {version}, newer than this pvsd knows "
        f"({LATEST_VERSION}): upgrade pvsd"
    )
