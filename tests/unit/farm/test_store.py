"""The farm store, one suite run against both backends (SQLite file, real PostgreSQL)."""

from __future__ import annotations

import json
import threading

import pytest

from pvsd.errors import BadInput
from pvsd.farm import (
    AccessMode,
    AlreadyExists,
    Conflict,
    DeviceType,
    FarmNotInitialised,
    FarmStore,
    HeartbeatResult,
    NotFound,
    ReplicaState,
    SchemaMismatch,
    ServerHealth,
    ServerState,
    VersionState,
    WriteCache,
    init_farm,
    open_store,
)
from pvsd.farm.schema import LATEST_VERSION
from pvsd.farm.store import backend_for

PORTS = {"login": 6910, "tftp": 69}


@pytest.fixture
def store(farm_url: str) -> FarmStore:
    store, _, created = init_farm(farm_url, "lab", "test")
    assert created
    return store


def register(
    store: FarmStore, name: str, address: str, instance: str = "i1", dead_after: float = 8.0
) -> None:
    store.register_server(name, address, PORTS, 1.0, instance, dead_after)


def test_init_creates_the_farm_with_a_secret_once(farm_url: str) -> None:
    store, farm, created = init_farm(farm_url, "lab", "test")
    assert created and farm.name == "lab" and farm.schema_version == LATEST_VERSION
    assert len(bytes.fromhex(farm.secret)) == 32
    again, farm_again, created_again = init_farm(farm_url, "other", "test")
    assert not created_again
    assert farm_again.secret == farm.secret and farm_again.name == "lab"
    store.close()
    again.close()


def test_open_refuses_a_database_without_a_farm(farm_url: str) -> None:
    with pytest.raises(FarmNotInitialised, match="farm init"):
        open_store(farm_url, "test")


def test_an_older_farm_is_upgraded_in_place(farm_url: str) -> None:
    old = FarmStore(backend_for(farm_url), "old-pvsd", create=True)
    assert old.migrate(target=1) == [1]
    old.create_farm("lab")
    # What pvsd wrote at schema version 1 (today's create_vdisk writes columns added since).
    old._run(
        True,
        lambda cursor: old._exec(
            cursor,
            "INSERT INTO vdisks (name, size, sector_size, mode, created_at) "
            "VALUES ('base', 1048576, 512, 'standard', {now})",
        ),
    )
    old.add_device("aa:bb:cc:00:00:01", "t1", vdisk="base")
    secret = old.get_farm().secret
    assert old.schema_version() == 1
    old.close()

    store = open_store(farm_url, "new-pvsd")
    assert store.schema_version() == LATEST_VERSION
    assert store.get_farm().secret == secret
    assert store.get_device("aa:bb:cc:00:00:01").vdisk == "base"
    assert store.get_vdisk("base").cache is WriteCache.DEVICE  # migration 3's default
    register(store, "pvs1", "10.0.0.1")
    assert store.open_session("aa:bb:cc:00:00:01", "pvs1", 6911).server == "pvs1"
    assert any(entry.action == "farm.upgrade" for entry in store.list_audit())


def test_a_farm_from_a_newer_pvsd_is_refused(farm_url: str, store: FarmStore) -> None:
    store._run(True, lambda c: store._exec(c, "INSERT INTO schema_migrations VALUES (999, 'future', {now})"))
    with pytest.raises(SchemaMismatch, match="newer than this pvsd"):
        open_store(farm_url, "test")


# -- servers -----------------------------------------------------------------------------------------


def test_servers_register_heartbeat_and_stop(store: FarmStore) -> None:
    register(store, "pvs1", "10.0.0.1", "a")
    register(store, "pvs2", "10.0.0.2", "b")
    servers = {s.name: s for s in store.list_servers()}
    assert set(servers) == {"pvs1", "pvs2"}
    assert servers["pvs1"].ports == PORTS
    assert servers["pvs1"].health(8.0) is ServerHealth.ALIVE
    assert servers["pvs1"].heartbeat_age is not None and servers["pvs1"].heartbeat_age < 5
    assert store.heartbeat("pvs1", "a") is HeartbeatResult.OK
    assert store.heartbeat("pvs1", "zzz") is HeartbeatResult.TAKEN
    assert store.heartbeat("ghost", "a") is HeartbeatResult.MISSING
    assert store.stop_server("pvs1", "a")
    assert store.get_server("pvs1").state is ServerState.STOPPED
    assert store.get_server("pvs1").health(8.0) is ServerHealth.STOPPED
    assert not store.stop_server("pvs2", "not-the-owner")


