"""Proxy DHCP on real interfaces, in network namespaces: which interface a reply leaves by, which
server address may be offered there, and where a reply may go at all (no reflection).

The lab (support/netns.py) is a server namespace on two veth networks, 10.91.1.0/24 (s1) and
10.91.2.0/24 (s2), and one client namespace on each. Clients send whole IPv4 packets through
AF_PACKET sockets, so they send exactly what a PXE ROM sends (from 0.0.0.0, broadcast) or spoof
any source; sniffers on both client links see every frame pvsd sends, whatever its destination.
With `default_route`, the server routes everything else via 10.91.1.254 on network 1, an address
client 1 answers ARP for, so a reply routed the wrong way shows up on network 1.

`pvsd serve` runs where the daemon's choices matter (its defaults); elsewhere a DhcpServer runs
in-process on a thread inside the server namespace, so its counters can be read. Needs root.
"""

from __future__ import annotations

import dataclasses
import errno
import ipaddress
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.dhcp_captures import IPXE_BIOS_DISCOVER, IPXE_BIOS_REQUEST_4011
from support.dhcp_hostile import (
    ACK,
    BOOTREPLY,
    DISCOVER,
    OFFER,
    REQUEST,
    allowed_destinations,
    packet,
    probes,
)
from support.dhcp_hostile import (
    Link as RuleLink,
)
from support.log_events import Events
from support.netns import (
    CLIENT_1,
    GATEWAY_1,
    SERVER_1,
    SERVER_2,
    Frame,
    ServerThread,
    TwoNetworks,
    in_namespace,
    two_networks,
)
from support.pvsd import pvsd, pvsd_env, serve, wait_for

from pvsd.config import DhcpConfig
from pvsd.dhcp.codec import MessageType, decode
from pvsd.dhcp.server import DhcpServer, boot_policy

PXE_PORT = 4011
VICTIM = "10.91.1.77"  # another host on network 1 (client 1 answers for it, so frames to it are seen)
OFF_LINK = "192.0.2.9"  # beyond the router: reached through GATEWAY_1
QUIET_S = 1.0  # how long "nothing arrives" is watched for


def in_process(lab: TwoNetworks, address: str, events: Events, **keys: Any) -> ServerThread:
    """A DhcpServer on 0.0.0.0:67 (no [dhcp] interface) and address:4011 inside the server namespace."""
    config = DhcpConfig(per_mac_per_second=1000, **keys)

    def make() -> DhcpServer:
        return DhcpServer(config, boot_policy(config, address), address, lambda mac: True, events.logger)

    return ServerThread(lab.server, make)


def _settle(count: Any, quiet: float = 0.5, timeout: float = 15) -> None:
    """Until count() has not changed for `quiet` seconds (the kernel drops some probes as martians:
    a unicast from 0.0.0.0, so "all were received" cannot be waited for)."""
    deadline = time.monotonic() + timeout
    last, since = count(), time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - since < quiet:
        time.sleep(0.05)
        now = count()
        if now != last:
            last, since = now, time.monotonic()


def udp_from(frames: list[Frame], port: int) -> list[Frame]:
    return [frame for frame in frames if frame.source[1] == port]


def quiet_everywhere(lab: TwoNetworks, seconds: float = QUIET_S) -> list[Frame]:
    """Every DHCP-port frame either client link saw within `seconds`."""
    time.sleep(seconds)
    return [f for name in ("c1", "c2") for f in lab.link(name).drain() if f.source[1] in (67, PXE_PORT)]


# -- 1. the advertised address must be reachable from the receiving interface ---------------------------


def test_default_serve_offers_no_loopback_address_to_the_lan(tmp_path: Path) -> None:
    """No config: [server] address is 127.0.0.1. A PXE client on the LAN must not be offered
    127.0.0.1; a client on this host (loopback) still gets its offer."""
    with two_networks(default_route=True) as lab:
        env = pvsd_env(f"sqlite:///{tmp_path}/farm.db", dhcp__enabled="true", tftp__enabled="false")
        assert pvsd(env, "farm", "init", namespace=lab.server).returncode == 0
        with serve(env, "pvs1", "127.0.0.1", tmp_path, namespace=lab.server) as process:
            wait_for(lambda: "proxy DHCP listening" in process.log_text(), timeout=20)
            lab.link("c1").send(("0.0.0.0", 68), ("255.255.255.255", 67), IPXE_BIOS_DISCOVER)
            answers = quiet_everywhere(lab)
            offered = [str(decode(frame.payload).siaddr) for frame in answers]
            assert answers == [], f"the LAN was answered, siaddr {offered}: {answers}"
            # This host's own clients (loopback) are still served.
            asked = _ask_loopback(lab, 67, IPXE_BIOS_DISCOVER)
            assert asked is not None, f"no offer on loopback:\n{process.log_text()[-3000:]}"
            assert str(decode(asked).siaddr) == "127.0.0.1"
            assert "proxy DHCP serves loopback only" in process.log_text()


