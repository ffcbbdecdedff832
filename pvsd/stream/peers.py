"""Sending and hearing the heartbeats between servers (pvsd/stream/peer_heartbeat.py) on the
login port: every heartbeat interval, one datagram to each other server the farm knows."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping

import structlog

from pvsd.farm.membership import Membership
from pvsd.farm.records import ServerState
from pvsd.net.udp import Address
from pvsd.stream.peer_heartbeat import PeerHeartbeats

__all__ = ["PeerLink"]


class PeerLink:
    def __init__(
        self,
        secret: str,
        membership: Membership,
        loads: Callable[[], Mapping[int, int]],
        send: Callable[[bytes, Address], None],
        log: structlog.stdlib.BoundLogger,
    ) -> None:
        self.membership = membership
        self.loads = loads
        self.send = send
        self.log = log
        self.beats = PeerHeartbeats(secret, membership.name)
        self._task: asyncio.Task[None] | None = None
        self._heard_before: set[str] = set()
        membership.peer_age = self.beats.age

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="peer-heartbeats")

    def datagram_received(self, data: bytes, peer: Address) -> None:
        beat = self.beats.receive(data, asyncio.get_running_loop().time())
        if beat is not None and beat.server not in self._heard_before:
            self._heard_before.add(beat.server)
            self.log.info("heard a server directly", peer_server=beat.server, peer=f"{peer[0]}:{peer[1]}")

    def peer_loads(self, server: str) -> Mapping[int, int] | None:
        return self.beats.loads(server)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            datagram = self.beats.next_beat(self.membership.instance, self.loads())
            for server in self.membership.known_servers(loop.time()):
                if server.name == self.membership.name or server.state is ServerState.STOPPED:
                    continue
                port = server.ports.get("login")
                if port:
                    self.send(datagram, (server.address, int(port)))
            await asyncio.sleep(self.membership.heartbeat_interval)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
