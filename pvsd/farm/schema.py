"""The farm schema, as an ordered list of migrations.

A farm records every migration it has applied in `schema_migrations`; opening a farm
written by an older pvsd applies the missing ones in place. Never edit a released
migration: add a new one. SQL here uses `{pk}` and `{real}`, which each backend rewrites.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["LATEST_VERSION", "MIGRATIONS", "Migration"]


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    statements: tuple[str, ...]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "farm, sites, servers, vDisks and versions, devices, audit log",
        (
            """CREATE TABLE schema_migrations (
                version INTEGER PRIMARY KEY,
                description TEXT NOT NULL,
                applied_at {real} NOT NULL)""",
            """CREATE TABLE farm (
                id INTEGER PRIMARY KEY CHECK (id = 1),
                name TEXT NOT NULL,
                secret TEXT NOT NULL,
                created_at {real} NOT NULL)""",
            """CREATE TABLE sites (
                id {pk},
                name TEXT NOT NULL UNIQUE,
                description TEXT NOT NULL DEFAULT '',
                created_at {real} NOT NULL)""",
            """CREATE TABLE servers (
                id {pk},
                name TEXT NOT NULL UNIQUE,
                address TEXT NOT NULL,
                ports TEXT NOT NULL,
                power {real} NOT NULL,
                site_id BIGINT REFERENCES sites(id) ON DELETE SET NULL,
                state TEXT NOT NULL,
                instance TEXT NOT NULL,
                started_at {real},
                last_heartbeat {real})""",
            """CREATE TABLE vdisks (
                id {pk},
                name TEXT NOT NULL UNIQUE,
                size BIGINT NOT NULL CHECK (size > 0),
                sector_size INTEGER NOT NULL,
                mode TEXT NOT NULL,
                created_at {real} NOT NULL)""",
            """CREATE TABLE vdisk_versions (
                vdisk_id BIGINT NOT NULL REFERENCES vdisks(id) ON DELETE CASCADE,
                number INTEGER NOT NULL,
                state TEXT NOT NULL,
                sha256 TEXT,
                created_at {real} NOT NULL,
                PRIMARY KEY (vdisk_id, number))""",
            """CREATE TABLE devices (
                id {pk},
                mac TEXT NOT NULL UNIQUE,
                name TEXT NOT NULL UNIQUE,
                site_id BIGINT REFERENCES sites(id),
                vdisk_id BIGINT REFERENCES vdisks(id),
                enabled BOOLEAN NOT NULL,
                type TEXT NOT NULL,
                created_at {real} NOT NULL)""",
            """CREATE TABLE audit (
                id {pk},
                at {real} NOT NULL,
                actor TEXT NOT NULL,
                action TEXT NOT NULL,
                subject TEXT NOT NULL,
                detail TEXT NOT NULL)""",
        ),
    ),
    Migration(
        2,
        "per-server replicas of vDisk versions, target sessions",
        (
            """CREATE TABLE replicas (
                server_id BIGINT NOT NULL REFERENCES servers(id) ON DELETE CASCADE,
                vdisk_id BIGINT NOT NULL,
                number INTEGER NOT NULL,
                sha256 TEXT,
                state TEXT NOT NULL,
                verified_at {real},
                PRIMARY KEY (server_id, vdisk_id, number),
                FOREIGN KEY (vdisk_id, number)
                    REFERENCES vdisk_versions(vdisk_id, number) ON DELETE CASCADE)""",
            """CREATE TABLE sessions (
                id {pk},
                device_id BIGINT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
                server_id BIGINT NOT NULL REFERENCES servers(id) ON DELETE CASCADE,
                io_port INTEGER NOT NULL,
                since {real} NOT NULL,
                last_seen {real} NOT NULL)""",
            "CREATE INDEX sessions_by_server ON sessions (server_id)",
        ),
    ),
    Migration(
        3,
        "where a standard-mode vDisk's writes go: the server or the device",
        ("ALTER TABLE vdisks ADD COLUMN cache TEXT NOT NULL DEFAULT 'device'",),
    ),
    Migration(
        4,
        "the vDisk a session streams (its ticket's), so that a streamed vDisk is not removed by mistake",
        ("ALTER TABLE sessions ADD COLUMN vdisk TEXT",),
    ),
    Migration(
        5,
        "a version's boot files for diskless boot: its Linux kernel, initramfs and command line",
        (
            """CREATE TABLE version_boot (
                vdisk_id BIGINT NOT NULL,
                number INTEGER NOT NULL,
                kernel TEXT NOT NULL,
                kernel_version TEXT NOT NULL,
                kernel_sha256 TEXT NOT NULL,
                initrd TEXT,
                initrd_sha256 TEXT,
                cmdline TEXT NOT NULL,
                root_offset BIGINT,
                PRIMARY KEY (vdisk_id, number),
                FOREIGN KEY (vdisk_id, number)
                    REFERENCES vdisk_versions(vdisk_id, number) ON DELETE CASCADE)""",
        ),
    ),
    Migration(
        6,
        "the sizes of a version's extracted kernel and initramfs, beside their sha256",
        (
            "ALTER TABLE version_boot ADD COLUMN kernel_size BIGINT NOT NULL DEFAULT 0",
            "ALTER TABLE version_boot ADD COLUMN initrd_size BIGINT",
        ),
    ),
    Migration(
        7,
        "a replica's copy in progress and what it cost: bytes held, bytes pulled over the network, rate",
        (
            "ALTER TABLE replicas ADD COLUMN copied_bytes BIGINT NOT NULL DEFAULT 0",
            "ALTER TABLE replicas ADD COLUMN fetched_bytes BIGINT NOT NULL DEFAULT 0",
            "ALTER TABLE replicas ADD COLUMN rate_bps DOUBLE PRECISION",
        ),
    ),
    Migration(
        8,
        "versions as PVS has them: parents, a maintenance version's home and writer lock, "
        "scheduled promotions, placement lists, the version each session streams",
        (
            "ALTER TABLE vdisk_versions ADD COLUMN parent INTEGER",
            "ALTER TABLE vdisk_versions ADD COLUMN home TEXT",
            "ALTER TABLE vdisk_versions ADD COLUMN promote_to TEXT",
            "ALTER TABLE vdisk_versions ADD COLUMN promote_at {real}",
            "ALTER TABLE vdisks ADD COLUMN placement TEXT NOT NULL DEFAULT ''",
            # A deleted version's number is never given again: a server may still hold its file.
            "ALTER TABLE vdisks ADD COLUMN last_version INTEGER NOT NULL DEFAULT 0",
            "ALTER TABLE sessions ADD COLUMN version INTEGER",
            """CREATE TABLE version_writers (
                vdisk_id BIGINT NOT NULL,
                number INTEGER NOT NULL,
                device_id BIGINT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
                session_id BIGINT NOT NULL,
                since {real} NOT NULL,
                PRIMARY KEY (vdisk_id, number),
                FOREIGN KEY (vdisk_id, number)
                    REFERENCES vdisk_versions(vdisk_id, number) ON DELETE CASCADE)""",
        ),
    ),
    Migration(
        9,
        "offline database: records a server queued while the database was down carry a key, "
        "so that writing them twice (a crash after the write) adds nothing",
        (
            "ALTER TABLE audit ADD COLUMN event TEXT",
            "CREATE UNIQUE INDEX audit_event ON audit (event)",
        ),
    ),
)

LATEST_VERSION = MIGRATIONS[-1].version
