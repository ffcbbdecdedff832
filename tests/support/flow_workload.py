"""A random workload for a target's Flow and the sequential model it must match: the part of the
lossy-channel tests that does not depend on what answers the flow (a fake or the real server core)."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Generic, TypeVar

from pvsd.target.flow import Completion, Flow

SECTOR = 512
T = TypeVar("T")


class Workload:
    """Queues `operations` (kind r/w/f, first sector, sectors) on the flow a few at a time, keeps
    the model of the disk they should produce, and collects the completions."""

    def __init__(
        self, flow: Flow, operations: list[tuple[str, int, int]], disk: bytes, rng: random.Random
    ) -> None:
        self.flow = flow
        self.pending = list(operations)
        self.model = bytearray(disk)
        self.sectors = len(disk) // SECTOR
        self.rng = rng
        self.expected: dict[int, Completion] = {}
        self.got: dict[int, Completion] = {}

    def maybe_queue(self) -> None:
        """Now and then (and whenever the flow is idle) the next operation; reads expect the model
        as it stands, since the flow orders conflicting operations."""
        flow = self.flow
        if not self.pending or (self.rng.random() >= 0.3 and flow.open_handles):
            return
        kind, sector, count = self.pending.pop(0)
        offset, length = sector * SECTOR, min(count, self.sectors - sector) * SECTOR
        if kind == "r":
            self.expected[flow.read(offset, length)] = Completion(
                0, bytes(self.model[offset : offset + length])
            )
        elif kind == "w":
            data = self.rng.randbytes(length)
            self.model[offset : offset + length] = data
            self.expected[flow.write(offset, data)] = Completion(0, None)
        else:
            self.expected[flow.flush()] = Completion(0, None)

    def collect(self) -> None:
        for completion in self.flow.completions():
            self.got[completion.handle] = completion

    @property
    def finished(self) -> bool:
        flow = self.flow
        return not self.pending and flow.open_handles == 0 and flow.queued == 0

    def idle(self, now: float) -> float | None:
        """With nothing on the wire: the time to jump to (the flow's next deadline), or None when done."""
        deadline = self.flow.next_deadline()
        if deadline is None and self.finished:
            return None
        return now if deadline is None else max(now, deadline)

    def stuck(self) -> str:
        flow = self.flow
        return f"not finished: {flow.open_handles} handles open, {flow.in_flight} requests in flight"

    def check(self) -> None:
        self.collect()
        assert self.got == {handle: Completion(handle, c.data, None) for handle, c in self.expected.items()}


class BadChannel(Generic[T]):
    """One direction of a network that loses, duplicates and reorders what crosses it."""

    def __init__(self, rng: random.Random, drop: float, duplicate: float) -> None:
        self.rng = rng
        self.drop = drop
        self.duplicate = duplicate
        self.queue: list[T] = []

    def __bool__(self) -> bool:
        return bool(self.queue)

    def deliver_some(self, receive: Callable[[T], None]) -> None:
        """Some of what is in flight, in any order; each may be lost, or arrive again later."""
        rng = self.rng
        rng.shuffle(self.queue)
        take = rng.randint(1, len(self.queue))
        batch, self.queue = self.queue[:take], self.queue[take:]
        for item in batch:
            if rng.random() >= self.drop:
                receive(item)
            if rng.random() < self.duplicate:
                self.queue.append(item)
