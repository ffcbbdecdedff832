"""One TFTP read transfer as a pure state machine: packets and time in, datagrams and a deadline out.

No sockets, no clock: the glue passes `now` (seconds, any monotonic origin) into every
call, sends what `take_datagrams()` returns, and calls `on_timer(now)` once `now` reaches
`deadline`. Blocks are numbered from 1 without limit inside; on the wire they wrap past
65535 to 0, so files of any size go through (RFC 1350 leaves this open; tftp-hpa, atftp,
curl and iPXE all expect 0 after 65535).

Retransmission follows RFC 1123 4.2.3.1 (no sorcerer's apprentice): only the timer
resends. An ACK for the block before the window is a duplicate and is ignored, and so is an
ACK for a block not sent yet. With a window (RFC 7440), an ACK inside the window means the
client lost what followed, so the next window starts right after the acknowledged block.

Until block 1 is acknowledged the address has not shown that a client is there: it may be a
flood, or a forged source that makes us send at someone else. So before that, at most one
flight is out (the OACK, then the first window), it is resent at most
`first_block_retransmits` times, and the transfer ends silently, without a parting ERROR,
after `first_block_timeout` (Outcome.UNACKNOWLEDGED). A real PXE client acknowledges within
milliseconds, and asks again if our first answer was lost. A transfer never answers a
client's packet either: an ERROR ends it, and anything but an ACK or an ERROR ends it as a
protocol error, both without a reply, so no two peers can bounce packets off each other.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol

from pvsd.tftp.codec import (
    MAX_BLKSIZE,
    MIN_BLKSIZE,
    Ack,
    Error,
    ErrorCode,
    OptionAck,
    Options,
    Packet,
    ReadRequest,
    Refusal,
    TftpError,
    data_header,
    encode,
)

__all__ = ["MODES", "BlockSource", "Limits", "Outcome", "ReadSession", "Summary", "check_request"]

DEFAULT_BLKSIZE = 512
MAX_WINDOWSIZE = 65535  # RFC 7440
MODES = ("octet", "netascii")


class BlockSource(Protocol):
    """What a transfer reads from: a fixed size and random access (see sources.py)."""

    @property
    def size(self) -> int: ...

    def read(self, offset: int, length: int) -> bytes: ...


@dataclass(frozen=True)
class Limits:
    max_blksize: int = MAX_BLKSIZE
    """The largest block the path carries without fragmentation (the glue derives it from the MTU)."""
    max_windowsize: int = 64
    timeout: float = 1.0
    """First retransmission timeout; each retransmission doubles it, up to max_timeout."""
    max_timeout: float = 8.0
    abandon_after: float = 30.0
    """A transfer with no progress for this long is given up."""
    first_block_timeout: float = 3.0
    """A transfer whose block 1 is not acknowledged this long after the request ends, silently."""
    first_block_retransmits: int = 3
    """Resends, in all, of what goes out before block 1 is acknowledged (the OACK, the first window)."""


class Outcome(enum.StrEnum):
    RUNNING = "running"
    COMPLETE = "complete"
    CLIENT_ERROR = "client-error"  # the client sent ERROR: it gave up, or only wanted tsize
    ABANDONED = "abandoned"  # no progress for abandon_after seconds
    UNACKNOWLEDGED = "unacknowledged"  # block 1 never acknowledged: no client there, or a flood
    PROTOCOL_ERROR = "protocol-error"  # the client sent something a reader never sends


@dataclass(frozen=True)
class Summary:
    filename: str
    outcome: Outcome
    size: int
    bytes_sent: int
    blksize: int
    windowsize: int
    retransmits: int
    duration: float
    detail: str


def check_request(request: ReadRequest) -> None:
    """Refuse what no file source can serve, whatever the file: a bad mode."""
    if request.mode not in MODES:
        raise TftpError(Refusal.MODE)


def _int_option(value: str, low: int, high: int) -> int | None:
    """An option's integer value if it is within [low, high]; otherwise the option is ignored."""
    try:
        number = int(value)
    except ValueError:
        return None
    return number if low <= number <= high else None