def test_a_stale_heartbeat_means_dead(store: FarmStore) -> None:
    register(store, "pvs1", "10.0.0.1")
    store._run(True, lambda c: store._exec(c, "UPDATE servers SET last_heartbeat = {now} - 30"))
    server = store.get_server("pvs1")
    assert server.heartbeat_age is not None and 29 < server.heartbeat_age < 40
    assert server.health(8.0) is ServerHealth.DEAD


def test_same_name_at_another_address_is_refused_while_alive(store: FarmStore) -> None:
    register(store, "pvs1", "10.0.0.1", "a")
    with pytest.raises(Conflict, match=r"already running at 10\.0\.0\.1"):
        register(store, "pvs1", "10.0.0.9", "b")
    # same address: a restart of the same server takes its record over
    register(store, "pvs1", "10.0.0.1", "c")
    assert store.heartbeat("pvs1", "a") is HeartbeatResult.TAKEN
    # once it stopped, the name may move to another address
    store.stop_server("pvs1", "c")
    register(store, "pvs1", "10.0.0.9", "d")
    assert store.get_server("pvs1").address == "10.0.0.9"


def test_a_dead_server_can_be_removed_an_alive_one_not(store: FarmStore) -> None:
    register(store, "pvs1", "10.0.0.1")
    with pytest.raises(Conflict, match="alive"):
        store.remove_server("pvs1", 8.0)
    store.stop_server("pvs1", "i1")
    store.remove_server("pvs1", 8.0)
    assert store.list_servers() == []
    with pytest.raises(NotFound):
        store.remove_server("pvs1", 8.0)


# -- devices -----------------------------------------------------------------------------------------


def test_devices_add_list_set_remove(store: FarmStore) -> None:
    store.create_vdisk("win", 1 << 30)
    store.add_site("lab-a")
    device = store.add_device("AA-BB-CC-00-00-01", "t1", vdisk="win", site="lab-a", type=DeviceType.TEST)
    assert (device.mac, device.vdisk, device.site, device.type, device.enabled) == (
        "aa:bb:cc:00:00:01",
        "win",
        "lab-a",
        DeviceType.TEST,
        True,
    )
    store.add_device("aabbcc000002", "t2")
    assert [d.name for d in store.list_devices()] == ["t1", "t2"]
    changed = store.update_device("aa:bb:cc:00:00:01", vdisk=None, enabled=False, name="t1b")
    assert (changed.vdisk, changed.enabled, changed.name, changed.site) == (None, False, "t1b", "lab-a")
    assert store.find_device("aa:bb:cc:00:00:09") is None
    assert store.remove_device("aa:bb:cc:00:00:02").name == "t2"
    assert [d.name for d in store.list_devices()] == ["t1b"]


def test_device_errors_are_bad_input(store: FarmStore) -> None:
    store.add_device("aa:bb:cc:00:00:01", "t1")
    with pytest.raises(AlreadyExists, match="exists already"):
        store.add_device("aabbcc000001", "other")
    with pytest.raises(AlreadyExists, match="named 't1'"):
        store.add_device("aa:bb:cc:00:00:02", "t1")
    with pytest.raises(NotFound, match="vDisk 'nope'"):
        store.add_device("aa:bb:cc:00:00:03", "t3", vdisk="nope")
    with pytest.raises(NotFound, match="site"):
        store.update_device("aa:bb:cc:00:00:01", site="nowhere")
    with pytest.raises(NotFound):
        store.remove_device("aa:bb:cc:00:00:04")
    with pytest.raises(BadInput, match="MAC"):
        store.add_device("not-a-mac", "t5")
    with pytest.raises(BadInput, match="device name"):
        store.add_device("aa:bb:cc:00:00:05", "bad name")
    for error in (AlreadyExists, NotFound):
        assert issubclass(error, BadInput)


# -- vDisks, versions, replicas -----------------------------------------------------------------------


def test_vdisks_and_versions(store: FarmStore) -> None:
    vdisk = store.create_vdisk("win", 8 << 30, mode=AccessMode.PRIVATE)
    assert (vdisk.size, vdisk.sector_size, vdisk.mode) == (8 << 30, 512, AccessMode.PRIVATE)
    assert [(v.number, v.state) for v in vdisk.versions] == [(0, VersionState.PRODUCTION)]
    v1 = store.add_version("win")
    assert (v1.number, v1.state, v1.sha256) == (1, VersionState.MAINTENANCE, None)
    promoted = store.set_version("win", 1, state=VersionState.TEST, sha256="ab" * 32)
    assert (promoted.state, promoted.sha256) == (VersionState.TEST, "ab" * 32)
    with pytest.raises(NotFound):
        store.set_version("win", 7, state=VersionState.TEST)
    with pytest.raises(AlreadyExists):
        store.create_vdisk("win", 1 << 20)
    with pytest.raises(BadInput, match="multiple"):
        store.create_vdisk("odd", 1000)
    store.add_device("aa:bb:cc:00:00:01", "t1", vdisk="win")
    with pytest.raises(Conflict, match="assigned to t1"):
        store.remove_vdisk("win")
    store.update_device("aa:bb:cc:00:00:01", vdisk=None)
    store.remove_vdisk("win")
    assert store.list_vdisks() == []


