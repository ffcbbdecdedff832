"""Farm changes seen as they happen, farm-wide: PostgreSQL LISTEN/NOTIFY.

Every audited change NOTIFYs `CHANNEL` with its action ("device.add", "server.stop", ...) in
its own transaction (pvsd/farm/store.py), so every listening server hears of it at commit.
A ChangeFeed holds one connection of its own that LISTENs and wakes the subscribers whose
action prefixes match. Wake-ups are coalesced: a burst of changes costs a subscriber the refresh
in flight and one more after it, never one per change.

The periodic refreshes stay, as the fallback: when the feed's connection is lost it says so
once, reconnects with backoff, and on its return wakes every subscriber once for what it
missed. SQLite farms (one host) have no feed; their servers go on polling.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import psycopg
import structlog

from pvsd.farm.backend import redact_url
from pvsd.farm.errors import first_line
from pvsd.farm.postgres import CHANGES_CHANNEL, CONNECT_TIMEOUT_S
from pvsd.farm.reconnect import Reconnect

__all__ = ["CHANNEL", "ChangeFeed"]

CHANNEL = CHANGES_CHANNEL

Refresh = Callable[[], Awaitable[None]]


@dataclass
class _Subscriber:
    name: str
    prefixes: tuple[str, ...]
    refresh: Refresh
    log: structlog.stdlib.BoundLogger
    task: asyncio.Task[None] | None = None
    again: bool = False
    woken: int = field(default=0)

    def wants(self, action: str) -> bool:
        return action.startswith(self.prefixes)

    def wake(self) -> None:
        self.woken += 1
        if self.task is not None and not self.task.done():
            self.again = True
            return
        self.task = asyncio.get_running_loop().create_task(self._run(), name=f"change-{self.name}")

    async def _run(self) -> None:
        while True:
            self.again = False
            try:
                await self.refresh()
            except Exception:
                self.log.exception("refresh after a farm change failed", subscriber=self.name)
            if not self.again:
                return


class ChangeFeed:
    def __init__(self, url: str, log: structlog.stdlib.BoundLogger) -> None:
        self.url = url
        self.log = log
        self.listening = False
        self.heard = 0
        self._subscribers: list[_Subscriber] = []
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    @property
    def available(self) -> bool:
        """Whether this farm's database has a feed at all (PostgreSQL)."""
        return self.url.startswith(("postgresql://", "postgres://"))

    def subscribe(self, name: str, prefixes: tuple[str, ...], refresh: Refresh) -> None:
        """Call `refresh` soon after each change whose action starts with one of `prefixes`."""
        self._subscribers.append(_Subscriber(name, prefixes, refresh, self.log))

    async def start(self, wait_s: float = CONNECT_TIMEOUT_S) -> None:
        """Start listening; waits up to `wait_s` for the first LISTEN, then goes on regardless."""
        if not self.available:
            return
        self._task = asyncio.get_running_loop().create_task(self._run(), name="farm-changes")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), wait_s)

    def dispatch(self, action: str) -> None:
        self.heard += 1
        for subscriber in self._subscribers:
            if subscriber.wants(action):
                subscriber.wake()

    def _wake_all(self) -> None:
        for subscriber in self._subscribers:
            subscriber.wake()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        backoff = Reconnect(first_s=0.5, max_s=10.0)
        lost = False
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S
                ) as connection:
                    await connection.execute(f"LISTEN {CHANNEL}")
                    self.listening = True
                    self._ready.set()
                    backoff.succeeded()
                    if lost:
                        self.log.info("farm change feed back", database=redact_url(self.url))
                        self._wake_all()  # what changed while it was down
                        lost = False
                    async for notice in connection.notifies():
                        self.dispatch(notice.payload)
            except (psycopg.Error, OSError) as error:
                self.listening = False
                self._ready.set()
                if not lost:
                    self.log.warning(
                        "farm change feed lost: changes are seen at the next refresh until it is back",
                        database=redact_url(self.url),
                        error=first_line(error),
                    )
                    lost = True
                await asyncio.sleep(backoff.failed(loop.time()))

    async def close(self) -> None:
        tasks = [self._task] if self._task is not None else []
        tasks += [s.task for s in self._subscribers if s.task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
