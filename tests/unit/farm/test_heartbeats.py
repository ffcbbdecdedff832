"""Heartbeat ages by observation: a writer's clock skew changes nothing."""

from __future__ import annotations

import dataclasses

from pvsd.farm.heartbeats import HeartbeatWatch
from pvsd.farm.records import Server, ServerHealth, ServerState

DEAD_AFTER = 8.0


def server(stamp: float, age: float, instance: str = "a") -> Server:
    return Server("pvs2", "10.0.0.2", {}, 1.0, None, ServerState.RUNNING, instance, 0.0, stamp, age)


def health(watch: HeartbeatWatch, read: Server, now: float) -> ServerHealth:
    return watch.observe([read], now)[0].health(DEAD_AFTER)


def test_a_stamp_two_hours_ahead_that_stops_moving_is_dead_after_dead_after() -> None:
    watch = HeartbeatWatch(DEAD_AFTER)
    ahead = server(stamp=7200.0, age=-7200.0)
    assert health(watch, ahead, 0.0) is ServerHealth.ALIVE
    assert health(watch, dataclasses.replace(ahead, last_heartbeat=7202.0), 2.0) is ServerHealth.ALIVE
    stuck = dataclasses.replace(ahead, last_heartbeat=7202.0)  # killed: the stamp no longer moves
    assert health(watch, stuck, 9.0) is ServerHealth.ALIVE
    assert health(watch, stuck, 10.5) is ServerHealth.DEAD


def test_a_clock_behind_is_alive_as_soon_as_its_stamp_moves() -> None:
    watch = HeartbeatWatch(DEAD_AFTER)
    behind = server(stamp=0.0, age=7200.0)
    assert watch.observe([behind], 0.0)[0].heartbeat_age == DEAD_AFTER  # plausible at first sight
    moved = watch.observe([dataclasses.replace(behind, last_heartbeat=2.0)], 2.0)[0]
    assert moved.heartbeat_age == 0.0 and moved.health(DEAD_AFTER) is ServerHealth.ALIVE


def test_a_new_instance_counts_as_a_beat() -> None:
    watch = HeartbeatWatch(DEAD_AFTER)
    watch.observe([server(stamp=5.0, age=1.0)], 0.0)
    assert watch.observe([server(stamp=5.0, age=1.0, instance="b")], 7.0)[0].heartbeat_age == 0.0
