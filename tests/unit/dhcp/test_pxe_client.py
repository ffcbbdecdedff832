"""The agent's PXE client packets: its DISCOVER is what pvsd's proxy answers, and it reads
pvsd's offer (not the site server's) to find the boot server."""

from __future__ import annotations

import dataclasses
import ipaddress

from hypothesis import given
from hypothesis import strategies as st

from pvsd.dhcp.codec import MessageType, Op, Option, decode, encode
from pvsd.dhcp.policy import ArchFamily, Arrival, BootPolicy, decide
from pvsd.dhcp.pxe_client import VENDOR_CLASS, ProxyOffer, discover_packet, proxy_offer

MAC = "52:54:00:12:34:56"
XID = 0x1234ABCD
SERVER = ipaddress.IPv4Address("10.77.0.11")
POLICY = BootPolicy(server=SERVER, bootfiles={ArchFamily.BIOS: "undionly.kpxe"}, strategies={})
# The agent's DISCOVER, broadcast from 0.0.0.0:68 on the server's LAN
ARRIVAL = Arrival((ipaddress.IPv4Address(0), 68), subnets=(ipaddress.IPv4Interface("10.77.0.11/24"),))


def test_the_discover_is_a_bios_pxe_roms() -> None:
    packet = decode(discover_packet(MAC, XID))
    assert (packet.op, packet.xid, packet.mac, packet.message_type) == (
        Op.BOOTREQUEST,
        XID,
        MAC,
        MessageType.DISCOVER,
    )
    assert packet.option(Option.VENDOR_CLASS) == VENDOR_CLASS
    assert packet.architectures == (0,) and packet.broadcast


def test_pvsds_answer_to_it_is_read_as_the_proxy_offer() -> None:
    decision = decide(decode(discover_packet(MAC, XID)), ARRIVAL, lambda mac: True, POLICY)
    assert decision.reply is not None
    assert proxy_offer(encode(decision.reply), MAC, XID) == ProxyOffer(SERVER, "undionly.kpxe")


def test_other_answers_are_not_proxy_offers() -> None:
    reply = decide(decode(discover_packet(MAC, XID)), ARRIVAL, lambda mac: True, POLICY).reply
    assert reply is not None
    site_offer = dataclasses.replace(
        reply,
        yiaddr=ipaddress.IPv4Address("10.77.0.100"),
        options=tuple((code, value) for code, value in reply.options if code != Option.VENDOR_CLASS),
    )
    assert proxy_offer(encode(site_offer), MAC, XID) is None  # the site server's address offer
    assert proxy_offer(encode(reply), MAC, XID + 1) is None  # another transaction
    assert proxy_offer(encode(reply), "52:54:00:00:00:01", XID) is None  # another client
    assert proxy_offer(discover_packet(MAC, XID), MAC, XID) is None  # our own broadcast


@given(st.binary(max_size=600))
def test_any_datagram_is_an_offer_or_none(data: bytes) -> None:
    assert proxy_offer(data, MAC, XID) is None or isinstance(proxy_offer(data, MAC, XID), ProxyOffer)
