"""The proxy's anti-reflection rules, pure: which server address may be offered on an interface,
where a reply may go, what only servers send, and the amplification check over every kind of
minimal and malformed request (support/dhcp_hostile.py), with its reply/request sizes."""

from __future__ import annotations

import dataclasses
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.dhcp_captures import IPXE_BIOS_DISCOVER
from support.dhcp_hostile import (
    Link,
    allowed_destinations,
    packet,
    probes,
)

from pvsd.dhcp.codec import (
    BootServer,
    DhcpPacket,
    MessageType,
    Op,
    Option,
    PxeOptions,
    decode,
    encode,
    encode_pxe_options,
)
from pvsd.dhcp.policy import (
    ArchFamily,
    Arrival,
    BootPolicy,
    Decision,
    Destination,
    Refusal,
    Refused,
    Strategy,
    advertised_addresses,
    decide,
    reachable,
    reply_destination,
)
from pvsd.net.reader import DecodeError

SERVER = IPv4Address("10.91.1.1")
CLIENT = IPv4Address("10.91.1.2")
VICTIM = IPv4Address("10.91.1.77")
LAN = (IPv4Interface("10.91.1.1/24"),)
LOOPBACK = (IPv4Interface("127.0.0.1/8"),)
HOST = frozenset({SERVER, IPv4Address("10.91.2.1"), IPv4Address("127.0.0.1")})
POLICY = BootPolicy(server=SERVER, bootfiles={ArchFamily.BIOS: "undionly.kpxe"}, strategies={})
BROADCAST = IPv4Address("255.255.255.255")
PXE_PORT = 4011


def on_lan(source: tuple[str, int] = ("0.0.0.0", 68), pxe: bool = False) -> Arrival:
    return Arrival((IPv4Address(source[0]), source[1]), pxe, "eth0", False, LAN, HOST)


def on_loopback(source: tuple[str, int] = ("127.0.0.1", 40000), pxe: bool = False) -> Arrival:
    return Arrival((IPv4Address(source[0]), source[1]), pxe, "lo", True, LOOPBACK, HOST)


def known(_: str) -> bool:
    return True


def request(kind: int = MessageType.DISCOVER, **changes: object) -> DhcpPacket:
    return dataclasses.replace(decode(packet(42, kind)), **changes)  # type: ignore[arg-type]


# -- what only servers send ---------------------------------------------------------------------------


@pytest.mark.parametrize("pxe", [False, True], ids=["67", "4011"])
@pytest.mark.parametrize(
    ("op", "kind"),
    [
        (Op.BOOTREPLY, MessageType.OFFER),
        (Op.BOOTREPLY, MessageType.ACK),
        (Op.BOOTREPLY, MessageType.DISCOVER),  # a BOOTREPLY whatever it claims to be
        (Op.BOOTREPLY, None),
        (Op.BOOTREQUEST, MessageType.OFFER),
        (Op.BOOTREQUEST, MessageType.ACK),
        (Op.BOOTREQUEST, MessageType.NAK),
    ],
)
def test_what_only_servers_send_is_dropped_on_both_ports(op: Op, kind: int | None, pxe: bool) -> None:
    """Answering another server's OFFER or ACK would let two servers reflect off each other."""
    decision = decide(decode(packet(7, kind, op=op)), on_lan((str(CLIENT), 68), pxe), known, POLICY)
    assert (decision.reply, decision.refusal) == (None, Refusal.SERVER_MESSAGE)
    assert "only servers send it" in decision.reason


# -- the offered address must be reachable from the receiving interface ----------------------------------


@pytest.mark.parametrize(
    ("address", "arrival", "expected"),
    [
        ("10.91.1.1", on_lan(), True),  # this server's own address on that interface
        ("10.91.1.200", on_lan(), True),  # another host on the subnet (a VIP, a peer)
        ("10.91.2.1", on_lan(), False),  # this host's address on another network
        ("127.0.0.1", on_lan(), False),  # loopback is reachable from loopback only
        ("10.91.1.255", on_lan(), False),  # the subnet's broadcast address
        ("10.91.1.0", on_lan(), False),  # its network address
        ("127.0.0.1", on_loopback(), True),
        ("127.0.0.11", on_loopback(), True),  # anywhere in 127/8
        ("10.91.2.1", on_loopback(), True),  # a client on this host reaches every local address
        ("10.91.9.9", on_loopback(), False),  # but not someone else's
        ("10.91.1.1", Arrival((IPv4Address(0), 68), interface="#9"), False),  # unknown interface
        # bench/dhcp.py puts 127.2.N.0/24 on a veth on purpose (route_localnet): on its link, usable.
        ("127.2.1.1", Arrival((IPv4Address(0), 68), subnets=(IPv4Interface("127.2.1.1/24"),)), True),
        # RFC 3021: both addresses of a /31 are hosts.
        ("10.0.0.3", Arrival((IPv4Address(0), 68), subnets=(IPv4Interface("10.0.0.2/31"),)), True),
    ],
)
def test_reachable_means_on_a_subnet_of_the_receiving_interface(
    address: str, arrival: Arrival, expected: bool
) -> None:
    assert reachable(IPv4Address(address), arrival) is expected


