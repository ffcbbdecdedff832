"""The I/O server's pure core: datagrams and time in, actions out; and a target's Flow against it in
memory, over a channel that loses, duplicates and reorders both ways."""

from __future__ import annotations

import random
import secrets

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.flow_workload import BadChannel, Workload

from pvsd.stream.session import (
    SECTOR,
    Attached,
    CloseDisk,
    Dropped,
    IoLimits,
    OpenDisk,
    Refuse,
    Send,
    SendRead,
    StreamServer,
    SyncDisk,
    WriteDisk,
)
from pvsd.stream.ticket import CacheType, Claims, issue_ticket
from pvsd.stream.wire import (
    HEADER_SIZE,
    Data,
    ErrorCode,
    ErrorReply,
    Flush,
    Keepalive,
    Login,
    Logout,
    Read,
    StreamRefusal,
    Write,
    WriteAck,
    data_burst,
    decode,
    encode,
)
from pvsd.target.flow import Flow

SECRET = secrets.token_hex(32)
NOW_MS = 1_795_600_000_000
PEER = ("10.0.0.50", 40000)
SESSION = 77
MAC = "52:54:00:12:34:56"
SIZE = 32 * SECTOR
LIMITS = IoLimits(max_payload=1024, max_burst=4096, idle_timeout=60.0)


def claims(session: int = SESSION, mac: str = MAC, cache: CacheType = CacheType.SERVER) -> Claims:
    return Claims(mac, "disk", 1, False, cache, session, NOW_MS, NOW_MS + 3_600_000, SIZE, SECTOR)


def attach_datagram(c: Claims, request_id: int = 1, login_mac: str | None = None) -> bytes:
    return encode(Login(login_mac or c.mac, 1400, issue_ticket(SECRET, c)), request_id, c.session)


def attached(writable: bool = True, c: Claims | None = None) -> StreamServer:
    """A server with one attached session, its disk open."""
    server = StreamServer(SECRET, LIMITS)
    c = c or claims()
    (open_disk,) = server.receive(attach_datagram(c), PEER, 0.0, NOW_MS)
    assert isinstance(open_disk, OpenDisk)
    actions = server.opened(open_disk, SIZE, writable, 0.0)
    assert isinstance(actions[0], Attached) and isinstance(actions[1], Send)
    assert isinstance(decode(actions[1].datagram)[1], Keepalive)
    return server


def codes(actions: list[object]) -> list[ErrorCode]:
    return [a.refusal.code for a in actions if isinstance(a, Refuse)]


def test_attach_opens_the_disk_then_answers_with_a_keepalive() -> None:
    server = StreamServer(SECRET, LIMITS)
    (action,) = server.receive(attach_datagram(claims()), PEER, 0.0, NOW_MS)
    assert isinstance(action, OpenDisk) and action.claims == claims() and action.payload == 1024
    assert server.receive(attach_datagram(claims()), PEER, 0.1, NOW_MS) == []  # still opening
    server.opened(action, SIZE, True, 0.0)
    assert server.session_ids == [SESSION] and server.stats.sessions == 1
    (again,) = server.receive(attach_datagram(claims()), PEER, 0.2, NOW_MS)  # a retransmitted attach
    assert isinstance(again, Send) and isinstance(decode(again.datagram)[1], Keepalive)


@pytest.mark.parametrize(
    ("datagram", "code"),
    [
        (encode(Login(MAC, 1400, b"garbage"), 1, SESSION), ErrorCode.TICKET_MALFORMED),
        (attach_datagram(claims(), login_mac="52:54:00:00:00:01"), ErrorCode.TICKET_OTHER_DEVICE),
        (encode(Login(MAC, 1400, issue_ticket(SECRET, claims())), 1, SESSION + 1), ErrorCode.BAD_REQUEST),
    ],
)
def test_attach_refusals(datagram: bytes, code: ErrorCode) -> None:
    server = StreamServer(SECRET, LIMITS)
    actions = server.receive(datagram, PEER, 0.0, NOW_MS)
    assert codes(actions) == [code]
    refuse = actions[0]
    assert isinstance(refuse, Refuse) and refuse.attaching and len(refuse.datagram) <= len(datagram)


