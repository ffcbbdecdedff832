"""TFTP codec: wire vectors in both directions, and decode never raises anything but DecodeError."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pvsd.net.reader import DecodeError
from pvsd.tftp.codec import (
    Ack,
    Data,
    Error,
    ErrorCode,
    OptionAck,
    Packet,
    ReadRequest,
    WriteRequest,
    bounded_error,
    decode,
    encode,
    shown_name,
)

VECTORS: list[tuple[str, Packet, bytes]] = [
    ("plain RRQ", ReadRequest("pxelinux.0", "octet"), b"\x00\x01pxelinux.0\x00octet\x00"),
    (
        "RRQ with options (curl)",
        ReadRequest("boot/x", "octet", (("tsize", "0"), ("blksize", "1468"))),
        b"\x00\x01boot/x\x00octet\x00tsize\x000\x00blksize\x001468\x00",
    ),
    ("WRQ", WriteRequest("up", "netascii"), b"\x00\x02up\x00netascii\x00"),
    ("DATA", Data(1, b"hello"), b"\x00\x03\x00\x01hello"),
    ("empty last DATA", Data(65535, b""), b"\x00\x03\xff\xff"),
    ("ACK", Ack(0), b"\x00\x04\x00\x00"),
    ("ACK 65535", Ack(65535), b"\x00\x04\xff\xff"),
    ("ERROR", Error(ErrorCode.FILE_NOT_FOUND, "no such file"), b"\x00\x05\x00\x01no such file\x00"),
    (
        "OACK",
        OptionAck((("blksize", "1468"), ("windowsize", "16"))),
        b"\x00\x06blksize\x001468\x00windowsize\x0016\x00",
    ),
]


@pytest.mark.parametrize(("name", "packet", "wire"), VECTORS, ids=[v[0] for v in VECTORS])
def test_vectors_both_directions(name: str, packet: Packet, wire: bytes) -> None:
    assert encode(packet) == wire
    assert decode(wire) == packet


def test_option_names_are_case_insensitive_and_mode_is_lowercased() -> None:
    packet = decode(b"\x00\x01f\x00OCTET\x00BlkSize\x00512\x00")
    assert packet == ReadRequest("f", "octet", (("blksize", "512"),))


def test_block_numbers_wrap_on_the_wire() -> None:
    assert encode(Data(65536, b"x")) == b"\x00\x03\x00\x00x"
    assert encode(Ack(65537)) == b"\x00\x04\x00\x01"


def test_any_filename_bytes_survive_a_round_trip() -> None:
    wire = b"\x00\x01caf\xc3\xa9/\xff\xfe\x00octet\x00"
    packet = decode(wire)
    assert isinstance(packet, ReadRequest)
    assert encode(packet) == wire


def test_sloppy_but_harmless_packets_are_accepted() -> None:
    assert decode(b"\x00\x04\x00\x07padding") == Ack(7)
    assert decode(b"\x00\x05\x00\x00no terminating nul") == Error(0, "no terminating nul")


def test_a_duplicated_option_decodes_as_sent_and_the_first_one_is_the_one_read() -> None:
    """The codec keeps what was on the wire; RFC 2347 is silent on duplicates and the first wins."""
    packet = decode(b"\x00\x01f\x00octet\x00blksize\x001024\x00BLKSIZE\x00512\x00")
    assert packet == ReadRequest("f", "octet", (("blksize", "1024"), ("blksize", "512")))
    assert isinstance(packet, ReadRequest) and packet.option("blksize") == "1024"
    assert packet.option("tsize") is None


def test_an_error_reply_is_cut_to_fit_the_datagram_that_caused_it() -> None:
    assert bounded_error(ErrorCode.FILE_NOT_FOUND, "no such file", 100) == encode(
        Error(ErrorCode.FILE_NOT_FOUND, "no such file")
    )
    assert bounded_error(ErrorCode.FILE_NOT_FOUND, "no such file", 10) == b"\x00\x05\x00\x01no su\x00"
    assert bounded_error(ErrorCode.DISK_FULL, "server busy", 5) == b"\x00\x05\x00\x03\x00"
    assert bounded_error(ErrorCode.DISK_FULL, "server busy", 4) is None  # not even an empty ERROR fits


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("pxelinux.0", "pxelinux.0"),
        ("a" * 128, "a" * 128),
        ("a" * 129, "a" * 128 + "..."),
        ("b" * 60_000, "b" * 128 + "..."),
        ("caf\udcc3x", "caf\\xc3x"),  # bytes that are not UTF-8 are shown escaped, never raw
        ("a\nb\x1b[2J", "a\\nb\\x1b[2J"),  # nor can a name forge a log line or drive a terminal
    ],
)
def test_file_names_are_shown_cut_short_and_printable(name: str, shown: str) -> None:
    assert shown_name(name) == shown


@given(st.text(max_size=400))
def test_a_shown_name_is_bounded_whatever_the_name(name: str) -> None:
    assert len(shown_name(name)) <= 10 * 128 + 3  # \U0010ffff at worst, per character


@pytest.mark.parametrize(
    ("wire", "reason"),
    [
        (b"", "truncated"),
        (b"\x00", "truncated"),
        (b"\x00\x09", "unknown TFTP opcode 9"),
        (b"\x00\x00abc", "unknown TFTP opcode 0"),
        (b"\x00\x01file", "unterminated"),
        (b"\x00\x01file\x00octet", "unterminated"),
        (b"\x00\x01file\x00octet\x00blksize\x00", "has no value"),
        (b"\x00\x01file\x00octet\x00blksize\x00512", "unterminated"),
        (b"\x00\x03\x00", "truncated"),
        (b"\x00\x04\x01", "truncated"),
        (b"\x00\x05\x00", "truncated"),
    ],
)
def test_malformed_packets_raise_decode_error(wire: bytes, reason: str) -> None:
    with pytest.raises(DecodeError, match=reason):
        decode(wire)


@given(st.binary(max_size=600))
def test_decode_returns_a_packet_or_raises_decode_error(wire: bytes) -> None:
    with contextlib.suppress(DecodeError):
        decode(wire)


@given(
    st.sampled_from([1, 2, 6]).flatmap(
        lambda opcode: st.lists(st.binary(max_size=12), max_size=8).map(
            lambda parts: opcode.to_bytes(2, "big") + b"\0".join(parts)
        )
    )
)
def test_request_shaped_garbage_only_raises_decode_error(wire: bytes) -> None:
    try:
        packet = decode(wire)
    except DecodeError:
        return
    assert decode(encode(packet)) == packet


text = st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), max_size=20)


@given(
    st.one_of(
        st.builds(
            ReadRequest,
            text,
            st.sampled_from(["octet", "netascii"]),
            st.lists(st.tuples(text.map(str.lower), text)).map(tuple),
        ),
        st.builds(Data, st.integers(0, 65535), st.binary(max_size=100)),
        st.builds(Ack, st.integers(0, 65535)),
        st.builds(Error, st.integers(0, 65535), text),
        st.builds(OptionAck, st.lists(st.tuples(text.map(str.lower), text)).map(tuple)),
    )
)
def test_every_packet_round_trips(packet: Packet) -> None:
    assert decode(encode(packet)) == packet
