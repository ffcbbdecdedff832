"""Heartbeats between servers over UDP: membership that does not need the farm database.

Each server sends one to every other server's login port each heartbeat interval: its name,
this run's instance token, a counter, and the sessions each of its I/O ports serves, signed
with HMAC-SHA256 under a key made from the farm secret. The receiver counts the sender alive
from when it heard it (its own clock), and takes its load from it; while the database is
down, this is how servers know who is alive and who carries what. Pure: no socket, no clock.

A heartbeat is never answered (it is one of the wire's SERVER_MESSAGES), so a forged source
sets nothing talking. One is taken only if its counter is above the last one taken from that
instance, so a replayed heartbeat cannot keep a dead server alive.

Layout, after the stream header (type PEER_HEARTBEAT, request id 0, session = the counter):

    u8 name length | name | u8 instance length | instance | u8 ports
    ports x (u16 I/O port | u32 sessions) | 32-byte HMAC-SHA256 over everything before it
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field

from pvsd.net.reader import DecodeError, Reader
from pvsd.stream.wire import HEADER_SIZE, MAGIC, VERSION, MessageType

__all__ = ["PeerBeat", "PeerHeartbeats", "decode_beat", "encode_beat", "is_peer_heartbeat"]

_HEADER = struct.Struct("!HBBHIQ")
_PORT = struct.Struct("!HI")
_SIGNATURE = 32
MAX_PORTS = 255


def _key(secret: str) -> bytes:
    # Not the ticket key: a heartbeat can never be passed off as a ticket, nor the other way.
    return hashlib.sha256(b"pvsd peer heartbeat\0" + secret.encode()).digest()


@dataclass(frozen=True)
class PeerBeat:
    server: str
    instance: str
    counter: int
    loads: Mapping[int, int] = field(default_factory=dict)  # I/O port -> sessions


def _text(raw: str) -> bytes:
    data = raw.encode()
    if len(data) > 255:
        raise ValueError(f"{raw!r} is longer than 255 bytes")
    return bytes((len(data),)) + data


def encode_beat(secret: str, beat: PeerBeat) -> bytes:
    ports = sorted(beat.loads.items())[:MAX_PORTS]
    body = (
        _HEADER.pack(MAGIC, VERSION, MessageType.PEER_HEARTBEAT, 0, 0, beat.counter)
        + _text(beat.server)
        + _text(beat.instance)
        + bytes((len(ports),))
        + b"".join(_PORT.pack(port, min(count, 0xFFFFFFFF)) for port, count in ports)
    )
    return body + hmac.digest(_key(secret), body, "sha256")


def is_peer_heartbeat(datagram: bytes) -> bool:
    return len(datagram) > 3 and datagram[3] == MessageType.PEER_HEARTBEAT


def _name(reader: Reader) -> str:
    try:
        return reader.take(reader.u8()).decode()
    except UnicodeDecodeError as error:
        raise DecodeError(f"name is not UTF-8: {error}") from None


def decode_beat(secret: str, datagram: bytes) -> PeerBeat:
    """The heartbeat, or DecodeError: malformed, or not signed with this farm's secret."""
    if len(datagram) < HEADER_SIZE + _SIGNATURE:
        raise DecodeError("too short for a peer heartbeat")
    body, signature = datagram[:-_SIGNATURE], datagram[-_SIGNATURE:]
    if not hmac.compare_digest(hmac.digest(_key(secret), body, "sha256"), signature):
        raise DecodeError("peer heartbeat not signed with this farm's secret")
    reader = Reader(body)
    magic, version, kind, _, _, counter = _HEADER.unpack(reader.take(HEADER_SIZE))
    if (magic, version, kind) != (MAGIC, VERSION, MessageType.PEER_HEARTBEAT):
        raise DecodeError("not a peer heartbeat")
    server, instance = _name(reader), _name(reader)
    loads = {}
    for _ in range(reader.u8()):
        port, count = _PORT.unpack(reader.take(_PORT.size))
        loads[port] = count
    if not reader.at_end():
        raise DecodeError(f"{reader.remaining} unexpected bytes after a peer heartbeat")
    return PeerBeat(server, instance, counter, loads)


@dataclass(frozen=True)
class Heard:
    beat: PeerBeat
    at: float  # the receiver's clock


class PeerHeartbeats:
    """What this server heard from the others: taken in order per instance, replays dropped."""

    def __init__(self, secret: str, me: str) -> None:
        self.secret = secret
        self.me = me
        self.heard: dict[str, Heard] = {}
        self._last_counter: dict[tuple[str, str], int] = {}
        self.counter = 0
        self.dropped = 0

    def next_beat(self, instance: str, loads: Mapping[int, int]) -> bytes:
        self.counter += 1
        return encode_beat(self.secret, PeerBeat(self.me, instance, self.counter, dict(loads)))

    def receive(self, datagram: bytes, now: float) -> PeerBeat | None:
        """The beat if it was taken; None if it was malformed, forged, ours, or a replay."""
        try:
            beat = decode_beat(self.secret, datagram)
        except DecodeError:
            self.dropped += 1
            return None
        key = (beat.server, beat.instance)
        if beat.server == self.me or beat.counter <= self._last_counter.get(key, 0):
            self.dropped += 1
            return None
        if len(self._last_counter) > 4 * MAX_PORTS:
            # Instances of restarted servers pile up over months: keep those still heard.
            live = {(heard.beat.server, heard.beat.instance) for heard in self.heard.values()}
            self._last_counter = {k: v for k, v in self._last_counter.items() if k in live}
        self._last_counter[key] = beat.counter
        self.heard[beat.server] = Heard(beat, now)
        return beat

    def age(self, server: str, now: float) -> float | None:
        heard = self.heard.get(server)
        return None if heard is None else max(0.0, now - heard.at)

    def loads(self, server: str) -> Mapping[int, int] | None:
        heard = self.heard.get(server)
        return None if heard is None else heard.beat.loads
