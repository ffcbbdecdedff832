"""Heartbeats between servers: round trip, the signature, replays, and the fuzz invariant."""

from __future__ import annotations

import contextlib
import secrets

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pvsd.net.reader import DecodeError
from pvsd.stream.peer_heartbeat import PeerBeat, PeerHeartbeats, decode_beat, encode_beat, is_peer_heartbeat
from pvsd.stream.wire import is_server_message

SECRET = secrets.token_hex(32)


def test_round_trip_and_never_answered() -> None:
    beat = PeerBeat("pvs2", "host:42:abcd", 7, {6911: 3, 6912: 0})
    datagram = encode_beat(SECRET, beat)
    assert decode_beat(SECRET, datagram) == beat
    assert is_peer_heartbeat(datagram)
    # Every service drops a server's message unanswered: a forged source sets nothing talking.
    assert is_server_message(datagram)


def test_another_farm_or_a_changed_byte_is_refused() -> None:
    datagram = encode_beat(SECRET, PeerBeat("pvs2", "i", 1, {6911: 1}))
    with pytest.raises(DecodeError, match="signed"):
        decode_beat(secrets.token_hex(32), datagram)
    changed = bytearray(datagram)
    changed[-40] ^= 1  # the last I/O port's session count
    with pytest.raises(DecodeError, match="signed"):
        decode_beat(SECRET, bytes(changed))


def test_a_replay_cannot_keep_a_dead_server_alive() -> None:
    sender, receiver = PeerHeartbeats(SECRET, "pvs2"), PeerHeartbeats(SECRET, "pvs1")
    first = sender.next_beat("run-1", {6911: 2})
    assert receiver.receive(first, now=10.0) is not None
    assert receiver.age("pvs2", 13.0) == 3.0
    assert receiver.receive(first, now=20.0) is None  # the same counter again: dropped
    assert receiver.age("pvs2", 20.0) == 10.0
    assert receiver.loads("pvs2") == {6911: 2}
    second = sender.next_beat("run-1", {6911: 5})
    assert receiver.receive(second, now=21.0) is not None
    assert receiver.loads("pvs2") == {6911: 5}
    # A restart is a new instance, whose counter starts again.
    assert receiver.receive(PeerHeartbeats(SECRET, "pvs2").next_beat("run-2", {}), now=22.0) is not None


def test_its_own_beat_is_ignored() -> None:
    me = PeerHeartbeats(SECRET, "pvs1")
    assert me.receive(me.next_beat("run", {}), now=1.0) is None
    assert me.age("pvs1", 1.0) is None


@given(st.binary(max_size=600))
def test_decode_returns_a_beat_or_raises_decode_error(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        decode_beat(SECRET, data)


@given(st.binary(max_size=300))
def test_a_signed_body_of_any_bytes_decodes_or_raises_decode_error(body: bytes) -> None:
    import hashlib
    import hmac

    key = hashlib.sha256(b"pvsd peer heartbeat\0" + SECRET.encode()).digest()
    head = encode_beat(SECRET, PeerBeat("a", "b", 1))[:18]
    data = head + body
    with contextlib.suppress(DecodeError):
        decode_beat(SECRET, data + hmac.digest(key, data, "sha256"))
