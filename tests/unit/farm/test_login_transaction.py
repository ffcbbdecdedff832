"""A fresh login is one farm-store transaction: read, decide, open the session; on both backends."""

from __future__ import annotations

from typing import Any

import pytest

from pvsd.farm import AccessMode, DeviceType, FarmStore, FarmView, ReplicaState, init_farm

MAC = "52:54:00:aa:bb:cc"
PORTS = {"login": 6910, "stream_first": 6911, "stream_last": 6912}


@pytest.fixture
def store(farm_url: str) -> FarmStore:
    store, _, _ = init_farm(farm_url, "lab", "test")
    store.create_vdisk("base", 1 << 20)
    version = store.add_version("base", sha256="ab")
    for name, address in (("pvs1", "10.0.0.11"), ("pvs2", "10.0.0.12")):
        store.register_server(name, address, PORTS, 1.0, "i", 8.0)
        store.report_replica(name, "base", version.number, "ab", ReplicaState.VERIFIED)
    store.add_device("52:54:00:00:00:01", "model", vdisk="base", type=DeviceType.TEST)
    return store


def transactions(store: FarmStore) -> list[int]:
    """Counts the store's transactions from now on (every one goes through _run)."""
    count = [0]
    run = store._run

    def counted(write: bool, work: Any) -> Any:
        count[0] += 1
        return run(write, work)

    store._run = counted  # type: ignore[method-assign]
    return count


def fresh(store: FarmStore, mac: str, plan: tuple[str, int] | None = ("pvs1", 6911), **kw: Any) -> Any:
    seen: list[FarmView] = []

    def choose(view: FarmView) -> tuple[str, int] | None:
        seen.append(view)
        return plan

    options = {"active_within": 70.0, "auto_add": False, "template": ""} | kw
    result = store.fresh_login(mac, choose=choose, **options)
    assert seen == [result.view]
    return result


def test_one_transaction_reads_decides_and_opens_the_session(store: FarmStore) -> None:
    counter = transactions(store)
    result = fresh(store, "52:54:00:00:00:01")
    assert counter[0] == 1
    view = result.view
    assert view.device is not None and view.device.name == "model"
    assert view.vdisk is not None and view.vdisk.name == "base"
    assert {s.name for s in view.servers} == {"pvs1", "pvs2"}
    assert {r.server for r in view.replicas} == {"pvs1", "pvs2"}
    assert result.session is not None and (result.session.server, result.session.io_port) == ("pvs1", 6911)
    assert [s.id for s in store.list_sessions()] == [result.session.id]
    assert any(e.action == "session.open" for e in store.list_audit())


def test_the_next_login_counts_the_sessions_before_it_without_listing_them(store: FarmStore) -> None:
    for index in range(3):
        store.add_device(f"52:54:00:00:01:0{index}", f"t{index}", vdisk="base")
        fresh(store, f"52:54:00:00:01:0{index}", ("pvs1", 6911 + index % 2))
    result = fresh(store, "52:54:00:00:00:01", None)
    assert result.session is None  # refused: nothing opened
    load = result.view.load
    assert (load.server("pvs1"), load.server("pvs2")) == (3, 0)
    assert (load.port("pvs1", 6911), load.port("pvs1", 6912)) == (2, 1)
    # sessions idle longer than the window do not count
    assert fresh(store, "52:54:00:00:00:01", None, active_within=-1.0).view.load.server("pvs1") == 0


def test_other_devices_sessions_of_a_private_vdisk_are_its_holders(store: FarmStore) -> None:
    store.add_device("52:54:00:00:01:01", "other", vdisk="base")
    fresh(store, "52:54:00:00:01:01")
    assert fresh(store, "52:54:00:00:00:01", None).view.holders == []  # standard: shared, no holders
    store.create_vdisk("own", 1 << 20, mode=AccessMode.PRIVATE)
    store.add_version("own", sha256="cd")
    store.update_device("52:54:00:00:01:01", vdisk="own")
    store.update_device("52:54:00:00:00:01", vdisk="own")
    fresh(store, "52:54:00:00:01:01")
    holders = fresh(store, "52:54:00:00:00:01", None).view.holders
    assert [h.mac for h in holders] == ["52:54:00:00:01:01"]
    assert fresh(store, "52:54:00:00:01:01", None).view.holders == []  # its own session is no holder


def test_an_unknown_mac_stays_unknown_without_auto_add(store: FarmStore) -> None:
    result = fresh(store, MAC, None)
    assert result.view.device is None and result.view.vdisk is None and not result.added
    assert store.find_device(MAC) is None


def test_auto_add_copies_the_template_device_in_the_same_transaction(store: FarmStore) -> None:
    counter = transactions(store)
    result = fresh(store, MAC, auto_add=True, template="model")
    assert counter[0] == 1
    assert result.added and result.template_found
    device = result.view.device
    assert device is not None and device.name == "auto-525400aabbcc"
    assert (device.vdisk, device.type) == ("base", DeviceType.TEST)
    assert result.session is not None
    assert any(entry.action == "device.add" and entry.subject == MAC for entry in store.list_audit())


def test_auto_add_without_its_template_adds_a_device_with_no_vdisk(store: FarmStore) -> None:
    result = fresh(store, MAC, None, auto_add=True, template="missing")
    assert result.added and not result.template_found
    assert result.view.device is not None and result.view.device.vdisk is None and result.view.vdisk is None


def test_the_resume_view_names_the_server_left_and_leaves_its_session_uncounted(store: FarmStore) -> None:
    opened = fresh(store, "52:54:00:00:00:01").session
    assert opened is not None
    view = store.resume_view(opened.id, "base", 70.0)
    assert view.leaving == "pvs1" and view.load.server("pvs1") == 0
    assert view.vdisk is not None and [v.number for v in view.vdisk.versions] == [0, 1]
    assert store.resume_view(999, "gone", 70.0).vdisk is None
