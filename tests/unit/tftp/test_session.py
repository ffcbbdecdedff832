"""The read-transfer state machine, with time passed in: loss, duplicates, windows, rollover, timeouts."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pvsd.net.reader import ProtocolError
from pvsd.tftp.codec import Ack, Data, Error, ErrorCode, OptionAck, ReadRequest, decode
from pvsd.tftp.session import Limits, Outcome, ReadSession, check_request
from pvsd.tftp.sources import BytesSource


def start(
    size: int, options: tuple[tuple[str, str], ...] = (), limits: Limits | None = None, now: float = 0.0
) -> tuple[ReadSession, bytes]:
    content = bytes(i % 251 for i in range(size))
    session = ReadSession(ReadRequest("f", "octet", options), BytesSource(content), limits or Limits(), now)
    return session, content


def sent(session: ReadSession) -> list[object]:
    return [decode(d) for d in session.take_datagrams()]


def blocks(packets: list[object]) -> list[int]:
    return [p.block for p in packets if isinstance(p, Data)]


def test_lockstep_transfer_without_options() -> None:
    session, content = start(1300)
    first = sent(session)
    assert first == [Data(1, content[:512])]
    session.receive(Ack(1), 0.1)
    assert sent(session) == [Data(2, content[512:1024])]
    session.receive(Ack(2), 0.2)
    assert sent(session) == [Data(3, content[1024:])]
    session.receive(Ack(3), 0.3)
    assert sent(session) == []
    assert session.outcome is Outcome.COMPLETE
    summary = session.summary()
    assert (summary.bytes_sent, summary.blksize, summary.windowsize, summary.retransmits) == (1300, 512, 1, 0)
    assert summary.duration == pytest.approx(0.3)


@pytest.mark.parametrize(("size", "last_len", "count"), [(1024, 0, 3), (0, 0, 1), (511, 511, 1)])
def test_last_block_is_short_or_empty(size: int, last_len: int, count: int) -> None:
    session, _ = start(size)
    packets = sent(session)
    for block in range(1, count):
        session.receive(Ack(block), 0)
        packets = sent(session)
    assert isinstance(packets[-1], Data) and len(packets[-1].data) == last_len
    assert blocks(packets) == [count]
    session.receive(Ack(count), 0)
    assert session.outcome is Outcome.COMPLETE


def test_options_are_negotiated_with_an_oack_then_a_window() -> None:
    options = (("blksize", "1468"), ("tsize", "0"), ("foo", "bar"), ("timeout", "3"), ("windowsize", "4"))
    session, _ = start(10_000, options)
    assert sent(session) == [
        OptionAck((("blksize", "1468"), ("tsize", "10000"), ("timeout", "3"), ("windowsize", "4")))
    ]
    assert session.deadline == 3.0
    session.receive(Ack(0), 0.1)
    packets = sent(session)
    assert blocks(packets) == [1, 2, 3, 4]
    assert all(len(p.data) == 1468 for p in packets if isinstance(p, Data))


@pytest.mark.parametrize(
    "options",
    [
        (("blksize", "7"),),
        (("blksize", "65465"),),
        (("blksize", "big"),),
        (("windowsize", "0"),),
        (("windowsize", "65536"),),
        (("timeout", "0"),),
        (("timeout", "256"),),
        (("tsize", "-1"),),
        (("multicast", ""),),
    ],
)
def test_options_out_of_range_or_unknown_are_ignored(options: tuple[tuple[str, str], ...]) -> None:
    session, content = start(2000, options)
    assert sent(session) == [Data(1, content[:512])]


def test_blksize_and_windowsize_are_clamped_to_the_limits() -> None:
    session, _ = start(100_000, (("blksize", "9000"), ("windowsize", "200")), Limits(max_blksize=1468))
    assert sent(session) == [OptionAck((("blksize", "1468"), ("windowsize", "64")))]


def test_a_lost_data_block_is_resent_on_timeout_with_backoff() -> None:
    session, content = start(2000)
    sent(session)
    session.on_timer(0.5)  # not due yet
    assert sent(session) == []
    session.on_timer(1.0)
    assert sent(session) == [Data(1, content[:512])]
    assert session.retransmits == 1 and session.deadline == 3.0  # 1 s, then 2 s
    session.on_timer(3.0)
    assert blocks(sent(session)) == [1]
    assert session.deadline == 7.0


def test_a_lost_ack_means_the_block_is_resent_once_then_the_transfer_goes_on() -> None:
    session, _ = start(2000)
    sent(session)
    session.receive(Ack(1), 0.1)
    assert blocks(sent(session)) == [2]
    session.on_timer(1.1)  # the client's ACK 2 was lost
    assert blocks(sent(session)) == [2]
    session.receive(Ack(2), 1.2)
    assert blocks(sent(session)) == [3]
    assert session.deadline == pytest.approx(2.2)  # progress resets the backoff


def test_duplicate_acks_never_cause_a_resend() -> None:
    """RFC 1123 4.2.3.1: resending on a duplicate ACK is the sorcerer's apprentice bug."""
    session, _ = start(5000)
    sent(session)
    session.receive(Ack(1), 0.1)
    sent(session)
    session.receive(Ack(2), 0.2)
    assert blocks(sent(session)) == [3]
    for _ in range(3):
        session.receive(Ack(2), 0.3)
        session.receive(Ack(1), 0.3)
        assert sent(session) == []
    session.receive(Ack(3), 0.4)
    assert blocks(sent(session)) == [4]