class ReadSession:
    def __init__(self, request: ReadRequest, source: BlockSource, limits: Limits, now: float) -> None:
        self.request = request
        self.source = source
        self.limits = limits
        self.blksize = DEFAULT_BLKSIZE
        self.windowsize = 1
        self.timeout = limits.timeout
        self.oack = self._negotiate(request.options)
        self.total_blocks = source.size // self.blksize + 1  # the last block is short, maybe empty
        self.outcome = Outcome.RUNNING
        self.detail = ""
        self.retransmits = 0
        self.started = now
        self.finished = now
        self.last_progress = now
        self._base = 1 if not self.oack else 0  # lowest block not yet acknowledged; 0 is the OACK
        self._sent_upto = 0
        self._outbox: list[bytes] = []
        self._current_timeout = self.timeout
        self._first_block_by = now + limits.first_block_timeout
        self._unacknowledged_resends = 0
        self.deadline = self._due(now + self._current_timeout)
        if self.oack:
            self._outbox.append(encode(OptionAck(self.oack)))
        else:
            self._send_window()

    # -- negotiation (RFC 2347-2349, 7440) ---------------------------------------------------------

    def _negotiate(self, options: Options) -> Options:
        accepted: list[tuple[str, str]] = []
        seen: set[str] = set()
        for name, value in options:
            # RFC 2347 is silent on duplicates: the first one decides, valid or not, and each
            # option is echoed once (1000 x tsize in a request made a 13 kB OACK).
            if name in seen:
                continue
            seen.add(name)
            if name == "blksize":
                size = _int_option(value, MIN_BLKSIZE, MAX_BLKSIZE)
                if size is not None:
                    self.blksize = min(size, self.limits.max_blksize)
                    accepted.append((name, str(self.blksize)))
            elif name == "tsize":
                # The client sends 0 in a read request and wants the size back.
                if _int_option(value, 0, 2**63) is not None:
                    accepted.append((name, str(self.source.size)))
            elif name == "timeout":
                seconds = _int_option(value, 1, 255)
                if seconds is not None:
                    self.timeout = float(seconds)
                    accepted.append((name, str(seconds)))
            elif name == "windowsize":
                window = _int_option(value, 1, MAX_WINDOWSIZE)
                if window is not None:
                    self.windowsize = min(window, self.limits.max_windowsize)
                    accepted.append((name, str(self.windowsize)))
            # Unknown options are ignored, as RFC 2347 asks.
        return tuple(accepted)

    # -- what the glue calls -----------------------------------------------------------------------

    @property
    def done(self) -> bool:
        return self.outcome is not Outcome.RUNNING

    def take_datagrams(self) -> list[bytes]:
        """Datagrams due now, in order. A window's DATA packets come out together, equal-sized
        except perhaps the last, so the glue can hand them to the kernel in one segmented send."""
        out, self._outbox = self._outbox, []
        return out

    def receive(self, packet: Packet, now: float) -> None:
        if self.done:
            return
        if isinstance(packet, Ack):
            self._on_ack(packet.block, now)
        elif isinstance(packet, Error):
            # Never answered: an answer to an ERROR is how two peers start a ping-pong.
            message = packet.message[:100]
            self._finish(Outcome.CLIENT_ERROR, now, f"client sent error {packet.code}: {message}")
        else:
            # RRQ/WRQ/DATA/OACK on a read transfer's port: the peer is confused or hostile. No
            # answer: in single-port mode this port is the service port, where a DATA or an OACK
            # may come from another server (or one whose address was forged).
            self._finish(Outcome.PROTOCOL_ERROR, now, f"client sent {type(packet).__name__} during a read")

    def on_timer(self, now: float) -> None:
        if self.done or now < self.deadline:
            return
        silent = now - self.last_progress
        if not self._first_block_acknowledged and (
            now >= self._first_block_by or silent >= self.limits.abandon_after
        ):
            # No parting ERROR: nobody at this address has shown it is a client.
            self._finish(
                Outcome.UNACKNOWLEDGED, now, f"block 1 not acknowledged {now - self.started:.1f} s on"
            )
            return
        if silent >= self.limits.abandon_after:
            self._outbox.append(encode(Error(ErrorCode.NOT_DEFINED, "transfer timed out")))
            self._finish(
                Outcome.ABANDONED, now, f"no acknowledgement for {silent:.1f} s at block {self._base}"
            )
            return
        if not self._first_block_acknowledged:
            if self._unacknowledged_resends >= self.limits.first_block_retransmits:
                self.deadline = self._first_block_by  # resent enough: wait for the end
                return
            self._unacknowledged_resends += 1
        if self._base == 0:
            self._outbox.append(encode(OptionAck(self.oack)))
            self.retransmits += 1
        else:
            self.retransmits += self._send_window()
        self._current_timeout = min(self._current_timeout * 2, max(self.limits.max_timeout, self.timeout))
        self.deadline = self._due(now + self._current_timeout)

    def client_gone(self, now: float, detail: str) -> None:
        """The glue learnt the client cannot be reached (ICMP port unreachable)."""
        if not self.done:
            self._finish(Outcome.CLIENT_ERROR, now, detail)

    def summary(self) -> Summary:
        acked_blocks = max(0, self._base - 1)
        return Summary(
            filename=self.request.filename,
            outcome=self.outcome,
            size=self.source.size,
            bytes_sent=min(self.source.size, acked_blocks * self.blksize),
            blksize=self.blksize,
            windowsize=self.windowsize,
            retransmits=self.retransmits,
            duration=self.finished - self.started,
            detail=self.detail,
        )

    # -- internals ---------------------------------------------------------------------------------

    @property
    def _first_block_acknowledged(self) -> bool:
        return self._base > 1

    def _due(self, resend_at: float) -> float:
        """The next deadline: the resend, or the end of the wait for block 1's ACK if sooner."""
        return resend_at if self._first_block_acknowledged else min(resend_at, self._first_block_by)

    def _on_ack(self, wire_block: int, now: float) -> None:
        # Map the 16-bit number onto the blocks that can be acknowledged: base-1 .. sent_upto.
        floor = self._base - 1
        offset = (wire_block - floor) & 0xFFFF
        if offset > self._sent_upto - floor:
            return  # not a block of this window: stale from long ago, or nonsense
        acked = floor + offset
        if acked == floor:
            return  # a duplicate: resending here is the sorcerer's apprentice (RFC 1123 4.2.3.1)
        self._base = acked + 1
        self.last_progress = now
        self._current_timeout = self.timeout
        self.deadline = self._due(now + self._current_timeout)
        if self._base > self.total_blocks:
            self._finish(Outcome.COMPLETE, now, "")
            return
        # A partial ACK rolls the window back to the block after it; a full ACK moves it on.
        self._sent_upto = acked
        self._send_window()

    def _send_window(self) -> int:
        """Queue DATA from the base for one window; return how many blocks were queued."""
        first = self._base
        last = min(self._base + self.windowsize - 1, self.total_blocks)
        blksize = self.blksize
        read = self.source.read
        for block in range(first, last + 1):
            self._outbox.append(data_header(block) + read((block - 1) * blksize, blksize))
        self._sent_upto = last
        return last - first + 1

    def _finish(self, outcome: Outcome, now: float, detail: str) -> None:
        self.outcome = outcome
        self.detail = detail
        self.finished = now
        self.deadline = float("inf")
