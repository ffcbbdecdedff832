"""The login and stream messages: vectors both ways, and decode only ever raises DecodeError."""

from __future__ import annotations

import contextlib
import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pvsd.net.reader import DecodeError
from pvsd.stream.wire import (
    MAGIC,
    Data,
    ErrorCode,
    ErrorReply,
    Flush,
    Header,
    Keepalive,
    Login,
    LoginReply,
    Logout,
    Message,
    MessageType,
    Read,
    Redirect,
    ServerEntry,
    Write,
    WriteAck,
    decode,
    encode,
)

ADDRESS = ipaddress.IPv4Address("10.77.0.11")
MESSAGES: list[Message] = [
    Login("52:54:00:12:34:56", 1464, b""),
    Login("52:54:00:12:34:56", 65000, b"ticket-bytes"),
    Login("52:54:00:12:34:56", 1448, b"", 494),
    LoginReply(
        ADDRESS,
        6911,
        64 << 20,
        512,
        False,
        2,
        1464,
        32 << 10,
        b"t" * 100,
        (ServerEntry("pvs1", ADDRESS, 6910), ServerEntry("pvs2", ipaddress.IPv4Address("10.77.0.12"), 6910)),
    ),
    Redirect(ADDRESS, 6910),
    ErrorReply(ErrorCode.UNKNOWN_MAC, "no device 52:54:00:12:34:56 in the farm"),
    Read(1 << 33, 32768),
    Data(4096, b"\x00" * 1464),
    Write(7, 8192, b"\xff" * 512),
    WriteAck(7),
    Flush(8),
    Keepalive(),
    Logout(),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_every_message_round_trips_with_its_header(message: Message) -> None:
    wire = encode(message, request_id=0xABCDEF01, session=0x1122334455667788, flags=3)
    header, decoded = decode(wire)
    assert decoded == message
    assert header == Header(header.type, 0xABCDEF01, 0x1122334455667788, 3)
    assert MessageType(header.type).name.replace("_", "") in type(message).__name__.upper().replace(
        "REPLY", "REPLY"
    )


def test_header_vector() -> None:
    assert encode(WriteAck(1), request_id=2, session=3) == bytes.fromhex(
        "5056010800000000000200000000000000030000000000000001"
    )
    assert MAGIC == 0x5056


@pytest.mark.parametrize(
    ("wire", "reason"),
    [
        (b"", "truncated"),
        (b"\x50\x56\x01", "truncated"),
        (b"\x12\x34" + bytes(16), "bad magic"),
        (b"\x50\x56\x02\x05" + bytes(14), "unsupported protocol version"),
        (b"\x50\x56\x01\x63" + bytes(14), "unknown message type 99"),
        (b"\x50\x56\x01\x05" + bytes(14) + b"\x00\x01", "truncated"),  # a READ cut short
        (encode(WriteAck(1)) + b"x", "unexpected bytes"),
        (encode(ErrorReply(1, "x"))[:-1] + b"\xff", "not UTF-8"),
    ],
)
def test_malformed_datagrams(wire: bytes, reason: str) -> None:
    with pytest.raises(DecodeError, match=reason):
        decode(wire)


@given(st.binary(max_size=200))
def test_decode_returns_a_message_or_raises_decode_error(wire: bytes) -> None:
    with contextlib.suppress(DecodeError):
        decode(wire)


@given(st.integers(1, 11), st.binary(max_size=120))
def test_well_headed_garbage_only_raises_decode_error(kind: int, body: bytes) -> None:
    wire = encode(Keepalive())[:3] + bytes((kind,)) + encode(Keepalive())[4:] + body
    with contextlib.suppress(DecodeError):
        header, message = decode(wire)
        assert decode(encode(message, header.request_id, header.session, header.flags))[1] == message
