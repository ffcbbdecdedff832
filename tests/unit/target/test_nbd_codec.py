"""The NBD codec: vectors both ways, option haggling, request checks; decoders raise only DecodeError."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pvsd.net.reader import DecodeError
from pvsd.target.nbd_codec import (
    MAX_OPTION_LENGTH,
    ClientFlag,
    Command,
    CommandFlag,
    Errno,
    Export,
    HandshakeFlag,
    InfoRequest,
    InfoType,
    NbdError,
    Negotiation,
    OptionReply,
    OptionType,
    Phase,
    Request,
    SimpleReply,
    TransmissionFlag,
    check_request,
    decode_client_flags,
    decode_info_request,
    decode_option_header,
    decode_option_reply,
    decode_request,
    decode_simple_reply,
    encode_block_size_info,
    encode_client_flags,
    encode_export_info,
    encode_export_name_reply,
    encode_info_request,
    encode_option,
    encode_option_reply,
    encode_request,
    encode_server_entry,
    encode_simple_reply,
    greeting,
)

WRITABLE = (
    TransmissionFlag.HAS_FLAGS
    | TransmissionFlag.SEND_FLUSH
    | TransmissionFlag.SEND_FUA
    | TransmissionFlag.SEND_TRIM
    | TransmissionFlag.SEND_WRITE_ZEROES
)
EXPORT = Export("disk1", 16 << 20, WRITABLE, description="test disk")
READ_ONLY = Export(
    "ro", 1 << 20, TransmissionFlag.HAS_FLAGS | TransmissionFlag.READ_ONLY | TransmissionFlag.SEND_FLUSH
)
REPLY_MAGIC = "0003e889045565a9"


def test_greeting_vector() -> None:
    # "NBDMAGIC" "IHAVEOPT", then FIXED_NEWSTYLE | NO_ZEROES.
    assert greeting() == b"NBDMAGICIHAVEOPT\x00\x03"
    assert greeting(HandshakeFlag.FIXED_NEWSTYLE) == b"NBDMAGICIHAVEOPT\x00\x01"


def test_client_flags_both_ways() -> None:
    assert encode_client_flags(3) == bytes.fromhex("00000003")
    assert decode_client_flags(bytes.fromhex("00000003")) == ClientFlag.FIXED_NEWSTYLE | ClientFlag.NO_ZEROES
    assert decode_client_flags(bytes.fromhex("00000000")) == ClientFlag(0)


@pytest.mark.parametrize("raw", ["00000004", "80000001", "000003", "0000000100"])
def test_client_flags_unknown_or_truncated_are_decode_errors(raw: str) -> None:
    with pytest.raises(DecodeError):
        decode_client_flags(bytes.fromhex(raw))


def test_no_zeroes_not_offered_is_refused() -> None:
    with pytest.raises(DecodeError):
        decode_client_flags(bytes.fromhex("00000002"), HandshakeFlag.FIXED_NEWSTYLE)


def test_option_header_both_ways() -> None:
    wire = encode_option(OptionType.LIST)
    assert wire == b"IHAVEOPT" + bytes.fromhex("00000003 00000000")
    assert decode_option_header(wire) == (3, 0)
    go = encode_option(OptionType.GO, encode_info_request(InfoRequest("disk1", (InfoType.BLOCK_SIZE,))))
    assert go == b"IHAVEOPT" + bytes.fromhex("00000007 0000000d 00000005") + b"disk1" + bytes.fromhex(
        "0001 0003"
    )
    option, length = decode_option_header(go[:16])
    assert (option, length) == (OptionType.GO, 13)
    assert decode_info_request(go[16:]) == InfoRequest("disk1", (InfoType.BLOCK_SIZE,))


def test_option_header_refuses_bad_magic_and_huge_length() -> None:
    with pytest.raises(DecodeError, match="magic"):
        decode_option_header(b"IHAVEOPX" + bytes(8))
    with pytest.raises(DecodeError, match="claims"):
        decode_option_header(
            b"IHAVEOPT" + bytes.fromhex("00000007") + (MAX_OPTION_LENGTH + 1).to_bytes(4, "big")
        )


@pytest.mark.parametrize(
    "raw",
    [
        "00000005" + b"disk1".hex(),  # no count
        "00000005" + b"disk1".hex() + "0002" + "0003",  # one request short
        "00000005" + b"disk1".hex() + "0000" + "ff",  # trailing byte
        "00001001",  # name longer than 4096
    ],
)
def test_info_request_refuses_malformed_data(raw: str) -> None:
    with pytest.raises(DecodeError):
        decode_info_request(bytes.fromhex(raw))


def test_option_reply_vectors() -> None:
    assert encode_option_reply(OptionType.ABORT, OptionReply.ACK) == bytes.fromhex(
        REPLY_MAGIC + "00000002" + "00000001" + "00000000"
    )
    assert encode_option_reply(OptionType.STRUCTURED_REPLY, OptionReply.ERR_UNSUP, b"no") == bytes.fromhex(
        REPLY_MAGIC + "00000008" + "80000001" + "00000002" + b"no".hex()
    )
    assert encode_export_info(16 << 20, WRITABLE) == bytes.fromhex("0000" + "0000000001000000" + "006d")
    assert encode_block_size_info(512, 4096, 32 << 20) == bytes.fromhex("0003 00000200 00001000 02000000")
    assert encode_server_entry("disk1", "d") == bytes.fromhex("00000005") + b"disk1d"
    assert decode_option_reply(encode_option_reply(6, 3, b"xyz")) == (6, 3, b"xyz")


def test_export_name_reply_with_and_without_zeroes() -> None:
    head = bytes.fromhex("0000000001000000" + "006d")
    assert encode_export_name_reply(16 << 20, WRITABLE, no_zeroes=True) == head
    assert encode_export_name_reply(16 << 20, WRITABLE, no_zeroes=False) == head + bytes(124)


def test_request_vectors_both_ways() -> None:
    read = Request(0, Command.READ, 0x0102030405060708, 4096, 512)
    wire = bytes.fromhex("25609513" + "0000" + "0000" + "0102030405060708" + "0000000000001000" + "00000200")
    assert encode_request(read) == wire
    assert decode_request(wire) == read
    write = Request(CommandFlag.FUA, Command.WRITE, 7, 1 << 33, 32 << 20)
    assert decode_request(encode_request(write)) == write
    # Unknown types decode: the server answers them with EINVAL instead of hanging up.
    odd = Request(0x8000, 0xBEEF, 1, 2, 3)
    assert decode_request(encode_request(odd)) == odd


def test_request_refuses_bad_magic_and_truncation() -> None:
    wire = encode_request(Request(0, 0, 1, 0, 512))
    with pytest.raises(DecodeError, match="magic"):
        decode_request(b"\x25\x60\x95\x14" + wire[4:])
    with pytest.raises(DecodeError):
        decode_request(wire[:27])
    with pytest.raises(DecodeError):
        decode_request(wire + b"\0")


def test_simple_reply_vectors_both_ways() -> None:
    assert encode_simple_reply(0xAABB, Errno.EINVAL) == bytes.fromhex("67446698 00000016 000000000000aabb")
    assert encode_simple_reply(1) == bytes.fromhex("67446698 00000000 0000000000000001")
    assert decode_simple_reply(encode_simple_reply(9, Errno.ENOSPC)) == SimpleReply(28, 9)
    with pytest.raises(DecodeError):
        decode_simple_reply(bytes(16))


def _replies(wire: bytes) -> list[tuple[int, int, bytes]]:
    """Split concatenated option replies."""
    out = []
    while wire:
        length = int.from_bytes(wire[16:20], "big")
        out.append(decode_option_reply(wire[: 20 + length]))
        wire = wire[20 + length :]
    return out


def test_negotiation_go_with_block_size() -> None:
    negotiation = Negotiation(EXPORT)
    data = encode_info_request(InfoRequest("disk1", (InfoType.BLOCK_SIZE,)))
    outcome = negotiation.option(OptionType.GO, data)
    assert outcome.phase == Phase.TRANSMISSION
    assert _replies(outcome.reply) == [
        (OptionType.GO, OptionReply.INFO, encode_export_info(EXPORT.size, EXPORT.flags)),
        (OptionType.GO, OptionReply.INFO, encode_block_size_info(512, 4096, 32 << 20)),
        (OptionType.GO, OptionReply.ACK, b""),
    ]


def test_negotiation_info_default_name_gets_canonical_name_and_description() -> None:
    negotiation = Negotiation(EXPORT)
    data = encode_info_request(InfoRequest("", (InfoType.NAME, InfoType.DESCRIPTION)))
    outcome = negotiation.option(OptionType.INFO, data)
    assert outcome.phase == Phase.OPTIONS
    replies = _replies(outcome.reply)
    assert (OptionType.INFO, OptionReply.INFO, b"\x00\x01disk1") in replies
    assert (OptionType.INFO, OptionReply.INFO, b"\x00\x02test disk") in replies
    assert replies[-1] == (OptionType.INFO, OptionReply.ACK, b"")


def test_negotiation_unknown_export_and_bad_data() -> None:
    negotiation = Negotiation(EXPORT)
    outcome = negotiation.option(OptionType.GO, encode_info_request(InfoRequest("other")))
    assert outcome.phase == Phase.OPTIONS
    assert [r[:2] for r in _replies(outcome.reply)] == [(OptionType.GO, OptionReply.ERR_UNKNOWN)]
    outcome = negotiation.option(OptionType.INFO, b"\x00")
    assert [r[:2] for r in _replies(outcome.reply)] == [(OptionType.INFO, OptionReply.ERR_INVALID)]


def test_negotiation_list_abort_and_unsupported() -> None:
    negotiation = Negotiation(EXPORT)
    listed = negotiation.option(OptionType.LIST, b"")
    assert _replies(listed.reply) == [
        (OptionType.LIST, OptionReply.SERVER, encode_server_entry("disk1", "test disk")),
        (OptionType.LIST, OptionReply.ACK, b""),
    ]
    assert [r[:2] for r in _replies(negotiation.option(OptionType.LIST, b"x").reply)] == [
        (OptionType.LIST, OptionReply.ERR_INVALID)
    ]
    for option in (OptionType.STRUCTURED_REPLY, OptionType.STARTTLS, OptionType.SET_META_CONTEXT, 0xDEAD):
        outcome = negotiation.option(option, b"")
        assert outcome.phase == Phase.OPTIONS
        assert [r[:2] for r in _replies(outcome.reply)] == [(option, OptionReply.ERR_UNSUP)]
    aborted = negotiation.option(OptionType.ABORT, b"")
    assert aborted.phase == Phase.CLOSE
    assert _replies(aborted.reply) == [(OptionType.ABORT, OptionReply.ACK, b"")]


def test_negotiation_export_name_honours_no_zeroes() -> None:
    negotiation = Negotiation(EXPORT)
    negotiation.client_flags(ClientFlag.FIXED_NEWSTYLE | ClientFlag.NO_ZEROES)
    outcome = negotiation.option(OptionType.EXPORT_NAME, b"disk1")
    assert outcome == type(outcome)(
        encode_export_name_reply(EXPORT.size, EXPORT.flags, True), Phase.TRANSMISSION
    )
    plain = Negotiation(EXPORT)
    plain.client_flags(ClientFlag.FIXED_NEWSTYLE)
    assert len(plain.option(OptionType.EXPORT_NAME, b"").reply) == 8 + 2 + 124
    # A wrong name cannot be answered with an error: the session ends.
    assert plain.option(OptionType.EXPORT_NAME, b"nope").phase == Phase.CLOSE


CHECKS = [
    (Request(0, Command.READ, 1, 0, 4096), EXPORT, Errno.OK),
    (Request(CommandFlag.FUA, Command.WRITE, 1, 512, 512), EXPORT, Errno.OK),
    (Request(0, Command.FLUSH, 1, 0, 0), EXPORT, Errno.OK),
    (Request(0, Command.FLUSH, 1, 0, 512), EXPORT, Errno.EINVAL),
    (Request(CommandFlag.NO_HOLE, Command.WRITE_ZEROES, 1, 0, 1 << 24), EXPORT, Errno.OK),
    (Request(CommandFlag.NO_HOLE, Command.WRITE, 1, 0, 512), EXPORT, Errno.EINVAL),
    (Request(CommandFlag.DF, Command.READ, 1, 0, 512), EXPORT, Errno.EINVAL),
    (Request(CommandFlag.FAST_ZERO, Command.WRITE_ZEROES, 1, 0, 512), EXPORT, Errno.EINVAL),
    (Request(0, Command.TRIM, 1, 0, 16 << 20), EXPORT, Errno.OK),
    (Request(0, Command.READ, 1, 1, 512), EXPORT, Errno.EINVAL),
    (Request(0, Command.READ, 1, 0, 100), EXPORT, Errno.EINVAL),
    (Request(0, Command.READ, 1, 0, (32 << 20) + 512), Export("big", 1 << 30, WRITABLE), Errno.EINVAL),
    (Request(0, Command.READ, 1, (16 << 20) - 512, 1024), EXPORT, Errno.EINVAL),
    (Request(0, Command.TRIM, 1, 16 << 20, 512), EXPORT, Errno.EINVAL),
    (Request(0, Command.WRITE, 1, (16 << 20) - 512, 1024), EXPORT, Errno.ENOSPC),
    (Request(0, Command.WRITE_ZEROES, 1, 16 << 20, 512), EXPORT, Errno.ENOSPC),
    (Request(0, Command.WRITE, 1, 0, 512), READ_ONLY, Errno.EPERM),
    (Request(0, Command.TRIM, 1, 0, 512), READ_ONLY, Errno.EPERM),
    (Request(0, Command.WRITE_ZEROES, 1, 0, 512), READ_ONLY, Errno.EPERM),
    (Request(0, Command.READ, 1, 0, 512), READ_ONLY, Errno.OK),
    (Request(0, Command.CACHE, 1, 0, 512), EXPORT, Errno.EINVAL),
    (Request(0, Command.BLOCK_STATUS, 1, 0, 512), EXPORT, Errno.EINVAL),
    (Request(0, 0x99, 1, 0, 512), EXPORT, Errno.EINVAL),
    (Request(0, Command.READ, 1, 4096, 4096), Export("4k", 1 << 20, WRITABLE, min_block=4096), Errno.OK),
    (Request(0, Command.READ, 1, 512, 4096), Export("4k", 1 << 20, WRITABLE, min_block=4096), Errno.EINVAL),
]


@pytest.mark.parametrize(("request_", "export", "expected"), CHECKS)
def test_check_request(request_: Request, export: Export, expected: Errno) -> None:
    assert outcome(request_, export) == expected


def outcome(request_: Request, export: Export) -> Errno:
    try:
        check_request(request_, export)
    except NbdError as error:
        assert error.code != Errno.OK and error.message
        return error.code
    return Errno.OK


@given(st.binary(max_size=64))
def test_decode_request_returns_or_raises_decode_error(data: bytes) -> None:
    try:
        request = decode_request(data)
    except DecodeError:
        return
    assert encode_request(request) == data


@given(
    st.integers(0, 0xFFFF),
    st.integers(0, 0xFFFF),
    st.integers(0, 2**64 - 1),
    st.integers(0, 2**64 - 1),
    st.integers(0, 2**32 - 1),
)
def test_any_request_header_decodes_and_checks(
    flags: int, kind: int, cookie: int, offset: int, length: int
) -> None:
    request = Request(flags, kind, cookie, offset, length)
    assert decode_request(encode_request(request)) == request
    assert isinstance(outcome(request, EXPORT), Errno)


@given(st.binary(max_size=64))
def test_option_decoders_return_or_raise_decode_error(data: bytes) -> None:
    for decoder in (decode_option_header, decode_info_request, decode_client_flags, decode_simple_reply):
        with contextlib.suppress(DecodeError):
            decoder(data)


@given(st.integers(0, 2**32 - 1), st.binary(max_size=256))
def test_negotiation_never_raises(option: int, data: bytes) -> None:
    outcome = Negotiation(EXPORT).option(option, data)
    assert isinstance(outcome.phase, Phase)
    if option != OptionType.EXPORT_NAME:
        for reply_option, _, _ in _replies(outcome.reply):
            assert reply_option == option


@given(st.text(max_size=40), st.lists(st.integers(0, 0xFFFF), max_size=8))
def test_info_request_round_trips(name: str, requests: list[int]) -> None:
    request = InfoRequest(name, tuple(requests))
    try:
        wire = encode_info_request(request)
    except UnicodeEncodeError:
        return  # lone surrogates outside surrogateescape's range have no wire form
    assert decode_info_request(wire) == request
