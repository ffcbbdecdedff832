"""pvsd's DHCP codec against dpkt's parser, an implementation nobody here wrote.

dpkt is looser than pvsd (it checks neither the op, the magic cookie nor the hardware
address length, it keeps a truncated option, and it does not join repeated options as
RFC 3396 asks), so the oracle runs one way for arbitrary bytes: whatever pvsd accepts,
dpkt must read the same. For well-formed packets it runs both ways: what dpkt writes pvsd
reads, and what pvsd writes dpkt reads, field for field.
"""

from __future__ import annotations

import contextlib
import ipaddress
from typing import Any

import dpkt
import pytest
from hypothesis import given
from hypothesis import strategies as st
from support.dhcp_captures import ALL_CAPTURES, Captured

from pvsd.dhcp.codec import DhcpPacket, decode, encode
from pvsd.net.reader import DecodeError


def read_with_dpkt(wire: bytes) -> dpkt.dhcp.DHCP:
    return dpkt.dhcp.DHCP(wire)


def joined_options(options: list[tuple[int, bytes]]) -> tuple[tuple[int, bytes], ...]:
    """RFC 3396: options of one code concatenated, in the order each code first appears."""
    joined: dict[int, bytes] = {}
    for code, value in options:
        joined[code] = joined.get(code, b"") + bytes(value)
    return tuple(joined.items())


def assert_same(packet: DhcpPacket, oracle: Any) -> None:
    assert (packet.op, packet.htype, packet.hlen, packet.hops) == (
        oracle.op,
        oracle.hrd,
        oracle.hln,
        oracle.hops,
    )
    assert (packet.xid, packet.secs, packet.flags) == (oracle.xid, oracle.secs, oracle.flags)
    addresses = (packet.ciaddr, packet.yiaddr, packet.siaddr, packet.giaddr)
    assert addresses == tuple(
        ipaddress.IPv4Address(value) for value in (oracle.ciaddr, oracle.yiaddr, oracle.siaddr, oracle.giaddr)
    )
    assert packet.chaddr == oracle.chaddr
    assert packet.sname == oracle.sname.split(b"\0", 1)[0]
    assert packet.file == oracle.file.split(b"\0", 1)[0]
    assert packet.options == joined_options(oracle.opts)


@pytest.mark.parametrize("capture", ALL_CAPTURES, ids=lambda capture: capture.name)
def test_pvsd_and_dpkt_read_every_captured_packet_alike(capture: Captured) -> None:
    assert_same(decode(capture.payload), read_with_dpkt(capture.payload))


@pytest.mark.parametrize("capture", ALL_CAPTURES, ids=lambda capture: capture.name)
def test_dpkt_reads_what_pvsd_writes_from_a_capture(capture: Captured) -> None:
    packet = decode(capture.payload)
    assert_same(packet, read_with_dpkt(encode(packet)))


codes = st.integers(min_value=1, max_value=254)  # 0 is PAD and 255 is END, RFC 2132 section 3.1
options = st.lists(st.tuples(codes, st.binary(max_size=255)), max_size=12)
addresses = st.integers(min_value=0, max_value=2**32 - 1)


@st.composite
def dpkt_packets(draw: st.DrawFn) -> dpkt.dhcp.DHCP:
    hln = draw(st.integers(min_value=0, max_value=16))
    return dpkt.dhcp.DHCP(
        op=draw(st.sampled_from((1, 2))),
        hrd=draw(st.integers(0, 255)),
        hln=hln,
        hops=draw(st.integers(0, 255)),
        xid=draw(st.integers(0, 2**32 - 1)),
        secs=draw(st.integers(0, 2**16 - 1)),
        flags=draw(st.integers(0, 2**16 - 1)),
        ciaddr=draw(addresses),
        yiaddr=draw(addresses),
        siaddr=draw(addresses),
        giaddr=draw(addresses),
        chaddr=draw(st.binary(min_size=16, max_size=16)),
        sname=draw(st.binary(max_size=63).filter(lambda name: b"\0" not in name)),
        file=draw(st.binary(max_size=127).filter(lambda name: b"\0" not in name)),
        opts=draw(options.filter(bool)),  # dpkt writes no END after an empty option list
    )


@given(dpkt_packets())
def test_pvsd_reads_what_dpkt_writes(made: dpkt.dhcp.DHCP) -> None:
    wire = bytes(made)
    assert_same(decode(wire), read_with_dpkt(wire))


@given(dpkt_packets())
def test_dpkt_reads_what_pvsd_writes(made: dpkt.dhcp.DHCP) -> None:
    packet = decode(bytes(made))
    assert_same(packet, read_with_dpkt(encode(packet)))


def mutated(wire: bytes, data: st.DataObject) -> bytes:
    edits = data.draw(
        st.lists(st.tuples(st.integers(0, max(len(wire) - 1, 0)), st.integers(0, 255)), max_size=6)
    )
    changed = bytearray(wire)
    for offset, value in edits:
        if offset < len(changed):
            changed[offset] = value
    return bytes(changed[: data.draw(st.integers(0, len(changed)))])


@given(st.data())
def test_whatever_pvsd_accepts_dpkt_reads_the_same(data: st.DataObject) -> None:
    source = data.draw(
        st.sampled_from([capture.payload for capture in ALL_CAPTURES]) | st.binary(max_size=600)
    )
    wire = mutated(source, data)
    try:
        packet = decode(wire)
    except DecodeError:
        return
    oracle = None
    with contextlib.suppress(dpkt.UnpackError, IndexError):
        oracle = read_with_dpkt(wire)
    assert oracle is not None, f"pvsd decoded {wire.hex()} but dpkt could not"
    assert_same(packet, oracle)
