"""DHCP codec: packets captured from iPXE and dnsmasq, both directions, and fuzzing."""

from __future__ import annotations

import contextlib
import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support.dhcp_captures import (
    ALL_CAPTURES,
    DNSMASQ_4011_ACK,
    DNSMASQ_PROXY_OFFER,
    IPXE_BIOS_DISCOVER,
    IPXE_BIOS_REQUEST_4011,
    IPXE_UEFI_DISCOVER,
    OVMF_DISCOVER,
    Captured,
)

from pvsd.dhcp.codec import (
    MAGIC_COOKIE,
    BootServer,
    DhcpPacket,
    MenuItem,
    MessageType,
    Op,
    Option,
    PxeOptions,
    decode,
    decode_pxe_options,
    encode,
    encode_pxe_options,
)
from pvsd.net.reader import DecodeError


def test_uefi_vendor_classes_as_captured() -> None:
    assert decode(IPXE_UEFI_DISCOVER).vendor_class == "PXEClient:Arch:00007:UNDI:003010"
    assert decode(OVMF_DISCOVER).vendor_class == "PXEClient:Arch:00007:UNDI:003000"
    assert decode(OVMF_DISCOVER).user_class == b""


def test_ipxe_bios_discover() -> None:
    packet = decode(IPXE_BIOS_DISCOVER)
    assert (packet.op, packet.xid, packet.message_type) == (Op.BOOTREQUEST, 0x9DF80A5D, MessageType.DISCOVER)
    assert packet.mac == "52:54:00:12:34:56"
    assert packet.vendor_class == "PXEClient:Arch:00000:UNDI:002001"
    assert packet.user_class == b"iPXE"
    assert packet.architectures == (0,)
    assert packet.option(Option.CLIENT_NDI) == b"\x01\x02\x01"
    assert packet.option(Option.CLIENT_UUID) == bytes(17)
    assert packet.option(Option.IPXE_ENCAPSULATED) is not None
    assert not packet.broadcast


def test_dnsmasq_proxy_offer_and_its_pxe_options() -> None:
    packet = decode(DNSMASQ_PROXY_OFFER)
    assert packet.message_type == MessageType.OFFER
    assert packet.yiaddr == ipaddress.IPv4Address(0) and packet.broadcast
    assert packet.file == b"boot.ipxe"
    assert packet.option(Option.SERVER_ID) == ipaddress.IPv4Address("10.77.0.11").packed
    raw = packet.option(Option.VENDOR_SPECIFIC)
    assert raw is not None
    pxe = decode_pxe_options(raw)
    assert pxe == PxeOptions(
        discovery_control=3,
        boot_servers=(BootServer(0x8000, (ipaddress.IPv4Address("10.77.0.11"),)),),
        menu=(MenuItem(0x8000, "spike"),),
        prompt=(0, "PXE"),
    )
    assert encode_pxe_options(pxe) == raw


def test_ipxe_request_to_4011_and_the_ack() -> None:
    request = decode(IPXE_BIOS_REQUEST_4011)
    assert request.message_type == MessageType.REQUEST
    assert request.ciaddr == ipaddress.IPv4Address("10.77.0.157")
    assert request.vendor_class == "PXEClient"
    assert decode_pxe_options(request.option(Option.VENDOR_SPECIFIC) or b"").boot_item == (0x8000, 0)
    ack = decode(DNSMASQ_4011_ACK)
    assert ack.message_type == MessageType.ACK and ack.file == b"boot.ipxe"
    assert ack.siaddr == ipaddress.IPv4Address("10.77.0.11")


@pytest.mark.parametrize("captured", ALL_CAPTURES, ids=lambda captured: captured.name)
def test_captures_survive_a_round_trip(captured: Captured) -> None:
    capture = captured.payload
    packet = decode(capture)
    again = encode(packet)
    assert decode(again) == packet
    assert again[: 236 + 4] == capture[: 236 + 4]  # the fixed header and the cookie, byte for byte


def test_encode_pads_to_300_bytes_and_splits_long_options() -> None:
    packet = DhcpPacket(
        op=Op.BOOTREPLY, xid=1, chaddr=bytes(6), options=((Option.VENDOR_SPECIFIC, b"x" * 300),)
    )
    wire = encode(packet)
    assert len(wire) >= 300
    assert decode(wire).option(Option.VENDOR_SPECIFIC) == b"x" * 300


HEADER = IPXE_BIOS_DISCOVER[:236]


@pytest.mark.parametrize(
    ("wire", "reason"),
    [
        (b"", "truncated"),
        (IPXE_BIOS_DISCOVER[:200], "truncated"),
        (HEADER, "truncated"),
        (HEADER + b"\x00\x00\x00\x00", "magic cookie"),
        (HEADER + MAGIC_COOKIE + b"\x35\x05\x01", "truncated"),  # option length past the end
        (HEADER + MAGIC_COOKIE + b"\x35", "truncated"),
        (b"\x07" + HEADER[1:] + MAGIC_COOKIE, "not a BOOTP packet"),
        (HEADER[:2] + b"\x20" + HEADER[3:] + MAGIC_COOKIE, "hardware address length"),
    ],
)
def test_malformed_packets_raise_decode_error(wire: bytes, reason: str) -> None:
    with pytest.raises(DecodeError, match=reason):
        decode(wire)


@pytest.mark.parametrize(
    "value",
    [
        b"\x06",  # no length
        b"\x06\x05\x01",  # length past the end of option 43
        b"\x08\x03\x80\x00\x02",  # two servers announced, none there
        b"\x09\x04\x80\x00\x09ab",  # menu text longer than its sub-option
        b"\x47\x02\x80\x00",  # boot item too short
        b"\x06\x00",  # discovery control with no byte
    ],
)
def test_malformed_pxe_options_raise_decode_error(value: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_pxe_options(value)


@given(st.binary(max_size=700))
def test_decode_returns_a_packet_or_raises_decode_error(wire: bytes) -> None:
    with contextlib.suppress(DecodeError):
        decode(wire)


@given(st.binary(max_size=300))
def test_dhcp_shaped_garbage_only_raises_decode_error(tail: bytes) -> None:
    with contextlib.suppress(DecodeError):
        packet = decode(HEADER + MAGIC_COOKIE + tail)
        _ = (packet.mac, packet.message_type, packet.vendor_class, packet.architectures)
        assert decode(encode(packet)) == packet


@given(st.binary(max_size=300))
def test_pxe_options_decode_or_raise_decode_error(value: bytes) -> None:
    with contextlib.suppress(DecodeError):
        decode_pxe_options(value)
