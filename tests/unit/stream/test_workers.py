"""How the login server spreads new sessions over the I/O worker processes."""

from __future__ import annotations

from pathlib import Path

from pvsd.log import get_logger
from pvsd.stream.io import IoSettings
from pvsd.stream.session import IoStats
from pvsd.stream.workers import StreamReport, StreamWorkers, stream_worker_count


def workers(ports: range) -> StreamWorkers:
    settings = IoSettings("00" * 32, Path(), Path(), 1448, 32768, 60.0)
    pool = StreamWorkers(settings, "127.0.0.1", ports, "", get_logger("test"))
    pool._pool.alive = lambda key: True  # type: ignore[method-assign]
    pool._pool._workers = dict.fromkeys(ports)  # type: ignore[arg-type]
    return pool


def give(pool: StreamWorkers) -> int:
    """What the login server does for a session placed here: the least loaded port, counted at once."""
    loads = pool.port_loads()
    port = min(loads, key=lambda p: (loads[p], p))
    pool.assign(port)
    return port


def test_a_burst_of_logins_is_spread_before_any_worker_reports() -> None:
    pool = workers(range(6911, 6913))
    assert [give(pool) for _ in range(4)] == [6911, 6912, 6911, 6912]


def test_reported_sessions_replace_the_guesses() -> None:
    pool = workers(range(6911, 6913))
    give(pool)
    give(pool)
    pool.on_report(6911, StreamReport((1, 2, 3), IoStats()))
    assert pool.port_loads() == {6911: 3, 6912: 1}
    assert give(pool) == 6912


def test_one_worker_per_port_at_most() -> None:
    assert stream_worker_count(8, range(6911, 6913)) == 2
    assert stream_worker_count(1, range(6911, 6931)) == 1