def test_replicas(store: FarmStore) -> None:
    register(store, "pvs1", "10.0.0.1")
    register(store, "pvs2", "10.0.0.2")
    store.create_vdisk("win", 1 << 20)
    copying = store.report_replica("pvs1", "win", 0, None, ReplicaState.COPYING)
    assert copying.verified_at is None
    verified = store.report_replica("pvs1", "win", 0, "cd" * 32, ReplicaState.VERIFIED)
    assert verified.state is ReplicaState.VERIFIED and verified.verified_at is not None
    store.report_replica("pvs2", "win", 0, None, ReplicaState.MISSING)
    assert [(r.server, r.state) for r in store.list_replicas("win")] == [
        ("pvs1", ReplicaState.VERIFIED),
        ("pvs2", ReplicaState.MISSING),
    ]
    with pytest.raises(NotFound):
        store.report_replica("pvs1", "win", 5, None, ReplicaState.COPYING)


# -- sessions and audit -------------------------------------------------------------------------------


def test_sessions(store: FarmStore) -> None:
    register(store, "pvs1", "10.0.0.1")
    register(store, "pvs2", "10.0.0.2")
    store.add_device("aa:bb:cc:00:00:01", "t1")
    first = store.open_session("aa:bb:cc:00:00:01", "pvs1", 6911)
    assert (first.mac, first.device, first.server, first.io_port) == ("aa:bb:cc:00:00:01", "t1", "pvs1", 6911)
    assert store.touch_session(first.id)
    # logging in again elsewhere replaces the device's session
    second = store.open_session("aa:bb:cc:00:00:01", "pvs2", 6912)
    assert [s.id for s in store.list_sessions()] == [second.id]
    assert not store.touch_session(first.id)
    assert store.close_session(second.id)
    assert not store.close_session(second.id)
    # a stopping server takes its sessions with it
    third = store.open_session("aa:bb:cc:00:00:01", "pvs1", 6911)
    store.stop_server("pvs1", "i1")
    assert third.id not in [s.id for s in store.list_sessions()]


def test_every_change_is_audited_with_who_what_when(store: FarmStore) -> None:
    store.create_vdisk("win", 1 << 20)
    store.add_device("aa:bb:cc:00:00:01", "t1", vdisk="win")
    store.update_device("aa:bb:cc:00:00:01", enabled=False)
    store.remove_device("aa:bb:cc:00:00:01")
    register(store, "pvs1", "10.0.0.1")
    store.heartbeat("pvs1", "i1")
    entries = store.list_audit()
    actions = [entry.action for entry in reversed(entries)]
    assert actions == [
        "farm.init",
        "vdisk.create",
        "device.add",
        "device.set",
        "device.remove",
        "server.register",
    ]
    newest = entries[0]
    assert newest.actor == "test" and newest.at > 1.7e9
    assert json.loads(entries[2].detail) == {"enabled": False}


def test_concurrent_writers_from_threads_all_land(farm_url: str) -> None:
    """Several connections writing at once (as several processes would) lose nothing."""
    init_farm(farm_url, "lab", "test")[0].close()
    stores = [open_store(farm_url, f"writer{i}") for i in range(4)]
    errors: list[BaseException] = []

    def work(index: int) -> None:
        try:
            for n in range(15):
                stores[index].add_device(f"02:00:00:00:{index:02x}:{n:02x}", f"d{index}-{n}")
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert len(stores[0].list_devices()) == 60
    for store in stores:
        store.close()


def test_three_servers_initialising_one_farm_at_once_migrate_it_once(farm_url: str) -> None:
    """Three `pvsd farm init` at once on an empty database (the compose farm's first start): the
    advisory lock lets one migrate and create; the others find the farm and keep it."""
    results: list[tuple[str, bool]] = []
    errors: list[BaseException] = []
    start = threading.Barrier(3)

    def init(index: int) -> None:
        try:
            start.wait(10)
            store, farm, created = init_farm(farm_url, "compose", f"pvs{index}")
            store.close()
            results.append((farm.secret, created))
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=init, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert sorted(created for _, created in results) == [False, False, True]
    assert len({secret for secret, _ in results}) == 1
    store = open_store(farm_url, "check")
    try:
        assert store.schema_version() == LATEST_VERSION
        actions = [e.action for e in store.list_audit(limit=100)]
        assert actions.count("farm.init") == 1 and "farm.upgrade" not in actions
    finally:
        store.close()