@pytest.mark.parametrize(
    ("server", "from_loopback"), [("127.0.0.1", True), ("10.91.2.1", True), ("192.0.2.1", False)]
)
def test_a_server_address_off_the_interface_is_never_offered(server: str, from_loopback: bool) -> None:
    """On the LAN none of them is on eth0's subnet; a client on this host reaches this host's own."""
    policy = dataclasses.replace(POLICY, server=IPv4Address(server))
    decision = decide(decode(IPXE_BIOS_DISCOVER), on_lan(), known, policy)
    assert (decision.reply, decision.refusal) == (None, Refusal.UNREACHABLE)
    assert decision.reason == "server address not reachable from the receiving interface"
    assert decision.detail == f"{server} is not on the subnets of eth0 (10.91.1.1/24)"
    local = decide(decode(IPXE_BIOS_DISCOVER), on_loopback(), known, policy)
    assert (local.reply is not None) is from_loopback, local


def test_advertised_addresses_are_siaddr_option_54_and_the_pxe_boot_servers() -> None:
    boot_servers = PxeOptions(
        boot_servers=(BootServer(0x8000, (IPv4Address("10.91.1.5"), IPv4Address("10.91.2.5"))),)
    )
    reply = DhcpPacket(
        op=Op.BOOTREPLY,
        xid=1,
        chaddr=b"\0" * 6,
        siaddr=SERVER,
        options=(
            (Option.SERVER_ID, IPv4Address("10.91.1.1").packed),
            (Option.VENDOR_SPECIFIC, encode_pxe_options(boot_servers)),
        ),
    )
    assert advertised_addresses(reply) == (SERVER, IPv4Address("10.91.1.5"), IPv4Address("10.91.2.5"))
    broken = dataclasses.replace(reply, options=((Option.VENDOR_SPECIFIC, b"\x08\x09\x80"),))
    assert advertised_addresses(broken) == (SERVER,)  # a bad option 43 names no boot server


# -- where a reply may go ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "arrival", "reason"),
    [
        ({"ciaddr": "224.0.0.1"}, on_lan(("224.0.0.1", 68)), "ciaddr is multicast"),
        ({"ciaddr": "255.255.255.255"}, on_lan((str(CLIENT), 68)), "ciaddr is the broadcast address"),
        ({"ciaddr": "10.91.1.255"}, on_lan((str(CLIENT), 68)), "ciaddr is the network or broadcast address"),
        ({"ciaddr": "10.91.1.0"}, on_lan((str(CLIENT), 68)), "ciaddr is the network or broadcast address"),
        ({"ciaddr": "240.0.0.1"}, on_lan((str(CLIENT), 68)), "ciaddr is reserved (240.0.0.0/4)"),
        ({"ciaddr": "0.1.2.3"}, on_lan((str(CLIENT), 68)), "ciaddr is unspecified (0.0.0.0/8)"),
        ({"ciaddr": "127.0.0.1"}, on_lan(("127.0.0.1", 68)), "ciaddr is loopback and the request did not"),
        ({"ciaddr": "192.0.2.1"}, on_lan(("192.0.2.1", 68)), "ciaddr is not on a subnet of the receiving"),
        ({"ciaddr": "10.91.1.1"}, on_lan(("10.91.1.1", 68)), "ciaddr is this server's own address"),
        ({"ciaddr": str(VICTIM)}, on_lan((str(CLIENT), 68)), "ciaddr is not the source address"),
        ({"giaddr": "224.0.0.2"}, on_lan((str(CLIENT), 67)), "giaddr is multicast"),
        ({"giaddr": "127.0.0.1"}, on_lan((str(CLIENT), 67)), "giaddr is loopback"),
        ({"giaddr": "10.91.1.255"}, on_lan((str(CLIENT), 67)), "giaddr is the network or broadcast"),
        ({"giaddr": "10.91.1.1"}, on_lan((str(CLIENT), 67)), "giaddr is this server's own address"),
        ({"giaddr": "240.1.1.1"}, on_lan((str(CLIENT), 67)), "giaddr is reserved"),
        ({"giaddr": "192.0.2.1"}, on_lan((str(CLIENT), 67)), "relay not on a subnet of the receiving"),
    ],
)
def test_unusable_ciaddr_and_giaddr_are_refused_on_67(
    changes: dict[str, str], arrival: Arrival, reason: str
) -> None:
    typed = {name: IPv4Address(value) for name, value in changes.items()}
    outcome = reply_destination(request(**typed), arrival)
    assert isinstance(outcome, Refused), outcome
    assert outcome.reason.startswith(reason), outcome
    decision = decide(request(**typed), arrival, known, POLICY)
    assert decision.reply is None and decision.refusal == outcome.refusal and decision.detail