def test_a_disk_that_cannot_open_is_refused_with_its_code() -> None:
    server = StreamServer(SECRET, LIMITS)
    (open_disk,) = server.receive(attach_datagram(claims()), PEER, 0.0, NOW_MS)
    assert isinstance(open_disk, OpenDisk)
    actions = server.open_failed(open_disk, StreamRefusal(ErrorCode.PRIVATE_IN_USE, "another writer"))
    assert codes(actions) == [ErrorCode.PRIVATE_IN_USE] and server.session_ids == []


def test_reads_are_checked_and_become_a_read_of_the_disk() -> None:
    server = attached()
    (read,) = server.receive(encode(Read(1024, 2048), 5, SESSION), PEER, 1.0, NOW_MS)
    assert read == SendRead(SESSION, 5, 1024, 2048, 1024, PEER)
    assert codes(server.receive(encode(Read(100, 512), 6, SESSION), PEER, 1.0, NOW_MS)) == [
        ErrorCode.BAD_REQUEST
    ]
    assert codes(server.receive(encode(Read(0, 8192), 6, SESSION), PEER, 1.0, NOW_MS)) == [
        ErrorCode.BAD_REQUEST
    ]
    past = encode(Read(SIZE - 512, 1024), 7, SESSION)
    assert codes(server.receive(past, PEER, 1.0, NOW_MS)) == [ErrorCode.OUT_OF_RANGE]
    assert server.stats.reads == 1 and server.stats.bytes_read == 2048


def test_requests_must_come_from_the_address_that_attached() -> None:
    server = attached()
    actions = server.receive(encode(Read(0, 512), 5, SESSION), ("10.0.0.51", 40000), 1.0, NOW_MS)
    assert codes(actions) == [ErrorCode.UNKNOWN_SESSION]
    assert codes(server.receive(encode(Read(0, 512), 5, 999), PEER, 1.0, NOW_MS)) == [
        ErrorCode.UNKNOWN_SESSION
    ]


def test_a_write_is_applied_once_and_acked_when_written() -> None:
    server = attached()
    datagram = encode(Write(3, 512, bytes(1024)), 9, SESSION)
    (write,) = server.receive(datagram, PEER, 1.0, NOW_MS)
    assert isinstance(write, WriteDisk) and (write.sequence, write.offset) == (3, 512)
    assert server.receive(datagram, PEER, 1.1, NOW_MS) == []  # still being written: its ack follows
    (ack,) = server.written(write, None)
    assert isinstance(ack, Send) and decode(ack.datagram)[1] == WriteAck(3)
    (again,) = server.receive(datagram, PEER, 1.2, NOW_MS)  # applied: acked again, not written twice
    assert isinstance(again, Send) and decode(again.datagram)[1] == WriteAck(3)
    assert server.stats.writes == 1 and server.stats.duplicate_writes == 1


def test_a_failed_write_is_not_acked_and_a_full_disk_says_so() -> None:
    server = attached()
    (write,) = server.receive(encode(Write(4, 0, bytes(512)), 9, SESSION), PEER, 1.0, NOW_MS)
    assert isinstance(write, WriteDisk)
    assert server.written(write, 5) == []  # EIO: the target sends it again
    (again,) = server.receive(encode(Write(4, 0, bytes(512)), 9, SESSION), PEER, 1.0, NOW_MS)
    assert isinstance(again, WriteDisk)
    assert codes(server.written(again, 28)) == [ErrorCode.NO_SPACE]  # ENOSPC


