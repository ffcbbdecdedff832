"""The stream flow engine, time passed in: bursts, gaps, writes, flushes, errors, timers, a lossy channel."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.flow_workload import BadChannel, Workload

from pvsd.stream.wire import (
    HEADER_SIZE,
    Data,
    ErrorCode,
    ErrorReply,
    Flush,
    Header,
    MessageType,
    Read,
    Write,
    WriteAck,
    encode,
)
from pvsd.target.flow import Completion, Flow, Outgoing, RttEstimator

SECTOR = 512
Reply = tuple[Header, Data | WriteAck | ErrorReply]


class FakeServer:
    """Answers what a Flow sends from a bytes image, as the I/O workers do: each sequence applied once."""

    def __init__(self, image: bytes, max_payload: int) -> None:
        self.image = bytearray(image)
        self.max_payload = max_payload
        self.applied: set[int] = set()
        self.seen: list[Outgoing] = []

    def answer(self, out: Outgoing) -> list[Reply]:
        self.seen.append(out)
        message = out.message
        if isinstance(message, Read):
            end = message.offset + message.length
            header = Header(MessageType.DATA, out.request_id)
            return [
                (header, Data(start, bytes(self.image[start : min(start + self.max_payload, end)])))
                for start in range(message.offset, end, self.max_payload)
            ]
        if isinstance(message, Write) and message.sequence not in self.applied:
            self.applied.add(message.sequence)
            self.image[message.offset : message.offset + len(message.payload)] = message.payload
        return [(Header(MessageType.WRITE_ACK, out.request_id), WriteAck(message.sequence))]


def image_of(size: int) -> bytes:
    return bytes((i * 7 + i // 251) % 256 for i in range(size))


def make_flow(
    size: int = 64 << 10,
    max_payload: int = 1024,
    max_burst: int = 4096,
    window: int = 4,
    initial_rto: float = 0.5,
    max_rto: float = 2.0,
    first_request_id: int = 1,
) -> tuple[Flow, FakeServer]:
    flow = Flow(
        disk_size=size,
        sector_size=SECTOR,
        max_payload=max_payload,
        max_burst=max_burst,
        window=window,
        initial_rto=initial_rto,
        max_rto=max_rto,
        first_request_id=first_request_id,
    )
    return flow, FakeServer(image_of(size), max_payload)


def run(flow: Flow, server: FakeServer, now: float = 0.0, sent: list[Outgoing] | None = None) -> int:
    """Exchange with a perfect network (answering `sent` first) until nothing is left.

    Returns the most requests ever in flight.
    """
    most = flow.in_flight
    outgoing = sent or []
    while True:
        for out in outgoing:
            for header, message in server.answer(out):
                flow.receive(header, message, now)
        now += 0.001
        outgoing = flow.poll(now)
        most = max(most, flow.in_flight)
        if not outgoing:
            return most


def test_clean_multi_burst_read_returns_the_image_and_keeps_to_the_window() -> None:
    flow, server = make_flow(window=3)
    handle = flow.read(512, 20 << 10)
    first = flow.poll(0.0)
    assert first == [
        Outgoing(1, Read(512, 4096)),
        Outgoing(2, Read(512 + 4096, 4096)),
        Outgoing(3, Read(512 + 8192, 4096)),
    ]
    assert (flow.in_flight, flow.queued, flow.open_handles) == (3, 2, 1)
    for out in first:
        for header, message in server.answer(out):
            flow.receive(header, message, 0.01)
    assert run(flow, server, 0.02) <= 3
    assert flow.completions() == [Completion(handle, bytes(server.image[512 : 512 + (20 << 10)]), None)]
    assert flow.completions() == []
    assert (flow.in_flight, flow.queued, flow.open_handles, flow.next_deadline()) == (0, 0, 0, None)
    stats = flow.stats
    assert (stats.bytes_read, stats.requests_sent, stats.retransmits, stats.timeouts) == (20 << 10, 5, 0, 0)


def test_request_ids_wrap_past_u32_and_skip_zero() -> None:
    flow, _ = make_flow(first_request_id=0xFFFFFFFF)
    flow.read(0, 3 * 4096)
    assert [out.request_id for out in flow.poll(0.0)] == [0xFFFFFFFF, 1, 2]


def test_lost_pieces_are_asked_again_as_only_the_gaps() -> None:
    flow, server = make_flow(max_burst=8192)
    handle = flow.read(8192, 8192)
    (out,) = flow.poll(0.0)
    pieces = server.answer(out)
    assert len(pieces) == 8
    for index, (header, message) in enumerate(pieces):
        if index not in (1, 2, 5):
            flow.receive(header, message, 0.01)
    deadline = flow.next_deadline()
    assert deadline is not None
    assert deadline == pytest.approx(0.01 + 0.03)  # progress restarts the timer; rto from one 10 ms sample
    assert flow.poll(deadline - 0.001) == []
    again = flow.poll(deadline)
    assert again == [Outgoing(1, Read(8192 + 1024, 2048)), Outgoing(1, Read(8192 + 5120, 1024))]
    for retry in again:
        for header, message in server.answer(retry):
            flow.receive(header, message, deadline + 0.01)
    assert flow.completions() == [Completion(handle, bytes(server.image[8192:16384]), None)]
    assert (flow.stats.retransmits, flow.stats.timeouts, flow.consecutive_timeouts) == (1, 1, 0)


def test_gaps_in_pieces_that_are_not_whole_sectors_are_widened_to_sectors() -> None:
    flow, server = make_flow(max_payload=1464, max_burst=8192)
    handle = flow.read(0, 8192)
    (out,) = flow.poll(0.0)
    pieces = server.answer(out)
    for header, message in pieces[:1] + pieces[2:]:  # piece 1 is bytes 1464..2928
        flow.receive(header, message, 0.01)
    (retry,) = flow.poll(1.0)
    assert retry == Outgoing(1, Read(1024, 2048))
    # The answer's pieces (1024..2488, 2488..3072) overlap what already arrived on another grid.
    for header, message in server.answer(retry):
        flow.receive(header, message, 1.01)
    assert flow.completions() == [Completion(handle, bytes(server.image[:8192]), None)]


def test_data_can_be_fed_as_the_raw_datagram() -> None:
    flow, server = make_flow()
    handle = flow.read(4096, 2048)
    (out,) = flow.poll(0.0)
    for header, message in server.answer(out):
        assert isinstance(message, Data)
        flow.receive_data(
            header.request_id, message.offset, encode(message, header.request_id), HEADER_SIZE + 8, 0.01
        )
    assert flow.completions() == [Completion(handle, bytes(server.image[4096:6144]), None)]


def test_duplicated_reordered_and_late_data_are_harmless() -> None:
    flow, server = make_flow()
    handle = flow.read(4096, 4096)
    (out,) = flow.poll(0.0)
    pieces = server.answer(out)
    stray = [
        (Header(MessageType.DATA, 99), Data(4096, b"x" * 512)),  # no such request
        (pieces[0][0], Data(0, b"x" * 512)),  # before the burst
        (pieces[0][0], Data(8192 - 512, b"x" * 1024)),  # runs past it
        (pieces[0][0], Data(4096, b"")),
    ]
    for header, message in stray + [p for piece in reversed(pieces) for p in (piece, piece)][:-1]:
        flow.receive(header, message, 0.01)
    assert flow.completions() == [Completion(handle, bytes(server.image[4096:8192]), None)]
    for header, message in pieces:
        flow.receive(header, message, 0.02)
    assert flow.completions() == []
    assert flow.stats.ignored == len(stray) + len(pieces) - 1 + len(pieces)


def test_writes_are_split_into_consecutive_sequences_and_flush_waits_for_their_acks() -> None:
    flow, server = make_flow(max_payload=1464, window=8)
    payload = bytes(range(256)) * 10  # 2560 bytes: pieces of 1024 (the whole sectors 1464 holds)
    handle = flow.write(1024, payload)
    barrier = flow.flush()
    sent = flow.poll(0.0)
    assert sent == [
        Outgoing(1, Write(1, 1024, payload[:1024])),
        Outgoing(2, Write(2, 2048, payload[1024:2048])),
        Outgoing(3, Write(3, 3072, payload[2048:])),
    ]
    for out in (sent[0], sent[2]):
        for header, message in server.answer(out):
            flow.receive(header, message, 0.01)
    assert flow.completions() == []
    assert flow.poll(0.2) == []  # the flush waits for sequence 2
    assert flow.poll(1.0) == [sent[1]]  # same request id, same sequence
    for header, message in server.answer(sent[1]):
        flow.receive(header, message, 1.01)
    assert flow.completions() == [Completion(handle, None, None)]
    assert flow.poll(1.02) == [Outgoing(4, Flush(4))]
    flow.receive(Header(MessageType.WRITE_ACK, 4), WriteAck(3), 1.03)  # another sequence: ignored
    assert flow.completions() == []
    flow.receive(Header(MessageType.WRITE_ACK, 4), WriteAck(4), 1.03)
    assert flow.completions() == [Completion(barrier, None, None)]
    assert bytes(server.image[1024:3584]) == payload
    assert flow.stats.bytes_written == len(payload)
    assert flow.write(0, b"\0" * 512) == barrier + 1
    assert flow.poll(2.0) == [Outgoing(5, Write(5, 0, b"\0" * 512))]


def test_conflicting_handles_wait_for_each_other_and_others_do_not() -> None:
    flow, server = make_flow(window=8)
    first = flow.write(0, b"\1" * 1024)
    later_read = flow.read(512, 1024)  # overlaps the write: waits for it
    other_read = flow.read(8192, 1024)  # does not
    sent = flow.poll(0.0)
    assert [out.message for out in sent] == [Write(1, 0, b"\1" * 1024), Read(8192, 1024)]
    assert flow.queued == 1
    run(flow, server, 0.01, sent)
    done = {c.handle: c for c in flow.completions()}
    assert done.keys() == {first, later_read, other_read}
    assert done[later_read].data == b"\1" * 512 + bytes(server.image[1024:1536])


def test_an_error_completes_its_handle_and_cancels_the_rest() -> None:
    flow, server = make_flow(window=2)
    handle = flow.read(0, 3 * 4096)
    bystander = flow.write(1 << 15, b"\2" * 512)
    first, second = flow.poll(0.0)
    error = ErrorReply(ErrorCode.OUT_OF_RANGE, "beyond the disk")
    flow.receive(Header(MessageType.ERROR, first.request_id), error, 0.01)
    assert flow.completions() == [Completion(handle, None, error)]
    for header, message in server.answer(second):
        flow.receive(header, message, 0.02)  # the cancelled burst's data arrives late
    assert flow.stats.bytes_read == 0
    sent = flow.poll(0.03)
    assert [out.message for out in sent] == [Write(1, 1 << 15, b"\2" * 512)]
    run(flow, server, 0.04, sent)
    assert flow.completions() == [Completion(bystander, None, None)]


def test_unknown_session_completes_nothing_until_resend_all() -> None:
    flow, server = make_flow(window=4)
    handle = flow.read(0, 8192)
    written = flow.write(1 << 15, b"\3" * 1024)
    sent = flow.poll(0.0)
    assert len(sent) == 3
    pieces = server.answer(sent[0])
    flow.receive(*pieces[0], 0.01)
    flow.receive(*pieces[3], 0.01)
    flow.receive(
        Header(MessageType.ERROR, sent[1].request_id), ErrorReply(ErrorCode.UNKNOWN_SESSION, "?"), 0.02
    )
    assert flow.session_lost
    assert flow.completions() == []
    assert flow.poll(5.0) == []
    assert flow.next_deadline() is None
    again = flow.resend_all(6.0)
    assert again == [
        Outgoing(sent[0].request_id, Read(1024, 2048)),
        sent[1],
        sent[2],
    ]
    assert not flow.session_lost
    assert flow.next_deadline() == pytest.approx(6.5)
    for out in again:
        for header, message in server.answer(out):
            flow.receive(header, message, 6.01)
    assert {c.handle for c in flow.completions()} == {handle, written}
    assert flow.rtt.srtt is None  # Karn: everything was sent twice


def test_resend_all_resets_the_timer_state() -> None:
    flow, _ = make_flow(initial_rto=0.25, window=1)
    flow.write(0, b"\4" * 512)
    flow.read(4096, 512)
    (out,) = flow.poll(0.0)
    flow.poll(0.25)
    flow.poll(0.75)
    assert (flow.consecutive_timeouts, flow.rtt.rto) == (2, 1.0)
    assert flow.resend_all(1.0) == [out]
    assert (flow.consecutive_timeouts, flow.rtt.rto, flow.next_deadline()) == (0, 0.25, 1.25)
    assert flow.queued == 1  # the window is still full: the read waits


def test_rtt_estimator_follows_rfc_6298() -> None:
    rtt = RttEstimator(initial_rto=1.0, min_rto=0.02, max_rto=60.0)
    assert (rtt.srtt, rtt.rttvar, rtt.rto) == (None, None, 1.0)
    rtt.sample(0.1)
    assert (rtt.srtt, rtt.rttvar, rtt.rto) == pytest.approx((0.1, 0.05, 0.3))
    rtt.sample(0.2)  # rttvar = 3/4 * 0.05 + 1/4 * 0.1, then srtt = 7/8 * 0.1 + 1/8 * 0.2
    assert (rtt.srtt, rtt.rttvar, rtt.rto) == pytest.approx((0.1125, 0.0625, 0.3625))
    rtt.backoff()
    assert rtt.rto == pytest.approx(0.725)
    rtt.sample(0.1125)
    assert rtt.rto == pytest.approx(0.1125 + 4 * 0.046875)
    rtt.reset()
    assert (rtt.srtt, rtt.rto) == (None, 1.0)


def test_rtt_estimator_clamps_and_backs_off_to_the_maximum() -> None:
    rtt = RttEstimator(initial_rto=0.5, min_rto=0.1, max_rto=2.0)
    rtt.sample(0.001)
    assert rtt.rto == 0.1
    rtt.sample(30.0)
    assert rtt.rto == 2.0
    low = RttEstimator(initial_rto=0.3, min_rto=0.1, max_rto=2.0)
    for expected in (0.6, 1.2, 2.0, 2.0):
        low.backoff()
        assert low.rto == pytest.approx(expected)
    with pytest.raises(ValueError, match="min_rto"):
        RttEstimator(min_rto=0.0)


def test_karn_takes_no_sample_from_a_retransmitted_request() -> None:
    flow, server = make_flow()
    flow.write(0, b"\5" * 512)
    (out,) = flow.poll(0.0)
    assert flow.poll(0.5) == [out]
    for header, message in server.answer(out):
        flow.receive(header, message, 0.6)
    assert flow.rtt.srtt is None
    assert flow.rtt.rto == 1.0  # still backed off
    flow.write(0, b"\6" * 512)
    (out,) = flow.poll(1.0)
    for header, message in server.answer(out):
        flow.receive(header, message, 1.04)
    assert flow.rtt.srtt == pytest.approx(0.04)


def test_consecutive_timeouts_count_polls_and_reset_on_progress() -> None:
    flow, server = make_flow(window=4)
    flow.write(0, b"\7" * 512)
    flow.write(4096, b"\7" * 512)
    first, second = flow.poll(0.0)
    now = 0.0
    for expected, rto in ((1, 1.0), (2, 2.0), (3, 2.0)):
        deadline = flow.next_deadline()
        assert deadline is not None
        now = deadline
        assert flow.poll(now) == [first, second]  # both expired together: one timeout
        assert (flow.consecutive_timeouts, flow.rtt.rto) == (expected, rto)
    assert flow.stats.timeouts == 3 and flow.stats.retransmits == 6
    for header, message in server.answer(first) * 2:
        flow.receive(header, message, now + 0.1)
    assert flow.consecutive_timeouts == 0
    assert flow.stats.ignored == 1


@pytest.mark.parametrize(
    ("call", "reason"),
    [
        (lambda f: f.read(-512, 512), "outside"),
        (lambda f: f.read(64 << 10, 512), "outside"),
        (lambda f: f.read(100, 512), "aligned"),
        (lambda f: f.read(0, 100), "aligned"),
        (lambda f: f.write((64 << 10) - 512, b"\0" * 1024), "outside"),
        (lambda f: f.write(0, b"\0" * 100), "aligned"),
    ],
)
def test_misuse_raises_value_error(call: object, reason: str) -> None:
    flow, _ = make_flow()
    with pytest.raises(ValueError, match=reason):
        call(flow)  # type: ignore[operator]


def test_empty_reads_and_writes_complete_at_once() -> None:
    flow, _ = make_flow()
    read, write = flow.read(512, 0), flow.write(512, b"")
    assert flow.completions() == [Completion(read, b"", None), Completion(write, None, None)]
    assert flow.poll(0.0) == []


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    max_payload=st.sampled_from([512, 1024, 1464]),
    max_burst=st.sampled_from([512, 2048, 4096]),
    window=st.integers(1, 4),
    drop=st.sampled_from([0.0, 0.1, 0.3]),
    duplicate=st.sampled_from([0.0, 0.2]),
    operations=st.lists(
        st.tuples(st.sampled_from("rrwf"), st.integers(0, 15), st.integers(0, 8)), max_size=12
    ),
)
def test_a_lossy_reordering_channel_still_gives_every_completion_right(
    seed: int,
    max_payload: int,
    max_burst: int,
    window: int,
    drop: float,
    duplicate: float,
    operations: list[tuple[str, int, int]],
) -> None:
    rng = random.Random(seed)
    size = 16 * SECTOR
    flow, server = make_flow(size, max_payload, max_burst, window, max_rto=1.0)
    work = Workload(flow, operations, server.image, rng)
    network: BadChannel[Reply] = BadChannel(rng, drop, duplicate)
    now = 0.0
    for _ in range(20_000):
        work.maybe_queue()
        for out in flow.poll(now):
            assert flow.in_flight <= window
            if rng.random() >= drop:
                network.queue += server.answer(out) * (2 if rng.random() < duplicate else 1)
        if network:
            network.deliver_some(lambda reply, at=now: flow.receive(reply[0], reply[1], at))
            now += 0.001
        else:
            later = work.idle(now)
            if later is None:
                break
            now = later
        work.collect()
    else:
        pytest.fail(work.stuck())
    work.check()
    assert server.image == work.model
