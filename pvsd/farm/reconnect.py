"""When to try the farm database again after it failed: an exponential backoff.

In an outage every caller of the store (heartbeats, logins, the device view, the snapshot)
would otherwise wait out a connect attempt of its own. Between attempts the store fails at once,
and the servers go on from what they know; the outage is logged once, by whoever sees it change
(pvsd/farm/membership.py), not per call. Time is passed in.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Reconnect"]


@dataclass
class Reconnect:
    first_s: float = 0.25
    max_s: float = 5.0
    failures: int = 0
    _delay_s: float = 0.0
    _next_at: float | None = None

    def may_try(self, now: float) -> bool:
        return self._next_at is None or now >= self._next_at

    def wait_s(self, now: float) -> float:
        """Seconds until the next attempt is allowed (0 when it is)."""
        return 0.0 if self._next_at is None else max(0.0, self._next_at - now)

    def failed(self, now: float) -> float:
        """An attempt (or the connection) failed at `now`: the delay before the next one."""
        self._delay_s = self.first_s if self.failures == 0 else min(self.max_s, self._delay_s * 2)
        self.failures += 1
        self._next_at = now + self._delay_s
        return self._delay_s

    def succeeded(self) -> None:
        self.failures = 0
        self._delay_s = 0.0
        self._next_at = None
