"""The login decision, pure: each refusal has its own code; the grant names version, server and port."""

from __future__ import annotations

import ipaddress

import pytest

from pvsd.farm.records import (
    AccessMode,
    Device,
    DeviceType,
    FarmView,
    Load,
    Replica,
    ReplicaState,
    Server,
    ServerState,
    Session,
    VDisk,
    VDiskVersion,
    VersionState,
    WriteCache,
)
from pvsd.stream.admission import Grant, boot_version, decide_login, place_resumed
from pvsd.stream.placement import Affinity, Placement, pick_port
from pvsd.stream.ticket import CacheType
from pvsd.stream.wire import ErrorCode, ErrorReply, StreamRefusal, decode, fit_error

MAC = "52:54:00:00:00:01"
DEAD_AFTER = 8.0


def server(
    name: str, address: str, age: float = 1.0, power: float = 1.0, ports: tuple[int, int] = (6911, 6912)
) -> Server:
    return Server(
        name=name,
        address=address,
        ports={"login": 6910, "stream_first": ports[0], "stream_last": ports[1]},
        power=power,
        site=None,
        state=ServerState.RUNNING,
        instance="i",
        started_at=0.0,
        last_heartbeat=0.0,
        heartbeat_age=age,
    )


def version(
    number: int, state: VersionState = VersionState.PRODUCTION, sha: str | None = "ab"
) -> VDiskVersion:
    return VDiskVersion("disk", number, state, sha, 0.0)


def vdisk(
    *versions: VDiskVersion, mode: AccessMode = AccessMode.STANDARD, cache: WriteCache = WriteCache.SERVER
) -> VDisk:
    return VDisk("disk", 1 << 20, 512, mode, 0.0, versions, cache)


def device(
    enabled: bool = True, disk: str | None = "disk", type: DeviceType = DeviceType.PRODUCTION, mac: str = MAC
) -> Device:
    return Device(mac, "t1", None, disk, enabled, type, 0.0)


def replica(
    server_name: str, number: int = 1, state: ReplicaState = ReplicaState.VERIFIED, sha: str = "ab"
) -> Replica:
    return Replica(server_name, "disk", number, sha, state, 0.0)


def session(server_name: str, port: int, mac: str = "52:54:00:00:00:99", idle: float = 0.0) -> Session:
    return Session(1, mac, "other", server_name, port, 0.0, 0.0, "disk", idle)


def load(*sessions: Session) -> Load:
    """What the store counts: active sessions per server and port."""
    counts: dict[tuple[str, int], int] = {}
    for s in sessions:
        counts[(s.server, s.io_port)] = counts.get((s.server, s.io_port), 0) + 1
    return Load(counts)


SERVERS = (server("pvs1", "10.0.0.11"), server("pvs2", "10.0.0.12"))
DISK = vdisk(version(0, sha=None), version(1))


def decide(view: FarmView, target: str = "10.0.0.50") -> Grant | StreamRefusal:
    try:
        return decide_login(MAC, view, target=ipaddress.IPv4Address(target), dead_after=DEAD_AFTER)
    except StreamRefusal as refusal:
        return refusal


def view(**changes: object) -> FarmView:
    fields: dict[str, object] = {
        "device": device(),
        "vdisk": DISK,
        "servers": SERVERS,
        "replicas": (replica("pvs1"), replica("pvs2")),
    }
    fields.update(changes)
    return FarmView(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"device": None}, ErrorCode.UNKNOWN_MAC),
        ({"device": device(enabled=False)}, ErrorCode.DEVICE_DISABLED),
        ({"device": device(disk=None), "vdisk": None}, ErrorCode.NO_VDISK),
        ({"vdisk": vdisk(version(0, sha=None))}, ErrorCode.NO_SERVER),
        ({"replicas": ()}, ErrorCode.NO_SERVER),
        ({"replicas": (replica("pvs1", state=ReplicaState.BAD),)}, ErrorCode.NO_SERVER),
        ({"replicas": (replica("pvs1", sha="other"),)}, ErrorCode.NO_SERVER),
        ({"servers": (server("pvs1", "10.0.0.11", age=30.0),)}, ErrorCode.NO_SERVER),
    ],
)
def test_each_refusal_has_its_code(changes: dict[str, object], code: ErrorCode) -> None:
    outcome = decide(view(**changes))
    assert isinstance(outcome, StreamRefusal) and outcome.code == code, outcome


def test_the_least_loaded_server_with_a_verified_replica_and_its_least_loaded_port() -> None:
    sessions = load(session("pvs1", 6911), session("pvs2", 6911), session("pvs2", 6912))
    outcome = decide(view(load=sessions))
    assert isinstance(outcome, Grant)
    assert (outcome.placement.server.name, outcome.placement.io_port) == ("pvs1", 6912)
    assert outcome.version.number == 1 and not outcome.private and outcome.cache is CacheType.SERVER


