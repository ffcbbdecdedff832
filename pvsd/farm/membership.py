"""Membership: this server joins the farm, proves it is alive with heartbeats, and leaves cleanly.

A server whose heartbeat is older than [farm] dead_after is dead to the others. When
the database is unreachable the server keeps serving and says so in its log, once at
the start of the outage, every OUTAGE_REMINDER_S while it lasts, and when it ends.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import secrets
import socket
from collections.abc import Callable, Mapping

import structlog

from pvsd.errors import Failure
from pvsd.farm.errors import Conflict, FarmReplaced, StoreUnavailable
from pvsd.farm.heartbeats import HeartbeatWatch
from pvsd.farm.records import HeartbeatResult, Server, ServerState
from pvsd.farm.store import FarmStore

__all__ = ["Membership", "MembershipLost", "new_instance_token"]

OUTAGE_REMINDER_S = 30.0


class MembershipLost(Failure):
    """Another process registered under this server's name: two servers must not share one."""


# How long a newcomer watches a fresh heartbeat under its name, in heartbeat intervals.
OWNER_WAIT_HEARTBEATS = 1.5


def new_instance_token() -> str:
    """Names one run of one server process, so a heartbeat can tell itself from an impostor's."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


class Membership:
    def __init__(
        self,
        store: FarmStore,
        log: structlog.stdlib.BoundLogger,
        *,
        name: str,
        address: str,
        ports: Mapping[str, int],
        power: float,
        site: str | None,
        heartbeat_interval: float,
        dead_after: float,
    ) -> None:
        self.store = store
        self.log = log
        self.name = name
        self.address = address
        self.ports = dict(ports)
        self.power = power
        self.site = site
        self.heartbeat_interval = heartbeat_interval
        self.dead_after = dead_after
        self.instance = new_instance_token()
        self._outage_started: float | None = None
        self._outage_reported: float = 0.0
        self._view: list[Server] = []
        self.watchers: list[Callable[[list[Server]], None]] = []
        """Called with the farm's servers after every heartbeat, database up or not."""
        self._view_read_at: float | None = None
        self._heartbeats = HeartbeatWatch(dead_after)
        self.joined = False
        """False while a server started with the database down has not registered yet."""
        self.peer_age: Callable[[str, float], float | None] | None = None
        """How long since a server was heard directly (UDP heartbeats between servers), or None."""

    async def join(self, take_over: bool = False) -> Server:
        """Register this process as the server of its name. A live process already serving under
        the name is left alone (Conflict) unless `take_over`: then it sees its name taken and stops."""
        replace = take_over or await self._owner_seen_dead()
        server = await asyncio.to_thread(
            self.store.register_server,
            self.name,
            self.address,
            self.ports,
            self.power,
            self.instance,
            self.dead_after,
            self.site,
            replace,
        )
        self.log.info("joined the farm", server=self.name, address=self.address, instance=self.instance)
        self.joined = True
        return server

    def seed(self, servers: list[Server], now: float) -> None:
        """Start from the servers of the offline snapshot (the database is down): each counts as
        dead until it is heard directly, this one excepted."""
        self._view = [dataclasses.replace(s, heartbeat_age=None) for s in servers]
        self._view_read_at = now

    async def _record(self) -> Server | None:
        servers = await asyncio.to_thread(self.store.list_servers)
        return next((s for s in servers if s.name == self.name), None)

    async def _owner_seen_dead(self) -> bool:
        """Whether a fresh heartbeat under this name was watched not to move (a crash a moment
        ago, or a dead server whose clock is ahead); Conflict if it moved (a live owner)."""
        first = await self._record()
        if (
            first is None
            or first.state is not ServerState.RUNNING
            or first.heartbeat_age is None
            or first.heartbeat_age > self.dead_after
        ):
            return False
        # A fresh heartbeat: a process that crashed a moment ago, or one that is alive. A live
        # one beats again within a heartbeat interval; a dead one does not, and is replaced.
        self.log.info(
            "this server's name has a fresh heartbeat; waiting a heartbeat to see whether its owner lives",
            server=self.name,
            instance=first.instance,
        )
        await asyncio.sleep(self.heartbeat_interval * OWNER_WAIT_HEARTBEATS)
        again = await self._record()
        if again is not None and (again.last_heartbeat, again.instance) != (
            first.last_heartbeat,
            first.instance,
        ):
            raise Conflict(
                f"server {self.name!r} is running already (instance {again.instance}, at {again.address}); "
                "refusing to start a second one. Stop it, give this server another [server] name, "
                "or start with --take-over to replace it."
            )
        return True

    def known_servers(self, now: float) -> list[Server]:
        """The farm as last read, with heartbeat ages brought up to `now` (loop time).

        While the database is unreachable this is the last view: servers then age into
        dead one by one, except this one, which knows it is alive.
        """
        if self._view_read_at is None:
            return []
        elapsed = max(0.0, now - self._view_read_at)
        aged = []
        for server in self._view:
            if server.name == self.name:
                aged.append(dataclasses.replace(server, heartbeat_age=0.0))
                continue
            if server.heartbeat_age is not None:
                server = dataclasses.replace(server, heartbeat_age=server.heartbeat_age + elapsed)
            heard = self.peer_age(server.name, now) if self.peer_age is not None else None
            if heard is not None and (server.heartbeat_age is None or heard < server.heartbeat_age):
                # Heard directly more lately than the database says: alive, even when the
                # database is down or holds a stale "stopped" from before a restart.
                server = dataclasses.replace(server, heartbeat_age=heard, state=ServerState.RUNNING)
            aged.append(server)
        return aged

    async def refresh(self, now: float) -> None:
        """Read the farm's servers; keeps the old view if the database is unreachable."""
        try:
            view = await asyncio.to_thread(self.store.list_servers)
        except StoreUnavailable:
            return
        self._view, self._view_read_at = self._heartbeats.observe(view, now), now

    async def changed(self) -> None:
        """A server joined, stopped or was removed (pvsd/farm/changes.py): read the farm's
        servers now, and tell the watchers, rather than at the next heartbeat."""
        now = asyncio.get_running_loop().time()
        await self.refresh(now)
        view = self.known_servers(now)
        for watcher in self.watchers:
            watcher(view)

    async def run(self) -> None:
        """Heartbeat until cancelled; raises MembershipLost if another process takes the name."""
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await self.beat(started)
            await asyncio.sleep(max(0.0, self.heartbeat_interval - (loop.time() - started)))

    async def beat(self, now: float) -> None:
        if not self.joined:
            await self._join_late(now)
        try:
            if not self.joined:
                raise StoreUnavailable("this server has not registered in the farm database yet")
            result = await asyncio.to_thread(self.store.heartbeat, self.name, self.instance)
        except StoreUnavailable as error:
            self._database_down(now, str(error))
        except FarmReplaced as error:
            self.log.error("farm database deleted or replaced; stopping", error=str(error))
            raise MembershipLost(str(error)) from error
        else:
            self._database_up(now)
            await self.refresh(now)
            if result is HeartbeatResult.MISSING:
                self.log.warning("this server's farm record was removed; registering again", server=self.name)
                await self.join()
            elif result is HeartbeatResult.TAKEN:
                raise MembershipLost(
                    f"another pvsd process registered as server {self.name!r}; this one stops "
                    "so that two servers never answer under one name"
                )
        view = self.known_servers(now)
        for watcher in self.watchers:
            watcher(view)

    async def _join_late(self, now: float) -> None:
        """A server that started while the database was down registers once it is back."""
        try:
            await self.join()
        except StoreUnavailable:
            return
        except Conflict as error:
            # Another process took this name during the outage: two must not serve under one.
            raise MembershipLost(str(error)) from error
        self.log.info("registered in the farm database, which was down when this server started")

    async def leave(self) -> None:
        if not self.joined:
            return
        try:
            owned = await asyncio.to_thread(self.store.stop_server, self.name, self.instance)
        except (StoreUnavailable, FarmReplaced) as error:
            self.log.warning(
                "could not mark this server stopped; the farm will see it dead after dead_after",
                error=str(error),
                dead_after=self.dead_after,
            )
            return
        if owned:
            self.log.info("left the farm", server=self.name)

    def _database_down(self, now: float, error: str) -> None:
        if self._outage_started is None:
            self._outage_started = self._outage_reported = now
            self.log.warning("farm database unreachable; serving on from what is known", error=error)
        elif now - self._outage_reported >= OUTAGE_REMINDER_S:
            self._outage_reported = now
            self.log.warning(
                "farm database still unreachable", error=error, outage_s=round(now - self._outage_started, 1)
            )

    def _database_up(self, now: float) -> None:
        if self._outage_started is not None:
            self.log.info("farm database reachable again", outage_s=round(now - self._outage_started, 1))
            self._outage_started = None
