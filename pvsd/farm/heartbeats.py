"""Heartbeat ages by observation: how long since a server's heartbeat was last seen to change.

A heartbeat stamp is written with the writer's clock on SQLite (PostgreSQL's `now()` is the
database's). A server whose clock runs two hours ahead writes stamps two hours in the
future; read as "now minus stamp", it stays alive for two hours after it dies. So a
long-running reader (each server's view of the farm) does not trust the difference of two
clocks: it notes, on its own monotonic clock, when each server's stamp last changed, and
the age is the time since then. A skewed clock changes when a stamp changes, never how often.

The first sight of a stamp starts from the age the database reports, clamped to what is
plausible: never below zero (a clock ahead), never past dead_after (a clock behind, which
the next change corrects). Pure: the caller passes the time.
"""

from __future__ import annotations

import dataclasses

from pvsd.farm.records import Server

__all__ = ["HeartbeatWatch"]


class HeartbeatWatch:
    def __init__(self, dead_after: float) -> None:
        self.dead_after = dead_after
        # server name -> ((stamp, instance), monotonic time it was first seen)
        self._seen: dict[str, tuple[tuple[float | None, str], float]] = {}

    def observe(self, servers: list[Server], now: float) -> list[Server]:
        """`servers` as just read, with each heartbeat age by observation at `now`."""
        seen: dict[str, tuple[tuple[float | None, str], float]] = {}
        observed = []
        for server in servers:
            mark = (server.last_heartbeat, server.instance)
            earlier = self._seen.get(server.name)
            if earlier is not None and earlier[0] == mark:
                since = earlier[1]
            elif earlier is not None:
                since = now  # it changed since the last read: the owner is beating
            else:
                reported = server.heartbeat_age if server.heartbeat_age is not None else self.dead_after
                since = now - min(max(reported, 0.0), self.dead_after)
            seen[server.name] = (mark, since)
            age = None if server.last_heartbeat is None else now - since
            observed.append(dataclasses.replace(server, heartbeat_age=age))
        self._seen = seen
        return observed