@pytest.mark.parametrize(
    ("source", "ciaddr", "outcome"),
    [
        ((str(CLIENT), 68), "0.0.0.0", Destination(CLIENT, 68)),
        ((str(CLIENT), 68), str(CLIENT), Destination(CLIENT, 68)),
        ((str(CLIENT), 4011), "0.0.0.0", Destination(CLIENT, 4011)),
        ((str(CLIENT), 1024), "0.0.0.0", Destination(CLIENT, 1024)),
        ((str(CLIENT), 53), "0.0.0.0", "source port is privileged and not 68"),
        ((str(CLIENT), 1023), "0.0.0.0", "source port is privileged and not 68"),
        ((str(CLIENT), 0), "0.0.0.0", "source port is privileged and not 68"),
        ((str(CLIENT), 68), str(VICTIM), "ciaddr is not the source address"),
        (("0.0.0.0", 68), "0.0.0.0", "source is unspecified"),
        (("0.0.0.0", 68), str(CLIENT), "source is unspecified"),
        (("192.0.2.1", 68), "0.0.0.0", "source is not on a subnet of the receiving interface"),
        (("10.91.1.255", 68), "0.0.0.0", "source is the network or broadcast address"),
        (("224.0.0.1", 68), "0.0.0.0", "source is multicast"),
        (("10.91.1.1", 68), "0.0.0.0", "source is this server's own address"),
    ],
)
def test_the_pxe_port_answers_the_source_only_when_it_is_a_sane_host_on_the_link(
    source: tuple[str, int], ciaddr: str, outcome: Destination | str
) -> None:
    found = reply_destination(request(MessageType.REQUEST, ciaddr=IPv4Address(ciaddr)), on_lan(source, True))
    if isinstance(outcome, Destination):
        assert found == outcome
    else:
        assert isinstance(found, Refused) and found.reason.startswith(outcome), found
        assert found.refusal is Refusal.BAD_DESTINATION


def test_a_request_from_loopback_is_answered_at_its_source_port() -> None:
    """Only this host sends on loopback: tests and load generators that cannot own port 68."""
    local = reply_destination(request(ciaddr=IPv4Address("127.0.0.1")), on_loopback(("127.0.0.1", 40000)))
    assert local == Destination(IPv4Address("127.0.0.1"), 40000)
    pxe = reply_destination(request(MessageType.REQUEST), on_loopback(("127.0.0.1", 40001), pxe=True))
    assert pxe == Destination(IPv4Address("127.0.0.1"), 40001)
    relayed = reply_destination(request(giaddr=IPv4Address("127.0.0.1")), on_loopback(("127.0.0.1", 67)))
    assert relayed == Destination(IPv4Address("127.0.0.1"), 67)  # perfdhcp on 127.0.0.1:67


def test_relays_lists_the_relays_answered() -> None:
    listed = (IPv4Network("192.0.2.0/24"), IPv4Network("10.91.1.3/32"))
    far = request(giaddr=IPv4Address("192.0.2.1"))
    assert reply_destination(far, on_lan((str(CLIENT), 67)), listed) == Destination(
        IPv4Address("192.0.2.1"), 67, on_link=False
    )
    near = reply_destination(request(giaddr=IPv4Address("10.91.1.3")), on_lan((str(CLIENT), 67)), listed)
    assert near == Destination(IPv4Address("10.91.1.3"), 67, on_link=True)
    unlisted = reply_destination(request(giaddr=IPv4Address("10.91.1.4")), on_lan(), listed)
    assert isinstance(unlisted, Refused) and unlisted.refusal is Refusal.RELAY_REFUSED
    assert unlisted.reason == "relay not in [dhcp] relays"
    # Listing never makes an unusable address a destination.
    multicast = reply_destination(
        request(giaddr=IPv4Address("224.0.0.1")), on_lan(), (IPv4Network("224.0.0.0/4"),)
    )
    assert isinstance(multicast, Refused) and multicast.refusal is Refusal.BAD_DESTINATION
    # Empty: a relay on the link is answered there.
    assert reply_destination(request(giaddr=IPv4Address("10.91.1.3")), on_lan()) == Destination(
        IPv4Address("10.91.1.3"), 67
    )