def _ask_loopback(lab: TwoNetworks, port: int, datagram: bytes) -> bytes | None:
    """A client on the server's own host, on loopback, with ciaddr 127.0.0.1 (answered unicast)."""

    def ask() -> bytes | None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.1", 0))
            sock.settimeout(2)
            sock.sendto(datagram[:12] + socket.inet_aton("127.0.0.1") + datagram[16:], ("127.0.0.1", port))
            try:
                return sock.recv(2048)
            except TimeoutError:
                return None

    return in_namespace(lab.server, ask)


def test_an_address_off_the_receiving_interface_is_not_offered() -> None:
    """[server] address on network 2: a DISCOVER from network 1 gets no offer (it could not reach
    10.91.2.1 there), and the refusal is logged once a minute with a count, and counted."""
    events = Events()
    with two_networks(default_route=True) as lab, in_process(lab, SERVER_2, events) as server:
        for xid in range(3):
            discover = IPXE_BIOS_DISCOVER[:4] + xid.to_bytes(4, "big") + IPXE_BIOS_DISCOVER[8:]
            lab.link("c1").send(("0.0.0.0", 68), ("255.255.255.255", 67), discover)
        answers = quiet_everywhere(lab)
        assert answers == [], f"offered {[str(decode(f.payload).siaddr) for f in answers]} on network 1"
        assert server.stats.unreachable == 3
        lines = events.named(
            "server address not reachable from the receiving interface; not answered (logged once a minute)"
        )
        assert len(lines) == 1, events.all()
        assert lines[0]["count"] == 1 and lines[0]["interface"] == "s1"
        assert lines[0]["address"] == SERVER_2 and lines[0]["subnets"] == ["10.91.1.1/24"]


# -- 2. replies leave by the interface the request came in on ----------------------------------------


@pytest.mark.parametrize("default_route", [True, False], ids=["default-route-via-network-1", "no-route"])
def test_a_discover_is_answered_on_the_network_it_came_from(tmp_path: Path, default_route: bool) -> None:
    """pvsd on 0.0.0.0:67 with no [dhcp] interface, advertising its network-2 address: a DISCOVER
    broadcast on network 2 is answered on network 2, and nothing at all arrives on network 1."""
    with two_networks(default_route=default_route) as lab:
        env = pvsd_env(f"sqlite:///{tmp_path}/farm.db", dhcp__enabled="true", tftp__enabled="false")
        assert pvsd(env, "farm", "init", namespace=lab.server).returncode == 0
        with serve(env, "pvs1", SERVER_2, tmp_path, namespace=lab.server) as process:
            wait_for(lambda: "proxy DHCP listening" in process.log_text(), timeout=20)
            lab.link("c2").send(("0.0.0.0", 68), ("255.255.255.255", 67), IPXE_BIOS_DISCOVER)
            on_2 = udp_from(lab.link("c2").wait(lambda seen: bool(udp_from(seen, 67)), timeout=3), 67)
            on_1 = udp_from(lab.link("c1").wait(lambda seen: False, timeout=0.3), 67)
            log = process.log_text()
            assert on_1 == [], f"the answer to network 2 left on network 1: {on_1}"
            assert len(on_2) == 1, f"network 2 got {on_2}; pvsd said:\n{log[-3000:]}"
            offer = decode(on_2[0].payload)
            assert on_2[0].source == (SERVER_2, 67) and on_2[0].destination == ("255.255.255.255", 68)
            assert offer.message_type == MessageType.OFFER and str(offer.siaddr) == SERVER_2
            assert offer.xid == 0x9DF80A5D
            assert '"proxy offer"' in log


