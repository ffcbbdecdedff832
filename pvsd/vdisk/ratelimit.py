"""A token bucket for replication's bandwidth cap. Pure: the caller passes the time."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["RateLimit"]


@dataclass
class RateLimit:
    """`bytes_per_s` on average, in bursts of at most `burst` bytes; 0 means no cap."""

    bytes_per_s: float
    burst: float = 0.0
    _tokens: float = 0.0
    _at: float | None = None

    def __post_init__(self) -> None:
        # A burst of one second's worth, at least: a single 4 MiB chunk must always fit.
        self.burst = max(self.burst, self.bytes_per_s)
        self._tokens = self.burst

    def delay(self, now: float, size: int) -> float:
        """Seconds to wait before sending `size` bytes at `now`; the bytes are counted as sent."""
        if self.bytes_per_s <= 0:
            return 0.0
        if self._at is not None:
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.bytes_per_s)
        self._at = now
        self._tokens -= size
        return 0.0 if self._tokens >= 0 else -self._tokens / self.bytes_per_s