def test_a_read_only_session_refuses_writes_and_acks_flushes_at_once() -> None:
    server = attached(writable=False, c=claims(cache=CacheType.DEVICE_RAM_DISK))
    actions = server.receive(encode(Write(1, 0, bytes(512)), 9, SESSION), PEER, 1.0, NOW_MS)
    assert codes(actions) == [ErrorCode.READ_ONLY]
    (ack,) = server.receive(encode(Flush(2), 10, SESSION), PEER, 1.0, NOW_MS)
    assert isinstance(ack, Send) and decode(ack.datagram)[1] == WriteAck(2)


def test_a_flush_syncs_the_disk_then_acks() -> None:
    server = attached()
    (sync,) = server.receive(encode(Flush(5), 10, SESSION), PEER, 1.0, NOW_MS)
    assert sync == SyncDisk(SESSION, MAC, 10, 5)
    assert server.synced(sync, 5) == []  # a failed sync is not acknowledged
    (ack,) = server.synced(sync, None)
    assert isinstance(ack, Send) and decode(ack.datagram)[1] == WriteAck(5)


def test_logout_idle_and_attaching_again_close_the_disk() -> None:
    server = attached()
    close, reply = server.receive(encode(Logout(), 11, SESSION), PEER, 1.0, NOW_MS)
    assert close == CloseDisk(SESSION, MAC, "logged out") and isinstance(reply, Send)
    server = attached()
    assert server.expire(30.0) == []
    assert server.expire(61.0) == [CloseDisk(SESSION, MAC, "idle for 60 s")]
    server = attached()
    newer = claims(session=SESSION + 1)
    close, open_disk = server.receive(attach_datagram(newer), PEER, 1.0, NOW_MS)
    assert close == CloseDisk(SESSION, MAC, "the device attached again") and isinstance(open_disk, OpenDisk)


def test_an_attach_superseded_while_its_disk_opened_is_not_served() -> None:
    server = StreamServer(SECRET, LIMITS)
    (first,) = server.receive(attach_datagram(claims()), PEER, 0.0, NOW_MS)
    (second,) = server.receive(attach_datagram(claims()), ("10.0.0.50", 40001), 0.1, NOW_MS)
    assert isinstance(first, OpenDisk) and isinstance(second, OpenDisk)
    assert not server.still_opening(first) and server.still_opening(second)
    server.opened(second, SIZE, True, 0.2)
    assert server.session_ids == [SESSION]


def test_malformed_datagrams_are_dropped_and_counted() -> None:
    server = attached()
    assert isinstance(server.receive(b"\x00" * 5, PEER, 1.0, NOW_MS)[0], Dropped)
    bad_read = bytearray(encode(Read(0, 512), 1, SESSION))
    bad_read[0] = 0
    assert isinstance(server.receive(bytes(bad_read), PEER, 1.0, NOW_MS)[0], Dropped)
    assert server.stats.malformed == 2


@pytest.mark.parametrize(
    "message",
    [ErrorReply(ErrorCode.UNKNOWN_SESSION, "log in again"), Data(0, b"x" * 512), WriteAck(1)],
)
def test_messages_only_a_server_sends_are_never_answered(message: object) -> None:
    """Answering them would let a spoofed source set two servers answering each other."""
    server = attached()
    for session in (SESSION, 999):  # whether or not the session exists
        (action,) = server.receive(encode(message, 1, session), PEER, 1.0, NOW_MS)  # type: ignore[arg-type]
        assert isinstance(action, Dropped)
    assert server.stats.reflected == 2


def test_a_refusal_that_cannot_fit_its_request_is_not_sent() -> None:
    server = attached()
    keepalive = encode(Keepalive(), 5, 999)  # 18 bytes: a bare ERROR is 21
    (refused,) = server.receive(keepalive, PEER, 1.0, NOW_MS)
    assert isinstance(refused, Refuse) and refused.datagram is None
    assert server.stats.unanswered == 1


@given(st.binary(max_size=200), st.integers(0, 2**32 - 1))
def test_any_datagram_gives_actions_never_an_exception(blob: bytes, now: int) -> None:
    server = attached()
    actions = server.receive(blob, PEER, float(now), NOW_MS)
    assert isinstance(actions, list)


