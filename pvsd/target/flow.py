"""Keeps a target's reads and writes in flight on one stream session: a pure engine, time passed in.

No sockets, no clock: the glue (client.py) queues work with `read`, `write` and `flush`, sends
what `poll(now)` returns, feeds every reply to `receive`, wakes up at `next_deadline()` and
drains `completions()`. A READ is answered by a burst of DATA datagrams that may be lost,
duplicated or reordered, so a burst collects its pieces into a preallocated buffer and, when
its timer expires, asks again for the missing ranges only (docs/protocol.md, "Reads").

Ordering: requests that are in flight together are served in any order, so a handle waits
for every earlier open handle it conflicts with (a read after an overlapping write, a write
after an overlapping read or write, a flush after every write) before any of its requests
goes out. Callers therefore see sequential semantics without ordering themselves.

Timeouts follow RFC 6298 with Karn's rule. A request's timer restarts whenever its reply makes
progress, so a long burst streaming in slowly is not re-requested while it still arrives.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from pvsd.stream.wire import Data, ErrorCode, ErrorReply, Flush, Header, Read, Write, WriteAck

__all__ = ["Completion", "Flow", "FlowStats", "Outgoing", "RttEstimator"]

_ID_SPACE = 1 << 32  # request ids are u32 on the wire; 0 is never used

_READ, _WRITE, _FLUSH = 0, 1, 2
_QUEUED, _SENT, _DONE = 0, 1, 2
_NO_VIEW = memoryview(bytearray())


class RttEstimator:
    """RFC 6298 section 2: smoothed RTT and variance give the retransmission timeout.

    The clock granularity term G is left out: `min_rto` bounds the timeout from below instead.
    """

    __slots__ = ("initial_rto", "max_rto", "min_rto", "rto", "rttvar", "srtt")

    ALPHA = 1 / 8
    BETA = 1 / 4
    K = 4

    def __init__(self, initial_rto: float = 0.5, min_rto: float = 0.02, max_rto: float = 2.0) -> None:
        if not 0 < min_rto <= max_rto:
            raise ValueError(f"need 0 < min_rto <= max_rto, got {min_rto} and {max_rto}")
        self.initial_rto = initial_rto
        self.min_rto = min_rto
        self.max_rto = max_rto
        self.srtt: float | None = None
        self.rttvar: float | None = None
        self.rto = self._clamp(initial_rto)

    def _clamp(self, rto: float) -> float:
        return min(max(rto, self.min_rto), self.max_rto)

    def reset(self) -> None:
        """Forget every sample: another server's path says nothing about this one's."""
        self.srtt = None
        self.rttvar = None
        self.rto = self._clamp(self.initial_rto)

    def sample(self, rtt: float) -> None:
        rtt = max(rtt, 0.0)
        if self.srtt is None or self.rttvar is None:
            self.srtt = rtt
            self.rttvar = rtt / 2
        else:
            # 2.3: the variance is updated with the old srtt, so it goes first
            self.rttvar = (1 - self.BETA) * self.rttvar + self.BETA * abs(self.srtt - rtt)
            self.srtt = (1 - self.ALPHA) * self.srtt + self.ALPHA * rtt
        self.rto = self._clamp(self.srtt + self.K * self.rttvar)

    def backoff(self) -> None:
        """5.5: each timeout doubles the timeout, until a new sample recomputes it."""
        self.rto = min(self.rto * 2, self.max_rto)


@dataclass(frozen=True)
class Outgoing:
    """One datagram to send: `message` with `request_id` in its header (the glue adds the session)."""

    request_id: int
    message: Read | Write | Flush


@dataclass(frozen=True)
class Completion:
    """A finished handle: `data` is the whole range for a successful read, None otherwise."""

    handle: int
    data: bytes | None = field(repr=False)
    error: ErrorReply | None = None


@dataclass(frozen=True)
class FlowStats:
    bytes_read: int
    """Bytes of reads completed successfully (each byte once, whatever was retransmitted)."""
    bytes_written: int
    """Bytes of writes whose every piece was acknowledged."""
    requests_sent: int
    """First transmissions: one per read burst, write piece or flush."""
    retransmits: int
    """Requests sent again, by a timeout or by resend_all."""
    timeouts: int
    """Polls that found at least one expired timer."""
    ignored: int
    """DATA and acks that matched nothing in flight or carried nothing new: late, duplicated, stray."""


class _Handle:
    __slots__ = (
        "buffer",
        "dependents",
        "done",
        "end",
        "ident",
        "kind",
        "offset",
        "pending",
        "requests",
        "waiting",
    )

    def __init__(self, ident: int, kind: int, offset: int, end: int) -> None:
        self.ident = ident
        self.kind = kind
        self.offset = offset
        self.end = end
        self.buffer = bytearray(end - offset) if kind == _READ else bytearray()
        self.requests: list[_Request] = []
        self.pending = 0
        self.waiting = 0
        self.dependents: list[_Handle] = []
        self.done = False


class _Request:
    """One request id's worth of work: a read burst, a write piece or a flush."""

    __slots__ = (
        "count",
        "deadline",
        "end",
        "handle",
        "kind",
        "length",
        "message",
        "offset",
        "received",
        "request_id",
        "retransmitted",
        "sampled",
        "sent_at",
        "sequence",
        "state",
        "view",
    )

    def __init__(self, handle: _Handle, message: Read | Write | Flush, offset: int, length: int) -> None:
        self.handle = handle
        self.kind = handle.kind
        self.message = message
        self.offset = offset
        self.length = length
        self.end = offset + length
        self.sequence = message.sequence if isinstance(message, Write | Flush) else -1
        # A view into the handle's buffer: pieces land in place and the completion copies once.
        start = offset - handle.offset
        self.view = memoryview(handle.buffer)[start : start + length] if self.kind == _READ else _NO_VIEW
        # Piece start -> piece end. The byte count may overstate coverage when pieces overlap
        # (another server's piece grid, sector-rounded gap requests), so reaching the length
        # triggers an exact check rather than completion.
        self.received: dict[int, int] = {}
        self.count = 0
        self.request_id = 0
        self.state = _QUEUED
        self.sent_at = 0.0
        self.deadline = 0.0
        self.retransmitted = False
        self.sampled = False