def test_a_failed_send_is_logged_and_counted_and_not_called_an_offer() -> None:
    """The offer is delayed; the link goes down meanwhile, so the send fails: that is logged
    (once a minute per reason, with the errno) and counted, and no "proxy offer" is logged."""
    events = Events()
    with (
        two_networks(default_route=False) as lab,
        in_process(lab, SERVER_2, events, offer_delay_ms=700) as server,
    ):
        lab.link("c2").send(("0.0.0.0", 68), ("255.255.255.255", 67), IPXE_BIOS_DISCOVER)
        wait_for(lambda: server.stats.received == 1, timeout=2, interval=0.02)
        lab.ip(lab.server, "link", "set", "s2", "down")
        time.sleep(1.2)
        assert events.named("proxy offer") == [], events.all()
        assert server.stats.send_failures == 1
        failed = events.named("DHCP reply not sent (logged once a minute per reason)")
        assert len(failed) == 1, events.all()
        assert failed[0]["errno"] in (errno.ENETDOWN, errno.ENETUNREACH, errno.ENXIO)
        assert failed[0]["to"] == "255.255.255.255:68" and failed[0]["count"] == 1


# -- 3. no reflection ---------------------------------------------------------------------------------


@pytest.fixture
def lab() -> Iterator[TwoNetworks]:
    with two_networks(default_route=True, client1_extra=(VICTIM,)) as made:
        yield made


BAD, RELAY, SERVER = "bad_destinations", "relays_refused", "server_messages"  # DhcpStats counters
HOSTILE = [
    # (name, source, port, payload, the counter that must count it)
    ("ciaddr multicast", (CLIENT_1, 68), 67, packet(1, DISCOVER, ciaddr="224.0.0.1"), BAD),
    ("ciaddr subnet broadcast", (CLIENT_1, 68), 67, packet(2, ciaddr="10.91.1.255"), BAD),
    ("ciaddr class E", (CLIENT_1, 68), 67, packet(3, ciaddr="240.0.0.1"), BAD),
    ("ciaddr loopback", (CLIENT_1, 68), 67, packet(4, ciaddr="127.0.0.1"), BAD),
    ("ciaddr off the link", (CLIENT_1, 68), 67, packet(5, ciaddr=OFF_LINK), BAD),
    ("ciaddr is not the source", (CLIENT_1, 68), 67, packet(6, ciaddr=VICTIM), BAD),
    ("giaddr off the link", (CLIENT_1, 68), 67, packet(7, giaddr=OFF_LINK), RELAY),
    ("giaddr multicast", (CLIENT_1, 68), 67, packet(8, giaddr="224.0.0.2"), BAD),
    ("4011 spoofed victim:53", (VICTIM, 53), PXE_PORT, packet(9, REQUEST), BAD),
    ("4011 ciaddr not the source", (CLIENT_1, 68), PXE_PORT, packet(10, REQUEST, ciaddr=VICTIM), BAD),
    ("4011 spoofed off the link", (OFF_LINK, 68), PXE_PORT, packet(12, REQUEST), BAD),
    ("OFFER at 67", (CLIENT_1, 67), 67, packet(13, OFFER, op=BOOTREPLY), SERVER),
    ("ACK at 4011", (CLIENT_1, PXE_PORT), PXE_PORT, packet(14, ACK, op=BOOTREPLY), SERVER),
    ("ACK as a request at 4011", (CLIENT_1, 68), PXE_PORT, packet(15, ACK), SERVER),
]  # fmt: skip


@pytest.mark.parametrize(
    ("source", "port", "payload", "counter"),
    [case[1:] for case in HOSTILE],
    ids=[case[0] for case in HOSTILE],
)
def test_a_hostile_request_gets_no_reply_anywhere_and_is_counted(
    lab: TwoNetworks, source: tuple[str, int], port: int, payload: bytes, counter: str
) -> None:
    events = Events()
    with in_process(lab, SERVER_1, events) as server:
        destination = SERVER_1
        lab.link("c1").send(source, (destination, port), payload)
        answers = quiet_everywhere(lab)
        assert answers == [], f"answered to {[f.destination for f in answers]}"
        assert server.stats.received == 1
        assert getattr(server.stats, counter) == 1, dataclasses.asdict(server.stats)