# -- a Flow against the core, in memory ------------------------------------------------------------


class MemoryPort:
    """The glue, in memory: carries out the core's actions on a bytearray disk; writes and syncs
    complete later, in order, as the worker's threads would."""

    def __init__(self, server: StreamServer, disk: bytearray, rng: random.Random) -> None:
        self.server = server
        self.disk = disk
        self.rng = rng
        self.out: list[bytes] = []
        self.busy: list[WriteDisk | SyncDisk] = []
        self.written: list[int] = []

    def apply(self, actions: list[object]) -> None:
        for action in actions:
            if isinstance(action, SendRead):
                data = bytes(self.disk[action.offset : action.offset + action.length])
                self.out += data_burst(action.request_id, action.session, action.offset, data, action.payload)
            elif isinstance(action, Send | Refuse):
                self.out.append(action.datagram)
            elif isinstance(action, WriteDisk | SyncDisk):
                self.busy.append(action)
            elif isinstance(action, OpenDisk):
                self.apply(self.server.opened(action, len(self.disk), True, 0.0))

    def finish_some(self) -> None:
        while self.busy and self.rng.random() < 0.5:
            done = self.busy.pop(0)
            if isinstance(done, WriteDisk):
                self.disk[done.offset : done.offset + len(done.data)] = done.data
                self.written.append(done.sequence)
                self.apply(self.server.written(done, None))
            else:
                self.apply(self.server.synced(done, None))


def deliver(datagram: bytes, flow: Flow, now: float) -> None:
    header, message = decode(datagram)
    if isinstance(message, Data):
        flow.receive_data(header.request_id, message.offset, datagram, HEADER_SIZE + 8, now)
    elif isinstance(message, WriteAck | ErrorReply):
        flow.receive(header, message, now)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    drop=st.sampled_from([0.0, 0.05, 0.2]),
    duplicate=st.sampled_from([0.0, 0.1]),
    operations=st.lists(
        st.tuples(st.sampled_from("rwf"), st.integers(0, 31), st.integers(1, 12)), min_size=1, max_size=25
    ),
)
def test_a_flow_against_the_server_core_over_a_bad_channel(
    seed: int, drop: float, duplicate: float, operations: list[tuple[str, int, int]]
) -> None:
    rng = random.Random(seed)
    server = StreamServer(SECRET, LIMITS)
    disk = bytearray(rng.randbytes(SIZE))
    port = MemoryPort(server, disk, rng)
    port.apply(server.receive(attach_datagram(claims()), PEER, 0.0, NOW_MS))
    assert server.session_ids == [SESSION]
    port.out.clear()
    flow = Flow(disk_size=SIZE, sector_size=SECTOR, max_payload=1024, max_burst=4096, window=4)
    work = Workload(flow, operations, bytes(disk), rng)
    to_server: list[bytes] = []
    to_client: BadChannel[bytes] = BadChannel(rng, drop, duplicate)
    now = 0.0
    for _ in range(30_000):
        work.maybe_queue()
        for item in flow.poll(now):
            if rng.random() >= drop:
                copies = 2 if rng.random() < duplicate else 1
                to_server += [encode(item.message, item.request_id, SESSION)] * copies
        rng.shuffle(to_server)
        take = rng.randint(0, len(to_server))
        arriving, to_server = to_server[:take], to_server[take:]
        for datagram in arriving:
            port.apply(server.receive(datagram, PEER, now, NOW_MS))
        port.finish_some()
        to_client.queue += port.out
        port.out = []
        if to_client:
            to_client.deliver_some(lambda datagram, at=now: deliver(datagram, flow, at))
            now += 0.001
        elif not port.busy and not to_server:
            later = work.idle(now)
            if later is None:
                break
            now = later
        work.collect()
    else:
        pytest.fail(work.stuck())
    work.check()
    assert disk == work.model
    assert len(port.written) == len(set(port.written))  # every WRITE applied once, whatever was resent
