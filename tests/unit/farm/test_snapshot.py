"""The offline snapshot and queue: round trips, file modes, torn lines and written-once records."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from pvsd.farm.offline_queue import OfflineQueue, OfflineRecord, RecordKind, new_event_key
from pvsd.farm.records import (
    AccessMode,
    Device,
    DeviceType,
    Farm,
    Replica,
    ReplicaState,
    Server,
    ServerState,
    Session,
    Site,
    VDisk,
    VDiskVersion,
    VersionBoot,
    VersionState,
    WriteCache,
)
from pvsd.farm.snapshot import FarmSnapshot, SnapshotError, read_snapshot, write_snapshot

VERSION = VDiskVersion(
    "linux",
    2,
    VersionState.PRODUCTION,
    "ab" * 32,
    1.5,
    boot=VersionBoot("boot/vmlinuz", "6.1.0", "cd" * 32, initrd="boot/initrd", root_offset=1048576),
    parent=1,
)
SNAPSHOT = FarmSnapshot(
    farm=Farm("lab", "s3cret", 100.0, 9),
    taken_at=200.0,
    audit_high=42,
    devices=(Device("52:54:00:00:00:01", "vm1", "hq", "linux", True, DeviceType.TEST, 3.0),),
    vdisks=(
        VDisk("linux", 1 << 30, 512, AccessMode.STANDARD, 1.0, (VERSION,), WriteCache.SERVER, ("pvs1",)),
    ),
    replicas=(Replica("pvs1", "linux", 2, "ab" * 32, ReplicaState.VERIFIED, 5.0),),
    servers=(
        Server("pvs1", "10.0.0.1", {"login": 6910}, 1.0, None, ServerState.RUNNING, "i", 1.0, 2.0, 0.5),
    ),
    sessions=(Session(7, "52:54:00:00:00:01", "vm1", "pvs1", 6911, 1.0, 2.0, "linux", 0.1, 2),),
    sites=(Site("hq", "", 1.0),),
)


def test_round_trip_and_mode(tmp_path: Path) -> None:
    path = write_snapshot(tmp_path / "pvs1", SNAPSHOT)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # it holds the farm secret
    assert read_snapshot(tmp_path / "pvs1") == SNAPSHOT
    assert SNAPSHOT.load().server("pvs1") == 1
    assert SNAPSHOT.load(exclude_mac="52:54:00:00:00:01").server("pvs1") == 0


def test_same_content_ignores_ages(tmp_path: Path) -> None:
    import dataclasses

    later = dataclasses.replace(
        SNAPSHOT,
        taken_at=300.0,
        servers=tuple(
            dataclasses.replace(s, heartbeat_age=3.0, last_heartbeat=9.0) for s in SNAPSHOT.servers
        ),
    )
    assert later.same_content(SNAPSHOT)
    assert not dataclasses.replace(SNAPSHOT, audit_high=43).same_content(SNAPSHOT)


def test_missing_or_damaged(tmp_path: Path) -> None:
    with pytest.raises(SnapshotError, match="never read the farm"):
        read_snapshot(tmp_path)
    (tmp_path / "snapshot.json").write_text('{"format": 1, "snapshot": {"farm": 3}}')
    with pytest.raises(SnapshotError, match="damaged"):
        read_snapshot(tmp_path)
    (tmp_path / "snapshot.json").write_text("{not json")
    with pytest.raises(SnapshotError, match="cannot read"):
        read_snapshot(tmp_path)


def record(session: int) -> OfflineRecord:
    return OfflineRecord(
        new_event_key("pvs1"),
        RecordKind.SESSION_OPEN,
        10.0,
        "server:pvs1",
        "52:54:00:00:00:01",
        "pvs2",
        session,
    )


def test_queue_drains_what_was_written_and_keeps_what_came_meanwhile(tmp_path: Path) -> None:
    queue = OfflineQueue(tmp_path / "q")
    first, second, meanwhile = record(1), record(2), record(3)
    queue.append(first)
    queue.append(second)
    assert stat.S_IMODE(queue.path.stat().st_mode) == 0o600

    def write(records: object) -> int:
        queue.append(meanwhile)  # a login answered while the drain writes
        assert list(records) == [first, second]  # type: ignore[call-overload]
        return 2

    assert queue.drain(write) == (2, 2)
    assert queue.records() == [meanwhile]


def test_a_failed_write_keeps_the_queue(tmp_path: Path) -> None:
    queue = OfflineQueue(tmp_path)
    queue.append(record(1))

    def write(records: object) -> int:
        raise OSError("database gone")

    with pytest.raises(OSError):
        queue.drain(write)
    assert len(queue) == 1


def test_a_torn_last_line_is_dropped(tmp_path: Path) -> None:
    queue = OfflineQueue(tmp_path)
    queue.append(record(1))
    with queue.path.open("ab") as file:
        file.write(b'{"event": "pvs1:ab", "ki')  # the crash
    assert [r.session for r in queue.records()] == [1]
    assert queue.torn == 1
