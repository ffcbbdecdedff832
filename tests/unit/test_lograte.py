from __future__ import annotations

from pvsd.lograte import LogRate


def test_one_line_per_key_and_interval_saying_how_many_it_stands_for() -> None:
    rate = LogRate(60.0)
    assert rate.due("UNKNOWN_MAC", 0.0) == 1
    assert [rate.due("UNKNOWN_MAC", t) for t in (1.0, 2.0, 59.0)] == [None, None, None]
    assert rate.due("NO_VDISK", 3.0) == 1  # keys are counted apart
    assert rate.due("UNKNOWN_MAC", 60.0) == 4  # this one and the three held back
    assert rate.due("UNKNOWN_MAC", 61.0) is None
