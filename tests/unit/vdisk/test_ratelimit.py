"""Replication's bandwidth cap: the long-run rate is the cap, whatever the piece sizes."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pvsd.vdisk.ratelimit import RateLimit


def test_no_cap_never_waits() -> None:
    limit = RateLimit(0)
    assert all(limit.delay(0.0, 1 << 30) == 0.0 for _ in range(10))


def test_a_burst_of_one_second_goes_at_once_then_the_rate_holds() -> None:
    limit = RateLimit(1000)
    assert limit.delay(0.0, 1000) == 0.0
    assert limit.delay(0.0, 500) == 0.5
    assert limit.delay(10.0, 1000) == 0.0  # refilled, but never past one burst


@given(st.lists(st.integers(1, 5000), min_size=1, max_size=50))
def test_sending_after_each_delay_keeps_to_the_rate(sizes: list[int]) -> None:
    limit = RateLimit(1000)
    now = 0.0
    for size in sizes:
        now += limit.delay(now, size)
    # Everything after the first second's burst went at no more than 1000 bytes/s.
    assert sum(sizes) <= 1000 + 1000 * now + 1e-6
