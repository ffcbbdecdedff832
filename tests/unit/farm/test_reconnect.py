"""The farm store's reconnect backoff: in an outage calls fail at once between attempts, and
the delay grows to a cap; the first call after the database returns reconnects."""

from __future__ import annotations

import socket

import pytest

from pvsd.farm import StoreUnavailable
from pvsd.farm.backend import Connection
from pvsd.farm.postgres import PostgresBackend
from pvsd.farm.reconnect import Reconnect
from pvsd.farm.store import FarmStore


def test_the_delay_doubles_to_its_cap_and_a_success_resets_it() -> None:
    backoff = Reconnect(first_s=0.25, max_s=2.0)
    assert backoff.may_try(0.0)
    delays = [backoff.failed(10.0) for _ in range(6)]
    assert delays == [0.25, 0.5, 1.0, 2.0, 2.0, 2.0]
    assert not backoff.may_try(11.9) and backoff.wait_s(11.0) == pytest.approx(1.0)
    assert backoff.may_try(12.0)
    backoff.succeeded()
    assert backoff.may_try(0.0) and backoff.failed(0.0) == 0.25


class CountingBackend(PostgresBackend):
    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.attempts = 0

    def connect(self, create: bool) -> Connection:
        self.attempts += 1
        return super().connect(create)


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_calls_between_attempts_fail_at_once_naming_the_database() -> None:
    now = [100.0]
    backend = CountingBackend(f"postgresql://pvsd:secret@127.0.0.1:{_closed_port()}/farm")
    store = FarmStore(backend, "test", clock=lambda: now[0])
    with pytest.raises(StoreUnavailable, match=r"127\.0\.0\.1"):
        store.list_devices()
    for _ in range(5):
        with pytest.raises(StoreUnavailable, match=r"next try in 0\.\d s"):
            store.list_devices()
    assert backend.attempts == 1
    now[0] += 0.3
    with pytest.raises(StoreUnavailable):
        store.list_devices()
    assert backend.attempts == 2
    assert "secret" not in str(store._unavailable)
