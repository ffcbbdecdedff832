"""Farm changes seen farm-wide as they happen (PostgreSQL LISTEN/NOTIFY, pvsd/farm/changes.py).

A device added on one server is published by the other long before its next poll; a burst of
changes costs a subscriber a refresh or two, not one each; sessions wake no one; and a feed
whose connection is cut says so once, comes back by itself and catches up.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import psycopg
from support.log_events import Events
from support.postgres import Cluster
from support.pvsd import pvsd, wait_for
from support.stream import stream_farm

from pvsd.farm import init_farm
from pvsd.farm.changes import ChangeFeed

NEW_MAC = "52:54:00:0c:00:01"
# Far beyond the test's waits: what a server sees in time, it saw through the feed.
SLOW_POLL = {"farm__heartbeat_interval": "30", "farm__dead_after": "90", "api__enabled": "true"}


def test_a_device_added_on_one_server_is_published_by_the_other_at_once(
    tmp_path: Path, pg_cluster: Cluster
) -> None:
    url = pg_cluster.create_database(f"changes_{uuid.uuid4().hex[:8]}")
    with stream_farm(tmp_path, database=url, **SLOW_POLL) as farm:
        farm.start("pvs1")
        farm.start("pvs2")
        added = time.monotonic()
        done = pvsd(farm.env, "device", "add", NEW_MAC, "--name", "late", "--vdisk", "disk")
        assert done.returncode == 0, done.stderr

        def published(name: str) -> bool:
            return any(
                e["event"] == "device script published" and e.get("mac") == NEW_MAC
                for e in farm.processes[name].log_events()
            )

        wait_for(lambda: published("pvs1") and published("pvs2"), timeout=10)
        print(f"device add seen by both servers after {time.monotonic() - added:.2f} s")


async def _feed_run(url: str, events: Events) -> None:
    init_farm(url, "changes", "test")[0].close()
    refreshes = {"devices": 0, "servers": 0}
    seen: list[int] = []

    async def devices() -> None:
        refreshes["devices"] += 1
        await asyncio.sleep(0.2)  # a refresh takes time: wake-ups meanwhile are coalesced
        seen.append(refreshes["devices"])

    async def servers() -> None:
        refreshes["servers"] += 1

    feed = ChangeFeed(url, events.logger)
    feed.subscribe("devices", ("device.",), devices)
    feed.subscribe("servers", ("server.",), servers)
    await feed.start()
    assert feed.listening
    store = init_farm(url, "changes", "writer")[0]
    try:
        for n in range(20):
            await asyncio.to_thread(store.add_device, f"02:00:00:00:0c:{n:02x}", f"burst{n}")
        await _until(lambda: feed.heard >= 20 and bool(seen) and seen[-1] == refreshes["devices"])
        assert 1 <= refreshes["devices"] <= 10, refreshes
        assert refreshes["servers"] == 0  # device changes wake the device subscribers only

        # The listener's connection is cut: the feed says so once, comes back and catches up.
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE query LIKE 'LISTEN%' AND pid <> pg_backend_pid()"
            )
        await _until(lambda: refreshes["servers"] >= 1)  # the catch-up wakes everyone once
        await _until(lambda: feed.listening)
        before = refreshes["devices"]
        await asyncio.to_thread(store.add_device, "02:00:00:00:0c:ff", "after")
        await _until(lambda: refreshes["devices"] > before)
    finally:
        store.close()
        await feed.close()


async def _until(check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 15.0
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


def test_a_burst_of_changes_is_coalesced_and_a_cut_feed_comes_back(pg_cluster: Cluster) -> None:
    url = pg_cluster.create_database(f"changes_{uuid.uuid4().hex[:8]}")
    events = Events()
    asyncio.run(_feed_run(url, events))
    lost = [e for e in events.all() if str(e["event"]).startswith("farm change feed lost")]
    assert len(lost) == 1 and len(events.named("farm change feed back")) == 1, events.all()
