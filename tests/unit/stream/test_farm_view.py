"""What a fresh login reads from the farm store, auto_add included, on a real SQLite farm."""

from __future__ import annotations

from pathlib import Path

import pytest

from pvsd.farm import DeviceType, FarmStore, open_store
from pvsd.farm.store import init_farm
from pvsd.log import get_logger
from pvsd.stream.login import read_farm_view

MAC = "52:54:00:aa:bb:cc"


@pytest.fixture
def store(tmp_path: Path) -> FarmStore:
    url = f"sqlite:///{tmp_path}/farm.db"
    init_farm(url, "lab", "test")[0].close()
    farm = open_store(url, "test")
    farm.create_vdisk("base", 1 << 20)
    farm.add_device("52:54:00:00:00:01", "model", vdisk="base", type=DeviceType.TEST)
    return farm


def test_an_unknown_mac_stays_unknown_without_auto_add(store: FarmStore) -> None:
    view = read_farm_view(store, MAC, False, "", get_logger("test"))
    assert view.device is None and view.vdisk is None
    assert store.find_device(MAC) is None


def test_auto_add_copies_the_template_device(store: FarmStore) -> None:
    view = read_farm_view(store, MAC, True, "model", get_logger("test"))
    assert view.device is not None and view.device.name == "auto-525400aabbcc"
    assert (view.device.vdisk, view.device.type) == ("base", DeviceType.TEST)
    assert view.vdisk is not None and view.vdisk.name == "base"
    assert any(entry.action == "device.add" and entry.subject == MAC for entry in store.list_audit())


def test_auto_add_without_a_template_adds_a_device_with_no_vdisk(store: FarmStore) -> None:
    view = read_farm_view(store, MAC, True, "missing", get_logger("test"))
    assert view.device is not None and view.device.vdisk is None and view.vdisk is None