def test_a_plain_discover_is_answered_by_broadcast_on_the_link() -> None:
    decision = decide(decode(IPXE_BIOS_DISCOVER), on_lan(), known, POLICY)
    assert decision.destination == Destination(BROADCAST, 68, on_link=True)
    assert decision.destination.broadcast and str(decision.destination) == "255.255.255.255:68"


# -- the amplification check ---------------------------------------------------------------------------


def _outcome(payload: bytes, arrival: Arrival, policy: BootPolicy = POLICY) -> Decision | None:
    try:
        return decide(decode(payload), arrival, known, policy)
    except DecodeError:
        return None


def test_every_probe_is_answered_only_where_the_rules_allow_and_never_much_larger() -> None:
    """Every message type at its smallest, malformed variants, hostile addresses and sources: an
    answer goes only to a destination the rules allow, and is at most 1.1 times the request
    (the smallest PXE DISCOVER, 278 bytes, gets a 300-byte offer: RFC 1542's minimum)."""
    link = Link(LAN[0])
    answered, ratios = 0, []
    for probe in probes(str(SERVER), str(CLIENT), str(VICTIM), "192.0.2.9", PXE_PORT):
        pxe = probe.destination_port == PXE_PORT
        decision = _outcome(probe.payload, on_lan(probe.source, pxe))
        if decision is None or decision.reply is None:
            continue
        answered += 1
        assert decision.destination is not None
        where = (str(decision.destination.address), decision.destination.port)
        assert where in allowed_destinations(probe.payload, probe.source, pxe, link), probe.name
        ratios.append((len(encode(decision.reply)) / len(probe.payload), probe.name))
    assert answered >= 10  # the sane ones among them are still answered
    worst = max(ratios)
    assert worst[0] < 1.1, worst


ADDRESSES = st.sampled_from(
    [
        "0.0.0.0", "0.1.2.3", "10.91.1.0", "10.91.1.1", "10.91.1.2", "10.91.1.77", "10.91.1.255",
        "10.91.2.1", "127.0.0.1", "169.254.1.1", "192.0.2.9", "224.0.0.1", "239.255.255.250",
        "240.0.0.1", "255.255.255.255",
    ]
)  # fmt: skip
PORTS = st.sampled_from([0, 7, 53, 67, 68, 123, 1023, 1024, 4011, 6910, 11211, 65535])


@settings(max_examples=600, deadline=None)
@given(
    ciaddr=ADDRESSES,
    giaddr=ADDRESSES,
    source=ADDRESSES,
    port=PORTS,
    pxe=st.booleans(),
    flags=st.sampled_from([0, 0x8000]),
    kind=st.sampled_from(list(MessageType)),
)
def test_no_combination_of_addresses_and_ports_escapes_the_rules(
    ciaddr: str, giaddr: str, source: str, port: int, pxe: bool, flags: int, kind: MessageType
) -> None:
    payload = packet(9, kind, ciaddr=ciaddr, giaddr=giaddr, flags=flags)
    decision = _outcome(payload, on_lan((source, port), pxe))
    if decision is None or decision.reply is None:
        return
    assert decision.destination is not None
    where = (str(decision.destination.address), decision.destination.port)
    assert where in allowed_destinations(payload, (source, port), pxe, Link(LAN[0]))
    assert len(encode(decision.reply)) <= max(300, len(payload) + 64)


@pytest.mark.parametrize("pxe", [False, True], ids=["offer", "4011 ACK"])
@pytest.mark.parametrize("strategy", list(Strategy))
def test_every_reply_advertises_the_policy_server_alone(pxe: bool, strategy: Strategy) -> None:
    """decide() checks only policy.server for reachability: that holds while every address a
    reply advertises (siaddr, option 54, 43.8 boot servers) is policy.server."""
    policy = dataclasses.replace(POLICY, strategies={ArchFamily.BIOS: strategy})
    kind = MessageType.REQUEST if pxe else MessageType.DISCOVER
    decision = decide(request(kind), on_lan((str(CLIENT), 68), pxe), known, policy)
    assert decision.reply is not None, decision.reason
    assert advertised_addresses(decision.reply) == (SERVER,)
