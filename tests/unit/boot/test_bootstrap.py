from __future__ import annotations

import dataclasses
import json

from pvsd.boot.bootstrap import BootstrapCache, bootstrap_document
from pvsd.config import BootstrapConfig
from pvsd.farm.records import Server, ServerState


def server(
    name: str, address: str, age: float | None = 1.0, state: ServerState = ServerState.RUNNING
) -> Server:
    return Server(name, address, {"login": 6910}, 1.0, None, state, "i", 0.0, 0.0, age)


FARM = [
    server("pvs3", "10.0.0.3"),
    server("pvs1", "10.0.0.1"),
    server("pvs2", "10.0.0.2", age=30.0),  # dead
    server("pvs4", "10.0.0.4", state=ServerState.STOPPED),
    server("pvs0", "10.0.0.9", age=None),  # never beat
]


def test_this_server_first_then_the_live_ones_by_name() -> None:
    document = bootstrap_document("lab", FARM[0], FARM, 8.0, BootstrapConfig())
    assert [s["name"] for s in document["servers"]] == ["pvs3", "pvs1"]
    assert document["servers"][0] == {"name": "pvs3", "address": "10.0.0.3", "login_port": 6910}
    assert document["recovery"] == {"method": "restore"}


def test_reboot_recovery_carries_its_delay() -> None:
    settings = dataclasses.replace(BootstrapConfig(), recovery="reboot", reboot_delay_s=20)
    document = bootstrap_document("lab", FARM[1], FARM, 8.0, settings)
    assert document["recovery"] == {"method": "reboot", "reboot_delay_s": 20}


def test_the_cache_gives_new_content_only_when_membership_changes() -> None:
    cache = BootstrapCache("lab", BootstrapConfig(), 8.0)
    first = cache.update(FARM[1], FARM)
    assert first is not None
    assert cache.update(FARM[1], [dataclasses.replace(s, heartbeat_age=2.0) for s in FARM[:2]]) is None
    revived = [*FARM[:2], server("pvs2", "10.0.0.2")]
    content = cache.update(FARM[1], revived)
    assert content is not None
    assert [s["name"] for s in json.loads(content)["servers"]] == ["pvs1", "pvs2", "pvs3"]
