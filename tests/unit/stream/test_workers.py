"""How the login server spreads new sessions over the I/O worker processes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pvsd.log import get_logger
from pvsd.stream.io import IoSettings
from pvsd.stream.workers import StreamWorkers, stream_worker_count


class _Alive:
    def is_alive(self) -> bool:
        return True


def workers(ports: range) -> StreamWorkers:
    settings = IoSettings("00" * 32, Path(), Path(), 1448, 32768, 60.0)
    pool = StreamWorkers(settings, "127.0.0.1", ports, "", get_logger("test"))
    fake: Any = [(port, _Alive(), None) for port in ports]
    pool._workers = fake
    return pool


def test_a_burst_of_logins_is_spread_before_any_worker_reports() -> None:
    pool = workers(range(6911, 6913))
    assert [pool.least_loaded_port() for _ in range(4)] == [6911, 6912, 6911, 6912]


def test_reported_sessions_replace_the_guesses() -> None:
    pool = workers(range(6911, 6913))
    pool.least_loaded_port()
    pool.least_loaded_port()
    pool._on_stats(6911, [1, 2, 3], {})
    assert pool.least_loaded_port() == 6912


def test_one_worker_per_port_at_most() -> None:
    assert stream_worker_count(8, range(6911, 6913)) == 2
    assert stream_worker_count(1, range(6911, 6931)) == 1