def test_the_device_type_picks_the_version() -> None:
    disk = vdisk(version(1), version(2, VersionState.TEST), version(3, VersionState.MAINTENANCE))
    assert boot_version(disk, DeviceType.PRODUCTION) == version(1)
    assert boot_version(disk, DeviceType.TEST) == version(2, VersionState.TEST)
    assert boot_version(disk, DeviceType.MAINTENANCE) == version(3, VersionState.MAINTENANCE)
    outcome = decide(view(vdisk=disk, device=device(type=DeviceType.TEST), replicas=(replica("pvs2", 2),)))
    assert isinstance(outcome, Grant) and (outcome.placement.server.name, outcome.version.number) == (
        "pvs2",
        2,
    )


def test_a_private_vdisk_has_one_writer() -> None:
    private = vdisk(version(1), mode=AccessMode.PRIVATE)
    busy = view(vdisk=private, holders=(session("pvs1", 6911),))
    outcome = decide(busy)
    assert isinstance(outcome, StreamRefusal) and outcome.code == ErrorCode.PRIVATE_IN_USE
    # the same device coming back, or a holder on a dead server, does not block
    assert isinstance(decide(view(vdisk=private, holders=(session("pvs1", 6911, mac=MAC),))), Grant)
    dead = (server("pvs1", "10.0.0.11", age=30.0), server("pvs2", "10.0.0.12"))
    outcome = decide(view(vdisk=private, servers=dead, holders=(session("pvs1", 6911),)))
    assert isinstance(outcome, Grant) and outcome.private and outcome.cache is CacheType.NONE


def test_fixed_subnet_affinity_refuses_a_target_on_another_subnet() -> None:
    with pytest.raises(StreamRefusal) as refused:
        decide_login(
            MAC,
            view(),
            target=ipaddress.IPv4Address("192.168.9.9"),
            dead_after=DEAD_AFTER,
            affinity=Affinity.FIXED,
        )
    assert refused.value.code == ErrorCode.NO_SERVER


def test_pick_port_spreads_over_the_workers() -> None:
    pvs1 = server("pvs1", "10.0.0.11", ports=(6911, 6913))
    assert pick_port(pvs1, Load()) == 6911
    assert pick_port(pvs1, load(session("pvs1", 6911), session("pvs1", 6913))) == 6912
    assert pick_port(server("x", "10.0.0.1", ports=(0, -1)), Load()) is None


@pytest.mark.parametrize("limit", [21, 30, 40, 200])
def test_error_replies_are_never_larger_than_the_request(limit: int) -> None:
    reply = fit_error(ErrorCode.UNKNOWN_SESSION, "log in again, your session is unknown here", 9, 5, limit)
    assert len(reply) <= limit
    _, message = decode(reply)
    assert isinstance(message, ErrorReply) and message.code == ErrorCode.UNKNOWN_SESSION


def place(view: FarmView) -> Placement | None:
    return place_resumed("disk", 1, view, target=None, dead_after=DEAD_AFTER)


def test_a_returning_target_never_goes_back_to_the_server_it_left() -> None:
    three = (*SERVERS, server("pvs3", "10.0.0.13"))
    replicas = (replica("pvs1"), replica("pvs2"), replica("pvs3"))
    # its own session was on pvs1: pvs1 still looks alive (not dead_after yet) but it is left out
    others = load(session("pvs2", 6911), session("pvs2", 6912))
    placement = place(view(servers=three, replicas=replicas, load=others, leaving="pvs1"))
    assert placement is not None and placement.server.name == "pvs3"


def test_the_targets_of_a_dead_server_spread_over_the_others() -> None:
    three = (*SERVERS, server("pvs3", "10.0.0.13"))
    replicas = (replica("pvs1"), replica("pvs2"), replica("pvs3"))
    placed: list[Session] = []
    chosen = []
    for _ in range(4):
        placement = place(view(servers=three, replicas=replicas, load=load(*placed), leaving="pvs1"))
        assert placement is not None
        chosen.append(placement.server.name)
        placed.append(session(placement.server.name, placement.io_port))
    assert sorted(chosen) == ["pvs2", "pvs2", "pvs3", "pvs3"]


def test_no_placement_without_another_server_holding_the_version() -> None:
    assert place(view(replicas=(replica("pvs1"),), leaving="pvs1")) is None
    assert place(view(replicas=(replica("pvs2", number=2),), leaving="pvs1")) is None
    assert place(view(vdisk=None, leaving="pvs1")) is None  # the vDisk is gone


def test_a_returning_target_needs_a_replica_verified_against_its_versions_hash() -> None:
    # pvs2 verified version 1 of an older image (another hash): it must not take the target
    stale = (replica("pvs1"), replica("pvs2", sha="older"))
    assert place(view(replicas=stale, leaving="pvs1")) is None
    current = (replica("pvs1"), replica("pvs2", sha="older"), replica("pvs3"))
    three = (*SERVERS, server("pvs3", "10.0.0.13"))
    placement = place(view(servers=three, replicas=current, leaving="pvs1"))
    assert placement is not None and placement.server.name == "pvs3"