def test_an_ack_inside_the_window_rolls_it_back() -> None:
    session, _ = start(20 * 512, (("windowsize", "4"),))
    sent(session)
    session.receive(Ack(0), 0)
    assert blocks(sent(session)) == [1, 2, 3, 4]
    session.receive(Ack(2), 0.1)  # 3 was lost: the client acknowledges what it has in order
    assert blocks(sent(session)) == [3, 4, 5, 6]
    session.receive(Ack(6), 0.2)
    assert blocks(sent(session)) == [7, 8, 9, 10]
    session.receive(Ack(6), 0.3)  # a duplicate of an ACK already taken
    assert sent(session) == []
    session.receive(Ack(12), 0.3)  # a block never sent
    assert sent(session) == []


def test_timeout_resends_the_whole_window() -> None:
    session, _ = start(20 * 512, (("windowsize", "4"),))
    sent(session)
    session.receive(Ack(0), 0)
    sent(session)
    session.on_timer(1.0)
    assert blocks(sent(session)) == [1, 2, 3, 4]
    assert session.retransmits == 4


def test_block_numbers_roll_over_past_65535() -> None:
    blksize = 8
    total_blocks = 70_000
    session, content = start(blksize * total_blocks - 3, (("blksize", str(blksize)),))
    assert sent(session) == [OptionAck((("blksize", "8"),))]
    session.receive(Ack(0), 0)
    received = bytearray()
    wire_numbers = []
    for _ in range(total_blocks):
        (packet,) = sent(session)
        assert isinstance(packet, Data)
        wire_numbers.append(packet.block)
        received += packet.data
        session.receive(Ack(packet.block), 0)
    assert session.outcome is Outcome.COMPLETE
    assert bytes(received) == content
    assert wire_numbers[65533:65538] == [65534, 65535, 0, 1, 2]


def test_a_silent_client_is_abandoned_after_the_total_time() -> None:
    session, _ = start(2000, limits=Limits(timeout=1.0, max_timeout=4.0, abandon_after=12.0))
    sent(session)
    deadlines = []
    while not session.done:
        deadlines.append(session.deadline)
        session.on_timer(session.deadline)
        packets = sent(session)
    assert deadlines == [1.0, 3.0, 7.0, 11.0, 15.0]
    assert session.outcome is Outcome.ABANDONED
    assert isinstance(packets[-1], Error) and "timed out" in packets[-1].message
    assert session.summary().retransmits == 4


def test_an_error_from_the_client_ends_the_transfer() -> None:
    session, _ = start(2000, (("tsize", "0"),))
    sent(session)
    session.receive(Error(ErrorCode.OPTION_REFUSED, "only wanted the size"), 0.1)
    assert session.outcome is Outcome.CLIENT_ERROR and "only wanted the size" in session.detail
    assert sent(session) == []
    session.on_timer(5)
    assert sent(session) == []


def test_a_lost_oack_is_resent() -> None:
    session, _ = start(2000, (("blksize", "1024"),))
    first = sent(session)
    session.on_timer(1.0)
    assert sent(session) == first
    session.receive(Ack(0), 1.1)
    assert blocks(sent(session)) == [1]


def test_packets_a_reader_never_sends_end_the_transfer_with_error_4() -> None:
    session, _ = start(2000)
    sent(session)
    session.receive(Data(1, b"x"), 0.1)
    (reply,) = sent(session)
    assert isinstance(reply, Error) and reply.code == ErrorCode.ILLEGAL_OPERATION
    assert session.outcome is Outcome.PROTOCOL_ERROR


@pytest.mark.parametrize("mode", ["mail", "binary", ""])
def test_unsupported_modes_are_refused_with_error_4(mode: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        check_request(ReadRequest("f", mode))
    assert caught.value.code == ErrorCode.ILLEGAL_OPERATION


# -- a whole transfer over a lossy channel ------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(
    size=st.integers(0, 6000),
    blksize=st.sampled_from([8, 100, 512]),
    windowsize=st.integers(1, 8),
    drops=st.lists(st.booleans(), max_size=400),
    duplicates=st.lists(st.booleans(), max_size=400),
)
def test_any_pattern_of_loss_and_duplication_delivers_the_file_exactly(
    size: int, blksize: int, windowsize: int, drops: list[bool], duplicates: list[bool]
) -> None:
    options = (("blksize", str(blksize)), ("windowsize", str(windowsize)))
    session, content = start(size, options, Limits(abandon_after=1e9))
    fate = iter(zip(drops, duplicates, strict=False))

    def channel(datagrams: list[bytes]) -> list[bytes]:
        out = []
        for datagram in datagrams:
            drop, duplicate = next(fate, (False, False))
            if not drop:
                out.append(datagram)
                if duplicate:
                    out.append(datagram)
        return out

    received = bytearray()
    expected = 1
    now = 0.0
    oack_seen = False
    for _ in range(20_000):
        to_client = channel(session.take_datagrams())
        acks = []
        for datagram in to_client:
            packet = decode(datagram)
            if isinstance(packet, OptionAck):
                oack_seen = True
                acks.append(Ack(0))
            elif isinstance(packet, Data):
                if packet.block == expected & 0xFFFF:
                    received += packet.data
                    expected += 1
                    if len(packet.data) < blksize or (expected - 1) % windowsize == 0:
                        acks.append(Ack(packet.block))
                else:
                    acks.append(Ack((expected - 1) & 0xFFFF))  # out of order: ack what we have
        for ack in channel([bytes([0, 4]) + ack.block.to_bytes(2, "big") for ack in acks]):
            session.receive(decode(ack), now)
        if session.done:
            break
        if not to_client:
            now = session.deadline
            session.on_timer(now)
    assert oack_seen
    assert session.outcome is Outcome.COMPLETE
    assert bytes(received) == content