class Flow:
    """Reads, writes and flushes of one session, with at most `window` requests in flight."""

    def __init__(
        self,
        *,
        disk_size: int,
        sector_size: int,
        max_payload: int,
        max_burst: int,
        window: int,
        initial_rto: float = 0.5,
        min_rto: float = 0.02,
        max_rto: float = 2.0,
        first_request_id: int = 1,
        first_sequence: int = 1,
    ) -> None:
        if sector_size <= 0 or disk_size < 0:
            raise ValueError(f"bad geometry: disk size {disk_size}, sector size {sector_size}")
        if max_payload < sector_size or max_burst < sector_size:
            raise ValueError(f"max payload {max_payload} and max burst {max_burst} must hold a sector")
        if window < 1:
            raise ValueError(f"window must be at least 1, got {window}")
        if not 0 < first_request_id < _ID_SPACE:
            raise ValueError(f"first request id {first_request_id} is not a non-zero u32")
        self.disk_size = disk_size
        self.sector_size = sector_size
        self.max_payload = max_payload
        self.max_burst = max_burst
        self.window = window
        # A WRITE carries whole sectors and a READ asks for whole sectors (docs/protocol.md).
        self._write_chunk = max_payload - max_payload % sector_size
        self._burst = max_burst - max_burst % sector_size
        self.rtt = RttEstimator(initial_rto, min_rto, max_rto)
        self._next_request_id = first_request_id
        self._next_sequence = first_sequence
        self._next_handle = 1
        self._open_reads: dict[int, _Handle] = {}
        self._open_writes: dict[int, _Handle] = {}
        self._open_count = 0
        self._ready: deque[_Request] = deque()
        self._in_flight: dict[int, _Request] = {}
        self._timers: list[tuple[float, int, _Request]] = []
        self._timer_order = 0
        self._completions: list[Completion] = []
        self._queued = 0
        self._consecutive_timeouts = 0
        self._session_lost = False
        self._bytes_read = 0
        self._bytes_written = 0
        self._requests_sent = 0
        self._retransmits = 0
        self._timeouts = 0
        self._ignored = 0

    # -- queueing work ------------------------------------------------------------------------

    def _check_range(self, offset: int, length: int) -> None:
        sector = self.sector_size
        if offset < 0 or length < 0 or offset + length > self.disk_size:
            raise ValueError(f"range {offset}+{length} lies outside the disk of {self.disk_size} bytes")
        if offset % sector or length % sector:
            raise ValueError(f"range {offset}+{length} is not aligned to {sector}-byte sectors")

    def read(self, offset: int, length: int) -> int:
        """Queue a read of [offset, offset+length); its Completion carries all of it."""
        self._check_range(offset, length)
        handle = self._new_handle(_READ, offset, offset + length)
        for start in range(offset, offset + length, self._burst):
            size = min(self._burst, offset + length - start)
            handle.requests.append(_Request(handle, Read(start, size), start, size))
        return self._open(handle)

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> int:
        """Queue a write, split into WRITEs of consecutive sequences; one Completion once all are acked."""
        self._check_range(offset, len(data))
        handle = self._new_handle(_WRITE, offset, offset + len(data))
        view = memoryview(data).cast("B")
        for start in range(0, len(view), self._write_chunk):
            payload = bytes(view[start : start + self._write_chunk])
            message = Write(self._take_sequence(), offset + start, payload)
            handle.requests.append(_Request(handle, message, offset + start, len(payload)))
        return self._open(handle)

    def flush(self) -> int:
        """Queue a FLUSH; it goes out only once every earlier write of this flow is acked."""
        handle = self._new_handle(_FLUSH, 0, 0)
        handle.requests.append(_Request(handle, Flush(self._take_sequence()), 0, 0))
        return self._open(handle)

    def _take_sequence(self) -> int:
        sequence = self._next_sequence
        self._next_sequence += 1
        return sequence

    def _new_handle(self, kind: int, offset: int, end: int) -> _Handle:
        handle = _Handle(self._next_handle, kind, offset, end)
        self._next_handle += 1
        return handle

    def _open(self, handle: _Handle) -> int:
        offset, end = handle.offset, handle.end
        blockers: Iterable[_Handle]
        if handle.kind == _FLUSH:
            blockers = list(self._open_writes.values())
        else:
            # Only reads against writes and writes against anything: reads never wait for reads.
            candidates = list(self._open_writes.values())
            if handle.kind == _WRITE:
                candidates += self._open_reads.values()
            blockers = [h for h in candidates if h.offset < end and offset < h.end]
        for blocker in blockers:
            blocker.dependents.append(handle)
            handle.waiting += 1
        handle.pending = len(handle.requests)
        if not handle.requests:
            self._completions.append(Completion(handle.ident, b"" if handle.kind == _READ else None))
            handle.done = True
            return handle.ident
        (self._open_reads if handle.kind == _READ else self._open_writes)[handle.ident] = handle
        self._open_count += 1
        self._queued += handle.pending
        if not handle.waiting:
            self._ready.extend(handle.requests)
        return handle.ident

    # -- sending ------------------------------------------------------------------------------

    def poll(self, now: float) -> list[Outgoing]:
        """What to send now: retransmissions of expired requests, then new requests the window allows.

        Returns nothing while `session_lost`: the glue logs in again and calls `resend_all`.
        """
        if self._session_lost:
            return []
        out: list[Outgoing] = []
        timers = self._timers
        if timers and timers[0][0] <= now:
            expired = []
            while timers and timers[0][0] <= now:
                request = heapq.heappop(timers)[2]
                if request.state != _SENT:
                    continue
                if request.deadline > now:  # progress pushed it back since this entry was made
                    self._arm(request)
                    continue
                expired.append(request)
            if expired:
                # One timeout per poll, not per request: requests expiring together share one cause.
                self._consecutive_timeouts += 1
                self._timeouts += 1
                self.rtt.backoff()
                for request in expired:
                    self._resend(request, now, out)
        ready, in_flight = self._ready, self._in_flight
        while ready and len(in_flight) < self.window:
            request = ready.popleft()
            if request.state != _QUEUED:
                continue
            request_id = self._take_request_id()
            request.request_id = request_id
            request.state = _SENT
            request.sent_at = now
            request.deadline = now + self.rtt.rto
            in_flight[request_id] = request
            self._arm(request)
            self._queued -= 1
            self._requests_sent += 1
            out.append(Outgoing(request_id, request.message))
        return out

    def resend_all(self, now: float) -> list[Outgoing]:
        """After logging in again (to this or another server): everything in flight goes out again.

        Reads ask only for their missing parts. The RTT estimate starts over, the timeout counter
        and `session_lost` are cleared, and what `poll(now)` would send follows the resends.
        """
        self._session_lost = False
        self._consecutive_timeouts = 0
        self.rtt.reset()
        self._timers = []
        out: list[Outgoing] = []
        for request in self._in_flight.values():
            self._resend(request, now, out)
        out += self.poll(now)
        return out

    def _resend(self, request: _Request, now: float, out: list[Outgoing]) -> None:
        request.retransmitted = True  # Karn: an answer could belong to either transmission
        request.deadline = now + self.rtt.rto
        self._arm(request)
        self._retransmits += 1
        request_id = request.request_id
        if request.kind == _READ:
            for start, end in self._gap_requests(request):
                out.append(Outgoing(request_id, Read(start, end - start)))
        else:
            out.append(Outgoing(request_id, request.message))

    def _arm(self, request: _Request) -> None:
        self._timer_order += 1
        heapq.heappush(self._timers, (request.deadline, self._timer_order, request))

    def _take_request_id(self) -> int:
        request_id = self._next_request_id
        while request_id == 0 or request_id in self._in_flight:
            request_id = (request_id + 1) % _ID_SPACE
        self._next_request_id = (request_id + 1) % _ID_SPACE
        return request_id

    def next_deadline(self) -> float | None:
        """When the earliest retransmission timer expires; None when no timer runs (or the session is lost).

        New work does not show here: call `poll` after `read`, `write`, `flush` and `receive`.
        """
        if self._session_lost:
            return None
        timers = self._timers
        while timers:
            deadline, _, request = timers[0]
            if request.state != _SENT:
                heapq.heappop(timers)
            elif request.deadline != deadline:
                heapq.heapreplace(timers, (request.deadline, self._timer_order + 1, request))
                self._timer_order += 1
            else:
                return deadline
        return None

    # -- receiving ----------------------------------------------------------------------------

    def receive(self, header: Header, message: Data | WriteAck | ErrorReply, now: float) -> None:
        """Feed one reply; what matches no request in flight is ignored. The glue checks the session."""
        if isinstance(message, Data):
            self.receive_data(header.request_id, message.offset, message.payload, 0, now)
            return
        request = self._in_flight.get(header.request_id)
        if request is None:
            self._ignored += 1
            return
        if isinstance(message, WriteAck):
            if request.kind == _READ or message.sequence != request.sequence:
                self._ignored += 1
                return
            self._consecutive_timeouts = 0
            if not request.retransmitted:
                self.rtt.sample(now - request.sent_at)
            self._request_done(request)
        elif isinstance(message, ErrorReply):
            if message.code == ErrorCode.UNKNOWN_SESSION:
                self._session_lost = True
                return
            self._consecutive_timeouts = 0
            self._finish(request.handle, message)
        else:
            self._ignored += 1

    def receive_data(
        self, request_id: int, offset: int, datagram: bytes, start: int, now: float, stop: int | None = None
    ) -> None:
        """Feed one DATA whose payload is `datagram[start:stop]`, without decoding it into a Data
        first (a coalesced receive holds many datagrams in one buffer: no slicing needed).

        The hot path (~80,000 datagrams a second): nothing here is more than a lookup or a copy.
        """
        request = self._in_flight.get(request_id)
        if request is None or request.kind != _READ:
            self._ignored += 1
            return
        if stop is None:
            stop = len(datagram)
        size = stop - start
        at = offset - request.offset
        end = offset + size
        if at < 0 or size <= 0 or end > request.end:
            self._ignored += 1
            return
        received = request.received
        known = received.get(offset)
        if known is not None and known >= end:
            self._ignored += 1
            return
        received[offset] = end
        request.count += end - offset if known is None else end - known
        request.view[at : at + size] = (
            memoryview(datagram)[start:stop] if start or stop != len(datagram) else datagram
        )
        self._consecutive_timeouts = 0
        if not request.sampled:
            request.sampled = True
            if not request.retransmitted:
                self.rtt.sample(now - request.sent_at)
        if request.count >= request.length:
            gaps = self._gaps(request)
            if not gaps:
                self._request_done(request)
                return
            request.count = request.length - sum(gap_end - gap_start for gap_start, gap_end in gaps)
        request.deadline = now + self.rtt.rto

    def _gaps(self, request: _Request) -> list[tuple[int, int]]:
        """The byte ranges of a burst not yet received, in order."""
        gaps = []
        position = request.offset
        received = request.received
        for start in sorted(received):
            if start > position:
                gaps.append((position, start))
            position = max(position, received[start])
        if position < request.end:
            gaps.append((position, request.end))
        return gaps

    def _gap_requests(self, request: _Request) -> list[tuple[int, int]]:
        """The gaps widened to whole sectors, as a READ must ask; widened gaps that touch are merged."""
        sector = self.sector_size
        merged: list[tuple[int, int]] = []
        for start, end in self._gaps(request):
            start -= start % sector
            end += -end % sector
            if merged and start <= merged[-1][1]:
                merged[-1] = (merged[-1][0], end)
            else:
                merged.append((start, end))
        return merged

    def _request_done(self, request: _Request) -> None:
        request.state = _DONE
        del self._in_flight[request.request_id]
        handle = request.handle
        handle.pending -= 1
        if not handle.pending:
            self._finish(handle, None)

    def _finish(self, handle: _Handle, error: ErrorReply | None) -> None:
        """Complete a handle, cancel what is left of it and release the handles waiting on it."""
        handle.done = True
        self._open_count -= 1
        (self._open_reads if handle.kind == _READ else self._open_writes).pop(handle.ident, None)
        data = None
        if error is None and handle.kind == _READ:
            data = bytes(handle.buffer)
            self._bytes_read += len(data)
        elif error is None and handle.kind == _WRITE:
            self._bytes_written += handle.end - handle.offset
        for request in handle.requests:
            if request.state == _SENT:
                del self._in_flight[request.request_id]
            elif request.state == _QUEUED:
                self._queued -= 1
            request.state = _DONE
            request.view = _NO_VIEW
        handle.buffer = bytearray()
        self._completions.append(Completion(handle.ident, data, error))
        for dependent in handle.dependents:
            dependent.waiting -= 1
            if not dependent.waiting and not dependent.done:
                self._ready.extend(dependent.requests)
        handle.dependents = []

    # -- results ------------------------------------------------------------------------------

    def completions(self) -> list[Completion]:
        """The handles finished since the last call, in the order they finished."""
        done, self._completions = self._completions, []
        return done

    @property
    def in_flight(self) -> int:
        """Requests sent and not yet answered in full (at most `window`)."""
        return len(self._in_flight)

    @property
    def queued(self) -> int:
        """Requests not sent yet: waiting for the window or for an earlier conflicting handle."""
        return self._queued

    @property
    def open_handles(self) -> int:
        """Handles neither completed nor failed yet."""
        return self._open_count

    @property
    def consecutive_timeouts(self) -> int:
        """Polls in a row that found expired requests with no progress in between: the failover signal."""
        return self._consecutive_timeouts

    @property
    def session_lost(self) -> bool:
        """The server answered UNKNOWN_SESSION: log in again, then call `resend_all`."""
        return self._session_lost

    @property
    def stats(self) -> FlowStats:
        return FlowStats(
            self._bytes_read,
            self._bytes_written,
            self._requests_sent,
            self._retransmits,
            self._timeouts,
            self._ignored,
        )