def test_sane_requests_are_still_answered_where_the_rules_say(lab: TwoNetworks) -> None:
    """The 4011 REQUEST from the client's own address and port 68, a unicast DISCOVER with its
    ciaddr, and a request relayed from a relay on the link."""
    events = Events()
    with in_process(lab, SERVER_1, events) as server:
        client = lab.link("c1")
        request = (
            IPXE_BIOS_REQUEST_4011[:12] + ipaddress.IPv4Address(CLIENT_1).packed + IPXE_BIOS_REQUEST_4011[16:]
        )
        client.send((CLIENT_1, 68), (SERVER_1, PXE_PORT), request)
        client.send((CLIENT_1, 68), (SERVER_1, 67), packet(21, ciaddr=CLIENT_1))
        client.send(("10.91.1.3", 67), (SERVER_1, 67), packet(22, giaddr=GATEWAY_1))
        seen = client.wait(
            lambda frames: len(udp_from(frames, 67) + udp_from(frames, PXE_PORT)) >= 3, timeout=3
        )
        replies = {
            decode(f.payload).xid: (f.source, f.destination) for f in seen if f.source[1] in (67, PXE_PORT)
        }
        assert replies == {
            decode(request).xid: ((SERVER_1, PXE_PORT), (CLIENT_1, 68)),
            21: ((SERVER_1, 67), (CLIENT_1, 68)),
            22: ((SERVER_1, 67), (GATEWAY_1, 67)),
        }, replies
        assert (server.stats.offers, server.stats.acks) == (2, 1)


def test_relays_answers_only_listed_relays_and_those_beyond_the_link(lab: TwoNetworks) -> None:
    events = Events()
    with in_process(lab, SERVER_1, events, relays="192.0.2.0/24") as server:
        client = lab.link("c1")
        client.send((GATEWAY_1, 67), (SERVER_1, 67), packet(31, giaddr=OFF_LINK))  # listed: routed
        client.send(("10.91.1.3", 67), (SERVER_1, 67), packet(32, giaddr=GATEWAY_1))  # on the link, unlisted
        seen = client.wait(lambda frames: bool(udp_from(frames, 67)), timeout=3)
        time.sleep(0.5)
        replies = [(decode(f.payload).xid, f.destination) for f in udp_from(client.drain() + seen, 67)]
        assert replies == [(31, (OFF_LINK, 67))]
        assert server.stats.relays_refused == 1


# -- 4. amplification: every kind of request, every kind of address ----------------------------------


def test_no_request_is_answered_anywhere_but_a_valid_destination(lab: TwoNetworks) -> None:
    """Every message type at its smallest, with and without PXE content, malformed variants, and
    hostile ciaddr, giaddr and sources, on 67 and 4011: each reply goes only where
    support/dhcp_hostile.allowed_destinations says, at most one reply per request; reply and
    request sizes are recorded."""
    events = Events()
    sent = probes(SERVER_1, CLIENT_1, VICTIM, OFF_LINK, PXE_PORT)
    with in_process(lab, SERVER_1, events) as server:
        client = lab.link("c1")
        for probe in sent:
            destination = "255.255.255.255" if probe.broadcast else SERVER_1
            client.send(probe.source, (destination, probe.destination_port), probe.payload)
            time.sleep(0.002)  # a burst this size fits the socket buffer anyway; be gentle
        _settle(lambda: server.stats.received)
        frames = [f for name in ("c1", "c2") for f in lab.link(name).drain() if f.source[1] in (67, PXE_PORT)]
    by_xid = {int.from_bytes(probe.payload[4:8], "big"): probe for probe in sent if len(probe.payload) >= 8}
    link = RuleLink(ipaddress.IPv4Interface(f"{SERVER_1}/24"))
    wrong, ratios, replied = [], [], {}
    for frame in frames:
        xid = int.from_bytes(frame.payload[4:8], "big")
        probe = by_xid.get(xid)
        assert probe is not None, f"a reply to no request: {frame}"
        replied[xid] = replied.get(xid, 0) + 1
        allowed = allowed_destinations(probe.payload, probe.source, probe.destination_port == PXE_PORT, link)
        if frame.destination not in allowed or frame.link != "c1":
            wrong.append((probe.name, frame.destination, frame.link, sorted(allowed)))
        ratios.append(
            (len(frame.payload) / len(probe.payload), probe.name, len(probe.payload), len(frame.payload))
        )
    assert wrong == [], "\n".join(map(str, wrong))
    assert all(count == 1 for count in replied.values()), replied
    for ratio, name, asked, answered in sorted(ratios, reverse=True):
        print(f"{ratio:5.2f}  {asked:4d} -> {answered:4d} bytes  {name}")
    worst = max(ratios) if ratios else None
    print(f"\n{len(sent)} requests, {len(frames)} replies; largest reply/request: {worst}")
    assert worst is None or worst[0] < 1.5
