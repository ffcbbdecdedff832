"""Log lines about floods, at most one per key and interval, each saying how many it stands for.

A refusal that a hostile or broken client can repeat at line rate must not write one line per
packet: the log would grow at the attacker's pace and hide everything else. Keys are a fixed
set (refusal codes, reasons), never text a client chose, so the table stays small. Pure: the
caller passes the time.
"""

from __future__ import annotations

__all__ = ["REFUSAL_LOG_INTERVAL_S", "LogRate"]

REFUSAL_LOG_INTERVAL_S = 60.0  # refusals anyone can provoke: one line a minute per reason

_MAX_KEYS = 1024  # a bound even if a caller's keys were not a fixed set


class LogRate:
    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def due(self, key: str, now: float) -> int | None:
        """None while `key` was logged within the interval (the event is counted); else how many
        events this line stands for (1, plus those held back since the last line)."""
        held = self._held.get(key, 0) + 1
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._held[key] = held
            return None
        if len(self._last) >= _MAX_KEYS and key not in self._last:
            self._last.clear()
            self._held.clear()
        self._last[key] = now
        self._held[key] = 0
        return held
