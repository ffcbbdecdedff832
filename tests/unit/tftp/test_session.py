"""The read-transfer state machine, with time passed in: loss, duplicates, windows, rollover, timeouts."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pvsd.net.reader import ProtocolError
from pvsd.tftp.codec import (
    Ack,
    Data,
    Error,
    ErrorCode,
    OptionAck,
    Packet,
    ReadRequest,
    WriteRequest,
    decode,
    encode,
)
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
    session.receive(Ack(1), 0.0)  # the client is there: block 2 on, the ordinary schedule holds
    assert sent(session) == [Data(2, content[512:1024])]
    session.on_timer(0.5)  # not due yet
    assert sent(session) == []
    session.on_timer(1.0)
    assert sent(session) == [Data(2, content[512:1024])]
    assert session.retransmits == 1 and session.deadline == 3.0  # 1 s, then 2 s
    session.on_timer(3.0)
    assert blocks(sent(session)) == [2]
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
    session.receive(Ack(1), 0.0)  # then silence: abandon_after applies, not first_block_timeout
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


@pytest.mark.parametrize(
    "packet",
    [Data(1, b"x"), OptionAck((("blksize", "512"),)), ReadRequest("f", "octet"), WriteRequest("f", "octet")],
    ids=["DATA", "OACK", "RRQ", "WRQ"],
)
def test_packets_a_reader_never_sends_end_the_transfer_without_an_answer(packet: Packet) -> None:
    """In single-port mode the transfer's port is the service port: answering a DATA or an OACK
    there could start a ping-pong with another server (or a spoofed one)."""
    session, _ = start(2000)
    sent(session)
    session.receive(packet, 0.1)
    assert sent(session) == []
    assert session.outcome is Outcome.PROTOCOL_ERROR
    session.on_timer(10.0)
    assert sent(session) == []


def test_an_error_from_the_client_is_never_answered_whatever_the_state() -> None:
    for acked in (None, 0, 1):
        session, _ = start(5000, (("blksize", "512"),))
        sent(session)
        if acked is not None:
            session.receive(Ack(acked), 0.1)
            sent(session)
        session.receive(Error(ErrorCode.UNKNOWN_TID, "who are you"), 0.2)
        assert sent(session) == [] and session.outcome is Outcome.CLIENT_ERROR
        session.on_timer(60.0)
        assert sent(session) == []


@pytest.mark.parametrize("mode", ["mail", "binary", ""])
def test_unsupported_modes_are_refused_with_error_4(mode: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        check_request(ReadRequest("f", mode))
    assert caught.value.code == ErrorCode.ILLEGAL_OPERATION


# -- duplicated options (amplification) ---------------------------------------------------------


def test_a_duplicated_option_is_taken_once_the_first_one_wins() -> None:
    """RFC 2347 is silent on duplicates: the first wins, and the OACK echoes each option once."""
    options = (("blksize", "1024"), ("tsize", "0"), ("blksize", "512"), ("tsize", "0"), ("tsize", "7"))
    session, _ = start(10_000, options)
    assert sent(session) == [OptionAck((("blksize", "1024"), ("tsize", "10000")))]
    assert session.blksize == 1024


def test_a_first_duplicate_that_is_invalid_drops_the_option_rather_than_trying_the_next() -> None:
    session, content = start(2000, (("blksize", "huge"), ("blksize", "1024")))
    assert sent(session) == [Data(1, content[:512])]


def test_a_thousand_tsize_options_give_an_oack_smaller_than_the_request() -> None:
    """The hostile tryout: 1000 x tsize 0 in an 8 kB RRQ came back as a 13 kB OACK, sent 7 times."""
    request = ReadRequest("f", "octet", (("tsize", "0"),) * 1000)
    session = ReadSession(request, BytesSource(b"x" * 123_456), Limits(), 0.0)
    datagrams = session.take_datagrams()
    assert [decode(d) for d in datagrams] == [OptionAck((("tsize", "123456"),))]
    now = 0.0
    while not session.done:
        now = session.deadline
        session.on_timer(now)
        datagrams += session.take_datagrams()
    assert len(datagrams) <= 1 + Limits().first_block_retransmits
    assert sum(len(d) for d in datagrams) < len(encode(request)) // 10


# -- a first block nobody acknowledges (flood, spoofed address) -------------------------------------


def run_timers(session: ReadSession, until: float) -> list[bytes]:
    """Fire the timer at every deadline up to `until`; what was sent, in order."""
    out = session.take_datagrams()
    while not session.done and session.deadline <= until:
        session.on_timer(session.deadline)
        out += session.take_datagrams()
    return out


@pytest.mark.parametrize("options", [(), (("blksize", "1468"), ("windowsize", "16"))], ids=["plain", "oack"])
def test_a_transfer_nobody_acknowledges_expires_after_first_block_timeout(
    options: tuple[tuple[str, str], ...],
) -> None:
    session, _ = start(100_000, options, Limits(timeout=1.0))
    assert Limits().first_block_timeout == 3.0
    out = run_timers(session, 2.99)
    assert not session.done
    out += run_timers(session, 3.0)
    assert session.outcome is Outcome.UNACKNOWLEDGED and session.finished == 3.0
    # Silently: the address never proved it is a client, so it gets no parting ERROR either.
    assert not [p for p in map(decode, out) if isinstance(p, Error)]
    assert len(out) == 2  # the first flight, and one resend at 1 s (the next would be at 3 s)


def test_the_first_window_is_resent_at_most_three_times_however_long_the_timeout() -> None:
    limits = Limits(timeout=1.0, max_timeout=8.0, first_block_timeout=1000.0, abandon_after=1000.0)
    session, _ = start(100_000, (("blksize", "1468"), ("windowsize", "16")), limits)
    assert isinstance(decode(session.take_datagrams()[0]), OptionAck)
    session.receive(Ack(0), 0.0)  # a guessed ACK 0 is as easy as a real one: the window is still unproven
    out = run_timers(session, 999.0)
    assert blocks([decode(d) for d in out]) == list(range(1, 17)) * 4  # sent once, resent 3 times
    assert session.retransmits == 3 * 16
    assert not session.done
    run_timers(session, 1000.0)
    assert session.outcome is Outcome.UNACKNOWLEDGED


def test_the_oack_is_resent_at_most_three_times() -> None:
    limits = Limits(timeout=1.0, first_block_timeout=1000.0, abandon_after=1000.0)
    session, _ = start(100_000, (("tsize", "0"),), limits)
    out = run_timers(session, 999.0)
    assert [decode(d) for d in out] == [OptionAck((("tsize", "100000"),))] * 4


def test_acks_for_blocks_never_sent_are_ignored_before_the_first_block_is_acknowledged() -> None:
    session, _ = start(100_000, (("blksize", "1468"), ("windowsize", "16")))
    sent(session)
    for guess in (1, 16, 17, 500, 65535):  # before the OACK is acknowledged, no block is out yet
        session.receive(Ack(guess), 0.01)
        assert sent(session) == []
    session.receive(Ack(0), 0.02)
    assert blocks(sent(session)) == list(range(1, 17))
    for guess in (17, 32, 33, 1000):  # beyond the one window sent
        session.receive(Ack(guess), 0.03)
        assert sent(session) == []


def test_once_the_first_block_is_acknowledged_the_ordinary_patience_applies() -> None:
    session, _ = start(100_000, limits=Limits(timeout=1.0, abandon_after=30.0))
    sent(session)
    session.receive(Ack(1), 2.9)
    assert blocks(sent(session)) == [2]
    run_timers(session, 20.0)
    assert not session.done  # no first_block_timeout, no cap of three resends
    assert session.retransmits >= 4


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
    # Unbounded patience: this test is about delivery, not about giving up on a lossy client.
    limits = Limits(abandon_after=1e9, first_block_timeout=1e9, first_block_retransmits=10**9)
    session, content = start(size, options, limits)
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
